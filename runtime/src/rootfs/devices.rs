//! /dev contents: the default devices every container gets (null, zero, full, random,
//! urandom, tty), the spec's `linux.devices`, and the conventional symlinks.
//!
//! Outside a user namespace nodes are made with mknod; inside one mknod is refused, so
//! the host's node is bind mounted instead (runc does the same).

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use oci_spec::runtime::{LinuxDeviceType, Spec};

use crate::error::{Context, Result};
use crate::explain;
use crate::rootfs::resolve;

/// A device to create: path, kind (b/c/p), major, minor, mode, owner.
struct Dev {
    path: PathBuf,
    kind: libc::mode_t,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
}

const DEFAULTS: &[(&str, u64, u64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

pub fn create_all(root: i32, spec: &Spec, userns: bool) -> Result<()> {
    let mut devs: Vec<Dev> = DEFAULTS
        .iter()
        .map(|&(p, major, minor)| Dev {
            path: p.into(),
            kind: libc::S_IFCHR,
            major,
            minor,
            mode: 0o666,
            uid: 0,
            gid: 0,
        })
        .collect();
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
    {
        let kind = match d.typ() {
            LinuxDeviceType::B => libc::S_IFBLK,
            LinuxDeviceType::P => libc::S_IFIFO,
            _ => libc::S_IFCHR,
        };
        devs.retain(|x| x.path != *d.path());
        devs.push(Dev {
            path: d.path().clone(),
            kind,
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666),
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    for d in &devs {
        if userns {
            bind_host(root, d)?;
        } else {
            mknod(root, d)?;
        }
    }
    Ok(())
}

fn mknod(root: i32, d: &Dev) -> Result<()> {
    let (parent, name) = resolve::split(&d.path)?;
    let dir = resolve::mkdir_all(root, parent)?;
    let dirfd = resolve::open_in_root(root, parent, libc::O_DIRECTORY | libc::O_RDONLY)
        .ctx(|| format!("open {}", parent.display()))?;
    drop(dir);
    let n = CString::new(name.as_bytes())
        .map_err(|_| crate::error::Error::Other("bad device name".into()))?;
    explain!(
        "mknod {} {} {}:{} mode {:o}",
        d.path.display(),
        if d.kind == libc::S_IFBLK { 'b' } else { 'c' },
        d.major,
        d.minor,
        d.mode
    );
    unsafe { libc::unlinkat(dirfd.as_raw_fd(), n.as_ptr(), 0) };
    let dev = libc::makedev(d.major as u32, d.minor as u32);
    if unsafe {
        libc::mknodat(
            dirfd.as_raw_fd(),
            n.as_ptr(),
            d.kind | (d.mode & 0o7777),
            dev,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error()).ctx(|| format!("mknod {}", d.path.display()));
    }
    // mknod applies the umask; set the exact mode and owner.
    unsafe {
        libc::fchmodat(dirfd.as_raw_fd(), n.as_ptr(), d.mode & 0o7777, 0);
        libc::fchownat(
            dirfd.as_raw_fd(),
            n.as_ptr(),
            d.uid,
            d.gid,
            libc::AT_SYMLINK_NOFOLLOW,
        );
    }
    Ok(())
}

fn bind_host(root: i32, d: &Dev) -> Result<()> {
    let fd = resolve::create_file(root, &d.path)?;
    crate::rootfs::mount(
        Some(&d.path),
        &resolve::fd_path(&fd),
        None,
        MsFlags::MS_BIND,
        None,
    )
}

/// /dev/fd, /dev/std{in,out,err}, /dev/ptmx (→ pts/ptmx when devpts is mounted).
pub fn symlinks(root: i32, spec: &Spec) -> Result<()> {
    let dev = resolve::mkdir_all(root, Path::new("/dev"))?;
    drop(dev);
    let dirfd = resolve::open_in_root(root, Path::new("/dev"), libc::O_DIRECTORY | libc::O_RDONLY)
        .ctx(|| "open /dev".into())?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    let has_pts = spec
        .mounts()
        .iter()
        .flatten()
        .any(|m| m.destination() == Path::new("/dev/pts"));
    if has_pts {
        // An empty /dev/ptmx from the image would shadow the link.
        let n = CString::new("ptmx").unwrap_or_default();
        unsafe { libc::unlinkat(dirfd.as_raw_fd(), n.as_ptr(), 0) };
        links.push(("pts/ptmx", "ptmx"));
    }
    for (target, name) in links {
        let t = CString::new(target).unwrap_or_default();
        let n = CString::new(name).unwrap_or_default();
        if unsafe { libc::symlinkat(t.as_ptr(), dirfd.as_raw_fd(), n.as_ptr()) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e).ctx(|| format!("symlink /dev/{name}"));
            }
        }
    }
    Ok(())
}
