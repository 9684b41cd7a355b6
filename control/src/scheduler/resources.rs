//! Resource arithmetic: what a pod requests (kube's `PodRequests`: containers, init
//! containers and sidecars, overhead) and what a node offers (`status.allocatable`), in
//! integer milli-CPU and bytes so the hot path never parses a quantity.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

use crate::admission::quantity::Quantity;

/// CPU a pod without a CPU request is scored as using (kube's `DefaultMilliCPURequest`).
pub const DEFAULT_MILLI_CPU: i64 = 100;
/// Memory a pod without a memory request is scored as using (`DefaultMemoryRequest`).
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// A set of resources: the four the scheduler knows by name, plus extended ones
/// (`nvidia.com/gpu`, `hugepages-2Mi`, ...) by their resource name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// Parses a resource list (`requests`, `limits`, `allocatable`). Unparsable values
    /// count as zero: admission has validated what is stored, and a node status written
    /// by hand must not stop scheduling elsewhere.
    pub fn from_list(list: &BTreeMap<String, K8sQuantity>) -> Resources {
        let mut r = Resources::default();
        for (name, q) in list {
            let Ok(q) = Quantity::parse(&q.0) else {
                continue;
            };
            match name.as_str() {
                "cpu" => r.milli_cpu = clamp(q.milli()),
                "memory" => r.memory = units(&q),
                "ephemeral-storage" => r.ephemeral_storage = units(&q),
                "pods" => r.pods = units(&q),
                other if is_scalar(other) => {
                    r.scalar.insert(other.to_string(), units(&q));
                }
                _ => {}
            }
        }
        r
    }

    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(o.milli_cpu);
        self.memory = self.memory.saturating_add(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_add(o.ephemeral_storage);
        self.pods = self.pods.saturating_add(o.pods);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }

    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(o.milli_cpu);
        self.memory = self.memory.saturating_sub(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_sub(o.ephemeral_storage);
        self.pods = self.pods.saturating_sub(o.pods);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = e.saturating_sub(*v);
        }
        self.scalar.retain(|_, v| *v != 0);
    }

    /// Element-wise maximum (an init container vs. the app containers).
    fn max(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = (*e).max(*v);
        }
    }
}

/// Extended resources and hugepages are checked like cpu; anything else in a resource
/// list (unknown names) is not the scheduler's business.
fn is_scalar(name: &str) -> bool {
    name.starts_with("hugepages-") || name.contains('/') || name.starts_with("attachable-volumes-")
}

fn clamp(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// Whole units, rounded up (as `Quantity.Value()`).
fn units(q: &Quantity) -> i64 {
    clamp((q.milli() + 999).div_euclid(1000))
}

/// What one container asks for: its requests, or its limits where a request is absent
/// (the API server defaults requests from limits; pods written before that still count).
fn container_requests(c: &Container) -> Resources {
    let Some(res) = &c.resources else {
        return Resources::default();
    };
    let mut list = res.limits.clone().unwrap_or_default();
    if let Some(req) = &res.requests {
        list.extend(req.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    Resources::from_list(&list)
}

fn non_zero(mut r: Resources) -> Resources {
    if r.milli_cpu == 0 {
        r.milli_cpu = DEFAULT_MILLI_CPU;
    }
    if r.memory == 0 {
        r.memory = DEFAULT_MEMORY;
    }
    r
}

/// A pod's effective requests as kube's `PodRequests` computes them: the sum of the app
/// containers and sidecars (restartable init containers), or the largest init step if
/// larger, plus the pod overhead; `pods` is 1. The second value is the same with
/// kube's non-zero defaults per container, which scoring uses.
pub fn pod_requests(pod: &Pod) -> (Resources, Resources) {
    let Some(spec) = &pod.spec else {
        return (Resources::default(), Resources::default());
    };
    let mut out = [Resources::default(), Resources::default()];
    for (i, acc) in out.iter_mut().enumerate() {
        let req = |c: &Container| {
            let r = container_requests(c);
            if i == 1 { non_zero(r) } else { r }
        };
        for c in &spec.containers {
            acc.add(&req(c));
        }
        let mut sidecars = Resources::default();
        let mut init_max = Resources::default();
        for c in spec.init_containers.iter().flatten() {
            let r = req(c);
            if c.restart_policy.as_deref() == Some("Always") {
                acc.add(&r);
                sidecars.add(&r);
                init_max.max(&sidecars);
            } else {
                let mut step = sidecars.clone();
                step.add(&r);
                init_max.max(&step);
            }
        }
        acc.max(&init_max);
        if let Some(overhead) = &spec.overhead {
            acc.add(&Resources::from_list(overhead));
        }
        acc.pods = 1;
    }
    let [req, nz] = out;
    (req, nz)
}

/// A node's allocatable resources (capacity where allocatable is not reported).
pub fn allocatable(node: &k8s_openapi::api::core::v1::Node) -> Resources {
    let status = node.status.as_ref();
    let list = status
        .and_then(|s| s.allocatable.as_ref())
        .or_else(|| status.and_then(|s| s.capacity.as_ref()));
    list.map(Resources::from_list).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    #[test]
    fn sums_containers_and_takes_the_largest_init_step() {
        let p = pod(json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
            ],
            "initContainers": [
                {"name": "i", "resources": {"requests": {"cpu": "2"}}},
                {"name": "s", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m", "memory": "10Mi"}}},
            ],
            "overhead": {"cpu": "10m"},
        }}));
        let (r, nz) = pod_requests(&p);
        assert_eq!(r.milli_cpu, 2010);
        assert_eq!(r.memory, (64 + 1024 + 10) * 1024 * 1024);
        assert_eq!(r.pods, 1);
        assert_eq!(nz.milli_cpu, 2010);
    }

    #[test]
    fn non_zero_defaults_apply_per_container() {
        let p = pod(json!({"spec": {"containers": [{"name": "a"}, {"name": "b",
            "resources": {"requests": {"cpu": "1"}}}]}}));
        let (r, nz) = pod_requests(&p);
        assert_eq!((r.milli_cpu, r.memory), (1000, 0));
        assert_eq!((nz.milli_cpu, nz.memory), (1100, 2 * DEFAULT_MEMORY));
    }

    #[test]
    fn extended_resources_and_hugepages_are_tracked() {
        let r = Resources::from_list(
            &serde_json::from_value(json!({"nvidia.com/gpu": "2", "hugepages-2Mi": "4Mi",
                "ephemeral-storage": "1Gi", "pods": "110", "cpu": "1500m"}))
            .expect("list"),
        );
        assert_eq!(r.scalar.get("nvidia.com/gpu"), Some(&2));
        assert_eq!(r.scalar.get("hugepages-2Mi"), Some(&(4 * 1024 * 1024)));
        assert_eq!(
            (r.pods, r.milli_cpu, r.ephemeral_storage),
            (110, 1500, 1 << 30)
        );
    }
}
