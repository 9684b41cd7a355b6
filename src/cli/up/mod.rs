//! `hull up`: a single-node cluster in one process tree — the API server with its
//! controller manager (SQLite store), the CRI server, the node agent with its kubelet API,
//! and the service proxy with cluster DNS — plus the admin kubeconfig.
//!
//! Every piece talks to the others the way it would across machines: the agent and the
//! proxy reach the API over HTTPS with their own client certificates, and the agent
//! reaches the CRI server over its gRPC socket. Ctrl-C drains the node (every pod's
//! containers stopped, sandboxes removed, the proxy's rules deleted); the cluster's
//! state stays in the store, so running `hull up` again resumes it and the agent
//! recreates the pods.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use hull_control::apiserver::{self, kubeconfig, tls};
use tokio::sync::watch;

mod demo;
mod drain;
mod node;
mod proxy;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address and port the API server serves HTTPS on.
    #[arg(long, default_value = "0.0.0.0:6443")]
    pub listen: SocketAddr,

    /// Also apply a sample Deployment and Service (and wait for them to serve).
    #[arg(long)]
    pub demo: bool,

    /// The image the demo runs (imported or pullable).
    #[arg(long, default_value = "localhost/demo/busybox:demo")]
    pub demo_image: String,

    /// This node's name (default: the hostname).
    #[arg(long, env = "HULL_NODE_NAME")]
    pub node_name: Option<String>,

    /// This node's address, as the Node reports it (default: the first global address).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,

    /// The CRI socket (default /run/hull/cri.sock with the default data dir, else
    /// DATA/cri.sock, so several clusters can run side by side).
    #[arg(long)]
    pub cri_socket: Option<PathBuf>,

    /// The kubelet API's port (HTTPS; logs, exec, port-forward, stats).
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,

    /// Pods the node takes (its `capacity.pods`), as kubelet's --max-pods; the pod
    /// network's /24 per node bounds it at 254.
    #[arg(long, default_value_t = hull_agent::node::machine::MAX_PODS,
          value_parser = clap::value_parser!(u32).range(1..=254))]
    pub max_pods: u32,

    /// The pod network; the node gets a /24 of it.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,

    /// The range ClusterIPs are allocated from.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cluster_ip_range: String,

    /// The cluster DNS address pods use.
    #[arg(long, default_value = "10.96.0.10")]
    pub cluster_dns: IpAddr,

    /// The cluster's DNS zone.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,

    /// Registry mirror `HOST=URL` (repeatable), tried before HOST itself.
    #[arg(long = "registry-mirror", value_name = "HOST=URL")]
    pub registry_mirror: Vec<String>,

    /// Do not run the service proxy and DNS (e.g. when kube-proxy runs instead).
    #[arg(long)]
    pub no_proxy: bool,

    /// On stop, leave pods running instead of draining the node.
    #[arg(long)]
    pub keep_pods: bool,
}

pub fn run(data_dir: &Path, args: UpArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let data_dir = std::fs::canonicalize(data_dir)
        .with_context(|| format!("resolve {}", data_dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(up(data_dir, args))
}

fn node_name(args: &UpArgs) -> anyhow::Result<String> {
    if let Some(n) = &args.node_name {
        return Ok(n.clone());
    }
    let h = nix_hostname().context("reading the hostname (or pass --node-name)")?;
    // Node names are DNS subdomains: lowercase, as kubelet does with the hostname.
    Ok(h.trim().to_ascii_lowercase())
}

fn nix_hostname() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
}

/// The node's address: the flag, else the first global IPv4 address of an interface that
/// is up and not one of the pod network's own (bridges, veths).
fn node_ip(args: &UpArgs) -> anyhow::Result<IpAddr> {
    if let Some(ip) = args.node_ip {
        return Ok(ip);
    }
    let skip = ["hull", "veth", "cni", "docker", "br-", "lo"];
    let addrs = nix::ifaddrs::getifaddrs().context("listing the host's addresses")?;
    for a in addrs {
        if !a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
            || skip.iter().any(|p| a.interface_name.starts_with(p))
        {
            continue;
        }
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            let ip = sin.ip();
            if !ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified() {
                return Ok(IpAddr::V4(ip));
            }
        }
    }
    anyhow::bail!("no global IPv4 address on this host: pass --node-ip")
}

fn default_socket(data_dir: &Path) -> PathBuf {
    if data_dir == Path::new("/var/lib/hull") {
        PathBuf::from("/run/hull/cri.sock")
    } else {
        data_dir.join("cri.sock")
    }
}

/// A kube-rs client for one of the cluster's own identities, with a certificate issued
/// from the cluster CA (what a joining node would get through a CSR).
pub(crate) async fn identity_client(
    data_dir: &Path,
    server_url: &str,
    user: &str,
    groups: &[&str],
) -> anyhow::Result<kube::Client> {
    let ca = std::fs::read_to_string(data_dir.join("ca.crt"))
        .with_context(|| format!("read {}", data_dir.join("ca.crt").display()))?;
    let (cert, key) = tls::issue_client_cert_from_dir(data_dir, user, groups)
        .with_context(|| format!("issue a client certificate for {user}"))?;
    let text = kubeconfig::render(server_url, &ca, &cert, &key, user);
    let kc = kube::config::Kubeconfig::from_yaml(&text).context("kubeconfig")?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .context("kubeconfig")?;
    kube::Client::try_from(config).context("kube client")
}

async fn wait_stop(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn signals(tx: watch::Sender<bool>) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
    eprintln!("hull up: stopping");
    let _ = tx.send(true);
}

/// Waits until the API answers `/readyz` for this client, or the server task ended.
async fn wait_ready(client: &kube::Client, server: &tokio::task::JoinHandle<()>) -> bool {
    for _ in 0..300 {
        if server.is_finished() {
            return false;
        }
        let req = http::Request::get("/readyz").body(Vec::new());
        if let Ok(req) = req
            && client.request_text(req).await.is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn up(data_dir: PathBuf, args: UpArgs) -> anyhow::Result<ExitCode> {
    let node = node_name(&args)?;
    let node_ip = node_ip(&args)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(signals(stop_tx.clone()));

    // 1. The control plane. The kubeconfig is rewritten at every start; waiting for a
    //    fresh one (not last run's) tells us the server has its listener and CA.
    let kc_path = data_dir.join("admin.kubeconfig");
    let _ = std::fs::remove_file(&kc_path);
    let mut opts = apiserver::Options::new(data_dir.clone(), args.listen);
    opts.service_cluster_ip_range = args.service_cluster_ip_range.clone();
    // In-cluster clients reach the API at the advertised address: the node's own unless
    // the server listens on one address only.
    opts.advertise_address = Some(if args.listen.ip().is_unspecified() {
        node_ip
    } else {
        args.listen.ip()
    });
    opts.manager.cluster_cidr = args.cluster_cidr.clone();
    // The stop comes in three phases: the agent and proxy first (so nothing restarts
    // pods), then — after the drain — the CRI server, then the API server.
    let (cri_stop_tx, cri_stop_rx) = watch::channel(false);
    let (api_stop_tx, api_stop_rx) = watch::channel(false);
    let server = {
        let stop = api_stop_rx;
        tokio::spawn(async move {
            if let Err(e) = apiserver::run(opts, wait_stop(stop)).await {
                eprintln!("hull up: API server: {e:#}");
            }
        })
    };
    let server_url = kubeconfig::server_url(args.listen);
    let mut waited = 0;
    while !kc_path.exists() {
        if server.is_finished() || waited > 600 {
            anyhow::bail!("the API server did not start (see the messages above)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    let admin = identity_client(&data_dir, &server_url, "admin", &["system:masters"]).await?;
    if !wait_ready(&admin, &server).await {
        anyhow::bail!("the API server at {server_url} did not become ready");
    }

    // 2. The CRI server, on its socket.
    let socket = args
        .cri_socket
        .clone()
        .unwrap_or_else(|| default_socket(&data_dir));
    let mut cri_cfg = hull_agent::cri::Config::new(&data_dir, &socket);
    cri_cfg.registry_mirrors = args.registry_mirror.clone();
    cri_cfg.cluster_cidr = Some(args.cluster_cidr.clone());
    let cri = {
        let stop = cri_stop_rx;
        tokio::spawn(async move {
            if let Err(e) = hull_agent::cri::server::serve_until(cri_cfg, wait_stop(stop)).await {
                eprintln!("hull up: CRI server: {e:#}");
            }
        })
    };
    for _ in 0..600 {
        if socket.exists() || cri.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(
        socket.exists(),
        "the CRI server did not start on {}",
        socket.display()
    );

    // 3. The service proxy and cluster DNS.
    let proxy = if args.no_proxy {
        None
    } else {
        let client = identity_client(
            &data_dir,
            &server_url,
            "system:kube-proxy",
            &["system:node-proxier"],
        )
        .await?;
        Some(proxy::spawn(client, &node, node_ip, &args, stop_rx.clone()))
    };

    // 4. The node agent.
    let agent_client = identity_client(
        &data_dir,
        &server_url,
        &format!("system:node:{node}"),
        &["system:nodes"],
    )
    .await?;
    // Routes to the pod subnets of nodes that joined with `hull agent`.
    let routes = super::podroutes::spawn(agent_client.clone(), node.clone(), stop_rx.clone());
    let agent = node::spawn(
        agent_client,
        &node,
        node_ip,
        &data_dir,
        &socket,
        &args,
        stop_rx.clone(),
    );

    if args.demo {
        demo::apply(&admin, &args.demo_image).await?;
    }
    println!(
        "hull is up: a single-node cluster (node {node}).\n\n    export KUBECONFIG={}\n    kubectl get nodes\n    kubectl get pods -A\n\nCtrl-C stops it; `hull up --data-dir {}` again resumes the same cluster.",
        kc_path.display(),
        data_dir.display()
    );

    wait_stop(stop_rx.clone()).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
    if !args.keep_pods {
        match drain::drain(&socket).await {
            Ok(0) => {}
            Ok(n) => eprintln!("hull up: stopped and removed {n} pod sandboxes"),
            Err(e) => eprintln!("hull up: draining the node: {e:#}"),
        }
    }
    if let Some(p) = proxy {
        // It withdraws this node's DNS endpoint and removes its nftables tables itself.
        let _ = tokio::time::timeout(Duration::from_secs(10), p).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), routes).await;
    let _ = cri_stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), cri).await;
    let _ = api_stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    let _ = stop_tx;
    Ok(ExitCode::SUCCESS)
}
