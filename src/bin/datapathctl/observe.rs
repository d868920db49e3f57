//! Rendering of the commands that show what the datapath does:
//! `map dnat list --stats`, `metrics`, `trace`.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};

use datapath::kernel::pins::PinRoot;
use datapath::ops::{metrics, trace};

pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| "expected ADDR:PORT, e.g. 0.0.0.0:9469".to_string())
}

/// `map dnat list --stats`.
pub fn dnat_list_stats(pins: &PinRoot, json: bool) -> Result<()> {
    let list = metrics::port_stats(pins)?;
    super::print(json, &list, |l| {
        let mut s = format!(
            "{:<28} {:<21} {:>12} {:>14} {:>12} {:>14} {:>11}",
            "PUBLISHED", "CONTAINER", "PACKETS-IN", "BYTES-IN", "PACKETS-OUT", "BYTES-OUT", "CONNECTIONS"
        );
        for p in l {
            let m = &p.published.mapping;
            let port = format!("{}:{}/{}", m.ext_addr, m.host_port, m.proto);
            let ctr = format!("{}:{}", m.ctr_ip, m.ctr_port);
            let c = &p.stats;
            s.push_str(&format!(
                "\n{:<28} {:<21} {:>12} {:>14} {:>12} {:>14} {:>11}",
                port, ctr, c.pkts_in, c.bytes_in, c.pkts_out, c.bytes_out, c.conns
            ));
        }
        s
    })
}

/// `metrics [--listen ADDR:PORT]`.
pub fn metrics(pins: &PinRoot, listen: Option<SocketAddr>) -> Result<()> {
    let Some(addr) = listen else {
        let text = metrics::text(pins)?;
        std::io::stdout().write_all(text.as_bytes()).context("writing the metrics")?;
        return Ok(());
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed)).context("installing the signal handler")?;
    metrics::serve(pins, addr, &stop, |bound| {
        // The bound address (the port, when 0 was asked for) on stdout,
        // for whoever started the server.
        println!("serving http://{bound}/metrics");
        let _ = std::io::stdout().flush();
    })
}

pub fn parse_addr(s: &str) -> Result<std::net::IpAddr, String> {
    s.parse().map_err(|_| format!("invalid address '{}': expected an IPv4 or IPv6 address", super::cut(s)))
}

pub struct TraceArgs {
    pub port: Option<u16>,
    pub addr: Option<std::net::IpAddr>,
    pub iface: Option<String>,
    pub reasons: Vec<String>,
    pub drops: bool,
    pub count: Option<u64>,
}

fn trace_line(e: &trace::Event) -> String {
    let time = e.time.get(11..e.time.len() - 1).unwrap_or(&e.time);
    let iface = match (&e.iface, e.ifindex) {
        (_, 0) => "-".to_string(),
        (Some(n), _) => n.clone(),
        (None, i) => format!("if{i}"),
    };
    let mut s = format!("{time} {:<14} {:<18} {:<8} {:<12}", e.program, e.reason, e.verdict, iface);
    match (&e.before, &e.after) {
        (Some(b), Some(a)) if a != b => s.push_str(&format!(" {} {b} => {a}", e.proto.as_deref().unwrap_or("-"))),
        (Some(b), _) => s.push_str(&format!(" {} {b}", e.proto.as_deref().unwrap_or("-"))),
        _ => s.push_str(" (no IP header)"),
    }
    s.push_str(&format!(" len {}", e.len));
    s
}

/// `trace`: events until Ctrl-C, SIGTERM or --count; emission is off
/// again whichever way it ends (the session turns it off when dropped).
pub fn trace(pins: &PinRoot, netns: Option<&str>, json: bool, a: TraceArgs) -> Result<()> {
    let ifindex = match &a.iface {
        None => None,
        Some(spec) => {
            let _ns = datapath::net::netns::NetnsGuard::enter(netns)?;
            Some(datapath::net::netif::resolve(spec)?.index)
        }
    };
    let filter = trace::Filter { port: a.port, addr: a.addr, ifindex, reasons: trace::parse_reasons(&a.reasons)?, drops: a.drops };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed)).context("installing the signal handler")?;
    let session = trace::Session::start(pins, &filter)?;
    eprintln!("datapathctl: tracing (Ctrl-C to stop)");
    let out = std::io::stdout();
    let summary = session.run(
        netns,
        &stop,
        a.count,
        |e| {
            let line = if json { serde_json::to_string(&e)? } else { trace_line(&e) };
            let mut o = out.lock();
            // A closed pipe (`| head`) ends the trace like Ctrl-C.
            Ok(writeln!(o, "{line}").and_then(|()| o.flush()).is_ok())
        },
        |n| {
            if json {
                let mut o = out.lock();
                let _ = writeln!(o, "{}", serde_json::json!({ "lost": n })).and_then(|()| o.flush());
            }
            eprintln!("datapathctl: {n} events lost (the ring buffer was full)");
        },
    );
    session.stop()?;
    let s = summary?;
    eprintln!("datapathctl: {} events, {} lost", s.events, s.lost);
    Ok(())
}
