//! Deletion: preStop hooks, StopContainer within the grace period, the sandbox, then
//! everything the pod held (volumes, logs, cgroups) and finally the Pod object.

use super::*;

impl Worker {
    /// preStop hooks, then StopContainer with what is left of the grace period, for
    /// every container at once; then the sandbox.
    pub(super) async fn terminate(&mut self, pod: Option<&Pod>, grace: i64) {
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
    pub(super) async fn cleanup(&mut self) {
        cleanup_pod(&self.ctx, &self.uid, None).await;
    }

    /// Deletes the Pod object once everything is stopped (grace 0, only this uid).
    pub(super) async fn delete_object(&self, pod: &Pod) -> bool {
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
