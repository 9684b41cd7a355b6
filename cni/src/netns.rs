//! Network namespaces: opening `CNI_NETNS` and running work inside it.
//!
//! The calling thread never changes namespace: work that must happen inside the
//! container's netns runs on a short-lived thread that `setns`es first. A netlink
//! socket created there stays bound to that netns after the thread exits, so most
//! callers only open their socket inside and do the rest from the main thread.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use crate::error::{CniError, Result, code};

/// An open handle on a network namespace (keeps it alive while held).
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens `path` (e.g. `/var/run/netns/x` or `/proc/PID/ns/net`); a missing path
    /// is spec code 3 ("unknown container"), so DEL can treat it as already gone.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| {
            let c = if e.kind() == std::io::ErrorKind::NotFound {
                code::UNKNOWN_CONTAINER
            } else {
                code::INVALID_ENV
            };
            CniError::new(c, format!("CNI_NETNS: cannot open {}", path.display()))
                .with_details(e.to_string())
        })?;
        // A netns handle is an nsfs inode; refusing anything else avoids setns on
        // an arbitrary file a caller passed by mistake.
        let st = nix::sys::statfs::fstatfs(&file)
            .map_err(|e| CniError::io(format!("CNI_NETNS: statfs {}", path.display()), e.into()))?;
        if st.filesystem_type() != nix::sys::statfs::NSFS_MAGIC
            && st.filesystem_type() != nix::sys::statfs::PROC_SUPER_MAGIC
        {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_NETNS: {} is not a network namespace", path.display()),
            ));
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Runs `f` on a fresh thread that has joined this netns.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                    CniError::new(
                        code::INVALID_ENV,
                        format!("setns into {}", self.path.display()),
                    )
                    .with_details(e.to_string())
                })?;
                f()
            });
            h.join()
                .unwrap_or_else(|_| Err(CniError::new(code::IO, "netns worker thread panicked")))
        })
    }
}
