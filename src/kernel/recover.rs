//! A pin root lost while its programs are attached (`rm -rf`, bpffs
//! unmounted and mounted again): finding them, and through them the maps.
//!
//! The datapath's attachments are found in the kernel alone: TC filters
//! with its handle at its priorities, XDP programs, and programs on cgroups,
//! in the host's network namespace and every named one (`/run/netns/*`),
//! and on the whole cgroup v2 tree. A program is the pin root's if it holds
//! the pin root's `pin_root` map (`kernel::owner`); every program holds
//! every map, so one of them gives all the maps back: `load` pins them
//! again and takes the attachments back, `unload` removes everything.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapHandle};

use crate::abi::types;
use crate::kernel::attach::{self, Kind, Records, ALL_SLOTS, TC_HANDLE};
use crate::kernel::cgroup::{self, Cgroup};
use crate::kernel::owner::{self, Owners};
use crate::kernel::pins::PinRoot;
use crate::maps::name;
use crate::net::netns::{self, NetnsGuard};
use crate::net::rtnl::{FilterAt, Rtnl};

/// A network namespace the datapath can know of: the caller's ("" name)
/// or a named one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ns {
    pub name: String,
    pub inode: u64,
}

/// An interface with the pin root's TC filters.
#[derive(Clone, Debug)]
pub struct FoundIface {
    pub ns: Ns,
    pub ifindex: u32,
    pub ifname: String,
    pub kind: Kind,
    /// (ingress, priority) of each filter found.
    pub slots: Vec<(bool, u16)>,
}

/// An interface with the pin root's XDP program.
#[derive(Clone, Debug)]
pub struct FoundXdp {
    pub ns: Ns,
    pub ifindex: u32,
    pub ifname: String,
    pub prog_id: u32,
    /// Generic (skb) mode; else native.
    pub generic: bool,
}

/// A cgroup with the pin root's programs of a kind.
#[derive(Clone, Debug)]
pub struct FoundCgroup {
    pub path: PathBuf,
    pub id: u64,
    pub kind: Kind,
}

/// What a scan found of one pin root.
#[derive(Debug, Default)]
pub struct Found {
    pub ifaces: Vec<FoundIface>,
    pub xdp: Vec<FoundXdp>,
    pub cgroups: Vec<FoundCgroup>,
    /// Every program found, by id.
    pub progs: BTreeSet<u32>,
}

impl Found {
    pub fn is_empty(&self) -> bool {
        self.ifaces.is_empty() && self.xdp.is_empty() && self.cgroups.is_empty()
    }
}

/// The host's namespace (the caller's) and every named one, each once.
fn namespaces() -> Result<Vec<(Ns, Option<PathBuf>)>> {
    let here = netns::current_inode()?;
    let mut out = vec![(Ns { name: String::new(), inode: here }, None)];
    let mut seen = BTreeSet::from([here]);
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        for n in names {
            let path = Path::new("/run/netns").join(&n);
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            let inode = std::os::unix::fs::MetadataExt::ino(&meta);
            // A name whose namespace is gone (an empty mount point) is
            // not a namespace.
            if !seen.insert(inode) || netns::validate_name(&n).is_err() {
                continue;
            }
            out.push((Ns { name: n, inode }, Some(path)));
        }
    }
    Ok(out)
}

/// Finds every attachment of pin root `root` (its path) in the kernel.
pub fn scan(root: &str) -> Result<Found> {
    let mut owners = Owners::new();
    let mut found = Found::default();
    for (ns, path) in namespaces()? {
        let _guard = match &path {
            Some(p) => match NetnsGuard::enter_path(p) {
                Ok(g) => Some(g),
                Err(e) => {
                    log::debug!("skipping network namespace {}: {e:#}", ns.name);
                    continue;
                }
            },
            None => None,
        };
        if path.is_some() && netns::current_inode()? != ns.inode {
            continue;
        }
        if let Err(e) = scan_ns(&ns, root, &mut owners, &mut found) {
            // A namespace deleted while it is read.
            log::debug!("scanning network namespace '{}': {e:#}", ns.name);
        }
    }
    let cg_root = cgroup::cgroup2_root()?;
    for dir in cgroup::walk(&cg_root) {
        let Ok(cg) = Cgroup::open(&dir) else { continue };
        for kind in Kind::ALL {
            let mut any = false;
            for hook in kind.hooks() {
                let Ok(ids) = cg.ours(hook, &mut owners, root) else { continue };
                any |= !ids.is_empty();
                found.progs.extend(ids);
            }
            if any {
                found.cgroups.push(FoundCgroup { path: dir.clone(), id: cg.id, kind });
            }
        }
    }
    Ok(found)
}

fn scan_ns(ns: &Ns, root: &str, owners: &mut Owners, found: &mut Found) -> Result<()> {
    let mut nl = Rtnl::open().map_err(|e| anyhow::anyhow!("{e}"))?;
    for link in nl.links().map_err(|e| anyhow::anyhow!("{e}"))? {
        let mut slots: BTreeMap<Kind, Vec<(bool, u16)>> = BTreeMap::new();
        for ingress in [true, false] {
            for f in nl.bpf_filters(FilterAt::Dev { index: link.index, ingress }).map_err(|e| anyhow::anyhow!("{e}"))? {
                if f.handle != TC_HANDLE || !ALL_SLOTS.contains(&(ingress, f.priority)) {
                    continue;
                }
                let Some(p) = owners.prog(f.prog_id) else { continue };
                if p.root.as_deref() != Some(root) {
                    continue;
                }
                let kind = [Kind::Dnat, Kind::Host].into_iter().find(|k| {
                    k.slots().iter().any(|s| s.ingress == ingress && s.priority == f.priority && s.prog == p.info.name)
                });
                if let Some(kind) = kind {
                    slots.entry(kind).or_default().push((ingress, f.priority));
                    found.progs.insert(f.prog_id);
                }
            }
        }
        for (kind, slots) in slots {
            found.ifaces.push(FoundIface { ns: ns.clone(), ifindex: link.index, ifname: link.name.clone(), kind, slots });
        }
        for (id, generic) in [(link.xdp_skb_prog, true), (link.xdp_drv_prog, false)] {
            let Some(id) = id else { continue };
            if owners.prog(id).is_some_and(|p| p.root.as_deref() == Some(root)) {
                found.progs.insert(id);
                found.xdp.push(FoundXdp { ns: ns.clone(), ifindex: link.index, ifname: link.name.clone(), prog_id: id, generic });
            }
        }
    }
    Ok(())
}

/// The maps of pin root `root` that `progs` hold, by name. Every program
/// holds every map of its build (`dp_keep_maps`), so any one of them is
/// enough; when programs of two generations are found (a load killed
/// half-way), the maps of the newest `pin_root` map win. A build before
/// this one may not have had every map of this one: those are made by
/// `load` as for any new map.
pub fn maps_of(progs: &BTreeSet<u32>, root: &str) -> Result<BTreeMap<String, MapHandle>> {
    let mut best: Option<(u32, BTreeMap<String, MapHandle>)> = None;
    for &id in progs {
        let Ok(fd) = owner::prog_fd(id) else { continue };
        let info = owner::prog_info(fd.as_fd())?;
        let mut maps = BTreeMap::new();
        let mut pin_root_id = 0;
        for &map_id in &info.map_ids {
            let Ok(m) = owner::map_by_id(map_id) else { continue };
            let n = m.name().to_string_lossy().into_owned();
            if n == name::PIN_ROOT {
                if owner::pin_root_of(&m)? != root {
                    maps.clear();
                    break;
                }
                pin_root_id = map_id;
            }
            maps.insert(n, m);
        }
        if pin_root_id == 0 {
            continue;
        }
        if best.as_ref().is_none_or(|(b, _)| pin_root_id > *b) {
            best = Some((pin_root_id, maps));
        }
    }
    Ok(best.map(|(_, maps)| maps).unwrap_or_default())
}

/// Programs of the pin root still pinned under `progs/`, by id.
fn pinned_progs(pins: &PinRoot, root: &str) -> BTreeSet<u32> {
    let mut owners = Owners::new();
    let mut out = BTreeSet::new();
    for p in crate::abi::PROG_NAMES {
        let Ok(fd) = attach::obj_get(&pins.prog(p)) else { continue };
        if let Ok(info) = owner::prog_info(fd.as_fd()) {
            if owners.prog(info.id).is_some_and(|x| x.root.as_deref() == Some(root)) {
                out.insert(info.id);
            }
        }
    }
    out
}

/// What a recovery found and did.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Map pins made again.
    pub repinned: Vec<String>,
    /// The kernel scan, when one was needed (no program was pinned).
    pub found: Option<Found>,
}

/// Before `load`: if maps of this build are missing from `maps/` while the
/// pin root's programs still exist (pinned, or attached somewhere), pins
/// those programs' maps again. Nothing to do (a first load, an intact pin
/// root, an upgrade) is `Ok(None)`.
pub fn recover_maps(pins: &PinRoot) -> Result<Option<Recovery>> {
    let missing: Vec<&str> = name::ALL.iter().copied().filter(|n| !pins.map(n).exists()).collect();
    if missing.is_empty() || pins.staging_dir().exists() || pins.map("dnat_ports").exists() {
        return Ok(None);
    }
    let root = pins.root().display().to_string();
    let mut progs = pinned_progs(pins, &root);
    let mut found = None;
    if progs.is_empty() {
        let f = scan(&root)?;
        progs = f.progs.clone();
        found = Some(f);
    }
    let mut maps = maps_of(&progs, &root)?;
    let mut repinned = Vec::new();
    for n in missing {
        // A map the programs do not hold is new in this build: load makes
        // it.
        let Some(mut m) = maps.remove(n) else { continue };
        m.pin(pins.map(n)).with_context(|| format!("pinning map {}", pins.map(n).display()))?;
        repinned.push(n.to_string());
    }
    if repinned.is_empty() {
        return Ok(None);
    }
    log::info!("pin root {root} was lost; pinned its maps again: {}", repinned.join(", "));
    Ok(Some(Recovery { repinned, found }))
}

/// The records a scan implies, for attachments the recovered `attachments`
/// map does not hold (a command killed before it wrote its record).
pub fn records_of(found: &Found) -> Result<Vec<(types::attach_key, types::attach_value)>> {
    let mut out = Vec::new();
    for f in &found.ifaces {
        out.push(attach::iface_entry(f.ns.inode, f.ifindex, &f.ns.name, &f.ifname, f.kind, 0)?);
    }
    for c in &found.cgroups {
        out.push(attach::cgroup_entry(c.id, &c.path.to_string_lossy(), c.kind)?);
    }
    Ok(out)
}

/// During `unload` of a lost pin root: removes what a scan found that the
/// records did not cover.
pub fn remove_found(found: &Found, root: &str) -> Result<()> {
    let mut owners = Owners::new();
    let mut by_ns: BTreeMap<Ns, (Vec<&FoundIface>, Vec<&FoundXdp>)> = BTreeMap::new();
    for f in &found.ifaces {
        by_ns.entry(f.ns.clone()).or_default().0.push(f);
    }
    for x in &found.xdp {
        by_ns.entry(x.ns.clone()).or_default().1.push(x);
    }
    for (ns, (ifaces, xdps)) in by_ns {
        let _guard = if ns.name.is_empty() {
            None
        } else {
            match NetnsGuard::enter(Some(&ns.name)) {
                Ok(g) => Some(g),
                Err(_) => continue,
            }
        };
        if netns::current_inode()? != ns.inode {
            continue;
        }
        let mut nl = Rtnl::open().map_err(|e| anyhow::anyhow!("{e}"))?;
        for f in ifaces {
            // A host veth bound to the pin root's shared blocks: unbinding
            // it is removing its filters (deleting them would take them
            // from every other veth, and leave the qdisc).
            let c = nl.clsact(f.ifindex).map_err(|e| anyhow::anyhow!("{e}"))?;
            if f.kind == Kind::Host && c.is_some_and(|c| (c.ingress_block, c.egress_block) == attach::shared_blocks(root)) {
                nl.del_clsact(f.ifindex).map_err(|e| anyhow::anyhow!("{e}"))?;
                continue;
            }
            for &(ingress, priority) in &f.slots {
                let at = FilterAt::of(f.ifindex, ingress, c);
                if let Some(filter) = nl.bpf_filter(at, priority, TC_HANDLE).map_err(|e| anyhow::anyhow!("{e}"))? {
                    if owners.prog(filter.prog_id).is_some_and(|p| p.root.as_deref() == Some(root)) {
                        nl.del_filter(at, priority, TC_HANDLE).map_err(|e| anyhow::anyhow!("{e}"))?;
                    }
                }
            }
        }
        for x in xdps {
            attach::xdp_remove(x.ifindex, x.prog_id, x.generic)?;
        }
    }
    for c in &found.cgroups {
        if let Ok(cg) = Cgroup::open(&c.path) {
            for hook in c.kind.hooks().iter().rev() {
                cg.remove(hook, &mut owners, root)?;
            }
        }
    }
    Ok(())
}

/// The records and maps of a pin root for `unload`: pinned, or found
/// through its programs when the pins are gone. Also returns the scan
/// when one was made.
pub fn for_unload(pins: &PinRoot) -> Result<(Vec<Records>, Option<Found>)> {
    let mut sets = Vec::new();
    for dir in [pins.maps_dir(), pins.staging_dir(), pins.retired_dir()] {
        if let Some(r) = Records::in_dir(&dir)? {
            sets.push(r);
        }
    }
    if !sets.is_empty() {
        return Ok((sets, None));
    }
    let root = pins.root().display().to_string();
    let mut progs = pinned_progs(pins, &root);
    let mut found = None;
    if progs.is_empty() {
        let f = scan(&root)?;
        progs = f.progs.clone();
        found = Some(f);
    }
    let mut maps = match maps_of(&progs, &root) {
        Ok(m) => m,
        Err(e) => {
            log::info!("{e:#}");
            BTreeMap::new()
        }
    };
    if let (Some(a), Some(n)) = (maps.remove(name::ATTACHMENTS), maps.remove(name::ATTACH_NAMES)) {
        sets.push(Records::from_handles(a, Some(n)));
    }
    Ok((sets, found))
}
