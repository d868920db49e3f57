//! Loading the five objects, sharing and pinning their maps, and upgrading
//! a running system in place.
//!
//! Every map is pinned under `<root>/maps/<name>` and handed to every
//! object (each defines the same maps, from `dp_maps.h`). A pinned map is
//! reused only if its type, key and value sizes, capacity and flags match
//! this build; otherwise `load` refuses before anything is changed.

use std::collections::BTreeMap;
use std::fs;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapHandle, OpenObject, Program};

use crate::abi::{arp, dnat, guard, snat, tproxy};
use crate::kernel::pins::PinRoot;

/// Storage for the open objects; owned by the caller, borrowed by
/// [`Datapath`].
pub struct Objects {
    dnat: MaybeUninit<OpenObject>,
    snat: MaybeUninit<OpenObject>,
    arp: MaybeUninit<OpenObject>,
    tproxy: MaybeUninit<OpenObject>,
    guard: MaybeUninit<OpenObject>,
}

impl Default for Objects {
    fn default() -> Self {
        Self {
            dnat: MaybeUninit::uninit(),
            snat: MaybeUninit::uninit(),
            arp: MaybeUninit::uninit(),
            tproxy: MaybeUninit::uninit(),
            guard: MaybeUninit::uninit(),
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
    maps: BTreeMap<String, MapHandle>,
    created: Vec<String>,
}

impl<'obj> Datapath<'obj> {
    /// Opens and loads all five objects, reusing the maps pinned under
    /// `pins` where they exist. Pins nothing: see [`Datapath::pin`].
    pub fn load(objs: &'obj mut Objects, pins: &PinRoot) -> Result<Self> {
        let mut maps = BTreeMap::new();
        let mut created = Vec::new();
        let dnat = load_one(dnat::DnatSkelBuilder::default(), &mut objs.dnat, pins, &mut maps, &mut created)?;
        let snat = load_one(snat::SnatSkelBuilder::default(), &mut objs.snat, pins, &mut maps, &mut created)?;
        let arp = load_one(arp::ArpSkelBuilder::default(), &mut objs.arp, pins, &mut maps, &mut created)?;
        let tproxy =
            load_one(tproxy::TproxySkelBuilder::default(), &mut objs.tproxy, pins, &mut maps, &mut created)?;
        let guard = load_one(guard::GuardSkelBuilder::default(), &mut objs.guard, pins, &mut maps, &mut created)?;
        Ok(Self { dnat, snat, arp, tproxy, guard, maps, created })
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

    /// Pins the maps this load created; on failure unpins them again.
    pub fn pin_new_maps(&mut self, pins: &PinRoot) -> Result<()> {
        let mut pinned = Vec::new();
        for name in self.created.clone() {
            let path = pins.map(&name);
            let map = self.maps.get_mut(&name).expect("created map is registered");
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

fn load_one<'obj, B>(
    builder: B,
    storage: &'obj mut MaybeUninit<OpenObject>,
    pins: &PinRoot,
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
        let path = pins.map(&name);
        if path.exists() {
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

fn check_compatible(
    name: &str,
    path: &Path,
    want: &libbpf_rs::OpenMapMut<'_>,
    have: &MapHandle,
) -> Result<()> {
    let info = have.info().with_context(|| format!("reading {}", path.display()))?;
    let mut diffs = Vec::new();
    if have.map_type() != want.map_type() {
        diffs.push(format!("type {:?}, this build needs {:?}", have.map_type(), want.map_type()));
    }
    if have.key_size() != want.key_size() {
        diffs.push(format!("key size {}, this build needs {}", have.key_size(), want.key_size()));
    }
    if have.value_size() != want.value_size() {
        diffs.push(format!("value size {}, this build needs {}", have.value_size(), want.value_size()));
    }
    if have.max_entries() != want.max_entries() {
        diffs.push(format!("capacity {}, this build needs {}", have.max_entries(), want.max_entries()));
    }
    if info.info.map_flags != want.map_flags() {
        diffs.push(format!("flags {:#x}, this build needs {:#x}", info.info.map_flags, want.map_flags()));
    }
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
