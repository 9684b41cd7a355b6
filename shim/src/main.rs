//! `hull-shim`: the small program `hull cri` leaves running beside every pod.
//!
//! - `hull-shim pause ...`: a pod's pause process (holds its UTS/IPC namespaces).
//! - `hull-shim monitor ...`: a container's monitor (conmon's role) once the container
//!   exists: the init's parent, writes the CRI log, records the exit status.
//!
//! These processes live as long as their pods, one or two per pod, so they are a
//! separate binary that links std and libc only: the whole `hull` binary (tokio, tonic,
//! kube, ...) re-exec'd for them cost ~9 MiB of RSS each. The container itself is
//! still created by the `hull` binary (`hull cri --internal-monitor`), which then execs
//! this program in its place, keeping its pid, its children and its pipes.
//! See docs/cri.md ("hull-shim").

#[allow(dead_code)]
#[path = "../../agent/src/cri/logfmt.rs"]
mod logfmt;
mod monitor;
mod pause;

use std::process::ExitCode;

/// `--flag value` pairs and bare `--flag`s, in order (repeatable flags keep every value).
pub struct Args(Vec<(String, Option<String>)>);

impl Args {
    fn parse(raw: impl Iterator<Item = String>, with_value: &[&str]) -> Result<Args, String> {
        let mut out = Vec::new();
        let mut raw = raw.peekable();
        while let Some(a) = raw.next() {
            let Some(name) = a.strip_prefix("--") else {
                return Err(format!("unexpected argument {a:?}"));
            };
            if with_value.contains(&name) {
                let v = raw
                    .next()
                    .ok_or_else(|| format!("--{name} needs a value"))?;
                out.push((name.to_string(), Some(v)));
            } else {
                out.push((name.to_string(), None));
            }
        }
        Ok(Args(out))
    }
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }
    pub fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .filter_map(|(_, v)| v.as_deref())
    }
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
    pub fn fd(&self, name: &str) -> Result<i32, String> {
        let v = self.get(name).ok_or_else(|| format!("--{name} missing"))?;
        v.parse()
            .ok()
            .filter(|fd: &i32| *fd >= 0)
            .ok_or_else(|| format!("--{name}: not a file descriptor: {v:?}"))
    }
}

/// Drops this program's startup code from its page tables, once it is set up.
///
/// Why: the kernel maps a file's text 16 pages around every page fault (fault-around),
/// so starting up (std's runtime, glibc's static start, argument parsing, setup) left
/// ~0.9 MiB of the binary's text resident in every pause and monitor, where their
/// loops need a fraction of it. MADV_DONTNEED on the read-only mappings of our own
/// executable unmaps those pages (they stay in the page cache); what the loop runs is
/// faulted back in as it runs. Only mappings never written are touched: the RELRO
/// segment holds relocated data (its private copies would be lost) and is skipped, as
/// is anything with anonymous pages or write permission.
pub fn shed_startup_text() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let here = shed_startup_text as *const () as usize;
    // (start, end, writable, dev:inode, anonymous KiB) of every mapping.
    let mut maps: Vec<(usize, usize, bool, String, u64)> = Vec::new();
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            let perms = f.next().unwrap_or("");
            let _offset = f.next();
            let dev = f.next().unwrap_or("");
            let inode = f.next().unwrap_or("0");
            maps.push((a, b, perms.contains('w'), format!("{dev}:{inode}"), 0));
        } else if first == "Anonymous:"
            && let Some(m) = maps.last_mut()
        {
            m.4 = f.next().and_then(|v| v.parse().ok()).unwrap_or(1);
        }
    }
    let Some(ours) = maps
        .iter()
        .find(|m| (m.0..m.1).contains(&here))
        .map(|m| m.3.clone())
        .filter(|id| !id.ends_with(":0"))
    else {
        return;
    };
    for (start, end, writable, id, anon) in maps {
        if id == ours && !writable && anon == 0 {
            // SAFETY: read-only, never-written file mappings of our own executable:
            // dropping their pages only makes the next access fault them back in.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
    }
}

fn main() -> ExitCode {
    // SAFETY: PR_SET_NAME with a NUL-terminated name; `ps` and the bench see "hull-shim"
    // whatever path the binary was exec'd through (an fd of a sealed view).
    unsafe { libc::prctl(libc::PR_SET_NAME, c"hull-shim".as_ptr(), 0, 0, 0) };
    let mut argv = std::env::args().skip(1);
    let code = match argv.next().as_deref() {
        Some("pause") => pause::main(argv),
        Some("monitor") => monitor::main(argv),
        _ => {
            eprintln!("usage: hull-shim pause|monitor ... (started by `hull cri`, not by hand)");
            2
        }
    };
    ExitCode::from(code)
}
