//! Storage: the [`Store`] trait every backend implements, and [`open`] to pick one by URL.
//!
//! Kubernetes semantics live here, as in etcd: one global, monotonic revision (the
//! `resourceVersion` clients see), compare-and-swap on a key's `mod_revision`, watch from a
//! revision, and compaction that makes old revisions answer [`StoreError::Compacted`]
//! (HTTP 410 Gone).
//!
//! Keys are `/registry/<resource>/<namespace>/<name>` (cluster-scoped:
//! `/registry/<resource>/<name>`); values are the object's JSON with `resourceVersion`
//! stripped (the server sets it from `mod_revision` on read), as kube-apiserver does.
//!
//! - [`sqlite`]: the embedded default, a revision log in one file (as kine keeps it).
//! - [`etcd`]: etcd v3, for several servers sharing one store.
//! - [`cache`]: the watch cache, one store watch fanned out to many watchers.
//! - [`compactor`]: the periodic compaction that keeps history bounded.

use std::path::Path;
use std::sync::Arc;

use futures::stream::BoxStream;

pub mod cache;
pub mod compactor;
pub mod etcd;
pub mod sqlite;

pub use cache::{CacheConfig, CachedStore};
pub use compactor::{CompactorConfig, spawn_compactor};
pub use etcd::EtcdStore;
pub use sqlite::{SqliteOptions, SqliteStore};

/// A store-wide revision; every write gets the next one. `0` means "latest" or "now".
pub type Revision = i64;

/// One key at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created this incarnation of the key.
    pub create_revision: Revision,
    /// Revision of the last write to the key (for a delete event: the delete's revision).
    pub mod_revision: Revision,
}

/// A change to a key, delivered by [`Store::watch`] in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Created (`prev` is `None`) or updated (`prev` is the value before).
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// Deleted: `kv` holds the last value; its `mod_revision` is the delete's revision.
    Delete { kv: KeyValue },
}

impl WatchEvent {
    /// The key-value the event carries (new value for a put, last value for a delete).
    pub fn kv(&self) -> &KeyValue {
        match self {
            WatchEvent::Put { kv, .. } | WatchEvent::Delete { kv } => kv,
        }
    }

    /// The revision at which this event happened.
    pub fn revision(&self) -> Revision {
        self.kv().mod_revision
    }
}

/// A page of keys from [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    pub items: Vec<KeyValue>,
    /// The revision the list was read at (the store's current revision when `0` was asked).
    pub revision: Revision,
    /// How many more keys match after this page (0 when this page is the last).
    pub remaining: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("key {key} not found")]
    NotFound { key: String },
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    /// `actual` is the key's current mod_revision, or 0 if the key no longer exists.
    #[error("conflict on key {key}: expected revision {expected}, current is {actual}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    #[error("revision {requested} has been compacted (oldest available is after {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store internal error: {0}")]
    Internal(String),
}

/// A watch's event stream; it ends only when the store is dropped or errors.
pub type WatchStream = BoxStream<'static, Result<WatchEvent, StoreError>>;

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The key's current value, `None` if absent.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Keys under `prefix`, sorted, strictly after `start_after`, at most `limit`
    /// (0 = all), as of `revision` (0 = latest).
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Revision,
    ) -> Result<ListResult, StoreError>;

    /// How many keys exist under `prefix` now.
    async fn count(&self, prefix: &str) -> Result<i64, StoreError>;

    /// Creates `key`; [`StoreError::AlreadyExists`] if it exists. Returns the new revision.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError>;

    /// Compare-and-swap on mod_revision: writes only if the key's current mod_revision is
    /// `expected`, else [`StoreError::Conflict`] ([`StoreError::NotFound`] if absent).
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<Revision, StoreError>;

    /// Deletes `key` (only if its mod_revision is `expected`, when given). Returns the
    /// delete's revision and the last value.
    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(Revision, KeyValue), StoreError>;

    /// Events under `prefix` with revision > `after` (0 = from now), in revision order,
    /// with no gap or duplicate; [`StoreError::Compacted`] if `after` is too old.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;

    /// The revision of the latest write (or of the store's creation).
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// Forgets history at and before `revision` (current values are kept).
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;
}

/// The smallest string greater than every string starting with `prefix` (`None`: no bound).
/// UTF-8 byte order is code point order, so bumping the last char keeps SQLite's BINARY
/// collation and this bound in agreement.
pub(crate) fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last as u32 {
            0xD7FF => Some('\u{E000}'),
            c => char::from_u32(c + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Opens a store by URL: `sqlite:PATH` (the file is created if missing; its directory must
/// exist) or `etcd://h1:2379,h2:2379`.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "store URL {url:?}: sqlite needs a file path (sqlite:/var/lib/hull/state.db)"
            )));
        }
        return Ok(Arc::new(SqliteStore::open(Path::new(path))?));
    }
    if let Some(hosts) = url.strip_prefix("etcd://") {
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(|h| h.trim().trim_end_matches('/'))
            .filter(|h| !h.is_empty())
            .map(|h| format!("http://{h}"))
            .collect();
        if endpoints.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "store URL {url:?}: etcd needs at least one host:port (etcd://127.0.0.1:2379)"
            )));
        }
        return Ok(Arc::new(EtcdStore::connect(&endpoints).await?));
    }
    Err(StoreError::Unavailable(format!(
        "store URL {url:?}: expected sqlite:PATH or etcd://HOST:PORT[,HOST:PORT...]"
    )))
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(
            prefix_end("/registry/pods/").as_deref(),
            Some("/registry/pods0")
        );
        assert_eq!(prefix_end("").as_deref(), None);
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
    }
}
