//! One worker per pod: converges the CRI state to the pod's spec (sandbox → init
//! containers in order → containers), restarts per restartPolicy with kubelet's
//! CrashLoopBackOff, runs probes and hooks, writes the pod's status, and on deletion
//! stops everything gracefully, cleans up and deletes the Pod object.

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
use super::{Options, cgroups, images};

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

    /// No live sandbox: kills what is left of old ones, then makes a new one while the
    /// volumes are prepared and the images looked up.
    async fn make_sandbox(&mut self, pod: &Arc<Pod>, s: &mut Snapshot) -> Result<Step, String> {
        let mut rt = self.ctx.cri.rt.clone();
        for id in &s.stale_sandboxes {
            let _ = rt
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await;
        }
        let attempt = s.max_sandbox_attempt.map(|a| a + 1).unwrap_or(0);
        let cfg = cri_spec::sandbox(pod, &self.ctx.opts, attempt);
        std::fs::create_dir_all(&cfg.log_directory)
            .map_err(|e| format!("create {}: {e}", cfg.log_directory))?;
        let t = Instant::now();
        // The volumes (API reads, token requests) are prepared and the images looked
        // up while the runtime makes the sandbox: none needs another, and all wait
        // on others.
        let sandbox = rt.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(cfg),
            runtime_handler: String::new(),
        });
        let ctx = self.ctx.clone();
        let look = images::present(&ctx.cri, pod);
        let (vols, sandbox, present) = tokio::join!(self.volumes(pod, &[], true), sandbox, look);
        let id = sandbox
            .map_err(|e| format!("Failed to create pod sandbox: {}", e.message()))?
            .into_inner()
            .pod_sandbox_id;
        vols?;
        self.present = Some((present, Instant::now()));
        debug!(pod = %self.uid, at_ms = self.born.elapsed().as_millis() as u64, took_ms = t.elapsed().as_millis() as u64, "RunPodSandbox done");
        for id in &s.stale_sandboxes {
            let _ = rt
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await;
        }
        Ok(
            match snapshot::of_new_sandbox(&self.ctx.cri, &id, attempt).await {
                Some(new) => {
                    *s = new;
                    Step::Known
                }
                None => Step::Look,
            },
        )
    }

    /// Init containers in order, then the containers: started, restarted, or killed
    /// when unhealthy. True when it changed something.
    async fn converge(
        &mut self,
        pod: &Arc<Pod>,
        s: &Snapshot,
        next: &mut Option<Duration>,
    ) -> Result<bool, String> {
        let mut rt = self.ctx.cri.rt.clone();
        let Some(sb) = &s.sandbox else {
            return Ok(false);
        };
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = restart_policy(pod).to_string();
        // Containers the spec no longer names.
        let names: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .map(|c| c.name.as_str())
            .collect();
        for (n, list) in &s.by_name {
            if !names.contains(&n.as_str()) {
                for c in list.iter().filter(|c| is_running(c)) {
                    let _ = rt
                        .stop_container(StopContainerRequest {
                            container_id: c.id.clone(),
                            timeout: grace_of(pod),
                        })
                        .await;
                }
            }
        }
        // Init containers, in order.
        for ic in spec.init_containers.iter().flatten() {
            let sidecar = ic.restart_policy.as_deref() == Some("Always");
            match s.latest(&ic.name) {
                Some(c) if is_running(c) => {
                    if sidecar {
                        self.ensure_probes(pod, ic, c, &s.pod_ips);
                        if self.kill_if_unhealthy(pod, c).await {
                            return Ok(true);
                        }
                        continue;
                    }
                    return Ok(false);
                }
                Some(c) if is_exited(c) && c.exit_code == 0 && !sidecar => continue,
                Some(c) if is_exited(c) => {
                    if policy == "Never" && !sidecar {
                        return Ok(false);
                    }
                    return self.restart(pod, ic, sb, s, Some(c), next).await;
                }
                latest => return self.restart(pod, ic, sb, s, latest, next).await,
            }
        }
        let mut acted = false;
        for c in &spec.containers {
            match s.latest(&c.name) {
                Some(st) if is_running(st) => {
                    self.ensure_probes(pod, c, st, &s.pod_ips);
                    acted |= self.kill_if_unhealthy(pod, st).await;
                }
                Some(st) if is_exited(st) => {
                    self.drop_probes(&c.name);
                    let again = match policy.as_str() {
                        "Always" => true,
                        "OnFailure" => st.exit_code != 0,
                        _ => false,
                    };
                    if again {
                        acted |= self.restart(pod, c, sb, s, Some(st), next).await?;
                    }
                }
                latest => acted |= self.restart(pod, c, sb, s, latest, next).await?,
            }
        }
        Ok(acted)
    }

    fn ensure_probes(
        &mut self,
        pod: &Pod,
        c: &KContainer,
        st: &ContainerStatus,
        pod_ips: &[String],
    ) {
        let crt = self.cs.entry(c.name.clone()).or_default();
        if crt.probes.as_ref().is_some_and(|(id, _)| id == &st.id) {
            return;
        }
        let cid = format!("{}://{}", self.ctx.runtime, st.id);
        let hint = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .chain(
                pod.status
                    .as_ref()
                    .and_then(|s| s.init_container_statuses.as_ref())
                    .into_iter()
                    .flatten(),
            )
            .any(|cs| cs.container_id.as_deref() == Some(&cid) && cs.ready);
        let ip = if cri_spec::host_network(pod) {
            self.ctx.host_ip.clone()
        } else {
            pod_ips.first().cloned().unwrap_or_default()
        };
        let (rec, on, name) = (
            self.ctx.events.clone(),
            Arc::new(pod.clone()),
            c.name.clone(),
        );
        let unhealthy: probe::Unhealthy =
            Arc::new(move |msg| rec.pod(&on, Some(&name), WARNING, "Unhealthy", msg));
        let p = Probes::start(
            &self.ctx.cri,
            c,
            &st.id,
            &ip,
            hint,
            self.wake.clone(),
            unhealthy,
        );
        crt.probes = Some((st.id.clone(), p));
    }

    fn drop_probes(&mut self, name: &str) {
        if let Some(c) = self.cs.get_mut(name) {
            c.probes = None;
        }
    }

    async fn kill_if_unhealthy(&mut self, pod: &Pod, st: &ContainerStatus) -> bool {
        let name = st
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let Some(reason) = self
            .cs
            .get(&name)
            .and_then(|c| c.probes.as_ref())
            .filter(|(id, _)| id == &st.id)
            .and_then(|(_, p)| p.get().kill)
        else {
            return false;
        };
        info!(pod = %self.uid, container = %name, "{reason}; restarting");
        let what = if reason.starts_with("Startup") {
            "startup"
        } else {
            "liveness"
        };
        self.ctx.events.pod(
            pod,
            Some(&name),
            NORMAL,
            "Killing",
            format!("Container {name} failed {what} probe, will be restarted"),
        );
        self.drop_probes(&name);
        let _ = self
            .ctx
            .cri
            .rt
            .clone()
            .stop_container(StopContainerRequest {
                container_id: st.id.clone(),
                timeout: grace_of(pod),
            })
            .await;
        self.look_again = true;
        true
    }

    /// Starts container `c` anew, unless a backoff holds it back.
    async fn restart(
        &mut self,
        pod: &Arc<Pod>,
        c: &KContainer,
        sb: &PodSandbox,
        s: &Snapshot,
        latest: Option<&ContainerStatus>,
        next: &mut Option<Duration>,
    ) -> Result<bool, String> {
        let crt = self.cs.entry(c.name.clone()).or_default();
        if let Some(at) = crt.retry_at {
            let now = Instant::now();
            if now < at {
                let left = at - now;
                *next = Some(next.map_or(left, |n| n.min(left)));
                if let Some((r, _)) = &mut crt.waiting
                    && r == "ErrImagePull"
                {
                    *r = "ImagePullBackOff".into();
                    self.ctx.events.pod(
                        pod,
                        Some(&c.name),
                        NORMAL,
                        "BackOff",
                        format!(
                            "Back-off pulling image \"{}\"",
                            c.image.as_deref().unwrap_or_default()
                        ),
                    );
                }
                return Ok(false);
            }
        }
        if let Some(st) = latest.filter(|st| is_exited(st)) {
            let ran = Duration::from_nanos((st.finished_at - st.started_at).max(0) as u64);
            if ran >= BACKOFF_RESET {
                crt.backoff = None;
            }
            let since_exit = Duration::from_nanos((now_ns() - st.finished_at).max(0) as u64);
            match crt.backoff {
                Some(d) if since_exit < d => {
                    let left = d - since_exit;
                    *next = Some(next.map_or(left, |n| n.min(left)));
                    if crt
                        .waiting
                        .as_ref()
                        .is_none_or(|(r, _)| r != "CrashLoopBackOff")
                    {
                        self.ctx.events.pod(
                            pod,
                            Some(&c.name),
                            WARNING,
                            "BackOff",
                            format!(
                                "Back-off restarting failed container {} in pod {}_{}({})",
                                c.name,
                                pod.metadata.name.as_deref().unwrap_or_default(),
                                pod.metadata.namespace.as_deref().unwrap_or_default(),
                                self.uid
                            ),
                        );
                    }
                    crt.waiting = Some((
                        "CrashLoopBackOff".into(),
                        format!(
                            "back-off {}s restarting failed container={} pod={}_{}({})",
                            d.as_secs(),
                            c.name,
                            pod.metadata.name.as_deref().unwrap_or_default(),
                            pod.metadata.namespace.as_deref().unwrap_or_default(),
                            self.uid
                        ),
                    ));
                    return Ok(false);
                }
                Some(d) => crt.backoff = Some((d * 2).min(BACKOFF_MAX)),
                None => crt.backoff = Some(BACKOFF_START),
            }
        }
        let attempt = latest
            .and_then(|l| l.metadata.as_ref())
            .map(|m| m.attempt + 1)
            .unwrap_or(0);
        match self.start(pod, c, sb, s, attempt).await {
            Ok(()) => {
                let crt = self.cs.entry(c.name.clone()).or_default();
                crt.waiting = None;
                crt.retry_at = None;
                crt.retry_delay = None;
                Ok(true)
            }
            Err((reason, msg)) => {
                warn!(pod = %self.uid, container = %c.name, "{reason}: {msg}");
                let m = if reason == "CreateContainerConfigError" || reason == "ErrImagePull" {
                    format!("Error: {reason}")
                } else {
                    format!("Error: {msg}")
                };
                self.ctx
                    .events
                    .pod(pod, Some(&c.name), WARNING, "Failed", m);
                let crt = self.cs.entry(c.name.clone()).or_default();
                let d = crt
                    .retry_delay
                    .map(|d| (d * 2).min(BACKOFF_MAX))
                    .unwrap_or(BACKOFF_START);
                crt.retry_delay = Some(d);
                crt.retry_at = Some(Instant::now() + d);
                crt.waiting = Some((reason, msg));
                *next = Some(next.map_or(d, |n| n.min(d)));
                Ok(false)
            }
        }
    }

    async fn start(
        &mut self,
        pod: &Arc<Pod>,
        c: &KContainer,
        sb: &PodSandbox,
        s: &Snapshot,
        attempt: u32,
    ) -> Result<(), (String, String)> {
        let t0 = Instant::now();
        let image = c.image.as_deref().unwrap_or_default();
        let known = self
            .present
            .as_ref()
            .is_some_and(|(p, at)| at.elapsed() < PRESENT_FOR && p.contains(image));
        images::ensure(
            &self.ctx.cri,
            &self.ctx.client,
            &self.ctx.events,
            pod,
            c,
            known,
        )
        .await?;
        let t_image = t0.elapsed();
        let cfg_err = |m: String| ("CreateContainerConfigError".to_string(), m);
        let services: Vec<Service> = self
            .ctx
            .services
            .state()
            .iter()
            .map(|s| (**s).clone())
            .collect();
        let built = env::build(&self.ctx.client, pod, c, &services, &self.facts(&s.pod_ips))
            .await
            .map_err(cfg_err)?;
        let vols = self
            .volumes(pod, &s.pod_ips, false)
            .await
            .map_err(cfg_err)?;
        let t_prep = t0.elapsed();
        let vars: BTreeMap<String, String> = built.env.iter().cloned().collect();
        let mounts = volumes::mounts(pod, c, &vols, &vars).map_err(cfg_err)?;
        let cfg = cri_spec::container(
            pod,
            c,
            attempt,
            cri_spec::ContainerInputs {
                env: built.env,
                command: built.command,
                args: built.args,
                mounts,
                image: c.image.clone().unwrap_or_default(),
                mem_capacity: self.ctx.mem_capacity,
            },
        );
        let mut rt = self.ctx.cri.rt.clone();
        let id = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sb.id.clone(),
                config: Some(cfg),
                sandbox_config: Some(cri_spec::sandbox(
                    pod,
                    &self.ctx.opts,
                    sb.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
                )),
            })
            .await
            .map_err(|e| ("CreateContainerError".to_string(), e.message().to_string()))?
            .into_inner()
            .container_id;
        let t_create = t0.elapsed();
        let ev = |type_, reason: &str, msg: String| {
            self.ctx.events.pod(pod, Some(&c.name), type_, reason, msg)
        };
        ev(NORMAL, "Created", format!("Created container: {}", c.name));
        if let Err(e) = rt
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
        {
            let _ = rt
                .remove_container(RemoveContainerRequest { container_id: id })
                .await;
            return Err(("RunContainerError".into(), e.message().to_string()));
        }
        ev(NORMAL, "Started", format!("Started container {}", c.name));
        debug!(
            pod = %self.uid,
            container = %c.name,
            at_ms = self.born.elapsed().as_millis() as u64,
            image_ms = t_image.as_millis() as u64,
            env_volumes_ms = (t_prep - t_image).as_millis() as u64,
            create_ms = (t_create - t_prep).as_millis() as u64,
            start_ms = (t0.elapsed() - t_create).as_millis() as u64,
            "container started"
        );
        if let Some(h) = c
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
            .and_then(hook_action)
        {
            let ip = s
                .pod_ips
                .first()
                .cloned()
                .unwrap_or_else(|| self.ctx.host_ip.clone());
            if let Err(e) = probe::run(
                &self.ctx.cri,
                c,
                &id,
                &ip,
                h,
                Duration::from_secs(grace_of(pod).max(30) as u64),
            )
            .await
            {
                warn!(pod = %self.uid, container = %c.name, "PostStartHook failed: {e}");
                ev(
                    WARNING,
                    "FailedPostStartHook",
                    format!("PostStartHook failed: {e}"),
                );
                let _ = rt
                    .stop_container(StopContainerRequest {
                        container_id: id,
                        timeout: grace_of(pod),
                    })
                    .await;
                return Err(("PostStartHookError".into(), e));
            }
        }
        self.started.push((c.name.clone(), id));
        Ok(())
    }

    async fn write_status(&mut self, pod: &Pod, s: &Snapshot, sandbox_err: Option<String>) {
        let spec = pod.spec.clone().unwrap_or_default();
        let host_net = cri_spec::host_network(pod);
        let pod_ips = if host_net && s.sandbox.is_some() {
            vec![self.ctx.host_ip.clone()]
        } else {
            s.pod_ips.clone()
        };
        let policy = restart_policy(pod).to_string();
        let mut inits_done = true;
        let mut init_failed = false;
        let runtime = self.ctx.runtime.clone();
        let mk = |c: &KContainer,
                  crt: Option<&CRt>,
                  sandbox_err: &Option<String>,
                  pending_init: bool|
         -> Row {
            let latest = s.latest(&c.name).cloned();
            let prev = s.previous(&c.name).cloned();
            let restarts = latest
                .as_ref()
                .and_then(|l| l.metadata.as_ref())
                .map(|m| m.attempt)
                .unwrap_or(0);
            let running = latest.as_ref().is_some_and(is_running);
            let res = crt
                .and_then(|c| c.probes.as_ref())
                .filter(|(id, _)| latest.as_ref().is_some_and(|l| &l.id == id))
                .map(|(_, p)| p.get());
            let started = running && res.as_ref().is_none_or(|r| r.started);
            let ready = started && res.as_ref().is_none_or(|r| r.ready);
            let mut waiting = crt.and_then(|c| c.waiting.clone());
            if latest.as_ref().is_some_and(is_exited)
                && waiting
                    .as_ref()
                    .is_some_and(|(r, _)| r != "CrashLoopBackOff")
            {
                waiting = None;
            }
            if latest.is_none() && waiting.is_none() {
                if pending_init {
                    waiting = Some(("PodInitializing".into(), String::new()));
                } else if let Some(e) = sandbox_err {
                    waiting = Some(("ContainerCreating".into(), e.clone()));
                }
            }
            (latest, prev, restarts, ready, started, waiting)
        };
        let mut init_rows = Vec::new();
        for ic in spec.init_containers.iter().flatten() {
            let sidecar = ic.restart_policy.as_deref() == Some("Always");
            let row = mk(ic, self.cs.get(&ic.name), &sandbox_err, false);
            let done = match &row.0 {
                Some(l) if sidecar => is_running(l) && row.4,
                Some(l) => is_exited(l) && l.exit_code == 0,
                None => false,
            };
            if let Some(l) = &row.0
                && is_exited(l)
                && l.exit_code != 0
                && policy == "Never"
                && !sidecar
            {
                init_failed = true;
            }
            let was_done = inits_done;
            if !done {
                inits_done = false;
            }
            // A later init container that never ran is simply waiting.
            let row = if !was_done && row.0.is_none() {
                (
                    None,
                    None,
                    0,
                    false,
                    false,
                    row.5.or(Some(("PodInitializing".into(), String::new()))),
                )
            } else {
                row
            };
            init_rows.push((ic, row));
        }
        let mut rows = Vec::new();
        for c in &spec.containers {
            rows.push((c, mk(c, self.cs.get(&c.name), &sandbox_err, !inits_done)));
        }
        let view = PodView {
            init: init_rows
                .iter()
                .map(|(c, r)| CState {
                    name: &c.name,
                    image: c.image.as_deref().unwrap_or_default(),
                    latest: r.0.as_ref(),
                    previous: r.1.as_ref(),
                    restart_count: r.2,
                    ready: r.3,
                    started: r.4,
                    waiting: r.5.clone(),
                    runtime: &runtime,
                })
                .collect(),
            containers: rows
                .iter()
                .map(|(c, r)| CState {
                    name: &c.name,
                    image: c.image.as_deref().unwrap_or_default(),
                    latest: r.0.as_ref(),
                    previous: r.1.as_ref(),
                    restart_count: r.2,
                    ready: r.3,
                    started: r.4,
                    waiting: r.5.clone(),
                    runtime: &runtime,
                })
                .collect(),
            sandbox_ready: s.sandbox.is_some(),
            pod_ips,
            host_ip: &self.ctx.host_ip,
            start_time: self.start_time.as_deref().unwrap_or_default(),
            init_failed,
        };
        let mut phase = status::phase(pod, &view, inits_done);
        if self.terminal {
            // The final phase stays: the one this worker wrote (the pod object it holds
            // may not show that write yet — a runtime event can wake the worker first,
            // and a lagging `Running` must not turn a Failed pod into Succeeded), else
            // the one the API has.
            let written = self
                .last_status
                .as_ref()
                .and_then(|s| s.get("phase"))
                .and_then(|p| p.as_str());
            let known = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            phase = match written.or(known) {
                Some("Failed") => "Failed",
                Some("Succeeded") => "Succeeded",
                _ => phase,
            };
        }
        let st = status::build(pod, self.last_status.as_ref(), &view, phase, inits_done);
        drop(view);
        if phase == "Succeeded" || phase == "Failed" {
            if !self.terminal {
                info!(pod = %self.uid, phase, "pod finished");
            }
            self.terminal = true;
            self.cs.values_mut().for_each(|c| c.probes = None);
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
        }
        if self.last_status.as_ref() == Some(&st) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let name = pod.metadata.name.clone().unwrap_or_default();
        let t = Instant::now();
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": st})),
            )
            .await
        {
            Ok(_) => {
                debug!(pod = %self.uid, at_ms = self.born.elapsed().as_millis() as u64, took_ms = t.elapsed().as_millis() as u64, phase, "status written");
                self.last_status = Some(st)
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => warn!(pod = %name, "status update: {e}"),
        }
    }

    /// preStop hooks, then StopContainer with what is left of the grace period, for
    /// every container at once; then the sandbox.
    async fn terminate(&mut self, pod: Option<&Pod>, grace: i64) {
        self.cs.values_mut().for_each(|c| c.probes = None);
        let mut rt = self.ctx.cri.rt.clone();
        let sel = HashMap::from([(POD_UID.to_string(), self.uid.clone())]);
        let running = rt
            .list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    label_selector: sel.clone(),
                    state: Some(ContainerStateValue {
                        state: ContainerState::ContainerRunning as i32,
                    }),
                    ..Default::default()
                }),
            })
            .await
            .map(|r| r.into_inner().containers)
            .unwrap_or_default();
        let started = Instant::now();
        let ctx = self.ctx.clone();
        let spec = pod.and_then(|p| p.spec.clone()).unwrap_or_default();
        let ip = pod
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_else(|| self.ctx.host_ip.clone());
        let jobs = running.into_iter().map(|c| {
            let ctx = ctx.clone();
            let name = c.labels.get(CONTAINER_NAME).cloned().unwrap_or_default();
            let kc = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .find(|k| k.name == name)
                .cloned();
            let ip = ip.clone();
            if let Some(p) = pod {
                ctx.events.pod(
                    p,
                    Some(&name),
                    NORMAL,
                    "Killing",
                    format!("Stopping container {name}"),
                );
            }
            let report = pod.map(|p| (Arc::new(p.clone()), ctx.events.clone()));
            async move {
                if let Some(kc) = &kc
                    && let Some(h) = kc
                        .lifecycle
                        .as_ref()
                        .and_then(|l| l.pre_stop.as_ref())
                        .and_then(hook_action)
                {
                    let budget = Duration::from_secs(grace.max(1) as u64);
                    match tokio::time::timeout(
                        budget,
                        probe::run(&ctx.cri, kc, &c.id, &ip, h, budget),
                    )
                    .await
                    {
                        Ok(Err(e)) => {
                            warn!(container = %name, "PreStopHook failed: {e}");
                            if let Some((p, rec)) = &report {
                                rec.pod(
                                    p,
                                    Some(&name),
                                    WARNING,
                                    "FailedPreStopHook",
                                    format!("PreStopHook failed: {e}"),
                                );
                            }
                        }
                        Err(_) => {
                            warn!(container = %name, "PreStopHook did not finish in {grace}s")
                        }
                        Ok(Ok(())) => {}
                    }
                }
                let left = (grace - started.elapsed().as_secs() as i64).max(MIN_GRACE);
                let _ = ctx
                    .cri
                    .rt
                    .clone()
                    .stop_container(StopContainerRequest {
                        container_id: c.id.clone(),
                        timeout: left,
                    })
                    .await;
            }
        });
        futures::future::join_all(jobs).await;
        if let Ok(r) = rt
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: Some(PodSandboxFilter {
                    label_selector: sel,
                    ..Default::default()
                }),
            })
            .await
        {
            for sb in r.into_inner().items {
                let _ = rt
                    .stop_pod_sandbox(StopPodSandboxRequest {
                        pod_sandbox_id: sb.id,
                    })
                    .await;
            }
        }
    }

    /// Removes the pod's sandboxes, containers, volumes, logs and cgroup.
    async fn cleanup(&mut self) {
        cleanup_pod(&self.ctx, &self.uid, None).await;
    }

    /// Deletes the Pod object once everything is stopped (grace 0, only this uid).
    async fn delete_object(&self, pod: &Pod) -> bool {
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api
            .delete(pod.metadata.name.as_deref().unwrap_or_default(), &dp)
            .await
        {
            Ok(_) => true,
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => true,
            Err(e) => {
                warn!(pod = %self.uid, "delete: {e}");
                false
            }
        }
    }
}

/// Everything the agent and the runtime hold for pod `uid`, gone. `log_dir` is removed
/// when known (the pod object may be gone).
pub async fn cleanup_pod(ctx: &Ctx, uid: &str, log_dir: Option<std::path::PathBuf>) {
    let mut rt = ctx.cri.rt.clone();
    let sel = HashMap::from([(POD_UID.to_string(), uid.to_string())]);
    let mut cgroup_parents = Vec::new();
    if let Ok(r) = rt
        .list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                label_selector: sel,
                ..Default::default()
            }),
        })
        .await
    {
        for sb in r.into_inner().items {
            let _ = rt
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: sb.id.clone(),
                })
                .await;
            if let Err(e) = rt
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: sb.id.clone(),
                })
                .await
            {
                warn!(pod = %uid, "RemovePodSandbox {}: {}", sb.id, e.message());
            }
        }
    }
    for qos in ["", "burstable/", "besteffort/"] {
        cgroup_parents.push(format!("/hull-kubepods/{qos}pod{uid}"));
    }
    for p in cgroup_parents {
        cgroups::remove(&p);
    }
    if let Err(e) = volumes::teardown(&ctx.opts.data_dir, uid) {
        warn!(pod = %uid, "volumes: {e}");
    }
    let logs = ctx.opts.data_dir.join("logs").join("pods");
    match log_dir {
        Some(d) => {
            let _ = std::fs::remove_dir_all(d);
        }
        None => {
            if let Ok(rd) = std::fs::read_dir(&logs) {
                for e in rd.flatten() {
                    if e.file_name()
                        .to_string_lossy()
                        .ends_with(&format!("_{uid}"))
                    {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
    }
}
