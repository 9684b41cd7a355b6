//! The `scale` subresource (autoscaling/v1 Scale over `.spec.replicas`), pod `binding`
//! (what the scheduler posts) and pod `eviction` (policy/v1).

use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::object::{self, meta_mut};
use super::write::finish_update;
use super::{ApiState, Req, json_response, load};
use crate::apiserver::status::ApiError;
use crate::patch::{self, PatchType};

/// The parent's selector in label-selector syntax, as `LabelSelectorAsSelector(..).String()`
/// prints it: requirements sorted by key, `k=v` for matchLabels, `k in (a,b)`,
/// `k notin (a,b)`, `k`, `!k` for matchExpressions. ReplicationControllers' selectors are
/// plain maps.
fn selector_string(obj: &Value) -> String {
    let sel = obj.pointer("/spec/selector");
    let labels = sel
        .and_then(|s| s.get("matchLabels"))
        .or_else(|| sel.filter(|s| s.get("matchExpressions").is_none()))
        .and_then(Value::as_object);
    let mut reqs: Vec<(String, String)> = labels
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), format!("{k}={v}"))))
        .collect();
    for e in sel
        .and_then(|s| s.get("matchExpressions"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(k) = e.get("key").and_then(Value::as_str) else {
            continue;
        };
        let mut values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        values.sort_unstable();
        let text = match e.get("operator").and_then(Value::as_str) {
            Some("In") => format!("{k} in ({})", values.join(",")),
            Some("NotIn") => format!("{k} notin ({})", values.join(",")),
            Some("Exists") => k.to_string(),
            Some("DoesNotExist") => format!("!{k}"),
            _ => continue,
        };
        reqs.push((k.to_string(), text));
    }
    reqs.sort();
    reqs.into_iter()
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join(",")
}

fn to_scale(obj: &Value) -> Value {
    let m = obj.get("metadata").cloned().unwrap_or(json!({}));
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m.get("name"), "namespace": m.get("namespace"), "uid": m.get("uid"),
            "resourceVersion": m.get("resourceVersion"), "creationTimestamp": m.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector_string(obj),
        },
    })
}

pub async fn get_scale(state: &ApiState, rq: &Req) -> Result<Response, ApiError> {
    let (obj, _) = load(state, rq).await?;
    Ok(json_response(StatusCode::OK, &to_scale(&obj)))
}

/// PUT or PATCH of a Scale: only `spec.replicas` of the parent changes.
pub async fn write_scale(
    state: &ApiState,
    rq: &Req,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let ct = rq.header(header::CONTENT_TYPE).to_string();
    let is_put = !ct.contains("patch");
    for _ in 0..10 {
        let (obj, rev) = load(state, rq).await?;
        let current = to_scale(&obj);
        let scale = if is_put {
            object::decode_body(&ct, &body)?
        } else {
            let pt = PatchType::from_content_type(&ct, rq.q("fieldManager"), rq.q_bool("force"))
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            patch::apply("Scale", &pt, &current, &body)
                .map_err(|e| ApiError::bad_request(e.to_string()))?
        };
        let wanted = scale
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        if let Some(w) = wanted
            && *w != rev.to_string()
        {
            return Err(ApiError::conflict(rq.r.group, rq.r.plural, rq.name()));
        }
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::invalid(
                "autoscaling",
                "Scale",
                rq.name(),
                vec![crate::apiserver::status::Cause {
                    reason: "FieldValueInvalid".into(),
                    message: format!(
                        "Invalid value: {replicas}: must be greater than or equal to 0"
                    ),
                    field: "spec.replicas".into(),
                }],
            ));
        }
        let mut next = obj.clone();
        next["spec"]["replicas"] = json!(replicas);
        let manager = rq.field_manager();
        // The parent's main-resource rules apply (status preserved, generation bumped).
        let parent = Req {
            r: rq.r,
            namespace: rq.namespace.clone(),
            name: rq.name.clone(),
            sub: None,
            query: rq.query.clone(),
            headers: rq.headers.clone(),
            user: rq.user.clone(),
        };
        match finish_update(state, &parent, next, &obj, rev, Some(&manager)).await {
            Ok(_) => {
                let (after, _) = load(state, rq).await?;
                return Ok(json_response(StatusCode::OK, &to_scale(&after)));
            }
            Err(e) if e.reason == "Conflict" && wanted.is_none() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(rq.r.group, rq.r.plural, rq.name()))
}

/// `POST pods/<name>/binding`: sets `spec.nodeName` once (409 if already bound).
pub async fn binding(state: &ApiState, rq: &Req, body: bytes::Bytes) -> Result<Response, ApiError> {
    let b = object::decode_body(rq.header(header::CONTENT_TYPE), &body)?;
    let node = b
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "",
                "Binding",
                rq.name(),
                vec![crate::apiserver::status::Cause {
                    reason: "FieldValueRequired".into(),
                    message: "Required value".into(),
                    field: "target.name".into(),
                }],
            )
        })?
        .to_string();
    // A CAS on the pod as kube-apiserver's GuaranteedUpdate does: a status write racing
    // the binding (the scheduler's own Unschedulable condition, say) is retried, not a 409.
    for attempt in 0..5 {
        let (pod, rev) = load(state, rq).await?;
        if pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
        {
            let mut e = ApiError::conflict("", "pods", rq.name());
            e.message = format!(
                "Operation cannot be fulfilled on pods/binding \"{}\": pod {} is already assigned to node {:?}",
                rq.name(),
                rq.name(),
                pod.pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            );
            return Err(e);
        }
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::conflict("", "pods", rq.name()));
        }
        let mut next = pod.clone();
        next["spec"]["nodeName"] = json!(node);
        set_scheduled(&mut next);
        if rq.dry_run() {
            break;
        }
        meta_mut(&mut next).remove("resourceVersion");
        match state
            .store
            .update(&rq.key(), object::to_stored(&next)?, rev)
            .await
        {
            Ok(_) => break,
            Err(crate::store::StoreError::Conflict { .. }) if attempt < 4 => continue,
            Err(crate::store::StoreError::Conflict { .. }) => {
                return Err(ApiError::conflict("", "pods", rq.name()));
            }
            Err(other) => return Err(other.into()),
        }
    }
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// `PodScheduled=True`, as kube-apiserver's binding sets it (replacing an `Unschedulable`).
fn set_scheduled(pod: &mut Value) {
    let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null,
        "lastTransitionTime": object::now_rfc3339()});
    let Some(status) = pod
        .as_object_mut()
        .map(|o| o.entry("status").or_insert_with(|| json!({})))
    else {
        return;
    };
    if !status.is_object() {
        *status = json!({});
    }
    let conds = &mut status["conditions"];
    if !conds.is_array() {
        *conds = json!([]);
    }
    if let Some(list) = conds.as_array_mut() {
        list.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
        list.push(cond);
    }
}

/// `POST pods/<name>/eviction`: deletes the pod (PodDisruptionBudgets are not served, so
/// nothing can refuse an eviction).
pub async fn eviction(
    state: &ApiState,
    rq: &Req,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let ev = if body.is_empty() {
        json!({})
    } else {
        object::decode_body(rq.header(header::CONTENT_TYPE), &body)?
    };
    if let Some(n) = ev.pointer("/metadata/name").and_then(Value::as_str)
        && n != rq.name()
    {
        return Err(ApiError::bad_request(format!(
            "name in URL does not match name in Eviction object ({n} != {})",
            rq.name()
        )));
    }
    let opts = ev.get("deleteOptions").cloned().unwrap_or(json!({}));
    let body = bytes::Bytes::from(serde_json::to_vec(&opts).unwrap_or_default());
    let parent = Req {
        r: rq.r,
        namespace: rq.namespace.clone(),
        name: rq.name.clone(),
        sub: None,
        query: rq.query.clone(),
        headers: rq.headers.clone(),
        user: rq.user.clone(),
    };
    super::delete::delete(state, &parent, body).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_selectors_print_as_label_selectors() {
        let rc = json!({"spec": {"selector": {"b": "2", "a": "1"}}});
        assert_eq!(selector_string(&rc), "a=1,b=2");
        let d = json!({"spec": {"selector": {"matchLabels": {"app": "web"}, "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["fe", "be"]},
            {"key": "canary", "operator": "DoesNotExist"},
            {"key": "zone", "operator": "Exists"},
            {"key": "env", "operator": "NotIn", "values": ["dev"]},
        ]}}});
        assert_eq!(
            selector_string(&d),
            "app=web,!canary,env notin (dev),tier in (be,fe),zone"
        );
        let only = json!({"spec": {"selector": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}}});
        assert_eq!(selector_string(&only), "a");
    }
}
