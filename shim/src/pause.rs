//! `hull-shim pause [--netns PATH] [--new-uts --hostname NAME] [--new-ipc]
//! [--sysctl KEY=VALUE]...`: joins the pod's netns, makes its UTS and IPC namespaces,
//! sets the hostname and the namespaced sysctls, reports `ok` (or `error: ...`) on
//! stdout, then sleeps until SIGTERM/SIGINT, reaping any child.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::AsRawFd;

use crate::Args;

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn setup(a: &Args) -> Result<(), String> {
    if let Some(ns) = a.get("netns") {
        let f = std::fs::File::open(ns).map_err(|e| format!("open netns {ns}: {e}"))?;
        // SAFETY: setns on an fd we hold.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(os_err(&format!("setns {ns}")));
        }
    }
    let mut flags = 0;
    if a.has("new-uts") {
        flags |= libc::CLONE_NEWUTS;
    }
    if a.has("new-ipc") {
        flags |= libc::CLONE_NEWIPC;
    }
    // SAFETY: unshare with plain flags; this process is single-threaded.
    if flags != 0 && unsafe { libc::unshare(flags) } != 0 {
        return Err(os_err(&format!("unshare({flags:#x})")));
    }
    if let Some(h) = a
        .get("hostname")
        .filter(|h| a.has("new-uts") && !h.is_empty())
    {
        // SAFETY: the pointer and length describe `h`.
        if unsafe { libc::sethostname(h.as_ptr().cast(), h.len()) } != 0 {
            return Err(os_err(&format!("hostname {h:?}")));
        }
    }
    for kv in a.all("sysctl") {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let p = format!("/proc/sys/{}", k.replace('.', "/"));
        std::fs::write(&p, v).map_err(|e| format!("sysctls[{k}]: write {p}: {e}"))?;
    }
    Ok(())
}

extern "C" fn on_term(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

/// Only there so that SIGCHLD interrupts pause(2) (its default disposition is ignored).
extern "C" fn on_chld(_: libc::c_int) {}

pub fn main(argv: impl Iterator<Item = String>) -> u8 {
    let mut out = std::io::stdout();
    let setup = Args::parse(argv, &["netns", "hostname", "sysctl"]).and_then(|a| setup(&a));
    if let Err(e) = setup {
        let _ = writeln!(out, "error: {e}");
        return 1;
    }
    let _ = writeln!(out, "ok");
    let _ = out.flush();
    if let Ok(null) = CString::new("/dev/null") {
        // SAFETY: open/dup2 on our own stdio.
        unsafe {
            let fd = libc::open(null.as_ptr(), libc::O_RDWR);
            if fd >= 0 {
                libc::dup2(fd, 0);
                libc::dup2(fd, 1);
                libc::dup2(fd, 2);
                libc::close(fd);
            }
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
    crate::shed_startup_text();
    loop {
        // SAFETY: pause/waitpid touch no memory of ours.
        unsafe {
            libc::pause();
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
        }
    }
}
