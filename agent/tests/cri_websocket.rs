//! The streaming server over WebSocket with real containers (as root, real kernel):
//! port forwarding as kubectl 1.35 asks for it first (SPDY tunneled through WebSocket
//! binary messages, `SPDY/3.1+portforward.k8s.io`), and exec on a terminal whose size
//! the client sets on the resize channel (`stty size` in the container shows it).

mod streaming_support;

use std::time::Duration;

use hull_agent::cri::spdy::{Frame, HeaderCodec};
use hull_agent::cri::websocket::{self, client_frame, read_frame};
use k8s_cri::v1::*;
use streaming_support::{PodEnv, Spdy, url_parts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A WebSocket upgrade of `path` offering `protocol`: the socket right after the
/// response head and the head itself.
async fn ws_upgrade(host: &str, path: &str, protocol: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(host).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(60), s.read_exact(&mut b))
            .await
            .expect("no upgrade response within 60 s")
            .expect("connection closed during the upgrade");
        head.push(b[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_tunneled_and_exec_resize_over_websocket() {
    let mut env = PodEnv::new("cri-websocket", "default", "wsock").await;
    let pid = std::process::id();
    let web = env
        .run(
            "web",
            &format!(
                "mkdir -p /www && echo ws-hello-{pid} > /www/index.html && echo up && exec httpd -f -p 127.0.0.1:8081 -h /www"
            ),
            false,
            0,
        )
        .await;
    env.wait_log("web/0.log", "up").await;

    // Port forward: SPDY inside WebSocket binary messages.
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
    let (sock, head) = ws_upgrade(&host, &path, websocket::SPDY_TUNNEL_PORTFORWARD).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains(&format!(
            "Sec-WebSocket-Protocol: {}",
            websocket::SPDY_TUNNEL_PORTFORWARD
        )),
        "{head}"
    );
    let mut s = Spdy {
        s: websocket::tunnel(sock, Vec::new(), true),
        codec: HeaderCodec::new(),
    };
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
    let body = String::from_utf8_lossy(got.get(&3).map(Vec::as_slice).unwrap_or_default());
    assert!(
        body.starts_with("HTTP/1.") && body.contains(&format!("ws-hello-{pid}")),
        "{body:?}"
    );
    // A refused port is reported on the error stream, through the tunnel too.
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
    assert!(err.contains("error forwarding port 9"), "{err:?}");
    drop(s);

    // A WebSocket port forward offering no protocol hull speaks: 400 naming the one it does.
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
    let (mut sock, head) = ws_upgrade(&host, &path, "portforward.k8s.io.bogus").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let mut rest = String::new();
    let _ = sock.read_to_string(&mut rest).await;
    assert!(rest.contains(websocket::SPDY_TUNNEL_PORTFORWARD), "{rest}");

    // Exec on a terminal over WebSocket v5: the resize message sets the pty's size.
    let url = env
        .rt
        .exec(ExecRequest {
            container_id: web.clone(),
            cmd: vec!["sh".into(), "-c".into(), "read x; stty size; exit 4".into()],
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
    let (mut sock, head) = ws_upgrade(&host, &path, "v5.channel.k8s.io").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut resize = vec![4u8];
    resize.extend_from_slice(br#"{"Width":123,"Height":37}"#);
    sock.write_all(&client_frame(2, &resize)).await.unwrap();
    sock.write_all(&client_frame(2, b"\x00go\n")).await.unwrap();
    let (mut out, mut status) = (String::new(), String::new());
    loop {
        let f = tokio::time::timeout(Duration::from_secs(60), read_frame(&mut sock))
            .await
            .expect("no WebSocket frame within 60 s")
            .unwrap();
        let Some((_, op, data)) = f else { break };
        if op == 8 {
            break;
        }
        match data.first() {
            Some(1) => out.push_str(&String::from_utf8_lossy(&data[1..])),
            Some(3) => status.push_str(&String::from_utf8_lossy(&data[1..])),
            _ => {}
        }
    }
    assert!(out.contains("37 123"), "terminal size not applied: {out:?}");
    assert!(
        status.contains("NonZeroExitCode") && status.contains(r#""message":"4""#),
        "exit code lost: {status}"
    );

    env.teardown().await;
}
