//! Shared by the API server tests: a real `hull` API server (in-process, on a free
//! loopback port, its own temp data dir) over SQLite or a real etcd, and helpers to drive
//! it with the real kubectl and curl.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hull_control::apiserver::{self, Options};

#[path = "../store_support/mod.rs"]
pub mod store_support;

pub use store_support::Etcd;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// A running API server; stopped (and its thread joined) on drop.
pub struct Server {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Server {
    /// Starts a server over `store_url` (None: SQLite in the data dir).
    pub fn start(test: &str, store_url: Option<String>) -> Server {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("hull-api-{test}-{}-", std::process::id()))
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let mut s = Server::start_in(&dir, store_url, None);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server with a given data dir (to restart one on the same state).
    pub fn start_in(dir: &Path, store_url: Option<String>, token_file: Option<PathBuf>) -> Server {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        Server::start_at(dir, addr, store_url, token_file)
    }

    /// Starts a server on a given address (to restart one where clients expect it).
    pub fn start_at(
        dir: &Path,
        addr: SocketAddr,
        store_url: Option<String>,
        token_file: Option<PathBuf>,
    ) -> Server {
        Server::start_configured(dir, addr, store_url, token_file, |_| {})
    }

    /// Starts a server (own temp dir) with options changed by `tune`.
    pub fn start_tuned(
        test: &str,
        store_url: Option<String>,
        tune: impl FnOnce(&mut Options),
    ) -> Server {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("hull-api-{test}-{}-", std::process::id()))
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut s = Server::start_configured(&dir, addr, store_url, None, tune);
        s._tmp = Some(tmp);
        s
    }

    fn start_configured(
        dir: &Path,
        addr: SocketAddr,
        store_url: Option<String>,
        token_file: Option<PathBuf>,
        tune: impl FnOnce(&mut Options),
    ) -> Server {
        let mut opts = Options::new(dir.to_path_buf(), addr);
        opts.store_url = store_url;
        opts.token_file = token_file;
        tune(&mut opts);
        let kubeconfig = dir.join("admin.kubeconfig");
        let _ = std::fs::remove_file(&kubeconfig);
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
        let mut server = Server {
            dir: dir.to_path_buf(),
            _tmp: None,
            addr,
            kubeconfig,
            stop: Some(tx),
            thread: Some(thread),
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        for _ in 0..600 {
            if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                let r = self.thread.take().map(|t| t.join());
                panic!("API server exited during start: {r:?}");
            }
            if self.kubeconfig.exists() {
                let out = self.kubectl(&["get", "--raw", "/readyz"]);
                if out.status.success() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("API server on {} not ready", self.addr);
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Runs kubectl against this server.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.kubectl_env(args, stdin, &[])
    }

    pub fn kubectl_env(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
        use std::io::Write;
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HOME", &self.dir)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .expect("run kubectl (tests/setup installs kubectl 1.35)");
        if let Some(input) = stdin
            && let Some(mut s) = child.stdin.take()
        {
            let _ = s.write_all(input.as_bytes());
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// kubectl that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl that must fail; returns stderr.
    pub fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_stdin(args, stdin);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// curl with the CA (and, unless `anonymous`, the admin client certificate).
    pub fn curl(&self, args: &[&str], anonymous: bool) -> (u16, String) {
        let ca = self.dir.join("ca.crt");
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
            .arg(&ca);
        if !anonymous {
            cmd.arg("--cert")
                .arg(self.dir.join("admin.crt"))
                .arg("--key")
                .arg(self.dir.join("admin.key"));
        }
        let out = cmd.args(args).output().expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Writes a kubeconfig for `user` in `groups` (a client certificate from the server's CA).
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> PathBuf {
        let (cert, key) = apiserver::tls::issue_client_cert_from_dir(&self.dir, user, groups)
            .expect("issue client cert");
        let ca = std::fs::read_to_string(self.dir.join("ca.crt")).expect("ca.crt");
        let text = apiserver::kubeconfig::render(&self.url(), &ca, &cert, &key, user);
        let safe: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = self.dir.join(format!("{safe}.kubeconfig"));
        apiserver::kubeconfig::write(&path, &text).expect("write kubeconfig");
        path
    }

    /// Runs kubectl with another kubeconfig.
    pub fn kubectl_kc(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut full = vec!["--kubeconfig", kubeconfig.to_str().unwrap_or_default()];
        full.extend_from_slice(args);
        // The later --kubeconfig wins in kubectl's flag parsing.
        self.kubectl_stdin(&full, stdin)
    }

    /// Stops the server and waits for it.
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

/// Starts a real etcd for a test (blocking wrapper over the store tests' helper).
pub fn etcd() -> Etcd {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(Etcd::start())
}
