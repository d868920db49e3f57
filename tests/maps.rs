//! The map layer: mappings, their expansion on default external addresses,
//! conflicts, slots, transactions, the byte order of every field as the
//! programs read it, capacity, and that `load` keeps entries.

mod common;

use std::net::Ipv4Addr;

use common::*;
use datapath::abi::{bytes_of, types, Proto};
use datapath::maps::{self, published, Change, Ext, Mapping, Txn, VethMap};
use datapath::ops::{self, DnatAdd};
use libbpf_rs::{MapCore, MapFlags};

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];

fn mapping(ext: Ext, port: u16, ctr: Ipv4Addr, to: u16, proto: Proto, ifindex: u32) -> Mapping {
    Mapping { ext_addr: ext, host_port: port, proto, ctr_ip: ctr.into(), ctr_port: to, ctr_mac: MAC, veth_ifindex: ifindex }
}

fn def(port: u16, ctr: &str, to: u16, proto: Proto) -> Mapping {
    mapping(Ext::Default, port, ip(ctr), to, proto, 7)
}

fn on(ext: &str, port: u16, ctr: &str, to: u16, proto: Proto) -> Mapping {
    mapping(Ext::Addr(ip(ext).into()), port, ip(ctr), to, proto, 7)
}

/// A loaded root and a namespace with an external interface dpext.
fn root_and_ext() -> (TestRoot, TestNs) {
    let root = TestRoot::loaded();
    let ns = TestNs::new();
    ns.ip("link add dpext type veth peer name dpextp");
    (root, ns)
}

fn add_ext(root: &TestRoot, ns: &TestNs, addr: &str, default: bool) -> Change {
    ops::external_add(&root.pins, Some(&ns.name), ip(addr), "dpext", default).unwrap()
}

/// The dnat4 entries as (ext addr, host port, proto) -> (ctr, ctr port, slot).
fn dnat4(root: &TestRoot) -> Vec<((Ipv4Addr, u16, u8), (Ipv4Addr, u16, u32))> {
    let m = maps::open(&root.pins, "dnat4").unwrap();
    let mut v: Vec<_> = maps::entries::<types::dnat4_key, types::dnat4_value>(&m)
        .unwrap()
        .into_iter()
        .map(|(k, v)| ((k.ext_addr(), k.host_port(), k.proto), (v.ctr_addr(), v.ctr_port(), v.slot)))
        .collect();
    v.sort();
    v
}

#[track_caller]
fn refused(what: &str, r: anyhow::Result<Change>, says: &str) {
    match r {
        Ok(c) => panic!("{what}: accepted ({c:?}), expected a refusal"),
        Err(e) => assert!(format!("{e:#}").contains(says), "{what}: the error does not say {says:?}: {e:#}"),
    }
}

#[test]
fn mapping_round_trip_and_byte_order() {
    if !privileged("mapping_round_trip_and_byte_order") {
        return;
    }
    let (root, ns) = root_and_ext();
    let pins = &root.pins;
    let p = def(30001, "10.0.0.2", 25565, Proto::Tcp);
    assert_eq!(published::publish(pins, &p).unwrap(), Change::Added);
    assert_eq!(published::publish(pins, &p).unwrap(), Change::Unchanged, "adding the same mapping again is a no-op");
    let got = ops::dnat_get(pins, Ext::Default, 30001, Proto::Tcp).unwrap();
    assert_eq!((got.mapping.clone(), got.slot), (p.clone(), 0), "the first mapping gets slot 0");
    assert!(ops::dnat_get(pins, Ext::Default, 30001, Proto::Udp).is_err(), "tcp and udp are separate keys");
    let u = def(30001, "10.0.0.2", 19132, Proto::Udp);
    assert_eq!(published::publish(pins, &u).unwrap(), Change::Added);
    let list: Vec<_> = ops::dnat_list(pins).unwrap().into_iter().map(|p| (p.mapping, p.slot)).collect();
    assert_eq!(list, vec![(p.clone(), 0), (u.clone(), 1)]);
    assert!(dnat4(&root).is_empty(), "no default external address yet: nothing for dnat to look up");

    // The bytes user space keeps: family, proto, port in network order,
    // address all zero for "default"; container address in the first word.
    let raw = maps::open(pins, "mappings").unwrap();
    let mut key = vec![2, 6, 0x75, 0x31];
    key.extend([0; 16]);
    let val = raw.lookup(&key, MapFlags::ANY).unwrap().expect("mapping under its key");
    let mut want = vec![10, 0, 0, 2];
    want.extend([0; 12]);
    want.extend([0x63, 0xdd, 2, 0, 0, 0, 0, 9]);
    want.extend(7u32.to_ne_bytes());
    want.extend(0u32.to_ne_bytes());
    assert_eq!(val, want, "mapping_value bytes");
    let rev = maps::open(pins, "mapping_rev").unwrap();
    let mut rkey = vec![2, 6, 0x63, 0xdd, 10, 0, 0, 2];
    rkey.extend([0; 12 + 16]);
    assert_eq!(rev.lookup(&rkey, MapFlags::ANY).unwrap(), Some(key.clone()), "mapping_rev points at the mapping");

    // A default external address expands every default mapping into it;
    // the bytes the programs see.
    assert_eq!(add_ext(&root, &ns, "198.51.100.1", true), Change::Added);
    assert_eq!(
        dnat4(&root),
        vec![
            ((ip("198.51.100.1"), 30001, 6), (ip("10.0.0.2"), 25565, 0)),
            ((ip("198.51.100.1"), 30001, 17), (ip("10.0.0.2"), 19132, 1)),
        ]
    );
    let d = maps::open(pins, "dnat4").unwrap();
    let bytes = d.lookup(&[198, 51, 100, 1, 0x75, 0x31, 6, 0], MapFlags::ANY).unwrap().expect("dnat4 entry");
    let mut want = vec![10, 0, 0, 2, 0x63, 0xdd, 2, 0, 0, 0, 0, 9];
    want.extend(7u32.to_ne_bytes());
    want.extend(0u32.to_ne_bytes());
    assert_eq!(bytes, want, "dnat4_value bytes");
    let ext = maps::open(pins, "externals").unwrap();
    let mut ekey = vec![2, 0, 0, 0, 198, 51, 100, 1];
    ekey.extend([0; 12]);
    let (idx, _) = ns.iface("dpext");
    let mut want = idx.to_ne_bytes().to_vec();
    want.extend(1u32.to_ne_bytes());
    want.extend(b"dpext\0\0\0\0\0\0\0\0\0\0\0");
    assert_eq!(ext.lookup(&ekey, MapFlags::ANY).unwrap(), Some(want), "external_value bytes");

    // A second default address gets the same entries; a new default
    // mapping lands on both.
    add_ext(&root, &ns, "198.51.100.2", true);
    published::publish(pins, &def(30002, "10.0.0.3", 25565, Proto::Tcp)).unwrap();
    let ports: Vec<_> = dnat4(&root).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        ports,
        vec![
            (ip("198.51.100.1"), 30001, 6),
            (ip("198.51.100.1"), 30001, 17),
            (ip("198.51.100.1"), 30002, 6),
            (ip("198.51.100.2"), 30001, 6),
            (ip("198.51.100.2"), 30001, 17),
            (ip("198.51.100.2"), 30002, 6),
        ]
    );

    // Conflicts are refused and change nothing.
    let before = (ops::dnat_list(pins).unwrap(), dnat4(&root));
    refused("host port taken", published::publish(pins, &def(30001, "10.0.0.9", 25565, Proto::Tcp)), "already published");
    refused(
        "same container port, second host port",
        published::publish(pins, &def(30009, "10.0.0.2", 25565, Proto::Tcp)),
        "already published as 30001/tcp",
    );
    assert_eq!((ops::dnat_list(pins).unwrap(), dnat4(&root)), before);

    // Deleting takes every expanded entry and the reverse with it.
    assert_eq!(ops::dnat_del(pins, Ext::Default, 30001, Proto::Tcp).unwrap(), Change::Deleted);
    assert_eq!(ops::dnat_del(pins, Ext::Default, 30001, Proto::Tcp).unwrap(), Change::Absent, "deleting what is gone succeeds");
    assert!(dnat4(&root).iter().all(|(k, _)| k.1 != 30001 || k.2 != 6), "dnat4 entries of the deleted mapping remain");
    assert_eq!(published::counts(pins).unwrap(), [2, 2, 4]);
    // The freed container port can now be published under another host port.
    assert_eq!(published::publish(pins, &def(30009, "10.0.0.2", 25565, Proto::Tcp)).unwrap(), Change::Added);

    // An address stops being default: its entries go, the other's stay.
    assert_eq!(add_ext(&root, &ns, "198.51.100.2", false), Change::Updated);
    assert!(dnat4(&root).iter().all(|(k, _)| k.0 == ip("198.51.100.1")), "{:?}", dnat4(&root));
    assert_eq!(dnat4(&root).len(), 3);
    assert_eq!(ops::external_del(pins, ip("198.51.100.1")).unwrap(), Change::Deleted);
    assert!(dnat4(&root).is_empty(), "deleting the default address collapses its entries");
    assert_eq!(ops::external_del(pins, ip("198.51.100.1")).unwrap(), Change::Absent);
    assert_eq!(published::counts(pins).unwrap(), [3, 3, 0], "the mappings themselves stay");
}

#[test]
fn dedicated_and_default_mappings_conflict_whichever_comes_second() {
    if !privileged("dedicated_and_default_mappings_conflict_whichever_comes_second") {
        return;
    }
    let (root, ns) = root_and_ext();
    let pins = &root.pins;
    add_ext(&root, &ns, "198.51.100.1", true);

    // A dedicated mapping needs its address to be external.
    refused("unknown address", published::publish(pins, &on("198.51.100.2", 25565, "10.0.0.2", 25565, Proto::Tcp)), "not an external address");
    add_ext(&root, &ns, "198.51.100.2", false);

    // The same port on a non-default address and as default: fine, and
    // even the same container port (two different addresses).
    published::publish(pins, &on("198.51.100.2", 25565, "10.0.0.2", 25565, Proto::Tcp)).unwrap();
    published::publish(pins, &def(25565, "10.0.0.2", 25565, Proto::Tcp)).unwrap();
    assert_eq!(
        dnat4(&root),
        vec![
            ((ip("198.51.100.1"), 25565, 6), (ip("10.0.0.2"), 25565, 1)),
            ((ip("198.51.100.2"), 25565, 6), (ip("10.0.0.2"), 25565, 0)),
        ]
    );

    // Dedicated on the default address, second: refused.
    refused(
        "dedicated after default",
        published::publish(pins, &on("198.51.100.1", 25565, "10.0.0.3", 25565, Proto::Tcp)),
        "conflicts with 25565/tcp on the default addresses",
    );
    refused(
        "a default mapping's container port on the default address",
        published::publish(pins, &on("198.51.100.1", 30001, "10.0.0.2", 25565, Proto::Tcp)),
        "already published",
    );
    // Default, second: refused.
    published::publish(pins, &on("198.51.100.1", 30001, "10.0.0.4", 25565, Proto::Udp)).unwrap();
    refused(
        "default after dedicated",
        published::publish(pins, &def(30001, "10.0.0.5", 25565, Proto::Udp)),
        "conflicts with 198.51.100.1:30001/udp",
    );
    refused(
        "default with a dedicated mapping's container port",
        published::publish(pins, &def(30002, "10.0.0.4", 25565, Proto::Udp)),
        "already published as 198.51.100.1:30001/udp",
    );
    // The address becoming default, second: refused, nothing changed.
    let before = (ops::dnat_list(pins).unwrap(), dnat4(&root), ops::external_list(pins).unwrap());
    refused("making an address default", ops::external_add(pins, Some(&ns.name), ip("198.51.100.2"), "dpext", true), "cannot be a default address");
    assert_eq!((ops::dnat_list(pins).unwrap(), dnat4(&root), ops::external_list(pins).unwrap()), before);
    // Without the conflicting mapping it becomes default.
    ops::dnat_del(pins, Ext::Addr(ip("198.51.100.2").into()), 25565, Proto::Tcp).unwrap();
    assert_eq!(add_ext(&root, &ns, "198.51.100.2", true), Change::Updated);
    assert!(dnat4(&root).contains(&((ip("198.51.100.2"), 25565, 6), (ip("10.0.0.2"), 25565, 1))));

    // An address is refused while dedicated mappings name it, and another
    // interface for it is refused.
    refused("deleting an address in use", ops::external_del(pins, ip("198.51.100.1")), "delete them first");
    ns.ip("link add dpext2 type veth peer name dpext2p");
    refused(
        "the address on another interface",
        ops::external_add(pins, Some(&ns.name), ip("198.51.100.1"), "dpext2", true),
        "already on dpext",
    );
    // `map snat get` needs exactly one default address.
    refused("snat get with two defaults", ops::snat_get(pins).map(|_| Change::Unchanged), "2 default external addresses");
}

#[test]
fn slots_are_reused_as_late_as_possible_and_start_at_zero() {
    if !privileged("slots_are_reused_as_late_as_possible_and_start_at_zero") {
        return;
    }
    let (root, _ns) = root_and_ext();
    let pins = &root.pins;
    let stats = maps::open(pins, "port_stats").unwrap();
    let slot_of = |port: u16| ops::dnat_get(pins, Ext::Default, port, Proto::Tcp).unwrap().slot;
    for i in 0..4u16 {
        published::publish(pins, &def(30000 + i, &format!("10.0.0.{}", i + 2), 25565, Proto::Tcp)).unwrap();
    }
    assert_eq!((0..4).map(|i| slot_of(30000 + i)).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    // Counters of slot 1, then the mapping goes: its counters are zeroed.
    let c = types::port_counter { pkts_in: 5, bytes_in: 500, pkts_out: 4, bytes_out: 400, conns: 1 };
    let ncpu = libbpf_rs::num_possible_cpus().unwrap();
    stats.update_percpu(&1u32.to_ne_bytes(), &vec![bytes_of(&c).to_vec(); ncpu], MapFlags::ANY).unwrap();
    assert_eq!(maps::port_counters(&stats, 1).unwrap().pkts_in, 5 * ncpu as u64);
    ops::dnat_del(pins, Ext::Default, 30001, Proto::Tcp).unwrap();
    assert_eq!(maps::port_counters(&stats, 1).unwrap(), maps::PortCounters::default(), "counters of a deleted mapping");
    ops::dnat_del(pins, Ext::Default, 30003, Proto::Tcp).unwrap();
    // A new mapping takes a never-used slot, not the one just freed.
    published::publish(pins, &def(31000, "10.0.1.2", 25565, Proto::Tcp)).unwrap();
    assert_eq!(slot_of(31000), 4);
    let meta = maps::open(pins, "meta").unwrap();
    let m: types::dp_meta = maps::lookup(&meta, &0u32).unwrap().unwrap();
    assert_eq!((m.slot_cursor, m.free_head, m.free_tail, m.free_count), (5, 1, 3, 2), "free list after two deletes");

    // When every slot has been used once, freed ones come back oldest
    // first.
    let cap = datapath::abi::capacity::PUBLISHED;
    let mut m = m;
    m.slot_cursor = cap;
    meta.update(&0u32.to_ne_bytes(), bytes_of(&m), MapFlags::ANY).unwrap();
    stats.update_percpu(&3u32.to_ne_bytes(), &vec![bytes_of(&c).to_vec(); ncpu], MapFlags::ANY).unwrap();
    published::publish(pins, &def(31001, "10.0.1.3", 25565, Proto::Tcp)).unwrap();
    published::publish(pins, &def(31002, "10.0.1.4", 25565, Proto::Tcp)).unwrap();
    assert_eq!((slot_of(31001), slot_of(31002)), (1, 3), "FIFO: the slot freed first is reused first");
    assert_eq!(maps::port_counters(&stats, 3).unwrap(), maps::PortCounters::default(), "a reused slot starts at zero");
    let e = published::publish(pins, &def(31003, "10.0.1.5", 25565, Proto::Tcp)).unwrap_err();
    assert!(format!("{e:#}").contains("full"), "no slot left: {e:#}");
    let m: types::dp_meta = maps::lookup(&meta, &0u32).unwrap().unwrap();
    assert_eq!(m.free_count, 0, "a refused add keeps the free list as it was");
}

#[test]
fn an_unfinished_transaction_is_rolled_back() {
    if !privileged("an_unfinished_transaction_is_rolled_back") {
        return;
    }
    let (root, ns) = root_and_ext();
    let pins = &root.pins;
    add_ext(&root, &ns, "198.51.100.1", true);
    published::publish(pins, &def(30001, "10.0.0.2", 25565, Proto::Tcp)).unwrap();
    let stats = maps::open(pins, "port_stats").unwrap();
    let ncpu = libbpf_rs::num_possible_cpus().unwrap();
    let c = types::port_counter { pkts_in: 1, bytes_in: 2, pkts_out: 3, bytes_out: 4, conns: 5 };
    stats.update_percpu(&0u32.to_ne_bytes(), &vec![bytes_of(&c).to_vec(); ncpu], MapFlags::ANY).unwrap();
    let snapshot = |root: &TestRoot| {
        (
            ops::dnat_list(&root.pins).unwrap(),
            dnat4(root),
            ops::external_list(&root.pins).unwrap(),
            maps::port_counters(&stats, 0).unwrap(),
        )
    };
    let before = snapshot(&root);
    {
        // A delete (entry, dnat4, slot freed, counters zeroed) and then an
        // add, never committed.
        let mut txn = Txn::begin(pins).unwrap();
        published::del(&mut txn, Ext::Default, 30001, Proto::Tcp).unwrap();
        published::add(&mut txn, &def(30002, "10.0.0.3", 25565, Proto::Tcp)).unwrap();
        assert_eq!(published::counts(pins).unwrap(), [1, 1, 1]);
        assert_eq!(maps::port_counters(&stats, 0).unwrap(), maps::PortCounters::default());
    }
    assert_eq!(snapshot(&root), before, "a dropped transaction must leave everything as it was");
    // A failing batch (the third line conflicts) adds nothing.
    let a = |port: u16, ctr: &str| DnatAdd {
        ext: Ext::Default,
        host_port: port,
        ctr_ip: ip(ctr).into(),
        veth: "dpext".into(),
        ctr_mac: MAC,
        proto: Proto::Tcp,
        to_port: 25565,
    };
    let lines = vec![(1, a(30010, "10.0.0.10")), (2, a(30011, "10.0.0.11")), (3, a(30001, "10.0.0.12"))];
    let e = ops::dnat_add_batch(pins, Some(&ns.name), &lines).unwrap_err();
    assert!(format!("{e:#}").contains("line 3"), "the error names the line: {e:#}");
    assert_eq!(snapshot(&root), before, "a refused batch must change nothing");
    // And a committed one keeps everything.
    {
        let mut txn = Txn::begin(pins).unwrap();
        published::add(&mut txn, &def(30003, "10.0.0.4", 25565, Proto::Tcp)).unwrap();
        txn.commit().unwrap();
    }
    assert_eq!(published::counts(pins).unwrap(), [2, 2, 2]);
}

#[test]
fn mappings_capacity_is_65536() {
    if !privileged("mappings_capacity_is_65536") {
        return;
    }
    let (root, ns) = root_and_ext();
    let pins = &root.pins;
    add_ext(&root, &ns, "198.51.100.1", true);
    let cap = datapath::abi::capacity::PUBLISHED;
    assert_eq!(cap, 65536);
    let batch: Vec<Mapping> = (0..cap)
        .map(|i| {
            // 65,536 (port, proto) keys: every port 1..=65535 over tcp, plus one udp.
            let (port, proto) = if i < 65535 { (i as u16 + 1, Proto::Tcp) } else { (1, Proto::Udp) };
            def(port, &Ipv4Addr::from(0x0a00_0000 + i).to_string(), 25565, proto)
        })
        .collect();
    let mut txn = Txn::begin(pins).unwrap();
    for (i, m) in batch.iter().enumerate() {
        published::add(&mut txn, m).unwrap_or_else(|e| panic!("entry {i}: {e:#}"));
    }
    txn.commit().unwrap();
    assert_eq!(published::counts(pins).unwrap(), [cap as usize; 3]);
    let e = published::publish(pins, &def(2, "10.200.0.1", 25565, Proto::Udp)).unwrap_err().to_string();
    assert!(e.contains("full") && e.contains("65536"), "a full map must say so with its capacity: {e}");
    assert_eq!(published::counts(pins).unwrap(), [cap as usize; 3], "a refused add changes nothing");
    // dnat4 holds the expansion on a second default address too...
    add_ext(&root, &ns, "198.51.100.2", true);
    assert_eq!(published::counts(pins).unwrap(), [cap as usize, cap as usize, 2 * cap as usize]);
    // ...and a third is refused as a whole, naming dnat4's capacity.
    let e = ops::external_add(pins, Some(&ns.name), ip("198.51.100.3"), "dpext", true).unwrap_err().to_string();
    assert!(e.contains("dnat4") && e.contains("131072"), "{e}");
    assert_eq!(ops::external_list(pins).unwrap().len(), 2, "the refused address is not kept");
    assert_eq!(published::counts(pins).unwrap(), [cap as usize, cap as usize, 2 * cap as usize]);
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
    let raw = maps::open(&root.pins, "veths").unwrap();
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

    // `map snat` is the default IPv4 external address.
    assert!(ops::snat_get(&root.pins).is_err(), "no external address before `map snat set`");
    assert_eq!(ops::snat_set(&root.pins, n, ip("198.51.100.1"), "dpv0").unwrap(), Change::Added);
    let e = ops::snat_get(&root.pins).unwrap();
    assert_eq!((e.addr, e.ifindex, e.default), (ip("198.51.100.1").into(), idx, true));
    assert_eq!(ops::external_list(&root.pins).unwrap(), vec![e]);
    assert_eq!(ops::snat_del(&root.pins).unwrap(), Change::Deleted);
    assert_eq!(ops::snat_del(&root.pins).unwrap(), Change::Absent);
    assert!(ops::external_list(&root.pins).unwrap().is_empty());

    // Proxy ports: defaults, then set by load, kept by a later plain load.
    let cfg = maps::open(&root.pins, "proxy_cfg").unwrap();
    let bytes = cfg.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).unwrap().unwrap();
    assert_eq!(bytes, vec![0x23, 0x5d, 0x23, 0x78, 0x23, 0x97, 0, 0], "9053, 9080, 9111 in network order");
    let opts = ops::LoadOptions { dns: Some(5353), http: None, tcp: Some(1080) };
    ops::load(&root.pins, opts).unwrap();
    ops::load(&root.pins, Default::default()).unwrap();
    let p = maps::proxy_ports_get(&cfg).unwrap().unwrap();
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
    let stale = types::veth_info::new(ip("10.0.7.2"), ip("10.0.7.1"), [2, 0, 0, 0, 0, 7]).with_name("oldveth");
    let raw = maps::open(&root.pins, "veths").unwrap();
    raw.update(&reused.to_ne_bytes(), bytes_of(&stale), MapFlags::ANY).unwrap();
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
    ops::snat_set(&root.pins, n, ip("198.51.100.1"), "dpv0").unwrap();
    for port in 30001..30101u16 {
        let a = DnatAdd {
            ext: Ext::Default,
            host_port: port,
            ctr_ip: ip("10.0.0.2").into(),
            veth: "dpv0".into(),
            ctr_mac: [2, 0, 0, 0, 0, 2],
            proto: Proto::Tcp,
            to_port: port - 30000,
        };
        ops::dnat_add(&root.pins, n, &a).unwrap();
    }
    let flows = maps::open(&root.pins, "proxy_flows").unwrap();
    let k = types::ctr_endpoint::new(ip("10.0.0.2"), 40000, Proto::Tcp);
    let v = types::flow_orig::new(ip("192.0.2.1"), 443, ip("10.0.0.1"), 9111);
    flows.update(bytes_of(&k), bytes_of(&v), MapFlags::ANY).unwrap();
    let f4 = maps::open(&root.pins, "flows4").unwrap();
    let fk = types::flow4_key::new(ip("10.0.0.2"), 1, ip("203.0.113.9"), 40000, Proto::Tcp);
    let fv = types::flow4_value::new(ip("198.51.100.1"), 30001, 1, 2, 0);
    f4.update(bytes_of(&fk), bytes_of(&fv), MapFlags::ANY).unwrap();
    let snapshot = || {
        (
            ops::dnat_list(&root.pins).unwrap(),
            ops::veth_list(&root.pins).unwrap(),
            ops::external_list(&root.pins).unwrap(),
            dnat4(&root),
            maps::published_flows(&root.pins).unwrap(),
        )
    };
    let before = snapshot();
    let ids_before = ops::status(&root.pins).unwrap().programs.iter().map(|p| p.id).collect::<Vec<_>>();
    for _ in 0..3 {
        let r = ops::load(&root.pins, Default::default()).unwrap();
        assert!(r.maps_created.is_empty(), "a reload must reuse every pinned map, created {:?}", r.maps_created);
    }
    assert_eq!(snapshot(), before);
    assert_eq!(before.4.len(), 1);
    assert_eq!(maps::flows(&flows).unwrap().len(), 1, "proxied flows survive a reload");
    let ids_after = ops::status(&root.pins).unwrap().programs.iter().map(|p| p.id).collect::<Vec<_>>();
    assert!(ids_before.iter().zip(&ids_after).all(|(a, b)| a != b), "programs were replaced");
}

/// Every program refers to every map of the pin root, so the maps can be
/// found from an attached program alone (bpftool prog show: map_ids).
#[test]
fn every_program_holds_every_map() {
    if !privileged("every_program_holds_every_map") {
        return;
    }
    let root = TestRoot::loaded();
    let mut pinned: Vec<u32> = maps::name::ALL.iter().map(|m| map_id(&root.pins.map(m))).collect();
    pinned.sort();
    let in_dir = std::fs::read_dir(root.pins.maps_dir()).unwrap().count();
    assert_eq!(in_dir, pinned.len(), "maps/ holds a map the list of every map does not name");
    for prog in datapath::abi::PROG_NAMES {
        let fd = prog_fd(&root, prog);
        let mut ids = prog_map_ids(&fd);
        ids.sort();
        assert_eq!(ids, pinned, "{prog}: its map ids are not the pin root's maps");
    }
}

fn map_id(path: &std::path::Path) -> u32 {
    let h = libbpf_rs::MapHandle::from_pinned_path(path).unwrap();
    h.info().unwrap().info.id
}

fn prog_map_ids(fd: &std::os::fd::OwnedFd) -> Vec<u32> {
    use std::os::fd::AsRawFd;
    let mut ids = vec![0u32; 64];
    let mut info = libbpf_sys::bpf_prog_info { nr_map_ids: 64, map_ids: ids.as_mut_ptr() as u64, ..Default::default() };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info is a bpf_prog_info of the size passed in len; map_ids
    // points at a live buffer of nr_map_ids entries.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    assert_eq!(rc, 0, "reading program info");
    ids.truncate(info.nr_map_ids as usize);
    ids
}
