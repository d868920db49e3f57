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

// ---------------------------------------------------------------------
// trace

/// A running `datapathctl trace --json`: its output lines as they come.
struct Tracer {
    child: Child,
    out: std::sync::mpsc::Receiver<String>,
    err: std::sync::mpsc::Receiver<String>,
}

fn lines_of(r: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(std::io::BufReader::new(r)).map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

impl Tracer {
    /// Starts a trace (`-n` the topology's host namespace) and waits until
    /// it says it is tracing.
    fn start(t: &Topo, args: &[&str]) -> Self {
        let mut a = vec!["-n", t.host.as_str(), "trace", "--json"];
        a.extend_from_slice(args);
        let mut child = t.ctl.command(&a).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("trace");
        let out = lines_of(child.stdout.take().unwrap());
        let err = lines_of(child.stderr.take().unwrap());
        let l = err.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("trace {args:?} never started"));
        assert!(l.contains("tracing"), "trace {args:?}: {l}");
        Self { child, out, err }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits for the process to end (after a signal, or by itself).
    fn wait(mut self) -> (std::process::ExitStatus, Vec<serde_json::Value>, String) {
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "trace did not end");
            std::thread::sleep(Duration::from_millis(20));
        };
        let events = self.out.iter().map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
        let err = self.err.iter().collect::<Vec<_>>().join("\n");
        (status, events, err)
    }

    /// Ctrl-C, and what it printed.
    fn stop(self) -> (Vec<serde_json::Value>, String) {
        self.signal(libc::SIGINT);
        let (status, events, err) = self.wait();
        assert!(status.success(), "trace exited with {status} on SIGINT: {err}");
        (events, err)
    }
}

fn pins_of(t: &Topo) -> datapath::kernel::pins::PinRoot {
    datapath::kernel::pins::PinRoot::new(&t.ctl.root)
}

fn emitting(t: &Topo) -> bool {
    datapath::ops::trace::emitting(&pins_of(t)).unwrap()
}

fn tuple_has_port(v: &serde_json::Value, p: u16) -> bool {
    ["before", "after"].iter().any(|k| v[k]["sport"] == p || v[k]["dport"] == p)
}

fn tuple_has_addr(v: &serde_json::Value, a: &str) -> bool {
    ["before", "after"].iter().any(|k| v[k]["src"] == a || v[k]["dst"] == a)
}

/// Traffic of every kind the filters tell apart: TCP through 30001, UDP
/// through 30002, and a datagram the container may not send (dropped).
fn mixed_traffic(t: &Topo, c: usize) {
    let l = tcp_listen(&t.ctrs[c].ns, CTR_PORT);
    let mut p = t.player_connect(TCP_PORT, CONNECT).expect("player connects");
    let (mut s, _) = accept(&l, CONNECT).expect("container accepts");
    p.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    s.write_all(&b).unwrap();
    p.read_exact(&mut b).unwrap();
    let srv = udp_bind(&t.ctrs[c].ns, any(CTR_PORT));
    let ps = udp_bind(&t.player, any(0));
    ps.send_to(b"udp", sa(EXT_IP, UDP_PORT)).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = srv.recv_from(&mut buf).unwrap();
    srv.send_to(&buf[..n], from).unwrap();
    ps.recv_from(&mut buf).unwrap();
    // UDP to a port other than 53 from a container: tproxy drops it.
    let stray = udp_bind(&t.ctrs[c].ns, any(0));
    stray.send_to(b"stray", sa(PLAYER_IP, 5000)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
}

/// A player's connection: the guard passes the SYN, dnat redirects it
/// with the tuple before (player -> external address:30001) and after
/// (player -> container:25565) the rewrite, then snat redirects the
/// container's SYN-ACK (container:25565 -> player becomes external
/// address:30001 -> player), in that order; Ctrl-C ends the trace and
/// switches emission off.
#[test]
fn trace_shows_a_players_connection_in_order() {
    if !privileged("trace_shows_a_players_connection_in_order") {
        return;
    }
    let (t, c) = setup();
    assert!(!emitting(&t), "emission on before any trace");
    let tr = Tracer::start(&t, &["--port", &TCP_PORT.to_string()]);
    assert!(emitting(&t), "emission off while a trace runs");
    let l = tcp_listen(&t.ctrs[c].ns, CTR_PORT);
    let mut p = t.player_connect(TCP_PORT, CONNECT).expect("player connects");
    let (mut s, _) = accept(&l, CONNECT).expect("container accepts");
    p.write_all(b"hello").unwrap();
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (ev, err) = tr.stop();
    assert!(!emitting(&t), "emission still on after Ctrl-C");
    assert!(err.contains("events, 0 lost"), "summary: {err}");

    let player = p.local_addr().unwrap();
    let (pl_ip, pl_port) = (player.ip().to_string(), player.port());
    let ext = EXT_IP.to_string();
    let ctr = t.ctrs[c].ip.to_string();
    let pos = |what: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        ev.iter().position(|e| f(e)).unwrap_or_else(|| panic!("no {what} event in {ev:#?}"))
    };
    let guard = pos("guard", &|e| e["program"] == "guard" && e["iface"] == t.ext.as_str() && e["before"]["sport"] == pl_port);
    let dnat = pos("dnat redirect", &|e| e["program"] == "dnat" && e["reason"] == "redirect");
    let snat = pos("snat redirect", &|e| e["program"] == "snat" && e["reason"] == "redirect");
    assert!(guard < dnat && dnat < snat, "order guard {guard}, dnat {dnat}, snat {snat}: {ev:#?}");
    let d = &ev[dnat];
    assert_eq!(d["verdict"], "redirect", "{d}");
    assert_eq!(d["proto"], "tcp", "{d}");
    assert_eq!(d["iface"], t.ext.as_str(), "{d}");
    assert_eq!(d["before"], serde_json::json!({"src": pl_ip, "sport": pl_port, "dst": ext, "dport": TCP_PORT}), "{d}");
    assert_eq!(d["after"], serde_json::json!({"src": pl_ip, "sport": pl_port, "dst": ctr, "dport": CTR_PORT}), "{d}");
    assert_eq!(d["len"], 74, "a SYN's frame: {d}");
    let s_ = &ev[snat];
    assert_eq!(s_["iface"], t.ctrs[c].veth.as_str(), "{s_}");
    assert_eq!(s_["before"], serde_json::json!({"src": ctr, "sport": CTR_PORT, "dst": pl_ip, "dport": pl_port}), "{s_}");
    assert_eq!(s_["after"], serde_json::json!({"src": ext, "sport": TCP_PORT, "dst": pl_ip, "dport": pl_port}), "{s_}");
    assert!(d["time"].as_str().is_some_and(|s| s.ends_with('Z')), "{d}");
    assert!(ev[snat]["ktime_ns"].as_u64() > d["ktime_ns"].as_u64(), "times in order");
    // The text form of the same kind of event.
    let text = Tracer::start(&t, &[]);
    text.signal(libc::SIGTERM);
    let (status, _, _) = text.wait();
    assert!(status.success());
}

/// Each filter narrows the output to what it names, in the kernel; the
/// unfiltered trace of the same traffic shows more.
#[test]
fn trace_filters_narrow_the_output() {
    if !privileged("trace_filters_narrow_the_output") {
        return;
    }
    let (t, c) = setup();
    let run = |args: &[&str]| -> Vec<serde_json::Value> {
        let tr = Tracer::start(&t, args);
        mixed_traffic(&t, c);
        let (ev, err) = tr.stop();
        assert!(!ev.is_empty(), "trace {args:?} showed nothing: {err}");
        assert!(!emitting(&t));
        ev
    };
    let all = run(&[]);
    let ctr = t.ctrs[c].ip.to_string();
    let has = |ev: &[serde_json::Value], f: &dyn Fn(&serde_json::Value) -> bool| ev.iter().any(|e| f(e));
    // The unfiltered trace holds events every filter below leaves out.
    assert!(has(&all, &|e| tuple_has_port(e, TCP_PORT)) && has(&all, &|e| tuple_has_port(e, UDP_PORT)));
    assert!(has(&all, &|e| e["drop"] == true) && has(&all, &|e| e["drop"] == false));
    assert!(has(&all, &|e| e["iface"] == t.ext.as_str()) && has(&all, &|e| e["iface"] == t.ctrs[c].veth.as_str()));
    assert!(has(&all, &|e| !tuple_has_addr(e, &ctr)), "every event has the container's address");

    let ev = run(&["--port", &UDP_PORT.to_string()]);
    assert!(ev.iter().all(|e| tuple_has_port(e, UDP_PORT)), "--port: {ev:#?}");
    let ev = run(&["--addr", &ctr]);
    assert!(ev.iter().all(|e| tuple_has_addr(e, &ctr)), "--addr: {ev:#?}");
    let ev = run(&["--iface", &t.ext]);
    assert!(ev.iter().all(|e| e["iface"] == t.ext.as_str()), "--iface: {ev:#?}");
    let ev = run(&["--reason", "snat/redirect"]);
    assert!(ev.iter().all(|e| e["program"] == "snat" && e["reason"] == "redirect"), "--reason: {ev:#?}");
    let ev = run(&["--reason", "snat/redirect", "--reason", "dnat/redirect"]);
    assert!(ev.iter().all(|e| e["reason"] == "redirect") && has(&ev, &|e| e["program"] == "dnat") && has(&ev, &|e| e["program"] == "snat"), "two --reason: {ev:#?}");
    let ev = run(&["--drops"]);
    assert!(ev.iter().all(|e| e["drop"] == true && e["verdict"] == "drop"), "--drops: {ev:#?}");
    assert!(has(&ev, &|e| e["program"] == "tproxy_ingress" && e["reason"] == "udp_dropped"), "--drops: {ev:#?}");

    // --count ends the trace by itself, after exactly N events.
    let tr = Tracer::start(&t, &["--count", "3"]);
    mixed_traffic(&t, c);
    let (status, ev, err) = tr.wait();
    assert!(status.success(), "{err}");
    assert_eq!(ev.len(), 3, "--count 3: {ev:#?}");
    assert!(!emitting(&t), "emission on after --count");

    // Unknown reasons and bad filters: one line, nothing switched on.
    for bad in [&["--reason", "nonsense"][..], &["--addr", "10.0.0"], &["--port", "0"], &["--iface", "nosuchif0"]] {
        let mut a = vec!["-n", t.host.as_str(), "trace"];
        a.extend_from_slice(bad);
        let out = t.ctl.command(&a).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.trim().lines().count() == 1, "trace {bad:?}: {err}");
        assert!(!emitting(&t), "trace {bad:?} switched emission on");
    }
}

/// Emission is off after SIGINT and SIGTERM; after SIGKILL it stays on
/// until the next datapathctl command, whichever it is. A second trace is
/// refused while one runs.
#[test]
fn trace_emission_is_off_however_the_trace_ends() {
    if !privileged("trace_emission_is_off_however_the_trace_ends") {
        return;
    }
    let (t, _) = setup();
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let tr = Tracer::start(&t, &[]);
        assert!(emitting(&t));
        tr.signal(sig);
        let (status, _, err) = tr.wait();
        assert!(status.success(), "signal {sig}: {status} {err}");
        assert!(!emitting(&t), "emission on after signal {sig}");
    }
    let tr = Tracer::start(&t, &[]);
    let second = t.ctl.command(&["trace"]).output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success() && err.contains("running already") && err.trim().lines().count() == 1, "{err}");
    assert!(emitting(&t), "a refused trace switched emission off");
    tr.signal(libc::SIGKILL);
    let (status, _, _) = tr.wait();
    assert!(!status.success());
    assert!(emitting(&t), "nothing turned emission off yet after SIGKILL");
    t.ctl.run(&["stats"]);
    assert!(!emitting(&t), "the next command did not turn off the emission of a killed trace");
    // And a new trace may start.
    let tr = Tracer::start(&t, &[]);
    tr.stop();
}

/// A flood larger than the ring buffer: the events that did not fit are
/// counted per CPU and reported by trace, on stderr and in the JSON stream.
#[test]
fn trace_reports_lost_events() {
    if !privileged("trace_reports_lost_events") {
        return;
    }
    let (t, _) = setup();
    let tr = Tracer::start(&t, &["--reason", "dnat/miss"]);
    let pins = pins_of(&t);
    let dnat = datapath::kernel::attach::obj_get(&pins.prog("dnat")).unwrap();
    let frame = common::packet::Pkt::udp((Ipv4Addr::new(198, 51, 100, 7), 1000), (Ipv4Addr::new(198, 51, 100, 8), 9)).build();
    // 300,000 events of 120 bytes in one system call: 36 MB for a 1 MiB ring.
    let out = common::test_run(&dnat, &frame, 0, 300_000);
    assert_eq!(out.verdict, common::TC_ACT_UNSPEC);
    std::thread::sleep(Duration::from_millis(500));
    let (ev, err) = tr.stop();
    let lost_map = datapath::maps::open(&pins, "trace_lost").unwrap();
    let lost = datapath::ops::trace::lost(&lost_map).unwrap();
    assert!(lost > 0, "nothing lost: the flood fit the ring");
    let reported: u64 = ev.iter().filter_map(|e| e["lost"].as_u64()).sum();
    assert_eq!(reported, lost, "JSON lost records: {reported}, trace_lost: {lost}");
    assert!(err.contains("events lost"), "stderr: {err}");
    assert!(err.contains(&format!("{lost} lost")), "summary: {err}");
    let shown = ev.iter().filter(|e| e["program"] == "dnat").count() as u64;
    assert!(shown > 0, "no events at all");
    assert_eq!(shown + lost, 300_000, "every event of the flood is shown or counted lost");
}
