//! `hull-shim` (the `shim/` package): a std + libc program that the processes left
//! beside every pod run as — the pause process, and each container's monitor once the
//! container exists (`hull cri --internal-monitor` creates it through `hull_runtime`,
//! then execs `hull-shim monitor` in its place). Re-exec'ing the whole `hull` binary for
//! them cost ~9 MiB RSS per process; see docs/cri.md ("hull-shim").
//!
//! It is found beside `hull` on disk (as hull-bridge is), or at `HULL_SHIM` (`off`: use
//! the `hull` binary for both roles, as before hull-shim existed). It is executed through
//! a private read-only overlayfs view of it, else a sealed memfd copy
//! (`hull_runtime::sealed_exe`), made once per server: its processes outlive the server
//! and a hostPID container can reach `/proc/<pid>/exe` of them, so that must not lead to
//! a writable file on the host (CVE-2019-5736).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::config::Config;

/// `HULL_SHIM`: the hull-shim binary to use, or `off`.
pub const SHIM_ENV: &str = "HULL_SHIM";

/// The hull-shim binary for a `hull` at `hull_on_disk`.
pub fn find(hull_on_disk: &Path) -> Option<PathBuf> {
    match std::env::var_os(SHIM_ENV) {
        Some(v) if v == "off" || v.is_empty() => return None,
        Some(v) => return Some(PathBuf::from(v)),
        None => {}
    }
    let p = hull_on_disk.parent()?.join("hull-shim");
    p.is_file().then_some(p)
}

/// The protected view of the shim, made on first use; None if there is no shim or it
/// cannot be protected (then the `hull` binary plays its roles).
static PROTECTED: OnceLock<Option<OwnedFd>> = OnceLock::new();

/// An fd (close-on-exec) of hull-shim that can be executed and not written.
pub fn exe_fd(cfg: &Config) -> Option<RawFd> {
    PROTECTED
        .get_or_init(|| {
            let path = cfg.shim_exe.as_ref()?;
            let fd = hull_runtime::sealed_exe::overlay_clone(path).or_else(|e| {
                tracing::debug!("hull-shim: overlay view refused ({e}); sealed memfd copy");
                std::fs::File::open(path).and_then(|f| hull_runtime::sealed_exe::sealed_copy(&f))
            });
            match fd {
                Ok(fd) => Some(fd),
                Err(e) => {
                    tracing::warn!(
                        "hull-shim at {}: {e}; pause and monitors run as the hull binary",
                        path.display()
                    );
                    None
                }
            }
        })
        .as_ref()
        .map(|f| f.as_raw_fd())
}

/// `hull-shim <role>`, executed through the protected fd (the child resolves
/// `/proc/self/fd/N` before close-on-exec closes it).
pub fn command(cfg: &Config, role: &str) -> Option<Command> {
    let fd = exe_fd(cfg)?;
    let mut cmd = Command::new(format!("/proc/self/fd/{fd}"));
    cmd.arg0("hull-shim").arg(role);
    Some(cmd)
}
