//! What the kernel holds of a datapath, read with the system's own tools
//! (`tc`, `bpftool`) and the bpf(2) system call, independently of the code
//! under test: TC filters and qdiscs, cgroup programs, maps by id.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A TC filter as `tc -j filter show` reports it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TcFilter {
    pub dir: &'static str,
    pub pref: u64,
    pub handle: String,
    pub prog: String,
    pub id: u64,
}

fn tc_json(ns: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new("tc").args(["-n", ns, "-j"]).args(args).output().expect("running tc");
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.trim().is_empty() {
        // An interface that is gone has nothing.
        return serde_json::Value::Array(Vec::new());
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("tc {} printed no JSON ({e}): {text}", args.join(" ")))
}

/// Every BPF filter of an interface, both directions.
pub fn tc_filters(ns: &str, dev: &str) -> Vec<TcFilter> {
    let mut out = Vec::new();
    for dir in ["ingress", "egress"] {
        let v = tc_json(ns, &["filter", "show", "dev", dev, dir]);
        for f in v.as_array().into_iter().flatten() {
            let Some(o) = f.get("options") else { continue };
            out.push(TcFilter {
                dir,
                pref: f["pref"].as_u64().unwrap_or(0),
                handle: o["handle"].as_str().unwrap_or("").to_string(),
                prog: o["prog"]["name"].as_str().unwrap_or("").to_string(),
                id: o["prog"]["id"].as_u64().unwrap_or(0),
            });
        }
    }
    out.sort();
    out
}

/// Whether an interface has a clsact qdisc.
pub fn has_clsact(ns: &str, dev: &str) -> bool {
    let v = tc_json(ns, &["qdisc", "show", "dev", dev]);
    v.as_array().into_iter().flatten().any(|q| q["kind"] == "clsact")
}

/// (attach type, program id, name) of every program attached to a cgroup
/// itself.
pub fn cgroup_progs(cg: &Path) -> Vec<(String, u64, String)> {
    let out = Command::new("bpftool").args(["-j", "cgroup", "show"]).arg(cg).output().expect("running bpftool");
    assert!(out.status.success(), "bpftool cgroup show {}: {}", cg.display(), String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Array(vec![]));
    let mut progs: Vec<_> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["attach_type"].as_str().unwrap_or("").to_string(),
                p["id"].as_u64().unwrap_or(0),
                p["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    progs.sort();
    progs
}

/// Id of every map pinned under `<root>/maps`, by name.
pub fn map_ids(root: &Path) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(root.join("maps")).expect("reading the maps directory") {
        let e = e.unwrap();
        let fd = datapath::kernel::attach::obj_get(&e.path()).expect("opening a pinned map");
        let mut info = libbpf_sys::bpf_map_info::default();
        let mut len = std::mem::size_of::<libbpf_sys::bpf_map_info>() as u32;
        // SAFETY: info is a zeroed bpf_map_info of the size passed in len.
        let rc = unsafe {
            libbpf_sys::bpf_obj_get_info_by_fd(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                (&mut info as *mut libbpf_sys::bpf_map_info).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "reading the info of {}", e.path().display());
        out.insert(e.file_name().to_string_lossy().into_owned(), info.id);
    }
    out
}

/// Whether a map with this id still exists.
pub fn map_alive(id: u32) -> bool {
    // SAFETY: plain system call wrapper; a descriptor returned is closed.
    let fd = unsafe { libbpf_sys::bpf_map_get_fd_by_id(id) };
    if fd >= 0 {
        // SAFETY: fd is ours.
        unsafe { nix::libc::close(fd) };
        return true;
    }
    false
}

/// The maps among `ids` still in kernel memory after the kernel had up
/// to `wait` to free them (freeing is deferred).
pub fn maps_left(ids: &BTreeMap<String, u32>, wait: Duration) -> Vec<String> {
    let deadline = Instant::now() + wait;
    loop {
        let left: Vec<String> = ids.iter().filter(|(_, id)| map_alive(**id)).map(|(n, id)| format!("{n} (id {id})")).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The XDP program on an interface: (name, id), per `ip -d link`.
pub fn xdp_prog(ns: &str, dev: &str) -> Option<(String, u64)> {
    let out = Command::new("ip").args(["-n", ns, "-j", "-d", "link", "show", "dev", dev]).output().expect("running ip");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let xdp = &v[0]["xdp"];
    let prog = if xdp["prog"].is_object() { &xdp["prog"] } else { &xdp["attached"][0]["prog"] };
    Some((prog["name"].as_str()?.to_string(), prog["id"].as_u64()?))
}
