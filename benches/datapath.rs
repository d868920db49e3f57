//! Benchmarks, run by `scripts/bench` (cargo bench --bench datapath):
//!
//! 1. ns/packet of every program path through BPF_PROG_TEST_RUN on
//!    fixed-point fixtures, with 1 entry and with 65,536 entries per map;
//! 2. end to end in network namespaces: TCP request/response rate over one
//!    connection, new connections per second and iperf3 throughput, player
//!    -> published port -> container, for this datapath (host access
//!    attached to the benchmark's cgroup, as a host has it on the cgroup
//!    v2 root), iptables DNAT + MASQUERADE, and a direct veth (the floor);
//! 3. the guard: its ns/packet on each path next to the dnat hit it runs
//!    before, the per-source state a spoofed flood leaves to verified and
//!    unverified bots, and the CPU the host spends on a bot SYN flood with
//!    the guard's limit, with no limit, and with the same policy as an
//!    iptables hashlimit rule and an nftables meter;
//! 4. control plane: whole-process time of `datapathctl` commands, and
//!    attach/detach, load and unload with 10 to 10,000 attached containers;
//! 5. containers: `container add`/`del`, and podman with datapath-cni
//!    against podman with the stock bridge and portmap plugins:
//!    request/response and new connections per second, and the time of one
//!    CNI ADD and DEL.
//!
//! `--short` runs everything briefly (CI keeps it working); `--write`
//! replaces the sections it measured in BENCHMARKS.md. Sections can be
//! chosen with `--only prog|e2e|guard|ctl|scale|containers` (`ctl`
//! includes `scale`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::packet::{arp, Pkt};
use common::packet6::{ip6, Pkt6};
use common::*;
use datapath::abi::{bytes_of, types, Proto};
use datapath::maps::Ext;
use datapath::ops::{self, DnatAdd, LoadOptions};
use datapath::net::netns::NetnsGuard;
use libbpf_rs::{MapCore, MapFlags};

const CTR0: [u8; 6] = [0x02, 0xc0, 0, 0, 0, 0x02];
const PEER: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x09];

struct Opts {
    short: bool,
    write: bool,
    only: Option<String>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opts = Opts {
        short: args.iter().any(|a| a == "--short"),
        write: args.iter().any(|a| a == "--write"),
        only: args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1).cloned()),
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("bench: needs root (BPF, network namespaces)");
        std::process::exit(1);
    }
    let want = |s: &str| opts.only.as_deref().is_none_or(|o| o == s);
    // Each section carries the machine and date it was measured on, so
    // `--only X --write` replaces that section alone.
    let mut sections: Vec<(&str, String)> = Vec::new();
    if want("prog") {
        sections.push(("prog", machine_line() + &prog_bench(&opts)));
    }
    if want("e2e") {
        sections.push(("e2e", machine_line() + &e2e_bench(&opts)));
    }
    if want("guard") {
        sections.push(("guard", machine_line() + &guard_bench(&opts)));
    }
    if want("trace") {
        sections.push(("trace", machine_line() + &trace_bench(&opts)));
    }
    if want("ctl") {
        sections.push(("ctl", machine_line() + &ctl_bench(&opts)));
    }
    if want("ctl") || opts.only.as_deref() == Some("scale") {
        sections.push(("scale", machine_line() + &scale_bench(&opts)));
    }
    for (_, md) in &sections {
        println!("\n{md}");
    }
    if want("containers") {
        sections.push(("containers", machine_line() + &containers_bench(&opts)));
    }
    if opts.write {
        write_benchmarks_md(&sections);
    }
}

fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = Command::new("date").arg("-u").arg("+%Y-%m-%d").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    format!("Machine: {cpu}, {cores} cores, Linux {}, measured {date}.\n\n", kernel.trim())
}

/// The order of the generated sections in BENCHMARKS.md.
const SECTIONS: [&str; 7] = ["prog", "e2e", "guard", "trace", "ctl", "scale", "containers"];

/// Replaces the sections measured in this run between the markers of
/// BENCHMARKS.md (`<!-- section:NAME -->` inside the generated block) and
/// keeps the others as they were.
fn write_benchmarks_md(measured: &[(&str, String)]) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let (begin, end) = ("<!-- bench:begin -->", "<!-- bench:end -->");
    let (head, block, tail) = match (old.find(begin), old.find(end)) {
        (Some(b), Some(e)) if b < e => (old[..b].to_string(), old[b + begin.len()..e].to_string(), old[e..].to_string()),
        _ => ("# Benchmarks\n\n".to_string(), String::new(), format!("{end}\n")),
    };
    let mut kept: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    for part in block.split("<!-- section:").skip(1) {
        if let Some((name, text)) = part.split_once(" -->\n") {
            kept.insert(name.to_string(), text.to_string());
        }
    }
    for (name, text) in measured {
        kept.insert(name.to_string(), text.clone());
    }
    let mut generated = String::new();
    for name in SECTIONS {
        if let Some(text) = kept.get(name) {
            generated.push_str(&format!("<!-- section:{name} -->\n{text}"));
        }
    }
    std::fs::write(path, format!("{head}{begin}\n{generated}{tail}")).expect("writing BENCHMARKS.md");
    eprintln!("bench: wrote {path}");
}

// ---------------------------------------------------------------------
// 1. Per packet

struct ProgEnv {
    root: TestRoot,
    ns: TestNs,
    v0: (u32, [u8; 6]),
    ext: (u32, [u8; 6]),
}

const PLAYER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);

fn prog_env() -> ProgEnv {
    // Proxy ports 53 and 80 make the DNS and HTTP redirects fixed points:
    // the rewritten packet takes the same path on every repeat.
    let root = TestRoot::loaded();
    ops::load(&root.pins, LoadOptions { dns: Some(53), http: Some(80), tcp: Some(9111) }).unwrap();
    let ns = TestNs::new();
    ns.ip("link add dpv0 type veth peer name dpc0");
    ns.ip("addr add 10.0.0.1/32 dev dpv0");
    ns.ip("-6 addr add fe80::1/64 dev dpv0 nodad");
    ns.ip("link add dpext type veth peer name dpextp");
    let n = Some(ns.name.as_str());
    ops::veth_add_dual(&root.pins, n, "dpv0", ip("10.0.0.2"), Some(ip6("fd00::2"))).unwrap();
    // The fixed points: the external address is the container's and the
    // host port its port, so dnat and snat write what is already there.
    ops::snat_set(&root.pins, n, ip("10.0.0.2"), "dpext").unwrap();
    let a = DnatAdd {
        ext: Ext::Default,
        host_port: 25565,
        ctr_ip: ip("10.0.0.2").into(),
        veth: "dpv0".into(),
        ctr_mac: CTR0,
        proto: Proto::Tcp,
        to_port: 25565,
    };
    ops::dnat_add(&root.pins, n, &a).unwrap();
    // The same fixed points over IPv6.
    ops::external_add(&root.pins, n, ip6("fd00::2"), "dpext", true).unwrap();
    ops::dnat_add(&root.pins, n, &DnatAdd { ctr_ip: ip6("fd00::2").into(), ..a }).unwrap();
    let (v0, ext) = (ns.iface("dpv0"), ns.iface("dpext"));
    ProgEnv { root, ns, v0, ext }
}

/// The release before published flows, loaded by its own `datapathctl`
/// (built by scripts/prev-release) into a pin root of its own, and set up
/// the same way in the same namespace.
struct PrevRelease {
    root: String,
    bin: String,
}

impl PrevRelease {
    fn load(env: &ProgEnv) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/prev-release");
        let out = Command::new("bash").arg(script).stderr(Stdio::inherit()).output().expect("running scripts/prev-release");
        assert!(out.status.success(), "scripts/prev-release failed");
        let bin = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let me = Self { root: format!("/sys/fs/bpf/{}", unique("dpbprev")), bin };
        let n = env.ns.name.as_str();
        let mac = datapath::net::netif::format_mac(&CTR0);
        for args in [
            vec!["load", "--proxy-dns-port", "53", "--proxy-http-port", "80", "--proxy-tcp-port", "9111"],
            vec!["-n", n, "map", "veth", "add", "dpv0", "10.0.0.2"],
            vec!["-n", n, "map", "snat", "set", "10.0.0.2", "dpext"],
            vec!["-n", n, "map", "dnat", "add", "25565", "10.0.0.2", "dpv0", &mac],
        ] {
            let st = Command::new(&me.bin).args(&args).env("DATAPATH_PIN_ROOT", &me.root).stdout(Stdio::null()).status().unwrap();
            assert!(st.success(), "previous release: datapathctl {} failed", args.join(" "));
        }
        me
    }

    fn prog(&self, name: &str) -> std::os::fd::OwnedFd {
        datapath::kernel::attach::obj_get(&std::path::Path::new(&self.root).join("progs").join(name)).expect("previous release's program")
    }
}

impl Drop for PrevRelease {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin).arg("unload").env("DATAPATH_PIN_ROOT", &self.root).status();
    }
}

/// The cheapest TC program there is (r0 = TC_ACT_UNSPEC; exit), loaded with
/// the bpf(2) system call itself: what BPF_PROG_TEST_RUN costs by itself.
fn empty_program() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // BPF_ALU64 | BPF_MOV | BPF_K into r0, imm -1; BPF_JMP | BPF_EXIT.
    let insns: [u64; 2] = [u64::from(0xb7u8) | (u64::from(u32::MAX) << 32), 0x95];
    let license = b"GPL\0";
    // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns,
    // license; everything else zero.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&libbpf_sys::BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: attr is a zeroed bpf_attr of the size passed, and the
    // pointers in it stay valid across the call.
    let fd = unsafe {
        nix::libc::syscall(nix::libc::SYS_bpf, libbpf_sys::BPF_PROG_LOAD, attr.as_ptr(), attr.len() as u32)
    };
    assert!(fd >= 0, "loading the empty program: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nothing else owns.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
}

/// Fills dnat4, flows4, veths and proxy_flows up to their capacities (the
/// LRU maps just under: they evict per CPU before they are full).
fn fill(env: &ProgEnv) {
    let dnat = datapath::maps::open(&env.root.pins, "dnat4").unwrap();
    let flows4 = datapath::maps::open(&env.root.pins, "flows4").unwrap();
    let veths = datapath::maps::open(&env.root.pins, "veths").unwrap();
    let flows = datapath::maps::open(&env.root.pins, "proxy_flows").unwrap();
    let n = datapath::abi::capacity::PUBLISHED;
    for i in 0..n.saturating_sub(datapath::maps::count(&dnat) as u32) {
        // 100.64.0.0/10: nothing the fixtures use.
        let ext = Ipv4Addr::from(0x6440_0000 + i / 60000);
        let ctr = Ipv4Addr::from(0x0a10_0000 + i);
        let k = types::dnat4_key::new(ext, (i % 60000 + 1) as u16, Proto::Tcp);
        let v = types::dnat4_value::new(ctr, 25565, CTR0, 999, i);
        dnat.update(bytes_of(&k), bytes_of(&v), MapFlags::NO_EXIST).unwrap();
    }
    let flows_target = datapath::abi::capacity::FLOWS - 2048;
    for i in 0..flows_target.saturating_sub(datapath::maps::count(&flows4) as u32) {
        let k = types::flow4_key::new(Ipv4Addr::from(0x0a10_0000 + i / 8), 25565, Ipv4Addr::from(0x6480_0000 + i), 40000, Proto::Tcp);
        let v = types::flow4_value::new(ip("198.51.100.1"), 30001, 2, 999, i % n);
        flows4.update(bytes_of(&k), bytes_of(&v), MapFlags::ANY).unwrap();
    }
    for i in 0..datapath::abi::capacity::VETHS.saturating_sub(datapath::maps::count(&veths) as u32) {
        let v = types::veth_info::new(Ipv4Addr::from(0x0a20_0000 + i), ip("10.255.0.1"), CTR0);
        veths.update(bytes_of(&(1_000_000 + i)), bytes_of(&v), MapFlags::NO_EXIST).unwrap();
    }
    let flows_target = datapath::abi::capacity::PROXY_FLOWS - 64;
    for i in 0..flows_target.saturating_sub(datapath::maps::count(&flows) as u32) {
        let k = types::ctr_endpoint::new(Ipv4Addr::from(0x0a30_0000 + i), 40000, Proto::Tcp);
        let v = types::flow_orig::new(ip("192.0.2.1"), 443, ip("10.255.0.1"), 9111);
        flows.update(bytes_of(&k), bytes_of(&v), MapFlags::ANY).unwrap();
    }
    // Their IPv6 twins, the same way (2001:db8:100::/40: nothing the
    // fixtures use).
    let a6 = |hi: u16, i: u32| std::net::Ipv6Addr::new(0x2001, 0xdb8, hi, 0, 0, 0, (i >> 16) as u16, i as u16);
    let dnat6 = datapath::maps::open(&env.root.pins, "dnat6").unwrap();
    for i in 0..n.saturating_sub(datapath::maps::count(&dnat6) as u32) {
        let k = types::dnat6_key::new(a6(0x100, i / 60000), (i % 60000 + 1) as u16, Proto::Tcp);
        let v = types::dnat6_value::new(a6(0x101, i), 25565, CTR0, 999, i);
        dnat6.update(bytes_of(&k), bytes_of(&v), MapFlags::NO_EXIST).unwrap();
    }
    let flows6 = datapath::maps::open(&env.root.pins, "flows6").unwrap();
    let flows_target = datapath::abi::capacity::FLOWS - 2048;
    for i in 0..flows_target.saturating_sub(datapath::maps::count(&flows6) as u32) {
        let k = types::flow6_key::new(a6(0x101, i / 8), 25565, a6(0x102, i), 40000, Proto::Tcp);
        let v = types::flow6_value::new(a6(0x100, 0), 30001, 2, 999, i % n);
        flows6.update(bytes_of(&k), bytes_of(&v), MapFlags::ANY).unwrap();
    }
    let veths6 = datapath::maps::open(&env.root.pins, "veths6").unwrap();
    for i in 0..datapath::abi::capacity::VETHS.saturating_sub(datapath::maps::count(&veths6) as u32) {
        let v = types::veth6_info::new(a6(0x103, i), ip6("fe80::1"), CTR0);
        veths6.update(bytes_of(&(1_000_000 + i)), bytes_of(&v), MapFlags::NO_EXIST).unwrap();
    }
    let pflows6 = datapath::maps::open(&env.root.pins, "proxy_flows6").unwrap();
    let flows_target = datapath::abi::capacity::PROXY_FLOWS - 64;
    for i in 0..flows_target.saturating_sub(datapath::maps::count(&pflows6) as u32) {
        let k = types::ctr_endpoint6::new(a6(0x104, i), 40000, Proto::Tcp);
        let v = types::flow_orig6::new(ip6("2001:db8::443"), 443, ip6("fe80::1"), 9111);
        pflows6.update(bytes_of(&k), bytes_of(&v), MapFlags::ANY).unwrap();
    }
}

/// The empty TC program in the run that measured the upstream figures.
const UPSTREAM_FLOOR_NS: f64 = 16.0;

struct Path {
    name: &'static str,
    prog: &'static str,
    frame: Vec<u8>,
    ifindex: u32,
    verdict: i32,
    /// Not a fixed point: measured one run per syscall instead.
    single: bool,
    /// Held to floor + 1.25 x (previous release - floor).
    target: bool,
    upstream: Option<&'static str>,
    upstream_ns: Option<f64>,
    /// An IPv6 path: the index of its IPv4 twin (the release before had
    /// no IPv6, so it has no "previous" figure).
    v4_twin: Option<usize>,
}

fn syn(mut p: Pkt) -> Pkt {
    p.tcp_flags = 0x02;
    p
}

fn paths(env: &ProgEnv) -> Vec<Path> {
    let (v0, vmac) = env.v0;
    let e = env.ext.0;
    let c = ip("10.0.0.2");
    let gw = ip("10.0.0.1");
    let p = |name, prog, frame, ifindex, verdict, up: Option<(&'static str, f64)>| Path {
        name,
        prog,
        frame,
        ifindex,
        verdict,
        single: false,
        target: false,
        upstream: up.map(|u| u.0),
        upstream_ns: up.map(|u| u.1),
        v4_twin: None,
    };
    let mut v = vec![
        p("dnat hit", "dnat", Pkt::tcp((PLAYER, 40000), (c, 25565)).macs(PEER, CTR0).build(), e, TC_ACT_REDIRECT, Some(("67", 67.0))),
        p("dnat miss", "dnat", Pkt::tcp((PLAYER, 40000), (ip("198.51.100.1"), 22)).macs(PEER, CTR0).build(), e, TC_ACT_UNSPEC, Some(("30", 30.0))),
        p("snat hit", "snat", Pkt::tcp((c, 25565), (PLAYER, 40000)).macs(CTR0, vmac).build(), v0, TC_ACT_REDIRECT, Some(("69", 69.0))),
        p("tproxy ingress dns (udp)", "tproxy_ingress", Pkt::udp((c, 5353), (gw, 53)).macs(CTR0, vmac).build(), v0, TC_ACT_OK, None),
        p("tproxy ingress http", "tproxy_ingress", syn(Pkt::tcp((c, 40080), (gw, 80))).macs(CTR0, vmac).build(), v0, TC_ACT_OK, None),
        p("tproxy ingress other tcp", "tproxy_ingress", syn(Pkt::tcp((c, 40443), (gw, 9111))).macs(CTR0, vmac).build(), v0, TC_ACT_OK, None),
        p("tproxy egress restore", "tproxy_egress", Pkt::tcp((gw, 9111), (c, 40443)).macs(vmac, CTR0).build(), v0, TC_ACT_OK, Some(("61", 61.0))),
    ];
    v[0].target = true;
    v[2].target = true;
    // IPv6 twins of the hit paths, each held to 1.3 times its IPv4 figure.
    let (c6, gw6, player6) = (ip6("fd00::2"), ip6("fe80::1"), ip6("2001:db8:ff::9"));
    let six = [
        (0, "dnat hit, IPv6", "dnat", Pkt6::tcp((player6, 40000), (c6, 25565)).macs(PEER, CTR0).build(), e, TC_ACT_REDIRECT),
        (2, "snat hit, IPv6", "snat", Pkt6::tcp((c6, 25565), (player6, 40000)).macs(CTR0, vmac).build(), v0, TC_ACT_REDIRECT),
        (3, "tproxy ingress dns (udp), IPv6", "tproxy_ingress", Pkt6::udp((c6, 5353), (gw6, 53)).macs(CTR0, vmac).build(), v0, TC_ACT_OK),
        (4, "tproxy ingress http, IPv6", "tproxy_ingress", Pkt6::tcp((c6, 40080), (gw6, 80)).syn().macs(CTR0, vmac).build(), v0, TC_ACT_OK),
        (5, "tproxy ingress other tcp, IPv6", "tproxy_ingress", Pkt6::tcp((c6, 40443), (gw6, 9111)).syn().macs(CTR0, vmac).build(), v0, TC_ACT_OK),
        (6, "tproxy egress restore, IPv6", "tproxy_egress", Pkt6::tcp((gw6, 9111), (c6, 40443)).macs(vmac, CTR0).build(), v0, TC_ACT_OK),
    ];
    for (twin, name, prog, frame, ifindex, verdict) in six {
        let mut x = p(name, prog, frame, ifindex, verdict, None);
        x.v4_twin = Some(twin);
        v.push(x);
    }
    let mut a = p("arp reply (one run per call)", "arp", arp(1, CTR0, c, [0; 6], gw, [0xff; 6]), v0, TC_ACT_REDIRECT, None);
    a.single = true;
    v.push(a);
    let mut floor = p("timer floor: arp hands on IPv4 (one run per call)", "arp", Pkt::tcp((c, 1), (gw, 2)).build(), v0, TC_ACT_UNSPEC, None);
    floor.single = true;
    v.push(floor);
    v
}

fn measure_fd(fd: &std::os::fd::OwnedFd, path: &Path, opts: &Opts) -> f64 {
    let out = test_run(fd, &path.frame, path.ifindex, 1);
    assert_eq!(out.verdict, path.verdict, "{} ({}): unexpected verdict {}", path.name, path.prog, out.verdict);
    if path.single {
        let calls = if opts.short { 2_000 } else { 200_000 };
        let mut total = 0u64;
        for _ in 0..calls {
            total += u64::from(test_run(fd, &path.frame, path.ifindex, 1).duration_ns);
        }
        return total as f64 / calls as f64;
    }
    // A fixed point comes out unchanged, so every repeat runs the same path.
    assert_eq!(out.data, path.frame, "{}: not a fixed point", path.name);
    let (runs, repeat) = if opts.short { (3, 20_000) } else { (5, 1_000_000) };
    test_run(fd, &path.frame, path.ifindex, repeat / 10);
    median((0..runs).map(|_| f64::from(test_run(fd, &path.frame, path.ifindex, repeat).duration_ns)).collect())
}

fn prog_bench(opts: &Opts) -> String {
    eprintln!("bench: per-packet cost (BPF_PROG_TEST_RUN)");
    let env = prog_env();
    let prev = PrevRelease::load(&env);
    let empty = empty_program();
    let _in_ns = NetnsGuard::enter(Some(&env.ns.name)).unwrap();
    let paths = paths(&env);
    // The floor: the empty program on the dnat frame, the same way.
    let floor_path = Path {
        name: "empty program",
        prog: "",
        frame: paths[0].frame.clone(),
        ifindex: paths[0].ifindex,
        verdict: TC_ACT_UNSPEC,
        single: false,
        target: false,
        upstream: None,
        upstream_ns: None,
        v4_twin: None,
    };
    let measure_all = |fds: &dyn Fn(&str) -> std::os::fd::OwnedFd| -> Vec<f64> {
        paths.iter().map(|p| measure_fd(&fds(p.prog), p, opts)).collect()
    };
    let measure_v4 = |fds: &dyn Fn(&str) -> std::os::fd::OwnedFd| -> Vec<f64> {
        paths.iter().map(|p| if p.v4_twin.is_some() { f64::NAN } else { measure_fd(&fds(p.prog), p, opts) }).collect()
    };
    // Side by side, interleaved: floor, previous release, this build.
    let floor = measure_fd(&empty, &floor_path, opts);
    eprintln!("bench: previous release");
    let previous = measure_v4(&|name| prev.prog(name));
    eprintln!("bench: this build");
    let one = measure_all(&|name| prog_fd(&env.root, name));
    let floor2 = measure_fd(&empty, &floor_path, opts);
    let floor = (floor + floor2) / 2.0;
    fill(&env);
    let full = measure_all(&|name| prog_fd(&env.root, name));
    let count = |m: &str| datapath::maps::count(&datapath::maps::open(&env.root.pins, m).unwrap());
    let (nd, nf, np) = (count("dnat4"), count("flows4"), count("proxy_flows"));

    let (runs, repeat) = if opts.short { (3, 20_000) } else { (5, 1_000_000) };
    let mut s = format!(
        "### Per packet\n\nBPF_PROG_TEST_RUN, median of {runs} runs of {repeat} repeats on fixed-point fixtures \
         (the rewrite leaves the packet on the same path). \"previous\": the release before published flows \
         (commit 1607cb0, built by scripts/prev-release), loaded in the same run and set up the same way. \
         \"floor\": an empty TC program (two instructions) on the dnat frame, {floor:.1} ns. \
         \"upstream\": the system this one replaces, not part of this repository and so not measured here: \
         its figures from one run on this machine class (BPF_PROG_TEST_RUN, fixed-point frames) beside an empty \
         TC program that cost {UPSTREAM_FLOOR_NS:.0} ns there; each build is compared above its own run's floor. \
         \"65,536 entries\": dnat4 {nd}, flows4 {nf}, veths 65,536, proxy_flows {np} (LRU maps just under capacity), \
         and their IPv6 twins as full. IPv6 paths: \"target\" is at most 1.3 times the IPv4 twin's figure in the \
         same column (the release before had no IPv6).\n\n\
         | path | previous (ns) | 1 entry (ns) | 65,536 entries (ns) | change | target (ns) | upstream (ns) | 1 entry vs upstream, above each floor |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for (i, p) in paths.iter().enumerate() {
        let change = (full[i] / one[i] - 1.0) * 100.0;
        let (up, vs) = match (p.upstream, p.upstream_ns) {
            (Some(u), Some(n)) => (
                format!("{u} ({:.0} above its floor)", n - UPSTREAM_FLOOR_NS),
                format!("{:.2}x", (one[i] - floor) / (n - UPSTREAM_FLOOR_NS)),
            ),
            _ => ("-".into(), "-".into()),
        };
        let target = if let Some(j) = p.v4_twin {
            let (t1, tf) = (1.3 * one[j], 1.3 * full[j]);
            let met = one[i] <= t1 && full[i] <= tf;
            format!(
                "≤ {t1:.1} / {tf:.1} ({:.2}x / {:.2}x IPv4) {}",
                one[i] / one[j],
                full[i] / full[j],
                if met { "met" } else { "**missed**" }
            )
        } else if p.target {
            let t = floor + 1.25 * (previous[i] - floor);
            format!("≤ {t:.1} {}", if one[i] <= t && full[i] <= t { "met" } else { "**missed**" })
        } else {
            "-".into()
        };
        let prev_s = if previous[i].is_nan() { "-".to_string() } else { format!("{:.1}", previous[i]) };
        s.push_str(&format!(
            "| {} | {prev_s} | {:.1} | {:.1} | {:+.1}% | {target} | {up} | {vs} |\n",
            p.name, one[i], full[i], change
        ));
    }
    s.push('\n');
    eprint!("{s}");
    s
}

// ---------------------------------------------------------------------
// 2. End to end

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setup {
    Datapath,
    Iptables,
    Direct,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Datapath => "datapath (eBPF)",
            Setup::Iptables => "iptables DNAT + MASQUERADE",
            Setup::Direct => "direct veth (floor)",
        }
    }
}

struct Topo {
    player: TestNs,
    _host: Option<TestNs>,
    ctr: TestNs,
    target: SocketAddr,
    root: Option<String>,
    /// The proxy's cgroup (setup attaches getsockopt to it).
    proxy_cgroup: Option<Cgroup>,
    /// The datapath's set-up runs the benchmark process in a cgroup of its
    /// own with host access attached, as a host has it on the root:
    /// every connect() of the player pays for it. (cgroup, the one the
    /// process came from.)
    cgroup: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Topo {
    fn ends(&self) -> Ends {
        Ends { player: self.player.name.clone(), ctr: self.ctr.name.clone(), target: self.target }
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        if let Some((_, from)) = &self.cgroup {
            move_self_to(from);
        }
        if let Some(root) = &self.root {
            let _ = Command::new(env!("CARGO_BIN_EXE_datapathctl")).arg("unload").env("DATAPATH_PIN_ROOT", root).status();
        }
        if let Some((cg, _)) = &self.cgroup {
            let _ = std::fs::remove_dir(cg);
        }
        self.proxy_cgroup.take();
    }
}

/// Where a measurement runs: the client's namespace, the server's, and
/// the address the client connects to.
struct Ends {
    player: String,
    ctr: String,
    target: SocketAddr,
}

/// A cgroup of the benchmark's own for the proxy (setup attaches
/// getsockopt to it), removed on drop.
struct Cgroup(std::path::PathBuf);

impl Cgroup {
    fn new() -> Self {
        let p = datapath::kernel::attach::cgroup2_root().expect("cgroup v2 mount").join(unique("dpb"));
        std::fs::create_dir(&p).unwrap();
        Self(p)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Moves this whole process (every thread) into cgroup v2 directory `cg`.
fn move_self_to(cg: &std::path::Path) {
    std::fs::write(cg.join("cgroup.procs"), std::process::id().to_string())
        .unwrap_or_else(|e| panic!("moving the benchmark into cgroup {}: {e}", cg.display()));
}

/// The cgroup v2 directory this process is in.
fn own_cgroup() -> std::path::PathBuf {
    let mount = datapath::kernel::attach::cgroup2_root().expect("cgroup v2 mount");
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("reading /proc/self/cgroup");
    let rel = text.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup v2 line in /proc/self/cgroup");
    mount.join(rel.trim_start_matches('/'))
}

fn ctl(root: &str, args: &[&str]) {
    let st = Command::new(env!("CARGO_BIN_EXE_datapathctl"))
        .args(args)
        .env("DATAPATH_PIN_ROOT", root)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "datapathctl {} failed", args.join(" "));
}

fn nsexec(ns: &TestNs, cmd: &str) {
    sh(&format!("nsenter --net=/run/netns/{} {cmd}", ns.name));
}

fn topo(setup: Setup) -> Topo {
    let player = TestNs::new();
    let ctr = TestNs::new();
    if setup == Setup::Direct {
        player.ip(&format!("link add p0 type veth peer name eth0 netns {}", ctr.name));
        player.ip("addr add 10.77.0.2/24 dev p0");
        player.ip("link set p0 up");
        ctr.ip("addr add 10.77.0.3/24 dev eth0");
        ctr.ip("link set eth0 up");
        return Topo { player, _host: None, ctr, target: "10.77.0.3:25565".parse().unwrap(), root: None, cgroup: None, proxy_cgroup: None };
    }
    let host = TestNs::new();
    host.ip(&format!("link add ext0 type veth peer name p0 netns {}", player.name));
    host.ip("addr add 10.98.0.1/24 dev ext0");
    host.ip("link set ext0 up");
    player.ip("addr add 10.98.0.2/24 dev p0");
    player.ip("link set p0 up");
    let (mut root, mut cgroup, mut proxy_cgroup) = (None, None, None);
    match setup {
        Setup::Iptables => {
            // What a provisioning script does for iptables: the veth pair,
            // addresses and routes by hand, then the rules.
            host.ip(&format!("link add hv0 type veth peer name eth0 netns {}", ctr.name));
            host.ip("addr add 10.99.0.1/32 dev hv0");
            host.ip("link set hv0 up");
            host.ip("route add 10.99.0.2/32 dev hv0");
            ctr.ip("addr add 10.99.0.2/32 dev eth0");
            ctr.ip("link set eth0 up");
            ctr.ip("route add 10.99.0.1/32 dev eth0");
            ctr.ip("route add default via 10.99.0.1 dev eth0");
            nsexec(&host, "sysctl -qw net.ipv4.ip_forward=1");
            nsexec(&host, "iptables -t nat -A PREROUTING -i ext0 -p tcp --dport 30001 -j DNAT --to-destination 10.99.0.2:25565");
            nsexec(&host, "iptables -t nat -A POSTROUTING -s 10.99.0.2/32 -o ext0 -j MASQUERADE");
        }
        Setup::Datapath => {
            // The product's own two commands, host access on a cgroup of
            // the benchmark's own that the process moves into.
            let r = format!("/sys/fs/bpf/{}", unique("dpb"));
            let h = host.name.as_str();
            let cg = Cgroup::new();
            root = Some(r.clone());
            let from = own_cgroup();
            let hcg = datapath::kernel::attach::cgroup2_root().expect("cgroup v2 mount").join(unique("dpb"));
            std::fs::create_dir(&hcg).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", hcg.display()));
            cgroup = Some((hcg.clone(), from));
            let hcg_s = hcg.to_str().unwrap();
            ctl(&r, &["-n", h, "setup", "--external", "ext0", "--proxy-cgroup", cg.path(), "--host-access-cgroup", hcg_s]);
            proxy_cgroup = Some(cg);
            ctl(&r, &["-n", h, "container", "add", "mc", "--netns", &ctr.name, "--ip", "10.99.0.2", "--publish", "30001:25565"]);
            move_self_to(&hcg);
        }
        Setup::Direct => unreachable!(),
    }
    Topo { player, _host: Some(host), ctr, target: "10.98.0.1:30001".parse().unwrap(), root, cgroup, proxy_cgroup }
}

/// Runs `f` on a thread inside a network namespace.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        let _g = NetnsGuard::enter(Some(&ns)).unwrap();
        f()
    })
}

/// Reads exactly one byte from a non-blocking socket, spinning: both ends
/// busy-poll so the rate shows the path's cost, not the scheduler's wake-up
/// latency (which on a 2-core VM is tens of microseconds and swamps it).
fn spin_read1(s: &mut TcpStream, b: &mut [u8; 1], deadline: Instant) -> std::io::Result<()> {
    loop {
        match s.read(b) {
            Ok(1) => return Ok(()),
            Ok(_) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
                std::hint::spin_loop();
            }
            Err(e) => return Err(e),
        }
    }
}

/// 1-byte request/response over one TCP connection: transactions/s.
fn rr(t: &Ends, secs: f64) -> f64 {
    let ready = Arc::new(Barrier::new(2));
    let r2 = ready.clone();
    let server = in_ns(&t.ctr, move || {
        let l = TcpListener::bind("0.0.0.0:25565").unwrap();
        r2.wait();
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let deadline = Instant::now() + Duration::from_secs_f64(secs + 10.0);
        while spin_read1(&mut s, &mut b, deadline).is_ok() {
            if s.write_all(&b).is_err() {
                break;
            }
        }
    });
    ready.wait();
    let target = t.target;
    let n = in_ns(&t.player, move || {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).expect("rr connect");
        s.set_nodelay(true).unwrap();
        s.set_nonblocking(true).unwrap();
        let mut b = [7u8; 1];
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            s.write_all(&b).unwrap();
            spin_read1(&mut s, &mut b, Instant::now() + Duration::from_secs(3)).expect("rr stalled");
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
    .join()
    .unwrap();
    server.join().unwrap();
    n
}

/// New connection, 1-byte request and response, close: connections/s,
/// from the player.
fn crr(t: &Ends, secs: f64) -> f64 {
    crr_from(t, &t.player, t.target, secs)
}

/// [`crr`] from namespace `client` to `target`.
fn crr_from(t: &Ends, client: &str, target: SocketAddr, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(2));
    let (r2, stop2) = (ready.clone(), stop.clone());
    let server = in_ns(&t.ctr, move || {
        let l = TcpListener::bind("0.0.0.0:25565").unwrap();
        r2.wait();
        loop {
            let (mut s, _) = l.accept().expect("accept");
            if stop2.load(Ordering::Relaxed) {
                break;
            }
            s.set_nodelay(true).unwrap();
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
        }
    });
    ready.wait();
    let rate = in_ns(client, move || {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).expect("crr connect");
            s.set_nodelay(true).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut b = [7u8; 1];
            s.write_all(&b).unwrap();
            s.read_exact(&mut b).expect("crr response");
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
    .join()
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    // Wake the blocking accept() so the server sees the stop flag.
    in_ns(&t.ctr, || drop(TcpStream::connect("127.0.0.1:25565"))).join().unwrap();
    server.join().unwrap();
    rate
}

/// iperf3 bulk TCP, player -> container: Gbit/s received.
fn iperf(t: &Ends, secs: u32) -> f64 {
    let mut server = Command::new("nsenter")
        .args([&format!("--net=/run/netns/{}", t.ctr), "iperf3", "-s", "-1", "-p", "25565"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    // Wait until the server listens (LISTEN on :25565 in its namespace).
    let start = Instant::now();
    let listening = |ns: String| {
        in_ns(&ns, || {
            ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"].iter().any(|f| {
                std::fs::read_to_string(f)
                    .map(|t| t.lines().any(|l| l.contains(":63DD ") && l.split_whitespace().nth(3) == Some("0A")))
                    .unwrap_or(false)
            })
        })
        .join()
        .unwrap()
    };
    while !listening(t.ctr.clone()) {
        assert!(start.elapsed() < Duration::from_secs(5), "iperf3 server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new("nsenter")
        .args([
            &format!("--net=/run/netns/{}", t.player),
            "iperf3",
            "-c",
            &t.target.ip().to_string(),
            "-p",
            &t.target.port().to_string(),
            "-t",
            &secs.to_string(),
            "-J",
        ])
        .output()
        .expect("iperf3 client");
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or_else(|| panic!("iperf3 gave no result: {v}")) / 1e9
}

fn e2e_bench(opts: &Opts) -> String {
    eprintln!("bench: end to end (network namespaces)");
    let (secs, iperf_secs, runs) = if opts.short { (0.3, 1, 1) } else { (3.0, 5, 3) };
    let mut rows = Vec::new();
    let mut host_rows = Vec::new();
    for setup in [Setup::Datapath, Setup::Iptables, Setup::Direct] {
        let t = topo(setup);
        let e = t.ends();
        let r = median((0..runs).map(|_| rr(&e, secs)).collect());
        let c = median((0..runs).map(|_| crr(&e, secs)).collect());
        let g = median((0..runs).map(|_| iperf(&e, iperf_secs)).collect());
        eprintln!("  {:<28} rr {r:>9.0}/s  crr {c:>7.0}/s  iperf3 {g:>6.2} Gbit/s", setup.name());
        rows.push((setup, r, c, g));
        if setup == Setup::Datapath {
            // A host process's new connections: through host access by
            // 127.0.0.1 and the published port, and by the container's own
            // address, which host access leaves alone.
            let host = t._host.as_ref().expect("the datapath's host namespace").name.clone();
            for (what, to) in [
                ("host -> 127.0.0.1:30001 (host access)", "127.0.0.1:30001"),
                ("host -> container address", "10.99.0.2:25565"),
            ] {
                let c = median((0..runs).map(|_| crr_from(&e, &host, to.parse().unwrap(), secs)).collect());
                eprintln!("  {what:<40} crr {c:>7.0}/s");
                host_rows.push((what, c));
            }
        }
        drop(t);
    }
    let (d, i, f) = (&rows[0], &rows[1], &rows[2]);
    let mut s = format!(
        "### End to end\n\nPlayer namespace -> published port -> container namespace, built in the same run (the \
         datapath with host access on the benchmark's cgroup, so every connect() of the player runs connect4); \
         median of {runs} run(s): request/response {secs} s each (1 byte each way, one connection, both ends busy-polling), new connections \
         {secs} s each (connect, 1 byte each way, close), iperf3 {iperf_secs} s.\n\n\
         | set-up | request/response (/s) | new connections (/s) | iperf3 (Gbit/s) |\n|---|---:|---:|---:|\n"
    );
    for (setup, r, c, g) in &rows {
        s.push_str(&format!("| {} | {r:.0} | {c:.0} | {g:.2} |\n", setup.name()));
    }
    s.push_str(&format!(
        "| datapath / iptables | {:.2}x | {:.2}x | {:.2}x |\n| datapath / direct | {:.2}x | {:.2}x | {:.2}x |\n\n",
        d.1 / i.1,
        d.2 / i.2,
        d.3 / i.3,
        d.1 / f.1,
        d.2 / f.2,
        d.3 / f.3
    ));
    s.push_str("A host process's new connections to the container, same run and method:\n\n| from the host | new connections (/s) |\n|---|---:|\n");
    for (what, c) in &host_rows {
        s.push_str(&format!("| {what} | {c:.0} |\n"));
    }
    s.push('\n');
    eprint!("{s}");
    s
}

// ---------------------------------------------------------------------
// 3. The guard

/// ns/packet of an XDP program on a frame, as `measure` does for TC
/// (median of runs of `repeat`), checking the verdict and that the frame
/// comes out untouched.
fn measure_xdp(fd: &std::os::fd::OwnedFd, frame: &[u8], verdict: i32, opts: &Opts, what: &str) -> f64 {
    let out = xdp_run(fd, frame, 1);
    assert_eq!((out.verdict, out.data.as_slice()), (verdict, frame), "{what}: verdict or frame");
    let (runs, repeat) = if opts.short { (3, 20_000) } else { (5, 1_000_000) };
    xdp_run(fd, frame, repeat / 10);
    let ns = median((0..runs).map(|_| f64::from(xdp_run(fd, frame, repeat).duration_ns)).collect());
    assert_eq!(xdp_run(fd, frame, 1).verdict, verdict, "{what}: verdict after the runs");
    ns
}

/// One run per call over `frames` (each run sees a different frame):
/// the kernel's per-run time, averaged.
fn measure_xdp_each(fd: &std::os::fd::OwnedFd, frames: &[Vec<u8>]) -> f64 {
    let total: u64 = frames.iter().map(|f| u64::from(xdp_run(fd, f, 1).duration_ns)).sum();
    total as f64 / frames.len() as f64
}

/// The cheapest XDP program there is (r0 = XDP_PASS; exit): what running
/// any XDP program through BPF_PROG_TEST_RUN costs.
fn xdp_floor_prog() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let insns = [
        libbpf_sys::bpf_insn { code: 0xb7, _bitfield_1: libbpf_sys::bpf_insn::new_bitfield_1(0, 0), off: 0, imm: 2, ..Default::default() },
        libbpf_sys::bpf_insn { code: 0x95, ..Default::default() },
    ];
    let name = std::ffi::CString::new("xdp_floor").unwrap();
    let lic = std::ffi::CString::new("GPL").unwrap();
    // SAFETY: the instructions, name and license outlive the call.
    let fd = unsafe {
        libbpf_sys::bpf_prog_load(libbpf_sys::BPF_PROG_TYPE_XDP, name.as_ptr(), lic.as_ptr(), insns.as_ptr(), 2, std::ptr::null_mut())
    };
    assert!(fd >= 0, "loading the XDP floor program: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor owned by nobody else.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

fn syn_to(src: Ipv4Addr, dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let mut p = Pkt::tcp((src, 40000), dst).macs(PEER, CTR0);
    p.tcp_flags = 0x02;
    p.build()
}

fn guard_per_packet(opts: &Opts) -> String {
    use datapath::maps::guard::{Cidr, LimitChange};
    use datapath::ops::guard as g;
    let env = prog_env();
    let _in_ns = NetnsGuard::enter(Some(&env.ns.name)).unwrap();
    let n = Some(env.ns.name.as_str());
    let ctr = ip("10.0.0.2");
    // UDP 25566 and TCP 25567 published for the limited paths.
    for (port, proto) in [(25566, Proto::Udp), (25567, Proto::Tcp)] {
        let a = DnatAdd { ext: Ext::Default, host_port: port, ctr_ip: ctr.into(), veth: "dpv0".into(), ctr_mac: CTR0, proto, to_port: port };
        ops::dnat_add(&env.root.pins, n, &a).unwrap();
    }
    let guard = prog_fd(&env.root, "guard");
    let dnat = prog_fd(&env.root, "dnat");
    let player = PLAYER;
    // The player's segment of the dnat hit row, through the guard first.
    let hit = paths(&env).swap_remove(0);
    assert_eq!(hit.name, "dnat hit");
    let seg = hit.frame.clone();
    let dnat_hit = measure_fd(&dnat, &hit, opts);
    // snat on the reply of that flow: it now also marks the flow answered
    // (and verifies the player) the first time.
    let snat_path = paths(&env).swap_remove(2);
    assert_eq!(snat_path.name, "snat hit");
    let snat_hit = measure_fd(&prog_fd(&env.root, "snat"), &snat_path, opts);
    let _ = dnat;
    let floor_prog = xdp_floor_prog();
    let xdp_floor = measure_xdp(&floor_prog, &seg, XDP_PASS, opts, "XDP floor");
    let bare = measure_xdp(&guard, &seg, XDP_PASS, opts, "guard, no deny entries or limits");

    // A realistic policy: 1,000 IPv4 and 1,000 IPv6 deny prefixes, global
    // limits, and for the admitted paths limits so high they never bite
    // during the repeats (each repeat takes a token).
    for i in 0..1000u32 {
        let a = Ipv4Addr::from(0xc612_0000u32 + (i << 8)); // 198.18.0.0/15 in /24s
        g::deny_add(&env.root.pins, &Cidr::new(a.into(), 24).unwrap(), None).unwrap();
        let b: std::net::Ipv6Addr = format!("2001:db8:{:x}::", i).parse().unwrap();
        g::deny_add(&env.root.pins, &Cidr::new(b.into(), 48).unwrap(), None).unwrap();
    }
    g::limit_set(&env.root.pins, None, &LimitChange { syn_rate: Some(20), udp_rate: Some(200), block_for: Some(60), ..Default::default() }).unwrap();
    let huge = LimitChange { syn_rate: Some(100_000_000), syn_burst: Some(10_000_000), udp_rate: Some(100_000_000), udp_burst: Some(10_000_000), ..Default::default() };
    g::limit_set(&env.root.pins, Some(25566), &huge).unwrap();
    g::limit_set(&env.root.pins, Some(25567), &huge).unwrap();
    let with_policy = measure_xdp(&guard, &seg, XDP_PASS, opts, "guard, established segment");
    let udp = Pkt::udp((player, 40001), (ctr, 25566)).macs(PEER, CTR0).build();
    let udp_ns = measure_xdp(&guard, &udp, XDP_PASS, opts, "guard, udp admitted");
    let syn_ns = measure_xdp(&guard, &syn_to(player, (ctr, 25567)), XDP_PASS, opts, "guard, syn admitted");
    // The same player's UDP flow once the container has answered it.
    let snat = prog_fd(&env.root, "snat");
    assert_eq!(test_run(&dnat, &udp, hit.ifindex, 1).verdict, TC_ACT_REDIRECT, "dnat records the UDP flow");
    let answer = Pkt::udp((ctr, 25566), (player, 40001)).macs(CTR0, env.v0.1).build();
    assert_eq!(test_run(&snat, &answer, env.v0.0, 1).verdict, TC_ACT_REDIRECT, "snat takes the answer");
    let established = measure_xdp(&guard, &udp, XDP_PASS, opts, "guard, udp of an answered flow");
    let stats_before = datapath::ops::stats(&env.root.pins).unwrap();
    xdp_run(&guard, &udp, 1);
    let stats_after = datapath::ops::stats(&env.root.pins).unwrap();
    let moved: Vec<_> = stats_after.iter().zip(&stats_before).filter(|(a, b)| a.packets != b.packets).map(|(a, _)| a.reason.clone()).collect();
    assert_eq!(moved, ["established"], "the answered flow's datagram takes the established path");
    let denied = syn_to(ip("198.18.7.9"), (ctr, 25565));
    let denied_ns = measure_xdp(&guard, &denied, XDP_DROP, opts, "guard, denied");
    let bot = syn_to(ip("203.0.113.66"), (ctr, 25565));
    for _ in 0..30 {
        xdp_run(&guard, &bot, 1);
    }
    let blocked_ns = measure_xdp(&guard, &bot, XDP_DROP, opts, "guard, blocked");
    let count = if opts.short { 2_000 } else { 100_000 };
    let forged: Vec<Vec<u8>> =
        (0..count).map(|i| syn_to(Ipv4Addr::from(0x6440_0000u32 + i as u32), (ctr, 25565))).collect();
    let new_src = measure_xdp_each(&guard, &forged);
    let non_ip = arp(1, CTR0, ctr, [0; 6], ip("10.0.0.1"), [0xff; 6]);
    let floor = measure_xdp_each(&guard, &vec![non_ip; count]);

    let (runs, repeat) = if opts.short { (3, 20_000) } else { (5, 1_000_000) };
    let mut s = format!(
        "### Guard\n\nPer packet: BPF_PROG_TEST_RUN of the XDP program, median of {runs} runs of {repeat} repeats (the guard never changes a frame, so every frame is a fixed point); the policy rows have 1,000 IPv4 and 1,000 IPv6 deny prefixes and global limits in place. The dnat hit is measured in the same run on the same player's segment.\n\n| path | ns/packet | note |\n|---|---:|---|\n"
    );
    s.push_str(&format!("| dnat hit (TC, for comparison) | {dnat_hit:.1} | |\n"));
    s.push_str(&format!("| snat hit (TC) of that flow | {snat_hit:.1} | marks the flow answered and verifies the player, once |\n"));
    s.push_str(&format!("| XDP floor: a program that only returns XDP_PASS | {xdp_floor:.1} | what BPF_PROG_TEST_RUN adds to any XDP program |\n"));
    s.push_str(&format!("| guard: player's segment, no policy | {bare:.1} | passed; {:.1} above the floor |\n", bare - xdp_floor));
    s.push_str(&format!(
        "| guard: player's segment, with the policy | {with_policy:.1} | **{:.1} ns added to the dnat hit path ({:.0}% of it), {:.1} above the XDP floor** |\n",
        with_policy,
        with_policy / dnat_hit * 100.0,
        with_policy - xdp_floor
    ));
    s.push_str(&format!(
        "| guard: player's UDP datagram of a flow the container answered, with the policy | {established:.1} | **{:.1} ns added to the dnat hit path, {:.1} above the XDP floor**: never limited |\n",
        established,
        established - xdp_floor
    ));
    s.push_str(&format!("| guard: UDP datagram taking a token | {udp_ns:.1} | admitted |\n"));
    s.push_str(&format!("| guard: SYN taking a token | {syn_ns:.1} | admitted |\n"));
    s.push_str(&format!("| guard: denied source | {denied_ns:.1} | dropped: {:.1} M packets/s per core |\n", 1e3 / denied_ns));
    s.push_str(&format!("| guard: blocked source | {blocked_ns:.1} | dropped: {:.1} M packets/s per core |\n", 1e3 / blocked_ns));
    s.push_str(&format!(
        "| guard: SYN from a new forged source (one run per call) | {new_src:.1} | makes its state; {count} sources |\n"
    ));
    s.push_str(&format!("| timer floor: guard passes an ARP frame (one run per call) | {floor:.1} | what one run per call adds |\n\n"));
    eprint!("{s}");
    s
}

/// Verified and unverified bots blocked, then a flood of forged sources
/// four times the size of guard_src4: how many of each are still blocked.
fn guard_eviction(per_source: u32) -> (usize, usize, usize) {
    use datapath::maps::guard::LimitChange;
    let env = prog_env();
    let _in_ns = NetnsGuard::enter(Some(&env.ns.name)).unwrap();
    let guard = prog_fd(&env.root, "guard");
    let snat = prog_fd(&env.root, "snat");
    let ctr = ip("10.0.0.2");
    datapath::ops::guard::limit_set(&env.root.pins, None, &LimitChange { syn_rate: Some(1), syn_burst: Some(1), block_for: Some(3600), ..Default::default() }).unwrap();
    const BOTS: u32 = 200;
    let bot = |v: bool, i: u32| Ipv4Addr::new(100, if v { 64 } else { 65 }, (i >> 8) as u8, i as u8);
    let dnat = prog_fd(&env.root, "dnat");
    for i in 0..BOTS {
        // The bot's connection through dnat, the container's ACK back.
        assert_eq!(test_run(&dnat, &syn_to(bot(true, i), (ctr, 25565)), 0, 1).verdict, TC_ACT_REDIRECT);
        let r = Pkt::tcp((ctr, 25565), (bot(true, i), 40000)).macs(CTR0, env.v0.1).build();
        assert_eq!(test_run(&snat, &r, env.v0.0, 1).verdict, TC_ACT_REDIRECT);
    }
    for v in [true, false] {
        for i in 0..BOTS {
            let f = syn_to(bot(v, i), (ctr, 25565));
            xdp_run(&guard, &f, 1);
            xdp_run(&guard, &f, 1);
        }
    }
    let n = 4 * datapath::abi::capacity::GUARD_SOURCES;
    let mut f = syn_to(ip("100.128.0.0"), (ctr, 25565));
    for i in 0..n {
        f[26..30].copy_from_slice(&(0x6480_0000u32 + i).to_be_bytes());
        for _ in 0..per_source {
            xdp_run(&guard, &f, 1);
        }
    }
    let blocked = |v: bool| (0..BOTS).filter(|&i| xdp_run(&guard, &syn_to(bot(v, i), (ctr, 25565)), 1).verdict == XDP_DROP).count();
    (blocked(true), blocked(false), BOTS as usize)
}

/// CPU time of the whole machine from /proc/stat, in jiffies: busy (user,
/// nice, system, irq, softirq, steal) and softirq alone. Without
/// IRQ_TIME_ACCOUNTING the tick charges softirq time to the softirq
/// column, so that is where the receive path (XDP, TC, netfilter, the
/// container's TCP) shows, wherever it ran.
fn cpu_busy() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let f: Vec<u64> = stat.lines().next().unwrap().split_whitespace().skip(1).map(|x| x.parse().unwrap()).collect();
    // user nice system idle iowait irq softirq steal
    (f[0] + f[1] + f[2] + f[5] + f[6] + f[7], f[6])
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Policy {
    None,
    Guard,
    Hashlimit,
    Meter,
}

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Policy::None => "no limit (guard attached, passes everything)",
            Policy::Guard => "guard: --syn-rate 10 --syn-burst 10 (XDP)",
            Policy::Hashlimit => "iptables hashlimit, same policy (raw PREROUTING)",
            Policy::Meter => "nftables meter, same policy (prerouting, priority raw)",
        }
    }
}

fn set_policy(t: &Topo, p: Policy, on: bool) {
    let root = t.root.as_deref().unwrap();
    match (p, on) {
        (Policy::None, _) => {}
        (Policy::Guard, true) => ctl(root, &["guard", "limit", "set", "--syn-rate", "10", "--syn-burst", "10"]),
        (Policy::Guard, false) => ctl(root, &["guard", "limit", "clear"]),
        // Published packets meet netfilter first in the container's
        // namespace (dnat hands them straight to it): the rules go there,
        // in tables of their own.
        (Policy::Hashlimit, true) => nsexec(&t.ctr, "iptables -t raw -A PREROUTING -p tcp --syn --dport 25565 -m hashlimit --hashlimit-above 10/sec --hashlimit-burst 10 --hashlimit-mode srcip --hashlimit-name dpbench -j DROP"),
        (Policy::Hashlimit, false) => nsexec(&t.ctr, "iptables -t raw -D PREROUTING -p tcp --syn --dport 25565 -m hashlimit --hashlimit-above 10/sec --hashlimit-burst 10 --hashlimit-mode srcip --hashlimit-name dpbench -j DROP"),
        (Policy::Meter, true) => nsexec(&t.ctr, "nft 'add table ip dpbench; add chain ip dpbench pre { type filter hook prerouting priority raw; policy accept; }; add rule ip dpbench pre tcp dport 25565 tcp flags & (syn | ack) == syn meter dpsyn size 65536 { ip saddr limit rate over 10/second burst 10 packets } drop'"),
        (Policy::Meter, false) => nsexec(&t.ctr, "nft delete table ip dpbench"),
    }
}

/// A bot SYN flood at a fixed rate from 64 sources against one
/// published port, under each policy: machine CPU busy while it runs.
fn guard_flood(opts: &Opts) -> String {
    use common::flood::{Flood, FloodClass, FloodLink};
    let (rate, secs, runs) = if opts.short { (20_000u64, 1.0, 1) } else { (100_000u64, 3.0, 5) };
    let t = topo(Setup::Datapath);
    // A listener that never accepts: the SYNs that pass fill its queues
    // and are answered with SYN cookies, as on a flooded server.
    let _l = in_ns(&t.ctr.name, || TcpListener::bind("0.0.0.0:25565").unwrap()).join().unwrap();
    let link = FloodLink {
        ns: t.player.name.clone(),
        ifname: "p0".into(),
        src_mac: t.player.iface("p0").1,
        dst_mac: t._host.as_ref().unwrap().iface("ext0").1,
    };
    let class = FloodClass {
        src_base: ip("203.0.113.0"),
        src_span: 64,
        dst: ip("10.98.0.1"),
        dport: 30001,
        syn: true,
        payload: Vec::new(),
    };
    let hz = 100.0; // USER_HZ
    let policies = [Policy::None, Policy::Guard, Policy::Hashlimit, Policy::Meter];
    // Runs go round the policies, each round with an idle measurement of
    // its own, so that other load on the machine hits every row alike.
    // Per policy: offered rate, busy cores, softirq cores, passed on.
    let mut per: Vec<[Vec<f64>; 4]> = policies.iter().map(|_| Default::default()).collect();
    let (mut idle_busy, mut idle_soft) = (Vec::new(), Vec::new());
    let window = |secs: f64| {
        let (b0, s0) = cpu_busy();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(secs));
        let (b1, s1) = cpu_busy();
        let el = t0.elapsed().as_secs_f64();
        ((b1 - b0) as f64 / hz / el, (s1 - s0) as f64 / hz / el, el)
    };
    for _ in 0..runs {
        let (b, sft, _) = window(secs);
        idle_busy.push(b);
        idle_soft.push(sft);
        for (i, &p) in policies.iter().enumerate() {
            set_policy(&t, p, true);
            let flood = Flood::start(&link, vec![class.clone()], 1, Some(rate));
            std::thread::sleep(Duration::from_millis(500));
            let (s0, red0) = (flood.sent()[0], dnat_redirects(&t));
            let (b, sft, el) = window(secs);
            let (s1, red1) = (flood.sent()[0], dnat_redirects(&t));
            drop(flood);
            set_policy(&t, p, false);
            per[i][0].push((s1 - s0) as f64 / el);
            per[i][1].push(b);
            per[i][2].push(sft);
            per[i][3].push((red1 - red0) as f64 / el);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let (idle, idle_sirq) = (median(idle_busy), median(idle_soft));
    let mut rows = Vec::new();
    for (i, &p) in policies.iter().enumerate() {
        let m = |k: usize| median(per[i][k].clone());
        let row = (p, m(0), m(1), m(2), m(3));
        eprintln!("  {:<52} {:>9.0} SYN/s offered, {:.2} cores busy, {:.2} in softirq, {:>8.0}/s past the guard", p.name(), row.1, row.2, row.3, row.4);
        rows.push(row);
    }
    let mut s = format!(
        "Flood: SYNs from 64 sources (a bot flood from real addresses, each far over its limit) at {rate} per second against one published port, by the raw-socket generator in the player's namespace on this same machine; median of {runs} run(s) of {secs} s. CPU is the whole machine's, from /proc/stat, in cores: busy (user, system, irq, softirq), generator included, and softirq alone, which is where receiving the packets is charged (XDP, TC, netfilter, the container's TCP); rounds go through every policy in turn, and without a flood the machine was busy {idle:.2} cores, {idle_sirq:.2} in softirq (median of the rounds; the machine is shared, so only the differences between rows mean something). The policy is 10 SYNs per second and source, burst 10, in each row that has one; iptables and nftables rules are in the container's namespace, the first netfilter hook a published packet meets (dnat hands it straight there).\n\n\
         | policy | SYN/s offered | CPU busy (cores) | softirq (cores) | softirq vs guard | passed on by XDP (/s) |\n|---|---:|---:|---:|---:|---:|\n"
    );
    let guard_sirq = rows.iter().find(|r| r.0 == Policy::Guard).unwrap().3;
    for (p, sent, cpu, sirq, passed) in &rows {
        s.push_str(&format!(
            "| {} | {sent:.0} | {cpu:.2} | {sirq:.2} | {:.1}x | {passed:.0} |\n",
            p.name(),
            sirq / guard_sirq.max(0.005)
        ));
    }
    s.push('\n');
    s
}

fn dnat_redirects(t: &Topo) -> u64 {
    let out = Command::new(env!("CARGO_BIN_EXE_datapathctl"))
        .args(["stats", "--json"])
        .env("DATAPATH_PIN_ROOT", t.root.as_deref().unwrap())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|r| r["program"] == "dnat" && r["reason"] == "redirect")
        .and_then(|r| r["packets"].as_u64())
        .unwrap()
}

fn guard_bench(opts: &Opts) -> String {
    eprintln!("bench: guard");
    let mut s = guard_per_packet(opts);
    let one = guard_eviction(1);
    let two = guard_eviction(2);
    let cap = datapath::abi::capacity::GUARD_SOURCES;
    s.push_str(&format!(
        "Per-source state under a spoofed flood: {} verified and {} unverified bots blocked, then SYNs from {} forged sources (four times guard_src4). Still blocked afterwards:\n\n| flood | verified bots | unverified bots |\n|---|---:|---:|\n| one SYN per forged source | {}/{} | {}/{} |\n| two SYNs per forged source | {}/{} | {}/{} |\n\n",
        one.2, one.2, 4 * cap, one.0, one.2, one.1, one.2, two.0, two.2, two.1, two.2
    ));
    eprintln!("  eviction: one SYN each {one:?}, two SYNs each {two:?}");
    s.push_str(&guard_flood(opts));
    eprint!("{s}");
    s
}

// ---------------------------------------------------------------------
// 4. Control plane

fn time_cmd(root: &str, args: &[&str], stdin: Option<&str>) -> f64 {
    let start = Instant::now();
    let mut c = Command::new(env!("CARGO_BIN_EXE_datapathctl"));
    c.args(args).env("DATAPATH_PIN_ROOT", root).stdout(Stdio::null());
    let ok = if let Some(input) = stdin {
        let mut child = c.stdin(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait().unwrap().success()
    } else {
        c.status().unwrap().success()
    };
    assert!(ok, "datapathctl {} failed", args.join(" "));
    start.elapsed().as_secs_f64() * 1e3
}

fn ctl_bench(opts: &Opts) -> String {
    eprintln!("bench: control plane (whole datapathctl processes)");
    let ns = TestNs::new();
    ns.ip("link add hv0 type veth peer name eth0");
    ns.ip("addr add 10.99.0.1/32 dev hv0");
    let n = ns.name.clone();
    let (adds, loads, batches) = if opts.short { (20, 3, 1) } else { (500, 20, 5) };

    let fresh = |root: &str| time_cmd(root, &["load"], None);
    let mut first = Vec::new();
    let mut upgrade = Vec::new();
    let mut add = Vec::new();
    let mut batch = Vec::new();
    let root = format!("/sys/fs/bpf/{}", unique("dpb"));
    first.push(fresh(&root));
    for i in 0..adds {
        let port = (20000 + i).to_string();
        let ctr = format!("10.{}.{}.2", (i >> 8) & 255, i & 255);
        add.push(time_cmd(&root, &["-n", &n, "map", "dnat", "add", &port, &ctr, "hv0", "02:00:00:00:00:02"], None));
    }
    for _ in 0..loads {
        upgrade.push(time_cmd(&root, &["load"], None));
    }
    time_cmd(&root, &["unload"], None);
    let lines: String = (0..10_000u32)
        .map(|i| format!("{} 10.{}.{}.3 hv0 02:00:00:00:00:03\n", 30000 + i, (i >> 8) & 255, i & 255))
        .collect();
    for _ in 0..batches {
        let r = format!("/sys/fs/bpf/{}", unique("dpb"));
        first.push(fresh(&r));
        batch.push(time_cmd(&r, &["-n", &n, "map", "dnat", "add", "--from-file", "-"], Some(&lines)));
        time_cmd(&r, &["unload"], None);
    }
    let s = format!(
        "### Control plane\n\nWhole `datapathctl` processes (release build), wall time, median.\n\n\
         | what | median (ms) | runs | target |\n|---|---:|---:|---:|\n\
         | `map dnat add` (one mapping, `-n NETNS`) | {:.2} | {adds} | ≤ 3 |\n\
         | `map dnat add --from-file -` (10,000 mappings) | {:.1} | {batches} | ≤ 500 |\n\
         | `load`, first (creates and pins everything) | {:.1} | {} | ≤ 300 |\n\
         | `load` on a running system (replace in place) | {:.1} | {loads} | ≤ 300 |\n\n",
        median(add),
        median(batch),
        median(first.clone()),
        first.len(),
        median(upgrade),
    );
    eprint!("{s}");
    s
}

// ---------------------------------------------------------------------
// 3b. Attachments at scale

/// Runs `ip -n <ns> -batch -` on `lines`.
fn ip_batch(ns: &str, lines: &str) {
    let mut child = Command::new("ip").args(["-n", ns, "-batch", "-"]).stdin(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "ip -batch failed");
}

/// Milliseconds of one call.
fn ms<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let start = Instant::now();
    let r = f();
    (start.elapsed().as_secs_f64() * 1e3, r)
}

/// With N containers attached (host veths in one namespace, their peers
/// spread over four container namespaces): per-container `attach host` and
/// `detach host` as whole processes and as library calls, and `load` and
/// `unload` of everything.
fn scale_bench(opts: &Opts) -> String {
    let sizes: &[usize] = if opts.short { &[10, 200] } else { &[10, 1_000, 10_000] };
    const SPARE: usize = 20;
    let mut rows = String::new();
    for &n in sizes {
        eprintln!("bench: {n} attached containers");
        let host = TestNs::new();
        let ctrs: Vec<TestNs> = (0..4).map(|_| TestNs::new()).collect();
        let mut lines = String::new();
        for i in 0..n + SPARE {
            lines.push_str(&format!("link add sv{i} type veth peer name eth{i} netns {}\nlink set sv{i} up\n", ctrs[i % 4].name));
        }
        let (create, ()) = ms(|| ip_batch(&host.name, &lines));
        let root = format!("/sys/fs/bpf/{}", unique("dpbs"));
        let pins = datapath::kernel::pins::PinRoot::new(&root);
        ops::load(&pins, LoadOptions::default()).unwrap();
        let h = Some(host.name.as_str());
        let (fill, ()) = ms(|| {
            for i in 0..n {
                ops::attach_tc(&pins, h, datapath::kernel::attach::Kind::Host, &format!("sv{i}")).unwrap();
            }
        });
        let (mut attach_p, mut detach_p, mut attach_l, mut detach_l) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for j in 0..SPARE {
            let v = format!("sv{}", n + j);
            attach_p.push(time_cmd(&root, &["-n", &host.name, "attach", "host", &v], None));
            detach_p.push(time_cmd(&root, &["-n", &host.name, "detach", "host", &v], None));
            attach_l.push(ms(|| ops::attach_tc(&pins, h, datapath::kernel::attach::Kind::Host, &v).unwrap()).0);
            detach_l.push(ms(|| ops::detach_tc(&pins, h, datapath::kernel::attach::Kind::Host, &v).unwrap()).0);
        }
        let loads: Vec<f64> = (0..3).map(|_| time_cmd(&root, &["load"], None)).collect();
        let unload = time_cmd(&root, &["unload"], None);
        eprintln!(
            "bench: {n}: veths made in {create:.0} ms, attached in {fill:.0} ms; load {:.0} ms, unload {unload:.0} ms",
            median(loads.clone())
        );
        rows.push_str(&format!(
            "| {n} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {unload:.0} |\n",
            median(attach_p),
            median(detach_p),
            median(attach_l),
            median(detach_l),
            median(loads),
        ));
        drop(ctrs);
        drop(host);
    }
    let s = format!(
        "### Attachments at scale\n\nN containers attached (`attach host`: each host veth's clsact qdisc bound to the pin root's shared filter blocks; host veths in one \
         namespace, their peers spread over four). Per container: `attach host` and `detach host` of one more, \
         median of {SPARE}, as whole `datapathctl` processes and as the library call alone (what `container \
         add` pays inside one process); `load` (median of 3) and `unload` with all N attached. Targets: attach \
         and detach ≤ 3 ms at every size, `load` ≤ 1.5 s and `unload` ≤ 3 s at 10,000.\n\n\
         | containers | attach (ms) | detach (ms) | attach, library (ms) | detach, library (ms) | `load` (ms) | \
         `unload` (ms) |\n|---:|---:|---:|---:|---:|---:|---:|\n{rows}\n"
    );
    eprint!("{s}");
    s
}

// ---------------------------------------------------------------------
// 5. Containers: one command, and podman with datapath-cni against the
//    stock bridge + portmap plugins

/// Unloads a pin root on drop.
struct Unload(String);

impl Drop for Unload {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_datapathctl")).arg("unload").env("DATAPATH_PIN_ROOT", &self.0).status();
    }
}

/// Runs a CNI plugin as a runtime does (environment and configuration on
/// stdin), from a thread in network namespace `host`: the wall time of the
/// process in ms and what it printed.
fn cni_exec(host: &str, plugin: &str, command: &str, id: &str, netns: &str, conf: &serde_json::Value) -> (f64, serde_json::Value) {
    let (plugin, command, id, netns, conf) =
        (plugin.to_string(), command.to_string(), id.to_string(), format!("/run/netns/{netns}"), conf.to_string());
    in_ns(host, move || {
        let start = Instant::now();
        let mut child = Command::new(&plugin)
            .env("CNI_COMMAND", &command)
            .env("CNI_CONTAINERID", &id)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", common::podman::CNI_PLUGINS)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {plugin}: {e}"));
        child.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{plugin} {command} failed: {text} {}", String::from_utf8_lossy(&out.stderr));
        (ms, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    })
    .join()
    .unwrap()
}

/// Median ms of one ADD and one DEL of a container with one published
/// port, `runs` times, each in a fresh namespace: datapath-cni alone, and
/// bridge then portmap chained as libcni chains them (each plugin gets the
/// previous one's result).
fn cni_times(host: &str, p: &common::podman::Podman, dp: &str, br: &str, pin_root: &str, runs: usize) -> [(f64, f64); 2] {
    let ports = serde_json::json!({"portMappings": [{"hostPort": 30002, "containerPort": 25565, "protocol": "tcp"}]});
    let ours = format!("{}/cni-bin/datapath-cni", p.path().display());
    let plugin = |t: &str| format!("{}/{t}", common::podman::CNI_PLUGINS);
    let dp_conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": dp, "type": "datapath-cni", "pinRoot": pin_root,
        "capabilities": {"portMappings": true}, "ipam": p.ipam("10.68.0.0/24"), "runtimeConfig": ports,
    });
    let mut ipam = p.ipam("10.69.0.0/24");
    ipam["routes"] = serde_json::json!([{"dst": "0.0.0.0/0"}]);
    let bridge = serde_json::json!({
        "cniVersion": "1.0.0", "name": br, "type": "bridge", "bridge": "dpbench0", "isGateway": true,
        "ipMasq": true, "hairpinMode": true, "ipam": ipam,
    });
    let portmap = serde_json::json!({
        "cniVersion": "1.0.0", "name": br, "type": "portmap", "capabilities": {"portMappings": true}, "runtimeConfig": ports,
    });
    let (mut dp_add, mut dp_del, mut br_add, mut br_del) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // One of each first: the bridge device and the chains are made once.
    for i in 0..runs + 1 {
        let ns = TestNs::new();
        let id = format!("bench{i}");
        let (a, res) = cni_exec(host, &ours, "ADD", &id, &ns.name, &dp_conf);
        let mut del = dp_conf.clone();
        del["prevResult"] = res;
        let (d, _) = cni_exec(host, &ours, "DEL", &id, &ns.name, &del);

        let (a1, r1) = cni_exec(host, &plugin("bridge"), "ADD", &id, &ns.name, &bridge);
        let mut pm = portmap.clone();
        pm["prevResult"] = r1.clone();
        let (a2, r2) = cni_exec(host, &plugin("portmap"), "ADD", &id, &ns.name, &pm);
        pm["prevResult"] = r2;
        let (d2, _) = cni_exec(host, &plugin("portmap"), "DEL", &id, &ns.name, &pm);
        let mut bd = bridge.clone();
        bd["prevResult"] = r1;
        let (d1, _) = cni_exec(host, &plugin("bridge"), "DEL", &id, &ns.name, &bd);
        if i > 0 {
            dp_add.push(a);
            dp_del.push(d);
            br_add.push(a1 + a2);
            br_del.push(d1 + d2);
        }
    }
    [(median(dp_add), median(dp_del)), (median(br_add), median(br_del))]
}

/// Removes the chains the portmap plugin leaves in `host`'s nat table
/// (CNI-HOSTPORT-*) and the rules that jump to them; returns how many
/// chains it removed.
fn remove_hostport_chains(host: &TestNs) -> usize {
    let save = |ns: &TestNs| {
        let o = Command::new("nsenter").arg(format!("--net=/run/netns/{}", ns.name)).args(["iptables", "-t", "nat", "-S"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let rules = save(host);
    for r in rules.lines().filter(|l| l.starts_with("-A ") && l.contains("-j CNI-HOSTPORT-")) {
        nsexec(host, &format!("iptables -t nat {}", r.replacen("-A ", "-D ", 1)));
    }
    let chains: Vec<String> = rules
        .lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .filter(|c| c.starts_with("CNI-HOSTPORT-"))
        .map(str::to_string)
        .collect();
    for c in &chains {
        nsexec(host, &format!("iptables -t nat -F {c}"));
    }
    for c in &chains {
        nsexec(host, &format!("iptables -t nat -X {c}"));
    }
    assert!(!save(host).contains("CNI-HOSTPORT-"), "portmap's chains are gone");
    chains.len()
}

/// `container add` and `container del` as whole processes, each
/// container in a namespace of its own made beforehand; the adds
/// accumulate, so the last runs with `n` containers there. Median ms.
fn container_times(n: usize) -> (f64, f64) {
    let host = TestNs::new();
    let spaces: Vec<TestNs> = (0..n).map(|_| TestNs::new()).collect();
    let r = format!("/sys/fs/bpf/{}", unique("dpb"));
    let _unload = Unload(r.clone());
    time_cmd(&r, &["load"], None);
    let (mut add, mut del) = (Vec::new(), Vec::new());
    for (i, ns) in spaces.iter().enumerate() {
        let (name, ip, port) = (format!("c{i}"), format!("10.200.{}.{}", i / 200, i % 200 + 2), format!("{}:25565", 31000 + i));
        add.push(time_cmd(&r, &["-n", &host.name, "container", "add", &name, "--netns", &ns.name, "--ip", &ip, "--publish", &port], None));
    }
    for i in 0..n {
        del.push(time_cmd(&r, &["container", "del", &format!("c{i}")], None));
    }
    (median(add), median(del))
}

fn containers_bench(opts: &Opts) -> String {
    eprintln!("bench: containers (container add/del, datapath-cni against bridge + portmap)");
    let (secs, runs, cni_runs, n) = if opts.short { (0.3, 1, 3, 5) } else { (3.0, 3, 30, 100) };
    let (cadd, cdel) = container_times(n);
    eprintln!("  container add {cadd:.1} ms, container del {cdel:.1} ms");
    let player = TestNs::new();
    let host = TestNs::new();
    host.ip(&format!("link add ext0 type veth peer name p0 netns {}", player.name));
    host.ip("addr add 10.98.0.1/24 dev ext0");
    host.ip("link set ext0 up");
    player.ip("addr add 10.98.0.2/24 dev p0");
    player.ip("link set p0 up");
    let root = format!("/sys/fs/bpf/{}", unique("dpb"));
    let cg = Cgroup::new();
    let _unload = Unload(root.clone());
    ctl(&root, &["-n", &host.name, "setup", "--external", "ext0", "--proxy-cgroup", cg.path(), "--no-host-access"]);
    let p = common::podman::Podman::new(&host.name);
    let dp = p.datapath_network(std::path::Path::new(&root), "10.68.0.0/24");
    let br = p.bridge_network("dpbench0", "10.69.0.0/24");

    let mut rows = Vec::new();
    for (label, net) in [("podman + datapath-cni", &dp), ("podman + bridge + portmap (iptables)", &br)] {
        let name = unique("bench");
        p.run_container(&name, net, &["30001:25565"], &[], &[], &["/usr/bin/sleep", "infinity"]);
        // The benchmark's server runs in the container's namespace, as the
        // one in the end-to-end section does in its container's.
        let e = Ends { player: player.name.clone(), ctr: p.netns_of(&name), target: "10.98.0.1:30001".parse().unwrap() };
        let r = median((0..runs).map(|_| rr(&e, secs)).collect());
        let c = median((0..runs).map(|_| crr(&e, secs)).collect());
        eprintln!("  {label:<40} rr {r:>9.0}/s  crr {c:>7.0}/s");
        p.run(&["rm", "-f", "-t", "0", &name]);
        rows.push((label, r, c));
    }
    let [(dp_add, dp_del), (br_add, br_del)] = cni_times(&host.name, &p, &dp, &br, &root, cni_runs);
    drop(p);
    let chains = remove_hostport_chains(&host);
    let (d, b) = (&rows[0], &rows[1]);
    let mut s = format!(
        "### Containers\n\n\
         Whole `datapathctl` processes (release build), wall time, median of {n}; each container in a network \
         namespace of its own, the adds accumulating (the last with {n} containers there).\n\n\
         | what | median (ms) | runs | target |\n|---|---:|---:|---:|\n\
         | `container add` (veth pair, addresses, routes, attach, register, one port) | {cadd:.1} | {n} | — |\n\
         | `container del` (everything `add` made) | {cdel:.1} | {n} | — |\n\n\
         podman 4 (CNI backend) in a host namespace, `podman run --network <net> -p 30001:25565` of a container \
         whose namespace the benchmark's server runs in; the player namespace connects to the host's external \
         address. The end-to-end section's measurements (median of {runs} run(s) of {secs} s). The comparison is podman's \
         stock network: the bridge plugin (gateway, masquerade) and the portmap plugin (iptables DNAT).\n\n\
         | set-up | request/response (/s) | new connections (/s) |\n|---|---:|---:|\n"
    );
    for (label, r, c) in &rows {
        s.push_str(&format!("| {label} | {r:.0} | {c:.0} |\n"));
    }
    s.push_str(&format!("| datapath-cni / bridge + portmap | {:.2}x | {:.2}x |\n\n", d.1 / b.1, d.2 / b.2));
    s.push_str(&format!(
        "One CNI call with one published port, the plugin run as a runtime runs it (environment, configuration on \
         stdin), wall time, median of {cni_runs}; bridge + portmap is the two plugins chained, as libcni runs them. \
         ADD includes the IPAM plugin (host-local) both ways.\n\n\
         | CNI call | datapath-cni (ms) | bridge + portmap (ms) | target |\n|---|---:|---:|---:|\n\
         | ADD | {dp_add:.1} | {br_add:.1} | ≤ 30 |\n| DEL | {dp_del:.1} | {br_del:.1} | ≤ 30 |\n\n\
         (The portmap plugin left {chains} CNI-HOSTPORT-* chain(s) in the host namespace's nat table after its \
         last container; the benchmark removes them.)\n\n"
    ));
    eprint!("{s}");
    s
}

// ---------------------------------------------------------------------
// Trace and metrics

/// A program of this build with the trace compiled out (-DDP_NO_TRACE,
/// built beside the skeletons), loaded on the pin root's maps.
fn notrace_prog(env: &ProgEnv, object: &str, prog: &str) -> (libbpf_rs::Object, std::os::fd::OwnedFd) {
    use std::os::fd::AsFd;
    let path = format!("{}/{object}.notrace.bpf.o", env!("OUT_DIR"));
    let mut open = libbpf_rs::ObjectBuilder::default().open_file(&path).expect("notrace object");
    for mut m in open.maps_mut() {
        let pin = env.root.pins.map(&m.name().to_string_lossy());
        if pin.exists() {
            m.reuse_pinned_map(&pin).expect("reusing a pinned map");
        }
    }
    let obj = open.load().expect("loading the notrace object");
    let fd = obj
        .progs()
        .find(|p| p.name() == prog)
        .map(|p| p.as_fd().try_clone_to_owned().unwrap())
        .expect("program in the notrace object");
    (obj, fd)
}

fn set_trace(env: &ProgEnv, cfg: &types::trace_config) {
    let m = datapath::maps::open(&env.root.pins, "trace_cfg").unwrap();
    m.update(bytes_of(&0u32), bytes_of(cfg), MapFlags::ANY).unwrap();
}

fn trace_bench(opts: &Opts) -> String {
    eprintln!("bench: trace cost per packet");
    let env = prog_env();
    let _in_ns = NetnsGuard::enter(Some(&env.ns.name)).unwrap();
    let all = paths(&env);
    let chosen: Vec<&Path> = all.iter().filter(|p| ["dnat hit", "dnat miss", "snat hit", "tproxy egress restore"].contains(&p.name)).collect();
    let objects = |prog: &str| match prog {
        "dnat" => "dnat",
        "snat" => "snat",
        _ => "tproxy",
    };
    let notrace: Vec<(libbpf_rs::Object, std::os::fd::OwnedFd)> = chosen.iter().map(|p| notrace_prog(&env, objects(p.prog), p.prog)).collect();
    let traced: Vec<std::os::fd::OwnedFd> = chosen.iter().map(|p| prog_fd(&env.root, p.prog)).collect();
    // Off: compiled out and switched off, interleaved over three rounds.
    let rounds = if opts.short { 1 } else { 3 };
    let mut out_ns = vec![Vec::new(); chosen.len()];
    let mut off_ns = vec![Vec::new(); chosen.len()];
    for _ in 0..rounds {
        for (i, p) in chosen.iter().enumerate() {
            out_ns[i].push(measure_fd(&notrace[i].1, p, opts));
            off_ns[i].push(measure_fd(&traced[i], p, opts));
        }
    }
    // A trace with a filter nothing matches (port 1).
    let mut cfg = types::trace_config { on: 1, port: 1u16.to_be(), reasons: [u64::MAX; 4], ..Default::default() };
    set_trace(&env, &cfg);
    let nomatch: Vec<f64> = chosen.iter().enumerate().map(|(i, p)| measure_fd(&traced[i], p, opts)).collect();
    // A trace matching everything, its ring drained by a reader thread.
    cfg.port = 0;
    set_trace(&env, &cfg);
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let (stop, got) = (stop.clone(), got.clone());
        let pin = env.root.pins.map("trace_events");
        std::thread::spawn(move || {
            let map = libbpf_rs::MapHandle::from_pinned_path(&pin).unwrap();
            let mut b = libbpf_rs::RingBufferBuilder::new();
            b.add(&map, |_d: &[u8]| {
                got.fetch_add(1, Ordering::Relaxed);
                0
            })
            .unwrap();
            let rb = b.build().unwrap();
            while !stop.load(Ordering::Relaxed) {
                let _ = rb.poll(Duration::from_millis(50));
            }
        })
    };
    let lost_map = datapath::maps::open(&env.root.pins, "trace_lost").unwrap();
    let lost0 = datapath::ops::trace::lost(&lost_map).unwrap();
    let every: Vec<f64> = chosen.iter().enumerate().map(|(i, p)| measure_fd(&traced[i], p, opts)).collect();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let lost = datapath::ops::trace::lost(&lost_map).unwrap() - lost0;
    let read = got.load(Ordering::Relaxed);
    set_trace(&env, &types::trace_config::default());

    let (runs, repeat) = if opts.short { (3, 20_000) } else { (5, 1_000_000) };
    let mut s = format!(
        "### Trace\n\nBPF_PROG_TEST_RUN, median of {runs} runs of {repeat} repeats on the fixed-point fixtures of \
         the per-packet table, in one run. \"compiled out\": the same programs built with -DDP_NO_TRACE (no trace \
         code at all), loaded on the same maps; \"no trace\": this build, emission off; both interleaved over {rounds} \
         rounds, medians. \"filter matching nothing\": a trace running with --port 1. \"matching everything\": every \
         decision written to the ring buffer while a thread reads it ({read} events read, {lost} lost to a full ring: \
         the kernel side writes faster than one reader takes them).\n\n\
         | path | compiled out (ns) | no trace (ns) | difference (ns) | filter matching nothing (ns) | matching everything (ns) |\n\
         |---|---:|---:|---:|---:|---:|\n"
    );
    for (i, p) in chosen.iter().enumerate() {
        let (a, b) = (median(out_ns[i].clone()), median(off_ns[i].clone()));
        s.push_str(&format!("| {} | {a:.1} | {b:.1} | {:+.1} | {:.1} | {:.1} |\n", p.name, b - a, nomatch[i], every[i]));
    }
    drop(notrace);

    // metrics with 65,536 published ports: every mapping with its slot.
    let mappings = datapath::maps::open(&env.root.pins, "mappings").unwrap();
    let have = datapath::maps::count(&mappings) as u32;
    for i in 0..datapath::abi::capacity::PUBLISHED - have {
        let ext = Ipv4Addr::from(0x6440_0000 + i / 60000);
        let k = types::mapping_key::new(Some(ext), (i % 60000 + 1) as u16, Proto::Udp);
        let v = types::mapping_value::new(Ipv4Addr::from(0x0a10_0000 + i), 25565, CTR0, 999, i + 1);
        mappings.update(bytes_of(&k), bytes_of(&v), MapFlags::NO_EXIST).unwrap();
    }
    let n = datapath::maps::count(&mappings);
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..if opts.short { 1 } else { 5 } {
        let t0 = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_datapathctl"))
            .arg("metrics")
            .env("DATAPATH_PIN_ROOT", env.root.pins.root())
            .output()
            .unwrap();
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert!(out.status.success(), "metrics: {}", String::from_utf8_lossy(&out.stderr));
        size = out.stdout.len();
    }
    s.push_str(&format!(
        "\n`datapathctl metrics` with {n} published ports (a process, as Prometheus would get it through \
         --listen less the HTTP): median {:.0} ms of {} runs, {:.1} MB of exposition (target: 1 s).\n\n",
        median(times.clone()),
        times.len(),
        size as f64 / 1e6
    ));
    eprint!("{s}");
    s
}
