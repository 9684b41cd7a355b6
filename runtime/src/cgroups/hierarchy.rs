//! Which cgroup layout this host has: pure v1, pure v2, or hybrid (v1 controllers plus
//! a controller-less v2 tree at `/sys/fs/cgroup/unified`, systemd's "hybrid" mode).
//!
//! Found from `/proc/self/mountinfo` rather than by probing fixed paths, so a v1
//! controller mounted somewhere unusual (or co-mounted, like `cpu,cpuacct`) is found.
//! The roots are plain paths so tests can point a [`Hierarchy`] at a temp directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::CgroupError;

/// v1 controllers hull manages (named hierarchies such as `name=systemd` are left to
/// their owner).
pub const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
    "misc",
];

/// The cgroup layout of a host, with the mount point of each hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// Only v1: one mount per controller (or per group of co-mounted controllers).
    V1 {
        /// controller name → mount point (co-mounted controllers share one).
        controllers: BTreeMap<String, PathBuf>,
    },
    /// Only v2: one tree holding every controller.
    V2 {
        /// the cgroup2 mount point, usually `/sys/fs/cgroup`.
        root: PathBuf,
    },
    /// v1 controllers plus a v2 tree used for process tracking (and whatever controllers
    /// are not bound to v1).
    Hybrid {
        /// controller name → mount point of its v1 hierarchy.
        controllers: BTreeMap<String, PathBuf>,
        /// the cgroup2 mount point, usually `/sys/fs/cgroup/unified`.
        unified: PathBuf,
    },
}

impl Hierarchy {
    /// Detects the layout of this host from `/proc/self/mountinfo`, once per process:
    /// hierarchies are mounted at boot, while the mount table grows with every pod
    /// (netns, overlay, shm, volume mounts), and a CRI server creating a cgroup per
    /// container re-read and re-parsed all of it each time.
    pub fn detect() -> Result<Self, CgroupError> {
        static HOST: std::sync::OnceLock<Hierarchy> = std::sync::OnceLock::new();
        if let Some(h) = HOST.get() {
            return Ok(h.clone());
        }
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(|source| CgroupError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let h = Self::from_mountinfo(&text)?;
        Ok(HOST.get_or_init(|| h).clone())
    }

    /// Parses a mountinfo table (see proc(5)): field 5 is the mount point, and after the
    /// `-` separator come the filesystem type and the super options, which for a v1
    /// cgroup mount list its controllers.
    pub fn from_mountinfo(text: &str) -> Result<Self, CgroupError> {
        let mut controllers = BTreeMap::new();
        let mut unified = None;
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(sep) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            let (Some(mount_point), Some(fstype), Some(super_opts)) =
                (fields.get(4), fields.get(sep + 1), fields.get(sep + 3))
            else {
                continue;
            };
            let mount_point = PathBuf::from(unescape(mount_point));
            match *fstype {
                "cgroup2" => {
                    // Keep the first one: a container's own /sys/fs/cgroup mounts appear
                    // later in the table and must not shadow the host's.
                    unified.get_or_insert(mount_point);
                }
                "cgroup" => {
                    for opt in super_opts.split(',') {
                        if V1_CONTROLLERS.contains(&opt) {
                            controllers
                                .entry(opt.to_string())
                                .or_insert_with(|| mount_point.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        match (controllers.is_empty(), unified) {
            (true, Some(root)) => Ok(Hierarchy::V2 { root }),
            (false, Some(unified)) => Ok(Hierarchy::Hybrid {
                controllers,
                unified,
            }),
            (false, None) => Ok(Hierarchy::V1 { controllers }),
            (true, None) => Err(CgroupError::NoHierarchy),
        }
    }

    /// The v1 controllers and their mount points (empty on pure v2).
    pub fn v1_controllers(&self) -> Option<&BTreeMap<String, PathBuf>> {
        match self {
            Hierarchy::V1 { controllers } | Hierarchy::Hybrid { controllers, .. } => {
                Some(controllers)
            }
            Hierarchy::V2 { .. } => None,
        }
    }

    /// The cgroup2 mount point, on v2 and hybrid hosts.
    pub fn unified(&self) -> Option<&Path> {
        match self {
            Hierarchy::V2 { root } => Some(root),
            Hierarchy::Hybrid { unified, .. } => Some(unified),
            Hierarchy::V1 { .. } => None,
        }
    }

    /// Short name for `--explain` and `hull-runtime features`.
    pub fn kind(&self) -> &'static str {
        match self {
            Hierarchy::V1 { .. } => "v1",
            Hierarchy::V2 { .. } => "v2",
            Hierarchy::Hybrid { .. } => "hybrid",
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
27 25 0:25 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw shared:14 - cgroup cgroup rw,cpu,cpuacct
31 25 0:29 / /sys/fs/cgroup/memory rw shared:15 - cgroup cgroup rw,memory
";

    #[test]
    fn hybrid_is_detected_with_comounted_controllers() {
        let h = Hierarchy::from_mountinfo(HYBRID).unwrap();
        assert_eq!(h.kind(), "hybrid");
        assert_eq!(h.unified(), Some(Path::new("/sys/fs/cgroup/unified")));
        let c = h.v1_controllers().unwrap();
        assert_eq!(c["cpu"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(c["cpuacct"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(c["memory"], PathBuf::from("/sys/fs/cgroup/memory"));
        assert!(!c.contains_key("name=systemd"));
    }

    #[test]
    fn pure_v2_and_v1_and_none() {
        let v2 = "29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            Hierarchy::from_mountinfo(v2).unwrap(),
            Hierarchy::V2 {
                root: "/sys/fs/cgroup".into()
            }
        );
        let v1 = "31 25 0:29 / /sys/fs/cgroup/my\\040mem rw - cgroup cgroup rw,memory\n";
        let h = Hierarchy::from_mountinfo(v1).unwrap();
        assert_eq!(h.kind(), "v1");
        assert_eq!(
            h.v1_controllers().unwrap()["memory"],
            PathBuf::from("/sys/fs/cgroup/my mem")
        );
        assert!(matches!(
            Hierarchy::from_mountinfo("1 0 8:1 / / rw - ext4 /dev/sda rw\n"),
            Err(CgroupError::NoHierarchy)
        ));
    }

    #[test]
    fn this_host_is_detected() {
        // Whatever the host is, detection must find something on a Linux test machine.
        let h = Hierarchy::detect().unwrap();
        assert!(h.unified().is_some() || h.v1_controllers().is_some());
    }
}
