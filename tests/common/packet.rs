//! A small packet builder that writes complete checksums, and an
//! independent parser and checksum verifier for what the programs emit.

#![allow(dead_code)]

use std::net::Ipv4Addr;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

/// One's-complement sum over 16-bit big-endian words (RFC 1071).
pub fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

pub fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A frame under construction: Ethernet, IPv4, then TCP, UDP or raw L4.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub ethertype: u16,
    pub vlan: Option<u16>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    pub id: u16,
    pub frag: u16,
    pub ip_options: Vec<u8>,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub tcp_options: Vec<u8>,
    pub payload: Vec<u8>,
    /// UDP only: leave the checksum at 0 (none).
    pub udp_no_csum: bool,
}

pub const MAC_A: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];
pub const MAC_B: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x02];

impl Pkt {
    fn base(proto: u8, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Self {
        Self {
            eth_dst: MAC_B,
            eth_src: MAC_A,
            ethertype: ETH_P_IP,
            vlan: None,
            src: src.0,
            dst: dst.0,
            proto,
            ttl: 64,
            id: 0x1234,
            frag: 0x4000, // DF
            ip_options: Vec::new(),
            sport: src.1,
            dport: dst.1,
            tcp_flags: 0x18, // PSH|ACK
            tcp_options: Vec::new(),
            payload: b"datapath".to_vec(),
            udp_no_csum: false,
        }
    }

    pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Self {
        Self::base(TCP, src, dst)
    }

    pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Self {
        Self::base(UDP, src, dst)
    }

    pub fn icmp(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        let mut p = Self::base(ICMP, (src, 0), (dst, 0));
        p.payload = vec![8, 0, 0, 0, 0, 1, 0, 1, b'p', b'i', b'n', b'g'];
        let c = csum_fold(csum_add(0, &p.payload));
        p.payload[2..4].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// An ICMP error (`icmp_type`, `code`; `rest` is the second word, e.g.
    /// the next-hop MTU of "fragmentation needed") about `embedded`, an
    /// IPv4 packet without its Ethernet header (as much of it as the error
    /// carries), with a complete ICMP checksum.
    pub fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, icmp_type: u8, code: u8, rest: u32, embedded: &[u8]) -> Self {
        let mut p = Self::base(ICMP, (src, 0), (dst, 0));
        p.frag = 0;
        p.payload = vec![icmp_type, code, 0, 0];
        p.payload.extend(rest.to_be_bytes());
        p.payload.extend(embedded);
        let c = csum_fold(csum_add(0, &p.payload));
        p.payload[2..4].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// The IPv4 packet of this frame, without the Ethernet header.
    pub fn ip_packet(&self) -> Vec<u8> {
        let f = self.build();
        f[14 + if self.vlan.is_some() { 4 } else { 0 }..].to_vec()
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.eth_src = src;
        self.eth_dst = dst;
        self
    }

    pub fn l4_header(&self) -> Vec<u8> {
        match self.proto {
            TCP => {
                let doff = (20 + self.tcp_options.len()) / 4;
                let mut h = Vec::new();
                h.extend(self.sport.to_be_bytes());
                h.extend(self.dport.to_be_bytes());
                h.extend(0x0102_0304u32.to_be_bytes());
                h.extend(0x0a0b_0c0du32.to_be_bytes());
                h.push((doff as u8) << 4);
                h.push(self.tcp_flags);
                h.extend(64240u16.to_be_bytes());
                h.extend([0, 0, 0, 0]);
                h.extend(&self.tcp_options);
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

    /// The frame, with every checksum complete.
    pub fn build(&self) -> Vec<u8> {
        let mut l4 = self.l4_header();
        l4.extend(&self.payload);
        let csum_at = match self.proto {
            TCP => Some(16),
            UDP if !self.udp_no_csum => Some(6),
            _ => None,
        };
        if let Some(at) = csum_at {
            let mut sum = pseudo_sum(self.src, self.dst, self.proto, l4.len());
            sum = csum_add(sum, &l4);
            let mut c = csum_fold(sum);
            if self.proto == UDP && c == 0 {
                c = 0xffff;
            }
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        let ihl = (20 + self.ip_options.len()) / 4;
        assert_eq!((20 + self.ip_options.len()) % 4, 0, "IP options must pad to 4 bytes");
        let mut ip = Vec::new();
        ip.push(0x40 | ihl as u8);
        ip.push(0);
        ip.extend(((ihl * 4 + l4.len()) as u16).to_be_bytes());
        ip.extend(self.id.to_be_bytes());
        ip.extend(self.frag.to_be_bytes());
        ip.push(self.ttl);
        ip.push(self.proto);
        ip.extend([0, 0]);
        ip.extend(self.src.octets());
        ip.extend(self.dst.octets());
        ip.extend(&self.ip_options);
        let c = csum_fold(csum_add(0, &ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());

        let mut f = Vec::new();
        f.extend(self.eth_dst);
        f.extend(self.eth_src);
        if let Some(tci) = self.vlan {
            f.extend(ETH_P_8021Q.to_be_bytes());
            f.extend(tci.to_be_bytes());
        }
        f.extend(self.ethertype.to_be_bytes());
        f.extend(ip);
        f.extend(l4);
        f
    }
}

pub fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::new();
    p.extend(src.octets());
    p.extend(dst.octets());
    p.push(0);
    p.push(proto);
    p.extend((len as u16).to_be_bytes());
    csum_add(0, &p)
}

/// An ARP packet for Ethernet/IPv4.
pub fn arp(op: u16, sha: [u8; 6], sip: Ipv4Addr, tha: [u8; 6], tip: Ipv4Addr, eth_dst: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(eth_dst);
    f.extend(sha);
    f.extend(ETH_P_ARP.to_be_bytes());
    f.extend(1u16.to_be_bytes());
    f.extend(ETH_P_IP.to_be_bytes());
    f.push(6);
    f.push(4);
    f.extend(op.to_be_bytes());
    f.extend(sha);
    f.extend(sip.octets());
    f.extend(tha);
    f.extend(tip.octets());
    f
}

/// A minimal IPv6 UDP frame (no checksum validity needed: programs must
/// not touch it).
pub fn ipv6_udp() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(MAC_B);
    f.extend(MAC_A);
    f.extend(ETH_P_IPV6.to_be_bytes());
    f.extend([0x60, 0, 0, 0, 0, 16, 17, 64]);
    f.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    f.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend([0x13, 0x88, 0x00, 0x35, 0, 16, 0, 0]);
    f.extend(b"v6-query");
    f
}

/// Fields of an Ethernet/IPv4/TCP-or-UDP frame, read independently of the
/// builder.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

pub fn parse(f: &[u8]) -> Result<Parsed, String> {
    if f.len() < 34 || u16::from_be_bytes([f[12], f[13]]) != ETH_P_IP {
        return Err("not Ethernet/IPv4".into());
    }
    let ip = &f[14..];
    let ihl = usize::from(ip[0] & 0xf) * 4;
    if ip.len() < ihl + 4 {
        return Err("truncated".into());
    }
    let l4 = &ip[ihl..];
    Ok(Parsed {
        eth_dst: f[0..6].try_into().unwrap(),
        eth_src: f[6..12].try_into().unwrap(),
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        proto: ip[9],
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
    })
}

/// Verifies the IPv4 header checksum and the TCP/UDP checksum (with the
/// pseudo-header) of a frame from scratch. A UDP checksum of 0 means none.
/// ICMP: the ICMP checksum over the whole message, and for an error
/// (destination unreachable, time exceeded) the embedded IPv4 header's
/// checksum, and the embedded TCP/UDP checksum when the error carries the
/// whole embedded packet.
pub fn verify_checksums(f: &[u8]) -> Result<(), String> {
    if f.len() < 34 || u16::from_be_bytes([f[12], f[13]]) != ETH_P_IP {
        return Err("not Ethernet/IPv4".into());
    }
    verify_ipv4(&f[14..], "")
}

fn verify_ipv4(ip: &[u8], what: &str) -> Result<(), String> {
    if ip.len() < 20 {
        return Err(format!("{what}IPv4 header cut short: {} bytes", ip.len()));
    }
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < 20 || tot < ihl || ip.len() < tot {
        return Err(format!("{what}bad lengths: ihl {ihl} total {tot} have {}", ip.len()));
    }
    if csum_fold(csum_add(0, &ip[..ihl])) != 0 {
        return Err(format!("{what}IPv4 header checksum is wrong"));
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let proto = ip[9];
    let l4 = &ip[ihl..tot];
    match proto {
        TCP | UDP => {
            if proto == UDP && u16::from_be_bytes([l4[6], l4[7]]) == 0 {
                return Ok(());
            }
            let sum = csum_add(pseudo_sum(src, dst, proto, l4.len()), l4);
            if csum_fold(sum) != 0 {
                return Err(format!("{what}{} checksum is wrong", if proto == TCP { "TCP" } else { "UDP" }));
            }
            Ok(())
        }
        ICMP if what.is_empty() => {
            if l4.len() < 8 {
                return Err("ICMP header cut short".into());
            }
            if csum_fold(csum_add(0, l4)) != 0 {
                return Err("ICMP checksum is wrong".into());
            }
            if !matches!(l4[0], 3 | 11) {
                return Ok(());
            }
            let inner = &l4[8..];
            let ihl = usize::from(inner.first().copied().unwrap_or(0) & 0xf) * 4;
            if inner.len() < 20 || ihl < 20 || inner.len() < ihl {
                return Err("embedded IPv4 header cut short".into());
            }
            if csum_fold(csum_add(0, &inner[..ihl])) != 0 {
                return Err("embedded IPv4 header checksum is wrong".into());
            }
            let inner_tot = usize::from(u16::from_be_bytes([inner[2], inner[3]]));
            if inner.len() >= inner_tot {
                verify_ipv4(&inner[..inner_tot], "embedded ")?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Hex dump of the first difference, for failure messages.
pub fn first_diff(a: &[u8], b: &[u8]) -> String {
    if a.len() != b.len() {
        return format!("lengths differ: {} vs {}", a.len(), b.len());
    }
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("first difference at byte {i}: {:#04x} vs {:#04x}", a[i], b[i]),
        None => "identical".into(),
    }
}
