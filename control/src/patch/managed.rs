//! `metadata.managedFields`: who owns which fields, kept on every write as
//! kube-apiserver's field manager does.
//!
//! An ordinary write (create, update, non-apply patch) by manager M gives M an
//! `Update` entry owning every field it changed, and takes those fields (and any it
//! removed) away from the other managers. Server-side apply (`apply.rs`) maintains the
//! `Apply` entries.

use serde_json::{Map, Value, json};

use super::fieldset::{FieldSet, lookup};
use super::schema;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

impl Entry {
    fn is(&self, manager: &str, operation: Operation, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
    }
}

/// Now, as Kubernetes writes managedFields times (seconds, UTC).
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The entries of `obj`; entries that cannot be read are dropped, as kube-apiserver resets
/// managedFields it cannot decode rather than failing the write.
pub fn read(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            let operation = match e.get("operation")?.as_str()? {
                "Apply" => Operation::Apply,
                "Update" => Operation::Update,
                _ => return None,
            };
            Some(Entry {
                manager: e.get("manager")?.as_str()?.to_string(),
                operation,
                api_version: e
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                time: e
                    .get("time")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                subresource: e
                    .get("subresource")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                fields: FieldSet::from_fields_v1(e.get("fieldsV1").unwrap_or(&json!({}))).ok()?,
            })
        })
        .collect()
}

/// Writes `entries` to `obj`'s `metadata.managedFields` (removed when empty).
pub fn write(obj: &mut Value, entries: &[Entry]) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut m = Map::new();
            m.insert("manager".into(), json!(e.manager));
            m.insert("operation".into(), json!(e.operation.as_str()));
            m.insert("apiVersion".into(), json!(e.api_version));
            m.insert("time".into(), json!(e.time));
            m.insert("fieldsType".into(), json!("FieldsV1"));
            m.insert("fieldsV1".into(), e.fields.to_fields_v1());
            if let Some(s) = &e.subresource {
                m.insert("subresource".into(), json!(s));
            }
            Value::Object(m)
        })
        .collect();
    if list.is_empty() {
        meta.shift_remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

/// Records an ordinary write (`operation` is normally [`Operation::Update`]) of `new` over
/// `old` (`None` on create) by `manager`, updating `new`'s managedFields in place.
///
/// If the request carried its own `managedFields` they are taken as the starting point
/// (so clients can reset them, as in Kubernetes); otherwise `old`'s are.
pub fn update_managed_fields(
    kind: &str,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    operation: Operation,
    subresource: Option<&str>,
) {
    let node = schema::root(kind);
    let mut entries = match new.pointer("/metadata/managedFields") {
        Some(Value::Array(_)) => read(new),
        _ => old.map(read).unwrap_or_default(),
    };
    let new_set = FieldSet::from_object(node, new);
    let old_set = old
        .map(|o| FieldSet::from_object(node, o))
        .unwrap_or_default();
    let mut changed = FieldSet::default();
    for path in new_set.iter() {
        let differs = match old {
            None => true,
            Some(o) if new_set.has_children(path) => lookup(o, path).is_none(),
            Some(o) => lookup(o, path) != lookup(new, path),
        };
        if differs {
            changed.insert(path.clone());
        }
    }
    let removed = old_set.difference(&new_set);
    for entry in entries.iter_mut() {
        if entry.is(manager, operation, subresource) {
            continue;
        }
        for p in changed.iter().chain(removed.iter()) {
            entry.fields.remove(p);
        }
    }
    let api_version = new
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    match entries
        .iter_mut()
        .find(|e| e.is(manager, operation, subresource))
    {
        Some(mine) => {
            for p in removed.iter() {
                mine.fields.remove(p);
            }
            if !changed.is_empty() {
                for p in changed.iter() {
                    mine.fields.insert(p.clone());
                }
                mine.time = now();
                mine.api_version = api_version;
            }
        }
        None if !changed.is_empty() => entries.push(Entry {
            manager: manager.to_string(),
            operation,
            api_version,
            time: now(),
            subresource: subresource.map(str::to_string),
            fields: changed,
        }),
        None => {}
    }
    write(new, &entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(obj: &Value) -> Vec<(String, Value)> {
        obj["metadata"]["managedFields"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|e| {
                        (
                            e["manager"].as_str().unwrap_or("").to_string(),
                            e["fieldsV1"].clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn create_then_update_moves_ownership() {
        let mut obj = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"a":"1","b":"2"}});
        update_managed_fields(
            "ConfigMap",
            None,
            &mut obj,
            "kubectl-create",
            Operation::Update,
            None,
        );
        let o = owners(&obj);
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].1, json!({"f:data":{"f:a":{},"f:b":{}}}));
        assert_eq!(obj["metadata"]["managedFields"][0]["operation"], "Update");

        let old = obj.clone();
        let mut new = obj.clone();
        new["data"]["a"] = json!("changed");
        update_managed_fields(
            "ConfigMap",
            Some(&old),
            &mut new,
            "kubectl-edit",
            Operation::Update,
            None,
        );
        let o = owners(&new);
        assert_eq!(
            o[0],
            ("kubectl-create".to_string(), json!({"f:data":{"f:b":{}}}))
        );
        assert_eq!(
            o[1],
            ("kubectl-edit".to_string(), json!({"f:data":{"f:a":{}}}))
        );
    }

    #[test]
    fn removed_fields_leave_every_owner() {
        let mut obj =
            json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"a":"1"}});
        update_managed_fields("ConfigMap", None, &mut obj, "m1", Operation::Update, None);
        let old = obj.clone();
        let mut new = obj.clone();
        new.as_object_mut().map(|m| m.shift_remove("data"));
        update_managed_fields(
            "ConfigMap",
            Some(&old),
            &mut new,
            "m2",
            Operation::Update,
            None,
        );
        assert!(new["metadata"].get("managedFields").is_none());
    }

    #[test]
    fn no_change_adds_no_entry() {
        let mut obj =
            json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"a":"1"}});
        update_managed_fields("ConfigMap", None, &mut obj, "m1", Operation::Update, None);
        let old = obj.clone();
        let mut new = obj.clone();
        update_managed_fields(
            "ConfigMap",
            Some(&old),
            &mut new,
            "m2",
            Operation::Update,
            None,
        );
        assert_eq!(owners(&new).len(), 1);
    }
}
