//! The real `datapathctl` binary on bad input, on repeated and conflicting
//! input, and under concurrency. Every failure must be exactly one line on
//! stderr and a non-zero exit, and must change nothing: the maps are
//! dumped through the binary before and after each command.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;
use std::time::Instant;

use common::*;
use datapath::abi::Proto;
use datapath::maps::{published, Change, Ext, Mapping};
use datapath::kernel::pins::PinRoot;
use libbpf_rs::MapCore;

const BIN: &str = env!("CARGO_BIN_EXE_datapathctl");
const MAC: &str = "02:c0:00:00:00:02";

/// `datapathctl` as nobody (uid/gid 65534, no groups), through setpriv.
fn ctl_as_nobody(root: &Path, ns: Option<&str>, args: &[&str]) -> CtlOut {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
    run_ctl(c, root, ns, args)
}

/// Everything a command could change, as the binary shows it. Commands
/// that fail (`map snat get` when unset) are compared by their failure.
fn dump(root: &Path) -> Vec<(String, CtlOut)> {
    [
        vec!["--json", "map", "dnat", "list"],
        vec!["--json", "map", "veth", "list"],
        vec!["--json", "map", "snat", "get"],
        vec!["--json", "map", "external", "list"],
        vec!["--json", "stats"],
        vec!["--json", "status"],
    ]
    .into_iter()
    .map(|args| (args.join(" "), ctl(root, None, &args)))
    .collect()
}

#[track_caller]
fn assert_same_dump(what: &str, before: &[(String, CtlOut)], after: &[(String, CtlOut)]) {
    for ((cmd, b), (_, a)) in before.iter().zip(after) {
        assert!(a == b, "{what}: `{cmd}` changed:\nbefore {b:?}\nafter  {a:?}");
    }
}

/// A namespace with host veths dpv0 (10.0.0.1) and dpv1 (10.0.1.1), and an
/// external veth dpext.
fn host_ns() -> TestNs {
    let ns = TestNs::new();
    for i in 0..2 {
        ns.ip(&format!("link add dpv{i} type veth peer name dpc{i}"));
        ns.ip(&format!("addr add 10.0.{i}.1/32 dev dpv{i}"));
        ns.ip(&format!("link set dpv{i} up"));
    }
    ns.ip("link add dpext type veth peer name dpextp");
    ns.ip("link set dpext up");
    ns
}

/// A loaded root with dpv0 registered for 10.0.0.2, two published ports
/// on the default external address 198.51.100.1, and one on the second
/// external address 198.51.100.2, all through the binary.
fn provisioned() -> (TestRoot, TestNs) {
    let root = TestRoot::loaded();
    let ns = host_ns();
    let (dir, n) = (root.pins.root().to_path_buf(), Some(ns.name.as_str()));
    assert_ok("veth add", &ctl(&dir, n, &["map", "veth", "add", "dpv0", "10.0.0.2"]));
    assert_ok("dnat add", &ctl(&dir, n, &["map", "dnat", "add", "30001", "10.0.0.2", "dpv0", MAC]));
    assert_ok(
        "dnat add udp",
        &ctl(&dir, n, &["map", "dnat", "add", "30002", "10.0.0.2", "dpv0", MAC, "--proto", "udp", "--to-port", "19132"]),
    );
    assert_ok("snat set", &ctl(&dir, n, &["map", "snat", "set", "198.51.100.1", "dpext"]));
    assert_ok("external add", &ctl(&dir, n, &["map", "external", "add", "198.51.100.2", "dpext"]));
    assert_ok("dnat add on it", &ctl(&dir, n, &["map", "dnat", "add", "198.51.100.2:30005", "10.0.0.2", "dpv0", MAC]));
    (root, ns)
}

fn require_setpriv() {
    let ok = Command::new("setpriv").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "setpriv (util-linux) is needed to run commands as an unprivileged user");
}

/// Which pin root a row runs against.
#[derive(Clone, Copy, Debug)]
enum Root {
    /// The test's loaded root.
    Loaded,
    /// A path on bpffs where nothing was loaded.
    Missing,
    /// A path that is not on bpffs.
    NotBpffs,
}

struct Row {
    name: &'static str,
    root: Root,
    /// Pass `-n <the test netns>`.
    netns: bool,
    nobody: bool,
    args: Vec<String>,
    /// A word the error must contain.
    says: &'static str,
}

fn row(name: &'static str, args: &[&str], says: &'static str) -> Row {
    Row { name, root: Root::Loaded, netns: true, nobody: false, args: args.iter().map(|s| s.to_string()).collect(), says }
}

fn dnat_add(port: &str, ctr: &str, veth: &str, mac: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["map", "dnat", "add", port, ctr, veth, mac].iter().map(|s| s.to_string()).collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn rows() -> Vec<Row> {
    let a = |name, args: Vec<String>, says| Row { name, root: Root::Loaded, netns: true, nobody: false, args, says };
    let mut v = vec![
        // Ports.
        a("dnat add: host port 0", dnat_add("0", "10.0.0.3", "dpv0", MAC, &[]), "port"),
        a("dnat add: host port 65536", dnat_add("65536", "10.0.0.3", "dpv0", MAC, &[]), "port"),
        a("dnat add: host port abc", dnat_add("abc", "10.0.0.3", "dpv0", MAC, &[]), "port"),
        a("dnat add: host port empty", dnat_add("", "10.0.0.3", "dpv0", MAC, &[]), "port"),
        a("dnat add: host port 99999999999", dnat_add("99999999999", "10.0.0.3", "dpv0", MAC, &[]), "port"),
        a("dnat add: --to-port 0", dnat_add("30010", "10.0.0.3", "dpv0", MAC, &["--to-port", "0"]), "port"),
        a("dnat add: --to-port 65536", dnat_add("30010", "10.0.0.3", "dpv0", MAC, &["--to-port", "65536"]), "port"),
        a("dnat add: --to-port abc", dnat_add("30010", "10.0.0.3", "dpv0", MAC, &["--to-port", "abc"]), "port"),
        row("dnat del: port 0", &["map", "dnat", "del", "0"], "port"),
        row("dnat del: port 65536", &["map", "dnat", "del", "65536"], "port"),
        row("dnat del: port abc", &["map", "dnat", "del", "abc"], "port"),
        row("dnat get: port 0", &["map", "dnat", "get", "0"], "port"),
        row("dnat get: port 65536", &["map", "dnat", "get", "65536"], "port"),
        row("dnat get: port abc", &["map", "dnat", "get", "abc"], "port"),
        row("dnat get: unpublished port", &["map", "dnat", "get", "30099"], "30099"),
        row("dnat get --json: unpublished port", &["--json", "map", "dnat", "get", "30099"], "30099"),
        row("load: --proxy-tcp-port 65536", &["load", "--proxy-tcp-port", "65536"], "port"),
        row("load: --proxy-dns-port 0", &["load", "--proxy-dns-port", "0"], "port"),
        // Addresses.
        a("dnat add: address 256.1.1.1", dnat_add("30010", "256.1.1.1", "dpv0", MAC, &[]), "256.1.1.1"),
        a("dnat add: link-local ipv6 container address", dnat_add("30010", "fe80::2", "dpv0", MAC, &[]), "link-local"),
        a("dnat add: ipv4-mapped container address", dnat_add("30010", "::ffff:10.0.0.3", "dpv0", MAC, &[]), "IPv4-mapped"),
        a("dnat add: on an ipv6 address that is not external", dnat_add("[fd00::1]:30010", "fd00::2", "dpv0", MAC, &[]), "fd00::1"),
        a("dnat add: ipv6 host port without its bracket", dnat_add("[fd00::1:30010", "fd00::2", "dpv0", MAC, &[]), "[fd00::1:30010"),
        a("dnat add: ipv6 host port without brackets", dnat_add("fd00::1:30010", "fd00::2", "dpv0", MAC, &[]), "brackets"),
        a("dnat add: ipv6 defaults to an ipv4 container", dnat_add("[::]:30010", "10.0.0.3", "dpv0", MAC, &[]), "IPv6"),
        a("dnat add: address 10.0.0", dnat_add("30010", "10.0.0", "dpv0", MAC, &[]), "10.0.0"),
        a("dnat add: address with a prefix", dnat_add("30010", "10.0.0.3/24", "dpv0", MAC, &[]), "10.0.0.3/24"),
        row("veth add: address 256.1.1.1", &["map", "veth", "add", "dpv1", "256.1.1.1"], "256.1.1.1"),
        row("veth add: ipv6 address", &["map", "veth", "add", "dpv1", "fd00::2"], "fd00::2"),
        row("veth add: link-local ipv6 container address", &["map", "veth", "add", "dpv1", "10.0.1.2", "fe80::9"], "link-local"),
        row("veth add: malformed ipv6 container address", &["map", "veth", "add", "dpv1", "10.0.1.2", "fd00::g"], "fd00::g"),
        row("veth add: ipv4 as the ipv6 container address", &["map", "veth", "add", "dpv1", "10.0.1.2", "10.0.1.3"], "10.0.1.3"),
        row("veth add: the host veth's own address", &["map", "veth", "add", "dpv1", "10.0.1.1"], "10.0.1.1"),
        row("veth add: a veth without an ipv4 address", &["map", "veth", "add", "dpc1", "10.0.1.2"], "dpc1"),
        row("snat set: address 256.1.1.1", &["map", "snat", "set", "256.1.1.1", "dpext"], "256.1.1.1"),
        row("snat set: ipv6 address", &["map", "snat", "set", "fd00::1", "dpext"], "fd00::1"),
        row("snat set: address 0.0.0.0", &["map", "snat", "set", "0.0.0.0", "dpext"], "0.0.0.0"),
        row("snat set: broadcast address", &["map", "snat", "set", "255.255.255.255", "dpext"], "255.255.255.255"),
        row("external add: address 0.0.0.0", &["map", "external", "add", "0.0.0.0", "dpext"], "0.0.0.0"),
        row("external add: broadcast address", &["map", "external", "add", "255.255.255.255", "dpext"], "broadcast"),
        row("external add: multicast address", &["map", "external", "add", "224.0.0.1", "dpext", "--default"], "multicast"),
        row("external add: loopback address", &["map", "external", "add", "127.0.0.1", "dpext"], "loopback"),
        row("external add: link-local ipv6 address", &["map", "external", "add", "fe80::1", "dpext"], "link-local"),
        row("external add: ipv6 multicast address", &["map", "external", "add", "ff02::1", "dpext"], "multicast"),
        row("external add: ipv6 loopback address", &["map", "external", "add", "::1", "dpext"], "loopback"),
        row("external add: unspecified ipv6 address", &["map", "external", "add", "::", "dpext"], "unspecified"),
        row("external add: unknown interface", &["map", "external", "add", "198.51.100.7", "nosuch0"], "nosuch0"),
        row("external add: known address on another interface", &["map", "external", "add", "198.51.100.1", "dpv1"], "198.51.100.1"),
        row("external del: address 300.1.1.1", &["map", "external", "del", "300.1.1.1"], "300.1.1.1"),
        row("external del: an address mappings are published on", &["map", "external", "del", "198.51.100.2"], "198.51.100.2"),
        a("dnat add: container address 0.0.0.0", dnat_add("30010", "0.0.0.0", "dpv0", MAC, &[]), "0.0.0.0"),
        a("dnat add: container address broadcast", dnat_add("30010", "255.255.255.255", "dpv0", MAC, &[]), "broadcast"),
        a("dnat add: container address multicast", dnat_add("30010", "239.1.2.3", "dpv0", MAC, &[]), "multicast"),
        a("dnat add: container address loopback", dnat_add("30010", "127.0.0.2", "dpv0", MAC, &[]), "loopback"),
        a("dnat add: on an address that is not external", dnat_add("198.51.100.9:30010", "10.0.0.3", "dpv0", MAC, &[]), "198.51.100.9"),
        a("dnat add: on external address 0.0.0.0", dnat_add("0.0.0.0:30010", "10.0.0.3", "dpv0", MAC, &[]), "0.0.0.0"),
        a("dnat add: on an ipv6 external address", dnat_add("[fd00::1]:30010", "10.0.0.3", "dpv0", MAC, &[]), "IPv6"),
        a("dnat add: on a malformed external address", dnat_add("198.51.100:30010", "10.0.0.3", "dpv0", MAC, &[]), "198.51.100"),
        a("dnat add: address without a port", dnat_add("198.51.100.2:", "10.0.0.3", "dpv0", MAC, &[]), "port"),
        a("dnat add: address with port 0", dnat_add("198.51.100.2:0", "10.0.0.3", "dpv0", MAC, &[]), "port"),
        row("dnat get: address with port 65536", &["map", "dnat", "get", "198.51.100.2:65536"], "port"),
        row("dnat get: published on another address", &["map", "dnat", "get", "198.51.100.2:30001"], "198.51.100.2:30001"),
        row("dnat del: malformed address", &["map", "dnat", "del", "1.2.3.4.5:30001"], "1.2.3.4.5"),
        row("veth add: loopback container address", &["map", "veth", "add", "dpv1", "127.0.0.1"], "loopback"),
        row("veth add: multicast container address", &["map", "veth", "add", "dpv1", "224.0.0.9"], "multicast"),
        // MACs.
        a("dnat add: mac with five octets", dnat_add("30010", "10.0.0.3", "dpv0", "aa:bb:cc:dd:ee", &[]), "MAC"),
        a("dnat add: mac with a non-hex digit", dnat_add("30010", "10.0.0.3", "dpv0", "aa:bb:cc:dd:ee:gg", &[]), "MAC"),
        a("dnat add: mac without separators", dnat_add("30010", "10.0.0.3", "dpv0", "aabbccddeeff", &[]), "MAC"),
        a("dnat add: mac with seven octets", dnat_add("30010", "10.0.0.3", "dpv0", "aa:bb:cc:dd:ee:ff:00", &[]), "MAC"),
        a("dnat add: mac with dashes", dnat_add("30010", "10.0.0.3", "dpv0", "aa-bb-cc-dd-ee-ff", &[]), "MAC"),
        a("dnat add: mac with one-digit octets", dnat_add("30010", "10.0.0.3", "dpv0", "a:b:c:d:e:f", &[]), "MAC"),
        // u8::from_str_radix alone would take "+a" as the octet 0x0a.
        a("dnat add: mac with signed octets", dnat_add("30010", "10.0.0.3", "dpv0", "+a:bb:cc:dd:ee:ff", &[]), "MAC"),
        a("dnat add: all-zero mac", dnat_add("30010", "10.0.0.3", "dpv0", "00:00:00:00:00:00", &[]), "all zero"),
        a("dnat add: multicast mac", dnat_add("30010", "10.0.0.3", "dpv0", "01:00:5e:00:00:01", &[]), "multicast"),
        a("dnat add: broadcast mac", dnat_add("30010", "10.0.0.3", "dpv0", "ff:ff:ff:ff:ff:ff", &[]), "multicast"),
        // Interfaces.
        a("dnat add: unknown interface", dnat_add("30010", "10.0.0.3", "nosuch0", MAC, &[]), "nosuch0"),
        a("dnat add: unknown interface index", dnat_add("30010", "10.0.0.3", "99999", MAC, &[]), "99999"),
        a("dnat add: interface index 0", dnat_add("30010", "10.0.0.3", "0", MAC, &[]), "0"),
        a("dnat add: interface index beyond u32", dnat_add("30010", "10.0.0.3", "4294967296", MAC, &[]), "4294967296"),
        a("dnat add: interface name too long", dnat_add("30010", "10.0.0.3", "averyveryverylongname", MAC, &[]), "averyveryverylongname"),
        a("dnat add: interface name with a slash", dnat_add("30010", "10.0.0.3", "dp/v0", MAC, &[]), "dp/v0"),
        row("veth add: unknown interface", &["map", "veth", "add", "nosuch0", "10.0.0.9"], "nosuch0"),
        row("veth add: unknown interface index", &["map", "veth", "add", "99999", "10.0.0.9"], "99999"),
        row("veth get: unknown interface", &["map", "veth", "get", "nosuch0"], "nosuch0"),
        row("veth get: unregistered veth", &["map", "veth", "get", "dpv1"], "dpv1"),
        row("snat set: unknown interface", &["map", "snat", "set", "198.51.100.1", "nosuch0"], "nosuch0"),
        row("snat set: unknown interface index", &["map", "snat", "set", "198.51.100.1", "99999"], "99999"),
        row("attach dnat: unknown interface", &["attach", "dnat", "nosuch0"], "nosuch0"),
        row("attach host: unknown interface index", &["attach", "host", "99999"], "99999"),
        row("attach getsockopt: not a cgroup", &["attach", "getsockopt", "/tmp"], "/tmp"),
        row("attach getsockopt: no such path", &["attach", "getsockopt", "/nonexistent/cgroup"], "/nonexistent/cgroup"),
        row("detach getsockopt: no such path", &["detach", "getsockopt", "/nonexistent/cgroup"], "/nonexistent/cgroup"),
        row("attach host-access: not a cgroup", &["attach", "host-access", "/tmp"], "/tmp"),
        row("attach host-access: no such path", &["attach", "host-access", "/nonexistent/cgroup"], "/nonexistent/cgroup"),
        row("detach host-access: no such path", &["detach", "host-access", "/nonexistent/cgroup"], "/nonexistent/cgroup"),
        // Protocols.
        a("dnat add: --proto sctp", dnat_add("30010", "10.0.0.3", "dpv0", MAC, &["--proto", "sctp"]), "sctp"),
        row("dnat del: --proto icmp", &["map", "dnat", "del", "30001", "--proto", "icmp"], "icmp"),
        row("dnat get: --proto empty", &["map", "dnat", "get", "30001", "--proto", ""], "protocol"),
        // The command line itself.
        row("unknown subcommand", &["map", "dnat", "frobnicate"], "frobnicate"),
        row("missing arguments", &["map", "dnat", "add", "30010"], "required"),
        row("extra argument", &["map", "dnat", "list", "extra"], "extra"),
        row("unknown option", &["map", "dnat", "list", "--frobnicate"], "frobnicate"),
    ];
    // Interfaces named in the test's namespace but looked up in the host's.
    let mut r = a("dnat add: interface of another namespace, without -n", dnat_add("30010", "10.0.0.3", "dpv0", MAC, &[]), "dpv0");
    r.netns = false;
    v.push(r);
    let mut r = row("veth add: interface of another namespace, without -n", &["map", "veth", "add", "dpv1", "10.0.1.2"], "dpv1");
    r.netns = false;
    v.push(r);

    for (name, ns) in [("-n: unknown namespace", "dpt-no-such-ns"), ("-n: invalid namespace name", "../x")] {
        let mut r = row(name, &["-n", ns, "map", "veth", "add", "dpv0", "10.0.0.2"], ns);
        r.netns = false;
        v.push(r);
    }

    // Before `load`: a pin root that does not exist.
    for (name, args, says) in [
        ("not loaded: dnat list", vec!["map", "dnat", "list"], "load"),
        ("not loaded: dnat add", vec!["map", "dnat", "add", "30010", "10.0.0.3", "dpv0", MAC], "load"),
        ("not loaded: dnat del", vec!["map", "dnat", "del", "30001"], "load"),
        ("not loaded: dnat get", vec!["map", "dnat", "get", "30001"], "load"),
        ("not loaded: veth add", vec!["map", "veth", "add", "dpv0", "10.0.0.2"], "load"),
        ("not loaded: veth del", vec!["map", "veth", "del", "dpv0"], "load"),
        ("not loaded: veth list", vec!["map", "veth", "list"], "load"),
        ("not loaded: snat set", vec!["map", "snat", "set", "198.51.100.1", "dpext"], "load"),
        ("not loaded: snat get", vec!["map", "snat", "get"], "load"),
        ("not loaded: snat del", vec!["map", "snat", "del"], "load"),
        ("not loaded: external add", vec!["map", "external", "add", "198.51.100.1", "dpext"], "load"),
        ("not loaded: external del", vec!["map", "external", "del", "198.51.100.1"], "load"),
        ("not loaded: external list", vec!["map", "external", "list"], "load"),
        ("not loaded: stats", vec!["stats"], "load"),
        ("not loaded: attach dnat", vec!["attach", "dnat", "dpext"], "load"),
        ("not loaded: attach host", vec!["attach", "host", "dpv0"], "load"),
        ("not loaded: attach getsockopt", vec!["attach", "getsockopt"], "load"),
        ("not loaded: attach host-access", vec!["attach", "host-access"], "load"),
    ] {
        v.push(Row { name, root: Root::Missing, netns: true, nobody: false, args: args.iter().map(|s| s.to_string()).collect(), says });
    }
    v.push(Row {
        name: "load: pin root not on bpffs",
        root: Root::NotBpffs,
        netns: false,
        nobody: false,
        args: vec!["load".into()],
        says: "bpf",
    });

    // Without root.
    for (name, args) in [
        ("as nobody: load", vec!["load"]),
        ("as nobody: unload", vec!["unload"]),
        ("as nobody: dnat list", vec!["map", "dnat", "list"]),
        ("as nobody: dnat add", vec!["map", "dnat", "add", "30010", "10.0.0.3", "dpv0", MAC]),
        ("as nobody: dnat del", vec!["map", "dnat", "del", "30001"]),
        ("as nobody: veth del", vec!["map", "veth", "del", "dpv0"]),
        ("as nobody: snat del", vec!["map", "snat", "del"]),
        ("as nobody: external add", vec!["map", "external", "add", "198.51.100.7", "dpext"]),
        ("as nobody: attach host", vec!["attach", "host", "dpv0"]),
        ("as nobody: stats", vec!["stats"]),
        ("as nobody: status", vec!["status"]),
    ] {
        v.push(Row { name, root: Root::Loaded, netns: true, nobody: true, args: args.iter().map(|s| s.to_string()).collect(), says: "root" });
    }
    v
}

/// The failures of one row, if any: exit, stderr, stdout, and whether
/// anything changed.
fn check_row(r: &Row, o: &CtlOut, before: &[(String, CtlOut)], after: &[(String, CtlOut)], created: &[&Path]) -> Vec<String> {
    let mut bad = Vec::new();
    if o.code == Some(0) || o.code.is_none() {
        bad.push(format!("exit {:?}, expected a failure (stdout {:?})", o.code, o.stdout));
    }
    if o.stderr.lines().count() != 1 {
        bad.push(format!("stderr is not exactly one line: {:?}", o.stderr));
    }
    if !o.stdout.is_empty() && o.code != Some(0) {
        bad.push(format!("a failure printed on stdout: {:?}", o.stdout));
    }
    if !o.stderr.contains(r.says) {
        bad.push(format!("the error does not mention {:?}: {:?}", r.says, o.stderr));
    }
    for p in created {
        if p.exists() {
            bad.push(format!("created {}", p.display()));
        }
    }
    for ((cmd, b), (_, a)) in before.iter().zip(after) {
        if a != b {
            bad.push(format!("`{cmd}` changed: before {:?}, after {:?}", b.stdout, a.stdout));
        }
    }
    bad
}

#[test]
fn bad_input_fails_in_one_line_and_changes_nothing() {
    if !privileged("bad_input_fails_in_one_line_and_changes_nothing") {
        return;
    }
    require_setpriv();
    let (mut root, mut ns) = provisioned();
    let missing = PathBuf::from("/sys/fs/bpf").join(unique("dptmissing"));
    let not_bpffs = std::env::temp_dir().join(unique("dptnotbpf"));
    let mut baseline = dump(root.pins.root());
    let started = Instant::now();
    let rows = rows();
    let mut failures = Vec::new();
    for r in &rows {
        let dir = root.pins.root().to_path_buf();
        let path = match r.root {
            Root::Loaded => dir.clone(),
            Root::Missing => missing.clone(),
            Root::NotBpffs => not_bpffs.clone(),
        };
        let n = if r.netns { Some(ns.name.as_str()) } else { None };
        let args: Vec<&str> = r.args.iter().map(String::as_str).collect();
        let o = if r.nobody { ctl_as_nobody(&path, n, &args) } else { ctl(&path, n, &args) };
        let after = dump(&dir);
        let bad = check_row(r, &o, &baseline, &after, &[&missing, &not_bpffs]);
        if !bad.is_empty() {
            failures.push(format!("{} (datapathctl {}): {}", r.name, r.args.join(" "), bad.join("; ")));
            if after != baseline {
                // Start the next row from a clean state.
                let _ = std::fs::remove_dir_all(&missing);
                let _ = std::fs::remove_dir_all(&not_bpffs);
                drop(root);
                drop(ns);
                (root, ns) = provisioned();
                baseline = dump(root.pins.root());
            }
        }
    }
    // `status` before `load` is not an error: it says so, and creates nothing.
    let o = ctl(&missing, None, &["status"]);
    assert_ok("status before load", &o);
    assert!(o.stdout.contains("not loaded"), "status before load: {:?}", o.stdout);
    assert!(!missing.exists());
    eprintln!("bad input: {} rows in {:.1?}, {} failed", rows.len(), started.elapsed(), failures.len());
    assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), rows.len(), failures.join("\n"));
}

// ---------------------------------------------------------------------------
// Incompatible pinned maps
// ---------------------------------------------------------------------------

/// Removes a hand-made pin root on drop.
struct HandRoot {
    path: PathBuf,
}

impl Drop for HandRoot {
    fn drop(&mut self) {
        let _ = datapath::ops::unload(&PinRoot::new(&self.path));
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Creates a BPF map and pins it at `path`.
fn pin_map(path: &Path, map_type: libbpf_sys::bpf_map_type, key: u32, value: u32, max: u32) {
    let name = std::ffi::CString::new(path.file_name().unwrap().to_str().unwrap()).unwrap();
    // SAFETY: name is NUL-terminated; NULL opts are allowed.
    let fd = unsafe { libbpf_sys::bpf_map_create(map_type, name.as_ptr(), key, value, max, std::ptr::null()) };
    assert!(fd >= 0, "bpf_map_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: valid descriptor and NUL-terminated path.
    let rc = unsafe { libbpf_sys::bpf_obj_pin(std::os::fd::AsRawFd::as_raw_fd(&fd), c.as_ptr()) };
    assert_eq!(rc, 0, "pinning {}", path.display());
}

/// Every path under `root` with its mode, and the id of every pinned
/// object: what `load` must leave alone when it refuses.
fn tree(root: &Path) -> BTreeSet<(String, u32, u32)> {
    let mut out = BTreeSet::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if m.is_dir() {
                dirs.push(p);
                out.insert((rel, m.permissions().mode(), 0));
            } else {
                out.insert((rel, m.permissions().mode(), obj_id(&p)));
            }
        }
    }
    out.insert((".".into(), std::fs::metadata(root).unwrap().permissions().mode(), 0));
    out
}

/// Id of a pinned map or program.
fn obj_id(path: &Path) -> u32 {
    let fd = datapath::kernel::attach::obj_get(path).unwrap();
    let mut info = [0u8; 256];
    let mut len = info.len() as u32;
    // SAFETY: info is a zeroed buffer of the length passed; both map and
    // program info start with (type, id).
    let rc = unsafe {
        libbpf_sys::bpf_obj_get_info_by_fd(std::os::fd::AsRawFd::as_raw_fd(&fd), info.as_mut_ptr().cast(), &mut len)
    };
    assert_eq!(rc, 0, "reading {}", path.display());
    u32::from_ne_bytes(info[4..8].try_into().unwrap())
}

#[test]
fn load_refuses_an_incompatible_pinned_map_on_a_fresh_root() {
    if !privileged("load_refuses_an_incompatible_pinned_map_on_a_fresh_root") {
        return;
    }
    let hand = HandRoot { path: PathBuf::from("/sys/fs/bpf").join(unique("dptincompat")) };
    let maps_dir = hand.path.join("maps");
    for d in [&hand.path, &maps_dir] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    // dnat4 with a 16-byte value where this build has 20.
    // The root and maps/ exist; a refused load must not leave progs/ or
    // links/ behind, nor change the existing directories.
    pin_map(&maps_dir.join("dnat4"), libbpf_sys::BPF_MAP_TYPE_HASH, 8, 16, 131072);
    let before = tree(&hand.path);
    let dumped = dump(&hand.path);
    let o = ctl(&hand.path, None, &["load"]);
    assert_one_line_failure("load over an incompatible dnat4", &o);
    assert!(o.stderr.contains("dnat4") && o.stderr.contains("incompatible"), "unclear error: {:?}", o.stderr);
    assert_same_dump("refused load", &dumped, &dump(&hand.path));
    let after = tree(&hand.path);
    assert!(
        after == before,
        "a refused load changed the pin root.\nbefore {before:?}\nafter  {after:?}\n(only maps/dnat4 should be there)"
    );
}

#[test]
fn load_refuses_an_incompatible_pinned_map_on_a_running_system() {
    if !privileged("load_refuses_an_incompatible_pinned_map_on_a_running_system") {
        return;
    }
    // One map at a time replaced by one of another capacity, type or
    // layout, on a provisioned root with an attachment.
    for (what, map, ty, key, value, max) in [
        ("capacity", "veths", libbpf_sys::BPF_MAP_TYPE_HASH, 4, 16, 1024),
        ("type", "flows4", libbpf_sys::BPF_MAP_TYPE_HASH, 16, 20, 262144),
        ("value size", "mappings", libbpf_sys::BPF_MAP_TYPE_HASH, 20, 24, 65536),
        ("key size", "proxy_flows", libbpf_sys::BPF_MAP_TYPE_LRU_HASH, 12, 12, 65536),
    ] {
        let (root, ns) = provisioned();
        let dir = root.pins.root().to_path_buf();
        assert_ok("attach host", &ctl(&dir, Some(&ns.name), &["attach", "host", "dpv0"]));
        let path = root.pins.map(map);
        std::fs::remove_file(&path).unwrap();
        pin_map(&path, ty, key, value, max);
        let before = tree(&dir);
        let maps_before = dump(&dir);
        let o = ctl(&dir, None, &["load"]);
        let what = format!("load over a {map} of another {what}");
        assert_one_line_failure(&what, &o);
        assert!(o.stderr.contains(map) && o.stderr.contains("incompatible"), "{what}: unclear error: {:?}", o.stderr);
        assert!(tree(&dir) == before, "{what}: the pins under {} changed", dir.display());
        assert_same_dump(&what, &maps_before, &dump(&dir));
    }
}

// ---------------------------------------------------------------------------
// Repeated and conflicting input: what succeeds, what is refused
// ---------------------------------------------------------------------------

#[test]
fn repeated_and_conflicting_input() {
    if !privileged("repeated_and_conflicting_input") {
        return;
    }
    let (root, ns) = provisioned();
    let dir = root.pins.root().to_path_buf();
    let n = Some(ns.name.as_str());
    let (v0, _) = ns.iface("dpv0");
    let v0 = v0.to_string();
    let json = |args: &[&str]| {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        ctl(&dir, n, &a)
    };

    // (what, args, expected JSON result or None for a refusal)
    let table: Vec<(&str, Vec<&str>, Option<&str>)> = vec![
        ("dnat add: the same mapping again", vec!["map", "dnat", "add", "30001", "10.0.0.2", "dpv0", MAC], Some("unchanged")),
        ("dnat add: the same mapping, veth by index", vec!["map", "dnat", "add", "30001", "10.0.0.2", &v0, MAC], Some("unchanged")),
        ("dnat add: the same mapping, mac in capitals", vec!["map", "dnat", "add", "30001", "10.0.0.2", "dpv0", "02:C0:00:00:00:02"], Some("unchanged")),
        ("dnat add: the same udp mapping again", vec!["map", "dnat", "add", "30002", "10.0.0.2", "dpv0", MAC, "--proto", "udp", "--to-port", "19132"], Some("unchanged")),
        ("dnat add: host port taken, other address", vec!["map", "dnat", "add", "30001", "10.0.0.3", "dpv0", MAC], None),
        ("dnat add: host port taken, other mac", vec!["map", "dnat", "add", "30001", "10.0.0.2", "dpv0", "02:c0:00:00:00:03"], None),
        ("dnat add: host port taken, other container port", vec!["map", "dnat", "add", "30001", "10.0.0.2", "dpv0", MAC, "--to-port", "25566"], None),
        ("dnat add: host port taken, other veth", vec!["map", "dnat", "add", "30001", "10.0.0.2", "dpv1", MAC], None),
        ("dnat add: a second host port for the same container port", vec!["map", "dnat", "add", "30009", "10.0.0.2", "dpv0", MAC], None),
        ("dnat add: a second host port for the same udp container port", vec!["map", "dnat", "add", "30009", "10.0.0.2", "dpv0", MAC, "--proto", "udp", "--to-port", "19132"], None),
        ("dnat del: a port never published", vec!["map", "dnat", "del", "30099"], Some("absent")),
        ("dnat del: published for tcp, deleted for udp", vec!["map", "dnat", "del", "30001", "--proto", "udp"], Some("absent")),
        ("veth add: the same registration again", vec!["map", "veth", "add", "dpv0", "10.0.0.2"], Some("unchanged")),
        ("veth add: the same registration, by index", vec!["map", "veth", "add", &v0, "10.0.0.2"], Some("unchanged")),
        ("veth add: registered veth, other address", vec!["map", "veth", "add", "dpv0", "10.0.0.3"], None),
        ("veth del: an unregistered veth", vec!["map", "veth", "del", "dpv1"], Some("absent")),
        ("veth del: an interface that does not exist", vec!["map", "veth", "del", "nosuch0"], Some("absent")),
        ("veth del: an index that does not exist", vec!["map", "veth", "del", "99999"], Some("absent")),
        ("snat set: the same address again", vec!["map", "snat", "set", "198.51.100.1", "dpext"], Some("ok")),
        ("external add: the same default address again", vec!["map", "external", "add", "198.51.100.1", "dpext", "--default"], Some("unchanged")),
        ("external add: the same address again", vec!["map", "external", "add", "198.51.100.2", "dpext"], Some("unchanged")),
        ("external add: a known address on another interface", vec!["map", "external", "add", "198.51.100.2", "dpv1"], None),
        ("external add: default, where a dedicated mapping repeats a default one's container port", vec!["map", "external", "add", "198.51.100.2", "dpext", "--default"], None),
        ("external del: an address that is not external", vec!["map", "external", "del", "198.51.100.77"], Some("absent")),
        ("dnat add: the same dedicated mapping again", vec!["map", "dnat", "add", "198.51.100.2:30005", "10.0.0.2", "dpv0", MAC], Some("unchanged")),
        ("dnat add: dedicated port taken, other container", vec!["map", "dnat", "add", "198.51.100.2:30005", "10.0.0.3", "dpv0", MAC], None),
        ("dnat add: a default mapping's port, dedicated on the default address", vec!["map", "dnat", "add", "198.51.100.1:30001", "10.0.0.3", "dpv0", MAC], None),
        ("dnat add: a default mapping's container port again on the default address", vec!["map", "dnat", "add", "198.51.100.1:30009", "10.0.0.2", "dpv0", MAC], None),
        ("dnat add: a dedicated mapping's container port again on its address", vec!["map", "dnat", "add", "198.51.100.2:30009", "10.0.0.2", "dpv0", MAC], None),
        ("dnat del: a dedicated port deleted as a default one", vec!["map", "dnat", "del", "30005"], Some("absent")),
        ("dnat del: a default port deleted on the other address", vec!["map", "dnat", "del", "198.51.100.2:30001"], Some("absent")),
    ];
    let baseline = dump(&dir);
    for (what, args, want) in &table {
        let o = json(args);
        match want {
            Some(result) => {
                assert_ok(what, &o);
                assert_eq!(o.stdout.trim(), format!(r#"{{"result":"{result}"}}"#), "{what}");
                assert!(o.stderr.is_empty(), "{what}: success printed on stderr: {:?}", o.stderr);
            }
            None => assert_one_line_failure(what, &o),
        }
        assert_same_dump(what, &baseline, &dump(&dir));
    }

    // The same container address and port over another protocol is
    // another endpoint: published, then unpublished, then gone.
    let steps: [(&str, Vec<&str>, &str); 4] = [
        ("dnat add: same address and port, other protocol", vec!["map", "dnat", "add", "30009", "10.0.0.2", "dpv0", MAC, "--proto", "udp"], "added"),
        ("dnat del: that port", vec!["map", "dnat", "del", "30009", "--proto", "udp"], "deleted"),
        ("dnat del: that port again", vec!["map", "dnat", "del", "30009", "--proto", "udp"], "absent"),
        ("snat del, then", vec!["map", "snat", "del"], "deleted"),
    ];
    for (what, args, result) in &steps {
        let o = json(args);
        assert_ok(what, &o);
        assert_eq!(o.stdout.trim(), format!(r#"{{"result":"{result}"}}"#), "{what}");
    }
    let o = json(&["map", "snat", "del"]);
    assert_eq!(o.stdout.trim(), r#"{"result":"absent"}"#, "snat del of an unset address");

    // Attaching what is attached and detaching what is gone succeed.
    let attachments = || {
        let o = ctl(&dir, None, &["--json", "status"]);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        v["attachments"].as_array().unwrap().len()
    };
    for (what, args, n_after) in [
        ("attach host", ["attach", "host", "dpv0"], 1),
        ("attach host again", ["attach", "host", "dpv0"], 1),
        ("detach host", ["detach", "host", "dpv0"], 0),
        ("detach host again", ["detach", "host", "dpv0"], 0),
        ("detach host of a missing interface", ["detach", "host", "nosuch0"], 0),
    ] {
        assert_ok(what, &ctl(&dir, n, &args));
        assert_eq!(attachments(), n_after, "{what}: attachments");
    }
    let after = dump(&dir);
    assert_same_dump("after publishing and unpublishing", &baseline[..2], &after[..2]);
    eprintln!("repeated and conflicting input: {} rows", table.len() + steps.len() + 6);
}

// ---------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------

const WORKERS: usize = 8;
const PER_WORKER: usize = 2000;

fn port_of(worker: usize, j: usize) -> u16 {
    (10000 + worker * PER_WORKER + j) as u16
}

/// The published ports as `map dnat list --json` shows them, as
/// (host port, proto, container address, container port).
fn listed(dir: &Path) -> BTreeSet<(u64, String, String, u64)> {
    let o = ctl(dir, None, &["--json", "map", "dnat", "list"]);
    assert_ok("map dnat list", &o);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("map dnat list --json is JSON");
    v.as_array()
        .expect("a JSON array")
        .iter()
        .map(|e| {
            (
                e["host_port"].as_u64().unwrap(),
                e["proto"].as_str().unwrap().to_string(),
                e["ctr_ip"].as_str().unwrap().to_string(),
                e["ctr_port"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Runs `f(worker)` on WORKERS threads started together; returns every
/// failure message.
fn in_parallel(f: impl Fn(usize) -> Vec<String> + Sync) -> Vec<String> {
    let barrier = Barrier::new(WORKERS);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (f, barrier) = (&f, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    f(w)
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn concurrent_adds_and_deletes_lose_nothing() {
    if !privileged("concurrent_adds_and_deletes_lose_nothing") {
        return;
    }
    let root = TestRoot::loaded();
    let ns = host_ns();
    let dir = root.pins.root().to_path_buf();
    let n = Some(ns.name.as_str());
    assert_ok("snat set", &ctl(&dir, n, &["map", "snat", "set", "198.51.100.1", "dpext"]));
    let expect = |j_filter: &dyn Fn(usize) -> bool| -> BTreeSet<(u64, String, String, u64)> {
        (0..WORKERS)
            .flat_map(|w| (0..PER_WORKER).filter(|j| j_filter(*j)).map(move |j| (w, j)))
            .map(|(w, j)| (u64::from(port_of(w, j)), "tcp".to_string(), "10.0.0.2".to_string(), u64::from(port_of(w, j))))
            .collect()
    };

    let t = Instant::now();
    let failures = in_parallel(|w| {
        let mut bad = Vec::new();
        for j in 0..PER_WORKER {
            let p = port_of(w, j).to_string();
            let o = ctl(&dir, n, &["map", "dnat", "add", &p, "10.0.0.2", "dpv0", MAC, "--to-port", &p]);
            if o.code != Some(0) {
                bad.push(format!("worker {w}: add {p}: {:?}", o.stderr));
            }
        }
        bad
    });
    let adds = t.elapsed();
    assert!(failures.is_empty(), "{} adds failed, first: {:?}", failures.len(), failures.first());
    assert!(listed(&dir) == expect(&|_| true), "after {} concurrent adds the list is not the expected set", WORKERS * PER_WORKER);

    let t = Instant::now();
    let failures = in_parallel(|w| {
        let mut bad = Vec::new();
        for j in (0..PER_WORKER).step_by(2) {
            let p = port_of(w, j).to_string();
            let o = ctl(&dir, n, &["map", "dnat", "del", &p]);
            if o.code != Some(0) {
                bad.push(format!("worker {w}: del {p}: {:?}", o.stderr));
            }
        }
        bad
    });
    let dels = t.elapsed();
    assert!(failures.is_empty(), "{} deletes failed, first: {:?}", failures.len(), failures.first());
    let got = listed(&dir);
    let want = expect(&|j| j % 2 == 1);
    assert!(got == want, "after the deletes: {} listed, {} expected; e.g. {:?}", got.len(), want.len(), got.symmetric_difference(&want).next());
    let half = WORKERS * PER_WORKER / 2;
    assert_eq!(published::counts(&root.pins).unwrap(), [half; 3], "mappings, mapping_rev and dnat4 out of step");
    let calls = WORKERS * PER_WORKER * 3 / 2;
    eprintln!(
        "races: {} concurrent adds in {adds:.1?}, {} concurrent deletes in {dels:.1?} ({:.2} ms per call, {WORKERS} at a time)",
        WORKERS * PER_WORKER,
        half,
        (adds + dels).as_secs_f64() * 1000.0 / calls as f64 * WORKERS as f64
    );
}

#[test]
fn load_while_adding_loses_nothing() {
    if !privileged("load_while_adding_loses_nothing") {
        return;
    }
    let root = TestRoot::loaded();
    let ns = host_ns();
    let dir = root.pins.root().to_path_buf();
    let n = Some(ns.name.as_str());
    assert_ok("veth add", &ctl(&dir, n, &["map", "veth", "add", "dpv0", "10.0.0.2"]));
    assert_ok("attach host", &ctl(&dir, n, &["attach", "host", "dpv0"]));
    assert_ok("snat set", &ctl(&dir, n, &["map", "snat", "set", "198.51.100.1", "dpext"]));
    let before = dump(&dir);
    let t = Instant::now();
    let progress = std::sync::atomic::AtomicUsize::new(0);
    let (adds, loads) = std::thread::scope(|s| {
        let adder = s.spawn(|| {
            let mut bad = Vec::new();
            for j in 0..PER_WORKER {
                let p = (40000 + j).to_string();
                let o = ctl(&dir, n, &["map", "dnat", "add", &p, "10.0.0.2", "dpv0", MAC, "--to-port", &p]);
                if o.code != Some(0) {
                    bad.push(format!("add {p}: {:?}", o.stderr));
                }
                progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            bad
        });
        // Ten loads spread over the adds, so every one of them races some.
        let mut bad = Vec::new();
        for i in 0..10 {
            while progress.load(std::sync::atomic::Ordering::Relaxed) < i * PER_WORKER / 10 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let o = ctl(&dir, None, &["load"]);
            if o.code != Some(0) {
                bad.push(format!("load {i}: {:?}", o.stderr));
            }
        }
        (adder.join().unwrap(), bad)
    });
    assert!(loads.is_empty(), "loads failed: {loads:?}");
    assert!(adds.is_empty(), "{} adds failed, first: {:?}", adds.len(), adds.first());
    let want: BTreeSet<_> =
        (0..PER_WORKER as u64).map(|j| (40000 + j, "tcp".to_string(), "10.0.0.2".to_string(), 40000 + j)).collect();
    assert!(listed(&dir) == want, "mappings were lost across concurrent loads");
    assert_eq!(published::counts(&root.pins).unwrap(), [PER_WORKER; 3], "mappings, mapping_rev and dnat4 out of step");
    // Everything else survived too: the veth, and the attachment.
    let after = dump(&dir);
    assert_eq!(before[1], after[1], "map veth list changed across loads");
    let status: serde_json::Value = serde_json::from_str(&after[5].1.stdout).unwrap();
    assert_eq!(status["attachments"].as_array().map(|a| a.len()), Some(1), "attachments after loads: {status}");
    assert_eq!(before[3], after[3], "map external list changed across loads");
    let old: serde_json::Value = serde_json::from_str(&before[5].1.stdout).unwrap();
    assert_ne!(old["programs"], status["programs"], "the loads did not replace the programs");
    eprintln!("load race: 10 loads while adding {PER_WORKER} mappings, in {:.1?}", t.elapsed());
}

#[test]
fn concurrent_claims_of_one_port_have_one_winner() {
    if !privileged("concurrent_claims_of_one_port_have_one_winner") {
        return;
    }
    let root = TestRoot::loaded();
    let ns = host_ns();
    let dir = root.pins.root().to_path_buf();
    let n = Some(ns.name.as_str());
    assert_ok("snat set", &ctl(&dir, n, &["map", "snat", "set", "198.51.100.1", "dpext"]));
    let counts = || published::counts(&root.pins).unwrap();
    let rounds = 10;
    for round in 0..rounds {
        // One host port, eight different containers.
        let port = (50000 + round).to_string();
        let outs = std::sync::Mutex::new(Vec::new());
        in_parallel(|w| {
            let ctr = format!("10.0.0.{}", 10 + w);
            let o = ctl(&dir, n, &["map", "dnat", "add", &port, &ctr, "dpv0", MAC]);
            outs.lock().unwrap().push(o);
            Vec::new()
        });
        let outs = outs.into_inner().unwrap();
        let won = outs.iter().filter(|o| o.code == Some(0)).count();
        assert_eq!(won, 1, "round {round}: {won} of {WORKERS} claims of one host port succeeded");
        for o in outs.iter().filter(|o| o.code != Some(0)) {
            assert_one_line_failure("losing claim", o);
        }
        assert_eq!(counts(), [1; 3], "round {round}: mappings, mapping_rev and dnat4 out of step");
        assert_ok("del", &ctl(&dir, None, &["map", "dnat", "del", &port]));

        // One container endpoint, eight different host ports.
        let outs = std::sync::Mutex::new(Vec::new());
        in_parallel(|w| {
            let port = (51000 + w).to_string();
            let o = ctl(&dir, n, &["map", "dnat", "add", &port, "10.0.0.2", "dpv0", MAC]);
            outs.lock().unwrap().push((port, o));
            Vec::new()
        });
        let outs = outs.into_inner().unwrap();
        let winners: Vec<_> = outs.iter().filter(|(_, o)| o.code == Some(0)).collect();
        assert_eq!(winners.len(), 1, "round {round}: {} of {WORKERS} host ports for one container port succeeded", winners.len());
        assert_eq!(counts(), [1; 3], "round {round}: mappings, mapping_rev and dnat4 out of step");
        assert_ok("del", &ctl(&dir, None, &["map", "dnat", "del", &winners[0].0]));
        assert_eq!(counts(), [0; 3]);
    }
    eprintln!("claims: {rounds} rounds of {WORKERS} conflicting adds, twice");
}

/// Identical adds racing each other must all succeed and leave mappings,
/// mapping_rev and dnat4 in step; so must an add racing a delete of the
/// same mapping (all three entries there, or none). Hammered in-process
/// by threads that live for the whole test, because the window is a few
/// microseconds wide and processes start milliseconds apart. Every round
/// also hands out and frees a slot, so the free list is worked through
/// many times.
#[test]
fn racing_adds_keep_mappings_and_dnat_in_step() {
    if !privileged("racing_adds_keep_mappings_and_dnat_in_step") {
        return;
    }
    let root = TestRoot::loaded();
    let ns = host_ns();
    let (ifindex, _) = ns.iface("dpv0");
    datapath::ops::snat_set(&root.pins, Some(&ns.name), Ipv4Addr::new(198, 51, 100, 1), "dpext").unwrap();
    let m = Mapping {
        ext_addr: Ext::Default,
        host_port: 30001,
        proto: Proto::Tcp,
        ctr_ip: Ipv4Addr::new(10, 0, 0, 2).into(),
        ctr_port: 25565,
        ctr_mac: [0x02, 0xc0, 0, 0, 0, 2],
        veth_ifindex: ifindex,
    };
    let started = Instant::now();

    // Phase 1: THREADS identical adds at once, ROUNDS times.
    // Phase 2: one add and one delete of the same mapping at once.
    const THREADS: usize = 3;
    let rounds = if std::env::var("DATAPATH_LONG_TESTS").as_deref() == Ok("1") { 100_000 } else { 20_000 };
    let mut report = Vec::new();
    for phase in [1, 2] {
        let start = Barrier::new(THREADS + 1);
        let done = Barrier::new(THREADS + 1);
        let results = std::sync::Mutex::new(Vec::new());
        let mut broken = Vec::new();
        let mut n_broken = 0usize;
        let mut refused = 0usize;
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (start, done, results, pins, m) = (&start, &done, &results, &root.pins, &m);
                s.spawn(move || {
                    for _ in 0..rounds {
                        start.wait();
                        let r = if phase == 2 && t == 0 {
                            published::unpublish(pins, m.ext_addr, m.host_port, m.proto)
                        } else if phase == 2 && t > 1 {
                            Ok(Change::Unchanged)
                        } else {
                            published::publish(pins, m)
                        };
                        results.lock().unwrap().push(r.map_err(|e| format!("{e:#}")));
                        done.wait();
                    }
                });
            }
            for round in 0..rounds {
                // Phase 1 starts from nothing, phase 2 from the mapping.
                if phase == 1 {
                    published::unpublish(&root.pins, m.ext_addr, m.host_port, m.proto).unwrap();
                } else {
                    published::publish(&root.pins, &m).unwrap();
                }
                start.wait();
                done.wait();
                let rs: Vec<_> = std::mem::take(&mut *results.lock().unwrap());
                refused += rs.iter().filter(|r| r.is_err()).count();
                let counts = published::counts(&root.pins).unwrap();
                let in_step = if phase == 1 { counts == [1; 3] } else { counts == [0; 3] || counts == [1; 3] };
                if !in_step && broken.len() < 3 {
                    broken.push(format!("round {round}: (mappings, mapping_rev, dnat4) {counts:?} after {rs:?}"));
                }
                if !in_step {
                    n_broken += 1;
                    // Repair, so every round starts from the same state.
                    let _ = published::unpublish(&root.pins, m.ext_addr, m.host_port, m.proto);
                    clear(&root.pins, "mapping_rev");
                    clear(&root.pins, "dnat4");
                }
            }
        });
        if phase == 1 && refused > 0 {
            report.push(format!("phase 1: {refused} of {} identical adds were refused while racing each other", THREADS * rounds));
        }
        if !broken.is_empty() {
            report.push(format!(
                "phase {phase}: mappings, mapping_rev and dnat4 out of step after {n_broken} of {rounds} rounds, e.g. {}",
                broken.join(" | ")
            ));
        }
    }
    eprintln!("racing adds: 2 x {rounds} rounds in {:.1?}", started.elapsed());
    // Phase 1 races identical adds, phase 2 an add against a delete of the
    // same mapping. Every identical add must succeed, and the three maps
    // must agree after every round: a mapping without its dnat4 entry is
    // published but unreachable, a dnat4 entry without its mapping
    // forwards a port nobody can list or delete.
    assert!(report.is_empty(), "{}", report.join("\n"));
}

/// Deletes every entry of a hash map.
fn clear(pins: &PinRoot, map: &str) {
    let h = datapath::maps::open(pins, map).unwrap();
    let keys: Vec<Vec<u8>> = h.keys().collect();
    for k in keys {
        let _ = h.delete(&k);
    }
}
