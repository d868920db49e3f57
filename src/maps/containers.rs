//! Container records (`containers`, keyed by name) and how containers are
//! wired (`container_cfg`: the gateway address). Both are user-space-only
//! maps in the pin root, so they live as long as the datapath's other
//! state: they survive `datapathctl` exiting, crashing and `load`.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use serde::Serialize;

use super::{delete, full_or, lookup, open};
use crate::abi::{bytes_of, capacity, cstr, from_bytes, set_cstr, types, Proto, AF_INET};
use crate::kernel::pins::PinRoot;
use crate::net::wiring::DEFAULT_GATEWAY4;

/// One port a container publishes: `[ext-addr:]host-port:ctr-port/proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Port {
    /// The external address it is published on; None: the default one.
    pub ext_addr: Option<Ipv4Addr>,
    pub host_port: u16,
    pub ctr_port: u16,
    pub proto: Proto,
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(a) = self.ext_addr {
            write!(f, "{a}:")?;
        }
        write!(f, "{}:{}/{}", self.host_port, self.ctr_port, self.proto)
    }
}

fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

fn port_of(s: &str, what: &str, whole: &str) -> Result<u16> {
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => bail!("invalid published port '{}': {what} '{}' is not 1-65535", cut(whole), cut(s)),
    }
}

impl FromStr for Port {
    type Err = anyhow::Error;

    /// `[<ext-addr>:]<host-port>:<ctr-port>[/tcp|/udp]`, as Docker's `-p`
    /// (without ranges); the protocol defaults to tcp.
    fn from_str(s: &str) -> Result<Self> {
        let (ports, proto) = match s.rsplit_once('/') {
            Some((p, proto)) => (p, proto.parse::<Proto>().with_context(|| format!("invalid published port '{}'", cut(s)))?),
            None => (s, Proto::Tcp),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (ext, host, ctr) = match parts.as_slice() {
            [h, c] => (None, *h, *c),
            [a, h, c] => {
                let ip: Ipv4Addr = a.parse().map_err(|_| {
                    anyhow::anyhow!("invalid published port '{}': '{}' is not an IPv4 address", cut(s), cut(a))
                })?;
                (Some(ip), *h, *c)
            }
            _ => bail!("invalid published port '{}': expected [ADDRESS:]HOST-PORT:CONTAINER-PORT[/tcp|/udp]", cut(s)),
        };
        Ok(Port {
            ext_addr: ext,
            host_port: port_of(host, "host port", s)?,
            ctr_port: port_of(ctr, "container port", s)?,
            proto,
        })
    }
}

/// Where a record is in its life (see `enum dp_ctr_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// `container add` is making it, or was killed while it did.
    Adding,
    /// Everything is made.
    Ready,
    /// `container del` is removing it, or was killed while it did.
    Deleting,
}

impl State {
    fn code(self) -> u32 {
        use types::dp_ctr_state as S;
        match self {
            State::Adding => S::DP_CTR_ADDING.0,
            State::Ready => S::DP_CTR_READY.0,
            State::Deleting => S::DP_CTR_DELETING.0,
        }
    }

    fn from_code(c: u32) -> Result<Self> {
        use types::dp_ctr_state as S;
        Ok(match c {
            c if c == S::DP_CTR_ADDING.0 => State::Adding,
            c if c == S::DP_CTR_READY.0 => State::Ready,
            c if c == S::DP_CTR_DELETING.0 => State::Deleting,
            _ => bail!("container record in unknown state {c}"),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Adding => "adding",
            State::Ready => "ready",
            State::Deleting => "deleting",
        }
    }
}

fn ser_mac<S: serde::Serializer>(mac: &Option<[u8; 6]>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match mac {
        Some(m) => s.serialize_str(&crate::net::netif::format_mac(m)),
        None => s.serialize_none(),
    }
}

/// What `container add` made for one container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    pub name: String,
    pub state: State,
    /// The named namespace of the host side (`-n NAME`), "" for
    /// datapathctl's own.
    pub host_netns: String,
    /// The container's network namespace.
    pub netns: PathBuf,
    /// The container side's name.
    pub ifname: String,
    /// MTU of both ends; None: the kernel's default.
    pub mtu: Option<u32>,
    pub ip4: Ipv4Addr,
    /// The host veth's address, the container's default gateway.
    pub gateway4: Ipv4Addr,
    /// A dual-stack container's IPv6 address (its gateway is fe80::1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip6: Option<std::net::Ipv6Addr>,
    pub host_ifname: String,
    /// The host veth's index; 0 until it exists.
    pub host_ifindex: u32,
    #[serde(serialize_with = "ser_mac")]
    pub ctr_mac: Option<[u8; 6]>,
    /// The CNI network that added it; "" for `container add`.
    pub owner: String,
    pub ports: Vec<Port>,
}

impl Record {
    fn value(&self) -> Result<types::container_value> {
        if self.ports.len() > capacity::CTR_PORTS {
            bail!("{} published ports; a container can publish at most {}", self.ports.len(), capacity::CTR_PORTS);
        }
        let mut v = types::container_value {
            state: self.state.code(),
            host_ifindex: self.host_ifindex,
            mtu: self.mtu.unwrap_or(0),
            ctr_mac: self.ctr_mac.unwrap_or_default(),
            nports: self.ports.len() as u16,
            ..Default::default()
        };
        v.set_addr4(self.ip4);
        v.set_gateway4(self.gateway4);
        v.addr6 = self.ip6.map(crate::abi::be128).unwrap_or([0; 4]);
        set_cstr(&mut v.host_ifname, &self.host_ifname).context("host veth name")?;
        set_cstr(&mut v.ifname, &self.ifname).context("interface name")?;
        set_cstr(&mut v.host_netns, &self.host_netns).context("host namespace name")?;
        let netns = self.netns.to_str().context("namespace path is not UTF-8")?;
        set_cstr(&mut v.netns, netns).context("namespace path")?;
        set_cstr(&mut v.owner, &self.owner).context("CNI network name")?;
        for (slot, p) in v.ports.iter_mut().zip(&self.ports) {
            *slot = types::container_port::new(p.ext_addr, p.host_port, p.ctr_port, p.proto);
        }
        Ok(v)
    }

    fn from_entry(k: &types::container_key, v: &types::container_value) -> Result<Self> {
        let n = usize::from(v.nports).min(capacity::CTR_PORTS);
        let ports = v.ports[..n]
            .iter()
            .map(|p| {
                if p.family != AF_INET {
                    bail!("published port of address family {} is not supported by this build", p.family);
                }
                Ok(Port { ext_addr: p.ext(), host_port: p.host_port(), ctr_port: p.ctr_port(), proto: Proto::from_number(p.proto)? })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Record {
            name: k.name(),
            state: State::from_code(v.state)?,
            host_netns: cstr(&v.host_netns),
            netns: PathBuf::from(cstr(&v.netns)),
            ifname: cstr(&v.ifname),
            mtu: (v.mtu != 0).then_some(v.mtu),
            ip4: v.addr4(),
            gateway4: v.gateway4(),
            ip6: (v.addr6 != [0; 4]).then(|| crate::abi::ip6_of(&v.addr6)),
            host_ifname: cstr(&v.host_ifname),
            host_ifindex: v.host_ifindex,
            ctr_mac: (v.ctr_mac != [0; 6]).then_some(v.ctr_mac),
            owner: cstr(&v.owner),
            ports,
        })
    }
}

use super::name::{CONTAINERS, CONTAINER_CFG};
use super::{Ext, Txn};

impl Port {
    /// Where the port is published, as the mapping layer names it.
    pub fn ext(&self) -> Ext {
        self.ext_addr.map_or(Ext::Default, |a| Ext::Addr(a.into()))
    }
}

/// Writes a record within a transaction (with the other entries of the
/// same change).
pub fn put_txn(txn: &mut Txn, r: &Record) -> Result<()> {
    let k = types::container_key::new(&r.name)?;
    let v = r.value().with_context(|| format!("container {}", cut(&r.name)))?;
    txn.put(CONTAINERS, &k, &v)
}

/// The `containers` map.
pub struct Containers {
    map: MapHandle,
}

impl Containers {
    pub fn open(pins: &PinRoot) -> Result<Self> {
        Ok(Self { map: open(pins, CONTAINERS)? })
    }

    pub fn get(&self, name: &str) -> Result<Option<Record>> {
        let k = types::container_key::new(name)?;
        match lookup::<_, types::container_value>(&self.map, &k)? {
            Some(v) => Ok(Some(Record::from_entry(&k, &v)?)),
            None => Ok(None),
        }
    }

    /// Writes a record, creating or replacing it. A full map is a
    /// [`super::Full`] error.
    pub fn put(&self, r: &Record) -> Result<()> {
        let k = types::container_key::new(&r.name)?;
        let v = r.value().with_context(|| format!("container {}", cut(&r.name)))?;
        self.map
            .update(bytes_of(&k), bytes_of(&v), MapFlags::ANY)
            .map_err(|e| full_or(e, CONTAINERS, capacity::CONTAINERS))
    }

    /// Removes a record; false if there was none.
    pub fn delete(&self, name: &str) -> Result<bool> {
        delete(&self.map, &types::container_key::new(name)?)
    }

    /// Every record, by name.
    pub fn list(&self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        for key in self.map.keys() {
            let k: types::container_key = from_bytes(&key)?;
            if let Some(v) = lookup::<_, types::container_value>(&self.map, &k)? {
                out.push(Record::from_entry(&k, &v)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn count(&self) -> usize {
        super::count(&self.map)
    }
}

/// The gateway address every host veth gets (`setup --gateway`; default
/// 169.254.1.1).
pub fn gateway(pins: &PinRoot) -> Result<Ipv4Addr> {
    let map = open(pins, CONTAINER_CFG)?;
    let c: types::container_config = lookup(&map, &0u32)?.unwrap_or_default();
    Ok(c.gateway4().unwrap_or(DEFAULT_GATEWAY4))
}

/// Sets the gateway address for containers wired from now on.
pub fn set_gateway(pins: &PinRoot, gw: Ipv4Addr) -> Result<()> {
    let map = open(pins, CONTAINER_CFG)?;
    let v = types::container_config::new((gw != DEFAULT_GATEWAY4).then_some(gw));
    map.update(bytes_of(&0u32), bytes_of(&v), MapFlags::ANY).context("updating map container_cfg")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_ports_parse_like_docker_minus_ranges() {
        let p: Port = "30001:25565".parse().unwrap();
        assert_eq!(p, Port { ext_addr: None, host_port: 30001, ctr_port: 25565, proto: Proto::Tcp });
        let p: Port = "203.0.113.10:19132:19132/udp".parse().unwrap();
        assert_eq!(p.ext_addr, Some(Ipv4Addr::new(203, 0, 113, 10)));
        assert_eq!((p.host_port, p.ctr_port, p.proto), (19132, 19132, Proto::Udp));
        assert_eq!(p.to_string(), "203.0.113.10:19132:19132/udp");
        assert_eq!("30001:25565/TCP".parse::<Port>().unwrap().proto, Proto::Tcp);
        for bad in ["30001", "0:25565", "30001:65536", "30001:25565/sctp", "a.b:1:2", "1:2:3:4", "30001-30002:25565", ""] {
            let e = bad.parse::<Port>().unwrap_err().to_string();
            assert!(e.starts_with("invalid published port"), "{bad}: {e}");
        }
        let long = format!("{}:1", "9".repeat(200));
        assert!(long.parse::<Port>().unwrap_err().to_string().len() < 200, "echo cut");
    }

    #[test]
    fn records_round_trip_through_the_map_layout() {
        let r = Record {
            name: "4f2a9c0d8e7b6a5f/eth0".into(),
            state: State::Ready,
            host_netns: "hostns".into(),
            netns: "/run/netns/netns-1234".into(),
            ifname: "eth0".into(),
            mtu: Some(1400),
            ip4: Ipv4Addr::new(10, 88, 0, 5),
            gateway4: DEFAULT_GATEWAY4,
            ip6: None,
            host_ifname: "dp0123456789abc".into(),
            host_ifindex: 42,
            ctr_mac: Some([2, 0, 0, 0, 0, 1]),
            owner: "games".into(),
            ports: vec!["30001:25565".parse().unwrap(), "203.0.113.10:19132:19132/udp".parse().unwrap()],
        };
        let k = types::container_key::new(&r.name).unwrap();
        let v = r.value().unwrap();
        let back: types::container_value = from_bytes(bytes_of(&v)).unwrap();
        assert_eq!(Record::from_entry(&k, &back).unwrap(), r);
        let mut none = r.clone();
        none.mtu = None;
        none.ctr_mac = None;
        none.host_ifindex = 0;
        none.state = State::Adding;
        assert_eq!(Record::from_entry(&k, &none.value().unwrap()).unwrap(), none);
        let mut many = r.clone();
        many.ports = (1..=65).map(|i| Port { ext_addr: None, host_port: i, ctr_port: i, proto: Proto::Tcp }).collect();
        assert!(many.value().is_err());
        let mut long = r;
        long.netns = PathBuf::from(format!("/run/netns/{}", "n".repeat(120)));
        assert!(long.value().is_err());
    }
}
