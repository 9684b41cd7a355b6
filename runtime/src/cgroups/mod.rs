//! Control groups for containers on cgroup v1, v2 and hybrid hosts.
//!
//! Module map:
//! - `hierarchy`: which layout the host has (from /proc/self/mountinfo), injectable roots.
//! - `path`: OCI `linux.cgroupsPath` (absolute, relative, systemd `slice:prefix:name`).
//! - `v1` / `v2`: `linux.resources` → controller files for each version.
//! - `devices`: device allow/deny rules (v1 files); `devices_v2`: the same as eBPF.
//! - `freezer`: pause/resume (v1 `freezer.state`, v2 `cgroup.freeze`).
//! - `stats`: usage counters shaped like runc's `events --stats`.
//! - `fs`: the narrated file reads and writes everything above goes through.
//! - `clone_into`: `clone3(CLONE_INTO_CGROUP)` into the v2 directory, and its fallback.
//!
//! Use ([`CgroupManager`]):
//! ```no_run
//! # use hull_runtime::cgroups::CgroupManager;
//! # fn f(res: &oci_spec::runtime::LinuxResources, pid: i32) -> Result<(), hull_runtime::cgroups::CgroupError> {
//! let cg = CgroupManager::new(None, "c1")?;   // /hull/c1 in every hierarchy
//! cg.apply(res)?;                              // mkdir + limits, before the process runs
//! cg.add_task(pid)?;                           // v1 controllers and the v2 tree
//! cg.freeze()?; cg.thaw()?;                    // pause / resume
//! cg.kill_all(libc::SIGKILL)?;                 // kill --all
//! cg.delete()?;                                // rmdir everywhere (errors if busy)
//! # Ok(()) }
//! ```
//!
//! Why not `cgroups-rs` here (DESIGN.md names it): 0.5's v2 hierarchy is the constant
//! `/sys/fs/cgroup`, so it can neither use the unified tree of a hybrid host
//! (`/sys/fs/cgroup/unified`) nor be pointed at a temp root to unit-test v2 on a v1
//! machine; its auto-detection treats hybrid as plain v1 and drops the v2 tree (and with
//! it `cgroup.kill` and process tracking); and it `unwrap()`s on kernel-supplied data.
//! What hull needs is small: write a value to a named file, narrated and with the file
//! in the error. That is `fs`, and the rest is the OCI → file mapping, which is
//! hull's own either way.
//!
//! On a hybrid host limits go to the v1 controllers (they own them) and the process is
//! also placed in the v2 tree, where `cgroup.kill` kills the whole container atomically
//! and `cgroup.procs` lists it even across v1 controllers that are not mounted.

pub mod clone_into;
pub mod devices;
pub mod devices_v2;
pub mod freezer;
mod fs;
pub mod hierarchy;
pub mod path;
pub mod stats;
pub mod v1;
pub mod v2;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

pub use freezer::FreezerState;
pub use hierarchy::Hierarchy;
pub use stats::Stats;

/// Errors of cgroup setup and control. Each names the file, field or path at fault.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("linux.cgroupsPath {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{field}: not supported on this host: {reason}")]
    Unsupported { field: String, reason: String },
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error(
        "no cgroup filesystem is mounted (nothing of type cgroup or cgroup2 in /proc/self/mountinfo)"
    )]
    NoHierarchy,
    #[error("cgroup {path} still has processes {pids:?}")]
    Busy { path: PathBuf, pids: Vec<i32> },
    #[error("cgroup {path} did not reach {want} within {secs}s")]
    Timeout {
        path: PathBuf,
        want: &'static str,
        secs: u64,
    },
    #[error("signal {signal} to pid {pid}: {source}")]
    Signal {
        pid: i32,
        signal: i32,
        #[source]
        source: std::io::Error,
    },
}

/// How long [`CgroupManager::delete`] lets just-killed processes finish exiting.
pub const DYING_GRACE: Duration = Duration::from_secs(2);

/// One container's cgroup in every hierarchy of the host.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    hierarchy: Hierarchy,
    relative: PathBuf,
}

impl CgroupManager {
    /// The cgroup for OCI `linux.cgroupsPath` (see [`path`]) on this host.
    pub fn new(cgroups_path: Option<&str>, id: &str) -> Result<Self, CgroupError> {
        Self::with_hierarchy(Hierarchy::detect()?, cgroups_path, id)
    }

    /// Same, on a given layout (tests point this at a temp directory).
    pub fn with_hierarchy(
        hierarchy: Hierarchy,
        cgroups_path: Option<&str>,
        id: &str,
    ) -> Result<Self, CgroupError> {
        let relative = path::resolve(cgroups_path, id)?;
        crate::explain!(
            "cgroup layout {} ({}), container cgroup /{}",
            hierarchy.kind(),
            match (&hierarchy.v1_controllers(), hierarchy.unified()) {
                (Some(c), Some(u)) => format!("{} v1 controllers + v2 at {}", c.len(), u.display()),
                (Some(c), None) => format!("{} v1 controllers", c.len()),
                (None, Some(u)) => format!("v2 at {}", u.display()),
                (None, None) => String::new(),
            },
            relative.display()
        );
        Ok(Self {
            hierarchy,
            relative,
        })
    }

    /// The layout this manager writes to.
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// The cgroup path as `/proc/PID/cgroup` shows it (`/hull/c1`).
    pub fn path(&self) -> PathBuf {
        Path::new("/").join(&self.relative)
    }

    /// Absolute directory per controller (`"unified"` for the v2 tree). Co-mounted v1
    /// controllers (cpu,cpuacct) map to the same directory.
    pub fn paths(&self) -> BTreeMap<String, PathBuf> {
        let mut out = BTreeMap::new();
        if let Some(ctrls) = self.hierarchy.v1_controllers() {
            for (c, mnt) in ctrls {
                out.insert(c.clone(), mnt.join(&self.relative));
            }
        }
        if let Some(u) = self.hierarchy.unified() {
            out.insert("unified".to_string(), u.join(&self.relative));
        }
        out
    }

    fn v1_dirs(&self) -> BTreeMap<String, PathBuf> {
        let mut p = self.paths();
        p.remove("unified");
        p
    }

    fn unified_dir(&self) -> Option<PathBuf> {
        self.hierarchy.unified().map(|u| u.join(&self.relative))
    }

    /// Distinct directories (co-mounted controllers counted once).
    fn all_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.paths().into_values().collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Creates the cgroup in every hierarchy and makes it ready for tasks (v1 cpuset
    /// gets its parent's CPUs and memory nodes; v2 parents delegate controllers).
    pub fn create(&self) -> Result<(), CgroupError> {
        self.create_tracked().map(|_| ())
    }

    /// [`create`](Self::create), returning the container directories this call made
    /// (not shared parents), so a failed [`apply`](Self::apply) can take them back.
    fn create_tracked(&self) -> Result<Vec<PathBuf>, CgroupError> {
        let mut made_leaves = Vec::new();
        let result = (|| {
            for dir in self.all_dirs() {
                if fs::create_dirs(&dir)?.last() == Some(&dir) {
                    made_leaves.push(dir);
                }
            }
            if let Some(ctrls) = self.hierarchy.v1_controllers()
                && let Some(root) = ctrls.get("cpuset")
            {
                v1::init_cpuset(root, &root.join(&self.relative))?;
            }
            if let Hierarchy::V2 { root } = &self.hierarchy {
                self.delegate_v2(root, v2::CONTROLLERS)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(made_leaves),
            Err(e) => {
                Self::remove_made(&made_leaves);
                Err(e)
            }
        }
    }

    fn remove_made(dirs: &[PathBuf]) {
        for d in dirs {
            let _ = fs::remove_tree(d);
        }
    }

    /// v2 controllers are only usable in a cgroup whose parent lists them in
    /// `cgroup.subtree_control`, so each ancestor from the root down enables those it has.
    fn delegate_v2(&self, root: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
        let mut dir = root.to_path_buf();
        let comps: Vec<_> = self.relative.components().collect();
        for comp in &comps {
            let available = fs::read_opt(&dir, "cgroup.controllers")?.unwrap_or_default();
            let enabled = fs::read_opt(&dir, "cgroup.subtree_control")?.unwrap_or_default();
            let want: Vec<String> = controllers
                .iter()
                .filter(|c| available.split_whitespace().any(|a| a == **c))
                .filter(|c| !enabled.split_whitespace().any(|a| a == **c))
                .map(|c| format!("+{c}"))
                .collect();
            if !want.is_empty() {
                fs::write(&dir, "cgroup.subtree_control", &want.join(" "))?;
            }
            dir.push(comp);
        }
        Ok(())
    }

    /// Creates the cgroup (if needed) and writes every limit in `resources`.
    ///
    /// On failure the directories this call created are removed again (while empty),
    /// so bad input leaves nothing behind.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        let made = self.create_tracked()?;
        self.write_resources(resources).inspect_err(|_| {
            if self.pids().is_ok_and(|p| p.is_empty()) {
                Self::remove_made(&made);
            }
        })
    }

    /// Changes the limits of a running container (`hull-runtime update`).
    pub fn update(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        self.write_resources(resources)
    }

    fn write_resources(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        self.check_memory_before_update(r)?;
        match &self.hierarchy {
            Hierarchy::V2 { .. } => {
                let Some(dir) = self.unified_dir() else {
                    return Ok(());
                };
                // Validate and compile everything before the first write, so bad input
                // leaves the cgroup as it was.
                let plan = v2::plan(r, &|f| dir.join(f).exists())?;
                let devices = match r.devices() {
                    Some(d) => Some(devices_v2::program(&devices::rules(d)?)),
                    None => None,
                };
                for (file, value) in plan {
                    fs::write(&dir, &file, &value)?;
                }
                if let Some(prog) = devices {
                    devices_v2::attach(&dir, &prog)?;
                }
                Ok(())
            }
            Hierarchy::V1 { .. } | Hierarchy::Hybrid { .. } => {
                let dirs = self.v1_dirs();
                v1::apply(&dirs, r)?;
                if !dirs.contains_key("hugetlb") {
                    self.hugetlb_in_v2_tree(r)?;
                }
                Ok(())
            }
        }
    }

    /// OCI `memory.checkBeforeUpdate`: refuse a limit below what the container already
    /// uses, instead of letting the kernel reclaim or OOM-kill to meet it.
    fn check_memory_before_update(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        let Some(mem) = r.memory() else {
            return Ok(());
        };
        let Some(limit) = mem.limit().filter(|l| *l > 0) else {
            return Ok(());
        };
        if mem.check_before_update() != Some(true) {
            return Ok(());
        }
        let usage = match (&self.hierarchy, self.v1_dirs().get("memory")) {
            (Hierarchy::V2 { .. }, _) => match self.unified_dir() {
                Some(d) => fs::read_u64_opt(&d, "memory.current")?,
                None => None,
            },
            (_, Some(d)) => fs::read_u64_opt(d, "memory.usage_in_bytes")?,
            (_, None) => None,
        };
        match usage {
            Some(u) if (limit as u64) < u => Err(CgroupError::Invalid {
                field: "linux.resources.memory.limit".into(),
                reason: format!(
                    "{limit} is below the current usage {u} (memory.checkBeforeUpdate is set)"
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Hugepage limits on a host whose hugetlb controller is not mounted as v1: on a
    /// hybrid host it is usually free in the v2 tree (this is where a kernel puts
    /// controllers no v1 mount claimed), so it is delegated and used there. Kubelet
    /// sends a limit for every page size of the node on every container, so a host
    /// with no hugetlb controller at all skips them with a warning, as runc does,
    /// rather than failing every pod.
    fn hugetlb_in_v2_tree(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        let Some(limits) = r.hugepage_limits().as_ref().filter(|l| !l.is_empty()) else {
            return Ok(());
        };
        let (Some(root), Some(dir)) = (self.hierarchy.unified(), self.unified_dir()) else {
            tracing::warn!(
                "linux.resources.hugepageLimits ignored: no hugetlb controller on this host"
            );
            return Ok(());
        };
        let available = fs::read_opt(root, "cgroup.controllers")?.unwrap_or_default();
        if !available.split_whitespace().any(|c| c == "hugetlb") {
            tracing::warn!(
                "linux.resources.hugepageLimits ignored: no hugetlb controller on this host"
            );
            return Ok(());
        }
        self.delegate_v2(root, &["hugetlb"])?;
        for h in limits {
            let value = if h.limit() < 0 {
                "max".to_string()
            } else {
                h.limit().to_string()
            };
            fs::write(&dir, &format!("hugetlb.{}.max", h.page_size()), &value)?;
        }
        Ok(())
    }

    /// Moves process `pid` (and its threads) into the cgroup in every hierarchy.
    pub fn add_task(&self, pid: i32) -> Result<(), CgroupError> {
        self.create()?;
        for dir in self.all_dirs() {
            fs::write(&dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// The directory whose `cgroup.procs` lists the container: the v2 tree when there
    /// is one (it holds every process on hybrid hosts too), else a v1 controller.
    fn tracking_dir(&self) -> Option<PathBuf> {
        self.unified_dir().or_else(|| {
            let dirs = self.v1_dirs();
            ["pids", "freezer", "memory", "cpu"]
                .iter()
                .find_map(|c| dirs.get(*c).cloned())
                .or_else(|| dirs.into_values().next())
        })
    }

    /// Every process in the container, including those in sub-cgroups it created.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let mut out = Vec::new();
        if let Some(dir) = self.tracking_dir() {
            fs::procs_recursive(&dir, &mut out)?;
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    fn freezer_v1_dir(&self) -> Option<PathBuf> {
        self.v1_dirs().remove("freezer")
    }

    /// Freezes every process and waits until the kernel reports the cgroup frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.set_frozen(true)
    }

    /// Thaws a frozen cgroup and waits until it is running again.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        match (self.freezer_v1_dir(), self.unified_dir()) {
            (Some(dir), _) => freezer::set_v1(&dir, frozen),
            (None, Some(dir)) => freezer::set_v2(&dir, frozen),
            (None, None) => Err(CgroupError::Unsupported {
                field: "freezer".into(),
                reason: "neither a v1 freezer controller nor a cgroup v2 tree is mounted".into(),
            }),
        }
    }

    /// Current freezer state.
    pub fn state(&self) -> Result<FreezerState, CgroupError> {
        match (self.freezer_v1_dir(), self.unified_dir()) {
            (Some(dir), _) => freezer::state_v1(&dir),
            (None, Some(dir)) => freezer::state_v2(&dir),
            (None, None) => Ok(FreezerState::Thawed),
        }
    }

    /// Sends `signal` to every process in the container (`kill --all`).
    ///
    /// SIGKILL uses v2 `cgroup.kill` when the kernel has it (5.14+): the kernel kills
    /// the whole tree at once, so a process forking at that moment cannot escape.
    /// Otherwise the cgroup is frozen first so no process can fork between listing and
    /// signalling, every pid is signalled, and the cgroup is thawed so the signals land.
    pub fn kill_all(&self, signal: i32) -> Result<(), CgroupError> {
        if signal == libc::SIGKILL
            && let Some(dir) = self.unified_dir()
            && dir.join("cgroup.kill").exists()
        {
            return fs::write(&dir, "cgroup.kill", "1");
        }
        let was = self.state().unwrap_or(FreezerState::Thawed);
        let froze = was == FreezerState::Thawed && self.freeze().is_ok();
        let result = self.pids().and_then(|pids| {
            for pid in pids {
                crate::explain!("kill({pid}, {signal})");
                // SAFETY: kill(2) has no memory-safety preconditions.
                if unsafe { libc::kill(pid, signal) } != 0 {
                    let err = std::io::Error::last_os_error();
                    // Exited between listing and signalling: nothing left to do.
                    if err.raw_os_error() != Some(libc::ESRCH) {
                        return Err(CgroupError::Signal {
                            pid,
                            signal,
                            source: err,
                        });
                    }
                }
            }
            Ok(())
        });
        if froze {
            self.thaw()?;
        }
        result
    }

    /// Resource usage (`events --stats`, CRI ContainerStats).
    pub fn stats(&self) -> Result<Stats, CgroupError> {
        if let Hierarchy::V2 { .. } = self.hierarchy {
            return match self.unified_dir() {
                Some(d) => stats::read_v2(&d),
                None => Ok(Stats::default()),
            };
        }
        let dirs = self.v1_dirs();
        let mut s = Stats {
            cpu: stats::read_v1_cpu(
                dirs.get("cpu").map(PathBuf::as_path),
                dirs.get("cpuacct").map(PathBuf::as_path),
            )?,
            ..Default::default()
        };
        if let Some(d) = dirs.get("memory") {
            s.memory = stats::read_v1_memory(d)?;
        }
        if let Some(d) = dirs.get("pids") {
            s.pids = stats::read_pids(d)?;
        }
        if let Some(d) = dirs.get("blkio") {
            s.blkio = stats::read_v1_blkio(d)?;
        }
        if let Some(u) = self.unified_dir() {
            s.pressure = stats::read_pressure(&u)?;
        }
        Ok(s)
    }

    /// How many processes the kernel OOM killer killed in this container; the CRI
    /// server reports a container that exited by SIGKILL with a non-zero count here as
    /// `OOMKilled`.
    pub fn oom_kill_count(&self) -> Result<u64, CgroupError> {
        if let Some(d) = self.v1_dirs().get("memory") {
            return Ok(fs::read_flat_keyed(d, "memory.oom_control")?
                .get("oom_kill")
                .copied()
                .unwrap_or(0));
        }
        match self.unified_dir() {
            Some(d) => Ok(fs::read_flat_keyed(&d, "memory.events")?
                .get("oom_kill")
                .copied()
                .unwrap_or(0)),
            None => Ok(0),
        }
    }

    /// Removes the container's cgroup (and sub-cgroups it made) from every hierarchy.
    /// Fails, removing nothing, while processes remain. Parents such as `/hull` are
    /// shared with other containers and stay.
    ///
    /// Processes killed just before (`kill --all` then `delete`) are given
    /// [`DYING_GRACE`] to finish exiting: SIGKILL is delivered asynchronously and a
    /// task stays listed until the kernel has run its exit path.
    pub fn delete(&self) -> Result<(), CgroupError> {
        self.wait_empty(DYING_GRACE)?;
        let mut first_err = None;
        for dir in self.all_dirs() {
            if let Err(e) = fs::remove_tree(&dir) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Waits until no process is left in the cgroup, or fails with the pids still there.
    pub fn wait_empty(&self, timeout: Duration) -> Result<(), CgroupError> {
        let deadline = Instant::now() + timeout;
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::Busy {
                    path: self.path(),
                    pids,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Names of the cgroups directly under `parent` (e.g. `/hull`) in any hierarchy of
    /// this host, for reconciling after a crash: an id found here with no container
    /// state is a leak to `kill_all` + `delete`.
    pub fn ids_under(hierarchy: &Hierarchy, parent: &str) -> Result<Vec<String>, CgroupError> {
        let rel = path::resolve(Some(parent), "-")?;
        let mut roots: Vec<PathBuf> = hierarchy
            .v1_controllers()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        roots.extend(hierarchy.unified().map(Path::to_path_buf));
        let mut ids = Vec::new();
        for root in roots {
            let dir = root.join(&rel);
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CgroupError::Io { path: dir, source }),
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    ids.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Whether the cgroup exists in any hierarchy (for leak checks and reconciling).
    pub fn exists(&self) -> bool {
        self.all_dirs().iter().any(|d| d.exists())
    }
}
