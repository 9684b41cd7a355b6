//! Restarts, probes and termination on one real node (see node_support):
//! CrashLoopBackOff with growing restarts, a liveness failure restarting the container,
//! a readiness failure taking the pod out of Ready, httpGet/tcpSocket probes, Job-like
//! pods ending Succeeded / Failed, preStop before SIGTERM with SIGKILL after the
//! grace period, and the pods' Events (Pulled, Created, Started, Unhealthy, Killing,
//! BackOff) as `kubectl describe pod` lists them.

mod node_support;

use std::time::Instant;

use node_support::*;
use serde_json::json;

/// Waits until the Events about pod `name` include every `reason` (with its type and
/// the container's field path); returns them.
fn wait_events(
    c: &Cluster,
    name: &str,
    want: &[(&str, &str)],
) -> Vec<k8s_openapi::api::core::v1::Event> {
    use k8s_openapi::api::core::v1::Event;
    let api: kube::Api<Event> = kube::Api::namespaced(c.client.clone(), "default");
    wait_for(&format!("events {want:?} of pod {name}"), 60, || {
        let evs: Vec<Event> =
            c.rt.block_on(api.list(&Default::default()))
                .ok()?
                .items
                .into_iter()
                .filter(|e| e.involved_object.name.as_deref() == Some(name))
                .collect();
        let has = |(ty, reason): &(&str, &str)| {
            evs.iter().any(|e| {
                e.reason.as_deref() == Some(*reason)
                    && e.type_.as_deref() == Some(*ty)
                    && e.involved_object.kind.as_deref() == Some("Pod")
                    && e.involved_object.field_path.as_deref() == Some("spec.containers{c}")
                    && e.source.as_ref().and_then(|s| s.component.as_deref()) == Some("kubelet")
            })
        };
        want.iter().all(has).then_some(evs)
    })
}

fn waiting_reason(p: &k8s_openapi::api::core::v1::Pod, c: &str) -> Option<String> {
    cstatus(p, c)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

#[test]
fn restarts_probes_and_termination() {
    let c = Cluster::start("life");
    let img = c.image.clone();
    let sh = |cmd: &str| json!(["sh", "-c", cmd]);

    c.pod(
        "crash",
        json!({"terminationGracePeriodSeconds": 1,
        "containers": [{"name": "c", "image": img, "command": sh("echo boom; exit 3")}]}),
    );
    c.pod("live", json!({"terminationGracePeriodSeconds": 1,
        "containers": [{"name": "c", "image": img,
            "command": sh("touch /tmp/alive; sleep 3; rm /tmp/alive; exec sleep 3600"),
            "livenessProbe": {"exec": {"command": ["test", "-f", "/tmp/alive"]}, "periodSeconds": 1, "failureThreshold": 1}}]}));
    c.pod("ready", json!({"terminationGracePeriodSeconds": 1,
        "containers": [{"name": "c", "image": img,
            "command": sh("touch /tmp/ready; sleep 6; rm /tmp/ready; exec sleep 3600"),
            "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1}}]}));
    c.pod("web", json!({"terminationGracePeriodSeconds": 1,
        "containers": [{"name": "c", "image": img,
            "command": sh("mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"),
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
            "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}));
    c.pod(
        "job-ok",
        json!({"restartPolicy": "Never",
        "containers": [{"name": "c", "image": img, "command": sh("echo done")}]}),
    );
    c.pod(
        "job-bad",
        json!({"restartPolicy": "Never",
        "containers": [{"name": "c", "image": img, "command": sh("exit 2")}]}),
    );
    c.pod(
        "onfail",
        json!({"restartPolicy": "OnFailure", "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "c", "image": img, "command": sh("exit 1")}]}),
    );

    // Job-like pods end in Succeeded / Failed with the exit recorded.
    let p = c.wait_pod("job-ok", "Succeeded", 90, |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
    });
    let t = cstatus(&p, "c")
        .unwrap()
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    assert_eq!(cond(&p, "Ready").as_deref(), Some("False"));
    let p = c.wait_pod("job-bad", "Failed", 90, |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
    });
    let t = cstatus(&p, "c")
        .unwrap()
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (2, Some("Error")));
    assert_eq!(cstatus(&p, "c").unwrap().restart_count, 0);

    // The web pod: Ready through httpGet on a named port, kept alive by tcpSocket.
    let p = c.wait_pod("web", "Ready", 90, |p| {
        cond(p, "Ready").as_deref() == Some("True")
    });
    assert_eq!(cstatus(&p, "c").unwrap().restart_count, 0);

    // Readiness: Ready, then not Ready once the probe fails; never restarted.
    c.wait_pod("ready", "Ready", 90, |p| {
        cond(p, "Ready").as_deref() == Some("True")
    });
    let p = c.wait_pod("ready", "not Ready after the probe fails", 90, |p| {
        cond(p, "Ready").as_deref() == Some("False")
    });
    let cs = cstatus(&p, "c").unwrap();
    assert!(
        !cs.ready && cs.restart_count == 0 && cs.state.as_ref().unwrap().running.is_some(),
        "{cs:?}"
    );
    assert_eq!(cond(&p, "ContainersReady").as_deref(), Some("False"));
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));

    // Liveness: the container is killed and restarted.
    let p = c.wait_pod("live", "a liveness restart", 90, |p| {
        cstatus(p, "c").is_some_and(|s| s.restart_count >= 1)
    });
    assert!(
        cstatus(&p, "c")
            .unwrap()
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .is_some()
    );
    let evs = wait_events(
        &c,
        "live",
        &[
            ("Normal", "Pulled"),
            ("Normal", "Created"),
            ("Normal", "Started"),
            ("Warning", "Unhealthy"),
            ("Normal", "Killing"),
        ],
    );
    let msgs: Vec<&str> = evs.iter().filter_map(|e| e.message.as_deref()).collect();
    assert!(
        msgs.iter().any(|m| m.starts_with("Liveness probe failed")),
        "{msgs:?}"
    );
    assert!(
        msgs.contains(&"Container c failed liveness probe, will be restarted"),
        "{msgs:?}"
    );
    let started = evs
        .iter()
        .find(|e| e.reason.as_deref() == Some("Started"))
        .unwrap();
    assert_eq!(started.message.as_deref(), Some("Started container c"));

    // Crash: restarts grow, then CrashLoopBackOff with the last exit recorded.
    let p = c.wait_pod("crash", "CrashLoopBackOff with 2 restarts", 90, |p| {
        cstatus(p, "c").is_some_and(|s| s.restart_count >= 2)
            && waiting_reason(p, "c").as_deref() == Some("CrashLoopBackOff")
    });
    let cs = cstatus(&p, "c").unwrap();
    let last = cs
        .last_state
        .as_ref()
        .and_then(|l| l.terminated.as_ref())
        .expect("lastState.terminated");
    assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    let evs = wait_events(&c, "crash", &[("Warning", "BackOff")]);
    assert!(
        evs.iter().any(|e| e.message.as_deref().is_some_and(
            |m| m.starts_with("Back-off restarting failed container c in pod crash_default(")
        )),
        "{evs:?}"
    );
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    assert_eq!(cond(&p, "Ready").as_deref(), Some("False"));
    c.wait_pod("onfail", "OnFailure restarts", 90, |p| {
        cstatus(p, "c").is_some_and(|s| s.restart_count >= 1)
    });

    // preStop runs before SIGTERM; SIGKILL comes after the grace period.
    let dir = c.scratch.path("stopper");
    c.pod("stopper", json!({"terminationGracePeriodSeconds": 3,
        "volumes": [{"name": "h", "hostPath": {"path": dir, "type": "DirectoryOrCreate"}}],
        "containers": [{"name": "c", "image": img, "volumeMounts": [{"name": "h", "mountPath": "/h"}],
            "command": sh("trap 'echo got-term >> /h/log' TERM; while true; do sleep 0.2; done"),
            "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /h/log"]}}}}]}));
    let p = c.wait_pod("stopper", "Ready", 90, |p| {
        cond(p, "Ready").as_deref() == Some("True")
    });
    let uid = p.metadata.uid.clone().unwrap();
    let t = Instant::now();
    c.delete("stopper", None);
    c.wait_gone("stopper", 60);
    assert!(
        t.elapsed().as_secs_f64() >= 3.0,
        "deleted after {:?}: SIGKILL came before the grace period",
        t.elapsed()
    );
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    assert_eq!(
        log.split_whitespace().collect::<Vec<_>>(),
        ["prestop", "got-term"],
        "order: {log:?}"
    );
    assert_eq!(c.sandboxes_of(&uid), 0);

    // Everything deleted: nothing of any pod is left.
    let pods = c.rt.block_on(c.pods().list(&Default::default())).unwrap();
    let uids: Vec<String> = pods
        .items
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    for p in &pods.items {
        c.delete(p.metadata.name.as_deref().unwrap(), None);
    }
    for p in &pods.items {
        c.wait_gone(p.metadata.name.as_deref().unwrap(), 60);
    }
    for u in &uids {
        assert_eq!(c.sandboxes_of(u), 0, "sandbox of {u} left");
        assert!(
            !hull_agent::node::cgroups::exists(&format!("/hull-kubepods/besteffort/pod{u}")),
            "cgroup of {u} left"
        );
    }
    assert!(image_support::mounts_under(&c.agent_data).is_empty());
    assert_eq!(
        std::fs::read_dir(c.agent_data.join("agent/pods"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}
