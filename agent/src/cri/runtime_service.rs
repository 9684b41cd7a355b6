//! `runtime.v1.RuntimeService`: each call runs the blocking work (records, kernel,
//! child processes) on tokio's blocking pool; mutations hold their pod's lock
//! (`locks`), so two calls never race on one sandbox's records while pods proceed in
//! parallel.

use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hull_runtime::image::ImageStore;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use super::config::Config;
use super::error::{CriError, Result};
use super::events::{Events, Kind};
use super::locks::PodLocks;
use super::stats::{container_stats, sandbox_stats};
use super::{container, exec, network, records, sandbox, streaming};

/// Kept here for `image_service` (the image filesystem's usage).
pub use super::stats::dir_usage;

pub const RUNTIME_NAME: &str = "hull";
pub const API_VERSION: &str = "v1";

#[derive(Clone)]
pub struct Cri {
    pub cfg: Arc<Config>,
    pub locks: Arc<PodLocks>,
    pub images: Arc<RwLock<ImageStore>>,
    pub streaming: Arc<streaming::Streaming>,
    pub events: Arc<Events>,
}

/// Which pod's lock a mutation takes.
pub enum Key {
    /// A new sandbox: nothing else can know its id yet.
    New,
    Sandbox(String),
    /// The lock of the container's sandbox.
    Container(String),
}

/// Waits (without a thread) until the container's monitor has recorded its exit, or
/// `timeout` has passed. The exit file is looked for every 10 ms at first, backing off
/// to every 200 ms, so a long grace period costs little.
async fn wait_exit(cfg: &Config, id: &str, timeout: Duration) -> bool {
    let t = Instant::now();
    let mut step = Duration::from_millis(10);
    loop {
        if container::exit_record(cfg, id).is_some() {
            return true;
        }
        let Some(left) = timeout.checked_sub(t.elapsed()) else {
            return false;
        };
        tokio::time::sleep(step.min(left)).await;
        step = (step * 2).min(Duration::from_millis(200));
    }
}

impl Cri {
    /// Runs `f` on the blocking pool holding the lock of the pod `key` names.
    pub async fn locked<T: Send + 'static>(
        &self,
        op: &'static str,
        key: Key,
        f: impl FnOnce(&Cri) -> Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let me = self.clone();
        let t = Instant::now();
        tokio::task::spawn_blocking(move || {
            // An id that does not resolve locks as given: `f` then says NotFound
            // (or succeeds, for the idempotent removals).
            let pod = match key {
                Key::New => None,
                Key::Sandbox(id) => Some(sandbox::load(&me.cfg, &id).map(|r| r.id).unwrap_or(id)),
                Key::Container(id) => Some(
                    container::load(&me.cfg, &id)
                        .map(|r| r.sandbox_id)
                        .unwrap_or(id),
                ),
            };
            match pod {
                Some(p) => me.locks.with(&p, || {
                    let waited = t.elapsed();
                    let r = f(&me);
                    tracing::debug!(
                        op,
                        waited_ms = waited.as_millis() as u64,
                        took_ms = t.elapsed().as_millis() as u64,
                        "CRI call"
                    );
                    r
                }),
                None => {
                    let r = f(&me);
                    tracing::debug!(op, took_ms = t.elapsed().as_millis() as u64, "CRI call");
                    r
                }
            }
        })
        .await
        .map_err(|e| Status::internal(format!("task: {e}")))?
        .map_err(Status::from)
    }

    /// Runs `f` on the blocking pool without a lock (reads).
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Cri) -> Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| Status::internal(format!("task: {e}")))?
            .map_err(Status::from)
    }
}

fn ok<T>(t: T) -> Result<Response<T>, Status> {
    Ok(Response::new(t))
}

type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ContainerEventResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeService for Cri {
    async fn version(
        &self,
        _r: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        ok(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: API_VERSION.into(),
        })
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        let c = r
            .into_inner()
            .config
            .ok_or_else(|| Status::invalid_argument("config: required"))?;
        let id = self
            .locked("RunPodSandbox", Key::New, move |s| sandbox::run(&s.cfg, c))
            .await?;
        self.events.sandbox(Kind::Created, &id);
        self.events.sandbox(Kind::Started, &id);
        ok(RunPodSandboxResponse { pod_sandbox_id: id })
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        let id = r.into_inner().pod_sandbox_id;
        self.locked("StopPodSandbox", Key::Sandbox(id.clone()), move |s| {
            sandbox::stop(&s.cfg, &id)?;
            s.events.sandbox(Kind::Stopped, &id);
            Ok(())
        })
        .await?;
        ok(StopPodSandboxResponse {})
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        let id = r.into_inner().pod_sandbox_id;
        self.locked("RemovePodSandbox", Key::Sandbox(id.clone()), move |s| {
            let known = sandbox::load(&s.cfg, &id).map(|r| r.id);
            sandbox::remove(&s.cfg, &id)?;
            if let Ok(id) = known {
                s.events.sandbox(Kind::Deleted, &id);
            }
            Ok(())
        })
        .await?;
        ok(RemovePodSandboxResponse {})
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        let id = r.into_inner().pod_sandbox_id;
        let st = self.read(move |s| sandbox::status(&s.cfg, &id)).await?;
        ok(PodSandboxStatusResponse {
            status: Some(st),
            timestamp: records::now_ns(),
            ..Default::default()
        })
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        let f = r.into_inner().filter;
        let items = self.read(move |s| Ok(sandbox::list(&s.cfg, f))).await?;
        ok(ListPodSandboxResponse { items })
    }

    async fn create_container(
        &self,
        r: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let r = r.into_inner();
        let c = r
            .config
            .ok_or_else(|| Status::invalid_argument("config: required"))?;
        let sid = r.pod_sandbox_id;
        let id = self
            .locked("CreateContainer", Key::Sandbox(sid.clone()), move |s| {
                let store = s
                    .images
                    .read()
                    .map_err(|_| CriError::Internal("image store lock poisoned".into()))?;
                let id = container::create(&s.cfg, &store, &sid, c)?;
                let pod = container::load(&s.cfg, &id)
                    .map(|r| r.sandbox_id)
                    .unwrap_or(sid);
                s.events.container(Kind::Created, &id, &pod);
                Ok(id)
            })
            .await?;
        ok(CreateContainerResponse { container_id: id })
    }

    async fn start_container(
        &self,
        r: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        let id = r.into_inner().container_id;
        self.locked("StartContainer", Key::Container(id.clone()), move |s| {
            container::start(&s.cfg, &id)?;
            if let Ok(r) = container::load(&s.cfg, &id) {
                s.events.container(Kind::Started, &r.id, &r.sandbox_id);
            }
            Ok(())
        })
        .await?;
        ok(StartContainerResponse {})
    }

    async fn stop_container(
        &self,
        r: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        let r = r.into_inner();
        // Not under the lock: a long grace period must not block other pods. The wait
        // is async: a blocking thread per waiting container made 300+ threads (and as
        // many malloc arenas) while 250 pods were deleted.
        let (id, timeout) = (r.container_id.clone(), r.timeout);
        let target = self
            .read(move |s| container::signal_stop(&s.cfg, &id, timeout <= 0))
            .await?;
        if let Some(rid) = target {
            let mut exited = timeout > 0
                && wait_exit(&self.cfg, &rid, Duration::from_secs(timeout as u64)).await;
            if !exited {
                if timeout > 0 {
                    let id = rid.clone();
                    self.read(move |s| container::signal_stop(&s.cfg, &id, true))
                        .await?;
                }
                exited = wait_exit(&self.cfg, &rid, Duration::from_secs(10)).await;
            }
            if !exited {
                let id = rid.clone();
                let runs = self
                    .read(move |s| container::signal_stop(&s.cfg, &id, true))
                    .await?;
                if runs.is_some() {
                    return Err(Status::internal(format!(
                        "container {rid} did not exit after SIGKILL"
                    )));
                }
            }
        }
        let id = r.container_id;
        self.read(move |s| {
            if let Ok(c) = container::load(&s.cfg, &id) {
                s.events.container(Kind::Stopped, &c.id, &c.sandbox_id);
            }
            Ok(())
        })
        .await?;
        ok(StopContainerResponse {})
    }

    async fn remove_container(
        &self,
        r: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        let id = r.into_inner().container_id;
        self.locked("RemoveContainer", Key::Container(id.clone()), move |s| {
            let known = container::load(&s.cfg, &id);
            container::remove(&s.cfg, &id)?;
            if let Ok(r) = known {
                s.events.container(Kind::Deleted, &r.id, &r.sandbox_id);
            }
            Ok(())
        })
        .await?;
        ok(RemoveContainerResponse {})
    }

    async fn list_containers(
        &self,
        r: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let f = r.into_inner().filter;
        let containers = self.read(move |s| Ok(container::list(&s.cfg, f))).await?;
        ok(ListContainersResponse { containers })
    }

    async fn container_status(
        &self,
        r: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let id = r.into_inner().container_id;
        let st = self.read(move |s| container::status(&s.cfg, &id)).await?;
        ok(ContainerStatusResponse {
            status: Some(st),
            ..Default::default()
        })
    }

    async fn update_container_resources(
        &self,
        r: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        let r = r.into_inner();
        let res = r.linux.unwrap_or_default();
        self.locked(
            "UpdateContainerResources",
            Key::Container(r.container_id.clone()),
            move |s| container::update_resources(&s.cfg, &r.container_id, &res),
        )
        .await?;
        ok(UpdateContainerResourcesResponse {})
    }

    async fn reopen_container_log(
        &self,
        r: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        let id = r.into_inner().container_id;
        self.read(move |s| container::reopen_log(&s.cfg, &id))
            .await?;
        ok(ReopenContainerLogResponse {})
    }

    async fn exec_sync(
        &self,
        r: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        let r = r.into_inner();
        let cid = r.container_id.clone();
        let rec = self.read(move |s| container::load(&s.cfg, &cid)).await?;
        let timeout = (r.timeout > 0).then(|| Duration::from_secs(r.timeout as u64));
        let (stdout, stderr, exit_code) =
            exec::run_sync(&self.cfg, &self.cfg.oci_root(), &rec.id, &r.cmd, timeout)
                .await
                .map_err(Status::from)?;
        ok(ExecSyncResponse {
            stdout,
            stderr,
            exit_code,
        })
    }

    async fn exec(&self, r: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        let r = r.into_inner();
        let cid = r.container_id.clone();
        let rec = self.read(move |s| container::load(&s.cfg, &cid)).await?;
        if r.cmd.is_empty() {
            return Err(Status::invalid_argument("cmd: must not be empty"));
        }
        if !(r.stdin || r.stdout || r.stderr) {
            return Err(Status::invalid_argument(
                "one of stdin, stdout, or stderr must be set",
            ));
        }
        let url = self.streaming.register(streaming::Pending::Exec {
            container_id: rec.id,
            cmd: r.cmd,
            tty: r.tty,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr && !r.tty,
        });
        ok(ExecResponse { url })
    }

    async fn attach(&self, r: Request<AttachRequest>) -> Result<Response<AttachResponse>, Status> {
        let r = r.into_inner();
        let cid = r.container_id.clone();
        let rec = self.read(move |s| container::load(&s.cfg, &cid)).await?;
        if !(r.stdin || r.stdout || r.stderr) {
            return Err(Status::invalid_argument(
                "one of stdin, stdout, or stderr must be set",
            ));
        }
        if r.stdin && !rec.config.stdin {
            return Err(Status::invalid_argument(format!(
                "stdin: container {} was not created with stdin",
                rec.id
            )));
        }
        let url = self.streaming.register(streaming::Pending::Attach {
            container_id: rec.id,
            tty: r.tty,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr && !r.tty,
        });
        ok(AttachResponse { url })
    }

    async fn port_forward(
        &self,
        r: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        let r = r.into_inner();
        let sid = r.pod_sandbox_id.clone();
        let sb = self.read(move |s| sandbox::load(&s.cfg, &sid)).await?;
        if let Some(p) = r.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(Status::invalid_argument(format!(
                "port: {p} is not a valid port"
            )));
        }
        let url = self.streaming.register(streaming::Pending::PortForward {
            sandbox_id: sb.id,
            ports: r.port,
        });
        ok(PortForwardResponse { url })
    }

    async fn container_stats(
        &self,
        r: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let id = r.into_inner().container_id;
        let stats = self
            .read(move |s| Ok(container_stats(&s.cfg, &container::load(&s.cfg, &id)?)))
            .await?;
        ok(ContainerStatsResponse { stats: Some(stats) })
    }

    async fn list_container_stats(
        &self,
        r: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        let f = r.into_inner().filter.unwrap_or_default();
        let stats = self
            .read(move |s| {
                let cf = ContainerFilter {
                    id: f.id,
                    pod_sandbox_id: f.pod_sandbox_id,
                    label_selector: f.label_selector,
                    state: None,
                };
                Ok(container::list(&s.cfg, Some(cf))
                    .into_iter()
                    .filter(|c| c.state == container::RUNNING)
                    .filter_map(|c| container::load(&s.cfg, &c.id).ok())
                    .map(|rec| container_stats(&s.cfg, &rec))
                    .collect())
            })
            .await?;
        ok(ListContainerStatsResponse { stats })
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        let id = r.into_inner().pod_sandbox_id;
        let stats = self.read(move |s| sandbox_stats(&s.cfg, &id)).await?;
        ok(PodSandboxStatsResponse { stats: Some(stats) })
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        let f = r.into_inner().filter.unwrap_or_default();
        let stats = self
            .read(move |s| {
                let pf = PodSandboxFilter {
                    id: f.id,
                    label_selector: f.label_selector,
                    state: Some(PodSandboxStateValue {
                        state: sandbox::READY,
                    }),
                };
                Ok(sandbox::list(&s.cfg, Some(pf))
                    .iter()
                    .filter_map(|p| sandbox_stats(&s.cfg, &p.id).ok())
                    .collect())
            })
            .await?;
        ok(ListPodSandboxStatsResponse { stats })
    }

    async fn update_runtime_config(
        &self,
        r: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        let cidr = r
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if !cidr.is_empty() {
            let cfg = self.cfg.clone();
            let c = cidr.clone();
            let changed = tokio::task::spawn_blocking(move || network::set_pod_subnet(&cfg, &c))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(Status::from)?;
            tracing::info!(pod_cidr = %cidr, changed, "UpdateRuntimeConfig: pod subnet of the default network");
        }
        ok(UpdateRuntimeConfigResponse {})
    }

    async fn status(&self, _r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let cfg = self.cfg.clone();
        let net = tokio::task::spawn_blocking(move || network::ready(&cfg))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut conds = vec![RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        }];
        conds.push(match net {
            Ok(()) => RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            Err(m) => RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: m,
            },
        });
        ok(StatusResponse {
            status: Some(RuntimeStatus { conditions: conds }),
            ..Default::default()
        })
    }

    async fn checkpoint_container(
        &self,
        _r: Request<CheckpointContainerRequest>,
    ) -> Result<Response<CheckpointContainerResponse>, Status> {
        Err(Status::unimplemented(
            "checkpointing is not supported by hull",
        ))
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        _r: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let mut events = self.events.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let ev = match events.recv().await {
                    Ok(ev) => Ok(ev),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "container events subscriber fell behind");
                        continue;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(ev).await.is_err() {
                    return; // the client went away
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_metric_descriptors(
        &self,
        _r: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        ok(ListMetricDescriptorsResponse::default())
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _r: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        ok(ListPodSandboxMetricsResponse::default())
    }

    async fn runtime_config(
        &self,
        _r: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        ok(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration { cgroup_driver: 0 }),
        })
    }
}
