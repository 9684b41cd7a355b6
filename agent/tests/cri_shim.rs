//! hull-shim (as root, real containers): the pod's pause process and the containers'
//! monitors run as the small `hull-shim` binary built beside `hull`, from an executable
//! nothing can open for writing; the monitor writes full and partial CRI log lines,
//! is found again by a restarted server (ReopenContainerLog after a kill -9), records
//! the exit code, and nothing of it is left after the pod is removed.

mod streaming_support;

use k8s_cri::v1::*;
use streaming_support::{CriServer, PodEnv, connect, hull_bin};

/// (comm, RSS in KiB) of a process.
fn comm_rss(pid: i32) -> (String, u64) {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (comm.trim().to_string(), rss)
}

fn ppid(pid: i32) -> i32 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    s.rsplit_once(") ")
        .unwrap()
        .1
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

async fn status(
    rt: &mut runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    id: &str,
) -> ContainerStatus {
    rt.container_status(ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_monitors_run_as_hull_shim() {
    let shim = hull_bin().with_file_name("hull-shim");
    assert!(
        shim.is_file(),
        "hull-shim is not built at {} (cargo build -p hull-shim)",
        shim.display()
    );
    let mut env = PodEnv::new("cri-shim", "default", "shimpod").await;
    let data = env.scratch.path("data");
    let conf = env.scratch.path("net.d");
    let cfg = hull_agent::cri::Config::new(&data, &env.sock);
    let pause = hull_agent::cri::sandbox::load(&cfg, &env.sandbox)
        .unwrap()
        .pause_pid;

    // Two lines, a 20000-byte line (a 16 KiB `P` piece, then the rest), the pod's
    // hostname (set by the pause process), then it waits for /tmp/go and exits 7.
    let script = "echo one; echo two >&2; head -c 20000 /dev/zero | tr '\\0' x; echo; \
                  hostname; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo after; exit 7";
    let id = env.run("lines", script, false, 0).await;
    let text = env.wait_log("lines/0.log", " stdout F shimpod").await;
    let entries: Vec<(&str, &str, usize)> = text
        .lines()
        .map(|l| {
            let p: Vec<&str> = l.splitn(4, ' ').collect();
            (p[1], p[2], p.get(3).map_or(0, |m| m.len()))
        })
        .collect();
    // The long line: `P` pieces of at most 16 KiB (where it is cut also depends on
    // when its writes arrive: an idle pipe logs what it holds), then its `F` end.
    let end = entries[2..]
        .iter()
        .position(|e| e.1 == "F")
        .map_or(entries.len(), |p| p + 3);
    let (long, rest) = (&entries[2..end], &entries[end..]);
    assert!(long.len() >= 2, "{text}");
    assert!(
        long[..long.len() - 1]
            .iter()
            .all(|e| e.0 == "stdout" && e.1 == "P" && e.2 <= 16384),
        "{text}"
    );
    assert_eq!(long.last().map(|e| e.1), Some("F"), "{text}");
    assert_eq!(long.iter().map(|e| e.2).sum::<usize>(), 20000, "{text}");
    assert_eq!(
        (&entries[..2], rest),
        (
            &[("stdout", "F", 3), ("stderr", "F", 3)][..],
            &[("stdout", "F", 7)][..]
        ),
        "{text}"
    );

    // The init's parent (its monitor) and the pause process are hull-shim, each a
    // small fraction of the server's RSS, and their executable is not writable.
    let init = hull_runtime::container::state(&cfg.oci_root(), &id)
        .unwrap()
        .pid;
    let monitor = ppid(init);
    let server_pid = env.server.as_ref().unwrap().pid();
    let server_rss = comm_rss(server_pid).1;
    for (what, p) in [("monitor", monitor), ("pause", pause)] {
        let (comm, rss) = comm_rss(p);
        assert_eq!(comm, "hull-shim", "{what} (pid {p}) runs as {comm}");
        assert!(
            rss * 3 < server_rss,
            "{what} RSS {rss} KiB is not small beside the server's {server_rss} KiB"
        );
        let w = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/{p}/exe"));
        assert!(w.is_err(), "{what}'s executable opens for writing");
    }

    // kill -9 of the server; a new one finds the same monitor for ReopenContainerLog.
    env.server.take();
    env.server = Some(CriServer::start(&data, &env.sock, &conf));
    env.rt = connect(&env.sock).await.0;
    let log = env.logs.join("lines/0.log");
    std::fs::rename(&log, env.logs.join("lines/0.log.1")).unwrap();
    env.rt
        .reopen_container_log(ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    assert!(
        log.exists(),
        "ReopenContainerLog returned before the new log existed"
    );
    assert_eq!(ppid(init), monitor, "the init changed parents");
    std::fs::write(format!("/proc/{init}/root/tmp/go"), b"").unwrap();
    let text = env.wait_log("lines/0.log", " stdout F after").await;
    assert!(text.ends_with(" stdout F after\n"), "{text}");
    let t = std::time::Instant::now();
    let mut s = status(&mut env.rt, &id).await;
    while s.state != 2 && t.elapsed() < std::time::Duration::from_secs(60) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        s = status(&mut env.rt, &id).await;
    }
    assert_eq!((s.state, s.exit_code, s.reason.as_str()), (2, 7, "Error"));
    assert!(s.finished_at > s.started_at, "{s:?}");

    env.teardown().await;
    for p in [monitor, pause] {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let running = stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'));
        assert!(
            !running || comm_rss(p).0 != "hull-shim",
            "hull-shim {p} left running"
        );
    }
}

/// A container created without a log path (crictl without a pod log directory,
/// critest): its monitor is hull-shim too, writing a private log Attach follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_to_a_container_without_log_path() {
    let mut env = PodEnv::new("cri-shim-nolog", "default", "nologpod").await;
    let id = env
        .run_with_log(
            "echo",
            // A bare shell fed commands on stdin, as critest's attach spec does.
            "exec /bin/sh",
            true,
            0,
            "",
        )
        .await;
    let data = env.scratch.path("data");
    let cfg = hull_agent::cri::Config::new(&data, &env.sock);
    let init = hull_runtime::container::state(&cfg.oci_root(), &id)
        .unwrap()
        .pid;
    assert_eq!(
        comm_rss(ppid(init)).0,
        "hull-shim",
        "the monitor is not hull-shim"
    );
    let s = status(&mut env.rt, &id).await;
    assert_eq!((s.state, s.log_path.as_str()), (1, ""), "{s:?}");

    let url = env
        .rt
        .attach(AttachRequest {
            container_id: id.clone(),
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (host, path) = streaming_support::url_parts(&url);
    let tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    let (mut s, _) = streaming_support::spdy_upgrade(tcp, &host, &path, &["v4.channel.k8s.io"])
        .await
        .unwrap();
    for (sid, kind) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")] {
        s.open(sid, &[("streamtype", kind)]).await;
    }
    // Output without a newline (critest's attach spec runs `echo -n hello`) too.
    let word = format!("hello-{}", std::process::id());
    s.send(3, format!("echo -n part:{word}\n").as_bytes(), false)
        .await;
    let out = s.read_until(5, &format!("part:{word}")).await;
    assert!(out.ends_with(&format!("part:{word}")), "{out:?}");
    s.send(3, format!("echo got:{word}\n").as_bytes(), false)
        .await;
    let out = s.read_until(5, &format!("got:{word}")).await;
    assert!(out.contains(&format!("got:{word}\n")), "{out:?}");
    // Closing stdin detaches (as containerd does; critest waits for the session's end):
    // a Success status, while the container runs on.
    s.send(3, b"", true).await;
    let got = s.collect(1).await;
    let text = String::from_utf8_lossy(got.get(&1).map(Vec::as_slice).unwrap_or_default());
    assert!(text.contains("Success"), "{text:?}");
    drop(s);
    let st = status(&mut env.rt, &id).await;
    assert_eq!(
        st.state, 1,
        "the container stopped when the client detached: {st:?}"
    );
    env.teardown().await;
}

/// `kubectl run -it --rm` as the kubelet does it: a container with `tty`, `stdin` and
/// `stdinOnce` running a shell. Its monitor (hull-shim) holds the pty master; Attach's
/// resize messages reach it over SPDY and over WebSocket (`stty size` in the shell
/// shows them), what the shell prints reaches the CRI log as `stdout`, a detach
/// leaves the shell running, and `exit 3` typed into it ends the attach with code 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_to_a_container_with_a_terminal() {
    use hull_agent::cri::websocket::{client_frame, read_frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut env = PodEnv::new("cri-shim-tty", "default", "ttypod").await;
    let mut cfg = env.config("term", "exec /bin/sh", true, 0, "term/0.log");
    cfg.tty = true;
    cfg.stdin_once = true;
    let id = env.create_start(cfg).await;
    let data = env.scratch.path("data");
    let ccfg = hull_agent::cri::Config::new(&data, &env.sock);
    let init = hull_runtime::container::state(&ccfg.oci_root(), &id)
        .unwrap()
        .pid;
    let monitor = ppid(init);
    assert_eq!(
        comm_rss(monitor).0,
        "hull-shim",
        "the monitor is not hull-shim"
    );
    let holds_ptmx = std::fs::read_dir(format!("/proc/{monitor}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .any(|l| l.to_string_lossy().contains("ptmx"));
    assert!(holds_ptmx, "the monitor holds no pty master");
    let tty = std::fs::read_link(format!("/proc/{init}/fd/0")).unwrap();
    assert!(
        tty.to_string_lossy().starts_with("/dev/pts/"),
        "the shell's stdin is {tty:?}"
    );

    let attach = |rt: &mut runtime_service_client::RuntimeServiceClient<_>| {
        let req = AttachRequest {
            container_id: id.clone(),
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
        };
        let mut rt = rt.clone();
        async move { rt.attach(req).await.unwrap().into_inner().url }
    };
    let pid = std::process::id();

    // SPDY (crictl attach -it, kubectl's fallback): resize, then `stty size`.
    let url = attach(&mut env.rt).await;
    let (host, path) = streaming_support::url_parts(&url);
    let tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    let (mut s, _) = streaming_support::spdy_upgrade(tcp, &host, &path, &["v4.channel.k8s.io"])
        .await
        .unwrap();
    for (sid, kind) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "resize")] {
        s.open(sid, &[("streamtype", kind)]).await;
    }
    s.send(7, br#"{"Width":132,"Height":50}"#, false).await;
    // The terminal echoes what is typed: the quotes keep the echo from matching.
    s.send(
        3,
        format!("stty size; echo spdy-''{pid}\n").as_bytes(),
        false,
    )
    .await;
    let out = s.read_until(5, &format!("spdy-{pid}\r\n")).await;
    assert!(out.contains("50 132\r\n"), "{out:?}");
    // Detach (the client closes stdin): Success, and the shell runs on (tty + stdinOnce
    // leaves the container's terminal open, as containerd does).
    s.send(3, b"", true).await;
    let got = s.collect(1).await;
    let text = String::from_utf8_lossy(got.get(&1).map(Vec::as_slice).unwrap_or_default());
    assert!(text.contains("Success"), "{text:?}");
    drop(s);
    assert_eq!(status(&mut env.rt, &id).await.state, 1, "the shell stopped");

    // WebSocket v5 (kubectl 1.35's first choice): another size, then `exit 3`.
    let url = attach(&mut env.rt).await;
    let (host, path) = streaming_support::url_parts(&url);
    let mut ws = tokio::net::TcpStream::connect(&host).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"
    );
    ws.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        ws.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut msg = vec![4u8];
    msg.extend_from_slice(br#"{"Width":100,"Height":40}"#);
    ws.write_all(&client_frame(2, &msg)).await.unwrap();
    let line = format!("\x00stty size; echo ws-''{pid}; exit 3\n");
    ws.write_all(&client_frame(2, line.as_bytes()))
        .await
        .unwrap();
    let (mut out, mut status_msg) = (Vec::new(), Vec::new());
    loop {
        let f = tokio::time::timeout(std::time::Duration::from_secs(60), read_frame(&mut ws))
            .await
            .expect("no WebSocket frame within 60 s")
            .unwrap();
        let Some((_, op, data)) = f else { break };
        if op == 8 {
            break;
        }
        match data.first() {
            Some(1) => out.extend_from_slice(&data[1..]),
            Some(3) => status_msg.extend_from_slice(&data[1..]),
            _ => {}
        }
    }
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains(&format!("40 100\r\nws-{pid}\r\n")), "{out:?}");
    let status_msg = String::from_utf8_lossy(&status_msg);
    assert!(
        status_msg.contains("NonZeroExitCode") && status_msg.contains(r#""message":"3""#),
        "{status_msg}"
    );
    let s = status(&mut env.rt, &id).await;
    assert_eq!((s.state, s.exit_code), (2, 3), "{s:?}");
    // The terminal's output is the container's stdout in the CRI log.
    let log = env.wait_log("term/0.log", &format!("ws-{pid}")).await;
    // (`\r\n` from the terminal is kept: the entry ends in `\r`.)
    assert!(
        log.split('\n').any(|l| l.ends_with(" stdout F 50 132\r")),
        "{log}"
    );
    env.teardown().await;
}

/// `stdinOnce` without a terminal (`echo hi | kubectl run -i --rm ... -- cat`): the
/// container reads what the first attach sends, sees EOF when that attach closes its
/// stdin, and the attach goes on until the container exits with its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_with_stdin_once_closes_the_container_stdin() {
    let mut env = PodEnv::new("cri-shim-once", "default", "oncepod").await;
    let mut cfg = env.config("once", "cat; echo eof-$?; exit 4", true, 0, "once/0.log");
    cfg.stdin_once = true;
    let id = env.create_start(cfg).await;
    let url = env
        .rt
        .attach(AttachRequest {
            container_id: id.clone(),
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (host, path) = streaming_support::url_parts(&url);
    let tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    let (mut s, _) = streaming_support::spdy_upgrade(tcp, &host, &path, &["v4.channel.k8s.io"])
        .await
        .unwrap();
    for (sid, kind) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")] {
        s.open(sid, &[("streamtype", kind)]).await;
    }
    let word = format!("once-{}", std::process::id());
    s.send(3, format!("{word}\n").as_bytes(), false).await;
    let out = s.read_until(5, &word).await;
    assert!(out.contains(&word), "{out:?}");
    // Closing stdin: `cat` sees EOF, the script ends, and so does the attach.
    s.send(3, b"", true).await;
    let got = s.collect(1).await;
    let out = String::from_utf8_lossy(got.get(&5).map(Vec::as_slice).unwrap_or_default());
    let text = String::from_utf8_lossy(got.get(&1).map(Vec::as_slice).unwrap_or_default());
    assert!(
        text.contains("NonZeroExitCode") && text.contains(r#""message":"4""#),
        "{text:?} (stdout {out:?})"
    );
    let log = env.wait_log("once/0.log", " stdout F eof-0").await;
    assert!(log.contains(&format!(" stdout F {word}\n")), "{log}");
    let st = status(&mut env.rt, &id).await;
    assert_eq!((st.state, st.exit_code), (2, 4), "{st:?}");
    env.teardown().await;
}
