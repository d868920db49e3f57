//! The commands of `datapath-cni`, as a runtime invokes them: environment
//! (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`,
//! `CNI_PATH`) and the network configuration on stdin in, a result or an
//! error object on stdout out.
//!
//! - ADD asks the IPAM plugin (`ipam.type`, found in `CNI_PATH`) for an
//!   address, then does what `container add` does (`ops::container`) for
//!   the container named `<CNI_CONTAINERID>/<CNI_IFNAME>`, publishing every
//!   `runtimeConfig.portMappings` entry; on failure it undoes everything
//!   and releases the address.
//! - DEL removes what ADD made (`container del`) and releases the address;
//!   it succeeds when things are gone, the namespace included, and
//!   without `prevResult`.
//! - CHECK verifies the container against the record, the kernel, the
//!   maps and `prevResult`, and asks the IPAM plugin to check too.
//! - GC removes the containers of this network that are not in
//!   `cni.dev/valid-attachments`, releasing their addresses.
//! - STATUS fails with code 50 while the datapath is not loaded.
//!
//! The IPAM plugin gets the configuration as it came; only when it
//! refuses the configuration's `cniVersion` (Debian's plugins stop at
//! 1.0.0) is it asked for its versions and run again with the newest one
//! both speak.

use std::collections::HashSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{code, Attachment, CniError, CniResult, Interface, IpConfig, NetConf, RouteConfig, VersionInfo};
use super::{DEFAULT_PIN_ROOT, LATEST_VERSION, SUPPORTED_VERSIONS};
use crate::abi::Proto;
use crate::kernel::pins::PinRoot;
use crate::maps::containers::{Containers, Port};
use crate::maps::Change;
use crate::net::netif::format_mac;
use crate::net::rtnl::check_name;
use crate::net::wiring::{self, Wiring};
use crate::ops::container::{self, ErrorKind, Spec};

/// The CNI_* environment of one invocation.
#[derive(Clone, Debug, Default)]
pub struct Invocation {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub path: Option<String>,
}

impl Invocation {
    /// The process's own environment; empty variables count as unset.
    pub fn from_env() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            path: get("CNI_PATH"),
        }
    }
}

/// What to print on stdout, and whether the invocation succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub ok: bool,
}

type Res<T> = std::result::Result<T, CniError>;

fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("CNI types serialise")
}

/// Runs one invocation.
pub fn run(inv: &Invocation, stdin: &[u8]) -> Output {
    let mut version = LATEST_VERSION.to_string();
    let r = dispatch(inv, stdin, &mut version);
    match r {
        Ok(out) => Output { stdout: out.unwrap_or_default(), ok: true },
        Err(mut e) => {
            e.cni_version = version;
            e.msg = e.msg.replace('\n', " ");
            Output { stdout: to_json(&e), ok: false }
        }
    }
}

fn dispatch(inv: &Invocation, stdin: &[u8], version: &mut String) -> Res<Option<String>> {
    let command = inv.command.as_deref().ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set"))?;
    if command == "VERSION" {
        return Ok(Some(version_info(stdin)));
    }
    let conf: NetConf = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(code::DECODE, "the network configuration on stdin is not valid JSON").details(e.to_string()))?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion '{}' is not supported; supported: {}", cut(&conf.cni_version), SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    *version = conf.cni_version.clone();
    if conf.name.is_empty() {
        return Err(CniError::new(code::INVALID_CONFIG, "the network configuration has no name"));
    }
    let pins = PinRoot::new(conf.pin_root.clone().unwrap_or_else(|| DEFAULT_PIN_ROOT.to_string()));
    let p = Plugin { inv, conf, stdin, pins };
    match command {
        "ADD" => p.add().map(Some),
        "DEL" => p.del().map(|()| None),
        "CHECK" => p.check().map(|()| None),
        "STATUS" => p.status().map(|()| None),
        "GC" => p.gc().map(|()| None),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND '{}' is not ADD, DEL, CHECK, GC, STATUS or VERSION", cut(other)),
        )),
    }
}

/// VERSION: the versions this plugin speaks; `cniVersion` is the one
/// asked for when it is one of them.
fn version_info(stdin: &[u8]) -> String {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(|s| s.as_str()).map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()));
    to_json(&VersionInfo {
        cni_version: asked.unwrap_or_else(|| LATEST_VERSION.to_string()),
        supported_versions: SUPPORTED_VERSIONS.iter().map(|s| s.to_string()).collect(),
    })
}

/// Checks a container id as the spec defines it: a letter or digit, then
/// letters, digits, `_`, `.` and `-`.
fn check_container_id(id: &str) -> Res<()> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"_.-".contains(&b);
    if id.is_empty() || !id.as_bytes()[0].is_ascii_alphanumeric() || !id.bytes().all(ok) {
        return Err(CniError::new(code::INVALID_ENV, format!("CNI_CONTAINERID '{}' is not a valid container id", cut(id))));
    }
    Ok(())
}

/// The name of the container of attachment (`id`, `ifname`).
pub fn container_name(id: &str, ifname: &str) -> String {
    format!("{id}/{ifname}")
}

/// The attachment of a container name made by [`container_name`].
fn attachment_of(name: &str) -> Option<Attachment> {
    let (id, ifname) = name.rsplit_once('/')?;
    Some(Attachment { container_id: id.to_string(), ifname: ifname.to_string() })
}

/// The CNI error for a failed container command.
fn container_error(e: &container::Error) -> CniError {
    let c = match e.kind {
        ErrorKind::NotLoaded => code::NOT_AVAILABLE,
        ErrorKind::Invalid => code::INVALID_CONFIG,
        ErrorKind::Unsupported => code::UNSUPPORTED,
        ErrorKind::Exists => code::EXISTS,
        ErrorKind::InUse => code::IN_USE,
        ErrorKind::NotFound => code::INVALID_ENV,
        ErrorKind::Full => code::MAP_FULL,
        ErrorKind::Other => code::DATAPATH,
    };
    let msg = match e.kind {
        ErrorKind::NotFound => format!("CNI_NETNS: {e}"),
        _ => e.to_string(),
    };
    CniError::new(c, msg).details(format!("step {}", e.step))
}

/// The published ports of `runtimeConfig.portMappings`.
fn ports_of(conf: &NetConf) -> Res<Vec<Port>> {
    let bad = |m: &super::PortMapping, why: String| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("portMappings entry hostPort {} containerPort {}: {why}", m.host_port, m.container_port),
        )
    };
    let mut out = Vec::new();
    for m in &conf.runtime_config.port_mappings {
        let port = |p: u32| u16::try_from(p).ok().filter(|p| *p != 0);
        let (Some(host_port), Some(ctr_port)) = (port(m.host_port), port(m.container_port)) else {
            return Err(bad(m, "ports must be 1-65535".into()));
        };
        let proto = match m.protocol.to_ascii_lowercase().as_str() {
            "" | "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => {
                return Err(CniError::new(
                    code::UNSUPPORTED,
                    format!("portMappings protocol '{}' is not supported (tcp or udp)", cut(other)),
                ))
            }
        };
        let ext_addr = match m.host_ip.as_str() {
            "" => None,
            s => match s.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) if a.is_unspecified() => None,
                Ok(IpAddr::V4(a)) => Some(a),
                Ok(IpAddr::V6(_)) => {
                    return Err(CniError::new(code::UNSUPPORTED, format!("portMappings hostIP {s}: IPv6 is not supported")))
                }
                Err(_) => return Err(bad(m, format!("hostIP '{}' is not an address", cut(s)))),
            },
        };
        out.push(Port { ext_addr, host_port, ctr_port, proto });
    }
    Ok(out)
}

struct Plugin<'a> {
    inv: &'a Invocation,
    conf: NetConf,
    stdin: &'a [u8],
    pins: PinRoot,
}

impl Plugin<'_> {
    fn env<'v>(&self, value: &'v Option<String>, var: &str) -> Res<&'v str> {
        value.as_deref().ok_or_else(|| CniError::new(code::INVALID_ENV, format!("{var} is not set")))
    }

    /// The container id and interface name, checked.
    fn attachment(&self) -> Res<(String, String)> {
        let id = self.env(&self.inv.container_id, "CNI_CONTAINERID")?;
        check_container_id(id)?;
        let ifname = self.env(&self.inv.ifname, "CNI_IFNAME")?;
        check_name(ifname).map_err(|e| CniError::new(code::INVALID_ENV, format!("CNI_IFNAME: {e}")))?;
        let name = container_name(id, ifname);
        container::check_container_name(&name)
            .map_err(|_| CniError::new(code::INVALID_ENV, format!("CNI_CONTAINERID '{}' is too long", cut(id))))?;
        Ok((id.to_string(), ifname.to_string()))
    }

    fn netns(&self) -> Res<PathBuf> {
        let ns = self.env(&self.inv.netns, "CNI_NETNS")?;
        let p = PathBuf::from(ns);
        if !p.is_absolute() || !p.exists() {
            return Err(CniError::new(code::INVALID_ENV, format!("CNI_NETNS {}: no such network namespace", cut(ns))));
        }
        Ok(p)
    }

    fn require_loaded(&self) -> Res<()> {
        if !self.pins.is_loaded() {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                format!("the datapath is not loaded under {} (datapathctl setup)", self.pins.root().display()),
            ));
        }
        Ok(())
    }

    fn ipam_type(&self) -> Res<&str> {
        self.conf
            .ipam_type()
            .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "the configuration has no ipam.type (e.g. host-local)"))
    }

    /// ADD.
    fn add(&self) -> Res<String> {
        let (id, ifname) = self.attachment()?;
        let netns = self.netns()?;
        let ipam = self.ipam_type()?;
        let ports = ports_of(&self.conf)?;
        self.require_loaded()?;
        let name = container_name(&id, &ifname);
        if let Some(r) = Containers::open(&self.pins).ok().and_then(|c| c.get(&name).ok()).flatten() {
            if r.owner != self.conf.name {
                return Err(CniError::new(
                    code::EXISTS,
                    format!("container {} belongs to {}", cut(&name), if r.owner.is_empty() { "container add".to_string() } else { format!("CNI network {}", r.owner) }),
                ));
            }
        }
        let got = self.ipam_exec(ipam, "ADD", &[])?.ok_or_else(|| {
            CniError::new(code::IPAM_FAILED, format!("the IPAM plugin {ipam} returned no result"))
        })?;
        let release = |e: CniError| -> CniError {
            match self.ipam_exec(ipam, "DEL", &[]) {
                Ok(_) => e,
                Err(d) => {
                    let msg = format!("{}; releasing the address failed too: {}", e.msg, d.msg);
                    CniError { msg, ..e }
                }
            }
        };
        let ip4 = match pick_ipv4(&got) {
            Ok(a) => a,
            Err(e) => return Err(release(e)),
        };
        let spec = Spec {
            ifname: ifname.clone(),
            mtu: self.conf.mtu,
            ports,
            owner: self.conf.name.clone(),
            ..Spec::new(&name, netns.clone(), ip4)
        };
        let added = match container::add(&self.pins, None, &spec) {
            Ok(a) => a,
            Err(e) => return Err(release(container_error(&e))),
        };
        let r = added.container;
        let v04 = self.conf.cni_version == "0.4.0";
        let result = CniResult {
            cni_version: self.conf.cni_version.clone(),
            interfaces: vec![
                Interface { name: r.host_ifname.clone(), mac: host_mac(&r.host_ifname), sandbox: String::new() },
                Interface { name: ifname, mac: r.ctr_mac.map(|m| format_mac(&m)).unwrap_or_default(), sandbox: netns.display().to_string() },
            ],
            ips: vec![IpConfig {
                version: v04.then(|| "4".to_string()),
                address: format!("{}/32", r.ip4),
                gateway: Some(r.gateway4.to_string()),
                interface: Some(1),
            }],
            routes: vec![RouteConfig { dst: "0.0.0.0/0".into(), gw: Some(r.gateway4.to_string()) }],
            dns: got.dns.filter(|d| d.as_object().is_some_and(|o| !o.is_empty())),
        };
        Ok(to_json(&result))
    }

    /// DEL.
    fn del(&self) -> Res<()> {
        let (id, ifname) = self.attachment()?;
        let name = container_name(&id, &ifname);
        if self.pins.is_loaded() {
            let rec = Containers::open(&self.pins)
                .and_then(|c| c.get(&name))
                .map_err(|e| CniError::new(code::DATAPATH, format!("reading container {}: {e:#}", cut(&name))))?;
            if rec.is_some_and(|r| r.owner == self.conf.name) {
                // The address is released as soon as the host no longer
                // routes it, while the kernel deletes the veth pair.
                let mut started: Option<Res<Pending>> = None;
                let r = container::del_with(&self.pins, &name, &mut || {
                    if let Some(ipam) = self.conf.ipam_type() {
                        started = Some(self.ipam_start(ipam, "DEL", &[]));
                    }
                });
                let released = started.map(|p| p.and_then(|p| self.ipam_finish(p)));
                r.map_err(|e| container_error(&e))?;
                if let Some(released) = released {
                    return released.map(drop);
                }
            }
        } else {
            // No records without a loaded datapath, but the veth may be
            // there: removed if it is a veth whose peer is in CNI_NETNS
            // (or in a namespace that is gone).
            let mut w = Wiring::new(&name, self.inv.netns.clone().unwrap_or_default(), Ipv4Addr::UNSPECIFIED);
            w.ifname = ifname;
            match wiring::unwire(&w) {
                Ok(_) => {}
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(CniError::new(code::DATAPATH, format!("removing the veth pair: {e}"))),
            }
        }
        if let Some(ipam) = self.conf.ipam_type() {
            self.ipam_exec(ipam, "DEL", &[])?;
        }
        Ok(())
    }

    /// CHECK.
    fn check(&self) -> Res<()> {
        let (id, ifname) = self.attachment()?;
        let netns = self.netns()?;
        let ipam = self.ipam_type()?;
        self.require_loaded()?;
        let prev: CniResult = match &self.conf.prev_result {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| CniError::new(code::DECODE, "prevResult is not a CNI result").details(e.to_string()))?,
            None => return Err(CniError::new(code::INVALID_CONFIG, "CHECK needs prevResult")),
        };
        let name = container_name(&id, &ifname);
        let failed = |m: String| CniError::new(code::CHECK_FAILED, m);
        let rec = container::check(&self.pins, &name).map_err(|e| {
            let known = Containers::open(&self.pins).and_then(|c| c.get(&name)).ok().flatten().is_some();
            if known {
                failed(format!("{e:#}"))
            } else {
                CniError::new(code::UNKNOWN_CONTAINER, format!("container {} is not known", cut(&name)))
            }
        })?;
        if rec.owner != self.conf.name || rec.netns != netns || rec.ifname != ifname {
            return Err(failed(format!("container {} was not added by network {} in {}", cut(&name), self.conf.name, netns.display())));
        }
        let want = format!("{}/32", rec.ip4);
        if !prev.ips.iter().any(|i| i.address == want) {
            return Err(failed(format!("prevResult has no address {want}")));
        }
        for i in &prev.interfaces {
            let (mac, known) = if i.name == rec.host_ifname {
                (host_mac(&rec.host_ifname), true)
            } else if i.name == rec.ifname && i.sandbox == netns.display().to_string() {
                (rec.ctr_mac.map(|m| format_mac(&m)).unwrap_or_default(), true)
            } else {
                (String::new(), false)
            };
            if known && !i.mac.is_empty() && !i.mac.eq_ignore_ascii_case(&mac) {
                return Err(failed(format!("interface {} has MAC {mac}, prevResult says {}", i.name, i.mac)));
            }
        }
        let mut want_ports = ports_of(&self.conf)?;
        let mut have = rec.ports.clone();
        want_ports.sort();
        have.sort();
        if want_ports != have {
            return Err(failed(format!("published ports {have:?} differ from portMappings {want_ports:?}")));
        }
        self.ipam_exec(ipam, "CHECK", &[])?;
        Ok(())
    }

    /// STATUS.
    fn status(&self) -> Res<()> {
        self.require_loaded()
    }

    /// GC.
    fn gc(&self) -> Res<()> {
        let valid: HashSet<Attachment> = self.conf.valid_attachments.clone().unwrap_or_default().into_iter().collect();
        if !self.pins.is_loaded() {
            return Ok(());
        }
        let records = Containers::open(&self.pins)
            .and_then(|c| c.list())
            .map_err(|e| CniError::new(code::DATAPATH, format!("reading the containers: {e:#}")))?;
        for r in records.into_iter().filter(|r| r.owner == self.conf.name) {
            let Some(att) = attachment_of(&r.name) else { continue };
            if valid.contains(&att) {
                continue;
            }
            if container::del(&self.pins, &r.name).map_err(|e| container_error(&e))? == Change::Deleted {
                if let Some(ipam) = self.conf.ipam_type() {
                    self.ipam_exec(
                        ipam,
                        "DEL",
                        &[("CNI_CONTAINERID", Some(att.container_id.as_str())), ("CNI_IFNAME", Some(att.ifname.as_str())), ("CNI_NETNS", None)],
                    )?;
                }
            }
        }
        Ok(())
    }

    /// The IPAM plugin's executable, from CNI_PATH.
    fn find_plugin(&self, plugin: &str) -> Res<PathBuf> {
        if plugin.contains('/') || plugin == "." || plugin == ".." {
            return Err(CniError::new(code::INVALID_CONFIG, format!("ipam.type '{}' is not a plugin name", cut(plugin))));
        }
        let path = self.env(&self.inv.path, "CNI_PATH")?;
        for dir in path.split(':').filter(|d| !d.is_empty()) {
            let p = Path::new(dir).join(plugin);
            if p.is_file() {
                return Ok(p);
            }
        }
        Err(CniError::new(code::INVALID_CONFIG, format!("IPAM plugin '{}' is not in CNI_PATH ({})", cut(plugin), cut(path))))
    }

    /// Runs the IPAM plugin for `command` with the configuration as it
    /// came (its cniVersion lowered if the plugin does not speak it), and
    /// `env` overriding (Some) or removing (None) variables. Its error
    /// object, if it fails with one, is passed on as it is.
    fn ipam_exec(&self, plugin: &str, command: &str, env: &[(&str, Option<&str>)]) -> Res<Option<CniResult>> {
        self.ipam_start(plugin, command, env).and_then(|p| self.ipam_finish(p))
    }

    /// Starts the IPAM plugin for `command` with the configuration as it
    /// came; [`Plugin::ipam_finish`] waits for it.
    fn ipam_start<'e>(&self, plugin: &'e str, command: &'e str, env: &'e [(&'e str, Option<&'e str>)]) -> Res<Pending<'e>> {
        let exe = self.find_plugin(plugin)?;
        let child = spawn(&exe, command, env, self.stdin)?;
        Ok(Pending { exe, child, plugin, command, env })
    }

    /// Waits for a started IPAM plugin. A plugin that does not speak the
    /// configuration's version says so with code 1 before it does
    /// anything: then it is asked which versions it speaks and run again
    /// with the newest one both speak.
    fn ipam_finish(&self, p: Pending<'_>) -> Res<Option<CniResult>> {
        let Pending { exe, child, plugin, command, env } = p;
        let io = |e: std::io::Error| CniError::new(code::IO_FAILURE, format!("running {}: {e}", exe.display()));
        let mut out = child.wait_with_output().map_err(io)?;
        let refused = |o: &std::process::Output| {
            !o.status.success()
                && serde_json::from_slice::<CniError>(&o.stdout).is_ok_and(|e| e.code == code::INCOMPATIBLE_VERSION)
        };
        if refused(&out) {
            if let Some(stdin) = self.ipam_config(&exe)? {
                out = exec(&exe, command, env, &stdin)?;
            }
        }
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            return Err(match serde_json::from_str::<CniError>(&text) {
                Ok(mut e) => {
                    e.msg = format!("IPAM plugin {plugin} {command}: {}", e.msg);
                    e
                }
                Err(_) => CniError::new(
                    code::IPAM_FAILED,
                    format!("IPAM plugin {plugin} {command} failed ({}): {}", out.status, cut(String::from_utf8_lossy(&out.stderr).trim())),
                ),
            });
        }
        if command != "ADD" {
            return Ok(None);
        }
        serde_json::from_slice(&out.stdout).map(Some).map_err(|e| {
            CniError::new(code::IPAM_FAILED, format!("IPAM plugin {plugin} printed no CNI result")).details(e.to_string())
        })
    }

    /// The configuration for an IPAM plugin that refused it: with the
    /// newest version both speak; None if it says it speaks the
    /// configuration's own (its refusal stands).
    fn ipam_config(&self, exe: &Path) -> Res<Option<Vec<u8>>> {
        let ours = self.conf.cni_version.as_str();
        let asked = serde_json::json!({ "cniVersion": ours }).to_string();
        let out = exec(exe, "VERSION", &[], asked.as_bytes())?;
        let theirs: Vec<String> = serde_json::from_slice::<VersionInfo>(&out.stdout)
            .map(|v| v.supported_versions)
            .unwrap_or_default();
        if theirs.iter().any(|v| v == ours) || theirs.is_empty() {
            return Ok(None);
        }
        let Some(common) = SUPPORTED_VERSIONS.iter().rev().find(|v| theirs.iter().any(|t| t == *v)) else {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("the IPAM plugin speaks none of {} (it speaks {})", SUPPORTED_VERSIONS.join(", "), theirs.join(", ")),
            ));
        };
        let mut v: Value = serde_json::from_slice(self.stdin).map_err(|e| CniError::new(code::DECODE, e.to_string()))?;
        v["cniVersion"] = Value::String(common.to_string());
        Ok(Some(v.to_string().into_bytes()))
    }
}

/// An IPAM plugin started and not waited for yet.
struct Pending<'e> {
    exe: PathBuf,
    child: std::process::Child,
    plugin: &'e str,
    command: &'e str,
    env: &'e [(&'e str, Option<&'e str>)],
}

/// Starts a plugin executable with CNI_COMMAND and `env` changes, its
/// stdin written and closed.
fn spawn(exe: &Path, command: &str, env: &[(&str, Option<&str>)], stdin: &[u8]) -> Res<std::process::Child> {
    let mut c = Command::new(exe);
    c.env("CNI_COMMAND", command).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let io = |e: std::io::Error| CniError::new(code::IO_FAILURE, format!("running {}: {e}", exe.display()));
    let mut child = c.spawn().map_err(io)?;
    // A plugin reads its configuration as it starts; dropping the pipe
    // after writing closes it.
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin).map_err(io)?;
    }
    Ok(child)
}

/// Runs a plugin executable with CNI_COMMAND and `env` changes.
fn exec(exe: &Path, command: &str, env: &[(&str, Option<&str>)], stdin: &[u8]) -> Res<std::process::Output> {
    let child = spawn(exe, command, env, stdin)?;
    child.wait_with_output().map_err(|e| CniError::new(code::IO_FAILURE, format!("running {}: {e}", exe.display())))
}

/// The first IPv4 address of an IPAM result. IPv6 is refused: this build
/// has no IPv6 datapath.
fn pick_ipv4(r: &CniResult) -> Res<Ipv4Addr> {
    let mut v4 = None;
    for ip in &r.ips {
        let addr = ip.address.split('/').next().unwrap_or("");
        match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => {
                v4.get_or_insert(a);
            }
            Ok(IpAddr::V6(a)) => {
                return Err(CniError::new(
                    code::UNSUPPORTED,
                    format!("the IPAM plugin gave IPv6 address {a}: this build has no IPv6 datapath (use IPv4 ranges only)"),
                ))
            }
            Err(_) => return Err(CniError::new(code::IPAM_RESULT, format!("the IPAM plugin gave address '{}'", cut(&ip.address)))),
        }
    }
    v4.ok_or_else(|| CniError::new(code::IPAM_RESULT, "the IPAM plugin gave no IPv4 address"))
}

/// The MAC of a host interface, "" if it cannot be read.
fn host_mac(name: &str) -> String {
    crate::net::netif::mac_of(name).map(|m| format_mac(&m)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(command: &str, stdin: &str) -> (bool, Value) {
        let inv = Invocation { command: Some(command.into()), ..Default::default() };
        let o = run(&inv, stdin.as_bytes());
        (o.ok, serde_json::from_str(&o.stdout).unwrap_or(Value::Null))
    }

    #[test]
    fn version_answers_without_a_datapath() {
        let (ok, v) = run_with("VERSION", r#"{"cniVersion":"1.0.0"}"#);
        assert!(ok);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["supportedVersions"], serde_json::json!(["0.4.0", "1.0.0", "1.1.0"]));
        let (ok, v) = run_with("VERSION", "");
        assert!(ok);
        assert_eq!(v["cniVersion"], LATEST_VERSION);
    }

    #[test]
    fn bad_input_gets_the_spec_s_codes() {
        let inv = Invocation::default();
        let o = run(&inv, b"{}");
        assert!(!o.ok);
        assert_eq!(serde_json::from_str::<Value>(&o.stdout).unwrap()["code"], code::INVALID_ENV);
        let cases = [
            ("ADD", "not json", code::DECODE),
            ("ADD", r#"{"cniVersion":"0.3.1","name":"n","type":"datapath-cni"}"#, code::INCOMPATIBLE_VERSION),
            ("ADD", r#"{"cniVersion":"1.0.0","type":"datapath-cni"}"#, code::INVALID_CONFIG),
            ("ADD", r#"{"cniVersion":"1.0.0","name":"n","type":"datapath-cni"}"#, code::INVALID_ENV),
            ("FROB", r#"{"cniVersion":"1.0.0","name":"n","type":"datapath-cni"}"#, code::INVALID_ENV),
        ];
        for (cmd, stdin, want) in cases {
            let (ok, v) = run_with(cmd, stdin);
            assert!(!ok, "{cmd} {stdin}");
            assert_eq!(v["code"], want, "{cmd} {stdin}: {v}");
            assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }

    #[test]
    fn port_mappings_become_published_ports() {
        let conf: NetConf = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[
              {"hostPort":30001,"containerPort":25565,"protocol":"tcp"},
              {"hostPort":30002,"containerPort":19132,"protocol":"UDP","hostIP":"203.0.113.10"},
              {"hostPort":30003,"containerPort":80,"hostIP":"0.0.0.0"}]}}"#,
        )
        .unwrap();
        let p = ports_of(&conf).unwrap();
        assert_eq!(p[0], "30001:25565/tcp".parse().unwrap());
        assert_eq!(p[1], "203.0.113.10:30002:19132/udp".parse().unwrap());
        assert_eq!(p[2], "30003:80/tcp".parse().unwrap());
        for (bad, want) in [
            (r#"{"hostPort":0,"containerPort":1}"#, code::INVALID_CONFIG),
            (r#"{"hostPort":1,"containerPort":70000}"#, code::INVALID_CONFIG),
            (r#"{"hostPort":1,"containerPort":1,"protocol":"sctp"}"#, code::UNSUPPORTED),
            (r#"{"hostPort":1,"containerPort":1,"hostIP":"2001:db8::1"}"#, code::UNSUPPORTED),
            (r#"{"hostPort":1,"containerPort":1,"hostIP":"nope"}"#, code::INVALID_CONFIG),
        ] {
            let conf: NetConf =
                serde_json::from_str(&format!(r#"{{"runtimeConfig":{{"portMappings":[{bad}]}}}}"#)).unwrap();
            assert_eq!(ports_of(&conf).unwrap_err().code, want, "{bad}");
        }
    }

    #[test]
    fn ipam_results_give_one_ipv4_address() {
        let r = |ips: &str| -> CniResult { serde_json::from_str(&format!(r#"{{"ips":{ips}}}"#)).unwrap() };
        assert_eq!(pick_ipv4(&r(r#"[{"address":"10.89.0.5/24","gateway":"10.89.0.1"}]"#)).unwrap(), Ipv4Addr::new(10, 89, 0, 5));
        assert_eq!(pick_ipv4(&r("[]")).unwrap_err().code, code::IPAM_RESULT);
        assert_eq!(pick_ipv4(&r(r#"[{"address":"10.89.0.5/24"},{"address":"2001:db8::5/64"}]"#)).unwrap_err().code, code::UNSUPPORTED);
        assert_eq!(pick_ipv4(&r(r#"[{"address":"junk"}]"#)).unwrap_err().code, code::IPAM_RESULT);
    }

    #[test]
    fn container_names_round_trip_to_attachments() {
        let n = container_name("3f6940ab5ab43bc5", "eth0");
        assert_eq!(n, "3f6940ab5ab43bc5/eth0");
        assert_eq!(attachment_of(&n), Some(Attachment { container_id: "3f6940ab5ab43bc5".into(), ifname: "eth0".into() }));
        assert!(check_container_id("a.b-c_d").is_ok());
        for bad in ["", "-a", "a/b", "a b"] {
            assert_eq!(check_container_id(bad).unwrap_err().code, code::INVALID_ENV, "{bad}");
        }
    }
}
