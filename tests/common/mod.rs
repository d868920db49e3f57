//! Test support: privileged-test gate, per-test pin roots and network
//! namespaces that clean up on drop, a packet builder, an independent
//! checksum verifier, and BPF_PROG_TEST_RUN on pinned programs.

#![allow(dead_code)]

pub mod flood;
pub mod kstate;
pub mod packet;
pub mod podman;
pub mod packet6;
pub mod realsw;
pub mod topo;

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use datapath::ops;
use datapath::kernel::pins::PinRoot;

/// Privileged tests run only with DATAPATH_PRIVILEGED_TESTS=1; then they
/// must run, so anything missing is a failure, not a skip.
pub fn privileged(test: &str) -> bool {
    if std::env::var("DATAPATH_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        assert!(nix::unistd::geteuid().is_root(), "DATAPATH_PRIVILEGED_TESTS=1 but not running as root");
        return true;
    }
    eprintln!("skipping {test}: needs root and BPF; set DATAPATH_PRIVILEGED_TESTS=1 to run it");
    false
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call, for pin roots,
/// namespaces and interfaces (interface names max 15 bytes).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id() % 100000, SEQ.fetch_add(1, Ordering::Relaxed))
}

/// The `datapathctl` of the release before published flows (commit
/// 1607cb0), built once by scripts/prev-release.
pub fn prev_release() -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/prev-release");
    let out = Command::new("bash")
        .arg(script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("running scripts/prev-release");
    assert!(out.status.success(), "scripts/prev-release failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A pin root of the test's own under /sys/fs/bpf, loaded with the
/// datapath; unloaded and removed on drop.
pub struct TestRoot {
    pub pins: PinRoot,
}

impl TestRoot {
    pub fn loaded() -> Self {
        let root = PinRoot::new(PathBuf::from("/sys/fs/bpf").join(unique("dpt")));
        let me = Self { pins: root };
        ops::load(&me.pins, Default::default()).expect("datapathctl load into the test pin root");
        me
    }

    pub fn path(&self) -> String {
        self.pins.root().display().to_string()
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        if let Err(e) = ops::unload(&self.pins) {
            eprintln!("unloading test pin root {}: {e:#}", self.pins.root().display());
            let _ = std::fs::remove_dir_all(self.pins.root());
        }
    }
}

#[track_caller]
pub fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().expect("running sh");
    assert!(st.success(), "command failed: {cmd}");
}

/// A named network namespace of the test's own; deleted on drop, which
/// also removes every interface in it.
pub struct TestNs {
    pub name: String,
}

impl TestNs {
    pub fn new() -> Self {
        let name = unique("dpt");
        sh(&format!("ip netns add {name}"));
        let ns = Self { name };
        ns.ip("link set lo up");
        ns
    }

    #[track_caller]
    pub fn ip(&self, args: &str) {
        sh(&format!("ip -n {} {args}", self.name));
    }

    /// Interface index and MAC of an interface in this namespace.
    pub fn iface(&self, name: &str) -> (u32, [u8; 6]) {
        let _g = datapath::net::netns::NetnsGuard::enter(Some(&self.name)).unwrap();
        (datapath::net::netif::index_of(name).unwrap(), datapath::net::netif::mac_of(name).unwrap())
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Opens a pinned program.
pub fn prog_fd(root: &TestRoot, name: &str) -> OwnedFd {
    datapath::kernel::attach::obj_get(&root.pins.prog(name)).expect("pinned program")
}

pub const TC_ACT_UNSPEC: i32 = -1;
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;

pub fn verdict_name(v: i32) -> &'static str {
    match v {
        TC_ACT_UNSPEC => "TC_ACT_UNSPEC",
        TC_ACT_OK => "TC_ACT_OK",
        TC_ACT_SHOT => "TC_ACT_SHOT",
        TC_ACT_REDIRECT => "TC_ACT_REDIRECT",
        _ => "other",
    }
}

pub struct RunOut {
    pub verdict: i32,
    pub data: Vec<u8>,
    /// Average ns per run, as the kernel measured it.
    pub duration_ns: u32,
}

/// BPF_PROG_TEST_RUN of a TC program on one frame. `ifindex` (if not 0)
/// must name an interface in the calling thread's network namespace; the
/// program then sees it as skb->ifindex.
#[track_caller]
pub fn test_run(prog: &OwnedFd, frame: &[u8], ifindex: u32, repeat: u32) -> RunOut {
    try_test_run(prog, frame, ifindex, repeat)
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on a {}-byte frame failed: {e}", frame.len()))
}

/// BPF_PROG_TEST_RUN, returning the kernel's error instead of panicking.
pub fn try_test_run(prog: &OwnedFd, frame: &[u8], ifindex: u32, repeat: u32) -> Result<RunOut, std::io::Error> {
    // struct __sk_buff up to and including ifindex (offset 40).
    let mut ctx = [0u8; 44];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 512];
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
        data_in: frame.as_ptr().cast(),
        data_size_in: frame.len() as u32,
        data_out: out.as_mut_ptr().cast(),
        data_size_out: out.len() as u32,
        ctx_in: if ifindex != 0 { ctx.as_ptr().cast() } else { std::ptr::null() },
        ctx_size_in: if ifindex != 0 { ctx.len() as u32 } else { 0 },
        repeat: repeat as i32,
        ..Default::default()
    };
    // SAFETY: every buffer named in opts outlives the call and its size is
    // the one given.
    let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(-rc));
    }
    out.truncate(opts.data_size_out as usize);
    Ok(RunOut { verdict: opts.retval as i32, data: out, duration_ns: opts.duration })
}

/// Counter totals by "program/reason".
pub fn counters(root: &TestRoot) -> std::collections::BTreeMap<String, u64> {
    let map = datapath::maps::open(&root.pins, "stats").unwrap();
    datapath::maps::read_stats(&map)
        .unwrap()
        .into_iter()
        .map(|c| (format!("{}/{}", c.program, c.reason), c.packets))
        .collect()
}

/// Asserts that exactly the named counters moved, by the given amounts.
#[track_caller]
pub fn assert_counter_deltas(
    what: &str,
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    expect: &[(&str, u64)],
) {
    for (name, a) in after {
        let b = before.get(name).copied().unwrap_or(0);
        let want = expect.iter().find(|(n, _)| n == name).map(|(_, d)| *d).unwrap_or(0);
        assert_eq!(a - b, want, "{what}: counter {name} moved by {}, expected {want}", a - b);
    }
    for (name, _) in expect {
        assert!(after.contains_key(*name), "{what}: no counter named {name}");
    }
}

/// What one run of the real `datapathctl` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlOut {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `c` (the binary, or a wrapper that starts it) with
/// DATAPATH_PIN_ROOT set to `root`; `ns` adds `-n`.
pub fn run_ctl(mut c: Command, root: &std::path::Path, ns: Option<&str>, args: &[&str]) -> CtlOut {
    c.env("DATAPATH_PIN_ROOT", root);
    if let Some(n) = ns {
        c.args(["-n", n]);
    }
    let o = c.args(args).output().expect("running datapathctl");
    CtlOut {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Runs the real datapathctl on a pin root (and in a named netns).
pub fn ctl(root: &std::path::Path, ns: Option<&str>, args: &[&str]) -> CtlOut {
    run_ctl(Command::new(env!("CARGO_BIN_EXE_datapathctl")), root, ns, args)
}

#[track_caller]
pub fn assert_ok(what: &str, o: &CtlOut) {
    assert_eq!(o.code, Some(0), "{what}: exit {:?}, stderr {:?}", o.code, o.stderr);
}

/// A failed command: non-zero exit, exactly one line on stderr, nothing
/// on stdout.
#[track_caller]
pub fn assert_one_line_failure(what: &str, o: &CtlOut) {
    assert!(o.code.is_some_and(|c| c != 0), "{what}: exit {:?}, expected a failure; stdout {:?}", o.code, o.stdout);
    assert_eq!(o.stderr.lines().count(), 1, "{what}: stderr must be exactly one line, got {:?}", o.stderr);
    assert!(o.stdout.is_empty(), "{what}: a failure printed on stdout: {:?}", o.stdout);
}

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;

/// BPF_PROG_TEST_RUN of an XDP program on one frame (no context: the
/// program sees ingress_ifindex 0). Unlike the skb runner, the kernel
/// takes any frame of at least 14 bytes here, so short IP frames can be
/// fixtures.
pub fn try_xdp_run(prog: &OwnedFd, frame: &[u8], repeat: u32) -> Result<RunOut, std::io::Error> {
    let mut out = vec![0u8; frame.len() + 512];
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
        data_in: frame.as_ptr().cast(),
        data_size_in: frame.len() as u32,
        data_out: out.as_mut_ptr().cast(),
        data_size_out: out.len() as u32,
        repeat: repeat as i32,
        ..Default::default()
    };
    // SAFETY: every buffer named in opts outlives the call and its size is
    // the one given.
    let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(-rc));
    }
    out.truncate(opts.data_size_out as usize);
    Ok(RunOut { verdict: opts.retval as i32, data: out, duration_ns: opts.duration })
}

#[track_caller]
pub fn xdp_run(prog: &OwnedFd, frame: &[u8], repeat: u32) -> RunOut {
    try_xdp_run(prog, frame, repeat)
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN (XDP) on a {}-byte frame failed: {e}", frame.len()))
}
