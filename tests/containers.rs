//! `container add|del|get|list` against real namespaces and a loaded pin
//! root of the test's own: what add makes (read back with `ip -j`, `tc`,
//! the maps and `container get`), the same add again changing nothing,
//! other arguments refused, every step failing in turn and real refusals
//! (name taken, namespace missing, address or port in use, datapath not
//! loaded, IPv6) leaving nothing behind, commands killed half-way finished
//! by the next one, records surviving `load`, 200 add/del cycles, and the
//! command line.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use common::topo::{assert_same, ip_json, snapshot};
use common::{assert_one_line_failure, assert_ok, ctl, privileged, unique, TestNs, TestRoot};
use datapath::maps::containers::{Containers, Port, State};
use datapath::maps::{self, published, Change, VethMap};
use datapath::net::wiring;
use datapath::ops::container::{self, ErrorKind, Spec, Step};
use datapath::ops;

fn path(ns: &TestNs) -> PathBuf {
    PathBuf::from("/run/netns").join(&ns.name)
}

fn port(s: &str) -> Port {
    s.parse().unwrap()
}

/// A loaded pin root, a host namespace (the host side of every veth, like
/// `-n`) and a container namespace.
struct Env {
    root: TestRoot,
    host: TestNs,
    ctr: TestNs,
}

impl Env {
    fn new() -> Self {
        Self { root: TestRoot::loaded(), host: TestNs::new(), ctr: TestNs::new() }
    }

    /// A container in `self.ctr` publishing a TCP and a UDP port.
    fn spec(&self) -> Spec {
        let mut s = Spec::new(&unique("mc"), path(&self.ctr), Ipv4Addr::new(10, 77, 0, 2));
        s.ports = vec![port("30001:25565"), port("30002:19132/udp")];
        s.mtu = Some(1400);
        s
    }

    fn add(&self, s: &Spec) -> Result<container::Added, container::Error> {
        container::add(&self.root.pins, Some(&self.host.name), s)
    }

    /// Everything a container add could have touched: both namespaces,
    /// the maps, the attachment records, the TC filters of the host side.
    fn state(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = snapshot(&self.host.name).into_iter().map(|l| format!("host {l}")).collect();
        out.extend(snapshot(&self.ctr.name).into_iter().map(|l| format!("ctr {l}")));
        let pins = &self.root.pins;
        for p in published::list(pins).unwrap() {
            out.insert(format!("mapping {}", p.mapping.describe()));
        }
        let [m, r, d] = published::counts(pins).unwrap();
        out.insert(format!("mappings {m} mapping_rev {r} dnat4 {d}"));
        for v in VethMap::open(pins).unwrap().list().unwrap() {
            out.insert(format!("veth {} {} {} {:?}", v.ifindex, v.name, v.ctr_ip, v.ctr_ip6));
        }
        for r in datapath::kernel::attach::Records::open(pins).unwrap().list().unwrap() {
            out.insert(format!("attachment {:?} {} {}", r.kind, r.netns, r.target));
        }
        for c in Containers::open(pins).unwrap().list().unwrap() {
            out.insert(format!("container {} {:?}", c.name, c.state));
        }
        for l in ip_json(&format!("-n {} link show", self.host.name)).as_array().unwrap() {
            let dev = l["ifname"].as_str().unwrap();
            for dir in ["ingress", "egress"] {
                let f = std::process::Command::new("tc")
                    .args(["-n", &self.host.name, "filter", "show", "dev", dev, dir])
                    .output()
                    .unwrap();
                // By program name and priority: `load` replaces programs
                // (new ids) in place.
                let text = String::from_utf8_lossy(&f.stdout).into_owned();
                let words: Vec<&str> = text.split_whitespace().collect();
                for (i, w) in words.iter().enumerate() {
                    if *w == "name" && i + 1 < words.len() {
                        out.insert(format!("tc {dev} {dir} {}", words[i + 1]));
                    }
                }
            }
        }
        out
    }
}

/// Asserts a container is completely there: `ip -j` sees its wiring, the
/// maps have its registration and ports, tc has its programs, and
/// `container::check` agrees.
#[track_caller]
fn assert_wired(e: &Env, s: &Spec) {
    let pins = &e.root.pins;
    let rec = container::check(pins, &s.name).unwrap_or_else(|err| panic!("check {}: {err:#}", s.name));
    assert_eq!(rec.state, State::Ready);
    let host_if = wiring::host_veth_name(&s.name);
    assert_eq!(rec.host_ifname, host_if);
    let l = &ip_json(&format!("-d -n {} link show dev {host_if}", e.host.name))[0];
    assert_eq!(l["linkinfo"]["info_kind"], "veth");
    assert_eq!(l["mtu"], 1400);
    assert_eq!(l["ifindex"].as_u64(), Some(u64::from(rec.host_ifindex)));
    let addrs = ip_json(&format!("-n {} addr show dev {host_if}", e.host.name));
    assert!(addrs[0]["addr_info"].as_array().unwrap().iter().any(|a| a["local"] == "169.254.1.1" && a["prefixlen"] == 32));
    let routes = ip_json(&format!("-n {} route show dev {host_if}", e.host.name));
    assert!(routes.as_array().unwrap().iter().any(|r| r["dst"] == s.ip4.to_string()), "host route: {routes}");
    let ctr_routes = ip_json(&format!("-n {} route show", e.ctr.name));
    assert!(ctr_routes.as_array().unwrap().iter().any(|r| r["dst"] == "default" && r["gateway"] == "169.254.1.1"));
    let v = VethMap::open(pins).unwrap().get(rec.host_ifindex).unwrap().expect("registered");
    assert_eq!((v.name.as_str(), v.ctr_ip, v.host_ip), (host_if.as_str(), s.ip4, Ipv4Addr::new(169, 254, 1, 1)));
    let mappings = maps::open(pins, maps::name::MAPPINGS).unwrap();
    for p in &s.ports {
        let m = published::get(&mappings, p.ext(), p.host_port, p.proto).unwrap().unwrap_or_else(|| panic!("{p} is not published")).mapping;
        assert_eq!((m.ctr_ip, m.ctr_port, m.veth_ifindex, Some(m.ctr_mac)), (s.ip4.into(), p.ctr_port, rec.host_ifindex, rec.ctr_mac));
    }
    for dir in ["ingress", "egress"] {
        let out = std::process::Command::new("tc")
            .args(["-n", &e.host.name, "filter", "show", "dev", &host_if, dir])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let want: &[&str] = if dir == "ingress" { &["arp", "snat", "tproxy_ingress"] } else { &["tproxy_egress"] };
        for p in want {
            assert!(text.contains(&format!("{p}:")) || text.contains(&format!("name {p}")), "{p} on {host_if} {dir}: {text}");
        }
    }
}

#[test]
fn add_makes_everything_again_changes_nothing_and_del_removes_exactly_it() {
    if !privileged("add_makes_everything_again_changes_nothing_and_del_removes_exactly_it") {
        return;
    }
    let e = Env::new();
    let before = e.state();
    let s = e.spec();
    let a = e.add(&s).unwrap_or_else(|err| panic!("add: {err}"));
    assert_eq!(a.change, Change::Added);
    assert_wired(&e, &s);
    let made = e.state();

    // The same arguments again: success, nothing changes (ports in
    // another order are the same arguments).
    let mut again = s.clone();
    again.ports.reverse();
    assert_eq!(e.add(&again).unwrap().change, Change::Unchanged);
    assert_same("after the same add", &made, &e.state());

    // Other arguments for the same name: refused, nothing changes.
    let mut other = s.clone();
    other.ip4 = Ipv4Addr::new(10, 77, 0, 3);
    let mut more = s.clone();
    more.ports.push(port("30003:8080"));
    let mut mtu = s.clone();
    mtu.mtu = None;
    for (what, o) in [("address", other), ("ports", more), ("mtu", mtu)] {
        let err = e.add(&o).unwrap_err();
        assert_eq!((err.step, err.kind), (Step::Check, ErrorKind::Exists), "{what}: {err}");
        assert!(err.to_string().contains("exists with other arguments"), "{err}");
        assert_same(&format!("after an add with another {what}"), &made, &e.state());
    }

    // `container get` and `list` show it.
    let c = container::get(&e.root.pins, &s.name).unwrap();
    assert!(c.published.iter().all(|p| p.published) && c.published.len() == 2);
    assert_eq!(container::list(&e.root.pins).unwrap().len(), 1);

    assert_eq!(container::del(&e.root.pins, &s.name).unwrap(), Change::Deleted);
    assert_same("after del", &before, &e.state());
    assert_eq!(container::del(&e.root.pins, &s.name).unwrap(), Change::Absent);
    assert_same("after del again", &before, &e.state());
}

#[test]
fn del_succeeds_when_the_namespace_is_gone() {
    if !privileged("del_succeeds_when_the_namespace_is_gone") {
        return;
    }
    let e = Env::new();
    let before_host = snapshot(&e.host.name);
    let gone = TestNs::new();
    let mut s = e.spec();
    s.netns = path(&gone);
    e.add(&s).unwrap_or_else(|err| panic!("add: {err}"));
    drop(gone);
    assert_eq!(container::del(&e.root.pins, &s.name).unwrap(), Change::Deleted);
    assert_same("host after del", &before_host, &snapshot(&e.host.name));
    let pins = &e.root.pins;
    assert_eq!(published::counts(pins).unwrap(), [0, 0, 0]);
    assert_eq!(VethMap::open(pins).unwrap().count(), 0);
    assert_eq!(Containers::open(pins).unwrap().count(), 0);
    assert!(datapath::kernel::attach::Records::open(pins).unwrap().list().unwrap().is_empty());
}

#[test]
fn every_failing_step_of_add_is_undone() {
    if !privileged("every_failing_step_of_add_is_undone") {
        return;
    }
    let e = Env::new();
    let s = e.spec();
    let before = e.state();
    let mut steps = vec![Step::Check, Step::Record];
    let mut w = wiring::Wiring::new(&s.name, s.netns.clone(), s.ip4);
    w.mtu = s.mtu;
    steps.extend(w.steps().into_iter().map(Step::Wire));
    steps.extend([Step::Attach, Step::Register]);
    steps.extend(s.ports.iter().map(|p| Step::Publish(*p)));
    steps.push(Step::Commit);
    for step in &steps {
        let err = container::add_failing_at(&e.root.pins, Some(&e.host.name), &s, *step).unwrap_err();
        assert_eq!(err.step, *step, "{err}");
        assert!(err.undo_errors.is_empty(), "{step}: {err}");
        let text = err.to_string();
        assert!(text.starts_with(&format!("container {}: step {step} failed: ", s.name)), "{text}");
        assert_same(&format!("after {step} failed"), &before, &e.state());
    }
    // And then it works.
    e.add(&s).unwrap_or_else(|err| panic!("add after every failure: {err}"));
    assert_wired(&e, &s);
}

#[test]
fn real_refusals_name_the_step_and_leave_nothing() {
    if !privileged("real_refusals_name_the_step_and_leave_nothing") {
        return;
    }
    let e = Env::new();
    let s = e.spec();
    let refused = |what: &str, s: &Spec, step: Step, kind: ErrorKind| {
        let before = e.state();
        let err = e.add(s).unwrap_err();
        assert_eq!((err.step, err.kind), (step, kind), "{what}: {err}");
        assert!(err.undo_errors.is_empty(), "{what}: {err}");
        assert_same(&format!("after {what}"), &before, &e.state());
    };

    // Name taken: a link with the host veth's name that is not ours.
    let host_if = wiring::host_veth_name(&s.name);
    e.host.ip(&format!("link add {host_if} type bridge"));
    refused("host veth name taken", &s, Step::Wire(wiring::Step::CreateVeth), ErrorKind::Exists);
    e.host.ip(&format!("link del {host_if}"));

    // The container's namespace is missing; the host side's too.
    let mut missing = s.clone();
    missing.netns = PathBuf::from("/run/netns").join(unique("gone"));
    refused("namespace missing", &missing, Step::Wire(wiring::Step::OpenNetns), ErrorKind::NotFound);
    let err = container::add(&e.root.pins, Some(&unique("nohost")), &s).unwrap_err();
    assert_eq!((err.step, err.kind), (Step::Check, ErrorKind::NotFound), "{err}");

    // Address in use: another container has it.
    let other_ns = TestNs::new();
    let mut first = Spec::new(&unique("first"), path(&other_ns), s.ip4);
    first.ports = vec![port("30009:25565")];
    e.add(&first).unwrap_or_else(|err| panic!("first container: {err}"));
    let mut same_ip = s.clone();
    same_ip.ports.clear();
    refused("address in use", &same_ip, Step::Wire(wiring::Step::HostRoute4), ErrorKind::InUse);

    // A host port another container publishes.
    let mut taken = s.clone();
    taken.ip4 = Ipv4Addr::new(10, 77, 0, 9);
    taken.ports = vec![port("30009:25565")];
    refused("port in use", &taken, Step::Check, ErrorKind::InUse);
    container::del(&e.root.pins, &first.name).unwrap();

    // Bad arguments.
    let mut v6 = s.clone();
    v6.ip6 = Some("fe80::2".parse().unwrap());
    refused("link-local IPv6 address", &v6, Step::Check, ErrorKind::Invalid);
    let mut bad = s.clone();
    bad.name = "no spaces".into();
    refused("bad name", &bad, Step::Check, ErrorKind::Invalid);
    let mut bad = s.clone();
    bad.mtu = Some(100_000);
    refused("MTU", &bad, Step::Wire(wiring::Step::CreateVeth), ErrorKind::Invalid);

    // The datapath not loaded.
    let unloaded = datapath::kernel::pins::PinRoot::new(PathBuf::from("/sys/fs/bpf").join(unique("dpnone")));
    let before = snapshot(&e.host.name);
    let err = container::add(&unloaded, Some(&e.host.name), &s).unwrap_err();
    assert_eq!((err.step, err.kind), (Step::Check, ErrorKind::NotLoaded), "{err}");
    assert_same("not loaded", &before, &snapshot(&e.host.name));
    assert!(!unloaded.root().exists());
    let err = container::del(&unloaded, &s.name).unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotLoaded);

    // After all that, it works.
    e.add(&s).unwrap_or_else(|err| panic!("add after the refusals: {err}"));
    assert_wired(&e, &s);
}

#[test]
fn commands_killed_half_way_are_finished_by_the_next_one() {
    if !privileged("commands_killed_half_way_are_finished_by_the_next_one") {
        return;
    }
    let e = Env::new();
    let s = e.spec();
    let before = e.state();
    let records = Containers::open(&e.root.pins).unwrap();
    let kill_points = [Step::Attach, Step::Register, Step::Publish(s.ports[1]), Step::Commit];
    for (i, step) in kill_points.iter().enumerate() {
        container::add_killed_at(&e.root.pins, Some(&e.host.name), &s, *step).unwrap_err();
        let r = records.get(&s.name).unwrap().expect("the record of the killed add");
        assert_eq!(r.state, State::Adding, "killed at {step}");
        assert_ne!(r.host_ifindex, 0, "killed at {step}: the veth was recorded");
        if i % 2 == 0 {
            // `del` removes what it left...
            assert_eq!(container::del(&e.root.pins, &s.name).unwrap(), Change::Deleted);
            assert_same(&format!("killed at {step}, then del"), &before, &e.state());
        } else {
            // ...and so does the next `add` of the name before its own.
            assert_eq!(e.add(&s).unwrap().change, Change::Added, "killed at {step}");
            assert_wired(&e, &s);
            container::del(&e.root.pins, &s.name).unwrap();
            assert_same(&format!("killed at {step}, add, del"), &before, &e.state());
        }
    }

    // A del killed after it marked the record: the next del finishes it,
    // and an add of the name starts afresh.
    e.add(&s).unwrap();
    let mut r = records.get(&s.name).unwrap().unwrap();
    r.state = State::Deleting;
    records.put(&r).unwrap();
    assert_eq!(e.add(&s).unwrap().change, Change::Added);
    assert_wired(&e, &s);
    let mut r = records.get(&s.name).unwrap().unwrap();
    r.state = State::Deleting;
    records.put(&r).unwrap();
    assert_eq!(container::del(&e.root.pins, &s.name).unwrap(), Change::Deleted);
    assert_same("after the killed del was finished", &before, &e.state());
}

#[test]
fn records_survive_load_and_a_veth_deleted_behind_its_back_is_made_again() {
    if !privileged("records_survive_load_and_a_veth_deleted_behind_its_back_is_made_again") {
        return;
    }
    let e = Env::new();
    let s = e.spec();
    e.add(&s).unwrap();
    let made = e.state();
    ops::load(&e.root.pins, Default::default()).expect("load again");
    assert_wired(&e, &s);
    assert_eq!(e.add(&s).unwrap().change, Change::Unchanged);
    assert_same("after load", &made, &e.state());

    // Someone deletes the veth: the same add wires the container again.
    e.host.ip(&format!("link del {}", wiring::host_veth_name(&s.name)));
    assert_eq!(e.add(&s).unwrap().change, Change::Added);
    assert_wired(&e, &s);
    container::del(&e.root.pins, &s.name).unwrap();
}

#[test]
fn two_hundred_add_del_cycles_leave_nothing() {
    if !privileged("two_hundred_add_del_cycles_leave_nothing") {
        return;
    }
    let e = Env::new();
    let s = e.spec();
    let before = e.state();
    for i in 0..200 {
        let a = e.add(&s).unwrap_or_else(|err| panic!("cycle {i}: add: {err}"));
        assert_eq!(a.change, Change::Added, "cycle {i}");
        container::check(&e.root.pins, &s.name).unwrap_or_else(|err| panic!("cycle {i}: check: {err:#}"));
        assert_eq!(container::del(&e.root.pins, &s.name).unwrap(), Change::Deleted, "cycle {i}");
    }
    assert_same("after 200 cycles", &before, &e.state());
}

#[test]
fn the_command_line_adds_gets_lists_and_deletes() {
    if !privileged("the_command_line_adds_gets_lists_and_deletes") {
        return;
    }
    let e = Env::new();
    let root = e.root.pins.root();
    let before = e.state();
    let name = unique("cli");
    // -n is the host side's namespace, --netns the container's.
    let add = [
        "container", "add", &name, "--netns", &e.ctr.name, "--ip", "10.77.0.5", "--publish", "30005:25565",
        "--publish", "30006:19132/udp", "--mtu", "1400", "--json",
    ];
    let o = ctl(root, Some(&e.host.name), &add);
    assert_ok("container add", &o);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["result"], "added");
    assert_eq!(v["container"]["host_netns"], e.host.name.as_str());
    assert_eq!(v["container"]["netns"], path(&e.ctr).display().to_string());
    assert_eq!(v["container"]["ports"][1]["proto"], "udp");
    let o = ctl(root, Some(&e.host.name), &add);
    assert_ok("container add again", &o);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&o.stdout).unwrap()["result"], "unchanged");

    let o = ctl(root, None, &["container", "get", &name]);
    assert_ok("container get", &o);
    assert!(o.stdout.contains("30005:25565/tcp published") && o.stdout.contains("30006:19132/udp published"), "{}", o.stdout);
    let o = ctl(root, None, &["container", "list", "--json"]);
    assert_ok("container list", &o);
    let l: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(l.as_array().unwrap().len(), 1);
    assert_eq!(l[0]["state"], "ready");

    // Failures: one line, nothing changed.
    let made = e.state();
    for (what, args) in [
        ("other arguments", vec!["container", "add", &name, "--netns", &e.ctr.name, "--ip", "10.77.0.6"]),
        ("link-local IPv6", vec!["container", "add", "x6", "--netns", &e.ctr.name, "--ip", "10.77.0.7", "--ip6", "fe80::7"]),
        ("bad publish", vec!["container", "add", "xp", "--netns", &e.ctr.name, "--ip", "10.77.0.7", "--publish", "30007"]),
        ("no --netns", vec!["container", "add", "xn", "--ip", "10.77.0.7"]),
        ("bad name", vec!["container", "get", "a b"]),
        ("missing", vec!["container", "get", "nobody"]),
    ] {
        let o = ctl(root, Some(&e.host.name), &args);
        assert_one_line_failure(what, &o);
        assert_same(what, &made, &e.state());
    }
    let o = ctl(root, Some(&e.host.name), &["container", "add", "xn", "--ip", "10.77.0.7"]);
    assert!(o.stderr.contains("--netns <NAME|PATH>"), "the error names --netns: {}", o.stderr);

    let o = ctl(root, None, &["container", "del", &name, "--json"]);
    assert_ok("container del", &o);
    assert!(o.stdout.contains("deleted"));
    let o = ctl(root, None, &["container", "del", &name, "--json"]);
    assert_ok("container del again", &o);
    assert!(o.stdout.contains("absent"));
    assert_same("after del", &before, &e.state());
}

/// A dual-stack container (`--ip6`): wired with its IPv6 address and the
/// gateway fe80::1, registered in veths6 too, and every port it publishes
/// without an address published on the default IPv6 addresses as well;
/// `del` removes all of it.
#[test]
fn a_dual_stack_container() {
    if !privileged("a_dual_stack_container") {
        return;
    }
    let e = Env::new();
    let before = e.state();
    let mut s = e.spec();
    let ip6: std::net::Ipv6Addr = "fd00:77::2".parse().unwrap();
    s.ip6 = Some(ip6);
    e.add(&s).unwrap_or_else(|err| panic!("container add --ip6: {err}"));
    assert_wired(&e, &s);
    let pins = &e.root.pins;
    let rec = container::check(pins, &s.name).unwrap();
    assert_eq!(rec.ip6, Some(ip6));
    let v = VethMap::open(pins).unwrap().get(rec.host_ifindex).unwrap().unwrap();
    assert_eq!((v.ctr_ip6, v.host_ip6), (Some(ip6), Some("fe80::1".parse().unwrap())));
    let addrs = ip_json(&format!("-n {} -6 addr show dev eth0", e.ctr.name));
    assert!(addrs[0]["addr_info"].as_array().unwrap().iter().any(|a| a["local"] == ip6.to_string()), "{addrs}");
    let mappings = maps::open(pins, maps::name::MAPPINGS).unwrap();
    for p in &s.ports {
        let m = published::get_in(&mappings, datapath::abi::AF_INET6, p.ext(), p.host_port, p.proto)
            .unwrap()
            .unwrap_or_else(|| panic!("{p} is not published over IPv6"))
            .mapping;
        assert_eq!((m.ctr_ip, m.ctr_port, m.veth_ifindex), (ip6.into(), p.ctr_port, rec.host_ifindex));
    }
    // The same arguments again change nothing; without --ip6 they differ.
    assert_eq!(e.add(&s).unwrap().change, Change::Unchanged);
    let mut v4_only = s.clone();
    v4_only.ip6 = None;
    assert_eq!(e.add(&v4_only).unwrap_err().kind, ErrorKind::Exists);
    container::del(pins, &s.name).unwrap();
    assert_same("after del", &before, &e.state());
}
