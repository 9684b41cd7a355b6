//! The EndpointSlice controller (discovery.k8s.io/v1): for every Service with a selector,
//! slices of at most 100 endpoints per address family and port set, one endpoint per pod
//! with an IP — conditions ready/serving/terminating, targetRef, nodeName, the node's zone,
//! ports resolved per pod from named targetPorts. Services without a selector get their
//! user-written Endpoints mirrored into slices (the "endpointslicemirroring" controller).
//!
//! The slice store lags this controller's own writes; a per-Service list of what was
//! written (the "tracker", as kube-controller-manager's endpointSliceTracker) keeps a sync
//! from acting on a store that has not seen them yet (which would duplicate slices).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use super::endpoints::{self as ep, selected_pods};
use super::util::{self, Queue, Recorder, SyncResult};
use crate::manager::{Context, LoopFuture};

pub const NAME: &str = "endpointslice-controller";
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
pub const MIRROR_MANAGED_BY: &str = "endpointslicemirroring-controller.k8s.io";
/// Endpoints so labelled are not mirrored (the API server's own `kubernetes` Endpoints).
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";
pub const MAX_ENDPOINTS: usize = 100;
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// What this controller last wrote per Service: slice name → Some(resourceVersion) for a
/// write, None for a delete.
type Tracker = Mutex<HashMap<String, HashMap<String, Option<i64>>>>;

pub fn start(ctx: Arc<Context>) -> LoopFuture {
    Box::pin(run(ctx))
}

/// Whether the slice is one of ours (either flavour) for some Service.
fn owned_service(s: &EndpointSlice) -> Option<String> {
    let labels = s.metadata.labels.as_ref()?;
    let managed = labels.get(MANAGED_BY_LABEL)?;
    if managed != MANAGED_BY && managed != MIRROR_MANAGED_BY {
        return None;
    }
    let svc = labels.get(SERVICE_NAME_LABEL)?;
    Some(format!("{}/{svc}", s.metadata.namespace.as_deref()?))
}

/// The API server keeps `default/kubernetes` itself.
fn reserved(key: &str) -> bool {
    key == "default/kubernetes"
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
        move |old: Option<&Pod>, new: Option<&Pod>| {
            ep::enqueue_services_of_pod(&svcs, &q, old, new)
        },
    );
    let q = queue.clone();
    let (slices, slice_informer) = util::informer(
        Api::<EndpointSlice>::all(ctx.client.clone()),
        watcher::Config::default(),
        move |old: Option<&EndpointSlice>, new: Option<&EndpointSlice>| {
            if let Some(k) = new.or(old).and_then(owned_service) {
                q.add(k);
            }
        },
    );
    let q = queue.clone();
    let (endpoints, ep_informer) = util::informer(
        Api::<Endpoints>::all(ctx.client.clone()),
        watcher::Config::default(),
        move |old: Option<&Endpoints>, new: Option<&Endpoints>| {
            if let Some(e) = new.or(old) {
                q.add(util::key_of(e));
            }
        },
    );
    let (nodes, node_informer) = util::subscribe(
        &ctx.informers.nodes,
        |_: Option<&Node>, _: Option<&Node>| {},
    );
    let tracker: Arc<Tracker> = Arc::new(Mutex::new(HashMap::new()));
    let recorder = Recorder::new(ctx.client.clone(), NAME);
    let stores = Stores {
        services: services.clone(),
        pods: pods.clone(),
        slices: slices.clone(),
        endpoints: endpoints.clone(),
        nodes: nodes.clone(),
    };
    let sync = {
        let (ctx, stores, tracker, recorder) = (ctx.clone(), stores, tracker, recorder);
        move |key: String| {
            let (ctx, stores, tracker, recorder) = (
                ctx.clone(),
                stores.clone(),
                tracker.clone(),
                recorder.clone(),
            );
            async move { sync(&ctx, &stores, &tracker, &recorder, &key).await }
        }
    };
    let workers = async {
        let _ = services.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        let _ = slices.wait_until_ready().await;
        let _ = endpoints.wait_until_ready().await;
        let _ = nodes.wait_until_ready().await;
        util::run_workers(queue, 4, NAME, sync).await;
    };
    tokio::join!(
        svc_informer,
        pod_informer,
        slice_informer,
        ep_informer,
        node_informer,
        workers
    );
}

#[derive(Clone)]
struct Stores {
    services: Store<Service>,
    pods: Store<Pod>,
    slices: Store<EndpointSlice>,
    endpoints: Store<Endpoints>,
    nodes: Store<Node>,
}

/// One slice as it should be: address type, ports, endpoints, who manages it.
#[derive(Debug, PartialEq)]
struct Desired {
    address_type: String,
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
    managed_by: &'static str,
}

fn family_of(ip: &str) -> &'static str {
    if ip.contains(':') { "IPv6" } else { "IPv4" }
}

fn ports_key(ports: &[EndpointPort]) -> Vec<(String, i32, String)> {
    ports
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port.unwrap_or(0),
                p.protocol.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// (address family, ports key) → (ports, endpoints).
type Groups = BTreeMap<(String, Vec<(String, i32, String)>), (Vec<EndpointPort>, Vec<Endpoint>)>;

/// Groups endpoints by (family, ports) and cuts each group into slices of 100.
fn chunk(groups: Groups, managed_by: &'static str) -> Vec<Desired> {
    let mut out = Vec::new();
    for ((family, _), (ports, endpoints)) in groups {
        for c in endpoints.chunks(MAX_ENDPOINTS) {
            out.push(Desired {
                address_type: family.clone(),
                ports: ports.clone(),
                endpoints: c.to_vec(),
                managed_by,
            });
        }
    }
    out
}

/// The slices of a Service with a selector, from its pods.
fn from_pods(
    svc: &Service,
    stores: &Stores,
    ns: &str,
    sel: &BTreeMap<String, String>,
) -> Vec<Desired> {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish = spec.publish_not_ready_addresses.unwrap_or(false);
    let families = spec
        .ip_families
        .clone()
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| vec!["IPv4".into()]);
    let svc_ports = spec.ports.unwrap_or_default();
    let mut groups = BTreeMap::new();
    for pod in selected_pods(&stores.pods, ns, sel) {
        if !ep::is_candidate(&pod) {
            continue;
        }
        let mut ports: Vec<EndpointPort> = svc_ports
            .iter()
            .filter_map(|sp| {
                Some(EndpointPort {
                    name: Some(sp.name.clone().unwrap_or_default()),
                    port: Some(ep::resolve_port(sp, &pod)?),
                    protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: sp.app_protocol.clone(),
                })
            })
            .collect();
        if ports.is_empty() && !svc_ports.is_empty() {
            continue;
        }
        ports.sort_by(|a, b| (&a.name, a.port).cmp(&(&b.name, b.port)));
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let ready = ep::is_ready(&pod);
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let zone = node_name
            .as_ref()
            .and_then(|n| stores.nodes.get(&ObjectRef::new(n)))
            .and_then(|n| n.labels().get(ZONE_LABEL).cloned());
        for ip in ep::pod_ips(&pod) {
            let family = family_of(&ip);
            if !families.iter().any(|f| f == family) {
                continue;
            }
            let endpoint = Endpoint {
                addresses: vec![ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some((publish || ready) && !terminating),
                    serving: Some(publish || ready),
                    terminating: Some(terminating),
                }),
                hostname: ep::hostname(&pod, svc),
                node_name: node_name.clone(),
                target_ref: Some(ep::pod_reference(&pod)),
                zone: zone.clone(),
                ..Endpoint::default()
            };
            groups
                .entry((family.to_string(), ports_key(&ports)))
                .or_insert_with(|| (ports.clone(), Vec::new()))
                .1
                .push(endpoint);
        }
    }
    let mut out = chunk(groups, MANAGED_BY);
    if out.is_empty() {
        // A Service with no endpoints still gets one (empty) slice, as in Kubernetes:
        // consumers tell "no endpoints" from "not synced yet".
        out.push(Desired {
            address_type: families[0].clone(),
            ports: Vec::new(),
            endpoints: Vec::new(),
            managed_by: MANAGED_BY,
        });
    }
    out
}

/// The slices mirroring a selector-less Service's user-written Endpoints.
fn from_endpoints(e: &Endpoints) -> Vec<Desired> {
    let mut groups = BTreeMap::new();
    for subset in e.subsets.clone().unwrap_or_default() {
        let mut ports: Vec<EndpointPort> = subset
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| EndpointPort {
                name: Some(p.name.unwrap_or_default()),
                port: Some(p.port),
                protocol: Some(p.protocol.unwrap_or_else(|| "TCP".into())),
                app_protocol: p.app_protocol,
            })
            .collect();
        ports.sort_by(|a, b| (&a.name, a.port).cmp(&(&b.name, b.port)));
        let ready = subset
            .addresses
            .unwrap_or_default()
            .into_iter()
            .map(|a| (a, true));
        let not_ready = subset
            .not_ready_addresses
            .unwrap_or_default()
            .into_iter()
            .map(|a| (a, false));
        for (a, is_ready) in ready.chain(not_ready) {
            let endpoint = Endpoint {
                addresses: vec![a.ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(is_ready),
                    serving: Some(is_ready),
                    terminating: Some(false),
                }),
                hostname: a.hostname,
                node_name: a.node_name,
                target_ref: a.target_ref,
                ..Endpoint::default()
            };
            groups
                .entry((family_of(&a.ip).to_string(), ports_key(&ports)))
                .or_insert_with(|| (ports.clone(), Vec::new()))
                .1
                .push(endpoint);
        }
    }
    chunk(groups, MIRROR_MANAGED_BY)
}

fn rv(s: &EndpointSlice) -> i64 {
    s.metadata
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

async fn sync(
    ctx: &Context,
    stores: &Stores,
    tracker: &Tracker,
    recorder: &Recorder,
    key: &str,
) -> SyncResult {
    let (Some(ns), name) = util::split_key(key) else {
        return Ok(None);
    };
    if reserved(key) {
        return Ok(None);
    }
    let existing: Vec<Arc<EndpointSlice>> = stores
        .slices
        .state()
        .into_iter()
        .filter(|s| owned_service(s).as_deref() == Some(key))
        .collect();
    // Do not act on a store that has not yet seen this controller's last writes.
    {
        let mut t = tracker.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(expect) = t.get(key) {
            let caught_up = expect.iter().all(|(slice, want)| {
                let have = existing
                    .iter()
                    .find(|s| s.metadata.name.as_deref() == Some(slice));
                match (want, have) {
                    (Some(want), Some(s)) => rv(s) >= *want,
                    (Some(_), None) => false,
                    (None, have) => have.is_none(),
                }
            });
            if !caught_up {
                return Ok(Some(Duration::from_secs(1)));
            }
            t.remove(key);
        }
    }
    let svc = stores.services.get(&ObjectRef::new(name).within(ns));
    let desired = match &svc {
        None => Vec::new(),
        Some(s) if s.metadata.deletion_timestamp.is_some() => return Ok(None),
        Some(s) => match ep::selector(s) {
            Some(sel) => from_pods(s, stores, ns, sel),
            None => match stores.endpoints.get(&ObjectRef::new(name).within(ns)) {
                Some(e)
                    if !e.labels().contains_key(SKIP_MIRROR_LABEL)
                        && s.spec.as_ref().and_then(|sp| sp.type_.as_deref())
                            != Some("ExternalName") =>
                {
                    from_endpoints(&e)
                }
                _ => Vec::new(),
            },
        },
    };
    let result = reconcile(
        ctx,
        svc.as_deref(),
        ns,
        name,
        desired,
        existing,
        tracker,
        key,
    )
    .await;
    if let (Err(e), Some(s)) = (&result, &svc) {
        recorder
            .warning(
                &ep::service_reference(s),
                "FailedToUpdateEndpointSlices",
                &format!("Error updating Endpoint Slices for Service {key}: {e}"),
            )
            .await;
    }
    result.map(|()| None)
}

fn track(tracker: &Tracker, key: &str, slice: String, rv: Option<i64>) {
    tracker
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key.to_string())
        .or_default()
        .insert(slice, rv);
}

#[allow(clippy::too_many_arguments)]
async fn reconcile(
    ctx: &Context,
    svc: Option<&Service>,
    ns: &str,
    name: &str,
    desired: Vec<Desired>,
    existing: Vec<Arc<EndpointSlice>>,
    tracker: &Tracker,
    key: &str,
) -> Result<(), String> {
    let api = Api::<EndpointSlice>::namespaced(ctx.client.clone(), ns);
    let mut unused: Vec<Arc<EndpointSlice>> = existing;
    for d in desired {
        let Some(svc) = svc else { break };
        let mut labels = ep::derived_labels(svc);
        labels.insert(SERVICE_NAME_LABEL.into(), name.into());
        labels.insert(MANAGED_BY_LABEL.into(), d.managed_by.into());
        let ports = (!d.ports.is_empty()).then(|| d.ports.clone());
        // Reuse a slice of the same shape, preferring one that is already right.
        let same_shape = |s: &EndpointSlice| {
            s.address_type == d.address_type
                && s.ports.clone().unwrap_or_default() == d.ports
                && s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(d.managed_by)
        };
        let exact = unused.iter().position(|s| {
            same_shape(s)
                && s.endpoints == d.endpoints
                && s.metadata.labels.as_ref() == Some(&labels)
        });
        if let Some(i) = exact {
            unused.remove(i);
            continue;
        }
        let reuse = unused.iter().position(|s| same_shape(s));
        let mut slice = EndpointSlice {
            metadata: ObjectMeta {
                labels: Some(labels),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Service".into(),
                    name: name.into(),
                    uid: svc.metadata.uid.clone().unwrap_or_default(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..ObjectMeta::default()
            },
            address_type: d.address_type,
            endpoints: d.endpoints,
            ports,
        };
        let written = match reuse {
            Some(i) => {
                let old = unused.remove(i);
                slice.metadata.name = old.metadata.name.clone();
                slice.metadata.resource_version = old.metadata.resource_version.clone();
                slice.metadata.annotations = old.metadata.annotations.clone();
                api.replace(&old.name_any(), &PostParams::default(), &slice)
                    .await
            }
            None => {
                slice.metadata.generate_name = Some(format!("{name}-"));
                api.create(&PostParams::default(), &slice).await
            }
        };
        match written {
            Ok(s) => track(tracker, key, s.name_any(), Some(rv(&s))),
            Err(kube::Error::Api(s)) if s.code == 403 => return Ok(()),
            Err(e) => return Err(format!("writing an EndpointSlice of {key}: {e}")),
        }
    }
    for old in unused {
        match api.delete(&old.name_any(), &DeleteParams::default()).await {
            Ok(_) => track(tracker, key, old.name_any(), None),
            Err(e) if util::is_not_found(&e) => {}
            Err(e) => return Err(format!("deleting EndpointSlice {}: {e}", old.name_any())),
        }
    }
    Ok(())
}
