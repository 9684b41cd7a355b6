//! Test fixtures for the runtime tests: a busybox bundle built from Debian's
//! `busybox-static`, a `hull-runtime` invoker with its own `--root`, and leak checks.
//! Everything a test creates is removed by Drop guards, even when the test fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_hull-runtime");

/// A unique name for this test: `<tag>-<pid>`.
pub fn unique(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

/// A bundle dir with a busybox rootfs and a runc-like default config.
pub struct Bundle {
    pub dir: PathBuf,
    pub config: Value,
}

impl Bundle {
    pub fn new(tag: &str, args: &[&str]) -> Bundle {
        let dir = PathBuf::from("/var/tmp/hull-rt-tests").join(unique(tag));
        let _ = std::fs::remove_dir_all(&dir);
        let rootfs = dir.join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
            std::fs::create_dir_all(rootfs.join(d)).expect("mkdir rootfs");
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("busybox-static is installed (tests/setup)");
        std::fs::copy(busybox, rootfs.join("bin/busybox")).expect("copy busybox");
        let list = Command::new(busybox)
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
            }
        }
        let config = default_config(args);
        let b = Bundle { dir, config };
        b.save();
        b
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Edits config.json through `f` and writes it back.
    pub fn edit(&mut self, f: impl FnOnce(&mut Value)) {
        f(&mut self.config);
        self.save();
    }

    pub fn save(&self) {
        std::fs::write(
            self.dir.join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn default_config(args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "hulltest",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// `hull-runtime` with a private `--root`; Drop force-deletes every container it made
/// and removes the root.
pub struct Rt {
    pub root: PathBuf,
    pub ids: std::cell::RefCell<Vec<String>>,
}

impl Rt {
    pub fn new(tag: &str) -> Rt {
        let root = PathBuf::from("/run/hull-rt-tests").join(unique(tag));
        let _ = std::fs::remove_dir_all(&root);
        Rt {
            root,
            ids: Default::default(),
        }
    }

    /// A container id unique to this test process; remembered for cleanup.
    pub fn id(&self, tag: &str) -> String {
        let id = format!("{}-{}", unique("t"), tag);
        self.ids.borrow_mut().push(id.clone());
        id
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--root").arg(&self.root);
        c
    }

    /// Runs `hull-runtime ARGS` (in `cwd`) with a hard timeout; panics on timeout.
    pub fn run_in(&self, cwd: &Path, args: &[&str]) -> Output {
        let mut c = self.cmd();
        c.args(args).current_dir(cwd).stdin(Stdio::null());
        run_with_timeout(c, Duration::from_secs(60))
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_in(Path::new("/"), args)
    }

    /// `run` of the bundle in the foreground: (exit code, stdout, stderr).
    pub fn run_bundle(&self, b: &Bundle, id: &str) -> (i32, String, String) {
        let o = self.run_in(&b.dir, &["run", id]);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    pub fn state(&self, id: &str) -> Value {
        let o = self.run(&["state", id]);
        assert!(
            o.status.success(),
            "state {id}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).expect("state JSON")
    }

    /// Asserts nothing of container `id` is left: state dir, cgroup dirs, processes.
    pub fn assert_gone(&self, id: &str) {
        assert!(
            !self.root.join(id).exists(),
            "state dir of {id} left behind"
        );
        let leaks = cgroup_dirs(id);
        assert!(leaks.is_empty(), "cgroups of {id} left behind: {leaks:?}");
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        for id in self.ids.borrow().iter() {
            let _ = self
                .cmd()
                .args(["delete", "--force", id])
                .stdin(Stdio::null())
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Every directory named `id` in any cgroup hierarchy.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let p = e.path();
                if e.file_name() == id {
                    out.push(p.clone());
                }
                // hull's containers live one or two levels down; do not walk the world.
                if p.components().count() < 7 {
                    stack.push(p);
                }
            }
        }
    }
    out
}

/// Runs `c` with a hard timeout. stdout/stderr go to files, not pipes: a detached
/// container inherits them and would otherwise hold a pipe open long after the runtime
/// exited.
pub fn run_with_timeout(mut c: Command, limit: Duration) -> Output {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = PathBuf::from("/var/tmp/hull-rt-tests/out");
    std::fs::create_dir_all(&dir).expect("mkdir out");
    let (po, pe) = (
        dir.join(format!("{}-{n}.out", std::process::id())),
        dir.join(format!("{}-{n}.err", std::process::id())),
    );
    c.stdout(std::fs::File::create(&po).expect("stdout file"))
        .stderr(std::fs::File::create(&pe).expect("stderr file"));
    let mut child = c.spawn().expect("spawn hull-runtime");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let err = std::fs::read_to_string(&pe).unwrap_or_default();
            let _ = (std::fs::remove_file(&po), std::fs::remove_file(&pe));
            panic!(
                "hull-runtime {:?} hung for {limit:?}; stderr: {err}",
                c.get_args().collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let out = Output {
        status,
        stdout: std::fs::read(&po).unwrap_or_default(),
        stderr: std::fs::read(&pe).unwrap_or_default(),
    };
    let _ = (std::fs::remove_file(&po), std::fs::remove_file(&pe));
    out
}

/// Polls `f` until true or ~`secs` seconds pass (for kernel state that settles, not as
/// a timing assertion).
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

pub fn is_cgroup_v2_only() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.contains(" /sys/fs/cgroup ") && l.contains(" - cgroup2 "))
        })
        .unwrap_or(false)
}

/// Host mounts mentioning `path` (a container's mounts must never show up on the host).
pub fn host_mounts_under(path: &Path) -> Vec<String> {
    let p = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&p))
        .map(String::from)
        .collect()
}
