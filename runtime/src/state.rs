//! Per-container state on disk: `<root>/<id>/state.json` (+ `exec.fifo` while created).
//!
//! The stored file is only a record of what was started; the status reported is always
//! recomputed from the kernel: the init pid must still exist *with the start time we
//! recorded* (so a recycled pid is never mistaken for, or signalled as, the container),
//! a pending exec fifo means "created", a frozen cgroup means "paused".

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};

pub const STATE_FILE: &str = "state.json";
pub const EXEC_FIFO: &str = "exec.fifo";
pub const DEFAULT_ROOT: &str = "/run/hull-runtime";

/// OCI lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// The state JSON: the OCI fields first (what `state` prints and hooks read on stdin),
/// then what hull needs to find the container again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    pub pid: i32,
    pub bundle: PathBuf,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
    pub rootfs: PathBuf,
    /// RFC 3339 creation time.
    pub created: String,
    /// `starttime` of the init from /proc/PID/stat (clock ticks since boot).
    #[serde(default)]
    pub init_start_time: u64,
    /// The cgroupsPath handed to the cgroup manager (None = hull's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroups_path: Option<String>,
    /// Whether `run` was asked to use the systemd cgroup driver (accepted, recorded).
    #[serde(default)]
    pub systemd_cgroup: bool,
}

impl State {
    /// The OCI-only view (what hooks receive and what `state` prints).
    pub fn oci_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ociVersion": self.oci_version,
            "id": self.id,
            "status": self.status,
            "pid": self.pid,
            "bundle": self.bundle,
            "annotations": self.annotations,
            "rootfs": self.rootfs,
            "created": self.created,
        })
    }
}

/// The directory holding one container's state.
pub fn container_dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

/// Creates the container's state dir; fails with `Exists` if the id is taken.
pub fn create_dir(root: &Path, id: &str) -> Result<PathBuf> {
    fs::create_dir_all(root).ctx(|| format!("create state root {}", root.display()))?;
    let dir = container_dir(root, id);
    match fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(Error::Exists(id.to_string()))
        }
        Err(e) => Err(e).ctx(|| format!("create {}", dir.display())),
    }
}

/// Writes state.json atomically (temp file + rename) so readers never see half a file.
pub fn save(dir: &Path, state: &State) -> Result<()> {
    let tmp = dir.join(".state.json.tmp");
    let data = serde_json::to_vec(state).map_err(|e| Error::Other(format!("encode state: {e}")))?;
    let mut f = fs::File::create(&tmp).ctx(|| format!("write {}", tmp.display()))?;
    f.write_all(&data)
        .ctx(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, dir.join(STATE_FILE)).ctx(|| format!("rename {}", tmp.display()))
}

/// Reads the stored state of `id` (status as stored; see [`refresh`]).
pub fn load(root: &Path, id: &str) -> Result<State> {
    crate::spec::validate_id(id)?;
    let path = container_dir(root, id).join(STATE_FILE);
    let data = match fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound(id.to_string()));
        }
        Err(e) => return Err(e).ctx(|| format!("read {}", path.display())),
    };
    serde_json::from_slice(&data)
        .map_err(|e| Error::Other(format!("{}: corrupt state: {e}", path.display())))
}

/// Recomputes the live status from the kernel.
pub fn refresh(root: &Path, state: &mut State, frozen: impl FnOnce(&State) -> bool) {
    state.status = if !process_alive(state.pid, state.init_start_time) {
        Status::Stopped
    } else if container_dir(root, &state.id).join(EXEC_FIFO).exists() {
        Status::Created
    } else if frozen(state) {
        Status::Paused
    } else {
        Status::Running
    };
}

/// Lists container ids under `root` (directories holding a state.json).
pub fn list_ids(root: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx(|| format!("read {}", root.display())),
    };
    let mut ids: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(STATE_FILE).exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort();
    Ok(ids)
}

/// Field 22 (`starttime`) and field 3 (`state`) of /proc/PID/stat.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field may contain spaces and parentheses: parse after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// True if `pid` is the same, not yet exited, process we started.
pub fn process_alive(pid: i32, start_time: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    match proc_stat(pid) {
        Some((state, start)) => start == start_time && state != 'Z' && state != 'X',
        None => false,
    }
}

/// RFC 3339 UTC timestamp with nanoseconds, without pulling in a date crate.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_recycled_pid_is_not() {
        let me = std::process::id() as i32;
        let (_, start) = proc_stat(me).expect("own stat");
        assert!(process_alive(me, start));
        assert!(!process_alive(me, start + 1));
        assert!(!process_alive(0, 0));
    }

    #[test]
    fn rfc3339_shape() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 30, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T');
    }
}
