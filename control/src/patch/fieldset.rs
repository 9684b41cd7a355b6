//! Sets of field paths, and their `FieldsV1` wire form (`{"f:spec":{"f:replicas":{}}}`).
//!
//! A path is a list of steps: `f:<field>` into a map, `k:<json of the key fields>` into a
//! list merged by keys, `v:<json value>` for a member of a set of primitives. A path in a
//! set means "this field is owned": a leaf (`{}` in FieldsV1) or, for list elements, the
//! element itself (`"."`) besides the fields under it.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::schema::{ListKind, Node, key_default};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    Field(String),
    /// The key fields of a list-map element, as a canonical JSON object.
    Key(String),
    /// A set member, as JSON.
    Value(String),
}

pub type Path = Vec<Step>;

/// Owned fields of one manager.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    paths: BTreeSet<Path>,
}

/// Fields no manager owns: identity and server-maintained metadata.
const IGNORED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.paths.contains(path)
    }

    pub fn insert(&mut self, path: Path) {
        self.paths.insert(path);
    }

    pub fn remove(&mut self, path: &Path) {
        self.paths.remove(path);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Path> {
        self.paths.iter()
    }

    /// Whether the set holds `path` or anything below it.
    pub fn touches(&self, path: &Path) -> bool {
        self.paths
            .range(path.clone()..)
            .next()
            .is_some_and(|p| p.starts_with(path))
    }

    /// Whether `path` has something owned below it in this set (it is an element marker,
    /// not a leaf).
    pub fn has_children(&self, path: &Path) -> bool {
        self.paths
            .range(path.clone()..)
            .nth(if self.paths.contains(path) { 1 } else { 0 })
            .is_some_and(|p| p.len() > path.len() && p.starts_with(path))
    }

    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        FieldSet {
            paths: self.paths.difference(&other.paths).cloned().collect(),
        }
    }

    /// The fields an object sets, walked with the list semantics of `node` (the top of a
    /// `kind`).
    pub fn from_object(node: Node, obj: &Value) -> FieldSet {
        let mut set = FieldSet::default();
        if let Value::Object(map) = obj {
            for (k, v) in map {
                if k == "apiVersion" || k == "kind" {
                    continue;
                }
                let path = vec![Step::Field(k.clone())];
                if k == "metadata" {
                    if let Value::Object(meta) = v {
                        for (mk, mv) in meta {
                            if IGNORED_META.contains(&mk.as_str()) {
                                continue;
                            }
                            let mut p = path.clone();
                            p.push(Step::Field(mk.clone()));
                            walk_field(Node::Meta, mk, mv, p, &mut set);
                        }
                    }
                    continue;
                }
                walk_field(node, k, v, path, &mut set);
            }
        }
        set
    }

    /// The `FieldsV1` JSON tree of this set.
    pub fn to_fields_v1(&self) -> Value {
        let mut root = Map::new();
        'paths: for path in &self.paths {
            let mut at = &mut root;
            for step in path {
                let entry = at
                    .entry(step.encode())
                    .or_insert_with(|| Value::Object(Map::new()));
                at = match entry {
                    Value::Object(m) => m,
                    _ => continue 'paths,
                };
            }
            if self.has_children(path) {
                at.insert(".".into(), Value::Object(Map::new()));
            }
        }
        Value::Object(root)
    }

    /// Parses a `FieldsV1` tree; unknown step prefixes are an error naming them.
    pub fn from_fields_v1(v: &Value) -> Result<FieldSet, String> {
        let mut set = FieldSet::default();
        fn go(v: &Value, path: &mut Path, set: &mut FieldSet) -> Result<(), String> {
            let Value::Object(m) = v else {
                return Err("fieldsV1 nodes must be objects".into());
            };
            if m.is_empty() && !path.is_empty() {
                set.insert(path.clone());
            }
            for (k, child) in m {
                if k == "." {
                    set.insert(path.clone());
                    continue;
                }
                path.push(Step::decode(k)?);
                go(child, path, set)?;
                path.pop();
            }
            Ok(())
        }
        go(v, &mut Vec::new(), &mut set)?;
        Ok(set)
    }
}

fn walk_field(node: Node, key: &str, v: &Value, path: Path, set: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() && node.field(key) != Node::Atomic => {
            let child = node.field(key);
            for (k, cv) in m {
                let mut p = path.clone();
                p.push(Step::Field(k.clone()));
                walk_field(child, k, cv, p, set);
            }
        }
        Value::Array(items) => match node.list(key) {
            (ListKind::Atomic, _) => set.insert(path),
            (ListKind::Set, _) => {
                if items.is_empty() {
                    set.insert(path.clone());
                }
                for item in items {
                    let mut p = path.clone();
                    p.push(Step::Value(item.to_string()));
                    set.insert(p);
                }
            }
            (ListKind::Map { keys, .. }, elem) => {
                if items.is_empty() {
                    set.insert(path.clone());
                }
                for item in items {
                    let Some(key) = element_key(keys, item) else {
                        // An element without its keys cannot be addressed; own the list.
                        set.insert(path.clone());
                        continue;
                    };
                    let mut p = path.clone();
                    p.push(Step::Key(key));
                    set.insert(p.clone());
                    if let Value::Object(fields) = item {
                        for (k, cv) in fields {
                            let mut fp = p.clone();
                            fp.push(Step::Field(k.clone()));
                            walk_field(elem, k, cv, fp, set);
                        }
                    }
                }
            }
        },
        _ => set.insert(path),
    }
}

/// The canonical key of a list-map element (`{"containerPort":80,"protocol":"TCP"}`),
/// with defaulted key fields filled in; `None` if a required key is missing.
pub fn element_key(keys: &[&str], item: &Value) -> Option<String> {
    let mut m = Map::new();
    for k in keys {
        match item.get(*k).cloned().or_else(|| key_default(k)) {
            Some(v) => {
                m.insert((*k).to_string(), v);
            }
            None if keys.len() > 1 && *k != keys[0] => {}
            None => return None,
        }
    }
    Some(Value::Object(m).to_string())
}

impl Step {
    fn encode(&self) -> String {
        match self {
            Step::Field(f) => format!("f:{f}"),
            Step::Key(k) => format!("k:{k}"),
            Step::Value(v) => format!("v:{v}"),
        }
    }

    fn decode(s: &str) -> Result<Step, String> {
        if let Some(f) = s.strip_prefix("f:") {
            Ok(Step::Field(f.to_string()))
        } else if let Some(k) = s.strip_prefix("k:") {
            Ok(Step::Key(k.to_string()))
        } else if let Some(v) = s.strip_prefix("v:") {
            Ok(Step::Value(v.to_string()))
        } else {
            Err(format!("fieldsV1: unknown path element {s:?}"))
        }
    }
}

/// `.spec.template.spec.containers[name="web"].image`, as kube-apiserver prints paths in
/// conflict messages.
pub fn display(path: &Path) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            Step::Key(k) => {
                let parts: Vec<String> = match serde_json::from_str::<Map<String, Value>>(k) {
                    Ok(m) => m.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                    Err(_) => vec![k.clone()],
                };
                out.push_str(&format!("[{}]", parts.join(",")));
            }
            Step::Value(v) => out.push_str(&format!("[={v}]")),
        }
    }
    out
}

fn matches_key(item: &Value, key: &Map<String, Value>) -> bool {
    key.iter()
        .all(|(k, want)| item.get(k).cloned().or_else(|| key_default(k)).as_ref() == Some(want))
}

/// The value at `path` in `obj`, if present.
pub fn lookup<'a>(obj: &'a Value, path: &[Step]) -> Option<&'a Value> {
    let mut at = obj;
    for step in path {
        at = match step {
            Step::Field(f) => at.get(f)?,
            Step::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).ok()?;
                at.as_array()?.iter().find(|i| matches_key(i, &key))?
            }
            Step::Value(v) => {
                let want: Value = serde_json::from_str(v).ok()?;
                at.as_array()?.iter().find(|i| **i == want)?
            }
        };
    }
    Some(at)
}

/// Removes what `path` names from `obj` (a no-op if absent).
pub fn remove(obj: &mut Value, path: &[Step]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut at = obj;
    for step in parent {
        let next = match step {
            Step::Field(f) => at.get_mut(f),
            Step::Key(k) => {
                let Ok(key) = serde_json::from_str::<Map<String, Value>>(k) else {
                    return;
                };
                at.as_array_mut()
                    .and_then(|a| a.iter_mut().find(|i| matches_key(i, &key)))
            }
            Step::Value(_) => None,
        };
        match next {
            Some(n) => at = n,
            None => return,
        }
    }
    match last {
        Step::Field(f) => {
            if let Some(m) = at.as_object_mut() {
                m.shift_remove(f);
            }
        }
        Step::Key(k) => {
            if let (Ok(key), Some(a)) = (
                serde_json::from_str::<Map<String, Value>>(k),
                at.as_array_mut(),
            ) {
                a.retain(|i| !matches_key(i, &key));
            }
        }
        Step::Value(v) => {
            if let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(v), at.as_array_mut()) {
                a.retain(|i| *i != want);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::schema::root;
    use serde_json::json;

    #[test]
    fn fields_v1_of_a_deployment() {
        let d = json!({"apiVersion":"apps/v1","kind":"Deployment",
          "metadata":{"name":"web","labels":{"app":"web"}},
          "spec":{"replicas":2,"selector":{"matchLabels":{"app":"web"}},
            "template":{"spec":{"containers":[{"name":"web","image":"b","ports":[{"containerPort":80}]}]}}}});
        let set = FieldSet::from_object(root("Deployment"), &d);
        let v1 = set.to_fields_v1();
        assert_eq!(v1["f:metadata"], json!({"f:labels":{"f:app":{}}}));
        assert_eq!(v1["f:spec"]["f:replicas"], json!({}));
        let c = &v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"];
        assert_eq!(c["."], json!({}));
        assert_eq!(c["f:image"], json!({}));
        assert!(
            c["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"]["f:containerPort"]
                .is_object()
        );
        let back = FieldSet::from_fields_v1(&v1).unwrap();
        assert_eq!(back, set);
    }

    #[test]
    fn lookup_and_remove_by_key() {
        let mut d =
            json!({"spec":{"containers":[{"name":"a","image":"x"},{"name":"b","image":"y"}]}});
        let path = vec![
            Step::Field("spec".into()),
            Step::Field("containers".into()),
            Step::Key(r#"{"name":"b"}"#.into()),
            Step::Field("image".into()),
        ];
        assert_eq!(lookup(&d, &path), Some(&json!("y")));
        assert_eq!(display(&path), r#".spec.containers[name="b"].image"#);
        remove(&mut d, &path[..3]);
        assert_eq!(d, json!({"spec":{"containers":[{"name":"a","image":"x"}]}}));
    }

    #[test]
    fn bad_fields_v1_is_named() {
        let err = FieldSet::from_fields_v1(&json!({"x:foo":{}})).unwrap_err();
        assert!(err.contains("x:foo"));
    }
}
