//! Create, update (PUT) and patch: decode, validate, fill the server-owned metadata, admit,
//! record managedFields, then write with compare-and-swap on the revision (409 when the
//! client's resourceVersion is stale). Nothing is stored unless every step passed.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::Value;

use super::object::{self, meta_mut, meta_str};
use super::{ApiState, Req, admit, json_response, load};
use crate::apiserver::status::ApiError;
use crate::patch::{self, Operation, PatchType};
use crate::store::StoreError;

/// Applies `fieldValidation`: Strict rejects unknown fields (400), Warn (the default)
/// returns them as `Warning` headers, Ignore drops them silently.
pub fn field_validation(rq: &Req, obj: &Value) -> Result<Vec<String>, ApiError> {
    let mode = rq.q("fieldValidation").unwrap_or("Warn");
    if mode == "Ignore" {
        return Ok(Vec::new());
    }
    if !matches!(mode, "Strict" | "Warn") {
        return Err(ApiError::bad_request(format!(
            "fieldValidation {mode:?} is invalid: want Ignore, Warn or Strict"
        )));
    }
    let unknown: Vec<String> = object::unknown_fields(rq.r, obj)
        .into_iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    if mode == "Strict" && !unknown.is_empty() {
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            unknown.join(", ")
        )));
    }
    Ok(unknown)
}

fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// Everything but metadata and status: a change here bumps `metadata.generation`.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

fn strip_for_compare(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(Value::Object(m)) = o.get_mut("metadata") {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    o
}

pub async fn create(state: &ApiState, rq: &Req, body: bytes::Bytes) -> Result<Response, ApiError> {
    let mut obj = object::decode_body(rq.header(header::CONTENT_TYPE), &body)?;
    object::check_kind(rq.r, &mut obj)?;
    let warnings = field_validation(rq, &obj)?;
    let manager = rq.field_manager();
    let (resp, _) = finish_create(state, rq, obj, Some(&manager)).await?;
    Ok(with_warnings(resp, &warnings))
}

/// Fills server-owned metadata, admits and stores a new object. `manager` is None for
/// server-side apply (which wrote managedFields itself).
pub async fn finish_create(
    state: &ApiState,
    rq: &Req,
    mut obj: Value,
    manager: Option<&str>,
) -> Result<(Response, Value), ApiError> {
    let r = rq.r;
    if r.namespaced {
        let ns = rq.ns().ok_or_else(|| {
            ApiError::bad_request(format!("{} must be created in a namespace", r.plural))
        })?;
        match meta_str(&obj, "namespace") {
            Some(b) if b != ns => {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({b}) does not match the namespace sent on the request ({ns})"
                )));
            }
            _ => {
                meta_mut(&mut obj).insert("namespace".into(), Value::String(ns.to_string()));
            }
        }
    } else {
        meta_mut(&mut obj).remove("namespace");
    }
    if let Some(url_name) = rq.name.as_deref() {
        match meta_str(&obj, "name") {
            Some(n) if n != url_name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({url_name})"
                )));
            }
            _ => {
                meta_mut(&mut obj).insert("name".into(), Value::String(url_name.into()));
            }
        }
    }
    let generate = meta_str(&obj, "generateName").map(str::to_string);
    let fixed_name = meta_str(&obj, "name").map(str::to_string);
    if fixed_name.is_none() && generate.is_none() {
        return Err(ApiError::invalid(
            r.group,
            r.kind,
            "",
            vec![crate::apiserver::status::Cause {
                reason: "FieldValueRequired".into(),
                message: "Required value: name or generateName is required".into(),
                field: "metadata.name".into(),
            }],
        ));
    }
    {
        let m = meta_mut(&mut obj);
        for k in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            m.remove(k);
        }
        m.insert(
            "uid".into(),
            Value::String(uuid::Uuid::new_v4().to_string()),
        );
        m.insert(
            "creationTimestamp".into(),
            Value::String(object::now_rfc3339()),
        );
        m.insert("generation".into(), Value::from(1));
    }
    if r.status_is_subresource()
        && r.kind != "Namespace"
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    for attempt in 0..8 {
        let mut candidate = obj.clone();
        let name = match (&fixed_name, &generate) {
            (Some(n), _) => n.clone(),
            (None, Some(g)) => object::generated_name(g),
            (None, None) => unreachable!("checked above"),
        };
        meta_mut(&mut candidate).insert("name".into(), Value::String(name.clone()));
        let admitted = admit::admit(state, rq, &mut candidate, None, &name).await?;
        if let Some(m) = manager {
            patch::update_managed_fields(r.kind, None, &mut candidate, m, Operation::Update, None);
        }
        let key = r.key(rq.ns(), &name);
        if rq.dry_run() {
            admit::settle(state, &admitted, false).await;
            return Ok((json_response(StatusCode::CREATED, &candidate), candidate));
        }
        let written = match object::to_storage_bytes(rq.r, &candidate) {
            Ok(bytes) => state.store.create(&key, bytes).await,
            Err(e) => {
                admit::settle(state, &admitted, false).await;
                return Err(e);
            }
        };
        admit::settle(state, &admitted, written.is_ok()).await;
        match written {
            Ok(rev) => {
                meta_mut(&mut candidate)
                    .insert("resourceVersion".into(), Value::String(rev.to_string()));
                return Ok((json_response(StatusCode::CREATED, &candidate), candidate));
            }
            Err(StoreError::AlreadyExists { .. }) if fixed_name.is_none() && attempt < 7 => {
                continue;
            }
            Err(StoreError::AlreadyExists { .. }) => {
                return Err(ApiError::already_exists(r.group, r.plural, &name));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::internal("could not generate a unique name"))
}

pub async fn update(state: &ApiState, rq: &Req, body: bytes::Bytes) -> Result<Response, ApiError> {
    let mut obj = object::decode_body(rq.header(header::CONTENT_TYPE), &body)?;
    object::check_kind(rq.r, &mut obj)?;
    let warnings = field_validation(rq, &obj)?;
    match meta_str(&obj, "name") {
        Some(n) if n != rq.name() => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({})",
                rq.name()
            )));
        }
        _ => {
            meta_mut(&mut obj).insert("name".into(), Value::String(rq.name().into()));
        }
    }
    let wanted = object::parse_rv(meta_str(&obj, "resourceVersion").unwrap_or(""))?;
    let manager = rq.field_manager();
    loop {
        let (old, rev) = load(state, rq).await?;
        if wanted.is_some_and(|w| w != rev) {
            return Err(ApiError::conflict(rq.r.group, rq.r.plural, rq.name()));
        }
        match finish_update(state, rq, obj.clone(), &old, rev, Some(&manager)).await {
            // An unconditional PUT (no resourceVersion) retries against the newer object.
            Err(e) if wanted.is_none() && e.reason == "Conflict" => continue,
            other => return other.map(|r| with_warnings(r, &warnings)),
        }
    }
}

/// Merges server-owned fields from `old`, admits, and writes with CAS on `rev`.
pub async fn finish_update(
    state: &ApiState,
    rq: &Req,
    mut obj: Value,
    old: &Value,
    rev: i64,
    manager: Option<&str>,
) -> Result<Response, ApiError> {
    let r = rq.r;
    if rq.sub.as_deref() == Some("finalize") {
        // namespaces/NAME/finalize changes spec.finalizers and nothing else.
        let mut next = old.clone();
        next["spec"]["finalizers"] = obj
            .pointer("/spec/finalizers")
            .cloned()
            .unwrap_or(Value::Array(Vec::new()));
        obj = next;
    }
    // certificatesigningrequests/approval is a status path too (only conditions change;
    // see apiserver::csr).
    let status_only = matches!(rq.sub.as_deref(), Some("status" | "approval"));
    if status_only {
        // The status subresource changes status only (and nothing else in the object).
        let mut next = old.clone();
        match obj.get("status") {
            Some(s) => next["status"] = s.clone(),
            None => {
                if let Some(m) = next.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        if let Some(mf) = obj.pointer("/metadata/managedFields") {
            meta_mut(&mut next).insert("managedFields".into(), mf.clone());
        }
        obj = next;
    } else if r.status_is_subresource() {
        match old.get("status") {
            Some(s) => obj["status"] = s.clone(),
            None => {
                if let Some(m) = obj.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    {
        let old_meta = old.get("metadata").cloned().unwrap_or(Value::Null);
        let m = meta_mut(&mut obj);
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "name",
        ] {
            match old_meta.get(k) {
                Some(v) => m.insert(k.into(), v.clone()),
                None => m.remove(k),
            };
        }
        m.remove("selfLink");
        m.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
    let old_gen = old
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let generation = if spec_part(&obj) != spec_part(old) {
        old_gen + 1
    } else {
        old_gen
    };
    meta_mut(&mut obj).insert("generation".into(), Value::from(generation));
    let admitted = admit::admit(state, rq, &mut obj, Some(old), rq.name()).await?;
    if strip_for_compare(&obj) == strip_for_compare(old) || rq.dry_run() {
        admit::settle(state, &admitted, false).await;
        // A no-op write keeps the revision, as kube-apiserver does.
        let shown = if rq.dry_run() { &obj } else { old };
        return Ok(json_response(StatusCode::OK, shown));
    }
    if let Some(m) = manager {
        patch::update_managed_fields(
            r.kind,
            Some(old),
            &mut obj,
            m,
            Operation::Update,
            rq.sub.as_deref(),
        );
    }
    let key = rq.key();
    // A namespace also waits for its spec.finalizers (the namespace controller's `kubernetes`).
    let finalized = obj.pointer("/metadata/deletionTimestamp").is_some()
        && ["/metadata/finalizers", "/spec/finalizers"]
            .iter()
            .all(|p| {
                obj.pointer(p)
                    .and_then(Value::as_array)
                    .is_none_or(|f| f.is_empty())
            });
    let written = match object::to_storage_bytes(rq.r, &obj) {
        Ok(bytes) => state.store.update(&key, bytes, rev).await,
        Err(e) => {
            admit::settle(state, &admitted, false).await;
            return Err(e);
        }
    };
    admit::settle(state, &admitted, written.is_ok()).await;
    match written {
        Ok(new_rev) => {
            meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(new_rev.to_string()));
            if finalized {
                // The last finalizer is gone from an object being deleted: delete it now.
                if let Ok((_, kv)) = state.store.delete(&key, Some(new_rev)).await {
                    admit::deleted(state, rq, &object::read(rq.r, &kv)?).await;
                }
            }
            Ok(json_response(StatusCode::OK, &obj))
        }
        Err(StoreError::Conflict { .. }) => Err(ApiError::conflict(r.group, r.plural, rq.name())),
        Err(StoreError::NotFound { .. }) => Err(ApiError::not_found(r.group, r.plural, rq.name())),
        Err(e) => Err(e.into()),
    }
}

fn patch_error(e: patch::PatchError) -> ApiError {
    let code = StatusCode::from_u16(e.status_code()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut err = ApiError::new(code, e.reason(), e.to_string());
    err.causes = e
        .causes()
        .into_iter()
        .map(|c| crate::apiserver::status::Cause {
            reason: c["reason"].as_str().unwrap_or_default().into(),
            message: c["message"].as_str().unwrap_or_default().into(),
            field: c["field"].as_str().unwrap_or_default().into(),
        })
        .collect();
    err
}

pub async fn patch(state: &ApiState, rq: &Req, body: bytes::Bytes) -> Result<Response, ApiError> {
    let pt = PatchType::from_content_type(
        rq.header(header::CONTENT_TYPE),
        rq.q("fieldManager"),
        rq.q_bool("force"),
    )
    .map_err(patch_error)?;
    let is_apply = matches!(pt, PatchType::Apply { .. });
    let manager = rq.field_manager();
    for _ in 0..10 {
        let current = state.store.get(&rq.key()).await?;
        let Some(kv) = current else {
            if is_apply && rq.sub.is_none() {
                // Server-side apply creates what does not exist yet.
                let mut obj =
                    patch::apply(rq.r.kind, &pt, &Value::Null, &body).map_err(patch_error)?;
                object::check_kind(rq.r, &mut obj)?;
                let warnings = field_validation(rq, &obj)?;
                let (resp, _) = finish_create(state, rq, obj, None).await?;
                return Ok(with_warnings(resp, &warnings));
            }
            return Err(ApiError::not_found(rq.r.group, rq.r.plural, rq.name()));
        };
        let old = object::read(rq.r, &kv)?;
        // The patch applies to the object without its resourceVersion, so a
        // resourceVersion in the result can only have come from the patch: that one is a
        // precondition; without it a lost race is retried against the newer object.
        let mut base = old.clone();
        if let Some(m) = base.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let mut obj = patch::apply(rq.r.kind, &pt, &base, &body).map_err(patch_error)?;
        object::check_kind(rq.r, &mut obj)?;
        let warnings = field_validation(rq, &obj)?;
        let wanted = meta_str(&obj, "resourceVersion").map(str::to_string);
        if let Some(w) = &wanted
            && *w != kv.mod_revision.to_string()
        {
            return Err(ApiError::conflict(rq.r.group, rq.r.plural, rq.name()));
        }
        let m = (!is_apply).then_some(manager.as_str());
        match finish_update(state, rq, obj, &old, kv.mod_revision, m).await {
            Err(e) if e.reason == "Conflict" && wanted.is_none() && e.causes.is_empty() => continue,
            other => return other.map(|r| with_warnings(r, &warnings)),
        }
    }
    Err(ApiError::conflict(rq.r.group, rq.r.plural, rq.name()))
}
