//! Port forwarding behind PortForward URLs (`portforward.k8s.io` over SPDY): the client
//! opens a pair of streams per connection — `streamtype: error` and `streamtype: data`
//! with the same `requestID` and a `port` — and each data stream is spliced to a TCP
//! connection to localhost:port made inside the pod's network namespace.

use std::collections::HashMap;
use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::spdy::{self, Conn, Event};

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
