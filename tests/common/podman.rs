//! podman 4 on its CNI backend, confined to a temporary directory and a
//! network namespace of the caller's own: its configuration, storage,
//! networks (conflists), plugin directory (datapath-cni next to the
//! distribution's plugins in /usr/lib/cni) and IPAM leases all live in the
//! directory, and podman runs inside the namespace with nsenter (which
//! keeps /sys/fs/bpf), so the CNI plugins make their host-side interfaces
//! there. Containers run from a local rootfs whose /usr is the host's,
//! mounted read-only: no image registry is needed.
//!
//! The settings are those podman 4.3 + runc need on this kind of machine:
//! runc (crun refuses a hybrid cgroup layout), cgroupfs, file events,
//! explicit ulimits (no CAP_SYS_RESOURCE), cniVersion 1.0.0 in the lists
//! (the stock plugins refuse 1.1.0).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::realsw::TempDir;
use super::unique;

pub struct Podman {
    pub dir: TempDir,
    /// The namespace podman (and so every CNI plugin) runs in.
    pub host: String,
}

/// Where Debian's containernetworking-plugins are.
pub const CNI_PLUGINS: &str = "/usr/lib/cni";

impl Podman {
    #[track_caller]
    pub fn new(host: &str) -> Self {
        for (what, p) in [("podman", "/usr/bin/podman"), ("runc", "/usr/sbin/runc"), ("host-local", "/usr/lib/cni/host-local")] {
            assert!(
                Path::new(p).is_file(),
                "{what} ({p}) is missing: scripts/tools installs podman, runc and containernetworking-plugins"
            );
        }
        let dir = TempDir::new("dppodman");
        let w = dir.path.clone();
        for d in ["net.d", "cni-bin", "root", "runroot", "tmp", "volumes", "leases"] {
            std::fs::create_dir_all(w.join(d)).unwrap();
        }
        for d in ["usr", "etc", "proc", "sys", "dev", "tmp", "mc"] {
            std::fs::create_dir_all(w.join("rootfs").join(d)).unwrap();
        }
        // The rootfs: the host's /usr is mounted over usr/ at run time.
        for (link, to) in [("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/sbin")] {
            std::os::unix::fs::symlink(to, w.join("rootfs").join(link)).unwrap();
        }
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_datapath-cni"), w.join("cni-bin/datapath-cni")).unwrap();
        let conf = format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{w}/cni-bin\", \"{CNI_PLUGINS}\"]\n\
             network_config_dir = \"{w}/net.d\"\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             runtime = \"runc\"\ntmp_dir = \"{w}/tmp\"\nvolume_path = \"{w}/volumes\"\n",
            w = w.display()
        );
        std::fs::write(w.join("containers.conf"), conf).unwrap();
        let storage = format!("[storage]\ndriver=\"vfs\"\ngraphroot=\"{0}/root\"\nrunroot=\"{0}/runroot\"\n", w.display());
        std::fs::write(w.join("storage.conf"), storage).unwrap();
        Self { dir, host: host.to_string() }
    }

    /// host-local's configuration handing out `subnet`, leases kept here.
    pub fn ipam(&self, subnet: &str) -> Value {
        json!({"type": "host-local", "dataDir": self.dir.path.join("leases"), "ranges": [[{"subnet": subnet}]]})
    }

    /// A network of datapath-cni on pin root `pin_root`; returns its name.
    pub fn datapath_network(&self, pin_root: &Path, subnet: &str) -> String {
        let net = unique("dpnet");
        self.network(&net, vec![json!({
            "type": "datapath-cni",
            "pinRoot": pin_root,
            "capabilities": {"portMappings": true},
            "ipam": self.ipam(subnet),
        })]);
        net
    }

    /// A network of the stock bridge and portmap plugins (iptables), as
    /// podman's own default network has them (a default route through the
    /// bridge's address); returns its name.
    pub fn bridge_network(&self, bridge: &str, subnet: &str) -> String {
        let net = unique("brnet");
        let mut ipam = self.ipam(subnet);
        ipam["routes"] = json!([{"dst": "0.0.0.0/0"}]);
        self.network(&net, vec![
            json!({"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true, "hairpinMode": true,
                   "ipam": ipam}),
            json!({"type": "portmap", "capabilities": {"portMappings": true}}),
        ]);
        net
    }

    fn network(&self, name: &str, plugins: Vec<Value>) {
        let list = json!({"cniVersion": "1.0.0", "name": name, "plugins": plugins});
        std::fs::write(self.dir.path.join("net.d").join(format!("{name}.conflist")), list.to_string()).unwrap();
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let w = &self.dir.path;
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.host)).arg("podman").args(args);
        c.env("CONTAINERS_CONF", w.join("containers.conf")).env("CONTAINERS_STORAGE_CONF", w.join("storage.conf"));
        c
    }

    #[track_caller]
    pub fn run(&self, args: &[&str]) -> String {
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

    /// `podman run -d` of `cmd` in a container on `net`, publishing
    /// `publish` (`-p`), from the local rootfs with the host's /usr and
    /// `mounts` (`-v`); the container's id.
    #[track_caller]
    pub fn run_container(&self, name: &str, net: &str, publish: &[&str], mounts: &[String], env: &[&str], cmd: &[&str]) -> String {
        let rootfs = self.dir.path.join("rootfs");
        let nofile = format!("nofile={0}:{0}", hard_nofile());
        let mut args: Vec<&str> = vec!["run", "-d", "--name", name, "--network", net];
        for p in publish {
            args.extend(["-p", p]);
        }
        args.extend(["--ulimit", &nofile, "--ulimit", "nproc=32768:32768", "-v", "/usr:/usr:ro"]);
        for m in mounts {
            args.extend(["-v", m.as_str()]);
        }
        for e in env {
            args.extend(["-e", e]);
        }
        args.extend(["--rootfs", rootfs.to_str().unwrap()]);
        args.extend(cmd);
        self.run(&args).trim().to_string()
    }

    /// The name of a container's network namespace under /run/netns.
    #[track_caller]
    pub fn netns_of(&self, name: &str) -> String {
        let key = self.run(&["inspect", "--format", "{{.NetworkSettings.SandboxKey}}", name]);
        let key = key.trim();
        key.strip_prefix("/run/netns/")
            .unwrap_or_else(|| panic!("container {name}'s namespace {key} is not under /run/netns"))
            .to_string()
    }

    /// The addresses host-local has handed out on network `net`.
    pub fn leases(&self, net: &str) -> BTreeSet<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.path.join("leases").join(net)) else { return BTreeSet::new() };
        entries
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
            .collect()
    }

    /// The JSON lines a container printed (`podman logs`).
    pub fn events(&self, name: &str) -> Vec<Value> {
        self.run(&["logs", name]).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    #[track_caller]
    pub fn wait_event(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(e) = self.events(name).into_iter().find(&pred) {
                return e;
            }
            assert!(Instant::now() < deadline, "{what}: not seen in 60 s; podman logs {name}:\n{}", self.run(&["logs", name]));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path.clone()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Every container of this podman, whatever state it was left in.
        let _ = self.command(&["rm", "-af", "-t", "0"]).output();
    }
}

/// The process's hard limit of open files (podman would otherwise try to
/// raise limits this machine does not let it).
pub fn hard_nofile() -> u64 {
    let mut r = nix::libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills in a valid rlimit.
    unsafe { nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut r) };
    r.rlim_max
}
