//! How pods reach the cluster DNS: a `kube-system/kube-dns` Service at the cluster
//! DNS address (10.96.0.10 by default) whose endpoints are each node's own DNS
//! listener.
//!
//! The Service has no selector; every node's proxy publishes one EndpointSlice
//! (`kube-dns-<node>`) naming its listener, and the Service's
//! `internalTrafficPolicy: Local` makes each node DNAT its pods' queries to its own
//! listener, so DNS keeps working on a node cut off from the others and no query
//! crosses the network. The slice is owned by the Node object, so the garbage
//! collector removes it with the node.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::model::SERVICE_NAME_LABEL;

pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "kube-dns";
/// Field manager and `endpointslice.kubernetes.io/managed-by` value, so the
/// EndpointSlice controller leaves these slices alone.
pub const MANAGER: &str = "hull-proxy";

/// Where the cluster DNS is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    /// The Service's ClusterIP: what pods have as `nameserver`.
    pub service_ip: IpAddr,
    /// This node's DNS listener (a node address; never loopback, which the API
    /// refuses as an endpoint and the kernel will not route to from a pod).
    pub endpoint: SocketAddr,
}

/// The Service as hull creates it (when it does not exist yet).
pub fn service(service_ip: IpAddr) -> Service {
    let family = if service_ip.is_ipv4() { "IPv4" } else { "IPv6" };
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": NAME,
            "namespace": NAMESPACE,
            "labels": {
                "k8s-app": "kube-dns",
                "kubernetes.io/name": "KubeDNS",
                "app.kubernetes.io/managed-by": MANAGER,
            },
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": service_ip.to_string(),
            "clusterIPs": [service_ip.to_string()],
            "ipFamilies": [family],
            "internalTrafficPolicy": "Local",
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ],
        },
    }))
    .unwrap_or_default()
}

/// The slice name for a node (object names are at most 253 characters).
pub fn slice_name(node: &str) -> String {
    let mut n = format!("{NAME}-{node}");
    n.truncate(253);
    n
}

/// This node's EndpointSlice for the Service; `node_uid` makes the Node its owner.
pub fn slice(node: &str, node_uid: Option<&str>, endpoint: SocketAddr) -> EndpointSlice {
    let family = if endpoint.is_ipv4() { "IPv4" } else { "IPv6" };
    let owners = node_uid
        .map(|uid| json!([{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}]))
        .unwrap_or(json!([]));
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(node),
            "namespace": NAMESPACE,
            "labels": {
                SERVICE_NAME_LABEL: NAME,
                "endpointslice.kubernetes.io/managed-by": MANAGER,
            },
            "ownerReferences": owners,
        },
        "addressType": family,
        "endpoints": [{
            "addresses": [endpoint.ip().to_string()],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": node,
        }],
        "ports": [
            {"name": "dns", "port": endpoint.port(), "protocol": "UDP"},
            {"name": "dns-tcp", "port": endpoint.port(), "protocol": "TCP"},
        ],
    }))
    .unwrap_or_default()
}

/// Create the Service if missing and apply this node's slice. Idempotent; the
/// caller repeats it (the API may not be ready, the Node may not be registered yet).
pub async fn ensure(
    client: &kube::Client,
    node: &str,
    dns: &ClusterDns,
) -> Result<(), kube::Error> {
    let svcs: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    match svcs.get_opt(NAME).await? {
        None => match svcs
            .create(&PostParams::default(), &service(dns.service_ip))
            .await
        {
            Ok(_) => tracing::info!("created {NAMESPACE}/{NAME} at {}", dns.service_ip),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        },
        Some(s) => {
            let ip = s.spec.as_ref().and_then(|s| s.cluster_ip.clone());
            if ip.as_deref() != Some(dns.service_ip.to_string().as_str()) {
                tracing::warn!(
                    "{NAMESPACE}/{NAME} has clusterIP {ip:?}, not the cluster DNS address {}: pods will not reach DNS",
                    dns.service_ip
                );
            }
        }
    }
    let node_uid = Api::<Node>::all(client.clone())
        .get_opt(node)
        .await?
        .and_then(|n| n.metadata.uid);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let want = slice(node, node_uid.as_deref(), dns.endpoint);
    slices
        .patch(
            &slice_name(node),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&want),
        )
        .await?;
    Ok(())
}

/// Remove this node's slice (on a clean stop, so no other component sends queries
/// to a listener that is gone).
pub async fn withdraw(client: &kube::Client, node: &str) -> Result<(), kube::Error> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    match slices.delete(&slice_name(node), &Default::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
