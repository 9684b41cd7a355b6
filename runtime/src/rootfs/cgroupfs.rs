//! The `cgroup` mount inside a container.
//!
//! On a cgroup v2 host this is one cgroup2 mount. On v1 and hybrid hosts (this machine:
//! v1 controllers plus an empty v2 at /sys/fs/cgroup/unified) there is no single
//! filesystem to mount, so, like runc, hull builds the host's layout: a tmpfs with one
//! mount per hierarchy. In a cgroup namespace each is a real cgroup mount (the kernel
//! shows the container's own cgroup as the root); without one, the container's cgroup
//! directories are bind mounted from the host.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::error::{Context, Result};
use crate::rootfs::{options::MountOptions, remount_bind};

/// One mounted cgroup hierarchy of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where the host mounts it (e.g. /sys/fs/cgroup/memory).
    pub mountpoint: PathBuf,
    /// `cgroup` (v1) or `cgroup2`.
    pub fstype: String,
    /// Super options without rw/ro, e.g. `memory` or `name=systemd`.
    pub options: String,
    /// Root of the mount inside the hierarchy (usually `/`).
    pub root: String,
}

/// The cgroup hierarchies mounted under /sys/fs/cgroup, from a mountinfo text.
pub fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 || !(r[0] == "cgroup" || r[0] == "cgroup2") {
            continue;
        }
        if !l[4].starts_with("/sys/fs/cgroup") {
            continue;
        }
        let options = r[2]
            .split(',')
            .filter(|o| *o != "rw" && *o != "ro")
            .collect::<Vec<_>>()
            .join(",");
        out.push(Hierarchy {
            mountpoint: l[4].into(),
            fstype: r[0].into(),
            options,
            root: l[3].into(),
        });
    }
    out
}

/// This process's cgroup path in the hierarchy with `options` (from /proc/self/cgroup).
fn own_path(proc_cgroup: &str, h: &Hierarchy) -> Option<String> {
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if h.fstype == "cgroup2" {
            id == "0" && ctrls.is_empty()
        } else {
            let mut a: Vec<&str> = ctrls.split(',').collect();
            let mut b: Vec<&str> = h.options.split(',').filter(|o| is_controller(o)).collect();
            a.sort();
            b.sort();
            a == b
        };
        if matches {
            return Some(path.to_string());
        }
    }
    None
}

/// Mount options of a v1 hierarchy that name a controller (or a named hierarchy), as
/// opposed to behaviour switches like `xattr` or `clone_children`.
fn is_controller(o: &str) -> bool {
    !o.is_empty()
        && !matches!(
            o,
            "xattr" | "clone_children" | "noprefix" | "cpuset_v2_mode" | "favordynmods" | "none"
        )
        && !o.starts_with("release_agent=")
}

/// Mounts the cgroup filesystem(s) at `dest` inside the rootfs open as `root`.
pub fn mount(
    root: i32,
    dest: &Path,
    opts: &MountOptions,
    cgroupns: bool,
    cgroup_path: &Path,
) -> Result<()> {
    let fd = crate::rootfs::resolve::mkdir_all(root, dest)?;
    let target = crate::rootfs::resolve::fd_path(&fd);
    let target = target.as_path();
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").ctx(|| "read mountinfo".into())?;
    let proc_cgroup =
        std::fs::read_to_string("/proc/self/cgroup").ctx(|| "read /proc/self/cgroup".into())?;
    let hs = hierarchies(&mountinfo);
    let flags = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
    if let [only] = hs.as_slice()
        && only.fstype == "cgroup2"
        && only.mountpoint == Path::new("/sys/fs/cgroup")
    {
        return mount_one(target, only, flags, cgroupns, &proc_cgroup, cgroup_path);
    }
    // v1 / hybrid: a tmpfs holding one directory per hierarchy.
    mount_tmpfs(target, flags)?;
    // The fd still names the directory under the tmpfs: resolve again to reach the tmpfs.
    let fd = crate::rootfs::resolve::open_in_root(root, dest, libc::O_PATH | libc::O_DIRECTORY)
        .ctx(|| format!("reopen {}", dest.display()))?;
    let target = crate::rootfs::resolve::fd_path(&fd);
    let target = target.as_path();
    for h in &hs {
        let Some(name) = h.mountpoint.file_name() else {
            continue;
        };
        let sub = target.join(name);
        std::fs::create_dir_all(&sub).ctx(|| format!("mkdir {}", sub.display()))?;
        mount_one(&sub, h, flags, cgroupns, &proc_cgroup, cgroup_path)?;
        // Co-mounted controllers (cpu,cpuacct) are reachable under each name too.
        let n = name.to_string_lossy();
        if n.contains(',') {
            for part in n.split(',') {
                let _ = std::os::unix::fs::symlink(&*n, target.join(part));
            }
        }
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        remount(target, flags)?;
    }
    Ok(())
}

fn mount_tmpfs(target: &Path, flags: MsFlags) -> Result<()> {
    let f =
        (flags & !MsFlags::MS_RDONLY) | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    crate::rootfs::mount(
        Some(Path::new("tmpfs")),
        target,
        Some("tmpfs"),
        f,
        Some("mode=755"),
    )
}

fn remount(target: &Path, flags: MsFlags) -> Result<()> {
    crate::rootfs::mount(
        None,
        target,
        None,
        MsFlags::MS_REMOUNT | flags,
        Some("mode=755"),
    )
}

fn mount_one(
    target: &Path,
    h: &Hierarchy,
    flags: MsFlags,
    cgroupns: bool,
    proc_cgroup: &str,
    cgroup_path: &Path,
) -> Result<()> {
    if cgroupns {
        let data = (h.fstype == "cgroup").then_some(h.options.as_str());
        return crate::rootfs::mount(
            Some(Path::new(&h.fstype)),
            target,
            Some(&h.fstype),
            flags,
            data,
        );
    }
    // The container's cgroup if hull made one in this hierarchy, else wherever we are
    // (e.g. a named hierarchy hull leaves alone).
    let ours = h
        .mountpoint
        .join(cgroup_path.strip_prefix("/").unwrap_or(cgroup_path));
    let own = if h.root == "/" && ours.is_dir() {
        cgroup_path.to_string_lossy().into_owned()
    } else {
        own_path(proc_cgroup, h).unwrap_or_else(|| "/".into())
    };
    // The host mount may itself be rooted below the hierarchy root.
    let rel = own
        .strip_prefix(h.root.trim_end_matches('/'))
        .unwrap_or(&own)
        .trim_start_matches('/');
    let src = h.mountpoint.join(rel);
    crate::rootfs::mount(
        Some(&src),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    remount_bind(target, flags | MsFlags::MS_BIND)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate";
    const V2: &str = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot";

    #[test]
    fn hybrid_layout() {
        let hs = hierarchies(HYBRID);
        let names: Vec<_> = hs
            .iter()
            .map(|h| h.mountpoint.display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "/sys/fs/cgroup/cpu",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/unified"
            ]
        );
        assert_eq!(hs[2].options, "xattr,name=systemd");
        assert_eq!(hs[3].fstype, "cgroup2");
        let pc = "12:memory:/hull/x\n1:name=systemd:/init\n0::/u";
        assert_eq!(own_path(pc, &hs[1]).as_deref(), Some("/hull/x"));
        assert_eq!(own_path(pc, &hs[3]).as_deref(), Some("/u"));
    }

    #[test]
    fn pure_v2_layout() {
        let hs = hierarchies(V2);
        assert_eq!(hs.len(), 1);
        assert_eq!(hs[0].fstype, "cgroup2");
        assert_eq!(
            own_path("0::/system.slice/x", &hs[0]).as_deref(),
            Some("/system.slice/x")
        );
    }
}
