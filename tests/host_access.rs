//! End to end, host access: processes on the host reach published ports by
//! the host's external address and by 127.0.0.1, and see the address they
//! asked for, as with Docker's `-p`.
//!
//! The cgroup sock_addr programs cannot run under BPF_PROG_TEST_RUN, so
//! every test here uses real sockets: made by a process in a cgroup of the
//! test's own (where `attach host-access` puts the programs; never the
//! root), in the topology's host namespace or another one, and then
//! connected or sent from by the test (see `common::topo::host_sockets`).
//!
//! - TCP connect, UDP sendto/recvfrom and connected UDP to ext:30001 and
//!   127.0.0.1:30001 reach the container; getpeername and recvfrom show
//!   what was asked, and `sock_rev4` holds it under the socket's cookie;
//! - sockets of other namespaces in the same cgroup (a player's, a
//!   container's) and host sockets outside the cgroup are not rewritten;
//! - unpublished ports, protocols and addresses are not rewritten;
//! - `load` replaces the programs in place (connections keep what they
//!   show), `detach` and `unload` remove them; without a path the cgroup v2
//!   root is used (shown in a cgroup namespace whose root is the test's
//!   cgroup); a lost pin root keeps host access working, and `load` and
//!   `unload` take it back.

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::privileged;
use common::topo::*;
use datapath::kernel::pins::PinRoot;
use datapath::maps;

/// Connects expected to succeed: one lost SYN (retransmitted after 1 s)
/// still fits.
const CONNECT: Duration = Duration::from_secs(3);
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The four programs `attach host-access` puts on a cgroup.
const PROGS: [&str; 4] = HOST_ACCESS_PROGS;

fn v4(a: SocketAddr) -> Ipv4Addr {
    match a.ip() {
        std::net::IpAddr::V4(ip) => ip,
        ip => panic!("IPv4 only, got {ip}"),
    }
}

fn udp_from(fd: std::os::fd::OwnedFd) -> UdpSocket {
    let u = UdpSocket::from(fd);
    u.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    u
}

/// Nothing more reaches `server` within a moment.
#[track_caller]
fn assert_no_peer(server: &EchoServer, what: &str) {
    if let Ok(p) = server.peers.recv_timeout(Duration::from_millis(300)) {
        panic!("{what}: the container's server was reached, from {p}");
    }
}

fn cgroup_progs(cg: &Path) -> Vec<(String, u64)> {
    cgroup_programs(cg, &PROGS)
}

fn pinned_progs(t: &Topo) -> Vec<(String, u64)> {
    t.ctl.pinned_programs(&PROGS)
}

/// The host access records `status --json` lists: their targets.
fn host_access_records(t: &Topo) -> Vec<String> {
    let st = t.ctl.json(&["status"]);
    st["attachments"]
        .as_array()
        .expect("status lists attachments")
        .iter()
        .filter(|a| a["kind"] == "host-access")
        .map(|a| a["target"].as_str().unwrap_or("").to_string())
        .collect()
}

/// 1. Host processes (sockets of the host namespace, in the cgroup with
///    host access) reach a container by the external address and by
///    127.0.0.1 and its published port, TCP and UDP, and are shown that
///    address — by getpeername, by recvfrom — never the container's.
#[test]
fn host_processes_reach_a_published_port_and_see_what_they_asked_for() {
    if !privileged("host_processes_reach_a_published_port_and_see_what_they_asked_for") {
        return;
    }
    let mut t = Topo::new();
    let c = t.add_container(true);
    t.publish(30001, c, "tcp", CTR_PORT);
    t.publish(30001, c, "udp", CTR_PORT);
    t.host_access_cgroup();
    let ctr = &t.ctrs[c];
    let tcp = EchoServer::tcp(tcp_listen(&ctr.ns, CTR_PORT));
    let udp = EchoServer::udp(udp_bind(&ctr.ns, any(CTR_PORT)));
    let pins = PinRoot::new(&t.ctl.root);
    let before = t.ctl.stats();

    for asked in [sa(EXT_IP, 30001), sa(LOOPBACK, 30001)] {
        let what = format!("host -> {asked}/tcp");
        let fd = t.host_sockets(&[Kind::Tcp]).remove(0);
        let mut s = connect_fd(fd, asked, CONNECT).unwrap_or_else(|e| panic!("{what}: connect failed: {e}"));
        assert_eq!(s.peer_addr().unwrap(), asked, "{what}: getpeername");
        for i in 0..3 {
            let msg = format!("{what} {i}");
            let echo = roundtrip(&mut s, msg.as_bytes()).unwrap_or_else(|e| panic!("{what}: no echo: {e}"));
            assert_eq!(echo, msg.as_bytes(), "{what}: echo differs");
        }
        let seen = tcp.next_peer(&what);
        assert_eq!(seen, s.local_addr().unwrap(), "{what}: the container saw the connection from {seen}");
        assert_eq!(v4(seen), ctr.gw, "{what}: the host connects from its veth's address");
        let cookie = socket_cookie(&s);
        let entry = maps::host_sockets(&pins).unwrap().into_iter().find(|e| e.cookie == cookie);
        let entry = entry.unwrap_or_else(|| panic!("{what}: no sock_rev4 entry for the socket's cookie {cookie}"));
        assert_eq!(
            (entry.ctr_ip, entry.ctr_port, entry.asked_ip, entry.asked_port),
            (ctr.ip, CTR_PORT, v4(asked), asked.port()),
            "{what}: sock_rev4 {entry:?}"
        );

        let what = format!("host -> {asked}/udp, unconnected");
        let u = udp_from(t.host_sockets(&[Kind::Udp]).remove(0));
        let mut buf = [0u8; 128];
        for i in 0..3 {
            let msg = format!("{what} {i}");
            u.send_to(msg.as_bytes(), asked).unwrap_or_else(|e| panic!("{what}: sendto: {e}"));
            let (n, from) = u.recv_from(&mut buf).unwrap_or_else(|e| panic!("{what}: no answer to {i}: {e}"));
            assert_eq!(&buf[..n], msg.as_bytes(), "{what}: answer differs");
            assert_eq!(from, asked, "{what}: recvfrom says the answer came from {from}");
        }
        for _ in 0..3 {
            let seen = udp.next_peer(&what);
            assert_eq!(seen, sa(ctr.gw, u.local_addr().unwrap().port()), "{what}: the container saw {seen}");
        }

        let what = format!("host -> {asked}/udp, connected");
        let u = udp_from(t.host_sockets(&[Kind::Udp]).remove(0));
        u.connect(asked).unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        assert_eq!(u.peer_addr().unwrap(), asked, "{what}: getpeername");
        u.send(what.as_bytes()).unwrap();
        let (n, from) = u.recv_from(&mut buf).unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        assert_eq!((&buf[..n], from), (what.as_bytes(), asked), "{what}: the answer and where it came from");
        let seen = udp.next_peer(&what);
        assert_eq!(seen, sa(ctr.gw, u.local_addr().unwrap().port()), "{what}: the container saw {seen}");
    }

    // Exactly the calls above: two TCP and two UDP connects, six
    // unconnected datagrams, eight receives with an address, four
    // getpeernames; nothing else of the sockets in the cgroup.
    let after = t.ctl.stats();
    let what = "host access";
    assert_moved_by(what, &before, &after, "connect4/rewritten", 4);
    assert_moved_by(what, &before, &after, "sendmsg4/rewritten", 6);
    assert_moved_by(what, &before, &after, "recvmsg4/restored", 8);
    assert_moved_by(what, &before, &after, "getpeername4/restored", 4);
    for quiet in [
        "connect4/unpublished",
        "connect4/other_netns",
        "connect4/rev_error",
        "sendmsg4/unpublished",
        "sendmsg4/other_netns",
        "sendmsg4/rev_error",
        "recvmsg4/untouched",
        "getpeername4/untouched",
    ] {
        assert_still(what, &before, &after, quiet);
    }
    // The container's answers went to the host's sockets (tproxy rule 3),
    // never to a player: per address a SYN-ACK and three echoes, four
    // datagrams.
    assert_moved(what, &before, &after, "tproxy_ingress/host_reply", 2 * (1 + 3) + 2 * 4);
    assert_moved(what, &before, &after, "tproxy_egress/host_udp", 8);
    assert_still(what, &before, &after, "snat/redirect");
    assert_still(what, &before, &after, "dnat/redirect");
    assert_still(what, &before, &after, "tproxy_ingress/no_flow_dropped");
    assert_still(what, &before, &after, "tproxy_ingress/udp_dropped");
}

/// 2. Only sockets of the host's namespace are rewritten: a player's and a
///    container's sockets in the same cgroup keep their 127.0.0.1 (their
///    own loopback) and the player's connection to the external address
///    reaches the container as a player's, from its own address. A host
///    socket outside the cgroup is not rewritten either.
#[test]
fn only_sockets_of_the_hosts_namespace_are_rewritten() {
    if !privileged("only_sockets_of_the_hosts_namespace_are_rewritten") {
        return;
    }
    let mut t = Topo::new();
    let c = t.add_container(true);
    t.publish(30001, c, "tcp", CTR_PORT);
    t.publish(30001, c, "udp", CTR_PORT);
    let cg = t.host_access_cgroup();
    let ctr_ns = t.ctrs[c].ns.clone();
    let tcp = EchoServer::tcp(tcp_listen(&ctr_ns, CTR_PORT));
    let udp = EchoServer::udp(udp_bind(&ctr_ns, any(CTR_PORT)));
    // Each namespace's own 127.0.0.1:30001.
    let player_lo = within(&t.player, || TcpListener::bind(sa(LOOPBACK, 30001)).unwrap());
    let player_lo_udp = udp_bind(&t.player, sa(LOOPBACK, 30001));
    let ctr_lo_udp = udp_bind(&ctr_ns, sa(LOOPBACK, 30001));
    let host_lo = within(&t.host, || TcpListener::bind(sa(LOOPBACK, 30001)).unwrap());
    let before = t.ctl.stats();

    // The player's sockets, made in the cgroup.
    let mut fds = client_sockets_in_cgroup(&t.player, &cg, &[Kind::Tcp, Kind::Tcp, Kind::Udp]).into_iter();
    let what = "player socket in the cgroup -> 127.0.0.1:30001/tcp";
    let mut s = connect_fd(fds.next().unwrap(), sa(LOOPBACK, 30001), CONNECT)
        .unwrap_or_else(|e| panic!("{what}: connect failed: {e}"));
    let (mut at_lo, peer) = accept(&player_lo, IO_TIMEOUT).unwrap_or_else(|e| panic!("{what}: not at the player's own listener: {e}"));
    assert_eq!(peer, s.local_addr().unwrap(), "{what}");
    assert_eq!(s.peer_addr().unwrap(), sa(LOOPBACK, 30001), "{what}: getpeername");
    std::io::Write::write_all(&mut s, b"x").unwrap();
    let mut b = [0u8; 1];
    at_lo.read_exact(&mut b).unwrap();

    let what = "player socket in the cgroup -> ext:30001/tcp";
    let mut s = connect_fd(fds.next().unwrap(), sa(EXT_IP, 30001), CONNECT)
        .unwrap_or_else(|e| panic!("{what}: connect failed: {e}"));
    assert_eq!(roundtrip(&mut s, b"player").unwrap_or_else(|e| panic!("{what}: {e}")), b"player");
    let seen = tcp.next_peer(what);
    assert_eq!(v4(seen), PLAYER_IP, "{what}: the container saw {seen}, not the player (it went as a player's, through dnat)");

    let what = "player socket in the cgroup -> 127.0.0.1:30001/udp";
    let u = udp_from(fds.next().unwrap());
    u.send_to(what.as_bytes(), sa(LOOPBACK, 30001)).unwrap();
    let mut buf = [0u8; 128];
    let (n, _) = player_lo_udp.recv_from(&mut buf).unwrap_or_else(|e| panic!("{what}: not at the player's own socket: {e}"));
    assert_eq!(&buf[..n], what.as_bytes(), "{what}");

    let what = "container socket in the cgroup -> 127.0.0.1:30001/udp";
    let u = udp_from(client_sockets_in_cgroup(&ctr_ns, &cg, &[Kind::Udp]).remove(0));
    u.send_to(what.as_bytes(), sa(LOOPBACK, 30001)).unwrap();
    let (n, _) = ctr_lo_udp.recv_from(&mut buf).unwrap_or_else(|e| panic!("{what}: not at the container's own socket: {e}"));
    assert_eq!(&buf[..n], what.as_bytes(), "{what}");
    if let Ok(p) = udp.peers.recv_timeout(Duration::from_millis(300)) {
        panic!("{what}: the container's published server got a datagram from {p}");
    }

    let what = "host socket outside the cgroup -> 127.0.0.1:30001/tcp";
    let s = tcp_connect(&t.host, sa(LOOPBACK, 30001), CONNECT).unwrap_or_else(|e| panic!("{what}: connect failed: {e}"));
    let (_, peer) = accept(&host_lo, IO_TIMEOUT).unwrap_or_else(|e| panic!("{what}: not at the host's own listener: {e}"));
    assert_eq!(peer, s.local_addr().unwrap(), "{what}");
    assert_no_peer(&tcp, what);

    let after = t.ctl.stats();
    let what = "sockets of other namespaces";
    assert_moved_by(what, &before, &after, "connect4/other_netns", 2);
    assert_moved_by(what, &before, &after, "sendmsg4/other_netns", 2);
    assert_still(what, &before, &after, "connect4/rewritten");
    assert_still(what, &before, &after, "sendmsg4/rewritten");
    assert_still(what, &before, &after, "connect4/unpublished");
    // The player's connection went the players' way.
    assert_moved(what, &before, &after, "dnat/redirect", 1);
}

/// 3. What is not published is not rewritten: another port, the other
///    protocol of a published port, the container's own address, a host
///    address that is not external. The host's own services there answer.
#[test]
fn unpublished_destinations_are_left_alone() {
    if !privileged("unpublished_destinations_are_left_alone") {
        return;
    }
    let mut t = Topo::new();
    let c = t.add_container(true);
    t.publish(30001, c, "tcp", CTR_PORT);
    t.host_access_cgroup();
    let ctr = &t.ctrs[c];
    let tcp = EchoServer::tcp(tcp_listen(&ctr.ns, CTR_PORT));
    let host_30002 = tcp_listen(&t.host, 30002);
    let host_udp = udp_bind(&t.host, any(30001));
    let before = t.ctl.stats();

    for asked in [sa(EXT_IP, 30002), sa(LOOPBACK, 30002)] {
        let what = format!("host -> {asked}/tcp (unpublished port)");
        let s = connect_fd(t.host_sockets(&[Kind::Tcp]).remove(0), asked, CONNECT)
            .unwrap_or_else(|e| panic!("{what}: connect failed: {e}"));
        let (_, peer) = accept(&host_30002, IO_TIMEOUT).unwrap_or_else(|e| panic!("{what}: not at the host's listener: {e}"));
        assert_eq!(peer, s.local_addr().unwrap(), "{what}");
        assert_eq!(s.peer_addr().unwrap(), asked, "{what}: getpeername");
    }

    for asked in [sa(EXT_IP, 30001), sa(LOOPBACK, 30001)] {
        let what = format!("host -> {asked}/udp (published for TCP only)");
        let u = udp_from(t.host_sockets(&[Kind::Udp]).remove(0));
        u.send_to(what.as_bytes(), asked).unwrap();
        let mut buf = [0u8; 128];
        let (n, from) = host_udp.recv_from(&mut buf).unwrap_or_else(|e| panic!("{what}: not at the host's socket: {e}"));
        assert_eq!((&buf[..n], from.port()), (what.as_bytes(), u.local_addr().unwrap().port()), "{what}");
    }

    let what = format!("host -> {}:{CTR_PORT}/tcp (the container's own address)", ctr.ip);
    let mut s = connect_fd(t.host_sockets(&[Kind::Tcp]).remove(0), ctr.addr(CTR_PORT), CONNECT)
        .unwrap_or_else(|e| panic!("{what}: connect failed: {e}"));
    assert_eq!(roundtrip(&mut s, b"direct").unwrap_or_else(|e| panic!("{what}: {e}")), b"direct");
    assert_eq!(s.peer_addr().unwrap(), ctr.addr(CTR_PORT), "{what}: getpeername");
    assert_eq!(tcp.next_peer(&what), s.local_addr().unwrap(), "{what}");

    let what = format!("host -> {}:30001/tcp (a host address that is not external)", ctr.gw);
    let e = connect_fd(t.host_sockets(&[Kind::Tcp]).remove(0), sa(ctr.gw, 30001), CONNECT)
        .expect_err(&format!("{what}: connected, but nothing of the host listens there"));
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{what}: {e}");
    assert_no_peer(&tcp, &what);

    let after = t.ctl.stats();
    let what = "unpublished destinations";
    assert_moved_by(what, &before, &after, "connect4/unpublished", 4);
    assert_moved_by(what, &before, &after, "sendmsg4/unpublished", 2);
    assert_still(what, &before, &after, "connect4/rewritten");
    assert_still(what, &before, &after, "sendmsg4/rewritten");
    assert_still(what, &before, &after, "getpeername4/restored");
    assert_moved_by(what, &before, &after, "getpeername4/untouched", 3);
}

/// 4. `load` replaces the four programs on the cgroup in place (the same
///    four hooks, the new programs; an open connection keeps working and
///    keeps showing what it asked for); `attach` again changes nothing;
///    `detach` removes them and the host's own service on the port answers
///    again; `unload` removes them too.
#[test]
fn load_replaces_host_access_in_place_and_detach_and_unload_remove_it() {
    if !privileged("load_replaces_host_access_in_place_and_detach_and_unload_remove_it") {
        return;
    }
    let mut t = Topo::new();
    let c = t.add_container(true);
    t.publish(30001, c, "tcp", CTR_PORT);
    let cg = t.host_access_cgroup();
    let cgs = cg.to_str().unwrap().to_string();
    let tcp = EchoServer::tcp(tcp_listen(&t.ctrs[c].ns, CTR_PORT));
    let host_30001 = tcp_listen(&t.host, 30001);
    let asked = sa(EXT_IP, 30001);

    let first = cgroup_progs(&cg);
    assert_eq!(first, pinned_progs(&t), "attach host-access: the cgroup holds other programs than the pinned ones");
    assert_eq!(host_access_records(&t), vec![cgs.clone()], "status: the attachment is recorded");
    let host_cookie = within(&t.host, || {
        let s = UdpSocket::bind(any(0)).unwrap();
        let mut c = 0u64;
        let mut len = 8;
        // SAFETY: valid descriptor; c and len are live out pointers.
        let rc = unsafe {
            nix::libc::getsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                nix::libc::SOL_SOCKET,
                nix::libc::SO_NETNS_COOKIE,
                (&mut c as *mut u64).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "SO_NETNS_COOKIE");
        c
    });
    let cfg = maps::host_config(&PinRoot::new(&t.ctl.root)).unwrap();
    assert_eq!(cfg.netns_cookie, host_cookie, "attach host-access -n <host> records the host namespace's cookie");

    let mut open = connect_fd(t.host_sockets(&[Kind::Tcp]).remove(0), asked, CONNECT).expect("connect before load");
    assert_eq!(roundtrip(&mut open, b"before").unwrap(), b"before");
    tcp.next_peer("before load");

    t.ctl.run(&["load"]);
    let second = cgroup_progs(&cg);
    assert_eq!(second, pinned_progs(&t), "after load: the cgroup holds other programs than the pinned ones");
    for ((n1, id1), (n2, id2)) in first.iter().zip(&second) {
        assert!(n1 == n2 && id1 != id2, "load did not replace {n1} ({id1} -> {n2} {id2})");
    }
    assert_eq!(roundtrip(&mut open, b"after").unwrap_or_else(|e| panic!("the open connection broke on load: {e}")), b"after");
    assert_eq!(open.peer_addr().unwrap(), asked, "after load: getpeername of the open connection");
    let mut s = connect_fd(t.host_sockets(&[Kind::Tcp]).remove(0), asked, CONNECT).expect("connect after load");
    assert_eq!(roundtrip(&mut s, b"new").unwrap(), b"new");
    assert_eq!(s.peer_addr().unwrap(), asked, "after load: getpeername");
    tcp.next_peer("after load");

    t.ctl.run(&["-n", &t.host, "attach", "host-access", &cgs]);
    assert_eq!(cgroup_progs(&cg), second, "attach again changed the cgroup's programs");

    t.ctl.run(&["detach", "host-access", &cgs]);
    assert_eq!(cgroup_progs(&cg), vec![], "detach left programs on the cgroup");
    assert_eq!(host_access_records(&t), Vec::<String>::new(), "detach left the record");
    let s = connect_fd(t.host_sockets(&[Kind::Tcp]).remove(0), asked, CONNECT).expect("connect after detach");
    let (_, peer) = accept(&host_30001, IO_TIMEOUT).unwrap_or_else(|e| panic!("after detach: not at the host's own listener: {e}"));
    assert_eq!(peer, s.local_addr().unwrap(), "after detach");
    assert_no_peer(&tcp, "after detach");
    t.ctl.run(&["detach", "host-access", &cgs]);

    t.ctl.run(&["-n", &t.host, "attach", "host-access", &cgs]);
    assert_eq!(cgroup_progs(&cg).len(), 4, "attach after detach");
    t.ctl.run(&["unload"]);
    assert_eq!(cgroup_progs(&cg), vec![], "unload left programs on the cgroup");
}

/// 5. Without a path, `attach host-access` and `detach host-access` take
///    the cgroup v2 root as /proc/self/mountinfo shows it. Run inside a
///    cgroup namespace whose root is the test's cgroup, with cgroup2
///    mounted afresh, that root is the test's cgroup — and the host's real
///    root is never touched.
#[test]
fn without_a_path_the_cgroup_v2_root_is_used() {
    if !privileged("without_a_path_the_cgroup_v2_root_is_used") {
        return;
    }
    let mut t = Topo::new();
    let cg = t.own_cgroup();
    let mount = datapath::kernel::attach::cgroup2_root().expect("cgroup v2 mount");
    let real_root = cgroup_progs(&mount);
    // A shell in the test's cgroup makes the namespaces and runs the
    // command there; the cgroup is empty again when it exits.
    let in_cgroup_ns = |args: &str| {
        let script = format!(
            "echo $$ > {procs} && exec unshare --cgroup --mount --propagation private sh -c \
             'umount -l {m} && mount -t cgroup2 none {m} && exec {ctl} -n {host} {args}'",
            procs = cg.join("cgroup.procs").display(),
            m = mount.display(),
            ctl = DATAPATHCTL,
            host = t.host,
        );
        let out = Command::new("sh").arg("-c").arg(&script).env("DATAPATH_PIN_ROOT", &t.ctl.root).output().unwrap();
        assert!(
            out.status.success(),
            "`datapathctl {args}` in a cgroup namespace failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    in_cgroup_ns("attach host-access");
    assert_eq!(cgroup_progs(&cg), pinned_progs(&t), "attach host-access without a path: the test's cgroup (the root there)");
    assert_eq!(cgroup_progs(&mount), real_root, "the host's cgroup v2 root was changed");
    in_cgroup_ns("detach host-access");
    assert_eq!(cgroup_progs(&cg), vec![], "detach host-access without a path left programs");
    assert_eq!(cgroup_progs(&mount), real_root, "the host's cgroup v2 root was changed");
}

/// 6. The pin root lost (`rm -rf`) while host access is attached: host
///    processes still reach the container (the cgroup holds the programs,
///    their maps live on through them); `load` takes the programs back and
///    replaces them, with their record, and `unload` removes them.
#[test]
fn a_lost_pin_root_keeps_host_access_and_load_and_unload_take_it_back() {
    if !privileged("a_lost_pin_root_keeps_host_access_and_load_and_unload_take_it_back") {
        return;
    }
    let mut t = Topo::new();
    let c = t.add_container(true);
    t.publish(30001, c, "tcp", CTR_PORT);
    let cg = t.host_access_cgroup();
    let tcp = EchoServer::tcp(tcp_listen(&t.ctrs[c].ns, CTR_PORT));
    let asked = sa(LOOPBACK, 30001);
    let reach = |t: &Topo, what: &str| {
        let mut s = connect_fd(t.host_sockets(&[Kind::Tcp]).remove(0), asked, CONNECT)
            .unwrap_or_else(|e| panic!("{what}: connect failed: {e}"));
        assert_eq!(roundtrip(&mut s, what.as_bytes()).unwrap_or_else(|e| panic!("{what}: {e}")), what.as_bytes());
        assert_eq!(s.peer_addr().unwrap(), asked, "{what}: getpeername");
        tcp.next_peer(what);
    };
    let first = cgroup_progs(&cg);

    std::fs::remove_dir_all(&t.ctl.root).unwrap();
    reach(&t, "pin root removed");
    assert_eq!(cgroup_progs(&cg), first, "the cgroup's programs changed when the pin root went");

    t.ctl.run(&["load"]);
    let taken = cgroup_progs(&cg);
    assert_eq!(taken, pinned_progs(&t), "after load: the cgroup holds other programs than the pinned ones");
    assert!(first.iter().zip(&taken).all(|(a, b)| a.1 != b.1), "load did not replace {first:?}: {taken:?}");
    assert_eq!(host_access_records(&t), vec![cg.to_str().unwrap().to_string()], "load took the record back");
    reach(&t, "after load");

    t.ctl.run(&["unload"]);
    assert_eq!(cgroup_progs(&cg), vec![], "unload left programs on the cgroup");
}
