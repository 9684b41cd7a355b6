//! The kubelet API (HTTPS, :10250): what the API server proxies `kubectl logs`, `exec`,
//! `attach`, `port-forward` and `top` to, and what `nodes/proxy` reaches.
//!
//! It knows only the CRI socket: pods and containers are found by the kubelet's labels
//! (`pods`), logs are read from the CRI log files (`logs`), exec/attach/port-forward ask
//! the CRI for a streaming URL and splice the upgraded connection to it byte for byte
//! (`stream`), and stats come from the CRI's stats calls (`stats`). Clients authenticate
//! with certificates signed by the cluster CA (`tls`); only the API server's identity
//! (`kube-apiserver-kubelet-client`) and `system:masters` may call it.
//!
//! Modules: [`tls`] certificates; [`pods`] CRI lookups; [`logs`] containerLogs;
//! [`stream`] exec/attach/portForward; [`stats`] stats/summary and metrics.

pub mod logs;
pub mod pods;
pub mod stats;
pub mod stream;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// The API server's kubelet client identity (kube-apiserver's `--kubelet-client-certificate`).
pub const APISERVER_CLIENT: &str = "kube-apiserver-kubelet-client";

#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen (kubelet's `--port`, default 0.0.0.0:10250).
    pub listen: SocketAddr,
    /// The cluster CA: client certificates are verified against it, and the serving
    /// certificate is issued from it at start.
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// The CRI server's unix socket.
    pub cri_endpoint: PathBuf,
    /// The node's name (serving certificate CN and SAN) and addresses (SANs).
    pub node_name: String,
    pub node_ips: Vec<IpAddr>,
    /// A serving certificate and key (PEM files) to use instead of issuing one from
    /// `ca_key`: a joined node has no CA key, its certificate comes from a
    /// `kubernetes.io/kubelet-serving` CertificateSigningRequest.
    pub serving: Option<(PathBuf, PathBuf)>,
}

impl Options {
    pub fn new(
        node_name: &str,
        ca_cert: PathBuf,
        ca_key: PathBuf,
        cri_endpoint: PathBuf,
    ) -> Options {
        Options {
            listen: SocketAddr::from(([0, 0, 0, 0], 10250)),
            ca_cert,
            ca_key,
            cri_endpoint,
            node_name: node_name.to_string(),
            node_ips: Vec::new(),
            serving: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeletApiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a usable certificate or key: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("CRI endpoint {path}: {reason}")]
    Cri { path: PathBuf, reason: String },
}

/// An error answered to a client, as the kubelet does (plain text with a status code).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        text(code, self.to_string())
    }
}

pub fn text(code: StatusCode, body: String) -> Response {
    let mut r = (code, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub fn json(v: &serde_json::Value) -> Response {
    let mut r = (StatusCode::OK, serde_json::to_vec(v).unwrap_or_default()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The authenticated caller of one connection.
#[derive(Debug, Clone)]
struct Peer(Option<(String, Vec<String>)>);

pub struct Ctx {
    pub cri: pods::Cri,
    pub node_name: String,
    pub cpu: stats::CpuSamples,
}

/// A bound kubelet API server (its address is known before it serves).
pub struct Server {
    pub addr: SocketAddr,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ctx: Arc<Ctx>,
}

impl Server {
    pub async fn bind(opts: Options) -> Result<Server, KubeletApiError> {
        let tls = tls::server_config(&opts)?;
        let cri = pods::connect(opts.cri_endpoint.clone()).map_err(|e| KubeletApiError::Cri {
            path: opts.cri_endpoint.clone(),
            reason: e.to_string(),
        })?;
        let listener =
            TcpListener::bind(opts.listen)
                .await
                .map_err(|source| KubeletApiError::Listen {
                    addr: opts.listen,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| KubeletApiError::Listen {
                addr: opts.listen,
                source,
            })?;
        Ok(Server {
            addr,
            listener,
            tls: Arc::new(tls),
            ctx: Arc::new(Ctx {
                cri,
                node_name: opts.node_name,
                cpu: stats::CpuSamples::default(),
            }),
        })
    }

    /// Serves until `shutdown` resolves; streams in flight are cut then.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), KubeletApiError> {
        let app = router(self.ctx.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        let mut conns = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => {
                    let Ok((tcp, peer)) = accepted else { continue };
                    let acceptor = acceptor.clone();
                    let app = app.clone();
                    conns.spawn(async move {
                        let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, "kubelet API TLS handshake: {e}");
                                return;
                            }
                            Err(_) => return,
                        };
                        let who = Peer(
                            tls.get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| tls::identity(c.as_ref())),
                        );
                        let svc = app.map_request(move |mut req: Request<hyper::body::Incoming>| {
                            req.extensions_mut().insert(who.clone());
                            req
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc))
                            .with_upgrades();
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, "kubelet API connection: {e}");
                        }
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        conns.abort_all();
        Ok(())
    }
}

/// Binds and serves until `shutdown` (what `hull up` and `hull agent` call).
pub async fn serve(
    opts: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), KubeletApiError> {
    let server = Server::bind(opts).await?;
    tracing::info!(addr = %server.addr, "kubelet API listening");
    server.run(shutdown).await
}

fn router(ctx: Arc<Ctx>) -> Router {
    let authed = Router::new()
        .route("/pods", get(pods_list))
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route(
            "/exec/{ns}/{pod}/{container}",
            get(stream::exec).post(stream::exec),
        )
        .route(
            "/attach/{ns}/{pod}/{container}",
            get(stream::attach).post(stream::attach),
        )
        .route(
            "/portForward/{ns}/{pod}",
            get(stream::port_forward).post(stream::port_forward),
        )
        .route("/stats/summary", get(stats::summary))
        .route("/metrics/resource", get(stats::metrics_resource))
        .route("/metrics", get(stats::metrics))
        .layer(axum::middleware::from_fn(authorize));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(authed)
        .with_state(ctx)
}

/// Only the API server (and cluster admins) may use the kubelet API: it runs commands in
/// every container on the node.
async fn authorize(req: Request, next: axum::middleware::Next) -> Response {
    let allowed = match req.extensions().get::<Peer>() {
        Some(Peer(Some((user, groups)))) => {
            if user == APISERVER_CLIENT || groups.iter().any(|g| g == "system:masters") {
                true
            } else {
                return ApiError::Forbidden(format!(
                    "Forbidden (user={user}, verb={}, resource=nodes, subresource=proxy)",
                    req.method().as_str().to_ascii_lowercase()
                ))
                .into_response();
            }
        }
        _ => false,
    };
    if !allowed {
        return ApiError::Unauthorized.into_response();
    }
    next.run(req).await
}

pub fn query(req: &Request) -> HashMap<String, String> {
    query_multi(req)
        .into_iter()
        .map(|(k, mut v)| (k, v.pop().unwrap_or_default()))
        .collect()
}

/// Query parameters with repeated keys kept in order (`command=a&command=b`).
pub fn query_multi(req: &Request) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for kv in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
    {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let dec = |s: &str| {
            let s = s.replace('+', " ");
            percent_decode(&s)
        };
        out.entry(dec(k)).or_default().push(dec(v));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn container_logs(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let opts = logs::LogOptions::from_query(&query(&req))?;
    let mut cri = ctx.cri.clone();
    let c = pods::container(&mut cri, &ns, &pod, &container, opts.previous).await?;
    let st = pods::status(&mut cri, &c.id).await?;
    if st.log_path.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "container \"{container}\" in pod \"{pod}\" has no log file"
        )));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(logs::stream(
        cri,
        c.id,
        PathBuf::from(st.log_path),
        opts,
        tx,
    ));
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(r)
}

/// The pods this node runs, as the CRI knows them (metadata and phase only).
async fn pods_list(State(ctx): State<Arc<Ctx>>) -> Result<Response, ApiError> {
    use k8s_cri::v1::*;
    let mut cri = ctx.cri.clone();
    let items = cri
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .map_err(|e| ApiError::Internal(format!("CRI ListPodSandbox: {}", e.message())))?
        .into_inner()
        .items;
    let pods: Vec<serde_json::Value> = items
        .iter()
        .filter(|s| s.state == PodSandboxState::SandboxReady as i32)
        .filter_map(|s| {
            let m = s.metadata.as_ref()?;
            Some(serde_json::json!({
                "metadata": {"name": m.name, "namespace": m.namespace, "uid": m.uid},
                "spec": {"nodeName": ctx.node_name},
                "status": {"phase": "Running"},
            }))
        })
        .collect();
    Ok(json(&serde_json::json!({
        "kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": pods,
    })))
}
