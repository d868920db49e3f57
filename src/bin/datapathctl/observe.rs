//! Rendering of the commands that show what the datapath does:
//! `map dnat list --stats`, `metrics`.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};

use datapath::kernel::pins::PinRoot;
use datapath::ops::metrics;

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
