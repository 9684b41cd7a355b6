//! The StatefulSet controller: pods with stable names `<set>-0..N-1`, hostname and
//! subdomain (`serviceName`), one PVC `<claim>-<set>-<i>` per volumeClaimTemplate made
//! before the pod and kept after it; OrderedReady (create in order, each after the one
//! before is Running and Ready; delete from the highest down, one at a time) or
//! Parallel; RollingUpdate from the highest ordinal down to `partition`, one pod at a
//! time; revisions as ControllerRevisions (`currentRevision`/`updateRevision`).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;

use super::workload_revision::{self as revision, REVISION_HASH_LABEL};
use super::workload_util::{self as util, Error, Recorder, Result};
use crate::manager::Context;

pub const COMPONENT: &str = "statefulset-controller";
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

struct Ctx {
    client: kube::Client,
    recorder: Recorder,
    clock: util::Clock,
}

/// The StatefulSet controller loop.
pub fn statefulsets(ctx: Arc<Context>) -> crate::manager::LoopFuture {
    Box::pin(async move {
        let client = ctx.client.clone();
        let controller = Controller::new(
            Api::<StatefulSet>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns_shared_stream(ctx.informers.pods.objects());
        let c = Arc::new(Ctx {
            client: client.clone(),
            recorder: Recorder::new(client, COMPONENT),
            clock: ctx.options.clock.clone(),
        });
        util::drive(controller, COMPONENT, reconcile, c).await;
    })
}

/// The ordinal of `<set>-<i>`, if the name is one of the set's.
pub fn ordinal(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

fn running_ready(p: &Pod) -> bool {
    util::phase(p) == "Running" && util::is_ready(p)
}

fn revision_of(p: &Pod) -> Option<&String> {
    p.metadata.labels.as_ref()?.get(REVISION_HASH_LABEL)
}

async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action> {
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let what = format!("StatefulSet {ns}/{name}");
    let spec = set
        .spec
        .clone()
        .ok_or_else(|| Error::Invalid(format!("{what}: spec is required")))?;
    let sel = util::selector(Some(&spec.selector), &what)?;
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();

    let cr_api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let data = revision::template_data(&serde_json::to_value(&spec.template).unwrap_or_default());
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let status = set.status.clone().unwrap_or_default();
    let (update_rev, _hash) = revision::sync(
        &cr_api,
        set.as_ref(),
        &sel,
        &template_labels,
        data,
        status.collision_count,
        limit,
    )
    .await?;
    let update_rev = update_rev.name_any();
    let current_rev = status
        .current_revision
        .clone()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| update_rev.clone());

    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let all = util::list_in(&pods_api).await?;
    let claimed = util::claim(&pods_api, set.as_ref(), &sel, all).await?;
    let mut by_ord: BTreeMap<i32, Pod> = BTreeMap::new();
    for p in claimed {
        if let Some(i) = ordinal(&name, &p.name_any()) {
            by_ord.insert(i, p);
        }
    }
    let terminating = by_ord
        .values()
        .any(|p| p.metadata.deletion_timestamp.is_some());

    // Create or replace the pods 0..replicas.
    let mut blocked = false;
    for i in 0..replicas {
        if blocked {
            break;
        }
        match by_ord.get(&i) {
            None => {
                if !parallel && terminating {
                    break;
                }
                create_pod(&ctx, &set, &pods_api, i, &update_rev).await?;
                blocked = !parallel;
            }
            Some(p) if p.metadata.deletion_timestamp.is_some() => blocked = !parallel,
            Some(p) if util::phase(p) == "Failed" || util::phase(p) == "Succeeded" => {
                // A stateful pod that stopped is recreated under the same name.
                delete_pod(&ctx, &set, &pods_api, p).await?;
                blocked = !parallel;
            }
            Some(p) => blocked = !parallel && !running_ready(p),
        }
    }

    // Condemned ordinals ≥ replicas: highest first; OrderedReady waits for the rest.
    let condemned: Vec<&Pod> = by_ord.range(replicas..).rev().map(|(_, p)| p).collect();
    let all_healthy = (0..replicas).all(|i| by_ord.get(&i).is_some_and(running_ready));
    for p in condemned {
        if p.metadata.deletion_timestamp.is_some() {
            if !parallel {
                break;
            }
            continue;
        }
        if !parallel && (!all_healthy || terminating) {
            break;
        }
        delete_pod(&ctx, &set, &pods_api, p).await?;
        if !parallel {
            break;
        }
    }

    // Rolling update: from the highest ordinal down to the partition, one at a time,
    // only while every pod is Running and Ready.
    let on_delete = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        == Some("OnDelete");
    let partition = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let hash_of_update = update_rev
        .strip_prefix(&format!("{name}-"))
        .unwrap_or(&update_rev)
        .to_string();
    if !on_delete && all_healthy && !terminating {
        for i in (partition.max(0)..replicas).rev() {
            if let Some(p) = by_ord.get(&i)
                && revision_of(p) != Some(&hash_of_update)
            {
                delete_pod(&ctx, &set, &pods_api, p).await?;
                break;
            }
        }
    }

    // Status from what exists now.
    let uid = set.uid().unwrap_or_default();
    let pods: Vec<Pod> = util::list_in(&pods_api)
        .await?
        .into_iter()
        .filter(|p| {
            util::is_controlled_by(&p.metadata, &uid) && p.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let hash_of_current = current_rev
        .strip_prefix(&format!("{name}-"))
        .unwrap_or(&current_rev)
        .to_string();
    let now = ctx.clock.now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let count = |f: &dyn Fn(&Pod) -> bool| pods.iter().filter(|p| f(p)).count() as i32;
    let updated = count(&|p| revision_of(p) == Some(&hash_of_update));
    let ready = count(&|p| util::is_ready(p));
    let available = count(&|p| util::availability(p, min_ready, now).is_ok());
    let current_revision =
        if updated == replicas && pods.len() as i32 == replicas && ready == replicas {
            update_rev.clone()
        } else {
            current_rev.clone()
        };
    let current = count(&|p| revision_of(p) == Some(&hash_of_current));
    let new_status = json!({
        "observedGeneration": set.metadata.generation,
        "replicas": pods.len(),
        "readyReplicas": ready,
        "availableReplicas": available,
        "currentReplicas": current,
        "updatedReplicas": updated,
        "currentRevision": current_revision,
        "updateRevision": update_rev,
        "collisionCount": status.collision_count.unwrap_or(0),
    });
    let cur = serde_json::to_value(&status).unwrap_or_default();
    let changed = new_status.as_object().is_some_and(|m| {
        m.iter().any(|(k, v)| match v {
            serde_json::Value::Number(n) => {
                cur.get(k).and_then(|x| x.as_i64()).unwrap_or(0) != n.as_i64().unwrap_or(0)
            }
            _ => cur.get(k) != Some(v),
        })
    });
    if changed {
        let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
        util::patch_status(&api, &name, new_status).await?;
    }
    Ok(if ready > available {
        Action::requeue(std::time::Duration::from_secs(1))
    } else {
        Action::await_change()
    })
}

/// Pod `<set>-<i>`, its PVCs first.
async fn create_pod(
    ctx: &Ctx,
    set: &StatefulSet,
    api: &Api<Pod>,
    i: i32,
    update_rev: &str,
) -> Result<()> {
    let name = set.name_any();
    let ns = set.namespace().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let pod_name = format!("{name}-{i}");
    let hash = update_rev
        .strip_prefix(&format!("{name}-"))
        .unwrap_or(update_rev);
    let mut pod = util::pod_from_template(
        &spec.template,
        util::controller_ref(set),
        None,
        Some(pod_name.clone()),
    );
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(POD_NAME_LABEL.into(), pod_name.clone());
    labels.insert(POD_INDEX_LABEL.into(), i.to_string());
    labels.insert(REVISION_HASH_LABEL.into(), hash.into());

    let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let sel_labels = spec.selector.match_labels.clone().unwrap_or_default();
    let mut volumes: Vec<Volume> = Vec::new();
    for t in spec.volume_claim_templates.iter().flatten() {
        let claim = t.name_any();
        let pvc_name = format!("{claim}-{pod_name}");
        let mut labels = t.metadata.labels.clone().unwrap_or_default();
        labels.extend(sel_labels.clone());
        let pvc = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(pvc_name.clone()),
                labels: Some(labels),
                annotations: t.metadata.annotations.clone(),
                ..Default::default()
            },
            spec: t.spec.clone(),
            status: None,
        };
        match pvc_api.create(&PostParams::default(), &pvc).await {
            Ok(_) => {
                ctx.recorder
                    .event(
                        set,
                        false,
                        "SuccessfulCreate",
                        format!(
                            "create Claim {pvc_name} Pod {pod_name} in StatefulSet {name} success"
                        ),
                    )
                    .await;
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                ctx.recorder
                    .event(set, true, "FailedCreate", format!("create Claim {pvc_name} for Pod {pod_name} in StatefulSet {name} failed error: {e}"))
                    .await;
                return Err(e.into());
            }
        }
        volumes.push(Volume {
            name: claim,
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc_name,
                read_only: None,
            }),
            ..Default::default()
        });
    }
    if let Some(ps) = pod.spec.as_mut() {
        ps.hostname = Some(pod_name.clone());
        if !spec.service_name.as_deref().unwrap_or("").is_empty() {
            ps.subdomain = spec.service_name.clone();
        }
        let vols = ps.volumes.get_or_insert_with(Vec::new);
        vols.retain(|v| !volumes.iter().any(|n| n.name == v.name));
        vols.extend(volumes);
    }
    match api.create(&PostParams::default(), &pod).await {
        Ok(_) => {
            ctx.recorder
                .event(
                    set,
                    false,
                    "SuccessfulCreate",
                    format!("create Pod {pod_name} in StatefulSet {name} successful"),
                )
                .await;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => {
            ctx.recorder
                .event(
                    set,
                    true,
                    "FailedCreate",
                    format!("create Pod {pod_name} in StatefulSet {name} failed error: {e}"),
                )
                .await;
            Err(e.into())
        }
    }
}

async fn delete_pod(ctx: &Ctx, set: &StatefulSet, api: &Api<Pod>, p: &Pod) -> Result<()> {
    util::delete_quiet(api, &p.name_any()).await?;
    ctx.recorder
        .event(
            set,
            false,
            "SuccessfulDelete",
            format!(
                "delete Pod {} in StatefulSet {} successful",
                p.name_any(),
                set.name_any()
            ),
        )
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ordinal;

    #[test]
    fn ordinals() {
        assert_eq!(ordinal("web", "web-0"), Some(0));
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "web-x"), None);
        assert_eq!(ordinal("web", "webby-1"), None);
    }
}
