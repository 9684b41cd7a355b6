//! On-disk records: the server's only memory. A sandbox or container exists iff its
//! record dir exists; live state comes from the kernel (pids, netns, cgroups) and the
//! files the monitor writes, so a restarted server sees what its predecessor made.
//!
//! ```text
//! DATA/cri/sandboxes/<id>/{sandbox.json, hostname, hosts, resolv.conf}
//! DATA/cri/containers/<id>/{container.json, exit.json (written by the monitor)}
//! ```
//!
//! The records are also kept parsed in memory (`cache`): List*/Status calls, which the
//! agent makes every second for every pod, cost one `stat` per record instead of a read
//! and a JSON parse. Disk stays the truth — writes go through to it, and an entry is
//! used only while its file's identity (inode, size, mtime, ctime) is the one it was
//! read or written with — so a restarted server, or the monitor (another process)
//! writing `exit.json`, is seen as before.

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
/// leaves a half-written record; the record types are cached as written.
pub fn save_json<T: Serialize + Clone + Send + Sync + 'static>(
    path: &Path,
    value: &T,
) -> Result<()> {
    let data = serde_json::to_vec_pretty(value)
        .map_err(|e| CriError::Internal(format!("encode {}: {e}", path.display())))?;
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data).map_err(CriError::io(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(CriError::io(format!("rename {}", path.display())))?;
    if cache::holds::<T>() {
        match fs::metadata(path) {
            Ok(m) => cache::put(path, &m, value.clone()),
            Err(_) => cache::forget(path),
        }
    }
    Ok(())
}

pub fn load_json<T: DeserializeOwned + Clone + Send + Sync + 'static>(path: &Path) -> Result<T> {
    if !cache::holds::<T>() {
        let data = fs::read(path).map_err(CriError::io(format!("read {}", path.display())))?;
        return parse(path, &data);
    }
    match fs::metadata(path) {
        Ok(m) => {
            if let Some(v) = cache::get::<T>(path, &m) {
                return Ok(v);
            }
        }
        Err(e) => {
            cache::forget(path);
            return Err(CriError::io(format!("read {}", path.display()))(e));
        }
    }
    // Identity and content from the same open file: a rename in between cannot pair
    // the new content with the old identity.
    use std::io::Read;
    let mut f = fs::File::open(path).map_err(CriError::io(format!("read {}", path.display())))?;
    let m = f
        .metadata()
        .map_err(CriError::io(format!("stat {}", path.display())))?;
    let mut data = Vec::with_capacity(m.len() as usize);
    f.read_to_end(&mut data)
        .map_err(CriError::io(format!("read {}", path.display())))?;
    let v: T = parse(path, &data)?;
    cache::put(path, &m, v.clone());
    Ok(v)
}

fn parse<T: DeserializeOwned>(path: &Path, data: &[u8]) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| CriError::Internal(format!("{}: {e}", path.display())))
}

/// Ids of the record dirs under `dir` (ignoring anything that is not one); cached
/// records of ids no longer there are dropped.
pub fn list_ids(dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    // The dirent's type: no stat per entry.
    let ids: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|id| is_id(id))
        .collect();
    cache::retain_under(dir, &ids);
    ids
}

mod cache {
    //! Parsed records by path, each with the identity of the file it came from.

    use std::any::{Any, TypeId};
    use std::collections::{HashMap, HashSet};
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, LazyLock, Mutex};

    use super::{ContainerRecord, ExitRecord, SandboxRecord};

    /// Which version of a file: equal identities, equal contents (renames and
    /// rewrites in place both change it).
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub struct Ident {
        dev: u64,
        ino: u64,
        size: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    }

    impl Ident {
        pub fn of(m: &std::fs::Metadata) -> Ident {
            Ident {
                dev: m.dev(),
                ino: m.ino(),
                size: m.size(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            }
        }
    }

    type Entry = (Ident, Arc<dyn Any + Send + Sync>);

    static CACHE: LazyLock<Mutex<HashMap<PathBuf, Entry>>> = LazyLock::new(Default::default);

    fn map() -> std::sync::MutexGuard<'static, HashMap<PathBuf, Entry>> {
        CACHE.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Only the records: other JSON (OCI bundles' config.json) is read once and
    /// would only cost memory.
    pub fn holds<T: 'static>() -> bool {
        let t = TypeId::of::<T>();
        t == TypeId::of::<SandboxRecord>()
            || t == TypeId::of::<ContainerRecord>()
            || t == TypeId::of::<ExitRecord>()
    }

    pub fn get<T: Clone + 'static>(path: &Path, m: &std::fs::Metadata) -> Option<T> {
        let map = map();
        let (ident, v) = map.get(path)?;
        if *ident != Ident::of(m) {
            return None;
        }
        v.downcast_ref::<T>().cloned()
    }

    pub fn put<T: Send + Sync + 'static>(path: &Path, m: &std::fs::Metadata, v: T) {
        map().insert(path.to_path_buf(), (Ident::of(m), Arc::new(v)));
    }

    pub fn forget(path: &Path) {
        map().remove(path);
    }

    /// Drops entries `dir/<id>/...` whose id is not in `ids`.
    pub fn retain_under(dir: &Path, ids: &[String]) {
        let keep: HashSet<&str> = ids.iter().map(String::as_str).collect();
        map().retain(|p, _| {
            let Ok(rest) = p.strip_prefix(dir) else {
                return true;
            };
            rest.components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .is_some_and(|id| keep.contains(id))
        });
    }

    #[cfg(test)]
    pub fn len_under(dir: &Path) -> usize {
        map().keys().filter(|p| p.starts_with(dir)).count()
    }
}

pub use cache::Ident;

/// The identity of the file at `path` now (None: not there).
pub fn ident(path: &Path) -> Option<Ident> {
    fs::metadata(path).ok().map(|m| Ident::of(&m))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hull-records-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn exit(code: i32) -> ExitRecord {
        ExitRecord {
            exit_code: code,
            finished_at: 7,
            oom_killed: false,
        }
    }

    #[test]
    fn another_writer_is_seen_through_the_cache() {
        let d = scratch("writer");
        let _rm = Rm(d.clone());
        let id = "a".repeat(64);
        fs::create_dir_all(d.join(&id)).unwrap();
        let p = d.join(&id).join("exit.json");
        save_json(&p, &exit(1)).unwrap();
        assert_eq!(load_json::<ExitRecord>(&p).unwrap().exit_code, 1);
        // Another process replacing the file (rename) and rewriting it in place.
        let tmp = d.join("other");
        fs::write(&tmp, serde_json::to_vec(&exit(2)).unwrap()).unwrap();
        fs::rename(&tmp, &p).unwrap();
        assert_eq!(load_json::<ExitRecord>(&p).unwrap().exit_code, 2);
        fs::write(&p, serde_json::to_vec(&exit(-300)).unwrap()).unwrap();
        assert_eq!(load_json::<ExitRecord>(&p).unwrap().exit_code, -300);
        // Gone from disk → gone from the answer.
        fs::remove_file(&p).unwrap();
        assert!(load_json::<ExitRecord>(&p).is_err());
    }

    #[test]
    fn removed_records_leave_the_cache_on_the_next_listing() {
        let d = scratch("listing");
        let _rm = Rm(d.clone());
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        for id in [&a, &b] {
            fs::create_dir_all(d.join(id)).unwrap();
            save_json(&d.join(id).join("exit.json"), &exit(0)).unwrap();
        }
        // Not a record dir: ignored.
        fs::write(d.join("c".repeat(64)), b"").unwrap();
        let mut ids = list_ids(&d);
        ids.sort();
        assert_eq!(ids, vec![a.clone(), b.clone()]);
        assert_eq!(cache::len_under(&d), 2);
        fs::remove_dir_all(d.join(&a)).unwrap();
        assert_eq!(list_ids(&d), vec![b.clone()]);
        assert_eq!(cache::len_under(&d), 1);
        assert!(load_json::<ExitRecord>(&d.join(&a).join("exit.json")).is_err());
    }

    #[test]
    fn other_json_is_not_cached() {
        let d = scratch("other");
        let _rm = Rm(d.clone());
        let p = d.join("config.json");
        save_json(&p, &serde_json::json!({"a": 1})).unwrap();
        assert_eq!(load_json::<serde_json::Value>(&p).unwrap()["a"], 1);
        assert_eq!(cache::len_under(&d), 0);
    }
}
