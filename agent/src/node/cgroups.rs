//! Pod cgroups: the runtime creates `<pod cgroup>/<container>` under every hierarchy;
//! after a pod is gone the agent removes the pod level (empty by then) everywhere.

use std::path::{Path, PathBuf};

/// Mount points of every cgroup hierarchy (v1 controllers and the v2 unified one),
/// read once: they are mounted at boot, and the mount table grows with every pod.
fn roots() -> &'static [PathBuf] {
    static ROOTS: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(read_roots)
}

fn read_roots() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            let mnt = pre.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(mnt))
        })
        .collect()
}

fn rmdir_tree(p: &Path) {
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(p);
}

/// Removes cgroup `rel` (absolute cgroup path such as `/hull-kubepods/pod<uid>`) and
/// its empty children from every hierarchy; busy ones stay (and are retried later).
pub fn remove(rel: &str) {
    let rel = rel.trim_start_matches('/');
    for r in roots() {
        let p = r.join(rel);
        if p.is_dir() {
            rmdir_tree(&p);
        }
    }
}

/// Whether cgroup `rel` still exists in any hierarchy (for leak checks).
pub fn exists(rel: &str) -> bool {
    let rel = rel.trim_start_matches('/');
    roots().iter().any(|r| r.join(rel).is_dir())
}

/// The pod cgroups under `/hull-kubepods` (every QoS level, every hierarchy), as
/// pod UID → their cgroup paths relative to the hierarchy root.
pub fn pods() -> std::collections::HashMap<String, Vec<String>> {
    let mut out: std::collections::HashMap<String, Vec<String>> = Default::default();
    for r in roots() {
        for qos in ["", "burstable/", "besteffort/"] {
            let Ok(rd) = std::fs::read_dir(r.join("hull-kubepods").join(qos)) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(uid) = name.strip_prefix("pod") else {
                    continue;
                };
                if uid.is_empty() || !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let rel = format!("/hull-kubepods/{qos}{name}");
                let v = out.entry(uid.to_string()).or_default();
                if !v.contains(&rel) {
                    v.push(rel);
                }
            }
        }
    }
    out
}

/// Whether no process is left anywhere in cgroup `rel` (any hierarchy, any child).
pub fn is_empty(rel: &str) -> bool {
    fn empty(p: &Path) -> bool {
        let procs = std::fs::read_to_string(p.join("cgroup.procs")).unwrap_or_default();
        if !procs.trim().is_empty() {
            return false;
        }
        std::fs::read_dir(p).map_or(true, |rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .all(|e| empty(&e.path()))
        })
    }
    let rel = rel.trim_start_matches('/');
    roots().iter().all(|r| {
        let p = r.join(rel);
        !p.is_dir() || empty(&p)
    })
}
