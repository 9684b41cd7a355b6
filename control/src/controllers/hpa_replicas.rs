//! The HorizontalPodAutoscaler's replica calculation for Resource metrics, as
//! kube-controller-manager's `ReplicaCalculator` does it: pods are grouped into ready,
//! unready (Pending, or for CPU not yet past their start-up) and missing (no metric),
//! the usage ratio is computed over the ready pods with metrics, and when pods were left
//! out it is computed again with them counted conservatively — missing pods as using
//! 100% (of the request or the target) on a scale-down and 0% on a scale-up, unready
//! pods as 0% on a scale-up — so that neither can push the scale further than the
//! measured pods justify. A ratio within the tolerance of 1 keeps the current count.
//!
//! Values are milli-units (`MilliValue`: millicores, millibytes), as upstream.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

use crate::admission::quantity::Quantity;

/// One pod's metric: the sum over its containers, in milli-units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodMetric {
    pub timestamp: Timestamp,
    pub window: Duration,
    pub value: i64,
}

/// Metrics by pod name.
pub type PodMetricsInfo = HashMap<String, PodMetric>;

/// The band around a usage ratio of 1 in which the scale is left alone
/// (`|1 − ratio| ≤ tolerance`; `behavior.scaleUp/scaleDown.tolerance` may set each side).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerances {
    pub up: f64,
    pub down: f64,
}

impl Tolerances {
    pub fn is_within(&self, ratio: f64) -> bool {
        (1.0 - self.down) <= ratio && ratio <= (1.0 + self.up)
    }
}

/// The calculator's settings and its notion of now.
#[derive(Debug, Clone)]
pub struct Calculator {
    pub tolerances: Tolerances,
    /// A pod younger than this has its CPU sample ignored unless it is Ready and the
    /// sample was taken a full window after it became so (start-up CPU is not load).
    pub cpu_initialization_period: Duration,
    /// After the start-up period, a pod that is not Ready and turned so within this long
    /// of starting has never been ready: its sample is ignored.
    pub initial_readiness_delay: Duration,
    pub now: Timestamp,
    /// ContainerResource metrics: only this container's requests count.
    pub container: Option<String>,
}

/// What a Utilization target yields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UtilizationProposal {
    pub replicas: i32,
    /// Percent of the requests, over the pods measured (before the conservative fill-in).
    pub utilization: i32,
    /// Average milli-value per measured pod.
    pub raw_average: i64,
}

struct Groups {
    ready: usize,
    unready: HashSet<String>,
    missing: HashSet<String>,
    ignored: HashSet<String>,
}

fn add(ts: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| ts.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

impl Calculator {
    fn group(&self, pods: &[&Pod], metrics: &PodMetricsInfo, resource: &str) -> Groups {
        let mut g = Groups {
            ready: 0,
            unready: HashSet::new(),
            missing: HashSet::new(),
            ignored: HashSet::new(),
        };
        for pod in pods {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let status = pod.status.as_ref();
            let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
            if pod.metadata.deletion_timestamp.is_some() || phase == "Failed" {
                g.ignored.insert(name);
                continue;
            }
            if phase == "Pending" {
                g.unready.insert(name);
                continue;
            }
            let Some(metric) = metrics.get(&name) else {
                g.missing.insert(name);
                continue;
            };
            if resource == "cpu" && self.cpu_unready(pod, metric) {
                g.unready.insert(name);
                continue;
            }
            g.ready += 1;
        }
        g
    }

    fn cpu_unready(&self, pod: &Pod, metric: &PodMetric) -> bool {
        let status = pod.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        let start = status.and_then(|s| s.start_time.as_ref()).map(|t| t.0);
        let (Some(ready), Some(start)) = (ready, start) else {
            return true;
        };
        let is_false = ready.status == "False";
        let transition = ready
            .last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(start);
        if add(start, self.cpu_initialization_period) > self.now {
            // Still starting: only a Ready pod sampled a full window after it turned
            // Ready counts.
            is_false || metric.timestamp < add(transition, metric.window)
        } else {
            // Unready and never been ready since start.
            is_false && add(start, self.initial_readiness_delay) > transition
        }
    }

    /// Replicas for an `averageUtilization` target (percent of the pods' requests).
    pub fn resource_replicas(
        &self,
        current: i32,
        target_utilization: i32,
        resource: &str,
        pods: &[&Pod],
        mut metrics: PodMetricsInfo,
    ) -> Result<UtilizationProposal, String> {
        if pods.is_empty() {
            return Err("no pods returned by selector while calculating replica count".into());
        }
        let g = self.group(pods, &metrics, resource);
        metrics.retain(|name, _| !g.ignored.contains(name) && !g.unready.contains(name));
        if metrics.is_empty() {
            return Err("did not receive metrics for targeted pods (pods might be unready)".into());
        }
        let requests = pod_requests(pods, resource, self.container.as_deref())?;
        let (ratio, utilization, raw_average) =
            utilization_ratio(&metrics, &requests, target_utilization)?;
        let keep = UtilizationProposal {
            replicas: current,
            utilization,
            raw_average,
        };
        let scale_up_with_unready = !g.unready.is_empty() && ratio > 1.0;
        if !scale_up_with_unready && g.missing.is_empty() {
            if self.tolerances.is_within(ratio) {
                return Ok(keep);
            }
            return Ok(UtilizationProposal {
                replicas: (ratio * g.ready as f64).ceil() as i32,
                ..keep
            });
        }
        if !g.missing.is_empty() {
            let fallback = i64::from(target_utilization.max(100));
            for name in &g.missing {
                let value = if ratio < 1.0 {
                    requests.get(name).copied().unwrap_or(0) * fallback / 100
                } else {
                    0
                };
                if ratio != 1.0 {
                    metrics.insert(name.clone(), zero_metric(self.now, value));
                }
            }
        }
        if scale_up_with_unready {
            for name in &g.unready {
                metrics.insert(name.clone(), zero_metric(self.now, 0));
            }
        }
        let (new_ratio, _, _) = utilization_ratio(&metrics, &requests, target_utilization)?;
        Ok(UtilizationProposal {
            replicas: self.settle(current, ratio, new_ratio, metrics.len()),
            ..keep
        })
    }

    /// Replicas for an `averageValue` target (milli-units per pod).
    pub fn raw_resource_replicas(
        &self,
        current: i32,
        target_milli: i64,
        resource: &str,
        pods: &[&Pod],
        mut metrics: PodMetricsInfo,
    ) -> Result<(i32, i64), String> {
        if pods.is_empty() {
            return Err("no pods returned by selector while calculating replica count".into());
        }
        if target_milli <= 0 {
            return Err(format!(
                "invalid target value for {resource}: {target_milli}m"
            ));
        }
        let g = self.group(pods, &metrics, resource);
        metrics.retain(|name, _| !g.ignored.contains(name) && !g.unready.contains(name));
        if metrics.is_empty() {
            return Err("did not receive metrics for targeted pods (pods might be unready)".into());
        }
        let (ratio, usage) = usage_ratio(&metrics, target_milli);
        let scale_up_with_unready = !g.unready.is_empty() && ratio > 1.0;
        if !scale_up_with_unready && g.missing.is_empty() {
            if self.tolerances.is_within(ratio) {
                return Ok((current, usage));
            }
            return Ok(((ratio * g.ready as f64).ceil() as i32, usage));
        }
        for name in &g.missing {
            let value = if ratio < 1.0 { target_milli } else { 0 };
            metrics.insert(name.clone(), zero_metric(self.now, value));
        }
        if scale_up_with_unready {
            for name in &g.unready {
                metrics.insert(name.clone(), zero_metric(self.now, 0));
            }
        }
        let (new_ratio, _) = usage_ratio(&metrics, target_milli);
        Ok((self.settle(current, ratio, new_ratio, metrics.len()), usage))
    }

    /// The count after the conservative fill-in: unchanged when it lands within the
    /// tolerance or would reverse the direction the measured pods asked for.
    fn settle(&self, current: i32, ratio: f64, new_ratio: f64, counted: usize) -> i32 {
        if self.tolerances.is_within(new_ratio)
            || (ratio < 1.0 && new_ratio > 1.0)
            || (ratio > 1.0 && new_ratio < 1.0)
        {
            return current;
        }
        let proposed = (new_ratio * counted as f64).ceil() as i32;
        if (new_ratio < 1.0 && proposed > current) || (new_ratio > 1.0 && proposed < current) {
            return current;
        }
        proposed
    }
}

fn zero_metric(now: Timestamp, value: i64) -> PodMetric {
    PodMetric {
        timestamp: now,
        window: Duration::ZERO,
        value,
    }
}

/// Each pod's request of `resource` (milli-units): its containers' and its restartable
/// (sidecar) init containers'. A container without the request is an error, as upstream:
/// utilization of nothing cannot be computed.
pub fn pod_requests(
    pods: &[&Pod],
    resource: &str,
    container: Option<&str>,
) -> Result<HashMap<String, i64>, String> {
    let mut out = HashMap::new();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Some(spec) = pod.spec.as_ref() else {
            continue;
        };
        let sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        let mut sum = 0i64;
        for c in spec.containers.iter().chain(sidecars) {
            if container.is_some_and(|want| want != c.name) {
                continue;
            }
            let request = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get(resource));
            let Some(q) = request else {
                return Err(format!(
                    "missing request for {resource} in container {} of Pod {name}",
                    c.name
                ));
            };
            let q = Quantity::parse(&q.0)
                .map_err(|e| format!("request for {resource} in container {}: {e}", c.name))?;
            sum = sum.saturating_add(i64::try_from(q.milli()).unwrap_or(i64::MAX));
        }
        out.insert(name, sum);
    }
    Ok(out)
}

/// (usage ratio, utilization percent, average milli-value) over the pods with both a
/// metric and a request.
pub fn utilization_ratio(
    metrics: &PodMetricsInfo,
    requests: &HashMap<String, i64>,
    target_utilization: i32,
) -> Result<(f64, i32, i64), String> {
    let (mut used, mut requested, mut n) = (0i64, 0i64, 0i64);
    for (name, m) in metrics {
        let Some(r) = requests.get(name) else {
            continue;
        };
        used = used.saturating_add(m.value);
        requested = requested.saturating_add(*r);
        n += 1;
    }
    if requested == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    let utilization = i32::try_from(used.saturating_mul(100) / requested).unwrap_or(i32::MAX);
    Ok((
        f64::from(utilization) / f64::from(target_utilization.max(1)),
        utilization,
        used / n,
    ))
}

/// (usage ratio, average milli-value) against an average-value target.
pub fn usage_ratio(metrics: &PodMetricsInfo, target_milli: i64) -> (f64, i64) {
    let total: i64 = metrics.values().map(|m| m.value).sum();
    let average = total / (metrics.len().max(1) as i64);
    (average as f64 / target_milli as f64, average)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2026-11-26T10:00:00Z".parse().unwrap()
    }

    fn ago(secs: i64) -> String {
        now()
            .checked_sub(jiff::SignedDuration::from_secs(secs))
            .unwrap()
            .to_string()
    }

    /// A Running pod started 10 minutes ago, Ready since then, requesting `cpu`.
    fn pod(name: &str, cpu: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "100Mi"}}}]},
            "status": {"phase": "Running", "startTime": ago(600),
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": ago(590)}]},
        }))
        .unwrap()
    }

    fn calc() -> Calculator {
        Calculator {
            tolerances: Tolerances { up: 0.1, down: 0.1 },
            cpu_initialization_period: Duration::from_secs(300),
            initial_readiness_delay: Duration::from_secs(30),
            now: now(),
            container: None,
        }
    }

    fn metrics(values: &[(&str, i64)]) -> PodMetricsInfo {
        values
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    PodMetric {
                        timestamp: now(),
                        window: Duration::from_secs(1),
                        value: *v,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn utilization_scales_up_and_down() {
        let pods = [pod("a", "100m"), pod("b", "100m")];
        let refs: Vec<&Pod> = pods.iter().collect();
        // 250% of the requests against a 50% target: 5x the pods.
        let p = calc()
            .resource_replicas(2, 50, "cpu", &refs, metrics(&[("a", 250), ("b", 250)]))
            .unwrap();
        assert_eq!(p.replicas, 10);
        assert_eq!(p.utilization, 250);
        assert_eq!(p.raw_average, 250);
        // 10% against 50%: ceil(0.2 * 2) = 1.
        let p = calc()
            .resource_replicas(2, 50, "cpu", &refs, metrics(&[("a", 10), ("b", 10)]))
            .unwrap();
        assert_eq!((p.replicas, p.utilization), (1, 10));
    }

    #[test]
    fn within_tolerance_keeps_the_count() {
        let pods = [pod("a", "100m"), pod("b", "100m")];
        let refs: Vec<&Pod> = pods.iter().collect();
        // 54% / 50% = 1.08: inside 0.1.
        let p = calc()
            .resource_replicas(2, 50, "cpu", &refs, metrics(&[("a", 54), ("b", 54)]))
            .unwrap();
        assert_eq!(p.replicas, 2);
        // 56% / 50% = 1.12: outside.
        let p = calc()
            .resource_replicas(2, 50, "cpu", &refs, metrics(&[("a", 56), ("b", 56)]))
            .unwrap();
        assert_eq!(p.replicas, 3);
        // A wider scale-up tolerance keeps it.
        let mut c = calc();
        c.tolerances.up = 0.2;
        let p = c
            .resource_replicas(2, 50, "cpu", &refs, metrics(&[("a", 56), ("b", 56)]))
            .unwrap();
        assert_eq!(p.replicas, 2);
    }

    #[test]
    fn missing_metrics_are_conservative() {
        let pods = [pod("a", "100m"), pod("b", "100m"), pod("c", "100m")];
        let refs: Vec<&Pod> = pods.iter().collect();
        // Scale-up: the missing pod counts as 0%: (200+200+0)/300 = 133% vs 50% → 2.66
        // ratio → ceil(2.66 * 3) = 8.
        let p = calc()
            .resource_replicas(3, 50, "cpu", &refs, metrics(&[("a", 200), ("b", 200)]))
            .unwrap();
        assert_eq!(p.replicas, 8);
        assert_eq!(p.utilization, 200);
        // Scale-down: the missing pod counts as 100% of its request: (10+10+100)/300 =
        // 40% vs 50% → ceil(0.8 * 3) = 3: no change, where the two measured alone would
        // have said 1.
        let p = calc()
            .resource_replicas(3, 50, "cpu", &refs, metrics(&[("a", 10), ("b", 10)]))
            .unwrap();
        assert_eq!(p.replicas, 3);
        // Counting the missing pod reverses the direction: keep the count.
        let p = calc()
            .resource_replicas(3, 50, "cpu", &refs, metrics(&[("a", 40), ("b", 40)]))
            .unwrap();
        assert_eq!(p.replicas, 3);
    }

    #[test]
    fn unready_and_starting_pods_count_as_zero_on_scale_up() {
        let mut starting = pod("new", "100m");
        let st = starting.status.as_mut().unwrap();
        st.start_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            now()
                .checked_sub(jiff::SignedDuration::from_secs(20))
                .unwrap(),
        ));
        // Ready only 1 s ago: the sample (taken now, 1 s window) is not a full window
        // after it.
        st.conditions.as_mut().unwrap()[0].last_transition_time =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                now()
                    .checked_sub(jiff::SignedDuration::from_millis(500))
                    .unwrap(),
            ));
        let mut pending = pod("pending", "100m");
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        let pods = [pod("a", "100m"), starting, pending];
        let refs: Vec<&Pod> = pods.iter().collect();
        // a alone: 100% vs 50% → ratio 2; with two pods at 0%: 100/300 = 33% → 0.66:
        // a reversal, so the count stays.
        let p = calc()
            .resource_replicas(
                3,
                50,
                "cpu",
                &refs,
                metrics(&[("a", 100), ("new", 900), ("pending", 900)]),
            )
            .unwrap();
        assert_eq!(p.utilization, 100, "the starting pods' samples are dropped");
        assert_eq!(p.replicas, 3);
        // a at 400%: (400+0+0)/300 = 133% → 2.66 → ceil(2.66*3) = 8.
        let p = calc()
            .resource_replicas(3, 50, "cpu", &refs, metrics(&[("a", 400), ("new", 900)]))
            .unwrap();
        assert_eq!(p.replicas, 8);
        // Memory has no start-up rule: the starting pod's sample counts.
        let p = calc()
            .raw_resource_replicas(
                3,
                100_000,
                "memory",
                &refs,
                metrics(&[("a", 100_000), ("new", 300_000)]),
            )
            .unwrap();
        assert_eq!(p.1, 200_000);
    }

    #[test]
    fn deleted_and_failed_pods_are_ignored() {
        let mut gone = pod("gone", "100m");
        gone.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        let mut failed = pod("failed", "100m");
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        let pods = [pod("a", "100m"), gone, failed];
        let refs: Vec<&Pod> = pods.iter().collect();
        let p = calc()
            .resource_replicas(
                3,
                50,
                "cpu",
                &refs,
                metrics(&[("a", 100), ("gone", 1000), ("failed", 1000)]),
            )
            .unwrap();
        // Only a: 100% → ratio 2 over one ready pod.
        assert_eq!((p.replicas, p.utilization), (2, 100));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let mut no_request = pod("a", "100m");
        no_request.spec.as_mut().unwrap().containers[0].resources = None;
        let e = calc()
            .resource_replicas(1, 50, "cpu", &[&no_request], metrics(&[("a", 10)]))
            .unwrap_err();
        assert_eq!(e, "missing request for cpu in container c of Pod a");
        let p = pod("a", "100m");
        let e = calc()
            .resource_replicas(1, 50, "cpu", &[&p], metrics(&[]))
            .unwrap_err();
        assert!(e.contains("did not receive metrics"), "{e}");
        let e = calc()
            .resource_replicas(1, 50, "cpu", &[], metrics(&[]))
            .unwrap_err();
        assert!(e.contains("no pods returned by selector"), "{e}");
    }

    #[test]
    fn average_value_targets() {
        let pods = [pod("a", "100m"), pod("b", "100m")];
        let refs: Vec<&Pod> = pods.iter().collect();
        // 300m average vs 100m target: ratio 3 → 6 pods.
        let (n, avg) = calc()
            .raw_resource_replicas(2, 100, "cpu", &refs, metrics(&[("a", 200), ("b", 400)]))
            .unwrap();
        assert_eq!((n, avg), (6, 300));
        // Missing pod on a scale-down counts as the target: (20 + 100) / 2 = 60 → 0.6 →
        // ceil(1.2) = 2: no change.
        let (n, _) = calc()
            .raw_resource_replicas(2, 100, "cpu", &refs, metrics(&[("a", 20)]))
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn sidecars_count_toward_requests() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "s"},
            "spec": {
                "initContainers": [
                    {"name": "once", "resources": {}},
                    {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}},
                ],
                "containers": [{"name": "c", "resources": {"requests": {"cpu": "0.1"}}}],
            },
        }))
        .unwrap();
        assert_eq!(pod_requests(&[&p], "cpu", None).unwrap()["s"], 150);
        assert_eq!(pod_requests(&[&p], "cpu", Some("side")).unwrap()["s"], 50);
    }
}
