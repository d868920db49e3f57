//! IPv6 frames: a builder that writes complete checksums (extension
//! headers, TCP, UDP, ICMPv6 and its errors, neighbour discovery), and an
//! independent parser and checksum verifier for what the programs emit.

#![allow(dead_code)]

use std::net::Ipv6Addr;

use super::packet::{csum_add, csum_fold, ETH_P_IPV6, MAC_A, MAC_B, TCP, UDP};

pub const ICMP6: u8 = 58;
pub const HOP: u8 = 0;
pub const ROUTING: u8 = 43;
pub const FRAGMENT: u8 = 44;
pub const NO_NEXT: u8 = 59;
pub const DEST: u8 = 60;

pub fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap_or_else(|_| panic!("bad IPv6 address {s}"))
}

/// The one's-complement sum of the IPv6 pseudo-header.
pub fn pseudo_sum6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, len: usize) -> u32 {
    let mut p = Vec::new();
    p.extend(src.octets());
    p.extend(dst.octets());
    p.extend((len as u32).to_be_bytes());
    p.extend([0, 0, 0, next]);
    csum_add(0, &p)
}

/// An IPv6 frame under construction.
#[derive(Clone, Debug)]
pub struct Pkt6 {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    /// Extension headers in order: (type, whole header bytes with its
    /// first two bytes left zero; the builder fills in next header and
    /// length, except for fragment headers, whose second byte is
    /// reserved).
    pub ext: Vec<(u8, Vec<u8>)>,
    /// The upper-layer protocol: TCP, UDP, ICMPv6 or anything.
    pub next: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// The upper-layer payload (after the TCP/UDP header; for ICMPv6 the
    /// whole message, checksum field included, which build() fills in).
    pub payload: Vec<u8>,
}

impl Pkt6 {
    fn base(next: u8, src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16)) -> Self {
        Self {
            eth_dst: MAC_B,
            eth_src: MAC_A,
            src: src.0,
            dst: dst.0,
            hop_limit: 64,
            ext: Vec::new(),
            next,
            sport: src.1,
            dport: dst.1,
            tcp_flags: 0x18,
            payload: b"datapath".to_vec(),
        }
    }

    pub fn tcp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16)) -> Self {
        Self::base(TCP, src, dst)
    }

    pub fn udp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16)) -> Self {
        Self::base(UDP, src, dst)
    }

    /// An ICMPv6 message: type, code, the 4 bytes after the checksum, body.
    pub fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, icmp_type: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Self {
        let mut p = Self::base(ICMP6, (src, 0), (dst, 0));
        p.payload = vec![icmp_type, code, 0, 0];
        p.payload.extend(rest);
        p.payload.extend(body);
        p
    }

    /// An ICMPv6 error (1: destination unreachable, 2: packet too big with
    /// `rest` the MTU) about `embedded`, an IPv6 packet without its
    /// Ethernet header.
    pub fn icmp6_error(src: Ipv6Addr, dst: Ipv6Addr, icmp_type: u8, code: u8, rest: u32, embedded: &[u8]) -> Self {
        Self::icmp6(src, dst, icmp_type, code, rest.to_be_bytes(), embedded)
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.eth_src = src;
        self.eth_dst = dst;
        self
    }

    pub fn syn(mut self) -> Self {
        self.tcp_flags = 0x02;
        self
    }

    /// Adds a hop-by-hop header (8 bytes: a PadN option).
    pub fn hop_by_hop(mut self) -> Self {
        self.ext.push((HOP, vec![0, 0, 1, 4, 0, 0, 0, 0]));
        self
    }

    /// Adds a destination options header of 16 bytes.
    pub fn dest_opts(mut self) -> Self {
        self.ext.push((DEST, vec![0, 0, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        self
    }

    /// Adds a routing header (type 0 of no segment left: nothing to do).
    pub fn routing(mut self) -> Self {
        self.ext.push((ROUTING, vec![0, 0, 0, 0, 0, 0, 0, 0]));
        self
    }

    /// Adds a fragment header: offset in 8-byte units, more fragments.
    pub fn fragment(mut self, offset: u16, more: bool) -> Self {
        let fo = (offset << 3) | u16::from(more);
        let mut h = vec![0, 0];
        h.extend(fo.to_be_bytes());
        h.extend(0x1234_5678u32.to_be_bytes());
        self.ext.push((FRAGMENT, h));
        self
    }

    pub fn l4_header(&self) -> Vec<u8> {
        match self.next {
            TCP => {
                let mut h = Vec::new();
                h.extend(self.sport.to_be_bytes());
                h.extend(self.dport.to_be_bytes());
                h.extend(0x0102_0304u32.to_be_bytes());
                h.extend(0x0a0b_0c0du32.to_be_bytes());
                h.push(5 << 4);
                h.push(self.tcp_flags);
                h.extend(64240u16.to_be_bytes());
                h.extend([0, 0, 0, 0]);
                h
            }
            UDP => {
                let mut h = Vec::new();
                h.extend(self.sport.to_be_bytes());
                h.extend(self.dport.to_be_bytes());
                h.extend(((8 + self.payload.len()) as u16).to_be_bytes());
                h.extend([0, 0]);
                h
            }
            _ => Vec::new(),
        }
    }

    /// The upper-layer bytes with their checksum complete.
    fn upper(&self) -> Vec<u8> {
        let mut l4 = self.l4_header();
        l4.extend(&self.payload);
        let at = match self.next {
            TCP => Some(16),
            UDP => Some(6),
            ICMP6 if l4.len() >= 4 => Some(2),
            _ => None,
        };
        if let Some(at) = at {
            let sum = csum_add(pseudo_sum6(self.src, self.dst, self.next, l4.len()), &l4);
            let mut c = csum_fold(sum);
            if self.next == UDP && c == 0 {
                c = 0xffff;
            }
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        l4
    }

    /// The IPv6 packet, without the Ethernet header.
    pub fn ip_packet(&self) -> Vec<u8> {
        let mut exts = Vec::new();
        for (i, (t, h)) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map(|e| e.0).unwrap_or(self.next);
            let mut h = h.clone();
            assert!(h.len() >= 8 && h.len() % 8 == 0, "extension headers are multiples of 8 bytes");
            h[0] = next;
            if *t != FRAGMENT {
                h[1] = (h.len() / 8 - 1) as u8;
            }
            exts.extend(h);
        }
        let upper = self.upper();
        let first = self.ext.first().map(|e| e.0).unwrap_or(self.next);
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend(((exts.len() + upper.len()) as u16).to_be_bytes());
        ip.push(first);
        ip.push(self.hop_limit);
        ip.extend(self.src.octets());
        ip.extend(self.dst.octets());
        ip.extend(exts);
        ip.extend(upper);
        ip
    }

    /// The frame, with every checksum complete.
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend(self.eth_dst);
        f.extend(self.eth_src);
        f.extend(ETH_P_IPV6.to_be_bytes());
        f.extend(self.ip_packet());
        f
    }
}

/// A neighbour solicitation for `target` from `src` (MAC `mac`), to the
/// target's solicited-node multicast address, with a source link-layer
/// address option unless `src` is :: or `with_option` is false.
pub fn neigh_sol(mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr, with_option: bool) -> Pkt6 {
    let t = target.octets();
    let snm = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(t[13]), u16::from_be_bytes([t[14], t[15]]));
    let mut body = t.to_vec();
    if with_option && !src.is_unspecified() {
        body.extend([1, 1]);
        body.extend(mac);
    }
    let mut p = Pkt6::icmp6(src, snm, 135, 0, [0; 4], &body);
    p.hop_limit = 255;
    p.eth_src = mac;
    p.eth_dst = [0x33, 0x33, 0xff, t[13], t[14], t[15]];
    p
}

/// The neighbour advertisement the datapath answers a solicitation with:
/// from the target to the asker, solicited and override, router when
/// `router`, with the target link-layer address option.
pub fn neigh_adv(host_mac: [u8; 6], target: Ipv6Addr, to_mac: [u8; 6], to: Ipv6Addr, router: bool) -> Pkt6 {
    let flags = 0x40 | 0x20 | if router { 0x80 } else { 0 };
    let mut body = target.octets().to_vec();
    body.extend([2, 1]);
    body.extend(host_mac);
    let mut p = Pkt6::icmp6(target, to, 136, 0, [flags, 0, 0, 0], &body);
    p.hop_limit = 255;
    p.eth_src = host_mac;
    p.eth_dst = to_mac;
    p
}

/// Fields of an Ethernet/IPv6 frame, read independently of the builder
/// (extension headers followed).
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Parsed6 {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub next: u8,
    /// Offset of the upper-layer header in the IPv6 packet.
    pub l4: usize,
    pub sport: u16,
    pub dport: u16,
}

fn addr(b: &[u8]) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap())
}

/// The upper-layer protocol and its offset in an IPv6 packet (no
/// Ethernet header), through hop-by-hop, routing and destination options.
fn upper_of(ip: &[u8]) -> Result<(u8, usize), String> {
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return Err("not an IPv6 header".into());
    }
    let end = 40 + usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    if end > ip.len() {
        return Err(format!("payload length {} beyond the packet ({})", end - 40, ip.len() - 40));
    }
    let (mut next, mut off) = (ip[6], 40);
    while matches!(next, HOP | ROUTING | DEST) {
        if off + 8 > end {
            return Err("extension header cut short".into());
        }
        next = ip[off];
        off += (usize::from(ip[off + 1]) + 1) * 8;
    }
    if off > end {
        return Err("extension headers beyond the payload".into());
    }
    Ok((next, off))
}

pub fn parse6(f: &[u8]) -> Result<Parsed6, String> {
    if f.len() < 54 || u16::from_be_bytes([f[12], f[13]]) != ETH_P_IPV6 {
        return Err("not Ethernet/IPv6".into());
    }
    let ip = &f[14..];
    let (next, l4) = upper_of(ip)?;
    let ports = |i: usize| if ip.len() >= l4 + 4 { u16::from_be_bytes([ip[l4 + i], ip[l4 + i + 1]]) } else { 0 };
    Ok(Parsed6 {
        eth_dst: f[0..6].try_into().unwrap(),
        eth_src: f[6..12].try_into().unwrap(),
        src: addr(&ip[8..24]),
        dst: addr(&ip[24..40]),
        next,
        l4,
        sport: if matches!(next, TCP | UDP) { ports(0) } else { 0 },
        dport: if matches!(next, TCP | UDP) { ports(2) } else { 0 },
    })
}

/// Verifies, from scratch, the TCP, UDP or ICMPv6 checksum of an IPv6
/// frame over its pseudo-header; for an ICMPv6 error (types 1 to 4), also
/// the embedded packet's TCP or UDP checksum when the error carries all of
/// it. IPv6 has no header checksum; a UDP checksum of 0 is an error.
pub fn verify_checksums6(f: &[u8]) -> Result<(), String> {
    if f.len() < 54 || u16::from_be_bytes([f[12], f[13]]) != ETH_P_IPV6 {
        return Err("not Ethernet/IPv6".into());
    }
    verify_ipv6(&f[14..], "")
}

fn verify_ipv6(ip: &[u8], what: &str) -> Result<(), String> {
    let (next, off) = upper_of(ip).map_err(|e| format!("{what}{e}"))?;
    let end = 40 + usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let (src, dst) = (addr(&ip[8..24]), addr(&ip[24..40]));
    let l4 = &ip[off..end];
    let name = match next {
        TCP => "TCP",
        UDP => "UDP",
        ICMP6 => "ICMPv6",
        _ => return Ok(()),
    };
    if next == UDP && l4.len() >= 8 && l4[6..8] == [0, 0] {
        return Err(format!("{what}UDP checksum is 0, which IPv6 does not allow"));
    }
    if csum_fold(csum_add(pseudo_sum6(src, dst, next, l4.len()), l4)) != 0 {
        return Err(format!("{what}{name} checksum is wrong"));
    }
    if next == ICMP6 && what.is_empty() && matches!(l4.first(), Some(1..=4)) && l4.len() >= 48 {
        let inner = &l4[8..];
        let inner_end = 40 + usize::from(u16::from_be_bytes([inner[4], inner[5]]));
        if inner.len() >= inner_end {
            verify_ipv6(&inner[..inner_end], "embedded ")?;
        }
    }
    Ok(())
}
