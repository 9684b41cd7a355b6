//! Reading and CAS-writing JSON objects in the store, for the admission steps that keep
//! state there (quota usage, allocations) or consult it (namespaces, limit ranges).

use serde_json::Value;

use crate::store::{Revision, Store, StoreError};

/// `/registry/<resource>/<ns>/` or `/registry/<resource>/` (cluster-scoped).
pub fn prefix(resource: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("/registry/{resource}/{ns}/"),
        None => format!("/registry/{resource}/"),
    }
}

pub fn key(resource: &str, namespace: Option<&str>, name: &str) -> String {
    format!("{}{name}", prefix(resource, namespace))
}

fn decode(key: &str, bytes: &[u8]) -> Result<Value, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Internal(format!("{key}: stored value is not JSON: {e}")))
}

/// The object at `key` and its mod revision.
pub async fn get(store: &dyn Store, key: &str) -> Result<Option<(Value, Revision)>, StoreError> {
    match store.get(key).await? {
        Some(kv) => Ok(Some((decode(key, &kv.value)?, kv.mod_revision))),
        None => Ok(None),
    }
}

/// Every object under `prefix`, with its key and mod revision.
pub async fn list(
    store: &dyn Store,
    prefix: &str,
) -> Result<Vec<(String, Value, Revision)>, StoreError> {
    let page = store.list(prefix, None, 0, 0).await?;
    page.items
        .into_iter()
        .map(|kv| Ok((kv.key.clone(), decode(&kv.key, &kv.value)?, kv.mod_revision)))
        .collect()
}

pub fn encode(obj: &Value) -> Vec<u8> {
    // A Value always serializes.
    serde_json::to_vec(obj).unwrap_or_default()
}
