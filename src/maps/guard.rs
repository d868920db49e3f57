//! The guard's maps: deny lists (`guard_deny4/6`), limits
//! (`guard_limits`), per-source state (`guard_src4`, `guard_vsrc4`,
//! `guard_verified4`) and its clock (`guard_cfg`).
//!
//! Times in the maps are the guard's clock in nanoseconds: the kernel's
//! `bpf_ktime_get_ns()`, which is `CLOCK_MONOTONIC`, unless a test has
//! stopped the clock (`guard_cfg.test_now`). User space reads the same
//! clock to turn `--for SECONDS` into an expiry and expiries back into
//! seconds left.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::{ErrorKind, MapCore, MapFlags, MapHandle};
use serde::Serialize;

use super::{lookup, name, open, Change};
use crate::abi::{bytes_of, capacity, from_bytes, types};
use crate::kernel::pins::PinRoot;

const NS_PER_SEC: u64 = 1_000_000_000;
/// Longest `--for` / `--block-for`: ten years.
pub const MAX_SECONDS: u64 = 10 * 365 * 86400;
/// Highest rate a bucket takes (packets per second).
pub const MAX_RATE: u32 = 100_000_000;
/// Largest burst.
pub const MAX_BURST: u32 = 10_000_000;

/// Echoed input is cut to 64 bytes.
fn cut(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A source prefix, IPv4 or IPv6, without host bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            bail!("prefix length {prefix} is longer than {max}");
        }
        let c = Cidr { addr, prefix };
        if c.network() != addr {
            bail!("{addr}/{prefix} has host bits set (the prefix is {}/{prefix})", c.network());
        }
        Ok(c)
    }

    /// The address with every bit past the prefix cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Cidr { addr: ip, prefix: self.prefix }.network() == self.addr
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = anyhow::Error;
    /// `ADDR/LEN`, or a bare address (one host: /32 or /128).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || anyhow!("invalid CIDR '{}': expected ADDRESS[/PREFIX-LENGTH]", cut(s));
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let prefix = match p {
            None => if addr.is_ipv4() { 32 } else { 128 },
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
        };
        Cidr::new(addr, prefix).map_err(|e| anyhow!("invalid CIDR '{}': {e}", cut(s)))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl types::guard_lpm4 {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        Self { prefixlen: u32::from(prefix), addr: u32::from_ne_bytes(addr.octets()) }
    }
}

impl types::guard_lpm6 {
    pub fn new(addr: Ipv6Addr, prefix: u8) -> Self {
        let o = addr.octets();
        let mut a = [0u32; 4];
        for (i, w) in a.iter_mut().enumerate() {
            *w = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
        }
        Self { prefixlen: u32::from(prefix), addr: a }
    }
}

impl types::guard_src4_key {
    pub fn new(addr: Ipv4Addr, scope_port: u16) -> Self {
        Self { addr: u32::from_ne_bytes(addr.octets()), port: scope_port.to_be(), pad: 0 }
    }
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr.to_ne_bytes())
    }
    pub fn scope_port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// CLOCK_MONOTONIC in nanoseconds: what `bpf_ktime_get_ns()` returns.
pub fn monotonic_ns() -> u64 {
    let mut ts = nix::libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec; CLOCK_MONOTONIC always exists.
    unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * NS_PER_SEC + ts.tv_nsec as u64
}

/// A deny entry as `guard deny list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DenyEntry {
    pub cidr: Cidr,
    /// Seconds until it expires (rounded up); None: never.
    pub expires_in: Option<u64>,
}

/// One class of a limit: a rate per second and a burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Rate {
    pub rate: u32,
    pub burst: u32,
}

/// The limits of one scope: every published port (`port` None) or one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Limit {
    pub port: Option<u16>,
    pub syn: Option<Rate>,
    pub udp: Option<Rate>,
    /// Seconds a source over a limit is blocked; None: not blocked.
    pub block_for: Option<u32>,
}

/// What `guard limit set` changes; None keeps the current value. A rate
/// of 0 removes that class's limit.
#[derive(Clone, Copy, Debug, Default)]
pub struct LimitChange {
    pub syn_rate: Option<u32>,
    pub syn_burst: Option<u32>,
    pub udp_rate: Option<u32>,
    pub udp_burst: Option<u32>,
    pub block_for: Option<u64>,
}

impl LimitChange {
    pub fn is_empty(&self) -> bool {
        self.syn_rate.is_none()
            && self.syn_burst.is_none()
            && self.udp_rate.is_none()
            && self.udp_burst.is_none()
            && self.block_for.is_none()
    }
}

/// A blocked source as `guard list-blocked` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Blocked {
    pub addr: IpAddr,
    /// The port whose own limits it broke; None: the global ones.
    pub port: Option<u16>,
    /// "syn" or "udp".
    pub class: &'static str,
    /// Seconds left (rounded up).
    pub remaining: u64,
    /// It completed a handshake with a container.
    pub verified: bool,
}

/// Fill levels of the per-source maps, for measurements and `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SourceCounts {
    pub unverified: usize,
    pub verified_state: usize,
    pub verified: usize,
}

fn secs_left(until: u64, now: u64) -> u64 {
    until.saturating_sub(now).div_ceil(NS_PER_SEC)
}

fn rate_of(rate: u32, burst: u32) -> Option<Rate> {
    (rate != 0).then_some(Rate { rate, burst })
}

/// The guard's maps, opened by their pins.
pub struct Guard {
    cfg: MapHandle,
    limits: MapHandle,
    deny4: MapHandle,
    deny6: MapHandle,
    src4: MapHandle,
    vsrc4: MapHandle,
    verified4: MapHandle,
    pins: PinRoot,
}

impl Guard {
    pub fn open(pins: &PinRoot) -> Result<Self> {
        Ok(Self {
            cfg: open(pins, name::GUARD_CFG)?,
            limits: open(pins, name::GUARD_LIMITS)?,
            deny4: open(pins, name::GUARD_DENY4)?,
            deny6: open(pins, name::GUARD_DENY6)?,
            src4: open(pins, name::GUARD_SRC4)?,
            vsrc4: open(pins, name::GUARD_VSRC4)?,
            verified4: open(pins, name::GUARD_VERIFIED4)?,
            pins: pins.clone(),
        })
    }

    fn config(&self) -> Result<types::guard_config> {
        Ok(lookup(&self.cfg, &0u32)?.unwrap_or_default())
    }

    /// The guard's clock now (ns), as the program reads it.
    pub fn now(&self) -> Result<u64> {
        let c = self.config()?;
        Ok(if c.test_now != 0 { c.test_now } else { monotonic_ns() })
    }

    /// Stops the guard's clock at `at` ns (Some), or lets it run again
    /// (None). For tests, which need refills and expiry to be repeatable;
    /// no command sets it.
    pub fn set_test_clock(&self, at: Option<u64>) -> Result<()> {
        let mut c = self.config()?;
        c.test_now = at.unwrap_or(0);
        self.cfg.update(bytes_of(&0u32), bytes_of(&c), MapFlags::ANY).context("updating map guard_cfg")
    }

    // ---- deny lists

    fn deny_get(&self, c: &Cidr) -> Result<Option<types::guard_deny>> {
        match c.addr {
            IpAddr::V4(a) => lookup(&self.deny4, &types::guard_lpm4::new(a, c.prefix)),
            IpAddr::V6(a) => lookup(&self.deny6, &types::guard_lpm6::new(a, c.prefix)),
        }
    }

    /// Denies a source prefix, for `for_secs` seconds or for good. The
    /// same prefix again sets its expiry anew (a permanent one stays
    /// unchanged); an exact lookup, since an LPM lookup would also find
    /// a covering prefix.
    pub fn deny_add(&self, c: &Cidr, for_secs: Option<u64>) -> Result<Change> {
        if let Some(s) = for_secs {
            if s == 0 || s > MAX_SECONDS {
                bail!("--for {s}: expected 1 to {MAX_SECONDS} seconds");
            }
        }
        let _lock = self.pins.lock_maps()?;
        self.sweep_locked()?;
        let expires = match for_secs {
            Some(s) => self.now()? + s * NS_PER_SEC,
            None => 0,
        };
        let cur = self.exact(c)?;
        if cur.is_some_and(|d| d.expires == 0) && expires == 0 {
            return Ok(Change::Unchanged);
        }
        let v = types::guard_deny { expires, prefixlen: u32::from(c.prefix), pad: 0 };
        let (map, name) = match c.addr {
            IpAddr::V4(_) => (&self.deny4, "guard_deny4"),
            IpAddr::V6(_) => (&self.deny6, "guard_deny6"),
        };
        let r = match c.addr {
            IpAddr::V4(a) => map.update(bytes_of(&types::guard_lpm4::new(a, c.prefix)), bytes_of(&v), MapFlags::ANY),
            IpAddr::V6(a) => map.update(bytes_of(&types::guard_lpm6::new(a, c.prefix)), bytes_of(&v), MapFlags::ANY),
        };
        // A full trie answers ENOSPC, which has no error kind of its own.
        r.map_err(|e| {
            if super::count(map) >= capacity::GUARD_DENY as usize {
                anyhow!("map {name} is full ({} entries)", capacity::GUARD_DENY)
            } else {
                anyhow::Error::new(e).context(format!("updating map {name}"))
            }
        })?;
        Ok(if cur.is_some() { Change::Updated } else { Change::Added })
    }

    /// The entry stored under exactly this prefix (not a covering one).
    fn exact(&self, c: &Cidr) -> Result<Option<types::guard_deny>> {
        Ok(self.deny_get(c)?.filter(|d| d.prefixlen == u32::from(c.prefix)))
    }

    pub fn deny_del(&self, c: &Cidr) -> Result<Change> {
        let _lock = self.pins.lock_maps()?;
        self.sweep_locked()?;
        if self.exact(c)?.is_none() {
            return Ok(Change::Absent);
        }
        let r = match c.addr {
            IpAddr::V4(a) => self.deny4.delete(bytes_of(&types::guard_lpm4::new(a, c.prefix))),
            IpAddr::V6(a) => self.deny6.delete(bytes_of(&types::guard_lpm6::new(a, c.prefix))),
        };
        match r {
            Ok(()) => Ok(Change::Deleted),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Change::Absent),
            Err(e) => Err(e).context("deleting a deny entry"),
        }
    }

    /// Every deny entry, with expired ones: (prefix, expiry).
    fn deny_all(&self) -> Result<Vec<(Cidr, u64)>> {
        let mut out = Vec::new();
        for k in self.deny4.keys() {
            let key: types::guard_lpm4 = from_bytes(&k)?;
            if let Some(v) = lookup::<_, types::guard_deny>(&self.deny4, &key)? {
                let addr = Ipv4Addr::from(key.addr.to_ne_bytes());
                out.push((Cidr { addr: addr.into(), prefix: key.prefixlen as u8 }, v.expires));
            }
        }
        for k in self.deny6.keys() {
            let key: types::guard_lpm6 = from_bytes(&k)?;
            if let Some(v) = lookup::<_, types::guard_deny>(&self.deny6, &key)? {
                let mut o = [0u8; 16];
                for (i, w) in key.addr.iter().enumerate() {
                    o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
                }
                out.push((Cidr { addr: Ipv6Addr::from(o).into(), prefix: key.prefixlen as u8 }, v.expires));
            }
        }
        Ok(out)
    }

    /// Live deny entries, sorted (IPv4 first).
    pub fn deny_list(&self) -> Result<Vec<DenyEntry>> {
        let now = self.now()?;
        let mut out: Vec<DenyEntry> = self
            .deny_all()?
            .into_iter()
            .filter(|(_, exp)| *exp == 0 || *exp > now)
            .map(|(cidr, exp)| DenyEntry { cidr, expires_in: (exp != 0).then(|| secs_left(exp, now)) })
            .collect();
        out.sort_by_key(|e| e.cidr);
        Ok(out)
    }

    /// Removes expired deny entries (the program already ignores them).
    /// Returns how many went.
    pub fn sweep(&self) -> Result<usize> {
        let _lock = self.pins.lock_maps()?;
        self.sweep_locked()
    }

    fn sweep_locked(&self) -> Result<usize> {
        let now = self.now()?;
        let mut n = 0;
        for (c, exp) in self.deny_all()? {
            if exp != 0 && exp <= now {
                let r = match c.addr {
                    IpAddr::V4(a) => self.deny4.delete(bytes_of(&types::guard_lpm4::new(a, c.prefix))),
                    IpAddr::V6(a) => self.deny6.delete(bytes_of(&types::guard_lpm6::new(a, c.prefix))),
                };
                match r {
                    Ok(()) => n += 1,
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(e).context("removing an expired deny entry"),
                }
            }
        }
        Ok(n)
    }

    // ---- limits

    fn limit_raw(&self, port: Option<u16>) -> Result<types::guard_limit> {
        Ok(lookup(&self.limits, &u32::from(port.unwrap_or(0)))?.unwrap_or_default())
    }

    fn to_limit(port: Option<u16>, l: &types::guard_limit) -> Option<Limit> {
        (l.set != 0).then(|| Limit {
            port,
            syn: rate_of(l.syn_rate, l.syn_burst),
            udp: rate_of(l.udp_rate, l.udp_burst),
            block_for: (l.block_for != 0).then_some(l.block_for),
        })
    }

    /// Changes the limits of one scope; unset fields keep their value. A
    /// burst defaults to the rate (one second's worth).
    pub fn limit_set(&self, port: Option<u16>, ch: &LimitChange) -> Result<Limit> {
        if ch.is_empty() {
            bail!("nothing to set: give --syn-rate, --syn-burst, --udp-rate, --udp-burst or --block-for");
        }
        if port == Some(0) {
            bail!("--port 0: expected 1-65535");
        }
        let _lock = self.pins.lock_maps()?;
        let mut l = self.limit_raw(port)?;
        for (name, rate, burst, r, b, iv) in [
            ("syn", ch.syn_rate, ch.syn_burst, &mut l.syn_rate, &mut l.syn_burst, &mut l.syn_interval),
            ("udp", ch.udp_rate, ch.udp_burst, &mut l.udp_rate, &mut l.udp_burst, &mut l.udp_interval),
        ] {
            if let Some(rate) = rate {
                if rate > MAX_RATE {
                    bail!("--{name}-rate {rate}: expected 0 (no limit) to {MAX_RATE} per second");
                }
                if rate == 0 {
                    if burst.is_some() {
                        bail!("--{name}-burst needs a --{name}-rate above 0");
                    }
                    *r = 0;
                    *b = 0;
                    *iv = 0;
                    continue;
                }
                if *r == 0 || burst.is_none() && *b == *r {
                    // A new limit, or a burst that followed its rate.
                    *b = rate;
                }
                *r = rate;
                *iv = (NS_PER_SEC / u64::from(rate)) as u32;
            }
            if let Some(burst) = burst {
                if *r == 0 {
                    bail!("--{name}-burst needs a --{name}-rate");
                }
                if burst == 0 || burst > MAX_BURST {
                    bail!("--{name}-burst {burst}: expected 1 to {MAX_BURST}");
                }
                *b = burst;
            }
        }
        if let Some(s) = ch.block_for {
            if s > u64::from(u32::MAX) || s > MAX_SECONDS {
                bail!("--block-for {s}: expected 0 (no block) to {MAX_SECONDS} seconds");
            }
            l.block_for = s as u32;
        }
        l.set = 1;
        self.limits
            .update(bytes_of(&u32::from(port.unwrap_or(0))), bytes_of(&l), MapFlags::ANY)
            .context("updating map guard_limits")?;
        Ok(Self::to_limit(port, &l).expect("set"))
    }

    /// The limits of one scope, if it has any.
    pub fn limit_get(&self, port: Option<u16>) -> Result<Option<Limit>> {
        Ok(Self::to_limit(port, &self.limit_raw(port)?))
    }

    /// Every scope with limits: the global one first, then by port.
    pub fn limit_list(&self) -> Result<Vec<Limit>> {
        let mut out = Vec::new();
        for (k, v) in self.limits.lookup_batch(4096, MapFlags::ANY, MapFlags::ANY).context("reading map guard_limits")? {
            let idx: u32 = from_bytes(&k)?;
            let l: types::guard_limit = from_bytes(&v)?;
            let port = if idx == 0 { None } else { Some(idx as u16) };
            out.extend(Self::to_limit(port, &l));
        }
        out.sort_by_key(|l| l.port);
        Ok(out)
    }

    /// Removes the limits of one scope; the per-source state of that scope
    /// is left to age out of its LRU map.
    pub fn limit_clear(&self, port: Option<u16>) -> Result<Change> {
        let _lock = self.pins.lock_maps()?;
        let had = self.limit_raw(port)?.set != 0;
        self.limits
            .update(bytes_of(&u32::from(port.unwrap_or(0))), bytes_of(&types::guard_limit::default()), MapFlags::ANY)
            .context("updating map guard_limits")?;
        Ok(if had { Change::Deleted } else { Change::Absent })
    }

    // ---- per-source state

    fn states(map: &MapHandle) -> Result<Vec<(types::guard_src4_key, types::guard_state)>> {
        let mut out = Vec::new();
        let name = map.name().to_string_lossy().into_owned();
        let iter = match map.lookup_batch(4096, MapFlags::ANY, MapFlags::ANY) {
            Ok(i) => i,
            Err(e) => return Err(e).with_context(|| format!("reading map {name}")),
        };
        for (k, v) in iter {
            out.push((from_bytes(&k)?, from_bytes(&v)?));
        }
        Ok(out)
    }

    /// Sources blocked now, longest block first.
    pub fn blocked(&self) -> Result<Vec<Blocked>> {
        let now = self.now()?;
        let mut out = Vec::new();
        for (map, verified) in [(&self.vsrc4, true), (&self.src4, false)] {
            for (k, st) in Self::states(map)? {
                if st.blocked_until > now {
                    let class = if st.block_class == types::dp_guard_class::DP_GUARD_UDP.0 { "udp" } else { "syn" };
                    let port = k.scope_port();
                    out.push(Blocked {
                        addr: k.addr().into(),
                        port: (port != 0).then_some(port),
                        class,
                        remaining: secs_left(st.blocked_until, now),
                        verified,
                    });
                }
            }
        }
        out.sort_by(|a, b| b.remaining.cmp(&a.remaining).then(a.addr.cmp(&b.addr)));
        Ok(out)
    }

    /// The state of one source in one scope, and whether it is a
    /// verified source's (for tests and measurements).
    pub fn state(&self, addr: Ipv4Addr, scope_port: u16) -> Result<Option<(types::guard_state, bool)>> {
        let k = types::guard_src4_key::new(addr, scope_port);
        if let Some(s) = lookup::<_, types::guard_state>(&self.vsrc4, &k)? {
            return Ok(Some((s, true)));
        }
        Ok(lookup::<_, types::guard_state>(&self.src4, &k)?.map(|s| (s, false)))
    }

    /// Whether snat has verified a source.
    pub fn is_verified(&self, addr: Ipv4Addr) -> Result<bool> {
        Ok(lookup::<_, u64>(&self.verified4, &u32::from_ne_bytes(addr.octets()))?.is_some())
    }

    pub fn source_counts(&self) -> SourceCounts {
        SourceCounts {
            unverified: super::count(&self.src4),
            verified_state: super::count(&self.vsrc4),
            verified: super::count(&self.verified4),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.1.0.0/16");
        assert_eq!("192.0.2.7".parse::<Cidr>().unwrap().prefix, 32);
        assert_eq!("2001:db8::/32".parse::<Cidr>().unwrap().to_string(), "2001:db8::/32");
        assert_eq!("2001:db8::1".parse::<Cidr>().unwrap().prefix, 128);
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix, 0);
        let e = "10.1.2.3/16".parse::<Cidr>().unwrap_err().to_string();
        assert!(e.contains("host bits") && e.contains("10.1.0.0/16"), "{e}");
        for bad in ["10.0.0.0/33", "2001:db8::/129", "10.0.0.0/", "10.0.0.0/-1", "10.0.0/8", "x", "10.0.0.0/8/8", "10.0.0.0/+8"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} parsed");
        }
        let long = "1".repeat(300);
        let e = long.parse::<Cidr>().unwrap_err().to_string();
        assert!(e.len() < 140, "echoed input not cut: {e}");
    }

    #[test]
    fn cidr_contains() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.255.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains("203.0.113.1".parse().unwrap()));
    }

    #[test]
    fn lpm_keys_carry_host_order_length_and_network_order_address() {
        let k = types::guard_lpm4::new(Ipv4Addr::new(10, 1, 0, 0), 16);
        assert_eq!(bytes_of(&k), &[16, 0, 0, 0, 10, 1, 0, 0]);
        let k = types::guard_lpm6::new("2001:db8::".parse().unwrap(), 32);
        assert_eq!(&bytes_of(&k)[..8], &[32, 0, 0, 0, 0x20, 0x01, 0x0d, 0xb8]);
        let s = types::guard_src4_key::new(Ipv4Addr::new(192, 0, 2, 1), 30001);
        assert_eq!(bytes_of(&s), &[192, 0, 2, 1, 0x75, 0x31, 0, 0]);
        assert_eq!((s.addr(), s.scope_port()), (Ipv4Addr::new(192, 0, 2, 1), 30001));
    }
}
