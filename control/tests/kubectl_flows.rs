//! Real kubectl 1.35 against a real `hull` API server, on SQLite and on a real etcd: the
//! flows of issue 6 (discovery, create/apply/get/describe/edit/label/annotate/scale/
//! replace/patch/delete, secrets and configmaps, explain, server-side apply, errors).

mod api_support;

use api_support::Server;

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web, tier: front}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: busybox:1.36, ports: [{containerPort: 80}]}]}
";

fn flows(s: &Server) {
    let work = s.dir.join("work");
    std::fs::create_dir_all(&work).expect("work dir");

    // Discovery.
    let versions = s.ok(&["api-versions"]);
    for gv in [
        "v1",
        "apps/v1",
        "batch/v1",
        "autoscaling/v2",
        "rbac.authorization.k8s.io/v1",
    ] {
        assert!(
            versions.lines().any(|l| l == gv),
            "api-versions lacks {gv}: {versions}"
        );
    }
    assert!(s.ok(&["cluster-info"]).contains(&s.url()));
    assert!(s.ok(&["api-resources"]).contains("deployments"));

    // apply twice with an edit in between; defaults applied.
    let f = work.join("deploy.yaml");
    std::fs::write(&f, DEPLOY).expect("write");
    let fs = f.to_string_lossy().to_string();
    s.ok(&["apply", "-f", &fs]);
    std::fs::write(&f, DEPLOY.replace("replicas: 2", "replicas: 3")).expect("write");
    s.ok(&["apply", "-f", &fs]);
    let r = s.ok(&["get", "deploy", "web", "-o",
        "jsonpath={.spec.replicas}/{.spec.strategy.rollingUpdate.maxSurge}/{.spec.template.spec.containers[0].imagePullPolicy}"]);
    assert_eq!(r, "3/25%/IfNotPresent");

    // Selectors (set-based), tables, output formats.
    assert_eq!(
        s.ok(&[
            "get",
            "deploy",
            "-l",
            "tier in (front,back),app",
            "-o",
            "name"
        ])
        .trim(),
        "deployment.apps/web"
    );
    assert_eq!(
        s.ok(&["get", "deploy", "-l", "tier notin (front)", "-o", "name"])
            .trim(),
        ""
    );
    assert_eq!(
        s.ok(&["get", "deploy", "-l", "!tier", "-o", "name"]).trim(),
        ""
    );
    let table = s.ok(&["get", "deploy", "web"]);
    assert!(
        table.lines().next().is_some_and(|h| h.contains("READY")
            && h.contains("UP-TO-DATE")
            && h.contains("AVAILABLE")
            && h.contains("AGE")),
        "{table}"
    );
    let wide = s.ok(&["get", "deploy", "-o", "wide"]);
    assert!(
        wide.contains("CONTAINERS") && wide.contains("busybox:1.36") && wide.contains("app=web"),
        "{wide}"
    );
    assert!(
        s.ok(&["get", "deploy", "web", "-o", "yaml"])
            .contains("kind: Deployment")
    );
    let json: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "deploy", "web", "-o", "json"])).expect("json");
    assert_eq!(json["metadata"]["labels"]["tier"], "front");
    assert!(
        s.ok(&["describe", "deploy", "web"])
            .contains("RollingUpdateStrategy")
    );

    // scale, strategic / merge / json patches.
    s.ok(&["scale", "deploy", "web", "--replicas=5"]);
    s.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"busybox:1.37"}]}}}}"#,
    ]);
    let r = s.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[*].image} {.spec.template.spec.containers[0].ports[0].containerPort}"]);
    assert_eq!(r, "5 busybox:1.37 80");
    s.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"merged":"yes"}}}"#,
    ]);
    s.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#,
    ]);
    assert_eq!(
        s.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.replicas}/{.metadata.labels.merged}"
        ]),
        "4/yes"
    );
    let e = s.fails(
        &[
            "patch",
            "deploy",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"test","path":"/spec/replicas","value":9}]"#,
        ],
        None,
    );
    assert!(
        e.contains("/spec/replicas") && e.contains("did not match"),
        "{e}"
    );

    // label / annotate / edit / replace.
    s.ok(&["label", "deploy", "web", "env=prod"]);
    s.ok(&["annotate", "deploy", "web", "note=hello"]);
    assert_eq!(
        s.ok(&[
            "get",
            "deploy",
            "-l",
            "env=prod",
            "-o",
            "jsonpath={.items[0].metadata.annotations.note}"
        ]),
        "hello"
    );
    let editor = work.join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/replicas: 4/replicas: 6/' \"$1\"\n",
    )
    .expect("editor");
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let out = s.kubectl_env(
        &["edit", "deploy", "web"],
        None,
        &[("KUBE_EDITOR", &editor.to_string_lossy())],
    );
    assert!(
        out.status.success(),
        "edit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        s.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "6"
    );
    // The Deployment controller writes status while the scale-up settles; a replace
    // carrying the resourceVersion read before such a write gets a 409, as it would
    // against Kubernetes. Re-read and retry, as a user (or client-go's RetryOnConflict) does.
    let replaced = work.join("replace.yaml");
    let mut tries = 0;
    loop {
        let current = s.ok(&["get", "deploy", "web", "-o", "yaml"]);
        std::fs::write(&replaced, current.replace("replicas: 6", "replicas: 1")).expect("write");
        let out = s.kubectl(&["replace", "-f", &replaced.to_string_lossy()]);
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        tries += 1;
        assert!(
            err.contains("the object has been modified") && tries < 10,
            "replace: {err}"
        );
    }
    assert_eq!(
        s.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "1"
    );
    // A stale resourceVersion is a conflict.
    let e = s.fails(&["replace", "-f", &replaced.to_string_lossy()], None);
    assert!(e.contains("the object has been modified"), "{e}");

    // create -f a directory, configmaps, secrets from a file.
    let dir = work.join("many");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("a.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm-a}\ndata: {k: v}\n",
    )
    .expect("w");
    std::fs::write(dir.join("b.yaml"), "apiVersion: v1\nkind: Service\nmetadata: {name: svc-b}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n").expect("w");
    s.ok(&["create", "-f", &dir.to_string_lossy()]);
    let svc = s.ok(&[
        "get",
        "svc",
        "svc-b",
        "-o",
        "jsonpath={.spec.clusterIP} {.spec.type}",
    ]);
    assert!(
        svc.starts_with("10.") && svc.ends_with("ClusterIP"),
        "{svc}"
    );
    s.ok(&[
        "create",
        "configmap",
        "cm-lit",
        "--from-literal=a=1",
        "--from-literal=b=2",
    ]);
    assert!(
        s.ok(&["get", "cm"])
            .lines()
            .any(|l| l.starts_with("cm-lit") && l.contains(" 2 "))
    );
    let secret_file = work.join("password.txt");
    std::fs::write(&secret_file, "s3cret").expect("w");
    s.ok(&[
        "create",
        "secret",
        "generic",
        "sec",
        &format!("--from-file={}", secret_file.display()),
    ]);
    assert_eq!(
        s.ok(&[
            "get",
            "secret",
            "sec",
            "-o",
            "jsonpath={.data.password\\.txt}"
        ]),
        "czNjcmV0"
    );

    // explain reads /openapi/v3.
    let ex = s.ok(&["explain", "deployment.spec.replicas"]);
    assert!(ex.contains("replicas") && ex.contains("integer"), "{ex}");

    // Server-side apply with a field manager; a conflicting manager gets 409 unless forced.
    let ssa = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {owner: one}\n";
    s.kubectl_stdin(
        &["apply", "--server-side", "--field-manager=one", "-f", "-"],
        Some(ssa),
    );
    assert_eq!(
        s.ok(&["get", "cm", "ssa", "-o", "jsonpath={.data.owner}"]),
        "one"
    );
    let e = s.fails(
        &["apply", "--server-side", "--field-manager=two", "-f", "-"],
        Some(&ssa.replace("one", "two")),
    );
    assert!(e.to_lowercase().contains("conflict"), "{e}");
    let out = s.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=two",
            "-f",
            "-",
        ],
        Some(&ssa.replace("one", "two")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        s.ok(&["get", "cm", "ssa", "-o", "jsonpath={.data.owner}"]),
        "two"
    );

    // Invalid objects: 422 with a field path, nothing stored; unknown fields under Strict.
    let bad = "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec: {containers: [{name: c}]}\n";
    let e = s.fails(&["create", "-f", "-"], Some(bad));
    assert!(e.contains("spec.containers[0].image"), "{e}");
    assert!(!s.kubectl(&["get", "pod", "bad"]).status.success());
    let unknown = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: unk}\nbogus: 1\n";
    let e = s.fails(&["create", "-f", "-"], Some(unknown));
    assert!(e.contains("bogus"), "{e}");

    // Pods: -o wide columns, generateName, delete.
    s.ok(&["run", "p1", "--image=busybox", "--restart=Never"]);
    let wide = s.ok(&["get", "pods", "-o", "wide"]);
    let head = wide.lines().next().unwrap_or_default();
    for col in ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"] {
        assert!(head.contains(col), "pods -o wide lacks {col}: {head}");
    }
    let out = s.kubectl_stdin(
        &["create", "-f", "-", "-o", "name"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {generateName: gen-}\n"),
    );
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        name.starts_with("configmap/gen-") && name.len() == "configmap/gen-".len() + 5,
        "{name}"
    );

    // delete -f, --all.
    s.ok(&["delete", "-f", &dir.to_string_lossy()]);
    assert!(!s.kubectl(&["get", "svc", "svc-b"]).status.success());
    s.ok(&["delete", "cm", "--all"]);
    // The root-CA publisher puts kube-root-ca.crt back in every namespace, as in Kubernetes.
    let left = s.ok(&["get", "cm", "-o", "name"]);
    let left: Vec<&str> = left
        .lines()
        .filter(|l| *l != "configmap/kube-root-ca.crt")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    s.ok(&["delete", "deploy", "web"]);

    // Quota.
    s.ok(&["create", "ns", "q1"]);
    s.ok(&["create", "quota", "q", "--hard=pods=1", "-n", "q1"]);
    s.ok(&["run", "a", "-n", "q1", "--image=busybox", "--restart=Never"]);
    let e = s.fails(
        &["run", "b", "-n", "q1", "--image=busybox", "--restart=Never"],
        None,
    );
    assert!(e.contains("exceeded quota"), "{e}");

    // Anonymous requests are rejected.
    let (code, body) = s.curl(&[&format!("{}/api/v1/namespaces", s.url())], true);
    assert_eq!(code, 401, "{body}");
}

#[test]
fn kubectl_flows_on_sqlite() {
    let s = Server::start("kubectl-sqlite", None);
    flows(&s);
}

#[test]
fn kubectl_flows_on_etcd() {
    let etcd = api_support::etcd();
    let s = Server::start("kubectl-etcd", Some(etcd.url.clone()));
    flows(&s);
    drop(s);
    drop(etcd);
}
