//! Watch: a stream of `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}`
//! lines from the store's watch (the watch cache fans one store watch out), with initial
//! state (`resourceVersion` unset / "0", or `sendInitialEvents=true` ending in a BOOKMARK
//! annotated `k8s.io/initial-events-end`), periodic bookmarks, `timeoutSeconds`, selector
//! transitions (an object leaving the selection is DELETED), and an ERROR event with a
//! 410 Status when the revision was compacted.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::object;
use super::selector::{FieldSelector, LabelSelector};
use super::{ApiState, Req, table};
use crate::apiserver::registry::ResourceInfo;
use crate::apiserver::status::ApiError;
use crate::store::{KeyValue, WatchEvent};

/// How often an idle watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(10);
/// Encoded events kept for other watchers of the same event (see [`SharedLines`]).
const SHARED_LINES: usize = 1024;

/// The encoded lines of recent events, shared by watchers without selectors or tables.
///
/// Every pod write reaches a dozen watchers (scheduler, workload controllers, endpoints,
/// garbage collector, node agents); parsing the stored JSON and encoding it again for each
/// was most of the API server's CPU under scheduling load. Such a watcher's line is a pure
/// function of the resource's group and the event's type, key, revision and value, so it is
/// looked up by all five
/// (values compared in full: several in-process servers may share revision numbers).
struct SharedLines(std::sync::Mutex<std::collections::VecDeque<SharedLine>>);

struct SharedLine {
    kind: &'static str,
    /// The watched resource's group: one stored Event is two lines (core, events.k8s.io).
    group: &'static str,
    revision: i64,
    key: String,
    value: Vec<u8>,
    line: bytes::Bytes,
}

static LINES: SharedLines = SharedLines(std::sync::Mutex::new(std::collections::VecDeque::new()));

impl SharedLines {
    fn line(&self, kind: &'static str, kv: &KeyValue, shaper: &Shaper) -> Option<bytes::Bytes> {
        let found = self.0.lock().ok().and_then(|lines| {
            lines
                .iter()
                .rev()
                .find(|l| {
                    l.revision == kv.mod_revision
                        && l.kind == kind
                        && l.group == shaper.r.group
                        && l.key == kv.key
                        && l.value == kv.value
                })
                .map(|l| l.line.clone())
        });
        if found.is_some() {
            return found;
        }
        let line = shaper.line(kind, object::read(shaper.r, kv).ok()?);
        if let Ok(mut lines) = self.0.lock() {
            if lines.len() >= SHARED_LINES {
                lines.pop_front();
            }
            lines.push_back(SharedLine {
                kind,
                group: shaper.r.group,
                revision: kv.mod_revision,
                key: kv.key.clone(),
                value: kv.value.clone(),
                line: line.clone(),
            });
        }
        Some(line)
    }
}

struct Shaper {
    r: &'static ResourceInfo,
    as_table: bool,
    include: Option<String>,
}

impl Shaper {
    fn line(&self, kind: &str, obj: Value) -> bytes::Bytes {
        let obj = if self.as_table && kind != "BOOKMARK" && kind != "ERROR" {
            table::table(
                self.r,
                std::slice::from_ref(&obj),
                None,
                self.include.as_deref(),
            )
        } else {
            obj
        };
        let mut b = serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap_or_default();
        b.push(b'\n');
        bytes::Bytes::from(b)
    }

    fn bookmark(&self, rev: i64, initial_end: bool) -> bytes::Bytes {
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        self.line(
            "BOOKMARK",
            json!({"kind": self.r.kind, "apiVersion": self.r.api_version(), "metadata": meta}),
        )
    }
}

pub async fn watch(state: &Arc<ApiState>, rq: Req) -> Result<Response, ApiError> {
    let labels =
        LabelSelector::parse(rq.q("labelSelector").unwrap_or("")).map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(rq.q("fieldSelector").unwrap_or(""), rq.r.kind)
        .map_err(ApiError::bad_request)?;
    let rv_param = rq.q("resourceVersion").unwrap_or("").to_string();
    let rv = object::parse_rv(&rv_param)?;
    let send_initial = match rq.q("sendInitialEvents") {
        Some("true") => true,
        Some("false") => false,
        // Unset: initial state for "" and "0", as the watch-list semantics say.
        _ => matches!(rv, None | Some(0)),
    };
    let bookmarks = rq.q_bool("allowWatchBookmarks");
    let timeout =
        match rq.q("timeoutSeconds") {
            Some(t) => Duration::from_secs(t.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("timeoutSeconds {t:?} is not a number"))
            })?),
            None => Duration::from_secs(1800 + rand::random::<u64>() % 1800),
        };
    let shaper = Shaper {
        r: rq.r,
        as_table: rq.wants_table(),
        include: rq.q("includeObject").map(str::to_string),
    };
    let announce_end = rq.q("sendInitialEvents") == Some("true");
    // Sees every event as it is: its lines can be shared with other such watchers.
    let everything = labels.is_empty() && fields.is_empty() && !shaper.as_table;
    let prefix = rq.r.list_prefix(rq.ns());
    let store = state.store.clone();
    let mut shutdown = state.shutdown.clone();

    // Open the store watch before answering so a bad revision fails the request cleanly.
    let mut initial = Vec::new();
    let after = if send_initial {
        let page = store.list(&prefix, None, 0, 0).await?;
        for kv in &page.items {
            let obj = object::read(rq.r, kv)?;
            if labels.matches(&obj) && fields.matches(&obj) {
                initial.push(obj);
            }
        }
        page.revision
    } else {
        rv.unwrap_or(0)
    };
    let opened = store.watch(&prefix, after).await;

    let (tx, rx) = mpsc::channel::<Result<bytes::Bytes, Infallible>>(64);
    tokio::spawn(async move {
        let send = |b: bytes::Bytes| {
            let tx = tx.clone();
            async move { tx.send(Ok(b)).await.is_ok() }
        };
        let mut events = match opened {
            Ok(s) => s,
            Err(e) => {
                let status = ApiError::from(e).to_status();
                let _ = send(shaper.line("ERROR", status)).await;
                return;
            }
        };
        for obj in initial {
            if !send(shaper.line("ADDED", obj)).await {
                return;
            }
        }
        if announce_end && !send(shaper.bookmark(after, true)).await {
            return;
        }
        let mut last = after;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = shutdown.changed() => return,
                _ = tick.tick(), if bookmarks => {
                    if !send(shaper.bookmark(last, false)).await { return; }
                }
                ev = events.next() => {
                    let ev = match ev {
                        None => return,
                        Some(Err(e)) => {
                            let _ = send(shaper.line("ERROR", ApiError::from(e).to_status())).await;
                            return;
                        }
                        Some(Ok(ev)) => ev,
                    };
                    last = ev.revision();
                    let line = if everything {
                        let (kind, kv) = match &ev {
                            WatchEvent::Put { kv, prev } => {
                                (if prev.is_some() { "MODIFIED" } else { "ADDED" }, kv)
                            }
                            WatchEvent::Delete { kv } => ("DELETED", kv),
                        };
                        LINES.line(kind, kv, &shaper)
                    } else {
                        translate(shaper.r, &ev, &labels, &fields).map(|(kind, obj)| shaper.line(kind, obj))
                    };
                    let Some(line) = line else { continue };
                    if !send(line).await { return; }
                }
            }
        }
    });
    let stream = tokio_stream_from(rx);
    let mut resp = (StatusCode::OK, Body::from_stream(stream)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<bytes::Bytes, Infallible>>,
) -> impl futures::Stream<Item = Result<bytes::Bytes, Infallible>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A store event as the watcher sees it through its selectors.
fn translate(
    r: &ResourceInfo,
    ev: &WatchEvent,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Option<(&'static str, Value)> {
    let matches = |o: &Value| labels.matches(o) && fields.matches(o);
    match ev {
        WatchEvent::Put { kv, prev } => {
            let obj = object::read(r, kv).ok()?;
            let was = prev
                .as_ref()
                .and_then(|p| object::read(r, p).ok())
                .is_some_and(|p| matches(&p));
            match (was, matches(&obj)) {
                (false, true) => Some(("ADDED", obj)),
                (true, true) => Some(("MODIFIED", obj)),
                (true, false) => Some(("DELETED", obj)),
                (false, false) => None,
            }
        }
        WatchEvent::Delete { kv } => {
            let obj = object::read(r, kv).ok()?;
            matches(&obj).then_some(("DELETED", obj))
        }
    }
}
