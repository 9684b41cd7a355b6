//! Running another CNI plugin: find it on `CNI_PATH`, exec it with the CNI
//! environment and config on stdin, and turn its stdout into a result or a `CniError`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{CniError, Result, code};

/// The CNI environment for one plugin invocation.
#[derive(Debug, Clone, Default)]
pub struct PluginEnv {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
}

/// Finds executable `kind` in the `:`-separated `cni_path` (the first match wins).
pub fn find_plugin(kind: &str, cni_path: &str) -> Result<PathBuf> {
    if kind.is_empty() || kind.contains('/') || kind.starts_with('.') {
        return Err(CniError::config(format!(
            "type: {kind:?} is not a plugin name"
        )));
    }
    for dir in cni_path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(kind);
        if let Ok(md) = std::fs::metadata(&p)
            && md.is_file()
        {
            return Ok(p);
        }
    }
    Err(CniError::new(
        code::PLUGIN_NOT_AVAILABLE,
        format!("type: plugin {kind:?} not found in CNI_PATH {cni_path:?}"),
    ))
}

/// Execs `plugin` and returns its stdout. A non-zero exit becomes the plugin's own
/// error JSON if it printed one, or a hull error carrying its stderr.
pub fn exec_plugin(plugin: &Path, env: &PluginEnv, stdin: &[u8]) -> Result<Vec<u8>> {
    let mut cmd = Command::new(plugin);
    cmd.env("CNI_COMMAND", &env.command)
        .env("CNI_CONTAINERID", &env.container_id)
        .env("CNI_NETNS", &env.netns)
        .env("CNI_IFNAME", &env.ifname)
        .env("CNI_ARGS", &env.args)
        .env("CNI_PATH", &env.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| CniError::io(format!("exec {}", plugin.display()), e))?;
    if let Some(mut si) = child.stdin.take() {
        // A plugin may exit without reading stdin (VERSION); a broken pipe is not our failure.
        let _ = si.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::io(format!("wait for {}", plugin.display()), e))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    if let Ok(mut e) = serde_json::from_slice::<CniError>(&out.stdout) {
        e.msg = format!("{}: {}", plugin.display(), e.msg);
        return Err(e);
    }
    Err(CniError::new(
        code::DELEGATE,
        format!(
            "{} {} failed ({})",
            plugin.display(),
            env.command,
            out.status
        ),
    )
    .with_details(String::from_utf8_lossy(&out.stderr).trim().to_string()))
}
