//! Named network namespaces, as `ip netns add` makes them: a new netns created on a
//! side thread (so the server's own threads never move) and bind-mounted onto a file
//! under the runtime dir, so it outlives every process in it and is found again by
//! name after a restart.

use std::fs;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use super::error::{CriError, Result};

/// Creates the netns file at `path` with `lo` up. On error nothing is left.
pub fn create(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(CriError::io(format!("create {}", dir.display())))?;
    }
    fs::File::create(path).map_err(CriError::io(format!("create {}", path.display())))?;
    let p = path.to_path_buf();
    let r = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| CriError::Internal(format!("unshare(CLONE_NEWNET): {e}")))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| CriError::Internal(format!("bind netns onto {}: {e}", p.display())))?;
        loopback_up()
    })
    .join()
    .unwrap_or_else(|_| Err(CriError::Internal("netns thread panicked".into())));
    if r.is_err() {
        let _ = remove(path);
    }
    r
}

/// Unmounts and removes the netns file; a missing one is not an error.
pub fn remove(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(CriError::Internal(format!(
                "umount {}: {e}",
                path.display()
            )));
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CriError::Io {
            what: format!("remove {}", path.display()),
            source: e,
        }),
    }
}

/// Whether `path` is a mounted netns (not just a leftover file).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = path.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&p))
}

/// Containers of a pod talk over 127.0.0.1, so the pod's `lo` must be up
/// (SIOCSIFFLAGS on the current thread's netns).
fn loopback_up() -> Result<()> {
    // SAFETY: plain socket + ioctl calls on a zeroed ifreq we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(CriError::Internal(format!(
                "socket: {}",
                std::io::Error::last_os_error()
            )));
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if r == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if r != 0 {
            return Err(CriError::Internal(format!("set lo up: {err}")));
        }
    }
    Ok(())
}
