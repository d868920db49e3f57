//! Changes that write more than one map entry: a [`Txn`] holds the pin
//! root's maps lock for its whole life, so no other datapathctl sees or
//! makes a change in between, and remembers what each write replaced.
//! `commit` keeps the writes; a transaction dropped without `commit` (an
//! error, a panic) puts back, newest first, what it wrote over.
//!
//! Every multi-entry write goes through here and nowhere else, so making
//! the transaction survive a crash of the process (a journal of the old
//! values behind the same `put`/`delete`/`commit`) changes this file only.

use std::collections::HashMap;
use std::fs::File;

use anyhow::{Context, Result};
use libbpf_rs::{ErrorKind, MapCore, MapFlags, MapHandle, MapType};

use crate::abi::bytes_of;
use crate::kernel::pins::PinRoot;

/// What a write replaced, to put back on rollback.
enum Undo {
    /// A plain map's entry: its old value, or None if there was none.
    Entry { map: &'static str, key: Vec<u8>, old: Option<Vec<u8>> },
    /// A per-CPU map's entry: its old value on every CPU.
    PerCpu { map: &'static str, key: Vec<u8>, old: Vec<Vec<u8>> },
}

/// A transaction over the pinned maps (see the module's doc).
pub struct Txn {
    pins: PinRoot,
    handles: HashMap<&'static str, MapHandle>,
    undo: Vec<Undo>,
    committed: bool,
    _lock: File,
}

fn is_percpu(map: &MapHandle) -> bool {
    matches!(map.map_type(), MapType::PercpuArray | MapType::PercpuHash | MapType::LruPercpuHash)
}

/// The error for a write the kernel refused; a full map names its
/// capacity.
pub(crate) fn write_error(e: libbpf_rs::Error, map: &MapHandle, name: &str) -> anyhow::Error {
    if e.kind() == ErrorKind::TooBig {
        anyhow::Error::new(super::Full { map: name.to_string(), capacity: map.max_entries() })
    } else {
        anyhow::Error::new(e).context(format!("updating map {name}"))
    }
}

impl Txn {
    /// Starts a transaction: takes the maps lock (waiting for any other
    /// holder) of a loaded pin root.
    pub fn begin(pins: &PinRoot) -> Result<Txn> {
        pins.require_loaded()?;
        let lock = pins.lock_maps()?;
        Ok(Txn { pins: pins.clone(), handles: HashMap::new(), undo: Vec::new(), committed: false, _lock: lock })
    }

    /// The pinned map `name`, opened once per transaction.
    pub fn map(&mut self, name: &'static str) -> Result<&MapHandle> {
        if !self.handles.contains_key(name) {
            let h = super::open(&self.pins, name)?;
            self.handles.insert(name, h);
        }
        Ok(&self.handles[name])
    }

    /// Reads one entry (of a plain map).
    pub fn get<K: plain::Plain, V: plain::Plain + Default>(&mut self, map: &'static str, key: &K) -> Result<Option<V>> {
        super::lookup(self.map(map)?, key)
    }

    /// Every entry of a hash map.
    pub fn entries<K: plain::Plain + Default, V: plain::Plain + Default>(
        &mut self,
        map: &'static str,
    ) -> Result<Vec<(K, V)>> {
        super::entries(self.map(map)?)
    }

    /// Writes one entry, creating or replacing it. On a per-CPU map the
    /// value is written for every CPU.
    pub fn put<K: plain::Plain, V: plain::Plain>(&mut self, map: &'static str, key: &K, value: &V) -> Result<()> {
        let h = self.map(map)?;
        let k = bytes_of(key).to_vec();
        if is_percpu(h) {
            let old = h
                .lookup_percpu(&k, MapFlags::ANY)
                .with_context(|| format!("reading map {map}"))?
                .with_context(|| format!("map {map} has no entry {k:02x?}"))?;
            let new = vec![bytes_of(value).to_vec(); old.len()];
            h.update_percpu(&k, &new, MapFlags::ANY).map_err(|e| write_error(e, h, map))?;
            self.undo.push(Undo::PerCpu { map, key: k, old });
        } else {
            let old = h.lookup(&k, MapFlags::ANY).with_context(|| format!("reading map {map}"))?;
            h.update(&k, bytes_of(value), MapFlags::ANY).map_err(|e| write_error(e, h, map))?;
            self.undo.push(Undo::Entry { map, key: k, old });
        }
        Ok(())
    }

    /// Deletes one entry of a hash map; false if there was none.
    pub fn delete<K: plain::Plain>(&mut self, map: &'static str, key: &K) -> Result<bool> {
        let h = self.map(map)?;
        let k = bytes_of(key).to_vec();
        let Some(old) = h.lookup(&k, MapFlags::ANY).with_context(|| format!("reading map {map}"))? else {
            return Ok(false);
        };
        match h.delete(&k) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("deleting from map {map}")),
        }
        self.undo.push(Undo::Entry { map, key: k, old: Some(old) });
        Ok(true)
    }

    /// Keeps every write of the transaction.
    pub fn commit(mut self) -> Result<()> {
        self.committed = true;
        self.undo.clear();
        Ok(())
    }

    /// Puts back what the transaction wrote over, newest first, as far as
    /// the kernel lets it; returns the first failure.
    fn rollback(&mut self) -> Result<()> {
        let mut first = None;
        while let Some(u) = self.undo.pop() {
            let r = match u {
                Undo::Entry { map, key, old } => {
                    let h = &self.handles[map];
                    match old {
                        Some(v) => h.update(&key, &v, MapFlags::ANY).with_context(|| format!("restoring map {map}")),
                        None => match h.delete(&key) {
                            Err(e) if e.kind() != ErrorKind::NotFound => {
                                Err(e).with_context(|| format!("restoring map {map}"))
                            }
                            _ => Ok(()),
                        },
                    }
                }
                Undo::PerCpu { map, key, old } => self.handles[map]
                    .update_percpu(&key, &old, MapFlags::ANY)
                    .with_context(|| format!("restoring map {map}")),
            };
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = self.rollback() {
                log::error!("rolling back an unfinished change: {e:#}");
            }
        }
    }
}
