//! Namespace lifecycle (the NamespaceLifecycle admission plugin): nothing is created in a
//! namespace that does not exist or is being terminated, and the system namespaces are
//! never deleted.

use serde_json::Value;

use super::{AdmissionError, Operation, stored};
use crate::store::Store;

/// Namespaces the API server creates at start.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Namespaces that may never be deleted (kube-apiserver's immortal namespaces;
/// `kube-node-lease` is only recreated).
pub const IMMORTAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// Whether a Namespace object is being terminated.
pub fn is_terminating(ns: &Value) -> bool {
    ns.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
        || ns.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating")
}

/// Checks a write of `resource/name` in `namespace` (None for cluster-scoped objects).
pub async fn check_write(
    store: &dyn Store,
    operation: Operation,
    resource: &str,
    namespace: Option<&str>,
    name: &str,
) -> Result<(), AdmissionError> {
    if resource == "namespaces" {
        if operation == Operation::Delete && IMMORTAL_NAMESPACES.contains(&name) {
            return Err(AdmissionError::forbidden(
                "namespaces",
                name,
                "this namespace may not be deleted",
            ));
        }
        return Ok(());
    }
    let (Some(ns), Operation::Create) = (namespace, operation) else {
        return Ok(());
    };
    match stored::get(store, &stored::key("namespaces", None, ns)).await? {
        None => Err(AdmissionError::NotFound {
            resource: "namespaces".into(),
            name: ns.to_string(),
        }),
        Some((obj, _)) if is_terminating(&obj) => Err(AdmissionError::Forbidden {
            resource: resource.to_string(),
            name: name.to_string(),
            message: format!(
                "{resource} {name:?} is forbidden: unable to create new content in namespace \
                 {ns} because it is being terminated"
            ),
            cause: Some("NamespaceTerminating".into()),
        }),
        Some(_) => Ok(()),
    }
}
