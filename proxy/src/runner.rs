//! The proxy daemon: kube-rs reflectors on Services, EndpointSlices and Pods feed a
//! coalescing sync loop (nftables rules + the DNS model), plus a small HTTP endpoint
//! for `/healthz` and `/metrics`.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::dns_model::DnsModel;
use crate::ports::{self, Ports, ServiceKey};
use crate::syncer::{Outcome, Syncer};
use crate::{apply, model};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("binding the health endpoint {addr}: {source}")]
    Healthz {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub node: model::NodeInfo,
    /// Syncs closer together than this are coalesced into one.
    pub min_sync_interval: Duration,
    /// A full resync (the whole table rewritten) at least this often, repairing
    /// drift; between them only what changed is written.
    pub full_sync_interval: Duration,
    /// Print each transaction to stdout before applying it.
    pub explain: bool,
    pub healthz: Option<SocketAddr>,
    /// Write nftables rules (false: DNS only).
    pub program_rules: bool,
    /// Fill `status.loadBalancer.ingress` of LoadBalancer Services with node addresses.
    pub update_lb_status: bool,
    pub cluster_domain: String,
}

/// Sync statistics, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub syncs: AtomicU64,
    pub failures: AtomicU64,
    pub sync_micros_total: AtomicU64,
    pub last_sync_micros: AtomicU64,
    /// Bucket counts for `hull_proxy_sync_seconds` (le = BUCKETS[i]).
    pub buckets: [AtomicU64; 8],
    pub healthy: std::sync::atomic::AtomicBool,
}

const BUCKETS: [f64; 8] = [0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

impl Metrics {
    fn observe(&self, d: Duration, ok: bool) {
        let us = d.as_micros() as u64;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.sync_micros_total.fetch_add(us, Ordering::Relaxed);
        self.last_sync_micros.store(us, Ordering::Relaxed);
        for (i, le) in BUCKETS.iter().enumerate() {
            if d.as_secs_f64() <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.healthy.store(ok, Ordering::Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::from(
            "# HELP hull_proxy_sync_seconds Time to render and apply one rule set.\n# TYPE hull_proxy_sync_seconds histogram\n",
        );
        for (i, le) in BUCKETS.iter().enumerate() {
            s.push_str(&format!(
                "hull_proxy_sync_seconds_bucket{{le=\"{le}\"}} {}\n",
                self.buckets[i].load(Ordering::Relaxed)
            ));
        }
        let n = self.syncs.load(Ordering::Relaxed);
        s.push_str(&format!(
            "hull_proxy_sync_seconds_bucket{{le=\"+Inf\"}} {n}\n"
        ));
        s.push_str(&format!(
            "hull_proxy_sync_seconds_sum {}\n",
            self.sync_micros_total.load(Ordering::Relaxed) as f64 / 1e6
        ));
        s.push_str(&format!("hull_proxy_sync_seconds_count {n}\n"));
        s.push_str(&format!(
            "# TYPE hull_proxy_sync_failures_total counter\nhull_proxy_sync_failures_total {}\n",
            self.failures.load(Ordering::Relaxed)
        ));
        s
    }
}

/// Bind the `/healthz` + `/metrics` listener.
pub async fn bind_health(
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), RunError> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Healthz { addr, source })?;
    let bound = l
        .local_addr()
        .map_err(|source| RunError::Healthz { addr, source })?;
    Ok((l, bound))
}

/// Serve `/healthz` (200 once the last sync succeeded) and `/metrics` in the
/// background (a detached task).
pub async fn serve_health(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr, RunError> {
    let (l, bound) = bind_health(addr).await?;
    tokio::spawn(health_loop(l, metrics));
    Ok(bound)
}

/// Answer health and metrics requests on `l` until dropped.
pub async fn health_loop(l: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut c, _)) = l.accept().await else {
            continue;
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (code, body) = match path {
                "/healthz" if m.healthy.load(Ordering::Relaxed) => ("200 OK", "ok\n".to_string()),
                "/healthz" => (
                    "503 Service Unavailable",
                    "no successful sync yet\n".to_string(),
                ),
                "/metrics" => ("200 OK", m.render()),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = c.write_all(resp.as_bytes()).await;
        });
    }
}

fn watch<K>(
    api: Api<K>,
    notify: Arc<Notify>,
    on_event: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> (Store<K>, impl Stream<Item = ()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    // The reflector has applied an event to the store before it reaches `map`, so
    // a sync woken by it reads the store at least as new as the event.
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .map(move |ev| match ev {
            Ok(ev) => {
                on_event(&ev);
                notify.notify_one();
            }
            Err(e) => tracing::warn!("watch: {e}"),
        });
    (store, stream)
}

/// What changed since the last sync, from the watch events: the Services whose
/// ports must be rebuilt, or everything (start, relist).
#[derive(Debug, Default)]
struct Dirty {
    all: bool,
    services: BTreeSet<ServiceKey>,
    /// Pods whose addresses may have changed (DNS PTR names), or all of them.
    pods: BTreeSet<ServiceKey>,
    pods_all: bool,
    slices: SliceIndex,
    /// The index being rebuilt by a relist of EndpointSlices (swapped in when it is done).
    relisting: Option<SliceIndex>,
}

/// Which EndpointSlices name which Service, kept from the watch events (the store
/// can only be scanned whole).
#[derive(Debug, Default)]
struct SliceIndex {
    owner: HashMap<(String, String), ServiceKey>,
    of_service: HashMap<ServiceKey, BTreeSet<String>>,
}

impl SliceIndex {
    /// Record `slice` (None: deleted); returns the Services it named before and now.
    fn set(&mut self, ns: &str, name: &str, service: Option<&str>) -> Vec<ServiceKey> {
        let id = (ns.to_string(), name.to_string());
        let mut touched = Vec::new();
        if let Some(old) = self.owner.remove(&id) {
            if let Some(set) = self.of_service.get_mut(&old) {
                set.remove(name);
                if set.is_empty() {
                    self.of_service.remove(&old);
                }
            }
            touched.push(old);
        }
        if let Some(svc) = service {
            let key = (ns.to_string(), svc.to_string());
            self.owner.insert(id, key.clone());
            self.of_service
                .entry(key.clone())
                .or_default()
                .insert(name.to_string());
            if !touched.contains(&key) {
                touched.push(key);
            }
        }
        touched
    }
}

fn slice_id(s: &EndpointSlice) -> (&str, &str, Option<&str>) {
    (
        s.metadata.namespace.as_deref().unwrap_or_default(),
        s.metadata.name.as_deref().unwrap_or_default(),
        model::slice_service(s).map(|(_, svc)| svc),
    )
}

fn on_service_event(dirty: &Mutex<Dirty>, ev: &watcher::Event<Service>) {
    let Ok(mut d) = dirty.lock() else { return };
    match ev {
        watcher::Event::Apply(s) | watcher::Event::Delete(s) => {
            d.services.insert(ports::key_of(s));
        }
        watcher::Event::InitDone => d.all = true,
        watcher::Event::Init | watcher::Event::InitApply(_) => {}
    }
}

fn on_pod_event(dirty: &Mutex<Dirty>, ev: &watcher::Event<Pod>) {
    let Ok(mut d) = dirty.lock() else { return };
    match ev {
        watcher::Event::Apply(p) | watcher::Event::Delete(p) => {
            d.pods.insert((
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            ));
        }
        watcher::Event::InitDone => d.pods_all = true,
        watcher::Event::Init | watcher::Event::InitApply(_) => {}
    }
}

fn on_slice_event(dirty: &Mutex<Dirty>, ev: &watcher::Event<EndpointSlice>) {
    let Ok(mut d) = dirty.lock() else { return };
    let d = &mut *d;
    match ev {
        watcher::Event::Apply(s) => {
            let (ns, name, svc) = slice_id(s);
            d.services.extend(d.slices.set(ns, name, svc));
        }
        watcher::Event::Delete(s) => {
            let (ns, name, _) = slice_id(s);
            d.services.extend(d.slices.set(ns, name, None));
        }
        watcher::Event::Init => d.relisting = Some(SliceIndex::default()),
        watcher::Event::InitApply(s) => {
            let (ns, name, svc) = slice_id(s);
            d.relisting
                .get_or_insert_with(SliceIndex::default)
                .set(ns, name, svc);
        }
        watcher::Event::InitDone => {
            if let Some(idx) = d.relisting.take() {
                d.slices = idx;
            }
            d.all = true;
        }
    }
}

/// Run the proxy (and feed `dns`, if given) until the watchers end.
pub async fn run(
    client: kube::Client,
    cfg: ProxyConfig,
    dns: Option<Arc<RwLock<DnsModel>>>,
    metrics: Arc<Metrics>,
) -> Result<(), RunError> {
    let notify = Arc::new(Notify::new());
    let dirty = Arc::new(Mutex::new(Dirty {
        all: true,
        pods_all: true,
        ..Default::default()
    }));
    let d1 = dirty.clone();
    let (svcs, s1) = watch(
        Api::<Service>::all(client.clone()),
        notify.clone(),
        move |ev| on_service_event(&d1, ev),
    );
    let d2 = dirty.clone();
    let (slices, s2) = watch(
        Api::<EndpointSlice>::all(client.clone()),
        notify.clone(),
        move |ev| on_slice_event(&d2, ev),
    );
    let d3 = dirty.clone();
    let pods_watch = dns.is_some().then(|| {
        watch(Api::<Pod>::all(client.clone()), notify.clone(), move |ev| {
            on_pod_event(&d3, ev)
        })
    });
    let pods = pods_watch.as_ref().map(|(s, _)| s.clone());
    // Held by this future: dropping it (shutdown) stops the watches too.
    let mut watches = tokio::task::JoinSet::new();
    watches.spawn(s1.for_each(|_| async {}));
    watches.spawn(s2.for_each(|_| async {}));
    if let Some((_, s3)) = pods_watch {
        watches.spawn(s3.for_each(|_| async {}));
    }
    let _ = svcs.wait_until_ready().await;
    let _ = slices.wait_until_ready().await;
    if cfg.program_rules && cfg.node.localhost_nodeports {
        apply::enable_route_localnet()?;
    }
    let mut node = cfg.node.clone();
    if node.zone.is_none() {
        node.zone = node_zone(&client, &node.name).await;
    }
    let mut syncer = Syncer::new(node.clone(), cfg.full_sync_interval);
    syncer.explain = cfg.explain;
    let mut ports = Ports::new(node);
    let mut last_sync: Option<Instant> = None;
    loop {
        if let Some(t) = last_sync {
            let since = t.elapsed();
            if since < cfg.min_sync_interval {
                tokio::time::sleep(cfg.min_sync_interval - since).await;
            }
        }
        let batch = take_dirty(&dirty);
        if let Some(dns) = &dns {
            update_dns(
                dns,
                &batch,
                &svcs,
                &slices,
                pods.as_ref(),
                &cfg.cluster_domain,
            );
        }
        if cfg.update_lb_status {
            update_lb_status(&client, &svcs.state(), &cfg.node).await;
        }
        let mut retry = false;
        if cfg.program_rules {
            let started = Instant::now();
            let changed = update_ports(&mut ports, &batch, &svcs, &slices);
            let res = tokio::task::block_in_place(|| syncer.sync_ports(&ports, changed.as_ref()));
            match res {
                Ok(Outcome::Unchanged) => {}
                Ok(outcome) => {
                    metrics.observe(started.elapsed(), true);
                    tracing::debug!("{outcome:?} sync in {:?}", started.elapsed());
                }
                // The previous rules stay in force; the next sync is a full one.
                Err(e) => {
                    metrics.observe(started.elapsed(), false);
                    tracing::error!("sync failed: {e}");
                    retry = true;
                }
            }
        } else {
            metrics.healthy.store(true, Ordering::Relaxed);
        }
        last_sync = Some(Instant::now());
        // Wake on any change; a failed sync is retried soon; every 30 s the state
        // is checked anyway (the full-sync period may have passed).
        let wait = if retry {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(30)
        };
        let _ = tokio::time::timeout(wait, notify.notified()).await;
    }
}

/// This node's zone label, for topology hints (none if the Node cannot be read:
/// hints are then ignored, as kube-proxy does on a node without a zone).
async fn node_zone(client: &kube::Client, name: &str) -> Option<String> {
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    match api.get_opt(name).await {
        Ok(n) => n
            .and_then(|n| n.metadata.labels)
            .and_then(|l| l.get(model::ZONE_LABEL).cloned()),
        Err(e) => {
            tracing::warn!("reading node {name} for its zone (topology hints ignored): {e}");
            None
        }
    }
}

/// What the watches reported since the last sync.
struct Batch {
    /// Everything may have changed (start, relist).
    all: bool,
    /// The changed Services, each with the names of the slices that name it.
    services: Vec<(ServiceKey, Vec<String>)>,
    pods_all: bool,
    pods: BTreeSet<ServiceKey>,
}

fn take_dirty(dirty: &Mutex<Dirty>) -> Batch {
    let Ok(mut d) = dirty.lock() else {
        return Batch {
            all: true,
            services: Vec::new(),
            pods_all: true,
            pods: BTreeSet::new(),
        };
    };
    let keys = std::mem::take(&mut d.services);
    let services = keys
        .into_iter()
        .map(|k| {
            let n = d.slices.of_service.get(&k).cloned().unwrap_or_default();
            (k, n.into_iter().collect())
        })
        .collect();
    Batch {
        all: std::mem::take(&mut d.all),
        services,
        pods_all: std::mem::take(&mut d.pods_all),
        pods: std::mem::take(&mut d.pods),
    }
}

/// The slices of Service `(ns, name)` among `names`, from the store.
fn slices_of(
    slices: &Store<EndpointSlice>,
    (ns, name): &ServiceKey,
    names: &[String],
) -> Vec<Arc<EndpointSlice>> {
    names
        .iter()
        .filter_map(|n| slices.get(&ObjectRef::new(n).within(ns)))
        // The index may run ahead of or behind the store by an event: keep
        // only slices that still name this Service.
        .filter(|s| model::slice_service(s) == Some((ns.as_str(), name.as_str())))
        .collect()
}

/// Bring the DNS model up to date: the changed Services and Pods only, or a
/// new model after a relist (built outside the lock, then swapped in).
fn update_dns(
    dns: &RwLock<DnsModel>,
    batch: &Batch,
    svcs: &Store<Service>,
    slices: &Store<EndpointSlice>,
    pods: Option<&Store<Pod>>,
    zone: &str,
) {
    if batch.all || batch.pods_all {
        let services = svcs.state();
        let eps = slices.state();
        let pods = pods.map(Store::state).unwrap_or_default();
        let m = DnsModel::build(
            zone,
            services.iter().map(|a| &**a),
            eps.iter().map(|a| &**a),
            pods.iter().map(|a| &**a),
        );
        if let Ok(mut g) = dns.write() {
            *g = m;
        }
        return;
    }
    if batch.services.is_empty() && batch.pods.is_empty() {
        return;
    }
    let Ok(mut g) = dns.write() else { return };
    for (key, names) in &batch.services {
        let svc = svcs.get(&ObjectRef::new(&key.1).within(&key.0));
        let mine = slices_of(slices, key, names);
        let refs: Vec<&EndpointSlice> = mine.iter().map(|a| &**a).collect();
        g.set_service(key, svc.as_deref(), &refs);
    }
    for key in &batch.pods {
        let pod = pods.and_then(|p| p.get(&ObjectRef::new(&key.1).within(&key.0)));
        g.set_pod(key, pod.as_deref());
    }
}

/// Bring `ports` up to date with `batch`. Returns the ids of the ports that
/// changed, or `None` after a rebuild of all.
fn update_ports(
    ports: &mut Ports,
    batch: &Batch,
    svcs: &Store<Service>,
    slices: &Store<EndpointSlice>,
) -> Option<BTreeSet<String>> {
    if batch.all {
        let services = svcs.state();
        let eps = slices.state();
        ports.rebuild(services.iter().map(|a| &**a), eps.iter().map(|a| &**a));
        for s in ports.skipped() {
            tracing::warn!("skipping {}: {}", s.object, s.reason);
        }
        return None;
    }
    let mut changed = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for (key, names) in &batch.services {
        let svc = svcs.get(&ObjectRef::new(&key.1).within(&key.0));
        let mine = slices_of(slices, key, names);
        let refs: Vec<&EndpointSlice> = mine.iter().map(|a| &**a).collect();
        changed.extend(ports.update(key.clone(), svc.as_deref(), &refs));
        keys.insert(key.clone());
    }
    for s in ports.skipped_of(&keys) {
        tracing::warn!("skipping {}: {}", s.object, s.reason);
    }
    Some(changed)
}

/// k3s servicelb's idea without pods: a LoadBalancer Service is reachable on the
/// nodes' addresses, so those are its ingress. Addresses other nodes added stay.
async fn update_lb_status(
    client: &kube::Client,
    services: &[Arc<Service>],
    node: &model::NodeInfo,
) {
    for svc in services
        .iter()
        .filter(|s| s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"))
    {
        let (Some(ns), Some(name)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let current: Vec<String> = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .map(|v| v.iter().filter_map(|i| i.ip.clone()).collect())
            .unwrap_or_default();
        let mut want = current.clone();
        for a in &node.addresses {
            if !want.contains(&a.to_string()) {
                want.push(a.to_string());
            }
        }
        if want == current {
            continue;
        }
        let ingress: Vec<_> = want
            .iter()
            .map(|ip| serde_json::json!({"ip": ip, "ipMode": "VIP"}))
            .collect();
        let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}});
        let api: Api<Service> = Api::namespaced(client.clone(), ns);
        if let Err(e) = api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!("service {ns}/{name}: setting status.loadBalancer: {e}");
        }
    }
}
