//! `/exec`, `/attach`, `/portForward`: the kubelet asks the CRI for a streaming URL and
//! proxies the client's upgrade request to it, then splices the two connections byte for
//! byte. The CRI's streaming server speaks the protocols (SPDY/3.1 and WebSocket
//! remotecommand, port-forward), so this side never parses a frame.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::{AttachRequest, ExecRequest, PortForwardRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ApiError, Ctx, pods, query_multi};

/// Headers of the upgrade handshake that must reach the streaming server.
const FORWARDED: &[&str] = &[
    "connection",
    "upgrade",
    "x-stream-protocol-version",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
];

fn flag(q: &std::collections::HashMap<String, Vec<String>>, names: &[&str]) -> bool {
    names.iter().any(|n| {
        q.get(*n)
            .and_then(|v| v.last())
            .is_some_and(|v| matches!(v.as_str(), "1" | "true"))
    })
}

fn cri_err(what: &str, e: tonic::Status) -> ApiError {
    match e.code() {
        tonic::Code::NotFound => ApiError::NotFound(e.message().to_string()),
        tonic::Code::InvalidArgument => ApiError::BadRequest(e.message().to_string()),
        _ => ApiError::Internal(format!("CRI {what}: {}", e.message())),
    }
}

pub async fn exec(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let q = query_multi(&req);
    let cmd = q.get("command").cloned().unwrap_or_default();
    if cmd.is_empty() {
        return Err(ApiError::BadRequest(
            "command: you must specify at least one command for the container".into(),
        ));
    }
    let mut cri = ctx.cri.clone();
    let c = pods::container(&mut cri, &ns, &pod, &container, false).await?;
    let tty = flag(&q, &["tty"]);
    let url = cri
        .exec(ExecRequest {
            container_id: c.id,
            cmd,
            tty,
            stdin: flag(&q, &["input", "stdin"]),
            stdout: flag(&q, &["output", "stdout"]),
            stderr: flag(&q, &["error", "stderr"]) && !tty,
        })
        .await
        .map_err(|e| cri_err("Exec", e))?
        .into_inner()
        .url;
    proxy_upgrade(req, &url).await
}

pub async fn attach(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let q = query_multi(&req);
    let mut cri = ctx.cri.clone();
    let c = pods::container(&mut cri, &ns, &pod, &container, false).await?;
    let tty = flag(&q, &["tty"]);
    let url = cri
        .attach(AttachRequest {
            container_id: c.id,
            tty,
            stdin: flag(&q, &["input", "stdin"]),
            stdout: flag(&q, &["output", "stdout"]),
            stderr: flag(&q, &["error", "stderr"]) && !tty,
        })
        .await
        .map_err(|e| cri_err("Attach", e))?
        .into_inner()
        .url;
    proxy_upgrade(req, &url).await
}

pub async fn port_forward(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, pod)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let mut cri = ctx.cri.clone();
    let sb = pods::sandbox(&mut cri, &ns, &pod).await?;
    let url = cri
        .port_forward(PortForwardRequest {
            pod_sandbox_id: sb.id,
            port: Vec::new(),
        })
        .await
        .map_err(|e| cri_err("PortForward", e))?
        .into_inner()
        .url;
    proxy_upgrade(req, &url).await
}

/// Sends the client's handshake to `url` (the original query appended); a 101 answer is
/// passed back and the connections spliced, anything else is relayed as is.
pub async fn proxy_upgrade(mut req: Request, url: &str) -> Result<Response, ApiError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ApiError::Internal(format!("streaming URL {url}: not http://")))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = match req.uri().query() {
        Some(q) if !path.contains('?') => format!("{path}?{q}"),
        _ => path.to_string(),
    };
    let mut backend = TcpStream::connect(host)
        .await
        .map_err(|e| ApiError::Internal(format!("connect to streaming server {host}: {e}")))?;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n",
        req.method(),
        if path.is_empty() { "/" } else { &path }
    );
    for (k, v) in req.headers() {
        if FORWARDED.contains(&k.as_str())
            && let Ok(v) = v.to_str()
        {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    backend
        .write_all(head.as_bytes())
        .await
        .map_err(|e| ApiError::Internal(format!("streaming server {host}: {e}")))?;
    let (status, headers, leftover) = read_head(&mut backend)
        .await
        .map_err(|e| ApiError::Internal(format!("streaming server {host}: {e}")))?;
    let mut resp = Response::builder().status(status);
    let upgraded = status == StatusCode::SWITCHING_PROTOCOLS;
    for (k, v) in &headers {
        let k_l = k.to_ascii_lowercase();
        if !upgraded
            && matches!(
                k_l.as_str(),
                "content-length" | "transfer-encoding" | "connection"
            )
        {
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            resp = resp.header(k, v);
        }
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        // Relay the error (bounded; the streaming server closes after it).
        let mut body = leftover;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let mut b = [0u8; 4096];
            while body.len() < 64 * 1024 {
                match backend.read(&mut b).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => body.extend_from_slice(&b[..n]),
                }
            }
        })
        .await;
        return resp
            .body(Body::from(body))
            .map_err(|e| ApiError::Internal(e.to_string()));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let up = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!("kubelet API upgrade: {e}");
                return;
            }
        };
        let mut client = TokioIo::new(up);
        if !leftover.is_empty() && client.write_all(&leftover).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
    });
    resp.body(Body::empty())
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Reads an HTTP response head: (status, headers, bytes read past the head).
pub async fn read_head<R: AsyncReadExt + Unpin>(
    r: &mut R,
) -> std::io::Result<(StatusCode, Vec<(String, String)>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        let mut chunk = [0u8; 2048];
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the response head"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("response head too large"));
        }
    };
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut hs);
    resp.parse(&buf[..end])
        .map_err(|e| std::io::Error::other(format!("bad response head: {e}")))?;
    let code = StatusCode::from_u16(resp.code.unwrap_or(502)).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    Ok((code, headers, buf[end..].to_vec()))
}
