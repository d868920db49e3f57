//! Addresses: add, delete, list (IPv4 and IPv6).

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{IpPrefix, Result, Rtnl};

/// An address on a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addr {
    /// The link's index.
    pub index: u32,
    pub prefix: IpPrefix,
    /// Added without duplicate address detection (IPv6).
    pub nodad: bool,
    /// Still in duplicate address detection (IPv6): not usable yet.
    pub tentative: bool,
}

fn family(a: IpAddr) -> AddressFamily {
    if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// The message for `prefix` on link `index`, as `ip addr add` builds it:
/// IFA_LOCAL and IFA_ADDRESS both the address (no point-to-point peer).
fn message(index: u32, prefix: IpPrefix) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family(prefix.addr);
    m.header.prefix_len = prefix.len;
    m.header.index = index;
    m.header.scope = AddressScope::Universe;
    m.attributes.push(AddressAttribute::Local(prefix.addr));
    m.attributes.push(AddressAttribute::Address(prefix.addr));
    m
}

impl Rtnl {
    /// Adds `prefix` to link `index`. `nodad` (IPv6 only) makes the address
    /// usable at once instead of after duplicate address detection: right
    /// for an address only this link can have, like a gateway on a veth.
    /// Exists if the link has it already; Permission if IPv6 is disabled
    /// on the link.
    pub fn add_addr(&mut self, index: u32, prefix: IpPrefix, nodad: bool) -> Result<()> {
        let ctx = || format!("adding address {prefix} to link index {index}");
        let mut m = message(index, prefix);
        if nodad && prefix.is_ipv6() {
            m.header.flags = AddressHeaderFlags::Nodad;
            m.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.ack(RouteNetlinkMessage::NewAddress(m), NLM_F_CREATE | NLM_F_EXCL, &ctx)
    }

    /// Removes `prefix` from link `index`; Ok(false) if it was not there
    /// (or the link is gone).
    pub fn del_addr(&mut self, index: u32, prefix: IpPrefix) -> Result<bool> {
        let ctx = || format!("deleting address {prefix} from link index {index}");
        match self.ack(RouteNetlinkMessage::DelAddress(message(index, prefix)), 0, &ctx) {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The addresses of link `index`, or of every link; both families.
    pub fn addrs(&mut self, index: Option<u32>) -> Result<Vec<Addr>> {
        let ctx = || "listing addresses".to_string();
        let mut req = AddressMessage::default();
        req.header.index = index.unwrap_or(0);
        let reply = self.exchange(RouteNetlinkMessage::GetAddress(req), NLM_F_DUMP, &ctx)?;
        let mut out = Vec::new();
        for r in &reply {
            let RouteNetlinkMessage::NewAddress(m) = r else { continue };
            if index.is_some_and(|i| i != m.header.index) {
                continue;
            }
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS the
            // peer's on point-to-point links. IPv6 sends IFA_ADDRESS only.
            let mut local = None;
            let mut address = None;
            let mut flags = AddressFlags::from_bits_retain(u32::from(m.header.flags.bits()));
            for a in &m.attributes {
                match a {
                    AddressAttribute::Local(a) => local = Some(*a),
                    AddressAttribute::Address(a) => address = Some(*a),
                    AddressAttribute::Flags(f) => flags = *f,
                    _ => {}
                }
            }
            let Some(addr) = local.or(address) else { continue };
            out.push(Addr {
                index: m.header.index,
                prefix: IpPrefix { addr, len: m.header.prefix_len },
                nodad: flags.contains(AddressFlags::Nodad),
                tentative: flags.contains(AddressFlags::Tentative),
            });
        }
        Ok(out)
    }
}
