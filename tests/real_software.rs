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
//!   with `SO_ORIGINAL_DST` itself.
//!
//! Each test also checks the datapath's counters and what the far end saw,
//! so it fails if the path it goes through is broken. The tools are
//! installed by `scripts/tools` (see `common::realsw`).

mod common;

use std::net::{IpAddr, Ipv4Addr};
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
    let c = t.add_container(true);
    t.publish(JAVA_PORT, c, "tcp", CTR_PORT);
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
