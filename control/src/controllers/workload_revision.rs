//! ControllerRevisions for DaemonSets and StatefulSets: one immutable snapshot of the
//! pod template per revision, named `<owner>-<hash>`, which `kubectl rollout history`
//! lists and `kubectl rollout undo` restores; pods carry the hash in their
//! `controller-revision-hash` label.

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, PostParams};
use kube::core::Selector;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::workload_util::{self as util, Result};

pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";

/// The revision data for a pod template, in the shape Kubernetes stores it (a strategic
/// merge patch replacing the template).
pub fn template_data(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(o) = t.as_object_mut() {
        o.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

fn data_of(r: &ControllerRevision) -> Value {
    r.data.as_ref().map(|d| d.0.clone()).unwrap_or(Value::Null)
}

pub fn hash_of(data: &Value, collisions: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(data).unwrap_or_default();
    if let Some(c) = collisions {
        bytes.extend_from_slice(&c.to_le_bytes());
    }
    util::safe_encode(&util::fnv32a(&bytes).to_string())
}

/// The owner's revisions (oldest first) and the one matching `data` — created, or
/// renumbered to the newest when an old template comes back — plus its hash.
pub async fn sync<K>(
    api: &Api<ControllerRevision>,
    owner: &K,
    sel: &Selector,
    template_labels: &std::collections::BTreeMap<String, String>,
    data: Value,
    collisions: Option<i32>,
    history_limit: usize,
) -> Result<(ControllerRevision, String)>
where
    K: Resource<DynamicType = ()>,
{
    let all = util::list_in(api).await?;
    let mut owned = util::claim(api, owner, sel, all).await?;
    owned.sort_by_key(|r| r.revision);
    let max = owned.last().map(|r| r.revision).unwrap_or(0);
    let name = owner.meta().name.clone().unwrap_or_default();
    let current = if let Some(r) = owned.iter().find(|r| data_of(r) == data).cloned() {
        if r.revision < max {
            let mut bumped = r.clone();
            bumped.revision = max + 1;
            api.replace(&r.name_any(), &PostParams::default(), &bumped)
                .await?
        } else {
            r
        }
    } else {
        let hash = hash_of(&data, collisions);
        let mut labels = template_labels.clone();
        labels.insert(REVISION_HASH_LABEL.into(), hash.clone());
        let rev = ControllerRevision {
            metadata: ObjectMeta {
                name: Some(format!("{name}-{hash}")),
                labels: Some(labels),
                owner_references: Some(vec![util::controller_ref(owner)]),
                ..Default::default()
            },
            data: Some(RawExtension(data.clone())),
            revision: max + 1,
        };
        match api.create(&PostParams::default(), &rev).await {
            Ok(r) => r,
            Err(kube::Error::Api(s)) if s.code == 409 => api.get(&format!("{name}-{hash}")).await?,
            Err(e) => return Err(e.into()),
        }
    };
    // History: keep the newest `history_limit` besides the current one.
    let old: Vec<&ControllerRevision> = owned
        .iter()
        .filter(|r| r.name_any() != current.name_any())
        .collect();
    let extra = old.len().saturating_sub(history_limit);
    for r in old.into_iter().take(extra) {
        util::delete_quiet(api, &r.name_any()).await?;
    }
    let hash = current
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_HASH_LABEL).cloned())
        .unwrap_or_else(|| hash_of(&data, collisions));
    Ok((current, hash))
}
