//! End to end over IPv6, in namespaces of the test's own: a player on an
//! external IPv6 address reaches a dual-stack container's server through
//! a published port and the server sees the player's own address; the
//! container resolves its gateway by neighbour discovery (answered by
//! `arp`); a connection the container opens goes to a proxy listening on
//! [::] in the host, which asks IP6T_SO_ORIGINAL_DST where it was going,
//! and its answers reach the container from that destination. And real
//! software over IPv6: a Minecraft player (npm minecraft-protocol) logging
//! in, dig asking dnsmasq for AAAA records through the DNS proxy, curl
//! fetching a page through mitmproxy in transparent mode, which asks
//! IP6T_SO_ORIGINAL_DST itself.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use common::realsw::*;
use common::topo::{self, Ctl, Kind};
use common::*;
use datapath::net::wiring::{self, Wiring};
use nix::libc;

const TIMEOUT: Duration = Duration::from_secs(5);

fn ext6() -> Ipv6Addr {
    "2001:db8::1".parse().unwrap()
}
fn player6() -> Ipv6Addr {
    "2001:db8::9".parse().unwrap()
}
fn ctr6() -> Ipv6Addr {
    "fd00::2".parse().unwrap()
}

/// A cgroup of the test's own, with getsockopt attached; detached and
/// removed on drop.
struct Cgroup<'a> {
    dir: PathBuf,
    ctl: &'a Ctl,
}

impl Drop for Cgroup<'_> {
    fn drop(&mut self) {
        let _ = self.ctl.try_run(&["detach", "getsockopt", self.dir.to_str().unwrap()]);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// IP6T_SO_ORIGINAL_DST of an accepted socket, as a proxy asks it.
fn original_dst6(s: &TcpStream) -> std::io::Result<SocketAddr> {
    // SAFETY: sockaddr_in6 is plain data; all-zero is valid.
    let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: valid descriptor; sin6 and len are live out pointers and len
    // holds sin6's size.
    let rc = unsafe { libc::getsockopt(s.as_raw_fd(), libc::SOL_IPV6, 80, (&mut sin6 as *mut libc::sockaddr_in6).cast(), &mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::sockaddr_in6>() || sin6.sin6_family != libc::AF_INET6 as libc::sa_family_t {
        return Err(std::io::Error::other(format!("IP6T_SO_ORIGINAL_DST returned length {len}, family {}", sin6.sin6_family)));
    }
    Ok(SocketAddr::from((Ipv6Addr::from(sin6.sin6_addr.s6_addr), u16::from_be(sin6.sin6_port))))
}

fn echo_once(s: &mut TcpStream) {
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).expect("reading the request");
    s.write_all(&buf[..n]).expect("answering");
}

fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).expect("reading the answer");
    got
}

/// The player, host and a dual-stack container, wired by the product's own
/// code (`net::wiring`: fe80::1 on the host veth, fd00::2 in the
/// container, default route via fe80::1), registered with both addresses
/// and attached; 2001:db8::1 the host's default external IPv6 address.
struct Env6 {
    // Dropped first: the namespaces, then the pin root.
    player: TestNs,
    host: TestNs,
    ctr: TestNs,
    id: String,
    hv: String,
    mac: String,
    ctl: Ctl,
}

impl Env6 {
    fn new() -> Self {
        let ctl = Ctl::new();
        ctl.run(&["load"]);
        let (player, host, ctr) = (TestNs::new(), TestNs::new(), TestNs::new());
        let id = unique("");
        let (ext, pl, hv) = (format!("x6{id}"), format!("p6{id}"), format!("h6{id}"));
        host.ip(&format!("link add {ext} type veth peer name {pl} netns {}", player.name));
        host.ip(&format!("-6 addr add {}/64 dev {ext} nodad", ext6()));
        player.ip(&format!("-6 addr add {}/64 dev {pl} nodad", player6()));
        host.ip(&format!("link set {ext} up"));
        player.ip(&format!("link set {pl} up"));
        topo::wait_up(&host.name, &ext);
        topo::wait_up(&player.name, &pl);
        let h = host.name.as_str();
        ctl.run(&["-n", h, "map", "external", "add", &ext6().to_string(), &ext, "--default"]);
        ctl.run(&["-n", h, "attach", "dnat", &ext]);
        let mut w = Wiring::new("c6", PathBuf::from("/run/netns").join(&ctr.name), Ipv4Addr::new(10, 99, 0, 2));
        w.host_ifname = hv.clone();
        w.ip6 = Some(ctr6());
        let wired = topo::within(h, || wiring::wire(&w)).unwrap_or_else(|e| panic!("wiring {hv}: {e}"));
        topo::wait_up(&ctr.name, "eth0");
        topo::wait_up(h, &hv);
        let mac = topo::format_mac(&wired.ctr.mac.expect("container MAC"));
        ctl.run(&["-n", h, "map", "veth", "add", &hv, "10.99.0.2", &ctr6().to_string()]);
        ctl.run(&["-n", h, "attach", "host", &hv]);
        Env6 { player, host, ctr, id, hv, mac, ctl }
    }

    /// Publishes the container's `to` on every default IPv6 address.
    fn publish(&self, port: u16, proto: &str, to: u16) {
        let (p, t) = (port.to_string(), to.to_string());
        let c6 = ctr6().to_string();
        self.ctl.run(&["-n", &self.host.name, "map", "dnat", "add", &p, &c6, &self.hv, &self.mac, "--proto", proto, "--to-port", &t]);
    }

    /// A cgroup of the test's own with getsockopt attached: the proxy's.
    fn proxy_cgroup(&self) -> Cgroup<'_> {
        let dir = datapath::kernel::attach::cgroup2_root().unwrap().join(format!("dpe6{}", self.id));
        std::fs::create_dir(&dir).unwrap();
        let cg = Cgroup { dir, ctl: &self.ctl };
        self.ctl.run(&["attach", "getsockopt", cg.dir.to_str().unwrap()]);
        cg
    }
}

type Stats = std::collections::BTreeMap<String, (u64, u64)>;

#[track_caller]
fn moved(what: &str, before: &Stats, after: &Stats, name: &str) -> (u64, u64) {
    let b = before.get(name).copied().unwrap_or_else(|| panic!("{what}: no counter {name}"));
    let a = after.get(name).copied().unwrap_or_else(|| panic!("{what}: no counter {name}"));
    (a.0 - b.0, a.1 - b.1)
}

#[test]
fn player_and_proxy_over_ipv6() {
    if !privileged("player_and_proxy_over_ipv6") {
        return;
    }
    let env = Env6::new();
    let (ctl, h, hv) = (&env.ctl, env.host.name.as_str(), env.hv.as_str());
    let v = ctl.json(&["-n", h, "map", "veth", "get", hv]);
    assert_eq!((v["ctr_ip6"].as_str(), v["host_ip6"].as_str()), (Some("fd00::2"), Some("fe80::1")), "{v}");
    env.publish(30001, "tcp", 25565);
    let (player, ctr) = (&env.player, &env.ctr);

    // 1. A player over IPv6: the server sees the player's own address.
    let before = ctl.stats();
    let server = topo::within(&ctr.name, || TcpListener::bind("[::]:25565")).expect("server listening");
    let to = SocketAddr::from((ext6(), 30001));
    let mut conn = topo::within(&player.name, || TcpStream::connect_timeout(&to, TIMEOUT)).expect("the player connects");
    let (mut accepted, peer) = topo::accept(&server, TIMEOUT).expect("the server accepts");
    assert_eq!(peer.ip(), IpAddr::V6(player6()), "the server sees the player's address");
    assert_eq!(peer.port(), conn.local_addr().unwrap().port(), "and its port");
    let t = std::thread::spawn(move || echo_once(&mut accepted));
    assert_eq!(roundtrip(&mut conn, b"hello over ipv6"), b"hello over ipv6");
    t.join().unwrap();
    let after = ctl.stats();
    topo::assert_moved("player over ipv6", &before, &after, "dnat/redirect", 2);
    topo::assert_moved("player over ipv6", &before, &after, "snat/redirect", 2);
    topo::assert_moved("the container resolved its gateway", &before, &after, "arp/neigh_advertised", 1);
    let m = ctl.json(&["map", "dnat", "get", "[::]:30001"]);
    assert_eq!(m["ctr_ip"].as_str(), Some("fd00::2"), "{m}");

    // 2. A connection the container opens goes to the proxy on [::]:9111,
    // which learns the original destination with IP6T_SO_ORIGINAL_DST.
    let cg = env.proxy_cgroup();
    let fd = topo::sockets_in_cgroup(h, &cg.dir, &[(Kind::TcpDual, 9111)]).pop().unwrap();
    let proxy = TcpListener::from(fd);
    let before = ctl.stats();
    let dest = SocketAddr::from(("2001:db8:77::80".parse::<Ipv6Addr>().unwrap(), 443));
    let client = std::thread::spawn({
        let ns = ctr.name.clone();
        move || {
            let mut s = topo::within(&ns, || TcpStream::connect_timeout(&dest, TIMEOUT)).expect("the container connects");
            assert_eq!(s.peer_addr().unwrap(), dest);
            roundtrip(&mut s, b"through the proxy")
        }
    });
    let (mut p, peer) = topo::accept(&proxy, TIMEOUT).expect("the proxy accepts");
    assert_eq!(peer.ip(), IpAddr::V6(ctr6()), "the proxy sees the container");
    assert_eq!(original_dst6(&p).expect("IP6T_SO_ORIGINAL_DST"), dest);
    echo_once(&mut p);
    assert_eq!(client.join().unwrap(), b"through the proxy", "the answer came back from the original destination");
    let after = ctl.stats();
    topo::assert_moved("proxied over ipv6", &before, &after, "tproxy_ingress/tcp", 2);
    topo::assert_moved("proxied over ipv6", &before, &after, "tproxy_egress/restored", 2);
    topo::assert_moved_by("proxied over ipv6", &before, &after, "getsockopt/found", 1);
}

/// A Minecraft player (minecraft-protocol) logs into a server in the
/// container over IPv6 through the published port: the join data arrives
/// complete, pings come back, and the server sees the player's own IPv6
/// address and port.
#[test]
fn minecraft_player_joins_over_ipv6() {
    if !privileged("minecraft_player_joins_over_ipv6") {
        return;
    }
    let env = Env6::new();
    env.publish(30001, "tcp", 25565);
    let server = McServer::start(&env.ctr.name, McServerOpts { host: "::".into(), port: 25565, chunks: 8, ..Default::default() });
    let before = stats_with_bytes(&env.ctl);
    let to = SocketAddr::from((ext6(), 30001));
    let r = mc_client(&env.player.name, to, "ipv6", Duration::from_secs(2));
    let after = stats_with_bytes(&env.ctl);
    let what = format!("player -> {to} (minecraft server in a container)");
    assert!(r.ok, "{what}: the client failed: {r:?}\nserver log:\n{}", server.proc.log());
    assert!(r.complete && r.chunks == 8, "{what}: the join data arrived incomplete: {r:?}");
    let rtt = r.rtt.as_ref().unwrap_or_else(|| panic!("{what}: no round trips measured: {r:?}"));
    assert!(rtt.count >= 5 && rtt.lost == 0, "{what}: round trips {rtt:?}");
    let player = r.local().unwrap_or_else(|| panic!("{what}: no local address: {r:?}"));
    assert_eq!(player.ip(), IpAddr::V6(player6()), "{what}: the client's own address");
    assert_eq!(r.remote(), Some(to), "{what}: the client's peer");
    let seen = server.wait_login("ipv6", TIMEOUT);
    assert_eq!(seen, player, "{what}: the server saw the login from {seen}, the player is {player}");
    let (dp, db) = moved(&what, &before, &after, "dnat/redirect");
    let (sp, sb) = moved(&what, &before, &after, "snat/redirect");
    assert!(dp > 0 && db >= r.bytes_sent, "{what}: dnat/redirect {dp} packets {db} bytes, sent {}", r.bytes_sent);
    assert!(sp > 0 && sb >= r.bytes_received, "{what}: snat/redirect {sp} packets {sb} bytes, received {}", r.bytes_received);
}

/// dig in the container asks an IPv6 resolver for AAAA records over UDP
/// and TCP; the datapath sends the queries to dnsmasq on the DNS proxy
/// port of the gateway address fe80::1, and dig takes the answers as
/// coming from the resolver it asked.
#[test]
fn dig_aaaa_over_ipv6_is_answered_by_dnsmasq() {
    if !privileged("dig_aaaa_over_ipv6_is_answered_by_dnsmasq") {
        return;
    }
    let env = Env6::new();
    let want: IpAddr = "2001:db8:25::25".parse().unwrap();
    let dns = Dnsmasq::start(&env.host.name, 9053, &["fe80::1".parse().unwrap()], &[("mc.example.test", want)]);
    let resolver = SocketAddr::from(("2001:4860:4860::8888".parse::<Ipv6Addr>().unwrap(), 53));
    let before = stats_with_bytes(&env.ctl);
    for transport in [Transport::Udp, Transport::Tcp] {
        let what = format!("dig @{} AAAA over {transport:?}", resolver.ip());
        let d = dig(&env.ctr.name, resolver, "mc.example.test", "AAAA", transport);
        assert!(d.out.success(), "{what}: {}\ndnsmasq log:\n{}", d.out, dns.proc.log());
        assert_eq!(d.status, "NOERROR", "{what}: {}", d.out);
        assert_eq!(d.addrs(), vec![want], "{what}: {}", d.out);
        assert_eq!(d.server, format!("{}#53", resolver.ip()), "{what}: {}", d.out);
    }
    let after = stats_with_bytes(&env.ctl);
    let asked: Vec<DnsQuery> = dns.queries().into_iter().filter(|q| q.name == "mc.example.test").collect();
    let expect = DnsQuery { qtype: "AAAA".into(), name: "mc.example.test".into(), from: IpAddr::V6(ctr6()) };
    assert_eq!(asked, vec![expect.clone(), expect], "dnsmasq's queries\n{}", dns.proc.log());
    assert!(moved("dig", &before, &after, "tproxy_ingress/dns").0 >= 2, "tproxy_ingress/dns");
    assert!(moved("dig", &before, &after, "tproxy_egress/restored").0 >= 2, "tproxy_egress/restored");
}

/// `curl -6` in the container fetches a page from a web server on the
/// player's side over IPv6; the connection goes to mitmproxy in
/// transparent mode on [::]:9080 (its sockets in the proxy's cgroup), which
/// asks IP6T_SO_ORIGINAL_DST itself, dials the web server from the host and
/// relays the page; curl sees it come from the web server's address.
#[test]
fn curl6_goes_through_mitmproxy_in_transparent_mode() {
    if !privileged("curl6_goes_through_mitmproxy_in_transparent_mode") {
        return;
    }
    let env = Env6::new();
    let cg = env.proxy_cgroup();
    let root = TempDir::new("dpweb6");
    let page = token("page6");
    std::fs::write(root.path.join("index.html"), &page).unwrap();
    let web_at = SocketAddr::from((player6(), 80));
    let web = HttpServer::start(&env.player.name, web_at, &root.path);
    let mitm = Mitmdump::start(&env.host.name, SocketAddr::from((Ipv6Addr::UNSPECIFIED, 9080)), &cg.dir);
    let before = stats_with_bytes(&env.ctl);
    let url = format!("http://[{}]/", player6());
    let what = format!("curl -6 {url} from the container");
    let r = curl(&env.ctr.name, &url, Duration::from_secs(20));
    let after = stats_with_bytes(&env.ctl);
    assert_eq!(r.code, 200, "{what}: {}\nmitmdump log:\n{}", r.out, mitm.proc.log());
    assert_eq!(String::from_utf8_lossy(&r.body), page, "{what}: the page differs");
    assert_eq!(r.remote, Some(web_at), "{what}: curl was connected to {:?}", r.remote);
    let dialed = mitm.server_connects();
    assert_eq!(dialed, vec![web_at], "{what}: mitmproxy connected to {dialed:?}\n{}", mitm.proc.log());
    let requests = web.requests();
    assert!(
        requests.len() == 1 && requests[0].from == IpAddr::V6(ext6()) && requests[0].status == 200,
        "{what}: the web server logged {requests:?}, expected one GET from the host's {}",
        ext6()
    );
    assert!(moved(&what, &before, &after, "tproxy_ingress/http").0 > 0, "{what}: tproxy_ingress/http");
    assert!(moved(&what, &before, &after, "tproxy_egress/restored").0 > 0, "{what}: tproxy_egress/restored");
    assert_eq!(moved(&what, &before, &after, "getsockopt/found").0, 1, "{what}: getsockopt/found");
}
