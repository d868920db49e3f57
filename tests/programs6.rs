//! Every IPv6 program path through BPF_PROG_TEST_RUN, as tables of
//! fixtures like tests/programs.rs: input frame, map state, verdict,
//! expected output bytes and exactly which counters move. Rewritten frames
//! are checked by the independent IPv6 checksum verifier
//! (`common::packet6::verify_checksums6`), ICMPv6 errors and their
//! embedded packets included.

mod common;

use std::net::Ipv6Addr;

use common::packet6::{self, ip6, neigh_adv, neigh_sol, Pkt6, ICMP6};
use common::*;
use datapath::abi::{types, Proto, AF_INET6};
use datapath::maps::{self, Ext, PortCounters};
use datapath::net::netns::NetnsGuard;
use datapath::ops::{self, DnatAdd};

const CTR0: [u8; 6] = [0x02, 0xc0, 0, 0, 0, 0x02];
const PEER: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x09];

fn player() -> Ipv6Addr {
    ip6("2001:db8:ff::9")
}
/// The default external IPv6 address.
fn ext6() -> Ipv6Addr {
    ip6("2001:db8::1")
}
/// A second external IPv6 address, not a default one.
fn ext6b() -> Ipv6Addr {
    ip6("2001:db8::2")
}
fn ctr6() -> Ipv6Addr {
    ip6("fd00::2")
}
fn gw6() -> Ipv6Addr {
    ip6("fe80::1")
}
/// The container's own link-local address.
fn ctr_ll() -> Ipv6Addr {
    ip6("fe80::c0:ff:fe00:2")
}
fn router() -> Ipv6Addr {
    ip6("2001:db8:ff::fe")
}

const SLOT_30001: u32 = 0;
const SLOT_30002: u32 = 1;
const SLOT_B: u32 = 2;
const SLOT_V4: u32 = 3;
const SLOTS: u32 = 4;

/// A loaded pin root and a namespace with host veths dpv0 (registered for
/// 10.0.0.2 and fd00::2, gateway fe80::1), dpv1 (10.0.1.2 only) and dpv2
/// (not registered), an external veth with 2001:db8::1 (default) and
/// 2001:db8::2, the IPv4 default address 198.51.100.1, and:
///
/// | slot | published on | port/proto | to                |
/// |------|--------------|------------|-------------------|
/// | 0    | default v6   | 30001/tcp  | [fd00::2]:25565   |
/// | 1    | default v6   | 30002/udp  | [fd00::2]:19132   |
/// | 2    | 2001:db8::2  | 30001/tcp  | [fd00::2]:25566   |
/// | 3    | default v4   | 30001/tcp  | 10.0.0.2:25565    |
struct Env {
    root: TestRoot,
    ns: TestNs,
    v0: (u32, [u8; 6]),
    v1: (u32, [u8; 6]),
    v2: (u32, [u8; 6]),
    ext: (u32, [u8; 6]),
}

fn publish(env: (&TestRoot, &TestNs), ext: Ext, port: u16, ctr: std::net::IpAddr, proto: Proto, to: u16) {
    let a = DnatAdd { ext, host_port: port, ctr_ip: ctr, veth: "dpv0".into(), ctr_mac: CTR0, proto, to_port: to };
    ops::dnat_add(&env.0.pins, Some(&env.1.name), &a).expect("map dnat add");
}

fn env() -> Env {
    let root = TestRoot::loaded();
    let ns = TestNs::new();
    for i in 0..3 {
        ns.ip(&format!("link add dpv{i} type veth peer name dpc{i}"));
        ns.ip(&format!("addr add 10.0.{i}.1/32 dev dpv{i}"));
        ns.ip(&format!("link set dpv{i} up"));
    }
    ns.ip("-6 addr add fe80::1/64 dev dpv0 nodad");
    ns.ip("link add dpext type veth peer name dpextp");
    ns.ip("link set dpext up");
    let n = Some(ns.name.as_str());
    ops::veth_add_dual(&root.pins, n, "dpv0", ip("10.0.0.2"), Some(ctr6())).unwrap();
    ops::veth_add(&root.pins, n, "dpv1", ip("10.0.1.2")).unwrap();
    ops::external_add(&root.pins, n, ext6(), "dpext", true).unwrap();
    ops::external_add(&root.pins, n, ext6b(), "dpext", false).unwrap();
    ops::snat_set(&root.pins, n, ip("198.51.100.1"), "dpext").unwrap();
    let e = (&root, &ns);
    publish(e, Ext::Default, 30001, ctr6().into(), Proto::Tcp, 25565);
    publish(e, Ext::Default, 30002, ctr6().into(), Proto::Udp, 19132);
    publish(e, Ext::Addr(ext6b().into()), 30001, ctr6().into(), Proto::Tcp, 25566);
    publish(e, Ext::Default, 30001, ip("10.0.0.2").into(), Proto::Tcp, 25565);
    let (v0, v1, v2, ext) = (ns.iface("dpv0"), ns.iface("dpv1"), ns.iface("dpv2"), ns.iface("dpext"));
    let env = Env { root, ns, v0, v1, v2, ext };
    let pins = &env.root.pins;
    assert_eq!(ops::dnat_get_in(pins, AF_INET6, Ext::Default, 30001, Proto::Tcp).unwrap().slot, SLOT_30001);
    assert_eq!(ops::dnat_get_in(pins, AF_INET6, Ext::Default, 30002, Proto::Udp).unwrap().slot, SLOT_30002);
    assert_eq!(ops::dnat_get(pins, Ext::Addr(ext6b().into()), 30001, Proto::Tcp).unwrap().slot, SLOT_B);
    assert_eq!(ops::dnat_get(pins, Ext::Default, 30001, Proto::Tcp).unwrap().slot, SLOT_V4);
    env
}

fn port_counters(env: &Env) -> Vec<PortCounters> {
    let m = maps::open(&env.root.pins, "port_stats").unwrap();
    (0..SLOTS).map(|s| maps::port_counters(&m, s).unwrap()).collect()
}

struct Fx {
    name: &'static str,
    prog: &'static str,
    ifindex: u32,
    input: Vec<u8>,
    verdict: i32,
    /// Expected output; None: the input, untouched.
    output: Option<Vec<u8>>,
    counters: Vec<&'static str>,
    /// (slot, inbound, bytes, connection) of the published port it counts to.
    acct: Option<(u32, bool, usize, u64)>,
}

fn fx(name: &'static str, prog: &'static str, ifindex: u32, input: Vec<u8>, verdict: i32, output: Option<Vec<u8>>, counter: &'static str) -> Fx {
    let counters = if counter.is_empty() { vec![] } else { vec![counter] };
    Fx { name, prog, ifindex, input, verdict, output, counters, acct: None }
}

impl Fx {
    fn acct_in(mut self, slot: u32, conn: bool) -> Self {
        self.acct = Some((slot, true, self.input.len(), u64::from(conn)));
        self
    }
    fn acct_out(mut self, slot: u32) -> Self {
        self.acct = Some((slot, false, self.input.len(), 0));
        self
    }
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
        assert!(out.data == *want, "{}: output differs from expected: {}", fx.name, common::packet::first_diff(&out.data, want));
        if fx.output.is_some() {
            if let Err(e) = packet6::verify_checksums6(&out.data) {
                panic!("{}: rewritten packet fails the independent checksum check: {e}", fx.name);
            }
        }
        let expect: Vec<(&str, u64)> = fx.counters.iter().map(|c| (*c, 1)).collect();
        assert_counter_deltas(fx.name, &before, &after, &expect);
        for slot in 0..SLOTS as usize {
            let (b, a) = (ports_before[slot], ports_after[slot]);
            let got = PortCounters {
                pkts_in: a.pkts_in - b.pkts_in,
                bytes_in: a.bytes_in - b.bytes_in,
                pkts_out: a.pkts_out - b.pkts_out,
                bytes_out: a.bytes_out - b.bytes_out,
                conns: a.conns - b.conns,
            };
            let want = match fx.acct {
                Some((s, true, bytes, conns)) if s as usize == slot => {
                    PortCounters { pkts_in: 1, bytes_in: bytes as u64, conns, ..Default::default() }
                }
                Some((s, false, bytes, _)) if s as usize == slot => {
                    PortCounters { pkts_out: 1, bytes_out: bytes as u64, ..Default::default() }
                }
                _ => PortCounters::default(),
            };
            assert_eq!(got, want, "{}: counters of slot {slot} moved by {got:?}, expected {want:?}", fx.name);
        }
    }
}

/// A player's packet to an external address and what dnat makes of it.
fn inbound(env: &Env, p: Pkt6, ctr_port: u16) -> (Vec<u8>, Vec<u8>) {
    let p = p.macs(PEER, env.ext.1);
    let mut o = p.clone();
    o.dst = ctr6();
    o.dport = ctr_port;
    o.eth_dst = CTR0;
    (p.build(), o.build())
}

fn flow6(env: &Env, player_port: u16, ctr_port: u16, proto: Proto) -> Option<types::flow6_value> {
    let m = maps::open(&env.root.pins, "flows6").unwrap();
    let k = types::flow6_key::new(ctr6(), ctr_port, player(), player_port, proto);
    maps::lookup(&m, &k).unwrap()
}

#[test]
fn dnat6_fixtures() {
    if !privileged("dnat6_fixtures") {
        return;
    }
    let env = env();
    let e = env.ext.0;
    let syn = |sport| Pkt6::tcp((player(), sport), (ext6(), 30001)).syn();
    let (s1, s1o) = inbound(&env, syn(40000), 25565);
    let (seg, sego) = inbound(&env, Pkt6::tcp((player(), 40000), (ext6(), 30001)), 25565);
    let (ext_hdrs, ext_hdrso) = inbound(&env, syn(40001).hop_by_hop().dest_opts().routing(), 25565);
    let (u1, u1o) = inbound(&env, Pkt6::udp((player(), 50000), (ext6(), 30002)), 19132);
    let (b, bo) = inbound(&env, Pkt6::tcp((player(), 40002), (ext6b(), 30001)).syn(), 25566);
    let to_ext = |p: Pkt6| p.macs(PEER, env.ext.1).build();
    // Headers that contradict the frame.
    let mut beyond = to_ext(syn(40003));
    beyond[18..20].copy_from_slice(&200u16.to_be_bytes());
    let mut tcp_cut = to_ext(Pkt6::tcp((player(), 40004), (ext6(), 30001)));
    tcp_cut[18..20].copy_from_slice(&10u16.to_be_bytes());
    let mut ext_cut = to_ext(syn(40005).dest_opts());
    ext_cut[14 + 40 + 1] = 200; // a 1608-byte header in a 44-byte payload
    let mut too_many = syn(40006);
    for _ in 0..9 {
        too_many = too_many.hop_by_hop();
    }
    let no_next = Pkt6::icmp6(player(), ext6(), 0, 0, [0; 4], &[]);
    let mut no_next = no_next.macs(PEER, env.ext.1);
    no_next.next = packet6::NO_NEXT;
    no_next.payload = vec![0; 8];
    let echo = Pkt6::icmp6(player(), ext6(), 128, 0, [0, 1, 0, 1], b"ping");
    let table = vec![
        fx("syn to a default address", "dnat", e, s1, TC_ACT_REDIRECT, Some(s1o), "dnat/redirect").acct_in(SLOT_30001, true),
        fx("a segment of that connection", "dnat", e, seg, TC_ACT_REDIRECT, Some(sego), "dnat/redirect").acct_in(SLOT_30001, false),
        fx("hop-by-hop, destination options and routing headers before tcp", "dnat", e, ext_hdrs, TC_ACT_REDIRECT, Some(ext_hdrso), "dnat/redirect").acct_in(SLOT_30001, true),
        fx("udp, a new flow", "dnat", e, u1.clone(), TC_ACT_REDIRECT, Some(u1o.clone()), "dnat/redirect").acct_in(SLOT_30002, true),
        fx("udp, the same flow", "dnat", e, u1, TC_ACT_REDIRECT, Some(u1o), "dnat/redirect").acct_in(SLOT_30002, false),
        fx("a dedicated address", "dnat", e, b, TC_ACT_REDIRECT, Some(bo), "dnat/redirect").acct_in(SLOT_B, true),
        fx("unpublished port", "dnat", e, to_ext(Pkt6::tcp((player(), 1), (ext6(), 22))), TC_ACT_UNSPEC, None, "dnat/miss"),
        fx("udp to a tcp port", "dnat", e, to_ext(Pkt6::udp((player(), 1), (ext6(), 30001))), TC_ACT_UNSPEC, None, "dnat/miss"),
        fx("not an external address", "dnat", e, to_ext(Pkt6::tcp((player(), 1), (ip6("2001:db8::77"), 30001))), TC_ACT_UNSPEC, None, "dnat/miss"),
        fx("first fragment", "dnat", e, to_ext(syn(40007).fragment(0, true)), TC_ACT_UNSPEC, None, "dnat/fragment"),
        fx("later fragment after a hop-by-hop header", "dnat", e, to_ext(syn(40008).hop_by_hop().fragment(185, false)), TC_ACT_UNSPEC, None, "dnat/fragment"),
        fx("payload length beyond the frame", "dnat", e, beyond, TC_ACT_UNSPEC, None, "dnat/malformed"),
        fx("tcp header cut by the payload length", "dnat", e, tcp_cut, TC_ACT_UNSPEC, None, "dnat/malformed"),
        fx("extension header beyond the payload", "dnat", e, ext_cut, TC_ACT_UNSPEC, None, "dnat/malformed"),
        fx("nine extension headers", "dnat", e, to_ext(too_many), TC_ACT_UNSPEC, None, "dnat/not_l4"),
        fx("no next header", "dnat", e, no_next.build(), TC_ACT_UNSPEC, None, "dnat/not_l4"),
        fx("icmpv6 echo", "dnat", e, to_ext(echo), TC_ACT_UNSPEC, None, "dnat/icmp_passed"),
    ];
    run_table(&env, table);
    let f = flow6(&env, 40000, 25565, Proto::Tcp).expect("the flow is recorded in flows6");
    assert_eq!((f.ext_addr(), u16::from_be(f.host_port), f.ext_ifindex, f.veth_ifindex, f.slot), (ext6(), 30001, e, env.v0.0, SLOT_30001));
    let f = flow6(&env, 40002, 25566, Proto::Tcp).expect("the dedicated address's flow");
    assert_eq!((f.ext_addr(), f.slot), (ext6b(), SLOT_B));
    assert!(flow6(&env, 40007, 25565, Proto::Tcp).is_none(), "a fragment records nothing");
}

/// Runs dnat on a player's packet so its flow is recorded.
fn record(env: &Env, p: &Pkt6) {
    let _in_ns = NetnsGuard::enter(Some(&env.ns.name)).unwrap();
    let out = test_run(&prog_fd(&env.root, "dnat"), &p.clone().macs(PEER, env.ext.1).build(), env.ext.0, 1);
    assert_eq!(out.verdict, TC_ACT_REDIRECT, "recording a flow");
}

#[test]
fn icmp6_errors_about_published_flows_are_translated() {
    if !privileged("icmp6_errors_about_published_flows_are_translated") {
        return;
    }
    let env = env();
    let e = env.ext.0;
    record(&env, &Pkt6::tcp((player(), 40000), (ext6(), 30001)).syn());
    record(&env, &Pkt6::udp((player(), 50000), (ext6(), 30002)));
    // The host's replies as they left, and as the container sent them.
    let mut reply = Pkt6::tcp((ext6(), 30001), (player(), 40000));
    reply.payload = vec![0x5a; 1200];
    let mut reply_ctr = reply.clone();
    reply_ctr.src = ctr6();
    reply_ctr.sport = 25565;
    let mut ureply = Pkt6::udp((ext6(), 30002), (player(), 50000));
    ureply.payload = b"pong".to_vec();
    let mut ureply_ctr = ureply.clone();
    ureply_ctr.src = ctr6();
    ureply_ctr.sport = 19132;
    let err = |t: u8, code: u8, rest: u32, about: &Pkt6, keep: usize| {
        let inner = about.ip_packet();
        let inner = &inner[..keep.min(inner.len())];
        Pkt6::icmp6_error(router(), ext6(), t, code, rest, inner).macs(PEER, env.ext.1)
    };
    let translated = |t: u8, code: u8, rest: u32, about: &Pkt6, keep: usize| {
        let inner = about.ip_packet();
        let inner = &inner[..keep.min(inner.len())];
        let mut p = Pkt6::icmp6_error(router(), ctr6(), t, code, rest, inner).macs(PEER, CTR0);
        p.eth_dst = CTR0;
        p.build()
    };
    // Errors carry as much of the packet as fits in 1280 bytes.
    let keep = 1280 - 48;
    let whole_udp = 1000;
    let (ptb, ptbo) = (err(2, 0, 1400, &reply, keep).build(), translated(2, 0, 1400, &reply_ctr, keep));
    // Errors that carry part of the packet: the expected embedded checksum
    // is the one of the whole packet the container sent.
    let (unr, unro) = (err(1, 4, 0, &ureply, whole_udp).build(), translated(1, 4, 0, &ureply_ctr, whole_udp));
    let (short, shorto) = (err(1, 3, 0, &reply, 40 + 18).build(), translated(1, 3, 0, &reply_ctr, 40 + 18));
    let (ports_only, ports_onlyo) = (err(2, 0, 1280, &reply, 40 + 8).build(), translated(2, 0, 1280, &reply_ctr, 40 + 8));
    let mut other_flow = reply.clone();
    other_flow.dport = 40999;
    let mut to_other = err(2, 0, 1400, &reply, keep);
    to_other.dst = ext6b();
    let time_exceeded = err(3, 0, 0, &reply, keep);
    let table = vec![
        fx("packet too big about a tcp reply", "dnat", e, ptb.clone(), TC_ACT_REDIRECT, Some(ptbo), "dnat/icmp_translated").acct_in(SLOT_30001, false),
        fx("port unreachable about a udp reply", "dnat", e, unr.clone(), TC_ACT_REDIRECT, Some(unro), "dnat/icmp_translated").acct_in(SLOT_30002, false),
        fx("unreachable with 18 bytes of the segment", "dnat", e, short.clone(), TC_ACT_REDIRECT, Some(shorto), "dnat/icmp_translated").acct_in(SLOT_30001, false),
        fx("packet too big with the ports only", "dnat", e, ports_only.clone(), TC_ACT_REDIRECT, Some(ports_onlyo), "dnat/icmp_translated").acct_in(SLOT_30001, false),
        fx("about a flow that was never recorded", "dnat", e, err(2, 0, 1400, &other_flow, keep).build(), TC_ACT_UNSPEC, None, "dnat/icmp_passed"),
        fx("addressed to another address", "dnat", e, to_other.build(), TC_ACT_UNSPEC, None, "dnat/icmp_passed"),
        fx("time exceeded", "dnat", e, time_exceeded.build(), TC_ACT_UNSPEC, None, "dnat/icmp_passed"),
        fx("cut inside the embedded header", "dnat", e, err(2, 0, 1400, &reply, 30).build(), TC_ACT_UNSPEC, None, "dnat/icmp_passed"),
    ];
    run_table(&env, table);
    // The checksums of the translated errors, by the independent verifier,
    // also where the embedded segment is cut (its checksum by hand).
    let _in_ns = NetnsGuard::enter(Some(&env.ns.name)).unwrap();
    for f in [ptb, unr, short, ports_only] {
        let out = test_run(&prog_fd(&env.root, "dnat"), &f, e, 1);
        packet6::verify_checksums6(&out.data).unwrap();
        let p = packet6::parse6(&out.data).unwrap();
        assert_eq!((p.dst, p.next), (ctr6(), ICMP6));
        let inner = &out.data[14 + 48..];
        assert_eq!(&inner[8..24], &ctr6().octets(), "embedded source");
    }
}

#[test]
fn snat6_fixtures() {
    if !privileged("snat6_fixtures") {
        return;
    }
    let env = env();
    let (v0, v1, v2) = (env.v0.0, env.v1.0, env.v2.0);
    record(&env, &Pkt6::tcp((player(), 40000), (ext6(), 30001)).syn());
    record(&env, &Pkt6::udp((player(), 50000), (ext6(), 30002)));
    record(&env, &Pkt6::tcp((player(), 40002), (ext6b(), 30001)).syn());
    let from_ctr = |p: Pkt6| p.macs(CTR0, env.v0.1);
    let reply = from_ctr(Pkt6::tcp((ctr6(), 25565), (player(), 40000)));
    let mut out = reply.clone();
    out.src = ext6();
    out.sport = 30001;
    let ureply = from_ctr(Pkt6::udp((ctr6(), 19132), (player(), 50000)));
    let mut uout = ureply.clone();
    uout.src = ext6();
    uout.sport = 30002;
    let breply = from_ctr(Pkt6::tcp((ctr6(), 25566), (player(), 40002)).hop_by_hop());
    let mut bout = breply.clone();
    bout.src = ext6b();
    bout.sport = 30001;
    let spoofed = from_ctr(Pkt6::tcp((ip6("fd00::99"), 25565), (player(), 40000)));
    let link_local = from_ctr(Pkt6::udp((ctr_ll(), 546), (ip6("ff02::1:2"), 547)));
    let own = from_ctr(Pkt6::tcp((ctr6(), 40000), (ip6("2001:db8:77::1"), 443)).syn());
    let table = vec![
        fx("tcp reply", "snat", v0, reply.build(), TC_ACT_REDIRECT, Some(out.build()), "snat/redirect").acct_out(SLOT_30001),
        fx("udp reply", "snat", v0, ureply.build(), TC_ACT_REDIRECT, Some(uout.build()), "snat/redirect").acct_out(SLOT_30002),
        fx("reply on the dedicated address, after a hop-by-hop header", "snat", v0, breply.build(), TC_ACT_REDIRECT, Some(bout.build()), "snat/redirect").acct_out(SLOT_B),
        fx("the container's own connection", "snat", v0, own.build(), TC_ACT_UNSPEC, None, "snat/handed_on"),
        fx("spoofed source", "snat", v0, spoofed.build(), TC_ACT_SHOT, None, "snat/spoofed"),
        fx("link-local source (not neighbour discovery)", "snat", v0, link_local.build(), TC_ACT_SHOT, None, "snat/spoofed"),
        fx("a reply on the wrong veth", "snat", v1, reply.build(), TC_ACT_SHOT, None, "snat/unregistered"),
        fx("unregistered veth", "snat", v2, reply.build(), TC_ACT_SHOT, None, "snat/unregistered"),
        fx("fragment from the container", "snat", v0, from_ctr(Pkt6::udp((ctr6(), 19132), (player(), 50000)).fragment(0, true)).build(), TC_ACT_UNSPEC, None, "snat/handed_on"),
    ];
    run_table(&env, table);
    let f = flow6(&env, 50000, 19132, Proto::Udp).unwrap();
    assert_eq!(f.flags & 2, 2, "a udp flow the container answered is marked answered");
}

#[test]
fn neighbour_discovery_fixtures() {
    if !privileged("neighbour_discovery_fixtures") {
        return;
    }
    let env = env();
    let (v0, vmac, v1) = (env.v0.0, env.v0.1, env.v1.0);
    let na = |target: Ipv6Addr, to: Ipv6Addr, router: bool| neigh_adv(vmac, target, CTR0, to, router).build();
    let outside = ip6("2001:db8:77::1");
    let mut hop64 = neigh_sol(CTR0, ctr_ll(), gw6(), true);
    hop64.hop_limit = 64;
    let mut rs = Pkt6::icmp6(ctr_ll(), ip6("ff02::2"), 133, 0, [0; 4], &[]);
    rs.hop_limit = 255;
    let mut mld = Pkt6::icmp6(ctr_ll(), ip6("ff02::16"), 143, 0, [0, 0, 0, 1], &[4, 0, 0, 0, 0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 2]).hop_by_hop();
    mld.hop_limit = 1;
    let echo = Pkt6::icmp6(ctr6(), outside, 128, 0, [0, 1, 0, 1], b"ping").macs(CTR0, vmac);
    let d = |s| vec![s];
    let table = vec![
        Fx { name: "solicitation for the gateway from the link-local address", prog: "arp", ifindex: v0, input: neigh_sol(CTR0, ctr_ll(), gw6(), true).build(), verdict: TC_ACT_REDIRECT, output: Some(na(gw6(), ctr_ll(), true)), counters: d("arp/neigh_advertised"), acct: None },
        Fx { name: "solicitation for the gateway from the global address", prog: "arp", ifindex: v0, input: neigh_sol(CTR0, ctr6(), gw6(), true).build(), verdict: TC_ACT_REDIRECT, output: Some(na(gw6(), ctr6(), true)), counters: d("arp/neigh_advertised"), acct: None },
        Fx { name: "solicitation for an outside address (everything on-link)", prog: "arp", ifindex: v0, input: neigh_sol(CTR0, ctr6(), outside, true).build(), verdict: TC_ACT_REDIRECT, output: Some(na(outside, ctr6(), false)), counters: d("arp/neigh_advertised"), acct: None },
        Fx { name: "solicitation without an option (the frame grows)", prog: "arp", ifindex: v0, input: neigh_sol(CTR0, ctr6(), outside, false).build(), verdict: TC_ACT_REDIRECT, output: Some(na(outside, ctr6(), false)), counters: d("arp/neigh_advertised"), acct: None },
        Fx { name: "duplicate address detection (source ::)", prog: "arp", ifindex: v0, input: neigh_sol(CTR0, Ipv6Addr::UNSPECIFIED, ctr6(), false).build(), verdict: TC_ACT_OK, output: None, counters: d("arp/nd_passed"), acct: None },
        Fx { name: "solicitation for the container's own address", prog: "arp", ifindex: v0, input: neigh_sol(CTR0, ctr_ll(), ctr6(), true).build(), verdict: TC_ACT_OK, output: None, counters: d("arp/nd_passed"), acct: None },
        Fx { name: "solicitation with hop limit 64", prog: "arp", ifindex: v0, input: hop64.build(), verdict: TC_ACT_OK, output: None, counters: d("arp/nd_passed"), acct: None },
        Fx { name: "router solicitation", prog: "arp", ifindex: v0, input: rs.macs(CTR0, [0x33, 0x33, 0, 0, 0, 2]).build(), verdict: TC_ACT_OK, output: None, counters: d("arp/nd_passed"), acct: None },
        Fx { name: "neighbour advertisement", prog: "arp", ifindex: v0, input: neigh_adv(CTR0, ctr6(), vmac, gw6(), false).build(), verdict: TC_ACT_OK, output: None, counters: d("arp/nd_passed"), acct: None },
        Fx { name: "mldv2 report after a hop-by-hop header", prog: "arp", ifindex: v0, input: mld.macs(CTR0, [0x33, 0x33, 0, 0, 0, 0x16]).build(), verdict: TC_ACT_OK, output: None, counters: d("arp/nd_passed"), acct: None },
        Fx { name: "solicitation on a veth without ipv6", prog: "arp", ifindex: v1, input: neigh_sol(CTR0, ctr_ll(), gw6(), true).build(), verdict: TC_ACT_OK, output: None, counters: d("arp/nd_passed"), acct: None },
        Fx { name: "echo request is handed on", prog: "arp", ifindex: v0, input: echo.build(), verdict: TC_ACT_UNSPEC, output: None, counters: vec![], acct: None },
        Fx { name: "tcp is handed on", prog: "arp", ifindex: v0, input: Pkt6::tcp((ctr6(), 1), (outside, 2)).build(), verdict: TC_ACT_UNSPEC, output: None, counters: vec![], acct: None },
    ];
    run_table(&env, table);
}

fn proxy_flow6(env: &Env, port: u16, proto: Proto) -> Option<types::flow_orig6> {
    let m = maps::open(&env.root.pins, "proxy_flows6").unwrap();
    maps::lookup(&m, &types::ctr_endpoint6::new(ctr6(), port, proto)).unwrap()
}

#[test]
fn tproxy6_fixtures() {
    if !privileged("tproxy6_fixtures") {
        return;
    }
    let env = env();
    let (v0, v1, v2) = (env.v0.0, env.v1.0, env.v2.0);
    let from0 = |p: Pkt6| p.macs(CTR0, env.v0.1);
    let dns_srv = ip6("2001:4860:4860::8888");
    let web = ip6("2001:db8:77::80");
    let dns = from0(Pkt6::udp((ctr6(), 5353), (dns_srv, 53)));
    let https = from0(Pkt6::tcp((ctr6(), 41000), (web, 443)).syn());
    let https_ack = from0(Pkt6::tcp((ctr6(), 41000), (web, 443)));
    let http = from0(Pkt6::tcp((ctr6(), 41001), (web, 80)).syn().dest_opts());
    let redirected = |p: &Pkt6, port: u16| {
        let mut o = p.clone();
        o.dst = gw6();
        o.dport = port;
        o.build()
    };
    let no_flow = from0(Pkt6::tcp((ctr6(), 41002), (web, 443)));
    let table = vec![
        fx("dns over udp", "tproxy_ingress", v0, dns.build(), TC_ACT_OK, Some(redirected(&dns, 9053)), "tproxy_ingress/dns"),
        fx("tcp syn", "tproxy_ingress", v0, https.build(), TC_ACT_OK, Some(redirected(&https, 9111)), "tproxy_ingress/tcp"),
        fx("a later segment of that connection", "tproxy_ingress", v0, https_ack.build(), TC_ACT_OK, Some(redirected(&https_ack, 9111)), "tproxy_ingress/tcp"),
        fx("http syn after destination options", "tproxy_ingress", v0, http.build(), TC_ACT_OK, Some(redirected(&http, 9080)), "tproxy_ingress/http"),
        fx("tcp without syn of no flow", "tproxy_ingress", v0, no_flow.build(), TC_ACT_SHOT, None, "tproxy_ingress/no_flow_dropped"),
        fx("udp to another port", "tproxy_ingress", v0, from0(Pkt6::udp((ctr6(), 4000), (web, 123))).build(), TC_ACT_SHOT, None, "tproxy_ingress/udp_dropped"),
        fx("icmpv6 echo", "tproxy_ingress", v0, from0(Pkt6::icmp6(ctr6(), web, 128, 0, [0, 1, 0, 1], b"ping")).build(), TC_ACT_SHOT, None, "tproxy_ingress/l4_dropped"),
        fx("fragment", "tproxy_ingress", v0, from0(Pkt6::udp((ctr6(), 5353), (dns_srv, 53)).fragment(0, true)).build(), TC_ACT_SHOT, None, "tproxy_ingress/fragment_dropped"),
        fx("spoofed source", "tproxy_ingress", v0, from0(Pkt6::tcp((ip6("fd00::99"), 1), (web, 443)).syn()).build(), TC_ACT_SHOT, None, "tproxy_ingress/spoofed"),
        fx("veth without ipv6", "tproxy_ingress", v1, https.build(), TC_ACT_SHOT, None, "tproxy_ingress/unregistered"),
        fx("unregistered veth", "tproxy_ingress", v2, https.build(), TC_ACT_SHOT, None, "tproxy_ingress/unregistered"),
    ];
    run_table(&env, table);
    let f = proxy_flow6(&env, 41000, Proto::Tcp).expect("the proxied flow is recorded");
    assert_eq!((f.orig_ip(), u16::from_be(f.orig_port), f.proxy_ip(), u16::from_be(f.proxy_port)), (web, 443, gw6(), 9111));
    let f = proxy_flow6(&env, 5353, Proto::Udp).unwrap();
    assert_eq!((f.orig_ip(), u16::from_be(f.orig_port)), (dns_srv, 53));

    // The proxy's answers get the original destination back as source.
    let to0 = |p: Pkt6| p.macs(env.v0.1, CTR0);
    let answer = to0(Pkt6::tcp((gw6(), 9111), (ctr6(), 41000)));
    let mut restored = answer.clone();
    restored.src = web;
    restored.sport = 443;
    let danswer = to0(Pkt6::udp((gw6(), 9053), (ctr6(), 5353)));
    let mut drestored = danswer.clone();
    drestored.src = dns_srv;
    drestored.sport = 53;
    let host_udp = to0(Pkt6::udp((gw6(), 7000), (ctr6(), 19132)));
    let table = vec![
        fx("proxy answer (tcp)", "tproxy_egress", v0, answer.build(), TC_ACT_OK, Some(restored.build()), "tproxy_egress/restored"),
        fx("proxy answer (dns)", "tproxy_egress", v0, danswer.build(), TC_ACT_OK, Some(drestored.build()), "tproxy_egress/restored"),
        fx("udp from the host", "tproxy_egress", v0, host_udp.build(), TC_ACT_OK, None, "tproxy_egress/host_udp"),
        fx("neighbour advertisement from the host", "tproxy_egress", v0, neigh_adv(env.v0.1, gw6(), CTR0, ctr6(), true).build(), TC_ACT_OK, None, "tproxy_egress/passed"),
    ];
    run_table(&env, table);
    // The container's answer to that UDP is the host's.
    let back = from0(Pkt6::udp((ctr6(), 19132), (gw6(), 7000)));
    let other = from0(Pkt6::udp((ctr6(), 19132), (gw6(), 7001)));
    let table = vec![
        fx("reply to the host's udp", "tproxy_ingress", v0, back.build(), TC_ACT_OK, None, "tproxy_ingress/host_reply"),
        fx("udp to a port the host did not send from", "tproxy_ingress", v0, other.build(), TC_ACT_SHOT, None, "tproxy_ingress/udp_dropped"),
    ];
    run_table(&env, table);
}

/// The user-space side of IPv6: registrations, addresses and mappings as
/// the maps hold them, and what is refused.
#[test]
fn ipv6_registrations_and_mappings() {
    if !privileged("ipv6_registrations_and_mappings") {
        return;
    }
    let env = env();
    let (pins, n) = (&env.root.pins, Some(env.ns.name.as_str()));
    let v = ops::veth_get(pins, n, "dpv0").unwrap();
    assert_eq!((v.ctr_ip6, v.host_ip6), (Some(ctr6()), Some(gw6())));
    let m6 = maps::open(pins, "veths6").unwrap();
    let e: types::veth6_info = maps::lookup(&m6, &env.v0.0).unwrap().unwrap();
    assert_eq!((e.ctr_ip(), e.host_ip(), e.host_mac), (ctr6(), gw6(), env.v0.1));
    assert!(maps::lookup::<_, types::veth6_info>(&m6, &env.v1.0).unwrap().is_none());
    // The same registration again is a no-op; a different one is refused.
    assert_eq!(ops::veth_add_dual(pins, n, "dpv0", ip("10.0.0.2"), Some(ctr6())).unwrap(), maps::Change::Unchanged);
    assert!(ops::veth_add_dual(pins, n, "dpv0", ip("10.0.0.2"), Some(ip6("fd00::3"))).is_err());
    // A veth without an IPv6 address cannot take an IPv6 registration.
    let err = ops::veth_add_dual(pins, n, "dpv2", ip("10.0.2.2"), Some(ip6("fd00::4"))).unwrap_err().to_string();
    assert!(err.contains("no IPv6 address"), "{err}");
    assert!(ops::veth_get(pins, n, "dpv2").is_err(), "a refused registration leaves nothing");
    for bad in ["fe80::5", "::1", "ff02::1", "::", "::ffff:10.0.0.9"] {
        assert!(ops::veth_add_dual(pins, n, "dpv2", ip("10.0.2.2"), Some(ip6(bad))).is_err(), "{bad} must be refused");
    }
    // dnat6 holds the expansion of the default mappings on every default
    // IPv6 address, and the dedicated one.
    let d6 = maps::open(pins, "dnat6").unwrap();
    let at = |a: Ipv6Addr, port: u16, proto: Proto| maps::lookup::<_, types::dnat6_value>(&d6, &types::dnat6_key::new(a, port, proto)).unwrap();
    assert_eq!(at(ext6(), 30001, Proto::Tcp).map(|v| (v.ctr_addr(), u16::from_be(v.ctr_port), v.slot)), Some((ctr6(), 25565, SLOT_30001)));
    assert_eq!(at(ext6b(), 30001, Proto::Tcp).map(|v| v.slot), Some(SLOT_B));
    assert!(at(ext6b(), 30002, Proto::Udp).is_none(), "not a default address");
    // Making the second address a default one expands the default
    // mappings on it, except where its dedicated mapping conflicts.
    let err = ops::external_add(pins, n, ext6b(), "dpext", true).unwrap_err().to_string();
    assert!(err.contains("conflicts"), "{err}");
    ops::dnat_del(pins, Ext::Addr(ext6b().into()), 30001, Proto::Tcp).unwrap();
    ops::external_add(pins, n, ext6b(), "dpext", true).unwrap();
    assert_eq!(at(ext6b(), 30002, Proto::Udp).map(|v| v.slot), Some(SLOT_30002));
    // A bare port is the IPv4 mapping; [::]:port the IPv6 one.
    assert_eq!(ops::dnat_del(pins, Ext::Default, 30001, Proto::Tcp).unwrap(), maps::Change::Deleted);
    assert!(at(ext6(), 30001, Proto::Tcp).is_some(), "the IPv6 mapping stays");
    ops::dnat_del_in(pins, AF_INET6, Ext::Default, 30001, Proto::Tcp).unwrap();
    assert!(at(ext6(), 30001, Proto::Tcp).is_none() && at(ext6b(), 30001, Proto::Tcp).is_none());
    // Families never mix.
    let a = DnatAdd { ext: Ext::Addr(ext6().into()), host_port: 30009, ctr_ip: ip("10.0.0.2").into(), veth: "dpv0".into(), ctr_mac: CTR0, proto: Proto::Tcp, to_port: 1 };
    assert!(ops::dnat_add(pins, n, &a).is_err());
    // Unregistering removes both sides.
    ops::veth_del(pins, n, "dpv0").unwrap();
    assert!(maps::lookup::<_, types::veth6_info>(&m6, &env.v0.0).unwrap().is_none());
}
