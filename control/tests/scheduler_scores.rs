//! The scheduler's scores against a real `hull server` with fake nodes, through kubectl:
//! each case sets up nodes that are equal but for what one score looks at, so the choice
//! shows that score at work — least allocated, balanced allocation, image locality,
//! preferred node affinity, PreferNoSchedule taints, preferred pod (anti-)affinity, and
//! spreading (ScheduleAnyway constraints and kube's default spreading of a controller's
//! pods).

mod scheduler_support;

use std::collections::HashMap;

use scheduler_support::{bound, node, node_with, ns, pod, start};
use serde_json::json;

#[test]
fn resources_images_and_node_preferences() {
    let s = start("scores");
    ns(&s, "sc");
    // Least allocated (and balanced): 8 CPUs beat 2 for a small pod.
    node(&s, "big", "8", json!({"pool": "size"}), json!([]));
    node(&s, "small", "2", json!({"pool": "size"}), json!([]));
    pod(
        &s,
        "sc",
        "small-pod",
        json!({}),
        json!({"nodeSelector": {"pool": "size"},
        "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}}}),
    );
    assert_eq!(bound(&s, "sc", "small-pod"), "big");
    // Least allocated and balanced allocation together: `lopsided` already runs a pod
    // using most of its memory, so a CPU-heavy pod there would leave it both fuller and
    // unbalanced.
    node(&s, "lopsided", "4", json!({"pool": "bal"}), json!([]));
    node(&s, "even", "4", json!({"pool": "bal"}), json!([]));
    pod(
        &s,
        "sc",
        "mem-hog",
        json!({}),
        json!({"nodeSelector": {"kubernetes.io/hostname": "lopsided"},
        "resources": {"requests": {"cpu": "100m", "memory": "6Gi"}}}),
    );
    assert_eq!(bound(&s, "sc", "mem-hog"), "lopsided");
    pod(
        &s,
        "sc",
        "cpu-pod",
        json!({}),
        json!({"nodeSelector": {"pool": "bal"},
        "resources": {"requests": {"cpu": "2", "memory": "100Mi"}}}),
    );
    assert_eq!(bound(&s, "sc", "cpu-pod"), "even");

    // Image locality: the node that has the (large) image already.
    let image = json!([{"names": ["docker.io/library/app@sha256:1234", "docker.io/library/app:v1"],
        "sizeBytes": 800_000_000i64}]);
    node_with(
        &s,
        "has-image",
        "4",
        json!({"pool": "img"}),
        json!([]),
        json!({"images": image}),
    );
    node(&s, "no-image", "4", json!({"pool": "img"}), json!([]));
    pod(
        &s,
        "sc",
        "image-pod",
        json!({}),
        json!({"nodeSelector": {"pool": "img"}, "image": "app:v1"}),
    );
    assert_eq!(bound(&s, "sc", "image-pod"), "has-image");

    // Preferred node affinity beats everything else being equal.
    node(&s, "plain", "4", json!({"pool": "pref"}), json!([]));
    node(
        &s,
        "fancy",
        "4",
        json!({"pool": "pref", "tier": "gold"}),
        json!([]),
    );
    pod(
        &s,
        "sc",
        "prefers-gold",
        json!({}),
        json!({"nodeSelector": {"pool": "pref"},
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "preference": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold"]}]}}]}}}),
    );
    assert_eq!(bound(&s, "sc", "prefers-gold"), "fancy");

    // PreferNoSchedule: avoided, not forbidden.
    node(
        &s,
        "soft-tainted",
        "4",
        json!({"pool": "soft"}),
        json!([{"key": "flaky", "value": "yes", "effect": "PreferNoSchedule"}]),
    );
    node(&s, "clean", "4", json!({"pool": "soft"}), json!([]));
    pod(
        &s,
        "sc",
        "avoids-taint",
        json!({}),
        json!({"nodeSelector": {"pool": "soft"}}),
    );
    assert_eq!(bound(&s, "sc", "avoids-taint"), "clean");
    pod(
        &s,
        "sc",
        "only-tainted",
        json!({}),
        json!({"nodeSelector": {"kubernetes.io/hostname": "soft-tainted"}}),
    );
    assert_eq!(bound(&s, "sc", "only-tainted"), "soft-tainted");
}

#[test]
fn preferred_pod_affinity_and_spreading() {
    let s = start("spread");
    ns(&s, "sp");
    for n in ["s1", "s2", "s3"] {
        node(&s, n, "8", json!({"pool": "spread"}), json!([]));
    }
    // Preferred affinity: next to the cache pod; preferred anti-affinity: away from it.
    pod(
        &s,
        "sp",
        "cache",
        json!({"app": "cache"}),
        json!({"nodeSelector": {"kubernetes.io/hostname": "s2"}}),
    );
    assert_eq!(bound(&s, "sp", "cache"), "s2");
    let term = json!({"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"});
    pod(
        &s,
        "sp",
        "near",
        json!({}),
        json!({"nodeSelector": {"pool": "spread"},
        "affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": term}]}}}),
    );
    assert_eq!(bound(&s, "sp", "near"), "s2");
    for i in 0..2 {
        let name = format!("far-{i}");
        pod(
            &s,
            "sp",
            &name,
            json!({}),
            json!({"nodeSelector": {"pool": "spread"},
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term}]}}}),
        );
        assert_ne!(bound(&s, "sp", &name), "s2");
    }

    // ScheduleAnyway spread by hostname: six pods, two per node, whatever else is there.
    let spread = json!({"nodeSelector": {"pool": "spread"}, "topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
         "labelSelector": {"matchLabels": {"app": "soft"}}}]});
    let mut per_node: HashMap<String, i32> = HashMap::new();
    for i in 0..6 {
        let name = format!("soft-{i}");
        pod(&s, "sp", &name, json!({"app": "soft"}), spread.clone());
        *per_node.entry(bound(&s, "sp", &name)).or_insert(0) += 1;
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(per_node.values().all(|n| *n == 2), "{per_node:?}");

    // Default spreading: a ReplicaSet's pods (one controller owner) spread over the nodes
    // even though the nodes differ in load.
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web", "namespace": "sp"},
        "spec": {"replicas": 6, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"nodeSelector": {"pool": "spread"}, "containers": [{"name": "c", "image": "busybox"}]}}}});
    scheduler_support::apply(&s, &rs);
    let t = std::time::Instant::now();
    let nodes = loop {
        let out = s.ok(&[
            "get",
            "pods",
            "-n",
            "sp",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}",
        ]);
        let nodes: Vec<String> = out
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        if nodes.len() == 6 {
            break nodes;
        }
        assert!(
            t.elapsed() < scheduler_support::LIMIT,
            "ReplicaSet pods not all bound: {nodes:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    let mut per_node: HashMap<String, i32> = HashMap::new();
    for n in nodes {
        *per_node.entry(n).or_insert(0) += 1;
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(per_node.values().all(|n| *n == 2), "{per_node:?}");
}
