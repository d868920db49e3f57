//! Attaching programs: TC filters and the guard's XDP program on
//! interfaces, programs on cgroups (`kernel::cgroup`), and the records of
//! where they are.
//!
//! Every attachment outlives the command that made it and every pin: TC
//! filters and XDP programs (attached over netlink, not as pinned
//! bpf_links) by nature, cgroup programs because the cgroup holds them.
//! Each is recorded in the pinned `attachments` map, so `load` can swap
//! programs in place (same handle and priority, one netlink replace;
//! `XDP_FLAGS_REPLACE` in the same XDP mode; `BPF_F_REPLACE` on cgroups)
//! and `status`/`unload` know where things are.
//!
//! Records: an interface is keyed by (netns inode, ifindex, 0) — it carries
//! one kind, held in the value — and indexed by name in `attach_names`, so
//! `attach` and `detach` find their record, a stale one and the record of
//! an interface that is gone in O(1). A cgroup is keyed by (cgroup id, 0,
//! kind). A record is written before the kernel is changed and removed
//! after, so the records always cover what is attached, also when a command
//! is killed half-way; `load` and `unload` walk them once.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::{ErrorKind, MapCore, MapFlags, MapHandle};

use crate::abi::{bytes_of, from_bytes, types};
use crate::kernel::cgroup::{self, Cgroup, Hook};
use crate::kernel::loader::Datapath;
use crate::kernel::owner::Owners;
use crate::kernel::pins::PinRoot;
use crate::maps::{name, Txn};
use crate::net::netif;
use crate::net::netns::{self, NetnsGuard};
use crate::net::rtnl::{Clsact, FilterAt, Rtnl};

pub use crate::kernel::cgroup::cgroup2_root;

/// Handle of every filter datapathctl installs; priorities set the order.
pub const TC_HANDLE: u32 = 0xd47a;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcSlot {
    pub prog: &'static str,
    pub ingress: bool,
    pub priority: u16,
}

/// dnat on the external NIC's ingress.
pub const DNAT_SLOTS: [TcSlot; 1] = [TcSlot { prog: "dnat", ingress: true, priority: 1 }];

/// The host veth: ingress chain arp -> snat -> tproxy_ingress, and egress.
/// Attached in this order, so the last hole closed is the first in line.
pub const HOST_SLOTS: [TcSlot; 4] = [
    TcSlot { prog: "tproxy_egress", ingress: false, priority: 1 },
    TcSlot { prog: "tproxy_ingress", ingress: true, priority: 3 },
    TcSlot { prog: "snat", ingress: true, priority: 2 },
    TcSlot { prog: "arp", ingress: true, priority: 1 },
];

/// Every (direction, priority) any kind uses on an interface: where
/// `attach` looks for another kind's programs and a lost pin root's
/// filters are looked for.
pub const ALL_SLOTS: [(bool, u16); 4] = [(true, 1), (true, 2), (true, 3), (false, 1)];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Dnat,
    Host,
    Getsockopt,
    HostAccess,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Dnat, Kind::Host, Kind::Getsockopt, Kind::HostAccess];

    pub(crate) fn code(self) -> u32 {
        use types::dp_attach_kind as K;
        match self {
            Kind::Dnat => K::DP_ATTACH_DNAT.0,
            Kind::Host => K::DP_ATTACH_HOST.0,
            Kind::Getsockopt => K::DP_ATTACH_GETSOCKOPT.0,
            Kind::HostAccess => K::DP_ATTACH_HOST_ACCESS.0,
        }
    }

    pub(crate) fn from_code(c: u32) -> Option<Self> {
        Kind::ALL.into_iter().find(|k| k.code() == c)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Dnat => "dnat",
            Kind::Host => "host",
            Kind::Getsockopt => "getsockopt",
            Kind::HostAccess => "host-access",
        }
    }

    /// The TC filters of an interface kind (none for a cgroup kind).
    pub fn slots(self) -> &'static [TcSlot] {
        match self {
            Kind::Dnat => &DNAT_SLOTS,
            Kind::Host => &HOST_SLOTS,
            Kind::Getsockopt | Kind::HostAccess => &[],
        }
    }

    /// The programs of a cgroup kind (none for an interface kind), in the
    /// order they are attached; they are detached in the reverse one.
    pub fn hooks(self) -> &'static [Hook] {
        match self {
            Kind::Getsockopt => &cgroup::GETSOCKOPT_HOOKS,
            Kind::HostAccess => &cgroup::HOST_ACCESS_HOOKS,
            Kind::Dnat | Kind::Host => &[],
        }
    }

    pub fn on_interface(self) -> bool {
        !self.slots().is_empty()
    }

    /// The interface kind whose program sits at (direction, priority).
    fn of_slot(ingress: bool, priority: u16, prog: &str) -> Option<Kind> {
        [Kind::Dnat, Kind::Host].into_iter().find(|k| {
            k.slots().iter().any(|s| s.ingress == ingress && s.priority == priority && s.prog == prog)
        })
    }
}

impl serde::Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

const QDISC_CREATED: u32 = types::dp_attach_flag::DP_ATTACH_F_QDISC_CREATED.0;
const XDP_NATIVE: u32 = types::dp_attach_flag::DP_ATTACH_F_XDP_NATIVE.0;
const XDP_GENERIC: u32 = types::dp_attach_flag::DP_ATTACH_F_XDP_GENERIC.0;
const SHARED_BLOCKS: u32 = types::dp_attach_flag::DP_ATTACH_F_SHARED_BLOCKS.0;

/// The shared TC blocks (ingress, egress) the host veths of pin root `root`
/// bind their clsact qdiscs to, in every namespace. The host programs are
/// then four filters per namespace, not four per veth: a new veth is one
/// qdisc that binds them, and `load` replaces four filters. Block indices
/// are per namespace; the index comes from the pin root's path, so two
/// pin roots in one namespace take different blocks (should they ever
/// meet, `attach` sees another pin root's programs in the block and gives
/// the veth a block of its own).
pub fn shared_blocks(root: &str) -> (u32, u32) {
    let mut h: u32 = 0x811c9dc5;
    for b in root.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    let base = 0xd47a_0000 | ((h & 0x7fff) << 1);
    (base, base + 1)
}
const IFACE: u32 = types::dp_attach_kind::DP_ATTACH_IFACE.0;

/// The XDP program that runs before a kind's TC programs (the guard before
/// dnat), if the kind has one.
pub fn xdp_prog(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Dnat => Some("guard"),
        Kind::Host | Kind::Getsockopt | Kind::HostAccess => None,
    }
}

/// How the guard runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver, before an skb exists.
    Native,
    /// Generic XDP, on the skb, for drivers without XDP support.
    Generic,
}

impl XdpMode {
    fn attach_flag(self) -> u32 {
        match self {
            XdpMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
            XdpMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
        }
    }
    fn record_flag(self) -> u32 {
        match self {
            XdpMode::Native => XDP_NATIVE,
            XdpMode::Generic => XDP_GENERIC,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

/// One attachment record.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Record {
    /// None for a kind this build does not know.
    pub kind: Option<Kind>,
    pub netns: String,
    pub target: String,
    pub ifindex: u32,
    /// How the kind's XDP program (the guard) runs there, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xdp: Option<XdpMode>,
    #[serde(skip)]
    pub id: u64,
    #[serde(skip)]
    pub flags: u32,
    #[serde(skip)]
    key_kind: u32,
}

impl Record {
    fn key(&self) -> types::attach_key {
        types::attach_key { id: self.id, ifindex: self.ifindex, kind: self.key_kind }
    }

    /// An interface's record (not a cgroup's). Judged by the kind, so
    /// records of the release before (whose interface keys named the kind)
    /// read the same.
    pub fn is_iface(&self) -> bool {
        self.key_kind == IFACE || self.kind.is_some_and(Kind::on_interface)
    }

    fn name_key(&self) -> types::attach_name_key {
        name_key(self.id, &self.target)
    }
}

fn cstr_field(bytes: &[std::ffi::c_char]) -> String {
    let b: Vec<u8> = bytes.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    String::from_utf8_lossy(&b).into_owned()
}

fn set_field(dst: &mut [std::ffi::c_char], s: &str) -> Result<()> {
    if s.len() >= dst.len() {
        bail!("'{}' is longer than {} bytes", cut(s), dst.len() - 1);
    }
    for (d, b) in dst.iter_mut().zip(s.bytes()) {
        *d = b as std::ffi::c_char;
    }
    Ok(())
}

/// Echoed names are cut to 64 bytes.
fn cut(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn iface_key(ns_id: u64, ifindex: u32) -> types::attach_key {
    types::attach_key { id: ns_id, ifindex, kind: IFACE }
}

fn cgroup_key(kind: Kind, cgroup_id: u64) -> types::attach_key {
    types::attach_key { id: cgroup_id, ifindex: 0, kind: kind.code() }
}

fn name_key(ns_id: u64, ifname: &str) -> types::attach_name_key {
    let mut k = types::attach_name_key { netns: ns_id, ifname: [0; 16] };
    for (d, b) in k.ifname.iter_mut().zip(ifname.bytes().take(15)) {
        *d = b as _;
    }
    k
}

fn value(kind: Kind, netns: &str, target: &str, flags: u32) -> Result<types::attach_value> {
    let mut v = types::attach_value::default();
    set_field(&mut v.netns, netns)?;
    set_field(&mut v.target, target)?;
    v.flags = flags;
    v.kind = kind.code();
    Ok(v)
}

fn record(k: &types::attach_key, v: &types::attach_value) -> Record {
    let code = if k.kind == IFACE { v.kind } else { k.kind };
    Record {
        kind: Kind::from_code(code),
        netns: cstr_field(&v.netns),
        target: cstr_field(&v.target),
        ifindex: k.ifindex,
        xdp: if v.flags & XDP_NATIVE != 0 {
            Some(XdpMode::Native)
        } else if v.flags & XDP_GENERIC != 0 {
            Some(XdpMode::Generic)
        } else {
            None
        },
        id: k.id,
        flags: v.flags,
        key_kind: k.kind,
    }
}

/// The `attachments` map and its name index, `attach_names`.
pub struct Records {
    map: MapHandle,
    /// None for the maps of the release before, which had no name index.
    names: Option<MapHandle>,
}

impl Records {
    pub fn open(pins: &PinRoot) -> Result<Self> {
        Ok(Self {
            map: crate::maps::open(pins, name::ATTACHMENTS)?,
            names: Some(crate::maps::open(pins, name::ATTACH_NAMES)?),
        })
    }

    /// The records pinned in a maps directory (`maps/`, or `maps_new/` of
    /// an interrupted upgrade); None if it holds none.
    pub fn in_dir(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(name::ATTACHMENTS);
        if !path.exists() {
            return Ok(None);
        }
        let map = MapHandle::from_pinned_path(&path).with_context(|| format!("opening map {}", path.display()))?;
        let names_path = dir.join(name::ATTACH_NAMES);
        let names = if names_path.exists() {
            Some(MapHandle::from_pinned_path(&names_path).with_context(|| format!("opening map {}", names_path.display()))?)
        } else {
            None
        };
        Ok(Some(Self { map, names }))
    }

    pub fn from_handles(map: MapHandle, names: Option<MapHandle>) -> Self {
        Self { map, names }
    }

    /// The records of a loaded [`Datapath`] (pinned or not yet).
    pub fn of(dp: &Datapath<'_>) -> Result<Self> {
        Ok(Self::from_handles(
            MapHandle::try_from(dp.map(name::ATTACHMENTS)?)?,
            Some(MapHandle::try_from(dp.map(name::ATTACH_NAMES)?)?),
        ))
    }

    /// Every record, one walk of the map.
    pub fn list(&self) -> Result<Vec<Record>> {
        let mut out: Vec<Record> = crate::maps::entries::<types::attach_key, types::attach_value>(&self.map)?
            .iter()
            .map(|(k, v)| record(k, v))
            .collect();
        out.sort_by(|a, b| (a.kind, &a.netns, &a.target).cmp(&(b.kind, &b.netns, &b.target)));
        Ok(out)
    }

    /// Writes a record and its name (load and unload only; commands write
    /// through a [`Txn`]).
    fn put(&self, k: &types::attach_key, v: &types::attach_value) -> Result<()> {
        self.map.update(bytes_of(k), bytes_of(v), MapFlags::ANY).map_err(|e| full_or(e, name::ATTACHMENTS))?;
        let r = record(k, v);
        if let (true, Some(names)) = (r.is_iface(), &self.names) {
            names
                .update(bytes_of(&r.name_key()), bytes_of(&r.ifindex), MapFlags::ANY)
                .map_err(|e| full_or(e, name::ATTACH_NAMES))?;
        }
        Ok(())
    }

    /// Removes a record and its name, if the name still points at it.
    pub fn remove(&self, r: &Record) -> Result<()> {
        crate::maps::delete(&self.map, &r.key())?;
        if let (true, Some(names)) = (r.is_iface(), &self.names) {
            let nk = r.name_key();
            if crate::maps::lookup::<_, u32>(names, &nk)? == Some(r.ifindex) {
                crate::maps::delete(names, &nk)?;
            }
        }
        Ok(())
    }

    /// Makes the name index say exactly what the records say: a command
    /// killed between its two writes leaves one without the other.
    pub fn reindex(&self) -> Result<()> {
        let Some(names) = &self.names else { return Ok(()) };
        let records = self.list()?;
        let mut want: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
        for r in records.iter().filter(|r| r.is_iface()) {
            want.insert(bytes_of(&r.name_key()).to_vec(), r.ifindex);
        }
        for key in names.keys().collect::<Vec<_>>() {
            if !want.contains_key(&key) {
                let _ = names.delete(&key);
            }
        }
        for (k, ifindex) in want {
            names.update(&k, bytes_of(&ifindex), MapFlags::ANY).map_err(|e| full_or(e, name::ATTACH_NAMES))?;
        }
        Ok(())
    }
}

fn full_or(e: libbpf_rs::Error, map: &str) -> anyhow::Error {
    if e.kind() == ErrorKind::TooBig {
        anyhow!("map {map} is full ({} entries)", crate::abi::capacity::ATTACHMENTS)
    } else {
        anyhow::Error::new(e).context(format!("updating map {map}"))
    }
}

/// Opens a pinned object (program or link) by path.
pub fn obj_get(path: &Path) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).context("path with NUL byte")?;
    // SAFETY: c is a valid NUL-terminated string for the call's duration.
    let fd = unsafe { libbpf_sys::bpf_obj_get(c.as_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("opening {}", path.display()));
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn rtnl_err(e: crate::net::rtnl::Error) -> anyhow::Error {
    anyhow!("{e}")
}

fn the_netns_name(netns: Option<&str>) -> &str {
    netns.unwrap_or("")
}

/// Whether a record's interface is the one now at its index, judged by
/// name and namespace name.
fn same_iface(r: &Record, netns_name: &str, ifname: &str) -> bool {
    r.target == ifname && r.netns == netns_name
}

/// The filters with our handle at our slots of an interface (whose clsact
/// qdisc is `clsact`).
fn filters_at_our_slots(nl: &mut Rtnl, index: u32, clsact: Option<Clsact>) -> Result<Vec<((bool, u16), u32)>> {
    let mut out = Vec::new();
    for (ingress, priority) in ALL_SLOTS {
        if let Some(f) = nl.bpf_filter(FilterAt::of(index, ingress, clsact), priority, TC_HANDLE).map_err(rtnl_err)? {
            out.push(((ingress, priority), f.prog_id));
        }
    }
    Ok(out)
}

/// The XDP program attached to an interface (in the calling thread's
/// namespace) and its mode, if any. A program in hardware offload mode is
/// reported as native: the guard never uses that mode.
fn xdp_query(index: u32) -> Result<Option<(u32, XdpMode)>> {
    let mut opts = libbpf_sys::bpf_xdp_query_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_xdp_query_opts>() as _,
        ..Default::default()
    };
    // SAFETY: opts is a valid, sized bpf_xdp_query_opts.
    let rc = unsafe { libbpf_sys::bpf_xdp_query(index as i32, 0, &mut opts) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(-rc))
            .with_context(|| format!("querying the XDP program of interface {index}"));
    }
    Ok(if opts.skb_prog_id != 0 {
        Some((opts.skb_prog_id, XdpMode::Generic))
    } else if opts.drv_prog_id != 0 {
        Some((opts.drv_prog_id, XdpMode::Native))
    } else if opts.hw_prog_id != 0 {
        Some((opts.hw_prog_id, XdpMode::Native))
    } else {
        None
    })
}

/// The pin root's XDP program `prog` on an interface, if it is there.
/// With `recorded`, a program of that name belonging to no pin root counts
/// as the pin root's (builds before `pin_root` existed). Anybody else's
/// program is an error naming it: an interface has one XDP hook.
fn xdp_ours(
    iface: &netif::Iface,
    prog: &str,
    owners: &mut Owners,
    root: &str,
    recorded: bool,
) -> Result<Option<(u32, XdpMode)>> {
    let Some((id, mode)) = xdp_query(iface.index)? else { return Ok(None) };
    let Some(p) = owners.prog(id) else { return Ok(None) };
    let ours = p.info.name == prog && (p.root.as_deref() == Some(root) || (recorded && p.root.is_none()));
    if !ours {
        let whose = match p.root.as_deref() {
            Some(r) if p.info.name == prog => format!("the datapath of pin root {}", cut(r)),
            _ => "someone else".to_string(),
        };
        bail!(
            "{} already has an XDP program of {whose} ('{}', id {id}); the {prog} program needs that hook",
            cut(&iface.name),
            cut(&p.info.name)
        );
    }
    Ok(Some((id, mode)))
}

fn xdp_set(index: u32, prog_fd: i32, flags: u32, old: Option<&OwnedFd>) -> i32 {
    let opts = libbpf_sys::bpf_xdp_attach_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_xdp_attach_opts>() as _,
        old_prog_fd: old.map(|f| f.as_raw_fd()).unwrap_or(0),
        ..Default::default()
    };
    let flags = flags | if old.is_some() { libbpf_sys::XDP_FLAGS_REPLACE } else { 0 };
    // SAFETY: opts is a valid, sized bpf_xdp_attach_opts; the descriptors
    // are open for the call's duration.
    unsafe { libbpf_sys::bpf_xdp_attach(index as i32, prog_fd, flags, &opts) }
}

/// Attaches the XDP program `prog`, or replaces the pin root's in place in
/// the mode it runs in: in the driver where it supports XDP, generic XDP
/// otherwise and on veths. Returns the mode and whether it was not there.
fn xdp_attach(
    iface: &netif::Iface,
    prog: &str,
    prog_fd: i32,
    current: Option<(u32, XdpMode)>,
) -> Result<(XdpMode, bool)> {
    if let Some((id, mode)) = current {
        let old = crate::kernel::owner::prog_fd(id)?;
        // XDP_FLAGS_REPLACE: swapped atomically, and only if the program
        // is still the one we saw.
        let rc = xdp_set(iface.index, prog_fd, mode.attach_flag(), Some(&old));
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(-rc))
                .with_context(|| format!("replacing {prog} ({} XDP) on {}", mode.as_str(), iface.name));
        }
        return Ok((mode, false));
    }
    let noexist = libbpf_sys::XDP_FLAGS_UPDATE_IF_NOEXIST;
    // A veth is the exception: it receives skbs its peer already built, so
    // native XDP saves no allocation there; it converts each skb to an XDP
    // buffer and back in a NAPI loop of its own, and turns off the peer's
    // segmentation offload (veth_xdp_set()), which cut bulk TCP through it
    // to a quarter in our measurements. Generic XDP runs on the skb as it is.
    if netif::driver_of(&iface.name).map(|d| d == "veth").unwrap_or(false) {
        log::info!("{} is a veth: attaching {prog} as generic XDP", iface.name);
    } else {
        let rc = xdp_set(iface.index, prog_fd, noexist | XdpMode::Native.attach_flag(), None);
        if rc == 0 {
            return Ok((XdpMode::Native, true));
        }
        log::info!(
            "{} refuses native XDP ({}); attaching {prog} as generic XDP",
            iface.name,
            std::io::Error::from_raw_os_error(-rc)
        );
    }
    let rc = xdp_set(iface.index, prog_fd, noexist | XdpMode::Generic.attach_flag(), None);
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(-rc))
            .with_context(|| format!("attaching {prog} (XDP) to {}", iface.name));
    }
    Ok((XdpMode::Generic, true))
}

/// Removes the pin root's XDP program from an interface; anybody else's is
/// left alone. False if ours was not there.
fn xdp_detach(iface: &netif::Iface, prog: &str, owners: &mut Owners, root: &str, recorded: bool) -> Result<bool> {
    match xdp_ours(iface, prog, owners, root, recorded) {
        Ok(Some((id, mode))) => {
            xdp_remove(iface.index, id, mode == XdpMode::Generic)?;
            Ok(true)
        }
        Ok(None) | Err(_) => Ok(false),
    }
}

/// `attach dnat|host <if>`: attaches (or re-attaches, idempotently) the
/// kind's programs. An interface that carries the other kind is refused.
/// On failure, removes what this call added.
pub fn attach_tc(pins: &PinRoot, netns_name: Option<&str>, kind: Kind, ifspec: &str) -> Result<netif::Iface> {
    pins.require_loaded()?;
    let mut fds = Vec::new();
    for slot in kind.slots() {
        fds.push(obj_get(&pins.prog(slot.prog))?);
    }
    let xdp_fd = match xdp_prog(kind) {
        Some(p) => Some((p, obj_get(&pins.prog(p))?)),
        None => None,
    };
    let _ns = NetnsGuard::enter(netns_name)?;
    let iface = netif::resolve(ifspec)?;
    let ns_id = netns::current_inode()?;
    let ns_name = the_netns_name(netns_name);
    let mut nl = Rtnl::open().map_err(rtnl_err)?;
    let mut owners = Owners::new();
    let mut txn = Txn::begin(pins)?;

    let key = iface_key(ns_id, iface.index);
    let mut flags = 0;
    let mut recorded = false;
    if let Some(v) = txn.get::<_, types::attach_value>(name::ATTACHMENTS, &key)? {
        let cur = record(&key, &v);
        if !same_iface(&cur, ns_name, &iface.name) {
            // The interface it was made for is gone and the kernel gave its
            // index to this one: the record is replaced.
            log::info!("replacing the record of '{}' (ifindex {}), which is gone", cut(&cur.target), cur.ifindex);
            txn.delete(name::ATTACH_NAMES, &cur.name_key())?;
        } else if cur.kind != Some(kind) {
            bail!(
                "{} carries the {} programs; an interface carries one kind (detach {} {} first)",
                cut(&iface.name),
                cur.kind.map(Kind::as_str).unwrap_or("?"),
                cur.kind.map(Kind::as_str).unwrap_or("?"),
                cut(&iface.name)
            );
        } else {
            flags = cur.flags;
            recorded = true;
        }
    }
    // A record under this name for another index: that interface is gone.
    let nk = name_key(ns_id, &iface.name);
    if let Some(old) = txn.get::<_, u32>(name::ATTACH_NAMES, &nk)? {
        if old != iface.index {
            let ok = iface_key(ns_id, old);
            if let Some(v) = txn.get::<_, types::attach_value>(name::ATTACHMENTS, &ok)? {
                if record(&ok, &v).target == iface.name {
                    txn.delete(name::ATTACHMENTS, &ok)?;
                }
            }
        }
    }

    // What is at our slots: another pin root's programs, or the other
    // kind's (a record lost with a killed command, a renamed interface),
    // are refused too.
    let root = pins.root().display().to_string();
    // Someone else's XDP program where the guard goes: refused before
    // anything changes.
    let xdp_now = match &xdp_fd {
        Some((p, _)) => xdp_ours(&iface, p, &mut owners, &root, recorded)?,
        None => None,
    };
    let mut clsact = nl.clsact(iface.index).map_err(rtnl_err)?;
    let create = clsact.is_none();
    // A qdisc bound to shared blocks other than ours: their filters apply
    // to every interface bound to them, which are not ours to change.
    if let Some(c) = clsact {
        let ours = shared_blocks(&root);
        if (c.ingress_block != 0 || c.egress_block != 0) && (c.ingress_block, c.egress_block) != ours {
            bail!(
                "{}'s clsact qdisc is bound to shared blocks {} and {} of someone else; refusing to add filters to them",
                cut(&iface.name),
                c.ingress_block,
                c.egress_block
            );
        }
    }
    // Without a clsact qdisc there is no filter to look at.
    let mut present = if create { Vec::new() } else { filters_at_our_slots(&mut nl, iface.index, clsact)? };
    for ((ingress, priority), id) in &present {
        let Some(p) = owners.prog(*id) else { continue };
        let dir = if *ingress { "ingress" } else { "egress" };
        if let Some(other) = p.root.as_deref().filter(|r| *r != root) {
            bail!(
                "{} has {} at {dir} priority {priority} from the datapath of pin root {}; refusing to take it over",
                cut(&iface.name),
                cut(&p.info.name),
                cut(other)
            );
        }
        if let Some(other) = Kind::of_slot(*ingress, *priority, &p.info.name).filter(|k| *k != kind) {
            bail!(
                "{} carries the {} programs ({} at {dir} priority {priority}); an interface carries one kind \
                 (detach {} {} first)",
                cut(&iface.name),
                other.as_str(),
                p.info.name,
                other.as_str(),
                cut(&iface.name)
            );
        }
    }

    // A host veth without a clsact qdisc gets one bound to the shared
    // blocks; one that has a qdisc of someone else's keeps it, and our
    // filters go on it.
    let shared = create && kind == Kind::Host;
    if create {
        flags |= QDISC_CREATED;
    }
    if shared {
        flags |= SHARED_BLOCKS;
    }
    let mut prog_ids = Vec::new();
    for fd in &fds {
        prog_ids.push(crate::kernel::owner::prog_info(fd.as_fd())?.id);
    }
    // The record first: whatever happens next, it covers what is attached.
    txn.put(name::ATTACHMENTS, &key, &value(kind, ns_name, &iface.name, flags)?)?;
    txn.put(name::ATTACH_NAMES, &nk, &iface.index)?;

    let mut added: Vec<&TcSlot> = Vec::new();
    let mut created = false;
    let mut xdp_added = false;
    let result = (|| -> Result<()> {
        // The guard first: by the time dnat forwards, it is in front.
        if let Some((p, fd)) = &xdp_fd {
            let (mode, new) = xdp_attach(&iface, p, fd.as_raw_fd(), xdp_now)?;
            xdp_added = new;
            flags = (flags & !(XDP_NATIVE | XDP_GENERIC)) | mode.record_flag();
        }
        if shared {
            let (ingress, egress) = shared_blocks(&root);
            created = nl.add_clsact_shared(iface.index, ingress, egress).map_err(rtnl_err)?;
            clsact = Some(Clsact { ingress_block: ingress, egress_block: egress });
            // The blocks hold the filters of the pin root's other veths
            // already (then there is nothing to add), or nothing.
            let now = filters_at_our_slots(&mut nl, iface.index, clsact)?;
            if now.iter().any(|(_, id)| owners.prog(*id).is_none_or(|p| p.root.as_deref() != Some(root.as_str()))) {
                // Another pin root's blocks: a block of the veth's own.
                nl.del_clsact(iface.index).map_err(rtnl_err)?;
                created = nl.add_clsact(iface.index).map_err(rtnl_err)?;
                clsact = None;
                flags &= !SHARED_BLOCKS;
            } else {
                present = now;
            }
        } else if create {
            created = nl.add_clsact(iface.index).map_err(rtnl_err)?;
        }
        for ((slot, fd), id) in kind.slots().iter().zip(&fds).zip(&prog_ids) {
            let cur = present.iter().find(|((i, p), _)| *i == slot.ingress && *p == slot.priority);
            if flags & SHARED_BLOCKS != 0 && cur.is_some_and(|(_, cur)| cur == id) {
                // The shared block runs this very program.
                continue;
            }
            let at = FilterAt::of(iface.index, slot.ingress, clsact);
            nl.replace_bpf_filter(at, slot.priority, TC_HANDLE, fd.as_raw_fd(), slot.prog).map_err(rtnl_err)?;
            // A filter of a shared block serves every veth bound to it: on
            // failure the qdisc is unbound instead.
            if cur.is_none() && flags & SHARED_BLOCKS == 0 {
                added.push(slot);
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        for slot in added {
            let _ = nl.del_filter(FilterAt::Dev { index: iface.index, ingress: slot.ingress }, slot.priority, TC_HANDLE);
        }
        if created {
            let _ = nl.del_clsact(iface.index);
        }
        if let (true, Some((p, _))) = (xdp_added, &xdp_fd) {
            let _ = xdp_detach(&iface, p, &mut owners, &root, true);
        }
        // Dropping the transaction puts the records back.
        return Err(e);
    }
    if create && !created {
        // Someone else made the qdisc meanwhile: it is not ours to remove.
        flags &= !QDISC_CREATED;
    }
    // The guard's mode, now known.
    txn.put(name::ATTACHMENTS, &key, &value(kind, ns_name, &iface.name, flags)?)?;
    txn.commit()?;
    Ok(iface)
}

/// Removes a kind's filters from an interface — only filters that hold
/// the pin root's programs of that kind — and then the clsact qdisc if
/// datapathctl created it and nothing is left on it. True if a filter was
/// removed.
///
/// With `recorded` (a record says the pin root attached the kind here),
/// a program of the kind's name that belongs to no pin root is the pin
/// root's too: the release before this one made no `pin_root` map.
fn detach_filters(
    nl: &mut Rtnl,
    owners: &mut Owners,
    root: &str,
    kind: Kind,
    iface: &netif::Iface,
    flags: u32,
    recorded: bool,
) -> Result<bool> {
    let mut any = detach_tc_filters(nl, owners, root, kind, iface.index, flags, recorded)?;
    // The guard last: it protects until dnat is gone.
    if let Some(p) = xdp_prog(kind) {
        any |= xdp_detach(iface, p, owners, root, recorded)?;
    }
    Ok(any)
}

fn detach_tc_filters(
    nl: &mut Rtnl,
    owners: &mut Owners,
    root: &str,
    kind: Kind,
    index: u32,
    flags: u32,
    recorded: bool,
) -> Result<bool> {
    // Bound to the pin root's shared blocks: unbinding removes the veth's
    // filters; deleting them would take them from every veth.
    if flags & SHARED_BLOCKS != 0 {
        return nl.del_clsact(index).map_err(rtnl_err);
    }
    let clsact = nl.clsact(index).map_err(rtnl_err)?;
    if !recorded && kind == Kind::Host && clsact.is_some_and(|c| (c.ingress_block, c.egress_block) == shared_blocks(root)) {
        return nl.del_clsact(index).map_err(rtnl_err);
    }
    let mut ours = |ingress: bool, f: &crate::net::rtnl::BpfFilter| {
        f.handle == TC_HANDLE
            && kind.slots().iter().any(|s| {
                s.ingress == ingress
                    && s.priority == f.priority
                    && match owners.prog(f.prog_id) {
                        Some(p) => {
                            p.info.name == s.prog
                                && (p.root.as_deref() == Some(root) || (recorded && p.root.is_none()))
                        }
                        None => false,
                    }
            })
    };
    if flags & QDISC_CREATED != 0 {
        // Our own qdisc: one dump per direction, and if it holds nothing
        // but our filters, removing it removes them all in one request.
        let mut mine = Vec::new();
        let mut others = 0;
        for ingress in [true, false] {
            for f in nl.bpf_filters(FilterAt::of(index, ingress, clsact)).map_err(rtnl_err)? {
                if ours(ingress, &f) {
                    mine.push((ingress, f.priority));
                } else {
                    others += 1;
                }
            }
        }
        if others == 0 {
            nl.del_clsact(index).map_err(rtnl_err)?;
            return Ok(!mine.is_empty());
        }
        for (ingress, priority) in &mine {
            nl.del_filter(FilterAt::of(index, *ingress, clsact), *priority, TC_HANDLE).map_err(rtnl_err)?;
        }
        return Ok(!mine.is_empty());
    }
    let mut any = false;
    for slot in kind.slots() {
        let at = FilterAt::of(index, slot.ingress, clsact);
        if let Some(f) = nl.bpf_filter(at, slot.priority, TC_HANDLE).map_err(rtnl_err)? {
            if ours(slot.ingress, &f) {
                any |= nl.del_filter(at, slot.priority, TC_HANDLE).map_err(rtnl_err)?;
            }
        }
    }
    Ok(any)
}

/// `detach dnat|host <if>`: removes the kind's filters, and the clsact
/// qdisc if datapathctl created it and nothing else uses it. Detaching
/// what is not attached (also another kind), or from an interface that is
/// gone, succeeds and changes nothing in the kernel.
pub fn detach_tc(pins: &PinRoot, netns_name: Option<&str>, kind: Kind, ifspec: &str) -> Result<bool> {
    let _ns = NetnsGuard::enter(netns_name)?;
    let ns_id = netns::current_inode()?;
    let ns_name = the_netns_name(netns_name);
    let mut txn = if pins.is_loaded() { Some(Txn::begin(pins)?) } else { None };
    let iface = match netif::resolve(ifspec) {
        Ok(i) => i,
        Err(_) => {
            // The interface is gone and its filters with it: forget it.
            if let Some(txn) = txn.as_mut() {
                let nk = name_key(ns_id, ifspec);
                if let Some(ifindex) = txn.get::<_, u32>(name::ATTACH_NAMES, &nk)? {
                    let key = iface_key(ns_id, ifindex);
                    if let Some(v) = txn.get::<_, types::attach_value>(name::ATTACHMENTS, &key)? {
                        let r = record(&key, &v);
                        if r.kind == Some(kind) && r.target == ifspec {
                            txn.delete(name::ATTACHMENTS, &key)?;
                            txn.delete(name::ATTACH_NAMES, &nk)?;
                        }
                    }
                }
            }
            if let Some(txn) = txn {
                txn.commit()?;
            }
            return Ok(false);
        }
    };
    let key = iface_key(ns_id, iface.index);
    let rec = match txn.as_mut() {
        Some(t) => t.get::<_, types::attach_value>(name::ATTACHMENTS, &key)?.map(|v| record(&key, &v)),
        None => None,
    };
    let mut flags = 0;
    if let Some(r) = &rec {
        if same_iface(r, ns_name, &iface.name) {
            if r.kind != Some(kind) {
                // Not this kind: nothing of it is attached.
                return Ok(false);
            }
            flags = r.flags;
        }
    }
    let mut nl = Rtnl::open().map_err(rtnl_err)?;
    let mut owners = Owners::new();
    let root = pins.root().display().to_string();
    // The kernel first, the record last.
    let recorded = rec.as_ref().is_some_and(|r| same_iface(r, ns_name, &iface.name));
    let any = detach_filters(&mut nl, &mut owners, &root, kind, &iface, flags, recorded)?;
    if let (Some(txn), Some(r)) = (txn.as_mut(), &rec) {
        txn.delete(name::ATTACHMENTS, &key)?;
        let nk = r.name_key();
        if txn.get::<_, u32>(name::ATTACH_NAMES, &nk)? == Some(iface.index) {
            txn.delete(name::ATTACH_NAMES, &nk)?;
        }
    }
    if let Some(txn) = txn {
        txn.commit()?;
    }
    Ok(any)
}

/// Checks that every program of `kind` is attached to `ifspec` (in
/// `netns_name`) and recorded there; the error names the first one
/// missing.
pub fn check_tc(pins: &PinRoot, netns_name: Option<&str>, kind: Kind, ifspec: &str) -> Result<()> {
    let records = Records::open(pins)?;
    let mut want = Vec::new();
    for slot in kind.slots() {
        want.push((slot, prog_id(&pins.prog(slot.prog))?));
    }
    let _ns = NetnsGuard::enter(netns_name)?;
    let iface = netif::resolve(ifspec)?;
    let key = iface_key(netns::current_inode()?, iface.index);
    let rec = crate::maps::lookup::<_, types::attach_value>(&records.map, &key)?.map(|v| record(&key, &v));
    if !rec.is_some_and(|r| r.kind == Some(kind) && same_iface(&r, the_netns_name(netns_name), &iface.name)) {
        bail!("no {} attachment is recorded for {}", kind.as_str(), iface.name);
    }
    let mut nl = Rtnl::open().map_err(rtnl_err)?;
    let clsact = nl.clsact(iface.index).map_err(rtnl_err)?;
    for (slot, id) in want {
        let dir = if slot.ingress { "ingress" } else { "egress" };
        match nl.bpf_filter(FilterAt::of(iface.index, slot.ingress, clsact), slot.priority, TC_HANDLE).map_err(rtnl_err)? {
            Some(f) if f.prog_id == id => {}
            Some(f) => bail!(
                "{} {dir} priority {} runs program id {}, not {} (id {id})",
                iface.name,
                slot.priority,
                f.prog_id,
                slot.prog
            ),
            None => bail!("{} is not attached to {} {dir}", slot.prog, iface.name),
        }
    }
    Ok(())
}

/// The id of a pinned program.
fn prog_id(path: &Path) -> Result<u32> {
    let fd = obj_get(path)?;
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info is a zeroed bpf_prog_info of the size passed in len.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(-rc)).with_context(|| format!("reading {}", path.display()));
    }
    Ok(info.id)
}

/// `attach getsockopt [<path>]` and `attach host-access [<path>]` (every
/// cgroup kind): the kind's programs on the cgroup, so they stay attached
/// without any pin. Attaching again replaces them in place.
///
/// Host access rewrites the sockets of one network namespace, the host's:
/// the one datapathctl runs in, or `netns` (`-n`). Its cookie is written to
/// `host_cfg` in the same transaction as the record, before any program is
/// attached. Other kinds ignore `netns`: a cgroup belongs to no namespace.
pub fn attach_cgroup(pins: &PinRoot, kind: Kind, path: Option<&Path>, netns: Option<&str>) -> Result<PathBuf> {
    pins.require_loaded()?;
    let cg_path = match path {
        Some(p) => p.to_path_buf(),
        None => cgroup2_root()?,
    };
    let cg = Cgroup::open(&cg_path)?;
    let mut progs = Vec::new();
    for hook in kind.hooks() {
        progs.push(obj_get(&pins.prog(hook.prog))?);
    }
    let host_cookie = match kind {
        Kind::HostAccess => Some(netns::cookie(netns)?),
        _ => None,
    };
    let root = pins.root().display().to_string();
    let mut owners = Owners::new();
    let mut txn = Txn::begin(pins)?;
    let target = cg_path.to_string_lossy().into_owned();
    txn.put(name::ATTACHMENTS, &cgroup_key(kind, cg.id), &value(kind, "", &target, 0)?)?;
    if let Some(cookie) = host_cookie {
        let mut cfg: types::host_config = txn.get(name::HOST_CFG, &0u32)?.unwrap_or_default();
        cfg.netns_cookie = cookie;
        txn.put(name::HOST_CFG, &0u32, &cfg)?;
    }
    let mut added = Vec::new();
    let result = (|| -> Result<()> {
        for (hook, prog) in kind.hooks().iter().zip(&progs) {
            if cg.install(hook, prog.as_fd(), &mut owners, &root)? {
                added.push(hook);
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        for hook in added {
            let _ = cg.remove(hook, &mut owners, &root);
        }
        return Err(e);
    }
    txn.commit()?;
    Ok(cg_path)
}

/// `detach getsockopt [<path>]`, `detach host-access [<path>]`: detaches
/// exactly the pin root's programs of the kind from the cgroup; others'
/// programs at the same hooks stay. `host_cfg` keeps the host's cookie (other
/// cgroups may still have host access).
pub fn detach_cgroup(pins: &PinRoot, kind: Kind, path: Option<&Path>) -> Result<bool> {
    let cg_path = match path {
        Some(p) => p.to_path_buf(),
        None => cgroup2_root()?,
    };
    let cg = Cgroup::open(&cg_path)?;
    let root = pins.root().display().to_string();
    let mut owners = Owners::new();
    let mut any = false;
    for hook in kind.hooks().iter().rev() {
        any |= cg.remove(hook, &mut owners, &root)?;
    }
    any |= remove_legacy_link(pins, kind, cg.id)?;
    if pins.is_loaded() {
        let mut txn = Txn::begin(pins)?;
        txn.delete(name::ATTACHMENTS, &cgroup_key(kind, cg.id))?;
        txn.commit()?;
    }
    Ok(any)
}

/// The bpf_link pin the release before this one made for a cgroup
/// (`links/getsockopt-<cgroup id>`): removing it detaches that link.
fn remove_legacy_link(pins: &PinRoot, kind: Kind, cgroup_id: u64) -> Result<bool> {
    let p = pins.link(&format!("{}-{cgroup_id}", kind.as_str()));
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

/// A namespace's interfaces, by index, for checking many records at once.
struct NsView {
    _guard: NetnsGuard,
    nl: Rtnl,
    names: BTreeMap<u32, String>,
}

/// Enters the namespace of a group of records and reads its interfaces;
/// None if the namespace is gone or is another one now.
fn enter_ns(netns: &str, id: u64) -> Result<Option<NsView>> {
    let ns = if netns.is_empty() { None } else { Some(netns) };
    let Ok(guard) = NetnsGuard::enter(ns) else { return Ok(None) };
    if netns::current_inode()? != id {
        return Ok(None);
    }
    let mut nl = Rtnl::open().map_err(rtnl_err)?;
    let names = nl.links().map_err(rtnl_err)?.into_iter().map(|l| (l.index, l.name)).collect();
    Ok(Some(NsView { _guard: guard, nl, names }))
}

/// Groups interface records by namespace, so each namespace is entered and
/// read once.
fn by_netns(records: Vec<Record>) -> (BTreeMap<(String, u64), Vec<Record>>, Vec<Record>) {
    let mut ifaces: BTreeMap<(String, u64), Vec<Record>> = BTreeMap::new();
    let mut others = Vec::new();
    for r in records {
        if r.is_iface() {
            ifaces.entry((r.netns.clone(), r.id)).or_default().push(r);
        } else {
            others.push(r);
        }
    }
    (ifaces, others)
}

/// During `load`: points every recorded attachment at the new programs,
/// in place. Records whose interface, namespace, cgroup or qdisc is gone
/// are dropped. Linear in the records: one pass, each namespace entered
/// once, one netlink request per filter. Returns how many attachments were
/// updated.
pub fn replace_all(dp: &Datapath<'_>, pins: &PinRoot) -> Result<usize> {
    let records = Records::of(dp)?;
    let root = pins.root().display().to_string();
    let mut owners = Owners::new();
    let mut updated = 0;
    let (ifaces, others) = by_netns(records.list()?);
    for ((netns, id), recs) in ifaces {
        let Some(mut view) = enter_ns(&netns, id)? else {
            for r in &recs {
                records.remove(r)?;
            }
            continue;
        };
        // The shared blocks' filters are replaced once, through the first
        // veth bound to them.
        let mut shared_done = false;
        for r in recs {
            let Some(kind) = r.kind.filter(|k| k.on_interface()) else { continue };
            if view.names.get(&r.ifindex) != Some(&r.target) {
                records.remove(&r)?;
                continue;
            }
            if r.flags & SHARED_BLOCKS != 0 && shared_done {
                updated += 1;
                continue;
            }
            // The guard first, as attach puts it: in place in the mode it
            // runs in, or again if it went missing. Someone else's XDP
            // program there now is theirs.
            if let Some(p) = xdp_prog(kind) {
                let iface = netif::Iface { index: r.ifindex, name: r.target.clone() };
                match xdp_ours(&iface, p, &mut owners, &root, true) {
                    Ok(cur) => {
                        let (mode, _) = xdp_attach(&iface, p, dp.program(p)?.as_fd().as_raw_fd(), cur)?;
                        if r.xdp != Some(mode) {
                            let flags = (r.flags & !(XDP_NATIVE | XDP_GENERIC)) | mode.record_flag();
                            let (k, v) = iface_entry(r.id, r.ifindex, &r.netns, &r.target, kind, flags)?;
                            records.put(&k, &v)?;
                        }
                    }
                    Err(e) => log::warn!("{e:#}"),
                }
            }
            let mut gone = false;
            let blocks = shared_blocks(&root);
            for slot in kind.slots() {
                let fd = dp.program(slot.prog)?.as_fd().as_raw_fd();
                let at = if r.flags & SHARED_BLOCKS != 0 {
                    FilterAt::Block(if slot.ingress { blocks.0 } else { blocks.1 })
                } else {
                    FilterAt::Dev { index: r.ifindex, ingress: slot.ingress }
                };
                match view.nl.replace_bpf_filter(at, slot.priority, TC_HANDLE, fd, slot.prog) {
                    Ok(()) => {}
                    // No clsact qdisc (removed by hand, or by a detach
                    // that was killed before it removed the record), or
                    // one bound to shared blocks since, which are not ours.
                    Err(e) if matches!(e.kind(), crate::net::rtnl::ErrorKind::NotFound | crate::net::rtnl::ErrorKind::Invalid)
                        || e.errno() == Some(nix::libc::EOPNOTSUPP) => {
                        gone = true;
                        break;
                    }
                    Err(e) => return Err(rtnl_err(e)),
                }
            }
            if gone {
                records.remove(&r)?;
            } else {
                updated += 1;
                shared_done |= r.flags & SHARED_BLOCKS != 0;
            }
        }
    }
    for r in others {
        let Some(kind) = r.kind else { continue };
        let cg = match Cgroup::open(Path::new(&r.target)) {
            Ok(cg) if cg.id == r.id => cg,
            _ => {
                records.remove(&r)?;
                continue;
            }
        };
        for hook in kind.hooks() {
            let prog = dp.program(hook.prog)?;
            cg.install(hook, prog.as_fd(), &mut owners, &root)?;
        }
        // After the new programs are in: the link of the release before.
        remove_legacy_link(pins, kind, r.id)?;
        updated += 1;
    }
    records.reindex()?;
    Ok(updated)
}

/// During `unload`: removes every recorded attachment, one pass.
pub fn detach_all(pins: &PinRoot, records: &Records) -> Result<()> {
    let root = pins.root().display().to_string();
    let mut owners = Owners::new();
    let (ifaces, others) = by_netns(records.list()?);
    for ((netns, id), recs) in ifaces {
        let Some(mut view) = enter_ns(&netns, id)? else { continue };
        // Newest interface first: the kernel keeps every clsact qdisc's
        // block on one list, newest first, and walks it to remove one, so
        // this order keeps unload linear.
        let mut recs = recs;
        recs.sort_by(|a, b| b.ifindex.cmp(&a.ifindex));
        for r in recs {
            let Some(kind) = r.kind.filter(|k| k.on_interface()) else { continue };
            if view.names.get(&r.ifindex) != Some(&r.target) {
                continue;
            }
            let iface = netif::Iface { index: r.ifindex, name: r.target.clone() };
            detach_filters(&mut view.nl, &mut owners, &root, kind, &iface, r.flags, true)?;
        }
    }
    for r in others {
        let Some(kind) = r.kind else { continue };
        if let Ok(cg) = Cgroup::open(Path::new(&r.target)) {
            if cg.id == r.id {
                for hook in kind.hooks().iter().rev() {
                    cg.remove(hook, &mut owners, &root)?;
                }
            }
        }
        remove_legacy_link(pins, kind, r.id)?;
    }
    Ok(())
}

/// Decodes a record key and value read elsewhere (the migration).
pub(crate) fn decode(k: &[u8], v: &[u8]) -> Result<Record> {
    Ok(record(&from_bytes(k)?, &from_bytes(v)?))
}

/// The key and value of an interface's record.
pub(crate) fn iface_entry(
    ns_id: u64,
    ifindex: u32,
    netns: &str,
    ifname: &str,
    kind: Kind,
    flags: u32,
) -> Result<(types::attach_key, types::attach_value)> {
    Ok((iface_key(ns_id, ifindex), value(kind, netns, ifname, flags)?))
}

/// The key and value of a cgroup's record.
pub(crate) fn cgroup_entry(cgroup_id: u64, path: &str, kind: Kind) -> Result<(types::attach_key, types::attach_value)> {
    Ok((cgroup_key(kind, cgroup_id), value(kind, "", path, 0)?))
}

/// Writes records that the map does not hold yet (attachments found on the
/// kernel side after a lost pin root; the records of the release before).
pub(crate) fn put_missing(records: &Records, entries: &[(types::attach_key, types::attach_value)]) -> Result<()> {
    for (k, v) in entries {
        if crate::maps::lookup::<_, types::attach_value>(&records.map, k)?.is_none() {
            records.put(k, v)?;
        }
    }
    Ok(())
}

/// Removes an XDP program from an interface (in the calling thread's
/// namespace), only if it is still the one with this id.
pub(crate) fn xdp_remove(ifindex: u32, prog_id: u32, generic: bool) -> Result<()> {
    let Ok(old) = crate::kernel::owner::prog_fd(prog_id) else { return Ok(()) };
    let opts = libbpf_sys::bpf_xdp_attach_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_xdp_attach_opts>() as _,
        old_prog_fd: old.as_raw_fd(),
        ..Default::default()
    };
    let mode = if generic { libbpf_sys::XDP_FLAGS_SKB_MODE } else { libbpf_sys::XDP_FLAGS_DRV_MODE };
    // SAFETY: opts is a valid, sized bpf_xdp_attach_opts; old is open.
    let rc = unsafe { libbpf_sys::bpf_xdp_detach(ifindex as i32, mode | libbpf_sys::XDP_FLAGS_REPLACE, &opts) };
    match rc {
        0 => Ok(()),
        // Replaced or removed meanwhile: not ours any more.
        rc if [nix::libc::EEXIST, nix::libc::ENOENT, nix::libc::ENODEV].contains(&-rc) => Ok(()),
        rc => Err(std::io::Error::from_raw_os_error(-rc)).with_context(|| format!("detaching XDP from interface {ifindex}")),
    }
}
