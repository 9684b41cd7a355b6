//! Requests and limits → QoS class, the pod's cgroup parent and the CRI's
//! LinuxContainerResources, as kubelet computes them.

use k8s_cri::v1::LinuxContainerResources;
use k8s_openapi::api::core::v1::{Container, Pod};
use tracing::info;

use super::quantity;

const CPU_PERIOD: i64 = 100_000;
const MIN_SHARES: i64 = 2;
const MIN_QUOTA: i64 = 1000;

fn get(c: &Container, which: &str, res: &str) -> Option<i128> {
    let r = c.resources.as_ref()?;
    let m = if which == "limits" {
        r.limits.as_ref()?
    } else {
        r.requests.as_ref()?
    };
    let q = m.get(res)?;
    if res == "cpu" {
        quantity::milli(&q.0)
    } else {
        quantity::units(&q.0)
    }
}

/// Request of a resource, defaulting to its limit (API defaulting does the same).
pub fn request(c: &Container, res: &str) -> Option<i128> {
    get(c, "requests", res).or_else(|| get(c, "limits", res))
}

pub fn limit(c: &Container, res: &str) -> Option<i128> {
    get(c, "limits", res)
}

fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    pod.spec.iter().flat_map(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
    })
}

pub fn qos_class(pod: &Pod) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for c in all_containers(pod) {
        for res in ["cpu", "memory"] {
            let (rq, lm) = (get(c, "requests", res), limit(c, res));
            if rq.is_some() || lm.is_some() {
                any = true;
            }
            match lm {
                Some(l) if rq.is_none_or(|r| r == l) => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// cgroupfs path of the pod's cgroup: one subtree per QoS class, as kubelet's
/// `kubepods/{burstable,besteffort}/pod<uid>` (Guaranteed pods sit at the top).
pub fn cgroup_parent(pod: &Pod) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    match qos_class(pod) {
        "Guaranteed" => format!("/hull-kubepods/pod{uid}"),
        "Burstable" => format!("/hull-kubepods/burstable/pod{uid}"),
        _ => format!("/hull-kubepods/besteffort/pod{uid}"),
    }
}

/// kubelet's OOM score policy; this kernel (in a container) refuses negative values,
/// so they are clamped to 0 here with a log line instead of failing the pod.
pub fn oom_score_adj(pod: &Pod, c: &Container, mem_capacity: i128) -> i64 {
    let v = match qos_class(pod) {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            let req = request(c, "memory").unwrap_or(0);
            let v = if mem_capacity > 0 {
                1000 - (1000 * req) / mem_capacity
            } else {
                1000
            };
            (v.clamp(3, 999)) as i64
        }
    };
    if v < 0 {
        info!(
            pod = pod.metadata.name.as_deref().unwrap_or_default(),
            container = %c.name,
            "oom_score_adj {v} (Guaranteed) clamped to 0: negative values are refused on this kernel"
        );
        return 0;
    }
    v
}

pub fn linux_resources(pod: &Pod, c: &Container, mem_capacity: i128) -> LinuxContainerResources {
    let cpu_req = request(c, "cpu");
    let shares = match cpu_req {
        Some(m) => ((m * 1024) / 1000).max(MIN_SHARES as i128) as i64,
        None => MIN_SHARES,
    };
    let quota = limit(c, "cpu")
        .map(|m| ((m as i64 * CPU_PERIOD) / 1000).max(MIN_QUOTA))
        .unwrap_or(0);
    LinuxContainerResources {
        cpu_period: if quota > 0 { CPU_PERIOD } else { 0 },
        cpu_quota: quota,
        cpu_shares: shares,
        memory_limit_in_bytes: limit(c, "memory").unwrap_or(0) as i64,
        oom_score_adj: oom_score_adj(pod, c, mem_capacity),
        ..Default::default()
    }
}
