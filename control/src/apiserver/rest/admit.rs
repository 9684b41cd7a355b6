//! The one place the REST handlers call admission ([`crate::admission`]): namespace
//! lifecycle, defaults, LimitRange, validation, ResourceQuota and ClusterIP/NodePort
//! allocation run before anything is stored; what admission took is settled (committed
//! or given back) once the store write succeeded or failed.

use axum::http::StatusCode;
use serde_json::Value;

use super::{ApiState, Req};
use crate::admission::{self, AdmissionError, Admitted, Operation};
use crate::apiserver::status::ApiError;

fn to_api(e: AdmissionError) -> ApiError {
    let code = StatusCode::from_u16(e.status_code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    ApiError::with_status(code, e.reason(), e.to_string(), e.status())
}

fn request<'a>(rq: &'a Req, op: Operation, name: &'a str) -> admission::Request<'a> {
    admission::Request {
        operation: op,
        group: rq.r.group,
        version: rq.r.version,
        kind: rq.r.kind,
        resource: rq.r.plural,
        subresource: rq.sub.as_deref(),
        namespace: if rq.r.namespaced { rq.ns() } else { None },
        name,
        dry_run: rq.dry_run(),
    }
}

/// Mutating and validating admission of a write (`old` is None on create).
pub async fn admit(
    state: &ApiState,
    rq: &Req,
    obj: &mut Value,
    old: Option<&Value>,
    name: &str,
) -> Result<Admitted, ApiError> {
    let op = if old.is_some() {
        Operation::Update
    } else {
        Operation::Create
    };
    identity_aware(state, rq, obj, old).await?;
    state
        .admission
        .admit(state.store.as_ref(), &request(rq, op, name), obj, old)
        .await
        .map_err(to_api)
}

/// The admission steps that need to know who is writing (admission proper works on the
/// object alone): RBAC escalation checks, CSR requester fields and approval rules, and the
/// ServiceAccount plugin on new pods.
async fn identity_aware(
    state: &ApiState,
    rq: &Req,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let r = rq.r;
    if r.group == "rbac.authorization.k8s.io" && rq.sub.is_none() {
        crate::apiserver::rbac::escalation::check(
            &state.authorizer,
            &rq.user,
            r.plural,
            rq.ns(),
            obj,
        )?;
    }
    if r.group == "certificates.k8s.io" && r.plural == "certificatesigningrequests" {
        match old {
            None => crate::apiserver::csr::prepare_create(obj, &rq.user)?,
            Some(old) => crate::apiserver::csr::prepare_update(
                &state.authorizer,
                &rq.user,
                rq.sub.as_deref(),
                obj,
                old,
            )?,
        }
    }
    if r.group.is_empty()
        && r.plural == "pods"
        && old.is_none()
        && rq.sub.is_none()
        && state.service_account_token_volumes
    {
        let ns = rq.ns().unwrap_or("default");
        admission::serviceaccount::admit_pod(state.store.as_ref(), ns, obj).await?;
    }
    Ok(())
}

/// Whether the object may be deleted (system namespaces may not).
pub async fn admit_delete(state: &ApiState, rq: &Req, name: &str) -> Result<(), ApiError> {
    let mut none = Value::Null;
    state
        .admission
        .admit(
            state.store.as_ref(),
            &request(rq, Operation::Delete, name),
            &mut none,
            None,
        )
        .await
        .map(|_| ())
        .map_err(to_api)
}

/// Settles what admission took: commit when the write was stored, else give it back.
pub async fn settle(state: &ApiState, admitted: &Admitted, stored: bool) {
    let store = state.store.as_ref();
    let r = if stored {
        admitted.commit(store).await
    } else {
        admitted.undo(store).await
    };
    if let Err(e) = r {
        // The allocator's repair at start and quota recalculation fix what is left over.
        tracing::warn!("settling admission (stored={stored}): {e}");
    }
}

/// Called after an object was deleted from the store (frees quota, ClusterIP, NodePorts).
pub async fn deleted(state: &ApiState, rq: &Req, obj: &Value) {
    let ns = if rq.r.namespaced { rq.ns() } else { None };
    if let Err(e) = state
        .admission
        .deleted(state.store.as_ref(), rq.r.plural, rq.r.group, ns, obj)
        .await
    {
        tracing::warn!("releasing admission state of a deleted {}: {e}", rq.r.kind);
    }
}
