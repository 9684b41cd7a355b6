//! Server-side apply (`application/apply-patch+yaml`).
//!
//! The applied configuration is the manager's whole intent: its fields are merged into the
//! live object (lists by their keys), fields the manager applied before but no longer
//! does are removed unless someone else owns them, and a field another manager owns with a
//! different value is a conflict (409) unless `force` moves ownership to the applier.

use serde_json::Value;

use super::fieldset::{self, FieldSet, Path, element_key, lookup};
use super::managed::{self, Entry, Operation};
use super::schema::{self, ListKind, Node};
use super::{Conflict, PatchError};

/// Parses an apply body (YAML or JSON) into an object with apiVersion and kind.
pub fn parse_config(body: &[u8]) -> Result<Value, PatchError> {
    let config: Value = serde_yaml::from_slice(body)
        .map_err(|e| PatchError::BadRequest(format!("error decoding YAML: {e}")))?;
    let Value::Object(map) = &config else {
        return Err(PatchError::BadRequest(
            "an apply patch must be an object (YAML mapping)".into(),
        ));
    };
    for field in ["apiVersion", "kind"] {
        if !map.get(field).is_some_and(Value::is_string) {
            return Err(PatchError::BadRequest(format!(
                "invalid object: {field} must be set in an apply patch"
            )));
        }
    }
    Ok(config)
}

/// Applies `config` as `manager` onto `live` (`None` when the object does not exist yet)
/// and returns the new object with its managedFields updated.
pub fn server_side_apply(
    kind: &str,
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
) -> Result<Value, PatchError> {
    let node = schema::root(kind);
    let mut config = config.clone();
    // Server-owned metadata is not the applier's to set or clear (typed clients send
    // `creationTimestamp: null`).
    if let Some(meta) = config.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in [
            "managedFields",
            "resourceVersion",
            "creationTimestamp",
            "uid",
            "generation",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            meta.shift_remove(key);
        }
    }
    let mut result = live
        .cloned()
        .unwrap_or_else(|| Value::Object(Default::default()));
    let mut entries = live.map(managed::read).unwrap_or_default();
    let applied = FieldSet::from_object(node, &config);
    let mine = |e: &Entry| e.manager == manager && e.operation == Operation::Apply;

    let mut conflicts = Vec::new();
    for entry in entries.iter().filter(|e| !mine(e)) {
        for path in entry.fields.iter() {
            if !applied.contains(path) || applied.has_children(path) {
                continue;
            }
            if lookup(&result, path) != lookup(&config, path) {
                conflicts.push(Conflict {
                    manager: entry.manager.clone(),
                    subresource: entry.subresource.clone(),
                    api_version: entry.api_version.clone(),
                    field: fieldset::display(path),
                    path: path.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(PatchError::Conflict(conflicts));
    }
    for c in &conflicts {
        for entry in entries.iter_mut().filter(|e| !mine(e)) {
            entry.fields.remove(&c.path);
        }
    }

    let previous = entries
        .iter()
        .find(|e| mine(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut dropped: Vec<Path> = previous
        .difference(&applied)
        .iter()
        .filter(|p| !entries.iter().any(|e| !mine(e) && e.fields.touches(p)))
        .filter(|p| !applied.touches(p))
        .cloned()
        .collect();
    // Outermost first; what lies under a removed element or field goes with it (removing
    // an element's key field first would make the element unfindable).
    dropped.sort_by_key(Vec::len);
    let mut removed: Vec<&Path> = Vec::new();
    for path in &dropped {
        if removed.iter().any(|r| path.starts_with(r)) {
            continue;
        }
        fieldset::remove(&mut result, path);
        removed.push(path);
    }

    merge(node, &mut result, &config);

    let api_version = config
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    entries.retain(|e| !mine(e));
    entries.push(Entry {
        manager: manager.to_string(),
        operation: Operation::Apply,
        api_version,
        time: managed::now(),
        subresource: None,
        fields: applied,
    });
    managed::write(&mut result, &entries);
    Ok(result)
}

/// Merges `config` into `live` with the list semantics of `node`.
fn merge(node: Node, live: &mut Value, config: &Value) {
    let (Value::Object(target), Value::Object(fields)) = (&mut *live, config) else {
        *live = config.clone();
        return;
    };
    for (key, value) in fields {
        match value {
            Value::Null => {
                target.shift_remove(key);
            }
            Value::Object(_) => {
                let child = node.field(key);
                match target.get_mut(key) {
                    Some(existing @ Value::Object(_)) if child != Node::Atomic => {
                        merge(child, existing, value)
                    }
                    _ => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
            Value::Array(items) => {
                let (kind, elem) = node.list(key);
                let existing = match target.get_mut(key) {
                    Some(Value::Array(a)) => a,
                    _ => {
                        target.insert(key.clone(), value.clone());
                        continue;
                    }
                };
                match kind {
                    ListKind::Atomic => *existing = items.clone(),
                    ListKind::Set => {
                        for v in items {
                            if !existing.contains(v) {
                                existing.push(v.clone());
                            }
                        }
                    }
                    ListKind::Map { keys, .. } => {
                        for item in items {
                            let id = element_key(keys, item);
                            let at = id.as_ref().and_then(|id| {
                                existing
                                    .iter()
                                    .position(|e| element_key(keys, e).as_ref() == Some(id))
                            });
                            match at {
                                Some(i) => merge(elem, &mut existing[i], item),
                                None => existing.push(item.clone()),
                            }
                        }
                    }
                }
            }
            scalar => {
                target.insert(key.clone(), scalar.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(replicas: i64, image: &str) -> Value {
        json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","labels":{"app":"web"}},
          "spec":{"replicas":replicas,"selector":{"matchLabels":{"app":"web"}},
            "template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"web","image":image}]}}}})
    }

    #[test]
    fn apply_creates_and_owns_fields() {
        let out = server_side_apply("Deployment", None, &config(2, "a"), "kubectl", false).unwrap();
        assert_eq!(out["spec"]["replicas"], 2);
        let mf = &out["metadata"]["managedFields"][0];
        assert_eq!(mf["manager"], "kubectl");
        assert_eq!(mf["operation"], "Apply");
        assert_eq!(mf["apiVersion"], "apps/v1");
        assert!(mf["fieldsV1"]["f:spec"]["f:replicas"].is_object());
    }

    #[test]
    fn conflict_with_another_manager_then_force() {
        let live = server_side_apply("Deployment", None, &config(2, "a"), "alice", false).unwrap();
        // bob applies a different replicas: conflict with alice.
        let err = server_side_apply("Deployment", Some(&live), &config(3, "a"), "bob", false)
            .unwrap_err();
        let PatchError::Conflict(c) = &err else {
            panic!("want conflict, got {err}");
        };
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].field, ".spec.replicas");
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"alice\" using apps/v1: .spec.replicas"
        );
        assert_eq!(err.status_code(), 409);
        // Same values: shared ownership, no conflict.
        let shared =
            server_side_apply("Deployment", Some(&live), &config(2, "a"), "bob", false).unwrap();
        assert_eq!(
            shared["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        // Force: bob takes .spec.replicas.
        let forced =
            server_side_apply("Deployment", Some(&live), &config(3, "a"), "bob", true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let entries = managed::read(&forced);
        let alice = entries.iter().find(|e| e.manager == "alice").unwrap();
        let replicas = vec![
            fieldset::Step::Field("spec".into()),
            fieldset::Step::Field("replicas".into()),
        ];
        assert!(!alice.fields.contains(&replicas));
        let bob = entries.iter().find(|e| e.manager == "bob").unwrap();
        assert!(bob.fields.contains(&replicas));
    }

    #[test]
    fn conflict_names_the_subresource_a_manager_wrote_through() {
        let live =
            server_side_apply("Deployment", None, &config(2, "a"), "kubectl", false).unwrap();
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(4);
        managed::update_managed_fields(
            "Deployment",
            Some(&live),
            &mut scaled,
            "kubectl",
            Operation::Update,
            Some("scale"),
        );
        let err = server_side_apply(
            "Deployment",
            Some(&scaled),
            &config(3, "a"),
            "kubectl",
            false,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"
        );
        assert_eq!(err.causes()[0]["field"], ".spec.replicas");
    }

    #[test]
    fn fields_no_longer_applied_are_removed() {
        let mut c = config(2, "a");
        c["metadata"]["labels"]["extra"] = json!("x");
        c["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name":"side","image":"s"}));
        let live = server_side_apply("Deployment", None, &c, "kubectl", false).unwrap();
        assert_eq!(live["metadata"]["labels"]["extra"], "x");
        let out = server_side_apply("Deployment", Some(&live), &config(2, "b"), "kubectl", false)
            .unwrap();
        assert!(out["metadata"]["labels"].get("extra").is_none());
        let containers = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(containers.len(), 1);
        assert_eq!(containers[0]["image"], "b");
    }

    #[test]
    fn fields_set_by_others_survive_reapply() {
        let live =
            server_side_apply("Deployment", None, &config(2, "a"), "kubectl", false).unwrap();
        // Another writer adds an env var and an annotation with an ordinary update.
        let mut edited = live.clone();
        edited["metadata"]["annotations"] = json!({"note":"x"});
        edited["spec"]["template"]["spec"]["containers"][0]["env"] =
            json!([{"name":"E","value":"1"}]);
        managed::update_managed_fields(
            "Deployment",
            Some(&live),
            &mut edited,
            "editor",
            Operation::Update,
            None,
        );
        let out = server_side_apply(
            "Deployment",
            Some(&edited),
            &config(2, "c"),
            "kubectl",
            false,
        )
        .unwrap();
        assert_eq!(out["metadata"]["annotations"]["note"], "x");
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["env"][0]["name"],
            "E"
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["image"],
            "c"
        );
    }

    #[test]
    fn atomic_selector_is_replaced_and_owned_whole() {
        let mut c = config(2, "a");
        c["spec"]["selector"] = json!({"matchLabels":{"app":"web","v":"1"}});
        let live = server_side_apply("Deployment", None, &c, "kubectl", false).unwrap();
        let v1 = &live["metadata"]["managedFields"][0]["fieldsV1"];
        assert_eq!(v1["f:spec"]["f:selector"], json!({}));
        let out = server_side_apply("Deployment", Some(&live), &config(2, "a"), "kubectl", false)
            .unwrap();
        assert_eq!(
            out["spec"]["selector"],
            json!({"matchLabels":{"app":"web"}})
        );
    }

    #[test]
    fn server_metadata_in_a_config_is_ignored() {
        let mut live =
            server_side_apply("Deployment", None, &config(2, "a"), "helm", false).unwrap();
        live["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        live["metadata"]["uid"] = json!("u1");
        let mut c = config(2, "a");
        c["metadata"]["creationTimestamp"] = Value::Null;
        c["metadata"]["uid"] = json!("other");
        let out = server_side_apply("Deployment", Some(&live), &c, "helm", false).unwrap();
        assert_eq!(out["metadata"]["creationTimestamp"], "2026-01-01T00:00:00Z");
        assert_eq!(out["metadata"]["uid"], "u1");
    }

    #[test]
    fn yaml_configs_parse_and_need_kind() {
        let v =
            parse_config(b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: '1'}\n")
                .unwrap();
        assert_eq!(v["data"]["a"], "1");
        let err = parse_config(b"metadata: {name: c}").unwrap_err();
        assert!(err.to_string().contains("apiVersion"));
        let err = parse_config(b"a: [").unwrap_err();
        assert_eq!(err.status_code(), 400);
    }
}
