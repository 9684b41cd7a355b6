//! The filter phase (kube-scheduler's predicates), in kube's plugin order: a node fails
//! at the first plugin that rejects it, and the reasons are the strings kubectl shows.

use std::borrow::Cow;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Toleration, TopologySpreadConstraint};

use super::affinity::{InterPod, Spread};
use super::cache::{Cache, NodeInfo, PodInfo, Readiness, ports_conflict};
use super::labels;
use super::resources::Resources;

/// Why one node cannot take the pod. `resolvable` reasons are ones preemption could
/// clear (resources, ports, anti-affinity, spread); the others it cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub text: Cow<'static, str>,
    pub resolvable: bool,
}

impl Reason {
    fn hard(text: impl Into<Cow<'static, str>>) -> Reason {
        Reason {
            text: text.into(),
            resolvable: false,
        }
    }

    fn soft(text: impl Into<Cow<'static, str>>) -> Reason {
        Reason {
            text: text.into(),
            resolvable: true,
        }
    }
}

/// What an empty node uses (borrowed, so a node without pods costs no clone).
static NOTHING: Resources = Resources {
    milli_cpu: 0,
    memory: 0,
    ephemeral_storage: 0,
    pods: 0,
    scalar: std::collections::BTreeMap::new(),
};

pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// Everything about the pod a filter or score needs, computed once per attempt.
pub struct PodState {
    pub pod: std::sync::Arc<PodInfo>,
    pub tolerations: Vec<Toleration>,
    pub inter_pod: InterPod,
    pub spread: Vec<Spread>,
    tolerates_not_ready: bool,
    tolerates_unreachable: bool,
    tolerates_unschedulable: bool,
    now: Timestamp,
}

impl PodState {
    pub fn new(cache: &Cache, pod: std::sync::Arc<PodInfo>) -> PodState {
        let tolerations = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        let inter_pod = InterPod::new(cache, &pod);
        let spread = Spread::build(cache, &pod, |node, c| {
            spread_eligible(&pod, &tolerations, node, c)
        });
        PodState {
            tolerates_not_ready: labels::tolerates_key(&tolerations, NOT_READY, "NoSchedule"),
            tolerates_unreachable: labels::tolerates_key(&tolerations, UNREACHABLE, "NoSchedule"),
            tolerates_unschedulable: labels::tolerates_key(
                &tolerations,
                UNSCHEDULABLE,
                "NoSchedule",
            ),
            tolerations,
            inter_pod,
            spread,
            pod,
            now: Timestamp::now(),
        }
    }

    /// Runs every filter on one node.
    pub fn filter(&self, cache: &Cache, node: &NodeInfo) -> Result<(), Vec<Reason>> {
        let one = |r: Reason| Err(vec![r]);
        if node.unschedulable && !self.tolerates_unschedulable {
            return one(Reason::hard("node(s) were unschedulable"));
        }
        // A node that is not Ready, or whose Lease lapsed, is reported as the taint node
        // lifecycle puts on it, which is what kube-scheduler's users see.
        let unreachable = node.ready == Readiness::Unknown || !cache.fresh(node, self.now);
        if unreachable && !self.tolerates_unreachable {
            return one(Reason::hard(format!(
                "node(s) had untolerated taint {{{UNREACHABLE}: }}"
            )));
        }
        if node.ready == Readiness::NotReady && !self.tolerates_not_ready {
            return one(Reason::hard(format!(
                "node(s) had untolerated taint {{{NOT_READY}: }}"
            )));
        }
        if let Some(t) = labels::untolerated(
            &node.taints,
            &self.tolerations,
            &["NoSchedule", "NoExecute"],
        ) {
            return one(Reason::hard(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or("")
            )));
        }
        if !labels::node_affinity_matches(&self.pod.pod, &node.name, &node.labels) {
            return one(Reason::hard(
                "node(s) didn't match Pod's node affinity/selector",
            ));
        }
        let usage = cache.usage.get(&node.name);
        if let Some(u) = usage
            && self
                .pod
                .host_ports
                .iter()
                .any(|want| u.ports.iter().any(|have| ports_conflict(want, have)))
        {
            return one(Reason::soft(
                "node(s) didn't have free ports for the requested pod ports",
            ));
        }
        let insufficient = self.fit(node, usage);
        if !insufficient.is_empty() {
            return Err(insufficient);
        }
        for s in self.spread.iter().filter(|s| s.hard) {
            if let Some(why) = s.check(node) {
                return one(if why.contains("missing") {
                    Reason::hard(why)
                } else {
                    Reason::soft(why)
                });
            }
        }
        if let Some(why) = self.inter_pod.check(node) {
            return one(if why.contains("pod affinity rules") {
                Reason::hard(why)
            } else {
                Reason::soft(why)
            });
        }
        Ok(())
    }

    /// NodeResourcesFit: every resource that does not fit, as kube lists them.
    fn fit(&self, node: &NodeInfo, usage: Option<&super::cache::Usage>) -> Vec<Reason> {
        let mut out = Vec::new();
        let alloc = &node.allocatable;
        let req = &self.pod.requests;
        let used = usage.map_or(&NOTHING, |u| &u.requested);
        let count = usage.map_or(0, |u| u.pods.len()) as i64;
        if count + 1 > alloc.pods {
            out.push(Reason::soft("Too many pods"));
        }
        let short = |want: i64, have: i64, taken: i64| want > 0 && want > have - taken;
        if short(req.milli_cpu, alloc.milli_cpu, used.milli_cpu) {
            out.push(Reason::soft("Insufficient cpu"));
        }
        if short(req.memory, alloc.memory, used.memory) {
            out.push(Reason::soft("Insufficient memory"));
        }
        if short(
            req.ephemeral_storage,
            alloc.ephemeral_storage,
            used.ephemeral_storage,
        ) {
            out.push(Reason::soft("Insufficient ephemeral-storage"));
        }
        for (name, want) in &req.scalar {
            let have = alloc.scalar.get(name).copied().unwrap_or(0);
            let taken = used.scalar.get(name).copied().unwrap_or(0);
            if short(*want, have, taken) {
                out.push(Reason::soft(format!("Insufficient {name}")));
            }
        }
        out
    }
}

/// nodeAffinityPolicy (default Honor) and nodeTaintsPolicy (default Ignore): which nodes
/// a spread constraint counts.
fn spread_eligible(
    pod: &PodInfo,
    tolerations: &[Toleration],
    node: &NodeInfo,
    c: &TopologySpreadConstraint,
) -> bool {
    if c.node_affinity_policy.as_deref() != Some("Ignore")
        && !labels::node_affinity_matches(&pod.pod, &node.name, &node.labels)
    {
        return false;
    }
    if c.node_taints_policy.as_deref() == Some("Honor")
        && labels::untolerated(&node.taints, tolerations, &["NoSchedule", "NoExecute"]).is_some()
    {
        return false;
    }
    true
}
