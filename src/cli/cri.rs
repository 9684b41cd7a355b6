//! `hull cri`: the CRI v1 server alone, for a real kubelet, `crictl` or hull's agent.
//! The hidden `--internal-*` modes are the same binary re-exec'd as a container's
//! monitor, a pod's pause process, or an exec helper.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use hull_agent::cri;

#[derive(Debug, Args)]
pub struct CriArgs {
    /// The gRPC unix socket to serve CRI v1 on.
    #[arg(long, default_value = "/run/hull/cri.sock")]
    pub socket: PathBuf,

    /// CNI conflist dir (default DATA/cni/net.d; a hull-bridge conflist is written if empty).
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,

    /// CNI plugin dirs (repeatable; default: next to `hull`, /opt/cni/bin, /usr/lib/cni).
    #[arg(long = "cni-bin-dir")]
    pub cni_bin_dir: Vec<PathBuf>,

    /// This node's pod subnet, for the default conflist (dual-stack: `V4CIDR,V6CIDR`).
    #[arg(long, default_value = "10.244.0.0/24")]
    pub pod_subnet: String,

    /// The cluster's pod CIDR(s) (`V4CIDR[,V6CIDR]`): pods reach these with their own
    /// address (the default conflist's `nonMasqueradeCIDRs`); unset, everything outside
    /// the node's pod subnet is masqueraded.
    #[arg(long)]
    pub cluster_cidr: Option<String>,

    /// The bridge of the default conflist.
    #[arg(long, default_value = "hull0")]
    pub cni_bridge: String,

    /// Write no default conflist until UpdateRuntimeConfig gives the node's pod CIDR
    /// (NetworkReady false until then), as containerd's CNI config template.
    #[arg(long)]
    pub await_pod_cidr: bool,

    /// Where the streaming server (exec URLs) listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub streaming_addr: SocketAddr,

    /// Registry mirror `HOST=URL` (repeatable), tried before HOST itself.
    #[arg(long = "registry-mirror", value_name = "HOST=URL")]
    pub registry_mirror: Vec<String>,

    #[arg(long, hide = true)]
    pub internal_monitor: Option<String>,
    #[arg(long, hide = true)]
    pub internal_pause: Option<String>,
    #[arg(long, hide = true)]
    pub internal_exec: Option<String>,
}

pub fn run(data_dir: &Path, args: CriArgs) -> anyhow::Result<ExitCode> {
    let code = |c: i32| ExitCode::from(c.clamp(0, 255) as u8);
    // CVE-2019-5736: the monitors create containers and the exec helper enters them, so
    // every mode runs from a copy of the binary nothing in a container can write. The
    // server spawns its helpers from /proc/self/exe (that copy), so they need no
    // re-exec of their own; the path on disk is kept for finding hull-bridge beside it.
    cri::config::remember_exe_on_disk();
    hull_runtime::sealed_exe::ensure().context("re-exec hull from a sealed copy")?;
    if let Some(s) = &args.internal_monitor {
        return Ok(code(cri::monitor::main(s)));
    }
    if let Some(s) = &args.internal_pause {
        return Ok(code(cri::pause::main(s)));
    }
    if let Some(s) = &args.internal_exec {
        return Ok(code(cri::exec::main(s)));
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let data_dir = std::fs::canonicalize(data_dir)
        .with_context(|| format!("resolve {}", data_dir.display()))?;
    let mut cfg = cri::Config::new(&data_dir, &args.socket);
    if let Some(d) = args.cni_conf_dir {
        cfg.cni_conf_dir = d;
    }
    if !args.cni_bin_dir.is_empty() {
        cfg.cni_bin_dirs = args.cni_bin_dir;
    }
    cfg.pod_subnet = args.pod_subnet;
    cfg.cni_bridge = args.cni_bridge;
    cfg.await_pod_cidr = args.await_pod_cidr;
    cfg.cluster_cidr = args.cluster_cidr;
    cfg.streaming_addr = args.streaming_addr;
    cfg.registry_mirrors = args.registry_mirror;
    cri::server::run(cfg).context("hull cri")?;
    Ok(ExitCode::SUCCESS)
}
