//! `setup`: the whole host in one idempotent command. It checks every
//! argument first, then loads (or upgrades in place), adds the external
//! addresses (default ones), attaches dnat on the external interface,
//! getsockopt on the proxy's cgroup and host access on the cgroup v2 root
//! (or the cgroup named), and records the gateway address containers get.
//! Running it again with the same arguments changes nothing but the
//! programs, which `load` replaces in place with the same ones.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{LoadOptions, LoadReport};
use crate::kernel::attach::{self, Kind};
use crate::kernel::pins::PinRoot;
use crate::maps::containers::{self, Containers};
use crate::net::netif;
use crate::net::netns::NetnsGuard;
use crate::net::rtnl::Rtnl;

/// The arguments of `setup`.
#[derive(Clone, Debug, Default)]
pub struct SetupOptions {
    /// The external interface, by name or index.
    pub external: String,
    /// External addresses, each a default one; empty: the interface's own
    /// IPv4 addresses.
    pub addresses: Vec<Ipv4Addr>,
    /// The proxy's cgroup; None: the cgroup v2 root.
    pub proxy_cgroup: Option<PathBuf>,
    /// The gateway address of every host veth; None: keep the current one
    /// (169.254.1.1 unless set before).
    pub gateway: Option<Ipv4Addr>,
    /// Where host access goes: None: the cgroup v2 root.
    pub host_access_cgroup: Option<PathBuf>,
    /// No host access (`--no-host-access`): what is attached stays.
    pub no_host_access: bool,
}

#[derive(Debug, Serialize)]
pub struct SetupReport {
    pub load: LoadReport,
    pub external_interface: String,
    pub addresses: Vec<Ipv4Addr>,
    pub proxy_cgroup: PathBuf,
    /// The cgroup host access is attached to; None with --no-host-access.
    pub host_access_cgroup: Option<PathBuf>,
    pub gateway: Ipv4Addr,
}

fn check_gateway(gw: Ipv4Addr) -> Result<()> {
    if gw.is_unspecified() || gw.is_loopback() || gw.is_multicast() || gw.is_broadcast() {
        bail!("gateway {gw} cannot be a host veth's address");
    }
    Ok(())
}

/// The IPv4 addresses of an interface, in the calling thread's namespace;
/// link-local ones (169.254.0.0/16) are never external.
fn ipv4_addresses(index: u32) -> Result<Vec<Ipv4Addr>> {
    let mut nl = Rtnl::open()?;
    let mut out: Vec<Ipv4Addr> = nl
        .addrs(Some(index))?
        .into_iter()
        .filter_map(|a| match a.prefix.addr {
            IpAddr::V4(v4) if !v4.is_link_local() => Some(v4),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// `setup`: see the module's doc. `netns` (`-n NAME`) is where the
/// external interface is.
pub fn setup(pins: &PinRoot, netns: Option<&str>, opts: &SetupOptions) -> Result<SetupReport> {
    // Everything is checked before anything changes.
    let (ext, addresses) = {
        let _ns = NetnsGuard::enter(netns)?;
        let ext = netif::resolve(&opts.external).context("--external")?;
        let addresses = if opts.addresses.is_empty() {
            let own = ipv4_addresses(ext.index).with_context(|| format!("reading the addresses of {}", ext.name))?;
            if own.is_empty() {
                bail!("{} has no IPv4 address; give the external address with --address", ext.name);
            }
            own
        } else {
            opts.addresses.clone()
        };
        (ext, addresses)
    };
    for a in &addresses {
        if a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast() || a.is_link_local() {
            bail!("{a} cannot be an external address");
        }
    }
    if let Some(gw) = opts.gateway {
        check_gateway(gw)?;
        if addresses.contains(&gw) {
            bail!("gateway {gw} is an external address; containers need an address of their own for it");
        }
    }
    let cgroup = match &opts.proxy_cgroup {
        Some(p) => p.clone(),
        None => attach::cgroup2_root()?,
    };
    if !cgroup.is_dir() {
        bail!("proxy cgroup {} is not a directory", cgroup.display());
    }
    let host_access = match (&opts.host_access_cgroup, opts.no_host_access) {
        (Some(_), true) => bail!("--host-access-cgroup and --no-host-access exclude each other"),
        (_, true) => None,
        (Some(p), false) => Some(p.clone()),
        (None, false) => Some(attach::cgroup2_root()?),
    };
    if let Some(p) = host_access.as_ref().filter(|p| !p.is_dir()) {
        bail!("host access cgroup {} is not a directory", p.display());
    }

    let load = super::load(pins, LoadOptions::default())?;
    let gateway = containers::gateway(pins)?;
    if let Some(gw) = opts.gateway.filter(|gw| *gw != gateway) {
        // Every host veth carries the same gateway so one proxy listener
        // serves them all: it changes only while there are no containers.
        let n = Containers::open(pins)?.count();
        if n > 0 {
            bail!("gateway {gateway} is in use by {n} container(s); delete them before changing it to {gw}");
        }
        containers::set_gateway(pins, gw)?;
    }
    for a in &addresses {
        // Each a default external address: ports published without an
        // address are published on all of them.
        super::external_add(pins, netns, *a, &ext.index.to_string(), true)?;
    }
    super::attach_tc(pins, netns, Kind::Dnat, &ext.index.to_string())?;
    super::attach_getsockopt(pins, Some(&cgroup))?;
    if let Some(p) = &host_access {
        // The host's namespace is -n's: its cookie is what host access
        // compares sockets' namespaces with.
        super::attach_cgroup(pins, netns, Kind::HostAccess, Some(p))?;
    }
    Ok(SetupReport {
        load,
        external_interface: ext.name,
        addresses,
        proxy_cgroup: cgroup,
        host_access_cgroup: host_access,
        gateway: containers::gateway(pins)?,
    })
}
