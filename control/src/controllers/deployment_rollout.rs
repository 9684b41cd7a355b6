//! How a Deployment moves between ReplicaSets: RollingUpdate (never more than
//! replicas + maxSurge pods, never fewer than replicas − maxUnavailable available),
//! Recreate (all old pods gone before any new one), and proportional scaling when the
//! size changes mid-rollout. The arithmetic is Kubernetes' deployment controller's.

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::api::Api;
use kube::runtime::controller::Action;

use super::deployment::{self as dep, Ctx, State, rs_available, rs_replicas};
use super::deployment_status as status;
use super::workload_util::{self as util, Result};

fn rolling_params(st: &State) -> Option<&k8s_openapi::api::apps::v1::RollingUpdateDeployment> {
    st.d.spec
        .as_ref()?
        .strategy
        .as_ref()
        .filter(|s| s.type_.as_deref() != Some("Recreate"))?
        .rolling_update
        .as_ref()
}

fn is_rolling(st: &State) -> bool {
    st.d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        != Some("Recreate")
}

/// maxSurge as a pod count (percentages round up); 0 for Recreate.
pub fn max_surge(st: &State) -> Result<i32> {
    if !is_rolling(st) {
        return Ok(0);
    }
    let ru = rolling_params(st);
    util::scaled_value(
        ru.and_then(|r| r.max_surge.as_ref()),
        st.replicas(),
        "25%",
        true,
    )
}

/// maxUnavailable as a pod count (percentages round down); never 0 together with a 0
/// surge, or a rollout could not move.
pub fn max_unavailable(st: &State) -> Result<i32> {
    if !is_rolling(st) || st.replicas() == 0 {
        return Ok(0);
    }
    let ru = rolling_params(st);
    let u = util::scaled_value(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        st.replicas(),
        "25%",
        false,
    )?;
    let u = if u == 0 && max_surge(st)? == 0 { 1 } else { u };
    Ok(u.min(st.replicas()))
}

/// An RS's available pods, never more than its size: a just-scaled-down RS's status
/// may still count pods that are going away.
fn available(r: &ReplicaSet) -> i32 {
    rs_available(r).min(rs_replicas(r))
}

/// The size the new ReplicaSet may grow to now (Kubernetes' `NewRSNewReplicas`).
pub fn new_rs_replicas(st: &State) -> Result<i32> {
    let replicas = st.replicas();
    let cur_new = st.new.as_ref().map(rs_replicas).unwrap_or(0);
    if !is_rolling(st) {
        return Ok(replicas);
    }
    let surge = max_surge(st)?;
    let current: i32 = st.all().map(rs_replicas).sum();
    let max_total = replicas + surge;
    if current >= max_total {
        return Ok(cur_new);
    }
    let up = (max_total - current).min(replicas - cur_new).max(0);
    Ok(cur_new + up)
}

pub fn is_complete(st: &State, n: &ReplicaSet) -> bool {
    let replicas = st.replicas();
    let s = n.status.clone().unwrap_or_default();
    rs_replicas(n) == replicas
        && s.replicas == replicas
        && s.available_replicas.unwrap_or(0) == replicas
        && st
            .old
            .iter()
            .all(|o| rs_replicas(o) == 0 && o.status.as_ref().map(|s| s.replicas).unwrap_or(0) == 0)
}

/// One RollingUpdate step: grow the new RS within the surge, else shrink old ones within
/// the availability floor, else finish (history cleanup).
pub async fn rolling(st: &mut State, ctx: &Ctx, created: bool) -> Result<Action> {
    let mut changed = created;
    if let Some(mut n) = st.new.take() {
        let replicas = st.replicas();
        let target = if rs_replicas(&n) > replicas {
            replicas
        } else {
            new_rs_replicas(st)?
        };
        changed |= dep::scale_rs(st, ctx, &mut n, target).await?;
        st.new = Some(n);
    }
    if !changed {
        changed = scale_down_old(st, ctx).await?;
    }
    if !changed && st.new.as_ref().is_some_and(|n| is_complete(st, n)) {
        dep::cleanup(st).await?;
    }
    status::sync(st, ctx, created).await
}

/// Kubernetes' `reconcileOldReplicaSets`: first drop old pods that are not available
/// anyway, then scale old sets down as far as availability above the floor allows.
async fn scale_down_old(st: &mut State, ctx: &Ctx) -> Result<bool> {
    let old_count: i32 = st.old.iter().map(rs_replicas).sum();
    if old_count == 0 {
        return Ok(false);
    }
    let all_count: i32 = st.all().map(rs_replicas).sum();
    let min_available = st.replicas() - max_unavailable(st)?;
    let new_unavailable = st
        .new
        .as_ref()
        .map(|n| rs_replicas(n) - available(n))
        .unwrap_or(0)
        .max(0);
    let mut budget = all_count - min_available - new_unavailable;
    if budget <= 0 {
        return Ok(false);
    }
    let mut changed = false;
    let mut old = std::mem::take(&mut st.old);
    // Unhealthy old pods first: removing them costs no availability.
    for r in old.iter_mut() {
        if budget <= 0 {
            break;
        }
        let size = rs_replicas(r);
        let unhealthy = size - available(r);
        if size == 0 || unhealthy <= 0 {
            continue;
        }
        let down = unhealthy.min(budget);
        changed |= dep::scale_rs(st, ctx, r, size - down).await?;
        budget -= down;
    }
    // Then healthy ones, as far as the available total stays at or above the floor.
    let available_total: i32 = old.iter().chain(st.new.iter()).map(available).sum();
    let mut allowed = available_total - min_available;
    for r in old.iter_mut() {
        if allowed <= 0 {
            break;
        }
        let size = rs_replicas(r);
        if size == 0 {
            continue;
        }
        let down = size.min(allowed);
        changed |= dep::scale_rs(st, ctx, r, size - down).await?;
        allowed -= down;
    }
    st.old = old;
    Ok(changed)
}

/// Recreate: every old pod gone, then the new ReplicaSet at full size.
pub async fn recreate(st: &mut State, ctx: &Ctx) -> Result<Action> {
    let mut old = std::mem::take(&mut st.old);
    let mut changed = false;
    for r in old.iter_mut() {
        if rs_replicas(r) > 0 {
            changed |= dep::scale_rs(st, ctx, r, 0).await?;
        }
    }
    st.old = old;
    if changed || old_pods_running(st).await? {
        return status::sync(st, ctx, false).await;
    }
    let replicas = st.replicas();
    let created = dep::sync_revision(st, ctx, Some(replicas)).await?;
    if let Some(mut n) = st.new.take() {
        dep::scale_rs(st, ctx, &mut n, replicas).await?;
        st.new = Some(n);
    }
    if st.new.as_ref().is_some_and(|n| is_complete(st, n)) {
        dep::cleanup(st).await?;
    }
    status::sync(st, ctx, created).await
}

/// Whether pods of the old ReplicaSets still exist in any phase but finished.
async fn old_pods_running(st: &State) -> Result<bool> {
    if st.old.is_empty() {
        return Ok(false);
    }
    let api: Api<Pod> = Api::namespaced(st.rs_api.clone().into_client(), &st.ns);
    let pods = util::list_in(&api).await?;
    let old_uids: Vec<String> = st.old.iter().filter_map(|r| r.meta().uid.clone()).collect();
    Ok(pods.iter().any(|p| {
        util::controller_of(&p.metadata).is_some_and(|r| old_uids.contains(&r.uid))
            && !matches!(util::phase(p), "Succeeded" | "Failed")
    }))
}

/// A size change: spread the difference over the active ReplicaSets in proportion to
/// their sizes (the new one absorbs rounding), as Kubernetes' proportional scaling does.
pub async fn scale(st: &mut State, ctx: &Ctx) -> Result<()> {
    let replicas = st.replicas();
    let active: usize = st.all().filter(|r| rs_replicas(r) > 0).count();
    if active <= 1 {
        // One active set (or none): it takes the whole size; the new one when idle.
        let target_is_new = st.new.is_some()
            && (active == 0 || st.new.as_ref().is_some_and(|n| rs_replicas(n) > 0));
        if target_is_new {
            if let Some(mut n) = st.new.take() {
                dep::scale_rs(st, ctx, &mut n, replicas).await?;
                st.new = Some(n);
            }
        } else if let Some(i) = st.old.iter().position(|r| rs_replicas(r) > 0) {
            let mut r = st.old.remove(i);
            dep::scale_rs(st, ctx, &mut r, replicas).await?;
            st.old.insert(i, r);
        }
        return Ok(());
    }
    let allowed = replicas + max_surge(st)?;
    let total: i32 = st.all().map(rs_replicas).sum();
    if total == allowed || total == 0 {
        return Ok(());
    }
    let mut old = std::mem::take(&mut st.old);
    let mut assigned = 0;
    for r in old.iter_mut() {
        let size = rs_replicas(r);
        if size == 0 {
            continue;
        }
        let to = (i64::from(size) * i64::from(allowed) / i64::from(total)) as i32;
        assigned += to;
        dep::scale_rs(st, ctx, r, to).await?;
    }
    st.old = old;
    if let Some(mut n) = st.new.take() {
        let to = (allowed - assigned).max(0);
        dep::scale_rs(st, ctx, &mut n, to).await?;
        st.new = Some(n);
    }
    Ok(())
}
