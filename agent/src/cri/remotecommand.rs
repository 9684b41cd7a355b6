//! The remotecommand session behind Exec and Attach URLs: the process side ([`Io`]:
//! stdin in, stdout/stderr out, terminal resize, the exit) and its SPDY side (the
//! `error`, `stdin`, `stdout`, `stderr`, `resize` streams the client opens).

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::config::Config;
use super::spdy::{Conn, Event};
use super::{exec, logfmt};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Out {
    Stdout,
    Stderr,
}

/// Which streams the client asked for.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

type Resize = Arc<dyn Fn(u16, u16) + Send + Sync>;

/// A running command (or an attached container) as the session sees it.
pub struct Io {
    pub stdin: Option<mpsc::UnboundedSender<Option<Vec<u8>>>>,
    pub output: mpsc::Receiver<(Out, Vec<u8>)>,
    pub resize: Option<Resize>,
    pub exit: oneshot::Receiver<Result<i32, String>>,
    pub kill: Option<oneshot::Sender<()>>,
}

async fn pump_out(
    mut src: impl tokio::io::AsyncRead + Unpin,
    kind: Out,
    tx: mpsc::Sender<(Out, Vec<u8>)>,
) {
    let mut b = vec![0u8; 32 * 1024];
    loop {
        match src.read(&mut b).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((kind, b[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Runs `cmd` in container `id`, on pipes or (with `want.tty`) on a terminal.
pub async fn start_exec(cfg: &Config, id: &str, cmd: &[String], want: Want) -> Result<Io, String> {
    let (otx, orx) = mpsc::channel(16);
    let (itx, mut irx) = mpsc::unbounded_channel::<Option<Vec<u8>>>();
    let (etx, erx) = oneshot::channel();
    let (ktx, krx) = oneshot::channel::<()>();
    let mut resize: Option<Resize> = None;
    let mut child = if want.tty {
        let (child, master) = exec::spawn_tty(cfg, &cfg.oci_root(), id, cmd)
            .await
            .map_err(|e| e.to_string())?;
        let master = Arc::new(std::fs::File::from(master));
        let m = master.clone();
        resize = Some(Arc::new(move |w, h| exec::resize(&m.as_raw_fd(), w, h)));
        let rd = master.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut b = vec![0u8; 32 * 1024];
            // EIO once every holder of the terminal's other side is gone.
            while let Ok(n) = (&*rd).read(&mut b) {
                if n == 0 || otx.blocking_send((Out::Stdout, b[..n].to_vec())).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            use std::io::Write;
            while let Some(Some(d)) = irx.blocking_recv() {
                if (&*master).write_all(&d).is_err() {
                    break;
                }
            }
        });
        child
    } else {
        let mut child =
            exec::spawn(cfg, &cfg.oci_root(), id, cmd, want.stdin).map_err(|e| e.to_string())?;
        if let Some(so) = child.stdout.take() {
            tokio::spawn(pump_out(so, Out::Stdout, otx.clone()));
        }
        if let Some(se) = child.stderr.take() {
            tokio::spawn(pump_out(se, Out::Stderr, otx.clone()));
        }
        drop(otx);
        if let Some(mut w) = child.stdin.take() {
            tokio::spawn(async move {
                while let Some(Some(d)) = irx.recv().await {
                    if w.write_all(&d).await.is_err() {
                        break;
                    }
                }
            });
        }
        child
    };
    tokio::spawn(async move {
        tokio::select! {
            st = child.wait() => {
                let _ = etx.send(st.map(exec::exit_code).map_err(|e| e.to_string()));
            }
            _ = krx => {
                let _ = child.kill().await;
            }
        }
    });
    Ok(Io {
        stdin: want.stdin.then_some(itx),
        output: orx,
        resize,
        exit: erx,
        kill: Some(ktx),
    })
}

/// Attaches to a running container: its output from the CRI log (from now on), its
/// stdin through the FIFO its monitor made (containers created with `stdin`; with a
/// terminal the monitor copies it to the pty master), the terminal's size through the
/// monitor's resize FIFO (`ctl`). The session ends when the container exits, or when
/// the client closes its stdin (as containerd detaches then; the container keeps its
/// FIFO and runs on). With `stdin_once` (no terminal) closing stdin is the
/// container's EOF instead (its monitor closes the container's stdin), and the session
/// goes on until the container exits, as with containerd.
pub async fn start_attach(
    log_path: PathBuf,
    stdin_fifo: Option<PathBuf>,
    ctl_fifo: Option<PathBuf>,
    exit_path: PathBuf,
    want: Want,
    stdin_once: bool,
) -> Result<Io, String> {
    let (otx, orx) = mpsc::channel(16);
    let (etx, erx) = oneshot::channel();
    let (ktx, mut krx) = oneshot::channel::<()>();
    let mut stdin_closed: Option<oneshot::Receiver<()>> = None;
    let stdin = match (&stdin_fifo, want.stdin) {
        (Some(p), true) => {
            let mut w = tokio::net::unix::pipe::OpenOptions::new()
                .open_sender(p)
                .map_err(|e| format!("container stdin {}: {e}", p.display()))?;
            let (itx, mut irx) = mpsc::unbounded_channel::<Option<Vec<u8>>>();
            let (ctx, crx) = oneshot::channel::<()>();
            stdin_closed = Some(crx);
            tokio::spawn(async move {
                while let Some(Some(d)) = irx.recv().await {
                    if w.write_all(&d).await.is_err() {
                        break;
                    }
                }
                let _ = ctx.send(());
            });
            Some(itx)
        }
        (None, true) => {
            return Err("the container was not created with stdin; attach without -i".into());
        }
        _ => None,
    };
    let mut f = tokio::fs::File::open(&log_path)
        .await
        .map_err(|e| format!("container log {}: {e}", log_path.display()))?;
    f.seek(std::io::SeekFrom::End(0))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        let mut exited = false;
        let mut detached = false;
        loop {
            let n = f.read(&mut buf).await.unwrap_or(0);
            pending.extend_from_slice(&buf[..n]);
            while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=pos).collect();
                if let Some((stream, partial, msg)) = logfmt::parse(&line[..line.len() - 1]) {
                    let kind = if stream == "stderr" {
                        Out::Stderr
                    } else {
                        Out::Stdout
                    };
                    let mut m = msg.to_vec();
                    if !partial {
                        m.push(b'\n');
                    }
                    if otx.send((kind, m)).await.is_err() {
                        return;
                    }
                }
            }
            if n > 0 {
                continue;
            }
            // A private log (no log path) starts over when full: follow it to the start.
            if let (Ok(m), Ok(pos)) = (f.metadata().await, f.stream_position().await)
                && m.len() < pos
            {
                let _ = f.seek(std::io::SeekFrom::Start(0)).await;
                pending.clear();
                continue;
            }
            if detached && !exited {
                // The log is read to its end: what the container wrote before the
                // client left has been sent.
                let _ = etx.send(Ok(0));
                return;
            }
            if exited {
                let code = std::fs::read_to_string(&exit_path)
                    .ok()
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                    .and_then(|v| v["exit_code"].as_i64())
                    .unwrap_or(0);
                let _ = etx.send(Ok(code as i32));
                return;
            }
            exited = exit_path.exists();
            let detach = async {
                match stdin_closed.as_mut() {
                    Some(rx) => {
                        let _ = rx.await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = &mut krx => return,
                _ = detach => {
                    stdin_closed = None;
                    detached = !stdin_once;
                }
            }
        }
    });
    Ok(Io {
        stdin,
        output: orx,
        resize: ctl_fifo.filter(|_| want.tty).map(resize_through),
        exit: erx,
        kill: Some(ktx),
    })
}

/// Resizes a container's terminal through its monitor's `ctl` FIFO. Opened per message
/// without blocking: a monitor that is gone (no reader) makes it a no-op.
fn resize_through(ctl: PathBuf) -> Resize {
    Arc::new(move |w, h| {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&ctl)
        {
            // One line under PIPE_BUF: written whole or not at all.
            let _ = f.write_all(format!("resize {w} {h}\n").as_bytes());
        }
    })
}

/// A terminal size message of the resize stream (`{"Width":80,"Height":24}`).
fn parse_size(line: &[u8]) -> Option<(u16, u16)> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    Some((v["Width"].as_u64()? as u16, v["Height"].as_u64()? as u16))
}

/// Serves one Exec/Attach over an upgraded SPDY connection.
pub async fn serve_spdy<F>(mut conn: Conn, proto: &str, want: Want, start: F) -> Result<(), String>
where
    F: std::future::Future<Output = Result<Io, String>>,
{
    // The client opens its streams first; wait for the ones it asked for.
    let mut streams: HashMap<String, u32> = HashMap::new();
    let satisfied = |s: &HashMap<String, u32>| {
        s.contains_key("error")
            && (!want.stdin || s.contains_key("stdin"))
            && (!want.stdout || s.contains_key("stdout"))
            && (!want.stderr || s.contains_key("stderr"))
            && (!want.tty || s.contains_key("resize") || proto == "channel.k8s.io")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut early: Vec<Event> = Vec::new();
    while !satisfied(&streams) {
        match tokio::time::timeout_at(deadline, conn.events.recv()).await {
            Ok(Some(Event::Stream(sid, h))) => {
                let kind = h
                    .iter()
                    .find(|(k, _)| k == "streamtype")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                streams.insert(kind, sid);
            }
            Ok(Some(ev @ Event::Data(..))) => early.push(ev),
            _ => return Err("client did not open the expected streams".into()),
        }
    }
    let sid = |k: &str| streams.get(k).copied();
    let err_sid = sid("error").unwrap_or(0);
    let (stdin_sid, resize_sid) = (sid("stdin"), sid("resize"));
    let mut io = match start.await {
        Ok(io) => io,
        Err(e) => {
            conn.send(err_sid, true, status_json(proto, Err(e)).as_bytes());
            conn.finish().await;
            return Ok(());
        }
    };
    let mut resize_buf = Vec::new();
    let mut output_open = true;
    let mut exit: Option<Result<i32, String>> = None;
    let mut exit_deadline = None;
    for ev in early {
        handle_input(ev, stdin_sid, resize_sid, &mut io, &mut resize_buf);
    }
    loop {
        if exit.is_some() && !output_open {
            break;
        }
        let grace = async {
            match exit_deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = conn.events.recv() => match ev {
                Some(Event::Closed) | None => {
                    if let Some(k) = io.kill.take() {
                        let _ = k.send(());
                    }
                    return Err("client went away".into());
                }
                Some(ev) => handle_input(ev, stdin_sid, resize_sid, &mut io, &mut resize_buf),
            },
            out = io.output.recv(), if output_open => match out {
                Some((kind, data)) => {
                    let s = if kind == Out::Stderr { sid("stderr") } else { sid("stdout") };
                    if let Some(s) = s {
                        conn.send(s, false, &data);
                    }
                }
                None => output_open = false,
            },
            r = &mut io.exit, if exit.is_none() => {
                exit = Some(r.unwrap_or_else(|_| Err("the process was lost".into())));
                // A daemon the command left behind may hold its output open.
                exit_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
            }
            _ = grace => break,
        }
    }
    for name in ["stdout", "stderr"] {
        if let Some(s) = sid(name) {
            conn.send(s, true, b"");
        }
    }
    let result = match exit.unwrap_or(Ok(0)) {
        Ok(0) => Ok(()),
        Ok(c) => Err(format!("exit:{c}")),
        Err(e) => Err(e),
    };
    conn.send(err_sid, true, status_json(proto, result).as_bytes());
    // Let the client read everything and close first.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(ev) = conn.events.recv().await {
            if matches!(ev, Event::Closed) {
                break;
            }
        }
    })
    .await;
    conn.finish().await;
    Ok(())
}

fn handle_input(
    ev: Event,
    stdin_sid: Option<u32>,
    resize_sid: Option<u32>,
    io: &mut Io,
    resize_buf: &mut Vec<u8>,
) {
    let Event::Data(s, data, fin) = ev else {
        return;
    };
    if Some(s) == stdin_sid {
        if let Some(tx) = &io.stdin {
            if !data.is_empty() {
                let _ = tx.send(Some(data));
            }
            if fin {
                let _ = tx.send(None);
                io.stdin = None;
            }
        }
    } else if Some(s) == resize_sid {
        resize_buf.extend_from_slice(&data);
        while let Some(pos) = resize_buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = resize_buf.drain(..=pos).collect();
            if let (Some((w, h)), Some(r)) = (parse_size(&line), &io.resize) {
                r(w, h);
            }
        }
        // The last message may come without its newline.
        if let (Some((w, h)), Some(r)) = (parse_size(resize_buf), &io.resize) {
            r(w, h);
            resize_buf.clear();
        }
    }
}

/// What goes on the error stream: v4 sends a metav1.Status; older protocols send the
/// error text only (nothing on success).
pub fn status_json(proto: &str, r: Result<(), String>) -> String {
    let v4 = proto.starts_with("v4.") || proto.starts_with("v5.");
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
