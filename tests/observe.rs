//! Seeing what the datapath does: per-port counters (`map dnat list
//! --stats`), the Prometheus exposition (`metrics`, checked by promtool and
//! scraped by a real Prometheus server), on the topology of `common::topo`
//! with real TCP and UDP.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::privileged;
use common::topo::*;
use nix::libc;

const CONNECT: Duration = Duration::from_secs(3);
const TCP_PORT: u16 = 30001;
const UDP_PORT: u16 = 30002;
/// Ethernet + IPv4 + UDP headers: a datagram's frame is this plus its payload.
const UDP_FRAME: u64 = 14 + 20 + 8;

/// What a TCP socket says it sent (tcp_info, linux/tcp.h).
#[derive(Debug, Clone, Copy)]
struct Sent {
    /// Segments, SYN or SYN-ACK, pure ACKs, FIN and retransmissions included.
    segs: u64,
    /// Payload bytes, retransmissions included.
    payload: u64,
    /// TCPI_OPT_* of the connection.
    options: u8,
}

fn tcp_sent(s: &TcpStream) -> Sent {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is larger than the struct tcp_info the kernel writes (it
    // writes at most len bytes).
    let rc = unsafe {
        libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, buf.as_mut_ptr().cast(), &mut len)
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    assert!(len >= 216, "tcp_info of {len} bytes has no tcpi_bytes_sent (kernel 4.19+)");
    let u32_at = |o: usize| u32::from_ne_bytes(buf[o..o + 4].try_into().unwrap()) as u64;
    let u64_at = |o: usize| u64::from_ne_bytes(buf[o..o + 8].try_into().unwrap());
    // Offsets of tcpi_options, tcpi_segs_out and tcpi_bytes_sent.
    Sent { segs: u32_at(136), payload: u64_at(200), options: buf[5] }
}

/// The frames a TCP endpoint sent, as TC sees them (skb->len): Ethernet
/// (14) + IPv4 (20) + TCP with its options + payload. Linux puts MSS,
/// SACK-permitted, timestamps and window scale on a SYN or SYN-ACK (20
/// bytes of options) and timestamps on every other segment (12). The
/// connecting socket counts its SYN in segs_out; an accepted one does not
/// count the SYN-ACK (the listener sent it), so `(segs + 1, ..)` for it.
fn frames(s: Sent, accepted: bool) -> (u64, u64) {
    let segs = s.segs + accepted as u64;
    (segs, frame_bytes(Sent { segs, ..s }))
}

fn frame_bytes(s: Sent) -> u64 {
    const TS: u8 = 1;
    const SACK: u8 = 2;
    const WSCALE: u8 = 4;
    assert_eq!(s.options & (TS | SACK | WSCALE), TS | SACK | WSCALE, "the expected header sizes need timestamps, SACK and window scaling");
    (14 + 20 + 40) + (s.segs - 1) * (14 + 20 + 32) + s.payload
}

/// `map dnat list --stats --json`, by "port/proto".
fn port_stats(t: &Topo) -> BTreeMap<String, serde_json::Value> {
    let v = t.ctl.json(&["map", "dnat", "list", "--stats"]);
    v.as_array()
        .unwrap_or_else(|| panic!("list --stats --json is not an array: {v}"))
        .iter()
        .map(|p| (format!("{}/{}", p["host_port"], p["proto"].as_str().unwrap_or("?")), p["stats"].clone()))
        .collect()
}

/// One sample of a text exposition: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (head, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample without value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line}"));
        let (name, labels) = match head.split_once('{') {
            None => (head.to_string(), BTreeMap::new()),
            Some((n, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let labels = body
                    .split("\",")
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once("=\"").unwrap_or_else(|| panic!("bad label {kv} in {line}"));
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (n.to_string(), labels)
            }
        };
        out.push(Sample { name, labels, value });
    }
    out
}

fn sample(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && want.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{name}{want:?}: {} samples", found.len());
    found[0].value
}

/// Traffic the test sent through the two published ports, and what must
/// be counted for it.
struct Sent2 {
    tcp_in: (u64, u64),
    tcp_out: (u64, u64),
    udp: (u64, u64),
}

/// A TCP connection with request/response rounds (no coalescing: each
/// message waits for its echo) and UDP datagrams echoed one by one.
fn send_known_traffic(t: &Topo, c: usize) -> Sent2 {
    let l = tcp_listen(&t.ctrs[c].ns, CTR_PORT);
    let mut p = t.player_connect(TCP_PORT, CONNECT).expect("player connects");
    let (mut s, _) = accept(&l, CONNECT).expect("container accepts");
    p.set_nodelay(true).unwrap();
    s.set_nodelay(true).unwrap();
    for i in 0..20usize {
        let msg = vec![b'a' + (i % 26) as u8; 100 + i * 37];
        p.write_all(&msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).unwrap();
        s.write_all(&got).unwrap();
        let mut back = vec![0u8; msg.len()];
        p.read_exact(&mut back).unwrap();
        assert_eq!(back, msg, "echo {i}");
    }

    let srv = udp_bind(&t.ctrs[c].ns, any(CTR_PORT));
    let ps = udp_bind(&t.player, any(0));
    let (mut n, mut bytes) = (0u64, 0u64);
    for i in 0..15usize {
        let msg = vec![b'u'; 10 + i * 50];
        ps.send_to(&msg, sa(EXT_IP, UDP_PORT)).unwrap();
        let mut buf = [0u8; 2048];
        let (len, from) = srv.recv_from(&mut buf).expect("container receives the datagram");
        srv.send_to(&buf[..len], from).unwrap();
        let (len2, _) = ps.recv_from(&mut buf).expect("player receives the echo");
        assert_eq!(len2, msg.len());
        n += 1;
        bytes += UDP_FRAME + msg.len() as u64;
    }

    // Delayed ACKs go out within 40 ms; then both sides are quiet.
    std::thread::sleep(Duration::from_millis(400));
    let (ps_, ss) = (tcp_sent(&p), tcp_sent(&s));
    let out = Sent2 {
        tcp_in: frames(ps_, false),
        tcp_out: frames(ss, true),
        udp: (n, bytes),
    };
    // Kept open until the counters are read: closing sends more.
    std::mem::forget((p, s, l));
    out
}

fn setup() -> (Topo, usize) {
    let mut t = Topo::new();
    let c = t.add_container(true);
    t.publish(TCP_PORT, c, "tcp", CTR_PORT);
    t.publish(UDP_PORT, c, "udp", CTR_PORT);
    (t, c)
}

/// A known number of packets and bytes through a TCP and a UDP published
/// port shows up exactly in `map dnat list --stats --json` and in
/// `metrics`; promtool accepts the exposition; a deleted port's counters
/// are zeroed.
#[test]
fn published_port_counters_are_exact() {
    if !privileged("published_port_counters_are_exact") {
        return;
    }
    let (t, c) = setup();
    let zero = port_stats(&t);
    for k in [format!("{TCP_PORT}/tcp"), format!("{UDP_PORT}/udp")] {
        for f in ["pkts_in", "bytes_in", "pkts_out", "bytes_out", "conns"] {
            assert_eq!(zero[&k][f], 0, "{k} {f} before any traffic");
        }
    }
    let sent = send_known_traffic(&t, c);
    let st = port_stats(&t);
    let tcp = &st[&format!("{TCP_PORT}/tcp")];
    let udp = &st[&format!("{UDP_PORT}/udp")];
    assert_eq!((tcp["pkts_in"].as_u64().unwrap(), tcp["bytes_in"].as_u64().unwrap()), sent.tcp_in, "TCP towards the container: {tcp}");
    assert_eq!((tcp["pkts_out"].as_u64().unwrap(), tcp["bytes_out"].as_u64().unwrap()), sent.tcp_out, "TCP back to the player: {tcp}");
    assert_eq!(tcp["conns"], 1, "one SYN taken: {tcp}");
    assert_eq!((udp["pkts_in"].as_u64().unwrap(), udp["bytes_in"].as_u64().unwrap()), sent.udp, "UDP in: {udp}");
    assert_eq!((udp["pkts_out"].as_u64().unwrap(), udp["bytes_out"].as_u64().unwrap()), sent.udp, "UDP out: {udp}");
    assert_eq!(udp["conns"], 1, "one UDP flow recorded: {udp}");

    // The text form shows the same numbers on the port's row.
    let text = t.ctl.run(&["map", "dnat", "list", "--stats"]);
    let row = text.lines().find(|l| l.starts_with(&format!("default:{TCP_PORT}/tcp"))).unwrap_or_else(|| panic!("no row for {TCP_PORT}: {text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols[2..7],
        [sent.tcp_in.0, sent.tcp_in.1, sent.tcp_out.0, sent.tcp_out.1, 1].map(|n| n.to_string()),
        "text row: {row}"
    );

    // metrics: the same counters, and promtool accepts the exposition.
    let m = t.ctl.run(&["metrics"]);
    let samples = parse_exposition(&m);
    let port = |p: u16, proto: &'static str, dir: &'static str| {
        let ps = p.to_string();
        let bytes = sample(&samples, "datapath_published_bytes_total", &[("ext_addr", "default"), ("port", &ps), ("proto", proto), ("direction", dir)]);
        let pkts = sample(&samples, "datapath_published_packets_total", &[("ext_addr", "default"), ("port", &ps), ("proto", proto), ("direction", dir)]);
        (pkts as u64, bytes as u64)
    };
    assert_eq!(port(TCP_PORT, "tcp", "in"), sent.tcp_in, "metrics, TCP in");
    assert_eq!(port(TCP_PORT, "tcp", "out"), sent.tcp_out, "metrics, TCP out");
    assert_eq!(port(UDP_PORT, "udp", "in"), sent.udp, "metrics, UDP in");
    assert_eq!(port(UDP_PORT, "udp", "out"), sent.udp, "metrics, UDP out");
    let conns = sample(&samples, "datapath_published_connections_total", &[("port", &TCP_PORT.to_string()), ("proto", "tcp")]);
    assert_eq!(conns, 1.0);
    let redirects = sample(&samples, "datapath_packets_total", &[("program", "dnat"), ("reason", "redirect")]);
    assert_eq!(redirects as u64, sent.tcp_in.0 + sent.udp.0, "dnat redirects are the packets of both ports");
    assert_eq!(sample(&samples, "datapath_map_entries", &[("map", "mappings")]), 2.0);
    assert_eq!(sample(&samples, "datapath_map_capacity", &[("map", "mappings")]), 65536.0);
    assert_eq!(sample(&samples, "datapath_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    for fam in FAMILIES {
        assert!(m.contains(&format!("# HELP {fam} ")) && m.contains(&format!("# TYPE {fam} ")), "{fam} without HELP/TYPE");
    }
    promtool_check(&m);

    // Deleting a port zeroes its counters: its slot holds nothing when it
    // is given to a mapping again.
    let slot = t.ctl.json(&["map", "dnat", "get", &TCP_PORT.to_string()])["slot"].as_u64().unwrap() as u32;
    t.ctl.run(&["map", "dnat", "del", &TCP_PORT.to_string()]);
    let pins = datapath::kernel::pins::PinRoot::new(&t.ctl.root);
    let map = datapath::maps::open(&pins, "port_stats").unwrap();
    assert_eq!(datapath::maps::port_counters(&map, slot).unwrap(), datapath::maps::PortCounters::default(), "slot {slot} after del");
    let st = port_stats(&t);
    assert!(!st.contains_key(&format!("{TCP_PORT}/tcp")), "deleted port still listed");
    assert_eq!(st[&format!("{UDP_PORT}/udp")]["pkts_in"].as_u64().unwrap(), sent.udp.0, "the other port keeps its counters");
}

fn promtool_check(text: &str) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package, installed by scripts/tools)");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the exposition: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A plain HTTP/1.0 GET: status and body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// A child process killed on drop.
struct Kid(Child, &'static str);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_http(addr: SocketAddr, path: &str, what: &str) {
    let t0 = Instant::now();
    while http_get(addr, path).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "{what} did not answer on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `metrics --listen` serves /metrics (and 404 elsewhere) to a real
/// Prometheus server, whose query API then returns the per-port byte
/// counter of the traffic sent; SIGTERM stops the server.
#[test]
fn prometheus_scrapes_metrics_listen() {
    if !privileged("prometheus_scrapes_metrics_listen") {
        return;
    }
    let (t, c) = setup();
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let server = t
        .ctl
        .command(&["metrics", "--listen", &listen.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("metrics --listen");
    let mut server = Kid(server, "metrics --listen");
    wait_http(listen, "/metrics", "metrics --listen");
    let (code, body) = http_get(listen, "/metrics").unwrap();
    assert_eq!(code, 200, "GET /metrics: {body}");
    assert!(body.contains("datapath_build_info"), "GET /metrics: {body}");
    let (code, _) = http_get(listen, "/").unwrap();
    assert_eq!(code, 404, "GET / must be 404");
    let (code, _) = http_get(listen, "/metricsx").unwrap();
    assert_eq!(code, 404, "GET /metricsx must be 404");

    let sent = send_known_traffic(&t, c);

    let dir = PathBuf::from(std::env::temp_dir()).join(common::unique("dpprom"));
    std::fs::create_dir_all(&dir).unwrap();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: datapath\n    static_configs:\n      - targets: ['{listen}']\n"
        ),
    )
    .unwrap();
    let web = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let prom = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian's package, installed by scripts/tools)");
    let _prom = Kid(prom, "prometheus");
    wait_http(web, "/-/ready", "prometheus");

    let q = format!(
        "/api/v1/query?query=datapath_published_bytes_total%7Bport%3D%22{TCP_PORT}%22%2Cproto%3D%22tcp%22%2Cdirection%3D%22in%22%7D"
    );
    let t0 = Instant::now();
    let mut last = String::new();
    let got = loop {
        if let Ok((200, body)) = http_get(web, &q) {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if let Some(s) = v["data"]["result"][0]["value"][1].as_str() {
                let n: f64 = s.parse().unwrap();
                if n as u64 == sent.tcp_in.1 {
                    break n as u64;
                }
            }
            last = body;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "Prometheus never returned {} bytes for port {TCP_PORT}: {last}", sent.tcp_in.1);
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(got, sent.tcp_in.1);

    // SIGTERM ends the server cleanly.
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) }, 0);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "metrics --listen did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "metrics --listen exited with {status} on SIGTERM");
    let _ = server.1;
}

/// Bad arguments: one line, non-zero, nothing served.
#[test]
fn metrics_listen_refuses_bad_addresses() {
    if !privileged("metrics_listen_refuses_bad_addresses") {
        return;
    }
    let ctl = Ctl::new();
    ctl.run(&["load"]);
    for bad in ["nonsense", "127.0.0.1", &format!("{}:1", "9".repeat(100))] {
        let out = ctl.command(&["metrics", "--listen", bad]).output().unwrap();
        assert!(!out.status.success(), "--listen {bad} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.len() < 200, "input cut: {err}");
    }
    // A port someone else listens on: one clear line.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = ctl.command(&["metrics", "--listen", &addr]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr) && err.trim().lines().count() == 1, "{err}");
}

/// The metric families `metrics` exposes.
const FAMILIES: [&str; 8] = [
    "datapath_packets_total",
    "datapath_bytes_total",
    "datapath_published_packets_total",
    "datapath_published_bytes_total",
    "datapath_published_connections_total",
    "datapath_map_entries",
    "datapath_map_capacity",
    "datapath_build_info",
];

/// The Grafana dashboard loads as is: a dashboard object with a uid,
/// title, schema version and panels, the Prometheus data source a
/// variable that every panel and query uses, and queries that name only
/// metrics `metrics` exposes (all of which the test above checks exist).
#[test]
fn grafana_dashboard_uses_the_exposed_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/grafana/datapath.json");
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON");
    for k in ["uid", "title"] {
        assert!(d[k].as_str().is_some_and(|s| !s.is_empty()), "dashboard without {k}");
    }
    assert!(d["schemaVersion"].as_u64().unwrap_or(0) >= 30, "schemaVersion");
    assert!(d.get("id").is_none_or(|v| v.is_null()), "an id would tie the file to one Grafana");
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    assert!(
        vars.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "no Prometheus data source variable"
    );
    let panels = d["panels"].as_array().expect("panels");
    let mut queries = 0;
    let mut used = std::collections::BTreeSet::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap_or("?");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {title}: data source is not the variable");
        for gp in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][gp].is_u64(), "panel {title}: gridPos.{gp}");
        }
        for t in p["targets"].as_array().unwrap_or_else(|| panic!("panel {title} has no targets")) {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "panel {title}: query data source");
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("panel {title}: query without expr"));
            queries += 1;
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("datapath_") {
                    assert!(FAMILIES.contains(&word), "panel {title}: {word} is not exposed");
                    used.insert(word.to_string());
                }
            }
        }
    }
    assert!(queries >= 6, "{queries} queries");
    for must in ["datapath_published_bytes_total", "datapath_packets_total", "datapath_map_entries", "datapath_map_capacity"] {
        assert!(used.contains(must), "no panel shows {must}");
    }
}
