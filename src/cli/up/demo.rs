//! `hull up --demo`: a Deployment of three busybox web servers behind a ClusterIP and a
//! NodePort Service, applied server-side like `kubectl apply --server-side`, then
//! followed until the pods serve — and one request through the NodePort to show it.

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{Patch, PatchParams};

pub const NODE_PORT: u16 = 30080;

pub async fn apply(client: &kube::Client, image: &str) -> anyhow::Result<()> {
    let deploy: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "hello"}},
            "template": {
                "metadata": {"labels": {"app": "hello"}},
                "spec": {"containers": [{
                    "name": "web", "image": image, "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", "mkdir -p /tmp/www && echo \"hello from $(hostname)\" > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"],
                    "ports": [{"containerPort": 8080, "name": "http"}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 2}
                }]}
            }
        }
    }))
    .context("demo Deployment")?;
    let svc: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {"type": "NodePort", "selector": {"app": "hello"},
                 "ports": [{"port": 80, "targetPort": "http", "nodePort": NODE_PORT}]}
    }))
    .context("demo Service")?;
    let pp = PatchParams::apply("hull-up-demo").force();
    Api::<Deployment>::namespaced(client.clone(), "default")
        .patch("hello", &pp, &Patch::Apply(&deploy))
        .await
        .context("apply the demo Deployment")?;
    Api::<Service>::namespaced(client.clone(), "default")
        .patch("hello", &pp, &Patch::Apply(&svc))
        .await
        .context("apply the demo Service")?;
    println!(
        "demo: applied Deployment default/hello (3 x {image}) and Service default/hello (NodePort {NODE_PORT})"
    );
    let client = client.clone();
    tokio::spawn(async move { follow(client).await });
    Ok(())
}

/// Prints when the Deployment is available and what one request to the NodePort returns.
async fn follow(client: kube::Client) {
    let api = Api::<Deployment>::namespaced(client, "default");
    for _ in 0..240 {
        if let Ok(d) = api.get("hello").await {
            let ready = d
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            if ready >= 3 {
                println!("demo: Deployment hello has {ready}/3 pods available");
                match tokio::time::timeout(Duration::from_secs(3), get_nodeport()).await {
                    Ok(Ok(body)) => println!(
                        "demo: curl http://127.0.0.1:{NODE_PORT}/ -> {}",
                        body.trim()
                    ),
                    Ok(Err(e)) => println!("demo: request to 127.0.0.1:{NODE_PORT} failed: {e}"),
                    Err(_) => println!("demo: request to 127.0.0.1:{NODE_PORT} timed out"),
                }
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "demo: Deployment hello not available after 2 minutes (kubectl describe deploy hello)"
    );
}

async fn get_nodeport() -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", NODE_PORT)).await?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: hello\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text.split("\r\n\r\n").nth(1).unwrap_or(&text).to_string())
}
