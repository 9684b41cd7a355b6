//! The pod manager: watches the pods bound to this node, runs one worker per pod,
//! wakes the workers whose containers stopped from the runtime's GetContainerEvents
//! (kubelet's Evented PLEG; a relist every 30 s as a safety net, every second when the
//! runtime has no event stream), and removes what belongs to no pod: sandboxes, pod
//! dirs and log dirs after the first pod list, empty pod cgroups by a periodic sweep.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_cri::v1::{
    ContainerEventType, GetEventsRequest, ListContainersRequest, ListPodSandboxRequest,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::cgroups;
use super::cri_spec::POD_UID;
use super::worker::{Ctx, Worker, cleanup_pod};

/// The relist period without an event stream (kubelet's generic PLEG).
const RELIST: Duration = Duration::from_secs(1);
/// The relist period while GetContainerEvents streams (a missed event costs at most this).
const RELIST_EVENTED: Duration = Duration::from_secs(30);
/// How long the set of pods must stay unchanged before freed memory goes back.
const SETTLE: Duration = Duration::from_secs(3);
/// How often pod cgroups are looked for that belong to no pod this agent knows (left
/// by a crash, or by pods removed while the agent was down). One is removed when two
/// sweeps in a row found it empty and unknown: another agent on the same machine may
/// be about to use a pod cgroup it has just made.
const CGROUP_SWEEP: Duration = Duration::from_secs(10);

/// Gives the allocator's free pages back to the kernel. glibc keeps what a burst of
/// pod starts or deletions freed in its per-thread arenas (the CRI's blocking threads
/// each get one): measured after 100 pods came and went, `hull up` held 229 MiB RSS,
/// 127 MiB after a trim. Returns whether anything was released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() -> bool {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() -> bool {
    false
}

struct Handle {
    tx: watch::Sender<Option<Arc<Pod>>>,
    wake: Arc<Notify>,
    task: JoinHandle<()>,
}

pub struct Manager {
    ctx: Arc<Ctx>,
    workers: HashMap<String, Handle>,
    /// CRI state at the last relist: object id → (state, pod uid).
    seen: HashMap<String, (i32, String)>,
    cleaning: HashMap<String, JoinHandle<()>>,
    /// When the set of workers last changed, while memory has not been released since.
    changed: Option<std::time::Instant>,
    /// Pod UIDs whose cgroups the last sweep found empty and unknown; `None` until the
    /// first pod list is in (before that every pod is unknown).
    cgroup_suspects: Option<HashSet<String>>,
}

impl Manager {
    pub fn new(ctx: Arc<Ctx>) -> Manager {
        Manager {
            ctx,
            workers: HashMap::new(),
            seen: HashMap::new(),
            cleaning: HashMap::new(),
            changed: None,
            cgroup_suspects: None,
        }
    }

    fn upsert(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let pod = Arc::new(pod);
        if let Some(h) = self.workers.get(&uid)
            && !h.task.is_finished()
        {
            let _ = h.tx.send(Some(pod));
            return;
        }
        if self.workers.contains_key(&uid) {
            // Its worker finished (it deleted the pod); a late event changes nothing.
            return;
        }
        let (tx, rx) = watch::channel(Some(pod));
        let w = Worker::new(self.ctx.clone(), uid.clone(), rx);
        let wake = w.wake.clone();
        let task = tokio::spawn(w.run());
        self.workers.insert(uid, Handle { tx, wake, task });
        self.changed = Some(std::time::Instant::now());
    }

    fn gone(&mut self, uid: &str) {
        if let Some(h) = self.workers.get(uid) {
            let _ = h.tx.send(None);
        }
    }

    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let api: Api<Pod> = Api::all(self.ctx.client.clone());
        let cfg = watcher::Config::default()
            .fields(&format!("spec.nodeName={}", self.ctx.opts.node_name));
        let mut stream = watcher(api, cfg).boxed();
        let mut relist = tokio::time::interval(RELIST);
        relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (ev_tx, ev_rx) = mpsc::channel::<Runtime>(1024);
        let mut ev_rx = Some(ev_rx);
        let events = tokio::spawn(container_events(self.ctx.cri.rt.clone(), ev_tx));
        let mut evented = false;
        let mut listing: Option<HashSet<String>> = None;
        let mut sweep = tokio::time::interval(CGROUP_SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                ev = stream.next() => match ev {
                    Some(Ok(watcher::Event::Apply(p))) => self.upsert(p),
                    Some(Ok(watcher::Event::Delete(p))) => {
                        if let Some(uid) = p.metadata.uid.as_deref() { self.gone(uid) }
                    }
                    Some(Ok(watcher::Event::Init)) => listing = Some(HashSet::new()),
                    Some(Ok(watcher::Event::InitApply(p))) => {
                        if let (Some(l), Some(uid)) = (listing.as_mut(), p.metadata.uid.clone()) { l.insert(uid); }
                        self.upsert(p);
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        if let Some(live) = listing.take() {
                            let stale: Vec<String> = self.workers.keys().filter(|u| !live.contains(*u)).cloned().collect();
                            for u in stale { self.gone(&u); }
                            self.orphans(&live).await;
                            if self.cgroup_suspects.is_none() {
                                self.cgroup_suspects = Some(HashSet::new());
                                sweep.reset_immediately();
                            }
                        }
                    }
                    Some(Err(e)) => {
                        warn!("pod watch: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    None => break,
                },
                _ = sweep.tick() => self.sweep_cgroups().await,
                ev = next_event(&mut ev_rx) => match ev {
                    Some(Runtime::Changed(uid)) => {
                        if let Some(h) = self.workers.get(&uid) {
                            h.wake.notify_one();
                        }
                    }
                    // The stream is (re)connected: relisting once catches what passed
                    // meanwhile, then only as a safety net.
                    Some(Runtime::Up) => {
                        if !evented {
                            info!("container events stream up: relisting every {}s", RELIST_EVENTED.as_secs());
                        }
                        evented = true;
                        relist = tokio::time::interval(RELIST_EVENTED);
                        relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                    // No event stream (the runtime does not implement it, or it broke):
                    // the per-second relist again.
                    Some(Runtime::Down) | None => {
                        if evented {
                            warn!("container events stream gone: relisting every second");
                        }
                        evented = false;
                        relist = tokio::time::interval(RELIST);
                        relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        if ev.is_none() {
                            ev_rx = None;
                        }
                    }
                },
                _ = relist.tick() => {
                    self.relist().await;
                    if self.changed.is_some_and(|t| t.elapsed() >= SETTLE) {
                        self.changed = None;
                        let t = std::time::Instant::now();
                        let released = tokio::task::spawn_blocking(release_free_memory).await;
                        debug!(?released, took_us = t.elapsed().as_micros() as u64, "released free memory");
                    }
                }
            }
            let before = self.workers.len() + self.cleaning.len();
            self.workers.retain(|_, h| !h.task.is_finished());
            self.cleaning.retain(|_, t| !t.is_finished());
            if self.workers.len() + self.cleaning.len() != before {
                self.changed = Some(std::time::Instant::now());
            }
        }
        events.abort();
        for (_, h) in self.workers.drain() {
            h.task.abort();
        }
        for (_, t) in self.cleaning.drain() {
            t.abort();
        }
    }

    /// Wakes the worker of every pod whose sandboxes or containers changed state.
    async fn relist(&mut self) {
        let mut rt = self.ctx.cri.rt.clone();
        let mut now: HashMap<String, (i32, String)> = HashMap::new();
        if let Ok(r) = rt.list_containers(ListContainersRequest::default()).await {
            for c in r.into_inner().containers {
                let uid = c.labels.get(POD_UID).cloned().unwrap_or_default();
                now.insert(c.id, (c.state, uid));
            }
        }
        if let Ok(r) = rt.list_pod_sandbox(ListPodSandboxRequest::default()).await {
            for s in r.into_inner().items {
                let uid = s.labels.get(POD_UID).cloned().unwrap_or_default();
                now.insert(s.id, (s.state + 100, uid));
            }
        }
        let mut wake = HashSet::new();
        for (id, (st, uid)) in &now {
            if self.seen.get(id).is_none_or(|(s, _)| s != st) {
                wake.insert(uid.clone());
            }
        }
        for (id, (_, uid)) in &self.seen {
            if !now.contains_key(id) {
                wake.insert(uid.clone());
            }
        }
        self.seen = now;
        for uid in wake {
            if let Some(h) = self.workers.get(&uid) {
                h.wake.notify_one();
            }
        }
    }

    /// Removes pod cgroups of pods this agent does not know (no worker, no cleanup
    /// under way) once two sweeps in a row found them empty. Cgroups with processes
    /// are left: their pods' sandboxes are the runtime's to stop.
    async fn sweep_cgroups(&mut self) {
        let Some(suspects) = self.cgroup_suspects.take() else {
            return;
        };
        let known: HashSet<String> = self
            .workers
            .keys()
            .chain(self.cleaning.keys())
            .cloned()
            .collect();
        let r = tokio::task::spawn_blocking(move || {
            let mut next = HashSet::new();
            let mut removed = Vec::new();
            for (uid, rels) in cgroups::pods() {
                if known.contains(&uid) || !rels.iter().all(|r| cgroups::is_empty(r)) {
                    continue;
                }
                if suspects.contains(&uid) {
                    for r in &rels {
                        cgroups::remove(r);
                    }
                    removed.push(uid);
                } else {
                    next.insert(uid);
                }
            }
            (next, removed)
        })
        .await;
        match r {
            Ok((next, removed)) => {
                if !removed.is_empty() {
                    info!(
                        pods = removed.len(),
                        "removed the cgroups of pods this node does not know"
                    );
                    debug!(?removed, "orphaned pod cgroups removed");
                }
                self.cgroup_suspects = Some(next);
            }
            Err(e) => {
                warn!("cgroup sweep: {e}");
                self.cgroup_suspects = Some(HashSet::new());
            }
        }
    }

    /// Sandboxes and pod dirs of pods the API no longer has (deleted while the agent
    /// was down) are torn down.
    async fn orphans(&mut self, live: &HashSet<String>) {
        let mut uids: HashSet<String> = HashSet::new();
        if let Ok(r) = self
            .ctx
            .cri
            .rt
            .clone()
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await
        {
            for s in r.into_inner().items {
                if let Some(u) = s.labels.get(POD_UID) {
                    uids.insert(u.clone());
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.ctx.opts.data_dir.join("pods")) {
            for e in rd.flatten() {
                uids.insert(e.file_name().to_string_lossy().into_owned());
            }
        }
        // Log dirs are `<namespace>_<name>_<uid>`.
        if let Ok(rd) = std::fs::read_dir(self.ctx.opts.data_dir.join("logs").join("pods")) {
            for e in rd.flatten() {
                if let Some((_, u)) = e.file_name().to_string_lossy().rsplit_once('_') {
                    uids.insert(u.to_string());
                }
            }
        }
        for u in uids {
            if u.is_empty()
                || live.contains(&u)
                || self.workers.contains_key(&u)
                || self.cleaning.contains_key(&u)
            {
                continue;
            }
            info!(pod = %u, "removing an orphaned pod (no longer in the API)");
            let ctx = self.ctx.clone();
            let uid = u.clone();
            self.cleaning.insert(
                u,
                tokio::spawn(async move { cleanup_pod(&ctx, &uid, None).await }),
            );
        }
    }
}

/// The next note from the event stream's task; never, once that task is gone.
async fn next_event(rx: &mut Option<mpsc::Receiver<Runtime>>) -> Option<Runtime> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// What the container event stream tells the manager.
enum Runtime {
    /// The stream is (re)opened.
    Up,
    /// The stream ended; it is retried.
    Down,
    /// A container or sandbox of this pod UID stopped or was removed.
    Changed(String),
}

/// Follows the runtime's GetContainerEvents and sends the pod UID of every container or
/// sandbox that stopped or was removed (what a worker did not do itself: creations and
/// starts are its own steps, whose results it reads from the calls). The sender is
/// dropped when the runtime does not implement it; a broken stream is reopened after
/// a second.
async fn container_events(
    mut rt: k8s_cri::v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    tx: mpsc::Sender<Runtime>,
) {
    loop {
        let mut stream = match rt.get_container_events(GetEventsRequest {}).await {
            Ok(r) => r.into_inner(),
            Err(e) if e.code() == tonic::Code::Unimplemented => {
                info!("the runtime has no GetContainerEvents: relisting every second");
                return;
            }
            Err(e) => {
                debug!("GetContainerEvents: {}", e.message());
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if tx.send(Runtime::Up).await.is_err() {
            return;
        }
        while let Some(Ok(ev)) = stream.next().await {
            let kind = ev.container_event_type;
            if kind != ContainerEventType::ContainerStoppedEvent as i32
                && kind != ContainerEventType::ContainerDeletedEvent as i32
            {
                continue;
            }
            let uid = ev.pod_sandbox_status.as_ref().and_then(|s| {
                s.metadata
                    .as_ref()
                    .map(|m| m.uid.clone())
                    .filter(|u| !u.is_empty())
                    .or_else(|| s.labels.get(POD_UID).cloned())
            });
            if let Some(uid) = uid
                && tx.send(Runtime::Changed(uid)).await.is_err()
            {
                return;
            }
        }
        // The stream ended (runtime restarted): relist every second until it is back.
        if tx.send(Runtime::Down).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
