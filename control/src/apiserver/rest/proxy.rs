//! What the API server passes on to a node's kubelet API: `pods/log` (streamed),
//! `pods/exec`, `pods/attach`, `pods/portforward` (connection upgrades — SPDY or
//! WebSocket — spliced byte for byte), `nodes/proxy`, and `metrics.k8s.io/v1beta1`
//! (NodeMetrics, PodMetrics) computed from the nodes' `/stats/summary`.
//!
//! The kubelet is reached at the Node's InternalIP (else Hostname) and
//! `status.daemonEndpoints.kubeletEndpoint.Port`, over TLS with a client certificate
//! (CN `kube-apiserver-kubelet-client`, O `system:masters`) this server issues from its CA.
//! Like kube-apiserver without `--kubelet-certificate-authority` pinning a name, the
//! kubelet's certificate must chain to the cluster CA, but its names are not checked
//! (nodes often serve before they know every address they are reached at).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde_json::{Value, json};

use super::super::ApiState;
use super::super::auth::{Attributes, Authorizer, UserInfo};
use super::super::registry;
use super::super::status::ApiError;
use super::super::tls::{self, TlsError};
use super::{json_response, object};

/// The API server's client identity towards kubelets.
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// Verifies the kubelet's chain against the cluster CA; ignores the name it was dialled by.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The TLS client config for kubelets: a fresh client certificate from `data_dir`'s CA.
pub fn kubelet_client_config(data_dir: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let (cert_pem, key_pem) =
        tls::issue_client_cert_from_dir(data_dir, KUBELET_CLIENT_USER, &["system:masters"])?;
    let ca_path = data_dir.join("ca.crt");
    let pem = |e: rustls_pki_types::pem::Error| TlsError::Pem {
        path: ca_path.clone(),
        reason: e.to_string(),
    };
    let ca = std::fs::read(&ca_path).map_err(|source| TlsError::Io {
        path: ca_path.clone(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.map_err(pem)?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The routes this module serves (mounted next to the REST fallback).
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(pod_log))
        .route("/api/v1/namespaces/{ns}/pods/{name}/exec", any(pod_exec))
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/attach",
            any(pod_attach),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/portforward",
            any(pod_portforward),
        )
        .route("/api/v1/nodes/{name}/proxy", any(node_proxy_root))
        .route("/api/v1/nodes/{name}/proxy/{*path}", any(node_proxy))
        .route("/apis/metrics.k8s.io", get(metrics_group))
        .route("/apis/metrics.k8s.io/v1beta1", get(metrics_resources))
        .route("/apis/metrics.k8s.io/v1beta1/nodes", get(node_metrics_list))
        .route(
            "/apis/metrics.k8s.io/v1beta1/nodes/{name}",
            get(node_metrics_get),
        )
        .route("/apis/metrics.k8s.io/v1beta1/pods", get(pod_metrics_all))
        .route(
            "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods",
            get(pod_metrics_ns),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/{name}",
            get(pod_metrics_get),
        )
}

// ApiError is the crate's Status error, returned as the REST handlers return it.
#[allow(clippy::result_large_err)]
fn user(req: &Request) -> Result<UserInfo, ApiError> {
    req.extensions()
        .get::<UserInfo>()
        .cloned()
        .ok_or_else(ApiError::unauthorized)
}

#[allow(clippy::too_many_arguments, clippy::result_large_err)]
fn authorize(
    state: &ApiState,
    user: &UserInfo,
    verb: &str,
    group: &str,
    resource: &str,
    sub: Option<&str>,
    ns: Option<&str>,
    name: Option<&str>,
) -> Result<(), ApiError> {
    state
        .authorizer
        .authorize(
            user,
            &Attributes {
                verb,
                group,
                resource,
                subresource: sub,
                namespace: ns,
                name,
                path: None,
            },
        )
        .map_err(ApiError::forbidden)
}

fn query_pairs(req: &Request) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let d = |s: &str| {
                urlencoding::decode(&s.replace('+', " "))
                    .map(|c| c.into_owned())
                    .unwrap_or_else(|_| s.to_string())
            };
            (d(k), d(v))
        })
        .collect()
}

fn encode_query(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", urlencoding::encode(k), urlencoding::encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

async fn load(
    state: &ApiState,
    plural: &str,
    ns: Option<&str>,
    name: &str,
) -> Result<Value, ApiError> {
    let r = registry::find("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
    let kv = state
        .store
        .get(&r.key(ns, name))
        .await?
        .ok_or_else(|| ApiError::not_found("", plural, name))?;
    object::from_stored(&kv)
}

/// (host:port) of a node's kubelet API.
async fn kubelet_address(state: &ApiState, node: &str) -> Result<String, ApiError> {
    let n = load(state, "nodes", None, node).await?;
    let addrs = n["status"]["addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let pick = |t: &str| {
        addrs
            .iter()
            .find(|a| a["type"] == t)
            .and_then(|a| a["address"].as_str())
            .map(str::to_string)
    };
    let host = pick("InternalIP")
        .or_else(|| pick("ExternalIP"))
        .or_else(|| pick("Hostname"))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("node {node:?} has no address in status.addresses"),
            )
        })?;
    let port = n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .filter(|p| *p > 0)
        .unwrap_or(10250);
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

fn unavailable(msg: String) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "InternalError", msg)
}

/// Sends `req` (method, headers, body) to `path_query` on the node's kubelet; an upgrade
/// is answered with the kubelet's 101 and the two connections spliced.
async fn forward(
    state: &ApiState,
    node: &str,
    path_query: &str,
    mut req: Request,
) -> Result<Response, ApiError> {
    let tls_cfg = state.kubelet_client.clone().ok_or_else(|| {
        ApiError::internal("this API server has no kubelet client certificate (see its log)")
    })?;
    let addr = kubelet_address(state, node).await?;
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| unavailable(format!("dial kubelet of node {node:?} at {addr}: {e}")))?;
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
        .unwrap_or_default();
    let sni = ServerName::try_from(host.clone())
        .map_err(|e| unavailable(format!("kubelet address {addr}: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(tls_cfg)
        .connect(sni, tcp)
        .await
        .map_err(|e| unavailable(format!("TLS to kubelet of node {node:?} at {addr}: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| unavailable(format!("kubelet {addr}: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("kubelet connection: {e}");
        }
    });
    let upgrading = req.headers().contains_key(header::UPGRADE);
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut out = axum::http::Request::builder()
        .method(parts.method.clone())
        .uri(path_query)
        .header(header::HOST, addr.as_str());
    for (k, v) in &parts.headers {
        let skip = k == header::AUTHORIZATION
            || k == header::HOST
            || k.as_str().starts_with("impersonate-")
            || (!upgrading && (k == header::CONNECTION || k == header::UPGRADE));
        if !skip {
            out = out.header(k, v);
        }
    }
    let body = if upgrading { Body::empty() } else { body };
    let out = out
        .body(body)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut resp = sender
        .send_request(out)
        .await
        .map_err(|e| unavailable(format!("kubelet {addr}: {e}")))?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let backend_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (c, b) = tokio::join!(client_upgrade, backend_upgrade);
            if let (Ok(c), Ok(b)) = (c, b) {
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(b)).await;
            }
        });
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = resp.into_parts();
    // Hop-by-hop headers belong to the kubelet connection (and are illegal in HTTP/2).
    for h in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::HeaderName::from_static("keep-alive"),
    ] {
        parts.headers.remove(h);
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// The pod and the container a subresource names (`container` defaulted as kubectl and
/// kube-apiserver do: the default-container annotation, else the only container).
async fn pod_target(
    state: &ApiState,
    ns: &str,
    name: &str,
    container: Option<&str>,
) -> Result<(String, String), ApiError> {
    let pod = load(state, "pods", Some(ns), name).await?;
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("").to_string();
    if node.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let names: Vec<String> = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| pod["spec"][k].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    let regular: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let c = match container.filter(|c| !c.is_empty()) {
        Some(c) => {
            if !names.iter().any(|n| n == c) {
                return Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )));
            }
            c.to_string()
        }
        None => {
            if let Some(d) =
                pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"].as_str()
            {
                d.to_string()
            } else if regular.len() == 1 {
                regular[0].clone()
            } else {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    regular.join(" ")
                )));
            }
        }
    };
    Ok((node, c))
}

async fn pod_log(
    State(state): State<Arc<ApiState>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    req: Request,
) -> Response {
    run(async {
        let u = user(&req)?;
        authorize(
            &state,
            &u,
            "get",
            "",
            "pods",
            Some("log"),
            Some(&ns),
            Some(&name),
        )?;
        let q = query_pairs(&req);
        let container = q
            .iter()
            .find(|(k, _)| k == "container")
            .map(|(_, v)| v.as_str());
        let (node, c) = pod_target(&state, &ns, &name, container).await?;
        let keep = [
            "follow",
            "previous",
            "sinceSeconds",
            "sinceTime",
            "timestamps",
            "tailLines",
            "limitBytes",
        ];
        let fwd: Vec<(String, String)> = q
            .into_iter()
            .filter(|(k, _)| keep.contains(&k.as_str()))
            .collect();
        let path = format!(
            "/containerLogs/{}/{}/{}?{}",
            urlencoding::encode(&ns),
            urlencoding::encode(&name),
            urlencoding::encode(&c),
            encode_query(&fwd)
        );
        forward(&state, &node, &path, req).await
    })
    .await
}

/// exec/attach: the kubelet's parameter names (`input`, `output`, `error`, `tty`, `command`).
async fn stream_sub(
    state: Arc<ApiState>,
    ns: String,
    name: String,
    req: Request,
    sub: &'static str,
) -> Result<Response, ApiError> {
    let u = user(&req)?;
    authorize(
        &state,
        &u,
        "create",
        "",
        "pods",
        Some(sub),
        Some(&ns),
        Some(&name),
    )?;
    let q = query_pairs(&req);
    let container = q
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.as_str());
    let (node, c) = pod_target(&state, &ns, &name, container).await?;
    let mut fwd = Vec::new();
    for (k, v) in &q {
        let truthy = matches!(v.as_str(), "true" | "1");
        match k.as_str() {
            "stdin" if truthy => fwd.push(("input".to_string(), "1".to_string())),
            "stdout" if truthy => fwd.push(("output".to_string(), "1".to_string())),
            "stderr" if truthy => fwd.push(("error".to_string(), "1".to_string())),
            "tty" if truthy => fwd.push(("tty".to_string(), "1".to_string())),
            "command" if sub == "exec" => fwd.push(("command".to_string(), v.clone())),
            _ => {}
        }
    }
    let path = format!(
        "/{sub}/{}/{}/{}?{}",
        urlencoding::encode(&ns),
        urlencoding::encode(&name),
        urlencoding::encode(&c),
        encode_query(&fwd)
    );
    forward(&state, &node, &path, req).await
}

async fn run(f: impl Future<Output = Result<Response, ApiError>>) -> Response {
    match f.await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn pod_exec(
    State(state): State<Arc<ApiState>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    req: Request,
) -> Response {
    run(stream_sub(state, ns, name, req, "exec")).await
}

async fn pod_attach(
    State(state): State<Arc<ApiState>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    req: Request,
) -> Response {
    run(stream_sub(state, ns, name, req, "attach")).await
}

async fn pod_portforward(
    State(state): State<Arc<ApiState>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    req: Request,
) -> Response {
    run(async {
        let u = user(&req)?;
        authorize(
            &state,
            &u,
            "create",
            "",
            "pods",
            Some("portforward"),
            Some(&ns),
            Some(&name),
        )?;
        let pod = load(&state, "pods", Some(&ns), &name).await?;
        let node = pod["spec"]["nodeName"].as_str().unwrap_or("").to_string();
        if node.is_empty() {
            return Err(ApiError::bad_request(format!(
                "pod {name} does not have a host assigned"
            )));
        }
        let q = query_pairs(&req);
        let fwd: Vec<(String, String)> = q.into_iter().filter(|(k, _)| k == "ports").collect();
        let path = format!(
            "/portForward/{}/{}?{}",
            urlencoding::encode(&ns),
            urlencoding::encode(&name),
            encode_query(&fwd)
        );
        forward(&state, &node, &path, req).await
    })
    .await
}

fn verb_of(m: &axum::http::Method) -> &'static str {
    match m.as_str() {
        "GET" | "HEAD" => "get",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "get",
    }
}

async fn node_proxy_root(
    State(state): State<Arc<ApiState>>,
    UrlPath(name): UrlPath<String>,
    req: Request,
) -> Response {
    node_proxy_to(state, name, String::new(), req).await
}

async fn node_proxy(
    State(state): State<Arc<ApiState>>,
    UrlPath((name, path)): UrlPath<(String, String)>,
    req: Request,
) -> Response {
    node_proxy_to(state, name, path, req).await
}

async fn node_proxy_to(state: Arc<ApiState>, name: String, path: String, req: Request) -> Response {
    run(async {
        let u = user(&req)?;
        authorize(
            &state,
            &u,
            verb_of(req.method()),
            "",
            "nodes",
            Some("proxy"),
            None,
            Some(&name),
        )?;
        let q = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let target = format!("/{path}{q}");
        forward(&state, &name, &target, req).await
    })
    .await
}

// ---- metrics.k8s.io/v1beta1 ----

const METRICS_GV: &str = "metrics.k8s.io/v1beta1";

/// metrics.k8s.io's entry in `GET /apis` (what `kubectl top` looks for).
pub fn metrics_group_entry() -> Value {
    let v = json!({"groupVersion": METRICS_GV, "version": "v1beta1"});
    json!({"name": "metrics.k8s.io", "versions": [v.clone()], "preferredVersion": v})
}

/// metrics.k8s.io in aggregated discovery (`apidiscovery.k8s.io/v2`).
pub fn metrics_aggregated() -> Value {
    let res = |plural: &str, kind: &str, scope: &str| {
        json!({
            "resource": plural,
            "responseKind": {"group": "metrics.k8s.io", "version": "v1beta1", "kind": kind},
            "scope": scope,
            "singularResource": "",
            "verbs": ["get", "list"],
        })
    };
    json!({
        "metadata": {"name": "metrics.k8s.io"},
        "versions": [{
            "version": "v1beta1",
            "resources": [res("nodes", "NodeMetrics", "Cluster"), res("pods", "PodMetrics", "Namespaced")],
            "freshness": "Current",
        }],
    })
}

async fn metrics_group() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIGroup", "apiVersion": "v1", "name": "metrics.k8s.io",
            "versions": [{"groupVersion": METRICS_GV, "version": "v1beta1"}],
            "preferredVersion": {"groupVersion": METRICS_GV, "version": "v1beta1"},
        }),
    )
}

async fn metrics_resources() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": METRICS_GV,
            "resources": [
                {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
                {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]},
            ],
        }),
    )
}

/// One node's `/stats/summary`, fetched through [`forward`].
async fn summary(state: &ApiState, node: &str) -> Result<Value, ApiError> {
    let req = axum::http::Request::builder()
        .method("GET")
        .uri("/stats/summary")
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = forward(state, node, "/stats/summary", req).await?;
    if !resp.status().is_success() {
        return Err(unavailable(format!(
            "stats of node {node:?}: kubelet answered {}",
            resp.status()
        )));
    }
    let body = super::read_body(resp.into_body()).await?;
    serde_json::from_slice(&body).map_err(|e| unavailable(format!("stats of node {node:?}: {e}")))
}

fn cpu_quantity(nano_cores: u64) -> String {
    format!("{nano_cores}n")
}

fn mem_quantity(bytes: u64) -> String {
    if bytes.is_multiple_of(1024) {
        format!("{}Ki", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

fn usage(v: &Value) -> Value {
    json!({
        "cpu": cpu_quantity(v["cpu"]["usageNanoCores"].as_u64().unwrap_or(0)),
        "memory": mem_quantity(v["memory"]["workingSetBytes"].as_u64().unwrap_or(0)),
    })
}

async fn node_names(state: &ApiState) -> Result<Vec<String>, ApiError> {
    let r = registry::find("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let items = state
        .store
        .list(&r.list_prefix(None), None, 0, 0)
        .await?
        .items;
    Ok(items
        .iter()
        .filter_map(|kv| object::from_stored(kv).ok())
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
        .collect())
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn node_metrics(name: &str, s: &Value) -> Value {
    json!({
        "kind": "NodeMetrics", "apiVersion": METRICS_GV,
        "metadata": {"name": name, "creationTimestamp": now()},
        "timestamp": s["node"]["cpu"]["time"].as_str().map(str::to_string).unwrap_or_else(now),
        "window": "1s",
        "usage": usage(&s["node"]),
    })
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": METRICS_GV, "metadata": {}, "items": items})
}

async fn node_metrics_list(
    State(state): State<Arc<ApiState>>,
    axum::Extension(u): axum::Extension<UserInfo>,
) -> Response {
    run(async {
        authorize(
            &state,
            &u,
            "list",
            "metrics.k8s.io",
            "nodes",
            None,
            None,
            None,
        )?;
        let mut items = Vec::new();
        for n in node_names(&state).await? {
            match summary(&state, &n).await {
                Ok(s) => items.push(node_metrics(&n, &s)),
                Err(e) => tracing::debug!(node = %n, "node metrics: {}", e.to_status()),
            }
        }
        Ok(json_response(
            StatusCode::OK,
            &list("NodeMetricsList", items),
        ))
    })
    .await
}

async fn node_metrics_get(
    State(state): State<Arc<ApiState>>,
    UrlPath(name): UrlPath<String>,
    axum::Extension(u): axum::Extension<UserInfo>,
) -> Response {
    run(async {
        authorize(
            &state,
            &u,
            "get",
            "metrics.k8s.io",
            "nodes",
            None,
            None,
            Some(&name),
        )?;
        load(&state, "nodes", None, &name).await?;
        let s = summary(&state, &name).await?;
        Ok(json_response(StatusCode::OK, &node_metrics(&name, &s)))
    })
    .await
}

/// The (namespace, name) of the pods `labelSelector` (in the query) picks, `None` without
/// one: metrics-server filters PodMetrics by their pods' labels, and the HPA controller
/// lists them with its target's selector.
async fn selected_pods(
    state: &ApiState,
    ns: Option<&str>,
    query: Option<&str>,
) -> Result<Option<std::collections::HashSet<(String, String)>>, ApiError> {
    let selector = query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "labelSelector")
        .map(|(_, v)| {
            urlencoding::decode(&v.replace('+', " "))
                .map(|c| c.into_owned())
                .unwrap_or_else(|_| v.to_string())
        })
        .filter(|s| !s.trim().is_empty());
    let Some(selector) = selector else {
        return Ok(None);
    };
    let selector =
        super::selector::LabelSelector::parse(&selector).map_err(ApiError::bad_request)?;
    let r = registry::find("", "v1", "pods")
        .ok_or_else(|| ApiError::internal("pods are not served"))?;
    let items = state
        .store
        .list(&r.list_prefix(ns), None, 0, 0)
        .await?
        .items;
    Ok(Some(
        items
            .iter()
            .filter_map(|kv| object::from_stored(kv).ok())
            .filter(|p| selector.matches(p))
            .map(|p| {
                let s = |f: &str| p["metadata"][f].as_str().unwrap_or("").to_string();
                (s("namespace"), s("name"))
            })
            .collect(),
    ))
}

/// PodMetrics of every pod (in `ns`, named `name`, among `only`) on every node.
async fn pod_metrics(
    state: &ApiState,
    ns: Option<&str>,
    name: Option<&str>,
    only: Option<&std::collections::HashSet<(String, String)>>,
) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    let mut seen: HashMap<(String, String), ()> = HashMap::new();
    for n in node_names(state).await? {
        let Ok(s) = summary(state, &n).await else {
            continue;
        };
        for p in s["pods"].as_array().cloned().unwrap_or_default() {
            let pns = p["podRef"]["namespace"].as_str().unwrap_or("").to_string();
            let pname = p["podRef"]["name"].as_str().unwrap_or("").to_string();
            if ns.is_some_and(|x| x != pns)
                || name.is_some_and(|x| x != pname)
                || only.is_some_and(|o| !o.contains(&(pns.clone(), pname.clone())))
            {
                continue;
            }
            if seen.insert((pns.clone(), pname.clone()), ()).is_some() {
                continue;
            }
            let containers: Vec<Value> = p["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|c| json!({"name": c["name"], "usage": usage(c)}))
                .collect();
            out.push(json!({
                "kind": "PodMetrics", "apiVersion": METRICS_GV,
                "metadata": {"name": pname, "namespace": pns, "creationTimestamp": now()},
                "timestamp": p["cpu"]["time"].as_str().map(str::to_string).unwrap_or_else(now),
                "window": "1s",
                "containers": containers,
            }));
        }
    }
    Ok(out)
}

async fn pod_metrics_all(
    State(state): State<Arc<ApiState>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    axum::Extension(u): axum::Extension<UserInfo>,
) -> Response {
    run(async {
        authorize(
            &state,
            &u,
            "list",
            "metrics.k8s.io",
            "pods",
            None,
            None,
            None,
        )?;
        Ok(json_response(
            StatusCode::OK,
            &list(
                "PodMetricsList",
                pod_metrics(
                    &state,
                    None,
                    None,
                    selected_pods(&state, None, query.as_deref())
                        .await?
                        .as_ref(),
                )
                .await?,
            ),
        ))
    })
    .await
}

async fn pod_metrics_ns(
    State(state): State<Arc<ApiState>>,
    UrlPath(ns): UrlPath<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    axum::Extension(u): axum::Extension<UserInfo>,
) -> Response {
    run(async {
        authorize(
            &state,
            &u,
            "list",
            "metrics.k8s.io",
            "pods",
            None,
            Some(&ns),
            None,
        )?;
        Ok(json_response(
            StatusCode::OK,
            &list(
                "PodMetricsList",
                pod_metrics(
                    &state,
                    Some(&ns),
                    None,
                    selected_pods(&state, Some(&ns), query.as_deref())
                        .await?
                        .as_ref(),
                )
                .await?,
            ),
        ))
    })
    .await
}

async fn pod_metrics_get(
    State(state): State<Arc<ApiState>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    axum::Extension(u): axum::Extension<UserInfo>,
) -> Response {
    run(async {
        authorize(
            &state,
            &u,
            "get",
            "metrics.k8s.io",
            "pods",
            None,
            Some(&ns),
            Some(&name),
        )?;
        load(&state, "pods", Some(&ns), &name).await?;
        let mut items = pod_metrics(&state, Some(&ns), Some(&name), None).await?;
        let Some(m) = items.pop() else {
            return Err(ApiError::not_found("metrics.k8s.io", "pods", &name));
        };
        Ok(json_response(StatusCode::OK, &m))
    })
    .await
}
