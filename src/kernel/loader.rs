//! Loading the six objects, sharing and pinning their maps, and upgrading
//! a running system in place.
//!
//! Every map is pinned under `<root>/maps/<name>` and handed to every
//! object (each defines the same maps, from `dp_maps.h`). A pinned map is
//! reused only if its type, key and value sizes, capacity and flags match
//! this build; otherwise `load` refuses before anything is changed, unless
//! `kernel::migrate` names the map as one it fills itself (then it is made
//! afresh here and filled there).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType, OpenObject, Program};

use crate::abi::{arp, bytes_of, dnat, guard, hostaccess, snat, tproxy, types};
use crate::kernel::pins::PinRoot;

/// Storage for the open objects; owned by the caller, borrowed by
/// [`Datapath`].
pub struct Objects {
    dnat: MaybeUninit<OpenObject>,
    snat: MaybeUninit<OpenObject>,
    arp: MaybeUninit<OpenObject>,
    tproxy: MaybeUninit<OpenObject>,
    guard: MaybeUninit<OpenObject>,
    hostaccess: MaybeUninit<OpenObject>,
}

impl Default for Objects {
    fn default() -> Self {
        Self {
            dnat: MaybeUninit::uninit(),
            snat: MaybeUninit::uninit(),
            arp: MaybeUninit::uninit(),
            tproxy: MaybeUninit::uninit(),
            guard: MaybeUninit::uninit(),
            hostaccess: MaybeUninit::uninit(),
        }
    }
}

/// The loaded programs and the maps they share.
pub struct Datapath<'obj> {
    pub dnat: dnat::DnatSkel<'obj>,
    pub snat: snat::SnatSkel<'obj>,
    pub arp: arp::ArpSkel<'obj>,
    pub tproxy: tproxy::TproxySkel<'obj>,
    pub guard: guard::GuardSkel<'obj>,
    pub hostaccess: hostaccess::HostaccessSkel<'obj>,
    maps: BTreeMap<String, MapHandle>,
    created: Vec<String>,
}

impl<'obj> Datapath<'obj> {
    /// Opens and loads all six objects, reusing the maps pinned under
    /// `pins` where they exist. Pins nothing: see [`Datapath::pin_missing`].
    pub fn load(objs: &'obj mut Objects, pins: &PinRoot) -> Result<Self> {
        Self::load_from(objs, &pins.maps_dir(), &BTreeSet::new())
    }

    /// Like [`Datapath::load`], with the maps pinned in `dir`, except the
    /// ones named in `fresh`, which are made new even if pinned (a
    /// migration fills them).
    pub fn load_from(objs: &'obj mut Objects, dir: &Path, fresh: &BTreeSet<String>) -> Result<Self> {
        let mut maps = BTreeMap::new();
        let mut created = Vec::new();
        let src = Source { dir, fresh };
        let dnat = load_one(dnat::DnatSkelBuilder::default(), &mut objs.dnat, &src, &mut maps, &mut created)?;
        let snat = load_one(snat::SnatSkelBuilder::default(), &mut objs.snat, &src, &mut maps, &mut created)?;
        let arp = load_one(arp::ArpSkelBuilder::default(), &mut objs.arp, &src, &mut maps, &mut created)?;
        let tproxy =
            load_one(tproxy::TproxySkelBuilder::default(), &mut objs.tproxy, &src, &mut maps, &mut created)?;
        let guard = load_one(guard::GuardSkelBuilder::default(), &mut objs.guard, &src, &mut maps, &mut created)?;
        let hostaccess = load_one(
            hostaccess::HostaccessSkelBuilder::default(),
            &mut objs.hostaccess,
            &src,
            &mut maps,
            &mut created,
        )?;
        Ok(Self { dnat, snat, arp, tproxy, guard, hostaccess, maps, created })
    }

    /// A loaded program by its pinned name.
    pub fn program(&self, name: &str) -> Result<&Program<'obj>> {
        Ok(match name {
            "dnat" => &self.dnat.progs.dnat,
            "snat" => &self.snat.progs.snat,
            "arp" => &self.arp.progs.arp,
            "tproxy_ingress" => &self.tproxy.progs.tproxy_ingress,
            "tproxy_egress" => &self.tproxy.progs.tproxy_egress,
            "getsockopt" => &self.tproxy.progs.getsockopt,
            "guard" => &self.guard.progs.guard,
            "connect4" => &self.hostaccess.progs.connect4,
            "sendmsg4" => &self.hostaccess.progs.sendmsg4,
            "recvmsg4" => &self.hostaccess.progs.recvmsg4,
            "getpeername4" => &self.hostaccess.progs.getpeername4,
            _ => bail!("no program named {name}"),
        })
    }

    /// A shared map by name.
    pub fn map(&self, name: &str) -> Result<&MapHandle> {
        self.maps.get(name).with_context(|| format!("no map named {name}"))
    }

    /// How many maps the objects share.
    pub fn map_count(&self) -> usize {
        self.maps.len()
    }

    /// Maps this load created (none of them pinned yet).
    pub fn created_maps(&self) -> &[String] {
        &self.created
    }

    /// Removes the pins of the maps this load created (after a failure).
    pub fn unpin_new_maps(&self, pins: &PinRoot) {
        for name in &self.created {
            let _ = fs::remove_file(pins.map(name));
        }
    }

    /// Pins every map not pinned in `dir` yet; on failure removes the pins
    /// it made.
    pub fn pin_missing(&mut self, dir: &Path) -> Result<()> {
        self.pin_missing_except(dir, "")
    }

    /// Like [`Datapath::pin_missing`], leaving out the map `except`.
    pub fn pin_missing_except(&mut self, dir: &Path, except: &str) -> Result<()> {
        let mut pinned = Vec::new();
        for (name, map) in self.maps.iter_mut() {
            let path = dir.join(name);
            if path.exists() || name == except {
                continue;
            }
            if let Err(e) = map.pin(&path) {
                for p in &pinned {
                    let _ = fs::remove_file(p);
                }
                return Err(e).with_context(|| format!("pinning map {}", path.display()));
            }
            pinned.push(path);
        }
        Ok(())
    }

    /// Records the pin root in the `pin_root` map, so every program says
    /// whose it is (`kernel::owner`).
    pub fn set_pin_root(&self, pins: &PinRoot) -> Result<()> {
        let path = pins.root().as_os_str().as_encoded_bytes();
        let mut v = types::pin_root_value::default();
        if path.len() >= v.path.len() {
            bail!("pin root {} is longer than {} bytes", pins.root().display(), v.path.len() - 1);
        }
        for (d, b) in v.path.iter_mut().zip(path) {
            *d = *b as _;
        }
        self.map(crate::maps::name::PIN_ROOT)?
            .update(bytes_of(&0u32), bytes_of(&v), MapFlags::ANY)
            .context("updating map pin_root")
    }

    /// Pins every program, replacing older pins atomically: pin beside,
    /// then rename over (bpffs supports rename).
    pub fn pin_programs(&self, pins: &PinRoot) -> Result<()> {
        for name in crate::abi::PROG_NAMES {
            let path = pins.prog(name);
            // bpffs refuses names with a dot in them.
            let tmp = pins.progs_dir().join(format!("{name}_new"));
            let _ = fs::remove_file(&tmp);
            let fd = self.program(name)?.as_fd().as_raw_fd();
            let c = std::ffi::CString::new(tmp.as_os_str().as_encoded_bytes())?;
            // SAFETY: fd is the loaded program's; c is NUL-terminated.
            let rc = unsafe { libbpf_sys::bpf_obj_pin(fd, c.as_ptr()) };
            if rc != 0 {
                return Err(std::io::Error::from_raw_os_error(-rc))
                    .with_context(|| format!("pinning program {}", tmp.display()));
            }
            fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        }
        Ok(())
    }
}

/// Where the maps to reuse are pinned, and which not to reuse.
struct Source<'a> {
    dir: &'a Path,
    fresh: &'a BTreeSet<String>,
}

fn load_one<'obj, B>(
    builder: B,
    storage: &'obj mut MaybeUninit<OpenObject>,
    src: &Source<'_>,
    maps: &mut BTreeMap<String, MapHandle>,
    created: &mut Vec<String>,
) -> Result<<B::Output as OpenSkel<'obj>>::Output>
where
    B: SkelBuilder<'obj>,
{
    let mut open = builder.open(storage).context("opening BPF object")?;
    let obj_name = open.open_object().name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    for mut map in open.open_object_mut().maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        if let Some(shared) = maps.get(&name) {
            map.reuse_fd(shared.as_fd()).with_context(|| format!("sharing map {name}"))?;
            continue;
        }
        let path = src.dir.join(&name);
        if path.exists() && !src.fresh.contains(&name) {
            let pinned = MapHandle::from_pinned_path(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            check_compatible(&name, &path, &map, &pinned)?;
            map.reuse_fd(pinned.as_fd()).with_context(|| format!("reusing map {}", path.display()))?;
            maps.insert(name, pinned);
        }
    }
    let skel = open.load().with_context(|| format!("loading BPF object {obj_name} (verifier)"))?;
    for map in skel.object().maps() {
        let name = map.name().to_string_lossy().into_owned();
        if !maps.contains_key(&name) {
            let handle = MapHandle::try_from(&map).with_context(|| format!("duplicating map {name}"))?;
            maps.insert(name.clone(), handle);
            created.push(name);
        }
    }
    Ok(skel)
}

/// What makes a map's layout: type, key and value sizes, capacity and
/// flags. Two maps of one layout hold the same entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub map_type: MapType,
    pub key: u32,
    pub value: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl Layout {
    pub const fn new(map_type: MapType, key: u32, value: u32, max_entries: u32, flags: u32) -> Self {
        Self { map_type, key, value, max_entries, flags }
    }

    pub fn of(map: &MapHandle) -> Result<Self> {
        let info = map.info().context("reading a map's info")?;
        Ok(Self {
            map_type: map.map_type(),
            key: map.key_size(),
            value: map.value_size(),
            max_entries: map.max_entries(),
            flags: info.info.map_flags,
        })
    }

    fn of_open(m: &libbpf_rs::OpenMapMut<'_>) -> Self {
        Self {
            map_type: m.map_type(),
            key: m.key_size(),
            value: m.value_size(),
            max_entries: m.max_entries(),
            flags: m.map_flags(),
        }
    }

    /// How `self` differs from `want`, in words.
    pub fn diff(&self, want: &Layout) -> Vec<String> {
        let mut d = Vec::new();
        if self.map_type != want.map_type {
            d.push(format!("type {:?}, this build needs {:?}", self.map_type, want.map_type));
        }
        if self.key != want.key {
            d.push(format!("key size {}, this build needs {}", self.key, want.key));
        }
        if self.value != want.value {
            d.push(format!("value size {}, this build needs {}", self.value, want.value));
        }
        if self.max_entries != want.max_entries {
            d.push(format!("capacity {}, this build needs {}", self.max_entries, want.max_entries));
        }
        if self.flags != want.flags {
            d.push(format!("flags {:#x}, this build needs {:#x}", self.flags, want.flags));
        }
        d
    }
}

/// The layout of every map of this build, read from the compiled objects
/// (every object defines every map the same way).
pub fn layouts() -> Result<BTreeMap<String, Layout>> {
    let mut storage = MaybeUninit::uninit();
    let mut open = dnat::DnatSkelBuilder::default().open(&mut storage).context("opening BPF object")?;
    Ok(open
        .open_object_mut()
        .maps_mut()
        .map(|m| (m.name().to_string_lossy().into_owned(), Layout::of_open(&m)))
        .collect())
}

fn check_compatible(
    name: &str,
    path: &Path,
    want: &libbpf_rs::OpenMapMut<'_>,
    have: &MapHandle,
) -> Result<()> {
    let diffs = Layout::of(have).with_context(|| format!("reading {}", path.display()))?.diff(&Layout::of_open(want));
    if !diffs.is_empty() {
        bail!(
            "pinned map {name} ({}) is incompatible with this build: {}; nothing was changed \
             (to start afresh, losing its entries: datapathctl unload)",
            path.display(),
            diffs.join(", ")
        );
    }
    Ok(())
}
