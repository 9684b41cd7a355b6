//! The ReplicaSet and ReplicationController controllers: keep `spec.replicas` pods that
//! match the selector, named `<owner>-<5 random>` through generateName and controlled
//! by the owner; adopt matching orphans, release pods that stop matching, and delete the
//! least useful surplus pods first (unscheduled, pending, not ready, newest).
//!
//! Both kinds share one reconcile through [`ReplicaOwner`]; an RC is an RS with a
//! map selector.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::workload_util::{self as util, Error, Recorder, Result};
use crate::manager::Context;

/// What the replica reconcile needs from an RS or an RC.
pub trait ReplicaOwner:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    const COMPONENT: &'static str;
    fn replicas(&self) -> i32;
    fn min_ready_seconds(&self) -> i32;
    fn label_selector(&self) -> Option<LabelSelector>;
    fn template(&self) -> Option<&PodTemplateSpec>;
    /// The status as JSON, to skip writes that change nothing.
    fn status_json(&self) -> serde_json::Value;
}

impl ReplicaOwner for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn label_selector(&self) -> Option<LabelSelector> {
        self.spec.as_ref().map(|s| s.selector.clone())
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.as_ref())
    }
    fn status_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.status).unwrap_or_default()
    }
}

impl ReplicaOwner for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn label_selector(&self) -> Option<LabelSelector> {
        // An RC without a selector selects its template's labels (API defaulting does
        // this too; doing it here keeps old objects working).
        let sel = self
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .or_else(|| {
                self.template()
                    .and_then(|t| t.metadata.as_ref())
                    .and_then(|m| m.labels.clone())
            })?;
        Some(LabelSelector {
            match_labels: Some(sel),
            match_expressions: None,
        })
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.as_ref())
    }
    fn status_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.status).unwrap_or_default()
    }
}

/// How often a ReplicaSet short of available pods is synced without an event.
const UNCONVERGED_RECHECK: Duration = Duration::from_secs(10);

struct Ctx {
    client: kube::Client,
    recorder: Recorder,
    clock: util::Clock,
}

/// The ReplicaSet controller loop.
pub fn replicasets(ctx: Arc<Context>) -> crate::manager::LoopFuture {
    Box::pin(run::<ReplicaSet>(ctx))
}

/// The ReplicationController controller loop.
pub fn replication_controllers(ctx: Arc<Context>) -> crate::manager::LoopFuture {
    Box::pin(run::<ReplicationController>(ctx))
}

async fn run<K: ReplicaOwner>(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let owners: Api<K> = Api::all(client.clone());
    let controller = Controller::new(owners, watcher::Config::default());
    let store = controller.store();
    // Orphans are claimed by whichever owner's selector matches them.
    let controller = controller
        .owns_shared_stream(ctx.informers.pods.objects())
        .watches_shared_stream(ctx.informers.pods.objects(), move |pod: Arc<Pod>| {
            if util::controller_of(&pod.metadata).is_some() {
                return Vec::new();
            }
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            store
                .state()
                .iter()
                .filter(|o| o.meta().namespace == pod.metadata.namespace)
                .filter(|o| {
                    o.label_selector()
                        .and_then(|s| Selector::try_from(s).ok())
                        .is_some_and(|s| !s.selects_all() && s.matches(&labels))
                })
                .map(|o| ObjectRef::from_obj(o.as_ref()))
                .collect::<Vec<_>>()
        });
    let c = Arc::new(Ctx {
        client: client.clone(),
        recorder: Recorder::new(client, K::COMPONENT),
        clock: ctx.options.clock.clone(),
    });
    util::drive(controller, K::COMPONENT, reconcile::<K>, c).await;
}

async fn reconcile<K: ReplicaOwner>(owner: Arc<K>, ctx: Arc<Ctx>) -> Result<Action> {
    if owner.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = owner.namespace().unwrap_or_default();
    let name = owner.name_any();
    let what = format!("{} {ns}/{name}", K::kind(&()));
    let sel = util::selector(owner.label_selector().as_ref(), &what)?;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let all = util::list_in(&pods_api).await?;
    let claimed = util::claim(&pods_api, owner.as_ref(), &sel, all).await?;
    let mut active: Vec<Pod> = claimed.into_iter().filter(util::is_active).collect();

    let want = owner.replicas().max(0) as usize;
    if active.len() < want {
        let template = owner
            .template()
            .ok_or_else(|| Error::Invalid(format!("{what}: spec.template is required")))?;
        let pod = util::pod_from_template(
            template,
            util::controller_ref(owner.as_ref()),
            Some(util::generate_name(&name)),
            None,
        );
        let created = create_pods(&pods_api, &pod, want - active.len()).await;
        for r in created {
            match r {
                Ok(p) => {
                    ctx.recorder
                        .event(
                            owner.as_ref(),
                            false,
                            "SuccessfulCreate",
                            format!("Created pod: {}", p.name_any()),
                        )
                        .await;
                    active.push(p);
                }
                Err(e) => {
                    ctx.recorder
                        .event(
                            owner.as_ref(),
                            true,
                            "FailedCreate",
                            format!("Error creating: {e}"),
                        )
                        .await;
                }
            }
        }
    } else if active.len() > want {
        active.sort_by(deletion_order);
        let surplus: Vec<Pod> = active.drain(..active.len() - want).collect();
        for p in surplus {
            util::delete_quiet(&pods_api, &p.name_any()).await?;
            ctx.recorder
                .event(
                    owner.as_ref(),
                    false,
                    "SuccessfulDelete",
                    format!("Deleted pod: {}", p.name_any()),
                )
                .await;
        }
    }

    let now = ctx.clock.now();
    let min_ready = owner.min_ready_seconds();
    let template_labels = owner
        .template()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let mut ready = 0;
    let mut available = 0;
    let mut fully_labeled = 0;
    let mut recheck: Option<Duration> = None;
    for p in &active {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        if template_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            fully_labeled += 1;
        }
        if util::is_ready(p) {
            ready += 1;
            match util::availability(p, min_ready, now) {
                Ok(()) => available += 1,
                Err(wait) => recheck = Some(recheck.map_or(wait, |r| r.min(wait))),
            }
        }
    }
    let status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": owner.meta().generation,
    });
    let old = owner.status_json();
    let changed = [
        "replicas",
        "fullyLabeledReplicas",
        "readyReplicas",
        "availableReplicas",
        "observedGeneration",
    ]
    .iter()
    .any(|k| old.get(k).and_then(|v| v.as_i64()).unwrap_or(0) != status[k].as_i64().unwrap_or(0));
    if changed {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
        util::patch_status(&api, &name, status).await?;
    }
    // Until every wanted pod is available, look again now and then even without an
    // event: a missed pod update must not leave the status stale for good.
    if recheck.is_none() && available < want {
        recheck = Some(UNCONVERGED_RECHECK);
    }
    Ok(match recheck {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// Creates `n` copies of `pod` a few at a time (Kubernetes' slow start: a batch that
/// fails stops the rest, so a quota or admission refusal is not repeated n times).
async fn create_pods(api: &Api<Pod>, pod: &Pod, n: usize) -> Vec<Result<Pod, kube::Error>> {
    let mut out = Vec::with_capacity(n);
    let pp = PostParams::default();
    let mut batch = 1;
    let mut left = n;
    while left > 0 {
        let size = batch.min(left);
        let results: Vec<_> = futures::stream::iter(0..size)
            .map(|_| api.create(&pp, pod))
            .buffer_unordered(size)
            .collect()
            .await;
        let failed = results.iter().any(|r| r.is_err());
        out.extend(results);
        left -= size;
        if failed {
            break;
        }
        batch *= 2;
    }
    out
}

/// The order Kubernetes deletes surplus pods in: the cheapest to lose first.
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let assigned = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
    let phase_rank = |p: &Pod| match util::phase(p) {
        "Pending" => 0,
        "Unknown" => 1,
        _ => 2,
    };
    let ready = |p: &Pod| util::is_ready(p);
    assigned(a)
        .cmp(&assigned(b))
        .then(phase_rank(a).cmp(&phase_rank(b)))
        .then(ready(a).cmp(&ready(b)))
        // Ready for less time goes first.
        .then_with(|| {
            let since = |p: &Pod| util::ready_since(p).flatten();
            since(b).cmp(&since(a))
        })
        // Newer goes first.
        .then_with(|| {
            b.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .cmp(&a.metadata.creation_timestamp.as_ref().map(|t| t.0))
        })
}
