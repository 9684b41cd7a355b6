//! Strategic merge patch, as kube-apiserver applies `application/strategic-merge-patch+json`.
//!
//! A JSON merge patch that knows the lists of the built-in types: lists merged by a key
//! (`containers` by `name`) merge element by element instead of being replaced, and the
//! directives kubectl sends are honoured: `$patch: replace | delete | merge`,
//! `$setElementOrder/<list>`, `$retainKeys` and `$deleteFromPrimitiveList/<list>`.

use serde_json::{Map, Value};

use super::PatchError;
use super::schema::{ListKind, Node};

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

/// Applies `patch` to `original` for an object whose top is `node`.
pub fn merge(node: Node, original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::BadRequest(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    let mut out = match original {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    match merge_map(node, &mut out, patch, "")? {
        Outcome::Keep => Ok(Value::Object(out)),
        Outcome::Delete => Ok(Value::Object(Map::new())),
    }
}

/// What the parent should do with a map after merging into it.
enum Outcome {
    Keep,
    /// The patch said `$patch: delete` for this map.
    Delete,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn merge_map(
    node: Node,
    orig: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    path: &str,
) -> Result<Outcome, PatchError> {
    if let Some(directive) = patch.get(PATCH) {
        match directive.as_str() {
            Some("delete") => return Ok(Outcome::Delete),
            Some("replace") => {
                let mut fresh = Map::new();
                let rest: Map<String, Value> = patch
                    .iter()
                    .filter(|(k, _)| *k != PATCH)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                merge_map(node, &mut fresh, &rest, path)?;
                *orig = fresh;
                return Ok(Outcome::Keep);
            }
            Some("merge") => {}
            _ => {
                return Err(PatchError::BadRequest(format!(
                    "{}: unknown patch directive {directive}",
                    if path.is_empty() { "<root>" } else { path }
                )));
            }
        }
    }
    for (key, value) in patch {
        if key == PATCH
            || key == RETAIN_KEYS
            || key.starts_with(SET_ORDER)
            || key.starts_with(DELETE_PRIMITIVE)
        {
            continue;
        }
        if key.starts_with('$') {
            return Err(PatchError::BadRequest(format!(
                "{}: unknown patch directive {key:?}",
                join(path, key)
            )));
        }
        let here = join(path, key);
        match value {
            Value::Null => {
                orig.shift_remove(key);
            }
            Value::Object(sub) => {
                let child = node.field(key);
                let outcome = match orig.get_mut(key) {
                    Some(Value::Object(current)) => merge_map(child, current, sub, &here)?,
                    _ => {
                        let mut fresh = Map::new();
                        let outcome = merge_map(child, &mut fresh, sub, &here)?;
                        if let Outcome::Keep = outcome {
                            orig.insert(key.clone(), Value::Object(fresh));
                        }
                        outcome
                    }
                };
                if let Outcome::Delete = outcome {
                    orig.shift_remove(key);
                }
            }
            Value::Array(items) => {
                let (kind, elem) = node.list(key);
                let current = match orig.get(key) {
                    Some(Value::Array(a)) => a.clone(),
                    _ => Vec::new(),
                };
                let merged = merge_list(kind, elem, current.clone(), items, &here)?;
                let replaced = items
                    .iter()
                    .any(|v| v.get(PATCH).and_then(Value::as_str) == Some("replace"));
                let merged = if kind == ListKind::Atomic || replaced {
                    merged
                } else {
                    // $setElementOrder wins; else the patch's own order.
                    let order = match patch.get(&format!("{SET_ORDER}{key}")) {
                        Some(Value::Array(o)) => o.as_slice(),
                        _ => items.as_slice(),
                    };
                    normalize_order(kind, merged, order, &current)
                };
                orig.insert(key.clone(), Value::Array(merged));
            }
            scalar => {
                orig.insert(key.clone(), scalar.clone());
            }
        }
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(DELETE_PRIMITIVE) {
            let Value::Array(gone) = value else {
                return Err(PatchError::BadRequest(format!(
                    "{}: $deleteFromPrimitiveList must be a list",
                    join(path, field)
                )));
            };
            if let Some(Value::Array(current)) = orig.get_mut(field) {
                current.retain(|v| !gone.contains(v));
            }
        }
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(SET_ORDER) {
            let Value::Array(order) = value else {
                return Err(PatchError::BadRequest(format!(
                    "{}: $setElementOrder must be a list",
                    join(path, field)
                )));
            };
            let (kind, _) = node.list(field);
            if patch.get(field).is_some_and(Value::is_array) || kind == ListKind::Atomic {
                continue; // ordered with its merge above
            }
            if let Some(Value::Array(current)) = orig.get_mut(field) {
                let live = std::mem::take(current);
                *current = normalize_order(kind, live.clone(), order, &live);
            }
        }
    }
    if let Some(retain) = patch.get(RETAIN_KEYS) {
        let Value::Array(keep) = retain else {
            return Err(PatchError::BadRequest(format!(
                "{}: $retainKeys must be a list of field names",
                if path.is_empty() { "<root>" } else { path }
            )));
        };
        orig.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)));
    }
    Ok(Outcome::Keep)
}

fn merge_list(
    kind: ListKind,
    elem: Node,
    mut current: Vec<Value>,
    patch: &[Value],
    path: &str,
) -> Result<Vec<Value>, PatchError> {
    match kind {
        ListKind::Atomic => Ok(patch.to_vec()),
        ListKind::Set => {
            for v in patch {
                if v.is_object() || v.is_array() {
                    return Err(PatchError::BadRequest(format!(
                        "{path}: a list of primitives cannot hold {v}"
                    )));
                }
                if !current.contains(v) {
                    current.push(v.clone());
                }
            }
            Ok(current)
        }
        ListKind::Map { merge_key, .. } => {
            let is_directive = |v: &Value, d: &str| v.get(PATCH).and_then(Value::as_str) == Some(d);
            if patch.iter().any(|v| is_directive(v, "replace")) {
                current.clear();
            }
            for item in patch {
                if is_directive(item, "replace") {
                    continue;
                }
                let Value::Object(fields) = item else {
                    return Err(PatchError::BadRequest(format!(
                        "{path}: expected a list of objects merged by {merge_key:?}, got {item}"
                    )));
                };
                let Some(key) = fields.get(merge_key) else {
                    return Err(PatchError::BadRequest(format!(
                        "{path}: map {item} does not contain declared merge key: {merge_key}"
                    )));
                };
                let at = current.iter().position(|c| c.get(merge_key) == Some(key));
                if is_directive(item, "delete") {
                    current.retain(|c| c.get(merge_key) != Some(key));
                    continue;
                }
                let mut target = match at {
                    Some(i) => match current[i].take() {
                        Value::Object(m) => m,
                        _ => Map::new(),
                    },
                    None => Map::new(),
                };
                let here = format!("{path}[{merge_key}={key}]");
                let outcome = merge_map(elem, &mut target, fields, &here)?;
                match (at, outcome) {
                    (Some(i), _) => current[i] = Value::Object(target),
                    (None, Outcome::Keep) => current.push(Value::Object(target)),
                    (None, Outcome::Delete) => {}
                }
            }
            Ok(current)
        }
    }
}

/// Orders a merged list as kube-apiserver does: the elements named in `order` (the
/// `$setElementOrder` list, or the patch's own list) in that order, interleaved with the
/// elements only the server had, which keep their live order; where both kinds were in
/// the live list, the live order decides (`normalizeElementOrder` + `mergeSortedSlice`).
fn normalize_order(
    kind: ListKind,
    merged: Vec<Value>,
    order: &[Value],
    live: &[Value],
) -> Vec<Value> {
    let identity = |v: &Value| -> Option<Value> {
        match kind {
            ListKind::Map { merge_key, .. } => v.get(merge_key).cloned(),
            _ => Some(v.clone()),
        }
    };
    let index_in = |list: &[Value], v: &Value| -> Option<usize> {
        let id = identity(v)?;
        list.iter().position(|x| identity(x).as_ref() == Some(&id))
    };
    let (mut patched, mut server_only): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|v| index_in(order, v).is_some());
    patched.sort_by_key(|v| index_in(order, v));
    server_only.sort_by_key(|v| index_in(live, v).unwrap_or(usize::MAX));
    let mut out = Vec::with_capacity(patched.len() + server_only.len());
    let (mut left, mut right) = (
        server_only.into_iter().peekable(),
        patched.into_iter().peekable(),
    );
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => match (index_in(live, l), index_in(live, r)) {
                (Some(li), Some(ri)) => li < ri,
                _ => false,
            },
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::schema::root;
    use serde_json::json;

    fn deploy() -> Value {
        json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","labels":{"app":"web"},"finalizers":["a"]},
          "spec":{"replicas":2,"template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[
            {"name":"web","image":"busybox:1.36","ports":[{"containerPort":80,"protocol":"TCP"}],
             "env":[{"name":"A","value":"1"},{"name":"B","value":"2"}]},
            {"name":"side","image":"busybox"}]}}}})
    }

    fn smp(orig: &Value, patch: Value) -> Result<Value, PatchError> {
        merge(root("Deployment"), orig, &patch)
    }

    #[test]
    fn container_image_patch_keeps_ports() {
        let out = smp(
            &deploy(),
            json!({"spec":{"template":{"spec":{"containers":[{"name":"web","image":"busybox:1.37"}]}}}}),
        )
        .unwrap();
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["image"], "busybox:1.37");
        assert_eq!(c[0]["ports"][0]["containerPort"], 80);
        assert_eq!(c[1]["name"], "side", "the other container is kept");
        assert_eq!(out["spec"]["replicas"], 2);
    }

    #[test]
    fn new_container_is_appended_and_env_merges_by_name() {
        let out = smp(
            &deploy(),
            json!({"spec":{"template":{"spec":{"containers":[
              {"name":"web","env":[{"name":"B","value":"3"},{"name":"C","value":"4"}]},
              {"name":"third","image":"x"}]}}}}),
        )
        .unwrap();
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c.as_array().unwrap().len(), 3);
        // Patch order, with server-only elements after (kube's mergeSortedSlice).
        assert_eq!(c[1]["name"], "third");
        assert_eq!(c[2]["name"], "side");
        let env = &c[0]["env"];
        assert_eq!(
            env,
            &json!([{"name":"A","value":"1"},{"name":"B","value":"3"},{"name":"C","value":"4"}])
        );
    }

    #[test]
    fn patch_delete_removes_element() {
        let out = smp(
            &deploy(),
            json!({"spec":{"template":{"spec":{"containers":[{"name":"side","$patch":"delete"}]}}}}),
        )
        .unwrap();
        let c = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0]["name"], "web");
    }

    #[test]
    fn patch_replace_list_and_map() {
        let out = smp(
            &deploy(),
            json!({"spec":{"template":{"spec":{"containers":[{"$patch":"replace"},{"name":"only","image":"i"}]}}}}),
        )
        .unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name":"only","image":"i"}])
        );
        let out = smp(
            &deploy(),
            json!({"metadata":{"labels":{"$patch":"replace","new":"x"}}}),
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"new":"x"}));
    }

    #[test]
    fn map_delete_directive_and_null() {
        let out = smp(
            &deploy(),
            json!({"metadata":{"labels":{"$patch":"delete"}},"spec":{"replicas":null}}),
        )
        .unwrap();
        assert!(out["metadata"].get("labels").is_none());
        assert!(out["spec"].get("replicas").is_none());
    }

    #[test]
    fn set_element_order_reorders() {
        let out = smp(
            &deploy(),
            json!({"spec":{"template":{"spec":{
              "$setElementOrder/containers":[{"name":"side"},{"name":"web"}],
              "containers":[{"name":"web","image":"n"}]}}}}),
        )
        .unwrap();
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["name"], "side");
        assert_eq!(c[1]["name"], "web");
        assert_eq!(c[1]["image"], "n");
    }

    #[test]
    fn primitive_set_union_and_delete_from_primitive_list() {
        // Patch order first, as kubectl computes it.
        let out = smp(&deploy(), json!({"metadata":{"finalizers":["b","a"]}})).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["b", "a"]));
        let out = smp(
            &out,
            json!({"metadata":{"$deleteFromPrimitiveList/finalizers":["a"]}}),
        )
        .unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn retain_keys_clears_other_fields() {
        let orig = json!({"kind":"Deployment","spec":{"strategy":{"type":"RollingUpdate","rollingUpdate":{"maxSurge":"25%"}}}});
        let out = smp(
            &orig,
            json!({"spec":{"strategy":{"$retainKeys":["type"],"type":"Recreate","rollingUpdate":null}}}),
        )
        .unwrap();
        assert_eq!(out["spec"]["strategy"], json!({"type":"Recreate"}));
    }

    #[test]
    fn atomic_lists_are_replaced() {
        let orig = json!({"spec":{"tolerations":[{"key":"a"}],"containers":[{"name":"c","command":["a","b"]}]}});
        let out = merge(
            root("Pod"),
            &orig,
            &json!({"spec":{"tolerations":[{"key":"b"}],"containers":[{"name":"c","command":["z"]}]}}),
        )
        .unwrap();
        assert_eq!(out["spec"]["tolerations"], json!([{"key":"b"}]));
        assert_eq!(out["spec"]["containers"][0]["command"], json!(["z"]));
    }

    #[test]
    fn missing_merge_key_is_an_error() {
        let err = smp(
            &deploy(),
            json!({"spec":{"template":{"spec":{"containers":[{"image":"x"}]}}}}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("merge key: name"), "{err}");
        let err = smp(&deploy(), json!({"spec":{"$bogus":1}})).unwrap_err();
        assert!(err.to_string().contains("$bogus"), "{err}");
    }
}
