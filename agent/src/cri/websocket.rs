//! Exec and Attach over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`): what
//! kubectl 1.35 tries first and what the Python and Java clients speak. Every binary
//! message starts with a channel byte — 0 stdin, 1 stdout, 2 stderr, 3 error (the exit
//! Status), 4 resize — and v5 adds 255, "close": `[255, 0]` ends stdin.
//!
//! Port forwarding over WebSocket is SPDY tunneled through binary messages
//! (`SPDY/3.1+portforward.k8s.io`, what kubectl ≥ 1.30 asks for first): `tunnel` turns
//! the messages back into a byte stream for the SPDY port-forward server.
//!
//! RFC 6455 framing by hand (the handshake hash, masked client frames, unmasked server
//! frames, ping/pong, close), as far as these channels need it.

use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::remotecommand::{Io, Out, status_json};

/// The protocols offered, in order of preference.
pub const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// Port forwarding: SPDY/3.1 `portforward.k8s.io` inside WebSocket binary messages.
pub const SPDY_TUNNEL_PORTFORWARD: &str = "SPDY/3.1+portforward.k8s.io";

pub const OP_CONT: u8 = 0;
pub const OP_TEXT: u8 = 1;
pub const OP_BIN: u8 = 2;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;
pub const OP_PONG: u8 = 10;

/// `Sec-WebSocket-Accept` for a client's key.
pub fn accept_key(key: &str) -> String {
    let mut input = key.trim().as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(d.as_ref())
}

/// One unmasked server frame.
pub fn frame(op: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x80 | op);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// A masked client frame (for tests and clients).
pub fn client_frame(op: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = frame(op, payload);
    let hdr = match payload.len() {
        n if n < 126 => 2,
        n if n <= 0xffff => 4,
        _ => 10,
    };
    f[1] |= 0x80;
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let body: Vec<u8> = f[hdr..]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    f.truncate(hdr);
    f.extend_from_slice(&mask);
    f.extend_from_slice(&body);
    f
}

/// The next frame: (fin, opcode, unmasked payload); `None` at the end of the stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(bool, u8, Vec<u8>)>> {
    let mut h = [0u8; 2];
    match r.read_exact(&mut h).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let fin = h[0] & 0x80 != 0;
    let op = h[0] & 0x0f;
    let masked = h[1] & 0x80 != 0;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).await?;
            u16::from_be_bytes(b) as u64
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).await?;
            u64::from_be_bytes(b)
        }
        n => n as u64,
    };
    if len > 16 << 20 {
        return Err(std::io::Error::other(format!(
            "WebSocket frame of {len} bytes"
        )));
    }
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask).await?;
    }
    let mut data = vec![0u8; len as usize];
    r.read_exact(&mut data).await?;
    if masked {
        for (i, b) in data.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok(Some((fin, op, data)))
}

/// Carries a byte stream over a WebSocket whose binary messages hold arbitrary pieces
/// of it (Kubernetes' SPDY tunneling): what the peer sends comes out of the returned
/// stream, what is written into it goes out as binary messages. `client` masks the
/// frames (the client side, for tests). `leftover` is what was read past the HTTP head.
pub fn tunnel<S>(sock: S, leftover: Vec<u8>, client: bool) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let mk = move |op: u8, data: &[u8]| {
        if client {
            client_frame(op, data)
        } else {
            frame(op, data)
        }
    };
    let (local, remote) = tokio::io::duplex(256 * 1024);
    let (mut from_peer, mut to_peer) = tokio::io::split(remote);
    let (rd, mut wr) = tokio::io::split(sock);
    let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(f) = out_rx.recv().await {
            if wr.write_all(&f).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let pong = out.clone();
    tokio::spawn(async move {
        let mut r = AsyncReadExt::chain(std::io::Cursor::new(leftover), rd);
        while let Ok(Some((_, op, data))) = read_frame(&mut r).await {
            match op {
                OP_BIN | OP_TEXT | OP_CONT if to_peer.write_all(&data).await.is_err() => break,
                OP_BIN | OP_TEXT | OP_CONT => {}
                OP_PING => {
                    let _ = pong.send(mk(10, &data));
                }
                OP_CLOSE => break,
                _ => {}
            }
        }
        let _ = to_peer.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from_peer.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.send(mk(OP_BIN, &buf[..n])).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = out.send(mk(OP_CLOSE, &1000u16.to_be_bytes()));
    });
    local
}

/// One channel message as a binary frame.
fn send(out: &mpsc::UnboundedSender<Vec<u8>>, ch: u8, data: &[u8]) {
    let mut m = Vec::with_capacity(data.len() + 1);
    m.push(ch);
    m.extend_from_slice(data);
    let _ = out.send(frame(OP_BIN, &m));
}

/// Serves one Exec/Attach over an upgraded WebSocket connection.
pub async fn serve(
    sock: TcpStream,
    leftover: Vec<u8>,
    proto: &str,
    start: impl Future<Output = Result<Io, String>>,
) {
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
    let mut io = match start.await {
        Ok(io) => io,
        Err(e) => {
            send(&out, 3, status_json(proto, Err(e)).as_bytes());
            let _ = out.send(frame(OP_CLOSE, &1000u16.to_be_bytes()));
            drop(out);
            let _ = writer.await;
            return;
        }
    };
    // Client messages → (channel, payload) events; None when the client is gone.
    let (in_tx, mut in_rx) = mpsc::unbounded_channel::<Option<(u8, Vec<u8>)>>();
    let pong = out.clone();
    let reader = tokio::spawn(async move {
        let mut r = AsyncReadExt::chain(std::io::Cursor::new(leftover), rd);
        let mut msg: Vec<u8> = Vec::new();
        while let Ok(Some((fin, op, data))) = read_frame(&mut r).await {
            match op {
                OP_PING => {
                    let _ = pong.send(frame(10, &data));
                    continue;
                }
                OP_CLOSE => break,
                OP_BIN | OP_TEXT | OP_CONT => msg.extend_from_slice(&data),
                _ => continue,
            }
            if fin && !msg.is_empty() {
                let ch = msg[0];
                let _ = in_tx.send(Some((ch, msg[1..].to_vec())));
                msg.clear();
            }
        }
        let _ = in_tx.send(None);
    });
    let mut output_open = true;
    let mut exit = None;
    let mut deadline = None;
    let mut resize_buf = Vec::new();
    loop {
        if exit.is_some() && !output_open {
            break;
        }
        let grace = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = in_rx.recv() => match m {
                Some(Some((0, data))) => {
                    if let Some(tx) = &io.stdin && !data.is_empty() {
                        let _ = tx.send(Some(data));
                    }
                }
                Some(Some((4, data))) => {
                    resize_buf.extend_from_slice(&data);
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&resize_buf) {
                        resize_buf.clear();
                        if let (Some(w), Some(h), Some(r)) = (v["Width"].as_u64(), v["Height"].as_u64(), &io.resize) {
                            r(w as u16, h as u16);
                        }
                    }
                }
                // v5: "close" of a channel; only stdin can be closed by the client.
                Some(Some((255, data))) if data.first() == Some(&0) => {
                    if let Some(tx) = io.stdin.take() {
                        let _ = tx.send(None);
                    }
                }
                Some(Some(_)) => {}
                Some(None) | None => {
                    if let Some(k) = io.kill.take() {
                        let _ = k.send(());
                    }
                    reader.abort();
                    drop(out);
                    let _ = writer.await;
                    return;
                }
            },
            o = io.output.recv(), if output_open => match o {
                Some((kind, data)) => send(&out, if kind == Out::Stderr { 2 } else { 1 }, &data),
                None => output_open = false,
            },
            r = &mut io.exit, if exit.is_none() => {
                exit = Some(r.unwrap_or_else(|_| Err("the process was lost".into())));
                deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
            }
            _ = grace => break,
        }
    }
    let result = match exit.unwrap_or(Ok(0)) {
        Ok(0) => Ok(()),
        Ok(c) => Err(format!("exit:{c}")),
        Err(e) => Err(e),
    };
    send(&out, 3, status_json(proto, result).as_bytes());
    let _ = out.send(frame(OP_CLOSE, &1000u16.to_be_bytes()));
    // The client answers the close (or goes); then the connection ends.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Some(_)) = in_rx.recv().await {}
    })
    .await;
    reader.abort();
    drop(out);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[tokio::test]
    async fn masked_frames_round_trip() {
        for n in [0usize, 5, 200, 70_000] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let f = client_frame(OP_BIN, &payload);
            let (fin, op, data) = read_frame(&mut &f[..]).await.unwrap().unwrap();
            assert!(fin);
            assert_eq!(op, OP_BIN);
            assert_eq!(data, payload);
        }
    }
}
