//! Versions that share one storage: an object is stored in one form (the storage version)
//! and converted on the way in and out for every other version served over it, as
//! kube-apiserver does through its internal types.
//!
//! Today that is `events.k8s.io/v1` Event over core/v1 Event: both APIs see the same
//! Events (a recorder writing either one is read by both `kubectl get events` and
//! `kubectl events`), with the field mapping of Kubernetes' `pkg/apis/events/v1`
//! conversion: `regarding` ↔ `involvedObject`, `note` ↔ `message`, `reportingController`
//! ↔ `reportingComponent`, `deprecatedSource` ↔ `source`, `deprecatedFirstTimestamp` /
//! `deprecatedLastTimestamp` / `deprecatedCount` ↔ `firstTimestamp` / `lastTimestamp` /
//! `count`. Every other field keeps its name.

use serde_json::{Map, Value};

use super::registry::{self, ResourceInfo};
use crate::store::{Store, StoreError};

/// (events.k8s.io/v1 name, core/v1 name) of the renamed Event fields.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// Whether objects of `r` are stored in another version's form.
pub fn converted(r: &ResourceInfo) -> bool {
    r.group == "events.k8s.io" && r.kind == "Event"
}

/// The object in its storage form, from the form of `r`'s version.
pub fn to_storage(r: &ResourceInfo, obj: Value) -> Value {
    if !converted(r) {
        return obj;
    }
    rename(obj, "v1", EVENT_FIELDS.iter().map(|(ext, st)| (*ext, *st)))
}

/// The object in the form of `r`'s version, from its storage form.
pub fn from_storage(r: &ResourceInfo, obj: Value) -> Value {
    if !converted(r) {
        return obj;
    }
    rename(
        obj,
        "events.k8s.io/v1",
        EVENT_FIELDS.iter().map(|(ext, st)| (*st, *ext)),
    )
}

/// Renames top-level fields (from → to) and sets `apiVersion`. Zero values are dropped
/// the way the typed conversion's `omitempty` drops them (`count: 0`, empty `source`), so
/// a round trip through the other version leaves the object as it was.
fn rename<'a>(
    obj: Value,
    api_version: &str,
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
) -> Value {
    let Value::Object(mut m) = obj else {
        return obj;
    };
    let mut moved = Map::new();
    for (from, to) in pairs {
        if let Some(v) = m.remove(from)
            && !is_zero(&v)
        {
            moved.insert(to.to_string(), v);
        }
    }
    m.extend(moved);
    if m.contains_key("apiVersion") {
        m.insert("apiVersion".into(), Value::String(api_version.into()));
    }
    Value::Object(m)
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Number(n) => n.as_i64() == Some(0),
        Value::String(s) => s.is_empty(),
        Value::Object(o) => o.values().all(is_zero),
        _ => false,
    }
}

/// Where hull before shared storage kept events.k8s.io/v1 Events.
const LEGACY_EVENTS_V1_PREFIX: &str = "/registry/events.k8s.io/events/";

/// Moves events.k8s.io/v1 Events that an older hull stored apart into the shared core
/// storage, so an upgrade loses none. Each is created under `/registry/events/` (kept if
/// one already exists there) before its old key is deleted. Returns how many moved.
pub async fn migrate_legacy_events(store: &dyn Store) -> Result<usize, StoreError> {
    let Some(events) = registry::find("events.k8s.io", "v1", "events") else {
        return Ok(0);
    };
    let page = store.list(LEGACY_EVENTS_V1_PREFIX, None, 0, 0).await?;
    let mut moved = 0;
    for kv in &page.items {
        let Ok(obj) = serde_json::from_slice::<Value>(&kv.value) else {
            tracing::warn!(key = %kv.key, "legacy events.k8s.io Event is not JSON; left in place");
            continue;
        };
        let rest = &kv.key[LEGACY_EVENTS_V1_PREFIX.len()..];
        let bytes = serde_json::to_vec(&to_storage(events, obj)).unwrap_or_default();
        match store
            .create(&format!("/registry/events/{rest}"), bytes)
            .await
        {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        store.delete(&kv.key, Some(kv.mod_revision)).await?;
        moved += 1;
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry;
    use serde_json::json;

    fn resource(group: &str) -> &'static ResourceInfo {
        registry::all()
            .iter()
            .find(|r| r.kind == "Event" && r.group == group)
            .expect("Event is served")
    }

    #[test]
    fn events_v1_round_trips_through_core_storage() {
        let ev = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e1", "namespace": "default"},
            "eventTime": "2026-11-26T03:00:00.000000Z",
            "reportingController": "hull.dev/agent", "reportingInstance": "node-a",
            "action": "Started", "reason": "Started", "type": "Normal", "note": "started it",
            "regarding": {"kind": "Pod", "name": "web-0", "namespace": "default"},
            "series": {"count": 2, "lastObservedTime": "2026-11-26T03:00:01.000000Z"},
        });
        let events = resource("events.k8s.io");
        let stored = to_storage(events, ev.clone());
        assert_eq!(stored["apiVersion"], "v1");
        assert_eq!(stored["message"], "started it");
        assert_eq!(stored["involvedObject"]["name"], "web-0");
        assert_eq!(stored["reportingComponent"], "hull.dev/agent");
        assert_eq!(stored["series"]["count"], 2);
        assert!(stored.get("note").is_none() && stored.get("regarding").is_none());
        assert_eq!(from_storage(events, stored), ev);
    }

    #[test]
    fn core_events_read_through_events_v1() {
        let core = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "e2", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web-1"},
            "reason": "Killing", "message": "Stopping container web", "type": "Normal",
            "source": {"component": "kubelet", "host": "node-a"},
            "firstTimestamp": "2026-11-26T03:00:00Z", "lastTimestamp": "2026-11-26T03:00:05Z",
            "count": 3,
        });
        let seen = from_storage(resource("events.k8s.io"), core.clone());
        assert_eq!(seen["apiVersion"], "events.k8s.io/v1");
        assert_eq!(seen["note"], "Stopping container web");
        assert_eq!(seen["regarding"]["name"], "web-1");
        assert_eq!(seen["deprecatedSource"]["host"], "node-a");
        assert_eq!(seen["deprecatedCount"], 3);
        assert_eq!(seen["deprecatedLastTimestamp"], "2026-11-26T03:00:05Z");
        // The core API reads the stored form unchanged.
        assert_eq!(from_storage(resource(""), core.clone()), core);
    }
}
