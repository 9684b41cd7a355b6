//! Finding a pod's sandbox and containers through the CRI, by the labels the kubelet puts
//! on them (`io.kubernetes.pod.{namespace,name,uid}`, `io.kubernetes.container.name`), so
//! the kubelet API depends on nothing but the CRI socket.

use std::collections::HashMap;
use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint};

use super::ApiError;

pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";

pub type Cri = RuntimeServiceClient<Channel>;

/// A lazily connecting client on the CRI unix socket (it reconnects when the CRI server
/// restarts).
pub fn connect(socket: PathBuf) -> Result<Cri, tonic::transport::Error> {
    let ch = Endpoint::try_from("http://[::]:50051")?.connect_with_connector_lazy(
        tower::service_fn(move |_| {
            let s = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(s).await?))
            }
        }),
    );
    Ok(RuntimeServiceClient::new(ch).max_decoding_message_size(64 << 20))
}

fn cri_err(what: &str, e: tonic::Status) -> ApiError {
    ApiError::Internal(format!("CRI {what}: {}", e.message()))
}

/// The pod's newest sandbox (ready ones first).
pub async fn sandbox(cri: &mut Cri, ns: &str, pod: &str) -> Result<PodSandbox, ApiError> {
    let labels = HashMap::from([
        (POD_NAMESPACE.to_string(), ns.to_string()),
        (POD_NAME.to_string(), pod.to_string()),
    ]);
    let mut items = cri
        .list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                label_selector: labels,
                ..Default::default()
            }),
        })
        .await
        .map_err(|e| cri_err("ListPodSandbox", e))?
        .into_inner()
        .items;
    items.sort_by_key(|s| {
        (
            s.state == PodSandboxState::SandboxReady as i32,
            s.created_at,
        )
    });
    items.pop().ok_or_else(|| {
        ApiError::NotFound(format!(
            "pod \"{pod}\" in namespace \"{ns}\" not found on this node"
        ))
    })
}

/// The pod's containers named `name`, newest first (across the pod's sandboxes, as a
/// restarted sandbox keeps the previous container's logs).
pub async fn containers(
    cri: &mut Cri,
    ns: &str,
    pod: &str,
    name: &str,
) -> Result<Vec<Container>, ApiError> {
    let mut labels = HashMap::from([
        (POD_NAMESPACE.to_string(), ns.to_string()),
        (POD_NAME.to_string(), pod.to_string()),
    ]);
    if !name.is_empty() {
        labels.insert(CONTAINER_NAME.to_string(), name.to_string());
    }
    let mut items = cri
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                label_selector: labels,
                ..Default::default()
            }),
        })
        .await
        .map_err(|e| cri_err("ListContainers", e))?
        .into_inner()
        .containers;
    items.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    Ok(items)
}

/// The current container (or with `previous`, the one before it) of `name` in the pod.
pub async fn container(
    cri: &mut Cri,
    ns: &str,
    pod: &str,
    name: &str,
    previous: bool,
) -> Result<Container, ApiError> {
    let all = containers(cri, ns, pod, name).await?;
    let idx = usize::from(previous);
    match all.into_iter().nth(idx) {
        Some(c) => Ok(c),
        None if previous => Err(ApiError::BadRequest(format!(
            "previous terminated container \"{name}\" in pod \"{pod}\" not found"
        ))),
        None => Err(ApiError::NotFound(format!(
            "container \"{name}\" in pod \"{pod}\" (namespace \"{ns}\") not found on this node"
        ))),
    }
}

pub async fn status(cri: &mut Cri, id: &str) -> Result<ContainerStatus, ApiError> {
    cri.container_status(ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .map_err(|e| cri_err("ContainerStatus", e))?
    .into_inner()
    .status
    .ok_or_else(|| ApiError::Internal(format!("CRI ContainerStatus of {id}: no status")))
}
