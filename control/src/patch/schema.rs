//! How lists of the built-in types merge: the `patchStrategy`/`patchMergeKey` and
//! `listType`/`listMapKeys` markers of the Kubernetes Go types, as a small walkable table.
//!
//! Strategic merge patch and server-side apply both need to know, for a list at some path
//! of some kind, whether it is atomic (replaced whole), a set of primitives (merged as a
//! union), or a map keyed by some fields (`containers` by `name`). Anything not in the
//! table is atomic, as it is for a list without markers in Kubernetes.

/// Where in an object a walk currently is; only places holding merged lists are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// Nothing below holds a merged list (labels, volume sources, ...).
    Any,
    /// A map replaced and owned as a whole by server-side apply (`+structType=atomic`,
    /// like a workload's LabelSelector).
    Atomic,
    /// The top of an object of this kind.
    Root(&'static str),
    Meta,
    /// The `spec` of a workload holding a pod template (Deployment, Job, ...).
    WorkloadSpec,
    CronJobSpec,
    JobTemplate,
    PodTemplate,
    PodSpec,
    Container,
    ServiceSpec,
    NodeSpec,
    /// Any object's `status` (conditions by `type`).
    Status,
    PodStatus,
    NodeStatus,
}

/// How a list merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// Replaced whole by a patch; owned whole by one manager.
    Atomic,
    /// A set of primitives (`finalizers`): merged as a union.
    Set,
    /// Elements are maps identified by `keys`; strategic merge patch matches on
    /// `merge_key` (the first key, as `patchMergeKey` names only one).
    Map {
        merge_key: &'static str,
        keys: &'static [&'static str],
    },
}

const fn map(keys: &'static [&'static str]) -> ListKind {
    ListKind::Map {
        merge_key: keys[0],
        keys,
    }
}

/// Kinds whose `spec.template` is a pod template.
const WORKLOADS: &[&str] = &[
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "ReplicationController",
];

/// The canonical kind name for a string, so `Node::Root` can hold a `'static` str.
pub fn root(kind: &str) -> Node {
    const KINDS: &[&str] = &[
        "Deployment",
        "ReplicaSet",
        "StatefulSet",
        "DaemonSet",
        "Job",
        "ReplicationController",
        "CronJob",
        "Pod",
        "PodTemplate",
        "Service",
        "Node",
        "Endpoints",
    ];
    match KINDS.iter().find(|k| **k == kind) {
        Some(k) => Node::Root(k),
        None => Node::Root(""),
    }
}

impl Node {
    /// The node reached by following map field `key`.
    pub fn field(self, key: &str) -> Node {
        match (self, key) {
            (Node::Root(_), "metadata") => Node::Meta,
            (Node::Root(k), "spec") if WORKLOADS.contains(&k) => Node::WorkloadSpec,
            (Node::Root("CronJob"), "spec") => Node::CronJobSpec,
            (Node::Root("Pod"), "spec") => Node::PodSpec,
            (Node::Root("PodTemplate"), "template") => Node::PodTemplate,
            (Node::Root("Service"), "spec") => Node::ServiceSpec,
            (Node::Root("Node"), "spec") => Node::NodeSpec,
            (Node::Root("Pod"), "status") => Node::PodStatus,
            (Node::Root("Node"), "status") => Node::NodeStatus,
            (Node::Root(_), "status") => Node::Status,
            (Node::WorkloadSpec, "template") => Node::PodTemplate,
            (Node::WorkloadSpec, "selector") => Node::Atomic,
            (Node::CronJobSpec, "jobTemplate") => Node::JobTemplate,
            (Node::JobTemplate, "metadata") | (Node::PodTemplate, "metadata") => Node::Meta,
            (Node::JobTemplate, "spec") => Node::WorkloadSpec,
            (Node::PodTemplate, "spec") => Node::PodSpec,
            _ => Node::Any,
        }
    }

    /// How the list under map field `key` merges, and the node of its elements.
    pub fn list(self, key: &str) -> (ListKind, Node) {
        let kind = match (self, key) {
            (Node::Meta, "finalizers") => ListKind::Set,
            (Node::Meta, "ownerReferences") => map(&["uid"]),
            (Node::Root("Endpoints"), "subsets") => ListKind::Atomic,
            (Node::PodSpec, "containers" | "initContainers" | "ephemeralContainers") => {
                return (map(&["name"]), Node::Container);
            }
            (Node::PodSpec, "volumes" | "imagePullSecrets" | "resourceClaims") => map(&["name"]),
            (Node::PodSpec, "schedulingGates") => map(&["name"]),
            (Node::PodSpec, "hostAliases") => map(&["ip"]),
            (Node::PodSpec, "topologySpreadConstraints") => {
                map(&["topologyKey", "whenUnsatisfiable"])
            }
            (Node::Container, "ports") => map(&["containerPort", "protocol"]),
            (Node::Container, "env") => map(&["name"]),
            (Node::Container, "volumeMounts") => map(&["mountPath"]),
            (Node::Container, "volumeDevices") => map(&["devicePath"]),
            (Node::Container, "resizePolicy") => map(&["resourceName"]),
            (Node::ServiceSpec, "ports") => map(&["port", "protocol"]),
            (Node::NodeSpec, "podCIDRs") => ListKind::Set,
            (Node::Status | Node::PodStatus | Node::NodeStatus, "conditions") => map(&["type"]),
            (Node::PodStatus, "podIPs" | "hostIPs") => map(&["ip"]),
            (Node::NodeStatus, "addresses") => map(&["type"]),
            _ => ListKind::Atomic,
        };
        (kind, Node::Any)
    }
}

/// The default of a list-map key field a client may leave out (`protocol` is `TCP` in
/// container and service ports), so `{containerPort: 80}` and `{containerPort: 80,
/// protocol: TCP}` name the same element.
pub fn key_default(key: &str) -> Option<serde_json::Value> {
    match key {
        "protocol" => Some(serde_json::Value::String("TCP".into())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_containers_merge_by_name() {
        let spec = root("Deployment")
            .field("spec")
            .field("template")
            .field("spec");
        assert_eq!(spec, Node::PodSpec);
        let (kind, elem) = spec.list("containers");
        assert_eq!(kind, map(&["name"]));
        assert_eq!(elem.list("ports").0, map(&["containerPort", "protocol"]));
    }

    #[test]
    fn cronjob_reaches_pod_spec() {
        let n = root("CronJob")
            .field("spec")
            .field("jobTemplate")
            .field("spec")
            .field("template")
            .field("spec");
        assert_eq!(n, Node::PodSpec);
    }

    #[test]
    fn unknown_lists_are_atomic() {
        assert_eq!(
            root("ConfigMap").field("data").list("x").0,
            ListKind::Atomic
        );
        assert_eq!(
            root("Pod").field("spec").list("tolerations").0,
            ListKind::Atomic
        );
    }
}
