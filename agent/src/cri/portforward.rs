//! Port forwarding behind PortForward URLs. Over SPDY (`portforward.k8s.io`, also
//! tunneled through WebSocket) the client opens a pair of streams per connection —
//! `streamtype: error` and `streamtype: data` with the same `requestID` and a `port` —
//! and each data stream is spliced to a TCP connection to localhost:port made inside
//! the pod's network namespace. Over the kubelet's own WebSocket protocol
//! (`serve_websocket`) the ports are fixed by the URL and each gets two channels.

use std::collections::HashMap;
use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::spdy::{self, Conn, Event};
use super::websocket;

/// A TCP connection to `port` on the pod's loopback: a thread enters the netns (a socket
/// keeps the namespace it was made in), connects and ends.
pub async fn connect_in_netns(
    netns: Option<PathBuf>,
    port: u16,
) -> std::io::Result<tokio::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let r = (|| {
            if let Some(ns) = &netns {
                let f = std::fs::File::open(ns)?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
            }
            std::net::TcpStream::connect(("127.0.0.1", port))
                .or_else(|_| std::net::TcpStream::connect(("::1", port)))
        })();
        let _ = tx.send(r);
    });
    let s = rx
        .await
        .map_err(|_| std::io::Error::other("netns thread died"))??;
    s.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(s)
}

struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    port: u16,
}

/// Serves one port-forward connection until the client closes it.
pub async fn serve_spdy(mut conn: Conn, netns: Option<PathBuf>, allowed: Vec<i32>, pod: String) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // data stream id → what writes into the pod connection.
    let mut writers: HashMap<u32, mpsc::UnboundedSender<Option<Vec<u8>>>> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(ev) = conn.events.recv().await {
        match ev {
            Event::Stream(sid, h) => {
                let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                let kind = get("streamtype").unwrap_or_default();
                let req = get("requestid").unwrap_or_else(|| sid.to_string());
                let port = get("port").and_then(|p| p.parse::<u16>().ok()).unwrap_or(0);
                let p = pairs.entry(req.clone()).or_insert(Pair {
                    error: None,
                    data: None,
                    port,
                });
                match kind.as_str() {
                    "error" => p.error = Some(sid),
                    "data" => {
                        p.data = Some(sid);
                        p.port = port;
                    }
                    _ => {
                        conn.send(sid, true, b"");
                        continue;
                    }
                }
                let (Some(err_sid), Some(data_sid)) = (p.error, p.data) else {
                    continue;
                };
                let port = p.port;
                pairs.remove(&req);
                if port == 0 || (!allowed.is_empty() && !allowed.contains(&(port as i32))) {
                    let msg = format!(
                        "error forwarding port {port} to pod {pod}: port not allowed or invalid"
                    );
                    conn.send(err_sid, true, msg.as_bytes());
                    conn.send(data_sid, true, b"");
                    continue;
                }
                let (wtx, wrx) = mpsc::unbounded_channel();
                writers.insert(data_sid, wtx);
                tasks.spawn(forward(
                    conn.out.clone(),
                    netns.clone(),
                    port,
                    err_sid,
                    data_sid,
                    wrx,
                    pod.clone(),
                ));
            }
            Event::Data(sid, data, fin) => {
                if let Some(w) = writers.get(&sid) {
                    if !data.is_empty() {
                        let _ = w.send(Some(data));
                    }
                    if fin {
                        let _ = w.send(None);
                        writers.remove(&sid);
                    }
                }
            }
            Event::Reset(sid) => {
                writers.remove(&sid);
            }
            Event::Closed => break,
        }
    }
    tasks.abort_all();
    conn.finish().await;
}

async fn forward(
    out: mpsc::UnboundedSender<Vec<u8>>,
    netns: Option<PathBuf>,
    port: u16,
    err_sid: u32,
    data_sid: u32,
    mut input: mpsc::UnboundedReceiver<Option<Vec<u8>>>,
    pod: String,
) {
    let sock = match connect_in_netns(netns, port).await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {pod}: {e}");
            let _ = out.send(spdy::data(err_sid, true, msg.as_bytes()));
            let _ = out.send(spdy::data(data_sid, true, b""));
            return;
        }
    };
    let (mut rd, mut wr) = sock.into_split();
    let to_pod = async move {
        while let Some(Some(d)) = input.recv().await {
            if wr.write_all(&d).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    let out2 = out.clone();
    let from_pod = async move {
        let mut b = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out2.send(spdy::data(data_sid, false, &b[..n])).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = out2.send(spdy::data(data_sid, true, b""));
    };
    tokio::join!(to_pod, from_pod);
    let _ = out.send(spdy::data(err_sid, true, b""));
}

/// The kubelet's own WebSocket port forwarding (`portforward.k8s.io` over WebSocket):
/// binary (`v4.channel.k8s.io`, or no subprotocol) or base64 text
/// (`v4.base64.channel.k8s.io`).
pub const WS_PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "v4.base64.channel.k8s.io"];

/// The ports of a WebSocket port forward, as the kubelet reads them (`?port=80&port=
/// 8080,9090`): every value a port in 1..65535. `granted` (the PortForwardRequest's
/// ports) bounds them, and stands in for a URL that names none.
pub fn ws_ports(query: &str, granted: &[i32]) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        if k != "port" {
            continue;
        }
        // The one escape a port list can hold: a comma.
        let v = &v.replace("%2C", ",").replace("%2c", ",");
        if v.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        for p in v.split(',') {
            let port: u16 = p
                .parse()
                .map_err(|_| format!("unable to parse {v:?} as a port"))?;
            if port == 0 {
                return Err(format!("port {v:?} must be > 0"));
            }
            if !granted.is_empty() && !granted.contains(&(port as i32)) {
                return Err(format!(
                    "port {port} is not among the ports of the PortForward request {granted:?}"
                ));
            }
            ports.push(port);
        }
    }
    if ports.is_empty() {
        ports = granted
            .iter()
            .filter_map(|p| u16::try_from(*p).ok())
            .collect();
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    Ok(ports)
}

/// One channel message: `[channel] data` (binary) or `'0'+channel base64(data)` (text).
fn ws_message(base64: bool, ch: u8, data: &[u8]) -> Vec<u8> {
    use base64::Engine;
    if base64 {
        let mut m = vec![b'0' + ch];
        m.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(data)
                .as_bytes(),
        );
        websocket::frame(websocket::OP_TEXT, &m)
    } else {
        let mut m = Vec::with_capacity(data.len() + 1);
        m.push(ch);
        m.extend_from_slice(data);
        websocket::frame(websocket::OP_BIN, &m)
    }
}

/// Serves a WebSocket port forward (already upgraded, subprotocol `proto`): per port
/// `i`, channel `2i` carries data both ways and `2i+1` errors to the client, each
/// opened with the port as 2 little-endian bytes. Each port gets one connection to
/// the pod's localhost:port; when the pod's side closes, the other direction has a
/// second to finish (as containerd), and once every port is done the WebSocket closes.
pub async fn serve_websocket(
    sock: tokio::net::TcpStream,
    leftover: Vec<u8>,
    proto: &str,
    ports: Vec<u16>,
    netns: Option<PathBuf>,
    pod: String,
) {
    let b64 = proto.contains("base64");
    let (rd, mut wr) = sock.into_split();
    let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(f) = out_rx.recv().await {
            if wr.write_all(&f).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut to_pod = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        let _ = out.send(ws_message(b64, data_ch, &port.to_le_bytes()));
        let _ = out.send(ws_message(b64, err_ch, &port.to_le_bytes()));
        let (tx, rx) = mpsc::unbounded_channel::<Vec<u8>>();
        to_pod.push(tx);
        tasks.spawn(forward_ws(
            out.clone(),
            b64,
            netns.clone(),
            port,
            (data_ch, err_ch),
            rx,
            pod.clone(),
        ));
    }
    let pong = out.clone();
    let mut reader = tokio::spawn(async move {
        let mut r = AsyncReadExt::chain(std::io::Cursor::new(leftover), rd);
        let mut msg: Vec<u8> = Vec::new();
        while let Ok(Some((fin, op, data))) = websocket::read_frame(&mut r).await {
            match op {
                websocket::OP_PING => {
                    let _ = pong.send(websocket::frame(websocket::OP_PONG, &data));
                    continue;
                }
                websocket::OP_CLOSE => break,
                websocket::OP_BIN | websocket::OP_TEXT | websocket::OP_CONT => {
                    msg.extend_from_slice(&data)
                }
                _ => continue,
            }
            if !fin || msg.is_empty() {
                continue;
            }
            let (ch, body) = if b64 {
                use base64::Engine;
                let ch = msg[0].wrapping_sub(b'0');
                let body = base64::engine::general_purpose::STANDARD
                    .decode(&msg[1..])
                    .unwrap_or_default();
                (ch, body)
            } else {
                (msg[0], msg[1..].to_vec())
            };
            msg.clear();
            // Only data channels (even numbers) carry anything from the client.
            if ch % 2 == 0
                && let Some(tx) = to_pod.get(ch as usize / 2)
                && !body.is_empty()
            {
                let _ = tx.send(body);
            }
        }
    });
    tokio::select! {
        _ = async { while tasks.join_next().await.is_some() {} } => {
            let _ = out.send(websocket::frame(websocket::OP_CLOSE, &1000u16.to_be_bytes()));
            // The client answers the close (or goes); then the connection ends.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut reader).await;
        }
        _ = &mut reader => {}
    }
    tasks.abort_all();
    reader.abort();
    drop(out);
    let _ = writer.await;
}

async fn forward_ws(
    out: mpsc::UnboundedSender<Vec<u8>>,
    b64: bool,
    netns: Option<PathBuf>,
    port: u16,
    (data_ch, err_ch): (u8, u8),
    mut input: mpsc::UnboundedReceiver<Vec<u8>>,
    pod: String,
) {
    let sock = match connect_in_netns(netns, port).await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {pod}: {e}");
            let _ = out.send(ws_message(b64, err_ch, msg.as_bytes()));
            return;
        }
    };
    let (mut rd, mut wr) = sock.into_split();
    let to_pod = async move {
        while let Some(d) = input.recv().await {
            if wr.write_all(&d).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let from_pod = async {
        let mut b = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.send(ws_message(b64, data_ch, &b[..n])).is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::pin!(to_pod);
    tokio::select! {
        _ = from_pod => {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), to_pod).await;
        }
        _ = &mut to_pod => {}
    }
}

#[cfg(test)]
mod tests {
    use super::ws_ports;

    #[test]
    fn websocket_ports_as_the_kubelet_reads_them() {
        assert_eq!(
            ws_ports("port=80&port=8080,9090", &[]),
            Ok(vec![80, 8080, 9090])
        );
        assert_eq!(ws_ports("x=1&port=81%2C82", &[]), Ok(vec![81, 82]));
        assert_eq!(ws_ports("", &[7, 8]), Ok(vec![7, 8]));
        assert_eq!(ws_ports("port=8", &[7, 8]), Ok(vec![8]));
        for (q, granted, want) in [
            ("", &[][..], "is required"),
            ("port=", &[], "cannot be empty"),
            ("port=0", &[], "must be > 0"),
            ("port=65536", &[], "unable to parse"),
            ("port=http", &[], "unable to parse"),
            ("port=9", &[7], "not among"),
        ] {
            let e = ws_ports(q, granted).unwrap_err();
            assert!(e.contains(want), "{q}: {e}");
        }
    }
}
