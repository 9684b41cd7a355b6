//! `exec`: another process in a live container. It enters every namespace of the
//! container's init (through /proc/PID/ns/*, opened before forking so a recycled pid
//! cannot substitute other namespaces), its cgroup, and then drops privileges exactly
//! as the init did.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::Process;

use crate::error::{Context, Error, Result};
use crate::explain;
use crate::init::{self, Prepared};
use crate::launch;
use crate::namespaces::{self, JOIN_ORDER};
use crate::state::{self, Status};
use crate::sync::{self, tag};

#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub process: Process,
    /// Return once the process is started instead of waiting for it.
    pub detach: bool,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub preserve_fds: u32,
}

/// Runs `opts.process` in container `id`. Returns its runc-style exit status, or 0 once
/// started when detached.
pub fn exec(root: &Path, id: &str, opts: &ExecOptions) -> Result<i32> {
    let st = crate::container::state(root, id)?;
    if st.status != Status::Running {
        return Err(Error::BadStatus {
            id: id.into(),
            status: st.status.to_string(),
            op: "exec".into(),
        });
    }
    let spec = crate::container::saved_spec(root, id)?;
    let cg = crate::cgroups::CgroupManager::new(st.cgroups_path.as_deref(), id)
        .map_err(|e| Error::Cgroup(e.to_string()))?;
    // Open the namespaces that differ from ours, then confirm the pid is still the init.
    let mut nss: Vec<(CloneFlags, File, String)> = Vec::new();
    for &(kind, name) in JOIN_ORDER {
        let theirs = format!("/proc/{}/ns/{name}", st.pid);
        let ours = format!("/proc/self/ns/{name}");
        let (Ok(a), Ok(b)) = (std::fs::metadata(&theirs), std::fs::metadata(&ours)) else {
            continue;
        };
        if a.ino() != b.ino() || a.dev() != b.dev() {
            nss.push((
                kind,
                File::open(&theirs).ctx(|| format!("open {theirs}"))?,
                theirs,
            ));
        }
    }
    if !state::process_alive(st.pid, st.init_start_time) {
        return Err(Error::BadStatus {
            id: id.into(),
            status: "stopped".into(),
            op: "exec".into(),
        });
    }
    let userns = nss.iter().any(|(k, _, _)| *k == CloneFlags::CLONE_NEWUSER)
        || spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|n| {
                n.iter()
                    .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User)
            });
    let seccomp = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .map(|s| crate::seccomp::compile_in_root(s, root))
        .transpose()
        .map_err(|e| crate::error::config("linux.seccomp", e.to_string()))?;
    let p = &opts.process;
    let console = match (&opts.console_socket, p.terminal() == Some(true)) {
        (Some(s), true) => {
            Some(UnixStream::connect(s).ctx(|| format!("connect console socket {}", s.display()))?)
        }
        (None, true) => {
            return Err(crate::error::config(
                "process.terminal",
                "true requires --console-socket",
            ));
        }
        _ => None,
    };
    let old = launch::block_signals();
    // The exec'd process is our grandchild (a pid namespace applies to children only):
    // adopt it when the intermediate exits so we can wait for it.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let r = exec_blocked(
        &cg,
        &nss,
        p,
        userns,
        seccomp.as_ref(),
        console.as_ref().map(|c| c.as_raw_fd()),
        opts,
    );
    launch::restore_signals(&old);
    r
}

fn exec_blocked(
    cg: &crate::cgroups::CgroupManager,
    nss: &[(CloneFlags, File, String)],
    p: &Process,
    userns: bool,
    seccomp: Option<&crate::seccomp::Filter>,
    console: Option<i32>,
    opts: &ExecOptions,
) -> Result<i32> {
    let (parent, child) = sync::pair()?;
    let pid = match unsafe { nix::unistd::fork() }.ctx(|| "fork".into())? {
        nix::unistd::ForkResult::Child => {
            unsafe { libc::close(parent.raw()) };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                child_main(&child, nss, p, userns, seccomp, console, opts)
            }));
            let msg = match r {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(never)) => match never {},
                Err(_) => "panicked".into(),
            };
            let _ = child.send(tag::ERROR, msg.as_bytes());
            unsafe { libc::_exit(1) }
        }
        nix::unistd::ForkResult::Parent { child } => child.as_raw(),
    };
    drop(child);
    let mut guard = launch::Cleanup {
        dir: None,
        cgroup: None,
        pids: vec![pid],
    };
    cg.add_task(pid).map_err(|e| Error::Cgroup(e.to_string()))?;
    parent.send(tag::GO, b"")?;
    // PID comes from the intermediate after its fork, READY from the new process once it
    // is set up; nothing orders the two, and under load READY can come first.
    let (mut target, mut ready) = (None, false);
    while target.is_none() || !ready {
        match parent.recv()? {
            Some((tag::PID, got)) if target.is_none() => {
                let t = i32::from_ne_bytes(
                    got.get(..4)
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| Error::Init("bad pid".into()))?,
                );
                guard.pids.push(t);
                target = Some(t);
            }
            Some((tag::READY, _)) if !ready => ready = true,
            Some((tag::ERROR, m)) => {
                return Err(Error::Init(String::from_utf8_lossy(&m).into_owned()));
            }
            Some((t, _)) => return Err(Error::Init(format!("unexpected message {:?}", t as char))),
            None => return Err(Error::Init("exited during setup".into())),
        }
    }
    let Some(target) = target else {
        return Err(Error::Init("no pid from the intermediate".into()));
    };
    let _ = waitpid(Pid::from_raw(pid), None);
    guard.pids = vec![target];
    match parent.recv()? {
        None => {}
        Some((tag::ERROR, m)) => return Err(Error::Init(String::from_utf8_lossy(&m).into_owned())),
        Some((t, _)) => return Err(Error::Init(format!("unexpected message {:?}", t as char))),
    }
    guard.disarm();
    if let Some(f) = &opts.pid_file {
        launch::write_pid_file(f, target)?;
    }
    if opts.detach {
        return Ok(0);
    }
    launch::wait_forwarding(target)
}

/// The intermediate: enter the namespaces, fork into the pid namespace, report the pid.
fn child_main(
    chan: &sync::Channel,
    nss: &[(CloneFlags, File, String)],
    p: &Process,
    userns: bool,
    seccomp: Option<&crate::seccomp::Filter>,
    console: Option<i32>,
    opts: &ExecOptions,
) -> Result<std::convert::Infallible> {
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    init::reset_signals();
    chan.expect(tag::GO)?;
    for (kind, f, what) in nss {
        namespaces::join_fd(*kind, f, what)?;
    }
    match unsafe { nix::unistd::fork() }.ctx(|| "fork into the container's pid namespace".into())? {
        nix::unistd::ForkResult::Parent { child } => {
            let _ = chan.send(tag::PID, &child.as_raw().to_ne_bytes());
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Child => {}
    }
    if let Some(sock) = console {
        exec_console(sock, p)?;
    }
    let prog = Prepared::new(p)?;
    init::drop_privileges(p, userns, seccomp)?;
    init::enter_cwd(p.cwd())?;
    init::close_fds(opts.preserve_fds as i32)?;
    chan.send(tag::READY, b"")?;
    if p.no_new_privileges() == Some(true)
        && let Some(f) = seccomp
    {
        f.load()
            .map_err(|e| Error::Other(format!("linux.seccomp: {e}")))?;
    }
    explain!("exec in container");
    init::exec(&prog)
}

/// A new terminal for the exec'd process from the container's /dev/ptmx.
fn exec_console(sock: i32, p: &Process) -> Result<()> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .ctx(|| "open /dev/ptmx".into())?;
    nix::pty::grantpt(&master).ctx(|| "grantpt".into())?;
    nix::pty::unlockpt(&master).ctx(|| "unlockpt".into())?;
    let name = nix::pty::ptsname_r(&master).ctx(|| "ptsname".into())?;
    if let Some(sz) = p.console_size() {
        let ws = libc::winsize {
            ws_row: sz.height() as u16,
            ws_col: sz.width() as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| format!("open {name}"))?;
    sync::send_fd(
        unsafe { std::os::fd::BorrowedFd::borrow_raw(sock) },
        master.as_raw_fd(),
        name.as_bytes(),
    )?;
    nix::unistd::setsid().ctx(|| "setsid".into())?;
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "TIOCSCTTY".into());
    }
    for fd in 0..3 {
        unsafe { libc::dup2(slave.as_raw_fd(), fd) };
    }
    Ok(())
}
