//! `/openapi/v2` and `/openapi/v3`: the schemas of what is served, generated once at first
//! use from the `k8s-openapi` types (their `schemars` impls carry the upstream
//! descriptions), with the Kubernetes extensions kubectl reads added on top:
//! `x-kubernetes-group-version-kind` (how `kubectl explain` and kubectl's field-validation
//! probe find a type) and the patch merge keys of the common lists (how client-side
//! `kubectl apply` computes a strategic merge patch).
//!
//! Why generated and not shipped: the upstream spec is megabytes of JSON per release; the
//! types already describe exactly what hull decodes, so the document cannot drift from it.

use std::sync::LazyLock;

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::registry::{self, ResourceInfo};

/// Patch strategies of list fields kubectl relies on (definition, property, strategy, key).
const PATCH_META: &[(&str, &str, &str, &str)] = &[
    ("io.k8s.api.core.v1.PodSpec", "containers", "merge", "name"),
    (
        "io.k8s.api.core.v1.PodSpec",
        "initContainers",
        "merge",
        "name",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        "merge",
        "name",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "volumes",
        "merge,retainKeys",
        "name",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "imagePullSecrets",
        "merge",
        "name",
    ),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", "merge", "ip"),
    (
        "io.k8s.api.core.v1.Container",
        "ports",
        "merge",
        "containerPort",
    ),
    ("io.k8s.api.core.v1.Container", "env", "merge", "name"),
    (
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        "merge",
        "mountPath",
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        "merge",
        "devicePath",
    ),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", "merge", "port"),
    (
        "io.k8s.api.core.v1.PodStatus",
        "conditions",
        "merge",
        "type",
    ),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "conditions",
        "merge",
        "type",
    ),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "addresses",
        "merge",
        "type",
    ),
    (
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        "merge",
        "type",
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        "merge",
        "",
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        "merge",
        "uid",
    ),
];

fn add_extensions(defs: &mut Map<String, Value>, resources: &[&ResourceInfo]) {
    for r in resources {
        let name = (r.schema_name)().to_string();
        if let Some(Value::Object(s)) = defs.get_mut(&name) {
            s.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": r.group, "version": r.version, "kind": r.kind}]),
            );
        }
    }
    for (def, prop, strategy, key) in PATCH_META {
        if let Some(p) = defs
            .get_mut(*def)
            .and_then(|d| d.get_mut("properties"))
            .and_then(|p| p.get_mut(*prop))
            .and_then(Value::as_object_mut)
        {
            p.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
            if !key.is_empty() {
                p.insert("x-kubernetes-patch-merge-key".into(), json!(key));
            }
        }
    }
}

fn query_param(name: &str, ty: &str, v3: bool) -> Value {
    if v3 {
        json!({"name": name, "in": "query", "schema": {"type": ty, "uniqueItems": true}})
    } else {
        json!({"name": name, "in": "query", "type": ty, "uniqueItems": true})
    }
}

/// Path items for one resource: the collection and the item, with the operations and the
/// GVK extension kubectl's query-parameter probe looks for on PATCH.
fn paths_for(r: &ResourceInfo, v3: bool, refs: &str) -> Vec<(String, Value)> {
    let base = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    let scope = if r.namespaced {
        "/namespaces/{namespace}"
    } else {
        ""
    };
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let schema_ref = json!({"$ref": format!("{refs}{}", (r.schema_name)())});
    let body = |desc: &str| -> Value {
        if v3 {
            json!({"description": desc, "content": {"application/json": {"schema": schema_ref}}})
        } else {
            json!({"description": desc, "schema": schema_ref})
        }
    };
    let op = |id: &str, action: &str, params: Vec<Value>| -> Value {
        json!({
            "operationId": format!("{id}{}", r.kind),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
            "parameters": params,
            "responses": {"200": body("OK")},
        })
    };
    let write_params = || {
        vec![
            query_param("dryRun", "string", v3),
            query_param("fieldManager", "string", v3),
            query_param("fieldValidation", "string", v3),
        ]
    };
    let mut patch_params = write_params();
    patch_params.push(query_param("force", "boolean", v3));
    let list_params = vec![
        query_param("labelSelector", "string", v3),
        query_param("fieldSelector", "string", v3),
        query_param("limit", "integer", v3),
        query_param("continue", "string", v3),
        query_param("watch", "boolean", v3),
    ];
    let collection = json!({
        "get": op("list", "list", list_params),
        "post": op("create", "post", write_params()),
        "delete": op("deletecollection", "deletecollection", vec![]),
    });
    let item = json!({
        "get": op("read", "get", vec![]),
        "put": op("replace", "put", write_params()),
        "patch": op("patch", "patch", patch_params),
        "delete": op("delete", "delete", vec![query_param("dryRun", "string", v3)]),
    });
    vec![
        (format!("{base}{scope}/{}", r.plural), collection),
        (format!("{base}{scope}/{}/{{name}}", r.plural), item),
    ]
}

fn generator(v3: bool) -> schemars::SchemaGenerator {
    SchemaSettings::openapi3()
        .with(|s| {
            s.meta_schema = None;
            if !v3 {
                s.definitions_path = "/definitions".into();
            }
        })
        .into_generator()
}

/// The OpenAPI v3 document of one group/version.
fn build_v3(group: &str, version: &str) -> Value {
    let resources: Vec<&ResourceInfo> = registry::all()
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    let mut g = generator(true);
    let mut paths = Map::new();
    for r in &resources {
        (r.schema)(&mut g);
        for (p, item) in paths_for(r, true, "#/components/schemas/") {
            paths.insert(p, item);
        }
    }
    let mut defs = g.take_definitions(true);
    add_extensions(&mut defs, &resources);
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.35.0"},
        "paths": paths,
        "components": {"schemas": defs},
    })
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// FNV-1a, hex: a stable content hash for the `?hash=` the v3 index hands out.
fn content_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016X}")
}

struct V3Docs {
    index: Vec<u8>,
    docs: Vec<(String, Vec<u8>)>,
}

static V3: LazyLock<V3Docs> = LazyLock::new(|| {
    let mut docs = Vec::new();
    let mut index = Map::new();
    for (g, v) in registry::group_versions() {
        let body = serde_json::to_vec(&build_v3(g, v)).unwrap_or_default();
        let path = gv_path(g, v);
        index.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", content_hash(&body))}),
        );
        docs.push((path, body));
    }
    let index = serde_json::to_vec(&json!({"paths": index})).unwrap_or_default();
    V3Docs { index, docs }
});

/// `GET /openapi/v3`: the index of group/version documents.
pub fn v3_index() -> &'static [u8] {
    &V3.index
}

/// `GET /openapi/v3/<path>` (`api/v1`, `apis/apps/v1`), or None if not served.
pub fn v3_doc(path: &str) -> Option<&'static [u8]> {
    let path = path.trim_matches('/');
    V3.docs
        .iter()
        .find(|(p, _)| p == path)
        .map(|(_, d)| d.as_slice())
}

static V2: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut g = generator(false);
    let mut paths = Map::new();
    let resources: Vec<&ResourceInfo> = registry::all().iter().collect();
    for r in &resources {
        (r.schema)(&mut g);
        for (p, item) in paths_for(r, false, "#/definitions/") {
            paths.insert(p, item);
        }
    }
    let mut defs = g.take_definitions(true);
    add_extensions(&mut defs, &resources);
    serde_json::to_vec(&json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.35.0"},
        "paths": paths,
        "definitions": defs,
    }))
    .unwrap_or_default()
});

/// `GET /openapi/v2` (JSON only; protobuf is not served).
pub fn v2() -> &'static [u8] {
    &V2
}

/// The generated schema definitions of every served type, keyed by definition name
/// (used for strict field validation).
pub fn definitions() -> &'static Map<String, Value> {
    static DEFS: LazyLock<Map<String, Value>> = LazyLock::new(|| {
        let mut g = generator(true);
        for r in registry::all() {
            (r.schema)(&mut g);
        }
        g.take_definitions(true)
    });
    &DEFS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3_documents_carry_gvk_and_field_validation() {
        let idx: Value = serde_json::from_slice(v3_index()).expect("index is JSON");
        let url = idx["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .expect("apps/v1 listed");
        assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="));
        let doc: Value =
            serde_json::from_slice(v3_doc("apis/apps/v1").expect("apps doc")).expect("JSON");
        let dep = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            dep["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert!(
            patch["parameters"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["name"] == "fieldValidation"))
        );
        let core: Value = serde_json::from_slice(v3_doc("api/v1").expect("core")).expect("JSON");
        assert_eq!(
            core["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
                ["x-kubernetes-patch-merge-key"],
            "name"
        );
        assert!(v3_doc("apis/nope/v1").is_none());
    }
}
