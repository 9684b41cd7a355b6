//! Start-up and serving: reconcile from disk and the kernel (never from memory), write
//! the default CNI config if needed, then serve gRPC on the unix socket and the
//! streaming server on TCP until SIGINT/SIGTERM. Containers and pods keep running
//! when the server stops: their monitors and pause processes are not our children.

use std::sync::{Arc, RwLock};

use hull_runtime::image::ImageStore;
use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use super::config::Config;
use super::error::{CriError, Result};
use super::runtime_service::Cri;
use super::{network, sandbox, streaming};

/// Brings the instance's dirs into being and undoes what a crash left half-made.
pub fn prepare(cfg: &Config) -> Result<ImageStore> {
    for d in [
        cfg.sandboxes_dir(),
        cfg.containers_dir(),
        cfg.oci_root(),
        cfg.netns_dir(),
    ] {
        std::fs::create_dir_all(&d).map_err(CriError::io(format!("create {}", d.display())))?;
    }
    let mut store = ImageStore::open(&cfg.data_dir)?;
    for m in &cfg.registry_mirrors {
        store.registry.add_mirror_flag(m)?;
    }
    network::ensure_default(cfg)?;
    sandbox::reconcile(cfg);
    super::container::reconcile(cfg);
    Ok(store)
}

/// Serves until SIGINT or SIGTERM.
pub async fn serve(cfg: Config) -> Result<()> {
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    };
    serve_until(cfg, shutdown).await
}

/// Serves until `shutdown` resolves (what `hull up` embeds). Containers keep running
/// under their monitors; stopping them is the caller's decision.
pub async fn serve_until(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let cfg = Arc::new(cfg);
    let c2 = cfg.clone();
    let store = tokio::task::spawn_blocking(move || prepare(&c2))
        .await
        .map_err(|e| CriError::Internal(e.to_string()))??;
    let (streaming, listener) =
        streaming::Streaming::bind(cfg.clone())
            .await
            .map_err(CriError::io(format!(
                "bind streaming server on {}",
                cfg.streaming_addr
            )))?;
    tokio::spawn(streaming.clone().serve(listener));
    if let Some(d) = cfg.socket.parent() {
        std::fs::create_dir_all(d).map_err(CriError::io(format!("create {}", d.display())))?;
    }
    match std::fs::remove_file(&cfg.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(CriError::Io {
                what: format!("remove stale {}", cfg.socket.display()),
                source: e,
            });
        }
    }
    let uds = UnixListener::bind(&cfg.socket)
        .map_err(CriError::io(format!("bind {}", cfg.socket.display())))?;
    let cri = Cri {
        cfg: cfg.clone(),
        locks: Default::default(),
        images: Arc::new(RwLock::new(store)),
        streaming,
        events: super::events::Events::start(cfg.clone()),
    };
    tracing::info!(socket = %cfg.socket.display(), streaming = %cri.streaming.addr, "CRI server ready");
    tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::new(cri.clone()))
        .add_service(ImageServiceServer::new(cri))
        .serve_with_incoming_shutdown(UnixListenerStream::new(uds), shutdown)
        .await
        .map_err(|e| CriError::Internal(format!("gRPC server: {e}")))?;
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}

/// `serve` on a fresh multi-threaded runtime (for the `hull` binary's sync main).
pub fn run(cfg: Config) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CriError::io("start tokio runtime"))?;
    rt.block_on(serve(cfg))
}
