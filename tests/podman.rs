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
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::privileged;
use common::realsw::{mc_client, TempDir, Tools};
use common::topo::{assert_same, ip, sa, snapshot, wait_up, Ctl, CTR_PORT, EXT_IP, PLAYER_IP};
use common::unique;

/// The host port podman publishes the server on.
const HOST_PORT: u16 = 30001;
/// The subnet host-local hands out.
const SUBNET: &str = "10.67.0.0/24";

/// podman confined to a directory and a host namespace of its own.
struct Podman {
    dir: TempDir,
    host: String,
    net: String,
}

impl Podman {
    fn new(host: &str, pin_root: &Path) -> Self {
        for (what, p) in [("podman", "/usr/bin/podman"), ("runc", "/usr/sbin/runc"), ("host-local", "/usr/lib/cni/host-local")] {
            assert!(Path::new(p).is_file(), "{what} ({p}) is missing: scripts/tools installs podman, runc and containernetworking-plugins");
        }
        let dir = TempDir::new("dppodman");
        let w = dir.path.clone();
        for d in ["net.d", "cni-bin", "root", "runroot", "tmp", "volumes", "leases", "rootfs/usr", "rootfs/etc", "rootfs/proc", "rootfs/sys", "rootfs/dev", "rootfs/tmp", "rootfs/mc"] {
            std::fs::create_dir_all(w.join(d)).unwrap();
        }
        // The rootfs: the host's /usr is mounted over usr/ at run time.
        for (link, to) in [("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/sbin")] {
            std::os::unix::fs::symlink(to, w.join("rootfs").join(link)).unwrap();
        }
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_datapath-cni"), w.join("cni-bin/datapath-cni")).unwrap();
        let conf = format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{w}/cni-bin\", \"/usr/lib/cni\"]\n\
             network_config_dir = \"{w}/net.d\"\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             runtime = \"runc\"\ntmp_dir = \"{w}/tmp\"\nvolume_path = \"{w}/volumes\"\n",
            w = w.display()
        );
        std::fs::write(w.join("containers.conf"), conf).unwrap();
        let storage = format!("[storage]\ndriver=\"vfs\"\ngraphroot=\"{0}/root\"\nrunroot=\"{0}/runroot\"\n", w.display());
        std::fs::write(w.join("storage.conf"), storage).unwrap();
        let net = unique("dpnet");
        // podman 4.3's stock plugins refuse cniVersion 1.1.0 in a list.
        let list = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": net,
            "plugins": [{
                "type": "datapath-cni",
                "pinRoot": pin_root,
                "capabilities": {"portMappings": true},
                "ipam": {"type": "host-local", "dataDir": w.join("leases"), "ranges": [[{"subnet": SUBNET}]]},
            }],
        });
        std::fs::write(w.join("net.d").join(format!("{net}.conflist")), list.to_string()).unwrap();
        Self { dir, host: host.to_string(), net }
    }

    fn command(&self, args: &[&str]) -> Command {
        let w = &self.dir.path;
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.host)).arg("podman").args(args);
        c.env("CONTAINERS_CONF", w.join("containers.conf")).env("CONTAINERS_STORAGE_CONF", w.join("storage.conf"));
        c
    }

    #[track_caller]
    fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("running podman");
        assert!(
            out.status.success(),
            "`podman {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The addresses host-local has handed out.
    fn leases(&self) -> BTreeSet<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.path.join("leases").join(&self.net)) else { return BTreeSet::new() };
        entries
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
            .collect()
    }

    /// The Minecraft server of tests/tools in a container on our network,
    /// published on HOST_PORT.
    fn run_server(&self, name: &str, chunks: u32) {
        let tools = Tools::get();
        let rootfs = self.dir.path.join("rootfs");
        let nofile = format!("nofile={0}:{0}", hard_nofile());
        let modules = format!("{}:/mc/node_modules:ro", tools.node_modules().display());
        let scripts = format!("{}:/mc/src:ro", tools.scripts.join("mc").display());
        let publish = format!("{HOST_PORT}:{CTR_PORT}");
        let chunks = chunks.to_string();
        self.run(&[
            "run", "-d", "--name", name, "--network", &self.net, "-p", &publish,
            "--ulimit", &nofile, "--ulimit", "nproc=32768:32768",
            "-v", "/usr:/usr:ro", "-v", &modules, "-v", &scripts, "-e", "NODE_PATH=/mc/node_modules",
            "--rootfs", rootfs.to_str().unwrap(),
            "/usr/bin/node", "/mc/src/server.js", "--port", &CTR_PORT.to_string(), "--chunks", &chunks,
        ]);
    }

    /// The server's JSON events so far (`podman logs`).
    fn events(&self, name: &str) -> Vec<serde_json::Value> {
        self.run(&["logs", name]).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    #[track_caller]
    fn wait_event(&self, name: &str, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(e) = self.events(name).into_iter().find(&pred) {
                return e;
            }
            assert!(Instant::now() < deadline, "{what}: not seen in 60 s; podman logs {name}:\n{}", self.run(&["logs", name]));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Every container of this podman, whatever state the test left.
        let _ = self.command(&["rm", "-af", "-t", "0"]).output();
    }
}

/// The process's hard limit of open files (podman would otherwise try to
/// raise limits this machine does not let it).
fn hard_nofile() -> u64 {
    let mut r = nix::libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills in a valid rlimit.
    unsafe { nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut r) };
    r.rlim_max
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
                out.insert(format!("maps {}", v["maps"]));
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
    h.ctl.run(&["-n", &h.host, "setup", "--external", &h.ext, "--proxy-cgroup", h.cgroup.to_str().unwrap()]);
    // setup again: nothing changes.
    let before = h.state();
    h.ctl.run(&["-n", &h.host, "setup", "--external", &h.ext, "--proxy-cgroup", h.cgroup.to_str().unwrap()]);
    assert_same("after setup again", &before, &h.state());

    let p = Podman::new(&h.host, &h.ctl.root);
    let name = unique("mc");
    p.run_server(&name, 8);
    p.wait_event(&name, "the server listening", |e| e["event"] == "listening");

    // The container as the datapath sees it: one record of our network,
    // its port published, its lease taken.
    let list: serde_json::Value = serde_json::from_str(&h.ctl.run(&["container", "list", "--json"])).unwrap();
    let recs = list.as_array().unwrap();
    assert_eq!(recs.len(), 1, "{list}");
    assert_eq!(recs[0]["owner"], p.net.as_str());
    assert_eq!(recs[0]["state"], "ready");
    assert_eq!(recs[0]["ports"][0]["host_port"], HOST_PORT);
    let ctr_ip = recs[0]["ip4"].as_str().unwrap().to_string();
    assert_eq!(p.leases(), BTreeSet::from([ctr_ip.clone()]));
    let inspect: serde_json::Value = serde_json::from_str(&p.run(&["inspect", &name])).unwrap();
    let nets = &inspect[0]["NetworkSettings"]["Networks"][&p.net];
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
    assert!(p.leases().is_empty(), "the IPAM lease is released: {:?}", p.leases());
    let cached = std::fs::read_dir("/var/lib/cni/results")
        .map(|d| d.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains(&p.net)).count())
        .unwrap_or(0);
    assert_eq!(cached, 0, "no cached CNI result of our network is left");
}
