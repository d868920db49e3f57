//! Every program path through BPF_PROG_TEST_RUN, as a table of fixtures:
//! input frame, map state, expected verdict, expected output bytes and
//! exactly which counters move. Output checksums are verified from scratch
//! by `common::packet::verify_checksums`.

mod common;

use std::net::Ipv4Addr;

use common::packet::{self, arp, ipv6_udp, Pkt};
use common::*;
use datapath::abi::Proto;
use datapath::ops::{self, DnatAdd};
use datapath::net::netns::NetnsGuard;

const CTR0: [u8; 6] = [0x02, 0xc0, 0, 0, 0, 0x02];
const CTR1: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x02];
const PEER: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x09];
const BCAST: [u8; 6] = [0xff; 6];

fn player() -> Ipv4Addr {
    ip("203.0.113.9")
}
fn ext_ip() -> Ipv4Addr {
    ip("198.51.100.1")
}

/// A loaded pin root and a namespace with three host veths (dpv0 and dpv1
/// registered for 10.0.0.2 and 10.0.1.2, dpv2 not), an external veth, and
/// four published ports.
struct Env {
    root: TestRoot,
    ns: TestNs,
    v0: (u32, [u8; 6]),
    v1: (u32, [u8; 6]),
    v2: (u32, [u8; 6]),
    ext: (u32, [u8; 6]),
}

fn publish(e: &TestRoot, ns: &TestNs, port: u16, ctr: &str, veth: &str, mac: [u8; 6], proto: Proto, to: u16) {
    let a = DnatAdd { host_port: port, ctr_ip: ip(ctr), veth: veth.into(), ctr_mac: mac, proto, to_port: to };
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
    ns.ip("link add dpext type veth peer name dpextp");
    ns.ip("link set dpext up");
    let n = Some(ns.name.as_str());
    ops::veth_add(&root.pins, n, "dpv0", ip("10.0.0.2")).unwrap();
    ops::veth_add(&root.pins, n, "dpv1", ip("10.0.1.2")).unwrap();
    ops::snat_set(&root.pins, n, ext_ip(), "dpext").unwrap();
    publish(&root, &ns, 30001, "10.0.0.2", "dpv0", CTR0, Proto::Tcp, 25565);
    publish(&root, &ns, 30002, "10.0.0.2", "dpv0", CTR0, Proto::Udp, 19132);
    publish(&root, &ns, 30003, "10.0.1.2", "dpv1", CTR1, Proto::Tcp, 25565);
    // Fixed point for repeat runs: the rewrite leaves the packet on the hit path.
    publish(&root, &ns, 25565, "10.0.0.3", "dpv0", CTR0, Proto::Tcp, 25565);
    let (v0, v1, v2, ext) = (ns.iface("dpv0"), ns.iface("dpv1"), ns.iface("dpv2"), ns.iface("dpext"));
    Env { root, ns, v0, v1, v2, ext }
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
}

fn run_table(env: &Env, table: Vec<Fx>) {
    let _in_ns = NetnsGuard::enter(Some(&env.ns.name)).unwrap();
    for fx in table {
        let prog = prog_fd(&env.root, fx.prog);
        let before = counters(&env.root);
        let out = try_test_run(&prog, &fx.input, fx.ifindex, 1)
            .unwrap_or_else(|e| panic!("{}: BPF_PROG_TEST_RUN failed: {e}", fx.name));
        let after = counters(&env.root);
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

fn to_ext(p: Pkt) -> Pkt {
    p.macs(PEER, [0x02, 0xe0, 0, 0, 0, 1])
}

#[test]
fn dnat_fixtures() {
    if !privileged("dnat_fixtures") {
        return;
    }
    let env = env();
    let hit_tcp = to_ext(Pkt::tcp((player(), 40000), (ext_ip(), 30001)));
    let mut hit_tcp_out = hit_tcp.clone();
    hit_tcp_out.dst = ip("10.0.0.2");
    hit_tcp_out.dport = 25565;
    hit_tcp_out.eth_dst = CTR0;

    let hit_udp = to_ext(Pkt::udp((player(), 40001), (ext_ip(), 30002)));
    let mut hit_udp_out = hit_udp.clone();
    hit_udp_out.dst = ip("10.0.0.2");
    hit_udp_out.dport = 19132;
    hit_udp_out.eth_dst = CTR0;

    let mut udp_nocsum = hit_udp.clone();
    udp_nocsum.udp_no_csum = true;
    let mut udp_nocsum_out = hit_udp_out.clone();
    udp_nocsum_out.udp_no_csum = true;

    let mut opts = hit_tcp.clone();
    // Record Route (7 bytes, one slot) and End of Options: IHL 7.
    opts.ip_options = vec![7, 7, 4, 0, 0, 0, 0, 0];
    let mut opts_out = hit_tcp_out.clone();
    opts_out.ip_options = opts.ip_options.clone();

    let mut tcp_opts = hit_tcp.clone();
    tcp_opts.tcp_options = vec![2, 4, 0x05, 0xb4, 1, 1, 4, 2]; // MSS, NOP, NOP, SACK-ok
    tcp_opts.tcp_flags = 0x02;
    let mut tcp_opts_out = hit_tcp_out.clone();
    tcp_opts_out.tcp_options = tcp_opts.tcp_options.clone();
    tcp_opts_out.tcp_flags = 0x02;

    let mut nonfirst = hit_tcp.clone();
    nonfirst.frag = 0x0010;
    let mut first = hit_tcp.clone();
    first.frag = 0x2000;
    let mut vlan = hit_tcp.clone();
    vlan.vlan = Some(100);
    let mut bad_doff = hit_tcp.build();
    bad_doff[14 + 20 + 12] = 0x40; // data offset 4 (< 5)
    let mut ihl15 = hit_tcp.build();
    ihl15[14] = 0x4f;
    let mut ihl4 = hit_tcp.build();
    ihl4[14] = 0x44;
    let cut_tcp = set_tot_len(hit_tcp.build()[..14 + 20 + 10].to_vec(), 30);

    let d = |s: &'static str| vec![(s, 1u64)];
    let table = vec![
        Fx { name: "tcp hit", prog: "dnat", ifindex: 0, input: hit_tcp.build(), verdict: TC_ACT_REDIRECT, output: Some(hit_tcp_out.build()), counters: d("dnat/redirect") },
        Fx { name: "udp hit, --to-port", prog: "dnat", ifindex: 0, input: hit_udp.build(), verdict: TC_ACT_REDIRECT, output: Some(hit_udp_out.build()), counters: d("dnat/redirect") },
        Fx { name: "udp hit without checksum keeps 0", prog: "dnat", ifindex: 0, input: udp_nocsum.build(), verdict: TC_ACT_REDIRECT, output: Some(udp_nocsum_out.build()), counters: d("dnat/redirect") },
        Fx { name: "ip options (IHL 7) hit", prog: "dnat", ifindex: 0, input: opts.build(), verdict: TC_ACT_REDIRECT, output: Some(opts_out.build()), counters: d("dnat/redirect") },
        Fx { name: "tcp options (doff 7) hit", prog: "dnat", ifindex: 0, input: tcp_opts.build(), verdict: TC_ACT_REDIRECT, output: Some(tcp_opts_out.build()), counters: d("dnat/redirect") },
        Fx { name: "tcp to a udp-only port misses", prog: "dnat", ifindex: 0, input: to_ext(Pkt::tcp((player(), 40000), (ext_ip(), 30002))).build(), verdict: TC_ACT_UNSPEC, output: None, counters: d("dnat/miss") },
        Fx { name: "udp to a tcp-only port misses", prog: "dnat", ifindex: 0, input: to_ext(Pkt::udp((player(), 40000), (ext_ip(), 30001))).build(), verdict: TC_ACT_UNSPEC, output: None, counters: d("dnat/miss") },
        Fx { name: "unpublished port", prog: "dnat", ifindex: 0, input: to_ext(Pkt::tcp((player(), 40000), (ext_ip(), 22))).build(), verdict: TC_ACT_UNSPEC, output: None, counters: d("dnat/miss") },
        Fx { name: "ipv6", prog: "dnat", ifindex: 0, input: ipv6_udp(), verdict: TC_ACT_UNSPEC, output: None, counters: d("dnat/not_ipv4") },
        Fx { name: "arp", prog: "dnat", ifindex: 0, input: arp(1, PEER, player(), [0; 6], ext_ip(), BCAST), verdict: TC_ACT_UNSPEC, output: None, counters: d("dnat/not_ipv4") },
        Fx { name: "vlan-tagged", prog: "dnat", ifindex: 0, input: vlan.build(), verdict: TC_ACT_UNSPEC, output: None, counters: d("dnat/not_ipv4") },
        Fx { name: "icmp", prog: "dnat", ifindex: 0, input: to_ext(Pkt::icmp(player(), ext_ip())).build(), verdict: TC_ACT_UNSPEC, output: None, counters: d("dnat/not_l4") },
        Fx { name: "non-first fragment", prog: "dnat", ifindex: 0, input: nonfirst.build(), verdict: TC_ACT_UNSPEC, output: None, counters: d("dnat/fragment") },
        Fx { name: "first fragment", prog: "dnat", ifindex: 0, input: first.build(), verdict: TC_ACT_UNSPEC, output: None, counters: d("dnat/fragment") },
        // BPF_PROG_TEST_RUN itself refuses IPv4 frames shorter than 34
        // bytes, so the shortest cut here ends in the IP options.
        Fx { name: "cut inside the ip options", prog: "dnat", ifindex: 0, input: opts.build()[..14 + 24].to_vec(), verdict: TC_ACT_UNSPEC, output: None, counters: d("dnat/malformed") },
        Fx { name: "ihl beyond the frame", prog: "dnat", ifindex: 0, input: ihl15, verdict: TC_ACT_UNSPEC, output: None, counters: d("dnat/malformed") },
        Fx { name: "total length beyond the frame", prog: "dnat", ifindex: 0, input: hit_tcp.build()[..14 + 20 + 10].to_vec(), verdict: TC_ACT_UNSPEC, output: None, counters: d("dnat/malformed") },
        Fx { name: "tcp header shorter than 20 bytes", prog: "dnat", ifindex: 0, input: cut_tcp, verdict: TC_ACT_UNSPEC, output: None, counters: d("dnat/malformed") },
        Fx { name: "tcp data offset < 5", prog: "dnat", ifindex: 0, input: bad_doff, verdict: TC_ACT_UNSPEC, output: None, counters: d("dnat/malformed") },
        Fx { name: "ihl < 5", prog: "dnat", ifindex: 0, input: ihl4, verdict: TC_ACT_UNSPEC, output: None, counters: d("dnat/malformed") },
    ];
    run_table(&env, table);
}

#[test]
fn snat_fixtures() {
    if !privileged("snat_fixtures") {
        return;
    }
    let env = env();
    let (v0, v1, v2) = (env.v0.0, env.v1.0, env.v2.0);
    assert_eq!(ops::snat_get(&env.root.pins).unwrap().ext_ifindex, env.ext.0);
    let from0 = |p: Pkt| p.macs(CTR0, env.v0.1);
    let reply = from0(Pkt::tcp((ip("10.0.0.2"), 25565), (player(), 40000)));
    let mut reply_out = reply.clone();
    reply_out.src = ext_ip();
    reply_out.sport = 30001;
    let ureply = from0(Pkt::udp((ip("10.0.0.2"), 19132), (player(), 40001)));
    let mut ureply_out = ureply.clone();
    ureply_out.src = ext_ip();
    ureply_out.sport = 30002;
    let mut opts = reply.clone();
    opts.ip_options = vec![1, 1, 1, 0];
    let mut opts_out = reply_out.clone();
    opts_out.ip_options = opts.ip_options.clone();
    let mut syn = reply.clone();
    syn.tcp_flags = 0x02;
    let mut synack = reply.clone();
    synack.tcp_flags = 0x12;
    let mut synack_out = reply_out.clone();
    synack_out.tcp_flags = 0x12;
    let d = |s: &'static str| vec![(s, 1u64)];
    let table = vec![
        Fx { name: "syn-ack from the published port is a reply", prog: "snat", ifindex: v0, input: synack.build(), verdict: TC_ACT_REDIRECT, output: Some(synack_out.build()), counters: d("snat/redirect") },
        Fx { name: "syn from the published port opens a connection: handed on", prog: "snat", ifindex: v0, input: syn.build(), verdict: TC_ACT_UNSPEC, output: None, counters: d("snat/handed_on") },
        Fx { name: "tcp reply from the published port", prog: "snat", ifindex: v0, input: reply.build(), verdict: TC_ACT_REDIRECT, output: Some(reply_out.build()), counters: d("snat/redirect") },
        Fx { name: "udp reply from the published port", prog: "snat", ifindex: v0, input: ureply.build(), verdict: TC_ACT_REDIRECT, output: Some(ureply_out.build()), counters: d("snat/redirect") },
        Fx { name: "reply with ip options", prog: "snat", ifindex: v0, input: opts.build(), verdict: TC_ACT_REDIRECT, output: Some(opts_out.build()), counters: d("snat/redirect") },
        Fx { name: "spoofed source", prog: "snat", ifindex: v0, input: from0(Pkt::tcp((ip("10.0.0.99"), 25565), (player(), 40000))).build(), verdict: TC_ACT_SHOT, output: None, counters: d("snat/spoofed") },
        Fx { name: "another container's address on this veth", prog: "snat", ifindex: v1, input: reply.build(), verdict: TC_ACT_SHOT, output: None, counters: d("snat/spoofed") },
        Fx { name: "unregistered veth", prog: "snat", ifindex: v2, input: reply.build(), verdict: TC_ACT_SHOT, output: None, counters: d("snat/unregistered") },
        Fx { name: "outgoing connection is handed on", prog: "snat", ifindex: v0, input: from0(Pkt::tcp((ip("10.0.0.2"), 50000), (ip("192.0.2.7"), 443))).build(), verdict: TC_ACT_UNSPEC, output: None, counters: d("snat/handed_on") },
        Fx { name: "tcp from the udp-published port is handed on", prog: "snat", ifindex: v0, input: from0(Pkt::tcp((ip("10.0.0.2"), 19132), (player(), 40000))).build(), verdict: TC_ACT_UNSPEC, output: None, counters: d("snat/handed_on") },
        Fx { name: "arp is handed on", prog: "snat", ifindex: v0, input: arp(1, CTR0, ip("10.0.0.2"), [0; 6], ip("10.0.0.1"), BCAST), verdict: TC_ACT_UNSPEC, output: None, counters: d("snat/handed_on") },
        Fx { name: "ipv6 is handed on", prog: "snat", ifindex: v0, input: ipv6_udp(), verdict: TC_ACT_UNSPEC, output: None, counters: d("snat/handed_on") },
    ];
    run_table(&env, table);

    // A connection the container opened from its published port was sent
    // to the proxy (tproxy recorded it); the rest of that connection is
    // handed on too, while replies to players still leave as replies.
    let flows = datapath::maps::open(&env.root.pins, "proxy_flows").unwrap();
    let k = datapath::abi::types::ctr_endpoint::new(ip("10.0.0.2"), 25565, Proto::Tcp);
    let o = datapath::abi::types::flow_orig::new(ip("192.0.2.9"), 7777, ip("10.0.0.1"), 9111);
    use libbpf_rs::MapCore;
    flows.update(datapath::abi::bytes_of(&k), datapath::abi::bytes_of(&o), libbpf_rs::MapFlags::ANY).unwrap();
    let proxied = from0(Pkt::tcp((ip("10.0.0.2"), 25565), (ip("192.0.2.9"), 7777)));
    run_table(&env, vec![
        Fx { name: "proxied connection from the published port is handed on", prog: "snat", ifindex: v0, input: proxied.build(), verdict: TC_ACT_UNSPEC, output: None, counters: d("snat/handed_on") },
        Fx { name: "a player reply from the same port is still a reply", prog: "snat", ifindex: v0, input: reply.build(), verdict: TC_ACT_REDIRECT, output: Some(reply_out.build()), counters: d("snat/redirect") },
    ]);

    // With the external address cleared, replies are dropped and counted.
    ops::snat_del(&env.root.pins).unwrap();
    run_table(&env, vec![Fx {
        name: "reply without an external address",
        prog: "snat",
        ifindex: v0,
        input: reply.build(),
        verdict: TC_ACT_SHOT,
        output: None,
        counters: d("snat/no_external"),
    }]);
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
        Fx { name: "request for the gateway", prog: "arp", ifindex: v0, input: req("10.0.0.1"), verdict: TC_ACT_REDIRECT, output: Some(reply("10.0.0.1")), counters: d("arp/replied") },
        Fx { name: "request for an outside address (no gateway)", prog: "arp", ifindex: v0, input: req("192.0.2.55"), verdict: TC_ACT_REDIRECT, output: Some(reply("192.0.2.55")), counters: d("arp/replied") },
        Fx { name: "request for the container's own address", prog: "arp", ifindex: v0, input: arp(1, CTR0, ip("10.0.0.77"), [0; 6], c, BCAST), verdict: TC_ACT_OK, output: None, counters: d("arp/passed") },
        Fx { name: "gratuitous", prog: "arp", ifindex: v0, input: arp(1, CTR0, c, [0; 6], c, BCAST), verdict: TC_ACT_OK, output: None, counters: d("arp/passed") },
        Fx { name: "probe from 0.0.0.0", prog: "arp", ifindex: v0, input: arp(1, CTR0, ip("0.0.0.0"), [0; 6], ip("10.0.0.1"), BCAST), verdict: TC_ACT_OK, output: None, counters: d("arp/passed") },
        Fx { name: "reply", prog: "arp", ifindex: v0, input: arp(2, CTR0, c, vmac, ip("10.0.0.1"), vmac), verdict: TC_ACT_OK, output: None, counters: d("arp/passed") },
        Fx { name: "truncated", prog: "arp", ifindex: v0, input: req("10.0.0.1")[..30].to_vec(), verdict: TC_ACT_OK, output: None, counters: d("arp/passed") },
        Fx { name: "wrong hardware type", prog: "arp", ifindex: v0, input: bad_hw, verdict: TC_ACT_OK, output: None, counters: d("arp/passed") },
        Fx { name: "wrong hardware length", prog: "arp", ifindex: v0, input: bad_len, verdict: TC_ACT_OK, output: None, counters: d("arp/passed") },
        Fx { name: "unregistered veth", prog: "arp", ifindex: v2, input: req("10.0.0.1"), verdict: TC_ACT_OK, output: None, counters: d("arp/unregistered") },
        Fx { name: "ipv4 is handed on", prog: "arp", ifindex: v0, input: Pkt::tcp((c, 1), (ip("10.0.0.1"), 2)).build(), verdict: TC_ACT_UNSPEC, output: None, counters: vec![] },
    ];
    run_table(&env, table);
}

fn flow(env: &Env, ctr: &str, port: u16, proto: Proto) -> Option<datapath::maps::Flow> {
    let map = datapath::maps::open(&env.root.pins, "proxy_flows").unwrap();
    datapath::maps::flows(&map)
        .unwrap()
        .into_iter()
        .find(|f| f.ctr_ip == ip(ctr) && f.ctr_port == port && f.proto == proto)
}

#[test]
fn tproxy_fixtures() {
    if !privileged("tproxy_fixtures") {
        return;
    }
    let env = env();
    let (v0, v1, v2) = (env.v0.0, env.v1.0, env.v2.0);
    let gw = ip("10.0.0.1");
    let from0 = |p: Pkt| p.macs(CTR0, env.v0.1);
    let redirected = |p: &Pkt, port: u16| {
        let mut o = p.clone();
        o.dst = gw;
        o.dport = port;
        o.build()
    };
    let udp_dns = from0(Pkt::udp((ip("10.0.0.2"), 5353), (ip("8.8.8.8"), 53)));
    let tcp_dns = from0(Pkt::tcp((ip("10.0.0.2"), 5354), (ip("8.8.4.4"), 53)));
    let http = from0(Pkt::tcp((ip("10.0.0.2"), 40080), (ip("192.0.2.80"), 80)));
    let tls = from0(Pkt::tcp((ip("10.0.0.2"), 40443), (ip("192.0.2.43"), 443)));
    let mut frag = tls.clone();
    frag.frag = 0x2000;
    let d = |s: &'static str| vec![(s, 1u64)];
    let table = vec![
        Fx { name: "udp dns", prog: "tproxy_ingress", ifindex: v0, input: udp_dns.build(), verdict: TC_ACT_OK, output: Some(redirected(&udp_dns, 9053)), counters: d("tproxy_ingress/dns") },
        Fx { name: "tcp dns", prog: "tproxy_ingress", ifindex: v0, input: tcp_dns.build(), verdict: TC_ACT_OK, output: Some(redirected(&tcp_dns, 9053)), counters: d("tproxy_ingress/dns") },
        Fx { name: "http", prog: "tproxy_ingress", ifindex: v0, input: http.build(), verdict: TC_ACT_OK, output: Some(redirected(&http, 9080)), counters: d("tproxy_ingress/http") },
        Fx { name: "other tcp", prog: "tproxy_ingress", ifindex: v0, input: tls.build(), verdict: TC_ACT_OK, output: Some(redirected(&tls, 9111)), counters: d("tproxy_ingress/tcp") },
        Fx { name: "udp to another port", prog: "tproxy_ingress", ifindex: v0, input: from0(Pkt::udp((ip("10.0.0.2"), 4000), (ip("192.0.2.9"), 123))).build(), verdict: TC_ACT_SHOT, output: None, counters: d("tproxy_ingress/udp_dropped") },
        Fx { name: "icmp", prog: "tproxy_ingress", ifindex: v0, input: from0(Pkt::icmp(ip("10.0.0.2"), ip("192.0.2.9"))).build(), verdict: TC_ACT_SHOT, output: None, counters: d("tproxy_ingress/l4_dropped") },
        Fx { name: "ipv6", prog: "tproxy_ingress", ifindex: v0, input: ipv6_udp(), verdict: TC_ACT_SHOT, output: None, counters: d("tproxy_ingress/non_ip_dropped") },
        Fx { name: "fragment", prog: "tproxy_ingress", ifindex: v0, input: frag.build(), verdict: TC_ACT_SHOT, output: None, counters: d("tproxy_ingress/fragment_dropped") },
        Fx { name: "spoofed source", prog: "tproxy_ingress", ifindex: v0, input: from0(Pkt::tcp((ip("10.9.9.9"), 1), (ip("192.0.2.1"), 443))).build(), verdict: TC_ACT_SHOT, output: None, counters: d("tproxy_ingress/spoofed") },
        Fx { name: "unregistered veth", prog: "tproxy_ingress", ifindex: v2, input: tls.build(), verdict: TC_ACT_SHOT, output: None, counters: d("tproxy_ingress/unregistered") },
        Fx { name: "truncated", prog: "tproxy_ingress", ifindex: v0, input: tls.build()[..14 + 20 + 8].to_vec(), verdict: TC_ACT_SHOT, output: None, counters: d("tproxy_ingress/malformed_dropped") },
        Fx { name: "arp goes to the kernel", prog: "tproxy_ingress", ifindex: v0, input: arp(1, CTR0, ip("10.0.0.2"), [0; 6], gw, BCAST), verdict: TC_ACT_OK, output: None, counters: vec![] },
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
    let flows = datapath::maps::flows(&datapath::maps::open(&env.root.pins, "proxy_flows").unwrap()).unwrap();
    assert_eq!(flows.len(), 4, "dropped packets must not record flows: {flows:?}");

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
    let table = vec![
        Fx { name: "proxy answer restored", prog: "tproxy_egress", ifindex: v0, input: ans.build(), verdict: TC_ACT_OK, output: Some(ans_out.build()), counters: d("tproxy_egress/restored") },
        Fx { name: "dns answer restored", prog: "tproxy_egress", ifindex: v0, input: dns_ans.build(), verdict: TC_ACT_OK, output: Some(dns_ans_out.build()), counters: d("tproxy_egress/restored") },
        Fx { name: "from another port is untouched", prog: "tproxy_egress", ifindex: v0, input: to0(Pkt::tcp((gw, 9080), (ip("10.0.0.2"), 40443))).build(), verdict: TC_ACT_OK, output: None, counters: d("tproxy_egress/passed") },
        Fx { name: "published-port traffic is untouched", prog: "tproxy_egress", ifindex: v0, input: to0(Pkt::tcp((player(), 40000), (ip("10.0.0.2"), 25565))).build(), verdict: TC_ACT_OK, output: None, counters: d("tproxy_egress/passed") },
        Fx { name: "arp is untouched", prog: "tproxy_egress", ifindex: v0, input: arp(2, env.v0.1, gw, CTR0, ip("10.0.0.2"), CTR0), verdict: TC_ACT_OK, output: None, counters: d("tproxy_egress/passed") },
    ];
    run_table(&env, table);
    let _ = v1;
}

#[test]
fn same_source_port_in_two_containers() {
    if !privileged("same_source_port_in_two_containers") {
        return;
    }
    let env = env();
    let a = Pkt::tcp((ip("10.0.0.2"), 5000), (ip("192.0.2.1"), 443)).macs(CTR0, env.v0.1);
    let b = Pkt::tcp((ip("10.0.1.2"), 5000), (ip("192.0.2.2"), 8443)).macs(CTR1, env.v1.1);
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

#[test]
fn counters_scale_with_repeat() {
    if !privileged("counters_scale_with_repeat") {
        return;
    }
    let env = env();
    let _in_ns = NetnsGuard::enter(Some(&env.ns.name)).unwrap();
    let dnat = prog_fd(&env.root, "dnat");
    // Fixed point: 25565/tcp is published to 10.0.0.3:25565, so the
    // rewritten packet is a hit again on every repeat.
    let fixed = Pkt::tcp((player(), 40000), (ip("10.0.0.3"), 25565)).macs(PEER, CTR0).build();
    let miss = to_ext(Pkt::tcp((player(), 40000), (ext_ip(), 22))).build();
    for (frame, counter, verdict) in [(&fixed, "dnat/redirect", TC_ACT_REDIRECT), (&miss, "dnat/miss", TC_ACT_UNSPEC)] {
        let before = counters(&env.root);
        let out = test_run(&dnat, frame, 0, 1000);
        assert_eq!(out.verdict, verdict);
        assert_eq!(&out.data, frame, "{counter}: a fixed point must come out unchanged");
        assert_counter_deltas(counter, &before, &counters(&env.root), &[(counter, 1000)]);
    }
    let ingress = prog_fd(&env.root, "tproxy_ingress");
    let to_proxy = Pkt::tcp((ip("10.0.0.2"), 41000), (ip("10.0.0.1"), 9111)).macs(CTR0, env.v0.1).build();
    let before = counters(&env.root);
    let out = test_run(&ingress, &to_proxy, env.v0.0, 500);
    assert_eq!(out.verdict, TC_ACT_OK);
    assert_counter_deltas("tproxy repeat", &before, &counters(&env.root), &[("tproxy_ingress/tcp", 500)]);
}
