//! The CRI v1 server: `RuntimeService` and `ImageService` over gRPC on a unix socket.
//!
//! Module map:
//! - `config`: paths and flags of one server instance (data dir, socket, CNI, streaming).
//! - `error`: the server's error type and its mapping to gRPC status codes.
//! - `records`: what is kept on disk per sandbox and container (the source of truth).
//! - `netns`: named network namespaces bind-mounted under the runtime dir.
//! - `network`: CNI through `hull_cni::invoker`, the default hull-bridge conflist.
//! - `pause`: hull's own pause process (holds a pod's UTS/IPC namespaces; no image).
//! - `monitor`: the per-container monitor (conmon's role): parent of the container,
//!   writes the CRI log, records the exit status, outlives the server.
//! - `shim`: finding `hull-shim` (the small binary pause and monitors run as) and
//!   running it from a view of it nothing can write.
//! - `logfmt`: the CRI log line format (also compiled into `hull-shim`).
//! - `sandbox`: RunPodSandbox/Stop/Remove/Status/List on records + kernel.
//! - `container`: CreateContainer's OCI spec from a CRI config, and container lifecycle.
//! - `spec`: CRI `ContainerConfig` → OCI runtime spec edits (mounts, security, resources).
//! - `exec`: running a command in a container through a re-exec'd helper (stdio pipes).
//! - `stats`: container and pod stats (cgroups, writable layer, the pod's netns counters).
//! - `events`: GetContainerEvents (created/started/stopped/deleted, with statuses).
//! - `locks`: per-pod locks serializing mutations of one sandbox and its containers.
//! - `runtime_service` / `image_service`: the tonic service impls.
//! - `spdy`: SPDY/3.1 framing (what `crictl exec` and kubelet streaming speak).
//! - `streaming`: the HTTP streaming server that Exec/Attach/PortForward URLs point at.
//! - `remotecommand`: exec/attach sessions (stdio, tty with resize, exit status).
//! - `portforward`: port-forward sessions (TCP inside the pod's netns).
//! - `websocket`: exec/attach over WebSocket (`v5`/`v4.channel.k8s.io`).
//! - `server`: start-up (reconcile from disk and kernel), serving, shutdown.

pub mod config;
pub mod container;
pub mod error;
pub mod events;
pub mod exec;
pub mod image_service;
pub mod locks;
pub mod logfmt;
pub mod monitor;
pub mod netns;
pub mod network;
pub mod pause;
pub mod portforward;
pub mod records;
pub mod remotecommand;
pub mod runtime_service;
pub mod sandbox;
pub mod server;
pub mod shim;
pub mod spdy;
pub mod spec;
pub mod stats;
pub mod streaming;
pub mod websocket;

pub use config::Config;
pub use error::{CriError, Result};
