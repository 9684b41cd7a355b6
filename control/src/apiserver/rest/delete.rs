//! Deletion as kube-apiserver does it: preconditions (uid, resourceVersion), graceful
//! deletion of pods bound to a node (deletionTimestamp + grace period, the node agent
//! finishes it), finalizers (the object stays, marked, until they are removed),
//! propagationPolicy (Foreground / Orphan add their finalizers for the garbage collector),
//! namespace termination, and deletecollection.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::object::{self, meta_mut};
use super::selector::{FieldSelector, LabelSelector};
use super::{ApiState, Req, admit, json_response};
use crate::apiserver::status::ApiError;
use crate::store::StoreError;

#[derive(Default)]
struct DeleteOptions {
    grace: Option<i64>,
    propagation: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
}

fn options(rq: &Req, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let mut o = DeleteOptions::default();
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v = object::decode_body(rq.header(axum::http::header::CONTENT_TYPE), body)?;
        o.grace = v.get("gracePeriodSeconds").and_then(Value::as_i64);
        o.propagation = v
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_string);
        if o.propagation.is_none() {
            match v.get("orphanDependents").and_then(Value::as_bool) {
                Some(true) => o.propagation = Some("Orphan".into()),
                Some(false) => o.propagation = Some("Background".into()),
                None => {}
            }
        }
        o.uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        o.resource_version = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    if let Some(g) = rq.q("gracePeriodSeconds") {
        o.grace = Some(g.parse().map_err(|_| {
            ApiError::bad_request(format!("gracePeriodSeconds {g:?} is not a number"))
        })?);
    }
    if let Some(p) = rq.q("propagationPolicy") {
        o.propagation = Some(p.to_string());
    }
    if let Some(p) = &o.propagation
        && !matches!(p.as_str(), "Background" | "Foreground" | "Orphan")
    {
        return Err(ApiError::bad_request(format!(
            "propagationPolicy {p:?} is invalid: want Background, Foreground or Orphan"
        )));
    }
    Ok(o)
}

pub async fn delete(state: &ApiState, rq: &Req, body: bytes::Bytes) -> Result<Response, ApiError> {
    let opts = options(rq, &body)?;
    let (code, obj) = delete_one(state, rq, rq.name(), &opts).await?;
    Ok(json_response(code, &obj))
}

/// Deletes (or marks for deletion) one object; returns the HTTP code and the object.
async fn delete_one(
    state: &ApiState,
    rq: &Req,
    name: &str,
    opts: &DeleteOptions,
) -> Result<(StatusCode, Value), ApiError> {
    let r = rq.r;
    let key = r.key(rq.ns(), name);
    admit::admit_delete(state, rq, name).await?;
    for _ in 0..10 {
        let kv = state
            .store
            .get(&key)
            .await?
            .ok_or_else(|| ApiError::not_found(r.group, r.plural, name))?;
        let mut obj = object::read(rq.r, &kv)?;
        if let Some(uid) = &opts.uid {
            let actual = object::meta_str(&obj, "uid").unwrap_or("");
            if uid != actual {
                let mut e = ApiError::conflict(r.group, r.plural, name);
                e.message = format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                );
                return Err(e);
            }
        }
        if let Some(rv) = &opts.resource_version
            && *rv != kv.mod_revision.to_string()
        {
            let mut e = ApiError::conflict(r.group, r.plural, name);
            e.message = format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                kv.mod_revision
            );
            return Err(e);
        }
        let mut finalizers: Vec<Value> = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let add = match opts.propagation.as_deref() {
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            _ => None,
        };
        if let Some(f) = add
            && !finalizers.iter().any(|x| x == f)
        {
            finalizers.push(json!(f));
        }
        let already = obj.pointer("/metadata/deletionTimestamp").is_some();
        let grace = graceful_seconds(&obj, r.kind, opts.grace);
        let is_namespace = r.kind == "Namespace";
        // A namespace with spec.finalizers waits for them (the namespace controller empties
        // it, then removes `kubernetes` through namespaces/NAME/finalize).
        let ns_finalizers = is_namespace
            && obj
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
        let mark = ns_finalizers || !finalizers.is_empty() || grace > 0;
        if !mark || (already && finalizers.is_empty() && opts.grace == Some(0)) {
            if rq.dry_run() {
                return Ok((StatusCode::OK, obj));
            }
            match state.store.delete(&key, Some(kv.mod_revision)).await {
                Ok((_, last)) => {
                    let gone = object::read(rq.r, &last)?;
                    admit::deleted(state, rq, &gone).await;
                    return Ok((StatusCode::OK, gone));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => {
                    return Err(ApiError::not_found(r.group, r.plural, name));
                }
                Err(e) => return Err(e.into()),
            }
        }
        if already {
            // Deletion is already under way; a second delete changes nothing more.
            return Ok((StatusCode::ACCEPTED, obj));
        }
        {
            let when = jiff::Timestamp::now()
                .checked_add(jiff::SignedDuration::from_secs(grace))
                .unwrap_or_else(|_| jiff::Timestamp::now())
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            let m = meta_mut(&mut obj);
            m.insert("deletionTimestamp".into(), Value::String(when));
            m.insert("deletionGracePeriodSeconds".into(), json!(grace));
            if !finalizers.is_empty() {
                m.insert("finalizers".into(), Value::Array(finalizers));
            }
        }
        if is_namespace {
            obj["status"]["phase"] = json!("Terminating");
        }
        if rq.dry_run() {
            return Ok((StatusCode::ACCEPTED, obj));
        }
        match state
            .store
            .update(&key, object::to_storage_bytes(rq.r, &obj)?, kv.mod_revision)
            .await
        {
            Ok(rev) => {
                meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
                return Ok((StatusCode::ACCEPTED, obj));
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(r.group, r.plural, name))
}

/// Seconds of graceful deletion: only pods bound to a node (their agent must stop them)
/// that are not already finished get a grace period.
fn graceful_seconds(obj: &Value, kind: &str, asked: Option<i64>) -> i64 {
    if kind != "Pod" {
        return 0;
    }
    let bound = obj
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        obj.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if !bound || finished {
        return 0;
    }
    asked
        .or_else(|| {
            obj.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30)
        .max(0)
}

pub async fn delete_collection(
    state: &ApiState,
    rq: &Req,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let opts = options(rq, &body)?;
    let labels =
        LabelSelector::parse(rq.q("labelSelector").unwrap_or("")).map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(rq.q("fieldSelector").unwrap_or(""), rq.r.kind)
        .map_err(ApiError::bad_request)?;
    let page = state
        .store
        .list(&rq.r.list_prefix(rq.ns()), None, 0, 0)
        .await?;
    let mut items = Vec::new();
    for kv in &page.items {
        let obj = object::read(rq.r, kv)?;
        if !labels.matches(&obj) || !fields.matches(&obj) {
            continue;
        }
        let Some(name) = object::meta_str(&obj, "name").map(str::to_string) else {
            continue;
        };
        match delete_one(state, rq, &name, &opts).await {
            Ok((_, o)) => items.push(o),
            Err(e) if e.reason == "NotFound" => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": rq.r.list_kind,
            "apiVersion": rq.r.api_version(),
            "metadata": {"resourceVersion": page.revision.to_string()},
            "items": items,
        }),
    ))
}
