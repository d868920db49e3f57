//! `datapathctl` itself, on real interfaces in a scratch network namespace:
//! load, attach, map commands with --json, stats, status, detach, unload,
//! and that unload leaves no pin, no filter and no qdisc of ours behind.

mod common;

use std::process::{Command, Output};

use common::*;

struct Ctl {
    root: String,
}

impl Ctl {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_datapathctl"))
            .args(args)
            .env("DATAPATH_PIN_ROOT", &self.root)
            .output()
            .expect("running datapathctl")
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "datapathctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    #[track_caller]
    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("datapathctl {}: not JSON ({e}): {out}", args.join(" ")))
    }
}

/// Unloads (through the binary) even if the test fails.
struct Unload<'a>(&'a Ctl);

impl Drop for Unload<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["unload"]);
        let _ = std::fs::remove_dir_all(&self.0.root);
    }
}

fn tc_show(ns: &TestNs, what: &str) -> String {
    let o = Command::new("ip").args(["netns", "exec", &ns.name, "tc"]).args(what.split(' ')).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn command_line_on_real_interfaces() {
    if !privileged("command_line_on_real_interfaces") {
        return;
    }
    let ctl = Ctl { root: format!("/sys/fs/bpf/{}", unique("dpt")) };
    let _unload = Unload(&ctl);
    let ns = TestNs::new();
    ns.ip("link add dpext type veth peer name dpextp");
    ns.ip("link add dpv0 type veth peer name dpc0");
    ns.ip("addr add 10.0.0.1/32 dev dpv0");
    ns.ip("addr add 198.51.100.1/24 dev dpext");
    ns.ip("addr add 198.51.100.2/24 dev dpext");
    for i in ["dpext", "dpv0", "dpc0", "dpextp"] {
        ns.ip(&format!("link set {i} up"));
    }
    let n = ns.name.as_str();

    let r = ctl.json(&["load"]);
    assert_eq!(r["maps_created"].as_array().unwrap().len(), datapath::maps::name::ALL.len(), "{r}");
    ctl.ok(&["-n", n, "attach", "dnat", "dpext"]);
    let xdp_id = xdp_prog(&ns, "dpext").expect("attach dnat puts the guard on XDP");
    ctl.ok(&["-n", n, "attach", "dnat", "dpext"]); // attaching what is attached
    assert_eq!(xdp_prog(&ns, "dpext"), Some(xdp_id), "attaching again changes nothing");
    ctl.ok(&["-n", n, "attach", "host", "dpv0"]);
    ctl.ok(&["-n", n, "map", "snat", "set", "198.51.100.1", "dpext"]);
    ctl.ok(&["-n", n, "map", "veth", "add", "dpv0", "10.0.0.2"]);
    ctl.ok(&["-n", n, "map", "dnat", "add", "30001", "10.0.0.2", "dpv0", "02:00:00:00:00:02"]);
    let (idx, _) = ns.iface("dpv0");
    ctl.ok(&["-n", n, "map", "dnat", "add", "30002", "10.0.0.2", &idx.to_string(), "02:00:00:00:00:02", "--proto", "udp", "--to-port", "19132"]);
    // A second external address, with a mapping of its own.
    assert_eq!(ctl.json(&["-n", n, "map", "external", "add", "198.51.100.2", "dpext"]), serde_json::json!({"result": "added"}));
    ctl.ok(&["-n", n, "map", "dnat", "add", "198.51.100.2:25565", "10.0.0.2", "dpv0", "02:00:00:00:00:02"]);
    let (ext_idx, _) = ns.iface("dpext");
    assert_eq!(
        ctl.json(&["map", "external", "list"]),
        serde_json::json!([
            {"addr": "198.51.100.1", "ifindex": ext_idx, "ifname": "dpext", "default": true},
            {"addr": "198.51.100.2", "ifindex": ext_idx, "ifname": "dpext", "default": false},
        ])
    );
    assert_eq!(
        ctl.ok(&["map", "external", "list"]),
        format!("198.51.100.1 on dpext (ifindex {ext_idx}) default\n198.51.100.2 on dpext (ifindex {ext_idx})\n")
    );

    let ingress = tc_show(&ns, "filter show dev dpv0 ingress");
    for (prog, pref) in [("arp", 1), ("snat", 2), ("tproxy_ingress", 3)] {
        assert!(
            ingress.contains(&format!("pref {pref} bpf chain 0 handle 0xd47a {prog}")),
            "{prog} at priority {pref} on dpv0 ingress: {ingress}"
        );
    }
    assert!(tc_show(&ns, "filter show dev dpv0 egress").contains("tproxy_egress"));
    assert!(tc_show(&ns, "filter show dev dpext ingress").contains("dnat"));

    let list = ctl.json(&["map", "dnat", "list"]);
    let want = serde_json::json!([
        {"ext_addr": "default", "host_port": 30001, "proto": "tcp", "ctr_ip": "10.0.0.2", "ctr_port": 25565, "ctr_mac": "02:00:00:00:00:02", "veth_ifindex": idx, "slot": 0},
        {"ext_addr": "default", "host_port": 30002, "proto": "udp", "ctr_ip": "10.0.0.2", "ctr_port": 19132, "ctr_mac": "02:00:00:00:00:02", "veth_ifindex": idx, "slot": 1},
        {"ext_addr": "198.51.100.2", "host_port": 25565, "proto": "tcp", "ctr_ip": "10.0.0.2", "ctr_port": 25565, "ctr_mac": "02:00:00:00:00:02", "veth_ifindex": idx, "slot": 2},
    ]);
    assert_eq!(list, want);
    assert_eq!(ctl.json(&["map", "dnat", "get", "30002", "--proto", "udp"]), want[1]);
    assert_eq!(ctl.json(&["map", "dnat", "get", "198.51.100.2:25565"]), want[2]);
    assert_eq!(
        ctl.ok(&["map", "dnat", "list"]),
        format!(
            "30001/tcp on the default addresses -> 10.0.0.2:25565 mac 02:00:00:00:00:02 veth ifindex {idx} slot 0\n\
             30002/udp on the default addresses -> 10.0.0.2:19132 mac 02:00:00:00:00:02 veth ifindex {idx} slot 1\n\
             198.51.100.2:25565/tcp -> 10.0.0.2:25565 mac 02:00:00:00:00:02 veth ifindex {idx} slot 2\n"
        )
    );
    assert_eq!(ctl.json(&["-n", n, "map", "veth", "get", "dpv0"])["host_ip"], "10.0.0.1");
    assert_eq!(ctl.json(&["map", "snat", "get"])["ext_ip"], "198.51.100.1");

    let stats = ctl.json(&["stats"]);
    let rows = stats.as_array().unwrap();
    assert!(rows.len() >= 30, "one row per program and reason: {stats}");
    assert!(rows.iter().any(|r| r["program"] == "dnat" && r["reason"] == "redirect"));
    assert!(rows.iter().all(|r| r["packets"].is_u64() && r["bytes"].is_u64()));

    let st = ctl.json(&["status"]);
    assert_eq!(st["loaded"], true);
    assert_eq!(st["programs"].as_array().unwrap().len(), 11);
    let att = st["attachments"].as_array().unwrap();
    assert_eq!(att.len(), 2, "{st}");
    let fill = |name: &str| {
        let m = st["maps"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap();
        (m["entries"].as_u64().unwrap(), m["capacity"].as_u64().unwrap())
    };
    assert_eq!(fill("mappings"), (3, 65536));
    assert_eq!(fill("dnat4"), (3, 131072));
    assert_eq!(fill("flows4"), (0, 262144));
    assert_eq!(fill("externals"), (2, 1024));
    assert_eq!(st["externals"].as_array().unwrap().len(), 2, "{st}");
    let text = ctl.ok(&["status"]);
    assert!(text.contains("attached:"), "{text}");
    assert!(text.contains("external addresses:\n  198.51.100.1 on dpext"), "{text}");
    let dnat = att.iter().find(|a| a["kind"] == "dnat").unwrap();
    assert_eq!(dnat["xdp"], "generic", "a veth runs the guard in generic XDP: {st}");
    assert!(text.contains("(guard: generic XDP)"), "{text}");

    // Reload in place: same handle and priority, entries kept.
    ctl.ok(&["load"]);
    assert!(tc_show(&ns, "filter show dev dpv0 ingress").contains("handle 0xd47a arp"));
    let new_id = xdp_prog(&ns, "dpext").expect("the guard is still attached after load");
    assert_ne!(new_id, xdp_id, "load replaced the guard in place");
    assert_eq!(ctl.json(&["map", "dnat", "list"]), want);

    ctl.ok(&["map", "dnat", "del", "30002", "--proto", "udp"]);
    ctl.ok(&["map", "dnat", "del", "30002", "--proto", "udp"]); // deleting what is gone
    assert_eq!(ctl.json(&["map", "dnat", "del", "198.51.100.2:25565"]), serde_json::json!({"result": "deleted"}));
    assert_eq!(ctl.json(&["map", "external", "del", "198.51.100.2"]), serde_json::json!({"result": "deleted"}));
    assert_eq!(ctl.json(&["map", "external", "del", "198.51.100.2"]), serde_json::json!({"result": "absent"}));
    ctl.ok(&["-n", n, "detach", "host", "dpv0"]);
    ctl.ok(&["-n", n, "detach", "host", "dpv0"]);
    assert!(!tc_show(&ns, "qdisc show dev dpv0").contains("clsact"), "clsact created by attach is removed");

    ctl.ok(&["unload"]);
    assert!(!std::path::Path::new(&ctl.root).exists(), "unload removes the pin root");
    assert!(!tc_show(&ns, "qdisc show dev dpext").contains("clsact"), "unload removes our clsact qdisc");
    assert!(!tc_show(&ns, "filter show dev dpext ingress").contains("dnat"));
    assert_eq!(xdp_prog(&ns, "dpext"), None, "unload removes the guard");
    ctl.ok(&["unload"]); // unloading what is not loaded
}

/// The id of the XDP program named `guard` on an interface, per `ip -d`.
fn xdp_prog(ns: &TestNs, dev: &str) -> Option<u64> {
    let out = std::process::Command::new("ip").args(["-n", &ns.name, "-j", "-d", "link", "show", "dev", dev]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let xdp = &v[0]["xdp"];
    let prog = if xdp["prog"].is_object() { &xdp["prog"] } else { &xdp["attached"][0]["prog"] };
    (prog["name"] == "guard").then(|| prog["id"].as_u64()).flatten()
}

/// An XDP program of someone else's (named "foreign"), loaded from two
/// instructions: r0 = XDP_PASS; exit.
fn foreign_xdp() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let insns = [
        libbpf_sys::bpf_insn { code: 0xb7, _bitfield_1: libbpf_sys::bpf_insn::new_bitfield_1(0, 0), off: 0, imm: 2, ..Default::default() },
        libbpf_sys::bpf_insn { code: 0x95, ..Default::default() },
    ];
    let name = std::ffi::CString::new("foreign").unwrap();
    let lic = std::ffi::CString::new("GPL").unwrap();
    // SAFETY: the instructions, name and license outlive the call.
    let fd = unsafe {
        libbpf_sys::bpf_prog_load(libbpf_sys::BPF_PROG_TYPE_XDP, name.as_ptr(), lic.as_ptr(), insns.as_ptr(), 2, std::ptr::null_mut())
    };
    assert!(fd >= 0, "loading a foreign XDP program: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor owned by nobody else.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

#[test]
fn a_foreign_xdp_program_is_refused_and_left_in_place() {
    if !privileged("a_foreign_xdp_program_is_refused_and_left_in_place") {
        return;
    }
    use std::os::fd::AsRawFd;
    let ctl = Ctl { root: format!("/sys/fs/bpf/{}", unique("dpt")) };
    let _unload = Unload(&ctl);
    let ns = TestNs::new();
    ns.ip("link add dpext type veth peer name dpextp");
    let prog = foreign_xdp();
    {
        let _g = datapath::net::netns::NetnsGuard::enter(Some(&ns.name)).unwrap();
        let idx = datapath::net::netif::index_of("dpext").unwrap();
        // SAFETY: valid descriptor; NULL opts are allowed.
        let rc = unsafe { libbpf_sys::bpf_xdp_attach(idx as i32, prog.as_raw_fd(), libbpf_sys::XDP_FLAGS_SKB_MODE, std::ptr::null()) };
        assert_eq!(rc, 0, "attaching the foreign program");
    }
    let foreign = || {
        let out = std::process::Command::new("ip").args(["-n", &ns.name, "-d", "link", "show", "dev", "dpext"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).contains("name foreign")
    };
    assert!(foreign());
    ctl.ok(&["load"]);
    let o = common::run_ctl(std::process::Command::new(env!("CARGO_BIN_EXE_datapathctl")), std::path::Path::new(&ctl.root), Some(&ns.name), &["attach", "dnat", "dpext"]);
    common::assert_one_line_failure("attach dnat over a foreign XDP program", &o);
    assert!(o.stderr.contains("foreign") && o.stderr.contains("someone else"), "{}", o.stderr);
    assert!(foreign(), "the foreign program is still there");
    assert!(!tc_show(&ns, "filter show dev dpext ingress").contains("dnat"), "nothing was attached");
    assert_eq!(ctl.json(&["status"])["attachments"], serde_json::json!([]), "nothing was recorded");
    ctl.ok(&["-n", &ns.name, "detach", "dnat", "dpext"]);
    ctl.ok(&["unload"]);
    assert!(foreign(), "detach and unload leave someone else's XDP program alone");
}

#[test]
fn a_foreign_clsact_qdisc_is_left_in_place() {
    if !privileged("a_foreign_clsact_qdisc_is_left_in_place") {
        return;
    }
    let ctl = Ctl { root: format!("/sys/fs/bpf/{}", unique("dpt")) };
    let _unload = Unload(&ctl);
    let ns = TestNs::new();
    ns.ip("link add dpext type veth peer name dpextp");
    sh(&format!("ip netns exec {} tc qdisc add dev dpext clsact", ns.name));
    ctl.ok(&["load"]);
    ctl.ok(&["-n", &ns.name, "attach", "dnat", "dpext"]);
    ctl.ok(&["-n", &ns.name, "detach", "dnat", "dpext"]);
    assert!(tc_show(&ns, "qdisc show dev dpext").contains("clsact"), "a qdisc we did not create stays");
    assert!(!tc_show(&ns, "filter show dev dpext ingress").contains("dnat"));
}

/// `status --json` attachments as (kind, interface, ifindex).
fn attached(ctl: &Ctl) -> Vec<(String, String, u64)> {
    let st = ctl.json(&["status"]);
    let mut v: Vec<_> = st["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["kind"].as_str().unwrap().to_string(), a["target"].as_str().unwrap().to_string(), a["ifindex"].as_u64().unwrap()))
        .collect();
    v.sort();
    v
}

/// An interface carries one kind: the other is refused with one line and
/// nothing changes, and detaching the other kind leaves it alone. A record
/// whose interface was deleted is replaced when its index or its name comes
/// back on another interface, and goes when the interface is detached by
/// name after it is gone.
#[test]
fn one_kind_per_interface_and_records_of_deleted_interfaces() {
    if !privileged("one_kind_per_interface_and_records_of_deleted_interfaces") {
        return;
    }
    let ctl = Ctl { root: format!("/sys/fs/bpf/{}", unique("dpt")) };
    let _unload = Unload(&ctl);
    let ns = TestNs::new();
    let n = ns.name.as_str();
    for i in ["dpa", "dpb", "dpc", "dpe", "dpf"] {
        ns.ip(&format!("link add {i} type veth peer name {i}p"));
    }
    ctl.ok(&["load"]);
    ctl.ok(&["-n", n, "attach", "host", "dpa"]);
    let filters_a = tc_show(&ns, "filter show dev dpa ingress");
    ctl.ok(&["-n", n, "attach", "host", "dpa"]); // attaching what is attached
    assert_eq!(tc_show(&ns, "filter show dev dpa ingress"), filters_a, "attaching again changes nothing");
    ctl.ok(&["-n", n, "attach", "dnat", "dpb"]);
    let filters_b = tc_show(&ns, "filter show dev dpb ingress");
    let before = attached(&ctl);

    for (args, says) in [
        (["-n", n, "attach", "dnat", "dpa"], "dpa carries the host programs"),
        (["-n", n, "attach", "host", "dpb"], "dpb carries the dnat programs"),
    ] {
        let o = common::run_ctl(Command::new(env!("CARGO_BIN_EXE_datapathctl")), ctl.root.as_ref(), None, &args);
        assert_one_line_failure(&args.join(" "), &o);
        assert!(o.stderr.contains(says), "{}: {:?}", args.join(" "), o.stderr);
    }
    // Detaching the kind an interface does not carry changes nothing.
    ctl.ok(&["-n", n, "detach", "dnat", "dpa"]);
    ctl.ok(&["-n", n, "detach", "host", "dpb"]);
    assert_eq!(tc_show(&ns, "filter show dev dpa ingress"), filters_a, "dpa after the refusals");
    assert_eq!(tc_show(&ns, "filter show dev dpb ingress"), filters_b, "dpb after the refusals");
    assert_eq!(attached(&ctl), before);

    // dpc is deleted; the kernel's next interface gets its index back.
    ctl.ok(&["-n", n, "attach", "host", "dpc"]);
    let (idx_c, _) = ns.iface("dpc");
    ns.ip("link del dpc");
    ns.ip(&format!("link add dpd index {idx_c} type veth peer name dpdp"));
    ctl.ok(&["-n", n, "attach", "dnat", "dpd"]);
    let now = attached(&ctl);
    assert!(now.contains(&("dnat".into(), "dpd".into(), u64::from(idx_c))), "{now:?}");
    assert!(!now.iter().any(|a| a.1 == "dpc"), "the record of the deleted dpc is replaced: {now:?}");

    // dpe is deleted and made again under the same name.
    ctl.ok(&["-n", n, "attach", "host", "dpe"]);
    ns.ip("link del dpe");
    ns.ip("link add dpe type veth peer name dpep");
    let (idx_e, _) = ns.iface("dpe");
    ctl.ok(&["-n", n, "attach", "host", "dpe"]);
    let now = attached(&ctl);
    let e: Vec<_> = now.iter().filter(|a| a.1 == "dpe").collect();
    assert_eq!(e, vec![&("host".to_string(), "dpe".to_string(), u64::from(idx_e))], "one record for dpe: {now:?}");

    // dpf is detached by name after it is gone.
    ctl.ok(&["-n", n, "attach", "host", "dpf"]);
    ns.ip("link del dpf");
    ctl.ok(&["-n", n, "detach", "host", "dpf"]);
    assert!(!attached(&ctl).iter().any(|a| a.1 == "dpf"), "the record of dpf is gone");
    assert_eq!(attached(&ctl).len(), 4, "dpa, dpb, dpd, dpe: {:?}", attached(&ctl));

    // Host veths share the pin root's two filter blocks: one qdisc each,
    // bound to them. Detaching one unbinds it and leaves the others' filters.
    let (ingress, egress) = datapath::kernel::attach::shared_blocks(&ctl.root);
    for v in ["dpa", "dpe"] {
        let q = tc_show(&ns, &format!("qdisc show dev {v}"));
        assert!(q.contains(&format!("ingress_block {ingress} egress_block {egress}")), "{v}: {q}");
    }
    ctl.ok(&["-n", n, "detach", "host", "dpe"]);
    assert!(!tc_show(&ns, "qdisc show dev dpe").contains("clsact"), "dpe is unbound");
    assert_eq!(tc_show(&ns, "filter show dev dpa ingress"), filters_a, "dpa keeps its filters");
    assert!(tc_show(&ns, "filter show dev dpa egress").contains("tproxy_egress"));
}

/// A cgroup of the test's own under the cgroup v2 mount, removed on drop.
struct Cgroup(std::path::PathBuf);

impl Cgroup {
    fn new() -> Self {
        let p = datapath::kernel::attach::cgroup2_root().unwrap().join(unique("dpt"));
        std::fs::create_dir(&p).unwrap();
        Self(p)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Everything setup configures, as `status --json` and the external
/// address show it.
fn host_state(ctl: &Ctl) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
    let st = ctl.json(&["status"]);
    let progs: Vec<&str> = st["programs"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    (st["attachments"].clone(), serde_json::json!(progs), st["externals"].clone())
}

#[test]
fn setup_sets_the_host_up_once_and_refuses_bad_input() {
    if !privileged("setup_sets_the_host_up_once_and_refuses_bad_input") {
        return;
    }
    let ctl = Ctl { root: format!("/sys/fs/bpf/{}", unique("dpt")) };
    let _unload = Unload(&ctl);
    let ns = TestNs::new();
    let cg = Cgroup::new();
    ns.ip("link add dpext type veth peer name dpextp");
    ns.ip("addr add 198.51.100.1/24 dev dpext");
    ns.ip("link set dpext up");
    let n = ns.name.as_str();

    // Bad input before anything is loaded: nothing is made.
    for (what, args) in [
        ("no such interface", vec!["-n", n, "setup", "--external", "nosuch0", "--proxy-cgroup", cg.path(), "--host-access-cgroup", cg.path()]),
        ("no such cgroup", vec!["-n", n, "setup", "--external", "dpext", "--proxy-cgroup", "/sys/fs/cgroup/no/such"]),
        ("broadcast address", vec!["-n", n, "setup", "--external", "dpext", "--address", "198.51.100.1", "--address", "255.255.255.255", "--proxy-cgroup", cg.path(), "--host-access-cgroup", cg.path()]),
        ("loopback address", vec!["-n", n, "setup", "--external", "dpext", "--address", "127.0.0.1", "--proxy-cgroup", cg.path(), "--host-access-cgroup", cg.path()]),
        ("multicast gateway", vec!["-n", n, "setup", "--external", "dpext", "--gateway", "224.0.0.1", "--proxy-cgroup", cg.path(), "--host-access-cgroup", cg.path()]),
        ("no such host access cgroup", vec!["-n", n, "setup", "--external", "dpext", "--proxy-cgroup", cg.path(), "--host-access-cgroup", "/sys/fs/cgroup/no/such"]),
        ("host access both named and refused", vec!["-n", n, "setup", "--external", "dpext", "--proxy-cgroup", cg.path(), "--host-access-cgroup", cg.path(), "--no-host-access"]),
        ("no --external", vec!["-n", n, "setup"]),
    ] {
        let o = ctl.run(&args);
        let out = CtlOut { code: o.status.code(), stdout: String::from_utf8_lossy(&o.stdout).into(), stderr: String::from_utf8_lossy(&o.stderr).into() };
        assert_one_line_failure(what, &out);
        assert!(!std::path::Path::new(&ctl.root).exists(), "{what}: nothing is loaded");
    }
    ns.ip("link add dpnoaddr type veth peer name dpnoaddrp");
    let o = ctl.run(&["-n", n, "setup", "--external", "dpnoaddr", "--proxy-cgroup", cg.path(), "--host-access-cgroup", cg.path()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no IPv4 address"), "{o:?}");

    // The interface's own address by default; everything attached.
    let r = ctl.json(&["-n", n, "setup", "--external", "dpext", "--proxy-cgroup", cg.path(), "--host-access-cgroup", cg.path()]);
    assert_eq!(r["addresses"], serde_json::json!(["198.51.100.1"]));
    assert_eq!(r["gateway"], "169.254.1.1");
    assert_eq!(r["external_interface"], "dpext");
    let first = host_state(&ctl);
    let targets: Vec<&str> = first.0.as_array().unwrap().iter().map(|a| a["target"].as_str().unwrap()).collect();
    let kinds: Vec<&str> = first.0.as_array().unwrap().iter().map(|a| a["kind"].as_str().unwrap()).collect();
    assert_eq!(targets, vec!["dpext", cg.path(), cg.path()], "dnat on the interface, getsockopt and host access on the cgroup: {}", first.0);
    assert_eq!(kinds, vec!["dnat", "getsockopt", "host-access"], "{}", first.0);
    assert_eq!(r["host_access_cgroup"], cg.path());
    assert_eq!((&first.2[0]["addr"], &first.2[0]["default"]), (&serde_json::json!("198.51.100.1"), &serde_json::json!(true)));
    assert!(tc_show(&ns, "filter show dev dpext ingress").contains("dnat"));

    // Again: the same state; a given address and gateway are taken.
    ctl.ok(&["-n", n, "setup", "--external", "dpext", "--proxy-cgroup", cg.path(), "--host-access-cgroup", cg.path()]);
    assert_eq!(host_state(&ctl), first);
    let r = ctl.json(&["-n", n, "setup", "--external", "dpext", "--address", "198.51.100.7", "--gateway", "169.254.7.1", "--proxy-cgroup", cg.path(), "--host-access-cgroup", cg.path()]);
    assert_eq!((&r["addresses"][0], &r["gateway"]), (&serde_json::json!("198.51.100.7"), &serde_json::json!("169.254.7.1")));
    // Addresses are added as default ones; the first stays.
    let ext: Vec<String> = ctl.json(&["map", "external", "list"]).as_array().unwrap().iter().map(|e| format!("{} {}", e["addr"], e["default"])).collect();
    assert_eq!(ext, vec!["\"198.51.100.1\" true", "\"198.51.100.7\" true"]);

    // The gateway does not change under containers.
    let ctr = TestNs::new();
    let added = ctl.json(&["-n", n, "container", "add", "gwtest", "--netns", &ctr.name, "--ip", "10.88.0.2"]);
    assert_eq!(added["container"]["gateway4"], "169.254.7.1", "new containers get the gateway setup set");
    let o = ctl.run(&["-n", n, "setup", "--external", "dpext", "--gateway", "169.254.1.1", "--proxy-cgroup", cg.path(), "--host-access-cgroup", cg.path()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("in use by 1 container"), "{o:?}");
    ctl.ok(&["container", "del", "gwtest"]);
    ctl.ok(&["-n", n, "setup", "--external", "dpext", "--gateway", "169.254.1.1", "--proxy-cgroup", cg.path(), "--host-access-cgroup", cg.path()]);
}

#[test]
fn the_boot_script_runs_setup_and_refuses_a_state_it_cannot_apply() {
    if !privileged("the_boot_script_runs_setup_and_refuses_a_state_it_cannot_apply") {
        return;
    }
    let ctl = Ctl { root: format!("/sys/fs/bpf/{}", unique("dpt")) };
    let _unload = Unload(&ctl);
    let ns = TestNs::new();
    let cg = Cgroup::new();
    ns.ip("link add dpext type veth peer name dpextp");
    ns.ip("addr add 198.51.100.1/24 dev dpext");
    ns.ip("link set dpext up");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/systemd/datapath-boot");
    let boot = |state: &str| {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg(script)
            .env("DATAPATHCTL", env!("CARGO_BIN_EXE_datapathctl"))
            .env("DATAPATH_PIN_ROOT", &ctl.root)
            .env("DATAPATH_EXTERNAL", "dpext")
            .env("DATAPATH_ADDRESS", "198.51.100.1")
            .env("DATAPATH_PROXY_CGROUP", cg.path())
            .env("DATAPATH_GATEWAY", "")
            .env("DATAPATH_HOST_ACCESS_CGROUP", cg.path())
            .env("DATAPATH_STATE", state)
            .output()
            .unwrap()
    };
    let o = boot("/nonexistent/state");
    assert!(o.status.success(), "{o:?}");
    let first = host_state(&ctl);
    assert_eq!((&first.2[0]["addr"], &first.2[0]["default"]), (&serde_json::json!("198.51.100.1"), &serde_json::json!(true)));
    let kinds: Vec<(&str, &str)> = first.0.as_array().unwrap().iter().map(|a| (a["kind"].as_str().unwrap(), a["target"].as_str().unwrap())).collect();
    assert_eq!(kinds, vec![("dnat", "dpext"), ("getsockopt", cg.path()), ("host-access", cg.path())], "{}", first.0);
    let o = boot("");
    assert!(o.status.success(), "{o:?}");
    assert_eq!(host_state(&ctl), first, "a second boot changes nothing");

    // A saved state this release cannot apply is an error, not silence.
    let state = std::env::temp_dir().join(unique("dpstate"));
    std::fs::write(&state, "").unwrap();
    let o = boot(state.to_str().unwrap());
    let _ = std::fs::remove_file(&state);
    assert!(!o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("not restored"), "{o:?}");
}
