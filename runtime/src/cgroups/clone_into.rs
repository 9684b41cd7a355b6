//! Starting a process directly inside the container's cgroup: `clone3(CLONE_INTO_CGROUP)`.
//!
//! Writing a pid to `cgroup.procs` takes the global cgroup-migration lock, whose writer
//! waits for an RCU grace period (often 10+ ms on a busy host): most of a container
//! start. Since Linux 5.7, `clone3` can instead create the child already in a cgroup v2
//! directory, with no migration at all. On a pure v2 host (Debian 12, Ubuntu 22.04+)
//! that removes the move entirely, so hull uses it there.
//!
//! Not on hybrid hosts, although it works there (the unit test below clones into this
//! host's unified tree): the v1 hierarchies still need `cgroup.procs`, so nothing is
//! saved, and the v2 directory would have to exist *before* the clone. Measured here,
//! that mkdir then sits on the critical path and waits (8-130 ms under load) for the
//! cgroup mutex, which the migration primer (see `launch`) holds through its RCU wait;
//! created after the clone it overlaps with the init building its rootfs. v1-only and
//! hybrid hosts, and kernels that refuse `clone3` (see [`falls_back`]), use `clone` and
//! `cgroup.procs` everywhere.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use super::hierarchy::Hierarchy;
use super::{CgroupError, CgroupManager, fs};

/// `CLONE_INTO_CGROUP` (Linux 5.7).
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

impl CgroupManager {
    /// Where to clone the init on this host: on a pure v2 host the container's
    /// directory (created, with its parents) and an `O_PATH` fd of it; else `None`.
    pub fn clone_into_target(&self) -> Result<Option<(PathBuf, OwnedFd)>, CgroupError> {
        if !uses_clone_into(self.hierarchy()) {
            return Ok(None);
        }
        self.v2_target()
    }

    /// The container's v2 directory (pure v2 or a hybrid's unified tree), created, and
    /// an `O_PATH` fd of it; `None` without a v2 hierarchy.
    fn v2_target(&self) -> Result<Option<(PathBuf, OwnedFd)>, CgroupError> {
        let Some(dir) = self.unified_dir() else {
            return Ok(None);
        };
        fs::create_dirs(&dir)?;
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|e| {
            CgroupError::Io {
                path: dir.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, e),
            }
        })?;
        // SAFETY: NUL-terminated path; the result is checked.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(CgroupError::Io {
                path: dir,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: fd was just opened and is owned by nobody else.
        Ok(Some((dir, unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    /// [`add_task`](Self::add_task) for a process that `clone3` already put in the v2
    /// directory: only the v1 hierarchies (none on a pure v2 host) still need a move.
    pub fn add_task_after_clone_into(&self, pid: i32) -> Result<(), CgroupError> {
        self.create()?;
        let unified = self.unified_dir();
        for dir in self.all_dirs() {
            if Some(&dir) != unified.as_ref() {
                fs::write(&dir, "cgroup.procs", &pid.to_string())?;
            }
        }
        Ok(())
    }
}

/// Whether hull clones inits straight into their cgroup on a host with this layout:
/// only where that removes every `cgroup.procs` write (pure v2; see the module docs).
pub fn uses_clone_into(h: &Hierarchy) -> bool {
    matches!(h, Hierarchy::V2 { .. })
}

/// Whether a `clone3(CLONE_INTO_CGROUP)` failure means "this kernel or this cgroup
/// cannot do it" (fall back to `clone` + `cgroup.procs`) rather than a real error that
/// plain `clone` would hit too: ENOSYS (no clone3, < 5.3), E2BIG/EINVAL (struct or flag
/// unknown, < 5.7), EOPNOTSUPP/EBUSY (the target is a threaded or domain-invalid
/// cgroup), EACCES/EPERM (no write access to the target's `cgroup.procs`, e.g. a
/// delegated subtree).
pub fn falls_back(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::ENOSYS
                | libc::E2BIG
                | libc::EINVAL
                | libc::EOPNOTSUPP
                | libc::EBUSY
                | libc::EACCES
                | libc::EPERM
        )
    )
}

/// A fork-like `clone3` (the child continues on a copy of our stack) that starts the
/// child in the cgroup `cgroup_dir` refers to. Returns the child's pid, or 0 in the child.
pub fn clone3_into(flags: u64, cgroup_dir: &impl AsRawFd) -> io::Result<i32> {
    let args = CloneArgs {
        flags: flags | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_dir.as_raw_fd() as u64,
        ..Default::default()
    };
    // SAFETY: a valid clone_args of the size passed; with stack = 0 the child runs on
    // a copy of this stack like fork(). The caller is single-threaded.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_args_is_the_kernels_ver2_size() {
        assert_eq!(std::mem::size_of::<CloneArgs>(), 88);
    }

    #[test]
    fn only_pure_v2_hosts_clone_into_the_cgroup() {
        use std::collections::BTreeMap;
        let v1: BTreeMap<String, PathBuf> = [("pids".to_string(), PathBuf::from("/x/pids"))].into();
        assert!(uses_clone_into(&Hierarchy::V2 {
            root: "/sys/fs/cgroup".into()
        }));
        assert!(!uses_clone_into(&Hierarchy::Hybrid {
            controllers: v1.clone(),
            unified: "/sys/fs/cgroup/unified".into()
        }));
        assert!(!uses_clone_into(&Hierarchy::V1 { controllers: v1 }));
    }

    #[test]
    fn kernel_refusals_fall_back_and_real_errors_do_not() {
        for e in [
            libc::ENOSYS,
            libc::E2BIG,
            libc::EINVAL,
            libc::EOPNOTSUPP,
            libc::EBUSY,
            libc::EACCES,
            libc::EPERM,
        ] {
            assert!(falls_back(&io::Error::from_raw_os_error(e)), "errno {e}");
        }
        for e in [libc::ENOMEM, libc::EAGAIN, libc::ENOSPC, libc::EUSERS] {
            assert!(!falls_back(&io::Error::from_raw_os_error(e)), "errno {e}");
        }
    }

    /// On a host with a v2 hierarchy (pure or hybrid), a child cloned into a fresh v2
    /// cgroup reports that cgroup as its own, with no write to `cgroup.procs`.
    #[test]
    fn child_starts_in_the_v2_cgroup() {
        let id = format!("clone-into-{}", std::process::id());
        let Ok(cg) = CgroupManager::new(Some(&format!("/hull-unit/{id}")), &id) else {
            return; // no cgroup hierarchy at all (not a hull host)
        };
        let Some((dir, fd)) = cg.v2_target().unwrap() else {
            eprintln!("no cgroup v2 hierarchy here: only the fallback applies");
            let _ = cg.delete();
            return;
        };
        let (mut r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        let pid = clone3_into(0, &fd).unwrap();
        if pid == 0 {
            // Child of a multi-threaded test process: no allocation, raw syscalls only.
            let mut buf = [0u8; 4096];
            unsafe {
                let f = libc::open(c"/proc/self/cgroup".as_ptr(), libc::O_RDONLY);
                let n = libc::read(f, buf.as_mut_ptr().cast(), buf.len());
                libc::write(w.as_raw_fd(), buf.as_ptr().cast(), n.max(0) as usize);
                libc::_exit(0)
            }
        }
        drop(w);
        let mut got = String::new();
        std::io::Read::read_to_string(&mut r, &mut got).unwrap();
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        let deleted = cg.delete();
        for p in cg.paths().values() {
            let _ = std::fs::remove_dir(p.parent().unwrap());
        }
        let v2 = got.lines().find(|l| l.starts_with("0::")).unwrap_or("");
        assert_eq!(
            v2,
            format!("0::/hull-unit/{id}"),
            "{} not used",
            dir.display()
        );
        deleted.unwrap();
    }
}
