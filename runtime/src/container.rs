//! The runtime's public API: one function per lifecycle operation, each taking the state
//! root (`--root`) and the container id. The `hull-runtime` CLI is a thin layer over
//! these; `hull run` and the CRI server call them directly.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use crate::cgroups::{CgroupManager, FreezerState, Stats};
use crate::error::{Context, Error, Result};
use crate::hooks;
use crate::launch::{self, Mode};
use crate::state::{self, State, Status};
use crate::sync::tag;

pub use crate::launch::CreateOptions;

fn cgroup_of(st: &State) -> Result<CgroupManager> {
    CgroupManager::new(st.cgroups_path.as_deref(), &st.id).map_err(|e| Error::Cgroup(e.to_string()))
}

fn frozen(st: &State) -> bool {
    cgroup_of(st)
        .and_then(|cg| cg.state().map_err(|e| Error::Cgroup(e.to_string())))
        .is_ok_and(|s| s == FreezerState::Frozen)
}

/// The container's state with its status recomputed from the kernel.
pub fn state(root: &Path, id: &str) -> Result<State> {
    let mut st = state::load(root, id)?;
    state::refresh(root, &mut st, frozen);
    Ok(st)
}

/// Every container under `root`.
pub fn list(root: &Path) -> Result<Vec<State>> {
    let mut out = Vec::new();
    for id in state::list_ids(root)? {
        if let Ok(st) = state(root, &id) {
            out.push(st);
        }
    }
    Ok(out)
}

/// `create`: sets the container up; its process waits for [`start`].
pub fn create(root: &Path, id: &str, bundle: &Path, opts: &CreateOptions) -> Result<State> {
    Ok(launch::launch(root, id, bundle, opts, Mode::Create)?.state)
}

/// `start`: lets a created container's process exec, then runs poststart hooks.
pub fn start(root: &Path, id: &str) -> Result<()> {
    let st = state(root, id)?;
    if st.status != Status::Created {
        return Err(Error::BadStatus {
            id: id.into(),
            status: st.status.to_string(),
            op: "start".into(),
        });
    }
    let fifo = state::container_dir(root, id).join(state::EXEC_FIFO);
    // Non-blocking open: if the init died, a blocking open would wait forever.
    let fd = nix::fcntl::open(
        &fifo,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| format!("open {}", fifo.display()))?;
    let mut buf = [0u8; 1];
    loop {
        match nix::unistd::read(&fd, &mut buf) {
            Ok(1) => break,
            Ok(_) | Err(nix::errno::Errno::EAGAIN) => {
                if !state::process_alive(st.pid, st.init_start_time) {
                    let _ = std::fs::remove_file(&fifo);
                    return Err(Error::Init("exited before it could be started".into()));
                }
                let mut pfd = [nix::poll::PollFd::new(
                    std::os::fd::AsFd::as_fd(&fd),
                    nix::poll::PollFlags::POLLIN,
                )];
                let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(10u8));
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).ctx(|| "read exec fifo".into()),
        }
    }
    // The fifo's absence is what marks the container as started (see state::refresh);
    // state.json is not rewritten. Rewriting it by rename over the old file would make
    // ext4 (auto_da_alloc) start writeback of the new file, and the unlink in `delete`
    // would then wait for that I/O: that alone made `delete` twice as slow as runc's
    // when the state root is on disk rather than tmpfs.
    std::fs::remove_file(&fifo).ctx(|| "remove exec fifo".into())?;
    let mut st = st;
    st.status = Status::Running;
    let spec = saved_spec(root, id)?;
    hooks::run_all_warn(
        "poststart",
        spec.hooks().as_ref().and_then(|h| h.poststart().as_ref()),
        &st.oci_json(),
    );
    Ok(())
}

/// The config.json saved at create time.
pub fn saved_spec(root: &Path, id: &str) -> Result<oci_spec::runtime::Spec> {
    let p = state::container_dir(root, id).join("config.json");
    let bytes = std::fs::read(&p).ctx(|| format!("read {}", p.display()))?;
    crate::spec::parse(&bytes)
}

/// `run` in the foreground: create, start, wait, delete. Returns the runc-style exit
/// status (exit code, or 128 + signal). Signals sent to the caller are forwarded.
pub fn run(root: &Path, id: &str, bundle: &Path, opts: &CreateOptions) -> Result<i32> {
    let old = launch::block_signals();
    let r = run_blocked(root, id, bundle, opts);
    launch::restore_signals(&old);
    r
}

fn run_blocked(root: &Path, id: &str, bundle: &Path, opts: &CreateOptions) -> Result<i32> {
    let l = launch::launch(root, id, bundle, opts, Mode::Run)?;
    // End-of-file means the exec succeeded (the channel is close-on-exec).
    match l.chan.recv() {
        Ok(None) => {}
        Ok(Some((tag::ERROR, m))) => {
            let _ = launch::wait_forwarding(l.state.pid);
            destroy(root, &l.state, &l.spec);
            return Err(Error::Init(String::from_utf8_lossy(&m).into_owned()));
        }
        other => {
            unsafe { libc::kill(l.state.pid, libc::SIGKILL) };
            let _ = launch::wait_forwarding(l.state.pid);
            destroy(root, &l.state, &l.spec);
            return Err(Error::Init(format!(
                "unexpected message after ready: {:?}",
                other.map(|o| o.map(|m| m.0))
            )));
        }
    }
    hooks::run_all_warn(
        "poststart",
        l.spec.hooks().as_ref().and_then(|h| h.poststart().as_ref()),
        &l.state.oci_json(),
    );
    let code = launch::wait_forwarding(l.state.pid);
    destroy(root, &l.state, &l.spec);
    drop(l.cgroup);
    code
}

/// `run -d`: create and start, leaving the container running.
pub fn run_detached(root: &Path, id: &str, bundle: &Path, opts: &CreateOptions) -> Result<State> {
    create(root, id, bundle, opts)?;
    if let Err(e) = start(root, id) {
        let _ = delete(root, id, true);
        return Err(e);
    }
    state(root, id)
}

/// Sends `sig` to the init (or, with `all`, to every process in the container).
pub fn kill(root: &Path, id: &str, sig: i32, all: bool) -> Result<()> {
    let st = state(root, id)?;
    if st.status == Status::Stopped && !all {
        return Err(Error::BadStatus {
            id: id.into(),
            status: st.status.to_string(),
            op: "kill".into(),
        });
    }
    if all {
        return cgroup_of(&st)?
            .kill_all(sig)
            .map_err(|e| Error::Cgroup(e.to_string()));
    }
    signal_init(&st, sig)
}

/// Signals the init through a pidfd opened and then checked against the recorded start
/// time, so a pid recycled since is never signalled.
fn signal_init(st: &State, sig: i32) -> Result<()> {
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, st.pid, 0) };
    if pidfd < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| format!("pidfd_open({})", st.pid));
    }
    let pidfd =
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(pidfd as i32) };
    if !state::process_alive(st.pid, st.init_start_time) {
        return Err(Error::BadStatus {
            id: st.id.clone(),
            status: "stopped".into(),
            op: "kill".into(),
        });
    }
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            sig,
            std::ptr::null::<u8>(),
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| format!("signal {sig} to {}", st.pid));
    }
    Ok(())
}

/// Removes a container. A created or stopped one is removed directly; a running or
/// paused one only with `force` (it is killed first).
pub fn delete(root: &Path, id: &str, force: bool) -> Result<()> {
    let st = state(root, id)?;
    match st.status {
        Status::Running | Status::Paused if !force => {
            return Err(Error::BadStatus {
                id: id.into(),
                status: st.status.to_string(),
                op: "delete without --force".into(),
            });
        }
        _ => {}
    }
    let spec = saved_spec(root, id).unwrap_or_default();
    destroy(root, &st, &spec);
    Ok(())
}

/// Kills whatever is left, removes the cgroup, runs poststop hooks, drops the state.
fn destroy(root: &Path, st: &State, spec: &oci_spec::runtime::Spec) {
    if let Ok(cg) = cgroup_of(st) {
        // Usually the init has exited and the cgroup is empty: skip the freezer round trip.
        let busy = state::process_alive(st.pid, st.init_start_time)
            || cg.pids().map(|p| !p.is_empty()).unwrap_or(true);
        if busy {
            if state::process_alive(st.pid, st.init_start_time) {
                let _ = signal_init(st, libc::SIGKILL);
            }
            let _ = cg.kill_all(libc::SIGKILL);
            // A frozen cgroup's processes cannot die.
            let _ = cg.thaw();
            wait_gone(st);
        }
        launch::destroy_cgroup(&cg);
    }
    let mut stopped = st.clone();
    stopped.status = Status::Stopped;
    hooks::run_all_warn(
        "poststop",
        spec.hooks().as_ref().and_then(|h| h.poststop().as_ref()),
        &stopped.oci_json(),
    );
    let _ = std::fs::remove_dir_all(state::container_dir(root, &st.id));
}

/// Waits (bounded, ~10 s) for the init to be gone; reaps it if it is our child.
fn wait_gone(st: &State) {
    for _ in 0..10_000 {
        unsafe { libc::waitpid(st.pid, std::ptr::null_mut(), libc::WNOHANG) };
        if !state::process_alive(st.pid, st.init_start_time) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn running(root: &Path, id: &str, op: &str) -> Result<(State, CgroupManager)> {
    let st = state(root, id)?;
    if !matches!(
        st.status,
        Status::Running | Status::Paused | Status::Created
    ) {
        return Err(Error::BadStatus {
            id: id.into(),
            status: st.status.to_string(),
            op: op.into(),
        });
    }
    let cg = cgroup_of(&st)?;
    Ok((st, cg))
}

/// Freezes every process of the container.
pub fn pause(root: &Path, id: &str) -> Result<()> {
    let (st, cg) = running(root, id, "pause")?;
    if st.status != Status::Running {
        return Err(Error::BadStatus {
            id: id.into(),
            status: st.status.to_string(),
            op: "pause".into(),
        });
    }
    cg.freeze().map_err(|e| Error::Cgroup(e.to_string()))
}

/// Thaws a paused container.
pub fn resume(root: &Path, id: &str) -> Result<()> {
    let (st, cg) = running(root, id, "resume")?;
    if st.status != Status::Paused {
        return Err(Error::BadStatus {
            id: id.into(),
            status: st.status.to_string(),
            op: "resume".into(),
        });
    }
    cg.thaw().map_err(|e| Error::Cgroup(e.to_string()))
}

/// Host pids of every process in the container.
pub fn pids(root: &Path, id: &str) -> Result<Vec<i32>> {
    let (_, cg) = running(root, id, "list processes")?;
    cg.pids().map_err(|e| Error::Cgroup(e.to_string()))
}

/// Changes the resource limits of a live container.
pub fn update(root: &Path, id: &str, resources: &LinuxResources) -> Result<()> {
    let (_, cg) = running(root, id, "update")?;
    cg.update(resources)
        .map_err(|e| Error::Cgroup(e.to_string()))
}

/// Resource usage (for `events --stats` and the CRI server).
pub fn stats(root: &Path, id: &str) -> Result<Stats> {
    let (_, cg) = running(root, id, "read stats")?;
    cg.stats().map_err(|e| Error::Cgroup(e.to_string()))
}
