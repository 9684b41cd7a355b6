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
    process.set_terminal(Some(false));
    let opts = hull_runtime::exec::ExecOptions {
        process,
        detach: false,
        console_socket: None,
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
