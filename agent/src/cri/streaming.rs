//! The streaming server that Exec URLs point at: HTTP/1.1 upgraded to SPDY/3.1 with
//! the Kubernetes remotecommand protocols (`v4.channel.k8s.io` down to
//! `channel.k8s.io`), as kubelet's server speaks them to crictl and kubectl. Each
//! URL is single-use and expires after a minute.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::config::Config;
use super::spdy::{self, Frame, HeaderCodec};
use super::{exec, records};

const TOKEN_TTL: Duration = Duration::from_secs(60);
const PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

#[derive(Debug, Clone)]
pub enum Pending {
    Exec {
        container_id: String,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
}

pub struct Streaming {
    pub addr: SocketAddr,
    cfg: Arc<Config>,
    pending: Mutex<HashMap<String, (Pending, Instant)>>,
}

impl Streaming {
    pub async fn bind(cfg: Arc<Config>) -> std::io::Result<(Arc<Streaming>, TcpListener)> {
        let l = TcpListener::bind(cfg.streaming_addr).await?;
        let addr = l.local_addr()?;
        Ok((
            Arc::new(Streaming {
                addr,
                cfg,
                pending: Mutex::new(HashMap::new()),
            }),
            l,
        ))
    }

    /// A single-use URL for `p`.
    pub fn register(&self, p: Pending) -> String {
        let token = records::new_id()
            .map(|t| t[..32].to_string())
            .unwrap_or_else(|_| format!("{:x}", records::now_ns()));
        let mut m = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, (_, t)| t.elapsed() < TOKEN_TTL);
        m.insert(token.clone(), (p, Instant::now()));
        format!("http://{}/exec/{token}", self.addr)
    }

    fn take(&self, token: &str) -> Option<Pending> {
        let mut m = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(token)
            .filter(|(_, t)| t.elapsed() < TOKEN_TTL)
            .map(|(p, _)| p)
    }

    pub async fn serve(self: Arc<Self>, l: TcpListener) {
        loop {
            let Ok((sock, _)) = l.accept().await else {
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.connection(sock).await {
                    tracing::debug!("streaming connection: {e}");
                }
            });
        }
    }

    async fn connection(&self, mut sock: TcpStream) -> Result<(), String> {
        let mut buf = Vec::with_capacity(4096);
        let head_len = loop {
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before the request head".into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > 64 * 1024 {
                return Err("request head too large".into());
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(&buf[..head_len]).map_err(|e| e.to_string())?;
        let path = req.path.unwrap_or("").to_string();
        let get = |name: &str| -> Vec<String> {
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .flat_map(|h| {
                    String::from_utf8_lossy(h.value)
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let upgrade = get("upgrade");
        let offered = get("x-stream-protocol-version");
        let token = path
            .split('?')
            .next()
            .unwrap_or("")
            .strip_prefix("/exec/")
            .unwrap_or("")
            .to_string();
        let Some(pending) = self.take(&token) else {
            let _ = sock
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            return Err(format!("unknown or expired streaming URL {path}"));
        };
        if !upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1")) {
            let msg = "hull's streaming server speaks SPDY/3.1 (WebSocket is not built yet)";
            let _ = sock.write_all(format!("HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}", msg.len()).as_bytes()).await;
            return Err(msg.into());
        }
        let proto = PROTOCOLS
            .iter()
            .find(|p| offered.iter().any(|o| o == *p))
            .copied()
            .unwrap_or("channel.k8s.io");
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {proto}\r\n\r\n"
        );
        sock.write_all(resp.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let leftover = buf[head_len..].to_vec();
        match pending {
            Pending::Exec {
                container_id,
                cmd,
                stdin,
                stdout,
                stderr,
                tty,
            } => {
                let want = Want {
                    stdin,
                    stdout,
                    stderr,
                    resize: tty,
                };
                self.exec_session(sock, leftover, proto, &container_id, &cmd, want)
                    .await
            }
        }
    }

    async fn exec_session(
        &self,
        sock: TcpStream,
        leftover: Vec<u8>,
        proto: &str,
        id: &str,
        cmd: &[String],
        want: Want,
    ) -> Result<(), String> {
        let (rd, mut wr) = sock.into_split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(async move {
            while let Some(f) = out_rx.recv().await {
                if wr.write_all(&f).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
        let reader_out = out_tx.clone();
        let reader = tokio::spawn(async move {
            let mut r = tokio::io::AsyncReadExt::chain(&leftover[..], rd);
            let mut codec = HeaderCodec::new();
            loop {
                let f = match spdy::read_frame(&mut r).await {
                    Ok(Some(f)) => f,
                    _ => break,
                };
                match f {
                    Frame::Control {
                        kind: spdy::SYN_STREAM,
                        data,
                        ..
                    } => match spdy::parse_syn_stream(&mut codec, &data) {
                        Ok((sid, h)) => {
                            let _ = reader_out.send(codec.syn_reply(sid, &[]));
                            let kind = h
                                .iter()
                                .find(|(k, _)| k == "streamtype")
                                .map(|(_, v)| v.clone())
                                .unwrap_or_default();
                            let _ = ev_tx.send(Event::Stream(kind, sid));
                        }
                        Err(e) => {
                            tracing::debug!("SYN_STREAM: {e}");
                            break;
                        }
                    },
                    Frame::Control {
                        kind: spdy::PING,
                        data,
                        ..
                    } => {
                        let _ = reader_out.send(spdy::ping(&data));
                    }
                    Frame::Control {
                        kind: spdy::GOAWAY, ..
                    } => break,
                    Frame::Control { .. } => {}
                    Frame::Data {
                        stream,
                        flags,
                        data,
                    } => {
                        let _ = ev_tx.send(Event::Data(stream, data, flags & spdy::FLAG_FIN != 0));
                    }
                }
            }
            let _ = ev_tx.send(Event::Closed);
        });
        // Wait for the streams the client must open.
        let mut streams: HashMap<String, u32> = HashMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !want.satisfied(&streams) {
            match tokio::time::timeout_at(deadline, ev_rx.recv()).await {
                Ok(Some(Event::Stream(k, sid))) => {
                    streams.insert(k, sid);
                }
                Ok(Some(Event::Data(..))) => {}
                _ => {
                    reader.abort();
                    return Err("client did not open the expected streams".into());
                }
            }
        }
        let err_sid = streams.get("error").copied().unwrap_or(0);
        let stdin_sid = streams.get("stdin").copied();
        let result = exec::spawn(&self.cfg, &self.cfg.oci_root(), id, cmd, want.stdin);
        let mut child = match result {
            Ok(c) => c,
            Err(e) => {
                let _ = out_tx.send(spdy::data(
                    err_sid,
                    true,
                    status_json(proto, Err(e.to_string())).as_bytes(),
                ));
                drop(out_tx);
                reader.abort();
                let _ = writer.await;
                return Ok(());
            }
        };
        let mut pumps = Vec::new();
        if let Some(src) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(
                src,
                streams.get("stdout").copied(),
                out_tx.clone(),
            )));
        }
        if let Some(src) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(
                src,
                streams.get("stderr").copied(),
                out_tx.clone(),
            )));
        }
        let mut child_stdin = child.stdin.take();
        let status = loop {
            tokio::select! {
                st = child.wait() => break st,
                ev = ev_rx.recv() => match ev {
                    Some(Event::Data(sid, data, fin)) if Some(sid) == stdin_sid => {
                        if let Some(w) = child_stdin.as_mut() {
                            let _ = w.write_all(&data).await;
                        }
                        if fin {
                            child_stdin = None;
                        }
                    }
                    Some(Event::Closed) | None => {
                        let _ = child.kill().await;
                        reader.abort();
                        return Err("client went away".into());
                    }
                    _ => {}
                },
            }
        };
        for p in pumps {
            let _ = p.await;
        }
        let code = status.map(exec::exit_code).map_err(|e| e.to_string());
        let body = status_json(
            proto,
            code.and_then(|c| {
                if c == 0 {
                    Ok(())
                } else {
                    Err(format!("exit:{c}"))
                }
            }),
        );
        for name in ["stdout", "stderr"] {
            if let Some(sid) = streams.get(name) {
                let _ = out_tx.send(spdy::data(*sid, true, b""));
            }
        }
        let _ = out_tx.send(spdy::data(err_sid, true, body.as_bytes()));
        // Let the client read everything and close; then go.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(ev) = ev_rx.recv().await {
                if matches!(ev, Event::Closed) {
                    break;
                }
            }
        })
        .await;
        drop(out_tx);
        reader.abort();
        let _ = writer.await;
        Ok(())
    }
}

/// Copies a process's output into DATA frames of stream `sid` (dropped without one).
async fn pump(
    mut src: impl tokio::io::AsyncRead + Unpin,
    sid: Option<u32>,
    tx: mpsc::UnboundedSender<Vec<u8>>,
) {
    let mut b = vec![0u8; 32 * 1024];
    loop {
        let n = match src.read(&mut b).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(sid) = sid {
            let _ = tx.send(spdy::data(sid, false, &b[..n]));
        }
    }
}

enum Event {
    Stream(String, u32),
    Data(u32, Vec<u8>, bool),
    Closed,
}

#[derive(Debug, Clone, Copy)]
struct Want {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    resize: bool,
}

impl Want {
    fn satisfied(&self, s: &HashMap<String, u32>) -> bool {
        s.contains_key("error")
            && (!self.stdin || s.contains_key("stdin"))
            && (!self.stdout || s.contains_key("stdout"))
            && (!self.stderr || s.contains_key("stderr"))
            && (!self.resize || s.contains_key("resize"))
    }
}

/// What goes on the error stream: v4 sends a metav1.Status; older protocols send the
/// error text only (nothing on success).
fn status_json(proto: &str, r: Result<(), String>) -> String {
    let v4 = proto == "v4.channel.k8s.io";
    match r {
        Ok(()) if v4 => r#"{"metadata":{},"status":"Success"}"#.into(),
        Ok(()) => String::new(),
        Err(e) => {
            if let Some(code) = e.strip_prefix("exit:") {
                if v4 {
                    return serde_json::json!({
                        "metadata": {}, "status": "Failure",
                        "message": format!("command terminated with non-zero exit code: exit status {code}"),
                        "reason": "NonZeroExitCode",
                        "details": {"causes": [{"reason": "ExitCode", "message": code}]}
                    })
                    .to_string();
                }
                return format!("command terminated with non-zero exit code: exit status {code}");
            }
            if v4 {
                serde_json::json!({"metadata": {}, "status": "Failure", "message": e}).to_string()
            } else {
                e
            }
        }
    }
}
