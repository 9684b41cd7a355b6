//! Containers: CreateContainer prepares the image's overlay bundle, edits its OCI
//! spec from the CRI config (`spec`), and starts a monitor that creates the container
//! through `hull_runtime`; Start opens the exec fifo; the monitor records the exit.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_runtime::image::ImageStore;
use hull_runtime::image::bundle::{Bundle, ContainerOptions, runtime_dir};
use hull_runtime::state::Status;
use k8s_cri::v1::{
    Container, ContainerConfig, ContainerFilter, ContainerStatus, ImageSpec,
    LinuxContainerResources,
};

use super::config::Config;
use super::error::{CriError, Result};
use super::monitor::MonitorSpec;
use super::records::{self, ContainerRecord, ExitRecord, load_json, now_ns, save_json};
use super::sandbox;
use super::spec::{self, PodView};

pub const CREATED: i32 = 0;
pub const RUNNING: i32 = 1;
pub const EXITED: i32 = 2;
pub const UNKNOWN: i32 = 3;

pub fn dir(cfg: &Config, id: &str) -> PathBuf {
    cfg.containers_dir().join(id)
}

pub fn ids(cfg: &Config) -> Vec<String> {
    records::list_ids(&cfg.containers_dir())
}

pub fn load(cfg: &Config, id: &str) -> Result<ContainerRecord> {
    let id = records::resolve_id(&ids(cfg), id, "container")?;
    load_json(&dir(cfg, &id).join("container.json"))
}

pub fn in_sandbox(cfg: &Config, sandbox_id: &str) -> Vec<String> {
    ids(cfg)
        .into_iter()
        .filter(|id| {
            load_json::<ContainerRecord>(&dir(cfg, id).join("container.json"))
                .is_ok_and(|r| r.sandbox_id == sandbox_id)
        })
        .collect()
}

pub fn exit_record(cfg: &Config, id: &str) -> Option<ExitRecord> {
    load_json(&dir(cfg, id).join("exit.json")).ok()
}

fn bundle_of(cfg: &Config, id: &str) -> Bundle {
    let d = runtime_dir(&cfg.data_dir).join("bundles").join(id);
    Bundle {
        id: id.to_string(),
        rootfs: d.join("rootfs"),
        dir: d,
        state: cfg.data_dir.join("containers").join(id),
    }
}

fn signal_number(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse() {
        return Some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    nix::sys::signal::Signal::iterator()
        .find(|sig| sig.as_str().strip_prefix("SIG") == Some(name))
        .map(|s| s as i32)
}

/// CreateContainer.
pub fn create(
    cfg: &Config,
    store: &ImageStore,
    sandbox_id: &str,
    c: ContainerConfig,
) -> Result<String> {
    let sb = sandbox::load(cfg, sandbox_id)?;
    if !sandbox::pause_alive(&sb) || sb.stopped {
        return Err(CriError::FailedPrecondition(format!(
            "pod sandbox {} is not ready",
            sb.id
        )));
    }
    let md = c
        .metadata
        .clone()
        .ok_or_else(|| CriError::InvalidArgument("config.metadata: required".into()))?;
    if md.name.is_empty() {
        return Err(CriError::InvalidArgument(
            "config.metadata.name: must not be empty".into(),
        ));
    }
    let image = c
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    if image.is_empty() {
        return Err(CriError::InvalidArgument(
            "config.image.image: must not be empty".into(),
        ));
    }
    for k in ids(cfg) {
        if let Ok(r) = load_json::<ContainerRecord>(&dir(cfg, &k).join("container.json"))
            && r.sandbox_id == sb.id
            && r.config
                .metadata
                .as_ref()
                .is_some_and(|m| m.name == md.name && m.attempt == md.attempt)
        {
            return Err(CriError::AlreadyExists(format!(
                "container {:?} attempt {} already exists in pod sandbox {} ({k})",
                md.name, md.attempt, sb.id
            )));
        }
    }
    let rec_img = store.get(&image).map_err(|_| {
        CriError::NotFound(format!(
            "config.image.image: image {image:?} not found (pull it first)"
        ))
    })?;
    let img_cfg = store.config(&rec_img)?;
    for (i, e) in c.envs.iter().enumerate() {
        if e.key.is_empty() || e.key.contains('=') {
            return Err(CriError::InvalidArgument(format!(
                "config.envs[{i}].key: {:?} is not a valid name",
                e.key
            )));
        }
    }
    let id = records::new_id()?;
    let d = dir(cfg, &id);
    fs::create_dir_all(&d).map_err(CriError::io(format!("create {}", d.display())))?;
    let log_dir = sb.config.log_directory.clone();
    let log_path = if log_dir.is_empty() || c.log_path.is_empty() {
        String::new()
    } else {
        Path::new(&log_dir).join(&c.log_path).display().to_string()
    };
    let stop_signal = img_cfg
        .config
        .as_ref()
        .and_then(|x| x.stop_signal.as_deref())
        .and_then(signal_number)
        .unwrap_or(libc::SIGTERM);
    let rec = ContainerRecord {
        id: id.clone(),
        sandbox_id: sb.id.clone(),
        config: c.clone(),
        created_at: now_ns(),
        started_at: 0,
        image_name: image.clone(),
        image_id: rec_img.config_digest.clone(),
        image_ref: format!(
            "{}@{}",
            rec_img
                .name
                .split([':', '@'])
                .next()
                .unwrap_or(&rec_img.name),
            rec_img.manifest_digest
        ),
        log_path,
        stop_signal,
        pod_labels: sb.config.labels.clone(),
    };
    save_json(&d.join("container.json"), &rec)?;
    let r = build(cfg, store, &rec, &sb, &rec_img);
    if let Err(e) = r {
        let _ = hull_runtime::container::delete(&cfg.oci_root(), &id, true);
        let _ = bundle_of(cfg, &id).teardown(store, true);
        let _ = fs::remove_dir_all(&d);
        return Err(e);
    }
    Ok(id)
}

fn build(
    cfg: &Config,
    store: &ImageStore,
    rec: &ContainerRecord,
    sb: &records::SandboxRecord,
    img: &hull_runtime::image::ImageRecord,
) -> Result<()> {
    let c = &rec.config;
    let env: Vec<String> = c
        .envs
        .iter()
        .map(|kv| format!("{}={}", kv.key, kv.value))
        .collect();
    let cmd = if c.command.is_empty() {
        c.args.clone()
    } else {
        [c.command.clone(), c.args.clone()].concat()
    };
    let opts = ContainerOptions {
        cmd,
        env,
        memory: None,
        hostname: None,
        unconfined: false,
    };
    let bundle = Bundle::prepare(store, &rec.id, img, &opts).map_err(|e| match e {
        hull_runtime::image::Error::Other(m) if m.contains("environment") => {
            CriError::InvalidArgument(format!("config.envs: {m}"))
        }
        e => CriError::Image(e),
    })?;
    let sc = c
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    let resolve = |u: &str| {
        hull_runtime::image::runconfig::resolve_user(&bundle.rootfs, Some(u)).map_err(|e| {
            CriError::InvalidArgument(format!("config.linux.security_context.run_as_user: {e}"))
        })
    };
    let mut user = None;
    if !sc.run_as_username.is_empty() {
        user = Some(resolve(&sc.run_as_username)?);
    } else if let Some(u) = &sc.run_as_user {
        if u.value < 0 {
            return Err(CriError::InvalidArgument(format!(
                "config.linux.security_context.run_as_user: {} must not be negative",
                u.value
            )));
        }
        user = Some(resolve(&u.value.to_string())?);
    }
    if let Some(g) = &sc.run_as_group {
        if g.value < 0 {
            return Err(CriError::InvalidArgument(format!(
                "config.linux.security_context.run_as_group: {} must not be negative",
                g.value
            )));
        }
        let (uid, _, extra) = match user.take() {
            Some(u) => u,
            None => resolve("0")?,
        };
        user = Some((uid, g.value as u32, extra));
    }
    let p = bundle.dir.join("config.json");
    let mut v: serde_json::Value = load_json(&p)?;
    let pod = PodView {
        netns: sb.netns.clone(),
        pause_pid: sb.pause_pid,
        pid_ns: sandbox::pid_ns(sb),
        host_pid: sb
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .is_some_and(|n| n.pid == spec::NS_NODE),
        host_ipc: sb
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .is_some_and(|n| n.ipc == spec::NS_NODE),
        sandbox_dir: sandbox::dir(cfg, &sb.id),
        cgroup_parent: sb.cgroup_parent.clone(),
    };
    spec::apply(&mut v, c, &pod, &rec.id, user)?;
    save_json(&p, &v)?;
    let mspec = MonitorSpec {
        oci_root: cfg.oci_root(),
        id: rec.id.clone(),
        bundle: bundle.dir.clone(),
        // Without a log path, a private capped log in the record dir: Attach follows it.
        log_path: Some(output_path(cfg, rec)),
        log_cap: rec.log_path.is_empty().then_some(PRIVATE_LOG_CAP),
        exit_path: dir(cfg, &rec.id).join("exit.json"),
        cgroups_path: v["linux"]["cgroupsPath"].as_str().map(String::from),
        stdin_fifo: c.stdin.then(|| dir(cfg, &rec.id).join("stdin")),
        stdin_once: c.stdin_once,
        shim_fd: super::shim::exe_fd(cfg),
        // The monitor reopens our fd: no fd to inherit, so no pre_exec closure, so std
        // spawns it with posix_spawn instead of a fork of this process (whose page-table
        // copy and copy-on-write faults, with TLB shootdowns across our threads, cost
        // more than the monitor's own start-up).
        shim_owner: Some(std::process::id() as i32),
    };
    let json = serde_json::to_string(&mspec).map_err(|e| CriError::Internal(e.to_string()))?;
    let (pid, report) = sandbox::spawn_helper(
        sandbox::hull_helper(cfg, "--internal-monitor", &json),
        "container monitor",
        None,
    )?;
    // Its pid and start time: while it lives, an exited init is still being recorded
    // (pipes drained, then exit.json), see `state`. The pid stays through its exec.
    if let Some((_, start)) = hull_runtime::state::proc_stat(pid) {
        let _ = fs::write(
            dir(cfg, &rec.id).join(MONITOR_FILE),
            format!("{pid} {start}\n"),
        );
    }
    if !report.starts_with("ok") {
        let msg = report.strip_prefix("error: ").unwrap_or(&report);
        return Err(CriError::Internal(format!("create container: {msg}")));
    }
    Ok(())
}

/// `PID STARTTIME` of the container's monitor, in its record dir.
const MONITOR_FILE: &str = "monitor";

/// Whether the container's monitor is still the process it was (it writes exit.json).
fn monitor_alive(cfg: &Config, id: &str) -> bool {
    let Ok(text) = fs::read_to_string(dir(cfg, id).join(MONITOR_FILE)) else {
        return false;
    };
    let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    match (f.next().flatten(), f.next().flatten()) {
        (Some(pid), Some(start)) => hull_runtime::state::process_alive(pid as i32, start),
        _ => false,
    }
}

/// Size past which a private log (container without a log path) starts over.
const PRIVATE_LOG_CAP: u64 = 1 << 20;

/// The file the monitor writes the container's output to in the CRI format: the log
/// path the caller gave, else a private one in the record dir (what Attach follows).
pub fn output_path(cfg: &Config, rec: &ContainerRecord) -> PathBuf {
    if rec.log_path.is_empty() {
        dir(cfg, &rec.id).join("output.log")
    } else {
        PathBuf::from(&rec.log_path)
    }
}

/// The container's CRI state and, when exited, its exit record.
pub fn state(cfg: &Config, rec: &ContainerRecord) -> (i32, Option<ExitRecord>) {
    if let Some(x) = exit_record(cfg, &rec.id) {
        return (EXITED, Some(x));
    }
    // Not the runtime's `container::state`: its freezer check reads and parses
    // /proc/self/mountinfo per call (per container per List), and Paused is RUNNING to
    // the CRI anyway.
    let root = cfg.oci_root();
    let st = hull_runtime::state::load(&root, &rec.id).map(|mut st| {
        hull_runtime::state::refresh(&root, &mut st, |_| false);
        st
    });
    match st {
        Ok(st) => match st.status {
            Status::Created | Status::Creating => (CREATED, None),
            Status::Running | Status::Paused => (RUNNING, None),
            // The init is gone but its monitor is still recording the exit (draining the
            // pipes, then exit.json): running until then, as containerd until its shim
            // reports the exit; otherwise a status read in between got code 255.
            Status::Stopped if monitor_alive(cfg, &rec.id) => (RUNNING, None),
            // The monitor died before recording the exit: the code is unknown.
            Status::Stopped => (
                EXITED,
                Some(ExitRecord {
                    exit_code: 255,
                    finished_at: 0,
                    oom_killed: false,
                }),
            ),
        },
        Err(_) => (UNKNOWN, None),
    }
}

pub fn start(cfg: &Config, id: &str) -> Result<()> {
    let mut rec = load(cfg, id)?;
    let (st, _) = state(cfg, &rec);
    if st != CREATED {
        return Err(CriError::FailedPrecondition(format!(
            "container {} is not in the created state",
            rec.id
        )));
    }
    hull_runtime::container::start(&cfg.oci_root(), &rec.id)?;
    rec.started_at = now_ns();
    save_json(&dir(cfg, &rec.id).join("container.json"), &rec)
}

fn wait_exit(cfg: &Config, id: &str, timeout: Duration) -> bool {
    let t = Instant::now();
    loop {
        if exit_record(cfg, id).is_some() {
            return true;
        }
        if t.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// StopContainer: the stop signal, then SIGKILL to every process after `timeout` s.
pub fn stop(cfg: &Config, id: &str, timeout: i64) -> Result<()> {
    let rec = load(cfg, id)?;
    let root = cfg.oci_root();
    if !matches!(state(cfg, &rec).0, CREATED | RUNNING) {
        return Ok(());
    }
    if timeout > 0 {
        let _ = hull_runtime::container::kill(&root, &rec.id, rec.stop_signal, false);
        if wait_exit(cfg, &rec.id, Duration::from_secs(timeout as u64)) {
            return Ok(());
        }
    }
    let _ = hull_runtime::container::kill(&root, &rec.id, libc::SIGKILL, true);
    if !wait_exit(cfg, &rec.id, Duration::from_secs(10))
        && matches!(state(cfg, &rec).0, CREATED | RUNNING)
    {
        return Err(CriError::Internal(format!(
            "container {} did not exit after SIGKILL",
            rec.id
        )));
    }
    Ok(())
}

/// StopContainer's signal step, for a caller that waits for the exit itself (without
/// holding a thread for the grace period): the stop signal, or with `kill` SIGKILL to
/// every process. The record's id to wait on, or `None` when it no longer runs.
pub fn signal_stop(cfg: &Config, id: &str, kill: bool) -> Result<Option<String>> {
    let rec = load(cfg, id)?;
    if !matches!(state(cfg, &rec).0, CREATED | RUNNING) {
        return Ok(None);
    }
    let root = cfg.oci_root();
    let _ = if kill {
        hull_runtime::container::kill(&root, &rec.id, libc::SIGKILL, true)
    } else {
        hull_runtime::container::kill(&root, &rec.id, rec.stop_signal, false)
    };
    Ok(Some(rec.id))
}

/// RemoveContainer: kills it if needed, deletes runtime state, rootfs and record.
pub fn remove(cfg: &Config, id: &str) -> Result<()> {
    let rec = match load(cfg, id) {
        Ok(r) => r,
        Err(CriError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    stop(cfg, &rec.id, 0)?;
    match hull_runtime::container::delete(&cfg.oci_root(), &rec.id, true) {
        Ok(()) | Err(hull_runtime::error::Error::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let store = ImageStore::open(&cfg.data_dir)?;
    bundle_of(cfg, &rec.id).teardown(&store, true)?;
    let d = dir(cfg, &rec.id);
    fs::remove_dir_all(&d).map_err(CriError::io(format!("remove {}", d.display())))
}

pub fn status(cfg: &Config, id: &str) -> Result<ContainerStatus> {
    let rec = load(cfg, id)?;
    let (st, exit) = state(cfg, &rec);
    let mut s = ContainerStatus {
        id: rec.id.clone(),
        metadata: rec.config.metadata.clone(),
        state: st,
        created_at: rec.created_at,
        started_at: rec.started_at,
        image: Some(ImageSpec {
            image: rec.image_name.clone(),
            ..Default::default()
        }),
        image_ref: rec.image_ref.clone(),
        image_id: rec.image_id.clone(),
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
        mounts: rec.config.mounts.clone(),
        log_path: rec.log_path.clone(),
        ..Default::default()
    };
    if let Some(x) = exit {
        s.finished_at = x.finished_at;
        s.exit_code = x.exit_code;
        s.reason = if x.oom_killed {
            "OOMKilled"
        } else if x.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
        .into();
    }
    Ok(s)
}

pub fn list(cfg: &Config, f: Option<ContainerFilter>) -> Vec<Container> {
    let f = f.unwrap_or_default();
    let mut out = Vec::new();
    for id in ids(cfg) {
        if !f.id.is_empty() && !id.starts_with(&f.id) {
            continue;
        }
        let Ok(rec) = load_json::<ContainerRecord>(&dir(cfg, &id).join("container.json")) else {
            continue;
        };
        // The record's own fields first: the state costs reads of the kernel.
        if (!f.pod_sandbox_id.is_empty() && !rec.sandbox_id.starts_with(&f.pod_sandbox_id))
            || !labels_match(&rec.config.labels, &f.label_selector)
        {
            continue;
        }
        let (st, _) = state(cfg, &rec);
        if f.state.as_ref().is_some_and(|s| s.state != st) {
            continue;
        }
        out.push(Container {
            id: rec.id,
            pod_sandbox_id: rec.sandbox_id,
            metadata: rec.config.metadata.clone(),
            image: Some(ImageSpec {
                image: rec.image_name.clone(),
                ..Default::default()
            }),
            image_ref: rec.image_ref,
            image_id: rec.image_id,
            state: st,
            created_at: rec.created_at,
            labels: rec.config.labels,
            annotations: rec.config.annotations,
        });
    }
    out.sort_by_key(|c| c.created_at);
    out
}

fn labels_match(labels: &HashMap<String, String>, sel: &HashMap<String, String>) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub fn update_resources(cfg: &Config, id: &str, r: &LinuxContainerResources) -> Result<()> {
    let rec = load(cfg, id)?;
    let v = spec::resources(r, "linux")?;
    let res: oci_spec::runtime::LinuxResources =
        serde_json::from_value(v).map_err(|e| CriError::InvalidArgument(format!("linux: {e}")))?;
    hull_runtime::container::update(&cfg.oci_root(), &rec.id, &res)?;
    Ok(())
}

/// ReopenContainerLog: the monitor reopens the log file on SIGUSR1.
pub fn reopen_log(cfg: &Config, id: &str) -> Result<()> {
    let rec = load(cfg, id)?;
    if state(cfg, &rec).0 != RUNNING {
        return Err(CriError::FailedPrecondition(format!(
            "container {} is not running",
            rec.id
        )));
    }
    let pid = monitor_pid(cfg, &rec.id).ok_or_else(|| {
        CriError::FailedPrecondition(format!("monitor of container {} is gone", rec.id))
    })?;
    // SAFETY: signalling the monitor (found as the parent of the container's init).
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    // Answer once the monitor has the new file open, as containerd does (log rotation
    // renames the old file and expects the new one when the call returns).
    if !rec.log_path.is_empty() {
        let p = Path::new(&rec.log_path);
        let t = Instant::now();
        while !p.exists() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(())
}

/// The monitor is the init's parent (it is the subreaper the init was reparented to).
fn monitor_pid(cfg: &Config, id: &str) -> Option<i32> {
    let st = hull_runtime::container::state(&cfg.oci_root(), id).ok()?;
    let stat = fs::read_to_string(format!("/proc/{}/stat", st.pid)).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(1)?.parse().ok()
}

/// At start-up: containers whose record was never completed (a crash inside
/// CreateContainer: no runtime state, no exit) are removed with their rootfs.
pub fn reconcile(cfg: &Config) {
    for id in ids(cfg) {
        let d = dir(cfg, &id);
        let rec = load_json::<ContainerRecord>(&d.join("container.json"));
        let runtime_known = hull_runtime::container::state(&cfg.oci_root(), &id).is_ok();
        if rec.is_err() || (!runtime_known && exit_record(cfg, &id).is_none()) {
            tracing::warn!(container = %id, "removing a container left half-made by a crash");
            let _ = hull_runtime::container::delete(&cfg.oci_root(), &id, true);
            if let Ok(store) = ImageStore::open(&cfg.data_dir) {
                let _ = bundle_of(cfg, &id).teardown(&store, true);
            }
            let _ = fs::remove_dir_all(&d);
        }
    }
}
