//! podman 4 with its CNI backend running `datapath-cni`: `podman run
//! --network <ours> -p 30001:25565` of a real Minecraft server (the node
//! server of tests/tools, from a local rootfs whose /usr is the host's,
//! mounted read-only: no image registry is needed), a player in another
//! namespace joining it through the host's external interface, and
//! `podman rm` removing every trace (map entries, filters, veth, routes,
//! record, IPAM lease).
//!
//! Everything is the test's own: podman runs inside a host namespace of
//! the test (nsenter keeps /sys/fs/bpf), with its configuration, storage,
//! networks, plugin directory and leases in a temporary directory; the
//! datapath is set up with `datapathctl setup` on a pin root and a proxy
//! cgroup of the test's own. scripts/tools installs podman, runc and
//! containernetworking-plugins.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::podman::Podman;
use common::privileged;
use common::realsw::{mc_client, Tools};
use common::topo::{assert_same, ip, sa, snapshot, wait_up, Ctl, CTR_PORT, EXT_IP, PLAYER_IP};
use common::unique;

/// The host port podman publishes the server on.
const HOST_PORT: u16 = 30001;
/// The subnet host-local hands out.
const SUBNET: &str = "10.67.0.0/24";

/// The Minecraft server of tests/tools in a container on `net`, published
/// on HOST_PORT.
fn run_server(p: &Podman, name: &str, net: &str, chunks: u32) {
    let tools = Tools::get();
    let mounts = [
        format!("{}:/mc/node_modules:ro", tools.node_modules().display()),
        format!("{}:/mc/src:ro", tools.scripts.join("mc").display()),
    ];
    let publish = format!("{HOST_PORT}:{CTR_PORT}");
    let (port, chunks) = (CTR_PORT.to_string(), chunks.to_string());
    p.run_container(
        name,
        net,
        &[&publish],
        &mounts,
        &["NODE_PATH=/mc/node_modules"],
        &["/usr/bin/node", "/mc/src/server.js", "--port", &port, "--chunks", &chunks],
    );
}

/// A player and a host namespace, the external veth pair between them,
/// a proxy cgroup, a pin root; all removed on drop.
struct Host {
    ctl: Ctl,
    host: String,
    player: String,
    ext: String,
    cgroup: PathBuf,
}

impl Host {
    fn new() -> Self {
        let id = unique("");
        let (host, player, ext) = (format!("dpp{id}h"), format!("dpp{id}p"), format!("pe{id}"));
        let cgroup = datapath::kernel::attach::cgroup2_root().unwrap().join(format!("dpp{id}"));
        std::fs::create_dir(&cgroup).unwrap();
        let h = Self { ctl: Ctl::new(), host, player, ext, cgroup };
        for ns in [&h.host, &h.player] {
            ip(&format!("netns add {ns}"));
            ip(&format!("-n {ns} link set lo up"));
        }
        ip(&format!("-n {} link add {} type veth peer name pl0 netns {}", h.host, h.ext, h.player));
        ip(&format!("-n {} addr add {EXT_IP}/24 dev {}", h.host, h.ext));
        ip(&format!("-n {} addr add {PLAYER_IP}/24 dev pl0", h.player));
        // No IPv6 link-local address appearing later in a snapshot.
        ip(&format!("-n {} link set {} addrgenmode none", h.host, h.ext));
        ip(&format!("-n {} link set {} up", h.host, h.ext));
        ip(&format!("-n {} link set pl0 up", h.player));
        wait_up(&h.host, &h.ext);
        wait_up(&h.player, "pl0");
        h
    }

    /// Everything podman and the plugin could leave: the host namespace,
    /// the maps, the records, the TC filters.
    fn state(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = snapshot(&self.host).into_iter().map(|l| format!("host {l}")).collect();
        for args in [&["map", "dnat", "list"][..], &["map", "veth", "list"], &["container", "list", "--json"], &["status", "--json"]] {
            let mut a = vec!["-n", self.host.as_str()];
            a.extend_from_slice(args);
            let text = self.ctl.run(&a);
            // status shows program ids and map fill levels: what matters
            // is where things are attached and how full the maps are.
            if args[0] == "status" {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                out.insert(format!("attachments {}", v["attachments"]));
                // What traffic leaves behind is not state anything made:
                // the flow tables and the guard's per-source state are
                // LRU caches, a player's entries stay until evicted.
                let traffic = ["flows4", "host_flows4", "proxy_flows", "guard_src4", "guard_vsrc4", "guard_verified4"];
                for m in v["maps"].as_array().unwrap() {
                    if !traffic.contains(&m["name"].as_str().unwrap()) {
                        out.insert(format!("map {m}"));
                    }
                }
            } else {
                out.insert(format!("{} {text}", args.join(" ")));
            }
        }
        out
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.ctl.try_run(&["unload"]);
        for ns in [&self.host, &self.player] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

#[test]
fn podman_runs_a_minecraft_server_on_datapath_cni() {
    if !privileged("podman_runs_a_minecraft_server_on_datapath_cni") {
        return;
    }
    let h = Host::new();
    h.ctl.run(&["-n", &h.host, "setup", "--external", &h.ext, "--proxy-cgroup", h.cgroup.to_str().unwrap(), "--no-host-access"]);
    // setup again: nothing changes.
    let before = h.state();
    h.ctl.run(&["-n", &h.host, "setup", "--external", &h.ext, "--proxy-cgroup", h.cgroup.to_str().unwrap(), "--no-host-access"]);
    assert_same("after setup again", &before, &h.state());

    let p = Podman::new(&h.host);
    let net = p.datapath_network(&h.ctl.root, SUBNET);
    let name = unique("mc");
    run_server(&p, &name, &net, 8);
    p.wait_event(&name, "the server listening", |e| e["event"] == "listening");

    // The container as the datapath sees it: one record of our network,
    // its port published, its lease taken.
    let list: serde_json::Value = serde_json::from_str(&h.ctl.run(&["container", "list", "--json"])).unwrap();
    let recs = list.as_array().unwrap();
    assert_eq!(recs.len(), 1, "{list}");
    assert_eq!(recs[0]["owner"], net.as_str());
    assert_eq!(recs[0]["state"], "ready");
    assert_eq!(recs[0]["ports"][0]["host_port"], HOST_PORT);
    let ctr_ip = recs[0]["ip4"].as_str().unwrap().to_string();
    assert_eq!(p.leases(&net), BTreeSet::from([ctr_ip.clone()]));
    let inspect: serde_json::Value = serde_json::from_str(&p.run(&["inspect", &name])).unwrap();
    let nets = &inspect[0]["NetworkSettings"]["Networks"][&net];
    assert_eq!(nets["IPAddress"], ctr_ip.as_str(), "podman shows the address of our result: {nets}");
    assert_eq!(nets["Gateway"], "169.254.1.1", "{nets}");

    // A player joins through the host's external address.
    let r = mc_client(&h.player, sa(EXT_IP, HOST_PORT), "steve", Duration::from_secs(1));
    assert!(r.ok && r.complete, "the player could not join: {r:?}\npodman logs:\n{}", p.run(&["logs", &name]));
    assert_eq!(r.chunks, 8);
    let login = p.wait_event(&name, "the login", |e| e["event"] == "login" && e["username"] == "steve");
    let player = r.local().expect("the client's own address");
    assert_eq!(login["address"], PLAYER_IP.to_string(), "the server sees the player's own address: {login}");
    assert_eq!(login["port"].as_u64(), Some(u64::from(player.port())), "and port: {login}");
    let sent = p.wait_event(&name, "the world sent", |e| e["event"] == "world_sent" && e["username"] == "steve");
    assert_eq!(sent["sha256"].as_str(), r.world_sha256.as_deref(), "the chunk data arrived as sent");
    let stats = h.ctl.stats();
    assert!(stats["dnat/redirect"] > 0 && stats["snat/redirect"] > 0, "through dnat and snat: {stats:?}");

    // podman rm removes every trace.
    p.run(&["rm", "-f", "-t", "0", &name]);
    assert_same("after podman rm", &before, &h.state());
    assert!(p.leases(&net).is_empty(), "the IPAM lease is released: {:?}", p.leases(&net));
    let cached = std::fs::read_dir("/var/lib/cni/results")
        .map(|d| d.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains(&net)).count())
        .unwrap_or(0);
    assert_eq!(cached, 0, "no cached CNI result of our network is left");
}
