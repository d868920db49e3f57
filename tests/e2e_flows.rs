//! End to end, published flows: what only works because replies are
//! recognised by their recorded flow rather than by their source port.
//! Real namespaces, veth pairs and sockets, wired with the real
//! `datapathctl` binary (see `common::topo`).
//!
//! - the host reaches a container by the container's own address, on the
//!   port the container publishes (TCP, and UDP from a connected socket);
//! - a proxy container reaches a backend container's address through the
//!   transparent proxy, which dials it from the host;
//! - a player behind a link with a smaller MTU downloads megabytes: the
//!   router's "fragmentation needed" is translated for the container;
//! - one server published on a second external address and on the default
//!   one answers each player from the address that player used;
//! - connections a container opens from its published port (TCP, and a DNS
//!   query from its published UDP port) go to the proxy, while players'
//!   connections to that port keep working.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use common::privileged;
use common::topo::*;

/// Connects expected to succeed: one lost SYN (retransmitted after 1 s)
/// still fits.
const CONNECT: Duration = Duration::from_secs(3);

fn v4(a: SocketAddr) -> Ipv4Addr {
    match a.ip() {
        std::net::IpAddr::V4(ip) => ip,
        ip => panic!("IPv4 only, got {ip}"),
    }
}

/// 1. The host connects to a container by the container's own address and
///    port, which the container also publishes: the container's answers
///    (SYN-ACK, data, datagrams from the published port) belong to the
///    host's connection, not to a player's, and reach the host.
#[test]
fn host_reaches_a_container_by_its_own_address() {
    if !privileged("host_reaches_a_container_by_its_own_address") {
        return;
    }
    let mut t = Topo::new();
    let c = t.add_container(true);
    t.publish(30001, c, "tcp", CTR_PORT);
    t.publish(30001, c, "udp", CTR_PORT);
    let ctr = &t.ctrs[c];
    let tcp = EchoServer::tcp(tcp_listen(&ctr.ns, CTR_PORT));
    let udp = EchoServer::udp(udp_bind(&ctr.ns, any(CTR_PORT)));
    let before = t.ctl.stats();

    let what = format!("host -> {}:{CTR_PORT}/tcp", ctr.ip);
    let mut s = tcp_connect(&t.host, ctr.addr(CTR_PORT), CONNECT).unwrap_or_else(|e| panic!("{what}: connect failed: {e}"));
    for i in 0..3 {
        let msg = format!("host says {i}");
        let echo = roundtrip(&mut s, msg.as_bytes()).unwrap_or_else(|e| panic!("{what}: no echo: {e}"));
        assert_eq!(echo, msg.as_bytes(), "{what}: echo differs");
    }
    let seen = tcp.next_peer(&what);
    assert_eq!(seen, s.local_addr().unwrap(), "{what}: the container saw the connection from {seen}");
    assert_eq!(v4(seen), ctr.gw, "{what}: the host connects from its veth's address");

    let what = format!("host -> {}:{CTR_PORT}/udp, connected socket", ctr.ip);
    let u = within(&t.host, || {
        let u = UdpSocket::bind(any(0)).unwrap();
        u.connect(ctr.addr(CTR_PORT)).unwrap();
        u.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        u
    });
    let mut buf = [0u8; 64];
    for i in 0..3 {
        let msg = format!("datagram {i}");
        u.send(msg.as_bytes()).unwrap();
        let n = u.recv(&mut buf).unwrap_or_else(|e| panic!("{what}: no answer to datagram {i}: {e}"));
        assert_eq!(&buf[..n], msg.as_bytes(), "{what}: answer differs");
    }
    let seen = udp.next_peer(&what);
    assert_eq!(seen, u.local_addr().unwrap(), "{what}: the container saw the datagram from {seen}");

    let after = t.ctl.stats();
    // SYN-ACK, three echoes (and ACKs), three UDP answers at least.
    assert_moved(&what, &before, &after, "tproxy_ingress/host_reply", 7);
    assert_moved(&what, &before, &after, "tproxy_egress/host_udp", 3);
    assert_still(&what, &before, &after, "snat/redirect");
    assert_still(&what, &before, &after, "tproxy_ingress/no_flow_dropped");
    assert_still(&what, &before, &after, "tproxy_ingress/udp_dropped");

    // A player still reaches the same published port, alongside.
    let mut p = t.player_connect(30001, CONNECT).unwrap_or_else(|e| panic!("player -> 30001: {e}"));
    assert_eq!(roundtrip(&mut p, b"player").unwrap(), b"player");
    assert_eq!(roundtrip(&mut s, b"host again").unwrap(), b"host again", "the host's connection broke");
}

/// 2. A proxy container (think Velocity or BungeeCord) connects to a
///    backend container's own address and published port. Its connection
///    goes through the transparent proxy, which learns the backend's
///    address with SO_ORIGINAL_DST and dials it from the host; the
///    backend's answers to the host reach the proxy.
#[test]
fn proxy_container_reaches_a_backend_through_the_transparent_proxy() {
    if !privileged("proxy_container_reaches_a_backend_through_the_transparent_proxy") {
        return;
    }
    let mut t = Topo::new();
    let front = t.add_container(true);
    let back = t.add_container(true);
    t.publish(30001, front, "tcp", CTR_PORT);
    t.publish(30002, back, "tcp", CTR_PORT);
    t.proxy_cgroup();
    let proxy = TcpListener::from(t.proxy_sockets(&[(Kind::Tcp, PROXY_TCP)]).remove(0));
    let backend = EchoServer::tcp(tcp_listen(&t.ctrs[back].ns, CTR_PORT));
    let target = t.ctrs[back].addr(CTR_PORT);
    let host = t.host.clone();
    let before = t.ctl.stats();

    // The test's transparent proxy: one connection, relayed both ways.
    let relay = thread::spawn(move || {
        let (inbound, peer) = accept(&proxy, IO_TIMEOUT).map_err(|e| format!("nothing at the proxy: {e}"))?;
        let orig = original_dst(&inbound).map_err(|e| format!("SO_ORIGINAL_DST: {e}"))?;
        let outbound = tcp_connect(&host, SocketAddr::V4(orig), CONNECT).map_err(|e| format!("dialing {orig}: {e}"))?;
        let up = pump(inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
        let down = pump(outbound, inbound);
        let up = join(up).map_err(|e| format!("relaying up: {e}"))?;
        let down = join(down).map_err(|e| format!("relaying down: {e}"))?;
        Ok::<_, String>((peer, orig, up, down))
    });

    let what = format!("proxy container -> backend {target}");
    let mut s = tcp_connect(&t.ctrs[front].ns, target, CONNECT).unwrap_or_else(|e| panic!("{what}: connect failed: {e}"));
    let mut sent: Vec<u8> = Vec::new();
    for i in 0..50 {
        let msg = format!("login packet {i} relayed to the backend;");
        let echo = roundtrip(&mut s, msg.as_bytes()).unwrap_or_else(|e| panic!("{what}: no echo of packet {i}: {e}"));
        assert_eq!(echo, msg.as_bytes(), "{what}: echo {i} differs");
        sent.extend(msg.as_bytes());
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap_or_else(|e| panic!("{what}: closing: {e}"));
    assert!(rest.is_empty(), "{what}: {} bytes after the last echo", rest.len());
    let (peer, orig, up, down) = join(relay).unwrap_or_else(|e| panic!("{what}: the proxy failed: {e}"));
    assert_eq!(peer, SocketAddr::from((t.ctrs[front].ip, s.local_addr().unwrap().port())), "{what}: the proxy's peer");
    assert_eq!(SocketAddr::V4(orig), target, "{what}: SO_ORIGINAL_DST");
    assert_eq!((up, down), (sent.len() as u64, sent.len() as u64), "{what}: bytes relayed");
    let seen = backend.next_peer(&what);
    assert_eq!(v4(seen), t.ctrs[back].gw, "{what}: the backend saw {seen}, expected the host (its veth's address)");

    let after = t.ctl.stats();
    assert_moved(&what, &before, &after, "tproxy_ingress/tcp", 1);
    assert_moved(&what, &before, &after, "getsockopt/found", 1);
    assert_moved(&what, &before, &after, "tproxy_ingress/host_reply", 1);
    assert_still(&what, &before, &after, "snat/redirect");
    assert_still(&what, &before, &after, "tproxy_ingress/no_flow_dropped");
}

/// 3. A player behind a router whose link towards the player has MTU 1400
///    (and whose own interface says 1500, so it asks for 1460-byte
///    segments) downloads 4 MiB from a container. The router answers the
///    container's 1500-byte packets with "fragmentation needed"; dnat
///    translates the error for the container, whose TCP lowers its path
///    MTU, and the download completes.
#[test]
fn player_behind_a_smaller_link_gets_a_large_download() {
    if !privileged("player_behind_a_smaller_link_gets_a_large_download") {
        return;
    }
    const BYTES: u64 = 4 << 20;
    let mut t = Topo::new();
    let c = t.add_container(true);
    t.publish(30001, c, "tcp", CTR_PORT);
    let rp = t.add_routed_player(1400);
    let listener = tcp_listen(&t.ctrs[c].ns, CTR_PORT);
    let before = t.ctl.stats();

    // The container sends; the player receives and checks.
    let server = thread::spawn(move || {
        let (s, peer) = accept(&listener, IO_TIMEOUT).map_err(|e| format!("no player: {e}"))?;
        let h = stream_source(s, "container", Duration::ZERO, move |sent| sent < BYTES);
        join(h).map(|r| (peer, r))
    });
    let what = format!("player {} -> {EXT_IP}:30001 through a 1400-byte link", rp.ip);
    let started = Instant::now();
    let mut s = tcp_connect(&rp.player, sa(EXT_IP, 30001), CONNECT).unwrap_or_else(|e| panic!("{what}: connect failed: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (mut len, mut h) = (0u64, FNV_INIT);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = s.read(&mut buf).unwrap_or_else(|e| panic!("{what}: the download stalled after {len} of {BYTES} bytes: {e}"));
        if n == 0 {
            break;
        }
        h = fnv(h, &buf[..n]);
        len += n as u64;
    }
    s.write_all(&[len.to_be_bytes(), h.to_be_bytes()].concat()).unwrap();
    let (peer, result) = join(server).unwrap_or_else(|e| panic!("{what}: {e}"));
    let (sent, sent_hash, got, got_hash) = result;
    eprintln!("{what}: {got} bytes in {:.1?}", started.elapsed());
    assert_eq!(v4(peer), rp.ip, "{what}: the container saw the player as {peer}");
    assert_eq!((got, got_hash), (sent, sent_hash), "{what}: the player received other bytes than were sent");
    assert!(sent >= BYTES);

    let after = t.ctl.stats();
    assert_moved(&what, &before, &after, "dnat/icmp_translated", 1);
    // The replies left by the interface the player's packets came in on.
    let ext = within(&t.host, || datapath::net::netif::index_of(&rp.ext).unwrap());
    let pub_flows = datapath::maps::published_flows(&datapath::kernel::pins::PinRoot::new(&t.ctl.root)).unwrap();
    let f = pub_flows.iter().find(|f| f.player_ip == rp.ip).expect("the player's flow is recorded");
    assert_eq!((f.ext_addr, f.host_port, f.ext_ifindex), (EXT_IP, 30001, ext), "{what}: the recorded flow");
}

/// 4. One server published on port 25565 of a second external address and
///    on the default address: players on each reach it, see it answer from
///    the address they used, and it sees their real addresses. TCP and
///    UDP, both open at once.
#[test]
fn one_server_on_two_external_addresses_answers_from_the_one_used() {
    if !privileged("one_server_on_two_external_addresses_answers_from_the_one_used") {
        return;
    }
    const EXT2: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 3);
    let mut t = Topo::new();
    let c = t.add_container(true);
    t.add_external(EXT2);
    for proto in ["tcp", "udp"] {
        t.publish_on(None, CTR_PORT, c, proto, CTR_PORT);
        t.publish_on(Some(EXT2), CTR_PORT, c, proto, CTR_PORT);
    }
    let listed = t.ctl.json(&["map", "dnat", "list"]);
    let exts: Vec<&str> = listed.as_array().unwrap().iter().map(|m| m["ext_addr"].as_str().unwrap()).collect();
    assert_eq!(exts, ["default", "default", "10.98.0.3", "10.98.0.3"], "{listed}");
    let tcp = EchoServer::tcp(tcp_listen(&t.ctrs[c].ns, CTR_PORT));
    let udp = EchoServer::udp(udp_bind(&t.ctrs[c].ns, any(CTR_PORT)));
    let before = t.ctl.stats();

    let mut conns = Vec::new();
    for addr in [EXT_IP, EXT2] {
        let what = format!("player -> {addr}:{CTR_PORT}/tcp");
        let mut s = tcp_connect(&t.player, sa(addr, CTR_PORT), CONNECT).unwrap_or_else(|e| panic!("{what}: connect failed: {e}"));
        assert_eq!(s.peer_addr().unwrap(), sa(addr, CTR_PORT), "{what}");
        assert_eq!(roundtrip(&mut s, what.as_bytes()).unwrap_or_else(|e| panic!("{what}: no echo: {e}")), what.as_bytes());
        let seen = tcp.next_peer(&what);
        assert_eq!(seen, s.local_addr().unwrap(), "{what}: the server saw {seen}, not the player's address");
        conns.push(s);
    }
    // Both connections are open at once and each still gets its echoes.
    for (i, s) in conns.iter_mut().enumerate() {
        assert_eq!(roundtrip(s, format!("again {i}").as_bytes()).unwrap(), format!("again {i}").as_bytes());
    }

    let u = udp_bind(&t.player, any(0));
    let mut buf = [0u8; 64];
    for addr in [EXT_IP, EXT2, EXT_IP] {
        let what = format!("player -> {addr}:{CTR_PORT}/udp");
        u.send_to(what.as_bytes(), sa(addr, CTR_PORT)).unwrap();
        let (n, from) = u.recv_from(&mut buf).unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        assert_eq!(&buf[..n], what.as_bytes(), "{what}: answer differs");
        assert_eq!(from, sa(addr, CTR_PORT), "{what}: the answer came from {from}, not the address the player used");
        let seen = udp.next_peer(&what);
        assert_eq!(seen, sa(PLAYER_IP, u.local_addr().unwrap().port()), "{what}: the server saw {seen}");
    }
    let after = t.ctl.stats();
    assert_moved("two addresses", &before, &after, "dnat/redirect", 6);
    assert_moved("two addresses", &before, &after, "snat/redirect", 6);
    assert_still("two addresses", &before, &after, "tproxy_ingress/udp_dropped");
}

/// 5. Connections a container opens from its published ports are its own,
///    not replies: a TCP connection to a player's address from a published
///    TCP port (its server listens on another one), and a DNS query from
///    its published UDP port, both go to the proxy, while a player's
///    connection to the server, open at the same time, keeps working.
#[test]
fn a_containers_own_connections_from_its_published_port_go_to_the_proxy() {
    if !privileged("a_containers_own_connections_from_its_published_port_go_to_the_proxy") {
        return;
    }
    let mut t = Topo::new();
    let c = t.add_container(true);
    t.publish(30001, c, "tcp", CTR_PORT);
    t.publish(30001, c, "udp", CTR_PORT);
    t.publish(30002, c, "tcp", CTR_PORT + 1);
    t.proxy_cgroup();
    let mut fds = t.proxy_sockets(&[(Kind::Tcp, PROXY_TCP), (Kind::Udp, PROXY_DNS)]).into_iter();
    let proxy = TcpListener::from(fds.next().unwrap());
    let dns_proxy = UdpSocket::from(fds.next().unwrap());
    dns_proxy.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let outside = tcp_listen(&t.player, 7777);
    outside.set_nonblocking(true).unwrap();
    let server = EchoServer::tcp(tcp_listen(&t.ctrs[c].ns, CTR_PORT));
    let ctr = &t.ctrs[c];

    // A player is connected to the published port.
    let mut player = t.player_connect(30001, CONNECT).unwrap_or_else(|e| panic!("player -> 30001: {e}"));
    assert_eq!(roundtrip(&mut player, b"hello").unwrap(), b"hello");
    let _ = server.next_peer("player");
    let before = t.ctl.stats();

    // The container's own TCP connection from its published 25566 to the
    // player's address: to the proxy, not to the player.
    let orig = sa(PLAYER_IP, 7777);
    let mut own = tcp_connect_from(&ctr.ns, any(CTR_PORT + 1), orig, CONNECT)
        .unwrap_or_else(|e| panic!("connect from the published port: {e}"));
    let (mut at_proxy, peer) = accept(&proxy, IO_TIMEOUT).unwrap_or_else(|e| panic!("nothing at the proxy's {PROXY_TCP}: {e}"));
    assert_eq!(peer, ctr.addr(CTR_PORT + 1), "the proxy's peer is {peer}");
    assert_eq!(SocketAddr::V4(original_dst(&at_proxy).unwrap()), orig, "SO_ORIGINAL_DST");
    own.write_all(b"own").unwrap();
    let mut b = [0u8; 3];
    at_proxy.read_exact(&mut b).unwrap();
    at_proxy.write_all(b"ack").unwrap();
    own.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ack", "the container's own connection got other bytes");
    match outside.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the container's own connection reached the outside listener: {other:?}"),
    }

    // A DNS query from the published UDP port: to the DNS proxy.
    let dns = sa(Ipv4Addr::new(192, 0, 2, 53), 53);
    let q = udp_bind(&ctr.ns, any(CTR_PORT));
    q.send_to(b"dns query", dns).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = dns_proxy.recv_from(&mut buf).unwrap_or_else(|e| panic!("nothing at the DNS proxy: {e}"));
    assert_eq!((&buf[..n], from), (&b"dns query"[..], ctr.addr(CTR_PORT)), "the DNS proxy got another query");
    dns_proxy.send_to(b"dns answer", from).unwrap();
    q.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let (n, from) = q.recv_from(&mut buf).unwrap_or_else(|e| panic!("no DNS answer: {e}"));
    assert_eq!((&buf[..n], from), (&b"dns answer"[..], dns), "the DNS answer");

    // And the player's connection is untouched.
    assert_eq!(roundtrip(&mut player, b"still here").unwrap(), b"still here");
    let after = t.ctl.stats();
    let what = "own connections from the published port";
    assert_moved(what, &before, &after, "tproxy_ingress/tcp", 1);
    assert_moved(what, &before, &after, "tproxy_ingress/dns", 1);
    assert_moved(what, &before, &after, "snat/handed_on", 2);
    assert_moved(what, &before, &after, "snat/redirect", 1);
}
