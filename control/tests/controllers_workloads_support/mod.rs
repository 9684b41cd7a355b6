//! Shared by the workload controller tests: a real in-process `hull server` (SQLite, its
//! own temp dir, a free loopback port) running the controller manager with a clock the
//! test can advance, and kubectl 1.35 helpers. Pods become Ready only when a test writes
//! their status, as a kubelet would.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hull_control::apiserver::{self, Options};
use hull_control::controllers::workload_util::Clock;
use serde_json::Value;

pub struct Server {
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub clock: Clock,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Server {
    pub fn start(test: &str) -> Server {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("hull-wl-{test}-{}-", std::process::id()))
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut opts = Options::new(dir.clone(), addr);
        // Quick leader election so a test does not wait out a Lease.
        opts.manager.retry_period = Duration::from_millis(500);
        // Fake nodes have no agent renewing their Lease: keep node lifecycle from
        // tainting them unreachable in the middle of a test.
        opts.manager.node_monitor_grace_period = Duration::from_secs(3600);
        let clock = opts.manager.clock.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        init_log();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(apiserver::run(opts, async move {
                let _ = rx.await;
            }))
            .map_err(|e| e.to_string())
        });
        let s = Server {
            kubeconfig: dir.join("admin.kubeconfig"),
            dir,
            _tmp: tmp,
            clock,
            stop: Some(tx),
            thread: Some(thread),
        };
        s.wait(Duration::from_secs(60), "API server ready", || {
            s.kubeconfig.exists() && s.kubectl(&["get", "--raw", "/readyz"]).status.success()
        });
        s
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HOME", &self.dir)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl (tests/setup installs kubectl 1.35)");
        if let Some(input) = stdin
            && let Some(mut s) = child.stdin.take()
        {
            let _ = s.write_all(input.as_bytes());
        }
        child.wait_with_output().expect("kubectl output")
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    /// kubectl that must succeed; returns stdout. A 409 is retried: hull's PATCH handler
    /// today treats the patched object's own resourceVersion as a precondition, so a
    /// patch racing a controller's write fails instead of being retried server-side
    /// (reported to the api owner).
    pub fn ok(&self, args: &[&str]) -> String {
        let mut out = self.kubectl(args);
        for _ in 0..5 {
            if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("(Conflict)")
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            out = self.kubectl(args);
        }
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn apply(&self, ns: &str, yaml: &str) {
        let out = self.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], Some(yaml));
        assert!(
            out.status.success(),
            "apply failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl get -o json` items.
    pub fn items(&self, ns: &str, what: &str, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["get", what, "-n", ns, "-o", "json"];
        args.extend_from_slice(extra);
        let v: Value = serde_json::from_str(&self.ok(&args)).expect("json");
        v["items"].as_array().cloned().unwrap_or_default()
    }

    pub fn get(&self, ns: &str, what: &str, name: &str) -> Value {
        serde_json::from_str(&self.ok(&["get", what, name, "-n", ns, "-o", "json"])).expect("json")
    }

    /// Pods of a selector that are not being deleted.
    pub fn live_pods(&self, ns: &str, selector: &str) -> Vec<Value> {
        self.items(ns, "pods", &["-l", selector])
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect()
    }

    /// What a kubelet would write for a running, ready pod.
    pub fn make_ready(&self, ns: &str, pod: &str) {
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let patch = format!(
            r#"{{"status":{{"phase":"Running","conditions":[{{"type":"Ready","status":"True","lastTransitionTime":"{now}"}}]}}}}"#
        );
        self.ok(&[
            "patch",
            "pod",
            pod,
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ]);
    }

    pub fn set_phase(&self, ns: &str, pod: &str, phase: &str) {
        let patch = format!(r#"{{"status":{{"phase":"{phase}"}}}}"#);
        self.ok(&[
            "patch",
            "pod",
            pod,
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ]);
    }

    /// Polls `f` until true; panics with `what` after `limit` (a bound against hangs, not
    /// a timing assertion).
    pub fn wait(&self, limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("timed out waiting for {what}");
    }

    /// A fake node with capacity and a Ready condition (no agent behind it).
    pub fn node(&self, name: &str, labels: &str, taints: &str) {
        self.apply(
            "default",
            &format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{kubernetes.io/hostname: {name}{labels}}}}}\nspec: {{taints: [{taints}]}}\n"
            ),
        );
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let status = format!(
            r#"{{"status":{{"capacity":{{"cpu":"4","memory":"8Gi","pods":"110"}},"allocatable":{{"cpu":"4","memory":"8Gi","pods":"110"}},"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","lastHeartbeatTime":"{now}","lastTransitionTime":"{now}"}}]}}}}"#
        );
        self.ok(&[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ]);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn name(v: &Value) -> String {
    v["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `HULL_TEST_LOG=<file>` sends the in-process server's tracing (filter from `RUST_LOG`,
/// default debug for the controllers) to that file: a failure under load can then be read
/// after the fact.
fn init_log() {
    let Some(path) = std::env::var_os("HULL_TEST_LOG") else {
        return;
    };
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("hull_control=debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .try_init();
}

pub fn is_ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}
