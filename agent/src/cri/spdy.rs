//! SPDY/3.1 framing, as far as Kubernetes streaming uses it: SYN_STREAM/SYN_REPLY with
//! zlib-compressed header blocks (one compression context per direction for the whole
//! connection, primed with the spec's dictionary), DATA with FIN, PING, GOAWAY,
//! RST_STREAM. Flow control frames are accepted and ignored (Kubernetes' peers do too).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const FLAG_FIN: u8 = 1;

/// The header-compression dictionary of the SPDY/3 specification.
pub const DICTIONARY: &[u8] = include_bytes!("spdy3-dictionary.bin");

#[derive(Debug)]
pub enum Frame {
    Control {
        kind: u16,
        flags: u8,
        data: Vec<u8>,
    },
    Data {
        stream: u32,
        flags: u8,
        data: Vec<u8>,
    },
}

/// The next frame, or `None` at a clean end of the connection.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).await?;
    let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    Ok(Some(if first & 0x8000_0000 != 0 {
        Frame::Control {
            kind: (first & 0xffff) as u16,
            flags,
            data,
        }
    } else {
        Frame::Data {
            stream: first,
            flags,
            data,
        }
    }))
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(body.len() + 8);
    f.extend_from_slice(&(0x8003_0000u32 | kind as u32).to_be_bytes());
    let len = (body.len() as u32).to_be_bytes();
    f.extend_from_slice(&[flags, len[1], len[2], len[3]]);
    f.extend_from_slice(body);
    f
}

pub fn data(stream: u32, fin: bool, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(body.len() + 8);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    let len = (body.len() as u32).to_be_bytes();
    f.extend_from_slice(&[if fin { FLAG_FIN } else { 0 }, len[1], len[2], len[3]]);
    f.extend_from_slice(body);
    f
}

pub fn ping(body: &[u8]) -> Vec<u8> {
    control(PING, 0, body)
}

pub fn goaway(last_stream: u32) -> Vec<u8> {
    let mut b = (last_stream & 0x7fff_ffff).to_be_bytes().to_vec();
    b.extend_from_slice(&0u32.to_be_bytes());
    control(GOAWAY, 0, &b)
}

/// The two header compression contexts of one connection.
pub struct HeaderCodec {
    inflate: Decompress,
    deflate: Compress,
}

impl Default for HeaderCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderCodec {
    pub fn new() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // Priming our side too, as every SPDY peer does; the peer verifies the id.
        let _ = deflate.set_dictionary(DICTIONARY);
        HeaderCodec {
            inflate: Decompress::new(true),
            deflate,
        }
    }

    /// Decodes one header block into lower-case (name, value) pairs.
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, String> {
        let mut out: Vec<u8> = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(4096);
            }
            let before = self.inflate.total_in();
            let r = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before) as usize;
            input = &input[used..];
            match r {
                Ok(Status::StreamEnd) => break,
                Ok(_) if input.is_empty() && out.capacity() > out.len() => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| format!("header dictionary: {e}"))?;
                }
                Err(e) => return Err(format!("header block: {e}")),
            }
        }
        parse_block(&out)
    }

    pub fn encode(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            out.reserve(256);
            let before = self.deflate.total_in();
            let _ = self
                .deflate
                .compress_vec(input, &mut out, FlushCompress::Sync);
            input = &input[(self.deflate.total_in() - before) as usize..];
            if input.is_empty() && out.capacity() > out.len() {
                break;
            }
        }
        out
    }

    pub fn syn_reply(&mut self, stream: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut body = (stream & 0x7fff_ffff).to_be_bytes().to_vec();
        body.extend_from_slice(&self.encode(headers));
        control(SYN_REPLY, 0, &body)
    }

    /// Builds a SYN_STREAM (what a client sends; used by tests).
    pub fn syn_stream(&mut self, stream: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut body = (stream & 0x7fff_ffff).to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        body.extend_from_slice(&self.encode(headers));
        control(SYN_STREAM, 0, &body)
    }
}

fn parse_block(b: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut pos = 0;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let s = b.get(pos..pos + n).ok_or("header block truncated")?;
        pos += n;
        Ok(s)
    };
    let be = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize;
    let count = be(take(4)?);
    let mut out = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let n = be(take(4)?);
        let name = String::from_utf8_lossy(take(n)?).to_ascii_lowercase();
        let n = be(take(4)?);
        let value = String::from_utf8_lossy(take(n)?).into_owned();
        out.push((name, value));
    }
    Ok(out)
}

/// (stream id, headers) of a SYN_STREAM body.
pub fn parse_syn_stream(
    codec: &mut HeaderCodec,
    body: &[u8],
) -> Result<(u32, Vec<(String, String)>), String> {
    if body.len() < 10 {
        return Err("SYN_STREAM too short".into());
    }
    let id = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) & 0x7fff_ffff;
    Ok((id, codec.decode(&body[10..])?))
}

/// What the reader of a SPDY connection reports.
#[derive(Debug)]
pub enum Event {
    /// A stream the client opened: (id, lower-case headers).
    Stream(u32, Vec<(String, String)>),
    Data(u32, Vec<u8>, bool),
    Reset(u32),
    Closed,
}

/// A server-side SPDY/3.1 connection: a reader task turning frames into [`Event`]s
/// (answering SYN_STREAM with SYN_REPLY and PING with PING) and a writer task sending
/// whatever goes into `out`.
pub struct Conn {
    pub out: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    pub events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Conn {
    /// Starts on an upgraded socket; `leftover` is what was read past the HTTP head.
    /// `sock` is the TCP socket, or a WebSocket tunnel (`websocket::tunnel`).
    pub fn start<S>(sock: S, leftover: Vec<u8>) -> Conn
    where
        S: AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        use tokio::io::AsyncWriteExt;
        let (rd, mut wr) = tokio::io::split(sock);
        let (out, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(async move {
            while let Some(f) = out_rx.recv().await {
                if wr.write_all(&f).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let (ev_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let reader_out = out.clone();
        let reader = tokio::spawn(async move {
            let mut r = AsyncReadExt::chain(std::io::Cursor::new(leftover), rd);
            let mut codec = HeaderCodec::new();
            while let Ok(Some(f)) = read_frame(&mut r).await {
                let ev = match f {
                    Frame::Control {
                        kind: SYN_STREAM,
                        data,
                        ..
                    } => match parse_syn_stream(&mut codec, &data) {
                        Ok((sid, h)) => {
                            let _ = reader_out.send(codec.syn_reply(sid, &[]));
                            Event::Stream(sid, h)
                        }
                        Err(e) => {
                            tracing::debug!("SYN_STREAM: {e}");
                            break;
                        }
                    },
                    Frame::Control {
                        kind: PING, data, ..
                    } => {
                        let _ = reader_out.send(ping(&data));
                        continue;
                    }
                    Frame::Control { kind: GOAWAY, .. } => break,
                    Frame::Control {
                        kind: RST_STREAM,
                        data,
                        ..
                    } if data.len() >= 4 => Event::Reset(
                        u32::from_be_bytes([data[0], data[1], data[2], data[3]]) & 0x7fff_ffff,
                    ),
                    Frame::Control { .. } => continue,
                    Frame::Data {
                        stream,
                        flags,
                        data,
                    } => Event::Data(stream, data, flags & FLAG_FIN != 0),
                };
                if ev_tx.send(ev).is_err() {
                    break;
                }
            }
            let _ = ev_tx.send(Event::Closed);
        });
        Conn {
            out,
            events,
            reader,
            writer,
        }
    }

    pub fn send(&self, stream: u32, fin: bool, body: &[u8]) {
        // Frames carry at most 16 MiB; keep them small so a slow reader sees progress.
        let mut chunks = body.chunks(32 * 1024).peekable();
        if chunks.peek().is_none() {
            let _ = self.out.send(data(stream, fin, b""));
        }
        while let Some(c) = chunks.next() {
            let last = chunks.peek().is_none();
            let _ = self.out.send(data(stream, fin && last, c));
        }
    }

    /// Sends GOAWAY and waits for what was queued to be written.
    pub async fn finish(self) {
        let _ = self.out.send(goaway(0));
        drop(self.out);
        self.reader.abort();
        let _ = self.writer.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_across_blocks() {
        let (mut a, mut b) = (HeaderCodec::new(), HeaderCodec::new());
        for i in 0..3 {
            let v = format!("stdout{i}");
            let blk = a.encode(&[("streamtype", &v), ("Port", "80")]);
            let h = b.decode(&blk).unwrap();
            assert_eq!(
                h,
                vec![
                    ("streamtype".into(), v.clone()),
                    ("port".into(), "80".into())
                ]
            );
        }
    }
}
