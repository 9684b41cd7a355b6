//! What the node reports about pods, on one real node (see node_support): termination
//! messages — what a container writes to its terminationMessagePath (the default
//! /dev/termination-log, and a custom path) shows in `state.terminated.message`; with
//! FallbackToLogsOnError a failed container that wrote nothing gets its log's tail;
//! with the default policy it gets nothing — and the `FailedMount` Event of a pod whose
//! volume cannot be set up.

mod node_support;

use node_support::*;
use serde_json::json;

fn message(p: &k8s_openapi::api::core::v1::Pod) -> Option<String> {
    cstatus(p, "c")?
        .state
        .as_ref()?
        .terminated
        .as_ref()?
        .message
        .clone()
}

/// Waits for a Warning Event `reason` about pod `name` (from the kubelet, on the Pod
/// itself); returns its message.
fn wait_warning(c: &Cluster, name: &str, reason: &str) -> String {
    use k8s_openapi::api::core::v1::Event;
    let api: kube::Api<Event> = kube::Api::namespaced(c.client.clone(), "default");
    wait_for(&format!("event {reason} of pod {name}"), 60, || {
        c.rt.block_on(api.list(&Default::default()))
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.involved_object.name.as_deref() == Some(name)
                    && e.involved_object.field_path.is_none()
                    && e.reason.as_deref() == Some(reason)
                    && e.type_.as_deref() == Some("Warning")
                    && e.source.as_ref().and_then(|s| s.component.as_deref()) == Some("kubelet")
            })
            .and_then(|e| e.message)
    })
}

fn done(p: &k8s_openapi::api::core::v1::Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

#[test]
fn termination_messages_and_mount_failures_are_reported() {
    let c = Cluster::start("termmsg");
    let img = c.image.clone();
    let sh = |s: &str| json!(["sh", "-c", s]);
    c.pod(
        "default-path",
        json!({"restartPolicy": "Never",
        "containers": [{"name": "c", "image": img,
            "command": sh("printf 'all done' > /dev/termination-log")}]}),
    );
    c.pod(
        "custom-path",
        json!({"restartPolicy": "Never",
        "containers": [{"name": "c", "image": img,
            "terminationMessagePath": "/tmp/why",
            "command": sh("echo 'bad input' > /tmp/why; exit 4")}]}),
    );
    c.pod(
        "fallback",
        json!({"restartPolicy": "Never",
        "containers": [{"name": "c", "image": img,
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "command": sh("echo first; echo 'it broke' >&2; exit 1")}]}),
    );
    c.pod(
        "no-fallback",
        json!({"restartPolicy": "Never",
        "containers": [{"name": "c", "image": img,
            "command": sh("echo quiet failure; exit 1")}]}),
    );

    c.pod(
        "nomount",
        json!({"terminationGracePeriodSeconds": 1,
        "volumes": [{"name": "cfg", "configMap": {"name": "does-not-exist"}}],
        "containers": [{"name": "c", "image": img, "command": ["sleep", "3600"],
            "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}]}),
    );

    let p = c.wait_pod("default-path", "Succeeded", 90, done);
    assert_eq!(message(&p).as_deref(), Some("all done"));
    let p = c.wait_pod("custom-path", "Failed", 90, done);
    assert_eq!(message(&p).as_deref(), Some("bad input\n"));
    let p = c.wait_pod("fallback", "Failed", 90, done);
    assert_eq!(message(&p).as_deref(), Some("first\nit broke\n"));
    let p = c.wait_pod("no-fallback", "Failed", 90, done);
    assert_eq!(message(&p), None);

    let m = wait_warning(&c, "nomount", "FailedMount");
    assert!(
        m.starts_with("MountVolume.SetUp failed: ") && m.contains("does-not-exist"),
        "{m}"
    );

    let names = [
        "default-path",
        "custom-path",
        "fallback",
        "no-fallback",
        "nomount",
    ];
    for n in names {
        c.delete(n, None);
    }
    for n in names {
        c.wait_gone(n, 60);
    }
}
