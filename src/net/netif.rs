//! Interface facts (index, name, MAC, IPv4 address) through ioctl(2) on a
//! socket of the current network namespace, never /sys/class/net, which
//! shows the namespace of whoever mounted /sys.

use std::ffi::CStr;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use nix::libc;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    pub index: u32,
    pub name: String,
}

fn socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("creating an ioctl socket");
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq_for(name: &str) -> Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        bail!("invalid interface name '{name}'");
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn ioctl(req: &mut libc::ifreq, op: libc::c_ulong) -> std::io::Result<()> {
    let sock = socket().map_err(std::io::Error::other)?;
    // SAFETY: req is a properly initialised ifreq that outlives the call;
    // the ops used here only read the name and fill in the union.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), op as _, req as *mut libc::ifreq) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The driver of an interface ("veth", "virtio_net", "mlx5_core", ...),
/// from ETHTOOL_GDRVINFO.
pub fn driver_of(name: &str) -> Result<String> {
    // struct ethtool_drvinfo: cmd, then driver[32], version[32], ...
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 156],
    }
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    let mut info = DrvInfo { cmd: ETHTOOL_GDRVINFO, driver: [0; 32], rest: [0; 156] };
    let mut req = ifreq_for(name)?;
    req.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    ioctl(&mut req, libc::SIOCETHTOOL).with_context(|| format!("reading the driver of '{name}'"))?;
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Index of an interface by name.
pub fn index_of(name: &str) -> Result<u32> {
    let mut req = ifreq_for(name)?;
    ioctl(&mut req, libc::SIOCGIFINDEX).with_context(|| format!("interface '{name}' not found"))?;
    // SAFETY: SIOCGIFINDEX filled in the ifindex member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_ifindex } as u32)
}

/// Name of an interface by index.
pub fn name_of(index: u32) -> Result<String> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_ifru.ifru_ifindex = index as libc::c_int;
    ioctl(&mut req, libc::SIOCGIFNAME)
        .with_context(|| format!("no interface with index {index}"))?;
    // SAFETY: the kernel wrote a NUL-terminated name into ifr_name.
    let name = unsafe { CStr::from_ptr(req.ifr_name.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}

/// Resolves an interface given by name or by index.
pub fn resolve(spec: &str) -> Result<Iface> {
    if !spec.is_empty() && spec.bytes().all(|b| b.is_ascii_digit()) {
        let index: u32 = spec.parse().with_context(|| format!("invalid interface index '{spec}'"))?;
        if index == 0 {
            bail!("invalid interface index 0");
        }
        let name = name_of(index)?;
        return Ok(Iface { index, name });
    }
    Ok(Iface { index: index_of(spec)?, name: spec.to_string() })
}

/// The interface's hardware (MAC) address.
pub fn mac_of(name: &str) -> Result<[u8; 6]> {
    let mut req = ifreq_for(name)?;
    ioctl(&mut req, libc::SIOCGIFHWADDR)
        .with_context(|| format!("reading the MAC address of '{name}'"))?;
    // SAFETY: SIOCGIFHWADDR filled in the hwaddr member of the union.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    if sa.sa_family != libc::ARPHRD_ETHER {
        bail!("interface '{name}' is not an Ethernet interface");
    }
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}

/// The interface's primary IPv4 address, if it has one.
pub fn ipv4_of(name: &str) -> Result<Option<Ipv4Addr>> {
    let mut req = ifreq_for(name)?;
    match ioctl(&mut req, libc::SIOCGIFADDR) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading the IPv4 address of '{name}'")),
    }
    // SAFETY: SIOCGIFADDR filled in the addr member with a sockaddr_in.
    let sin: libc::sockaddr_in = unsafe { std::mem::transmute_copy(&req.ifr_ifru.ifru_addr) };
    Ok(Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))))
}

/// Formats a MAC as aa:bb:cc:dd:ee:ff.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Parses aa:bb:cc:dd:ee:ff (hex digits, either case).
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 || parts.iter().any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit())) {
        bail!("invalid MAC address '{s}': expected aa:bb:cc:dd:ee:ff");
    }
    let mut mac = [0u8; 6];
    for (d, p) in mac.iter_mut().zip(parts) {
        *d = u8::from_str_radix(p, 16)
            .map_err(|_| anyhow::anyhow!("invalid MAC address '{s}': expected aa:bb:cc:dd:ee:ff"))?;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_format() {
        let m = parse_mac("AA:bb:0c:dd:ee:0F").unwrap();
        assert_eq!(m, [0xaa, 0xbb, 0x0c, 0xdd, 0xee, 0x0f]);
        assert_eq!(format_mac(&m), "aa:bb:0c:dd:ee:0f");
        for bad in ["+a:bb:cc:dd:ee:ff", "aa:bb:cc:dd:ee", "aa:bb:cc:dd:ee:gg", "aabbccddeeff", "aa:bb:cc:dd:ee:ff:00", "a:bb:cc:dd:ee:ff", ""] {
            assert!(parse_mac(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(ifreq_for("").is_err());
        assert!(ifreq_for("a-name-longer-than-15").is_err());
        assert!(ifreq_for("../x").is_err());
        assert!(ifreq_for("eth0").is_ok());
    }
}
