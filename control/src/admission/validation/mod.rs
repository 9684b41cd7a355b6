//! Validation of objects as kube-apiserver's `Validate*` functions do it: every problem
//! found (not just the first) as a [`Cause`] with its field path, and on update the
//! fields that may not change.
//!
//! Modules: [`names`] name/key syntax; [`pod`] pod specs and templates; [`workloads`]
//! apps/batch kinds; [`core`] Services, ConfigMaps, Secrets, Namespaces, quotas, ...;
//! [`events`] core/v1 and events.k8s.io/v1 Events;
//! [`other`] networking, autoscaling, storage, RBAC, discovery and coordination kinds.

pub mod core;
pub mod events;
pub mod names;
pub mod other;
pub mod pod;
pub mod workloads;

use serde_json::Value;

use super::field::{self, Cause, FieldPath, Invalid};
use super::group_of;

/// Validates `new` (of `kind`); `old` is the stored object on update.
pub fn validate(kind: &str, new: &Value, old: Option<&Value>) -> Result<(), Invalid> {
    let mut errs = Vec::new();
    let meta_path = FieldPath::root("metadata");
    match new.get("metadata") {
        Some(meta @ Value::Object(_)) => object_meta(kind, meta, &meta_path, &mut errs),
        _ => errs.push(field::required(
            &meta_path.child("name"),
            "name or generateName is required",
        )),
    }
    if let Some(old) = old {
        meta_update(new, old, &mut errs);
    }
    match kind {
        "Pod" => pod::validate_pod(new, old, &mut errs),
        "PodTemplate" => pod::validate_template(
            new.get("template"),
            &FieldPath::root("template"),
            None,
            &mut errs,
        ),
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" | "ReplicationController" => {
            workloads::validate_workload(kind, new, old, &mut errs)
        }
        "Job" => workloads::validate_job(new, old, &mut errs),
        "CronJob" => workloads::validate_cron_job(new, &mut errs),
        "Event" => events::validate(new, old, &mut errs),
        _ => {
            core::validate(kind, new, old, &mut errs);
            other::validate(kind, new, old, &mut errs);
        }
    }
    if errs.is_empty() {
        return Ok(());
    }
    Err(Invalid {
        kind: kind.to_string(),
        group: group_of(str_at(new, "apiVersion").unwrap_or_default()).to_string(),
        name: new
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        causes: errs,
    })
}

pub(crate) fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Pushes one `Invalid value` cause per message in `problems`.
pub(crate) fn push_invalid(
    errs: &mut Vec<Cause>,
    f: &FieldPath,
    value: &str,
    problems: Vec<String>,
) {
    for p in problems {
        errs.push(field::invalid(f, &Value::String(value.to_string()), &p));
    }
}

/// The name rule of each kind.
fn name_rule(kind: &str) -> fn(&str) -> Vec<String> {
    match kind {
        "Namespace" => names::dns1123_label,
        "Service" => names::dns1035_label,
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => names::path_segment,
        _ => names::dns1123_subdomain,
    }
}

fn object_meta(kind: &str, meta: &Value, path: &FieldPath, errs: &mut Vec<Cause>) {
    match str_at(meta, "name") {
        Some(name) if !name.is_empty() => {
            push_invalid(errs, &path.child("name"), name, name_rule(kind)(name));
        }
        _ => errs.push(field::required(
            &path.child("name"),
            "name or generateName is required",
        )),
    }
    if let Some(ns) = str_at(meta, "namespace").filter(|n| !n.is_empty()) {
        push_invalid(errs, &path.child("namespace"), ns, names::dns1123_label(ns));
    }
    labels(meta.get("labels"), &path.child("labels"), errs);
    annotations(meta.get("annotations"), &path.child("annotations"), errs);
    if let Some(Value::Array(fins)) = meta.get("finalizers") {
        let fpath = path.child("finalizers");
        for (i, f) in fins.iter().enumerate() {
            match f.as_str() {
                Some(s) => push_invalid(errs, &fpath.index(i), s, names::qualified_name(s)),
                None => errs.push(field::invalid(&fpath.index(i), f, "must be a string")),
            }
        }
    }
    if let Some(Value::Array(owners)) = meta.get("ownerReferences") {
        let opath = path.child("ownerReferences");
        let mut controllers = 0;
        for (i, o) in owners.iter().enumerate() {
            for key in ["apiVersion", "kind", "name", "uid"] {
                if str_at(o, key).is_none_or(str::is_empty) {
                    errs.push(field::required(&opath.index(i).child(key), ""));
                }
            }
            if o.get("controller").and_then(Value::as_bool) == Some(true) {
                controllers += 1;
            }
        }
        if controllers > 1 {
            errs.push(field::invalid(
                &opath,
                &Value::Array(owners.clone()),
                "Only one reference can have Controller set to true",
            ));
        }
    }
}

/// Label keys and values.
pub(crate) fn labels(labels: Option<&Value>, path: &FieldPath, errs: &mut Vec<Cause>) {
    let Some(Value::Object(m)) = labels else {
        return;
    };
    for (k, v) in m {
        push_invalid(errs, path, k, names::qualified_name(k));
        match v.as_str() {
            Some(s) => push_invalid(errs, &path.key(k), s, names::label_value(s)),
            None => errs.push(field::invalid(
                &path.key(k),
                v,
                "label values must be strings",
            )),
        }
    }
}

fn annotations(ann: Option<&Value>, path: &FieldPath, errs: &mut Vec<Cause>) {
    let Some(Value::Object(m)) = ann else {
        return;
    };
    let mut total = 0;
    for (k, v) in m {
        push_invalid(
            errs,
            path,
            k,
            names::qualified_name(&k.to_ascii_lowercase()),
        );
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    const MAX: usize = 256 * 1024;
    if total > MAX {
        errs.push(field::too_long(path, MAX));
    }
}

/// Metadata that may not change on update.
fn meta_update(new: &Value, old: &Value, errs: &mut Vec<Cause>) {
    let path = FieldPath::root("metadata");
    for key in ["name", "namespace", "uid", "creationTimestamp"] {
        let (n, o) = (
            new.pointer(&format!("/metadata/{key}")),
            old.pointer(&format!("/metadata/{key}")),
        );
        if o.is_some_and(|o| !o.is_null()) && n != o {
            errs.push(field::invalid(
                &path.child(key),
                n.unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
    }
}

/// `field is immutable` if `new` and `old` differ at `key` of both (only when `old` has
/// it set, or both do).
pub(crate) fn immutable(
    new: Option<&Value>,
    old: Option<&Value>,
    path: &FieldPath,
    errs: &mut Vec<Cause>,
) {
    let norm = |v: Option<&Value>| v.filter(|v| !v.is_null()).cloned();
    if norm(new) != norm(old) {
        errs.push(field::invalid(
            path,
            new.unwrap_or(&Value::Null),
            "field is immutable",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn causes(kind: &str, v: &Value, old: Option<&Value>) -> Vec<String> {
        match validate(kind, v, old) {
            Ok(()) => Vec::new(),
            Err(inv) => inv.causes.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn names_per_kind() {
        let ok = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a.b"}});
        assert!(causes("ConfigMap", &ok, None).is_empty());
        let bad = json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a.b"}});
        let c = causes("Namespace", &bad, None);
        assert_eq!(c.len(), 1);
        assert!(
            c[0].starts_with("metadata.name: Invalid value: \"a.b\": a lowercase RFC 1123 label"),
            "{c:?}"
        );
        let none = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{}});
        assert_eq!(
            causes("ConfigMap", &none, None),
            vec!["metadata.name: Required value: name or generateName is required"]
        );
    }

    #[test]
    fn labels_and_annotations() {
        let v = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c",
            "labels":{"bad key":"v","ok":"-bad"},"annotations":{"a/b/c":"x"}}});
        let c = causes("ConfigMap", &v, None);
        assert_eq!(c.len(), 3, "{c:?}");
        assert!(c[0].starts_with("metadata.labels: Invalid value: \"bad key\""));
        assert!(c[1].starts_with("metadata.labels[ok]: Invalid value: \"-bad\""));
        assert!(c[2].starts_with("metadata.annotations: Invalid value: \"a/b/c\""));
    }

    #[test]
    fn metadata_immutables() {
        let old = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","uid":"1"}});
        let new = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","uid":"2"}});
        assert_eq!(
            causes("ConfigMap", &new, Some(&old)),
            vec!["metadata.uid: Invalid value: \"2\": field is immutable"]
        );
    }
}
