//! `GetContainerEvents`: CONTAINER_CREATED / STARTED / STOPPED / DELETED for containers
//! and sandboxes, each with the pod's sandbox status and its containers' statuses, as
//! containerd sends them (what kubelet's Evented PLEG consumes).
//!
//! The CRI calls only queue a small note (kind, id, sandbox, time) and return; one
//! worker thread turns the notes into events in the order they were queued (reading
//! the statuses from disk and the kernel, and only while someone is subscribed) and
//! broadcasts them. The same thread notices containers that exit on their own: it keeps
//! the set of containers it saw start (and those running when the server started) and
//! looks for the monitor's `exit.json` of each, so an exit is reported once, whether a
//! StopContainer or the container itself ended it.

use std::collections::HashSet;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_cri::v1::{ContainerEventResponse, ContainerEventType, ContainerStatus};
use tokio::sync::broadcast;

use super::config::Config;
use super::records::now_ns;
use super::{container, sandbox};

/// How often the worker looks for containers that exited by themselves.
const EXIT_POLL: Duration = Duration::from_millis(250);
/// Events a slow subscriber may fall behind by before it misses some.
const BACKLOG: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Created,
    Started,
    Stopped,
    Deleted,
}

impl Kind {
    fn cri(self) -> ContainerEventType {
        match self {
            Kind::Created => ContainerEventType::ContainerCreatedEvent,
            Kind::Started => ContainerEventType::ContainerStartedEvent,
            Kind::Stopped => ContainerEventType::ContainerStoppedEvent,
            Kind::Deleted => ContainerEventType::ContainerDeletedEvent,
        }
    }
}

/// What a CRI call reports: `id` is a container's or (for pod events) the sandbox's.
struct Note {
    kind: Kind,
    id: String,
    sandbox_id: String,
    at: i64,
}

pub struct Events {
    notes: Mutex<mpsc::Sender<Note>>,
    tx: broadcast::Sender<ContainerEventResponse>,
}

impl Events {
    /// Starts the worker thread; it ends when the returned hub is dropped.
    pub fn start(cfg: Arc<Config>) -> Arc<Events> {
        let (notes, rx) = mpsc::channel();
        let (tx, _) = broadcast::channel(BACKLOG);
        let out = tx.clone();
        let spawned = std::thread::Builder::new()
            .name("cri-events".into())
            .spawn(move || Worker::new(cfg, out).run(rx));
        if let Err(e) = spawned {
            tracing::error!("cannot start the container events thread: {e}");
        }
        Arc::new(Events {
            notes: Mutex::new(notes),
            tx,
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ContainerEventResponse> {
        self.tx.subscribe()
    }

    /// A container event; `sandbox_id` is the container's pod.
    pub fn container(&self, kind: Kind, id: &str, sandbox_id: &str) {
        self.note(kind, id, sandbox_id);
    }

    /// A pod event (containerd reports sandboxes as containers with the sandbox id).
    pub fn sandbox(&self, kind: Kind, id: &str) {
        self.note(kind, id, id);
    }

    fn note(&self, kind: Kind, id: &str, sandbox_id: &str) {
        let n = Note {
            kind,
            id: id.to_owned(),
            sandbox_id: sandbox_id.to_owned(),
            at: now_ns(),
        };
        if let Ok(s) = self.notes.lock() {
            // The worker only goes away with the hub: nothing to report to then.
            let _ = s.send(n);
        }
    }
}

struct Worker {
    cfg: Arc<Config>,
    tx: broadcast::Sender<ContainerEventResponse>,
    /// Containers seen running whose STOPPED event is still due.
    running: HashSet<String>,
}

impl Worker {
    fn new(cfg: Arc<Config>, tx: broadcast::Sender<ContainerEventResponse>) -> Worker {
        let running = container::ids(&cfg)
            .into_iter()
            .filter(|id| {
                container::load(&cfg, id)
                    .is_ok_and(|r| container::state(&cfg, &r).0 == container::RUNNING)
            })
            .collect();
        Worker { cfg, tx, running }
    }

    fn run(mut self, rx: mpsc::Receiver<Note>) {
        let mut polled = Instant::now();
        loop {
            match rx.recv_timeout(EXIT_POLL) {
                Ok(n) => self.handle(n),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if polled.elapsed() >= EXIT_POLL {
                self.poll_exits();
                polled = Instant::now();
            }
        }
    }

    fn handle(&mut self, n: Note) {
        let pod = n.id == n.sandbox_id;
        match n.kind {
            Kind::Started if !pod => {
                self.running.insert(n.id.clone());
            }
            // Reported once: by StopContainer or by the exit poll, whichever is first.
            Kind::Stopped if !pod && !self.running.remove(&n.id) => return,
            Kind::Deleted if !pod && self.running.remove(&n.id) => {
                self.send(Kind::Stopped, &n.id, &n.sandbox_id, n.at);
            }
            _ => {}
        }
        self.send(n.kind, &n.id, &n.sandbox_id, n.at);
    }

    fn poll_exits(&mut self) {
        let exited: Vec<String> = self
            .running
            .iter()
            .filter(|id| container::exit_record(&self.cfg, id).is_some())
            .cloned()
            .collect();
        for id in exited {
            self.running.remove(&id);
            let Ok(rec) = container::load(&self.cfg, &id) else {
                continue;
            };
            let at = container::exit_record(&self.cfg, &id)
                .map(|x| x.finished_at)
                .filter(|t| *t > 0)
                .unwrap_or_else(now_ns);
            self.send(Kind::Stopped, &id, &rec.sandbox_id, at);
        }
        // A container removed without our hearing of it (another server instance on
        // the same data dir) has nothing left to report.
        let cfg = self.cfg.clone();
        self.running
            .retain(|id| container::dir(&cfg, id).join("container.json").exists());
    }

    fn send(&self, kind: Kind, id: &str, sandbox_id: &str, at: i64) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let pod_sandbox_status = sandbox::status(&self.cfg, sandbox_id).ok();
        let containers_statuses: Vec<ContainerStatus> =
            container::in_sandbox(&self.cfg, sandbox_id)
                .iter()
                .filter_map(|c| container::status(&self.cfg, c).ok())
                .collect();
        let _ = self.tx.send(ContainerEventResponse {
            container_id: id.to_owned(),
            container_event_type: kind.cri() as i32,
            created_at: at,
            pod_sandbox_status,
            containers_statuses,
        });
    }
}
