//! Import of OCI image layouts (a directory or a tar of one) and `docker save`
//! archives. Blobs are copied through the verifying blob writer, so an archive with a
//! wrong digest is refused like a registry would be.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::digest::sha256_of;
use super::manifest::{self, Compression, Descriptor, Document, Manifest, Platform};
use super::pull::{plan_layers, record};
use super::store::ImageStore;
use super::{Error, IoContext, Reference, Result};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// A temp dir removed on drop (an unpacked archive).
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Imports every image in `path`. `name` names images the archive leaves unnamed
/// (default `localhost/<file stem>`).
pub fn import(
    store: &ImageStore,
    path: &Path,
    name: Option<&str>,
) -> Result<Vec<super::ImageRecord>> {
    let meta = fs::metadata(path).at(path)?;
    let _tmp;
    let dir = if meta.is_dir() {
        path.to_path_buf()
    } else {
        let tmp = store
            .root()
            .join(format!("snapshots/.tmp-{}-import", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).at(&tmp)?;
        _tmp = TempDir(tmp.clone());
        let f = File::open(path).at(path)?;
        let mut head = [0u8; 4];
        let n = File::open(path)
            .and_then(|mut f| f.read(&mut head))
            .at(path)?;
        let reader: Box<dyn Read> = match manifest::sniff_compression(&head[..n]) {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(f).at(path)?),
            Compression::None => Box::new(f),
        };
        // tar's unpack refuses entries that would land outside `tmp`.
        tar::Archive::new(reader).unpack(&tmp).map_err(|e| {
            Error::Other(format!(
                "{}: not a readable tar archive: {e}",
                path.display()
            ))
        })?;
        tmp
    };
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_else(|| "image".into());
    let stem: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let default_name = name
        .map(str::to_string)
        .unwrap_or(format!("localhost/{stem}"));
    let _lock = store.pull_lock()?;
    if dir.join("manifest.json").is_file() {
        import_docker(store, &dir, &default_name)
    } else if dir.join("index.json").is_file() {
        import_oci(store, &dir, &default_name)
    } else {
        Err(Error::Other(format!(
            "{}: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
            path.display()
        )))
    }
}

/// Copies a layout blob into the store, verifying its digest.
fn copy_blob(store: &ImageStore, dir: &Path, digest: &str, size: Option<u64>) -> Result<()> {
    let hex = super::digest::validate(digest)?;
    if store.content().has(digest, size) {
        return Ok(());
    }
    let p = dir.join("blobs/sha256").join(hex);
    let mut f = File::open(&p).at(&p)?;
    let mut w = store.content().writer(&p.display().to_string())?;
    io::copy(&mut f, &mut w).at(&p)?;
    w.commit(Some(digest), size)?;
    Ok(())
}

fn read_blob(dir: &Path, digest: &str) -> Result<Vec<u8>> {
    let p = dir
        .join("blobs/sha256")
        .join(super::digest::validate(digest)?);
    let data = fs::read(&p).at(&p)?;
    let actual = sha256_of(&data);
    if actual != digest {
        return Err(Error::DigestMismatch {
            what: p.display().to_string(),
            expected: digest.to_string(),
            actual,
        });
    }
    Ok(data)
}

fn name_for(desc: &Descriptor, default_name: &str) -> Result<Reference> {
    let ann = desc.annotations.clone().unwrap_or_default();
    if let Some(n) = ann.get(CONTAINERD_NAME) {
        return Reference::parse(n);
    }
    match ann.get(REF_NAME) {
        // A full reference (has a '/' or a registry) or just a tag.
        Some(r) if r.contains('/') => Reference::parse(r),
        Some(tag) => Reference::parse(&format!("{default_name}:{tag}")),
        None => Reference::parse(default_name),
    }
}

fn import_oci(
    store: &ImageStore,
    dir: &Path,
    default_name: &str,
) -> Result<Vec<super::ImageRecord>> {
    let idx_path = dir.join("index.json");
    let data = fs::read(&idx_path).at(&idx_path)?;
    let Document::Index(index) = manifest::parse_document(
        &data,
        Some(manifest::OCI_INDEX),
        &idx_path.display().to_string(),
    )?
    else {
        return Err(Error::Other(format!(
            "{}: not an index",
            idx_path.display()
        )));
    };
    let mut out = Vec::new();
    for desc in &index.manifests {
        let reference = name_for(desc, default_name)?;
        let body = read_blob(dir, &desc.digest)?;
        let what = format!("{}: {}", dir.display(), desc.digest);
        let (m, mdigest, idigest) =
            match manifest::parse_document(&body, Some(&desc.media_type), &what)? {
                Document::Manifest(m) => (m, desc.digest.clone(), None),
                Document::Index(inner) => {
                    copy_blob(store, dir, &desc.digest, Some(desc.size))?;
                    let d = manifest::select_platform(
                        &inner,
                        &Platform::host(),
                        &reference.to_string(),
                    )?;
                    let mb = read_blob(dir, &d.digest)?;
                    match manifest::parse_document(&mb, Some(&d.media_type), &what)? {
                        Document::Manifest(m) => (m, d.digest.clone(), Some(desc.digest.clone())),
                        Document::Index(_) => {
                            return Err(Error::Other(format!("{what}: nested index too deep")));
                        }
                    }
                }
            };
        out.push(finish(store, dir, &reference, m, mdigest, idigest)?);
    }
    Ok(out)
}

fn finish(
    store: &ImageStore,
    dir: &Path,
    reference: &Reference,
    m: Manifest,
    mdigest: String,
    idigest: Option<String>,
) -> Result<super::ImageRecord> {
    copy_blob(store, dir, &m.config.digest, Some(m.config.size))?;
    let cfg = manifest::parse_config(
        &store.content().read(&m.config.digest)?,
        &format!("{reference}: config"),
    )?;
    let layers = plan_layers(&m, &cfg, &reference.to_string())?;
    for l in &layers {
        copy_blob(store, dir, &l.digest, Some(l.size))?;
    }
    store.unpack_missing(&layers)?;
    let mbytes = read_blob(dir, &mdigest)?;
    store
        .content()
        .put(&mbytes, Some(&mdigest), &format!("{reference}: manifest"))?;
    store.record(record(reference, mdigest, idigest, &m, &layers))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A file inside the archive dir, refusing names that climb out of it.
fn inside(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = Path::new(name);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::Other(format!(
            "docker archive names {name:?} outside the archive"
        )));
    }
    Ok(dir.join(p))
}

/// Stores a file as a blob and returns its descriptor (digest computed while copying).
fn store_file(store: &ImageStore, p: &Path) -> Result<(String, u64)> {
    let mut f = File::open(p).at(p)?;
    let mut w = store.content().writer(&p.display().to_string())?;
    let n = io::copy(&mut f, &mut w).at(p)?;
    let d = w.commit(None, Some(n))?;
    Ok((d, n))
}

fn import_docker(
    store: &ImageStore,
    dir: &Path,
    default_name: &str,
) -> Result<Vec<super::ImageRecord>> {
    let mp = dir.join("manifest.json");
    let entries: Vec<DockerSaveEntry> =
        serde_json::from_slice(&fs::read(&mp).at(&mp)?).map_err(|source| Error::Json {
            what: mp.display().to_string(),
            source,
        })?;
    let mut out = Vec::new();
    for e in entries {
        let (cdigest, csize) = store_file(store, &inside(dir, &e.config)?)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let p = inside(dir, l)?;
            let mut head = [0u8; 4];
            let n = File::open(&p).and_then(|mut f| f.read(&mut head)).at(&p)?;
            let media = match manifest::sniff_compression(&head[..n]) {
                Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::None => "application/vnd.oci.image.layer.v1.tar",
            };
            let (digest, size) = store_file(store, &p)?;
            layers.push(Descriptor {
                media_type: media.to_string(),
                digest,
                size,
                platform: None,
                annotations: None,
            });
        }
        let m = Manifest {
            schema_version: 2,
            media_type: Some(manifest::OCI_MANIFEST.to_string()),
            config: Descriptor {
                media_type: "application/vnd.oci.image.config.v1+json".into(),
                digest: cdigest,
                size: csize,
                platform: None,
                annotations: None,
            },
            layers,
        };
        let mbytes = serde_json::to_vec(&m).map_err(|source| Error::Json {
            what: "synthesized manifest".into(),
            source,
        })?;
        let mdigest = store.content().put(&mbytes, None, "synthesized manifest")?;
        let cfg = manifest::parse_config(&store.content().read(&m.config.digest)?, &e.config)?;
        let names: Vec<String> = e
            .repo_tags
            .clone()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| vec![default_name.to_string()]);
        for n in names {
            let reference = Reference::parse(&n)?;
            let plans = plan_layers(&m, &cfg, &n)?;
            store.unpack_missing(&plans)?;
            out.push(store.record(record(&reference, mdigest.clone(), None, &m, &plans))?);
        }
    }
    Ok(out)
}
