//! LimitRange (the LimitRanger admission plugin): default requests and limits for
//! containers that set none, then the namespace's min / max / ratio bounds.

use serde_json::{Map, Value, json};

use super::quantity::Quantity;
use super::{AdmissionError, stored};
use crate::store::Store;

/// Applies the `Container` limit ranges of `namespace` to a pod (defaults, then bounds).
pub async fn apply_defaults(
    store: &dyn Store,
    namespace: &str,
    pod: &mut Value,
) -> Result<(), AdmissionError> {
    let items = items_of(store, namespace, "Container").await?;
    let pod_items = items_of(store, namespace, "Pod").await?;
    if items.is_empty() && pod_items.is_empty() {
        return Ok(());
    }
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut notes = Vec::new();
    for list in ["containers", "initContainers"] {
        let Some(Value::Array(containers)) = pod.pointer_mut(&format!("/spec/{list}")) else {
            continue;
        };
        for c in containers.iter_mut() {
            let cname = c
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let requests = set_defaults(c, &items, "requests", "defaultRequest");
            let limits = set_defaults(c, &items, "limits", "default");
            // As kube's LimitRanger words it: sorted, requests before limits.
            if !requests.is_empty() {
                notes.push(format!(
                    "{} request for container {cname}",
                    requests.join(", ")
                ));
            }
            if !limits.is_empty() {
                notes.push(format!("{} limit for container {cname}", limits.join(", ")));
            }
            for item in &items {
                check_bounds(item, "Container", "pods", &name, &|sec, res| {
                    quantity_at(c, sec, res)
                })?;
                check_ratio(c, item, &cname, &name)?;
            }
        }
    }
    for item in &pod_items {
        check_bounds(item, "Pod", "pods", &name, &|sec, res| {
            pod_total(pod, sec, res)
        })?;
    }
    if !notes.is_empty()
        && let Some(meta) = pod.get_mut("metadata").and_then(Value::as_object_mut)
    {
        let ann = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(ann) = ann.as_object_mut() {
            ann.insert(
                "kubernetes.io/limit-ranger".into(),
                json!(format!("LimitRanger plugin set: {}", notes.join("; "))),
            );
        }
    }
    Ok(())
}

/// Sets the container's missing `target` (requests/limits) entries from the first limit
/// range item that has a `source` default for them; returns the resources set, sorted.
fn set_defaults(container: &mut Value, items: &[Value], target: &str, source: &str) -> Vec<String> {
    let mut defaults = Map::new();
    for item in items {
        for (res, q) in item
            .get(source)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            defaults.entry(res.clone()).or_insert_with(|| q.clone());
        }
    }
    let mut set = Vec::new();
    if defaults.is_empty() {
        return set;
    }
    let Some(c) = container.as_object_mut() else {
        return set;
    };
    let resources = c
        .entry("resources")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(resources) = resources.as_object_mut() else {
        return set;
    };
    let slot = resources
        .entry(target)
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(slot) = slot.as_object_mut() else {
        return set;
    };
    for (res, q) in defaults {
        if !slot.contains_key(&res) {
            slot.insert(res.clone(), q);
            set.push(res);
        }
    }
    set.sort();
    set
}

fn quantity_at(c: &Value, section: &str, res: &str) -> Option<Quantity> {
    c.pointer(&format!("/resources/{section}/{res}"))
        .and_then(|v| Quantity::from_json(v).ok())
}

/// The `type` items of every LimitRange in `namespace`.
async fn items_of(
    store: &dyn Store,
    namespace: &str,
    ty: &str,
) -> Result<Vec<Value>, AdmissionError> {
    let ranges = stored::list(store, &stored::prefix("limitranges", Some(namespace))).await?;
    Ok(ranges
        .iter()
        .filter_map(|(_, lr, _)| lr.pointer("/spec/limits").and_then(Value::as_array))
        .flatten()
        .filter(|i| i.get("type").and_then(Value::as_str) == Some(ty))
        .cloned()
        .collect())
}

/// A pod's total request/limit of `res` over its containers (`None` if none sets it).
fn pod_total(pod: &Value, section: &str, res: &str) -> Option<Quantity> {
    let all: Vec<Quantity> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| quantity_at(c, section, res))
        .collect();
    (!all.is_empty()).then(|| all.into_iter().fold(Quantity::zero(), |a, b| a + b))
}

fn bound(item: &Value, key: &str) -> Vec<(String, Quantity)> {
    item.get(key)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Quantity::from_json(v).ok().map(|q| (k.clone(), q)))
                .collect()
        })
        .unwrap_or_default()
}

/// min ≤ request and limit ≤ max for one limit range item. `what` is `Container`, `Pod`
/// or `PersistentVolumeClaim` (whose max bounds the request: claims have no limit).
fn check_bounds(
    item: &Value,
    what: &str,
    resource: &str,
    name: &str,
    get: &dyn Fn(&str, &str) -> Option<Quantity>,
) -> Result<(), AdmissionError> {
    let deny = |why: String| Err(AdmissionError::forbidden(resource, name, &why));
    for (res, min) in bound(item, "min") {
        match get("requests", &res) {
            None => {
                return deny(format!(
                    "minimum {res} usage per {what} is {min}.  No request is specified"
                ));
            }
            Some(r) if r < min => {
                return deny(format!(
                    "minimum {res} usage per {what} is {min}, but request is {r}"
                ));
            }
            _ => {}
        }
    }
    let (section, word) = if what == "PersistentVolumeClaim" {
        ("requests", "request")
    } else {
        ("limits", "limit")
    };
    for (res, max) in bound(item, "max") {
        match get(section, &res) {
            None => {
                return deny(format!(
                    "maximum {res} usage per {what} is {max}.  No {word} is specified"
                ));
            }
            Some(l) if l > max => {
                return deny(format!(
                    "maximum {res} usage per {what} is {max}, but {word} is {l}"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A new claim within the namespace's `PersistentVolumeClaim` limit ranges.
pub async fn check_claim(
    store: &dyn Store,
    namespace: &str,
    pvc: &Value,
) -> Result<(), AdmissionError> {
    let name = pvc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    for item in items_of(store, namespace, "PersistentVolumeClaim").await? {
        check_bounds(
            &item,
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            name,
            &|sec, res| {
                pvc.pointer(&format!("/spec/resources/{sec}/{res}"))
                    .and_then(|v| Quantity::from_json(v).ok())
            },
        )?;
    }
    Ok(())
}

fn check_ratio(c: &Value, item: &Value, cname: &str, pod: &str) -> Result<(), AdmissionError> {
    let deny = |why: String| Err(AdmissionError::forbidden("pods", pod, &why));
    for (res, ratio) in bound(item, "maxLimitRequestRatio") {
        if let (Some(l), Some(r)) = (
            quantity_at(c, "limits", &res),
            quantity_at(c, "requests", &res),
        ) && !r.is_zero()
            && l.milli() > ratio.milli().saturating_mul(r.milli()) / 1000
        {
            return deny(format!(
                "{res} max limit to request ratio per Container is {ratio}, but provided ratio \
                 is {:.6} for container {cname}",
                l.milli() as f64 / r.milli() as f64
            ));
        }
    }
    Ok(())
}
