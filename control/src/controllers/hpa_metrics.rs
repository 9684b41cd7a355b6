//! Where the HPA controller reads resource usage: `metrics.k8s.io/v1beta1` PodMetrics of
//! the target's pods (the API server computes them from the nodes' kubelet
//! `/stats/summary`), listed through the API with the scale's label selector as
//! kube-controller-manager's resource metrics client does. A pod's value is the sum over
//! its containers (or the one named container, for ContainerResource metrics) in
//! milli-units; a pod one of whose containers lacks the resource is left out (it then
//! counts as missing).

use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde_json::Value;

use super::hpa_replicas::{PodMetric, PodMetricsInfo};
use crate::admission::quantity::Quantity;

/// metrics.k8s.io's PodMetrics.
pub fn pod_metrics_resource() -> ApiResource {
    ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    }
}

/// A metav1.Duration as the metrics API writes it (`1s`, `30s`, `1m0s`, `500ms`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest == "0" {
        return Some(total);
    }
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|i| *i > 0)?;
        let (num, tail) = rest.split_at(split);
        let value: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let secs = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += Duration::from_secs_f64(value * secs);
        rest = next;
    }
    Some(total)
}

/// One PodMetrics object's value for `resource` (and `container`, if named).
pub fn pod_value(item: &Value, resource: &str, container: Option<&str>) -> Option<PodMetric> {
    let containers = item.get("containers").and_then(Value::as_array)?;
    let mut sum = 0i64;
    let mut counted = 0;
    for c in containers {
        if container.is_some_and(|want| c.get("name").and_then(Value::as_str) != Some(want)) {
            continue;
        }
        let q = c.pointer(&format!("/usage/{resource}"))?;
        let q = Quantity::from_json(q).ok()?;
        sum = sum.saturating_add(i64::try_from(q.milli()).unwrap_or(i64::MAX));
        counted += 1;
    }
    if counted == 0 {
        return None;
    }
    let timestamp = item
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(jiff::Timestamp::now);
    let window = item
        .get("window")
        .and_then(Value::as_str)
        .and_then(parse_go_duration)
        .unwrap_or(Duration::ZERO);
    Some(PodMetric {
        timestamp,
        window,
        value: sum,
    })
}

/// The pods' usage of `resource` in `ns` among those `selector` picks.
pub async fn resource_metrics(
    client: &kube::Client,
    ns: &str,
    selector: &str,
    resource: &str,
    container: Option<&str>,
) -> Result<PodMetricsInfo, String> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &pod_metrics_resource());
    let list = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| {
            format!("unable to get metrics for resource {resource}: unable to fetch metrics from resource metrics API: {e}")
        })?;
    if list.items.is_empty() {
        return Err(format!(
            "unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
        ));
    }
    let mut out = PodMetricsInfo::new();
    for item in &list.items {
        let Some(name) = item.metadata.name.clone() else {
            continue;
        };
        if let Some(m) = pod_value(&item.data, resource, container) {
            out.insert(name, m);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("x"), None);
        assert_eq!(parse_go_duration("5parsecs"), None);
    }

    #[test]
    fn pod_values_sum_containers_in_milli_units() {
        let item = json!({"timestamp": "2026-11-26T10:00:00Z", "window": "1s", "containers": [
            {"name": "a", "usage": {"cpu": "250000000n", "memory": "1Ki"}},
            {"name": "b", "usage": {"cpu": "50m", "memory": "1Mi"}},
        ]});
        let m = pod_value(&item, "cpu", None).unwrap();
        assert_eq!(m.value, 300);
        assert_eq!(m.window, Duration::from_secs(1));
        assert_eq!(
            pod_value(&item, "memory", None).unwrap().value,
            1_049_600_000
        );
        assert_eq!(pod_value(&item, "cpu", Some("b")).unwrap().value, 50);
        assert_eq!(pod_value(&item, "cpu", Some("c")), None);
        // A container without the resource leaves the pod out.
        let partial = json!({"containers": [{"name": "a", "usage": {"cpu": "1"}}, {"name": "b", "usage": {}}]});
        assert_eq!(pod_value(&partial, "cpu", None), None);
        assert_eq!(pod_value(&json!({"containers": []}), "cpu", None), None);
    }
}
