//! The pod's status as kubelet writes it, through the status subresource (a merge
//! patch, sent only when it changed).

use super::*;

impl Worker {
    /// The CRI status of `c`, with the container's termination message (its file, or
    /// its log's tail) after the runtime's own message, as kubelet joins them.
    fn with_message(&self, c: &KContainer, st: &ContainerStatus) -> ContainerStatus {
        let mut st = st.clone();
        if is_exited(&st) {
            let attempt = st.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
            let file = termination::host_path(&self.ctx.opts.data_dir, &self.uid, &c.name, attempt);
            if let Some(m) = termination::message(c, &st, &file) {
                if !st.message.is_empty() {
                    st.message.push_str(": ");
                }
                st.message.push_str(&m);
            }
        }
        st
    }

    pub(super) async fn write_status(
        &mut self,
        pod: &Pod,
        s: &Snapshot,
        sandbox_err: Option<String>,
    ) {
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
            let latest = s.latest(&c.name).map(|l| self.with_message(c, l));
            let prev = s.previous(&c.name).map(|p| self.with_message(c, p));
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
}
