//! What each `datapathctl` command does, given parsed arguments. Read
//! commands return a serialisable report that main prints as text or JSON.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use libbpf_rs::MapCore;
use serde::Serialize;

use crate::kernel::attach::{self, Kind, Records};
use crate::abi::{Proto, PROG_NAMES};
use crate::kernel::loader::{Datapath, Objects};
use crate::maps::{self, Change, DnatMaps, External, ProxyPorts, Published, SnatConfig, Veth, VethMap};
use crate::net::netif;
use crate::net::netns::NetnsGuard;
use crate::kernel::pins::PinRoot;

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
}

/// `load`: loads and pins everything, or upgrades a running system in
/// place. Map entries survive; an incompatible pinned map stops it before
/// anything changes.
pub fn load(pins: &PinRoot, opts: LoadOptions) -> Result<LoadReport> {
    let created = pins.create_dirs()?;
    let result = pins.lock().and_then(|_lock| load_inner(pins, opts));
    if result.is_err() {
        // A refused load leaves no directory behind that it made.
        crate::kernel::pins::remove_dirs(&created);
    }
    result
}

fn load_inner(pins: &PinRoot, opts: LoadOptions) -> Result<LoadReport> {
    let mut objs = Objects::default();
    let mut dp = Datapath::load(&mut objs, pins)?;
    let cfg = dp.map("proxy_cfg")?;
    let current = maps::proxy_ports_get(cfg)?.unwrap_or_default();
    let ports = ProxyPorts {
        dns: opts.dns.unwrap_or(current.dns),
        http: opts.http.unwrap_or(current.http),
        tcp: opts.tcp.unwrap_or(current.tcp),
    };
    maps::proxy_ports_set(cfg, ports)?;
    dp.pin_new_maps(pins)?;
    let updated = match attach::replace_all(&dp, pins).and_then(|n| dp.pin_programs(pins).map(|()| n)) {
        Ok(n) => n,
        Err(e) => {
            dp.unpin_new_maps(pins);
            return Err(e);
        }
    };
    let created = dp.created_maps().to_vec();
    Ok(LoadReport {
        pin_root: pins.root().display().to_string(),
        maps_reused: dp.map_count() - created.len(),
        maps_created: created,
        attachments_updated: updated,
        proxy_ports: ports,
    })
}

/// `unload`: detaches everything recorded and removes every pin.
/// Unloading what is not loaded succeeds.
pub fn unload(pins: &PinRoot) -> Result<()> {
    if !pins.root().exists() {
        return Ok(());
    }
    let _lock = pins.lock()?;
    if pins.map("attachments").exists() {
        attach::detach_all(pins)?;
    }
    for dir in [pins.links_dir(), pins.progs_dir(), pins.maps_dir()] {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for e in entries {
            let e = e?;
            fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
        }
        fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::remove_dir(pins.root()).with_context(|| format!("removing {}", pins.root().display()))?;
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

pub fn attach_getsockopt(pins: &PinRoot, path: Option<&Path>) -> Result<()> {
    pins.require_loaded()?;
    let _lock = pins.lock()?;
    attach::attach_getsockopt(pins, path).map(|_| ())
}

pub fn detach_getsockopt(pins: &PinRoot, path: Option<&Path>) -> Result<()> {
    let _lock = if pins.root().exists() { Some(pins.lock()?) } else { None };
    attach::detach_getsockopt(pins, path).map(|_| ())
}

/// Arguments of `map dnat add`, as typed.
#[derive(Debug, Clone)]
pub struct DnatAdd {
    pub host_port: u16,
    pub ctr_ip: Ipv4Addr,
    pub veth: String,
    pub ctr_mac: [u8; 6],
    pub proto: Proto,
    pub to_port: u16,
}

pub fn dnat_add(pins: &PinRoot, netns: Option<&str>, a: &DnatAdd) -> Result<Change> {
    let maps = DnatMaps::open(pins)?;
    let veth = {
        let _ns = NetnsGuard::enter(netns)?;
        netif::resolve(&a.veth)?
    };
    let p = Published {
        host_port: a.host_port,
        proto: a.proto,
        ctr_ip: a.ctr_ip,
        ctr_port: a.to_port,
        ctr_mac: a.ctr_mac,
        veth_ifindex: veth.index,
    };
    maps.add(&p)
}

/// `map dnat add --from-file`: every line of `lines` (numbered from 1 as
/// in the file) is added, or none is.
pub fn dnat_add_batch(pins: &PinRoot, netns: Option<&str>, lines: &[(usize, DnatAdd)]) -> Result<usize> {
    let maps = DnatMaps::open(pins)?;
    let mut ifaces = std::collections::HashMap::new();
    let mut ps = Vec::with_capacity(lines.len());
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
            ps.push(Published {
                host_port: a.host_port,
                proto: a.proto,
                ctr_ip: a.ctr_ip,
                ctr_port: a.to_port,
                ctr_mac: a.ctr_mac,
                veth_ifindex: index,
            });
        }
    }
    maps.add_all(&ps).map_err(|(i, e)| e.context(format!("line {}", lines[i].0)))
}

pub fn dnat_del(pins: &PinRoot, port: u16, proto: Proto) -> Result<Change> {
    DnatMaps::open(pins)?.del(port, proto)
}

pub fn dnat_get(pins: &PinRoot, port: u16, proto: Proto) -> Result<Published> {
    DnatMaps::open(pins)?
        .get(port, proto)?
        .with_context(|| format!("host port {port}/{proto} is not published"))
}

pub fn dnat_list(pins: &PinRoot) -> Result<Vec<Published>> {
    DnatMaps::open(pins)?.list()
}

pub fn snat_set(pins: &PinRoot, netns: Option<&str>, ip: Ipv4Addr, iface: &str) -> Result<()> {
    let cfg = SnatConfig::open(pins)?;
    let iface = {
        let _ns = NetnsGuard::enter(netns)?;
        netif::resolve(iface)?
    };
    cfg.set(&External { ext_ip: ip, ext_ifindex: iface.index })
}

pub fn snat_get(pins: &PinRoot) -> Result<External> {
    SnatConfig::open(pins)?.get()?.context("the external address is not set (datapathctl map snat set)")
}

pub fn snat_del(pins: &PinRoot) -> Result<Change> {
    SnatConfig::open(pins)?.del()
}

/// `map veth add`: reads the host veth's index, MAC and address from the
/// interface itself and registers the container behind it.
pub fn veth_add(pins: &PinRoot, netns: Option<&str>, iface: &str, ctr_ip: Ipv4Addr) -> Result<Change> {
    let map = VethMap::open(pins)?;
    let _ns = NetnsGuard::enter(netns)?;
    let iface = netif::resolve(iface)?;
    let host_mac = netif::mac_of(&iface.name)?;
    let host_ip = netif::ipv4_of(&iface.name)?
        .with_context(|| format!("host veth '{}' has no IPv4 address; the proxy listens on it", iface.name))?;
    if host_ip == ctr_ip {
        bail!("container address {ctr_ip} is the host veth's own address");
    }
    let v = Veth { ifindex: iface.index, name: iface.name.clone(), ctr_ip, host_ip, host_mac };
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
    pub external: Option<External>,
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
        external: None,
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
    st.external = SnatConfig::open(pins)?.get()?;
    st.proxy_ports = maps::proxy_ports_get(&maps::open(pins, "proxy_cfg")?)?;
    Ok(st)
}

/// `stats`: every counter, summed over CPUs.
pub fn stats(pins: &PinRoot) -> Result<Vec<maps::Counter>> {
    maps::read_stats(&maps::open(pins, "stats")?)
}
