//! Path resolution for layer unpacking that can never leave the snapshot.
//!
//! A layer's entry path is resolved against the *merged view* of the snapshot being
//! written (the upper dir) and its parent snapshots (top-most first), as overlayfs
//! will show them: whiteouts hide, opaque dirs stop the search, and symlinks —
//! including ones planted by an earlier layer — are followed *inside* the root
//! (absolute targets restart at the root, `..` stops at it). The result is a clean
//! relative path with no symlinks, which is then opened in the upper dir with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` so the kernel enforces it too.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

const MAX_SYMLINKS: usize = 40;

/// Lexically cleans a layer entry path: leading `/` dropped, `.` skipped, `..` pops
/// but never above the root. Returns the components.
pub fn clean(path: &Path) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

pub fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn join(parts: &[OsString]) -> PathBuf {
    if parts.is_empty() {
        PathBuf::from(".")
    } else {
        parts.iter().collect()
    }
}

/// `openat2(dirfd, path, flags, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`.
pub fn open_beneath(dirfd: RawFd, path: &Path, flags: i32) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: c and how outlive the call; the kernel returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: valid C string; result checked.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// lstat of `name` relative to `dirfd`.
pub fn lstat_at(dirfd: RawFd, name: &OsStr) -> io::Result<libc::stat> {
    let c = cstr(name)?;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; result checked.
    let r = unsafe {
        libc::fstatat(
            dirfd,
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

pub fn readlink_at(dirfd: RawFd, name: &OsStr) -> io::Result<OsString> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: buf is writable for its length; result checked.
    let n = unsafe { libc::readlinkat(dirfd, c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(OsString::from(std::ffi::OsStr::from_bytes(&buf)))
}

pub fn is_whiteout(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

pub fn is_opaque(dirfd: RawFd) -> bool {
    let mut v = [0u8; 4];
    // SAFETY: valid buffer and C strings; a missing xattr is just "not opaque".
    let n = unsafe {
        libc::fgetxattr(
            dirfd,
            c"trusted.overlay.opaque".as_ptr(),
            v.as_mut_ptr().cast(),
            v.len(),
        )
    };
    n == 1 && v[0] == b'y'
}

/// What the merged view has at a clean path.
pub struct Found {
    /// 0 = the upper dir being written, 1.. = lowers top-most first.
    pub layer: usize,
    pub stat: libc::stat,
}

/// The upper dir being written plus its read-only lowers.
pub struct Layers {
    pub dirs: Vec<OwnedFd>,
}

impl Layers {
    pub fn open(upper: &Path, lowers: &[PathBuf]) -> io::Result<Layers> {
        let mut dirs = vec![open_dir(upper)?];
        for l in lowers {
            dirs.push(open_dir(l)?);
        }
        Ok(Layers { dirs })
    }

    pub fn upper(&self) -> RawFd {
        self.dirs[0].as_raw_fd()
    }

    /// Looks `path` (clean, symlink-free prefix) up through the layers as overlayfs does.
    pub fn lookup(&self, path: &[OsString]) -> io::Result<Option<Found>> {
        let Some((name, parent)) = path.split_last() else {
            let st = lstat_at(self.upper(), OsStr::new(""))?;
            return Ok(Some(Found { layer: 0, stat: st }));
        };
        let parent = join(parent);
        for (i, dir) in self.dirs.iter().enumerate() {
            let pfd = match open_beneath(dir.as_raw_fd(), &parent, libc::O_PATH | libc::O_DIRECTORY)
            {
                Ok(fd) => fd,
                // Missing here, or not a dir (a higher layer's dir hides this one's file).
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::EXDEV)
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            };
            match lstat_at(pfd.as_raw_fd(), name) {
                Ok(st) if is_whiteout(&st) => return Ok(None),
                Ok(st) => return Ok(Some(Found { layer: i, stat: st })),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    // An opaque parent hides everything in the layers below it.
                    if i + 1 < self.dirs.len()
                        && let Ok(rfd) = open_beneath(
                            dir.as_raw_fd(),
                            &parent,
                            libc::O_RDONLY | libc::O_DIRECTORY,
                        )
                        && is_opaque(rfd.as_raw_fd())
                    {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Resolves the *directory* components of an entry path through the merged view,
    /// following symlinks inside the root. Returns a clean symlink-free relative path.
    pub fn resolve_dir(&self, parts: &[OsString]) -> io::Result<Vec<OsString>> {
        let mut cur: Vec<OsString> = Vec::new();
        let mut pending: Vec<OsString> = parts.iter().rev().cloned().collect();
        let mut follows = 0;
        while let Some(c) = pending.pop() {
            if c == ".." {
                cur.pop();
                continue;
            }
            if c == "." || c.is_empty() {
                continue;
            }
            cur.push(c);
            let Some(found) = self.lookup(&cur)? else {
                continue;
            };
            match found.stat.st_mode & libc::S_IFMT {
                libc::S_IFDIR => {}
                libc::S_IFLNK => {
                    follows += 1;
                    if follows > MAX_SYMLINKS {
                        return Err(io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    let name = cur.pop().unwrap_or_default();
                    let parent = join(&cur);
                    let pfd = open_beneath(
                        self.dirs[found.layer].as_raw_fd(),
                        &parent,
                        libc::O_PATH | libc::O_DIRECTORY,
                    )?;
                    let target = readlink_at(pfd.as_raw_fd(), &name)?;
                    let tpath = Path::new(&target);
                    if tpath.is_absolute() {
                        cur.clear();
                    }
                    for comp in tpath.components().rev() {
                        match comp {
                            Component::Normal(n) => pending.push(n.to_os_string()),
                            Component::ParentDir => pending.push("..".into()),
                            _ => {}
                        }
                    }
                }
                _ => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
            }
        }
        Ok(cur)
    }

    /// Makes sure every component of `dir` (clean, symlink-free) exists in the upper dir,
    /// copying mode and owner from the lower dir it shadows, and opens it.
    pub fn ensure_upper_dir(&self, dir: &[OsString]) -> io::Result<OwnedFd> {
        let upper = self.upper();
        let mut fd = open_beneath(upper, Path::new("."), libc::O_PATH | libc::O_DIRECTORY)?;
        for (i, name) in dir.iter().enumerate() {
            match open_beneath(
                fd.as_raw_fd(),
                Path::new(name),
                libc::O_PATH | libc::O_DIRECTORY,
            ) {
                Ok(next) => fd = next,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let (mode, uid, gid) = match self.lookup(&dir[..=i])? {
                        Some(f) if f.stat.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                            (f.stat.st_mode & 0o7777, f.stat.st_uid, f.stat.st_gid)
                        }
                        _ => (0o755, 0, 0),
                    };
                    let c = cstr(name)?;
                    // SAFETY: valid fd and C string; results checked.
                    unsafe {
                        if libc::mkdirat(fd.as_raw_fd(), c.as_ptr(), 0o700) < 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    let next = open_beneath(
                        fd.as_raw_fd(),
                        Path::new(name),
                        libc::O_RDONLY | libc::O_DIRECTORY,
                    )?;
                    // SAFETY: valid fd.
                    unsafe {
                        if libc::fchown(next.as_raw_fd(), uid, gid) < 0
                            || libc::fchmod(next.as_raw_fd(), mode) < 0
                        {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    fd = next;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_never_climbs_above_root() {
        let c = clean(Path::new("../../a/./b/../c"));
        assert_eq!(c, vec![OsString::from("a"), OsString::from("c")]);
        assert_eq!(
            clean(Path::new("/etc/x")),
            vec![OsString::from("etc"), OsString::from("x")]
        );
        assert!(clean(Path::new("/..")).is_empty());
    }
}
