//! Jobs and CronJobs against a real `hull server`, through kubectl 1.35: completions
//! with parallelism, Indexed jobs, backoffLimit, activeDeadlineSeconds, TTL, and a
//! CronJob that fires on a `* * * * *` schedule when the controllers' clock is moved
//! forward (no waiting for the minute), with Forbid and history limits. Pod outcomes
//! are written to pod status as a kubelet would.

mod controllers_workloads_support;

use std::time::Duration;

use controllers_workloads_support::{Server, name};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);

fn job_yaml(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
{extra}  template:
    spec: {{restartPolicy: Never, containers: [{{name: c, image: busybox}}]}}
"
    )
}

fn job_pods(s: &Server, ns: &str, job: &str) -> Vec<Value> {
    s.live_pods(ns, &format!("batch.kubernetes.io/job-name={job}"))
}

fn running(s: &Server, ns: &str, job: &str) -> Vec<Value> {
    job_pods(s, ns, job)
        .into_iter()
        .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        .collect()
}

fn cond(j: &Value, t: &str) -> Value {
    j["status"]["conditions"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["type"] == t && c["status"] == "True")
                .cloned()
        })
        .unwrap_or_default()
}

#[test]
fn job_completions_parallelism_and_failures() {
    let s = Server::start("job");
    let ns = format!("wl-job-{}", std::process::id());
    s.ok(&["create", "ns", &ns]);

    // 4 completions, 2 at a time.
    s.apply(
        &ns,
        &job_yaml("work", "  completions: 4\n  parallelism: 2\n"),
    );
    let mut done = 0;
    s.wait(LIMIT, "job work to complete", || {
        let run = running(&s, &ns, "work");
        assert!(run.len() <= 2, "{} pods exceed parallelism 2", run.len());
        if let Some(p) = run.first() {
            // Each pod carries the tracking finalizer until it is counted.
            assert!(
                p["metadata"]["finalizers"]
                    .to_string()
                    .contains("batch.kubernetes.io/job-tracking")
            );
            s.set_phase(&ns, &name(p), "Succeeded");
            done += 1;
        }
        !cond(&s.get(&ns, "job", "work"), "Complete").is_null()
    });
    let j = s.get(&ns, "job", "work");
    assert_eq!(j["status"]["succeeded"], 4);
    assert!(j["status"]["completionTime"].is_string());
    assert!(j["status"]["startTime"].is_string());
    assert_eq!(done, 4, "exactly 4 pods ran");
    s.ok(&[
        "wait",
        "--for=condition=complete",
        "job/work",
        "-n",
        &ns,
        "--timeout=30s",
    ]);
    // The finalizers came off: counted pods can go.
    s.wait(LIMIT, "finalizers removed", || {
        job_pods(&s, &ns, "work")
            .iter()
            .all(|p| p["metadata"]["finalizers"].is_null())
    });

    // backoffLimit 1: the second failure fails the job.
    s.apply(&ns, &job_yaml("flaky", "  backoffLimit: 1\n"));
    s.wait(LIMIT, "job flaky to fail", || {
        if let Some(p) = running(&s, &ns, "flaky").first() {
            s.set_phase(&ns, &name(p), "Failed");
        }
        !cond(&s.get(&ns, "job", "flaky"), "Failed").is_null()
    });
    let j = s.get(&ns, "job", "flaky");
    assert_eq!(j["status"]["failed"], 2);
    assert_eq!(cond(&j, "Failed")["reason"], "BackoffLimitExceeded");

    // activeDeadlineSeconds: the clock moves past it; the running pod is removed.
    s.apply(&ns, &job_yaml("slow", "  activeDeadlineSeconds: 30\n"));
    s.wait(LIMIT, "slow pod", || running(&s, &ns, "slow").len() == 1);
    s.clock.advance(Duration::from_secs(40));
    s.wait(LIMIT, "deadline", || {
        cond(&s.get(&ns, "job", "slow"), "Failed")["reason"] == "DeadlineExceeded"
    });
    s.wait(LIMIT, "slow pod removed", || {
        running(&s, &ns, "slow").is_empty()
    });

    // Indexed: one success per index, index in annotation, label and hostname.
    s.apply(
        &ns,
        &job_yaml(
            "idx",
            "  completions: 3\n  parallelism: 3\n  completionMode: Indexed\n",
        ),
    );
    s.wait(LIMIT, "3 indexed pods", || {
        running(&s, &ns, "idx").len() == 3
    });
    let mut seen: Vec<String> = running(&s, &ns, "idx")
        .iter()
        .map(|p| {
            let i = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                .as_str()
                .unwrap_or("")
                .to_string();
            assert_eq!(p["spec"]["hostname"], format!("idx-{i}"));
            assert!(name(p).starts_with(&format!("idx-{i}-")));
            i
        })
        .collect();
    seen.sort();
    assert_eq!(seen, ["0", "1", "2"]);
    s.wait(LIMIT, "indexed job complete", || {
        for p in running(&s, &ns, "idx") {
            s.set_phase(&ns, &name(&p), "Succeeded");
        }
        !cond(&s.get(&ns, "job", "idx"), "Complete").is_null()
    });
    assert_eq!(
        s.get(&ns, "job", "idx")["status"]["completedIndexes"],
        "0-2"
    );

    // ttlSecondsAfterFinished: the finished job is deleted once the TTL passes.
    s.apply(&ns, &job_yaml("brief", "  ttlSecondsAfterFinished: 100\n"));
    s.wait(LIMIT, "brief completes", || {
        if let Some(p) = running(&s, &ns, "brief").first() {
            s.set_phase(&ns, &name(p), "Succeeded");
        }
        !cond(&s.get(&ns, "job", "brief"), "Complete").is_null()
    });
    s.clock.advance(Duration::from_secs(120));
    s.wait(LIMIT, "ttl deletion", || {
        !s.kubectl(&["get", "job", "brief", "-n", &ns])
            .status
            .success()
    });
}

#[test]
fn cronjob_fires_forbids_and_keeps_history() {
    let s = Server::start("cron");
    let ns = format!("wl-cron-{}", std::process::id());
    s.ok(&["create", "ns", &ns]);
    s.apply(
        &ns,
        "apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: '* * * * *'
  concurrencyPolicy: Forbid
  successfulJobsHistoryLimit: 1
  jobTemplate:
    spec:
      template:
        spec: {restartPolicy: Never, containers: [{name: c, image: busybox}]}
",
    );
    let jobs = |s: &Server| s.items(&ns, "jobs", &[]);
    // Move to the next minute: one Job, owned by the CronJob, in status.active.
    s.clock.advance(Duration::from_secs(61));
    s.wait(LIMIT, "first job", || jobs(&s).len() == 1);
    let first = jobs(&s)[0].clone();
    assert_eq!(first["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    assert!(name(&first).starts_with("tick-"));
    s.wait(LIMIT, "status.active", || {
        let cj = s.get(&ns, "cronjob", "tick");
        cj["status"]["active"][0]["name"] == name(&first).as_str()
            && cj["status"]["lastScheduleTime"].is_string()
    });
    // Forbid: another minute passes while it runs — no second job.
    s.clock.advance(Duration::from_secs(60));
    s.wait(LIMIT, "lastScheduleTime unchanged under Forbid", || {
        // The reconcile after the advance has run once the CronJob's generation is observed
        // and the job count is stable; then check nothing new appeared.
        std::thread::sleep(Duration::from_secs(2));
        jobs(&s).len() == 1
    });
    // Finish the job; the next minute makes a new one and history keeps 1 success.
    s.wait(LIMIT, "first job pod", || running_any(&s, &ns));
    for p in s.items(&ns, "pods", &[]) {
        s.set_phase(&ns, &name(&p), "Succeeded");
    }
    s.wait(LIMIT, "first job complete", || {
        !cond(&s.get(&ns, "job", &name(&first)), "Complete").is_null()
    });
    s.clock.advance(Duration::from_secs(60));
    s.wait(LIMIT, "second job", || {
        jobs(&s).iter().any(|j| name(j) != name(&first))
    });
    s.wait(LIMIT, "lastSuccessfulTime", || {
        s.get(&ns, "cronjob", "tick")["status"]["lastSuccessfulTime"].is_string()
    });
    let out = s.ok(&["get", "cronjob", "tick", "-n", &ns]);
    assert!(out.contains("* * * * *"), "{out}");
    // Suspend: no more jobs however far the clock moves.
    s.ok(&[
        "patch",
        "cronjob",
        "tick",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]);
    for p in s.items(&ns, "pods", &[]) {
        s.set_phase(&ns, &name(&p), "Succeeded");
    }
    s.wait(LIMIT, "second job done", || {
        jobs(&s).iter().all(|j| !cond(j, "Complete").is_null())
    });
    // History limit 1: only the newest finished job is kept.
    s.wait(LIMIT, "history limit", || jobs(&s).len() == 1);
    let before = jobs(&s).len();
    s.clock.advance(Duration::from_secs(300));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(jobs(&s).len(), before, "suspended CronJob made a job");
}

fn running_any(s: &Server, ns: &str) -> bool {
    !s.items(ns, "pods", &[]).is_empty()
}
