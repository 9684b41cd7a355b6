//! The HorizontalPodAutoscaler against a real `hull server`: metrics come the real way —
//! the API server's metrics.k8s.io reads `/stats/summary` from the kubelet endpoint a
//! Node advertises — from a fake kubelet this test runs on loopback (HTTPS, a serving
//! certificate signed by the cluster CA, as an agent's), whose per-pod usage the test
//! sets. Pods are made Running and Ready by writing their status, as a kubelet would.

mod controllers_cluster_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use controllers_cluster_support::Cluster;
use serde_json::{Value, json};

/// Usage per (namespace, pod): (nano-cores, working-set bytes).
type Usage = Arc<Mutex<HashMap<(String, String), (u64, u64)>>>;

/// A kubelet API that serves only `/stats/summary`, from `usage`; stopped on drop.
struct FakeKubelet {
    port: u16,
    usage: Usage,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn summary(usage: &Usage) -> Value {
    let t = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let pods: Vec<Value> = usage
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|((ns, name), (cpu, mem))| {
            json!({
                "podRef": {"namespace": ns, "name": name, "uid": ""},
                "containers": [{"name": "app",
                    "cpu": {"time": t, "usageNanoCores": cpu},
                    "memory": {"time": t, "workingSetBytes": mem}}],
                "cpu": {"time": t, "usageNanoCores": cpu},
                "memory": {"time": t, "workingSetBytes": mem},
            })
        })
        .collect();
    json!({"node": {"nodeName": "fake", "cpu": {"time": t, "usageNanoCores": 0},
        "memory": {"time": t, "workingSetBytes": 0}}, "pods": pods})
}

impl FakeKubelet {
    fn start(data_dir: &std::path::Path) -> FakeKubelet {
        let key = rcgen::KeyPair::generate().expect("key");
        let csr = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("csr pem");
        let cert = hull_control::apiserver::tls::sign_serving_csr(data_dir, &csr, 3600)
            .expect("the cluster CA signs the fake kubelet's certificate");
        use rustls_pki_types::pem::PemObject;
        let chain: Vec<rustls_pki_types::CertificateDer<'static>> =
            rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<_, _>>()
                .expect("cert pem");
        let der = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
            .expect("key pem");
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_single_cert(chain, der)
        .expect("server config");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let usage: Usage = Arc::default();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let served = usage.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let (tcp, _) = tokio::select! {
                        _ = &mut rx => return,
                        a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    };
                    let (acceptor, usage) = (acceptor.clone(), served.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let svc = hyper::service::service_fn(
                            move |req: hyper::Request<hyper::body::Incoming>| {
                                let usage = usage.clone();
                                async move {
                                    let (code, body) = if req.uri().path() == "/stats/summary" {
                                        (200, summary(&usage).to_string())
                                    } else {
                                        (404, "not found".to_string())
                                    };
                                    hyper::Response::builder()
                                        .status(code)
                                        .header("content-type", "application/json")
                                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                            .await;
                    });
                }
            });
        });
        FakeKubelet {
            port,
            usage,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    fn set(&self, ns: &str, pod: &str, milli_cpu: u64, mem: u64) {
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((ns.into(), pod.into()), (milli_cpu * 1_000_000, mem));
    }

    fn clear(&self) {
        self.usage.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A Ready node whose kubelet endpoint is the fake kubelet.
fn node_with_kubelet(c: &Cluster, name: &str, port: u16) {
    c.node(name);
    let patch = json!({"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}});
    c.ok(&[
        "patch",
        "node",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch.to_string(),
    ]);
}

fn ten_minutes_ago() -> String {
    jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_secs(600))
        .expect("time")
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Live pods of `app` in `ns`; each not yet Running+Ready is made so (started ten
/// minutes ago: past the CPU start-up period) and given `usage` on the fake kubelet.
fn pods_running(
    c: &Cluster,
    k: &FakeKubelet,
    ns: &str,
    app: &str,
    cpu: u64,
    mem: u64,
) -> Vec<String> {
    let out = c.get(&[
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        &format!("app={app}"),
        "-o",
        "json",
    ]);
    let Ok(list) = serde_json::from_str::<Value>(&out) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for p in list["items"].as_array().cloned().unwrap_or_default() {
        if !p["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
        let ready = p["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        if !ready {
            let t = ten_minutes_ago();
            let status = json!({"status": {"phase": "Running", "startTime": t,
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": t}]}});
            let _ = c.kubectl(&[
                "patch",
                "pod",
                &name,
                "-n",
                ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ]);
        }
        k.set(ns, &name, cpu, mem);
        names.push(name);
    }
    names
}

fn deployment(ns: &str, name: &str, replicas: i32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers: [{{name: app, image: busybox, resources: {{requests: {{cpu: 100m, memory: 100Mi}}}}}}]\n"
    )
}

fn spec_replicas(c: &Cluster, ns: &str, kind: &str, name: &str) -> i64 {
    c.get(&[
        "get",
        kind,
        name,
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.replicas}",
    ])
    .parse()
    .unwrap_or(-1)
}

fn condition(hpa: &Value, t: &str) -> (String, String) {
    hpa["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == t))
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default()
}

fn hpa_json(c: &Cluster, ns: &str, name: &str) -> Value {
    serde_json::from_str(&c.get(&["get", "hpa", name, "-n", ns, "-o", "json"]))
        .unwrap_or(Value::Null)
}

fn events(c: &Cluster, ns: &str, reason: &str) -> Vec<String> {
    let out = c.get(&["get", "events", "-n", ns, "-o", "json"]);
    serde_json::from_str::<Value>(&out)
        .ok()
        .and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|e| e["reason"] == reason)
        .map(|e| e["message"].as_str().unwrap_or("").to_string())
        .collect()
}

fn start(test: &str) -> (Cluster, FakeKubelet, String) {
    let c = Cluster::start(test, |o| {
        o.hpa_sync_period = Duration::from_millis(500);
        o.node_monitor_grace_period = Duration::from_secs(3600);
    });
    let k = FakeKubelet::start(&c.dir);
    let node = format!("hpa-{test}-{}", std::process::id());
    node_with_kubelet(&c, &node, k.port);
    let ns = format!("hpa-{test}-{}", std::process::id());
    c.ok(&["create", "namespace", &ns]);
    (c, k, ns)
}

#[test]
fn cpu_utilization_scales_a_deployment_up_and_down() {
    let (c, k, ns) = start("cpu");
    c.apply(&deployment(&ns, "web", 1));
    c.eventually("the first pod", || {
        let p = pods_running(&c, &k, &ns, "web", 250, 50 << 20);
        (p.len() == 1).then_some(())
    });
    // The API server's metrics.k8s.io serves what the fake kubelet reports.
    let top = c.wait_for(
        "kubectl top",
        &["top", "pod", "-n", &ns, "--no-headers"],
        |o| o.contains("250m"),
    );
    assert!(top.contains("50Mi"), "{top}");

    c.ok(&[
        "autoscale",
        "deployment",
        "web",
        "-n",
        &ns,
        "--cpu-percent=50",
        "--min=1",
        "--max=3",
    ]);
    c.ok(&[
        "patch",
        "hpa",
        "web",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":0}}}}"#,
    ]);
    // 250% of the request against 50%: 5x, capped at max 3.
    c.eventually("scale-up to 3", || {
        pods_running(&c, &k, &ns, "web", 250, 50 << 20);
        (spec_replicas(&c, &ns, "deployment", "web") == 3).then_some(())
    });
    let table = c.wait_for(
        "TARGETS cpu: 250%/50% with 3 replicas",
        &["get", "hpa", "web", "-n", &ns, "--no-headers"],
        |o| {
            pods_running(&c, &k, &ns, "web", 250, 50 << 20);
            o.contains("cpu: 250%/50%") && o.split_whitespace().nth(5) == Some("3")
        },
    );
    assert!(table.contains("Deployment/web"), "{table}");
    let hpa = hpa_json(&c, &ns, "web");
    assert_eq!(hpa["status"]["desiredReplicas"], 3, "{hpa:#}");
    assert_eq!(
        hpa["status"]["currentMetrics"][0]["resource"]["current"]["averageValue"],
        "250m"
    );
    assert!(hpa["status"]["lastScaleTime"].is_string(), "{hpa:#}");
    assert_eq!(condition(&hpa, "AbleToScale").0, "True", "{hpa:#}");
    assert_eq!(
        condition(&hpa, "ScalingActive"),
        ("True".into(), "ValidMetricFound".into())
    );
    assert_eq!(
        condition(&hpa, "ScalingLimited"),
        ("True".into(), "TooManyReplicas".into()),
        "{hpa:#}"
    );
    let up = events(&c, &ns, "SuccessfulRescale");
    assert!(
        up.iter().any(|m| m
            == "New size: 3; reason: cpu resource utilization (percentage of request) above target"),
        "{up:?}"
    );
    let describe = c.ok(&["describe", "hpa", "web", "-n", &ns]);
    assert!(describe.contains("SuccessfulRescale"), "{describe}");

    // Load stops: 10% of the request → ceil(0.2 × 3) = 1 (no stabilization window).
    c.eventually("scale-down to 1", || {
        pods_running(&c, &k, &ns, "web", 10, 50 << 20);
        (spec_replicas(&c, &ns, "deployment", "web") == 1).then_some(())
    });
    let down = c.eventually("the scale-down Event", || {
        let e = events(&c, &ns, "SuccessfulRescale");
        e.iter()
            .any(|m| m == "New size: 1; reason: All metrics below target")
            .then_some(e)
    });
    assert_eq!(down.len(), 2, "{down:?}");
}

#[test]
fn failures_bounds_and_other_targets() {
    let (c, k, ns) = start("misc");
    // Pods without metrics: the HPA says why and leaves the scale alone.
    c.apply(&deployment(&ns, "quiet", 2));
    c.eventually("two pods", || {
        (pods_running(&c, &k, &ns, "quiet", 0, 0).len() == 2).then_some(())
    });
    k.clear();
    c.ok(&[
        "autoscale",
        "deployment",
        "quiet",
        "-n",
        &ns,
        "--cpu-percent=50",
        "--min=1",
        "--max=4",
    ]);
    let hpa = c.eventually("ScalingActive False", || {
        let h = hpa_json(&c, &ns, "quiet");
        (condition(&h, "ScalingActive").1 == "FailedGetResourceMetric").then_some(h)
    });
    assert_eq!(condition(&hpa, "ScalingActive").0, "False");
    let table = c.ok(&["get", "hpa", "quiet", "-n", &ns, "--no-headers"]);
    assert!(table.contains("cpu: <unknown>/50%"), "{table}");
    let failed = c.eventually("FailedGetResourceMetric Event", || {
        let e = events(&c, &ns, "FailedGetResourceMetric");
        (!e.is_empty()).then_some(e)
    });
    assert!(
        failed[0].contains("no metrics returned from resource metrics API"),
        "{failed:?}"
    );
    let computed = c.eventually("FailedComputeMetricsReplicas Event", || {
        let e = events(&c, &ns, "FailedComputeMetricsReplicas");
        (!e.is_empty()).then_some(e)
    });
    assert!(
        computed[0].starts_with("invalid metrics (1 invalid out of 1), first error is: failed to get cpu resource metric value"),
        "{computed:?}"
    );
    assert_eq!(spec_replicas(&c, &ns, "deployment", "quiet"), 2);

    // A target that does not exist.
    c.apply(&format!(
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {{name: ghost, namespace: {ns}}}\nspec:\n  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: ghost}}\n  maxReplicas: 2\n"
    ));
    let ghost = c.eventually("AbleToScale False", || {
        let h = hpa_json(&c, &ns, "ghost");
        (condition(&h, "AbleToScale").1 == "FailedGetScale").then_some(h)
    });
    assert_eq!(condition(&ghost, "AbleToScale").0, "False", "{ghost:#}");

    // Above maxReplicas: brought down to it whatever the metrics say.
    c.apply(&deployment(&ns, "big", 4));
    c.apply(&format!(
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {{name: big, namespace: {ns}}}\nspec:\n  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: big}}\n  minReplicas: 1\n  maxReplicas: 2\n"
    ));
    c.eventually("big scaled to max", || {
        (spec_replicas(&c, &ns, "deployment", "big") == 2).then_some(())
    });
    let msgs = events(&c, &ns, "SuccessfulRescale");
    assert!(
        msgs.iter()
            .any(|m| m == "New size: 2; reason: Current number of replicas above Spec.MaxReplicas"),
        "{msgs:?}"
    );

    // A StatefulSet through its scale subresource, on memory AverageValue: 200Mi a pod
    // against 100Mi → 2 pods.
    c.apply(&format!(
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: db, namespace: {ns}}}\nspec:\n  replicas: 1\n  serviceName: db\n  selector: {{matchLabels: {{app: db}}}}\n  template:\n    metadata: {{labels: {{app: db}}}}\n    spec:\n      containers: [{{name: app, image: busybox, resources: {{requests: {{cpu: 100m, memory: 100Mi}}}}}}]\n"
    ));
    c.eventually("db-0 running", || {
        (pods_running(&c, &k, &ns, "db", 5, 200 << 20).len() == 1).then_some(())
    });
    c.ok(&[
        "autoscale",
        "statefulset",
        "db",
        "-n",
        &ns,
        "--memory=100Mi",
        "--min=1",
        "--max=2",
    ]);
    c.eventually("db scaled to 2", || {
        pods_running(&c, &k, &ns, "db", 5, 200 << 20);
        (spec_replicas(&c, &ns, "statefulset", "db") == 2).then_some(())
    });
    let table = c.wait_for(
        "memory TARGETS",
        &["get", "hpa", "db", "-n", &ns, "--no-headers"],
        |o| {
            pods_running(&c, &k, &ns, "db", 5, 200 << 20);
            o.contains("memory: 209715200/100Mi")
        },
    );
    assert!(table.contains("StatefulSet/db"), "{table}");
    let msgs = events(&c, &ns, "SuccessfulRescale");
    assert!(
        msgs.iter()
            .any(|m| m == "New size: 2; reason: memory resource above target"),
        "{msgs:?}"
    );
}
