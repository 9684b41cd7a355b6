//! ResourceQuota, as kube-apiserver's quota admission does it: usage lives in each
//! quota's `status.used`, and an admitted write charges it with a compare-and-swap on the
//! quota object, so concurrent creates cannot both take the last unit.
//!
//! Counted: `pods` (non-terminal), `services`, `services.nodeports`,
//! `services.loadbalancers`, `configmaps`, `secrets`, `persistentvolumeclaims`,
//! `replicationcontrollers`, `resourcequotas`, `count/<resource>[.<group>]`; pod
//! `requests.cpu`/`cpu`, `requests.memory`/`memory`, `limits.cpu`, `limits.memory`,
//! `requests.ephemeral-storage`, `limits.ephemeral-storage`; PVC `requests.storage`.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::quantity::Quantity;
use super::{AdmissionError, stored};
use crate::store::{Store, StoreError};

type Usage = BTreeMap<String, Quantity>;

/// How often a charge retries after losing a CAS race on a quota object.
const ATTEMPTS: usize = 64;

/// Usage charged to one quota by one admitted write (kept to undo it).
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub namespace: String,
    pub quota: String,
    pub delta: Vec<(String, Quantity)>,
}

const POD_COMPUTE: &[(&str, &str, &str)] = &[
    // (quota name, section, resource)
    ("requests.cpu", "requests", "cpu"),
    ("cpu", "requests", "cpu"),
    ("requests.memory", "requests", "memory"),
    ("memory", "requests", "memory"),
    ("limits.cpu", "limits", "cpu"),
    ("limits.memory", "limits", "memory"),
    (
        "requests.ephemeral-storage",
        "requests",
        "ephemeral-storage",
    ),
    ("ephemeral-storage", "requests", "ephemeral-storage"),
    ("limits.ephemeral-storage", "limits", "ephemeral-storage"),
];

fn count_name(resource: &str, group: &str) -> String {
    if group.is_empty() {
        format!("count/{resource}")
    } else {
        format!("count/{resource}.{group}")
    }
}

fn is_terminal_pod(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

/// A pod's effective request/limit of `res`: the larger of the containers' sum and any
/// one init container (init containers run one at a time, before the others).
fn pod_resource(pod: &Value, section: &str, res: &str) -> Option<Quantity> {
    let get = |c: &Value| {
        c.pointer(&format!("/resources/{section}/{res}"))
            .and_then(|v| Quantity::from_json(v).ok())
    };
    let containers = pod.pointer("/spec/containers").and_then(Value::as_array);
    let inits = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array);
    let mut any = false;
    let mut sum = Quantity::zero();
    for c in containers.into_iter().flatten() {
        if let Some(q) = get(c) {
            any = true;
            sum = sum + q;
        }
    }
    for c in inits.into_iter().flatten() {
        if let Some(q) = get(c) {
            any = true;
            if q > sum {
                sum = q;
            }
        }
    }
    any.then_some(sum)
}

/// What `obj` (of `resource` in `group`) counts for.
pub fn usage(resource: &str, group: &str, obj: &Value) -> Usage {
    let mut u = Usage::new();
    let one = Quantity::from_units(1);
    if resource == "pods" && is_terminal_pod(obj) {
        return u;
    }
    u.insert(count_name(resource, group), one);
    match (group, resource) {
        ("", "pods") => {
            u.insert("pods".into(), one);
            for (name, section, res) in POD_COMPUTE {
                if let Some(q) = pod_resource(obj, section, res) {
                    u.insert((*name).to_string(), q);
                }
            }
        }
        ("", "services") => {
            u.insert("services".into(), one);
            let ty = obj
                .pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP");
            if ty == "NodePort" || ty == "LoadBalancer" {
                let ports = obj
                    .pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                u.insert(
                    "services.nodeports".into(),
                    Quantity::from_units(ports as i64),
                );
            }
            if ty == "LoadBalancer" {
                u.insert("services.loadbalancers".into(), one);
            }
        }
        ("", "persistentvolumeclaims") => {
            u.insert(resource.into(), one);
            if let Some(q) = obj
                .pointer("/spec/resources/requests/storage")
                .and_then(|v| Quantity::from_json(v).ok())
            {
                u.insert("requests.storage".into(), q);
            }
        }
        ("", "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas") => {
            u.insert(resource.into(), one);
        }
        _ => {}
    }
    u
}

/// The resource whose objects a quota key counts.
fn resource_of(key: &str) -> Option<(String, String)> {
    if let Some(rest) = key.strip_prefix("count/") {
        return Some(match rest.split_once('.') {
            Some((r, g)) => (r.to_string(), g.to_string()),
            None => (rest.to_string(), String::new()),
        });
    }
    let r = match key {
        "requests.storage" | "persistentvolumeclaims" => "persistentvolumeclaims",
        k if k == "services" || k.starts_with("services.") => "services",
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => key,
        k if k == "pods" || POD_COMPUTE.iter().any(|(n, _, _)| *n == k) => "pods",
        _ => return None,
    };
    Some((r.to_string(), String::new()))
}

/// Whether a quota's scopes (`spec.scopes`, `spec.scopeSelector`) select `obj`. Scoped
/// quotas track pods only.
pub fn in_scope(quota: &Value, resource: &str, obj: &Value) -> bool {
    let mut terms: Vec<(String, String, Vec<String>)> = quota
        .pointer("/spec/scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|s| (s.to_string(), "Exists".to_string(), Vec::new()))
        .collect();
    for e in quota
        .pointer("/spec/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let get = |k: &str| {
            e.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let values = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        terms.push((get("scopeName"), get("operator"), values));
    }
    if terms.is_empty() {
        return true;
    }
    if resource != "pods" {
        return false;
    }
    let terminating = obj
        .pointer("/spec/activeDeadlineSeconds")
        .is_some_and(|v| !v.is_null());
    let best_effort = super::defaults::qos_class(obj.get("spec")) == "BestEffort";
    let priority_class = obj
        .pointer("/spec/priorityClassName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    terms.iter().all(|(scope, op, values)| {
        let base = match scope.as_str() {
            "Terminating" => terminating,
            "NotTerminating" => !terminating,
            "BestEffort" => best_effort,
            "NotBestEffort" => !best_effort,
            "PriorityClass" => match op.as_str() {
                "In" => values.iter().any(|v| v == priority_class),
                "NotIn" => !values.iter().any(|v| v == priority_class),
                "DoesNotExist" => priority_class.is_empty(),
                _ => !priority_class.is_empty(),
            },
            _ => false,
        };
        match (scope.as_str(), op.as_str()) {
            ("PriorityClass", _) => base,
            (_, "DoesNotExist") => !base,
            _ => base,
        }
    })
}

/// Current usage of `keys` in `namespace`, computed from the stored objects.
pub async fn compute_used(
    store: &dyn Store,
    namespace: &str,
    quota: &Value,
    keys: &[String],
) -> Result<Usage, StoreError> {
    let mut used = Usage::new();
    let mut cache: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for key in keys {
        let Some((resource, group)) = resource_of(key) else {
            continue;
        };
        if !cache.contains_key(&resource) {
            let objs = stored::list(store, &stored::prefix(&resource, Some(namespace))).await?;
            cache.insert(
                resource.clone(),
                objs.into_iter().map(|(_, v, _)| v).collect(),
            );
        }
        let mut total = Quantity::zero();
        for obj in cache.get(&resource).into_iter().flatten() {
            if !in_scope(quota, &resource, obj) {
                continue;
            }
            if let Some(q) = usage(&resource, &group, obj).get(key) {
                total = total + *q;
            }
        }
        used.insert(key.clone(), total);
    }
    Ok(used)
}

fn quantities(v: Option<&Value>) -> Usage {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Quantity::from_json(v).ok().map(|q| (k.clone(), q)))
                .collect()
        })
        .unwrap_or_default()
}

fn to_json(u: &Usage) -> Value {
    Value::Object(
        u.iter()
            .map(|(k, q)| (k.clone(), json!(q.to_string())))
            .collect(),
    )
}

/// Fills a ResourceQuota's `status` (hard from spec, used computed from the namespace)
/// when it is created or its `spec.hard` changes; usage already tracked is kept.
pub async fn init_status(
    store: &dyn Store,
    namespace: &str,
    quota: &mut Value,
) -> Result<(), StoreError> {
    let hard = quota.pointer("/spec/hard").cloned().unwrap_or(json!({}));
    let keys: Vec<String> = hard
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let mut used = quantities(quota.pointer("/status/used"));
    let missing: Vec<String> = keys
        .iter()
        .filter(|k| !used.contains_key(*k))
        .cloned()
        .collect();
    used.extend(compute_used(store, namespace, &*quota, &missing).await?);
    used.retain(|k, _| keys.contains(k));
    if let Some(o) = quota.as_object_mut() {
        o.insert(
            "status".into(),
            json!({"hard": hard, "used": to_json(&used)}),
        );
    }
    Ok(())
}

/// Recomputes every quota's `status.used` from the stored objects (CAS, retried) and
/// returns how many quotas were corrected. A crash between a charge and the write it
/// admitted leaves usage counted for an object that was never stored; the API server runs
/// this at start, as kube's quota controller resyncs.
pub async fn reconcile(store: &dyn Store) -> Result<usize, StoreError> {
    let mut fixed = 0;
    for (key, _, _) in stored::list(store, "/registry/resourcequotas/").await? {
        for _ in 0..ATTEMPTS {
            let Some((mut quota, rev)) = stored::get(store, &key).await? else {
                break;
            };
            let namespace = quota
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let keys: Vec<String> = quota
                .pointer("/spec/hard")
                .and_then(Value::as_object)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            let used = compute_used(store, &namespace, &quota, &keys).await?;
            if quantities(quota.pointer("/status/used")) == used
                && quota.pointer("/status/hard") == quota.pointer("/spec/hard")
            {
                break;
            }
            set_status(&mut quota, &used);
            match store.update(&key, stored::encode(&quota), rev).await {
                Ok(_) => {
                    fixed += 1;
                    break;
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(fixed)
}

fn pretty(keys: &[String], u: &Usage) -> String {
    keys.iter()
        .map(|k| format!("{k}={}", u.get(k).copied().unwrap_or_else(Quantity::zero)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Containers missing a request/limit the quota constrains (`requests.cpu for: web`).
fn missing_compute(hard: &Usage, pod: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (name, section, res) in POD_COMPUTE {
        if !hard.contains_key(*name) {
            continue;
        }
        let lacking: Vec<&str> = ["containers", "initContainers"]
            .iter()
            .filter_map(|l| pod.pointer(&format!("/spec/{l}")).and_then(Value::as_array))
            .flatten()
            .filter(|c| c.pointer(&format!("/resources/{section}/{res}")).is_none())
            .filter_map(|c| c.get("name").and_then(Value::as_str))
            .collect();
        if !lacking.is_empty() {
            out.push(format!("{name} for: {}", lacking.join(",")));
        }
    }
    out
}

/// Charges the usage of a write (`new` over `old`) to every quota of `namespace` that
/// constrains it, or fails with 403 naming the quota and the numbers. With `dry_run`
/// nothing is written. Returns what was charged, for [`undo`] if the write then fails.
#[allow(clippy::too_many_arguments)]
pub async fn charge(
    store: &dyn Store,
    resource: &str,
    group: &str,
    namespace: &str,
    name: &str,
    new: &Value,
    old: Option<&Value>,
    dry_run: bool,
) -> Result<Vec<Charge>, AdmissionError> {
    let mut delta = usage(resource, group, new);
    if let Some(old) = old {
        for (k, q) in usage(resource, group, old) {
            let d = delta.remove(&k).unwrap_or_else(Quantity::zero) - q;
            delta.insert(k, d);
        }
    }
    delta.retain(|_, q| *q > Quantity::zero());
    if delta.is_empty() {
        return Ok(Vec::new());
    }
    let qprefix = stored::prefix("resourcequotas", Some(namespace));
    'attempt: for _ in 0..ATTEMPTS {
        let mut charged: Vec<Charge> = Vec::new();
        for (key, mut quota, rev) in stored::list(store, &qprefix).await? {
            let qname = quota
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if !in_scope(&quota, resource, new) {
                continue;
            }
            let hard = quantities(quota.pointer("/spec/hard"));
            if resource == "pods" && old.is_none() {
                let missing = missing_compute(&hard, new);
                if !missing.is_empty() {
                    undo(store, &charged).await?;
                    return Err(AdmissionError::forbidden(
                        resource,
                        name,
                        &format!("failed quota: {qname}: must specify {}", missing.join("; ")),
                    ));
                }
            }
            let relevant: Vec<String> = delta
                .keys()
                .filter(|k| hard.contains_key(*k))
                .cloned()
                .collect();
            if relevant.is_empty() {
                continue;
            }
            let mut used = quantities(quota.pointer("/status/used"));
            let unknown: Vec<String> = relevant
                .iter()
                .filter(|k| !used.contains_key(*k))
                .cloned()
                .collect();
            used.extend(compute_used(store, namespace, &quota, &unknown).await?);
            let exceeded: Vec<String> = relevant
                .iter()
                .filter(|k| used[*k] + delta[*k] > hard[*k])
                .cloned()
                .collect();
            if !exceeded.is_empty() {
                undo(store, &charged).await?;
                return Err(AdmissionError::forbidden(
                    resource,
                    name,
                    &format!(
                        "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                        pretty(&exceeded, &delta),
                        pretty(&exceeded, &used),
                        pretty(&exceeded, &hard)
                    ),
                ));
            }
            if dry_run {
                continue;
            }
            for k in &relevant {
                let now = used[k] + delta[k];
                used.insert(k.clone(), now);
            }
            set_status(&mut quota, &used);
            match store.update(&key, stored::encode(&quota), rev).await {
                Ok(_) => charged.push(Charge {
                    namespace: namespace.to_string(),
                    quota: qname,
                    delta: relevant.iter().map(|k| (k.clone(), delta[k])).collect(),
                }),
                Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {
                    undo(store, &charged).await?;
                    continue 'attempt;
                }
                Err(e) => {
                    undo(store, &charged).await?;
                    return Err(e.into());
                }
            }
        }
        return Ok(charged);
    }
    Err(AdmissionError::Conflict(format!(
        "Operation cannot be fulfilled on resourcequotas in namespace {namespace}: too many \
         concurrent writes, please retry"
    )))
}

fn set_status(quota: &mut Value, used: &Usage) {
    let hard = quota.pointer("/spec/hard").cloned().unwrap_or(json!({}));
    let keys: Vec<&String> = hard
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    let kept: Usage = used
        .iter()
        .filter(|(k, _)| keys.contains(k))
        .map(|(k, q)| (k.clone(), *q))
        .collect();
    if let Some(o) = quota.as_object_mut() {
        let status = o
            .entry("status")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(s) = status.as_object_mut() {
            s.insert("hard".into(), hard.clone());
            s.insert("used".into(), to_json(&kept));
        }
    }
}

/// Subtracts `delta` from one quota's usage (CAS, retried; never below zero).
async fn subtract(
    store: &dyn Store,
    key: &str,
    delta: &[(String, Quantity)],
) -> Result<(), StoreError> {
    for _ in 0..ATTEMPTS {
        let Some((mut quota, rev)) = stored::get(store, key).await? else {
            return Ok(());
        };
        let mut used = quantities(quota.pointer("/status/used"));
        for (k, q) in delta {
            if let Some(u) = used.get_mut(k) {
                let left = *u - *q;
                *u = if left.is_negative() {
                    Quantity::zero()
                } else {
                    left
                };
            }
        }
        set_status(&mut quota, &used);
        match store.update(key, stored::encode(&quota), rev).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Unavailable(format!(
        "{key}: too many concurrent writes"
    )))
}

/// Gives back what [`charge`] took (the write it admitted did not happen).
pub async fn undo(store: &dyn Store, charges: &[Charge]) -> Result<(), StoreError> {
    for c in charges {
        subtract(
            store,
            &stored::key("resourcequotas", Some(&c.namespace), &c.quota),
            &c.delta,
        )
        .await?;
    }
    Ok(())
}

/// Releases a deleted object's usage from the quotas of its namespace.
pub async fn release(
    store: &dyn Store,
    resource: &str,
    group: &str,
    namespace: &str,
    obj: &Value,
) -> Result<(), StoreError> {
    release_usage(
        store,
        namespace,
        resource,
        obj,
        &usage(resource, group, obj),
    )
    .await
}

/// What an update gives back (`old` counted for more than `new`, e.g. a pod that
/// finished): released by [`release_usage`] once the update is stored.
pub fn freed_by_update(resource: &str, group: &str, new: &Value, old: &Value) -> Usage {
    let now = usage(resource, group, new);
    usage(resource, group, old)
        .into_iter()
        .filter_map(|(k, before)| {
            let after = now.get(&k).copied().unwrap_or_else(Quantity::zero);
            (before > after).then(|| (k, before - after))
        })
        .collect()
}

/// Subtracts `u` (what `obj`, of `resource`, counted for) from every quota of
/// `namespace` whose scopes select `obj` and that tracks any of it.
pub async fn release_usage(
    store: &dyn Store,
    namespace: &str,
    resource: &str,
    obj: &Value,
    u: &BTreeMap<String, Quantity>,
) -> Result<(), StoreError> {
    if u.is_empty() {
        return Ok(());
    }
    for (key, quota, _) in
        stored::list(store, &stored::prefix("resourcequotas", Some(namespace))).await?
    {
        if !in_scope(&quota, resource, obj) {
            continue;
        }
        let hard = quantities(quota.pointer("/spec/hard"));
        let delta: Vec<(String, Quantity)> = u
            .iter()
            .filter(|(k, _)| hard.contains_key(*k))
            .map(|(k, q)| (k.clone(), *q))
            .collect();
        if !delta.is_empty() {
            subtract(store, &key, &delta).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_usage_sums_containers_and_takes_max_init() {
        let pod = json!({"spec":{"containers":[
            {"name":"a","resources":{"requests":{"cpu":"100m","memory":"64Mi"},"limits":{"cpu":"1"}}},
            {"name":"b","resources":{"requests":{"cpu":"200m"}}}],
          "initContainers":[{"name":"i","resources":{"requests":{"cpu":"500m"}}}]}});
        let u = usage("pods", "", &pod);
        assert_eq!(u["pods"].to_string(), "1");
        assert_eq!(u["count/pods"].to_string(), "1");
        assert_eq!(u["requests.cpu"].to_string(), "500m");
        assert_eq!(u["requests.memory"].to_string(), "64Mi");
        assert_eq!(u["limits.cpu"].to_string(), "1");
        let done = json!({"status":{"phase":"Succeeded"}});
        assert!(usage("pods", "", &done).is_empty());
    }

    #[test]
    fn service_and_count_usage() {
        let svc = json!({"spec":{"type":"NodePort","ports":[{"port":1},{"port":2}]}});
        let u = usage("services", "", &svc);
        assert_eq!(u["services.nodeports"].to_string(), "2");
        assert!(usage("deployments", "apps", &json!({})).contains_key("count/deployments.apps"));
        assert_eq!(
            resource_of("count/deployments.apps"),
            Some(("deployments".into(), "apps".into()))
        );
        assert_eq!(
            resource_of("limits.memory"),
            Some(("pods".into(), String::new()))
        );
    }

    #[test]
    fn scopes_select_pods() {
        let be = json!({"spec":{"containers":[{"name":"c"}]}});
        let burst = json!({"spec":{"containers":[{"name":"c","resources":{"requests":{"cpu":"1"}}}],
                                   "activeDeadlineSeconds":5,"priorityClassName":"high"}});
        let q = |spec: Value| json!({"spec": spec});
        let best = q(json!({"scopes":["BestEffort"]}));
        assert!(in_scope(&best, "pods", &be) && !in_scope(&best, "pods", &burst));
        assert!(
            !in_scope(&best, "services", &be),
            "scoped quotas track pods only"
        );
        let term = q(json!({"scopes":["Terminating","NotBestEffort"]}));
        assert!(in_scope(&term, "pods", &burst) && !in_scope(&term, "pods", &be));
        let prio = q(json!({"scopeSelector":{"matchExpressions":[
            {"scopeName":"PriorityClass","operator":"In","values":["high"]}]}}));
        assert!(in_scope(&prio, "pods", &burst) && !in_scope(&prio, "pods", &be));
        assert!(in_scope(&q(json!({})), "services", &be));
    }

    #[test]
    fn missing_requests_named() {
        let hard: Usage = [("requests.cpu".to_string(), Quantity::from_units(1))].into();
        let pod = json!({"spec":{"containers":[{"name":"web"}]}});
        assert_eq!(missing_compute(&hard, &pod), vec!["requests.cpu for: web"]);
    }
}
