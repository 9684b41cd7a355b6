//! A one-node cluster for the node agent's tests, every piece real: `hull server` (the
//! built binary, SQLite in a scratch dir, a free loopback port), `hull cri` on a scratch
//! socket with its own bridge and subnet, `hull agent` as a process (so it can be
//! SIGKILLed), and busybox from a real `docker-registry` on 127.0.0.1. Everything is
//! stopped by PID and removed on drop.
#![allow(dead_code)]

#[path = "../../../runtime/tests/image_support/mod.rs"]
pub mod image_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use image_support::{Registry, Scratch, free_port, mkimage};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};

pub fn hull_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HULL_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test exe");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("hull"))
        .expect("target dir");
    assert!(
        p.is_file(),
        "the hull binary is not built at {} (cargo build -p hull, or set HULL_BIN)",
        p.display()
    );
    p
}

struct Proc(Option<Child>);

impl Proc {
    fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn(args: &[&str], log: &Path) -> Proc {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let child = Command::new(hull_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone().expect("log fd"))
        .stderr(f)
        .env("HULL_LOG", "info,kube=warn,tower=warn,hyper=warn")
        .spawn()
        .expect("spawn hull");
    Proc(Some(child))
}

pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Cluster {
    pub node: String,
    pub image: String,
    pub kubeconfig: PathBuf,
    pub agent_data: PathBuf,
    pub cri_sock: PathBuf,
    /// This test's bridge (`hnNNNNN`), deleted when the cluster goes.
    pub bridge: String,
    pub rt: tokio::runtime::Runtime,
    pub client: kube::Client,
    agent: Proc,
    cri: Proc,
    server: Proc,
    _reg: Registry,
    // Last: removed (mounts detached) after every process is gone.
    pub scratch: Scratch,
}

impl Cluster {
    pub fn start(test: &str) -> Cluster {
        let pid = std::process::id();
        let scratch = Scratch::new(&format!("node-{test}"));
        let reg = Registry::start(&scratch.path("registry"));
        mkimage(&scratch.path("img"), "busybox", "1");
        reg.push(&scratch.path("img"), "1", "t/busybox:1", &[]);
        let image = format!("{}/t/busybox:1", reg.host);

        let port = free_port();
        let sdata = scratch.path("server");
        let server = spawn(
            &[
                "server",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                sdata.to_str().unwrap(),
            ],
            &scratch.path("server.log"),
        );
        let kubeconfig = sdata.join("admin.kubeconfig");
        wait_for("hull server's admin.kubeconfig", 60, || {
            kubeconfig.exists().then_some(())
        });

        // Per-test bridge and subnet: tests run side by side.
        let h = test
            .bytes()
            .fold(pid, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
        let conf = scratch.path("net.d");
        std::fs::create_dir_all(&conf).unwrap();
        let subnet = format!("10.{}.{}.0/24", 150 + h % 50, (h / 50) % 250);
        let bridge = format!("hn{}", h % 100_000);
        std::fs::write(
            conf.join("10-test.conflist"),
            serde_json::json!({"cniVersion": "1.0.0", "name": format!("nt{}", h % 100_000), "plugins": [{
                "type": "hull-bridge", "bridge": bridge, "isGateway": true,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": scratch.path("ipam")}}]})
            .to_string(),
        )
        .unwrap();
        let cri_sock = scratch.path("cri.sock");
        let cri = spawn(
            &[
                "cri",
                "--data-dir",
                scratch.path("cri").to_str().unwrap(),
                "--socket",
                cri_sock.to_str().unwrap(),
                "--cni-conf-dir",
                conf.to_str().unwrap(),
            ],
            &scratch.path("cri.log"),
        );
        wait_for("hull cri's socket", 60, || cri_sock.exists().then_some(()));

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let kc = kubeconfig.clone();
        let client = rt.block_on(async move {
            let k = kube::config::Kubeconfig::read_from(&kc).unwrap();
            let cfg = kube::Config::from_custom_kubeconfig(k, &Default::default())
                .await
                .unwrap();
            kube::Client::try_from(cfg).unwrap()
        });
        let node = format!("node-{test}-{pid}").replace('_', "-");
        let mut c = Cluster {
            node,
            image,
            kubeconfig,
            agent_data: scratch.path("agent"),
            cri_sock,
            bridge,
            rt,
            client,
            agent: Proc(None),
            cri,
            server,
            _reg: reg,
            scratch,
        };
        c.start_agent();
        c
    }

    pub fn start_agent(&mut self) {
        self.agent = spawn(
            &[
                "agent",
                "--kubeconfig",
                self.kubeconfig.to_str().unwrap(),
                "--node-name",
                &self.node,
                "--cri-endpoint",
                self.cri_sock.to_str().unwrap(),
                "--node-ip",
                "127.0.0.1",
                "--kubelet-port",
                "0",
                // Tests of the agent alone: no service proxy or DNS in the host namespace.
                "--no-proxy",
                // Not kubelet's default, so the Node's capacity shows the flag was used.
                "--max-pods",
                "150",
                "--data-dir",
                self.agent_data.to_str().unwrap(),
            ],
            &self.scratch.path("agent.log"),
        );
    }

    pub fn kill_agent(&mut self) {
        self.agent.kill9();
    }

    pub fn log(&self, which: &str) -> String {
        std::fs::read_to_string(self.scratch.path(&format!("{which}.log"))).unwrap_or_default()
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    pub fn create<K>(&self, obj: serde_json::Value) -> K
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + serde::Serialize,
        <K as kube::Resource>::DynamicType: Default,
    {
        let o: K = serde_json::from_value(obj).expect("object");
        let api: Api<K> = Api::namespaced(self.client.clone(), "default");
        self.rt
            .block_on(api.create(&PostParams::default(), &o))
            .expect("create")
    }

    /// Creates a pod bound to this node (no scheduler involved).
    pub fn pod(&self, name: &str, mut spec: serde_json::Value) -> Pod {
        spec["nodeName"] = serde_json::json!(self.node);
        if spec.get("automountServiceAccountToken").is_none() {
            spec["automountServiceAccountToken"] = serde_json::json!(false);
        }
        self.create(serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": name}}, "spec": spec}))
    }

    pub fn get(&self, name: &str) -> Option<Pod> {
        self.rt.block_on(self.pods().get_opt(name)).ok().flatten()
    }

    /// Polls the pod until `f` says yes (bounded); the last pod seen is in the panic.
    pub fn wait_pod(&self, name: &str, what: &str, secs: u64, f: impl Fn(&Pod) -> bool) -> Pod {
        let t = Instant::now();
        let mut last = None;
        loop {
            if let Some(p) = self.get(name) {
                if f(&p) {
                    return p;
                }
                last = Some(p);
            }
            if t.elapsed() > Duration::from_secs(secs) {
                panic!(
                    "pod {name}: timed out waiting for {what}; last status: {}\nagent log tail:\n{}",
                    serde_json::to_string_pretty(&last.and_then(|p| p.status)).unwrap_or_default(),
                    tail(&self.log("agent"), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn delete(&self, name: &str, grace: Option<u32>) {
        let dp = DeleteParams {
            grace_period_seconds: grace,
            ..Default::default()
        };
        let _ = self.rt.block_on(self.pods().delete(name, &dp));
    }

    pub fn wait_gone(&self, name: &str, secs: u64) {
        let t = Instant::now();
        while self.get(name).is_some() {
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "pod {name} not deleted; agent log tail:\n{}",
                tail(&self.log("agent"), 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The container log of `pod`/`container` (attempt `n`), as the CRI wrote it.
    pub fn container_log(&self, pod: &Pod, container: &str, n: u32) -> String {
        let dir = self.agent_data.join("agent/logs/pods").join(format!(
            "default_{}_{}",
            pod.metadata.name.as_deref().unwrap_or_default(),
            pod.metadata.uid.as_deref().unwrap_or_default()
        ));
        std::fs::read_to_string(dir.join(container).join(format!("{n}.log")))
            .unwrap_or_default()
            .lines()
            .map(|l| l.splitn(4, ' ').nth(3).unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// CRI sandboxes of pod `uid` (through `crictl`-free gRPC: the socket is ours).
    pub fn sandboxes_of(&self, uid: &str) -> usize {
        let sock = self.cri_sock.clone();
        let uid = uid.to_string();
        self.rt.block_on(async move {
            let mut rt = cri_client(&sock).await;
            rt.list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest {
                filter: Some(k8s_cri::v1::PodSandboxFilter {
                    label_selector: [("io.kubernetes.pod.uid".to_string(), uid)]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
            })
            .await
            .map(|r| r.into_inner().items.len())
            .unwrap_or(usize::MAX)
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Pods first (so their containers, mounts and cgroups go), then the processes.
        if self.agent.0.is_some() {
            let names: Vec<String> = self
                .rt
                .block_on(self.pods().list(&Default::default()))
                .map(|l| {
                    l.items
                        .into_iter()
                        .filter_map(|p| p.metadata.name)
                        .collect()
                })
                .unwrap_or_default();
            for n in &names {
                self.delete(n, Some(0));
            }
            let t = Instant::now();
            let dir = self.agent_data.join("agent/pods");
            while t.elapsed() < Duration::from_secs(20)
                && std::fs::read_dir(&dir)
                    .map(|d| d.count() > 0)
                    .unwrap_or(false)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.agent.kill9();
        // Sandboxes left (a failed test): stop them through the CRI before it goes.
        let sock = self.cri_sock.clone();
        self.rt.block_on(async move {
            let mut rt = cri_client(&sock).await;
            if let Ok(r) = rt
                .list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest::default())
                .await
            {
                for s in r.into_inner().items {
                    let _ = rt
                        .remove_pod_sandbox(k8s_cri::v1::RemovePodSandboxRequest {
                            pod_sandbox_id: s.id,
                        })
                        .await;
                }
            }
        });
        self.cri.kill9();
        self.server.kill9();
        // The plugin made the bridge (and the route to its subnet) on the first pod;
        // nothing else removes it. Deleting the link takes its addresses and routes.
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            let _ = Command::new("ip")
                .args(["link", "del", "dev", &self.bridge])
                .status();
        }
    }
}

pub async fn cri_client(
    sock: &Path,
) -> k8s_cri::v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel> {
    use hyper_util::rt::TokioIo;
    let sock = sock.to_path_buf();
    let ch = tonic::transport::Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let s = sock.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(s).await?))
            }
        }))
        .await
        .unwrap();
    k8s_cri::v1::runtime_service_client::RuntimeServiceClient::new(ch)
}

pub fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

pub fn cond(p: &Pod, ty: &str) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| c.status.clone())
}

pub fn cstatus<'a>(
    p: &'a Pod,
    name: &str,
) -> Option<&'a k8s_openapi::api::core::v1::ContainerStatus> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == name)
}
