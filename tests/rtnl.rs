//! rtnetlink and container wiring against real network namespaces: every
//! operation's result read back through the API and cross-checked with
//! `ip -j`, typed errors, `wire` carrying real TCP (IPv4 and IPv6),
//! `unwire` leaving nothing, every step of `wire` failing in turn, and
//! many wire/unwire cycles.
//!
//! Every test makes its own namespaces (removed on drop, which removes
//! every interface in them) and runs `wire` on a thread inside a "host"
//! namespace of its own, never in the machine's.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use common::topo::{self, accept, assert_same, ip_json, route_str, tcp_connect, within, IO_TIMEOUT};
use common::{privileged, sh, unique, TestNs};
use datapath::net::rtnl::{ErrorKind, IpPrefix, Route, RouteScope, Rtnl, VethPair};
use datapath::net::wiring::{self, Step, WireError, Wired, Wiring};

const CONNECT: Duration = Duration::from_secs(3);

fn path(ns: &TestNs) -> PathBuf {
    PathBuf::from("/run/netns").join(&ns.name)
}

#[track_caller]
fn nl(ns: &TestNs) -> Rtnl {
    Rtnl::open_in(&path(ns)).unwrap_or_else(|e| panic!("rtnetlink socket in {}: {e}", ns.name))
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn pfx(s: &str) -> IpPrefix {
    s.parse().unwrap()
}

/// `ip -j -d -n NS link show dev DEV`, the one object.
fn ip_link(ns: &TestNs, dev: &str) -> serde_json::Value {
    ip_json(&format!("-d -n {} link show dev {dev}", ns.name))[0].clone()
}

/// Whether `ip` sees a link of that name.
fn ip_has_link(ns: &TestNs, dev: &str) -> bool {
    let v = ip_json(&format!("-n {} link show", ns.name));
    v.as_array().unwrap().iter().any(|l| l["ifname"].as_str() == Some(dev))
}

/// `ip -j addr show dev DEV` as "addr/len" strings.
fn ip_addrs(ns: &TestNs, dev: &str) -> BTreeSet<String> {
    let v = ip_json(&format!("-n {} addr show dev {dev}", ns.name));
    let mut out = BTreeSet::new();
    for l in v.as_array().unwrap() {
        for a in l["addr_info"].as_array().into_iter().flatten() {
            out.insert(format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]));
        }
    }
    out
}

/// `ip -j route show` (main table) as "dst[ via gw] dev X" strings.
fn ip_routes(ns: &TestNs, family: &str) -> BTreeSet<String> {
    let v = ip_json(&format!("-n {} {family} route show", ns.name));
    v.as_array().unwrap().iter().map(route_str).collect()
}

/// Everything of a namespace `wire` could touch (see
/// [`common::topo::snapshot`]).
fn snapshot(ns: &TestNs) -> BTreeSet<String> {
    topo::snapshot(&ns.name)
}

fn wire_in(host: &TestNs, w: &Wiring) -> Result<Wired, WireError> {
    within(&host.name, || wiring::wire(w))
}

/// A host and a container namespace, and the wiring of one container
/// between them (IPv4 and IPv6, MTU 1400).
struct Pair {
    host: TestNs,
    ctr: TestNs,
    w: Wiring,
}

impl Pair {
    fn new() -> Self {
        let (host, ctr) = (TestNs::new(), TestNs::new());
        let mut w = Wiring::new(&unique("mc"), path(&ctr), v4("10.44.0.2"));
        w.ip6 = Some(v6("2001:db8:44::2"));
        w.mtu = Some(1400);
        Self { host, ctr, w }
    }
}

// ---------------------------------------------------------------------------
// Operations

#[test]
fn veth_pairs_are_created_read_changed_and_deleted() {
    if !privileged("veth_pairs_are_created_read_changed_and_deleted") {
        return;
    }
    let (host, ctr) = (TestNs::new(), TestNs::new());
    let (mut h, mut c) = (nl(&host), nl(&ctr));
    let ctr_ns = std::fs::File::open(path(&ctr)).unwrap();
    let name = unique("rv");
    let pair = VethPair { name: &name, peer: "eth0", peer_netns: Some(ctr_ns.as_fd()), mtu: Some(1400) };
    let made = h.create_veth(&pair).expect("creating the veth pair");

    // Read back by name and by index, the same link.
    let by_name = h.link(name.as_str()).unwrap();
    let by_index = h.link(made.index).unwrap();
    assert_eq!(by_name, made);
    assert_eq!(by_index, made);
    assert_eq!(made.name, name);
    assert_eq!(made.kind.as_deref(), Some("veth"));
    assert_eq!(made.mtu, 1400);
    assert!(!made.up, "a new veth is down");
    let nsid = h.nsid(ctr_ns.as_fd()).unwrap();
    assert!(nsid.is_some(), "the container namespace got an id when the peer went there");
    assert_eq!(made.link_netnsid, nsid, "the peer is in the container namespace");
    // The peer is there, and not here.
    let peer = c.link("eth0").expect("the peer in the container namespace");
    assert_eq!(peer.kind.as_deref(), Some("veth"));
    assert_eq!(peer.mtu, 1400);
    assert_eq!(made.peer_index, Some(peer.index));
    assert_eq!(peer.peer_index, Some(made.index));
    assert_eq!(h.link("eth0").unwrap_err().kind(), ErrorKind::NotFound);
    assert!(h.links().unwrap().iter().any(|l| l == &made), "the dump lists it too");

    // What ip says.
    let j = ip_link(&host, &name);
    assert_eq!(j["ifindex"].as_u64(), Some(u64::from(made.index)));
    assert_eq!(j["mtu"].as_u64(), Some(1400));
    assert_eq!(j["linkinfo"]["info_kind"], "veth");
    assert_eq!(j["address"].as_str(), Some(common::topo::format_mac(&made.mac.unwrap()).as_str()));
    assert_eq!(j["link_netnsid"].as_i64(), nsid.map(i64::from));
    assert_eq!(j["link_index"].as_u64(), Some(u64::from(peer.index)));
    let jp = ip_link(&ctr, "eth0");
    assert_eq!(jp["address"].as_str(), Some(common::topo::format_mac(&peer.mac.unwrap()).as_str()));

    // Up, down, MTU.
    h.set_up(made.index, true).unwrap();
    assert!(h.link(made.index).unwrap().up);
    assert!(ip_link(&host, &name)["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    h.set_up(name.as_str(), false).unwrap();
    assert!(!h.link(made.index).unwrap().up);
    assert!(!ip_link(&host, &name)["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    h.set_mtu(name.as_str(), 9000).unwrap();
    assert_eq!(h.link(made.index).unwrap().mtu, 9000);
    assert_eq!(ip_link(&host, &name)["mtu"].as_u64(), Some(9000));

    // Typed errors.
    for bad in [100_000, 20] {
        let e = h.set_mtu(made.index, bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "MTU {bad}: {e}");
        assert!(e.to_string().contains(&name) || e.to_string().contains(&made.index.to_string()), "{e}");
    }
    assert_eq!(h.link(made.index).unwrap().mtu, 9000, "a refused MTU changes nothing");
    let e = h.create_veth(&VethPair { name: &name, peer: "x0", peer_netns: None, mtu: None }).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
    assert!(!ip_has_link(&host, "x0"), "a refused pair leaves no peer");
    let other = unique("rv");
    let e = h.create_veth(&VethPair { name: &other, peer: "eth0", peer_netns: Some(ctr_ns.as_fd()), mtu: None });
    assert_eq!(e.unwrap_err().kind(), ErrorKind::Exists, "the peer's name is taken in its namespace");
    assert!(!ip_has_link(&host, &other), "a refused pair leaves nothing");
    let e = h.create_veth(&VethPair { name: &other, peer: "y0", peer_netns: None, mtu: Some(100_000) }).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert!(!ip_has_link(&host, &other));
    assert_eq!(h.link("nosuchlink").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(h.link(999_999).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(h.set_up("nosuchlink", true).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(h.link("a/b").unwrap_err().kind(), ErrorKind::Invalid);

    // Delete takes the peer along; deleting again is Ok(false).
    assert!(h.del_link(name.as_str()).unwrap());
    assert!(!ip_has_link(&host, &name));
    assert!(!ip_has_link(&ctr, "eth0"), "the peer went with it");
    assert_eq!(c.link("eth0").unwrap_err().kind(), ErrorKind::NotFound);
    assert!(!h.del_link(name.as_str()).unwrap());
    assert!(!h.del_link(made.index).unwrap());
}

#[test]
fn addresses_are_added_listed_and_deleted() {
    if !privileged("addresses_are_added_listed_and_deleted") {
        return;
    }
    let ns = TestNs::new();
    let mut h = nl(&ns);
    let name = unique("ra");
    let link = h.create_veth(&VethPair { name: &name, peer: &unique("rb"), peer_netns: None, mtu: None }).unwrap();
    let i = link.index;
    h.set_up(i, true).unwrap();

    let want = [pfx("10.45.0.1/24"), pfx("169.254.1.1/32"), pfx("2001:db8:45::1/64"), pfx("fe80::1/64")];
    for p in want {
        h.add_addr(i, p, true).unwrap_or_else(|e| panic!("adding {p}: {e}"));
    }
    let got = h.addrs(Some(i)).unwrap();
    for p in want {
        let a = got.iter().find(|a| a.prefix == p).unwrap_or_else(|| panic!("{p} not listed: {got:?}"));
        assert_eq!(a.index, i);
        if p.is_ipv6() {
            assert!(a.nodad && !a.tentative, "{p} added with nodad is usable at once: {a:?}");
        }
    }
    let seen = ip_addrs(&ns, &name);
    for p in want {
        assert!(seen.contains(&p.to_string()), "ip does not show {p}: {seen:?}");
    }
    assert!(h.addrs(None).unwrap().iter().any(|a| a.prefix == want[0]), "the unfiltered list has it");

    // Typed errors.
    let e = h.add_addr(i, want[0], false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
    assert!(e.to_string().contains("10.45.0.1/24"), "the error names the address: {e}");
    assert_eq!(h.add_addr(999_999, pfx("10.45.1.1/32"), false).unwrap_err().kind(), ErrorKind::NotFound);
    // IPv6 disabled on a link: refused, and the kernel says why.
    let off = unique("rc");
    let j = h.create_veth(&VethPair { name: &off, peer: &unique("rd"), peer_netns: None, mtu: None }).unwrap().index;
    sh(&format!("ip netns exec {} sysctl -qw net.ipv6.conf.{off}.disable_ipv6=1", ns.name));
    let e = h.add_addr(j, pfx("2001:db8:45::9/64"), true).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Permission, "{e}");
    assert!(e.to_string().contains("IPv6 is disabled"), "the kernel's explanation is kept: {e}");

    // Delete, then again.
    for p in [want[0], want[2]] {
        assert!(h.del_addr(i, p).unwrap(), "{p} was there");
        assert!(!h.del_addr(i, p).unwrap(), "{p} is gone");
    }
    let got = h.addrs(Some(i)).unwrap();
    assert!(!got.iter().any(|a| a.prefix == want[0] || a.prefix == want[2]), "{got:?}");
    assert!(got.iter().any(|a| a.prefix == want[1]), "the others stay: {got:?}");
    let seen = ip_addrs(&ns, &name);
    assert!(!seen.contains("10.45.0.1/24") && !seen.contains("2001:db8:45::1/64"), "{seen:?}");
    assert!(seen.contains("169.254.1.1/32"), "{seen:?}");
    assert!(!h.del_addr(999_999, want[1]).unwrap(), "no link, no address");
}

#[test]
fn routes_are_added_listed_and_deleted() {
    if !privileged("routes_are_added_listed_and_deleted") {
        return;
    }
    let ns = TestNs::new();
    let mut h = nl(&ns);
    let name = unique("rr");
    let i = h.create_veth(&VethPair { name: &name, peer: &unique("rs"), peer_netns: None, mtu: None }).unwrap().index;
    h.set_up(i, true).unwrap();

    let gw4: IpAddr = v4("169.254.1.1").into();
    let gw6: IpAddr = v6("fe80::1").into();
    let routes = [
        Route::host(v4("10.46.0.2").into(), i),
        Route::to_gateway(gw4, i),
        Route::default_via(gw4, i),
        Route::host(v6("2001:db8:46::2").into(), i),
        Route::default_via(gw6, i),
    ];
    for r in &routes {
        h.add_route(r).unwrap_or_else(|e| panic!("adding {r}: {e}"));
    }
    let (got4, got6) = (h.routes(false, None).unwrap(), h.routes(true, None).unwrap());
    assert_eq!(h.routes(false, Some(i)).unwrap(), got4, "every IPv4 route is through that link");
    let other = h.create_veth(&VethPair { name: &unique("rt"), peer: &unique("ru"), peer_netns: None, mtu: None });
    let other = other.unwrap().index;
    h.set_up(other, true).unwrap();
    h.add_route(&Route::host(v4("10.46.9.9").into(), other)).unwrap();
    let via_other = h.routes(false, Some(other)).unwrap();
    assert_eq!(via_other, vec![Route::host(v4("10.46.9.9").into(), other)], "filtered by link");
    assert!(!h.routes(false, Some(i)).unwrap().iter().any(|r| r.oif == Some(other)));
    assert!(h.del_route(&via_other[0]).unwrap());
    for r in &routes {
        let got = if r.dst.is_ipv6() { &got6 } else { &got4 };
        let found = got.iter().find(|x| x.dst == r.dst && x.gateway == r.gateway && x.oif == r.oif);
        let found = found.unwrap_or_else(|| panic!("{r} not listed: {got:?}"));
        if r.gateway.is_none() && !r.dst.is_ipv6() {
            assert_eq!(found.scope, RouteScope::Link, "{r}");
        }
    }
    let want4: BTreeSet<String> = [
        format!("10.46.0.2 dev {name}"),
        format!("169.254.1.1 dev {name}"),
        format!("default via 169.254.1.1 dev {name}"),
    ]
    .into();
    assert_eq!(ip_routes(&ns, "-4"), want4);
    let seen6 = ip_routes(&ns, "-6");
    for r in [format!("2001:db8:46::2 dev {name}"), format!("default via fe80::1 dev {name}")] {
        assert!(seen6.contains(&r), "ip -6 route does not show {r}: {seen6:?}");
    }

    // Typed errors.
    for r in &routes {
        let e = h.add_route(r).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Exists, "{r}: {e}");
    }
    let e = h.add_route(&Route::host(v4("10.46.0.3").into(), 999_999)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    // Delete, then again.
    for r in &routes {
        assert!(h.del_route(r).unwrap(), "{r} was there");
        assert!(!h.del_route(r).unwrap(), "{r} is gone");
    }
    assert!(ip_routes(&ns, "-4").is_empty(), "{:?}", ip_routes(&ns, "-4"));
    let left6: Vec<_> = h.routes(true, None).unwrap().into_iter().filter(|r| r.gateway.is_some() || r.dst.len == 128).collect();
    assert!(left6.is_empty(), "{left6:?}");
}

#[test]
fn namespaces_are_entered_by_path() {
    if !privileged("namespaces_are_entered_by_path") {
        return;
    }
    let ns = TestNs::new();
    let name = unique("rp");
    // A link made through a socket opened in the namespace is there, and
    // not in the namespace of the thread that opened it.
    let mut there = nl(&ns);
    there.create_veth(&VethPair { name: &name, peer: &unique("rq"), peer_netns: None, mtu: None }).unwrap();
    assert!(ip_has_link(&ns, &name));
    let other = TestNs::new();
    assert!(!ip_has_link(&other, &name));
    assert_eq!(nl(&other).link(name.as_str()).unwrap_err().kind(), ErrorKind::NotFound);
    // The thread that opened it is back where it was.
    let before = datapath::net::netns::current_inode().unwrap();
    let _ = nl(&other);
    assert_eq!(datapath::net::netns::current_inode().unwrap(), before);
    // /proc/PID/ns/net works like /run/netns/NAME.
    let pid_path = within(&ns.name, || {
        let mut by_pid = Rtnl::open_in(std::path::Path::new("/proc/thread-self/ns/net")).unwrap();
        by_pid.link(name.as_str()).map(|l| l.name)
    });
    assert_eq!(pid_path.unwrap(), name);

    let e = Rtnl::open_in(std::path::Path::new("/run/netns/dp-no-such-namespace")).err().expect("missing namespace");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = Rtnl::open_in(std::path::Path::new("/proc/self/status")).err().expect("not a namespace");
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
}

// ---------------------------------------------------------------------------
// Wiring

/// Sends a line over a connection made from `from_ns` to `to` and reads it
/// back through `listener`'s side.
#[track_caller]
fn tcp_exchange(from_ns: &str, to: SocketAddr, listener: &TcpListener, expect_peer: IpAddr) {
    let mut c = tcp_connect(from_ns, to, CONNECT).unwrap_or_else(|e| panic!("connecting {from_ns} -> {to}: {e}"));
    let (mut s, peer) = accept(listener, IO_TIMEOUT).unwrap_or_else(|e| panic!("{to}: {e}"));
    assert_eq!(peer.ip(), expect_peer, "connection to {to} came from {peer}");
    c.write_all(b"ping\n").unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping\n");
    s.write_all(b"pong\n").unwrap();
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong\n");
}

fn listen(ns: &str, addr: SocketAddr) -> TcpListener {
    within(ns, || TcpListener::bind(addr).unwrap_or_else(|e| panic!("listening on {addr} in {ns}: {e}")))
}

#[test]
fn wire_carries_tcp_and_unwire_leaves_nothing() {
    if !privileged("wire_carries_tcp_and_unwire_leaves_nothing") {
        return;
    }
    let p = Pair::new();
    let (host_before, ctr_before) = (snapshot(&p.host), snapshot(&p.ctr));
    let wired = wire_in(&p.host, &p.w).unwrap_or_else(|e| panic!("wire: {e}"));
    let w = &p.w;
    assert_eq!(wired.host.name, w.host_ifname);
    assert_eq!(wired.ctr.name, "eth0");
    assert!(wired.host.up && wired.ctr.up);
    assert_eq!((wired.host.mtu, wired.ctr.mtu), (1400, 1400));
    assert_eq!(within(&p.host.name, || wiring::check(w)).expect("check after wire"), wired);

    // What ip sees on both sides.
    let hv = &w.host_ifname;
    let ha = ip_addrs(&p.host, hv);
    assert!(ha.contains("169.254.1.1/32") && ha.contains("fe80::1/64"), "{ha:?}");
    assert!(ha.iter().all(|a| a == "169.254.1.1/32" || a.starts_with("fe80:")), "only the gateway and link-local: {ha:?}");
    let ca = ip_addrs(&p.ctr, "eth0");
    assert!(ca.contains("10.44.0.2/32") && ca.contains("2001:db8:44::2/128"), "{ca:?}");
    assert_eq!(
        ip_routes(&p.ctr, "-4"),
        BTreeSet::from(["default via 169.254.1.1 dev eth0".to_string(), "169.254.1.1 dev eth0".to_string()])
    );
    assert!(ip_routes(&p.ctr, "-6").contains("default via fe80::1 dev eth0"));
    assert_eq!(ip_routes(&p.host, "-4"), BTreeSet::from([format!("10.44.0.2 dev {hv}")]));
    assert!(ip_routes(&p.host, "-6").contains(&format!("2001:db8:44::2 dev {hv}")));
    let j = ip_link(&p.host, hv);
    assert_eq!(j["ifindex"].as_u64(), Some(u64::from(wired.host.index)));
    assert_eq!(j["linkinfo"]["info_kind"], "veth");

    // Real TCP both ways, IPv4 and IPv6. The host's own addresses on lo
    // are reached only through the container's default routes.
    let mut h = nl(&p.host);
    h.add_addr(1, pfx("192.0.2.1/32"), false).unwrap();
    h.add_addr(1, pfx("2001:db8:ff::1/128"), true).unwrap();
    let l4 = listen(&p.host.name, "192.0.2.1:7001".parse().unwrap());
    tcp_exchange(&p.ctr.name, "192.0.2.1:7001".parse().unwrap(), &l4, v4("10.44.0.2").into());
    let lg = listen(&p.host.name, "169.254.1.1:7002".parse().unwrap());
    tcp_exchange(&p.ctr.name, "169.254.1.1:7002".parse().unwrap(), &lg, v4("10.44.0.2").into());
    let l6 = listen(&p.host.name, "[2001:db8:ff::1]:7003".parse().unwrap());
    tcp_exchange(&p.ctr.name, "[2001:db8:ff::1]:7003".parse().unwrap(), &l6, v6("2001:db8:44::2").into());
    let lc = listen(&p.ctr.name, "[::]:7004".parse().unwrap());
    // From the host veth's own address, the source for a scope-link route.
    tcp_exchange(&p.host.name, "10.44.0.2:7004".parse().unwrap(), &lc, v6("::ffff:169.254.1.1").into());
    tcp_exchange(&p.host.name, "[2001:db8:44::2]:7004".parse().unwrap(), &lc, v6("2001:db8:ff::1").into());
    h.del_addr(1, pfx("192.0.2.1/32")).unwrap();
    h.del_addr(1, pfx("2001:db8:ff::1/128")).unwrap();

    // unwire: nothing left on either side; again: nothing to do.
    assert!(within(&p.host.name, || wiring::unwire(w)).unwrap(), "unwire removed the veth");
    assert_same("host after unwire", &host_before, &snapshot(&p.host));
    assert_same("container after unwire", &ctr_before, &snapshot(&p.ctr));
    assert!(!within(&p.host.name, || wiring::unwire(w)).unwrap(), "nothing left to remove");
    let e = within(&p.host.name, || wiring::check(w)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[test]
fn unwire_succeeds_when_the_namespace_is_gone_and_leaves_others_alone() {
    if !privileged("unwire_succeeds_when_the_namespace_is_gone_and_leaves_others_alone") {
        return;
    }
    // The container's namespace deleted under a wired container.
    let p = Pair::new();
    let host_before = snapshot(&p.host);
    wire_in(&p.host, &p.w).unwrap_or_else(|e| panic!("wire: {e}"));
    let Pair { host, ctr, w } = p;
    drop(ctr);
    let r = within(&host.name, || wiring::unwire(&w));
    assert!(r.is_ok(), "unwire with the namespace gone: {r:?}");
    // The kernel removes a dead namespace's veths asynchronously; unwire
    // removed the host side itself or found it gone.
    assert!(!ip_has_link(&host, &w.host_ifname));
    assert_same("host after unwire", &host_before, &snapshot(&host));
    assert!(!within(&host.name, || wiring::unwire(&w)).unwrap());

    // A link of that name that is not this wiring's veth is left alone.
    let ctr = TestNs::new();
    let mut w = w.clone();
    w.netns = path(&ctr);
    host.ip(&format!("link add {} type bridge", w.host_ifname));
    let e = within(&host.name, || wiring::unwire(&w)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
    assert!(ip_has_link(&host, &w.host_ifname), "the bridge is still there");
    host.ip(&format!("link del {}", w.host_ifname));
    // A veth of that name whose peer is in another namespace: same.
    let elsewhere = TestNs::new();
    host.ip(&format!("link add {} type veth peer name eth0 netns {}", w.host_ifname, elsewhere.name));
    let e = within(&host.name, || wiring::unwire(&w)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
    assert!(ip_has_link(&host, &w.host_ifname) && ip_has_link(&elsewhere, "eth0"), "that veth is still there");
}

/// A failed wire: the error names `step`, is of `kind`, and both
/// namespaces are as they were.
#[track_caller]
fn assert_failed_cleanly(what: &str, p: &Pair, w: &Wiring, step: Step, kind: Option<ErrorKind>, fail: Option<Step>) {
    let (host_before, ctr_before) = (snapshot(&p.host), snapshot(&p.ctr));
    let r = within(&p.host.name, || match fail {
        Some(s) => wiring::wire_failing_at(w, s),
        None => wiring::wire(w),
    });
    let e = match r {
        Ok(_) => panic!("{what}: wire succeeded, expected step {step} to fail"),
        Err(e) => e,
    };
    eprintln!("{what}: {e}");
    assert_eq!(e.step, step, "{what}: {e}");
    if let Some(k) = kind {
        assert_eq!(e.kind(), k, "{what}: {e}");
    }
    assert!(e.undo_errors.is_empty(), "{what}: {e}");
    let text = e.to_string();
    assert!(text.starts_with(&format!("wiring {} / ", w.host_ifname)), "{what}: the message names the wiring: {e}");
    assert!(text.contains(&format!(" failed at step {step}: ")), "{what}: the message names the step: {e}");
    assert_same(&format!("{what}: host"), &host_before, &snapshot(&p.host));
    assert_same(&format!("{what}: container"), &ctr_before, &snapshot(&p.ctr));
}

#[test]
fn every_failing_step_of_wire_is_undone() {
    if !privileged("every_failing_step_of_wire_is_undone") {
        return;
    }
    // Each step failing in turn (as if the kernel had refused it), for a
    // dual-stack and for an IPv4-only and an IPv6-only container.
    let p = Pair::new();
    let mut only4 = p.w.clone();
    only4.ip6 = None;
    let mut only6 = p.w.clone();
    only6.ip4 = None;
    for w in [&p.w, &only4, &only6] {
        let steps = w.steps();
        for step in &steps {
            let what = format!("{step} failing ({} steps)", steps.len());
            assert_failed_cleanly(&what, &p, w, *step, None, Some(*step));
        }
        // And the whole sequence works after all those failures.
        wire_in(&p.host, w).unwrap_or_else(|e| panic!("wire after the failures: {e}"));
        within(&p.host.name, || wiring::check(w)).unwrap();
        assert!(within(&p.host.name, || wiring::unwire(w)).unwrap());
    }
}

#[test]
fn real_refusals_name_the_step_and_leave_nothing() {
    if !privileged("real_refusals_name_the_step_and_leave_nothing") {
        return;
    }
    // Invalid before anything is made.
    let p = Pair::new();
    let mut w = p.w.clone();
    w.ifname = "much-too-long-for-linux".into();
    assert_failed_cleanly("bad ifname", &p, &w, Step::Check, Some(ErrorKind::Invalid), None);

    // The container's namespace is missing.
    let mut w = p.w.clone();
    w.netns = PathBuf::from("/run/netns").join(unique("gone"));
    assert_failed_cleanly("missing namespace", &p, &w, Step::OpenNetns, Some(ErrorKind::NotFound), None);

    // The host veth's name is taken (by a link that is not ours, and stays).
    // (This kernel has no dummy links; a bridge will do.)
    p.host.ip(&format!("link add {} type bridge", p.w.host_ifname));
    assert_failed_cleanly("host name taken", &p, &p.w, Step::CreateVeth, Some(ErrorKind::Exists), None);
    assert_eq!(ip_link(&p.host, &p.w.host_ifname)["linkinfo"]["info_kind"], "bridge");
    p.host.ip(&format!("link del {}", p.w.host_ifname));

    // The container side's name is taken in the container.
    p.ctr.ip("link add eth0 type bridge");
    assert_failed_cleanly("ifname taken", &p, &p.w, Step::CreateVeth, Some(ErrorKind::Exists), None);
    p.ctr.ip("link del eth0");

    // An MTU the veth cannot have.
    for mtu in [100_000, 20] {
        let mut w = p.w.clone();
        w.mtu = Some(mtu);
        assert_failed_cleanly(&format!("MTU {mtu}"), &p, &w, Step::CreateVeth, Some(ErrorKind::Invalid), None);
    }

    // IPv6 disabled for new links of the host, then of the container.
    let sysctl = |ns: &TestNs, v: u8| sh(&format!("ip netns exec {} sysctl -qw net.ipv6.conf.default.disable_ipv6={v}", ns.name));
    sysctl(&p.host, 1);
    assert_failed_cleanly("IPv6 off on the host", &p, &p.w, Step::HostAddr6, Some(ErrorKind::Permission), None);
    sysctl(&p.host, 0);
    sysctl(&p.ctr, 1);
    assert_failed_cleanly("IPv6 off in the container", &p, &p.w, Step::CtrAddr6, Some(ErrorKind::Permission), None);
    sysctl(&p.ctr, 0);

    // The container routes the gateway, or has a default route, already.
    p.ctr.ip("link add br0 type bridge");
    p.ctr.ip("link set br0 up");
    p.ctr.ip("route add 169.254.1.1/32 dev br0");
    assert_failed_cleanly("gateway routed", &p, &p.w, Step::CtrGatewayRoute4, Some(ErrorKind::Exists), None);
    p.ctr.ip("route del 169.254.1.1/32 dev br0");
    p.ctr.ip("route add default dev br0");
    assert_failed_cleanly("default route there", &p, &p.w, Step::CtrDefaultRoute4, Some(ErrorKind::Exists), None);
    p.ctr.ip("route del default dev br0");
    p.ctr.ip("-6 route add default dev br0");
    assert_failed_cleanly("IPv6 default route there", &p, &p.w, Step::CtrDefaultRoute6, Some(ErrorKind::Exists), None);
    p.ctr.ip("link del br0");

    // The address is in use by another container on this host: its host
    // route is there already.
    let other = TestNs::new();
    let mut first = p.w.clone();
    first.host_ifname = wiring::host_veth_name(&unique("first"));
    first.netns = path(&other);
    wire_in(&p.host, &first).unwrap_or_else(|e| panic!("wiring the first container: {e}"));
    assert_failed_cleanly("IPv4 address in use", &p, &p.w, Step::HostRoute4, Some(ErrorKind::Exists), None);
    let mut w = p.w.clone();
    w.ip4 = Some(v4("10.44.0.3"));
    assert_failed_cleanly("IPv6 address in use", &p, &w, Step::HostRoute6, Some(ErrorKind::Exists), None);
    assert!(within(&p.host.name, || wiring::unwire(&first)).unwrap());
    wire_in(&p.host, &p.w).unwrap_or_else(|e| panic!("wire once the address is free: {e}"));
}

#[test]
fn two_hundred_wire_unwire_cycles_leave_nothing() {
    if !privileged("two_hundred_wire_unwire_cycles_leave_nothing") {
        return;
    }
    let p = Pair::new();
    let (host_before, ctr_before) = (snapshot(&p.host), snapshot(&p.ctr));
    within(&p.host.name, || {
        for i in 0..200 {
            let wired = wiring::wire(&p.w).unwrap_or_else(|e| panic!("cycle {i}: wire: {e}"));
            let checked = wiring::check(&p.w).unwrap_or_else(|e| panic!("cycle {i}: check: {e}"));
            assert_eq!(checked, wired, "cycle {i}");
            assert!(wiring::unwire(&p.w).unwrap_or_else(|e| panic!("cycle {i}: unwire: {e}")), "cycle {i}");
        }
    });
    assert_same("host after 200 cycles", &host_before, &snapshot(&p.host));
    assert_same("container after 200 cycles", &ctr_before, &snapshot(&p.ctr));
}
