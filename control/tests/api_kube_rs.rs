//! kube-rs (the client hull's own agent, proxy and controllers use) against a real `hull`
//! API server: a watcher/reflector stays in sync through creates, updates, deletes and a
//! restart of the server; bearer tokens from `--token-file` authenticate.

mod api_support;

use std::collections::BTreeMap;
use std::time::Duration;

use api_support::Server;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, reflector, watcher};

async fn client(kubeconfig: &std::path::Path) -> kube::Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    kube::Client::try_from(cfg).expect("kube client")
}

fn cm(name: &str, v: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("v".to_string(), v.to_string())])),
        ..Default::default()
    }
}

/// Polls until `f` holds (bounded: a stuck reflector fails the test, it does not hang).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..600 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never became true: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_stays_in_sync_through_updates_and_a_restart() {
    let tmp = tempfile::Builder::new()
        .prefix(&format!("hull-api-kube-rs-{}-", std::process::id()))
        .tempdir()
        .expect("temp dir");
    let dir = tmp.path().to_path_buf();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", api_support::free_port())
        .parse()
        .expect("addr");
    let d = dir.clone();
    let mut server = tokio::task::spawn_blocking(move || Server::start_at(&d, addr, None, None))
        .await
        .expect("start");
    let client = client(&server.kubeconfig).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api.clone(), watcher::Config::default()))
        .default_backoff()
        .applied_objects();
    let task = tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while s.next().await.is_some() {}
    });
    let value = |name: &str| {
        reader
            .state()
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .and_then(|c| c.data.as_ref()?.get("v").cloned())
    };

    // The root-ca publisher adds kube-root-ca.crt to every namespace: count the test's own.
    let own = || {
        reader
            .state()
            .iter()
            .filter(|c| c.metadata.name.as_deref() != Some("kube-root-ca.crt"))
            .count()
    };
    for n in ["a", "b", "c"] {
        api.create(&PostParams::default(), &cm(n, "1"))
            .await
            .expect("create");
    }
    eventually("three configmaps reflected", || own() == 3).await;
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"v": "2"}})),
    )
    .await
    .expect("patch");
    eventually("update reflected", || value("a").as_deref() == Some("2")).await;

    // Restart the server on the same address and state; changes made afterwards arrive.
    tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .expect("stop");
    let d = dir.clone();
    let server = tokio::task::spawn_blocking(move || Server::start_at(&d, addr, None, None))
        .await
        .expect("restart");
    api.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"v": "3"}})),
    )
    .await
    .expect("patch after restart");
    api.delete("c", &DeleteParams::default())
        .await
        .expect("delete");
    api.create(&PostParams::default(), &cm("d", "4"))
        .await
        .expect("create after restart");
    eventually("changes after the restart reflected", || {
        value("b").as_deref() == Some("3")
            && value("c").is_none()
            && value("d").as_deref() == Some("4")
    })
    .await;
    assert_eq!(own(), 3);
    task.abort();
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_authenticate_and_unknown_ones_get_401() {
    let tmp = tempfile::Builder::new()
        .prefix(&format!("hull-api-token-{}-", std::process::id()))
        .tempdir()
        .expect("temp dir");
    let dir = tmp.path().to_path_buf();
    let tokens = dir.join("tokens.csv");
    std::fs::write(
        &tokens,
        "admintoken,alice,1,\"system:masters\"\nplaintoken,bob,2\n",
    )
    .expect("tokens");
    let d = dir.clone();
    let server = tokio::task::spawn_blocking(move || Server::start_in(&d, None, Some(tokens)))
        .await
        .expect("start");
    let ca = dir.join("ca.crt");
    let run = |token: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca)
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("{}/api/v1/namespaces", server.url()))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(run("admintoken"), "200");
    assert_eq!(run("plaintoken"), "403");
    assert_eq!(run("wrong"), "401");
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .expect("stop");
}
