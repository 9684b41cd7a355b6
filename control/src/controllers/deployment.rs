//! The Deployment controller: one ReplicaSet per pod template, named
//! `<deployment>-<pod-template-hash>`, rolled with RollingUpdate (maxSurge,
//! maxUnavailable) or Recreate ([`super::deployment_rollout`]), revision annotations
//! that `kubectl rollout history/undo` read, proportional scaling, pause, history
//! cleanup, and the status and conditions `kubectl rollout status` waits on
//! ([`super::deployment_status`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;

use super::deployment_rollout as rollout;
use super::deployment_status as status;
use super::workload_util::{self as util, Error, Recorder, Result};
use crate::manager::Context;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const COMPONENT: &str = "deployment-controller";

/// Deployment annotations that are the controller's own, never copied to ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

pub(crate) struct Ctx {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub clock: util::Clock,
}

/// The Deployment controller loop.
pub fn deployments(ctx: Arc<Context>) -> crate::manager::LoopFuture {
    Box::pin(async move {
        let client = ctx.client.clone();
        let controller = Controller::new(
            Api::<Deployment>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(
            Api::<ReplicaSet>::all(client.clone()),
            watcher::Config::default(),
        );
        let c = Arc::new(Ctx {
            client: client.clone(),
            recorder: Recorder::new(client, COMPONENT),
            clock: ctx.options.clock.clone(),
        });
        util::drive(controller, COMPONENT, reconcile, c).await;
    })
}

/// What one reconcile works on: the deployment and the ReplicaSets it controls.
pub(crate) struct State {
    pub d: Arc<Deployment>,
    pub ns: String,
    pub name: String,
    pub rs_api: Api<ReplicaSet>,
    /// Every controlled ReplicaSet except the new one, oldest first.
    pub old: Vec<ReplicaSet>,
    pub new: Option<ReplicaSet>,
}

impl State {
    pub fn replicas(&self) -> i32 {
        self.d
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1)
            .max(0)
    }

    pub fn all(&self) -> impl Iterator<Item = &ReplicaSet> {
        self.old.iter().chain(self.new.iter())
    }
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let what = format!("Deployment {ns}/{name}");
    let spec = d
        .spec
        .as_ref()
        .ok_or_else(|| Error::Invalid(format!("{what}: spec is required")))?;
    let sel = util::selector(Some(&spec.selector), &what)?;
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let all = util::list_in(&rs_api).await?;
    let mut owned = util::claim(&rs_api, d.as_ref(), &sel, all).await?;
    owned.sort_by_key(|r| {
        (
            r.metadata.creation_timestamp.as_ref().map(|t| t.0),
            r.name_any(),
        )
    });
    let new_idx = owned.iter().position(|r| {
        r.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .is_some_and(|t| util::equal_ignore_hash(t, &spec.template))
    });
    let new = new_idx.map(|i| owned.remove(i));
    let mut st = State {
        d: d.clone(),
        ns,
        name,
        rs_api,
        old: owned,
        new,
    };

    let paused = spec.paused == Some(true);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    if paused || is_scaling_event(&st) {
        sync_revision(&mut st, &ctx, None).await?;
        rollout::scale(&mut st, &ctx).await?;
        if !paused
            && st
                .new
                .as_ref()
                .is_some_and(|n| rollout::is_complete(&st, n))
        {
            cleanup(&st).await?;
        }
        return status::sync(&st, &ctx, false).await;
    }
    if recreate {
        rollout::recreate(&mut st, &ctx).await
    } else {
        let initial = rollout::new_rs_replicas(&st)?;
        let created = sync_revision(&mut st, &ctx, Some(initial)).await?;
        rollout::rolling(&mut st, &ctx, created).await
    }
}

/// A replicas change (not a template change): the active ReplicaSets' desired-replicas
/// annotation no longer says the deployment's size.
fn is_scaling_event(st: &State) -> bool {
    let want = st.replicas().to_string();
    st.all().filter(|r| rs_replicas(r) > 0).any(|r| {
        r.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DESIRED_REPLICAS))
            .is_some_and(|v| *v != want)
    })
}

pub fn rs_replicas(r: &ReplicaSet) -> i32 {
    r.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

pub fn rs_available(r: &ReplicaSet) -> i32 {
    r.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

pub fn revision_of(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Finds or (when `create` gives its initial size) makes the new ReplicaSet, gives it the
/// next revision, and mirrors that revision on the deployment. Returns whether it created
/// one.
pub(crate) async fn sync_revision(st: &mut State, ctx: &Ctx, create: Option<i32>) -> Result<bool> {
    let max_old = st
        .old
        .iter()
        .map(|r| revision_of(&r.metadata))
        .max()
        .unwrap_or(0);
    let next = max_old + 1;
    let mut created = false;
    if let Some(n) = st.new.take() {
        st.new = Some(update_new_annotations(st, n, next).await?);
    } else if let Some(initial) = create {
        st.new = Some(create_new(st, ctx, next, initial).await?);
        created = true;
    }
    let rev = st
        .new
        .as_ref()
        .map(|n| revision_of(&n.metadata))
        .unwrap_or(max_old);
    let cur =
        st.d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION))
            .cloned();
    if rev > 0 && cur.as_deref() != Some(&rev.to_string()) {
        let api: Api<Deployment> = Api::namespaced(ctx_client(st), &st.ns);
        let patch = json!({"metadata": {"annotations": {REVISION: rev.to_string()}}});
        api.patch(&st.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(created)
}

fn ctx_client(st: &State) -> kube::Client {
    st.rs_api.clone().into_client()
}

/// The annotations a deployment passes to its ReplicaSets (change-cause and the like).
fn copied_annotations(d: &Deployment) -> BTreeMap<String, String> {
    d.metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
        .collect()
}

/// Brings an existing new ReplicaSet up to the latest revision (a rollback to an old
/// template reuses its ReplicaSet: its old number moves to revision-history).
async fn update_new_annotations(st: &State, n: ReplicaSet, next: i64) -> Result<ReplicaSet> {
    let cur = revision_of(&n.metadata);
    let mut ann = copied_annotations(&st.d);
    let existing = n.metadata.annotations.clone().unwrap_or_default();
    if cur < next {
        ann.insert(REVISION.into(), next.to_string());
        if cur > 0 {
            let mut hist: Vec<String> = existing
                .get(REVISION_HISTORY)
                .map(|h| h.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            hist.push(cur.to_string());
            ann.insert(REVISION_HISTORY.into(), hist.join(","));
        }
    }
    let (desired, max) = size_annotations(st);
    ann.insert(DESIRED_REPLICAS.into(), desired);
    ann.insert(MAX_REPLICAS.into(), max);
    if ann.iter().all(|(k, v)| existing.get(k) == Some(v)) {
        return Ok(n);
    }
    let patch = json!({"metadata": {"annotations": ann}});
    Ok(st
        .rs_api
        .patch(
            &n.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?)
}

pub(crate) fn size_annotations(st: &State) -> (String, String) {
    let replicas = st.replicas();
    let surge = rollout::max_surge(st).unwrap_or(0);
    (replicas.to_string(), (replicas + surge).to_string())
}

async fn create_new(st: &State, ctx: &Ctx, revision: i64, initial: i32) -> Result<ReplicaSet> {
    let d = &st.d;
    let spec = d.spec.as_ref().cloned().unwrap_or_default();
    let mut collisions = d.status.as_ref().and_then(|s| s.collision_count);
    loop {
        let hash = util::template_hash(&spec.template, collisions);
        let mut template = spec.template.clone();
        let tm = template.metadata.get_or_insert_with(Default::default);
        tm.labels
            .get_or_insert_with(Default::default)
            .insert(util::POD_TEMPLATE_HASH.into(), hash.clone());
        let mut selector: LabelSelector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(util::POD_TEMPLATE_HASH.into(), hash.clone());
        let mut labels = tm.labels.clone().unwrap_or_default();
        labels.insert(util::POD_TEMPLATE_HASH.into(), hash.clone());
        let mut ann = copied_annotations(d);
        ann.insert(REVISION.into(), revision.to_string());
        let (desired, max) = size_annotations(st);
        ann.insert(DESIRED_REPLICAS.into(), desired);
        ann.insert(MAX_REPLICAS.into(), max);
        let name = format!("{}-{hash}", st.name);
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(st.ns.clone()),
                labels: Some(labels),
                annotations: Some(ann),
                owner_references: Some(vec![util::controller_ref(d.as_ref())]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(initial),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        match st.rs_api.create(&PostParams::default(), &rs).await {
            Ok(created) => {
                if initial > 0 {
                    ctx.recorder
                        .event(
                            d.as_ref(),
                            false,
                            "ScalingReplicaSet",
                            format!("Scaled up replica set {name} from 0 to {initial}"),
                        )
                        .await;
                }
                return Ok(created);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Same name: ours from a previous pass (use it), or a hash collision
                // (bump collisionCount and try the next name, as Kubernetes does).
                let existing = st.rs_api.get(&name).await?;
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| util::equal_ignore_hash(t, &spec.template));
                if same && util::is_controlled_by(&existing.metadata, &d.uid().unwrap_or_default())
                {
                    return Ok(existing);
                }
                let c = collisions.unwrap_or(0) + 1;
                collisions = Some(c);
                let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &st.ns);
                util::patch_status(&api, &st.name, json!({"collisionCount": c})).await?;
                if c > 100 {
                    return Err(Error::Invalid(format!(
                        "Deployment {}/{}: too many ReplicaSet name collisions",
                        st.ns, st.name
                    )));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sets a ReplicaSet's size (and its size annotations). Returns whether it changed.
pub(crate) async fn scale_rs(st: &State, ctx: &Ctx, rs: &mut ReplicaSet, to: i32) -> Result<bool> {
    let from = rs_replicas(rs);
    let (desired, max) = size_annotations(st);
    let ann = rs.metadata.annotations.clone().unwrap_or_default();
    let ann_ok = ann.get(DESIRED_REPLICAS) == Some(&desired) && ann.get(MAX_REPLICAS) == Some(&max);
    if from == to && ann_ok {
        return Ok(false);
    }
    let patch = json!({
        "metadata": {"annotations": {DESIRED_REPLICAS: desired, MAX_REPLICAS: max}},
        "spec": {"replicas": to},
    });
    *rs = st
        .rs_api
        .patch(
            &rs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    if from != to {
        let dir = if to > from { "up" } else { "down" };
        ctx.recorder
            .event(
                st.d.as_ref(),
                false,
                "ScalingReplicaSet",
                format!(
                    "Scaled {dir} replica set {} from {from} to {to}",
                    rs.name_any()
                ),
            )
            .await;
    }
    Ok(from != to)
}

/// Deletes the oldest unused ReplicaSets beyond `revisionHistoryLimit` (default 10).
pub(crate) async fn cleanup(st: &State) -> Result<()> {
    let limit =
        st.d.spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
    let mut idle: Vec<&ReplicaSet> = st
        .old
        .iter()
        .filter(|r| {
            rs_replicas(r) == 0
                && r.status.as_ref().map(|s| s.replicas).unwrap_or(0) == 0
                && r.metadata.deletion_timestamp.is_none()
        })
        .collect();
    if idle.len() <= limit {
        return Ok(());
    }
    idle.sort_by_key(|r| revision_of(&r.metadata));
    let n = idle.len() - limit;
    for r in idle.into_iter().take(n) {
        util::delete_quiet(&st.rs_api, &r.name_any()).await?;
    }
    Ok(())
}

pub(crate) fn requeue_or_wait(wait: Option<std::time::Duration>) -> Action {
    match wait {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    }
}
