//! The map layer: add/get/del/list round trips, the byte order of every
//! field as the programs read it, capacity, and that `load` keeps entries.

mod common;

use std::net::Ipv4Addr;

use common::*;
use datapath::abi::{bytes_of, types, Proto};
use datapath::ops::{self, DnatAdd};
use datapath::maps::{Change, DnatMaps, Published, VethMap};
use libbpf_rs::{MapCore, MapFlags};

fn published(port: u16, ctr: Ipv4Addr, to: u16, proto: Proto, ifindex: u32) -> Published {
    Published { host_port: port, proto, ctr_ip: ctr, ctr_port: to, ctr_mac: [2, 0, 0, 0, 0, 9], veth_ifindex: ifindex }
}

#[test]
fn dnat_round_trip_and_byte_order() {
    if !privileged("dnat_round_trip_and_byte_order") {
        return;
    }
    let root = TestRoot::loaded();
    let maps = DnatMaps::open(&root.pins).unwrap();
    let p = published(30001, ip("10.0.0.2"), 25565, Proto::Tcp, 7);
    assert_eq!(maps.add(&p).unwrap(), Change::Added);
    assert_eq!(maps.add(&p).unwrap(), Change::Unchanged, "adding the same mapping again is a no-op");
    assert_eq!(maps.get(30001, Proto::Tcp).unwrap(), Some(p.clone()));
    assert_eq!(maps.get(30001, Proto::Udp).unwrap(), None, "tcp and udp are separate keys");
    let u = published(30001, ip("10.0.0.2"), 19132, Proto::Udp, 7);
    assert_eq!(maps.add(&u).unwrap(), Change::Added);
    assert_eq!(maps.list().unwrap(), vec![p.clone(), u.clone()]);

    // The bytes the programs see: ports and addresses in network order,
    // ifindex in host order, padding zero.
    let raw = datapath::maps::open(&root.pins, "dnat_ports").unwrap();
    let key = [0x75, 0x31, 6, 0]; // 30001 = 0x7531, IPPROTO_TCP, pad
    let val = raw.lookup(&key, MapFlags::ANY).unwrap().expect("entry under the network-order key");
    let mut want = vec![10, 0, 0, 2, 0x63, 0xdd, 2, 0, 0, 0, 0, 9];
    want.extend(7u32.to_ne_bytes());
    assert_eq!(val, want, "dnat_value bytes");
    let rev = datapath::maps::open(&root.pins, "snat_ports").unwrap();
    let rkey = [10, 0, 0, 2, 0x63, 0xdd, 6, 0];
    let rval = rev.lookup(&rkey, MapFlags::ANY).unwrap().expect("reverse entry");
    let mut want = vec![0x75, 0x31, 0, 0];
    want.extend(7u32.to_ne_bytes());
    assert_eq!(rval, want, "snat_value bytes");

    // Conflicts are refused and change nothing.
    let other = published(30001, ip("10.0.0.3"), 25565, Proto::Tcp, 7);
    let e = maps.add(&other).unwrap_err().to_string();
    assert!(e.contains("already published"), "unexpected error: {e}");
    let dup = published(30009, ip("10.0.0.2"), 25565, Proto::Tcp, 7);
    let e = maps.add(&dup).unwrap_err().to_string();
    assert!(e.contains("already published under host port 30001"), "unexpected error: {e}");
    assert_eq!(maps.list().unwrap(), vec![p.clone(), u.clone()]);
    assert_eq!(maps.counts(), (2, 2));

    assert_eq!(maps.del(30001, Proto::Tcp).unwrap(), Change::Deleted);
    assert_eq!(maps.del(30001, Proto::Tcp).unwrap(), Change::Absent, "deleting what is gone succeeds");
    assert_eq!(maps.list().unwrap(), vec![u]);
    assert_eq!(maps.counts(), (1, 1), "the reverse entry goes with the forward one");
    // The freed container port can now be published under another host port.
    assert_eq!(maps.add(&dup).unwrap(), Change::Added);
}

#[test]
fn dnat_capacity_is_65536() {
    if !privileged("dnat_capacity_is_65536") {
        return;
    }
    let root = TestRoot::loaded();
    let maps = DnatMaps::open(&root.pins).unwrap();
    let cap = datapath::abi::capacity::PUBLISHED;
    assert_eq!(cap, 65536);
    for i in 0..cap {
        // 65,536 (port, proto) keys: every port 1..=65535 over tcp, plus one udp.
        let (port, proto) = if i < 65535 { (i as u16 + 1, Proto::Tcp) } else { (1, Proto::Udp) };
        let ctr = Ipv4Addr::from(0x0a00_0000 + i);
        maps.add(&published(port, ctr, 25565, proto, 3)).unwrap_or_else(|e| panic!("entry {i}: {e:#}"));
    }
    assert_eq!(maps.counts(), (cap as usize, cap as usize));
    let e = maps.add(&published(2, ip("10.200.0.1"), 25565, Proto::Udp, 3)).unwrap_err().to_string();
    assert!(e.contains("full") && e.contains("65536"), "a full map must say so with its capacity: {e}");
    assert_eq!(maps.counts(), (cap as usize, cap as usize), "a refused add changes nothing");
}

#[test]
fn veth_snat_and_proxy_config() {
    if !privileged("veth_snat_and_proxy_config") {
        return;
    }
    let root = TestRoot::loaded();
    let ns = TestNs::new();
    ns.ip("link add dpv0 type veth peer name dpc0");
    ns.ip("addr add 10.0.0.1/32 dev dpv0");
    ns.ip("link add dpv9 type veth peer name dpc9");
    let (idx, mac) = ns.iface("dpv0");
    let n = Some(ns.name.as_str());
    assert_eq!(ops::veth_add(&root.pins, n, "dpv0", ip("10.0.0.2")).unwrap(), Change::Added);
    assert_eq!(ops::veth_add(&root.pins, n, &idx.to_string(), ip("10.0.0.2")).unwrap(), Change::Unchanged);
    let e = ops::veth_add(&root.pins, n, "dpv0", ip("10.0.0.3")).unwrap_err().to_string();
    assert!(e.contains("already registered"), "{e}");
    let e = ops::veth_add(&root.pins, n, "dpv9", ip("10.0.9.2")).unwrap_err().to_string();
    assert!(e.contains("no IPv4 address"), "a veth without an address cannot host the proxy: {e}");
    let v = ops::veth_get(&root.pins, n, "dpv0").unwrap();
    assert_eq!((v.ifindex, v.ctr_ip, v.host_ip, v.host_mac), (idx, ip("10.0.0.2"), ip("10.0.0.1"), mac));
    let raw = datapath::maps::open(&root.pins, "veths").unwrap();
    let bytes = raw.lookup(&idx.to_ne_bytes(), MapFlags::ANY).unwrap().unwrap();
    let mut want = vec![10, 0, 0, 2, 10, 0, 0, 1];
    want.extend(mac);
    want.extend([0, 0]);
    want.extend(b"dpv0\0\0\0\0\0\0\0\0\0\0\0\0");
    assert_eq!(bytes, want, "veth_info bytes");
    assert_eq!(VethMap::open(&root.pins).unwrap().list().unwrap().len(), 1);
    assert_eq!(ops::veth_del(&root.pins, n, "dpv0").unwrap(), Change::Deleted);
    assert_eq!(ops::veth_del(&root.pins, n, "dpv0").unwrap(), Change::Absent);
    assert_eq!(ops::veth_del(&root.pins, n, "nosuchif").unwrap(), Change::Absent);

    assert!(ops::snat_get(&root.pins).is_err(), "no external address before `map snat set`");
    ops::snat_set(&root.pins, n, ip("198.51.100.1"), "dpv0").unwrap();
    let e = ops::snat_get(&root.pins).unwrap();
    assert_eq!((e.ext_ip, e.ext_ifindex), (ip("198.51.100.1"), idx));
    let raw = datapath::maps::open(&root.pins, "snat_cfg").unwrap();
    let mut want = vec![198, 51, 100, 1];
    want.extend(idx.to_ne_bytes());
    assert_eq!(raw.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).unwrap().unwrap(), want);
    assert_eq!(ops::snat_del(&root.pins).unwrap(), Change::Deleted);
    assert_eq!(ops::snat_del(&root.pins).unwrap(), Change::Absent);

    // Proxy ports: defaults, then set by load, kept by a later plain load.
    let cfg = datapath::maps::open(&root.pins, "proxy_cfg").unwrap();
    let bytes = cfg.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).unwrap().unwrap();
    assert_eq!(bytes, vec![0x23, 0x5d, 0x23, 0x78, 0x23, 0x97, 0, 0], "9053, 9080, 9111 in network order");
    let opts = ops::LoadOptions { dns: Some(5353), http: None, tcp: Some(1080) };
    ops::load(&root.pins, opts).unwrap();
    ops::load(&root.pins, Default::default()).unwrap();
    let p = datapath::maps::proxy_ports_get(&cfg).unwrap().unwrap();
    assert_eq!((p.dns, p.http, p.tcp), (5353, 9080, 1080));

    // A veth deleted before it was unregistered is still found by name...
    ops::veth_add(&root.pins, n, "dpv0", ip("10.0.0.2")).unwrap();
    ns.ip("link del dpv0");
    assert_eq!(ops::veth_del(&root.pins, n, "dpv0").unwrap(), Change::Deleted);
    assert!(VethMap::open(&root.pins).unwrap().list().unwrap().is_empty());
    // ...and an entry whose index the kernel reused for another veth is
    // replaced, not inherited.
    ns.ip("link add dpv0 type veth peer name dpc0");
    ns.ip("addr add 10.0.0.1/32 dev dpv0");
    ops::veth_add(&root.pins, n, "dpv0", ip("10.0.0.2")).unwrap();
    let (reused, _) = ns.iface("dpv0");
    let stale = datapath::abi::types::veth_info::new(ip("10.0.7.2"), ip("10.0.7.1"), [2, 0, 0, 0, 0, 7]).with_name("oldveth");
    let raw = datapath::maps::open(&root.pins, "veths").unwrap();
    raw.update(&reused.to_ne_bytes(), datapath::abi::bytes_of(&stale), MapFlags::ANY).unwrap();
    assert_eq!(ops::veth_add(&root.pins, n, "dpv0", ip("10.0.0.2")).unwrap(), Change::Added);
    assert_eq!(ops::veth_get(&root.pins, n, "dpv0").unwrap().ctr_ip, ip("10.0.0.2"));
}

#[test]
fn load_again_keeps_every_entry() {
    if !privileged("load_again_keeps_every_entry") {
        return;
    }
    let root = TestRoot::loaded();
    let ns = TestNs::new();
    ns.ip("link add dpv0 type veth peer name dpc0");
    ns.ip("addr add 10.0.0.1/32 dev dpv0");
    let n = Some(ns.name.as_str());
    ops::veth_add(&root.pins, n, "dpv0", ip("10.0.0.2")).unwrap();
    for port in 30001..30101u16 {
        let a = DnatAdd {
            host_port: port,
            ctr_ip: ip("10.0.0.2"),
            veth: "dpv0".into(),
            ctr_mac: [2, 0, 0, 0, 0, 2],
            proto: Proto::Tcp,
            to_port: port - 30000,
        };
        ops::dnat_add(&root.pins, n, &a).unwrap();
    }
    let flows = datapath::maps::open(&root.pins, "proxy_flows").unwrap();
    let k = types::ctr_endpoint::new(ip("10.0.0.2"), 40000, Proto::Tcp);
    let v = types::flow_orig::new(ip("192.0.2.1"), 443, ip("10.0.0.1"), 9111);
    flows.update(bytes_of(&k), bytes_of(&v), MapFlags::ANY).unwrap();
    let before = (ops::dnat_list(&root.pins).unwrap(), ops::veth_list(&root.pins).unwrap());
    let ids_before = ops::status(&root.pins).unwrap().programs.iter().map(|p| p.id).collect::<Vec<_>>();
    for _ in 0..3 {
        let r = ops::load(&root.pins, Default::default()).unwrap();
        assert!(r.maps_created.is_empty(), "a reload must reuse every pinned map, created {:?}", r.maps_created);
    }
    let after = (ops::dnat_list(&root.pins).unwrap(), ops::veth_list(&root.pins).unwrap());
    assert_eq!(before, after);
    assert_eq!(datapath::maps::flows(&flows).unwrap().len(), 1, "proxied flows survive a reload");
    let ids_after = ops::status(&root.pins).unwrap().programs.iter().map(|p| p.id).collect::<Vec<_>>();
    assert!(ids_before.iter().zip(&ids_after).all(|(a, b)| a != b), "programs were replaced");
}
