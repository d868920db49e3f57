//! Programs on cgroups: attached so that they outlive every pin, replaced
//! in place, detached exactly.
//!
//! A program is attached with `BPF_PROG_ATTACH` and `BPF_F_ALLOW_MULTI`:
//! the cgroup itself holds the reference, so the attachment stays when the
//! pin root is removed or its bpffs unmounted (a bpf_link would go with its
//! last pin). `load` swaps a new program in with `BPF_F_REPLACE`, naming
//! the one it replaces, so the hook is never empty; detaching names the
//! program too, so another program on the same hook (multi mode) is never
//! touched. Which attached program is ours is read from the kernel alone
//! (`kernel::owner`): its name and its pin root.
//!
//! Every cgroup program of the datapath goes through here: a kind of
//! cgroup attachment is a list of [`Hook`]s.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::kernel::owner::{self, Owners};

/// One program at one cgroup hook.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// The program's pinned name (and its name in the kernel).
    pub prog: &'static str,
    pub attach_type: libbpf_sys::bpf_attach_type,
}

/// cgroup/getsockopt: SO_ORIGINAL_DST for the proxy.
pub const GETSOCKOPT_HOOKS: [Hook; 1] = [Hook { prog: "getsockopt", attach_type: libbpf_sys::BPF_CGROUP_GETSOCKOPT }];

/// Host access: the programs that show a socket what it asked for first,
/// the ones that rewrite last. Detached in the reverse order, so a socket
/// is only ever rewritten while getpeername and recvmsg are restored.
pub const HOST_ACCESS_HOOKS: [Hook; 4] = [
    Hook { prog: "getpeername4", attach_type: libbpf_sys::BPF_CGROUP_INET4_GETPEERNAME },
    Hook { prog: "recvmsg4", attach_type: libbpf_sys::BPF_CGROUP_UDP4_RECVMSG },
    Hook { prog: "sendmsg4", attach_type: libbpf_sys::BPF_CGROUP_UDP4_SENDMSG },
    Hook { prog: "connect4", attach_type: libbpf_sys::BPF_CGROUP_INET4_CONNECT },
];

const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;

fn errno(rc: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(-rc)
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_root() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        if right.split_whitespace().next() == Some("cgroup2") {
            if let Some(mp) = left.split_whitespace().nth(4) {
                return Ok(PathBuf::from(mp.replace("\\040", " ")));
            }
        }
    }
    bail!("no cgroup v2 filesystem is mounted")
}

/// An open cgroup v2 directory and its id (the directory's inode).
pub struct Cgroup {
    pub file: File,
    pub id: u64,
    pub path: PathBuf,
}

impl Cgroup {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cgroup {} not found", path.display()))?;
        let st =
            nix::sys::statfs::fstatfs(file.as_fd()).with_context(|| format!("inspecting {}", path.display()))?;
        let meta = file.metadata()?;
        if st.filesystem_type().0 as i64 != CGROUP2_SUPER_MAGIC || !meta.is_dir() {
            bail!("{} is not a cgroup v2 directory", path.display());
        }
        Ok(Self { id: meta.ino(), file, path: path.to_path_buf() })
    }

    /// Ids of the programs attached to this cgroup itself at `attach_type`
    /// (not those it inherits), links included.
    pub fn attached(&self, attach_type: libbpf_sys::bpf_attach_type) -> Result<Vec<u32>> {
        let mut ids = vec![0u32; 64];
        loop {
            let mut opts = libbpf_sys::bpf_prog_query_opts {
                sz: std::mem::size_of::<libbpf_sys::bpf_prog_query_opts>() as _,
                prog_ids: ids.as_mut_ptr(),
                ..Default::default()
            };
            opts.__bindgen_anon_1.prog_cnt = ids.len() as u32;
            // SAFETY: opts is sized; prog_ids has room for prog_cnt ids.
            let rc = unsafe { libbpf_sys::bpf_prog_query_opts(self.file.as_raw_fd(), attach_type, &mut opts) };
            // SAFETY: prog_cnt is the union member the kernel wrote.
            let cnt = unsafe { opts.__bindgen_anon_1.prog_cnt } as usize;
            if rc == -nix::libc::ENOSPC {
                ids = vec![0; cnt.max(ids.len() * 2)];
                continue;
            }
            if rc != 0 {
                return Err(errno(rc)).with_context(|| format!("querying the programs of cgroup {}", self.path.display()));
            }
            ids.truncate(cnt);
            return Ok(ids);
        }
    }

    /// The programs of pin root `root` attached here at `hook`, by id.
    pub fn ours(&self, hook: &Hook, owners: &mut Owners, root: &str) -> Result<Vec<u32>> {
        Ok(self
            .attached(hook.attach_type)?
            .into_iter()
            .filter(|id| owners.is(*id, root, hook.prog))
            .collect())
    }

    /// Puts `prog` at `hook`: in place of the pin root's program there (one
    /// atomic swap; any further ones of ours are detached), or beside the
    /// programs of others. Returns true if it was not there before.
    pub fn install(&self, hook: &Hook, prog: BorrowedFd<'_>, owners: &mut Owners, root: &str) -> Result<bool> {
        let mut ours = self.ours(hook, owners, root)?;
        let new_id = owner::prog_info(prog)?.id;
        if let Some(pos) = ours.iter().position(|id| *id == new_id) {
            ours.remove(pos);
            for id in ours {
                self.detach_id(hook, id)?;
            }
            return Ok(false);
        }
        let Some(&old_id) = ours.first() else {
            self.attach(hook, prog, None)?;
            return Ok(true);
        };
        let old = owner::prog_fd(old_id)?;
        self.attach(hook, prog, Some(old.as_fd()))?;
        for &id in &ours[1..] {
            self.detach_id(hook, id)?;
        }
        Ok(false)
    }

    /// Detaches every program of pin root `root` at `hook`; false if there
    /// was none.
    pub fn remove(&self, hook: &Hook, owners: &mut Owners, root: &str) -> Result<bool> {
        let ours = self.ours(hook, owners, root)?;
        let mut any = false;
        for id in ours {
            any |= self.detach_id(hook, id)?;
        }
        Ok(any)
    }

    fn attach(&self, hook: &Hook, prog: BorrowedFd<'_>, replace: Option<BorrowedFd<'_>>) -> Result<()> {
        let mut opts = libbpf_sys::bpf_prog_attach_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_prog_attach_opts>() as _,
            flags: libbpf_sys::BPF_F_ALLOW_MULTI | if replace.is_some() { libbpf_sys::BPF_F_REPLACE } else { 0 },
            ..Default::default()
        };
        opts.__bindgen_anon_1.replace_prog_fd = replace.map(|f| f.as_raw_fd()).unwrap_or(0);
        // SAFETY: valid descriptors and a sized opts struct.
        let rc = unsafe {
            libbpf_sys::bpf_prog_attach_opts(prog.as_raw_fd(), self.file.as_raw_fd(), hook.attach_type, &opts)
        };
        if rc != 0 {
            let what = if replace.is_some() { "replacing" } else { "attaching" };
            return Err(errno(rc)).with_context(|| format!("{what} {} on cgroup {}", hook.prog, self.path.display()));
        }
        Ok(())
    }

    /// Detaches the program with this id from `hook`; false if it was not
    /// attached there (any more).
    fn detach_id(&self, hook: &Hook, id: u32) -> Result<bool> {
        let Ok(fd) = owner::prog_fd(id) else { return Ok(false) };
        // SAFETY: valid descriptors.
        let rc = unsafe { libbpf_sys::bpf_prog_detach2(fd.as_raw_fd(), self.file.as_raw_fd(), hook.attach_type) };
        match rc {
            0 => Ok(true),
            rc if -rc == nix::libc::ENOENT => Ok(false),
            rc => Err(errno(rc)).with_context(|| format!("detaching {} from cgroup {}", hook.prog, self.path.display())),
        }
    }
}

/// Every cgroup of the tree under `root` (the root included), depth first.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
        out.push(dir);
    }
    out
}
