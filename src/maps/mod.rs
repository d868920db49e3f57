//! One typed wrapper per pinned map. Commands open maps by their pins with
//! `MapHandle::from_pinned_path`; every write states its intent
//! (`BPF_NOEXIST` for claims) so concurrent provisioning scripts cannot
//! overwrite each other's entries.

use std::net::Ipv4Addr;

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::{ErrorKind, MapCore, MapFlags, MapHandle};

use crate::abi::{bytes_of, from_bytes, types, Proto};
use crate::kernel::pins::PinRoot;

/// Opens a pinned map by name, with the error a user needs.
pub fn open(pins: &PinRoot, name: &str) -> Result<MapHandle> {
    pins.require_loaded()?;
    let path = pins.map(name);
    MapHandle::from_pinned_path(&path).with_context(|| format!("opening map {}", path.display()))
}

fn full_or(e: libbpf_rs::Error, map: &str, capacity: u32) -> anyhow::Error {
    if e.kind() == ErrorKind::TooBig {
        anyhow!("map {map} is full ({capacity} entries)")
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

fn delete<K: plain::Plain>(map: &MapHandle, key: &K) -> Result<bool> {
    match map.delete(bytes_of(key)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("deleting from map {}", map.name().to_string_lossy())),
    }
}

fn entries<K: plain::Plain + Default, V: plain::Plain + Default>(
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

/// A published port: what `map dnat add` takes and `get`/`list` show.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Published {
    pub host_port: u16,
    pub proto: Proto,
    pub ctr_ip: Ipv4Addr,
    pub ctr_port: u16,
    #[serde(serialize_with = "ser_mac")]
    pub ctr_mac: [u8; 6],
    pub veth_ifindex: u32,
}

fn ser_mac<S: serde::Serializer>(mac: &[u8; 6], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&crate::net::netif::format_mac(mac))
}

impl serde::Serialize for Proto {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Published {
    fn key(&self) -> types::dnat_key {
        types::dnat_key::new(self.host_port, self.proto)
    }
    fn value(&self) -> types::dnat_value {
        types::dnat_value::new(self.ctr_ip, self.ctr_port, self.ctr_mac, self.veth_ifindex)
    }
    fn reverse_key_tuple(&self) -> (Ipv4Addr, u16, Proto) {
        (self.ctr_ip, self.ctr_port, self.proto)
    }
    fn reverse_key(&self) -> types::ctr_endpoint {
        types::ctr_endpoint::new(self.ctr_ip, self.ctr_port, self.proto)
    }
    fn from_entry(k: &types::dnat_key, v: &types::dnat_value) -> Result<Self> {
        Ok(Self {
            host_port: k.host_port(),
            proto: Proto::from_number(k.proto)?,
            ctr_ip: v.ctr_ip(),
            ctr_port: v.ctr_port(),
            ctr_mac: v.ctr_mac,
            veth_ifindex: v.veth_ifindex,
        })
    }
    pub fn describe(&self) -> String {
        format!(
            "{}/{} -> {}:{} mac {} veth ifindex {}",
            self.host_port,
            self.proto,
            self.ctr_ip,
            self.ctr_port,
            crate::net::netif::format_mac(&self.ctr_mac),
            self.veth_ifindex
        )
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Change {
    Added,
    Unchanged,
    Deleted,
    Absent,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Unchanged => "unchanged",
            Change::Deleted => "deleted",
            Change::Absent => "absent",
        }
    }
}

/// Published ports: `dnat_ports` and its reverse `snat_ports`, kept in
/// step. One container port and protocol is published under one host port.
pub struct DnatMaps {
    dnat: MapHandle,
    snat: MapHandle,
    pins: PinRoot,
}

impl DnatMaps {
    pub fn open(pins: &PinRoot) -> Result<Self> {
        Ok(Self { dnat: open(pins, "dnat_ports")?, snat: open(pins, "snat_ports")?, pins: pins.clone() })
    }

    pub fn get(&self, host_port: u16, proto: Proto) -> Result<Option<Published>> {
        let key = types::dnat_key::new(host_port, proto);
        match lookup::<_, types::dnat_value>(&self.dnat, &key)? {
            Some(v) => Ok(Some(Published::from_entry(&key, &v)?)),
            None => Ok(None),
        }
    }

    pub fn list(&self) -> Result<Vec<Published>> {
        let mut out = entries::<types::dnat_key, types::dnat_value>(&self.dnat)?
            .iter()
            .map(|(k, v)| Published::from_entry(k, v))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|p| (p.host_port, p.proto));
        Ok(out)
    }

    /// Publishes a port. Adding exactly what is there is a no-op; a host
    /// port already published elsewhere, or a container port already
    /// published under another host port, is refused. Runs under the maps
    /// lock, so the check and the two writes are one step for every other
    /// datapathctl; the writes still use BPF_NOEXIST against anyone else.
    pub fn add(&self, p: &Published) -> Result<Change> {
        let _lock = self.pins.lock_maps()?;
        self.add_locked(p)
    }

    fn add_locked(&self, p: &Published) -> Result<Change> {
        if let Some(cur) = self.get(p.host_port, p.proto)? {
            if cur == *p {
                self.ensure_reverse(p)?;
                return Ok(Change::Unchanged);
            }
            bail!(
                "host port {}/{} is already published ({}); delete it first",
                p.host_port,
                p.proto,
                cur.describe()
            );
        }
        let rkey = p.reverse_key();
        let rval = types::snat_value::new(p.host_port, p.veth_ifindex);
        let mut claimed = true;
        if let Some(c) = lookup::<_, types::snat_value>(&self.snat, &rkey)? {
            let owner = self.get(c.host_port(), p.proto)?;
            let live = owner.is_some_and(|o| o.reverse_key_tuple() == p.reverse_key_tuple());
            if live {
                bail!(
                    "{}:{}/{} is already published under host port {}",
                    p.ctr_ip,
                    p.ctr_port,
                    p.proto,
                    c.host_port()
                );
            }
            // Left by an interrupted add or delete: its host port does not
            // lead here. Take it over.
            self.snat.update(bytes_of(&rkey), bytes_of(&rval), MapFlags::EXIST).context("updating map snat_ports")?;
            claimed = false;
        } else if let Err(e) = self.snat.update(bytes_of(&rkey), bytes_of(&rval), MapFlags::NO_EXIST) {
            return Err(full_or(e, "snat_ports", crate::abi::capacity::PUBLISHED));
        }
        if let Err(e) = self.dnat.update(bytes_of(&p.key()), bytes_of(&p.value()), MapFlags::NO_EXIST) {
            if claimed {
                let _ = delete(&self.snat, &rkey);
            }
            return Err(full_or(e, "dnat_ports", crate::abi::capacity::PUBLISHED));
        }
        Ok(Change::Added)
    }

    /// Publishes many ports, all or none: conflicts inside the batch are
    /// found before anything is written, and if one add fails the ones this
    /// call made are deleted again. The error carries the failing index.
    pub fn add_all(&self, ps: &[Published]) -> std::result::Result<usize, (usize, anyhow::Error)> {
        let mut fwd: std::collections::HashMap<(u16, Proto), usize> = std::collections::HashMap::new();
        let mut rev: std::collections::HashMap<(Ipv4Addr, u16, Proto), usize> = std::collections::HashMap::new();
        for (i, p) in ps.iter().enumerate() {
            if let Some(&j) = fwd.get(&(p.host_port, p.proto)) {
                if ps[j] != *p {
                    return Err((i, anyhow!("host port {}/{} is also published by entry {}", p.host_port, p.proto, j + 1)));
                }
            }
            if let Some(&j) = rev.get(&p.reverse_key_tuple()) {
                if ps[j].host_port != p.host_port {
                    return Err((
                        i,
                        anyhow!("{}:{}/{} is also published by entry {}", p.ctr_ip, p.ctr_port, p.proto, j + 1),
                    ));
                }
            }
            fwd.insert((p.host_port, p.proto), i);
            rev.insert(p.reverse_key_tuple(), i);
        }
        let _lock = self.pins.lock_maps().map_err(|e| (0, e))?;
        let mut added = Vec::new();
        for (i, p) in ps.iter().enumerate() {
            match self.add_locked(p) {
                Ok(Change::Added) => added.push(i),
                Ok(_) => {}
                Err(e) => {
                    for &j in added.iter().rev() {
                        let _ = self.del_locked(ps[j].host_port, ps[j].proto);
                    }
                    return Err((i, e));
                }
            }
        }
        Ok(added.len())
    }

    /// Repairs the reverse entry of a published port (after an interrupted
    /// add or delete); called under the maps lock.
    fn ensure_reverse(&self, p: &Published) -> Result<()> {
        let rkey = p.reverse_key();
        let rval = types::snat_value::new(p.host_port, p.veth_ifindex);
        let cur: Option<types::snat_value> = lookup(&self.snat, &rkey)?;
        if cur.is_some_and(|c| c.host_port() == p.host_port && c.veth_ifindex == p.veth_ifindex) {
            return Ok(());
        }
        self.snat
            .update(bytes_of(&rkey), bytes_of(&rval), MapFlags::ANY)
            .map_err(|e| full_or(e, "snat_ports", crate::abi::capacity::PUBLISHED))
    }

    /// Unpublishes a port; deleting what is not there succeeds.
    pub fn del(&self, host_port: u16, proto: Proto) -> Result<Change> {
        let _lock = self.pins.lock_maps()?;
        self.del_locked(host_port, proto)
    }

    fn del_locked(&self, host_port: u16, proto: Proto) -> Result<Change> {
        let Some(p) = self.get(host_port, proto)? else {
            return Ok(Change::Absent);
        };
        let deleted = delete(&self.dnat, &p.key())?;
        let rkey = p.reverse_key();
        if let Some(r) = lookup::<_, types::snat_value>(&self.snat, &rkey)? {
            if r.host_port() == host_port {
                delete(&self.snat, &rkey)?;
            }
        }
        Ok(if deleted { Change::Deleted } else { Change::Absent })
    }

    pub fn counts(&self) -> (usize, usize) {
        (count(&self.dnat), count(&self.snat))
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
}

pub struct VethMap {
    map: MapHandle,
    pins: PinRoot,
}

impl VethMap {
    pub fn open(pins: &PinRoot) -> Result<Self> {
        Ok(Self { map: open(pins, "veths")?, pins: pins.clone() })
    }

    pub fn get(&self, ifindex: u32) -> Result<Option<Veth>> {
        Ok(lookup::<_, types::veth_info>(&self.map, &ifindex)?.map(|v| Veth {
            ifindex,
            name: v.name(),
            ctr_ip: v.ctr_ip(),
            host_ip: v.host_ip(),
            host_mac: v.host_mac,
        }))
    }

    pub fn list(&self) -> Result<Vec<Veth>> {
        let mut out: Vec<Veth> = entries::<u32, types::veth_info>(&self.map)?
            .into_iter()
            .map(|(ifindex, v)| Veth {
                ifindex,
                name: v.name(),
                ctr_ip: v.ctr_ip(),
                host_ip: v.host_ip(),
                host_mac: v.host_mac,
            })
            .collect();
        out.sort_by_key(|v| v.ifindex);
        Ok(out)
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
            Ok(()) => Ok(Change::Added),
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
            if v.name == name && gone(&v) && delete(&self.map, &v.ifindex)? {
                change = Change::Deleted;
            }
        }
        Ok(change)
    }

    pub fn del(&self, ifindex: u32) -> Result<Change> {
        Ok(if delete(&self.map, &ifindex)? { Change::Deleted } else { Change::Absent })
    }

    pub fn count(&self) -> usize {
        count(&self.map)
    }
}

/// The external side used for replies (`map snat`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct External {
    pub ext_ip: Ipv4Addr,
    pub ext_ifindex: u32,
}

pub struct SnatConfig {
    map: MapHandle,
}

impl SnatConfig {
    pub fn open(pins: &PinRoot) -> Result<Self> {
        Ok(Self { map: open(pins, "snat_cfg")? })
    }

    pub fn get(&self) -> Result<Option<External>> {
        let v: types::snat_config = lookup(&self.map, &0u32)?.unwrap_or_default();
        if v.ext_ip == 0 {
            return Ok(None);
        }
        Ok(Some(External { ext_ip: v.ext_ip(), ext_ifindex: v.ext_ifindex }))
    }

    pub fn set(&self, ext: &External) -> Result<()> {
        if ext.ext_ip.is_unspecified() {
            bail!("external address 0.0.0.0 is not usable");
        }
        let v = types::snat_config::new(ext.ext_ip, ext.ext_ifindex);
        self.map.update(bytes_of(&0u32), bytes_of(&v), MapFlags::ANY).context("updating map snat_cfg")
    }

    pub fn del(&self) -> Result<Change> {
        let had = self.get()?.is_some();
        let v = types::snat_config::default();
        self.map.update(bytes_of(&0u32), bytes_of(&v), MapFlags::ANY).context("updating map snat_cfg")?;
        Ok(if had { Change::Deleted } else { Change::Absent })
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

