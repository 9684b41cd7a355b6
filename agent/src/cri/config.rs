//! Where one CRI server instance keeps things. Everything is derived from the data dir
//! unless a flag says otherwise, so several instances (tests) run side by side.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hull_runtime::image::bundle::runtime_dir;

#[derive(Debug, Clone)]
pub struct Config {
    /// `--data-dir`: images, snapshots, sandbox and container records.
    pub data_dir: PathBuf,
    /// The gRPC unix socket.
    pub socket: PathBuf,
    /// CNI conflists; a default hull-bridge one is written here if it holds none.
    pub cni_conf_dir: PathBuf,
    /// CNI plugin dirs (`CNI_PATH`).
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The node's pod subnet for the default conflist (a CIDR, or an IPv4 and an IPv6
    /// one separated by a comma).
    pub pod_subnet: String,
    /// The bridge of the default conflist.
    pub cni_bridge: String,
    /// Write no default conflist until UpdateRuntimeConfig gives the pod CIDR
    /// (NetworkReady is false until then), as containerd's CNI config template.
    pub await_pod_cidr: bool,
    /// The cluster's pod CIDR(s) (`V4[,V6]`): destinations pods reach with their own
    /// address, the default conflist's `nonMasqueradeCIDRs` (pod-to-pod across nodes
    /// without NAT). None: masquerade everything outside the node's pod subnet.
    pub cluster_cidr: Option<String>,
    /// Where the streaming server (exec/attach/port-forward URLs) listens.
    pub streaming_addr: SocketAddr,
    /// `HOST=URL` registry mirrors.
    pub registry_mirrors: Vec<String>,
    /// The `hull` executable re-exec'd as monitor, pause and exec helper.
    pub hull_exe: PathBuf,
    /// `hull-shim` (beside `hull` on disk, or `HULL_SHIM`): what pause processes and
    /// monitors run as once a container exists. None: the `hull` binary does (more
    /// memory per pod). See `shim`.
    pub shim_exe: Option<PathBuf>,
}

impl Config {
    pub fn new(data_dir: &Path, socket: &Path) -> Config {
        let on_disk = exe_on_disk();
        // Running from a sealed copy (`sealed_exe`), current_exe() names a file inside a
        // detached mount or a memfd: helpers are spawned through /proc/self/exe, which is
        // that copy, so they run sealed too.
        let hull_exe = if hull_runtime::sealed_exe::is_running_sealed() {
            PathBuf::from("/proc/self/exe")
        } else {
            on_disk.clone()
        };
        let shim_exe = super::shim::find(&on_disk);
        let mut bins = Vec::new();
        if let Some(d) = on_disk.parent() {
            bins.push(d.to_path_buf());
        }
        bins.push(PathBuf::from("/opt/cni/bin"));
        bins.push(PathBuf::from("/usr/lib/cni"));
        Config {
            data_dir: data_dir.to_path_buf(),
            socket: socket.to_path_buf(),
            cni_conf_dir: data_dir.join("cni/net.d"),
            cni_bin_dirs: bins,
            pod_subnet: "10.244.0.0/24".into(),
            cni_bridge: "hull0".into(),
            await_pod_cidr: false,
            cluster_cidr: None,
            streaming_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            registry_mirrors: Vec::new(),
            hull_exe,
            shim_exe,
        }
    }

    /// `/run/hull/<hash of data dir>`: volatile state (mounts, netns, runtime state).
    pub fn run_dir(&self) -> PathBuf {
        runtime_dir(&self.data_dir)
    }
    /// `hull_runtime`'s state root for CRI containers.
    pub fn oci_root(&self) -> PathBuf {
        self.run_dir().join("cri-oci")
    }
    pub fn netns_dir(&self) -> PathBuf {
        self.run_dir().join("netns")
    }
    pub fn sandboxes_dir(&self) -> PathBuf {
        self.data_dir.join("cri/sandboxes")
    }
    pub fn containers_dir(&self) -> PathBuf {
        self.data_dir.join("cri/containers")
    }
    pub fn cni_cache_dir(&self) -> PathBuf {
        self.data_dir.join("cni/cache")
    }
    pub fn ipam_dir(&self) -> PathBuf {
        self.data_dir.join("cni/networks")
    }
}

/// Where `remember_exe_on_disk` keeps the binary's path across the sealed re-exec.
const EXE_ON_DISK_ENV: &str = "HULL_EXE_ON_DISK";

/// Records this binary's path on disk in the environment, before
/// `hull_runtime::sealed_exe::ensure` re-execs from a copy whose path says nothing of
/// where the file lives. Call it while the process is single-threaded (at start-up).
pub fn remember_exe_on_disk() {
    if hull_runtime::sealed_exe::is_running_sealed() {
        return;
    }
    if let Ok(p) = std::env::current_exe() {
        // SAFETY: called at start-up, before any thread exists that could read the
        // environment concurrently.
        unsafe { std::env::set_var(EXE_ON_DISK_ENV, p) };
    }
}

/// The `hull` binary's path on disk: what `remember_exe_on_disk` recorded when running
/// from a sealed copy, else `current_exe()`. Only used to find hull-bridge beside it.
fn exe_on_disk() -> PathBuf {
    if hull_runtime::sealed_exe::is_running_sealed()
        && let Some(p) = std::env::var_os(EXE_ON_DISK_ENV)
    {
        return PathBuf::from(p);
    }
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("hull"))
}
