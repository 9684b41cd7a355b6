//! The DaemonSet controller: one pod on every node the pod may run on (nodeSelector,
//! required node affinity, taints against the pod's tolerations plus the DaemonSet
//! defaults), placed on its node directly (`spec.nodeName`, with the
//! `metadata.name` node affinity Kubernetes adds); RollingUpdate within maxUnavailable
//! or OnDelete; the status `kubectl rollout status ds` reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    Toleration,
};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::json;

use super::workload_revision::{self as revision, REVISION_HASH_LABEL};
use super::workload_util::{self as util, Error, Recorder, Result};
use crate::manager::Context;

pub const COMPONENT: &str = "daemonset-controller";

struct Ctx {
    client: kube::Client,
    recorder: Recorder,
    clock: util::Clock,
}

/// The DaemonSet controller loop.
pub fn daemonsets(ctx: Arc<Context>) -> crate::manager::LoopFuture {
    Box::pin(async move {
        let client = ctx.client.clone();
        let controller = Controller::new(
            Api::<DaemonSet>::all(client.clone()),
            watcher::Config::default(),
        );
        let store = controller.store();
        // Any node change may change where every DaemonSet should run.
        let controller = controller
            .owns_shared_stream(ctx.informers.pods.objects())
            .watches_shared_stream(ctx.informers.nodes.objects(), move |_n: Arc<Node>| {
                store
                    .state()
                    .iter()
                    .map(|d| ObjectRef::from_obj(d.as_ref()))
                    .collect::<Vec<_>>()
            });
        let c = Arc::new(Ctx {
            client: client.clone(),
            recorder: Recorder::new(client, COMPONENT),
            clock: ctx.options.clock.clone(),
        });
        util::drive(controller, COMPONENT, reconcile, c).await;
    })
}

/// The tolerations Kubernetes gives every DaemonSet pod, so daemons run on nodes that
/// are cordoned, under pressure or not (yet) ready.
pub fn default_tolerations(host_network: bool) -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    let mut v = vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        v.push(t("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    v
}

fn tolerates(tols: &[Toleration], key: &str, value: Option<&str>, effect: &str) -> bool {
    tols.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == effect);
        let key_ok = t.key.as_deref().is_none_or(|k| k.is_empty() || k == key);
        let op_ok = match t.operator.as_deref() {
            Some("Exists") => true,
            _ => t.value.as_deref().unwrap_or("") == value.unwrap_or(""),
        };
        effect_ok && key_ok && op_ok
    })
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let vals = r.values.clone().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| vals.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !vals.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(x)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                vals.first().and_then(|x| x.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" { v > x } else { v < x }
        }
        _ => false,
    }
}

/// Whether the pod template may run on the node (Kubernetes' `NodeShouldRunDaemonPod`).
pub fn should_run(pod: &k8s_openapi::api::core::v1::PodSpec, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if let Some(sel) = &pod.node_selector
        && !sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let required = pod
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(req) = required {
        let name = node.name_any();
        let term_ok = |t: &NodeSelectorTerm| {
            t.match_expressions
                .iter()
                .flatten()
                .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
                && t.match_fields.iter().flatten().all(|r| {
                    requirement_matches(r, (r.key == "metadata.name").then_some(name.as_str()))
                })
        };
        if !req.node_selector_terms.iter().any(term_ok) {
            return false;
        }
    }
    let mut tols = pod.tolerations.clone().unwrap_or_default();
    tols.extend(default_tolerations(pod.host_network == Some(true)));
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| tolerates(&tols, &t.key, t.value.as_deref(), &t.effect))
}

fn node_of(p: &Pod) -> Option<String> {
    if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
        return Some(n);
    }
    // Not yet bound: the node its affinity names.
    p.spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let what = format!("DaemonSet {ns}/{name}");
    let spec = ds
        .spec
        .clone()
        .ok_or_else(|| Error::Invalid(format!("{what}: spec is required")))?;
    let sel = util::selector(Some(&spec.selector), &what)?;
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let pod_spec = spec.template.spec.clone().unwrap_or_default();

    let cr_api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let data = revision::template_data(&serde_json::to_value(&spec.template).unwrap_or_default());
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let collisions = ds.status.as_ref().and_then(|s| s.collision_count);
    let (_rev, hash) = revision::sync(
        &cr_api,
        ds.as_ref(),
        &sel,
        &template_labels,
        data,
        collisions,
        limit,
    )
    .await?;

    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&Default::default())
        .await?
        .items;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let all = util::list_in(&pods_api).await?;
    let pods = util::claim(&pods_api, ds.as_ref(), &sel, all).await?;
    let mut by_node: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for p in pods
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        if let Some(n) = node_of(&p) {
            by_node.entry(n).or_default().push(p);
        }
    }
    let now = ctx.clock.now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let available = |p: &Pod| util::availability(p, min_ready, now).is_ok();
    let is_current = |p: &Pod| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(REVISION_HASH_LABEL))
            == Some(&hash)
    };

    let eligible: Vec<&Node> = nodes.iter().filter(|n| should_run(&pod_spec, n)).collect();
    let desired = eligible.len() as i32;
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        != Some("OnDelete");
    let max_unavailable = if rolling {
        util::scaled_value(
            spec.update_strategy
                .as_ref()
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.max_unavailable.as_ref()),
            desired,
            "1",
            true,
        )?
        .max(1)
    } else {
        0
    };
    let mut unavailable = eligible
        .iter()
        .filter(|n| {
            !by_node
                .get(&n.name_any())
                .is_some_and(|ps| ps.iter().any(available))
        })
        .count() as i32;
    let mut recheck = None;

    for node in &nodes {
        let node_name = node.name_any();
        let run = eligible.iter().any(|n| n.name_any() == node_name);
        let mut here = by_node.remove(&node_name).unwrap_or_default();
        // Failed daemons are replaced (the next pass creates the new one).
        for p in here.iter().filter(|p| util::phase(p) == "Failed") {
            util::delete_quiet(&pods_api, &p.name_any()).await?;
            ctx.recorder
                .event(
                    ds.as_ref(),
                    true,
                    "FailedDaemonPod",
                    format!(
                        "Found failed daemon pod {ns}/{} on node {node_name}, will try to kill it",
                        p.name_any()
                    ),
                )
                .await;
        }
        here.retain(|p| util::phase(p) != "Failed");
        if !run {
            for p in &here {
                delete_pod(&ctx, &ds, &pods_api, p).await?;
            }
            continue;
        }
        if here.is_empty() {
            create_pod(&ctx, &ds, &pods_api, &spec.template, &hash, &node_name).await?;
            continue;
        }
        // Duplicates: keep the oldest.
        here.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        for p in here.iter().skip(1) {
            delete_pod(&ctx, &ds, &pods_api, p).await?;
        }
        let p = &here[0];
        if rolling && !is_current(p) {
            if !available(p) {
                delete_pod(&ctx, &ds, &pods_api, p).await?;
            } else if unavailable < max_unavailable {
                delete_pod(&ctx, &ds, &pods_api, p).await?;
                unavailable += 1;
            }
        }
        if util::is_ready(p)
            && let Err(wait) = util::availability(p, min_ready, now)
        {
            recheck = Some(wait);
        }
    }

    // Status from what is on the nodes now.
    let all = util::list_in(&pods_api).await?;
    let uid = ds.uid().unwrap_or_default();
    let mine: Vec<Pod> = all
        .into_iter()
        .filter(|p| {
            util::is_controlled_by(&p.metadata, &uid) && p.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let on = |n: &str| {
        let n = n.to_string();
        mine.iter()
            .filter(move |p| node_of(p).as_deref() == Some(n.as_str()))
    };
    let mut current = 0;
    let mut ready = 0;
    let mut avail = 0;
    let mut updated = 0;
    for n in &eligible {
        let nn = n.name_any();
        if on(&nn).next().is_some() {
            current += 1;
        }
        if on(&nn).any(util::is_ready) {
            ready += 1;
        }
        if on(&nn).any(available) {
            avail += 1;
        }
        if on(&nn).any(is_current) {
            updated += 1;
        }
    }
    let misscheduled = nodes
        .iter()
        .filter(|n| !eligible.iter().any(|e| e.name_any() == n.name_any()))
        .filter(|n| on(&n.name_any()).next().is_some())
        .count();
    let status = json!({
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": current,
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "numberAvailable": avail,
        "numberUnavailable": (desired - avail).max(0),
        "updatedNumberScheduled": updated,
        "observedGeneration": ds.metadata.generation,
    });
    let cur = serde_json::to_value(&ds.status).unwrap_or_default();
    if status.as_object().is_some_and(|m| {
        m.iter().any(|(k, v)| {
            cur.get(k).and_then(|x| x.as_i64()).unwrap_or(0) != v.as_i64().unwrap_or(0)
        })
    }) {
        let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
        util::patch_status(&api, &name, status).await?;
    }
    Ok(match recheck {
        Some(d) => Action::requeue(d.min(Duration::from_secs(300))),
        None => Action::await_change(),
    })
}

async fn create_pod(
    ctx: &Ctx,
    ds: &DaemonSet,
    api: &Api<Pod>,
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    hash: &str,
    node: &str,
) -> Result<()> {
    let name = ds.name_any();
    let mut pod = util::pod_from_template(
        template,
        util::controller_ref(ds),
        Some(util::generate_name(&name)),
        None,
    );
    pod.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(REVISION_HASH_LABEL.into(), hash.into());
    if let Some(spec) = pod.spec.as_mut() {
        let host_network = spec.host_network == Some(true);
        let tols = spec.tolerations.get_or_insert_with(Vec::new);
        for t in default_tolerations(host_network) {
            if !tols.iter().any(|x| x.key == t.key && x.effect == t.effect) {
                tols.push(t);
            }
        }
        // What Kubernetes' DaemonSet controller pins the pod with; nodeName binds it
        // directly so the pod does not wait for the scheduler.
        let term = NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
        };
        let affinity = spec.affinity.get_or_insert_with(Affinity::default);
        let na = affinity
            .node_affinity
            .get_or_insert_with(NodeAffinity::default);
        na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
            node_selector_terms: vec![term],
        });
        spec.node_name = Some(node.into());
    }
    match api.create(&PostParams::default(), &pod).await {
        Ok(p) => {
            ctx.recorder
                .event(
                    ds,
                    false,
                    "SuccessfulCreate",
                    format!("Created pod: {}", p.name_any()),
                )
                .await;
            Ok(())
        }
        Err(e) => {
            ctx.recorder
                .event(ds, true, "FailedCreate", format!("Error creating: {e}"))
                .await;
            Err(e.into())
        }
    }
}

async fn delete_pod(ctx: &Ctx, ds: &DaemonSet, api: &Api<Pod>, p: &Pod) -> Result<()> {
    util::delete_quiet(api, &p.name_any()).await?;
    ctx.recorder
        .event(
            ds,
            false,
            "SuccessfulDelete",
            format!("Deleted pod: {}", p.name_any()),
        )
        .await;
    Ok(())
}
