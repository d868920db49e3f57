//! `load` over maps of another layout: the pin root of the release before
//! published flows, or a build whose `stats` had other counters.
//!
//! The loader knows the layouts it can take over ([`PREVIOUS`]); anything
//! else is refused before anything changes. An upgrade never touches the
//! maps in use until the new ones are complete:
//!
//! 1. the new maps are made (the ones whose layout did not change are the
//!    pinned ones, shared) and pinned in `<root>/maps_new/`, `pin_root`
//!    last: it marks them complete;
//! 2. they are filled from the old ones through a [`Txn`] on `maps_new/`,
//!    with the same code `map dnat add` and `map external add` run;
//! 3. the new programs, loaded on them, replace the old ones in place at
//!    every attachment (`kernel::attach::replace_all`), and are pinned;
//! 4. `maps/` becomes `maps_old/`, `maps_new/` becomes `maps/`, and
//!    `maps_old/` is removed.
//!
//! A `load` killed anywhere leaves a state the next `load` completes
//! ([`finish_swap`], [`plan`]): before step 1 ends, an incomplete
//! `maps_new/` is thrown away and the upgrade starts again; after it, the
//! upgrade resumes with the complete `maps_new/`; during step 4 the renames
//! are finished. Meanwhile other commands refuse with a message that says
//! to run `load`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use crate::abi::{bytes_of, from_bytes, types, Proto};
use crate::kernel::attach::{self, Kind, Records};
use crate::kernel::loader::{Datapath, Layout};
use crate::kernel::pins::PinRoot;
use crate::maps::{name, published, Ext, Mapping, Txn};

/// How long snat adopts the connections the release before published
/// flows forwarded (see `snat_adopt`). A connection is adopted at its first
/// packet from the container after the upgrade; a Minecraft server sends
/// keep-alives every 15 seconds, so ten minutes covers every live one with
/// a wide margin, and after that the rule is gone.
pub const ADOPT_GRACE: Duration = Duration::from_secs(600);

/// The maps the release before published flows (commit 1607cb0) pinned,
/// with their layouts. `proxy_cfg`, `veths` and `proxy_flows` are this
/// build's too; the others are migrated. (`attachments` kept that layout
/// until this build, so it is migrated wherever it is found.)
pub const PREVIOUS: [(&str, Layout); 8] = [
    ("dnat_ports", Layout::new(MapType::Hash, 4, 16, 65536, 0)),
    ("snat_ports", Layout::new(MapType::Hash, 8, 8, 65536, 0)),
    ("snat_cfg", Layout::new(MapType::Array, 4, 8, 1, 0)),
    ("proxy_cfg", Layout::new(MapType::Array, 4, 8, 1, 0)),
    ("veths", Layout::new(MapType::Hash, 4, 32, 65536, 0)),
    ("proxy_flows", Layout::new(MapType::LruHash, 8, 12, 65536, 0)),
    ("stats", Layout::new(MapType::PercpuArray, 4, 16, 33, 0)),
    ("attachments", Layout::new(MapType::Hash, 16, 328, 4096, 0)),
];

/// The maps of that release this build has no map of.
const PREVIOUS_ONLY: [&str; 3] = ["dnat_ports", "snat_ports", "snat_cfg"];

/// That release's counters, in the order of its `stats` map (its
/// `enum dp_stat`). Counters are carried over by name; `snat/no_external`
/// has no successor (a reply now always leaves from the address its player
/// used).
pub const PREVIOUS_STATS: [&str; 33] = [
    "DP_STAT_DNAT_REDIRECT",
    "DP_STAT_DNAT_MISS",
    "DP_STAT_DNAT_NOT_IPV4",
    "DP_STAT_DNAT_NOT_L4",
    "DP_STAT_DNAT_FRAGMENT",
    "DP_STAT_DNAT_MALFORMED",
    "DP_STAT_DNAT_REWRITE_FAILED",
    "DP_STAT_SNAT_REDIRECT",
    "DP_STAT_SNAT_HANDED_ON",
    "DP_STAT_SNAT_SPOOFED",
    "DP_STAT_SNAT_UNREGISTERED",
    "DP_STAT_SNAT_NO_EXTERNAL",
    "DP_STAT_SNAT_REWRITE_FAILED",
    "DP_STAT_ARP_REPLIED",
    "DP_STAT_ARP_PASSED",
    "DP_STAT_ARP_UNREGISTERED",
    "DP_STAT_TPROXY_INGRESS_DNS",
    "DP_STAT_TPROXY_INGRESS_HTTP",
    "DP_STAT_TPROXY_INGRESS_TCP",
    "DP_STAT_TPROXY_INGRESS_UDP_DROPPED",
    "DP_STAT_TPROXY_INGRESS_L4_DROPPED",
    "DP_STAT_TPROXY_INGRESS_NON_IP_DROPPED",
    "DP_STAT_TPROXY_INGRESS_FRAGMENT_DROPPED",
    "DP_STAT_TPROXY_INGRESS_MALFORMED_DROPPED",
    "DP_STAT_TPROXY_INGRESS_SPOOFED",
    "DP_STAT_TPROXY_INGRESS_UNREGISTERED",
    "DP_STAT_TPROXY_INGRESS_FLOW_ERROR",
    "DP_STAT_TPROXY_INGRESS_REWRITE_FAILED",
    "DP_STAT_TPROXY_EGRESS_RESTORED",
    "DP_STAT_TPROXY_EGRESS_PASSED",
    "DP_STAT_TPROXY_EGRESS_REWRITE_FAILED",
    "DP_STAT_GETSOCKOPT_FOUND",
    "DP_STAT_GETSOCKOPT_MISS",
];

/// What `load` has to do with the pinned maps.
#[derive(Debug)]
pub enum Plan {
    /// Every pinned map has this build's layout: an ordinary load.
    Current,
    /// An upgrade was interrupted after its new maps were complete: finish
    /// it with them.
    Resume,
    /// Make new maps and fill them from the pinned ones.
    Migrate(Migration),
}

#[derive(Debug)]
pub struct Migration {
    /// The maps are the release before published flows'.
    pub from_previous: bool,
    /// This build's maps that are pinned with another layout: made afresh
    /// and filled.
    pub fresh: BTreeSet<String>,
    /// The names of the pinned `stats` counters, when `stats` is one of
    /// them.
    pub stats_names: Option<Vec<String>>,
}

fn previous(name: &str) -> Option<Layout> {
    PREVIOUS.iter().find(|(n, _)| *n == name).map(|(_, l)| *l)
}

/// Pinned maps of a directory, by name.
fn pinned_in(dir: &Path) -> Result<BTreeMap<String, MapHandle>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = fs::read_dir(dir) else { return Ok(out) };
    for e in entries {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let map = MapHandle::from_pinned_path(e.path()).with_context(|| format!("opening {}", e.path().display()))?;
        out.insert(name, map);
    }
    Ok(out)
}

/// Whether `maps_new/` holds every map of this build with its layout, and
/// `pin_root`, which step 1 pins last.
fn staging_complete(pins: &PinRoot, want: &BTreeMap<String, Layout>) -> Result<bool> {
    let have = pinned_in(&pins.staging_dir())?;
    for (name, layout) in want {
        match have.get(name) {
            Some(m) if Layout::of(m)? == *layout => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// Removes a directory of pins (and the directory).
pub fn remove_pins(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else { return Ok(()) };
    for e in entries {
        let e = e?;
        fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Step 4 of an interrupted upgrade: the renames, and `maps_old/` removed.
pub fn finish_swap(pins: &PinRoot) -> Result<()> {
    let (maps, staging, retired) = (pins.maps_dir(), pins.staging_dir(), pins.retired_dir());
    if retired.exists() {
        if !maps.exists() {
            fs::rename(&staging, &maps).with_context(|| format!("renaming {} to {}", staging.display(), maps.display()))?;
        }
        remove_pins(&retired)?;
    }
    Ok(())
}

/// The counter names of the `stats` map the programs pinned beside it were
/// built with (from their BTF).
fn pinned_stat_names(pins: &PinRoot) -> Result<Option<Vec<String>>> {
    let Ok(fd) = attach::obj_get(&pins.prog("dnat")) else { return Ok(None) };
    let info = crate::kernel::owner::prog_info(std::os::fd::AsFd::as_fd(&fd))?;
    let Ok(btf) = libbpf_rs::btf::Btf::from_prog_id(info.id) else { return Ok(None) };
    Ok(crate::abi::stat_names_in(&btf).ok())
}

/// Decides what `load` does with the maps pinned under `pins`; refuses,
/// changing nothing, a map it cannot take over.
pub fn plan(pins: &PinRoot) -> Result<Plan> {
    let want = crate::kernel::loader::layouts()?;
    if pins.staging_dir().exists() {
        if staging_complete(pins, &want)? {
            return Ok(Plan::Resume);
        }
        // Step 1 did not finish: nothing uses these maps yet.
        remove_pins(&pins.staging_dir())?;
    }
    let pinned = pinned_in(&pins.maps_dir())?;
    let mut from_previous = false;
    let mut fresh = BTreeSet::new();
    let mut stats_names = None;
    let refuse = |name: &str, why: String| -> anyhow::Error {
        anyhow::anyhow!(
            "pinned map {name} ({}) {why}; nothing was changed (to start afresh, losing its entries: \
             datapathctl unload)",
            pins.map(name).display()
        )
    };
    for (name, map) in &pinned {
        let have = Layout::of(map)?;
        if PREVIOUS_ONLY.contains(&name.as_str()) {
            if previous(name) != Some(have) {
                return Err(refuse(name, "has a layout this build does not know".into()));
            }
            from_previous = true;
            continue;
        }
        let Some(w) = want.get(name) else {
            return Err(refuse(name, "is not a map of this build or of the release before it".into()));
        };
        if have == *w {
            continue;
        }
        if name == name::STATS && have.map_type == w.map_type && have.key == w.key && have.value == w.value {
            // Counters by name: the programs pinned beside it say which.
            let names = if previous(name) == Some(have) {
                Some(PREVIOUS_STATS.iter().map(|s| s.to_string()).collect())
            } else {
                pinned_stat_names(pins)?.filter(|n: &Vec<String>| n.len() == have.max_entries as usize)
            };
            let Some(names) = names else {
                return Err(refuse(name, format!("has {} counters whose names this build cannot tell", have.max_entries)));
            };
            stats_names = Some(names);
            fresh.insert(name.clone());
            continue;
        }
        if name == name::ATTACHMENTS && previous(name) == Some(have) {
            fresh.insert(name.clone());
            continue;
        }
        return Err(refuse(name, format!("is incompatible with this build: {}", have.diff(w).join(", "))));
    }
    if from_previous {
        for name in PREVIOUS_ONLY {
            if !pinned.contains_key(name) {
                return Err(anyhow::anyhow!(
                    "the maps under {} are the release before published flows' but {name} is missing; nothing \
                     was changed (to start afresh, losing the entries: datapathctl unload)",
                    pins.maps_dir().display()
                ));
            }
        }
    }
    if !from_previous && fresh.is_empty() {
        return Ok(Plan::Current);
    }
    Ok(Plan::Migrate(Migration { from_previous, fresh, stats_names }))
}

/// Step 1: every map of `dp` pinned in `maps_new/`, `pin_root` last.
pub fn stage(pins: &PinRoot, dp: &mut Datapath<'_>) -> Result<()> {
    let dir = pins.staging_dir();
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting mode 0700 on {}", dir.display()))?,
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    dp.pin_missing_except(&dir, name::PIN_ROOT)
}

/// Step 1's end: `pin_root` pinned in `maps_new/`, which makes it complete.
pub fn seal(pins: &PinRoot, dp: &mut Datapath<'_>) -> Result<()> {
    dp.pin_missing(&pins.staging_dir())
}

/// Step 2: fills the maps in `maps_new/` from the pinned ones.
pub fn fill(pins: &PinRoot, m: &Migration) -> Result<()> {
    let old = pinned_in(&pins.maps_dir())?;
    let staging = pins.staging();
    if let Some(names) = &m.stats_names {
        fill_stats(&old[name::STATS], &MapHandle::from_pinned_path(staging.map(name::STATS))?, names)?;
    }
    if m.from_previous {
        fill_from_previous(&staging, &old)?;
    }
    if m.fresh.contains(name::ATTACHMENTS) {
        fill_attachments(&staging, &old[name::ATTACHMENTS])?;
    }
    Ok(())
}

/// Attachment records of the layout before (4,096 entries, an interface's
/// key naming its kind) in this build's (an interface's key names none;
/// the name index).
fn fill_attachments(staging: &PinRoot, old: &MapHandle) -> Result<()> {
    let records = Records::in_dir(&staging.maps_dir())?.context("the new attachments map is not pinned")?;
    let mut entries = Vec::new();
    for k in old.keys() {
        let Some(v) = old.lookup(&k, MapFlags::ANY).context("reading map attachments")? else { continue };
        let r = attach::decode(&k, &v)?;
        match r.kind {
            Some(kind) if kind.on_interface() => {
                entries.push(attach::iface_entry(r.id, r.ifindex, &r.netns, &r.target, kind, r.flags)?)
            }
            Some(kind) => entries.push(attach::cgroup_entry(r.id, &r.target, kind)?),
            None => log::info!("an attachment record of unknown kind on {} is dropped", r.target),
        }
    }
    attach::put_missing(&records, &entries)
}

/// Adds the pinned counters into the new `stats` by name, CPU by CPU.
fn fill_stats(old: &MapHandle, new: &MapHandle, old_names: &[String]) -> Result<()> {
    let new_names = crate::abi::stat_names()?;
    for (i, n) in old_names.iter().enumerate() {
        let Some(j) = new_names.iter().position(|m| m == n) else {
            log::info!("counter {n} has no successor in this build; its count is dropped");
            continue;
        };
        let Some(src) = old.lookup_percpu(bytes_of(&(i as u32)), MapFlags::ANY).context("reading map stats")? else {
            continue;
        };
        let key = (j as u32).to_ne_bytes();
        let mut dst = new.lookup_percpu(&key, MapFlags::ANY).context("reading map stats")?.unwrap_or_default();
        dst.resize(src.len(), vec![0; std::mem::size_of::<types::dp_counter>()]);
        for (d, s) in dst.iter_mut().zip(&src) {
            let mut c: types::dp_counter = from_bytes(d)?;
            let o: types::dp_counter = from_bytes(s)?;
            c.packets += o.packets;
            c.bytes += o.bytes;
            d.copy_from_slice(bytes_of(&c));
        }
        new.update_percpu(&key, &dst, MapFlags::ANY).context("updating map stats")?;
    }
    Ok(())
}

/// A `dnat_ports` entry of the release before: key (host port, big
/// endian; protocol; pad), value (container address, port big endian, MAC,
/// host veth index).
fn previous_mapping(k: &[u8], v: &[u8]) -> Result<Mapping> {
    if k.len() != 4 || v.len() != 16 {
        bail!("a dnat_ports entry of {} and {} bytes", k.len(), v.len());
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&v[6..12]);
    Ok(Mapping {
        ext_addr: Ext::Default,
        host_port: u16::from_be_bytes([k[0], k[1]]),
        proto: Proto::from_number(k[2])?,
        ctr_ip: Ipv4Addr::new(v[0], v[1], v[2], v[3]).into(),
        ctr_port: u16::from_be_bytes([v[4], v[5]]),
        ctr_mac: mac,
        veth_ifindex: u32::from_ne_bytes(v[12..16].try_into().unwrap()),
    })
}

/// The monotonic clock bpf_ktime_get_ns() reads, in nanoseconds.
fn monotonic_ns() -> Result<u64> {
    let mut t = nix::libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: t is a valid timespec for the call to fill.
    if unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_MONOTONIC, &mut t) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading the monotonic clock");
    }
    Ok(t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64)
}

/// dnat_ports and snat_cfg become the default external address, its
/// mappings (slots in host port order), their reverse entries and dnat4;
/// snat adopts the old release's connections for [`ADOPT_GRACE`].
/// snat_ports is dnat_ports' reverse and adds nothing.
fn fill_from_previous(staging: &PinRoot, old: &BTreeMap<String, MapHandle>) -> Result<()> {
    let mut mappings = Vec::new();
    for k in old["dnat_ports"].keys() {
        if let Some(v) = old["dnat_ports"].lookup(&k, MapFlags::ANY).context("reading map dnat_ports")? {
            mappings.push(previous_mapping(&k, &v)?);
        }
    }
    mappings.sort_by_key(|m| (m.proto, m.host_port));
    let cfg = old["snat_cfg"].lookup(bytes_of(&0u32), MapFlags::ANY).context("reading map snat_cfg")?.unwrap_or_default();
    let ext = (cfg.len() == 8 && cfg[..4] != [0; 4]).then(|| {
        (Ipv4Addr::new(cfg[0], cfg[1], cfg[2], cfg[3]), u32::from_ne_bytes(cfg[4..8].try_into().unwrap()))
    });

    // The records, for the name of the external interface.
    let mut records = Vec::new();
    if let Some(a) = old.get(name::ATTACHMENTS) {
        for k in a.keys() {
            if let Some(v) = a.lookup(&k, MapFlags::ANY).context("reading map attachments")? {
                records.push(attach::decode(&k, &v)?);
            }
        }
    }

    let mut txn = Txn::begin(staging)?;
    if let Some((addr, ifindex)) = ext {
        // The interface's name, as the record of dnat's attachment to it
        // says (it may be in another namespace), else as seen from here.
        let ifname = records
            .iter()
            .find(|r| r.kind == Some(Kind::Dnat) && r.ifindex == ifindex)
            .map(|r| r.target.clone())
            .or_else(|| crate::net::netif::name_of(ifindex).ok())
            .unwrap_or_default();
        published::external_add(&mut txn, addr.into(), ifindex, &ifname, true)
            .with_context(|| format!("the external address {addr} of the release before"))?;
    }
    for m in &mappings {
        published::add(&mut txn, m).with_context(|| format!("mapping {} of the release before", m.describe()))?;
    }
    if let Some((addr, ifindex)) = ext {
        let cfg = types::host_config {
            adopt_until: monotonic_ns()? + ADOPT_GRACE.as_nanos() as u64,
            adopt_addr: u32::from_ne_bytes(addr.octets()),
            adopt_ifindex: ifindex,
            ..Default::default()
        };
        txn.put(name::HOST_CFG, &0u32, &cfg)?;
    }
    txn.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_of_the_release_before_but_one_has_a_successor() {
        let now = crate::abi::stat_names().unwrap();
        let lost: Vec<&str> = PREVIOUS_STATS.iter().copied().filter(|n| !now.iter().any(|m| m == n)).collect();
        assert_eq!(lost, vec!["DP_STAT_SNAT_NO_EXTERNAL"]);
        assert_eq!(previous("stats").unwrap().max_entries as usize, PREVIOUS_STATS.len());
    }

    #[test]
    fn the_release_befores_mappings_decode() {
        // 30001/udp -> 10.1.2.3:19132, MAC 02:00:00:00:00:07, veth 9.
        let k = [0x75, 0x31, 17, 0];
        let mut v = vec![10, 1, 2, 3, 0x4a, 0xbc, 2, 0, 0, 0, 0, 7];
        v.extend_from_slice(&9u32.to_ne_bytes());
        let m = previous_mapping(&k, &v).unwrap();
        assert_eq!(
            m,
            Mapping {
                ext_addr: Ext::Default,
                host_port: 30001,
                proto: Proto::Udp,
                ctr_ip: Ipv4Addr::new(10, 1, 2, 3).into(),
                ctr_port: 19132,
                ctr_mac: [2, 0, 0, 0, 0, 7],
                veth_ifindex: 9,
            }
        );
        assert!(previous_mapping(&k[..3], &v).is_err());
        assert!(previous_mapping(&[0x75, 0x31, 1, 0], &v).is_err(), "a protocol other than TCP and UDP");
    }

    #[test]
    fn this_build_keeps_the_layouts_it_shares_with_the_release_before() {
        let now = crate::kernel::loader::layouts().unwrap();
        for (name, layout) in PREVIOUS {
            match now.get(name) {
                Some(l) if ["stats", "attachments"].contains(&name) => assert_ne!(*l, layout, "{name} is migrated"),
                Some(l) => assert_eq!(*l, layout, "{name} is shared as it is"),
                None => assert!(PREVIOUS_ONLY.contains(&name), "{name}"),
            }
        }
    }
}
