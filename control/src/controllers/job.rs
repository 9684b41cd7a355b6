//! The Job controller: runs pods until `completions` succeed (NonIndexed, or Indexed with
//! one success per index), at most `parallelism` at a time; fails the Job after more
//! than `backoffLimit` pod failures or `activeDeadlineSeconds`; deletes a finished Job
//! after `ttlSecondsAfterFinished`.
//!
//! Pods carry the `batch.kubernetes.io/job-tracking` finalizer, so a finished pod is
//! counted exactly once even if it is deleted right away: its uid goes to
//! `status.uncountedTerminatedPods`, then the finalizer comes off, then the count moves
//! into `succeeded`/`failed` — Kubernetes' crash-safe order.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;

use super::workload_util::{self as util, Error, Recorder, Result};
use crate::manager::Context;

pub const COMPONENT: &str = "job-controller";
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";

struct Ctx {
    client: kube::Client,
    recorder: Recorder,
    clock: util::Clock,
}

/// The Job controller loop.
pub fn jobs(ctx: Arc<Context>) -> crate::manager::LoopFuture {
    Box::pin(async move {
        let client = ctx.client.clone();
        let clock = ctx.options.clock.clone();
        let controller =
            Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default())
                .owns_shared_stream(ctx.informers.pods.objects())
                .reconcile_all_on(clock.advances());
        let c = Arc::new(Ctx {
            client: client.clone(),
            recorder: Recorder::new(client, COMPONENT),
            clock,
        });
        util::drive(controller, COMPONENT, reconcile, c).await;
    })
}

fn finished(job: &Job) -> Option<&JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

fn index_of(p: &Pod) -> Option<i32> {
    p.metadata
        .annotations
        .as_ref()?
        .get(INDEX_ANNOTATION)?
        .parse()
        .ok()
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action> {
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let what = format!("Job {ns}/{name}");
    let spec = job
        .spec
        .clone()
        .ok_or_else(|| Error::Invalid(format!("{what}: spec is required")))?;
    let now = ctx.clock.now();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let sel = util::selector(spec.selector.as_ref(), &what)?;
    let all = util::list_in(&pods_api).await?;
    let pods = util::claim(&pods_api, job.as_ref(), &sel, all).await?;
    let status = job.status.clone().unwrap_or_default();
    // Counts carry over from the status this pass read, so every status write is guarded by
    // its resourceVersion: a pass that read an older Job (the cache lags the writes) must
    // fail and retry, not write back counts from before pods left the tracking finalizer.
    let mut rv = job.resource_version();

    // Count finished pods exactly once (see the module docs).
    let mut uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    let mut new_succeeded: Vec<&Pod> = Vec::new();
    let mut new_failed: Vec<&Pod> = Vec::new();
    for p in &pods {
        let tracked = p
            .metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|f| f == TRACKING_FINALIZER));
        if !tracked {
            continue;
        }
        match util::phase(p) {
            "Succeeded" => new_succeeded.push(p),
            "Failed" => new_failed.push(p),
            _ if p.metadata.deletion_timestamp.is_some() => new_failed.push(p),
            _ => {}
        }
    }
    let mut completed: BTreeSet<i32> =
        parse_indexes(status.completed_indexes.as_deref().unwrap_or(""));
    let had_uncounted = !new_succeeded.is_empty()
        || !new_failed.is_empty()
        || uncounted.succeeded.as_ref().is_some_and(|v| !v.is_empty())
        || uncounted.failed.as_ref().is_some_and(|v| !v.is_empty());
    if !new_succeeded.is_empty() || !new_failed.is_empty() {
        let s = uncounted.succeeded.get_or_insert_with(Vec::new);
        s.extend(new_succeeded.iter().filter_map(|p| p.metadata.uid.clone()));
        let f = uncounted.failed.get_or_insert_with(Vec::new);
        f.extend(new_failed.iter().filter_map(|p| p.metadata.uid.clone()));
        s.sort();
        s.dedup();
        f.sort();
        f.dedup();
        rv = util::patch_status_at(
            &jobs,
            &name,
            rv,
            json!({"uncountedTerminatedPods": uncounted}),
        )
        .await?;
        for p in new_succeeded.iter().chain(new_failed.iter()) {
            remove_finalizer(&pods_api, p).await?;
        }
    }
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    for p in &new_succeeded {
        if indexed && let Some(i) = index_of(p) {
            completed.insert(i);
        }
    }
    let succeeded =
        status.succeeded.unwrap_or(0) + uncounted.succeeded.as_ref().map_or(0, |v| v.len() as i32);
    let failed =
        status.failed.unwrap_or(0) + uncounted.failed.as_ref().map_or(0, |v| v.len() as i32);

    let mut active: Vec<&Pod> = pods.iter().filter(|p| util::is_active(p)).collect();
    let mut conditions = status.conditions.clone().unwrap_or_default();
    let mut completion_time = status.completion_time.clone();
    let start_time = status.start_time.clone().or(Some(Time(now)));
    let mut requeue: Option<Duration> = None;
    let was_finished = finished(&job).is_some();

    if !was_finished {
        let completions = spec.completions;
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let suspended = spec.suspend == Some(true);
        let done = if indexed {
            completions.is_some_and(|c| completed.len() as i32 >= c)
        } else {
            match completions {
                Some(c) => succeeded >= c,
                None => succeeded > 0 && active.is_empty(),
            }
        };
        let backoff = spec.backoff_limit.unwrap_or(6);
        let deadline = spec.active_deadline_seconds.and_then(|s| {
            let start = start_time.as_ref()?.0;
            Some(start + jiff::SignedDuration::from_secs(s))
        });
        let failure = if failed > backoff {
            Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ))
        } else if deadline.is_some_and(|d| d <= now) {
            Some((
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ))
        } else {
            None
        };
        if let Some((reason, message)) = failure {
            for p in active.drain(..) {
                util::delete_quiet(&pods_api, &p.name_any()).await?;
            }
            set_condition(&mut conditions, "FailureTarget", reason, message, now);
            set_condition(&mut conditions, "Failed", reason, message, now);
            ctx.recorder
                .event(job.as_ref(), true, reason, message.to_string())
                .await;
        } else if done {
            for p in active.drain(..) {
                util::delete_quiet(&pods_api, &p.name_any()).await?;
            }
            set_condition(
                &mut conditions,
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            );
            set_condition(
                &mut conditions,
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            );
            completion_time = Some(Time(now));
            ctx.recorder
                .event(job.as_ref(), false, "Completed", "Job completed".into())
                .await;
        } else if suspended {
            for p in active.drain(..) {
                util::delete_quiet(&pods_api, &p.name_any()).await?;
            }
            set_condition(
                &mut conditions,
                "Suspended",
                "JobSuspended",
                "Job suspended",
                now,
            );
        } else {
            conditions.retain(|c| c.type_ != "Suspended");
            let want = if indexed {
                parallelism.min(completions.unwrap_or(0) - completed.len() as i32)
            } else {
                match completions {
                    Some(c) => parallelism.min(c - succeeded),
                    None if succeeded > 0 => 0,
                    None => parallelism,
                }
            }
            .max(0) as usize;
            if active.len() > want {
                // Parallelism lowered: drop the newest extras.
                active.sort_by(|a, b| super::replicaset::deletion_order(a, b));
                for p in active.drain(..active.len() - want) {
                    util::delete_quiet(&pods_api, &p.name_any()).await?;
                }
            } else if active.len() < want {
                let busy: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
                let mut free = (0..completions.unwrap_or(0))
                    .filter(|i| !completed.contains(i) && !busy.contains(i));
                for _ in active.len()..want {
                    let index = if indexed { free.next() } else { None };
                    if indexed && index.is_none() {
                        break;
                    }
                    let pod = job_pod(&job, &name, index);
                    match pods_api.create(&PostParams::default(), &pod).await {
                        Ok(p) => {
                            ctx.recorder
                                .event(
                                    job.as_ref(),
                                    false,
                                    "SuccessfulCreate",
                                    format!("Created pod: {}", p.name_any()),
                                )
                                .await;
                        }
                        Err(e) => {
                            ctx.recorder
                                .event(
                                    job.as_ref(),
                                    true,
                                    "FailedCreate",
                                    format!("Error creating: {e}"),
                                )
                                .await;
                            return Err(e.into());
                        }
                    }
                }
            }
            if let Some(d) = deadline {
                requeue = Some(Duration::from_secs(
                    u64::try_from(d.as_second() - now.as_second()).unwrap_or(0) + 1,
                ));
            }
        }
    }

    // Re-list active pods for the counts we report (creations/deletions above).
    let active_now: Vec<Pod> = if was_finished {
        Vec::new()
    } else {
        pods_api
            .list(&kube::api::ListParams::default().labels(&sel.to_string()))
            .await?
            .items
            .into_iter()
            .filter(|p| {
                util::is_active(p)
                    && util::is_controlled_by(&p.metadata, &job.uid().unwrap_or_default())
            })
            .collect()
    };
    let ready = active_now.iter().filter(|p| util::is_ready(p)).count();
    let terminating = pods
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_some()
                && !matches!(util::phase(p), "Succeeded" | "Failed")
        })
        .count();
    let mut new_status = json!({
        "active": active_now.len(),
        "ready": ready,
        "terminating": terminating,
        "succeeded": succeeded,
        "failed": failed,
        "startTime": start_time,
        "conditions": conditions,
        "uncountedTerminatedPods": {"succeeded": null, "failed": null},
    });
    if indexed {
        new_status["completedIndexes"] = json!(format_indexes(&completed));
    }
    if let Some(t) = &completion_time {
        new_status["completionTime"] = json!(t);
    }
    let cur = serde_json::to_value(&status).unwrap_or_default();
    let changed = new_status.as_object().is_some_and(|m| {
        m.iter().any(|(k, v)| {
            let old = cur.get(k).cloned().unwrap_or(serde_json::Value::Null);
            match (k.as_str(), v) {
                ("uncountedTerminatedPods", _) => had_uncounted,
                (_, serde_json::Value::Number(n)) => {
                    old.as_i64().unwrap_or(0) != n.as_i64().unwrap_or(0)
                }
                _ => old != *v,
            }
        })
    });
    if changed {
        util::patch_status_at(&jobs, &name, rv, new_status).await?;
    }

    // TTL after finishing.
    if let Some(ttl) = spec.ttl_seconds_after_finished {
        let at = finished(&job)
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0);
        if let Some(at) = at {
            let due = at + jiff::SignedDuration::from_secs(i64::from(ttl));
            if due <= now {
                util::delete_quiet(&jobs, &name).await?;
                return Ok(Action::await_change());
            }
            requeue = Some(Duration::from_secs(
                u64::try_from(due.as_second() - now.as_second()).unwrap_or(0) + 1,
            ));
        } else if completion_time.is_some() || conditions.iter().any(|c| c.type_ == "Failed") {
            requeue = Some(Duration::from_secs(1));
        }
    }
    Ok(match requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// A pod for the job (and an index in Indexed mode), tracked by the finalizer.
fn job_pod(job: &Job, name: &str, index: Option<i32>) -> Pod {
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let generate = match index {
        Some(i) => util::generate_name(&format!("{name}-{i}")),
        None => util::generate_name(name),
    };
    let mut pod =
        util::pod_from_template(&template, util::controller_ref(job), Some(generate), None);
    pod.metadata
        .finalizers
        .get_or_insert_with(Vec::new)
        .push(TRACKING_FINALIZER.into());
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    labels
        .entry("batch.kubernetes.io/job-name".into())
        .or_insert_with(|| name.into());
    labels
        .entry("job-name".into())
        .or_insert_with(|| name.into());
    if let Some(i) = index {
        labels.insert(INDEX_ANNOTATION.into(), i.to_string());
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(INDEX_ANNOTATION.into(), i.to_string());
        if let Some(spec) = pod.spec.as_mut() {
            spec.hostname = Some(format!("{name}-{i}"));
            for c in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten())
            {
                c.env.get_or_insert_with(Vec::new).push(EnvVar {
                    name: "JOB_COMPLETION_INDEX".into(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            api_version: Some("v1".into()),
                            field_path: format!("metadata.labels['{INDEX_ANNOTATION}']"),
                        }),
                        ..Default::default()
                    }),
                });
            }
        }
    }
    pod
}

async fn remove_finalizer(api: &Api<Pod>, p: &Pod) -> Result<()> {
    let rest: Vec<String> = p
        .metadata
        .finalizers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f != TRACKING_FINALIZER)
        .collect();
    let patch = json!({"metadata": {"finalizers": if rest.is_empty() { serde_json::Value::Null } else { json!(rest) }}});
    match api
        .patch(
            &p.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn set_condition(
    conds: &mut Vec<JobCondition>,
    type_: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    if conds.iter().any(|c| c.type_ == type_ && c.status == "True") {
        return;
    }
    conds.retain(|c| c.type_ != type_);
    conds.push(JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    });
}

/// `"0-2,5"` → {0,1,2,5}.
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// {0,1,2,5} → `"0-2,5"`, the form `status.completedIndexes` uses.
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut parts = Vec::new();
    let mut it = set.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end += 1;
            it.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_ranges_round_trip() {
        let s = parse_indexes("0-2,5,7-8");
        assert_eq!(
            s.iter().copied().collect::<Vec<_>>(),
            vec![0, 1, 2, 5, 7, 8]
        );
        assert_eq!(format_indexes(&s), "0-2,5,7-8");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }
}
