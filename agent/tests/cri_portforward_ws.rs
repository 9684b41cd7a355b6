//! The kubelet's own WebSocket port forwarding (`portforward.k8s.io` over WebSocket,
//! `?port=`, two channels per port opening with the port in 2 little-endian bytes)
//! against the CRI streaming server, driven by an independent WebSocket client
//! (tokio-tungstenite), with a real pod (as root, real kernel): binary channels
//! (`v4.channel.k8s.io` and no subprotocol), base64 channels, two ports in one
//! session, a refused port on its error channel, bad `?port=` values answered 400.

mod streaming_support;

use futures::{SinkExt, StreamExt};
use k8s_cri::v1::*;
use streaming_support::PodEnv;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn pf_url(env: &mut PodEnv, ports: Vec<i32>) -> String {
    env.rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: env.sandbox.clone(),
            port: ports,
        })
        .await
        .unwrap()
        .into_inner()
        .url
        .replacen("http://", "ws://", 1)
}

async fn open(url: &str, protocol: Option<&str>) -> Result<(Ws, Option<String>), WsError> {
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
    let proto = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_string());
    Ok((ws, proto))
}

/// A WebSocket upgrade by hand, for answers a client library keeps no body of: the
/// whole answer (the server closes after a refusal).
async fn raw_upgrade(url: &str, protocol: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("ws://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        s.read_to_end(&mut answer),
    )
    .await
    .expect("no answer within 60 s")
    .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The next channel message (decoding the base64 form), None once the server closes.
async fn next(ws: &mut Ws, b64: bool) -> Option<(u8, Vec<u8>)> {
    use base64::Engine;
    let m = tokio::time::timeout(std::time::Duration::from_secs(60), ws.next())
        .await
        .expect("no message within 60 s")?;
    match m.ok()? {
        Message::Binary(b) if !b64 => Some((b[0], b[1..].to_vec())),
        Message::Text(t) if b64 => {
            let t = t.as_bytes();
            let data = base64::engine::general_purpose::STANDARD
                .decode(&t[1..])
                .unwrap();
            Some((t[0] - b'0', data))
        }
        Message::Close(_) => None,
        other => panic!("unexpected message {other:?} (base64 {b64})"),
    }
}

async fn send(ws: &mut Ws, b64: bool, ch: u8, data: &[u8]) {
    use base64::Engine;
    let m = if b64 {
        let mut s = String::from((b'0' + ch) as char);
        s.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
        Message::text(s)
    } else {
        let mut b = vec![ch];
        b.extend_from_slice(data);
        Message::binary(b)
    };
    ws.send(m).await.unwrap();
}

/// Reads until the server closes; every channel's bytes.
async fn drain(ws: &mut Ws, b64: bool) -> std::collections::HashMap<u8, Vec<u8>> {
    let mut got: std::collections::HashMap<u8, Vec<u8>> = Default::default();
    while let Some((ch, d)) = next(ws, b64).await {
        got.entry(ch).or_default().extend_from_slice(&d);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_websocket_port_forward() {
    let mut env = PodEnv::new("cri-pf-ws", "default", "pfws").await;
    let pid = std::process::id();
    // A server that answers one line per connection (each port a distinct greeting),
    // bound to the pod's loopback only.
    env.run(
        "srv",
        &format!(
            "mkdir -p /a /b && echo page-a-{pid} > /a/index.html && echo page-b-{pid} > /b/index.html && \
             httpd -p 127.0.0.1:8081 -h /a && httpd -p 127.0.0.1:8082 -h /b && echo up && exec sleep 3600"
        ),
        false,
        0,
    )
    .await;
    env.wait_log("srv/0.log", "up").await;

    for (protocol, b64) in [
        (Some("v4.channel.k8s.io"), false),
        (None, false),
        (Some("v4.base64.channel.k8s.io"), true),
    ] {
        let url = pf_url(&mut env, vec![]).await;
        let (mut ws, proto) = open(&format!("{url}?port=8081&port=8082"), protocol)
            .await
            .unwrap();
        assert_eq!(proto.as_deref(), protocol, "negotiated subprotocol");
        // Each channel opens with its port, little-endian.
        let mut opened = Vec::new();
        for _ in 0..4 {
            opened.push(next(&mut ws, b64).await.unwrap());
        }
        opened.sort();
        assert_eq!(
            opened,
            vec![
                (0, 8081u16.to_le_bytes().to_vec()),
                (1, 8081u16.to_le_bytes().to_vec()),
                (2, 8082u16.to_le_bytes().to_vec()),
                (3, 8082u16.to_le_bytes().to_vec()),
            ]
        );
        send(&mut ws, b64, 0, b"GET / HTTP/1.0\r\n\r\n").await;
        send(&mut ws, b64, 2, b"GET / HTTP/1.0\r\n\r\n").await;
        // httpd answers and closes: both ports done, the server closes the WebSocket.
        let got = drain(&mut ws, b64).await;
        let a = String::from_utf8_lossy(got.get(&0).map_or(&[][..], |v| v));
        let b = String::from_utf8_lossy(got.get(&2).map_or(&[][..], |v| v));
        assert!(
            a.starts_with("HTTP/1.") && a.contains(&format!("page-a-{pid}")),
            "{protocol:?} port 8081: {a:?}"
        );
        assert!(
            b.contains(&format!("page-b-{pid}")),
            "{protocol:?} port 8082: {b:?}"
        );
        assert!(got.get(&1).is_none_or(|e| e.is_empty()), "{got:?}");
        assert!(got.get(&3).is_none_or(|e| e.is_empty()), "{got:?}");
    }

    // A port nothing listens on: the error channel says so, then the session ends.
    // The ports of the PortForward request stand in for a URL without `?port=`.
    let url = pf_url(&mut env, vec![9]).await;
    let (mut ws, _) = open(&url, Some("v4.channel.k8s.io")).await.unwrap();
    let got = drain(&mut ws, false).await;
    let err = String::from_utf8_lossy(&got[&1][2..]).into_owned();
    assert!(
        err.contains("error forwarding port 9 to pod pfws_default"),
        "{err:?}"
    );

    // Bad ports: 400 naming what is wrong, before any upgrade.
    for (query, granted, want) in [
        ("", vec![], "query parameter \"port\" is required"),
        ("?port=0", vec![], "must be > 0"),
        ("?port=70000", vec![], "unable to parse"),
        ("?port=8082", vec![8081], "not among the ports"),
    ] {
        let url = pf_url(&mut env, granted).await;
        let answer = raw_upgrade(&format!("{url}{query}"), "v4.channel.k8s.io").await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{query}: {answer}");
        assert!(answer.contains(want), "{query}: {answer}");
    }
    env.teardown().await;
}
