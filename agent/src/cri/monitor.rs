//! The per-container monitor (conmon's role): the `hull` binary re-exec'd as
//! `hull cri --internal-monitor SPEC`, in its own session so it outlives the server.
//! With hull-shim (`shim`), this process only creates the container and then execs
//! `hull-shim monitor`, which does the rest below in a small process; without it, the
//! rest runs here.
//!
//! It creates the container through `hull_runtime` with its stdout/stderr on pipes it
//! holds, becomes the subreaper that inherits the init, writes every line to the CRI
//! log, and when the init exits records `exit.json` (exit code, time, whether the
//! cgroup saw an OOM kill). SIGUSR1 reopens the log (ReopenContainerLog).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::logfmt;
use super::records::{ExitRecord, now_ns, save_json};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorSpec {
    pub oci_root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub log_path: Option<PathBuf>,
    /// The log starts over (truncated) once past this size (a private log nobody
    /// rotates, for containers without a log path).
    #[serde(default)]
    pub log_cap: Option<u64>,
    pub exit_path: PathBuf,
    pub cgroups_path: Option<String>,
    /// For containers with `stdin`: a FIFO that becomes the init's stdin, which Attach
    /// writes to.
    #[serde(default)]
    pub stdin_fifo: Option<PathBuf>,
    /// `stdinOnce` (without a terminal): the init's stdin is a pipe the monitor feeds
    /// from the FIFO and closes when the first attach closes its stdin.
    #[serde(default)]
    pub stdin_once: bool,
    /// An inherited fd of `hull-shim` (`shim::exe_fd`): once the container exists, the
    /// monitor execs it to do the rest (logs, reaping, exit.json) in a small process.
    #[serde(default)]
    pub shim_fd: Option<i32>,
    /// When set, `shim_fd` is an fd of this process (the server), not inherited: the
    /// monitor opens `/proc/PID/fd/N` itself, so the server can spawn it with
    /// posix_spawn (a vfork) rather than fork its large, many-threaded self to clear
    /// close-on-exec in the child.
    #[serde(default)]
    pub shim_owner: Option<i32>,
}

static REOPEN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    REOPEN.store(true, Ordering::SeqCst);
}

/// Lines longer than this are split into `P` entries (containerd's buffer size).
const MAX_LINE: usize = 16 * 1024;

/// The resize FIFO of a container with a terminal, in its record dir: Attach writes
/// `resize WIDTH HEIGHT` lines to it and the monitor sets the pty's size (conmon's
/// "ctl" FIFO).
pub const CTL_FIFO: &str = "ctl";

/// Whether the bundle's `process.terminal` is set (the container's tty).
fn terminal(bundle: &Path) -> bool {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["process"]["terminal"] == serde_json::Value::Bool(true))
}

/// A container's terminal as its monitor holds it: the pty master (output to the log,
/// input from the stdin FIFO) and the resize FIFO.
struct Terminal {
    master: File,
    stdin: Option<File>,
    ctl: Option<File>,
    /// Not a terminal: `master` is the write end of a stdinOnce container's stdin pipe.
    once: bool,
}

impl Terminal {
    /// The in-`hull` monitor's half (without hull-shim): a thread copies the stdin FIFO
    /// to the master, another applies resize lines.
    fn serve(self) {
        let Terminal {
            master, stdin, ctl, ..
        } = self;
        let master = Arc::new(master);
        if let Some(mut src) = stdin {
            let m = master.clone();
            std::thread::spawn(move || {
                let mut b = [0u8; 4096];
                // poll first: a FIFO without a writer reads as EOF, but only polls as
                // one once a writer has come and gone.
                let mut p = libc::pollfd {
                    fd: src.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd of ours.
                while unsafe { libc::poll(&mut p, 1, -1) } >= 0 {
                    match src.read(&mut b) {
                        Ok(0) => break,
                        Ok(n) if (&*m).write_all(&b[..n]).is_err() => break,
                        _ => {}
                    }
                }
                // stdinOnce: dropping the last copy of the pipe's write end is the EOF.
                drop(m);
            });
        }
        if let Some(ctl) = ctl {
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(ctl).lines() {
                    let Ok(line) = line else { break };
                    if let Some((w, h)) = parse_resize(&line) {
                        super::exec::resize(&*master, w, h);
                    }
                }
            });
        }
    }
}

/// `resize WIDTH HEIGHT`, a line of the ctl FIFO.
pub fn parse_resize(line: &str) -> Option<(u16, u16)> {
    let mut f = line.split_whitespace();
    if f.next() != Some("resize") {
        return None;
    }
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

struct Log {
    path: Option<PathBuf>,
    file: Mutex<Option<File>>,
    cap: Option<u64>,
}

impl Log {
    fn open(path: &Path) -> Option<File> {
        OpenOptions::new().create(true).append(true).open(path).ok()
    }
    fn write(&self, stream: &str, partial: bool, msg: &[u8]) {
        let Some(path) = &self.path else { return };
        let Ok(mut f) = self.file.lock() else { return };
        if REOPEN.swap(false, Ordering::SeqCst) || f.is_none() {
            *f = Log::open(path);
        }
        if let Some(file) = f.as_mut() {
            let _ = file.write_all(&logfmt::entry(SystemTime::now(), stream, partial, msg));
            if let Some(cap) = self.cap
                && file.metadata().is_ok_and(|m| m.len() > cap)
            {
                let _ = file.set_len(0);
            }
        }
    }
}

fn pump(mut src: File, stream: &'static str, log: Arc<Log>) {
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_LINE);
    let mut chunk = [0u8; 8192];
    loop {
        let n = match src.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            for (partial, piece) in logfmt::pieces(&buf[..pos], MAX_LINE) {
                log.write(stream, partial, piece);
            }
            buf.drain(..=pos);
        }
        while buf.len() >= MAX_LINE {
            log.write(stream, true, &buf[..MAX_LINE]);
            buf.drain(..MAX_LINE);
        }
    }
    if !buf.is_empty() {
        log.write(stream, false, &buf);
    }
}

fn pipe() -> std::io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and ours.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// dup2 that clears CLOEXEC on the target (the init must inherit it).
fn dup_onto(src: &impl AsRawFd, target: i32) -> std::io::Result<()> {
    // SAFETY: dup2 onto one of our stdio fds.
    if unsafe { libc::dup2(src.as_raw_fd(), target) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The monitor's main; stdout is the report pipe to the server ("ok PID" or "error: ...").
pub fn main(spec_json: &str) -> i32 {
    // Keep the report channel on a private fd: fds 0-2 become the container's stdio.
    // SAFETY: dup of our own stdout.
    let report_fd = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    if report_fd < 0 {
        return 2;
    }
    // SAFETY: fresh fd from fcntl.
    let mut report = unsafe { File::from(OwnedFd::from_raw_fd(report_fd)) };
    match run(spec_json, &mut report) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(report, "error: {e}");
            1
        }
    }
}

fn run(spec_json: &str, report: &mut File) -> Result<(), String> {
    let spec: MonitorSpec =
        serde_json::from_str(spec_json).map_err(|e| format!("monitor spec: {e}"))?;
    let shim_fd = match (spec.shim_fd, spec.shim_owner) {
        (Some(fd), Some(owner)) => reopen_shim(owner, fd),
        (Some(fd), None) => {
            // The container's init must not inherit it.
            // SAFETY: setting close-on-exec on an fd the server gave us.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            Some(fd)
        }
        (None, _) => None,
    };
    // SAFETY: prctl/signal with plain arguments.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let (out_r, out_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let null = File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    let tty = terminal(&spec.bundle);
    let once = spec.stdin_once && !tty && spec.stdin_fifo.is_some();
    // stdinOnce: the FIFO is opened read-only, so that it reports EOF once its first
    // writer (an attach) is gone, and the init reads a pipe the monitor closes then.
    let stdin_fifo = match &spec.stdin_fifo {
        Some(p) if once => Some(open_fifo_reader(p)?),
        Some(p) => Some(open_fifo(p)?),
        None => None,
    };
    let once_pipe = once
        .then(|| pipe().map_err(|e| format!("pipe: {e}")))
        .transpose()?;
    // With a terminal the init's stdio is the pty's slave: the FIFO feeds the master.
    let stdin = match (&stdin_fifo, tty, &once_pipe) {
        (_, _, Some((r, _))) => r.try_clone(),
        (Some(f), false, None) => f.try_clone(),
        _ => null.try_clone(),
    }
    .map_err(|e| format!("stdin: {e}"))?;
    // The init sends the pty's master over it (close-on-exec, as std makes them).
    let console = tty
        .then(|| UnixStream::pair().map_err(|e| format!("console socketpair: {e}")))
        .transpose()?;
    // The resize channel of a terminal (Attach writes `resize W H` lines to it).
    let ctl = tty
        .then(|| open_fifo(&spec.exit_path.with_file_name(CTL_FIFO)))
        .transpose()?;
    dup_onto(&stdin, 0)
        .and_then(|_| dup_onto(&out_w, 1))
        .and_then(|_| dup_onto(&err_w, 2))
        .map_err(|e| format!("dup2: {e}"))?;
    drop((out_w, err_w));
    if let Some(p) = &spec.log_path
        && let Some(d) = p.parent()
    {
        let _ = std::fs::create_dir_all(d);
    }
    let created = hull_runtime::container::create(
        &spec.oci_root,
        &spec.id,
        &spec.bundle,
        &hull_runtime::container::CreateOptions {
            console_fd: console.as_ref().map(|(_, theirs)| theirs.as_raw_fd()),
            ..Default::default()
        },
    );
    // Our copies of the write ends go, so the readers see EOF when the container's do.
    let _ = dup_onto(&null, 0);
    drop(stdin);
    let _ = dup_onto(&null, 1);
    let _ = dup_onto(&null, 2);
    let st = created.map_err(|e| e.to_string())?;
    // The init sent the master during create; it sits in our end of the pair.
    let master = match &console {
        Some((mine, _)) => Some(File::from(
            hull_runtime::sync::recv_fd(mine.as_fd())
                .map_err(|e| format!("receive the terminal: {e}"))?,
        )),
        None => None,
    };
    drop(console);
    let term = match (master, once_pipe) {
        (Some(master), _) => Some(Terminal {
            master,
            stdin: stdin_fifo,
            ctl,
            once: false,
        }),
        // The pipe's write end plays the master's part, closed at the FIFO's EOF.
        (None, Some((_, w))) => Some(Terminal {
            master: w,
            stdin: stdin_fifo,
            ctl: None,
            once: true,
        }),
        (None, None) => None,
    };
    if let Some(fd) = shim_fd {
        // Only returns if the exec failed: then this process goes on as the monitor.
        exec_shim(fd, &spec, st.pid, [&out_r, &err_r, &*report], term.as_ref());
    }
    let log = Arc::new(Log {
        file: Mutex::new(spec.log_path.as_deref().and_then(Log::open)),
        path: spec.log_path.clone(),
        cap: spec.log_cap,
    });
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mut sources = vec![(out_r, "stdout"), (err_r, "stderr")];
    if let Some(t) = term {
        if !t.once {
            let out = t.master.try_clone().map_err(|e| format!("terminal: {e}"))?;
            // The pipes are not the init's stdio then: they close at once.
            sources.push((out, "stdout"));
        }
        t.serve();
    }
    for (src, name) in sources {
        let (log, tx) = (log.clone(), done_tx.clone());
        std::thread::spawn(move || {
            pump(src, name, log);
            let _ = tx.send(());
        });
    }
    let _ = writeln!(report, "ok {}", st.pid);
    // Closing the report lets the server's CreateContainer return.
    // SAFETY: replacing the report fd with /dev/null.
    unsafe { libc::dup2(null.as_raw_fd(), report.as_raw_fd()) };
    let code = wait_init(st.pid);
    // A hostPID container's daemons may hold the pipes open for ever; do not wait on them.
    for _ in 0..3 {
        let _ = done_rx.recv_timeout(Duration::from_secs(2));
    }
    let oom_killed =
        hull_runtime::cgroups::CgroupManager::new(spec.cgroups_path.as_deref(), &spec.id)
            .ok()
            .and_then(|cg| cg.oom_kill_count().ok())
            .is_some_and(|n| n > 0);
    save_json(
        &spec.exit_path,
        &ExitRecord {
            exit_code: code,
            finished_at: now_ns(),
            oom_killed,
        },
    )
    .map_err(|e| e.to_string())
}

/// Our own close-on-exec fd of the server's (`owner`'s) hull-shim fd `fd`, or None
/// (then this process is the monitor itself). The owner must still be our parent: if
/// it died, its pid could name another process by now.
fn reopen_shim(owner: i32, fd: i32) -> Option<i32> {
    let f = File::open(format!("/proc/{owner}/fd/{fd}")).ok()?;
    // SAFETY: getppid cannot fail.
    (unsafe { libc::getppid() } == owner).then(|| std::os::fd::IntoRawFd::into_raw_fd(f))
}

/// Replaces this process with `hull-shim monitor`, handing over the pipes' read ends
/// and the report fd (same numbers, close-on-exec cleared). The pid stays, so the
/// init stays our child and we its subreaper; returns only if the exec failed.
fn exec_shim(
    shim_fd: i32,
    spec: &MonitorSpec,
    init: i32,
    fds: [&File; 3],
    term: Option<&Terminal>,
) {
    let [out, err, report] = fds.map(|f| f.as_raw_fd());
    let mut handed = vec![out, err, report];
    let oom_file =
        hull_runtime::cgroups::CgroupManager::new(spec.cgroups_path.as_deref(), &spec.id)
            .ok()
            .and_then(|cg| {
                let p = cg.paths();
                p.get("memory")
                    .map(|d| d.join("memory.oom_control"))
                    .or_else(|| p.get("unified").map(|d| d.join("memory.events")))
            });
    let mut args: Vec<std::ffi::OsString> = vec![
        "hull-shim".into(),
        "monitor".into(),
        "--init".into(),
        init.to_string().into(),
        "--stdout-fd".into(),
        out.to_string().into(),
        "--stderr-fd".into(),
        err.to_string().into(),
        "--report-fd".into(),
        report.to_string().into(),
        "--exit".into(),
        spec.exit_path.clone().into(),
    ];
    if let Some(l) = &spec.log_path {
        args.extend(["--log".into(), l.clone().into()]);
    }
    if let Some(c) = spec.log_cap {
        args.extend(["--log-cap".into(), c.to_string().into()]);
    }
    if let Some(o) = oom_file {
        args.extend(["--oom-file".into(), o.into()]);
    }
    if let Some(t) = term {
        let sink = if t.once {
            "--stdin-sink-fd"
        } else {
            "--tty-fd"
        };
        let fds = [
            (sink, Some(&t.master)),
            ("--stdin-fd", t.stdin.as_ref()),
            ("--ctl-fd", t.ctl.as_ref()),
        ];
        for (flag, f) in fds {
            if let Some(f) = f {
                args.extend([flag.into(), f.as_raw_fd().to_string().into()]);
                handed.push(f.as_raw_fd());
            }
        }
    }
    let Ok(argv) = args
        .into_iter()
        .map(|a| std::ffi::CString::new(std::os::unix::ffi::OsStringExt::into_vec(a)))
        .collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: clearing close-on-exec on our own fds, then fexecve with NULL-terminated
    // arrays of C strings that outlive the call.
    unsafe {
        for &fd in &handed {
            libc::fcntl(fd, libc::F_SETFD, 0);
        }
        libc::fexecve(shim_fd, argv_p.as_ptr(), envp.as_ptr());
        for &fd in &handed {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// The stdin FIFO, opened read-write so neither side blocks on open and the init
/// does not see EOF between two attaches.
fn open_fifo(p: &Path) -> Result<File, String> {
    let _ = std::fs::remove_file(p);
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| format!("mkfifo {}: {e}", p.display()))?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .map_err(|e| format!("open {}: {e}", p.display()))
}

/// The stdin FIFO of a stdinOnce container, opened read-only without blocking: it
/// polls as readable with data and as hung up once its first writer is gone.
fn open_fifo_reader(p: &Path) -> Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(p);
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| format!("mkfifo {}: {e}", p.display()))?;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
        .map_err(|e| format!("open {}: {e}", p.display()))
}

/// Reaps children (we are their subreaper) until the init is gone; its runc-style status.
fn wait_init(init: i32) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid into a local.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return 255;
        }
        if pid == init {
            if libc::WIFEXITED(status) {
                return libc::WEXITSTATUS(status);
            }
            if libc::WIFSIGNALED(status) {
                return 128 + libc::WTERMSIG(status);
            }
        }
    }
}
