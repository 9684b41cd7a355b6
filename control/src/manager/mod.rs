//! The controller manager: the scheduler and every controller, run inside `hull server`
//! (and `hull up`) as ordinary API clients.
//!
//! They reach the API only through a kube-rs [`kube::Client`], exactly as an external
//! kube-scheduler or kube-controller-manager would, so nothing here reads the store.
//! Several servers may run against one etcd: [`leader`] elects one of them on a
//! `coordination.k8s.io` Lease, and only the leader runs the loops.
//! - [`leader`]: the leader election;
//! - [`informers`]: one shared watch per hot resource (Pods, Nodes, node Leases) that
//!   every loop subscribes to.

pub mod informers;
pub mod leader;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Tunables of the control loops. Every one is a `hull server` flag.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// This server's identity in the leader Lease (hostname + a random suffix by default).
    pub identity: String,
    /// The pod network; each node gets a `/node_cidr_mask_size` of it as `spec.podCIDR`.
    pub cluster_cidr: String,
    pub node_cidr_mask_size: u8,
    /// A node whose Lease is older than this becomes NotReady/Unknown.
    pub node_monitor_grace_period: Duration,
    /// Default `tolerationSeconds` for the not-ready/unreachable NoExecute taints.
    pub default_eviction_timeout: Duration,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// The cluster CA (PEM) the root-ca publisher puts in every namespace's
    /// `kube-root-ca.crt` ConfigMap; `apiserver::run` fills it from the PKI when unset.
    pub root_ca_pem: Option<String>,
    /// Where the CSR signer finds the cluster CA (`ca.crt`, `ca.key`); `None`: no signing.
    pub cluster_signing_dir: Option<std::path::PathBuf>,
    /// The workload controllers' clock (CronJob schedules, deadlines, minReadySeconds);
    /// tests advance it instead of sleeping.
    pub clock: crate::controllers::workload_util::Clock,
    /// The HorizontalPodAutoscaler loop (kube-controller-manager's
    /// `--horizontal-pod-autoscaler-*` flags): how often each HPA is evaluated, how long a
    /// scale-down waits for the highest recent recommendation to fall (HPAs without
    /// `behavior.scaleDown.stabilizationWindowSeconds`), the tolerance around a usage ratio
    /// of 1, and the CPU start-up grace of new pods (see `controllers::hpa_replicas`).
    pub hpa_sync_period: Duration,
    pub hpa_downscale_stabilization: Duration,
    pub hpa_tolerance: f64,
    pub hpa_cpu_initialization_period: Duration,
    pub hpa_initial_readiness_delay: Duration,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "hull".into());
        ManagerOptions {
            identity: format!("{host}_{}", uuid::Uuid::new_v4()),
            cluster_cidr: "10.244.0.0/16".into(),
            node_cidr_mask_size: 24,
            node_monitor_grace_period: Duration::from_secs(40),
            default_eviction_timeout: Duration::from_secs(300),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            root_ca_pem: None,
            cluster_signing_dir: None,
            clock: Default::default(),
            hpa_sync_period: Duration::from_secs(15),
            hpa_downscale_stabilization: Duration::from_secs(300),
            hpa_tolerance: 0.1,
            hpa_cpu_initialization_period: Duration::from_secs(300),
            hpa_initial_readiness_delay: Duration::from_secs(30),
        }
    }
}

/// What every loop is handed (one per leadership term).
pub struct Context {
    pub client: kube::Client,
    pub options: ManagerOptions,
    /// The term's shared informers: subscribe instead of watching Pods, Nodes or node
    /// Leases yourself.
    pub informers: informers::Informers,
}

/// A control loop: runs until the future is dropped (when leadership is lost or on shutdown).
pub type LoopFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
pub type Loop = fn(Arc<Context>) -> LoopFuture;

/// Every loop the manager runs while it leads, by name (names appear in logs).
pub fn loops() -> Vec<(&'static str, Loop)> {
    crate::controllers::all()
}

/// Worker threads of the manager's runtime.
const MANAGER_THREADS: usize = 2;

/// Runs [`run`] on a runtime of its own, with a client built there, until `shutdown`
/// resolves; the handle finishes when the manager has.
///
/// kube-controller-manager and kube-scheduler are processes of their own, scheduled by the
/// kernel beside the API server. Sharing the API server's runtime, every task of theirs —
/// a scheduling decision, a watch event decoded, a binding sent — waited in the same run
/// queue as every request being served: under a burst of 16 clients creating pods the
/// scheduler got a turn per round of all of them and bound at two thirds of the creation
/// rate. Threads of their own get the kernel's fair share instead.
pub fn spawn(
    config: kube::Config,
    options: ManagerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(MANAGER_THREADS)
        .thread_name("hull-manager")
        .enable_all()
        .build()?;
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("hull-manager-main".into())
        .spawn(move || {
            runtime.block_on(async move {
                match kube::Client::try_from(config) {
                    Ok(client) => run(client, options, shutdown).await,
                    Err(e) => tracing::error!("controller manager client: {e}"),
                }
            });
            // Tasks still running (a binding's request, an Event) are dropped.
            runtime.shutdown_timeout(Duration::from_secs(1));
            let _ = done.send(());
        })?;
    Ok(tokio::spawn(async move {
        let _ = finished.await;
    }))
}

/// Runs the manager until `shutdown` resolves: campaigns for the Lease, runs every loop
/// while leading, and stops them the moment leadership is lost.
pub async fn run(
    client: kube::Client,
    options: ManagerOptions,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let elector = leader::LeaderElector::new(
        client.clone(),
        "kube-system",
        "hull-controller-manager",
        &options.identity,
        options.lease_duration,
        options.renew_deadline,
        options.retry_period,
    );
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            () = elector.acquire() => {}
        }
        tracing::info!(identity = %options.identity, "leading: starting the control loops");
        let ctx = Arc::new(Context {
            client: client.clone(),
            options: options.clone(),
            informers: informers::Informers::new(&client),
        });
        let mut tasks = tokio::task::JoinSet::new();
        for (name, watch) in ctx.informers.watches() {
            tasks.spawn(async move {
                watch.await;
                tracing::warn!(informer = name, "shared informer returned");
            });
        }
        for (name, start) in loops() {
            let ctx = ctx.clone();
            tasks.spawn(async move {
                start(ctx).await;
                tracing::warn!(loop_name = name, "control loop returned");
            });
        }
        tokio::select! {
            _ = &mut shutdown => {
                tasks.shutdown().await;
                elector.release().await;
                return;
            }
            () = elector.hold() => {
                tracing::warn!("lost the leader Lease: stopping the control loops");
                tasks.shutdown().await;
            }
        }
    }
}
