//! The CRI view of one pod, as a worker acts on it: its sandboxes and its containers'
//! statuses. A full `take` costs three List/Status round trips plus one per container;
//! after the worker's own changes (a new sandbox, containers it just started) the view
//! is brought up to date with one Status call per new object instead, so a new pod's
//! start is not three more full listings long.

use std::collections::HashMap;

use k8s_cri::v1::*;
use tracing::debug;

use super::cri_client::Cri;
use super::cri_spec::{CONTAINER_NAME, POD_UID};

/// The CRI view of one pod this round.
pub struct Snapshot {
    pub sandbox: Option<PodSandbox>,
    pub stale_sandboxes: Vec<String>,
    pub pod_ips: Vec<String>,
    /// Per container name: statuses oldest → newest.
    pub by_name: HashMap<String, Vec<ContainerStatus>>,
    pub max_sandbox_attempt: Option<u32>,
}

impl Snapshot {
    pub fn latest(&self, name: &str) -> Option<&ContainerStatus> {
        self.by_name.get(name).and_then(|v| v.last())
    }
    pub fn previous(&self, name: &str) -> Option<&ContainerStatus> {
        self.by_name
            .get(name)
            .and_then(|v| v.len().checked_sub(2).and_then(|i| v.get(i)))
    }
}

/// Everything the runtime has for pod `uid`: its sandboxes (the ready one, the stale
/// ones) and the containers of the ready (else the newest) sandbox, with their statuses.
pub async fn take(cri: &Cri, uid: &str) -> Result<Snapshot, String> {
    let mut rt = cri.rt.clone();
    let sel = HashMap::from([(POD_UID.to_string(), uid.to_string())]);
    let sbs = rt
        .list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                label_selector: sel.clone(),
                ..Default::default()
            }),
        })
        .await
        .map_err(|e| format!("ListPodSandbox: {}", e.message()))?
        .into_inner()
        .items;
    let max_sandbox_attempt = sbs
        .iter()
        .filter_map(|s| s.metadata.as_ref().map(|m| m.attempt))
        .max();
    let ready = sbs
        .iter()
        .rev()
        .find(|s| s.state == PodSandboxState::SandboxReady as i32)
        .cloned();
    let stale = sbs
        .iter()
        .filter(|s| Some(&s.id) != ready.as_ref().map(|r| &r.id))
        .map(|s| s.id.clone())
        .collect();
    let mut snap = Snapshot {
        sandbox: ready,
        stale_sandboxes: stale,
        pod_ips: Vec::new(),
        by_name: HashMap::new(),
        max_sandbox_attempt,
    };
    // Containers come from the ready sandbox, else from the newest one: a finished
    // pod (sandbox stopped) keeps reporting how its containers ended.
    let Some(sb) = snap.sandbox.clone().or_else(|| sbs.last().cloned()) else {
        return Ok(snap);
    };
    // The sandbox's IPs and its containers are asked for at once: under load each
    // CRI round trip is what a pod start waits on.
    let mut rt2 = rt.clone();
    let ready = snap.sandbox.is_some();
    let sb_id = sb.id.clone();
    let net = async move {
        if !ready {
            return None;
        }
        rt2.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: sb_id,
            verbose: false,
        })
        .await
        .ok()
        .and_then(|st| st.into_inner().status.and_then(|s| s.network))
    };
    let list = rt.list_containers(ListContainersRequest {
        filter: Some(ContainerFilter {
            pod_sandbox_id: sb.id.clone(),
            label_selector: sel,
            ..Default::default()
        }),
    });
    let (net, cs) = tokio::join!(net, list);
    if let Some(n) = net {
        if !n.ip.is_empty() {
            snap.pod_ips.push(n.ip);
        }
        snap.pod_ips
            .extend(n.additional_ips.into_iter().map(|i| i.ip));
    }
    let cs = cs
        .map_err(|e| format!("ListContainers: {}", e.message()))?
        .into_inner()
        .containers;
    let mut by: HashMap<String, Vec<Container>> = HashMap::new();
    for c in cs {
        let name = c.labels.get(CONTAINER_NAME).cloned().unwrap_or_default();
        by.entry(name).or_default().push(c);
    }
    for (name, mut list) in by {
        list.sort_by_key(|c| {
            (
                c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
                c.created_at,
            )
        });
        // Older dead attempts are not needed for status or logs: kubelet keeps one.
        while list.len() > 2 {
            let old = list.remove(0);
            if old.state != ContainerState::ContainerRunning as i32 {
                let _ = rt
                    .remove_container(RemoveContainerRequest {
                        container_id: old.id,
                    })
                    .await;
            }
        }
        let asks = list.into_iter().map(|c| {
            let mut rt = rt.clone();
            async move {
                rt.container_status(ContainerStatusRequest {
                    container_id: c.id.clone(),
                    verbose: false,
                })
                .await
                .map_err(|e| debug!("ContainerStatus {}: {}", c.id, e.message()))
                .ok()
                .and_then(|s| s.into_inner().status)
            }
        });
        let sts: Vec<ContainerStatus> = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        snap.by_name.insert(name, sts);
    }
    Ok(snap)
}

/// The view right after RunPodSandbox made sandbox `id` (attempt `attempt`): no
/// containers yet, the IPs from its status. None when the sandbox is not ready (the
/// caller then takes a full view).
pub async fn of_new_sandbox(cri: &Cri, id: &str, attempt: u32) -> Option<Snapshot> {
    let st = cri
        .rt
        .clone()
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: false,
        })
        .await
        .map_err(|e| debug!("PodSandboxStatus {id}: {}", e.message()))
        .ok()?
        .into_inner()
        .status?;
    if st.state != PodSandboxState::SandboxReady as i32 {
        return None;
    }
    let mut pod_ips = Vec::new();
    if let Some(n) = &st.network {
        if !n.ip.is_empty() {
            pod_ips.push(n.ip.clone());
        }
        pod_ips.extend(n.additional_ips.iter().map(|i| i.ip.clone()));
    }
    Some(Snapshot {
        sandbox: Some(PodSandbox {
            id: st.id,
            metadata: st.metadata,
            state: st.state,
            created_at: st.created_at,
            labels: st.labels,
            annotations: st.annotations,
            runtime_handler: st.runtime_handler,
        }),
        stale_sandboxes: Vec::new(),
        pod_ips,
        by_name: HashMap::new(),
        max_sandbox_attempt: Some(attempt),
    })
}

/// Adds the containers the worker just started (name, id) as their newest attempts.
/// False when a status could not be read (the caller then takes a full view).
pub async fn add_started(cri: &Cri, s: &mut Snapshot, started: &[(String, String)]) -> bool {
    let asks = started.iter().map(|(name, id)| {
        let mut rt = cri.rt.clone();
        async move {
            let st = rt
                .container_status(ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                })
                .await
                .map_err(|e| debug!("ContainerStatus {id}: {}", e.message()))
                .ok()?
                .into_inner()
                .status?;
            Some((name.clone(), st))
        }
    });
    let got = futures::future::join_all(asks).await;
    if got.iter().any(Option::is_none) {
        return false;
    }
    for (name, st) in got.into_iter().flatten() {
        s.by_name.entry(name).or_default().push(st);
    }
    true
}
