//! Pod and pod-template defaults: `SetDefaults_PodSpec` and the container, probe and
//! volume defaults under it, plus what the pod-only admission plugins add
//! (DefaultTolerationSeconds, Priority, ServiceAccount) and the QoS class.

use serde_json::{Map, Value, json};

use super::{child, list, set};

/// `:latest` or no tag → Always, anything else (a tag or a digest) → IfNotPresent.
pub fn image_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

pub(super) fn pod(o: &mut Map<String, Value>) {
    if let Some(spec) = child(o, "spec") {
        pod_spec(spec);
        // Admission plugins that act on pods only, not on templates.
        set(spec, "priority", json!(0));
        set(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
        set(spec, "serviceAccountName", json!("default"));
        if let Some(sa) = spec.get("serviceAccountName").cloned() {
            set(spec, "serviceAccount", sa);
        }
        default_toleration_seconds(spec);
        // SetDefaults_Pod: a limit without a request is also the request.
        for key in ["containers", "initContainers"] {
            for c in list(spec, key) {
                if let Some(res) = c.get_mut("resources").and_then(Value::as_object_mut) {
                    let limits = res.get("limits").and_then(Value::as_object).cloned();
                    if let Some(limits) = limits.filter(|l| !l.is_empty())
                        && let Some(requests) = child(res, "requests")
                    {
                        for (k, v) in limits {
                            set(requests, &k, v);
                        }
                    }
                }
            }
        }
    }
    let qos = qos_class(o.get("spec"));
    if let Some(status) = child(o, "status") {
        set(status, "phase", json!("Pending"));
        set(status, "qosClass", json!(qos));
    }
}

/// DefaultTolerationSeconds: tolerate not-ready and unreachable nodes for 300 s.
fn default_toleration_seconds(spec: &mut Map<String, Value>) {
    let mut tolerations = match spec.get("tolerations") {
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let covered = tolerations.iter().any(|t| {
            let k = t.get("key").and_then(Value::as_str);
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            (k == Some(key) || k.is_none_or(str::is_empty))
                && (effect.is_empty() || effect == "NoExecute")
        });
        if !covered {
            tolerations.push(json!({"key": key, "operator": "Exists",
                                    "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
    spec.insert("tolerations".into(), Value::Array(tolerations));
}

/// Guaranteed when every container has equal cpu and memory requests and limits,
/// BestEffort when none has any, Burstable otherwise.
pub fn qos_class(spec: Option<&Value>) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec.and_then(|s| s.get(*k)).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        for res in ["cpu", "memory"] {
            let r = requests.and_then(|m| m.get(res));
            let l = limits.and_then(|m| m.get(res));
            if r.is_some() || l.is_some() {
                any = true;
            }
            // A limit alone defaults the request to it.
            match (r, l) {
                (_, None) => guaranteed = false,
                (Some(r), Some(l)) if r != l => guaranteed = false,
                _ => {}
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

pub(super) fn pod_template_at(o: &mut Map<String, Value>, key: &str) {
    if let Some(template) = o.get_mut(key).and_then(Value::as_object_mut)
        && let Some(spec) = child(template, "spec")
    {
        pod_spec(spec);
    }
}

/// SetDefaults_PodSpec and the container/volume/probe defaults under it.
pub fn pod_spec(spec: &mut Map<String, Value>) {
    set(spec, "dnsPolicy", json!("ClusterFirst"));
    set(spec, "restartPolicy", json!("Always"));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set(spec, "securityContext", json!({}));
    set(spec, "schedulerName", json!("default-scheduler"));
    set(spec, "enableServiceLinks", json!(true));
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        // Host-network pods see the node's ports: containerPort doubles as hostPort.
        for c in list(spec, "containers") {
            if let Some(c) = c.as_object_mut() {
                for p in list(c, "ports") {
                    if let Some(p) = p.as_object_mut()
                        && let Some(cp) = p.get("containerPort").cloned()
                    {
                        set(p, "hostPort", cp);
                    }
                }
            }
        }
    }
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        for c in list(spec, key) {
            if let Some(c) = c.as_object_mut() {
                container(c);
            }
        }
    }
    for v in list(spec, "volumes") {
        if let Some(v) = v.as_object_mut() {
            volume(v);
        }
    }
}

fn container(c: &mut Map<String, Value>) {
    if let Some(image) = c.get("image").and_then(Value::as_str) {
        let policy = image_pull_policy(image);
        set(c, "imagePullPolicy", json!(policy));
    }
    set(c, "terminationMessagePath", json!("/dev/termination-log"));
    set(c, "terminationMessagePolicy", json!("File"));
    set(c, "resources", json!({}));
    for p in list(c, "ports") {
        if let Some(p) = p.as_object_mut() {
            set(p, "protocol", json!("TCP"));
        }
    }
    for e in list(c, "env") {
        if let Some(field_ref) = e
            .pointer_mut("/valueFrom/fieldRef")
            .and_then(Value::as_object_mut)
        {
            set(field_ref, "apiVersion", json!("v1"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            set(p, "timeoutSeconds", json!(1));
            set(p, "periodSeconds", json!(10));
            set(p, "successThreshold", json!(1));
            set(p, "failureThreshold", json!(3));
            if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                set(h, "path", json!("/"));
                set(h, "scheme", json!("HTTP"));
            }
        }
    }
}

fn volume(v: &mut Map<String, Value>) {
    for source in ["configMap", "secret", "projected", "downwardAPI"] {
        if let Some(s) = v.get_mut(source).and_then(Value::as_object_mut) {
            set(s, "defaultMode", json!(420));
        }
    }
    if let Some(h) = v.get_mut("hostPath").and_then(Value::as_object_mut) {
        set(h, "type", json!(""));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::default;

    #[test]
    fn pull_policy_from_tag() {
        assert_eq!(image_pull_policy("busybox"), "Always");
        assert_eq!(image_pull_policy("busybox:latest"), "Always");
        assert_eq!(image_pull_policy("busybox:1.36"), "IfNotPresent");
        assert_eq!(image_pull_policy("localhost:5000/busybox"), "Always");
        assert_eq!(
            image_pull_policy("localhost:5000/busybox:1"),
            "IfNotPresent"
        );
        assert_eq!(image_pull_policy("b@sha256:abcd"), "IfNotPresent");
    }

    #[test]
    fn pod_defaults() {
        let mut p = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},
            "spec":{"containers":[{"name":"c","image":"busybox","ports":[{"containerPort":80}]}]}});
        default("Pod", &mut p);
        let s = &p["spec"];
        assert_eq!(s["restartPolicy"], "Always");
        assert_eq!(s["dnsPolicy"], "ClusterFirst");
        assert_eq!(s["schedulerName"], "default-scheduler");
        assert_eq!(s["terminationGracePeriodSeconds"], 30);
        assert_eq!(s["securityContext"], json!({}));
        assert_eq!(s["enableServiceLinks"], true);
        assert_eq!(s["priority"], 0);
        assert_eq!(s["serviceAccountName"], "default");
        let c = &s["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["terminationMessagePolicy"], "File");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        let t = s["tolerations"].as_array().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["tolerationSeconds"], 300);
        assert_eq!(p["status"]["phase"], "Pending");
        assert_eq!(p["status"]["qosClass"], "BestEffort");
        // Idempotent.
        let again = {
            let mut q = p.clone();
            default("Pod", &mut q);
            q
        };
        assert_eq!(again, p);
    }

    #[test]
    fn client_values_win() {
        let mut p = json!({"spec":{"restartPolicy":"Never","containers":[{"name":"c","image":"b:1","imagePullPolicy":"Never"}]}});
        default("Pod", &mut p);
        assert_eq!(p["spec"]["restartPolicy"], "Never");
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Never");
    }

    #[test]
    fn qos_classes() {
        let g = json!({"containers":[{"resources":{"limits":{"cpu":"1","memory":"1Gi"}}}]});
        assert_eq!(qos_class(Some(&g)), "Guaranteed");
        let b = json!({"containers":[{"resources":{"requests":{"cpu":"1"}}}]});
        assert_eq!(qos_class(Some(&b)), "Burstable");
    }
}
