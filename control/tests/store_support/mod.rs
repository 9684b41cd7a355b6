//! Shared by the store tests and benchmark: a real etcd started on free loopback ports,
//! and the backends under test.
#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hull_control::store::{self, CacheConfig, CachedStore, Store, StoreError};

pub mod suite;

/// A real `etcd` on 127.0.0.1 with its own data dir; killed (by PID) and removed on drop.
pub struct Etcd {
    child: Child,
    client_port: u16,
    peer_port: u16,
    pub url: String,
    pub dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

fn spawn_etcd(dir: &Path, client: u16, peer: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("etcd.log"))
        .expect("etcd log file");
    let log2 = log.try_clone().expect("etcd log file");
    let mut cmd = Command::new("etcd");
    // etcd dies with the test even if the test process is killed before Drop runs.
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd.args(["--name", "hull-test"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args([
            "--listen-client-urls",
            &format!("http://127.0.0.1:{client}"),
        ])
        .args([
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{client}"),
        ])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .args([
            "--initial-cluster",
            &format!("hull-test=http://127.0.0.1:{peer}"),
        ])
        .args(["--initial-cluster-state", "new"])
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .spawn()
        .expect("start etcd (Debian package etcd-server; tests/setup installs it)")
}

/// Removes data dirs of etcds whose test process died without cleaning up (killed by a
/// timeout): each holds a 64 MiB preallocated WAL.
fn sweep_dead_etcd_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("hull-etcd-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Etcd {
    pub async fn start() -> Etcd {
        sweep_dead_etcd_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("hull-etcd-{}-", std::process::id()))
            .tempdir()
            .expect("temp dir for etcd");
        let (client_port, peer_port) = (free_port(), free_port());
        let child = spawn_etcd(dir.path(), client_port, peer_port);
        let etcd = Etcd {
            child,
            client_port,
            peer_port,
            url: format!("etcd://127.0.0.1:{client_port}"),
            dir,
        };
        etcd.wait_ready().await;
        etcd
    }

    async fn wait_ready(&self) {
        for _ in 0..300 {
            if store::open(&self.url).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        panic!("etcd did not come up on {}; its log:\n{log}", self.url);
    }

    /// Kills etcd (SIGKILL, as a crash) and starts it again on the same ports and data.
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_etcd(self.dir.path(), self.client_port, self.peer_port);
        self.wait_ready().await;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which store a test runs against; holds what must outlive it (temp dir, etcd process).
pub enum Backend {
    Sqlite(tempfile::TempDir),
    Etcd(Etcd),
}

impl Backend {
    pub async fn sqlite() -> Backend {
        Backend::Sqlite(
            tempfile::Builder::new()
                .prefix(&format!("hull-sqlite-{}-", std::process::id()))
                .tempdir()
                .expect("temp dir"),
        )
    }

    pub async fn etcd() -> Backend {
        Backend::Etcd(Etcd::start().await)
    }

    pub fn url(&self) -> String {
        match self {
            Backend::Sqlite(dir) => format!("sqlite:{}", dir.path().join("state.db").display()),
            Backend::Etcd(etcd) => etcd.url.clone(),
        }
    }

    pub async fn open(&self) -> Arc<dyn Store> {
        store::open(&self.url())
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", self.url()))
    }

    pub async fn open_cached(&self, window: usize) -> Arc<dyn Store> {
        let config = CacheConfig {
            window,
            ..CacheConfig::default()
        };
        Arc::new(
            CachedStore::new(self.open().await, config)
                .await
                .expect("start the watch cache"),
        )
    }

    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Backend::Sqlite(dir) => Some(dir.path()),
            Backend::Etcd(_) => None,
        }
    }
}

/// A key prefix no other test uses.
pub fn prefix(test: &str) -> String {
    format!("/registry/{test}-{}/", std::process::id())
}

pub fn is_compacted(e: &StoreError) -> bool {
    matches!(e, StoreError::Compacted { .. })
}
