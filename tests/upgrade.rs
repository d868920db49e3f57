//! Upgrades from the release before published flows (commit 1607cb0,
//! built by scripts/prev-release): a host set up and carrying traffic with
//! that release's own `datapathctl` runs this build's `load`, and nobody
//! notices — every entry is there in the new layout, live connections go on
//! without a reset or a lost byte, new players and replies work, counters
//! keep their values by name.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::topo::*;
use common::{prev_release, privileged};

const CONNECT: Duration = Duration::from_secs(3);

/// One player's request/response loop over one connection: each round
/// trip is one byte each way; counts them until told to stop. Any error is
/// the test's failure.
fn rr_loop(mut s: TcpStream, stop: Arc<AtomicBool>, rounds: Arc<AtomicU64>) -> thread::JoinHandle<Result<(), String>> {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    thread::spawn(move || {
        let mut b = [0u8; 1];
        let mut i = 0u8;
        while !stop.load(Ordering::Relaxed) {
            i = i.wrapping_add(1);
            s.write_all(&[i]).map_err(|e| format!("request/response: write after {i} rounds: {e}"))?;
            s.read_exact(&mut b).map_err(|e| format!("request/response: read after {i} rounds: {e}"))?;
            if b[0] != i {
                return Err(format!("request/response: sent {i}, got {} back", b[0]));
            }
            rounds.fetch_add(1, Ordering::Relaxed);
            thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    })
}

/// The container's datagrams to a player that only listens: a sequence
/// number every 5 ms until told to stop. Returns how many it sent.
fn udp_ticker(s: UdpSocket, to: SocketAddr, stop: Arc<AtomicBool>) -> thread::JoinHandle<u32> {
    thread::spawn(move || {
        let mut seq = 0u32;
        while !stop.load(Ordering::Relaxed) {
            // A refused send ends the ticker; the player's count shows it.
            if s.send_to(&seq.to_be_bytes(), to).is_err() {
                break;
            }
            seq += 1;
            thread::sleep(Duration::from_millis(5));
        }
        seq
    })
}

/// The listening player: every sequence number received, and from where.
fn udp_listener(s: UdpSocket, stop: Arc<AtomicBool>) -> thread::JoinHandle<(Vec<u32>, BTreeSet<SocketAddr>)> {
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    thread::spawn(move || {
        let (mut seqs, mut from) = (Vec::new(), BTreeSet::new());
        let mut buf = [0u8; 16];
        loop {
            match s.recv_from(&mut buf) {
                Ok((4, f)) => {
                    seqs.push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
                    from.insert(f);
                }
                Ok(_) => {}
                Err(_) if stop.load(Ordering::Relaxed) => return (seqs, from),
                Err(_) => {}
            }
        }
    })
}

/// `map dnat list --json` as (host port, proto, container address, port,
/// MAC, veth index): what both releases list.
fn mappings(t: &Topo) -> BTreeSet<(u64, String, String, u64, String, u64)> {
    let v = t.ctl.json(&["map", "dnat", "list"]);
    v.as_array()
        .unwrap_or_else(|| panic!("`map dnat list --json` is not an array: {v}"))
        .iter()
        .map(|m| {
            (
                m["host_port"].as_u64().unwrap(),
                m["proto"].as_str().unwrap().to_string(),
                m["ctr_ip"].as_str().unwrap().to_string(),
                m["ctr_port"].as_u64().unwrap(),
                m["ctr_mac"].as_str().unwrap().to_string(),
                m["veth_ifindex"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// `status --json` attachments as (kind, target, netns).
fn attachments(t: &Topo) -> BTreeSet<(String, String, String)> {
    let v = t.ctl.json(&["status"]);
    v["attachments"]
        .as_array()
        .unwrap_or_else(|| panic!("`status --json` has no attachments: {v}"))
        .iter()
        .map(|a| {
            (a["kind"].as_str().unwrap().to_string(), a["target"].as_str().unwrap().to_string(), a["netns"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Program ids attached to a cgroup at cgroup/getsockopt.
fn cgroup_progs(cg: &Path) -> Vec<u32> {
    let out = std::process::Command::new("bpftool").args(["-j", "cgroup", "show"]).arg(cg).output().unwrap();
    assert!(out.status.success(), "bpftool cgroup show {}: {}", cg.display(), String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Array(vec![]));
    v.as_array()
        .map(|a| {
            a.iter().filter(|p| p["attach_type"] == "cgroup_getsockopt").map(|p| p["id"].as_u64().unwrap() as u32).collect()
        })
        .unwrap_or_default()
}

#[test]
fn upgrade_from_the_release_before_under_traffic() {
    if !privileged("upgrade_from_the_release_before_under_traffic") {
        return;
    }
    let old = prev_release();
    let mut t = Topo::new_with(&old);
    let a = t.add_container(true);
    let b = t.add_container(true);
    t.publish(30001, a, "tcp", CTR_PORT);
    t.publish(30002, b, "tcp", CTR_PORT);
    t.publish(30003, a, "udp", 19132);
    let cg = t.proxy_cgroup();
    let proxy = t.proxy_sockets(&[(Kind::Tcp, PROXY_TCP)]).pop().map(TcpListener::from).unwrap();

    // 1. A stream from the container to a player that only reads.
    let stream_listener = tcp_listen(&t.ctrs[a].ns, CTR_PORT);
    let player_end = t.player_connect(30001, CONNECT).unwrap_or_else(|e| panic!("player -> 30001: {e}"));
    let (ctr_end, _) = accept(&stream_listener, IO_TIMEOUT).expect("the container accepts the player");
    let received = Arc::new(AtomicU64::new(0));
    let sink = stream_sink_on(player_end, "player", received.clone());
    let upgraded = Arc::new(AtomicBool::new(false));
    let sent_after = Arc::new(Mutex::new(None::<Instant>));
    let source = {
        let (upgraded, sent_after) = (upgraded.clone(), sent_after.clone());
        // Until the upgrade is done and two more seconds have passed.
        stream_source(ctr_end, "container", Duration::from_millis(5), move |_| {
            if !upgraded.load(Ordering::Relaxed) {
                return true;
            }
            let mut at = sent_after.lock().unwrap();
            at.get_or_insert_with(Instant::now).elapsed() < Duration::from_secs(2)
        })
    };

    // 2. A request/response loop to the other container.
    let _echo = EchoServer::tcp(tcp_listen(&t.ctrs[b].ns, CTR_PORT));
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let rr = rr_loop(t.player_connect(30002, CONNECT).expect("player -> 30002"), stop.clone(), rounds.clone());

    // 3. UDP: the player says hello once, then only listens; the container
    //    keeps sending to it from its published port.
    let ctr_udp = udp_bind(&t.ctrs[a].ns, any(19132));
    ctr_udp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let player_udp = udp_bind(&t.player, any(0));
    player_udp.send_to(b"hello", sa(EXT_IP, 30003)).unwrap();
    let mut buf = [0u8; 16];
    let (_, player_addr) = ctr_udp.recv_from(&mut buf).expect("the container hears the player");
    assert_eq!(player_addr.ip(), SocketAddr::from((PLAYER_IP, 0)).ip(), "the container sees the player's address");
    let listener = udp_listener(player_udp, stop.clone());
    let ticker = udp_ticker(ctr_udp, player_addr, stop.clone());

    // The previous release forwards all three.
    let deadline = Instant::now() + IO_TIMEOUT;
    while rounds.load(Ordering::Relaxed) < 50 || received.load(Ordering::Relaxed) < (1 << 20) {
        assert!(Instant::now() < deadline, "the previous release does not carry the traffic");
        thread::sleep(Duration::from_millis(10));
    }
    let before_maps = mappings(&t);
    let before_veths = t.ctl.json(&["map", "veth", "list"]);
    let before_attached = attachments(&t);
    let before_stats = t.ctl.stats();
    assert_eq!(before_maps.len(), 3);

    // The upgrade.
    t.ctl.bin = Path::new(DATAPATHCTL).to_path_buf();
    let (rounds_at, bytes_at) = (rounds.load(Ordering::Relaxed), received.load(Ordering::Relaxed));
    let report = t.ctl.json(&["load"]);
    upgraded.store(true, Ordering::Relaxed);
    assert_eq!(report["migrated"], "the release before published flows", "load: {report}");
    assert_eq!(report["attachments_updated"], 4, "dnat, two host veths, the proxy's cgroup: {report}");

    // Every entry, in the new layout.
    assert_eq!(mappings(&t), before_maps, "`map dnat list` before and after the upgrade");
    for m in t.ctl.json(&["map", "dnat", "list"]).as_array().unwrap() {
        assert_eq!(m["ext_addr"], "default", "the release before published on the default address: {m}");
    }
    assert_eq!(t.ctl.json(&["map", "veth", "list"]), before_veths, "`map veth list` before and after");
    let ext = t.ctl.json(&["map", "external", "list"]);
    assert_eq!(ext.as_array().map(Vec::len), Some(1), "external addresses: {ext}");
    assert_eq!((ext[0]["addr"].as_str(), ext[0]["default"].as_bool(), ext[0]["ifname"].as_str()), (Some("10.98.0.1"), Some(true), Some(t.ext.as_str())));
    assert_eq!(attachments(&t), before_attached, "attachments before and after");
    let root = &t.ctl.root;
    let pinned: BTreeSet<String> =
        std::fs::read_dir(root.join("maps")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let want: BTreeSet<String> = datapath::maps::name::ALL.iter().map(|s| s.to_string()).collect();
    assert_eq!(pinned, want, "maps/ holds exactly this build's maps");
    for gone in ["maps_new", "maps_old"] {
        assert!(!root.join(gone).exists(), "{gone} is left behind");
    }
    assert_eq!(std::fs::read_dir(root.join("links")).unwrap().count(), 0, "the old cgroup link is unpinned");
    let status = t.ctl.json(&["status"]);
    let getsockopt_id = status["programs"].as_array().unwrap().iter().find(|p| p["name"] == "getsockopt").unwrap()["id"].as_u64().unwrap() as u32;
    assert_eq!(cgroup_progs(&cg), vec![getsockopt_id], "exactly the new getsockopt is on the proxy's cgroup");
    let guard_id = status["programs"].as_array().unwrap().iter().find(|p| p["name"] == "guard").unwrap()["id"].as_u64().unwrap();
    assert_eq!(common::kstate::xdp_prog(&t.host, &t.ext), Some(("guard".into(), guard_id)), "the guard joins dnat on {}", t.ext);

    // Traffic goes on through the new programs.
    let deadline = Instant::now() + IO_TIMEOUT;
    while rounds.load(Ordering::Relaxed) < rounds_at + 200 || received.load(Ordering::Relaxed) < bytes_at + (2 << 20) {
        assert!(
            Instant::now() < deadline,
            "after the upgrade: {} round trips (from {rounds_at}), {} bytes (from {bytes_at})",
            rounds.load(Ordering::Relaxed),
            received.load(Ordering::Relaxed)
        );
        thread::sleep(Duration::from_millis(10));
    }
    // New players, and replies to them, on an old mapping and a new one.
    let mut s = t.player_connect(30002, CONNECT).expect("a new player -> 30002");
    assert_eq!(roundtrip(&mut s, b"new player").unwrap(), b"new player");
    let _echo_a = EchoServer::tcp(tcp_listen(&t.ctrs[a].ns, 25566));
    t.publish(30004, a, "tcp", 25566);
    let mut s = t.player_connect(30004, CONNECT).expect("a new player -> 30004, published after the upgrade");
    assert_eq!(roundtrip(&mut s, b"new mapping").unwrap(), b"new mapping");
    // The proxy's cgroup answers SO_ORIGINAL_DST through the new program.
    let orig = sa(Ipv4Addr::new(192, 0, 2, 44), 4444);
    let _client = tcp_connect(&t.ctrs[b].ns, orig, CONNECT).expect("container b -> outside, through the proxy");
    let (srv, _) = accept(&proxy, IO_TIMEOUT).expect("the proxy accepts container b");
    assert_eq!(SocketAddr::V4(original_dst(&srv).expect("SO_ORIGINAL_DST after the upgrade")), orig);

    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    join(rr).unwrap_or_else(|e| panic!("{e}"));
    let sent_udp = join(ticker);
    let (seqs, from) = join(listener);
    let (sent, sent_hash, got, got_hash) = join(source).unwrap_or_else(|e| panic!("{e}"));
    join(sink).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!((got, got_hash), (sent, sent_hash), "the stream: {got} bytes received of {sent} sent, or altered");
    // UDP: nothing lost, every datagram from the published port.
    assert_eq!(seqs, (0..sent_udp).collect::<Vec<_>>(), "datagrams the player received of {sent_udp} sent");
    assert_eq!(from, BTreeSet::from([sa(EXT_IP, 30003)]), "the container's datagrams came from");

    // Counters, by name: every one of the release before is there, and
    // none went back; the container's flows were adopted.
    let after = t.ctl.stats();
    let mut dropped = Vec::new();
    for (name, v) in &before_stats {
        match after.get(name) {
            Some(a) => assert!(a >= v, "counter {name}: {v} before the upgrade, {a} after"),
            None => dropped.push(name.clone()),
        }
    }
    assert_eq!(dropped, vec!["snat/no_external".to_string()], "counters without a successor");
    assert!(counter(&after, "snat/adopted") > 0, "the container's flows were adopted: {after:?}");
    assert!(counter(&after, "snat/redirect") > counter(&before_stats, "snat/redirect"), "replies after the upgrade");
    let _: BTreeMap<String, u64> = after;
}

/// The program ids `status --json` shows.
fn prog_ids(root: &Path) -> Vec<u64> {
    let o = common::ctl(root, None, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("status: {e}: {o:?}"));
    v["programs"].as_array().unwrap().iter().map(|p| p["id"].as_u64().unwrap()).collect()
}

/// Maps of a layout `load` does not know are refused with one line, and
/// nothing changes: no map made or replaced, no program swapped, no
/// half-built upgrade left.
#[test]
fn unknown_layouts_are_refused_before_anything_changes() {
    if !privileged("unknown_layouts_are_refused_before_anything_changes") {
        return;
    }
    let root = std::path::PathBuf::from("/sys/fs/bpf").join(common::unique("dpu"));
    struct Unload<'a>(&'a Path);
    impl Drop for Unload<'_> {
        fn drop(&mut self) {
            let _ = common::ctl(self.0, None, &["unload"]);
        }
    }
    let _unload = Unload(&root);
    let load = || common::ctl(&root, None, &["load"]);
    let bpftool = |args: &str| common::sh(&format!("bpftool {args}"));
    let state = || (common::kstate::map_ids(&root), prog_ids(&root));

    // This build's maps, one of them with another value size.
    common::assert_ok("load", &load());
    let veths = root.join("maps/veths");
    std::fs::remove_file(&veths).unwrap();
    bpftool(&format!("map create {} type hash key 4 value 8 entries 16 name veths", veths.display()));
    let before = state();
    let o = load();
    common::assert_one_line_failure("load over a veths map of another layout", &o);
    assert!(o.stderr.contains("pinned map veths") && o.stderr.contains("value size 8, this build needs 32"), "{:?}", o.stderr);
    assert!(o.stderr.contains("nothing was changed"), "{:?}", o.stderr);
    assert_eq!(state(), before, "the refused load changed maps or programs");
    assert!(!root.join("maps_new").exists());

    // A map no build of this project made.
    std::fs::remove_file(&veths).unwrap();
    bpftool(&format!("map create {} type hash key 4 value 32 entries 65536 name veths", veths.display()));
    common::assert_ok("load with veths of this build's layout again", &load());
    bpftool(&format!("map create {} type array key 4 value 4 entries 1 name stranger", root.join("maps/stranger").display()));
    let before = state();
    let o = load();
    common::assert_one_line_failure("load over an unknown map", &o);
    assert!(o.stderr.contains("pinned map stranger") && o.stderr.contains("not a map of this build"), "{:?}", o.stderr);
    assert_eq!(state(), before, "the refused load changed maps or programs");
    std::fs::remove_file(root.join("maps/stranger")).unwrap();
    common::assert_ok("unload", &common::ctl(&root, None, &["unload"]));

    // The release before's maps, one of them missing.
    let old = prev_release();
    let o = common::run_ctl(std::process::Command::new(&old), &root, None, &["load"]);
    common::assert_ok("the release before: load", &o);
    std::fs::remove_file(root.join("maps/snat_cfg")).unwrap();
    let ids = common::kstate::map_ids(&root);
    let o = load();
    common::assert_one_line_failure("load over the release before with snat_cfg missing", &o);
    assert!(o.stderr.contains("snat_cfg is missing"), "{:?}", o.stderr);
    assert_eq!(common::kstate::map_ids(&root), ids, "the refused load changed the maps");
    assert!(!root.join("maps_new").exists());
    assert!(!root.join("maps/mappings").exists(), "the refused load made a map of its own");
}
