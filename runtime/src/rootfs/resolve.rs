//! Resolving paths *inside* the container's rootfs.
//!
//! A rootfs comes from an image: any of its directories may be a symlink such as
//! `/etc -> /` or `../../../host`. Joining strings would follow those links out onto the
//! host (the runc/youki mount-destination escapes). Instead every lookup goes through
//! `openat2(RESOLVE_IN_ROOT)`, which makes the kernel treat the rootfs as `/` for `..` and
//! absolute links, and mounts then target the resulting fd via `/proc/self/fd/N`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Context, Result};

/// openat2(dirfd, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS).
pub fn open_in_root(root: RawFd, path: &Path, flags: i32) -> io::Result<OwnedFd> {
    let rel = relative(path);
    let c = CString::new(if rel.as_os_str().is_empty() {
        ".".as_bytes()
    } else {
        rel.as_os_str().as_bytes()
    })
    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root,
                c.as_ptr(),
                &how as *const libc::open_how,
                size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let e = io::Error::last_os_error();
        // EAGAIN: a concurrent rename raced the lookup; the kernel asks us to retry.
        if e.raw_os_error() != Some(libc::EAGAIN) && e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The path with its leading `/` and `.` components removed (kept lexically otherwise;
/// `..` is resolved by the kernel, clamped at the root).
pub fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| {
            !matches!(
                c,
                Component::RootDir | Component::CurDir | Component::Prefix(_)
            )
        })
        .collect()
}

fn cname(name: &std::ffi::OsStr) -> Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| crate::error::Error::Other(format!("bad path component {name:?}")))
}

/// Opens (O_PATH) the directory `path` inside the root, creating missing components.
pub fn mkdir_all(root: RawFd, path: &Path) -> Result<OwnedFd> {
    let rel = relative(path);
    let mut cur = PathBuf::new();
    let mut fd =
        open_in_root(root, &cur, libc::O_PATH | libc::O_DIRECTORY).ctx(|| "open rootfs".into())?;
    for comp in rel.components() {
        cur.push(comp);
        match open_in_root(root, &cur, libc::O_PATH | libc::O_DIRECTORY) {
            Ok(next) => fd = next,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let name = cname(comp.as_os_str())?;
                if unsafe { libc::mkdirat(fd.as_raw_fd(), name.as_ptr(), 0o755) } != 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(e).ctx(|| format!("mkdir {} in rootfs", cur.display()));
                    }
                }
                fd = open_in_root(root, &cur, libc::O_PATH | libc::O_DIRECTORY)
                    .ctx(|| format!("open {} in rootfs", cur.display()))?;
            }
            Err(e) => return Err(e).ctx(|| format!("open {} in rootfs", cur.display())),
        }
    }
    Ok(fd)
}

/// Opens (O_PATH) the file `path` inside the root, creating it (and its parents) empty
/// if missing: the mount point of a file bind mount or a device node.
pub fn create_file(root: RawFd, path: &Path) -> Result<OwnedFd> {
    if let Ok(fd) = open_in_root(root, path, libc::O_PATH) {
        return Ok(fd);
    }
    let (parent, name) = split(path)?;
    let dir = mkdir_all(root, parent)?;
    let n = cname(name)?;
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            n.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e).ctx(|| format!("create {} in rootfs", path.display()));
        }
    } else {
        unsafe { libc::close(fd) };
    }
    open_in_root(root, path, libc::O_PATH).ctx(|| format!("open {} in rootfs", path.display()))
}

/// (parent directory, final name) of a path; the root itself has no name.
pub fn split(path: &Path) -> Result<(&Path, &std::ffi::OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => Ok((p, n)),
        _ => Err(crate::error::Error::Other(format!(
            "{} has no file name",
            path.display()
        ))),
    }
}

/// `/proc/self/fd/N`: how mount(2) is pointed at an fd we resolved safely.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_cannot_escape_the_root() {
        let base = std::env::temp_dir().join(format!("hull-resolve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("outside")).unwrap();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        // An image could ship `evil -> ../../outside` and `abs -> /outside`.
        symlink("../../outside", root.join("evil")).unwrap();
        symlink("/outside", root.join("abs")).unwrap();
        let rootfd = std::fs::File::open(&root).unwrap();
        mkdir_all(rootfd.as_raw_fd(), Path::new("/evil/made")).unwrap();
        mkdir_all(rootfd.as_raw_fd(), Path::new("/abs/made2")).unwrap();
        create_file(rootfd.as_raw_fd(), Path::new("/evil/../../f")).unwrap();
        assert!(
            root.join("outside/made").is_dir(),
            "created inside the root instead"
        );
        assert!(root.join("outside/made2").is_dir());
        assert!(root.join("f").is_file());
        assert!(!base.join("outside/made").exists(), "escaped the root");
        assert!(!base.join("outside/made2").exists(), "escaped the root");
        // A link to a directory missing inside the root is refused, never followed out.
        symlink("../../gone", root.join("dangling")).unwrap();
        std::fs::create_dir_all(base.join("gone")).unwrap();
        assert!(mkdir_all(rootfd.as_raw_fd(), Path::new("/dangling/x")).is_err());
        assert!(!base.join("gone/x").exists(), "escaped the root");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
