//! Shared by the cluster controller tests: a real `hull server` (in-process, free loopback
//! port, own temp data dir, SQLite) running the controller manager with options the test
//! picks, kubectl 1.35 against it, a kube-rs client, and polling helpers.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hull_control::apiserver::{self, Options};
use hull_control::manager::ManagerOptions;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// A running server; stopped (thread joined, temp dir removed) on drop.
pub struct Cluster {
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    pub manager: ManagerOptions,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    pub rt: tokio::runtime::Runtime,
}

impl Cluster {
    pub fn start(test: &str, tune: impl FnOnce(&mut ManagerOptions)) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("hull-ctl-{test}-{}-", std::process::id()))
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let mut manager = ManagerOptions::default();
        tune(&mut manager);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut c = Cluster {
            kubeconfig: dir.join("admin.kubeconfig"),
            dir,
            _tmp: tmp,
            addr: "127.0.0.1:0".parse().expect("addr"),
            manager,
            stop: None,
            thread: None,
            rt,
        };
        c.launch();
        c
    }

    /// Stops the server and starts it again on the same data (a new leader, a new port).
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    fn launch(&mut self) {
        self.addr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut opts = Options::new(self.dir.clone(), self.addr);
        opts.manager = self.manager.clone();
        let _ = std::fs::remove_file(&self.kubeconfig);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
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
        self.stop = Some(tx);
        self.thread = Some(thread);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        for _ in 0..600 {
            if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                let r = self.thread.take().map(|t| t.join());
                panic!("API server exited during start: {r:?}");
            }
            if self.kubeconfig.exists()
                && self.kubectl(&["get", "--raw", "/readyz"]).status.success()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("API server on {} not ready", self.addr);
    }

    /// A kube-rs client as the admin.
    pub fn client(&self) -> kube::Client {
        let text = std::fs::read_to_string(&self.kubeconfig).expect("kubeconfig");
        self.rt.block_on(async {
            let kc = kube::config::Kubeconfig::from_yaml(&text).expect("kubeconfig parses");
            let cfg = kube::Config::from_custom_kubeconfig(
                kc,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .expect("kube config");
            kube::Client::try_from(cfg).expect("client")
        })
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

    /// kubectl that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_stdin(args, None)
    }

    pub fn ok_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_stdin(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of a manifest.
    pub fn apply(&self, yaml: &str) {
        self.ok_stdin(&["apply", "-f", "-"], Some(yaml));
    }

    /// Output of a kubectl command (stdout, trimmed) or the empty string when it fails.
    pub fn get(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        if out.status.success() {
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        } else {
            String::new()
        }
    }

    /// Polls `f` until it returns Some (generous bound: controllers react in well under a
    /// second, but the machine is shared); panics with `what` and the last value.
    pub fn eventually<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls a kubectl query until its output satisfies `pred`; returns that output.
    pub fn wait_for(&self, what: &str, args: &[&str], pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = self.get(args);
            if pred(&out) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last `kubectl {}`: {out:?}",
                args.join(" ")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A fake Node (no agent): Ready, with capacity, as acceptance 06 writes them.
    pub fn node(&self, name: &str) {
        self.apply(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{kubernetes.io/hostname: {name}}}}}\n"
        ));
        self.ok(&[
            "patch", "node", name, "--subresource=status", "--type=merge", "-p",
            &format!(
                r#"{{"status":{{"capacity":{{"cpu":"4","memory":"8Gi","pods":"110"}},"allocatable":{{"cpu":"4","memory":"8Gi","pods":"110"}},"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","lastHeartbeatTime":"{now}","lastTransitionTime":"{now}"}}]}}}}"#,
                now = now()
            ),
        ]);
    }

    /// Renews (or creates) a node's Lease in kube-node-lease.
    pub fn renew(&self, name: &str) {
        self.apply(&format!(
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: {name}, namespace: kube-node-lease}}\nspec: {{holderIdentity: {name}, leaseDurationSeconds: 40, renewTime: \"{}\"}}\n",
            now_micro()
        ));
    }

    /// Renews a node's Lease every 500 ms until the returned guard is dropped.
    pub fn renewer(&self, node: &str) -> Renewer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, kubeconfig, dir, node) = (
            stop.clone(),
            self.kubeconfig.clone(),
            self.dir.clone(),
            node.to_string(),
        );
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let lease = format!(
                    "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: {node}, namespace: kube-node-lease}}\nspec: {{holderIdentity: {node}, leaseDurationSeconds: 40, renewTime: \"{}\"}}\n",
                    now_micro()
                );
                let mut child = match Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(["apply", "-f", "-"])
                    .env("HOME", &dir)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                {
                    Ok(c) => c,
                    Err(_) => return,
                };
                if let Some(mut s) = child.stdin.take() {
                    use std::io::Write;
                    let _ = s.write_all(lease.as_bytes());
                }
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Renewer {
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("API server failed: {e}"),
                Err(_) => panic!("API server thread panicked"),
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub fn now_micro() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// Stops renewing a Lease when dropped.
pub struct Renewer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
