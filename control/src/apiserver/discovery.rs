//! Discovery documents built from the registry: the legacy `/api`, `/apis`,
//! `/api/v1`, `/apis/<g>/<v>` lists and the aggregated `apidiscovery.k8s.io/v2` form that
//! kubectl 1.35 asks for first.

use serde_json::{Value, json};

use super::registry::{self, ResourceInfo, VERBS};

/// The media type of aggregated discovery, as clients send it in `Accept`.
pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the `Accept` header asks for aggregated discovery (v2).
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let p: String = part.chars().filter(|c| !c.is_whitespace()).collect();
        p.contains("g=apidiscovery.k8s.io")
            && p.contains("v=v2;")
            && p.contains("as=APIGroupDiscoveryList")
            || p.ends_with("g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")
    })
}

fn sub_verbs(sub: &str) -> &'static [&'static str] {
    match sub {
        "binding" | "eviction" | "token" => &["create"],
        "finalize" => &["update"],
        _ => &["get", "patch", "update"],
    }
}

fn sub_kind(r: &ResourceInfo, sub: &str) -> (&'static str, &'static str, &'static str) {
    match sub {
        "scale" => ("autoscaling", "v1", "Scale"),
        "binding" => ("", "v1", "Binding"),
        "eviction" => ("policy", "v1", "Eviction"),
        "token" => ("authentication.k8s.io", "v1", "TokenRequest"),
        _ => (r.group, r.version, r.kind),
    }
}

/// `GET /api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// The create-only review resources of a group/version (not stored, so not in the registry).
fn reviews(
    group: &str,
    version: &str,
) -> impl Iterator<Item = &'static (&'static str, &'static str, &'static str, bool)> {
    let v1 = version == "v1";
    super::reviews::RESOURCES
        .iter()
        .filter(move |(g, ..)| v1 && *g == group)
}

fn non_core_groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut groups: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    let review_groups = super::reviews::RESOURCES.iter().map(|(g, ..)| (*g, "v1"));
    let mut seen = Vec::new();
    let all: Vec<(&'static str, &'static str)> = registry::group_versions()
        .into_iter()
        .chain(review_groups)
        .filter(|gv| {
            let new = !seen.contains(gv);
            seen.push(*gv);
            new
        })
        .collect();
    for (g, v) in all {
        if g.is_empty() {
            continue;
        }
        match groups.iter_mut().find(|(name, _)| *name == g) {
            Some((_, vs)) => vs.push(v),
            None => groups.push((g, vec![v])),
        }
    }
    groups
}

/// `GET /apis`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = non_core_groups()
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({
                "name": g,
                "versions": versions,
                "preferredVersion": versions[0].clone(),
            })
        })
        .chain(std::iter::once(super::rest::proxy::metrics_group_entry()))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>`: one group's versions, or None if not served.
pub fn api_group(group: &str) -> Option<Value> {
    let (g, vs) = non_core_groups().into_iter().find(|(g, _)| *g == group)?;
    let versions: Vec<Value> = vs
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    Some(json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": g,
        "versions": versions,
        "preferredVersion": versions[0].clone(),
    }))
}

/// `GET /api/v1` or `/apis/<g>/<v>`: the resource list, or None if not served.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in registry::all()
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut main = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
        });
        if !r.short_names.is_empty() {
            main["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            main["categories"] = json!(r.categories);
        }
        resources.push(main);
        for sub in r.subresources {
            let (g, v, k) = sub_kind(r, sub);
            let mut s = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": k,
                "verbs": sub_verbs(sub),
            });
            if (g, v) != (r.group, r.version) {
                s["group"] = json!(g);
                s["version"] = json!(v);
            }
            resources.push(s);
        }
    }
    for (_, plural, kind, namespaced) in reviews(group, version) {
        resources.push(json!({
            "name": plural, "singularName": kind.to_lowercase(), "namespaced": namespaced,
            "kind": kind, "verbs": ["create"],
        }));
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

fn aggregated_version(group: &str, version: &str) -> Value {
    let review_resources = reviews(group, version).map(|(g, plural, kind, namespaced)| {
        json!({
            "resource": plural,
            "responseKind": {"group": g, "version": "v1", "kind": kind},
            "scope": if *namespaced { "Namespaced" } else { "Cluster" },
            "singularResource": kind.to_lowercase(),
            "verbs": ["create"],
        })
    });
    let resources: Vec<Value> = registry::all()
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            let subs: Vec<Value> = r
                .subresources
                .iter()
                .map(|sub| {
                    let (g, v, k) = sub_kind(r, sub);
                    json!({
                        "subresource": sub,
                        "responseKind": {"group": g, "version": v, "kind": k},
                        "verbs": sub_verbs(sub),
                    })
                })
                .collect();
            let mut res = json!({
                "resource": r.plural,
                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": VERBS,
            });
            if !r.short_names.is_empty() {
                res["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                res["categories"] = json!(r.categories);
            }
            if !subs.is_empty() {
                res["subresources"] = Value::Array(subs);
            }
            res
        })
        .chain(review_resources)
        .collect();
    json!({"version": version, "resources": resources, "freshness": "Current"})
}

/// Aggregated discovery for `/api` (core) or `/apis` (every other group).
pub fn aggregated(core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![json!({"metadata": {"name": ""}, "versions": [aggregated_version("", "v1")]})]
    } else {
        non_core_groups()
            .into_iter()
            .map(|(g, vs)| {
                let versions: Vec<Value> = vs.iter().map(|v| aggregated_version(g, v)).collect();
                json!({"metadata": {"name": g}, "versions": versions})
            })
            .chain(std::iter::once(super::rest::proxy::metrics_aggregated()))
            .collect()
    };
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_short_names_categories_and_subresources() {
        let core = api_resource_list("", "v1").expect("core served");
        let pods = core["resources"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == "pods"))
            .expect("pods listed");
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["categories"], json!(["all"]));
        let apps = api_resource_list("apps", "v1").expect("apps served");
        let scale = apps["resources"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == "deployments/scale"))
            .expect("scale listed");
        assert_eq!(scale["group"], "autoscaling");
        assert!(api_resource_list("apps", "v9").is_none());
        let agg = aggregated(false);
        assert!(
            agg["items"]
                .as_array()
                .is_some_and(|i| i.iter().any(|g| g["metadata"]["name"] == "batch"))
        );
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json"));
    }
}
