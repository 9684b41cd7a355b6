//! The namespace controller: a namespace being deleted (phase Terminating, finalizer
//! `kubernetes` in `spec.finalizers`) has everything in it deleted — every namespaced
//! resource the API's discovery lists, as kube-controller-manager does — its status
//! conditions say how that goes (NamespaceDeletionDiscoveryFailure,
//! NamespaceDeletionContentFailure, NamespaceContentRemaining,
//! NamespaceFinalizersRemaining), and once nothing is left the `kubernetes` finalizer is
//! removed through `namespaces/<name>/finalize`, which lets the API server delete it.
//!
//! Pods bound to a node are deleted gracefully: they stay (Terminating) until their node
//! agent finishes them, and so does the namespace — as in Kubernetes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::Mutex;

use super::util::{self, Queue, SyncResult};
use crate::manager::{Context, LoopFuture};

pub const NAME: &str = "namespace-controller";
pub const FINALIZER: &str = "kubernetes";
/// How long one discovery result is reused across syncs.
const DISCOVERY_TTL: Duration = Duration::from_secs(10);

pub fn start(ctx: Arc<Context>) -> LoopFuture {
    Box::pin(run(ctx))
}

/// The namespaced resources that can be listed and deleted, from a (cached) discovery.
#[derive(Default)]
struct Resources {
    at: Option<Instant>,
    list: Vec<(ApiResource, bool)>,
    failed: Vec<String>,
}

async fn run(ctx: Arc<Context>) {
    let queue: Arc<Queue<String>> = Queue::new();
    let q = queue.clone();
    let (namespaces, informer) = util::informer(
        Api::<Namespace>::all(ctx.client.clone()),
        watcher::Config::default(),
        move |_, new: Option<&Namespace>| {
            if let Some(ns) = new
                && ns.metadata.deletion_timestamp.is_some()
            {
                q.add(util::key_of(ns));
            }
        },
    );
    let resources = Arc::new(Mutex::new(Resources::default()));
    let sync = {
        let (ctx, namespaces, resources) = (ctx.clone(), namespaces.clone(), resources);
        move |name: String| {
            let (ctx, namespaces, resources) = (ctx.clone(), namespaces.clone(), resources.clone());
            async move { sync(&ctx, &namespaces, &resources, &name).await }
        }
    };
    let workers = async {
        let _ = namespaces.wait_until_ready().await;
        util::run_workers(queue, 2, NAME, sync).await;
    };
    tokio::join!(informer, workers);
}

async fn discover(
    client: &kube::Client,
    cache: &Mutex<Resources>,
) -> (Vec<(ApiResource, bool)>, Vec<String>) {
    let mut c = cache.lock().await;
    if c.at.is_some_and(|t| t.elapsed() < DISCOVERY_TTL) {
        return (c.list.clone(), c.failed.clone());
    }
    match Discovery::new(client.clone()).run().await {
        Ok(d) => {
            let mut list = Vec::new();
            for group in d.groups() {
                for (ar, caps) in group.recommended_resources() {
                    if caps.scope != Scope::Namespaced
                        || !caps.supports_operation(verbs::LIST)
                        || !caps.supports_operation(verbs::DELETE)
                    {
                        continue;
                    }
                    let collection = caps.supports_operation(verbs::DELETE_COLLECTION);
                    list.push((ar, collection));
                }
            }
            c.list = list;
            c.failed = Vec::new();
            c.at = Some(Instant::now());
        }
        Err(e) => {
            c.failed = vec![e.to_string()];
            c.at = None;
        }
    }
    (c.list.clone(), c.failed.clone())
}

/// A resource's name as the conditions write it: `pods.` or `deployments.apps`.
fn gr(ar: &ApiResource) -> String {
    format!("{}.{}", ar.plural, ar.group)
}

async fn sync(
    ctx: &Context,
    namespaces: &Store<Namespace>,
    resources: &Mutex<Resources>,
    name: &str,
) -> SyncResult {
    let Some(ns) = namespaces.get(&ObjectRef::new(name)) else {
        return Ok(None);
    };
    let holds_finalizer = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER));
    if ns.metadata.deletion_timestamp.is_none() || !holds_finalizer {
        return Ok(None);
    }
    let (list, discovery_failed) = discover(&ctx.client, resources).await;

    // Delete everything, then count what is left (graceful pods, finalizers).
    let mut delete_failed: BTreeMap<String, String> = BTreeMap::new();
    for (ar, collection) in &list {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), name, ar);
        let deleted = if *collection {
            api.delete_collection(&DeleteParams::background(), &ListParams::default())
                .await
                .map(|_| ())
        } else {
            delete_each(&api).await
        };
        match deleted {
            Ok(()) => {}
            Err(e) if util::is_not_found(&e) => {}
            Err(kube::Error::Api(s)) if s.code == 405 => {
                if let Err(e) = delete_each(&api).await {
                    delete_failed.insert(gr(ar), e.to_string());
                }
            }
            Err(e) => {
                delete_failed.insert(gr(ar), e.to_string());
            }
        }
    }
    let mut remaining: BTreeMap<String, usize> = BTreeMap::new();
    let mut finalizers: BTreeMap<String, usize> = BTreeMap::new();
    for (ar, _) in &list {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), name, ar);
        match api.list_metadata(&ListParams::default()).await {
            Ok(items) if !items.items.is_empty() => {
                remaining.insert(gr(ar), items.items.len());
                for it in &items.items {
                    for f in it.metadata.finalizers.iter().flatten() {
                        *finalizers.entry(f.clone()).or_default() += 1;
                    }
                }
            }
            Ok(_) => {}
            Err(e) if util::is_not_found(&e) => {}
            Err(e) => {
                delete_failed.entry(gr(ar)).or_insert_with(|| e.to_string());
            }
        }
    }

    let conditions = conditions(&discovery_failed, &delete_failed, &remaining, &finalizers);
    update_conditions(ctx, &ns, conditions).await?;

    if !discovery_failed.is_empty() || !delete_failed.is_empty() || !remaining.is_empty() {
        // Graceful pods and finalizers take a while; look again soon.
        return Ok(Some(Duration::from_secs(1)));
    }
    // Nothing left: drop our finalizer (the API server deletes the namespace when the last
    // one goes).
    let mut finalized = (*ns).clone();
    if let Some(spec) = finalized.spec.as_mut() {
        spec.finalizers = Some(
            spec.finalizers
                .take()
                .unwrap_or_default()
                .into_iter()
                .filter(|f| f != FINALIZER)
                .collect(),
        );
    }
    let api = Api::<Namespace>::all(ctx.client.clone());
    match api
        .replace_subresource("finalize", name, &PostParams::default(), &finalized)
        .await
    {
        Ok(_) => Ok(None),
        Err(e) if util::is_not_found(&e) => Ok(None),
        Err(e) => Err(format!("finalizing namespace {name}: {e}")),
    }
}

async fn delete_each(api: &Api<DynamicObject>) -> Result<(), kube::Error> {
    let items = api.list_metadata(&ListParams::default()).await?;
    for it in items.items {
        let Some(n) = it.metadata.name else { continue };
        match api.delete(&n, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(e) if util::is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn cond(
    type_: &str,
    on: bool,
    reason_on: &str,
    reason_off: &str,
    msg_on: String,
    msg_off: &str,
) -> NamespaceCondition {
    NamespaceCondition {
        type_: type_.into(),
        status: if on { "True" } else { "False" }.into(),
        reason: Some(if on { reason_on } else { reason_off }.into()),
        message: Some(if on { msg_on } else { msg_off.to_string() }),
        last_transition_time: None,
    }
}

/// The deletion conditions, worded as kube-controller-manager words them.
fn conditions(
    discovery_failed: &[String],
    delete_failed: &BTreeMap<String, String>,
    remaining: &BTreeMap<String, usize>,
    finalizers: &BTreeMap<String, usize>,
) -> Vec<NamespaceCondition> {
    vec![
        cond(
            "NamespaceDeletionDiscoveryFailure",
            !discovery_failed.is_empty(),
            "DiscoveryFailed",
            "ResourcesDiscovered",
            format!(
                "Discovery failed for some groups, {} failing: {}",
                discovery_failed.len(),
                discovery_failed.join(", ")
            ),
            "All resources successfully discovered",
        ),
        cond(
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "GroupVersionParsingFailed",
            "ParsedGroupVersions",
            String::new(),
            "All legacy kube types successfully parsed",
        ),
        cond(
            "NamespaceDeletionContentFailure",
            !delete_failed.is_empty(),
            "ContentDeletionFailed",
            "ContentDeleted",
            format!(
                "Failed to delete all resource types, {} remaining: {}",
                delete_failed.len(),
                delete_failed
                    .iter()
                    .map(|(r, e)| format!("{r}: {e}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "All content successfully deleted, may be waiting on finalization",
        ),
        cond(
            "NamespaceContentRemaining",
            !remaining.is_empty(),
            "SomeResourcesRemain",
            "ContentRemoved",
            format!(
                "Some resources are remaining: {}",
                remaining
                    .iter()
                    .map(|(r, n)| format!("{r} has {n} resource instances"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "All content successfully removed",
        ),
        cond(
            "NamespaceFinalizersRemaining",
            !finalizers.is_empty(),
            "SomeFinalizersRemain",
            "ContentHasNoFinalizers",
            format!(
                "Some content in the namespace has finalizers remaining: {}",
                finalizers
                    .iter()
                    .map(|(f, n)| format!("{f} in {n} resource instances"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "All content-preserving finalizers finished",
        ),
    ]
}

/// Writes the conditions if any changed (keeping transition times of those that did not).
async fn update_conditions(
    ctx: &Context,
    ns: &Namespace,
    mut next: Vec<NamespaceCondition>,
) -> Result<(), String> {
    let current = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    let mut changed = current.len() != next.len();
    for c in &mut next {
        match current.iter().find(|o| o.type_ == c.type_) {
            Some(o) if o.status == c.status && o.reason == c.reason && o.message == c.message => {
                c.last_transition_time = o.last_transition_time.clone();
            }
            Some(o) if o.status == c.status => {
                c.last_transition_time = o.last_transition_time.clone();
                changed = true;
            }
            _ => {
                c.last_transition_time = Some(now.clone());
                changed = true;
            }
        }
    }
    if !changed {
        return Ok(());
    }
    let name = ns.metadata.name.clone().unwrap_or_default();
    let patch = json!({"status": {"conditions": next}});
    match Api::<Namespace>::all(ctx.client.clone())
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if util::is_not_found(&e) => Ok(()),
        Err(e) => Err(format!("updating the conditions of namespace {name}: {e}")),
    }
}
