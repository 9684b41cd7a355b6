//! The embedded SQLite backend: a revision log, as kine keeps it.
//!
//! Every write appends one row to `kine`; the row id is the store-wide revision. The
//! current value of a key is its newest row (a `deleted` row is a tombstone), and the value
//! at an old revision is the newest row at or below it, so a list at any revision since the
//! last compaction is one indexed query. One connection writes (SQLite allows one writer;
//! the mutex orders revisions and the watch broadcast alike); reads come from a small pool
//! of connections that WAL lets run beside the writer.
//!
//! Watches replay rows from the log and then follow an in-process broadcast that the writer
//! feeds after each commit; see [`watch_stream`] for why that has no gap or duplicate. This
//! makes the file single-process: [`SqliteStore::open`] takes an exclusive lock on it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::broadcast;

use super::{KeyValue, ListResult, Revision, Store, StoreError, WatchEvent, WatchStream};

/// Events a slow watcher may fall behind by before it re-reads the log.
const BROADCAST_CAPACITY: usize = 1024;
/// Rows a lagging or starting watcher reads from the log per query.
const REPLAY_BATCH: i64 = 1000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    created INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    create_revision INTEGER NOT NULL,
    prev_revision INTEGER NOT NULL,
    value BLOB NOT NULL,
    old_value BLOB
);
-- Covers the liveness checks of lists and counts (name order, newest id, tombstone).
CREATE INDEX IF NOT EXISTS kine_name_id_deleted ON kine (name, id, deleted);
CREATE TABLE IF NOT EXISTS hull_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

/// A row of the revision log.
#[derive(Debug, Clone)]
struct Row {
    id: Revision,
    name: String,
    deleted: bool,
    create_revision: Revision,
    prev_revision: Revision,
    value: Vec<u8>,
    old_value: Option<Vec<u8>>,
}

const ROW_COLUMNS: &str = "id, name, deleted, create_revision, prev_revision, value, old_value";

impl Row {
    fn from_sql(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        Ok(Row {
            id: r.get(0)?,
            name: r.get(1)?,
            deleted: r.get::<_, i64>(2)? != 0,
            create_revision: r.get(3)?,
            prev_revision: r.get(4)?,
            value: r.get(5)?,
            old_value: r.get(6)?,
        })
    }

    fn kv(&self) -> KeyValue {
        KeyValue {
            key: self.name.clone(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.id,
        }
    }

    fn into_event(self) -> WatchEvent {
        if self.deleted {
            return WatchEvent::Delete { kv: self.kv() };
        }
        let prev = match (&self.old_value, self.prev_revision) {
            (Some(old), prev_rev) if prev_rev > 0 => Some(KeyValue {
                key: self.name.clone(),
                value: old.clone(),
                create_revision: self.create_revision,
                mod_revision: prev_rev,
            }),
            _ => None,
        };
        WatchEvent::Put {
            kv: self.kv(),
            prev,
        }
    }
}

fn internal(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Internal(format!("sqlite: {e}")),
    }
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

/// The SQLite-backed [`Store`]. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    /// Held for the store's life: a second process on the same file would miss our watch
    /// events and we would miss its writes.
    _lock: File,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
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
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
                events,
                _lock: lock,
            }),
        })
    }

    /// Runs `f` on the writer connection in a blocking thread.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &broadcast::Sender<Arc<WatchEvent>>) -> Result<T, StoreError>
            + Send
            + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner
                .writer
                .lock()
                .map_err(|_| StoreError::Internal("sqlite writer mutex poisoned".into()))?;
            f(&mut conn, &inner.events)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("sqlite writer task: {e}")))?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.with_reader(f))
            .await
            .map_err(|e| StoreError::Internal(format!("sqlite reader task: {e}")))?
    }
}

impl Inner {
    fn with_reader<T>(
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
                // page through read(2), and cache enough pages for a 10k-object list.
                c.execute_batch(
                    "PRAGMA busy_timeout = 5000; PRAGMA mmap_size = 268435456; PRAGMA cache_size = -32768;",
                )
                .map_err(internal)?;
                c
            }
        };
        let result = f(&mut conn);
        if let Ok(mut pool) = self.readers.lock() {
            pool.push(conn);
        }
        result
    }
}

fn current_revision(conn: &Connection) -> Result<Revision, StoreError> {
    conn.query_row(
        "SELECT seq FROM sqlite_sequence WHERE name = 'kine'",
        [],
        |r| r.get(0),
    )
    .optional()
    .map_err(internal)
    .map(|r| r.unwrap_or(1))
}

fn compacted_revision(conn: &Connection) -> Result<Revision, StoreError> {
    conn.query_row(
        "SELECT value FROM hull_meta WHERE key = 'compact_rev'",
        [],
        |r| r.get(0),
    )
    .optional()
    .map_err(internal)
    .map(|r| r.unwrap_or(0))
}

fn latest_row(conn: &Connection, key: &str) -> Result<Option<Row>, StoreError> {
    conn.query_row(
        &format!("SELECT {ROW_COLUMNS} FROM kine WHERE name = ?1 ORDER BY id DESC LIMIT 1"),
        [key],
        Row::from_sql,
    )
    .optional()
    .map_err(internal)
}

/// Appends the row `build` makes from the key's newest row (tombstones included) in one
/// transaction, then announces the event. Holding the writer mutex across commit and send
/// keeps the broadcast in revision order.
fn append(
    conn: &mut Connection,
    events: &broadcast::Sender<Arc<WatchEvent>>,
    key: &str,
    build: impl FnOnce(Revision, Option<Row>) -> Result<Row, StoreError>,
) -> Result<Row, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(internal)?;
    let latest = latest_row(&tx, key)?;
    let revision = current_revision(&tx)? + 1;
    let row = build(revision, latest)?;
    tx.execute(
        "INSERT INTO kine (id, name, created, deleted, create_revision, prev_revision, value, old_value) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            row.id,
            row.name,
            i64::from(row.create_revision == row.id),
            i64::from(row.deleted),
            row.create_revision,
            row.prev_revision,
            row.value,
            row.old_value
        ],
    )
    .map_err(internal)?;
    tx.commit().map_err(internal)?;
    // No receivers is not an error: nobody is watching.
    let _ = events.send(Arc::new(row.clone().into_event()));
    Ok(row)
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
        self.write(move |conn, events| {
            append(conn, events, &key, |revision, latest| {
                if latest.as_ref().is_some_and(|r| !r.deleted) {
                    return Err(StoreError::AlreadyExists { key: key.clone() });
                }
                Ok(Row {
                    id: revision,
                    name: key.clone(),
                    deleted: false,
                    create_revision: revision,
                    prev_revision: latest.map_or(0, |r| r.id),
                    value,
                    old_value: None,
                })
            })
            .map(|row| row.id)
        })
        .await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<Revision, StoreError> {
        let key = key.to_owned();
        self.write(move |conn, events| {
            append(conn, events, &key, |revision, latest| {
                let latest = check_expected(&key, latest, Some(expected))?;
                Ok(Row {
                    id: revision,
                    name: key.clone(),
                    deleted: false,
                    create_revision: latest.create_revision,
                    prev_revision: latest.id,
                    value,
                    old_value: Some(latest.value),
                })
            })
            .map(|row| row.id)
        })
        .await
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(Revision, KeyValue), StoreError> {
        let key = key.to_owned();
        self.write(move |conn, events| {
            append(conn, events, &key, |revision, latest| {
                let latest = check_expected(&key, latest, expected)?;
                Ok(Row {
                    id: revision,
                    name: key.clone(),
                    deleted: true,
                    create_revision: latest.create_revision,
                    prev_revision: latest.id,
                    value: latest.value.clone(),
                    old_value: Some(latest.value),
                })
            })
            .map(|row| (row.id, row.kv()))
        })
        .await
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
        Ok(watch_stream(self.inner.clone(), prefix.to_owned(), after, receiver).boxed())
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.read(|conn| current_revision(conn)).await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.write(move |conn, _| compact(conn, revision)).await
    }
}

/// The key's live row, if its mod_revision is `expected` (when given).
fn check_expected(
    key: &str,
    latest: Option<Row>,
    expected: Option<Revision>,
) -> Result<Row, StoreError> {
    match (latest.filter(|r| !r.deleted), expected) {
        (None, _) => Err(StoreError::NotFound {
            key: key.to_owned(),
        }),
        (Some(row), Some(expected)) if row.id != expected => Err(StoreError::Conflict {
            key: key.to_owned(),
            expected,
            actual: row.id,
        }),
        (Some(row), _) => Ok(row),
    }
}

/// Range condition on `name` for keys under `prefix` strictly after `start_after`.
fn range_bounds(prefix: &str, start_after: Option<&str>) -> (String, bool, Option<String>) {
    match start_after {
        Some(after) if after >= prefix => (after.to_owned(), true, prefix_end(prefix)),
        _ => (prefix.to_owned(), false, prefix_end(prefix)),
    }
}

/// Keys live at revision `at`: rows at or below `at` with no newer row of their key at or
/// below `at`, unless a tombstone. Written as NOT EXISTS so SQLite walks the `(name, id)`
/// index in name order once (a `MAX(id) GROUP BY name` join materialises and sorts, which
/// measured ten times slower on a 1,000-key list).
fn live_at_sql(select: &str, lower_strict: bool, upper: bool, limit: bool) -> String {
    let lower = if lower_strict { ">" } else { ">=" };
    let upper = if upper {
        "AND kv.name < ?2"
    } else {
        "AND ?2 IS NULL"
    };
    let limit = if limit { "LIMIT ?4" } else { "" };
    format!(
        "SELECT {select} FROM kine AS kv \
         WHERE kv.name {lower} ?1 {upper} AND kv.id <= ?3 AND kv.deleted = 0 \
         AND NOT EXISTS (SELECT 1 FROM kine AS newer \
                         WHERE newer.name = kv.name AND newer.id > kv.id AND newer.id <= ?3) \
         ORDER BY kv.name {limit}"
    )
}

fn count_at(
    conn: &Connection,
    prefix: &str,
    start_after: Option<&str>,
    at: Revision,
) -> Result<i64, StoreError> {
    let (lower, strict, upper) = range_bounds(prefix, start_after);
    conn.query_row(
        &live_at_sql("COUNT(*)", strict, upper.is_some(), false),
        params![lower, upper, at],
        |r| r.get(0),
    )
    .map_err(internal)
}

fn list_at(
    conn: &Connection,
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
    at: Revision,
) -> Result<ListResult, StoreError> {
    let (lower, strict, upper) = range_bounds(prefix, start_after);
    let columns = ROW_COLUMNS
        .split(", ")
        .map(|c| format!("kv.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql_limit = if limit == 0 { -1 } else { limit as i64 };
    let mut stmt = conn
        .prepare_cached(&live_at_sql(&columns, strict, upper.is_some(), true))
        .map_err(internal)?;
    let items = stmt
        .query_map(params![lower, upper, at, sql_limit], Row::from_sql)
        .map_err(internal)?
        .map(|r| r.map(|row| row.kv()).map_err(internal))
        .collect::<Result<Vec<_>, _>>()?;
    let remaining = if limit > 0 && items.len() == limit {
        let last = items.last().map(|kv| kv.key.as_str());
        count_at(conn, prefix, last, at)?
    } else {
        0
    };
    Ok(ListResult {
        items,
        revision: at,
        remaining,
    })
}

fn compact(conn: &mut Connection, revision: Revision) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(internal)?;
    let current = current_revision(&tx)?;
    if revision > current {
        return Err(StoreError::Internal(format!(
            "cannot compact to revision {revision}: it is in the future (current revision is {current})"
        )));
    }
    if revision <= compacted_revision(&tx)? {
        return Ok(());
    }
    // A row is history at `revision` if a newer row of its key is at or below it, or if it
    // is a tombstone (the key does not exist at `revision`).
    tx.execute(
        "DELETE FROM kine WHERE id <= ?1 AND (deleted = 1 OR id < \
           (SELECT MAX(k2.id) FROM kine AS k2 WHERE k2.name = kine.name AND k2.id <= ?1))",
        [revision],
    )
    .map_err(internal)?;
    tx.execute(
        "INSERT INTO hull_meta (key, value) VALUES ('compact_rev', ?1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [revision],
    )
    .map_err(internal)?;
    tx.commit().map_err(internal)
}

/// Replays the log after `after`, then follows the broadcast.
///
/// The receiver was subscribed before the replay started, so every event is either in the
/// log read or in the receiver (or both); forwarding only revisions above the last one sent
/// removes the overlap. A receiver that falls behind the broadcast goes back to the log from
/// its last revision, so a slow watcher loses nothing unless compaction overtakes it.
fn watch_stream(
    inner: Arc<Inner>,
    prefix: String,
    after: Revision,
    receiver: broadcast::Receiver<Arc<WatchEvent>>,
) -> impl futures::Stream<Item = Result<WatchEvent, StoreError>> + Send + 'static {
    struct State {
        inner: Arc<Inner>,
        prefix: String,
        last: Revision,
        receiver: broadcast::Receiver<Arc<WatchEvent>>,
        /// Replay from the log until it is exhausted.
        replaying: bool,
        pending: std::collections::VecDeque<WatchEvent>,
        done: bool,
    }
    let state = State {
        inner,
        prefix,
        last: after,
        receiver,
        replaying: true,
        pending: Default::default(),
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            if let Some(ev) = st.pending.pop_front() {
                st.last = ev.revision();
                return Some((Ok(ev), st));
            }
            if st.replaying {
                let (inner, prefix, last) = (st.inner.clone(), st.prefix.clone(), st.last);
                let batch = tokio::task::spawn_blocking(move || {
                    inner.with_reader(|conn| replay(conn, &prefix, last))
                })
                .await
                .map_err(|e| StoreError::Internal(format!("sqlite watch task: {e}")))
                .and_then(|r| r);
                match batch {
                    Ok(rows) => {
                        st.replaying = rows.len() as i64 == REPLAY_BATCH;
                        st.pending.extend(rows);
                        continue;
                    }
                    Err(e) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                }
            }
            match st.receiver.recv().await {
                Ok(ev) => {
                    if ev.revision() > st.last && ev.kv().key.starts_with(&st.prefix) {
                        st.pending.push_back((*ev).clone());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => st.replaying = true,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

fn replay(conn: &Connection, prefix: &str, after: Revision) -> Result<Vec<WatchEvent>, StoreError> {
    let compacted = compacted_revision(conn)?;
    if after < compacted {
        return Err(StoreError::Compacted {
            requested: after,
            compacted,
        });
    }
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM kine WHERE id > ?1 AND name >= ?2 AND (?3 IS NULL OR name < ?3) \
             ORDER BY id LIMIT ?4"
        ))
        .map_err(internal)?;
    stmt.query_map(
        params![after, prefix, prefix_end(prefix), REPLAY_BATCH],
        Row::from_sql,
    )
    .map_err(internal)?
    .map(|r| r.map(Row::into_event).map_err(internal))
    .collect()
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
