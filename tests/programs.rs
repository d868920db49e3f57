//! Every program path through BPF_PROG_TEST_RUN, as a table of fixtures:
//! input frame, map state, expected verdict, expected output bytes and
//! exactly which counters move, per reason and per published port. Output
//! checksums are verified from scratch by `common::packet::verify_checksums`.
//! Frames whose headers lie beyond the skb's linear head, which
//! BPF_PROG_TEST_RUN cannot make, go through the attached programs from a
//! packet socket (`headers_beyond_the_linear_head`).

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use common::packet::{self, arp, ipv6_udp, Pkt, TCP, UDP};
use common::*;
use datapath::abi::{bytes_of, types, Proto};
use datapath::maps::{self, Ext, PortCounters};
use datapath::net::netns::NetnsGuard;
use datapath::ops::{self, DnatAdd};
use libbpf_rs::{MapCore, MapFlags};
use nix::libc;

const CTR0: [u8; 6] = [0x02, 0xc0, 0, 0, 0, 0x02];
const CTR1: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x02];
const PEER: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x09];
const BCAST: [u8; 6] = [0xff; 6];

fn player() -> Ipv4Addr {
    ip("203.0.113.9")
}
/// The default external address.
fn ext_ip() -> Ipv4Addr {
    ip("198.51.100.1")
}
/// A second external address, not a default one.
fn ext2() -> Ipv4Addr {
    ip("198.51.100.2")
}
/// A router on the way to the player, sender of ICMP errors.
fn router() -> Ipv4Addr {
    ip("192.0.2.254")
}

/// Slots of the mappings `env()` publishes, in the order it publishes them.
const SLOT_30001: u32 = 0;
const SLOT_30002: u32 = 1;
const SLOT_30003: u32 = 2;
const SLOT_FIXED: u32 = 3;
const SLOT_EXT2: u32 = 4;
const SLOTS: u32 = 5;

/// A loaded pin root and a namespace with three host veths (dpv0 and dpv1
/// registered for 10.0.0.2 and 10.0.1.2, dpv2 not), an external veth with
/// three external addresses, and five mappings:
///
/// | slot | published on      | port/proto | to                |
/// |------|-------------------|------------|-------------------|
/// | 0    | default           | 30001/tcp  | 10.0.0.2:25565    |
/// | 1    | default           | 30002/udp  | 10.0.0.2:19132    |
/// | 2    | default           | 30003/tcp  | 10.0.1.2:25565    |
/// | 3    | 10.0.0.3          | 25565/tcp  | 10.0.0.3:25565    |
/// | 4    | 198.51.100.2      | 30001/tcp  | 10.0.1.2:25565    |
///
/// The fourth is a fixed point for repeated runs: the rewrite leaves the
/// packet on the hit path.
struct Env {
    root: TestRoot,
    ns: TestNs,
    v0: (u32, [u8; 6]),
    v1: (u32, [u8; 6]),
    v2: (u32, [u8; 6]),
    ext: (u32, [u8; 6]),
}

#[allow(clippy::too_many_arguments)]
fn publish(e: &TestRoot, ns: &TestNs, ext: Ext, port: u16, ctr: &str, veth: &str, mac: [u8; 6], proto: Proto, to: u16) {
    let a = DnatAdd { ext, host_port: port, ctr_ip: ip(ctr).into(), veth: veth.into(), ctr_mac: mac, proto, to_port: to };
    ops::dnat_add(&e.pins, Some(&ns.name), &a).expect("map dnat add");
}

fn env() -> Env {
    let root = TestRoot::loaded();
    let ns = TestNs::new();
    for i in 0..3 {
        ns.ip(&format!("link add dpv{i} type veth peer name dpc{i}"));
        ns.ip(&format!("addr add 10.0.{i}.1/32 dev dpv{i}"));
        ns.ip(&format!("link set dpv{i} up"));
    }
    ns.ip("route add 10.0.0.2/32 dev dpv0");
    ns.ip("link add dpext type veth peer name dpextp");
    ns.ip("link set dpext up");
    let n = Some(ns.name.as_str());
    ops::veth_add(&root.pins, n, "dpv0", ip("10.0.0.2")).unwrap();
    ops::veth_add(&root.pins, n, "dpv1", ip("10.0.1.2")).unwrap();
    ops::snat_set(&root.pins, n, ext_ip(), "dpext").unwrap();
    ops::external_add(&root.pins, n, ext2(), "dpext", false).unwrap();
    ops::external_add(&root.pins, n, ip("10.0.0.3"), "dpext", false).unwrap();
    publish(&root, &ns, Ext::Default, 30001, "10.0.0.2", "dpv0", CTR0, Proto::Tcp, 25565);
    publish(&root, &ns, Ext::Default, 30002, "10.0.0.2", "dpv0", CTR0, Proto::Udp, 19132);
    publish(&root, &ns, Ext::Default, 30003, "10.0.1.2", "dpv1", CTR1, Proto::Tcp, 25565);
    publish(&root, &ns, Ext::Addr(ip("10.0.0.3").into()), 25565, "10.0.0.3", "dpv0", CTR0, Proto::Tcp, 25565);
    publish(&root, &ns, Ext::Addr(ext2().into()), 30001, "10.0.1.2", "dpv1", CTR1, Proto::Tcp, 25565);
    let (v0, v1, v2, ext) = (ns.iface("dpv0"), ns.iface("dpv1"), ns.iface("dpv2"), ns.iface("dpext"));
    let env = Env { root, ns, v0, v1, v2, ext };
    for (port, ext, slot) in [
        (30001, Ext::Default, SLOT_30001),
        (30003, Ext::Default, SLOT_30003),
        (25565, Ext::Addr(ip("10.0.0.3").into()), SLOT_FIXED),
        (30001, Ext::Addr(ext2().into()), SLOT_EXT2),
    ] {
        assert_eq!(ops::dnat_get(&env.root.pins, ext, port, Proto::Tcp).unwrap().slot, slot);
    }
    assert_eq!(ops::dnat_get(&env.root.pins, Ext::Default, 30002, Proto::Udp).unwrap().slot, SLOT_30002);
    env
}

/// Per-port counters of the slots `env()` uses.
fn port_counters(env: &Env) -> Vec<PortCounters> {
    let m = maps::open(&env.root.pins, "port_stats").unwrap();
    (0..SLOTS).map(|s| maps::port_counters(&m, s).unwrap()).collect()
}

/// Expected per-port change: packets and bytes in, packets and bytes out,
/// connections.
#[derive(Clone, Copy, Debug)]
struct Acct {
    slot: u32,
    delta: PortCounters,
}

fn acct_in(slot: u32, bytes: usize, conns: u64) -> Option<Acct> {
    let delta = PortCounters { pkts_in: 1, bytes_in: bytes as u64, conns, ..Default::default() };
    Some(Acct { slot, delta })
}

fn acct_out(slot: u32, bytes: usize) -> Option<Acct> {
    Some(Acct { slot, delta: PortCounters { pkts_out: 1, bytes_out: bytes as u64, ..Default::default() } })
}

/// One row of a fixture table.
struct Fx {
    name: &'static str,
    prog: &'static str,
    /// skb->ifindex the program sees (0: none).
    ifindex: u32,
    input: Vec<u8>,
    verdict: i32,
    /// Expected output; None: the input, untouched.
    output: Option<Vec<u8>>,
    counters: Vec<(&'static str, u64)>,
    /// The published port the packet is accounted to; None: no port's
    /// counters move.
    acct: Option<Acct>,
}

fn run_table(env: &Env, table: Vec<Fx>) {
    let _in_ns = NetnsGuard::enter(Some(&env.ns.name)).unwrap();
    for fx in table {
        let prog = prog_fd(&env.root, fx.prog);
        let before = counters(&env.root);
        let ports_before = port_counters(env);
        let out = try_test_run(&prog, &fx.input, fx.ifindex, 1)
            .unwrap_or_else(|e| panic!("{}: BPF_PROG_TEST_RUN failed: {e}", fx.name));
        let after = counters(&env.root);
        let ports_after = port_counters(env);
        assert_eq!(
            out.verdict,
            fx.verdict,
            "{}: verdict {} ({}), expected {} ({})",
            fx.name,
            out.verdict,
            verdict_name(out.verdict),
            fx.verdict,
            verdict_name(fx.verdict)
        );
        let want = fx.output.as_ref().unwrap_or(&fx.input);
        assert!(
            out.data == *want,
            "{}: output differs from expected: {}",
            fx.name,
            packet::first_diff(&out.data, want)
        );
        if fx.output.is_some() && packet::parse(want).is_ok() {
            if let Err(e) = packet::verify_checksums(&out.data) {
                panic!("{}: rewritten packet fails the independent checksum check: {e}", fx.name);
            }
        }
        assert_counter_deltas(fx.name, &before, &after, &fx.counters);
        for slot in 0..SLOTS as usize {
            let (b, a) = (ports_before[slot], ports_after[slot]);
            let got = PortCounters {
                pkts_in: a.pkts_in - b.pkts_in,
                bytes_in: a.bytes_in - b.bytes_in,
                pkts_out: a.pkts_out - b.pkts_out,
                bytes_out: a.bytes_out - b.bytes_out,
                conns: a.conns - b.conns,
            };
            let want = fx.acct.filter(|x| x.slot as usize == slot).map(|x| x.delta).unwrap_or_default();
            assert_eq!(got, want, "{}: counters of slot {slot} moved by {got:?}, expected {want:?}", fx.name);
        }
    }
}

fn fx(
    name: &'static str,
    prog: &'static str,
    ifindex: u32,
    input: Vec<u8>,
    verdict: i32,
    output: Option<Vec<u8>>,
    counter: &'static str,
) -> Fx {
    Fx { name, prog, ifindex, input, verdict, output, counters: vec![(counter, 1)], acct: None }
}

impl Fx {
    fn acct(mut self, a: Option<Acct>) -> Self {
        self.acct = a;
        self
    }
    fn uncounted(mut self) -> Self {
        self.counters.clear();
        self
    }
}

fn set_tot_len(mut f: Vec<u8>, tot: u16) -> Vec<u8> {
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let ihl = usize::from(f[14] & 0xf) * 4;
    let c = packet::csum_fold(packet::csum_add(0, &f[14..14 + ihl]));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// `p` with two payload bytes chosen so that its correct TCP checksum is
/// 0x0000, a value a checksum update must not take for "no checksum"
/// (only UDP has one).
fn tcp_csum_zero(mut p: Pkt) -> Pkt {
    let off = 14 + 20 + p.ip_options.len() + 16;
    p.payload = vec![0, 0];
    let f = p.build();
    p.payload = f[off..off + 2].to_vec();
    assert_eq!(&p.build()[off..off + 2], &[0, 0], "the TCP checksum must come out 0x0000");
    p
}

/// `p` with the first IP identification for which rewriting `from` to `to`
/// in the IPv4 header checksum (RFC 1624, over 16-bit words as they lie in
/// memory, as the programs compute it) carries out of the first fold of
/// the sum: a fold done once instead of twice leaves that checksum off by
/// one.
fn ip_csum_carries_twice(mut p: Pkt, from: Ipv4Addr, to: Ipv4Addr) -> Pkt {
    let w = |b: [u8; 2]| u32::from(u16::from_ne_bytes(b));
    let (f, t) = (from.octets(), to.octets());
    for id in 0..=u16::MAX {
        p.id = id;
        let frame = p.build();
        let check = w([frame[24], frame[25]]);
        let s = (!check & 0xffff) + (!w([f[0], f[1]]) & 0xffff) + (!w([f[2], f[3]]) & 0xffff) + w([t[0], t[1]]) + w([t[2], t[3]]);
        if (s & 0xffff) + (s >> 16) > 0xffff {
            return p;
        }
    }
    panic!("no identification makes the checksum update carry twice");
}

fn to_ext(env: &Env, p: Pkt) -> Pkt {
    p.macs(PEER, env.ext.1)
}

/// The published flow of (container address, port, player port, proto).
fn published_flow(env: &Env, ctr: &str, ctr_port: u16, player_port: u16, proto: Proto) -> Option<maps::PublishedFlow> {
    maps::published_flows(&env.root.pins).unwrap().into_iter().find(|f| {
        (f.ctr_ip, f.ctr_port, f.player_ip, f.player_port, f.proto) == (ip(ctr), ctr_port, player(), player_port, proto)
    })
}

/// A player's packet to a published port and what dnat makes of it.
fn inbound(env: &Env, p: Pkt, ctr: &str, ctr_port: u16, mac: [u8; 6]) -> (Pkt, Pkt) {
    let p = to_ext(env, p);
    let mut o = p.clone();
    o.dst = ip(ctr);
    o.dport = ctr_port;
    o.eth_dst = mac;
    (p, o)
}

#[test]
fn dnat_fixtures() {
    if !privileged("dnat_fixtures") {
        return;
    }
    let env = env();
    let e = env.ext.0;
    let (hit_tcp, hit_tcp_out) = inbound(&env, Pkt::tcp((player(), 40000), (ext_ip(), 30001)), "10.0.0.2", 25565, CTR0);
    let (hit_udp, hit_udp_out) = inbound(&env, Pkt::udp((player(), 40001), (ext_ip(), 30002)), "10.0.0.2", 19132, CTR0);

    let mut udp_nocsum = hit_udp.clone();
    udp_nocsum.udp_no_csum = true;
    let mut udp_nocsum_out = hit_udp_out.clone();
    udp_nocsum_out.udp_no_csum = true;

    let mut opts = hit_tcp.clone();
    // Record Route (7 bytes, one slot) and End of Options: IHL 7.
    opts.ip_options = vec![7, 7, 4, 0, 0, 0, 0, 0];
    let mut opts_out = hit_tcp_out.clone();
    opts_out.ip_options = opts.ip_options.clone();

    let mut syn = hit_tcp.clone();
    syn.tcp_options = vec![2, 4, 0x05, 0xb4, 1, 1, 4, 2]; // MSS, NOP, NOP, SACK-ok
    syn.tcp_flags = 0x02;
    let mut syn_out = hit_tcp_out.clone();
    syn_out.tcp_options = syn.tcp_options.clone();
    syn_out.tcp_flags = 0x02;
    let mut synack = syn.clone();
    synack.tcp_flags = 0x12;
    let mut synack_out = syn_out.clone();
    synack_out.tcp_flags = 0x12;

    let (zero, mut zero_out) = inbound(&env, tcp_csum_zero(Pkt::tcp((player(), 40000), (ext_ip(), 30001))), "10.0.0.2", 25565, CTR0);
    zero_out.payload = zero.payload.clone();

    let (carry, carry_out) = inbound(&env, ip_csum_carries_twice(Pkt::tcp((player(), 40000), (ext_ip(), 30001)), ext_ip(), ip("10.0.0.2")), "10.0.0.2", 25565, CTR0);

    let (second, second_out) = inbound(&env, Pkt::tcp((player(), 40002), (ext2(), 30001)), "10.0.1.2", 25565, CTR1);
    let (third, third_out) = inbound(&env, Pkt::tcp((player(), 40003), (ext_ip(), 30003)), "10.0.1.2", 25565, CTR1);

    let mut nonfirst = hit_tcp.clone();
    nonfirst.frag = 0x0010;
    let mut first = hit_tcp.clone();
    first.frag = 0x2000;
    let mut udp_first = hit_udp.clone();
    udp_first.frag = 0x2000;
    let mut vlan = hit_tcp.clone();
    vlan.vlan = Some(100);
    let mut bad_doff = hit_tcp.build();
    bad_doff[14 + 20 + 12] = 0x40; // data offset 4 (< 5)
    let mut ihl15 = hit_tcp.build();
    ihl15[14] = 0x4f;
    let mut ihl4 = hit_tcp.build();
    ihl4[14] = 0x44;
    let cut_tcp = set_tot_len(hit_tcp.build()[..14 + 20 + 10].to_vec(), 30);
    let len = |p: &Pkt| p.build().len();

    let miss = |p: Pkt| to_ext(&env, p).build();
    let table = vec![
        fx("tcp syn, a new connection", "dnat", e, syn.build(), TC_ACT_REDIRECT, Some(syn_out.build()), "dnat/redirect").acct(acct_in(SLOT_30001, len(&syn), 1)),
        fx("tcp hit of the same flow", "dnat", e, hit_tcp.build(), TC_ACT_REDIRECT, Some(hit_tcp_out.build()), "dnat/redirect").acct(acct_in(SLOT_30001, len(&hit_tcp), 0)),
        fx("a syn-ack is no new connection", "dnat", e, synack.build(), TC_ACT_REDIRECT, Some(synack_out.build()), "dnat/redirect").acct(acct_in(SLOT_30001, len(&synack), 0)),
        fx("a tcp segment whose checksum is 0x0000", "dnat", e, zero.build(), TC_ACT_REDIRECT, Some(zero_out.build()), "dnat/redirect").acct(acct_in(SLOT_30001, len(&zero), 0)),
        fx("an ip checksum update that carries twice", "dnat", e, carry.build(), TC_ACT_REDIRECT, Some(carry_out.build()), "dnat/redirect").acct(acct_in(SLOT_30001, len(&carry), 0)),
        fx("udp hit, a new flow, --to-port", "dnat", e, hit_udp.build(), TC_ACT_REDIRECT, Some(hit_udp_out.build()), "dnat/redirect").acct(acct_in(SLOT_30002, len(&hit_udp), 1)),
        fx("udp hit of the same flow", "dnat", e, hit_udp.build(), TC_ACT_REDIRECT, Some(hit_udp_out.build()), "dnat/redirect").acct(acct_in(SLOT_30002, len(&hit_udp), 0)),
        fx("udp hit without checksum keeps 0", "dnat", e, udp_nocsum.build(), TC_ACT_REDIRECT, Some(udp_nocsum_out.build()), "dnat/redirect").acct(acct_in(SLOT_30002, len(&udp_nocsum), 0)),
        fx("ip options (IHL 7) hit", "dnat", e, opts.build(), TC_ACT_REDIRECT, Some(opts_out.build()), "dnat/redirect").acct(acct_in(SLOT_30001, len(&opts), 0)),
        fx("mapping on a second external address", "dnat", e, second.build(), TC_ACT_REDIRECT, Some(second_out.build()), "dnat/redirect").acct(acct_in(SLOT_EXT2, len(&second), 0)),
        fx("the same container by the default address", "dnat", e, third.build(), TC_ACT_REDIRECT, Some(third_out.build()), "dnat/redirect").acct(acct_in(SLOT_30003, len(&third), 0)),
        // Every field of the dnat key: address, port, protocol.
        fx("published port on an address that is not external", "dnat", e, miss(Pkt::tcp((player(), 40000), (ip("198.51.100.77"), 30001))), TC_ACT_UNSPEC, None, "dnat/miss"),
        fx("a default port on the non-default address", "dnat", e, miss(Pkt::tcp((player(), 40000), (ext2(), 30003))), TC_ACT_UNSPEC, None, "dnat/miss"),
        fx("a dedicated port on the default address", "dnat", e, miss(Pkt::tcp((player(), 40000), (ext_ip(), 25565))), TC_ACT_UNSPEC, None, "dnat/miss"),
        fx("tcp to a udp-only port misses", "dnat", e, miss(Pkt::tcp((player(), 40000), (ext_ip(), 30002))), TC_ACT_UNSPEC, None, "dnat/miss"),
        fx("udp to a tcp-only port misses", "dnat", e, miss(Pkt::udp((player(), 40000), (ext_ip(), 30001))), TC_ACT_UNSPEC, None, "dnat/miss"),
        fx("unpublished port", "dnat", e, miss(Pkt::tcp((player(), 40000), (ext_ip(), 22))), TC_ACT_UNSPEC, None, "dnat/miss"),
        fx("ipv6 to an address nothing is published on", "dnat", e, ipv6_udp(), TC_ACT_UNSPEC, None, "dnat/miss"),
        fx("arp", "dnat", e, arp(1, PEER, player(), [0; 6], ext_ip(), BCAST), TC_ACT_UNSPEC, None, "dnat/not_ipv4"),
        fx("vlan-tagged", "dnat", e, vlan.build(), TC_ACT_UNSPEC, None, "dnat/not_ipv4"),
        fx("gre", "dnat", e, { let mut p = hit_tcp.clone(); p.proto = 47; p.build() }, TC_ACT_UNSPEC, None, "dnat/not_l4"),
        fx("non-first fragment", "dnat", e, nonfirst.build(), TC_ACT_UNSPEC, None, "dnat/fragment"),
        fx("first fragment", "dnat", e, first.build(), TC_ACT_UNSPEC, None, "dnat/fragment"),
        fx("udp first fragment", "dnat", e, udp_first.build(), TC_ACT_UNSPEC, None, "dnat/fragment"),
        // BPF_PROG_TEST_RUN itself refuses IPv4 frames shorter than 34
        // bytes, so the shortest cut here ends in the IP options.
        fx("cut inside the ip options", "dnat", e, opts.build()[..14 + 24].to_vec(), TC_ACT_UNSPEC, None, "dnat/malformed"),
        fx("ihl beyond the frame", "dnat", e, ihl15, TC_ACT_UNSPEC, None, "dnat/malformed"),
        fx("total length beyond the frame", "dnat", e, hit_tcp.build()[..14 + 20 + 10].to_vec(), TC_ACT_UNSPEC, None, "dnat/malformed"),
        fx("tcp header shorter than 20 bytes", "dnat", e, cut_tcp, TC_ACT_UNSPEC, None, "dnat/malformed"),
        fx("tcp data offset < 5", "dnat", e, bad_doff, TC_ACT_UNSPEC, None, "dnat/malformed"),
        fx("ihl < 5", "dnat", e, ihl4, TC_ACT_UNSPEC, None, "dnat/malformed"),
    ];
    run_table(&env, table);

    // What dnat recorded: the container side of each flow, and what the
    // player used.
    let f = published_flow(&env, "10.0.0.2", 25565, 40000, Proto::Tcp).expect("the tcp flow is recorded");
    assert_eq!(
        (f.ext_addr, f.host_port, f.ext_ifindex, f.veth_ifindex, f.slot),
        (ext_ip(), 30001, env.ext.0, env.v0.0, SLOT_30001)
    );
    let f = published_flow(&env, "10.0.0.2", 19132, 40001, Proto::Udp).expect("the udp flow is recorded");
    assert_eq!((f.ext_addr, f.host_port, f.veth_ifindex, f.slot), (ext_ip(), 30002, env.v0.0, SLOT_30002));
    let f = published_flow(&env, "10.0.1.2", 25565, 40002, Proto::Tcp).expect("the second address's flow");
    assert_eq!((f.ext_addr, f.host_port, f.veth_ifindex, f.slot), (ext2(), 30001, env.v1.0, SLOT_EXT2));
    let f = published_flow(&env, "10.0.1.2", 25565, 40003, Proto::Tcp).expect("the default address's flow");
    assert_eq!((f.ext_addr, f.host_port, f.slot), (ext_ip(), 30003, SLOT_30003));
    let all = maps::published_flows(&env.root.pins).unwrap();
    assert_eq!(all.len(), 4, "only forwarded packets record flows: {all:?}");

    // A flow moved to another mapping (the player now reaches the same
    // container port through another address) is rewritten in place.
    let (moved, moved_out) = inbound(&env, Pkt::tcp((player(), 40002), (ext_ip(), 30003)), "10.0.1.2", 25565, CTR1);
    run_table(&env, vec![fx("the same flow through another mapping", "dnat", e, moved.build(), TC_ACT_REDIRECT, Some(moved_out.build()), "dnat/redirect")
        .acct(acct_in(SLOT_30003, len(&moved), 0))]);
    let f = published_flow(&env, "10.0.1.2", 25565, 40002, Proto::Tcp).unwrap();
    assert_eq!((f.ext_addr, f.host_port, f.slot), (ext_ip(), 30003, SLOT_30003));
}

/// A recorded flow whose player comes back another way has every field of
/// its value rewritten, one field at a time: the external interface, the
/// external address, the host port, the host veth and the mapping's slot
/// (a field dnat failed to compare would keep the old one, and the
/// replies would leave from the wrong place or be counted to the wrong
/// port). The mappings are written into dnat4 directly, so that each step
/// changes exactly one field.
#[test]
fn a_flow_follows_every_field_of_its_mapping() {
    if !privileged("a_flow_follows_every_field_of_its_mapping") {
        return;
    }
    let env = env();
    let dnat4 = maps::open(&env.root.pins, "dnat4").unwrap();
    let put = |ext: Ipv4Addr, port: u16, veth: u32, slot: u32| {
        let k = types::dnat4_key::new(ext, port, Proto::Udp);
        let v = types::dnat4_value::new(ip("10.0.0.2"), 19132, CTR0, veth, slot);
        dnat4.update(bytes_of(&k), bytes_of(&v), MapFlags::ANY).unwrap();
    };
    let (e, v0, v1, other_if) = (env.ext.0, env.v0.0, env.v1.0, env.v2.0);
    let steps = [
        ("first packet", ext_ip(), 30002, e, v0, SLOT_30002),
        ("another external interface", ext_ip(), 30002, other_if, v0, SLOT_30002),
        ("another external address", ext2(), 30002, other_if, v0, SLOT_30002),
        ("another host port", ext2(), 30009, other_if, v0, SLOT_30002),
        ("another host veth", ext2(), 30009, other_if, v1, SLOT_30002),
        ("another slot", ext2(), 30009, other_if, v1, SLOT_30001),
    ];
    let _in_ns = NetnsGuard::enter(Some(&env.ns.name)).unwrap();
    let dnat = prog_fd(&env.root, "dnat");
    for (what, ext, port, ifindex, veth, slot) in steps {
        put(ext, port, veth, slot);
        let frame = to_ext(&env, Pkt::udp((player(), 40060), (ext, port))).build();
        let before = counters(&env.root);
        let conns = |c: Vec<PortCounters>| c.iter().map(|c| c.conns).sum::<u64>();
        let conns_before = conns(port_counters(&env));
        let out = test_run(&dnat, &frame, ifindex, 1);
        assert_eq!(out.verdict, TC_ACT_REDIRECT, "{what}: dnat's verdict");
        assert_counter_deltas(what, &before, &counters(&env.root), &[("dnat/redirect", 1)]);
        // Only the first packet opens a connection; a flow that changed
        // its mapping is the same connection.
        let new = u64::from(what == "first packet");
        assert_eq!(conns(port_counters(&env)) - conns_before, new, "{what}: connections counted");
        let f = published_flow(&env, "10.0.0.2", 19132, 40060, Proto::Udp).expect("the flow is recorded");
        assert_eq!(
            (f.ext_addr, f.host_port, f.ext_ifindex, f.veth_ifindex, f.slot),
            (ext, port, ifindex, veth, slot),
            "{what}: the recorded flow"
        );
    }
}

/// The host's packet to the player as it left (`ext`:`host_port`), and
/// the same packet as the container sent it (`ctr`:`ctr_port`).
#[allow(clippy::too_many_arguments)]
fn host_packet(proto: u8, ext: Ipv4Addr, host_port: u16, ctr: Ipv4Addr, ctr_port: u16, pport: u16, payload: usize) -> (Pkt, Pkt) {
    let mut h = if proto == TCP {
        Pkt::tcp((ext, host_port), (player(), pport))
    } else {
        Pkt::udp((ext, host_port), (player(), pport))
    };
    h.payload = (0..payload).map(|i| i as u8).collect();
    h.id = 0x7e57;
    let mut c = h.clone();
    c.src = ctr;
    c.sport = ctr_port;
    (h, c)
}

/// An ICMP error from the router about `about` (an IPv4 packet, cut to
/// `keep` bytes), to `dst`, as it arrives at the external interface.
fn icmp_to(env: &Env, dst: Ipv4Addr, icmp_type: u8, code: u8, about: &Pkt, keep: usize) -> Pkt {
    let emb = about.ip_packet();
    let keep = keep.min(emb.len());
    to_ext(env, Pkt::icmp_error(router(), dst, icmp_type, code, 1400, &emb[..keep]))
}

#[test]
fn icmp_errors_about_published_flows_are_translated() {
    if !privileged("icmp_errors_about_published_flows_are_translated") {
        return;
    }
    let env = env();
    let e = env.ext.0;
    let (c0, c1) = (ip("10.0.0.2"), ip("10.0.1.2"));
    // The flows the errors are about, recorded by dnat.
    let (t, t_out) = inbound(&env, Pkt::tcp((player(), 40000), (ext_ip(), 30001)), "10.0.0.2", 25565, CTR0);
    let (u, u_out) = inbound(&env, Pkt::udp((player(), 40001), (ext_ip(), 30002)), "10.0.0.2", 19132, CTR0);
    let (t2, t2_out) = inbound(&env, Pkt::tcp((player(), 40002), (ext2(), 30001)), "10.0.1.2", 25565, CTR1);
    let len = |p: &Pkt| p.build().len();
    run_table(&env, vec![
        fx("tcp flow", "dnat", e, t.build(), TC_ACT_REDIRECT, Some(t_out.build()), "dnat/redirect").acct(acct_in(SLOT_30001, len(&t), 0)),
        fx("udp flow", "dnat", e, u.build(), TC_ACT_REDIRECT, Some(u_out.build()), "dnat/redirect").acct(acct_in(SLOT_30002, len(&u), 1)),
        fx("tcp flow on the second address", "dnat", e, t2.build(), TC_ACT_REDIRECT, Some(t2_out.build()), "dnat/redirect").acct(acct_in(SLOT_EXT2, len(&t2), 0)),
    ]);

    // The host's replies of those flows, and the container's originals.
    let (th, tc) = host_packet(TCP, ext_ip(), 30001, c0, 25565, 40000, 1200);
    let (uh, uc) = host_packet(UDP, ext_ip(), 30002, c0, 19132, 40001, 300);
    let (t2h, t2c) = host_packet(TCP, ext2(), 30001, c1, 25565, 40002, 64);
    let mut uh0 = uh.clone();
    uh0.udp_no_csum = true;
    let mut uc0 = uc.clone();
    uc0.udp_no_csum = true;
    // The container's datagram chosen so that its UDP checksum sums to
    // zero, which UDP sends as 0xffff: translated incrementally, the
    // embedded checksum comes out 0x0000 and must be written as 0xffff.
    let (mut uhz, mut ucz) = (uh.clone(), uc.clone());
    ucz.payload = vec![0, 0];
    let off = 14 + 20 + 8;
    let c = ucz.build();
    ucz.payload = c[14 + 20 + 6..14 + 20 + 8].to_vec();
    assert_eq!(&ucz.build()[off - 2..off], &[0xff, 0xff], "the container's UDP checksum must sum to zero");
    uhz.payload = ucz.payload.clone();
    let mut topt = th.clone();
    topt.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL: embedded IHL 6
    let mut topt_c = tc.clone();
    topt_c.ip_options = topt.ip_options.clone();
    // Translated: to the container, about the container's own packet.
    let to_ctr = |about: &Pkt, ctr: Ipv4Addr, mac, icmp_type, code, keep| {
        let mut o = icmp_to(&env, ctr, icmp_type, code, about, keep);
        o.eth_dst = mac;
        o.build()
    };
    let err = |about: &Pkt, icmp_type, code, keep| icmp_to(&env, ext_ip(), icmp_type, code, about, keep);
    let all = usize::MAX;
    // What Linux routers send: as much of the packet as fits in 576
    // bytes; RFC 792's minimum: the header and 8 bytes.
    let cases: Vec<(&'static str, Pkt, Vec<u8>, u32)> = vec![
        ("frag-needed, whole tcp segment", err(&th, 3, 4, all), to_ctr(&tc, c0, CTR0, 3, 4, all), SLOT_30001),
        ("frag-needed, 548 bytes of a tcp segment", err(&th, 3, 4, 548), to_ctr(&tc, c0, CTR0, 3, 4, 548), SLOT_30001),
        ("frag-needed, tcp header to its checksum (18 bytes)", err(&th, 3, 4, 20 + 18), to_ctr(&tc, c0, CTR0, 3, 4, 20 + 18), SLOT_30001),
        ("frag-needed, 8 bytes of tcp: no tcp checksum", err(&th, 3, 4, 28), to_ctr(&tc, c0, CTR0, 3, 4, 28), SLOT_30001),
        ("frag-needed, embedded ip options", err(&topt, 3, 4, all), to_ctr(&topt_c, c0, CTR0, 3, 4, all), SLOT_30001),
        ("port-unreachable, whole udp datagram", err(&uh, 3, 3, all), to_ctr(&uc, c0, CTR0, 3, 3, all), SLOT_30002),
        ("port-unreachable, udp header only", err(&uh, 3, 3, 28), to_ctr(&uc, c0, CTR0, 3, 3, 28), SLOT_30002),
        ("host-unreachable, udp without checksum keeps 0", err(&uh0, 3, 1, all), to_ctr(&uc0, c0, CTR0, 3, 1, all), SLOT_30002),
        ("port-unreachable, a udp checksum that comes out 0 is 0xffff", err(&uhz, 3, 3, all), to_ctr(&ucz, c0, CTR0, 3, 3, all), SLOT_30002),
        ("frag-needed on the second address", icmp_to(&env, ext2(), 3, 4, &t2h, all), to_ctr(&t2c, c1, CTR1, 3, 4, all), SLOT_EXT2),
    ];
    let mut table = Vec::new();
    for (name, input, output, slot) in cases {
        let n = input.build().len();
        table.push(fx(name, "dnat", e, input.build(), TC_ACT_REDIRECT, Some(output), "dnat/icmp_translated").acct(acct_in(slot, n, 0)));
    }

    // Errors about anything else pass untouched.
    let (other_player_port, _) = host_packet(TCP, ext_ip(), 30001, c0, 25565, 40999, 64);
    let (other_port, _) = host_packet(TCP, ext_ip(), 30003, c1, 25565, 40000, 64);
    let (other_proto, _) = host_packet(UDP, ext_ip(), 30001, c0, 25565, 40000, 64);
    let (unpublished, _) = host_packet(TCP, ext_ip(), 22, c0, 22, 40000, 64);
    let mut other_player = th.clone();
    other_player.dst = ip("203.0.113.10");
    let mut embedded_frag = th.clone();
    embedded_frag.frag = 0x00b9;
    let passed = |name, input: Pkt| fx(name, "dnat", e, input.build(), TC_ACT_UNSPEC, None, "dnat/icmp_passed");
    // An embedded header whose version is not 4 (IHL still 5).
    let mut not_v4 = err(&th, 3, 4, all).build();
    not_v4[14 + 20 + 8] = 0x65;
    table.extend([
        passed("about a flow that was never recorded (player port)", err(&other_player_port, 3, 4, all)),
        passed("about another player", err(&other_player, 3, 4, all)),
        passed("about another host port", err(&other_port, 3, 4, all)),
        passed("about the other protocol", err(&other_proto, 3, 3, all)),
        passed("about an unpublished port", err(&unpublished, 3, 3, all)),
        passed("addressed to another address than the packet's source", icmp_to(&env, ext2(), 3, 4, &th, all)),
        passed("time exceeded", err(&th, 11, 0, all)),
        passed("redirect", err(&th, 5, 1, all)),
        passed("echo request", to_ext(&env, Pkt::icmp(router(), ext_ip()))),
        passed("embedded packet cut inside the ports", err(&th, 3, 4, 23)),
        passed("embedded non-first fragment", err(&embedded_frag, 3, 4, all)),
        passed("embedded header only", err(&th, 3, 4, 20)),
    ]);
    table.push(fx("embedded packet not ipv4", "dnat", e, not_v4, TC_ACT_UNSPEC, None, "dnat/icmp_passed"));
    // The second container's port also published on 10.0.0.3 with the
    // same host port as its recorded flow (which came by the second
    // address): an error about a reply from 10.0.0.3 is not about that
    // flow.
    publish(&env.root, &env.ns, Ext::Addr(ip("10.0.0.3").into()), 30001, "10.0.1.2", "dpv1", CTR1, Proto::Tcp, 25565);
    let (t3h, _) = host_packet(TCP, ip("10.0.0.3"), 30001, c1, 25565, 40002, 64);
    table.push(passed("about a flow recorded on another address", icmp_to(&env, ip("10.0.0.3"), 3, 4, &t3h, all)));
    let mut frag_err = err(&th, 3, 4, all);
    frag_err.frag = 0x2000;
    table.push(fx("an icmp fragment", "dnat", e, frag_err.build(), TC_ACT_UNSPEC, None, "dnat/fragment"));
    run_table(&env, table);
}

/// Records flows as players would: through dnat.
fn record(env: &Env, flows: &[Pkt]) {
    let _in_ns = NetnsGuard::enter(Some(&env.ns.name)).unwrap();
    let dnat = prog_fd(&env.root, "dnat");
    for p in flows {
        let out = test_run(&dnat, &to_ext(env, p.clone()).build(), env.ext.0, 1);
        assert_eq!(out.verdict, TC_ACT_REDIRECT, "recording a flow: dnat did not forward {p:?}");
    }
}

#[test]
fn snat_fixtures() {
    if !privileged("snat_fixtures") {
        return;
    }
    let env = env();
    let (v0, v1, v2) = (env.v0.0, env.v1.0, env.v2.0);
    let from0 = |p: Pkt| p.macs(CTR0, env.v0.1);
    let from1 = |p: Pkt| p.macs(CTR1, env.v1.1);
    let reply = from0(Pkt::tcp((ip("10.0.0.2"), 25565), (player(), 40000)));
    let mut reply_out = reply.clone();
    reply_out.src = ext_ip();
    reply_out.sport = 30001;
    let ureply = from0(Pkt::udp((ip("10.0.0.2"), 19132), (player(), 40001)));
    let mut ureply_out = ureply.clone();
    ureply_out.src = ext_ip();
    ureply_out.sport = 30002;
    let mut ureply0 = ureply.clone();
    ureply0.udp_no_csum = true;
    let mut ureply0_out = ureply_out.clone();
    ureply0_out.udp_no_csum = true;
    let mut opts = reply.clone();
    opts.ip_options = vec![1, 1, 1, 0];
    let mut opts_out = reply_out.clone();
    opts_out.ip_options = opts.ip_options.clone();
    let mut syn = reply.clone();
    syn.tcp_flags = 0x02;
    let mut syn_out = reply_out.clone();
    syn_out.tcp_flags = 0x02;
    let mut synack = reply.clone();
    synack.tcp_flags = 0x12;
    let mut synack_out = reply_out.clone();
    synack_out.tcp_flags = 0x12;
    // One container port, two flows through two addresses.
    let r2 = from1(Pkt::tcp((ip("10.0.1.2"), 25565), (player(), 40002)));
    let mut r2_out = r2.clone();
    r2_out.src = ext2();
    r2_out.sport = 30001;
    let r3 = from1(Pkt::tcp((ip("10.0.1.2"), 25565), (player(), 40003)));
    let mut r3_out = r3.clone();
    r3_out.src = ext_ip();
    r3_out.sport = 30003;
    let len = |p: &Pkt| p.build().len();
    let h = |name, ifindex, p: &Pkt| fx(name, "snat", ifindex, p.build(), TC_ACT_UNSPEC, None, "snat/handed_on");

    // Before any player came: nothing is a reply.
    run_table(&env, vec![
        h("a reply with no flow is handed on", v0, &reply),
        h("a udp reply with no flow is handed on", v0, &ureply),
        h("a syn-ack with no flow is handed on", v0, &synack),
    ]);

    record(&env, &[
        Pkt::tcp((player(), 40000), (ext_ip(), 30001)),
        Pkt::udp((player(), 40001), (ext_ip(), 30002)),
        Pkt::tcp((player(), 40002), (ext2(), 30001)),
        Pkt::tcp((player(), 40003), (ext_ip(), 30003)),
    ]);
    let table = vec![
        fx("syn-ack of a recorded flow", "snat", v0, synack.build(), TC_ACT_REDIRECT, Some(synack_out.build()), "snat/redirect").acct(acct_out(SLOT_30001, len(&synack))),
        fx("tcp reply of a recorded flow", "snat", v0, reply.build(), TC_ACT_REDIRECT, Some(reply_out.build()), "snat/redirect").acct(acct_out(SLOT_30001, len(&reply))),
        fx("udp reply of a recorded flow", "snat", v0, ureply.build(), TC_ACT_REDIRECT, Some(ureply_out.build()), "snat/redirect").acct(acct_out(SLOT_30002, len(&ureply))),
        fx("udp reply without checksum keeps 0", "snat", v0, ureply0.build(), TC_ACT_REDIRECT, Some(ureply0_out.build()), "snat/redirect").acct(acct_out(SLOT_30002, len(&ureply0))),
        fx("reply with ip options", "snat", v0, opts.build(), TC_ACT_REDIRECT, Some(opts_out.build()), "snat/redirect").acct(acct_out(SLOT_30001, len(&opts))),
        fx("reply from the address the player used (second address)", "snat", v1, r2.build(), TC_ACT_REDIRECT, Some(r2_out.build()), "snat/redirect").acct(acct_out(SLOT_EXT2, len(&r2))),
        fx("reply from the address the player used (default address)", "snat", v1, r3.build(), TC_ACT_REDIRECT, Some(r3_out.build()), "snat/redirect").acct(acct_out(SLOT_30003, len(&r3))),
        // A SYN is only ever a reply if the player's SYN came first (a
        // simultaneous open): it matches the recorded flow like any reply.
        fx("a syn matching a recorded flow is a reply too", "snat", v0, syn.build(), TC_ACT_REDIRECT, Some(syn_out.build()), "snat/redirect").acct(acct_out(SLOT_30001, len(&syn))),
        // Every field of the flow key: container address, player address,
        // container port, player port, protocol.
        h("another container, same ports and player", v1, &from1(Pkt::tcp((ip("10.0.1.2"), 25565), (player(), 40000)))),
        h("another player", v0, &from0(Pkt::tcp((ip("10.0.0.2"), 25565), (ip("203.0.113.10"), 40000)))),
        h("another container port", v0, &from0(Pkt::tcp((ip("10.0.0.2"), 25566), (player(), 40000)))),
        h("another player port", v0, &from0(Pkt::tcp((ip("10.0.0.2"), 25565), (player(), 40009)))),
        h("the other protocol", v0, &from0(Pkt::udp((ip("10.0.0.2"), 25565), (player(), 40000)))),
        h("tcp from the udp-published port", v0, &from0(Pkt::tcp((ip("10.0.0.2"), 19132), (player(), 40001)))),
        h("outgoing connection", v0, &from0(Pkt::tcp((ip("10.0.0.2"), 50000), (ip("192.0.2.7"), 443)))),
        h("the published port to the host veth", v0, &from0(Pkt::tcp((ip("10.0.0.2"), 25565), (ip("10.0.0.1"), 40000)))),
        fx("spoofed source", "snat", v0, from0(Pkt::tcp((ip("10.0.0.99"), 25565), (player(), 40000))).build(), TC_ACT_SHOT, None, "snat/spoofed"),
        fx("another container's address on this veth", "snat", v1, reply.build(), TC_ACT_SHOT, None, "snat/spoofed"),
        fx("unregistered veth", "snat", v2, reply.build(), TC_ACT_SHOT, None, "snat/unregistered"),
        fx("arp is handed on", "snat", v0, arp(1, CTR0, ip("10.0.0.2"), [0; 6], ip("10.0.0.1"), BCAST), TC_ACT_UNSPEC, None, "snat/handed_on"),
        fx("ipv6 on a veth registered without an ipv6 address", "snat", v0, ipv6_udp(), TC_ACT_SHOT, None, "snat/unregistered"),
    ];
    run_table(&env, table);

    // A flow is a reply only on the host veth it was sent to.
    let flows = maps::open(&env.root.pins, "flows4").unwrap();
    let k = types::flow4_key::new(ip("10.0.0.2"), 25565, player(), 40100, Proto::Tcp);
    let v = types::flow4_value::new(ext_ip(), 30001, env.ext.0, env.v2.0, SLOT_30001);
    flows.update(bytes_of(&k), bytes_of(&v), MapFlags::ANY).unwrap();
    let other = from0(Pkt::tcp((ip("10.0.0.2"), 25565), (player(), 40100)));
    run_table(&env, vec![h("a flow sent to another veth", v0, &other)]);
}

/// CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns().
fn monotonic_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: t is a valid timespec for the call to fill.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) }, 0);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Sets host_cfg's adoption rule: until `until` (0: none), on the default
/// external address and interface.
fn set_adoption(env: &Env, until: u64) {
    let m = maps::open(&env.root.pins, "host_cfg").unwrap();
    let v = types::host_config {
        adopt_until: until,
        adopt_addr: u32::from_ne_bytes(ext_ip().octets()),
        adopt_ifindex: env.ext.0,
        ..Default::default()
    };
    m.update(bytes_of(&0u32), bytes_of(&v), MapFlags::ANY).unwrap();
}

/// Upgrades from the release before published flows: for the grace
/// period the migration sets, snat adopts a flow-less packet from a
/// published port as that release would have taken it — TCP without SYN
/// or UDP, from the container behind the veth the port is published to,
/// not proxied, not the host's own, routed out of the external interface —
/// records its flow and translates it. Before and after the period, and
/// for everything else, it hands the packet on.
#[test]
fn snat_adopts_connections_of_the_release_before() {
    if !privileged("snat_adopts_connections_of_the_release_before") {
        return;
    }
    let env = env();
    let (v0, v1) = (env.v0.0, env.v1.0);
    let from0 = |p: Pkt| p.macs(CTR0, env.v0.1);
    let from1 = |p: Pkt| p.macs(CTR1, env.v1.1);
    let out = |p: &Pkt, port: u16| {
        let mut o = p.clone();
        o.src = ext_ip();
        o.sport = port;
        o
    };
    let len = |p: &Pkt| p.build().len();
    let h = |name, ifindex, p: &Pkt| fx(name, "snat", ifindex, p.build(), TC_ACT_UNSPEC, None, "snat/handed_on");
    let adopted = |name, ifindex, p: &Pkt, port: u16, slot: u32| {
        fx(name, "snat", ifindex, p.build(), TC_ACT_REDIRECT, Some(out(p, port).build()), "snat/adopted")
            .acct(acct_out(slot, len(p)))
    };
    let tcp = from0(Pkt::tcp((ip("10.0.0.2"), 25565), (player(), 40000)));
    let udp = from0(Pkt::udp((ip("10.0.0.2"), 19132), (player(), 40001)));
    let other_ctr = from1(Pkt::tcp((ip("10.0.1.2"), 25565), (player(), 40002)));
    let mut syn = tcp.clone();
    syn.tcp_flags = 0x02;
    let mut synack = tcp.clone();
    synack.tcp_flags = 0x12;
    env.ns.ip("route add 203.0.113.0/24 dev dpext");
    env.ns.ip("route add 10.0.1.2/32 dev dpv1");

    // No grace period (the default), and one that is over.
    set_adoption(&env, 0);
    run_table(&env, vec![h("no grace period", v0, &tcp), h("no grace period, udp", v0, &udp)]);
    set_adoption(&env, monotonic_ns() - 1);
    run_table(&env, vec![h("the grace period is over", v0, &tcp)]);
    assert!(maps::published_flows(&env.root.pins).unwrap().is_empty(), "nothing was adopted");

    set_adoption(&env, monotonic_ns() + 600_000_000_000);
    // The host's own: a proxied connection from the published port, a TCP
    // connection and a UDP flow the host opened, the host veth's address.
    let proxy = maps::open(&env.root.pins, "proxy_flows").unwrap();
    let pk = types::ctr_endpoint::new(ip("10.0.0.2"), 25565, Proto::Tcp);
    let pv = types::flow_orig::new(ip("192.0.2.7"), 443, ip("10.0.0.1"), 9111);
    proxy.update(bytes_of(&pk), bytes_of(&pv), MapFlags::ANY).unwrap();
    let proxied = from0(Pkt::tcp((ip("10.0.0.2"), 25565), (ip("192.0.2.7"), 443)));
    let host_addr = ip("10.0.1.1");
    let _host_conn =
        connecting_socket(&env.ns, SocketAddrV4::new(host_addr, 41000), SocketAddrV4::new(ip("10.0.0.2"), 25565));
    let to_host = from0(Pkt::tcp((ip("10.0.0.2"), 25565), (host_addr, 41000)));
    let hf = maps::open(&env.root.pins, "host_flows4").unwrap();
    let hk = types::flow4_key::new(ip("10.0.0.2"), 19132, host_addr, 5000, Proto::Udp);
    let hv = types::host_flow_value { veth_ifindex: v0, pad: 0 };
    hf.update(bytes_of(&hk), bytes_of(&hv), MapFlags::ANY).unwrap();
    let host_udp = from0(Pkt::udp((ip("10.0.0.2"), 19132), (host_addr, 5000)));
    run_table(&env, vec![
        h("a syn opens a connection: never adopted", v0, &syn),
        h("nor a syn-ack", v0, &synack),
        h("an unpublished port", v0, &from0(Pkt::tcp((ip("10.0.0.2"), 25566), (player(), 40000)))),
        h("the published port of the other protocol", v0, &from0(Pkt::udp((ip("10.0.0.2"), 25565), (player(), 40000)))),
        h("a proxied connection from the published port", v0, &proxied),
        h("a connection the host opened", v0, &to_host),
        h("a udp flow the host opened", v0, &host_udp),
        h("to the host veth's address", v0, &from0(Pkt::tcp((ip("10.0.0.2"), 25565), (ip("10.0.0.1"), 40000)))),
        fx("another container's address on this veth", "snat", v0, other_ctr.build(), TC_ACT_SHOT, None, "snat/spoofed"),
    ]);
    assert!(maps::published_flows(&env.root.pins).unwrap().is_empty(), "nothing was adopted");

    // Forwarding is off in the test's namespace: the FIB cannot say where
    // a packet goes, and the checks above decide.
    run_table(&env, vec![
        adopted("tcp from a published port", v0, &tcp, 30001, SLOT_30001),
        adopted("udp from a published port", v0, &udp, 30002, SLOT_30002),
        adopted("another container's published port", v1, &other_ctr, 30003, SLOT_30003),
    ]);
    let mut flows = maps::published_flows(&env.root.pins).unwrap();
    flows.sort_by_key(|f| f.player_port);
    let got: Vec<_> =
        flows.iter().map(|f| (f.ctr_ip, f.ctr_port, f.player_port, f.proto, f.ext_addr, f.host_port, f.ext_ifindex, f.veth_ifindex, f.slot)).collect();
    assert_eq!(
        got,
        vec![
            (ip("10.0.0.2"), 25565, 40000, Proto::Tcp, ext_ip(), 30001, env.ext.0, v0, SLOT_30001),
            (ip("10.0.0.2"), 19132, 40001, Proto::Udp, ext_ip(), 30002, env.ext.0, v0, SLOT_30002),
            (ip("10.0.1.2"), 25565, 40002, Proto::Tcp, ext_ip(), 30003, env.ext.0, v1, SLOT_30003),
        ],
        "adopted flows are recorded as dnat records them"
    );
    // Adopted once, the flow is an ordinary one.
    run_table(&env, vec![
        fx("the next segment is a reply of a recorded flow", "snat", v0, tcp.build(), TC_ACT_REDIRECT, Some(out(&tcp, 30001).build()), "snat/redirect").acct(acct_out(SLOT_30001, len(&tcp))),
    ]);

    // With forwarding on, the FIB decides: out of the external interface
    // only.
    sh(&format!("ip netns exec {} sysctl -qw net.ipv4.conf.all.forwarding=1", env.ns.name));
    let p = |port: u16, dst: Ipv4Addr| from0(Pkt::tcp((ip("10.0.0.2"), 25565), (dst, port)));
    run_table(&env, vec![
        adopted("routed out of the external interface", v0, &p(40100, player()), 30001, SLOT_30001),
        h("routed to another container", v0, &p(40101, ip("10.0.1.2"))),
        h("no route", v0, &p(40102, ip("192.0.2.99"))),
        h("local to the host", v0, &p(40103, host_addr)),
    ]);

    // The mapping the port leads to must be the packet's own: its
    // container port and its veth, not only its address.
    let dnat4 = maps::open(&env.root.pins, "dnat4").unwrap();
    let k = types::dnat4_key::new(ext_ip(), 30001, Proto::Tcp);
    let put = |ctr_port: u16, veth: u32| {
        let v = types::dnat4_value::new(ip("10.0.0.2"), ctr_port, CTR0, veth, SLOT_30001);
        dnat4.update(bytes_of(&k), bytes_of(&v), MapFlags::ANY).unwrap();
    };
    put(25570, v0);
    run_table(&env, vec![h("the host port now leads to another container port", v0, &p(40104, player()))]);
    put(25565, v1);
    run_table(&env, vec![h("the host port now leads through another veth", v0, &p(40105, player()))]);
    put(25565, v0);
    run_table(&env, vec![adopted("and back to this one", v0, &p(40106, player()), 30001, SLOT_30001)]);
}

#[test]
fn arp_fixtures() {
    if !privileged("arp_fixtures") {
        return;
    }
    let env = env();
    let (v0, vmac, v2) = (env.v0.0, env.v0.1, env.v2.0);
    let c = ip("10.0.0.2");
    let req = |tip: &str| arp(1, CTR0, c, [0; 6], ip(tip), BCAST);
    // The answer: Ethernet to the asker from the veth's real MAC; ARP reply
    // with sender = (veth MAC, asked address), target = the asker.
    let reply = |tip: &str| arp(2, vmac, ip(tip), CTR0, c, CTR0);
    let mut bad_hw = req("10.0.0.1");
    bad_hw[15] = 6; // hardware type IEEE 802
    let mut bad_len = req("10.0.0.1");
    bad_len[18] = 8; // hardware address length 8
    let d = |s: &'static str| vec![(s, 1u64)];
    let table = vec![
        Fx { name: "request for the gateway", prog: "arp", ifindex: v0, input: req("10.0.0.1"), verdict: TC_ACT_REDIRECT, output: Some(reply("10.0.0.1")), counters: d("arp/replied"), acct: None },
        Fx { name: "request for an outside address (no gateway)", prog: "arp", ifindex: v0, input: req("192.0.2.55"), verdict: TC_ACT_REDIRECT, output: Some(reply("192.0.2.55")), counters: d("arp/replied"), acct: None },
        Fx { name: "request for the container's own address", prog: "arp", ifindex: v0, input: arp(1, CTR0, ip("10.0.0.77"), [0; 6], c, BCAST), verdict: TC_ACT_OK, output: None, counters: d("arp/passed"), acct: None },
        Fx { name: "gratuitous", prog: "arp", ifindex: v0, input: arp(1, CTR0, c, [0; 6], c, BCAST), verdict: TC_ACT_OK, output: None, counters: d("arp/passed"), acct: None },
        Fx { name: "probe from 0.0.0.0", prog: "arp", ifindex: v0, input: arp(1, CTR0, ip("0.0.0.0"), [0; 6], ip("10.0.0.1"), BCAST), verdict: TC_ACT_OK, output: None, counters: d("arp/passed"), acct: None },
        Fx { name: "reply", prog: "arp", ifindex: v0, input: arp(2, CTR0, c, vmac, ip("10.0.0.1"), vmac), verdict: TC_ACT_OK, output: None, counters: d("arp/passed"), acct: None },
        Fx { name: "truncated", prog: "arp", ifindex: v0, input: req("10.0.0.1")[..30].to_vec(), verdict: TC_ACT_OK, output: None, counters: d("arp/passed"), acct: None },
        Fx { name: "wrong hardware type", prog: "arp", ifindex: v0, input: bad_hw, verdict: TC_ACT_OK, output: None, counters: d("arp/passed"), acct: None },
        Fx { name: "wrong hardware length", prog: "arp", ifindex: v0, input: bad_len, verdict: TC_ACT_OK, output: None, counters: d("arp/passed"), acct: None },
        Fx { name: "unregistered veth", prog: "arp", ifindex: v2, input: req("10.0.0.1"), verdict: TC_ACT_OK, output: None, counters: d("arp/unregistered"), acct: None },
        Fx { name: "ipv4 is handed on", prog: "arp", ifindex: v0, input: Pkt::tcp((c, 1), (ip("10.0.0.1"), 2)).build(), verdict: TC_ACT_UNSPEC, output: None, counters: vec![], acct: None },
    ];
    run_table(&env, table);
}


fn flow(env: &Env, ctr: &str, port: u16, proto: Proto) -> Option<maps::Flow> {
    let map = maps::open(&env.root.pins, "proxy_flows").unwrap();
    maps::flows(&map).unwrap().into_iter().find(|f| f.ctr_ip == ip(ctr) && f.ctr_port == port && f.proto == proto)
}

fn syn(mut p: Pkt) -> Pkt {
    p.tcp_flags = 0x02;
    p
}

#[test]
fn tproxy_fixtures() {
    if !privileged("tproxy_fixtures") {
        return;
    }
    let env = env();
    let (v0, v2) = (env.v0.0, env.v2.0);
    let gw = ip("10.0.0.1");
    let from0 = |p: Pkt| p.macs(CTR0, env.v0.1);
    let redirected = |p: &Pkt, port: u16| {
        let mut o = p.clone();
        o.dst = gw;
        o.dport = port;
        o.build()
    };
    let udp_dns = from0(Pkt::udp((ip("10.0.0.2"), 5353), (ip("8.8.8.8"), 53)));
    let tcp_dns = syn(from0(Pkt::tcp((ip("10.0.0.2"), 5354), (ip("8.8.4.4"), 53))));
    let http = syn(from0(Pkt::tcp((ip("10.0.0.2"), 40080), (ip("192.0.2.80"), 80))));
    let tls = syn(from0(Pkt::tcp((ip("10.0.0.2"), 40443), (ip("192.0.2.43"), 443))));
    let mut tls_ack = tls.clone();
    tls_ack.tcp_flags = 0x10;
    let mut tls_other_dst = tls_ack.clone();
    tls_other_dst.dst = ip("192.0.2.44");
    // A connection from the published port: a SYN, so not a reply, even
    // though snat would have taken a reply of a flow from this port.
    let from_published = syn(from0(Pkt::tcp((ip("10.0.0.2"), 25565), (ip("192.0.2.9"), 7777))));
    let mut frag = tls.clone();
    frag.frag = 0x2000;
    let mut no_flow = from0(Pkt::tcp((ip("10.0.0.2"), 40999), (ip("192.0.2.43"), 443)));
    no_flow.tcp_flags = 0x10;
    let mut synack_no_flow = no_flow.clone();
    synack_no_flow.tcp_flags = 0x12;
    let d = |name, input: Vec<u8>, verdict, output, counter| fx(name, "tproxy_ingress", v0, input, verdict, output, counter);
    let table = vec![
        d("udp dns", udp_dns.build(), TC_ACT_OK, Some(redirected(&udp_dns, 9053)), "tproxy_ingress/dns"),
        d("udp dns again: its flow", udp_dns.build(), TC_ACT_OK, Some(redirected(&udp_dns, 9053)), "tproxy_ingress/dns"),
        d("tcp dns syn", tcp_dns.build(), TC_ACT_OK, Some(redirected(&tcp_dns, 9053)), "tproxy_ingress/dns"),
        d("http syn", http.build(), TC_ACT_OK, Some(redirected(&http, 9080)), "tproxy_ingress/http"),
        d("other tcp syn", tls.build(), TC_ACT_OK, Some(redirected(&tls, 9111)), "tproxy_ingress/tcp"),
        d("a later segment of that connection", tls_ack.build(), TC_ACT_OK, Some(redirected(&tls_ack, 9111)), "tproxy_ingress/tcp"),
        d("syn from the published port", from_published.build(), TC_ACT_OK, Some(redirected(&from_published, 9111)), "tproxy_ingress/tcp"),
        d("same source port, another destination, no syn", tls_other_dst.build(), TC_ACT_SHOT, None, "tproxy_ingress/no_flow_dropped"),
        d("tcp without syn of no flow", no_flow.build(), TC_ACT_SHOT, None, "tproxy_ingress/no_flow_dropped"),
        d("syn-ack of no flow and no host socket", synack_no_flow.build(), TC_ACT_SHOT, None, "tproxy_ingress/no_flow_dropped"),
        d("udp to another port", from0(Pkt::udp((ip("10.0.0.2"), 4000), (ip("192.0.2.9"), 123))).build(), TC_ACT_SHOT, None, "tproxy_ingress/udp_dropped"),
        d("icmp", from0(Pkt::icmp(ip("10.0.0.2"), ip("192.0.2.9"))).build(), TC_ACT_SHOT, None, "tproxy_ingress/l4_dropped"),
        d("ipv6 on a veth registered without an ipv6 address", ipv6_udp(), TC_ACT_SHOT, None, "tproxy_ingress/unregistered"),
        d("fragment", frag.build(), TC_ACT_SHOT, None, "tproxy_ingress/fragment_dropped"),
        d("spoofed source", from0(Pkt::tcp((ip("10.9.9.9"), 1), (ip("192.0.2.1"), 443))).build(), TC_ACT_SHOT, None, "tproxy_ingress/spoofed"),
        fx("unregistered veth", "tproxy_ingress", v2, tls.build(), TC_ACT_SHOT, None, "tproxy_ingress/unregistered"),
        d("truncated", tls.build()[..14 + 20 + 8].to_vec(), TC_ACT_SHOT, None, "tproxy_ingress/malformed_dropped"),
        d("arp goes to the kernel", arp(1, CTR0, ip("10.0.0.2"), [0; 6], gw, BCAST), TC_ACT_OK, None, "").uncounted(),
    ];
    run_table(&env, table);

    // The original destinations are recorded under (container, port, proto).
    let f = flow(&env, "10.0.0.2", 5353, Proto::Udp).expect("udp dns flow recorded");
    assert_eq!((f.orig_ip, f.orig_port, f.proxy_ip, f.proxy_port), (ip("8.8.8.8"), 53, gw, 9053));
    let f = flow(&env, "10.0.0.2", 5354, Proto::Tcp).expect("tcp dns flow recorded");
    assert_eq!((f.orig_ip, f.orig_port, f.proxy_port), (ip("8.8.4.4"), 53, 9053));
    let f = flow(&env, "10.0.0.2", 40080, Proto::Tcp).expect("http flow recorded");
    assert_eq!((f.orig_ip, f.orig_port, f.proxy_port), (ip("192.0.2.80"), 80, 9080));
    let f = flow(&env, "10.0.0.2", 40443, Proto::Tcp).expect("tcp flow recorded");
    assert_eq!((f.orig_ip, f.orig_port, f.proxy_port), (ip("192.0.2.43"), 443, 9111));
    let f = flow(&env, "10.0.0.2", 25565, Proto::Tcp).expect("the published port's own connection");
    assert_eq!((f.orig_ip, f.orig_port, f.proxy_port), (ip("192.0.2.9"), 7777, 9111));
    let flows = maps::flows(&maps::open(&env.root.pins, "proxy_flows").unwrap()).unwrap();
    assert_eq!(flows.len(), 5, "dropped packets must not record flows: {flows:?}");

    // A recorded flow keeps its proxy port when the configuration
    // changes; new flows take the new one.
    ops::load(&env.root.pins, ops::LoadOptions { tcp: Some(9112), ..Default::default() }).unwrap();
    let new_conn = syn(from0(Pkt::tcp((ip("10.0.0.2"), 40444), (ip("192.0.2.43"), 443))));
    run_table(&env, vec![
        d("a recorded flow after a proxy port change", tls_ack.build(), TC_ACT_OK, Some(redirected(&tls_ack, 9111)), "tproxy_ingress/tcp"),
        d("a new flow after a proxy port change", new_conn.build(), TC_ACT_OK, Some(redirected(&new_conn, 9112)), "tproxy_ingress/tcp"),
    ]);

    // Egress: the proxy's answers get the original destination back.
    let to0 = |p: Pkt| p.macs(env.v0.1, CTR0);
    let ans = to0(Pkt::tcp((gw, 9111), (ip("10.0.0.2"), 40443)));
    let mut ans_out = ans.clone();
    ans_out.src = ip("192.0.2.43");
    ans_out.sport = 443;
    let dns_ans = to0(Pkt::udp((gw, 9053), (ip("10.0.0.2"), 5353)));
    let mut dns_ans_out = dns_ans.clone();
    dns_ans_out.src = ip("8.8.8.8");
    dns_ans_out.sport = 53;
    let e = |name, input: Vec<u8>, output, counter| fx(name, "tproxy_egress", v0, input, TC_ACT_OK, output, counter);
    let table = vec![
        e("proxy answer restored", ans.build(), Some(ans_out.build()), "tproxy_egress/restored"),
        e("dns answer restored", dns_ans.build(), Some(dns_ans_out.build()), "tproxy_egress/restored"),
        e("from another port is untouched", to0(Pkt::tcp((gw, 9080), (ip("10.0.0.2"), 40443))).build(), None, "tproxy_egress/passed"),
        e("published-port traffic is untouched", to0(Pkt::tcp((player(), 40000), (ip("10.0.0.2"), 25565))).build(), None, "tproxy_egress/passed"),
        e("arp is untouched", arp(2, env.v0.1, gw, CTR0, ip("10.0.0.2"), CTR0), None, "tproxy_egress/passed"),
    ];
    run_table(&env, table);
}

/// A TCP socket of the host (in the test's namespace) bound to
/// `local`, connecting to `remote` without waiting: it stays in SYN-SENT
/// (nothing answers), which is what the host's side of a connection to a
/// container looks like until the SYN-ACK comes.
fn connecting_socket(ns: &TestNs, local: SocketAddrV4, remote: SocketAddrV4) -> OwnedFd {
    let _g = NetnsGuard::enter(Some(&ns.name)).unwrap();
    let sin = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket(2); checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is fresh and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let (l, r) = (sin(local), sin(remote));
    // SAFETY: valid descriptor; the addresses are live sockaddr_in of the
    // length given.
    unsafe {
        assert_eq!(libc::bind(fd.as_raw_fd(), (&l as *const libc::sockaddr_in).cast(), len), 0, "bind {local}");
        let rc = libc::connect(fd.as_raw_fd(), (&r as *const libc::sockaddr_in).cast(), len);
        let err = std::io::Error::last_os_error();
        assert!(rc == 0 || err.raw_os_error() == Some(libc::EINPROGRESS), "connect {remote}: {err}");
    }
    fd
}

/// Rule 3: replies of connections the host opened to a container reach
/// the host, found through the host's own sockets (TCP) and the UDP flows
/// tproxy_egress recorded; a listener is not such a connection.
#[test]
fn replies_to_the_host_reach_the_host() {
    if !privileged("replies_to_the_host_reach_the_host") {
        return;
    }
    let env = env();
    let (v0, v1) = (env.v0.0, env.v1.0);
    let (gw, ctr) = (ip("10.0.0.1"), ip("10.0.0.2"));
    let from0 = |p: Pkt| p.macs(CTR0, env.v0.1);
    let to0 = |p: Pkt| p.macs(env.v0.1, CTR0);
    let _sock = connecting_socket(&env.ns, SocketAddrV4::new(gw, 41000), SocketAddrV4::new(ctr, 25565));
    let listener = {
        let _g = NetnsGuard::enter(Some(&env.ns.name)).unwrap();
        TcpListener::bind((gw, 41001)).unwrap()
    };
    let mut synack = from0(Pkt::tcp((ctr, 25565), (gw, 41000)));
    synack.tcp_flags = 0x12;
    let mut ack = synack.clone();
    ack.tcp_flags = 0x10;
    let mut other_port = ack.clone();
    other_port.dport = 41002;
    let mut to_listener = ack.clone();
    to_listener.dport = 41001;
    let i = |name, input: Pkt, verdict, counter| fx(name, "tproxy_ingress", v0, input.build(), verdict, None, counter);
    run_table(&env, vec![
        i("syn-ack to the host's connecting socket", synack, TC_ACT_OK, "tproxy_ingress/host_reply"),
        i("a later segment of it", ack, TC_ACT_OK, "tproxy_ingress/host_reply"),
        i("the same, to a port the host has no socket on", other_port, TC_ACT_SHOT, "tproxy_ingress/no_flow_dropped"),
        i("a segment to a listener is not a reply", to_listener, TC_ACT_SHOT, "tproxy_ingress/no_flow_dropped"),
    ]);
    drop(listener);

    // UDP: the host's datagram to the container records its flow on the
    // way out; the container's answer then reaches the host.
    let out = to0(Pkt::udp((gw, 5000), (ctr, 7000)));
    let answer = from0(Pkt::udp((ctr, 7000), (gw, 5000)));
    let mut answer_other_port = answer.clone();
    answer_other_port.dport = 5001;
    run_table(&env, vec![
        i("an answer before the host sent anything", answer.clone(), TC_ACT_SHOT, "tproxy_ingress/udp_dropped"),
        fx("the host's datagram to the container", "tproxy_egress", v0, out.build(), TC_ACT_OK, None, "tproxy_egress/host_udp"),
        i("the container's answer", answer.clone(), TC_ACT_OK, "tproxy_ingress/host_reply"),
        i("an answer to another host port", answer_other_port, TC_ACT_SHOT, "tproxy_ingress/udp_dropped"),
        fx("the host's datagram again", "tproxy_egress", v0, out.build(), TC_ACT_OK, None, "tproxy_egress/host_udp"),
    ]);
    let flows = maps::host_flows(&env.root.pins).unwrap();
    assert_eq!(flows.len(), 1, "one host flow: {flows:?}");
    assert_eq!(
        (flows[0].ctr_ip, flows[0].ctr_port, flows[0].host_ip, flows[0].host_port, flows[0].veth_ifindex),
        (ctr, 7000, gw, 5000, v0)
    );
    // A host flow is taken only on the veth it left by.
    let hf = maps::open(&env.root.pins, "host_flows4").unwrap();
    let k = types::flow4_key::new(ctr, 7001, gw, 5000, Proto::Udp);
    let v = types::host_flow_value { veth_ifindex: v1, pad: 0 };
    hf.update(bytes_of(&k), bytes_of(&v), MapFlags::ANY).unwrap();
    let mut answer_7001 = answer;
    answer_7001.sport = 7001;
    run_table(&env, vec![i("a host flow sent to another veth", answer_7001, TC_ACT_SHOT, "tproxy_ingress/udp_dropped")]);
}

#[test]
fn same_source_port_in_two_containers() {
    if !privileged("same_source_port_in_two_containers") {
        return;
    }
    let env = env();
    let a = syn(Pkt::tcp((ip("10.0.0.2"), 5000), (ip("192.0.2.1"), 443)).macs(CTR0, env.v0.1));
    let b = syn(Pkt::tcp((ip("10.0.1.2"), 5000), (ip("192.0.2.2"), 8443)).macs(CTR1, env.v1.1));
    {
        let _in_ns = NetnsGuard::enter(Some(&env.ns.name)).unwrap();
        let prog = prog_fd(&env.root, "tproxy_ingress");
        assert_eq!(test_run(&prog, &a.build(), env.v0.0, 1).verdict, TC_ACT_OK);
        assert_eq!(test_run(&prog, &b.build(), env.v1.0, 1).verdict, TC_ACT_OK);
    }
    let fa = flow(&env, "10.0.0.2", 5000, Proto::Tcp).expect("first container's flow");
    let fb = flow(&env, "10.0.1.2", 5000, Proto::Tcp).expect("second container's flow");
    assert_eq!((fa.orig_ip, fa.orig_port, fa.proxy_ip), (ip("192.0.2.1"), 443, ip("10.0.0.1")));
    assert_eq!((fb.orig_ip, fb.orig_port, fb.proxy_ip), (ip("192.0.2.2"), 8443, ip("10.0.1.1")));

    // And each answer is restored to its own original destination.
    let _in_ns = NetnsGuard::enter(Some(&env.ns.name)).unwrap();
    let egress = prog_fd(&env.root, "tproxy_egress");
    let ans_a = Pkt::tcp((ip("10.0.0.1"), 9111), (ip("10.0.0.2"), 5000)).macs(env.v0.1, CTR0);
    let ans_b = Pkt::tcp((ip("10.0.1.1"), 9111), (ip("10.0.1.2"), 5000)).macs(env.v1.1, CTR1);
    let out_a = packet::parse(&test_run(&egress, &ans_a.build(), env.v0.0, 1).data).unwrap();
    let out_b = packet::parse(&test_run(&egress, &ans_b.build(), env.v1.0, 1).data).unwrap();
    assert_eq!((out_a.src, out_a.sport), (ip("192.0.2.1"), 443));
    assert_eq!((out_b.src, out_b.sport), (ip("192.0.2.2"), 8443));
}

/// Bytes by "program/reason".
fn counter_bytes(env: &Env) -> std::collections::BTreeMap<String, u64> {
    let map = maps::open(&env.root.pins, "stats").unwrap();
    maps::read_stats(&map).unwrap().into_iter().map(|c| (format!("{}/{}", c.program, c.reason), c.bytes)).collect()
}

/// Every counter adds: two packets of different lengths move a reason's
/// and a published port's packets and bytes by the sum of both (a counter
/// that kept only the last packet would pass a one-packet fixture).
#[test]
fn counters_add_packets_and_bytes() {
    if !privileged("counters_add_packets_and_bytes") {
        return;
    }
    let env = env();
    let _in_ns = NetnsGuard::enter(Some(&env.ns.name)).unwrap();
    let (dnat, snat) = (prog_fd(&env.root, "dnat"), prog_fd(&env.root, "snat"));
    let mut short = Pkt::udp((player(), 40001), (ext_ip(), 30002));
    short.payload = vec![1; 10];
    let mut long = short.clone();
    long.payload = vec![2; 300];
    let frames = [to_ext(&env, short).build(), to_ext(&env, long).build()];
    let mut reply = Pkt::udp((ip("10.0.0.2"), 19132), (player(), 40001)).macs(CTR0, env.v0.1);
    reply.payload = vec![3; 20];
    let mut reply_long = reply.clone();
    reply_long.payload = vec![4; 500];
    let replies = [reply.build(), reply_long.build()];
    let sum = |f: &[Vec<u8>; 2]| (f[0].len() + f[1].len()) as u64;

    let (pk, by, ports) = (counters(&env.root), counter_bytes(&env), port_counters(&env));
    for f in &frames {
        assert_eq!(test_run(&dnat, f, env.ext.0, 1).verdict, TC_ACT_REDIRECT);
    }
    for f in &replies {
        assert_eq!(test_run(&snat, f, env.v0.0, 1).verdict, TC_ACT_REDIRECT);
    }
    let (pk2, by2, ports2) = (counters(&env.root), counter_bytes(&env), port_counters(&env));
    for (name, bytes) in [("dnat/redirect", sum(&frames)), ("snat/redirect", sum(&replies))] {
        assert_eq!(pk2[name] - pk[name], 2, "{name}: packets");
        assert_eq!(by2[name] - by[name], bytes, "{name}: bytes of both packets");
    }
    let (a, b) = (ports2[SLOT_30002 as usize], ports[SLOT_30002 as usize]);
    assert_eq!(
        (a.pkts_in - b.pkts_in, a.bytes_in - b.bytes_in, a.pkts_out - b.pkts_out, a.bytes_out - b.bytes_out, a.conns - b.conns),
        (2, sum(&frames), 2, sum(&replies), 1),
        "port 30002/udp: packets and bytes both ways, one new flow"
    );
}

#[test]
fn counters_scale_with_repeat() {
    if !privileged("counters_scale_with_repeat") {
        return;
    }
    let env = env();
    let _in_ns = NetnsGuard::enter(Some(&env.ns.name)).unwrap();
    let dnat = prog_fd(&env.root, "dnat");
    // Fixed point: 10.0.0.3:25565/tcp is published to 10.0.0.3:25565, so
    // the rewritten packet is a hit again on every repeat.
    let fixed = Pkt::tcp((player(), 40000), (ip("10.0.0.3"), 25565)).macs(PEER, CTR0).build();
    let miss = to_ext(&env, Pkt::tcp((player(), 40000), (ext_ip(), 22))).build();
    for (frame, counter, verdict) in [(&fixed, "dnat/redirect", TC_ACT_REDIRECT), (&miss, "dnat/miss", TC_ACT_UNSPEC)] {
        let before = counters(&env.root);
        let ports = port_counters(&env);
        let out = test_run(&dnat, frame, env.ext.0, 1000);
        assert_eq!(out.verdict, verdict);
        assert_eq!(&out.data, frame, "{counter}: a fixed point must come out unchanged");
        assert_counter_deltas(counter, &before, &counters(&env.root), &[(counter, 1000)]);
        let hits = if verdict == TC_ACT_REDIRECT { 1000 } else { 0 };
        let after = port_counters(&env)[SLOT_FIXED as usize];
        let b = ports[SLOT_FIXED as usize];
        assert_eq!(
            (after.pkts_in - b.pkts_in, after.bytes_in - b.bytes_in, after.conns - b.conns),
            (hits, hits * frame.len() as u64, 0),
            "{counter}: per-port counters after 1000 runs"
        );
    }
    let ingress = prog_fd(&env.root, "tproxy_ingress");
    let to_proxy = syn(Pkt::tcp((ip("10.0.0.2"), 41000), (ip("10.0.0.1"), 9111)).macs(CTR0, env.v0.1)).build();
    let before = counters(&env.root);
    let out = test_run(&ingress, &to_proxy, env.v0.0, 500);
    assert_eq!(out.verdict, TC_ACT_OK);
    assert_counter_deltas("tproxy repeat", &before, &counters(&env.root), &[("tproxy_ingress/tcp", 500)]);
}

/// An AF_PACKET socket on one interface of a test namespace.
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn open(ns: &TestNs, iface: u32) -> Self {
        let _g = NetnsGuard::enter(Some(&ns.name)).unwrap();
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); checked below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, all.into()) };
        assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
        // SAFETY: fd is fresh and ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = all;
        sll.sll_ifindex = iface as i32;
        let tv = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
        // SAFETY: valid descriptor; sll and tv are live and of the sizes given.
        unsafe {
            let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            assert_eq!(libc::bind(fd.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), len), 0, "bind packet socket");
            let tl = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
            assert_eq!(libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&tv as *const libc::timeval).cast(), tl), 0);
        }
        Self(fd)
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: valid descriptor and buffer.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, frame.len() as isize, "sending a {}-byte frame: {}", frame.len(), std::io::Error::last_os_error());
    }

    /// The first frame received (not sent) on the interface within two
    /// seconds for which `want` holds.
    fn recv(&self, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut buf = vec![0u8; 65536];
        while std::time::Instant::now() < deadline {
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: valid descriptor; buf and from are live and of the sizes given.
            let n = unsafe {
                libc::recvfrom(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0, (&mut from as *mut libc::sockaddr_ll).cast(), &mut len)
            };
            if n < 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let f = &buf[..n as usize];
            if want(f) {
                return Some(f.to_vec());
            }
        }
        None
    }
}

/// BPF_PROG_TEST_RUN makes linear skbs only. A packet socket sends a frame
/// longer than a page as an skb whose linear head holds the Ethernet
/// header alone (the rest is in page fragments), and a veth hands it to
/// its peer as it is: every program then finds its IPv4 and L4 headers
/// beyond `data_end` and must pull them in (bpf_skb_pull_data) before it
/// parses, rewrites and counts the packet as it would a linear one.
#[test]
fn headers_beyond_the_linear_head() {
    if !privileged("headers_beyond_the_linear_head") {
        return;
    }
    let env = env();
    let ns = &env.ns;
    // Nothing but the test's frames: no IPv6 chatter of links coming up.
    // bpf_redirect_peer delivers only into another namespace: the
    // container side of dpv0 goes into one of its own.
    let ctr = TestNs::new();
    for n in [&ns.name, &ctr.name] {
        sh(&format!("ip netns exec {n} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1"));
    }
    ns.ip(&format!("link set dpc0 netns {}", ctr.name));
    for dev in ["dpext", "dpextp", "dpv0"] {
        ns.ip(&format!("link set {dev} mtu 9000 up"));
    }
    ctr.ip("link set dpc0 mtu 9000 up");
    // Replies leave by bpf_redirect_neigh: a route and a neighbour for
    // the player.
    ns.ip(&format!("route add {}/32 dev dpext", player()));
    ns.ip(&format!("neigh add {} lladdr 02:ee:00:00:00:09 dev dpext nud permanent", player()));
    let n = Some(ns.name.as_str());
    ops::attach_tc(&env.root.pins, n, datapath::kernel::attach::Kind::Dnat, "dpext").unwrap();
    ops::attach_tc(&env.root.pins, n, datapath::kernel::attach::Kind::Host, "dpv0").unwrap();
    // The guard (generic XDP, which linearizes every skb it sees) would
    // hand dnat a linear skb: take it off for this test.
    ns.ip("link set dev dpext xdpgeneric off");
    let player_side = PacketSocket::open(ns, ns.iface("dpextp").0);
    let container = PacketSocket::open(&ctr, ctr.iface("dpc0").0);
    let big = |mut p: Pkt| {
        p.payload = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
        p
    };

    // dnat: the player's segment to a published port.
    let (hit, hit_out) = inbound(&env, big(Pkt::tcp((player(), 41000), (ext_ip(), 30001))), "10.0.0.2", 25565, CTR0);
    let frame = hit.build();
    assert!(frame.len() > 4096, "the frame must be longer than a page");
    let before = counters(&env.root);
    player_side.send(&frame);
    let want = hit_out.build();
    let got = container.recv(|f| f.len() == want.len());
    assert_counter_deltas("dnat, headers beyond the head", &before, &counters(&env.root), &[("dnat/redirect", 1)]);
    let got = got.expect("the published segment reaches the container");
    assert!(got == want, "dnat's rewrite of a non-linear frame: {}", packet::first_diff(&got, &want));
    packet::verify_checksums(&got).unwrap();
    let f = published_flow(&env, "10.0.0.2", 25565, 41000, Proto::Tcp).expect("dnat recorded the flow");
    assert_eq!((f.ext_addr, f.host_port, f.veth_ifindex), (ext_ip(), 30001, env.v0.0));

    // snat: the container's reply, out of the external interface.
    let reply = big(Pkt::tcp((ip("10.0.0.2"), 25565), (player(), 41000))).macs(CTR0, env.v0.1);
    let mut reply_out = reply.clone();
    reply_out.src = ext_ip();
    reply_out.sport = 30001;
    reply_out.eth_src = env.ext.1;
    reply_out.eth_dst = [0x02, 0xee, 0, 0, 0, 0x09];
    let before = counters(&env.root);
    container.send(&reply.build());
    let want = reply_out.build();
    let got = player_side.recv(|f| f.len() == want.len());
    assert_counter_deltas("snat, headers beyond the head", &before, &counters(&env.root), &[("snat/redirect", 1)]);
    let got = got.expect("the reply reaches the player's side");
    assert!(got == want, "snat's rewrite of a non-linear frame: {}", packet::first_diff(&got, &want));
    packet::verify_checksums(&got).unwrap();

    // tproxy: a connection the container opens goes to the proxy.
    let open = big(syn(Pkt::tcp((ip("10.0.0.2"), 41001), (ip("192.0.2.7"), 443)))).macs(CTR0, env.v0.1);
    let before = counters(&env.root);
    container.send(&open.build());
    let mut moved = false;
    for _ in 0..100 {
        let after = counters(&env.root);
        if after["tproxy_ingress/tcp"] > before["tproxy_ingress/tcp"] {
            moved = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(moved, "tproxy_ingress did not take the SYN");
    // The proxy port has no listener here: the host's RST that follows
    // moves tproxy_egress's counters, so only ingress is looked at.
    let after = counters(&env.root);
    for (name, want) in [("snat/handed_on", 1), ("tproxy_ingress/tcp", 1), ("tproxy_ingress/malformed_dropped", 0)] {
        assert_eq!(after[name] - before[name], want, "tproxy, headers beyond the head: counter {name}");
    }
    let f = flow(&env, "10.0.0.2", 41001, Proto::Tcp).expect("the proxied flow is recorded");
    assert_eq!((f.orig_ip, f.orig_port), (ip("192.0.2.7"), 443));
}
