//! The ResourceQuota controller: `status.hard` mirrors `spec.hard` and `status.used` is
//! recomputed from the objects in the namespace — when a quota is created or changed, and
//! every [`RESYNC`] (admission charges and releases usage as objects come and go; this is
//! the full recount that corrects any drift, as kube-controller-manager's resync does).
//! Counting rules are admission's ([`crate::admission::quota`]), so both agree.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceQuota;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use kube::discovery::Discovery;
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::util::{self, Queue, SyncResult};
use crate::admission::quantity::Quantity;
use crate::admission::quota;
use crate::manager::{Context, LoopFuture};

pub const NAME: &str = "resourcequota-controller";
pub const RESYNC: Duration = Duration::from_secs(30);

pub fn start(ctx: Arc<Context>) -> LoopFuture {
    Box::pin(run(ctx))
}

async fn run(ctx: Arc<Context>) {
    let queue: Arc<Queue<String>> = Queue::new();
    let q = queue.clone();
    let (quotas, informer) = util::informer(
        Api::<ResourceQuota>::all(ctx.client.clone()),
        watcher::Config::default(),
        move |old: Option<&ResourceQuota>, new: Option<&ResourceQuota>| {
            if let Some(n) = new
                && old.map(|o| &o.spec) != Some(&n.spec)
            {
                q.add(util::key_of(n));
            }
        },
    );
    let resync = {
        let (queue, quotas) = (queue.clone(), quotas.clone());
        async move {
            let _ = quotas.wait_until_ready().await;
            let mut tick = tokio::time::interval(RESYNC);
            loop {
                tick.tick().await;
                for q in quotas.state() {
                    queue.add(util::key_of(q.as_ref()));
                }
            }
        }
    };
    let sync = {
        let ctx = ctx.clone();
        move |key: String| {
            let ctx = ctx.clone();
            async move { sync(&ctx, &key).await }
        }
    };
    let workers = async {
        let _ = quotas.wait_until_ready().await;
        util::run_workers(queue, 2, NAME, sync).await;
    };
    tokio::join!(informer, resync, workers);
}

/// The resource (plural, group) whose objects a quota key counts.
fn resource_of(key: &str) -> Option<(String, String)> {
    if let Some(rest) = key.strip_prefix("count/") {
        return Some(match rest.split_once('.') {
            Some((r, g)) => (r.to_string(), g.to_string()),
            None => (rest.to_string(), String::new()),
        });
    }
    let r = match key {
        "requests.storage" | "persistentvolumeclaims" => "persistentvolumeclaims",
        k if k == "services" || k.starts_with("services.") => "services",
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => key,
        "pods" | "cpu" | "memory" | "ephemeral-storage" => "pods",
        k if k.starts_with("requests.") || k.starts_with("limits.") => "pods",
        _ => return None,
    };
    Some((r.to_string(), String::new()))
}

async fn api_resource(
    client: &kube::Client,
    plural: &str,
    group: &str,
) -> Result<Option<ApiResource>, String> {
    if group.is_empty() {
        return Ok(Some(ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: String::new(),
            plural: plural.into(),
        }));
    }
    let d = Discovery::new(client.clone())
        .filter(&[group])
        .run()
        .await
        .map_err(|e| format!("discovering {group}: {e}"))?;
    Ok(d.get(group).and_then(|g| {
        g.recommended_resources()
            .into_iter()
            .find(|(ar, _)| ar.plural == plural)
            .map(|(ar, _)| ar)
    }))
}

async fn sync(ctx: &Context, key: &str) -> SyncResult {
    let (Some(ns), name) = util::split_key(key) else {
        return Ok(None);
    };
    let api = Api::<ResourceQuota>::namespaced(ctx.client.clone(), ns);
    // Read the quota first: its resourceVersion guards the write against charges made
    // while the objects are counted.
    let Some(mut rq) = api.get_opt(name).await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let rq_json = serde_json::to_value(&rq).map_err(|e| e.to_string())?;
    let hard = rq
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default();
    let mut objects: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
    let mut used = BTreeMap::new();
    for k in hard.keys() {
        let Some((plural, group)) = resource_of(k) else {
            continue;
        };
        let id = (plural.clone(), group.clone());
        if let std::collections::btree_map::Entry::Vacant(slot) = objects.entry(id) {
            let list = match api_resource(&ctx.client, &plural, &group).await? {
                Some(ar) => Api::<DynamicObject>::namespaced_with(ctx.client.clone(), ns, &ar)
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| format!("listing {plural}: {e}"))?
                    .items
                    .into_iter()
                    .filter_map(|o| serde_json::to_value(o).ok())
                    .collect(),
                None => Vec::new(),
            };
            slot.insert(list);
        }
        let mut total = Quantity::zero();
        for obj in objects
            .get(&(plural.clone(), group.clone()))
            .into_iter()
            .flatten()
        {
            if !quota::in_scope(&rq_json, &plural, obj) {
                continue;
            }
            if let Some(q) = quota::usage(&plural, &group, obj).get(k) {
                total = total + *q;
            }
        }
        used.insert(k.clone(), total);
    }
    let current = rq.status.clone().unwrap_or_default();
    let same_used = current.used.as_ref().is_some_and(|u| {
        u.len() == used.len()
            && used.iter().all(|(k, q)| {
                u.get(k)
                    .and_then(|c| Quantity::from_json(&json!(c.0)).ok())
                    .is_some_and(|c| c == *q)
            })
    });
    if same_used && current.hard.as_ref() == Some(&hard) {
        return Ok(None);
    }
    let used_json: BTreeMap<String, Value> = used
        .iter()
        .map(|(k, q)| (k.clone(), json!(q.to_string())))
        .collect();
    rq.status = Some(
        serde_json::from_value(json!({"hard": hard, "used": used_json}))
            .map_err(|e| e.to_string())?,
    );
    match api.replace_status(name, &PostParams::default(), &rq).await {
        Ok(_) => Ok(None),
        // A charge landed meanwhile: count again.
        Err(e) if util::is_conflict(&e) => Ok(Some(Duration::from_millis(50))),
        Err(e) if util::is_not_found(&e) => Ok(None),
        Err(e) => Err(format!("updating the status of quota {key}: {e}")),
    }
}
