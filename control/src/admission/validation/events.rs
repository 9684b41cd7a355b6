//! Events, as kube-apiserver's `ValidateEventCreate` / `ValidateEventUpdate` check them.
//!
//! core/v1 keeps the legacy rules (an Event without `eventTime` only needs its namespace
//! to agree with the involved object's); an Event with `eventTime` — every
//! events.k8s.io/v1 Event — must name its reporter, action and reason. events.k8s.io/v1
//! creations are strict: `eventTime` required, type Normal or Warning, the deprecated
//! fields unset. Paths use the names of the version the request was made in.

use serde_json::{Value, json};

use super::{immutable, names, push_invalid, str_at};
use crate::admission::field::{self, Cause, FieldPath};

/// Kubernetes' limits on an Event's strings.
const REPORTING_INSTANCE_MAX: usize = 128;
const ACTION_MAX: usize = 128;
const REASON_MAX: usize = 128;
const NOTE_MAX: usize = 1024;

/// The field names of one Event API version.
struct Names {
    regarding: &'static str,
    note: &'static str,
    reporting: &'static str,
    deprecated: [&'static str; 4],
}

const CORE: Names = Names {
    regarding: "involvedObject",
    note: "message",
    reporting: "reportingComponent",
    deprecated: ["firstTimestamp", "lastTimestamp", "count", "source"],
};

const EVENTS_V1: Names = Names {
    regarding: "regarding",
    note: "note",
    reporting: "reportingController",
    deprecated: [
        "deprecatedFirstTimestamp",
        "deprecatedLastTimestamp",
        "deprecatedCount",
        "deprecatedSource",
    ],
};

fn set(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Number(n)) => n.as_i64() != Some(0),
        Some(Value::Object(o)) => o.values().any(|v| set(Some(v))),
        Some(_) => true,
    }
}

pub fn validate(new: &Value, old: Option<&Value>, errs: &mut Vec<Cause>) {
    let strict = str_at(new, "apiVersion") == Some("events.k8s.io/v1");
    let n = if strict { &EVENTS_V1 } else { &CORE };
    let ns = new
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    let about_ns = new
        .pointer(&format!("/{}/namespace", n.regarding))
        .and_then(Value::as_str)
        .unwrap_or("");
    let ns_path = FieldPath::root(n.regarding).child("namespace");
    let mismatch = || field::invalid(&ns_path, &json!(about_ns), "does not match event.namespace");
    if !set(new.get("eventTime")) {
        // Old clients record cluster-scoped objects' Events in "default".
        let ok = if about_ns.is_empty() {
            ns.is_empty() || ns == "default"
        } else {
            ns == about_ns
        };
        if !ok {
            errs.push(mismatch());
        }
    } else {
        if about_ns.is_empty() && ns != "default" && ns != "kube-system" {
            errs.push(mismatch());
        }
        let reporter = str_at(new, n.reporting).unwrap_or("");
        let rpath = FieldPath::root(n.reporting);
        if reporter.is_empty() {
            errs.push(field::required(&rpath, ""));
        } else {
            push_invalid(errs, &rpath, reporter, names::qualified_name(reporter));
        }
        for (key, max) in [
            ("reportingInstance", REPORTING_INSTANCE_MAX),
            ("action", ACTION_MAX),
            ("reason", REASON_MAX),
        ] {
            let v = str_at(new, key).unwrap_or("");
            if v.is_empty() {
                errs.push(field::required(&FieldPath::root(key), ""));
            } else if v.len() > max {
                errs.push(field::too_long(&FieldPath::root(key), max));
            }
        }
        if str_at(new, n.note).unwrap_or("").len() > NOTE_MAX {
            errs.push(field::too_long(&FieldPath::root(n.note), NOTE_MAX));
        }
    }
    if strict && old.is_none() {
        if !set(new.get("eventTime")) {
            errs.push(field::required(&FieldPath::root("eventTime"), ""));
        }
        for key in n.deprecated {
            if set(new.get(key)) {
                errs.push(field::invalid(
                    &FieldPath::root(key),
                    &json!(""),
                    "needs to be unset",
                ));
            }
        }
    }
    if strict {
        let allowed = ["Normal", "Warning"];
        match new.get("type") {
            Some(t) if t.as_str().is_some_and(|s| allowed.contains(&s)) => {}
            Some(t) if set(Some(t)) => {
                errs.push(field::not_supported(&FieldPath::root("type"), t, &allowed))
            }
            _ => errs.push(field::required(&FieldPath::root("type"), "")),
        }
    }
    if strict && let Some(old) = old {
        // Only a series may grow; core/v1 updates stay unchecked for old clients.
        let keys = [
            n.regarding,
            "related",
            "reason",
            n.note,
            "type",
            "eventTime",
            "action",
            n.reporting,
            "reportingInstance",
        ];
        for key in keys.into_iter().chain(n.deprecated) {
            immutable(new.get(key), old.get(key), &FieldPath::root(key), errs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn causes(new: Value, old: Option<Value>) -> Vec<String> {
        let mut errs = Vec::new();
        validate(&new, old.as_ref(), &mut errs);
        errs.iter().map(|c| c.field.clone()).collect()
    }

    #[test]
    fn legacy_core_events_need_only_matching_namespaces() {
        let ok = json!({"apiVersion": "v1", "metadata": {"namespace": "default"},
            "involvedObject": {"kind": "Node", "name": "n1"}, "reason": "Ready", "type": "Normal"});
        assert!(causes(ok, None).is_empty());
        let bad = json!({"apiVersion": "v1", "metadata": {"namespace": "web"},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "db"}});
        assert_eq!(causes(bad, None), ["involvedObject.namespace"]);
    }

    #[test]
    fn events_v1_create_is_strict() {
        let bad = json!({"apiVersion": "events.k8s.io/v1",
            "metadata": {"namespace": "default"},
            "regarding": {"kind": "Pod", "name": "p", "namespace": "default"},
            "type": "Info", "deprecatedCount": 2});
        let got = causes(bad, None);
        for f in ["eventTime", "type", "deprecatedCount"] {
            assert!(got.iter().any(|g| g == f), "{f} missing in {got:?}");
        }
        let good = json!({"apiVersion": "events.k8s.io/v1",
            "metadata": {"namespace": "default"}, "eventTime": "2026-11-26T03:00:00.000000Z",
            "regarding": {"kind": "Pod", "name": "p", "namespace": "default"},
            "reportingController": "hull.dev/test", "reportingInstance": "i", "action": "Do",
            "reason": "Done", "type": "Normal", "note": "ok"});
        assert!(causes(good.clone(), None).is_empty());
        let mut changed = good.clone();
        changed["note"] = json!("other");
        assert_eq!(causes(changed, Some(good)), ["note"]);
    }

    #[test]
    fn new_style_core_events_name_their_reporter() {
        let ev = json!({"apiVersion": "v1", "metadata": {"namespace": "default"},
            "eventTime": "2026-11-26T03:00:00.000000Z",
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
            "reason": "Scheduled", "type": "Normal"});
        let got = causes(ev, None);
        assert_eq!(got, ["reportingComponent", "reportingInstance", "action"]);
    }
}
