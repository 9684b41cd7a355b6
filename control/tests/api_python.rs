//! The official Python `kubernetes` client against a real `hull` API server: CRUD of a
//! namespace's ConfigMaps and a Deployment, and a watch that sees ADDED, MODIFIED and
//! DELETED in order.

mod api_support;

use api_support::Server;

const SCRIPT: &str = r#"
import sys, threading, time
from kubernetes import client, config, watch
config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
apps = client.AppsV1Api()
ns = "py-" + sys.argv[2]
v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))

cms = v1.list_namespaced_config_map(ns)
start_rv = cms.metadata.resource_version
seen = []
def watcher():
    w = watch.Watch()
    # The root-CA publisher adds kube-root-ca.crt to every new namespace, maybe after
    # start_rv: watch only "c" (a field selector, as client libraries use them).
    for ev in w.stream(v1.list_namespaced_config_map, ns, resource_version=start_rv, field_selector="metadata.name=c", timeout_seconds=20):
        seen.append((ev["type"], ev["object"].metadata.name, ev["object"].data))
        if ev["type"] == "DELETED":
            w.stop()
t = threading.Thread(target=watcher)
t.start()
time.sleep(0.5)

cm = v1.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c", labels={"a": "b"}), data={"k": "1"}))
assert cm.metadata.uid and cm.metadata.resource_version, cm
got = v1.read_namespaced_config_map("c", ns)
assert got.data == {"k": "1"}, got.data
got.data["k"] = "2"
v1.replace_namespaced_config_map("c", ns, got)
assert [c.metadata.name for c in v1.list_namespaced_config_map(ns, label_selector="a=b").items] == ["c"]
# kube-root-ca.crt (the root-ca publisher's, in every namespace) has no label a: it matches
assert [c.metadata.name for c in v1.list_namespaced_config_map(ns, label_selector="a!=b").items if c.metadata.name != "kube-root-ca.crt"] == []
try:
    v1.replace_namespaced_config_map("c", ns, got)  # stale resourceVersion
    raise SystemExit("stale replace was accepted")
except client.ApiException as e:
    assert e.status == 409, e.status
v1.patch_namespaced_config_map("c", ns, {"data": {"k": "3"}})
assert v1.read_namespaced_config_map("c", ns).data["k"] == "3"
v1.delete_namespaced_config_map("c", ns)
try:
    v1.read_namespaced_config_map("c", ns)
    raise SystemExit("deleted configmap still readable")
except client.ApiException as e:
    assert e.status == 404, e.status
t.join(30)
types = [s[0] for s in seen]
assert types == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"], seen
assert seen[1][2] == {"k": "2"} and seen[2][2] == {"k": "3"}, seen

dep = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="d"),
    spec=client.V1DeploymentSpec(
        replicas=2,
        selector=client.V1LabelSelector(match_labels={"app": "d"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "d"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox:1.36")]))))
d = apps.create_namespaced_deployment(ns, dep)
assert d.spec.strategy.rolling_update.max_surge == "25%", d.spec.strategy
apps.patch_namespaced_deployment_scale("d", ns, {"spec": {"replicas": 4}})
assert apps.read_namespaced_deployment_scale("d", ns).spec.replicas == 4
apps.delete_namespaced_deployment("d", ns)
print("ok")
"#;

#[test]
fn python_client_crud_and_watch() {
    let s = Server::start("python", None);
    let script = s.dir.join("client.py");
    std::fs::write(&script, SCRIPT).expect("write script");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&s.kubeconfig)
        .arg(std::process::id().to_string())
        .output()
        .expect("run python3 (tests/setup installs the kubernetes client)");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
