//! Probes (liveness, readiness, startup) and lifecycle hook actions: exec through CRI
//! ExecSync; httpGet (HTTP/HTTPS), tcpSocket and grpc against the pod's IP
//! (`probe_net`), with Kubernetes' timing fields.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, GRPCAction, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::cri_client::Cri;
use super::probe_net;

/// One action: what a probe or a hook runs.
pub enum Action<'a> {
    Exec(&'a [String]),
    Http(&'a HTTPGetAction),
    Tcp(&'a TCPSocketAction),
    Grpc(&'a GRPCAction),
    Sleep(i64),
}

fn port_of(c: &Container, p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} is out of range")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .ok_or_else(|| format!("named port {name:?} not found in container {}", c.name))
        }
    }
}

pub async fn run(
    cri: &Cri,
    c: &Container,
    container_id: &str,
    pod_ip: &str,
    action: Action<'_>,
    timeout: Duration,
) -> Result<(), String> {
    match action {
        Action::Exec(cmd) => {
            let mut rt = cri.rt.clone();
            let r = rt
                .exec_sync(k8s_cri::v1::ExecSyncRequest {
                    container_id: container_id.to_string(),
                    cmd: cmd.to_vec(),
                    timeout: timeout.as_secs().max(1) as i64,
                })
                .await
                .map_err(|e| format!("exec {cmd:?}: {}", e.message()))?
                .into_inner();
            if r.exit_code == 0 {
                Ok(())
            } else {
                Err(format!(
                    "command {cmd:?} exited with {}: {}",
                    r.exit_code,
                    String::from_utf8_lossy(&r.stdout).trim()
                ))
            }
        }
        Action::Http(h) => {
            let host = h.host.as_deref().filter(|h| !h.is_empty());
            probe_net::http(host.unwrap_or(pod_ip), port_of(c, &h.port)?, h, timeout).await
        }
        Action::Tcp(t) => {
            let host = t.host.as_deref().filter(|h| !h.is_empty());
            probe_net::tcp(host.unwrap_or(pod_ip), port_of(c, &t.port)?, timeout).await
        }
        Action::Grpc(g) => probe_net::grpc(pod_ip, g, timeout).await,
        Action::Sleep(s) => {
            tokio::time::sleep(Duration::from_secs(s.max(0) as u64)).await;
            Ok(())
        }
    }
}

fn probe_action(p: &Probe) -> Option<Action<'_>> {
    if let Some(e) = &p.exec {
        return Some(Action::Exec(e.command.as_deref().unwrap_or_default()));
    }
    if let Some(h) = &p.http_get {
        return Some(Action::Http(h));
    }
    if let Some(t) = &p.tcp_socket {
        return Some(Action::Tcp(t));
    }
    p.grpc.as_ref().map(Action::Grpc)
}

/// What the probes of one container concluded so far.
#[derive(Debug, Clone)]
pub struct Results {
    pub ready: bool,
    pub started: bool,
    /// Set when liveness (or startup) failed failureThreshold times: restart it.
    pub kill: Option<String>,
}

/// The probe tasks of one running container; dropping it stops them.
pub struct Probes {
    pub results: Arc<Mutex<Results>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Probes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Probes {
    /// Starts the probes of `c` (container `id`); `ready_hint` seeds readiness when the
    /// agent re-adopts a container it had already reported ready.
    /// `unhealthy` hears each failed probe run ("Liveness probe failed: ...").
    pub fn start(
        cri: &Cri,
        c: &Container,
        id: &str,
        pod_ip: &str,
        ready_hint: bool,
        wake: Arc<Notify>,
        unhealthy: Unhealthy,
    ) -> Probes {
        let has_startup = c.startup_probe.as_ref().and_then(probe_action).is_some();
        let has_ready = c.readiness_probe.as_ref().and_then(probe_action).is_some();
        let results = Arc::new(Mutex::new(Results {
            ready: !has_ready || ready_hint,
            started: !has_startup || ready_hint,
            kill: None,
        }));
        let mut tasks = Vec::new();
        for (kind, p) in [
            (Kind::Startup, &c.startup_probe),
            (Kind::Liveness, &c.liveness_probe),
            (Kind::Readiness, &c.readiness_probe),
        ] {
            let Some(p) = p.clone() else { continue };
            if probe_action(&p).is_none() {
                continue;
            }
            let (cri, c, id, ip, res, wake, unhealthy) = (
                cri.clone(),
                c.clone(),
                id.to_string(),
                pod_ip.to_string(),
                results.clone(),
                wake.clone(),
                unhealthy.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let ctx = LoopCtx {
                    cri: &cri,
                    c: &c,
                    id: &id,
                    ip: &ip,
                    res: &res,
                    wake: &wake,
                    unhealthy: &unhealthy,
                };
                probe_loop(kind, &p, ctx).await;
            }));
        }
        Probes { results, tasks }
    }

    pub fn get(&self) -> Results {
        self.results.lock().map(|r| r.clone()).unwrap_or(Results {
            ready: false,
            started: false,
            kill: None,
        })
    }
}

/// Told the message of each failed probe run (kubelet's `Unhealthy` Event).
pub type Unhealthy = Arc<dyn Fn(String) + Send + Sync>;

struct LoopCtx<'a> {
    cri: &'a Cri,
    c: &'a Container,
    id: &'a str,
    ip: &'a str,
    res: &'a Mutex<Results>,
    wake: &'a Notify,
    unhealthy: &'a Unhealthy,
}

async fn probe_loop(kind: Kind, p: &Probe, x: LoopCtx<'_>) {
    let LoopCtx {
        cri,
        c,
        id,
        ip,
        res,
        wake,
        unhealthy,
    } = x;
    let Some(action_of) = Some(p) else { return };
    let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    let success_th = p.success_threshold.unwrap_or(1).max(1);
    let failure_th = p.failure_threshold.unwrap_or(3).max(1);
    tokio::time::sleep(Duration::from_secs(
        p.initial_delay_seconds.unwrap_or(0).max(0) as u64,
    ))
    .await;
    let (mut ok_run, mut fail_run) = (0, 0);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = res.lock().map(|r| r.started).unwrap_or(false);
        match kind {
            Kind::Startup if started => return,
            Kind::Liveness | Kind::Readiness if !started => continue,
            _ => {}
        }
        let Some(action) = probe_action(action_of) else {
            return;
        };
        let outcome = run(cri, c, id, ip, action, timeout).await;
        let mut changed = false;
        match &outcome {
            Ok(()) => {
                ok_run += 1;
                fail_run = 0;
            }
            Err(e) => {
                fail_run += 1;
                ok_run = 0;
                let what = match kind {
                    Kind::Startup => "Startup",
                    Kind::Liveness => "Liveness",
                    Kind::Readiness => "Readiness",
                };
                unhealthy(format!("{what} probe failed: {e}"));
            }
        }
        if let Ok(mut r) = res.lock() {
            match kind {
                Kind::Readiness => {
                    if ok_run >= success_th && !r.ready {
                        r.ready = true;
                        changed = true;
                    } else if fail_run >= failure_th && r.ready {
                        r.ready = false;
                        changed = true;
                    }
                }
                Kind::Startup => {
                    if ok_run >= 1 {
                        r.started = true;
                        changed = true;
                    } else if fail_run >= failure_th && r.kill.is_none() {
                        r.kill = Some(format!(
                            "Startup probe failed: {}",
                            outcome.as_ref().err().cloned().unwrap_or_default()
                        ));
                        changed = true;
                    }
                }
                Kind::Liveness => {
                    if fail_run >= failure_th && r.kill.is_none() {
                        r.kill = Some(format!(
                            "Liveness probe failed: {}",
                            outcome.as_ref().err().cloned().unwrap_or_default()
                        ));
                        changed = true;
                    }
                }
            }
        }
        if changed {
            wake.notify_one();
            if kind != Kind::Readiness && res.lock().map(|r| r.kill.is_some()).unwrap_or(false) {
                return;
            }
        }
    }
}
