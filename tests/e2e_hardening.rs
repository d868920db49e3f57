//! End-to-end hardening: what a hostile container can and cannot do, ARP
//! on veths the datapath does not know, and upgrades in place under
//! sustained traffic. Real namespaces, veths and sockets, wired with the
//! real `datapathctl` binary (see `common::topo` for the topology).
//!
//! Every test has its own pin root, namespaces, interface names and
//! cgroup, all removed on drop, so the tests run in parallel and clean up
//! after a failure too.

mod common;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::packet::{self, Pkt, ETH_P_ARP, ETH_P_IP};
use common::privileged;
use common::topo::*;
use nix::libc;

/// Connects expected to succeed: one lost SYN (retransmitted after 1 s)
/// still fits.
const CONNECT: Duration = Duration::from_secs(3);
/// Connects expected to fail: long enough for the SYN to be retransmitted
/// once (after 1 s).
const DOOMED_CONNECT: Duration = Duration::from_millis(1500);
/// How long to wait for a packet that must not arrive.
const QUIET: Duration = Duration::from_millis(500);

/// An address outside the host: where containers think they connect to.
const OUTSIDE_TCP: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 44), 4444));
const OUTSIDE_DNS: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 53), 53));

const BROADCAST: [u8; 6] = [0xff; 6];
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;

/// Runs a shell command in a container's network namespace only, as a
/// process of the container would (nsenter joins nothing else); returns
/// (success, stderr).
fn in_container(ns: &str, cmd: &str) -> (bool, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["sh", "-c", cmd])
        .output()
        .unwrap_or_else(|e| panic!("running nsenter for `{cmd}`: {e}"));
    (out.status.success(), String::from_utf8_lossy(&out.stderr).trim().to_string())
}

/// A filter of ours as `tc -j filter show` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Filter {
    pref: u64,
    handle: String,
    prog: String,
    id: u64,
}

/// The BPF filters on one direction ("ingress"/"egress") of an interface.
#[track_caller]
fn tc_filters(ns: &str, dev: &str, dir: &str) -> Vec<Filter> {
    let out = Command::new("tc")
        .args(["-n", ns, "-j", "filter", "show", "dev", dev, dir])
        .output()
        .unwrap_or_else(|e| panic!("running tc filter show: {e}"));
    assert!(
        out.status.success(),
        "`tc -n {ns} filter show dev {dev} {dir}` failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Vec::new();
    }
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("tc printed no JSON ({e}): {text}"));
    v.as_array()
        .unwrap_or_else(|| panic!("tc filter show: not an array: {v}"))
        .iter()
        .filter_map(|f| {
            let o = f.get("options")?;
            Some(Filter {
                pref: f["pref"].as_u64().unwrap_or(0),
                handle: o["handle"].as_str().unwrap_or("").to_string(),
                prog: o["prog"]["name"].as_str().unwrap_or("").to_string(),
                id: o["prog"]["id"].as_u64().unwrap_or(0),
            })
        })
        .collect()
}

/// Every filter the datapath placed: ext NIC ingress and, per host veth,
/// ingress and egress, as "<dev> <dir>" -> filters.
fn attached_filters(t: &Topo) -> BTreeMap<String, Vec<Filter>> {
    let mut all = BTreeMap::new();
    all.insert(format!("{} ingress", t.ext), tc_filters(&t.host, &t.ext, "ingress"));
    for c in &t.ctrs {
        for dir in ["ingress", "egress"] {
            all.insert(format!("{} {dir}", c.veth), tc_filters(&t.host, &c.veth, dir));
        }
    }
    all
}

/// Asserts that a host veth carries exactly arp, snat and tproxy_ingress
/// (in that order) on ingress and tproxy_egress on egress, all with the
/// datapath's handle, and that they are the programs now pinned.
#[track_caller]
fn assert_host_filters(what: &str, t: &Topo, veth: &str, progs: &BTreeMap<String, u64>) {
    for (dir, want) in [("ingress", &["arp", "snat", "tproxy_ingress"][..]), ("egress", &["tproxy_egress"][..])] {
        let got = tc_filters(&t.host, veth, dir);
        let names: Vec<&str> = got.iter().map(|f| f.prog.as_str()).collect();
        assert_eq!(names, want, "{what}: `tc filter show dev {veth} {dir}` in the host shows {got:?}");
        for f in &got {
            assert_eq!(f.handle, "0xd47a", "{what}: {veth} {dir}: filter {f:?} has another handle");
            assert_eq!(
                Some(&f.id),
                progs.get(&f.prog),
                "{what}: {veth} {dir}: filter {f:?} is not the pinned program {progs:?}"
            );
        }
    }
}

/// Program name -> id, from `status --json`.
fn pinned_programs(t: &Topo) -> BTreeMap<String, u64> {
    let s = t.ctl.json(&["status"]);
    s["programs"]
        .as_array()
        .expect("status programs")
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["id"].as_u64().unwrap()))
        .collect()
}

// ---------------------------------------------------------------------------
// Raw frames

/// A raw AF_PACKET socket on one interface of a namespace: sends whole
/// frames, collects the ones that arrive.
struct Frames {
    fd: OwnedFd,
}

impl Frames {
    fn open(ns: &str, dev: &str, ethertype: u16) -> Self {
        let dev = dev.to_string();
        within(ns, move || {
            let ifindex = datapath::net::netif::index_of(&dev).unwrap_or_else(|e| panic!("{dev}: {e:#}"));
            let proto = ethertype.to_be();
            // SAFETY: plain socket(2); the result is checked before use.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto)) };
            assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
            // SAFETY: fd is fresh and owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex as i32;
            // SAFETY: sll is a valid sockaddr_ll of the size given.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "binding an AF_PACKET socket to {dev}: {}", io::Error::last_os_error());
            Self { fd }
        })
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: frame outlives the call; its length is given.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, frame.len() as isize, "sending a raw frame: {}", io::Error::last_os_error());
    }

    /// The frames that arrived (not the ones sent) and are queued now.
    fn drain(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let mut buf = vec![0u8; 2048];
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf, from and len are live and of the sizes given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                return out;
            }
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                buf.truncate(n as usize);
                out.push(buf);
            }
        }
    }

    /// Collects arriving frames until one satisfies `done` or `timeout`
    /// passes.
    fn collect(&self, timeout: Duration, done: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let new = self.drain();
            let finished = new.iter().any(|f| done(f));
            seen.extend(new);
            if finished || Instant::now() >= deadline {
                return seen;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// An ARP message as it came off the wire.
#[derive(Debug, PartialEq, Eq)]
struct Arp {
    eth_src: [u8; 6],
    op: u16,
    sha: [u8; 6],
    spa: Ipv4Addr,
    tha: [u8; 6],
    tpa: Ipv4Addr,
}

fn parse_arp(f: &[u8]) -> Option<Arp> {
    if f.len() < 42 || u16::from_be_bytes([f[12], f[13]]) != ETH_P_ARP {
        return None;
    }
    let a = &f[14..];
    let mac = |at: usize| -> [u8; 6] { a[at..at + 6].try_into().unwrap() };
    let ip = |at: usize| Ipv4Addr::new(a[at], a[at + 1], a[at + 2], a[at + 3]);
    Some(Arp {
        eth_src: f[6..12].try_into().unwrap(),
        op: u16::from_be_bytes([a[6], a[7]]),
        sha: mac(8),
        spa: ip(14),
        tha: mac(18),
        tpa: ip(24),
    })
}

/// ARP requests a container's eth0 sends itself, and the replies to them.
struct ArpProbe {
    sock: Frames,
    mac: [u8; 6],
}

impl ArpProbe {
    fn open(ctr: &Ctr) -> Self {
        Self { sock: Frames::open(&ctr.ns, "eth0", ETH_P_ARP), mac: ctr.mac }
    }

    /// Broadcasts "who has `tip`? tell `sip`" and returns every ARP reply
    /// about `tip` that comes back within QUIET (sooner, once one does).
    fn ask(&self, sip: Ipv4Addr, tip: Ipv4Addr) -> Vec<Arp> {
        self.sock.drain();
        self.sock.send(&packet::arp(ARPOP_REQUEST, self.mac, sip, [0; 6], tip, BROADCAST));
        let is_answer = |f: &[u8]| parse_arp(f).is_some_and(|a| a.op == ARPOP_REPLY && a.spa == tip);
        self.sock.collect(QUIET, is_answer).iter().filter(|f| is_answer(f)).filter_map(|f| parse_arp(f)).collect()
    }
}

/// Sends a complete IPv4 packet (header included, source as given) from
/// namespace `ns` through a raw IP socket: the kernel routes it by its
/// destination and leaves the source alone.
fn send_raw_ipv4(ns: &str, ip_packet: &[u8]) {
    let dst = Ipv4Addr::new(ip_packet[16], ip_packet[17], ip_packet[18], ip_packet[19]);
    within(ns, || {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw IP socket: {}", io::Error::last_os_error());
        // SAFETY: fd is fresh and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.octets()) },
            sin_zero: [0; 8],
        };
        // SAFETY: the packet and the address outlive the call; sizes given.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                ip_packet.as_ptr().cast(),
                ip_packet.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(n, ip_packet.len() as isize, "sending a raw IPv4 packet to {dst}: {}", io::Error::last_os_error());
    });
}

/// A UDP/IPv4 packet (no Ethernet header) with complete checksums.
fn udp_packet(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let mut p = Pkt::udp(src, dst);
    p.payload = payload.to_vec();
    p.build()[14..].to_vec()
}

/// One TCP connection from a container to `orig`, expected to land at the
/// proxy's `listener` with SO_ORIGINAL_DST = `orig`, and to carry a
/// request and an answer both ways.
#[track_caller]
fn proxied_roundtrip(what: &str, ctr: &Ctr, listener: &TcpListener, orig: SocketAddr) {
    let mut client = tcp_connect(&ctr.ns, orig, CONNECT).unwrap_or_else(|e| panic!("{what}: connect failed: {e}"));
    client.write_all(b"request").unwrap();
    let (mut srv, peer) =
        accept(listener, IO_TIMEOUT).unwrap_or_else(|e| panic!("{what}: nothing at the proxy's {PROXY_TCP}: {e}"));
    let local = client.local_addr().unwrap();
    assert_eq!(peer, local, "{what}: the proxy's peer is {peer}, expected the container's {local}");
    let at = srv.local_addr().unwrap();
    assert_eq!(at, sa(ctr.gw, PROXY_TCP), "{what}: arrived at {at}, expected the proxy on the host veth");
    let od = original_dst(&srv).unwrap_or_else(|e| panic!("{what}: getsockopt(SO_ORIGINAL_DST) failed: {e}"));
    assert_eq!(SocketAddr::V4(od), orig, "{what}: SO_ORIGINAL_DST returned {od}");
    let mut got = [0u8; 7];
    srv.read_exact(&mut got).unwrap_or_else(|e| panic!("{what}: the proxy got no request: {e}"));
    assert_eq!(&got, b"request", "{what}: the proxy received other bytes");
    srv.write_all(b"answer").unwrap();
    drop(srv);
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap_or_else(|e| panic!("{what}: the container got no answer: {e}"));
    assert_eq!(got, b"answer", "{what}: the container received other bytes");
    assert_eq!(client.peer_addr().unwrap(), orig, "{what}: the container's socket is connected elsewhere");
}

// ---------------------------------------------------------------------------

/// 1. A container is root in its own network namespace (CAP_NET_ADMIN
///    there) and tears down everything it can see: every qdisc and filter
///    on its eth0 and lo, its routes and its neighbour entries, and sets
///    them up its own way. The datapath sits on the host side, so it
///    still proxies the container's connections (with SO_ORIGINAL_DST),
///    still drops and counts spoofed sources, and all its filters are
///    still in place.
#[test]
fn container_with_cap_net_admin_cannot_escape() {
    if !privileged("container_with_cap_net_admin_cannot_escape") {
        return;
    }
    let mut t = Topo::new();
    let c = t.add_container(true);
    t.publish(30001, c, "udp", CTR_PORT);
    t.proxy_cgroup();
    let mut fds = t.proxy_sockets(&[(Kind::Tcp, PROXY_TCP), (Kind::Udp, PROXY_DNS)]).into_iter();
    let proxy = TcpListener::from(fds.next().unwrap());
    let dns_proxy = UdpSocket::from(fds.next().unwrap());
    dns_proxy.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // With forwarding on, anything that got past the host veth towards the
    // player would be routed out of the external NIC and seen there.
    let out = Command::new("ip").args(["netns", "exec", &t.host, "sysctl", "-qw", "net.ipv4.ip_forward=1"]).output();
    assert!(matches!(out, Ok(ref o) if o.status.success()), "enabling forwarding in the host namespace: {out:?}");
    let player_sink = udp_bind(&t.player, any(5000));
    let player_wire = Frames::open(&t.player, &format!("pl{}", t.id), ETH_P_IP);
    let ctr = &t.ctrs[c];
    let progs = pinned_programs(&t);
    assert_host_filters("before the container's attack", &t, &ctr.veth, &progs);
    let filters_before = attached_filters(&t);

    // The container really has CAP_NET_ADMIN in its namespace: it can add
    // and remove a qdisc of its own.
    for cmd in ["tc qdisc add dev eth0 clsact", "tc qdisc del dev eth0 clsact"] {
        let (ok, err) = in_container(&ctr.ns, cmd);
        assert!(ok, "in the container, `{cmd}` failed ({err}): it lacks CAP_NET_ADMIN, so the test proves nothing");
    }
    // Everything it can see goes; errors for what is absent are expected.
    let mut attack = Vec::new();
    for dev in ["eth0", "lo"] {
        for what in ["qdisc del dev DEV clsact", "qdisc del dev DEV ingress", "qdisc del dev DEV root"] {
            attack.push(format!("tc {}", what.replace("DEV", dev)));
        }
        for dir in ["ingress", "egress"] {
            attack.push(format!("tc filter del dev {dev} {dir}"));
        }
        attack.push(format!("tc filter del dev {dev}"));
    }
    let mut absent = 0;
    for cmd in &attack {
        absent += usize::from(!in_container(&ctr.ns, cmd).0);
    }
    eprintln!("container attack: {} tc deletions, {absent} found nothing to remove", attack.len());
    // Routes and neighbours its own way: the link bounced, every route and
    // neighbour entry gone, then everything on-link (no gateway), so it
    // ARPs for each destination itself, and a static entry of its own.
    for cmd in [
        "ip link set eth0 down",
        "ip link set eth0 up",
        "ip neigh flush all",
        "ip route flush table main",
        "ip route flush cache",
        "ip route add default dev eth0",
        "ip neigh add 192.0.2.99 lladdr 02:00:5e:00:53:99 dev eth0 nud permanent",
    ] {
        let (ok, err) = in_container(&ctr.ns, cmd);
        assert!(ok, "in the container, `{cmd}` failed: {err}");
    }
    let (_, left) = in_container(&ctr.ns, "tc qdisc show dev eth0 | grep -v noqueue >&2; tc filter show dev eth0 >&2");
    assert!(left.is_empty(), "the container still sees qdiscs or filters of its own on eth0: {left}");
    let routes = ip_json(&format!("-n {} route show table main", ctr.ns));
    assert_eq!(
        routes.as_array().map(Vec::len),
        Some(1),
        "the container's routes are not what it set (only `default dev eth0`): {routes}"
    );
    wait_up(&ctr.ns, "eth0");
    wait_up(&t.host, &ctr.veth);

    // Its connections still land at the proxy, which still learns where
    // they were meant to go.
    let stats0 = t.ctl.stats();
    proxied_roundtrip(&format!("after the attack, container -> {OUTSIDE_TCP}/tcp"), ctr, &proxy, OUTSIDE_TCP);
    let mac = neighbour(&ctr.ns, Ipv4Addr::new(192, 0, 2, 44));
    let want = format_mac(&ctr.host_mac);
    assert_eq!(
        mac.as_deref(),
        Some(want.as_str()),
        "after the attack the container resolves 192.0.2.44 on-link to {mac:?}, expected the host veth's MAC {want}"
    );
    // Its DNS still goes to the DNS proxy, from its real address.
    let client = udp_bind(&ctr.ns, any(0));
    client.send_to(b"real query", OUTSIDE_DNS).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = dns_proxy
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("after the attack, query from {}: nothing at the DNS proxy: {e}", ctr.ip));
    assert_eq!((&buf[..n], from.ip()), (&b"real query"[..], ctr.ip.into()), "DNS query arrived altered");
    // Its published port still answers the outside, from the host's
    // address: the player's socket and wire see what gets out. (A reply
    // needs the player's datagram first: that records the flow.)
    let server = udp_bind(&ctr.ns, any(CTR_PORT));
    player_sink.send_to(b"published request", sa(EXT_IP, 30001)).unwrap();
    let (n, from) = server
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("after the attack, the published port got no request from the player: {e}"));
    assert_eq!((&buf[..n], from), (&b"published request"[..], sa(PLAYER_IP, 5000)), "the player's request arrived altered");
    server.send_to(b"published reply", sa(PLAYER_IP, 5000)).unwrap();
    let (n, from) = player_sink
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("after the attack, reply from the published port: nothing at the player: {e}"));
    assert_eq!(
        (&buf[..n], from),
        (&b"published reply"[..], sa(EXT_IP, 30001)),
        "the published port's reply reached the player altered"
    );
    thread::sleep(Duration::from_millis(50));
    player_wire.drain();
    let stats1 = t.ctl.stats();
    let what = "container traffic after the attack";
    assert_moved(what, &stats0, &stats1, "arp/replied", 1);
    assert_moved(what, &stats0, &stats1, "tproxy_ingress/tcp", 1);
    assert_moved(what, &stats0, &stats1, "tproxy_ingress/dns", 1);
    assert_moved(what, &stats0, &stats1, "getsockopt/found", 1);
    assert_moved(what, &stats0, &stats1, "snat/redirect", 1);

    // Spoofed sources: a second address of its own on eth0, used by bound
    // sockets, and hand-made packets claiming the host veth's address, the
    // host's external address and the player's.
    let spoofed = Ipv4Addr::new(10, 99, c as u8, 9);
    ip(&format!("-n {} addr add {spoofed}/32 dev eth0", ctr.ns));
    let liar = udp_bind(&ctr.ns, sa(spoofed, 0));
    liar.send_to(b"spoofed query", OUTSIDE_DNS).unwrap();
    liar.send_to(b"spoofed to player", sa(PLAYER_IP, 5000)).unwrap();
    drop(server);
    let published_liar = udp_bind(&ctr.ns, sa(spoofed, CTR_PORT));
    published_liar.send_to(b"spoofed published reply", sa(PLAYER_IP, 5000)).unwrap();
    let forged = [
        udp_packet((ctr.gw, 40000), (Ipv4Addr::new(192, 0, 2, 53), 53), b"as the host veth"),
        udp_packet((EXT_IP, 30001), (PLAYER_IP, 5000), b"as the host"),
        udp_packet((PLAYER_IP, 40001), (Ipv4Addr::new(192, 0, 2, 53), 53), b"as the player"),
    ];
    for p in &forged {
        send_raw_ipv4(&ctr.ns, p);
    }
    let tcp = tcp_connect_from(&ctr.ns, sa(spoofed, 0), OUTSIDE_TCP, DOOMED_CONNECT);
    assert!(tcp.is_err(), "a TCP connection from the spoofed {spoofed} to {OUTSIDE_TCP} was established");
    let sent = 3 + forged.len() as u64 + 1;

    // Whatever was not dropped is delivered well within QUIET; after it,
    // look at what each receiver has.
    thread::sleep(QUIET);
    let got = queued(&dns_proxy);
    assert!(got.is_empty(), "spoofed queries reached the DNS proxy: {got:?}");
    let got = queued(&player_sink);
    assert!(got.is_empty(), "spoofed datagrams reached the player: {got:?}");
    let wire: Vec<_> = player_wire.drain().into_iter().filter_map(|f| packet::parse(&f).ok()).collect();
    assert!(wire.is_empty(), "IPv4 reached the player's interface during the spoofing: {wire:?}");
    assert!(
        !wait_readable(proxy.as_raw_fd(), Duration::ZERO).unwrap(),
        "a connection from the spoofed {spoofed} is waiting at the TCP proxy"
    );
    let stats2 = t.ctl.stats();
    let what = "spoofed sources after the attack";
    assert_moved(what, &stats1, &stats2, "snat/spoofed", sent);
    for name in ["snat/redirect", "tproxy_ingress/dns", "tproxy_ingress/tcp", "tproxy_ingress/udp_dropped"] {
        assert_moved_by(what, &stats1, &stats2, name, 0);
    }

    // Every filter of the datapath is where it was, with the same program.
    assert_host_filters("after the container's attack", &t, &ctr.veth, &progs);
    let filters_after = attached_filters(&t);
    assert_eq!(filters_after, filters_before, "the datapath's filters changed while the container attacked");
}

/// 2. ARP is answered on registered veths only: a container behind a host
///    veth that is attached but not registered (`map veth add`) gets no
///    answer from the datapath and none of its IPv4 gets anywhere; and the
///    datapath never answers a request for a container's own address.
#[test]
fn arp_only_on_registered_veths() {
    if !privileged("arp_only_on_registered_veths") {
        return;
    }
    let mut t = Topo::new();
    let reg = t.add_container(true);
    let unreg = t.add_unregistered_container(true);
    let proxy = tcp_listen(&t.host, PROXY_TCP);
    let dns_proxy = udp_bind(&t.host, any(PROXY_DNS));
    let (r, u) = (&t.ctrs[reg], &t.ctrs[unreg]);
    let veths = t.ctl.json(&["map", "veth", "list"]);
    let registered: Vec<&str> = veths.as_array().unwrap().iter().filter_map(|v| v["ctr_ip"].as_str()).collect();
    assert_eq!(registered, vec![r.ip.to_string()], "registered veths: {veths}");
    let attached = t.ctl.json(&["status"]);
    let targets: Vec<&str> =
        attached["attachments"].as_array().unwrap().iter().filter_map(|a| a["target"].as_str()).collect();
    assert!(
        targets.contains(&r.veth.as_str()) && targets.contains(&u.veth.as_str()),
        "both host veths should be attached: {targets:?}"
    );
    let outside = Ipv4Addr::new(192, 0, 2, 44);
    let (rp, up) = (ArpProbe::open(r), ArpProbe::open(u));

    // Nothing but these requests is ARP on the veths now, so the counters
    // move by exactly what they cause.
    let before = t.ctl.stats();
    let answers = rp.ask(r.ip, outside);
    let want = Arp { eth_src: r.host_mac, op: ARPOP_REPLY, sha: r.host_mac, spa: outside, tha: r.mac, tpa: r.ip };
    assert_eq!(
        answers,
        vec![want],
        "registered container asking for {outside}: expected one answer with the host veth's MAC"
    );
    let after = t.ctl.stats();
    assert_moved_by("registered veth, request for another address", &before, &after, "arp/replied", 1);

    let what = "unregistered veth, request for an outside address";
    let before = t.ctl.stats();
    let answers = up.ask(u.ip, outside);
    assert!(answers.is_empty(), "{what}: the container got answers {answers:?}, expected none");
    let after = t.ctl.stats();
    assert_moved_by(what, &before, &after, "arp/unregistered", 1);
    assert_moved_by(what, &before, &after, "arp/replied", 0);
    // Its gateway is the host veth's own address: the host's kernel may
    // answer for itself, but the datapath does not.
    let what = "unregistered veth, request for its gateway";
    let before = t.ctl.stats();
    let answers = up.ask(u.ip, u.gw);
    let after = t.ctl.stats();
    assert_moved_by(what, &before, &after, "arp/unregistered", 1);
    assert_moved_by(what, &before, &after, "arp/replied", 0);
    let said: Vec<String> = answers.iter().map(|a| format!("{} is-at {}", a.spa, format_mac(&a.sha))).collect();
    eprintln!("{what}: the host's kernel answered for its own address: {said:?}");

    // Requests for the container's own address: a duplicate-address probe
    // (sender 0.0.0.0, as `arping -D` sends), a gratuitous request (sender
    // == target) and a request from another sender address. All go to the
    // kernel untouched; none is answered with the host veth's MAC.
    let other = Ipv4Addr::new(10, 99, reg as u8, 9);
    for (how, sip) in
        [("duplicate-address probe", Ipv4Addr::UNSPECIFIED), ("gratuitous", r.ip), ("from another sender", other)]
    {
        let what = format!("registered veth, {how} for the container's own {}", r.ip);
        let before = t.ctl.stats();
        let answers = rp.ask(sip, r.ip);
        assert!(
            answers.iter().all(|a| a.sha != r.host_mac && a.eth_src != r.host_mac),
            "{what}: answered with the host veth's MAC: {answers:?}"
        );
        assert!(answers.is_empty(), "{what}: answered: {answers:?}");
        let after = t.ctl.stats();
        assert_moved_by(&what, &before, &after, "arp/passed", 1);
        assert_moved_by(&what, &before, &after, "arp/replied", 0);
    }

    // IPv4 from the unregistered veth is dropped and counted, including
    // connections straight to the host veth's own address, which the
    // host's kernel would otherwise accept.
    let what = "IPv4 from the unregistered veth";
    let before = t.ctl.stats();
    let targets = [OUTSIDE_TCP, sa(u.gw, PROXY_TCP)];
    let results: Vec<_> = thread::scope(|s| {
        let hs: Vec<_> = targets.iter().map(|&to| s.spawn(move || tcp_connect(&u.ns, to, DOOMED_CONNECT))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (to, r) in targets.iter().zip(&results) {
        assert!(r.is_err(), "{what}: a TCP connection to {to} was established");
    }
    let client = udp_bind(&u.ns, any(0));
    client.send_to(b"unregistered query", OUTSIDE_DNS).unwrap();
    client.send_to(b"unregistered direct", sa(u.gw, PROXY_DNS)).unwrap();
    thread::sleep(QUIET);
    let got = queued(&dns_proxy);
    assert!(got.is_empty(), "{what}: datagrams reached the host's DNS socket: {got:?}");
    assert!(!wait_readable(proxy.as_raw_fd(), Duration::ZERO).unwrap(), "{what}: a connection waits at the proxy");
    let after = t.ctl.stats();
    assert_moved(what, &before, &after, "snat/unregistered", targets.len() as u64 + 2);
    for name in ["tproxy_ingress/tcp", "tproxy_ingress/dns", "arp/replied", "snat/redirect"] {
        assert_moved_by(what, &before, &after, name, 0);
    }

    // The control: the registered container's traffic does get there.
    let before = t.ctl.stats();
    let client = udp_bind(&r.ns, any(0));
    client.send_to(b"registered query", OUTSIDE_DNS).unwrap();
    dns_proxy.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) =
        dns_proxy.recv_from(&mut buf).unwrap_or_else(|e| panic!("registered container: nothing at the DNS proxy: {e}"));
    assert_eq!((&buf[..n], from.ip()), (&b"registered query"[..], r.ip.into()), "registered query arrived altered");
    let c = tcp_connect(&r.ns, OUTSIDE_TCP, CONNECT)
        .unwrap_or_else(|e| panic!("registered container -> {OUTSIDE_TCP}: connect failed: {e}"));
    let (_srv, peer) =
        accept(&proxy, IO_TIMEOUT).unwrap_or_else(|e| panic!("registered container: nothing at the proxy: {e}"));
    assert_eq!(peer, c.local_addr().unwrap(), "registered container: the proxy saw {peer}");
    let after = t.ctl.stats();
    assert_moved("registered container", &before, &after, "tproxy_ingress/dns", 1);
    assert_moved("registered container", &before, &after, "tproxy_ingress/tcp", 1);
    assert_moved_by("registered container", &before, &after, "snat/unregistered", 0);
}

/// What the request/response client measured.
struct RrReport {
    count: u64,
    max_gap: Duration,
    /// When the longest gap ended, from the start of the loop.
    max_gap_at: Duration,
}

/// 3. `datapathctl load`, 100 times back to back, while a player streams
///    over one long-lived connection and plays 1-byte request/response on
///    another, to a second container: no reset or error, every byte
///    arrives intact, the request/response loop never stalls for 100 ms,
///    the maps are unchanged and the attached programs are new.
#[test]
fn hundred_loads_under_load() {
    if !privileged("hundred_loads_under_load") {
        return;
    }
    const LOADS: usize = 100;
    // 64 KiB about every millisecond, some 50 MB/s.
    const PACE: Duration = Duration::from_millis(1);
    // Traffic before the first load and after the last.
    const MARGIN: Duration = Duration::from_millis(500);
    const MAX_GAP: Duration = Duration::from_millis(100);

    let mut t = Topo::new();
    let c0 = t.add_container(true);
    let c1 = t.add_container(true);
    t.publish(30001, c0, "tcp", CTR_PORT);
    t.publish(30002, c1, "tcp", CTR_PORT);
    let stream_listener = tcp_listen(&t.ctrs[c0].ns, CTR_PORT);
    let rr_listener = tcp_listen(&t.ctrs[c1].ns, CTR_PORT);
    let dnat_before = t.ctl.json(&["map", "dnat", "list"]);
    let veth_before = t.ctl.json(&["map", "veth", "list"]);
    let progs_before = pinned_programs(&t);
    let filters_before = attached_filters(&t);

    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let responses = Arc::new(AtomicU64::new(0));

    // Container 0: counts and checksums everything until EOF, then answers
    // with (length, checksum).
    let stream_server = stream_sink(stream_listener, "container 0", received.clone());
    // Container 1: answers every byte with the same byte until EOF.
    let rr_server = thread::spawn(move || -> Result<u64, String> {
        let (mut s, _) = accept(&rr_listener, IO_TIMEOUT).map_err(|e| format!("container 1: no connection: {e}"))?;
        s.set_nodelay(true).map_err(|e| format!("container 1: TCP_NODELAY: {e}"))?;
        let mut n = 0u64;
        let mut b = [0u8; 1];
        loop {
            match s.read(&mut b) {
                Ok(0) => return Ok(n),
                Ok(_) => s.write_all(&b).map_err(|e| format!("container 1: answer {n} failed: {e}"))?,
                Err(e) => return Err(format!("container 1: read failed after {n} requests: {e}")),
            }
            n += 1;
        }
    });

    // The player: a paced pseudo-random stream on one connection...
    let s = t.player_connect(30001, CONNECT).unwrap_or_else(|e| panic!("player -> {EXT_IP}:30001: {e}"));
    let streamer = {
        let stop = stop.clone();
        stream_source(s, "player stream", PACE, move |_| !stop.load(Ordering::Relaxed))
    };
    // ...and 1-byte request/response as fast as it goes on the other.
    let mut rr = t.player_connect(30002, CONNECT).unwrap_or_else(|e| panic!("player -> {EXT_IP}:30002: {e}"));
    rr.set_nodelay(true).unwrap();
    let rr_client = {
        let (stop, responses) = (stop.clone(), responses.clone());
        thread::spawn(move || -> Result<RrReport, String> {
            let started = Instant::now();
            let mut last = started;
            let (mut count, mut max_gap, mut max_gap_at) = (0u64, Duration::ZERO, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let b = [count as u8];
                rr.write_all(&b).map_err(|e| format!("player request {count} failed: {e}"))?;
                let mut a = [0u8; 1];
                rr.read_exact(&mut a).map_err(|e| format!("player: no response to request {count}: {e}"))?;
                if a != b {
                    return Err(format!("player: response {count} is {:#04x}, expected {:#04x}", a[0], b[0]));
                }
                let now = Instant::now();
                if now - last > max_gap {
                    (max_gap, max_gap_at) = (now - last, now - started);
                }
                last = now;
                count += 1;
                responses.store(count, Ordering::Relaxed);
            }
            rr.shutdown(Shutdown::Write).map_err(|e| format!("player rr: shutdown: {e}"))?;
            let mut rest = Vec::new();
            rr.read_to_end(&mut rest).map_err(|e| format!("player rr: closing: {e}"))?;
            if !rest.is_empty() {
                return Err(format!("player rr: {} unrequested bytes at the end", rest.len()));
            }
            Ok(RrReport { count, max_gap, max_gap_at })
        })
    };

    // Both connections carry traffic before the first load.
    let started = Instant::now();
    thread::sleep(MARGIN);
    let (bytes0, rr0) = (received.load(Ordering::Relaxed), responses.load(Ordering::Relaxed));
    if bytes0 == 0 || rr0 == 0 {
        stop.store(true, Ordering::Relaxed);
        let errors = [join(streamer).err(), join(rr_client).err(), join(stream_server).err(), join(rr_server).err()];
        panic!("no traffic after {MARGIN:?}: {bytes0} bytes streamed, {rr0} responses; errors: {errors:?}");
    }

    let loads_started = Instant::now();
    let mut load_times = Vec::with_capacity(LOADS);
    for i in 0..LOADS {
        let t0 = Instant::now();
        if let Err(e) = t.ctl.try_run(&["load"]) {
            stop.store(true, Ordering::Relaxed);
            panic!("load {} of {LOADS}: {e}", i + 1);
        }
        load_times.push(t0.elapsed());
    }
    let loads_took = loads_started.elapsed();
    let loads_window = (loads_started - started, loads_started - started + loads_took);
    let (bytes1, rr1) = (received.load(Ordering::Relaxed), responses.load(Ordering::Relaxed));
    thread::sleep(MARGIN);
    stop.store(true, Ordering::Relaxed);

    let stream = join(streamer);
    let rr = join(rr_client);
    let stream_view = join(stream_server);
    let rr_served = join(rr_server);
    let (sent, sent_hash, got, got_hash) = stream.unwrap_or_else(|e| panic!("{e}"));
    let rr = rr.unwrap_or_else(|e| panic!("{e}"));
    let stream_view = stream_view.unwrap_or_else(|e| panic!("{e}"));
    let rr_served = rr_served.unwrap_or_else(|e| panic!("{e}"));

    let slowest = load_times.iter().max().copied().unwrap_or_default();
    println!(
        "{LOADS} loads in {:.3} s (slowest {:.1} ms); streamed {} bytes ({} during the loads); \
         {} request/response rounds ({} during the loads); longest gap between responses {:.2} ms \
         (ended {:.3} s in; loads ran {:.3}..{:.3} s)",
        loads_took.as_secs_f64(),
        slowest.as_secs_f64() * 1e3,
        sent,
        bytes1 - bytes0,
        rr.count,
        rr1 - rr0,
        rr.max_gap.as_secs_f64() * 1e3,
        rr.max_gap_at.as_secs_f64(),
        loads_window.0.as_secs_f64(),
        loads_window.1.as_secs_f64(),
    );

    assert_eq!(stream_view, (got, got_hash), "container 0's summary was altered on the way back");
    assert_eq!(got, sent, "container 0 received {got} bytes, the player sent {sent}");
    assert_eq!(
        got_hash, sent_hash,
        "checksum of the {sent} bytes differs: sent {sent_hash:#x}, received {got_hash:#x}"
    );
    assert_eq!(rr_served, rr.count, "container 1 answered {rr_served} requests, the player got {} answers", rr.count);
    assert!(bytes1 > bytes0, "no stream data arrived during the {LOADS} loads");
    assert!(rr1 > rr0, "no request/response round completed during the {LOADS} loads");
    assert!(
        rr.max_gap < MAX_GAP,
        "the request/response loop stalled for {:?} (ended {:?} after its start; the loads ran {:?}..{:?}), \
         expected every gap under {MAX_GAP:?}",
        rr.max_gap,
        rr.max_gap_at,
        loads_window.0,
        loads_window.1
    );

    let dnat_after = t.ctl.json(&["map", "dnat", "list"]);
    assert_eq!(dnat_after, dnat_before, "`map dnat list --json` changed across {LOADS} loads");
    let veth_after = t.ctl.json(&["map", "veth", "list"]);
    assert_eq!(veth_after, veth_before, "`map veth list --json` changed across {LOADS} loads");
    let progs_after = pinned_programs(&t);
    for (name, id) in &progs_before {
        assert_ne!(
            progs_after.get(name),
            Some(id),
            "program {name}: pinned id {id} before and after {LOADS} loads, expected a new program"
        );
    }
    let filters_after = attached_filters(&t);
    for (place, before) in &filters_before {
        let after = &filters_after[place];
        let strip = |fs: &[Filter]| fs.iter().map(|f| (f.pref, f.handle.clone(), f.prog.clone())).collect::<Vec<_>>();
        assert_eq!(strip(after), strip(before), "{place}: the filters changed places across the loads");
        for f in after {
            assert_eq!(
                Some(&f.id),
                progs_after.get(&f.prog),
                "{place}: attached {f:?} is not the program pinned after the loads ({progs_after:?})"
            );
            assert!(
                before.iter().all(|b| b.id != f.id),
                "{place}: {} still runs program id {} after {LOADS} loads",
                f.prog,
                f.id
            );
        }
    }
    assert_eq!(filters_after.values().map(Vec::len).sum::<usize>(), 9, "attached filters: {filters_after:?}");
}

/// 4. A container opening a TCP connection from its published port (the
///    source address and port of its replies) to an outside address is
///    still proxied: a SYN opens a connection, so it is never a reply and
///    never leaves by the external NIC.
#[test]
fn outbound_connection_from_a_published_port_is_proxied() {
    if !privileged("outbound_connection_from_a_published_port_is_proxied") {
        return;
    }
    let mut t = Topo::new();
    let c = t.add_container(true);
    t.publish(30001, c, "tcp", CTR_PORT);
    t.proxy_cgroup();
    let proxy = TcpListener::from(t.proxy_sockets(&[(Kind::Tcp, PROXY_TCP)]).remove(0));
    let outside = tcp_listen(&t.player, 7777);
    outside.set_nonblocking(true).unwrap();
    let ctr = &t.ctrs[c];
    let orig = sa(PLAYER_IP, 7777);
    let before = t.ctl.stats();

    let mut client = tcp_connect_from(&ctr.ns, sa(Ipv4Addr::UNSPECIFIED, CTR_PORT), orig, CONNECT)
        .unwrap_or_else(|e| panic!("connect from the published port: {e}"));
    let (mut srv, peer) = accept(&proxy, IO_TIMEOUT).unwrap_or_else(|e| panic!("nothing at the proxy's {PROXY_TCP}: {e}"));
    assert_eq!(peer, sa(ctr.ip, CTR_PORT), "the proxy's peer is {peer}");
    let od = original_dst(&srv).unwrap_or_else(|e| panic!("getsockopt(SO_ORIGINAL_DST): {e}"));
    assert_eq!(SocketAddr::V4(od), orig, "SO_ORIGINAL_DST returned {od}");
    client.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    srv.read_exact(&mut b).unwrap();
    match outside.accept() {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        other => panic!("the connection also reached the outside listener: {other:?}"),
    }
    let after = t.ctl.stats();
    assert_moved("syn from the published port", &before, &after, "snat/handed_on", 1);
    assert_moved("syn from the published port", &before, &after, "tproxy_ingress/tcp", 1);
    assert_eq!(delta(&before, &after, "snat/redirect"), 0, "nothing from the container was sent out as a reply");
}
