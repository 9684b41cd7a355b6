//! OCI hooks: executables run at lifecycle points with the container's state JSON on
//! stdin. A failing prestart/createRuntime/createContainer/startContainer hook fails
//! the container; poststart and poststop failures are only warnings (as runc).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use crate::error::{Error, Result};
use crate::explain;

/// Runs `hooks` in order with `state` (the OCI state JSON) on stdin.
pub fn run_all(kind: &str, hooks: Option<&Vec<Hook>>, state: &serde_json::Value) -> Result<()> {
    for (i, h) in hooks.into_iter().flatten().enumerate() {
        run(h, state).map_err(|msg| Error::Hook {
            path: format!("hooks.{kind}[{i}] {}", h.path().display()),
            msg,
        })?;
    }
    Ok(())
}

/// Like [`run_all`] but a failure is reported and the rest still run.
pub fn run_all_warn(kind: &str, hooks: Option<&Vec<Hook>>, state: &serde_json::Value) {
    for (i, h) in hooks.into_iter().flatten().enumerate() {
        if let Err(msg) = run(h, state) {
            eprintln!(
                "hull-runtime: warning: hooks.{kind}[{i}] {}: {msg}",
                h.path().display()
            );
        }
    }
}

fn run(h: &Hook, state: &serde_json::Value) -> std::result::Result<(), String> {
    explain!("hook {}", h.path().display());
    let mut cmd = Command::new(h.path());
    let args = h.args().clone().unwrap_or_default();
    if let Some((argv0, rest)) = args.split_first() {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for kv in h.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("start: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is not an error.
        let _ = stdin.write_all(state.to_string().as_bytes());
    }
    let deadline = h
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(format!("exited with {st}")),
            Ok(None) => {}
            Err(e) => return Err(format!("wait: {e}")),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {} s", h.timeout().unwrap_or(0)));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
