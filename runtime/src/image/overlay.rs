//! Overlay mounts of snapshots: a container's rootfs is its own upper/work dirs over
//! the image's snapshots.
//!
//! Classic `mount(2)` passes all options in one page, so an image with many layers
//! (long absolute paths) overflows it. The new mount API adds each lower dir with its
//! own `fsconfig(FSCONFIG_SET_STRING, "lowerdir+", dir)` call (Linux 6.8+), which has
//! no such limit; older kernels fall back to `mount(2)` with the joined string.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{Error, Result};

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn fd_result(r: libc::c_long) -> io::Result<OwnedFd> {
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

fn fsconfig(
    fd: RawFd,
    cmd: libc::c_uint,
    key: Option<&str>,
    value: Option<&CString>,
) -> io::Result<()> {
    let key = key
        .map(CString::new)
        .transpose()
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: pointers are null or valid C strings for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fd,
            cmd,
            key.as_ref().map_or(std::ptr::null(), |k| k.as_ptr()),
            value.map_or(std::ptr::null(), |v| v.as_ptr()),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mounts `lowers` (top-most first) + `upper`/`work` at `target`.
pub fn mount(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    let err = |what: &str, e: io::Error| {
        Error::Other(format!(
            "overlay mount at {}: {what}: {e}",
            target.display()
        ))
    };
    if lowers.is_empty() {
        return Err(Error::Other(
            "overlay mount needs at least one lower dir".into(),
        ));
    }
    match mount_new_api(lowers, upper, work, target) {
        Ok(()) => Ok(()),
        Err(e)
            if e.raw_os_error() == Some(libc::ENOSYS) || e.raw_os_error() == Some(libc::EINVAL) =>
        {
            mount_classic(lowers, upper, work, target).map_err(|e| err("mount(2)", e))
        }
        Err(e) => Err(err("fsopen/fsconfig/fsmount", e)),
    }
}

fn mount_new_api(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    // SAFETY: a constant C string; result checked.
    let fs =
        fd_result(unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), FSOPEN_CLOEXEC) })?;
    let fsfd = fs.as_raw_fd();
    for l in lowers {
        fsconfig(
            fsfd,
            FSCONFIG_SET_STRING,
            Some("lowerdir+"),
            Some(&cpath(l)?),
        )?;
    }
    fsconfig(
        fsfd,
        FSCONFIG_SET_STRING,
        Some("upperdir"),
        Some(&cpath(upper)?),
    )?;
    fsconfig(
        fsfd,
        FSCONFIG_SET_STRING,
        Some("workdir"),
        Some(&cpath(work)?),
    )?;
    // Without index/xino a snapshot shared by containers stays valid when copied up.
    let _ = fsconfig(
        fsfd,
        FSCONFIG_SET_STRING,
        Some("index"),
        Some(&CString::new("off").unwrap_or_default()),
    );
    let _ = FSCONFIG_SET_FLAG;
    fsconfig(fsfd, FSCONFIG_CMD_CREATE, None, None)?;
    // SAFETY: valid fs context fd; result checked.
    let mnt = fd_result(unsafe { libc::syscall(libc::SYS_fsmount, fsfd, FSMOUNT_CLOEXEC, 0) })?;
    let t = cpath(target)?;
    // SAFETY: valid fds and C strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn mount_classic(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    let lower = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let opts = format!(
        "lowerdir={lower},upperdir={},workdir={},index=off",
        upper.display(),
        work.display()
    );
    let o = CString::new(opts).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let t = cpath(target)?;
    // SAFETY: valid C strings.
    let r = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            t.as_ptr(),
            c"overlay".as_ptr(),
            0,
            o.as_ptr().cast(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lazily unmounts `target`; not mounted is fine (cleanup after a crash).
pub fn unmount(target: &Path) -> Result<()> {
    let t = cpath(target).map_err(|e| Error::Io {
        path: target.to_path_buf(),
        source: e,
    })?;
    // SAFETY: valid C string.
    let r = unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) {
            return Err(Error::Io {
                path: target.to_path_buf(),
                source: e,
            });
        }
    }
    Ok(())
}

/// Whether `path` is a mount point (listed in /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m.replace("\\040", " ") == want)
}
