//! Which pin root a program belongs to, read from the kernel alone.
//!
//! Every program of a pin root holds every map of it, `pin_root` among
//! them, and `pin_root` holds the path of the pin root the maps were made
//! for. So an attached program says whose it is even after its pins are
//! gone (`rm -rf` of the pin root, bpffs unmounted): its map ids lead to
//! `pin_root`, and that to the path. Two pin roots (a test's and the
//! host's, or two tests') never take each other's programs.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapHandle};

use crate::abi::types;
use crate::maps::name;

/// What the kernel says about a program.
#[derive(Clone, Debug)]
pub struct ProgInfo {
    pub id: u32,
    pub name: String,
    pub map_ids: Vec<u32>,
    /// The program's BTF (0: none).
    pub btf_id: u32,
}

fn errno(rc: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(-rc)
}

/// Opens a program by id.
pub fn prog_fd(id: u32) -> Result<OwnedFd> {
    // SAFETY: plain system call wrapper; a negative return is an error.
    let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("opening program id {id}"));
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A program's id, name, maps and BTF.
pub fn prog_info(fd: BorrowedFd<'_>) -> Result<ProgInfo> {
    let read = |info: &mut libbpf_sys::bpf_prog_info| -> Result<()> {
        let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
        // SAFETY: info is a bpf_prog_info of the size passed in len; any
        // pointer in it names a buffer of the count it gives.
        let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), info, &mut len) };
        if rc != 0 {
            return Err(errno(rc)).context("reading a program's info");
        }
        Ok(())
    };
    let mut info = libbpf_sys::bpf_prog_info::default();
    read(&mut info)?;
    let mut map_ids = vec![0u32; info.nr_map_ids as usize];
    if !map_ids.is_empty() {
        let n = map_ids.len() as u32;
        info = libbpf_sys::bpf_prog_info { nr_map_ids: n, map_ids: map_ids.as_mut_ptr() as u64, ..Default::default() };
        read(&mut info)?;
        map_ids.truncate(info.nr_map_ids.min(n) as usize);
    }
    let name: Vec<u8> = info.name.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    Ok(ProgInfo { id: info.id, name: String::from_utf8_lossy(&name).into_owned(), map_ids, btf_id: info.btf_id })
}

/// Opens a map by id.
pub fn map_by_id(id: u32) -> Result<MapHandle> {
    MapHandle::from_map_id(id).with_context(|| format!("opening map id {id}"))
}

/// The pin root a `pin_root` map names.
pub fn pin_root_of(map: &MapHandle) -> Result<String> {
    let v: types::pin_root_value = crate::maps::lookup(map, &0u32)?.unwrap_or_default();
    Ok(path_of(&v))
}

/// A program as the kernel describes it, and the pin root it belongs to
/// (None: it holds no `pin_root` map; not a pin root's program).
#[derive(Clone, Debug)]
pub struct Prog {
    pub info: ProgInfo,
    pub root: Option<String>,
}

/// Reads and remembers which pin root programs belong to, so a scan over
/// thousands of interfaces (whose filters share a handful of programs)
/// asks the kernel once per program.
#[derive(Default)]
pub struct Owners {
    progs: HashMap<u32, Option<Prog>>,
    pin_root_maps: HashMap<u32, Option<String>>,
}

impl Owners {
    pub fn new() -> Self {
        Self::default()
    }

    /// The program with this id; None if it is gone.
    pub fn prog(&mut self, id: u32) -> Option<&Prog> {
        if !self.progs.contains_key(&id) {
            let found = self.read_prog(id).unwrap_or_else(|e| {
                log::debug!("program id {id}: {e:#}");
                None
            });
            self.progs.insert(id, found);
        }
        self.progs[&id].as_ref()
    }

    /// Whether the program with this id is pin root `root`'s program
    /// `name`.
    pub fn is(&mut self, id: u32, root: &str, name: &str) -> bool {
        matches!(self.prog(id), Some(p) if p.root.as_deref() == Some(root) && p.info.name == name)
    }

    fn read_prog(&mut self, id: u32) -> Result<Option<Prog>> {
        let fd = prog_fd(id)?;
        let info = prog_info(fd.as_fd())?;
        let root = self.owner(&info)?;
        Ok(Some(Prog { info, root }))
    }

    fn owner(&mut self, info: &ProgInfo) -> Result<Option<String>> {
        for &map_id in &info.map_ids {
            if let Some(known) = self.pin_root_maps.get(&map_id) {
                if let Some(root) = known {
                    return Ok(Some(root.clone()));
                }
                continue;
            }
            let Ok(map) = map_by_id(map_id) else { continue };
            let root = if map.name().to_str() == Some(name::PIN_ROOT) { Some(pin_root_of(&map)?) } else { None };
            self.pin_root_maps.insert(map_id, root.clone());
            if root.is_some() {
                return Ok(root);
            }
        }
        Ok(None)
    }
}

/// The pin root a `pin_root` value names.
pub fn path_of(v: &types::pin_root_value) -> String {
    let b: Vec<u8> = v.path.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    String::from_utf8_lossy(&b).into_owned()
}
