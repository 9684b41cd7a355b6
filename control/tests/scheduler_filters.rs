//! The scheduler's filters against a real `hull server` with fake nodes, through kubectl:
//! resources (cpu, memory, pods, accounting of bound pods), nodeSelector and required
//! node affinity, taints with and without tolerations, cordon, stale Leases, host ports,
//! required pod (anti-)affinity and topology spread — and the exact unschedulable text,
//! the FailedScheduling / Scheduled Events and the retry when the cluster changes.

mod scheduler_support;

use scheduler_support::{
    bound, event, events, get, lease, node, ns, pod, start, unschedulable, unschedulable_with,
};
use serde_json::json;

#[test]
fn resources_fit_and_bound_pods_are_accounted() {
    let s = start("resources");
    node(&s, "small", "2", json!({}), json!([]));
    node(&s, "large", "4", json!({}), json!([]));
    ns(&s, "res");
    let cpu = |c: &str| json!({"resources": {"requests": {"cpu": c}}});
    pod(&s, "res", "three", json!({}), cpu("3"));
    assert_eq!(bound(&s, "res", "three"), "large");
    // 1 CPU left on large, 2 on small: 1500m only fits small.
    pod(&s, "res", "onehalf", json!({}), cpu("1500m"));
    assert_eq!(bound(&s, "res", "onehalf"), "small");

    pod(&s, "res", "big", json!({}), cpu("5"));
    let msg = unschedulable(&s, "res", "big");
    assert_eq!(
        msg,
        "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: \
         2 No preemption victims found for incoming pod."
    );
    assert_eq!(event(&s, "res", "big", "FailedScheduling"), msg);
    let ev = events(&s, "res", "big");
    assert!(ev.iter().all(|e| e.0 == "Warning"), "{ev:?}");

    pod(
        &s,
        "res",
        "mem",
        json!({}),
        json!({"resources": {"requests": {"memory": "9Gi", "ephemeral-storage": "20Gi"}}}),
    );
    assert_eq!(
        unschedulable(&s, "res", "mem"),
        "0/2 nodes are available: 2 Insufficient ephemeral-storage, 2 Insufficient memory. \
         preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
    );

    // A pod that finished (Succeeded) holds nothing: 3 CPUs fit on large again.
    s.ok(&[
        "patch",
        "pod",
        "-n",
        "res",
        "three",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Succeeded"}}"#,
    ]);
    pod(&s, "res", "fits-now", json!({}), cpu("3"));
    assert_eq!(bound(&s, "res", "fits-now"), "large");

    // Scheduled pods: the Event and the condition kube-scheduler leaves.
    let msg = event(&s, "res", "onehalf", "Scheduled");
    assert_eq!(msg, "Successfully assigned res/onehalf to small");
    let p = get(&s, "res", "onehalf");
    let cond = p["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled").cloned())
        .expect("PodScheduled condition");
    assert_eq!(cond["status"], "True");
}

#[test]
fn too_many_pods_and_host_ports() {
    let s = start("ports");
    node_with_pods(&s, "tiny", "2");
    ns(&s, "hp");
    let port = |p: i64| json!({"ports": [{"containerPort": 80, "hostPort": p}]});
    pod(&s, "hp", "a", json!({}), port(8080));
    assert_eq!(bound(&s, "hp", "a"), "tiny");
    pod(&s, "hp", "b", json!({}), port(8080));
    assert_eq!(
        unschedulable(&s, "hp", "b"),
        "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports. \
         preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
    );
    pod(&s, "hp", "c", json!({}), port(8081));
    assert_eq!(bound(&s, "hp", "c"), "tiny");
    // The node takes two pods (b is not bound, so it does not count); a third is one
    // too many.
    pod(&s, "hp", "d", json!({}), json!({}));
    assert_eq!(
        unschedulable(&s, "hp", "d"),
        "0/1 nodes are available: 1 Too many pods. preemption: 0/1 nodes are available: \
         1 No preemption victims found for incoming pod."
    );
}

fn node_with_pods(s: &scheduler_support::Server, name: &str, pods: &str) {
    scheduler_support::node_with(
        s,
        name,
        "4",
        json!({}),
        json!([]),
        json!({"allocatable": {"pods": pods}}),
    );
}

#[test]
fn node_selector_affinity_taints_and_cordon() {
    let s = start("selectors");
    node(
        &s,
        "ssd",
        "4",
        json!({"disk": "ssd", "gen": "5"}),
        json!([]),
    );
    node(
        &s,
        "hdd",
        "4",
        json!({"disk": "hdd", "gen": "3"}),
        json!([]),
    );
    node(
        &s,
        "gpu",
        "4",
        json!({"disk": "ssd", "gen": "7"}),
        json!([{"key": "gpu", "value": "true", "effect": "NoSchedule"}]),
    );
    ns(&s, "sel");
    pod(
        &s,
        "sel",
        "by-selector",
        json!({}),
        json!({"nodeSelector": {"disk": "hdd"}}),
    );
    assert_eq!(bound(&s, "sel", "by-selector"), "hdd");
    let required = |exprs: serde_json::Value| {
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": exprs}]}}}})
    };
    pod(
        &s,
        "sel",
        "notin",
        json!({}),
        required(json!([{"key": "disk", "operator": "NotIn", "values": ["ssd"]}])),
    );
    assert_eq!(bound(&s, "sel", "notin"), "hdd");
    pod(
        &s,
        "sel",
        "gt",
        json!({}),
        required(json!([{"key": "gen", "operator": "Gt", "values": ["4"]}])),
    );
    assert_eq!(
        bound(&s, "sel", "gt"),
        "ssd",
        "gen 7 is tainted, gen 5 remains"
    );
    pod(
        &s,
        "sel",
        "exists-in",
        json!({}),
        required(json!([
        {"key": "disk", "operator": "Exists"}, {"key": "gen", "operator": "In", "values": ["3", "7"]}])),
    );
    assert_eq!(bound(&s, "sel", "exists-in"), "hdd");

    // The tainted node: untolerated, then tolerated.
    pod(
        &s,
        "sel",
        "wants-gpu",
        json!({}),
        json!({"nodeSelector": {"gen": "7"}}),
    );
    assert_eq!(
        unschedulable(&s, "sel", "wants-gpu"),
        "0/3 nodes are available: 1 node(s) had untolerated taint {gpu: true}, \
         2 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes are \
         available: 3 Preemption is not helpful for scheduling."
    );
    pod(
        &s,
        "sel",
        "tolerates-gpu",
        json!({}),
        json!({"nodeSelector": {"gen": "7"},
        "tolerations": [{"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]}),
    );
    assert_eq!(bound(&s, "sel", "tolerates-gpu"), "gpu");
    // NoExecute keeps pods off as well.
    s.ok(&["taint", "node", "hdd", "evict=yes:NoExecute"]);
    pod(
        &s,
        "sel",
        "hdd-again",
        json!({}),
        json!({"nodeSelector": {"disk": "hdd"}}),
    );
    assert!(
        unschedulable(&s, "sel", "hdd-again")
            .contains("1 node(s) had untolerated taint {evict: yes}")
    );
    // Removing the taint retries the waiting pod.
    s.ok(&["taint", "node", "hdd", "evict=yes:NoExecute-"]);
    assert_eq!(bound(&s, "sel", "hdd-again"), "hdd");

    // Cordon: no new pods; uncordon lets the waiting one in.
    s.ok(&["cordon", "ssd"]);
    pod(
        &s,
        "sel",
        "on-ssd",
        json!({}),
        json!({"nodeSelector": {"gen": "5"}}),
    );
    assert_eq!(
        unschedulable(&s, "sel", "on-ssd"),
        "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
         1 node(s) had untolerated taint {gpu: true}, 1 node(s) were unschedulable. \
         preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );
    s.ok(&["uncordon", "ssd"]);
    assert_eq!(bound(&s, "sel", "on-ssd"), "ssd");
}

#[test]
fn retried_when_a_node_appears_and_stale_leases_are_avoided() {
    let s = start("retry");
    ns(&s, "r");
    pod(&s, "r", "early", json!({}), json!({}));
    assert_eq!(
        unschedulable(&s, "r", "early"),
        "no nodes available to schedule pods"
    );
    // A node whose Lease lapsed long ago is treated as unreachable.
    scheduler_support::node_with(
        &s,
        "stale",
        "4",
        json!({}),
        json!([]),
        json!({"leaseRenew": "2020-01-01T00:00:00.000000Z"}),
    );
    let msg = unschedulable_with(&s, "r", "early", "unreachable");
    assert_eq!(
        msg,
        "0/1 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }. \
         preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
    );
    // The kubelet comes back (Lease renewed, Ready reported): the waiting pod goes there.
    lease(&s, "stale", &scheduler_support::now(), 40);
    node(&s, "stale", "4", json!({}), json!([]));
    assert_eq!(bound(&s, "r", "early"), "stale");
    // A node that appears takes a waiting pod too.
    pod(
        &s,
        "r",
        "needs-new",
        json!({}),
        json!({"nodeSelector": {"pool": "new"}}),
    );
    unschedulable(&s, "r", "needs-new");
    node(&s, "fresh", "4", json!({"pool": "new"}), json!([]));
    assert_eq!(bound(&s, "r", "needs-new"), "fresh");
    // Pods for another scheduler are left alone.
    pod(
        &s,
        "r",
        "other",
        json!({}),
        json!({"schedulerName": "my-scheduler"}),
    );
    pod(&s, "r", "after", json!({}), json!({}));
    bound(&s, "r", "after");
    let p = get(&s, "r", "other");
    assert!(p.pointer("/spec/nodeName").is_none(), "{p}");
    assert!(events(&s, "r", "other").is_empty());
}

#[test]
fn pod_affinity_anti_affinity_and_topology_spread() {
    let s = start("affinity");
    node(
        &s,
        "a1",
        "8",
        json!({"topology.kubernetes.io/zone": "a"}),
        json!([]),
    );
    node(
        &s,
        "a2",
        "8",
        json!({"topology.kubernetes.io/zone": "a"}),
        json!([]),
    );
    node(
        &s,
        "b1",
        "8",
        json!({"topology.kubernetes.io/zone": "b"}),
        json!([]),
    );
    node(&s, "nozone", "8", json!({}), json!([]));
    ns(&s, "aff");
    let anti = json!({"affinity": {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "Exists"}]}]}},
        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}});
    // Two zones: two db pods, the third waits. The db pods' anti-affinity is symmetric,
    // so it is the existing pods' rule that rejects (kube checks that one first).
    pod(&s, "aff", "db-0", json!({"app": "db"}), anti.clone());
    pod(&s, "aff", "db-1", json!({"app": "db"}), anti.clone());
    let z0 = bound(&s, "aff", "db-0");
    let z1 = bound(&s, "aff", "db-1");
    let zone = |n: &str| match n {
        "a1" | "a2" => "a",
        "b1" => "b",
        _ => "none",
    };
    assert_ne!(zone(&z0), zone(&z1), "{z0} {z1}");
    assert_ne!(zone(&z0), "none");
    pod(&s, "aff", "db-2", json!({"app": "db"}), anti);
    assert_eq!(
        unschedulable(&s, "aff", "db-2"),
        "0/4 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
         3 node(s) didn't satisfy existing pods anti-affinity rules. preemption: 0/4 nodes are available: \
         1 Preemption is not helpful for scheduling, 3 No preemption victims found for incoming pod."
    );

    // Required affinity: next to a pod of the selected kind.
    pod(
        &s,
        "aff",
        "cache",
        json!({"app": "cache"}),
        json!({"nodeSelector": {"topology.kubernetes.io/zone": "b"}}),
    );
    assert_eq!(bound(&s, "aff", "cache"), "b1");
    pod(
        &s,
        "aff",
        "web",
        json!({}),
        json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
    );
    assert_eq!(bound(&s, "aff", "web"), "b1");
    pod(
        &s,
        "aff",
        "lonely",
        json!({}),
        json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "nothing"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
    );
    assert!(
        unschedulable(&s, "aff", "lonely").contains("4 node(s) didn't match pod affinity rules")
    );

    // Existing pods' anti-affinity keeps matching pods out of their zone.
    pod(
        &s,
        "aff",
        "guard",
        json!({}),
        json!({"nodeSelector": {"kubernetes.io/hostname": "nozone"},
        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"role": "intruder"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
    );
    assert_eq!(bound(&s, "aff", "guard"), "nozone");
    pod(
        &s,
        "aff",
        "intruder",
        json!({"role": "intruder"}),
        json!({"nodeSelector": {"kubernetes.io/hostname": "nozone"}}),
    );
    assert!(
        unschedulable(&s, "aff", "intruder")
            .contains("1 node(s) didn't satisfy existing pods anti-affinity rules")
    );

    // Topology spread over zones, maxSkew 1: zone a has two nodes, b one, yet the pods
    // alternate between zones; nozone (no zone label) never gets one.
    let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread"}}}]});
    let mut per_zone: std::collections::HashMap<&str, i32> = std::collections::HashMap::new();
    for i in 0..6 {
        let name = format!("spread-{i}");
        pod(&s, "aff", &name, json!({"app": "spread"}), spread.clone());
        let n = bound(&s, "aff", &name);
        assert_ne!(n, "nozone");
        *per_zone.entry(zone(&n)).or_insert(0) += 1;
        let (a, b) = (
            per_zone.get("a").copied().unwrap_or(0),
            per_zone.get("b").copied().unwrap_or(0),
        );
        assert!((a - b).abs() <= 1, "skew after {name}: a={a} b={b}");
    }
    assert_eq!(per_zone.get("a"), Some(&3));
    assert_eq!(per_zone.get("b"), Some(&3));
}
