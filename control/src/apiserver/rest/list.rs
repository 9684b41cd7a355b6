//! List with label and field selectors, `limit` / `continue` pagination (a consistent
//! snapshot: later pages are read at the first page's revision; 410 once compacted), and
//! `resourceVersion` / `resourceVersionMatch`.

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::object;
use super::selector::{FieldSelector, LabelSelector};
use super::{ApiState, Req, json_bytes_response, json_response, table};
use crate::apiserver::conversion;
use crate::apiserver::status::ApiError;
use crate::store::{KeyValue, StoreError};

/// Where the next page starts: the snapshot revision and the last key returned.
fn encode_continue(rev: i64, key: &str) -> String {
    URL_SAFE_NO_PAD.encode(json!({"v": "hull/1", "rv": rev, "start": key}).to_string())
}

fn decode_continue(token: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::bad_request(format!("continue token {token:?} is invalid"));
    let raw = URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rev = v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    Ok((rev, start.to_string()))
}

/// The outcome of a filtered list: the stored values of the matching objects.
pub struct Listed {
    pub items: Vec<KeyValue>,
    pub revision: i64,
    pub continue_token: Option<String>,
    pub remaining: Option<i64>,
}

/// Lists the objects of a request's resource matching its selectors.
pub async fn collect(state: &ApiState, rq: &Req) -> Result<Listed, ApiError> {
    let labels =
        LabelSelector::parse(rq.q("labelSelector").unwrap_or("")).map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(rq.q("fieldSelector").unwrap_or(""), rq.r.kind)
        .map_err(ApiError::bad_request)?;
    let limit: usize = match rq.q("limit") {
        None | Some("") => 0,
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("limit {l:?} is not a number")))?
            .max(0) as usize,
    };
    let prefix = rq.r.list_prefix(rq.ns());
    let (mut rev, mut start) = match rq.q("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rev, key) = decode_continue(token)?;
            if !key.starts_with(&prefix) {
                return Err(ApiError::bad_request(
                    "continue token does not belong to this list",
                ));
            }
            (rev, Some(key))
        }
        None => {
            let exact = rq.q("resourceVersionMatch") == Some("Exact");
            let rv = object::parse_rv(rq.q("resourceVersion").unwrap_or(""))?.unwrap_or(0);
            (if exact { rv } else { 0 }, None)
        }
    };
    let filtering = !labels.is_empty() || !fields.is_empty();
    let mut items = Vec::new();
    loop {
        // With selectors a page may match little; read ahead in bigger batches.
        let batch = if limit == 0 {
            0
        } else if filtering {
            (limit * 2).max(256)
        } else {
            limit
        };
        let page = match state
            .store
            .list(&prefix, start.as_deref(), batch, rev)
            .await
        {
            Ok(p) => p,
            Err(StoreError::Compacted { .. }) if rq.q("continue").is_some() => {
                return Err(ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ));
            }
            Err(e) => return Err(e.into()),
        };
        rev = page.revision;
        let n = page.items.len();
        for (i, kv) in page.items.iter().enumerate() {
            if filtering {
                let obj = object::read(rq.r, kv)?;
                if !labels.matches(&obj) || !fields.matches(&obj) {
                    continue;
                }
            }
            items.push(kv.clone());
            if limit > 0 && items.len() == limit {
                let more = i + 1 < n || page.remaining > 0;
                let token = more.then(|| encode_continue(rev, &kv.key));
                let remaining = (!filtering && more).then(|| (n - i - 1) as i64 + page.remaining);
                return Ok(Listed {
                    items,
                    revision: rev,
                    continue_token: token,
                    remaining,
                });
            }
        }
        if limit == 0 || page.remaining == 0 || n == 0 {
            return Ok(Listed {
                items,
                revision: rev,
                continue_token: None,
                remaining: None,
            });
        }
        start = page.items.last().map(|kv| kv.key.clone());
    }
}

pub async fn list(state: &ApiState, rq: &Req) -> Result<Response, ApiError> {
    let listed = collect(state, rq).await?;
    let mut meta = json!({"resourceVersion": listed.revision.to_string()});
    if let Some(c) = &listed.continue_token {
        meta["continue"] = json!(c);
    }
    if let Some(n) = listed.remaining {
        meta["remainingItemCount"] = json!(n);
    }
    if rq.wants_table() || conversion::converted(rq.r) {
        let items = listed
            .items
            .iter()
            .map(|kv| object::read(rq.r, kv))
            .collect::<Result<Vec<_>, _>>()?;
        if rq.wants_table() {
            let mut t = table::table(rq.r, &items, None, rq.q("includeObject"));
            t["metadata"] = meta;
            return Ok(json_response(StatusCode::OK, &t));
        }
        return Ok(json_response(
            StatusCode::OK,
            &json!({
                "kind": rq.r.list_kind,
                "apiVersion": rq.r.api_version(),
                "metadata": meta,
                "items": items,
            }),
        ));
    }
    // The list as `json_response` would encode it, with every item spliced from its
    // stored bytes (see `object::append_stored`).
    let size: usize = listed.items.iter().map(|kv| kv.value.len() + 32).sum();
    let mut body = Vec::with_capacity(size + 256);
    let head = json!({
        "kind": rq.r.list_kind,
        "apiVersion": rq.r.api_version(),
        "metadata": meta,
    });
    serde_json::to_writer(&mut body, &head)
        .map_err(|e| ApiError::internal(format!("encoding list: {e}")))?;
    body.pop(); // the head's closing brace: the items follow
    body.extend_from_slice(b",\"items\":[");
    for (i, kv) in listed.items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        object::append_stored(kv, &mut body)?;
    }
    body.extend_from_slice(b"]}");
    Ok(json_bytes_response(StatusCode::OK, body))
}
