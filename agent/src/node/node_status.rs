//! The Node object: registration, the status the agent reports (capacity, conditions,
//! addresses, nodeInfo, images) and the heartbeat Lease in `kube-node-lease`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::cri_client::Cri;
use super::{NodeError, Options, machine};

pub const KUBELET_VERSION: &str = "v1.35.0";
const LEASE_DURATION_S: i32 = 40;
pub const HEARTBEAT: Duration = Duration::from_secs(10);

fn now() -> String {
    Timestamp::now().to_string()
}

fn now_s() -> String {
    // metav1.Time is second precision.
    Timestamp::from_second(Timestamp::now().as_second())
        .map(|t| t.to_string())
        .unwrap_or_else(|_| now())
}

pub fn node_ip(opts: &Options) -> std::net::IpAddr {
    opts.node_ip.unwrap_or_else(machine::default_ip)
}

fn labels(opts: &Options) -> BTreeMap<String, String> {
    let arch = machine::go_arch();
    BTreeMap::from([
        ("kubernetes.io/hostname".into(), opts.node_name.clone()),
        ("kubernetes.io/os".into(), "linux".into()),
        ("kubernetes.io/arch".into(), arch.into()),
        ("beta.kubernetes.io/os".into(), "linux".into()),
        ("beta.kubernetes.io/arch".into(), arch.into()),
    ])
}

/// Creates the Node, or adopts an existing one (its labels are brought up to date,
/// nothing else of it is touched: taints and podCIDR belong to others).
pub async fn register(client: &kube::Client, opts: &Options) -> Result<Node, NodeError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": opts.node_name, "labels": labels(opts),
            "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
        "spec": {},
    }))
    .map_err(|e| NodeError::Options(format!("node object: {e}")))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(n) => {
            info!(node = %opts.node_name, "registered node");
            Ok(n)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let patch = json!({"metadata": {"labels": labels(opts)}});
            let n = nodes
                .patch(
                    &opts.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            info!(node = %opts.node_name, "node already registered; adopted it");
            Ok(n)
        }
        Err(e) => Err(e.into()),
    }
}

/// What the agent last reported, so transition times only move on a change.
#[derive(Default)]
pub struct Reporter {
    conditions: BTreeMap<String, (String, String)>,
    pub pod_cidr: Option<String>,
    runtime_version: String,
}

fn q(v: impl ToString) -> Value {
    Value::String(v.to_string())
}

impl Reporter {
    pub async fn report(
        &mut self,
        client: &kube::Client,
        cri: &Cri,
        opts: &Options,
    ) -> Result<(), NodeError> {
        let mut rt = cri.rt.clone();
        if self.runtime_version.is_empty()
            && let Ok(v) = rt.version(k8s_cri::v1::VersionRequest::default()).await
        {
            let v = v.into_inner();
            self.runtime_version = format!("{}://{}", v.runtime_name, v.runtime_version);
        }
        let runtime_ready = match rt.status(k8s_cri::v1::StatusRequest::default()).await {
            Ok(s) => s
                .into_inner()
                .status
                .map(|s| {
                    s.conditions
                        .iter()
                        .filter(|c| c.r#type == "RuntimeReady" || c.r#type == "NetworkReady")
                        .all(|c| c.status)
                })
                .unwrap_or(false),
            Err(e) => {
                warn!("CRI status: {e}");
                false
            }
        };
        let (mem_total, mem_avail) = machine::memory_ki();
        let (disk_total, disk_avail) = machine::disk_bytes(&opts.data_dir);
        let (pids_now, pid_max) = machine::pids();
        let cpus = machine::cpus();
        let capacity = json!({
            "cpu": q(cpus), "memory": format!("{mem_total}Ki"),
            "ephemeral-storage": format!("{}Ki", disk_total / 1024),
            "pods": q(opts.max_pods), "hugepages-2Mi": "0", "hugepages-1Gi": "0",
        });
        let allocatable = json!({
            "cpu": q(cpus),
            "memory": format!("{}Ki", mem_total.saturating_sub(machine::EVICTION_MEMORY_KI)),
            "ephemeral-storage": format!("{}Ki", disk_total / 1024 * 9 / 10),
            "pods": q(opts.max_pods), "hugepages-2Mi": "0", "hugepages-1Gi": "0",
        });
        let mem_pressure = mem_avail < machine::EVICTION_MEMORY_KI;
        let disk_pressure = disk_total > 0 && disk_avail < disk_total / 10;
        let pid_pressure = pids_now * 10 > pid_max * 9;
        let conds = [
            (
                "MemoryPressure",
                mem_pressure,
                "KubeletHasInsufficientMemory",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            (
                "DiskPressure",
                disk_pressure,
                "KubeletHasDiskPressure",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            ),
            (
                "PIDPressure",
                pid_pressure,
                "KubeletHasInsufficientPID",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
        ];
        let hb = now_s();
        let mut conditions = Vec::new();
        for (ty, on, reason_on, reason_off, msg_off) in conds {
            let status = if on { "True" } else { "False" };
            let reason = if on { reason_on } else { reason_off };
            let msg = if on {
                format!("kubelet has {ty}")
            } else {
                msg_off.to_string()
            };
            conditions.push(self.condition(ty, status, reason, &msg, &hb));
        }
        let (rs, rr, rm) = if runtime_ready {
            ("True", "KubeletReady", "kubelet is posting ready status")
        } else {
            ("False", "KubeletNotReady", "container runtime is not ready")
        };
        conditions.push(self.condition("Ready", rs, rr, rm, &hb));
        let images = self.images(cri).await;
        let id = machine::identity();
        let ip = node_ip(opts);
        let status = json!({"status": {
            "capacity": capacity, "allocatable": allocatable,
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": ip.to_string()},
                          {"type": "Hostname", "address": opts.node_name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": opts.kubelet_port}},
            "nodeInfo": {"machineID": id.machine_id, "systemUUID": id.system_uuid,
                "bootID": id.boot_id, "kernelVersion": id.kernel_version,
                "osImage": id.os_image, "containerRuntimeVersion": self.runtime_version,
                "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": "",
                "operatingSystem": "linux", "architecture": id.arch},
            "images": images,
        }});
        let nodes: Api<Node> = Api::all(client.clone());
        let n = nodes
            .patch_status(
                &opts.node_name,
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await?;
        let cidr = n.spec.and_then(|s| s.pod_cidr);
        if cidr.is_some() && cidr != self.pod_cidr {
            let c = cidr.clone().unwrap_or_default();
            let req = k8s_cri::v1::UpdateRuntimeConfigRequest {
                runtime_config: Some(k8s_cri::v1::RuntimeConfig {
                    network_config: Some(k8s_cri::v1::NetworkConfig {
                        pod_cidr: c.clone(),
                    }),
                }),
            };
            match rt.update_runtime_config(req).await {
                Ok(_) => {
                    info!(pod_cidr = %c, "pod CIDR passed to the runtime");
                    self.pod_cidr = cidr;
                }
                Err(e) => warn!("CRI UpdateRuntimeConfig({c}): {e}"),
            }
        }
        Ok(())
    }

    fn condition(&mut self, ty: &str, status: &str, reason: &str, msg: &str, hb: &str) -> Value {
        let key = ty.to_string();
        let changed = self.conditions.get(&key).is_none_or(|(s, _)| s != status);
        if changed {
            self.conditions
                .insert(key.clone(), (status.to_string(), hb.to_string()));
        }
        let since = self
            .conditions
            .get(&key)
            .map(|(_, t)| t.clone())
            .unwrap_or_default();
        json!({"type": ty, "status": status, "reason": reason, "message": msg,
               "lastHeartbeatTime": hb, "lastTransitionTime": since})
    }

    async fn images(&self, cri: &Cri) -> Vec<Value> {
        let mut img = cri.img.clone();
        let Ok(r) = img
            .list_images(k8s_cri::v1::ListImagesRequest::default())
            .await
        else {
            return Vec::new();
        };
        let mut out: Vec<(u64, Value)> = r
            .into_inner()
            .images
            .into_iter()
            .map(|i| {
                let mut names = i.repo_digests.clone();
                names.extend(i.repo_tags.iter().cloned());
                (i.size, json!({"names": names, "sizeBytes": i.size}))
            })
            .collect();
        // kubelet reports the 50 largest.
        out.sort_by_key(|b| std::cmp::Reverse(b.0));
        out.into_iter().take(50).map(|(_, v)| v).collect()
    }
}

/// Renews (or creates) `kube-node-lease/<node>`.
pub async fn renew_lease(client: &kube::Client, node: &Node) -> Result<(), NodeError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renew = now();
    let patch = json!({"spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_S,
        "renewTime": renew}});
    match leases
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let lease: Lease = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease",
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name,
                        "uid": node.metadata.uid.clone().unwrap_or_default()}]},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_S,
                    "renewTime": renew},
            }))
            .map_err(|e| NodeError::Options(format!("lease object: {e}")))?;
            match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}
