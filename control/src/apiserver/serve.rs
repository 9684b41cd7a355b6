//! The listener: TLS accept loop (client certificates become the connection's identity),
//! routing, authentication middleware, health and version endpoints, bootstrap of the
//! system namespaces, and clean shutdown (stop accepting, end watches, drain).

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower::ServiceExt;

use super::auth::{self, Attributes, Authorizer, PeerIdentity, TokenFile, UserInfo};
use super::rest::{self, json_response};
use super::status::ApiError;
use super::{ApiState, Options, discovery, kubeconfig, openapi, tls};
use crate::store::{self, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("opening store {url}: {source}")]
    Store { url: String, source: StoreError },
    #[error("--token-file: {0}")]
    TokenFile(#[from] auth::TokenFileError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error("writing the default RBAC roles: {0}")]
    Rbac(StoreError),
    #[error("bootstrapping namespace {name}: {source}")]
    Bootstrap { name: String, source: StoreError },
}

/// The namespaces that always exist.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

fn local_addresses() -> Vec<IpAddr> {
    nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| {
                    let sa = a.address?;
                    if let Some(v4) = sa.as_sockaddr_in() {
                        Some(IpAddr::V4(v4.ip()))
                    } else {
                        sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                    }
                })
                .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
                .collect()
        })
        .unwrap_or_default()
}

async fn bootstrap(store: &Arc<dyn Store>) -> Result<(), ServerError> {
    for ns in SYSTEM_NAMESPACES {
        let key = format!("/registry/namespaces/{ns}");
        let obj = json!({
            "kind": "Namespace", "apiVersion": "v1",
            "metadata": {"name": ns, "uid": uuid::Uuid::new_v4().to_string(),
                         "creationTimestamp": rest::object::now_rfc3339(),
                         "labels": {"kubernetes.io/metadata.name": ns}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        let bytes = serde_json::to_vec(&obj).unwrap_or_default();
        match store.create(&key, bytes).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(source) => {
                return Err(ServerError::Bootstrap {
                    name: ns.to_string(),
                    source,
                });
            }
        }
    }
    match super::conversion::migrate_legacy_events(store.as_ref()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            events = n,
            "moved events.k8s.io/v1 Events into core storage"
        ),
        // Events are best effort: the old ones stay where they were, the server runs.
        Err(e) => tracing::warn!(error = %e, "moving events.k8s.io/v1 Events: {e}"),
    }
    Ok(())
}

/// The address other machines (and pods) reach this server at: `--advertise-address`, else
/// the listen address, else the first non-loopback IPv4 address of this host.
fn advertise_address(opts: &Options, bound: IpAddr) -> IpAddr {
    if let Some(a) = opts.advertise_address {
        return a;
    }
    if !bound.is_unspecified() {
        return bound;
    }
    local_addresses()
        .into_iter()
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// Starts the API server and runs it until `shutdown` resolves.
pub async fn run(opts: Options, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    let mut ips = local_addresses();
    if let Some(a) = opts.advertise_address {
        ips.push(a);
    }
    if !opts.listen.ip().is_unspecified() {
        ips.push(opts.listen.ip());
    }
    let mut names = Vec::new();
    if let Ok(h) = nix::unistd::gethostname()
        && let Some(h) = h.to_str()
    {
        names.push(h.to_string());
    }
    let pki = tls::load_or_create(&opts.data_dir, tls::serving_sans(&ips, &names))?;
    let tls_config = Arc::new(tls::server_config(&pki)?);

    let url = opts
        .store_url
        .clone()
        .unwrap_or_else(|| format!("sqlite:{}", opts.data_dir.join("state.db").display()));
    let backend = store::open(&url)
        .await
        .map_err(|source| ServerError::Store {
            url: url.clone(),
            source,
        })?;
    // Every watch goes through one cache: a thousand watchers cost one store watch.
    let cached = store::cache::CachedStore::new(backend, store::cache::CacheConfig::default())
        .await
        .map_err(|source| ServerError::Store {
            url: url.clone(),
            source,
        })?;
    let store: Arc<dyn Store> = Arc::new(cached);
    bootstrap(&store).await?;
    let allocators =
        crate::admission::allocator::Allocators::new(&opts.service_cluster_ip_range, 30000..=32767)
            .map_err(ServerError::Config)?;
    match allocators.repair(store.as_ref()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!("released {n} ClusterIP/NodePort allocations left by a crash"),
        Err(source) => {
            return Err(ServerError::Store {
                url: url.clone(),
                source,
            });
        }
    }
    let tokens = match &opts.token_file {
        Some(p) => TokenFile::load(p)?,
        None => TokenFile::default(),
    };

    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: opts.listen,
            source,
        })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: opts.listen,
            source,
        })?;
    let server_url = kubeconfig::server_url(bound);
    let kc_path = opts.data_dir.join("admin.kubeconfig");
    kubeconfig::write(
        &kc_path,
        &kubeconfig::render(
            &server_url,
            &pki.ca_cert_pem,
            &pki.admin_cert_pem,
            &pki.admin_key_pem,
            "admin",
        ),
    )
    .map_err(|source| ServerError::Write {
        path: kc_path,
        source,
    })?;

    let compactor = store::spawn_compactor(store.clone(), opts.compactor.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    super::rbac::policy::reconcile(store.as_ref())
        .await
        .map_err(ServerError::Rbac)?;
    let rbac = super::rbac::cache::RbacCache::start(store.clone(), stop_rx.clone())
        .await
        .map_err(ServerError::Rbac)?;
    let signer = super::sa_token::Signer::load_or_create(&opts.data_dir)?;
    let state = Arc::new(ApiState {
        store,
        tokens,
        service_accounts: Some(Arc::new(signer)),
        service_account_token_volumes: opts.service_account_token_volumes,
        authorizer: Arc::new(super::rbac::ClusterAuthorizer { rbac }),
        admission: crate::admission::Admission::new(allocators),
        server_address: format!("{}:{}", bound.ip(), bound.port()),
        service_cluster_ip_range: opts.service_cluster_ip_range.clone(),
        kubelet_client: match rest::proxy::kubelet_client_config(&opts.data_dir) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                tracing::warn!(
                    "no kubelet client certificate (logs/exec/port-forward will fail): {e}"
                );
                None
            }
        },
        shutdown: stop_rx,
    });
    let app = router(state.clone());
    let master = super::master_endpoints::spawn(
        state.clone(),
        advertise_address(&opts, bound.ip()),
        bound.port(),
    );
    tracing::info!(%server_url, store = %url, "hull API server listening");
    let manager = if opts.controllers {
        let config = internal_client(&opts.data_dir, &server_url, &pki.ca_cert_pem).await?;
        let mut stopped = state.shutdown.clone();
        let mut options = opts.manager.clone();
        if options.root_ca_pem.is_none() {
            options.root_ca_pem = Some(pki.ca_cert_pem.clone());
        }
        if options.cluster_signing_dir.is_none() {
            options.cluster_signing_dir = Some(opts.data_dir.clone());
        }
        Some(
            crate::manager::spawn(config, options, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .map_err(|e| ServerError::Config(format!("controller manager runtime: {e}")))?,
        )
    } else {
        None
    };

    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((tcp, peer)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let app = app.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => return,
                    };
                    let identity = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| tls::identity_from_cert(c.as_ref()))
                        .map(|(name, groups)| UserInfo { name, uid: String::new(), groups });
                    let peer_identity = PeerIdentity(identity);
                    let svc = app.map_request(move |mut req: Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(peer_identity.clone());
                        req
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(svc));
                    let _ = watcher.watch(conn.into_owned()).await;
                });
            }
        }
    }
    // Stop accepting, end watches, then give in-flight requests a moment to finish.
    drop(listener);
    let _ = stop_tx.send(true);
    if let Some(m) = manager {
        // The manager releases its Lease on the way out; give it a moment to do so.
        let _ = tokio::time::timeout(Duration::from_secs(3), m).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    compactor.abort();
    master.abort();
    tracing::info!("hull API server stopped");
    Ok(())
}

/// A kube-rs client for the control loops in this process: they speak HTTPS to this very
/// server, like an external controller manager, with a client certificate of their own.
async fn internal_client(
    data_dir: &std::path::Path,
    server_url: &str,
    ca_pem: &str,
) -> Result<kube::Config, ServerError> {
    let (cert, key) = tls::issue_client_cert_from_dir(
        data_dir,
        "system:kube-controller-manager",
        &["system:masters"],
    )?;
    let text = kubeconfig::render(
        server_url,
        ca_pem,
        &cert,
        &key,
        "system:kube-controller-manager",
    );
    let config = async {
        let kc = kube::config::Kubeconfig::from_yaml(&text).map_err(|e| e.to_string())?;
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| e.to_string())
    }
    .await
    .map_err(ServerError::Config)?;
    // Checked here, built again on the manager's own runtime (a client spawns its I/O
    // tasks on the runtime it is built on).
    kube::Client::try_from(config.clone()).map_err(|e| ServerError::Config(e.to_string()))?;
    Ok(config)
}

/// The routes: health and version (open), everything else behind authentication.
pub fn router(state: Arc<ApiState>) -> Router {
    let open = Router::new()
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(ready))
        .route("/healthz/{check}", get(health))
        .route("/livez/{check}", get(health))
        .route("/readyz/{check}", get(ready));
    let authed = Router::new()
        .route("/version", get(version))
        .route("/api", get(api_root))
        .route("/apis", get(apis_root))
        .route("/api/v1", get(core_resources))
        .route("/apis/{group}", get(group_doc))
        .route("/apis/{group}/{version}", get(group_resources))
        .route("/openapi/v2", get(openapi_v2))
        .route("/openapi/v3", get(openapi_v3_index))
        .route("/openapi/v3/{*path}", get(openapi_v3_doc))
        .merge(rest::proxy::routes())
        .merge(super::reviews::routes())
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/openid/v1/jwks", get(jwks))
        .fallback(rest::handle)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    open.merge(authed).with_state(state)
}

async fn authenticate(
    State(state): State<Arc<ApiState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let authz = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let user = super::authn::authenticate(
        &state,
        req.extensions().get::<PeerIdentity>(),
        authz.as_deref(),
    )
    .await;
    let user = match user.map(|u| super::authn::impersonate(&state, u, req.headers())) {
        Some(Ok(u)) => Some(u),
        Some(Err(e)) => return e.into_response(),
        None => None,
    };
    match user {
        Some(user) => {
            let path = req.uri().path().to_string();
            if !rest::is_resource_path(&path) {
                let verb = req.method().as_str().to_ascii_lowercase();
                let attrs = Attributes::non_resource(&verb, &path);
                if let Err(reason) = state.authorizer.authorize(&user, &attrs) {
                    return super::rbac::forbidden(&user, &attrs, &reason).into_response();
                }
            }
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        None => ApiError::unauthorized().into_response(),
    }
}

async fn openid_configuration(State(state): State<Arc<ApiState>>) -> Response {
    match &state.service_accounts {
        Some(s) => json_response(StatusCode::OK, &s.openid_configuration()),
        None => not_found(),
    }
}

async fn jwks(State(state): State<Arc<ApiState>>) -> Response {
    match &state.service_accounts {
        Some(s) => {
            let mut r = json_response(StatusCode::OK, &s.jwks());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/jwk-set+json"),
            );
            r
        }
        None => not_found(),
    }
}

async fn health() -> &'static str {
    "ok"
}

async fn ready(State(state): State<Arc<ApiState>>) -> Response {
    match state.store.current_revision().await {
        Ok(_) => "ok".into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("[-]etcd failed: {e}\nreadyz check failed\n"),
        )
            .into_response(),
    }
}

async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1", "minor": "35",
            "gitVersion": format!("v1.35.0-hull.{}", env!("CARGO_PKG_VERSION")),
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z",
            "goVersion": "rust", "compiler": "rustc", "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a }),
        }),
    )
}

fn discovery_response(
    req_accept: &str,
    aggregated: impl FnOnce() -> Value,
    plain: Value,
) -> Response {
    if discovery::wants_aggregated(req_accept) {
        let mut r = json_response(StatusCode::OK, &aggregated());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(discovery::AGGREGATED_V2),
        );
        r.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Accept"));
        return r;
    }
    json_response(StatusCode::OK, &plain)
}

fn accept(req: &axum::http::HeaderMap) -> &str {
    req.get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn api_root(State(state): State<Arc<ApiState>>, headers: axum::http::HeaderMap) -> Response {
    discovery_response(
        accept(&headers),
        || discovery::aggregated(true),
        discovery::api_versions(&state.server_address),
    )
}

async fn apis_root(headers: axum::http::HeaderMap) -> Response {
    discovery_response(
        accept(&headers),
        || discovery::aggregated(false),
        discovery::api_group_list(),
    )
}

fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
    )
    .into_response()
}

async fn core_resources() -> Response {
    match discovery::api_resource_list("", "v1") {
        Some(v) => json_response(StatusCode::OK, &v),
        None => not_found(),
    }
}

async fn group_doc(Path(group): Path<String>) -> Response {
    match discovery::api_group(&group) {
        Some(v) => json_response(StatusCode::OK, &v),
        None => not_found(),
    }
}

async fn group_resources(Path((group, version)): Path<(String, String)>) -> Response {
    match discovery::api_resource_list(&group, &version) {
        Some(v) => json_response(StatusCode::OK, &v),
        None => not_found(),
    }
}

fn raw_json(body: &'static [u8]) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn openapi_v2(headers: axum::http::HeaderMap) -> Response {
    let a = accept(&headers);
    if !a.is_empty() && !a.contains("json") && !a.contains("*/*") {
        return ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "NotAcceptable",
            "only application/json is served for /openapi/v2",
        )
        .into_response();
    }
    raw_json(openapi::v2())
}

async fn openapi_v3_index() -> Response {
    raw_json(openapi::v3_index())
}

async fn openapi_v3_doc(Path(path): Path<String>) -> Response {
    match openapi::v3_doc(&path) {
        Some(d) => raw_json(d),
        None => not_found(),
    }
}

/// Runs the server on its own tokio runtime until SIGINT or SIGTERM (for `hull server`).
pub fn run_until_signal(opts: Options) -> Result<(), ServerError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| ServerError::Listen {
            addr: opts.listen,
            source,
        })?;
    rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|source| ServerError::Listen {
            addr: opts.listen,
            source,
        })?;
        let mut int = signal(SignalKind::interrupt()).map_err(|source| ServerError::Listen {
            addr: opts.listen,
            source,
        })?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        };
        run(opts, stop).await
    })
}
