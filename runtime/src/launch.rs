//! Starting a container's init: the parent's half of the setup protocol.
//!
//! `clone()` is called directly with the namespace flags (crun's way, no re-exec of the
//! runtime), so the child starts as an in-memory copy of this process and goes straight
//! to [`init::main`]. The parent writes what only it can write (uid/gid maps, cgroup
//! membership, oom_score_adj), runs the runtime-namespace hooks, and records the state.
//! Any failure kills what was started and removes the cgroup and state dir.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::cgroups::{CgroupManager, clone_into};
use crate::error::{Context, Error, Result};
use crate::explain;
use crate::init::{self, InitConfig};
use crate::namespaces::{self, Plan};
use crate::spec::{self, Bundle};
use crate::state::{self, State, Status};
use crate::sync::{self, tag};
use crate::{hooks, security};

/// Options of `create` and `run`.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Unix socket to send the terminal's master fd to (`process.terminal: true`).
    pub console_socket: Option<PathBuf>,
    /// An already connected console socket (one end of a socketpair), for a caller that
    /// receives the master itself: no path to bind, nothing left on disk after a crash.
    /// Used instead of `console_socket` when set; the caller keeps the fd.
    pub console_fd: Option<std::os::fd::RawFd>,
    /// File to write the init's pid to.
    pub pid_file: Option<PathBuf>,
    /// Pass fds 3 .. 3+N to the container (plus LISTEN_FDS from the environment).
    pub preserve_fds: u32,
    /// `--systemd-cgroup` (accepted and recorded; cgroups are managed through cgroupfs).
    pub systemd_cgroup: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Init waits on the exec fifo until `start`.
    Create,
    /// Init execs as soon as it is ready; the caller waits for it.
    Run,
}

/// A container whose init is set up (and, for `Mode::Run`, exec'ing).
pub(crate) struct Launched {
    pub state: State,
    pub cgroup: CgroupManager,
    pub chan: sync::Channel,
    pub spec: oci_spec::runtime::Spec,
}

/// Reaps a helper process when dropped.
struct Reap(Option<i32>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = waitpid(Pid::from_raw(pid), None);
        }
    }
}

/// Undoes a half-made container unless disarmed.
pub(crate) struct Cleanup {
    pub dir: Option<PathBuf>,
    pub cgroup: Option<CgroupManager>,
    pub pids: Vec<i32>,
}

impl Cleanup {
    pub fn disarm(&mut self) {
        self.dir = None;
        self.cgroup = None;
        self.pids.clear();
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for &pid in &self.pids {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = waitpid(Pid::from_raw(pid), None);
        }
        if let Some(cg) = self.cgroup.take() {
            let _ = cg.kill_all(libc::SIGKILL);
            destroy_cgroup(&cg);
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Removes a cgroup, waiting (bounded) for killed processes to leave it.
pub(crate) fn destroy_cgroup(cg: &CgroupManager) {
    for i in 0..2000 {
        match cg.delete() {
            Ok(()) => return,
            Err(e) if i == 1999 => eprintln!("hull-runtime: warning: {e}"),
            Err(_) => {
                if i % 100 == 99 {
                    let _ = cg.kill_all(libc::SIGKILL);
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
}

/// A fork-like clone(2): the child continues on a copy of our stack, already in its new
/// namespaces. Only call from a single-threaded process (the CLI, a monitor): as with
/// vfork-less fork, locks held by other threads would stay locked in the child.
fn clone_with(flags: CloneFlags) -> Result<i32> {
    explain!("clone({flags:?} | SIGCHLD)");
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags.bits() | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| format!("clone({flags:?})"));
    }
    Ok(r as i32)
}

/// Clones the init: into the container's v2 cgroup with `clone3(CLONE_INTO_CGROUP)`
/// where there is one, else (no v2 tree, or a kernel that refuses) with `clone` and the
/// move left to `add_task`. Returns the pid (0 in the child) and whether it went in.
fn clone_init(flags: CloneFlags, cg: &CgroupManager) -> Result<(i32, bool)> {
    if let Some((dir, fd)) = cg
        .clone_into_target()
        .map_err(|e| Error::Cgroup(e.to_string()))?
    {
        explain!(
            "clone3({flags:?} | CLONE_INTO_CGROUP {}, exit_signal SIGCHLD)",
            dir.display()
        );
        match clone_into::clone3_into(flags.bits() as u64, &fd) {
            Ok(pid) => return Ok((pid, true)),
            Err(e) if clone_into::falls_back(&e) => {
                explain!("clone3 into the cgroup refused ({e}): clone + cgroup.procs instead");
            }
            Err(e) => return Err(e).ctx(|| format!("clone3({flags:?} | CLONE_INTO_CGROUP)")),
        }
    }
    Ok((clone_with(flags)?, false))
}

fn listen_fds() -> u32 {
    std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Starts the cgroup-migration lock's RCU grace period early.
///
/// Moving a task between cgroups takes a global percpu rwsem whose writer side waits
/// for an RCU grace period (often 10+ ms on a busy host) unless another writer entered
/// less than one grace period ago; that wait is most of a container start. A throwaway
/// child makes a no-op move ("0" = itself, into the cgroup it is already in) right away,
/// so the grace period runs while we parse the config and build the container, and our
/// real move of the init finds it already (or nearly) elapsed.
fn prime_cgroup_migration() -> Option<i32> {
    // A pure v2 host clones the init straight into its cgroup: no migration to prime.
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        return None;
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut candidates = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
        if ctrl.is_empty() {
            candidates.push(format!("/sys/fs/cgroup/unified{path}/cgroup.procs"));
            candidates.push(format!("/sys/fs/cgroup{path}/cgroup.procs"));
        } else if ctrl == "pids" || ctrl == "memory" {
            candidates.push(format!("/sys/fs/cgroup/{ctrl}{path}/cgroup.procs"));
        }
    }
    let file = candidates.into_iter().find(|c| Path::new(c).exists())?;
    let file = std::ffi::CString::new(file).ok()?;
    // Allocation-free child: open, write, exit.
    match unsafe { libc::fork() } {
        0 => unsafe {
            let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
            }
            libc::_exit(0)
        },
        pid if pid > 0 => Some(pid),
        _ => None,
    }
}

/// Creates the container and brings its init to the point of exec.
pub(crate) fn launch(
    root: &Path,
    id: &str,
    bundle: &Path,
    opts: &CreateOptions,
    mode: Mode,
) -> Result<Launched> {
    spec::validate_id(id)?;
    let primer = prime_cgroup_migration();
    let _reap = Reap(primer);
    let Bundle {
        dir: bundle_dir,
        rootfs,
        spec,
    } = spec::load_bundle(bundle)?;
    let mut cleanup = Cleanup {
        dir: None,
        cgroup: None,
        pids: Vec::new(),
    };
    let dir = state::create_dir(root, id)?;
    cleanup.dir = Some(dir.clone());
    // Keep the config as it was at create time: exec and delete (poststop hooks) use it.
    let raw = std::fs::read(bundle_dir.join("config.json")).ctx(|| "read config.json".into())?;
    std::fs::write(dir.join("config.json"), &raw).ctx(|| "save config.json".into())?;
    let fifo = dir.join(state::EXEC_FIFO);
    if mode == Mode::Create {
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .ctx(|| "mkfifo exec.fifo".into())?;
    }
    let linux = spec.linux().as_ref();
    let cgroups_path = linux
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned());
    let cg = CgroupManager::new(cgroups_path.as_deref(), id)
        .map_err(|e| Error::Cgroup(e.to_string()))?;
    cleanup.cgroup = Some(cg.clone());
    let default_res = oci_spec::runtime::LinuxResources::default();
    let seccomp = linux
        .and_then(|l| l.seccomp().as_ref())
        .map(|s| crate::seccomp::compile_in_root(s, root))
        .transpose()
        .map_err(|e| crate::error::config("linux.seccomp", e.to_string()))?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| crate::error::config("process", "missing"))?;
    let console = match (
        opts.console_fd,
        &opts.console_socket,
        process.terminal() == Some(true),
    ) {
        (Some(fd), _, true) => {
            // SAFETY: the caller's fd, borrowed only to dup it.
            let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            Some(UnixStream::from(
                b.try_clone_to_owned().ctx(|| format!("console fd {fd}"))?,
            ))
        }
        (None, Some(p), true) => {
            Some(UnixStream::connect(p).ctx(|| format!("connect console socket {}", p.display()))?)
        }
        (None, None, true) => {
            return Err(crate::error::config(
                "process.terminal",
                "true requires --console-socket",
            ));
        }
        (Some(_), _, false) | (None, Some(_), false) => {
            return Err(crate::error::config(
                "process.terminal",
                "false, but --console-socket was given",
            ));
        }
        (None, None, false) => None,
    };
    let plan = Plan::from_spec(linux);
    let staged = !plan.join.is_empty();
    let hooks_spec = spec.hooks().as_ref();
    let runtime_hooks = hooks_spec.is_some_and(|h| {
        h.prestart().as_ref().is_some_and(|v| !v.is_empty())
            || h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
    });
    let (parent, child) = sync::pair()?;
    let mut st = State {
        oci_version: spec.version().clone(),
        id: id.to_string(),
        status: Status::Creating,
        pid: 0,
        bundle: bundle_dir.clone(),
        annotations: spec.annotations().clone().unwrap_or_default(),
        rootfs: rootfs.clone(),
        created: state::now_rfc3339(),
        init_start_time: 0,
        cgroups_path,
        systemd_cgroup: opts.systemd_cgroup,
    };
    let cfg = InitConfig {
        spec: &spec,
        bundle: &bundle_dir,
        rootfs: &rootfs,
        plan: &plan,
        chan: &child,
        fifo: (mode == Mode::Create).then_some(fifo.as_path()),
        console: console.as_ref().map(|c| c.as_raw_fd()),
        preserve_fds: (opts.preserve_fds + listen_fds()) as i32,
        staged,
        runtime_hooks,
        hook_state: st.oci_json(),
        seccomp: seccomp.as_ref(),
        cgroup_path: cg.path(),
    };
    if staged && mode == Mode::Run {
        // The init will be our grandchild: make it ours to reap when it is orphaned.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    let flags = if staged {
        CloneFlags::empty()
    } else {
        plan.new & !CloneFlags::CLONE_NEWCGROUP
    };
    // On a host with cgroup v2, start the init already in its v2 cgroup (no migration
    // lock, no RCU wait); `into` says whether that happened.
    let (pid, into) = clone_init(flags, &cg)?;
    if pid == 0 {
        unsafe { libc::close(parent.raw()) };
        init::main(&cfg);
    }
    drop(child);
    drop(console);
    cleanup.pids.push(pid);
    let r = (|| -> Result<State> {
        let init_pid = if staged {
            staged_handshake(&parent, pid, &plan, &spec, &mut cleanup)?
        } else {
            pid
        };
        if !staged && plan.new.contains(CloneFlags::CLONE_NEWUSER) {
            namespaces::write_id_maps(
                pid,
                linux.ok_or_else(|| Error::Other("no linux section".into()))?,
            )?;
        }
        st.pid = init_pid;
        st.init_start_time = state::proc_stat(init_pid)
            .map(|s| s.1)
            .ok_or_else(|| Error::Init("exited during setup".into()))?;
        parent.send(tag::GO, &init_pid.to_ne_bytes())?;
        // Creating cgroup dirs can be slow (v1 blkio: milliseconds): do it while the
        // init builds its rootfs. It only execs after CGROUP_DONE.
        cg.apply(&crate::cgroups::devices::allow_spec_devices(
            linux
                .and_then(|l| l.resources().as_ref())
                .unwrap_or(&default_res),
            linux.and_then(|l| l.devices().as_ref()),
        ))
        .map_err(|e| Error::Cgroup(e.to_string()))?;
        // A staged init is a grandchild, forked after clone3: it inherited the cgroup.
        if into {
            cg.add_task_after_clone_into(init_pid)
        } else {
            cg.add_task(init_pid)
        }
        .map_err(|e| Error::Cgroup(e.to_string()))?;
        if let Some(adj) = process.oom_score_adj() {
            security::set_oom_score_adj(init_pid, adj);
        }
        parent.send(tag::CGROUP_DONE, b"")?;
        if runtime_hooks {
            parent.expect(tag::HOOKS)?;
            let h = hooks_spec.ok_or_else(|| Error::Other("hooks vanished".into()))?;
            let js = st.oci_json();
            hooks::run_all("prestart", h.prestart().as_ref(), &js)?;
            hooks::run_all("createRuntime", h.create_runtime().as_ref(), &js)?;
            parent.send(tag::HOOKS_DONE, b"")?;
        }
        parent.expect(tag::READY)?;
        st.status = if mode == Mode::Create {
            Status::Created
        } else {
            Status::Running
        };
        state::save(&dir, &st)?;
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, init_pid)?;
        }
        Ok(st)
    })();
    let st = match r {
        Ok(st) => st,
        Err(Error::Init(m)) if m == "exited during setup" => {
            return Err(Error::Init(why_died(pid, &cg)));
        }
        Err(e) => return Err(e),
    };
    cleanup.disarm();
    Ok(Launched {
        state: st,
        cgroup: cg,
        chan: parent,
        spec,
    })
}

/// Why an init vanished without reporting an error: reaps it and reads the OOM counter.
fn why_died(pid: i32, cg: &CgroupManager) -> String {
    let how = match waitpid(Pid::from_raw(pid), None) {
        Ok(WaitStatus::Signaled(_, sig, _)) => format!("was killed by {sig:?}"),
        Ok(WaitStatus::Exited(_, code)) => format!("exited with status {code}"),
        _ => "exited".to_string(),
    };
    if cg.oom_kill_count().unwrap_or(0) > 0 {
        return format!(
            "{how} during setup: out of memory (linux.resources.memory.limit too low?)"
        );
    }
    format!("{how} during setup")
}

/// The parent's side of the staged path: maps on request, then the init's pid.
fn staged_handshake(
    chan: &sync::Channel,
    pid: i32,
    plan: &Plan,
    spec: &oci_spec::runtime::Spec,
    cleanup: &mut Cleanup,
) -> Result<i32> {
    loop {
        match chan.recv()? {
            Some((tag::MAPS, _)) => {
                let linux = spec
                    .linux()
                    .as_ref()
                    .ok_or_else(|| Error::Other("no linux section".into()))?;
                namespaces::write_id_maps(pid, linux)?;
                chan.send(tag::GO, b"")?;
            }
            Some((tag::PID, p)) => {
                let init = i32::from_ne_bytes(
                    p.get(..4)
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| Error::Init("bad pid".into()))?,
                );
                if init != pid {
                    cleanup.pids.push(init);
                    // The intermediate exits right after forking the init.
                    let _ = waitpid(Pid::from_raw(pid), None);
                    cleanup.pids.retain(|p| *p != pid);
                }
                let _ = plan;
                return Ok(init);
            }
            Some((tag::ERROR, m)) => {
                return Err(Error::Init(String::from_utf8_lossy(&m).into_owned()));
            }
            Some((t, _)) => return Err(Error::Init(format!("unexpected message {:?}", t as char))),
            None => return Err(Error::Init("exited during setup".into())),
        }
    }
}

pub(crate) fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension("hull-tmp");
    std::fs::write(&tmp, pid.to_string()).ctx(|| format!("write pid file {}", tmp.display()))?;
    std::fs::rename(&tmp, path).ctx(|| format!("write pid file {}", path.display()))
}

/// Signals forwarded to the container by a foreground `run`/`exec` (as runc does).
pub(crate) const FORWARDED: &[i32] = &[
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCONT,
    libc::SIGALRM,
];

/// Blocks SIGCHLD and the forwarded signals; returns the previous mask.
pub(crate) fn block_signals() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        for &s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        old
    }
}

pub(crate) fn restore_signals(old: &libc::sigset_t) {
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
}

/// Waits for `pid` to exit, forwarding signals to it and reaping any other child (the
/// runtime may be a subreaper). Returns the runc-style status: the exit code, or
/// 128 + the signal that killed it. Signals must be blocked ([`block_signals`]).
pub(crate) fn wait_forwarding(pid: i32) -> Result<i32> {
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        for &s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
    }
    loop {
        // Reap first: the child may have exited before we started waiting.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, code)) if p.as_raw() == pid => return Ok(code),
                Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() == pid => {
                    return Ok(128 + sig as i32);
                }
                Ok(WaitStatus::StillAlive) => break,
                Err(nix::errno::Errno::ECHILD) => {
                    return Err(Error::Other(format!("process {pid} is not our child")));
                }
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).ctx(|| "waitpid".into()),
            }
        }
        let sig = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if sig > 0 && sig != libc::SIGCHLD {
            explain!("forward signal {sig} to {pid}");
            unsafe { libc::kill(pid, sig) };
        }
    }
}
