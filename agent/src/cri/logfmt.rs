//! The CRI log format kubelet and `crictl logs` read:
//! `2026-01-01T00:00:00.000000000Z stdout F line` — `F` ends a line, `P` is a partial
//! line (one longer than the reader's buffer) continued by the next entry.

use std::time::{SystemTime, UNIX_EPOCH};

/// RFC 3339 with nanoseconds, UTC.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// One log entry (without the line's own newline).
pub fn entry(t: SystemTime, stream: &str, partial: bool, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 48);
    out.extend_from_slice(rfc3339_nano(t).as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(msg);
    out.push(b'\n');
    out
}

/// A complete line as (partial, piece) entries: pieces of `max` bytes tagged `P`, the
/// rest `F`. A line that arrived whole is split like one that arrived in parts, as
/// containerd and CRI-O do (readers size their buffers to it).
pub fn pieces(line: &[u8], max: usize) -> impl Iterator<Item = (bool, &[u8])> {
    let max = max.max(1);
    let n = line.len().div_ceil(max).max(1);
    (0..n).map(move |i| {
        let end = if i + 1 == n {
            line.len()
        } else {
            (i + 1) * max
        };
        (i + 1 < n, &line[i * max..end])
    })
}

/// (stream, partial, message) of one entry, its newline already removed.
pub fn parse(line: &[u8]) -> Option<(&str, bool, &[u8])> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let _time = parts.next()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    Some((stream, tag == b"P", parts.next().unwrap_or(b"")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        let t = UNIX_EPOCH + Duration::new(1_767_225_600, 5);
        assert_eq!(rfc3339_nano(t), "2026-01-01T00:00:00.000000005Z");
        let t = UNIX_EPOCH + Duration::new(951_825_599, 0);
        assert_eq!(rfc3339_nano(t), "2000-02-29T11:59:59.000000000Z");
        let p: Vec<(bool, usize)> = pieces(&[b'x'; 10], 4).map(|(p, m)| (p, m.len())).collect();
        assert_eq!(p, [(true, 4), (true, 4), (false, 2)]);
        let p: Vec<(bool, usize)> = pieces(&[b'x'; 8], 4).map(|(p, m)| (p, m.len())).collect();
        assert_eq!(p, [(true, 4), (false, 4)]);
        let p: Vec<(bool, usize)> = pieces(b"", 4).map(|(p, m)| (p, m.len())).collect();
        assert_eq!(p, [(false, 0)]);
        assert_eq!(
            entry(UNIX_EPOCH, "stdout", false, b"hi"),
            b"1970-01-01T00:00:00.000000000Z stdout F hi\n"
        );
    }
}
