//! Shared by the streaming tests: a `hull cri` child with a hull-bridge network of its
//! own, a pod from the local registry fixture, and a small SPDY/3.1 client.
#![allow(dead_code)]

#[path = "../../../runtime/tests/image_support/mod.rs"]
pub mod image_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hull_agent::cri::spdy::{self, Frame, HeaderCodec};
use hyper_util::rt::TokioIo;
use image_support::{Registry, Scratch, mkimage};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};

pub fn hull_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HULL_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("hull"))
        .unwrap();
    assert!(
        p.is_file(),
        "the hull binary is not built at {} (cargo build -p hull, or set HULL_BIN)",
        p.display()
    );
    p
}

/// `hull cri` as a child; SIGKILLed by PID on drop (after the pods are removed).
pub struct CriServer {
    child: Option<Child>,
}

impl CriServer {
    pub fn start(data: &Path, sock: &Path, conf: &Path) -> CriServer {
        let _ = std::fs::remove_file(sock);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.with_extension("log"))
            .unwrap();
        let child = Command::new(hull_bin())
            .args(["cri", "--data-dir"])
            .arg(data)
            .arg("--socket")
            .arg(sock)
            .arg("--cni-conf-dir")
            .arg(conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !sock.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "hull cri did not create {}",
                sock.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        CriServer { child: Some(child) }
    }
}

impl CriServer {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }
}

impl Drop for CriServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub async fn connect(sock: &Path) -> (RuntimeServiceClient<Channel>, ImageServiceClient<Channel>) {
    let sock = sock.to_path_buf();
    let ch = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let s = sock.clone();
            async move {
                // The socket file exists from bind(2), a moment before listen(2).
                let t = Instant::now();
                loop {
                    match tokio::net::UnixStream::connect(&s).await {
                        Ok(c) => return Ok::<_, std::io::Error>(TokioIo::new(c)),
                        Err(e)
                            if e.kind() == std::io::ErrorKind::ConnectionRefused
                                && t.elapsed() < Duration::from_secs(60) =>
                        {
                            tokio::time::sleep(Duration::from_millis(20)).await
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }))
        .await
        .unwrap();
    (
        RuntimeServiceClient::new(ch.clone()),
        ImageServiceClient::new(ch),
    )
}

/// A CRI server with one ready pod sandbox (labels as the kubelet sets them) and an image.
// Fields drop in order: the server goes before the registry and the scratch dir.
pub struct PodEnv {
    pub server: Option<CriServer>,
    pub rt: RuntimeServiceClient<Channel>,
    pub reg: Registry,
    pub scratch: Scratch,
    pub sock: PathBuf,
    pub image: String,
    pub pod: PodSandboxConfig,
    pub sandbox: String,
    pub logs: PathBuf,
    /// The test network's bridge (CNI DEL leaves bridges; the test removes its own).
    pub bridge: String,
}

impl PodEnv {
    pub async fn new(test: &str, ns: &str, name: &str) -> PodEnv {
        let pid = std::process::id();
        let scratch = Scratch::new(test);
        let reg = Registry::start(&scratch.path("registry"));
        mkimage(&scratch.path("img"), "busybox", "1");
        reg.push(&scratch.path("img"), "1", "t/busybox:1", &[]);
        let image = format!("{}/t/busybox:1", reg.host);
        let data = scratch.path("data");
        let conf = scratch.path("net.d");
        std::fs::create_dir_all(&conf).unwrap();
        // Unique per test process and test name, so parallel test binaries don't collide.
        let salt = test
            .bytes()
            .fold(pid, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
        let bridge = format!("hs{}", salt % 1_000_000);
        let subnet = format!("10.{}.{}.0/24", 150 + salt % 40, (salt / 40) % 250);
        std::fs::write(
            conf.join("10-test.conflist"),
            serde_json::json!({"cniVersion": "1.0.0", "name": format!("st{salt}"), "plugins": [{
                "type": "hull-bridge", "bridge": bridge, "isGateway": true,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": scratch.path("ipam")}}]})
            .to_string(),
        )
        .unwrap();
        let sock = scratch.path("cri.sock");
        let server = CriServer::start(&data, &sock, &conf);
        let (mut rt, mut img) = connect(&sock).await;
        img.pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
        let logs = scratch.path("logs");
        let uid = format!("uid-{pid}-{test}");
        let pod = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                namespace: ns.into(),
                uid: uid.clone(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: logs.display().to_string(),
            labels: [
                ("io.kubernetes.pod.name", name),
                ("io.kubernetes.pod.namespace", ns),
                ("io.kubernetes.pod.uid", uid.as_str()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..Default::default()
        };
        let sandbox = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        PodEnv {
            server: Some(server),
            rt,
            reg,
            scratch,
            sock,
            image,
            pod,
            sandbox,
            logs,
            bridge,
        }
    }

    /// Creates and starts a container running `script` under `sh -c`.
    pub async fn run(&mut self, name: &str, script: &str, stdin: bool, attempt: u32) -> String {
        let log = format!("{name}/{attempt}.log");
        self.run_with_log(name, script, stdin, attempt, &log).await
    }

    /// As `run`, with the container's log path ("" for none, as crictl without a pod
    /// log directory and critest send).
    pub async fn run_with_log(
        &mut self,
        name: &str,
        script: &str,
        stdin: bool,
        attempt: u32,
        log_path: &str,
    ) -> String {
        let cfg = self.config(name, script, stdin, attempt, log_path);
        self.create_start(cfg).await
    }

    /// A container config as the kubelet makes it (labels, image) running `script`.
    pub fn config(
        &self,
        name: &str,
        script: &str,
        stdin: bool,
        attempt: u32,
        log_path: &str,
    ) -> ContainerConfig {
        let m = self.pod.metadata.clone().unwrap();
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt,
            }),
            image: Some(ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            log_path: log_path.into(),
            stdin,
            labels: [
                ("io.kubernetes.pod.name", m.name.as_str()),
                ("io.kubernetes.pod.namespace", m.namespace.as_str()),
                ("io.kubernetes.pod.uid", m.uid.as_str()),
                ("io.kubernetes.container.name", name),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..Default::default()
        }
    }

    /// Creates and starts a container from `cfg`.
    pub async fn create_start(&mut self, cfg: ContainerConfig) -> String {
        let id = self
            .rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: self.sandbox.clone(),
                config: Some(cfg),
                sandbox_config: Some(self.pod.clone()),
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
        self.rt
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
        id
    }

    pub async fn wait_log(&self, rel: &str, needle: &str) -> String {
        let path = self.logs.join(rel);
        let t = Instant::now();
        loop {
            let s = std::fs::read_to_string(&path).unwrap_or_default();
            if s.contains(needle) {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{} never contained {needle:?}: {s}",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Removes the pod (containers, network, mounts) before the server goes.
    pub async fn teardown(mut self) {
        let _ = self
            .rt
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: self.sandbox.clone(),
            })
            .await;
        self.server.take();
    }
}

impl Drop for PodEnv {
    fn drop(&mut self) {
        // A failed test: kill the containers' monitors' pods the hard way, through the server.
        if self.server.is_some() {
            let sock = self.sock.clone();
            let sandbox = self.sandbox.clone();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let (mut c, _) = connect(&sock).await;
                    let _ = c
                        .remove_pod_sandbox(RemovePodSandboxRequest {
                            pod_sandbox_id: sandbox,
                        })
                        .await;
                });
            })
            .join();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// A SPDY/3.1 client session on any byte stream (plain TCP to the CRI, TLS to the kubelet).
pub struct Spdy<S> {
    pub s: S,
    pub codec: HeaderCodec,
}

/// Sends an upgrade request for `path` on `s`; (session, negotiated protocol).
pub async fn spdy_upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
    path: &str,
    protocols: &[&str],
) -> Result<(Spdy<S>, String), String> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    );
    for p in protocols {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).await.is_err() {
            return Err(String::from_utf8_lossy(&head).into_owned());
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    if !head.starts_with("HTTP/1.1 101") {
        let mut rest = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut rest))
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or(0);
        return Err(format!("{head}{}", String::from_utf8_lossy(&rest[..n])));
    }
    let proto = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-stream-protocol-version")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok((
        Spdy {
            s,
            codec: HeaderCodec::new(),
        },
        proto,
    ))
}

impl<S: AsyncRead + AsyncWrite + Unpin> Spdy<S> {
    pub async fn open(&mut self, sid: u32, headers: &[(&str, &str)]) {
        let f = self.codec.syn_stream(sid, headers);
        self.s.write_all(&f).await.unwrap();
    }
    pub async fn send(&mut self, sid: u32, data: &[u8], fin: bool) {
        self.s.write_all(&spdy::data(sid, fin, data)).await.unwrap();
    }
    /// The next frame (60 s at most, so a broken server fails the test instead of hanging it).
    pub async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(Duration::from_secs(60), spdy::read_frame(&mut self.s))
            .await
            .expect("no frame within 60 s")
            .ok()
            .flatten()
    }
    /// Reads until stream `until` ends (FIN); the data of every stream by id.
    pub async fn collect(&mut self, until: u32) -> std::collections::HashMap<u32, Vec<u8>> {
        let mut out: std::collections::HashMap<u32, Vec<u8>> = Default::default();
        while let Some(f) = self.next().await {
            if let Frame::Data {
                stream,
                flags,
                data,
            } = f
            {
                out.entry(stream).or_default().extend_from_slice(&data);
                if stream == until && flags & spdy::FLAG_FIN != 0 {
                    break;
                }
            }
        }
        out
    }
    /// Reads until stream `sid`'s data contains `needle`; everything read on it.
    pub async fn read_until(&mut self, sid: u32, needle: &str) -> String {
        let mut got = Vec::new();
        while let Some(f) = self.next().await {
            if let Frame::Data { stream, data, .. } = f
                && stream == sid
            {
                got.extend_from_slice(&data);
                if String::from_utf8_lossy(&got).contains(needle) {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }
}

pub fn url_parts(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    (host.to_string(), path.to_string())
}
