//! `datapathctl trace`: switches event emission on with the filters in
//! `trace_cfg`, reads the `trace_events` ring buffer, reports events lost
//! to a full ring (`trace_lost`, per CPU), and switches emission off again
//! however it ends. A trace killed with SIGKILL cannot: `trace_cfg` names
//! its pid and start time, and every `datapathctl` command first turns
//! emission off when that process is gone ([`reap`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use serde::Serialize;

use crate::abi::{bytes_of, from_bytes, split_stat_name, stat_names, types};
use crate::kernel::pins::PinRoot;
use crate::maps::{self, name};

/// What a trace shows; everything is checked in the kernel.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// A port, before or after a rewrite, source or destination.
    pub port: Option<u16>,
    /// An address, before or after a rewrite, source or destination.
    pub addr: Option<IpAddr>,
    /// The interface the packet is seen on.
    pub ifindex: Option<u32>,
    /// Reasons (`enum dp_stat` values); empty: every reason.
    pub reasons: Vec<u32>,
    /// Only verdicts that drop the packet.
    pub drops: bool,
}

/// Reasons by name: `PROGRAM/REASON` (as `stats` shows them) or `REASON`
/// alone for that reason of every program that has it.
pub fn parse_reasons(names: &[String]) -> Result<Vec<u32>> {
    let all = stat_names()?;
    let split: Vec<(String, String)> = all.iter().map(|n| split_stat_name(n)).collect();
    let mut out = Vec::new();
    for want in names {
        let w = want.to_ascii_lowercase();
        let hits: Vec<u32> = split
            .iter()
            .enumerate()
            .filter(|(_, (p, r))| match w.split_once('/') {
                Some((wp, wr)) => p == wp && r == wr,
                None => *r == w,
            })
            .map(|(i, _)| i as u32)
            .collect();
        if hits.is_empty() {
            bail!(
                "unknown reason '{}': expected PROGRAM/REASON or REASON as `datapathctl stats` shows them",
                crate::net::rtnl::cut(want)
            );
        }
        out.extend(hits);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Start time of process `pid` (clock ticks after boot, /proc/PID/stat
/// field 22), or None if there is no such process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are
    // counted after its closing one.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn read_cfg(map: &MapHandle) -> Result<types::trace_config> {
    Ok(maps::lookup::<u32, types::trace_config>(map, &0)?.unwrap_or_default())
}

fn write_cfg(map: &MapHandle, cfg: &types::trace_config) -> Result<()> {
    map.update(bytes_of(&0u32), bytes_of(cfg), MapFlags::ANY).context("writing map trace_cfg")
}

/// Whether the trace that switched emission on is still running.
fn owner_alive(cfg: &types::trace_config) -> bool {
    cfg.owner_pid != 0 && start_time(cfg.owner_pid) == Some(cfg.owner_start)
}

/// Turns emission off if the trace that turned it on is gone (killed with
/// SIGKILL). Every command calls it first; true if it turned it off.
pub fn reap(pins: &PinRoot) -> Result<bool> {
    if !pins.map(name::TRACE_CFG).exists() {
        return Ok(false);
    }
    let map = maps::open(pins, name::TRACE_CFG)?;
    let cfg = read_cfg(&map)?;
    if cfg.on == 0 || owner_alive(&cfg) {
        return Ok(false);
    }
    write_cfg(&map, &types::trace_config::default())?;
    log::info!("turned off the trace emission of process {}, which is gone", cfg.owner_pid);
    Ok(true)
}

/// Whether events are being emitted now (tests, status).
pub fn emitting(pins: &PinRoot) -> Result<bool> {
    Ok(read_cfg(&maps::open(pins, name::TRACE_CFG)?)?.on != 0)
}

/// Events lost to a full ring buffer since the maps were made, summed
/// over CPUs.
pub fn lost(map: &MapHandle) -> Result<u64> {
    let per_cpu = map.lookup_percpu(bytes_of(&0u32), MapFlags::ANY).context("reading map trace_lost")?.unwrap_or_default();
    let mut n = 0u64;
    for cpu in per_cpu {
        n += from_bytes::<u64>(&cpu[..8])?;
    }
    Ok(n)
}

/// Addresses and ports of an event, before or after the rewrites.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tuple {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

impl std::fmt::Display for Tuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ep = |a: IpAddr, p: u16| match a {
            IpAddr::V4(a) => format!("{a}:{p}"),
            IpAddr::V6(a) => format!("[{a}]:{p}"),
        };
        write!(f, "{} > {}", ep(self.src, self.sport), ep(self.dst, self.dport))
    }
}

fn tuple(t: &types::dp_tuple) -> Option<Tuple> {
    let addr = |w: &[u32; 4]| -> Option<IpAddr> {
        match t.family {
            2 => Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(w[0])))),
            10 => {
                let mut b = [0u8; 16];
                for (i, x) in w.iter().enumerate() {
                    b[i * 4..i * 4 + 4].copy_from_slice(&x.to_ne_bytes());
                }
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            }
            _ => None,
        }
    };
    Some(Tuple {
        src: addr(&t.saddr)?,
        sport: u16::from_be(t.sport),
        dst: addr(&t.daddr)?,
        dport: u16::from_be(t.dport),
    })
}

/// One decision of a program.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Wall-clock time, UTC (RFC 3339, microseconds).
    pub time: String,
    /// The kernel's monotonic clock (bpf_ktime_get_ns).
    pub ktime_ns: u64,
    pub program: String,
    pub reason: String,
    /// The verdict by name (`redirect`, `next`, `drop`, `pass`, …).
    pub verdict: String,
    /// The program's return value.
    pub code: i32,
    pub drop: bool,
    /// 0 at cgroup hooks.
    pub ifindex: u32,
    pub iface: Option<String>,
    /// Bytes counted (the frame, at TC and XDP).
    pub len: u32,
    pub proto: Option<String>,
    /// None for a packet without an IP header.
    pub before: Option<Tuple>,
    pub after: Option<Tuple>,
}

fn verdict_name(hook: u8, v: i32) -> String {
    use types::dp_trace_hook as H;
    let s = match (hook as u32, v) {
        (h, -1) if h == H::DP_TRACE_TC.0 => "next",
        (h, 0) if h == H::DP_TRACE_TC.0 => "ok",
        (h, 2) if h == H::DP_TRACE_TC.0 => "drop",
        (h, 7) if h == H::DP_TRACE_TC.0 => "redirect",
        (h, 0) if h == H::DP_TRACE_XDP.0 => "aborted",
        (h, 1) if h == H::DP_TRACE_XDP.0 => "drop",
        (h, 2) if h == H::DP_TRACE_XDP.0 => "pass",
        (h, 3) if h == H::DP_TRACE_XDP.0 => "tx",
        (h, 4) if h == H::DP_TRACE_XDP.0 => "redirect",
        (h, 1) if h == H::DP_TRACE_CGROUP.0 => "allow",
        (h, 0) if h == H::DP_TRACE_CGROUP.0 => "reject",
        _ => return v.to_string(),
    };
    s.to_string()
}

fn proto_name(family: u8, p: u8) -> Option<String> {
    if family == 0 {
        return None;
    }
    Some(match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    })
}

/// RFC 3339 UTC time of `ns` nanoseconds after the epoch.
fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let micros = (ns % 1_000_000_000) / 1000;
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn clock_ns(clock: nix::libc::clockid_t) -> Result<u64> {
    let mut t = nix::libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: t is a valid timespec for the kernel to fill.
    if unsafe { nix::libc::clock_gettime(clock, &mut t) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading the clock");
    }
    Ok(t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64)
}

/// Turns raw events into [`Event`]s: names of reasons and interfaces, wall
/// time.
pub struct Decoder {
    stats: Vec<(String, String)>,
    ifnames: HashMap<u32, Option<String>>,
    /// The namespace interface indexes are named in (`-n`).
    netns: Option<String>,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, ns.
    offset: i128,
}

impl Decoder {
    pub fn new(netns: Option<&str>) -> Result<Self> {
        let real = clock_ns(nix::libc::CLOCK_REALTIME)?;
        let mono = clock_ns(nix::libc::CLOCK_MONOTONIC)?;
        Ok(Self {
            stats: stat_names()?.iter().map(|n| split_stat_name(n)).collect(),
            ifnames: HashMap::new(),
            netns: netns.map(str::to_string),
            offset: real as i128 - mono as i128,
        })
    }

    pub fn decode(&mut self, raw: &[u8]) -> Result<Event> {
        let size = std::mem::size_of::<types::trace_event>();
        if raw.len() < size {
            bail!("trace event of {} bytes, expected {size}", raw.len());
        }
        let e: types::trace_event = from_bytes(&raw[..size])?;
        let (program, reason) =
            self.stats.get(e.stat as usize).cloned().unwrap_or_else(|| ("?".into(), e.stat.to_string()));
        let iface = if e.ifindex == 0 {
            None
        } else {
            let netns = self.netns.as_deref();
            self.ifnames
                .entry(e.ifindex)
                .or_insert_with(|| {
                    let _in = crate::net::netns::NetnsGuard::enter(netns).ok()?;
                    crate::net::netif::name_of(e.ifindex).ok()
                })
                .clone()
        };
        Ok(Event {
            time: rfc3339((e.ts as i128 + self.offset).max(0) as u64),
            ktime_ns: e.ts,
            program,
            reason,
            verdict: verdict_name(e.hook, e.verdict),
            code: e.verdict,
            drop: e.drop != 0,
            ifindex: e.ifindex,
            iface,
            len: e.len,
            proto: proto_name(e.before.family, e.before.proto),
            before: tuple(&e.before),
            after: tuple(&e.after),
        })
    }
}

/// How a trace ended.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub events: u64,
    pub lost: u64,
}

/// A running trace: emission is on while it lives, and off once it is
/// dropped (also on a panic or an error).
pub struct Session {
    cfg_map: MapHandle,
    events: MapHandle,
    lost_map: MapHandle,
    lost_at_start: u64,
}

impl Session {
    /// Switches emission on with `f`. Refused while another trace runs.
    pub fn start(pins: &PinRoot, f: &Filter) -> Result<Self> {
        let cfg_map = maps::open(pins, name::TRACE_CFG)?;
        let events = maps::open(pins, name::TRACE_EVENTS)?;
        let lost_map = maps::open(pins, name::TRACE_LOST)?;
        let old = read_cfg(&cfg_map)?;
        if old.on != 0 && owner_alive(&old) && old.owner_pid != std::process::id() {
            bail!("a trace is running already (process {}); one trace at a time", old.owner_pid);
        }
        let me = std::process::id();
        let mut cfg = types::trace_config {
            on: 1,
            drops_only: f.drops as u32,
            ifindex: f.ifindex.unwrap_or(0),
            port: f.port.unwrap_or(0).to_be(),
            owner_pid: me,
            owner_start: start_time(me).context("reading this process's start time")?,
            ..Default::default()
        };
        match f.addr {
            None => {}
            Some(IpAddr::V4(a)) => {
                cfg.family = 2;
                cfg.addr[0] = u32::from(a).to_be();
            }
            Some(IpAddr::V6(a)) => {
                cfg.family = 10;
                for (i, w) in a.octets().chunks_exact(4).enumerate() {
                    cfg.addr[i] = u32::from_ne_bytes(w.try_into().expect("4 bytes"));
                }
            }
        }
        if f.reasons.is_empty() {
            cfg.reasons = [u64::MAX; 4];
        } else {
            for &r in &f.reasons {
                cfg.reasons[(r / 64) as usize & 3] |= 1 << (r % 64);
            }
        }
        let lost_at_start = lost(&lost_map)?;
        write_cfg(&cfg_map, &cfg)?;
        Ok(Self { cfg_map, events, lost_map, lost_at_start })
    }

    /// Reads events until `stop` is set or `count` events were shown,
    /// giving each to `on_event` (which returns false to stop) and every
    /// increase of the lost count to `on_lost`.
    pub fn run(
        &self,
        netns: Option<&str>,
        stop: &AtomicBool,
        count: Option<u64>,
        mut on_event: impl FnMut(Event) -> Result<bool>,
        mut on_lost: impl FnMut(u64),
    ) -> Result<Summary> {
        let mut dec = Decoder::new(netns)?;
        let shown = std::cell::Cell::new(0u64);
        let done = std::cell::Cell::new(false);
        let failed: std::cell::RefCell<Option<anyhow::Error>> = std::cell::RefCell::new(None);
        let mut builder = libbpf_rs::RingBufferBuilder::new();
        builder
            .add(&self.events, |raw: &[u8]| {
                if done.get() {
                    return 0;
                }
                let keep = dec.decode(raw).and_then(&mut on_event);
                match keep {
                    Ok(true) => {
                        shown.set(shown.get() + 1);
                        if count.is_some_and(|c| shown.get() >= c) {
                            done.set(true);
                        }
                    }
                    Ok(false) => done.set(true),
                    Err(e) => {
                        *failed.borrow_mut() = Some(e);
                        done.set(true);
                    }
                }
                0
            })
            .context("reading the trace ring buffer")?;
        let rb = builder.build().context("reading the trace ring buffer")?;
        let mut reported = 0u64;
        loop {
            if let Err(e) = rb.poll(Duration::from_millis(100)) {
                if e.kind() != libbpf_rs::ErrorKind::Interrupted {
                    return Err(e).context("polling the trace ring buffer");
                }
            }
            let l = lost(&self.lost_map)?.saturating_sub(self.lost_at_start);
            if l > reported {
                on_lost(l - reported);
                reported = l;
            }
            if done.get() || stop.load(Ordering::Relaxed) {
                break;
            }
        }
        drop(rb);
        if let Some(e) = failed.into_inner() {
            return Err(e);
        }
        Ok(Summary { events: shown.get(), lost: reported })
    }

    /// Switches emission off.
    pub fn stop(&self) -> Result<()> {
        write_cfg(&self.cfg_map, &types::trace_config::default())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::warn!("turning trace emission off: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400_000_001_000), "2000-02-29T00:00:00.000001Z");
        assert_eq!(rfc3339(1_795_461_856_057_000_000), "2026-11-23T19:24:16.057000Z");
    }

    #[test]
    fn own_start_time_is_readable_and_stable() {
        let me = std::process::id();
        let a = start_time(me).expect("own start time");
        assert_eq!(start_time(me), Some(a));
        assert_eq!(start_time(u32::MAX), None);
    }
}
