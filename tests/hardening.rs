//! Hardening: malformed frames through every TC program with their
//! documented verdicts; property tests of every TC program against a
//! reference model over BPF_PROG_TEST_RUN (random valid packets and random
//! mutations of them); full maps; and the permissions of the pin root.
//!
//! What BPF_PROG_TEST_RUN itself refuses with EINVAL (kernel 6.18), so no
//! program can be shown such a frame this way:
//!   - frames shorter than an Ethernet header (14 bytes);
//!   - frames typed IPv4 (0x0800) shorter than 34 bytes (Ethernet + 20);
//!   - frames typed IPv6 (0x86dd) shorter than 54 bytes (Ethernet + 40);
//!   - frames longer than 3712 bytes (a page less headroom and shared info).
//!
//! Other EtherTypes (ARP, 802.1Q, anything) are accepted from 14 bytes on.
//! `test_run_refusals` pins this down, and the property tests' model of
//! the kernel's refusals must agree with it on every mutated frame.
//!
//! The property tests run 210,000 cases in all; DATAPATH_LONG_TESTS=1
//! makes it 2,100,000.

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::packet::{self, Pkt, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ICMP, TCP, UDP};
use common::*;
use datapath::abi::{bytes_of, types, Proto};
use datapath::ops::{self, DnatAdd};
use datapath::maps::{self, published, Change, Ext, Mapping};
use datapath::net::netns::NetnsGuard;
use libbpf_rs::{MapCore, MapFlags};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const CTR0: [u8; 6] = [0x02, 0xc0, 0, 0, 0, 0x02];
const CTR1: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x02];
const CTR2: [u8; 6] = [0x02, 0xc2, 0, 0, 0, 0x02];
const PEER: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x09];
const BCAST: [u8; 6] = [0xff; 6];

const PLAYER: [u8; 4] = [203, 0, 113, 9];
const EXT_IP: [u8; 4] = [198, 51, 100, 1];
/// Container and host addresses behind dpv0, dpv1 (registered) and dpv2
/// (not registered).
const CTR_IPS: [[u8; 4]; 3] = [[10, 0, 0, 2], [10, 0, 1, 2], [10, 0, 2, 2]];
const HOST_IPS: [[u8; 4]; 3] = [[10, 0, 0, 1], [10, 0, 1, 1], [10, 0, 2, 1]];
const REGISTERED: [bool; 3] = [true, true, false];
const PROXY_PORTS: (u16, u16, u16) = (9053, 9080, 9111);

/// One published port: host port, protocol, container address, container
/// port, container MAC, index of the host veth (dpvN).
struct Pub {
    host_port: u16,
    proto: u8,
    ctr: [u8; 4],
    ctr_port: u16,
    mac: [u8; 6],
    veth: usize,
}

const PUBLISHED: [Pub; 6] = [
    Pub { host_port: 30001, proto: TCP, ctr: [10, 0, 0, 2], ctr_port: 25565, mac: CTR0, veth: 0 },
    Pub { host_port: 30002, proto: UDP, ctr: [10, 0, 0, 2], ctr_port: 19132, mac: CTR0, veth: 0 },
    Pub { host_port: 30003, proto: TCP, ctr: [10, 0, 1, 2], ctr_port: 25565, mac: CTR1, veth: 1 },
    // Behind the unregistered veth: dnat still forwards, snat drops.
    Pub { host_port: 30004, proto: TCP, ctr: [10, 0, 2, 2], ctr_port: 25565, mac: CTR2, veth: 2 },
    Pub { host_port: 30053, proto: UDP, ctr: [10, 0, 1, 2], ctr_port: 53, mac: CTR1, veth: 1 },
    // A fixed point: the rewrite of 10.0.0.3:25565 is 10.0.0.3:25565.
    Pub { host_port: 25565, proto: TCP, ctr: [10, 0, 0, 3], ctr_port: 25565, mac: CTR0, veth: 0 },
];

fn v4(a: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

fn proto_of(n: u8) -> Proto {
    Proto::from_number(n).unwrap()
}

/// A loaded pin root and a namespace with three host veths (dpv0 and dpv1
/// registered, dpv2 not), an external veth, the external address set and
/// the ports of `PUBLISHED` published.
struct Env {
    root: TestRoot,
    ns: TestNs,
    /// (ifindex, MAC) of dpv0, dpv1, dpv2.
    veths: [(u32, [u8; 6]); 3],
    ext: (u32, [u8; 6]),
}

fn env() -> Env {
    let root = TestRoot::loaded();
    let ns = TestNs::new();
    for (i, host_ip) in HOST_IPS.iter().enumerate() {
        ns.ip(&format!("link add dpv{i} type veth peer name dpc{i}"));
        ns.ip(&format!("addr add {}/32 dev dpv{i}", v4(*host_ip)));
        ns.ip(&format!("link set dpv{i} up"));
    }
    ns.ip("link add dpext type veth peer name dpextp");
    ns.ip("link set dpext up");
    let n = Some(ns.name.as_str());
    for i in 0..3 {
        if REGISTERED[i] {
            ops::veth_add(&root.pins, n, &format!("dpv{i}"), v4(CTR_IPS[i])).unwrap();
        }
    }
    ops::snat_set(&root.pins, n, v4(EXT_IP), "dpext").unwrap();
    for p in &PUBLISHED {
        let a = DnatAdd {
            ext: Ext::Default,
            host_port: p.host_port,
            ctr_ip: v4(p.ctr).into(),
            veth: format!("dpv{}", p.veth),
            ctr_mac: p.mac,
            proto: proto_of(p.proto),
            to_port: p.ctr_port,
        };
        ops::dnat_add(&root.pins, n, &a).expect("map dnat add");
    }
    let veths = [ns.iface("dpv0"), ns.iface("dpv1"), ns.iface("dpv2")];
    let ext = ns.iface("dpext");
    Env { root, ns, veths, ext }
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn put16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn ip4(f: &[u8], at: usize) -> [u8; 4] {
    f[at..at + 4].try_into().unwrap()
}

/// Recomputes the IPv4 header checksum over IHL bytes (clamped to 20 and
/// to what the frame holds), so a fixture lies only where it means to.
fn fix_ip_csum(f: &mut [u8]) {
    if f.len() < 34 || be16(f, 12) != ETH_P_IP {
        return;
    }
    let ihl = (usize::from(f[14] & 0xf) * 4).clamp(20, f.len() - 14);
    put16(f, 24, 0);
    let c = packet::csum_fold(packet::csum_add(0, &f[14..14 + ihl]));
    put16(f, 24, c);
}

/// A copy of `f` edited by `e`, with the IPv4 header checksum made right.
fn edit(f: &[u8], e: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = f.to_vec();
    e(&mut v);
    fix_ip_csum(&mut v);
    v
}

/// Inserts an 802.1Q (or other) tag after the MAC addresses.
fn tagged(f: &[u8], tpid: u16, tci: u16) -> Vec<u8> {
    let mut v = f[..12].to_vec();
    v.extend(tpid.to_be_bytes());
    v.extend(tci.to_be_bytes());
    v.extend(&f[12..]);
    v
}

fn ipv6_frame(next: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(packet::MAC_B);
    f.extend(packet::MAC_A);
    f.extend(ETH_P_IPV6.to_be_bytes());
    f.extend([0x60, 0, 0, 0]);
    f.extend(((ext.len() + l4.len()) as u16).to_be_bytes());
    f.push(next);
    f.push(64);
    f.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    f.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend(ext);
    f.extend(l4);
    f
}

// ---------------------------------------------------------------------------
// 1. Malformed frames through every TC program
// ---------------------------------------------------------------------------

const PROGS: [&str; 5] = ["dnat", "snat", "arp", "tproxy_ingress", "tproxy_egress"];

/// What a frame is, as far as the programs' documented behaviour goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Neither IPv4 nor ARP (IPv6, VLAN-tagged, other EtherTypes).
    NonIp,
    /// ARP that is not answered: malformed, replies, probes.
    Arp,
    /// IPv4 whose headers are inconsistent or cut short.
    Malformed,
    /// IPv4 fragment, first or not.
    Fragment,
    /// IPv4, neither TCP nor UDP (nor ICMP).
    NotL4,
    /// ICMP that is no error about a published flow.
    Icmp,
    /// IPv6 UDP (to no published port, from a veth without IPv6).
    Ipv6Udp,
    /// IPv6 whose header is inconsistent (or not IPv6 at all).
    Ipv6Malformed,
}

/// The documented verdict and counter of each program for a frame of a
/// class it does not own, arriving on a registered veth from the
/// container's own address (src/bpf/*.bpf.c, docs/ARCHITECTURE.md).
fn documented(prog: &str, class: Class) -> (i32, Option<&'static str>) {
    use Class::*;
    match (prog, class) {
        ("dnat", NonIp | Arp) => (TC_ACT_UNSPEC, Some("dnat/not_ipv4")),
        ("dnat", Ipv6Udp) => (TC_ACT_UNSPEC, Some("dnat/miss")),
        ("dnat", Ipv6Malformed) => (TC_ACT_UNSPEC, Some("dnat/malformed")),
        // IPv6 on a veth not registered for it: dropped before its headers.
        ("snat", Ipv6Udp | Ipv6Malformed) => (TC_ACT_SHOT, Some("snat/unregistered")),
        ("tproxy_ingress", Ipv6Udp | Ipv6Malformed) => (TC_ACT_SHOT, Some("tproxy_ingress/unregistered")),
        ("tproxy_egress", Ipv6Udp) => (TC_ACT_OK, Some("tproxy_egress/host_udp")),
        ("dnat", Malformed) => (TC_ACT_UNSPEC, Some("dnat/malformed")),
        ("dnat", Fragment) => (TC_ACT_UNSPEC, Some("dnat/fragment")),
        ("dnat", NotL4) => (TC_ACT_UNSPEC, Some("dnat/not_l4")),
        ("dnat", Icmp) => (TC_ACT_UNSPEC, Some("dnat/icmp_passed")),
        // Not IPv4: handed on before any check; IPv4 from the container's
        // own address that snat cannot parse: handed on to tproxy.
        ("snat", _) => (TC_ACT_UNSPEC, Some("snat/handed_on")),
        ("arp", Arp) => (TC_ACT_OK, Some("arp/passed")),
        ("arp", _) => (TC_ACT_UNSPEC, None),
        ("tproxy_ingress", NonIp) => (TC_ACT_SHOT, Some("tproxy_ingress/non_ip_dropped")),
        ("tproxy_ingress", Arp) => (TC_ACT_OK, None),
        ("tproxy_ingress", Malformed) => (TC_ACT_SHOT, Some("tproxy_ingress/malformed_dropped")),
        ("tproxy_ingress", Fragment) => (TC_ACT_SHOT, Some("tproxy_ingress/fragment_dropped")),
        ("tproxy_ingress", NotL4 | Icmp) => (TC_ACT_SHOT, Some("tproxy_ingress/l4_dropped")),
        ("tproxy_egress", _) => (TC_ACT_OK, Some("tproxy_egress/passed")),
        _ => unreachable!("no program {prog}"),
    }
}

struct Shape {
    name: String,
    frame: Vec<u8>,
    class: Class,
    /// ARP that passes the header checks (so an unregistered veth is
    /// noticed before it is passed).
    arp_request: bool,
}

fn shape(name: impl Into<String>, frame: Vec<u8>, class: Class) -> Shape {
    Shape { name: name.into(), frame, class, arp_request: false }
}

/// IPv4 frames a program must not own, made from a TCP and a UDP packet
/// that, well formed, the program would rewrite.
fn ipv4_shapes(tcp: &Pkt, udp: &Pkt) -> Vec<Shape> {
    use Class::*;
    let t = tcp.build();
    let u = udp.build();
    let mut opts = tcp.clone();
    // Record Route with one slot, then End of Options: IHL 7.
    opts.ip_options = vec![7, 7, 4, 0, 0, 0, 0, 0];
    let o = opts.build();
    let t_ip_len = t.len() - 14;
    let u_ip_len = u.len() - 14;
    let mut v = vec![
        // The shortest IPv4 frame BPF_PROG_TEST_RUN accepts.
        shape("ipv4 header only (34 bytes), protocol tcp", edit(&t[..34], |f| put16(f, 16, 20)), Malformed),
        shape("ipv4 header only (34 bytes), protocol udp", edit(&u[..34], |f| put16(f, 16, 20)), Malformed),
        shape("ihl 0", edit(&t, |f| f[14] = 0x40), Malformed),
        shape("ihl 4 (< 5)", edit(&t, |f| f[14] = 0x44), Malformed),
        shape("ihl 15, beyond the packet", edit(&t, |f| f[14] = 0x4f), Malformed),
        shape("ihl 15, udp, beyond the packet", edit(&u, |f| f[14] = 0x4f), Malformed),
        shape("version 6 in an ipv4 frame", edit(&t, |f| f[14] = 0x65), Malformed),
        shape("version 0", edit(&t, |f| f[14] = 0x05), Malformed),
        shape("total length 0", edit(&t, |f| put16(f, 16, 0)), Malformed),
        shape("total length 19 (< 20-byte header)", edit(&t, |f| put16(f, 16, 19)), Malformed),
        shape("total length one beyond the frame", edit(&t, |f| put16(f, 16, t_ip_len as u16 + 1)), Malformed),
        shape("total length 65535", edit(&t, |f| put16(f, 16, 65535)), Malformed),
        shape("udp, total length one beyond the frame", edit(&u, |f| put16(f, 16, u_ip_len as u16 + 1)), Malformed),
        shape("total length ends inside the tcp header", edit(&t, |f| put16(f, 16, 30)), Malformed),
        shape("total length ends inside the udp header", edit(&u, |f| put16(f, 16, 24)), Malformed),
        shape("frame and total length end inside the tcp header", edit(&t[..14 + 30], |f| put16(f, 16, 30)), Malformed),
        shape("frame ends inside the tcp header, total length as built", t[..14 + 30].to_vec(), Malformed),
        shape("frame and total length end inside the udp header", edit(&u[..14 + 24], |f| put16(f, 16, 24)), Malformed),
        shape("frame ends inside the udp header, total length as built", u[..14 + 24].to_vec(), Malformed),
        shape("ip options, frame ends inside them", o[..14 + 24].to_vec(), Malformed),
        shape("ip options, frame ends at 34 bytes", o[..34].to_vec(), Malformed),
        shape("ip options, total length ends inside them", edit(&o, |f| put16(f, 16, 24)), Malformed),
        shape("ip options, total length ends inside the tcp header", edit(&o, |f| put16(f, 16, 28 + 10)), Malformed),
        shape("ip options, tcp data offset beyond the segment", edit(&o, |f| f[14 + 28 + 12] = 0xf0), Malformed),
        shape("tcp data offset 0", edit(&t, |f| f[14 + 20 + 12] = 0x00), Malformed),
        shape("tcp data offset 4 (< 5)", edit(&t, |f| f[14 + 20 + 12] = 0x40), Malformed),
        shape("tcp data offset 15, beyond the packet", edit(&t, |f| f[14 + 20 + 12] = 0xf0), Malformed),
        // 20 + 8 bytes of segment: a 32-byte TCP header is one word too many.
        shape("tcp data offset 8, one word beyond the segment", edit(&t, |f| f[14 + 20 + 12] = 0x80), Malformed),
        shape("udp length 0", edit(&u, |f| put16(f, 14 + 20 + 4, 0)), Malformed),
        shape("udp length 7 (< 8)", edit(&u, |f| put16(f, 14 + 20 + 4, 7)), Malformed),
        shape("udp length one beyond the ip payload", edit(&u, |f| put16(f, 14 + 20 + 4, u_ip_len as u16 - 20 + 1)), Malformed),
        shape("udp length 65535", edit(&u, |f| put16(f, 14 + 20 + 4, 65535)), Malformed),
        shape("first fragment (MF)", edit(&t, |f| put16(f, 20, 0x2000)), Fragment),
        shape("udp first fragment (MF)", edit(&u, |f| put16(f, 20, 0x2000)), Fragment),
        shape("non-first fragment (offset 8 bytes)", edit(&t, |f| put16(f, 20, 0x0001)), Fragment),
        shape("last fragment (offset, no MF)", edit(&t, |f| put16(f, 20, 0x00b9)), Fragment),
        shape("middle fragment (offset and MF)", edit(&u, |f| put16(f, 20, 0x20b9)), Fragment),
        shape("non-first fragment too short for an l4 header", edit(&t[..14 + 24], |f| {
            put16(f, 16, 24);
            put16(f, 20, 0x00b9);
        }), Fragment),
        shape("fragment with ip options", edit(&o, |f| put16(f, 20, 0x2000)), Fragment),
        shape("icmp", edit(&t, |f| f[23] = ICMP), Icmp),
        shape("protocol 0", edit(&t, |f| f[23] = 0), NotL4),
        shape("gre (47)", edit(&t, |f| f[23] = 47), NotL4),
        shape("sctp (132)", edit(&u, |f| f[23] = 132), NotL4),
        shape("icmp, 34 bytes", edit(&t[..34], |f| {
            put16(f, 16, 20);
            f[23] = ICMP;
        }), Icmp),
    ];
    // And an ICMP fragment: the fragment check comes first.
    v.push(shape("icmp fragment", edit(&t, |f| {
        f[23] = ICMP;
        put16(f, 20, 0x2000);
    }), Fragment));
    v
}

/// ARP frames no program answers: malformed, replies, probes.
fn arp_shapes(ctr_mac: [u8; 6], ctr: Ipv4Addr, gw: Ipv4Addr, veth_mac: [u8; 6]) -> Vec<Shape> {
    use Class::Arp;
    let req = packet::arp(1, ctr_mac, ctr, [0; 6], gw, BCAST);
    let mut v = vec![
        shape("arp, ethernet header only (14 bytes)", req[..14].to_vec(), Arp),
        shape("arp cut to 22 bytes (header, no addresses)", req[..22].to_vec(), Arp),
        shape("arp cut to 30 bytes", req[..30].to_vec(), Arp),
        shape("arp cut to 41 bytes (one short)", req[..41].to_vec(), Arp),
        shape("arp hardware type 6 (IEEE 802)", edit(&req, |f| put16(f, 14, 6)), Arp),
        shape("arp hardware type 0", edit(&req, |f| put16(f, 14, 0)), Arp),
        shape("arp protocol type ipv6", edit(&req, |f| put16(f, 16, ETH_P_IPV6)), Arp),
        shape("arp hardware length 8", edit(&req, |f| f[18] = 8), Arp),
        shape("arp hardware length 0", edit(&req, |f| f[18] = 0), Arp),
        shape("arp protocol length 16", edit(&req, |f| f[19] = 16), Arp),
        shape("arp opcode 3 (rarp request)", edit(&req, |f| put16(f, 20, 3)), Arp),
        shape("arp opcode 0", edit(&req, |f| put16(f, 20, 0)), Arp),
        shape("arp reply", packet::arp(2, ctr_mac, ctr, veth_mac, gw, veth_mac), Arp),
    ];
    // Well-formed requests the program still passes to the kernel.
    for (name, f) in [
        ("arp probe (sender 0.0.0.0)", packet::arp(1, ctr_mac, ip("0.0.0.0"), [0; 6], gw, BCAST)),
        ("gratuitous arp", packet::arp(1, ctr_mac, ctr, [0; 6], ctr, BCAST)),
        ("arp for the container's own address", packet::arp(1, ctr_mac, ip("10.99.0.1"), [0; 6], ctr, BCAST)),
    ] {
        v.push(Shape { name: name.into(), frame: f, class: Arp, arp_request: true });
    }
    v
}

/// Frames that are neither IPv4 nor ARP; `ipv4` is a packet the program
/// would own if it were not tagged.
fn non_ip_shapes(ipv4: &[u8], arp_req: &[u8]) -> Vec<Shape> {
    use Class::NonIp;
    let mut eth_only = ipv4[..14].to_vec();
    put16(&mut eth_only, 12, 0x88b5);
    let mut dot3 = ipv4.to_vec();
    put16(&mut dot3, 12, (ipv4.len() - 14) as u16);
    let udp = [0x13, 0x88, 0x00, 0x35, 0, 16, 0, 0, b'v', b'6', b'-', b'q', b'u', b'e', b'r', b'y'];
    // Hop-by-hop: next header UDP, length 0 (8 bytes), PadN of 4.
    let hbh = [UDP, 0, 1, 4, 0, 0, 0, 0];
    vec![
        shape("ethernet header only (14 bytes, ethertype 0x88b5)", eth_only, NonIp),
        shape("ethernet header only (14 bytes, ethertype 802.1Q)", {
            let mut f = ipv4[..14].to_vec();
            put16(&mut f, 12, ETH_P_8021Q);
            f
        }, NonIp),
        shape("802.1Q-tagged ipv4 (vlan 100)", tagged(ipv4, ETH_P_8021Q, 100), NonIp),
        shape("802.1Q-tagged ipv4 (vlan 0, priority only)", tagged(ipv4, ETH_P_8021Q, 0xe000), NonIp),
        shape("802.1ad (q-in-q) tagged ipv4", tagged(&tagged(ipv4, ETH_P_8021Q, 100), 0x88a8, 200), NonIp),
        shape("802.1Q-tagged arp request", tagged(arp_req, ETH_P_8021Q, 100), NonIp),
        shape("802.3 length in the type field", dot3, NonIp),
        shape("ipv6 udp", packet::ipv6_udp(), Class::Ipv6Udp),
        shape("ipv6 with a hop-by-hop header", ipv6_frame(0, &hbh, &udp), Class::Ipv6Udp),
        shape("ipv6 header only (54 bytes, payload length 0)", ipv6_frame(59, &[], &[]), Class::Ipv6Malformed),
        shape("ipv4 packet typed as ipv6", {
            let mut f = ipv4.to_vec();
            put16(&mut f, 12, ETH_P_IPV6);
            f
        }, Class::Ipv6Malformed),
    ]
}

/// Runs one frame and checks verdict, untouched bytes and counter deltas.
#[track_caller]
fn run_untouched(
    root: &TestRoot,
    prog: &OwnedFd,
    what: &str,
    frame: &[u8],
    ifindex: u32,
    verdict: i32,
    counter: Option<&'static str>,
) {
    let before = counters(root);
    let out = try_test_run(prog, frame, ifindex, 1)
        .unwrap_or_else(|e| panic!("{what}: BPF_PROG_TEST_RUN refused a {}-byte frame: {e}", frame.len()));
    let after = counters(root);
    assert_eq!(
        out.verdict,
        verdict,
        "{what}: verdict {} ({}), expected {} ({})",
        out.verdict,
        verdict_name(out.verdict),
        verdict,
        verdict_name(verdict)
    );
    assert!(out.data == frame, "{what}: the frame was rewritten: {}", packet::first_diff(&out.data, frame));
    let expect: Vec<(&str, u64)> = counter.map(|c| (c, 1)).into_iter().collect();
    assert_counter_deltas(what, &before, &after, &expect);
}

/// Runs a well-formed frame a program owns: the verdict and counter it
/// documents, and a rewrite (the malformed versions must not get one).
#[track_caller]
fn run_control(root: &TestRoot, prog: &OwnedFd, what: &str, frame: &[u8], ifindex: u32, verdict: i32, counter: &'static str) {
    let before = counters(root);
    let out = test_run(prog, frame, ifindex, 1);
    assert_eq!(out.verdict, verdict, "{what}: verdict {} ({})", out.verdict, verdict_name(out.verdict));
    assert!(out.data != frame, "{what}: a well-formed frame the program owns was not rewritten");
    if packet::parse(frame).is_ok() {
        packet::verify_checksums(&out.data).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    assert_counter_deltas(what, &before, &counters(root), &[(counter, 1)]);
}

fn flow_count(root: &TestRoot) -> usize {
    maps::count(&maps::open(&root.pins, "proxy_flows").unwrap())
}

#[test]
fn malformed_frames_through_every_program() {
    if !privileged("malformed_frames_through_every_program") {
        return;
    }
    let env = env();
    let _in_ns = NetnsGuard::enter(Some(&env.ns.name)).unwrap();
    let (v0, v0mac) = env.veths[0];
    let v2 = env.veths[2].0;
    let ctr = v4(CTR_IPS[0]);
    let gw = v4(HOST_IPS[0]);
    let arp_req = packet::arp(1, CTR0, ctr, [0; 6], gw, BCAST);

    // Per program: where frames arrive, and a TCP and a UDP packet that,
    // well formed, the program rewrites.
    let from_ctr = |p: Pkt| p.macs(CTR0, v0mac);
    let to_ctr = |p: Pkt| p.macs(v0mac, CTR0);
    let to_ext = |p: Pkt| p.macs(PEER, env.ext.1);
    let syn = |mut p: Pkt| {
        p.tcp_flags = 0x02;
        p
    };
    let bases: [(&str, u32, Pkt, Pkt, i32, &str, &str); 5] = [
        (
            // Its control rows record the flows snat's control rows reply to.
            "dnat",
            env.ext.0,
            to_ext(Pkt::tcp((v4(PLAYER), 40000), (v4(EXT_IP), 30001))),
            to_ext(Pkt::udp((v4(PLAYER), 40001), (v4(EXT_IP), 30002))),
            TC_ACT_REDIRECT,
            "dnat/redirect",
            "dnat/redirect",
        ),
        (
            "snat",
            v0,
            from_ctr(Pkt::tcp((ctr, 25565), (v4(PLAYER), 40000))),
            from_ctr(Pkt::udp((ctr, 19132), (v4(PLAYER), 40001))),
            TC_ACT_REDIRECT,
            "snat/redirect",
            "snat/redirect",
        ),
        (
            "arp",
            v0,
            from_ctr(Pkt::tcp((ctr, 40443), (ip("192.0.2.43"), 443))),
            from_ctr(Pkt::udp((ctr, 5353), (ip("8.8.8.8"), 53))),
            TC_ACT_UNSPEC,
            "",
            "",
        ),
        (
            "tproxy_ingress",
            v0,
            syn(from_ctr(Pkt::tcp((ctr, 40443), (ip("192.0.2.43"), 443)))),
            from_ctr(Pkt::udp((ctr, 5353), (ip("8.8.8.8"), 53))),
            TC_ACT_OK,
            "tproxy_ingress/tcp",
            "tproxy_ingress/dns",
        ),
        (
            // The flows these answer are recorded by tproxy_ingress's
            // control rows, which run first.
            "tproxy_egress",
            v0,
            to_ctr(Pkt::tcp((gw, 9111), (ctr, 40443))),
            to_ctr(Pkt::udp((gw, 9053), (ctr, 5353))),
            TC_ACT_OK,
            "tproxy_egress/restored",
            "tproxy_egress/restored",
        ),
    ];

    let mut rows: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, ifindex, tcp, udp, verdict, tcp_counter, udp_counter) in &bases {
        let prog = prog_fd(&env.root, name);
        let mut n = 0;
        if *name == "arp" {
            run_control(&env.root, &prog, "arp: request for the gateway", &arp_req, v0, TC_ACT_REDIRECT, "arp/replied");
        } else {
            run_control(&env.root, &prog, &format!("{name}: well-formed tcp"), &tcp.build(), *ifindex, *verdict, tcp_counter);
            run_control(&env.root, &prog, &format!("{name}: well-formed udp"), &udp.build(), *ifindex, *verdict, udp_counter);
        }
        n += 2;
        let flows_before = flow_count(&env.root);

        let mut shapes = ipv4_shapes(tcp, udp);
        shapes.extend(arp_shapes(CTR0, ctr, gw, v0mac));
        shapes.extend(non_ip_shapes(&tcp.build(), &arp_req));
        for s in &shapes {
            let (verdict, counter) = documented(name, s.class);
            run_untouched(&env.root, &prog, &format!("{name}: {}", s.name), &s.frame, *ifindex, verdict, counter);
            n += 1;
        }

        // The same frames on the unregistered veth, and IPv4 ones from a
        // source that is not the container's: the veth and the source are
        // checked before the headers, so these are dropped as such.
        if *name != "dnat" {
            for s in &shapes {
                let (mut verdict, mut counter) = documented(name, s.class);
                let ipv4 = matches!(s.class, Class::Malformed | Class::Fragment | Class::NotL4 | Class::Icmp);
                match *name {
                    "snat" if ipv4 => (verdict, counter) = (TC_ACT_SHOT, Some("snat/unregistered")),
                    "tproxy_ingress" if ipv4 => (verdict, counter) = (TC_ACT_SHOT, Some("tproxy_ingress/unregistered")),
                    "arp" if s.arp_request => (verdict, counter) = (TC_ACT_OK, Some("arp/unregistered")),
                    _ => {}
                }
                run_untouched(&env.root, &prog, &format!("{name} on the unregistered veth: {}", s.name), &s.frame, v2, verdict, counter);
                n += 1;
            }
        }
        if *name == "snat" || *name == "tproxy_ingress" {
            for s in shapes.iter().filter(|s| matches!(s.class, Class::Malformed | Class::Fragment | Class::NotL4 | Class::Icmp)) {
                let spoofed = edit(&s.frame, |f| f[26..30].copy_from_slice(&[10, 9, 9, 9]));
                let counter = if *name == "snat" { "snat/spoofed" } else { "tproxy_ingress/spoofed" };
                run_untouched(&env.root, &prog, &format!("{name}, spoofed source: {}", s.name), &spoofed, v0, TC_ACT_SHOT, Some(counter));
                n += 1;
            }
        }
        assert_eq!(
            flow_count(&env.root),
            flows_before,
            "{name}: frames that were not redirected changed proxy_flows"
        );
        rows.insert(name, n);
    }
    let total: usize = rows.values().sum();
    eprintln!("malformed-frame fixtures per program: {rows:?}, {total} in all");
}

#[test]
fn test_run_refusals() {
    if !privileged("test_run_refusals") {
        return;
    }
    let root = TestRoot::loaded();
    let ipv4 = Pkt::tcp((v4(PLAYER), 40000), (v4(EXT_IP), 30001)).build();
    let refused: Vec<(&str, Vec<u8>)> = vec![
        ("empty frame", vec![]),
        ("13 bytes", ipv4[..13].to_vec()),
        ("ipv4 ethertype, ethernet header only (14 bytes)", ipv4[..14].to_vec()),
        ("ipv4 ethertype, 33 bytes (one short of an ipv4 header)", ipv4[..33].to_vec()),
        ("ipv6 ethertype, ethernet header only", packet::ipv6_udp()[..14].to_vec()),
        ("ipv6 ethertype, 53 bytes (one short of an ipv6 header)", packet::ipv6_udp()[..53].to_vec()),
        ("3713 bytes", {
            let mut f = vec![0u8; 3713];
            put16(&mut f, 12, 0x88b5);
            f
        }),
    ];
    let accepted: Vec<(&str, Vec<u8>)> = vec![
        ("ipv4, 34 bytes", edit(&ipv4[..34], |f| put16(f, 16, 20))),
        ("arp ethertype, 14 bytes", packet::arp(1, CTR0, ip("10.0.0.2"), [0; 6], ip("10.0.0.1"), BCAST)[..14].to_vec()),
        ("802.1Q ethertype, 14 bytes", {
            let mut f = ipv4[..14].to_vec();
            put16(&mut f, 12, ETH_P_8021Q);
            f
        }),
        ("ipv6, 54 bytes", ipv6_frame(59, &[], &[])),
        ("3712 bytes", {
            let mut f = vec![0u8; 3712];
            put16(&mut f, 12, 0x88b5);
            f
        }),
    ];
    let mut n = 0;
    for name in PROGS {
        let prog = prog_fd(&root, name);
        for (what, f) in &refused {
            let before = counters(&root);
            match try_test_run(&prog, f, 0, 1) {
                Err(e) => assert_eq!(e.raw_os_error(), Some(nix::libc::EINVAL), "{name}: {what}: {e}"),
                Ok(o) => panic!("{name}: {what}: the kernel ran the program (verdict {}); update the list of refusals", o.verdict),
            }
            assert_counter_deltas(what, &before, &counters(&root), &[]);
            n += 1;
        }
        for (what, f) in &accepted {
            try_test_run(&prog, f, 0, 1).unwrap_or_else(|e| panic!("{name}: {what}: refused: {e}"));
            n += 1;
        }
    }
    eprintln!("BPF_PROG_TEST_RUN size limits: {n} rows over {} programs", PROGS.len());
}

// ---------------------------------------------------------------------------
// 2. Property tests against a reference model
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Parse {
    Ok,
    NotIpv4,
    NotL4,
    Fragment,
    Malformed,
}

/// A frame as `dp_parse_l4` reads it, worked out independently: lengths
/// from IHL, total length, TCP data offset and UDP length, all checked
/// against the frame's length.
#[derive(Clone, Debug)]
struct View {
    parse: Parse,
    /// 20 bytes of IPv4 header are there (the programs' `p.ip`).
    has_ip: bool,
    ihl: usize,
    tot: usize,
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    /// TCP only: SYN set and ACK clear (a connection being opened).
    syn_only: bool,
    /// Offset of the L4 header in the frame.
    l4: usize,
    /// Typed IPv6 (untagged): what `dp_parse_frame6` makes of it.
    ipv6: Option<View6>,
}

/// An IPv6 frame as `dp_parse_frame6` reads it, worked out independently:
/// extension headers followed (at most 8, within 256 bytes), lengths from
/// the payload length, TCP data offset and UDP length.
#[derive(Clone, Debug)]
struct View6 {
    parse: Parse,
    /// The upper-layer (or last) next-header value and its offset.
    next: u8,
    off: usize,
    /// 14 + 40 + payload length.
    end: usize,
    /// UDP only, with parse Ok.
    udp: bool,
}

fn view6(f: &[u8]) -> View6 {
    let mut v = View6 { parse: Parse::Malformed, next: 0, off: 0, end: 0, udp: false };
    if f.len() < 54 {
        return v;
    }
    v.end = 54 + usize::from(be16(f, 18));
    if f[14] >> 4 != 6 || be16(f, 18) == 0 || v.end > f.len() {
        return v;
    }
    let (mut next, mut off) = (f[20], 54);
    for _ in 0..8 {
        if !matches!(next, 0 | 43 | 60) {
            break;
        }
        if off + 8 > v.end {
            return v;
        }
        if off > 54 + 256 {
            (v.next, v.off, v.parse) = (next, off, Parse::NotL4);
            return v;
        }
        next = f[off];
        off += (usize::from(f[off + 1]) + 1) * 8;
    }
    (v.next, v.off) = (next, off);
    if next == 44 {
        v.parse = Parse::Fragment;
        return v;
    }
    if off > v.end {
        return v;
    }
    if (next != TCP && next != UDP) || off > 54 + 256 {
        v.parse = Parse::NotL4;
        return v;
    }
    let min = if next == TCP { 20 } else { 8 };
    if off + min > v.end {
        return v;
    }
    if next == TCP {
        let doff = usize::from(f[off + 12] >> 4) * 4;
        if doff < 20 || off + doff > v.end {
            return v;
        }
    } else {
        let ulen = usize::from(be16(f, off + 4));
        if ulen < 8 || off + ulen > v.end {
            return v;
        }
    }
    v.udp = next == UDP;
    v.parse = Parse::Ok;
    v
}

fn view(f: &[u8]) -> View {
    let mut v = View {
        parse: Parse::Malformed,
        has_ip: false,
        ihl: 0,
        tot: 0,
        proto: 0,
        src: [0; 4],
        dst: [0; 4],
        sport: 0,
        dport: 0,
        syn_only: false,
        l4: 0,
        ipv6: None,
    };
    if f.len() < 14 {
        return v;
    }
    if be16(f, 12) == ETH_P_IPV6 {
        v.parse = Parse::NotIpv4;
        v.ipv6 = Some(view6(f));
        return v;
    }
    if be16(f, 12) != ETH_P_IP {
        v.parse = Parse::NotIpv4;
        return v;
    }
    if f.len() < 34 {
        return v;
    }
    v.has_ip = true;
    v.src = ip4(f, 26);
    v.dst = ip4(f, 30);
    v.ihl = usize::from(f[14] & 0xf) * 4;
    v.tot = usize::from(be16(f, 16));
    v.proto = f[23];
    if f[14] >> 4 != 4 || v.ihl < 20 || v.tot < v.ihl || 14 + v.tot > f.len() {
        return v;
    }
    if be16(f, 20) & 0x3fff != 0 {
        v.parse = Parse::Fragment;
        return v;
    }
    if v.proto != TCP && v.proto != UDP {
        v.parse = Parse::NotL4;
        return v;
    }
    let min = if v.proto == TCP { 20 } else { 8 };
    if v.ihl + min > v.tot {
        return v;
    }
    v.l4 = 14 + v.ihl;
    if v.proto == TCP {
        let doff = usize::from(f[v.l4 + 12] >> 4) * 4;
        if doff < 20 || v.ihl + doff > v.tot {
            return v;
        }
    } else {
        let ulen = usize::from(be16(f, v.l4 + 4));
        if ulen < 8 || v.ihl + ulen > v.tot {
            return v;
        }
    }
    v.sport = be16(f, v.l4);
    v.dport = be16(f, v.l4 + 2);
    v.syn_only = v.proto == TCP && f[v.l4 + 13] & 0x12 == 0x02;
    v.parse = Parse::Ok;
    v
}

/// Frames BPF_PROG_TEST_RUN refuses (see the top of this file).
fn kernel_refuses(f: &[u8]) -> bool {
    f.len() < 14
        || f.len() > 3712
        || (be16(f, 12) == ETH_P_IP && f.len() < 34)
        || (be16(f, 12) == ETH_P_IPV6 && f.len() < 54)
}

#[derive(Clone, Debug, PartialEq)]
enum Rewrite {
    None,
    /// New destination (and, for dnat, destination MAC).
    Dst { mac: Option<[u8; 6]>, ip: [u8; 4], port: u16 },
    /// New source.
    Src { ip: [u8; 4], port: u16 },
    /// An ICMP error translated for the container: outer destination and
    /// MAC, embedded source address and port.
    Icmp { mac: [u8; 6], ip: [u8; 4], port: u16 },
    /// The whole expected frame (ARP replies carry no checksums).
    Frame(Vec<u8>),
}

/// proxy_flows, as the model keeps it: (container address, port, proto)
/// to (original address, proxy address, original port, proxy port).
type FlowKey = ([u8; 4], u16, u8);
type FlowVal = ([u8; 4], [u8; 4], u16, u16);
/// flows4 and host_flows4 keys: (container address, container port, peer
/// address, peer port, proto).
type PubKey = ([u8; 4], u16, [u8; 4], u16, u8);
/// flows4 values: (ext address, host port, ext ifindex, veth ifindex, slot).
type PubVal = ([u8; 4], u16, u32, u32, u32);

/// A packet's share of a published port's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PortDelta {
    slot: u32,
    inbound: bool,
    conn: bool,
}

#[derive(Debug)]
struct Expect {
    verdict: i32,
    counter: Option<&'static str>,
    rewrite: Rewrite,
    flow: Option<(FlowKey, FlowVal)>,
    pub_flow: Option<(PubKey, PubVal)>,
    host_flow: Option<(PubKey, u32)>,
    port: Option<PortDelta>,
}

fn expect(verdict: i32, counter: Option<&'static str>) -> Expect {
    Expect { verdict, counter, rewrite: Rewrite::None, flow: None, pub_flow: None, host_flow: None, port: None }
}

/// A registered veth: (container address, host address, host MAC).
type Registered = ([u8; 4], [u8; 4], [u8; 6]);

/// Source address and port, destination address and port, protocol.
type Tuple = ([u8; 4], u16, [u8; 4], u16, u8);

/// The router that sends the ICMP errors of the property cases.
const ROUTER: [u8; 4] = [192, 0, 2, 254];

/// An ICMP destination-unreachable as dnat reads it: the embedded header
/// and ports, where the checksums are, and whether the embedded L4
/// checksum is carried.
#[derive(Clone, Copy, Debug)]
struct IcmpView {
    icmp: usize,
    inner: usize,
    in_ihl: usize,
    proto: u8,
    ext: [u8; 4],
    player: [u8; 4],
    sport: u16,
    dport: u16,
    /// Offset of the embedded L4 checksum, if the translation updates it.
    l4_csum: Option<usize>,
}

fn icmp_view(f: &[u8], v: &View) -> Option<IcmpView> {
    let icmp = 14 + v.ihl;
    let avail = v.tot - v.ihl;
    if avail < 8 + 20 + 8 || f[icmp] != 3 {
        return None;
    }
    let inner = icmp + 8;
    let in_ihl = usize::from(f[inner] & 0xf) * 4;
    let proto = f[inner + 9];
    let l4_min = if proto == TCP { 20 } else { 8 };
    if f[inner] >> 4 != 4
        || in_ihl < 20
        || be16(f, inner + 6) & 0x1fff != 0
        || (proto != TCP && proto != UDP)
        || usize::from(be16(f, inner + 2)) < in_ihl + l4_min
        || 8 + in_ihl + 8 > avail
    {
        return None;
    }
    let ports = inner + in_ihl;
    let l4_csum = match proto {
        UDP if be16(f, ports + 6) != 0 => Some(ports + 6),
        TCP if 8 + in_ihl + 18 <= avail => Some(ports + 16),
        _ => None,
    };
    Some(IcmpView {
        icmp,
        inner,
        in_ihl,
        proto,
        ext: ip4(f, inner + 12),
        player: ip4(f, inner + 16),
        sport: be16(f, ports),
        dport: be16(f, ports + 2),
        l4_csum,
    })
}

/// The programs, written out again in Rust from ARCHITECTURE.md and the
/// programs' comments, over the maps as `env()` sets them up.
struct Model {
    veths: HashMap<u32, Registered>,
    /// Interface index of dpv0..dpv2.
    veth_index: [u32; 3],
    /// Interface index of the external interface (dnat's skb->ifindex).
    ext_index: u32,
    flows: HashMap<FlowKey, FlowVal>,
    pub_flows: HashMap<PubKey, PubVal>,
    host_flows: HashMap<PubKey, u32>,
    /// Per-port counters: packets in, bytes in, packets out, bytes out,
    /// connections, by slot.
    ports: BTreeMap<u32, [u64; 5]>,
}

impl Model {
    fn new(env: &Env) -> Self {
        let mut veths = HashMap::new();
        for i in 0..3 {
            if REGISTERED[i] {
                veths.insert(env.veths[i].0, (CTR_IPS[i], HOST_IPS[i], env.veths[i].1));
            }
        }
        Self {
            veths,
            veth_index: [env.veths[0].0, env.veths[1].0, env.veths[2].0],
            ext_index: env.ext.0,
            flows: HashMap::new(),
            pub_flows: HashMap::new(),
            host_flows: HashMap::new(),
            ports: BTreeMap::new(),
        }
    }

    /// The mapping (and its slot) dnat finds for (ext address, host port,
    /// proto): every mapping of PUBLISHED is on the default address.
    fn published(ext: [u8; 4], port: u16, proto: u8) -> Option<(usize, &'static Pub)> {
        if ext != EXT_IP {
            return None;
        }
        PUBLISHED.iter().enumerate().find(|(_, p)| p.host_port == port && p.proto == proto)
    }

    fn dnat(&self, f: &[u8], v: &View, ifindex: u32) -> Expect {
        // Nothing is published on IPv6 here.
        if let Some(v6) = &v.ipv6 {
            return match v6.parse {
                Parse::Ok => expect(TC_ACT_UNSPEC, Some("dnat/miss")),
                Parse::NotL4 if v6.next == 58 => expect(TC_ACT_UNSPEC, Some("dnat/icmp_passed")),
                Parse::NotL4 => expect(TC_ACT_UNSPEC, Some("dnat/not_l4")),
                Parse::Fragment => expect(TC_ACT_UNSPEC, Some("dnat/fragment")),
                _ => expect(TC_ACT_UNSPEC, Some("dnat/malformed")),
            };
        }
        match v.parse {
            Parse::NotIpv4 => return expect(TC_ACT_UNSPEC, Some("dnat/not_ipv4")),
            Parse::NotL4 if v.proto == ICMP => return self.dnat_icmp(f, v),
            Parse::NotL4 => return expect(TC_ACT_UNSPEC, Some("dnat/not_l4")),
            Parse::Fragment => return expect(TC_ACT_UNSPEC, Some("dnat/fragment")),
            Parse::Malformed => return expect(TC_ACT_UNSPEC, Some("dnat/malformed")),
            Parse::Ok => {}
        }
        match Self::published(v.dst, v.dport, v.proto) {
            None => expect(TC_ACT_UNSPEC, Some("dnat/miss")),
            Some((slot, p)) => {
                let key = (p.ctr, p.ctr_port, v.src, v.sport, p.proto);
                let val = (EXT_IP, p.host_port, ifindex, self.veth_index[p.veth], slot as u32);
                let conn = if v.proto == TCP { v.syn_only } else { !self.pub_flows.contains_key(&key) };
                Expect {
                    rewrite: Rewrite::Dst { mac: Some(p.mac), ip: p.ctr, port: p.ctr_port },
                    pub_flow: Some((key, val)),
                    port: Some(PortDelta { slot: slot as u32, inbound: true, conn }),
                    ..expect(TC_ACT_REDIRECT, Some("dnat/redirect"))
                }
            }
        }
    }

    fn dnat_icmp(&self, f: &[u8], v: &View) -> Expect {
        let pass = expect(TC_ACT_UNSPEC, Some("dnat/icmp_passed"));
        let Some(iv) = icmp_view(f, v) else { return pass };
        if v.dst != iv.ext {
            return pass;
        }
        let Some((_, p)) = Self::published(iv.ext, iv.sport, iv.proto) else { return pass };
        match self.pub_flows.get(&(p.ctr, p.ctr_port, iv.player, iv.dport, iv.proto)) {
            Some(&(ext, port, _, _, slot)) if ext == iv.ext && port == iv.sport => Expect {
                rewrite: Rewrite::Icmp { mac: p.mac, ip: p.ctr, port: p.ctr_port },
                port: Some(PortDelta { slot, inbound: true, conn: false }),
                ..expect(TC_ACT_REDIRECT, Some("dnat/icmp_translated"))
            },
            _ => pass,
        }
    }

    fn snat(&self, v: &View, ifindex: u32) -> Expect {
        // No veth is registered for IPv6 here.
        if v.ipv6.is_some() {
            return expect(TC_ACT_SHOT, Some("snat/unregistered"));
        }
        if !v.has_ip {
            return expect(TC_ACT_UNSPEC, Some("snat/handed_on"));
        }
        let Some(&(ctr, _, _)) = self.veths.get(&ifindex) else {
            return expect(TC_ACT_SHOT, Some("snat/unregistered"));
        };
        if v.src != ctr {
            return expect(TC_ACT_SHOT, Some("snat/spoofed"));
        }
        if v.parse != Parse::Ok {
            return expect(TC_ACT_UNSPEC, Some("snat/handed_on"));
        }
        // A reply only if it reverses a recorded flow, on that flow's veth.
        match self.pub_flows.get(&(v.src, v.sport, v.dst, v.dport, v.proto)) {
            Some(&(ext, port, _, veth, slot)) if veth == ifindex => Expect {
                rewrite: Rewrite::Src { ip: ext, port },
                port: Some(PortDelta { slot, inbound: false, conn: false }),
                ..expect(TC_ACT_REDIRECT, Some("snat/redirect"))
            },
            _ => expect(TC_ACT_UNSPEC, Some("snat/handed_on")),
        }
    }

    fn arp(&self, f: &[u8], ifindex: u32) -> Expect {
        if f.len() >= 14 && be16(f, 12) == ETH_P_IPV6 {
            // ICMPv6 of neighbour and router discovery and MLD goes to the
            // kernel; a solicitation, on a veth without IPv6, too.
            let v6 = view6(f);
            if v6.parse != Parse::NotL4 || v6.next != 58 || v6.off > 370 || v6.off + 4 > v6.end {
                return expect(TC_ACT_UNSPEC, None);
            }
            return match f[v6.off] {
                130..=137 | 143 => expect(TC_ACT_OK, Some("arp/nd_passed")),
                _ => expect(TC_ACT_UNSPEC, None),
            };
        }
        if f.len() < 14 || be16(f, 12) != ETH_P_ARP {
            return expect(TC_ACT_UNSPEC, None);
        }
        if f.len() < 42
            || be16(f, 14) != 1
            || be16(f, 16) != ETH_P_IP
            || f[18] != 6
            || f[19] != 4
            || be16(f, 20) != 1
        {
            return expect(TC_ACT_OK, Some("arp/passed"));
        }
        let Some(&(ctr, _, mac)) = self.veths.get(&ifindex) else {
            return expect(TC_ACT_OK, Some("arp/unregistered"));
        };
        let (sip, tip) = (ip4(f, 28), ip4(f, 38));
        if sip == [0; 4] || tip == sip || tip == ctr {
            return expect(TC_ACT_OK, Some("arp/passed"));
        }
        let mut o = f.to_vec();
        o[0..6].copy_from_slice(&f[6..12]);
        o[6..12].copy_from_slice(&mac);
        put16(&mut o, 20, 2);
        o[22..28].copy_from_slice(&mac);
        o[28..32].copy_from_slice(&tip);
        o[32..38].copy_from_slice(&f[22..28]);
        o[38..42].copy_from_slice(&sip);
        Expect { rewrite: Rewrite::Frame(o), ..expect(TC_ACT_REDIRECT, Some("arp/replied")) }
    }

    fn tproxy_ingress(&self, f: &[u8], v: &View, ifindex: u32) -> Expect {
        let drop = |c| expect(TC_ACT_SHOT, Some(c));
        if v.ipv6.is_some() {
            return drop("tproxy_ingress/unregistered");
        }
        if v.parse == Parse::NotIpv4 {
            if be16(f, 12) == ETH_P_ARP {
                return expect(TC_ACT_OK, None);
            }
            return drop("tproxy_ingress/non_ip_dropped");
        }
        if !v.has_ip {
            return drop("tproxy_ingress/malformed_dropped");
        }
        let Some(&(ctr, host, _)) = self.veths.get(&ifindex) else {
            return drop("tproxy_ingress/unregistered");
        };
        if v.src != ctr {
            return drop("tproxy_ingress/spoofed");
        }
        match v.parse {
            Parse::Fragment => return drop("tproxy_ingress/fragment_dropped"),
            Parse::NotL4 => return drop("tproxy_ingress/l4_dropped"),
            Parse::Malformed => return drop("tproxy_ingress/malformed_dropped"),
            _ => {}
        }
        let (port, counter) = if v.dport == 53 {
            (PROXY_PORTS.0, "tproxy_ingress/dns")
        } else if v.proto != TCP {
            (0, "tproxy_ingress/udp_dropped")
        } else if v.dport == 80 {
            (PROXY_PORTS.1, "tproxy_ingress/http")
        } else {
            (PROXY_PORTS.2, "tproxy_ingress/tcp")
        };
        let proxied = port != 0;
        let opens = if v.proto == TCP { v.syn_only } else { proxied };
        // 1. A packet of a recorded proxied flow.
        let key = (v.src, v.sport, v.proto);
        if let Some(&(orig, proxy_ip, orig_port, proxy_port)) = self.flows.get(&key) {
            if proxied && orig == v.dst && orig_port == v.dport {
                return Expect {
                    rewrite: Rewrite::Dst { mac: None, ip: proxy_ip, port: proxy_port },
                    ..expect(TC_ACT_OK, Some(counter))
                };
            }
        }
        // 2. A new proxied flow.
        if opens {
            return Expect {
                rewrite: Rewrite::Dst { mac: None, ip: host, port },
                flow: Some((key, (v.dst, host, v.dport, port))),
                ..expect(TC_ACT_OK, Some(counter))
            };
        }
        // 3. A reply to the host (no host socket exists here for TCP).
        if v.proto == UDP && self.host_flows.get(&(v.src, v.sport, v.dst, v.dport, UDP)) == Some(&ifindex) {
            return expect(TC_ACT_OK, Some("tproxy_ingress/host_reply"));
        }
        // 4.
        drop(if v.proto == TCP { "tproxy_ingress/no_flow_dropped" } else { "tproxy_ingress/udp_dropped" })
    }

    fn tproxy_egress(&self, v: &View, ifindex: u32) -> Expect {
        let pass = expect(TC_ACT_OK, Some("tproxy_egress/passed"));
        // No proxied IPv6 flow here: IPv6 UDP is recorded in host_flows6.
        if let Some(v6) = &v.ipv6 {
            return if v6.parse == Parse::Ok && v6.udp { expect(TC_ACT_OK, Some("tproxy_egress/host_udp")) } else { pass };
        }
        if v.parse != Parse::Ok {
            return pass;
        }
        match self.flows.get(&(v.dst, v.dport, v.proto)) {
            Some(&(orig_ip, proxy_ip, orig_port, proxy_port)) if proxy_port == v.sport && proxy_ip == v.src => Expect {
                rewrite: Rewrite::Src { ip: orig_ip, port: orig_port },
                ..expect(TC_ACT_OK, Some("tproxy_egress/restored"))
            },
            _ if v.proto == UDP => Expect {
                host_flow: Some(((v.dst, v.dport, v.src, v.sport, UDP), ifindex)),
                ..expect(TC_ACT_OK, Some("tproxy_egress/host_udp"))
            },
            _ => pass,
        }
    }

    /// Applies what the program recorded and counted.
    fn apply(&mut self, e: &Expect, bytes: usize) {
        if let Some((k, v)) = e.flow {
            self.flows.insert(k, v);
        }
        if let Some((k, v)) = e.pub_flow {
            self.pub_flows.insert(k, v);
        }
        if let Some((k, v)) = e.host_flow {
            self.host_flows.insert(k, v);
        }
        if let Some(p) = e.port {
            let c = self.ports.entry(p.slot).or_default();
            let (pk, by) = if p.inbound { (0, 1) } else { (2, 3) };
            c[pk] += 1;
            c[by] += bytes as u64;
            c[4] += u64::from(p.conn);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prog {
    Dnat,
    Snat,
    Arp,
    TproxyIngress,
    TproxyEgress,
}

impl Prog {
    fn name(self) -> &'static str {
        match self {
            Prog::Dnat => "dnat",
            Prog::Snat => "snat",
            Prog::Arp => "arp",
            Prog::TproxyIngress => "tproxy_ingress",
            Prog::TproxyEgress => "tproxy_egress",
        }
    }
    fn allowed(self) -> &'static [i32] {
        match self {
            Prog::Dnat => &[TC_ACT_UNSPEC, TC_ACT_REDIRECT],
            Prog::Snat => &[TC_ACT_UNSPEC, TC_ACT_SHOT, TC_ACT_REDIRECT],
            Prog::Arp => &[TC_ACT_UNSPEC, TC_ACT_OK, TC_ACT_REDIRECT],
            Prog::TproxyIngress => &[TC_ACT_OK, TC_ACT_SHOT],
            Prog::TproxyEgress => &[TC_ACT_OK],
        }
    }
}

/// Addresses and ports the generator likes: every address and port the
/// maps know, and a few edge values.
const ADDR_POOL: [[u8; 4]; 12] = [
    [10, 0, 0, 1],
    [10, 0, 0, 2],
    [10, 0, 0, 3],
    [10, 0, 1, 1],
    [10, 0, 1, 2],
    [10, 0, 2, 2],
    EXT_IP,
    PLAYER,
    [8, 8, 8, 8],
    [192, 0, 2, 43],
    [0, 0, 0, 0],
    [255, 255, 255, 255],
];
const PORT_POOL: [u16; 18] =
    [25565, 19132, 53, 80, 443, 30001, 30002, 30003, 30004, 30053, 9053, 9080, 9111, 0, 65535, 40000, 40001, 5353];

#[derive(Clone, Debug)]
enum Addr {
    /// The container behind the chosen veth (dnat: the player).
    Ctr,
    /// The chosen veth's own address (dnat: the external address).
    Host,
    Pool(usize),
    Any(u32),
}

#[derive(Clone, Debug)]
enum Port {
    /// A published port: its host port for dnat, its container port for
    /// the host veth programs.
    Published(usize),
    Pool(usize),
    Any(u16),
}

#[derive(Clone, Debug)]
enum Len {
    Delta(i16),
    Abs(u16),
}

impl Len {
    fn apply(&self, cur: u16) -> u16 {
        match self {
            Len::Delta(d) => (i32::from(cur) + i32::from(*d)).clamp(0, 65535) as u16,
            Len::Abs(v) => *v,
        }
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    /// XOR a byte; `at` is taken modulo the frame's length.
    Flip { at: usize, xor: u8 },
    /// Keep 14 + keep % (len - 13) bytes.
    Cut { keep: usize },
    TotLen { len: Len, fix: bool },
    Ihl { ihl: u8, fix: bool },
    /// TCP data offset (low 4 bits) or UDP length, at the parsed IHL.
    L4Len { len: Len },
    Frag { frag: u16, fix: bool },
    Proto { proto: u8, fix: bool },
    /// Trailing bytes beyond what the headers claim.
    Append { n: usize },
    EtherType { ethertype: u16 },
}

#[derive(Clone, Debug)]
struct ArpCase {
    op: u16,
    sip: Addr,
    tip: Addr,
    hrd: u16,
    pro: u16,
    hln: u8,
    pln: u8,
}

#[derive(Clone, Debug)]
struct Case {
    veth: usize,
    proto: u8,
    src: Addr,
    dst: Addr,
    sport: Port,
    dport: Port,
    /// Build the packet to be one the program rewrites (before any
    /// mutation): for dnat and snat, traffic of published port n; for
    /// tproxy_ingress, the container's own traffic; for tproxy_egress, an
    /// answer to seeded flow n; for arp, a request from the container.
    aim: Option<usize>,
    ip_options: Vec<u8>,
    tcp_options: Vec<u8>,
    tcp_flags: u8,
    payload: Vec<u8>,
    udp_no_csum: bool,
    frag: u16,
    ttl: u8,
    pad: usize,
    vlan: Option<u16>,
    arp: Option<ArpCase>,
    /// dnat, aimed: an ICMP error (type, code, bytes of the packet it
    /// carries) about the host's reply of seeded flow n instead.
    icmp: Option<(u8, u8, usize)>,
    mutations: Vec<Mutation>,
}

fn addr_strategy() -> BoxedStrategy<Addr> {
    prop_oneof![
        3 => Just(Addr::Ctr),
        1 => Just(Addr::Host),
        3 => (0..ADDR_POOL.len()).prop_map(Addr::Pool),
        2 => any::<u32>().prop_map(Addr::Any),
    ]
    .boxed()
}

fn port_strategy() -> BoxedStrategy<Port> {
    prop_oneof![
        3 => (0..PUBLISHED.len()).prop_map(Port::Published),
        3 => (0..PORT_POOL.len()).prop_map(Port::Pool),
        2 => any::<u16>().prop_map(Port::Any),
    ]
    .boxed()
}

fn len_strategy() -> BoxedStrategy<Len> {
    prop_oneof![3 => (-40i16..40).prop_map(Len::Delta), 1 => any::<u16>().prop_map(Len::Abs)].boxed()
}

fn mutation_strategy() -> BoxedStrategy<Mutation> {
    prop_oneof![
        4 => (0usize..120, 1u8..=255).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        2 => any::<usize>().prop_map(|keep| Mutation::Cut { keep }),
        2 => (len_strategy(), any::<bool>()).prop_map(|(len, fix)| Mutation::TotLen { len, fix }),
        1 => (0u8..16, any::<bool>()).prop_map(|(ihl, fix)| Mutation::Ihl { ihl, fix }),
        2 => len_strategy().prop_map(|len| Mutation::L4Len { len }),
        1 => (prop_oneof![Just(0x2000u16), Just(0x0001), Just(0x8000), any::<u16>()], any::<bool>())
            .prop_map(|(frag, fix)| Mutation::Frag { frag, fix }),
        1 => (prop_oneof![Just(TCP), Just(UDP), Just(ICMP), any::<u8>()], any::<bool>())
            .prop_map(|(proto, fix)| Mutation::Proto { proto, fix }),
        1 => (1usize..64).prop_map(|n| Mutation::Append { n }),
        1 => prop_oneof![Just(ETH_P_IP), Just(ETH_P_ARP), Just(ETH_P_IPV6), Just(ETH_P_8021Q), any::<u16>()]
            .prop_map(|ethertype| Mutation::EtherType { ethertype }),
    ]
    .boxed()
}

fn arp_strategy() -> BoxedStrategy<ArpCase> {
    (
        prop_oneof![6 => Just(1u16), 2 => Just(2u16), 1 => any::<u16>()],
        addr_strategy(),
        addr_strategy(),
        prop_oneof![8 => Just(1u16), 1 => any::<u16>()],
        prop_oneof![8 => Just(ETH_P_IP), 1 => any::<u16>()],
        prop_oneof![8 => Just(6u8), 1 => any::<u8>()],
        prop_oneof![8 => Just(4u8), 1 => any::<u8>()],
    )
        .prop_map(|(op, sip, tip, hrd, pro, hln, pln)| ArpCase { op, sip, tip, hrd, pro, hln, pln })
        .boxed()
}

fn case_strategy(prog: Prog, seeded_flows: usize) -> BoxedStrategy<Case> {
    let arp_weight = if prog == Prog::Arp { 6 } else { 1 };
    let aims = match prog {
        Prog::Dnat | Prog::Snat => PUBLISHED.len(),
        Prog::TproxyEgress => seeded_flows,
        _ => 2,
    };
    let options = || prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(any::<u8>(), 0..=40)];
    let head = (
        0usize..3,
        prop_oneof![4 => Just(TCP), 4 => Just(UDP), 1 => Just(ICMP), 1 => any::<u8>()],
        addr_strategy(),
        addr_strategy(),
        port_strategy(),
        port_strategy(),
    );
    let icmp_weight = if prog == Prog::Dnat { 2 } else { 0 };
    let body = (
        prop_oneof![1 => Just(None), 1 => (0..aims).prop_map(Some)],
        options(),
        options(),
        prop_oneof![3 => Just(0x18u8), 3 => Just(0x02u8), 1 => Just(0x12u8), 1 => Just(0x10u8), 1 => any::<u8>()],
        prop::collection::vec(any::<u8>(), 0..160),
        prop_oneof![4 => Just(false), 1 => Just(true)],
        prop_oneof![6 => Just(0x4000u16), 3 => Just(0u16), 1 => any::<u16>()],
    );
    let tail = (
        any::<u8>(),
        prop_oneof![4 => Just(0usize), 1 => 1usize..40],
        prop_oneof![19 => Just(None), 1 => any::<u16>().prop_map(Some)],
        prop_oneof![9 => Just(None), arp_weight => arp_strategy().prop_map(Some)],
        prop_oneof![
            3 => Just(None),
            icmp_weight => (prop_oneof![6 => Just(3u8), 1 => any::<u8>()], 0u8..16, 20usize..600).prop_map(Some)
        ],
        prop_oneof![9 => Just(Vec::new()), 11 => prop::collection::vec(mutation_strategy(), 1..4)],
    );
    (head, body, tail)
        .prop_map(
            |(
                (veth, proto, src, dst, sport, dport),
                (aim, ip_options, tcp_options, tcp_flags, payload, udp_no_csum, frag),
                (ttl, pad, vlan, arp, icmp, mutations),
            )| Case {
                veth,
                proto,
                src,
                dst,
                sport,
                dport,
                aim,
                ip_options,
                tcp_options,
                tcp_flags,
                payload,
                udp_no_csum,
                frag,
                ttl,
                pad,
                vlan,
                arp,
                icmp,
                mutations,
            },
        )
        .boxed()
}

/// Flows seeded into proxy_flows for the tproxy_egress property: two per
/// proxy port and protocol for each registered container.
fn seeded_flows() -> Vec<(FlowKey, FlowVal)> {
    let mut v = Vec::new();
    for i in 0..2 {
        for j in 0..12u16 {
            let proto = if j % 2 == 0 { TCP } else { UDP };
            let (orig_port, proxy_port) = [(443, PROXY_PORTS.2), (53, PROXY_PORTS.0), (80, PROXY_PORTS.1)][usize::from(j % 3)];
            let ctr_port = if j < 2 { PUBLISHED[j as usize].ctr_port } else { 40000 + j };
            v.push(((CTR_IPS[i], ctr_port, proto), ([192, 0, 2, 1 + j as u8], HOST_IPS[i], orig_port, proxy_port)));
        }
    }
    v
}

/// Published flows seeded into flows4 for the dnat (ICMP errors) and snat
/// (replies) properties: player port 40000 + n for published port n.
fn seeded_pub_flows(model: &Model) -> Vec<(PubKey, PubVal)> {
    PUBLISHED
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                (p.ctr, p.ctr_port, PLAYER, 40000 + i as u16, p.proto),
                (EXT_IP, p.host_port, model.ext_index, model.veth_index[p.veth], i as u32),
            )
        })
        .collect()
}

fn pub_key(k: &PubKey) -> types::flow4_key {
    types::flow4_key::new(v4(k.0), k.1, v4(k.2), k.3, proto_of(k.4))
}

fn flow_key(k: &FlowKey) -> types::ctr_endpoint {
    types::ctr_endpoint::new(v4(k.0), k.1, proto_of(k.2))
}

/// The frame and the ifindex the program sees, for one case.
fn build_case(prog: Prog, env: &Env, flows: &[(FlowKey, FlowVal)], c: &Case) -> (Vec<u8>, u32) {
    let mut veth = c.veth;
    let (mut src_sel, sport_sel, proto) = (c.src.clone(), c.sport.clone(), c.proto);
    let mut tcp_flags = c.tcp_flags;
    let mut arp = c.arp.clone();
    let mut aimed: Option<Tuple> = None;
    match (prog, c.aim) {
        (_, None) => {}
        (Prog::Dnat, Some(i)) => {
            let p = &PUBLISHED[i];
            aimed = Some((PLAYER, 40000, EXT_IP, p.host_port, p.proto));
        }
        (Prog::Snat, Some(i)) => {
            let p = &PUBLISHED[i];
            veth = p.veth;
            aimed = Some((CTR_IPS[p.veth], p.ctr_port, PLAYER, 40000 + i as u16, p.proto));
        }
        (Prog::TproxyIngress, Some(i)) => {
            veth = i;
            src_sel = Addr::Ctr;
            // The container opens a connection: a SYN.
            tcp_flags = 0x02;
        }
        (Prog::TproxyEgress, Some(i)) => {
            let ((ctr, ctr_port, p), (_, proxy_ip, _, proxy_port)) = flows[i];
            aimed = Some((proxy_ip, proxy_port, ctr, ctr_port, p));
        }
        (Prog::Arp, Some(i)) => {
            veth = i;
            arp = Some(ArpCase {
                op: 1,
                sip: Addr::Ctr,
                tip: arp.map(|a| a.tip).unwrap_or(Addr::Host),
                hrd: 1,
                pro: ETH_P_IP,
                hln: 6,
                pln: 4,
            });
        }
    }
    let ifindex = if prog == Prog::Dnat { env.ext.0 } else { env.veths[veth].0 };
    let addr = |a: &Addr| -> [u8; 4] {
        match a {
            Addr::Ctr if prog == Prog::Dnat => PLAYER,
            Addr::Host if prog == Prog::Dnat => EXT_IP,
            Addr::Ctr => CTR_IPS[veth],
            Addr::Host => HOST_IPS[veth],
            Addr::Pool(i) => ADDR_POOL[*i],
            Addr::Any(x) => x.to_be_bytes(),
        }
    };
    let port = |p: &Port| -> u16 {
        match p {
            Port::Published(i) if prog == Prog::Dnat => PUBLISHED[*i].host_port,
            Port::Published(i) => PUBLISHED[*i].ctr_port,
            Port::Pool(i) => PORT_POOL[*i],
            Port::Any(x) => *x,
        }
    };
    let icmp_about = match (prog, c.aim, c.icmp) {
        (Prog::Dnat, Some(i), Some(icmp)) => Some((&PUBLISHED[i], i, icmp)),
        _ => None,
    };
    let mut frame = if let Some((p, i, (icmp_type, code, keep))) = icmp_about {
        // The host's reply of seeded flow i, as the router saw it.
        let mut h = Pkt::tcp((v4(EXT_IP), p.host_port), (v4(PLAYER), 40000 + i as u16));
        h.proto = p.proto;
        h.payload = c.payload.clone();
        h.udp_no_csum = c.udp_no_csum;
        h.ip_options = c.ip_options[..c.ip_options.len() / 4 * 4].to_vec();
        let emb = h.ip_packet();
        let mut e = Pkt::icmp_error(v4(ROUTER), v4(EXT_IP), icmp_type, code, 1400, &emb[..keep.min(emb.len())]);
        e.eth_src = PEER;
        e.eth_dst = env.ext.1;
        let mut f = e.build();
        f.extend(std::iter::repeat_n(0xa5, c.pad));
        f
    } else if let Some(a) = &arp {
        let mut f = packet::arp(a.op, ctr_mac(veth), v4(addr(&a.sip)), [0; 6], v4(addr(&a.tip)), BCAST);
        put16(&mut f, 14, a.hrd);
        put16(&mut f, 16, a.pro);
        f[18] = a.hln;
        f[19] = a.pln;
        f.extend(std::iter::repeat_n(0, c.pad));
        f
    } else {
        let (src, sport, dst, dport, proto) = aimed.unwrap_or((addr(&src_sel), port(&sport_sel), addr(&c.dst), port(&c.dport), proto));
        let mut p = Pkt::tcp((v4(src), sport), (v4(dst), dport));
        p.proto = proto;
        p.ip_options = c.ip_options[..c.ip_options.len() / 4 * 4].to_vec();
        if proto == TCP {
            p.tcp_options = c.tcp_options[..c.tcp_options.len() / 4 * 4].to_vec();
            p.tcp_flags = tcp_flags;
        }
        p.payload = c.payload.clone();
        p.udp_no_csum = c.udp_no_csum;
        p.frag = c.frag;
        p.ttl = c.ttl;
        p.eth_src = ctr_mac(veth);
        p.eth_dst = env.veths[veth].1;
        let mut f = p.build();
        f.extend(std::iter::repeat_n(0xa5, c.pad));
        f
    };
    if let Some(tci) = c.vlan {
        frame = tagged(&frame, ETH_P_8021Q, tci);
    }
    for m in &c.mutations {
        mutate(&mut frame, m);
    }
    (frame, ifindex)
}

fn ctr_mac(veth: usize) -> [u8; 6] {
    [CTR0, CTR1, CTR2][veth]
}

fn mutate(f: &mut Vec<u8>, m: &Mutation) {
    let ip_hdr = f.len() >= 34;
    match m {
        Mutation::Flip { at, xor } => {
            let i = at % f.len();
            f[i] ^= xor;
        }
        Mutation::Cut { keep } if f.len() > 14 => {
            let n = 14 + keep % (f.len() - 13);
            f.truncate(n);
        }
        Mutation::TotLen { len, fix } if ip_hdr => {
            let v = len.apply(be16(f, 16));
            put16(f, 16, v);
            if *fix {
                fix_ip_csum(f);
            }
        }
        Mutation::Ihl { ihl, fix } if ip_hdr => {
            f[14] = (f[14] & 0xf0) | ihl;
            if *fix {
                fix_ip_csum(f);
            }
        }
        Mutation::L4Len { len } if ip_hdr => {
            let l4 = 14 + usize::from(f[14] & 0xf) * 4;
            match f[23] {
                TCP if l4 + 13 <= f.len() => {
                    let doff = len.apply(u16::from(f[l4 + 12] >> 4)) as u8 & 0xf;
                    f[l4 + 12] = (f[l4 + 12] & 0x0f) | (doff << 4);
                }
                UDP if l4 + 6 <= f.len() => {
                    let v = len.apply(be16(f, l4 + 4));
                    put16(f, l4 + 4, v);
                }
                _ => {}
            }
        }
        Mutation::Frag { frag, fix } if ip_hdr => {
            put16(f, 20, *frag);
            if *fix {
                fix_ip_csum(f);
            }
        }
        Mutation::Proto { proto, fix } if ip_hdr => {
            f[23] = *proto;
            if *fix {
                fix_ip_csum(f);
            }
        }
        Mutation::Append { n } => f.extend(std::iter::repeat_n(0x5a, *n)),
        Mutation::EtherType { ethertype } => put16(f, 12, *ethertype),
        _ => {}
    }
}

/// One's-complement residue of a checksummed range: 0 when it verifies.
/// Incremental updates must keep it, whatever it is.
fn residue(sum: u32) -> u16 {
    match packet::csum_fold(sum) {
        0xffff => 0,
        r => r,
    }
}

fn ip_residue(f: &[u8], v: &View) -> u16 {
    residue(packet::csum_add(0, &f[14..14 + v.ihl]))
}

fn l4_residue(f: &[u8], v: &View) -> u16 {
    let seg = &f[v.l4..14 + v.tot];
    residue(packet::csum_add(packet::pseudo_sum(v4(ip4(f, 26)), v4(ip4(f, 30)), v.proto, seg.len()), seg))
}

fn l4_csum_at(v: &View) -> usize {
    v.l4 + if v.proto == TCP { 16 } else { 6 }
}

/// Checks one run against the model's expectation.
fn check_run(input: &[u8], v: &View, out: &RunOut, e: &Expect) -> Result<(), String> {
    if out.verdict != e.verdict {
        return Err(format!(
            "verdict {} ({}), the model says {} ({})",
            out.verdict,
            verdict_name(out.verdict),
            e.verdict,
            verdict_name(e.verdict)
        ));
    }
    if out.data.len() != input.len() {
        return Err(format!("output is {} bytes, input {}", out.data.len(), input.len()));
    }
    let (mac, ip_at, ip, port_at, port) = match &e.rewrite {
        Rewrite::None => {
            return if out.data == input {
                Ok(())
            } else {
                Err(format!("not the program's packet, yet rewritten: {}", packet::first_diff(&out.data, input)))
            };
        }
        Rewrite::Frame(want) => {
            return if out.data == *want {
                Ok(())
            } else {
                Err(format!("reply differs from the model's: {}", packet::first_diff(&out.data, want)))
            };
        }
        Rewrite::Icmp { mac, ip, port } => return check_icmp(input, v, out, *mac, *ip, *port),
        Rewrite::Dst { mac, ip, port } => (*mac, 30, *ip, v.l4 + 2, *port),
        Rewrite::Src { ip, port } => (None, 26, *ip, v.l4, *port),
    };
    // (c) Exactly the rewritten fields and the two checksums changed.
    let mut want = input.to_vec();
    if let Some(m) = mac {
        want[0..6].copy_from_slice(&m);
    }
    want[ip_at..ip_at + 4].copy_from_slice(&ip);
    put16(&mut want, port_at, port);
    let csum = l4_csum_at(v);
    for i in [24, 25, csum, csum + 1] {
        want[i] = out.data[i];
    }
    if out.data != want {
        return Err(format!("bytes beyond the rewritten fields changed: {}", packet::first_diff(&out.data, &want)));
    }
    // (a) It still parses as IPv4 TCP or UDP.
    let parsed = packet::parse(&out.data)?;
    if parsed.proto != TCP && parsed.proto != UDP {
        return Err(format!("rewritten packet has protocol {}", parsed.proto));
    }
    // (b) Checksums: the incremental updates keep each residue, so a
    // checksum that verified still does.
    if ip_residue(&out.data, v) != ip_residue(input, v) {
        return Err("IPv4 header checksum residue changed".into());
    }
    if v.proto == UDP && be16(input, csum) == 0 {
        if be16(&out.data, csum) != 0 {
            return Err("a UDP packet without a checksum got one".into());
        }
    } else if l4_residue(&out.data, v) != l4_residue(input, v) {
        return Err("L4 checksum residue changed".into());
    }
    if packet::verify_checksums(input).is_ok() {
        packet::verify_checksums(&out.data).map_err(|e| format!("input checksums were valid, output: {e}"))?;
    }
    Ok(())
}

/// Checks a translated ICMP error: exactly the outer destination and MAC,
/// the embedded source address and port, and the checksums covering them
/// changed; every checksum keeps its residue (a checksum that verified
/// still does).
fn check_icmp(input: &[u8], v: &View, out: &RunOut, mac: [u8; 6], ip: [u8; 4], port: u16) -> Result<(), String> {
    let iv = icmp_view(input, v).ok_or("the model translated an ICMP packet dnat cannot read")?;
    let o = &out.data;
    let mut want = input.to_vec();
    want[0..6].copy_from_slice(&mac);
    want[30..34].copy_from_slice(&ip);
    want[iv.inner + 12..iv.inner + 16].copy_from_slice(&ip);
    put16(&mut want, iv.inner + iv.in_ihl, port);
    let mut sums = vec![24, iv.icmp + 2, iv.inner + 10];
    sums.extend(iv.l4_csum);
    for at in &sums {
        want[*at..at + 2].copy_from_slice(&o[*at..at + 2]);
    }
    if *o != want {
        return Err(format!("bytes beyond the translated fields changed: {}", packet::first_diff(o, &want)));
    }
    let end = 14 + v.tot;
    let range = |f: &[u8], a: usize, b: usize| residue(packet::csum_add(0, &f[a..b]));
    if range(o, 14, 14 + v.ihl) != range(input, 14, 14 + v.ihl) {
        return Err("outer IPv4 header checksum residue changed".into());
    }
    if range(o, iv.icmp, end) != range(input, iv.icmp, end) {
        return Err("ICMP checksum residue changed".into());
    }
    if range(o, iv.inner, iv.inner + iv.in_ihl) != range(input, iv.inner, iv.inner + iv.in_ihl) {
        return Err("embedded IPv4 header checksum residue changed".into());
    }
    if iv.proto == UDP && iv.l4_csum.is_none() && be16(o, iv.inner + iv.in_ihl + 6) != 0 {
        return Err("an embedded UDP datagram without a checksum got one".into());
    }
    // The embedded L4 checksum, when the whole embedded packet is there.
    let in_tot = usize::from(be16(input, iv.inner + 2));
    if let Some(at) = iv.l4_csum {
        if iv.inner + in_tot <= end && in_tot >= iv.in_ihl {
            let seg = |f: &[u8]| {
                let l4 = &f[iv.inner + iv.in_ihl..iv.inner + in_tot];
                let sum = packet::pseudo_sum(v4(ip4(f, iv.inner + 12)), v4(ip4(f, iv.inner + 16)), iv.proto, l4.len());
                residue(packet::csum_add(sum, l4))
            };
            if seg(o) != seg(input) {
                return Err(format!("embedded L4 checksum residue changed (field at {at})"));
            }
        }
    }
    if packet::verify_checksums(input).is_ok() {
        packet::verify_checksums(o).map_err(|e| format!("input checksums were valid, output: {e}"))?;
    }
    Ok(())
}

/// What the property runs tally: counters the model expects to move, and
/// a breakdown for the report.
#[derive(Default)]
struct Tally {
    cases: u64,
    refused: u64,
    rewritten: u64,
    mutated: u64,
    counters: BTreeMap<&'static str, u64>,
    first_failure: Option<String>,
}

const COUNTED: [&str; 6] = ["mappings", "dnat4", "veths", "proxy_flows", "flows4", "host_flows4"];

fn map_counts(root: &TestRoot) -> [usize; 6] {
    COUNTED.map(|m| maps::count(&maps::open(&root.pins, m).unwrap()))
}

/// port_stats of the slots PUBLISHED uses, summed over CPUs, in the
/// model's order (packets in, bytes in, packets out, bytes out, conns).
fn port_stats(root: &TestRoot) -> BTreeMap<u32, [u64; 5]> {
    let m = maps::open(&root.pins, "port_stats").unwrap();
    (0..PUBLISHED.len() as u32)
        .map(|s| {
            let c = maps::port_counters(&m, s).unwrap();
            (s, [c.pkts_in, c.bytes_in, c.pkts_out, c.bytes_out, c.conns])
        })
        .collect()
}

fn property_cases(default: u32) -> u32 {
    if std::env::var("DATAPATH_LONG_TESTS").as_deref() == Ok("1") {
        default * 10
    } else {
        default
    }
}

/// Runs `cases` random cases through one program, checking each against
/// the model, then the counters and map sizes against the model's tally.
fn property(prog: Prog, default_cases: u32) {
    let cases = property_cases(default_cases);
    let env = env();
    let flows_map = maps::open(&env.root.pins, "proxy_flows").unwrap();
    let pub_map = maps::open(&env.root.pins, "flows4").unwrap();
    let host_map = maps::open(&env.root.pins, "host_flows4").unwrap();
    let mut model = Model::new(&env);
    let seeded = if prog == Prog::TproxyEgress { seeded_flows() } else { Vec::new() };
    let seed = |model: &mut Model| {
        for (k, val) in &seeded {
            let fv = types::flow_orig::new(v4(val.0), val.2, v4(val.1), val.3);
            flows_map.update(bytes_of(&flow_key(k)), bytes_of(&fv), MapFlags::ANY).unwrap();
            model.flows.insert(*k, *val);
        }
        if matches!(prog, Prog::Dnat | Prog::Snat) {
            for (k, v) in seeded_pub_flows(model) {
                let fv = types::flow4_value::new(v4(v.0), v.1, v.2, v.3, v.4);
                pub_map.update(bytes_of(&pub_key(&k)), bytes_of(&fv), MapFlags::ANY).unwrap();
                model.pub_flows.insert(k, v);
            }
        }
    };
    seed(&mut model);
    let _in_ns = NetnsGuard::enter(Some(&env.ns.name)).unwrap();
    let fd = prog_fd(&env.root, prog.name());
    let counts_before = map_counts(&env.root);
    let counters_before = counters(&env.root);
    let ports_before = port_stats(&env.root);
    let model = RefCell::new(model);
    let tally = RefCell::new(Tally::default());
    let started = Instant::now();

    let check_maps = |model: &Model| -> Result<(), String> {
        let now = map_counts(&env.root);
        let mut want = counts_before;
        want[3] = model.flows.len();
        want[4] = model.pub_flows.len();
        want[5] = model.host_flows.len();
        if now != want {
            return Err(format!("map sizes {COUNTED:?} are {now:?}, the model says {want:?}"));
        }
        let ports = port_stats(&env.root);
        for (slot, want) in &model.ports {
            let (b, a) = (ports_before[slot], ports[slot]);
            let got: Vec<u64> = (0..5).map(|i| a[i] - b[i]).collect();
            if got != want {
                return Err(format!("port_stats slot {slot} moved by {got:?}, the model says {want:?}"));
            }
        }
        Ok(())
    };

    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&case_strategy(prog, seeded.len()), |case| {
        let (frame, ifindex) = build_case(prog, &env, &seeded, &case);
        let mut model = model.borrow_mut();
        let mut tally = tally.borrow_mut();
        tally.cases += 1;
        let fail = |tally: &mut Tally, msg: String| -> Result<(), TestCaseError> {
            let msg = format!("{}: {msg}; frame {:02x?} on ifindex {ifindex}", prog.name(), frame);
            tally.first_failure.get_or_insert(msg.clone());
            Err(TestCaseError::fail(msg))
        };
        if !case.mutations.is_empty() {
            tally.mutated += 1;
        }
        let run = try_test_run(&fd, &frame, ifindex, 1);
        if kernel_refuses(&frame) {
            tally.refused += 1;
            return match run {
                Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => Ok(()),
                Err(e) => fail(&mut tally, format!("refused with {e}, expected EINVAL")),
                Ok(o) => fail(&mut tally, format!("the kernel ran a frame it was expected to refuse (verdict {})", o.verdict)),
            };
        }
        let out = match run {
            Ok(o) => o,
            Err(e) => return fail(&mut tally, format!("BPF_PROG_TEST_RUN failed: {e}")),
        };
        if !prog.allowed().contains(&out.verdict) {
            return fail(&mut tally, format!("verdict {} is not one {} may return", out.verdict, prog.name()));
        }
        let v = view(&frame);
        let e = match prog {
            Prog::Dnat => model.dnat(&frame, &v, ifindex),
            Prog::Snat => model.snat(&v, ifindex),
            Prog::Arp => model.arp(&frame, ifindex),
            Prog::TproxyIngress => model.tproxy_ingress(&frame, &v, ifindex),
            Prog::TproxyEgress => model.tproxy_egress(&v, ifindex),
        };
        if let Err(msg) = check_run(&frame, &v, &out, &e) {
            return fail(&mut tally, msg);
        }
        if e.rewrite != Rewrite::None {
            tally.rewritten += 1;
        }
        if let Some(c) = e.counter {
            *tally.counters.entry(c).or_default() += 1;
        }
        model.apply(&e, frame.len());
        if let Some((k, val)) = e.flow {
            let got: Option<types::flow_orig> = maps::lookup(&flows_map, &flow_key(&k)).unwrap();
            let got = got.map(|g| (g.orig_ip().octets(), g.proxy_ip().octets(), g.orig_port(), g.proxy_port()));
            if got != Some(val) {
                return fail(&mut tally, format!("proxy_flows holds {got:?} for {k:?}, expected {val:?}"));
            }
        }
        if let Some((k, val)) = e.pub_flow {
            let got: Option<types::flow4_value> = maps::lookup(&pub_map, &pub_key(&k)).unwrap();
            let got = got.map(|g| (g.ext_addr().octets(), g.host_port(), g.ext_ifindex, g.veth_ifindex, g.slot));
            if got != Some(val) {
                return fail(&mut tally, format!("flows4 holds {got:?} for {k:?}, expected {val:?}"));
            }
        }
        if let Some((k, val)) = e.host_flow {
            let got: Option<types::host_flow_value> = maps::lookup(&host_map, &pub_key(&k)).unwrap();
            if got.map(|g| g.veth_ifindex) != Some(val) {
                return fail(&mut tally, format!("host_flows4 holds {got:?} for {k:?}, expected veth {val}"));
            }
        }
        if tally.cases % 5000 == 0 {
            if let Err(msg) = check_maps(&model) {
                return fail(&mut tally, msg);
            }
            // Keep the LRU maps far from their capacity, where they would
            // start evicting and the model would no longer know their size.
            if model.flows.len() + model.pub_flows.len() + model.host_flows.len() > 30000 {
                for k in model.flows.keys() {
                    flows_map.delete(bytes_of(&flow_key(k))).unwrap();
                }
                for k in model.pub_flows.keys() {
                    pub_map.delete(bytes_of(&pub_key(k))).unwrap();
                }
                for k in model.host_flows.keys() {
                    host_map.delete(bytes_of(&pub_key(k))).unwrap();
                }
                model.flows.clear();
                model.pub_flows.clear();
                model.host_flows.clear();
                seed(&mut model);
            }
        }
        Ok(())
    });
    let tally = tally.into_inner();
    if let Err(e) = result {
        panic!(
            "{}: property failed after {} cases.\nfirst failure: {}\nminimal case: {e}",
            prog.name(),
            tally.cases,
            tally.first_failure.as_deref().unwrap_or("-")
        );
    }
    if let Err(msg) = check_maps(&model.borrow()) {
        panic!("{}: {msg}", prog.name());
    }
    let expect: Vec<(&str, u64)> = tally.counters.iter().map(|(k, v)| (*k, *v)).collect();
    assert_counter_deltas(&format!("{} property", prog.name()), &counters_before, &counters(&env.root), &expect);
    eprintln!(
        "property {}: {} cases in {:.1?} ({} mutated, {} refused by the kernel, {} rewritten); counters {:?}",
        prog.name(),
        tally.cases,
        started.elapsed(),
        tally.mutated,
        tally.refused,
        tally.rewritten,
        tally.counters
    );
    assert_eq!(tally.cases, u64::from(cases), "{}: not every case ran", prog.name());
    // The generator must keep reaching the interesting paths.
    assert!(tally.rewritten * 20 >= tally.cases, "{}: under 5% of cases were rewritten", prog.name());
    assert!(tally.refused > 0 || prog == Prog::Arp, "{}: no case hit the kernel's refusals", prog.name());
}

/// The checker itself: a right rewrite passes, and every kind of wrong
/// one is caught. Needs no BPF.
#[test]
fn checker_catches_bad_rewrites() {
    let input = Pkt::tcp((v4(PLAYER), 40000), (v4(EXT_IP), 30001)).macs(PEER, CTR1);
    let mut good = input.clone();
    good.eth_dst = CTR0;
    good.dst = v4(CTR_IPS[0]);
    good.dport = 25565;
    let (input, good) = (input.build(), good.build());
    let v = view(&input);
    assert_eq!(v.parse, Parse::Ok);
    let e = Expect {
        rewrite: Rewrite::Dst { mac: Some(CTR0), ip: CTR_IPS[0], port: 25565 },
        ..expect(TC_ACT_REDIRECT, Some("dnat/redirect"))
    };
    let run = |data: Vec<u8>, verdict| RunOut { verdict, data, duration_ns: 0 };
    check_run(&input, &v, &run(good.clone(), TC_ACT_REDIRECT), &e).expect("a right rewrite");
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("ip checksum off by one", edit_raw(&good, |f| f[25] ^= 1)),
        ("tcp checksum off by one", edit_raw(&good, |f| f[14 + 20 + 17] ^= 1)),
        ("ttl changed", edit_raw(&good, |f| f[22] -= 1)),
        ("eth source changed", edit_raw(&good, |f| f[6] ^= 2)),
        ("wrong destination port", edit_raw(&good, |f| put16(f, 14 + 20 + 2, 25566))),
        ("source port changed", edit_raw(&good, |f| put16(f, 14 + 20, 40001))),
        ("payload changed", edit_raw(&good, |f| *f.last_mut().unwrap() ^= 0xff)),
        ("a byte longer", edit_raw(&good, |f| f.push(0))),
        ("not rewritten", input.clone()),
    ];
    for (what, data) in bad {
        assert!(check_run(&input, &v, &run(data, TC_ACT_REDIRECT), &e).is_err(), "the checker missed: {what}");
    }
    assert!(check_run(&input, &v, &run(good.clone(), TC_ACT_UNSPEC), &e).is_err(), "the checker missed a wrong verdict");
    let pass = expect(TC_ACT_UNSPEC, Some("dnat/miss"));
    assert!(check_run(&input, &v, &run(good, TC_ACT_UNSPEC), &pass).is_err(), "the checker missed a rewrite of a passed packet");

    // A UDP packet without a checksum must not get one.
    let mut u = Pkt::udp((v4(PLAYER), 40001), (v4(EXT_IP), 30002)).macs(PEER, CTR1);
    u.udp_no_csum = true;
    let mut ugood = u.clone();
    ugood.eth_dst = CTR0;
    ugood.dst = v4(CTR_IPS[0]);
    ugood.dport = 19132;
    let (u, ugood) = (u.build(), ugood.build());
    let uv = view(&u);
    let ue = Expect { rewrite: Rewrite::Dst { mac: Some(CTR0), ip: CTR_IPS[0], port: 19132 }, ..e };
    check_run(&u, &uv, &run(ugood.clone(), TC_ACT_REDIRECT), &ue).expect("a right udp rewrite");
    let with_csum = edit_raw(&ugood, |f| put16(f, 14 + 20 + 6, 0x1234));
    assert!(check_run(&u, &uv, &run(with_csum, TC_ACT_REDIRECT), &ue).is_err(), "the checker missed a made-up udp checksum");

    // An ICMP error about the host's reply, translated for the container.
    let mut host = Pkt::tcp((v4(EXT_IP), 30001), (v4(PLAYER), 40000));
    host.payload = vec![7; 40];
    let mut ctr = host.clone();
    ctr.src = v4(CTR_IPS[0]);
    ctr.sport = 25565;
    let input = Pkt::icmp_error(v4(ROUTER), v4(EXT_IP), 3, 4, 1400, &host.ip_packet()).macs(PEER, CTR1).build();
    let good = Pkt::icmp_error(v4(ROUTER), v4(CTR_IPS[0]), 3, 4, 1400, &ctr.ip_packet()).macs(PEER, CTR0).build();
    let iv = view(&input);
    assert_eq!((iv.parse, iv.proto), (Parse::NotL4, ICMP));
    let ie = Expect {
        rewrite: Rewrite::Icmp { mac: CTR0, ip: CTR_IPS[0], port: 25565 },
        ..expect(TC_ACT_REDIRECT, Some("dnat/icmp_translated"))
    };
    check_run(&input, &iv, &run(good.clone(), TC_ACT_REDIRECT), &ie).expect("a right translation");
    let inner = 14 + 20 + 8;
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("outer ip checksum off by one", edit_raw(&good, |f| f[25] ^= 1)),
        ("icmp checksum off by one", edit_raw(&good, |f| f[14 + 20 + 3] ^= 1)),
        ("embedded ip checksum off by one", edit_raw(&good, |f| f[inner + 11] ^= 1)),
        ("embedded tcp checksum off by one", edit_raw(&good, |f| f[inner + 20 + 17] ^= 1)),
        ("embedded source port wrong", edit_raw(&good, |f| put16(f, inner + 20, 25566))),
        ("embedded destination changed", edit_raw(&good, |f| f[inner + 19] ^= 1)),
        ("outer destination wrong", edit_raw(&good, |f| f[33] ^= 1)),
        ("mtu changed", edit_raw(&good, |f| f[14 + 20 + 7] ^= 1)),
        ("not translated", input.clone()),
    ];
    for (what, data) in bad {
        assert!(check_run(&input, &iv, &run(data, TC_ACT_REDIRECT), &ie).is_err(), "the checker missed: {what}");
    }
}

fn edit_raw(f: &[u8], e: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = f.to_vec();
    e(&mut v);
    v
}

#[test]
fn property_dnat() {
    if !privileged("property_dnat") {
        return;
    }
    property(Prog::Dnat, 50_000);
}

#[test]
fn property_snat() {
    if !privileged("property_snat") {
        return;
    }
    property(Prog::Snat, 50_000);
}

#[test]
fn property_arp() {
    if !privileged("property_arp") {
        return;
    }
    property(Prog::Arp, 20_000);
}

#[test]
fn property_tproxy_ingress() {
    if !privileged("property_tproxy_ingress") {
        return;
    }
    property(Prog::TproxyIngress, 50_000);
}

#[test]
fn property_tproxy_egress() {
    if !privileged("property_tproxy_egress") {
        return;
    }
    property(Prog::TproxyEgress, 40_000);
}

// ---------------------------------------------------------------------------
// 6. Full maps
// ---------------------------------------------------------------------------

/// A namespace with one host veth, dpv0 (10.0.0.1).
fn one_veth_ns() -> TestNs {
    let ns = TestNs::new();
    ns.ip("link add dpv0 type veth peer name dpc0");
    ns.ip("addr add 10.0.0.1/32 dev dpv0");
    ns.ip("link set dpv0 up");
    ns
}

#[test]
fn full_maps_are_a_clear_error() {
    if !privileged("full_maps_are_a_clear_error") {
        return;
    }
    let root = TestRoot::loaded();
    let ns = one_veth_ns();
    let (ifindex, _) = ns.iface("dpv0");
    let dir = root.pins.root();
    let cap = datapath::abi::capacity::PUBLISHED as usize;
    assert_eq!(cap, 65536, "65,536 published ports");
    let n = Some(ns.name.as_str());
    let counts = || published::counts(&root.pins).unwrap();

    // 65,535 TCP host ports and one UDP one, each to its own container,
    // on the default external address.
    let o = ctl(dir, n, &["map", "snat", "set", "198.51.100.1", "dpv0"]);
    assert_ok("snat set", &o);
    let entry = |i: usize| Mapping {
        ext_addr: Ext::Default,
        host_port: (i % 65535) as u16 + 1,
        proto: if i < 65535 { Proto::Tcp } else { Proto::Udp },
        ctr_ip: Ipv4Addr::from(0x0a80_0000 + i as u32).into(),
        ctr_port: 25565,
        ctr_mac: CTR0,
        veth_ifindex: ifindex,
    };
    let t = Instant::now();
    let mut txn = maps::Txn::begin(&root.pins).unwrap();
    for i in 0..cap {
        assert_eq!(published::add(&mut txn, &entry(i)).unwrap(), Change::Added, "adding entry {i}");
    }
    txn.commit().unwrap();
    let fill = t.elapsed();
    assert_eq!(counts(), [cap; 3]);
    let before = ops::dnat_list(&root.pins).unwrap();

    let o = ctl(dir, n, &["map", "dnat", "add", "2", "10.0.0.2", "dpv0", "02:c0:00:00:00:02", "--proto", "udp"]);
    assert_one_line_failure("map dnat add to a full map", &o);
    assert!(o.stderr.contains("65536") && o.stderr.contains("full"), "the error must say full and name the capacity: {:?}", o.stderr);
    assert_eq!(counts(), [cap; 3], "a refused add changed the map sizes");
    assert!(ops::dnat_list(&root.pins).unwrap() == before, "a refused add changed the mappings");

    // Full or not, the identical mapping again is a no-op success.
    let o = ctl(dir, n, &["--json", "map", "dnat", "add", "1", "10.128.0.0", "dpv0", "02:c0:00:00:00:02"]);
    assert_ok("identical add to a full map", &o);
    assert_eq!(o.stdout.trim(), r#"{"result":"unchanged"}"#);
    assert_eq!(counts(), [cap; 3]);

    // With room made, the refused mapping goes in (on the freed slot).
    assert_ok("map dnat del", &ctl(dir, n, &["map", "dnat", "del", "1"]));
    assert_eq!(counts(), [cap - 1; 3]);
    assert_ok("add after a delete", &ctl(dir, n, &["map", "dnat", "add", "2", "10.0.0.2", "dpv0", "02:c0:00:00:00:02", "--proto", "udp"]));
    assert_eq!(counts(), [cap; 3]);
    assert_eq!(ops::dnat_get(&root.pins, Ext::Default, 2, Proto::Udp).unwrap().slot, 0, "the freed slot is reused");

    // Registered veths: the same, with veths full of other interfaces.
    let veths = maps::open(&root.pins, "veths").unwrap();
    let vcap = datapath::abi::capacity::VETHS;
    let info = types::veth_info::new(ip("10.9.0.2"), ip("10.9.0.1"), CTR1);
    for i in 0..vcap {
        veths.update(bytes_of(&(1_000_000 + i)), bytes_of(&info), MapFlags::NO_EXIST).unwrap();
    }
    let o = ctl(dir, n, &["map", "veth", "add", "dpv0", "10.0.0.2"]);
    assert_one_line_failure("map veth add to a full map", &o);
    assert!(o.stderr.contains(&vcap.to_string()) && o.stderr.contains("full"), "the error must say full and name the capacity: {:?}", o.stderr);
    assert_eq!(maps::count(&veths), vcap as usize);
    assert!(maps::VethMap::open(&root.pins).unwrap().get(ifindex).unwrap().is_none());
    eprintln!("full maps: mappings and dnat4 filled to {cap} in {fill:.1?}; veths to {vcap}");
}

// ---------------------------------------------------------------------------
// 7. Pins are root's alone
// ---------------------------------------------------------------------------

/// A cgroup of the test's own; removed on drop.
struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    fn new() -> Self {
        let path = datapath::kernel::attach::cgroup2_root().unwrap().join(unique("dpt"));
        std::fs::create_dir(&path).unwrap();
        Self { path }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// A bpf filesystem of the test's own, mounted 0755 under /tmp, so that
/// an unprivileged user can reach the pin root and only the pin root's
/// own permissions keep them out (/sys/fs/bpf itself is often 0700,
/// which would make the check say nothing).
struct OpenBpffs {
    path: PathBuf,
}

impl OpenBpffs {
    fn new() -> Self {
        let path = std::env::temp_dir().join(unique("dptfs"));
        std::fs::create_dir(&path).unwrap();
        let me = Self { path };
        sh(&format!("mount -t bpf -o mode=0755 bpf {}", me.path.display()));
        me
    }
}

impl Drop for OpenBpffs {
    fn drop(&mut self) {
        let _ = ops::unload(&datapath::kernel::pins::PinRoot::new(self.path.join("root")));
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

fn require_setpriv() {
    let ok = Command::new("setpriv").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "setpriv (util-linux) is needed to run commands as an unprivileged user");
}

/// Runs a command as nobody (uid and gid 65534, no supplementary groups).
fn as_nobody(cmd: &str, args: &[&str], pin_root: &Path) -> CtlOut {
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", cmd])
        .args(args)
        .env("DATAPATH_PIN_ROOT", pin_root)
        .output()
        .expect("running setpriv");
    CtlOut {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Every directory under the pin root is 0700 and every pin 0600, all
/// owned by root. Returns how many pins there are.
#[track_caller]
fn check_pin_modes(root: &Path) -> usize {
    let mut pins = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let m = std::fs::metadata(&d).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o700, "{} is not mode 0700", d.display());
        assert_eq!((m.uid(), m.gid()), (0, 0), "{} is not root's", d.display());
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                dirs.push(e.path());
                continue;
            }
            assert_eq!(m.permissions().mode() & 0o7777, 0o600, "{} is not mode 0600", e.path().display());
            assert_eq!((m.uid(), m.gid()), (0, 0), "{} is not root's", e.path().display());
            pins += 1;
        }
    }
    pins
}

#[track_caller]
fn assert_denied(what: &str, o: &CtlOut) {
    assert!(o.code.is_some_and(|c| c != 0), "{what}: an unprivileged user succeeded: {:?}", o.stdout);
    assert!(o.stderr.contains("Permission denied"), "{what}: expected permission denied, got {:?}", o.stderr);
}

#[test]
fn pins_are_root_only() {
    if !privileged("pins_are_root_only") {
        return;
    }
    require_setpriv();
    let cg = TestCgroup::new();
    let root = TestRoot::loaded();
    // A cgroup attachment: the cgroup holds its program, nothing is
    // pinned for it.
    ops::attach_getsockopt(&root.pins, Some(&cg.path)).unwrap();
    let dir = root.pins.root();
    let pins = check_pin_modes(dir);
    let maps_n = std::fs::read_dir(root.pins.maps_dir()).unwrap().count();
    let progs_n = std::fs::read_dir(root.pins.progs_dir()).unwrap().count();
    let links_n = std::fs::read_dir(root.pins.links_dir()).unwrap().count();
    let progs = datapath::abi::PROG_NAMES.len();
    assert_eq!((maps_n, progs_n, links_n), (maps::name::ALL.len(), progs, 0), "pins under {}", dir.display());
    assert_eq!(pins, maps::name::ALL.len() + progs);

    let maps_dir = root.pins.maps_dir();
    let dnat_pin = root.pins.map("dnat4");
    assert_denied("ls the maps", &as_nobody("ls", &[maps_dir.to_str().unwrap()], dir));
    assert_denied("cat a pinned map", &as_nobody("cat", &[dnat_pin.to_str().unwrap()], dir));
    let o = as_nobody(env!("CARGO_BIN_EXE_datapathctl"), &["map", "dnat", "list"], dir);
    assert_one_line_failure("datapathctl as nobody", &o);
    assert!(o.stderr.contains("root"), "the error must say root is needed: {:?}", o.stderr);
}

#[test]
fn pin_root_keeps_out_users_that_can_reach_it() {
    if !privileged("pin_root_keeps_out_users_that_can_reach_it") {
        return;
    }
    require_setpriv();
    let fs = OpenBpffs::new();
    let root = fs.path.join("root");
    assert_ok("load on an open bpffs", &ctl(&root, None, &["load"]));
    check_pin_modes(&root);

    // The filesystem itself is open to everyone...
    let o = as_nobody("ls", &[fs.path.to_str().unwrap()], &root);
    assert_ok("ls the open bpffs as nobody", &o);
    assert!(o.stdout.contains("root"), "nobody should see the pin root: {:?}", o.stdout);
    // ...the pin root is not.
    let maps_dir = root.join("maps");
    let dnat_pin = maps_dir.join("dnat4");
    assert_denied("ls the pin root", &as_nobody("ls", &[root.to_str().unwrap()], &root));
    assert_denied("ls the maps", &as_nobody("ls", &[maps_dir.to_str().unwrap()], &root));
    assert_denied("cat a pinned map", &as_nobody("cat", &[dnat_pin.to_str().unwrap()], &root));
    assert_denied("stat a pinned map", &as_nobody("stat", &[dnat_pin.to_str().unwrap()], &root));
    let o = as_nobody(env!("CARGO_BIN_EXE_datapathctl"), &["map", "dnat", "list"], &root);
    assert_one_line_failure("datapathctl as nobody", &o);

    assert_ok("unload", &ctl(&root, None, &["unload"]));
    assert!(!root.exists(), "unload left {} behind", root.display());
}

// ---------------------------------------------------------------------------
// VLAN tags carried as skb metadata
// ---------------------------------------------------------------------------

use nix::libc;

/// A raw AF_PACKET socket on one interface of a namespace, reporting VLAN
/// tags that travel as skb metadata (PACKET_AUXDATA).
struct RawSocket {
    fd: OwnedFd,
}

impl RawSocket {
    fn open(ns: &TestNs, dev: &str) -> Self {
        let _g = NetnsGuard::enter(Some(&ns.name)).unwrap();
        let ifindex = datapath::net::netif::index_of(dev).unwrap();
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto)) };
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        // SAFETY: fd is fresh and owned by nobody else.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: sll is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(raw, (&sll as *const libc::sockaddr_ll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32)
        };
        assert_eq!(rc, 0, "binding to {dev}: {}", std::io::Error::last_os_error());
        let one: libc::c_int = 1;
        // SAFETY: one is a c_int of the size given.
        let rc = unsafe {
            libc::setsockopt(raw, libc::SOL_PACKET, libc::PACKET_AUXDATA, (&one as *const libc::c_int).cast(), 4)
        };
        assert_eq!(rc, 0, "PACKET_AUXDATA: {}", std::io::Error::last_os_error());
        Self { fd }
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: frame outlives the call; its length is given.
        let n = unsafe { libc::send(std::os::fd::AsRawFd::as_raw_fd(&self.fd), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, frame.len() as isize, "send: {}", std::io::Error::last_os_error());
    }

    /// Every frame received so far that was not sent from here, with the
    /// VLAN tag the kernel kept beside it, if any.
    fn drain(&self) -> Vec<(Vec<u8>, Option<u16>)> {
        let mut out = Vec::new();
        loop {
            let mut buf = vec![0u8; 2048];
            let mut ctl = [0u64; 16];
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
            // SAFETY: msghdr is plain data; all-zero is valid.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = ctl.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&ctl);
            // SAFETY: every buffer msg points at lives across the call.
            let n = unsafe { libc::recvmsg(std::os::fd::AsRawFd::as_raw_fd(&self.fd), &mut msg, libc::MSG_DONTWAIT) };
            if n < 0 {
                break;
            }
            buf.truncate(n as usize);
            let mut tci = None;
            // SAFETY: walking the control messages the kernel wrote into
            // ctl, with the libc macros, inside msg_controllen.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                        let aux: libc::tpacket_auxdata = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                            tci = Some(aux.tp_vlan_tci);
                        }
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                out.push((buf, tci));
            }
        }
        out
    }
}

/// The VLAN tags of the UDP frames to `dport` that reach `sock` within a
/// second (the frames cross the backlog queue of two veths).
fn udp_to(sock: &RawSocket, dport: u16) -> Vec<Option<u16>> {
    let started = Instant::now();
    let mut seen = Vec::new();
    while seen.is_empty() && started.elapsed() < std::time::Duration::from_secs(1) {
        std::thread::sleep(std::time::Duration::from_millis(10));
        seen.extend(
            sock.drain()
                .into_iter()
                .filter(|(f, _)| packet::parse(f).is_ok_and(|p| p.proto == UDP && p.dport == dport))
                .map(|(_, tci)| tci),
        );
    }
    seen
}

/// A frame that arrives on a veth with an 802.1Q tag in it has the tag
/// moved into skb metadata (skb_vlan_untag in __netif_receive_skb_core)
/// before TC ingress, so the programs see the frame as untagged IPv4.
/// Any container that may send raw frames can do that. A reply from a
/// published port on VLAN 100 must not leave the external NIC on VLAN
/// 100, and a frame that arrives on VLAN 100 of the external NIC must not
/// be published into a container. Untagged frames are the control.
#[test]
fn vlan_tags_do_not_cross_the_datapath() {
    if !privileged("vlan_tags_do_not_cross_the_datapath") {
        return;
    }
    let root = TestRoot::loaded();
    let (host, ctr, ext) = (TestNs::new(), TestNs::new(), TestNs::new());
    host.ip(&format!("link add dpv0 type veth peer name dpc0 netns {}", ctr.name));
    host.ip("addr add 10.0.0.1/32 dev dpv0");
    host.ip("link set dpv0 up");
    host.ip(&format!("link add dpext type veth peer name dpextp netns {}", ext.name));
    host.ip("addr add 198.51.100.1/24 dev dpext");
    host.ip("link set dpext up");
    ctr.ip("link set dpc0 up");
    ext.ip("link set dpextp up");
    let (_, v0mac) = host.iface("dpv0");
    let (_, extmac) = host.iface("dpext");
    let (_, ctrmac) = ctr.iface("dpc0");
    let (_, playermac) = ext.iface("dpextp");
    let mac = |m: [u8; 6]| datapath::net::netif::format_mac(&m);
    host.ip("route add 203.0.113.9/32 dev dpext");
    host.ip(&format!("neigh add 203.0.113.9 lladdr {} dev dpext", mac(playermac)));
    let dir = root.pins.root();
    let n = Some(host.name.as_str());
    for args in [
        vec!["map", "veth", "add", "dpv0", "10.0.0.2"],
        vec!["map", "snat", "set", "198.51.100.1", "dpext"],
        vec!["map", "dnat", "add", "30002", "10.0.0.2", "dpv0", &mac(ctrmac), "--proto", "udp", "--to-port", "19132"],
        vec!["attach", "host", "dpv0"],
        vec!["attach", "dnat", "dpext"],
    ] {
        assert_ok(&args.join(" "), &ctl(dir, n, &args));
    }
    let ctr_sock = RawSocket::open(&ctr, "dpc0");
    let ext_sock = RawSocket::open(&ext, "dpextp");

    let mut seen = Vec::new();
    for vlan in [None, Some(100u16)] {
        // Player -> published port (which records the flow a reply needs).
        let mut req = Pkt::udp((v4(PLAYER), 40001), (v4(EXT_IP), 30002)).macs(playermac, extmac);
        req.vlan = vlan;
        ctr_sock.drain();
        let before = counters(&root);
        ext_sock.send(&req.build());
        let inside = udp_to(&ctr_sock, 19132);
        let published = counters(&root)["dnat/redirect"] - before["dnat/redirect"];

        // Container -> player, from the published port.
        let mut reply = Pkt::udp((ip("10.0.0.2"), 19132), (v4(PLAYER), 40001)).macs(ctrmac, v0mac);
        reply.vlan = vlan;
        ext_sock.drain();
        let before = counters(&root);
        ctr_sock.send(&reply.build());
        let out = udp_to(&ext_sock, 40001);
        let redirected = counters(&root)["snat/redirect"] - before["snat/redirect"];
        eprintln!(
            "vlan {vlan:?}: reply redirected {redirected}, seen outside as {out:?}; request redirected {published}, seen inside as {inside:?}"
        );
        seen.push((vlan, redirected, out, published, inside));
    }

    // The control: untagged traffic crosses both ways, untagged.
    let (_, r, out, p, inside) = &seen[0];
    assert_eq!((*r, out.as_slice(), *p, inside.as_slice()), (1, &[None][..], 1, &[None][..]), "untagged control");
    // At TC ingress a VLAN tag is never in the packet data: the kernel has
    // already moved it into skb->vlan_tci. The programs check
    // skb->vlan_present, so a container cannot choose the external VLAN its
    // replies go to, and frames from another VLAN of the external network
    // are not published into containers.
    let (_, r, out, p, inside) = &seen[1];
    assert!(
        out.is_empty() && inside.is_empty(),
        "VLAN 100 crossed the datapath: reply redirected {r} and seen outside as {out:?}; request redirected {p} and seen inside as {inside:?}"
    );
}
