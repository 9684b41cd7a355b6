//! On-disk records: the server's only memory. A sandbox or container exists iff its
//! record dir exists; live state comes from the kernel (pids, netns, cgroups) and the
//! files the monitor writes, so a restarted server sees what its predecessor made.
//!
//! ```text
//! DATA/cri/sandboxes/<id>/{sandbox.json, hostname, hosts, resolv.conf}
//! DATA/cri/containers/<id>/{container.json, exit.json (written by the monitor)}
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{CriError, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub config: PodSandboxConfig,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// The bind-mounted netns file; `None` for hostNetwork pods.
    pub netns: Option<PathBuf>,
    /// The pause process and its start time (pid reuse guard).
    pub pause_pid: i32,
    pub pause_start: u64,
    pub ip: String,
    #[serde(default)]
    pub additional_ips: Vec<String>,
    /// The network the CNI ADD went through (for DEL).
    #[serde(default)]
    pub network: Option<String>,
    /// Set by StopPodSandbox: the pod is NOTREADY for good.
    #[serde(default)]
    pub stopped: bool,
    pub cgroup_parent: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub config: ContainerConfig,
    pub created_at: i64,
    #[serde(default)]
    pub started_at: i64,
    /// The image as the caller named it, and its resolved id.
    pub image_name: String,
    pub image_id: String,
    pub image_ref: String,
    /// Absolute path of the CRI log file ("" when the pod has no log directory).
    pub log_path: String,
    /// The signal StopContainer sends first (image `StopSignal`, default SIGTERM).
    pub stop_signal: i32,
    pub pod_labels: std::collections::HashMap<String, String>,
}

/// What the monitor writes when the container's init exits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExitRecord {
    pub exit_code: i32,
    pub finished_at: i64,
    pub oom_killed: bool,
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Writes `value` as JSON to `path` via a temp file and rename, so a crash never
/// leaves a half-written record.
pub fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let data = serde_json::to_vec_pretty(value)
        .map_err(|e| CriError::Internal(format!("encode {}: {e}", path.display())))?;
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data).map_err(CriError::io(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(CriError::io(format!("rename {}", path.display())))
}

pub fn load_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let data = fs::read(path).map_err(CriError::io(format!("read {}", path.display())))?;
    serde_json::from_slice(&data)
        .map_err(|e| CriError::Internal(format!("{}: {e}", path.display())))
}

/// Ids of the record dirs under `dir` (ignoring anything that is not one).
pub fn list_ids(dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|id| is_id(id))
        .collect()
}

pub fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A fresh 64-hex-digit id (as containerd's), from the kernel's random pool.
pub fn new_id() -> Result<String> {
    let mut b = [0u8; 32];
    let mut f = fs::File::open("/dev/urandom").map_err(CriError::io("open /dev/urandom"))?;
    std::io::Read::read_exact(&mut f, &mut b).map_err(CriError::io("read /dev/urandom"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Resolves a full id or a unique prefix among `ids` (crictl passes truncated ids).
pub fn resolve_id(ids: &[String], prefix: &str, what: &str) -> Result<String> {
    if prefix.is_empty() {
        return Err(CriError::InvalidArgument(format!(
            "{what} id: must not be empty"
        )));
    }
    let hits: Vec<&String> = ids.iter().filter(|i| i.starts_with(prefix)).collect();
    match hits[..] {
        [one] => Ok(one.clone()),
        [] => Err(CriError::NotFound(format!("{what} {prefix:?} not found"))),
        _ => Err(CriError::InvalidArgument(format!(
            "{what} id {prefix:?} is ambiguous"
        ))),
    }
}
