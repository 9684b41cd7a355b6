//! Termination messages, as kubelet gives them: each container attempt gets a host file
//! bind-mounted at its `terminationMessagePath` (default `/dev/termination-log`), and
//! what the container wrote there (at most 4096 bytes) becomes `message` of its
//! `terminated` state. With `terminationMessagePolicy: FallbackToLogsOnError`, a
//! container that failed (exit code ≠ 0) and wrote nothing gets the tail of its log
//! instead (the last 80 lines, at most 2048 bytes).
//!
//! The files live in `DATA/pods/<uid>/containers/<name>/<attempt>`, so they go with the
//! pod's directory.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_cri::v1::{ContainerStatus, Mount};
use k8s_openapi::api::core::v1::Container;

/// kubelet's caps.
const MAX_MESSAGE: u64 = 4096;
const MAX_LOG_LINES: usize = 80;
const MAX_LOG_BYTES: usize = 2048;

const DEFAULT_PATH: &str = "/dev/termination-log";

fn path_in_container(c: &Container) -> Option<&str> {
    match c.termination_message_path.as_deref() {
        None => Some(DEFAULT_PATH),
        Some("") => None,
        Some(p) => Some(p),
    }
}

/// The host file of one attempt of container `name`.
pub fn host_path(data_dir: &Path, uid: &str, name: &str, attempt: u32) -> PathBuf {
    data_dir
        .join("pods")
        .join(uid)
        .join("containers")
        .join(name)
        .join(attempt.to_string())
}

/// Creates the attempt's empty file (world-writable, as kubelet makes it, so a
/// container running as any user can write its message) and the mount for it; None
/// when the container has no termination message path.
pub fn mount(c: &Container, host: &Path) -> Result<Option<Mount>, String> {
    let Some(target) = path_in_container(c) else {
        return Ok(None);
    };
    if !target.starts_with('/') {
        return Err(format!(
            "terminationMessagePath: {target:?} is not an absolute path"
        ));
    }
    let err = |e: std::io::Error| format!("termination message file {}: {e}", host.display());
    if let Some(d) = host.parent() {
        std::fs::create_dir_all(d).map_err(err)?;
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o666)
        .open(host)
        .map_err(err)?;
    // The umask took bits off the mode given to open.
    f.set_permissions(std::fs::Permissions::from_mode(0o666))
        .map_err(err)?;
    Ok(Some(Mount {
        container_path: target.to_string(),
        host_path: host.to_string_lossy().into_owned(),
        ..Default::default()
    }))
}

/// The message of an exited container: its file's content, else (FallbackToLogsOnError
/// and a failure) the tail of its log; None when there is none.
pub fn message(c: &Container, st: &ContainerStatus, host: &Path) -> Option<String> {
    let mut msg = String::new();
    if path_in_container(c).is_some()
        && let Ok(f) = std::fs::File::open(host)
    {
        let mut b = Vec::new();
        let _ = f.take(MAX_MESSAGE).read_to_end(&mut b);
        msg = String::from_utf8_lossy(&b).into_owned();
    }
    let fallback = c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
    if msg.is_empty() && fallback && st.exit_code != 0 && !st.log_path.is_empty() {
        msg = log_tail(Path::new(&st.log_path)).unwrap_or_default();
    }
    (!msg.is_empty()).then_some(msg)
}

/// The last lines of a CRI log file (`TIME STREAM P|F TEXT` per line), as text: at most
/// `MAX_LOG_LINES` lines and the last `MAX_LOG_BYTES` bytes of them.
fn log_tail(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    // Enough for 80 lines of the CRI prefix (~40 bytes) plus 2 KiB of text, unless the
    // lines are long, which the byte cap cuts anyway.
    let window = 64 * 1024;
    f.seek(SeekFrom::Start(len.saturating_sub(window))).ok()?;
    let mut b = Vec::new();
    f.read_to_end(&mut b).ok()?;
    let text = String::from_utf8_lossy(&b);
    let mut lines: Vec<&str> = text.lines().collect();
    if len > window && !lines.is_empty() {
        // The first line may start mid-entry.
        lines.remove(0);
    }
    let mut out = String::new();
    for l in &lines[lines.len().saturating_sub(MAX_LOG_LINES)..] {
        let mut parts = l.splitn(4, ' ');
        let (Some(_time), Some(_stream), Some(tag), Some(body)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        out.push_str(body);
        if tag != "P" {
            out.push('\n');
        }
    }
    if out.len() > MAX_LOG_BYTES {
        let mut cut = out.len() - MAX_LOG_BYTES;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out.drain(..cut);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hull-term-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn file_then_log_fallback() {
        let d = scratch("msg");
        let host = host_path(&d, "uid1", "c", 2);
        assert!(host.ends_with("pods/uid1/containers/c/2"));
        let mut c = Container {
            name: "c".into(),
            ..Default::default()
        };
        let m = mount(&c, &host).unwrap().unwrap();
        assert_eq!(m.container_path, "/dev/termination-log");
        let mode = std::fs::metadata(&host).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o666);
        let log = d.join("c.log");
        std::fs::write(
            &log,
            "2026-01-01T00:00:00Z stdout F first\n2026-01-01T00:00:00Z stderr P half \
             \n2026-01-01T00:00:00Z stderr F line\n",
        )
        .unwrap();
        let st = ContainerStatus {
            exit_code: 3,
            log_path: log.to_string_lossy().into_owned(),
            ..Default::default()
        };
        // Nothing written and the default policy (File): no message.
        assert_eq!(message(&c, &st, &host), None);
        c.termination_message_policy = Some("FallbackToLogsOnError".into());
        assert_eq!(
            message(&c, &st, &host).as_deref(),
            Some("first\nhalf line\n")
        );
        // Not on success.
        let ok = ContainerStatus {
            exit_code: 0,
            ..st.clone()
        };
        assert_eq!(message(&c, &ok, &host), None);
        // What the container wrote wins, capped at 4096 bytes.
        std::fs::write(&host, "x".repeat(5000)).unwrap();
        assert_eq!(message(&c, &st, &host).map(|m| m.len()), Some(4096));
        // A new attempt's file starts empty.
        mount(&c, &host).unwrap();
        assert_eq!(std::fs::read(&host).unwrap().len(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn log_tail_caps_lines_and_bytes() {
        let d = scratch("tail");
        let log = d.join("c.log");
        let body: String = (0..200)
            .map(|i| format!("2026-01-01T00:00:00Z stdout F line {i}\n"))
            .collect();
        std::fs::write(&log, body).unwrap();
        let t = log_tail(&log).unwrap();
        assert_eq!(t.lines().count(), 80);
        assert!(
            t.starts_with("line 120\n") && t.ends_with("line 199\n"),
            "{t}"
        );
        let long: String = (0..100)
            .map(|i| format!("2026-01-01T00:00:00Z stdout F {i:0>100}\n"))
            .collect();
        std::fs::write(&log, long).unwrap();
        assert_eq!(log_tail(&log).unwrap().len(), 2048);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn empty_path_means_no_file_and_relative_is_refused() {
        let d = scratch("nopath");
        let host = d.join("f");
        let mut c = Container {
            termination_message_path: Some(String::new()),
            ..Default::default()
        };
        assert!(mount(&c, &host).unwrap().is_none());
        assert!(!host.exists());
        c.termination_message_path = Some("rel/path".into());
        let e = mount(&c, &host).unwrap_err();
        assert!(e.starts_with("terminationMessagePath: \"rel/path\""), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
