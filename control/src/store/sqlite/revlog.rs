//! The revision log's schema and queries: one row per write, the row id the revision.
//!
//! Everything here runs on a connection the caller holds (the writer, or a pooled reader),
//! inside the caller's transaction where one is needed.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::store::{KeyValue, ListResult, Revision, StoreError, WatchEvent, prefix_end};

pub(super) const SCHEMA: &str = "
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
pub(super) struct Row {
    pub(super) id: Revision,
    pub(super) name: String,
    pub(super) deleted: bool,
    pub(super) create_revision: Revision,
    pub(super) prev_revision: Revision,
    pub(super) value: Vec<u8>,
    pub(super) old_value: Option<Vec<u8>>,
}

pub(super) const ROW_COLUMNS: &str =
    "id, name, deleted, create_revision, prev_revision, value, old_value";

impl Row {
    pub(super) fn from_sql(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
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

    pub(super) fn kv(&self) -> KeyValue {
        KeyValue {
            key: self.name.clone(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.id,
        }
    }

    pub(super) fn into_event(self) -> WatchEvent {
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

pub(super) fn internal(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Internal(format!("sqlite: {e}")),
    }
}

// Every statement on the hot path goes through the connection's statement cache
// (`prepare_cached`): preparing one costs as much as running it, and these run several
// times per API request.
//
// Parameters of the queries with an ORDER BY are written `CAST(?N AS type)`, not bare
// `?N`: SQLite treated those statements' plans as depending on the bound values and
// re-prepared them on every execution (rusqlite's `StatementStatus::RePrepare` counted one
// per run, a cached statement saved nothing: half the store's CPU under a burst of
// writes). The CAST makes the parameter an expression; the plans (EXPLAIN QUERY PLAN) are
// the same index searches.

pub(super) fn current_revision(conn: &Connection) -> Result<Revision, StoreError> {
    conn.prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'kine'")
        .and_then(|mut stmt| stmt.query_row([], |r| r.get(0)).optional())
        .map_err(internal)
        .map(|r| r.unwrap_or(1))
}

pub(super) fn compacted_revision(conn: &Connection) -> Result<Revision, StoreError> {
    conn.prepare_cached("SELECT value FROM hull_meta WHERE key = 'compact_rev'")
        .and_then(|mut stmt| stmt.query_row([], |r| r.get(0)).optional())
        .map_err(internal)
        .map(|r| r.unwrap_or(0))
}

/// [`ROW_COLUMNS`] of a key's newest row (a literal: the cache is keyed by the SQL text,
/// and this runs for every get and every write).
const LATEST_ROW_SQL: &str = "SELECT id, name, deleted, create_revision, prev_revision, value, old_value \
     FROM kine WHERE name = CAST(?1 AS TEXT) ORDER BY id DESC LIMIT 1";

pub(super) fn latest_row(conn: &Connection, key: &str) -> Result<Option<Row>, StoreError> {
    conn.prepare_cached(LATEST_ROW_SQL)
        .and_then(|mut stmt| stmt.query_row([key], Row::from_sql).optional())
        .map_err(internal)
}

/// The revision the next write gets (the log's newest id + 1; a batch's earlier inserts
/// count, since they run on the same transaction).
pub(super) fn next_revision(conn: &Connection) -> Result<Revision, StoreError> {
    Ok(current_revision(conn)? + 1)
}

/// Inserts `row` into the log, on the caller's transaction.
pub(super) fn insert_row(conn: &Connection, row: &Row) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO kine (id, name, created, deleted, create_revision, prev_revision, value, old_value) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            row.id,
            row.name,
            i64::from(row.create_revision == row.id),
            i64::from(row.deleted),
            row.create_revision,
            row.prev_revision,
            row.value,
            row.old_value
        ])
    })
    .map_err(internal)?;
    Ok(())
}

/// Range condition on `name` for keys under `prefix` strictly after `start_after`.
pub(super) fn range_bounds(
    prefix: &str,
    start_after: Option<&str>,
) -> (String, bool, Option<String>) {
    match start_after {
        Some(after) if after >= prefix => (after.to_owned(), true, prefix_end(prefix)),
        _ => (prefix.to_owned(), false, prefix_end(prefix)),
    }
}

/// Keys live at revision `at`: rows at or below `at` with no newer row of their key at or
/// below `at`, unless a tombstone. Written as NOT EXISTS so SQLite walks the `(name, id)`
/// index in name order once (a `MAX(id) GROUP BY name` join materialises and sorts, which
/// measured ten times slower on a 1,000-key list).
pub(super) fn live_at_sql(select: &str, lower_strict: bool, upper: bool, limit: bool) -> String {
    let lower = if lower_strict { ">" } else { ">=" };
    let upper = if upper {
        "AND kv.name < CAST(?2 AS TEXT)"
    } else {
        "AND CAST(?2 AS TEXT) IS NULL"
    };
    let limit = if limit {
        "LIMIT CAST(?4 AS INTEGER)"
    } else {
        ""
    };
    format!(
        "SELECT {select} FROM kine AS kv \
         WHERE kv.name {lower} CAST(?1 AS TEXT) {upper} AND kv.id <= CAST(?3 AS INTEGER) \
         AND kv.deleted = 0 \
         AND NOT EXISTS (SELECT 1 FROM kine AS newer \
                         WHERE newer.name = kv.name AND newer.id > kv.id \
                         AND newer.id <= CAST(?3 AS INTEGER)) \
         ORDER BY kv.name {limit}"
    )
}

pub(super) fn count_at(
    conn: &Connection,
    prefix: &str,
    start_after: Option<&str>,
    at: Revision,
) -> Result<i64, StoreError> {
    let (lower, strict, upper) = range_bounds(prefix, start_after);
    conn.prepare_cached(&live_at_sql("COUNT(*)", strict, upper.is_some(), false))
        .and_then(|mut stmt| stmt.query_row(params![lower, upper, at], |r| r.get(0)))
        .map_err(internal)
}

pub(super) fn list_at(
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

pub(super) fn compact(conn: &mut Connection, revision: Revision) -> Result<(), StoreError> {
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

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::*;

    /// Writes between reads (as the writer does between a reader's queries) must not make
    /// the cached read statements prepare again.
    #[test]
    fn cached_statements_are_not_reprepared() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("kine.db");
        let writer = Connection::open(&path).expect("open writer");
        writer
            .execute_batch("PRAGMA journal_mode = WAL;")
            .expect("wal");
        writer.execute_batch(SCHEMA).expect("schema");
        let reader = Connection::open(&path).expect("open reader");
        for i in 1..=20 {
            let key = format!("/registry/pods/ns/p{i}");
            let latest = latest_row(&writer, &key).expect("latest row");
            assert!(latest.is_none(), "{key} does not exist yet");
            let row = Row {
                id: current_revision(&writer).expect("revision") + 1,
                name: key.clone(),
                deleted: false,
                create_revision: 0,
                prev_revision: 0,
                value: b"{}".to_vec(),
                old_value: None,
            };
            let row = Row {
                create_revision: row.id,
                ..row
            };
            insert_row(&writer, &row).expect("insert");
            let read = latest_row(&reader, &key).expect("read back");
            assert_eq!(read.map(|r| r.id), Some(row.id), "{key} read back");
            let list = list_at(&reader, "/registry/pods/", None, 5, row.id).expect("list");
            assert_eq!(list.items.len(), i.min(5), "list after {i} writes");
        }
        for (what, conn) in [("writer", &writer), ("reader", &reader)] {
            let stmt = conn.prepare_cached(LATEST_ROW_SQL).expect("cached");
            assert_eq!(
                stmt.get_status(StatementStatus::RePrepare),
                0,
                "latest_row re-prepared on the {what}"
            );
        }
        let columns = ROW_COLUMNS
            .split(", ")
            .map(|c| format!("kv.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        for sql in [
            live_at_sql(&columns, false, true, true),
            live_at_sql("COUNT(*)", true, true, false),
        ] {
            let stmt = reader.prepare_cached(&sql).expect("cached");
            assert_eq!(
                stmt.get_status(StatementStatus::RePrepare),
                0,
                "re-prepared: {sql}"
            );
        }
    }
}
