//! datapathctl: loads, attaches and manages the datapath's eBPF programs.
//! This file only parses the command line, sets up logging and dispatches.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{ArgAction, Parser, Subcommand};
use serde::Serialize;

use datapath::kernel::attach::Kind;
use datapath::abi::{Proto, AF_INET, AF_INET6};
use datapath::maps::containers::{Port, Record};
use datapath::ops::container::{self, Spec};
use datapath::ops::setup::SetupOptions;
use datapath::ops::{self, DnatAdd, LoadOptions};
use datapath::maps::guard::{Cidr, LimitChange};
use datapath::maps::{Change, Ext};
use datapath::net::netif;
use datapath::kernel::pins::{PinRoot, DEFAULT_PIN_ROOT};

mod observe;

/// Loads, attaches and manages the datapath's eBPF programs and maps.
#[derive(Parser, Debug)]
#[command(name = "datapathctl", version, about)]
struct Cli {
    /// bpffs directory holding the pinned maps, programs and links.
    #[arg(long, global = true, env = "DATAPATH_PIN_ROOT", default_value = DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Named network namespace (/run/netns/NAME) for interface operations, like `ip -n`.
    #[arg(short = 'n', long, global = true, value_name = "NAME")]
    netns: Option<String>,
    /// More log output on stderr (-v: info, -vv: debug, including libbpf's).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Load and pin programs and maps; on a running system, replace the programs in place.
    Load {
        /// Proxy port for DNS (TCP and UDP to port 53).
        #[arg(long, value_parser = parse_port)]
        proxy_dns_port: Option<u16>,
        /// Proxy port for HTTP (TCP to port 80).
        #[arg(long, value_parser = parse_port)]
        proxy_http_port: Option<u16>,
        /// Proxy port for every other TCP connection.
        #[arg(long, value_parser = parse_port)]
        proxy_tcp_port: Option<u16>,
    },
    /// Detach everything and remove every pin.
    Unload,
    /// Set up the whole host: load, external address, dnat on the external
    /// interface, getsockopt on the proxy's cgroup, host access, the
    /// containers' gateway.
    Setup {
        /// External interface, by name or index.
        #[arg(long, value_name = "IF")]
        external: String,
        /// External IPv4 address (default: the interface's own).
        #[arg(long = "address", value_name = "A", value_parser = parse_ipv4)]
        addresses: Vec<Ipv4Addr>,
        /// cgroup v2 directory of the proxy (default: the cgroup v2 root).
        #[arg(long, value_name = "PATH")]
        proxy_cgroup: Option<PathBuf>,
        /// Address every host veth carries, the containers' gateway
        /// (default 169.254.1.1; changes only while there are no containers).
        #[arg(long, value_name = "A", value_parser = parse_ipv4)]
        gateway: Option<Ipv4Addr>,
        /// cgroup v2 directory whose processes get host access
        /// (default: the cgroup v2 root).
        #[arg(long, value_name = "PATH", conflicts_with = "no_host_access")]
        host_access_cgroup: Option<PathBuf>,
        /// Do not attach host access.
        #[arg(long)]
        no_host_access: bool,
    },
    /// Containers: veth pair, addresses, routes, registration, host
    /// programs and published ports in one command.
    Container {
        #[command(subcommand)]
        op: ContainerCmd,
    },
    /// Attach programs.
    Attach {
        #[command(subcommand)]
        what: AttachCmd,
    },
    /// Detach programs.
    Detach {
        #[command(subcommand)]
        what: AttachCmd,
    },
    /// Manage the maps.
    Map {
        #[command(subcommand)]
        map: MapCmd,
    },
    /// What is loaded, where it is attached, how full each map is.
    Status,
    /// Packet counters per program and reason.
    Stats,
    /// One line per datapath decision while it runs (filters applied in the kernel).
    Trace {
        /// Only packets with this port (source or destination, before or after a rewrite).
        #[arg(long, value_name = "P", value_parser = parse_port)]
        port: Option<u16>,
        /// Only packets with this address (source or destination, before or after a rewrite).
        #[arg(long, value_name = "A", value_parser = observe::parse_addr)]
        addr: Option<std::net::IpAddr>,
        /// Only packets seen on this interface (name or index; with -n, in that namespace).
        #[arg(long, value_name = "IF")]
        iface: Option<String>,
        /// Only these reasons: PROGRAM/REASON or REASON, as `stats` shows them (repeatable).
        #[arg(long = "reason", value_name = "R")]
        reasons: Vec<String>,
        /// Only verdicts that drop the packet.
        #[arg(long)]
        drops: bool,
        /// Stop after N events.
        #[arg(long, value_name = "N", value_parser = parse_count64)]
        count: Option<u64>,
    },
    /// Prometheus metrics: printed once, or served at /metrics with --listen.
    Metrics {
        /// Serve GET /metrics on this address until stopped (e.g. 0.0.0.0:9469).
        #[arg(long, value_name = "ADDR:PORT", value_parser = observe::parse_listen)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Protect the published ports: deny lists and per-source limits (XDP).
    Guard {
        #[command(subcommand)]
        what: GuardCmd,
    },
}

#[derive(Subcommand, Debug)]
enum GuardCmd {
    /// Source prefixes whose every packet is dropped.
    Deny {
        #[command(subcommand)]
        op: DenyCmd,
    },
    /// Per-source limits on new TCP connections and UDP towards published ports.
    Limit {
        #[command(subcommand)]
        op: LimitCmd,
    },
    /// Sources blocked now for going over a limit.
    ListBlocked,
}

#[derive(Subcommand, Debug)]
enum DenyCmd {
    /// Deny a source prefix (IPv4 or IPv6), for good or for a time.
    Add {
        /// ADDRESS/PREFIX-LENGTH, or one address.
        #[arg(value_parser = parse_cidr)]
        cidr: Cidr,
        /// Deny for this many seconds only.
        #[arg(long = "for", value_name = "SECONDS", value_parser = parse_seconds)]
        for_secs: Option<u64>,
    },
    /// Remove a deny entry (exactly this prefix).
    Del {
        /// ADDRESS/PREFIX-LENGTH, or one address.
        #[arg(value_parser = parse_cidr)]
        cidr: Cidr,
    },
    /// List the deny entries in force.
    List,
}

#[derive(Subcommand, Debug)]
enum LimitCmd {
    /// Set limits, for every published port or for one; unset values stay as they are.
    Set {
        /// New TCP connections (SYN) per second and source; 0 removes the limit.
        #[arg(long, value_name = "N", value_parser = parse_count)]
        syn_rate: Option<u32>,
        /// SYNs a source may send at once (default: the rate).
        #[arg(long, value_name = "N", value_parser = parse_count)]
        syn_burst: Option<u32>,
        /// UDP packets per second and source towards a published port; 0 removes the limit.
        #[arg(long, value_name = "N", value_parser = parse_count)]
        udp_rate: Option<u32>,
        /// UDP packets a source may send at once (default: the rate).
        #[arg(long, value_name = "N", value_parser = parse_count)]
        udp_burst: Option<u32>,
        /// Block a source that goes over a limit for this many seconds (0: never).
        #[arg(long, value_name = "SECONDS", value_parser = parse_count64)]
        block_for: Option<u64>,
        /// The published host port these limits are for (default: every port).
        #[arg(long, value_name = "P", value_parser = parse_port)]
        port: Option<u16>,
    },
    /// Show the limits (all scopes, or one port's own).
    Get {
        /// A published host port.
        #[arg(long, value_name = "P", value_parser = parse_port)]
        port: Option<u16>,
    },
    /// Remove the global limits, or one port's own.
    Clear {
        /// A published host port.
        #[arg(long, value_name = "P", value_parser = parse_port)]
        port: Option<u16>,
    },
}

#[derive(Subcommand, Debug)]
enum ContainerCmd {
    /// Wire a container into the datapath, all or nothing.
    Add {
        /// The container's name (1-127 bytes of letters, digits and _ . : @ / -).
        name: String,
        /// The container's network namespace: a name in /run/netns or a path.
        // Given as --netns: see `container_args`.
        #[arg(long = CONTAINER_NETNS, id = "container_netns", value_name = "NAME|PATH")]
        netns: String,
        /// The container's IPv4 address.
        #[arg(long, value_name = "ADDR", value_parser = parse_ipv4)]
        ip: Ipv4Addr,
        /// The container's IPv6 address (refused: this build is IPv4 only).
        #[arg(long, value_name = "ADDR", value_parser = parse_ipv6)]
        ip6: Option<Ipv6Addr>,
        /// Publish a container port: [EXT-ADDR:]HOST-PORT:CTR-PORT[/tcp|/udp] (repeatable).
        #[arg(long, value_name = "SPEC", value_parser = parse_publish)]
        publish: Vec<Port>,
        /// Name of the container's interface.
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// MTU of both ends of the veth pair (default: the kernel's).
        #[arg(long)]
        mtu: Option<u32>,
    },
    /// Remove exactly what `container add` made (success if it is gone).
    Del {
        /// The container's name.
        name: String,
    },
    /// Show a container and its published ports.
    Get {
        /// The container's name.
        name: String,
    },
    /// List the containers.
    List,
}

#[derive(Subcommand, Debug)]
enum AttachCmd {
    /// dnat on the external interface's TC ingress.
    Dnat {
        /// External interface, by name or index.
        iface: String,
    },
    /// arp, snat and tproxy on a container's host veth.
    Host {
        /// Host side of the container's veth pair, by name or index.
        iface: String,
    },
    /// cgroup/getsockopt (SO_ORIGINAL_DST for the proxy) on a cgroup.
    Getsockopt {
        /// cgroup v2 directory; default: the cgroup v2 root.
        cgroup: Option<PathBuf>,
    },
    /// Host processes reach published ports (connect4, sendmsg4, recvmsg4,
    /// getpeername4 on a cgroup); the host's network namespace is this
    /// one, or -n's.
    #[command(name = "host-access")]
    HostAccess {
        /// cgroup v2 directory; default: the cgroup v2 root.
        cgroup: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum MapCmd {
    /// Published ports.
    Dnat {
        #[command(subcommand)]
        op: DnatCmd,
    },
    /// External addresses ports are published on.
    External {
        #[command(subcommand)]
        op: ExternalCmd,
    },
    /// The default IPv4 external address (`map external ... --default`).
    Snat {
        #[command(subcommand)]
        op: SnatCmd,
    },
    /// Registered container veths.
    Veth {
        #[command(subcommand)]
        op: VethCmd,
    },
}

#[derive(Subcommand, Debug)]
enum DnatCmd {
    /// Publish a container port on a host port.
    Add {
        /// Host port to publish (1-65535), on the default external
        /// addresses of the container address's family, or ADDRESS:PORT
        /// on one external address ([IPV6]:PORT; [::]:PORT is every
        /// default IPv6 address).
        #[arg(value_parser = parse_host_port, required_unless_present = "from_file")]
        host_port: Option<(Ext, u16, Option<u8>)>,
        /// Container IPv4 or IPv6 address.
        #[arg(value_parser = parse_ip, required_unless_present = "from_file")]
        ctr_ip: Option<IpAddr>,
        /// Host side of the container's veth, by name or index.
        #[arg(required_unless_present = "from_file")]
        veth: Option<String>,
        /// Container MAC address (aa:bb:cc:dd:ee:ff).
        #[arg(value_parser = parse_mac, required_unless_present = "from_file")]
        ctr_mac: Option<[u8; 6]>,
        /// Protocol.
        #[arg(long, default_value = "tcp", value_parser = parse_proto)]
        proto: Proto,
        /// Container port (default 25565).
        #[arg(long, value_parser = parse_port, default_value = "25565")]
        to_port: u16,
        /// Add the mappings in FILE ('-': standard input), one per line as
        /// [ADDRESS:]HOST-PORT CTR-IP VETH CTR-MAC [--proto P] [--to-port N];
        /// '#' starts a comment. All are added, or none.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["host_port", "ctr_ip", "veth", "ctr_mac"])]
        from_file: Option<PathBuf>,
    },
    /// Unpublish a host port.
    Del {
        /// Published host port (IPv4 default mapping), [::]:PORT (IPv6
        /// default mapping), or ADDRESS:PORT.
        #[arg(value_parser = parse_host_port)]
        host_port: (Ext, u16, Option<u8>),
        /// Protocol.
        #[arg(long, default_value = "tcp", value_parser = parse_proto)]
        proto: Proto,
    },
    /// Show one published port.
    Get {
        /// Published host port (IPv4 default mapping), [::]:PORT (IPv6
        /// default mapping), or ADDRESS:PORT.
        #[arg(value_parser = parse_host_port)]
        host_port: (Ext, u16, Option<u8>),
        /// Protocol.
        #[arg(long, default_value = "tcp", value_parser = parse_proto)]
        proto: Proto,
    },
    /// List the published ports.
    List {
        /// With each port's packets and bytes towards the container and
        /// back, and its new connections.
        #[arg(long)]
        stats: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ExternalCmd {
    /// Add an external address (or make it a default one, or not).
    Add {
        /// External IPv4 or IPv6 address.
        #[arg(value_parser = parse_ip)]
        addr: IpAddr,
        /// External interface it is on, by name or index.
        ext_if: String,
        /// Publish the mappings without an address on it too.
        #[arg(long)]
        default: bool,
    },
    /// Remove an external address (refused while mappings name it).
    Del {
        /// External IPv4 or IPv6 address.
        #[arg(value_parser = parse_ip)]
        addr: IpAddr,
    },
    /// List the external addresses.
    List,
}

#[derive(Subcommand, Debug)]
enum SnatCmd {
    /// Add the default external address: `map external add ADDR IF --default`.
    Set {
        /// External IPv4 address.
        #[arg(value_parser = parse_ipv4)]
        ext_ip: Ipv4Addr,
        /// External interface, by name or index.
        ext_if: String,
    },
    /// Show the default external address.
    Get,
    /// Remove the default external address.
    Del,
}

#[derive(Subcommand, Debug)]
enum VethCmd {
    /// Register a container's host veth (reads its index, MAC and address).
    Add {
        /// Host side of the container's veth, by name or index.
        veth: String,
        /// The container's IPv4 address.
        #[arg(value_parser = parse_ipv4)]
        ctr_ip: Ipv4Addr,
        /// The container's IPv6 address, for a dual-stack container (the
        /// host veth needs an IPv6 address: the gateway, e.g. fe80::1).
        #[arg(value_parser = parse_ipv6)]
        ctr_ip6: Option<Ipv6Addr>,
    },
    /// Unregister a host veth.
    Del {
        /// Host veth, by name or index.
        veth: String,
    },
    /// Show one registered veth.
    Get {
        /// Host veth, by name or index.
        veth: String,
    },
    /// List the registered veths.
    List,
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(format!("invalid port '{s}': expected 1-65535")),
    }
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse::<Cidr>().map_err(|e| e.to_string())
}

fn parse_count64(s: &str) -> Result<u64, String> {
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid number '{}': expected a whole number", cut(s)));
    }
    s.parse::<u64>().map_err(|_| format!("invalid number '{}'", cut(s)))
}

fn parse_count(s: &str) -> Result<u32, String> {
    let n = parse_count64(s)?;
    u32::try_from(n).map_err(|_| format!("{n} is too large"))
}

fn parse_seconds(s: &str) -> Result<u64, String> {
    match parse_count64(s)? {
        0 => Err("0 seconds: expected at least 1".to_string()),
        n => Ok(n),
    }
}

/// Input echoed in an error is cut to 64 bytes.
fn cut(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end < s.len() {
        format!("{}...", &s[..end])
    } else {
        s.to_string()
    }
}

/// Cuts every quoted value in an error line (clap quotes what it echoes).
fn cut_quoted(line: &str) -> String {
    let parts: Vec<&str> = line.split('\'').collect();
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| if i % 2 == 1 && i + 1 < parts.len() { cut(p) } else { p.to_string() })
        .collect::<Vec<_>>()
        .join("'")
}

fn parse_ipv4(s: &str) -> Result<Ipv4Addr, String> {
    s.parse::<Ipv4Addr>().map_err(|_| format!("invalid IPv4 address '{s}'"))
}

fn parse_ipv6(s: &str) -> Result<Ipv6Addr, String> {
    s.parse::<Ipv6Addr>().map_err(|_| format!("invalid IPv6 address '{}'", s.chars().take(64).collect::<String>()))
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse::<IpAddr>().map_err(|_| format!("invalid IP address '{}'", s.chars().take(64).collect::<String>()))
}

fn parse_host_port(s: &str) -> Result<(Ext, u16, Option<u8>), String> {
    ops::parse_host_port_family(s).map_err(|e| e.to_string())
}

fn parse_publish(s: &str) -> Result<Port, String> {
    s.parse::<Port>().map_err(|e| e.to_string())
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    netif::parse_mac(s).map_err(|e| e.to_string())
}

fn parse_proto(s: &str) -> Result<Proto, String> {
    s.parse::<Proto>().map_err(|e| e.to_string())
}

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("datapathctl: {}: {}", r.level().as_str().to_lowercase(), r.args());
        }
    }
    fn flush(&self) {}
}

fn setup_logging(verbose: u8) {
    static LOGGER: StderrLogger = StderrLogger;
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    });
    // libbpf speaks through the same logger; its warnings are only noise
    // for users unless they asked for detail.
    let level = if verbose >= 2 { libbpf_rs::PrintLevel::Debug } else { libbpf_rs::PrintLevel::Warn };
    libbpf_rs::set_print(Some((level, |lvl, msg| {
        let msg = msg.trim_end();
        match lvl {
            libbpf_rs::PrintLevel::Warn => log::info!("libbpf: {msg}"),
            libbpf_rs::PrintLevel::Info => log::info!("libbpf: {msg}"),
            libbpf_rs::PrintLevel::Debug => log::debug!("libbpf: {msg}"),
        }
    })));
}

fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce(&T) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        let t = text(value);
        if !t.is_empty() {
            println!("{t}");
        }
    }
    Ok(())
}

/// What `map snat get` shows.
#[derive(Serialize)]
struct SnatOut {
    ext_ip: IpAddr,
    ext_ifindex: u32,
}

#[derive(Serialize)]
struct Done {
    result: &'static str,
}

fn change(json: bool, c: Change) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(&Done { result: c.as_str() })?);
    }
    Ok(())
}

fn ok(json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(&Done { result: "ok" })?);
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("must run as root (needs CAP_BPF, CAP_NET_ADMIN and {})", cli.pin_root.display());
    }
    let pins = PinRoot::new(&cli.pin_root);
    // A trace killed with SIGKILL left emission on: whatever this command
    // is, it turns it off first.
    if let Err(e) = ops::trace::reap(&pins) {
        log::info!("checking for a dead trace: {e:#}");
    }
    let ns = cli.netns.as_deref();
    let json = cli.json;
    match cli.cmd {
        Cmd::Load { proxy_dns_port, proxy_http_port, proxy_tcp_port } => {
            let r = ops::load(
                &pins,
                LoadOptions { dns: proxy_dns_port, http: proxy_http_port, tcp: proxy_tcp_port },
            )?;
            print(json, &r, |r| {
                format!(
                    "loaded under {} ({} maps created, {} attachments updated in place)",
                    r.pin_root,
                    r.maps_created.len(),
                    r.attachments_updated
                )
            })
        }
        Cmd::Unload => ops::unload(&pins).and_then(|()| ok(json)),
        Cmd::Setup { external, addresses, proxy_cgroup, gateway, host_access_cgroup, no_host_access } => {
            let opts = SetupOptions { external, addresses, proxy_cgroup, gateway, host_access_cgroup, no_host_access };
            let r = ops::setup::setup(&pins, ns, &opts)?;
            print(json, &r, |r| {
                let addrs: Vec<String> = r.addresses.iter().map(|a| a.to_string()).collect();
                let host_access = match &r.host_access_cgroup {
                    Some(p) => format!("host access on {}", p.display()),
                    None => "no host access".into(),
                };
                format!(
                    "set up under {}: external {} on {}, dnat attached, getsockopt on {}, {host_access}, gateway {}",
                    r.load.pin_root,
                    addrs.join(", "),
                    r.external_interface,
                    r.proxy_cgroup.display(),
                    r.gateway
                )
            })
        }
        Cmd::Container { op } => match op {
            ContainerCmd::Add { name, netns: ctr_ns, ip, ip6, publish, ifname, mtu } => {
                let spec = Spec {
                    ip6,
                    ifname,
                    mtu,
                    ports: publish,
                    ..Spec::new(&name, datapath::net::netns::path_of(&ctr_ns)?, ip)
                };
                let a = container::add(&pins, ns, &spec)?;
                if json {
                    println!("{}", serde_json::json!({ "result": a.change.as_str(), "container": a.container }));
                }
                Ok(())
            }
            ContainerCmd::Del { name } => change(json, container::del(&pins, &name)?),
            ContainerCmd::Get { name } => print(json, &container::get(&pins, &name)?, describe_container),
            ContainerCmd::List => print(json, &container::list(&pins)?, |l| {
                let w = l.iter().map(|r| r.name.len()).max().unwrap_or(0).max(4);
                let mut s = format!("{:<w$} {:<8} {:<16} {:<16} PUBLISHED", "NAME", "STATE", "HOST VETH", "ADDRESS");
                for r in l {
                    let ports: Vec<String> = r.ports.iter().map(|p| p.to_string()).collect();
                    s.push_str(&format!(
                        "\n{:<w$} {:<8} {:<16} {:<16} {}",
                        r.name,
                        r.state.as_str(),
                        r.host_ifname,
                        r.ip4,
                        ports.join(" ")
                    ));
                }
                s
            }),
        },
        Cmd::Attach { what } => match what {
            AttachCmd::Dnat { iface } => ops::attach_tc(&pins, ns, Kind::Dnat, &iface),
            AttachCmd::Host { iface } => ops::attach_tc(&pins, ns, Kind::Host, &iface),
            AttachCmd::Getsockopt { cgroup } => ops::attach_getsockopt(&pins, cgroup.as_deref()),
            AttachCmd::HostAccess { cgroup } => ops::attach_cgroup(&pins, ns, Kind::HostAccess, cgroup.as_deref()),
        }
        .and_then(|()| ok(json)),
        Cmd::Detach { what } => match what {
            AttachCmd::Dnat { iface } => ops::detach_tc(&pins, ns, Kind::Dnat, &iface),
            AttachCmd::Host { iface } => ops::detach_tc(&pins, ns, Kind::Host, &iface),
            AttachCmd::Getsockopt { cgroup } => ops::detach_getsockopt(&pins, cgroup.as_deref()),
            AttachCmd::HostAccess { cgroup } => ops::detach_cgroup(&pins, Kind::HostAccess, cgroup.as_deref()),
        }
        .and_then(|()| ok(json)),
        Cmd::Map { map } => match map {
            MapCmd::Dnat { op } => match op {
                DnatCmd::Add { from_file: Some(file), .. } => {
                    let lines = read_dnat_lines(&file)?;
                    let added = ops::dnat_add_batch(&pins, ns, &lines)?;
                    if json {
                        println!("{}", serde_json::json!({ "result": "ok", "lines": lines.len(), "added": added }));
                    }
                    Ok(())
                }
                DnatCmd::Add { host_port, ctr_ip, veth, ctr_mac, proto, to_port, from_file: None } => {
                    // clap guarantees all four when there is no --from-file.
                    let (Some((ext, host_port, family)), Some(ctr_ip), Some(veth), Some(ctr_mac)) =
                        (host_port, ctr_ip, veth, ctr_mac)
                    else {
                        bail!("map dnat add needs HOST-PORT CTR-IP VETH CTR-MAC or --from-file");
                    };
                    same_family(family, ctr_ip)?;
                    let a = DnatAdd { ext, host_port, ctr_ip, veth, ctr_mac, proto, to_port };
                    change(json, ops::dnat_add(&pins, ns, &a)?)
                }
                DnatCmd::Del { host_port: (ext, port, family), proto } => {
                    change(json, ops::dnat_del_in(&pins, family.unwrap_or(AF_INET), ext, port, proto)?)
                }
                DnatCmd::Get { host_port: (ext, port, family), proto } => {
                    print(json, &ops::dnat_get_in(&pins, family.unwrap_or(AF_INET), ext, port, proto)?, |p| {
                        p.describe()
                    })
                }
                DnatCmd::List { stats: true } => observe::dnat_list_stats(&pins, json),
                DnatCmd::List { stats: false } => print(json, &ops::dnat_list(&pins)?, |l| {
                    l.iter().map(|p| p.describe()).collect::<Vec<_>>().join("\n")
                }),
            },
            MapCmd::External { op } => match op {
                ExternalCmd::Add { addr, ext_if, default } => {
                    change(json, ops::external_add(&pins, ns, addr, &ext_if, default)?)
                }
                ExternalCmd::Del { addr } => change(json, ops::external_del(&pins, addr)?),
                ExternalCmd::List => print(json, &ops::external_list(&pins)?, |l| {
                    l.iter().map(|e| e.describe()).collect::<Vec<_>>().join("\n")
                }),
            },
            MapCmd::Snat { op } => match op {
                // The output of the release before external addresses.
                SnatCmd::Set { ext_ip, ext_if } => ops::snat_set(&pins, ns, ext_ip, &ext_if).and_then(|_| ok(json)),
                SnatCmd::Get => {
                    let e = ops::snat_get(&pins)?;
                    let out = SnatOut { ext_ip: e.addr, ext_ifindex: e.ifindex };
                    print(json, &out, |o| format!("external {} ifindex {}", o.ext_ip, o.ext_ifindex))
                }
                SnatCmd::Del => change(json, ops::snat_del(&pins)?),
            },
            MapCmd::Veth { op } => match op {
                VethCmd::Add { veth, ctr_ip, ctr_ip6 } => {
                    change(json, ops::veth_add_dual(&pins, ns, &veth, ctr_ip, ctr_ip6)?)
                }
                VethCmd::Del { veth } => change(json, ops::veth_del(&pins, ns, &veth)?),
                VethCmd::Get { veth } => print(json, &ops::veth_get(&pins, ns, &veth)?, describe_veth),
                VethCmd::List => print(json, &ops::veth_list(&pins)?, |l| {
                    l.iter().map(describe_veth).collect::<Vec<_>>().join("\n")
                }),
            },
        },
        Cmd::Guard { what } => guard(&pins, json, what),
        Cmd::Metrics { listen } => observe::metrics(&pins, listen),
        Cmd::Trace { port, addr, iface, reasons, drops, count } => {
            observe::trace(&pins, ns, json, observe::TraceArgs { port, addr, iface, reasons, drops, count })
        }
        Cmd::Status => print(json, &ops::status(&pins)?, describe_status),
        Cmd::Stats => print(json, &ops::stats(&pins)?, |l| {
            let mut s = format!("{:<16} {:<20} {:>14} {:>16}", "PROGRAM", "REASON", "PACKETS", "BYTES");
            for c in l {
                s.push_str(&format!("\n{:<16} {:<20} {:>14} {:>16}", c.program, c.reason, c.packets, c.bytes));
            }
            s
        }),
    }
}

fn guard(pins: &PinRoot, json: bool, what: GuardCmd) -> Result<()> {
    use ops::guard as g;
    match what {
        GuardCmd::Deny { op } => match op {
            DenyCmd::Add { cidr, for_secs } => change(json, g::deny_add(pins, &cidr, for_secs)?),
            DenyCmd::Del { cidr } => change(json, g::deny_del(pins, &cidr)?),
            DenyCmd::List => print(json, &g::deny_list(pins)?, |l| {
                let mut s = format!("{:<44} {}", "SOURCE", "EXPIRES");
                for e in l {
                    let exp = e.expires_in.map(|x| format!("in {x} s")).unwrap_or_else(|| "never".into());
                    s.push_str(&format!("\n{:<44} {exp}", e.cidr.to_string()));
                }
                s
            }),
        },
        GuardCmd::Limit { op } => match op {
            LimitCmd::Set { syn_rate, syn_burst, udp_rate, udp_burst, block_for, port } => {
                let ch = LimitChange { syn_rate, syn_burst, udp_rate, udp_burst, block_for };
                let l = g::limit_set(pins, port, &ch)?;
                if json {
                    println!("{}", serde_json::json!({ "result": "ok", "limit": l }));
                }
                Ok(())
            }
            LimitCmd::Get { port } => print(json, &g::limit_get(pins, port)?, |l| {
                if l.is_empty() {
                    return match port {
                        Some(p) => format!("port {p} has no limits of its own"),
                        None => "no limits".to_string(),
                    };
                }
                let rate = |r: &Option<datapath::maps::guard::Rate>| {
                    r.map(|r| format!("{}/s burst {}", r.rate, r.burst)).unwrap_or_else(|| "-".into())
                };
                let mut s = format!("{:<8} {:<24} {:<24} {}", "PORT", "SYN", "UDP", "BLOCK-FOR");
                for x in l {
                    let scope = x.port.map(|p| p.to_string()).unwrap_or_else(|| "all".into());
                    let block = x.block_for.map(|b| format!("{b} s")).unwrap_or_else(|| "-".into());
                    s.push_str(&format!("\n{:<8} {:<24} {:<24} {block}", scope, rate(&x.syn), rate(&x.udp)));
                }
                s
            }),
            LimitCmd::Clear { port } => change(json, g::limit_clear(pins, port)?),
        },
        GuardCmd::ListBlocked => print(json, &g::list_blocked(pins)?, |l| {
            let mut s = format!("{:<40} {:<6} {:<5} {:>10} {}", "SOURCE", "PORT", "FOR", "REMAINING", "VERIFIED");
            for b in l {
                let port = b.port.map(|p| p.to_string()).unwrap_or_else(|| "all".into());
                s.push_str(&format!(
                    "\n{:<40} {:<6} {:<5} {:>8} s {}",
                    b.addr.to_string(),
                    port,
                    b.class,
                    b.remaining,
                    if b.verified { "yes" } else { "no" }
                ));
            }
            s
        }),
    }
}

/// A host port that names a family ([::]:PORT, an address) must be
/// published to a container address of that family.
fn same_family(family: Option<u8>, ctr_ip: IpAddr) -> Result<()> {
    if let Some(f) = family {
        if (f == AF_INET6) != ctr_ip.is_ipv6() {
            bail!("the host port is {} but container address {ctr_ip} is not", if f == AF_INET6 { "IPv6" } else { "IPv4" });
        }
    }
    Ok(())
}

/// One line of `map dnat add --from-file`: the command's own arguments.
#[derive(Parser, Debug)]
#[command(no_binary_name = true)]
struct DnatLine {
    #[arg(value_parser = parse_host_port)]
    host_port: (Ext, u16, Option<u8>),
    #[arg(value_parser = parse_ip)]
    ctr_ip: IpAddr,
    veth: String,
    #[arg(value_parser = parse_mac)]
    ctr_mac: [u8; 6],
    #[arg(long, default_value = "tcp", value_parser = parse_proto)]
    proto: Proto,
    #[arg(long, value_parser = parse_port, default_value = "25565")]
    to_port: u16,
}

/// Reads and parses every line first, so a bad line changes nothing.
fn read_dnat_lines(file: &std::path::Path) -> Result<Vec<(usize, DnatAdd)>> {
    use anyhow::Context as _;
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading mappings from standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let l = DnatLine::try_parse_from(&words).map_err(|e| {
            let text = e.render().to_string();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid mapping").to_string();
            anyhow::anyhow!("line {}: {}", i + 1, first.trim_start_matches("error: "))
        })?;
        same_family(l.host_port.2, l.ctr_ip).map_err(|e| anyhow::anyhow!("line {}: {e}", i + 1))?;
        out.push((
            i + 1,
            DnatAdd {
                ext: l.host_port.0,
                host_port: l.host_port.1,
                ctr_ip: l.ctr_ip,
                veth: l.veth,
                ctr_mac: l.ctr_mac,
                proto: l.proto,
                to_port: l.to_port,
            },
        ));
    }
    Ok(out)
}

fn describe_veth(v: &datapath::maps::Veth) -> String {
    let mut s = format!(
        "{} (ifindex {}) container {} host {} mac {}",
        v.name,
        v.ifindex,
        v.ctr_ip,
        v.host_ip,
        netif::format_mac(&v.host_mac)
    );
    if let (Some(c), Some(h)) = (v.ctr_ip6, v.host_ip6) {
        s.push_str(&format!(" container6 {c} host6 {h}"));
    }
    s
}

fn describe_container(c: &container::Container) -> String {
    let r: &Record = &c.record;
    let mac = r.ctr_mac.map(|m| netif::format_mac(&m)).unwrap_or_else(|| "-".into());
    let mut out = format!("{} ({})", r.name, r.state.as_str());
    out.push_str(&format!("\n  container  {} in {}, {} mac {}", r.ifname, r.netns.display(), r.ip4, mac));
    let ns = if r.host_netns.is_empty() { String::new() } else { format!(" in {}", r.host_netns) };
    out.push_str(&format!("\n  host veth  {} (ifindex {}){ns}, gateway {}", r.host_ifname, r.host_ifindex, r.gateway4));
    if let Some(m) = r.mtu {
        out.push_str(&format!("\n  mtu        {m}"));
    }
    if !r.owner.is_empty() {
        out.push_str(&format!("\n  cni        network {}", r.owner));
    }
    for p in &c.published {
        let state = if p.published { "published" } else { "NOT published" };
        out.push_str(&format!("\n  port       {} {state}", p.port));
        if let Some(n) = &p.counters {
            out.push_str(&format!(
                ": in {} packets {} bytes, out {} packets {} bytes, {} connections",
                n.pkts_in, n.bytes_in, n.pkts_out, n.bytes_out, n.conns
            ));
        }
    }
    out
}

fn describe_status(s: &ops::Status) -> String {
    if !s.loaded {
        return format!("not loaded (pin root {})", s.pin_root);
    }
    let mut out = format!("loaded under {}\nprograms:", s.pin_root);
    for p in &s.programs {
        out.push_str(&format!("\n  {:<16} id {:<6} tag {}", p.name, p.id, p.tag));
    }
    out.push_str("\nattached:");
    if s.attachments.is_empty() {
        out.push_str(" nowhere");
    }
    for a in &s.attachments {
        let ns = if a.netns.is_empty() { String::new() } else { format!(" (netns {})", a.netns) };
        let kind = a.kind.map(|k| k.as_str()).unwrap_or("?");
        let xdp = a.xdp.map(|m| format!(" (guard: {} XDP)", m.as_str())).unwrap_or_default();
        out.push_str(&format!("\n  {:<10} {}{}{}", kind, a.target, ns, xdp));
    }
    out.push_str("\nmaps:");
    for m in &s.maps {
        out.push_str(&format!("\n  {:<16} {:>6} / {}", m.name, m.entries, m.capacity));
    }
    out.push_str("\nexternal addresses:");
    if s.externals.is_empty() {
        out.push_str(" none");
    }
    for e in &s.externals {
        out.push_str(&format!("\n  {}", e.describe()));
    }
    if let Some(p) = &s.proxy_ports {
        out.push_str(&format!("\nproxy ports: dns {} http {} tcp {}", p.dns, p.http, p.tcp));
    }
    out
}

/// The name `container add --netns` has while clap parses it.
const CONTAINER_NETNS: &str = "container-netns";

/// `container add --netns` names the container's namespace, while the
/// global `-n/--netns` names the host side's: clap cannot have one long
/// option twice, so within `container add` `--netns` is renamed before
/// parsing (and back in what clap prints).
fn container_args(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let at = args.windows(2).position(|w| w[0] == "container" && w[1] == "add");
    let Some(at) = at else { return args };
    let mut out = args;
    for a in out.iter_mut().skip(at + 2) {
        if *a == "--" {
            break;
        }
        if *a == "--netns" {
            *a = format!("--{CONTAINER_NETNS}").into();
        } else if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--netns=")) {
            *a = format!("--{CONTAINER_NETNS}={v}").into();
        }
    }
    out
}

fn main() -> ExitCode {
    let args = container_args(std::env::args_os().collect());
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind as K;
            let renamed = |t: String| t.replace(&format!("--{CONTAINER_NETNS}"), "--netns");
            if matches!(e.kind(), K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand) {
                print!("{}", renamed(e.render().to_string()));
                return if e.kind() == K::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // One line: clap's first paragraph (which may list the missing
            // arguments on lines of their own), without "error: ".
            let text = renamed(e.render().to_string());
            let para: Vec<&str> = text
                .lines()
                .skip_while(|l| l.trim().is_empty())
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let line = if para.is_empty() { "invalid arguments".to_string() } else { para.join(" ") };
            eprintln!("datapathctl: {}", cut_quoted(line.trim_start_matches("error: ")));
            return ExitCode::from(2);
        }
    };
    setup_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("datapathctl: {msg}");
            ExitCode::FAILURE
        }
    }
}
