//! The group-commit writer: one thread owns the SQLite write connection and commits every
//! write that arrived while the previous commit was being synced in one transaction.
//!
//! SQLite has one writer and, with `synchronous = FULL`, one fsync per commit; a write per
//! transaction caps the store at the disk's sync rate (a few hundred per second) however
//! many clients wait. Batching keeps each caller's semantics — its own revision, its own
//! `AlreadyExists`/`Conflict`/`NotFound` (decided against the writes before it in the same
//! batch, as if they had committed one by one), a reply only once the batch is on disk —
//! while the fsync is paid once per batch. No delay is added to wait for company: a lone
//! write commits at once; under load, batches form by themselves from what queued during
//! the last sync.
//!
//! A write that fails leaves the others in the batch untouched: a refused precondition
//! fails before anything is written, and a failed insert is one statement, which SQLite
//! undoes by itself (no savepoint needed: each is two statements more per write). An error
//! that makes SQLite roll back the whole transaction (disk full, I/O) fails the whole
//! batch, as a failed commit does: every write gets the error and no event is sent. Events
//! are broadcast after the commit, in revision order, from this one thread. BEGIN and
//! COMMIT are cached statements like the rest (`execute_batch` re-parses its text).

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::{broadcast, oneshot};

use super::revlog::{Row, compact, insert_row, internal, latest_row, next_revision};
use crate::store::{Revision, StoreError, WatchEvent};

/// Most writes one transaction carries: bounds how long the first of a batch waits for the
/// others' inserts (each a few microseconds) before its fsync.
pub(super) const MAX_BATCH: usize = 512;

/// What the writer thread is asked to do.
pub(super) enum Op {
    Write(Write),
    /// Runs in a transaction of its own (it may delete many rows).
    Compact {
        revision: Revision,
    },
}

/// One key's write, batched with others.
pub(super) enum Write {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

/// What a write returns: the row it appended (none for a compaction).
pub(super) type Outcome = Result<Option<Row>, StoreError>;

struct Request {
    op: Op,
    reply: oneshot::Sender<Outcome>,
}

/// Handle to the writer thread; dropping it lets the thread finish what is queued, close
/// the connection and exit, and waits for that.
pub(super) struct Writer {
    queue: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub(super) fn start(
        conn: Connection,
        events: broadcast::Sender<Arc<WatchEvent>>,
        max_batch: usize,
    ) -> Result<Writer, StoreError> {
        let (queue, requests) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("hull-sqlite-writer".into())
            .spawn(move || run(conn, events, requests, max_batch))
            .map_err(|e| StoreError::Internal(format!("sqlite writer thread: {e}")))?;
        Ok(Writer {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues `op` and waits until it is committed (or refused).
    pub(super) async fn submit(&self, op: Op) -> Outcome {
        let (reply, done) = oneshot::channel();
        let stopped = || StoreError::Internal("sqlite writer thread stopped".into());
        self.queue
            .as_ref()
            .ok_or_else(stopped)?
            .send(Request { op, reply })
            .map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            // The thread only ends its current batch; joining keeps the file lock (dropped
            // after this) held until the connection is closed.
            let _ = thread.join();
        }
    }
}

fn run(
    mut conn: Connection,
    events: broadcast::Sender<Arc<WatchEvent>>,
    requests: mpsc::Receiver<Request>,
    max_batch: usize,
) {
    let mut batch: Vec<Request> = Vec::with_capacity(max_batch);
    while let Ok(first) = requests.recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match requests.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut writes = Vec::with_capacity(batch.len());
        for Request { op, reply } in batch.drain(..) {
            match op {
                Op::Write(write) => writes.push((write, reply)),
                Op::Compact { revision } => {
                    // Keep the order callers saw: what queued before the compaction commits
                    // first.
                    commit_batch(&mut conn, &events, std::mem::take(&mut writes));
                    let _ = reply.send(compact(&mut conn, revision).map(|()| None));
                }
            }
        }
        commit_batch(&mut conn, &events, writes);
    }
}

fn commit_batch(
    conn: &mut Connection,
    events: &broadcast::Sender<Arc<WatchEvent>>,
    batch: Vec<(Write, oneshot::Sender<Outcome>)>,
) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = run_cached(conn, "BEGIN IMMEDIATE") {
        for (_, reply) in batch {
            let _ = reply.send(Err(e.clone()));
        }
        return;
    }
    let mut results: Vec<(oneshot::Sender<Outcome>, Result<Row, StoreError>)> =
        Vec::with_capacity(batch.len());
    let mut aborted: Option<StoreError> = None;
    for (write, reply) in batch {
        if let Some(e) = &aborted {
            results.push((reply, Err(e.clone())));
            continue;
        }
        let result = apply(conn, write);
        // Back in autocommit mode: SQLite rolled the transaction back on this error, taking
        // the batch's earlier writes with it (and a later write would commit on its own).
        if let Err(e) = &result
            && conn.is_autocommit()
        {
            aborted = Some(e.clone());
        }
        results.push((reply, result));
    }
    let committed = match aborted {
        Some(e) => Err(e),
        None => run_cached(conn, "COMMIT"),
    };
    if let Err(e) = committed {
        if !conn.is_autocommit() {
            let _ = run_cached(conn, "ROLLBACK");
        }
        for (reply, result) in results {
            let _ = reply.send(result.and(Err(e.clone())).map(Some));
        }
        return;
    }
    // Committed: announce in revision order, then answer. No receivers is not an error.
    for (_, result) in &results {
        if let Ok(row) = result {
            let _ = events.send(Arc::new(row.clone().into_event()));
        }
    }
    for (reply, result) in results {
        let _ = reply.send(result.map(Some));
    }
}

/// Runs a statement without parameters or rows through the statement cache.
fn run_cached(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute([]))
        .map(|_| ())
        .map_err(internal)
}

/// Appends the row `op` makes from the key's newest row (tombstones included), on the
/// batch's transaction (which sees the batch's earlier writes).
fn apply(conn: &Connection, write: Write) -> Result<Row, StoreError> {
    let key = match &write {
        Write::Create { key, .. } | Write::Update { key, .. } | Write::Delete { key, .. } => {
            key.clone()
        }
    };
    let latest = latest_row(conn, &key)?;
    let revision = next_revision(conn)?;
    let row = match write {
        Write::Create { value, .. } => {
            if latest.as_ref().is_some_and(|r| !r.deleted) {
                return Err(StoreError::AlreadyExists { key });
            }
            Row {
                id: revision,
                name: key,
                deleted: false,
                create_revision: revision,
                prev_revision: latest.map_or(0, |r| r.id),
                value,
                old_value: None,
            }
        }
        Write::Update {
            value, expected, ..
        } => {
            let latest = check_expected(&key, latest, Some(expected))?;
            Row {
                id: revision,
                name: key,
                deleted: false,
                create_revision: latest.create_revision,
                prev_revision: latest.id,
                value,
                old_value: Some(latest.value),
            }
        }
        Write::Delete { expected, .. } => {
            let latest = check_expected(&key, latest, expected)?;
            Row {
                id: revision,
                name: key,
                deleted: true,
                create_revision: latest.create_revision,
                prev_revision: latest.id,
                value: latest.value.clone(),
                old_value: Some(latest.value),
            }
        }
    };
    insert_row(conn, &row)?;
    Ok(row)
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
