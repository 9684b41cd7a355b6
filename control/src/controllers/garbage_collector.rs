//! The garbage collector, after kube-controller-manager's: a graph of ownerReferences over
//! every resource discovery lists (one metadata watch per resource), and three kinds of
//! work on it:
//! - a dependent whose owners are all gone is deleted (in the background), one with some
//!   owners left loses the references to the gone ones;
//! - an owner deleted in the foreground (finalizer `foregroundDeletion`, added by the API
//!   server for `propagationPolicy=Foreground`) has its dependents deleted first; its
//!   finalizer goes once no dependent with `blockOwnerDeletion` is left;
//! - an owner deleted with `propagationPolicy=Orphan` (finalizer `orphan`) has its
//!   reference removed from every dependent, then the finalizer.
//!
//! An owner missing from the graph is looked up live (by name, then uid) before anything
//! is deleted: the graph may lag, a wrong deletion cannot be undone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use serde_json::json;

use super::util::{self, Queue, SyncResult};
use crate::manager::informers::{Change, SharedInformer};
use crate::manager::{Context, LoopFuture};

pub const NAME: &str = "garbage-collector-controller";
pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";
/// How often discovery is run again for resources that appeared (CRDs, aggregated APIs).
const REDISCOVERY: Duration = Duration::from_secs(30);

/// A resource the collector watches.
#[derive(Clone)]
struct Kind {
    ar: ApiResource,
    namespaced: bool,
}

/// One object in the graph.
#[derive(Clone)]
struct Object {
    kind: Arc<Kind>,
    namespace: Option<String>,
    name: String,
    resource_version: Option<String>,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

#[derive(Default)]
struct Graph {
    objects: HashMap<String, Object>,
    /// owner uid → dependent uids (owners need not be in `objects`).
    dependents: HashMap<String, HashSet<String>>,
    /// (apiVersion, kind) → resource, to resolve ownerReferences.
    kinds: HashMap<(String, String), Arc<Kind>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Work {
    /// Are this object's owners still there?
    Check(String),
    /// This owner is deleted in the foreground.
    Foreground(String),
    /// This owner is deleted orphaning its dependents.
    Orphan(String),
}

type Shared = Arc<Mutex<Graph>>;

fn lock(g: &Mutex<Graph>) -> std::sync::MutexGuard<'_, Graph> {
    g.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn start(ctx: Arc<Context>) -> LoopFuture {
    Box::pin(run(ctx))
}

async fn run(ctx: Arc<Context>) {
    let graph: Shared = Arc::default();
    let queue: Arc<Queue<Work>> = Queue::new();
    let mut watches = tokio::task::JoinSet::new();
    let mut watched: HashSet<(String, String)> = HashSet::new();
    let (synced_tx, mut synced_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut pending = 0usize;
    let mut workers_started = false;
    let mut workers = tokio::task::JoinSet::new();
    let mut rediscover = tokio::time::interval(REDISCOVERY);
    loop {
        tokio::select! {
            _ = rediscover.tick() => {
                let kinds = match discover(&ctx.client).await {
                    Ok(k) => k,
                    Err(e) => {
                        tracing::info!("{NAME}: discovery failed (retrying): {e}");
                        continue;
                    }
                };
                for kind in kinds {
                    let id = (kind.ar.api_version.clone(), kind.ar.kind.clone());
                    lock(&graph).kinds.insert(id.clone(), kind.clone());
                    if watched.insert(id) {
                        pending += 1;
                        let (g, q, tx) = (graph.clone(), queue.clone(), synced_tx.clone());
                        // Pods and Nodes come from the manager's shared informers: their
                        // watches are the hot ones, and each extra watch costs the server.
                        match (kind.ar.group.as_str(), kind.ar.plural.as_str()) {
                            ("", "pods") => watches.spawn(watch_shared(&ctx.informers.pods, kind, g, q, tx)),
                            ("", "nodes") => watches.spawn(watch_shared(&ctx.informers.nodes, kind, g, q, tx)),
                            _ => watches.spawn(watch_kind(ctx.client.clone(), kind, g, q, tx)),
                        };
                    }
                }
            }
            Some(()) = synced_rx.recv() => {
                pending = pending.saturating_sub(1);
                // Act only once every resource has been listed: before that, owners look absent.
                if pending == 0 && !workers_started {
                    workers_started = true;
                    let (ctx, graph, queue) = (ctx.clone(), graph.clone(), queue.clone());
                    workers.spawn(async move {
                        let sync = move |w: Work| {
                            let (ctx, graph) = (ctx.clone(), graph.clone());
                            async move { sync(&ctx, &graph, w).await }
                        };
                        util::run_workers(queue, 4, NAME, sync).await;
                    });
                }
            }
            Some(_) = watches.join_next() => {}
        }
    }
}

/// Every resource that can be listed, watched and deleted, except Events (as
/// kube-controller-manager ignores them).
async fn discover(client: &kube::Client) -> Result<Vec<Arc<Kind>>, kube::Error> {
    let d = Discovery::new(client.clone()).run().await?;
    let mut out = Vec::new();
    for group in d.groups() {
        for (ar, caps) in group.recommended_resources() {
            if ar.plural == "events"
                || !caps.supports_operation(verbs::LIST)
                || !caps.supports_operation(verbs::WATCH)
                || !caps.supports_operation(verbs::DELETE)
            {
                continue;
            }
            out.push(Arc::new(Kind {
                namespaced: caps.scope == Scope::Namespaced,
                ar,
            }));
        }
    }
    Ok(out)
}

async fn watch_kind(
    client: kube::Client,
    kind: Arc<Kind>,
    graph: Shared,
    queue: Arc<Queue<Work>>,
    synced: tokio::sync::mpsc::UnboundedSender<()>,
) {
    let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client, &kind.ar);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut told = false;
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) => {
                apply(&graph, &queue, &kind, &m);
            }
            Ok(watcher::Event::Delete(m)) => remove(&graph, &queue, &m),
            Ok(watcher::Event::InitDone) => {
                if !told {
                    told = true;
                    let _ = synced.send(());
                }
            }
            Ok(watcher::Event::Init) => {}
            Err(e) => {
                tracing::debug!("{NAME}: watch of {}: {e}", kind.ar.plural);
                // A resource that cannot be watched must not hold the whole collector back;
                // its objects are missing from the graph, and owners are looked up live.
                if !told {
                    told = true;
                    let _ = synced.send(());
                }
            }
        }
    }
}

/// [`watch_kind`] fed by one of the manager's shared informers.
fn watch_shared<K>(
    shared: &SharedInformer<K>,
    kind: Arc<Kind>,
    graph: Shared,
    queue: Arc<Queue<Work>>,
    synced: tokio::sync::mpsc::UnboundedSender<()>,
) -> impl Future<Output = ()> + Send + 'static
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Clone + Default + Eq + std::hash::Hash + Send + Sync,
{
    let mut changes = shared.subscribe();
    let meta = |o: &K| PartialObjectMeta::<DynamicObject> {
        types: None,
        metadata: o.meta().clone(),
        _phantom: std::marker::PhantomData,
    };
    async move {
        let mut told = false;
        while let Some(change) = changes.recv().await {
            match change {
                Change::Apply { new, .. } => apply(&graph, &queue, &kind, &meta(&new)),
                Change::Delete(old) => remove(&graph, &queue, &meta(&old)),
                Change::Synced => {
                    if !told {
                        told = true;
                        let _ = synced.send(());
                    }
                }
            }
        }
    }
}

fn apply(
    graph: &Mutex<Graph>,
    queue: &Queue<Work>,
    kind: &Arc<Kind>,
    m: &PartialObjectMeta<DynamicObject>,
) {
    let Some(uid) = m.metadata.uid.clone() else {
        return;
    };
    let owners = m.metadata.owner_references.clone().unwrap_or_default();
    let finalizers = m.metadata.finalizers.clone().unwrap_or_default();
    let deleting = m.metadata.deletion_timestamp.is_some();
    let mut g = lock(graph);
    let old = g.objects.get(&uid).cloned();
    let old_owner_uids: HashSet<String> = old
        .as_ref()
        .map(|o| o.owners.iter().map(|r| r.uid.clone()).collect())
        .unwrap_or_default();
    let new_owner_uids: HashSet<String> = owners.iter().map(|r| r.uid.clone()).collect();
    for gone in old_owner_uids.difference(&new_owner_uids) {
        if let Some(set) = g.dependents.get_mut(gone) {
            set.remove(&uid);
            if set.is_empty() {
                g.dependents.remove(gone);
            }
        }
    }
    for owner in &new_owner_uids {
        g.dependents
            .entry(owner.clone())
            .or_default()
            .insert(uid.clone());
    }
    let owners_changed = old.as_ref().map(|o| &o.owners) != Some(&owners);
    g.objects.insert(
        uid.clone(),
        Object {
            kind: kind.clone(),
            namespace: m.metadata.namespace.clone(),
            name: m.metadata.name.clone().unwrap_or_default(),
            resource_version: m.metadata.resource_version.clone(),
            owners: owners.clone(),
            deleting,
            finalizers: finalizers.clone(),
        },
    );
    // An owner whose dependents changed (one dropped it) may be waiting on them.
    let waiting_owners: Vec<String> = old_owner_uids
        .difference(&new_owner_uids)
        .filter(|o| {
            g.objects
                .get(*o)
                .is_some_and(|o| o.deleting && o.finalizers.iter().any(|f| f == FOREGROUND))
        })
        .cloned()
        .collect();
    drop(g);
    if owners_changed && !owners.is_empty() {
        queue.add(Work::Check(uid.clone()));
    }
    if deleting && finalizers.iter().any(|f| f == ORPHAN) {
        queue.add(Work::Orphan(uid.clone()));
    }
    if deleting && finalizers.iter().any(|f| f == FOREGROUND) {
        queue.add(Work::Foreground(uid.clone()));
    }
    for o in waiting_owners {
        queue.add(Work::Foreground(o));
    }
}

fn remove(graph: &Mutex<Graph>, queue: &Queue<Work>, m: &PartialObjectMeta<DynamicObject>) {
    let Some(uid) = m.metadata.uid.clone() else {
        return;
    };
    let mut g = lock(graph);
    let Some(obj) = g.objects.remove(&uid) else {
        return;
    };
    for r in &obj.owners {
        if let Some(set) = g.dependents.get_mut(&r.uid) {
            set.remove(&uid);
            if set.is_empty() {
                g.dependents.remove(&r.uid);
            }
        }
    }
    let dependents: Vec<String> = g
        .dependents
        .get(&uid)
        .map(|s| s.iter().cloned().collect())
        .unwrap_or_default();
    let waiting: Vec<String> = obj
        .owners
        .iter()
        .filter(|r| {
            g.objects
                .get(&r.uid)
                .is_some_and(|o| o.deleting && o.finalizers.iter().any(|f| f == FOREGROUND))
        })
        .map(|r| r.uid.clone())
        .collect();
    drop(g);
    for d in dependents {
        queue.add(Work::Check(d));
    }
    for o in waiting {
        queue.add(Work::Foreground(o));
    }
}

fn api_for(client: &kube::Client, kind: &Kind, namespace: Option<&str>) -> Api<DynamicObject> {
    match (kind.namespaced, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &kind.ar),
        _ => Api::all_with(client.clone(), &kind.ar),
    }
}

/// What an owner reference points at, now.
#[derive(Debug, PartialEq)]
enum OwnerState {
    /// There, and not waiting for its dependents to go.
    Solid,
    /// Gone (or replaced by another object of the same name).
    Absent,
    /// Being deleted in the foreground.
    Waiting,
}

async fn owner_state(
    ctx: &Context,
    graph: &Mutex<Graph>,
    dep: &Object,
    r: &OwnerReference,
) -> Result<OwnerState, String> {
    let (known, kind) = {
        let g = lock(graph);
        (
            g.objects
                .get(&r.uid)
                .map(|o| (o.deleting, o.finalizers.iter().any(|f| f == FOREGROUND))),
            g.kinds
                .get(&(r.api_version.clone(), r.kind.clone()))
                .cloned(),
        )
    };
    match known {
        Some((true, true)) => return Ok(OwnerState::Waiting),
        Some(_) => return Ok(OwnerState::Solid),
        None => {}
    }
    let Some(kind) = kind else {
        // A kind the API does not serve (any more): leave the dependent alone.
        return Err(format!(
            "owner kind {}/{} is not served",
            r.api_version, r.kind
        ));
    };
    let api = api_for(&ctx.client, &kind, dep.namespace.as_deref());
    match api.get_metadata_opt(&r.name).await {
        Ok(Some(m)) if m.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
            let fg = m
                .metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == FOREGROUND);
            Ok(if m.metadata.deletion_timestamp.is_some() && fg {
                OwnerState::Waiting
            } else {
                OwnerState::Solid
            })
        }
        Ok(_) => Ok(OwnerState::Absent),
        Err(e) => Err(format!("looking up owner {} {}: {e}", r.kind, r.name)),
    }
}

async fn sync(ctx: &Context, graph: &Mutex<Graph>, work: Work) -> SyncResult {
    match work {
        Work::Check(uid) => check(ctx, graph, &uid).await,
        Work::Foreground(uid) => foreground(ctx, graph, &uid).await,
        Work::Orphan(uid) => orphan(ctx, graph, &uid).await,
    }
}

async fn check(ctx: &Context, graph: &Mutex<Graph>, uid: &str) -> SyncResult {
    let Some(dep) = lock(graph).objects.get(uid).cloned() else {
        return Ok(None);
    };
    if dep.owners.is_empty() || (dep.deleting && !dep.finalizers.iter().any(|f| f == FOREGROUND)) {
        return Ok(None);
    }
    let mut solid = Vec::new();
    let mut gone = Vec::new();
    let mut waiting = Vec::new();
    for r in &dep.owners {
        match owner_state(ctx, graph, &dep, r).await? {
            OwnerState::Solid => solid.push(r.uid.clone()),
            OwnerState::Absent => gone.push(r.uid.clone()),
            OwnerState::Waiting => waiting.push(r.uid.clone()),
        }
    }
    let api = api_for(&ctx.client, &dep.kind, dep.namespace.as_deref());
    if !solid.is_empty() {
        if gone.is_empty() && waiting.is_empty() {
            return Ok(None);
        }
        // Keep the object, drop the references to owners that are gone or going.
        let keep: Vec<&OwnerReference> = dep
            .owners
            .iter()
            .filter(|r| solid.contains(&r.uid))
            .collect();
        let patch = json!({"metadata": {"ownerReferences": list_or_null(&keep), "resourceVersion": dep.resource_version}});
        return match api
            .patch(&dep.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(None),
            Err(e) if util::is_not_found(&e) => Ok(None),
            Err(e) => Err(format!(
                "removing dangling owner references of {}: {e}",
                dep.name
            )),
        };
    }
    if dep.deleting {
        return Ok(None);
    }
    // Every owner is gone or going: so is this dependent. One waiting owner makes it go in
    // the foreground too (its own dependents first), as kube-controller-manager does.
    let has_dependents = lock(graph)
        .dependents
        .get(uid)
        .is_some_and(|s| !s.is_empty());
    let policy = if dep.finalizers.iter().any(|f| f == ORPHAN) {
        "Orphan"
    } else if (!waiting.is_empty() && has_dependents)
        || dep.finalizers.iter().any(|f| f == FOREGROUND)
    {
        "Foreground"
    } else {
        "Background"
    };
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        propagation_policy: Some(match policy {
            "Orphan" => kube::api::PropagationPolicy::Orphan,
            "Foreground" => kube::api::PropagationPolicy::Foreground,
            _ => kube::api::PropagationPolicy::Background,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&dep.name, &dp).await {
        Ok(_) => {
            tracing::info!(kind = %dep.kind.ar.kind, name = %dep.name, namespace = ?dep.namespace, policy, "deleted a dependent whose owners are gone");
            Ok(None)
        }
        Err(e) if util::is_not_found(&e) || util::is_conflict(&e) => Ok(None),
        Err(e) => Err(format!("deleting {} {}: {e}", dep.kind.ar.kind, dep.name)),
    }
}

/// A list for a merge patch: an empty one removes the field (as Kubernetes omits it).
fn list_or_null<T: serde::Serialize>(items: &[T]) -> serde_json::Value {
    if items.is_empty() {
        serde_json::Value::Null
    } else {
        json!(items)
    }
}

async fn remove_finalizer(ctx: &Context, owner: &Object, finalizer: &str) -> Result<(), String> {
    let rest: Vec<&String> = owner
        .finalizers
        .iter()
        .filter(|f| *f != finalizer)
        .collect();
    let patch = json!({"metadata": {"finalizers": list_or_null(&rest), "resourceVersion": owner.resource_version}});
    let api = api_for(&ctx.client, &owner.kind, owner.namespace.as_deref());
    match api
        .patch(&owner.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if util::is_not_found(&e) => Ok(()),
        Err(e) => Err(format!(
            "removing finalizer {finalizer} from {} {}: {e}",
            owner.kind.ar.kind, owner.name
        )),
    }
}

async fn foreground(ctx: &Context, graph: &Mutex<Graph>, uid: &str) -> SyncResult {
    let (owner, dependents) = {
        let g = lock(graph);
        let Some(owner) = g.objects.get(uid).cloned() else {
            return Ok(None);
        };
        let deps: Vec<(String, Object)> = g
            .dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| g.objects.get(d).map(|o| (d.clone(), o.clone())))
            .collect();
        (owner, deps)
    };
    if !owner.deleting || !owner.finalizers.iter().any(|f| f == FOREGROUND) {
        return Ok(None);
    }
    let blocking = dependents.iter().any(|(_, d)| {
        d.owners
            .iter()
            .any(|r| r.uid == uid && r.block_owner_deletion == Some(true))
    });
    // Delete them all (each sees its owner waiting); blocking ones hold the owner, which
    // is looked at again as each goes.
    for (d, _) in dependents {
        check(ctx, graph, &d).await?;
    }
    if blocking {
        return Ok(None);
    }
    remove_finalizer(ctx, &owner, FOREGROUND).await?;
    Ok(None)
}

async fn orphan(ctx: &Context, graph: &Mutex<Graph>, uid: &str) -> SyncResult {
    let (owner, dependents) = {
        let g = lock(graph);
        let Some(owner) = g.objects.get(uid).cloned() else {
            return Ok(None);
        };
        let deps: Vec<Object> = g
            .dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| g.objects.get(d).cloned())
            .collect();
        (owner, deps)
    };
    if !owner.deleting || !owner.finalizers.iter().any(|f| f == ORPHAN) {
        return Ok(None);
    }
    for d in dependents {
        let keep: Vec<&OwnerReference> = d.owners.iter().filter(|r| r.uid != uid).collect();
        let patch = json!({"metadata": {"ownerReferences": list_or_null(&keep), "resourceVersion": d.resource_version}});
        let api = api_for(&ctx.client, &d.kind, d.namespace.as_deref());
        match api
            .patch(&d.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if util::is_not_found(&e) => {}
            Err(e) => return Err(format!("orphaning {} {}: {e}", d.kind.ar.kind, d.name)),
        }
    }
    remove_finalizer(ctx, &owner, ORPHAN).await?;
    Ok(None)
}
