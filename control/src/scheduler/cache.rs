//! The scheduler's in-memory view of the cluster, fed by watches: nodes (with their
//! Lease renewals), every pod, and what the bound pods use on each node.
//!
//! A pod the scheduler has decided on is *assumed* onto its node at once, before the
//! binding is written, so the next decision already sees its requests and ports (as
//! kube-scheduler's assume cache does); the watch later confirms it, or a failed binding
//! forgets it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};

use super::labels::Labels;
use super::resources::{self, Resources};

/// A host port in use: (host IP, protocol, port). `0.0.0.0` means every address.
pub type HostPort = (String, String, i32);

/// The maps a decision looks a node up in, once or twice per node per pod: a fast
/// (randomly seeded) hasher instead of SipHash, whose cost showed in the profile.
pub type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The node's Ready condition: False is reported as the `not-ready` taint node lifecycle
/// would set, Unknown (the node stopped reporting) as `unreachable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady,
    Unknown,
}

/// What the scheduler keeps of a Node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub labels: Labels,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub ready: Readiness,
    pub allocatable: Resources,
    /// Normalized image name → size in bytes (`status.images`).
    pub images: HashMap<String, i64>,
}

impl NodeInfo {
    pub fn from_node(node: &Node) -> NodeInfo {
        let spec = node.spec.as_ref();
        let status = node.status.as_ref();
        let ready_cond = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        let mut images = HashMap::new();
        for img in status.and_then(|s| s.images.as_ref()).into_iter().flatten() {
            for name in img.names.iter().flatten() {
                images.insert(normalize_image(name), img.size_bytes.unwrap_or(0));
            }
        }
        NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            ready: match ready_cond.map(|c| c.status.as_str()) {
                Some("True") => Readiness::Ready,
                Some("Unknown") => Readiness::Unknown,
                // A node that has not reported yet is not ready (kubelet registers
                // with the not-ready taint).
                _ => Readiness::NotReady,
            },
            allocatable: resources::allocatable(node),
            images,
        }
    }

    /// Whether a change from `self` to `other` could make a pending pod fit.
    pub fn differs_for_scheduling(&self, other: &NodeInfo) -> bool {
        self.labels != other.labels
            || self.taints != other.taints
            || self.unschedulable != other.unschedulable
            || self.ready != other.ready
            || self.allocatable != other.allocatable
            || self.images.len() != other.images.len()
    }
}

/// The zone label: default spreading counts a controller's pods per zone next to per node.
pub const ZONE: &str = "topology.kubernetes.io/zone";

/// Docker-style normalization, so `busybox` on a pod matches
/// `docker.io/library/busybox:latest` in a node's image list.
pub fn normalize_image(name: &str) -> String {
    let (repo, tail) = match name.split_once('@') {
        Some((r, d)) => (r, format!("@{d}")),
        None => {
            let slash = name.rfind('/').map_or(0, |i| i + 1);
            match name[slash..].rfind(':') {
                Some(i) => (&name[..slash + i], name[slash + i..].to_string()),
                None => (name, ":latest".to_string()),
            }
        }
    };
    let first = repo.split('/').next().unwrap_or("");
    let has_host =
        repo.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_host {
        repo.to_string()
    } else if repo.contains('/') {
        format!("docker.io/{repo}")
    } else {
        format!("docker.io/library/{repo}")
    };
    format!("{full}{tail}")
}

/// What the scheduler keeps of a Pod (parsed once per watch event).
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub key: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: Labels,
    pub node_name: Option<String>,
    pub scheduler_name: String,
    pub priority: i32,
    /// Succeeded or Failed: holds no resources any more.
    pub terminal: bool,
    pub deleting: bool,
    pub requests: Resources,
    pub nonzero: Resources,
    pub host_ports: Vec<HostPort>,
    /// The controller owner's uid (ReplicaSet, StatefulSet, ...), for default spreading.
    pub owner: Option<String>,
    pub has_required_anti_affinity: bool,
    pub pod: Arc<Pod>,
}

impl PodInfo {
    pub fn from_pod(pod: Pod) -> PodInfo {
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref();
        let namespace = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let (requests, nonzero) = resources::pod_requests(&pod);
        let mut host_ports = Vec::new();
        for c in spec.into_iter().flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
        }) {
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|hp| *hp > 0) {
                    host_ports.push((
                        p.host_ip
                            .clone()
                            .filter(|ip| !ip.is_empty())
                            .unwrap_or_else(|| "0.0.0.0".into()),
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        hp,
                    ));
                }
            }
        }
        let owner = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        let has_required_anti_affinity = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_some_and(|t| !t.is_empty());
        PodInfo {
            key: format!("{namespace}/{name}"),
            uid: meta.uid.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            node_name: spec
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            scheduler_name: spec
                .and_then(|s| s.scheduler_name.clone())
                .unwrap_or_else(|| "default-scheduler".into()),
            priority: spec.and_then(|s| s.priority).unwrap_or(0),
            terminal: matches!(phase, Some("Succeeded" | "Failed")),
            deleting: meta.deletion_timestamp.is_some(),
            requests,
            nonzero,
            host_ports,
            owner,
            has_required_anti_affinity,
            namespace,
            name,
            pod: Arc::new(pod),
        }
    }
}

/// What the pods bound (or assumed) to one node use.
#[derive(Debug, Default, Clone)]
pub struct Usage {
    pub requested: Resources,
    pub nonzero: Resources,
    pub ports: Vec<HostPort>,
    pub pods: HashSet<String>,
}

/// Whether two host ports collide (same protocol and port, and either address is the
/// wildcard or both are the same address).
pub fn ports_conflict(a: &HostPort, b: &HostPort) -> bool {
    a.1 == b.1 && a.2 == b.2 && (a.0 == b.0 || a.0 == "0.0.0.0" || b.0 == "0.0.0.0")
}

#[derive(Default)]
pub struct Cache {
    pub nodes: Map<String, NodeInfo>,
    /// Node names in a stable order, for round-robin sampling.
    pub order: Vec<String>,
    index: Map<String, usize>,
    /// How many nodes carry the zone label (default spreading looks at zones only
    /// when some do).
    pub zoned_nodes: usize,
    /// Per node name, when its Lease lapses: `renewTime` plus the longer of
    /// `leaseDurationSeconds` and the node monitor grace period.
    pub lease_expiry: Map<String, Timestamp>,
    /// Every pod the watch has shown (bound, pending, any scheduler).
    pub pods: Map<String, Arc<PodInfo>>,
    /// Pods this scheduler decided on and whose binding is not yet seen: key → node.
    pub assumed: Map<String, String>,
    /// What each pod contributes to a node's usage (key → node, pod).
    accounted: Map<String, (String, Arc<PodInfo>)>,
    pub usage: Map<String, Usage>,
    /// Controller owner uid → node → pods of that owner there (default spreading).
    pub owners: Map<String, Map<String, u32>>,
    /// Bound pods carrying required anti-affinity (checked against every incoming pod).
    pub anti_affinity_pods: HashSet<String>,
    /// Normalized image → number of nodes that have it (image locality's spread factor).
    pub image_nodes: HashMap<String, u32>,
    pub namespaces: HashMap<String, Labels>,
}

impl Cache {
    /// Adds or replaces a node; returns whether pending pods should be retried.
    pub fn upsert_node(&mut self, info: NodeInfo) -> bool {
        let name = info.name.clone();
        for img in info.images.keys() {
            *self.image_nodes.entry(img.clone()).or_insert(0) += 1;
        }
        self.zoned_nodes += usize::from(info.labels.contains_key(ZONE));
        match self.nodes.insert(name.clone(), info) {
            Some(old) => {
                self.drop_images(&old);
                self.zoned_nodes -= usize::from(old.labels.contains_key(ZONE));
                self.nodes
                    .get(&name)
                    .is_some_and(|new| old.differs_for_scheduling(new))
            }
            None => {
                self.index.insert(name.clone(), self.order.len());
                self.order.push(name);
                true
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(old) = self.nodes.remove(name) {
            self.drop_images(&old);
            self.zoned_nodes -= usize::from(old.labels.contains_key(ZONE));
        }
        if let Some(i) = self.index.remove(name) {
            self.order.swap_remove(i);
            if let Some(moved) = self.order.get(i) {
                self.index.insert(moved.clone(), i);
            }
        }
    }

    fn drop_images(&mut self, node: &NodeInfo) {
        for img in node.images.keys() {
            if let Some(n) = self.image_nodes.get_mut(img) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.image_nodes.remove(img);
                }
            }
        }
    }

    /// A node with a Lease is alive until the Lease lapses; one without a Lease is left
    /// to its Ready condition (node lifecycle turns that Unknown when it goes quiet).
    pub fn fresh(&self, node: &NodeInfo, now: Timestamp) -> bool {
        self.lease_expiry.get(&node.name).is_none_or(|e| *e > now)
    }

    /// Records a pod as the watch shows it; keeps an assumed node until the watch
    /// confirms the binding.
    pub fn upsert_pod(&mut self, mut info: PodInfo) -> Arc<PodInfo> {
        if let Some(node) = self.assumed.get(&info.key) {
            match &info.node_name {
                // Bound (here, or elsewhere by someone else): the watch now says where.
                Some(_) => {
                    self.assumed.remove(&info.key);
                }
                None => info.node_name = Some(node.clone()),
            }
        }
        let info = Arc::new(info);
        self.pods.insert(info.key.clone(), info.clone());
        self.account(&info);
        info
    }

    pub fn remove_pod(&mut self, key: &str) {
        self.pods.remove(key);
        self.assumed.remove(key);
        self.unaccount(key);
    }

    /// Places a pending pod on `node` in the cache before its binding is written.
    pub fn assume(&mut self, key: &str, node: &str) {
        let Some(p) = self.pods.get(key) else {
            return;
        };
        let mut pod = (**p).clone();
        pod.node_name = Some(node.to_string());
        self.assumed.insert(key.to_string(), node.to_string());
        let pod = Arc::new(pod);
        self.pods.insert(key.to_string(), pod.clone());
        self.account(&pod);
    }

    /// Undoes [`assume`](Self::assume) after a failed binding.
    pub fn forget(&mut self, key: &str) {
        if self.assumed.remove(key).is_none() {
            return;
        }
        if let Some(p) = self.pods.get(key) {
            let mut pod = (**p).clone();
            pod.node_name = None;
            let pod = Arc::new(pod);
            self.pods.insert(key.to_string(), pod.clone());
            self.account(&pod);
        }
    }

    fn account(&mut self, pod: &Arc<PodInfo>) {
        self.unaccount(&pod.key);
        let Some(node) = pod.node_name.clone() else {
            return;
        };
        if pod.terminal {
            return;
        }
        let u = self.usage.entry(node.clone()).or_default();
        u.requested.add(&pod.requests);
        u.nonzero.add(&pod.nonzero);
        u.ports.extend(pod.host_ports.iter().cloned());
        u.pods.insert(pod.key.clone());
        if let Some(owner) = &pod.owner {
            *self
                .owners
                .entry(owner.clone())
                .or_default()
                .entry(node.clone())
                .or_insert(0) += 1;
        }
        if pod.has_required_anti_affinity {
            self.anti_affinity_pods.insert(pod.key.clone());
        }
        self.accounted.insert(pod.key.clone(), (node, pod.clone()));
    }

    fn unaccount(&mut self, key: &str) {
        let Some((node, pod)) = self.accounted.remove(key) else {
            return;
        };
        self.anti_affinity_pods.remove(key);
        if let Some(owner) = &pod.owner
            && let Some(per_node) = self.owners.get_mut(owner)
        {
            if let Some(n) = per_node.get_mut(&node) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_node.remove(&node);
                }
            }
            if per_node.is_empty() {
                self.owners.remove(owner);
            }
        }
        let Some(u) = self.usage.get_mut(&node) else {
            return;
        };
        u.requested.sub(&pod.requests);
        u.nonzero.sub(&pod.nonzero);
        for p in &pod.host_ports {
            if let Some(i) = u.ports.iter().position(|q| q == p) {
                u.ports.swap_remove(i);
            }
        }
        u.pods.remove(key);
        if u.pods.is_empty() {
            self.usage.remove(&node);
        }
    }

    /// Bound (or assumed) pods on a node.
    pub fn pods_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Arc<PodInfo>> + 'a {
        self.usage
            .get(node)
            .into_iter()
            .flat_map(|u| u.pods.iter())
            .filter_map(|k| self.pods.get(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_normalize_like_docker() {
        assert_eq!(
            normalize_image("busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize_image("busybox:1.36"),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(normalize_image("me/app"), "docker.io/me/app:latest");
        assert_eq!(
            normalize_image("localhost:5000/app:v1"),
            "localhost:5000/app:v1"
        );
        assert_eq!(
            normalize_image("registry.k8s.io/pause@sha256:ab"),
            "registry.k8s.io/pause@sha256:ab"
        );
    }

    #[test]
    fn assumed_pods_count_until_forgotten() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "d"},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}},
                "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}))
        .expect("pod");
        let mut c = Cache::default();
        c.upsert_pod(PodInfo::from_pod(pod.clone()));
        assert!(c.usage.is_empty());
        c.assume("d/p", "n1");
        assert_eq!(c.usage["n1"].requested.milli_cpu, 1000);
        assert_eq!(c.usage["n1"].ports.len(), 1);
        // A watch event without the binding keeps the assumption.
        c.upsert_pod(PodInfo::from_pod(pod));
        assert_eq!(c.usage["n1"].requested.milli_cpu, 1000);
        c.forget("d/p");
        assert!(c.usage.is_empty());
    }
}
