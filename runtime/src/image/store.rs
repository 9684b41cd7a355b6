//! `ImageStore`: the image store's public face, laid out under the data dir as
//!
//! ```text
//! DATA/content/blobs/sha256/<hex>   blobs (manifests, configs, layers)
//! DATA/snapshots/<chain hex>/fs     unpacked layers (overlay lower dirs)
//! DATA/images.json                  image records (name → digests, layers)
//! DATA/leases/<container>.json      snapshots a container uses (GC keeps them)
//! DATA/registries.toml              mirrors and per-host TLS (optional)
//! ```
//!
//! Pulls hold a shared `flock` on `DATA/gc.lock` and garbage collection an exclusive
//! one, so GC never removes what a running pull has written but not yet recorded.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::content::ContentStore;
use super::manifest::{self, ImageConfig};
use super::meta::MetaStore;
pub use super::meta::{ImageRecord, LayerRecord};
use super::pull::{self, Progress, Puller};
use super::registry::RegistryOptions;
use super::snapshot::SnapshotStore;
use super::unpack::UnpackOptions;
use super::{Error, IoContext, Reference, Result};

/// A container's hold on an image's snapshots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    pub container: String,
    pub image: String,
    pub manifest_digest: String,
    pub chain_ids: Vec<String>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct GcStats {
    pub blobs_removed: usize,
    pub snapshots_removed: usize,
    pub bytes_freed: u64,
}

pub struct ImageStore {
    root: PathBuf,
    content: ContentStore,
    snapshots: SnapshotStore,
    meta: MetaStore,
    pub registry: RegistryOptions,
    pub unpack: UnpackOptions,
}

pub(crate) struct GcLock(#[allow(dead_code)] File);

impl ImageStore {
    /// Opens (creating) the store under `data_dir`, reading `registries.toml`, and
    /// removes temp files left by killed pulls.
    pub fn open(data_dir: &Path) -> Result<Self> {
        fs::create_dir_all(data_dir).at(data_dir)?;
        let root = data_dir.to_path_buf();
        let store = ImageStore {
            content: ContentStore::open(&root.join("content"))?,
            snapshots: SnapshotStore::open(&root.join("snapshots"))?,
            meta: MetaStore::open(&root)?,
            registry: RegistryOptions::load(&root.join("registries.toml"))?,
            unpack: UnpackOptions::default(),
            root,
        };
        fs::create_dir_all(store.leases_dir()).at(store.leases_dir())?;
        store.content.clean_temp()?;
        store.snapshots.clean_temp()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    pub fn snapshots(&self) -> &SnapshotStore {
        &self.snapshots
    }

    fn leases_dir(&self) -> PathBuf {
        self.root.join("leases")
    }

    fn gc_lock(&self, exclusive: bool) -> Result<GcLock> {
        let p = self.root.join("gc.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .at(&p)?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        // SAFETY: valid fd.
        if unsafe { libc::flock(f.as_raw_fd(), op) } < 0 {
            return Err(std::io::Error::last_os_error()).at(p);
        }
        Ok(GcLock(f))
    }

    /// Pulls `reference` from its registry (or mirrors) and records it.
    pub fn pull(&self, reference: &str, progress: &dyn Progress) -> Result<ImageRecord> {
        let r = Reference::parse(reference)?;
        let _gc = self.gc_lock(false)?;
        let rec = Puller {
            content: &self.content,
            snapshots: &self.snapshots,
            registry: &self.registry,
            unpack: &self.unpack,
            progress,
        }
        .pull(&r)?;
        self.record(rec)
    }

    pub(crate) fn record(&self, rec: ImageRecord) -> Result<ImageRecord> {
        let lock = self.meta.lock()?;
        self.meta.put(&lock, rec.clone())?;
        Ok(rec)
    }

    /// Held by anything that writes blobs/snapshots before recording them (pull, import).
    pub(crate) fn pull_lock(&self) -> Result<GcLock> {
        self.gc_lock(false)
    }

    /// The stored image, else a pull (what `hull run` and the CRI do).
    pub fn ensure(&self, reference: &str, progress: &dyn Progress) -> Result<ImageRecord> {
        match self.get(reference) {
            Ok(r) if self.snapshots_complete(&r) => Ok(r),
            _ => self.pull(reference, progress),
        }
    }

    fn snapshots_complete(&self, r: &ImageRecord) -> bool {
        r.layers.iter().all(|l| self.snapshots.exists(&l.chain_id))
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        self.meta.list()
    }

    /// Finds an image by name (normalized), `name@digest`, manifest or config digest,
    /// or an ID prefix of at least 4 hex digits.
    pub fn get(&self, reference: &str) -> Result<ImageRecord> {
        let all = self.meta.list()?;
        if let Ok(r) = Reference::parse(reference) {
            let name = r.to_string();
            if let Some(rec) = all.iter().find(|i| i.name == name) {
                return Ok(rec.clone());
            }
            if let Some(d) = &r.digest
                && let Some(rec) = all
                    .iter()
                    .find(|i| {
                        i.name.starts_with(&format!("{}:", r.name()))
                            || i.name.starts_with(&format!("{}@", r.name()))
                    })
                    .filter(|i| i.manifest_digest == *d || i.index_digest.as_deref() == Some(d))
            {
                return Ok(rec.clone());
            }
        }
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<&ImageRecord> = all
                .iter()
                .filter(|i| {
                    i.config_digest[7..].starts_with(hex) || i.manifest_digest[7..].starts_with(hex)
                })
                .collect();
            if let [one] = hits[..] {
                return Ok(one.clone());
            }
        }
        Err(Error::NotFound(reference.to_string()))
    }

    pub fn config(&self, rec: &ImageRecord) -> Result<ImageConfig> {
        manifest::parse_config(
            &self.content.read(&rec.config_digest)?,
            &format!("{}: config", rec.name),
        )
    }

    /// The image's snapshot dirs, top-most first (overlay `lowerdir` order).
    pub fn lowers(&self, rec: &ImageRecord) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for l in rec.layers.iter().rev() {
            let p = self.snapshots.fs_path(&l.chain_id)?;
            if !p.is_dir() {
                return Err(Error::Other(format!(
                    "{}: snapshot {} is missing; pull the image again",
                    rec.name, l.chain_id
                )));
            }
            out.push(p);
        }
        if out.is_empty() {
            // An image with no layers still needs one (empty) lower dir.
            let empty = self.root.join("snapshots").join("empty");
            fs::create_dir_all(&empty).at(&empty)?;
            out.push(empty);
        }
        Ok(out)
    }

    /// Records that `container` uses `rec`'s snapshots, so neither rm nor GC takes them.
    pub fn lease(&self, container: &str, rec: &ImageRecord) -> Result<()> {
        valid_container_id(container)?;
        let l = Lease {
            container: container.to_string(),
            image: rec.name.clone(),
            manifest_digest: rec.manifest_digest.clone(),
            chain_ids: rec.layers.iter().map(|l| l.chain_id.clone()).collect(),
        };
        let p = self.leases_dir().join(format!("{container}.json"));
        let tmp = p.with_extension("json.tmp");
        let data = serde_json::to_vec(&l).map_err(|source| Error::Json {
            what: p.display().to_string(),
            source,
        })?;
        fs::write(&tmp, data).at(&tmp)?;
        fs::rename(&tmp, &p).at(&p)
    }

    pub fn release(&self, container: &str) -> Result<()> {
        valid_container_id(container)?;
        let p = self.leases_dir().join(format!("{container}.json"));
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at(p),
            _ => Ok(()),
        }
    }

    pub fn leases(&self) -> Result<Vec<Lease>> {
        let dir = self.leases_dir();
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)? {
            let p = e.at(&dir)?.path();
            if p.extension().is_some_and(|x| x == "json") {
                let data = fs::read(&p).at(&p)?;
                // A torn lease (crash while writing) is ignored rather than fatal.
                if let Ok(l) = serde_json::from_slice::<Lease>(&data) {
                    out.push(l);
                }
            }
        }
        Ok(out)
    }

    /// Removes an image record (refused while a container uses it, unless `force`,
    /// which keeps the snapshots the container needs) and collects garbage.
    pub fn remove(&self, reference: &str, force: bool) -> Result<(ImageRecord, GcStats)> {
        let rec = self.get(reference)?;
        let users: Vec<String> = self
            .leases()?
            .into_iter()
            .filter(|l| l.image == rec.name || l.manifest_digest == rec.manifest_digest)
            .map(|l| l.container)
            .collect();
        if !users.is_empty() && !force {
            return Err(Error::InUse {
                image: rec.name.clone(),
                users: users.join(", "),
            });
        }
        {
            let lock = self.meta.lock()?;
            self.meta.remove(&lock, &rec.name)?;
        }
        let stats = self.gc()?;
        Ok((rec, stats))
    }

    /// Removes every blob and snapshot no image record or lease refers to.
    pub fn gc(&self) -> Result<GcStats> {
        let _gc = self.gc_lock(true)?;
        let _meta = self.meta.lock()?;
        let mut blobs = BTreeSet::new();
        let mut snaps = BTreeSet::new();
        for r in self.meta.list()? {
            blobs.insert(r.manifest_digest.clone());
            blobs.insert(r.config_digest.clone());
            if let Some(i) = &r.index_digest {
                blobs.insert(i.clone());
            }
            for l in &r.layers {
                blobs.insert(l.digest.clone());
                snaps.insert(l.chain_id.clone());
            }
        }
        for l in self.leases()? {
            // A lease outlives its container only if someone removed the container's
            // dir by hand (as `hull run` without --rm tells them to): drop it.
            if !self.root.join("containers").join(&l.container).exists() {
                self.release(&l.container)?;
                continue;
            }
            snaps.extend(l.chain_ids);
        }
        let mut stats = GcStats::default();
        for b in self.content.list()? {
            if !blobs.contains(&b) {
                stats.bytes_freed += self.content.size(&b).unwrap_or(0);
                self.content.delete(&b)?;
                stats.blobs_removed += 1;
            }
        }
        for s in self.snapshots.list()? {
            if !snaps.contains(&s) {
                self.snapshots.remove(&s)?;
                stats.snapshots_removed += 1;
            }
        }
        self.content.clean_temp()?;
        self.snapshots.clean_temp()?;
        Ok(stats)
    }

    /// Unpacks layers from stored blobs where snapshots are missing (import uses it).
    pub(crate) fn unpack_missing(&self, layers: &[pull::LayerPlan]) -> Result<()> {
        pull::unpack_from_blobs(layers, &self.content, &self.snapshots, &self.unpack)
    }
}

/// Container IDs become file names: keep them to a safe alphabet.
pub fn valid_container_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 128
        || id.starts_with('.')
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(Error::Other(format!(
            "invalid container id {id:?}: use 1-128 of [A-Za-z0-9_.-], not starting with '.'"
        )));
    }
    Ok(())
}
