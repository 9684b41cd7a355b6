//! RBAC's escalation prevention, as kube-apiserver enforces it on writes of RBAC objects:
//! a Role/ClusterRole may only grant what its writer already holds (or the writer has
//! `escalate` on it); a binding may only point at a role whose permissions its writer holds
//! (or the writer has `bind` on that role). Without this, `create rolebindings` would be
//! as good as cluster-admin.

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::Value;

use super::{ClusterAuthorizer, MASTERS, cluster_role_rules, rules};
use crate::apiserver::auth::{Attributes, Authorizer, UserInfo};
use crate::apiserver::status::ApiError;

fn has_verb(
    authz: &ClusterAuthorizer,
    user: &UserInfo,
    verb: &str,
    resource: &str,
    ns: Option<&str>,
    name: &str,
) -> bool {
    let attrs = Attributes {
        verb,
        group: "rbac.authorization.k8s.io",
        resource,
        subresource: None,
        namespace: ns,
        name: Some(name),
        path: None,
    };
    authz.authorize(user, &attrs).is_ok()
}

fn describe(r: &PolicyRule) -> String {
    let q = |v: &Option<Vec<String>>| {
        v.as_ref()
            .map(|l| {
                l.iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    if r.non_resource_urls.is_some() {
        return format!(
            "{{NonResourceURLs:[{}], Verbs:[{}]}}",
            q(&r.non_resource_urls),
            q(&Some(r.verbs.clone()))
        );
    }
    let mut s = format!(
        "{{APIGroups:[{}], Resources:[{}]",
        q(&r.api_groups),
        q(&r.resources)
    );
    if r.resource_names.as_ref().is_some_and(|n| !n.is_empty()) {
        s.push_str(&format!(", ResourceNames:[{}]", q(&r.resource_names)));
    }
    s.push_str(&format!(", Verbs:[{}]}}", q(&Some(r.verbs.clone()))));
    s
}

fn refuse(
    plural: &str,
    name: &str,
    user: &UserInfo,
    missing: &[PolicyRule],
    why: &str,
) -> ApiError {
    let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
    let list: Vec<String> = missing.iter().map(describe).collect();
    ApiError::forbidden(format!(
        "{plural}.rbac.authorization.k8s.io \"{name}\" is forbidden: user \"{}\" (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}{why}",
        user.name,
        groups.join(" "),
        list.join("\n")
    ))
}

fn parse_rules(v: &Value) -> Vec<PolicyRule> {
    serde_json::from_value(v.get("rules").cloned().unwrap_or(Value::Null)).unwrap_or_default()
}

/// Checks a create or update of an RBAC object (`plural` of group rbac.authorization.k8s.io).
pub fn check(
    authz: &ClusterAuthorizer,
    user: &UserInfo,
    plural: &str,
    ns: Option<&str>,
    obj: &Value,
) -> Result<(), ApiError> {
    if user.groups.iter().any(|g| g == MASTERS) {
        return Ok(());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    match plural {
        "roles" | "clusterroles" => {
            if has_verb(authz, user, "escalate", plural, ns, name) {
                return Ok(());
            }
            let held = authz.rules(user, ns);
            if plural == "clusterroles" && obj.get("aggregationRule").is_some_and(|a| !a.is_null())
            {
                let everything = rules::rule(&["*"], &["*"], &["*"]);
                if !rules::covers(&held, &everything) {
                    return Err(refuse(
                        plural,
                        name,
                        user,
                        &[everything],
                        "\nmust have cluster-admin privileges to use an aggregationRule",
                    ));
                }
            }
            let missing: Vec<PolicyRule> = parse_rules(obj)
                .into_iter()
                .filter(|r| !rules::covers(&held, r))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(refuse(plural, name, user, &missing, ""))
            }
        }
        "rolebindings" | "clusterrolebindings" => {
            let kind = obj["roleRef"]["kind"].as_str().unwrap_or("");
            let role = obj["roleRef"]["name"].as_str().unwrap_or("");
            let (role_plural, role_ns) = if kind == "Role" {
                ("roles", ns)
            } else {
                ("clusterroles", None)
            };
            if has_verb(authz, user, "bind", role_plural, role_ns, role) {
                return Ok(());
            }
            let wanted: Vec<PolicyRule> = {
                let snap = authz.rbac.read();
                if kind == "Role" {
                    ns.and_then(|n| snap.role(n, role))
                        .and_then(|r| r.rules.clone())
                        .unwrap_or_default()
                } else {
                    snap.cluster_role(role)
                        .map(|r| cluster_role_rules(&snap, r))
                        .unwrap_or_default()
                }
            };
            let held = authz.rules(user, ns);
            let missing: Vec<PolicyRule> = wanted
                .into_iter()
                .filter(|r| !rules::covers(&held, r))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(refuse(plural, name, user, &missing, ""))
            }
        }
        _ => Ok(()),
    }
}
