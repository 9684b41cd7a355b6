//! Snapshots: `snapshots/<chain-id hex>/fs`, one unpacked layer on top of its parents,
//! shared by every image and container that has that layer stack.
//!
//! A snapshot is unpacked into `snapshots/.tmp-<pid>-<n>/fs` and committed by renaming
//! the temp dir to its chain ID, so a committed snapshot is always complete; temp dirs
//! of dead processes are removed by `clean_temp`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::digest::validate;
use super::{IoContext, Result};

static SEQ: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
}

/// A snapshot being unpacked; removed on drop unless committed.
pub struct TempSnapshot {
    dir: Option<PathBuf>,
    fs: PathBuf,
}

impl TempSnapshot {
    pub fn fs(&self) -> &Path {
        &self.fs
    }
}

impl Drop for TempSnapshot {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// Whether a `.tmp-<pid>-...` name belongs to a process that is gone.
pub(crate) fn temp_owner_dead(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(".tmp-") else {
        return false;
    };
    match rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) {
        Some(pid) => pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists(),
        None => true,
    }
}

impl SnapshotStore {
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).at(dir)?;
        Ok(SnapshotStore {
            dir: dir.to_path_buf(),
        })
    }

    /// The unpacked tree of a committed snapshot.
    pub fn fs_path(&self, chain_id: &str) -> Result<PathBuf> {
        Ok(self.dir.join(validate(chain_id)?).join("fs"))
    }

    pub fn exists(&self, chain_id: &str) -> bool {
        self.fs_path(chain_id).is_ok_and(|p| p.is_dir())
    }

    pub fn prepare(&self) -> Result<TempSnapshot> {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.join(format!(".tmp-{}-{seq}", std::process::id()));
        let fs_dir = dir.join("fs");
        fs::create_dir_all(&fs_dir).at(&fs_dir)?;
        // The snapshot root is the container's `/`: world-readable like any root.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&fs_dir, fs::Permissions::from_mode(0o755)).at(&fs_dir)?;
        Ok(TempSnapshot {
            dir: Some(dir),
            fs: fs_dir,
        })
    }

    /// Renames a finished temp snapshot to its chain ID. Losing a race to another
    /// process unpacking the same layer is fine: theirs is identical.
    pub fn commit(&self, mut tmp: TempSnapshot, chain_id: &str) -> Result<()> {
        let dest = self.dir.join(validate(chain_id)?);
        let Some(src) = tmp.dir.clone() else {
            return Ok(());
        };
        match fs::rename(&src, &dest) {
            Ok(()) => {
                tmp.dir = None;
                Ok(())
            }
            Err(_) if dest.join("fs").is_dir() => Ok(()),
            Err(e) => Err(e).at(dest),
        }
    }

    pub fn list(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).at(&self.dir)? {
            let e = e.at(&self.dir)?;
            let id = format!("sha256:{}", e.file_name().to_string_lossy());
            if validate(&id).is_ok() {
                out.push(id);
            }
        }
        Ok(out)
    }

    pub fn remove(&self, chain_id: &str) -> Result<()> {
        let d = self.dir.join(validate(chain_id)?);
        // Rename first so a crash mid-removal never leaves a half-deleted committed snapshot.
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let doomed = self
            .dir
            .join(format!(".tmp-{}-rm{seq}", std::process::id()));
        match fs::rename(&d, &doomed) {
            Ok(()) => fs::remove_dir_all(&doomed).at(doomed),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).at(d),
        }
    }

    /// Removes temp dirs whose process is gone (a killed pull). Returns how many.
    pub fn clean_temp(&self) -> Result<usize> {
        let mut n = 0;
        for e in fs::read_dir(&self.dir).at(&self.dir)? {
            let e = e.at(&self.dir)?;
            if temp_owner_dead(&e.file_name().to_string_lossy()) {
                fs::remove_dir_all(e.path()).at(e.path())?;
                n += 1;
            }
        }
        Ok(n)
    }
}
