//! The default ClusterRoles and ClusterRoleBindings kube-apiserver creates on start
//! (its `bootstrappolicy`), and their reconciliation into the store: missing objects are
//! created; objects annotated `rbac.authorization.kubernetes.io/autoupdate: "true"` get
//! back any rule or subject they lost (added, never removed, as kube-apiserver does).

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{
    AggregationRule, ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde_json::Value;

use super::rules::{rule, url_rule};
use crate::store::{Store, StoreError};

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const EVENTS_WRITE: &[&str] = &["create", "patch", "update"];
const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";

/// What a kubelet may do (the `system:node` role; the Node authorizer grants it to each
/// `system:node:<name>` in `system:nodes`).
pub fn node_rules() -> Vec<PolicyRule> {
    vec![
        rule(&["create", "get", "list", "watch"], &[""], &["nodes"]),
        rule(&["patch", "update"], &[""], &["nodes/status"]),
        rule(&["delete", "patch", "update"], &[""], &["nodes"]),
        rule(EVENTS_WRITE, &["", "events.k8s.io"], &["events"]),
        rule(READ, &[""], &["pods"]),
        rule(&["create", "delete"], &[""], &["pods"]),
        rule(&["patch", "update"], &[""], &["pods/status"]),
        rule(&["create"], &[""], &["pods/eviction"]),
        rule(
            READ,
            &[""],
            &["services", "endpoints", "configmaps", "secrets"],
        ),
        rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
        rule(
            &["get"],
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        rule(
            &["get", "update", "patch"],
            &[""],
            &["persistentvolumeclaims/status"],
        ),
        rule(&["get"], &[""], &["serviceaccounts"]),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews", "localsubjectaccessreviews"],
        ),
        rule(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        ),
        rule(
            &["get", "create", "update", "patch", "delete"],
            &["coordination.k8s.io"],
            &["leases"],
        ),
        rule(&["get"], &["storage.k8s.io"], &["volumeattachments"]),
        rule(READ, &["storage.k8s.io"], &["csidrivers", "csinodes"]),
        rule(READ, &["node.k8s.io"], &["runtimeclasses"]),
    ]
}

fn view_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            READ,
            &[""],
            &[
                "pods",
                "pods/log",
                "pods/status",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "replicationcontrollers/status",
                "serviceaccounts",
                "services",
                "services/status",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "configmaps",
                "bindings",
                "events",
                "limitranges",
                "namespaces",
                "namespaces/status",
                "resourcequotas",
                "resourcequotas/status",
            ],
        ),
        rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
        rule(
            READ,
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
        ),
        rule(
            READ,
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        rule(
            READ,
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
        ),
        rule(
            READ,
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
        rule(
            READ,
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
        ),
    ]
}

fn edit_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            READ,
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "secrets",
                "services/proxy",
            ],
        ),
        rule(&["impersonate"], &[""], &["serviceaccounts"]),
        rule(
            WRITE,
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
            ],
        ),
        rule(
            &["create"],
            &[""],
            &["pods/eviction", "serviceaccounts/token"],
        ),
        rule(
            WRITE,
            &[""],
            &[
                "configmaps",
                "events",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
        ),
        rule(
            WRITE,
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
        ),
        rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
        rule(WRITE, &["batch"], &["cronjobs", "jobs"]),
        rule(
            WRITE,
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
        ),
        rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
        rule(WRITE, &["discovery.k8s.io"], &["endpointslices"]),
    ]
}

fn admin_rules() -> Vec<PolicyRule> {
    let mut all_verbs: Vec<&str> = READ.to_vec();
    all_verbs.extend_from_slice(WRITE);
    vec![
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
        ),
        rule(
            &all_verbs,
            &["rbac.authorization.k8s.io"],
            &["rolebindings", "roles"],
        ),
    ]
}

fn discovery_urls() -> Vec<&'static str> {
    vec![
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
        "/healthz",
        "/livez",
        "/openapi",
        "/openapi/*",
        "/readyz",
        "/version",
        "/version/",
    ]
}

fn labels(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([(
        "kubernetes.io/bootstrapping".to_string(),
        "rbac-defaults".to_string(),
    )]);
    for (k, v) in extra {
        l.insert(k.to_string(), v.to_string());
    }
    l
}

fn meta(name: &str, extra_labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(labels(extra_labels)),
        annotations: Some(BTreeMap::from([(
            AUTOUPDATE.to_string(),
            "true".to_string(),
        )])),
        ..Default::default()
    }
}

fn role(name: &str, rules: Vec<PolicyRule>) -> ClusterRole {
    ClusterRole {
        metadata: meta(name, &[]),
        rules: Some(rules),
        aggregation_rule: None,
    }
}

fn aggregate_to(name: &str, targets: &[&str], rules: Vec<PolicyRule>) -> ClusterRole {
    let keys: Vec<String> = targets
        .iter()
        .map(|t| format!("rbac.authorization.k8s.io/aggregate-to-{t}"))
        .collect();
    let pairs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "true")).collect();
    ClusterRole {
        metadata: meta(name, &pairs),
        rules: Some(rules),
        aggregation_rule: None,
    }
}

fn aggregated(name: &str, rules: Vec<PolicyRule>, extra_labels: &[(&str, &str)]) -> ClusterRole {
    let selector = LabelSelector {
        match_labels: Some(BTreeMap::from([(
            format!("rbac.authorization.k8s.io/aggregate-to-{name}"),
            "true".to_string(),
        )])),
        ..Default::default()
    };
    ClusterRole {
        metadata: meta(name, extra_labels),
        rules: Some(rules),
        aggregation_rule: Some(AggregationRule {
            cluster_role_selectors: Some(vec![selector]),
        }),
    }
}

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<ClusterRole> {
    let (view, edit, admin) = (view_rules(), edit_rules(), admin_rules());
    let all_view = view.clone();
    let all_edit: Vec<PolicyRule> = view.iter().chain(&edit).cloned().collect();
    let all_admin: Vec<PolicyRule> = all_edit.iter().chain(&admin).cloned().collect();
    let events = |mut v: Vec<PolicyRule>| {
        v.push(rule(EVENTS_WRITE, &["", "events.k8s.io"], &["events"]));
        v
    };
    vec![
        role(
            "cluster-admin",
            vec![rule(&["*"], &["*"], &["*"]), url_rule(&["*"], &["*"])],
        ),
        aggregated("admin", all_admin, &[]),
        aggregated(
            "edit",
            all_edit,
            &[("rbac.authorization.k8s.io/aggregate-to-admin", "true")],
        ),
        aggregated(
            "view",
            all_view,
            &[
                ("rbac.authorization.k8s.io/aggregate-to-admin", "true"),
                ("rbac.authorization.k8s.io/aggregate-to-edit", "true"),
            ],
        ),
        aggregate_to("system:aggregate-to-admin", &["admin"], admin),
        aggregate_to("system:aggregate-to-edit", &["admin", "edit"], edit),
        aggregate_to("system:aggregate-to-view", &["admin", "edit", "view"], view),
        role(
            "system:discovery",
            vec![url_rule(&["get"], &discovery_urls())],
        ),
        role(
            "system:public-info-viewer",
            vec![url_rule(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        role(
            "system:basic-user",
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        role("system:node", node_rules()),
        role(
            "system:node-proxier",
            events(vec![
                rule(&["list", "watch"], &[""], &["services", "endpoints"]),
                rule(READ, &[""], &["nodes"]),
                rule(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ]),
        ),
        // hull's proxy is kube-proxy and the cluster DNS in one (CoreDNS's
        // system:coredns reads pods and namespaces); it also publishes LoadBalancer status.
        role(
            "system:hull-proxy",
            events(vec![
                rule(
                    &["list", "watch"],
                    &[""],
                    &["services", "endpoints", "pods", "namespaces"],
                ),
                rule(READ, &[""], &["nodes"]),
                rule(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
                rule(&["patch", "update"], &[""], &["services/status"]),
            ]),
        ),
        role(
            "system:node-bootstrapper",
            vec![rule(
                &["create", "get", "list", "watch"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
            )],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            vec![rule(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/nodeclient"],
            )],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            vec![rule(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeclient"],
            )],
        ),
        role(
            "system:kube-scheduler",
            events(vec![
                rule(&["create"], &["coordination.k8s.io"], &["leases"]),
                rule(&["get", "update"], &["coordination.k8s.io"], &["leases"]),
                rule(
                    READ,
                    &[""],
                    &[
                        "nodes",
                        "namespaces",
                        "persistentvolumeclaims",
                        "persistentvolumes",
                    ],
                ),
                rule(&["delete", "get", "list", "watch"], &[""], &["pods"]),
                rule(&["create"], &[""], &["bindings", "pods/binding"]),
                rule(&["patch", "update"], &[""], &["pods/status"]),
                rule(
                    &["list", "watch"],
                    &[""],
                    &["replicationcontrollers", "services"],
                ),
                rule(
                    &["list", "watch"],
                    &["apps"],
                    &["replicasets", "statefulsets"],
                ),
                rule(&["list", "watch"], &["policy"], &["poddisruptionbudgets"]),
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
                rule(
                    &["list", "watch"],
                    &["storage.k8s.io"],
                    &[
                        "csidrivers",
                        "csinodes",
                        "csistoragecapacities",
                        "storageclasses",
                    ],
                ),
            ]),
        ),
        role(
            "system:kube-controller-manager",
            events(vec![
                rule(&["create"], &["coordination.k8s.io"], &["leases"]),
                rule(&["get", "update"], &["coordination.k8s.io"], &["leases"]),
                rule(&["create"], &[""], &["secrets", "serviceaccounts"]),
                rule(&["delete"], &[""], &["secrets"]),
                rule(
                    &["get"],
                    &[""],
                    &["configmaps", "namespaces", "secrets", "serviceaccounts"],
                ),
                rule(&["update"], &[""], &["secrets", "serviceaccounts"]),
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
                rule(&["list", "watch"], &["*"], &["*"]),
                rule(&["create"], &[""], &["serviceaccounts/token"]),
            ]),
        ),
    ]
}

fn binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(name, &[]),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(
            subjects
                .iter()
                .map(|(kind, name)| Subject {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: kind.to_string(),
                    name: name.to_string(),
                    namespace: None,
                })
                .collect(),
        ),
    }
}

/// The default ClusterRoleBindings (plus hull's three for node bootstrap, which kubeadm
/// creates as `kubeadm:*`).
pub fn cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    let auth = ("Group", "system:authenticated");
    vec![
        binding(
            "cluster-admin",
            "cluster-admin",
            &[("Group", "system:masters")],
        ),
        binding("system:discovery", "system:discovery", &[auth]),
        binding("system:basic-user", "system:basic-user", &[auth]),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[auth, ("Group", "system:unauthenticated")],
        ),
        binding(
            "system:node-proxier",
            "system:node-proxier",
            &[("User", "system:kube-proxy")],
        ),
        binding(
            "hull:proxy",
            "system:hull-proxy",
            &[("User", "system:kube-proxy")],
        ),
        binding(
            "system:kube-scheduler",
            "system:kube-scheduler",
            &[("User", "system:kube-scheduler")],
        ),
        binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            &[("User", "system:kube-controller-manager")],
        ),
        binding(
            "hull:kubelet-bootstrap",
            "system:node-bootstrapper",
            &[("Group", "system:bootstrappers")],
        ),
        binding(
            "hull:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[("Group", "system:bootstrappers")],
        ),
        binding(
            "hull:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[("Group", "system:nodes")],
        ),
    ]
}

fn stored(mut v: Value, api_kind: &str) -> Value {
    v["apiVersion"] = "rbac.authorization.k8s.io/v1".into();
    v["kind"] = api_kind.into();
    v["metadata"]["uid"] = uuid::Uuid::new_v4().to_string().into();
    v["metadata"]["creationTimestamp"] = crate::apiserver::rest::object::now_rfc3339().into();
    v
}

/// Adds to `live[field]` the array elements of `want[field]` it lacks; true if it changed.
fn add_missing(live: &mut Value, want: &Value, field: &str) -> bool {
    let Some(wanted) = want.get(field).and_then(Value::as_array) else {
        return false;
    };
    let mut changed = false;
    if !live.get(field).is_some_and(Value::is_array) {
        live[field] = Value::Array(Vec::new());
    }
    for w in wanted {
        if let Some(arr) = live.get_mut(field).and_then(Value::as_array_mut)
            && !arr.contains(w)
        {
            arr.push(w.clone());
            changed = true;
        }
    }
    changed
}

async fn reconcile_one(
    store: &dyn Store,
    key: String,
    want: Value,
    fields: &[&str],
) -> Result<(), StoreError> {
    loop {
        match store.get(&key).await? {
            None => match store
                .create(&key, serde_json::to_vec(&want).unwrap_or_default())
                .await
            {
                Ok(_) => return Ok(()),
                Err(StoreError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e),
            },
            Some(kv) => {
                let Ok(mut live) = serde_json::from_slice::<Value>(&kv.value) else {
                    return Ok(());
                };
                if live["metadata"]["annotations"][AUTOUPDATE].as_str() == Some("false") {
                    return Ok(());
                }
                let mut changed = false;
                for f in fields {
                    changed |= add_missing(&mut live, &want, f);
                }
                if !changed {
                    return Ok(());
                }
                match store
                    .update(
                        &key,
                        serde_json::to_vec(&live).unwrap_or_default(),
                        kv.mod_revision,
                    )
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// Roles in kube-system: the proxy's own DNS Service and its per-node EndpointSlices
/// (`kube-system/kube-dns`), and nothing else it may write.
fn kube_system_roles() -> Vec<(String, Value, String, Value)> {
    let role = k8s_openapi::api::rbac::v1::Role {
        metadata: meta("system:hull-proxy-dns", &[]),
        rules: Some(vec![
            rule(&["get", "create", "update", "patch"], &[""], &["services"]),
            rule(
                &["get", "create", "update", "patch", "delete"],
                &["discovery.k8s.io"],
                &["endpointslices"],
            ),
        ]),
    };
    let binding = k8s_openapi::api::rbac::v1::RoleBinding {
        metadata: meta("system:hull-proxy-dns", &[]),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "system:hull-proxy-dns".into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: "system:kube-proxy".into(),
            namespace: None,
        }]),
    };
    let mut r = stored(serde_json::to_value(&role).unwrap_or_default(), "Role");
    r["metadata"]["namespace"] = "kube-system".into();
    let mut b = stored(
        serde_json::to_value(&binding).unwrap_or_default(),
        "RoleBinding",
    );
    b["metadata"]["namespace"] = "kube-system".into();
    vec![(
        "/registry/roles/kube-system/system:hull-proxy-dns".into(),
        r,
        "/registry/rolebindings/kube-system/system:hull-proxy-dns".into(),
        b,
    )]
}

/// Creates or repairs every default ClusterRole and ClusterRoleBinding.
pub async fn reconcile(store: &dyn Store) -> Result<(), StoreError> {
    for r in cluster_roles() {
        let name = r.metadata.name.clone().unwrap_or_default();
        let v = stored(serde_json::to_value(&r).unwrap_or_default(), "ClusterRole");
        reconcile_one(
            store,
            format!("/registry/clusterroles/{name}"),
            v,
            &["rules"],
        )
        .await?;
    }
    for b in cluster_role_bindings() {
        let name = b.metadata.name.clone().unwrap_or_default();
        let v = stored(
            serde_json::to_value(&b).unwrap_or_default(),
            "ClusterRoleBinding",
        );
        reconcile_one(
            store,
            format!("/registry/clusterrolebindings/{name}"),
            v,
            &["subjects"],
        )
        .await?;
    }
    for (role_key, role, binding_key, binding) in kube_system_roles() {
        reconcile_one(store, role_key, role, &["rules"]).await?;
        reconcile_one(store, binding_key, binding, &["subjects"]).await?;
    }
    Ok(())
}
