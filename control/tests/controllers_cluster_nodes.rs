//! Node lifecycle against a real `hull server` with a short grace period: a node whose
//! Lease stops being renewed goes Unknown, is tainted, its pods go not-Ready and are
//! evicted per their tolerations; it comes back clean; cordon taints it.

mod controllers_cluster_support;

use std::time::Duration;

use controllers_cluster_support::Cluster;

fn bound_pod(name: &str, node: &str, tolerations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 0\n  tolerations: [{tolerations}]\n  containers: [{{name: c, image: busybox}}]\n"
    )
}

#[test]
fn silent_node_is_tainted_and_its_pods_evicted_per_toleration() {
    let c = Cluster::start("nodes", |o| {
        o.node_monitor_grace_period = Duration::from_secs(3);
    });
    let node = format!("silent-{}", std::process::id());
    c.node(&node);
    c.renew(&node);
    let ns = format!("nl-{}", std::process::id());
    c.ok(&["create", "namespace", &ns]);
    let quick = "{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}";
    c.ok_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&bound_pod("quick", &node, quick)),
    );
    // The default tolerations admission adds: 300 s.
    c.ok_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&bound_pod("slow", &node, "")),
    );
    let forever = "{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute}";
    c.ok_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&bound_pod("forever", &node, forever)),
    );
    for p in ["quick", "slow", "forever"] {
        c.ok(&["patch", "pod", p, "-n", &ns, "--subresource=status", "--type=merge", "-p",
            r#"{"status":{"phase":"Running","podIP":"10.244.1.5","conditions":[{"type":"Ready","status":"True"}]}}"#]);
    }
    let taints = [
        "get",
        "node",
        &node,
        "-o",
        "jsonpath={range .spec.taints[*]}{.key}:{.effect} {end}",
    ];
    assert_eq!(c.get(&taints), "", "a live node has no lifecycle taints");

    // Silence: Unknown conditions, unreachable taints, an Event.
    let conds = c.wait_for(
        "node Unknown",
        &[
            "get",
            "node",
            &node,
            "-o",
            "jsonpath={range .status.conditions[*]}{.type}={.status}/{.reason} {end}",
        ],
        |o| o.contains("Ready=Unknown"),
    );
    assert!(conds.contains("Ready=Unknown/NodeStatusUnknown"), "{conds}");
    let t = c.wait_for("unreachable taints", &taints, |o| {
        o.contains("unreachable:NoExecute")
    });
    assert!(
        t.contains("node.kubernetes.io/unreachable:NoSchedule"),
        "{t}"
    );
    c.wait_for(
        "NodeNotReady event",
        &[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={node}"),
            "-o",
            "jsonpath={.items[*].reason}",
        ],
        |o| o.contains("NodeNotReady"),
    );
    assert_eq!(
        c.get(&[
            "get",
            "nodes",
            &node,
            "--no-headers",
            "-o",
            "custom-columns=S:.status.conditions[?(@.type==\"Ready\")].status"
        ]),
        "Unknown"
    );

    // quick tolerated 2 s; slow (300 s) and forever stay, not Ready.
    c.wait_for(
        "quick evicted",
        &["get", "pods", "-n", &ns, "-o", "name"],
        |o| !o.contains("pod/quick"),
    );
    c.wait_for(
        "TaintManagerEviction event",
        &[
            "get",
            "events",
            "-n",
            &ns,
            "--field-selector",
            "involvedObject.name=quick",
            "-o",
            "jsonpath={.items[*].reason}",
        ],
        |o| o.contains("TaintManagerEviction"),
    );
    for p in ["slow", "forever"] {
        c.wait_for(
            "pod not Ready",
            &[
                "get",
                "pod",
                p,
                "-n",
                &ns,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
            |o| o == "False",
        );
        assert_eq!(
            c.get(&[
                "get",
                "pod",
                p,
                "-n",
                &ns,
                "-o",
                "jsonpath={.metadata.deletionTimestamp}"
            ]),
            "",
            "{p} is not evicted"
        );
    }

    // An untolerated NoExecute taint evicts at once.
    c.ok(&["taint", "node", &node, "dedicated=x:NoExecute"]);
    c.wait_for(
        "all evicted",
        &["get", "pods", "-n", &ns, "-o", "name"],
        |o| o.is_empty(),
    );
    c.ok(&["taint", "node", &node, "dedicated=x:NoExecute-"]);

    // Back: the kubelet renews and posts Ready; the taints go.
    let _alive = c.renewer(&node);
    c.ok(&["patch", "node", &node, "--subresource=status", "--type=merge", "-p",
        &format!(r#"{{"status":{{"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","lastHeartbeatTime":"{}"}}]}}}}"#, controllers_cluster_support::now())]);
    c.wait_for("taints removed", &taints, |o| o.is_empty());

    // Cordon and uncordon.
    c.ok(&["cordon", &node]);
    c.wait_for("unschedulable taint", &taints, |o| {
        o.trim() == "node.kubernetes.io/unschedulable:NoSchedule"
    });
    c.ok(&["uncordon", &node]);
    c.wait_for("unschedulable taint gone", &taints, |o| o.is_empty());
    assert_eq!(
        c.get(&[
            "get",
            "node",
            &node,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"
        ]),
        "True"
    );
}
