//! Applies one layer (an uncompressed tar stream) to a snapshot dir.
//!
//! Every entry is placed through `resolve::Layers`, so nothing is written outside the
//! snapshot whatever the tar says. OCI whiteouts become overlayfs ones: `.wh.NAME` →
//! a 0/0 character device `NAME`, `.wh..wh..opq` → `trusted.overlay.opaque=y` on the
//! dir. Owners, modes, mtimes, xattrs, hard links, symlinks and device nodes are kept.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::resolve::{self, Layers, cstr, lstat_at, open_beneath};
use super::{Error, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Most uncompressed bytes a layer may expand to (bounds decompression bombs).
    pub max_bytes: u64,
    /// Most entries a layer may have.
    pub max_entries: u64,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            max_bytes: 32 << 30,
            max_entries: 10_000_000,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
}

/// Bounds what a decompressor may produce.
pub struct Bounded<R> {
    pub inner: R,
    pub left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "layer expands beyond the uncompressed size limit",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn os_err(layer: &str, entry: &Path, what: &str, e: io::Error) -> Error {
    Error::Layer {
        layer: layer.to_string(),
        entry: entry.display().to_string(),
        reason: format!("{what}: {e}"),
    }
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Removes whatever the upper dir has at `name` (a tree, if a dir).
fn remove_at(dirfd: RawFd, name: &OsStr) -> io::Result<()> {
    let st = match lstat_at(dirfd, name) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let c = cstr(name)?;
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        // std's remove_dir_all does not follow symlinks inside the tree; the magic link
        // only names the dir we already hold.
        let p = PathBuf::from(format!("/proc/self/fd/{dirfd}")).join(name);
        std::fs::remove_dir_all(p)
    } else {
        // SAFETY: valid fd and C string.
        check(unsafe { libc::unlinkat(dirfd, c.as_ptr(), 0) })
    }
}

struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

fn set_times(dirfd: RawFd, name: &OsStr, mtime: i64, nofollow: bool) -> io::Result<()> {
    let c = cstr(name)?;
    let ts = [
        libc::timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    ];
    let flags = if nofollow {
        libc::AT_SYMLINK_NOFOLLOW
    } else {
        0
    };
    // SAFETY: valid fd, C string and timespec array.
    check(unsafe { libc::utimensat(dirfd, c.as_ptr(), ts.as_ptr(), flags) })
}

/// Owner, xattrs, then mode (chown clears set-id bits, so mode goes last), then mtime.
fn set_meta(fd: RawFd, m: &Meta, xattrs: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
    // SAFETY: valid fd and buffers throughout.
    unsafe {
        check(libc::fchown(fd, m.uid, m.gid))?;
        for (k, v) in xattrs {
            let mut key = k.clone();
            key.push(0);
            check(libc::fsetxattr(
                fd,
                key.as_ptr().cast(),
                v.as_ptr().cast(),
                v.len(),
                0,
            ))?;
        }
        check(libc::fchmod(fd, m.mode & 0o7777))?;
        let ts = [
            libc::timespec {
                tv_sec: m.mtime,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: m.mtime,
                tv_nsec: 0,
            },
        ];
        check(libc::futimens(fd, ts.as_ptr()))
    }
}

fn copy_data(src: &mut impl Read, dst: &mut File, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0;
    loop {
        let n = match src.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
        total += n as u64;
    }
}

fn create_file(dirfd: RawFd, name: &OsStr) -> io::Result<File> {
    let fd = open_beneath(
        dirfd,
        Path::new(name),
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
    )?;
    Ok(File::from(fd))
}

/// Applies the tar stream `reader` to `upper`, resolving through `lowers` (top-most
/// first). `layer` names the layer in errors.
pub fn apply_layer<R: Read>(
    reader: R,
    upper: &Path,
    lowers: &[PathBuf],
    layer: &str,
    opts: &UnpackOptions,
) -> Result<UnpackStats> {
    let layers = Layers::open(upper, lowers).map_err(|e| Error::Io {
        path: upper.to_path_buf(),
        source: e,
    })?;
    let mut archive = tar::Archive::new(Bounded {
        inner: reader,
        left: opts.max_bytes,
    });
    let mut stats = UnpackStats::default();
    let mut dir_times: Vec<(Vec<OsString>, i64)> = Vec::new();
    // Entries come grouped by dir: remember the last parent's resolution.
    let mut cache: Option<(Vec<OsString>, OwnedFd, Vec<OsString>)> = None;
    let mut buf = vec![0u8; 256 << 10];
    let bad = |p: &Path, reason: &str| Error::Layer {
        layer: layer.to_string(),
        entry: p.display().to_string(),
        reason: reason.to_string(),
    };
    let entries = archive
        .entries()
        .map_err(|e| bad(Path::new(""), &format!("reading tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(Path::new(""), &format!("reading tar: {e}")))?;
        stats.entries += 1;
        if stats.entries > opts.max_entries {
            return Err(bad(Path::new(""), "too many entries"));
        }
        let raw_path: PathBuf = entry
            .path()
            .map_err(|e| bad(Path::new(""), &format!("bad path: {e}")))?
            .into_owned();
        let parts = resolve::clean(&raw_path);
        let hdr = entry.header().clone();
        let kind = hdr.entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            continue;
        }
        let meta = Meta {
            mode: hdr.mode().unwrap_or(0o644),
            uid: hdr.uid().unwrap_or(0) as u32,
            gid: hdr.gid().unwrap_or(0) as u32,
            mtime: hdr.mtime().unwrap_or(0) as i64,
        };
        let Some((name, dir_parts)) = parts.split_last() else {
            // The root itself ("./"): only its metadata can change.
            if kind.is_dir() {
                let fd = open_beneath(
                    layers.upper(),
                    Path::new("."),
                    libc::O_RDONLY | libc::O_DIRECTORY,
                )
                .map_err(|e| os_err(layer, &raw_path, "open root", e))?;
                set_meta(fd.as_raw_fd(), &meta, &[])
                    .map_err(|e| os_err(layer, &raw_path, "metadata", e))?;
                dir_times.push((Vec::new(), meta.mtime));
            }
            continue;
        };
        let name = name.clone();
        let dir_parts = dir_parts.to_vec();

        let (pfd, resolved_dir) = match &cache {
            Some((raw, fd, res)) if *raw == dir_parts => (
                fd.try_clone()
                    .map_err(|e| os_err(layer, &raw_path, "dup", e))?,
                res.clone(),
            ),
            _ => {
                let res = layers
                    .resolve_dir(&dir_parts)
                    .map_err(|e| os_err(layer, &raw_path, "resolving parent", e))?;
                let fd = layers
                    .ensure_upper_dir(&res)
                    .map_err(|e| os_err(layer, &raw_path, "creating parent", e))?;
                cache = Some((
                    dir_parts.clone(),
                    fd.try_clone()
                        .map_err(|e| os_err(layer, &raw_path, "dup", e))?,
                    res.clone(),
                ));
                (fd, res)
            }
        };
        let pfd_raw = pfd.as_raw_fd();
        let name_bytes = name.as_bytes();

        // Whiteouts.
        if name_bytes == OPAQUE.as_bytes() {
            let dfd = open_beneath(pfd_raw, Path::new("."), libc::O_RDONLY | libc::O_DIRECTORY)
                .map_err(|e| os_err(layer, &raw_path, "open dir", e))?;
            // SAFETY: valid fd and buffers.
            check(unsafe {
                libc::fsetxattr(
                    dfd.as_raw_fd(),
                    c"trusted.overlay.opaque".as_ptr(),
                    b"y".as_ptr().cast(),
                    1,
                    0,
                )
            })
            .map_err(|e| os_err(layer, &raw_path, "opaque xattr", e))?;
            continue;
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) || hidden.is_empty() {
                continue; // other AUFS metadata (.wh..wh.plnk ...): nothing to do for overlay
            }
            let hidden = OsStr::from_bytes(hidden);
            remove_at(pfd_raw, hidden).map_err(|e| os_err(layer, &raw_path, "whiteout", e))?;
            let c = cstr(hidden).map_err(|e| os_err(layer, &raw_path, "name", e))?;
            // SAFETY: valid fd and C string.
            check(unsafe { libc::mknodat(pfd_raw, c.as_ptr(), libc::S_IFCHR, 0) })
                .map_err(|e| os_err(layer, &raw_path, "whiteout mknod", e))?;
            continue;
        }

        let cname = cstr(&name).map_err(|e| os_err(layer, &raw_path, "name", e))?;
        let existing = lstat_at(pfd_raw, &name).ok();
        let existing_is_dir = existing.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
        if existing.is_some() && !(kind.is_dir() && existing_is_dir) {
            remove_at(pfd_raw, &name).map_err(|e| os_err(layer, &raw_path, "replace", e))?;
        }
        if matches!(kind, tar::EntryType::Symlink) || existing.is_some() || kind.is_dir() {
            // The parent cache may now name something that changed shape.
            cache = None;
        }
        let xattrs: Vec<(Vec<u8>, Vec<u8>)> = match entry.pax_extensions() {
            Ok(Some(exts)) => exts
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let k = e.key_bytes().strip_prefix(b"SCHILY.xattr.")?.to_vec();
                    // A layer must not forge overlay metadata (redirects, opaque dirs).
                    (!k.starts_with(b"trusted.overlay.")).then(|| (k, e.value_bytes().to_vec()))
                })
                .collect(),
            _ => Vec::new(),
        };

        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut f = create_file(pfd_raw, &name)
                    .map_err(|e| os_err(layer, &raw_path, "create", e))?;
                stats.bytes += copy_data(&mut entry, &mut f, &mut buf)
                    .map_err(|e| os_err(layer, &raw_path, "write", e))?;
                set_meta(f.as_raw_fd(), &meta, &xattrs)
                    .map_err(|e| os_err(layer, &raw_path, "metadata", e))?;
            }
            tar::EntryType::Directory => {
                if !existing_is_dir {
                    // SAFETY: valid fd and C string.
                    check(unsafe { libc::mkdirat(pfd_raw, cname.as_ptr(), 0o700) })
                        .map_err(|e| os_err(layer, &raw_path, "mkdir", e))?;
                }
                let dfd = open_beneath(
                    pfd_raw,
                    Path::new(&name),
                    libc::O_RDONLY | libc::O_DIRECTORY,
                )
                .map_err(|e| os_err(layer, &raw_path, "open dir", e))?;
                set_meta(dfd.as_raw_fd(), &meta, &xattrs)
                    .map_err(|e| os_err(layer, &raw_path, "metadata", e))?;
                let mut p = resolved_dir.clone();
                p.push(name.clone());
                dir_times.push((p, meta.mtime));
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| bad(&raw_path, &format!("bad link name: {e}")))?
                    .ok_or_else(|| bad(&raw_path, "symlink without target"))?;
                // The target is stored as is; it is only ever resolved inside the root.
                let ct =
                    cstr(target.as_os_str()).map_err(|e| os_err(layer, &raw_path, "target", e))?;
                // SAFETY: valid fd and C strings.
                check(unsafe { libc::symlinkat(ct.as_ptr(), pfd_raw, cname.as_ptr()) })
                    .map_err(|e| os_err(layer, &raw_path, "symlink", e))?;
                // SAFETY: valid fd and C string; never follows the link.
                check(unsafe {
                    libc::fchownat(
                        pfd_raw,
                        cname.as_ptr(),
                        meta.uid,
                        meta.gid,
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                })
                .map_err(|e| os_err(layer, &raw_path, "lchown", e))?;
                set_times(pfd_raw, &name, meta.mtime, true)
                    .map_err(|e| os_err(layer, &raw_path, "times", e))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| bad(&raw_path, &format!("bad link name: {e}")))?
                    .ok_or_else(|| bad(&raw_path, "hard link without target"))?
                    .into_owned();
                hard_link(&layers, &target, pfd_raw, &name, &mut buf).map_err(|e| {
                    os_err(
                        layer,
                        &raw_path,
                        &format!("hard link to {}", target.display()),
                        e,
                    )
                })?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let fmt = match kind {
                    tar::EntryType::Char => libc::S_IFCHR,
                    tar::EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let major = hdr.device_major().ok().flatten().unwrap_or(0);
                let minor = hdr.device_minor().ok().flatten().unwrap_or(0);
                let dev = libc::makedev(major, minor);
                // SAFETY: valid fd and C string.
                check(unsafe {
                    libc::mknodat(pfd_raw, cname.as_ptr(), fmt | (meta.mode & 0o7777), dev)
                })
                .map_err(|e| os_err(layer, &raw_path, "mknod", e))?;
                let fd = open_beneath(pfd_raw, Path::new(&name), libc::O_PATH)
                    .map_err(|e| os_err(layer, &raw_path, "open node", e))?;
                // O_PATH fds take chown/chmod through /proc (fchown rejects them).
                let proc = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
                let cp = cstr(proc.as_os_str()).map_err(|e| os_err(layer, &raw_path, "name", e))?;
                // SAFETY: valid C string.
                check(unsafe { libc::chown(cp.as_ptr(), meta.uid, meta.gid) })
                    .and_then(|_| check(unsafe { libc::chmod(cp.as_ptr(), meta.mode & 0o7777) }))
                    .map_err(|e| os_err(layer, &raw_path, "metadata", e))?;
                set_times(pfd_raw, &name, meta.mtime, true)
                    .map_err(|e| os_err(layer, &raw_path, "times", e))?;
            }
            other => {
                return Err(bad(
                    &raw_path,
                    &format!("unsupported tar entry type {other:?}"),
                ));
            }
        }
    }
    // Dir mtimes last, deepest first: creating entries inside them changed them.
    dir_times.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    for (p, mtime) in dir_times {
        let path: PathBuf = if p.is_empty() {
            PathBuf::from(".")
        } else {
            p.iter().collect()
        };
        if let Ok(fd) = open_beneath(layers.upper(), &path, libc::O_RDONLY | libc::O_DIRECTORY) {
            let _ = futimes(fd.as_raw_fd(), mtime);
        }
    }
    Ok(stats)
}

fn futimes(fd: RawFd, mtime: i64) -> io::Result<()> {
    let ts = [
        libc::timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    ];
    // SAFETY: valid fd and timespecs.
    check(unsafe { libc::futimens(fd, ts.as_ptr()) })
}

/// A hard link inside the snapshot: to an entry of this layer by `linkat`, to one of a
/// lower snapshot by copying it up (linking across snapshots would let a container's
/// write reach another image's files). The target never resolves outside the root.
fn hard_link(
    layers: &Layers,
    target: &Path,
    pfd: RawFd,
    name: &OsStr,
    buf: &mut [u8],
) -> io::Result<()> {
    let parts = resolve::clean(target);
    let Some((tname, tdir)) = parts.split_last() else {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    };
    let tdir = layers.resolve_dir(tdir)?;
    let mut full = tdir.clone();
    full.push(tname.clone());
    let found = layers
        .lookup(&full)?
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
    if found.stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    let tdir_path: PathBuf = if tdir.is_empty() {
        PathBuf::from(".")
    } else {
        tdir.iter().collect()
    };
    let src_dir = open_beneath(
        layers.dirs[found.layer].as_raw_fd(),
        &tdir_path,
        libc::O_PATH | libc::O_DIRECTORY,
    )?;
    let ctn = cstr(tname)?;
    let cn = cstr(name)?;
    if found.layer == 0 {
        // SAFETY: valid fds and C strings; flags 0 never follows a symlink target.
        return check(unsafe {
            libc::linkat(src_dir.as_raw_fd(), ctn.as_ptr(), pfd, cn.as_ptr(), 0)
        });
    }
    if found.stat.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    let src = open_beneath(src_dir.as_raw_fd(), Path::new(tname), libc::O_RDONLY)?;
    let mut src = File::from(src);
    let mut dst = create_file(pfd, name)?;
    copy_data(&mut src, &mut dst, buf)?;
    let st = &found.stat;
    set_meta(
        dst.as_raw_fd(),
        &Meta {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: st.st_mtime,
        },
        &[],
    )
}
