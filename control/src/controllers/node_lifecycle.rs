//! Node lifecycle, as kube-controller-manager's node-lifecycle-controller and its taint
//! eviction manager do it:
//! - a node not heard from (its `kube-node-lease` Lease renewTime, or the Ready
//!   condition's heartbeat) for `node_monitor_grace_period` gets every condition set to
//!   Unknown (reason NodeStatusUnknown), and its pods Ready=False;
//! - taints follow the Ready condition: `node.kubernetes.io/unreachable` (Unknown) or
//!   `node.kubernetes.io/not-ready` (False), each as NoSchedule and NoExecute, and
//!   `node.kubernetes.io/unschedulable:NoSchedule` follows `spec.unschedulable` (cordon);
//!   they go when the node is back;
//! - pods on a node with NoExecute taints are deleted once they stop tolerating them
//!   (at once when no toleration matches, after `tolerationSeconds` counted from the
//!   taint's timeAdded otherwise).
//!
//! A node first seen by this controller gets a full grace period from that moment (a new
//! leader does not condemn nodes whose Leases it has not watched yet).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use super::util::{self, Queue, Recorder, SyncResult};
use crate::manager::{Context, LoopFuture};

pub const NAME: &str = "node-controller";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// node name → (namespace, name) of the pods bound to it.
type PodsByNode = HashMap<String, HashSet<(String, String)>>;

struct Shared {
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    /// When this controller first saw each node.
    first_seen: Mutex<HashMap<String, Timestamp>>,
    recorder: Recorder,
}

pub fn start(ctx: Arc<Context>) -> LoopFuture {
    Box::pin(run(ctx))
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
}

fn pod_key(p: &Pod) -> (String, String) {
    (
        p.metadata.namespace.clone().unwrap_or_default(),
        p.metadata.name.clone().unwrap_or_default(),
    )
}

async fn run(ctx: Arc<Context>) {
    let queue: Arc<Queue<String>> = Queue::new();
    let q = queue.clone();
    let (nodes, node_informer) =
        util::subscribe(&ctx.informers.nodes, move |_, new: Option<&Node>| {
            if let Some(n) = new {
                q.add(util::key_of(n));
            }
        });
    let (leases, lease_informer) = util::subscribe(
        &ctx.informers.node_leases,
        |_: Option<&Lease>, _: Option<&Lease>| {},
    );
    let index: Arc<Mutex<PodsByNode>> = Arc::default();
    let (idx, q) = (index.clone(), queue.clone());
    let (pods, pod_informer) = util::subscribe(
        &ctx.informers.pods,
        move |old: Option<&Pod>, new: Option<&Pod>| {
            let mut idx = idx.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(o) = old
                && let Some(n) = node_of(o)
                && let Some(set) = idx.get_mut(&n)
            {
                set.remove(&pod_key(o));
                if set.is_empty() {
                    idx.remove(&n);
                }
            }
            if let Some(p) = new
                && let Some(n) = node_of(p)
            {
                let fresh = idx.entry(n.clone()).or_default().insert(pod_key(p));
                drop(idx);
                // A pod newly bound to a tainted node may have to go.
                if fresh {
                    q.add(n);
                }
            }
        },
    );
    let shared = Arc::new(Shared {
        nodes: nodes.clone(),
        leases: leases.clone(),
        pods: pods.clone(),
        first_seen: Mutex::new(HashMap::new()),
        recorder: Recorder::new(ctx.client.clone(), NAME),
    });
    let grace = ctx.options.node_monitor_grace_period;
    let period = (grace / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
    let sync = {
        let (ctx, shared, index) = (ctx.clone(), shared.clone(), index.clone());
        move |name: String| {
            let (ctx, shared, index) = (ctx.clone(), shared.clone(), index.clone());
            async move {
                let on_node: Vec<(String, String)> = index
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&name)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                sync(&ctx, &shared, &name, on_node).await
            }
        }
    };
    let monitor = {
        let (queue, nodes) = (queue.clone(), nodes.clone());
        async move {
            let _ = nodes.wait_until_ready().await;
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                for n in nodes.state() {
                    queue.add(util::key_of(n.as_ref()));
                }
            }
        }
    };
    let workers = async {
        let _ = nodes.wait_until_ready().await;
        let _ = leases.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        util::run_workers(queue, 4, NAME, sync).await;
    };
    tokio::join!(
        node_informer,
        lease_informer,
        pod_informer,
        monitor,
        workers
    );
}

fn ready_condition(n: &Node) -> Option<&NodeCondition> {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
}

/// When the node was last heard from: its Lease, its Ready heartbeat, or when this
/// controller first saw it — the latest of these.
fn last_heard(shared: &Shared, node: &Node, name: &str) -> Timestamp {
    let seen = *shared
        .first_seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(name.to_string())
        .or_insert_with(Timestamp::now);
    let lease = shared
        .leases
        .get(&ObjectRef::new(name).within(LEASE_NAMESPACE))
        .and_then(|l| l.spec.as_ref().and_then(|s| s.renew_time.clone()))
        .map(|t| t.0);
    let heartbeat = ready_condition(node)
        .and_then(|c| c.last_heartbeat_time.clone())
        .map(|t| t.0);
    [Some(seen), lease, heartbeat]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(seen)
}

async fn sync(
    ctx: &Context,
    shared: &Shared,
    name: &str,
    on_node: Vec<(String, String)>,
) -> SyncResult {
    let Some(node) = shared.nodes.get(&ObjectRef::new(name)) else {
        shared
            .first_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        return Ok(None);
    };
    let now = Timestamp::now();
    let grace = SignedDuration::try_from(ctx.options.node_monitor_grace_period)
        .unwrap_or(SignedDuration::from_secs(40));
    let silent = now.duration_since(last_heard(shared, &node, name)) > grace;
    let ready = ready_condition(&node).map(|c| c.status.clone());
    if silent && ready.as_deref() != Some("Unknown") {
        // The node's update brings it back here, with the conditions as written.
        mark_unknown(ctx, shared, &node, name).await?;
        return Ok(None);
    }
    if ready.as_deref().is_some_and(|r| r != "True") {
        mark_pods_not_ready(ctx, shared, &on_node, name).await;
    }
    let taints = sync_taints(ctx, &node, name, ready.as_deref()).await?;
    evict(ctx, shared, &taints, &on_node, now).await
}

/// Every condition Unknown, as kube-controller-manager writes it for a silent kubelet.
async fn mark_unknown(
    ctx: &Context,
    shared: &Shared,
    node: &Node,
    name: &str,
) -> Result<(), String> {
    let now = Time(Timestamp::now());
    let mut conditions: Vec<NodeCondition> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let (reason, message) = if conditions.iter().any(|c| c.type_ == "Ready") {
        ("NodeStatusUnknown", "Kubelet stopped posting node status.")
    } else {
        (
            "NodeStatusNeverUpdated",
            "Kubelet never posted node status.",
        )
    };
    for t in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
        if !conditions.iter().any(|c| c.type_ == t) {
            conditions.push(NodeCondition {
                type_: t.into(),
                status: "Unknown".into(),
                ..NodeCondition::default()
            });
        }
    }
    for c in &mut conditions {
        if c.status != "Unknown" || c.reason.as_deref() != Some(reason) {
            if c.status != "Unknown" {
                c.last_transition_time = Some(now.clone());
            }
            c.status = "Unknown".into();
            c.reason = Some(reason.into());
            c.message = Some(message.into());
        }
        if c.last_transition_time.is_none() {
            c.last_transition_time = Some(now.clone());
        }
    }
    let patch = json!({"metadata": {"resourceVersion": node.metadata.resource_version}, "status": {"conditions": conditions}});
    match Api::<Node>::all(ctx.client.clone())
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(e) if util::is_not_found(&e) => return Ok(()),
        Err(e) => return Err(format!("marking node {name} Unknown: {e}")),
    }
    tracing::info!(
        node = name,
        "node stopped posting status: conditions Unknown"
    );
    shared
        .recorder
        .normal(
            &util::reference(node),
            "NodeNotReady",
            &format!("Node {name} status is now: NodeNotReady"),
        )
        .await;
    Ok(())
}

async fn mark_pods_not_ready(
    ctx: &Context,
    shared: &Shared,
    on_node: &[(String, String)],
    node: &str,
) {
    for (ns, name) in on_node {
        let Some(pod) = shared.pods.get(&ObjectRef::new(name).within(ns)) else {
            continue;
        };
        let Some(mut conditions) = pod.status.as_ref().and_then(|s| s.conditions.clone()) else {
            continue;
        };
        let Some(c) = conditions
            .iter_mut()
            .find(|c| c.type_ == "Ready" && c.status == "True")
        else {
            continue;
        };
        c.status = "False".into();
        c.last_transition_time = Some(Time(Timestamp::now()));
        let patch = json!({"metadata": {"resourceVersion": pod.metadata.resource_version}, "status": {"conditions": conditions}});
        match Api::<Pod>::namespaced(ctx.client.clone(), ns)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                shared
                    .recorder
                    .warning(
                        &util::reference(pod.as_ref()),
                        "NodeNotReady",
                        "Node is not ready",
                    )
                    .await;
            }
            // Changed meanwhile: the next pass looks again.
            Err(e) => {
                tracing::debug!(node, pod = %format!("{ns}/{name}"), "marking pod not ready: {e}")
            }
        }
    }
}

/// Brings the node's lifecycle taints in line with its Ready condition and cordon;
/// returns the taints the node has afterwards.
async fn sync_taints(
    ctx: &Context,
    node: &Node,
    name: &str,
    ready: Option<&str>,
) -> Result<Vec<Taint>, String> {
    let current: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let condition_key = match ready {
        Some("Unknown") => Some(UNREACHABLE),
        Some("False") => Some(NOT_READY),
        _ => None,
    };
    let unschedulable = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let mut wanted: Vec<Taint> = current
        .iter()
        .filter(|t| match t.key.as_str() {
            UNREACHABLE | NOT_READY => Some(t.key.as_str()) == condition_key,
            UNSCHEDULABLE => unschedulable && t.effect == "NoSchedule",
            _ => true,
        })
        .cloned()
        .collect();
    let mut add = |key: &str, effect: &str| {
        if !wanted.iter().any(|t| t.key == key && t.effect == effect) {
            wanted.push(Taint {
                key: key.into(),
                effect: effect.into(),
                time_added: (effect == "NoExecute").then(|| Time(Timestamp::now())),
                value: None,
            });
        }
    };
    if let Some(k) = condition_key {
        add(k, "NoSchedule");
        add(k, "NoExecute");
    }
    if unschedulable {
        add(UNSCHEDULABLE, "NoSchedule");
    }
    if wanted == current {
        return Ok(current);
    }
    let patch = json!({"metadata": {"resourceVersion": node.metadata.resource_version}, "spec": {"taints": wanted}});
    match Api::<Node>::all(ctx.client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(wanted),
        Err(e) if util::is_not_found(&e) => Ok(Vec::new()),
        Err(e) => Err(format!("updating the taints of node {name}: {e}")),
    }
}

fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty())
        && e != taint.effect
    {
        return false;
    }
    match t.key.as_deref().filter(|k| !k.is_empty()) {
        // An empty key with Exists tolerates everything.
        None => t.operator.as_deref() == Some("Exists"),
        Some(k) if k != taint.key => false,
        Some(_) => match t.operator.as_deref() {
            Some("Exists") => true,
            _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        },
    }
}

/// How long the pod may stay given the node's NoExecute taints: None = for ever,
/// Some(ZERO) = not at all, otherwise the time left.
fn time_left(pod: &Pod, taints: &[&Taint], now: Timestamp) -> Option<SignedDuration> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let mut left: Option<SignedDuration> = None;
    for taint in taints {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(SignedDuration::ZERO);
        }
        // The shortest tolerationSeconds among those that match; none means for ever.
        let Some(secs) = matching.iter().filter_map(|t| t.toleration_seconds).min() else {
            continue;
        };
        let added = taint.time_added.as_ref().map(|t| t.0).unwrap_or(now);
        let until = added
            .checked_add(SignedDuration::from_secs(secs.max(0)))
            .unwrap_or(added);
        let this = until.duration_since(now).max(SignedDuration::ZERO);
        left = Some(left.map_or(this, |l| l.min(this)));
    }
    left
}

async fn evict(
    ctx: &Context,
    shared: &Shared,
    taints: &[Taint],
    on_node: &[(String, String)],
    now: Timestamp,
) -> SyncResult {
    let no_execute: Vec<&Taint> = taints.iter().filter(|t| t.effect == "NoExecute").collect();
    if no_execute.is_empty() {
        return Ok(None);
    }
    let mut next: Option<Duration> = None;
    for (ns, name) in on_node {
        let Some(pod) = shared.pods.get(&ObjectRef::new(name).within(ns)) else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match time_left(&pod, &no_execute, now) {
            None => {}
            Some(d) if d.is_positive() => {
                let d = Duration::try_from(d).unwrap_or_default();
                next = Some(next.map_or(d, |n| n.min(d)));
            }
            Some(_) => {
                match Api::<Pod>::namespaced(ctx.client.clone(), ns)
                    .delete(name, &DeleteParams::default())
                    .await
                {
                    Ok(_) => {
                        tracing::info!(pod = %format!("{ns}/{name}"), "evicted: NoExecute taint no longer tolerated");
                        shared
                            .recorder
                            .normal(
                                &util::reference(pod.as_ref()),
                                "TaintManagerEviction",
                                &format!("Marking for deletion Pod {ns}/{name}"),
                            )
                            .await;
                    }
                    Err(e) if util::is_not_found(&e) => {}
                    Err(e) => return Err(format!("evicting pod {ns}/{name}: {e}")),
                }
            }
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            ..Taint::default()
        }
    }

    #[test]
    fn toleration_matching() {
        let t = taint(UNREACHABLE, "NoExecute");
        let exists = Toleration {
            key: Some(UNREACHABLE.into()),
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerates(&exists, &t));
        let other_effect = Toleration {
            effect: Some("NoSchedule".into()),
            ..exists.clone()
        };
        assert!(!tolerates(&other_effect, &t));
        let all = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerates(&all, &t));
        let equal = Toleration {
            key: Some("k".into()),
            value: Some("v".into()),
            ..Default::default()
        };
        assert!(tolerates(
            &equal,
            &Taint {
                value: Some("v".into()),
                ..taint("k", "NoExecute")
            }
        ));
        assert!(!tolerates(
            &equal,
            &Taint {
                value: Some("w".into()),
                ..taint("k", "NoExecute")
            }
        ));
    }
}
