//! Reading whole maps in few system calls (`BPF_MAP_LOOKUP_BATCH`), for
//! what reads every entry at once: the counters of 65,536 published ports
//! for `metrics` and `map dnat list --stats`, and the fill levels of maps
//! with hundreds of thousands of entries. One entry at a time costs two
//! system calls per entry (next key, lookup); a batch of 4,096 costs one.

use std::os::fd::{AsFd, AsRawFd};

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapHandle, MapType};

use crate::abi::{from_bytes, types};

use super::PortCounters;

const BATCH: u32 = 4096;

/// Calls `f(key, value)` for every entry of `map` (a hash or array map),
/// batch by batch. For a per-CPU map, `value` holds one 8-byte-aligned
/// value per possible CPU. Returns `Ok(false)` if the kernel has no batch
/// operations for this map type (the caller falls back to walking keys).
fn each_batch(map: &MapHandle, mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<bool> {
    let percpu = matches!(
        map.map_type(),
        MapType::PercpuArray | MapType::PercpuHash | MapType::LruPercpuHash
    );
    let ksize = map.key_size() as usize;
    let vsize = if percpu {
        let cpus = libbpf_rs::num_possible_cpus().context("counting possible CPUs")?;
        (map.value_size() as usize).div_ceil(8) * 8 * cpus
    } else {
        map.value_size() as usize
    };
    // The batch cursor: for hash maps a bucket index, for arrays an index;
    // 4 bytes either way, but sized generously.
    let mut in_batch = [0u8; 64];
    let mut out_batch = [0u8; 64];
    let mut first = true;
    let mut count = BATCH;
    let opts = libbpf_sys::bpf_map_batch_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
        ..Default::default()
    };
    let fd = map.as_fd().as_raw_fd();
    loop {
        let mut keys = vec![0u8; ksize * count as usize];
        let mut vals = vec![0u8; vsize * count as usize];
        let mut n = count;
        // SAFETY: keys and vals hold `count` keys and values of the sizes
        // the kernel writes; the cursors are larger than the map's.
        let ret = unsafe {
            libbpf_sys::bpf_map_lookup_batch(
                fd,
                if first { std::ptr::null_mut() } else { in_batch.as_mut_ptr().cast() },
                out_batch.as_mut_ptr().cast(),
                keys.as_mut_ptr().cast(),
                vals.as_mut_ptr().cast(),
                &mut n,
                &opts,
            )
        };
        let errno = if ret < 0 { -ret } else { 0 };
        match errno {
            0 | libc_errno::ENOENT => {
                for i in 0..n as usize {
                    f(&keys[i * ksize..(i + 1) * ksize], &vals[i * vsize..(i + 1) * vsize])?;
                }
                if errno == libc_errno::ENOENT {
                    return Ok(true);
                }
                in_batch = out_batch;
                first = false;
            }
            // A hash bucket holds more entries than the batch: a larger one.
            libc_errno::ENOSPC if count < (1 << 20) => count *= 4,
            libc_errno::EINVAL | libc_errno::ENOTSUP | libc_errno::EOPNOTSUPP if first => return Ok(false),
            e => {
                return Err(std::io::Error::from_raw_os_error(e))
                    .with_context(|| format!("reading map {}", map.name().to_string_lossy()))
            }
        }
    }
}

mod libc_errno {
    pub const ENOENT: i32 = nix::libc::ENOENT;
    pub const ENOSPC: i32 = nix::libc::ENOSPC;
    pub const EINVAL: i32 = nix::libc::EINVAL;
    pub const EOPNOTSUPP: i32 = nix::libc::EOPNOTSUPP;
    /// The kernel's own "not supported" (524), which batch operations of
    /// map types without them return.
    pub const ENOTSUP: i32 = 524;
}

/// The counters of every slot of `port_stats`, summed over CPUs, indexed
/// by slot.
pub fn port_counters_all(map: &MapHandle) -> Result<Vec<PortCounters>> {
    let n = map.max_entries() as usize;
    let mut out = vec![PortCounters::default(); n];
    let stride = std::mem::size_of::<types::port_counter>().div_ceil(8) * 8;
    let done = each_batch(map, |k, v| {
        let slot = u32::from_ne_bytes(k.try_into().context("port_stats key size")?) as usize;
        let Some(sum) = out.get_mut(slot) else { bail!("port_stats slot {slot} beyond its size") };
        for cpu in v.chunks_exact(stride) {
            let c: types::port_counter = from_bytes(&cpu[..std::mem::size_of::<types::port_counter>()])?;
            sum.pkts_in += c.pkts_in;
            sum.bytes_in += c.bytes_in;
            sum.pkts_out += c.pkts_out;
            sum.bytes_out += c.bytes_out;
            sum.conns += c.conns;
        }
        Ok(())
    })?;
    if !done {
        for (slot, sum) in out.iter_mut().enumerate() {
            *sum = super::port_counters(map, slot as u32)?;
        }
    }
    Ok(out)
}

/// How many entries `map` holds: arrays are always full; a ring buffer has
/// no entries (its size is in bytes); hash maps and tries are counted.
pub fn count_entries(map: &MapHandle) -> Result<usize> {
    match map.map_type() {
        MapType::Array | MapType::PercpuArray => Ok(map.max_entries() as usize),
        MapType::RingBuf => Ok(0),
        _ => {
            let mut n = 0usize;
            if each_batch(map, |_, _| {
                n += 1;
                Ok(())
            })? {
                Ok(n)
            } else {
                Ok(super::count(map))
            }
        }
    }
}
