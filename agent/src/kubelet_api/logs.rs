//! `/containerLogs/{ns}/{pod}/{container}`: reads the CRI log file the container's monitor
//! writes (`<RFC3339Nano> <stream> <P|F> <msg>`) and streams the messages as the kubelet
//! does, with `follow`, `previous`, `tailLines`, `sinceSeconds`, `sinceTime`, `timestamps`
//! and `limitBytes`.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, BufReader};
use tokio::sync::mpsc;

use super::ApiError;
use super::pods::{self, Cri};

#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub tail_lines: Option<u64>,
    pub since: Option<jiff::Timestamp>,
    pub timestamps: bool,
    pub limit_bytes: Option<u64>,
}

fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("true" | "1"))
}

fn number(q: &HashMap<String, String>, k: &str) -> Result<Option<i64>, ApiError> {
    match q.get(k).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("{k}: not an integer: {v:?}"))),
    }
}

impl LogOptions {
    /// The kubelet's (and PodLogOptions') query parameters.
    pub fn from_query(q: &HashMap<String, String>) -> Result<LogOptions, ApiError> {
        let mut o = LogOptions {
            follow: flag(q, "follow"),
            previous: flag(q, "previous"),
            timestamps: flag(q, "timestamps"),
            ..Default::default()
        };
        if let Some(n) = number(q, "tailLines")? {
            if n < 0 {
                return Err(ApiError::BadRequest(format!(
                    "tailLines: must be greater than or equal to 0, got {n}"
                )));
            }
            o.tail_lines = Some(n as u64);
        }
        if let Some(n) = number(q, "limitBytes")? {
            if n < 1 {
                return Err(ApiError::BadRequest(format!(
                    "limitBytes: must be greater than 0, got {n}"
                )));
            }
            o.limit_bytes = Some(n as u64);
        }
        let since_seconds = number(q, "sinceSeconds")?;
        let since_time = q.get("sinceTime").filter(|v| !v.is_empty());
        match (since_seconds, since_time) {
            (Some(_), Some(_)) => {
                return Err(ApiError::BadRequest(
                    "at most one of sinceTime or sinceSeconds may be specified".into(),
                ));
            }
            (Some(s), None) => {
                if s < 1 {
                    return Err(ApiError::BadRequest(format!(
                        "sinceSeconds: must be greater than 0, got {s}"
                    )));
                }
                o.since = jiff::Timestamp::now()
                    .checked_sub(jiff::SignedDuration::from_secs(s))
                    .ok();
            }
            (None, Some(t)) => {
                o.since = Some(t.parse().map_err(|e| {
                    ApiError::BadRequest(format!("sinceTime: not an RFC 3339 time {t:?}: {e}"))
                })?)
            }
            (None, None) => {}
        }
        Ok(o)
    }
}

/// One parsed CRI log line.
#[derive(Debug, PartialEq)]
pub struct Entry<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub msg: &'a [u8],
}

/// Parses `<time> <stream> <P|F> <msg>` (the trailing newline already removed).
pub fn parse_line(line: &[u8]) -> Option<Entry<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let msg = parts.next().unwrap_or(b"");
    Some(Entry {
        time,
        stream,
        partial: tag == b"P",
        msg,
    })
}

/// The byte offset where the last `n` lines of `path` start.
async fn tail_offset(f: &mut tokio::fs::File, n: u64) -> std::io::Result<u64> {
    let len = f.metadata().await?.len();
    if n == 0 {
        return Ok(len);
    }
    let mut pos = len;
    let mut seen = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    while pos > 0 {
        let start = pos.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(pos - start) as usize];
        f.seek(SeekFrom::Start(start)).await?;
        f.read_exact(chunk).await?;
        for i in (0..chunk.len()).rev() {
            // The file's last newline ends the last line; it does not start one.
            if chunk[i] == b'\n' && start + i as u64 + 1 != len {
                seen += 1;
                if seen == n {
                    return Ok(start + i as u64 + 1);
                }
            }
        }
        pos = start;
    }
    Ok(0)
}

/// What formats entries and counts the byte limit.
struct Writer {
    opts: LogOptions,
    at_line_start: bool,
    written: u64,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl Writer {
    /// Sends one entry; false when the client went away or the byte limit is reached.
    async fn entry(&mut self, e: &Entry<'_>) -> bool {
        if let Some(since) = self.opts.since
            && e.time.parse::<jiff::Timestamp>().is_ok_and(|t| t < since)
        {
            return true;
        }
        let mut out = Vec::with_capacity(e.msg.len() + 40);
        if self.opts.timestamps && self.at_line_start {
            out.extend_from_slice(e.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(e.msg);
        if !e.partial {
            out.push(b'\n');
        }
        self.at_line_start = !e.partial;
        let mut more = true;
        if let Some(limit) = self.opts.limit_bytes {
            let left = limit.saturating_sub(self.written);
            if out.len() as u64 >= left {
                out.truncate(left as usize);
                more = false;
            }
        }
        self.written += out.len() as u64;
        if !out.is_empty() && self.tx.send(Ok(Bytes::from(out))).await.is_err() {
            return false;
        }
        more
    }
}

/// Streams the log of container `id` at `path` into `tx` until done (or, following, until
/// the container has exited and everything it wrote was sent).
pub async fn stream(
    mut cri: Cri,
    id: String,
    path: PathBuf,
    opts: LogOptions,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    if let Err(e) = stream_inner(&mut cri, &id, &path, opts, tx.clone()).await {
        let _ = tx.send(Err(std::io::Error::other(e))).await;
    }
}

async fn open(path: &Path) -> Result<tokio::fs::File, String> {
    tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("open log file {}: {e}", path.display()))
}

async fn stream_inner(
    cri: &mut Cri,
    id: &str,
    path: &Path,
    opts: LogOptions,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), String> {
    let mut f = match open(path).await {
        Ok(f) => f,
        // A container that never wrote a line may have no file yet.
        Err(_) if !path.exists() && !opts.follow => return Ok(()),
        Err(e) => return Err(e),
    };
    let start = match opts.tail_lines {
        Some(n) => tail_offset(&mut f, n).await.map_err(|e| e.to_string())?,
        None => 0,
    };
    f.seek(SeekFrom::Start(start))
        .await
        .map_err(|e| e.to_string())?;
    let mut inode = f.metadata().await.map(|m| m.ino()).unwrap_or(0);
    let mut rd = BufReader::with_capacity(64 * 1024, f);
    let follow = opts.follow;
    let mut w = Writer {
        opts,
        at_line_start: true,
        written: 0,
        tx,
    };
    let mut line = Vec::with_capacity(16 * 1024);
    let mut exited = false;
    loop {
        let n = rd
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| e.to_string())?;
        if n > 0 && line.ends_with(b"\n") {
            line.pop();
            if let Some(e) = parse_line(&line)
                && !w.entry(&e).await
            {
                return Ok(());
            }
            line.clear();
            continue;
        }
        // At the end of what is written so far (`line` may hold half a line).
        if !follow || exited {
            return Ok(());
        }
        if w.tx.is_closed() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Stop once the container is gone, after one more read of what it left.
        match pods::status(cri, id).await {
            Ok(s) if s.state == k8s_cri::v1::ContainerState::ContainerRunning as i32 => {}
            Ok(s) if s.state == k8s_cri::v1::ContainerState::ContainerCreated as i32 => {}
            _ => exited = true,
        }
        // Rotated (ReopenContainerLog): continue in the new file.
        if let Ok(m) = tokio::fs::metadata(path).await
            && m.ino() != inode
            && line.is_empty()
        {
            let f = open(path).await?;
            inode = m.ino();
            rd = BufReader::with_capacity(64 * 1024, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_partial_lines() {
        let e = parse_line(b"2026-01-01T00:00:00.000000001Z stderr P half a").unwrap();
        assert_eq!(e.time, "2026-01-01T00:00:00.000000001Z");
        assert_eq!(e.stream, "stderr");
        assert!(e.partial);
        assert_eq!(e.msg, b"half a");
        let e = parse_line(b"2026-01-01T00:00:00Z stdout F ").unwrap();
        assert_eq!(e.msg, b"");
        assert!(parse_line(b"garbage").is_none());
    }

    #[test]
    fn rejects_bad_options_by_name() {
        let q = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
        let msg =
            |r: Result<LogOptions, ApiError>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg(LogOptions::from_query(&q("tailLines", "-1"))).contains("tailLines"));
        assert!(msg(LogOptions::from_query(&q("limitBytes", "x"))).contains("limitBytes"));
        assert!(msg(LogOptions::from_query(&q("sinceTime", "yesterday"))).contains("sinceTime"));
        let o = LogOptions::from_query(&q("tailLines", "3")).unwrap();
        assert_eq!(o.tail_lines, Some(3));
    }

    #[tokio::test]
    async fn tail_offset_counts_lines_from_the_end() {
        let p = std::env::temp_dir().join(format!("hull-tail-{}", std::process::id()));
        std::fs::write(&p, b"a\nb\nc\n").unwrap();
        let mut f = tokio::fs::File::open(&p).await.unwrap();
        assert_eq!(tail_offset(&mut f, 1).await.unwrap(), 4);
        assert_eq!(tail_offset(&mut f, 2).await.unwrap(), 2);
        assert_eq!(tail_offset(&mut f, 9).await.unwrap(), 0);
        assert_eq!(tail_offset(&mut f, 0).await.unwrap(), 6);
        let _ = std::fs::remove_file(&p);
    }
}
