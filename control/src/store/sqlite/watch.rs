//! SQLite watches: replay the log, then follow the writer's broadcast.

use std::sync::Arc;

use rusqlite::{Connection, params};
use tokio::sync::broadcast;

use super::Inner;
use super::revlog::{ROW_COLUMNS, Row, compacted_revision, internal};
use crate::store::{Revision, StoreError, WatchEvent, prefix_end};

/// Rows a lagging or starting watcher reads from the log per query.
const REPLAY_BATCH: i64 = 1000;

/// Replays the log after `after`, then follows the broadcast.
///
/// The receiver was subscribed before the replay started, so every event is either in the
/// log read or in the receiver (or both); forwarding only revisions above the last one sent
/// removes the overlap. A receiver that falls behind the broadcast goes back to the log from
/// its last revision, so a slow watcher loses nothing unless compaction overtakes it.
pub(super) fn watch_stream(
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
                let batch = inner.read(move |conn| replay(conn, &prefix, last)).await;
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

pub(super) fn replay(
    conn: &Connection,
    prefix: &str,
    after: Revision,
) -> Result<Vec<WatchEvent>, StoreError> {
    let compacted = compacted_revision(conn)?;
    if after < compacted {
        return Err(StoreError::Compacted {
            requested: after,
            compacted,
        });
    }
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM kine WHERE id > CAST(?1 AS INTEGER) \
             AND name >= CAST(?2 AS TEXT) \
             AND (CAST(?3 AS TEXT) IS NULL OR name < CAST(?3 AS TEXT)) \
             ORDER BY id LIMIT CAST(?4 AS INTEGER)"
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
