//! Links: read one or all, create a veth pair, up/down, MTU, delete.

use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkXdp,
};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::RouteNetlinkMessage;

use super::{cut, Error, ErrorKind, Result, Rtnl};

/// A link given by name or by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkId<'a> {
    Name(&'a str),
    Index(u32),
}

impl<'a> From<&'a str> for LinkId<'a> {
    fn from(s: &'a str) -> Self {
        Self::Name(s)
    }
}

impl<'a> From<&'a String> for LinkId<'a> {
    fn from(s: &'a String) -> Self {
        Self::Name(s)
    }
}

impl From<u32> for LinkId<'_> {
    fn from(i: u32) -> Self {
        Self::Index(i)
    }
}

impl fmt::Display for LinkId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => write!(f, "{}", cut(n)),
            Self::Index(i) => write!(f, "index {i}"),
        }
    }
}

/// What the kernel says about a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Hardware address, for Ethernet-like links.
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// `veth`, `dummy`, …; `None` for links without a kind (lo, physical).
    pub kind: Option<String>,
    /// IFLA_LINK: for a veth, the index of its peer (in the peer's
    /// namespace, see `link_netnsid`).
    pub peer_index: Option<u32>,
    /// IFLA_LINK_NETNSID: for a veth whose peer is in another namespace,
    /// that namespace's id as seen from this one (see [`Rtnl::nsid`]).
    pub link_netnsid: Option<i32>,
    /// The XDP program attached in generic (skb) mode, by id.
    pub xdp_skb_prog: Option<u32>,
    /// The XDP program attached in the driver (native) mode, by id.
    pub xdp_drv_prog: Option<u32>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Self {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
            kind: None,
            peer_index: None,
            link_netnsid: None,
            xdp_skb_prog: None,
            xdp_drv_prog: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(a) => l.mac = a.as_slice().try_into().ok(),
                LinkAttribute::Mtu(m) => l.mtu = *m,
                LinkAttribute::Link(i) => l.peer_index = Some(*i),
                LinkAttribute::LinkNetNsId(i) => l.link_netnsid = Some(*i),
                LinkAttribute::Xdp(xdp) => {
                    for x in xdp {
                        match x {
                            LinkXdp::SkbProgId(id) if *id != 0 => l.xdp_skb_prog = Some(*id),
                            LinkXdp::DrvProgId(id) if *id != 0 => l.xdp_drv_prog = Some(*id),
                            _ => {}
                        }
                    }
                }
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }
}

/// A veth pair to create: `name` here, `peer` in `peer_netns` (or here).
#[derive(Clone, Copy, Debug)]
pub struct VethPair<'a> {
    pub name: &'a str,
    pub peer: &'a str,
    /// The peer's network namespace (an open namespace file); `None`:
    /// the socket's own.
    pub peer_netns: Option<BorrowedFd<'a>>,
    /// MTU of both ends; `None`: the kernel's default.
    pub mtu: Option<u32>,
}

/// Checks an interface name as the kernel would (dev_valid_name), so a bad
/// one is refused with a clear error before anything is sent.
pub fn check_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::new(ErrorKind::Invalid, format!("interface name '{}'", cut(name)), why))
    };
    if name.is_empty() || name.len() > 15 {
        return bad("must be 1 to 15 bytes long");
    }
    if name == "." || name == ".." || name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0) {
        return bad("must not be '.' or '..' nor contain '/', ':', NUL or white space");
    }
    Ok(())
}

/// A link message that names the link: by index in the header, or by
/// IFLA_IFNAME.
fn message_for(id: LinkId) -> Result<LinkMessage> {
    let mut m = LinkMessage::default();
    match id {
        LinkId::Index(i) => m.header.index = i,
        LinkId::Name(n) => {
            check_name(n)?;
            m.attributes.push(LinkAttribute::IfName(n.to_string()));
        }
    }
    Ok(m)
}

impl Rtnl {
    /// The link with this name or index; NotFound when there is none.
    pub fn link<'a>(&mut self, id: impl Into<LinkId<'a>>) -> Result<Link> {
        let id = id.into();
        let ctx = || format!("reading link {id}");
        let m = message_for(id)?;
        let reply = self.exchange(RouteNetlinkMessage::GetLink(m), 0, &ctx)?;
        reply
            .iter()
            .find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .ok_or_else(|| Error::new(ErrorKind::Other, ctx(), "the kernel answered without the link"))
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let ctx = || "listing links".to_string();
        let reply = self.exchange(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP, &ctx)?;
        Ok(reply
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// Creates a veth pair, the peer directly in its namespace (so it never
    /// appears here), both ends down. Exists if either name is taken (on
    /// its own side); Invalid for an MTU out of range. Returns this end.
    pub fn create_veth(&mut self, v: &VethPair) -> Result<Link> {
        let ctx = || {
            let ns = if v.peer_netns.is_some() { " in the target namespace" } else { "" };
            let mtu = v.mtu.map(|m| format!(", MTU {m}")).unwrap_or_default();
            format!("creating veth pair {} / {}{ns}{mtu}", cut(v.name), cut(v.peer))
        };
        check_name(v.name)?;
        check_name(v.peer)?;
        let mut peer = LinkMessage::default();
        peer.attributes.push(LinkAttribute::IfName(v.peer.to_string()));
        if let Some(mtu) = v.mtu {
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(fd) = v.peer_netns {
            peer.attributes.push(LinkAttribute::NetNsFd(fd.as_raw_fd()));
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(v.name.to_string()));
        if let Some(mtu) = v.mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL, &ctx)?;
        self.link(v.name)
    }

    /// Sets a link administratively up or down.
    pub fn set_up<'a>(&mut self, id: impl Into<LinkId<'a>>, up: bool) -> Result<()> {
        let id = id.into();
        let ctx = || format!("setting link {id} {}", if up { "up" } else { "down" });
        let mut m = message_for(id)?;
        m.header.flags = if up { LinkFlags::Up } else { LinkFlags::empty() };
        m.header.change_mask = LinkFlags::Up;
        self.ack(RouteNetlinkMessage::SetLink(m), 0, &ctx)
    }

    /// Sets a link's MTU; Invalid when out of the link's range.
    pub fn set_mtu<'a>(&mut self, id: impl Into<LinkId<'a>>, mtu: u32) -> Result<()> {
        let id = id.into();
        let ctx = || format!("setting the MTU of link {id} to {mtu}");
        let mut m = message_for(id)?;
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.ack(RouteNetlinkMessage::SetLink(m), 0, &ctx)
    }

    /// Deletes a link (a veth takes its peer with it). Ok(false) when there
    /// was no such link.
    pub fn del_link<'a>(&mut self, id: impl Into<LinkId<'a>>) -> Result<bool> {
        let id = id.into();
        let ctx = || format!("deleting link {id}");
        let m = message_for(id)?;
        match self.ack(RouteNetlinkMessage::DelLink(m), 0, &ctx) {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The id this namespace gives the network namespace of `ns` (what a
    /// veth's `link_netnsid` holds when its peer is there); `None` when it
    /// has none assigned.
    pub fn nsid(&mut self, ns: BorrowedFd) -> Result<Option<i32>> {
        let ctx = || "reading the id of a network namespace".to_string();
        let mut m = NsidMessage::default();
        m.attributes.push(NsidAttribute::Fd(ns.as_raw_fd() as u32));
        let reply = self.exchange(RouteNetlinkMessage::GetNsId(m), 0, &ctx)?;
        for r in &reply {
            if let RouteNetlinkMessage::NewNsId(n) = r {
                for a in &n.attributes {
                    if let NsidAttribute::Id(id) = a {
                        return Ok((*id >= 0).then_some(*id));
                    }
                }
            }
        }
        Err(Error::new(ErrorKind::Other, ctx(), "the kernel answered without an id"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_the_kernel_does() {
        for ok in ["eth0", "ve-mc1", "a", "123456789012345", "x.y-z_1"] {
            assert!(check_name(ok).is_ok(), "{ok:?} is a valid name");
        }
        for bad in ["", "1234567890123456", ".", "..", "a/b", "a:b", "a b", "a\tb", "a\0b"] {
            let e = check_name(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{bad:?}");
        }
    }
}
