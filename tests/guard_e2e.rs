//! The guard end to end, on the topology of `common::topo` wired by the
//! real `datapathctl` (`attach dnat` puts the guard on the external
//! interface's XDP hook):
//!
//! - a flood generator in the player's namespace (`common::flood`, raw
//!   frames as fast as the machine allows) sends spoofed SYNs from four
//!   million sources at a published Java port and spoofed UDP at a
//!   published Bedrock port, plus both from a denied range, while a real
//!   player (npm minecraft-protocol) logs in and plays through the Java
//!   port: the player succeeds within 5 s (or three times its login
//!   without a flood, on a machine that busy) with a stable round trip, and
//!   nothing from the denied range reaches the container;
//! - a denied address gets no TCP connection and no UDP answer, and does
//!   again once the entry is deleted;
//! - a bot over its SYN limit is blocked (while a player is not), listed
//!   by `guard list-blocked`, and released after `--block-for`.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::flood::{Flood, FloodClass, FloodLink};
use common::privileged;
use common::realsw::*;
use common::topo::*;

const JAVA_PORT: u16 = 30001;
const BEDROCK_PORT: u16 = 30002;
const BEDROCK_CTR_PORT: u16 = 19132;
const DENIED: &str = "198.18.0.0/15";

/// The flood takes every cycle it can get: the tests of this file run one
/// at a time, so that what the other does cannot disturb the round trips.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts the datagrams a UDP socket receives, and those from a prefix.
struct Sink {
    total: Arc<AtomicU64>,
    from_denied: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    h: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    fn start(s: UdpSocket, denied: (Ipv4Addr, u8)) -> Sink {
        let (total, from_denied, stop) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (t, d, st) = (total.clone(), from_denied.clone(), stop.clone());
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mask = u32::MAX << (32 - u32::from(denied.1));
        let net = u32::from(denied.0) & mask;
        let h = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                let Ok((_, from)) = s.recv_from(&mut buf) else { continue };
                t.fetch_add(1, Ordering::Relaxed);
                if let IpAddr::V4(a) = from.ip() {
                    if u32::from(a) & mask == net {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Sink { total, from_denied, stop, h: Some(h) }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.h.take() {
            let _ = h.join();
        }
    }
}

fn player_if(t: &Topo) -> String {
    format!("pl{}", t.id)
}

fn mac_in(ns: &str, ifname: &str) -> [u8; 6] {
    let ifname = ifname.to_string();
    within(ns, move || datapath::net::netif::mac_of(&ifname).expect("interface MAC"))
}

#[test]
fn player_plays_through_a_spoofed_flood() {
    if !privileged("player_plays_through_a_spoofed_flood") {
        return;
    }
    let _serial = serial();
    let mut t = Topo::new();
    let c = t.add_container(true);
    t.publish(JAVA_PORT, c, "tcp", CTR_PORT);
    t.publish(BEDROCK_PORT, c, "udp", BEDROCK_CTR_PORT);
    let status = t.ctl.json(&["status"]);
    let mode = status["attachments"][0]["xdp"].as_str().unwrap_or("?").to_string();
    assert_eq!(mode, "generic", "attach dnat put the guard on the veth's XDP hook, generic: {status}");
    let server = McServer::start(&t.ctrs[c].ns, McServerOpts { port: CTR_PORT, chunks: 8, ..Default::default() });
    let sink = Sink::start(
        udp_bind(&t.ctrs[c].ns, any(BEDROCK_CTR_PORT)),
        (Ipv4Addr::new(198, 18, 0, 0), 15),
    );
    t.ctl.run(&["guard", "deny", "add", DENIED]);
    t.ctl.run(&["guard", "limit", "set", "--syn-rate", "20", "--udp-rate", "200", "--block-for", "10"]);

    // The same login without a flood, for comparison.
    let quiet = Instant::now();
    let r0 = mc_client(&t.player, sa(EXT_IP, JAVA_PORT), "quiet", Duration::from_secs(2));
    let quiet = quiet.elapsed() - Duration::from_secs(2);
    assert!(r0.ok, "login without a flood: {r0:?}\n{}", server.proc.log());

    let link = FloodLink {
        ns: t.player.clone(),
        ifname: player_if(&t),
        src_mac: mac_in(&t.player, &player_if(&t)),
        dst_mac: mac_in(&t.host, &t.ext),
    };
    let class = |base: [u8; 4], span: u32, dport: u16, syn: bool| FloodClass {
        src_base: Ipv4Addr::from(base),
        src_span: span,
        dst: EXT_IP,
        dport,
        syn,
        payload: if syn { Vec::new() } else { vec![0x01; 32] },
    };
    let classes = vec![
        class([100, 64, 0, 0], 1 << 22, JAVA_PORT, true),
        class([100, 64, 0, 0], 1 << 22, BEDROCK_PORT, false),
        class([198, 18, 0, 0], 1 << 17, JAVA_PORT, true),
        class([198, 18, 0, 0], 1 << 17, BEDROCK_PORT, false),
    ];
    let before = t.ctl.stats();
    let flood = Flood::start(&link, classes, 1, None);
    std::thread::sleep(Duration::from_secs(1));

    let play = Duration::from_secs(3);
    let started = Instant::now();
    let r = mc_client(&t.player, sa(EXT_IP, JAVA_PORT), "steve", play);
    let took = started.elapsed().saturating_sub(play);
    let (sent, dur) = flood.stop();
    std::thread::sleep(Duration::from_millis(300));
    let after = t.ctl.stats();
    let total: u64 = sent.iter().sum();
    let pps = total as f64 / dur.as_secs_f64();
    let what = format!(
        "player under a flood of {total} frames in {:.1} s ({:.0}/s; guard in {mode} XDP)",
        dur.as_secs_f64(),
        pps
    );
    eprintln!("{what}: quiet login {quiet:?}, under the flood {took:?}, report {r:?}");
    eprintln!("sent per class {sent:?}; stats moved: {:?}", stat_deltas(&before, &after));

    assert!(r.ok && r.complete, "{what}: the player failed: {r:?}\nserver log:\n{}", server.proc.log());
    // 5 s at most; on a machine so busy that the login without a flood
    // takes long too, three times that login.
    let limit = Duration::from_secs(5).max(quiet * 3);
    assert!(took <= limit, "{what}: the player took {took:?} to log in and join ({limit:?} at most; {quiet:?} without a flood)");
    let rtt = r.rtt.as_ref().unwrap_or_else(|| panic!("{what}: no round trips: {r:?}"));
    assert!(rtt.lost == 0 && rtt.count >= 10, "{what}: round trips {rtt:?}");
    let (median, max) = (rtt.median_ms.unwrap(), rtt.max_ms.unwrap());
    assert!(median < 100.0 && max < 1000.0, "{what}: round trip not stable: {rtt:?}");

    // The flood reached the guard and went on where the policy lets it.
    assert!(total > 50_000, "{what}: the generator sent only {total} frames");
    let denied = delta(&before, &after, "guard/denied");
    let admitted = delta(&before, &after, "guard/admitted");
    assert!(denied > 0 && denied <= sent[2] + sent[3], "{what}: guard/denied moved by {denied}, sent {sent:?}");
    assert!(admitted > 0, "{what}: nothing admitted");
    let got = sink.total.load(Ordering::Relaxed);
    assert!(got > 0, "{what}: no spoofed UDP reached the container, so the next check proves nothing");
    assert_eq!(sink.from_denied.load(Ordering::Relaxed), 0, "{what}: UDP from the denied range {DENIED} got through");
    let logins: Vec<String> = server
        .proc
        .events()
        .iter()
        .filter(|v| v["event"] == "login")
        .map(|v| v["address"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(logins.iter().all(|a| !a.starts_with("198.1")), "{what}: a login from the denied range: {logins:?}");
}

fn stat_deltas(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> Vec<(String, u64)> {
    after
        .iter()
        .filter_map(|(k, a)| {
            let d = a - before.get(k).copied().unwrap_or(0);
            (d != 0).then(|| (k.clone(), d))
        })
        .collect()
}

fn connects(ns: &str, from: Ipv4Addr, timeout: Duration) -> bool {
    tcp_connect_from(ns, SocketAddr::from((from, 0)), sa(EXT_IP, JAVA_PORT), timeout).is_ok()
}

fn udp_answered(ns: &str, from: Ipv4Addr) -> bool {
    let s = udp_bind(ns, SocketAddr::from((from, 0)));
    s.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    s.send_to(b"ping", sa(EXT_IP, BEDROCK_PORT)).unwrap();
    let mut buf = [0u8; 64];
    matches!(s.recv_from(&mut buf), Ok((4, _)))
}

#[test]
fn denied_range_and_a_bot_over_its_limit() {
    if !privileged("denied_range_and_a_bot_over_its_limit") {
        return;
    }
    let _serial = serial();
    let mut t = Topo::new();
    let c = t.add_container(true);
    t.publish(JAVA_PORT, c, "tcp", CTR_PORT);
    t.publish(BEDROCK_PORT, c, "udp", BEDROCK_CTR_PORT);
    let _tcp = EchoServer::tcp(tcp_listen(&t.ctrs[c].ns, CTR_PORT));
    let _udp = EchoServer::udp(udp_bind(&t.ctrs[c].ns, any(BEDROCK_CTR_PORT)));
    let denied = Ipv4Addr::new(10, 98, 0, 77);
    let bot = Ipv4Addr::new(10, 98, 0, 200);
    for a in [denied, bot] {
        ip(&format!("-n {} addr add {a}/24 dev {}", t.player, player_if(&t)));
    }
    assert!(connects(&t.player, denied, IO_TIMEOUT), "before any deny entry, {denied} connects");
    assert!(udp_answered(&t.player, denied), "before any deny entry, {denied} gets UDP answers");

    let before = t.ctl.stats();
    t.ctl.run(&["guard", "deny", "add", "10.98.0.64/26"]);
    assert!(!connects(&t.player, denied, Duration::from_millis(1500)), "{denied} in 10.98.0.64/26 connected");
    assert!(!udp_answered(&t.player, denied), "{denied} in 10.98.0.64/26 got a UDP answer");
    assert!(connects(&t.player, PLAYER_IP, IO_TIMEOUT), "the player outside the denied range connects");
    assert!(udp_answered(&t.player, PLAYER_IP), "the player outside the denied range gets UDP answers");
    assert!(delta(&before, &t.ctl.stats(), "guard/denied") >= 2, "the guard counted the denied packets");
    t.ctl.run(&["guard", "deny", "del", "10.98.0.64/26"]);
    assert!(connects(&t.player, denied, IO_TIMEOUT), "after deny del, {denied} connects again");

    // The bot opens six connections at once: two get through (the burst),
    // the third SYN blocks it for 3 s.
    t.ctl.run(&["guard", "limit", "set", "--syn-rate", "1", "--syn-burst", "2", "--block-for", "3"]);
    let before = t.ctl.stats();
    let tries: Vec<_> = (0..6)
        .map(|_| {
            let ns = t.player.clone();
            std::thread::spawn(move || connects(&ns, bot, Duration::from_millis(700)))
        })
        .collect();
    let blocked_at = Instant::now();
    let ok = tries.into_iter().map(join).filter(|&c| c).count();
    eprintln!("bot: {ok} connected; stats moved {:?}; blocked {}", stat_deltas(&before, &t.ctl.stats()), t.ctl.run(&["guard", "list-blocked"]));
    assert_eq!(ok, 2, "of the bot's six simultaneous connections, the burst of two gets through");
    let listed = t.ctl.json(&["guard", "list-blocked"]);
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 1, "one source blocked: {listed}");
    assert_eq!(rows[0]["addr"], bot.to_string(), "{listed}");
    assert_eq!(rows[0]["class"], "syn", "{listed}");
    assert!(rows[0]["remaining"].as_u64().unwrap() <= 3, "{listed}");
    assert!(connects(&t.player, PLAYER_IP, IO_TIMEOUT), "the player is not blocked with the bot");
    let after = t.ctl.stats();
    assert!(delta(&before, &after, "guard/syn_limited") >= 1, "the SYN over the limit was counted");
    assert!(delta(&before, &after, "guard/blocked") >= 1, "SYNs of the blocked bot were counted");

    // Released after --block-for (and its bucket has refilled by then).
    while blocked_at.elapsed() < Duration::from_millis(3300) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(t.ctl.json(&["guard", "list-blocked"]), serde_json::json!([]), "the block is over");
    assert!(connects(&t.player, bot, IO_TIMEOUT), "the bot connects again after --block-for");
}
