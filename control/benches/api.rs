//! API benchmark (not a test): the whole API server path — HTTPS, authentication,
//! authorization, admission, store — measured with a kube-rs client against `hull server`
//! on SQLite and on etcd, side by side with etcd alone (the floor: what the bytes cost
//! without an API server), in one run. Prints p50/p99 and ratios.
//!
//!     cargo bench -p hull-control --bench api                       # 2,000 objects, 200 watchers
//!     HULL_BENCH_N=10000 HULL_BENCH_WATCHERS=1000 cargo bench -p hull-control --bench api
//!
//! Workload (ConfigMaps of ~1 KiB): create N one at a time, GET them one at a time, GET
//! throughput with 16 concurrent clients for 3 s, LIST all N (10 times), and watch
//! fan-out: W watchers, 20 updates, latency from the write to each watcher's event.
//! Then N Pods (a web container with ports, env, resources and probes, as admitted and
//! defaulted by hull: ~3 KiB each) and LIST all of them 10 times; etcd alone ranges over
//! N copies of the same stored bytes.

#[path = "../tests/api_support/mod.rs"]
mod api_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api_support::Server;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};

#[derive(Default, Clone)]
struct Lat(Vec<Duration>);

impl Lat {
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
}

/// One peer's results: (p50, p99) per operation, and GET/s.
#[derive(Default)]
struct Results {
    ops: BTreeMap<&'static str, (Duration, Duration)>,
    gets_per_sec: f64,
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn payload() -> String {
    "x".repeat(1000)
}

async fn client(s: &Server) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(&s.kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

fn cm(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("v".to_string(), payload())])),
        ..Default::default()
    }
}

/// The stored JSON of one benchmark Pod as hull admitted it (the etcd-alone peer ranges
/// over copies of it, so both list the same bytes).
static POD_JSON: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": "web", "tier": "front", "bench": "list"}},
        "spec": {
            "nodeName": "node-a",
            "containers": [{
                "name": "web", "image": "registry.local/library/nginx:1.27",
                "ports": [{"name": "http", "containerPort": 8080}],
                "env": [{"name": "MODE", "value": "production"},
                        {"name": "LOG_LEVEL", "value": "info"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
            }],
        },
    }))
    .expect("pod")
}

/// Creates `n` Pods with 16 concurrent clients, then LISTs them all 10 times.
async fn list_pods(c: &kube::Client, ns: &str, n: usize) -> (Duration, Duration) {
    let pods: Api<Pod> = Api::namespaced(c.clone(), ns);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (pods, next) = (pods.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let created = pods
                    .create(&PostParams::default(), &pod(&format!("web-{i:06}")))
                    .await
                    .expect("create pod");
                if i == 0 {
                    let _ = POD_JSON.set(serde_json::to_vec(&created).expect("json"));
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("creator");
    }
    let mut lat = Lat::default();
    for _ in 0..10 {
        let t = Instant::now();
        let l = pods.list(&ListParams::default()).await.expect("list pods");
        assert_eq!(l.items.len(), n);
        lat.0.push(t.elapsed());
    }
    (lat.pct(0.5), lat.pct(0.99))
}

async fn bench_hull(s: &Server, n: usize, watchers: usize) -> Results {
    let c = client(s).await;
    let ns = format!("bench-{}", std::process::id());
    s.ok(&["create", "namespace", &ns]);
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), &ns);
    let mut r = Results::default();
    let names: Vec<String> = (0..n).map(|i| format!("cm-{i:06}")).collect();

    let mut lat = Lat::default();
    for name in &names {
        let t = Instant::now();
        api.create(&PostParams::default(), &cm(name))
            .await
            .expect("create");
        lat.0.push(t.elapsed());
    }
    r.ops.insert("create", (lat.pct(0.5), lat.pct(0.99)));

    let mut lat = Lat::default();
    for name in &names {
        let t = Instant::now();
        api.get(name).await.expect("get");
        lat.0.push(t.elapsed());
    }
    r.ops.insert("get", (lat.pct(0.5), lat.pct(0.99)));

    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (api, names, done) = (api.clone(), names.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < until {
                if api.get(&names[i % names.len()]).await.is_ok() {
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                i += 16;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    r.gets_per_sec = done.load(std::sync::atomic::Ordering::Relaxed) as f64 / 3.0;

    let mut lat = Lat::default();
    for _ in 0..10 {
        let t = Instant::now();
        let l = api.list(&ListParams::default()).await.expect("list");
        assert_eq!(l.items.len(), n);
        lat.0.push(t.elapsed());
    }
    r.ops.insert("list", (lat.pct(0.5), lat.pct(0.99)));

    // Watch fan-out.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let mut streams = Vec::new();
    let rv = api
        .list(&ListParams::default().limit(1))
        .await
        .expect("rv")
        .metadata
        .resource_version
        .unwrap_or_default();
    for _ in 0..watchers {
        let (api, tx, rv) = (api.clone(), tx.clone(), rv.clone());
        streams.push(tokio::spawn(async move {
            let mut st = api
                .watch(&WatchParams::default().timeout(120), &rv)
                .await
                .expect("watch")
                .boxed();
            while let Some(ev) = st.next().await {
                if let Ok(WatchEvent::Modified(o)) = ev {
                    let v = o
                        .data
                        .and_then(|d| d.get("round").cloned())
                        .unwrap_or_default();
                    let _ = tx.send((v, Instant::now()));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut lat = Lat::default();
    for round in 0..20 {
        let mut obj = api.get(&names[0]).await.expect("get");
        let tag = format!("r{round}");
        obj.data
            .get_or_insert_with(BTreeMap::new)
            .insert("round".into(), tag.clone());
        let t = Instant::now();
        api.replace(&names[0], &PostParams::default(), &obj)
            .await
            .expect("replace");
        let mut got = 0;
        while got < watchers {
            match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                Ok(Some((v, at))) if v == tag => {
                    lat.0.push(at.duration_since(t));
                    got += 1;
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    }
    for s in streams {
        s.abort();
    }
    r.ops.insert("watch event", (lat.pct(0.5), lat.pct(0.99)));
    r.ops.insert("list pods", list_pods(&c, &ns, n).await);
    r
}

async fn bench_etcd(url: &str, n: usize, watchers: usize) -> Results {
    let ep = format!("http://{}", url.trim_start_matches("etcd://"));
    let mut c = etcd_client::Client::connect([ep.as_str()], None)
        .await
        .expect("etcd");
    let prefix = format!("/bench-{}/", std::process::id());
    let mut r = Results::default();
    let value = serde_json::to_vec(&cm("x")).expect("json");
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}cm-{i:06}")).collect();

    let mut lat = Lat::default();
    for k in &keys {
        let t = Instant::now();
        let txn = etcd_client::Txn::new()
            .when([etcd_client::Compare::create_revision(
                k.as_str(),
                etcd_client::CompareOp::Equal,
                0,
            )])
            .and_then([etcd_client::TxnOp::put(k.as_str(), value.clone(), None)]);
        c.txn(txn).await.expect("put");
        lat.0.push(t.elapsed());
    }
    r.ops.insert("create", (lat.pct(0.5), lat.pct(0.99)));

    let mut lat = Lat::default();
    for k in &keys {
        let t = Instant::now();
        c.get(k.as_str(), None).await.expect("get");
        lat.0.push(t.elapsed());
    }
    r.ops.insert("get", (lat.pct(0.5), lat.pct(0.99)));

    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (mut c, keys, done) = (c.clone(), keys.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < until {
                if c.get(keys[i % keys.len()].as_str(), None).await.is_ok() {
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                i += 16;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    r.gets_per_sec = done.load(std::sync::atomic::Ordering::Relaxed) as f64 / 3.0;

    // A range of 10k objects is ~11 MiB, over gRPC's default 4 MiB: lifted as hull's etcd
    // store (and kube-apiserver) lift it.
    let mut kv = c.kv_client().max_decoding_message_size(i32::MAX as usize);
    let mut lat = Lat::default();
    for _ in 0..10 {
        let t = Instant::now();
        let resp = kv
            .get(
                prefix.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .expect("range");
        assert_eq!(resp.kvs().len(), n);
        lat.0.push(t.elapsed());
    }
    r.ops.insert("list", (lat.pct(0.5), lat.pct(0.99)));

    // Each watcher its own etcd watch (the floor a watch cache has to beat).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Vec<u8>, Instant)>();
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let (mut c, tx, k) = (c.clone(), tx.clone(), keys[0].clone());
        tasks.push(tokio::spawn(async move {
            let mut st = c.watch(k.as_str(), None).await.expect("watch");
            while let Ok(Some(resp)) = st.message().await {
                for ev in resp.events() {
                    if let Some(kv) = ev.kv() {
                        let _ = tx.send((kv.value().to_vec(), Instant::now()));
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut lat = Lat::default();
    for round in 0..20 {
        let mut v = value.clone();
        v.extend_from_slice(format!(" r{round}").as_bytes());
        let t = Instant::now();
        c.put(keys[0].as_str(), v.clone(), None).await.expect("put");
        let mut got = 0;
        while got < watchers {
            match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                Ok(Some((val, at))) if val == v => {
                    lat.0.push(at.duration_since(t));
                    got += 1;
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    }
    for t in tasks {
        t.abort();
    }
    r.ops.insert("watch event", (lat.pct(0.5), lat.pct(0.99)));

    let pod_prefix = format!("/bench-pods-{}/", std::process::id());
    let pod_value = POD_JSON.get().cloned().unwrap_or_default();
    for i in 0..n {
        c.put(format!("{pod_prefix}web-{i:06}"), pod_value.clone(), None)
            .await
            .expect("put pod");
    }
    let mut lat = Lat::default();
    for _ in 0..10 {
        let t = Instant::now();
        let resp = kv
            .get(
                pod_prefix.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .expect("range pods");
        assert_eq!(resp.kvs().len(), n);
        lat.0.push(t.elapsed());
    }
    r.ops.insert("list pods", (lat.pct(0.5), lat.pct(0.99)));
    let _ = c
        .delete(
            pod_prefix.as_str(),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await;
    let _ = c
        .delete(
            prefix.as_str(),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await;
    r
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let n = env("HULL_BENCH_N", 2000);
    let watchers = env("HULL_BENCH_WATCHERS", 200);
    let etcd = api_support::etcd();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows: Vec<(&str, Results)> = Vec::new();
    {
        // Without the controller manager: only the benchmark's own requests.
        let s = Server::start_tuned("bench-sqlite", None, |o| o.controllers = false);
        rows.push(("hull/sqlite", rt.block_on(bench_hull(&s, n, watchers))));
    }
    {
        let s = Server::start_tuned("bench-etcd", Some(etcd.url.clone()), |o| {
            o.controllers = false
        });
        rows.push(("hull/etcd", rt.block_on(bench_hull(&s, n, watchers))));
    }
    rows.push((
        "etcd alone",
        rt.block_on(bench_etcd(&etcd.url.clone(), n, watchers)),
    ));

    println!(
        "\nAPI benchmark: {n} ConfigMaps (~1 KiB), {n} Pods ({} B stored), {watchers} watchers; p50 / p99 in ms",
        POD_JSON.get().map_or(0, Vec::len)
    );
    println!(
        "{:<14} {:>20} {:>20} {:>20}",
        "op", rows[0].0, rows[1].0, rows[2].0
    );
    for op in ["create", "get", "list", "list pods", "watch event"] {
        let cell = |r: &Results| {
            let (p50, p99) = r.ops.get(op).copied().unwrap_or_default();
            format!("{:.2} / {:.2}", ms(p50), ms(p99))
        };
        println!(
            "{op:<14} {:>20} {:>20} {:>20}",
            cell(&rows[0].1),
            cell(&rows[1].1),
            cell(&rows[2].1)
        );
    }
    println!(
        "{:<14} {:>20.0} {:>20.0} {:>20.0}",
        "GET/s (16)", rows[0].1.gets_per_sec, rows[1].1.gets_per_sec, rows[2].1.gets_per_sec
    );
    println!("\nratios (p50; < 1 means faster than the peer):");
    for op in ["create", "get", "list", "list pods", "watch event"] {
        let p = |i: usize| ms(rows[i].1.ops.get(op).map(|x| x.0).unwrap_or_default());
        println!(
            "{op:<14} hull/sqlite : hull/etcd = {:.2}   hull/sqlite : etcd = {:.2}   hull/etcd : etcd = {:.2}",
            p(0) / p(1).max(1e-9),
            p(0) / p(2).max(1e-9),
            p(1) / p(2).max(1e-9)
        );
    }
    println!(
        "GET/s          hull/sqlite : etcd = {:.2}   hull/etcd : etcd = {:.2}",
        rows[0].1.gets_per_sec / rows[2].1.gets_per_sec.max(1e-9),
        rows[1].1.gets_per_sec / rows[2].1.gets_per_sec.max(1e-9)
    );
}
