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
