//! Image records (name → manifest and config digests, layers, chain IDs) in one small
//! JSON file, `images.json`, replaced atomically (write temp, fsync, rename, fsync dir)
//! under an exclusive `flock`, so a crash leaves either the old or the new file.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Error, IoContext, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerRecord {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub diff_id: String,
    pub chain_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// Normalized reference (`docker.io/library/busybox:latest`).
    pub name: String,
    /// Digest of the manifest for this platform (what `@sha256:` pins).
    pub manifest_digest: String,
    /// Digest of the index the manifest was chosen from, if any.
    #[serde(default)]
    pub index_digest: Option<String>,
    pub config_digest: String,
    pub layers: Vec<LayerRecord>,
    /// Sum of the compressed layer sizes.
    pub size: u64,
    /// Seconds since the epoch when pulled or imported.
    pub created: u64,
}

impl ImageRecord {
    /// The short ID people type (first 12 hex digits of the config digest), as Docker shows.
    pub fn id(&self) -> &str {
        self.config_digest
            .strip_prefix("sha256:")
            .map_or(&self.config_digest[..], |h| &h[..12.min(h.len())])
    }

    pub fn top_chain_id(&self) -> Option<&str> {
        self.layers.last().map(|l| l.chain_id.as_str())
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct MetaFile {
    images: BTreeMap<String, ImageRecord>,
}

/// `images.json` plus its lock file.
#[derive(Debug, Clone)]
pub struct MetaStore {
    path: PathBuf,
    lock: PathBuf,
}

/// Holds the store lock (an exclusive `flock`) until dropped.
pub struct MetaLock(#[allow(dead_code)] File);

impl MetaStore {
    pub fn open(root: &Path) -> Result<Self> {
        Ok(MetaStore {
            path: root.join("images.json"),
            lock: root.join("images.lock"),
        })
    }

    pub fn lock(&self) -> Result<MetaLock> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .at(&self.lock)?;
        // SAFETY: valid fd; flock blocks until the other holder lets go.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } < 0 {
            return Err(std::io::Error::last_os_error()).at(&self.lock);
        }
        Ok(MetaLock(f))
    }

    fn load(&self) -> Result<MetaFile> {
        match fs::read(&self.path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|source| Error::Json {
                what: self.path.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MetaFile::default()),
            Err(e) => Err(e).at(&self.path),
        }
    }

    fn save(&self, m: &MetaFile) -> Result<()> {
        let tmp = self
            .path
            .with_extension(format!("json.tmp-{}", std::process::id()));
        let data = serde_json::to_vec_pretty(m).map_err(|source| Error::Json {
            what: self.path.display().to_string(),
            source,
        })?;
        let mut f = File::create(&tmp).at(&tmp)?;
        f.write_all(&data).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        fs::rename(&tmp, &self.path).at(&self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).at(dir)?;
        }
        Ok(())
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.load()?.images.into_values().collect())
    }

    pub fn get(&self, name: &str) -> Result<Option<ImageRecord>> {
        Ok(self.load()?.images.remove(name))
    }

    /// Inserts or replaces; the caller holds the lock.
    pub fn put(&self, _lock: &MetaLock, rec: ImageRecord) -> Result<()> {
        let mut m = self.load()?;
        m.images.insert(rec.name.clone(), rec);
        self.save(&m)
    }

    pub fn remove(&self, _lock: &MetaLock, name: &str) -> Result<Option<ImageRecord>> {
        let mut m = self.load()?;
        let r = m.images.remove(name);
        if r.is_some() {
            self.save(&m)?;
        }
        Ok(r)
    }
}
