//! A Deployment's status as `kubectl get/describe/rollout status` read it: counts summed
//! over its ReplicaSets, and the Available and Progressing conditions with Kubernetes'
//! reasons, including ProgressDeadlineExceeded once `progressDeadlineSeconds` pass
//! without progress.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use serde_json::json;

use super::deployment::{Ctx, State, rs_replicas};
use super::deployment_rollout as rollout;
use super::workload_util::{self as util, Result};

/// Writes the status when it changed; requeues for minReadySeconds and the progress
/// deadline.
pub async fn sync(st: &State, ctx: &Ctx, created: bool) -> Result<Action> {
    let d = &st.d;
    let now = ctx.clock.now();
    let replicas = st.replicas();
    let sum = |f: fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> i32| -> i32 {
        st.all().filter_map(|r| r.status.as_ref()).map(f).sum()
    };
    let total = sum(|s| s.replicas);
    let ready = sum(|s| s.ready_replicas.unwrap_or(0));
    let available = sum(|s| s.available_replicas.unwrap_or(0));
    let updated = st
        .new
        .as_ref()
        .and_then(|n| n.status.as_ref())
        .map(|s| s.replicas)
        .unwrap_or(0);
    let old = d.status.clone().unwrap_or_default();
    let old_conds = old.conditions.clone().unwrap_or_default();
    let paused = d.spec.as_ref().and_then(|s| s.paused) == Some(true);
    let new_name = st.new.as_ref().map(|n| n.name_any()).unwrap_or_default();

    let min_available = replicas - rollout::max_unavailable(st)?;
    let avail_cond = if available >= min_available {
        (
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".to_string(),
        )
    } else {
        (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".to_string(),
        )
    };

    let complete = st.new.as_ref().is_some_and(|n| {
        updated == replicas
            && total == replicas
            && available == replicas
            && rs_replicas(n) == replicas
    }) && st
        .old
        .iter()
        .all(|o| o.status.as_ref().map(|s| s.replicas).unwrap_or(0) == 0);
    let progressed = created
        || updated > old.updated_replicas.unwrap_or(0)
        || ready > old.ready_replicas.unwrap_or(0)
        || available > old.available_replicas.unwrap_or(0)
        || total < old.replicas.unwrap_or(0);
    let prev = old_conds.iter().find(|c| c.type_ == "Progressing");
    let deadline = d
        .spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .filter(|s| *s < i32::MAX);
    let mut requeue: Option<Duration> = None;
    let prog_cond: (String, String, String, bool) = if paused {
        (
            "Unknown".into(),
            "DeploymentPaused".into(),
            "Deployment is paused".into(),
            false,
        )
    } else if complete {
        (
            "True".into(),
            "NewReplicaSetAvailable".into(),
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
            prev.is_none_or(|p| p.reason.as_deref() != Some("NewReplicaSetAvailable")),
        )
    } else if created {
        (
            "True".into(),
            "NewReplicaSetCreated".into(),
            format!("Created new replica set \"{new_name}\""),
            true,
        )
    } else if progressed
        || prev.is_none_or(|p| {
            p.reason.as_deref() == Some("DeploymentPaused")
                || p.reason.as_deref() == Some("NewReplicaSetAvailable")
        })
    {
        (
            "True".into(),
            "ReplicaSetUpdated".into(),
            format!("ReplicaSet \"{new_name}\" is progressing."),
            true,
        )
    } else {
        // No progress since the condition was last updated: time out after the deadline.
        let since = prev
            .and_then(|p| p.last_update_time.as_ref())
            .map(|t| t.0)
            .unwrap_or(now);
        match deadline {
            Some(secs) if since + jiff::SignedDuration::from_secs(i64::from(secs)) <= now => (
                "False".into(),
                "ProgressDeadlineExceeded".into(),
                format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                false,
            ),
            Some(secs) => {
                let left = since.as_second() + i64::from(secs) - now.as_second();
                requeue = Some(Duration::from_secs(u64::try_from(left).unwrap_or(0) + 1));
                let p = prev.cloned().unwrap_or_default();
                (
                    p.status,
                    p.reason.unwrap_or_default(),
                    p.message.unwrap_or_default(),
                    false,
                )
            }
            None => {
                let p = prev.cloned().unwrap_or_default();
                (
                    p.status,
                    p.reason.unwrap_or_default(),
                    p.message.unwrap_or_default(),
                    false,
                )
            }
        }
    };
    let conds = vec![
        condition(
            &old_conds,
            "Available",
            avail_cond.0,
            avail_cond.1,
            &avail_cond.2,
            false,
            now,
        ),
        condition(
            &old_conds,
            "Progressing",
            &prog_cond.0,
            &prog_cond.1,
            &prog_cond.2,
            prog_cond.3,
            now,
        ),
    ];

    // minReadySeconds: a ready-but-not-yet-available pod becomes available on its own.
    if ready > available && requeue.is_none() {
        requeue = Some(Duration::from_secs(1));
    }
    // Not complete yet: look again now and then even without an event (a missed
    // ReplicaSet update must not leave the status stale for good).
    if requeue.is_none() && available < replicas {
        requeue = Some(Duration::from_secs(10));
    }
    let status = json!({
        "observedGeneration": d.metadata.generation,
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": (replicas - available).max(0),
        "conditions": conds,
        "collisionCount": old.collision_count,
    });
    let cur = serde_json::to_value(&old).unwrap_or_default();
    let same = [
        "observedGeneration",
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
        "unavailableReplicas",
    ]
    .iter()
    .all(|k| cur.get(k).and_then(|v| v.as_i64()).unwrap_or(0) == status[k].as_i64().unwrap_or(0))
        && same_conditions(&old_conds, &conds);
    if !same {
        let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &st.ns);
        // Conditions replace as a whole: a merge patch of a list replaces it.
        util::patch_status(&api, &st.name, status).await?;
    }
    Ok(super::deployment::requeue_or_wait(requeue))
}

fn condition(
    old: &[DeploymentCondition],
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    touch: bool,
    now: Timestamp,
) -> DeploymentCondition {
    let prev = old.iter().find(|c| c.type_ == type_);
    let transitioned = prev.is_none_or(|p| p.status != status);
    let unchanged = prev.is_some_and(|p| {
        p.status == status
            && p.reason.as_deref() == Some(reason)
            && p.message.as_deref() == Some(message)
    });
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: if transitioned {
            Some(Time(now))
        } else {
            prev.and_then(|p| p.last_transition_time.clone())
        },
        last_update_time: if touch || !unchanged {
            Some(Time(now))
        } else {
            prev.and_then(|p| p.last_update_time.clone())
        },
    }
}

fn same_conditions(a: &[DeploymentCondition], b: &[DeploymentCondition]) -> bool {
    b.iter().all(|n| {
        a.iter().any(|o| {
            o.type_ == n.type_
                && o.status == n.status
                && o.reason == n.reason
                && o.message == n.message
                && o.last_update_time == n.last_update_time
        })
    })
}
