//! One typed wrapper per pinned map. Commands open maps by their pins with
//! `MapHandle::from_pinned_path`. A change that writes more than one entry
//! goes through a [`Txn`] (under the maps lock); single writes state their
//! intent (`BPF_NOEXIST` for claims) so concurrent provisioning scripts
//! cannot overwrite each other's entries.

pub mod bulk;
pub mod containers;
pub mod published;
pub mod txn;

pub use published::{addr_port, check_addr, check_addr6, check_ip, check_mac, Ext, External, Mapping, Published};
pub use txn::Txn;

/// Names of the pinned maps (src/bpf/dp_maps.h).
pub mod name {
    pub const DNAT4: &str = "dnat4";
    pub const FLOWS4: &str = "flows4";
    pub const HOST_FLOWS4: &str = "host_flows4";
    pub const SOCK_REV4: &str = "sock_rev4";
    pub const PORT_STATS: &str = "port_stats";
    pub const HOST_CFG: &str = "host_cfg";
    pub const PROXY_CFG: &str = "proxy_cfg";
    pub const VETHS: &str = "veths";
    pub const PROXY_FLOWS: &str = "proxy_flows";
    pub const STATS: &str = "stats";
    pub const MAPPINGS: &str = "mappings";
    pub const MAPPING_REV: &str = "mapping_rev";
    pub const EXTERNALS: &str = "externals";
    pub const META: &str = "meta";
    pub const SLOT_NEXT: &str = "slot_next";
    pub const ATTACHMENTS: &str = "attachments";
    pub const ATTACH_NAMES: &str = "attach_names";
    pub const PIN_ROOT: &str = "pin_root";
    pub const GUARD_CFG: &str = "guard_cfg";
    pub const GUARD_LIMITS: &str = "guard_limits";
    pub const GUARD_DENY4: &str = "guard_deny4";
    pub const GUARD_DENY6: &str = "guard_deny6";
    pub const GUARD_SRC4: &str = "guard_src4";
    pub const GUARD_VSRC4: &str = "guard_vsrc4";
    pub const GUARD_VERIFIED4: &str = "guard_verified4";
    pub const CONTAINERS: &str = "containers";
    pub const CONTAINER_CFG: &str = "container_cfg";
    pub const TRACE_CFG: &str = "trace_cfg";
    pub const TRACE_EVENTS: &str = "trace_events";
    pub const TRACE_SCRATCH: &str = "trace_scratch";
    pub const TRACE_LOST: &str = "trace_lost";
    pub const DNAT6: &str = "dnat6";
    pub const FLOWS6: &str = "flows6";
    pub const HOST_FLOWS6: &str = "host_flows6";
    pub const VETHS6: &str = "veths6";
    pub const PROXY_FLOWS6: &str = "proxy_flows6";
    /// Every map of a pin root.
    pub const ALL: [&str; 36] = [
        DNAT4,
        FLOWS4,
        HOST_FLOWS4,
        SOCK_REV4,
        PORT_STATS,
        HOST_CFG,
        PROXY_CFG,
        VETHS,
        PROXY_FLOWS,
        STATS,
        MAPPINGS,
        MAPPING_REV,
        EXTERNALS,
        META,
        SLOT_NEXT,
        ATTACHMENTS,
        ATTACH_NAMES,
        PIN_ROOT,
        GUARD_CFG,
        GUARD_LIMITS,
        GUARD_DENY4,
        GUARD_DENY6,
        GUARD_SRC4,
        GUARD_VSRC4,
        GUARD_VERIFIED4,
        CONTAINERS,
        CONTAINER_CFG,
        TRACE_CFG,
        TRACE_EVENTS,
        TRACE_SCRATCH,
        TRACE_LOST,
        DNAT6,
        FLOWS6,
        HOST_FLOWS6,
        VETHS6,
        PROXY_FLOWS6,
    ];
}

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context, Result};
use libbpf_rs::{ErrorKind, MapCore, MapFlags, MapHandle};

use crate::abi::{bytes_of, from_bytes, types, Proto};
use crate::kernel::pins::PinRoot;

pub mod guard;

/// Opens a pinned map by name, with the error a user needs.
pub fn open(pins: &PinRoot, name: &str) -> Result<MapHandle> {
    pins.require_loaded()?;
    let path = pins.map(name);
    MapHandle::from_pinned_path(&path).with_context(|| format!("opening map {}", path.display()))
}

/// A map refused an entry because it holds its capacity; callers that
/// branch on it find it with `anyhow::Error::downcast_ref`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full {
    pub map: String,
    pub capacity: u32,
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "map {} is full ({} entries)", self.map, self.capacity)
    }
}

impl std::error::Error for Full {}

fn full_or(e: libbpf_rs::Error, map: &str, capacity: u32) -> anyhow::Error {
    if e.kind() == ErrorKind::TooBig {
        anyhow::Error::new(Full { map: map.to_string(), capacity })
    } else {
        anyhow::Error::new(e).context(format!("updating map {map}"))
    }
}

pub fn lookup<K: plain::Plain, V: plain::Plain + Default>(
    map: &MapHandle,
    key: &K,
) -> Result<Option<V>> {
    match map.lookup(bytes_of(key), MapFlags::ANY) {
        Ok(Some(bytes)) => Ok(Some(from_bytes(&bytes)?)),
        Ok(None) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading map {}", map.name().to_string_lossy())),
    }
}

pub fn delete<K: plain::Plain>(map: &MapHandle, key: &K) -> Result<bool> {
    match map.delete(bytes_of(key)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("deleting from map {}", map.name().to_string_lossy())),
    }
}

pub fn entries<K: plain::Plain + Default, V: plain::Plain + Default>(
    map: &MapHandle,
) -> Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    for key in map.keys() {
        let k: K = from_bytes(&key)?;
        // An entry deleted while we iterate is simply skipped.
        if let Some(v) = lookup::<K, V>(map, &k)? {
            out.push((k, v));
        }
    }
    Ok(out)
}

/// Counts a map's entries by walking its keys.
pub fn count(map: &MapHandle) -> usize {
    map.keys().count()
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Change {
    Added,
    /// An existing entry was changed (an external address became default
    /// or stopped being one, a deny entry got a new expiry).
    Updated,
    Unchanged,
    Deleted,
    Absent,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Updated => "updated",
            Change::Unchanged => "unchanged",
            Change::Deleted => "deleted",
            Change::Absent => "absent",
        }
    }
}

fn ser_mac<S: serde::Serializer>(mac: &[u8; 6], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&crate::net::netif::format_mac(mac))
}

impl serde::Serialize for Proto {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A registered container veth.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Veth {
    pub ifindex: u32,
    pub name: String,
    pub ctr_ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
    #[serde(serialize_with = "ser_mac")]
    pub host_mac: [u8; 6],
    /// A dual-stack container's IPv6 address (`veths6`), and the host
    /// veth's gateway address the proxy is reached on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctr_ip6: Option<Ipv6Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_ip6: Option<Ipv6Addr>,
}

/// `veths` and its IPv6 twin `veths6`: a veth registered with an IPv6
/// address has an entry in both.
pub struct VethMap {
    map: MapHandle,
    map6: MapHandle,
    pins: PinRoot,
}

impl VethMap {
    pub fn open(pins: &PinRoot) -> Result<Self> {
        Ok(Self { map: open(pins, name::VETHS)?, map6: open(pins, name::VETHS6)?, pins: pins.clone() })
    }

    fn veth(&self, ifindex: u32, v: &types::veth_info) -> Result<Veth> {
        let v6 = lookup::<_, types::veth6_info>(&self.map6, &ifindex)?;
        Ok(Veth {
            ifindex,
            name: v.name(),
            ctr_ip: v.ctr_ip(),
            host_ip: v.host_ip(),
            host_mac: v.host_mac,
            ctr_ip6: v6.map(|v| v.ctr_ip()),
            host_ip6: v6.map(|v| v.host_ip()),
        })
    }

    pub fn get(&self, ifindex: u32) -> Result<Option<Veth>> {
        match lookup::<_, types::veth_info>(&self.map, &ifindex)? {
            Some(v) => Ok(Some(self.veth(ifindex, &v)?)),
            None => Ok(None),
        }
    }

    pub fn list(&self) -> Result<Vec<Veth>> {
        let mut out: Vec<Veth> = entries::<u32, types::veth_info>(&self.map)?
            .iter()
            .map(|(ifindex, v)| self.veth(*ifindex, v))
            .collect::<Result<_>>()?;
        out.sort_by_key(|v| v.ifindex);
        Ok(out)
    }

    /// Writes the IPv6 side of a registration (or removes it): after the
    /// IPv4 side, which the programs need first.
    fn put6(&self, v: &Veth) -> Result<()> {
        match (v.ctr_ip6, v.host_ip6) {
            (Some(c), Some(h)) => {
                let val = types::veth6_info::new(c, h, v.host_mac);
                self.map6
                    .update(bytes_of(&v.ifindex), bytes_of(&val), MapFlags::ANY)
                    .map_err(|e| full_or(e, name::VETHS6, crate::abi::capacity::VETHS))
            }
            _ => delete(&self.map6, &v.ifindex).map(|_| ()),
        }
    }

    /// Registers a veth; the same registration again is a no-op, a
    /// different one for the same veth is refused. An entry left by a
    /// deleted veth whose index the kernel has since reused (its recorded
    /// name differs, `stale`) is replaced.
    pub fn add(&self, v: &Veth, stale: impl Fn(&Veth) -> bool) -> Result<Change> {
        let val = types::veth_info::new(v.ctr_ip, v.host_ip, v.host_mac).with_name(&v.name);
        let _lock = self.pins.lock_maps()?;
        if let Some(cur) = self.get(v.ifindex)? {
            if cur == *v {
                return Ok(Change::Unchanged);
            }
            if stale(&cur) {
                log::info!("replacing the registration of deleted veth '{}' (ifindex {})", cur.name, cur.ifindex);
                self.map.update(bytes_of(&v.ifindex), bytes_of(&val), MapFlags::EXIST).context("updating map veths")?;
                self.put6(v)?;
                return Ok(Change::Added);
            }
            bail!(
                "veth '{}' (ifindex {}) is already registered for {} (host {} {}); delete it first",
                v.name,
                v.ifindex,
                cur.ctr_ip,
                cur.host_ip,
                crate::net::netif::format_mac(&cur.host_mac)
            );
        }
        match self.map.update(bytes_of(&v.ifindex), bytes_of(&val), MapFlags::NO_EXIST) {
            Ok(()) => {
                if let Err(e) = self.put6(v) {
                    // All or nothing: the IPv4 side goes again.
                    let _ = delete(&self.map, &v.ifindex);
                    return Err(e);
                }
                Ok(Change::Added)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                bail!("veth ifindex {} was registered by another command meanwhile", v.ifindex)
            }
            Err(e) => Err(full_or(e, "veths", crate::abi::capacity::VETHS)),
        }
    }

    /// Unregisters, by name, veths that no longer exist (`gone` says
    /// whether an entry's interface is gone).
    pub fn del_gone(&self, name: &str, gone: impl Fn(&Veth) -> bool) -> Result<Change> {
        let _lock = self.pins.lock_maps()?;
        let mut change = Change::Absent;
        for v in self.list()? {
            if v.name == name && gone(&v) {
                delete(&self.map6, &v.ifindex)?;
                if delete(&self.map, &v.ifindex)? {
                    change = Change::Deleted;
                }
            }
        }
        Ok(change)
    }

    pub fn del(&self, ifindex: u32) -> Result<Change> {
        // The IPv6 side first: a veths6 entry never outlives its veths one.
        delete(&self.map6, &ifindex)?;
        Ok(if delete(&self.map, &ifindex)? { Change::Deleted } else { Change::Absent })
    }

    pub fn count(&self) -> usize {
        count(&self.map)
    }
}

/// Ports of the proxy on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProxyPorts {
    pub dns: u16,
    pub http: u16,
    pub tcp: u16,
}

impl Default for ProxyPorts {
    fn default() -> Self {
        use types::dp_default_port as P;
        Self {
            dns: P::DP_PROXY_DNS_PORT.0 as u16,
            http: P::DP_PROXY_HTTP_PORT.0 as u16,
            tcp: P::DP_PROXY_TCP_PORT.0 as u16,
        }
    }
}

pub fn proxy_ports_get(map: &MapHandle) -> Result<Option<ProxyPorts>> {
    let v: types::proxy_config = lookup(map, &0u32)?.unwrap_or_default();
    let (dns, http, tcp) = v.ports();
    if dns == 0 && http == 0 && tcp == 0 {
        return Ok(None);
    }
    Ok(Some(ProxyPorts { dns, http, tcp }))
}

pub fn proxy_ports_set(map: &MapHandle, p: ProxyPorts) -> Result<()> {
    let v = types::proxy_config::new(p.dns, p.http, p.tcp);
    map.update(bytes_of(&0u32), bytes_of(&v), MapFlags::ANY).context("updating map proxy_cfg")
}

/// A proxied flow: container source and the destination it asked for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Flow {
    pub ctr_ip: Ipv4Addr,
    pub ctr_port: u16,
    pub proto: Proto,
    pub orig_ip: Ipv4Addr,
    pub orig_port: u16,
    pub proxy_ip: Ipv4Addr,
    pub proxy_port: u16,
}

pub fn flows(map: &MapHandle) -> Result<Vec<Flow>> {
    entries::<types::ctr_endpoint, types::flow_orig>(map)?
        .into_iter()
        .map(|(k, v)| {
            Ok(Flow {
                ctr_ip: k.ip(),
                ctr_port: k.port(),
                proto: Proto::from_number(k.proto)?,
                orig_ip: v.orig_ip(),
                orig_port: v.orig_port(),
                proxy_ip: v.proxy_ip(),
                proxy_port: v.proxy_port(),
            })
        })
        .collect()
}

/// One counter, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Counter {
    pub program: String,
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Reads every counter of the `stats` map, named from the programs' BTF.
pub fn read_stats(map: &MapHandle) -> Result<Vec<Counter>> {
    let names = crate::abi::stat_names()?;
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let per_cpu = map
            .lookup_percpu(bytes_of(&(i as u32)), MapFlags::ANY)
            .context("reading map stats")?
            .unwrap_or_default();
        let (mut packets, mut bytes) = (0u64, 0u64);
        for cpu in per_cpu {
            let c: types::dp_counter = from_bytes(&cpu)?;
            packets += c.packets;
            bytes += c.bytes;
        }
        let (program, reason) = crate::abi::split_stat_name(name);
        out.push(Counter { program, reason, packets, bytes });
    }
    Ok(out)
}


/// A published flow as dnat recorded it: the container side of the flow,
/// and what the player used.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PublishedFlow {
    pub ctr_ip: Ipv4Addr,
    pub ctr_port: u16,
    pub player_ip: Ipv4Addr,
    pub player_port: u16,
    pub proto: Proto,
    pub ext_addr: Ipv4Addr,
    pub host_port: u16,
    pub ext_ifindex: u32,
    pub veth_ifindex: u32,
    pub slot: u32,
}

/// Every flow in `flows4`.
pub fn published_flows(pins: &PinRoot) -> Result<Vec<PublishedFlow>> {
    entries::<types::flow4_key, types::flow4_value>(&open(pins, name::FLOWS4)?)?
        .into_iter()
        .map(|(k, v)| {
            Ok(PublishedFlow {
                ctr_ip: k.ctr_addr(),
                ctr_port: k.ctr_port(),
                player_ip: k.peer_addr(),
                player_port: k.peer_port(),
                proto: Proto::from_number(k.proto)?,
                ext_addr: v.ext_addr(),
                host_port: v.host_port(),
                ext_ifindex: v.ext_ifindex,
                veth_ifindex: v.veth_ifindex,
                slot: v.slot,
            })
        })
        .collect()
}

/// A UDP flow the host opened to a container (`host_flows4`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HostFlow {
    pub ctr_ip: Ipv4Addr,
    pub ctr_port: u16,
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub veth_ifindex: u32,
}

/// Every flow in `host_flows4`.
pub fn host_flows(pins: &PinRoot) -> Result<Vec<HostFlow>> {
    Ok(entries::<types::flow4_key, types::host_flow_value>(&open(pins, name::HOST_FLOWS4)?)?
        .into_iter()
        .map(|(k, v)| HostFlow {
            ctr_ip: k.ctr_addr(),
            ctr_port: k.ctr_port(),
            host_ip: k.peer_addr(),
            host_port: k.peer_port(),
            veth_ifindex: v.veth_ifindex,
        })
        .collect())
}

/// A host socket that host access sent to a container (`sock_rev4`): what
/// it asked for, and where it went.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HostSocket {
    /// The socket's cookie (`SO_COOKIE`).
    pub cookie: u64,
    pub ctr_ip: Ipv4Addr,
    pub ctr_port: u16,
    /// The address it asked for: an external address or 127.0.0.1.
    pub asked_ip: Ipv4Addr,
    pub asked_port: u16,
}

/// Every entry of `sock_rev4`.
pub fn host_sockets(pins: &PinRoot) -> Result<Vec<HostSocket>> {
    Ok(entries::<types::sock_rev4_key, types::sock_rev4_value>(&open(pins, name::SOCK_REV4)?)?
        .into_iter()
        .map(|(k, v)| HostSocket {
            cookie: k.cookie,
            ctr_ip: k.ctr_addr(),
            ctr_port: k.ctr_port(),
            asked_ip: v.addr(),
            asked_port: v.port(),
        })
        .collect())
}

/// `host_cfg`, the host's facts (one entry).
pub fn host_config(pins: &PinRoot) -> Result<types::host_config> {
    Ok(lookup::<_, types::host_config>(&open(pins, name::HOST_CFG)?, &0u32)?.unwrap_or_default())
}

/// The counters of one published port (slot), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PortCounters {
    pub pkts_in: u64,
    pub bytes_in: u64,
    pub pkts_out: u64,
    pub bytes_out: u64,
    pub conns: u64,
}

/// Reads the counters of slot `slot` from `port_stats`.
pub fn port_counters(map: &MapHandle, slot: u32) -> Result<PortCounters> {
    let per_cpu = map
        .lookup_percpu(bytes_of(&slot), MapFlags::ANY)
        .context("reading map port_stats")?
        .with_context(|| format!("slot {slot} is beyond port_stats"))?;
    let mut sum = PortCounters::default();
    for cpu in per_cpu {
        let c: types::port_counter = from_bytes(&cpu)?;
        sum.pkts_in += c.pkts_in;
        sum.bytes_in += c.bytes_in;
        sum.pkts_out += c.pkts_out;
        sum.bytes_out += c.bytes_out;
        sum.conns += c.conns;
    }
    Ok(sum)
}
