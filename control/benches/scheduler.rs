//! Scheduler benchmark (not a test): a real `hull server` (SQLite, its controller manager
//! running the scheduler) with hollow nodes — Node objects, Ready status and Leases, no
//! kubelet — and pods created in bursts through kube-rs. Prints pods/s bound and the
//! create-to-bind latency (p50/p99), next to kube-scheduler's scheduler_perf figures.
//!
//!     cargo bench -p hull-control --bench scheduler          # 5,000 nodes, 30,000 pods
//!     HULL_BENCH_NODES=1000 HULL_BENCH_PODS=3000 HULL_BENCH_BURST=3000 \
//!         cargo bench -p hull-control --bench scheduler
//!
//! Create-to-bind is measured as acceptance 06 does: from the moment the create call
//! returned to the moment a watch (in this process) shows `spec.nodeName`.
//!
//! First, without a server, the decision alone: the same nodes and pods fed straight to
//! the scheduler's cache, each pod decided and assumed in turn (bare pods, then pods of
//! one ReplicaSet, which default spreading scores), timed per pod in wall and CPU time.
//! `HULL_BENCH_DECIDE_ONLY=1` stops after that.
//!
//! Last, the scheduler's own throughput, not capped by how fast one client creates pods:
//! every pod is created while no scheduler runs (the server with its controller manager
//! off), then the server restarts with it and the scheduler drains the backlog, as
//! kube-scheduler does after a restart or a burst. `HULL_BENCH_BACKLOG=0` skips it.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

/// kube-scheduler's own benchmark (test/integration/scheduler_perf, SchedulingBasic with
/// 5,000 nodes): its CI threshold is about 270 pods/s, typical results low hundreds.
const KUBE_SCHEDULER_PODS_PER_SEC: f64 = 270.0;
const CONCURRENCY: usize = 32;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The scheduler's decision alone: `nodes` hollow nodes in its cache, `pods` pods
/// decided and assumed one after another. Returns the mean per pod.
fn decide_only(nodes: usize, pods: usize, owned: bool) -> Duration {
    use hull_control::scheduler::cache::{Cache, NodeInfo, PodInfo};
    use hull_control::scheduler::decide::{Decision, decide};
    let mut cache = Cache::default();
    let now = jiff::Timestamp::now();
    let expiry = now + jiff::SignedDuration::from_secs(3600);
    let res = json!({"cpu": "64", "memory": "256Gi", "pods": "110"});
    for i in 0..nodes {
        let name = format!("h{i}");
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"capacity": res, "allocatable": res,
                "conditions": [{"type": "Ready", "status": "True"}]}}))
        .expect("node");
        cache.upsert_node(NodeInfo::from_node(&node));
        cache.lease_expiry.insert(name, expiry);
    }
    let owner = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
        "uid": "5a0a4b6e-0000-4000-8000-000000000001", "controller": true}]);
    let mut next = 0;
    let cpu = hull_control::scheduler::metrics::ThreadCpu::start();
    let t = Instant::now();
    for k in 0..pods {
        let mut pod = json!({"metadata": {"name": format!("p{k}"), "namespace": "bench",
            "uid": format!("u{k}")},
            "spec": {"containers": [{"name": "c", "image": "busybox",
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}});
        if owned {
            pod["metadata"]["ownerReferences"] = owner.clone();
        }
        let pod: Pod = serde_json::from_value(pod).expect("pod");
        let info = cache.upsert_pod(PodInfo::from_pod(pod));
        match decide(&cache, info.clone(), &mut next) {
            Decision::Node(n) => cache.assume(&info.key, &n),
            Decision::Unschedulable(m) => panic!("{}: {m}", info.key),
        }
    }
    let (wall, cpu) = (t.elapsed(), cpu.elapsed());
    println!(
        "decision alone ({} pods): {nodes} nodes, {pods} pods: {:.0} µs per pod ({:.0} µs CPU), {:.0} pods/s",
        if owned { "one ReplicaSet's" } else { "bare" },
        wall.as_secs_f64() * 1e6 / pods as f64,
        cpu.as_secs_f64() * 1e6 / pods as f64,
        pods as f64 / wall.as_secs_f64().max(1e-9),
    );
    wall / u32::try_from(pods.max(1)).unwrap_or(u32::MAX)
}

fn start_server(
    dir: &std::path::Path,
    controllers: bool,
) -> (
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut opts = hull_control::apiserver::Options::new(dir.to_path_buf(), addr);
    opts.controllers = controllers;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("server runtime");
        if let Err(e) = rt.block_on(hull_control::apiserver::run(opts, async move {
            let _ = rx.await;
        })) {
            eprintln!("server: {e}");
        }
    });
    (tx, thread)
}

async fn client(dir: &std::path::Path) -> kube::Client {
    let path = dir.join("admin.kubeconfig");
    for _ in 0..300 {
        if path.exists()
            && let Ok(kc) = kube::config::Kubeconfig::read_from(&path)
            && let Ok(cfg) = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await
            && let Ok(c) = kube::Client::try_from(cfg)
            && c.apiserver_version().await.is_ok()
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("API server did not come up");
}

async fn hollow_nodes(c: &kube::Client, n: usize) {
    let nodes: Api<Node> = Api::all(c.clone());
    let leases: Api<Lease> = Api::namespaced(c.clone(), "kube-node-lease");
    let now = jiff::Timestamp::now().to_string();
    let res = json!({"cpu": "64", "memory": "256Gi", "pods": "110"});
    futures::stream::iter(0..n)
        .map(|i| {
            let (nodes, leases, now, res) = (nodes.clone(), leases.clone(), now.clone(), res.clone());
            async move {
                let name = format!("h{i}");
                let node: Node = serde_json::from_value(json!({"metadata": {"name": name,
                    "labels": {"kubernetes.io/hostname": name}}}))
                .expect("node");
                nodes.create(&PostParams::default(), &node).await.expect("create node");
                let lease: Lease = serde_json::from_value(json!({"metadata": {"name": name},
                    "spec": {"holderIdentity": name, "leaseDurationSeconds": 3600, "renewTime": now}}))
                .expect("lease");
                leases.create(&PostParams::default(), &lease).await.expect("create lease");
                let status = json!({"status": {"capacity": res, "allocatable": res, "conditions": [
                    {"type": "Ready", "status": "True", "reason": "KubeletReady",
                     "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
                // Node IPAM writes spec.podCIDR at the same moment; a 409 is retried.
                for attempt in 0.. {
                    match nodes
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await
                    {
                        Ok(_) => break,
                        Err(kube::Error::Api(s)) if s.code == 409 && attempt < 10 => {}
                        Err(e) => panic!("node status {name}: {e}"),
                    }
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
}

fn main() {
    let nodes = env("HULL_BENCH_NODES", 5000);
    let pods = env("HULL_BENCH_PODS", 30000);
    let burst = env("HULL_BENCH_BURST", 3000).max(1);
    println!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    decide_only(nodes, pods, false);
    decide_only(nodes, pods, true);
    if std::env::var_os("HULL_BENCH_DECIDE_ONLY").is_some() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix(&format!("hull-bench-sched-{}-", std::process::id()))
        .tempdir()
        .expect("temp dir");
    let (stop, server) = start_server(tmp.path(), true);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime");
    rt.block_on(async {
        let c = client(tmp.path()).await;
        let t = Instant::now();
        hollow_nodes(&c, nodes).await;
        println!("{nodes} hollow nodes registered in {:.1} s", t.elapsed().as_secs_f64());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "bench"}})).expect("ns");
        Api::<Namespace>::all(c.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("namespace");

        let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let seen = bound.clone();
        let api: Api<Pod> = Api::namespaced(c.clone(), "bench");
        let watch = tokio::spawn(async move {
            let mut s = watcher::watcher(api, watcher::Config::default()).boxed();
            while let Some(ev) = s.next().await {
                let (watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = (match ev {
                    Ok(ev) => ev,
                    Err(_) => continue,
                }) else {
                    continue;
                };
                if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                    && let (Some(name), Ok(mut m)) = (p.metadata.name, seen.lock())
                {
                    m.entry(name).or_insert_with(Instant::now);
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;

        let api: Api<Pod> = Api::namespaced(c.clone(), "bench");
        let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let first = Instant::now();
        let mut create_time = Duration::ZERO;
        let mut i = 0;
        while i < pods {
            let n = burst.min(pods - i);
            let t = Instant::now();
            futures::stream::iter(i..i + n)
                .map(|k| {
                    let (api, created) = (api.clone(), created.clone());
                    async move {
                        let name = format!("p{k}");
                        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name},
                            "spec": {"containers": [{"name": "c", "image": "busybox",
                                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}}))
                        .expect("pod");
                        api.create(&PostParams::default(), &pod).await.expect("create pod");
                        if let Ok(mut m) = created.lock() {
                            m.insert(name, Instant::now());
                        }
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .collect::<Vec<_>>()
                .await;
            create_time += t.elapsed();
            i += n;
            // Let the burst drain (bounded) before the next one.
            let deadline = Instant::now() + Duration::from_secs(120);
            while bound.lock().map_or(0, |m| m.len()) < i && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            println!(
                "burst {:>2}: {n} pods created at {:.0}/s, {} of {i} bound",
                i / burst,
                n as f64 / t.elapsed().as_secs_f64().max(1e-9),
                bound.lock().map_or(0, |m| m.len())
            );
        }
        let (bound, created) = (
            bound.lock().map(|m| m.clone()).unwrap_or_default(),
            created.lock().map(|m| m.clone()).unwrap_or_default(),
        );
        watch.abort();
        let last = bound.values().max().copied().unwrap_or(first);
        let mut lag: Vec<Duration> = created
            .iter()
            .filter_map(|(n, c)| bound.get(n).map(|b| b.saturating_duration_since(*c)))
            .collect();
        lag.sort();
        let span = last.duration_since(first).as_secs_f64().max(1e-9);
        let rate = bound.len() as f64 / span;
        println!();
        println!("hull scheduler: {nodes} nodes, {} of {pods} pods bound", bound.len());
        println!(
            "  pods created at {:.0}/s (client, {CONCURRENCY} in flight); bound {rate:.0} pods/s over the run",
            pods as f64 / create_time.as_secs_f64().max(1e-9)
        );
        println!(
            "  create-to-bind p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            pct(&lag, 0.5).as_secs_f64() * 1000.0,
            pct(&lag, 0.99).as_secs_f64() * 1000.0,
            lag.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
        );
        println!(
            "  scheduler: {}",
            hull_control::scheduler::metrics::METRICS.summary()
        );
        println!(
            "kube-scheduler scheduler_perf (reference, 5,000 nodes, not run here): ~{KUBE_SCHEDULER_PODS_PER_SEC:.0} pods/s \
             → hull/kube ratio {:.2}",
            rate / KUBE_SCHEDULER_PODS_PER_SEC
        );
        println!(
            "note: bound pods/s is capped by how fast this one client creates pods when the \
             scheduler keeps up (p99 well under a second means it does)"
        );
    });
    let _ = stop.send(());
    let _ = server.join();
    if std::env::var("HULL_BENCH_BACKLOG").as_deref() != Ok("0") {
        backlog(nodes, pods);
    }
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}}))
    .expect("pod")
}

/// The backlog run: pods created with no scheduler running, then the server restarted
/// with its controller manager; prints how fast the pending pods get bound.
fn backlog(nodes: usize, pods: usize) {
    let tmp = tempfile::Builder::new()
        .prefix(&format!("hull-bench-backlog-{}-", std::process::id()))
        .tempdir()
        .expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime");
    let (stop, server) = start_server(tmp.path(), false);
    rt.block_on(async {
        let c = client(tmp.path()).await;
        hollow_nodes(&c, nodes).await;
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "bench"}})).expect("ns");
        Api::<Namespace>::all(c.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("namespace");
        let api: Api<Pod> = Api::namespaced(c, "bench");
        futures::stream::iter(0..pods)
            .map(|k| {
                let api = api.clone();
                async move {
                    api.create(&PostParams::default(), &pod(&format!("p{k}")))
                        .await
                        .expect("create pod");
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
    });
    let _ = stop.send(());
    let _ = server.join();
    println!();
    println!(
        "backlog: {pods} pending pods on {nodes} nodes, server restarted with the scheduler (load average {})",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let start = Instant::now();
    let (stop, server) = start_server(tmp.path(), true);
    rt.block_on(async {
        let c = client(tmp.path()).await;
        let api: Api<Pod> = Api::namespaced(c, "bench");
        let mut s = watcher::watcher(api, watcher::Config::default()).boxed();
        let mut bound = std::collections::HashSet::new();
        let (mut first, mut last) = (None, start);
        let deadline = start + Duration::from_secs(600);
        while bound.len() < pods && Instant::now() < deadline {
            let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(5), s.next()).await else {
                continue;
            };
            let (Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p))) = ev else {
                continue;
            };
            if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                && let Some(name) = p.metadata.name
                && bound.insert(name)
            {
                last = Instant::now();
                first.get_or_insert(last);
            }
        }
        let first = first.unwrap_or(last);
        let span = last.duration_since(first).as_secs_f64().max(1e-9);
        println!(
            "  {} of {pods} bound; first binding {:.2} s after the server started (API up, \
             leader elected, informers listed), last {:.2} s",
            bound.len(),
            first.duration_since(start).as_secs_f64(),
            last.duration_since(start).as_secs_f64()
        );
        println!(
            "  scheduler throughput: {:.0} pods/s from first to last binding, {:.0} pods/s \
             from server start (target >= 1,000; kube-scheduler scheduler_perf ~{KUBE_SCHEDULER_PODS_PER_SEC:.0}, ratio {:.2})",
            bound.len() as f64 / span,
            bound.len() as f64 / last.duration_since(start).as_secs_f64().max(1e-9),
            bound.len() as f64 / span / KUBE_SCHEDULER_PODS_PER_SEC
        );
    });
    let _ = stop.send(());
    let _ = server.join();
}
