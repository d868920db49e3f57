//! Per-port traffic (`map dnat list --stats`) and the Prometheus exposition
//! (`metrics`, `metrics --listen`). Everything is read from the maps at the
//! moment it is asked for: nothing is kept between two scrapes.

use std::fs;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use libbpf_rs::MapCore as _;
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use serde::Serialize;

use crate::kernel::pins::PinRoot;
use crate::maps::{self, bulk, name, published, PortCounters, Published};

/// A published port with its counters.
#[derive(Clone, Debug, Serialize)]
pub struct PortStats {
    #[serde(flatten)]
    pub published: Published,
    pub stats: PortCounters,
}

/// `map dnat list --stats`: every mapping with the counters of its slot.
pub fn port_stats(pins: &PinRoot) -> Result<Vec<PortStats>> {
    let list = published::list(pins)?;
    let counters = bulk::port_counters_all(&maps::open(pins, name::PORT_STATS)?)?;
    Ok(list
        .into_iter()
        .map(|p| {
            let stats = counters.get(p.slot as usize).copied().unwrap_or_default();
            PortStats { published: p, stats }
        })
        .collect())
}

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

fn family(name: &str, help: &str, ty: MetricType) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(ty);
    f
}

fn counter(labels: Vec<LabelPair>, v: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v as f64);
    let mut m = Metric::from_label(labels);
    m.set_counter(c);
    m
}

fn gauge(labels: Vec<LabelPair>, v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::from_label(labels);
    m.set_gauge(g);
    m
}

/// The metric families, read from the maps now.
pub fn families(pins: &PinRoot) -> Result<Vec<MetricFamily>> {
    pins.require_loaded()?;
    let mut out = Vec::new();

    let stats = maps::read_stats(&maps::open(pins, name::STATS)?)?;
    let mut packets = family(
        "datapath_packets_total",
        "Packets per program and verdict reason, summed over CPUs.",
        MetricType::COUNTER,
    );
    let mut bytes = family(
        "datapath_bytes_total",
        "Bytes (frames as the program saw them) per program and verdict reason.",
        MetricType::COUNTER,
    );
    for c in &stats {
        let l = || vec![label("program", &c.program), label("reason", &c.reason)];
        packets.mut_metric().push(counter(l(), c.packets));
        bytes.mut_metric().push(counter(l(), c.bytes));
    }
    out.push(packets);
    out.push(bytes);

    let ports = port_stats(pins)?;
    let mut pp = family(
        "datapath_published_packets_total",
        "Packets of a published port, towards the container (in) and back (out).",
        MetricType::COUNTER,
    );
    let mut pb = family(
        "datapath_published_bytes_total",
        "Bytes of a published port (frames as seen at TC), towards the container (in) and back (out).",
        MetricType::COUNTER,
    );
    let mut pc = family(
        "datapath_published_connections_total",
        "New connections of a published port: TCP SYNs taken, UDP flows recorded.",
        MetricType::COUNTER,
    );
    for p in &ports {
        let m = &p.published.mapping;
        let (ext, port, proto) = (m.ext_addr.to_string(), m.host_port.to_string(), m.proto.to_string());
        let l = |dir: Option<&str>| {
            let mut v = vec![label("ext_addr", &ext), label("port", &port), label("proto", &proto)];
            if let Some(d) = dir {
                v.push(label("direction", d));
            }
            v
        };
        pp.mut_metric().push(counter(l(Some("in")), p.stats.pkts_in));
        pp.mut_metric().push(counter(l(Some("out")), p.stats.pkts_out));
        pb.mut_metric().push(counter(l(Some("in")), p.stats.bytes_in));
        pb.mut_metric().push(counter(l(Some("out")), p.stats.bytes_out));
        pc.mut_metric().push(counter(l(None), p.stats.conns));
    }
    out.push(pp);
    out.push(pb);
    out.push(pc);

    let mut entries = family(
        "datapath_map_entries",
        "Entries a map holds now (arrays: their size; ring buffers: 0).",
        MetricType::GAUGE,
    );
    let mut capacity = family(
        "datapath_map_capacity",
        "Entries a map can hold (ring buffers: bytes).",
        MetricType::GAUGE,
    );
    let mut names: Vec<String> = fs::read_dir(pins.maps_dir())
        .with_context(|| format!("reading {}", pins.maps_dir().display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    for n in names {
        let map = maps::open(pins, &n)?;
        entries.mut_metric().push(gauge(vec![label("map", &n)], bulk::count_entries(&map)? as f64));
        capacity.mut_metric().push(gauge(vec![label("map", &n)], map.max_entries() as f64));
    }
    out.push(entries);
    out.push(capacity);

    let mut build = family("datapath_build_info", "The datapathctl build serving these metrics.", MetricType::GAUGE);
    build.mut_metric().push(gauge(vec![label("version", env!("CARGO_PKG_VERSION"))], 1.0));
    out.push(build);
    Ok(out)
}

/// `metrics`: the Prometheus text exposition (format 0.0.4).
pub fn text(pins: &PinRoot) -> Result<String> {
    let fams = families(pins)?;
    prometheus::TextEncoder::new().encode_to_string(&fams).map_err(|e| anyhow!("encoding metrics: {e}"))
}

/// `metrics --listen`: serves `GET /metrics` (anything else: 404, other
/// methods: 405) until `stop` is set, reading the maps for every scrape.
/// A scrape that fails answers 500 with the error, and the server goes on.
pub fn serve(pins: &PinRoot, addr: SocketAddr, stop: &AtomicBool, mut on_ready: impl FnMut(SocketAddr)) -> Result<()> {
    pins.require_loaded()?;
    let server = tiny_http::Server::http(addr).map_err(|e| anyhow!("listening on {addr}: {e}"))?;
    let bound = server.server_addr().to_ip().with_context(|| format!("listening on {addr}: not an IP socket"))?;
    on_ready(bound);
    let header = |k: &str, v: &str| tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("valid header");
    while !stop.load(Ordering::Relaxed) {
        let Some(req) = server.recv_timeout(Duration::from_millis(200)).context("accepting a request")? else {
            continue;
        };
        let path = req.url().split('?').next().unwrap_or("").to_string();
        let resp = if path != "/metrics" {
            tiny_http::Response::from_string("not found: the metrics are at /metrics\n").with_status_code(404)
        } else if !matches!(req.method(), tiny_http::Method::Get | tiny_http::Method::Head) {
            tiny_http::Response::from_string("method not allowed\n")
                .with_status_code(405)
                .with_header(header("Allow", "GET, HEAD"))
        } else {
            match text(pins) {
                Ok(body) => tiny_http::Response::from_string(body).with_header(header("Content-Type", CONTENT_TYPE)),
                Err(e) => {
                    log::warn!("scrape failed: {e:#}");
                    tiny_http::Response::from_string(format!("{e:#}\n")).with_status_code(500)
                }
            }
        };
        if let Err(e) = req.respond(resp) {
            log::info!("answering a scrape: {e}");
        }
    }
    Ok(())
}
