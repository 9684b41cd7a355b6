//! Seccomp filters compiled from OCI specs and loaded for real in forked children.
//!
//! The child does only async-signal-safe work after fork (the filter is compiled and
//! every string prepared before): load the filter, make syscalls, `_exit` with a code
//! that says what it saw.

use std::ffi::CString;

use hull_runtime::seccomp::{self, Filter};
use oci_spec::runtime::LinuxSeccomp;

fn spec(json: &str) -> LinuxSeccomp {
    serde_json::from_str(json).expect("seccomp json")
}

/// Forks; the child sets no_new_privs, loads `filter`, runs `body` and exits with its
/// result. Returns the child's wait status.
fn in_child(filter: &Filter, body: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only calls async-signal-safe functions (prctl, seccomp, the
    // syscalls in `body`, _exit) and touches memory prepared before the fork.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                libc::_exit(100);
            }
            if filter.load().is_err() {
                libc::_exit(101);
            }
            libc::_exit(body());
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        status
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn tmp_path(name: &str) -> CString {
    let p = std::env::temp_dir().join(format!("hull-seccomp-{name}-{}", std::process::id()));
    CString::new(p.into_os_string().into_encoded_bytes()).unwrap()
}

#[test]
fn denied_mkdir_sees_eperm_and_other_syscalls_work() {
    let filter = seccomp::compile(&spec(
        r#"{"defaultAction":"SCMP_ACT_ALLOW",
            "architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"],
            "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    ))
    .unwrap();
    assert!(!filter.is_empty());
    let dir = tmp_path("mkdir");
    let status = in_child(&filter, || unsafe {
        if libc::mkdir(dir.as_ptr(), 0o700) == 0 {
            return 1;
        }
        if errno() != libc::EPERM {
            return 2;
        }
        if libc::getpid() <= 0 {
            return 3;
        }
        0
    });
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0);
    assert!(!std::path::Path::new(dir.to_str().unwrap()).exists());
}

#[test]
fn errno_ret_and_argument_conditions() {
    // uname allowed, umask(0o22) fails with EACCES; umask with other values works;
    // getpriority with MaskedEq on the `which` argument gets ENOENT.
    let filter = seccomp::compile(&spec(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","defaultErrnoRet":1,
            "syscalls":[
              {"names":["umask"],"action":"SCMP_ACT_ERRNO","errnoRet":13,
               "args":[{"index":0,"value":18,"op":"SCMP_CMP_EQ"}]},
              {"names":["getpriority"],"action":"SCMP_ACT_ERRNO","errnoRet":2,
               "args":[{"index":0,"value":3,"valueTwo":1,"op":"SCMP_CMP_MASKED_EQ"}]},
              {"names":["no_such_syscall_anywhere"],"action":"SCMP_ACT_ERRNO"}
            ]}"#,
    ))
    .unwrap();
    let status = in_child(&filter, || unsafe {
        // libc's umask wrapper returns the old mask; the raw syscall shows the errno.
        if libc::syscall(libc::SYS_umask, 0o22) != -1 || errno() != libc::EACCES {
            return 1;
        }
        if libc::syscall(libc::SYS_umask, 0o77) == -1 {
            return 2;
        }
        // which = PRIO_PGRP (1): 1 & 3 == 1 → denied; PRIO_PROCESS (0) → allowed.
        if libc::syscall(libc::SYS_getpriority, 1, 0) != -1 || errno() != libc::ENOENT {
            return 3;
        }
        if libc::syscall(libc::SYS_getpriority, 0, 0) == -1 {
            return 4;
        }
        0
    });
    assert_eq!(libc::WEXITSTATUS(status), 0, "status {status:#x}");
}

#[test]
fn kill_process_action_kills_with_sigsys() {
    let filter = seccomp::compile(&spec(
        r#"{"defaultAction":"SCMP_ACT_ALLOW",
            "syscalls":[{"names":["getppid"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
    ))
    .unwrap();
    let status = in_child(&filter, || unsafe {
        libc::getppid();
        0
    });
    assert!(libc::WIFSIGNALED(status), "status {status:#x}");
    assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
}

#[test]
fn runtime_default_runs_busybox_and_denies_namespaces() {
    let profile = seccomp::runtime_default();
    let filter = seccomp::compile(&profile).unwrap();
    let busybox = CString::new("/bin/busybox").unwrap();
    let args = [
        CString::new("busybox").unwrap(),
        CString::new("sh").unwrap(),
        CString::new("-c").unwrap(),
        // A command substitution forks, so clone/fork pass the clone-flags rule.
        CString::new("x=$(echo hi); test \"$x\" = hi && exit 7").unwrap(),
    ];
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let status = in_child(&filter, || unsafe {
        // Not in the allowlist: EPERM even for root.
        if libc::unshare(libc::CLONE_NEWUTS) == 0 || errno() != libc::EPERM {
            return 1;
        }
        // clone with a namespace flag is refused by the argument rule.
        if libc::syscall(
            libc::SYS_clone,
            libc::CLONE_NEWNET | libc::SIGCHLD,
            0,
            0,
            0,
            0,
        ) >= 0
        {
            return 2;
        }
        // clone3 says ENOSYS so libc falls back to clone.
        if libc::syscall(libc::SYS_clone3, 0, 0) != -1 || errno() != libc::ENOSYS {
            return 3;
        }
        libc::execv(busybox.as_ptr(), argv.as_ptr());
        4
    });
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        7,
        "busybox did not run to the end"
    );
}

#[test]
fn bad_specs_name_the_field() {
    let cases = [
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO"},
               {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","args":[{"index":7,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
            "linux.seccomp.syscalls[1].args[0].index",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
            "linux.seccomp.syscalls[0].action",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_KILL","errnoRet":1}]}"#,
            "linux.seccomp.syscalls[0].errnoRet",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":70000}"#,
            "linux.seccomp.defaultAction",
        ),
    ];
    for (json, field) in cases {
        let err = seccomp::compile(&spec(json)).unwrap_err().to_string();
        assert!(err.contains(field), "{json}\n → {err}");
    }
    // An action name that is not an OCI action fails when the spec is read.
    let bad: Result<LinuxSeccomp, _> = serde_json::from_str(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_EXPLODE"}]}"#,
    );
    assert!(bad.is_err());
}

#[test]
fn runtime_default_for_sys_admin_opens_unshare_and_clone_flags() {
    let filter = seccomp::compile(&seccomp::runtime_default_for(&["CAP_SYS_ADMIN"])).unwrap();
    let status = in_child(&filter, || unsafe {
        // The child's own UTS namespace: allowed now, and it touches nothing outside.
        if libc::unshare(libc::CLONE_NEWUTS) != 0 {
            return 1;
        }
        // Still denied: reboot needs CAP_SYS_BOOT in the profile too.
        if libc::syscall(libc::SYS_reboot, 0, 0, 0, 0) != -1 || errno() != libc::EPERM {
            return 2;
        }
        0
    });
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0);
}

/// SCMP_ACT_NOTIFY: the child's listener fd travels child → runtime (socketpair) →
/// agent (listenerPath, with the process state); the agent answers the parked mkdir
/// with EXDEV, which the child sees.
#[test]
fn notify_reaches_the_agent_which_answers() {
    use hull_runtime::seccomp::notify;
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::net::{UnixListener, UnixStream};

    let sock_path =
        std::env::temp_dir().join(format!("hull-seccomp-agent-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock_path);
    struct Unlink(std::path::PathBuf);
    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _unlink = Unlink(sock_path.clone());
    let agent_sock = UnixListener::bind(&sock_path).unwrap();
    let filter = seccomp::compile(&spec(&format!(
        r#"{{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":{:?},"listenerMetadata":"m1",
            "syscalls":[{{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}}]}}"#,
        sock_path
    )))
    .unwrap();
    assert!(filter.needs_listener());

    let (parent_end, child_end) = UnixStream::pair().unwrap();
    let dir = tmp_path("notify");
    // SAFETY: the child only makes async-signal-safe calls (prctl, seccomp, sendmsg,
    // close, mkdir, _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                libc::_exit(100);
            }
            let Ok(Some(fd)) = filter.load_with_listener() else {
                libc::_exit(101);
            };
            if notify::send_fd(child_end.as_fd(), fd.as_fd(), b"listener").is_err() {
                libc::_exit(102);
            }
            drop(fd);
            let rc = libc::mkdir(dir.as_ptr(), 0o700);
            libc::_exit(if rc == -1 && errno() == libc::EXDEV {
                0
            } else {
                1
            });
        }
    }
    // Hang guard: whatever goes wrong below, the child cannot outlive 60 s.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if done_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .is_err()
        {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });

    let agent = std::thread::spawn(move || -> Result<(serde_json::Value, i32), String> {
        let (conn, _) = agent_sock.accept().map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 65536];
        let (n, fd) = notify::recv_fd(conn.as_fd(), &mut buf).map_err(|e| e.to_string())?;
        let fd = fd.ok_or("no fd from the runtime")?;
        let state: serde_json::Value =
            serde_json::from_slice(&buf[..n]).map_err(|e| e.to_string())?;
        // SAFETY: zeroed seccomp_notif as the kernel requires; fd is the listener.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) } != 0 {
            return Err(format!("NOTIF_RECV: {}", std::io::Error::last_os_error()));
        }
        let nr = req.data.nr;
        let mut resp = libc::seccomp_notif_resp {
            id: req.id,
            val: 0,
            error: -libc::EXDEV,
            flags: 0,
        };
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) } != 0 {
            return Err(format!("NOTIF_SEND: {}", std::io::Error::last_os_error()));
        }
        Ok((state, nr))
    });

    let mut buf = [0u8; 64];
    let (n, listener) = notify::recv_fd(parent_end.as_fd(), &mut buf).unwrap();
    assert_eq!(&buf[..n], b"listener");
    let listener = listener.expect("listener fd from the child");
    let mut state = oci_spec::runtime::ContainerProcessState::default();
    state.set_pid(pid);
    state.set_metadata(Some("m1".into()));
    notify::send_to_agent(&sock_path, listener.as_fd(), &state).unwrap();
    drop(listener);

    let (state, nr) = agent.join().unwrap().unwrap();
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let _ = done_tx.send(());
    assert_eq!(nr as i64, libc::SYS_mkdir);
    assert_eq!(state["fds"], serde_json::json!(["seccompFd"]));
    assert_eq!(state["pid"], pid);
    assert_eq!(state["metadata"], "m1");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status:#x}"
    );
    assert!(!std::path::Path::new(dir.to_str().unwrap()).exists());
}

/// `--explain` narrates the seccomp load (in the child, right before exec).
#[test]
fn explain_narrates_the_load() {
    if std::env::var_os("HULL_SECCOMP_EXPLAIN_CHILD").is_some() {
        hull_runtime::explain::set_enabled(true);
        let filter = seccomp::compile(&seccomp::runtime_default()).unwrap();
        let status = in_child(&filter, || 0);
        assert_eq!(libc::WEXITSTATUS(status), 0);
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "explain_narrates_the_load", "--nocapture"])
        .env("HULL_SECCOMP_EXPLAIN_CHILD", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[explain] seccomp(SECCOMP_SET_MODE_FILTER, flags=0x0, ")
            && err.contains("BPF instructions)"),
        "{err}"
    );
}

/// The cache hands back the same program without recompiling, keys on the profile's
/// content, and survives a corrupted entry by recompiling.
#[test]
fn compiled_filters_are_cached_by_content() {
    let dir = std::env::temp_dir().join(format!("hull-seccomp-cache-{}", std::process::id()));
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    let profile = seccomp::runtime_default();
    let first = seccomp::compile_cached(&profile, &dir).unwrap();
    let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(entries.len(), 1, "one entry per profile");
    let entry = entries[0].path();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let second = seccomp::compile_cached(&profile, &dir).unwrap();
    assert_eq!(first.len(), second.len());

    // A different profile is a different entry.
    let other =
        seccomp::compile_cached(&seccomp::runtime_default_for(&["CAP_SYS_ADMIN"]), &dir).unwrap();
    assert_ne!(other.len(), 0);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);

    // A corrupted entry is recompiled (and the result still works).
    std::fs::write(&entry, b"garbage").unwrap();
    let again = seccomp::compile_cached(&profile, &dir).unwrap();
    assert_eq!(again.len(), first.len());
    let dirname = tmp_path("cached");
    let status = in_child(&again, || unsafe {
        if libc::unshare(libc::CLONE_NEWUTS) == 0 || errno() != libc::EPERM {
            return 1;
        }
        if libc::mkdir(dirname.as_ptr(), 0o700) != 0 {
            return 2;
        }
        libc::rmdir(dirname.as_ptr());
        0
    });
    assert_eq!(libc::WEXITSTATUS(status), 0, "status {status:#x}");
}
