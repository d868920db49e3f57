//! Routes in the main table: host routes, on-link routes to a gateway,
//! default routes through a gateway (IPv4 and IPv6).

use std::fmt;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope as NlScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{IpPrefix, Result, Rtnl};

/// How far a route's destination is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteScope {
    /// Through a gateway.
    Universe,
    /// Directly on the link.
    Link,
    /// This host.
    Host,
    Other(u8),
}

impl From<NlScope> for RouteScope {
    fn from(s: NlScope) -> Self {
        match s {
            NlScope::Universe => Self::Universe,
            NlScope::Link => Self::Link,
            NlScope::Host => Self::Host,
            other => Self::Other(u8::from(other)),
        }
    }
}

impl From<RouteScope> for NlScope {
    fn from(s: RouteScope) -> Self {
        match s {
            RouteScope::Universe => NlScope::Universe,
            RouteScope::Link => NlScope::Link,
            RouteScope::Host => NlScope::Host,
            RouteScope::Other(v) => NlScope::from(v),
        }
    }
}

/// A unicast route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: IpPrefix,
    pub gateway: Option<IpAddr>,
    /// Output link index.
    pub oif: Option<u32>,
    pub scope: RouteScope,
}

impl Route {
    /// `dst/32` (or `/128`) `dev oif scope link`: an address reached
    /// directly on a link, like a container behind its host veth.
    pub fn host(dst: IpAddr, oif: u32) -> Self {
        Self { dst: IpPrefix::host(dst), gateway: None, oif: Some(oif), scope: RouteScope::Link }
    }

    /// The on-link route to a gateway that is in no subnet of the link
    /// (`169.254.1.1/32 dev eth0 scope link`), so a route through it can
    /// be added. The same kernel object as a host route.
    pub fn to_gateway(gateway: IpAddr, oif: u32) -> Self {
        Self::host(gateway, oif)
    }

    /// `default via gateway dev oif` (`0.0.0.0/0` or `::/0`).
    pub fn default_via(gateway: IpAddr, oif: u32) -> Self {
        Self {
            dst: IpPrefix::default_for(gateway.is_ipv6()),
            gateway: Some(gateway),
            oif: Some(oif),
            scope: RouteScope::Universe,
        }
    }

    fn message(&self, scope: NlScope) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header = RouteHeader {
            address_family: if self.dst.is_ipv6() { AddressFamily::Inet6 } else { AddressFamily::Inet },
            destination_prefix_length: self.dst.len,
            table: RouteHeader::RT_TABLE_MAIN,
            // What `ip route add` uses.
            protocol: RouteProtocol::Boot,
            scope,
            kind: RouteType::Unicast,
            ..Default::default()
        };
        if self.dst.len > 0 {
            m.attributes.push(RouteAttribute::Destination(RouteAddress::from(self.dst.addr)));
        }
        if let Some(gw) = self.gateway {
            m.attributes.push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(oif) = self.oif {
            m.attributes.push(RouteAttribute::Oif(oif));
        }
        m
    }

    fn from_message(m: &RouteMessage) -> Option<Self> {
        let v6 = match m.header.address_family {
            AddressFamily::Inet => false,
            AddressFamily::Inet6 => true,
            _ => return None,
        };
        let mut dst = IpPrefix::default_for(v6);
        dst.len = m.header.destination_prefix_length;
        let mut r = Route { dst, gateway: None, oif: None, scope: m.header.scope.into() };
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(a) => r.dst.addr = ip_of(a)?,
                RouteAttribute::Gateway(a) => r.gateway = ip_of(a),
                RouteAttribute::Oif(i) => r.oif = Some(*i),
                _ => {}
            }
        }
        Some(r)
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dst.len == 0 {
            write!(f, "default")?;
        } else {
            write!(f, "{}", self.dst)?;
        }
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev index {oif}")?;
        }
        Ok(())
    }
}

/// Whether `m` is a unicast route of the main table.
fn in_main(m: &RouteMessage) -> bool {
    let table = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table));
    table == u32::from(RouteHeader::RT_TABLE_MAIN) && m.header.kind == RouteType::Unicast
}

impl Rtnl {
    /// Adds a route to the main table; Exists if that destination is
    /// routed already, NotFound if the link is gone.
    pub fn add_route(&mut self, r: &Route) -> Result<()> {
        let ctx = || format!("adding route {r}");
        self.ack(RouteNetlinkMessage::NewRoute(r.message(r.scope.into())), NLM_F_CREATE | NLM_F_EXCL, &ctx)
    }

    /// Deletes the route with this destination, gateway and link from the
    /// main table; Ok(false) if there is none.
    pub fn del_route(&mut self, r: &Route) -> Result<bool> {
        let ctx = || format!("deleting route {r}");
        // RT_SCOPE_NOWHERE: any scope, as `ip route del` asks.
        match self.ack(RouteNetlinkMessage::DelRoute(r.message(NlScope::NoWhere)), 0, &ctx) {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The unicast routes of the main table, of one family, through link
    /// `oif` or all.
    pub fn routes(&mut self, v6: bool, oif: Option<u32>) -> Result<Vec<Route>> {
        let ctx = || format!("listing IPv{} routes", if v6 { 6 } else { 4 });
        let mut m = RouteMessage::default();
        m.header.address_family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        if let Some(oif) = oif {
            m.attributes.push(RouteAttribute::Oif(oif));
        }
        let reply = self.exchange(RouteNetlinkMessage::GetRoute(m), NLM_F_DUMP, &ctx)?;
        Ok(reply
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(m) if in_main(m) => Route::from_message(m),
                _ => None,
            })
            .filter(|r| oif.is_none() || r.oif == oif)
            .collect())
    }
}
