//! The compiled programs: one libbpf-rs skeleton per `src/bpf/*.bpf.c`.
//!
//! Map keys, values and shared enums are defined once, in
//! `src/bpf/dp_types.h` and `dp_consts.h`; Rust uses the skeleton's
//! generated copies (every skeleton carries the same ones; `types` here is
//! dnat's). This module makes them byte-convertible and asserts their sizes
//! against the C `_Static_assert`s.

#![allow(clippy::all, missing_docs, non_camel_case_types, non_upper_case_globals)]

pub mod dnat {
    include!(concat!(env!("OUT_DIR"), "/dnat.skel.rs"));
}
pub mod snat {
    include!(concat!(env!("OUT_DIR"), "/snat.skel.rs"));
}
pub mod arp {
    include!(concat!(env!("OUT_DIR"), "/arp.skel.rs"));
}
pub mod tproxy {
    include!(concat!(env!("OUT_DIR"), "/tproxy.skel.rs"));
}
pub mod guard {
    include!(concat!(env!("OUT_DIR"), "/guard.skel.rs"));
}
pub mod hostaccess {
    include!(concat!(env!("OUT_DIR"), "/hostaccess.skel.rs"));
}

pub use dnat::types;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context, Result};
use libbpf_rs::btf::{types::Enum, Btf};

// SAFETY: every type below is a C struct of integers and byte arrays with
// explicit padding (dp_types.h): any byte pattern is a valid value.
unsafe impl plain::Plain for types::dnat4_key {}
// SAFETY: as above.
unsafe impl plain::Plain for types::dnat4_value {}
// SAFETY: as above.
unsafe impl plain::Plain for types::flow4_key {}
// SAFETY: as above.
unsafe impl plain::Plain for types::flow4_value {}
// SAFETY: as above.
unsafe impl plain::Plain for types::host_flow_value {}
// SAFETY: as above.
unsafe impl plain::Plain for types::port_counter {}
// SAFETY: as above.
unsafe impl plain::Plain for types::host_config {}
// SAFETY: as above.
unsafe impl plain::Plain for types::mapping_key {}
// SAFETY: as above.
unsafe impl plain::Plain for types::mapping_value {}
// SAFETY: as above.
unsafe impl plain::Plain for types::mapping_rev_key {}
// SAFETY: as above.
unsafe impl plain::Plain for types::external_key {}
// SAFETY: as above.
unsafe impl plain::Plain for types::external_value {}
// SAFETY: as above.
unsafe impl plain::Plain for types::dp_meta {}
// SAFETY: as above.
unsafe impl plain::Plain for types::ctr_endpoint {}
// SAFETY: as above.
unsafe impl plain::Plain for types::proxy_config {}
// SAFETY: as above.
unsafe impl plain::Plain for types::veth_info {}
// SAFETY: as above.
unsafe impl plain::Plain for types::flow_orig {}
// SAFETY: as above.
unsafe impl plain::Plain for types::dp_counter {}
// SAFETY: as above.
unsafe impl plain::Plain for types::attach_key {}
// SAFETY: as above.
unsafe impl plain::Plain for types::attach_value {}
// SAFETY: as above.
unsafe impl plain::Plain for types::attach_name_key {}
// SAFETY: as above.
unsafe impl plain::Plain for types::pin_root_value {}
// SAFETY: as above.
unsafe impl plain::Plain for types::guard_config {}
// SAFETY: as above.
unsafe impl plain::Plain for types::guard_limit {}
// SAFETY: as above.
unsafe impl plain::Plain for types::guard_lpm4 {}
// SAFETY: as above.
unsafe impl plain::Plain for types::guard_lpm6 {}
// SAFETY: as above.
unsafe impl plain::Plain for types::guard_deny {}
// SAFETY: as above.
unsafe impl plain::Plain for types::guard_src4_key {}
// SAFETY: as above.
unsafe impl plain::Plain for types::guard_state {}
// SAFETY: as above.
unsafe impl plain::Plain for types::sock_rev4_key {}
// SAFETY: as above.
unsafe impl plain::Plain for types::sock_rev4_value {}
// SAFETY: as above.
unsafe impl plain::Plain for types::container_key {}
// SAFETY: as above.
unsafe impl plain::Plain for types::container_port {}
// SAFETY: as above.
unsafe impl plain::Plain for types::container_value {}
// SAFETY: as above.
unsafe impl plain::Plain for types::container_config {}
// SAFETY: as above.
unsafe impl plain::Plain for types::dp_tuple {}
// SAFETY: as above.
unsafe impl plain::Plain for types::trace_event {}
// SAFETY: as above.
unsafe impl plain::Plain for types::trace_config {}
// SAFETY: as above.
unsafe impl plain::Plain for types::dnat6_key {}
// SAFETY: as above.
unsafe impl plain::Plain for types::dnat6_value {}
// SAFETY: as above.
unsafe impl plain::Plain for types::flow6_key {}
// SAFETY: as above.
unsafe impl plain::Plain for types::flow6_value {}
// SAFETY: as above.
unsafe impl plain::Plain for types::ctr_endpoint6 {}
// SAFETY: as above.
unsafe impl plain::Plain for types::flow_orig6 {}
// SAFETY: as above.
unsafe impl plain::Plain for types::veth6_info {}

// The C side asserts the same sizes (dp_types.h).
const _: () = assert!(std::mem::size_of::<types::dp_tuple>() == 40);
const _: () = assert!(std::mem::size_of::<types::trace_event>() == 112);
const _: () = assert!(std::mem::size_of::<types::trace_config>() == 80);
const _: () = assert!(std::mem::size_of::<types::dnat4_key>() == 8);
const _: () = assert!(std::mem::size_of::<types::dnat4_value>() == 20);
const _: () = assert!(std::mem::size_of::<types::flow4_key>() == 16);
const _: () = assert!(std::mem::size_of::<types::flow4_value>() == 20);
const _: () = assert!(std::mem::size_of::<types::host_flow_value>() == 8);
const _: () = assert!(std::mem::size_of::<types::port_counter>() == 40);
const _: () = assert!(std::mem::size_of::<types::host_config>() == 32);
const _: () = assert!(std::mem::size_of::<types::mapping_key>() == 20);
const _: () = assert!(std::mem::size_of::<types::mapping_value>() == 32);
const _: () = assert!(std::mem::size_of::<types::mapping_rev_key>() == 36);
const _: () = assert!(std::mem::size_of::<types::external_key>() == 20);
const _: () = assert!(std::mem::size_of::<types::external_value>() == 24);
const _: () = assert!(std::mem::size_of::<types::dp_meta>() == 32);
const _: () = assert!(std::mem::size_of::<types::ctr_endpoint>() == 8);
const _: () = assert!(std::mem::size_of::<types::proxy_config>() == 8);
const _: () = assert!(std::mem::size_of::<types::veth_info>() == 32);
const _: () = assert!(std::mem::size_of::<types::flow_orig>() == 12);
const _: () = assert!(std::mem::size_of::<types::dp_counter>() == 16);
const _: () = assert!(std::mem::size_of::<types::attach_key>() == 16);
const _: () = assert!(std::mem::size_of::<types::attach_value>() == 328);
const _: () = assert!(std::mem::size_of::<types::attach_name_key>() == 24);
const _: () = assert!(std::mem::size_of::<types::pin_root_value>() == 256);
const _: () = assert!(std::mem::size_of::<types::guard_config>() == 32);
const _: () = assert!(std::mem::size_of::<types::guard_limit>() == 32);
const _: () = assert!(std::mem::size_of::<types::guard_lpm4>() == 8);
const _: () = assert!(std::mem::size_of::<types::guard_lpm6>() == 20);
const _: () = assert!(std::mem::size_of::<types::guard_deny>() == 16);
const _: () = assert!(std::mem::size_of::<types::guard_src4_key>() == 8);
const _: () = assert!(std::mem::size_of::<types::guard_state>() == 32);
const _: () = assert!(std::mem::size_of::<types::sock_rev4_key>() == 16);
const _: () = assert!(std::mem::size_of::<types::sock_rev4_value>() == 8);
const _: () = assert!(std::mem::size_of::<types::container_key>() == 128);
const _: () = assert!(std::mem::size_of::<types::container_port>() == 24);
const _: () = assert!(std::mem::size_of::<types::container_value>() == 1872);
const _: () = assert!(std::mem::size_of::<types::container_config>() == 32);
const _: () = assert!(std::mem::size_of::<types::dnat6_key>() == 20);
const _: () = assert!(std::mem::size_of::<types::dnat6_value>() == 32);
const _: () = assert!(std::mem::size_of::<types::flow6_key>() == 40);
const _: () = assert!(std::mem::size_of::<types::flow6_value>() == 32);
const _: () = assert!(std::mem::size_of::<types::ctr_endpoint6>() == 20);
const _: () = assert!(std::mem::size_of::<types::flow_orig6>() == 36);
const _: () = assert!(std::mem::size_of::<types::veth6_info>() == 40);

/// IP protocol of a published port or flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    pub fn from_number(n: u8) -> Result<Self> {
        match n {
            6 => Ok(Proto::Tcp),
            17 => Ok(Proto::Udp),
            _ => bail!("unknown IP protocol {n}"),
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl std::str::FromStr for Proto {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => bail!("invalid protocol '{s}': expected tcp or udp"),
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Network byte order lives in the key constructors below and nowhere else:
/// callers deal in host-order ports and `Ipv4Addr`.
fn be32(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn ip_of(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(be.to_ne_bytes())
}

/// Address family numbers (AF_INET, AF_INET6) of the maps that hold both.
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// An IPv4 address in the four-word layout of the maps that hold both
/// families: IPv4 in the first word, the rest zero.
pub fn addr4x4(ip: Ipv4Addr) -> [u32; 4] {
    [be32(ip), 0, 0, 0]
}

/// The IPv4 address of a four-word address, if it is one.
pub fn addr4_of(a: &[u32; 4]) -> Option<Ipv4Addr> {
    (a[1] == 0 && a[2] == 0 && a[3] == 0).then(|| ip_of(a[0]))
}

impl types::dnat4_key {
    pub fn new(ext_addr: Ipv4Addr, host_port: u16, proto: Proto) -> Self {
        Self { ext_addr: be32(ext_addr), host_port: host_port.to_be(), proto: proto.number(), pad: 0 }
    }
    pub fn ext_addr(&self) -> Ipv4Addr {
        ip_of(self.ext_addr)
    }
    pub fn host_port(&self) -> u16 {
        u16::from_be(self.host_port)
    }
}

impl types::dnat4_value {
    pub fn new(ctr_addr: Ipv4Addr, ctr_port: u16, ctr_mac: [u8; 6], veth_ifindex: u32, slot: u32) -> Self {
        Self { ctr_addr: be32(ctr_addr), ctr_port: ctr_port.to_be(), ctr_mac, veth_ifindex, slot }
    }
    pub fn ctr_addr(&self) -> Ipv4Addr {
        ip_of(self.ctr_addr)
    }
    pub fn ctr_port(&self) -> u16 {
        u16::from_be(self.ctr_port)
    }
}

impl types::flow4_key {
    pub fn new(ctr_addr: Ipv4Addr, ctr_port: u16, peer_addr: Ipv4Addr, peer_port: u16, proto: Proto) -> Self {
        Self {
            ctr_addr: be32(ctr_addr),
            peer_addr: be32(peer_addr),
            ctr_port: ctr_port.to_be(),
            peer_port: peer_port.to_be(),
            proto: proto.number(),
            pad: [0; 3],
        }
    }
    pub fn ctr_addr(&self) -> Ipv4Addr {
        ip_of(self.ctr_addr)
    }
    pub fn peer_addr(&self) -> Ipv4Addr {
        ip_of(self.peer_addr)
    }
    pub fn ctr_port(&self) -> u16 {
        u16::from_be(self.ctr_port)
    }
    pub fn peer_port(&self) -> u16 {
        u16::from_be(self.peer_port)
    }
}

impl types::flow4_value {
    pub fn new(ext_addr: Ipv4Addr, host_port: u16, ext_ifindex: u32, veth_ifindex: u32, slot: u32) -> Self {
        Self { ext_addr: be32(ext_addr), host_port: host_port.to_be(), flags: 0, pad: 0, ext_ifindex, veth_ifindex, slot }
    }
    pub fn ext_addr(&self) -> Ipv4Addr {
        ip_of(self.ext_addr)
    }
    pub fn host_port(&self) -> u16 {
        u16::from_be(self.host_port)
    }
}

impl types::mapping_key {
    /// `ext` None: published on every default external address.
    pub fn new(ext: Option<Ipv4Addr>, host_port: u16, proto: Proto) -> Self {
        Self {
            family: AF_INET,
            proto: proto.number(),
            host_port: host_port.to_be(),
            ext_addr: ext.map(addr4x4).unwrap_or([0; 4]),
        }
    }
    pub fn host_port(&self) -> u16 {
        u16::from_be(self.host_port)
    }
}

impl types::mapping_value {
    pub fn new(ctr_addr: Ipv4Addr, ctr_port: u16, ctr_mac: [u8; 6], veth_ifindex: u32, slot: u32) -> Self {
        Self { ctr_addr: addr4x4(ctr_addr), ctr_port: ctr_port.to_be(), ctr_mac, veth_ifindex, slot }
    }
    pub fn ctr_port(&self) -> u16 {
        u16::from_be(self.ctr_port)
    }
}

impl types::mapping_rev_key {
    pub fn new(ctr_addr: Ipv4Addr, ctr_port: u16, proto: Proto, ext: Option<Ipv4Addr>) -> Self {
        Self {
            family: AF_INET,
            proto: proto.number(),
            ctr_port: ctr_port.to_be(),
            ctr_addr: addr4x4(ctr_addr),
            ext_addr: ext.map(addr4x4).unwrap_or([0; 4]),
        }
    }
}

impl types::external_key {
    pub fn new(addr: Ipv4Addr) -> Self {
        Self { family: AF_INET, pad: [0; 3], addr: addr4x4(addr) }
    }
}

impl types::external_value {
    pub fn new(ifindex: u32, ifname: &str, default: bool) -> Self {
        let mut v = Self {
            ifindex,
            flags: if default { types::dp_ext_flag::DP_EXT_F_DEFAULT.0 } else { 0 },
            ifname: [0; 16],
        };
        for (d, s) in v.ifname.iter_mut().zip(ifname.bytes().take(15)) {
            *d = s as _;
        }
        v
    }
    pub fn is_default(&self) -> bool {
        self.flags & types::dp_ext_flag::DP_EXT_F_DEFAULT.0 != 0
    }
    pub fn name(&self) -> String {
        let b: Vec<u8> = self.ifname.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
        String::from_utf8_lossy(&b).into_owned()
    }
}

impl types::ctr_endpoint {
    pub fn new(ip: Ipv4Addr, port: u16, proto: Proto) -> Self {
        Self { ip: be32(ip), port: port.to_be(), proto: proto.number(), pad: 0 }
    }
    pub fn ip(&self) -> Ipv4Addr {
        ip_of(self.ip)
    }
    pub fn port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

impl types::proxy_config {
    pub fn new(dns: u16, http: u16, tcp: u16) -> Self {
        Self { dns_port: dns.to_be(), http_port: http.to_be(), tcp_port: tcp.to_be(), pad: 0 }
    }
    pub fn ports(&self) -> (u16, u16, u16) {
        (u16::from_be(self.dns_port), u16::from_be(self.http_port), u16::from_be(self.tcp_port))
    }
}

impl types::veth_info {
    pub fn new(ctr_ip: Ipv4Addr, host_ip: Ipv4Addr, host_mac: [u8; 6]) -> Self {
        Self { ctr_ip: be32(ctr_ip), host_ip: be32(host_ip), host_mac, pad: [0; 2], ifname: [0; 16] }
    }
    /// Records the host veth's name (truncated to 15 bytes, NUL-padded).
    pub fn with_name(mut self, name: &str) -> Self {
        self.ifname = [0; 16];
        for (d, s) in self.ifname.iter_mut().zip(name.bytes().take(15)) {
            *d = s as _;
        }
        self
    }
    pub fn name(&self) -> String {
        let b: Vec<u8> = self.ifname.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
        String::from_utf8_lossy(&b).into_owned()
    }
    pub fn ctr_ip(&self) -> Ipv4Addr {
        ip_of(self.ctr_ip)
    }
    pub fn host_ip(&self) -> Ipv4Addr {
        ip_of(self.host_ip)
    }
}

impl types::flow_orig {
    pub fn new(orig_ip: Ipv4Addr, orig_port: u16, proxy_ip: Ipv4Addr, proxy_port: u16) -> Self {
        Self {
            orig_ip: be32(orig_ip),
            proxy_ip: be32(proxy_ip),
            orig_port: orig_port.to_be(),
            proxy_port: proxy_port.to_be(),
        }
    }
    pub fn orig_ip(&self) -> Ipv4Addr {
        ip_of(self.orig_ip)
    }
    pub fn orig_port(&self) -> u16 {
        u16::from_be(self.orig_port)
    }
    pub fn proxy_ip(&self) -> Ipv4Addr {
        ip_of(self.proxy_ip)
    }
    pub fn proxy_port(&self) -> u16 {
        u16::from_be(self.proxy_port)
    }
}

impl types::sock_rev4_key {
    pub fn new(cookie: u64, ctr_addr: Ipv4Addr, ctr_port: u16) -> Self {
        Self { cookie, ctr_addr: be32(ctr_addr), ctr_port: ctr_port.to_be(), pad: 0 }
    }
    pub fn ctr_addr(&self) -> Ipv4Addr {
        ip_of(self.ctr_addr)
    }
    pub fn ctr_port(&self) -> u16 {
        u16::from_be(self.ctr_port)
    }
}

/// Writes `s` into a fixed, NUL-padded C string field; refused if it does
/// not fit with its NUL or holds a NUL itself.
pub fn set_cstr(dst: &mut [std::ffi::c_char], s: &str) -> Result<()> {
    if s.len() >= dst.len() || s.as_bytes().contains(&0) {
        bail!("'{}' does not fit in {} bytes", s.chars().take(64).collect::<String>(), dst.len() - 1);
    }
    dst.fill(0);
    for (d, b) in dst.iter_mut().zip(s.bytes()) {
        *d = b as std::ffi::c_char;
    }
    Ok(())
}

/// Reads a fixed, NUL-padded C string field.
pub fn cstr(src: &[std::ffi::c_char]) -> String {
    let b: Vec<u8> = src.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    String::from_utf8_lossy(&b).into_owned()
}

impl types::container_key {
    /// The key of container `name`; refused if it does not fit.
    pub fn new(name: &str) -> Result<Self> {
        let mut k = Self::default();
        set_cstr(&mut k.name, name).context("container name")?;
        Ok(k)
    }
    pub fn name(&self) -> String {
        cstr(&self.name)
    }
}

impl types::container_port {
    /// A published port; `ext` None: the default external address.
    pub fn new(ext: Option<Ipv4Addr>, host_port: u16, ctr_port: u16, proto: Proto) -> Self {
        let ext_addr = ext.map_or([0; 4], addr4x4);
        Self { family: AF_INET, proto: proto.number(), host_port: host_port.to_be(), ctr_port: ctr_port.to_be(), pad: 0, ext_addr }
    }
    pub fn ext(&self) -> Option<Ipv4Addr> {
        (self.ext_addr != [0; 4]).then(|| addr4_of(&self.ext_addr)).flatten()
    }
    pub fn host_port(&self) -> u16 {
        u16::from_be(self.host_port)
    }
    pub fn ctr_port(&self) -> u16 {
        u16::from_be(self.ctr_port)
    }
}

impl types::sock_rev4_value {
    pub fn new(addr: Ipv4Addr, port: u16) -> Self {
        Self { addr: be32(addr), port: port.to_be(), pad: 0 }
    }
    pub fn addr(&self) -> Ipv4Addr {
        ip_of(self.addr)
    }
    pub fn port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

impl types::container_value {
    pub fn set_addr4(&mut self, a: Ipv4Addr) {
        self.addr4 = be32(a);
    }
    pub fn addr4(&self) -> Ipv4Addr {
        ip_of(self.addr4)
    }
    pub fn set_gateway4(&mut self, a: Ipv4Addr) {
        self.gateway4 = be32(a);
    }
    pub fn gateway4(&self) -> Ipv4Addr {
        ip_of(self.gateway4)
    }
}

impl types::container_config {
    /// `gateway4` None: the default.
    pub fn new(gateway4: Option<Ipv4Addr>) -> Self {
        Self { gateway4: gateway4.map_or(0, be32), ..Default::default() }
    }
    pub fn gateway4(&self) -> Option<Ipv4Addr> {
        (self.gateway4 != 0).then(|| ip_of(self.gateway4))
    }
}

/// An IPv6 address as the maps hold it: four words in network order.
pub fn be128(ip: Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    std::array::from_fn(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
}

/// The IPv6 address of four words in network order.
pub fn ip6_of(a: &[u32; 4]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, w) in a.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

/// Any address in the four-word layout of the maps that hold both
/// families, with its family number.
pub fn addr_x4(ip: IpAddr) -> (u8, [u32; 4]) {
    match ip {
        IpAddr::V4(a) => (AF_INET, addr4x4(a)),
        IpAddr::V6(a) => (AF_INET6, be128(a)),
    }
}

/// The address of a four-word address of family `family`.
pub fn addr_of(family: u8, a: &[u32; 4]) -> Option<IpAddr> {
    match family {
        AF_INET => addr4_of(a).map(IpAddr::V4),
        AF_INET6 => Some(IpAddr::V6(ip6_of(a))),
        _ => None,
    }
}

impl types::dnat6_key {
    pub fn new(ext_addr: Ipv6Addr, host_port: u16, proto: Proto) -> Self {
        Self { ext_addr: be128(ext_addr), host_port: host_port.to_be(), proto: proto.number(), pad: 0 }
    }
}

impl types::dnat6_value {
    pub fn new(ctr_addr: Ipv6Addr, ctr_port: u16, ctr_mac: [u8; 6], veth_ifindex: u32, slot: u32) -> Self {
        Self { ctr_addr: be128(ctr_addr), ctr_port: ctr_port.to_be(), ctr_mac, veth_ifindex, slot }
    }
    pub fn ctr_addr(&self) -> Ipv6Addr {
        ip6_of(&self.ctr_addr)
    }
}

impl types::flow6_key {
    pub fn new(ctr_addr: Ipv6Addr, ctr_port: u16, peer_addr: Ipv6Addr, peer_port: u16, proto: Proto) -> Self {
        Self {
            ctr_addr: be128(ctr_addr),
            peer_addr: be128(peer_addr),
            ctr_port: ctr_port.to_be(),
            peer_port: peer_port.to_be(),
            proto: proto.number(),
            pad: [0; 3],
        }
    }
    pub fn ctr_addr(&self) -> Ipv6Addr {
        ip6_of(&self.ctr_addr)
    }
    pub fn peer_addr(&self) -> Ipv6Addr {
        ip6_of(&self.peer_addr)
    }
}

impl types::flow6_value {
    pub fn new(ext_addr: Ipv6Addr, host_port: u16, ext_ifindex: u32, veth_ifindex: u32, slot: u32) -> Self {
        Self { ext_addr: be128(ext_addr), host_port: host_port.to_be(), flags: 0, pad: 0, ext_ifindex, veth_ifindex, slot }
    }
    pub fn ext_addr(&self) -> Ipv6Addr {
        ip6_of(&self.ext_addr)
    }
}

impl types::ctr_endpoint6 {
    pub fn new(ip: Ipv6Addr, port: u16, proto: Proto) -> Self {
        Self { ip: be128(ip), port: port.to_be(), proto: proto.number(), pad: 0 }
    }
}

impl types::flow_orig6 {
    pub fn new(orig_ip: Ipv6Addr, orig_port: u16, proxy_ip: Ipv6Addr, proxy_port: u16) -> Self {
        Self { orig_ip: be128(orig_ip), proxy_ip: be128(proxy_ip), orig_port: orig_port.to_be(), proxy_port: proxy_port.to_be() }
    }
    pub fn orig_ip(&self) -> Ipv6Addr {
        ip6_of(&self.orig_ip)
    }
    pub fn proxy_ip(&self) -> Ipv6Addr {
        ip6_of(&self.proxy_ip)
    }
}

impl types::veth6_info {
    pub fn new(ctr_ip: Ipv6Addr, host_ip: Ipv6Addr, host_mac: [u8; 6]) -> Self {
        Self { ctr_ip: be128(ctr_ip), host_ip: be128(host_ip), host_mac, pad: [0; 2] }
    }
    pub fn ctr_ip(&self) -> Ipv6Addr {
        ip6_of(&self.ctr_ip)
    }
    pub fn host_ip(&self) -> Ipv6Addr {
        ip6_of(&self.host_ip)
    }
}

/// Views a map struct as the bytes the kernel stores.
pub fn bytes_of<T: plain::Plain>(v: &T) -> &[u8] {
    // SAFETY: T is Plain (no pointers, no invalid bit patterns, explicit
    // padding that constructors zero), so its bytes are initialised.
    unsafe { plain::as_bytes(v) }
}

/// Decodes a map struct from kernel bytes; copies, so alignment is moot.
pub fn from_bytes<T: plain::Plain + Default>(bytes: &[u8]) -> Result<T> {
    let mut v = T::default();
    plain::copy_from_bytes(&mut v, bytes)
        .map_err(|e| anyhow::anyhow!("map value of {} bytes does not decode: {e:?}", bytes.len()))?;
    Ok(v)
}

/// The compiled dnat object; its BTF is where user space reads the shared
/// enums' names.
pub static DNAT_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dnat.bpf.o"));

/// Names of the counters, indexed by `enum dp_stat`, read from the BTF of
/// the compiled programs: the C enum is the only list.
pub fn stat_names() -> Result<Vec<String>> {
    let btf = Btf::from_raw("dnat", DNAT_OBJECT)
        .context("reading the programs' BTF")?
        .context("the compiled programs carry no BTF")?;
    stat_names_in(&btf)
}

/// Names of the counters in a program's BTF (this build's, or the BTF the
/// kernel keeps of a loaded program of another build).
pub fn stat_names_in(btf: &Btf<'_>) -> Result<Vec<String>> {
    let e: Enum<'_> = btf.type_by_name("dp_stat").context("enum dp_stat missing from BTF")?;
    let mut named: Vec<(usize, String)> = Vec::new();
    let mut max = None;
    for m in e.iter() {
        let name = m.name.and_then(|n| n.to_str()).context("unnamed dp_stat member")?;
        let Ok(i) = usize::try_from(m.value) else { continue };
        if name == "DP_STAT_MAX" {
            max = Some(i);
        } else {
            named.push((i, name.to_string()));
        }
    }
    let max = max.context("enum dp_stat has no DP_STAT_MAX")?;
    let mut names = vec![String::new(); max];
    for (i, n) in named {
        if i < max {
            names[i] = n;
        }
    }
    if let Some(i) = names.iter().position(String::is_empty) {
        bail!("dp_stat value {i} has no name in BTF");
    }
    Ok(names)
}

/// Pinned program names, in the order `status` shows them.
pub const PROG_NAMES: [&str; 11] = [
    "guard",
    "dnat",
    "snat",
    "arp",
    "tproxy_ingress",
    "tproxy_egress",
    "getsockopt",
    "connect4",
    "sendmsg4",
    "recvmsg4",
    "getpeername4",
];

/// Splits a counter name `DP_STAT_<PROGRAM>_<REASON>` into program and
/// reason, matching the longest program name.
pub fn split_stat_name(name: &str) -> (String, String) {
    let rest = name.trim_start_matches("DP_STAT_").to_ascii_lowercase();
    let mut best: Option<&str> = None;
    for p in PROG_NAMES {
        if rest.starts_with(p) && rest.as_bytes().get(p.len()) == Some(&b'_') {
            if best.is_none_or(|b| p.len() > b.len()) {
                best = Some(p);
            }
        }
    }
    match best {
        Some(p) => (p.to_string(), rest[p.len() + 1..].to_string()),
        None => ("?".to_string(), rest),
    }
}

/// Capacities, from the C `enum dp_capacity`.
pub mod capacity {
    use super::types::dp_capacity as C;
    pub const PUBLISHED: u32 = C::DP_MAX_PUBLISHED.0;
    pub const DNAT: u32 = C::DP_MAX_DNAT.0;
    pub const FLOWS: u32 = C::DP_MAX_FLOWS.0;
    pub const PROXY_FLOWS: u32 = C::DP_MAX_PROXY_FLOWS.0;
    pub const HOST_FLOWS: u32 = C::DP_MAX_HOST_FLOWS.0;
    pub const SOCK_REV: u32 = C::DP_MAX_SOCK_REV.0;
    pub const EXTERNALS: u32 = C::DP_MAX_EXTERNALS.0;
    pub const VETHS: u32 = C::DP_MAX_VETHS.0;
    pub const ATTACHMENTS: u32 = C::DP_MAX_ATTACHMENTS.0;
    pub const GUARD_DENY: u32 = C::DP_MAX_GUARD_DENY.0;
    pub const GUARD_SOURCES: u32 = C::DP_MAX_GUARD_SOURCES.0;
    pub const GUARD_VERIFIED: u32 = C::DP_MAX_GUARD_VERIFIED.0;
    pub const CONTAINERS: u32 = C::DP_MAX_CONTAINERS.0;
    /// Published ports one container record holds.
    pub const CTR_PORTS: usize = C::DP_CTR_MAX_PORTS.0 as usize;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_names_come_from_btf_in_enum_order() {
        let names = stat_names().unwrap();
        assert_eq!(names.len(), types::dp_stat::DP_STAT_MAX.0 as usize);
        assert_eq!(names[types::dp_stat::DP_STAT_DNAT_REDIRECT.0 as usize], "DP_STAT_DNAT_REDIRECT");
        assert_eq!(
            names[types::dp_stat::DP_STAT_TPROXY_EGRESS_RESTORED.0 as usize],
            "DP_STAT_TPROXY_EGRESS_RESTORED"
        );
        for n in &names {
            let (prog, reason) = split_stat_name(n);
            assert!(PROG_NAMES.contains(&prog.as_str()), "{n} names no program");
            assert!(!reason.is_empty(), "{n} has no reason");
        }
    }

    #[test]
    fn split_prefers_the_longest_program_name() {
        assert_eq!(split_stat_name("DP_STAT_TPROXY_INGRESS_DNS"), ("tproxy_ingress".into(), "dns".into()));
        assert_eq!(split_stat_name("DP_STAT_SNAT_HANDED_ON"), ("snat".into(), "handed_on".into()));
        assert_eq!(split_stat_name("DP_STAT_DNAT_ICMP_TRANSLATED"), ("dnat".into(), "icmp_translated".into()));
    }

    #[test]
    fn keys_are_in_network_order_with_zero_padding() {
        let k = types::dnat4_key::new(Ipv4Addr::new(203, 0, 113, 10), 30001, Proto::Udp);
        assert_eq!(bytes_of(&k), &[203, 0, 113, 10, 0x75, 0x31, 17, 0]);
        assert_eq!((k.ext_addr(), k.host_port()), (Ipv4Addr::new(203, 0, 113, 10), 30001));
        let f = types::flow4_key::new(Ipv4Addr::new(10, 1, 2, 3), 25565, Ipv4Addr::new(192, 0, 2, 9), 40000, Proto::Tcp);
        assert_eq!(bytes_of(&f), &[10, 1, 2, 3, 192, 0, 2, 9, 0x63, 0xdd, 0x9c, 0x40, 6, 0, 0, 0]);
        let m = types::mapping_key::new(Some(Ipv4Addr::new(203, 0, 113, 10)), 30001, Proto::Tcp);
        assert_eq!(bytes_of(&m), &[2, 6, 0x75, 0x31, 203, 0, 113, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let d = types::mapping_key::new(None, 30001, Proto::Tcp);
        assert_eq!(&bytes_of(&d)[4..], &[0; 16], "a default mapping has an all-zero address");
        let e = types::ctr_endpoint::new(Ipv4Addr::new(10, 1, 2, 3), 25565, Proto::Tcp);
        assert_eq!(bytes_of(&e), &[10, 1, 2, 3, 0x63, 0xdd, 6, 0]);
        assert_eq!((e.ip(), e.port()), (Ipv4Addr::new(10, 1, 2, 3), 25565));
        let f = types::flow_orig::new(Ipv4Addr::new(192, 0, 2, 1), 443, Ipv4Addr::new(10, 0, 0, 1), 9111);
        assert_eq!(bytes_of(&f), &[192, 0, 2, 1, 10, 0, 0, 1, 0x01, 0xbb, 0x23, 0x97]);
        let back: types::flow_orig = from_bytes(bytes_of(&f)).unwrap();
        assert_eq!((back.orig_ip(), back.orig_port(), back.proxy_port()), (Ipv4Addr::new(192, 0, 2, 1), 443, 9111));
    }

    #[test]
    fn container_records_keep_addresses_in_network_order() {
        let p = types::container_port::new(Some(Ipv4Addr::new(203, 0, 113, 10)), 30001, 25565, Proto::Udp);
        let b = bytes_of(&p);
        assert_eq!(&b[..8], &[AF_INET, 17, 0x75, 0x31, 0x63, 0xdd, 0, 0]);
        assert_eq!(&b[8..12], &[203, 0, 113, 10]);
        assert!(b[12..].iter().all(|x| *x == 0));
        assert_eq!((p.ext(), p.host_port(), p.ctr_port()), (Some(Ipv4Addr::new(203, 0, 113, 10)), 30001, 25565));
        assert_eq!(types::container_port::new(None, 1, 2, Proto::Tcp).ext(), None);
        let k = types::container_key::new("mc1").unwrap();
        assert_eq!(&bytes_of(&k)[..4], b"mc1\0");
        assert_eq!(k.name(), "mc1");
        assert!(types::container_key::new(&"x".repeat(128)).is_err());
        assert!(types::container_key::new(&"x".repeat(127)).is_ok());
        assert!(types::container_key::new("a\0b").is_err());
        let mut v = types::container_value::default();
        v.set_addr4(Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(&bytes_of(&v)[16..20], &[10, 0, 0, 2]);
        assert_eq!(types::container_config::new(None).gateway4(), None);
    }

    #[test]
    fn proto_parsing() {
        assert_eq!("tcp".parse::<Proto>().unwrap(), Proto::Tcp);
        assert!("sctp".parse::<Proto>().is_err());
        assert_eq!(Proto::from_number(17).unwrap(), Proto::Udp);
        assert!(Proto::from_number(1).is_err());
    }
}
