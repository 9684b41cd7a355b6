//! The resource registry: every type hull serves, with what discovery, routing, storage
//! and OpenAPI need to know about it (group/version/kind, plural and short names,
//! categories, scope, subresources, and the `k8s-openapi` type behind it).

use k8s_openapi::Resource;
use k8s_openapi::api::{
    apps::v1 as apps, autoscaling::v2 as autoscaling, batch::v1 as batch,
    certificates::v1 as certificates, coordination::v1 as coord, core::v1 as core,
    discovery::v1 as discovery, events::v1 as events, networking::v1 as networking,
    rbac::v1 as rbac, storage::v1 as storage,
};
use serde_json::Value;

/// The verbs every served resource supports (kube-apiserver's full set for a REST store).
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// One served resource.
pub struct ResourceInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub list_kind: String,
    pub plural: &'static str,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [&'static str],
    /// Decodes the value into the typed object: the wire-format check (types, enums).
    pub decode: fn(&Value) -> Result<(), String>,
    /// Adds the type's JSON schema (and its dependencies) to a generator.
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
    /// The OpenAPI definition name, e.g. `io.k8s.api.core.v1.Pod`.
    pub schema_name: fn() -> std::borrow::Cow<'static, str>,
}

impl ResourceInfo {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The key prefix in the store, with a trailing slash (`/registry/pods/`).
    pub fn storage_prefix(&self) -> String {
        // events.k8s.io/v1 Events are stored as core/v1 Events (see `conversion`), as
        // kube-apiserver stores both under /registry/events/.
        format!("/registry/{}/", self.plural)
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{ns}/{name}", self.storage_prefix()),
            _ => format!("{}{name}", self.storage_prefix()),
        }
    }

    /// The list prefix for a namespace (or every namespace).
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{ns}/", self.storage_prefix()),
            _ => self.storage_prefix(),
        }
    }

    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }

    /// Whether writes to the main resource leave `.status` alone (it has a status subresource).
    pub fn status_is_subresource(&self) -> bool {
        self.has_subresource("status")
    }
}

struct Extra {
    short: &'static [&'static str],
    categories: &'static [&'static str],
    sub: &'static [&'static str],
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];
const STATUS: &[&str] = &["status"];
const STATUS_SCALE: &[&str] = &["status", "scale"];

fn info<T>(extra: Extra) -> ResourceInfo
where
    T: Resource
        + k8s_openapi::ListableResource
        + serde::de::DeserializeOwned
        + schemars::JsonSchema
        + 'static,
{
    ResourceInfo {
        group: T::GROUP,
        version: T::VERSION,
        kind: T::KIND,
        list_kind: T::LIST_KIND.to_string(),
        plural: T::URL_PATH_SEGMENT,
        singular: T::KIND.to_lowercase(),
        namespaced: std::any::type_name::<T::Scope>().ends_with("NamespaceResourceScope"),
        short_names: extra.short,
        categories: extra.categories,
        subresources: extra.sub,
        decode: |v| {
            serde_json::from_value::<T>(v.clone())
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
        schema: |g| g.subschema_for::<T>(),
        schema_name: T::schema_name,
    }
}

macro_rules! e {
    ($short:expr, $cat:expr, $sub:expr) => {
        Extra {
            short: $short,
            categories: $cat,
            sub: $sub,
        }
    };
}

fn build() -> Vec<ResourceInfo> {
    vec![
        info::<core::Namespace>(e!(&["ns"], NONE, &["status", "finalize"])),
        info::<core::Pod>(e!(&["po"], ALL, &["status", "binding", "eviction"])),
        info::<core::Service>(e!(&["svc"], ALL, STATUS)),
        info::<core::Endpoints>(e!(&["ep"], NONE, NONE)),
        info::<core::ConfigMap>(e!(&["cm"], NONE, NONE)),
        info::<core::Secret>(e!(NONE, NONE, NONE)),
        info::<core::Node>(e!(&["no"], NONE, STATUS)),
        info::<core::Event>(e!(&["ev"], NONE, NONE)),
        info::<core::ServiceAccount>(e!(&["sa"], NONE, &["token"])),
        info::<core::PersistentVolume>(e!(&["pv"], NONE, STATUS)),
        info::<core::PersistentVolumeClaim>(e!(&["pvc"], NONE, STATUS)),
        info::<core::ResourceQuota>(e!(&["quota"], NONE, STATUS)),
        info::<core::LimitRange>(e!(&["limits"], NONE, NONE)),
        info::<core::ReplicationController>(e!(&["rc"], ALL, STATUS_SCALE)),
        info::<apps::Deployment>(e!(&["deploy"], ALL, STATUS_SCALE)),
        info::<apps::ReplicaSet>(e!(&["rs"], ALL, STATUS_SCALE)),
        info::<apps::DaemonSet>(e!(&["ds"], ALL, STATUS)),
        info::<apps::StatefulSet>(e!(&["sts"], ALL, STATUS_SCALE)),
        info::<apps::ControllerRevision>(e!(NONE, NONE, NONE)),
        info::<batch::Job>(e!(NONE, ALL, STATUS)),
        info::<batch::CronJob>(e!(&["cj"], ALL, STATUS)),
        info::<discovery::EndpointSlice>(e!(NONE, NONE, NONE)),
        info::<networking::Ingress>(e!(&["ing"], NONE, STATUS)),
        info::<networking::IngressClass>(e!(NONE, NONE, NONE)),
        info::<coord::Lease>(e!(NONE, NONE, NONE)),
        info::<autoscaling::HorizontalPodAutoscaler>(e!(&["hpa"], ALL, STATUS)),
        info::<storage::StorageClass>(e!(&["sc"], NONE, NONE)),
        info::<rbac::Role>(e!(NONE, NONE, NONE)),
        info::<rbac::RoleBinding>(e!(NONE, NONE, NONE)),
        info::<rbac::ClusterRole>(e!(NONE, NONE, NONE)),
        info::<rbac::ClusterRoleBinding>(e!(NONE, NONE, NONE)),
        info::<events::Event>(e!(&["ev"], NONE, NONE)),
        info::<certificates::CertificateSigningRequest>(e!(
            &["csr"],
            NONE,
            &["status", "approval"]
        )),
    ]
}

/// Every served resource, in a stable order (core first, then by group as listed).
pub fn all() -> &'static [ResourceInfo] {
    static REGISTRY: std::sync::LazyLock<Vec<ResourceInfo>> = std::sync::LazyLock::new(build);
    &REGISTRY
}

/// The resource served at `group/version/plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    all()
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource for an apiVersion + kind.
pub fn find_kind(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    all()
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

/// The served group/versions, in order: `("", "v1")` first.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for r in all() {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_names_come_from_the_types() {
        let pods = find("", "v1", "pods").expect("pods served");
        assert!(pods.namespaced);
        assert_eq!(pods.kind, "Pod");
        assert_eq!(pods.list_kind, "PodList");
        let nodes = find("", "v1", "nodes").expect("nodes served");
        assert!(!nodes.namespaced);
        let d = find("apps", "v1", "deployments").expect("deployments served");
        assert_eq!(
            d.key(Some("default"), "web"),
            "/registry/deployments/default/web"
        );
        assert_eq!(
            find_kind("rbac.authorization.k8s.io/v1", "ClusterRole").map(|r| r.namespaced),
            Some(false)
        );
        assert!(group_versions().contains(&("autoscaling", "v2")));
    }
}
