//! Attaching programs: TC filters and the guard's XDP program on
//! interfaces, and a bpf_link on a cgroup.
//!
//! Every attachment outlives the command that made it and is recorded in
//! the pinned `attachments` map, so `load` can swap programs in place (same
//! handle and priority, `BPF_TC_F_REPLACE`; `XDP_FLAGS_REPLACE` in the same
//! XDP mode; `bpf_link_update` for cgroups) and `status`/`unload` know
//! where things are. The XDP program is attached over netlink, not as a
//! pinned bpf_link, so like a TC filter it needs no pin to stay attached.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use libbpf_rs::{ErrorKind, MapCore, MapFlags, MapHandle};

use crate::abi::{bytes_of, from_bytes, types};
use crate::kernel::loader::Datapath;
use crate::net::netns::{self, NetnsGuard};
use crate::net::netif;
use crate::kernel::pins::PinRoot;

/// Handle of every filter datapathctl installs; priorities set the order.
pub const TC_HANDLE: u32 = 0xd47a;

#[derive(Clone, Copy, Debug)]
pub struct TcSlot {
    pub prog: &'static str,
    pub ingress: bool,
    pub priority: u32,
}

/// dnat on the external NIC's ingress.
pub const DNAT_SLOTS: [TcSlot; 1] = [TcSlot { prog: "dnat", ingress: true, priority: 1 }];

/// The host veth: ingress chain arp -> snat -> tproxy_ingress, and egress.
/// Attached in this order, so the last hole closed is the first in line.
pub const HOST_SLOTS: [TcSlot; 4] = [
    TcSlot { prog: "tproxy_egress", ingress: false, priority: 1 },
    TcSlot { prog: "tproxy_ingress", ingress: true, priority: 3 },
    TcSlot { prog: "snat", ingress: true, priority: 2 },
    TcSlot { prog: "arp", ingress: true, priority: 1 },
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dnat,
    Host,
    Getsockopt,
}

impl Kind {
    fn code(self) -> u32 {
        use types::dp_attach_kind as K;
        match self {
            Kind::Dnat => K::DP_ATTACH_DNAT.0,
            Kind::Host => K::DP_ATTACH_HOST.0,
            Kind::Getsockopt => K::DP_ATTACH_GETSOCKOPT.0,
        }
    }
    fn from_code(c: u32) -> Option<Self> {
        use types::dp_attach_kind as K;
        match c {
            c if c == K::DP_ATTACH_DNAT.0 => Some(Kind::Dnat),
            c if c == K::DP_ATTACH_HOST.0 => Some(Kind::Host),
            c if c == K::DP_ATTACH_GETSOCKOPT.0 => Some(Kind::Getsockopt),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Dnat => "dnat",
            Kind::Host => "host",
            Kind::Getsockopt => "getsockopt",
        }
    }
    fn slots(self) -> &'static [TcSlot] {
        match self {
            Kind::Dnat => &DNAT_SLOTS,
            Kind::Host => &HOST_SLOTS,
            Kind::Getsockopt => &[],
        }
    }
}

const QDISC_CREATED: u32 = types::dp_attach_flag::DP_ATTACH_F_QDISC_CREATED.0;
const XDP_NATIVE: u32 = types::dp_attach_flag::DP_ATTACH_F_XDP_NATIVE.0;
const XDP_GENERIC: u32 = types::dp_attach_flag::DP_ATTACH_F_XDP_GENERIC.0;

/// The XDP program that runs before a kind's TC programs (the guard before
/// dnat), if the kind has one.
fn xdp_prog(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Dnat => Some("guard"),
        Kind::Host | Kind::Getsockopt => None,
    }
}

/// How the guard runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver, before an skb exists.
    Native,
    /// Generic XDP, on the skb, for drivers without XDP support.
    Generic,
}

impl XdpMode {
    fn attach_flag(self) -> u32 {
        match self {
            XdpMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
            XdpMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
        }
    }
    fn record_flag(self) -> u32 {
        match self {
            XdpMode::Native => XDP_NATIVE,
            XdpMode::Generic => XDP_GENERIC,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

impl serde::Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One attachment record.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Record {
    /// None for a kind this build does not know.
    pub kind: Option<Kind>,
    pub netns: String,
    pub target: String,
    pub ifindex: u32,
    /// How the kind's XDP program (the guard) runs there, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xdp: Option<XdpMode>,
    #[serde(skip)]
    pub id: u64,
    #[serde(skip)]
    pub flags: u32,
    #[serde(skip)]
    kind_code: u32,
}

fn cstr_field(bytes: &[std::ffi::c_char]) -> String {
    let b: Vec<u8> = bytes.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    String::from_utf8_lossy(&b).into_owned()
}

fn set_field(dst: &mut [std::ffi::c_char], s: &str) -> Result<()> {
    if s.len() >= dst.len() {
        bail!("'{s}' is longer than {} bytes", dst.len() - 1);
    }
    for (d, b) in dst.iter_mut().zip(s.bytes()) {
        *d = b as std::ffi::c_char;
    }
    Ok(())
}

/// The `attachments` map.
pub struct Records {
    map: MapHandle,
}

impl Records {
    pub fn open(pins: &PinRoot) -> Result<Self> {
        Ok(Self { map: crate::maps::open(pins, "attachments")? })
    }

    pub fn from_handle(map: MapHandle) -> Self {
        Self { map }
    }

    fn key(kind: Kind, id: u64, ifindex: u32) -> types::attach_key {
        types::attach_key { id, ifindex, kind: kind.code() }
    }

    pub fn get(&self, kind: Kind, id: u64, ifindex: u32) -> Result<Option<Record>> {
        let key = Self::key(kind, id, ifindex);
        Ok(crate::maps::lookup::<_, types::attach_value>(&self.map, &key)?
            .map(|v| Self::record(&key, &v)))
    }

    fn record(k: &types::attach_key, v: &types::attach_value) -> Record {
        Record {
            kind: Kind::from_code(k.kind),
            netns: cstr_field(&v.netns),
            target: cstr_field(&v.target),
            ifindex: k.ifindex,
            xdp: if v.flags & XDP_NATIVE != 0 {
                Some(XdpMode::Native)
            } else if v.flags & XDP_GENERIC != 0 {
                Some(XdpMode::Generic)
            } else {
                None
            },
            id: k.id,
            flags: v.flags,
            kind_code: k.kind,
        }
    }

    pub fn put(&self, kind: Kind, id: u64, ifindex: u32, netns: &str, target: &str, flags: u32) -> Result<()> {
        let key = Self::key(kind, id, ifindex);
        let mut v = types::attach_value::default();
        set_field(&mut v.netns, netns)?;
        set_field(&mut v.target, target)?;
        v.flags = flags;
        self.map.update(bytes_of(&key), bytes_of(&v), MapFlags::ANY).map_err(|e| {
            if e.kind() == ErrorKind::TooBig {
                anyhow::anyhow!("map attachments is full ({} entries)", crate::abi::capacity::ATTACHMENTS)
            } else {
                anyhow::Error::new(e).context("recording the attachment")
            }
        })
    }

    pub fn remove(&self, r: &Record) -> Result<()> {
        let key = types::attach_key { id: r.id, ifindex: r.ifindex, kind: r.kind_code };
        match self.map.delete(bytes_of(&key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context("removing an attachment record"),
        }
    }

    pub fn list(&self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        for key in self.map.keys() {
            let k: types::attach_key = from_bytes(&key)?;
            if let Some(v) = crate::maps::lookup::<_, types::attach_value>(&self.map, &k)? {
                out.push(Self::record(&k, &v));
            }
        }
        out.sort_by(|a, b| (a.kind_code, &a.netns, &a.target).cmp(&(b.kind_code, &b.netns, &b.target)));
        Ok(out)
    }
}

/// Opens a pinned object (program or link) by path.
pub fn obj_get(path: &Path) -> Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).context("path with NUL byte")?;
    // SAFETY: c is a valid NUL-terminated string for the call's duration.
    let fd = unsafe { libbpf_sys::bpf_obj_get(c.as_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("opening {}", path.display()));
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn tc_hook(ifindex: u32, attach_point: libbpf_sys::bpf_tc_attach_point) -> libbpf_sys::bpf_tc_hook {
    libbpf_sys::bpf_tc_hook {
        sz: std::mem::size_of::<libbpf_sys::bpf_tc_hook>() as _,
        ifindex: ifindex as i32,
        attach_point,
        ..Default::default()
    }
}

fn slot_hook(ifindex: u32, slot: &TcSlot) -> libbpf_sys::bpf_tc_hook {
    tc_hook(ifindex, if slot.ingress { libbpf_sys::BPF_TC_INGRESS } else { libbpf_sys::BPF_TC_EGRESS })
}

fn tc_opts(slot: &TcSlot, prog_fd: i32, flags: u32) -> libbpf_sys::bpf_tc_opts {
    libbpf_sys::bpf_tc_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_tc_opts>() as _,
        prog_fd,
        flags,
        handle: TC_HANDLE,
        priority: slot.priority,
        ..Default::default()
    }
}

fn errno(rc: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(-rc)
}

/// Creates the clsact qdisc unless present; true if this call created it.
fn create_clsact(iface: &netif::Iface) -> Result<bool> {
    let mut hook = tc_hook(iface.index, libbpf_sys::BPF_TC_INGRESS);
    // SAFETY: hook is a valid, sized bpf_tc_hook.
    let rc = unsafe { libbpf_sys::bpf_tc_hook_create(&mut hook) };
    match rc {
        0 => Ok(true),
        rc if -rc == nix::libc::EEXIST => Ok(false),
        rc => Err(errno(rc)).with_context(|| format!("creating the clsact qdisc on {}", iface.name)),
    }
}

fn destroy_clsact(ifindex: u32) -> Result<()> {
    let mut hook = tc_hook(ifindex, libbpf_sys::BPF_TC_INGRESS | libbpf_sys::BPF_TC_EGRESS);
    // SAFETY: hook is a valid, sized bpf_tc_hook.
    let rc = unsafe { libbpf_sys::bpf_tc_hook_destroy(&mut hook) };
    match rc {
        0 => Ok(()),
        rc if [nix::libc::ENOENT, nix::libc::EINVAL, nix::libc::ENODEV].contains(&-rc) => Ok(()),
        rc => Err(errno(rc)).context("removing the clsact qdisc"),
    }
}

/// Program id of the filter in a slot, if one is there.
fn tc_query(ifindex: u32, slot: &TcSlot) -> Result<Option<u32>> {
    let hook = slot_hook(ifindex, slot);
    let mut opts = tc_opts(slot, 0, 0);
    // SAFETY: hook and opts are valid, sized libbpf structs.
    let rc = unsafe { libbpf_sys::bpf_tc_query(&hook, &mut opts) };
    match rc {
        0 => Ok(Some(opts.prog_id)),
        rc if [nix::libc::ENOENT, nix::libc::EINVAL, nix::libc::ENODEV].contains(&-rc) => Ok(None),
        rc => Err(errno(rc)).with_context(|| format!("querying TC filter {}", slot.prog)),
    }
}

fn tc_attach(iface: &netif::Iface, slot: &TcSlot, prog_fd: i32) -> Result<()> {
    let hook = slot_hook(iface.index, slot);
    let mut opts = tc_opts(slot, prog_fd, libbpf_sys::BPF_TC_F_REPLACE);
    // SAFETY: hook and opts are valid, sized libbpf structs.
    let rc = unsafe { libbpf_sys::bpf_tc_attach(&hook, &mut opts) };
    if rc != 0 {
        return Err(errno(rc)).with_context(|| {
            format!(
                "attaching {} to {} {} (handle {:#x}, priority {})",
                slot.prog,
                iface.name,
                if slot.ingress { "ingress" } else { "egress" },
                TC_HANDLE,
                slot.priority
            )
        });
    }
    Ok(())
}

/// Removes the filter in a slot; false if there was none.
fn tc_detach(ifindex: u32, slot: &TcSlot) -> Result<bool> {
    let hook = slot_hook(ifindex, slot);
    let opts = tc_opts(slot, 0, 0);
    // SAFETY: hook and opts are valid, sized libbpf structs.
    let rc = unsafe { libbpf_sys::bpf_tc_detach(&hook, &opts) };
    match rc {
        0 => Ok(true),
        rc if [nix::libc::ENOENT, nix::libc::EINVAL, nix::libc::ENODEV].contains(&-rc) => Ok(false),
        rc => Err(errno(rc)).with_context(|| format!("detaching {}", slot.prog)),
    }
}

/// The XDP program attached to an interface, as the kernel reports it.
struct XdpAttached {
    id: u32,
    mode: XdpMode,
}

/// What XDP program is attached to an interface (in the calling thread's
/// namespace), if any. A program in hardware offload mode is reported as
/// native: the guard never uses that mode, and it is not ours either way.
fn xdp_query(iface: &netif::Iface) -> Result<Option<XdpAttached>> {
    let mut opts = libbpf_sys::bpf_xdp_query_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_xdp_query_opts>() as _,
        ..Default::default()
    };
    // SAFETY: opts is a valid, sized bpf_xdp_query_opts.
    let rc = unsafe { libbpf_sys::bpf_xdp_query(iface.index as i32, 0, &mut opts) };
    if rc != 0 {
        return Err(errno(rc)).with_context(|| format!("querying the XDP program of {}", iface.name));
    }
    Ok(if opts.skb_prog_id != 0 {
        Some(XdpAttached { id: opts.skb_prog_id, mode: XdpMode::Generic })
    } else if opts.drv_prog_id != 0 {
        Some(XdpAttached { id: opts.drv_prog_id, mode: XdpMode::Native })
    } else if opts.hw_prog_id != 0 {
        Some(XdpAttached { id: opts.hw_prog_id, mode: XdpMode::Native })
    } else {
        None
    })
}

/// A program by id: its descriptor and name.
fn prog_by_id(id: u32) -> Result<(OwnedFd, String)> {
    // SAFETY: plain syscall wrapper; a negative return is an error.
    let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("opening program id {id}"));
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info is a zeroed bpf_prog_info of the size passed in len.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if rc != 0 {
        return Err(errno(rc)).with_context(|| format!("reading program id {id}"));
    }
    let name: Vec<u8> = info.name.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    Ok((fd, String::from_utf8_lossy(&name).into_owned()))
}

/// The interface's XDP program if it is the datapath's `prog` (recognised
/// by its name, as after a lost pin root nothing else is left to compare),
/// with a descriptor to name it in a replace or detach. Someone else's
/// program is an error naming it: an interface has one XDP hook.
fn xdp_ours(iface: &netif::Iface, prog: &str) -> Result<Option<(XdpAttached, OwnedFd)>> {
    let Some(cur) = xdp_query(iface)? else { return Ok(None) };
    let (fd, name) = prog_by_id(cur.id)?;
    if name != prog {
        bail!(
            "{} already has an XDP program of someone else ('{}', id {}); the {prog} program needs that hook",
            iface.name,
            cut(&name),
            cur.id
        );
    }
    Ok(Some((cur, fd)))
}

fn xdp_set(iface: &netif::Iface, prog_fd: i32, flags: u32, old: Option<&OwnedFd>) -> i32 {
    let opts = libbpf_sys::bpf_xdp_attach_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_xdp_attach_opts>() as _,
        old_prog_fd: old.map(|f| f.as_raw_fd()).unwrap_or(0),
        ..Default::default()
    };
    let flags = flags | if old.is_some() { libbpf_sys::XDP_FLAGS_REPLACE } else { 0 };
    // SAFETY: opts is a valid, sized bpf_xdp_attach_opts; the descriptors
    // are open for the call's duration.
    unsafe { libbpf_sys::bpf_xdp_attach(iface.index as i32, prog_fd, flags, &opts) }
}

/// Attaches (or replaces in place, in the mode it already runs in) the
/// XDP program `prog`: in the driver where it supports XDP, generic XDP
/// otherwise and on veths. Returns the mode and whether this call added it.
fn xdp_attach(iface: &netif::Iface, prog: &str, prog_fd: i32) -> Result<(XdpMode, bool)> {
    if let Some((cur, old)) = xdp_ours(iface, prog)? {
        // XDP_FLAGS_REPLACE: swapped atomically, and only if the program
        // is still the one we saw.
        let rc = xdp_set(iface, prog_fd, cur.mode.attach_flag(), Some(&old));
        if rc != 0 {
            return Err(errno(rc))
                .with_context(|| format!("replacing {prog} ({} XDP) on {}", cur.mode.as_str(), iface.name));
        }
        return Ok((cur.mode, false));
    }
    let noexist = libbpf_sys::XDP_FLAGS_UPDATE_IF_NOEXIST;
    // A veth is the exception: it receives skbs its peer already built, so
    // native XDP saves no allocation there; it converts each skb to an XDP
    // buffer and back in a NAPI loop of its own, and turns off the peer's
    // segmentation offload (veth_xdp_set()), which cut bulk TCP through it
    // to a quarter in our measurements. Generic XDP runs on the skb as it is.
    if netif::driver_of(&iface.name).map(|d| d == "veth").unwrap_or(false) {
        log::info!("{} is a veth: attaching {prog} as generic XDP", iface.name);
    } else {
        let rc = xdp_set(iface, prog_fd, noexist | XdpMode::Native.attach_flag(), None);
        if rc == 0 {
            return Ok((XdpMode::Native, true));
        }
        log::info!("{} refuses native XDP ({}); attaching {prog} as generic XDP", iface.name, errno(rc));
    }
    let rc = xdp_set(iface, prog_fd, noexist | XdpMode::Generic.attach_flag(), None);
    if rc != 0 {
        return Err(errno(rc)).with_context(|| format!("attaching {prog} (XDP) to {}", iface.name));
    }
    Ok((XdpMode::Generic, true))
}

/// Removes the datapath's XDP program `prog` from an interface; someone
/// else's is left alone. False if ours was not there.
fn xdp_detach(iface: &netif::Iface, prog: &str) -> Result<bool> {
    let cur = match xdp_ours(iface, prog) {
        Ok(Some(c)) => c,
        Ok(None) | Err(_) => return Ok(false),
    };
    let (at, old) = cur;
    let opts = libbpf_sys::bpf_xdp_attach_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_xdp_attach_opts>() as _,
        old_prog_fd: old.as_raw_fd(),
        ..Default::default()
    };
    // SAFETY: opts is a valid, sized bpf_xdp_attach_opts; old is open.
    let rc = unsafe {
        libbpf_sys::bpf_xdp_detach(iface.index as i32, at.mode.attach_flag() | libbpf_sys::XDP_FLAGS_REPLACE, &opts)
    };
    match rc {
        0 => Ok(true),
        // Replaced or removed by someone else meanwhile: not ours to touch.
        rc if [nix::libc::EEXIST, nix::libc::ENOENT, nix::libc::ENODEV].contains(&-rc) => Ok(false),
        rc => Err(errno(rc)).with_context(|| format!("detaching {prog} (XDP) from {}", iface.name)),
    }
}

/// Echoed names are cut to 64 bytes.
fn cut(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// `attach dnat|host <if>`: attaches (or re-attaches, idempotently) the
/// kind's programs. On failure, removes what this call added.
pub fn attach_tc(pins: &PinRoot, netns_name: Option<&str>, kind: Kind, ifspec: &str) -> Result<netif::Iface> {
    pins.require_loaded()?;
    let records = Records::open(pins)?;
    let mut fds = Vec::new();
    for slot in kind.slots() {
        fds.push(obj_get(&pins.prog(slot.prog))?);
    }
    let xdp_fd = match xdp_prog(kind) {
        Some(p) => Some((p, obj_get(&pins.prog(p))?)),
        None => None,
    };
    let _ns = NetnsGuard::enter(netns_name)?;
    let iface = netif::resolve(ifspec)?;
    let ns_id = netns::current_inode()?;
    let before = records.get(kind, ns_id, iface.index)?;
    if let Some((p, _)) = &xdp_fd {
        // Someone else's XDP program: refuse before changing anything.
        xdp_ours(&iface, p)?;
    }

    let created = create_clsact(&iface)?;
    let mut added: Vec<&TcSlot> = Vec::new();
    let mut xdp_added = false;
    let result = (|| -> Result<()> {
        let mut flags = before.as_ref().map(|r| r.flags).unwrap_or(0) & !(XDP_NATIVE | XDP_GENERIC);
        // The guard first: by the time dnat forwards, it is in front.
        if let Some((p, fd)) = &xdp_fd {
            let (mode, new) = xdp_attach(&iface, p, fd.as_raw_fd())?;
            xdp_added = new;
            flags |= mode.record_flag();
        }
        for (slot, fd) in kind.slots().iter().zip(&fds) {
            let present = tc_query(iface.index, slot)?.is_some();
            tc_attach(&iface, slot, fd.as_raw_fd())?;
            if !present {
                added.push(slot);
            }
        }
        if created {
            flags |= QDISC_CREATED;
        }
        records.put(kind, ns_id, iface.index, netns_name.unwrap_or(""), &iface.name, flags)
    })();
    if let Err(e) = result {
        for slot in added {
            let _ = tc_detach(iface.index, slot);
        }
        if created {
            let _ = destroy_clsact(iface.index);
        }
        if let (true, Some((p, _))) = (xdp_added, &xdp_fd) {
            let _ = xdp_detach(&iface, p);
        }
        return Err(e);
    }
    Ok(iface)
}

/// `detach dnat|host <if>`: removes the kind's filters, and the clsact
/// qdisc if datapathctl created it and nothing else of ours uses it.
/// Detaching what is not attached, or from an interface that is gone,
/// succeeds.
pub fn detach_tc(pins: &PinRoot, netns_name: Option<&str>, kind: Kind, ifspec: &str) -> Result<bool> {
    let records = if pins.is_loaded() { Some(Records::open(pins)?) } else { None };
    let _ns = NetnsGuard::enter(netns_name)?;
    let ns_id = netns::current_inode()?;
    let iface = match netif::resolve(ifspec) {
        Ok(i) => i,
        Err(_) => {
            // The interface is gone and its filters with it: forget it.
            if let Some(records) = &records {
                for r in records.list()? {
                    if r.kind == Some(kind) && r.id == ns_id && r.target == ifspec {
                        records.remove(&r)?;
                    }
                }
            }
            return Ok(false);
        }
    };
    detach_iface(records.as_ref(), kind, ns_id, &iface)
}

fn detach_iface(records: Option<&Records>, kind: Kind, ns_id: u64, iface: &netif::Iface) -> Result<bool> {
    let mut any = false;
    for slot in kind.slots() {
        any |= tc_detach(iface.index, slot)?;
    }
    // The guard last: it protects until dnat is gone.
    if let Some(p) = xdp_prog(kind) {
        any |= xdp_detach(iface, p)?;
    }
    if let Some(records) = records {
        if let Some(rec) = records.get(kind, ns_id, iface.index)? {
            records.remove(&rec)?;
            let others = records.list()?.into_iter().any(|r| r.id == ns_id && r.ifindex == iface.index);
            if rec.flags & QDISC_CREATED != 0 && !others {
                destroy_clsact(iface.index)?;
            }
        }
    }
    Ok(any)
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_root() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        if right.split_whitespace().next() == Some("cgroup2") {
            if let Some(mp) = left.split_whitespace().nth(4) {
                return Ok(PathBuf::from(mp.replace("\\040", " ")));
            }
        }
    }
    bail!("no cgroup v2 filesystem is mounted")
}

const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;

fn open_cgroup(path: &Path) -> Result<(File, u64)> {
    let f = File::open(path).with_context(|| format!("cgroup {} not found", path.display()))?;
    let st = nix::sys::statfs::fstatfs(f.as_fd()).with_context(|| format!("inspecting {}", path.display()))?;
    if st.filesystem_type().0 as i64 != CGROUP2_SUPER_MAGIC || !f.metadata()?.is_dir() {
        bail!("{} is not a cgroup v2 directory", path.display());
    }
    let id = f.metadata()?.ino();
    Ok((f, id))
}

fn link_name(cgroup_id: u64) -> String {
    format!("getsockopt-{cgroup_id}")
}

/// `attach getsockopt [<path>]`: a bpf_link pinned under links/, so it
/// outlives this process. Attaching again updates the link's program.
pub fn attach_getsockopt(pins: &PinRoot, path: Option<&Path>) -> Result<PathBuf> {
    pins.require_loaded()?;
    let records = Records::open(pins)?;
    let cg = match path {
        Some(p) => p.to_path_buf(),
        None => cgroup2_root()?,
    };
    let (cg_file, id) = open_cgroup(&cg)?;
    let prog = obj_get(&pins.prog("getsockopt"))?;
    let link_path = pins.link(&link_name(id));
    let target = cg.to_string_lossy().into_owned();
    if link_path.exists() {
        let link = obj_get(&link_path)?;
        // SAFETY: both descriptors are valid; NULL opts are allowed.
        let rc = unsafe { libbpf_sys::bpf_link_update(link.as_raw_fd(), prog.as_raw_fd(), std::ptr::null()) };
        if rc != 0 {
            return Err(errno(rc)).with_context(|| format!("updating the getsockopt link on {target}"));
        }
        records.put(Kind::Getsockopt, id, 0, "", &target, 0)?;
        return Ok(cg);
    }
    // SAFETY: valid descriptors; NULL opts are allowed.
    let fd = unsafe {
        libbpf_sys::bpf_link_create(
            prog.as_raw_fd(),
            cg_file.as_raw_fd(),
            libbpf_sys::BPF_CGROUP_GETSOCKOPT,
            std::ptr::null(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("attaching getsockopt to cgroup {target}"));
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    let link = unsafe { OwnedFd::from_raw_fd(fd) };
    let c = CString::new(link_path.as_os_str().as_encoded_bytes())?;
    // SAFETY: valid descriptor and NUL-terminated path.
    let rc = unsafe { libbpf_sys::bpf_obj_pin(link.as_raw_fd(), c.as_ptr()) };
    if rc != 0 {
        // Dropping the only reference to the link detaches it again.
        return Err(errno(rc)).with_context(|| format!("pinning {}", link_path.display()));
    }
    if let Err(e) = records.put(Kind::Getsockopt, id, 0, "", &target, 0) {
        let _ = std::fs::remove_file(&link_path);
        return Err(e);
    }
    Ok(cg)
}

/// `detach getsockopt [<path>]`: unpinning the link's last reference
/// detaches it.
pub fn detach_getsockopt(pins: &PinRoot, path: Option<&Path>) -> Result<bool> {
    let cg = match path {
        Some(p) => p.to_path_buf(),
        None => cgroup2_root()?,
    };
    let (_f, id) = open_cgroup(&cg)?;
    let link_path = pins.link(&link_name(id));
    let existed = match std::fs::remove_file(&link_path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("removing {}", link_path.display())),
    };
    if pins.is_loaded() {
        let records = Records::open(pins)?;
        if let Some(r) = records.get(Kind::Getsockopt, id, 0)? {
            records.remove(&r)?;
        }
    }
    Ok(existed)
}

/// During `load`: points every recorded attachment at the new programs,
/// in place. Records whose interface, namespace or link is gone are
/// dropped. Returns how many attachments were updated.
pub fn replace_all(dp: &Datapath<'_>, pins: &PinRoot) -> Result<usize> {
    let records = Records::from_handle(MapHandle::try_from(dp.map("attachments")?)?);
    let mut updated = 0;
    for r in records.list()? {
        let Some(kind) = r.kind else { continue };
        if kind == Kind::Getsockopt {
            let link_path = pins.link(&link_name(r.id));
            if !link_path.exists() {
                records.remove(&r)?;
                continue;
            }
            let link = obj_get(&link_path)?;
            let prog = dp.program("getsockopt")?;
            // SAFETY: both descriptors are valid; NULL opts are allowed.
            let rc = unsafe {
                libbpf_sys::bpf_link_update(link.as_raw_fd(), prog.as_fd().as_raw_fd(), std::ptr::null())
            };
            if rc != 0 {
                return Err(errno(rc)).with_context(|| format!("updating the getsockopt link on {}", r.target));
            }
            updated += 1;
            continue;
        }
        let Some((_guard, iface)) = enter_recorded(&r)? else {
            records.remove(&r)?;
            continue;
        };
        let mut present = 0;
        if let Some(p) = xdp_prog(kind) {
            match xdp_ours(&iface, p) {
                Ok(Some(_)) => {
                    let prog = dp.program(p)?;
                    xdp_attach(&iface, p, prog.as_fd().as_raw_fd())?;
                    present += 1;
                }
                Ok(None) => {}
                // Replaced by someone else's program since: theirs now.
                Err(e) => log::warn!("{e:#}"),
            }
        }
        for slot in kind.slots() {
            if tc_query(iface.index, slot)?.is_some() {
                let prog = dp.program(slot.prog)?;
                tc_attach(&iface, slot, prog.as_fd().as_raw_fd())?;
                present += 1;
            }
        }
        if present == 0 {
            records.remove(&r)?;
        } else {
            updated += 1;
        }
    }
    Ok(updated)
}

/// Enters the namespace of a TC attachment record and checks that its
/// interface is still the one recorded (same namespace, same index and
/// name). None: the record is stale.
fn enter_recorded(r: &Record) -> Result<Option<(NetnsGuard, netif::Iface)>> {
    let ns = if r.netns.is_empty() { None } else { Some(r.netns.as_str()) };
    let Ok(guard) = NetnsGuard::enter(ns) else {
        return Ok(None);
    };
    let same_ns = netns::current_inode()? == r.id;
    let same_if = netif::name_of(r.ifindex).map(|n| n == r.target).unwrap_or(false);
    if !same_ns || !same_if {
        return Ok(None);
    }
    Ok(Some((guard, netif::Iface { index: r.ifindex, name: r.target.clone() })))
}

/// During `unload`: removes every recorded attachment.
pub fn detach_all(pins: &PinRoot) -> Result<()> {
    let records = Records::open(pins)?;
    for r in records.list()? {
        match r.kind {
            Some(Kind::Getsockopt) => {
                let _ = std::fs::remove_file(pins.link(&link_name(r.id)));
                records.remove(&r)?;
            }
            Some(kind) => match enter_recorded(&r)? {
                Some((_guard, iface)) => {
                    detach_iface(Some(&records), kind, r.id, &iface)?;
                }
                None => records.remove(&r)?,
            },
            None => records.remove(&r)?,
        }
    }
    Ok(())
}
