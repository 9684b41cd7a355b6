//! Shared by the scheduler tests: a real `hull server` (its controller manager runs the
//! scheduler) with fake nodes — Node objects, the status a kubelet would write, and
//! their Leases — driven through kubectl 1.35.
#![allow(dead_code)]

#[path = "../api_support/mod.rs"]
mod api_support;

use std::time::{Duration, Instant};

pub use api_support::Server;
use serde_json::{Value, json};

/// How long a pod may take to be bound (or marked unschedulable) before the test gives
/// up: generous, it only bounds a wait, the assertions are on what happened.
pub const LIMIT: Duration = Duration::from_secs(60);

pub fn start(test: &str) -> Server {
    Server::start(&format!("sched-{test}"), None)
}

/// Applies a JSON object with kubectl.
pub fn apply(s: &Server, obj: &Value) {
    let text = obj.to_string();
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(&text));
    assert!(
        out.status.success(),
        "kubectl apply {text}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Ready node with `cpu` CPUs, 8Gi, 110 pods, the given labels and taints, and a fresh
/// Lease (renewed now, valid for an hour).
pub fn node(s: &Server, name: &str, cpu: &str, labels: Value, taints: Value) {
    node_with(s, name, cpu, labels, taints, json!({}));
}

/// [`node`] with extra `status` fields (images, allocatable overrides).
pub fn node_with(s: &Server, name: &str, cpu: &str, labels: Value, taints: Value, extra: Value) {
    let mut l = json!({"kubernetes.io/hostname": name});
    if let (Some(m), Some(add)) = (l.as_object_mut(), labels.as_object()) {
        m.extend(add.clone());
    }
    apply(
        s,
        &json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": l}, "spec": {"taints": taints}}),
    );
    let now = now();
    // The Lease first: a Ready node without one would be taken at face value.
    match extra.get("leaseRenew").and_then(Value::as_str) {
        Some(renew) => lease(s, name, renew, 40),
        None => lease(s, name, &now, 3600),
    }
    let mut res = json!({"cpu": cpu, "memory": "8Gi", "pods": "110", "ephemeral-storage": "10Gi"});
    if let (Some(m), Some(over)) = (
        res.as_object_mut(),
        extra.get("allocatable").and_then(Value::as_object),
    ) {
        m.extend(over.clone());
    }
    let mut status = json!({"capacity": res, "allocatable": res, "conditions": [
        {"type": "Ready", "status": "True", "reason": "KubeletReady",
         "lastHeartbeatTime": now, "lastTransitionTime": now}]});
    if let Some(images) = extra.get("images") {
        status["images"] = images.clone();
    }
    let patch = json!({"status": status}).to_string();
    s.ok(&[
        "patch",
        "node",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ]);
}

pub fn lease(s: &Server, name: &str, renew: &str, secs: i64) {
    apply(
        s,
        &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": secs, "renewTime": renew}}),
    );
}

pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        .to_string()
}

/// Creates a pod in `ns` with one busybox container and `spec` merged over it
/// (`resources` goes on the container).
pub fn pod(s: &Server, ns: &str, name: &str, labels: Value, spec: Value) {
    let mut c = json!({"name": "c", "image": "busybox:1.36"});
    let mut spec = spec;
    if let Some(m) = spec.as_object_mut() {
        for k in ["resources", "ports", "image"] {
            if let Some(v) = m.remove(k) {
                c[k] = v;
            }
        }
        m.insert("containers".into(), json!([c]));
    }
    apply(
        s,
        &json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels}, "spec": spec}),
    );
}

pub fn ns(s: &Server, name: &str) {
    apply(
        s,
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    );
}

pub fn get(s: &Server, ns: &str, name: &str) -> Value {
    let out = s.ok(&["get", "pod", "-n", ns, name, "-o", "json"]);
    serde_json::from_str(&out).unwrap_or(Value::Null)
}

fn scheduled_condition(p: &Value) -> Option<Value> {
    p.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "PodScheduled")
        .cloned()
}

/// Waits for the pod to be bound; returns its node.
pub fn bound(s: &Server, ns: &str, name: &str) -> String {
    let t = Instant::now();
    loop {
        let p = get(s, ns, name);
        if let Some(n) = p.pointer("/spec/nodeName").and_then(Value::as_str) {
            return n.to_string();
        }
        if t.elapsed() > LIMIT {
            panic!(
                "pod {ns}/{name} not bound; condition: {:?}",
                scheduled_condition(&p)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for `PodScheduled=False`; returns its message (the pod must stay unbound).
pub fn unschedulable(s: &Server, ns: &str, name: &str) -> String {
    let t = Instant::now();
    loop {
        let p = get(s, ns, name);
        assert!(
            p.pointer("/spec/nodeName").is_none(),
            "pod {ns}/{name} should not be bound: {}",
            p.pointer("/spec/nodeName").unwrap_or(&Value::Null)
        );
        if let Some(c) = scheduled_condition(&p)
            && c["status"] == "False"
        {
            assert_eq!(c["reason"], "Unschedulable");
            return c["message"].as_str().unwrap_or("").to_string();
        }
        if t.elapsed() > LIMIT {
            panic!("pod {ns}/{name} never marked unschedulable");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the pod's Unschedulable message contains `want` (it is rewritten as the
/// cluster changes).
pub fn unschedulable_with(s: &Server, ns: &str, name: &str, want: &str) -> String {
    let t = Instant::now();
    loop {
        let msg = unschedulable(s, ns, name);
        if msg.contains(want) {
            return msg;
        }
        if t.elapsed() > LIMIT {
            panic!("pod {ns}/{name}: message {msg:?} never contained {want:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Events about one object, as `kubectl get events` lists them: (type, reason, message).
pub fn events(s: &Server, ns: &str, name: &str) -> Vec<(String, String, String)> {
    let sel = format!("involvedObject.name={name}");
    let out = s.ok(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        &sel,
        "-o",
        "json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let f = |k: &str| e[k].as_str().unwrap_or("").to_string();
            (f("type"), f("reason"), f("message"))
        })
        .collect()
}

/// Waits for an Event with this reason; returns its message.
pub fn event(s: &Server, ns: &str, name: &str, reason: &str) -> String {
    let t = Instant::now();
    loop {
        if let Some((_, _, m)) = events(s, ns, name).into_iter().find(|e| e.1 == reason) {
            return m;
        }
        if t.elapsed() > LIMIT {
            panic!(
                "no {reason} Event for {ns}/{name}: {:?}",
                events(s, ns, name)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
