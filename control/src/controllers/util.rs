//! What the cluster controllers share, after client-go's shared machinery: an informer
//! (a kube-rs watcher feeding a reflector store, with a handler told the old and the new
//! object of every change), a deduplicating work queue with per-key retry backoff, and an
//! Event recorder writing core/v1 Events (what `kubectl get events` and `kubectl describe`
//! read).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher::{self, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::manager::informers::{Change, SharedInformer};

/// Called with (old, new) for every change a watch shows: (None, Some) added,
/// (Some, Some) updated, (Some, None) deleted. Runs on the informer's task: keep it short
/// (enqueue keys).
pub trait Handler<K>: Fn(Option<&K>, Option<&K>) + Send + Sync + 'static {}
impl<K, F: Fn(Option<&K>, Option<&K>) + Send + Sync + 'static> Handler<K> for F {}

/// A store kept in sync with the API by a watch, and the future that keeps it so (run it
/// next to the controller's workers; dropping it stops the watch).
pub fn informer<K>(
    api: Api<K>,
    config: watcher::Config,
    handler: impl Handler<K>,
) -> (Store<K>, impl Future<Output = ()> + Send + 'static)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Clone + Default + Eq + Hash + Send + Sync,
{
    let mut writer: Writer<K> = Writer::default();
    let reader = writer.as_reader();
    let store = reader.clone();
    let run = async move {
        let mut events = watcher(api, config).default_backoff().boxed();
        let mut relist: Vec<K> = Vec::new();
        while let Some(ev) = events.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::debug!("watch of {}: {e}", K::plural(&Default::default()));
                    continue;
                }
            };
            match &ev {
                watcher::Event::Apply(obj) | watcher::Event::Delete(obj) => {
                    let old = reader.get(&ObjectRef::from_obj(obj));
                    writer.apply_watcher_event(&ev);
                    if matches!(ev, watcher::Event::Apply(_)) {
                        handler(old.as_deref(), Some(obj));
                    } else {
                        handler(old.as_deref().or(Some(obj)), None);
                    }
                }
                watcher::Event::Init => {
                    relist.clear();
                    writer.apply_watcher_event(&ev);
                }
                watcher::Event::InitApply(obj) => {
                    relist.push(obj.clone());
                    writer.apply_watcher_event(&ev);
                }
                watcher::Event::InitDone => {
                    // A relist swaps the whole store: tell the handler about every object
                    // (changed or not, like an informer's resync) and about those gone.
                    let before: HashMap<ObjectRef<K>, Arc<K>> = reader
                        .state()
                        .into_iter()
                        .map(|o| (ObjectRef::from_obj(o.as_ref()), o))
                        .collect();
                    writer.apply_watcher_event(&ev);
                    let mut seen = HashSet::new();
                    for obj in relist.drain(..) {
                        let r = ObjectRef::from_obj(&obj);
                        handler(before.get(&r).map(Arc::as_ref), Some(&obj));
                        seen.insert(r);
                    }
                    for (r, old) in &before {
                        if !seen.contains(r) {
                            handler(Some(old.as_ref()), None);
                        }
                    }
                }
            }
        }
    };
    (store, run)
}

/// [`informer`] on the manager's shared watch of `K` (Pods, Nodes, node Leases): the
/// shared store, and the future that calls `handler` for each change.
pub fn subscribe<K>(
    shared: &SharedInformer<K>,
    handler: impl Handler<K>,
) -> (Store<K>, impl Future<Output = ()> + Send + 'static)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Clone + Default + Eq + Hash + Send + Sync,
{
    let mut changes = shared.subscribe();
    let run = async move {
        while let Some(change) = changes.recv().await {
            match change {
                Change::Apply { old, new } => handler(old.as_deref(), Some(&new)),
                Change::Delete(old) => handler(Some(&old), None),
                Change::Synced => {}
            }
        }
    };
    (shared.store(), run)
}

/// `namespace/name` (or `name`) of an object: the work queues' key.
pub fn key_of<K: Resource>(obj: &K) -> String {
    match obj.meta().namespace.as_deref() {
        Some(ns) => format!("{ns}/{}", obj.name_any()),
        None => obj.name_any(),
    }
}

/// Splits a queue key back into (namespace, name).
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, key),
    }
}

/// A work queue as client-go's: a key is queued at most once, never handed to two workers
/// at once (a key changed while being processed is queued again when its worker is done),
/// and failures are retried with a per-key exponential backoff.
pub struct Queue<T> {
    state: Mutex<QueueState<T>>,
    notify: Notify,
}

struct QueueState<T> {
    queue: VecDeque<T>,
    dirty: HashSet<T>,
    processing: HashSet<T>,
    failures: HashMap<T, u32>,
}

impl<T: Clone + Eq + Hash + Send + Sync + 'static> Queue<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(Queue {
            state: Mutex::new(QueueState {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
            }),
            notify: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, item: T) {
        let mut s = self.lock();
        if !s.dirty.insert(item.clone()) {
            return;
        }
        if !s.processing.contains(&item) {
            s.queue.push_back(item);
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Queues `item` after `delay` (the queue holds no reference to itself meanwhile).
    pub fn add_after(self: &Arc<Self>, item: T, delay: Duration) {
        if delay.is_zero() {
            self.add(item);
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(q) = weak.upgrade() {
                q.add(item);
            }
        });
    }

    async fn get(&self) -> T {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.lock();
                if let Some(item) = s.queue.pop_front() {
                    s.dirty.remove(&item);
                    s.processing.insert(item.clone());
                    if !s.queue.is_empty() {
                        self.notify.notify_one();
                    }
                    return item;
                }
            }
            notified.await;
        }
    }

    fn done(&self, item: &T) {
        let mut s = self.lock();
        s.processing.remove(item);
        if s.dirty.contains(item) {
            s.queue.push_back(item.clone());
            drop(s);
            self.notify.notify_one();
        }
    }

    fn retry_delay(&self, item: &T) -> Duration {
        let mut s = self.lock();
        let n = s.failures.entry(item.clone()).or_insert(0);
        *n = (*n + 1).min(16);
        Duration::from_millis(5u64 << *n).min(Duration::from_secs(30))
    }

    fn forget(&self, item: &T) {
        self.lock().failures.remove(item);
    }
}

/// What a sync asks of the queue afterwards.
pub type SyncResult = Result<Option<Duration>, String>;

/// Runs `workers` workers over `queue` until dropped. `sync` returning `Ok(Some(d))`
/// requeues the key after `d`; an error requeues it with backoff.
pub async fn run_workers<T, F, Fut>(queue: Arc<Queue<T>>, workers: usize, name: &str, sync: F)
where
    T: Clone + Eq + Hash + Send + Sync + Debug + 'static,
    F: Fn(T) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = SyncResult> + Send,
{
    let one = |queue: Arc<Queue<T>>, sync: F| async move {
        loop {
            let item = queue.get().await;
            match sync(item.clone()).await {
                Ok(again) => {
                    queue.forget(&item);
                    if let Some(d) = again {
                        queue.add_after(item.clone(), d);
                    }
                }
                Err(e) => {
                    let d = queue.retry_delay(&item);
                    tracing::info!(controller = name, key = ?item, "sync failed (retry in {d:?}): {e}");
                    queue.add_after(item.clone(), d);
                }
            }
            queue.done(&item);
        }
    };
    let all: Vec<_> = (0..workers.max(1))
        .map(|_| one(queue.clone(), sync.clone()))
        .collect();
    futures::future::join_all(all).await;
}

/// (involved object uid, reason, message): what makes two Events the same.
type EventId = (String, String, String);
/// (namespace, name, count) of the Event written for an [`EventId`].
type Recorded = (String, String, i32);

/// Records core/v1 Events as a Kubernetes component does (`source.component` and
/// `reportingComponent` = the controller's name), folding repeats into one Event whose
/// `count` grows, as client-go's correlator does.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    component: &'static str,
    host: String,
    seen: Arc<Mutex<HashMap<EventId, Recorded>>>,
}

impl Recorder {
    pub fn new(client: kube::Client, component: &'static str) -> Self {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        Recorder {
            client,
            component,
            host,
            seen: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub async fn normal(&self, on: &ObjectReference, reason: &str, message: &str) {
        self.record(on, "Normal", reason, message).await
    }

    pub async fn warning(&self, on: &ObjectReference, reason: &str, message: &str) {
        self.record(on, "Warning", reason, message).await
    }

    /// Best effort: an Event that cannot be written is logged, never an error of the sync.
    pub async fn record(&self, on: &ObjectReference, type_: &str, reason: &str, message: &str) {
        let ns = on
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let id = (
            on.uid.clone().unwrap_or_default(),
            reason.to_string(),
            message.to_string(),
        );
        let now = jiff::Timestamp::now();
        let prior = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        if let Some((evns, name, count)) = prior {
            let patch = serde_json::json!({"count": count + 1, "lastTimestamp": Time(now)});
            let api: Api<Event> = Api::namespaced(self.client.clone(), &evns);
            if api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                self.remember(id, evns, name, count + 1);
                return;
            }
        }
        let name = format!(
            "{}.{:x}",
            on.name.as_deref().unwrap_or("unknown"),
            now.as_nanosecond() as u64
        );
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..ObjectMeta::default()
            },
            involved_object: on.clone(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some(type_.to_string()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            source: Some(EventSource {
                component: Some(self.component.to_string()),
                host: None,
            }),
            reporting_component: Some(self.component.to_string()),
            reporting_instance: Some(format!("{}-{}", self.component, self.host)),
            action: Some(reason.to_string()),
            ..Event::default()
        };
        match api.create(&PostParams::default(), &ev).await {
            Ok(_) => self.remember(id, ns, name, 1),
            Err(e) => tracing::debug!(component = self.component, "event {reason}: {e}"),
        }
    }

    fn remember(&self, id: EventId, ns: String, name: String, count: i32) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 4096 {
            seen.clear();
        }
        seen.insert(id, (ns, name, count));
    }
}

/// An object's reference for Events.
pub fn reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    obj.object_ref(&())
}

/// True when the API said the object is not there.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// True when the API said the object already exists.
pub fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists")
}

/// True when a write lost an optimistic-concurrency race.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 && s.reason != "AlreadyExists")
}
