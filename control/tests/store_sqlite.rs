//! SQLite-specific behaviour: crash safety (a writer killed mid-stream keeps every
//! revision it was told about), the single-process lock, bad or unreachable store URLs,
//! compaction reclaiming rows, and the periodic compactor on a real store.

mod store_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hull_control::store::{self, CompactorConfig, SqliteStore, Store, StoreError, spawn_compactor};
use store_support::prefix;

const CHILD_ENV: &str = "HULL_STORE_CRASH_CHILD_DB";

fn temp_dir(test: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("hull-{test}-{}-", std::process::id()))
        .tempdir()
        .expect("temp dir")
}

/// Run by `sqlite_keeps_every_committed_revision_after_kill` in a child process: 16
/// concurrent writers (so commits are grouped) write until killed, each printing a key and
/// its revision once the store has acknowledged the write.
#[test]
#[ignore = "helper: runs only as the crash test's child process"]
fn crash_child_writer() {
    let Ok(db) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = store::open(&format!("sqlite:{db}")).await.expect("open");
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut prev: Option<(String, i64)> = None;
                    for i in 0u64.. {
                        let key = format!("/registry/crash/w{w:02}-k{i:08}");
                        let rev = store.create(&key, vec![b'x'; 512]).await.expect("create");
                        // Updates too, so the log has superseded rows and old values.
                        if let Some((k, r)) = prev.take() {
                            let r2 = store
                                .update(&k, b"updated".to_vec(), r)
                                .await
                                .expect("update");
                            println!("{k} {r2}");
                        }
                        println!("{key} {rev}");
                        prev = Some((key, rev));
                    }
                })
            })
            .collect();
        for w in writers {
            let _ = w.await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_every_committed_revision_after_kill() {
    let dir = temp_dir("crash");
    let db = dir.path().join("state.db");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the writer");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().expect("child stdout");
    let mut child = Kill(child);
    let mut committed = std::collections::BTreeMap::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child");
        let Some((key, rev)) = line.split_once(' ') else {
            continue;
        };
        let Ok(rev) = rev.parse::<i64>() else {
            continue;
        };
        committed.insert(key.to_owned(), rev);
        if committed.len() == 2000 {
            break;
        }
    }
    assert_eq!(committed.len(), 2000, "the writer stopped early");
    // SIGKILL in the middle of writing: no chance to flush or close anything.
    child.0.kill().expect("kill the writer");
    child.0.wait().expect("reap the writer");

    let store = store::open(&format!("sqlite:{}", db.display()))
        .await
        .expect("reopen after kill");
    for (key, rev) in &committed {
        let kv = store
            .get(key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{key} lost"));
        assert!(
            kv.mod_revision >= *rev,
            "{key}: revision {rev} lost (now {})",
            kv.mod_revision
        );
    }
    let max = committed.values().max().copied().unwrap_or(0);
    let current = store.current_revision().await.unwrap();
    assert!(current >= max);
    // The store keeps working and never reuses a revision.
    let next = store
        .create("/registry/crash/after", b"v".to_vec())
        .await
        .unwrap();
    assert!(next > current);
    let listed = store.list("/registry/crash/", None, 0, 0).await.unwrap();
    assert!(listed.items.len() > 1000);
}

#[tokio::test]
async fn a_second_opener_of_the_same_file_is_refused() {
    let dir = temp_dir("lock");
    let db = dir.path().join("state.db");
    let first = SqliteStore::open(&db).expect("first open");
    match SqliteStore::open(&db) {
        Err(StoreError::Unavailable(msg)) => assert!(msg.contains("in use"), "{msg}"),
        Err(e) => panic!("second open: {e}"),
        Ok(_) => panic!("two stores on one SQLite file"),
    }
    drop(first);
    SqliteStore::open(&db).expect("open again after the first closed");
}

#[tokio::test]
async fn bad_store_urls_say_what_is_wrong() {
    let err = |r: Result<Arc<dyn Store>, StoreError>| match r {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened a bad URL"),
    };
    assert!(err(store::open("mysql://x").await).contains("expected sqlite:PATH or etcd://"));
    assert!(err(store::open("sqlite:").await).contains("needs a file path"));
    assert!(err(store::open("etcd://").await).contains("at least one host:port"));
    let missing = format!("sqlite:/nonexistent-{}/state.db", std::process::id());
    assert!(err(store::open(&missing).await).contains("/nonexistent-"));
    let dir = temp_dir("notadb");
    let path = dir.path().join("state.db");
    std::fs::write(&path, vec![b'g'; 4096]).unwrap();
    let msg = err(store::open(&format!("sqlite:{}", path.display())).await);
    assert!(msg.contains("not a database"), "{msg}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        vec![b'g'; 4096],
        "a foreign file is not touched"
    );
}

fn log_rows(db: &std::path::Path) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("inspect the log");
    conn.query_row("SELECT COUNT(*) FROM kine", [], |r| r.get(0))
        .expect("count rows")
}

#[tokio::test]
async fn compaction_removes_superseded_rows_and_tombstones() {
    let dir = temp_dir("compact-rows");
    let db = dir.path().join("state.db");
    let s = SqliteStore::open(&db).unwrap();
    let p = prefix("compact-rows");
    let key = format!("{p}hot");
    let mut rev = s.create(&key, b"0".to_vec()).await.unwrap();
    for i in 1..100 {
        rev = s
            .update(&key, i.to_string().into_bytes(), rev)
            .await
            .unwrap();
    }
    let gone = format!("{p}gone");
    s.create(&gone, b"x".to_vec()).await.unwrap();
    let (deleted_at, _) = s.delete(&gone, None).await.unwrap();
    assert_eq!(log_rows(&db), 102);
    s.compact(deleted_at).await.unwrap();
    assert_eq!(log_rows(&db), 1, "only the hot key's current row remains");
    let kv = s.get(&key).await.unwrap().unwrap();
    assert_eq!((kv.value, kv.mod_revision), (b"99".to_vec(), rev));
    assert!(
        matches!(s.compact(deleted_at + 10).await, Err(StoreError::Internal(m)) if m.contains("future"))
    );
    // The revision counter survives compaction and reopening.
    drop(s);
    let s = SqliteStore::open(&db).unwrap();
    assert_eq!(s.current_revision().await.unwrap(), deleted_at);
    assert!(s.create(&gone, b"y".to_vec()).await.unwrap() > deleted_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compactor_compacts_a_live_store() {
    let dir = temp_dir("compactor");
    let db = dir.path().join("state.db");
    let s: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).unwrap());
    let p = prefix("compactor");
    let r0 = s.current_revision().await.unwrap();
    let mut rev = s.create(&format!("{p}k"), b"0".to_vec()).await.unwrap();
    for i in 0..50 {
        rev = s.update(&format!("{p}k"), vec![i], rev).await.unwrap();
    }
    let config = CompactorConfig {
        interval: Duration::from_millis(20),
        keep_for: Duration::ZERO,
        keep_revisions: 10,
    };
    let task = spawn_compactor(s.clone(), config);
    struct Abort(tokio::task::JoinHandle<()>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _task = Abort(task);
    // Hang guard only: the compactor runs every 20 ms.
    for _ in 0..3000 {
        if log_rows(&db) <= 11 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        log_rows(&db),
        11,
        "the newest 10 revisions and the row they supersede are kept"
    );
    assert!(matches!(
        s.watch(&p, r0).await,
        Err(StoreError::Compacted { .. })
    ));
    let mut w = s
        .watch(&p, rev - 10)
        .await
        .expect("the kept window is watchable");
    assert_eq!(
        store_support::suite::next_events(&mut w, 10).await.len(),
        10
    );
}

#[tokio::test]
async fn an_unreachable_etcd_is_a_clear_error() {
    // Port 1 on loopback: nothing listens there.
    let msg = match store::open("etcd://127.0.0.1:1").await {
        Err(StoreError::Unavailable(msg)) => msg,
        Err(e) => panic!("unreachable etcd: {e}"),
        Ok(_) => panic!("opened an etcd that is not there"),
    };
    assert!(msg.contains("127.0.0.1:1"), "{msg}");
}
