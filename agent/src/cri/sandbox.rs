//! Pod sandboxes: a record dir, a named netns with the CNI attachment, and hull's
//! pause process holding the UTS/IPC namespaces. Every step is undone if a later one
//! fails; a `creating` marker lets a restarted server finish undoing a sandbox whose
//! creation was cut short by a crash.

use std::collections::HashMap;
use std::fs;
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1::{
    LinuxPodSandboxStatus, Namespace, NamespaceOption, PodIp, PodSandbox, PodSandboxConfig,
    PodSandboxFilter, PodSandboxNetworkStatus, PodSandboxStatus,
};

use super::config::Config;
use super::error::{CriError, Result};
use super::pause::PauseSpec;
use super::records::{self, SandboxRecord, load_json, now_ns, save_json};
use super::spec::{NS_NODE, NS_POD};
use super::{container, netns, network};

pub const READY: i32 = 0;
pub const NOTREADY: i32 = 1;
const CREATING: &str = "creating";
const DEFAULT_CGROUP_PARENT: &str = "/hull.cri";

pub fn dir(cfg: &Config, id: &str) -> PathBuf {
    cfg.sandboxes_dir().join(id)
}

pub fn ids(cfg: &Config) -> Vec<String> {
    records::list_ids(&cfg.sandboxes_dir())
}

pub fn load(cfg: &Config, id: &str) -> Result<SandboxRecord> {
    let id = records::resolve_id(&ids(cfg), id, "pod sandbox")?;
    load_json(&dir(cfg, &id).join("sandbox.json"))
}

fn ns_options(c: &PodSandboxConfig) -> NamespaceOption {
    c.linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

pub fn host_network(c: &PodSandboxConfig) -> bool {
    ns_options(c).network == NS_NODE
}

/// `pid: POD` (`shareProcessNamespace`, and crictl's default): the pause process is PID 1
/// of a new pid namespace that the pod's containers join, as containerd's sandbox
/// container is.
fn shares_pid(c: &PodSandboxConfig) -> bool {
    ns_options(c).pid == NS_POD
}

/// The pod's pid namespace for its containers to join: the pause's, if it has one of its
/// own. (A pause started before pods had one — or a hostPID pod's — shares the server's,
/// which a container must never join.)
pub fn pid_ns(rec: &SandboxRecord) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    if !pause_alive(rec) {
        return None;
    }
    let p = PathBuf::from(format!("/proc/{}/ns/pid", rec.pause_pid));
    let theirs = fs::metadata(&p).ok()?;
    let ours = fs::metadata("/proc/self/ns/pid").ok()?;
    (theirs.ino() != ours.ino() || theirs.dev() != ours.dev()).then_some(p)
}

/// The pause process's cgroup: `<cgroup parent>/<sandbox id>`, beside the containers'
/// `<cgroup parent>/<container id>`, as containerd places the sandbox container.
fn pause_cgroup(rec: &SandboxRecord) -> Option<hull_runtime::cgroups::CgroupManager> {
    let path = format!("{}/{}", rec.cgroup_parent.trim_end_matches('/'), rec.id);
    hull_runtime::cgroups::CgroupManager::new(Some(&path), &rec.id)
        .map_err(|e| tracing::warn!(sandbox = %rec.id, "pause cgroup {path}: {e}"))
        .ok()
}

/// systemd slice names (`kubepods-besteffort-pod1.slice`) → their cgroupfs path.
fn cgroup_parent(c: &PodSandboxConfig) -> String {
    let p = c
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.clone())
        .unwrap_or_default();
    if p.is_empty() {
        return DEFAULT_CGROUP_PARENT.into();
    }
    if let Some(name) = p.strip_suffix(".slice")
        && !p.contains('/')
    {
        let mut path = String::new();
        let mut prefix = String::new();
        for part in name.split('-') {
            prefix = if prefix.is_empty() {
                part.to_string()
            } else {
                format!("{prefix}-{part}")
            };
            path.push_str(&format!("/{prefix}.slice"));
        }
        return path;
    }
    p
}

pub fn pause_alive(r: &SandboxRecord) -> bool {
    r.pause_pid > 0 && alive(r.pause_pid, r.pause_start)
}

/// Alive and not a zombie, and still the process we started (start time matches).
pub fn alive(pid: i32, start: u64) -> bool {
    matches!(hull_runtime::state::proc_stat(pid), Some((s, t)) if s != 'Z' && t == start)
}

/// SIGKILLs `pid` (if still ours) and waits for it to be gone.
pub fn kill_wait(pid: i32, start: u64) {
    if pid <= 0 || !alive(pid, start) {
        return;
    }
    // SAFETY: signalling a pid we verified by start time.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let t = Instant::now();
    while alive(pid, start) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `hull cri <mode> <json>`: the `hull` binary as a helper.
pub fn hull_helper(cfg: &Config, mode: &str, json: &str) -> Command {
    let mut cmd = Command::new(&cfg.hull_exe);
    cmd.args(["cri", mode, json]);
    cmd
}

/// Starts a helper (`cmd`) in its own session and reads its one-line report; the
/// reaper waits for it when it exits (while we are still its parent). `inherit` is an fd of ours
/// the helper keeps (close-on-exec cleared in the child only).
pub fn spawn_helper(mut cmd: Command, what: &str, inherit: Option<i32>) -> Result<(i32, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    match inherit {
        // Without a closure std spawns with posix_spawn (a vfork: no copy of this
        // process's page tables, and no copy-on-write faults and TLB shootdowns across
        // its threads afterwards, which a fork of the ~100 MB `hull up` costs per pod).
        // Its own process group keeps a terminal's Ctrl-C from reaching the helper.
        None => {
            cmd.process_group(0);
        }
        // SAFETY: setsid and fcntl are async-signal-safe.
        Some(fd) => unsafe {
            cmd.pre_exec(move || {
                libc::setsid();
                libc::fcntl(fd, libc::F_SETFD, 0);
                Ok(())
            });
        },
    }
    let mut child = cmd.spawn().map_err(CriError::io(format!("spawn {what}")))?;
    let pid = child.id() as i32;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    reap(child);
    Ok((pid, line.trim().to_string()))
}

/// Helpers still running, reaped by one thread when they exit.
static HELPERS: std::sync::Mutex<Vec<std::process::Child>> = std::sync::Mutex::new(Vec::new());
/// Children started with `clone` (pause processes in a pid namespace of their own).
static RAW_HELPERS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Starts `exe` (argv `argv`) as PID 1 of a new pid namespace, in its own session, with
/// stdout on a pipe, and reads its one-line report. `clone(CLONE_NEWPID)` from here:
/// `unshare` would move only the helper's children, and the pause must itself be the
/// namespace's init, which reaps the pod's orphans. `CLONE_VM | CLONE_VFORK` as
/// posix_spawn does (no copy of the server's page tables); the child only calls
/// async-signal-safe functions on memory prepared before the clone, then execs.
pub fn spawn_pid1(exe: &Path, argv: &[std::ffi::OsString], what: &str) -> Result<(i32, String)> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let cstr = |s: &std::ffi::OsStr| {
        CString::new(s.as_bytes()).map_err(|_| CriError::Internal(format!("{what}: NUL in {s:?}")))
    };
    let path = cstr(exe.as_os_str())?;
    let args: Vec<CString> = argv.iter().map(|a| cstr(a)).collect::<Result<_>>()?;
    let mut ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let null = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(CriError::io("open /dev/null"))?;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| CriError::Internal(format!("{what}: pipe: {e}")))?;
    let (null_fd, wr_fd) = (null.as_raw_fd(), wr.as_raw_fd());
    unsafe extern "C" {
        static environ: *const *const libc::c_char;
    }
    let mut stack = vec![0u8; 64 * 1024];
    let child = Box::new(|| -> isize {
        // SAFETY: raw syscalls on fds and C strings made before the clone.
        unsafe {
            libc::dup2(null_fd, 0);
            libc::dup2(wr_fd, 1);
            libc::dup2(null_fd, 2);
            libc::setsid();
            libc::execve(path.as_ptr(), ptrs.as_ptr(), environ);
            libc::_exit(127)
        }
    });
    let flags = nix::sched::CloneFlags::CLONE_NEWPID
        | nix::sched::CloneFlags::CLONE_VM
        | nix::sched::CloneFlags::CLONE_VFORK;
    // SAFETY: the child runs only the closure above (no allocation, no locks).
    let pid = unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(|e| CriError::Internal(format!("{what}: clone(CLONE_NEWPID): {e}")))?
        .as_raw();
    drop(wr);
    if let Ok(mut h) = RAW_HELPERS.lock() {
        h.push(pid);
    }
    start_reaper();
    let mut line = String::new();
    let _ = std::io::BufReader::new(fs::File::from(rd)).read_line(&mut line);
    Ok((pid, line.trim().to_string()))
}

/// Hands a helper (a pause or a container monitor, which live as long as their pod)
/// to the reaper: one thread polling every helper with a WNOHANG wait every 200 ms,
/// where a thread blocked in `wait` per helper made two threads per pod (500+ at 250
/// pods). A helper that exited stays a zombie until the next round at most, which
/// `alive` already counts as gone.
fn reap(child: std::process::Child) {
    if let Ok(mut h) = HELPERS.lock() {
        h.push(child);
    }
    start_reaper();
}

fn start_reaper() {
    static REAPER: std::sync::Once = std::sync::Once::new();
    REAPER.call_once(|| {
        let started = std::thread::Builder::new()
            .name("cri-reaper".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(Duration::from_millis(200));
                    if let Ok(mut h) = HELPERS.lock() {
                        h.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
                    }
                    if let Ok(mut h) = RAW_HELPERS.lock() {
                        // SAFETY: waitpid on our own children only.
                        h.retain(|&p| unsafe {
                            libc::waitpid(p, std::ptr::null_mut(), libc::WNOHANG) == 0
                        });
                    }
                }
            });
        if let Err(e) = started {
            tracing::error!("cannot start the helper reaper thread: {e}");
        }
    });
}

fn write_etc_files(d: &Path, c: &PodSandboxConfig, hostname: &str) -> Result<()> {
    let w = |name: &str, data: String| {
        fs::write(d.join(name), data)
            .map_err(CriError::io(format!("write {}", d.join(name).display())))
    };
    w("hostname", format!("{hostname}\n"))?;
    w(
        "hosts",
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
        ),
    )?;
    let resolv = match &c.dns_config {
        Some(dns) => {
            let mut s = String::new();
            if !dns.searches.is_empty() {
                s.push_str(&format!("search {}\n", dns.searches.join(" ")));
            }
            for ns in &dns.servers {
                s.push_str(&format!("nameserver {ns}\n"));
            }
            if !dns.options.is_empty() {
                s.push_str(&format!("options {}\n", dns.options.join(" ")));
            }
            s
        }
        None => fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    w("resolv.conf", resolv)
}

/// RunPodSandbox.
pub fn run(cfg: &Config, c: PodSandboxConfig) -> Result<String> {
    let md = c
        .metadata
        .clone()
        .ok_or_else(|| CriError::InvalidArgument("config.metadata: required".into()))?;
    if md.name.is_empty() {
        return Err(CriError::InvalidArgument(
            "config.metadata.name: must not be empty".into(),
        ));
    }
    // sethostname(2) takes at most 64 bytes (HOST_NAME_MAX).
    if c.hostname.len() > 64 {
        return Err(CriError::InvalidArgument(format!(
            "config.hostname: {:?} is {} bytes, longer than the kernel's 64",
            c.hostname,
            c.hostname.len()
        )));
    }
    let id = records::new_id()?;
    let d = dir(cfg, &id);
    fs::create_dir_all(&d).map_err(CriError::io(format!("create {}", d.display())))?;
    fs::write(d.join(CREATING), b"").map_err(CriError::io("write creating marker"))?;
    let host_net = host_network(&c);
    let mut rec = SandboxRecord {
        id: id.clone(),
        config: c.clone(),
        created_at: now_ns(),
        netns: (!host_net).then(|| cfg.netns_dir().join(&id)),
        pause_pid: 0,
        pause_start: 0,
        ip: String::new(),
        additional_ips: Vec::new(),
        network: None,
        stopped: false,
        cgroup_parent: cgroup_parent(&c),
    };
    let r = build(cfg, &mut rec, &d);
    if let Err(e) = r {
        teardown(cfg, &rec);
        let _ = fs::remove_dir_all(&d);
        return Err(e);
    }
    fs::remove_file(d.join(CREATING)).map_err(CriError::io("remove creating marker"))?;
    Ok(id)
}

fn build(cfg: &Config, rec: &mut SandboxRecord, d: &Path) -> Result<()> {
    let c = rec.config.clone();
    let nso = ns_options(&c);
    save_json(&d.join("sandbox.json"), rec)?;
    // No hostname asked for: the node's, as containerd does (kubelet always sets one).
    let hostname = if host_network(&c) || c.hostname.is_empty() {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        c.hostname.clone()
    };
    write_etc_files(d, &c, &hostname)?;
    // Phase times, at debug level: where a slow RunPodSandbox spends its time.
    let t0 = Instant::now();
    if let Some(ns) = &rec.netns {
        netns::create(ns)?;
    }
    let t_netns = t0.elapsed();
    let mut sysctls: Vec<(String, String)> = c
        .linux
        .as_ref()
        .map(|l| l.sysctls.clone().into_iter().collect())
        .unwrap_or_default();
    sysctls.sort();
    for (k, _) in &sysctls {
        if k.is_empty() || k.contains("..") || k.starts_with('/') {
            return Err(CriError::InvalidArgument(format!(
                "config.linux.sysctls: bad name {k:?}"
            )));
        }
    }
    let spec = PauseSpec {
        netns: rec.netns.clone(),
        new_uts: rec.netns.is_some(),
        new_ipc: nso.ipc != NS_NODE,
        hostname,
        sysctls,
    };
    let cmd = match super::shim::command(cfg, "pause") {
        Some(mut cmd) => {
            cmd.args(spec.shim_args());
            cmd
        }
        None => {
            let json =
                serde_json::to_string(&spec).map_err(|e| CriError::Internal(e.to_string()))?;
            hull_helper(cfg, "--internal-pause", &json)
        }
    };
    let (pid, report) = if shares_pid(&c) {
        let mut argv = vec![std::ffi::OsString::from(
            if cmd.get_program() == cfg.hull_exe.as_os_str() {
                "hull"
            } else {
                "hull-shim"
            },
        )];
        argv.extend(cmd.get_args().map(|a| a.to_os_string()));
        spawn_pid1(Path::new(cmd.get_program()), &argv, "pause process")?
    } else {
        spawn_helper(cmd, "pause process", None)?
    };
    let t_pause = t0.elapsed();
    rec.pause_pid = pid;
    rec.pause_start = hull_runtime::state::proc_stat(pid)
        .map(|(_, t)| t)
        .unwrap_or(0);
    save_json(&d.join("sandbox.json"), rec)?;
    if report != "ok" {
        let msg = report
            .strip_prefix("error: ")
            .unwrap_or(&report)
            .to_string();
        if msg.starts_with("sysctls[") {
            return Err(CriError::InvalidArgument(format!("config.linux.{msg}")));
        }
        return Err(CriError::Internal(format!("pause process: {msg}")));
    }
    // In the pod's cgroup, so the pod's usage and limits count it, as the kubelet
    // expects of a sandbox. It is idle from its report on; moving it then is enough.
    if let Some(cg) = pause_cgroup(rec) {
        cg.add_task(pid).map_err(|e| {
            CriError::Internal(format!(
                "pause process into cgroup {}: {e}",
                cg.path().display()
            ))
        })?;
    }
    let t_cgroup = t0.elapsed();
    if let Some(ns) = rec.netns.clone() {
        rec.network = Some(network::load(cfg)?.name);
        save_json(&d.join("sandbox.json"), rec)?;
        let (_, ips) = network::add(cfg, &rec.id, &ns, &c)?;
        rec.ip = ips.first().cloned().unwrap_or_default();
        rec.additional_ips = ips.iter().skip(1).cloned().collect();
    }
    let ms = |d: Duration| d.as_micros() as f64 / 1000.0;
    tracing::debug!(
        sandbox = %rec.id,
        netns_ms = ms(t_netns),
        pause_ms = ms(t_pause - t_netns),
        cgroup_ms = ms(t_cgroup - t_pause),
        network_ms = ms(t0.elapsed() - t_cgroup),
        "sandbox built"
    );
    save_json(&d.join("sandbox.json"), rec)
}

/// Undoes the kernel side of a sandbox: pause process, CNI attachment, netns.
fn teardown(cfg: &Config, rec: &SandboxRecord) {
    kill_wait(rec.pause_pid, rec.pause_start);
    if let Some(cg) = pause_cgroup(rec)
        && cg.paths().values().any(|p| p.exists())
        && let Err(e) = cg.delete()
    {
        tracing::warn!(sandbox = %rec.id, "pause cgroup {}: {e}", cg.path().display());
    }
    if let Some(ns) = &rec.netns {
        if rec.network.is_some()
            && ns.exists()
            && let Err(e) = network::del(cfg, &rec.id, ns, &rec.config)
        {
            tracing::warn!(sandbox = %rec.id, "{e}");
        }
        if let Err(e) = netns::remove(ns) {
            tracing::warn!(sandbox = %rec.id, "{e}");
        }
    }
}

/// StopPodSandbox: kills its containers, the pause process, and releases the network.
pub fn stop(cfg: &Config, id: &str) -> Result<()> {
    let mut rec = load(cfg, id)?;
    for c in container::in_sandbox(cfg, &rec.id) {
        container::stop(cfg, &c, 0)?;
    }
    teardown(cfg, &rec);
    rec.stopped = true;
    save_json(&dir(cfg, &rec.id).join("sandbox.json"), &rec)
}

/// RemovePodSandbox: stops it first (as containerd does), removes its containers.
pub fn remove(cfg: &Config, id: &str) -> Result<()> {
    let rec = match load(cfg, id) {
        Ok(r) => r,
        Err(CriError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    stop(cfg, &rec.id)?;
    for c in container::in_sandbox(cfg, &rec.id) {
        container::remove(cfg, &c)?;
    }
    let d = dir(cfg, &rec.id);
    fs::remove_dir_all(&d).map_err(CriError::io(format!("remove {}", d.display())))
}

fn state_of(rec: &SandboxRecord) -> i32 {
    if !rec.stopped && pause_alive(rec) {
        READY
    } else {
        NOTREADY
    }
}

pub fn status(cfg: &Config, id: &str) -> Result<PodSandboxStatus> {
    let rec = load(cfg, id)?;
    let nso = ns_options(&rec.config);
    Ok(PodSandboxStatus {
        id: rec.id.clone(),
        metadata: rec.config.metadata.clone(),
        state: state_of(&rec),
        created_at: rec.created_at,
        network: Some(PodSandboxNetworkStatus {
            ip: rec.ip.clone(),
            additional_ips: rec
                .additional_ips
                .iter()
                .map(|ip| PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace { options: Some(nso) }),
        }),
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
        runtime_handler: String::new(),
    })
}

fn labels_match(labels: &HashMap<String, String>, sel: &HashMap<String, String>) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub fn list(cfg: &Config, f: Option<PodSandboxFilter>) -> Vec<PodSandbox> {
    let f = f.unwrap_or_default();
    let mut out = Vec::new();
    for id in ids(cfg) {
        if !f.id.is_empty() && !id.starts_with(&f.id) {
            continue;
        }
        if dir(cfg, &id).join(CREATING).exists() {
            continue;
        }
        let Ok(rec) = load_json::<SandboxRecord>(&dir(cfg, &id).join("sandbox.json")) else {
            continue;
        };
        // The labels first: the state costs a read of /proc.
        if !labels_match(&rec.config.labels, &f.label_selector) {
            continue;
        }
        let state = state_of(&rec);
        if f.state.as_ref().is_some_and(|s| s.state != state) {
            continue;
        }
        out.push(PodSandbox {
            id: rec.id,
            metadata: rec.config.metadata,
            state,
            created_at: rec.created_at,
            labels: rec.config.labels,
            annotations: rec.config.annotations,
            runtime_handler: String::new(),
        });
    }
    out.sort_by_key(|p| p.created_at);
    out
}

/// At start-up: sandboxes cut short mid-creation are undone and removed; sandboxes
/// whose pause process died are torn down (NOTREADY) so nothing stays mounted.
pub fn reconcile(cfg: &Config) {
    for id in ids(cfg) {
        let d = dir(cfg, &id);
        let rec: Option<SandboxRecord> = load_json(&d.join("sandbox.json")).ok();
        if d.join(CREATING).exists() {
            if let Some(r) = &rec {
                teardown(cfg, r);
            }
            let _ = fs::remove_dir_all(&d);
            continue;
        }
        if let Some(mut r) = rec
            && !r.stopped
            && !pause_alive(&r)
        {
            teardown(cfg, &r);
            r.stopped = true;
            let _ = save_json(&d.join("sandbox.json"), &r);
        }
    }
    // Netns files without a sandbox (a crash between mount and record).
    if let Ok(rd) = fs::read_dir(cfg.netns_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !d_exists(cfg, &name) {
                let _ = netns::remove(&e.path());
            }
        }
    }
}

fn d_exists(cfg: &Config, id: &str) -> bool {
    dir(cfg, id).join("sandbox.json").exists()
}
