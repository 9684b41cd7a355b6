//! hull's node side: the CRI v1 server and the node agent.
//!
//! Module map (grows as the agent is built):
//! - `cri`: the CRI v1 (`runtime.v1`) gRPC server (`hull cri`): pod sandboxes held by
//!   hull's own pause process, containers run through `hull_runtime` under a small
//!   per-container monitor, images from `hull_runtime::image`, networking through the
//!   `hull_cni` invoker, and a streaming server for exec.
//! - `node`: the node agent (kubelet role): Node registration, Lease, pod workers that
//!   converge pods bound to this node onto the CRI server, probes, volumes.
//! - `kubelet_api`: the kubelet's HTTPS API (:10250) — containerLogs, exec/attach/
//!   portForward (spliced to the CRI streaming server), stats/summary, metrics — found
//!   through the CRI only.
//! - `bootstrap`: TLS bootstrap of a joining node (bootstrap token → CSR → the node's
//!   client certificate and kubeconfig; the CA from a file or a `sha256:` pin).

pub mod bootstrap;
pub mod cri;
pub mod kubelet_api;
pub mod node;
