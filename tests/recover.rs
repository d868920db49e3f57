//! A pin root lost under live traffic (`rm -rf`, or its bpffs unmounted
//! and mounted again): the attachments keep forwarding, `load` takes them
//! and the maps back — a mapping deleted afterwards stops forwarding, a new
//! one works, getsockopt still answers — and `unload` leaves nothing: no
//! filter, no qdisc it made, no cgroup program, no map in kernel memory.
//! And `load`, `unload` and upgrades killed with SIGKILL at random points,
//! hundreds of times: the next command completes what was left.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::kstate::{self, TcFilter};
use common::topo::*;
use common::{prev_release, privileged, sh, unique};

const CONNECT: Duration = Duration::from_secs(3);
const DOOMED_CONNECT: Duration = Duration::from_millis(1500);

/// A request/response loop over one connection until told to stop;
/// counts round trips, fails on any error.
fn rr_loop(mut s: TcpStream, stop: Arc<AtomicBool>, rounds: Arc<AtomicU64>) -> thread::JoinHandle<Result<(), String>> {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    thread::spawn(move || {
        let mut b = [0u8; 1];
        while !stop.load(Ordering::Relaxed) {
            s.write_all(b"x").map_err(|e| format!("round trip {}: {e}", rounds.load(Ordering::Relaxed)))?;
            s.read_exact(&mut b).map_err(|e| format!("round trip {}: {e}", rounds.load(Ordering::Relaxed)))?;
            rounds.fetch_add(1, Ordering::Relaxed);
            thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    })
}

#[track_caller]
fn wait_rounds(rounds: &AtomicU64, more_than: u64, what: &str) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while rounds.load(Ordering::Relaxed) < more_than + 50 {
        assert!(Instant::now() < deadline, "{what}: the request/response loop stalled at {}", rounds.load(Ordering::Relaxed));
        thread::sleep(Duration::from_millis(5));
    }
}

/// The pinned programs' ids, by name, from `status --json`.
fn programs(t: &Topo) -> BTreeMap<String, u64> {
    let s = t.ctl.json(&["status"]);
    s["programs"].as_array().unwrap().iter().map(|p| (p["name"].as_str().unwrap().to_string(), p["id"].as_u64().unwrap())).collect()
}

/// Asserts that every interface of the topology carries exactly the
/// datapath's filters, running the pinned programs.
#[track_caller]
fn assert_attached(what: &str, t: &Topo) {
    let progs = programs(t);
    let f = |dir, pref, prog: &str| TcFilter { dir, pref, handle: "0xd47a".into(), prog: prog.into(), id: progs[prog] };
    assert_eq!(kstate::tc_filters(&t.host, &t.ext), vec![f("ingress", 1, "dnat")], "{what}: {}", t.ext);
    assert_eq!(kstate::xdp_prog(&t.host, &t.ext), Some(("guard".into(), progs["guard"])), "{what}: the guard on {}", t.ext);
    for c in &t.ctrs {
        let mut want = vec![f("egress", 1, "tproxy_egress"), f("ingress", 1, "arp"), f("ingress", 2, "snat"), f("ingress", 3, "tproxy_ingress")];
        want.sort();
        assert_eq!(kstate::tc_filters(&t.host, &c.veth), want, "{what}: {}", c.veth);
    }
    if let Some(cg) = &t.cgroup {
        let got = kstate::cgroup_progs(cg);
        assert_eq!(got, vec![("cgroup_getsockopt".to_string(), progs["getsockopt"], "getsockopt".to_string())], "{what}: {}", cg.display());
    }
}

/// Asserts that nothing of the datapath is left: no filter, no clsact
/// qdisc (the topology's interfaces had none before), no cgroup program,
/// none of `maps` in kernel memory.
#[track_caller]
fn assert_nothing_left(what: &str, t: &Topo, maps: &BTreeMap<String, u32>) {
    let mut ifaces = vec![t.ext.clone()];
    ifaces.extend(t.ctrs.iter().map(|c| c.veth.clone()));
    for i in &ifaces {
        assert_eq!(kstate::tc_filters(&t.host, i), vec![], "{what}: filters left on {i}");
        assert!(!kstate::has_clsact(&t.host, i), "{what}: the clsact qdisc made for {i} is left");
        assert_eq!(kstate::xdp_prog(&t.host, i), None, "{what}: an XDP program is left on {i}");
    }
    if let Some(cg) = &t.cgroup {
        assert_eq!(kstate::cgroup_progs(cg), vec![], "{what}: programs left on {}", cg.display());
    }
    assert_eq!(kstate::maps_left(maps, Duration::from_secs(5)), Vec::<String>::new(), "{what}: maps left in kernel memory");
    assert!(!t.ctl.root.exists(), "{what}: {} is left", t.ctl.root.display());
}

/// A proxy connection from container `i` to an outside address: the
/// proxy's SO_ORIGINAL_DST answers it.
#[track_caller]
fn assert_getsockopt(what: &str, t: &Topo, proxy: &TcpListener, i: usize, port: u16) {
    let orig = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 44), port));
    let _client = tcp_connect(&t.ctrs[i].ns, orig, CONNECT).unwrap_or_else(|e| panic!("{what}: container -> {orig}: {e}"));
    let (srv, _) = accept(proxy, IO_TIMEOUT).unwrap_or_else(|e| panic!("{what}: nothing at the proxy: {e}"));
    let od = original_dst(&srv).unwrap_or_else(|e| panic!("{what}: SO_ORIGINAL_DST: {e}"));
    assert_eq!(SocketAddr::V4(od), orig, "{what}: SO_ORIGINAL_DST");
}

/// Runs `unload` when dropped, also after the pin root was removed, so a
/// failed test leaves nothing attached.
struct Unload<'a>(&'a Topo);

impl Drop for Unload<'_> {
    fn drop(&mut self) {
        let _ = self.0.ctl.try_run(&["unload"]);
    }
}

/// A host with two containers, both published, the proxy's cgroup, and a
/// request/response loop to the first container.
struct Live {
    t: Topo,
    proxy: TcpListener,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    rr: std::sync::Mutex<Option<thread::JoinHandle<Result<(), String>>>>,
    _echo: Vec<EchoServer>,
}

impl Live {
    fn new(root: Option<PathBuf>) -> Self {
        let mut t = match root {
            Some(r) => Topo::new_at(r),
            None => Topo::new(),
        };
        let a = t.add_container(true);
        let b = t.add_container(true);
        t.publish(30001, a, "tcp", CTR_PORT);
        t.publish(30002, b, "tcp", CTR_PORT);
        t.proxy_cgroup();
        let proxy = t.proxy_sockets(&[(Kind::Tcp, PROXY_TCP)]).pop().map(TcpListener::from).unwrap();
        let echo = vec![EchoServer::tcp(tcp_listen(&t.ctrs[a].ns, CTR_PORT)), EchoServer::tcp(tcp_listen(&t.ctrs[b].ns, CTR_PORT))];
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let rr = rr_loop(t.player_connect(30001, CONNECT).expect("player -> 30001"), stop.clone(), rounds.clone());
        wait_rounds(&rounds, 0, "before");
        Self { t, proxy, stop, rounds, rr: std::sync::Mutex::new(Some(rr)), _echo: echo }
    }
}

/// The pin root is removed by hand under traffic; `load` takes everything
/// back, and `unload` then removes it all.
fn lost_and_taken_back(live: Live, lose: impl FnOnce(&Topo), what: &str) {
    let t = &live.t;
    let _unload = Unload(t);
    let listing = t.ctl.json(&["map", "dnat", "list"]);
    let veths = t.ctl.json(&["map", "veth", "list"]);
    let attached = t.ctl.json(&["status"])["attachments"].clone();
    let maps = kstate::map_ids(&t.ctl.root);
    assert_eq!(maps.len(), datapath::maps::name::ALL.len());

    lose(t);
    assert!(!t.ctl.root.join("maps").exists(), "{what}: the pins are still there");
    // Out of reach of the pins, it keeps forwarding.
    let at = live.rounds.load(Ordering::Relaxed);
    wait_rounds(&live.rounds, at, &format!("{what}, pins gone"));
    let mut s = t.player_connect(30002, CONNECT).unwrap_or_else(|e| panic!("{what}, pins gone: a new player: {e}"));
    assert_eq!(roundtrip(&mut s, b"still here").unwrap(), b"still here");

    let report = t.ctl.json(&["load"]);
    let recovered: BTreeSet<&str> = report["recovered"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    let all: BTreeSet<&str> = datapath::maps::name::ALL.into_iter().collect();
    assert_eq!(recovered, all, "{what}: load pinned every map again: {report}");
    assert_eq!(report["maps_created"].as_array().unwrap().len(), 0, "{what}: no map made afresh: {report}");
    assert_eq!(report["attachments_updated"], 4, "{what}: {report}");
    assert_eq!(kstate::map_ids(&t.ctl.root), maps, "{what}: the same maps are pinned again");
    assert_eq!(t.ctl.json(&["map", "dnat", "list"]), listing, "{what}: map dnat list");
    assert_eq!(t.ctl.json(&["map", "veth", "list"]), veths, "{what}: map veth list");
    assert_eq!(t.ctl.json(&["status"])["attachments"], attached, "{what}: attachments");
    assert_attached(what, t);
    let at = live.rounds.load(Ordering::Relaxed);
    wait_rounds(&live.rounds, at, &format!("{what}, after load"));

    // What the commands change now is what the attached programs use.
    t.ctl.run(&["map", "dnat", "del", "30002"]);
    assert!(t.player_connect(30002, DOOMED_CONNECT).is_err(), "{what}: a deleted mapping still forwards");
    t.publish(30003, 1, "tcp", CTR_PORT);
    let mut s = t.player_connect(30003, CONNECT).unwrap_or_else(|e| panic!("{what}: a new mapping: {e}"));
    assert_eq!(roundtrip(&mut s, b"new mapping").unwrap(), b"new mapping");
    assert_getsockopt(what, t, &live.proxy, 1, 4444);

    live.stop_loop(what);
    t.ctl.run(&["unload"]);
    assert_nothing_left(&format!("{what}, unload"), t, &maps);
}

impl Live {
    /// Stops the request/response loop, which must not have failed.
    #[track_caller]
    fn stop_loop(&self, what: &str) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(rr) = self.rr.lock().unwrap().take() {
            join(rr).unwrap_or_else(|e| panic!("{what}: the request/response loop: {e}"));
        }
    }
}

#[test]
fn lost_pin_root_is_taken_back_by_load() {
    if !privileged("lost_pin_root_is_taken_back_by_load") {
        return;
    }
    let live = Live::new(None);
    lost_and_taken_back(live, |t| std::fs::remove_dir_all(&t.ctl.root).unwrap(), "rm -rf of the pin root");
}

/// A bpffs of the test's own, mounted at a directory of its own; unmounted
/// on drop.
struct PrivateBpffs {
    path: PathBuf,
}

impl PrivateBpffs {
    fn new() -> Self {
        let path = std::env::temp_dir().join(unique("dpbpffs"));
        std::fs::create_dir(&path).unwrap();
        let me = Self { path };
        me.mount();
        me
    }

    fn mount(&self) {
        sh(&format!("mount -t bpf -o mode=0700 bpf {}", self.path.display()));
    }

    fn umount(&self) {
        sh(&format!("umount {}", self.path.display()));
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[test]
fn lost_pin_root_on_a_remounted_bpffs_is_taken_back_by_load() {
    if !privileged("lost_pin_root_on_a_remounted_bpffs_is_taken_back_by_load") {
        return;
    }
    let fs = PrivateBpffs::new();
    let live = Live::new(Some(fs.path.join("dp")));
    let fs_ref = &fs;
    lost_and_taken_back(
        live,
        |_| {
            fs_ref.umount();
            fs_ref.mount();
        },
        "bpffs unmounted and mounted again",
    );
}

#[test]
fn lost_pin_root_is_removed_by_unload() {
    if !privileged("lost_pin_root_is_removed_by_unload") {
        return;
    }
    let live = Live::new(None);
    let t = &live.t;
    let maps = kstate::map_ids(&t.ctl.root);
    std::fs::remove_dir_all(&t.ctl.root).unwrap();
    let at = live.rounds.load(Ordering::Relaxed);
    wait_rounds(&live.rounds, at, "pins gone");
    live.stop_loop("pins gone");
    t.ctl.run(&["unload"]);
    assert_nothing_left("rm -rf, then unload", t, &maps);
    // And again: nothing to do.
    t.ctl.run(&["unload"]);
}

// ---------------------------------------------------------------------
// Commands killed at random points

/// xorshift64: the trials' random delays, reproducible from the seed
/// printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A namespace with an external interface and three host veths, and a
/// cgroup: what every trial attaches to, with a pin root of its own each
/// time.
struct Bench {
    ns: String,
    cgroup: PathBuf,
    new: PathBuf,
    old: PathBuf,
}

const VETHS: [&str; 3] = ["kv0", "kv1", "kv2"];

impl Bench {
    fn new() -> Self {
        let ns = format!("dpk{}", unique(""));
        ip(&format!("netns add {ns}"));
        ip(&format!("-n {ns} link add kext type veth peer name kextp"));
        ip(&format!("-n {ns} addr add 10.98.0.1/24 dev kext"));
        ip(&format!("-n {ns} link set kext up"));
        for (i, v) in VETHS.iter().enumerate() {
            ip(&format!("-n {ns} link add {v} type veth peer name {v}p"));
            ip(&format!("-n {ns} addr add 10.99.{i}.1/32 dev {v}"));
            ip(&format!("-n {ns} link set {v} up"));
        }
        let cgroup = datapath::kernel::attach::cgroup2_root().unwrap().join(unique("dpk"));
        std::fs::create_dir(&cgroup).unwrap();
        Self { ns, cgroup, new: PathBuf::from(DATAPATHCTL), old: prev_release() }
    }

    fn run(&self, bin: &Path, root: &Path, args: &[&str]) -> std::process::Output {
        Command::new(bin).args(args).env("DATAPATH_PIN_ROOT", root).output().expect("running datapathctl")
    }

    #[track_caller]
    fn ok(&self, bin: &Path, root: &Path, args: &[&str]) -> String {
        let o = self.run(bin, root, args);
        assert!(o.status.success(), "datapathctl {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim());
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Sets a pin root up with `bin` (this build or the release before):
    /// dnat, three host veths, two mappings, getsockopt.
    fn setup(&self, bin: &Path, root: &Path) {
        let n = self.ns.as_str();
        self.ok(bin, root, &["load"]);
        self.ok(bin, root, &["-n", n, "map", "snat", "set", "10.98.0.1", "kext"]);
        self.ok(bin, root, &["-n", n, "attach", "dnat", "kext"]);
        for (i, v) in VETHS.iter().enumerate() {
            self.ok(bin, root, &["-n", n, "map", "veth", "add", v, &format!("10.99.{i}.2")]);
            self.ok(bin, root, &["-n", n, "attach", "host", v]);
        }
        self.ok(bin, root, &["-n", n, "map", "dnat", "add", "30001", "10.99.0.2", "kv0", "02:00:00:00:00:02"]);
        self.ok(bin, root, &["-n", n, "map", "dnat", "add", "30002", "10.99.1.2", "kv1", "02:00:00:00:01:02", "--proto", "udp"]);
        self.ok(bin, root, &["attach", "getsockopt", self.cgroup.to_str().unwrap()]);
    }

    /// Runs `args` with this build and kills it (SIGKILL) after `delay`
    /// unless it finished first; true if it was killed.
    /// Runs `args` and kills it after `delay`: Ok(()) when it was still
    /// running, Err(how long it took) when it finished first.
    fn kill_after(&self, root: &Path, args: &[&str], delay: Duration) -> Result<(), Duration> {
        let start = Instant::now();
        let mut child = Command::new(&self.new)
            .args(args)
            .env("DATAPATH_PIN_ROOT", root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = start + delay;
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return Err(start.elapsed());
            }
            thread::sleep(Duration::from_micros(200));
        }
        let killed = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let _ = child.wait();
        if killed {
            Ok(())
        } else {
            Err(start.elapsed())
        }
    }

    /// How long `args` takes when not killed (median of 3), each time on a
    /// pin root prepared by `prepare`.
    fn duration(&self, args: &[&str], prepare: impl Fn(&Path)) -> Duration {
        let mut d: Vec<Duration> = (0..3)
            .map(|_| {
                let root = PathBuf::from("/sys/fs/bpf").join(unique("dpk"));
                prepare(&root);
                let start = Instant::now();
                self.ok(&self.new, &root, args);
                let el = start.elapsed();
                let _ = self.run(&self.new, &root, &["unload"]);
                el
            })
            .collect();
        d.sort();
        d[1]
    }

    /// After a `load` that completed: everything of the setup is there,
    /// attached with the pinned programs, nothing half-done is left.
    #[track_caller]
    fn assert_loaded(&self, what: &str, root: &Path) {
        let status: serde_json::Value = serde_json::from_str(&self.ok(&self.new, root, &["status", "--json"])).unwrap();
        let progs: BTreeMap<String, u64> =
            status["programs"].as_array().unwrap().iter().map(|p| (p["name"].as_str().unwrap().into(), p["id"].as_u64().unwrap())).collect();
        let attached: BTreeSet<(String, String)> = status["attachments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["kind"].as_str().unwrap().into(), a["target"].as_str().unwrap().into()))
            .collect();
        let mut want = BTreeSet::from([("dnat".to_string(), "kext".to_string()), ("getsockopt".into(), self.cgroup.display().to_string())]);
        want.extend(VETHS.iter().map(|v| ("host".to_string(), v.to_string())));
        assert_eq!(attached, want, "{what}: attachments");
        let list: serde_json::Value = serde_json::from_str(&self.ok(&self.new, root, &["map", "dnat", "list", "--json"])).unwrap();
        let got: BTreeSet<(u64, String, String)> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["host_port"].as_u64().unwrap(), m["proto"].as_str().unwrap().into(), m["ctr_ip"].as_str().unwrap().into()))
            .collect();
        assert_eq!(got, BTreeSet::from([(30001, "tcp".into(), "10.99.0.2".into()), (30002, "udp".into(), "10.99.1.2".into())]), "{what}: mappings");
        let f = |dir, pref, prog: &str| TcFilter { dir, pref, handle: "0xd47a".into(), prog: prog.into(), id: progs[prog] };
        assert_eq!(kstate::tc_filters(&self.ns, "kext"), vec![f("ingress", 1, "dnat")], "{what}: kext");
        assert_eq!(kstate::xdp_prog(&self.ns, "kext"), Some(("guard".into(), progs["guard"])), "{what}: the guard on kext");
        let mut host = vec![f("egress", 1, "tproxy_egress"), f("ingress", 1, "arp"), f("ingress", 2, "snat"), f("ingress", 3, "tproxy_ingress")];
        host.sort();
        for v in VETHS {
            assert_eq!(kstate::tc_filters(&self.ns, v), host, "{what}: {v}");
        }
        assert_eq!(
            kstate::cgroup_progs(&self.cgroup),
            vec![("cgroup_getsockopt".to_string(), progs["getsockopt"], "getsockopt".to_string())],
            "{what}: cgroup"
        );
        let maps: BTreeSet<String> = kstate::map_ids(root).into_keys().collect();
        assert_eq!(maps, datapath::maps::name::ALL.iter().map(|s| s.to_string()).collect(), "{what}: maps/");
        for d in ["maps_new", "maps_old"] {
            assert!(!root.join(d).exists(), "{what}: {d} is left");
        }
        assert_eq!(std::fs::read_dir(root.join("links")).unwrap().count(), 0, "{what}: links/");
    }

    /// After an `unload` that completed: nothing of the pin root is left.
    #[track_caller]
    fn assert_unloaded(&self, what: &str, root: &Path, maps: &BTreeMap<String, u32>) {
        assert!(!root.exists(), "{what}: {} is left", root.display());
        for i in std::iter::once("kext").chain(VETHS) {
            assert_eq!(kstate::tc_filters(&self.ns, i), vec![], "{what}: filters left on {i}");
            assert!(!kstate::has_clsact(&self.ns, i), "{what}: the clsact qdisc of {i} is left");
            assert_eq!(kstate::xdp_prog(&self.ns, i), None, "{what}: an XDP program is left on {i}");
        }
        assert_eq!(kstate::cgroup_progs(&self.cgroup), vec![], "{what}: cgroup programs left");
        assert_eq!(kstate::maps_left(maps, Duration::from_secs(5)), Vec::<String>::new(), "{what}: maps left");
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

#[test]
fn killed_load_unload_and_upgrade_leave_a_state_the_next_command_completes() {
    if !privileged("killed_load_unload_and_upgrade_leave_a_state_the_next_command_completes") {
        return;
    }
    let long = std::env::var("DATAPATH_LONG_TESTS").as_deref() == Ok("1");
    let trials = if long { 2000 } else { 200 };
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("kill trials: {trials}, seed {seed:#x}");
    let mut rng = Rng(seed);
    let b = Bench::new();

    // How long each command runs when nothing kills it: the delays are
    // drawn from 0 to 1.2 times that.
    let upgrade = b.duration(&["load"], |r| b.setup(&b.old, r));
    let in_place = b.duration(&["load"], |r| b.setup(&b.new, r));
    let first = b.duration(&["load"], |_| {});
    let unload = b.duration(&["unload"], |r| b.setup(&b.new, r));
    eprintln!("unkilled: upgrade {upgrade:?}, load in place {in_place:?}, first load {first:?}, unload {unload:?}");
    // The estimates follow the commands that finish before their kill: a
    // machine that gets busier or quieter during the trials moves them, so
    // the delays keep covering the whole run.
    let mut full = [upgrade, in_place, first, unload];

    let mut killed = [0u32; 4];
    for trial in 0..trials {
        let kind = trial % 4;
        let root = PathBuf::from("/sys/fs/bpf").join(unique("dpk"));
        let what = |stage: &str| format!("trial {trial} (seed {seed:#x}), {stage}");
        let (args, prepare): (&[&str], Box<dyn Fn(&Path)>) = match kind {
            0 => (&["load"], Box::new(|r| b.setup(&b.old, r))),
            1 => (&["load"], Box::new(|r| b.setup(&b.new, r))),
            2 => (&["load"], Box::new(|_| {})),
            _ => (&["unload"], Box::new(|r| b.setup(&b.new, r))),
        };
        prepare(&root);
        let maps = if kind == 0 || kind == 2 { BTreeMap::new() } else { kstate::map_ids(&root) };
        let delay = Duration::from_nanos(rng.next() % (full[kind].as_nanos() as u64 * 6 / 5).max(1));
        match b.kill_after(&root, args, delay) {
            Ok(()) => killed[kind] += 1,
            Err(took) => full[kind] = (full[kind] * 3 + took) / 4,
        }
        if kind == 3 {
            // The unload again, from whatever the first one left.
            b.ok(&b.new, &root, &["unload"]);
            b.assert_unloaded(&what("unload after a killed unload"), &root, &maps);
            continue;
        }
        b.ok(&b.new, &root, &["load"]);
        if kind == 2 {
            // A first load has nothing attached; attach it all now.
            b.setup(&b.new, &root);
        }
        b.assert_loaded(&what(["upgrade", "load in place", "first load"][kind]), &root);
        let maps = kstate::map_ids(&root);
        b.ok(&b.new, &root, &["unload"]);
        b.assert_unloaded(&what("unload"), &root, &maps);
    }
    eprintln!("killed before finishing: upgrade {}, load in place {}, first load {}, unload {}", killed[0], killed[1], killed[2], killed[3]);
    // The delays cover the whole run, so most trials kill something.
    for (k, n) in killed.iter().enumerate() {
        assert!(*n as usize * 4 > trials / 4, "kind {k}: only {n} of {} trials killed the command", trials / 4);
    }
}

/// Pins removed one by one, the programs' pins still there: `load` pins
/// the very same maps again (from the pinned programs' map ids) instead of
/// making empty ones.
#[test]
fn lost_map_pins_are_pinned_again_from_the_programs() {
    if !privileged("lost_map_pins_are_pinned_again_from_the_programs") {
        return;
    }
    let root = PathBuf::from("/sys/fs/bpf").join(unique("dpr"));
    struct Unload<'a>(&'a Path);
    impl Drop for Unload<'_> {
        fn drop(&mut self) {
            let _ = common::ctl(self.0, None, &["unload"]);
        }
    }
    let _unload = Unload(&root);
    common::assert_ok("load", &common::ctl(&root, None, &["load"]));
    let before = kstate::map_ids(&root);
    for m in ["flows4", "attachments", "pin_root"] {
        std::fs::remove_file(root.join("maps").join(m)).unwrap();
    }
    let o = common::ctl(&root, None, &["load", "--json"]);
    common::assert_ok("load after three map pins were removed", &o);
    let report: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(report["recovered"], serde_json::json!(["flows4", "attachments", "pin_root"]), "{report}");
    assert_eq!(report["maps_created"], serde_json::json!([]), "{report}");
    assert_eq!(kstate::map_ids(&root), before, "the same maps are pinned again");
}
