//! The container's init, from the moment it is cloned until it execs the user's program.
//!
//! It runs in a forked copy of the runtime (no re-exec: that is what makes hull fast)
//! and talks to the parent over the [`sync`](crate::sync) channel. Order matters and
//! follows the kernel's rules: join existing namespaces, create the user namespace and
//! wait for the parent to write its id maps, wait for the parent to put us in our
//! cgroup, create the cgroup namespace (so its root is the container's cgroup), build
//! the rootfs, pivot, then drop privileges and exec.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use oci_spec::runtime::{Process, Spec};

use crate::error::{Context, Error, Result};
use crate::explain;
use crate::namespaces::{self, Plan};
use crate::sync::{Channel, tag};
use crate::{hooks, rootfs, security};

/// Everything init needs, prepared by the parent before clone.
pub(crate) struct InitConfig<'a> {
    pub spec: &'a Spec,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub plan: &'a Plan,
    pub chan: &'a Channel,
    /// The exec fifo (create/start); `None` for `run`, which execs right away.
    pub fifo: Option<&'a Path>,
    /// A connected console socket when `process.terminal` is set.
    pub console: Option<RawFd>,
    pub preserve_fds: i32,
    /// Joining namespaces by path: clone was plain, namespaces are entered here and a
    /// second fork may be needed for the pid namespace.
    pub staged: bool,
    /// The parent wants to run prestart/createRuntime hooks before pivot_root.
    pub runtime_hooks: bool,
    /// State JSON for the hooks run inside the container.
    pub hook_state: serde_json::Value,
    pub seccomp: Option<&'a crate::seccomp::Filter>,
    /// The container's cgroup as /proc/PID/cgroup shows it (e.g. /hull/c1).
    pub cgroup_path: PathBuf,
}

/// Entry point in the cloned child. Never returns.
pub(crate) fn main(cfg: &InitConfig<'_>) -> ! {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cfg)));
    let msg = match r {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(never)) => match never {},
        Err(_) => "panicked".to_string(),
    };
    let _ = cfg.chan.send(tag::ERROR, msg.as_bytes());
    unsafe { libc::_exit(1) }
}

fn run(cfg: &InitConfig<'_>) -> Result<Infallible> {
    // Until exec this process is an image of the runtime binary: keep /proc/PID/exe and
    // /proc/PID/mem out of reach of anything already in the container's namespaces.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    reset_signals();
    let plan = cfg.plan;
    if cfg.staged {
        enter_namespaces(cfg)?;
    }
    let go = cfg.chan.expect(tag::GO)?;
    let mut hook_state = cfg.hook_state.clone();
    if let Some(b) = go.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
        hook_state["pid"] = i32::from_ne_bytes(b).into();
    }
    let userns = plan.has(CloneFlags::CLONE_NEWUSER);
    if plan.new.contains(CloneFlags::CLONE_NEWUSER) {
        become_ns_root()?;
    }
    let mut in_cgroup = false;
    if plan.new.contains(CloneFlags::CLONE_NEWCGROUP) {
        wait_cgroup(cfg, &mut in_cgroup)?;
        explain!("unshare(CLONE_NEWCGROUP) (now that we are in the container's cgroup)");
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
            .ctx(|| "unshare cgroup namespace".into())?;
    }
    if let Some(h) = cfg.spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        explain!("sethostname({h})");
        nix::unistd::sethostname(h).ctx(|| format!("hostname: sethostname({h})"))?;
    }
    if let Some(d) = cfg.spec.domainname().as_deref().filter(|d| !d.is_empty())
        && unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0
    {
        return Err(std::io::Error::last_os_error())
            .ctx(|| format!("domainname: setdomainname({d})"));
    }
    // The fifo lives in the state dir on the host: hold that directory by an O_PATH fd
    // across pivot and open the fifo relative to it later (not through /proc/self/fd:
    // a container that shares the host's mount namespace may have no /proc at all).
    let fifo = cfg
        .fifo
        .map(|p| {
            nix::fcntl::open(
                p.parent().unwrap_or(Path::new("/")),
                nix::fcntl::OFlag::O_PATH
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
        })
        .transpose()
        .ctx(|| "open exec fifo".into())?;
    let new_mnt = plan.new.contains(CloneFlags::CLONE_NEWNS);
    let ctx = rootfs::Ctx {
        spec: cfg.spec,
        rootfs: cfg.rootfs,
        bundle: cfg.bundle,
        userns,
        cgroupns: plan.has(CloneFlags::CLONE_NEWCGROUP),
        cgroup_path: &cfg.cgroup_path,
    };
    if new_mnt {
        rootfs::prepare(&ctx, &mut || wait_cgroup(cfg, &mut in_cgroup))?;
    }
    if cfg.runtime_hooks {
        wait_cgroup(cfg, &mut in_cgroup)?;
        cfg.chan.send(tag::HOOKS, b"")?;
        cfg.chan.expect(tag::HOOKS_DONE)?;
    }
    let spec_hooks = cfg.spec.hooks().as_ref();
    hooks::run_all(
        "createContainer",
        spec_hooks.and_then(|h| h.create_container().as_ref()),
        &hook_state,
    )?;
    if new_mnt {
        rootfs::pivot(cfg.rootfs)?;
    } else {
        nix::unistd::chroot(cfg.rootfs).ctx(|| format!("chroot {}", cfg.rootfs.display()))?;
        nix::unistd::chdir("/").ctx(|| "chdir /".into())?;
    }
    let process = cfg
        .spec
        .process()
        .as_ref()
        .ok_or_else(|| crate::error::config("process", "missing"))?;
    if process.terminal() == Some(true) {
        setup_console(cfg, process)?;
    } else if cfg.console.is_some() {
        return Err(Error::Other(
            "--console-socket given but process.terminal is false".into(),
        ));
    }
    if new_mnt {
        rootfs::finalize(cfg.spec)?;
    }
    let prepared = Prepared::new(process)?;
    drop_privileges(process, userns, cfg.seccomp)?;
    wait_cgroup(cfg, &mut in_cgroup)?;
    finish_and_exec(cfg, &prepared, fifo, &hook_state)
}

/// Waits (once) for the parent to confirm we are in the container's cgroup.
fn wait_cgroup(cfg: &InitConfig<'_>, done: &mut bool) -> Result<()> {
    if !*done {
        cfg.chan.expect(tag::CGROUP_DONE)?;
        *done = true;
    }
    Ok(())
}

/// The program to exec, resolved before privileges are dropped so that a missing binary
/// fails `create`, not `start`.
pub(crate) struct Prepared {
    path: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: PathBuf,
}

fn cstr(s: &[u8], what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| crate::error::config(what, "contains a NUL byte"))
}

impl Prepared {
    pub(crate) fn new(p: &Process) -> Result<Prepared> {
        let args = p.args().clone().unwrap_or_default();
        let argv = args
            .iter()
            .map(|a| cstr(a.as_bytes(), "process.args"))
            .collect::<Result<Vec<_>>>()?;
        let env_list = p.env().clone().unwrap_or_default();
        let env = env_list
            .iter()
            .map(|e| cstr(e.as_bytes(), "process.env"))
            .collect::<Result<Vec<_>>>()?;
        let prog = args
            .first()
            .ok_or_else(|| crate::error::config("process.args", "empty"))?;
        let path = find_program(prog, &env_list)?;
        Ok(Prepared {
            path: cstr(path.as_os_str().as_bytes(), "process.args[0]")?,
            argv,
            env,
            cwd: p.cwd().clone(),
        })
    }
}

/// `execvp` semantics with the *container's* PATH.
fn find_program(prog: &str, env: &[String]) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if prog.contains('/') {
        return Ok(PathBuf::from(prog));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let cand = Path::new(dir).join(prog);
        if let Ok(m) = std::fs::metadata(&cand)
            && m.is_file()
            && m.permissions().mode() & 0o111 != 0
        {
            return Ok(cand);
        }
    }
    Err(crate::error::config(
        "process.args[0]",
        format!("executable file {prog:?} not found in $PATH"),
    ))
}

/// rlimits, seccomp (if it must precede the capability drop), bounding set, user,
/// capabilities, no_new_privs, umask.
pub(crate) fn drop_privileges(
    p: &Process,
    userns: bool,
    seccomp: Option<&crate::seccomp::Filter>,
) -> Result<()> {
    security::set_rlimits(p.rlimits().as_deref().unwrap_or_default())?;
    let nnp = p.no_new_privileges() == Some(true);
    if !nnp && let Some(f) = seccomp {
        // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: do it while we have it.
        f.load()
            .map_err(|e| Error::Other(format!("linux.seccomp: {e}")))?;
    }
    let caps = security::cap_plan(p.capabilities().as_ref());
    security::drop_bounding(&caps)?;
    // setgroups is refused in a user namespace whose setgroups file says deny.
    let no_setgroups =
        userns && std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny");
    security::set_user(p.user(), no_setgroups)?;
    security::set_caps(&caps)?;
    if nnp {
        security::set_no_new_privs()?;
    }
    security::set_umask(p);
    Ok(())
}

/// cwd, fds, readiness, the start signal, startContainer hooks, seccomp, exec.
fn finish_and_exec(
    cfg: &InitConfig<'_>,
    prog: &Prepared,
    fifo: Option<OwnedFd>,
    hook_state: &serde_json::Value,
) -> Result<Infallible> {
    enter_cwd(&prog.cwd)?;
    close_fds(cfg.preserve_fds)?;
    cfg.chan.send(tag::READY, b"")?;
    if let Some(fifo) = fifo {
        // Blocks until `start` opens the fifo for reading.
        let name = std::ffi::CString::new(crate::state::EXEC_FIFO)
            .map_err(|e| Error::Other(e.to_string()))?;
        // SAFETY: valid dir fd and NUL-terminated name; the result is checked.
        let fd = unsafe {
            libc::openat(
                fifo.as_raw_fd(),
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).ctx(|| "open exec fifo".into());
        }
        // SAFETY: fd was just opened and is owned by nobody else.
        let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        use std::io::Write;
        (&f).write_all(b"0").ctx(|| "write exec fifo".into())?;
    }
    let spec_hooks = cfg.spec.hooks().as_ref();
    hooks::run_all(
        "startContainer",
        spec_hooks.and_then(|h| h.start_container().as_ref()),
        hook_state,
    )?;
    let nnp = cfg
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.no_new_privileges())
        == Some(true);
    if nnp && let Some(f) = cfg.seccomp {
        f.load()
            .map_err(|e| Error::Other(format!("linux.seccomp: {e}")))?;
    }
    exec(prog)
}

pub(crate) fn exec(prog: &Prepared) -> Result<Infallible> {
    explain!("execve({:?}, {:?})", prog.path, prog.argv);
    let e = nix::unistd::execve(&prog.path, &prog.argv, &prog.env).unwrap_err();
    Err(Error::Sys {
        what: format!("exec {:?}", prog.path),
        err: std::io::Error::from_raw_os_error(e as i32),
    })
}

/// chdir inside the container, refusing a cwd that resolves outside the root (an fd
/// leaked from the host, CVE-2024-21626).
pub(crate) fn enter_cwd(cwd: &Path) -> Result<()> {
    explain!("chdir({})", cwd.display());
    nix::unistd::chdir(cwd).ctx(|| format!("process.cwd: chdir {}", cwd.display()))?;
    match nix::unistd::getcwd() {
        Ok(p) if p.is_absolute() => Ok(()),
        _ => Err(crate::error::config(
            "process.cwd",
            format!("{} is outside the container's root", cwd.display()),
        )),
    }
}

/// Marks every fd above 2 (and the preserved ones) close-on-exec, except the preserved.
pub(crate) fn close_fds(preserve: i32) -> Result<()> {
    let first = 3 + preserve.max(0) as u32;
    explain!("close_range({first}, ~0, CLOSE_RANGE_CLOEXEC): no host fd reaches the container");
    if unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } != 0
    {
        // Pre-5.11 kernels (ENOSYS/EINVAL), or a spec's seccomp profile that is already
        // loaded (noNewPrivileges false) and does not allow close_range (EPERM): mark
        // each open fd by hand, as runc does.
        cloexec_from_proc(first as i32)?;
    }
    for fd in 3..first as i32 {
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    }
    Ok(())
}

/// Sets `FD_CLOEXEC` on every fd >= `first`: those listed in /proc/self/fd, or, where
/// the container has no /proc mounted, every number below the soft `RLIMIT_NOFILE`
/// (capped at 2^20; fcntl on a closed fd just fails with EBADF).
fn cloexec_from_proc(first: i32) -> Result<()> {
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(rd) => rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd >= first)
            .collect(),
        Err(_) => {
            let (soft, _) =
                nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                    .unwrap_or((1 << 20, 1 << 20));
            (first..soft.min(1 << 20) as i32).collect()
        }
    };
    for fd in fds {
        // The read_dir fd itself is gone by now (EBADF); nothing else can fail here.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Default dispositions and an empty mask: the runtime ignores SIGPIPE (Rust's default)
/// and blocks forwarded signals, neither of which the container must inherit.
pub(crate) fn reset_signals() {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// In a fresh user namespace: become uid/gid 0 now that the maps are written.
fn become_ns_root() -> Result<()> {
    explain!("setresgid(0,0,0); setresuid(0,0,0) in the new user namespace");
    if unsafe { libc::setresgid(0, 0, 0) } != 0 || unsafe { libc::setresuid(0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error())
            .ctx(|| "become root in user namespace (is 0 mapped?)".into());
    }
    Ok(())
}

/// The staged path: enter namespaces by path, create the rest with unshare, and fork
/// once more when a pid namespace is involved (setns/unshare of a pid namespace only
/// applies to children). Returns in the process that becomes init.
fn enter_namespaces(cfg: &InitConfig<'_>) -> Result<()> {
    let plan = cfg.plan;
    for (kind, path) in &plan.join {
        namespaces::join(*kind, path)?;
    }
    if plan.new.contains(CloneFlags::CLONE_NEWUSER) {
        explain!("unshare(CLONE_NEWUSER)");
        nix::sched::unshare(CloneFlags::CLONE_NEWUSER).ctx(|| "unshare user namespace".into())?;
        cfg.chan.send(tag::MAPS, b"")?;
        cfg.chan.expect(tag::GO)?;
        become_ns_root()?;
    }
    let rest = plan.new & !(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWCGROUP);
    if !rest.is_empty() {
        explain!("unshare({rest:?})");
        nix::sched::unshare(rest).ctx(|| format!("unshare {rest:?}"))?;
    }
    if plan.has(CloneFlags::CLONE_NEWPID) {
        match unsafe { nix::unistd::fork() }.ctx(|| "fork into pid namespace".into())? {
            nix::unistd::ForkResult::Child => {}
            nix::unistd::ForkResult::Parent { child } => {
                let _ = cfg.chan.send(tag::PID, &child.as_raw().to_ne_bytes());
                unsafe { libc::_exit(0) }
            }
        }
    } else {
        cfg.chan.send(tag::PID, &std::process::id().to_ne_bytes())?;
    }
    Ok(())
}

/// Creates the container's terminal from its own /dev/pts, hands the master to whoever
/// listens on the console socket, and makes the slave our controlling terminal and stdio.
fn setup_console(cfg: &InitConfig<'_>, p: &Process) -> Result<()> {
    use nix::fcntl::OFlag;
    let sock = cfg.console.ok_or_else(|| {
        Error::Other("process.terminal is true but no --console-socket was given".into())
    })?;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .ctx(|| "open /dev/ptmx".into())?;
    nix::pty::grantpt(&master).ctx(|| "grantpt".into())?;
    nix::pty::unlockpt(&master).ctx(|| "unlockpt".into())?;
    let name = nix::pty::ptsname_r(&master).ctx(|| "ptsname".into())?;
    explain!("terminal {name}: master sent over the console socket");
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
    // /dev/console is the terminal too, as on a real machine.
    if let Ok(dev) = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/dev/console")
    {
        drop(dev);
        let _ = rootfs::mount(
            Some(Path::new(&name)),
            Path::new("/dev/console"),
            None,
            nix::mount::MsFlags::MS_BIND,
            None,
        );
    }
    crate::sync::send_fd(
        unsafe { BorrowedFd::borrow_raw(sock) },
        master.as_raw_fd(),
        name.as_bytes(),
    )?;
    unsafe { libc::close(sock) };
    drop(master);
    nix::unistd::setsid().ctx(|| "setsid".into())?;
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "TIOCSCTTY".into());
    }
    for fd in 0..3 {
        if unsafe { libc::dup2(slave.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error()).ctx(|| "dup2 terminal".into());
        }
    }
    Ok(())
}
