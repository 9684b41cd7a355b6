//! Storage benchmark (not a test): the SQLite and etcd backends side by side in one run,
//! on the same machine and workload, printing p50/p99 latencies and the SQLite/etcd ratio.
//!
//!     cargo bench -p hull-control --bench store          # 10,000 keys
//!     HULL_BENCH_KEYS=2000 cargo bench -p hull-control --bench store
//!
//! Workload: create N pod-sized (1.5 KiB) keys, GET them (one at a time for latency, 16 at
//! a time for throughput), LIST all N (and in pages of 500), and one event fanned out by
//! the watch cache to 1,000 watchers.

#[path = "../tests/store_support/mod.rs"]
mod store_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hull_control::store::{CacheConfig, CachedStore, Store};
use store_support::Backend;

#[derive(Default, Clone)]
struct Latencies(Vec<Duration>);

impl Latencies {
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
}

#[derive(Default)]
struct Report {
    rows: Vec<(String, Latencies, Option<f64>)>,
}

impl Report {
    fn add(&mut self, name: &str, lat: Latencies, per_sec: Option<f64>) {
        self.rows.push((name.to_owned(), lat, per_sec));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn bench(store: Arc<dyn Store>, keys: usize) -> Report {
    let mut report = Report::default();
    let prefix = format!("/registry/pods/bench-{}/", std::process::id());
    let value = vec![b'p'; 1536];
    let names: Vec<String> = (0..keys).map(|i| format!("{prefix}pod-{i:06}")).collect();

    let mut lat = Latencies::default();
    let start = Instant::now();
    for name in &names {
        let t = Instant::now();
        store.create(name, value.clone()).await.expect("create");
        lat.0.push(t.elapsed());
    }
    let rate = keys as f64 / start.elapsed().as_secs_f64();
    report.add("create (sequential)", lat, Some(rate));

    // Write throughput with 32 concurrent writers (an API server's creates, binds, status
    // patches and Lease renewals arrive together): the group commit's case.
    let (lat, rate) = concurrent_creates(store.clone(), &value, keys).await;
    report.add("create (32 concurrent)", lat, Some(rate));

    let mut lat = Latencies::default();
    for i in 0..keys {
        let name = &names[(i * 7919) % keys];
        let t = Instant::now();
        store.get(name).await.expect("get").expect("key");
        lat.0.push(t.elapsed());
    }
    report.add("get (sequential)", lat, None);

    // Throughput with 16 concurrent readers, as an API server under load has.
    let start = Instant::now();
    let per_task = keys / 16;
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let (store, names) = (store.clone(), names.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let name = &names[(t * per_task + i * 31) % names.len()];
                    let s = Instant::now();
                    store.get(name).await.expect("get");
                    lat.push(s.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Latencies::default();
    for t in tasks {
        lat.0.extend(t.await.expect("get task"));
    }
    let rate = (per_task * 16) as f64 / start.elapsed().as_secs_f64();
    report.add("get (16 concurrent)", lat, Some(rate));

    let mut lat = Latencies::default();
    for _ in 0..20 {
        let t = Instant::now();
        let list = store.list(&prefix, None, 0, 0).await.expect("list");
        lat.0.push(t.elapsed());
        assert_eq!(list.items.len(), keys);
    }
    report.add(&format!("list all {keys}"), lat, None);

    let mut lat = Latencies::default();
    for _ in 0..5 {
        let mut after: Option<String> = None;
        let mut revision = 0;
        loop {
            let t = Instant::now();
            let page = store
                .list(&prefix, after.as_deref(), 500, revision)
                .await
                .expect("page");
            lat.0.push(t.elapsed());
            revision = page.revision;
            after = page.items.last().map(|kv| kv.key.clone());
            if page.remaining == 0 {
                break;
            }
        }
    }
    report.add("list page of 500", lat, None);

    // Watch fan-out: one write, 1,000 watchers through the cache; latency from the write's
    // start to each watcher's receipt.
    let cache = Arc::new(
        CachedStore::new(store.clone(), CacheConfig::default())
            .await
            .expect("cache"),
    );
    let watch_prefix = format!("/registry/events/bench-{}/", std::process::id());
    let mut lat = Latencies::default();
    for round in 0..10 {
        let mut streams = Vec::with_capacity(1000);
        for _ in 0..1000 {
            streams.push(cache.watch(&watch_prefix, 0).await.expect("watch"));
        }
        let t = Instant::now();
        let receivers: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                tokio::spawn(async move {
                    s.next().await;
                    t.elapsed()
                })
            })
            .collect();
        cache
            .create(&format!("{watch_prefix}e{round}"), value.clone())
            .await
            .expect("event");
        for r in receivers {
            lat.0.push(r.await.expect("watcher"));
        }
    }
    report.add("watch event to 1,000 watchers", lat, None);
    report
}

/// `keys` creates from 32 concurrent writers under a prefix of their own (so the lists
/// still see exactly `keys` keys): latencies and writes/s.
async fn concurrent_creates(store: Arc<dyn Store>, value: &[u8], keys: usize) -> (Latencies, f64) {
    let writers = 32;
    let per_task = keys / writers;
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let prefix = format!(
        "/registry/pods/bench-{}-concurrent-{}/",
        std::process::id(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|t| {
            let (store, value, prefix) = (store.clone(), value.to_vec(), prefix.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let s = Instant::now();
                    store
                        .create(&format!("{prefix}{t:02}-{i:06}"), value.clone())
                        .await
                        .expect("concurrent create");
                    lat.push(s.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Latencies::default();
    for t in tasks {
        lat.0.extend(t.await.expect("create task"));
    }
    (
        lat,
        (per_task * writers) as f64 / start.elapsed().as_secs_f64(),
    )
}

fn print(sqlite: &Report, etcd: &Report) {
    println!(
        "{:<32} {:>10} {:>10} {:>11} | {:>10} {:>10} {:>11} | {:>9}",
        "operation", "sqlite p50", "p99", "ops/s", "etcd p50", "p99", "ops/s", "p50 ratio"
    );
    for ((name, s, srate), (_, e, erate)) in sqlite.rows.iter().zip(&etcd.rows) {
        let rate = |r: &Option<f64>| r.map_or("-".to_owned(), |r| format!("{r:.0}"));
        println!(
            "{:<32} {:>8.3}ms {:>8.3}ms {:>11} | {:>8.3}ms {:>8.3}ms {:>11} | {:>8.2}x",
            name,
            ms(s.pct(0.5)),
            ms(s.pct(0.99)),
            rate(srate),
            ms(e.pct(0.5)),
            ms(e.pct(0.99)),
            rate(erate),
            ms(s.pct(0.5)) / ms(e.pct(0.5)).max(1e-9),
        );
    }
    println!("(ratio = SQLite p50 / etcd p50: below 1 means SQLite is faster)");
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing to run quickly.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let keys: usize = std::env::var("HULL_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sqlite = Backend::sqlite().await;
        let etcd = Backend::etcd().await;
        println!(
            "store benchmark: {keys} keys of 1.5 KiB, SQLite (WAL, synchronous=FULL) vs etcd {}",
            etcd_version()
        );
        let s = bench(sqlite.open().await, keys).await;
        let e = bench(etcd.open().await, keys).await;
        print(&s, &e);
        // The same SQLite file format with one commit (one fsync) per write: what the store
        // did before group commit.
        let dir = tempfile::tempdir().expect("tempdir");
        let single: Arc<dyn Store> = Arc::new(
            hull_control::store::SqliteStore::open_with(
                &dir.path().join("single.db"),
                hull_control::store::SqliteOptions { max_batch: 1 },
            )
            .expect("sqlite"),
        );
        let (_, one) = concurrent_creates(single, &vec![b'p'; 1536], keys).await;
        let grouped = s
            .rows
            .iter()
            .find(|(name, ..)| name == "create (32 concurrent)")
            .and_then(|(_, _, rate)| *rate)
            .unwrap_or(0.0);
        println!(
            "SQLite group commit: {grouped:.0} creates/s with 32 writers vs {one:.0}/s committing each write alone ({:.1}x)",
            grouped / one.max(1e-9)
        );
    });
}

fn etcd_version() -> String {
    std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.trim_start_matches("etcd Version: ").to_owned())
        })
        .unwrap_or_default()
}
