//! Shared by the store tests and benchmark: a real etcd started on free loopback ports,
//! and the backends under test.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hull_control::store::{self, CacheConfig, CachedStore, Store, StoreError};

pub mod suite;

/// A real `etcd` on 127.0.0.1 with its own data dir; killed (by PID) and removed on drop.
pub struct Etcd {
    child: Child,
    pub url: String,
    pub dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

impl Etcd {
    pub async fn start() -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix(&format!("hull-etcd-{}-", std::process::id()))
            .tempdir()
            .expect("temp dir for etcd");
        let (client, peer) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log file");
        let log2 = log.try_clone().expect("etcd log file");
        let child = Command::new("etcd")
            .args(["--name", "hull-test"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &format!("hull-test=http://127.0.0.1:{peer}")])
            .args(["--initial-cluster-state", "new"])
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .expect("start etcd (Debian package etcd-server; tests/setup installs it)");
        let etcd = Etcd {
            child,
            url: format!("etcd://127.0.0.1:{client}"),
            dir,
        };
        for _ in 0..300 {
            if store::open(&etcd.url).await.is_ok() {
                return etcd;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(etcd.dir.path().join("etcd.log")).unwrap_or_default();
        panic!("etcd did not come up on {}; its log:\n{log}", etcd.url);
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
