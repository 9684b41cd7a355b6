//! hull's pause process: `hull-shim pause` (see `shim`), or without hull-shim the `hull`
//! binary re-exec'd (`hull cri --internal-pause`, this module's `main`). It joins the
//! pod's netns, makes the pod's UTS and IPC namespaces, sets the hostname and
//! namespaced sysctls, reports, then sleeps reaping children until told to stop.
//! No image is involved, so pods start offline.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use nix::sched::{CloneFlags, setns, unshare};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PauseSpec {
    pub netns: Option<PathBuf>,
    pub new_uts: bool,
    pub new_ipc: bool,
    pub hostname: String,
    pub sysctls: Vec<(String, String)>,
}

impl PauseSpec {
    /// The same spec as `hull-shim pause` arguments.
    pub fn shim_args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = Vec::new();
        if let Some(ns) = &self.netns {
            a.extend(["--netns".into(), ns.clone().into_os_string()]);
        }
        if self.new_uts {
            a.extend([
                "--new-uts".into(),
                "--hostname".into(),
                self.hostname.clone().into(),
            ]);
        }
        if self.new_ipc {
            a.push("--new-ipc".into());
        }
        for (k, v) in &self.sysctls {
            a.extend(["--sysctl".into(), format!("{k}={v}").into()]);
        }
        a
    }
}

fn setup(spec: &PauseSpec) -> Result<(), String> {
    if let Some(ns) = &spec.netns {
        let f = std::fs::File::open(ns).map_err(|e| format!("open netns {}: {e}", ns.display()))?;
        setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {}: {e}", ns.display()))?;
    }
    let mut flags = CloneFlags::empty();
    if spec.new_uts {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    if spec.new_ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    unshare(flags).map_err(|e| format!("unshare({flags:?}): {e}"))?;
    if spec.new_uts && !spec.hostname.is_empty() {
        nix::unistd::sethostname(&spec.hostname)
            .map_err(|e| format!("hostname {:?}: {e}", spec.hostname))?;
    }
    for (k, v) in &spec.sysctls {
        let p = format!("/proc/sys/{}", k.replace('.', "/"));
        std::fs::write(&p, v).map_err(|e| format!("sysctls[{k}]: write {p}: {e}"))?;
    }
    Ok(())
}

extern "C" fn on_term(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

/// Only there so that SIGCHLD interrupts pause(2) (its default disposition is to be
/// ignored): as PID 1 of a pod's pid namespace the pause reaps the pod's orphans.
extern "C" fn on_chld(_: libc::c_int) {}

/// The pause process's main; stdout is the report pipe to the server.
pub fn main(spec_json: &str) -> i32 {
    let spec: PauseSpec = match serde_json::from_str(spec_json) {
        Ok(s) => s,
        Err(e) => {
            println!("error: pause spec: {e}");
            return 2;
        }
    };
    if let Err(e) = setup(&spec) {
        println!("error: {e}");
        return 1;
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ok");
    let _ = out.flush();
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        // SAFETY: dup2 onto our own stdio fds.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(null.as_raw_fd(), 2);
        }
    }
    let _ = std::env::set_current_dir("/");
    // SAFETY: installing plain handlers; on_term only calls _exit.
    unsafe {
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_term as *const () as libc::sighandler_t);
        libc::signal(libc::SIGCHLD, on_chld as *const () as libc::sighandler_t);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    loop {
        // SAFETY: pause/waitpid have no memory effects on us.
        unsafe {
            libc::pause();
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
        }
    }
}
