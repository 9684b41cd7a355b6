//! `hull-runtime`: a runc-compatible OCI runtime command line over `hull_runtime`.
//!
//! Exit codes follow runc: 0 on success, 1 on error, and for a foreground `run`/`exec`
//! the container process's status (its exit code, or 128 + the signal that killed it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hull_runtime::container::{self, CreateOptions};
use hull_runtime::exec::{self, ExecOptions};
use hull_runtime::state::{DEFAULT_ROOT, State};

#[derive(Parser)]
#[command(
    name = "hull-runtime",
    version,
    about = "hull's OCI runtime (runc-compatible)"
)]
struct Cli {
    /// Where container state lives.
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Also write errors to this file (containerd reads it).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// `text` or `json` for --log.
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    #[arg(long, global = true)]
    debug: bool,
    /// Accepted for compatibility; cgroups are managed through cgroupfs.
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// Narrate every kernel step on stderr (clone, mounts, pivot_root, cgroup files...).
    #[arg(long, global = true)]
    explain: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct CreateArgs {
    /// Bundle directory (holds config.json).
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    #[arg(long)]
    console_socket: Option<PathBuf>,
    #[arg(long)]
    pid_file: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted for compatibility.
    #[arg(long)]
    no_pivot: bool,
    /// Accepted for compatibility.
    #[arg(long)]
    no_new_keyring: bool,
    id: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container; its process waits for `start`.
    Create(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Print a container's OCI state.
    State { id: String },
    /// Send a signal (default SIGTERM) to the container's init, or all its processes.
    Kill {
        #[arg(short, long)]
        all: bool,
        id: String,
        signal: Option<String>,
    },
    /// Delete a container (running ones only with --force).
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Create and start a container; wait for it unless --detach.
    Run {
        #[arg(short, long)]
        detach: bool,
        #[command(flatten)]
        c: CreateArgs,
    },
    /// Run a process in a running container.
    Exec {
        #[arg(short, long)]
        detach: bool,
        #[arg(short, long)]
        tty: bool,
        /// A process.json (OCI `process` object) instead of ARGS.
        #[arg(short, long)]
        process: Option<PathBuf>,
        #[arg(short, long)]
        env: Vec<String>,
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// uid[:gid]
        #[arg(short, long)]
        user: Option<String>,
        #[arg(short = 'g', long)]
        additional_gids: Vec<u32>,
        #[arg(short, long)]
        cap: Vec<String>,
        #[arg(long)]
        no_new_privs: bool,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        preserve_fds: u32,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List containers.
    List {
        #[arg(short, long, default_value = "table")]
        format: String,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Processes in a container (host pids).
    Ps {
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
    },
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Change a running container's resource limits.
    Update {
        /// linux.resources JSON file, `-` for stdin.
        #[arg(short, long)]
        resources: Option<PathBuf>,
        #[arg(long)]
        memory: Option<i64>,
        #[arg(long)]
        memory_reservation: Option<i64>,
        #[arg(long)]
        memory_swap: Option<i64>,
        #[arg(long)]
        cpu_shares: Option<u64>,
        #[arg(long)]
        cpu_quota: Option<i64>,
        #[arg(long)]
        cpu_period: Option<u64>,
        #[arg(long)]
        cpuset_cpus: Option<String>,
        #[arg(long)]
        cpuset_mems: Option<String>,
        #[arg(long)]
        pids_limit: Option<i64>,
        #[arg(long)]
        blkio_weight: Option<u16>,
        id: String,
    },
    /// Resource usage of a container (JSON); with --stats once, else every --interval.
    Events {
        #[arg(long)]
        stats: bool,
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// What this runtime supports (OCI features JSON).
    Features,
    /// Write a default config.json (like `runc spec`).
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        #[arg(long)]
        rootless: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    hull_runtime::explain::set_enabled(cli.explain);
    match dispatch(&cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            let msg = format!("{e:#}");
            let _ = writeln!(std::io::stderr(), "hull-runtime: {msg}");
            if let Some(log) = &cli.log {
                log_error(log, &cli.log_format, &msg);
            }
            ExitCode::from(1)
        }
    }
}

fn log_error(path: &Path, format: &str, msg: &str) {
    let time = hull_runtime::state::now_rfc3339();
    let line = if format == "json" {
        serde_json::json!({"level": "error", "msg": msg, "time": time}).to_string()
    } else {
        format!("time=\"{time}\" level=error msg={msg:?}")
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

fn create_opts(c: &CreateArgs, systemd: bool) -> CreateOptions {
    CreateOptions {
        console_socket: c.console_socket.clone(),
        console_fd: None,
        pid_file: c.pid_file.clone(),
        preserve_fds: c.preserve_fds,
        systemd_cgroup: systemd,
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let s = serde_json::to_string_pretty(v)?;
    println!("{s}");
    Ok(())
}

fn dispatch(cli: &Cli) -> Result<i32> {
    let root = &cli.root;
    // Commands that put processes into a container run from a sealed copy of this
    // binary, so nothing in the container can reach the file on disk (CVE-2019-5736).
    if matches!(cli.cmd, Cmd::Create(_) | Cmd::Run { .. } | Cmd::Exec { .. }) {
        hull_runtime::sealed_exe::ensure()?;
    }
    match &cli.cmd {
        Cmd::Create(c) => {
            container::create(root, &c.id, &c.bundle, &create_opts(c, cli.systemd_cgroup))?;
        }
        Cmd::Start { id } => container::start(root, id)?,
        Cmd::State { id } => print_json(&container::state(root, id)?.oci_json())?,
        Cmd::Kill { all, id, signal } => {
            let sig = parse_signal(signal.as_deref().unwrap_or("TERM"))?;
            container::kill(root, id, sig, *all)?;
        }
        Cmd::Delete { force, id } => match container::delete(root, id, *force) {
            // runc: `delete --force` of a container that does not exist is not an error.
            Err(hull_runtime::error::Error::NotFound(_)) if *force => {}
            r => r?,
        },
        Cmd::Run { detach, c } => {
            let opts = create_opts(c, cli.systemd_cgroup);
            if *detach {
                container::run_detached(root, &c.id, &c.bundle, &opts)?;
            } else {
                return Ok(container::run(root, &c.id, &c.bundle, &opts)?);
            }
        }
        Cmd::Exec { .. } => return exec_cmd(cli),
        Cmd::List { format, quiet } => list(root, format, *quiet)?,
        Cmd::Ps { format, id } => {
            let pids = container::pids(root, id)?;
            if format == "json" {
                print_json(&pids)?;
            } else {
                println!("PID");
                for p in pids {
                    println!("{p}");
                }
            }
        }
        Cmd::Pause { id } => container::pause(root, id)?,
        Cmd::Resume { id } => container::resume(root, id)?,
        Cmd::Update { .. } => update(cli)?,
        Cmd::Events {
            stats,
            interval,
            id,
        } => loop {
            let s = container::stats(root, id)?;
            print_json(&serde_json::json!({"type": "stats", "id": id, "data": s}))?;
            if *stats {
                break;
            }
            std::thread::sleep(parse_duration(interval)?);
        },
        Cmd::Features => print_json(&features())?,
        Cmd::Spec { bundle, rootless } => {
            let path = bundle.join("config.json");
            if path.exists() {
                bail!("{} already exists", path.display());
            }
            std::fs::write(&path, default_spec(*rootless))
                .with_context(|| format!("write {}", path.display()))?;
        }
    }
    Ok(0)
}

fn list(root: &Path, format: &str, quiet: bool) -> Result<()> {
    let all: Vec<State> = container::list(root)?;
    if quiet {
        for s in &all {
            println!("{}", s.id);
        }
    } else if format == "json" {
        print_json(&all.iter().map(State::oci_json).collect::<Vec<_>>())?;
    } else {
        println!(
            "{:<24} {:<8} {:<10} {:<40} {:<32}",
            "ID", "PID", "STATUS", "BUNDLE", "CREATED"
        );
        for s in &all {
            let pid = if s.status == hull_runtime::state::Status::Stopped {
                0
            } else {
                s.pid
            };
            println!(
                "{:<24} {:<8} {:<10} {:<40} {:<32}",
                s.id,
                pid,
                s.status,
                s.bundle.display(),
                s.created
            );
        }
    }
    Ok(())
}

fn exec_cmd(cli: &Cli) -> Result<i32> {
    let Cmd::Exec {
        detach,
        tty,
        process,
        env,
        cwd,
        user,
        additional_gids,
        cap,
        no_new_privs,
        console_socket,
        pid_file,
        preserve_fds,
        id,
        args,
    } = &cli.cmd
    else {
        bail!("not exec");
    };
    let p = match process {
        Some(f) => {
            let bytes = std::fs::read(f).with_context(|| format!("read {}", f.display()))?;
            let de = &mut serde_json::Deserializer::from_slice(&bytes);
            serde_path_to_error::deserialize(de)
                .map_err(|e| anyhow::anyhow!("{}: {}: {}", f.display(), e.path(), e.inner()))?
        }
        None => {
            if args.is_empty() {
                bail!("exec: no command given (ARGS or --process)");
            }
            container::state(&cli.root, id)?;
            let spec = container::saved_spec(&cli.root, id)?;
            let mut p = spec.process().clone().unwrap_or_default();
            p.set_args(Some(args.clone()));
            p.set_terminal(Some(*tty));
            let mut envs = p.env().clone().unwrap_or_default();
            for e in env {
                let key = e.split('=').next().unwrap_or_default();
                envs.retain(|x| x.split('=').next() != Some(key));
                envs.push(e.clone());
            }
            p.set_env(Some(envs));
            if let Some(c) = cwd {
                p.set_cwd(c.clone());
            }
            let mut u = p.user().clone();
            if let Some(spec) = user {
                let (uid, gid) = spec.split_once(':').unwrap_or((spec, "0"));
                u.set_uid(
                    uid.parse()
                        .with_context(|| format!("--user {spec:?}: uid"))?,
                );
                u.set_gid(
                    gid.parse()
                        .with_context(|| format!("--user {spec:?}: gid"))?,
                );
            }
            if !additional_gids.is_empty() {
                u.set_additional_gids(Some(additional_gids.clone()));
            }
            p.set_user(u);
            if !cap.is_empty() {
                let mut caps = p.capabilities().clone().unwrap_or_default();
                for c in cap {
                    let v: oci_spec::runtime::Capability =
                        serde_json::from_value(serde_json::Value::String(c.clone()))
                            .with_context(|| format!("--cap {c}"))?;
                    for set in [
                        caps.bounding().clone(),
                        caps.effective().clone(),
                        caps.permitted().clone(),
                    ]
                    .iter_mut()
                    {
                        set.get_or_insert_with(Default::default).insert(v);
                    }
                    let mut b = caps.bounding().clone().unwrap_or_default();
                    b.insert(v);
                    caps.set_bounding(Some(b));
                    let mut e = caps.effective().clone().unwrap_or_default();
                    e.insert(v);
                    caps.set_effective(Some(e));
                    let mut pm = caps.permitted().clone().unwrap_or_default();
                    pm.insert(v);
                    caps.set_permitted(Some(pm));
                }
                p.set_capabilities(Some(caps));
            }
            if *no_new_privs {
                p.set_no_new_privileges(Some(true));
            }
            p
        }
    };
    let opts = ExecOptions {
        process: p,
        detach: *detach,
        console_socket: console_socket.clone(),
        pid_file: pid_file.clone(),
        preserve_fds: *preserve_fds,
    };
    Ok(exec::exec(&cli.root, id, &opts)?)
}

fn update(cli: &Cli) -> Result<()> {
    let Cmd::Update {
        resources,
        memory,
        memory_reservation,
        memory_swap,
        cpu_shares,
        cpu_quota,
        cpu_period,
        cpuset_cpus,
        cpuset_mems,
        pids_limit,
        blkio_weight,
        id,
    } = &cli.cmd
    else {
        bail!("not update");
    };
    let mut v = match resources {
        Some(f) => {
            let bytes = if f.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                b
            } else {
                std::fs::read(f).with_context(|| format!("read {}", f.display()))?
            };
            serde_json::from_slice::<serde_json::Value>(&bytes).context("resources JSON")?
        }
        None => serde_json::json!({}),
    };
    let mut set = |section: &str, key: &str, val: serde_json::Value| {
        v[section][key] = val;
    };
    if let Some(x) = memory {
        set("memory", "limit", (*x).into());
    }
    if let Some(x) = memory_reservation {
        set("memory", "reservation", (*x).into());
    }
    if let Some(x) = memory_swap {
        set("memory", "swap", (*x).into());
    }
    if let Some(x) = cpu_shares {
        set("cpu", "shares", (*x).into());
    }
    if let Some(x) = cpu_quota {
        set("cpu", "quota", (*x).into());
    }
    if let Some(x) = cpu_period {
        set("cpu", "period", (*x).into());
    }
    if let Some(x) = cpuset_cpus {
        set("cpu", "cpus", x.clone().into());
    }
    if let Some(x) = cpuset_mems {
        set("cpu", "mems", x.clone().into());
    }
    if let Some(x) = pids_limit {
        set("pids", "limit", (*x).into());
    }
    if let Some(x) = blkio_weight {
        set("blockIO", "weight", (*x).into());
    }
    let bytes = serde_json::to_vec(&v)?;
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    let res: oci_spec::runtime::LinuxResources = serde_path_to_error::deserialize(de)
        .map_err(|e| anyhow::anyhow!("resources: {}: {}", e.path(), e.inner()))?;
    container::update(&cli.root, id, &res)?;
    Ok(())
}

fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return Ok(n);
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    let sig: nix::sys::signal::Signal = name
        .parse()
        .map_err(|_| anyhow::anyhow!("unknown signal {s:?}"))?;
    Ok(sig as i32)
}

fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let n: f64 = num.parse().with_context(|| format!("--interval {s:?}"))?;
    Ok(std::time::Duration::from_secs_f64(n * mul))
}

fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "bind", "rbind", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async",
            "dirsync", "remount", "mand", "nomand", "noatime", "atime", "nodiratime", "diratime", "relatime", "norelatime",
            "strictatime", "nostrictatime", "lazytime", "private", "rprivate", "shared", "rshared", "slave", "rslave",
            "unbindable", "runbindable", "tmpcopyup"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps::all().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": true},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        }
    })
}

/// runc's default spec: a read-only-friendly, unprivileged-capabilities container
/// running `sh` with a terminal.
fn default_spec(rootless: bool) -> String {
    let mut v: serde_json::Value = serde_json::from_str(DEFAULT_SPEC).unwrap_or_default();
    if rootless {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        if let Some(a) = v["linux"]["namespaces"].as_array_mut() {
            a.push(serde_json::json!({"type": "user"}));
        }
        v["linux"]["uidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": uid, "size": 1}]);
        v["linux"]["gidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": gid, "size": 1}]);
        v["linux"]["resources"] = serde_json::Value::Null;
    }
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

const DEFAULT_SPEC: &str = r#"{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": true,
    "user": {"uid": 0, "gid": 0},
    "args": ["sh"],
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
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
  "hostname": "hull",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
  ],
  "linux": {
    "resources": {"devices": [{"allow": false, "access": "rwm"}]},
    "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
    "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
      "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
  }
}"#;
