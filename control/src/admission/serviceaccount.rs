//! The ServiceAccount admission plugin: a new pod gets `serviceAccountName` (default
//! `default`) and, unless `automountServiceAccountToken` is false (on the pod, else on its
//! ServiceAccount), a `kube-api-access-<random>` projected volume — a bound token, the
//! cluster CA (`kube-root-ca.crt`) and the namespace — mounted read-only at
//! `/var/run/secrets/kubernetes.io/serviceaccount` in every container.
//!
//! Unlike kube-apiserver, a pod whose ServiceAccount does not exist yet is not refused: the
//! `default` ServiceAccount is created by a controller right after its namespace, and
//! refusing would race every namespace's first pod.

use serde_json::{Value, json};

use super::stored;
use crate::store::Store;

pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// kubelet's default lifetime for the projected token (kube-apiserver uses the same).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
const MIRROR: &str = "kubernetes.io/config.mirror";

fn suffix() -> String {
    use rand::Rng;
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHA[rng.random_range(0..ALPHA.len())] as char)
        .collect()
}

/// The projected volume kube-apiserver adds.
pub fn api_access_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    })
}

/// Applies the plugin to a pod being created in `namespace`.
pub async fn admit_pod(
    store: &dyn Store,
    namespace: &str,
    pod: &mut Value,
) -> Result<(), crate::store::StoreError> {
    if pod
        .pointer(&format!(
            "/metadata/annotations/{}",
            MIRROR.replace('/', "~1")
        ))
        .is_some()
    {
        return Ok(());
    }
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let sa = spec
        .get("serviceAccountName")
        .or_else(|| spec.get("serviceAccount"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    spec.insert("serviceAccountName".into(), sa.clone().into());
    let automount = match spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
    {
        Some(b) => b,
        None => {
            let key = format!("/registry/serviceaccounts/{namespace}/{sa}");
            stored::get(store, &key)
                .await?
                .and_then(|(v, _)| {
                    v.get("automountServiceAccountToken")
                        .and_then(Value::as_bool)
                })
                .unwrap_or(true)
        }
    };
    if !automount {
        return Ok(());
    }
    let mounted = |c: &Value| {
        c.get("volumeMounts")
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|m| m["mountPath"] == MOUNT_PATH))
    };
    let lists = ["initContainers", "containers", "ephemeralContainers"];
    if lists.iter().any(|l| {
        spec.get(*l)
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(mounted))
    }) {
        // The user mounted something there already: leave the pod as written.
        return Ok(());
    }
    let existing: Vec<String> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .map(|v| {
            v.iter()
                .filter_map(|v| v["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let name = loop {
        let n = format!("kube-api-access-{}", suffix());
        if !existing.contains(&n) {
            break n;
        }
    };
    let volumes = spec
        .entry("volumes")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Some(v) = volumes.as_array_mut() {
        v.push(api_access_volume(&name));
    }
    for l in lists {
        if let Some(cs) = spec.get_mut(l).and_then(Value::as_array_mut) {
            for c in cs {
                let mounts = c.as_object_mut().map(|c| {
                    c.entry("volumeMounts")
                        .or_insert_with(|| Value::Array(Vec::new()))
                });
                if let Some(m) = mounts.and_then(Value::as_array_mut) {
                    m.push(json!({"name": name, "readOnly": true, "mountPath": MOUNT_PATH}));
                }
            }
        }
    }
    Ok(())
}
