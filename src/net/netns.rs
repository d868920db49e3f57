//! Entering a network namespace given by name (`-n NAME`, like `ip -n`)
//! or by path (`/run/netns/NAME`, `/proc/PID/ns/net`).
//!
//! Only the calling thread moves (setns(2) with CLONE_NEWNET is per
//! thread); the mount namespace, and so bpffs, stays the same.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};

/// Restores the original network namespace when dropped.
pub struct NetnsGuard {
    orig: Option<File>,
}

impl NetnsGuard {
    /// Enters `/run/netns/<name>`; `None` stays where we are.
    pub fn enter(name: Option<&str>) -> Result<Self> {
        let Some(name) = name else {
            return Ok(Self { orig: None });
        };
        validate_name(name)?;
        let path = format!("/run/netns/{name}");
        let target = File::open(&path)
            .with_context(|| format!("network namespace '{name}' not found ({path})"))?;
        Self::enter_file(&target).with_context(|| format!("entering network namespace '{name}'"))
    }

    /// Enters the network namespace at `path` (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`).
    pub fn enter_path(path: &Path) -> Result<Self> {
        let target = File::open(path)
            .with_context(|| format!("network namespace {} not found", path.display()))?;
        Self::enter_file(&target).with_context(|| format!("entering network namespace {}", path.display()))
    }

    /// Enters the network namespace of an open namespace file.
    pub fn enter_file(target: &File) -> Result<Self> {
        let orig = File::open("/proc/thread-self/ns/net")
            .context("opening the current network namespace")?;
        setns(target, CloneFlags::CLONE_NEWNET)?;
        Ok(Self { orig: Some(orig) })
    }
}

/// The path of a network namespace given by name (`/run/netns/NAME`) or
/// by absolute path.
pub fn path_of(spec: &str) -> Result<PathBuf> {
    if spec.starts_with('/') {
        return Ok(PathBuf::from(spec));
    }
    validate_name(spec)?;
    Ok(Path::new("/run/netns").join(spec))
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Some(orig) = self.orig.take() {
            if let Err(e) = setns(&orig, CloneFlags::CLONE_NEWNET) {
                log::error!("returning to the original network namespace: {e}");
            }
        }
    }
}

pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.len() >= 64 {
        bail!("invalid network namespace name '{name}'");
    }
    Ok(())
}

/// Inode of the calling thread's network namespace: identifies it in
/// attachment records.
pub fn current_inode() -> Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")
        .context("reading the current network namespace")?
        .ino())
}

/// The cookie of network namespace `name` (None: the calling thread's), as
/// `bpf_get_netns_cookie()` sees it: `SO_NETNS_COOKIE` on a socket made
/// there (Linux 5.14 and newer).
pub fn cookie(name: Option<&str>) -> Result<u64> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;

    let _in = NetnsGuard::enter(name)?;
    let s = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .context("making a socket to read the network namespace's cookie")?;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as nix::libc::socklen_t;
    // SAFETY: valid descriptor; cookie and len are live out pointers, and
    // len holds cookie's size.
    let rc = unsafe {
        nix::libc::getsockopt(
            s.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            nix::libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(nix::libc::ENOPROTOOPT) {
            bail!("reading the network namespace's cookie needs Linux 5.14 or newer (SO_NETNS_COOKIE)");
        }
        return Err(e).context("reading the network namespace's cookie (SO_NETNS_COOKIE)");
    }
    Ok(cookie)
}
