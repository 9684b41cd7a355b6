//! Draining the node when `hull up` stops: every sandbox's containers stopped (each
//! with a bounded grace period), then the sandboxes removed — through the CRI socket,
//! as any CRI client would — and the pods' cgroups (the agent's, per QoS class) removed,
//! as the agent does when it tears a pod down.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ListContainersRequest, ListPodSandboxRequest, RemovePodSandboxRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint};

/// Seconds each container gets between SIGTERM and SIGKILL when the node drains.
const DRAIN_GRACE_SECONDS: i64 = 10;

pub async fn connect(socket: &Path) -> anyhow::Result<RuntimeServiceClient<Channel>> {
    let path = socket.to_path_buf();
    // The URI is a placeholder: the connector below always dials the unix socket.
    let channel = Endpoint::try_from("http://[::]:50051")
        .context("CRI endpoint")?
        .connect_with_connector(tower::service_fn(move |_| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
        .with_context(|| format!("connect to the CRI socket {}", socket.display()))?;
    Ok(RuntimeServiceClient::new(channel))
}

/// Stops and removes every pod sandbox; returns how many.
pub async fn drain(socket: &Path) -> anyhow::Result<usize> {
    let mut rt = connect(socket).await?;
    let containers = rt
        .list_containers(ListContainersRequest::default())
        .await
        .context("ListContainers")?
        .into_inner()
        .containers;
    let mut stops = tokio::task::JoinSet::new();
    for c in containers {
        let mut rt = rt.clone();
        stops.spawn(async move {
            let _ = rt
                .stop_container(StopContainerRequest {
                    container_id: c.id,
                    timeout: DRAIN_GRACE_SECONDS,
                })
                .await;
        });
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(DRAIN_GRACE_SECONDS as u64 + 5),
        stops.join_all(),
    )
    .await;
    let sandboxes = rt
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .context("ListPodSandbox")?
        .into_inner()
        .items;
    let n = sandboxes.len();
    let mut uids = Vec::new();
    for s in sandboxes {
        if let Some(uid) = s.metadata.as_ref().map(|m| m.uid.clone()) {
            uids.push(uid);
        }
        if let Err(e) = rt
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: s.id.clone(),
            })
            .await
        {
            eprintln!("hull up: StopPodSandbox {}: {}", s.id, e.message());
        }
        if let Err(e) = rt
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: s.id.clone(),
            })
            .await
        {
            eprintln!("hull up: RemovePodSandbox {}: {}", s.id, e.message());
        }
    }
    // Only this node's pods: other nodes on the same host share /hull-kubepods.
    for uid in uids.iter().filter(|u| !u.is_empty()) {
        for qos in ["", "burstable/", "besteffort/"] {
            hull_agent::node::cgroups::remove(&format!("/hull-kubepods/{qos}pod{uid}"));
        }
    }
    Ok(n)
}
