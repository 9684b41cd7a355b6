//! The node agent end to end on one real node (see node_support): a pod with init
//! containers, two containers sharing an emptyDir, env from every source, configMap /
//! secret / downwardAPI / tmpfs volumes; its status as kubelet writes it; a configMap
//! update reaching the files; graceful deletion and nothing left behind.

mod node_support;

use base64::Engine;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use node_support::*;
use serde_json::json;

#[test]
fn pod_status_env_and_volumes() {
    let c = Cluster::start("pods");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let _: ConfigMap = c.create(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cfg"}, "data": {"greeting": "hello", "file.txt": "cm-v1"}}));
    let _: Secret = c.create(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "sec"}, "data": {"password": b64("s3cret")}}));
    let script = r#"echo "NAME=$MY_NAME NS=$MY_NS UID=$MY_UID IP=$MY_IP NODE=$MY_NODE G=$GREETING P=$PASSWORD X=$EXPANDED MEM=$MEM_MI CPU=$CPU_M OPT=[$OPTIONAL] CM=$CM_greeting"
cat /shared/init.txt; cat /etc/cfg/file.txt; echo; cat /etc/sec/password; echo
echo "dname=$(cat /etc/podinfo/name)"; cat /etc/podinfo/labels; echo
echo "mode=$(stat -L -c %a /etc/sec/password)"; grep " /mem " /proc/mounts
echo main-done > /shared/from-main; exec sleep 3600"#;
    let pod = c.pod("envpod", json!({
        "terminationGracePeriodSeconds": 2,
        "volumes": [
            {"name": "shared", "emptyDir": {}},
            {"name": "cm", "configMap": {"name": "cfg"}},
            {"name": "sec", "secret": {"secretName": "sec", "defaultMode": 0o400}},
            {"name": "dapi", "downwardAPI": {"items": [
                {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
            {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}],
        "initContainers": [{"name": "init", "image": c.image,
            "command": ["sh", "-c", "echo from-init > /shared/init.txt"],
            "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}],
        "containers": [
            {"name": "main", "image": c.image, "command": ["sh", "-c", script],
             "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}, "requests": {"memory": "32Mi", "cpu": "100m"}},
             "env": [
                {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "MY_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "MY_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "MY_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
                {"name": "EXPANDED", "value": "$(GREETING)-world"},
                {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
                {"name": "OPTIONAL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope", "optional": true}}}],
             "envFrom": [{"prefix": "CM_", "configMapRef": {"name": "cfg"}}],
             "volumeMounts": [
                {"name": "shared", "mountPath": "/shared"},
                {"name": "cm", "mountPath": "/etc/cfg"},
                {"name": "sec", "mountPath": "/etc/sec"},
                {"name": "dapi", "mountPath": "/etc/podinfo"},
                {"name": "mem", "mountPath": "/mem"}]},
            {"name": "side", "image": c.image,
             "command": ["sh", "-c", "while [ ! -f /shared/from-main ]; do sleep 0.1; done; echo side-saw-$(cat /shared/from-main); exec sleep 3600"],
             "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}]}));
    let uid = pod.metadata.uid.clone().unwrap();

    let p = c.wait_pod("envpod", "Ready", 120, |p| {
        cond(p, "Ready").as_deref() == Some("True")
    });
    let st = p.status.clone().unwrap();
    assert_eq!(st.phase.as_deref(), Some("Running"));
    for ty in [
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
        "PodScheduled",
    ] {
        assert_eq!(cond(&p, ty).as_deref(), Some("True"), "condition {ty}");
    }
    assert_eq!(st.qos_class.as_deref(), Some("Burstable"));
    assert_eq!(st.host_ip.as_deref(), Some("127.0.0.1"));
    assert!(st.start_time.is_some());
    let ip = st.pod_ip.clone().expect("podIP");
    assert_eq!(
        st.pod_ips.as_ref().map(|v| v[0].ip.clone()),
        Some(ip.clone())
    );
    let init = &st.init_container_statuses.as_ref().expect("init statuses")[0];
    let t = init
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("init terminated");
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    for name in ["main", "side"] {
        let cs = cstatus(&p, name).unwrap();
        assert!(
            cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some(),
            "{name} running"
        );
        assert!(
            cs.ready && cs.started == Some(true) && cs.restart_count == 0,
            "{name}: {cs:?}"
        );
        assert!(
            cs.container_id
                .as_deref()
                .unwrap_or_default()
                .starts_with("hull://"),
            "{cs:?}"
        );
        assert!(cs.image_id.contains("@sha256:"), "imageID {}", cs.image_id);
    }

    let main = wait_for("main's output", 30, || {
        let l = c.container_log(&p, "main", 0);
        l.contains("/mem ").then_some(l)
    });
    let want = format!(
        "NAME=envpod NS=default UID={uid} IP={ip} NODE={} G=hello P=s3cret X=hello-world MEM=64 CPU=100 OPT=[] CM=hello",
        c.node
    );
    assert!(
        main.contains(&want),
        "env line missing: want {want}\n{main}"
    );
    for needle in [
        "from-init",
        "cm-v1",
        "s3cret",
        "dname=envpod",
        "app=\"envpod\"",
        "mode=400",
        "tmpfs",
    ] {
        assert!(main.contains(needle), "{needle:?} missing from\n{main}");
    }
    assert!(main.contains("size=16384k"), "tmpfs sizeLimit: {main}");
    wait_for("side sees main's file in the shared emptyDir", 30, || {
        c.container_log(&p, "side", 0)
            .contains("side-saw-main-done")
            .then_some(())
    });

    // A configMap change reaches the mounted files (atomic ..data swap).
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    c.rt.block_on(cms.patch(
        "cfg",
        &PatchParams::default(),
        &Patch::Merge(&json!({"data": {"file.txt": "cm-v2"}})),
    ))
    .unwrap();
    let vol = c.agent_data.join(format!(
        "agent/pods/{uid}/volumes/kubernetes.io~configmap/cm"
    ));
    wait_for("configMap update in the volume", 60, || {
        (std::fs::read_to_string(vol.join("file.txt")).unwrap_or_default() == "cm-v2").then_some(())
    });
    assert!(std::fs::read_link(vol.join("..data")).is_ok());

    // Node: registered with capacity, addresses, nodeInfo, labels, Ready.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c.client.clone());
    let n = c.rt.block_on(nodes.get(&c.node)).unwrap();
    let ns = n.status.clone().unwrap();
    assert!(ns.capacity.as_ref().unwrap().contains_key("cpu"));
    assert_eq!(
        ns.capacity
            .as_ref()
            .unwrap()
            .get("pods")
            .map(|q| q.0.as_str()),
        Some("150"),
        "--max-pods 150 is the Node's capacity.pods"
    );
    assert!(ns.allocatable.as_ref().unwrap().contains_key("memory"));
    assert_eq!(
        ns.node_info.as_ref().unwrap().container_runtime_version,
        "hull://0.1.0"
    );
    assert!(
        ns.addresses
            .unwrap()
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1")
    );
    assert!(
        ns.conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
    assert_eq!(
        n.metadata.labels.unwrap().get("kubernetes.io/hostname"),
        Some(&c.node)
    );
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(c.client.clone(), "kube-node-lease");
    assert!(c.rt.block_on(leases.get(&c.node)).is_ok(), "node lease");

    // Graceful delete: everything of the pod is gone with it.
    c.delete("envpod", None);
    c.wait_gone("envpod", 60);
    assert_eq!(c.sandboxes_of(&uid), 0, "sandboxes left");
    assert!(
        !c.agent_data.join(format!("agent/pods/{uid}")).exists(),
        "pod dir left"
    );
    assert!(
        image_support::mounts_under(&c.agent_data).is_empty(),
        "mounts left: {:?}",
        image_support::mounts_under(&c.agent_data)
    );
    assert!(
        !hull_agent::node::cgroups::exists(&format!("/hull-kubepods/burstable/pod{uid}")),
        "pod cgroup left"
    );
    // The test's bridge goes with the cluster (the plugin made it for the first pod).
    let bridge = std::path::Path::new("/sys/class/net").join(&c.bridge);
    assert!(bridge.exists(), "the pods' bridge {}", c.bridge);
    drop(c);
    assert!(!bridge.exists(), "bridge {} left behind", bridge.display());
}
