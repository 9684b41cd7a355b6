//! The scheduler (kube-scheduler's role, `schedulerName: default-scheduler`): binds every
//! pod without `spec.nodeName` to a node through the `pods/binding` subresource.
//!
//! One task owns the state and decides; watches feed it through a channel, bindings and
//! Events are written by other tasks so a decision never waits on the API:
//! - [`cache`]: nodes, Leases, pods and what bound (or assumed) pods use per node;
//! - [`queue`]: active / backoff / unschedulable pods;
//! - [`decide`]: one decision, [`filter`] then [`score`] over a sample of the nodes (kube's
//!   `percentageOfNodesToScore`), with [`labels`] (selectors, node affinity,
//!   tolerations), [`affinity`] (inter-pod affinity, topology spread) and [`resources`]
//!   (requests vs allocatable);
//! - [`message`]: the `0/N nodes are available: ...` text;
//! - [`events`]: `Scheduled` / `FailedScheduling` Events and the `PodScheduled` condition;
//! - [`metrics`]: process-wide counters (attempts, decision and binding time).

pub mod affinity;
pub mod cache;
pub mod decide;
pub mod events;
pub mod filter;
pub mod labels;
pub mod message;
pub mod metrics;
pub mod queue;
pub mod resources;
pub mod score;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::PostParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};

use crate::manager::informers::{Change, Informers, SharedInformer};
use crate::manager::{Context, LoopFuture};
use cache::{Cache, NodeInfo, PodInfo};

/// The `spec.schedulerName` this scheduler serves.
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// Bindings in flight at once.
const BIND_CONCURRENCY: usize = 32;
/// Below this many nodes every node is evaluated (kube's `minFeasibleNodesToFind`).
const MIN_FEASIBLE: usize = 100;

/// The manager's entry point (loop name "scheduler").
pub fn run(ctx: Arc<Context>) -> LoopFuture {
    Box::pin(async move { Scheduler::new(&ctx).run(&ctx.informers).await })
}

/// How many feasible nodes to find before scoring: all below 100 nodes, else an
/// adaptive share (50% minus 1% per 125 nodes, at least 5%), at least 100.
pub fn feasible_to_find(nodes: usize) -> usize {
    if nodes < MIN_FEASIBLE {
        return nodes;
    }
    let pct = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * pct / 100).max(MIN_FEASIBLE)
}

enum Input {
    Node(Box<Event<Node>>),
    Pod(Box<Event<Pod>>),
    Lease(Event<Lease>),
    Namespace(Event<Namespace>),
    /// A shared informer's store holds a full list.
    Synced(Kind),
    Bound {
        key: String,
        node: String,
        result: Result<(), BindError>,
    },
}

/// The kinds the scheduler takes from the manager's shared informers.
#[derive(Clone, Copy)]
enum Kind {
    Nodes,
    Pods,
    Leases,
}

enum BindError {
    /// Already bound, or gone: the watch brings the truth.
    Settled(String),
    Failed(String),
}

/// Which watches have delivered their first full list, and what a relist has seen.
#[derive(Default)]
struct Sync {
    nodes: bool,
    pods: bool,
    leases: bool,
    relist: HashMap<&'static str, HashSet<String>>,
}

struct Scheduler {
    client: kube::Client,
    grace: Duration,
    cache: Cache,
    queue: queue::Queue,
    /// Pods whose binding is being written.
    inflight: HashSet<String>,
    /// The last unschedulable message written per pod (the condition is only rewritten
    /// when it changes).
    last_failure: HashMap<String, String>,
    next_start: usize,
    sync: Sync,
    tx: mpsc::UnboundedSender<Input>,
    rx: mpsc::UnboundedReceiver<Input>,
    binds: Arc<Semaphore>,
    tasks: tokio::task::JoinSet<()>,
    writer: events::Writer,
}

impl Scheduler {
    fn new(ctx: &Context) -> Scheduler {
        let (tx, rx) = mpsc::unbounded_channel();
        let binds = Arc::new(Semaphore::new(BIND_CONCURRENCY));
        let in_flight = binds.clone();
        let busy = move || in_flight.available_permits() < BIND_CONCURRENCY;
        Scheduler {
            client: ctx.client.clone(),
            grace: ctx.options.node_monitor_grace_period,
            cache: Cache::default(),
            queue: queue::Queue::default(),
            inflight: HashSet::new(),
            last_failure: HashMap::new(),
            next_start: 0,
            sync: Sync::default(),
            tx,
            rx,
            binds,
            tasks: tokio::task::JoinSet::new(),
            writer: events::Writer::spawn(ctx.client.clone(), busy),
        }
    }

    fn watch<K>(&mut self, api: Api<K>, wrap: fn(Event<K>) -> Input)
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let tx = self.tx.clone();
        self.tasks.spawn(async move {
            let mut events = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(ev) => {
                        if tx.send(wrap(ev)).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!("scheduler watch: {e}"),
                }
            }
        });
    }

    /// Feeds a shared informer's changes in as watch events (the informer already turned
    /// a relist into explicit deletions, so `Synced` only marks the list complete).
    fn subscribe<K>(&mut self, shared: &SharedInformer<K>, kind: Kind, wrap: fn(Event<K>) -> Input)
    where
        K: Resource
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + std::marker::Sync
            + 'static,
        K::DynamicType: Clone + Default + Eq + std::hash::Hash + Send + std::marker::Sync,
    {
        let tx = self.tx.clone();
        let mut changes = shared.subscribe();
        self.tasks.spawn(async move {
            while let Some(change) = changes.recv().await {
                let input = match change {
                    Change::Apply { new, .. } => wrap(Event::Apply(Arc::unwrap_or_clone(new))),
                    Change::Delete(old) => wrap(Event::Delete(Arc::unwrap_or_clone(old))),
                    Change::Synced => Input::Synced(kind),
                };
                if tx.send(input).is_err() {
                    return;
                }
            }
        });
    }

    async fn run(mut self, informers: &Informers) {
        self.subscribe(&informers.nodes, Kind::Nodes, |e| Input::Node(Box::new(e)));
        self.subscribe(&informers.pods, Kind::Pods, |e| Input::Pod(Box::new(e)));
        self.subscribe(&informers.node_leases, Kind::Leases, Input::Lease);
        self.watch(Api::<Namespace>::all(self.client.clone()), Input::Namespace);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut progress = Progress::default();
        loop {
            while let Ok(input) = self.rx.try_recv() {
                self.handle(input);
            }
            while self.tasks.try_join_next().is_some() {}
            let ready = self.sync.nodes && self.sync.pods && self.sync.leases;
            if ready && let Some(key) = self.queue.pop() {
                self.schedule_one(&key);
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                input = self.rx.recv() => match input {
                    Some(input) => self.handle(input),
                    None => return,
                },
                _ = tick.tick() => {
                    let pods = &self.cache.pods;
                    self.queue.tick(|k| pods.get(k).filter(|p| p.node_name.is_none()).map(|p| p.priority));
                    progress.log(self.queue.lens(), self.inflight.len());
                }
            }
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Node(ev) => self.on_node(*ev),
            Input::Pod(ev) => self.on_pod(*ev),
            Input::Lease(ev) => self.on_lease(ev),
            Input::Namespace(ev) => {
                let sync = &mut self.sync;
                let ns = &mut self.cache.namespaces;
                let seen = relist(
                    sync,
                    "namespaces",
                    ev,
                    |n: &Namespace| n.metadata.name.clone(),
                    |n, present| {
                        let name = n.metadata.name.clone().unwrap_or_default();
                        if present {
                            ns.insert(name, n.metadata.labels.clone().unwrap_or_default());
                        } else {
                            ns.remove(&name);
                        }
                    },
                );
                if let Some(seen) = seen {
                    ns.retain(|k, _| seen.contains(k));
                }
            }
            Input::Bound { key, node, result } => self.on_bound(key, node, result),
            Input::Synced(Kind::Nodes) => {
                self.sync.nodes = true;
                self.queue.move_all();
            }
            Input::Synced(Kind::Pods) => self.sync.pods = true,
            Input::Synced(Kind::Leases) => {
                self.sync.leases = true;
                self.queue.move_all();
            }
        }
    }

    fn on_node(&mut self, ev: Event<Node>) {
        let mut retry = false;
        let cache = &mut self.cache;
        let seen = relist(
            &mut self.sync,
            "nodes",
            ev,
            |n: &Node| n.metadata.name.clone(),
            |n, present| {
                if present {
                    retry |= cache.upsert_node(NodeInfo::from_node(&n));
                } else if let Some(name) = n.metadata.name.as_deref() {
                    cache.remove_node(name);
                }
            },
        );
        if let Some(seen) = seen {
            let gone: Vec<String> = self
                .cache
                .nodes
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect();
            for n in gone {
                self.cache.remove_node(&n);
            }
            self.sync.nodes = true;
        }
        if retry {
            self.queue.move_all();
        }
    }

    fn on_lease(&mut self, ev: Event<Lease>) {
        let now = jiff::Timestamp::now();
        let mut revived = false;
        let grace = jiff::SignedDuration::try_from(self.grace)
            .unwrap_or(jiff::SignedDuration::from_secs(40));
        let leases = &mut self.cache.lease_expiry;
        let seen = relist(
            &mut self.sync,
            "leases",
            ev,
            |l: &Lease| l.metadata.name.clone(),
            |l, present| {
                let Some(name) = l.metadata.name.clone() else {
                    return;
                };
                if !present {
                    leases.remove(&name);
                    return;
                }
                let spec = l.spec.as_ref();
                let expiry = spec.and_then(|s| s.renew_time.as_ref()).and_then(|t| {
                    let secs = spec.and_then(|s| s.lease_duration_seconds).unwrap_or(40);
                    let valid = jiff::SignedDuration::from_secs(i64::from(secs)).max(grace);
                    t.0.checked_add(valid).ok()
                });
                let Some(expiry) = expiry else { return };
                let was_live = leases.get(&name).is_some_and(|e| *e > now);
                revived |= !was_live && expiry > now;
                leases.insert(name, expiry);
            },
        );
        if let Some(seen) = seen {
            self.cache.lease_expiry.retain(|k, _| seen.contains(k));
            self.sync.leases = true;
        }
        if revived {
            self.queue.move_all();
        }
    }

    fn on_pod(&mut self, ev: Event<Pod>) {
        let mut applied = Vec::new();
        let mut deleted = Vec::new();
        let seen = relist(&mut self.sync, "pods", ev, pod_key, |p, present| {
            if present {
                applied.push(p);
            } else if let Some(k) = pod_key(&p) {
                deleted.push(k);
            }
        });
        for p in applied {
            self.apply_pod(p);
        }
        for key in deleted {
            self.delete_pod(&key);
        }
        if let Some(seen) = seen {
            let gone: Vec<String> = self
                .cache
                .pods
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect();
            for key in gone {
                self.delete_pod(&key);
            }
            self.sync.pods = true;
        }
    }

    fn apply_pod(&mut self, pod: Pod) {
        let info = PodInfo::from_pod(pod);
        let key = info.key.clone();
        let old = self.cache.pods.get(&key).cloned();
        let newly_bound = info.node_name.is_some()
            && old
                .as_ref()
                .is_none_or(|o| o.node_name.is_none() || self.cache.assumed.contains_key(&key));
        let freed = old
            .as_ref()
            .is_some_and(|o| o.node_name.is_some() && !o.terminal)
            && info.terminal;
        let spec_changed = old
            .as_ref()
            .is_none_or(|o| o.pod.spec != info.pod.spec || o.labels != info.labels);
        let info = self.cache.upsert_pod(info);
        if info.node_name.is_some() {
            self.queue.remove(&key);
            self.last_failure.remove(&key);
            if freed {
                self.queue.move_all();
            } else if newly_bound {
                self.retry_affinity_pods();
            }
            return;
        }
        // Scheduling gates hold a pod back until they are all removed (a spec update).
        let gated = info
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduling_gates.as_ref())
            .is_some_and(|g| !g.is_empty());
        if info.scheduler_name != SCHEDULER_NAME || info.deleting || info.terminal || gated {
            self.queue.remove(&key);
            return;
        }
        if self.inflight.contains(&key) {
            return;
        }
        if spec_changed || !self.queue.contains(&key) {
            self.queue.add(&key, info.priority);
        }
    }

    /// A newly bound pod may satisfy a waiting pod's affinity or change a spread.
    fn retry_affinity_pods(&mut self) {
        if self.queue.lens().2 == 0 {
            return;
        }
        // Only the parked pods: walking every pod here, once per binding, made a burst
        // quadratic whenever a single pod was unschedulable.
        let pods = &self.cache.pods;
        let waiting_on_pods = self.queue.unschedulable_keys().any(|k| {
            pods.get(k).is_some_and(|p| {
                p.node_name.is_none()
                    && p.pod.spec.as_ref().is_some_and(|s| {
                        s.topology_spread_constraints
                            .as_ref()
                            .is_some_and(|c| !c.is_empty())
                            || s.affinity
                                .as_ref()
                                .is_some_and(|a| a.pod_affinity.is_some())
                    })
            })
        });
        if waiting_on_pods {
            self.queue.move_all();
        }
    }

    fn delete_pod(&mut self, key: &str) {
        let held = self
            .cache
            .pods
            .get(key)
            .is_some_and(|p| p.node_name.is_some() && !p.terminal);
        self.cache.remove_pod(key);
        self.queue.remove(key);
        self.last_failure.remove(key);
        if held {
            self.queue.move_all();
        }
    }

    fn on_bound(&mut self, key: String, node: String, result: Result<(), BindError>) {
        self.inflight.remove(&key);
        match result {
            Ok(()) => {
                self.last_failure.remove(&key);
            }
            Err(BindError::Settled(why)) => {
                tracing::debug!(pod = %key, %node, "binding not needed: {why}");
                self.cache.forget(&key);
            }
            Err(BindError::Failed(why)) => {
                tracing::warn!(pod = %key, %node, "binding failed: {why}");
                self.cache.forget(&key);
                if self
                    .cache
                    .pods
                    .get(&key)
                    .is_some_and(|p| p.node_name.is_none())
                {
                    self.queue.retry_later(&key);
                }
            }
        }
    }

    fn schedule_one(&mut self, key: &str) {
        let Some(pod) = self.cache.pods.get(key).cloned() else {
            return;
        };
        if pod.node_name.is_some() || pod.deleting || pod.scheduler_name != SCHEDULER_NAME {
            return;
        }
        let started = std::time::Instant::now();
        let cpu = metrics::ThreadCpu::start();
        let decision = decide::decide(&self.cache, pod.clone(), &mut self.next_start);
        let chosen = match decision {
            decide::Decision::Node(node) => node,
            decide::Decision::Unschedulable(msg) => {
                tracing::debug!(pod = %key, "unschedulable: {msg}");
                let condition = self.last_failure.get(key) != Some(&msg);
                self.last_failure.insert(key.to_string(), msg.clone());
                self.queue.unschedulable(key);
                metrics::METRICS.attempt(started.elapsed(), cpu.elapsed(), false);
                self.writer.send(events::Write::FailedScheduling {
                    pod,
                    message: msg,
                    condition,
                });
                return;
            }
        };
        metrics::METRICS.attempt(started.elapsed(), cpu.elapsed(), true);
        self.cache.assume(key, &chosen);
        self.inflight.insert(key.to_string());
        self.spawn_bind(pod, chosen);
    }

    fn spawn_bind(&mut self, pod: Arc<PodInfo>, node: String) {
        let client = self.client.clone();
        let tx = self.tx.clone();
        let binds = self.binds.clone();
        let writer = self.writer.clone();
        self.tasks.spawn(async move {
            let _permit = binds.acquire_owned().await;
            let started = std::time::Instant::now();
            let api: Api<Pod> = Api::namespaced(client, &pod.namespace);
            let binding = json!({
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            });
            let result = match api
                .create_subresource::<_, serde_json::Value>(
                    "binding",
                    &pod.name,
                    &PostParams::default(),
                    &binding,
                )
                .await
            {
                Ok(_) => {
                    writer.send(events::Write::Scheduled {
                        pod: pod.clone(),
                        node: node.clone(),
                    });
                    Ok(())
                }
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                    Err(BindError::Settled(s.message))
                }
                Err(e) => Err(BindError::Failed(e.to_string())),
            };
            metrics::METRICS.bind(started.elapsed(), result.is_ok());
            let _ = tx.send(Input::Bound {
                key: pod.key.clone(),
                node,
                result,
            });
        });
    }
}

/// A debug line a second while pods are being scheduled: the counters, the queue and the
/// bindings in flight — whether a backlog sits in the queue (deciding) or in flight (the
/// API), or nowhere (the pods reach the scheduler late).
#[derive(Default)]
struct Progress {
    last: Option<std::time::Instant>,
    attempts: u64,
}

impl Progress {
    fn log(&mut self, (active, backoff, parked): (usize, usize, usize), inflight: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &metrics::METRICS;
        let attempts = m.scheduled.load(Relaxed) + m.unschedulable.load(Relaxed);
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            || attempts == self.attempts
        {
            return;
        }
        self.last = Some(std::time::Instant::now());
        self.attempts = attempts;
        tracing::debug!(
            "scheduler: {}; queue {active} active, {backoff} backoff, {parked} unschedulable; {inflight} bindings in flight",
            m.summary()
        );
    }
}

fn pod_key(p: &Pod) -> Option<String> {
    Some(format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or(""),
        p.metadata.name.as_deref()?
    ))
}

/// Applies one watch event of a kind, tracking relists. When a (re)list completes,
/// returns the names it showed: anything else the caller holds is gone.
fn relist<K>(
    sync: &mut Sync,
    kind: &'static str,
    ev: Event<K>,
    name: impl Fn(&K) -> Option<String>,
    mut apply: impl FnMut(K, bool),
) -> Option<HashSet<String>> {
    match ev {
        Event::Apply(o) => apply(o, true),
        Event::Delete(o) => apply(o, false),
        Event::Init => {
            sync.relist.insert(kind, HashSet::new());
        }
        Event::InitApply(o) => {
            if let Some(n) = name(&o) {
                sync.relist.entry(kind).or_default().insert(n);
            }
            apply(o, true);
        }
        Event::InitDone => return Some(sync.relist.remove(kind).unwrap_or_default()),
    }
    None
}
