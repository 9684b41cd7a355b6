//! The node agent (kubelet role): registers this machine as a Node, keeps its Lease and
//! status fresh, and converges the pods bound to it onto a CRI v1 runtime over gRPC.
//!
//! - `machine`: CPUs, memory, disk, PIDs and identity, read from the kernel.
//! - `node_status`: Node registration, status (conditions, capacity, images), Lease.
//! - `cri_client`: the gRPC client on the runtime's unix socket.
//! - `pods`: the pod watch, one worker per pod, the CRI relist (PLEG), orphans.
//! - `worker`: one pod's convergence, restarts/backoff, status, graceful termination.
//! - `snapshot`: the CRI view of one pod (full, or brought up to date after a step).
//! - `cri_spec`: Pod → PodSandboxConfig / ContainerConfig.
//! - `status`: pod status as kubelet writes it.
//! - `env`, `volumes`, `atomic`: container environment and volumes.
//! - `probe`: probes and lifecycle hook actions.
//! - `probe_net`: the network probe actions: httpGet (HTTP/HTTPS), tcpSocket, grpc.
//! - `termination`: termination message files and FallbackToLogsOnError.
//! - `images`: pulls per imagePullPolicy with imagePullSecrets.
//! - `events`: pod Events as kubelet records them (queued, folded, never waited on).
//! - `resources`, `quantity`, `cgroups`: QoS, CRI resources, pod cgroups.

mod atomic;
pub mod cgroups;
mod cri_client;
mod cri_spec;
mod env;
mod events;
mod images;
pub mod machine;
mod node_status;
mod pods;
mod probe;
mod probe_net;
pub mod quantity;
mod resources;
mod snapshot;
mod status;
mod termination;
mod volumes;
mod worker;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tracing::{info, warn};

pub use cri_spec::POD_UID;

/// How the agent runs. `Options::new` gives Kubernetes' defaults.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's name (the Node object, `spec.nodeName` of its pods).
    pub node_name: String,
    /// The CRI v1 gRPC unix socket (`hull cri`, containerd, ...).
    pub cri_endpoint: PathBuf,
    /// Where the agent keeps pod volumes (`pods/<uid>`) and logs (`logs/pods`).
    pub data_dir: PathBuf,
    /// Nameservers for ClusterFirst pods.
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster's DNS zone.
    pub cluster_domain: String,
    /// The InternalIP written to the Node status (None: the default route's source).
    pub node_ip: Option<IpAddr>,
    /// The kubelet API port advertised in `status.daemonEndpoints`.
    pub kubelet_port: u16,
    /// Pods this node takes (`capacity.pods`, kubelet's `--max-pods`).
    pub max_pods: u32,
}

impl Options {
    pub fn new(node_name: impl Into<String>, cri_endpoint: PathBuf, data_dir: PathBuf) -> Self {
        Options {
            node_name: node_name.into(),
            cri_endpoint,
            data_dir,
            cluster_dns: vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10))],
            cluster_domain: "cluster.local".into(),
            node_ip: None,
            kubelet_port: 10250,
            max_pods: machine::MAX_PODS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("CRI {endpoint}: {message}")]
    Cri { endpoint: String, message: String },
    #[error("API server: {0}")]
    Api(#[from] kube::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid options: {0}")]
    Options(String),
}

/// Run the node agent until `shutdown` resolves. Pods keep running when it returns
/// (as with kubelet); a later `run` re-adopts them.
pub async fn run(
    client: kube::Client,
    opts: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    if opts.node_name.is_empty() {
        return Err(NodeError::Options("node_name is empty".into()));
    }
    std::fs::create_dir_all(&opts.data_dir).map_err(|e| NodeError::Io {
        path: opts.data_dir.display().to_string(),
        source: e,
    })?;
    tokio::pin!(shutdown);
    // The runtime and the API server may still be starting: retry, as kubelet does.
    let (cri, version) = loop {
        let r = async {
            let cri = cri_client::Cri::connect(&opts.cri_endpoint).await?;
            let v = cri
                .rt
                .clone()
                .version(k8s_cri::v1::VersionRequest::default())
                .await
                .map_err(|e| cri.err("Version", e.message()))?
                .into_inner();
            Ok::<_, NodeError>((cri, v))
        }
        .await;
        match r {
            Ok(x) => break x,
            Err(e) => warn!("{e}; retrying"),
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    info!(runtime = %version.runtime_name, version = %version.runtime_version, "connected to the CRI runtime");
    let node = loop {
        match node_status::register(&client, &opts).await {
            Ok(n) => break n,
            Err(e) => warn!("registering node {}: {e}; retrying", opts.node_name),
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let mut reporter = node_status::Reporter::default();
    if let Err(e) = reporter.report(&client, &cri, &opts).await {
        warn!("node status: {e}");
    }
    if let Err(e) = node_status::renew_lease(&client, &node).await {
        warn!("node lease: {e}");
    }

    let (store, writer) = reflector::store::<Service>();
    let svc_watch = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects();
    let svc_task = tokio::spawn(async move {
        futures::pin_mut!(svc_watch);
        while let Some(e) = futures::StreamExt::next(&mut svc_watch).await {
            if let Err(e) = e {
                warn!("service watch: {e}");
            }
        }
    });
    let (mem_ki, _) = machine::memory_ki();
    let ctx = Arc::new(worker::Ctx {
        client: client.clone(),
        cri: cri.clone(),
        events: events::Recorder::spawn(client.clone(), opts.node_name.clone()),
        host_ip: node_status::node_ip(&opts).to_string(),
        runtime: version.runtime_name.clone(),
        services: store,
        mem_capacity: mem_ki as i128 * 1024,
        cpu_milli: machine::cpus() as i128 * 1000,
        opts: opts.clone(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop_pods = stop_rx.clone();
    let pods = tokio::spawn(pods::Manager::new(ctx).run(async move {
        let _ = stop_pods.wait_for(|s| *s).await;
    }));
    let hb_client = client.clone();
    let hb_opts = opts.clone();
    let mut stop_hb = stop_rx;
    let heartbeat = tokio::spawn(async move {
        let mut tick = tokio::time::interval(node_status::HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop_hb.wait_for(|s| *s) => return,
            }
            if let Err(e) = node_status::renew_lease(&hb_client, &node).await {
                warn!("node lease: {e}");
            }
            if let Err(e) = reporter.report(&hb_client, &cri, &hb_opts).await {
                warn!("node status: {e}");
            }
        }
    });
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), pods).await;
    let _ = heartbeat.await;
    svc_task.abort();
    Ok(())
}
