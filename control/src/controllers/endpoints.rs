//! The Endpoints controller: for every Service with a selector, an Endpoints object of the
//! same name listing its pods that have an IP — ready ones in `addresses`, the others in
//! `notReadyAddresses` (all in `addresses` with `publishNotReadyAddresses`), terminating
//! and finished pods left out — with each pod's ports resolved from the Service's
//! (possibly named) targetPorts. Endpoints of Services without a selector belong to the
//! user and are never touched. Also the pod/Service matching both endpoint controllers use.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use super::util::{self, Queue, SyncResult};
use crate::manager::{Context, LoopFuture};

pub const NAME: &str = "endpoint-controller";
/// Set on every Endpoints this controller writes (as kube-controller-manager does); also how
/// it knows an Endpoints object is its own to delete with its Service.
pub const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// The Service's selector, if it has a non-empty one.
pub fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

pub fn selects(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let Some(labels) = labels else {
        return selector.is_empty();
    };
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Queues every Service in the pod's namespace whose selector matches the pod before or
/// after the change (a relabelled pod leaves one Service and joins another).
pub fn enqueue_services_of_pod(
    services: &Store<Service>,
    queue: &Queue<String>,
    old: Option<&Pod>,
    new: Option<&Pod>,
) {
    let Some(ns) = new.or(old).and_then(|p| p.metadata.namespace.as_deref()) else {
        return;
    };
    if let (Some(o), Some(n)) = (old, new)
        && !pod_changed_for_endpoints(o, n)
    {
        return;
    }
    for svc in services.state() {
        if svc.metadata.namespace.as_deref() != Some(ns) {
            continue;
        }
        let Some(sel) = selector(&svc) else { continue };
        if selects(sel, old.and_then(|p| p.metadata.labels.as_ref()))
            || selects(sel, new.and_then(|p| p.metadata.labels.as_ref()))
        {
            queue.add(util::key_of(svc.as_ref()));
        }
    }
}

/// Whether anything endpoints are made of changed (most pod updates do not: status
/// heartbeats, container states).
fn pod_changed_for_endpoints(a: &Pod, b: &Pod) -> bool {
    a.metadata.labels != b.metadata.labels
        || a.metadata.deletion_timestamp != b.metadata.deletion_timestamp
        || pod_ips(a) != pod_ips(b)
        || is_ready(a) != is_ready(b)
        || a.spec.as_ref().and_then(|s| s.node_name.as_ref())
            != b.spec.as_ref().and_then(|s| s.node_name.as_ref())
        || phase(a) != phase(b)
        || a.spec.as_ref().map(|s| (&s.hostname, &s.subdomain))
            != b.spec.as_ref().map(|s| (&s.hostname, &s.subdomain))
}

pub fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// The pod's IPs (podIPs, or podIP alone).
pub fn pod_ips(p: &Pod) -> Vec<String> {
    let Some(st) = p.status.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<String> = st
        .pod_ips
        .as_ref()
        .map(|v| {
            v.iter()
                .map(|i| i.ip.clone())
                .filter(|i| !i.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if ips.is_empty()
        && let Some(ip) = st.pod_ip.as_ref().filter(|i| !i.is_empty())
    {
        ips.push(ip.clone());
    }
    ips
}

pub fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A pod that can be an endpoint at all: has an IP, is not finished. (Terminating pods are
/// dropped from Endpoints but kept, marked, in EndpointSlices.)
pub fn is_candidate(p: &Pod) -> bool {
    !pod_ips(p).is_empty() && !matches!(phase(p), Some("Succeeded" | "Failed"))
}

/// The pods a Service selects, sorted by name.
pub fn selected_pods(pods: &Store<Pod>, ns: &str, sel: &BTreeMap<String, String>) -> Vec<Arc<Pod>> {
    let mut v: Vec<Arc<Pod>> = pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
        .filter(|p| selects(sel, p.metadata.labels.as_ref()))
        .collect();
    v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    v
}

/// The container port a Service port reaches on this pod: a number as is, a name looked
/// up among the pod's container ports (None when the pod has no port of that name).
pub fn resolve_port(sp: &ServicePort, pod: &Pod) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            let proto = sp.protocol.as_deref().unwrap_or("TCP");
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports.as_ref()?.iter().find_map(|p| {
                    (p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == proto)
                        .then_some(p.container_port)
                })
            })
        }
    }
}

pub fn pod_reference(p: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: p.metadata.namespace.clone(),
        name: p.metadata.name.clone(),
        uid: p.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

/// The DNS hostname of a pod behind this Service (`spec.hostname` when its subdomain is the
/// Service's name, as for StatefulSets behind a headless Service).
pub fn hostname(p: &Pod, svc: &Service) -> Option<String> {
    let spec = p.spec.as_ref()?;
    let h = spec.hostname.as_ref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == svc.metadata.name.as_deref()).then(|| h.clone())
}

pub fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// The labels endpoints objects carry: the Service's, plus the headless marker.
pub fn derived_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    if is_headless(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels
}

pub fn start(ctx: Arc<Context>) -> LoopFuture {
    Box::pin(run(ctx))
}

async fn run(ctx: Arc<Context>) {
    let queue: Arc<Queue<String>> = Queue::new();
    let q = queue.clone();
    let (services, svc_informer) = util::informer(
        Api::<Service>::all(ctx.client.clone()),
        watcher::Config::default(),
        move |old: Option<&Service>, new: Option<&Service>| {
            if let Some(s) = new.or(old) {
                q.add(util::key_of(s));
            }
        },
    );
    let (q, svcs) = (queue.clone(), services.clone());
    let (pods, pod_informer) = util::subscribe(
        &ctx.informers.pods,
        move |old: Option<&Pod>, new: Option<&Pod>| enqueue_services_of_pod(&svcs, &q, old, new),
    );
    let q = queue.clone();
    let (endpoints, ep_informer) = util::informer(
        Api::<Endpoints>::all(ctx.client.clone()),
        watcher::Config::default(),
        move |old: Option<&Endpoints>, new: Option<&Endpoints>| {
            // Someone else changed or deleted ours: put it right.
            if let Some(e) = new.or(old)
                && e.annotations().contains_key(TRIGGER_TIME)
            {
                q.add(util::key_of(e));
            }
        },
    );
    let sync = {
        let (ctx, services, pods, endpoints) = (
            ctx.clone(),
            services.clone(),
            pods.clone(),
            endpoints.clone(),
        );
        move |key: String| {
            let (ctx, services, pods, endpoints) = (
                ctx.clone(),
                services.clone(),
                pods.clone(),
                endpoints.clone(),
            );
            async move { sync(&ctx, &services, &pods, &endpoints, &key).await }
        }
    };
    let workers = async {
        let _ = services.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        let _ = endpoints.wait_until_ready().await;
        util::run_workers(queue, 4, NAME, sync).await;
    };
    tokio::join!(svc_informer, pod_informer, ep_informer, workers);
}

/// The subsets of a Service's Endpoints: pods grouped by their resolved ports.
pub fn subsets(svc: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish = spec.publish_not_ready_addresses.unwrap_or(false);
    let svc_ports = spec.ports.unwrap_or_default();
    // ports (as a comparable key) → (ports, ready, not ready)
    type Group = (
        Vec<EndpointPort>,
        Vec<EndpointAddress>,
        Vec<EndpointAddress>,
    );
    let mut groups: BTreeMap<Vec<(String, i32, String)>, Group> = BTreeMap::new();
    for pod in pods {
        if !is_candidate(pod) || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(ip) = pod_ips(pod).into_iter().next() else {
            continue;
        };
        let mut ports = Vec::new();
        for sp in &svc_ports {
            if let Some(port) = resolve_port(sp, pod) {
                ports.push(EndpointPort {
                    name: sp.name.clone().filter(|n| !n.is_empty()),
                    port,
                    protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: sp.app_protocol.clone(),
                });
            }
        }
        // A pod that resolves none of several ports serves nothing here.
        if ports.is_empty() && !svc_ports.is_empty() {
            continue;
        }
        ports.sort_by(|a, b| (&a.name, a.port).cmp(&(&b.name, b.port)));
        let key = ports
            .iter()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.port,
                    p.protocol.clone().unwrap_or_default(),
                )
            })
            .collect();
        let addr = EndpointAddress {
            ip,
            hostname: hostname(pod, svc),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(pod_reference(pod)),
        };
        let g = groups
            .entry(key)
            .or_insert_with(|| (ports, Vec::new(), Vec::new()));
        if publish || is_ready(pod) {
            g.1.push(addr);
        } else {
            g.2.push(addr);
        }
    }
    groups
        .into_values()
        .map(|(ports, mut ready, mut not_ready)| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect()
}

async fn sync(
    ctx: &Context,
    services: &Store<Service>,
    pods: &Store<Pod>,
    endpoints: &Store<Endpoints>,
    key: &str,
) -> SyncResult {
    let (Some(ns), name) = util::split_key(key) else {
        return Ok(None);
    };
    let api = Api::<Endpoints>::namespaced(ctx.client.clone(), ns);
    let current = endpoints.get(&ObjectRef::new(name).within(ns));
    let svc = services.get(&ObjectRef::new(name).within(ns));
    let Some(svc) = svc else {
        // The Service is gone: so are the Endpoints this controller made for it.
        if current.is_some_and(|e| e.annotations().contains_key(TRIGGER_TIME)) {
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if util::is_not_found(&e) => {}
                Err(e) => return Err(format!("deleting Endpoints {key}: {e}")),
            }
        }
        return Ok(None);
    };
    let Some(sel) = selector(&svc) else {
        // No selector: the Endpoints are the user's.
        return Ok(None);
    };
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let subsets = subsets(&svc, &selected_pods(pods, ns, sel));
    let labels = derived_labels(&svc);
    if let Some(cur) = &current
        && cur.subsets.clone().unwrap_or_default() == subsets
        && cur.metadata.labels.clone().unwrap_or_default() == labels
    {
        return Ok(None);
    }
    let mut annotations = current
        .as_ref()
        .and_then(|c| c.metadata.annotations.clone())
        .unwrap_or_default();
    annotations.insert(
        TRIGGER_TIME.into(),
        jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
    );
    let ep = Endpoints {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(labels),
            annotations: Some(annotations),
            resource_version: current.as_ref().and_then(|c| c.resource_version()),
            ..ObjectMeta::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    };
    let written = if current.is_some() {
        api.replace(name, &PostParams::default(), &ep).await
    } else {
        api.create(&PostParams::default(), &ep).await
    };
    match written {
        Ok(_) => Ok(None),
        // The namespace is going away: nothing to keep up to date.
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(None),
        Err(e) => Err(format!("writing Endpoints {key}: {e}")),
    }
}

/// An ObjectReference of a Service (for Events).
pub fn service_reference(svc: &Service) -> ObjectReference {
    svc.object_ref(&())
}
