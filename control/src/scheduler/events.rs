//! What the scheduler writes besides bindings — `Scheduled` / `FailedScheduling` Events
//! (core/v1, so `kubectl get events` and `kubectl describe` show them, reporter
//! `default-scheduler`) and the `PodScheduled=False` condition — off the hot path: the
//! scheduling loop queues them and a writer sends a few at a time. Repeats of the same
//! FailedScheduling message bump the existing Event's `count`, as client-go's
//! aggregation does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::mpsc;

use super::cache::PodInfo;

pub const REPORTER: &str = "default-scheduler";
/// Writes queued beyond this are dropped (with a log line) rather than slowing binding.
const BACKLOG: usize = 20_000;
const CONCURRENCY: usize = 2;
/// How long an Event may be held back while bindings are being written.
const MAX_DEFER: std::time::Duration = std::time::Duration::from_secs(10);

pub enum Write {
    Scheduled {
        pod: Arc<PodInfo>,
        node: String,
    },
    FailedScheduling {
        pod: Arc<PodInfo>,
        message: String,
        condition: bool,
    },
}

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Write>,
}

impl Writer {
    /// Starts the writer task; it ends when every `Writer` is dropped. While `busy`
    /// says bindings are in flight, writes wait (up to [`MAX_DEFER`]): every write is a
    /// commit in the API server's store, and a binding matters more than its Event.
    pub fn spawn(client: kube::Client, busy: impl Fn() -> bool + Send + Sync + 'static) -> Writer {
        let busy = Arc::new(busy);
        let (tx, rx) = mpsc::channel(BACKLOG);
        let seen: Arc<Seen> = Arc::default();
        let instance = format!(
            "{REPORTER}-{}",
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "hull".into())
        );
        tokio::spawn(
            tokio_stream_from(rx).for_each_concurrent(CONCURRENCY, move |w| {
                let client = client.clone();
                let seen = seen.clone();
                let instance = instance.clone();
                let busy = busy.clone();
                async move {
                    let until = tokio::time::Instant::now() + MAX_DEFER;
                    while busy() && tokio::time::Instant::now() < until {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    write(&client, &seen, &instance, w).await
                }
            }),
        );
        Writer { tx }
    }

    pub fn send(&self, w: Write) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(w) {
            tracing::warn!("scheduler event backlog full: dropping an Event");
        }
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

type Seen = Mutex<HashMap<(String, String), (String, i32)>>;

async fn write(client: &kube::Client, seen: &Seen, instance: &str, w: Write) {
    let result = match w {
        Write::Scheduled { pod, node } => {
            if let Ok(mut s) = seen.lock() {
                s.retain(|(k, _), _| k != &pod.key);
            }
            let msg = format!("Successfully assigned {} to {node}", pod.key);
            create_event(
                client,
                instance,
                &pod,
                "Normal",
                "Scheduled",
                "Binding",
                &msg,
            )
            .await
            .map(|_| ())
        }
        Write::FailedScheduling {
            pod,
            message,
            condition,
        } => {
            if condition && let Err(e) = set_unschedulable(client, &pod, &message).await {
                tracing::debug!(pod = %pod.key, "PodScheduled condition: {e}");
            }
            failed_event(client, seen, instance, &pod, &message).await
        }
    };
    if let Err(e) = result {
        tracing::debug!("scheduler event: {e}");
    }
}

async fn failed_event(
    client: &kube::Client,
    seen: &Seen,
    instance: &str,
    pod: &PodInfo,
    message: &str,
) -> Result<(), kube::Error> {
    let key = (pod.key.clone(), message.to_string());
    let prior = seen.lock().ok().and_then(|s| s.get(&key).cloned());
    if let Some((name, count)) = prior {
        let api: Api<Event> = Api::namespaced(client.clone(), &pod.namespace);
        let patch = json!({"count": count + 1, "lastTimestamp": now()});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                if let Ok(mut s) = seen.lock() {
                    s.insert(key, (name, count + 1));
                }
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let name = create_event(
        client,
        instance,
        pod,
        "Warning",
        "FailedScheduling",
        "Scheduling",
        message,
    )
    .await?;
    if let Ok(mut s) = seen.lock() {
        if s.len() > 50_000 {
            s.clear();
        }
        s.insert(key, (name, 1));
    }
    Ok(())
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

async fn create_event(
    client: &kube::Client,
    instance: &str,
    pod: &PodInfo,
    type_: &str,
    reason: &str,
    action: &str,
    message: &str,
) -> Result<String, kube::Error> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("{}.{:x}", pod.name, nanos);
    let ts = now();
    let ev: Event = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": pod.namespace},
        "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": pod.namespace,
            "name": pod.name, "uid": pod.uid},
        "reason": reason,
        "message": message,
        "type": type_,
        "action": action,
        "source": {"component": REPORTER},
        "reportingComponent": REPORTER,
        "reportingInstance": instance,
        "firstTimestamp": ts,
        "lastTimestamp": ts,
        "count": 1,
    }))
    .map_err(kube::Error::SerdeError)?;
    let api: Api<Event> = Api::namespaced(client.clone(), &pod.namespace);
    api.create(&PostParams::default(), &ev).await?;
    Ok(name)
}

/// `PodScheduled=False`, reason `Unschedulable`, by strategic merge on `pods/status`
/// (conditions merge by `type`, so other conditions stay).
async fn set_unschedulable(
    client: &kube::Client,
    pod: &PodInfo,
    message: &str,
) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    let patch = json!({"status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": message, "lastProbeTime": null, "lastTransitionTime": now(),
    }]}});
    match api
        .patch_status(
            &pod.name,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
