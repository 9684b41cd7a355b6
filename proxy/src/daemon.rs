//! Entry points: [`run`] (embedded in `hull up` / `hull agent` with their client and
//! a shutdown future) and [`run_blocking`] (`hull proxy`: a client from a kubeconfig,
//! until a signal). Both run the DNS listeners, the health endpoint, the kube-dns
//! publisher and the sync loop.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::dns_model::DnsModel;
use crate::dns_server::{self, DnsState};
use crate::runner::{self, Metrics, ProxyConfig};
use crate::{apply, dns_service, model, nft};

pub use crate::dns_service::ClusterDns;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("kubeconfig {path}: {msg}")]
    Kubeconfig { path: String, msg: String },
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Dns(#[from] dns_server::DnsError),
    #[error(transparent)]
    Run(#[from] runner::RunError),
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
}

/// What to run: the proxy, the DNS listeners, how DNS is published.
#[derive(Debug, Clone)]
pub struct Options {
    pub proxy: ProxyConfig,
    /// Addresses the DNS server listens on (UDP and TCP). `cluster_dns.endpoint`
    /// is added when missing; empty and no `cluster_dns`: no DNS server.
    pub dns_listen: Vec<SocketAddr>,
    /// Upstream resolvers for names outside the cluster zone.
    pub resolv_conf: PathBuf,
    /// Publish `kube-system/kube-dns` at this address with this node's listener
    /// as its local endpoint (see [`dns_service`]).
    pub cluster_dns: Option<ClusterDns>,
    /// Remove hull's nftables tables when [`run`] stops (kube-proxy keeps its
    /// rules so a restart does not drop traffic; `hull up` stopping should leave
    /// nothing behind).
    pub cleanup_on_exit: bool,
}

impl Options {
    /// Defaults for a node named `node_name` at `node_ip`: pod CIDR 10.244.0.0/16,
    /// cluster DNS 10.96.0.10 served on `node_ip:53`, zone `cluster.local`,
    /// NodePorts on 127.0.0.1, health on 127.0.0.1:10256, rules removed on stop.
    pub fn for_node(node_name: impl Into<String>, node_ip: IpAddr) -> Options {
        Options {
            proxy: ProxyConfig {
                node: model::NodeInfo {
                    name: node_name.into(),
                    addresses: vec![node_ip],
                    pod_cidrs: vec![(IpAddr::from([10, 244, 0, 0]), 16)],
                    localhost_nodeports: true,
                    zone: None,
                },
                min_sync_interval: Duration::from_millis(200),
                full_sync_interval: Duration::from_secs(3600),
                explain: false,
                healthz: Some(SocketAddr::from(([127, 0, 0, 1], 10256))),
                program_rules: true,
                update_lb_status: true,
                cluster_domain: "cluster.local".into(),
            },
            dns_listen: Vec::new(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            cluster_dns: Some(ClusterDns {
                service_ip: IpAddr::from([10, 96, 0, 10]),
                endpoint: SocketAddr::new(node_ip, 53),
            }),
            cleanup_on_exit: true,
        }
    }
}

/// `--cleanup`: remove every table the proxy owns, print what was removed.
pub fn cleanup(explain: bool) -> Result<(), DaemonError> {
    if explain {
        print!("{}", nft::render_cleanup());
    }
    apply::cleanup()?;
    Ok(())
}

async fn client(path: Option<&PathBuf>) -> Result<kube::Client, DaemonError> {
    let shown = path.map_or("(default)".to_string(), |p| p.display().to_string());
    let err = |msg: String| DaemonError::Kubeconfig {
        path: shown.clone(),
        msg,
    };
    let config = match path {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p).map_err(|e| err(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| err(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| err(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| err(e.to_string()))
}

/// `hull proxy`: its own runtime and client, until SIGINT/SIGTERM.
pub fn run_blocking(kubeconfig: Option<PathBuf>, opts: Options) -> Result<(), DaemonError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    rt.block_on(async move {
        let client = client(kubeconfig.as_ref()).await?;
        run(client, opts, async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = sigterm() => {}
            }
        })
        .await
    })
}

/// The proxy, DNS and health endpoint on the caller's (multi-threaded) tokio
/// runtime with the caller's client, until `shutdown` completes: what `hull up`
/// and `hull agent` embed. On shutdown every task it started is stopped, this
/// node's kube-dns slice is withdrawn (best effort, 2 s) and, with
/// `cleanup_on_exit`, hull's nftables tables are removed.
pub async fn run(
    client: kube::Client,
    opts: Options,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DaemonError> {
    let node = opts.proxy.node.name.clone();
    let publish = opts.cluster_dns.clone();
    let cleanup_rules = opts.cleanup_on_exit && opts.proxy.program_rules;
    let res = tokio::select! {
        r = serve(client.clone(), opts) => r,
        () = shutdown => Ok(()),
    };
    if publish.is_some() {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            dns_service::withdraw(&client, &node),
        )
        .await;
    }
    if cleanup_rules {
        match tokio::task::spawn_blocking(apply::cleanup).await {
            Ok(r) => r?,
            Err(e) => tracing::error!("removing hull's nftables tables: {e}"),
        }
    }
    res
}

/// Run the pieces until an error; dropping the future stops every task it started.
pub async fn serve(client: kube::Client, mut opts: Options) -> Result<(), DaemonError> {
    let mut tasks = tokio::task::JoinSet::new();
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = opts.proxy.healthz {
        let (l, bound) = runner::bind_health(addr).await?;
        tasks.spawn(runner::health_loop(l, metrics.clone()));
        tracing::info!("healthz and metrics on http://{bound}");
    }
    if let Some(cd) = &opts.cluster_dns
        && !opts.dns_listen.contains(&cd.endpoint)
    {
        opts.dns_listen.push(cd.endpoint);
    }
    let dns = if opts.dns_listen.is_empty() {
        None
    } else {
        let upstreams: Vec<SocketAddr> = dns_server::upstreams_from_resolv_conf(&opts.resolv_conf)?
            .into_iter()
            // Never forward to ourselves (a resolv.conf that points at the node DNS).
            .filter(|u| !opts.dns_listen.contains(u))
            .collect();
        let model = Arc::new(RwLock::new(DnsModel::build(
            &opts.proxy.cluster_domain,
            [],
            [],
            [],
        )));
        for addr in &opts.dns_listen {
            let state = DnsState {
                model: model.clone(),
                upstreams: upstreams.clone(),
            };
            let (udp, tcp, bound) = dns_server::bind(*addr).await?;
            tasks.spawn(dns_server::serve_udp(udp, state.clone()));
            tasks.spawn(dns_server::serve_tcp(tcp, state));
            tracing::info!("cluster DNS on {bound}");
        }
        Some(model)
    };
    if let Some(cd) = opts.cluster_dns.clone() {
        let (client, node) = (client.clone(), opts.proxy.node.name.clone());
        tasks.spawn(publish_dns(client, node, cd));
    }
    runner::run(client, opts.proxy, dns, metrics).await?;
    Ok(())
}

/// Keep the kube-dns Service and this node's slice in place: retried every 2 s
/// until it works (the API or the Node may not be there yet), then every 60 s
/// (someone may delete them).
async fn publish_dns(client: kube::Client, node: String, cd: ClusterDns) {
    loop {
        let wait = match dns_service::ensure(&client, &node, &cd).await {
            Ok(()) => Duration::from_secs(60),
            Err(e) => {
                tracing::warn!(
                    "publishing {}/{}: {e}",
                    dns_service::NAMESPACE,
                    dns_service::NAME
                );
                Duration::from_secs(2)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

async fn sigterm() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}
