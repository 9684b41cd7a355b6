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
    /// The node's pod subnet for the default conflist.
    pub pod_subnet: String,
    /// Where the streaming server (exec/attach/port-forward URLs) listens.
    pub streaming_addr: SocketAddr,
    /// `HOST=URL` registry mirrors.
    pub registry_mirrors: Vec<String>,
    /// The `hull` executable re-exec'd as monitor, pause and exec helper.
    pub hull_exe: PathBuf,
}

impl Config {
    pub fn new(data_dir: &Path, socket: &Path) -> Config {
        let hull_exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("hull"));
        let mut bins = Vec::new();
        if let Some(d) = hull_exe.parent() {
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
            streaming_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            registry_mirrors: Vec::new(),
            hull_exe,
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
