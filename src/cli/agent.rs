//! `hull agent`: the node agent (kubelet role) against any API server, driving a CRI
//! runtime over its gRPC socket — `hull cri` started as a child unless `--cri-endpoint`
//! names one (containerd works too) — and, given the cluster CA, the kubelet API.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hull_agent::{kubelet_api, node};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Kubeconfig to reach the API server (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long, env = "KUBECONFIG", conflicts_with = "server")]
    pub kubeconfig: Option<PathBuf>,

    /// API server URL (with --token), instead of a kubeconfig.
    #[arg(long, requires = "token")]
    pub server: Option<String>,

    /// Bearer token for --server.
    #[arg(long, env = "HULL_TOKEN", requires = "server")]
    pub token: Option<String>,

    /// CA bundle for --server (default: the server's certificate is not verified).
    #[arg(long)]
    pub certificate_authority: Option<PathBuf>,

    /// This node's name (default: the hostname).
    #[arg(long, env = "HULL_NODE_NAME")]
    pub node_name: Option<String>,

    /// The CRI socket; without it `hull cri` is started on DATA/cri.sock.
    #[arg(long)]
    pub cri_endpoint: Option<PathBuf>,

    /// The node's InternalIP (default: the source address of the default route).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,

    /// Nameservers of ClusterFirst pods; repeatable.
    #[arg(long = "cluster-dns", default_value = "10.96.0.10")]
    pub cluster_dns: Vec<IpAddr>,

    /// The cluster's DNS zone.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,

    /// The kubelet API port (advertised in the Node status; served with --ca-cert/--ca-key).
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,

    /// Cluster CA certificate and key: serve the kubelet API with a certificate from them.
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
}

/// `hull cri` as a child of the agent, killed (by PID) when the agent exits.
struct CriChild(Child);

impl Drop for CriChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_cri(data_dir: &Path, sock: &Path) -> anyhow::Result<CriChild> {
    let exe = std::env::current_exe().context("locating the hull binary")?;
    let _ = std::fs::remove_file(sock);
    let child = Command::new(exe)
        .arg("cri")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--socket")
        .arg(sock)
        .stdin(Stdio::null())
        .spawn()
        .context("starting hull cri")?;
    let mut c = CriChild(child);
    let t = Instant::now();
    while !sock.exists() {
        if let Some(st) = c.0.try_wait()? {
            anyhow::bail!("hull cri exited during start: {st}");
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "hull cri did not create {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(c)
}

async fn client(args: &AgentArgs) -> anyhow::Result<kube::Client> {
    let cfg = if let (Some(server), Some(token)) = (&args.server, &args.token) {
        // An in-memory kubeconfig, so kube-rs loads the CA file as it would from disk.
        let cluster = match &args.certificate_authority {
            Some(ca) => serde_json::json!({"server": server, "certificate-authority": ca}),
            None => serde_json::json!({"server": server, "insecure-skip-tls-verify": true}),
        };
        let doc = serde_json::json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "agent",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "agent", "context": {"cluster": "c", "user": "u"}}],
        });
        let kc =
            kube::config::Kubeconfig::from_yaml(&doc.to_string()).context("--server/--token")?;
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .context("--server/--token")?
    } else if let Some(path) = &args.kubeconfig {
        let kc = kube::config::Kubeconfig::read_from(path)
            .with_context(|| format!("reading kubeconfig {}", path.display()))?;
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .with_context(|| format!("kubeconfig {}", path.display()))?
    } else {
        kube::Config::infer()
            .await
            .context("no kubeconfig (--kubeconfig or --server/--token)")?
    };
    kube::Client::try_from(cfg).context("building the API client")
}

pub fn run(data_dir: &Path, args: AgentArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let data_dir = std::fs::canonicalize(data_dir)
        .with_context(|| format!("resolve {}", data_dir.display()))?;
    let node_name = args
        .node_name
        .clone()
        .unwrap_or_else(node::machine::hostname);
    let (socket, _cri) = match &args.cri_endpoint {
        Some(s) => (s.clone(), None),
        None => {
            let s = data_dir.join("cri.sock");
            let c = start_cri(&data_dir, &s)?;
            (s, Some(c))
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let client = client(&args).await?;
        let mut opts = node::Options::new(&node_name, socket.clone(), data_dir.join("agent"));
        opts.cluster_dns = args.cluster_dns.clone();
        opts.cluster_domain = args.cluster_domain.clone();
        opts.node_ip = args.node_ip;
        opts.kubelet_port = args.kubelet_port;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let kubelet = match (&args.ca_cert, &args.ca_key) {
            (Some(cert), Some(key)) => {
                let mut api = kubelet_api::Options::new(&node_name, cert.clone(), key.clone(), socket);
                api.listen = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), args.kubelet_port);
                api.node_ips = args.node_ip.into_iter().collect();
                let mut rx = rx.clone();
                Some(tokio::spawn(async move {
                    let stop = async move {
                        let _ = rx.wait_for(|s| *s).await;
                    };
                    if let Err(e) = kubelet_api::serve(api, stop).await {
                        eprintln!("hull agent: kubelet API: {e}");
                    }
                }))
            }
            _ => None,
        };
        let mut rx2 = rx.clone();
        let signals = tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                _ = rx2.wait_for(|s| *s) => {}
            }
            let _ = tx.send(true);
        });
        let mut rx3 = rx;
        let r = node::run(client, opts, async move {
            let _ = rx3.wait_for(|s| *s).await;
        })
        .await;
        signals.abort();
        if let Some(k) = kubelet {
            k.abort();
        }
        r.context("hull agent")
    })?;
    Ok(ExitCode::SUCCESS)
}
