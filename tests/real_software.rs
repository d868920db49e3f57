//! Real software through the datapath: programs nobody here wrote, on the
//! topology of `common::topo` wired by the real `datapathctl`.
//!
//! - a Minecraft Java client (npm minecraft-protocol) logs into a server
//!   in a container through a published port and receives several MB of
//!   chunk data;
//! - mcstatus (PyPI) pings a Java server through a published TCP port and
//!   a Bedrock responder through a published UDP port;
//! - dig (UDP and TCP) in a container is answered by dnsmasq on the
//!   proxy's DNS port;
//! - curl in a container fetches a page from the internet through
//!   mitmproxy in transparent mode, which finds the original destination
//!   with `SO_ORIGINAL_DST` itself;
//! - with host access, while `datapathctl load` runs over and over: host
//!   processes ping and log into a server in a container by its own
//!   address, by 127.0.0.1 and by two external addresses; a player behind a
//!   1400-byte link and a player on a second external address log in; a
//!   proxy container reaches a backend by its address and by the host's
//!   through mitmproxy.
//!
//! Each test also checks the datapath's counters and what the far end saw,
//! so it fails if the path it goes through is broken. The tools are
//! installed by `scripts/tools` (see `common::realsw`).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::privileged;
use common::realsw::*;
use common::topo::*;

/// Host port of the Minecraft server (TCP) and of the Bedrock responder
/// (UDP).
const JAVA_PORT: u16 = 30001;
const BEDROCK_PORT: u16 = 30002;
/// The Bedrock default port inside the container.
const BEDROCK_CTR_PORT: u16 = 19132;
/// Protocol number of Java Edition 1.21.4, the version the tools speak.
const JAVA_PROTOCOL: i64 = 769;

#[track_caller]
fn moved(what: &str, before: &Stats, after: &Stats, name: &str) -> (u64, u64) {
    let b = before.get(name).copied().unwrap_or_else(|| panic!("{what}: no counter {name}"));
    let a = after.get(name).copied().unwrap_or_else(|| panic!("{what}: no counter {name}"));
    (a.0 - b.0, a.1 - b.1)
}

type Stats = std::collections::BTreeMap<String, (u64, u64)>;

/// A player logs into a Minecraft server in a container through its
/// published port: the login succeeds, the join data (32 chunk columns,
/// about 6.3 MB of map_chunk data) arrives complete, pings come back, the
/// server sees the player's own address and port, and every byte went
/// through dnat one way and snat the other.
#[test]
fn minecraft_player_joins_through_a_published_port() {
    if !privileged("minecraft_player_joins_through_a_published_port") {
        return;
    }
    let mut t = Topo::new();
    let c = t.add_published(true, &[(JAVA_PORT, "tcp", CTR_PORT)]);
    let server = McServer::start(&t.ctrs[c].ns, McServerOpts { port: CTR_PORT, chunks: 32, ..Default::default() });
    let before = stats_with_bytes(&t.ctl);

    let r = mc_client(&t.player, sa(EXT_IP, JAVA_PORT), "alex", Duration::from_secs(2));
    let after = stats_with_bytes(&t.ctl);
    let what = format!("player -> {EXT_IP}:{JAVA_PORT} (minecraft server in a container)");
    assert!(r.ok, "{what}: the client failed: {r:?}\nserver log:\n{}", server.proc.log());
    assert!(r.complete, "{what}: the join data arrived incomplete: {r:?}");
    assert_eq!(r.chunks, 32, "{what}: chunk columns received");
    let sent = server.wait_world_sent("alex", IO_TIMEOUT);
    assert_eq!(sent["bytes"].as_u64(), Some(r.world_bytes), "{what}: server sent {sent}, client got {r:?}");
    assert_eq!(sent["sha256"].as_str(), r.world_sha256.as_deref(), "{what}: the chunk data differs");
    assert!(r.world_bytes > 6_000_000, "{what}: only {} bytes of chunk data", r.world_bytes);
    assert!(r.bytes_received > 6_000_000, "{what}: only {} bytes on the wire", r.bytes_received);
    let rtt = r.rtt.as_ref().unwrap_or_else(|| panic!("{what}: no round trips measured: {r:?}"));
    assert!(rtt.count >= 5 && rtt.lost == 0, "{what}: round trips {rtt:?}");

    // No NAT of the source: the server saw the player's own address and
    // port, and the player was connected to the host's.
    let player = r.local().unwrap_or_else(|| panic!("{what}: the client reported no local address: {r:?}"));
    assert_eq!(player.ip(), IpAddr::V4(PLAYER_IP), "{what}: the client's own address");
    assert_eq!(r.remote(), Some(sa(EXT_IP, JAVA_PORT)), "{what}: the client's peer");
    let seen = server.wait_login("alex", IO_TIMEOUT);
    assert_eq!(seen, player, "{what}: the server saw the login from {seen}, the player is {player}");

    // Everything the player sent went through dnat and everything it
    // received through snat (the counters count whole frames, so at least
    // the TCP payload).
    let (dnat_pkts, dnat_bytes) = moved(&what, &before, &after, "dnat/redirect");
    let (snat_pkts, snat_bytes) = moved(&what, &before, &after, "snat/redirect");
    assert!(
        dnat_pkts > 0 && dnat_bytes >= r.bytes_sent,
        "{what}: dnat/redirect moved by {dnat_pkts} packets, {dnat_bytes} bytes; the client sent {} bytes",
        r.bytes_sent
    );
    assert!(
        snat_pkts > 0 && snat_bytes >= r.bytes_received,
        "{what}: snat/redirect moved by {snat_pkts} packets, {snat_bytes} bytes; the client received {} bytes",
        r.bytes_received
    );
}

/// mcstatus asks the Minecraft server in a container for its status
/// through the published TCP port: it gets the server's version, protocol
/// and message of the day, and the server answered a ping from the
/// player's own address.
#[test]
fn mcstatus_java_status_through_a_published_tcp_port() {
    if !privileged("mcstatus_java_status_through_a_published_tcp_port") {
        return;
    }
    let mut t = Topo::new();
    let c = t.add_container(true);
    t.publish(JAVA_PORT, c, "tcp", CTR_PORT);
    let motd = token("java");
    let server =
        McServer::start(&t.ctrs[c].ns, McServerOpts { port: CTR_PORT, motd: motd.clone(), ..Default::default() });
    let before = stats_with_bytes(&t.ctl);

    let s = mcstatus(&t.player, McEdition::Java, sa(EXT_IP, JAVA_PORT));
    let after = stats_with_bytes(&t.ctl);
    let what = format!("mcstatus java {EXT_IP}:{JAVA_PORT}");
    assert!(s.ok, "{what}: {s:?}\nserver log:\n{}", server.proc.log());
    assert_eq!(s.motd.as_deref(), Some(motd.as_str()), "{what}: message of the day");
    assert_eq!(s.protocol, Some(JAVA_PROTOCOL), "{what}: protocol");
    assert_eq!(s.version.as_deref(), Some("1.21.4"), "{what}: version");
    let peers = server.status_peers();
    assert_eq!(peers.len(), 1, "{what}: the server answered {peers:?}, expected one status request");
    assert_eq!(peers[0].ip(), IpAddr::V4(PLAYER_IP), "{what}: the server saw the request from {}", peers[0]);
    assert!(moved(&what, &before, &after, "dnat/redirect").0 > 0, "{what}: dnat/redirect did not move");
    assert!(moved(&what, &before, &after, "snat/redirect").0 > 0, "{what}: snat/redirect did not move");
}

/// mcstatus asks a Bedrock server in a container for its status through a
/// published UDP port (RakNet unconnected ping and pong): the answer comes
/// back, and the responder saw the player's own address.
#[test]
fn mcstatus_bedrock_status_through_a_published_udp_port() {
    if !privileged("mcstatus_bedrock_status_through_a_published_udp_port") {
        return;
    }
    let mut t = Topo::new();
    let c = t.add_container(true);
    t.publish(BEDROCK_PORT, c, "udp", BEDROCK_CTR_PORT);
    let motd = token("bedrock");
    let responder = BedrockResponder::start(&t.ctrs[c].ns, any(BEDROCK_CTR_PORT), &motd);
    let before = stats_with_bytes(&t.ctl);

    let s = mcstatus(&t.player, McEdition::Bedrock, sa(EXT_IP, BEDROCK_PORT));
    let after = stats_with_bytes(&t.ctl);
    let what = format!("mcstatus bedrock {EXT_IP}:{BEDROCK_PORT}/udp");
    assert!(s.ok, "{what}: {s:?}\nresponder log:\n{}", responder.proc.log());
    assert_eq!(s.motd.as_deref(), Some(motd.as_str()), "{what}: message of the day");
    assert_eq!(s.version.as_deref(), Some("1.21.50"), "{what}: version");
    let peers = responder.ping_peers();
    assert_eq!(peers.len(), 1, "{what}: the responder answered {peers:?}, expected one ping");
    assert_eq!(peers[0].ip(), IpAddr::V4(PLAYER_IP), "{what}: the responder saw the ping from {}", peers[0]);
    assert_eq!(moved(&what, &before, &after, "dnat/redirect").0, 1, "{what}: dnat/redirect packets");
    assert_eq!(moved(&what, &before, &after, "snat/redirect").0, 1, "{what}: snat/redirect packets");
}

/// dig in a container asks a resolver somewhere (192.0.2.53), over UDP
/// and over TCP; the datapath sends both to the proxy's DNS port on the
/// host, where dnsmasq answers from its fixed records, and dig accepts the
/// answers as coming from the server it asked.
#[test]
fn dig_in_a_container_is_answered_by_dnsmasq_on_the_dns_proxy_port() {
    if !privileged("dig_in_a_container_is_answered_by_dnsmasq_on_the_dns_proxy_port") {
        return;
    }
    let mut t = Topo::new();
    let c = t.add_container(true);
    let (ctr_ns, ctr_ip, gw) = (t.ctrs[c].ns.clone(), t.ctrs[c].ip, t.ctrs[c].gw);
    let want = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 25));
    let dns = Dnsmasq::start(&t.host, PROXY_DNS, &[IpAddr::V4(gw)], &[("mc.example.test", want)]);
    let resolver = sa(Ipv4Addr::new(192, 0, 2, 53), 53);
    let before = stats_with_bytes(&t.ctl);

    for transport in [Transport::Udp, Transport::Tcp] {
        let what = format!("dig @{resolver} mc.example.test over {transport:?}");
        let d = dig(&ctr_ns, resolver, "mc.example.test", "A", transport);
        assert!(d.out.success(), "{what}: {}\ndnsmasq log:\n{}", d.out, dns.proc.log());
        assert_eq!(d.status, "NOERROR", "{what}: {}", d.out);
        assert_eq!(d.addrs(), vec![want], "{what}: {}", d.out);
        // dig takes only answers from the address and port it asked.
        assert_eq!(d.server, format!("{}#{}", resolver.ip(), resolver.port()), "{what}: {}", d.out);
    }
    let after = stats_with_bytes(&t.ctl);
    let what = "dig through the DNS proxy";
    let asked: Vec<DnsQuery> = dns.queries().into_iter().filter(|q| q.name == "mc.example.test").collect();
    let expect = DnsQuery { qtype: "A".into(), name: "mc.example.test".into(), from: IpAddr::V4(ctr_ip) };
    assert_eq!(asked, vec![expect.clone(), expect], "{what}: dnsmasq's queries\n{}", dns.proc.log());
    // One datagram, and at least the SYN of the TCP query.
    assert!(moved(what, &before, &after, "tproxy_ingress/dns").0 >= 2, "{what}: tproxy_ingress/dns");
    assert!(moved(what, &before, &after, "tproxy_egress/restored").0 >= 2, "{what}: tproxy_egress/restored");
}

/// curl in a container fetches a page from a web server on the internet
/// side; the datapath sends the connection to the HTTP proxy port, where
/// mitmproxy in transparent mode (its sockets in the proxy's cgroup) asks
/// SO_ORIGINAL_DST, dials the web server from the host, and relays the
/// page; curl sees it come from the web server's address.
#[test]
fn curl_in_a_container_goes_through_mitmproxy_in_transparent_mode() {
    if !privileged("curl_in_a_container_goes_through_mitmproxy_in_transparent_mode") {
        return;
    }
    let mut t = Topo::new();
    let c = t.add_container(true);
    let cgroup = t.proxy_cgroup();
    let ctr_ns = t.ctrs[c].ns.clone();
    let root = TempDir::new("dpweb");
    let page = token("page");
    std::fs::write(root.path.join("index.html"), &page).unwrap();
    let web = HttpServer::start(&t.player, sa(PLAYER_IP, 80), &root.path);
    let mitm = Mitmdump::start(&t.host, any(PROXY_HTTP), &cgroup);
    let before = stats_with_bytes(&t.ctl);

    let url = format!("http://{PLAYER_IP}/");
    let what = format!("curl {url} from a container");
    let r = curl(&ctr_ns, &url, Duration::from_secs(20));
    let after = stats_with_bytes(&t.ctl);
    assert_eq!(r.code, 200, "{what}: {}\nmitmdump log:\n{}", r.out, mitm.proc.log());
    assert_eq!(String::from_utf8_lossy(&r.body), page, "{what}: the page differs");
    assert_eq!(r.remote, Some(sa(PLAYER_IP, 80)), "{what}: curl was connected to {:?}", r.remote);

    // mitmproxy dialed the original destination, from the host.
    let dialed = mitm.server_connects();
    assert_eq!(dialed, vec![sa(PLAYER_IP, 80)], "{what}: mitmproxy connected to {dialed:?}\n{}", mitm.proc.log());
    let requests = web.requests();
    assert!(
        requests.len() == 1
            && requests[0].from == IpAddr::V4(EXT_IP)
            && requests[0].request.starts_with("GET / ")
            && requests[0].status == 200,
        "{what}: the web server logged {requests:?}, expected one GET / from the host's {EXT_IP}"
    );
    assert!(moved(&what, &before, &after, "tproxy_ingress/http").0 > 0, "{what}: tproxy_ingress/http");
    assert!(moved(&what, &before, &after, "tproxy_egress/restored").0 > 0, "{what}: tproxy_egress/restored");
    assert_eq!(moved(&what, &before, &after, "getsockopt/found").0, 1, "{what}: getsockopt/found");
    assert_eq!(moved(&what, &before, &after, "getsockopt/miss").0, 0, "{what}: getsockopt/miss");

    // It is the datapath's answer that mitmproxy used: without the
    // getsockopt program on its cgroup the kernel has none, and mitmproxy
    // drops the connection.
    t.ctl.run(&["detach", "getsockopt", cgroup.to_str().unwrap()]);
    let r = curl(&ctr_ns, &url, Duration::from_secs(10));
    assert_eq!(r.code, 0, "{what}, getsockopt detached: a response came: {}", r.out);
    mitm.proc.wait_line("mitmproxy's transparent mode failure", IO_TIMEOUT, |l| l.contains("Transparent mode failure"));
    assert_eq!(
        web.requests().len(),
        1,
        "{what}, getsockopt detached: the web server was reached: {:?}",
        web.requests()
    );
}

/// `datapathctl load` over and over on a thread of its own until
/// [`Reloader::finish`]: whatever the test does meanwhile goes through
/// programs replaced in place under it (TC filters, the guard's XDP
/// program, the cgroup programs). Declared after the topology, so that it
/// stops before the topology is taken down.
struct Reloader {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<u32, String>>>,
}

impl Reloader {
    fn start(root: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (stopped, root) = (stop.clone(), root.to_path_buf());
        let thread = std::thread::spawn(move || {
            let mut loads = 0;
            while !stopped.load(Ordering::Relaxed) {
                let out = Command::new(DATAPATHCTL)
                    .arg("load")
                    .env("DATAPATH_PIN_ROOT", &root)
                    .output()
                    .map_err(|e| format!("running datapathctl load: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "load {} failed ({}): {}",
                        loads + 1,
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                loads += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(loads)
        });
        Reloader { stop, thread: Some(thread) }
    }

    /// Stops it; the number of loads, every one of which succeeded.
    #[track_caller]
    fn finish(mut self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        let h = self.thread.take().expect("finished once");
        h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

/// A Minecraft login (minecraft-protocol) that must succeed: the whole
/// world arrives, round trips come back, and the client's peer is the
/// address it asked for. Returns the client's own address and where the
/// server saw the login come from.
#[track_caller]
fn login(
    ns: &str,
    cgroup: Option<&Path>,
    server: &McServer,
    to: SocketAddr,
    user: &str,
    what: &str,
) -> (SocketAddr, SocketAddr) {
    let r = mc_client_in(ns, cgroup, to, user, Duration::from_secs(1));
    assert!(r.ok, "{what}: the client failed: {r:?}\nserver log:\n{}", server.proc.log());
    assert!(r.complete && r.chunks == server.opts.chunks, "{what}: the join data arrived incomplete: {r:?}");
    let rtt = r.rtt.as_ref().unwrap_or_else(|| panic!("{what}: no round trips measured: {r:?}"));
    assert!(rtt.count >= 3 && rtt.lost == 0, "{what}: round trips {rtt:?}");
    assert_eq!(r.remote(), Some(to), "{what}: the client's peer (getpeername) is not the address it asked for");
    let local = r.local().unwrap_or_else(|| panic!("{what}: the client reported no local address: {r:?}"));
    (local, server.wait_login(user, IO_TIMEOUT))
}

/// Minecraft from everywhere, while `datapathctl load` runs in place over
/// and over: host processes (in the cgroup with host access) ask a server
/// in a container for its status (mcstatus, Java and Bedrock) and log in
/// (minecraft-protocol) by the container's own address, by
/// 127.0.0.1:30001, by the external address and by port 25565 of a second
/// external address, and are shown the address they asked for; a player
/// behind a router whose inner link has MTU 1400 logs in and receives the
/// 6.3 MB join; a player logs in on the second external address.
#[test]
fn minecraft_from_the_host_and_from_players_while_load_runs() {
    if !privileged("minecraft_from_the_host_and_from_players_while_load_runs") {
        return;
    }
    const EXT2: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 3);
    let mut t = Topo::new();
    let c = t.add_container(true);
    t.add_external(EXT2);
    t.publish(JAVA_PORT, c, "tcp", CTR_PORT);
    t.publish_on(Some(EXT2), CTR_PORT, c, "tcp", CTR_PORT);
    t.publish(BEDROCK_PORT, c, "udp", BEDROCK_CTR_PORT);
    let rp = t.add_routed_player(1400);
    let cg = t.host_access_cgroup();
    let (ctr_ns, ctr_ip, gw) = (t.ctrs[c].ns.clone(), t.ctrs[c].ip, t.ctrs[c].gw);
    let motd = token("everywhere");
    let server = McServer::start(&ctr_ns, McServerOpts { port: CTR_PORT, motd: motd.clone(), ..Default::default() });
    let bedrock = BedrockResponder::start(&ctr_ns, any(BEDROCK_CTR_PORT), &motd);
    let progs_before = cgroup_programs(&cg, &HOST_ACCESS_PROGS);
    let before = stats_with_bytes(&t.ctl);
    let reloader = Reloader::start(&t.ctl.root);

    let from_host = [
        sa(ctr_ip, CTR_PORT),
        sa(Ipv4Addr::LOCALHOST, JAVA_PORT),
        sa(EXT_IP, JAVA_PORT),
        sa(EXT2, CTR_PORT),
    ];
    for (i, to) in from_host.into_iter().enumerate() {
        let what = format!("host -> {to} (mcstatus java)");
        let s = mcstatus_in(&t.host, Some(&cg), McEdition::Java, to);
        assert!(s.ok, "{what}: {s:?}\nserver log:\n{}", server.proc.log());
        assert_eq!((s.motd.as_deref(), s.protocol), (Some(motd.as_str()), Some(JAVA_PROTOCOL)), "{what}");
        let what = format!("host -> {to} (minecraft login)");
        let (local, seen) = login(&t.host, Some(&cg), &server, to, &format!("host{i}"), &what);
        assert_eq!(seen, local, "{what}: where the server saw the login");
        assert_eq!(local.ip(), IpAddr::V4(gw), "{what}: the host connects from its veth's address");
    }
    let peers = server.status_peers();
    assert!(
        peers.len() == from_host.len() && peers.iter().all(|p| p.ip() == IpAddr::V4(gw)),
        "the server answered status requests from {peers:?}, expected {} from the host ({gw})",
        from_host.len()
    );
    for to in [sa(Ipv4Addr::LOCALHOST, BEDROCK_PORT), sa(EXT_IP, BEDROCK_PORT)] {
        let what = format!("host -> {to}/udp (mcstatus bedrock)");
        let s = mcstatus_in(&t.host, Some(&cg), McEdition::Bedrock, to);
        assert!(s.ok, "{what}: {s:?}\nresponder log:\n{}", bedrock.proc.log());
        assert_eq!(s.motd.as_deref(), Some(motd.as_str()), "{what}");
    }
    let pings = bedrock.ping_peers();
    assert!(pings.len() == 2 && pings.iter().all(|p| p.ip() == IpAddr::V4(gw)), "the responder saw {pings:?}");

    let what = format!("player {} behind a 1400-byte link -> {EXT_IP}:{JAVA_PORT}", rp.ip);
    let (local, seen) = login(&rp.player, None, &server, sa(EXT_IP, JAVA_PORT), "routed", &what);
    assert_eq!((local.ip(), seen), (IpAddr::V4(rp.ip), local), "{what}: the player's address, as the server saw it");
    let sent = server.wait_world_sent("routed", IO_TIMEOUT);
    assert!(sent["bytes"].as_u64().unwrap_or(0) > 6_000_000, "{what}: the join was {sent}");
    let what = format!("player -> {EXT2}:{CTR_PORT}");
    let (local, seen) = login(&t.player, None, &server, sa(EXT2, CTR_PORT), "second", &what);
    assert_eq!((local.ip(), seen), (IpAddr::V4(PLAYER_IP), local), "{what}: the player's address, as the server saw it");

    let loads = reloader.finish();
    let after = stats_with_bytes(&t.ctl);
    assert!(loads >= 3, "datapathctl load ran only {loads} times meanwhile");
    let progs_after = cgroup_programs(&cg, &HOST_ACCESS_PROGS);
    assert_eq!(progs_after, t.ctl.pinned_programs(&HOST_ACCESS_PROGS), "the cgroup holds other programs than the pinned ones");
    assert!(
        progs_before.iter().zip(&progs_after).all(|(a, b)| a.1 != b.1),
        "load did not replace the host access programs: {progs_before:?} then {progs_after:?}"
    );
    let what = "minecraft from everywhere";
    // mcstatus and a login by each of three published addresses, the two
    // Bedrock pings; the container's own address is not rewritten.
    assert!(moved(what, &before, &after, "connect4/rewritten").0 >= 6, "{what}: connect4/rewritten");
    assert!(moved(what, &before, &after, "sendmsg4/rewritten").0 >= 2, "{what}: sendmsg4/rewritten");
    assert!(moved(what, &before, &after, "recvmsg4/restored").0 >= 2, "{what}: recvmsg4/restored");
    assert!(moved(what, &before, &after, "getpeername4/restored").0 >= 3, "{what}: getpeername4/restored");
    assert!(moved(what, &before, &after, "dnat/icmp_translated").0 >= 1, "{what}: no fragmentation-needed was translated");
    assert!(moved(what, &before, &after, "snat/redirect").0 > 0, "{what}: snat/redirect");
}

/// A proxy container (the Minecraft client run in it, as Velocity would
/// connect) reaches a backend container by the backend's own address and
/// by the host's external address and the backend's published port:
/// both connections go to mitmproxy in transparent mode on the host, which
/// asks SO_ORIGINAL_DST and dials it — the second one, a host process
/// asking for a published port, reaches the backend through host access.
/// The client sees the address it asked for, every time; load runs in
/// place meanwhile.
#[test]
fn proxy_container_reaches_a_backend_by_its_address_and_the_hosts_while_load_runs() {
    if !privileged("proxy_container_reaches_a_backend_by_its_address_and_the_hosts_while_load_runs") {
        return;
    }
    let mut t = Topo::new();
    let front = t.add_container(true);
    let back = t.add_container(true);
    t.publish(JAVA_PORT, front, "tcp", CTR_PORT);
    t.publish(JAVA_PORT + 1, back, "tcp", CTR_PORT);
    let cg = t.proxy_cgroup();
    t.host_access_cgroup();
    let (front_ns, back_ns, back_ip, back_gw) =
        (t.ctrs[front].ns.clone(), t.ctrs[back].ns.clone(), t.ctrs[back].ip, t.ctrs[back].gw);
    let backend = McServer::start(&back_ns, McServerOpts { port: CTR_PORT, chunks: 8, ..Default::default() });
    let mitm = Mitmdump::start(&t.host, any(PROXY_TCP), &cg);
    let before = stats_with_bytes(&t.ctl);
    let reloader = Reloader::start(&t.ctl.root);

    let targets = [sa(back_ip, CTR_PORT), sa(EXT_IP, JAVA_PORT + 1)];
    for (i, to) in targets.into_iter().enumerate() {
        let what = format!("proxy container -> {to} through mitmproxy");
        let (local, seen) = login(&front_ns, None, &backend, to, &format!("relayed{i}"), &what);
        assert_eq!(local.ip(), IpAddr::V4(t.ctrs[front].ip), "{what}: the client's own address");
        // mitmproxy dialed the backend from the host.
        assert_eq!(seen.ip(), IpAddr::V4(back_gw), "{what}: the backend saw the login from {seen}");
    }
    let loads = reloader.finish();
    let after = stats_with_bytes(&t.ctl);
    assert!(loads >= 2, "datapathctl load ran only {loads} times meanwhile");

    let dialed = mitm.server_connects();
    assert_eq!(dialed, targets.to_vec(), "mitmproxy connected to {dialed:?}\n{}", mitm.proc.log());
    let what = "proxy container to backend";
    assert_eq!(moved(what, &before, &after, "getsockopt/found").0, 2, "{what}: getsockopt/found");
    assert_eq!(moved(what, &before, &after, "connect4/rewritten").0, 1, "{what}: connect4/rewritten (the dial of {EXT_IP})");
    assert!(moved(what, &before, &after, "getpeername4/restored").0 >= 1, "{what}: getpeername4/restored");
    assert!(moved(what, &before, &after, "tproxy_ingress/tcp").0 >= 2, "{what}: tproxy_ingress/tcp");
    assert!(moved(what, &before, &after, "tproxy_egress/restored").0 > 0, "{what}: tproxy_egress/restored");
}
