//! DaemonSets and StatefulSets against a real `hull server` with fake nodes, through
//! kubectl 1.35: a DaemonSet on 3 nodes then a 4th joins (a tainted one only with a
//! toleration, a non-matching one never), its rolling update within maxUnavailable;
//! a StatefulSet created in order `web-0, web-1, web-2`, PVCs from its claim templates,
//! scale-down from the highest ordinal, and a partitioned rolling update.

mod controllers_workloads_support;

use std::time::Duration;

use controllers_workloads_support::{Server, is_ready, name};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);

fn node_of(p: &Value) -> String {
    p["spec"]["nodeName"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Plays the kubelet for pods being deleted: finishes their deletion.
fn finish_deletions(s: &Server, ns: &str) {
    for p in s.items(ns, "pods", &[]) {
        if !p["metadata"]["deletionTimestamp"].is_null() {
            let _ = s.kubectl(&[
                "delete",
                "pod",
                &name(&p),
                "-n",
                ns,
                "--force",
                "--grace-period=0",
                "--wait=false",
            ]);
        }
    }
}

#[test]
fn daemonset_follows_nodes_and_rolls() {
    let s = Server::start("ds");
    let ns = format!("wl-ds-{}", std::process::id());
    let pid = std::process::id();
    s.ok(&["create", "ns", &ns]);
    let n = |i: u32| format!("ds{pid}-n{i}");
    for i in 1..=3 {
        s.node(&n(i), ", role: worker", "");
    }
    s.apply(
        &ns,
        "apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  updateStrategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 1}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      nodeSelector: {role: worker}
      containers: [{name: c, image: busybox:1.36}]
",
    );
    let mine = |s: &Server| -> Vec<String> {
        let mut v: Vec<String> = s
            .live_pods(&ns, "app=agent")
            .iter()
            .map(node_of)
            .filter(|x| x.starts_with(&format!("ds{pid}-")))
            .collect();
        v.sort();
        v
    };
    s.wait(LIMIT, "one pod per node", || {
        mine(&s) == vec![n(1), n(2), n(3)]
    });
    let p = &s.live_pods(&ns, "app=agent")[0];
    let tolerations = p["spec"]["tolerations"].to_string();
    assert!(
        tolerations.contains("node.kubernetes.io/unschedulable"),
        "{tolerations}"
    );
    assert!(
        p["spec"]["affinity"]["nodeAffinity"]
            .to_string()
            .contains("metadata.name")
    );
    assert!(p["metadata"]["labels"]["controller-revision-hash"].is_string());

    // A 4th worker joins; a node without the label and a tainted worker get nothing.
    s.node(&n(4), ", role: worker", "");
    s.node(&n(5), "", "");
    s.node(
        &n(6),
        ", role: worker",
        "{key: dedicated, value: db, effect: NoSchedule}",
    );
    // A cordoned worker still gets its daemon (DaemonSet pods tolerate unschedulable).
    s.node(&n(7), ", role: worker", "");
    s.ok(&["cordon", &n(7)]);
    s.wait(LIMIT, "pods on the 4th and the cordoned node", || {
        mine(&s) == vec![n(1), n(2), n(3), n(4), n(7)]
    });
    for p in s.live_pods(&ns, "app=agent") {
        s.make_ready(&ns, &name(&p));
    }
    s.wait(LIMIT, "ds status", || {
        let d = s.get(&ns, "ds", "agent");
        d["status"]["desiredNumberScheduled"] == 5
            && d["status"]["numberReady"] == 5
            && d["status"]["numberAvailable"] == 5
    });
    s.ok(&["rollout", "status", "ds/agent", "-n", &ns, "--timeout=30s"]);

    // Rolling update: never more than 1 node without an available daemon.
    s.ok(&["set", "image", "ds/agent", "-n", &ns, "c=busybox:1.37"]);
    s.wait(Duration::from_secs(120), "daemonset rollout", || {
        finish_deletions(&s, &ns);
        let pods = s.live_pods(&ns, "app=agent");
        let ready_nodes = pods.iter().filter(|p| is_ready(p)).count();
        assert!(
            ready_nodes >= 4,
            "only {ready_nodes} of 5 nodes had a ready daemon"
        );
        for p in &pods {
            if !is_ready(p) {
                s.make_ready(&ns, &name(p));
            }
        }
        pods.len() == 5
            && pods
                .iter()
                .all(|p| p["spec"]["containers"][0]["image"] == "busybox:1.37" && is_ready(p))
    });
    s.ok(&["rollout", "status", "ds/agent", "-n", &ns, "--timeout=30s"]);
    let hist = s.ok(&["rollout", "history", "ds/agent", "-n", &ns]);
    assert!(hist.contains('1') && hist.contains('2'), "{hist}");

    // A node that loses the label loses its daemon.
    s.ok(&["label", "node", &n(4), "role-"]);
    s.wait(LIMIT, "daemon leaves the unlabelled node", || {
        finish_deletions(&s, &ns);
        mine(&s) == vec![n(1), n(2), n(3), n(7)]
    });
    for i in 1..=7 {
        let _ = s.kubectl(&["delete", "node", &n(i), "--wait=false"]);
    }
}

#[test]
fn statefulset_order_claims_and_partition() {
    let s = Server::start("sts");
    let ns = format!("wl-sts-{}", std::process::id());
    s.ok(&["create", "ns", &ns]);
    s.apply(
        &ns,
        "apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: busybox:1.36, volumeMounts: [{name: www, mountPath: /www}]}]}
  volumeClaimTemplates:
  - metadata: {name: www}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
",
    );
    // OrderedReady: web-N appears only after web-(N-1) is Running and Ready.
    let names = |s: &Server| -> Vec<String> {
        let mut v: Vec<String> = s.live_pods(&ns, "app=web").iter().map(name).collect();
        v.sort();
        v
    };
    for i in 0..3 {
        let want: Vec<String> = (0..=i).map(|k| format!("web-{k}")).collect();
        s.wait(LIMIT, &format!("web-{i}"), || names(&s) == want);
        let p = s.get(&ns, "pod", &format!("web-{i}"));
        assert_eq!(p["spec"]["hostname"], format!("web-{i}"));
        assert_eq!(p["spec"]["subdomain"], "web");
        assert_eq!(
            p["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"],
            format!("web-{i}")
        );
        let vol = p["spec"]["volumes"].to_string();
        assert!(vol.contains(&format!("www-web-{i}")), "{vol}");
        s.ok(&["get", "pvc", &format!("www-web-{i}"), "-n", &ns]);
        // Not ready yet: the next one must not exist.
        assert_eq!(names(&s), want, "created before web-{i} was ready");
        s.make_ready(&ns, &format!("web-{i}"));
    }
    s.ok(&["rollout", "status", "sts/web", "-n", &ns, "--timeout=30s"]);
    let st = s.get(&ns, "sts", "web");
    assert_eq!(st["status"]["readyReplicas"], 3);
    assert_eq!(
        st["status"]["currentRevision"],
        st["status"]["updateRevision"]
    );

    // Partitioned rolling update: only ordinals ≥ 1 move, highest first.
    s.ok(&[
        "patch",
        "sts",
        "web",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"updateStrategy":{"type":"RollingUpdate","rollingUpdate":{"partition":1}}}}"#,
    ]);
    s.ok(&["set", "image", "sts/web", "-n", &ns, "c=busybox:1.37"]);
    let image = |s: &Server, i: i32| {
        s.get(&ns, "pod", &format!("web-{i}"))["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    s.wait(LIMIT, "web-2 updated first", || {
        s.kubectl(&["get", "pod", "web-2", "-n", &ns])
            .status
            .success()
            && image(&s, 2) == "busybox:1.37"
    });
    assert_eq!(
        image(&s, 1),
        "busybox:1.36",
        "web-1 updated before web-2 was ready"
    );
    s.make_ready(&ns, "web-2");
    s.wait(LIMIT, "web-1 updated", || {
        s.kubectl(&["get", "pod", "web-1", "-n", &ns])
            .status
            .success()
            && image(&s, 1) == "busybox:1.37"
    });
    s.make_ready(&ns, "web-1");
    s.wait(LIMIT, "status after partitioned update", || {
        let st = s.get(&ns, "sts", "web");
        st["status"]["updatedReplicas"] == 2 && st["status"]["readyReplicas"] == 3
    });
    assert_eq!(
        image(&s, 0),
        "busybox:1.36",
        "the partition was not respected"
    );
    let st = s.get(&ns, "sts", "web");
    assert_ne!(
        st["status"]["currentRevision"],
        st["status"]["updateRevision"]
    );

    // Scale down: highest ordinal first; PVCs stay.
    s.ok(&["scale", "sts/web", "-n", &ns, "--replicas=1"]);
    s.wait(LIMIT, "scaled to 1", || names(&s) == ["web-0"]);
    s.ok(&["get", "pvc", "www-web-2", "-n", &ns]);
    let events = s.ok(&[
        "get",
        "events",
        "-n",
        &ns,
        "--field-selector",
        "involvedObject.kind=StatefulSet",
    ]);
    assert!(events.contains("delete Pod web-2"), "{events}");
}
