//! `hull agent`: the node agent (kubelet role) against any API server, driving a CRI
//! runtime over its gRPC socket — `hull cri` started as a child unless `--cri-endpoint`
//! names one (containerd works too) — with the kubelet API, the service proxy and cluster
//! DNS, and routes to the other nodes' pod subnets.
//!
//! Joining a cluster: `hull agent --server URL --token <bootstrap token>
//! --discovery-token-ca-cert-hash sha256:…` (what `hull token create --print-join-command`
//! prints) does kubelet's TLS bootstrap once — CA found by its pin, a client certificate
//! for `system:node:<name>` through a CSR — and keeps it in DATA/pki; later starts reuse
//! it. The kubelet API's serving certificate comes from a kubelet-serving CSR.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hull_agent::{bootstrap, kubelet_api, node};

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

    /// CA bundle for --server.
    #[arg(long)]
    pub certificate_authority: Option<PathBuf>,

    /// With a bootstrap --token: the `sha256:<hex>` pin of the cluster CA's public key
    /// (`hull token create --print-join-command` prints it).
    #[arg(long)]
    pub discovery_token_ca_cert_hash: Option<String>,

    /// Trust whatever certificate --server presents (only for a plain bearer --token).
    #[arg(long)]
    pub insecure_skip_tls_verify: bool,

    /// Do not run the service proxy and cluster DNS.
    #[arg(long)]
    pub no_proxy: bool,

    /// The cluster's pod network (traffic from it is not masqueraded by the proxy).
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,

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

    /// Pods this node takes (its `capacity.pods`), as kubelet's --max-pods; the
    /// node's /24 pod network bounds it at 254.
    #[arg(long, default_value_t = hull_agent::node::machine::MAX_PODS,
          value_parser = clap::value_parser!(u32).range(1..=254))]
    pub max_pods: u32,

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

fn start_cri(data_dir: &Path, sock: &Path, cluster_cidr: &str) -> anyhow::Result<CriChild> {
    let exe = std::env::current_exe().context("locating the hull binary")?;
    let _ = std::fs::remove_file(sock);
    let child = Command::new(exe)
        .arg("cri")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--socket")
        .arg(sock)
        .arg("--cluster-cidr")
        .arg(cluster_cidr)
        // No default network until the node's spec.podCIDR arrives: the default range
        // (10.244.0.0/24) is the first node's, so a joining node must not use it meanwhile.
        .arg("--await-pod-cidr")
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

/// Where a joined node keeps its credentials.
fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

async fn client(
    args: &AgentArgs,
    data_dir: &Path,
    node_name: &str,
) -> anyhow::Result<kube::Client> {
    let opts = kube::config::KubeConfigOptions::default();
    let cfg = if let (Some(server), Some(token)) = (&args.server, &args.token) {
        if bootstrap::is_bootstrap_token(token) {
            let kc_path = pki_dir(data_dir).join("kubelet.kubeconfig");
            if !kc_path.exists() {
                let ca = match (
                    &args.discovery_token_ca_cert_hash,
                    &args.certificate_authority,
                ) {
                    (Some(pin), _) => bootstrap::CaSource::Pin(pin.clone()),
                    (None, Some(file)) => bootstrap::CaSource::File(file.clone()),
                    (None, None) => anyhow::bail!(
                        "--token is a bootstrap token: give --discovery-token-ca-cert-hash or --certificate-authority"
                    ),
                };
                let joined = bootstrap::join(&bootstrap::JoinOptions {
                    server: server.clone(),
                    token: token.clone(),
                    ca,
                    node_name: node_name.to_string(),
                    dir: pki_dir(data_dir),
                    timeout: Duration::from_secs(120),
                })
                .await
                .context("joining the cluster")?;
                eprintln!(
                    "hull agent: joined {server} as system:node:{node_name} ({})",
                    joined.kubeconfig.display()
                );
            }
            let kc = kube::config::Kubeconfig::read_from(&kc_path)
                .with_context(|| format!("reading {}", kc_path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .with_context(|| format!("kubeconfig {}", kc_path.display()))?
        } else {
            let cluster = match (&args.certificate_authority, args.insecure_skip_tls_verify) {
                (Some(ca), _) => serde_json::json!({"server": server, "certificate-authority": ca}),
                (None, true) => {
                    serde_json::json!({"server": server, "insecure-skip-tls-verify": true})
                }
                (None, false) => anyhow::bail!(
                    "--server with a bearer --token needs --certificate-authority (or --insecure-skip-tls-verify)"
                ),
            };
            // An in-memory kubeconfig, so kube-rs loads the CA file as it would from disk.
            let doc = serde_json::json!({
                "apiVersion": "v1", "kind": "Config", "current-context": "agent",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [{"name": "agent", "context": {"cluster": "c", "user": "u"}}],
            });
            let kc = kube::config::Kubeconfig::from_yaml(&doc.to_string())
                .context("--server/--token")?;
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .context("--server/--token")?
        }
    } else if let Some(path) = &args.kubeconfig {
        let kc = kube::config::Kubeconfig::read_from(path)
            .with_context(|| format!("reading kubeconfig {}", path.display()))?;
        kube::Config::from_custom_kubeconfig(kc, &opts)
            .await
            .with_context(|| format!("kubeconfig {}", path.display()))?
    } else {
        kube::Config::infer()
            .await
            .context("no kubeconfig (--kubeconfig or --server/--token)")?
    };
    kube::Client::try_from(cfg).context("building the API client")
}

/// The kubelet API's TLS material: issued from the CA key when given, else (a joined
/// node) a serving certificate from a kubelet-serving CSR.
async fn kubelet_api_options(
    args: &AgentArgs,
    client: &kube::Client,
    data_dir: &Path,
    node_name: &str,
    node_ip: IpAddr,
    socket: PathBuf,
) -> anyhow::Result<Option<kubelet_api::Options>> {
    let mut api = match (&args.ca_cert, &args.ca_key) {
        (Some(cert), Some(key)) => {
            kubelet_api::Options::new(node_name, cert.clone(), key.clone(), socket)
        }
        _ => {
            let pki = pki_dir(data_dir);
            let ca = pki.join("ca.crt");
            if !ca.exists() {
                eprintln!(
                    "hull agent: no cluster CA (--ca-cert/--ca-key, or a bootstrap --token): the kubelet API is off"
                );
                return Ok(None);
            }
            let serving = bootstrap::serving_certificate(
                client,
                node_name,
                &[node_ip],
                &pki,
                Duration::from_secs(60),
            )
            .await
            .context("the kubelet serving certificate")?;
            let mut o = kubelet_api::Options::new(node_name, ca, PathBuf::new(), socket);
            o.serving = Some(serving);
            o
        }
    };
    api.listen = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), args.kubelet_port);
    api.node_ips = vec![node_ip];
    Ok(Some(api))
}

fn parse_cidr(s: &str) -> anyhow::Result<(IpAddr, u8)> {
    let (ip, len) = s
        .split_once('/')
        .with_context(|| format!("--cluster-cidr {s:?}: want ADDRESS/LENGTH"))?;
    Ok((
        ip.parse()
            .with_context(|| format!("--cluster-cidr {s:?}: bad address"))?,
        len.parse()
            .with_context(|| format!("--cluster-cidr {s:?}: bad length"))?,
    ))
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
            let c = start_cri(&data_dir, &s, &args.cluster_cidr)?;
            (s, Some(c))
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let client = client(&args, &data_dir, &node_name).await?;
        let node_ip = args.node_ip.unwrap_or_else(node::machine::default_ip);
        let cluster_cidr = parse_cidr(&args.cluster_cidr)?;
        let mut opts = node::Options::new(&node_name, socket.clone(), data_dir.join("agent"));
        opts.cluster_dns = args.cluster_dns.clone();
        opts.cluster_domain = args.cluster_domain.clone();
        opts.node_ip = Some(node_ip);
        opts.kubelet_port = args.kubelet_port;
        opts.max_pods = args.max_pods;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let kubelet = match kubelet_api_options(&args, &client, &data_dir, &node_name, node_ip, socket).await? {
            Some(api) => {
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
            None => None,
        };
        let proxy = if args.no_proxy {
            None
        } else {
            let mut popts = hull_proxy::daemon::Options::for_node(&node_name, node_ip);
            popts.proxy.node.pod_cidrs = vec![cluster_cidr];
            popts.proxy.cluster_domain = args.cluster_domain.clone();
            popts.proxy.healthz = None;
            if let (Some(d), Some(dns)) = (popts.cluster_dns.as_mut(), args.cluster_dns.first()) {
                d.service_ip = *dns;
                d.endpoint = SocketAddr::new(node_ip, 53);
            }
            let c = client.clone();
            let mut rx = rx.clone();
            Some(tokio::spawn(async move {
                let stop = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                if let Err(e) = hull_proxy::daemon::run(c, popts, stop).await {
                    eprintln!("hull agent: service proxy: {e}");
                }
            }))
        };
        let routes = super::podroutes::spawn(client.clone(), node_name.clone(), rx.clone());
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
        // The proxy withdraws its DNS endpoint and removes its tables; routes are removed.
        if let Some(p) = proxy {
            let _ = tokio::time::timeout(Duration::from_secs(10), p).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), routes).await;
        r.context("hull agent")
    })?;
    Ok(ExitCode::SUCCESS)
}
