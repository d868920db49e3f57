//! Wiring a container into the host: its veth pair, addresses and routes,
//! done as one sequence that is undone exactly when any step fails.
//!
//! ```text
//!  host namespace (the calling thread's)       container namespace
//!  dp-mc1  169.254.1.1/32, fe80::1/64 ───────── eth0  10.10.0.2/32, 2001:db8::2/128
//!  route 10.10.0.2/32 dev dp-mc1 scope link      route 169.254.1.1/32 dev eth0 scope link
//!  route 2001:db8::2/128 dev dp-mc1              default via 169.254.1.1 dev eth0
//!                                                default via fe80::1 dev eth0
//! ```
//!
//! Every host veth carries the same gateway address, so one proxy
//! listener on it serves every container. Nothing here touches BPF maps or
//! programs: the caller registers the veth and publishes ports afterwards.

use std::fmt;
use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::PathBuf;

use super::rtnl::{self, check_name, ErrorKind, IpPrefix, Link, Route, Rtnl, VethPair};

/// The gateway address every host veth carries (link-local: it never
/// leaves the veth).
pub const DEFAULT_GATEWAY4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The IPv6 gateway address every host veth carries, as `fe80::1/64`.
pub const DEFAULT_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The container side's default name.
pub const DEFAULT_IFNAME: &str = "eth0";

/// The name of a container's host veth: `dp-<name>` when the container
/// name is at most 12 bytes of `[A-Za-z0-9_.-]`, otherwise `dp` and 13
/// hex digits (52 bits) of a hash of the whole name. Always 15 bytes or
/// fewer, the same for the same name in every release (the hash is
/// FNV-1a 64 with the MurmurHash3 finaliser, fixed here), and the two
/// forms never meet: only the first has a '-' after `dp`. Two long names
/// share a veth name with probability about n²/2⁵³ for n containers
/// (under 10⁻⁶ at 65,536); the second would fail to wire with "exists",
/// never take the first one's veth.
pub fn host_veth_name(container: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-';
    if !container.is_empty() && container.len() <= 12 && container.bytes().all(plain) {
        return format!("dp-{container}");
    }
    format!("dp{:013x}", name_hash(container.as_bytes()) >> 12)
}

fn name_hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's high bits mix poorly; the finaliser spreads every input bit.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// One container's wiring: what [`wire`] makes and [`unwire`] removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wiring {
    /// Host side of the veth pair, in the calling thread's namespace
    /// (see [`host_veth_name`]).
    pub host_ifname: String,
    /// The container's network namespace (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`).
    pub netns: PathBuf,
    /// The container side's name in its namespace.
    pub ifname: String,
    /// MTU of both ends; `None`: the kernel's default (1500).
    pub mtu: Option<u32>,
    /// The container's IPv4 address (as /32).
    pub ip4: Option<Ipv4Addr>,
    /// The container's IPv6 address (as /128).
    pub ip6: Option<Ipv6Addr>,
    /// The host veth's IPv4 address (as /32), the container's gateway.
    pub gateway4: Ipv4Addr,
    /// The host veth's IPv6 address (as /64, link-local), the container's
    /// IPv6 gateway.
    pub gateway6: Ipv6Addr,
}

impl Wiring {
    /// The wiring of container `name` in `netns` with address `ip4`, and
    /// the defaults: `eth0`, the kernel's MTU, gateway 169.254.1.1 (and
    /// fe80::1 once `ip6` is set).
    pub fn new(name: &str, netns: impl Into<PathBuf>, ip4: Ipv4Addr) -> Self {
        Self {
            host_ifname: host_veth_name(name),
            netns: netns.into(),
            ifname: DEFAULT_IFNAME.to_string(),
            mtu: None,
            ip4: Some(ip4),
            ip6: None,
            gateway4: DEFAULT_GATEWAY4,
            gateway6: DEFAULT_GATEWAY6,
        }
    }

    /// The steps [`wire`] takes for this wiring, in order.
    pub fn steps(&self) -> Vec<Step> {
        let (v4, v6) = (self.ip4.is_some(), self.ip6.is_some());
        Step::ALL
            .iter()
            .copied()
            .filter(|s| match s.family() {
                Some(6) => v6,
                Some(_) => v4,
                None => true,
            })
            .collect()
    }

    fn gateway4_prefix(&self) -> IpPrefix {
        IpPrefix::host(self.gateway4.into())
    }

    fn gateway6_prefix(&self) -> IpPrefix {
        IpPrefix { addr: self.gateway6.into(), len: 64 }
    }

    /// Refuses what can never be wired, before anything is made.
    pub fn validate(&self) -> rtnl::Result<()> {
        check_name(&self.host_ifname)?;
        check_name(&self.ifname)?;
        let bad = |why: String| {
            Err(rtnl::Error::new(ErrorKind::Invalid, format!("wiring of {}", self.host_ifname), why))
        };
        if self.ip4.is_none() && self.ip6.is_none() {
            return bad("the container needs an IPv4 or an IPv6 address".into());
        }
        if let Some(a) = self.ip4 {
            if a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast() {
                return bad(format!("{a} cannot be a container's address"));
            }
            if a == self.gateway4 {
                return bad(format!("{a} is the gateway address"));
            }
        }
        if let Some(a) = self.ip6 {
            if a.is_unspecified() || a.is_loopback() || a.is_multicast() || is_link_local6(a) {
                return bad(format!("{a} cannot be a container's address"));
            }
        }
        if self.ip6.is_some() && !is_link_local6(self.gateway6) {
            return bad(format!("the IPv6 gateway {} must be link-local (fe80::/10)", self.gateway6));
        }
        Ok(())
    }
}

fn is_link_local6(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// The steps of [`wire`], in order. A wiring without an IPv6 (or IPv4)
/// address skips that family's steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Refuse a wiring that can never work (bad names, no address).
    Check,
    /// Open the container's network namespace.
    OpenNetns,
    /// Create the veth pair, the container side directly in its namespace,
    /// with the MTU.
    CreateVeth,
    HostUp,
    /// The gateway address on the host veth.
    HostAddr4,
    HostAddr6,
    /// The container's address on its side.
    CtrAddr4,
    CtrAddr6,
    CtrUp,
    /// The container's on-link route to the gateway.
    CtrGatewayRoute4,
    /// The container's default route through the gateway.
    CtrDefaultRoute4,
    CtrDefaultRoute6,
    /// The host's route to the container's address through the host veth.
    HostRoute4,
    HostRoute6,
}

impl Step {
    pub const ALL: [Step; 14] = [
        Step::Check,
        Step::OpenNetns,
        Step::CreateVeth,
        Step::HostUp,
        Step::HostAddr4,
        Step::HostAddr6,
        Step::CtrAddr4,
        Step::CtrAddr6,
        Step::CtrUp,
        Step::CtrGatewayRoute4,
        Step::CtrDefaultRoute4,
        Step::CtrDefaultRoute6,
        Step::HostRoute4,
        Step::HostRoute6,
    ];

    /// A short, stable name (for error codes, logs, tests).
    pub fn name(self) -> &'static str {
        match self {
            Step::Check => "check",
            Step::OpenNetns => "open-netns",
            Step::CreateVeth => "create-veth",
            Step::HostUp => "host-up",
            Step::HostAddr4 => "host-addr4",
            Step::HostAddr6 => "host-addr6",
            Step::CtrAddr4 => "ctr-addr4",
            Step::CtrAddr6 => "ctr-addr6",
            Step::CtrUp => "ctr-up",
            Step::CtrGatewayRoute4 => "ctr-gateway-route4",
            Step::CtrDefaultRoute4 => "ctr-default-route4",
            Step::CtrDefaultRoute6 => "ctr-default-route6",
            Step::HostRoute4 => "host-route4",
            Step::HostRoute6 => "host-route6",
        }
    }

    fn family(self) -> Option<u8> {
        match self {
            Step::HostAddr4 | Step::CtrAddr4 | Step::CtrGatewayRoute4 | Step::CtrDefaultRoute4 | Step::HostRoute4 => {
                Some(4)
            }
            Step::HostAddr6 | Step::CtrAddr6 | Step::CtrDefaultRoute6 | Step::HostRoute6 => Some(6),
            _ => None,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`wire`] made, for registering the veth and publishing ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wired {
    /// The host veth (index, MAC, …) in the calling thread's namespace.
    pub host: Link,
    /// The container side, in the container's namespace.
    pub ctr: Link,
}

/// A failed [`wire`]: the step that failed and why. Everything done before
/// it has been undone, except what `undo_errors` lists.
#[derive(Debug)]
pub struct WireError {
    /// Which wiring: "dp-mc1 / eth0 in /run/netns/mc1".
    pub wiring: String,
    pub step: Step,
    pub error: rtnl::Error,
    /// Steps whose undoing failed (normally empty).
    pub undo_errors: Vec<(Step, rtnl::Error)>,
}

impl WireError {
    pub fn kind(&self) -> ErrorKind {
        self.error.kind()
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "wiring {} failed at step {}: {}", self.wiring, self.step, self.error)?;
        for (step, e) in &self.undo_errors {
            write!(f, "; undoing step {step} failed too: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for WireError {}

/// Something a step made, to be undone.
enum Made {
    Veth(u32),
    HostUp(u32),
    HostAddr(u32, IpPrefix),
    CtrAddr(u32, IpPrefix),
    CtrUp(u32),
    CtrRoute(Route),
    HostRoute(Route),
}

/// Wires a container: the host side in the calling thread's network
/// namespace, the container side in `w.netns`. On failure, everything
/// already done is undone in reverse order and the error names the step.
pub fn wire(w: &Wiring) -> Result<Wired, WireError> {
    Wire::new(w, None).run()
}

/// [`wire`], with `fail` failing as if the kernel had refused it (before
/// it is done), to test that every step's failure is undone.
#[doc(hidden)]
pub fn wire_failing_at(w: &Wiring, fail: Step) -> Result<Wired, WireError> {
    Wire::new(w, Some(fail)).run()
}

struct Wire<'a> {
    w: &'a Wiring,
    fail: Option<Step>,
    made: Vec<(Step, Made)>,
    host: Option<Rtnl>,
    ctr: Option<Rtnl>,
}

impl<'a> Wire<'a> {
    fn new(w: &'a Wiring, fail: Option<Step>) -> Self {
        Self { w, fail, made: Vec::new(), host: None, ctr: None }
    }

    fn run(mut self) -> Result<Wired, WireError> {
        match self.steps() {
            Ok(wired) => Ok(wired),
            Err((step, error)) => {
                let undo_errors = self.undo();
                let w = self.w;
                let wiring = format!("{} / {} in {}", w.host_ifname, w.ifname, w.netns.display());
                Err(WireError { wiring: rtnl::cut(&wiring).to_string(), step, error, undo_errors })
            }
        }
    }

    /// Fails `step` if it is the one to fail.
    fn at(&self, step: Step) -> Result<(), (Step, rtnl::Error)> {
        if self.fail == Some(step) {
            let ctx = format!("step {step} of the wiring of {}", self.w.host_ifname);
            return Err((step, rtnl::Error::new(ErrorKind::Other, ctx, "injected failure")));
        }
        Ok(())
    }

    fn steps(&mut self) -> Result<Wired, (Step, rtnl::Error)> {
        let w = self.w;
        let s = |step: Step| move |e: rtnl::Error| (step, e);

        self.at(Step::Check)?;
        w.validate().map_err(s(Step::Check))?;

        self.at(Step::OpenNetns)?;
        self.host = Some(Rtnl::open().map_err(s(Step::OpenNetns))?);
        let ns: File = rtnl::open_netns(&w.netns).map_err(s(Step::OpenNetns))?;
        let ctr = Rtnl::open_in_file(&ns, &w.netns.display().to_string()).map_err(s(Step::OpenNetns))?;
        self.ctr = Some(ctr);

        self.at(Step::CreateVeth)?;
        let veth = VethPair { name: &w.host_ifname, peer: &w.ifname, peer_netns: Some(ns.as_fd()), mtu: w.mtu };
        let hi = self.host.as_mut().unwrap().create_veth(&veth).map_err(s(Step::CreateVeth))?.index;
        self.made.push((Step::CreateVeth, Made::Veth(hi)));
        let ci = self.ctr.as_mut().unwrap().link(w.ifname.as_str()).map_err(s(Step::CreateVeth))?.index;

        self.step(Step::HostUp, Made::HostUp(hi))?;
        if w.ip4.is_some() {
            self.step(Step::HostAddr4, Made::HostAddr(hi, w.gateway4_prefix()))?;
        }
        if w.ip6.is_some() {
            self.step(Step::HostAddr6, Made::HostAddr(hi, w.gateway6_prefix()))?;
        }
        if let Some(a) = w.ip4 {
            self.step(Step::CtrAddr4, Made::CtrAddr(ci, IpPrefix::host(a.into())))?;
        }
        if let Some(a) = w.ip6 {
            self.step(Step::CtrAddr6, Made::CtrAddr(ci, IpPrefix::host(a.into())))?;
        }
        self.step(Step::CtrUp, Made::CtrUp(ci))?;
        if w.ip4.is_some() {
            self.step(Step::CtrGatewayRoute4, Made::CtrRoute(Route::to_gateway(w.gateway4.into(), ci)))?;
            self.step(Step::CtrDefaultRoute4, Made::CtrRoute(Route::default_via(w.gateway4.into(), ci)))?;
        }
        if w.ip6.is_some() {
            // fe80::/64 is on-link on every IPv6 link: the gateway needs no
            // route of its own.
            self.step(Step::CtrDefaultRoute6, Made::CtrRoute(Route::default_via(w.gateway6.into(), ci)))?;
        }
        if let Some(a) = w.ip4 {
            self.step(Step::HostRoute4, Made::HostRoute(Route::host(a.into(), hi)))?;
        }
        if let Some(a) = w.ip6 {
            self.step(Step::HostRoute6, Made::HostRoute(Route::host(a.into(), hi)))?;
        }

        // Read back as they are now (up, addresses): part of the last step.
        let last = self.made.last().map_or(Step::CreateVeth, |(st, _)| *st);
        let host = self.host.as_mut().unwrap().link(hi).map_err(s(last))?;
        let ctr = self.ctr.as_mut().unwrap().link(ci).map_err(s(last))?;
        Ok(Wired { host, ctr })
    }

    /// Makes `made` (on the host's or the container's socket, as it
    /// says) and records it.
    fn step(&mut self, step: Step, made: Made) -> Result<(), (Step, rtnl::Error)> {
        self.at(step)?;
        let (host, ctr) = (self.host.as_mut().unwrap(), self.ctr.as_mut().unwrap());
        let r = match &made {
            Made::Veth(_) => unreachable!("the veth pair is made by create_veth"),
            Made::HostUp(i) => host.set_up(*i, true),
            // Addresses nothing else on the link can have (the gateway,
            // the container's own, kept unique by the host route): usable
            // at once, without duplicate address detection (IPv6).
            Made::HostAddr(i, p) => host.add_addr(*i, *p, true),
            Made::CtrAddr(i, p) => ctr.add_addr(*i, *p, true),
            Made::CtrUp(i) => ctr.set_up(*i, true),
            Made::CtrRoute(r) => ctr.add_route(r),
            Made::HostRoute(r) => host.add_route(r),
        };
        r.map_err(|e| (step, e))?;
        self.made.push((step, made));
        Ok(())
    }

    /// Undoes what was made, last first. Something already gone counts as
    /// undone.
    fn undo(&mut self) -> Vec<(Step, rtnl::Error)> {
        let mut errors = Vec::new();
        while let Some((step, made)) = self.made.pop() {
            let (host, ctr) = (self.host.as_mut().unwrap(), self.ctr.as_mut().unwrap());
            let r = match &made {
                Made::Veth(i) => host.del_link(*i).map(drop),
                Made::HostUp(i) => host.set_up(*i, false),
                Made::HostAddr(i, p) => host.del_addr(*i, *p).map(drop),
                Made::CtrAddr(i, p) => ctr.del_addr(*i, *p).map(drop),
                Made::CtrUp(i) => ctr.set_up(*i, false),
                Made::CtrRoute(r) => ctr.del_route(r).map(drop),
                Made::HostRoute(r) => host.del_route(r).map(drop),
            };
            match r {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => errors.push((step, e)),
            }
        }
        errors
    }
}

/// Removes what [`wire`] made for `w`: its veth pair, which takes the
/// addresses and routes on both ends with it. Succeeds when it is already
/// gone, the container's namespace included; Ok(false) then. A link of
/// that name that is not this wiring's veth (not a veth, or its peer in
/// another namespace) is left alone and is an error.
pub fn unwire(w: &Wiring) -> rtnl::Result<bool> {
    let mut host = Rtnl::open()?;
    let link = match host.link(w.host_ifname.as_str()) {
        Ok(l) => l,
        Err(e) if e.is_not_found() => return Ok(false),
        Err(e) => return Err(e),
    };
    let ctx = || format!("removing the wiring of {}", rtnl::cut(&w.host_ifname));
    if link.kind.as_deref() != Some("veth") {
        let kind = link.kind.as_deref().unwrap_or("no kind");
        return Err(rtnl::Error::new(ErrorKind::Exists, ctx(), format!("the link is not a veth ({kind}); left alone")));
    }
    // The peer must be in the container's namespace. If that namespace
    // cannot be opened any more, its path is gone while a process keeps
    // it alive: a peer in some other namespace is all that can be checked.
    match rtnl::open_netns(&w.netns) {
        Ok(ns) => {
            let id = host.nsid(ns.as_fd())?;
            if id.is_none() || link.link_netnsid != id {
                return Err(rtnl::Error::new(
                    ErrorKind::Exists,
                    ctx(),
                    format!("its peer is not in {}; left alone", rtnl::cut(&w.netns.display().to_string())),
                ));
            }
        }
        Err(e) if e.is_not_found() => {
            if link.link_netnsid.is_none() {
                return Err(rtnl::Error::new(ErrorKind::Exists, ctx(), "its peer is in this namespace; left alone"));
            }
        }
        Err(e) => return Err(e),
    }
    host.del_link(link.index)
}

/// Checks that what [`wire`] makes for `w` is all there: the veth pair
/// (peer in the container's namespace, both up, the MTU), the addresses
/// and the routes on both ends. NotFound names the first thing missing.
pub fn check(w: &Wiring) -> rtnl::Result<Wired> {
    let ctx = || format!("checking the wiring of {}", rtnl::cut(&w.host_ifname));
    let missing = |what: String| rtnl::Error::new(ErrorKind::NotFound, ctx(), what);
    let mut host = Rtnl::open()?;
    let ns = rtnl::open_netns(&w.netns)?;
    let mut ctr = Rtnl::open_in_file(&ns, &w.netns.display().to_string())?;
    let hl = host.link(w.host_ifname.as_str())?;
    let cl = ctr.link(w.ifname.as_str())?;
    if hl.kind.as_deref() != Some("veth") || cl.kind.as_deref() != Some("veth") {
        return Err(missing("a veth pair".into()));
    }
    if hl.link_netnsid.is_none() || hl.link_netnsid != host.nsid(ns.as_fd())? || hl.peer_index != Some(cl.index) {
        return Err(missing(format!("{}'s peer {} in the container's namespace", hl.name, w.ifname)));
    }
    for l in [&hl, &cl] {
        if !l.up {
            return Err(missing(format!("{} up", l.name)));
        }
        if w.mtu.is_some_and(|m| m != l.mtu) {
            return Err(missing(format!("MTU {} on {} (it has {})", w.mtu.unwrap_or(0), l.name, l.mtu)));
        }
    }
    let has_addr = |nl: &mut Rtnl, l: &Link, p: IpPrefix| -> rtnl::Result<()> {
        if nl.addrs(Some(l.index))?.iter().any(|a| a.prefix == p) {
            Ok(())
        } else {
            Err(missing(format!("address {p} on {}", l.name)))
        }
    };
    let has_route = |nl: &mut Rtnl, l: &Link, r: Route| -> rtnl::Result<()> {
        let found = nl.routes(r.dst.is_ipv6(), Some(l.index))?.into_iter().any(|x| x.dst == r.dst && x.gateway == r.gateway && x.oif == r.oif);
        if found {
            Ok(())
        } else {
            Err(missing(format!("route {r} ({})", l.name)))
        }
    };
    if let Some(a) = w.ip4 {
        has_addr(&mut host, &hl, w.gateway4_prefix())?;
        has_addr(&mut ctr, &cl, IpPrefix::host(a.into()))?;
        has_route(&mut ctr, &cl, Route::to_gateway(w.gateway4.into(), cl.index))?;
        has_route(&mut ctr, &cl, Route::default_via(w.gateway4.into(), cl.index))?;
        has_route(&mut host, &hl, Route::host(a.into(), hl.index))?;
    }
    if let Some(a) = w.ip6 {
        has_addr(&mut host, &hl, w.gateway6_prefix())?;
        has_addr(&mut ctr, &cl, IpPrefix::host(a.into()))?;
        has_route(&mut ctr, &cl, Route::default_via(w.gateway6.into(), cl.index))?;
        has_route(&mut host, &hl, Route::host(a.into(), hl.index))?;
    }
    Ok(Wired { host: hl, ctr: cl })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_kept_long_ones_hashed() {
        assert_eq!(host_veth_name("mc1"), "dp-mc1");
        assert_eq!(host_veth_name("survival-1.2"), "dp-survival-1.2");
        // Fixed forever: a release that named veths differently could not
        // find the veths of containers wired before it.
        // Values computed independently of this code.
        assert_eq!(host_veth_name("survival-12.x"), "dp253e2d48db738");
        assert_eq!(host_veth_name(""), "dpefd01f60ba992");
        assert_eq!(host_veth_name("a/b"), "dpf2a5b2f60b006");
        assert_eq!(host_veth_name("4f2a9c0d8e7b6a5f4f2a9c0d8e7b6a5f"), "dp04c1fc36ce14b");
        for n in ["", "mc1", "a/b", "x".repeat(13).as_str(), "4f2a9c0d8e7b6a5f4f2a9c0d8e7b6a5f4f2a9c0d8e7b6a5f4f2a9c0d8e7b6a5f"] {
            let v = host_veth_name(n);
            assert!(v.len() <= 15 && check_name(&v).is_ok(), "{n:?} -> {v:?}");
            assert_eq!(v, host_veth_name(n), "stable");
        }
    }

    #[test]
    fn hashed_names_do_not_collide_in_a_large_fleet() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..200_000 {
            // CNI container ids and long names that differ in one place.
            let v = host_veth_name(&format!("minecraft-survival-server-{i}"));
            assert!(v.starts_with("dp") && !v.starts_with("dp-") && v.len() == 15, "{v}");
            assert!(seen.insert(v.clone()), "collision at {i}: {v}");
        }
        // A short name never takes the hashed form and vice versa.
        assert!(seen.iter().all(|v| v.as_bytes()[2] != b'-'));
    }

    #[test]
    fn steps_follow_the_families() {
        let mut w = Wiring::new("mc1", "/run/netns/x", Ipv4Addr::new(10, 0, 0, 2));
        assert!(!w.steps().contains(&Step::HostAddr6));
        assert!(w.steps().contains(&Step::HostRoute4));
        w.ip6 = Some("2001:db8::2".parse().unwrap());
        assert_eq!(w.steps(), Step::ALL.to_vec());
        w.ip4 = None;
        assert!(!w.steps().iter().any(|s| s.family() == Some(4)));
        assert_eq!(w.steps()[..4], [Step::Check, Step::OpenNetns, Step::CreateVeth, Step::HostUp]);
    }

    #[test]
    fn bad_wirings_are_refused_before_anything_is_made() {
        let ok = Wiring::new("mc1", "/run/netns/x", Ipv4Addr::new(10, 0, 0, 2));
        assert!(ok.validate().is_ok());
        let mut cases: Vec<(&str, Wiring)> = Vec::new();
        let mut w = ok.clone();
        w.ifname = "a-name-too-long-for-linux".into();
        cases.push(("long ifname", w));
        let mut w = ok.clone();
        w.ip4 = None;
        cases.push(("no address", w));
        for a in [[0, 0, 0, 0], [127, 0, 0, 1], [224, 0, 0, 1], [255, 255, 255, 255], [169, 254, 1, 1]] {
            let mut w = ok.clone();
            w.ip4 = Some(Ipv4Addr::from(a));
            cases.push(("bad ip4", w));
        }
        for a in ["::", "::1", "ff02::1", "fe80::2"] {
            let mut w = ok.clone();
            w.ip6 = Some(a.parse().unwrap());
            cases.push(("bad ip6", w));
        }
        let mut w = ok.clone();
        w.ip6 = Some("2001:db8::2".parse().unwrap());
        w.gateway6 = "2001:db8::1".parse().unwrap();
        cases.push(("global ip6 gateway", w));
        for (what, w) in cases {
            let e = w.validate().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{what}: {e}");
        }
    }
}
