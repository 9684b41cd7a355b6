//! The kubelet API over HTTPS against a real CRI server and real containers: client
//! certificate authentication, containerLogs (tail, timestamps, limitBytes, previous,
//! follow until the container stops), exec and port-forward spliced to the CRI's
//! streaming server, stats/summary and metrics/resource.

mod streaming_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use hull_agent::kubelet_api::{Options, Server};
use k8s_cri::v1::*;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use streaming_support::{PodEnv, spdy_upgrade};

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "test-ca");
        p.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        let ca = p.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        std::fs::write(dir.join("ca.key"), key.serialize_pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
        }
    }
    /// (cert path, key path) of a client certificate for `user` in `groups`.
    fn client(&self, user: &str, groups: &[&str]) -> (PathBuf, PathBuf) {
        let ca_key =
            KeyPair::from_pem(&std::fs::read_to_string(self.dir.join("ca.key")).unwrap()).unwrap();
        let issuer = Issuer::from_ca_cert_pem(
            &std::fs::read_to_string(self.dir.join("ca.crt")).unwrap(),
            ca_key,
        )
        .unwrap();
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, user);
        for g in groups {
            dn.push(DnType::OrganizationName, *g);
        }
        p.distinguished_name = dn;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{user}.crt")),
            self.dir.join(format!("{user}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// `curl` with the CA and (optionally) a client certificate: (HTTP code, body).
fn curl(pki: &Pki, who: Option<&(PathBuf, PathBuf)>, url: &str) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--max-time",
        "60",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(pki.dir.join("ca.crt"));
    if let Some((cert, key)) = who {
        c.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = c.arg(url).output().expect("curl");
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn tls_client(pki: &Pki, who: &(PathBuf, PathBuf)) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.dir.join("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&who.0)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&who.1).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_exec_port_forward_and_stats_over_https() {
    let mut env = PodEnv::new("kubelet-api", "team-a", "web").await;
    let pki = Pki::new(&env.scratch.path("pki"));
    let mut opts = Options::new(
        "node-test",
        pki.dir.join("ca.crt"),
        pki.dir.join("ca.key"),
        env.sock.clone(),
    );
    opts.listen = "127.0.0.1:0".parse().unwrap();
    let server = Server::bind(opts).await.unwrap();
    let base = format!("https://127.0.0.1:{}", server.addr.port());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    let apiserver = pki.client("kube-apiserver-kubelet-client", &["system:masters"]);
    let bob = pki.client("bob", &["devs"]);

    // Authentication and authorization.
    assert_eq!(
        curl(&pki, None, &format!("{base}/healthz")),
        (200, "ok".into())
    );
    assert_eq!(curl(&pki, None, &format!("{base}/pods")).0, 401);
    let (code, body) = curl(&pki, Some(&bob), &format!("{base}/pods"));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("user=bob"), "{body}");

    // A first container that exits, then its restart: `previous` reads the first.
    let first = env.run("app", "echo first-run; exit 1", false, 0).await;
    env.wait_log("app/0.log", "first-run").await;
    let t = std::time::Instant::now();
    loop {
        let s = env
            .rt
            .container_status(ContainerStatusRequest {
                container_id: first.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if s.state == ContainerState::ContainerExited as i32 {
            break;
        }
        assert!(t.elapsed().as_secs() < 60, "first run never exited");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let app = env
        .run(
            "app",
            "echo second-run; for i in 1 2 3 4; do echo line$i; done; while read l; do echo got:$l; done",
            true,
            1,
        )
        .await;
    env.wait_log("app/1.log", "line4").await;
    let logs = format!("{base}/containerLogs/team-a/web/app");
    let (code, body) = curl(&pki, Some(&apiserver), &logs);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "second-run\nline1\nline2\nline3\nline4\n");
    let (_, body) = curl(&pki, Some(&apiserver), &format!("{logs}?tailLines=2"));
    assert_eq!(body, "line3\nline4\n");
    let (_, body) = curl(&pki, Some(&apiserver), &format!("{logs}?limitBytes=7"));
    assert_eq!(body, "second-");
    let (_, body) = curl(
        &pki,
        Some(&apiserver),
        &format!("{logs}?tailLines=1&timestamps=true"),
    );
    let (ts, msg) = body.trim_end().split_once(' ').unwrap();
    assert_eq!(msg, "line4");
    assert!(ts.parse::<jiff::Timestamp>().is_ok(), "{ts}");
    let (_, body) = curl(&pki, Some(&apiserver), &format!("{logs}?previous=true"));
    assert_eq!(body, "first-run\n");
    let (_, body) = curl(
        &pki,
        Some(&apiserver),
        &format!("{logs}?sinceTime=2999-01-01T00:00:00Z"),
    );
    assert_eq!(body, "");
    let (code, body) = curl(&pki, Some(&apiserver), &format!("{logs}?tailLines=-3"));
    assert_eq!(code, 400);
    assert!(body.contains("tailLines"), "{body}");
    let (code, _) = curl(
        &pki,
        Some(&apiserver),
        &format!("{base}/containerLogs/team-a/web/nope"),
    );
    assert_eq!(code, 404);

    // follow: new lines arrive while the request is open; it ends when the container stops.
    let mut follow = Command::new("curl")
        .args(["-sSN", "--max-time", "120", "--cacert"])
        .arg(pki.dir.join("ca.crt"))
        .arg("--cert")
        .arg(&apiserver.0)
        .arg("--key")
        .arg(&apiserver.1)
        .arg(format!("{logs}?follow=true&tailLines=1"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "line4");
    let fifo = env
        .scratch
        .path("data")
        .join("cri/containers")
        .join(&app)
        .join("stdin");
    std::fs::write(&fifo, b"followed\n").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "got:followed");
    env.rt
        .stop_container(StopContainerRequest {
            container_id: app.clone(),
            timeout: 5,
        })
        .await
        .unwrap();
    assert!(
        lines.next().is_none(),
        "follow did not end with the container"
    );
    assert!(follow.wait().unwrap().success());

    // exec through the kubelet API: the upgrade is spliced to the CRI's streaming server.
    let web = env
        .run(
            "srv",
            "mkdir -p /www && echo via-kubelet > /www/index.html && echo up && exec httpd -f -p 127.0.0.1:8081 -h /www",
            false,
            0,
        )
        .await;
    env.wait_log("srv/0.log", "up").await;
    let connector = tls_client(&pki, &apiserver);
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(server_addr(&base))
            .await
            .unwrap();
        connector
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap()
    };
    let (mut s, proto) = spdy_upgrade(
        connect().await,
        "127.0.0.1",
        "/exec/team-a/web/srv?command=sh&command=-c&command=echo+%24((6*7))%3B+hostname&output=1&error=1",
        &["v4.channel.k8s.io", "v3.channel.k8s.io"],
    )
    .await
    .unwrap();
    assert_eq!(proto, "v4.channel.k8s.io");
    for (sid, kind) in [(1, "error"), (3, "stdout"), (5, "stderr")] {
        s.open(sid, &[("streamtype", kind)]).await;
    }
    let got = s.collect(1).await;
    assert_eq!(
        String::from_utf8_lossy(got.get(&3).map(Vec::as_slice).unwrap_or_default()),
        "42\nweb\n"
    );
    assert!(String::from_utf8_lossy(&got[&1]).contains("Success"));
    drop(s);

    // port-forward through the kubelet API.
    let (mut s, proto) = spdy_upgrade(
        connect().await,
        "127.0.0.1",
        "/portForward/team-a/web",
        &["portforward.k8s.io"],
    )
    .await
    .unwrap();
    assert_eq!(proto, "portforward.k8s.io");
    s.open(
        1,
        &[
            ("streamtype", "error"),
            ("port", "8081"),
            ("requestID", "0"),
        ],
    )
    .await;
    s.open(
        3,
        &[("streamtype", "data"), ("port", "8081"), ("requestID", "0")],
    )
    .await;
    s.send(3, b"GET /index.html HTTP/1.0\r\n\r\n", true).await;
    let got = s.collect(3).await;
    assert!(String::from_utf8_lossy(&got[&3]).contains("via-kubelet"));
    drop(s);
    // exec in a pod this node does not run: 404 before any upgrade.
    let e = spdy_upgrade(
        connect().await,
        "127.0.0.1",
        "/exec/team-a/ghost/srv?command=true&output=1",
        &["v4.channel.k8s.io"],
    )
    .await
    .err()
    .unwrap();
    assert!(e.starts_with("HTTP/1.1 404"), "{e}");

    // Stats: the running container has memory and CPU; metrics/resource names it.
    let (code, body) = curl(&pki, Some(&apiserver), &format!("{base}/stats/summary"));
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["node"]["nodeName"], "node-test");
    assert!(v["node"]["memory"]["workingSetBytes"].as_u64().unwrap() > 0);
    let pod = v["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podRef"]["name"] == "web" && p["podRef"]["namespace"] == "team-a")
        .unwrap_or_else(|| panic!("pod missing from {body}"));
    let srv = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "srv")
        .unwrap();
    assert!(
        srv["memory"]["workingSetBytes"].as_u64().unwrap() > 0,
        "{srv}"
    );
    assert!(
        srv["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0,
        "{srv}"
    );
    // The pod's network, from the CRI's sandbox stats, as the kubelet's summary has it.
    let net = &pod["network"];
    assert_eq!(net["name"], "eth0", "{pod}");
    assert!(net["rxBytes"].is_u64() && net["txErrors"].is_u64(), "{net}");
    assert!(
        net["interfaces"]
            .as_array()
            .is_some_and(|i| i.iter().any(|i| i["name"] == "eth0")),
        "{net}"
    );
    let (_, body) = curl(&pki, Some(&apiserver), &format!("{base}/metrics/resource"));
    assert!(
        body.contains(
            r#"container_memory_working_set_bytes{container="srv",namespace="team-a",pod="web"}"#
        ),
        "{body}"
    );
    assert!(body.contains("node_cpu_usage_seconds_total "), "{body}");
    let (_, body) = curl(&pki, Some(&apiserver), &format!("{base}/pods"));
    assert!(body.contains(r#""name":"web""#), "{body}");
    let _ = web;

    let _ = stop_tx.send(());
    serving.await.unwrap().unwrap();
    env.teardown().await;
}

fn server_addr(base: &str) -> String {
    base.trim_start_matches("https://").to_string()
}
