//! `container add|del|get|list`: a container's whole network in one
//! command, and the one sequence everything else that wires a container
//! uses (the CNI plugin, the demo, the tests, the benchmark).
//!
//! `add` checks its arguments, writes the container's record (state
//! `adding`) before it makes anything, wires the veth pair, addresses and
//! routes (`net::wiring`), attaches the host programs to the host veth,
//! registers the veth and publishes the ports, then marks the record
//! `ready`. When a step fails, everything the earlier steps made is undone
//! and the error names the step. `del` marks the record `deleting` and
//! removes exactly what the record says was made. A record left `adding`
//! or `deleting` by a command that was killed is removed by the next `add`
//! or `del` of that name before it does anything else.
//!
//! Every command holds the pin root's lock (the one `load`, `attach` and
//! `detach` take) from start to end, so commands on containers run one at
//! a time and never see each other's half-made state. Each touches a fixed
//! number of kernel objects and map entries: O(1) in the number of
//! containers.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::abi::{AF_INET, AF_INET6};
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use serde::Serialize;

use crate::kernel::attach::{self, Kind};
use crate::kernel::pins::PinRoot;
use crate::maps::containers::{self, Containers, Port, Record, State};
use crate::abi::types;
use crate::maps::containers::put_txn;
use crate::maps::{self, name, published, Change, Mapping, PortCounters, Txn, VethMap};
use crate::net::netns::NetnsGuard;
use crate::net::rtnl::{self, check_name, Route, Rtnl};
use crate::net::wiring::{self, Wiring};
use crate::net::netif;

/// What `container add` is asked to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// 1 to 127 bytes of `[A-Za-z0-9_.:@/-]`, starting with a letter or
    /// digit.
    pub name: String,
    /// The container's network namespace (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`).
    pub netns: PathBuf,
    pub ip4: Ipv4Addr,
    /// A dual-stack container's IPv6 address (gateway fe80::1): registered
    /// with it, and every port published without an address is published
    /// on the default IPv6 addresses too.
    pub ip6: Option<Ipv6Addr>,
    /// The container side's name (default `eth0`).
    pub ifname: String,
    /// MTU of both ends; None: the kernel's default.
    pub mtu: Option<u32>,
    pub ports: Vec<Port>,
    /// The CNI network adding it; "" for `container add`.
    pub owner: String,
}

impl Spec {
    /// Container `name` in `netns` with address `ip4`, interface `eth0`,
    /// the kernel's MTU and no published port.
    pub fn new(name: &str, netns: impl Into<PathBuf>, ip4: Ipv4Addr) -> Self {
        Self {
            name: name.to_string(),
            netns: netns.into(),
            ip4,
            ip6: None,
            ifname: wiring::DEFAULT_IFNAME.to_string(),
            mtu: None,
            ports: Vec::new(),
            owner: String::new(),
        }
    }
}

/// The steps of `container add`, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Arguments, the datapath loaded, the name free or holding exactly
    /// these arguments, the ports free.
    Check,
    /// The record, before anything is made and once the veth exists.
    Record,
    /// One step of the wiring (`net::wiring::Step`).
    Wire(wiring::Step),
    /// arp, snat and tproxy on the host veth.
    Attach,
    /// The veth in `veths`.
    Register,
    /// One published port.
    Publish(Port),
    /// The record marked ready.
    Commit,
}

impl Step {
    /// A short, stable name.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Check => "check",
            Step::Record => "record",
            Step::Wire(w) => w.name(),
            Step::Attach => "attach",
            Step::Register => "register",
            Step::Publish(_) => "publish",
            Step::Commit => "commit",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Publish(p) => write!(f, "publish {p}"),
            s => f.write_str(s.name()),
        }
    }
}

/// What kind of failure an [`Error`] is, for callers that branch on it
/// (the CNI plugin's error codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The datapath is not loaded under the pin root.
    NotLoaded,
    /// Arguments that can never work.
    Invalid,
    /// Something this build does not do (IPv6 containers).
    Unsupported,
    /// The name is taken: a container of that name with other arguments,
    /// or a link with its host veth's name.
    Exists,
    /// An address, route or published port belongs to someone else.
    InUse,
    /// The container's (or the host side's) network namespace is missing.
    NotFound,
    /// A map is at its capacity.
    Full,
    /// Anything else (the kernel refused, for example).
    Other,
}

/// A failed container command: the container, the step, and why.
/// Everything `add` made before the step has been removed again, except
/// what `undo_errors` lists.
#[derive(Debug)]
pub struct Error {
    pub name: String,
    pub step: Step,
    pub kind: ErrorKind,
    pub source: anyhow::Error,
    pub undo_errors: Vec<String>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "container {}: step {} failed: {:#}", cut(&self.name), self.step, self.source)?;
        for e in &self.undo_errors {
            write!(f, "; undoing: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

fn fail(name: &str, step: Step, kind: ErrorKind, source: anyhow::Error) -> Error {
    Error { name: name.to_string(), step, kind, source, undo_errors: Vec::new() }
}

/// The kind of a map-layer failure: a full map is [`ErrorKind::Full`].
fn map_kind(e: &anyhow::Error) -> ErrorKind {
    if e.downcast_ref::<crate::maps::Full>().is_some() {
        ErrorKind::Full
    } else {
        ErrorKind::Other
    }
}

/// Checks a container name: 1 to 127 bytes of `[A-Za-z0-9_.:@/-]`,
/// starting with a letter or digit (CNI container ids, and `id/ifname`).
pub fn check_container_name(name: &str) -> anyhow::Result<()> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"_.:@/-".contains(&b);
    let max = crate::abi::types::dp_name_len::DP_CTR_NAME_LEN.0 as usize - 1;
    if name.is_empty() || name.len() > max || !name.as_bytes()[0].is_ascii_alphanumeric() || !name.bytes().all(ok) {
        anyhow::bail!(
            "invalid container name '{}': expected 1 to {max} bytes of letters, digits and _ . : @ / -, starting with a letter or digit",
            cut(name)
        );
    }
    Ok(())
}

/// The arguments `add` refuses before it looks at anything else.
fn check_spec(spec: &Spec, wiring: &Wiring) -> Result<(), Error> {
    let invalid = |e: anyhow::Error| fail(&spec.name, Step::Check, ErrorKind::Invalid, e);
    check_container_name(&spec.name).map_err(invalid)?;
    if let Some(a) = spec.ip6 {
        maps::check_addr6(a, "container address").map_err(invalid)?;
    }
    check_name(&spec.ifname).map_err(|e| invalid(e.into()))?;
    wiring.validate().map_err(|e| invalid(e.into()))?;
    let netns_max = crate::abi::types::dp_name_len::DP_CTR_NETNS_LEN.0 as usize - 1;
    match spec.netns.to_str() {
        Some(p) if p.starts_with('/') && p.len() <= netns_max => {}
        _ => {
            return Err(invalid(anyhow!(
                "network namespace path '{}' must be absolute, UTF-8 and at most {netns_max} bytes",
                cut(&spec.netns.display().to_string())
            )))
        }
    }
    let owner_max = crate::abi::types::dp_name_len::DP_CTR_OWNER_LEN.0 as usize - 1;
    if spec.owner.len() > owner_max {
        return Err(invalid(anyhow!("CNI network name '{}' is longer than {owner_max} bytes", cut(&spec.owner))));
    }
    if spec.ports.len() > crate::abi::capacity::CTR_PORTS {
        return Err(invalid(anyhow!(
            "{} published ports; a container publishes at most {}",
            spec.ports.len(),
            crate::abi::capacity::CTR_PORTS
        )));
    }
    for (i, p) in spec.ports.iter().enumerate() {
        for q in &spec.ports[..i] {
            if (q.host_port, q.proto) == (p.host_port, p.proto) && q.ext_addr.is_none() == p.ext_addr.is_none() {
                return Err(invalid(anyhow!("host port {}/{} is published twice ({q} and {p})", p.host_port, p.proto)));
            }
            if (q.ctr_port, q.proto) == (p.ctr_port, p.proto) {
                return Err(invalid(anyhow!(
                    "container port {}/{} is published twice ({q} and {p}); a container port is published once",
                    p.ctr_port,
                    p.proto
                )));
            }
        }
    }
    Ok(())
}

/// The wiring a record (or a spec) describes.
fn wiring_of(r: &Record) -> Wiring {
    let mut w = Wiring::new(&r.name, r.netns.clone(), r.ip4);
    w.host_ifname = r.host_ifname.clone();
    w.ifname = r.ifname.clone();
    w.mtu = r.mtu;
    w.gateway4 = r.gateway4;
    w.ip6 = r.ip6;
    w
}

fn sorted(ports: &[Port]) -> Vec<Port> {
    let mut v = ports.to_vec();
    v.sort();
    v
}

/// Whether `cur` was made from the same arguments as `want`.
fn same_arguments(cur: &Record, want: &Record) -> bool {
    cur.host_netns == want.host_netns
        && cur.netns == want.netns
        && cur.ip4 == want.ip4
        && cur.ip6 == want.ip6
        && cur.ifname == want.ifname
        && cur.mtu == want.mtu
        && cur.owner == want.owner
        && sorted(&cur.ports) == sorted(&want.ports)
}

fn describe(r: &Record) -> String {
    let mut s = format!("--netns {} --ip {} --ifname {}", r.netns.display(), r.ip4, r.ifname);
    if let Some(a) = r.ip6 {
        s += &format!(" --ip6 {a}");
    }
    if let Some(m) = r.mtu {
        s += &format!(" --mtu {m}");
    }
    for p in &r.ports {
        s += &format!(" --publish {p}");
    }
    if !r.host_netns.is_empty() {
        s += &format!(" (host side in {})", r.host_netns);
    }
    if !r.owner.is_empty() {
        s += &format!(" (CNI network {})", r.owner);
    }
    s
}

/// What `add` did: made the container, or found it made exactly so.
#[derive(Clone, Debug, Serialize)]
pub struct Added {
    #[serde(serialize_with = "ser_change")]
    pub change: Change,
    pub container: Record,
}

fn ser_change<S: serde::Serializer>(c: &Change, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(c.as_str())
}

/// `container add`: wires, registers, attaches and publishes, all or
/// nothing. `host_netns` (`-n NAME`) is where the host side lives; None:
/// the calling thread's namespace.
pub fn add(pins: &PinRoot, host_netns: Option<&str>, spec: &Spec) -> Result<Added, Error> {
    Add::new(pins, host_netns, spec, None).run()
}

/// [`add`], failing at `step` as if it had been refused, to test that
/// every step's failure is undone. For `Step::Publish`, the given port
/// fails; for `Step::Wire`, that wiring step.
#[doc(hidden)]
pub fn add_failing_at(pins: &PinRoot, host_netns: Option<&str>, spec: &Spec, step: Step) -> Result<Added, Error> {
    Add::new(pins, host_netns, spec, Some(step)).run()
}

/// [`add`], stopping dead at `step` as a killed process would: nothing
/// it made is undone, its record stays `adding`. For crash tests.
#[doc(hidden)]
pub fn add_killed_at(pins: &PinRoot, host_netns: Option<&str>, spec: &Spec, step: Step) -> Result<Added, Error> {
    let mut a = Add::new(pins, host_netns, spec, Some(step));
    a.killed = true;
    a.run()
}

/// What one `add` has made so far, to undo.
#[derive(Default)]
struct Made {
    record: bool,
    wired: bool,
    attached: bool,
}

struct Add<'a> {
    pins: &'a PinRoot,
    host_netns: Option<&'a str>,
    spec: &'a Spec,
    fail: Option<Step>,
    /// At `fail`, stop without undoing anything (see [`add_killed_at`]).
    killed: bool,
    made: Made,
}

impl<'a> Add<'a> {
    fn new(pins: &'a PinRoot, host_netns: Option<&'a str>, spec: &'a Spec, fail: Option<Step>) -> Self {
        Self { pins, host_netns, spec, fail, killed: false, made: Made::default() }
    }

    fn err(&self, step: Step, kind: ErrorKind, source: anyhow::Error) -> Error {
        fail(&self.spec.name, step, kind, source)
    }

    /// Fails `step` if it is the one to fail.
    fn at(&self, step: Step) -> Result<(), Error> {
        if self.fail == Some(step) {
            return Err(self.err(step, ErrorKind::Other, anyhow!("injected failure")));
        }
        Ok(())
    }

    fn run(mut self) -> Result<Added, Error> {
        let (pins, spec) = (self.pins, self.spec);
        let name = spec.name.as_str();
        self.at(Step::Check)?;
        // The wiring as far as the arguments say (the gateway comes from
        // the pin root, checked again below).
        let mut w = Wiring::new(name, spec.netns.clone(), spec.ip4);
        w.ifname = spec.ifname.clone();
        w.mtu = spec.mtu;
        w.ip6 = spec.ip6;
        check_spec(spec, &w)?;
        if !pins.is_loaded() {
            return Err(self.err(
                Step::Check,
                ErrorKind::NotLoaded,
                anyhow!("the datapath is not loaded under {} (datapathctl load, or setup)", pins.root().display()),
            ));
        }
        let _ns = NetnsGuard::enter(self.host_netns).map_err(|e| self.err(Step::Check, ErrorKind::NotFound, e))?;
        let other = |e: anyhow::Error| fail(name, Step::Check, ErrorKind::Other, e);
        let _lock = pins.lock().map_err(other)?;
        let records = Containers::open(pins).map_err(other)?;
        w.gateway4 = containers::gateway(pins).map_err(other)?;
        w.validate().map_err(|e| self.err(Step::Check, ErrorKind::Invalid, e.into()))?;
        let mut rec = Record {
            name: name.to_string(),
            state: State::Adding,
            host_netns: self.host_netns.unwrap_or("").to_string(),
            netns: spec.netns.clone(),
            ifname: spec.ifname.clone(),
            mtu: spec.mtu,
            ip4: spec.ip4,
            gateway4: w.gateway4,
            ip6: spec.ip6,
            host_ifname: w.host_ifname.clone(),
            host_ifindex: 0,
            ctr_mac: None,
            owner: spec.owner.clone(),
            ports: spec.ports.clone(),
        };
        if let Some(cur) = records.get(name).map_err(other)? {
            let intact = cur.state == State::Ready
                && cur.host_ifindex != 0
                && netif::name_of(cur.host_ifindex).is_ok_and(|n| n == cur.host_ifname);
            if intact && same_arguments(&cur, &rec) {
                return Ok(Added { change: Change::Unchanged, container: cur });
            }
            if cur.state == State::Ready && !same_arguments(&cur, &rec) {
                return Err(self.err(
                    Step::Check,
                    ErrorKind::Exists,
                    anyhow!("container {} exists with other arguments ({}); delete it first", cut(name), describe(&cur)),
                ));
            }
            // Left by a command that was killed, or its veth is gone:
            // what it describes goes first.
            remove(pins, &records, &cur, &mut || {}).map_err(|e| {
                self.err(Step::Check, ErrorKind::Other, e.context("removing what an interrupted command left"))
            })?;
        }
        self.check_ports(&rec)?;

        self.at(Step::Record)?;
        records.put(&rec).map_err(|e| self.err(Step::Record, map_kind(&e), e))?;
        self.made.record = true;
        match self.steps(&records, &mut rec, &w) {
            Ok(()) => Ok(Added { change: Change::Added, container: rec }),
            Err(e) if self.killed => Err(e),
            Err(mut e) => {
                e.undo_errors.extend(self.undo(&records, &rec, &w));
                Err(e)
            }
        }
    }

    /// Published ports must be free, and name an external address this
    /// host has.
    fn check_ports(&self, rec: &Record) -> Result<(), Error> {
        if rec.ports.is_empty() {
            return Ok(());
        }
        let other = |e: anyhow::Error| self.err(Step::Check, ErrorKind::Other, e);
        let mappings = maps::open(self.pins, name::MAPPINGS).map_err(other)?;
        let externals = maps::open(self.pins, name::EXTERNALS).map_err(other)?;
        for p in &rec.ports {
            if let Some(a) = p.ext_addr {
                let known: Option<types::external_value> =
                    maps::lookup(&externals, &types::external_key::new(a)).map_err(other)?;
                if known.is_none() {
                    return Err(self.err(
                        Step::Check,
                        ErrorKind::Invalid,
                        anyhow!("{a} in --publish {p} is not an external address of this host (map external add)"),
                    ));
                }
            }
            for family in families(rec, p) {
                if let Some(cur) = published::get_in(&mappings, family, p.ext(), p.host_port, p.proto).map_err(other)? {
                    return Err(self.err(
                        Step::Check,
                        ErrorKind::InUse,
                        anyhow!("{} is already published ({})", cur.mapping.port_name(), cur.mapping.describe()),
                    ));
                }
            }
        }
        Ok(())
    }

    fn steps(&mut self, records: &Containers, rec: &mut Record, w: &Wiring) -> Result<(), Error> {
        let pins = self.pins;
        let wired = match self.fail {
            Some(Step::Wire(s)) => wiring::wire_failing_at(w, s),
            _ => wiring::wire(w),
        }
        .map_err(|e| {
            let kind = match (e.step, e.kind()) {
                (wiring::Step::OpenNetns, rtnl::ErrorKind::NotFound) => ErrorKind::NotFound,
                (wiring::Step::CreateVeth, rtnl::ErrorKind::Exists) => ErrorKind::Exists,
                (_, rtnl::ErrorKind::Exists) => ErrorKind::InUse,
                (_, rtnl::ErrorKind::Invalid) => ErrorKind::Invalid,
                _ => ErrorKind::Other,
            };
            let mut err = self.err(Step::Wire(e.step), kind, anyhow::Error::new(e.error));
            // The wiring undid its own steps; what it could not undo is
            // reported with the rest.
            err.undo_errors = e.undo_errors.iter().map(|(s, u)| format!("wiring step {s}: {u}")).collect();
            err
        })?;
        self.made.wired = true;
        let host_mac = wired.host.mac;
        rec.host_ifindex = wired.host.index;
        rec.ctr_mac = wired.ctr.mac;

        self.at(Step::Record)?;
        records.put(rec).map_err(|e| self.err(Step::Record, map_kind(&e), e))?;

        self.at(Step::Attach)?;
        attach::attach_tc(pins, self.host_netns, Kind::Host, &rec.host_ifindex.to_string())
            .map_err(|e| self.err(Step::Attach, map_kind(&e), e))?;
        self.made.attached = true;

        // The registration, the mappings and the record marked ready are
        // one transaction: all of them are written, or none.
        self.at(Step::Register)?;
        let mut txn = Txn::begin(pins).map_err(|e| self.err(Step::Register, ErrorKind::Other, e))?;
        let (host_mac, ctr_mac) = match (host_mac, rec.ctr_mac) {
            (Some(h), Some(c)) => (h, c),
            _ => return Err(self.err(Step::Register, ErrorKind::Other, anyhow!("the veth pair has no MAC addresses"))),
        };
        // The veth was made just now: a registration under its index
        // belongs to a veth that is gone, and is replaced.
        let v = types::veth_info::new(rec.ip4, rec.gateway4, host_mac).with_name(&rec.host_ifname);
        txn.put(name::VETHS, &rec.host_ifindex, &v).map_err(|e| self.err(Step::Register, map_kind(&e), e))?;
        if let Some(ip6) = rec.ip6 {
            let v6 = types::veth6_info::new(ip6, w.gateway6, host_mac);
            txn.put(name::VETHS6, &rec.host_ifindex, &v6).map_err(|e| self.err(Step::Register, map_kind(&e), e))?;
        }

        for p in rec.ports.clone() {
            self.at(Step::Publish(p))?;
            let m = Mapping {
                ext_addr: p.ext(),
                host_port: p.host_port,
                proto: p.proto,
                ctr_ip: rec.ip4.into(),
                ctr_port: p.ctr_port,
                ctr_mac,
                veth_ifindex: rec.host_ifindex,
            };
            published::add(&mut txn, &m).map_err(|e| self.err(Step::Publish(p), map_kind(&e), e))?;
            if let (Some(ip6), true) = (rec.ip6, families(rec, &p).contains(&AF_INET6)) {
                let m6 = Mapping { ctr_ip: ip6.into(), ..m };
                published::add(&mut txn, &m6).map_err(|e| self.err(Step::Publish(p), map_kind(&e), e))?;
            }
        }

        self.at(Step::Commit)?;
        rec.state = State::Ready;
        put_txn(&mut txn, rec).map_err(|e| self.err(Step::Commit, map_kind(&e), e))?;
        txn.commit().map_err(|e| self.err(Step::Commit, map_kind(&e), e))?;
        Ok(())
    }

    /// Undoes what this `add` made, last first; returns what could not be
    /// undone.
    fn undo(&mut self, records: &Containers, rec: &Record, w: &Wiring) -> Vec<String> {
        let mut errors = Vec::new();
        let mut note = |what: &str, r: anyhow::Result<()>| {
            if let Err(e) = r {
                errors.push(format!("{what}: {e:#}"));
            }
        };
        let pins = self.pins;
        // The registration and the ports were written in a transaction
        // that was not committed: they are gone already.
        if self.made.attached {
            note("detaching the host programs", detach(pins, rec));
        }
        if self.made.wired {
            note("unwiring", wiring::unwire(w).map(drop).map_err(anyhow::Error::new));
        }
        if self.made.record {
            note("removing the record", records.delete(&rec.name).map(drop));
        }
        errors
    }
}

/// Whether mapping `m` leads to `rec`'s port `p`.
fn leads_to(m: &Mapping, rec: &Record, p: &Port) -> bool {
    let ip = if m.ctr_ip.is_ipv6() { rec.ip6.map(IpAddr::V6) } else { Some(IpAddr::V4(rec.ip4)) };
    Some(m.ctr_ip) == ip && m.ctr_port == p.ctr_port && m.veth_ifindex == rec.host_ifindex
}

/// The families port `p` of `rec` is published in: IPv4, and IPv6 too for
/// a dual-stack container's port without an address.
fn families(rec: &Record, p: &Port) -> Vec<u8> {
    if rec.ip6.is_some() && p.ext_addr.is_none() {
        vec![AF_INET, AF_INET6]
    } else {
        vec![AF_INET]
    }
}

/// In one transaction: deletes every port of `rec` still published to
/// its veth, and its veth's registration if it is still its own (same
/// index and name).
fn unpublish_and_unregister(pins: &PinRoot, rec: &Record) -> anyhow::Result<()> {
    if rec.host_ifindex == 0 {
        return Ok(());
    }
    let mappings = maps::open(pins, name::MAPPINGS)?;
    let mut txn = Txn::begin(pins)?;
    for p in &rec.ports {
        for family in families(rec, p) {
            let cur = published::get_in(&mappings, family, p.ext(), p.host_port, p.proto)?;
            if cur.is_some_and(|c| leads_to(&c.mapping, rec, p)) {
                published::del_in(&mut txn, family, p.ext(), p.host_port, p.proto)
                    .with_context(|| format!("unpublishing {p}"))?;
            }
        }
    }
    let v: Option<types::veth_info> = txn.get(name::VETHS, &rec.host_ifindex)?;
    if v.is_some_and(|v| v.name() == rec.host_ifname) {
        if txn.get::<_, types::veth6_info>(name::VETHS6, &rec.host_ifindex)?.is_some() {
            txn.delete(name::VETHS6, &rec.host_ifindex)?;
        }
        txn.delete(name::VETHS, &rec.host_ifindex)?;
    }
    txn.commit()
}

/// Detaches the host programs from `rec`'s veth, or forgets the
/// attachment if the veth is gone (a link of its name that is another
/// interface is not this container's). Runs in the host side's namespace.
fn detach(pins: &PinRoot, rec: &Record) -> anyhow::Result<()> {
    if rec.host_ifindex == 0 {
        return Ok(());
    }
    let ns = (!rec.host_netns.is_empty()).then_some(rec.host_netns.as_str());
    if netif::name_of(rec.host_ifindex).is_ok_and(|n| n == rec.host_ifname) {
        attach::detach_tc(pins, ns, Kind::Host, &rec.host_ifindex.to_string())?;
    } else if netif::index_of(&rec.host_ifname).is_err() {
        // The veth is gone and its filters with it: detach by name forgets
        // its record.
        attach::detach_tc(pins, ns, Kind::Host, &rec.host_ifname)?;
    }
    Ok(())
}

/// Removes what `rec` says was made and then the record: marked
/// `deleting` first, so a killed `del` is finished by the next command.
/// Each part is removed only if it is still the container's own, and
/// what is gone already is skipped. `unrouted` is called once the
/// container's address is no longer routed on the host, before the veth
/// pair is deleted. Runs under the pin root's lock.
fn remove(pins: &PinRoot, records: &Containers, rec: &Record, unrouted: &mut dyn FnMut()) -> anyhow::Result<()> {
    if rec.state != State::Deleting {
        let mut r = rec.clone();
        r.state = State::Deleting;
        records.put(&r)?;
    }
    let host_ns = (!rec.host_netns.is_empty()).then_some(rec.host_netns.as_str());
    // The host side's namespace deleted: its veths, filters and routes
    // went with it, only map entries are left.
    let host_gone = host_ns.is_some_and(|n| !std::path::Path::new("/run/netns").join(n).exists());
    let _ns = if host_gone { None } else { Some(NetnsGuard::enter(host_ns)?) };
    unpublish_and_unregister(pins, rec).context("unpublishing and unregistering")?;
    if !host_gone {
        detach(pins, rec).context("detaching the host programs")?;
        // The host route first: once it is gone the address is free on
        // the host (no registration, mapping or route names it), and the
        // caller may release it while the kernel deletes the veth pair,
        // which waits for RCU grace periods.
        if rec.host_ifindex != 0 && netif::name_of(rec.host_ifindex).is_ok_and(|n| n == rec.host_ifname) {
            let route = Route::host(rec.ip4.into(), rec.host_ifindex);
            Rtnl::open().and_then(|mut nl| nl.del_route(&route)).context("removing the host route")?;
        }
        unrouted();
        match wiring::unwire(&wiring_of(rec)) {
            Ok(_) => {}
            // A link of that name that is not this container's veth: its
            // veth is gone (host veth names are unique); the link is left
            // alone.
            Err(e) if e.is_exists() => log::info!("container {}: {e}", cut(&rec.name)),
            Err(e) => return Err(anyhow::Error::new(e).context("removing the veth pair")),
        }
    }
    records.delete(&rec.name)?;
    Ok(())
}

/// `container del`: removes exactly what `add` made. Deleting a container
/// that is not there succeeds (Absent), also when its namespace is gone.
pub fn del(pins: &PinRoot, name: &str) -> Result<Change, Error> {
    del_with(pins, name, &mut || {})
}

/// [`del`], calling `unrouted` once the container's address is no longer
/// routed on the host — after its mappings, registration, attachment and
/// host route are gone, before its veth pair is deleted (the slow part) —
/// so the CNI plugin releases the address meanwhile. Not called if there
/// is no such container, or its host side's namespace is gone.
pub fn del_with(pins: &PinRoot, name: &str, unrouted: &mut dyn FnMut()) -> Result<Change, Error> {
    check_container_name(name).map_err(|e| fail(name, Step::Check, ErrorKind::Invalid, e))?;
    if !pins.is_loaded() {
        return Err(fail(
            name,
            Step::Check,
            ErrorKind::NotLoaded,
            anyhow!("the datapath is not loaded under {}", pins.root().display()),
        ));
    }
    let other = |e: anyhow::Error| fail(name, Step::Check, map_kind(&e), e);
    let _lock = pins.lock().map_err(other)?;
    let records = Containers::open(pins).map_err(other)?;
    let Some(rec) = records.get(name).map_err(other)? else {
        return Ok(Change::Absent);
    };
    remove(pins, &records, &rec, unrouted).map_err(other)?;
    Ok(Change::Deleted)
}

/// One published port of a container as the maps have it now.
#[derive(Clone, Debug, Serialize)]
pub struct PortState {
    #[serde(flatten)]
    pub port: Port,
    /// The mapping is in place, leading to this container.
    pub published: bool,
    /// Its traffic since it was published (while it is).
    pub counters: Option<PortCounters>,
}

/// `container get`: the record and the state of its published ports.
#[derive(Clone, Debug, Serialize)]
pub struct Container {
    #[serde(flatten)]
    pub record: Record,
    pub published: Vec<PortState>,
}

/// `container get`.
pub fn get(pins: &PinRoot, name: &str) -> anyhow::Result<Container> {
    check_container_name(name)?;
    let records = Containers::open(pins)?;
    let record = records.get(name)?.with_context(|| format!("container {} does not exist", cut(name)))?;
    let mappings = maps::open(pins, name::MAPPINGS)?;
    let stats = maps::open(pins, name::PORT_STATS)?;
    let mut published = Vec::new();
    for p in &record.ports {
        let ours = published::get(&mappings, p.ext(), p.host_port, p.proto)?.filter(|m| leads_to(&m.mapping, &record, p));
        let counters = match &ours {
            Some(m) => Some(maps::port_counters(&stats, m.slot)?),
            None => None,
        };
        published.push(PortState { port: *p, published: ours.is_some(), counters });
    }
    Ok(Container { record, published })
}

/// `container list`: every record, by name.
pub fn list(pins: &PinRoot) -> anyhow::Result<Vec<Record>> {
    Containers::open(pins)?.list()
}

/// Checks that what `add` made for container `name` is all there: its
/// record ready, the wiring (`net::wiring::check`), the registration,
/// the host programs attached, and every port published to it.
pub fn check(pins: &PinRoot, name: &str) -> anyhow::Result<Record> {
    let c = get(pins, name)?;
    let rec = c.record;
    if rec.state != State::Ready {
        anyhow::bail!("container {} is {}, not ready", cut(name), rec.state.as_str());
    }
    let host_ns = (!rec.host_netns.is_empty()).then_some(rec.host_netns.as_str());
    {
        let _ns = NetnsGuard::enter(host_ns)?;
        let wired = wiring::check(&wiring_of(&rec))?;
        if wired.host.index != rec.host_ifindex {
            anyhow::bail!("{} has index {}, the record says {}", rec.host_ifname, wired.host.index, rec.host_ifindex);
        }
        if wired.ctr.mac != rec.ctr_mac {
            anyhow::bail!("{} in the container has another MAC than the record's", rec.ifname);
        }
    }
    let v = VethMap::open(pins)?.get(rec.host_ifindex)?;
    match v {
        Some(v) if v.name == rec.host_ifname && v.ctr_ip == rec.ip4 && v.host_ip == rec.gateway4 && v.ctr_ip6 == rec.ip6 => {}
        _ => anyhow::bail!("veth {} is not registered for {}", rec.host_ifname, rec.ip4),
    }
    attach::check_tc(pins, host_ns, Kind::Host, &rec.host_ifindex.to_string())?;
    if let Some(p) = c.published.iter().find(|p| !p.published) {
        anyhow::bail!("port {} is not published to container {}", p.port, cut(name));
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["mc1", "survival-1.2", "4f2a9c0d8e7b6a5f/eth0", "a", &"x".repeat(127), "pod@ns:1"] {
            assert!(check_container_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "/x", "a b", "a\n", &"x".repeat(128), "é"] {
            assert!(check_container_name(bad).is_err(), "{bad:?}");
        }
        let long = "é".repeat(100);
        assert!(check_container_name(&long).unwrap_err().to_string().len() < 250);
    }

    fn spec() -> Spec {
        let mut s = Spec::new("mc1", "/run/netns/mc1", Ipv4Addr::new(10, 0, 0, 2));
        s.ports = vec!["30001:25565".parse().unwrap(), "30002:19132/udp".parse().unwrap()];
        s
    }

    fn kind_of(s: &Spec) -> Option<ErrorKind> {
        let mut w = Wiring::new(&s.name, s.netns.clone(), s.ip4);
        w.ifname = s.ifname.clone();
        check_spec(s, &w).err().map(|e| {
            assert_eq!(e.step, Step::Check);
            e.kind
        })
    }

    #[test]
    fn specs_that_can_never_work_are_refused_first() {
        assert_eq!(kind_of(&spec()), None);
        let mut s = spec();
        s.ip6 = Some("fe80::2".parse().unwrap());
        assert_eq!(kind_of(&s), Some(ErrorKind::Invalid), "a link-local IPv6 address");
        let mut s = spec();
        s.ports.push("30001:25566".parse().unwrap());
        assert_eq!(kind_of(&s), Some(ErrorKind::Invalid), "host port twice");
        let mut s = spec();
        s.ports.push("30003:25565".parse().unwrap());
        assert_eq!(kind_of(&s), Some(ErrorKind::Invalid), "container port twice");
        let mut s = spec();
        s.ports.push("30001:25565/udp".parse().unwrap());
        s.ports.remove(1);
        assert_eq!(kind_of(&s), None, "the same numbers over UDP are another port");
        let mut s = spec();
        s.ip4 = Ipv4Addr::new(224, 0, 0, 1);
        assert_eq!(kind_of(&s), Some(ErrorKind::Invalid));
        let mut s = spec();
        s.ifname = "a-name-too-long-for-linux".into();
        assert_eq!(kind_of(&s), Some(ErrorKind::Invalid));
        let mut s = spec();
        s.netns = PathBuf::from("relative/path");
        assert_eq!(kind_of(&s), Some(ErrorKind::Invalid));
        let mut s = spec();
        s.ports = (1..=65).map(|i| Port { ext_addr: None, host_port: i, ctr_port: i, proto: crate::abi::Proto::Tcp }).collect();
        assert_eq!(kind_of(&s), Some(ErrorKind::Invalid));
    }

    #[test]
    fn steps_are_named() {
        let p: Port = "30001:25565".parse().unwrap();
        assert_eq!(Step::Publish(p).to_string(), "publish 30001:25565/tcp");
        assert_eq!(Step::Wire(wiring::Step::HostRoute4).to_string(), "host-route4");
        let e = fail("mc1", Step::Attach, ErrorKind::Other, anyhow!("refused"));
        assert_eq!(e.to_string(), "container mc1: step attach failed: refused");
    }
}
