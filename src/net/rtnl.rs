//! rtnetlink, synchronously: links, addresses, routes and traffic control.
//!
//! A small blocking API over the route netlink protocol: messages are the
//! `netlink-packet-route` types, the socket is a `netlink-sys` socket, and
//! every call sends one request and reads the kernel's answer before it
//! returns (no async runtime, no background thread).
//!
//! An [`Rtnl`] works in the network namespace its socket was opened in,
//! whatever namespace the calling thread is in later: [`Rtnl::open`] uses
//! the calling thread's, [`Rtnl::open_in`] enters a namespace given by path
//! (`/run/netns/NAME`, `/proc/PID/ns/net`) on the calling thread only for
//! as long as it takes to create the socket.
//!
//! Every failure is an [`Error`] with a [`ErrorKind`] a caller can branch
//! on (already exists, not found, permission, invalid, other), the
//! operation it was doing, the errno and the kernel's own explanation
//! (extended ACK) when it gave one.

mod addr;
mod link;
mod route;
mod tc;

use std::fmt;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::Path;
use std::str::FromStr;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};

pub use addr::Addr;
pub use link::{check_name, Link, LinkId, VethPair};
pub use route::{Route, RouteScope};
pub use tc::{BpfFilter, Clsact, FilterAt};

/// What kind of failure an [`Error`] is, for callers that branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object exists already (EEXIST): a name taken, an address or
    /// route already there.
    Exists,
    /// The object, or what it refers to, is not there (ENODEV, ENOENT,
    /// ESRCH, EADDRNOTAVAIL): a missing link, namespace, address or route.
    NotFound,
    /// Not allowed (EPERM, EACCES), e.g. no CAP_NET_ADMIN, or IPv6
    /// disabled on the interface.
    Permission,
    /// Refused as invalid (EINVAL, ERANGE, or caught before asking the
    /// kernel): an MTU out of range, a bad name or prefix length.
    Invalid,
    /// Anything else.
    Other,
}

impl ErrorKind {
    fn of_errno(errno: i32) -> Self {
        match Errno::from_raw(errno) {
            Errno::EEXIST => Self::Exists,
            Errno::ENODEV | Errno::ENOENT | Errno::ESRCH | Errno::EADDRNOTAVAIL | Errno::ENXIO => Self::NotFound,
            Errno::EPERM | Errno::EACCES => Self::Permission,
            Errno::EINVAL | Errno::ERANGE => Self::Invalid,
            _ => Self::Other,
        }
    }
}

/// A failed rtnetlink operation: its kind, what was being done, and why.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    context: String,
    errno: Option<i32>,
    detail: Option<String>,
}

impl Error {
    /// An error the kernel (or a system call) returned.
    pub(crate) fn os(context: String, errno: i32, detail: Option<String>) -> Self {
        Self { kind: ErrorKind::of_errno(errno), context, errno: Some(errno), detail }
    }

    /// An error found here, before or after talking to the kernel.
    pub(crate) fn new(kind: ErrorKind, context: String, detail: impl Into<String>) -> Self {
        Self { kind, context, errno: None, detail: Some(detail.into()) }
    }

    fn io(context: String, e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(errno) => Self::os(context, errno, None),
            None => Self::new(ErrorKind::Other, context, e.to_string()),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The errno, when the failure came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        self.errno
    }

    /// What was being done ("creating veth pair ve-mc1/eth0").
    pub fn context(&self) -> &str {
        &self.context
    }

    pub fn is_exists(&self) -> bool {
        self.kind == ErrorKind::Exists
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.context)?;
        match (self.errno, &self.detail) {
            (Some(e), Some(d)) => write!(f, "{} ({d})", Errno::from_raw(e).desc()),
            (Some(e), None) => write!(f, "{}", Errno::from_raw(e).desc()),
            (None, Some(d)) => write!(f, "{d}"),
            (None, None) => write!(f, "failed"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// An address with a prefix length, like `10.0.0.2/32` or `fe80::1/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl IpPrefix {
    pub fn new(addr: IpAddr, len: u8) -> Result<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("prefix {addr}/{len}"),
                format!("prefix length {len} is longer than {max}"),
            ));
        }
        Ok(Self { addr, len })
    }

    /// `addr/32` or `addr/128`.
    pub fn host(addr: IpAddr) -> Self {
        Self { addr, len: if addr.is_ipv4() { 32 } else { 128 } }
    }

    /// `0.0.0.0/0` or `::/0`.
    pub fn default_for(v6: bool) -> Self {
        let addr = if v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
        Self { addr, len: 0 }
    }

    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for IpPrefix {
    type Err = Error;

    /// `ADDR/LEN`, or a bare address meaning the host prefix.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::new(ErrorKind::Invalid, format!("prefix '{}'", cut(s)), "expected ADDRESS[/LENGTH]");
        match s.split_once('/') {
            Some((a, l)) => {
                let addr: IpAddr = a.parse().map_err(|_| bad())?;
                let len: u8 = l.parse().map_err(|_| bad())?;
                Self::new(addr, len)
            }
            None => Ok(Self::host(s.parse().map_err(|_| bad())?)),
        }
    }
}

/// Input echoed in an error, cut to 64 bytes.
pub(crate) fn cut(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A route netlink socket, bound to the network namespace it was opened
/// in.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        let ctx = || "opening a route netlink socket".to_string();
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| Error::io(ctx(), e))?;
        sock.bind_auto().map_err(|e| Error::io(ctx(), e))?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(|e| Error::io(ctx(), e))?;
        // The kernel's own explanation of a refusal ("IPv6 is disabled on
        // this device"), and errors that do not echo the whole request.
        sock.set_ext_ack(true).map_err(|e| Error::io(ctx(), e))?;
        sock.set_cap_ack(true).map_err(|e| Error::io(ctx(), e))?;
        // Dumps filtered by the kernel (addresses of one link, routes of
        // one table and link), so reading one container's wiring does not
        // cost a read of every container's.
        sock.set_netlink_get_strict_chk(true).map_err(|e| Error::io(ctx(), e))?;
        Ok(Self { sock, seq: 0 })
    }

    /// A socket in the network namespace at `path` (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`). A path that does not exist is
    /// [`ErrorKind::NotFound`].
    pub fn open_in(path: &Path) -> Result<Self> {
        let ns = open_netns(path)?;
        Self::open_in_file(&ns, &path.display().to_string())
    }

    /// A socket in the network namespace of an open namespace file; `name`
    /// says which in errors.
    pub fn open_in_file(ns: &File, name: &str) -> Result<Self> {
        let ctx = || format!("entering network namespace {}", cut(name));
        let orig = File::open("/proc/thread-self/ns/net").map_err(|e| Error::io(ctx(), e))?;
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
            if e == Errno::EINVAL {
                Error::new(ErrorKind::Invalid, ctx(), "not a network namespace")
            } else {
                Error::os(ctx(), e as i32, None)
            }
        })?;
        // A socket stays in the namespace it was created in.
        let sock = Self::open();
        if let Err(e) = setns(orig.as_fd(), CloneFlags::CLONE_NEWNET) {
            // The thread would go on in the wrong namespace: nothing
            // sensible can follow.
            panic!("returning to the original network namespace after {}: {e}", ctx());
        }
        sock
    }

    /// Sends one request and collects the kernel's answer: the messages it
    /// returned until its ACK (plain requests) or NLMSG_DONE (dumps).
    fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        ctx: &dyn Fn() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        self.seq = self.seq.wrapping_add(1);
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.sock.send(&buf, 0).map_err(|e| Error::io(ctx(), e))?;

        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(|e| Error::io(ctx(), e))?;
            let mut off = 0;
            while off < data.len() {
                let len = NetlinkBuffer::new_checked(&data[off..])
                    .map_err(|e| Error::new(ErrorKind::Other, ctx(), format!("undecodable reply: {e}")))?
                    .length() as usize;
                let part = &data[off..off + len];
                off += (len + 3) & !3;
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(part)
                    .map_err(|e| Error::new(ErrorKind::Other, ctx(), format!("undecodable reply: {e}")))?;
                if msg.header.sequence_number != self.seq {
                    // The late answer to an earlier request.
                    continue;
                }
                let hflags = msg.header.flags;
                match msg.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(out),
                        Some(code) => return Err(Error::os(ctx(), -code.get(), ext_ack_msg(hflags, &e.header))),
                    },
                    NetlinkPayload::Done(d) if d.code < 0 => {
                        return Err(Error::os(ctx(), -d.code, tlv_msg(&d.extended_ack)))
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    /// A request answered by an ACK only.
    fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16, ctx: &dyn Fn() -> String) -> Result<()> {
        self.exchange(msg, flags, ctx).map(drop)
    }
}

/// Opens a network namespace file; a missing one is NotFound.
pub fn open_netns(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::io(format!("opening network namespace {}", cut(&path.display().to_string())), e))
}

/// The text of NLMSGERR_ATTR_MSG in an NLMSG_ERROR's payload (after the
/// errno): the original request's header — only that with NLM_F_CAPPED,
/// else the whole request — then, with NLM_F_ACK_TLVS, attributes.
fn ext_ack_msg(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < 16 {
        return None;
    }
    let orig_len = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        u32::from_ne_bytes(payload[..4].try_into().ok()?) as usize
    };
    tlv_msg(payload.get((orig_len + 3) & !3..)?)
}

/// NLMSGERR_ATTR_MSG (type 1, a NUL-terminated string) among attributes.
fn tlv_msg(mut tlvs: &[u8]) -> Option<String> {
    const NLMSGERR_ATTR_MSG: u16 = 1;
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let ty = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if ty == NLMSGERR_ATTR_MSG {
            let s = &tlvs[4..len];
            let s = s.split(|b| *b == 0).next().unwrap_or(s);
            return Some(String::from_utf8_lossy(s).into_owned());
        }
        tlvs = tlvs.get((len + 3) & !3..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::libc;

    #[test]
    fn prefixes_parse_and_print() {
        let p: IpPrefix = "10.0.0.2/24".parse().unwrap();
        assert_eq!(p, IpPrefix { addr: "10.0.0.2".parse().unwrap(), len: 24 });
        assert_eq!(p.to_string(), "10.0.0.2/24");
        assert_eq!("fe80::1".parse::<IpPrefix>().unwrap().len, 128);
        assert_eq!("10.1.2.3".parse::<IpPrefix>().unwrap().len, 32);
        for bad in ["10.0.0.2/33", "fe80::1/129", "10.0.0/8", "x/1", "10.0.0.1/", ""] {
            let e = bad.parse::<IpPrefix>().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{bad:?}: {e}");
        }
    }

    #[test]
    fn errnos_map_to_kinds() {
        for (errno, kind) in [
            (libc::EEXIST, ErrorKind::Exists),
            (libc::ENODEV, ErrorKind::NotFound),
            (libc::ESRCH, ErrorKind::NotFound),
            (libc::EADDRNOTAVAIL, ErrorKind::NotFound),
            (libc::ENOENT, ErrorKind::NotFound),
            (libc::EPERM, ErrorKind::Permission),
            (libc::EACCES, ErrorKind::Permission),
            (libc::EINVAL, ErrorKind::Invalid),
            (libc::EBUSY, ErrorKind::Other),
        ] {
            assert_eq!(ErrorKind::of_errno(errno), kind, "errno {errno}");
        }
        let e = Error::os("adding address 10.0.0.2/32 to eth0".into(), libc::EEXIST, None);
        assert_eq!(e.to_string(), "adding address 10.0.0.2/32 to eth0: File exists");
        let e = Error::os("adding address fe80::1/64 to x".into(), libc::EACCES, Some("IPv6 is disabled on this device".into()));
        assert_eq!(e.to_string(), "adding address fe80::1/64 to x: Permission denied (IPv6 is disabled on this device)");
    }

    #[test]
    fn extended_ack_text_is_found() {
        // A capped NLMSG_ERROR payload: the request's 16-byte header, then
        // NLMSGERR_ATTR_MSG "bad mtu\0" (len 12) and an offset attribute.
        let mut p = vec![0u8; 16];
        p[..4].copy_from_slice(&40u32.to_ne_bytes());
        p.extend_from_slice(&12u16.to_ne_bytes());
        p.extend_from_slice(&1u16.to_ne_bytes());
        p.extend_from_slice(b"bad mtu\0");
        p.extend_from_slice(&8u16.to_ne_bytes());
        p.extend_from_slice(&2u16.to_ne_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(ext_ack_msg(NLM_F_CAPPED | NLM_F_ACK_TLVS, &p).as_deref(), Some("bad mtu"));
        assert_eq!(ext_ack_msg(NLM_F_CAPPED, &p), None, "no TLVs without NLM_F_ACK_TLVS");
        // Not capped: the whole 40-byte request is echoed before the TLVs.
        let mut q = p[..16].to_vec();
        q.extend_from_slice(&[0u8; 24]);
        q.extend_from_slice(&p[16..]);
        assert_eq!(ext_ack_msg(NLM_F_ACK_TLVS, &q).as_deref(), Some("bad mtu"));
        assert_eq!(ext_ack_msg(NLM_F_ACK_TLVS, &q[..20]), None, "truncated");
    }
}
