//! The streaming server that Exec, Attach and PortForward URLs point at: HTTP/1.1
//! upgraded to SPDY/3.1 with the Kubernetes remotecommand protocols (`v4.channel.k8s.io`
//! down to `channel.k8s.io`) for exec/attach (`remotecommand`) and `portforward.k8s.io`
//! for port forwarding (`portforward`), as kubelet's server speaks them to crictl and
//! kubectl. Each URL is single-use and expires after a minute.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::config::Config;
use super::remotecommand::Io;
use super::remotecommand::{self, Want};
use super::{container, portforward, records, sandbox, spdy, websocket};

const TOKEN_TTL: Duration = Duration::from_secs(60);
const PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
const PORTFORWARD: &str = "portforward.k8s.io";

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
    Attach {
        container_id: String,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    PortForward {
        sandbox_id: String,
        ports: Vec<i32>,
    },
}

impl Pending {
    fn want(&self) -> Want {
        match *self {
            Pending::Exec {
                tty,
                stdin,
                stdout,
                stderr,
                ..
            }
            | Pending::Attach {
                tty,
                stdin,
                stdout,
                stderr,
                ..
            } => Want {
                stdin,
                stdout,
                stderr,
                tty,
            },
            Pending::PortForward { .. } => Want {
                stdin: false,
                stdout: false,
                stderr: false,
                tty: false,
            },
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Pending::Exec { .. } => "exec",
            Pending::Attach { .. } => "attach",
            Pending::PortForward { .. } => "portforward",
        }
    }
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
        let kind = p.kind();
        m.insert(token.clone(), (p, Instant::now()));
        format!("http://{}/{kind}/{token}", self.addr)
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
        let route = path.split('?').next().unwrap_or("");
        let token = route.rsplit('/').next().unwrap_or("").to_string();
        let Some(pending) = self
            .take(&token)
            .filter(|p| route == format!("/{}/{token}", p.kind()))
        else {
            let _ = sock
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            return Err(format!("unknown or expired streaming URL {path}"));
        };
        let ws_key = get("sec-websocket-key");
        if upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket"))
            && let Pending::PortForward { sandbox_id, ports } = &pending
            && let Some(key) = ws_key.first()
        {
            let offered = get("sec-websocket-protocol");
            // The client's first offer hull speaks, "" (binary channels) for none.
            let proto = if offered.is_empty() {
                Some("")
            } else {
                offered.iter().find_map(|o| {
                    std::iter::once(websocket::SPDY_TUNNEL_PORTFORWARD)
                        .chain(portforward::WS_PROTOCOLS.iter().copied())
                        .find(|p| o == p)
                })
            };
            let query = path.split_once('?').map_or("", |(_, q)| q);
            let chosen = match proto {
                None => Err(format!(
                    "port forwarding over WebSocket speaks {:?} or {:?}; the client offered {offered:?}",
                    websocket::SPDY_TUNNEL_PORTFORWARD,
                    portforward::WS_PROTOCOLS
                )),
                Some(websocket::SPDY_TUNNEL_PORTFORWARD) => Ok(Vec::new()),
                Some(_) => portforward::ws_ports(query, ports),
            };
            let ws_ports = match chosen {
                Ok(p) => p,
                Err(msg) => {
                    let _ = sock.write_all(format!("HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}", msg.len()).as_bytes()).await;
                    return Err(msg);
                }
            };
            let sb = sandbox::load(&self.cfg, sandbox_id).map_err(|e| e.to_string())?;
            if let Some(p) = proto.filter(|p| *p != websocket::SPDY_TUNNEL_PORTFORWARD) {
                let proto_header = if p.is_empty() {
                    String::new()
                } else {
                    format!("Sec-WebSocket-Protocol: {p}\r\n")
                };
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{proto_header}\r\n",
                    websocket::accept_key(key)
                );
                sock.write_all(resp.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                let leftover = buf[head_len..].to_vec();
                portforward::serve_websocket(
                    sock,
                    leftover,
                    p,
                    ws_ports,
                    sb.netns.clone(),
                    pod_name(&sb),
                )
                .await;
                return Ok(());
            }
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {}\r\n\r\n",
                websocket::accept_key(key),
                websocket::SPDY_TUNNEL_PORTFORWARD
            );
            sock.write_all(resp.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let inner = websocket::tunnel(sock, buf[head_len..].to_vec(), false);
            let conn = spdy::Conn::start(inner, Vec::new());
            portforward::serve_spdy(conn, sb.netns.clone(), ports.clone(), pod_name(&sb)).await;
            return Ok(());
        }
        if upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket"))
            && let Some(key) = ws_key.first()
        {
            let offered = get("sec-websocket-protocol");
            let Some(proto) = websocket::PROTOCOLS
                .iter()
                .find(|p| offered.iter().any(|o| o == *p))
                .copied()
            else {
                let msg = format!(
                    "hull's streaming server speaks WebSocket {:?} (or SPDY/3.1); the client offered {offered:?}",
                    websocket::PROTOCOLS
                );
                let _ = sock.write_all(format!("HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}", msg.len()).as_bytes()).await;
                return Err(msg);
            };
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {proto}\r\n\r\n",
                websocket::accept_key(key)
            );
            sock.write_all(resp.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let leftover = buf[head_len..].to_vec();
            let start = self.start_io(pending);
            websocket::serve(sock, leftover, proto, start).await;
            return Ok(());
        }
        if !upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1")) {
            let msg = "hull's streaming server speaks SPDY/3.1 or WebSocket";
            let _ = sock.write_all(format!("HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}", msg.len()).as_bytes()).await;
            return Err(msg.into());
        }
        let portforward = matches!(pending, Pending::PortForward { .. });
        let proto = if portforward {
            if !offered.is_empty() && !offered.iter().any(|o| o == PORTFORWARD) {
                let msg =
                    format!("port forwarding speaks {PORTFORWARD}, the client offered {offered:?}");
                let _ = sock.write_all(format!("HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}", msg.len()).as_bytes()).await;
                return Err(msg);
            }
            PORTFORWARD
        } else {
            PROTOCOLS
                .iter()
                .find(|p| offered.iter().any(|o| o == *p))
                .copied()
                .unwrap_or("channel.k8s.io")
        };
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {proto}\r\n\r\n"
        );
        sock.write_all(resp.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let conn = spdy::Conn::start(sock, buf[head_len..].to_vec());
        match pending {
            Pending::PortForward { sandbox_id, ports } => {
                let sb = sandbox::load(&self.cfg, &sandbox_id).map_err(|e| e.to_string())?;
                portforward::serve_spdy(conn, sb.netns.clone(), ports, pod_name(&sb)).await;
                Ok(())
            }
            p => {
                let want = p.want();
                remotecommand::serve_spdy(conn, proto, want, self.start_io(p)).await
            }
        }
    }

    /// Starts what an Exec or Attach URL stands for.
    fn start_io(&self, p: Pending) -> Pin<Box<dyn Future<Output = Result<Io, String>> + Send>> {
        let cfg = self.cfg.clone();
        let want = p.want();
        Box::pin(async move {
            match p {
                Pending::Exec {
                    container_id, cmd, ..
                } => remotecommand::start_exec(&cfg, &container_id, &cmd, want).await,
                Pending::Attach { container_id, .. } => {
                    let rec = container::load(&cfg, &container_id).map_err(|e| e.to_string())?;
                    let dir = container::dir(&cfg, &rec.id);
                    let fifo = dir.join("stdin");
                    let ctl = dir.join(super::monitor::CTL_FIFO);
                    remotecommand::start_attach(
                        container::output_path(&cfg, &rec),
                        fifo.exists().then_some(fifo),
                        (rec.config.tty && ctl.exists()).then_some(ctl),
                        dir.join("exit.json"),
                        want,
                        rec.config.stdin_once && !rec.config.tty,
                    )
                    .await
                }
                Pending::PortForward { .. } => {
                    Err("port forwarding is not a remotecommand session".into())
                }
            }
        })
    }
}

/// `name_namespace`, as port-forward errors name the pod.
fn pod_name(sb: &records::SandboxRecord) -> String {
    sb.config
        .metadata
        .as_ref()
        .map(|m| format!("{}_{}", m.name, m.namespace))
        .unwrap_or_else(|| sb.id.clone())
}
