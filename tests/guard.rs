//! The guard (XDP) through BPF_PROG_TEST_RUN: deny lists (IPv4, IPv6,
//! longest prefix, expiry), token buckets (burst, refill, per port, block
//! and release), what is never limited (segments of connections,
//! unpublished ports), malformed frames, verified sources and what a
//! spoofed flood does to the per-source state. The guard's clock is
//! stopped and moved by the test (`guard_cfg.test_now`), so every refill
//! and expiry is exact. The guard never changes a frame: every fixture
//! checks the output is the input.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;

use common::packet::{self, Pkt};
use common::*;
use datapath::abi::Proto;
use datapath::maps::guard::{Cidr, Guard, LimitChange};
use datapath::net::netns::NetnsGuard;
use datapath::ops::{self, guard as g, DnatAdd};

const SEC: u64 = 1_000_000_000;
/// Where the stopped clock starts: far from 0, which means "running".
const T0: u64 = 1_000 * SEC;

fn ext_ip() -> Ipv4Addr {
    ip("198.51.100.1")
}

struct Env {
    root: TestRoot,
    ns: TestNs,
    guard: OwnedFd,
    dnat: OwnedFd,
    snat: OwnedFd,
    g: Guard,
    v0: u32,
}

/// A loaded pin root with TCP 30001 and UDP 30002 published to 10.0.0.2
/// behind host veth dpv0, and the guard's clock stopped at T0.
fn env() -> Env {
    let root = TestRoot::loaded();
    let ns = TestNs::new();
    ns.ip("link add dpv0 type veth peer name dpc0");
    ns.ip("addr add 10.0.0.1/32 dev dpv0");
    ns.ip("link set dpv0 up");
    ns.ip("link add dpext type veth peer name dpextp");
    ns.ip("link set dpext up");
    let n = Some(ns.name.as_str());
    ops::veth_add(&root.pins, n, "dpv0", ip("10.0.0.2")).unwrap();
    ops::snat_set(&root.pins, n, ext_ip(), "dpext").unwrap();
    for (port, proto, to) in [(30001, Proto::Tcp, 25565), (30002, Proto::Udp, 19132)] {
        let a = DnatAdd {
            ext: datapath::maps::Ext::Default,
            host_port: port,
            ctr_ip: ip("10.0.0.2").into(),
            veth: "dpv0".into(),
            ctr_mac: [0x02, 0xc0, 0, 0, 0, 2],
            proto,
            to_port: to,
        };
        ops::dnat_add(&root.pins, n, &a).unwrap();
    }
    let v0 = ns.iface("dpv0").0;
    let guard = prog_fd(&root, "guard");
    let (dnat, snat) = (prog_fd(&root, "dnat"), prog_fd(&root, "snat"));
    let gm = Guard::open(&root.pins).unwrap();
    gm.set_test_clock(Some(T0)).unwrap();
    Env { root, ns, guard, dnat, snat, g: gm, v0 }
}

impl Env {
    fn at(&self, t: u64) {
        self.g.set_test_clock(Some(t)).unwrap();
    }

    /// Runs the guard on a frame, checks it came out untouched, and
    /// returns the verdict and which counters moved.
    #[track_caller]
    fn run(&self, what: &str, frame: &[u8]) -> (i32, Vec<(String, u64)>) {
        let before = counters(&self.root);
        let out = xdp_run(&self.guard, frame, 1);
        let after = counters(&self.root);
        assert!(out.data == frame, "{what}: the guard changed the frame: {}", packet::first_diff(&out.data, frame));
        let moved = after
            .iter()
            .filter_map(|(k, a)| {
                let d = a - before.get(k).copied().unwrap_or(0);
                (d != 0).then(|| (k.clone(), d))
            })
            .collect();
        (out.verdict, moved)
    }

    /// Asserts the verdict and that exactly one counter moved by one.
    #[track_caller]
    fn expect(&self, what: &str, frame: &[u8], verdict: i32, counter: &str) {
        let (v, moved) = self.run(what, frame);
        let want = if verdict == XDP_DROP { "XDP_DROP" } else { "XDP_PASS" };
        assert_eq!(v, verdict, "{what}: verdict {v}, expected {want}; counters moved: {moved:?}");
        assert_eq!(moved, vec![(counter.to_string(), 1)], "{what}: expected only {counter} to move by 1");
    }

    fn pass(&self, what: &str, frame: &[u8], counter: &str) {
        self.expect(what, frame, XDP_PASS, counter);
    }

    fn drop(&self, what: &str, frame: &[u8], counter: &str) {
        self.expect(what, frame, XDP_DROP, counter);
    }

    /// A flow of `player` through dnat (a SYN to TCP 30001), then the
    /// container's reply with `flags` through snat.
    fn reply_tcp(&self, player: Ipv4Addr, flags: u8) {
        let mut s = Pkt::tcp((player, 40000), (ext_ip(), 30001));
        s.tcp_flags = 0x02;
        let mut r = Pkt::tcp((ip("10.0.0.2"), 25565), (player, 40000));
        r.tcp_flags = flags;
        self.through_dnat_and_snat(&s.build(), &r.build());
    }

    fn through_dnat_and_snat(&self, to_ctr: &[u8], reply: &[u8]) {
        let _in_ns = NetnsGuard::enter(Some(&self.ns.name)).unwrap();
        let out = test_run(&self.dnat, to_ctr, 0, 1);
        assert_eq!(out.verdict, TC_ACT_REDIRECT, "dnat records the flow");
        let out = test_run(&self.snat, reply, self.v0, 1);
        assert_eq!(out.verdict, TC_ACT_REDIRECT, "snat takes the reply");
    }

    fn deny(&self, cidr: &str, for_secs: Option<u64>) {
        g::deny_add(&self.root.pins, &cidr.parse().unwrap(), for_secs).unwrap();
    }

    fn limits(&self, port: Option<u16>, ch: LimitChange) {
        g::limit_set(&self.root.pins, port, &ch).unwrap();
    }
}

fn syn(src: &str, dport: u16) -> Vec<u8> {
    let mut p = Pkt::tcp((ip(src), 40000), (ext_ip(), dport));
    p.tcp_flags = 0x02;
    p.build()
}

fn ack(src: &str, dport: u16) -> Vec<u8> {
    Pkt::tcp((ip(src), 40000), (ext_ip(), dport)).build()
}

fn udp(src: &str, dport: u16) -> Vec<u8> {
    Pkt::udp((ip(src), 40001), (ext_ip(), dport)).build()
}

/// Ethernet + IPv6 + UDP from `src`, payload length consistent.
fn udp6(src: &str) -> Vec<u8> {
    let src: Ipv6Addr = src.parse().unwrap();
    let dst: Ipv6Addr = "2001:db8:ffff::1".parse().unwrap();
    let mut f = Vec::new();
    f.extend(packet::MAC_B);
    f.extend(packet::MAC_A);
    f.extend(packet::ETH_P_IPV6.to_be_bytes());
    f.extend([0x60, 0, 0, 0, 0, 16, 17, 64]);
    f.extend(src.octets());
    f.extend(dst.octets());
    f.extend([0x9c, 0x40, 0x75, 0x32, 0, 16, 0, 0]);
    f.extend(b"bedrock!");
    f
}

#[test]
fn deny_hit_and_miss_v4_v6() {
    if !privileged("deny_hit_and_miss_v4_v6") {
        return;
    }
    let e = env();
    e.pass("no deny entries", &syn("203.0.113.9", 30001), "guard/passed");
    e.deny("203.0.113.0/24", None);
    e.deny("2001:db8:1::/48", None);
    e.drop("tcp from a denied /24", &ack("203.0.113.9", 30001), "guard/denied");
    e.drop("udp from a denied /24 to an unpublished port", &udp("203.0.113.200", 53), "guard/denied");
    let mut frag = Pkt::udp((ip("203.0.113.9"), 1), (ext_ip(), 30002));
    frag.frag = 0x0010;
    e.drop("a fragment from a denied /24", &frag.build(), "guard/denied");
    e.pass("the next /24 is not denied", &ack("203.0.114.9", 30001), "guard/passed");
    e.drop("ipv6 from a denied /48", &udp6("2001:db8:1:ff::5"), "guard/denied");
    e.pass("ipv6 from outside the /48", &udp6("2001:db8:2::5"), "guard/passed");
    let arp = packet::arp(1, packet::MAC_A, ip("203.0.113.9"), [0; 6], ext_ip(), [0xff; 6]);
    e.pass("arp is not IP, even from a denied address", &arp, "guard/not_ip");

    e.deny("0.0.0.0/0", None);
    e.drop("0.0.0.0/0 denies every IPv4 source", &ack("192.0.2.1", 30001), "guard/denied");
    e.pass("but not IPv6", &udp6("2001:db8:2::5"), "guard/passed");
    g::deny_del(&e.root.pins, &"0.0.0.0/0".parse().unwrap()).unwrap();
    e.pass("deleted again", &ack("192.0.2.1", 30001), "guard/passed");
    g::deny_del(&e.root.pins, &"2001:db8:1::/48".parse().unwrap()).unwrap();
    e.pass("ipv6 entry deleted", &udp6("2001:db8:1:ff::5"), "guard/passed");

    // A single IPv6 address: the lookup key carries all 128 bits.
    e.deny("2001:db8:5::7/128", None);
    e.drop("ipv6 from a denied /128", &udp6("2001:db8:5::7"), "guard/denied");
    e.pass("its neighbour in the same /64", &udp6("2001:db8:5::8"), "guard/passed");
}

#[test]
fn deny_longest_prefix_and_expiry() {
    if !privileged("deny_longest_prefix_and_expiry") {
        return;
    }
    let e = env();
    // A permanent /24 inside a /15 denied for 10 s, and a /16 denied for
    // 10 s inside a permanent /8: the longest prefix decides while it
    // holds; once it has expired, whatever covers it still does.
    e.deny("198.18.0.0/15", Some(10));
    e.deny("198.18.1.0/24", None);
    e.deny("10.0.0.0/8", None);
    e.deny("10.1.0.0/16", Some(10));
    e.deny("2001:db8::/32", Some(10));
    e.deny("2001:db8:5::/48", None);
    e.at(T0 + 5 * SEC);
    for src in ["198.18.1.7", "198.19.0.1", "10.1.0.5", "10.2.0.5"] {
        e.drop(&format!("{src} at +5 s"), &ack(src, 30001), "guard/denied");
    }
    e.drop("2001:db8:9::1 at +5 s", &udp6("2001:db8:9::1"), "guard/denied");
    e.at(T0 + 10 * SEC);
    e.pass("the /15 expires at exactly +10 s", &ack("198.19.0.1", 30001), "guard/passed");
    e.drop("the /24 inside it holds", &ack("198.18.1.7", 30001), "guard/denied");
    e.drop("the expired /16 does not hide the /8 behind it", &ack("10.1.0.5", 30001), "guard/denied");
    e.pass("the /32 ipv6 has expired", &udp6("2001:db8:9::1"), "guard/passed");
    e.drop("the permanent /48 inside it holds", &udp6("2001:db8:5::1"), "guard/denied");

    // Listing sweeps the expired entries out of the tries.
    let listed: Vec<String> = g::deny_list(&e.root.pins).unwrap().iter().map(|d| d.cidr.to_string()).collect();
    assert_eq!(listed, ["10.0.0.0/8", "198.18.1.0/24", "2001:db8:5::/48"]);
    let raw = datapath::maps::count(&datapath::maps::open(&e.root.pins, "guard_deny4").unwrap());
    assert_eq!(raw, 2, "expired IPv4 entries are removed from the trie, not only hidden");

    // Adding again renews an expiry; a permanent entry stays as it is.
    let c: Cidr = "192.0.2.0/24".parse().unwrap();
    assert_eq!(g::deny_add(&e.root.pins, &c, Some(5)).unwrap().as_str(), "added");
    assert_eq!(g::deny_add(&e.root.pins, &c, Some(50)).unwrap().as_str(), "updated");
    let l = g::deny_list(&e.root.pins).unwrap();
    assert_eq!(l.iter().find(|d| d.cidr == c).unwrap().expires_in, Some(50));
    assert_eq!(g::deny_add(&e.root.pins, &"10.0.0.0/8".parse().unwrap(), None).unwrap().as_str(), "unchanged");
    e.at(T0 + 59 * SEC);
    e.drop("renewed entry holds at +49 s", &ack("192.0.2.9", 30001), "guard/denied");
    e.at(T0 + 61 * SEC);
    e.pass("and expires after 50 s", &ack("192.0.2.9", 30001), "guard/passed");
    // Deleting a covering prefix that is not an entry changes nothing.
    assert_eq!(g::deny_del(&e.root.pins, &"10.0.0.0/7".parse().unwrap()).unwrap().as_str(), "absent");
    e.drop("10/8 still there", &ack("10.9.9.9", 30001), "guard/denied");
}

#[test]
fn syn_bucket_burst_refill_and_what_is_never_limited() {
    if !privileged("syn_bucket_burst_refill_and_what_is_never_limited") {
        return;
    }
    let e = env();
    let a = "203.0.113.10";
    e.pass("no limits set", &syn(a, 30001), "guard/passed");
    e.limits(None, LimitChange { syn_rate: Some(2), syn_burst: Some(3), ..Default::default() });
    for i in 0..3 {
        e.pass(&format!("syn {i} within the burst"), &syn(a, 30001), "guard/admitted");
    }
    e.drop("the 4th syn at the same instant", &syn(a, 30001), "guard/syn_limited");
    e.pass("a segment of a connection is never limited", &ack(a, 30001), "guard/passed");
    let mut synack = Pkt::tcp((ip(a), 40000), (ext_ip(), 30001));
    synack.tcp_flags = 0x12;
    e.pass("nor a SYN-ACK", &synack.build(), "guard/passed");
    e.pass("a syn to an unpublished port is not limited", &syn(a, 22), "guard/passed");
    e.pass("udp has no limit set", &udp(a, 30002), "guard/passed");
    e.pass("another source has its own bucket", &syn("203.0.113.11", 30001), "guard/admitted");

    // 2/s: one token every 500 ms.
    e.at(T0 + 499_000_000);
    e.drop("499 ms later: still empty", &syn(a, 30001), "guard/syn_limited");
    e.at(T0 + 500_000_000);
    e.pass("500 ms later: one token", &syn(a, 30001), "guard/admitted");
    e.drop("and only one", &syn(a, 30001), "guard/syn_limited");
    e.at(T0 + 100 * SEC);
    for i in 0..3 {
        e.pass(&format!("after a long pause, syn {i}: the bucket refilled to its burst"), &syn(a, 30001), "guard/admitted");
    }
    e.drop("but not beyond it", &syn(a, 30001), "guard/syn_limited");
    assert!(g::list_blocked(&e.root.pins).unwrap().is_empty(), "no --block-for: nobody is blocked");
}

#[test]
fn udp_per_port_limit_block_and_release() {
    if !privileged("udp_per_port_limit_block_and_release") {
        return;
    }
    let e = env();
    let b = "203.0.113.20";
    e.limits(None, LimitChange { syn_rate: Some(100), ..Default::default() });
    e.limits(Some(30002), LimitChange { udp_rate: Some(1), udp_burst: Some(2), block_for: Some(5), ..Default::default() });
    e.pass("udp 1", &udp(b, 30002), "guard/admitted");
    e.pass("udp 2", &udp(b, 30002), "guard/admitted");
    e.drop("udp 3: over the limit, blocks the source", &udp(b, 30002), "guard/udp_limited");
    e.drop("udp 4: blocked", &udp(b, 30002), "guard/blocked");
    e.pass("its SYNs to another port are in the global scope", &syn(b, 30001), "guard/admitted");
    e.pass("udp to an unpublished port is not limited", &udp(b, 30009), "guard/passed");
    let bl = g::list_blocked(&e.root.pins).unwrap();
    assert_eq!(bl.len(), 1, "{bl:?}");
    assert_eq!((bl[0].addr, bl[0].port, bl[0].class, bl[0].remaining, bl[0].verified), (IpAddr::from(ip(b)), Some(30002), "udp", 5, false));
    e.at(T0 + 4 * SEC);
    e.drop("still blocked at +4 s, though the bucket has refilled", &udp(b, 30002), "guard/blocked");
    e.at(T0 + 5 * SEC);
    assert!(g::list_blocked(&e.root.pins).unwrap().is_empty(), "released after --block-for");
    e.pass("released at +5 s", &udp(b, 30002), "guard/admitted");

    // A port's own rate for one class; the other class takes the global.
    e.limits(Some(30001), LimitChange { udp_rate: Some(5), ..Default::default() });
    let c = "203.0.113.21";
    e.limits(None, LimitChange { syn_rate: Some(1), syn_burst: Some(1), ..Default::default() });
    e.pass("syn to 30001 under the global syn rate", &syn(c, 30001), "guard/admitted");
    e.drop("second syn over it", &syn(c, 30001), "guard/syn_limited");

    // Clearing the port's limits leaves the global ones.
    g::limit_clear(&e.root.pins, Some(30002)).unwrap();
    e.pass("udp to 30002: no global udp limit", &udp(b, 30002), "guard/passed");
    g::limit_clear(&e.root.pins, None).unwrap();
    g::limit_clear(&e.root.pins, Some(30001)).unwrap();
    e.pass("no limits at all", &syn(c, 30001), "guard/passed");
}

#[test]
fn global_block_covers_both_classes_and_rate_zero_removes_a_limit() {
    if !privileged("global_block_covers_both_classes_and_rate_zero_removes_a_limit") {
        return;
    }
    let e = env();
    let d = "203.0.113.30";
    e.limits(None, LimitChange {
        syn_rate: Some(1),
        syn_burst: Some(1),
        udp_rate: Some(1000),
        block_for: Some(60),
        ..Default::default()
    });
    e.pass("syn", &syn(d, 30001), "guard/admitted");
    e.drop("syn over the limit", &syn(d, 30001), "guard/syn_limited");
    e.drop("its udp to a published port is blocked too", &udp(d, 30002), "guard/blocked");
    e.pass("its established connection goes on", &ack(d, 30001), "guard/passed");
    let bl = g::list_blocked(&e.root.pins).unwrap();
    assert_eq!((bl[0].port, bl[0].class, bl[0].remaining), (None, "syn", 60));
    e.limits(None, LimitChange { udp_rate: Some(0), ..Default::default() });
    let l = g::limit_get(&e.root.pins, None).unwrap();
    assert_eq!(l.len(), 1);
    assert!(l[0].udp.is_none() && l[0].syn.is_some(), "{l:?}");
    e.pass("rate 0 removed the udp limit", &udp("203.0.113.31", 30002), "guard/passed");
}

#[test]
fn established_flows_and_malformed_frames_pass_untouched() {
    if !privileged("established_flows_and_malformed_frames_pass_untouched") {
        return;
    }
    let e = env();
    let p = "203.0.113.40";
    e.limits(None, LimitChange { syn_rate: Some(1), syn_burst: Some(1), block_for: Some(60), ..Default::default() });
    e.pass("syn", &syn(p, 30001), "guard/admitted");
    e.drop("syn", &syn(p, 30001), "guard/syn_limited");
    // Blocked for new connections, its connection's segments still pass,
    // with any flags but SYN-without-ACK: data, FIN, RST.
    for (flags, what) in [(0x10, "ack"), (0x18, "psh|ack"), (0x11, "fin|ack"), (0x04, "rst")] {
        let mut s = Pkt::tcp((ip(p), 40000), (ext_ip(), 30001));
        s.tcp_flags = flags;
        e.pass(&format!("{what} of a connection"), &s.build(), "guard/passed");
    }

    // Malformed frames: passed untouched, even from a denied source.
    e.deny("203.0.113.0/24", None);
    let good = syn(p, 30001);
    let mut ihl15 = good.clone();
    ihl15[14] = 0x4f;
    let mut ihl4 = good.clone();
    ihl4[14] = 0x44;
    let mut v6in4 = good.clone();
    v6in4[14] = 0x65;
    let mut bad_doff = good.clone();
    bad_doff[14 + 20 + 12] = 0x40;
    let mut long_tot = good.clone();
    long_tot[16..18].copy_from_slice(&2000u16.to_be_bytes());
    let mut tagged = Pkt::tcp((ip(p), 40000), (ext_ip(), 30001));
    tagged.vlan = Some(7);
    let v6 = udp6("2001:db8::1");
    let mut v6_long = v6.clone();
    v6_long[18..20].copy_from_slice(&1000u16.to_be_bytes());
    let mut v6_ver = v6.clone();
    v6_ver[14] = 0x40;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("ethernet header only", good[..14].to_vec(), "guard/malformed"),
        ("ipv4 cut to 20 bytes (shorter than BPF_PROG_TEST_RUN takes for skbs)", good[..20].to_vec(), "guard/malformed"),
        ("ipv4 header cut at 33 bytes", good[..33].to_vec(), "guard/malformed"),
        ("ihl 15 beyond the frame", ihl15, "guard/malformed"),
        ("ihl 4", ihl4, "guard/malformed"),
        ("version 6 in an ipv4 frame", v6in4, "guard/malformed"),
        ("tcp data offset 4", bad_doff, "guard/malformed"),
        ("total length beyond the frame", long_tot, "guard/malformed"),
        ("tcp header cut", good[..14 + 20 + 10].to_vec(), "guard/malformed"),
        ("vlan-tagged", tagged.build(), "guard/not_ip"),
        ("ipv6 cut inside its header", v6[..14 + 30].to_vec(), "guard/malformed"),
        ("ipv6 payload length beyond the frame", v6_long, "guard/malformed"),
        ("ipv6 ethertype, version 4", v6_ver, "guard/malformed"),
        ("ethertype 0x88b5", { let mut f = good.clone(); f[12..14].copy_from_slice(&[0x88, 0xb5]); f }, "guard/not_ip"),
    ];
    for (what, frame, counter) in cases {
        e.pass(what, &frame, counter);
    }
    // With repeat, every run counts.
    let before = counters(&e.root);
    let out = xdp_run(&e.guard, &ack(p, 30001), 1000);
    let after = counters(&e.root);
    assert_eq!(out.verdict, XDP_DROP);
    assert_counter_deltas("1000 repeats of a denied frame", &before, &after, &[("guard/denied", 1000)]);
}

/// A UDP datagram of a flow dnat recorded and the container answered is
/// never limited, even from a source that is blocked; a flow that is only
/// recorded (nobody answered) is limited like any other datagram.
#[test]
fn udp_of_an_answered_flow_is_never_limited() {
    if !privileged("udp_of_an_answered_flow_is_never_limited") {
        return;
    }
    let e = env();
    e.limits(None, LimitChange { udp_rate: Some(1), udp_burst: Some(1), block_for: Some(60), ..Default::default() });
    let (p, q) = ("203.0.113.80", "203.0.113.81");
    e.pass("p's first datagram", &udp(p, 30002), "guard/admitted");
    // It reaches the container (dnat records the flow), which answers.
    let reply = Pkt::udp((ip("10.0.0.2"), 19132), (ip(p), 40001)).build();
    e.through_dnat_and_snat(&udp(p, 30002), &reply);
    for i in 0..5 {
        e.pass(&format!("p's datagram {i} of the answered flow"), &udp(p, 30002), "guard/established");
    }
    let mut other = Pkt::udp((ip(p), 40002), (ext_ip(), 30002));
    other.payload = b"new flow".to_vec();
    e.drop("p's datagram from another port: a new flow, over the limit", &other.build(), "guard/udp_limited");
    e.drop("p is blocked for new flows now", &other.build(), "guard/blocked");
    e.pass("but its answered flow goes on", &udp(p, 30002), "guard/established");
    // The same container port published on a second address: p's
    // datagram from the answered flow's port to that address is not the
    // answered flow (its replies would leave from the other address).
    let n = Some(e.ns.name.as_str());
    let ext2 = ip("198.51.100.2");
    ops::external_add(&e.root.pins, n, ext2, "dpext", false).unwrap();
    let a = DnatAdd {
        ext: datapath::maps::Ext::Addr(ext2.into()),
        host_port: 30002,
        ctr_ip: ip("10.0.0.2").into(),
        veth: "dpv0".into(),
        ctr_mac: [0x02, 0xc0, 0, 0, 0, 2],
        proto: Proto::Udp,
        to_port: 19132,
    };
    ops::dnat_add(&e.root.pins, n, &a).unwrap();
    let elsewhere = Pkt::udp((ip(p), 40001), (ext2, 30002)).build();
    e.drop("p's flow to the same container by another address: blocked", &elsewhere, "guard/blocked");

    e.pass("q's first datagram", &udp(q, 30002), "guard/admitted");
    {
        let _in_ns = NetnsGuard::enter(Some(&e.ns.name)).unwrap();
        assert_eq!(test_run(&e.dnat, &udp(q, 30002), 0, 1).verdict, TC_ACT_REDIRECT, "dnat records q's flow");
    }
    e.drop("q's flow is recorded but nobody answered it: limited", &udp(q, 30002), "guard/udp_limited");
}

/// snat marks the player of a reply that is neither SYN-ACK nor RST as
/// verified; the guard then keeps that source's state in guard_vsrc4.
#[test]
fn verified_sources_come_from_snat_only() {
    if !privileged("verified_sources_come_from_snat_only") {
        return;
    }
    let e = env();
    let reply = |player: &str, flags: u8| e.reply_tcp(ip(player), flags);
    reply("203.0.113.50", 0x12); // SYN-ACK: anyone can provoke one
    reply("203.0.113.51", 0x14); // RST|ACK
    reply("203.0.113.52", 0x10); // ACK: the handshake completed
    reply("203.0.113.53", 0x18); // data
    let v: Vec<bool> = (50..54).map(|i| e.g.is_verified(ip(&format!("203.0.113.{i}"))).unwrap()).collect();
    assert_eq!(v, [false, false, true, true]);
    // Packets from outside never verify anyone, whatever they carry.
    e.pass("an ack from outside", &ack("203.0.113.60", 30001), "guard/passed");
    assert!(!e.g.is_verified(ip("203.0.113.60")).unwrap());

    e.limits(None, LimitChange { syn_rate: Some(5), ..Default::default() });
    e.pass("syn from a verified player", &syn("203.0.113.52", 30001), "guard/admitted");
    e.pass("syn from an unverified one", &syn("203.0.113.50", 30001), "guard/admitted");
    let (_, verified) = e.g.state(ip("203.0.113.52"), 0).unwrap().expect("state of the verified player");
    assert!(verified, "a verified player's buckets live in guard_vsrc4");
    let (_, verified) = e.g.state(ip("203.0.113.50"), 0).unwrap().expect("state of the other");
    assert!(!verified, "an unverified source's buckets live in guard_src4");

    // A source blocked before it completes a handshake stays blocked: its
    // state moves to guard_vsrc4 as it is, it does not start afresh.
    let bot = "203.0.113.70";
    e.limits(None, LimitChange { syn_rate: Some(1), syn_burst: Some(1), block_for: Some(30), ..Default::default() });
    e.pass("bot syn", &syn(bot, 30001), "guard/admitted");
    e.drop("bot over its limit", &syn(bot, 30001), "guard/syn_limited");
    reply(bot, 0x10);
    assert!(e.g.is_verified(ip(bot)).unwrap());
    e.drop("verified since, still blocked", &syn(bot, 30001), "guard/blocked");
    let (st, verified) = e.g.state(ip(bot), 0).unwrap().expect("bot state");
    assert!(verified && st.blocked_until == T0 + 30 * SEC, "moved as it was: {st:?}");
    assert_eq!(e.g.source_counts().verified_state, 2);
}

/// A spoofed SYN flood from four times as many sources as guard_src4
/// holds, two SYNs from each (the second one touches the source's entry
/// again, which is what an attacker who wants to evict does: the kernel's
/// LRU gives touched entries a second chance): every verified bot stays
/// blocked, while the blocks of unverified bots are evicted by the
/// flood's own entries.
#[test]
fn spoofed_flood_cannot_evict_verified_sources() {
    if !privileged("spoofed_flood_cannot_evict_verified_sources") {
        return;
    }
    let e = env();
    e.limits(None, LimitChange { syn_rate: Some(1), syn_burst: Some(1), block_for: Some(3600), ..Default::default() });
    const BOTS: u32 = 200;
    let bot = |verified: bool, i: u32| Ipv4Addr::new(100, if verified { 64 } else { 65 }, (i >> 8) as u8, i as u8);
    for i in 0..BOTS {
        e.reply_tcp(bot(true, i), 0x10);
    }
    let syn_from = |a: Ipv4Addr| {
        let mut p = Pkt::tcp((a, 40000), (ext_ip(), 30001));
        p.tcp_flags = 0x02;
        p.build()
    };
    for verified in [true, false] {
        for i in 0..BOTS {
            let f = syn_from(bot(verified, i));
            assert_eq!(xdp_run(&e.guard, &f, 1).verdict, XDP_PASS);
            assert_eq!(xdp_run(&e.guard, &f, 1).verdict, XDP_DROP);
        }
    }
    assert_eq!(g::list_blocked(&e.root.pins).unwrap().len(), 2 * BOTS as usize);

    let cap = datapath::abi::capacity::GUARD_SOURCES;
    let flood = spoofed_flood(&e.guard, 4 * cap, 2);
    assert_eq!(flood, 4 * cap, "the first SYN of every spoofed source is admitted");
    let counts = e.g.source_counts();
    assert!(counts.unverified <= cap as usize, "{counts:?}");
    assert_eq!(counts.verified_state, BOTS as usize, "the flood made no entry among verified sources: {counts:?}");

    let still_blocked = |verified: bool| {
        (0..BOTS).filter(|&i| xdp_run(&e.guard, &syn_from(bot(verified, i)), 1).verdict == XDP_DROP).count()
    };
    let (v, u) = (still_blocked(true), still_blocked(false));
    eprintln!("after {} spoofed sources: {v}/{BOTS} verified bots still blocked, {u}/{BOTS} unverified", 4 * cap);
    assert_eq!(v, BOTS as usize, "a verified source's block survives any spoofed flood");
    assert!(u < BOTS as usize / 10, "the flood evicted the unverified bots' state (the reason for the split): {u} left");
}

/// `per` SYNs from each of `n` distinct spoofed sources in
/// 100.128.0.0/9; returns how many were admitted.
fn spoofed_flood(guard: &OwnedFd, n: u32, per: u32) -> u32 {
    let mut p = Pkt::tcp((ip("100.128.0.0"), 40000), (ext_ip(), 30001));
    p.tcp_flags = 0x02;
    let mut f = p.build();
    let mut admitted = 0;
    for i in 0..n {
        let a = u32::from(Ipv4Addr::new(100, 128, 0, 0)) + i;
        // The guard reads no checksum: only the source changes.
        f[26..30].copy_from_slice(&a.to_be_bytes());
        for _ in 0..per {
            if xdp_run(guard, &f, 1).verdict == XDP_PASS {
                admitted += 1;
            }
        }
    }
    admitted
}

/// Random and mutated frames through the guard, with and without a policy
/// (every source denied, then limits that drop almost everything): the
/// frame always comes out unchanged, the verdict is XDP_PASS or XDP_DROP,
/// exactly one guard counter moves per frame, and without a policy
/// nothing is dropped.
#[test]
fn property_guard() {
    if !privileged("property_guard") {
        return;
    }
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let e = env();
    let bases = [
        syn("203.0.113.9", 30001),
        ack("203.0.113.9", 30001),
        udp("203.0.113.9", 30002),
        udp6("2001:db8::9"),
        packet::arp(1, packet::MAC_A, ip("203.0.113.9"), [0; 6], ext_ip(), [0xff; 6]),
    ];
    let strategy = (
        0..bases.len(),
        proptest::collection::vec((0usize..80, any::<u8>()), 0..6),
        proptest::option::of(14usize..90),
        proptest::collection::vec(any::<u8>(), 14..120),
        any::<bool>(),
    );
    let guard_total = |c: &std::collections::BTreeMap<String, u64>| -> u64 {
        c.iter().filter(|(k, _)| k.starts_with("guard/")).map(|(_, v)| v).sum()
    };
    for policy in 0..3 {
        match policy {
            1 => {
                e.deny("0.0.0.0/0", None);
                e.deny("::/0", None);
            }
            2 => {
                g::deny_del(&e.root.pins, &"0.0.0.0/0".parse().unwrap()).unwrap();
                g::deny_del(&e.root.pins, &"::/0".parse().unwrap()).unwrap();
                e.limits(None, LimitChange { syn_rate: Some(1), syn_burst: Some(1), udp_rate: Some(1), udp_burst: Some(1), block_for: Some(5), ..Default::default() });
            }
            _ => {}
        }
        let mut runner = TestRunner::new(Config { cases: 3_000, failure_persistence: None, ..Config::default() });
        runner
            .run(&strategy, |(b, muts, cut, random, use_random)| {
                let mut f = if use_random { random } else { bases[b].clone() };
                for (i, v) in muts {
                    if i < f.len() {
                        f[i] = v;
                    }
                }
                if let Some(n) = cut {
                    f.truncate(n.max(14));
                }
                let before = guard_total(&counters(&e.root));
                let out = xdp_run(&e.guard, &f, 1);
                let after = guard_total(&counters(&e.root));
                prop_assert_eq!(&out.data, &f, "the guard changed a frame");
                prop_assert!(out.verdict == XDP_PASS || out.verdict == XDP_DROP, "verdict {}", out.verdict);
                prop_assert_eq!(after - before, 1, "one counter per frame");
                if policy == 0 {
                    prop_assert_eq!(out.verdict, XDP_PASS, "dropped without a policy");
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("policy {policy}: {e}"));
    }
}

/// Bad `guard` commands: one line on stderr, a non-zero exit, nothing on
/// stdout, echoed input cut to 64 bytes, and the deny lists and limits
/// exactly as they were.
#[test]
fn bad_guard_commands_change_nothing() {
    if !privileged("bad_guard_commands_change_nothing") {
        return;
    }
    let e = env();
    let root = e.root.pins.root().to_path_buf();
    let ok = |args: &[&str]| assert_ok(&args.join(" "), &ctl(&root, None, args));
    ok(&["guard", "deny", "add", "198.51.100.0/24", "--for", "600"]);
    ok(&["guard", "limit", "set", "--syn-rate", "20", "--block-for", "30"]);
    let state = || {
        let d = ctl(&root, None, &["--json", "guard", "deny", "list"]);
        let l = ctl(&root, None, &["--json", "guard", "limit", "get"]);
        (d.stdout, l.stdout)
    };
    let before = state();
    let long = "9".repeat(300);
    let cases: Vec<Vec<&str>> = vec![
        vec!["guard", "deny", "add", "10.1.2.3/8"],
        vec!["guard", "deny", "add", "10.0.0.0/33"],
        vec!["guard", "deny", "add", "2001:db8::/129"],
        vec!["guard", "deny", "add", "not-an-address"],
        vec!["guard", "deny", "add", &long],
        vec!["guard", "deny", "add", "10.0.0.0/8", "--for", "0"],
        vec!["guard", "deny", "add", "10.0.0.0/8", "--for", "-5"],
        vec!["guard", "deny", "add", "10.0.0.0/8", "--for", "999999999999"],
        vec!["guard", "deny", "del", "10.1.2.3/8"],
        vec!["guard", "limit", "set"],
        vec!["guard", "limit", "set", "--syn-burst", "5", "--port", "30001"],
        vec!["guard", "limit", "set", "--udp-rate", "0", "--udp-burst", "5"],
        vec!["guard", "limit", "set", "--syn-rate", "200000000"],
        vec!["guard", "limit", "set", "--syn-rate", "5", "--syn-burst", "0"],
        vec!["guard", "limit", "set", "--syn-rate", "5", "--port", "0"],
        vec!["guard", "limit", "set", "--syn-rate", "5", "--port", "70000"],
        vec!["guard", "limit", "set", "--syn-rate", &long],
        vec!["guard", "limit", "get", "--port", "x"],
        vec!["guard", "limit", "clear", "--port", "0"],
        vec!["guard", "list-blocked", "extra"],
    ];
    for args in cases {
        let what = args.join(" ");
        let o = ctl(&root, None, &args);
        assert_one_line_failure(&what, &o);
        assert!(!o.stderr.contains(&"9".repeat(65)), "{what}: echoed input not cut to 64 bytes: {}", o.stderr);
        assert_eq!(state(), before, "{what}: changed the deny lists or limits");
    }
}
