//! The CRI streaming server with real containers (as root, real kernel): exec on a
//! terminal with resize, attach to a container's stdin/stdout, port forwarding into the
//! pod's network namespace (to a server bound to the pod's 127.0.0.1 only), and the
//! errors a client sees for bad ports, reused URLs and unknown ids.

mod streaming_support;

use hull_agent::cri::spdy::Frame;
use k8s_cri::v1::*;
use streaming_support::{PodEnv, spdy_upgrade, url_parts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_tty_attach_and_port_forward() {
    let mut env = PodEnv::new("cri-streaming", "default", "stream").await;
    let web = env
        .run(
            "web",
            "mkdir -p /www && echo hello-from-pod > /www/index.html && echo up && exec httpd -f -p 127.0.0.1:8080 -h /www",
            false,
            0,
        )
        .await;
    let cat = env
        .run(
            "cat",
            "echo ready; while read l; do echo got:$l; done",
            true,
            0,
        )
        .await;
    env.wait_log("web/0.log", "up").await;
    env.wait_log("cat/0.log", "ready").await;

    // Exec on a terminal: the resize reaches the pty before the command reads its size.
    let url = env
        .rt
        .exec(ExecRequest {
            container_id: web.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "read x; stty size; tty; exit 3".into(),
            ],
            tty: true,
            stdin: true,
            stdout: true,
            stderr: false,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (host, path) = url_parts(&url);
    let tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    let (mut s, proto) = spdy_upgrade(tcp, &host, &path, &["v4.channel.k8s.io"])
        .await
        .unwrap();
    assert_eq!(proto, "v4.channel.k8s.io");
    for (sid, kind) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "resize")] {
        s.open(sid, &[("streamtype", kind)]).await;
    }
    s.send(7, br#"{"Width":100,"Height":40}"#, false).await;
    s.send(3, b"go\n", false).await;
    let got = s.collect(1).await;
    let out = String::from_utf8_lossy(got.get(&5).map(Vec::as_slice).unwrap_or_default());
    assert!(out.contains("40 100"), "terminal size not applied: {out:?}");
    assert!(out.contains("/dev/pts/"), "not on a terminal: {out:?}");
    let status = String::from_utf8_lossy(got.get(&1).map(Vec::as_slice).unwrap_or_default());
    assert!(
        status.contains("NonZeroExitCode") && status.contains(r#""message":"3""#),
        "exit code lost: {status}"
    );

    // The URL was single-use.
    let tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    let e = spdy_upgrade(tcp, &host, &path, &["v4.channel.k8s.io"])
        .await
        .err()
        .expect("a used URL must not upgrade again");
    assert!(e.starts_with("HTTP/1.1 404"), "{e}");

    // Attach: stdin goes to the container's FIFO, its output comes back from its log.
    let url = env
        .rt
        .attach(AttachRequest {
            container_id: cat.clone(),
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (host, path) = url_parts(&url);
    let tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    let (mut s, _) = spdy_upgrade(tcp, &host, &path, &["v4.channel.k8s.io"])
        .await
        .unwrap();
    for (sid, kind) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")] {
        s.open(sid, &[("streamtype", kind)]).await;
    }
    let pid = std::process::id().to_string();
    s.send(3, format!("hello-{pid}\n").as_bytes(), false).await;
    let out = s.read_until(5, &format!("got:hello-{pid}")).await;
    assert!(out.contains(&format!("got:hello-{pid}\n")), "{out:?}");
    drop(s);
    // Attaching with stdin to a container made without stdin is refused up front.
    let e = env
        .rt
        .attach(AttachRequest {
            container_id: web.clone(),
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // Port forward: two requests on one connection, one to a closed port.
    let url = env
        .rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: env.sandbox.clone(),
            port: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (host, path) = url_parts(&url);
    let tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    let (mut s, proto) = spdy_upgrade(tcp, &host, &path, &["portforward.k8s.io"])
        .await
        .unwrap();
    assert_eq!(proto, "portforward.k8s.io");
    s.open(
        1,
        &[
            ("streamtype", "error"),
            ("port", "8080"),
            ("requestID", "0"),
        ],
    )
    .await;
    s.open(
        3,
        &[("streamtype", "data"), ("port", "8080"), ("requestID", "0")],
    )
    .await;
    s.send(3, b"GET /index.html HTTP/1.0\r\n\r\n", true).await;
    let got = s.collect(3).await;
    let body = String::from_utf8_lossy(got.get(&3).map(Vec::as_slice).unwrap_or_default());
    assert!(
        body.starts_with("HTTP/1.") && body.contains("hello-from-pod"),
        "{body:?}"
    );
    s.open(
        5,
        &[("streamtype", "error"), ("port", "9"), ("requestID", "1")],
    )
    .await;
    s.open(
        7,
        &[("streamtype", "data"), ("port", "9"), ("requestID", "1")],
    )
    .await;
    let mut err = String::new();
    while let Some(f) = s.next().await {
        if let Frame::Data {
            stream: 5,
            data,
            flags,
        } = f
        {
            err.push_str(&String::from_utf8_lossy(&data));
            if flags & 1 != 0 {
                break;
            }
        }
    }
    assert!(
        err.contains("error forwarding port 9") && err.contains("refused"),
        "{err:?}"
    );
    drop(s);

    // The host's port 8080 is not the pod's: nothing of the pod listens on the host.
    assert!(
        std::net::TcpStream::connect("127.0.0.1:8080").is_err() || {
            // Something else on this machine may use 8080; then it must not be our server.
            let mut c = std::net::TcpStream::connect("127.0.0.1:8080").unwrap();
            use std::io::{Read, Write};
            let _ = c.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
            let mut s = String::new();
            let _ = c.read_to_string(&mut s);
            !s.contains("hello-from-pod")
        }
    );

    // Unknown ids.
    let e = env
        .rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: "feedbeef".into(),
            port: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = env
        .rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: env.sandbox.clone(),
            port: vec![70000],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("70000"), "{}", e.message());

    env.teardown().await;
}
