//! Assembling the container's root filesystem inside its new mount namespace:
//! propagation, the rootfs bind, the spec's mounts, /dev, pivot_root, then masked and
//! read-only paths, sysctls and a read-only root.
//!
//! Every destination is resolved inside the rootfs (see [`resolve`]); the mount itself
//! targets the resolved fd through `/proc/self/fd/N`.

pub mod cgroupfs;
pub mod devices;
pub mod options;
pub mod resolve;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use oci_spec::runtime::{Mount, Spec};

use crate::error::{Context, Error, Result};
use crate::explain;

/// What the rootfs code needs to know besides the spec.
pub struct Ctx<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    pub bundle: &'a Path,
    /// In a new user namespace: device nodes must be bind mounts, locked flags kept.
    pub userns: bool,
    /// In a new cgroup namespace: `cgroup` mounts are real cgroup mounts.
    pub cgroupns: bool,
    /// The container's cgroup path (bind source of `cgroup` mounts without cgroupns).
    pub cgroup_path: &'a Path,
}

/// mount(2) with narration.
pub fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    explain!(
        "mount({}, {}, {}, {:?}, {:?})",
        src.map(|s| s.display().to_string())
            .unwrap_or_else(|| "none".into()),
        target.display(),
        fstype.unwrap_or("none"),
        flags,
        data.unwrap_or("")
    );
    nix::mount::mount(src, target, fstype, flags, data).ctx(|| {
        format!(
            "mount {} on {} ({})",
            src.map(|s| s.display().to_string()).unwrap_or_default(),
            target.display(),
            fstype.unwrap_or("-")
        )
    })
}

/// Flags that a less privileged mount namespace may not clear on a bind remount: keep
/// whatever the source already had.
fn locked_flags(path: &Path) -> MsFlags {
    let mut f = MsFlags::empty();
    if let Ok(st) = nix::sys::statvfs::statvfs(path) {
        use nix::sys::statvfs::FsFlags;
        let fl = st.flags();
        for (s, m) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if fl.contains(s) {
                f |= m;
            }
        }
    }
    f
}

/// Remounts a bind mount with `flags` (bind mounts ignore most flags on first mount).
pub fn remount_bind(target: &Path, flags: MsFlags) -> Result<()> {
    let base = MsFlags::MS_REMOUNT
        | MsFlags::MS_BIND
        | (flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT));
    match mount(None, target, None, base, None) {
        Err(Error::Sys { err, .. }) if err.raw_os_error() == Some(libc::EPERM) => {
            // In a user namespace, flags inherited from the source are locked: keep them.
            let keep = locked_flags(target) & !MsFlags::MS_RDONLY;
            mount(None, target, None, base | keep, None)
        }
        r => r,
    }
}

/// Everything before pivot_root.
///
/// `before_cgroup` is called once before the first `cgroup` mount: those mounts show the
/// container's own cgroup, which the parent may still be creating.
pub fn prepare(ctx: &Ctx<'_>, before_cgroup: &mut dyn FnMut() -> Result<()>) -> Result<()> {
    let linux = ctx.spec.linux().as_ref();
    // Our mounts must not leak back to the host: make the whole tree a slave (or what
    // the spec asks), then bind the rootfs onto itself so it is a mount point.
    let prop = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .map(|p| {
            options::propagation(p).ok_or_else(|| {
                crate::error::config("linux.rootfsPropagation", format!("unknown {p:?}"))
            })
        })
        .transpose()?
        .unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    mount(None, Path::new("/"), None, prop, None)?;
    if prop.contains(MsFlags::MS_SHARED) {
        private_parent_mount(ctx.rootfs)?;
    }
    mount(
        Some(ctx.rootfs),
        ctx.rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    // pivot_root refuses a new root whose parent mount is shared.
    let _ =
        nix::mount::mount::<str, _, str, str>(None, ctx.rootfs, None, MsFlags::MS_PRIVATE, None);

    let root =
        std::fs::File::open(ctx.rootfs).ctx(|| format!("open rootfs {}", ctx.rootfs.display()))?;
    let mut dev_is_bind = false;
    for (i, m) in ctx.spec.mounts().iter().flatten().enumerate() {
        if m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("bind") {
            dev_is_bind = true;
        }
        if matches!(m.typ().as_deref(), Some("cgroup" | "cgroup2")) {
            before_cgroup()?;
        }
        mount_one(ctx, root.as_raw_fd(), m).map_err(|e| {
            Error::Other(format!("mounts[{i}] ({}): {e}", m.destination().display()))
        })?;
    }
    if !dev_is_bind {
        devices::create_all(root.as_raw_fd(), ctx.spec, ctx.userns)?;
        devices::symlinks(root.as_raw_fd(), ctx.spec)?;
    }
    Ok(())
}

fn mount_one(ctx: &Ctx<'_>, root: i32, m: &Mount) -> Result<()> {
    let opts = options::parse(m.options().as_deref().unwrap_or_default());
    let typ = m
        .typ()
        .as_deref()
        .unwrap_or(if opts.bind { "bind" } else { "none" });
    let dest = m.destination();
    if typ == "cgroup" || typ == "cgroup2" {
        return cgroupfs::mount(root, dest, &opts, ctx.cgroupns, ctx.cgroup_path);
    }
    if opts.bind || typ == "bind" {
        let src = m
            .source()
            .as_ref()
            .ok_or_else(|| Error::Other("bind mount without source".into()))?;
        let src = if src.is_absolute() {
            src.clone()
        } else {
            ctx.bundle.join(src)
        };
        let meta = std::fs::metadata(&src).ctx(|| format!("bind source {}", src.display()))?;
        let fd = if meta.is_dir() {
            resolve::mkdir_all(root, dest)?
        } else {
            resolve::create_file(root, dest)?
        };
        let target = resolve::fd_path(&fd);
        let rec = opts.flags & MsFlags::MS_REC;
        mount(Some(&src), &target, None, MsFlags::MS_BIND | rec, None)?;
        // Re-resolve: the fd still points at the covered directory, not the new mount.
        let fd = resolve::open_in_root(root, dest, libc::O_PATH)
            .ctx(|| format!("reopen {}", dest.display()))?;
        let target = resolve::fd_path(&fd);
        let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            remount_bind(&target, opts.flags)?;
        }
        if !opts.propagation.is_empty() {
            mount(None, &target, None, opts.propagation, None)?;
        }
        return Ok(());
    }
    let fd = resolve::mkdir_all(root, dest)?;
    let target = resolve::fd_path(&fd);
    let src = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
    let r = mount(Some(&src), &target, Some(typ), opts.flags, data);
    match r {
        // sysfs needs a network namespace we own; runc's fallback is a read-only bind.
        Err(Error::Sys { err, .. })
            if typ == "sysfs" && err.raw_os_error() == Some(libc::EPERM) =>
        {
            mount(
                Some(Path::new("/sys")),
                &target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            remount_bind(&target, opts.flags | MsFlags::MS_RDONLY)?;
        }
        r => r?,
    }
    if !opts.propagation.is_empty() {
        // Re-resolve: the fd still points at the covered directory, not the new mount
        // (changing that directory's propagation fails with EINVAL: not a mount point).
        let fd = resolve::open_in_root(root, dest, libc::O_PATH)
            .ctx(|| format!("reopen {}", dest.display()))?;
        mount(None, &resolve::fd_path(&fd), None, opts.propagation, None)?;
    }
    Ok(())
}

/// Makes the mount that holds `rootfs` private (runc's `rootfsParentMountPrivate`). With
/// a shared tree (`rootfsPropagation: rshared`, what a Bidirectional volume needs), the
/// rootfs's bind onto itself would otherwise propagate to the host's peer of that mount
/// and stay there, one leaked mount per container. Only that one mount changes: the
/// volumes' sources keep their peer groups, so mounts made in them still reach the host.
fn private_parent_mount(rootfs: &Path) -> Result<()> {
    for p in rootfs.ancestors() {
        explain!("mount --make-private {} (if a mount point)", p.display());
        // EINVAL: not a mount point; the mount holding it is further up.
        match nix::mount::mount::<str, _, str, str>(None, p, None, MsFlags::MS_PRIVATE, None) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EINVAL) => continue,
            Err(e) => return Err(e).ctx(|| format!("make {} private", p.display())),
        }
    }
    Ok(())
}

/// Makes the rootfs `/`: pivot_root(".", ".") then a lazy unmount of the old root (the
/// crun/runc trick that needs no directory for the old root); MS_MOVE + chroot when
/// the rootfs lives on ramfs/initramfs, where pivot_root is refused.
pub fn pivot(rootfs: &Path) -> Result<()> {
    let old = std::fs::File::open("/").ctx(|| "open /".into())?;
    let new = std::fs::File::open(rootfs).ctx(|| format!("open {}", rootfs.display()))?;
    nix::unistd::fchdir(&new).ctx(|| "chdir rootfs".into())?;
    explain!("pivot_root({}, .)", rootfs.display());
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            nix::unistd::fchdir(&old).ctx(|| "chdir old root".into())?;
            // Unmounting must not propagate to the host's mounts.
            mount(
                None,
                Path::new("."),
                None,
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                None,
            )?;
            explain!("umount2(old root, MNT_DETACH)");
            nix::mount::umount2(".", MntFlags::MNT_DETACH).ctx(|| "unmount old root".into())?;
        }
        Err(nix::errno::Errno::EINVAL) => {
            explain!("pivot_root refused (ramfs?): MS_MOVE + chroot instead");
            mount(Some(rootfs), Path::new("/"), None, MsFlags::MS_MOVE, None)?;
            nix::unistd::chroot(".").ctx(|| "chroot".into())?;
        }
        Err(e) => return Err(e).ctx(|| "pivot_root".into()),
    }
    nix::unistd::chdir("/").ctx(|| "chdir /".into())?;
    Ok(())
}

/// After pivot_root: sysctls, masked and read-only paths, read-only root.
pub fn finalize(spec: &Spec) -> Result<()> {
    let Some(linux) = spec.linux() else {
        return readonly_root(spec);
    };
    for (k, v) in linux.sysctl().iter().flatten() {
        let path = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        explain!("sysctl {k}={v} (write {})", path.display());
        std::fs::write(&path, v)
            .map_err(|e| crate::error::config(format!("linux.sysctl.{k}"), e.to_string()))?;
    }
    for p in linux.masked_paths().iter().flatten() {
        mask(Path::new(p))?;
    }
    for p in linux.readonly_paths().iter().flatten() {
        let p = Path::new(p);
        if std::fs::symlink_metadata(p).is_err() {
            continue;
        }
        mount(Some(p), p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
        remount_bind(p, locked_flags(p) | MsFlags::MS_RDONLY | MsFlags::MS_REC)?;
    }
    readonly_root(spec)
}

fn readonly_root(spec: &Spec) -> Result<()> {
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        let flags = locked_flags(Path::new("/")) | MsFlags::MS_RDONLY;
        remount_bind(Path::new("/"), flags)?;
    }
    Ok(())
}

/// Hides a path: /dev/null over files, an empty read-only tmpfs over directories.
fn mask(p: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return Ok(());
    };
    if meta.is_dir() {
        mount(
            Some(Path::new("tmpfs")),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None,
        )
    } else {
        mount(
            Some(Path::new("/dev/null")),
            p,
            None,
            MsFlags::MS_BIND,
            None,
        )
    }
}
