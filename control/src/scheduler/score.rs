//! The score phase (kube-scheduler's priorities): each plugin gives every feasible node
//! a raw score, normalizes it to 0..=100 across the feasible nodes, and the weighted sum
//! picks the node. Weights are kube-scheduler's defaults.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::PreferredSchedulingTerm;

use super::cache::{Cache, Map, NodeInfo, ZONE, normalize_image};
use super::filter::PodState;
use super::labels;

const MAX: f64 = 100.0;
const W_TAINT: f64 = 3.0;
const W_NODE_AFFINITY: f64 = 2.0;
const W_SPREAD: f64 = 2.0;
const W_POD_AFFINITY: f64 = 2.0;
const W_FIT: f64 = 1.0;
const W_BALANCED: f64 = 1.0;
const W_IMAGE: f64 = 1.0;
const MB: f64 = 1024.0 * 1024.0;
/// Image locality's thresholds (kube's `minThreshold` / `maxContainerThreshold`).
const IMAGE_MIN: f64 = 23.0 * MB;
const IMAGE_MAX_PER_CONTAINER: f64 = 1000.0 * MB;

/// Per-attempt scoring context shared by every node.
pub struct Scorer<'a> {
    cache: &'a Cache,
    st: &'a PodState,
    images: Vec<String>,
    /// Default spreading (no constraints of its own, but a controller owner): the
    /// owner's pods per node and per zone.
    owner_nodes: Option<&'a Map<String, u32>>,
    owner_zones: Option<HashMap<&'a str, i64>>,
    soft_spread: bool,
    preferred: &'a [PreferredSchedulingTerm],
}

/// The raw per-plugin scores of one node (before normalization).
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw {
    fit: f64,
    balanced: f64,
    image: f64,
    node_affinity: f64,
    taint: f64,
    pod_affinity: f64,
    spread: Option<f64>,
}

impl<'a> Scorer<'a> {
    pub fn new(cache: &'a Cache, st: &'a PodState) -> Scorer<'a> {
        let spec = st.pod.pod.spec.as_ref();
        let images = spec
            .into_iter()
            .flat_map(|s| s.containers.iter())
            .filter_map(|c| c.image.as_deref())
            .map(normalize_image)
            .collect();
        let explicit = spec
            .and_then(|s| s.topology_spread_constraints.as_ref())
            .is_some_and(|c| !c.is_empty());
        let owner_nodes = st.pod.owner.as_ref().and_then(|uid| cache.owners.get(uid));
        let owner_zones = match (&st.pod.owner, explicit) {
            (Some(_), false) => {
                let mut zones: HashMap<&str, i64> = HashMap::new();
                // Only when some node has a zone: otherwise this walk (one lookup per
                // node holding the owner's pods) finds nothing, at every decision.
                if cache.zoned_nodes > 0 {
                    for (node, n) in owner_nodes.into_iter().flatten() {
                        if let Some(z) = cache.nodes.get(node).and_then(|n| n.labels.get(ZONE)) {
                            *zones.entry(z.as_str()).or_insert(0) += i64::from(*n);
                        }
                    }
                }
                Some(zones)
            }
            _ => None,
        };
        let preferred = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.preferred_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default();
        Scorer {
            cache,
            st,
            images,
            owner_nodes,
            owner_zones,
            soft_spread: st.spread.iter().any(|s| !s.hard),
            preferred,
        }
    }

    pub fn raw(&self, node: &NodeInfo) -> Raw {
        let (mut cpu, mut mem) = (self.st.pod.nonzero.milli_cpu, self.st.pod.nonzero.memory);
        if let Some(u) = self.cache.usage.get(&node.name) {
            cpu = cpu.saturating_add(u.nonzero.milli_cpu);
            mem = mem.saturating_add(u.nonzero.memory);
        }
        let alloc = &node.allocatable;
        let frac = |used: i64, alloc: i64| {
            if alloc <= 0 {
                1.0
            } else {
                (used as f64 / alloc as f64).min(1.0)
            }
        };
        let (fc, fm) = (frac(cpu, alloc.milli_cpu), frac(mem, alloc.memory));
        let node_affinity = self
            .preferred
            .iter()
            .filter(|p| labels::term_matches(&p.preference, &node.name, &node.labels))
            .map(|p| f64::from(p.weight))
            .sum();
        let taint = node
            .taints
            .iter()
            .filter(|t| {
                t.effect == "PreferNoSchedule"
                    && !self
                        .st
                        .tolerations
                        .iter()
                        .any(|tol| labels::tolerates(tol, t))
            })
            .count() as f64;
        Raw {
            fit: ((1.0 - fc) + (1.0 - fm)) / 2.0 * MAX,
            balanced: (1.0 - (fc - fm).abs() / 2.0) * MAX,
            image: self.image_score(node),
            node_affinity,
            taint,
            pod_affinity: self.st.inter_pod.preferred_score(node) as f64,
            spread: self.spread_score(node),
        }
    }

    fn image_score(&self, node: &NodeInfo) -> f64 {
        if self.images.is_empty() || node.images.is_empty() {
            return 0.0;
        }
        let total = self.cache.nodes.len().max(1) as f64;
        let sum: f64 = self
            .images
            .iter()
            .filter_map(|img| {
                let size = *node.images.get(img)? as f64;
                let spread = f64::from(*self.cache.image_nodes.get(img)?) / total;
                Some(size * spread)
            })
            .sum();
        let max = IMAGE_MAX_PER_CONTAINER * self.images.len() as f64;
        (sum.clamp(IMAGE_MIN, max) - IMAGE_MIN) * MAX / (max - IMAGE_MIN)
    }

    /// Lower is better; `None` for a node the constraints ignore.
    fn spread_score(&self, node: &NodeInfo) -> Option<f64> {
        if self.soft_spread {
            let mut sum = 0.0;
            for s in self.st.spread.iter().filter(|s| !s.hard) {
                sum += s.score(node)?;
            }
            return Some(sum);
        }
        let zones = self.owner_zones.as_ref()?;
        let here = self
            .owner_nodes
            .and_then(|m| m.get(&node.name))
            .map_or(0, |n| i64::from(*n));
        let zone = if zones.is_empty() {
            0
        } else {
            node.labels
                .get(ZONE)
                .and_then(|z| zones.get(z.as_str()))
                .copied()
                .unwrap_or(0)
        };
        Some((here + zone) as f64)
    }
}

/// Normalizes every plugin across the feasible nodes and returns the weighted totals.
pub fn totals(raws: &[Raw]) -> Vec<f64> {
    let max_of = |f: fn(&Raw) -> f64| raws.iter().map(f).fold(0.0_f64, f64::max);
    let min_of = |f: fn(&Raw) -> f64| raws.iter().map(f).fold(f64::INFINITY, f64::min);
    let max_aff = max_of(|r| r.node_affinity);
    let max_taint = max_of(|r| r.taint);
    let (min_pa, max_pa) = (
        min_of(|r| r.pod_affinity),
        max_of(|r| r.pod_affinity).max(min_of(|r| r.pod_affinity)),
    );
    let spreads: Vec<f64> = raws.iter().filter_map(|r| r.spread).collect();
    let max_sp = spreads.iter().copied().fold(0.0_f64, f64::max);
    let min_sp = spreads.iter().copied().fold(f64::INFINITY, f64::min);
    raws.iter()
        .map(|r| {
            let node_affinity = if max_aff > 0.0 {
                r.node_affinity * MAX / max_aff
            } else {
                0.0
            };
            let taint = if max_taint > 0.0 {
                MAX - r.taint * MAX / max_taint
            } else {
                MAX
            };
            let pod_affinity = if max_pa > min_pa {
                (r.pod_affinity - min_pa) * MAX / (max_pa - min_pa)
            } else {
                0.0
            };
            let spread = match r.spread {
                None => 0.0,
                Some(_) if max_sp <= 0.0 => MAX,
                Some(s) => MAX * (max_sp + min_sp - s) / max_sp,
            };
            W_FIT * r.fit
                + W_BALANCED * r.balanced
                + W_IMAGE * r.image
                + W_NODE_AFFINITY * node_affinity
                + W_TAINT * taint
                + W_POD_AFFINITY * pod_affinity
                + W_SPREAD * spread
        })
        .collect()
}
