//! The CronJob controller: creates a Job `<cronjob>-<scheduled minute>` at each time of
//! the 5-field cron `schedule` (in `timeZone`, default UTC), honouring `suspend`,
//! `startingDeadlineSeconds` and `concurrencyPolicy` (Allow, Forbid, Replace); keeps
//! `successfulJobsHistoryLimit`/`failedJobsHistoryLimit` finished Jobs; reports
//! `status.active`, `lastScheduleTime` and `lastSuccessfulTime`.
//!
//! Time comes from the manager's [`util::Clock`], so tests move it instead of waiting a
//! minute; each reconcile requeues itself for the next scheduled time.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use croner::parser::{CronParser, Seconds};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;

use super::workload_util::{self as util, Error, Recorder, Result};
use crate::manager::Context;

pub const COMPONENT: &str = "cronjob-controller";
pub const SCHEDULED_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

struct Ctx {
    client: kube::Client,
    recorder: Recorder,
    clock: util::Clock,
}

/// The CronJob controller loop.
pub fn cronjobs(ctx: Arc<Context>) -> crate::manager::LoopFuture {
    Box::pin(async move {
        let client = ctx.client.clone();
        let clock = ctx.options.clock.clone();
        let controller = Controller::new(
            Api::<CronJob>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(Api::<Job>::all(client.clone()), watcher::Config::default())
        .reconcile_all_on(clock.advances());
        let c = Arc::new(Ctx {
            client: client.clone(),
            recorder: Recorder::new(client, COMPONENT),
            clock,
        });
        util::drive(controller, COMPONENT, reconcile, c).await;
    })
}

/// A parsed schedule in its time zone.
pub struct Schedule {
    cron: croner::Cron,
    tz: jiff::tz::TimeZone,
}

impl Schedule {
    /// Parses a CronJob schedule: five fields or a `@` macro; `TZ=` inside it is refused
    /// as Kubernetes does (use `spec.timeZone`).
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, String> {
        let s = schedule.trim();
        if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
            return Err("spec.schedule: TZ is not supported, use spec.timeZone".into());
        }
        if !s.starts_with('@') && s.split_whitespace().count() != 5 {
            return Err(format!("spec.schedule: {s:?}: expected exactly 5 fields"));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .build()
            .parse(s)
            .or_else(|_| croner::Cron::from_str(s))
            .map_err(|e| format!("spec.schedule: {s:?}: {e}"))?;
        let tz = match time_zone {
            None | Some("") => jiff::tz::TimeZone::UTC,
            Some(name) => jiff::tz::TimeZone::get(name)
                .map_err(|e| format!("spec.timeZone: unknown time zone {name:?}: {e}"))?,
        };
        Ok(Schedule { cron, tz })
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let z = t.to_zoned(self.tz.clone());
        self.cron
            .find_next_occurrence(&z, false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The latest scheduled time in `(after, now]`, and how many there were.
    pub fn last_between(&self, after: Timestamp, now: Timestamp) -> (Option<Timestamp>, usize) {
        let mut last = None;
        let mut n = 0;
        let mut t = after;
        while let Some(next) = self.next_after(t) {
            if next > now {
                break;
            }
            last = Some(next);
            n += 1;
            t = next;
            if n > 1000 {
                // Far behind (a long suspend or a stopped manager): only the latest counts.
                if let Ok(p) = self
                    .cron
                    .find_previous_occurrence(&now.to_zoned(self.tz.clone()), true)
                {
                    last = Some(p.timestamp());
                }
                break;
            }
        }
        (last, n)
    }
}

fn job_finished(j: &Job) -> Option<&str> {
    j.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_.as_str())
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action> {
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = cj.namespace().unwrap_or_default();
    let name = cj.name_any();
    let spec = cj
        .spec
        .clone()
        .ok_or_else(|| Error::Invalid(format!("CronJob {ns}/{name}: spec is required")))?;
    let uid = cj.uid().unwrap_or_default();
    let now = ctx.clock.now();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let cj_api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    let mut jobs: Vec<Job> = util::list_in(&jobs_api)
        .await?
        .into_iter()
        .filter(|j| util::is_controlled_by(&j.metadata, &uid))
        .collect();
    jobs.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let status = cj.status.clone().unwrap_or_default();

    // Finished jobs: lastSuccessfulTime, then history limits.
    let mut last_success = status.last_successful_time.clone();
    for j in &jobs {
        if job_finished(j) == Some("Complete")
            && let Some(t) = j.status.as_ref().and_then(|s| s.completion_time.clone())
            && last_success.as_ref().is_none_or(|l| l.0 < t.0)
        {
            last_success = Some(t);
        }
    }
    for (kind, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let done: Vec<&Job> = jobs
            .iter()
            .filter(|j| job_finished(j) == Some(kind))
            .collect();
        let extra = done.len().saturating_sub(limit.max(0) as usize);
        for j in done.into_iter().take(extra) {
            util::delete_quiet(&jobs_api, &j.name_any()).await?;
            ctx.recorder
                .event(
                    cj.as_ref(),
                    false,
                    "SuccessfulDelete",
                    format!("Deleted job {}", j.name_any()),
                )
                .await;
        }
    }
    let mut active: Vec<Job> = jobs
        .into_iter()
        .filter(|j| job_finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
        .collect();

    let sched = match Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            ctx.recorder
                .event(cj.as_ref(), true, "UnparseableSchedule", e.clone())
                .await;
            return Err(Error::Invalid(format!("CronJob {ns}/{name}: {e}")));
        }
    };
    let mut last_schedule = status.last_schedule_time.clone();
    if spec.suspend != Some(true) {
        let mut earliest = last_schedule
            .as_ref()
            .map(|t| t.0)
            .or_else(|| cj.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or(now);
        if let Some(d) = spec.starting_deadline_seconds {
            let floor = now - jiff::SignedDuration::from_secs(d);
            if floor > earliest {
                earliest = floor;
            }
        }
        let (due, missed) = sched.last_between(earliest, now);
        if missed > 100 {
            ctx.recorder
                .event(
                    cj.as_ref(),
                    true,
                    "TooManyMissedTimes",
                    format!("too many missed start times: {missed}"),
                )
                .await;
        }
        if let Some(t) = due {
            let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
            let made = job_for(&cj, &name, t).name_any();
            if active.iter().any(|j| j.name_any() == made) {
                // This time's Job exists: a pass that saw an older CronJob (before its
                // lastScheduleTime was written) must not count it as a skipped run.
                last_schedule = Some(Time(t));
            } else if policy == "Forbid" && !active.is_empty() {
                tracing::debug!(cronjob = %name, "Forbid: a job is still running, skipping {t}");
            } else {
                if policy == "Replace" {
                    for j in active.drain(..) {
                        util::delete_quiet(&jobs_api, &j.name_any()).await?;
                        ctx.recorder
                            .event(
                                cj.as_ref(),
                                false,
                                "SuccessfulDelete",
                                format!("Deleted job {}", j.name_any()),
                            )
                            .await;
                    }
                }
                let job = job_for(&cj, &name, t);
                match jobs_api.create(&PostParams::default(), &job).await {
                    Ok(j) => {
                        ctx.recorder
                            .event(
                                cj.as_ref(),
                                false,
                                "SuccessfulCreate",
                                format!("Created job {}", j.name_any()),
                            )
                            .await;
                        active.push(j);
                    }
                    // Made in an earlier pass whose status write was lost.
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        if let Ok(j) = jobs_api.get(&job.name_any()).await
                            && job_finished(&j).is_none()
                            && !active.iter().any(|a| a.name_any() == j.name_any())
                        {
                            active.push(j);
                        }
                    }
                    Err(e) => {
                        ctx.recorder
                            .event(
                                cj.as_ref(),
                                true,
                                "FailedCreate",
                                format!("Error creating job: {e}"),
                            )
                            .await;
                        return Err(e.into());
                    }
                }
                last_schedule = Some(Time(t));
            }
        }
    }

    let refs: Vec<ObjectReference> = active
        .iter()
        .map(|j| ObjectReference {
            api_version: Some("batch/v1".into()),
            kind: Some("Job".into()),
            name: Some(j.name_any()),
            namespace: Some(ns.clone()),
            uid: j.uid(),
            resource_version: j.resource_version(),
            ..Default::default()
        })
        .collect();
    let names = |v: &[ObjectReference]| v.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
    if names(&refs) != names(status.active.as_deref().unwrap_or(&[]))
        || last_schedule != status.last_schedule_time
        || last_success != status.last_successful_time
    {
        // Guarded by the resourceVersion this pass read: a pass working from an older
        // CronJob than the store's gets a conflict (and a retry on the newer one) instead
        // of writing back the times a newer pass already moved forward.
        util::patch_status_at(
            &cj_api,
            &name,
            cj.resource_version(),
            json!({"active": if refs.is_empty() { serde_json::Value::Null } else { json!(refs) },
                   "lastScheduleTime": last_schedule, "lastSuccessfulTime": last_success}),
        )
        .await?;
    }
    if spec.suspend == Some(true) {
        return Ok(Action::await_change());
    }
    let next = sched.next_after(now);
    Ok(match next {
        Some(t) => Action::requeue(Duration::from_secs(
            u64::try_from(t.as_second() - now.as_second()).unwrap_or(0) + 1,
        )),
        None => Action::await_change(),
    })
}

/// The Job for one scheduled time: named by the scheduled minute so a retry after a
/// crash finds the same Job instead of making a second one.
fn job_for(cj: &CronJob, name: &str, t: Timestamp) -> Job {
    let tmpl = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let meta = tmpl.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_ANNOTATION.into(),
        t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    );
    let mut base = name.to_string();
    base.truncate(52);
    Job {
        metadata: ObjectMeta {
            name: Some(format!("{base}-{}", t.as_second() / 60)),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![util::controller_ref(cj)]),
            ..Default::default()
        },
        spec: tmpl.spec,
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let s = Schedule::parse("*/15 * * * *", None).expect("parse");
        let t: Timestamp = "2026-01-01T10:07:00Z".parse().expect("ts");
        assert_eq!(
            s.next_after(t).map(|t| t.to_string()),
            Some("2026-01-01T10:15:00Z".into())
        );
        let (last, n) = s.last_between(t, "2026-01-01T11:00:00Z".parse().expect("ts"));
        assert_eq!(
            (last.map(|t| t.to_string()), n),
            (Some("2026-01-01T11:00:00Z".into()), 4)
        );
        assert!(Schedule::parse("* * * *", None).is_err());
        assert!(Schedule::parse("TZ=UTC * * * * *", None).is_err());
        assert!(Schedule::parse("* * * * *", Some("Nowhere/Atlantis")).is_err());
        assert!(Schedule::parse("@hourly", None).is_ok());
    }
}
