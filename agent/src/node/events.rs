//! Pod Events as kubelet records them (`Pulled`, `Created`, `Started`, `Killing`,
//! `BackOff`, `Unhealthy`, `Failed`, ...), shown by `kubectl describe pod` and
//! `kubectl events`.
//!
//! Recording never waits on the API server: events go through a bounded queue to one
//! writer task (a full queue drops them, as client-go's broadcaster does), so a pod's
//! start is not slowed by its own Events. Repeats (same pod, container, reason and
//! message) fold into one Event whose `count` grows, as client-go's correlator does.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::mpsc;
use tracing::debug;

const QUEUE: usize = 4096;
/// Folded Events remembered (per agent) before the oldest are forgotten.
const REMEMBER: usize = 8192;

pub const NORMAL: &str = "Normal";
pub const WARNING: &str = "Warning";

struct Ev {
    on: ObjectReference,
    type_: &'static str,
    reason: String,
    message: String,
}

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Ev>,
}

impl Recorder {
    /// Starts the writer; it ends when every `Recorder` is dropped.
    pub fn spawn(client: kube::Client, node: String) -> Recorder {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(client, node, rx));
        Recorder { tx }
    }

    /// An Event about `pod`, or about one of its containers (`container`: the field
    /// path kubelet uses, `spec.containers{name}`).
    pub fn pod(
        &self,
        pod: &Pod,
        container: Option<&str>,
        type_: &'static str,
        reason: &str,
        message: impl Into<String>,
    ) {
        let on = reference(pod, container);
        let ev = Ev {
            on,
            type_,
            reason: reason.to_string(),
            message: message.into(),
        };
        if self.tx.try_send(ev).is_err() {
            debug!(reason, "event queue full or closed: event dropped");
        }
    }
}

/// The involved object as kubelet names it: the pod, with a field path for a container
/// (init containers are `spec.initContainers{name}`).
pub fn reference(pod: &Pod, container: Option<&str>) -> ObjectReference {
    let field_path = container.map(|c| {
        let init = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|ics| ics.iter().any(|ic| ic.name == c));
        if init {
            format!("spec.initContainers{{{c}}}")
        } else {
            format!("spec.containers{{{c}}}")
        }
    });
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        field_path,
    }
}

/// (pod uid, field path, reason, message) → (namespace, event name, count).
type Folded = HashMap<(String, String, String, String), (String, String, i32)>;

async fn write_loop(client: kube::Client, node: String, mut rx: mpsc::Receiver<Ev>) {
    let mut seen: Folded = HashMap::new();
    while let Some(ev) = rx.recv().await {
        let ns = ev
            .on
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let key = (
            ev.on.uid.clone().unwrap_or_default(),
            ev.on.field_path.clone().unwrap_or_default(),
            ev.reason.clone(),
            ev.message.clone(),
        );
        let now = Timestamp::now();
        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
        if let Some((evns, name, count)) = seen.get(&key).cloned() {
            let patch = serde_json::json!({"count": count + 1, "lastTimestamp": Time(now)});
            if Api::<Event>::namespaced(client.clone(), &evns)
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                seen.insert(key, (evns, name, count + 1));
                continue;
            }
        }
        let name = format!(
            "{}.{:x}",
            ev.on.name.as_deref().unwrap_or("unknown"),
            now.as_nanosecond() as u64
        );
        let e = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ev.on,
            reason: Some(ev.reason),
            message: Some(ev.message),
            type_: Some(ev.type_.to_string()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            // As kubelet's (legacy) recorder: no eventTime. With one, a core/v1 Event
            // must also name an `action` (Kubernetes' validation, now the API server's).
            event_time: None,
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(node.clone()),
            }),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(node.clone()),
            action: None,
            related: None,
            series: None,
        };
        match api.create(&PostParams::default(), &e).await {
            Ok(_) => {
                if seen.len() >= REMEMBER {
                    seen.clear();
                }
                seen.insert(key, (ns, name, 1));
            }
            // The namespace is going away, or the API is down: Events are best effort.
            Err(err) => debug!("event {name}: {err}"),
        }
    }
}
