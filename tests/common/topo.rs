//! End-to-end topology driven through the real `datapathctl` binary.
//!
//! ```text
//!  player ns                 host ns                          container ns (one per ctr)
//!  pl<id> 10.98.0.2/24 ─── ex<id> 10.98.0.1/24   [dnat]
//!                            dp-… 169.254.1.1/32 ─────────── eth0 10.99.<i>.2/32
//!                            [arp, snat, tproxy]              default via 169.254.1.1
//! ```
//!
//! Everything a [`Topo`] creates (pin root, namespaces, interfaces, the
//! proxy's cgroup) has a name of its own and is removed when it drops, also
//! when the test panics. Sockets are made on short-lived threads that enter
//! a namespace ([`within`]); a socket stays in the namespace it was made in,
//! so the test thread then uses it from anywhere.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use datapath::net::netns::NetnsGuard;
use datapath::net::rtnl::{Route, RouteScope, Rtnl};
use datapath::net::wiring::{self, Wiring};
use nix::libc;

use super::unique;

/// The binary under test.
pub const DATAPATHCTL: &str = env!("CARGO_BIN_EXE_datapathctl");

/// The host's external address, as players see it.
pub const EXT_IP: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
/// The player's address.
pub const PLAYER_IP: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 2);
/// Port every container's server listens on.
pub const CTR_PORT: u16 = 25565;
/// The proxy's ports on the host (datapathctl's defaults).
pub const PROXY_DNS: u16 = 9053;
pub const PROXY_HTTP: u16 = 9080;
pub const PROXY_TCP: u16 = 9111;

/// Default timeout of every socket operation expected to succeed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// datapathctl

/// `datapathctl` with a pin root of its own under /sys/fs/bpf; unloaded
/// (and the root removed) on drop.
pub struct Ctl {
    pub root: PathBuf,
    /// The binary: this build's, or another release's (an upgrade test
    /// sets the pin root up with it, then switches).
    pub bin: PathBuf,
}

impl Ctl {
    pub fn new() -> Self {
        Self { root: PathBuf::from("/sys/fs/bpf").join(unique("dpe")), bin: PathBuf::from(DATAPATHCTL) }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args).env("DATAPATH_PIN_ROOT", &self.root);
        c
    }

    /// Runs datapathctl; Ok(stdout) on exit 0, Err(description) otherwise.
    pub fn try_run(&self, args: &[&str]) -> Result<String, String> {
        let out = self.command(args).output().map_err(|e| format!("running {}: {e}", self.bin.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "`datapathctl {}` exited with {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    #[track_caller]
    pub fn run(&self, args: &[&str]) -> String {
        self.try_run(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs datapathctl with `--json` and parses what it printed.
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.run(&a);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("`datapathctl {}` printed no JSON ({e}): {out}", a.join(" ")))
    }

    /// `stats --json` as "program/reason" -> packets.
    #[track_caller]
    pub fn stats(&self) -> BTreeMap<String, u64> {
        let v = self.json(&["stats"]);
        let rows = v.as_array().unwrap_or_else(|| panic!("`stats --json` is not an array: {v}"));
        rows.iter()
            .map(|r| {
                let name = format!("{}/{}", r["program"].as_str().unwrap_or("?"), r["reason"].as_str().unwrap_or("?"));
                (name, r["packets"].as_u64().unwrap_or_else(|| panic!("counter without packets: {r}")))
            })
            .collect()
    }
}

impl Ctl {
    /// The pinned programs of these names (`status --json`): (name, id),
    /// sorted.
    #[track_caller]
    pub fn pinned_programs(&self, names: &[&str]) -> Vec<(String, u64)> {
        let st = self.json(&["status"]);
        let mut progs: Vec<(String, u64)> = st["programs"]
            .as_array()
            .unwrap_or_else(|| panic!("`status --json` lists no programs: {st}"))
            .iter()
            .map(|p| (p["name"].as_str().unwrap_or("").to_string(), p["id"].as_u64().unwrap_or(0)))
            .filter(|(n, _)| names.contains(&n.as_str()))
            .collect();
        progs.sort();
        progs
    }
}

/// The programs `attach host-access` puts on a cgroup, sorted.
pub const HOST_ACCESS_PROGS: [&str; 4] = ["connect4", "getpeername4", "recvmsg4", "sendmsg4"];

/// Programs of these names attached to cgroup `cg` itself (not inherited
/// ones), as `bpftool cgroup show` lists them: (name, id), sorted.
#[track_caller]
pub fn cgroup_programs(cg: &Path, names: &[&str]) -> Vec<(String, u64)> {
    let out = Command::new("bpftool").args(["-j", "cgroup", "show"]).arg(cg).output().expect("running bpftool");
    assert!(out.status.success(), "bpftool cgroup show {}: {}", cg.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = if text.trim().is_empty() {
        serde_json::Value::Array(Vec::new())
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bpftool printed no JSON ({e}): {text}"))
    };
    let mut progs: Vec<(String, u64)> = v
        .as_array()
        .unwrap_or_else(|| panic!("bpftool printed no array: {v}"))
        .iter()
        .map(|p| (p["name"].as_str().unwrap_or("").to_string(), p["id"].as_u64().unwrap_or(0)))
        .filter(|(n, _)| names.contains(&n.as_str()))
        .collect();
    progs.sort();
    progs
}

impl Drop for Ctl {
    fn drop(&mut self) {
        if !self.root.exists() {
            return;
        }
        if let Err(e) = self.try_run(&["unload"]) {
            eprintln!("cleanup: {e}; removing {} by hand", self.root.display());
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

// ---------------------------------------------------------------------------
// Namespaces and commands

#[track_caller]
pub fn ip(args: &str) {
    let out =
        Command::new("ip").args(args.split_whitespace()).output().unwrap_or_else(|e| panic!("running ip {args}: {e}"));
    assert!(
        out.status.success(),
        "`ip {args}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// `ip -j ...` parsed.
#[track_caller]
pub fn ip_json(args: &str) -> serde_json::Value {
    let out = Command::new("ip")
        .arg("-j")
        .args(args.split_whitespace())
        .output()
        .unwrap_or_else(|e| panic!("running ip -j {args}: {e}"));
    assert!(out.status.success(), "`ip -j {args}` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return serde_json::Value::Array(Vec::new());
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("`ip -j {args}` printed no JSON ({e}): {text}"))
}

/// A route of `ip -j route show` as "dst[ via gw] dev X".
pub fn route_str(r: &serde_json::Value) -> String {
    let mut s = r["dst"].as_str().unwrap_or("?").to_string();
    if let Some(gw) = r["gateway"].as_str() {
        s += &format!(" via {gw}");
    }
    if let Some(dev) = r["dev"].as_str() {
        s += &format!(" dev {dev}");
    }
    s
}

/// Everything of namespace `ns` that wiring a container could touch, as
/// comparable lines: links (name, kind), addresses, and the routes of
/// every table, both families.
pub fn snapshot(ns: &str) -> std::collections::BTreeSet<String> {
    // The kernel adds an IPv6 address's local route when duplicate address
    // detection ends (about a second after a link comes up): wait for the
    // namespace to settle so that a snapshot never races it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && tentative(ns) {
        thread::sleep(Duration::from_millis(50));
    }
    let mut out = std::collections::BTreeSet::new();
    for l in ip_json(&format!("-d -n {ns} link show")).as_array().unwrap() {
        out.insert(format!("link {} {}", l["ifname"], l["linkinfo"]["info_kind"]));
        let addrs = ip_json(&format!("-n {ns} addr show dev {}", l["ifname"].as_str().unwrap()));
        for a in addrs[0]["addr_info"].as_array().into_iter().flatten() {
            out.insert(format!("addr {} {}/{}", l["ifname"], a["local"], a["prefixlen"]));
        }
    }
    for fam in ["-4", "-6"] {
        for r in ip_json(&format!("-n {ns} {fam} route show table all")).as_array().unwrap() {
            out.insert(format!("route {} {} table {}", r["type"], route_str(r), r["table"]));
        }
    }
    out
}

/// Whether an address of namespace `ns` is still in duplicate address
/// detection.
fn tentative(ns: &str) -> bool {
    ip_json(&format!("-n {ns} addr show")).as_array().unwrap().iter().any(|l| {
        l["addr_info"].as_array().into_iter().flatten().any(|a| a["tentative"].as_bool() == Some(true))
    })
}

/// Asserts that two snapshots are the same, naming what differs.
#[track_caller]
pub fn assert_same(what: &str, before: &std::collections::BTreeSet<String>, after: &std::collections::BTreeSet<String>) {
    let added: Vec<_> = after.difference(before).collect();
    let removed: Vec<_> = before.difference(after).collect();
    assert!(added.is_empty() && removed.is_empty(), "{what}: left behind {added:?}, removed {removed:?}");
}

/// Runs `f` on a thread inside network namespace `ns` and returns its
/// result; a panic in `f` is the caller's panic.
pub fn within<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|s| {
        let h = s.spawn(|| {
            let _g = NetnsGuard::enter(Some(ns)).unwrap_or_else(|e| panic!("entering netns {ns}: {e:#}"));
            f()
        });
        h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Runs `f` on a new thread inside network namespace `ns`.
pub fn spawn_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let ns = ns.to_string();
    thread::spawn(move || {
        let _g = NetnsGuard::enter(Some(&ns)).unwrap_or_else(|e| panic!("entering netns {ns}: {e:#}"));
        f()
    })
}

/// Joins a thread, passing its panic on.
pub fn join<T>(h: JoinHandle<T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Waits until an interface is operationally up: until the kernel's link
/// watch has activated its qdisc, the first packets sent through it are
/// dropped.
#[track_caller]
pub fn wait_up(ns: &str, dev: &str) {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let v = ip_json(&format!("-n {ns} link show dev {dev}"));
        let state = v[0]["operstate"].as_str().unwrap_or("").to_string();
        if state == "UP" {
            return;
        }
        assert!(Instant::now() < deadline, "{dev} in {ns} is still {state:?} after {IO_TIMEOUT:?}, expected UP");
        thread::sleep(Duration::from_millis(5));
    }
}

/// One counter of /proc/net/snmp ("Icmp", "InEchos") in namespace `ns`.
pub fn snmp(ns: &str, group: &str, field: &str) -> u64 {
    let text = within(ns, || std::fs::read_to_string("/proc/thread-self/net/snmp").expect("reading snmp"));
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let names: Vec<&str> = lines.next().expect("snmp header").split_whitespace().collect();
    let values: Vec<&str> = lines.next().expect("snmp values").split_whitespace().collect();
    let i = names.iter().position(|n| *n == field).unwrap_or_else(|| panic!("no {group} {field} in snmp"));
    values[i].parse().expect("snmp value")
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    datapath::net::netif::format_mac(mac)
}

// ---------------------------------------------------------------------------
// The topology

pub struct Ctr {
    pub ns: String,
    /// Host side of the container's veth, in the host namespace.
    pub veth: String,
    /// The container's address (10.99.<i>.2).
    pub ip: Ipv4Addr,
    /// The host veth's address (the gateway every container has), the
    /// container's gateway.
    pub gw: Ipv4Addr,
    /// MAC of the container's eth0.
    pub mac: [u8; 6],
    /// MAC of the host veth.
    pub host_mac: [u8; 6],
    /// Still wired (not removed by [`Topo::remove_container`]).
    pub wired: bool,
}

impl Ctr {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }
}

pub struct Topo {
    pub id: String,
    pub player: String,
    pub host: String,
    /// External interface in the host namespace.
    pub ext: String,
    pub ctrs: Vec<Ctr>,
    /// cgroup the proxy's listening sockets belong to (getsockopt attached).
    pub cgroup: Option<PathBuf>,
    namespaces: Vec<String>,
    /// Host-side veths to delete on drop: (namespace, interface).
    links: Vec<(String, String)>,
    /// Declared last: dropped (unloaded) after the explicit cleanup in
    /// Drop, which needs nothing of it.
    pub ctl: Ctl,
}

impl Topo {
    /// Wires the player and host namespaces and sets the host up with
    /// `datapathctl setup` on a fresh pin root: the external address, dnat
    /// on the external interface, getsockopt on a proxy cgroup of its own.
    pub fn new() -> Self {
        Self::new_with(Path::new(DATAPATHCTL))
    }

    /// Like [`Topo::new`], set up by another `datapathctl` (the release
    /// before, for an upgrade test); `ctl.bin` says which runs next.
    pub fn new_with(bin: &Path) -> Self {
        Self::build(bin, PathBuf::from("/sys/fs/bpf").join(unique("dpe")))
    }

    /// Like [`Topo::new`], with the pin root at `root` (on a bpffs of the
    /// test's own).
    pub fn new_at(root: PathBuf) -> Self {
        Self::build(Path::new(DATAPATHCTL), root)
    }

    fn build(bin: &Path, root: PathBuf) -> Self {
        let id = unique("");
        let mut t = Topo {
            player: format!("dpe{id}p"),
            host: format!("dpe{id}h"),
            ext: format!("ex{id}"),
            id,
            ctrs: Vec::new(),
            cgroup: None,
            namespaces: Vec::new(),
            links: Vec::new(),
            ctl: Ctl { root, bin: bin.to_path_buf() },
        };
        for ns in [t.player.clone(), t.host.clone()] {
            ip(&format!("netns add {ns}"));
            t.namespaces.push(ns.clone());
            ip(&format!("-n {ns} link set lo up"));
        }
        let pl = format!("pl{}", t.id);
        ip(&format!("-n {} link add {} type veth peer name {pl} netns {}", t.host, t.ext, t.player));
        t.links.push((t.host.clone(), t.ext.clone()));
        ip(&format!("-n {} addr add {EXT_IP}/24 dev {}", t.host, t.ext));
        ip(&format!("-n {} addr add {PLAYER_IP}/24 dev {pl}", t.player));
        ip(&format!("-n {} link set {} up", t.host, t.ext));
        ip(&format!("-n {} link set {pl} up", t.player));
        wait_up(&t.host, &t.ext);
        wait_up(&t.player, &pl);
        // The proxy's cgroup, of this topology's own: setup attaches
        // getsockopt to it (never to the machine's root cgroup), and no
        // host access (whose default is the root).
        let cg = t.own_cgroup();
        if t.current() {
            // Host access is attached where a test asks for it
            // (host_access_cgroup()).
            t.ctl.run(&["-n", &t.host, "setup", "--external", &t.ext, "--proxy-cgroup", cg.to_str().unwrap(), "--no-host-access"]);
        } else {
            // A release without `setup`: its commands one by one.
            t.ctl.run(&["load"]);
            t.ctl.run(&["-n", &t.host, "map", "snat", "set", &EXT_IP.to_string(), &t.ext]);
            t.ctl.run(&["-n", &t.host, "attach", "dnat", &t.ext]);
            t.ctl.run(&["attach", "getsockopt", cg.to_str().unwrap()]);
        }
        t
    }

    /// Whether `ctl` is this build's `datapathctl` (not another release's).
    fn current(&self) -> bool {
        self.ctl.bin == Path::new(DATAPATHCTL)
    }

    /// Adds container `i` (the next index) with `datapathctl container
    /// add`: namespace, veth pair, addresses and routes, registration, host
    /// programs. With `gateway` false its default route has no gateway, so
    /// it ARPs for every destination.
    pub fn add_container(&mut self, gateway: bool) -> usize {
        self.wire_container(gateway, true, &[])
    }

    /// [`Topo::add_container`] publishing `(host port, proto, container
    /// port)`s with `container add --publish`.
    pub fn add_published(&mut self, gateway: bool, ports: &[(u16, &str, u16)]) -> usize {
        self.wire_container(gateway, true, ports)
    }

    /// Adds container `i` like [`Topo::add_container`], then unregisters
    /// its veth (`map veth del`): a veth the datapath does not know, with
    /// the host programs attached.
    pub fn add_unregistered_container(&mut self, gateway: bool) -> usize {
        self.wire_container(gateway, false, &[])
    }

    fn wire_container(&mut self, gateway: bool, register: bool, ports: &[(u16, &str, u16)]) -> usize {
        if !self.current() {
            assert!(ports.is_empty(), "another release's datapathctl has no container add: publish by hand");
            return self.wire_by_hand(gateway, register);
        }
        let i = self.ctrs.len();
        let ns = format!("dpe{}c{i}", self.id);
        let ctr_ip = Ipv4Addr::new(10, 99, i as u8, 2);
        ip(&format!("netns add {ns}"));
        self.namespaces.push(ns.clone());
        ip(&format!("-n {ns} link set lo up"));
        let ip_s = ctr_ip.to_string();
        let mut args = vec!["-n", &self.host, "container", "add", &ns, "--netns", &ns, "--ip", &ip_s, "--json"];
        let publish: Vec<String> = ports.iter().map(|(p, proto, to)| format!("{p}:{to}/{proto}")).collect();
        for p in &publish {
            args.extend(["--publish", p.as_str()]);
        }
        let out = self.ctl.run(&args);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("`container add` printed no JSON ({e}): {out}"));
        let c = &v["container"];
        let veth = c["host_ifname"].as_str().expect("host_ifname").to_string();
        let gw: Ipv4Addr = c["gateway4"].as_str().expect("gateway4").parse().unwrap();
        let mac = datapath::net::netif::parse_mac(c["ctr_mac"].as_str().expect("ctr_mac")).unwrap();
        self.links.push((self.host.clone(), veth.clone()));
        if !gateway {
            let mut nl = Rtnl::open_in(&Path::new("/run/netns").join(&ns)).expect("rtnetlink in the container");
            let eth0 = nl.link("eth0").expect("eth0").index;
            nl.del_route(&Route::default_via(gw.into(), eth0)).expect("removing the default route");
            nl.del_route(&Route::to_gateway(gw.into(), eth0)).expect("removing the route to the gateway");
            let on_link = Route { gateway: None, scope: RouteScope::Link, ..Route::default_via(gw.into(), eth0) };
            nl.add_route(&on_link).expect("default route on the link");
        }
        wait_up(&ns, "eth0");
        wait_up(&self.host, &veth);
        let host_mac = within(&self.host, || datapath::net::netif::mac_of(&veth)).expect("host veth MAC");
        if !register {
            self.ctl.run(&["-n", &self.host, "map", "veth", "del", &veth]);
        }
        self.ctrs.push(Ctr { ns, veth, ip: ctr_ip, gw, mac, host_mac, wired: true });
        i
    }

    /// Adds container `i` with another release's `datapathctl`, as a
    /// provisioning script of that release does: namespace, veth pair,
    /// addresses and routes (this build's `net::wiring`, with a gateway of
    /// the container's own, 10.99.<i>.1), `map veth add`, `attach host`.
    fn wire_by_hand(&mut self, gateway: bool, register: bool) -> usize {
        let i = self.ctrs.len();
        let ns = format!("dpe{}c{i}", self.id);
        let veth = format!("h{}c{i}", self.id);
        let ctr_ip = Ipv4Addr::new(10, 99, i as u8, 2);
        let gw = Ipv4Addr::new(10, 99, i as u8, 1);
        ip(&format!("netns add {ns}"));
        self.namespaces.push(ns.clone());
        ip(&format!("-n {ns} link set lo up"));
        let mut w = Wiring::new(&ns, Path::new("/run/netns").join(&ns), ctr_ip);
        w.host_ifname = veth.clone();
        w.gateway4 = gw;
        let wired = within(&self.host, || wiring::wire(&w)).unwrap_or_else(|e| panic!("wiring {veth}: {e}"));
        self.links.push((self.host.clone(), veth.clone()));
        if !gateway {
            let mut nl = Rtnl::open_in(&w.netns).expect("rtnetlink in the container");
            let eth0 = wired.ctr.index;
            nl.del_route(&Route::default_via(gw.into(), eth0)).expect("removing the default route");
            nl.del_route(&Route::to_gateway(gw.into(), eth0)).expect("removing the route to the gateway");
            let on_link = Route { gateway: None, scope: RouteScope::Link, ..Route::default_via(gw.into(), eth0) };
            nl.add_route(&on_link).expect("default route on the link");
        }
        wait_up(&ns, "eth0");
        wait_up(&self.host, &veth);
        let (mac, host_mac) = (wired.ctr.mac.expect("container MAC"), wired.host.mac.expect("host veth MAC"));
        if register {
            self.ctl.run(&["-n", &self.host, "map", "veth", "add", &veth, &ctr_ip.to_string()]);
        }
        self.ctl.run(&["-n", &self.host, "attach", "host", &veth]);
        self.ctrs.push(Ctr { ns, veth, ip: ctr_ip, gw, mac, host_mac, wired: true });
        i
    }

    /// Publishes container `i`'s port `to_port` on host port `port`, by
    /// hand (`map dnat add`).
    pub fn publish(&self, port: u16, i: usize, proto: &str, to_port: u16) {
        let c = &self.ctrs[i];
        self.ctl.run(&[
            "-n",
            &self.host,
            "map",
            "dnat",
            "add",
            &port.to_string(),
            &c.ip.to_string(),
            &c.veth,
            &format_mac(&c.mac),
            "--proto",
            proto,
            "--to-port",
            &to_port.to_string(),
        ]);
    }

    /// Removes container `i` with `datapathctl container del` (its
    /// namespace stays, empty).
    pub fn remove_container(&mut self, i: usize) {
        self.ctl.run(&["container", "del", &self.ctrs[i].ns]);
        let veth = self.ctrs[i].veth.clone();
        self.links.retain(|(_, l)| *l != veth);
        self.ctrs[i].wired = false;
    }

    /// The test's own cgroup under the cgroup v2 mount (made on first use,
    /// removed on drop): the proxy's and the host processes' sockets are
    /// made in it, and the datapath's cgroup programs go on it, never on
    /// the root.
    pub fn own_cgroup(&mut self) -> PathBuf {
        if let Some(dir) = &self.cgroup {
            return dir.clone();
        }
        let root = datapath::kernel::attach::cgroup2_root().expect("cgroup v2 mount");
        let dir = root.join(format!("dpe{}", self.id));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
        self.cgroup = Some(dir.clone());
        dir
    }

    /// The proxy's cgroup (of this topology's own, under the cgroup v2
    /// mount), getsockopt attached to it by `setup`.
    pub fn proxy_cgroup(&mut self) -> PathBuf {
        self.cgroup.clone().expect("Topo::new makes the proxy's cgroup")
    }

    /// The test's cgroup with host access attached, for the sockets of the
    /// host namespace (`-n`: the namespace whose cookie it records).
    pub fn host_access_cgroup(&mut self) -> PathBuf {
        let dir = self.own_cgroup();
        self.ctl.run(&["-n", &self.host, "attach", "host-access", dir.to_str().unwrap()]);
        dir
    }

    /// Unbound sockets of a host process in the test's cgroup (see
    /// [`client_sockets_in_cgroup`]).
    pub fn host_sockets(&self, kinds: &[Kind]) -> Vec<OwnedFd> {
        let cg = self.cgroup.as_ref().expect("own_cgroup() first");
        client_sockets_in_cgroup(&self.host, cg, kinds)
    }

    /// Listening sockets of the proxy on the host, made by a process in
    /// the proxy's cgroup (see [`sockets_in_cgroup`]).
    pub fn proxy_sockets(&self, specs: &[(Kind, u16)]) -> Vec<OwnedFd> {
        let cg = self.cgroup.as_ref().expect("proxy_cgroup() first");
        sockets_in_cgroup(&self.host, cg, specs)
    }

    /// The player's TCP connection to the host's external address.
    pub fn player_connect(&self, port: u16, timeout: Duration) -> io::Result<TcpStream> {
        tcp_connect(&self.player, SocketAddr::from((EXT_IP, port)), timeout)
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        // Detach and unpin first, while every interface still exists.
        if self.ctl.root.exists() {
            if let Err(e) = self.ctl.try_run(&["unload"]) {
                eprintln!("cleanup: {e}; removing {} by hand", self.ctl.root.display());
                let _ = std::fs::remove_dir_all(&self.ctl.root);
            }
        }
        // Deleting a veth takes its peer with it. Done before the
        // namespaces go, because a socket a test still holds keeps its
        // namespace, and so its interfaces, alive after `ip netns del`.
        for (ns, link) in self.links.drain(..).rev() {
            let _ = Command::new("ip").args(["-n", &ns, "link", "del", &link]).output();
        }
        for ns in self.namespaces.drain(..).rev() {
            let out = Command::new("ip").args(["netns", "del", &ns]).output();
            if !matches!(out, Ok(ref o) if o.status.success()) {
                eprintln!("cleanup: ip netns del {ns} failed: {out:?}");
            }
        }
        if let Some(cg) = self.cgroup.take() {
            // The helper process that made the proxy's sockets has exited
            // and been reaped, so the cgroup is empty.
            if let Err(e) = std::fs::remove_dir(&cg) {
                eprintln!("cleanup: removing cgroup {}: {e}", cg.display());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Sockets

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    Udp,
    /// TCP on [::] with IPV6_V6ONLY off: a dual-stack socket, whose IPv4
    /// peers are IPv4-mapped IPv6 addresses (::ffff:a.b.c.d).
    TcpDual,
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
        sin_zero: [0; 8],
    }
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("IPv4 only, got {a}"),
    }
}

/// Listening sockets bound to 0.0.0.0:<port> (or [::]:<port>, dual-stack,
/// for `Kind::TcpDual`) in namespace `ns`, created by a short-lived child
/// process placed in `cgroup` first.
///
/// cgroup/getsockopt runs for a socket according to the cgroup the
/// socket was created in (an accepted socket inherits its listener's), and
/// cgroup v2 moves whole processes, not threads: the test process itself
/// must stay where it is, as the other tests run in it. So a forked child
/// joins the cgroup, makes the sockets and passes them back over a unix
/// socket (SCM_RIGHTS). Between fork and _exit the child only makes
/// system calls on buffers prepared beforehand: the parent has other
/// threads, and any of them may hold the allocator's lock at fork time.
pub fn sockets_in_cgroup(ns: &str, cgroup: &Path, specs: &[(Kind, u16)]) -> Vec<OwnedFd> {
    let plan = specs
        .iter()
        .map(|(k, port)| {
            // SAFETY: sockaddr_storage is plain data; all-zero is valid.
            let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let len = if *k == Kind::TcpDual {
                // SAFETY: sockaddr_storage is large and aligned enough for
                // every address family.
                let a6 = unsafe { &mut *(&mut addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                a6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                a6.sin6_port = port.to_be();
                std::mem::size_of::<libc::sockaddr_in6>()
            } else {
                // SAFETY: as above.
                let a4 = unsafe { &mut *(&mut addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                *a4 = sockaddr_in(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, *port));
                std::mem::size_of::<libc::sockaddr_in>()
            };
            Plan { kind: *k, addr: Some((addr, len as libc::socklen_t)) }
        })
        .collect();
    make_sockets_in_cgroup(ns, cgroup, plan)
}

/// Unbound sockets in namespace `ns`, made by a short-lived child process
/// in `cgroup` (see [`sockets_in_cgroup`]): the sockets of a host process
/// in that cgroup, which the test then connects or sends from. The cgroup
/// programs that see a socket's calls are those of the cgroup it was made
/// in, whoever calls.
pub fn client_sockets_in_cgroup(ns: &str, cgroup: &Path, kinds: &[Kind]) -> Vec<OwnedFd> {
    make_sockets_in_cgroup(ns, cgroup, kinds.iter().map(|k| Plan { kind: *k, addr: None }).collect())
}

/// One socket the child makes: its kind, and the address to bind it to
/// (with its length), if any.
struct Plan {
    kind: Kind,
    addr: Option<(libc::sockaddr_storage, libc::socklen_t)>,
}

/// Sockets of the given types made in `ns` by a child in `cgroup`; each is
/// bound to its address (and a TCP one listens) if it has one.
fn make_sockets_in_cgroup(ns: &str, cgroup: &Path, plan: Vec<Plan>) -> Vec<OwnedFd> {
    const MAX: usize = 8;
    assert!(plan.len() <= MAX, "at most {MAX} sockets at a time");
    let n = plan.len();
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    // The child's message: one byte, and the descriptors as SCM_RIGHTS.
    let mut cmsg_buf = [0u64; 16];
    let one = 1 as libc::c_int;
    let child_sock = theirs.as_raw_fd();

    // The child inherits the network namespace of the thread that forks.
    let pid = within(ns, || {
        // SAFETY: the child runs only `child_make_sockets`, which makes
        // raw system calls on memory prepared above and never returns.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see child_make_sockets.
            unsafe { child_make_sockets(&procs, &plan, child_sock, &mut cmsg_buf, &one) }
        }
        pid
    });
    assert!(pid > 0, "fork failed: {}", io::Error::last_os_error());
    drop(theirs);

    let mut status = 0;
    // SAFETY: pid is our child; status is a valid out pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid, "waitpid: {}", io::Error::last_os_error());
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    assert_eq!(
        code,
        0,
        "the helper making sockets in cgroup {} failed at step {code} \
         (1: join cgroup, 2: socket, 3: bind, 4: listen, 5: send)",
        cgroup.display()
    );
    receive_fds(&ours, n)
}

/// The child side of [`sockets_in_cgroup`].
///
/// # Safety
/// Must only be called in a freshly forked child; never returns.
unsafe fn child_make_sockets(
    procs: &CString,
    plan: &[Plan],
    sock: RawFd,
    cmsg_buf: &mut [u64; 16],
    one: &libc::c_int,
) -> ! {
    let fail = |step: i32| -> ! { libc::_exit(step) };
    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
        fail(1);
    }
    libc::close(fd);
    let mut fds = [0 as libc::c_int; 8];
    let off: libc::c_int = 0;
    for (i, p) in plan.iter().enumerate() {
        let ty = if p.kind == Kind::Udp { libc::SOCK_DGRAM } else { libc::SOCK_STREAM };
        let domain = if p.kind == Kind::TcpDual { libc::AF_INET6 } else { libc::AF_INET };
        let s = libc::socket(domain, ty, 0);
        if s < 0 {
            fail(2);
        }
        fds[i] = s;
        if domain == libc::AF_INET6 {
            libc::setsockopt(
                s,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                (&off as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let Some((addr, len)) = &p.addr else { continue };
        libc::setsockopt(
            s,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        if libc::bind(s, (addr as *const libc::sockaddr_storage).cast(), *len) != 0 {
            fail(3);
        }
        if ty == libc::SOCK_STREAM && libc::listen(s, 128) != 0 {
            fail(4);
        }
    }
    let n = plan.len();
    let data_len = (n * std::mem::size_of::<libc::c_int>()) as libc::c_uint;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut msg: libc::msghdr = std::mem::zeroed();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = libc::CMSG_SPACE(data_len) as _;
    let cmsg = libc::CMSG_FIRSTHDR(&msg);
    (*cmsg).cmsg_level = libc::SOL_SOCKET;
    (*cmsg).cmsg_type = libc::SCM_RIGHTS;
    (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
    std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), n);
    if libc::sendmsg(sock, &msg, 0) != 1 {
        fail(5);
    }
    libc::_exit(0)
}

fn receive_fds(sock: &UnixStream, n: usize) -> Vec<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut cmsg_buf = [0u64; 16];
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg_buf) as _;
    // SAFETY: msg points at live buffers of the sizes given.
    let rc = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    assert_eq!(rc, 1, "receiving the sockets made in the cgroup: {}", io::Error::last_os_error());
    // SAFETY: the kernel filled msg_control; the header walk stays inside it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        assert!(
            !cmsg.is_null() && (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS,
            "no SCM_RIGHTS message from the helper"
        );
        let got = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<libc::c_int>();
        assert_eq!(got, n, "the helper passed {got} sockets, expected {n}");
        let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
        (0..n).map(|i| OwnedFd::from_raw_fd(data.add(i).read_unaligned())).collect()
    }
}

pub fn tcp_listen(ns: &str, port: u16) -> TcpListener {
    within(ns, || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap_or_else(|e| panic!("listening on {port} in {ns}: {e}"))
    })
}

pub fn udp_bind(ns: &str, addr: SocketAddr) -> UdpSocket {
    within(ns, || {
        let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("binding UDP {addr} in {ns}: {e}"));
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    })
}

/// TCP connection from namespace `ns`, with read and write timeouts set.
pub fn tcp_connect(ns: &str, to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    within(ns, || {
        let s = TcpStream::connect_timeout(&to, timeout)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(s)
    })
}

/// TCP connection from namespace `ns` out of a given local address, with
/// read and write timeouts set.
pub fn tcp_connect_from(ns: &str, local: SocketAddr, to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let (local, to) = (sockaddr_in(v4(local)), sockaddr_in(v4(to)));
    within(ns, move || {
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is fresh and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // A blocking connect gives up after SO_SNDTIMEO.
        let tv = libc::timeval { tv_sec: timeout.as_secs() as _, tv_usec: timeout.subsec_micros() as _ };
        // SAFETY: valid descriptor; option values point at live locals of
        // the sizes given.
        unsafe {
            if libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                4,
            ) != 0
                || libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                ) != 0
                || libc::bind(fd.as_raw_fd(), (&local as *const libc::sockaddr_in).cast(), len) != 0
                || libc::connect(fd.as_raw_fd(), (&to as *const libc::sockaddr_in).cast(), len) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        let s = TcpStream::from(fd);
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(s)
    })
}

/// Connects a TCP socket made elsewhere (e.g. in a cgroup, see
/// [`client_sockets_in_cgroup`]) to `to`, giving up after `timeout`; the
/// stream gets the default I/O timeouts.
pub fn connect_fd(fd: OwnedFd, to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let to = sockaddr_in(v4(to));
    let tv = libc::timeval { tv_sec: timeout.as_secs() as _, tv_usec: timeout.subsec_micros() as _ };
    // SAFETY: valid descriptor; the option and the address point at live
    // locals of the sizes given.
    unsafe {
        // A blocking connect gives up after SO_SNDTIMEO.
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        ) != 0
            || libc::connect(
                fd.as_raw_fd(),
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// SO_COOKIE: the socket's cookie, as `bpf_get_socket_cookie()` sees it.
pub fn socket_cookie(fd: &impl AsRawFd) -> u64 {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid descriptor; cookie and len are live out pointers and
    // len holds cookie's size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "SO_COOKIE: {}", io::Error::last_os_error());
    cookie
}

/// Waits up to `timeout` for `fd` to become readable.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc > 0)
}

/// accept(2) with a timeout; the accepted stream gets the default I/O
/// timeouts.
pub fn accept(l: &TcpListener, timeout: Duration) -> io::Result<(TcpStream, SocketAddr)> {
    if !wait_readable(l.as_raw_fd(), timeout)? {
        return Err(io::Error::new(io::ErrorKind::TimedOut, format!("no connection within {timeout:?}")));
    }
    let (s, peer) = l.accept()?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok((s, peer))
}

/// SO_ORIGINAL_DST (linux/netfilter_ipv4.h), the option a transparent
/// proxy asks for the destination a connection was meant for.
pub const SO_ORIGINAL_DST: libc::c_int = 80;

/// getsockopt(SOL_IP, SO_ORIGINAL_DST) on an accepted socket.
pub fn original_dst(s: &TcpStream) -> io::Result<SocketAddrV4> {
    // SAFETY: sockaddr_in is plain data; all-zero is valid.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: valid descriptor; sin and len are live out pointers and len
    // holds sin's size.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut sin as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::sockaddr_in>() || sin.sin_family != libc::AF_INET as libc::sa_family_t
    {
        return Err(io::Error::other(format!("SO_ORIGINAL_DST returned length {len}, family {}", sin.sin_family)));
    }
    Ok(SocketAddrV4::new(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()), u16::from_be(sin.sin_port)))
}

/// Sends `msg` and reads back exactly as many bytes.
pub fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
    s.write_all(msg)?;
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

// ---------------------------------------------------------------------------
// Servers

/// A TCP echo server: every connection is echoed until EOF on a thread of
/// its own; the peer address of each is reported on `peers`. Stops
/// accepting when dropped.
pub struct EchoServer {
    pub peers: mpsc::Receiver<SocketAddr>,
    stop: Arc<AtomicBool>,
}

impl EchoServer {
    pub fn tcp(l: TcpListener) -> Self {
        let (tx, peers) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Ok((mut s, peer)) = accept(&l, Duration::from_millis(100)) else { continue };
                let _ = tx.send(peer);
                thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { peers, stop }
    }

    /// A UDP echo server: each datagram goes back to its sender.
    pub fn udp(s: UdpSocket) -> Self {
        let (tx, peers) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, from)) = s.recv_from(&mut buf) else { continue };
                let _ = s.send_to(&buf[..n], from);
                let _ = tx.send(from);
            }
        });
        Self { peers, stop }
    }

    /// The next connection's (or datagram's) peer address.
    #[track_caller]
    pub fn next_peer(&self, what: &str) -> SocketAddr {
        self.peers
            .recv_timeout(IO_TIMEOUT)
            .unwrap_or_else(|_| panic!("{what}: the server saw no connection within {IO_TIMEOUT:?}"))
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// Checksummed streams

/// FNV-1a, 64 bit: a stream's checksum on both ends.
pub fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
pub const FNV_INIT: u64 = 0xcbf29ce484222325;

/// Size of each write of [`stream_source`].
pub const STREAM_CHUNK: usize = 64 << 10;

/// The receiving end of a checksummed stream: accepts one connection,
/// counts (into `received`, as it goes) and checksums everything until
/// EOF, then answers with (length, checksum). Returns the same pair.
pub fn stream_sink(
    listener: TcpListener,
    who: &'static str,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> JoinHandle<Result<(u64, u64), String>> {
    std::thread::spawn(move || {
        let (s, _) = accept(&listener, IO_TIMEOUT).map_err(|e| format!("{who}: no connection: {e}"))?;
        sink(s, who, received)
    })
}

/// [`stream_sink`] on a connection made already (the side that connected
/// receives).
pub fn stream_sink_on(
    s: TcpStream,
    who: &'static str,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> JoinHandle<Result<(u64, u64), String>> {
    std::thread::spawn(move || sink(s, who, received))
}

fn sink(
    mut s: TcpStream,
    who: &'static str,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Result<(u64, u64), String> {
    {
        let (mut len, mut h) = (0u64, FNV_INIT);
        let mut buf = vec![0u8; STREAM_CHUNK];
        loop {
            let n = s.read(&mut buf).map_err(|e| format!("{who}: read failed after {len} bytes: {e}"))?;
            if n == 0 {
                break;
            }
            h = fnv(h, &buf[..n]);
            len += n as u64;
            received.store(len, std::sync::atomic::Ordering::Relaxed);
        }
        s.write_all(&[len.to_be_bytes(), h.to_be_bytes()].concat())
            .map_err(|e| format!("{who}: sending the summary failed: {e}"))?;
        Ok((len, h))
    }
}

/// The sending end: writes a pseudo-random pattern in [`STREAM_CHUNK`]s,
/// one every `pace`, while `go(bytes sent so far)` says so, then half-closes
/// and reads the sink's summary. Returns (sent, checksum sent, length
/// received, checksum received).
pub fn stream_source(
    mut s: TcpStream,
    who: &'static str,
    pace: Duration,
    go: impl Fn(u64) -> bool + Send + 'static,
) -> JoinHandle<Result<(u64, u64, u64, u64), String>> {
    std::thread::spawn(move || {
        let (mut sent, mut h, mut x) = (0u64, FNV_INIT, 0x9e3779b97f4a7c15u64);
        let mut chunk = vec![0u8; STREAM_CHUNK];
        while go(sent) {
            for w in chunk.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                w.copy_from_slice(&x.to_ne_bytes());
            }
            s.write_all(&chunk).map_err(|e| format!("{who}: write failed after {sent} bytes: {e}"))?;
            h = fnv(h, &chunk);
            sent += STREAM_CHUNK as u64;
            std::thread::sleep(pace);
        }
        s.shutdown(std::net::Shutdown::Write).map_err(|e| format!("{who}: shutdown: {e}"))?;
        let mut summary = [0u8; 16];
        s.read_exact(&mut summary).map_err(|e| format!("{who}: no summary from the receiver: {e}"))?;
        let len = u64::from_be_bytes(summary[..8].try_into().unwrap());
        let sum = u64::from_be_bytes(summary[8..].try_into().unwrap());
        Ok((sent, h, len, sum))
    })
}

// ---------------------------------------------------------------------------
// Addresses, counters, neighbours

pub fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

pub fn any(port: u16) -> SocketAddr {
    sa(Ipv4Addr::UNSPECIFIED, port)
}

#[track_caller]
pub fn counter(stats: &BTreeMap<String, u64>, name: &str) -> u64 {
    *stats.get(name).unwrap_or_else(|| panic!("`datapathctl stats --json` has no counter {name}"))
}

pub fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, name: &str) -> u64 {
    counter(after, name) - counter(before, name)
}

/// Asserts that counter `name` moved by at least `min` between two reads.
#[track_caller]
pub fn assert_moved(what: &str, before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, name: &str, min: u64) {
    let d = delta(before, after, name);
    assert!(d >= min, "{what}: counter {name} moved by {d}, expected at least {min}");
}

/// Asserts that counter `name` moved by exactly `n`.
#[track_caller]
pub fn assert_moved_by(what: &str, before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, name: &str, n: u64) {
    let d = delta(before, after, name);
    assert_eq!(d, n, "{what}: counter {name} moved by {d}, expected {n}");
}

/// Asserts that counter `name` did not move.
#[track_caller]
pub fn assert_still(what: &str, before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, name: &str) {
    assert_moved_by(what, before, after, name, 0);
}

/// Reads what is already queued on a socket, without waiting.
pub fn queued(s: &UdpSocket) -> Vec<(Vec<u8>, SocketAddr)> {
    s.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok((n, from)) = s.recv_from(&mut buf) {
        out.push((buf[..n].to_vec(), from));
    }
    s.set_nonblocking(false).unwrap();
    out
}

/// MAC of the neighbour entry for `dst` in a container, if any.
pub fn neighbour(ns: &str, dst: Ipv4Addr) -> Option<String> {
    let v = ip_json(&format!("-n {ns} neigh show dev eth0"));
    v.as_array()?
        .iter()
        .find(|n| n["dst"].as_str() == Some(&dst.to_string()))
        .and_then(|n| n["lladdr"].as_str().map(str::to_string))
}


// ---------------------------------------------------------------------------
// External addresses and routed players

/// A player behind a router: `player` ns ── `router` ns ── a second
/// external interface of the host.
///
/// ```text
///  host ns                     router ns                        player ns
///  ex2<id> 10.97.0.1/24 ────── ro<id> 10.97.0.2/24
///  [dnat]                      ri<id> 10.96.0.1/24 (MTU given) ─ pp<id> 10.96.0.2/24 (MTU 1500)
/// ```
///
/// The host routes 10.96.0.0/24 via the router; the router forwards and
/// sends ICMP errors like any router on a player's path.
pub struct RoutedPlayer {
    pub router: String,
    pub player: String,
    pub ip: Ipv4Addr,
    /// The host's interface towards the router.
    pub ext: String,
}

/// Router side of the host's second external link.
pub const ROUTED_HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 1);
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 2);
pub const ROUTED_PLAYER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 2);

impl Topo {
    /// Publishes container `i`'s port `to_port` on `ext`:`port` (`None`:
    /// the default external addresses), as `map dnat add [ADDR:]PORT`.
    pub fn publish_on(&self, ext: Option<Ipv4Addr>, port: u16, i: usize, proto: &str, to_port: u16) {
        let c = &self.ctrs[i];
        let spec = match ext {
            Some(a) => format!("{a}:{port}"),
            None => port.to_string(),
        };
        self.ctl.run(&[
            "-n",
            &self.host,
            "map",
            "dnat",
            "add",
            &spec,
            &c.ip.to_string(),
            &c.veth,
            &format_mac(&c.mac),
            "--proto",
            proto,
            "--to-port",
            &to_port.to_string(),
        ]);
    }

    /// A second address on the external interface, registered with `map
    /// external add` (not a default one).
    pub fn add_external(&self, addr: Ipv4Addr) {
        ip(&format!("-n {} addr add {addr}/24 dev {}", self.host, self.ext));
        self.ctl.run(&["-n", &self.host, "map", "external", "add", &addr.to_string(), &self.ext]);
    }

    /// Wires a player behind a router whose link towards the player has
    /// MTU `inner_mtu` (the player's own interface keeps 1500, as behind a
    /// home router on a smaller uplink), on a second external interface
    /// of the host with dnat attached.
    pub fn add_routed_player(&mut self, inner_mtu: u32) -> RoutedPlayer {
        let (router, player) = (format!("dpe{}r", self.id), format!("dpe{}q", self.id));
        for ns in [&router, &player] {
            ip(&format!("netns add {ns}"));
            self.namespaces.push(ns.clone());
            ip(&format!("-n {ns} link set lo up"));
        }
        let (ext, ro, ri, pp) =
            (format!("ey{}", self.id), format!("ro{}", self.id), format!("ri{}", self.id), format!("pp{}", self.id));
        ip(&format!("-n {} link add {ext} type veth peer name {ro} netns {router}", self.host));
        self.links.push((self.host.clone(), ext.clone()));
        ip(&format!("-n {router} link add {ri} type veth peer name {pp} netns {player}"));
        self.links.push((router.clone(), ri.clone()));
        ip(&format!("-n {} addr add {ROUTED_HOST_IP}/24 dev {ext}", self.host));
        ip(&format!("-n {router} addr add {ROUTER_IP}/24 dev {ro}"));
        ip(&format!("-n {router} addr add 10.96.0.1/24 dev {ri}"));
        ip(&format!("-n {router} link set {ri} mtu {inner_mtu}"));
        ip(&format!("-n {player} addr add {ROUTED_PLAYER_IP}/24 dev {pp}"));
        for (ns, dev) in [(&self.host, &ext), (&router, &ro), (&router, &ri), (&player, &pp)] {
            ip(&format!("-n {ns} link set {dev} up"));
        }
        ip(&format!("-n {} route add 10.96.0.0/24 via {ROUTER_IP} dev {ext}", self.host));
        ip(&format!("-n {router} route add default via {ROUTED_HOST_IP} dev {ro}"));
        ip(&format!("-n {player} route add default via 10.96.0.1 dev {pp}"));
        let out = Command::new("ip")
            .args(["netns", "exec", &router, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .output()
            .expect("running sysctl");
        assert!(out.status.success(), "enabling forwarding in the router: {}", String::from_utf8_lossy(&out.stderr));
        for (ns, dev) in [(&self.host, &ext), (&router, &ro), (&router, &ri), (&player, &pp)] {
            wait_up(ns, dev);
        }
        self.ctl.run(&["-n", &self.host, "attach", "dnat", &ext]);
        RoutedPlayer { router, player, ip: ROUTED_PLAYER_IP, ext }
    }
}

/// Copies everything from `from` to `to` until EOF, then half-closes `to`.
pub fn pump(mut from: TcpStream, mut to: TcpStream) -> JoinHandle<io::Result<u64>> {
    thread::spawn(move || {
        let n = io::copy(&mut from, &mut to)?;
        to.shutdown(std::net::Shutdown::Write)?;
        Ok(n)
    })
}
