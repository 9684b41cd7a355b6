//! Running a command in a container: `hull cri --internal-exec SPEC` (the `hull`
//! binary re-exec'd) calls `hull_runtime::exec` with its own stdio, so the server gets
//! the process's stdin/stdout/stderr as plain pipes and its exit status as ours.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::config::Config;
use super::error::{CriError, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecSpec {
    pub oci_root: PathBuf,
    pub id: String,
    pub cmd: Vec<String>,
    /// With a terminal: the runtime makes a pty in the container and sends its master
    /// over this socket (runc's console-socket protocol).
    #[serde(default)]
    pub console_socket: Option<PathBuf>,
}

/// The helper's main: exit status of the command (126 if it could not be started).
pub fn main(spec_json: &str) -> i32 {
    let spec: ExecSpec = match serde_json::from_str(spec_json) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("exec spec: {e}");
            return 126;
        }
    };
    match run(&spec) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("exec in {}: {e}", spec.id);
            if e.contains("No such file") || e.contains("ENOENT") {
                127
            } else {
                126
            }
        }
    }
}

fn run(spec: &ExecSpec) -> std::result::Result<i32, String> {
    let saved =
        hull_runtime::container::saved_spec(&spec.oci_root, &spec.id).map_err(|e| e.to_string())?;
    let mut process = saved
        .process()
        .clone()
        .ok_or("container spec has no process")?;
    process.set_args(Some(spec.cmd.clone()));
    process.set_terminal(Some(spec.console_socket.is_some()));
    let opts = hull_runtime::exec::ExecOptions {
        process,
        detach: false,
        console_socket: spec.console_socket.clone(),
        pid_file: None,
        preserve_fds: 0,
    };
    hull_runtime::exec::exec(&spec.oci_root, &spec.id, &opts).map_err(|e| e.to_string())
}

/// Starts the helper with piped stdio.
pub fn spawn(
    cfg: &Config,
    oci_root: &Path,
    id: &str,
    cmd: &[String],
    stdin: bool,
) -> Result<tokio::process::Child> {
    if cmd.is_empty() {
        return Err(CriError::InvalidArgument("cmd: must not be empty".into()));
    }
    let spec = ExecSpec {
        oci_root: oci_root.to_path_buf(),
        id: id.to_string(),
        cmd: cmd.to_vec(),
        console_socket: None,
    };
    let json = serde_json::to_string(&spec).map_err(|e| CriError::Internal(e.to_string()))?;
    tokio::process::Command::new(&cfg.hull_exe)
        .args(["cri", "--internal-exec", &json])
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(CriError::io(format!("spawn {}", cfg.hull_exe.display())))
}

/// Starts the helper with a terminal: (helper, the pty master). The helper's own stderr
/// is piped for its errors; the command's stdio is the pty.
pub async fn spawn_tty(
    cfg: &Config,
    oci_root: &Path,
    id: &str,
    cmd: &[String],
) -> Result<(tokio::process::Child, std::os::fd::OwnedFd)> {
    if cmd.is_empty() {
        return Err(CriError::InvalidArgument("cmd: must not be empty".into()));
    }
    let dir = cfg.run_dir().join("consoles");
    std::fs::create_dir_all(&dir).map_err(CriError::io(format!("create {}", dir.display())))?;
    let sock = dir.join(format!(
        "{}.sock",
        super::records::new_id()?.get(..16).unwrap_or("x")
    ));
    let listener = tokio::net::UnixListener::bind(&sock)
        .map_err(CriError::io(format!("bind {}", sock.display())))?;
    struct Unlink(PathBuf);
    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _unlink = Unlink(sock.clone());
    let spec = ExecSpec {
        oci_root: oci_root.to_path_buf(),
        id: id.to_string(),
        cmd: cmd.to_vec(),
        console_socket: Some(sock.clone()),
    };
    let json = serde_json::to_string(&spec).map_err(|e| CriError::Internal(e.to_string()))?;
    let mut child = tokio::process::Command::new(&cfg.hull_exe)
        .args(["cri", "--internal-exec", &json])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(CriError::io(format!("spawn {}", cfg.hull_exe.display())))?;
    let conn = tokio::select! {
        c = listener.accept() => c.map_err(CriError::io("accept on the console socket"))?.0,
        st = child.wait() => {
            let mut msg = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut msg).await;
            }
            let code = st.map(exit_code).unwrap_or(-1);
            return Err(CriError::Internal(format!("exec {cmd:?} with a terminal failed (exit {code}): {}", msg.trim())));
        }
    };
    let std_conn = conn.into_std().map_err(CriError::io("console socket"))?;
    std_conn
        .set_nonblocking(false)
        .map_err(CriError::io("console socket"))?;
    let master = tokio::task::spawn_blocking(move || {
        use std::os::fd::AsFd;
        hull_runtime::sync::recv_fd(std_conn.as_fd())
    })
    .await
    .map_err(|e| CriError::Internal(e.to_string()))?
    .map_err(|e| CriError::Internal(format!("receive the terminal: {e}")))?;
    Ok((child, master))
}

/// Sets a terminal's size (the resize stream's messages).
pub fn resize(master: &impl std::os::fd::AsRawFd, width: u16, height: u16) {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize on an fd we hold.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// ExecSync: runs to completion (or the timeout, then SIGKILL); (stdout, stderr, code).
pub async fn run_sync(
    cfg: &Config,
    oci_root: &Path,
    id: &str,
    cmd: &[String],
    timeout: Option<Duration>,
) -> Result<(Vec<u8>, Vec<u8>, i32)> {
    let mut child = spawn(cfg, oci_root, id, cmd, false)?;
    let (mut so, mut se) = (child.stdout.take(), child.stderr.take());
    let work = async {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let ro = async {
            if let Some(s) = so.as_mut() {
                let _ = s.read_to_end(&mut o).await;
            }
        };
        let re = async {
            if let Some(s) = se.as_mut() {
                let _ = s.read_to_end(&mut e).await;
            }
        };
        tokio::join!(ro, re);
        let st = child.wait().await;
        (o, e, st)
    };
    let (o, e, st) = match timeout {
        Some(t) => tokio::time::timeout(t, work)
            .await
            .map_err(|_| CriError::Internal(format!("command {cmd:?} timed out after {t:?}")))?,
        None => work.await,
    };
    let st = st.map_err(CriError::io("wait for exec helper"))?;
    Ok((o, e, exit_code(st)))
}

pub fn exit_code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}
