//! helm 4 against a real `hull server` (SQLite): install, upgrade, rollback and uninstall
//! of a small local chart (a ConfigMap, a Service, a Deployment). Helm keeps its release
//! records in Secrets, uses server-side apply and waits on resources, so this exercises
//! what a real user's chart workflow needs from the API.

mod api_support;

use std::path::Path;
use std::process::{Command, Output};

use api_support::Server;
use serde_json::Value;

fn helm(s: &Server, args: &[&str]) -> Output {
    Command::new("helm")
        .args(args)
        .arg("--kubeconfig")
        .arg(&s.kubeconfig)
        .env("HOME", &s.dir)
        .env("HELM_CACHE_HOME", s.dir.join("helm-cache"))
        .env("HELM_CONFIG_HOME", s.dir.join("helm-config"))
        .env("HELM_DATA_HOME", s.dir.join("helm-data"))
        .output()
        .expect("run helm (tests/setup installs helm 4)")
}

fn helm_ok(s: &Server, args: &[&str]) -> String {
    let out = helm(s, args);
    assert!(
        out.status.success(),
        "helm {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_chart(dir: &Path) {
    let t = dir.join("templates");
    std::fs::create_dir_all(&t).expect("chart dir");
    let files = [
        (
            "Chart.yaml",
            "apiVersion: v2\nname: hello\nversion: 0.1.0\nappVersion: \"1.0\"\n",
        ),
        ("values.yaml", "replicas: 1\nmessage: hello\nport: 80\n"),
        (
            "templates/configmap.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-config\ndata:\n  message: {{ .Values.message | quote }}\n",
        ),
        (
            "templates/service.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {{ .Release.Name }}\nspec:\n  selector:\n    app: {{ .Release.Name }}\n  ports:\n  - port: {{ .Values.port }}\n    targetPort: 8080\n",
        ),
        (
            "templates/deployment.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}\nspec:\n  replicas: {{ .Values.replicas }}\n  selector:\n    matchLabels:\n      app: {{ .Release.Name }}\n  template:\n    metadata:\n      labels:\n        app: {{ .Release.Name }}\n    spec:\n      containers:\n      - name: web\n        image: busybox:1.36\n        command: [\"sleep\", \"3600\"]\n",
        ),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write chart file");
    }
}

fn get(s: &Server, args: &[&str]) -> Value {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&s.ok(&full)).expect("json")
}

#[test]
fn helm_installs_upgrades_rolls_back_and_uninstalls() {
    let s = Server::start("helm", None);
    let pid = std::process::id();
    let chart = s.dir.join("hello");
    write_chart(&chart);
    let chart = chart.to_str().unwrap_or_default().to_string();
    let ns = format!("helm-{pid}");
    let rel = format!("hello{pid}");

    helm_ok(
        &s,
        &["install", &rel, &chart, "-n", &ns, "--create-namespace"],
    );
    assert_eq!(
        get(&s, &["configmap", &format!("{rel}-config"), "-n", &ns])["data"]["message"],
        "hello"
    );
    assert_eq!(
        get(&s, &["deployment", &rel, "-n", &ns])["spec"]["replicas"],
        1
    );
    let svc = get(&s, &["service", &rel, "-n", &ns]);
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.")),
        "{svc}"
    );
    let list = helm_ok(&s, &["list", "-n", &ns, "-o", "json"]);
    let releases: Value = serde_json::from_str(&list).expect("helm list json");
    assert_eq!(releases[0]["name"], rel.as_str());
    assert_eq!(releases[0]["status"], "deployed");

    helm_ok(
        &s,
        &[
            "upgrade",
            &rel,
            &chart,
            "-n",
            &ns,
            "--set",
            "replicas=3",
            "--set",
            "message=bonjour",
        ],
    );
    assert_eq!(
        get(&s, &["deployment", &rel, "-n", &ns])["spec"]["replicas"],
        3
    );
    assert_eq!(
        get(&s, &["configmap", &format!("{rel}-config"), "-n", &ns])["data"]["message"],
        "bonjour"
    );
    let hist = helm_ok(&s, &["history", &rel, "-n", &ns, "-o", "json"]);
    let h: Value = serde_json::from_str(&hist).expect("history json");
    assert_eq!(h.as_array().map(Vec::len), Some(2), "{hist}");

    helm_ok(&s, &["rollback", &rel, "1", "-n", &ns]);
    assert_eq!(
        get(&s, &["deployment", &rel, "-n", &ns])["spec"]["replicas"],
        1
    );
    assert_eq!(
        get(&s, &["configmap", &format!("{rel}-config"), "-n", &ns])["data"]["message"],
        "hello"
    );
    let hist = helm_ok(&s, &["history", &rel, "-n", &ns, "-o", "json"]);
    let h: Value = serde_json::from_str(&hist).expect("history json");
    assert_eq!(h.as_array().map(Vec::len), Some(3), "{hist}");

    helm_ok(&s, &["uninstall", &rel, "-n", &ns, "--wait"]);
    for kind in ["configmap", "service", "deployment"] {
        let name = if kind == "configmap" {
            format!("{rel}-config")
        } else {
            rel.clone()
        };
        let out = s.kubectl(&["get", kind, &name, "-n", &ns]);
        assert!(!out.status.success(), "{kind} {name} left after uninstall");
    }
    // Helm's release records (Secrets) are gone too.
    let secrets = s.ok(&[
        "get",
        "secrets",
        "-n",
        &ns,
        "-l",
        "owner=helm",
        "-o",
        "name",
    ]);
    assert!(secrets.trim().is_empty(), "{secrets}");
}
