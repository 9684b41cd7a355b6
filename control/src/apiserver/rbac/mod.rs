//! Authorization as kube-apiserver runs it with `--authorization-mode=Node,RBAC`:
//! `system:masters` may do everything; the Node authorizer gives each kubelet
//! (`system:node:<name>` in `system:nodes`) what the `system:node` role holds, limited to
//! its own Node and Lease; everyone else gets what their Roles and ClusterRoles grant.
//!
//! Modules: [`rules`] rule and subject matching; [`policy`] the default ClusterRoles and
//! bindings written on start; [`cache`] the RBAC objects kept in memory from the store;
//! [`escalation`] the checks on RBAC writes (grant only what you hold).

pub mod cache;
pub mod escalation;
pub mod policy;
pub mod rules;

use std::sync::Arc;

use axum::http::StatusCode;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use serde_json::json;

use super::auth::{Attributes, Authorizer, UserInfo};
use super::status::{ApiError, qualified};
use cache::{RbacCache, Snapshot};

/// The group whose members bypass authorization (as kube-apiserver's privileged group).
pub const MASTERS: &str = "system:masters";

/// Node, then RBAC (masters short-circuit).
pub struct ClusterAuthorizer {
    pub rbac: Arc<RbacCache>,
}

/// The node a `system:node:<name>` user in `system:nodes` is, if any.
pub fn node_name(user: &UserInfo) -> Option<&str> {
    if !user.groups.iter().any(|g| g == "system:nodes") {
        return None;
    }
    user.name
        .strip_prefix("system:node:")
        .filter(|n| !n.is_empty())
}

/// The Node authorizer: the kubelet's rules, with writes to Nodes and node Leases limited
/// to the kubelet's own (NodeRestriction's core).
fn node_allows(node: &str, attrs: &Attributes<'_>) -> bool {
    if attrs.path.is_some() {
        return false;
    }
    let writes = !matches!(attrs.verb, "get" | "list" | "watch" | "create");
    let own = |n: Option<&str>| n.is_none_or(|n| n == node);
    if attrs.group.is_empty() && attrs.resource == "nodes" && writes && !own(attrs.name) {
        return false;
    }
    if attrs.group == "coordination.k8s.io"
        && attrs.resource == "leases"
        && attrs.namespace == Some("kube-node-lease")
        && writes
        && !own(attrs.name)
    {
        return false;
    }
    // Each node serves cluster DNS for its own pods and publishes that in its own
    // EndpointSlice of kube-system/kube-dns (hull's node-local DNS; see proxy/dns_service).
    if attrs.group == "discovery.k8s.io"
        && attrs.resource == "endpointslices"
        && attrs.namespace == Some("kube-system")
        && attrs.subresource.is_none()
        && attrs.name == Some(format!("kube-dns-{node}").as_str())
        && matches!(attrs.verb, "get" | "create" | "update" | "patch" | "delete")
    {
        return true;
    }
    policy::node_rules().iter().any(|r| rules::allows(r, attrs))
}

fn matches_selector(
    role: &ClusterRole,
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> bool {
    let labels = role.metadata.labels.clone().unwrap_or_default();
    let want = sel.match_labels.clone().unwrap_or_default();
    let exprs_ok = sel.match_expressions.as_ref().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let v = labels.get(&e.key);
            let vals = e.values.clone().unwrap_or_default();
            match e.operator.as_str() {
                "In" => v.is_some_and(|v| vals.contains(v)),
                "NotIn" => v.is_none_or(|v| !vals.contains(v)),
                "Exists" => v.is_some(),
                "DoesNotExist" => v.is_none(),
                _ => false,
            }
        })
    });
    (!want.is_empty() || sel.match_expressions.is_some())
        && want.iter().all(|(k, v)| labels.get(k) == Some(v))
        && exprs_ok
}

/// A ClusterRole's rules, with those of the roles its aggregationRule selects.
fn cluster_role_rules(snap: &Snapshot, role: &ClusterRole) -> Vec<PolicyRule> {
    let mut out = role.rules.clone().unwrap_or_default();
    if let Some(agg) = &role.aggregation_rule {
        for sel in agg.cluster_role_selectors.iter().flatten() {
            for other in snap.cluster_roles.values() {
                if other.metadata.name != role.metadata.name && matches_selector(other, sel) {
                    out.extend(other.rules.clone().unwrap_or_default());
                }
            }
        }
    }
    out
}

/// Every rule that applies to `user` in `namespace` (cluster-wide rules when `None`),
/// and the problems met on the way (bindings to missing roles).
pub fn rules_for(
    snap: &Snapshot,
    user: &UserInfo,
    namespace: Option<&str>,
) -> (Vec<PolicyRule>, Vec<String>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for b in snap.cluster_role_bindings.values() {
        if !b
            .subjects
            .iter()
            .flatten()
            .any(|s| rules::subject_matches(s, user, None))
        {
            continue;
        }
        match snap.cluster_role(&b.role_ref.name) {
            Some(r) => out.extend(cluster_role_rules(snap, r)),
            None => errors.push(format!(
                "clusterrole.rbac.authorization.k8s.io \"{}\" not found",
                b.role_ref.name
            )),
        }
    }
    if let Some(ns) = namespace.filter(|n| !n.is_empty()) {
        let prefix = format!("/registry/rolebindings/{ns}/");
        for (key, b) in &snap.role_bindings {
            if !key.starts_with(&prefix)
                || !b
                    .subjects
                    .iter()
                    .flatten()
                    .any(|s| rules::subject_matches(s, user, Some(ns)))
            {
                continue;
            }
            let name = &b.role_ref.name;
            match b.role_ref.kind.as_str() {
                "ClusterRole" => match snap.cluster_role(name) {
                    Some(r) => out.extend(cluster_role_rules(snap, r)),
                    None => errors.push(format!(
                        "clusterrole.rbac.authorization.k8s.io \"{name}\" not found"
                    )),
                },
                _ => match snap.role(ns, name) {
                    Some(r) => out.extend(r.rules.clone().unwrap_or_default()),
                    None => errors.push(format!(
                        "role.rbac.authorization.k8s.io \"{name}\" not found"
                    )),
                },
            }
        }
    }
    (out, errors)
}

impl ClusterAuthorizer {
    /// Whether RBAC alone allows it (used by the escalation checks too).
    pub fn rbac_allows(&self, user: &UserInfo, attrs: &Attributes<'_>) -> Result<(), String> {
        let snap = self.rbac.read();
        let (rules, errors) = rules_for(&snap, user, attrs.namespace);
        if rules.iter().any(|r| rules::allows(r, attrs)) {
            return Ok(());
        }
        if errors.is_empty() {
            Err(String::new())
        } else {
            Err(format!("RBAC: {}", errors.join(", ")))
        }
    }

    /// Every rule `user` holds in `namespace` (for SelfSubjectRulesReview and escalation).
    pub fn rules(&self, user: &UserInfo, namespace: Option<&str>) -> Vec<PolicyRule> {
        if user.groups.iter().any(|g| g == MASTERS) {
            return vec![
                rules::rule(&["*"], &["*"], &["*"]),
                rules::url_rule(&["*"], &["*"]),
            ];
        }
        let snap = self.rbac.read();
        let mut out = rules_for(&snap, user, namespace).0;
        if node_name(user).is_some() {
            out.extend(policy::node_rules());
        }
        out
    }
}

impl Authorizer for ClusterAuthorizer {
    fn authorize(&self, user: &UserInfo, attrs: &Attributes<'_>) -> Result<(), String> {
        if user.groups.iter().any(|g| g == MASTERS) {
            return Ok(());
        }
        if let Some(node) = node_name(user)
            && node_allows(node, attrs)
        {
            return Ok(());
        }
        self.rbac_allows(user, attrs)
    }
}

/// The 403 kube-apiserver answers, word for word:
/// `pods "x" is forbidden: User "bob" cannot get resource "pods" in API group "" in the namespace "default"`.
pub fn forbidden(user: &UserInfo, attrs: &Attributes<'_>, reason: &str) -> ApiError {
    let suffix = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    if let Some(path) = attrs.path {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "forbidden: User \"{}\" cannot {} path \"{path}\"{suffix}",
                user.name, attrs.verb
            ),
        );
    }
    let resource = match attrs.subresource {
        Some(s) => format!("{}/{s}", attrs.resource),
        None => attrs.resource.to_string(),
    };
    let scope = match attrs.namespace.filter(|n| !n.is_empty()) {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    let what = qualified(attrs.group, attrs.resource);
    let subject = match attrs.name.filter(|n| !n.is_empty()) {
        Some(n) => format!("{what} \"{n}\""),
        None => what,
    };
    let mut e = ApiError::new(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!(
            "{subject} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}{suffix}",
            user.name, attrs.verb, attrs.group
        ),
    );
    let mut details = json!({"group": attrs.group, "kind": attrs.resource});
    if let Some(n) = attrs.name.filter(|n| !n.is_empty()) {
        details["name"] = n.into();
    }
    e.details = Some(Box::new(details));
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            uid: String::new(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn attrs<'a>(
        verb: &'a str,
        group: &'a str,
        res: &'a str,
        ns: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Attributes<'a> {
        Attributes {
            verb,
            group,
            resource: res,
            subresource: None,
            namespace: ns,
            name,
            path: None,
        }
    }

    #[test]
    fn nodes_write_only_their_own_node_and_lease() {
        let a = |verb, res, ns, name, sub| {
            let mut x = attrs(verb, "", res, ns, name);
            x.subresource = sub;
            x
        };
        assert!(node_allows(
            "n1",
            &a("get", "nodes", None, Some("n2"), None)
        ));
        assert!(node_allows(
            "n1",
            &a("patch", "nodes", None, Some("n1"), Some("status"))
        ));
        assert!(!node_allows(
            "n1",
            &a("patch", "nodes", None, Some("n2"), Some("status"))
        ));
        assert!(!node_allows(
            "n1",
            &a("update", "nodes", None, Some("n2"), None)
        ));
        assert!(node_allows("n1", &a("create", "nodes", None, None, None)));
        assert!(node_allows("n1", &a("watch", "pods", None, None, None)));
        assert!(node_allows(
            "n1",
            &a("update", "pods", Some("d"), Some("p"), Some("status"))
        ));
        assert!(!node_allows(
            "n1",
            &a("update", "pods", Some("d"), Some("p"), None)
        ));
        assert!(!node_allows(
            "n1",
            &a("delete", "secrets", Some("d"), Some("s"), None)
        ));
        let mut lease = attrs(
            "update",
            "coordination.k8s.io",
            "leases",
            Some("kube-node-lease"),
            Some("n1"),
        );
        assert!(node_allows("n1", &lease));
        lease.name = Some("n2");
        assert!(!node_allows("n1", &lease));
        assert!(node_name(&user("system:node:n1", &["system:nodes"])) == Some("n1"));
        assert!(node_name(&user("system:node:n1", &[])).is_none());
    }

    #[test]
    fn forbidden_messages_read_like_kubernetes() {
        let u = user("bob", &[]);
        let e = forbidden(&u, &attrs("list", "", "pods", Some("default"), None), "");
        assert_eq!(
            e.message,
            "pods is forbidden: User \"bob\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        let e = forbidden(
            &u,
            &attrs("get", "apps", "deployments", None, Some("web")),
            "",
        );
        assert_eq!(
            e.message,
            "deployments.apps \"web\" is forbidden: User \"bob\" cannot get resource \"deployments\" in API group \"apps\" at the cluster scope"
        );
        let mut p = attrs("get", "", "", None, None);
        p.path = Some("/apis");
        assert_eq!(
            forbidden(&u, &p, "").message,
            "forbidden: User \"bob\" cannot get path \"/apis\""
        );
    }
}
