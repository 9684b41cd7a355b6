//! The standalone entry point behind `hull proxy`: a kube client from a kubeconfig,
//! the DNS listeners, the health endpoint and the sync loop on one tokio runtime.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::dns_model::DnsModel;
use crate::dns_server::{self, DnsState};
use crate::runner::{self, Metrics, ProxyConfig};
use crate::{apply, nft};

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

#[derive(Debug, Clone)]
pub struct Options {
    pub kubeconfig: Option<PathBuf>,
    pub proxy: ProxyConfig,
    /// Addresses the DNS server listens on (UDP and TCP); empty: no DNS.
    pub dns_listen: Vec<SocketAddr>,
    pub resolv_conf: PathBuf,
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

/// Run until interrupted (SIGINT/SIGTERM); rules stay in place on exit unless the
/// caller runs [`cleanup`] (kube-proxy keeps them too, so restarts do not drop traffic).
pub fn run_blocking(opts: Options) -> Result<(), DaemonError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    rt.block_on(async move {
        let client = client(opts.kubeconfig.as_ref()).await?;
        tokio::select! {
            r = serve(client, opts) => r?,
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm() => {}
        }
        Ok(())
    })
}

/// The proxy, DNS and health endpoint on the caller's (multi-threaded) tokio runtime,
/// with the caller's client: what `hull up` and `hull agent` embed. Runs until the
/// future is dropped.
pub async fn serve(client: kube::Client, opts: Options) -> Result<(), DaemonError> {
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = opts.proxy.healthz {
        let bound = runner::serve_health(addr, metrics.clone()).await?;
        tracing::info!("healthz and metrics on http://{bound}");
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
            &[],
            &[],
            &[],
        )));
        for addr in &opts.dns_listen {
            let state = DnsState {
                model: model.clone(),
                upstreams: upstreams.clone(),
            };
            let bound = dns_server::spawn(*addr, state).await?;
            tracing::info!("cluster DNS on {bound}");
        }
        Some(model)
    };
    runner::run(client, opts.proxy, dns, metrics).await?;
    Ok(())
}

async fn sigterm() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}
