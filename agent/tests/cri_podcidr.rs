//! UpdateRuntimeConfig's pod CIDR applied to hull's default network (as root, real
//! kernel, a bridge of the test's own): with `--await-pod-cidr` NetworkReady is false
//! (with a reason) until the CIDR comes, then the default conflist is written from it;
//! a new CIDR sends new pods into the new range while a running pod keeps its address
//! and lease (released by its StopPodSandbox); a bad CIDR is InvalidArgument naming the
//! field and changes nothing; the CIDR survives a restart of the server.

#[path = "../../runtime/tests/image_support/mod.rs"]
mod image_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use image_support::Scratch;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint};

fn hull_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HULL_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().and_then(|d| d.parent()).unwrap().join("hull");
    assert!(
        p.is_file(),
        "the hull binary is not built at {}",
        p.display()
    );
    p
}

/// The server, the pods it made and the bridge: removed on drop, even if the test fails.
struct Env {
    server: Option<Child>,
    data: PathBuf,
    sock: PathBuf,
    conf: PathBuf,
    bridge: String,
    pods: Vec<String>,
    _scratch: Scratch,
}

impl Env {
    fn start(&mut self) {
        let _ = std::fs::remove_file(&self.sock);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.with_extension("log"))
            .unwrap();
        let child = Command::new(hull_bin())
            .args(["cri", "--await-pod-cidr", "--cni-bridge", &self.bridge])
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--socket")
            .arg(&self.sock)
            .arg("--cni-conf-dir")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.server = Some(child);
        let t = Instant::now();
        while !self.sock.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "hull cri did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn conflist(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.conf.join("10-hull.conflist")).unwrap()).unwrap()
    }

    fn lease(&self, ip: &str) -> PathBuf {
        self.data.join("cni/networks/hull").join(ip)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.server.is_some() && !self.pods.is_empty() {
            let (sock, pods) = (self.sock.clone(), self.pods.clone());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let mut c = connect(&sock).await;
                    for p in pods {
                        let _ = c
                            .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: p })
                            .await;
                    }
                });
            })
            .join();
        }
        self.stop();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

async fn connect(sock: &Path) -> RuntimeServiceClient<Channel> {
    let sock = sock.to_path_buf();
    let ch = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let s = sock.clone();
            async move {
                let t = Instant::now();
                loop {
                    match tokio::net::UnixStream::connect(&s).await {
                        Ok(c) => return Ok::<_, std::io::Error>(TokioIo::new(c)),
                        Err(e) if t.elapsed() < Duration::from_secs(60) => {
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(20)).await
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }))
        .await
        .unwrap();
    RuntimeServiceClient::new(ch)
}

async fn network_ready(rt: &mut RuntimeServiceClient<Channel>) -> RuntimeCondition {
    rt.status(StatusRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap()
}

async fn set_cidr(rt: &mut RuntimeServiceClient<Channel>, cidr: &str) -> Result<(), tonic::Status> {
    rt.update_runtime_config(UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig {
            network_config: Some(NetworkConfig {
                pod_cidr: cidr.into(),
            }),
        }),
    })
    .await
    .map(|_| ())
}

async fn run_pod(
    env: &mut Env,
    rt: &mut RuntimeServiceClient<Channel>,
    name: &str,
) -> (String, String) {
    let pid = std::process::id();
    let id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: name.into(),
                    namespace: "default".into(),
                    uid: format!("uid-{pid}-{name}"),
                    attempt: 0,
                }),
                hostname: name.into(),
                ..Default::default()
            }),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    env.pods.push(id.clone());
    (id.clone(), pod_ip(rt, &id).await)
}

async fn pod_ip(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> String {
    rt.pod_sandbox_status(PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .and_then(|s| s.network)
    .map(|n| n.ip)
    .unwrap_or_default()
}

/// The pod's kernel answers a TCP connection to a closed port with a reset: the pod
/// is reachable from the host over the bridge.
fn reachable(ip: &str) -> bool {
    let addr = std::net::SocketAddr::new(ip.parse().unwrap(), 9);
    matches!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(20)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

fn in_subnet(ip: &str, prefix24: &str) -> bool {
    ip.starts_with(prefix24) && ip.rsplit('.').next().is_some_and(|h| h != "0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_cidr_from_update_runtime_config() {
    let pid = std::process::id();
    let scratch = Scratch::new("cri-podcidr");
    let mut env = Env {
        server: None,
        data: scratch.path("data"),
        sock: scratch.path("cri.sock"),
        conf: scratch.path("net.d"),
        bridge: format!("hp{}", pid % 1_000_000),
        pods: Vec::new(),
        _scratch: scratch,
    };
    env.start();
    let mut rt = connect(&env.sock).await;

    // No pod CIDR yet: no network, and NetworkReady says why.
    let c = network_ready(&mut rt).await;
    assert!(!c.status, "{c:?}");
    assert_eq!(c.reason, "NetworkPluginNotReady");
    assert!(c.message.contains("pod CIDR"), "{c:?}");
    assert!(!env.conf.join("10-hull.conflist").exists());

    // Bad CIDRs: InvalidArgument naming the field, nothing written.
    for bad in [
        "10.1.2.0/31",
        "10.1.2.3/24",
        "nonsense",
        "10.1.0.0/24,10.2.0.0/24",
    ] {
        let e = set_cidr(&mut rt, bad).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e:?}");
        assert!(
            e.message()
                .contains("runtime_config.network_config.pod_cidr"),
            "{}",
            e.message()
        );
    }
    assert!(!env.conf.join("10-hull.conflist").exists());

    let (a, b) = (60 + pid % 40, (pid / 40) % 250);
    let first = format!("10.{a}.{b}.");
    let second = format!("10.{a}.{}.", (b + 1) % 250);
    set_cidr(&mut rt, &format!("{first}0/24")).await.unwrap();
    let c = network_ready(&mut rt).await;
    assert!(c.status, "{c:?}");
    let conf = env.conflist();
    assert_eq!(conf["plugins"][0]["bridge"], env.bridge.as_str());
    assert_eq!(
        conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
        format!("{first}0/24")
    );

    let (p1, ip1) = run_pod(&mut env, &mut rt, "cidr-one").await;
    assert!(
        in_subnet(&ip1, &first),
        "pod one got {ip1}, not in {first}0/24"
    );
    assert!(env.lease(&ip1).exists());

    // The node's CIDR changes: new pods get addresses of the new range, the running
    // pod keeps its address and lease and stays reachable.
    set_cidr(&mut rt, &format!("{second}0/24")).await.unwrap();
    assert_eq!(
        env.conflist()["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
        format!("{second}0/24")
    );
    let (p2, ip2) = run_pod(&mut env, &mut rt, "cidr-two").await;
    assert!(
        in_subnet(&ip2, &second),
        "pod two got {ip2}, not in {second}0/24"
    );
    assert_eq!(pod_ip(&mut rt, &p1).await, ip1);
    assert!(env.lease(&ip1).exists(), "pod one's lease is gone");
    let (i1, i2) = (ip1.clone(), ip2.clone());
    let (r1, r2) = tokio::task::spawn_blocking(move || (reachable(&i1), reachable(&i2)))
        .await
        .unwrap();
    assert!(
        r1 && r2,
        "pods not reachable over the bridge: {ip1} {r1}, {ip2} {r2}"
    );

    // The same CIDR again changes nothing; a stopped old pod releases its old lease.
    set_cidr(&mut rt, &format!("{second}0/24")).await.unwrap();
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: p1.clone(),
    })
    .await
    .unwrap();
    assert!(!env.lease(&ip1).exists(), "pod one's lease left after stop");
    assert!(env.lease(&ip2).exists());

    // A restart keeps the node's CIDR: the network is ready at once.
    env.stop();
    env.start();
    let mut rt = connect(&env.sock).await;
    let c = network_ready(&mut rt).await;
    assert!(c.status, "{c:?}");
    for p in [p1, p2] {
        rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: p })
            .await
            .unwrap();
    }
    env.pods.clear();
    assert!(
        !env.lease(&ip2).exists(),
        "pod two's lease left after remove"
    );
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", &env.bridge])
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "veths left on {}: {}",
        env.bridge,
        String::from_utf8_lossy(&out.stdout)
    );
    let run = hull_runtime::image::bundle::runtime_dir(&env.data);
    assert!(
        image_support::mounts_under(&run).is_empty(),
        "mounts left under {}",
        run.display()
    );
}
