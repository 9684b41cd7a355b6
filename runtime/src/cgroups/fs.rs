//! Narrated reads and writes of cgroup files.
//!
//! Every write goes through [`write`] so `--explain` shows each file the runtime touches,
//! and every error names the file and the value, which is what a user needs to see when
//! the kernel rejects a limit (`EINVAL` from `memory.max` says nothing by itself).

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::CgroupError;

/// Writes `value` to `dir/file` (no create, no truncate: cgroup files are kernel
/// attributes and a single `write(2)` is the unit the kernel parses).
pub(crate) fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    crate::explain!("cgroup write {} = {:?}", path.display(), value);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|source| CgroupError::Write {
            path: path.clone(),
            value: value.to_string(),
            source,
        })?;
    f.write_all(value.as_bytes())
        .map_err(|source| CgroupError::Write {
            path,
            value: value.to_string(),
            source,
        })
}

/// Reads `dir/file` as a trimmed string.
pub(crate) fn read(dir: &Path, file: &str) -> Result<String, CgroupError> {
    let path = dir.join(file);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| CgroupError::Io { path, source })
}

/// Reads `dir/file` if it exists (controllers and kernels differ in which files exist).
pub(crate) fn read_opt(dir: &Path, file: &str) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(dir.join(file)) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Io {
            path: dir.join(file),
            source,
        }),
    }
}

/// Reads a single integer file; "max" (v2's unlimited) reads as `u64::MAX`.
pub(crate) fn read_u64_opt(dir: &Path, file: &str) -> Result<Option<u64>, CgroupError> {
    let Some(s) = read_opt(dir, file)? else {
        return Ok(None);
    };
    if s == "max" {
        return Ok(Some(u64::MAX));
    }
    s.parse::<u64>().map(Some).map_err(|_| CgroupError::Parse {
        path: dir.join(file),
        reason: format!("expected an integer, found {s:?}"),
    })
}

/// Parses "key value" lines (memory.stat, cpu.stat, memory.events, oom_control).
pub(crate) fn read_flat_keyed(
    dir: &Path,
    file: &str,
) -> Result<std::collections::BTreeMap<String, u64>, CgroupError> {
    let mut map = std::collections::BTreeMap::new();
    if let Some(text) = read_opt(dir, file)? {
        for line in text.lines() {
            let mut it = line.split_whitespace();
            if let (Some(k), Some(v)) = (it.next(), it.next())
                && let Ok(v) = v.parse::<u64>()
            {
                map.insert(k.to_string(), v);
            }
        }
    }
    Ok(map)
}

/// Creates `dir` and any missing parents, returning the directories it created,
/// top-down, so callers can initialise each new level (v1 cpuset) in order.
pub(crate) fn create_dirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    missing.reverse();
    let mut made = Vec::new();
    for d in missing {
        match std::fs::create_dir(&d) {
            Ok(()) => {
                crate::explain!("cgroup mkdir {}", d.display());
                made.push(d);
            }
            // Another container created the shared parent (e.g. /hull) at the same time.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(source) => return Err(CgroupError::Io { path: d, source }),
        }
    }
    Ok(made)
}

/// Removes a cgroup directory and any sub-cgroups the container made inside it
/// (bottom-up: the kernel only removes empty cgroups). `EBUSY` right after the last
/// process exits is retried briefly: the kernel unlinks an exiting task from its cgroup
/// asynchronously, a few scheduler ticks after the parent was told of the exit.
pub(crate) fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => {
                crate::explain!("cgroup rmdir {}", dir.display());
                return Ok(());
            }
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(source) => {
                return Err(CgroupError::Io {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// Every pid in `dir/cgroup.procs` and in its sub-cgroups (a container with its own
/// cgroup namespace may nest cgroups; `kill --all` and `ps` must see those too).
pub(crate) fn procs_recursive(dir: &Path, out: &mut Vec<i32>) -> Result<(), CgroupError> {
    let Some(text) = read_opt(dir, "cgroup.procs")? else {
        return Ok(());
    };
    out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            procs_recursive(&entry.path(), out)?;
        }
    }
    Ok(())
}
