//! `datapath-cni` driven exactly as a container runtime drives it: the
//! binary run with the CNI environment and the network configuration on
//! stdin, inside a host namespace of the test's own (with `nsenter`, which
//! keeps /sys/fs/bpf), with the real `host-local` IPAM plugin
//! (containernetworking-plugins, installed by scripts/tools) keeping its
//! leases in a directory of the test's own.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use common::topo::{assert_same, snapshot, within};
use common::{privileged, unique, TestNs, TestRoot};
use datapath::cni::code;
use datapath::maps::containers::Containers;
use datapath::maps::{self, published, Ext, VethMap};
use datapath::ops::container;

const PLUGIN: &str = env!("CARGO_BIN_EXE_datapath-cni");
/// Where Debian's containernetworking-plugins puts host-local.
const CNI_PLUGINS: &str = "/usr/lib/cni";

/// A loaded pin root, a host namespace the plugin runs in, a lease
/// directory for host-local, and a network name, all the test's own.
struct Env {
    root: TestRoot,
    host: TestNs,
    leases: PathBuf,
    net: String,
}

impl Env {
    fn new() -> Self {
        assert!(
            Path::new(CNI_PLUGINS).join("host-local").is_file(),
            "{CNI_PLUGINS}/host-local is missing: scripts/tools installs containernetworking-plugins"
        );
        let leases = std::env::temp_dir().join(unique("dpcni"));
        std::fs::create_dir(&leases).unwrap();
        Self { root: TestRoot::loaded(), host: TestNs::new(), leases, net: unique("net") }
    }

    /// The network configuration, as podman sends it: with the
    /// capabilities it declared and keys this plugin does not know.
    fn conf(&self, version: &str, ports: Value) -> Value {
        json!({
            "cniVersion": version,
            "name": self.net,
            "type": "datapath-cni",
            "pinRoot": self.root.path(),
            "mtu": 1400,
            "capabilities": {"portMappings": true},
            "someOtherKey": {"kept": true},
            "ipam": {
                "type": "host-local",
                "dataDir": self.leases,
                "ranges": [[{"subnet": "10.66.0.0/24"}]],
            },
            "runtimeConfig": {"portMappings": ports},
        })
    }

    /// Runs the plugin in the host namespace: (exit code, stdout as JSON
    /// or Null when empty).
    fn run(&self, command: &str, id: Option<&str>, netns: Option<&Path>, conf: &Value) -> (i32, Value) {
        self.run_raw(command, id, netns, Some("eth0"), conf.to_string().as_bytes())
    }

    fn run_raw(&self, command: &str, id: Option<&str>, netns: Option<&Path>, ifname: Option<&str>, stdin: &[u8]) -> (i32, Value) {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.host.name)).arg(PLUGIN);
        c.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").env("CNI_COMMAND", command).env("CNI_PATH", CNI_PLUGINS);
        c.env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=test");
        if let Some(id) = id {
            c.env("CNI_CONTAINERID", id);
        }
        if let Some(n) = netns {
            c.env("CNI_NETNS", n);
        }
        if let Some(i) = ifname {
            c.env("CNI_IFNAME", i);
        }
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("running datapath-cni");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{command}: stdout is not JSON ({e}): {text}"))
        };
        (out.status.code().unwrap_or(-1), v)
    }

    /// The addresses host-local has handed out (its lease files).
    fn leases(&self) -> BTreeSet<String> {
        let dir = self.leases.join(&self.net);
        let Ok(entries) = std::fs::read_dir(&dir) else { return BTreeSet::new() };
        entries
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.parse::<Ipv4Addr>().is_ok())
            .collect()
    }

    /// Everything ADD could have touched: the host namespace, the maps,
    /// the records, the leases.
    fn state(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = snapshot(&self.host.name).into_iter().map(|l| format!("host {l}")).collect();
        let pins = &self.root.pins;
        for p in published::list(pins).unwrap() {
            out.insert(format!("mapping {}", p.mapping.describe()));
        }
        out.insert(format!("mapping counts {:?}", published::counts(pins).unwrap()));
        for v in VethMap::open(pins).unwrap().list().unwrap() {
            out.insert(format!("veth {} {}", v.name, v.ctr_ip));
        }
        for r in datapath::kernel::attach::Records::open(pins).unwrap().list().unwrap() {
            out.insert(format!("attachment {} {}", r.netns, r.target));
        }
        for c in Containers::open(pins).unwrap().list().unwrap() {
            out.insert(format!("container {}", c.name));
        }
        for l in self.leases() {
            out.insert(format!("lease {l}"));
        }
        out
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.leases);
    }
}

fn ns_path(ns: &TestNs) -> PathBuf {
    PathBuf::from("/run/netns").join(&ns.name)
}

#[track_caller]
fn assert_error(what: &str, (rc, v): (i32, Value), want: u32) {
    assert_ne!(rc, 0, "{what}: exit 0, stdout {v}");
    assert_eq!(v["code"], want, "{what}: {v}");
    assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{what}: no msg: {v}");
    assert!(v["cniVersion"].is_string(), "{what}: no cniVersion: {v}");
}

#[test]
fn add_check_del_and_del_again() {
    if !privileged("add_check_del_and_del_again") {
        return;
    }
    let e = Env::new();
    let ctr = TestNs::new();
    let before = e.state();
    let ports = json!([{"hostPort": 30001, "containerPort": 25565, "protocol": "tcp"},
                       {"hostPort": 30002, "containerPort": 19132, "protocol": "udp"}]);
    let conf = e.conf("1.0.0", ports.clone());
    let id = "4f2a9c0d8e7b6a5f4f2a9c0d8e7b6a5f4f2a9c0d8e7b6a5f4f2a9c0d8e7b6a5f";
    let (rc, res) = e.run("ADD", Some(id), Some(&ns_path(&ctr)), &conf);
    assert_eq!(rc, 0, "ADD: {res}");

    // The result: the host veth, the container's interface in its
    // namespace, a /32 with the gateway, a default route through it.
    assert_eq!(res["cniVersion"], "1.0.0");
    let name = format!("{id}/eth0");
    // The plugin ran in the host namespace: its record's veth is there.
    let rec = within(&e.host.name, || container::check(&e.root.pins, &name)).unwrap_or_else(|err| panic!("check: {err:#}"));
    assert_eq!(rec.owner, e.net);
    assert_eq!(rec.mtu, Some(1400));
    assert_eq!(res["interfaces"][0]["name"], rec.host_ifname.as_str());
    assert_eq!(res["interfaces"][1]["name"], "eth0");
    assert_eq!(res["interfaces"][1]["sandbox"], ns_path(&ctr).display().to_string());
    assert_eq!(res["interfaces"][1]["mac"], datapath::net::netif::format_mac(&rec.ctr_mac.unwrap()));
    assert_eq!(res["ips"], json!([{"address": format!("{}/32", rec.ip4), "gateway": "169.254.1.1", "interface": 1}]));
    assert_eq!(res["routes"], json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]));
    assert_eq!(e.leases(), BTreeSet::from([rec.ip4.to_string()]));
    let mappings = maps::open(&e.root.pins, maps::name::MAPPINGS).unwrap();
    for (port, proto) in [(30001, datapath::abi::Proto::Tcp), (30002, datapath::abi::Proto::Udp)] {
        let m = published::get(&mappings, Ext::Default, port, proto).unwrap().expect("published").mapping;
        assert_eq!((m.ctr_ip, m.veth_ifindex), (rec.ip4.into(), rec.host_ifindex));
    }

    // CHECK with the ADD's result as prevResult passes; one that does not
    // match, or a port no longer published, fails with 106.
    let mut check = conf.clone();
    check["prevResult"] = res.clone();
    let (rc, v) = e.run("CHECK", Some(id), Some(&ns_path(&ctr)), &check);
    assert_eq!((rc, v), (0, Value::Null), "CHECK");
    let mut wrong = check.clone();
    wrong["prevResult"]["ips"][0]["address"] = json!("10.66.0.250/32");
    assert_error("CHECK with another address", e.run("CHECK", Some(id), Some(&ns_path(&ctr)), &wrong), code::CHECK_FAILED);
    let mut fewer = check.clone();
    fewer["runtimeConfig"]["portMappings"] = json!([ports[0]]);
    assert_error("CHECK with other ports", e.run("CHECK", Some(id), Some(&ns_path(&ctr)), &fewer), code::CHECK_FAILED);
    published::unpublish(&e.root.pins, Ext::Default, 30002, datapath::abi::Proto::Udp).unwrap();
    assert_error("CHECK with a port gone", e.run("CHECK", Some(id), Some(&ns_path(&ctr)), &check), code::CHECK_FAILED);
    assert_error("CHECK of an unknown container", e.run("CHECK", Some("nobody"), Some(&ns_path(&ctr)), &check), code::UNKNOWN_CONTAINER);

    // DEL with the prevResult, as runtimes send it; everything is gone
    // and the lease released. Again: success.
    let (rc, v) = e.run("DEL", Some(id), Some(&ns_path(&ctr)), &check);
    assert_eq!((rc, v), (0, Value::Null), "DEL");
    assert_same("after DEL", &before, &e.state());
    let (rc, v) = e.run("DEL", Some(id), Some(&ns_path(&ctr)), &check);
    assert_eq!((rc, v), (0, Value::Null), "DEL again");
    assert_same("after DEL again", &before, &e.state());
}

#[test]
fn del_with_the_namespace_gone_or_no_prev_result_and_old_spec_versions() {
    if !privileged("del_with_the_namespace_gone_or_no_prev_result_and_old_spec_versions") {
        return;
    }
    let e = Env::new();
    let before = e.state();
    for (i, version) in ["0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let ctr = TestNs::new();
        let conf = e.conf(version, json!([{"hostPort": 30010 + i, "containerPort": 25565}]));
        let id = format!("ctr{i}");
        let (rc, res) = e.run("ADD", Some(&id), Some(&ns_path(&ctr)), &conf);
        assert_eq!(rc, 0, "ADD {version}: {res}");
        assert_eq!(res["cniVersion"], *version);
        if *version == "0.4.0" {
            assert_eq!(res["ips"][0]["version"], "4", "0.4.0 results carry the IP version");
        } else {
            assert!(res["ips"][0].get("version").is_none());
        }
        let path = ns_path(&ctr);
        let mut del = conf.clone();
        match i {
            // The namespace is gone, CNI_NETNS still names it.
            0 => drop(ctr),
            // An empty prevResult.
            1 => del["prevResult"] = json!({}),
            // No CNI_NETNS and no prevResult at all.
            _ => {}
        }
        let netns = if i == 2 { None } else { Some(path.as_path()) };
        let (rc, v) = e.run("DEL", Some(&id), netns, &del);
        assert_eq!((rc, &v), (0, &Value::Null), "DEL {version}: {v}");
        assert_same(&format!("after DEL {version}"), &before, &e.state());
    }
}

#[test]
fn gc_removes_the_attachments_that_are_not_valid() {
    if !privileged("gc_removes_the_attachments_that_are_not_valid") {
        return;
    }
    let e = Env::new();
    let (a, b) = (TestNs::new(), TestNs::new());
    let conf = e.conf("1.1.0", json!([]));
    for (id, ns) in [("keep", &a), ("stale", &b)] {
        let (rc, v) = e.run("ADD", Some(id), Some(&ns_path(ns)), &conf);
        assert_eq!(rc, 0, "ADD {id}: {v}");
    }
    // Containers that are not this network's: one `container add`, one of
    // another network.
    let c = TestNs::new();
    let mine = container::Spec::new(&unique("cli"), ns_path(&c), Ipv4Addr::new(10, 66, 1, 2));
    container::add(&e.root.pins, Some(&e.host.name), &mine).unwrap();
    let d = TestNs::new();
    let mut other = e.conf("1.1.0", json!([]));
    other["name"] = json!(unique("other"));
    other["ipam"]["ranges"] = json!([[{"subnet": "10.66.2.0/24"}]]);
    let (rc, v) = e.run("ADD", Some("stale"), Some(&ns_path(&d)), &{
        let mut o = other.clone();
        o["ipam"]["dataDir"] = json!(e.leases.join("other"));
        o
    });
    assert!(rc != 0, "the same container id and ifname in another network of one pin root is refused: {v}");
    assert_eq!(v["code"], code::EXISTS, "{v}");
    let (rc, v) = e.run("ADD", Some("elsewhere"), Some(&ns_path(&d)), &{
        let mut o = other.clone();
        o["ipam"]["dataDir"] = json!(e.leases.join("other"));
        o
    });
    assert_eq!(rc, 0, "ADD in another network: {v}");
    let leases_before = e.leases();
    assert_eq!(leases_before.len(), 2);

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}, {"containerID": "gone", "ifname": "eth0"}]);
    let (rc, v) = e.run_raw("GC", None, None, None, gc.to_string().as_bytes());
    assert_eq!((rc, &v), (0, &Value::Null), "GC: {v}");
    let names: BTreeSet<String> = Containers::open(&e.root.pins).unwrap().list().unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(names, BTreeSet::from(["keep/eth0".to_string(), mine.name.clone(), "elsewhere/eth0".to_string()]));
    assert_eq!(e.leases().len(), 1, "the stale container's lease is released");
    within(&e.host.name, || container::check(&e.root.pins, "keep/eth0")).unwrap();
    // GC again changes nothing.
    let (rc, _) = e.run_raw("GC", None, None, None, gc.to_string().as_bytes());
    assert_eq!(rc, 0);
    assert_eq!(Containers::open(&e.root.pins).unwrap().count(), 3);
    let _ = (a, b, c, d);
}

#[test]
fn status_before_and_after_load_and_version() {
    if !privileged("status_before_and_after_load_and_version") {
        return;
    }
    let e = Env::new();
    let mut conf = e.conf("1.1.0", json!([]));
    let unloaded = PathBuf::from("/sys/fs/bpf").join(unique("dpnot"));
    conf["pinRoot"] = json!(unloaded);
    assert_error("STATUS not loaded", e.run_raw("STATUS", None, None, None, conf.to_string().as_bytes()), code::NOT_AVAILABLE);
    let ctr = TestNs::new();
    assert_error("ADD not loaded", e.run("ADD", Some("x"), Some(&ns_path(&ctr)), &conf), code::NOT_AVAILABLE);
    assert!(e.leases().is_empty(), "no address taken while not loaded");
    datapath::ops::load(&datapath::kernel::pins::PinRoot::new(&unloaded), Default::default()).unwrap();
    let loaded = Unload(unloaded.clone());
    let (rc, v) = e.run_raw("STATUS", None, None, None, conf.to_string().as_bytes());
    assert_eq!((rc, v), (0, Value::Null), "STATUS loaded");
    drop(loaded);

    let (rc, v) = e.run_raw("VERSION", None, None, None, br#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(rc, 0);
    assert_eq!(v, json!({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}));
}

/// Unloads a pin root when dropped.
struct Unload(PathBuf);

impl Drop for Unload {
    fn drop(&mut self) {
        let _ = datapath::ops::unload(&datapath::kernel::pins::PinRoot::new(&self.0));
    }
}

#[test]
fn bad_input_gets_the_right_codes_and_changes_nothing() {
    if !privileged("bad_input_gets_the_right_codes_and_changes_nothing") {
        return;
    }
    let e = Env::new();
    let ctr = TestNs::new();
    let netns = ns_path(&ctr);
    let good = e.conf("1.0.0", json!([{"hostPort": 30020, "containerPort": 25565}]));
    let before = e.state();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let cases: Vec<(&str, (i32, Value), u32)> = vec![
        ("not JSON", e.run_raw("ADD", Some("a"), Some(&netns), Some("eth0"), b"{not json"), code::DECODE),
        ("cniVersion 0.3.1", e.run("ADD", Some("a"), Some(&netns), &with(&|c| c["cniVersion"] = json!("0.3.1"))), code::INCOMPATIBLE_VERSION),
        ("no name", e.run("ADD", Some("a"), Some(&netns), &with(&|c| c["name"] = json!(""))), code::INVALID_CONFIG),
        ("no ipam", e.run("ADD", Some("a"), Some(&netns), &with(&|c| { c.as_object_mut().unwrap().remove("ipam"); })), code::INVALID_CONFIG),
        ("ipam not in CNI_PATH", e.run("ADD", Some("a"), Some(&netns), &with(&|c| c["ipam"]["type"] = json!("no-such-ipam"))), code::INVALID_CONFIG),
        ("bad protocol", e.run("ADD", Some("a"), Some(&netns), &with(&|c| c["runtimeConfig"]["portMappings"][0]["protocol"] = json!("sctp"))), code::UNSUPPORTED),
        ("no CNI_CONTAINERID", e.run("ADD", None, Some(&netns), &good), code::INVALID_ENV),
        ("bad CNI_CONTAINERID", e.run("ADD", Some("-bad/id"), Some(&netns), &good), code::INVALID_ENV),
        ("bad CNI_IFNAME", e.run_raw("ADD", Some("a"), Some(&netns), Some("much-too-long-ifname"), good.to_string().as_bytes()), code::INVALID_ENV),
        ("no CNI_NETNS", e.run("ADD", Some("a"), None, &good), code::INVALID_ENV),
        ("CNI_NETNS missing", e.run("ADD", Some("a"), Some(Path::new("/run/netns/no-such-ns")), &good), code::INVALID_ENV),
        ("unknown command", e.run("FROB", Some("a"), Some(&netns), &good), code::INVALID_ENV),
        ("CHECK without prevResult", e.run("CHECK", Some("a"), Some(&netns), &good), code::INVALID_CONFIG),
        ("IPv6 from IPAM", e.run("ADD", Some("a"), Some(&netns), &with(&|c| c["ipam"]["ranges"] = json!([[{"subnet": "10.66.0.0/24"}], [{"subnet": "2001:db8:66::/64"}]]))), code::UNSUPPORTED),
        ("hostIP not external", e.run("ADD", Some("a"), Some(&netns), &with(&|c| c["runtimeConfig"]["portMappings"][0]["hostIP"] = json!("192.0.2.99"))), code::INVALID_CONFIG),
    ];
    for (what, got, want) in cases {
        assert_error(what, got, want);
        assert_same(what, &before, &e.state());
    }

    // A host port taken by another container: 101, the address released,
    // nothing left.
    let other = TestNs::new();
    let (rc, v) = e.run("ADD", Some("first"), Some(&ns_path(&other)), &good);
    assert_eq!(rc, 0, "{v}");
    let taken = e.state();
    assert_error("port in use", e.run("ADD", Some("second"), Some(&netns), &good), code::IN_USE);
    assert_same("after the refused ADD", &taken, &e.state());
    // The address of a container added by hand (not through IPAM): 101 too.
    let (rc, _) = e.run("DEL", Some("first"), Some(&ns_path(&other)), &good);
    assert_eq!(rc, 0);
    // host-local hands out the address after the last one it reserved.
    let last = std::fs::read_to_string(e.leases.join(&e.net).join("last_reserved_ip.0")).unwrap();
    let next = Ipv4Addr::from(u32::from(last.trim().parse::<Ipv4Addr>().unwrap()) + 1);
    let mut by_hand = container::Spec::new("byhand", ns_path(&other), next);
    by_hand.ports.clear();
    container::add(&e.root.pins, Some(&e.host.name), &by_hand).unwrap();
    let taken = e.state();
    assert_error("address in use", e.run("ADD", Some("third"), Some(&netns), &good), code::IN_USE);
    assert_same("after the refused ADD", &taken, &e.state());
}
