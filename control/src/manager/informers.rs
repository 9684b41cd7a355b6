//! Shared informers: one watch per hot resource (Pods, Nodes, node Leases) for every loop
//! the manager runs, decoded once, each change fanned out to every subscriber — what
//! client-go's `SharedInformerFactory` does for kube-controller-manager.
//!
//! Each loop holding its own watch made the API server encode, encrypt and send every Pod
//! event once per loop, and each loop decode it again: ~0.6 ms of server CPU per pod
//! event with ten loops watching Pods. Now there is one watch per resource per term.
//!
//! A subscriber gets a [`Change`] per change with the object before and after it (the
//! store is already updated when it reads it, as a client-go handler sees its indexer),
//! explicit deletions when a relist drops objects, and [`Change::Synced`] once the store
//! holds a full list. One that subscribes late first gets the store's contents. Channels
//! are unbounded so a slow subscriber never holds the others back (kube-rs's shared
//! streams block every subscriber on the slowest, and drop deletions).

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Resource;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher::{self, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// The namespace of the node heartbeat Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The shared informers of one leadership term (they stop with the term's loops).
pub struct Informers {
    pub pods: SharedInformer<Pod>,
    pub nodes: SharedInformer<Node>,
    /// Leases in `kube-node-lease` only (the node heartbeats).
    pub node_leases: SharedInformer<Lease>,
}

impl Informers {
    pub fn new(client: &kube::Client) -> Self {
        Informers {
            pods: SharedInformer::new(Api::all(client.clone())),
            nodes: SharedInformer::new(Api::all(client.clone())),
            node_leases: SharedInformer::new(Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE)),
        }
    }

    /// The watches, by name; the manager runs each beside the loops of the term.
    pub fn watches(&self) -> Vec<(&'static str, crate::manager::LoopFuture)> {
        vec![
            ("informer/pods", Box::pin(self.pods.clone().run())),
            ("informer/nodes", Box::pin(self.nodes.clone().run())),
            (
                "informer/node-leases",
                Box::pin(self.node_leases.clone().run()),
            ),
        ]
    }
}

/// One change as a subscriber sees it.
pub enum Change<K> {
    /// Added (`old` None) or updated; also every object again after a relist.
    Apply { old: Option<Arc<K>>, new: Arc<K> },
    /// Deleted (or gone from a relist), with its last known state.
    Delete(Arc<K>),
    /// The store holds a complete list (after the first list, and after each relist).
    Synced,
}

impl<K> Change<K> {
    /// The object after the change, or the one deleted.
    pub fn object(&self) -> Option<&Arc<K>> {
        match self {
            Change::Apply { new, .. } => Some(new),
            Change::Delete(old) => Some(old),
            Change::Synced => None,
        }
    }
}

/// One watch of `K` and its store, shared by every subscriber. Cheap to clone.
pub struct SharedInformer<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    api: Api<K>,
    store: Store<K>,
    state: Arc<Mutex<State<K>>>,
}

impl<K: Resource + Clone + 'static> Clone for SharedInformer<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn clone(&self) -> Self {
        SharedInformer {
            api: self.api.clone(),
            store: self.store.clone(),
            state: self.state.clone(),
        }
    }
}

struct State<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    writer: Writer<K>,
    subscribers: Vec<mpsc::UnboundedSender<Change<K>>>,
    synced: bool,
}

impl<K> SharedInformer<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Clone + Default + Eq + Hash + Send + Sync,
{
    pub fn new(api: Api<K>) -> Self {
        let writer: Writer<K> = Writer::default();
        let store = writer.as_reader();
        SharedInformer {
            api,
            store,
            state: Arc::new(Mutex::new(State {
                writer,
                subscribers: Vec::new(),
                synced: false,
            })),
        }
    }

    /// The shared store (ready once the first list is in: `wait_until_ready`).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// A new subscriber's channel: the store's current contents first (then `Synced` if
    /// the first list is in), then every change.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Change<K>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.lock();
        if state.synced {
            for obj in self.store.state() {
                let _ = tx.send(Change::Apply {
                    old: None,
                    new: obj,
                });
            }
            let _ = tx.send(Change::Synced);
        }
        state.subscribers.push(tx);
        rx
    }

    /// The changed (or deleted) objects alone: what a kube-rs `Controller` takes in
    /// `owns_shared_stream` / `watches_shared_stream`.
    pub fn objects(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        futures::stream::unfold(self.subscribe(), |mut rx| async move {
            loop {
                match rx.recv().await? {
                    Change::Synced => continue,
                    Change::Apply { new, .. } => return Some((new, rx)),
                    Change::Delete(old) => return Some((old, rx)),
                }
            }
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the watch until dropped, keeping the store and the subscribers up to date.
    pub async fn run(self) {
        let mut events = watcher(self.api.clone(), watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(ev) = events.next().await {
            match ev {
                Ok(ev) => self.apply(ev),
                Err(e) => {
                    tracing::debug!("shared watch of {}: {e}", K::plural(&Default::default()))
                }
            }
        }
    }

    /// Applies one watch event to the store and tells every subscriber, under the lock
    /// a new subscriber takes, so it sees each change exactly once.
    fn apply(&self, ev: watcher::Event<K>) {
        let mut state = self.lock();
        let mut changes = Vec::new();
        match &ev {
            watcher::Event::Apply(obj) => {
                let key = ObjectRef::from_obj(obj);
                let old = self.store.get(&key);
                state.writer.apply_watcher_event(&ev);
                if let Some(new) = self.store.get(&key) {
                    changes.push(Change::Apply { old, new });
                }
            }
            watcher::Event::Delete(obj) => {
                let old = self.store.get(&ObjectRef::from_obj(obj));
                state.writer.apply_watcher_event(&ev);
                changes.push(Change::Delete(old.unwrap_or_else(|| Arc::new(obj.clone()))));
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {
                state.writer.apply_watcher_event(&ev);
            }
            watcher::Event::InitDone => {
                // A relist swaps the whole store: every object is told again (an
                // informer's resync) and those no longer listed are deleted.
                let mut before: HashMap<ObjectRef<K>, Arc<K>> = self
                    .store
                    .state()
                    .into_iter()
                    .map(|o| (ObjectRef::from_obj(o.as_ref()), o))
                    .collect();
                state.writer.apply_watcher_event(&ev);
                for new in self.store.state() {
                    let old = before.remove(&ObjectRef::from_obj(new.as_ref()));
                    changes.push(Change::Apply { old, new });
                }
                changes.extend(before.into_values().map(Change::Delete));
                changes.push(Change::Synced);
                state.synced = true;
            }
        }
        if changes.is_empty() {
            return;
        }
        state.subscribers.retain(|tx| {
            changes.iter().all(|c| {
                tx.send(match c {
                    Change::Apply { old, new } => Change::Apply {
                        old: old.clone(),
                        new: new.clone(),
                    },
                    Change::Delete(o) => Change::Delete(o.clone()),
                    Change::Synced => Change::Synced,
                })
                .is_ok()
            })
        });
    }
}
