//! Deployments and ReplicaSets against a real `hull server`, through kubectl 1.35:
//! creation, scaling, rolling updates that keep the availability floor at every step,
//! `set image` / `rollout history` / `rollout undo`, pause/resume, Recreate, and
//! ReplicaSet adoption and release. Readiness is simulated by writing pod status.

mod controllers_workloads_support;

use std::time::Duration;

use controllers_workloads_support::{Server, is_ready, name};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);

fn deploy_yaml(name: &str, replicas: i32, strategy: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, annotations: {{kubernetes.io/change-cause: first}}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  strategy: {strategy}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: c, image: {image}}}]}}
"
    )
}

fn rs_of(s: &Server, ns: &str, app: &str) -> Vec<Value> {
    s.items(ns, "rs", &["-l", &format!("app={app}")])
}

fn ready_all(s: &Server, ns: &str, sel: &str) {
    for p in s.live_pods(ns, sel) {
        if !is_ready(&p) {
            s.make_ready(ns, &name(&p));
        }
    }
}

/// `kubectl rollout status`, with the deployment's ReplicaSets and pods in the panic
/// message when it times out (a rollout stuck under load is otherwise a one-line mystery).
fn rollout_status(s: &Server, ns: &str, d: &str) {
    let out = s.kubectl(&[
        "rollout",
        "status",
        &format!("deploy/{d}"),
        "-n",
        ns,
        "--timeout=60s",
    ]);
    if out.status.success() {
        return;
    }
    let state = s.kubectl(&["get", "deploy,rs,pods", "-n", ns, "-o", "yaml"]);
    panic!(
        "rollout status {ns}/{d}: {}{}\n--- state ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&state.stdout)
    );
}

fn deploy_status(s: &Server, ns: &str, d: &str, field: &str) -> i64 {
    s.get(ns, "deploy", d)["status"][field]
        .as_i64()
        .unwrap_or(0)
}

#[test]
fn deployment_rollout_scale_undo_pause() {
    let s = Server::start("deploy");
    let ns = format!("wl-deploy-{}", std::process::id());
    s.ok(&["create", "ns", &ns]);
    s.apply(
        &ns,
        &deploy_yaml(
            "web",
            3,
            "{type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 1}}",
            "busybox:1.36",
        ),
    );

    // Deployment of 3 → one ReplicaSet `web-<hash>` → 3 pods `web-<hash>-<5>`.
    s.wait(LIMIT, "3 pods of web", || {
        s.live_pods(&ns, "app=web").len() == 3
    });
    let rs = rs_of(&s, &ns, "web");
    assert_eq!(rs.len(), 1, "one ReplicaSet: {rs:?}");
    let rs_name = name(&rs[0]);
    let hash = rs[0]["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .expect("pod-template-hash label on the ReplicaSet")
        .to_string();
    assert_eq!(rs_name, format!("web-{hash}"));
    assert_eq!(
        rs[0]["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    assert_eq!(
        rs[0]["metadata"]["annotations"]["kubernetes.io/change-cause"],
        "first"
    );
    let owner = &rs[0]["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Deployment");
    assert_eq!(owner["controller"], true);
    assert_eq!(owner["blockOwnerDeletion"], true);
    for p in s.live_pods(&ns, "app=web") {
        let n = name(&p);
        let suffix = n.strip_prefix(&format!("{rs_name}-")).unwrap_or_default();
        assert_eq!(suffix.len(), 5, "pod name {n} is <rs>-<5 random>");
        assert_eq!(p["metadata"]["labels"]["pod-template-hash"], hash.as_str());
        assert_eq!(
            p["metadata"]["ownerReferences"][0]["name"],
            rs_name.as_str()
        );
        assert_eq!(p["metadata"]["ownerReferences"][0]["controller"], true);
    }

    // Ready pods → available; rollout status returns.
    ready_all(&s, &ns, "app=web");
    rollout_status(&s, &ns, "web");
    let d = s.get(&ns, "deploy", "web");
    assert_eq!(d["status"]["availableReplicas"], 3);
    assert_eq!(d["status"]["updatedReplicas"], 3);
    let cond = |d: &Value, t: &str| {
        d["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == t).cloned())
            .unwrap_or_default()
    };
    assert_eq!(cond(&d, "Available")["reason"], "MinimumReplicasAvailable");
    assert_eq!(cond(&d, "Progressing")["reason"], "NewReplicaSetAvailable");
    let table = s.ok(&["get", "deploy", "web", "-n", &ns]);
    assert!(table.contains("3/3"), "{table}");

    // Scale up and down with kubectl scale.
    s.ok(&["scale", "deploy/web", "-n", &ns, "--replicas=5"]);
    s.wait(LIMIT, "5 pods", || s.live_pods(&ns, "app=web").len() == 5);
    ready_all(&s, &ns, "app=web");
    s.ok(&["scale", "deploy/web", "-n", &ns, "--replicas=2"]);
    s.wait(LIMIT, "2 pods", || s.live_pods(&ns, "app=web").len() == 2);
    s.wait(LIMIT, "status 2 available", || {
        deploy_status(&s, &ns, "web", "availableReplicas") == 2
            && deploy_status(&s, &ns, "web", "replicas") == 2
    });
    s.ok(&["scale", "deploy/web", "-n", &ns, "--replicas=4"]);
    s.wait(LIMIT, "4 pods", || s.live_pods(&ns, "app=web").len() == 4);
    ready_all(&s, &ns, "app=web");
    rollout_status(&s, &ns, "web");

    // set image: a second ReplicaSet; at every step at least 4 - 1 pods are available
    // and never more than 4 + 1 exist.
    s.ok(&["set", "image", "deploy/web", "-n", &ns, "c=busybox:1.37"]);
    s.ok(&[
        "annotate",
        "deploy/web",
        "-n",
        &ns,
        "--overwrite",
        "kubernetes.io/change-cause=second",
    ]);
    let mut steps = 0;
    s.wait(Duration::from_secs(120), "rolling update to finish", || {
        let pods = s.live_pods(&ns, "app=web");
        let ready = pods.iter().filter(|p| is_ready(p)).count();
        assert!(
            ready >= 3,
            "availability fell to {ready} during the rollout"
        );
        assert!(
            pods.len() <= 5,
            "{} pods exceed replicas + maxSurge",
            pods.len()
        );
        let new: Vec<&Value> = pods
            .iter()
            .filter(|p| p["spec"]["containers"][0]["image"] == "busybox:1.37")
            .collect();
        if let Some(p) = new.iter().find(|p| !is_ready(p)) {
            s.make_ready(&ns, &name(p));
            steps += 1;
        }
        new.len() == 4
            && pods.len() == 4
            && new.iter().all(|p| is_ready(p))
            && deploy_status(&s, &ns, "web", "updatedReplicas") == 4
            && deploy_status(&s, &ns, "web", "availableReplicas") == 4
    });
    assert!(steps >= 4, "new pods came up over {steps} steps");
    rollout_status(&s, &ns, "web");
    assert_eq!(rs_of(&s, &ns, "web").len(), 2);

    // History and undo (client-side in kubectl 1.35: it patches the old template back).
    let hist = s.ok(&["rollout", "history", "deploy/web", "-n", &ns]);
    assert!(
        hist.contains("1 ") && hist.contains("2 ") && hist.contains("second"),
        "{hist}"
    );
    s.ok(&["rollout", "undo", "deploy/web", "-n", &ns]);
    // Ready what exists, then look again: a pod the ReplicaSet makes after `ready_all`
    // must be readied on the next round, not waited for by `rollout status`.
    s.wait(LIMIT, "undo to restore ready busybox:1.36 pods", || {
        ready_all(&s, &ns, "app=web");
        let pods = s.live_pods(&ns, "app=web");
        pods.len() == 4
            && pods
                .iter()
                .all(|p| p["spec"]["containers"][0]["image"] == "busybox:1.36" && is_ready(p))
    });
    let image = s.ok(&[
        "get",
        "deploy",
        "web",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(image, "busybox:1.36");
    // The first ReplicaSet was reused and is now revision 3.
    let rs = rs_of(&s, &ns, "web");
    assert_eq!(rs.len(), 2);
    let first = rs
        .iter()
        .find(|r| name(r) == rs_name)
        .expect("first RS kept");
    assert_eq!(
        first["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    assert_eq!(
        first["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"],
        "1"
    );
    rollout_status(&s, &ns, "web");

    // Pause: template changes make no ReplicaSet until resumed.
    s.ok(&["rollout", "pause", "deploy/web", "-n", &ns]);
    s.ok(&["set", "image", "deploy/web", "-n", &ns, "c=busybox:1.38"]);
    s.wait(LIMIT, "paused condition", || {
        let d = s.get(&ns, "deploy", "web");
        d["status"]["observedGeneration"] == d["metadata"]["generation"]
            && cond(&d, "Progressing")["reason"] == "DeploymentPaused"
    });
    assert_eq!(rs_of(&s, &ns, "web").len(), 2, "paused deployment rolled");
    s.ok(&["rollout", "resume", "deploy/web", "-n", &ns]);
    s.wait(LIMIT, "resumed rollout", || {
        rs_of(&s, &ns, "web").len() == 3
    });

    // Restart: a new template (restartedAt) and so a new ReplicaSet.
    s.wait(Duration::from_secs(120), "1.38 rollout", || {
        ready_all(&s, &ns, "app=web");
        deploy_status(&s, &ns, "web", "updatedReplicas") == 4
            && deploy_status(&s, &ns, "web", "availableReplicas") == 4
            && deploy_status(&s, &ns, "web", "replicas") == 4
    });
    s.ok(&["rollout", "restart", "deploy/web", "-n", &ns]);
    s.wait(LIMIT, "restart makes a ReplicaSet", || {
        rs_of(&s, &ns, "web").len() == 4
    });

    // Events say what the controller did.
    let events = s.ok(&[
        "get",
        "events",
        "-n",
        &ns,
        "--field-selector",
        "involvedObject.kind=Deployment",
    ]);
    assert!(events.contains("ScalingReplicaSet"), "{events}");
}

#[test]
fn recreate_strategy_and_history_limit() {
    let s = Server::start("recreate");
    let ns = format!("wl-recreate-{}", std::process::id());
    s.ok(&["create", "ns", &ns]);
    let y = deploy_yaml("rc", 3, "{type: Recreate}", "busybox:1.36").replace(
        "  replicas: 3\n",
        "  replicas: 3\n  revisionHistoryLimit: 1\n",
    );
    s.apply(&ns, &y);
    s.wait(LIMIT, "3 pods", || s.live_pods(&ns, "app=rc").len() == 3);
    ready_all(&s, &ns, "app=rc");
    s.ok(&["rollout", "status", "deploy/rc", "-n", &ns, "--timeout=60s"]);
    s.ok(&["set", "image", "deploy/rc", "-n", &ns, "c=busybox:1.37"]);
    // Recreate: old and new pods never coexist.
    s.wait(LIMIT, "recreated pods", || {
        let pods = s.live_pods(&ns, "app=rc");
        let images: std::collections::BTreeSet<String> = pods
            .iter()
            .map(|p| {
                p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        assert!(images.len() <= 1, "old and new pods together: {images:?}");
        pods.len() == 3 && images.contains("busybox:1.37")
    });
    ready_all(&s, &ns, "app=rc");
    s.ok(&["rollout", "status", "deploy/rc", "-n", &ns, "--timeout=60s"]);
    s.ok(&["set", "image", "deploy/rc", "-n", &ns, "c=busybox:1.38"]);
    s.wait(LIMIT, "third template", || {
        ready_all(&s, &ns, "app=rc");
        deploy_status(&s, &ns, "rc", "updatedReplicas") == 3
            && deploy_status(&s, &ns, "rc", "availableReplicas") == 3
    });
    // revisionHistoryLimit 1: the new set and one old one remain.
    s.wait(LIMIT, "history cleanup", || rs_of(&s, &ns, "rc").len() == 2);
}

#[test]
fn replicaset_adopts_releases_and_replaces() {
    let s = Server::start("rs");
    let ns = format!("wl-rs-{}", std::process::id());
    s.ok(&["create", "ns", &ns]);
    // An orphan that matches is adopted instead of a new pod being made.
    s.ok(&[
        "run",
        "orphan",
        "-n",
        &ns,
        "--image=busybox",
        "--labels=app=front",
        "--restart=Never",
    ]);
    s.apply(
        &ns,
        "apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: front}
spec:
  replicas: 2
  selector: {matchLabels: {app: front}}
  template:
    metadata: {labels: {app: front}}
    spec: {containers: [{name: c, image: busybox}]}
",
    );
    s.wait(LIMIT, "orphan adopted", || {
        s.get(&ns, "pod", "orphan")["metadata"]["ownerReferences"][0]["name"] == "front"
    });
    s.wait(LIMIT, "2 pods", || s.live_pods(&ns, "app=front").len() == 2);
    // Relabelled pod is released and replaced.
    s.ok(&[
        "label",
        "pod",
        "orphan",
        "-n",
        &ns,
        "--overwrite",
        "app=other",
    ]);
    s.wait(LIMIT, "release", || {
        s.get(&ns, "pod", "orphan")["metadata"]["ownerReferences"].is_null()
    });
    s.wait(LIMIT, "replacement", || {
        s.live_pods(&ns, "app=front").len() == 2
    });
    // A deleted pod is replaced; status counts follow readiness.
    let victim = name(&s.live_pods(&ns, "app=front")[0]);
    s.ok(&["delete", "pod", &victim, "-n", &ns, "--wait=false"]);
    s.wait(LIMIT, "pod replaced", || {
        let pods = s.live_pods(&ns, "app=front");
        pods.len() == 2 && pods.iter().all(|p| name(p) != victim)
    });
    ready_all(&s, &ns, "app=front");
    s.wait(LIMIT, "rs status", || {
        let r = s.get(&ns, "rs", "front");
        r["status"]["readyReplicas"] == 2
            && r["status"]["availableReplicas"] == 2
            && r["status"]["fullyLabeledReplicas"] == 2
            && r["status"]["observedGeneration"] == r["metadata"]["generation"]
    });
    // Scale down prefers the not-ready pod.
    s.ok(&["scale", "rs/front", "-n", &ns, "--replicas=3"]);
    s.wait(LIMIT, "3 pods", || s.live_pods(&ns, "app=front").len() == 3);
    let fresh: Vec<String> = s
        .live_pods(&ns, "app=front")
        .iter()
        .filter(|p| !is_ready(p))
        .map(name)
        .collect();
    assert_eq!(fresh.len(), 1);
    s.ok(&["scale", "rs/front", "-n", &ns, "--replicas=2"]);
    s.wait(LIMIT, "back to 2", || {
        s.live_pods(&ns, "app=front").len() == 2
    });
    assert!(
        s.live_pods(&ns, "app=front").iter().all(is_ready),
        "a ready pod was deleted first"
    );

    // ReplicationController: same loop, map selector.
    s.apply(
        &ns,
        "apiVersion: v1
kind: ReplicationController
metadata: {name: legacy}
spec:
  replicas: 2
  selector: {app: legacy}
  template:
    metadata: {labels: {app: legacy}}
    spec: {containers: [{name: c, image: busybox}]}
",
    );
    s.wait(LIMIT, "rc pods", || {
        s.live_pods(&ns, "app=legacy").len() == 2
    });
    let rc = s.get(&ns, "rc", "legacy");
    s.wait(LIMIT, "rc status", || {
        s.get(&ns, "rc", "legacy")["status"]["replicas"] == 2
    });
    assert_eq!(rc["kind"], "ReplicationController");
}
