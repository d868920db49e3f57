//! Published ports: the mappings as the user gave them (`mappings`, with
//! `mapping_rev` for the one-container-port-per-address rule), their
//! expansion into the `dnat4` / `dnat6` entries dnat looks up, the external addresses
//! (`externals`), and the slots of the per-port counters (`meta`,
//! `slot_next`, `port_stats`). Every change here writes several entries, so
//! each takes a [`Txn`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context, Result};
use libbpf_rs::MapHandle;
use serde::Serialize;

use super::{name, Change, Txn};
use crate::abi::{addr_of, addr_x4, bytes_of, capacity, types, Proto, AF_INET, AF_INET6};
use crate::kernel::pins::PinRoot;
use crate::net::netif::format_mac;

/// Where a mapping is published: on every default external address of
/// its family, or on one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ext {
    Default,
    Addr(IpAddr),
}

impl Ext {
    pub fn addr(self) -> Option<IpAddr> {
        match self {
            Ext::Default => None,
            Ext::Addr(a) => Some(a),
        }
    }
}

impl std::fmt::Display for Ext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ext::Default => f.write_str("default"),
            Ext::Addr(a) => write!(f, "{a}"),
        }
    }
}

/// Formats `addr:port`, IPv6 in brackets.
pub fn addr_port(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// The family number of an address (AF_INET, AF_INET6).
pub fn family_of(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

impl Serialize for Ext {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn ser_mac<S: serde::Serializer>(mac: &[u8; 6], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format_mac(mac))
}

/// A mapping: `[ext-addr:]host-port/proto -> ctr-addr:ctr-port` behind a
/// host veth, with the container's MAC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mapping {
    pub ext_addr: Ext,
    pub host_port: u16,
    pub proto: Proto,
    pub ctr_ip: IpAddr,
    pub ctr_port: u16,
    #[serde(serialize_with = "ser_mac")]
    pub ctr_mac: [u8; 6],
    pub veth_ifindex: u32,
}

/// A mapping as stored, with the slot of its counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Published {
    #[serde(flatten)]
    pub mapping: Mapping,
    pub slot: u32,
}

impl Mapping {
    /// The mapping's address family: its container address's.
    pub fn family(&self) -> u8 {
        family_of(self.ctr_ip)
    }

    fn key(&self) -> types::mapping_key {
        mapping_key(self.family(), self.ext_addr, self.host_port, self.proto)
    }

    fn rev_key(&self, ext: Ext) -> types::mapping_rev_key {
        types::mapping_rev_key {
            family: self.family(),
            proto: self.proto.number(),
            ctr_port: self.ctr_port.to_be(),
            ctr_addr: addr_x4(self.ctr_ip).1,
            ext_addr: ext.addr().map(|a| addr_x4(a).1).unwrap_or([0; 4]),
        }
    }

    fn value(&self, slot: u32) -> types::mapping_value {
        types::mapping_value {
            ctr_addr: addr_x4(self.ctr_ip).1,
            ctr_port: self.ctr_port.to_be(),
            ctr_mac: self.ctr_mac,
            veth_ifindex: self.veth_ifindex,
            slot,
        }
    }

    /// `host-port/proto on ext`, as errors name a mapping.
    pub fn port_name(&self) -> String {
        port_name(self.ext_addr, self.host_port, self.proto)
    }

    pub fn describe(&self) -> String {
        format!(
            "{} -> {} mac {} veth ifindex {}",
            self.port_name(),
            addr_port(self.ctr_ip, self.ctr_port),
            format_mac(&self.ctr_mac),
            self.veth_ifindex
        )
    }

    /// Refuses what can never be a container's address or MAC.
    pub fn check(&self) -> Result<()> {
        if let Ext::Addr(a) = self.ext_addr {
            check_ip(a, "external address")?;
            if a.is_ipv4() != self.ctr_ip.is_ipv4() {
                bail!(
                    "external address {a} and container address {} are of different families",
                    self.ctr_ip
                );
            }
        }
        check_ip(self.ctr_ip, "container address")?;
        check_mac(&self.ctr_mac)
    }
}

impl Published {
    pub fn describe(&self) -> String {
        format!("{} slot {}", self.mapping.describe(), self.slot)
    }

    fn from_entry(k: &types::mapping_key, v: &types::mapping_value) -> Result<Self> {
        if k.family != AF_INET && k.family != AF_INET6 {
            bail!("mapping of address family {} is not supported by this build", k.family);
        }
        let ext = if k.ext_addr == [0; 4] {
            Ext::Default
        } else {
            Ext::Addr(addr_of(k.family, &k.ext_addr).context("mapping with a malformed IPv4 address")?)
        };
        Ok(Self {
            mapping: Mapping {
                ext_addr: ext,
                host_port: k.host_port(),
                proto: Proto::from_number(k.proto)?,
                ctr_ip: addr_of(k.family, &v.ctr_addr).context("mapping with a malformed container address")?,
                ctr_port: v.ctr_port(),
                ctr_mac: v.ctr_mac,
                veth_ifindex: v.veth_ifindex,
            },
            slot: v.slot,
        })
    }
}

fn port_name(ext: Ext, port: u16, proto: Proto) -> String {
    match ext {
        Ext::Default => format!("{port}/{proto} on the default addresses"),
        Ext::Addr(a) => format!("{}/{proto}", addr_port(a, port)),
    }
}

/// The mappings key of a mapping of `family` on `ext`.
fn mapping_key(family: u8, ext: Ext, host_port: u16, proto: Proto) -> types::mapping_key {
    types::mapping_key {
        family,
        proto: proto.number(),
        host_port: host_port.to_be(),
        ext_addr: ext.addr().map(|a| addr_x4(a).1).unwrap_or([0; 4]),
    }
}

/// The family a mapping given as (ext, port) is looked up in: an address's
/// own, IPv4 for a bare port unless `v6` says otherwise.
pub fn lookup_family(ext: Ext, v6: bool) -> u8 {
    match ext {
        Ext::Addr(a) => family_of(a),
        Ext::Default if v6 => AF_INET6,
        Ext::Default => AF_INET,
    }
}

/// Refuses addresses that can never be an external or a container
/// address, of either family. IPv6: unspecified, loopback, multicast,
/// link-local (a published port or a container is reached by a routable
/// address) and IPv4-mapped (an IPv4 address is given as one).
pub fn check_ip(ip: IpAddr, what: &str) -> Result<()> {
    match ip {
        IpAddr::V4(a) => check_addr(a, what),
        IpAddr::V6(a) => check_addr6(a, what),
    }
}

pub fn check_addr6(ip: Ipv6Addr, what: &str) -> Result<()> {
    let seg = ip.segments();
    let why = if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if ip.is_multicast() {
        "multicast"
    } else if seg[0] & 0xffc0 == 0xfe80 {
        "link-local"
    } else if ip.to_ipv4_mapped().is_some() {
        "IPv4-mapped"
    } else {
        return Ok(());
    };
    bail!("{what} {ip} is {why}, not a host's address")
}

/// Refuses addresses that can never be an external or a container
/// address: unspecified, broadcast, multicast, loopback.
pub fn check_addr(ip: Ipv4Addr, what: &str) -> Result<()> {
    let why = if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_broadcast() {
        "the broadcast address"
    } else if ip.is_multicast() {
        "multicast"
    } else if ip.is_loopback() {
        "loopback"
    } else {
        return Ok(());
    };
    bail!("{what} {ip} is {why}, not a host's address")
}

/// Refuses MACs that can never be an interface's: all zero, or with the
/// group (multicast, broadcast) bit.
pub fn check_mac(mac: &[u8; 6]) -> Result<()> {
    if *mac == [0; 6] {
        bail!("MAC address {} is all zero, not an interface's", format_mac(mac));
    }
    if mac[0] & 1 != 0 {
        bail!("MAC address {} is a multicast address, not an interface's", format_mac(mac));
    }
    Ok(())
}

/// One mapping, read without a transaction: a bare port is the IPv4
/// default mapping (see [`get_in`]).
pub fn get(map: &MapHandle, ext: Ext, host_port: u16, proto: Proto) -> Result<Option<Published>> {
    get_in(map, lookup_family(ext, false), ext, host_port, proto)
}

/// One mapping of `family` (see [`lookup_family`]), read without a
/// transaction.
pub fn get_in(map: &MapHandle, family: u8, ext: Ext, host_port: u16, proto: Proto) -> Result<Option<Published>> {
    let k = mapping_key(family, ext, host_port, proto);
    match super::lookup::<_, types::mapping_value>(map, &k)? {
        Some(v) => Ok(Some(Published::from_entry(&k, &v)?)),
        None => Ok(None),
    }
}

/// Every mapping, by address ("default" first), port and protocol.
pub fn list(pins: &PinRoot) -> Result<Vec<Published>> {
    let map = super::open(pins, name::MAPPINGS)?;
    let mut out = super::entries::<types::mapping_key, types::mapping_value>(&map)?
        .iter()
        .map(|(k, v)| Published::from_entry(k, v))
        .collect::<Result<Vec<_>>>()?;
    out.sort_by_key(|p| (p.mapping.ext_addr, p.mapping.family(), p.mapping.host_port, p.mapping.proto));
    Ok(out)
}

fn get_txn(txn: &mut Txn, family: u8, ext: Ext, host_port: u16, proto: Proto) -> Result<Option<Published>> {
    let k = mapping_key(family, ext, host_port, proto);
    match txn.get::<_, types::mapping_value>(name::MAPPINGS, &k)? {
        Some(v) => Ok(Some(Published::from_entry(&k, &v)?)),
        None => Ok(None),
    }
}

/// The default external addresses of `family`, in order.
fn defaults(txn: &mut Txn, family: u8) -> Result<Vec<IpAddr>> {
    Ok(externals_of(txn.entries(name::EXTERNALS)?)
        .into_iter()
        .filter(|e| e.default && family_of(e.addr) == family)
        .map(|e| e.addr)
        .collect())
}

/// Every mapping of `family` published on `ext`.
fn published_on(txn: &mut Txn, family: u8, ext: Ext) -> Result<Vec<Published>> {
    let all = txn.entries::<types::mapping_key, types::mapping_value>(name::MAPPINGS)?;
    let mut out = Vec::new();
    for (k, v) in &all {
        if k.family == family {
            let p = Published::from_entry(k, v)?;
            if p.mapping.ext_addr == ext {
                out.push(p);
            }
        }
    }
    out.sort_by_key(|p| (p.mapping.host_port, p.mapping.proto));
    Ok(out)
}

/// The host port `m`'s container port is already published under on
/// `ext`, if any.
fn rev_owner(txn: &mut Txn, m: &Mapping, ext: Ext) -> Result<Option<Published>> {
    let Some(owner) = txn.get::<_, types::mapping_key>(name::MAPPING_REV, &m.rev_key(ext))? else {
        return Ok(None);
    };
    match txn.get::<_, types::mapping_value>(name::MAPPINGS, &owner)? {
        Some(v) => Ok(Some(Published::from_entry(&owner, &v)?)),
        // Left by a change that did not finish: nobody owns it.
        None => Ok(None),
    }
}

fn ensure_unique(txn: &mut Txn, m: &Mapping, ext: Ext) -> Result<()> {
    if let Some(o) = rev_owner(txn, m, ext)? {
        bail!(
            "{}/{} is already published as {}; one container port is published once per external address",
            addr_port(m.ctr_ip, m.ctr_port),
            m.proto,
            o.mapping.port_name()
        );
    }
    Ok(())
}

/// Publishes a mapping. The same mapping again changes nothing; a host
/// port already published on the same address, a dedicated mapping and a
/// default one on the same port of a default address, and a container port
/// published twice on one address are refused.
pub fn add(txn: &mut Txn, m: &Mapping) -> Result<Change> {
    m.check()?;
    let family = m.family();
    if let Some(cur) = get_txn(txn, family, m.ext_addr, m.host_port, m.proto)? {
        if cur.mapping == *m {
            return Ok(Change::Unchanged);
        }
        bail!("{} is already published ({}); delete it first", m.port_name(), cur.mapping.describe());
    }
    let defaults = defaults(txn, family)?;
    let targets = match m.ext_addr {
        Ext::Addr(a) => {
            let ext = externals_of(txn.entries(name::EXTERNALS)?).into_iter().find(|e| e.addr == a);
            let Some(ext) = ext else {
                bail!("{a} is not an external address (datapathctl map external add {a} <interface>)");
            };
            if ext.default {
                if let Some(d) = get_txn(txn, family, Ext::Default, m.host_port, m.proto)? {
                    bail!(
                        "{} conflicts with {}, and {a} is a default address",
                        m.port_name(),
                        d.mapping.port_name()
                    );
                }
                ensure_unique(txn, m, Ext::Default)?;
            }
            ensure_unique(txn, m, m.ext_addr)?;
            vec![a]
        }
        Ext::Default => {
            for d in &defaults {
                if let Some(o) = get_txn(txn, family, Ext::Addr(*d), m.host_port, m.proto)? {
                    bail!("{} conflicts with {} on default address {d}", m.port_name(), o.mapping.port_name());
                }
                ensure_unique(txn, m, Ext::Addr(*d))?;
            }
            ensure_unique(txn, m, Ext::Default)?;
            defaults
        }
    };
    let slot = slot_alloc(txn)?;
    let key = m.key();
    txn.put(name::MAPPINGS, &key, &m.value(slot))?;
    txn.put(name::MAPPING_REV, &m.rev_key(m.ext_addr), &key)?;
    for a in targets {
        dnat_put(txn, a, m, slot)?;
    }
    Ok(Change::Added)
}

/// Writes the dnat4 or dnat6 entry of mapping `m` (slot `slot`) on `ext`.
fn dnat_put(txn: &mut Txn, ext: IpAddr, m: &Mapping, slot: u32) -> Result<()> {
    match (ext, m.ctr_ip) {
        (IpAddr::V4(e), IpAddr::V4(c)) => txn.put(
            name::DNAT4,
            &types::dnat4_key::new(e, m.host_port, m.proto),
            &types::dnat4_value::new(c, m.ctr_port, m.ctr_mac, m.veth_ifindex, slot),
        ),
        (IpAddr::V6(e), IpAddr::V6(c)) => txn.put(
            name::DNAT6,
            &types::dnat6_key::new(e, m.host_port, m.proto),
            &types::dnat6_value::new(c, m.ctr_port, m.ctr_mac, m.veth_ifindex, slot),
        ),
        _ => bail!("external address {ext} and container address {} are of different families", m.ctr_ip),
    }
}

/// Removes the dnat4 or dnat6 entry of (ext, port, proto) if it is the one
/// of the mapping with slot `slot`.
fn dnat_del_slot(txn: &mut Txn, ext: IpAddr, host_port: u16, proto: Proto, slot: u32) -> Result<()> {
    match ext {
        IpAddr::V4(e) => {
            let dk = types::dnat4_key::new(e, host_port, proto);
            if txn.get::<_, types::dnat4_value>(name::DNAT4, &dk)?.is_some_and(|v| v.slot == slot) {
                txn.delete(name::DNAT4, &dk)?;
            }
        }
        IpAddr::V6(e) => {
            let dk = types::dnat6_key::new(e, host_port, proto);
            if txn.get::<_, types::dnat6_value>(name::DNAT6, &dk)?.is_some_and(|v| v.slot == slot) {
                txn.delete(name::DNAT6, &dk)?;
            }
        }
    }
    Ok(())
}

/// Unpublishes a mapping of `family` (see [`lookup_family`]): its dnat4
/// or dnat6 entries, its reverse entry, and its slot, whose counters are
/// zeroed. Deleting what is not there succeeds.
pub fn del_in(txn: &mut Txn, family: u8, ext: Ext, host_port: u16, proto: Proto) -> Result<Change> {
    let Some(p) = get_txn(txn, family, ext, host_port, proto)? else {
        return Ok(Change::Absent);
    };
    let m = &p.mapping;
    let key = m.key();
    txn.delete(name::MAPPINGS, &key)?;
    let rkey = m.rev_key(ext);
    if txn.get::<_, types::mapping_key>(name::MAPPING_REV, &rkey)?.is_some_and(|o| bytes_of(&o) == bytes_of(&key)) {
        txn.delete(name::MAPPING_REV, &rkey)?;
    }
    let targets = match ext {
        Ext::Addr(a) => vec![a],
        Ext::Default => defaults(txn, family)?,
    };
    for a in targets {
        // Only the entry this mapping made: the same slot.
        dnat_del_slot(txn, a, host_port, proto, p.slot)?;
    }
    slot_free(txn, p.slot)?;
    Ok(Change::Deleted)
}

/// [`del_in`]: a bare port is the IPv4 default mapping.
pub fn del(txn: &mut Txn, ext: Ext, host_port: u16, proto: Proto) -> Result<Change> {
    del_in(txn, lookup_family(ext, false), ext, host_port, proto)
}

/// Publishes one mapping, in a transaction of its own.
pub fn publish(pins: &PinRoot, m: &Mapping) -> Result<Change> {
    let mut txn = Txn::begin(pins)?;
    let c = add(&mut txn, m)?;
    txn.commit()?;
    Ok(c)
}

/// Unpublishes one mapping, in a transaction of its own.
pub fn unpublish(pins: &PinRoot, ext: Ext, host_port: u16, proto: Proto) -> Result<Change> {
    unpublish_in(pins, lookup_family(ext, false), ext, host_port, proto)
}

/// Unpublishes one mapping of `family`, in a transaction of its own.
pub fn unpublish_in(pins: &PinRoot, family: u8, ext: Ext, host_port: u16, proto: Proto) -> Result<Change> {
    let mut txn = Txn::begin(pins)?;
    let c = del_in(&mut txn, family, ext, host_port, proto)?;
    txn.commit()?;
    Ok(c)
}

/// How many entries `mappings`, `mapping_rev` and `dnat4` with `dnat6`
/// hold: they move together.
pub fn counts(pins: &PinRoot) -> Result<[usize; 3]> {
    let mut out = [0; 3];
    for (i, m) in [name::MAPPINGS, name::MAPPING_REV, name::DNAT4, name::DNAT6].iter().enumerate() {
        let i = i.min(2);
        out[i] += super::count(&super::open(pins, m)?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------
// External addresses

/// An external address: the interface it is on, and whether default
/// mappings are published on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct External {
    pub addr: IpAddr,
    pub ifindex: u32,
    pub ifname: String,
    pub default: bool,
}

impl External {
    pub fn describe(&self) -> String {
        format!(
            "{} on {} (ifindex {}){}",
            self.addr,
            self.ifname,
            self.ifindex,
            if self.default { " default" } else { "" }
        )
    }
}

fn externals_of(entries: Vec<(types::external_key, types::external_value)>) -> Vec<External> {
    let mut out: Vec<External> = entries
        .into_iter()
        .filter_map(|(k, v)| {
            addr_of(k.family, &k.addr).map(|addr| External {
                addr,
                ifindex: v.ifindex,
                ifname: v.name(),
                default: v.is_default(),
            })
        })
        .collect();
    out.sort_by_key(|e| e.addr);
    out
}

/// Every external address, in order.
pub fn externals(pins: &PinRoot) -> Result<Vec<External>> {
    let map = super::open(pins, name::EXTERNALS)?;
    Ok(externals_of(super::entries(&map)?))
}

/// Makes `addr` a default address: every default mapping gets its dnat4
/// entry on it. Refused if a dedicated mapping on `addr` conflicts with a
/// default one.
fn expand_on(txn: &mut Txn, addr: IpAddr) -> Result<()> {
    let family = family_of(addr);
    let dedicated = published_on(txn, family, Ext::Addr(addr))?;
    let default = published_on(txn, family, Ext::Default)?;
    for d in &default {
        let m = &d.mapping;
        if let Some(o) = dedicated.iter().find(|o| o.mapping.host_port == m.host_port && o.mapping.proto == m.proto) {
            bail!("{} conflicts with {}: {addr} cannot be a default address", o.mapping.port_name(), m.port_name());
        }
        if let Some(o) = dedicated.iter().find(|o| {
            (o.mapping.ctr_ip, o.mapping.ctr_port, o.mapping.proto) == (m.ctr_ip, m.ctr_port, m.proto)
        }) {
            bail!(
                "{}/{} is published both as {} and as {}: {addr} cannot be a default address",
                addr_port(m.ctr_ip, m.ctr_port),
                m.proto,
                o.mapping.port_name(),
                m.port_name()
            );
        }
    }
    for d in &default {
        dnat_put(txn, addr, &d.mapping, d.slot)?;
    }
    Ok(())
}

/// Removes the default mappings' dnat4 / dnat6 entries from `addr`.
fn collapse_on(txn: &mut Txn, addr: IpAddr) -> Result<()> {
    for d in published_on(txn, family_of(addr), Ext::Default)? {
        dnat_del_slot(txn, addr, d.mapping.host_port, d.mapping.proto, d.slot)?;
    }
    Ok(())
}

/// Adds an external address, or changes whether it is a default one.
/// Another interface for a known address is refused (delete it first).
pub fn external_add(txn: &mut Txn, addr: IpAddr, ifindex: u32, ifname: &str, default: bool) -> Result<Change> {
    check_ip(addr, "external address")?;
    let key = external_key(addr);
    let cur: Option<types::external_value> = txn.get(name::EXTERNALS, &key)?;
    if let Some(c) = &cur {
        if c.ifindex != ifindex {
            bail!(
                "external address {addr} is already on {} (ifindex {}); delete it first",
                c.name(),
                c.ifindex
            );
        }
        if c.is_default() == default {
            return Ok(Change::Unchanged);
        }
    }
    txn.put(name::EXTERNALS, &key, &types::external_value::new(ifindex, ifname, default))?;
    match (cur.as_ref().is_some_and(|c| c.is_default()), default) {
        (false, true) => expand_on(txn, addr)?,
        (true, false) => collapse_on(txn, addr)?,
        _ => {}
    }
    Ok(if cur.is_some() { Change::Updated } else { Change::Added })
}

/// Removes an external address; refused while mappings are published on
/// it alone. Deleting what is not there succeeds.
pub fn external_del(txn: &mut Txn, addr: IpAddr) -> Result<Change> {
    let key = external_key(addr);
    let Some(cur) = txn.get::<_, types::external_value>(name::EXTERNALS, &key)? else {
        return Ok(Change::Absent);
    };
    let dedicated = published_on(txn, family_of(addr), Ext::Addr(addr))?;
    if let Some(first) = dedicated.first() {
        bail!(
            "{} mapping(s) are published on {addr} (e.g. {}); delete them first",
            dedicated.len(),
            first.mapping.port_name()
        );
    }
    if cur.is_default() {
        collapse_on(txn, addr)?;
    }
    txn.delete(name::EXTERNALS, &key)?;
    Ok(Change::Deleted)
}

fn external_key(addr: IpAddr) -> types::external_key {
    let (family, addr) = addr_x4(addr);
    types::external_key { family, pad: [0; 3], addr }
}

// ---------------------------------------------------------------------
// Slots

/// Hands out a slot: the cursor's until every slot has been used once,
/// then the one freed longest ago. Its counters start at zero.
fn slot_alloc(txn: &mut Txn) -> Result<u32> {
    let cap = capacity::PUBLISHED;
    let mut m: types::dp_meta = txn.get(name::META, &0u32)?.unwrap_or_default();
    let slot = if m.slot_cursor < cap {
        m.slot_cursor += 1;
        m.slot_cursor - 1
    } else if m.free_count > 0 {
        let slot = m.free_head;
        m.free_count -= 1;
        if m.free_count > 0 {
            m.free_head = txn.get::<_, u32>(name::SLOT_NEXT, &slot)?.unwrap_or_default();
        }
        slot
    } else {
        return Err(anyhow::Error::new(super::Full { map: name::MAPPINGS.to_string(), capacity: cap }));
    };
    txn.put(name::META, &0u32, &m)?;
    // Zeroed here too: a flow recorded before its mapping was deleted may
    // still have counted into the slot since it was freed.
    txn.put(name::PORT_STATS, &slot, &types::port_counter::default())?;
    Ok(slot)
}

/// Returns a slot to the end of the free list and zeroes its counters.
fn slot_free(txn: &mut Txn, slot: u32) -> Result<()> {
    let mut m: types::dp_meta = txn.get(name::META, &0u32)?.unwrap_or_default();
    if m.free_count == 0 {
        m.free_head = slot;
    } else {
        txn.put(name::SLOT_NEXT, &m.free_tail, &slot)?;
    }
    m.free_tail = slot;
    m.free_count += 1;
    txn.put(name::META, &0u32, &m)?;
    txn.put(name::PORT_STATS, &slot, &types::port_counter::default())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_that_are_never_a_hosts_are_refused() {
        for bad in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "239.255.255.250", "127.0.0.1", "127.1.2.3"] {
            assert!(check_addr(bad.parse().unwrap(), "address").is_err(), "{bad} must be refused");
        }
        for good in ["10.0.0.2", "203.0.113.10", "169.254.1.1", "198.51.100.255"] {
            check_addr(good.parse().unwrap(), "address").unwrap();
        }
    }

    #[test]
    fn macs_that_are_never_an_interfaces_are_refused() {
        for bad in [[0u8; 6], [0xff; 6], [0x01, 0x00, 0x5e, 0, 0, 1], [0x33, 0x33, 0, 0, 0, 1]] {
            assert!(check_mac(&bad).is_err(), "{bad:02x?} must be refused");
        }
        check_mac(&[0x02, 0x42, 0x0a, 0, 0, 2]).unwrap();
    }

    #[test]
    fn mapping_names_say_where_they_are_published() {
        let m = Mapping {
            ext_addr: Ext::Default,
            host_port: 30001,
            proto: Proto::Tcp,
            ctr_ip: Ipv4Addr::new(10, 0, 0, 2).into(),
            ctr_port: 25565,
            ctr_mac: [2, 0, 0, 0, 0, 2],
            veth_ifindex: 7,
        };
        assert_eq!(m.port_name(), "30001/tcp on the default addresses");
        let d = Mapping { ext_addr: Ext::Addr(Ipv4Addr::new(203, 0, 113, 10).into()), ..m };
        assert_eq!(d.port_name(), "203.0.113.10:30001/tcp");
        let json = serde_json::to_value(Published { mapping: d, slot: 3 }).unwrap();
        assert_eq!(json["ext_addr"], "203.0.113.10");
        assert_eq!(json["slot"], 3);
    }
}
