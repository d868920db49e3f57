//! Where the datapath's kernel objects live on bpffs.
//!
//! `<root>/maps/<map>`, `<root>/progs/<program>`, `<root>/links/<link>`;
//! directories 0700, pins 0600 (the bpffs default), root only.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/datapath";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// Where an upgrade builds the maps of the new layout before they replace
/// `maps/` (see `kernel::migrate`), and where the replaced ones wait to be
/// removed.
pub const STAGING: &str = "maps_new";
pub const RETIRED: &str = "maps_old";

#[derive(Clone, Debug)]
pub struct PinRoot {
    root: PathBuf,
    /// `maps`, or [`STAGING`] for the maps an upgrade is building.
    maps: &'static str,
}

impl PinRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), maps: "maps" }
    }

    /// The same pin root seen through the maps an upgrade is building
    /// (`<root>/maps_new/`): map commands and transactions work on them as
    /// on `maps/`.
    pub fn staging(&self) -> Self {
        Self { root: self.root.clone(), maps: STAGING }
    }

    /// `<root>/maps_new/`.
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join(STAGING)
    }

    /// `<root>/maps_old/`.
    pub fn retired_dir(&self) -> PathBuf {
        self.root.join(RETIRED)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join(self.maps)
    }

    pub fn progs_dir(&self) -> PathBuf {
        self.root.join("progs")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn prog(&self, name: &str) -> PathBuf {
        self.progs_dir().join(name)
    }

    pub fn link(&self, name: &str) -> PathBuf {
        self.links_dir().join(name)
    }

    /// True once `load` has pinned the maps and programs.
    pub fn is_loaded(&self) -> bool {
        self.map("stats").exists() && self.prog("dnat").exists()
    }

    /// Fails with the one line a user needs when nothing is loaded, or
    /// when a `load` that changes the maps' layout was interrupted.
    pub fn require_loaded(&self) -> Result<()> {
        if self.maps == "maps" && (self.staging_dir().exists() || self.retired_dir().exists()) {
            bail!(
                "an upgrade of the maps under {} was interrupted (run `datapathctl load` to finish it)",
                self.root.display()
            );
        }
        if self.maps == "maps" && self.map("dnat_ports").exists() {
            bail!(
                "the maps under {} are those of the release before published flows (run `datapathctl load` to \
                 migrate them)",
                self.root.display()
            );
        }
        if !self.is_loaded() {
            bail!(
                "datapath is not loaded under {} (run `datapathctl load` first)",
                self.root.display()
            );
        }
        Ok(())
    }

    /// Takes the lock that serialises commands changing what is loaded or
    /// attached (load, unload, attach, detach); released when the returned
    /// file is dropped.
    pub fn lock(&self) -> Result<fs::File> {
        flock_dir(&self.root)
    }

    /// Takes the lock that serialises changes to map entries that span
    /// more than one map or check before they write (`map dnat add/del`,
    /// `map veth add/del`), so racing provisioning commands cannot leave
    /// the maps out of step.
    pub fn lock_maps(&self) -> Result<fs::File> {
        flock_dir(&self.maps_dir())
    }

    /// Creates the pin directories (0700) on a bpf filesystem, mounting
    /// bpffs on /sys/fs/bpf first if the host has not (as bpftool does).
    /// Returns the directories it created, so a failed `load` can remove
    /// them again; existing directories are left as they are.
    pub fn create_dirs(&self) -> Result<Vec<PathBuf>> {
        ensure_bpffs(&self.root)?;
        let mut created = Vec::new();
        for dir in [self.root.clone(), self.maps_dir(), self.progs_dir(), self.links_dir()] {
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {
                    // mkdir(2) applies the umask; the mode must be exact.
                    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                        .with_context(|| format!("setting mode 0700 on {}", dir.display()))?;
                    created.push(dir);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    remove_dirs(&created);
                    return Err(e).with_context(|| format!("creating {}", dir.display()));
                }
            }
        }
        Ok(created)
    }
}

/// Removes directories (deepest first) that are empty; used to undo
/// `create_dirs` after a failure.
pub fn remove_dirs(dirs: &[PathBuf]) {
    for d in dirs.iter().rev() {
        let _ = fs::remove_dir(d);
    }
}

/// An exclusive flock(2) on a directory; each call opens its own file
/// description, so it excludes threads of one process as well.
fn flock_dir(dir: &Path) -> Result<fs::File> {
    let f = fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: flock(2) on a descriptor we own; blocks until granted.
    let rc = unsafe { nix::libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), nix::libc::LOCK_EX) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("locking {}", dir.display()));
    }
    Ok(f)
}

fn fs_type(path: &Path) -> Option<i64> {
    nix::sys::statfs::statfs(path).ok().map(|s| s.filesystem_type().0 as i64)
}

/// Makes sure `root` would be created on bpffs.
fn ensure_bpffs(root: &Path) -> Result<()> {
    let mut existing = root;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    if fs_type(existing) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    let mount = Path::new(BPFFS_MOUNT);
    if root.starts_with(mount) && fs_type(mount) != Some(BPF_FS_MAGIC) {
        nix::mount::mount(
            Some("bpf"),
            mount,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700"),
        )
        .with_context(|| format!("mounting bpffs on {BPFFS_MOUNT}"))?;
        log::info!("mounted bpffs on {BPFFS_MOUNT}");
        return Ok(());
    }
    bail!("pin root {} is not on a bpf filesystem", root.display())
}
