//! hull's patches against the real thing: each case is applied by hull's `patch::apply`
//! and by kubectl 1.35's own implementation (`kubectl patch --local`, the
//! apimachinery code kube-apiserver runs), and the results must be identical, list order
//! included.

use std::io::Write;
use std::process::Command;

use hull_control::patch::{self, PatchType};
use serde_json::{Value, json};

fn kubectl_patch(test: &str, obj: &Value, patch_type: &str, patch: &Value) -> Value {
    let mut file = tempfile::Builder::new()
        .prefix(&format!("hull-kpatch-{test}-{}-", std::process::id()))
        .suffix(".json")
        .tempfile()
        .expect("temp file");
    file.write_all(obj.to_string().as_bytes())
        .expect("write object");
    let out = Command::new("kubectl")
        .env("KUBECONFIG", "/dev/null")
        .args(["patch", "--local", "-o", "json", "--type", patch_type, "-p"])
        .arg(patch.to_string())
        .arg("-f")
        .arg(file.path())
        .output()
        .expect("run kubectl (tests/setup installs kubectl 1.35)");
    assert!(
        out.status.success(),
        "kubectl patch {patch}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("kubectl printed JSON")
}

fn check(test: &str, kind: &str, obj: &Value, patch_type: &str, p: Value) {
    let pt = match patch_type {
        "strategic" => PatchType::StrategicMerge,
        "merge" => PatchType::Merge,
        _ => PatchType::Json,
    };
    let ours = patch::apply(kind, &pt, obj, p.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{test}: hull refused {p}: {e}"));
    let theirs = kubectl_patch(test, obj, patch_type, &p);
    assert_eq!(ours, theirs, "{test}: patch {p}");
}

fn deployment() -> Value {
    json!({"apiVersion":"apps/v1","kind":"Deployment",
      "metadata":{"name":"web","labels":{"app":"web","tier":"front"},"finalizers":["a.io/x","b.io/y"]},
      "spec":{"replicas":2,"selector":{"matchLabels":{"app":"web"}},
        "strategy":{"type":"RollingUpdate","rollingUpdate":{"maxSurge":"25%","maxUnavailable":"25%"}},
        "template":{"metadata":{"labels":{"app":"web"}},"spec":{
          "containers":[
            {"name":"web","image":"busybox:1.36","ports":[{"containerPort":80,"protocol":"TCP"},{"containerPort":443,"protocol":"TCP"}],
             "env":[{"name":"A","value":"1"},{"name":"B","value":"2"}],
             "volumeMounts":[{"name":"data","mountPath":"/data"}]},
            {"name":"side","image":"busybox","command":["sleep","1d"]}],
          "volumes":[{"name":"data","emptyDir":{}},{"name":"cfg","configMap":{"name":"c"}}],
          "tolerations":[{"key":"k","operator":"Exists"}]}}}})
}

#[test]
fn strategic_merge_matches_kubectl_on_deployments() {
    let d = deployment();
    let cases = [
        // The acceptance check's patch: image changes, ports stay.
        json!({"spec":{"template":{"spec":{"containers":[{"name":"web","image":"busybox:1.37"}]}}}}),
        json!({"spec":{"template":{"spec":{"containers":[{"name":"third","image":"t"}]}}}}),
        json!({"spec":{"template":{"spec":{"containers":[{"name":"third","image":"t"},{"name":"web","image":"n"}]}}}}),
        json!({"spec":{"template":{"spec":{"containers":[{"name":"side","$patch":"delete"}]}}}}),
        json!({"spec":{"template":{"spec":{"containers":[{"$patch":"replace"},{"name":"only","image":"o"}]}}}}),
        json!({"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"side"},{"name":"web"}],
            "containers":[{"name":"web","image":"z"}]}}}}),
        json!({"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"side"},{"name":"web"}]}}}}),
        json!({"spec":{"template":{"spec":{"containers":[{"name":"web",
            "ports":[{"containerPort":8080},{"containerPort":443,"$patch":"delete"}],
            "env":[{"name":"B","value":"3"},{"name":"C","value":"4"}]}]}}}}),
        json!({"spec":{"template":{"spec":{"containers":[{"name":"web",
            "$setElementOrder/env":[{"name":"B"},{"name":"A"}],"env":[{"name":"B","value":"x"}]}]}}}}),
        json!({"spec":{"template":{"spec":{"volumes":[{"name":"cfg","$patch":"delete"},{"name":"new","emptyDir":{}}],
            "tolerations":[{"key":"other","operator":"Exists"}]}}}}),
        json!({"spec":{"strategy":{"$retainKeys":["type"],"type":"Recreate","rollingUpdate":null}}}),
        json!({"spec":{"replicas":null},"metadata":{"labels":{"tier":null,"new":"1"}}}),
        json!({"metadata":{"labels":{"$patch":"replace","only":"x"}}}),
        json!({"metadata":{"finalizers":["c.io/z"]}}),
        json!({"metadata":{"$deleteFromPrimitiveList/finalizers":["a.io/x"]}}),
        json!({"metadata":{"$setElementOrder/finalizers":["b.io/y","a.io/x"]}}),
        json!({"spec":{"template":{"spec":{"containers":[{"name":"side","command":["echo"]}]}}}}),
    ];
    for (i, p) in cases.into_iter().enumerate() {
        check(&format!("deploy{i}"), "Deployment", &d, "strategic", p);
    }
}

#[test]
fn strategic_merge_matches_kubectl_on_services_pods_and_nodes() {
    let svc = json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},
        "spec":{"selector":{"app":"a"},"ports":[{"name":"http","port":80,"protocol":"TCP","targetPort":8080},
                                               {"name":"dns","port":53,"protocol":"UDP","targetPort":53}]}});
    check(
        "svc0",
        "Service",
        &svc,
        "strategic",
        json!({"spec":{"ports":[{"port":80,"targetPort":9090}]}}),
    );
    check(
        "svc1",
        "Service",
        &svc,
        "strategic",
        json!({"spec":{"ports":[{"port":443,"name":"https"}]}}),
    );
    check(
        "svc2",
        "Service",
        &svc,
        "strategic",
        json!({"spec":{"selector":{"app":null,"b":"c"}}}),
    );

    let pod = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","ownerReferences":[
            {"apiVersion":"v1","kind":"X","name":"x","uid":"u1"}]},
        "spec":{"containers":[{"name":"c","image":"i"}]},
        "status":{"phase":"Running","conditions":[{"type":"Ready","status":"False"},{"type":"Initialized","status":"True"}]}});
    check(
        "pod0",
        "Pod",
        &pod,
        "strategic",
        json!({"status":{"conditions":[{"type":"Ready","status":"True"}]}}),
    );
    check(
        "pod1",
        "Pod",
        &pod,
        "strategic",
        json!({"metadata":{"ownerReferences":[{"apiVersion":"v1","kind":"Y","name":"y","uid":"u2"}]}}),
    );
    check(
        "pod2",
        "Pod",
        &pod,
        "strategic",
        json!({"spec":{"initContainers":[{"name":"init","image":"i"}]}}),
    );

    let node = json!({"apiVersion":"v1","kind":"Node","metadata":{"name":"n"},
        "spec":{"podCIDRs":["10.244.0.0/24"]},
        "status":{"addresses":[{"type":"InternalIP","address":"10.0.0.1"},{"type":"Hostname","address":"n"}],
                  "conditions":[{"type":"Ready","status":"False"}]}});
    check(
        "node0",
        "Node",
        &node,
        "strategic",
        json!({"status":{"$setElementOrder/conditions":[{"type":"MemoryPressure"},{"type":"Ready"}],
                         "conditions":[{"type":"MemoryPressure","status":"False"},{"type":"Ready","status":"True"}],
                         "addresses":[{"type":"InternalIP","address":"10.0.0.2"}]}}),
    );
}

#[test]
fn merge_and_json_patches_match_kubectl() {
    let d = deployment();
    check(
        "merge0",
        "Deployment",
        &d,
        "merge",
        json!({"spec":{"template":{"spec":{"containers":[{"name":"web","image":"x"}]}}},"metadata":{"labels":{"tier":null}}}),
    );
    check(
        "json0",
        "Deployment",
        &d,
        "json",
        json!([
            {"op":"replace","path":"/spec/replicas","value":7},
            {"op":"add","path":"/spec/template/spec/containers/0/env/-","value":{"name":"Z","value":"z"}},
            {"op":"remove","path":"/metadata/finalizers/0"},
            {"op":"copy","from":"/metadata/labels","path":"/metadata/annotations"},
            {"op":"move","from":"/metadata/annotations/tier","path":"/metadata/annotations/t"},
            {"op":"test","path":"/spec/replicas","value":7}
        ]),
    );
}
