//! Pod status as kubelet writes it: phase, conditions, container statuses (state,
//! lastState, restartCount, ready, started, image IDs), IPs, startTime and QoS class.

use k8s_cri::v1::{ContainerState, ContainerStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::resources;

pub fn rfc3339_ns(ns: i64) -> Value {
    if ns <= 0 {
        return Value::Null;
    }
    Timestamp::from_second(ns / 1_000_000_000)
        .map(|t| Value::String(t.to_string()))
        .unwrap_or(Value::Null)
}

pub fn now() -> String {
    Timestamp::from_second(Timestamp::now().as_second())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// What the worker knows of one spec container this round.
pub struct CState<'a> {
    pub name: &'a str,
    pub image: &'a str,
    /// The newest CRI container of this name, and the one before it.
    pub latest: Option<&'a ContainerStatus>,
    pub previous: Option<&'a ContainerStatus>,
    pub restart_count: u32,
    pub ready: bool,
    pub started: bool,
    /// Why it is waiting, when it is not running (CrashLoopBackOff, ErrImagePull, ...).
    pub waiting: Option<(String, String)>,
    pub runtime: &'a str,
}

fn terminated(s: &ContainerStatus, runtime: &str) -> Value {
    let mut t = json!({
        "exitCode": s.exit_code,
        "reason": if s.reason.is_empty() { "Error" } else { &s.reason },
        "startedAt": rfc3339_ns(s.started_at),
        "finishedAt": rfc3339_ns(s.finished_at),
        "containerID": format!("{runtime}://{}", s.id),
    });
    if !s.message.is_empty() {
        t["message"] = json!(s.message);
    }
    json!({"terminated": t})
}

pub fn is_running(s: &ContainerStatus) -> bool {
    s.state == ContainerState::ContainerRunning as i32
}

pub fn is_exited(s: &ContainerStatus) -> bool {
    s.state == ContainerState::ContainerExited as i32
}

pub enum Tally {
    Waiting,
    Running,
    Stopped { ok: bool },
}

impl CState<'_> {
    pub fn json(&self) -> (Value, Tally) {
        let mut v = json!({
            "name": self.name, "image": self.image, "imageID": "",
            "ready": self.ready, "restartCount": self.restart_count,
            "started": self.started, "lastState": {},
        });
        let mut tally = Tally::Waiting;
        let show_previous_as_last;
        match self.latest {
            Some(s) if is_running(s) => {
                v["state"] = json!({"running": {"startedAt": rfc3339_ns(s.started_at)}});
                tally = Tally::Running;
                show_previous_as_last = true;
            }
            Some(s) if is_exited(s) && self.waiting.is_none() => {
                v["state"] = terminated(s, self.runtime);
                tally = Tally::Stopped {
                    ok: s.exit_code == 0,
                };
                show_previous_as_last = true;
            }
            Some(s) if is_exited(s) => {
                // Waiting to be restarted: the dead one is the last state.
                v["lastState"] = terminated(s, self.runtime);
                let (r, m) = self.waiting.clone().unwrap_or_default();
                v["state"] = json!({"waiting": {"reason": r, "message": m}});
                tally = Tally::Stopped {
                    ok: s.exit_code == 0,
                };
                show_previous_as_last = false;
            }
            _ => {
                let (r, m) = self
                    .waiting
                    .clone()
                    .unwrap_or_else(|| ("ContainerCreating".into(), String::new()));
                let mut w = json!({"reason": r});
                if !m.is_empty() {
                    w["message"] = json!(m);
                }
                v["state"] = json!({"waiting": w});
                show_previous_as_last = true;
                if let Some(p) = self.previous.filter(|p| is_exited(p)) {
                    tally = Tally::Stopped {
                        ok: p.exit_code == 0,
                    };
                }
            }
        }
        if let Some(s) = self.latest {
            v["imageID"] = json!(s.image_ref);
            v["containerID"] = json!(format!("{}://{}", self.runtime, s.id));
        }
        if show_previous_as_last && let Some(p) = self.previous.filter(|p| is_exited(p)) {
            v["lastState"] = terminated(p, self.runtime);
        }
        (v, tally)
    }
}

/// A condition we own. Its transition time comes from the status this agent last wrote
/// (`ours`) when there is one, else from the pod: the pod object a worker holds lags
/// behind its own writes, and taking the time from it made every write look like a
/// new transition, so each pod's status was patched again and again (7 writes per pod
/// at 100 pods) until the watch caught up.
fn cond(
    pod: &Pod,
    ours: Option<&Value>,
    ty: &str,
    ok: bool,
    reason: Option<&str>,
    msg: Option<String>,
) -> Value {
    let status = if ok { "True" } else { "False" };
    let mine = ours
        .and_then(|o| o["conditions"].as_array())
        .and_then(|cs| cs.iter().find(|c| c["type"] == ty));
    if let Some(m) = mine {
        let since = if m["status"] == status && m["lastTransitionTime"].is_string() {
            m["lastTransitionTime"].clone()
        } else {
            json!(now())
        };
        return with_reason(ty, status, since, reason, msg);
    }
    let old = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == ty));
    let since = match old {
        Some(c) if c.status == status => c
            .last_transition_time
            .as_ref()
            .map(|t| Value::String(t.0.to_string()))
            .unwrap_or_else(|| json!(now())),
        _ => json!(now()),
    };
    with_reason(ty, status, since, reason, msg)
}

fn with_reason(
    ty: &str,
    status: &str,
    since: Value,
    reason: Option<&str>,
    msg: Option<String>,
) -> Value {
    let mut c =
        json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    if let Some(m) = msg {
        c["message"] = json!(m);
    }
    c
}

pub struct PodView<'a> {
    pub init: Vec<CState<'a>>,
    pub containers: Vec<CState<'a>>,
    pub sandbox_ready: bool,
    pub pod_ips: Vec<String>,
    pub host_ip: &'a str,
    pub start_time: &'a str,
    /// Set when an init container failed for good (restartPolicy Never).
    pub init_failed: bool,
}

/// kubelet's getPhase over the container tallies.
pub fn phase(pod: &Pod, v: &PodView, inits_done: bool) -> &'static str {
    let policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    if v.init_failed {
        return "Failed";
    }
    if !inits_done {
        return "Pending";
    }
    let (mut waiting, mut running, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in &v.containers {
        match c.json().1 {
            Tally::Waiting => waiting += 1,
            Tally::Running => running += 1,
            Tally::Stopped { ok } => {
                stopped += 1;
                if ok {
                    succeeded += 1;
                }
            }
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        if policy == "Always" {
            return "Running";
        }
        if stopped == succeeded {
            return "Succeeded";
        }
        if policy == "Never" {
            return "Failed";
        }
        // OnFailure: the failed ones are restarted.
        return "Running";
    }
    "Pending"
}

/// The pod's status; `ours` is the status this agent last wrote for it, if any.
pub fn build(pod: &Pod, ours: Option<&Value>, v: &PodView, phase: &str, inits_done: bool) -> Value {
    let terminal = phase == "Succeeded" || phase == "Failed";
    let init_json: Vec<Value> = v.init.iter().map(|c| c.json().0).collect();
    let cont_json: Vec<Value> = v.containers.iter().map(|c| c.json().0).collect();
    let unready: Vec<&str> = v
        .containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name)
        .collect();
    let incomplete: Vec<&str> = v
        .init
        .iter()
        .filter(|c| {
            !(c.latest.is_some_and(|s| is_exited(s) && s.exit_code == 0)
                || c.started && c.latest.is_some_and(is_running))
        })
        .map(|c| c.name)
        .collect();
    let gates_ok = pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .into_iter()
        .flatten()
        .all(|g| {
            pod.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == g.condition_type))
                .is_some_and(|c| c.status == "True")
        });
    let containers_ready = unready.is_empty() && !terminal;
    let (cr_reason, cr_msg) = if terminal {
        (Some("PodCompleted"), None)
    } else if unready.is_empty() {
        (None, None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let (init_reason, init_msg) = if terminal && inits_done {
        (Some("PodCompleted"), None)
    } else if inits_done {
        (None, None)
    } else {
        (
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            )),
        )
    };
    let scheduled = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
        .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
        .unwrap_or_else(|| cond(pod, None, "PodScheduled", true, None, None));
    let mut conditions = vec![
        cond(
            pod,
            ours,
            "PodReadyToStartContainers",
            v.sandbox_ready,
            None,
            None,
        ),
        cond(pod, ours, "Initialized", inits_done, init_reason, init_msg),
        cond(
            pod,
            ours,
            "Ready",
            containers_ready && gates_ok,
            cr_reason,
            cr_msg.clone(),
        ),
        cond(
            pod,
            ours,
            "ContainersReady",
            containers_ready,
            cr_reason,
            cr_msg,
        ),
        scheduled,
    ];
    // Conditions others own (readiness gates, DisruptionTarget) are kept.
    for c in pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
    {
        if ![
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        ]
        .contains(&c.type_.as_str())
        {
            conditions.push(serde_json::to_value(c).unwrap_or(Value::Null));
        }
    }
    let mut st = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": v.host_ip,
        "hostIPs": [{"ip": v.host_ip}],
        "startTime": v.start_time,
        "qosClass": resources::qos_class(pod),
        "containerStatuses": cont_json,
    });
    if let Some(g) = pod.metadata.generation {
        st["observedGeneration"] = json!(g);
    }
    if !init_json.is_empty() {
        st["initContainerStatuses"] = json!(init_json);
    }
    if !v.pod_ips.is_empty() {
        st["podIP"] = json!(v.pod_ips[0]);
        st["podIPs"] = json!(
            v.pod_ips
                .iter()
                .map(|ip| json!({"ip": ip}))
                .collect::<Vec<_>>()
        );
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_with_ready(status: &str, since: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"conditions": [
                {"type": "Ready", "status": status, "lastTransitionTime": since}
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn transition_time_follows_our_last_write_not_a_lagging_pod() {
        // The worker wrote Ready=True at 12:00:05; its pod object still says False.
        let pod = pod_with_ready("False", "2026-01-01T12:00:00Z");
        let ours = json!({"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T12:00:05Z"}
        ]});
        let c = cond(&pod, Some(&ours), "Ready", true, None, None);
        assert_eq!(c["lastTransitionTime"], "2026-01-01T12:00:05Z");
        assert_eq!(c["status"], "True");
        // A real transition since our write gets a new time.
        let c = cond(
            &pod,
            Some(&ours),
            "Ready",
            false,
            Some("ContainersNotReady"),
            None,
        );
        assert_ne!(c["lastTransitionTime"], "2026-01-01T12:00:05Z");
        assert_eq!(c["reason"], "ContainersNotReady");
    }

    #[test]
    fn without_a_write_of_ours_the_pod_is_the_reference() {
        // After an agent restart: the pod's time is kept while the status holds.
        let pod = pod_with_ready("True", "2026-01-01T12:00:00Z");
        let c = cond(&pod, None, "Ready", true, None, None);
        assert_eq!(c["lastTransitionTime"], "2026-01-01T12:00:00Z");
        let c = cond(&pod, None, "Ready", false, None, None);
        assert_ne!(c["lastTransitionTime"], "2026-01-01T12:00:00Z");
    }
}
