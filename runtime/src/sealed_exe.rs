//! Running the runtime from a sealed memfd copy of its own binary (CVE-2019-5736).
//!
//! hull clones the container's init from the runtime process instead of exec'ing a
//! fresh `init` binary, so until the init execs, and whenever a container is made to
//! execute `/proc/self/exe` (or `/proc/<runtime pid>/exe`), the container holds a path
//! to the runtime's executable. If that executable is the file on the host's disk, a
//! process in the container can open it and, once the runtime has exited, write through
//! `/proc/self/fd/N`: the host's runtime is replaced and the next `create` runs the
//! attacker's code as host root. `PR_SET_DUMPABLE 0` closes only part of that (it does
//! not cover a container that *executes* the runtime, nor a ptrace-capable one).
//!
//! So the commands that put processes into containers (`create`, `run`, `exec`) first
//! re-exec the runtime from a copy that cannot be written, and every process the
//! runtime later clones has that copy as its executable. Two ways, in this order:
//!
//! * **A private read-only overlayfs** (runc 1.2's choice): `fsopen("overlay")` with the
//!   binary's directory as the upper of two lower layers, `fsmount` read-only, and the
//!   binary opened through it. The mount is never attached anywhere (no mount table
//!   entry, no mount events for systemd to chew on), shares the page cache with the file
//!   (no copy, no extra memory) and, unlike a read-only *bind* mount, there is no way to
//!   "unwrap" it back to the writable file: overlayfs has no upper layer to write to, so
//!   every open for writing fails with `EROFS`. It costs a superblock, well under a
//!   millisecond. It needs the new mount API (5.2+), overlayfs, and a binary whose
//!   directory can be a lower layer.
//! * **A sealed memfd copy** otherwise (runc ≤ 1.1, crun): `memfd_create` + `sendfile`
//!   and `F_SEAL_WRITE|SHRINK|GROW|SEAL` (and `F_SEAL_EXEC` on 6.3+); writes fail with
//!   `EPERM`. Works everywhere since 3.17, but copies the whole binary (about 2 ms for
//!   hull-runtime's 6 MiB on an idle machine) on every command, which alone would eat a
//!   third of `run`'s budget; hence it is only the fallback.
//!
//! Either way the seal is checked by the kernel's own view of `/proc/self/exe` after the
//! re-exec (a memfd with the seals, or a read-only overlayfs), never by an environment
//! variable a caller could set.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// Every seal hull requires before it runs from a memfd.
const SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
/// `F_SEAL_EXEC` (Linux 6.3): the copy's mode bits cannot be changed either.
const F_SEAL_EXEC: libc::c_int = 0x0020;
/// `MFD_EXEC` (Linux 6.3): an executable memfd even when `vm.memfd_noexec` = 1.
const MFD_EXEC: libc::c_uint = 0x0010;

fn sys(what: &str, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

/// Whether `fd` is a memfd carrying all of [`SEALS`].
fn is_sealed(fd: &impl AsRawFd) -> bool {
    // SAFETY: F_GET_SEALS takes no argument; on a non-memfd it fails with EINVAL.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & SEALS == SEALS
}

/// Whether `fd` is a file on a read-only overlayfs (how the overlay clone shows up).
fn is_readonly_overlay(fd: &impl AsRawFd) -> bool {
    // SAFETY: fstatfs fills a plain struct; the result is checked.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) };
    if r != 0 || st.f_type as i64 != OVERLAYFS_SUPER_MAGIC {
        return false;
    }
    // SAFETY: as above; statvfs carries the mount's flags.
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut vfs) };
    r == 0 && vfs.f_flag & libc::ST_RDONLY != 0
}

/// Whether the executable behind `fd` cannot be written: a sealed memfd, or a file on
/// a read-only overlayfs.
fn is_protected(fd: &impl AsRawFd) -> bool {
    is_sealed(fd) || is_readonly_overlay(fd)
}

/// Whether this process already runs from a copy of its binary that cannot be written.
pub fn is_running_sealed() -> bool {
    File::open("/proc/self/exe").is_ok_and(|f| is_protected(&f))
}

/// The empty directory under the binary's in the overlay (overlayfs wants two lower
/// layers to run without an upper one, and both must be real paths).
const EMPTY_LOWER: &str = "/run/hull-runtime-exeseal";

const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: libc::c_uint = 0x1;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;

/// `:` separates overlay layers and `\` escapes; both must be escaped in a path.
fn escape_lower(p: &str) -> String {
    p.replace('\\', "\\\\").replace(':', "\\:")
}

fn fsconfig_string(ctx: &OwnedFd, key: &std::ffi::CStr, val: &str) -> io::Result<()> {
    let val = CString::new(val).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: valid fd and NUL-terminated strings; the result is checked.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            ctx.as_raw_fd(),
            FSCONFIG_SET_STRING,
            key.as_ptr(),
            val.as_ptr(),
            0,
        )
    };
    if r < 0 {
        return Err(sys(
            &format!("fsconfig overlay {}={val:?}", key.to_string_lossy()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// An `O_PATH` fd of `bin` seen through a private, detached, read-only overlayfs.
pub fn overlay_clone(bin: &Path) -> io::Result<OwnedFd> {
    let (Some(dir), Some(name)) = (bin.parent(), bin.file_name()) else {
        return Err(io::Error::other(format!("{}: no directory", bin.display())));
    };
    let dir = dir
        .to_str()
        .ok_or_else(|| io::Error::other(format!("{}: not UTF-8", bin.display())))?;
    // SAFETY: plain syscall with a NUL-terminated name; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), FSOPEN_CLOEXEC) };
    if fd < 0 {
        return Err(sys("fsopen overlay", io::Error::last_os_error()));
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let ctx = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    match std::fs::create_dir(EMPTY_LOWER) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            return Err(sys(&format!("mkdir {EMPTY_LOWER}"), e));
        }
        _ => {}
    }
    // The binary's directory on top, so nothing in the empty layer can shadow it.
    let lower = format!("{}:{}", escape_lower(dir), escape_lower(EMPTY_LOWER));
    fsconfig_string(&ctx, c"lowerdir", &lower)?;
    // xino would only log noise when the two layers are on different filesystems.
    let _ = fsconfig_string(&ctx, c"xino", "off");
    // SAFETY: valid fd; the result is checked.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            ctx.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if r < 0 {
        return Err(sys(
            &format!("create overlay lowerdir={lower}"),
            io::Error::last_os_error(),
        ));
    }
    let attrs = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    // SAFETY: valid fd; the result is checked.
    let m = unsafe { libc::syscall(libc::SYS_fsmount, ctx.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    if m < 0 {
        return Err(sys("fsmount overlay", io::Error::last_os_error()));
    }
    // SAFETY: m was just created and is owned by nobody else.
    let mnt = unsafe { OwnedFd::from_raw_fd(m as i32) };
    let cname = CString::new(name.as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: valid dirfd and NUL-terminated name; the result is checked.
    let f = unsafe {
        libc::openat(
            mnt.as_raw_fd(),
            cname.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if f < 0 {
        return Err(sys(
            &format!("open {} through the overlay", bin.display()),
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: f was just opened and is owned by nobody else.
    let exe = unsafe { OwnedFd::from_raw_fd(f) };
    if !is_readonly_overlay(&exe) {
        return Err(io::Error::other(
            "overlay clone is not a read-only overlayfs",
        ));
    }
    Ok(exe)
}

/// A sealed memfd holding a copy of the file behind `exe`.
pub fn sealed_copy(exe: &File) -> io::Result<OwnedFd> {
    let name = c"hull-runtime";
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: plain syscalls on a NUL-terminated name; the result is checked.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), flags | MFD_EXEC) };
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // Before 6.3 MFD_EXEC is unknown (and every memfd is executable).
        fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    }
    if fd < 0 {
        return Err(sys("memfd_create", io::Error::last_os_error()));
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut left = exe
        .metadata()
        .map_err(|e| sys("stat /proc/self/exe", e))?
        .len() as usize;
    while left > 0 {
        // SAFETY: both fds are open; a null offset uses and advances the file positions.
        let n = unsafe {
            libc::sendfile(
                memfd.as_raw_fd(),
                exe.as_raw_fd(),
                std::ptr::null_mut(),
                left,
            )
        };
        match n {
            n if n > 0 => left -= n as usize,
            0 => {
                return Err(sys(
                    "copy runtime binary",
                    io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(sys("sendfile into memfd", e));
                }
            }
        }
    }
    // SAFETY: F_ADD_SEALS takes an int; EINVAL means F_SEAL_EXEC is unknown (pre-6.3).
    let mut r = unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, SEALS | F_SEAL_EXEC) };
    if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        r = unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, SEALS) };
    }
    if r < 0 {
        return Err(sys("seal memfd", io::Error::last_os_error()));
    }
    if !is_sealed(&memfd) {
        return Err(io::Error::other("memfd seals did not take"));
    }
    Ok(memfd)
}

fn cstrings(v: impl Iterator<Item = OsString>) -> io::Result<Vec<CString>> {
    v.map(|s| {
        CString::new(s.into_vec()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    })
    .collect()
}

/// Makes sure this process runs from a copy of its binary that cannot be written:
/// returns at once if it already does, otherwise re-execs itself from one (overlay
/// clone, else sealed memfd) with the same arguments and environment, and so never
/// returns on success.
pub fn ensure() -> io::Result<()> {
    let exe = File::open("/proc/self/exe").map_err(|e| sys("open /proc/self/exe", e))?;
    if is_protected(&exe) {
        return Ok(());
    }
    let path =
        std::fs::read_link("/proc/self/exe").map_err(|e| sys("readlink /proc/self/exe", e))?;
    let clone = match overlay_clone(&path) {
        Ok(fd) => {
            crate::explain!(
                "re-exec from a private read-only overlayfs view of {} (CVE-2019-5736)",
                path.display()
            );
            fd
        }
        Err(e) => {
            let fd = sealed_copy(&exe)?;
            crate::explain!(
                "overlay clone refused ({e}); re-exec from a sealed memfd copy (CVE-2019-5736)"
            );
            fd
        }
    };
    drop(exe);
    let argv = cstrings(std::env::args_os())?;
    let envp = cstrings(std::env::vars_os().map(|(k, v)| {
        let mut kv = k;
        kv.push("=");
        kv.push(v);
        kv
    }))?;
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|s| s.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of valid C strings that outlive the call. The fd is
    // close-on-exec, which is fine for an ELF binary: the kernel holds the file itself.
    unsafe { libc::fexecve(clone.as_raw_fd(), argv_p.as_ptr(), envp_p.as_ptr()) };
    Err(sys(
        "fexecve sealed runtime copy",
        io::Error::last_os_error(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn copy_is_identical_and_refuses_every_change() {
        let exe = File::open("/proc/self/exe").unwrap();
        let memfd = sealed_copy(&exe).unwrap();
        let mut copy = File::from(memfd);
        let mut a = Vec::new();
        let mut b = Vec::new();
        File::open("/proc/self/exe")
            .unwrap()
            .read_to_end(&mut a)
            .unwrap();
        copy.rewind().unwrap();
        copy.read_to_end(&mut b).unwrap();
        assert!(a == b, "memfd copy differs from the binary");
        assert!(is_sealed(&copy));
        // Writing, growing, shrinking and unsealing are all refused.
        let path = format!("/proc/self/fd/{}", copy.as_raw_fd());
        let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let err = w.write_all(b"pwned").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "write: {err}");
        assert!(copy.set_len(1).is_err(), "shrink allowed");
        assert!(copy.set_len(a.len() as u64 + 1).is_err(), "grow allowed");
        let r = unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, 0) };
        assert!(r < 0, "seals could be changed");
    }

    #[test]
    fn overlay_clone_is_the_same_file_and_read_only() {
        let dir = std::path::PathBuf::from(format!("/var/tmp/hull-exeseal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("bin:with\\odd-name");
        std::fs::write(&bin, b"\x7fELF not really").unwrap();
        let r = overlay_clone(&bin);
        let fd = match r {
            Ok(fd) => fd,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                panic!("overlay clone: {e}");
            }
        };
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let content = std::fs::read(&path);
        let write = std::fs::OpenOptions::new().write(true).open(&path);
        let trunc = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path);
        let on_disk = std::fs::read(&bin);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(content.unwrap(), b"\x7fELF not really");
        assert_eq!(write.unwrap_err().raw_os_error(), Some(libc::EROFS));
        assert_eq!(trunc.unwrap_err().raw_os_error(), Some(libc::EROFS));
        assert_eq!(on_disk.unwrap(), b"\x7fELF not really");
        assert!(is_protected(&fd));
        // The test binary itself runs from its plain file.
        assert!(!is_running_sealed());
    }
}
