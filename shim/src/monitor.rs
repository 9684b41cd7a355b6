//! `hull-shim monitor --init PID --stdout-fd N --stderr-fd N --report-fd N --exit PATH
//! [--log PATH [--log-cap BYTES]] [--oom-file PATH] [--tty-fd N [--stdin-fd N]
//! [--ctl-fd N]] [--stdin-sink-fd N --stdin-fd N]`: what `hull cri --internal-monitor` execs into once the container
//! exists, keeping its pid (so the init stays its child and it stays the init's
//! subreaper) and the read ends of the container's stdout/stderr pipes — or, for a
//! container with a terminal, the pty master, the stdin FIFO it copies to the master
//! and the `ctl` FIFO whose `resize W H` lines set the terminal's size (conmon's way);
//! for a stdinOnce container, the stdin FIFO (read-only) and the write end of the
//! container's stdin pipe, closed when the FIFO's first writer is gone.
//!
//! One thread, one poll(2) over the pipes (and the terminal's fds) and a signalfd
//! (SIGCHLD: reap; SIGUSR1: reopen the log, for ReopenContainerLog). Each line goes to the log in the CRI format;
//! when the init exits, what is still in the pipes is written (2 s at most: a daemon the
//! container left behind may hold them open for ever), then `exit.json`: the runc-style
//! status (code, or 128 + signal), the time, and whether the cgroup saw an OOM kill.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{Args, logfmt};

/// Lines longer than this are split into `P` entries (containerd's buffer size).
const MAX_LINE: usize = 16 * 1024;
/// How long a piece of a line waits for the rest before it is logged as a `P` entry.
const PARTIAL_IDLE_MS: i32 = 50;
/// Index in `streams` of a terminal's output (after the two pipes).
const TTY_STREAM: usize = 2;
/// How long output still in the pipes is drained after the init exits.
const DRAIN: Duration = Duration::from_secs(2);

struct Stream {
    name: &'static str,
    src: Option<File>,
    buf: Vec<u8>,
}

struct Log {
    path: Option<PathBuf>,
    file: Option<File>,
    /// Past this size the log starts over (a private log nobody rotates).
    cap: Option<u64>,
}

impl Log {
    fn reopen(&mut self) {
        self.file = self
            .path
            .as_deref()
            .and_then(|p| OpenOptions::new().create(true).append(true).open(p).ok());
    }
    fn write(&mut self, stream: &str, partial: bool, msg: &[u8]) {
        if self.path.is_some() && self.file.is_none() {
            self.reopen();
        }
        if let Some(f) = self.file.as_mut() {
            let _ = f.write_all(&logfmt::entry(SystemTime::now(), stream, partial, msg));
            if let Some(cap) = self.cap
                && f.metadata().is_ok_and(|m| m.len() > cap)
            {
                let _ = f.set_len(0);
            }
        }
    }
}

impl Stream {
    /// Reads what is there; false once the pipe is closed.
    fn read(&mut self, log: &mut Log) -> bool {
        let Some(src) = self.src.as_mut() else {
            return false;
        };
        let mut chunk = [0u8; 8192];
        let n = match src.read(&mut chunk) {
            Ok(0) => 0,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) =>
            {
                return true;
            }
            // EIO from a pty master: every holder of the slave is gone.
            Err(_) => 0,
        };
        if n == 0 {
            self.src = None;
            if !self.buf.is_empty() {
                log.write(self.name, false, &self.buf);
                self.buf.clear();
            }
            return false;
        }
        self.buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            for (partial, piece) in logfmt::pieces(&self.buf[start..start + pos], MAX_LINE) {
                log.write(self.name, partial, piece);
            }
            start += pos + 1;
        }
        while self.buf.len() - start >= MAX_LINE {
            log.write(self.name, true, &self.buf[start..start + MAX_LINE]);
            start += MAX_LINE;
        }
        self.buf.drain(..start);
        true
    }
}

/// A container's terminal: the master (its output is the `stdout` stream), what the
/// stdin FIFO brought that the master has not taken yet, and the resize FIFO.
struct Term {
    master: File,
    stdin: Option<File>,
    pending: Vec<u8>,
    ctl: Option<File>,
    ctl_buf: Vec<u8>,
    /// `master` is the write end of a stdinOnce container's stdin pipe, closed (the
    /// container's EOF) once the FIFO's first writer is gone.
    once: bool,
}

impl Term {
    /// Moves what the stdin FIFO holds to the master, without ever blocking on it (a
    /// container that does not read its terminal must not stall its logs).
    fn feed(&mut self) {
        if self.pending.is_empty()
            && let Some(src) = self.stdin.as_mut()
        {
            let mut b = [0u8; 4096];
            match src.read(&mut b) {
                Ok(0) => self.stdin = None,
                Ok(n) => self.pending.extend_from_slice(&b[..n]),
                Err(_) => {}
            }
        }
        while !self.pending.is_empty() {
            match (&self.master).write(&self.pending) {
                Ok(0) => break,
                Ok(n) => drop(self.pending.drain(..n)),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.pending.clear();
                    self.stdin = None;
                }
            }
        }
    }

    /// Applies complete `resize WIDTH HEIGHT` lines of the ctl FIFO (TIOCSWINSZ).
    fn control(&mut self) {
        let Some(ctl) = self.ctl.as_mut() else { return };
        let mut b = [0u8; 512];
        match ctl.read(&mut b) {
            Ok(0) => self.ctl = None,
            Ok(n) => self.ctl_buf.extend_from_slice(&b[..n]),
            Err(_) => return,
        }
        while let Some(pos) = self.ctl_buf.iter().position(|&c| c == b'\n') {
            let line: Vec<u8> = self.ctl_buf.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line);
            let mut f = text.split_whitespace();
            if f.next() != Some("resize") {
                continue;
            }
            let (Some(w), Some(h)) = (
                f.next().and_then(|v| v.parse::<u16>().ok()),
                f.next().and_then(|v| v.parse::<u16>().ok()),
            ) else {
                continue;
            };
            let ws = libc::winsize {
                ws_row: h,
                ws_col: w,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ with a valid winsize on the master we hold.
            unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        }
        if self.ctl_buf.len() > 4096 {
            self.ctl_buf.clear();
        }
    }
}

fn owned(fd: i32) -> File {
    // SAFETY: the fd was handed to us by the exec'ing monitor and nothing else owns it.
    let f = unsafe { File::from(OwnedFd::from_raw_fd(fd)) };
    // SAFETY: setting CLOEXEC on our own fd.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    f
}

/// A signalfd for SIGCHLD and SIGUSR1, blocked so they are only seen through it.
fn signals() -> Result<File, String> {
    // SAFETY: sigset manipulation on a local, then sigprocmask/signalfd; results checked.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(format!("sigprocmask: {}", std::io::Error::last_os_error()));
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(format!("signalfd: {}", std::io::Error::last_os_error()));
        }
        Ok(File::from(OwnedFd::from_raw_fd(fd)))
    }
}

/// Drains the signalfd; whether SIGUSR1 was among what it held.
fn take_signals(sfd: &mut File) -> bool {
    let mut usr1 = false;
    let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
    while let Ok(n) = sfd.read(&mut info) {
        if n < info.len() {
            break;
        }
        let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
        usr1 |= signo == libc::SIGUSR1 as u32;
    }
    usr1
}

/// Reaps every exited child (we are their subreaper); the init's status if it is one.
fn reap(init: i32) -> Option<i32> {
    let mut code = None;
    loop {
        let mut status = 0;
        // SAFETY: waitpid into a local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            // ECHILD with the init never seen: it is not ours; nothing will tell us more.
            if pid < 0 && code.is_none() && !alive(init) {
                return Some(255);
            }
            return code;
        }
        if pid == init {
            if libc::WIFEXITED(status) {
                code = Some(libc::WEXITSTATUS(status));
            } else if libc::WIFSIGNALED(status) {
                code = Some(128 + libc::WTERMSIG(status));
            }
        }
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// `oom_kill N` of the cgroup's memory.events (v2) or memory.oom_control (v1).
fn oom_killed(file: Option<&str>) -> bool {
    let Some(text) = file.and_then(|f| std::fs::read_to_string(f).ok()) else {
        return false;
    };
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .any(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
}

/// exit.json, the shape of `records::ExitRecord`, written whole by rename.
fn write_exit(path: &Path, code: i32, oom: bool) -> std::io::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let json = format!(
        "{{\n  \"exit_code\": {code},\n  \"finished_at\": {now},\n  \"oom_killed\": {oom}\n}}"
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

pub fn main(argv: impl Iterator<Item = String>) -> u8 {
    let with_value = [
        "init",
        "stdout-fd",
        "stderr-fd",
        "report-fd",
        "exit",
        "log",
        "log-cap",
        "oom-file",
        "tty-fd",
        "stdin-fd",
        "ctl-fd",
        "stdin-sink-fd",
    ];
    let args = match Args::parse(argv, &with_value) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hull-shim monitor: {e}");
            return 2;
        }
    };
    // The report fd first, so every later failure reaches the server.
    let mut report = match args.fd("report-fd") {
        Ok(fd) => owned(fd),
        Err(e) => {
            eprintln!("hull-shim monitor: {e}");
            return 2;
        }
    };
    match run(&args, &mut report) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(report, "error: {e}");
            1
        }
    }
}

fn run(args: &Args, report: &mut File) -> Result<(), String> {
    let init: i32 = args
        .get("init")
        .and_then(|p| p.parse().ok())
        .filter(|p| *p > 0)
        .ok_or("--init: not a pid")?;
    let exit_path = PathBuf::from(args.get("exit").ok_or("--exit missing")?);
    let mut streams = vec![
        Stream {
            name: "stdout",
            src: Some(owned(args.fd("stdout-fd")?)),
            buf: Vec::new(),
        },
        Stream {
            name: "stderr",
            src: Some(owned(args.fd("stderr-fd")?)),
            buf: Vec::new(),
        },
    ];
    // A terminal: its output is the container's stdout (the pipes then close at once).
    let fifo = |flag: &str| -> Result<Option<File>, String> {
        Ok(match args.get(flag) {
            Some(_) => Some(owned(args.fd(flag)?)),
            None => None,
        })
    };
    let once = args.has("stdin-sink-fd");
    let mut term = match args.get("tty-fd").or(args.get("stdin-sink-fd")) {
        Some(_) if once => {
            let sink = owned(args.fd("stdin-sink-fd")?);
            // SAFETY: O_NONBLOCK on the pipe's write end we hold.
            unsafe {
                let fl = libc::fcntl(sink.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(sink.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
            }
            Some(Term {
                master: sink,
                stdin: fifo("stdin-fd")?,
                pending: Vec::new(),
                ctl: None,
                ctl_buf: Vec::new(),
                once: true,
            })
        }
        Some(_) => {
            let master = owned(args.fd("tty-fd")?);
            // SAFETY: O_NONBLOCK on our master (shared with the stream's dup below).
            unsafe {
                let fl = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(master.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
            }
            let out = master
                .try_clone()
                .map_err(|e| format!("dup terminal: {e}"))?;
            streams.push(Stream {
                name: "stdout",
                src: Some(out),
                buf: Vec::new(),
            });
            Some(Term {
                master,
                stdin: fifo("stdin-fd")?,
                pending: Vec::new(),
                ctl: fifo("ctl-fd")?,
                ctl_buf: Vec::new(),
                once: false,
            })
        }
        None => None,
    };
    // SAFETY: prctl/signal with plain arguments. Subreaper survives execve; set again
    // in case this program was started some other way.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let mut sfd = signals()?;
    let mut log = Log {
        path: args.get("log").map(PathBuf::from),
        file: None,
        cap: args.get("log-cap").and_then(|c| c.parse().ok()),
    };
    log.reopen();
    // Signals are routed to the signalfd now, so the server may send SIGUSR1.
    let _ = writeln!(report, "ok {init}");
    // Closing the report lets the server's CreateContainer return.
    // SAFETY: replacing the report fd with /dev/null.
    if let Ok(null) = File::open("/dev/null") {
        unsafe { libc::dup2(null.as_raw_fd(), report.as_raw_fd()) };
    }
    let mut code = reap(init);
    crate::shed_startup_text();
    let mut drain_until: Option<Instant> = None;
    loop {
        if code.is_some() {
            let until = *drain_until.get_or_insert_with(|| Instant::now() + DRAIN);
            if streams.iter().all(|s| s.src.is_none()) || Instant::now() >= until {
                break;
            }
        }
        let mut pfds: Vec<libc::pollfd> = streams
            .iter()
            .filter_map(|s| s.src.as_ref())
            .map(|f| f.as_raw_fd())
            .chain([sfd.as_raw_fd()])
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if let Some(t) = &term {
            let (input, events) = match (&t.stdin, t.pending.is_empty()) {
                (Some(f), true) => (Some(f.as_raw_fd()), libc::POLLIN),
                (_, false) => (Some(t.master.as_raw_fd()), libc::POLLOUT),
                (None, true) => (None, 0),
            };
            // The ctl FIFO first: a resize sent before some input is applied before
            // that input reaches the terminal (fds are handled in this order).
            let ctl = t.ctl.as_ref().map(|c| (c.as_raw_fd(), libc::POLLIN));
            for (fd, events) in ctl.into_iter().chain(input.map(|fd| (fd, events))) {
                pfds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
            }
        }
        let mut timeout = match drain_until {
            Some(u) => u.saturating_duration_since(Instant::now()).as_millis() as i32,
            None => -1,
        };
        let pending = streams.iter().any(|s| !s.buf.is_empty());
        if pending && !(0..=PARTIAL_IDLE_MS).contains(&timeout) {
            timeout = PARTIAL_IDLE_MS;
        }
        // SAFETY: pfds is a live array of pollfd of the given length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        if n == 0 && pending {
            // Output without its newline (a prompt, `echo -n`): a `P` entry once the
            // pipe is idle, so Attach (which follows the log) shows it, as conmon does.
            for s in streams.iter_mut().filter(|s| !s.buf.is_empty()) {
                log.write(s.name, true, &s.buf);
                s.buf.clear();
            }
        }
        for p in pfds.iter().filter(|p| p.revents != 0) {
            if p.fd == sfd.as_raw_fd() {
                if take_signals(&mut sfd) {
                    log.reopen();
                }
                if code.is_none() {
                    code = reap(init);
                }
                continue;
            }
            if let Some(t) = term.as_mut() {
                if t.ctl.as_ref().is_some_and(|c| c.as_raw_fd() == p.fd) {
                    t.control();
                    continue;
                }
                if p.events == libc::POLLOUT
                    || t.stdin.as_ref().is_some_and(|f| f.as_raw_fd() == p.fd)
                {
                    t.feed();
                    continue;
                }
            }
            if let Some(s) = streams
                .iter_mut()
                .find(|s| s.src.as_ref().is_some_and(|f| f.as_raw_fd() == p.fd))
            {
                s.read(&mut log);
            }
            if term.is_some() && streams.get(TTY_STREAM).is_some_and(|s| s.src.is_none()) {
                // Every holder of the slave is gone: nothing more to feed or resize.
                term = None;
            }
        }
        if term
            .as_ref()
            .is_some_and(|t| t.once && t.stdin.is_none() && t.pending.is_empty())
        {
            // stdinOnce: the first attach closed its stdin; closing the pipe's write
            // end is the container's EOF.
            term = None;
        }
    }
    // A pipe something still holds open may end in a partial line: keep it too.
    for s in streams.iter_mut().filter(|s| !s.buf.is_empty()) {
        log.write(s.name, false, &s.buf);
    }
    let code = code.unwrap_or(255);
    write_exit(&exit_path, code, oom_killed(args.get("oom-file")))
        .map_err(|e| format!("write {}: {e}", exit_path.display()))
}
