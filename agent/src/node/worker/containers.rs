//! Making the pod's sandbox and converging its containers to the spec: init containers
//! in order, then the containers, started, restarted with kubelet's backoff, or killed
//! when their probes say so.

use super::*;

impl Worker {
    /// No live sandbox: kills what is left of old ones, then makes a new one while the
    /// volumes are prepared and the images looked up.
    pub(super) async fn make_sandbox(
        &mut self,
        pod: &Arc<Pod>,
        s: &mut Snapshot,
    ) -> Result<Step, String> {
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
        // kubelet's Events for both failures (folded into a count while they repeat).
        if let Err(e) = &vols {
            let msg = format!("MountVolume.SetUp failed: {e}");
            self.ctx.events.pod(pod, None, WARNING, "FailedMount", msg);
        }
        let id = match sandbox {
            Ok(r) => r.into_inner().pod_sandbox_id,
            Err(e) => {
                let msg = format!("Failed to create pod sandbox: {}", e.message());
                let ev = "FailedCreatePodSandBox";
                self.ctx.events.pod(pod, None, WARNING, ev, msg.clone());
                return Err(msg);
            }
        };
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
    pub(super) async fn converge(
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

    pub(super) fn ensure_probes(
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

    pub(super) fn drop_probes(&mut self, name: &str) {
        if let Some(c) = self.cs.get_mut(name) {
            c.probes = None;
        }
    }

    pub(super) async fn kill_if_unhealthy(&mut self, pod: &Pod, st: &ContainerStatus) -> bool {
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
    pub(super) async fn restart(
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

    pub(super) async fn start(
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
        let mut mounts = volumes::mounts(pod, c, &vols, &vars).map_err(cfg_err)?;
        let message_file =
            termination::host_path(&self.ctx.opts.data_dir, &self.uid, &c.name, attempt);
        if let Some(m) = termination::mount(c, &message_file).map_err(cfg_err)? {
            mounts.push(m);
        }
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
}
