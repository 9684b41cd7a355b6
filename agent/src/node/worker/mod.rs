//! One worker per pod: converges the CRI state to the pod's spec (sandbox → init
//! containers in order → containers), restarts per restartPolicy with kubelet's
//! CrashLoopBackOff, runs probes and hooks, writes the pod's status, and on deletion
//! stops everything gracefully, cleans up and deletes the Pod object.
//!
//! - `mod.rs`: the worker, its loop and one convergence round (`sync`, `act`).
//! - `containers`: making the sandbox; init containers then containers started,
//!   restarted (CrashLoopBackOff) or killed when a probe says so.
//! - `pod_status`: the pod's status as kubelet writes it (one PATCH when it changed).
//! - `teardown`: deletion (preStop, graceful stop, cleanup, the Pod object deleted).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_cri::v1::*;
use k8s_openapi::api::core::v1::{Container as KContainer, Pod, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::cri_client::Cri;
use super::cri_spec::{self, CONTAINER_NAME, POD_UID};
use super::env::{self, Facts};
use super::events::{self, NORMAL, WARNING};
use super::probe::{self, Action, Probes};
use super::snapshot::{self, Snapshot};
use super::status::{self, CState, PodView, is_exited, is_running};
use super::volumes::{self, HostVolume, Setup, Tokens};
use super::{Options, cgroups, images, termination};

mod containers;
mod pod_status;
mod teardown;

pub use teardown::cleanup_pod;

const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long before exiting starts its backoff afresh.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
const RESYNC: Duration = Duration::from_secs(15);
/// kubelet's floor for a grace period (also what a force delete gets).
const MIN_GRACE: i64 = 2;

/// What every worker shares.
pub struct Ctx {
    pub client: kube::Client,
    pub cri: Cri,
    pub events: events::Recorder,
    pub opts: Options,
    pub host_ip: String,
    pub runtime: String,
    pub services: kube::runtime::reflector::Store<Service>,
    pub mem_capacity: i128,
    pub cpu_milli: i128,
}

#[derive(Default)]
struct CRt {
    /// Delay a restart must wait after the next exit (kubelet's per-container backoff).
    backoff: Option<Duration>,
    /// Why the container is not running (ErrImagePull, CreateContainerConfigError, ...).
    waiting: Option<(String, String)>,
    /// Earliest next try after a pull or config error.
    retry_at: Option<Instant>,
    retry_delay: Option<Duration>,
    probes: Option<(String, Probes)>,
}

/// One container's row for the status: latest and previous CRI status, restart count,
/// ready, started, and why it is waiting.
type Row = (
    Option<ContainerStatus>,
    Option<ContainerStatus>,
    u32,
    bool,
    bool,
    Option<(String, String)>,
);

/// How a step's effect is seen.
enum Step {
    /// Nothing changed: the view stands.
    Done,
    /// The step brought the view up to date itself.
    Known,
    /// Something changed that only a full view shows.
    Look,
}

/// How long an image lookup made beside RunPodSandbox stands for the containers' start.
const PRESENT_FOR: Duration = Duration::from_secs(10);

pub struct Worker {
    ctx: Arc<Ctx>,
    pub wake: Arc<Notify>,
    rx: watch::Receiver<Option<Arc<Pod>>>,
    uid: String,
    cs: HashMap<String, CRt>,
    tokens: Tokens,
    vols: Option<(BTreeMap<String, HostVolume>, Instant)>,
    last_status: Option<Value>,
    start_time: Option<String>,
    terminal: bool,
    /// When the worker was made (the pod's first event here): phase timings are
    /// logged at debug level relative to it.
    born: Instant,
    /// Containers (name, id) the current step started.
    started: Vec<(String, String)>,
    /// The current step changed something its own view does not show.
    look_again: bool,
    /// The pod's images found present while its sandbox was being made.
    present: Option<(HashSet<String>, Instant)>,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn grace_of(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

fn hook_action(h: &k8s_openapi::api::core::v1::LifecycleHandler) -> Option<Action<'_>> {
    if let Some(e) = &h.exec {
        return Some(Action::Exec(e.command.as_deref().unwrap_or_default()));
    }
    if let Some(g) = &h.http_get {
        return Some(Action::Http(g));
    }
    if let Some(t) = &h.tcp_socket {
        return Some(Action::Tcp(t));
    }
    h.sleep.as_ref().map(|s| Action::Sleep(s.seconds))
}

impl Worker {
    pub fn new(ctx: Arc<Ctx>, uid: String, rx: watch::Receiver<Option<Arc<Pod>>>) -> Worker {
        Worker {
            ctx,
            wake: Arc::new(Notify::new()),
            rx,
            uid,
            cs: HashMap::new(),
            tokens: Tokens::default(),
            vols: None,
            last_status: None,
            start_time: None,
            terminal: false,
            born: Instant::now(),
            started: Vec::new(),
            look_again: false,
            present: None,
        }
    }

    pub async fn run(mut self) {
        loop {
            let pod = self.rx.borrow_and_update().clone();
            let next = match pod {
                None => {
                    // Gone from the API (force-deleted, or removed while we were away).
                    self.terminate(None, MIN_GRACE).await;
                    self.cleanup().await;
                    return;
                }
                Some(p) if p.metadata.deletion_timestamp.is_some() => {
                    self.terminate(Some(&p), grace_of(&p).max(MIN_GRACE)).await;
                    self.cleanup().await;
                    if self.delete_object(&p).await {
                        return;
                    }
                    Some(Duration::from_secs(1))
                }
                Some(p) => self.sync(&p).await,
            };
            let sleep = next.unwrap_or(RESYNC).min(RESYNC);
            tokio::select! {
                r = self.rx.changed() => if r.is_err() {
                    // The manager is gone (agent shutting down): leave the pod running.
                    return;
                },
                _ = self.wake.notified() => {},
                _ = tokio::time::sleep(sleep) => {},
            }
        }
    }

    fn facts<'a>(&'a self, pod_ips: &'a [String]) -> Facts<'a> {
        Facts {
            pod_ips,
            host_ip: &self.ctx.host_ip,
            node_cpu_milli: self.ctx.cpu_milli,
            node_memory: self.ctx.mem_capacity,
        }
    }

    async fn volumes(
        &mut self,
        pod: &Pod,
        pod_ips: &[String],
        force: bool,
    ) -> Result<BTreeMap<String, HostVolume>, String> {
        if !force
            && let Some((v, at)) = &self.vols
            && at.elapsed() < RESYNC
        {
            return Ok(v.clone());
        }
        let mut tokens = std::mem::take(&mut self.tokens);
        let r = {
            let s = Setup {
                client: &self.ctx.client,
                data_dir: &self.ctx.opts.data_dir,
                facts: self.facts(pod_ips),
            };
            s.all(pod, &mut tokens).await
        };
        self.tokens = tokens;
        let v = r?;
        self.vols = Some((v.clone(), Instant::now()));
        Ok(v)
    }

    /// One convergence round; returns when it wants to run again at the latest.
    async fn sync(&mut self, pod: &Arc<Pod>) -> Option<Duration> {
        if self.start_time.is_none() {
            self.start_time = pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0.to_string())
                .or_else(|| Some(status::now()));
        }
        let phase_now = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Pending");
        if phase_now == "Succeeded" || phase_now == "Failed" {
            self.terminal = true;
        }
        let mut next: Option<Duration> = None;
        let mut sandbox_err: Option<String> = None;
        let mut snap = None;
        // The view the last step left up to date, when it could (else a full one).
        let mut known: Option<Snapshot> = None;
        for _round in 0..4 {
            let mut s = match known.take() {
                Some(s) => s,
                None => match snapshot::take(&self.ctx.cri, &self.uid).await {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(pod = %self.uid, "{e}");
                        return Some(Duration::from_secs(1));
                    }
                },
            };
            if self.terminal {
                if let Some(sb) = &s.sandbox {
                    let _ = self
                        .ctx
                        .cri
                        .rt
                        .clone()
                        .stop_pod_sandbox(StopPodSandboxRequest {
                            pod_sandbox_id: sb.id.clone(),
                        })
                        .await;
                }
                snap = Some(s);
                break;
            }
            match self.act(pod, &mut s, &mut next).await {
                Ok(Step::Look) => continue,
                Ok(Step::Known) => known = Some(s),
                Ok(Step::Done) => {
                    snap = Some(s);
                    break;
                }
                Err(e) => {
                    sandbox_err = Some(e);
                    next = Some(Duration::from_secs(2));
                    snap = Some(s);
                    break;
                }
            }
        }
        let Some(snap) = snap else {
            return Some(Duration::from_millis(200));
        };
        // configMap / secret / downwardAPI / projected contents follow their objects
        // while the pod runs (refreshed at most every RESYNC; unchanged files stay).
        if snap.sandbox.is_some()
            && !self.terminal
            && let Err(e) = self.volumes(pod, &snap.pod_ips, false).await
        {
            warn!(pod = %self.uid, "refreshing volumes: {e}");
        }
        self.write_status(pod, &snap, sandbox_err).await;
        next
    }

    /// Does the next step, and says how to see its effect.
    async fn act(
        &mut self,
        pod: &Arc<Pod>,
        s: &mut Snapshot,
        next: &mut Option<Duration>,
    ) -> Result<Step, String> {
        if s.sandbox.is_none() {
            return self.make_sandbox(pod, s).await;
        }
        self.started.clear();
        self.look_again = false;
        if !self.converge(pod, s, next).await? {
            return Ok(Step::Done);
        }
        if self.look_again || self.started.is_empty() {
            return Ok(Step::Look);
        }
        let started = std::mem::take(&mut self.started);
        Ok(if snapshot::add_started(&self.ctx.cri, s, &started).await {
            Step::Known
        } else {
            Step::Look
        })
    }
}
