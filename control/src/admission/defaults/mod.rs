//! Defaults, as kube-apiserver fills them in on create and update (the `SetDefaults_*`
//! functions of the API types plus the defaulting admission plugins:
//! DefaultTolerationSeconds, Priority, ServiceAccount).
//!
//! Only absent (or null) fields are set, so defaulting is idempotent and never overrides
//! what a client wrote. Pods and pod templates are in [`pod`]; everything else is here.

pub mod pod;

use serde_json::{Map, Value, json};

pub use pod::{image_pull_policy, pod_spec, qos_class};
use pod::{pod, pod_template_at};

/// Fills in `obj`'s defaults for its `kind` (`"Pod"`, `"Deployment"`, ...). Objects of
/// kinds without defaults, and shapes that are not objects, are left alone (validation
/// reports bad shapes).
pub fn default(kind: &str, obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else {
        return;
    };
    match kind {
        "Pod" => pod(o),
        "PodTemplate" => pod_template_at(o, "template"),
        "Deployment" => deployment(o),
        "ReplicaSet" => {
            if let Some(spec) = child(o, "spec") {
                set(spec, "replicas", json!(1));
                pod_template_at(spec, "template");
            }
        }
        "ReplicationController" => replication_controller(o),
        "StatefulSet" => stateful_set(o),
        "DaemonSet" => daemon_set(o),
        "Job" => job(o),
        "CronJob" => cron_job(o),
        "Service" => service(o),
        "Namespace" => namespace(o),
        "Secret" => {
            set(o, "type", json!("Opaque"));
            secret_string_data(o);
        }
        "PersistentVolumeClaim" => {
            if let Some(spec) = child(o, "spec") {
                set(spec, "volumeMode", json!("Filesystem"));
            }
            if let Some(status) = child(o, "status") {
                set(status, "phase", json!("Pending"));
            }
        }
        "PersistentVolume" => {
            if let Some(spec) = child(o, "spec") {
                set(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
                set(spec, "volumeMode", json!("Filesystem"));
            }
            if let Some(status) = child(o, "status") {
                set(status, "phase", json!("Pending"));
            }
        }
        "Endpoints" => {
            for subset in list(o, "subsets") {
                if let Some(s) = subset.as_object_mut() {
                    for port in list(s, "ports") {
                        if let Some(p) = port.as_object_mut() {
                            set(p, "protocol", json!("TCP"));
                        }
                    }
                }
            }
        }
        "EndpointSlice" => {
            for port in list(o, "ports") {
                if let Some(p) = port.as_object_mut() {
                    set(p, "protocol", json!("TCP"));
                }
            }
        }
        "LimitRange" => limit_range(o),
        "HorizontalPodAutoscaler" => {
            if let Some(spec) = child(o, "spec") {
                set(spec, "minReplicas", json!(1));
                if spec
                    .get("metrics")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty)
                {
                    // autoscaling/v2: no metrics means 80% CPU utilization.
                    spec.insert(
                        "metrics".into(),
                        json!([{"type": "Resource", "resource": {"name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 80}}}]),
                    );
                }
            }
        }
        "StorageClass" => {
            set(o, "reclaimPolicy", json!("Delete"));
            set(o, "volumeBindingMode", json!("Immediate"));
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            for subject in list(o, "subjects") {
                if let Some(s) = subject.as_object_mut() {
                    let group = match s.get("kind").and_then(Value::as_str) {
                        Some("User" | "Group") => "rbac.authorization.k8s.io",
                        _ => "",
                    };
                    if !group.is_empty() {
                        set(s, "apiGroup", json!(group));
                    }
                }
            }
        }
        _ => {}
    }
}

/// `stringData` is write-only: its values are stored base64-encoded in `data`, where they
/// win over `data`'s, as the API's conversion does.
fn secret_string_data(o: &mut Map<String, Value>) {
    use base64::Engine;
    let Some(Value::Object(plain)) = o.shift_remove("stringData") else {
        return;
    };
    let Some(data) = child(o, "data") else {
        return;
    };
    for (k, v) in plain {
        let text = match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
        data.insert(k, json!(encoded));
    }
}

/// Sets `key` to `value` if it is absent or null.
fn set(m: &mut Map<String, Value>, key: &str, value: Value) {
    match m.get(key) {
        Some(v) if !v.is_null() => {}
        _ => {
            m.insert(key.to_string(), value);
        }
    }
}

/// The object at `key`, created empty if absent; `None` if something else is there.
fn child<'a>(m: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_string(), Value::Object(Map::new()));
    }
    m.get_mut(key).and_then(Value::as_object_mut)
}

/// The elements of the list at `key` (none if absent or not a list).
fn list<'a>(m: &'a mut Map<String, Value>, key: &str) -> std::slice::IterMut<'a, Value> {
    match m.get_mut(key) {
        Some(Value::Array(a)) => a.iter_mut(),
        _ => [].iter_mut(),
    }
}

fn deployment(o: &mut Map<String, Value>) {
    let Some(spec) = child(o, "spec") else { return };
    set(spec, "replicas", json!(1));
    set(spec, "revisionHistoryLimit", json!(10));
    set(spec, "progressDeadlineSeconds", json!(600));
    if let Some(strategy) = child(spec, "strategy") {
        set(strategy, "type", json!("RollingUpdate"));
        if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate")
            && let Some(ru) = child(strategy, "rollingUpdate")
        {
            set(ru, "maxUnavailable", json!("25%"));
            set(ru, "maxSurge", json!("25%"));
        }
    }
    pod_template_at(spec, "template");
}

fn replication_controller(o: &mut Map<String, Value>) {
    let template_labels = o
        .get("spec")
        .and_then(|s| s.pointer("/template/metadata/labels"))
        .cloned();
    if let Some(labels) = template_labels.filter(|l| l.as_object().is_some_and(|m| !m.is_empty())) {
        if let Some(spec) = child(o, "spec") {
            set(spec, "selector", labels.clone());
        }
        if let Some(meta) = child(o, "metadata") {
            set(meta, "labels", labels);
        }
    }
    if let Some(spec) = child(o, "spec") {
        set(spec, "replicas", json!(1));
        pod_template_at(spec, "template");
    }
}

fn stateful_set(o: &mut Map<String, Value>) {
    let Some(spec) = child(o, "spec") else { return };
    set(spec, "replicas", json!(1));
    set(spec, "podManagementPolicy", json!("OrderedReady"));
    set(spec, "revisionHistoryLimit", json!(10));
    set(
        spec,
        "persistentVolumeClaimRetentionPolicy",
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
    );
    if let Some(strategy) = child(spec, "updateStrategy") {
        set(strategy, "type", json!("RollingUpdate"));
        if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate")
            && let Some(ru) = child(strategy, "rollingUpdate")
        {
            set(ru, "partition", json!(0));
        }
    }
    for pvc in list(spec, "volumeClaimTemplates") {
        if let Some(pvc) = pvc.as_object_mut() {
            if let Some(s) = child(pvc, "spec") {
                set(s, "volumeMode", json!("Filesystem"));
            }
            if let Some(status) = child(pvc, "status") {
                set(status, "phase", json!("Pending"));
            }
        }
    }
    pod_template_at(spec, "template");
}

fn daemon_set(o: &mut Map<String, Value>) {
    let Some(spec) = child(o, "spec") else { return };
    set(spec, "revisionHistoryLimit", json!(10));
    if let Some(strategy) = child(spec, "updateStrategy") {
        set(strategy, "type", json!("RollingUpdate"));
        if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate")
            && let Some(ru) = child(strategy, "rollingUpdate")
        {
            set(ru, "maxUnavailable", json!(1));
            set(ru, "maxSurge", json!(0));
        }
    }
    pod_template_at(spec, "template");
}

fn job_spec(spec: &mut Map<String, Value>) {
    let completions_set = spec.get("completions").is_some_and(|v| !v.is_null());
    let parallelism_set = spec.get("parallelism").is_some_and(|v| !v.is_null());
    if !completions_set && !parallelism_set {
        spec.insert("completions".into(), json!(1));
    }
    set(spec, "parallelism", json!(1));
    set(spec, "backoffLimit", json!(6));
    set(spec, "completionMode", json!("NonIndexed"));
    set(spec, "suspend", json!(false));
    set(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    pod_template_at(spec, "template");
}

fn job(o: &mut Map<String, Value>) {
    // The job strategy selects its pods by the job's uid unless manualSelector is set.
    let uid = o
        .get("metadata")
        .and_then(|m| m.get("uid"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let name = o
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let Some(spec) = child(o, "spec") else { return };
    job_spec(spec);
    let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
    if let (false, Some(uid), Some(name)) = (manual, uid, name)
        && spec.get("selector").is_none_or(Value::is_null)
    {
        spec.insert(
            "selector".into(),
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
        );
        if let Some(template) = child(spec, "template")
            && let Some(meta) = child(template, "metadata")
            && let Some(labels) = child(meta, "labels")
        {
            set(labels, "batch.kubernetes.io/controller-uid", json!(uid));
            set(labels, "controller-uid", json!(uid));
            set(labels, "batch.kubernetes.io/job-name", json!(name));
            set(labels, "job-name", json!(name));
        }
    }
}

fn cron_job(o: &mut Map<String, Value>) {
    let Some(spec) = child(o, "spec") else { return };
    set(spec, "concurrencyPolicy", json!("Allow"));
    set(spec, "suspend", json!(false));
    set(spec, "successfulJobsHistoryLimit", json!(3));
    set(spec, "failedJobsHistoryLimit", json!(1));
    if let Some(jt) = spec.get_mut("jobTemplate").and_then(Value::as_object_mut)
        && let Some(js) = jt.get_mut("spec").and_then(Value::as_object_mut)
    {
        pod_template_at(js, "template");
    }
}

fn service(o: &mut Map<String, Value>) {
    let Some(spec) = child(o, "spec") else { return };
    set(spec, "type", json!("ClusterIP"));
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    set(spec, "sessionAffinity", json!("None"));
    if ty == "ExternalName" {
        return;
    }
    set(spec, "internalTrafficPolicy", json!("Cluster"));
    if ty == "NodePort" || ty == "LoadBalancer" {
        set(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    set(spec, "ipFamilies", json!(["IPv4"]));
    set(spec, "ipFamilyPolicy", json!("SingleStack"));
    if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
        set(
            spec,
            "sessionAffinityConfig",
            json!({"clientIP": {"timeoutSeconds": 10800}}),
        );
    }
    for p in list(spec, "ports") {
        if let Some(p) = p.as_object_mut() {
            set(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                set(p, "targetPort", port);
            }
        }
    }
}

fn namespace(o: &mut Map<String, Value>) {
    let name = o
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(name) = name
        && let Some(meta) = child(o, "metadata")
        && let Some(labels) = child(meta, "labels")
    {
        // Always the namespace's own name: the label is how selectors pick namespaces.
        labels.insert("kubernetes.io/metadata.name".into(), json!(name));
    }
    if let Some(spec) = child(o, "spec") {
        set(spec, "finalizers", json!(["kubernetes"]));
    }
    if let Some(status) = child(o, "status") {
        set(status, "phase", json!("Active"));
    }
}

fn limit_range(o: &mut Map<String, Value>) {
    let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    for item in list(spec, "limits") {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        if item.get("type").and_then(Value::as_str) != Some("Container") {
            continue;
        }
        // default ← max; defaultRequest ← default, else min.
        let max = item.get("max").and_then(Value::as_object).cloned();
        let min = item.get("min").and_then(Value::as_object).cloned();
        if let Some(max) = max
            && let Some(default) = child(item, "default")
        {
            for (k, v) in max {
                set(default, &k, v);
            }
        }
        let default = item.get("default").and_then(Value::as_object).cloned();
        if let Some(request) = child(item, "defaultRequest") {
            for (k, v) in default.into_iter().flatten() {
                set(request, &k, v);
            }
            for (k, v) in min.into_iter().flatten() {
                set(request, &k, v);
            }
        }
        for key in ["default", "defaultRequest"] {
            if item
                .get(key)
                .and_then(Value::as_object)
                .is_some_and(Map::is_empty)
            {
                item.shift_remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_defaults_reach_template() {
        let mut d = json!({"spec":{"template":{"spec":{"containers":[{"name":"web","image":"busybox:1.36"}]}}}});
        default("Deployment", &mut d);
        let s = &d["spec"];
        assert_eq!(s["replicas"], 1);
        assert_eq!(
            s["strategy"],
            json!({"type":"RollingUpdate","rollingUpdate":{"maxUnavailable":"25%","maxSurge":"25%"}})
        );
        assert_eq!(s["revisionHistoryLimit"], 10);
        assert_eq!(s["progressDeadlineSeconds"], 600);
        assert_eq!(
            s["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert!(
            s["template"]["spec"].get("tolerations").is_none(),
            "pod-only admission"
        );
        let mut r = json!({"spec":{"strategy":{"type":"Recreate"}}});
        default("Deployment", &mut r);
        assert!(r["spec"]["strategy"].get("rollingUpdate").is_none());
    }

    #[test]
    fn service_defaults() {
        let mut s = json!({"spec":{"ports":[{"port":80}],"selector":{"app":"a"}}});
        default("Service", &mut s);
        let spec = &s["spec"];
        assert_eq!(spec["type"], "ClusterIP");
        assert_eq!(spec["sessionAffinity"], "None");
        assert_eq!(
            spec["ports"][0],
            json!({"port":80,"protocol":"TCP","targetPort":80})
        );
        assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
        assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
        assert_eq!(spec["internalTrafficPolicy"], "Cluster");
        let mut np = json!({"spec":{"type":"NodePort","ports":[{"port":80}]}});
        default("Service", &mut np);
        assert_eq!(np["spec"]["externalTrafficPolicy"], "Cluster");
    }

    #[test]
    fn namespace_job_cronjob_statefulset_daemonset() {
        let mut ns = json!({"metadata":{"name":"q1"}});
        default("Namespace", &mut ns);
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(ns["status"]["phase"], "Active");
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "q1"
        );

        let mut j = json!({"metadata":{"name":"j","uid":"u1"},"spec":{"template":{"spec":{"restartPolicy":"Never","containers":[{"name":"c","image":"b"}]}}}});
        default("Job", &mut j);
        assert_eq!(j["spec"]["completions"], 1);
        assert_eq!(j["spec"]["parallelism"], 1);
        assert_eq!(j["spec"]["backoffLimit"], 6);
        assert_eq!(
            j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u1"
        );
        assert_eq!(j["spec"]["template"]["metadata"]["labels"]["job-name"], "j");

        let mut cj = json!({"spec":{"schedule":"* * * * *","jobTemplate":{"spec":{"template":{"spec":{"containers":[{"name":"c","image":"b"}]}}}}}});
        default("CronJob", &mut cj);
        assert_eq!(cj["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(cj["spec"]["successfulJobsHistoryLimit"], 3);
        assert_eq!(
            cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["dnsPolicy"],
            "ClusterFirst"
        );

        let mut ss = json!({"spec":{"template":{"spec":{"containers":[]}}}});
        default("StatefulSet", &mut ss);
        assert_eq!(ss["spec"]["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            ss["spec"]["updateStrategy"]["rollingUpdate"]["partition"],
            0
        );

        let mut ds = json!({"spec":{"template":{"spec":{"containers":[]}}}});
        default("DaemonSet", &mut ds);
        assert_eq!(
            ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
            1
        );
    }

    #[test]
    fn secret_string_data_moves_into_data() {
        let mut s = json!({"data":{"a":"eA==","b":"eA=="},"stringData":{"b":"hello"}});
        default("Secret", &mut s);
        assert_eq!(
            s,
            json!({"data":{"a":"eA==","b":"aGVsbG8="},"type":"Opaque"})
        );
    }

    #[test]
    fn limit_range_item_defaults() {
        let mut lr = json!({"spec":{"limits":[{"type":"Container","max":{"cpu":"2"},"min":{"memory":"1Mi"}}]}});
        default("LimitRange", &mut lr);
        let item = &lr["spec"]["limits"][0];
        assert_eq!(item["default"], json!({"cpu":"2"}));
        assert_eq!(item["defaultRequest"], json!({"cpu":"2","memory":"1Mi"}));
    }
}
