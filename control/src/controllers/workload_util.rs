//! What the workload controllers share: their error type, a clock tests can move,
//! core/v1 Events (what `kubectl describe` shows), controller ownerReferences with
//! adoption and release, label selectors, pod readiness and availability, and the
//! pod-template hash.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, MicroTime, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Controller};
use kube::{Resource, ResourceExt};
use serde_json::json;

/// Why a reconcile failed; the controller retries it with a backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API request failed: {0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The controllers' notion of "now": wall-clock time plus an offset that tests advance
/// (CronJob schedules, minReadySeconds, deadlines) instead of sleeping. Advancing it
/// wakes every controller that subscribed, so due work is done at once.
#[derive(Clone)]
pub struct Clock {
    offset_secs: Arc<AtomicI64>,
    ticks: tokio::sync::watch::Sender<i64>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock(+{}s)", self.offset_secs.load(Ordering::Relaxed))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            offset_secs: Arc::new(AtomicI64::new(0)),
            ticks: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Clock {
    pub fn now(&self) -> Timestamp {
        let off = self.offset_secs.load(Ordering::Relaxed);
        Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(off))
            .unwrap_or_else(|_| Timestamp::now())
    }

    /// Moves the clock forward (tests only need forward).
    pub fn advance(&self, by: Duration) {
        let secs = i64::try_from(by.as_secs()).unwrap_or(0);
        let total = self.offset_secs.fetch_add(secs, Ordering::Relaxed) + secs;
        self.ticks.send_replace(total);
    }

    /// A stream that yields each time the clock is advanced.
    pub fn advances(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
        tokio_stream_from_watch(self.ticks.subscribe())
    }
}

fn tokio_stream_from_watch(
    rx: tokio::sync::watch::Receiver<i64>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    })
}

/// Runs a built controller until dropped, logging failed reconciles.
pub async fn drive<K, F, Fut, C>(
    controller: Controller<K>,
    name: &'static str,
    reconcile: F,
    ctx: Arc<C>,
) where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    F: FnMut(Arc<K>, Arc<C>) -> Fut,
    Fut: std::future::Future<Output = Result<Action>> + Send + 'static,
    C: Send + Sync + 'static,
{
    controller
        .run(
            reconcile,
            |_obj, _err, _ctx| Action::requeue(Duration::from_secs(2)),
            ctx,
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(controller = name, "reconcile: {e}");
            }
        })
        .await;
}

/// Records core/v1 Events — the kind `kubectl describe` and `kubectl get events` read —
/// as `component` (e.g. "deployment-controller").
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    component: &'static str,
}

impl Recorder {
    pub fn new(client: kube::Client, component: &'static str) -> Self {
        Recorder { client, component }
    }

    /// Best effort: an Event that cannot be written must not fail the reconcile.
    pub async fn event<K>(&self, obj: &K, warning: bool, reason: &str, message: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let meta = obj.meta();
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let name = meta.name.clone().unwrap_or_default();
        let now = Timestamp::now();
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{name}.{:x}",
                    now.as_nanosecond() as u64 ^ rand::random::<u32>() as u64
                )),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(K::api_version(&()).into_owned()),
                kind: Some(K::kind(&()).into_owned()),
                name: Some(name),
                namespace: meta.namespace.clone(),
                uid: meta.uid.clone(),
                resource_version: meta.resource_version.clone(),
                ..Default::default()
            },
            reason: Some(reason.to_string()),
            message: Some(message),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
            source: Some(EventSource {
                component: Some(self.component.into()),
                host: None,
            }),
            reporting_component: Some(self.component.into()),
            reporting_instance: Some(self.component.into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            action: Some(reason.to_string()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            tracing::debug!(component = self.component, "event not recorded: {e}");
        }
    }
}

/// The ownerReference a controller puts on what it creates.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The controller ownerReference of an object, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

pub fn is_controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == uid)
}

/// A LabelSelector as kube-rs' matcher; an invalid one is a user error on the owner.
pub fn selector(sel: Option<&LabelSelector>, owner: &str) -> Result<Selector> {
    let sel = sel.cloned().unwrap_or_default();
    let s = Selector::try_from(sel)
        .map_err(|e| Error::Invalid(format!("{owner}: spec.selector: {e}")))?;
    if s.selects_all() {
        // Kubernetes refuses to let an empty selector adopt every pod in the namespace.
        return Err(Error::Invalid(format!(
            "{owner}: spec.selector: empty selector selects nothing"
        )));
    }
    Ok(s)
}

pub fn matches(sel: &Selector, labels: &BTreeMap<String, String>) -> bool {
    sel.matches(labels)
}

/// What a controller may claim: objects it controls, and orphans its selector matches.
/// Adopts matching orphans (unless the owner is being deleted) and releases owned objects
/// that no longer match, as Kubernetes' ControllerRefManager does. Returns what it owns.
pub async fn claim<K, O>(api: &Api<K>, owner: &O, sel: &Selector, objs: Vec<K>) -> Result<Vec<K>>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    O: Resource<DynamicType = ()>,
{
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let deleting = owner.meta().deletion_timestamp.is_some();
    let mut owned = Vec::new();
    for o in objs {
        let meta = o.meta();
        let labels = meta.labels.clone().unwrap_or_default();
        let matched = sel.matches(&labels);
        match controller_of(meta) {
            Some(r) if r.uid == uid => {
                if matched || deleting {
                    owned.push(o);
                } else {
                    release(api, &o, &uid).await?;
                }
            }
            Some(_) => {}
            None => {
                if matched && !deleting && meta.deletion_timestamp.is_none() {
                    let mut refs = meta.owner_references.clone().unwrap_or_default();
                    refs.push(controller_ref(owner));
                    let patch = json!({"metadata": {
                        "ownerReferences": refs,
                        "uid": meta.uid,
                        "resourceVersion": meta.resource_version,
                    }});
                    match api
                        .patch(
                            &o.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await
                    {
                        Ok(adopted) => owned.push(adopted),
                        // Gone or changed meanwhile: the next pass sees it as it is now.
                        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    }
    Ok(owned)
}

async fn release<K>(api: &Api<K>, o: &K, uid: &str) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let refs: Vec<OwnerReference> = o
        .meta()
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.uid != uid)
        .collect();
    let patch = json!({"metadata": {
        "ownerReferences": if refs.is_empty() { serde_json::Value::Null } else { json!(refs) },
        "resourceVersion": o.meta().resource_version,
    }});
    match api
        .patch(
            &o.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Lists objects of one namespace (all of them: claiming needs orphans too).
pub async fn list_in<K>(api: &Api<K>) -> Result<Vec<K>>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.list(&ListParams::default()).await?.items)
}

/// Deletes, treating "already gone" as done.
pub async fn delete_quiet<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A pod still counts toward its controller: not being deleted, not finished.
pub fn is_active(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && !matches!(phase(p), "Succeeded" | "Failed")
}

pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// When the pod's Ready condition last turned True, if it is True.
pub fn ready_since(p: &Pod) -> Option<Option<Timestamp>> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (c.status == "True").then(|| c.last_transition_time.as_ref().map(|t| t.0))
}

pub fn is_ready(p: &Pod) -> bool {
    ready_since(p).is_some()
}

/// Ready for at least `min_ready_seconds`. When not yet, the wait left, so the caller
/// can requeue then.
pub fn availability(p: &Pod, min_ready_seconds: i32, now: Timestamp) -> Result<(), Duration> {
    let Some(since) = ready_since(p) else {
        return Err(Duration::MAX);
    };
    if min_ready_seconds <= 0 {
        return Ok(());
    }
    let Some(since) = since else {
        return Ok(());
    };
    let due = since + jiff::SignedDuration::from_secs(i64::from(min_ready_seconds));
    if due <= now {
        Ok(())
    } else {
        Err(
            Duration::from_secs(u64::try_from(due.as_second() - now.as_second()).unwrap_or(1))
                + Duration::from_millis(100),
        )
    }
}

/// FNV-1a, 32 bits: the hash Kubernetes names pod templates with.
pub fn fnv32a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Kubernetes' `rand.SafeEncodeString`: digits of a hash in an alphabet without vowels
/// and look-alikes, so names never spell words.
pub fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// The pod-template hash of a template and collision count: fnv32a over the template's
/// canonical JSON (with any pod-template-hash label removed) and the count, encoded like
/// Kubernetes' `ComputeHash`. kube-controller-manager hashes a Go-specific dump of the
/// struct, so the digits differ from its; the shape and the use are the same.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut t = template.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(POD_TEMPLATE_HASH);
    }
    let mut bytes = serde_json::to_vec(&t).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&c.to_le_bytes());
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Templates equal but for the pod-template-hash label (Kubernetes' `EqualIgnoreHash`).
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if let Some(m) = t.metadata.as_mut() {
            if let Some(l) = m.labels.as_mut() {
                l.remove(POD_TEMPLATE_HASH);
                if l.is_empty() {
                    m.labels = None;
                }
            }
            if m.annotations.as_ref().is_some_and(|a| a.is_empty()) {
                m.annotations = None;
            }
        }
        serde_json::to_value(t).unwrap_or_default()
    };
    strip(a) == strip(b)
}

/// A pod object from a template, owned by `owner`.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    owner: OwnerReference,
    generate_name: Option<String>,
    name: Option<String>,
) -> Pod {
    let tm = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name,
            generate_name,
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// `generateName` for a controller's pods: `<owner>-`, cut so the 5 random characters fit
/// in a 63-character name.
pub fn generate_name(owner: &str) -> String {
    let mut base = owner.to_string();
    base.truncate(58);
    format!("{base}-")
}

/// Seconds from `t` to `now`, or from now to `t` when negative.
pub fn secs_between(t: Timestamp, now: Timestamp) -> i64 {
    now.as_second() - t.as_second()
}

/// An int-or-percent (maxSurge, maxUnavailable) scaled against `total`.
pub fn scaled_value(
    v: Option<&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    total: i32,
    default: &str,
    round_up: bool,
) -> Result<i32> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let v = v
        .cloned()
        .unwrap_or_else(|| IntOrString::String(default.into()));
    match v {
        IntOrString::Int(i) => Ok(i.max(0)),
        IntOrString::String(s) => {
            if let Some(p) = s.strip_suffix('%')
                && let Ok(p) = p.parse::<i64>()
            {
                let x = i64::from(total) * p;
                let r = if round_up { (x + 99) / 100 } else { x / 100 };
                Ok(i32::try_from(r.max(0)).unwrap_or(i32::MAX))
            } else if let Ok(i) = s.parse::<i32>() {
                Ok(i.max(0))
            } else {
                Err(Error::Invalid(format!(
                    "invalid int-or-percent value {s:?}"
                )))
            }
        }
    }
}

/// Writes an object's status subresource (merge patch of `status`).
pub async fn patch_status<K>(api: &Api<K>, name: &str, status: serde_json::Value) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Writes an object's status subresource only if the object is still at `rv` (the
/// version its status was computed from): a stale pass gets a 409, which fails the
/// reconcile and retries it on the newer object. Returns the written object's
/// resourceVersion, for a second write in the same pass.
pub async fn patch_status_at<K>(
    api: &Api<K>,
    name: &str,
    rv: Option<String>,
    status: serde_json::Value,
) -> Result<Option<String>>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut patch = json!({ "status": status });
    if let Some(rv) = rv {
        patch["metadata"] = json!({ "resourceVersion": rv });
    }
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(obj) => Ok(obj.meta().resource_version.clone()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_and_encoding() {
        assert_eq!(fnv32a(b""), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c_292c);
        // Kubernetes' SafeEncodeString: each byte picks alphanums[b % 27] ("0" is 48 -> index 21).
        assert_eq!(safe_encode("0123"), "4567");
        let t = PodTemplateSpec::default();
        assert_ne!(template_hash(&t, None), template_hash(&t, Some(1)));
    }

    #[test]
    fn percent_rounding() {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let p = IntOrString::String("25%".into());
        assert_eq!(scaled_value(Some(&p), 10, "25%", true).ok(), Some(3));
        assert_eq!(scaled_value(Some(&p), 10, "25%", false).ok(), Some(2));
        assert_eq!(scaled_value(None, 4, "25%", false).ok(), Some(1));
        assert!(scaled_value(Some(&IntOrString::String("x%".into())), 4, "", true).is_err());
    }
}
