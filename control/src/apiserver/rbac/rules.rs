//! RBAC rule and subject matching, as kube-apiserver's `rbac/validation` does it: verbs,
//! API groups, `resource/subresource` (and `*/subresource`), resource names, and
//! non-resource URLs with a trailing `*` wildcard.

use k8s_openapi::api::rbac::v1::{PolicyRule, Subject};

use crate::apiserver::auth::{Attributes, UserInfo};

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|v| v == "*" || v == want)
}

fn resource_matches(rule: &PolicyRule, resource: &str, sub: Option<&str>) -> bool {
    let Some(resources) = &rule.resources else {
        return false;
    };
    let combined = match sub {
        Some(s) => format!("{resource}/{s}"),
        None => resource.to_string(),
    };
    resources.iter().any(|r| {
        r == "*"
            || *r == combined
            || sub.is_some_and(|s| r.strip_prefix("*/").is_some_and(|rs| rs == s))
    })
}

fn name_matches(rule: &PolicyRule, name: Option<&str>) -> bool {
    match &rule.resource_names {
        None => true,
        Some(names) if names.is_empty() => true,
        Some(names) => name.is_some_and(|n| names.iter().any(|x| x == n)),
    }
}

fn url_matches(rule: &PolicyRule, path: &str) -> bool {
    rule.non_resource_urls.as_ref().is_some_and(|urls| {
        urls.iter().any(|u| {
            u == "*" || u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
        })
    })
}

/// Whether `rule` allows the request `attrs`.
pub fn allows(rule: &PolicyRule, attrs: &Attributes<'_>) -> bool {
    if !has(&rule.verbs, attrs.verb) {
        return false;
    }
    if let Some(path) = attrs.path {
        return url_matches(rule, path);
    }
    rule.api_groups
        .as_ref()
        .is_some_and(|g| has(g, attrs.group))
        && resource_matches(rule, attrs.resource, attrs.subresource)
        && name_matches(rule, attrs.name)
}

/// Whether a binding's subject is this user. `binding_ns` is the RoleBinding's namespace
/// (a ServiceAccount subject without a namespace means the binding's own).
pub fn subject_matches(s: &Subject, user: &UserInfo, binding_ns: Option<&str>) -> bool {
    match s.kind.as_str() {
        "User" => s.name == user.name,
        "Group" => user.groups.contains(&s.name),
        "ServiceAccount" => {
            let ns = s
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .or(binding_ns)
                .unwrap_or("");
            user.name == format!("system:serviceaccount:{ns}:{}", s.name)
        }
        _ => false,
    }
}

/// Builds a rule from short lists (for the built-in roles).
pub fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        verbs: v(verbs),
        api_groups: Some(v(groups)),
        resources: Some(v(resources)),
        ..Default::default()
    }
}

/// A non-resource URL rule.
pub fn url_rule(verbs: &[&str], urls: &[&str]) -> PolicyRule {
    let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        verbs: v(verbs),
        non_resource_urls: Some(v(urls)),
        ..Default::default()
    }
}

/// Whether every request `covered` allows is also allowed by some rule in `held`
/// (RBAC's escalation check: you may only grant what you have).
pub fn covers(held: &[PolicyRule], covered: &PolicyRule) -> bool {
    let verbs = &covered.verbs;
    if let Some(urls) = &covered.non_resource_urls {
        return urls.iter().all(|u| {
            verbs.iter().all(|v| {
                held.iter().any(|h| {
                    has(&h.verbs, v)
                        && h.non_resource_urls.as_ref().is_some_and(|hu| {
                            hu.iter().any(|x| {
                                x == "*"
                                    || x == u
                                    || x.strip_suffix('*').is_some_and(|p| {
                                        u.strip_suffix('*').unwrap_or(u).starts_with(p)
                                    })
                            })
                        })
                })
            })
        });
    }
    let groups = covered.api_groups.clone().unwrap_or_default();
    let resources = covered.resources.clone().unwrap_or_default();
    let names = covered.resource_names.clone().unwrap_or_default();
    groups.iter().all(|g| {
        resources.iter().all(|r| {
            verbs.iter().all(|v| {
                held.iter().any(|h| {
                    has(&h.verbs, v)
                        && h.api_groups.as_ref().is_some_and(|hg| has(hg, g))
                        && h.resources.as_ref().is_some_and(|hr| {
                            hr.iter().any(|x| {
                                x == "*" || x == r || (x.starts_with("*/") && r.ends_with(&x[1..]))
                            })
                        })
                        && match &h.resource_names {
                            None => true,
                            Some(hn) if hn.is_empty() => true,
                            Some(hn) => !names.is_empty() && names.iter().all(|n| hn.contains(n)),
                        }
                })
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs<'a>(
        verb: &'a str,
        group: &'a str,
        res: &'a str,
        sub: Option<&'a str>,
    ) -> Attributes<'a> {
        Attributes {
            verb,
            group,
            resource: res,
            subresource: sub,
            namespace: Some("default"),
            name: Some("x"),
            path: None,
        }
    }

    #[test]
    fn rules_match_like_kubernetes() {
        let r = rule(&["get", "list"], &[""], &["pods", "pods/log"]);
        assert!(allows(&r, &attrs("get", "", "pods", None)));
        assert!(allows(&r, &attrs("get", "", "pods", Some("log"))));
        assert!(!allows(&r, &attrs("get", "", "pods", Some("exec"))));
        assert!(!allows(&r, &attrs("delete", "", "pods", None)));
        assert!(!allows(&r, &attrs("get", "apps", "pods", None)));
        let star = rule(&["*"], &["*"], &["*/scale"]);
        assert!(allows(
            &star,
            &attrs("update", "apps", "deployments", Some("scale"))
        ));
        assert!(!allows(
            &star,
            &attrs("update", "apps", "deployments", None)
        ));
        let mut named = rule(&["get"], &[""], &["configmaps"]);
        named.resource_names = Some(vec!["x".into()]);
        assert!(allows(&named, &attrs("get", "", "configmaps", None)));
        let mut other = attrs("get", "", "configmaps", None);
        other.name = Some("y");
        assert!(!allows(&named, &other));
        let u = url_rule(&["get"], &["/healthz", "/apis/*"]);
        let mut p = attrs("get", "", "", None);
        p.path = Some("/apis/apps/v1");
        assert!(allows(&u, &p));
        p.path = Some("/api");
        assert!(!allows(&u, &p));
    }

    #[test]
    fn escalation_check_needs_every_granted_permission() {
        let held = vec![rule(&["get", "list"], &[""], &["pods"])];
        assert!(covers(&held, &rule(&["get"], &[""], &["pods"])));
        assert!(!covers(&held, &rule(&["delete"], &[""], &["pods"])));
        assert!(!covers(&held, &rule(&["get"], &["apps"], &["pods"])));
        assert!(covers(
            &[rule(&["*"], &["*"], &["*"])],
            &rule(&["*"], &["apps"], &["*"])
        ));
        assert!(!covers(&held, &rule(&["get"], &[""], &["*"])));
    }
}
