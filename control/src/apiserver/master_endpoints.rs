//! The `default/kubernetes` Service and its Endpoints/EndpointSlice, as kube-apiserver's
//! "master endpoints" reconciler keeps them: ClusterIP = the first address of the service
//! range, port 443 (`https`) → this server's advertise address and port. Checked at start
//! and every 10 s, so a deleted or edited one comes back and in-cluster clients
//! (`kubernetes.default.svc`, `KUBERNETES_SERVICE_HOST`) always find the API.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::ApiState;
use crate::admission::{self, Operation};
use crate::store::{Store, StoreError};

/// How often the objects are checked.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// The first usable address of a CIDR (`10.96.0.0/12` → `10.96.0.1`).
pub fn first_ip(cidr: &str) -> Option<IpAddr> {
    let (net, _) = cidr.split_once('/')?;
    match net.parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) => Some(IpAddr::V4(Ipv4Addr::from(u32::from(v4).checked_add(1)?))),
        IpAddr::V6(v6) => Some(IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6).checked_add(1)?,
        ))),
    }
}

fn meta(labels: Value) -> Value {
    json!({
        "name": "kubernetes", "namespace": "default",
        "uid": uuid::Uuid::new_v4().to_string(),
        "creationTimestamp": super::rest::object::now_rfc3339(),
        "labels": labels,
    })
}

async fn ensure_service(state: &ApiState, cluster_ip: &str, port: u16) -> Result<(), String> {
    let key = "/registry/services/default/kubernetes";
    if state
        .store
        .get(key)
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(());
    }
    let mut obj = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": meta(json!({"component": "apiserver", "provider": "kubernetes"})),
        "spec": {
            "type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "sessionAffinity": "None",
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
        },
    });
    let req = admission::Request {
        operation: Operation::Create,
        group: "",
        version: "v1",
        kind: "Service",
        resource: "services",
        subresource: None,
        namespace: Some("default"),
        name: "kubernetes",
        dry_run: false,
    };
    let admitted = state
        .admission
        .admit(state.store.as_ref(), &req, &mut obj, None)
        .await
        .map_err(|e| e.to_string())?;
    let written = state
        .store
        .create(key, serde_json::to_vec(&obj).unwrap_or_default())
        .await;
    let store = state.store.as_ref();
    match written {
        Ok(_) => {
            let _ = admitted.commit(store).await;
            tracing::info!(%cluster_ip, "created Service default/kubernetes");
            Ok(())
        }
        Err(StoreError::AlreadyExists { .. }) => {
            let _ = admitted.undo(store).await;
            Ok(())
        }
        Err(e) => {
            let _ = admitted.undo(store).await;
            Err(e.to_string())
        }
    }
}

/// Writes `want` at `key` unless what is there already has the same `fields`.
async fn ensure(store: &dyn Store, key: &str, want: Value, fields: &[&str]) -> Result<(), String> {
    loop {
        let current = store.get(key).await.map_err(|e| e.to_string())?;
        match current {
            None => match store
                .create(key, serde_json::to_vec(&want).unwrap_or_default())
                .await
            {
                Ok(_) | Err(StoreError::AlreadyExists { .. }) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            },
            Some(kv) => {
                let live: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
                let same = fields.iter().all(|f| live.get(*f) == want.get(*f))
                    && live["metadata"]["labels"] == want["metadata"]["labels"];
                if same {
                    return Ok(());
                }
                let mut next = live.clone();
                for f in fields {
                    next[*f] = want[*f].clone();
                }
                next["metadata"]["labels"] = want["metadata"]["labels"].clone();
                match store
                    .update(
                        key,
                        serde_json::to_vec(&next).unwrap_or_default(),
                        kv.mod_revision,
                    )
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => continue,
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    }
}

/// One pass: the Service, then Endpoints and EndpointSlice pointing at `addr:port`.
pub async fn reconcile(state: &ApiState, addr: IpAddr, port: u16) -> Result<(), String> {
    let cluster_ip = first_ip(&state.service_cluster_ip_range)
        .ok_or_else(|| {
            format!(
                "--service-cluster-ip-range {:?}",
                state.service_cluster_ip_range
            )
        })?
        .to_string();
    ensure_service(state, &cluster_ip, port).await?;
    let ip = addr.to_string();
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        // Mirrored into an EndpointSlice by nobody: this server writes that one itself.
        "metadata": meta(json!({"endpointslice.kubernetes.io/skip-mirror": "true"})),
        "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
    });
    ensure(
        state.store.as_ref(),
        "/registry/endpoints/default/kubernetes",
        endpoints,
        &["subsets"],
    )
    .await?;
    let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": meta(json!({"kubernetes.io/service-name": "kubernetes"})),
        "addressType": family,
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    });
    ensure(
        state.store.as_ref(),
        "/registry/endpointslices/default/kubernetes",
        slice,
        &["addressType", "endpoints", "ports"],
    )
    .await
}

/// Runs [`reconcile`] now and every [`INTERVAL`] until shutdown.
pub fn spawn(state: Arc<ApiState>, addr: IpAddr, port: u16) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut stop = state.shutdown.clone();
        loop {
            if let Err(e) = reconcile(&state, addr, port).await {
                tracing::warn!("reconciling Service default/kubernetes: {e}");
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(INTERVAL) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_address_of_the_range() {
        assert_eq!(
            first_ip("10.96.0.0/12").map(|i| i.to_string()).as_deref(),
            Some("10.96.0.1")
        );
        assert_eq!(
            first_ip("fd00::/108").map(|i| i.to_string()).as_deref(),
            Some("fd00::1")
        );
        assert!(first_ip("nope").is_none());
    }
}
