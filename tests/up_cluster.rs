//! The whole mission on one machine: `hull up` brings up a single-node cluster, kubectl
//! 1.35 applies a Deployment and Services, the pods run, and traffic reaches them through
//! a ClusterIP by DNS name and through a NodePort on 127.0.0.1. Ctrl-C drains the node:
//! no sandbox, mount, network namespace or nftables table is left behind, and a second
//! `hull up` on the same data dir resumes the cluster with the same Deployment.

#[path = "../runtime/tests/image_support/mod.rs"]
mod image_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use image_support::{Scratch, free_port, mkimage, mounts_under};

const IMAGE: &str = "localhost/test/busybox:up";

fn kubectl_bin() -> PathBuf {
    for p in [
        "/usr/local/bin/kubectl",
        "/var/tmp/hull-acceptance/bin/kubectl",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("kubectl")
}

/// A running `hull up`, stopped with SIGINT (Ctrl-C) on drop if the test did not.
struct Up {
    child: Option<Child>,
    data: PathBuf,
    log: PathBuf,
}

impl Up {
    fn start(data: &Path, log: &Path, api_port: u16, kubelet_port: u16) -> Up {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_hull"))
            .args(["up", "--data-dir"])
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{api_port}")])
            .args(["--kubelet-port", &kubelet_port.to_string()])
            .args(["--node-name", "up-test-node"])
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn hull up");
        Up {
            child: Some(child),
            data: data.to_path_buf(),
            log: log.to_path_buf(),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let o = Command::new(kubectl_bin())
            .env("KUBECONFIG", self.data.join("admin.kubeconfig"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl");
        let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&o.stderr));
        (o.status.success(), s)
    }

    fn kubectl_stdin(&self, args: &[&str], input: &str) -> (bool, String) {
        use std::io::Write;
        let mut c = Command::new(kubectl_bin())
            .env("KUBECONFIG", self.data.join("admin.kubeconfig"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        c.stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        let o = c.wait_with_output().expect("kubectl output");
        let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&o.stderr));
        (o.status.success(), s)
    }

    /// Polls `f` until it returns Some, for at most `limit` (not a timing assertion:
    /// a bound so a broken cluster fails the test instead of hanging it).
    fn wait_for<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > limit {
                panic!(
                    "{what}: not reached within {limit:?}\nhull up log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = c.kill();
            let _ = c.wait();
            panic!(
                "hull up did not stop within 60 s of SIGINT\n{}",
                self.log_tail()
            );
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            for _ in 0..300 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a drained node must not have left: mounts under the data dir or hull's runtime
/// dir for it, network namespaces, nftables tables of the proxy.
fn leftovers(data: &Path) -> Vec<String> {
    let mut v = Vec::new();
    v.extend(mounts_under(data).into_iter().map(|m| format!("mount {m}")));
    let rt = hull_runtime::image::bundle::runtime_dir(data);
    v.extend(mounts_under(&rt).into_iter().map(|m| format!("mount {m}")));
    // Network namespaces of sandboxes are bind mounts (caught above) under the runtime dir.
    let o = Command::new("nft").args(["list", "tables"]).output();
    if let Ok(o) = o {
        for t in String::from_utf8_lossy(&o.stdout).lines() {
            if t.contains("hull-proxy") {
                v.push(format!("nft {t}"));
            }
        }
    }
    v
}

fn deployment_yaml() -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: {IMAGE}
        imagePullPolicy: IfNotPresent
        command: [sh, -c, 'mkdir -p /tmp/w && hostname > /tmp/w/index.html && exec httpd -f -p 80 -h /tmp/w']
        readinessProbe: {{tcpSocket: {{port: 80}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web-np}}
spec: {{type: NodePort, selector: {{app: web}}, ports: [{{port: 80, nodePort: 30981}}]}}
"#
    )
}

fn get_body(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split("\r\n\r\n").nth(1).map(|b| b.trim().to_string())
}

#[test]
fn deployment_and_service_serve_traffic_then_drain_and_resume() {
    let s = Scratch::new("up-cluster");
    let data = s.path("data");
    std::fs::create_dir_all(&data).expect("data dir");
    mkimage(&s.path("layout"), "busybox", "up");
    let st = Command::new(env!("CARGO_BIN_EXE_hull"))
        .args(["image", "import", "--data-dir"])
        .arg(&data)
        .args(["--name", "localhost/test/busybox"])
        .arg(s.path("layout"))
        .status()
        .expect("hull image import");
    assert!(st.success(), "image import failed");

    let api_port = free_port();
    let kubelet_port = free_port();
    let mut up = Up::start(&data, &s.path("up.log"), api_port, kubelet_port);
    up.wait_for("node Ready", Duration::from_secs(120), || {
        let (ok, out) = up.kubectl(&["get", "nodes", "--no-headers"]);
        (ok && out.contains("up-test-node") && out.split_whitespace().nth(1) == Some("Ready"))
            .then_some(())
    });

    let (ok, out) = up.kubectl_stdin(&["apply", "-f", "-"], &deployment_yaml());
    assert!(ok, "kubectl apply: {out}");
    up.wait_for("deployment web available", Duration::from_secs(180), || {
        let (ok, out) = up.kubectl(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.status.availableReplicas}",
        ]);
        (ok && out.trim() == "3").then_some(())
    });
    let (_, wide) = up.kubectl(&["get", "pods", "-o", "wide", "--no-headers"]);
    let running = wide.lines().filter(|l| l.contains("Running")).count();
    assert_eq!(running, 3, "pods:\n{wide}");
    assert!(
        wide.lines().all(|l| l.contains("up-test-node")),
        "every pod on the node:\n{wide}"
    );

    // NodePort on 127.0.0.1 spreads over the pods.
    let names: BTreeSet<String> = up.wait_for("NodePort answers", Duration::from_secs(60), || {
        let mut seen = BTreeSet::new();
        for _ in 0..30 {
            if let Some(b) = get_body(30981) {
                seen.insert(b);
            }
        }
        (seen.len() >= 2).then_some(seen)
    });
    assert!(
        names.iter().all(|n| n.starts_with("web-")),
        "NodePort answered by: {names:?}"
    );

    // A client pod reaches the ClusterIP Service by its DNS name.
    let (ok, out) = up.kubectl(&[
        "run",
        "client",
        &format!("--image={IMAGE}"),
        "--image-pull-policy=IfNotPresent",
        "--restart=Never",
        "--command",
        "--",
        "sleep",
        "3600",
    ]);
    assert!(ok, "kubectl run client: {out}");
    up.wait_for("client pod Ready", Duration::from_secs(90), || {
        let (ok, _) = up.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "pod/client",
            "--timeout=5s",
        ]);
        ok.then_some(())
    });
    let by_name: BTreeSet<String> = up.wait_for("web by DNS name", Duration::from_secs(60), || {
        let (ok, out) = up.kubectl(&[
            "exec",
            "client",
            "--",
            "sh",
            "-c",
            // busybox-static's wget crashes in this image; nc speaks the HTTP/1.0 we need.
            "for i in $(seq 20); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc web.default.svc.cluster.local 80 | tail -1; done",
        ]);
        let seen: BTreeSet<String> = out
            .lines()
            .filter(|l| l.starts_with("web-"))
            .map(str::to_string)
            .collect();
        (ok && seen.len() >= 2).then_some(seen)
    });
    assert!(by_name.len() >= 2, "{by_name:?}");

    // Ctrl-C drains the node and leaves nothing behind.
    up.stop();
    let left = leftovers(&data);
    assert!(left.is_empty(), "left after hull up stopped: {left:?}");

    // Running it again resumes the same cluster: the Deployment is there and serves.
    let mut up = Up::start(&data, &s.path("up2.log"), api_port, kubelet_port);
    up.wait_for(
        "deployment web available again",
        Duration::from_secs(180),
        || {
            let (ok, out) = up.kubectl(&[
                "get",
                "deploy",
                "web",
                "-o",
                "jsonpath={.status.availableReplicas}",
            ]);
            (ok && out.trim() == "3").then_some(())
        },
    );
    up.wait_for(
        "NodePort answers after resume",
        Duration::from_secs(60),
        || get_body(30981).filter(|b| b.starts_with("web-")),
    );
    up.stop();
    let left = leftovers(&data);
    assert!(left.is_empty(), "left after the second stop: {left:?}");
}
