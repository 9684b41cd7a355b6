//! Inter-pod affinity and topology spread: what they need is computed once per
//! scheduling attempt (which topology domains hold matching pods, how many), so the
//! per-node checks are map lookups.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::{PodAffinityTerm, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::cache::{Cache, NodeInfo, PodInfo};
use super::labels::{self, Labels};

/// A pod affinity term resolved against the pod that carries it: the selector with
/// `matchLabelKeys`/`mismatchLabelKeys` merged and the namespaces it applies to.
#[derive(Debug, Clone)]
pub struct Term {
    selector: Option<LabelSelector>,
    namespaces: HashSet<String>,
    /// `namespaceSelector`; `Some(empty)` means every namespace.
    ns_selector: Option<LabelSelector>,
    pub topology_key: String,
    pub weight: i64,
}

impl Term {
    pub fn resolve(t: &PodAffinityTerm, owner: &PodInfo, weight: i64) -> Term {
        let selector = t.label_selector.as_ref().map(|s| {
            labels::with_label_keys(
                s,
                &owner.labels,
                t.match_label_keys.as_deref().unwrap_or_default(),
                t.mismatch_label_keys.as_deref().unwrap_or_default(),
            )
        });
        let mut namespaces: HashSet<String> = t.namespaces.iter().flatten().cloned().collect();
        if namespaces.is_empty() && t.namespace_selector.is_none() {
            namespaces.insert(owner.namespace.clone());
        }
        Term {
            selector,
            namespaces,
            ns_selector: t.namespace_selector.clone(),
            topology_key: t.topology_key.clone(),
            weight,
        }
    }

    pub fn matches(&self, cache: &Cache, pod: &PodInfo) -> bool {
        let Some(sel) = &self.selector else {
            return false;
        };
        let ns_ok = self.namespaces.contains(&pod.namespace)
            || self.ns_selector.as_ref().is_some_and(|s| {
                let empty = Labels::new();
                labels::selector_matches(s, cache.namespaces.get(&pod.namespace).unwrap_or(&empty))
            });
        ns_ok && labels::selector_matches(sel, &pod.labels)
    }

    /// The topology domain values of the nodes holding a pod this term matches, and how
    /// many such pods each holds.
    pub fn domain_counts(&self, cache: &Cache) -> HashMap<String, i64> {
        let mut out = HashMap::new();
        for (node, usage) in &cache.usage {
            let Some(value) = cache
                .nodes
                .get(node)
                .and_then(|n| n.labels.get(&self.topology_key))
            else {
                continue;
            };
            let n = usage
                .pods
                .iter()
                .filter_map(|k| cache.pods.get(k))
                .filter(|p| self.matches(cache, p))
                .count() as i64;
            if n > 0 {
                *out.entry(value.clone()).or_insert(0) += n;
            }
        }
        out
    }
}

/// The terms of one kind on a pod's spec.
pub fn required_terms(pod: &PodInfo, anti: bool) -> Vec<Term> {
    let aff = pod.pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let terms = if anti {
        aff.and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
    } else {
        aff.and_then(|a| a.pod_affinity.as_ref()).and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
    };
    terms
        .into_iter()
        .flatten()
        .map(|t| Term::resolve(t, pod, 1))
        .collect()
}

/// Preferred terms, anti-affinity ones with negative weight.
pub fn preferred_terms(pod: &PodInfo) -> Vec<Term> {
    let aff = pod.pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let pos = aff.and_then(|a| a.pod_affinity.as_ref()).and_then(|a| {
        a.preferred_during_scheduling_ignored_during_execution
            .as_ref()
    });
    let neg = aff
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let mut out = Vec::new();
    for (list, sign) in [(pos, 1), (neg, -1)] {
        for w in list.into_iter().flatten() {
            out.push(Term::resolve(
                &w.pod_affinity_term,
                pod,
                sign * i64::from(w.weight),
            ));
        }
    }
    out
}

/// Inter-pod affinity state for one attempt.
#[derive(Debug, Default)]
pub struct InterPod {
    /// Per required affinity term: domains holding a matching pod.
    affinity: Vec<(String, HashSet<String>)>,
    /// No pod anywhere matches the affinity terms but the pod matches them itself: the
    /// first pod of a group may go anywhere (as kube-scheduler allows).
    affinity_self_ok: bool,
    anti: Vec<(String, HashSet<String>)>,
    /// (topology key, value) pairs where an existing pod's anti-affinity forbids this pod.
    existing_anti: HashSet<(String, String)>,
    /// Preferred terms with the counts per domain.
    pub preferred: Vec<(Term, HashMap<String, i64>)>,
}

impl InterPod {
    pub fn new(cache: &Cache, pod: &PodInfo) -> InterPod {
        let mut st = InterPod::default();
        let aff_terms = required_terms(pod, false);
        let mut any = false;
        for t in &aff_terms {
            let counts = t.domain_counts(cache);
            any |= !counts.is_empty();
            st.affinity
                .push((t.topology_key.clone(), counts.into_keys().collect()));
        }
        st.affinity_self_ok =
            !aff_terms.is_empty() && !any && aff_terms.iter().all(|t| t.matches(cache, pod));
        for t in required_terms(pod, true) {
            let counts = t.domain_counts(cache);
            st.anti
                .push((t.topology_key.clone(), counts.into_keys().collect()));
        }
        for key in &cache.anti_affinity_pods {
            let Some(other) = cache.pods.get(key) else {
                continue;
            };
            let Some(node) = other.node_name.as_ref().and_then(|n| cache.nodes.get(n)) else {
                continue;
            };
            for t in required_terms(other, true) {
                if let Some(v) = node.labels.get(&t.topology_key)
                    && t.matches(cache, pod)
                {
                    st.existing_anti.insert((t.topology_key.clone(), v.clone()));
                }
            }
        }
        for t in preferred_terms(pod) {
            let counts = t.domain_counts(cache);
            st.preferred.push((t, counts));
        }
        st
    }

    /// The filter's reason, if the node fails.
    pub fn check(&self, node: &NodeInfo) -> Option<&'static str> {
        if self
            .existing_anti
            .iter()
            .any(|(k, v)| node.labels.get(k) == Some(v))
        {
            return Some("node(s) didn't satisfy existing pods anti-affinity rules");
        }
        if !self.affinity_self_ok
            && !self
                .affinity
                .iter()
                .all(|(key, domains)| node.labels.get(key).is_some_and(|v| domains.contains(v)))
        {
            return Some("node(s) didn't match pod affinity rules");
        }
        if self.affinity_self_ok
            && !self
                .affinity
                .iter()
                .all(|(key, _)| node.labels.contains_key(key))
        {
            return Some("node(s) didn't match pod affinity rules");
        }
        if self
            .anti
            .iter()
            .any(|(key, domains)| node.labels.get(key).is_some_and(|v| domains.contains(v)))
        {
            return Some("node(s) didn't match pod anti-affinity rules");
        }
        None
    }

    /// Σ weight × matching pods in the node's domain, per preferred term.
    pub fn preferred_score(&self, node: &NodeInfo) -> i64 {
        self.preferred
            .iter()
            .map(|(t, counts)| {
                node.labels
                    .get(&t.topology_key)
                    .and_then(|v| counts.get(v))
                    .map_or(0, |c| c * t.weight)
            })
            .sum()
    }
}

/// One topology spread constraint, with the matching-pod count per domain.
#[derive(Debug)]
pub struct Spread {
    pub key: String,
    pub max_skew: i64,
    pub hard: bool,
    self_match: i64,
    pub counts: HashMap<String, i64>,
    min: i64,
}

impl Spread {
    /// Builds the constraints of `pod`; `eligible` says whether a node counts
    /// (nodeAffinityPolicy / nodeTaintsPolicy).
    pub fn build(
        cache: &Cache,
        pod: &PodInfo,
        eligible: impl Fn(&NodeInfo, &TopologySpreadConstraint) -> bool,
    ) -> Vec<Spread> {
        let Some(spec) = &pod.pod.spec else {
            return Vec::new();
        };
        let constraints = spec
            .topology_spread_constraints
            .as_deref()
            .unwrap_or_default();
        let keys: Vec<&str> = constraints
            .iter()
            .map(|c| c.topology_key.as_str())
            .collect();
        let mut out = Vec::new();
        for c in constraints {
            let selector = c.label_selector.as_ref().map(|s| {
                labels::with_label_keys(
                    s,
                    &pod.labels,
                    c.match_label_keys.as_deref().unwrap_or_default(),
                    &[],
                )
            });
            let matches = |p: &PodInfo| {
                p.namespace == pod.namespace
                    && !p.deleting
                    && selector
                        .as_ref()
                        .is_some_and(|s| labels::selector_matches(s, &p.labels))
            };
            let mut counts: HashMap<String, i64> = HashMap::new();
            for node in cache.nodes.values() {
                // Only nodes carrying every constraint's key take part (kube's rule).
                if !keys.iter().all(|k| node.labels.contains_key(*k)) || !eligible(node, c) {
                    continue;
                }
                let Some(v) = node.labels.get(&c.topology_key) else {
                    continue;
                };
                let n = cache.pods_on(&node.name).filter(|p| matches(p)).count() as i64;
                *counts.entry(v.clone()).or_insert(0) += n;
            }
            let mut min = counts.values().copied().min().unwrap_or(0);
            if c.min_domains
                .is_some_and(|m| (counts.len() as i64) < i64::from(m))
            {
                min = 0;
            }
            out.push(Spread {
                key: c.topology_key.clone(),
                max_skew: i64::from(c.max_skew),
                hard: c.when_unsatisfiable == "DoNotSchedule",
                self_match: i64::from(matches(pod)),
                counts,
                min,
            });
        }
        out
    }

    /// The filter's reason for a hard constraint, if the node fails it.
    pub fn check(&self, node: &NodeInfo) -> Option<&'static str> {
        let Some(v) = node.labels.get(&self.key) else {
            return Some(
                "node(s) didn't match pod topology spread constraints (missing required label)",
            );
        };
        let here = self.counts.get(v).copied().unwrap_or(0);
        (here + self.self_match - self.min > self.max_skew)
            .then_some("node(s) didn't match pod topology spread constraints")
    }

    /// Matching pods in the node's domain, weighted by how many domains there are (as
    /// kube's scoring does); `None` when the node lacks the key.
    pub fn score(&self, node: &NodeInfo) -> Option<f64> {
        let v = node.labels.get(&self.key)?;
        let weight = ((self.counts.len() + 2) as f64).ln();
        let here = self.counts.get(v).copied().unwrap_or(0);
        Some((here + self.max_skew - 1) as f64 * weight)
    }
}
