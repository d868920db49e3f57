//! What each `datapathctl` command does, given parsed arguments. Read
//! commands return a serialisable report that main prints as text or JSON.

pub mod container;
pub mod setup;

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::{bail, Context, Result};
use libbpf_rs::MapCore;
use serde::Serialize;

use std::collections::BTreeSet;

use crate::abi::{Proto, PROG_NAMES};
use crate::kernel::attach::{self, Kind, Records};
use crate::kernel::loader::{Datapath, Objects};
use crate::kernel::migrate::{self, Plan};
use crate::kernel::recover;
use crate::maps::{self, published, Change, Ext, External, Mapping, ProxyPorts, Published, Txn, Veth, VethMap};
use crate::net::netif;
use crate::net::netns::NetnsGuard;
use crate::kernel::pins::PinRoot;

pub mod guard;
pub mod metrics;
pub mod trace;

/// Proxy ports given to `load`; unset ones keep their current value.
#[derive(Default, Clone, Copy, Debug)]
pub struct LoadOptions {
    pub dns: Option<u16>,
    pub http: Option<u16>,
    pub tcp: Option<u16>,
}

#[derive(Serialize, Debug)]
pub struct LoadReport {
    pub pin_root: String,
    pub maps_created: Vec<String>,
    pub maps_reused: usize,
    pub attachments_updated: usize,
    pub proxy_ports: ProxyPorts,
    /// What the maps were migrated from, if their layout changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrated: Option<String>,
    /// Maps pinned again after the pin root was lost.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recovered: Vec<String>,
}

/// `load`: loads and pins everything, or upgrades a running system in
/// place: maps of this build's layout are kept, maps of a layout it knows
/// are migrated (`kernel::migrate`), a lost pin root is taken back
/// (`kernel::recover`). A map it cannot take over stops it before anything
/// changes.
pub fn load(pins: &PinRoot, opts: LoadOptions) -> Result<LoadReport> {
    // The verifier gives up with EAGAIN when a signal is pending on the
    // loading thread (libbpf retries at once, a few times): a load stopped
    // there has changed nothing, so it is made again, a little later.
    let mut attempt = 0;
    loop {
        let created = pins.create_dirs()?;
        let result = pins.lock().and_then(|_lock| load_inner(pins, opts));
        if result.is_err() {
            // A refused load leaves no directory behind that it made.
            crate::kernel::pins::remove_dirs(&created);
        }
        match result {
            Err(e) if attempt < 4 && verifier_interrupted(&e) => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(20 * attempt));
            }
            r => return r,
        }
    }
}

/// Whether a load failed because the verifier was interrupted (EAGAIN).
fn verifier_interrupted(e: &anyhow::Error) -> bool {
    let eagain = format!("(os error {})", nix::errno::Errno::EAGAIN as i32);
    e.chain().any(|c| c.to_string().ends_with("(verifier)")) && e.chain().any(|c| c.to_string().contains(&eagain))
}

fn load_inner(pins: &PinRoot, opts: LoadOptions) -> Result<LoadReport> {
    migrate::finish_swap(pins)?;
    let recovery = recover::recover_maps(pins)?;
    let plan = migrate::plan(pins)?;
    let mut objs = Objects::default();
    let mut dp = match &plan {
        Plan::Current => Datapath::load(&mut objs, pins)?,
        Plan::Resume => Datapath::load_from(&mut objs, &pins.staging_dir(), &BTreeSet::new())?,
        Plan::Migrate(m) => Datapath::load_from(&mut objs, &pins.maps_dir(), &m.fresh)?,
    };
    let cfg = dp.map(maps::name::PROXY_CFG)?;
    let current = maps::proxy_ports_get(cfg)?.unwrap_or_default();
    let ports = ProxyPorts {
        dns: opts.dns.unwrap_or(current.dns),
        http: opts.http.unwrap_or(current.http),
        tcp: opts.tcp.unwrap_or(current.tcp),
    };
    maps::proxy_ports_set(cfg, ports)?;
    dp.set_pin_root(pins)?;

    let migrated = match &plan {
        Plan::Current => {
            dp.pin_missing(&pins.maps_dir())?;
            if let Some(found) = recovery.as_ref().and_then(|r| r.found.as_ref()) {
                // Attachments a killed command made before its record.
                let records = Records::of(&dp)?;
                attach::put_missing(&records, &recover::records_of(found)?)?;
            }
            None
        }
        Plan::Resume => Some("an interrupted upgrade".to_string()),
        Plan::Migrate(m) => {
            let staged = migrate::stage(pins, &mut dp)
                .and_then(|()| migrate::fill(pins, m))
                .and_then(|()| migrate::seal(pins, &mut dp));
            if let Err(e) = staged {
                // Nothing uses the new maps yet: as if never made.
                let _ = migrate::remove_pins(&pins.staging_dir());
                return Err(e);
            }
            Some(if m.from_previous {
                "the release before published flows".to_string()
            } else {
                format!("other layouts ({})", m.fresh.iter().cloned().collect::<Vec<_>>().join(", "))
            })
        }
    };
    let updated = match attach::replace_all(&dp, pins).and_then(|n| dp.pin_programs(pins).map(|()| n)) {
        Ok(n) => n,
        Err(e) => {
            if matches!(plan, Plan::Current) {
                dp.unpin_new_maps(pins);
            }
            return Err(e);
        }
    };
    if !matches!(plan, Plan::Current) {
        // Every attachment runs the new programs on the new maps: they
        // take the old ones' place.
        let (maps_dir, retired) = (pins.maps_dir(), pins.retired_dir());
        std::fs::rename(&maps_dir, &retired)
            .with_context(|| format!("renaming {} to {}", maps_dir.display(), retired.display()))?;
        migrate::finish_swap(pins)?;
    }
    let created = dp.created_maps().to_vec();
    Ok(LoadReport {
        pin_root: pins.root().display().to_string(),
        maps_reused: dp.map_count() - created.len(),
        maps_created: created,
        attachments_updated: updated,
        proxy_ports: ports,
        migrated,
        recovered: recovery.map(|r| r.repinned).unwrap_or_default(),
    })
}

/// `unload`: detaches everything of the pin root and removes every pin.
/// Works from whatever is left: the records under `maps/` (or an
/// interrupted upgrade's), the maps of its programs when the pins are
/// gone, a scan of the kernel when nothing is pinned at all. Unloading what
/// is not loaded succeeds; so does unloading again after an unload that was
/// killed.
pub fn unload(pins: &PinRoot) -> Result<()> {
    let exists = pins.root().exists();
    let _lock = if exists { Some(pins.lock()?) } else { None };
    let (sets, found) = recover::for_unload(pins)?;
    if !exists && found.as_ref().is_none_or(|f| f.is_empty()) {
        return Ok(());
    }
    for records in &sets {
        attach::detach_all(pins, records)?;
    }
    if let Some(found) = &found {
        recover::remove_found(found, &pins.root().display().to_string())?;
    }
    if !exists {
        return Ok(());
    }
    for dir in [pins.links_dir(), pins.progs_dir(), pins.staging_dir(), pins.retired_dir(), pins.maps_dir()] {
        migrate::remove_pins(&dir)?;
    }
    std::fs::remove_dir(pins.root()).with_context(|| format!("removing {}", pins.root().display()))?;
    Ok(())
}

pub fn attach_tc(pins: &PinRoot, netns: Option<&str>, kind: Kind, iface: &str) -> Result<()> {
    pins.require_loaded()?;
    let _lock = pins.lock()?;
    attach::attach_tc(pins, netns, kind, iface).map(|_| ())
}

pub fn detach_tc(pins: &PinRoot, netns: Option<&str>, kind: Kind, iface: &str) -> Result<()> {
    let _lock = if pins.root().exists() { Some(pins.lock()?) } else { None };
    attach::detach_tc(pins, netns, kind, iface).map(|_| ())
}

/// `attach getsockopt` and `attach host-access` (a cgroup `kind`); `netns`
/// is the host's network namespace for host access.
pub fn attach_cgroup(pins: &PinRoot, netns: Option<&str>, kind: Kind, path: Option<&Path>) -> Result<()> {
    pins.require_loaded()?;
    let _lock = pins.lock()?;
    attach::attach_cgroup(pins, kind, path, netns).map(|_| ())
}

pub fn detach_cgroup(pins: &PinRoot, kind: Kind, path: Option<&Path>) -> Result<()> {
    let _lock = if pins.root().exists() { Some(pins.lock()?) } else { None };
    attach::detach_cgroup(pins, kind, path).map(|_| ())
}

pub fn attach_getsockopt(pins: &PinRoot, path: Option<&Path>) -> Result<()> {
    attach_cgroup(pins, None, Kind::Getsockopt, path)
}

pub fn detach_getsockopt(pins: &PinRoot, path: Option<&Path>) -> Result<()> {
    detach_cgroup(pins, Kind::Getsockopt, path)
}

/// Arguments of `map dnat add`, as typed.
#[derive(Debug, Clone)]
pub struct DnatAdd {
    pub ext: Ext,
    pub host_port: u16,
    pub ctr_ip: IpAddr,
    pub veth: String,
    pub ctr_mac: [u8; 6],
    pub proto: Proto,
    pub to_port: u16,
}

impl DnatAdd {
    fn mapping(&self, veth_ifindex: u32) -> Mapping {
        Mapping {
            ext_addr: self.ext,
            host_port: self.host_port,
            proto: self.proto,
            ctr_ip: self.ctr_ip,
            ctr_port: self.to_port,
            ctr_mac: self.ctr_mac,
            veth_ifindex,
        }
    }
}

/// Parses `[<ext-addr>:]<host-port>`: a port alone is published on the
/// default external addresses (of the container address's family).
pub fn parse_host_port(s: &str) -> Result<(Ext, u16)> {
    parse_host_port_family(s).map(|(e, p, _)| (e, p))
}

/// [`parse_host_port`], with the family the text names: an address's own,
/// IPv6 for `[::]:port` (every default IPv6 address, as Docker's
/// `-p [::]:…`), none for a bare port. IPv6 addresses are in brackets.
pub fn parse_host_port_family(s: &str) -> Result<(Ext, u16, Option<u8>)> {
    let shown: String = s.chars().take(64).collect();
    let (ext, port, family) = if let Some(rest) = s.strip_prefix('[') {
        let Some((a, p)) = rest.split_once("]:") else {
            bail!("invalid host port '{shown}': expected [IPV6-ADDRESS]:PORT");
        };
        let ip: Ipv6Addr = a.parse().map_err(|_| {
            let a: String = a.chars().take(64).collect();
            anyhow::anyhow!("invalid host port '{shown}': '{a}' is not an IPv6 address")
        })?;
        let ext = if ip.is_unspecified() { Ext::Default } else { Ext::Addr(ip.into()) };
        (ext, p, Some(crate::abi::AF_INET6))
    } else {
        match s.rsplit_once(':') {
            None => (Ext::Default, s, None),
            Some((a, p)) => {
                if a.contains(':') {
                    bail!("invalid host port '{shown}': an IPv6 address goes in brackets ([2001:db8::1]:30001)");
                }
                let ip: Ipv4Addr = a.parse().map_err(|_| {
                    let a: String = a.chars().take(64).collect();
                    anyhow::anyhow!("invalid host port '{shown}': '{a}' is not an IPv4 address")
                })?;
                (Ext::Addr(ip.into()), p, Some(crate::abi::AF_INET))
            }
        }
    };
    match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok((ext, p as u16, family)),
        _ => bail!("invalid port '{shown}': expected [ADDRESS:]1-65535"),
    }
}

pub fn dnat_add(pins: &PinRoot, netns: Option<&str>, a: &DnatAdd) -> Result<Change> {
    pins.require_loaded()?;
    let veth = {
        let _ns = NetnsGuard::enter(netns)?;
        netif::resolve(&a.veth)?
    };
    published::publish(pins, &a.mapping(veth.index))
}

/// `map dnat add --from-file`: every line of `lines` (numbered from 1 as
/// in the file) is added, or none is: one transaction.
pub fn dnat_add_batch(pins: &PinRoot, netns: Option<&str>, lines: &[(usize, DnatAdd)]) -> Result<usize> {
    pins.require_loaded()?;
    let mut ifaces = std::collections::HashMap::new();
    let mut ms = Vec::with_capacity(lines.len());
    {
        let _ns = NetnsGuard::enter(netns)?;
        for (line, a) in lines {
            let index = match ifaces.get(&a.veth) {
                Some(&i) => i,
                None => {
                    let i = netif::resolve(&a.veth).with_context(|| format!("line {line}"))?.index;
                    ifaces.insert(a.veth.clone(), i);
                    i
                }
            };
            ms.push(a.mapping(index));
        }
    }
    let mut txn = Txn::begin(pins)?;
    let mut added = 0;
    for ((line, _), m) in lines.iter().zip(&ms) {
        if published::add(&mut txn, m).with_context(|| format!("line {line}"))? == Change::Added {
            added += 1;
        }
    }
    txn.commit()?;
    Ok(added)
}

/// `map dnat del`: a bare port is the IPv4 default mapping (see
/// [`dnat_del_in`]).
pub fn dnat_del(pins: &PinRoot, ext: Ext, port: u16, proto: Proto) -> Result<Change> {
    dnat_del_in(pins, published::lookup_family(ext, false), ext, port, proto)
}

/// `map dnat del` of a mapping of `family` (`[::]:port`: the IPv6 default
/// mapping).
pub fn dnat_del_in(pins: &PinRoot, family: u8, ext: Ext, port: u16, proto: Proto) -> Result<Change> {
    published::unpublish_in(pins, family, ext, port, proto)
}

pub fn dnat_get(pins: &PinRoot, ext: Ext, port: u16, proto: Proto) -> Result<Published> {
    dnat_get_in(pins, published::lookup_family(ext, false), ext, port, proto)
}

pub fn dnat_get_in(pins: &PinRoot, family: u8, ext: Ext, port: u16, proto: Proto) -> Result<Published> {
    let map = maps::open(pins, maps::name::MAPPINGS)?;
    published::get_in(&map, family, ext, port, proto)?.with_context(|| {
        let what = match ext {
            Ext::Default if family == crate::abi::AF_INET6 => format!("[::]:{port}/{proto}"),
            Ext::Default => format!("host port {port}/{proto}"),
            Ext::Addr(a) => format!("{}/{proto}", maps::addr_port(a, port)),
        };
        format!("{what} is not published")
    })
}

pub fn dnat_list(pins: &PinRoot) -> Result<Vec<Published>> {
    published::list(pins)
}

/// `map external add`: an external address on an interface; `default`
/// publishes every default mapping on it.
pub fn external_add(
    pins: &PinRoot,
    netns: Option<&str>,
    addr: impl Into<IpAddr>,
    iface: &str,
    default: bool,
) -> Result<Change> {
    let addr = addr.into();
    pins.require_loaded()?;
    published::check_ip(addr, "external address")?;
    let iface = {
        let _ns = NetnsGuard::enter(netns)?;
        netif::resolve(iface)?
    };
    let mut txn = Txn::begin(pins)?;
    let c = published::external_add(&mut txn, addr, iface.index, &iface.name, default)?;
    txn.commit()?;
    Ok(c)
}

pub fn external_del(pins: &PinRoot, addr: impl Into<IpAddr>) -> Result<Change> {
    let mut txn = Txn::begin(pins)?;
    let c = published::external_del(&mut txn, addr.into())?;
    txn.commit()?;
    Ok(c)
}

pub fn external_list(pins: &PinRoot) -> Result<Vec<External>> {
    published::externals(pins)
}

/// `map snat set`: `map external add <ip> <if> --default`.
pub fn snat_set(pins: &PinRoot, netns: Option<&str>, ip: Ipv4Addr, iface: &str) -> Result<Change> {
    external_add(pins, netns, ip, iface, true)
}

/// The default IPv4 external address, for `map snat get`/`del`; several
/// are not one.
fn the_default(pins: &PinRoot) -> Result<Option<External>> {
    let defaults: Vec<External> =
        published::externals(pins)?.into_iter().filter(|e| e.default && e.addr.is_ipv4()).collect();
    if defaults.len() > 1 {
        let all: Vec<String> = defaults.iter().map(|e| e.addr.to_string()).collect();
        bail!("there are {} default external addresses ({}); see datapathctl map external list", all.len(), all.join(", "));
    }
    Ok(defaults.into_iter().next())
}

pub fn snat_get(pins: &PinRoot) -> Result<External> {
    the_default(pins)?.context("the default external address is not set (datapathctl map snat set)")
}

pub fn snat_del(pins: &PinRoot) -> Result<Change> {
    match the_default(pins)? {
        Some(e) => external_del(pins, e.addr),
        None => Ok(Change::Absent),
    }
}

/// `map veth add`: reads the host veth's index, MAC and address from the
/// interface itself and registers the container behind it.
pub fn veth_add(pins: &PinRoot, netns: Option<&str>, iface: &str, ctr_ip: Ipv4Addr) -> Result<Change> {
    veth_add_dual(pins, netns, iface, ctr_ip, None)
}

/// The host veth's IPv6 gateway address: a global (or unique local) one if
/// it has one, else fe80::1, else its first link-local address. Addresses
/// still in duplicate address detection do not count.
fn gateway6_of(index: u32) -> Result<Option<Ipv6Addr>> {
    let mut rtnl = crate::net::rtnl::Rtnl::open()?;
    let mut global = None;
    let mut fe80_1 = None;
    let mut link_local = None;
    for a in rtnl.addrs(Some(index))? {
        let std::net::IpAddr::V6(ip) = a.prefix.addr else { continue };
        if a.tentative {
            continue;
        }
        if ip.segments()[0] & 0xffc0 != 0xfe80 {
            global.get_or_insert(ip);
        } else if ip == Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1) {
            fe80_1 = Some(ip);
        } else {
            link_local.get_or_insert(ip);
        }
    }
    Ok(global.or(fe80_1).or(link_local))
}

/// `map veth add <veth> <ip4> [<ip6>]`: a dual-stack container also gets
/// its IPv6 address registered (`veths6`), with the host veth's IPv6
/// gateway address, where the proxy is reached over IPv6.
pub fn veth_add_dual(
    pins: &PinRoot,
    netns: Option<&str>,
    iface: &str,
    ctr_ip: Ipv4Addr,
    ctr_ip6: Option<Ipv6Addr>,
) -> Result<Change> {
    let map = VethMap::open(pins)?;
    let _ns = NetnsGuard::enter(netns)?;
    let iface = netif::resolve(iface)?;
    let host_mac = netif::mac_of(&iface.name)?;
    maps::check_addr(ctr_ip, "container address")?;
    if let Some(c6) = ctr_ip6 {
        maps::check_addr6(c6, "container address")?;
    }
    let host_ip = netif::ipv4_of(&iface.name)?
        .with_context(|| format!("host veth '{}' has no IPv4 address; the proxy listens on it", iface.name))?;
    if host_ip == ctr_ip {
        bail!("container address {ctr_ip} is the host veth's own address");
    }
    let host_ip6 = match ctr_ip6 {
        None => None,
        Some(c6) => {
            let h6 = gateway6_of(iface.index)?.with_context(|| {
                format!("host veth '{}' has no IPv6 address; the proxy listens on it (e.g. fe80::1)", iface.name)
            })?;
            if h6 == c6 {
                bail!("container address {c6} is the host veth's own address");
            }
            Some(h6)
        }
    };
    let v = Veth { ifindex: iface.index, name: iface.name.clone(), ctr_ip, host_ip, host_mac, ctr_ip6, host_ip6 };
    // Inside the namespace still: an entry whose name no longer matches its
    // index belongs to a deleted veth.
    map.add(&v, |cur| netif::name_of(cur.ifindex).map(|n| n != cur.name).unwrap_or(true))
}

fn veth_index(netns: Option<&str>, iface: &str) -> Result<u32> {
    let _ns = NetnsGuard::enter(netns)?;
    // A deleted veth can still be unregistered by its index.
    if iface.bytes().all(|b| b.is_ascii_digit()) && !iface.is_empty() {
        return iface.parse().with_context(|| format!("invalid interface index '{iface}'"));
    }
    Ok(netif::index_of(iface)?)
}

pub fn veth_del(pins: &PinRoot, netns: Option<&str>, iface: &str) -> Result<Change> {
    let map = VethMap::open(pins)?;
    match veth_index(netns, iface) {
        Ok(i) => map.del(i),
        // The veth is gone: remove what was registered under its name.
        // Deleting what was never there succeeds.
        Err(_) => {
            let _ns = NetnsGuard::enter(netns)?;
            map.del_gone(iface, |v| netif::name_of(v.ifindex).map(|n| n != v.name).unwrap_or(true))
        }
    }
}

pub fn veth_get(pins: &PinRoot, netns: Option<&str>, iface: &str) -> Result<Veth> {
    let map = VethMap::open(pins)?;
    let i = veth_index(netns, iface)?;
    map.get(i)?.with_context(|| format!("veth '{iface}' is not registered"))
}

pub fn veth_list(pins: &PinRoot) -> Result<Vec<Veth>> {
    VethMap::open(pins)?.list()
}

#[derive(Serialize, Debug)]
pub struct ProgStatus {
    pub name: String,
    pub id: u32,
    pub tag: String,
}

#[derive(Serialize, Debug)]
pub struct MapStatus {
    pub name: String,
    pub entries: usize,
    pub capacity: u32,
}

#[derive(Serialize, Debug)]
pub struct Status {
    pub pin_root: String,
    pub loaded: bool,
    pub programs: Vec<ProgStatus>,
    pub attachments: Vec<attach::Record>,
    pub maps: Vec<MapStatus>,
    pub externals: Vec<External>,
    pub proxy_ports: Option<ProxyPorts>,
}

fn prog_status(pins: &PinRoot, name: &str) -> Result<ProgStatus> {
    let fd = attach::obj_get(&pins.prog(name))?;
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info is a zeroed bpf_prog_info of the size passed in len.
    let rc = unsafe {
        libbpf_sys::bpf_prog_get_info_by_fd(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut info, &mut len)
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(-rc)).with_context(|| format!("reading program {name}"));
    }
    Ok(ProgStatus {
        name: name.to_string(),
        id: info.id,
        tag: info.tag.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// `status`: what is loaded, where it is attached, how full each map is.
pub fn status(pins: &PinRoot) -> Result<Status> {
    let mut st = Status {
        pin_root: pins.root().display().to_string(),
        loaded: pins.is_loaded(),
        programs: Vec::new(),
        attachments: Vec::new(),
        maps: Vec::new(),
        externals: Vec::new(),
        proxy_ports: None,
    };
    if !st.loaded {
        return Ok(st);
    }
    for name in PROG_NAMES {
        st.programs.push(prog_status(pins, name)?);
    }
    st.attachments = Records::open(pins)?.list()?;
    let mut names: Vec<String> = fs::read_dir(pins.maps_dir())?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    for name in names {
        let map = maps::open(pins, &name)?;
        let entries = match map.map_type() {
            libbpf_rs::MapType::Array | libbpf_rs::MapType::PercpuArray => map.max_entries() as usize,
            _ => maps::count(&map),
        };
        st.maps.push(MapStatus { name, entries, capacity: map.max_entries() });
    }
    st.externals = published::externals(pins)?;
    st.proxy_ports = maps::proxy_ports_get(&maps::open(pins, "proxy_cfg")?)?;
    Ok(st)
}

/// `stats`: every counter, summed over CPUs.
pub fn stats(pins: &PinRoot) -> Result<Vec<maps::Counter>> {
    maps::read_stats(&maps::open(pins, "stats")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_name_an_address_or_the_defaults() {
        assert_eq!(parse_host_port("30001").unwrap(), (Ext::Default, 30001));
        assert_eq!(parse_host_port("203.0.113.10:25565").unwrap(), (Ext::Addr(Ipv4Addr::new(203, 0, 113, 10).into()), 25565));
        assert_eq!(
            parse_host_port_family("[2001:db8::1]:30001").unwrap(),
            (Ext::Addr("2001:db8::1".parse().unwrap()), 30001, Some(crate::abi::AF_INET6))
        );
        assert_eq!(parse_host_port_family("[::]:30001").unwrap(), (Ext::Default, 30001, Some(crate::abi::AF_INET6)));
        assert_eq!(parse_host_port_family("30001").unwrap(), (Ext::Default, 30001, None));
        for (bad, says) in [
            ("0", "port"),
            ("65536", "port"),
            ("", "port"),
            ("203.0.113.10:", "port"),
            ("203.0.113.10:0", "port"),
            (":30001", "not an IPv4 address"),
            ("203.0.113:30001", "not an IPv4 address"),
            ("[2001:db8::1]", "IPV6-ADDRESS"),
            ("[2001:db8::zz]:30001", "not an IPv6 address"),
            ("[10.0.0.1]:30001", "not an IPv6 address"),
            ("[2001:db8::1]:0", "port"),
            ("2001:db8::1:30001", "brackets"),
        ] {
            let e = parse_host_port(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        let long = format!("{}:1", "9".repeat(200));
        let e = parse_host_port(&long).unwrap_err().to_string();
        assert!(e.len() < 200, "input echoed in errors is cut to 64 bytes: {e}");
        let e = parse_host_port(&"7".repeat(300)).unwrap_err().to_string();
        assert!(e.len() < 200, "input echoed in errors is cut to 64 bytes: {e}");
    }
}
