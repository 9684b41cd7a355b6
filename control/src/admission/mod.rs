//! Admission: what kube-apiserver does to an object between decoding it and storing it.
//!
//! The API server's write path calls one thing, [`Admission::admit`]`(store, &Request,
//! &mut obj, old)` (`Admission::default()` uses the service CIDR 10.96.0.0/12 and
//! NodePorts 30000-32767; [`allocator::Allocators::new`] for others). It runs, in
//! kube-apiserver's order: namespace lifecycle ([`namespace`]: 404 for a missing
//! namespace, 403 for a terminating one or for deleting a system namespace), [`default`]s
//! (set `metadata.uid` before: Job selectors use it), LimitRange defaults and bounds for
//! new pods ([`limitrange`]), [`validate`] (422 with field causes, immutable fields on
//! update), ResourceQuota ([`quota`]: usage kept in each quota's `status.used`, charged
//! with CAS; 403 `exceeded quota: ...`), and ClusterIP / NodePort allocation
//! ([`allocator`]). Then the caller stores the object and calls [`Admitted::commit`], or
//! [`Admitted::undo`] if the store write failed (it gives back quota and addresses). After
//! a delete is stored: [`Admission::deleted`]. At server start: `allocators.repair(store)`
//! removes allocations a crash left without a Service, and [`quota::reconcile`] recounts
//! quota usage a crash left charged for objects never stored.
//!
//! Errors are [`AdmissionError`] (or [`Invalid`] from the pure functions); each knows its
//! HTTP code and builds its Status with `status()`.
//!
//! Modules: [`chain`] the order above; [`field`] field paths and causes; [`defaults`];
//! [`validation`]; [`namespace`] lifecycle; [`quantity`] resource quantities; [`quota`]
//! ResourceQuota; [`limitrange`] LimitRange; [`allocator`] ClusterIP and NodePort
//! allocation; [`stored`] JSON get/list helpers over the store; [`serviceaccount`] the
//! ServiceAccount plugin (token volume; called by the API server, which knows the pod is new).

pub mod allocator;
pub mod chain;
pub mod defaults;
pub mod field;
pub mod limitrange;
pub mod namespace;
pub mod quantity;
pub mod quota;
pub mod serviceaccount;
pub mod stored;
pub mod validation;

use serde_json::{Value, json};

pub use chain::{Admission, Admitted, Operation, Request};
pub use defaults::default;
pub use field::{Cause, FieldPath, Invalid};
pub use validation::validate;

use crate::store::StoreError;

/// Why admission refused a write, other than field validation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdmissionError {
    /// 422.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// 403: `pods "p2" is forbidden: exceeded quota: ...`.
    #[error("{message}")]
    Forbidden {
        resource: String,
        name: String,
        message: String,
        /// A `details.causes` entry's reason (`NamespaceTerminating`), if any.
        cause: Option<String>,
    },
    /// 404: the namespace does not exist.
    #[error("{resource} {name:?} not found")]
    NotFound { resource: String, name: String },
    /// 409: a conflict that retrying may solve (quota object raced too often).
    #[error("{0}")]
    Conflict(String),
    /// The store failed (500, or 503 if unavailable).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AdmissionError {
    pub fn forbidden(resource: &str, name: &str, why: &str) -> AdmissionError {
        AdmissionError::Forbidden {
            resource: resource.to_string(),
            name: name.to_string(),
            message: format!("{resource} {name:?} is forbidden: {why}"),
            cause: None,
        }
    }

    pub fn status_code(&self) -> u16 {
        match self {
            AdmissionError::Invalid(_) => 422,
            AdmissionError::Forbidden { .. } => 403,
            AdmissionError::NotFound { .. } => 404,
            AdmissionError::Conflict(_) => 409,
            AdmissionError::Store(StoreError::Unavailable(_)) => 503,
            AdmissionError::Store(_) => 500,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            AdmissionError::Invalid(_) => "Invalid",
            AdmissionError::Forbidden { .. } => "Forbidden",
            AdmissionError::NotFound { .. } => "NotFound",
            AdmissionError::Conflict(_) => "Conflict",
            AdmissionError::Store(StoreError::Unavailable(_)) => "ServiceUnavailable",
            AdmissionError::Store(_) => "InternalError",
        }
    }

    /// The Status object for the response body.
    pub fn status(&self) -> Value {
        if let AdmissionError::Invalid(inv) = self {
            return inv.status();
        }
        let mut details = serde_json::Map::new();
        match self {
            AdmissionError::Forbidden {
                resource,
                name,
                message,
                cause,
            } => {
                details.insert("name".into(), json!(name));
                details.insert("kind".into(), json!(resource));
                if let Some(reason) = cause {
                    details.insert(
                        "causes".into(),
                        json!([{"reason": reason, "message": message, "field": "metadata.namespace"}]),
                    );
                }
            }
            AdmissionError::NotFound { resource, name } => {
                details.insert("name".into(), json!(name));
                details.insert("kind".into(), json!(resource));
            }
            _ => {}
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.status_code(),
        });
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

/// The API group of an `apiVersion` (`apps/v1` → `apps`, `v1` → ``).
pub fn group_of(api_version: &str) -> &str {
    api_version
        .rsplit_once('/')
        .map(|(g, _)| g)
        .unwrap_or_default()
}
