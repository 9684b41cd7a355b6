//! The image store: what `hull image` and `hull run` (and later the CRI server) build
//! container root filesystems from.
//!
//! Module map:
//! - `reference`: Docker-style image references and their normalization.
//! - `digest`: sha256 digests and the hashing reader that verifies them while streaming.
//! - `content`: the content-addressed blob store (`content/blobs/sha256/<hex>`).
//! - `meta`: image records (name → manifest/config digests), crash-safe.
//! - `manifest`: OCI / Docker manifest, index and config types; platform choice.
//! - `auth`: registry credentials (docker config.json) and the bearer token flow.
//! - `registry`: the OCI distribution API client, with mirrors.
//! - `resolve`: path resolution inside a stack of layer dirs that never leaves the root.
//! - `unpack`: applies a layer tar to a snapshot dir (whiteouts → overlay whiteouts).
//! - `snapshot`: snapshots keyed by chain ID, committed by rename.
//! - `overlay`: overlay mounts of snapshots (new mount API, so many layers fit).
//! - `pull`: registry → store, streaming download, verify and unpack together.
//! - `import`: OCI layouts (dir or tar) and `docker save` archives.
//! - `store`: the `ImageStore` facade: layout under the data dir, list, rm, GC, leases.
//! - `runconfig`: image config → process defaults (args, env, cwd, user → uid).
//! - `bundle`: a container's OCI bundle: overlay rootfs + config.json from the image.

pub mod auth;
pub mod bundle;
pub mod content;
pub mod digest;
pub mod import;
pub mod manifest;
pub mod meta;
pub mod overlay;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod resolve;
pub mod runconfig;
pub mod snapshot;
pub mod store;
pub mod unpack;

pub use reference::Reference;
pub use store::{ImageRecord, ImageStore};

use std::path::PathBuf;

/// Everything the image store can fail with; messages name the reference, file or digest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("{reference}: registry {registry} answered {status}: {message}")]
    Registry {
        reference: String,
        registry: String,
        status: u16,
        message: String,
    },
    #[error("{reference}: registry {registry} unreachable: {message}")]
    Unreachable {
        reference: String,
        registry: String,
        message: String,
    },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("invalid digest {0:?} (want sha256:<64 hex>)")]
    InvalidDigest(String),
    #[error("{what}: unsupported media type {media_type:?}")]
    UnsupportedMediaType { what: String, media_type: String },
    #[error("{reference}: no manifest for platform {platform} (available: {available})")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("{what}: invalid JSON: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    Layer {
        layer: String,
        entry: String,
        reason: String,
    },
    #[error("image {0:?} not found in the store")]
    NotFound(String),
    #[error("image {image} is in use by container(s) {users}")]
    InUse { image: String, users: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches the path an I/O error happened on, so messages say which file.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}
