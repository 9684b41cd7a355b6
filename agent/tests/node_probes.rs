//! httpGet probes over HTTPS and gRPC probes on one real node (see node_support).
//!
//! busybox serves neither, so the servers are this test's own, on the host's loopback:
//! the HTTPS probe names `host: 127.0.0.1` (the agent probes from the host's network
//! namespace, as kubelet does), and the gRPC probe (which has no host field: it always
//! dials the pod IP) belongs to a hostNetwork pod, whose IP is the node's, 127.0.0.1 here.
//! Each server is switched between healthy and not, and the pods follow in and out of
//! Ready.

mod node_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use node_support::*;
use rustls::pki_types::PrivateKeyDer;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::ServingStatus;

/// An HTTPS server (self-signed certificate nobody trusts) answering 200 while
/// `healthy`, else 503; counts the requests that reached it.
async fn https_server(healthy: Arc<AtomicBool>, hits: Arc<AtomicUsize>) -> u16 {
    let ck = rcgen::generate_simple_self_signed(vec!["probe.test".to_string()]).unwrap();
    let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (acceptor, healthy, hits) = (acceptor.clone(), healthy.clone(), hits.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut b = [0u8; 512];
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                if head.starts_with(b"GET /healthz ") {
                    hits.fetch_add(1, Ordering::SeqCst);
                }
                let code = if healthy.load(Ordering::SeqCst) {
                    200
                } else {
                    503
                };
                let answer = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

fn ready(p: &k8s_openapi::api::core::v1::Pod) -> bool {
    cond(p, "Ready").as_deref() == Some("True")
}

#[test]
fn https_and_grpc_probes_follow_their_servers() {
    let c = Cluster::start("probes");
    let img = c.image.clone();
    let healthy = Arc::new(AtomicBool::new(true));
    let hits = Arc::new(AtomicUsize::new(0));
    let https_port = c.rt.block_on(https_server(healthy.clone(), hits.clone()));
    let (reporter, health) = tonic_health::server::health_reporter();
    let grpc_port = c.rt.block_on(async {
        reporter
            .set_service_status("svc", ServingStatus::Serving)
            .await;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        port
    });

    c.pod("tls", json!({"terminationGracePeriodSeconds": 1,
        "containers": [{"name": "c", "image": img, "command": ["sleep", "3600"],
            "readinessProbe": {"httpGet": {"scheme": "HTTPS", "host": "127.0.0.1", "port": https_port,
                "path": "/healthz"}, "periodSeconds": 1, "failureThreshold": 1}}]}));
    c.pod(
        "grpc",
        json!({"terminationGracePeriodSeconds": 1, "hostNetwork": true,
        "containers": [{"name": "c", "image": img, "command": ["sleep", "3600"],
            "readinessProbe": {"grpc": {"port": grpc_port, "service": "svc"},
                "periodSeconds": 1, "failureThreshold": 1},
            // The server's overall health (service ""): stays SERVING throughout.
            "livenessProbe": {"grpc": {"port": grpc_port}, "periodSeconds": 1,
                "timeoutSeconds": 2}}]}),
    );

    c.wait_pod("tls", "Ready through the HTTPS probe", 90, ready);
    assert!(
        hits.load(Ordering::SeqCst) > 0,
        "the probe reached the server"
    );
    c.wait_pod("grpc", "Ready through the gRPC probe", 90, ready);

    healthy.store(false, Ordering::SeqCst);
    c.rt.block_on(reporter.set_service_status("svc", ServingStatus::NotServing));
    c.wait_pod("tls", "not Ready once the server answers 503", 60, |p| {
        !ready(p)
    });
    let p = c.wait_pod(
        "grpc",
        "not Ready once the service is NOT_SERVING",
        60,
        |p| !ready(p),
    );
    assert_eq!(
        cstatus(&p, "c").map(|s| s.restart_count),
        Some(0),
        "the liveness probe (service \"\") kept passing"
    );

    healthy.store(true, Ordering::SeqCst);
    c.rt.block_on(reporter.set_service_status("svc", ServingStatus::Serving));
    c.wait_pod("tls", "Ready again", 60, ready);
    c.wait_pod("grpc", "Ready again", 60, ready);

    for n in ["tls", "grpc"] {
        c.delete(n, None);
    }
    for n in ["tls", "grpc"] {
        c.wait_gone(n, 60);
    }
}
