//! The probe actions that go over the network, as kubelet runs them: `httpGet` (HTTP,
//! and HTTPS without certificate verification), `tcpSocket` and `grpc`
//! (grpc.health.v1 `Health/Check`).
//!
//! kubelet's HTTPS probe skips verification (`InsecureSkipVerify`): a pod's serving
//! certificate is not for the pod IP, nor signed by anything the node trusts. The TLS
//! handshake itself is still checked (the server must hold the key of the certificate
//! it shows), and SNI is sent as Go sends it: the probe's host when it is a name, none
//! for an IP address. The `Host` header is the probe's `httpHeaders` one, else
//! `host:port`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{GRPCAction, HTTPGetAction};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// kubelet's User-Agent for probes.
const USER_AGENT: &str = "kube-probe/1.35";

pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `httpGet`: success is a status in 200..400 (kubelet's rule; redirects are not
/// followed, a 3xx is already a success).
pub async fn http(
    host: &str,
    port: u16,
    h: &HTTPGetAction,
    timeout: Duration,
) -> Result<(), String> {
    let https = match h.scheme.as_deref() {
        None | Some("") => false,
        Some(s) if s.eq_ignore_ascii_case("HTTP") => false,
        Some(s) if s.eq_ignore_ascii_case("HTTPS") => true,
        Some(s) => return Err(format!("httpGet.scheme: {s:?} is not HTTP or HTTPS")),
    };
    let path = h.path.as_deref().filter(|p| !p.is_empty()).unwrap_or("/");
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let addr = host_port(host, port);
    let scheme = if https { "https" } else { "http" };
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    let mut has_host = false;
    let mut has_agent = false;
    for hd in h.http_headers.iter().flatten() {
        has_host |= hd.name.eq_ignore_ascii_case("host");
        has_agent |= hd.name.eq_ignore_ascii_case("user-agent");
        req.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
    }
    if !has_host {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    if !has_agent {
        req.push_str(&format!("User-Agent: {USER_AGENT}\r\n"));
    }
    req.push_str("Accept: */*\r\nConnection: close\r\n\r\n");
    let work = async {
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("dial tcp {addr}: {e}"))?;
        if https {
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| format!("httpGet.host {host:?}: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(tls_config()?)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
            exchange(tls, &req, &addr).await
        } else {
            exchange(tcp, &req, &addr).await
        }
    };
    let code = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("Get \"{scheme}://{addr}{path}\": timeout after {timeout:?}"))??;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// Sends the request and reads the status code of the answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &str,
    addr: &str,
) -> Result<u16, String> {
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write {addr}: {e}"))?;
    let mut buf = vec![0u8; 1024];
    let mut n = 0;
    while n < 12 {
        let r = match s.read(&mut buf[n..]).await {
            Ok(r) => r,
            // A server that closes without close_notify after answering.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && n > 0 => 0,
            Err(e) => return Err(format!("read {addr}: {e}")),
        };
        if r == 0 {
            break;
        }
        n += r;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr}: not an HTTP answer"))
}

/// One client configuration for every HTTPS probe (building it loads the provider).
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CFG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CFG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(SkipVerify(provider.signature_verification_algorithms));
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| {
                Arc::new(
                    b.dangerous()
                        .with_custom_certificate_verifier(verifier)
                        .with_no_client_auth(),
                )
            })
            .map_err(|e| format!("TLS client configuration: {e}"))
    })
    .clone()
}

/// kubelet's `InsecureSkipVerify`: any certificate, but the handshake's signature must
/// be valid for the certificate shown.
#[derive(Debug)]
struct SkipVerify(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `tcpSocket`: the connection opens.
pub async fn tcp(host: &str, port: u16, timeout: Duration) -> Result<(), String> {
    let addr = host_port(host, port);
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("dial tcp {addr}: {e}")),
        Err(_) => Err(format!("dial tcp {addr}: timeout")),
    }
}

/// `grpc`: grpc.health.v1 `Health/Check` with the probe's `service` (plaintext, as
/// kubelet) answers SERVING.
pub async fn grpc(pod_ip: &str, g: &GRPCAction, timeout: Duration) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let port = u16::try_from(g.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("grpc.port: {} is out of range", g.port))?;
    let addr = host_port(pod_ip, port);
    let work = async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .and_then(|e| e.user_agent(USER_AGENT))
            .map_err(|e| format!("grpc endpoint {addr}: {e}"))?
            .connect_timeout(timeout)
            .connect()
            .await
            .map_err(|e| format!("failed to connect service {addr:?} within {timeout:?}: {e}"))?;
        let req = HealthCheckRequest {
            service: g.service.clone().unwrap_or_default(),
        };
        match HealthClient::new(ch).check(req).await {
            Ok(r) => {
                let st = r.into_inner().status;
                if st == ServingStatus::Serving as i32 {
                    Ok(())
                } else {
                    let name = ServingStatus::try_from(st)
                        .map(|s| s.as_str_name().to_string())
                        .unwrap_or_else(|_| st.to_string());
                    Err(format!("service unhealthy (responded with {name:?})"))
                }
            }
            Err(s) if s.code() == tonic::Code::Unimplemented => Err(format!(
                "this server does not implement the grpc health protocol \
                 (grpc.health.v1.Health): {}",
                s.message()
            )),
            Err(s) => Err(format!(
                "health rpc probe failed: {:?}: {}",
                s.code(),
                s.message()
            )),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("timeout: health rpc did not complete within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::HTTPHeader;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use rustls::pki_types::PrivateKeyDer;
    use tokio::sync::mpsc;

    /// What the test server saw of one request: the SNI and the request head.
    type Seen = (Option<String>, String);

    /// A TLS server on loopback with a self-signed certificate for `probe.test`,
    /// answering every request with `code`.
    async fn tls_server(code: u16) -> (u16, mpsc::UnboundedReceiver<Seen>) {
        let ck = rcgen::generate_simple_self_signed(vec!["probe.test".to_string()]).unwrap();
        let chain = vec![ck.cert.der().clone()];
        let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    continue;
                };
                let sni = s.get_ref().1.server_name().map(String::from);
                let mut head = Vec::new();
                let mut b = [0u8; 512];
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let _ = tx.send((sni, String::from_utf8_lossy(&head).into_owned()));
                let answer = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        (port, rx)
    }

    fn get(scheme: &str, path: &str, headers: &[(&str, &str)]) -> HTTPGetAction {
        HTTPGetAction {
            scheme: Some(scheme.into()),
            path: Some(path.into()),
            port: IntOrString::Int(0),
            http_headers: Some(
                headers
                    .iter()
                    .map(|(n, v)| HTTPHeader {
                        name: n.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn https_skips_verification_and_sends_what_kubelet_sends() {
        let (port, mut seen) = tls_server(200).await;
        http("127.0.0.1", port, &get("HTTPS", "healthz", &[]), T)
            .await
            .unwrap();
        let (sni, head) = seen.recv().await.unwrap();
        assert_eq!(sni, None, "no SNI for an IP address, as Go's client");
        assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
        assert!(
            head.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")),
            "{head}"
        );
        assert!(
            head.contains("\r\nUser-Agent: kube-probe/1.35\r\n"),
            "{head}"
        );

        // A host name is the SNI; a Host header given in the probe replaces the default.
        http(
            "localhost",
            port,
            &get("https", "/", &[("Host", "app.example")]),
            T,
        )
        .await
        .unwrap();
        let (sni, head) = seen.recv().await.unwrap();
        assert_eq!(sni.as_deref(), Some("localhost"));
        assert!(head.contains("\r\nHost: app.example\r\n"), "{head}");
        assert_eq!(head.matches("Host:").count(), 1, "{head}");
    }

    #[tokio::test]
    async fn https_failures_say_why() {
        let (port, _seen) = tls_server(503).await;
        let e = http("127.0.0.1", port, &get("HTTPS", "/", &[]), T)
            .await
            .unwrap_err();
        assert_eq!(e, "HTTP probe failed with statuscode: 503");

        // A plain HTTP server behind an HTTPS probe: the handshake fails.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
            }
        });
        let e = http("127.0.0.1", plain, &get("HTTPS", "/", &[]), T)
            .await
            .unwrap_err();
        assert!(e.starts_with("TLS handshake with 127.0.0.1:"), "{e}");
        // ... and the same server is fine over HTTP.
        http("127.0.0.1", plain, &get("HTTP", "/", &[]), T)
            .await
            .unwrap();

        let e = http("127.0.0.1", plain, &get("FTP", "/", &[]), T)
            .await
            .unwrap_err();
        assert_eq!(e, "httpGet.scheme: \"FTP\" is not HTTP or HTTPS");
    }

    #[tokio::test]
    async fn grpc_health_check() {
        use tonic_health::ServingStatus;
        let (reporter, svc) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("svc", ServingStatus::Serving)
            .await;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        let probe = |service: Option<&str>| GRPCAction {
            port: i32::from(port),
            service: service.map(String::from),
        };
        grpc("127.0.0.1", &probe(Some("svc")), T).await.unwrap();
        // No service: the server's overall health ("").
        grpc("127.0.0.1", &probe(None), T).await.unwrap();
        reporter
            .set_service_status("svc", ServingStatus::NotServing)
            .await;
        let e = grpc("127.0.0.1", &probe(Some("svc")), T).await.unwrap_err();
        assert_eq!(e, "service unhealthy (responded with \"NOT_SERVING\")");
        let e = grpc("127.0.0.1", &probe(Some("other")), T)
            .await
            .unwrap_err();
        assert!(e.starts_with("health rpc probe failed: NotFound"), "{e}");

        // Nothing listening.
        let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = free.local_addr().unwrap().port();
        drop(free);
        let e = grpc(
            "127.0.0.1",
            &GRPCAction {
                port: i32::from(closed),
                service: None,
            },
            T,
        )
        .await
        .unwrap_err();
        assert!(e.starts_with("failed to connect service"), "{e}");
        let e = grpc(
            "127.0.0.1",
            &GRPCAction {
                port: 70000,
                service: None,
            },
            T,
        )
        .await
        .unwrap_err();
        assert_eq!(e, "grpc.port: 70000 is out of range");
    }
}
