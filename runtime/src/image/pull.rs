//! Registry → store. Manifests and the config are fetched and verified first; then the
//! layers are fetched concurrently. A layer whose parent snapshot is already there is
//! streamed in one pass — network → (sha256 + blob file) → decompress → (sha256 of
//! the tar for the diff ID) → unpack — so pull+unpack costs about one `curl | tar`.
//! Layers above a missing parent are only downloaded, then unpacked in order.

use std::io::{self, BufReader, Read};
use std::path::PathBuf;
use std::sync::Mutex;

use super::content::{ContentStore, TeeReader};
use super::digest::{HashingReader, chain_ids, sha256_of};
use super::manifest::{self, Compression, Document, ImageConfig, Manifest, Platform};
use super::meta::{ImageRecord, LayerRecord};
use super::registry::{RegistryClient, RegistryOptions};
use super::snapshot::SnapshotStore;
use super::unpack::{self, Bounded, UnpackOptions};
use super::{Error, Reference, Result};

/// Reports pull progress (a bar per layer on a terminal, lines otherwise).
pub trait Progress: Sync {
    fn layer_start(&self, _digest: &str, _size: u64) {}
    fn layer_bytes(&self, _digest: &str, _done: u64) {}
    fn layer_done(&self, _digest: &str, _status: &str) {}
}

/// No progress output.
pub struct Quiet;
impl Progress for Quiet {}

const MAX_PARALLEL: usize = 4;

/// Counts bytes for the progress reporter.
struct Counting<'a, R> {
    inner: R,
    done: u64,
    digest: &'a str,
    progress: &'a dyn Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if n > 0 {
            self.progress.layer_bytes(self.digest, self.done);
        }
        Ok(n)
    }
}

/// What one layer is, as the pipeline needs it.
#[derive(Debug, Clone)]
pub(crate) struct LayerPlan {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub compression: Compression,
    pub diff_id: String,
    pub chain_id: String,
}

pub(crate) fn plan_layers(m: &Manifest, cfg: &ImageConfig, what: &str) -> Result<Vec<LayerPlan>> {
    if m.layers.len() != cfg.rootfs.diff_ids.len() {
        return Err(Error::Other(format!(
            "{what}: manifest has {} layers but config has {} diff_ids",
            m.layers.len(),
            cfg.rootfs.diff_ids.len()
        )));
    }
    let chains = chain_ids(&cfg.rootfs.diff_ids);
    m.layers
        .iter()
        .zip(cfg.rootfs.diff_ids.iter().zip(chains))
        .map(|(l, (diff, chain))| {
            super::digest::validate(&l.digest)?;
            Ok(LayerPlan {
                compression: manifest::layer_compression(
                    &l.media_type,
                    &format!("{what} layer {}", l.digest),
                )?,
                digest: l.digest.clone(),
                size: l.size,
                media_type: l.media_type.clone(),
                diff_id: diff.clone(),
                chain_id: chain,
            })
        })
        .collect()
}

/// Decompresses, unpacks into a temp snapshot over `lowers`, checks the diff ID and
/// commits the snapshot. `compressed` must be read to its end by the caller afterwards.
pub(crate) fn unpack_layer(
    compressed: &mut dyn Read,
    layer: &LayerPlan,
    lowers: &[PathBuf],
    snapshots: &SnapshotStore,
    opts: &UnpackOptions,
) -> Result<()> {
    let tmp = snapshots.prepare()?;
    let buffered = BufReader::with_capacity(256 << 10, compressed);
    let decoder: Box<dyn Read + '_> = match layer.compression {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered)
                .map_err(|e| Error::Other(format!("layer {}: zstd: {e}", layer.digest)))?,
        ),
    };
    let mut tar = HashingReader::new(Bounded {
        inner: decoder,
        left: opts.max_bytes,
    });
    unpack::apply_layer(&mut tar, tmp.fs(), lowers, &layer.digest, opts)?;
    let (diff_id, _, _) = tar.finish().map_err(|e| Error::Layer {
        layer: layer.digest.clone(),
        entry: String::new(),
        reason: format!("reading the rest of the layer: {e}"),
    })?;
    if diff_id != layer.diff_id {
        return Err(Error::DigestMismatch {
            what: format!(
                "layer {} (uncompressed, the config's diff_id)",
                layer.digest
            ),
            expected: layer.diff_id.clone(),
            actual: diff_id,
        });
    }
    snapshots.commit(tmp, &layer.chain_id)
}

pub(crate) fn lowers_for(
    snapshots: &SnapshotStore,
    layers: &[LayerPlan],
    i: usize,
) -> Result<Vec<PathBuf>> {
    layers[..i]
        .iter()
        .rev()
        .map(|l| snapshots.fs_path(&l.chain_id))
        .collect()
}

/// Unpacks every layer whose snapshot is missing, in order, from stored blobs.
pub(crate) fn unpack_from_blobs(
    layers: &[LayerPlan],
    content: &ContentStore,
    snapshots: &SnapshotStore,
    opts: &UnpackOptions,
) -> Result<()> {
    for (i, l) in layers.iter().enumerate() {
        if snapshots.exists(&l.chain_id) {
            continue;
        }
        let lowers = lowers_for(snapshots, layers, i)?;
        let mut f = content.open_blob(&l.digest)?;
        unpack_layer(&mut f, l, &lowers, snapshots, opts)?;
    }
    Ok(())
}

pub struct Puller<'a> {
    pub content: &'a ContentStore,
    pub snapshots: &'a SnapshotStore,
    pub registry: &'a RegistryOptions,
    pub unpack: &'a UnpackOptions,
    pub progress: &'a dyn Progress,
}

impl Puller<'_> {
    pub fn pull(&self, reference: &Reference) -> Result<ImageRecord> {
        let mut client = RegistryClient::new(self.registry, reference)?;
        let rs = reference.to_string();
        let (body, ct) = client.manifest(reference.object())?;
        let top_digest = sha256_of(&body);
        if let Some(want) = &reference.digest
            && *want != top_digest
        {
            return Err(Error::DigestMismatch {
                what: format!("{rs}: manifest"),
                expected: want.clone(),
                actual: top_digest,
            });
        }
        let platform = self
            .registry
            .platform
            .clone()
            .unwrap_or_else(Platform::host);
        let (manifest, manifest_bytes, manifest_digest, index_digest) =
            match manifest::parse_document(&body, ct.as_deref(), &format!("{rs}: manifest"))? {
                Document::Manifest(m) => (m, body, top_digest, None),
                Document::Index(idx) => {
                    self.content
                        .put(&body, Some(&top_digest), &format!("{rs}: index"))?;
                    let d = manifest::select_platform(&idx, &platform, &rs)?.clone();
                    let (mb, mct) = client.manifest(&d.digest)?;
                    let md = sha256_of(&mb);
                    if md != d.digest {
                        return Err(Error::DigestMismatch {
                            what: format!("{rs}: manifest for {platform}"),
                            expected: d.digest,
                            actual: md,
                        });
                    }
                    match manifest::parse_document(
                        &mb,
                        mct.as_deref(),
                        &format!("{rs}: manifest {md}"),
                    )? {
                        Document::Manifest(m) => (m, mb, md, Some(top_digest)),
                        Document::Index(_) => {
                            return Err(Error::Other(format!(
                                "{rs}: index points to another index"
                            )));
                        }
                    }
                }
            };
        // Config.
        let cd = &manifest.config;
        super::digest::validate(&cd.digest)?;
        if !self.content.has(&cd.digest, Some(cd.size)) {
            if cd.size > manifest::MAX_DOCUMENT {
                return Err(Error::Other(format!(
                    "{rs}: config is {} bytes, too large",
                    cd.size
                )));
            }
            let mut r = client.blob(&cd.digest)?.take(cd.size + 1);
            let mut data = Vec::new();
            r.read_to_end(&mut data).map_err(|e| Error::Unreachable {
                reference: rs.clone(),
                registry: reference.registry.clone(),
                message: format!("reading config: {e}"),
            })?;
            self.content
                .put(&data, Some(&cd.digest), &format!("{rs}: config"))?;
        }
        let config =
            manifest::parse_config(&self.content.read(&cd.digest)?, &format!("{rs}: config"))?;
        let layers = plan_layers(&manifest, &config, &rs)?;

        // Layers: concurrent download; streamed unpack where the parent exists.
        let first_missing = layers
            .iter()
            .position(|l| !self.snapshots.exists(&l.chain_id));
        if let Some(k) = first_missing {
            let errors: Mutex<Vec<Error>> = Mutex::new(Vec::new());
            let next = Mutex::new(k);
            std::thread::scope(|s| {
                for _ in 0..MAX_PARALLEL.min(layers.len() - k) {
                    s.spawn(|| {
                        loop {
                            let i = {
                                let Ok(mut n) = next.lock() else { return };
                                let i = *n;
                                *n += 1;
                                i
                            };
                            if i >= layers.len() {
                                return;
                            }
                            if let Err(e) = self.fetch_layer(&client, &layers, i, i == k) {
                                if let Ok(mut v) = errors.lock() {
                                    v.push(e);
                                }
                                return;
                            }
                        }
                    });
                }
            });
            if let Some(e) = errors
                .into_inner()
                .ok()
                .and_then(|mut v| (!v.is_empty()).then(|| v.remove(0)))
            {
                return Err(e);
            }
            unpack_from_blobs(&layers, self.content, self.snapshots, self.unpack)?;
        }
        self.content.put(
            &manifest_bytes,
            Some(&manifest_digest),
            &format!("{rs}: manifest"),
        )?;
        Ok(record(
            reference,
            manifest_digest,
            index_digest,
            &manifest,
            &layers,
        ))
    }

    /// Layer `i`: streamed into its snapshot when `stream` (its parent exists), else
    /// downloaded into the content store (skipped when already there).
    fn fetch_layer(
        &self,
        client: &RegistryClient,
        layers: &[LayerPlan],
        i: usize,
        stream: bool,
    ) -> Result<()> {
        let l = &layers[i];
        self.progress.layer_start(&l.digest, l.size);
        if self.snapshots.exists(&l.chain_id) {
            self.progress.layer_done(&l.digest, "already unpacked");
            return Ok(());
        }
        let have_blob = self.content.has(&l.digest, Some(l.size));
        if have_blob && !stream {
            self.progress.layer_done(&l.digest, "already present");
            return Ok(());
        }
        if have_blob {
            let lowers = lowers_for(self.snapshots, layers, i)?;
            let mut f = self.content.open_blob(&l.digest)?;
            return unpack_layer(&mut f, l, &lowers, self.snapshots, self.unpack);
        }
        let body = client.blob(&l.digest)?;
        let what = format!("layer {}", l.digest);
        let mut tee = TeeReader {
            inner: Counting {
                inner: body,
                done: 0,
                digest: &l.digest,
                progress: self.progress,
            },
            writer: self.content.writer(&what)?,
            limit: l.size,
        };
        let net_err = |e: io::Error| Error::Other(format!("{what}: download: {e}"));
        if stream {
            let lowers = lowers_for(self.snapshots, layers, i)?;
            // The snapshot is already verified by its diff ID; the blob is checked too,
            // and a mismatch throws both away rather than keep bytes nobody vouched for.
            unpack_layer(&mut tee, l, &lowers, self.snapshots, self.unpack)?;
            io::copy(&mut tee, &mut io::sink()).map_err(net_err)?;
            if let Err(e) = tee.writer.commit(Some(&l.digest), Some(l.size)) {
                // The snapshot came from bytes that are not the layer: drop it.
                let _ = self.snapshots.remove(&l.chain_id);
                return Err(e);
            }
        } else {
            io::copy(&mut tee, &mut io::sink()).map_err(net_err)?;
            tee.writer.commit(Some(&l.digest), Some(l.size))?;
        }
        self.progress
            .layer_done(&l.digest, if stream { "pulled" } else { "downloaded" });
        Ok(())
    }
}

pub(crate) fn record(
    reference: &Reference,
    manifest_digest: String,
    index_digest: Option<String>,
    manifest: &Manifest,
    layers: &[LayerPlan],
) -> ImageRecord {
    ImageRecord {
        name: reference.to_string(),
        manifest_digest,
        index_digest,
        config_digest: manifest.config.digest.clone(),
        size: layers.iter().map(|l| l.size).sum(),
        layers: layers
            .iter()
            .map(|l| LayerRecord {
                digest: l.digest.clone(),
                size: l.size,
                media_type: l.media_type.clone(),
                diff_id: l.diff_id.clone(),
                chain_id: l.chain_id.clone(),
            })
            .collect(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}
