//! End-to-end: real namespaces, veth pairs and sockets, wired with the real
//! `datapathctl` binary exactly as a provisioning script would, real TCP
//! and UDP through every path (see `common::topo` for the topology).
//!
//! Every test has its own pin root, namespaces, interface names and
//! cgroup, all removed on drop, so the tests run in parallel and clean up
//! after a failure too.

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::packet::{csum_add, csum_fold};
use common::privileged;
use common::topo::*;
use nix::libc;

/// Connects expected to succeed: one lost SYN (retransmitted after 1 s)
/// still fits.
const CONNECT: Duration = Duration::from_secs(3);
/// How long to wait for a packet that must not arrive.
const QUIET: Duration = Duration::from_millis(500);

/// 1. Published ports: each reaches its own container, replies come back
///    from the host's address and published port, and the container sees
///    the player's real address. TCP and UDP.
#[test]
fn player_reaches_each_published_container() {
    if !privileged("player_reaches_each_published_container") {
        return;
    }
    let mut t = Topo::new();
    let c0 = t.add_container(true);
    let c1 = t.add_container(true);
    t.publish(30001, c0, "tcp", CTR_PORT);
    t.publish(30002, c1, "tcp", CTR_PORT);
    t.publish(30003, c0, "udp", CTR_PORT);
    let servers = [c0, c1].map(|i| EchoServer::tcp(tcp_listen(&t.ctrs[i].ns, CTR_PORT)));
    let udp_server = EchoServer::udp(udp_bind(&t.ctrs[c0].ns, any(CTR_PORT)));
    let before = t.ctl.stats();

    for (port, i) in [(30001u16, c0), (30002, c1)] {
        let what = format!("player -> {EXT_IP}:{port}/tcp (container {i})");
        let mut s = t.player_connect(port, CONNECT).unwrap_or_else(|e| panic!("{what}: connect failed: {e}"));
        let peer = s.peer_addr().unwrap();
        assert_eq!(peer, sa(EXT_IP, port), "{what}: player's socket is connected to {peer}");
        let msg = format!("hello container {i} through host port {port}");
        let echo = roundtrip(&mut s, msg.as_bytes()).unwrap_or_else(|e| panic!("{what}: no echo: {e}"));
        assert_eq!(String::from_utf8_lossy(&echo), msg, "{what}: echoed bytes differ from the ones sent");
        let seen = servers[i].next_peer(&what);
        let player = s.local_addr().unwrap();
        assert_eq!(seen, player, "{what}: container saw the connection from {seen}, expected the player's {player}");
        assert_eq!(seen.ip(), PLAYER_IP, "{what}: container saw {seen}, not the player's real address");
    }
    for (i, srv) in servers.iter().enumerate() {
        if let Ok(p) = srv.peers.try_recv() {
            panic!("container {i} saw an extra connection from {p}, expected one connection per port");
        }
    }

    let what = format!("player -> {EXT_IP}:30003/udp (container {c0})");
    let ps = udp_bind(&t.player, any(0));
    ps.send_to(b"udp ping", sa(EXT_IP, 30003)).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = ps.recv_from(&mut buf).unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
    assert_eq!(&buf[..n], b"udp ping", "{what}: echoed datagram differs");
    assert_eq!(from, sa(EXT_IP, 30003), "{what}: answer came from {from}, expected the published address");
    let seen = udp_server.next_peer(&what);
    let port = ps.local_addr().unwrap().port();
    assert_eq!(seen, sa(PLAYER_IP, port), "{what}: container saw the datagram from {seen}");

    let after = t.ctl.stats();
    assert_moved("published ports", &before, &after, "dnat/redirect", 3);
    assert_moved("published ports", &before, &after, "snat/redirect", 3);
}

/// 1b. dnat hands a published packet straight to the container side of its
///     veth (bpf_redirect_peer): it never passes the host veth's egress,
///     where tproxy_egress would take a player's UDP for a datagram the
///     host sent (and record a host flow for it). bpf_redirect would
///     deliver it too, one hop later.
#[test]
fn published_packets_skip_the_host_veth() {
    if !privileged("published_packets_skip_the_host_veth") {
        return;
    }
    let mut t = Topo::new();
    let c = t.add_container(true);
    t.publish(30003, c, "udp", CTR_PORT);
    let server = EchoServer::udp(udp_bind(&t.ctrs[c].ns, any(CTR_PORT)));
    let ps = udp_bind(&t.player, any(0));
    let before = t.ctl.stats();
    let what = format!("player -> {EXT_IP}:30003/udp");
    let mut buf = [0u8; 64];
    for i in 0..20u8 {
        ps.send_to(&[i; 16], sa(EXT_IP, 30003)).unwrap();
        let (n, from) = ps.recv_from(&mut buf).unwrap_or_else(|e| panic!("{what}: no answer to datagram {i}: {e}"));
        assert_eq!((&buf[..n], from), (&[i; 16][..], sa(EXT_IP, 30003)), "{what}: answer {i}");
    }
    server.next_peer(&what);
    let after = t.ctl.stats();
    assert_moved_by(&what, &before, &after, "dnat/redirect", 20);
    assert_moved_by(&what, &before, &after, "snat/redirect", 20);
    assert_still(&what, &before, &after, "tproxy_egress/host_udp");
    assert_still(&what, &before, &after, "tproxy_egress/flow_error");
}

/// Proxy sockets made in the proxy's cgroup, by kind.
struct Proxy {
    dns_tcp: TcpListener,
    http: TcpListener,
    tcp: TcpListener,
    dns_udp: UdpSocket,
}

impl Proxy {
    fn start(t: &mut Topo) -> Self {
        t.proxy_cgroup();
        let mut fds = t
            .proxy_sockets(&[
                (Kind::Tcp, PROXY_DNS),
                (Kind::Tcp, PROXY_HTTP),
                (Kind::Tcp, PROXY_TCP),
                (Kind::Udp, PROXY_DNS),
            ])
            .into_iter();
        let mut l = || TcpListener::from(fds.next().unwrap());
        let (dns_tcp, http, tcp) = (l(), l(), l());
        let dns_udp = UdpSocket::from(fds.next().unwrap());
        dns_udp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        Self { dns_tcp, http, tcp, dns_udp }
    }
}

/// 2. Container traffic goes through the proxy: DNS over UDP and TCP to
///    9053, HTTP to 9080, other TCP to 9111; SO_ORIGINAL_DST on the
///    accepted socket says where the container meant to go, and the
///    container sees the answers come from there.
#[test]
fn container_traffic_goes_through_the_proxy() {
    if !privileged("container_traffic_goes_through_the_proxy") {
        return;
    }
    let mut t = Topo::new();
    let c = t.add_container(true);
    let proxy = Proxy::start(&mut t);
    let ctr = &t.ctrs[c];
    let before = t.ctl.stats();

    // DNS over UDP.
    let dns = sa(Ipv4Addr::new(192, 0, 2, 53), 53);
    let what = format!("container -> {dns}/udp");
    let client = udp_bind(&ctr.ns, any(0));
    client.send_to(b"dns query", dns).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = proxy
        .dns_udp
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: nothing at the proxy's {PROXY_DNS}/udp: {e}"));
    assert_eq!(&buf[..n], b"dns query", "{what}: the proxy received other bytes");
    let local = client.local_addr().unwrap();
    assert_eq!(from, ctr.addr(local.port()), "{what}: the proxy saw the query from {from}");
    proxy.dns_udp.send_to(b"dns answer", from).unwrap();
    let (n, from) = client.recv_from(&mut buf).unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
    assert_eq!(&buf[..n], b"dns answer", "{what}: the container received other bytes");
    assert_eq!(from, dns, "{what}: the answer came from {from}, expected the original destination");

    // TCP: DNS, HTTP and anything else.
    let cases = [
        (dns, &proxy.dns_tcp, PROXY_DNS, &b"\x00\x09dns query"[..], &b"\x00\x0adns answer"[..]),
        (
            sa(Ipv4Addr::new(192, 0, 2, 80), 80),
            &proxy.http,
            PROXY_HTTP,
            &b"GET / HTTP/1.0\r\nHost: example\r\n\r\n"[..],
            &b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"[..],
        ),
        (sa(Ipv4Addr::new(192, 0, 2, 44), 4444), &proxy.tcp, PROXY_TCP, &b"other request"[..], &b"other answer"[..]),
    ];
    for (orig, listener, proxy_port, request, answer) in cases {
        let what = format!("container -> {orig}/tcp");
        let mut client = tcp_connect(&ctr.ns, orig, CONNECT).unwrap_or_else(|e| panic!("{what}: connect failed: {e}"));
        assert_eq!(client.peer_addr().unwrap(), orig, "{what}: client connected elsewhere");
        client.write_all(request).unwrap();
        let (mut srv, peer) =
            accept(listener, IO_TIMEOUT).unwrap_or_else(|e| panic!("{what}: nothing at the proxy's {proxy_port}: {e}"));
        let local = client.local_addr().unwrap();
        assert_eq!(
            peer,
            ctr.addr(local.port()),
            "{what}: the proxy's peer is {peer}, expected the container's {local}"
        );
        let at = srv.local_addr().unwrap();
        assert_eq!(at, sa(ctr.gw, proxy_port), "{what}: arrived at {at}, expected the proxy on the host veth");
        let od = original_dst(&srv).unwrap_or_else(|e| panic!("{what}: getsockopt(SO_ORIGINAL_DST) failed: {e}"));
        assert_eq!(SocketAddr::V4(od), orig, "{what}: SO_ORIGINAL_DST returned {od}");
        let mut got = vec![0u8; request.len()];
        srv.read_exact(&mut got).unwrap_or_else(|e| panic!("{what}: the proxy got no request: {e}"));
        assert_eq!(got, request, "{what}: the proxy received other bytes");
        srv.write_all(answer).unwrap();
        drop(srv);
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap_or_else(|e| panic!("{what}: the container got no answer: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(answer),
            "{what}: the container received other bytes"
        );
    }

    let after = t.ctl.stats();
    let what = "proxied traffic";
    assert_moved(what, &before, &after, "tproxy_ingress/dns", 2);
    assert_moved(what, &before, &after, "tproxy_ingress/http", 1);
    assert_moved(what, &before, &after, "tproxy_ingress/tcp", 1);
    assert_moved(what, &before, &after, "tproxy_egress/restored", 4);
    assert_moved(what, &before, &after, "getsockopt/found", 3);
    assert_still(what, &before, &after, "getsockopt/miss");
}

/// 2b. A dual-stack proxy (a TCP listener on [::] that takes IPv4 too)
///     sees the container as ::ffff:a.b.c.d, and its getsockopt(SOL_IP,
///     SO_ORIGINAL_DST) must still find the connection.
#[test]
fn dual_stack_proxy_gets_the_original_destination() {
    if !privileged("dual_stack_proxy_gets_the_original_destination") {
        return;
    }
    let mut t = Topo::new();
    let c = t.add_container(true);
    t.proxy_cgroup();
    let listener = TcpListener::from(t.proxy_sockets(&[(Kind::TcpDual, PROXY_TCP)]).remove(0));
    let ctr = &t.ctrs[c];
    let before = t.ctl.stats();
    let orig = sa(Ipv4Addr::new(192, 0, 2, 45), 4445);
    let what = format!("container -> {orig}/tcp, dual-stack proxy");
    let mut client = tcp_connect(&ctr.ns, orig, CONNECT).unwrap_or_else(|e| panic!("{what}: connect failed: {e}"));
    let (mut srv, peer) = accept(&listener, IO_TIMEOUT).unwrap_or_else(|e| panic!("{what}: nothing at the proxy: {e}"));
    let local = client.local_addr().unwrap();
    match peer {
        SocketAddr::V6(p) => assert_eq!(
            (p.ip().to_ipv4_mapped(), p.port()),
            (Some(ctr.ip), local.port()),
            "{what}: the proxy's peer is {peer}, expected the container's {local} as an IPv4-mapped address"
        ),
        SocketAddr::V4(p) => panic!("{what}: a dual-stack listener saw the IPv4 peer {p}"),
    }
    let od = original_dst(&srv).unwrap_or_else(|e| panic!("{what}: getsockopt(SO_ORIGINAL_DST) failed: {e}"));
    assert_eq!(SocketAddr::V4(od), orig, "{what}: SO_ORIGINAL_DST returned {od}");
    srv.write_all(b"answer").unwrap();
    drop(srv);
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap_or_else(|e| panic!("{what}: the container got no answer: {e}"));
    assert_eq!(got, b"answer", "{what}: the container received other bytes");
    let after = t.ctl.stats();
    assert_moved_by(&what, &before, &after, "getsockopt/found", 1);
    assert_still(&what, &before, &after, "getsockopt/miss");
}

/// 3. Two containers connect out of the same source port at the same time
///    to different destinations; each connection's SO_ORIGINAL_DST is its
///    own.
#[test]
fn same_source_port_in_two_containers() {
    if !privileged("same_source_port_in_two_containers") {
        return;
    }
    let mut t = Topo::new();
    let c0 = t.add_container(true);
    let c1 = t.add_container(true);
    let proxy = Proxy::start(&mut t);
    let cases = [
        // (source port, listener, [(container, destination); 2])
        (
            40000u16,
            &proxy.tcp,
            [(c0, sa(Ipv4Addr::new(192, 0, 2, 10), 7000)), (c1, sa(Ipv4Addr::new(198, 51, 100, 20), 8000))],
        ),
        (40001, &proxy.http, [(c0, sa(Ipv4Addr::new(192, 0, 2, 11), 80)), (c1, sa(Ipv4Addr::new(192, 0, 2, 12), 80))]),
    ];
    for (sport, listener, pair) in cases {
        let clients: Vec<TcpStream> = thread::scope(|s| {
            let hs: Vec<_> = pair
                .iter()
                .map(|&(i, dst)| {
                    let ns = t.ctrs[i].ns.clone();
                    s.spawn(move || {
                        tcp_connect_from(&ns, any(sport), dst, CONNECT)
                            .unwrap_or_else(|e| panic!("container {i} from port {sport} -> {dst}: connect failed: {e}"))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
        for c in &clients {
            assert_eq!(c.local_addr().unwrap().port(), sport, "client not bound to source port {sport}");
        }
        let mut seen = BTreeMap::new();
        for _ in 0..2 {
            let (srv, peer) = accept(listener, IO_TIMEOUT)
                .unwrap_or_else(|e| panic!("source port {sport}: proxy accepted too few connections: {e}"));
            let od = original_dst(&srv).unwrap_or_else(|e| panic!("{peer}: getsockopt(SO_ORIGINAL_DST) failed: {e}"));
            seen.insert(peer, (od, srv));
        }
        for (i, dst) in pair {
            let key = t.ctrs[i].addr(sport);
            let (od, _) = seen.get(&key).unwrap_or_else(|| {
                panic!("no proxied connection from {key}; the proxy saw {:?}", seen.keys().collect::<Vec<_>>())
            });
            assert_eq!(
                SocketAddr::V4(*od),
                dst,
                "container {i} ({key}): SO_ORIGINAL_DST returned {od}, expected {dst}"
            );
        }
        drop(clients);
    }
}

/// 4. ARP: the container resolves its gateway (and, without a gateway,
///    any destination) to the host veth's real MAC, answered by arp.
#[test]
fn arp_answers_with_the_host_veth_mac() {
    if !privileged("arp_answers_with_the_host_veth_mac") {
        return;
    }
    let mut t = Topo::new();
    let c0 = t.add_container(true);
    let c1 = t.add_container(false);
    let listener = tcp_listen(&t.host, PROXY_TCP);
    let before = t.ctl.stats();
    let cases = [(c0, sa(Ipv4Addr::new(192, 0, 2, 44), 4444)), (c1, sa(Ipv4Addr::new(192, 0, 2, 45), 4444))];
    for (i, dst) in cases {
        let ctr = &t.ctrs[i];
        let what = format!("container {i} -> {dst}");
        let client = tcp_connect(&ctr.ns, dst, CONNECT).unwrap_or_else(|e| panic!("{what}: connect failed: {e}"));
        let (_srv, peer) =
            accept(&listener, IO_TIMEOUT).unwrap_or_else(|e| panic!("{what}: nothing at the proxy: {e}"));
        assert_eq!(peer, client.local_addr().unwrap(), "{what}: the proxy saw {peer}");
        let (resolved, how) = if i == c0 { (ctr.gw, "gateway") } else { (v4_ip(dst), "on-link destination") };
        let mac = neighbour(&ctr.ns, resolved);
        let want = format_mac(&ctr.host_mac);
        assert_eq!(
            mac.as_deref(),
            Some(want.as_str()),
            "{what}: neighbour entry of the {how} {resolved} is {mac:?}, expected the host veth's MAC {want}"
        );
    }
    let after = t.ctl.stats();
    assert_moved("container ARP", &before, &after, "arp/replied", 2);
}

fn v4_ip(a: SocketAddr) -> Ipv4Addr {
    match a.ip() {
        std::net::IpAddr::V4(ip) => ip,
        ip => panic!("IPv4 only, got {ip}"),
    }
}

/// An ICMP echo request (type 8) with a complete checksum.
fn icmp_echo(id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![8, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"datapath e2e ping");
    let c = csum_fold(csum_add(0, &p));
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// A raw ICMP socket in namespace `ns`. Wrapped as a UdpSocket only for
/// its send_to/recv_from and timeouts, which are plain sendto/recvfrom.
fn icmp_socket(ns: &str) -> UdpSocket {
    within(ns, || {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMP) };
        assert!(fd >= 0, "raw ICMP socket: {}", std::io::Error::last_os_error());
        // SAFETY: fd is fresh and owned by nobody else.
        UdpSocket::from(unsafe { OwnedFd::from_raw_fd(fd) })
    })
}

/// 5b. An ICMP error about a published flow reaches the container's socket
///     straight from dnat (bpf_redirect_peer), never through the host
///     veth's egress: a player's "port unreachable" about the container's
///     answer makes the container's connected UDP socket fail with
///     ECONNREFUSED, and tproxy_egress sees none of the errors.
#[test]
fn icmp_errors_reach_the_container_socket_directly() {
    if !privileged("icmp_errors_reach_the_container_socket_directly") {
        return;
    }
    let mut t = Topo::new();
    let c = t.add_container(true);
    t.publish(30003, c, "udp", CTR_PORT);
    let what = "player's port-unreachable about the container's answer";
    let server = udp_bind(&t.ctrs[c].ns, any(CTR_PORT));
    server.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let ps = udp_bind(&t.player, any(0));
    ps.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    ps.send_to(b"hello", sa(EXT_IP, 30003)).unwrap();
    let mut buf = [0u8; 64];
    let (_, player) = server.recv_from(&mut buf).unwrap_or_else(|e| panic!("{what}: the container got nothing: {e}"));
    server.connect(player).unwrap();
    server.send(b"answer").unwrap();
    let (_, from) = ps.recv_from(&mut buf).unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
    assert_eq!(from, sa(EXT_IP, 30003), "{what}: the answer came from {from}");

    // The answer as it reached the player, and the error about it.
    let mut inner = vec![0x45, 0, 0, 34, 0x12, 0x34, 0, 0, 64, 17, 0, 0];
    inner.extend(EXT_IP.octets());
    inner.extend(PLAYER_IP.octets());
    let c = csum_fold(csum_add(0, &inner));
    inner[10..12].copy_from_slice(&c.to_be_bytes());
    inner.extend(30003u16.to_be_bytes());
    inner.extend(player.port().to_be_bytes());
    inner.extend([0, 14, 0, 0]);
    let mut err = vec![3, 3, 0, 0, 0, 0, 0, 0];
    err.extend(&inner);
    let c = csum_fold(csum_add(0, &err));
    err[2..4].copy_from_slice(&c.to_be_bytes());

    let before = t.ctl.stats();
    let icmp = icmp_socket(&t.player);
    for _ in 0..5 {
        icmp.send_to(&err, sa(EXT_IP, 0)).unwrap();
    }
    let got = server.recv(&mut buf);
    assert_eq!(
        got.as_ref().map_err(|e| e.raw_os_error()),
        Err(Some(libc::ECONNREFUSED)),
        "{what}: the container's socket must see the error, got {got:?}"
    );
    let after = t.ctl.stats();
    assert_moved_by(what, &before, &after, "dnat/icmp_translated", 5);
    assert_still(what, &before, &after, "tproxy_egress/passed");
}

/// 5. Dropped and counted: a spoofed source address, ICMP, UDP to a port
///    other than 53. None of it arrives anywhere.
#[test]
fn spoofed_icmp_and_other_udp_are_dropped() {
    if !privileged("spoofed_icmp_and_other_udp_are_dropped") {
        return;
    }
    let mut t = Topo::new();
    let c = t.add_container(true);
    let ctr = &t.ctrs[c];
    // An "outside" address the host itself owns: anything that got past
    // the host veth would be delivered (or answered) here.
    let outside = Ipv4Addr::new(192, 0, 2, 1);
    ip(&format!("-n {} addr add {outside}/32 dev lo", t.host));
    let dns_proxy = udp_bind(&t.host, any(PROXY_DNS));
    let sink = udp_bind(&t.host, any(5000));
    let dns = sa(Ipv4Addr::new(192, 0, 2, 53), 53);

    // Control: a real query from the real address does arrive.
    let client = udp_bind(&ctr.ns, any(0));
    client.send_to(b"real query", dns).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = dns_proxy
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("control query from {}: nothing at the proxy: {e}", ctr.ip));
    assert_eq!((&buf[..n], from.ip()), (&b"real query"[..], ctr.ip.into()), "control query arrived altered");

    let before = t.ctl.stats();
    let echoes = snmp(&t.host, "Icmp", "InEchos");

    // A second address in the container, not the one registered.
    let spoofed = Ipv4Addr::new(10, 99, c as u8, 9);
    ip(&format!("-n {} addr add {spoofed}/32 dev eth0", ctr.ns));
    let liar = udp_bind(&ctr.ns, sa(spoofed, 0));
    liar.send_to(b"spoofed query", dns).unwrap();
    let ping = icmp_socket(&ctr.ns);
    let id = (std::process::id() & 0xffff) as u16;
    ping.send_to(&icmp_echo(id, 1), sa(outside, 0)).unwrap();
    client.send_to(b"not dns", sa(outside, 5000)).unwrap();

    // Whatever was not dropped is delivered well within QUIET; after it,
    // look at what each receiver has queued.
    dns_proxy.set_read_timeout(Some(QUIET)).unwrap();
    match dns_proxy.recv_from(&mut buf) {
        Ok((n, from)) => panic!(
            "spoofed query from {spoofed}: the DNS proxy received {:?} from {from}, expected nothing",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => assert!(matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "DNS proxy: {e}"),
    }
    let got = queued(&sink);
    assert!(got.is_empty(), "UDP to {outside}:5000 arrived at the host: {got:?}, expected it dropped");
    let replies: Vec<_> = queued(&ping)
        .into_iter()
        .filter(|(p, _)| {
            let ihl = usize::from(p[0] & 0xf) * 4;
            p.len() >= ihl + 8 && p[ihl] == 0 && p[ihl + 4..ihl + 6] == id.to_be_bytes()
        })
        .collect();
    assert!(replies.is_empty(), "ping to {outside} was answered ({} replies), expected it dropped", replies.len());
    let echoes_after = snmp(&t.host, "Icmp", "InEchos");
    assert_eq!(echoes_after, echoes, "the host received {} echo requests, expected none", echoes_after - echoes);

    let after = t.ctl.stats();
    let what = "dropped traffic";
    assert_moved(what, &before, &after, "snat/spoofed", 1);
    assert_moved(what, &before, &after, "tproxy_ingress/l4_dropped", 1);
    assert_moved(what, &before, &after, "tproxy_ingress/udp_dropped", 1);
    assert_still(what, &before, &after, "tproxy_ingress/dns");
}

/// 6. Upgrade in place: `datapathctl load`, 20 times, while a player
///    streams over one long-lived TCP connection: no reset, every byte
///    arrives intact, the published ports are unchanged, the programs are
///    new.
#[test]
fn load_in_place_under_traffic() {
    if !privileged("load_in_place_under_traffic") {
        return;
    }
    const LOADS: u64 = 20;
    const MIN_BYTES: u64 = 8 << 20;
    // 64 KiB every 20 ms: 8 MiB in about 2.6 s.
    const PACE: Duration = Duration::from_millis(20);

    let mut t = Topo::new();
    let c = t.add_container(true);
    t.publish(30001, c, "tcp", CTR_PORT);
    let listener = tcp_listen(&t.ctrs[c].ns, CTR_PORT);
    let published = t.ctl.json(&["map", "dnat", "list"]);
    let progs = |t: &Topo| -> Vec<u64> {
        let s = t.ctl.json(&["status"]);
        s["programs"].as_array().expect("status programs").iter().map(|p| p["id"].as_u64().unwrap()).collect()
    };
    let progs_before = progs(&t);

    // The container: counts and checksums everything until EOF, then
    // answers with (length, checksum).
    let received = Arc::new(AtomicU64::new(0));
    let server = stream_sink(listener, "container", received.clone());

    // The player: streams a pseudo-random pattern until it has sent
    // MIN_BYTES and every load is done.
    let loads_done = Arc::new(AtomicBool::new(false));
    let s =
        t.player_connect(30001, CONNECT).unwrap_or_else(|e| panic!("player -> {EXT_IP}:30001: connect failed: {e}"));
    let player = {
        let loads_done = loads_done.clone();
        stream_source(s, "player", PACE, move |sent| sent < MIN_BYTES || !loads_done.load(Ordering::Relaxed))
    };

    // Spread the loads over the stream: each waits for more data to have
    // arrived since the one before. A player that stopped early is
    // reported by its own error below.
    let step = MIN_BYTES / (LOADS + 2);
    let mut loads = 0;
    'loads: for i in 1..=LOADS {
        let want = step * i;
        let deadline = Instant::now() + IO_TIMEOUT;
        while received.load(Ordering::Relaxed) < want {
            if player.is_finished() {
                break 'loads;
            }
            assert!(
                Instant::now() < deadline,
                "load {i}: the container has {} bytes, expected {want} by now",
                received.load(Ordering::Relaxed)
            );
            thread::sleep(Duration::from_millis(2));
        }
        t.ctl.run(&["load"]);
        loads += 1;
    }
    loads_done.store(true, Ordering::Relaxed);

    let (sent, sent_hash, got, got_hash) = join(player).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loads, LOADS, "the player finished after {sent} bytes, before all {LOADS} loads");
    let server_view = join(server).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(server_view, (got, got_hash), "the container's summary was altered on the way back");
    assert_eq!(got, sent, "the container received {got} bytes, the player sent {sent}");
    assert_eq!(
        got_hash, sent_hash,
        "checksum of the {sent} bytes differs: sent {sent_hash:#x}, received {got_hash:#x}"
    );
    assert!(sent >= MIN_BYTES);

    let published_after = t.ctl.json(&["map", "dnat", "list"]);
    assert_eq!(published_after, published, "`map dnat list --json` changed across {LOADS} loads");
    let progs_after = progs(&t);
    for (b, a) in progs_before.iter().zip(&progs_after) {
        assert_ne!(a, b, "program ids before {progs_before:?} and after {progs_after:?} the loads: not replaced");
    }
}

/// 7. Removing a container stops its traffic and leaves the other one
///    working.
#[test]
fn removed_container_gets_no_traffic() {
    if !privileged("removed_container_gets_no_traffic") {
        return;
    }
    let mut t = Topo::new();
    let c0 = t.add_published(true, &[(30001, "tcp", CTR_PORT)]);
    let c1 = t.add_published(true, &[(30002, "tcp", CTR_PORT)]);
    let servers = [c0, c1].map(|i| EchoServer::tcp(tcp_listen(&t.ctrs[i].ns, CTR_PORT)));

    let mut open = Vec::new();
    for port in [30001u16, 30002] {
        let mut s = t.player_connect(port, CONNECT).unwrap_or_else(|e| panic!("before removal: player -> {port}: {e}"));
        let echo = roundtrip(&mut s, b"before").unwrap_or_else(|e| panic!("before removal: no echo on {port}: {e}"));
        assert_eq!(echo, b"before", "before removal: echo on {port} differs");
        open.push(s);
    }
    let (_, _) = (servers[0].next_peer("30001"), servers[1].next_peer("30002"));
    let mut established = open.pop().unwrap();

    t.remove_container(c1);

    // The connection that was open gets no more echoes.
    established.set_read_timeout(Some(QUIET)).unwrap();
    let stale = established.write_all(b"after").and_then(|()| {
        let mut b = [0u8; 5];
        established.read(&mut b).map(|n| b[..n].to_vec())
    });
    if let Ok(bytes) = &stale {
        assert!(bytes.is_empty(), "after removal: the old connection to 30002 still echoed {bytes:?}");
    }
    // New connections fail fast.
    let started = Instant::now();
    let r = t.player_connect(30002, Duration::from_secs(1));
    assert!(
        r.is_err(),
        "after removal: player connected to 30002 ({:?}), expected a failure",
        r.map(|s| s.peer_addr())
    );
    assert!(started.elapsed() < Duration::from_secs(2), "after removal: connect to 30002 took {:?}", started.elapsed());
    if let Ok(p) = servers[1].peers.try_recv() {
        panic!("after removal: the removed container still accepted a connection from {p}");
    }

    // The other container is untouched.
    let mut s = t.player_connect(30001, CONNECT).unwrap_or_else(|e| panic!("after removal: player -> 30001: {e}"));
    let echo = roundtrip(&mut s, b"still here").unwrap_or_else(|e| panic!("after removal: no echo on 30001: {e}"));
    assert_eq!(echo, b"still here", "after removal: echo on 30001 differs");
    let mut old = open.pop().unwrap();
    let echo = roundtrip(&mut old, b"old conn")
        .unwrap_or_else(|e| panic!("after removal: established connection to 30001 broke: {e}"));
    assert_eq!(echo, b"old conn");

    let published = t.ctl.json(&["map", "dnat", "list"]);
    let ports: Vec<u64> = published.as_array().unwrap().iter().map(|p| p["host_port"].as_u64().unwrap()).collect();
    assert_eq!(ports, vec![30001], "after removal: published ports {ports:?}, expected [30001]");
    let veths = t.ctl.json(&["map", "veth", "list"]);
    let ips: Vec<&str> = veths.as_array().unwrap().iter().map(|v| v["ctr_ip"].as_str().unwrap()).collect();
    assert_eq!(ips, vec![t.ctrs[c0].ip.to_string()], "after removal: registered veths {veths}");
    let status = t.ctl.json(&["status"]);
    let gone = &t.ctrs[c1].veth;
    let attached: Vec<&str> =
        status["attachments"].as_array().unwrap().iter().map(|a| a["target"].as_str().unwrap()).collect();
    assert!(!attached.contains(&gone.as_str()), "after removal: {gone} is still listed as attached: {attached:?}");
}
