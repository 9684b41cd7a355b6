//! The embedded SQLite backend: a revision log, as kine keeps it.
//!
//! Every write appends one row to `kine`; the row id is the store-wide revision. The
//! current value of a key is its newest row (a `deleted` row is a tombstone), and the value
//! at an old revision is the newest row at or below it, so a list at any revision since the
//! last compaction is one indexed query. One thread owns the one write connection (SQLite
//! allows one writer) and commits concurrent writes together, one transaction and one
//! fsync per batch ([`writer`], group commit); it orders revisions and the watch broadcast
//! alike. Reads come from a small pool of connections that WAL lets run beside the writer.
//!
//! Durability: WAL with `synchronous = FULL`, so every commit syncs the WAL before the
//! writer answers — an acknowledged write survives a process crash *and* a power loss, as
//! etcd's fsync per commit promises. (`NORMAL` would survive only a process crash: the
//! WAL is synced at checkpoints, so the last commits can vanish with the machine.) Group
//! commit is what makes FULL affordable: the sync is paid per batch, not per write.
//!
//! Watches replay rows from the log and then follow an in-process broadcast that the writer
//! feeds after each commit; see [`watch::watch_stream`] for why that has no gap or duplicate. This
//! makes the file single-process: [`SqliteStore::open`] takes an exclusive lock on it.

mod revlog;
mod watch;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::broadcast;

use super::{KeyValue, ListResult, Revision, Store, StoreError, WatchEvent, WatchStream};
use revlog::{
    SCHEMA, compacted_revision, count_at, current_revision, internal, latest_row, list_at,
};
use writer::{Op, Write, Writer};

/// Events a slow watcher may fall behind by before it re-reads the log.
const BROADCAST_CAPACITY: usize = 1024;
/// Reader connections, and so reads running at once: a read beyond them waits for one to
/// come back rather than opening (and preparing statements on) a connection it would then
/// close — under a burst of requests that was most of the store's CPU.
const READER_POOL: usize = 8;
/// Prepared statements kept per connection (rusqlite's default is 16; the list queries
/// come in several shapes).
const STATEMENT_CACHE: usize = 64;

/// The SQLite-backed [`Store`]. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    path: PathBuf,
    /// Declared before `_lock`: dropping it waits for the writer thread to close the
    /// connection, and only then is the lock released.
    writer: Writer,
    readers: Mutex<Vec<Connection>>,
    /// One permit per reader connection ([`READER_POOL`]).
    reader_slots: tokio::sync::Semaphore,
    events: broadcast::Sender<Arc<WatchEvent>>,
    /// Held for the store's life: a second process on the same file would miss our watch
    /// events and we would miss its writes.
    _lock: File,
}

/// Tuning of [`SqliteStore::open_with`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Most writes committed in one transaction (one fsync). `1` is one commit per write —
    /// the benchmark's peer, to show what group commit buys.
    pub max_batch: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            max_batch: writer::MAX_BATCH,
        }
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, SqliteOptions::default())
    }

    /// [`SqliteStore::open`] with explicit tuning.
    pub fn open_with(path: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                StoreError::Unavailable(format!("sqlite store {}: {e}", lock_path.display()))
            })?;
        lock.try_lock().map_err(|e| {
            StoreError::Unavailable(format!(
                "sqlite store {} is in use by another process ({e})",
                path.display()
            ))
        })?;
        let writer = Connection::open(path).map_err(|e| {
            StoreError::Unavailable(format!("sqlite store {}: {e}", path.display()))
        })?;
        // FULL: a revision a client was told about survives a crash or power loss, as etcd
        // promises with its fsync per commit.
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
            )
            .map_err(internal)?;
        writer.execute_batch(SCHEMA).map_err(internal)?;
        writer.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // Start at revision 1 like etcd, so no real revision is ever "0" (which means
        // "latest" / "any" to clients).
        writer
            .execute(
                "INSERT INTO sqlite_sequence (name, seq) SELECT 'kine', 1 \
                 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'kine')",
                [],
            )
            .map_err(internal)?;
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let writer = Writer::start(writer, events.clone(), options.max_batch.max(1))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer,
                readers: Mutex::new(Vec::new()),
                reader_slots: tokio::sync::Semaphore::new(READER_POOL),
                events,
                _lock: lock,
            }),
        })
    }

    async fn write(&self, write: Write) -> Result<revlog::Row, StoreError> {
        self.inner
            .writer
            .submit(Op::Write(write))
            .await?
            .ok_or_else(|| StoreError::Internal("sqlite writer returned no row".into()))
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.clone().read(f).await
    }
}

impl Inner {
    /// Runs `f` on a pooled reader connection on a blocking thread, once a connection is
    /// free.
    pub(super) async fn read<T, F>(self: Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let _slot = self
            .reader_slots
            .acquire()
            .await
            .map_err(|e| StoreError::Internal(format!("sqlite readers: {e}")))?;
        let inner = self.clone();
        tokio::task::spawn_blocking(move || inner.with_reader(f))
            .await
            .map_err(|e| StoreError::Internal(format!("sqlite reader task: {e}")))?
    }

    pub(super) fn with_reader<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.readers.lock().ok().and_then(|mut pool| pool.pop());
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(internal)?;
                // Lists read every row under a prefix: map the file rather than copy each
                // page through read(2) into a per-connection cache.
                c.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA mmap_size = 268435456;")
                    .map_err(internal)?;
                c.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
                c
            }
        };
        let result = f(&mut conn);
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < READER_POOL
        {
            pool.push(conn);
        }
        result
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.read(move |conn| {
            Ok(latest_row(conn, &key)?
                .filter(|r| !r.deleted)
                .map(|r| r.kv()))
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Revision,
    ) -> Result<ListResult, StoreError> {
        let prefix = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        self.read(move |conn| {
            let tx = conn.transaction().map_err(internal)?;
            let current = current_revision(&tx)?;
            let at = if revision <= 0 { current } else { revision };
            if at > current {
                return Err(StoreError::Unavailable(format!(
                    "revision {at} is in the future (current revision is {current})"
                )));
            }
            let compacted = compacted_revision(&tx)?;
            if at < compacted {
                return Err(StoreError::Compacted {
                    requested: at,
                    compacted,
                });
            }
            list_at(&tx, &prefix, start_after.as_deref(), limit, at)
        })
        .await
    }

    async fn count(&self, prefix: &str) -> Result<i64, StoreError> {
        let prefix = prefix.to_owned();
        self.read(move |conn| {
            let at = current_revision(conn)?;
            count_at(conn, &prefix, None, at)
        })
        .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        let key = key.to_owned();
        Ok(self.write(Write::Create { key, value }).await?.id)
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<Revision, StoreError> {
        let key = key.to_owned();
        let write = Write::Update {
            key,
            value,
            expected,
        };
        Ok(self.write(write).await?.id)
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(Revision, KeyValue), StoreError> {
        let key = key.to_owned();
        let row = self.write(Write::Delete { key, expected }).await?;
        Ok((row.id, row.kv()))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        // Subscribe before reading the log: every commit after the subscription reaches the
        // receiver, every commit before it is in the log.
        let receiver = self.inner.events.subscribe();
        let (start, compacted) = self
            .read(|conn| Ok((current_revision(conn)?, compacted_revision(conn)?)))
            .await?;
        let after = if after <= 0 { start } else { after };
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        Ok(watch::watch_stream(self.inner.clone(), prefix.to_owned(), after, receiver).boxed())
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.read(|conn| current_revision(conn)).await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner
            .writer
            .submit(Op::Compact { revision })
            .await
            .map(|_| ())
    }
}
