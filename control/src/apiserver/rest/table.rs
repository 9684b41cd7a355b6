//! Server-side printing (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`): the
//! columns kubectl shows against Kubernetes for the built-in types (wide-only columns have
//! priority 1), and Name / Created At for the rest.

use serde_json::{Value, json};

use crate::apiserver::registry::ResourceInfo;

type Cell = Value;

struct Col {
    name: &'static str,
    ty: &'static str,
    priority: u8,
}

const fn c(name: &'static str, ty: &'static str, priority: u8) -> Col {
    Col { name, ty, priority }
}

fn s(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

fn i(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn or_none(x: String) -> String {
    if x.is_empty() { "<none>".into() } else { x }
}

/// Kubernetes' `HumanDuration` of the time since an RFC 3339 timestamp.
pub fn age(ts: Option<&Value>) -> String {
    let Some(t) = ts
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    else {
        return "<unknown>".into();
    };
    let secs = (jiff::Timestamp::now().as_second() - t.as_second()).max(0);
    human_duration(secs)
}

pub fn human_duration(secs: i64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        let mm = m % 60;
        if mm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{mm}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        let hh = h % 24;
        if hh == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{hh}h")
        }
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if h < 24 * 365 * 8 {
        let y = d / 365;
        let dd = d % 365;
        if dd == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{dd}d")
        }
    } else {
        format!("{}y", d / 365)
    }
}

fn selector_string(sel: Option<&Value>) -> String {
    let Some(sel) = sel else {
        return "<none>".into();
    };
    let mut parts: Vec<String> = Vec::new();
    if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
        parts.extend(m.iter().map(|(k, v)| format!("{k}={}", s(Some(v)))));
    }
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = s(e.get("key"));
        let vals: Vec<String> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|v| s(Some(v)))
            .collect();
        parts.push(match s(e.get("operator")).as_str() {
            "In" => format!("{key} in ({})", vals.join(",")),
            "NotIn" => format!("{key} notin ({})", vals.join(",")),
            "Exists" => key,
            "DoesNotExist" => format!("!{key}"),
            op => format!("{key} {op}"),
        });
    }
    if parts.is_empty() {
        // A plain map selector (services, replication controllers).
        if let Some(m) = sel
            .as_object()
            .filter(|m| !m.contains_key("matchLabels") && !m.contains_key("matchExpressions"))
        {
            parts.extend(m.iter().map(|(k, v)| format!("{k}={}", s(Some(v)))));
        }
    }
    or_none(parts.join(","))
}

fn containers_images(o: &Value, spec: &str) -> (String, String) {
    let cs = arr(o, &format!("{spec}/containers"));
    let names: Vec<String> = cs.iter().map(|c| s(c.get("name"))).collect();
    let images: Vec<String> = cs.iter().map(|c| s(c.get("image"))).collect();
    (names.join(","), images.join(","))
}

fn pod_row(o: &Value) -> Vec<Cell> {
    let statuses = arr(o, "/status/containerStatuses");
    let total = arr(o, "/spec/containers").len();
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready") == Some(&Value::Bool(true)))
        .count();
    let restarts: i64 = statuses.iter().map(|c| i(c, "/restartCount")).sum();
    let mut status = s(o.pointer("/status/reason"));
    if status.is_empty() {
        status = s(o.pointer("/status/phase"));
    }
    for c in statuses {
        if let Some(w) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            status = w.to_string();
        } else if let Some(t) = c
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
        {
            status = t.to_string();
        }
    }
    if o.pointer("/metadata/deletionTimestamp").is_some() {
        status = "Terminating".into();
    }
    if status.is_empty() {
        status = "Pending".into();
    }
    let gates = arr(o, "/spec/readinessGates");
    let gates_cell = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conds = arr(o, "/status/conditions");
        let ok = gates
            .iter()
            .filter(|g| {
                conds.iter().any(|c| {
                    c.get("type") == g.get("conditionType") && s(c.get("status")) == "True"
                })
            })
            .count();
        format!("{ok}/{}", gates.len())
    };
    vec![
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts),
        json!(age(o.pointer("/metadata/creationTimestamp"))),
        json!(or_none(s(o.pointer("/status/podIP")))),
        json!(or_none(s(o.pointer("/spec/nodeName")))),
        json!(or_none(s(o.pointer("/status/nominatedNodeName")))),
        json!(gates_cell),
    ]
}

fn service_row(o: &Value) -> Vec<Cell> {
    let ty = s(o.pointer("/spec/type"));
    let ty = if ty.is_empty() {
        "ClusterIP".to_string()
    } else {
        ty
    };
    let mut external: Vec<String> = arr(o, "/spec/externalIPs")
        .iter()
        .map(|v| s(Some(v)))
        .collect();
    for ing in arr(o, "/status/loadBalancer/ingress") {
        let ip = s(ing.get("ip"));
        external.push(if ip.is_empty() {
            s(ing.get("hostname"))
        } else {
            ip
        });
    }
    let external = match (ty.as_str(), external.is_empty()) {
        (_, false) => external.join(","),
        ("LoadBalancer", true) => "<pending>".into(),
        ("ExternalName", true) => s(o.pointer("/spec/externalName")),
        _ => "<none>".into(),
    };
    let ports: Vec<String> = arr(o, "/spec/ports")
        .iter()
        .map(|p| {
            let proto = {
                let x = s(p.get("protocol"));
                if x.is_empty() { "TCP".to_string() } else { x }
            };
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) => format!("{}:{np}/{proto}", i(p, "/port")),
                None => format!("{}/{proto}", i(p, "/port")),
            }
        })
        .collect();
    vec![
        json!(ty),
        json!(or_none(s(o.pointer("/spec/clusterIP")))),
        json!(external),
        json!(or_none(ports.join(","))),
        json!(age(o.pointer("/metadata/creationTimestamp"))),
        json!(selector_string(o.pointer("/spec/selector"))),
    ]
}

fn node_row(o: &Value) -> Vec<Cell> {
    let ready = arr(o, "/status/conditions")
        .iter()
        .find(|c| s(c.get("type")) == "Ready")
        .map(|c| {
            if s(c.get("status")) == "True" {
                "Ready"
            } else {
                "NotReady"
            }
        })
        .unwrap_or("Unknown");
    let mut status = ready.to_string();
    if o.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
        status.push_str(",SchedulingDisabled");
    }
    let roles: Vec<String> = o
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| {
            k.strip_prefix("node-role.kubernetes.io/")
                .map(str::to_string)
        })
        .collect();
    let addr = |t: &str| {
        or_none(
            arr(o, "/status/addresses")
                .iter()
                .find(|a| s(a.get("type")) == t)
                .map(|a| s(a.get("address")))
                .unwrap_or_default(),
        )
    };
    vec![
        json!(status),
        json!(or_none(roles.join(","))),
        json!(age(o.pointer("/metadata/creationTimestamp"))),
        json!(s(o.pointer("/status/nodeInfo/kubeletVersion"))),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(s(o.pointer("/status/nodeInfo/osImage"))),
        json!(s(o.pointer("/status/nodeInfo/kernelVersion"))),
        json!(s(o.pointer("/status/nodeInfo/containerRuntimeVersion"))),
    ]
}

/// Column definitions and a row function per kind.
fn columns(kind: &str) -> (Vec<Col>, fn(&Value) -> Vec<Cell>) {
    match kind {
        "Pod" => (
            vec![
                c("Ready", "string", 0),
                c("Status", "string", 0),
                c("Restarts", "string", 0),
                c("Age", "string", 0),
                c("IP", "string", 1),
                c("Node", "string", 1),
                c("Nominated Node", "string", 1),
                c("Readiness Gates", "string", 1),
            ],
            pod_row,
        ),
        "Deployment" => (
            vec![
                c("Ready", "string", 0),
                c("Up-to-date", "string", 0),
                c("Available", "string", 0),
                c("Age", "string", 0),
                c("Containers", "string", 1),
                c("Images", "string", 1),
                c("Selector", "string", 1),
            ],
            |o| {
                let (cn, im) = containers_images(o, "/spec/template/spec");
                vec![
                    json!(format!(
                        "{}/{}",
                        i(o, "/status/readyReplicas"),
                        i(o, "/spec/replicas")
                    )),
                    json!(i(o, "/status/updatedReplicas")),
                    json!(i(o, "/status/availableReplicas")),
                    json!(age(o.pointer("/metadata/creationTimestamp"))),
                    json!(cn),
                    json!(im),
                    json!(selector_string(o.pointer("/spec/selector"))),
                ]
            },
        ),
        "ReplicaSet" | "ReplicationController" => (
            vec![
                c("Desired", "integer", 0),
                c("Current", "integer", 0),
                c("Ready", "integer", 0),
                c("Age", "string", 0),
                c("Containers", "string", 1),
                c("Images", "string", 1),
                c("Selector", "string", 1),
            ],
            |o| {
                let (cn, im) = containers_images(o, "/spec/template/spec");
                vec![
                    json!(i(o, "/spec/replicas")),
                    json!(i(o, "/status/replicas")),
                    json!(i(o, "/status/readyReplicas")),
                    json!(age(o.pointer("/metadata/creationTimestamp"))),
                    json!(cn),
                    json!(im),
                    json!(selector_string(o.pointer("/spec/selector"))),
                ]
            },
        ),
        "StatefulSet" => (
            vec![
                c("Ready", "string", 0),
                c("Age", "string", 0),
                c("Containers", "string", 1),
                c("Images", "string", 1),
            ],
            |o| {
                let (cn, im) = containers_images(o, "/spec/template/spec");
                vec![
                    json!(format!(
                        "{}/{}",
                        i(o, "/status/readyReplicas"),
                        i(o, "/spec/replicas")
                    )),
                    json!(age(o.pointer("/metadata/creationTimestamp"))),
                    json!(cn),
                    json!(im),
                ]
            },
        ),
        "DaemonSet" => (
            vec![
                c("Desired", "integer", 0),
                c("Current", "integer", 0),
                c("Ready", "integer", 0),
                c("Up-to-date", "integer", 0),
                c("Available", "integer", 0),
                c("Node Selector", "string", 0),
                c("Age", "string", 0),
                c("Containers", "string", 1),
                c("Images", "string", 1),
                c("Selector", "string", 1),
            ],
            |o| {
                let (cn, im) = containers_images(o, "/spec/template/spec");
                let ns: Vec<String> = o
                    .pointer("/spec/template/spec/nodeSelector")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={}", s(Some(v))))
                    .collect();
                vec![
                    json!(i(o, "/status/desiredNumberScheduled")),
                    json!(i(o, "/status/currentNumberScheduled")),
                    json!(i(o, "/status/numberReady")),
                    json!(i(o, "/status/updatedNumberScheduled")),
                    json!(i(o, "/status/numberAvailable")),
                    json!(or_none(ns.join(","))),
                    json!(age(o.pointer("/metadata/creationTimestamp"))),
                    json!(cn),
                    json!(im),
                    json!(selector_string(o.pointer("/spec/selector"))),
                ]
            },
        ),
        "Job" => (
            vec![
                c("Status", "string", 0),
                c("Completions", "string", 0),
                c("Duration", "string", 0),
                c("Age", "string", 0),
                c("Containers", "string", 1),
                c("Images", "string", 1),
                c("Selector", "string", 1),
            ],
            |o| {
                let (cn, im) = containers_images(o, "/spec/template/spec");
                let conds = arr(o, "/status/conditions");
                let has = |t: &str| {
                    conds
                        .iter()
                        .any(|c| s(c.get("type")) == t && s(c.get("status")) == "True")
                };
                let status = if has("Complete") {
                    "Complete"
                } else if has("Failed") {
                    "Failed"
                } else if has("Suspended") {
                    "Suspended"
                } else {
                    "Running"
                };
                let completions = o
                    .pointer("/spec/completions")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                let duration = match (
                    o.pointer("/status/startTime")
                        .and_then(Value::as_str)
                        .and_then(|t| t.parse::<jiff::Timestamp>().ok()),
                    o.pointer("/status/completionTime")
                        .and_then(Value::as_str)
                        .and_then(|t| t.parse::<jiff::Timestamp>().ok()),
                ) {
                    (Some(st), Some(ct)) => human_duration(ct.as_second() - st.as_second()),
                    (Some(st), None) => {
                        human_duration(jiff::Timestamp::now().as_second() - st.as_second())
                    }
                    _ => String::new(),
                };
                vec![
                    json!(status),
                    json!(format!("{}/{completions}", i(o, "/status/succeeded"))),
                    json!(duration),
                    json!(age(o.pointer("/metadata/creationTimestamp"))),
                    json!(cn),
                    json!(im),
                    json!(selector_string(o.pointer("/spec/selector"))),
                ]
            },
        ),
        "CronJob" => (
            vec![
                c("Schedule", "string", 0),
                c("Timezone", "string", 0),
                c("Suspend", "boolean", 0),
                c("Active", "integer", 0),
                c("Last Schedule", "string", 0),
                c("Age", "string", 0),
            ],
            |o| {
                let last = o.pointer("/status/lastScheduleTime");
                vec![
                    json!(s(o.pointer("/spec/schedule"))),
                    json!(or_none(s(o.pointer("/spec/timeZone")))),
                    json!(
                        o.pointer("/spec/suspend")
                            .and_then(Value::as_bool)
                            .unwrap_or(false)
                            .to_string()
                            .replace("true", "True")
                            .replace("false", "False")
                    ),
                    json!(arr(o, "/status/active").len()),
                    json!(if last.is_some() {
                        age(last)
                    } else {
                        "<none>".into()
                    }),
                    json!(age(o.pointer("/metadata/creationTimestamp"))),
                ]
            },
        ),
        "Service" => (
            vec![
                c("Type", "string", 0),
                c("Cluster-IP", "string", 0),
                c("External-IP", "string", 0),
                c("Port(s)", "string", 0),
                c("Age", "string", 0),
                c("Selector", "string", 1),
            ],
            service_row,
        ),
        "Node" => (
            vec![
                c("Status", "string", 0),
                c("Roles", "string", 0),
                c("Age", "string", 0),
                c("Version", "string", 0),
                c("Internal-IP", "string", 1),
                c("External-IP", "string", 1),
                c("OS-Image", "string", 1),
                c("Kernel-Version", "string", 1),
                c("Container-Runtime", "string", 1),
            ],
            node_row,
        ),
        "Namespace" => (vec![c("Status", "string", 0), c("Age", "string", 0)], |o| {
            vec![
                json!(s(o.pointer("/status/phase"))),
                json!(age(o.pointer("/metadata/creationTimestamp"))),
            ]
        }),
        "ConfigMap" => (vec![c("Data", "integer", 0), c("Age", "string", 0)], |o| {
            let n = o
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + o.get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            vec![
                json!(n),
                json!(age(o.pointer("/metadata/creationTimestamp"))),
            ]
        }),
        "Secret" => (
            vec![
                c("Type", "string", 0),
                c("Data", "integer", 0),
                c("Age", "string", 0),
            ],
            |o| {
                let n = o
                    .get("data")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
                vec![
                    json!(s(o.get("type"))),
                    json!(n),
                    json!(age(o.pointer("/metadata/creationTimestamp"))),
                ]
            },
        ),
        "ServiceAccount" => (
            vec![c("Secrets", "string", 0), c("Age", "string", 0)],
            |o| {
                vec![
                    json!(arr(o, "/secrets").len()),
                    json!(age(o.pointer("/metadata/creationTimestamp"))),
                ]
            },
        ),
        "Endpoints" => (
            vec![c("Endpoints", "string", 0), c("Age", "string", 0)],
            |o| {
                let mut eps = Vec::new();
                for sub in arr(o, "/subsets") {
                    for a in arr(sub, "/addresses") {
                        for p in arr(sub, "/ports") {
                            eps.push(format!("{}:{}", s(a.get("ip")), i(p, "/port")));
                        }
                    }
                }
                vec![
                    json!(or_none(eps.join(","))),
                    json!(age(o.pointer("/metadata/creationTimestamp"))),
                ]
            },
        ),
        "Event" => (
            vec![
                c("Last Seen", "string", 0),
                c("Type", "string", 0),
                c("Reason", "string", 0),
                c("Object", "string", 0),
                c("Message", "string", 0),
            ],
            |o| {
                let last = o
                    .get("lastTimestamp")
                    .filter(|v| !v.is_null())
                    .or_else(|| o.get("eventTime"))
                    .or_else(|| o.pointer("/metadata/creationTimestamp"));
                let obj = o.get("involvedObject").or_else(|| o.get("regarding"));
                let what = obj
                    .map(|x| format!("{}/{}", s(x.get("kind")).to_lowercase(), s(x.get("name"))))
                    .unwrap_or_default();
                let msg = {
                    let m = s(o.get("message"));
                    if m.is_empty() { s(o.get("note")) } else { m }
                };
                vec![
                    json!(age(last)),
                    json!(s(o.get("type"))),
                    json!(s(o.get("reason"))),
                    json!(what),
                    json!(msg.trim()),
                ]
            },
        ),
        "PersistentVolumeClaim" => (
            vec![
                c("Status", "string", 0),
                c("Volume", "string", 0),
                c("Capacity", "string", 0),
                c("Access Modes", "string", 0),
                c("StorageClass", "string", 0),
                c("Age", "string", 0),
            ],
            |o| {
                vec![
                    json!(s(o.pointer("/status/phase"))),
                    json!(s(o.pointer("/spec/volumeName"))),
                    json!(s(o.pointer("/status/capacity/storage"))),
                    json!(modes(o)),
                    json!(s(o.pointer("/spec/storageClassName"))),
                    json!(age(o.pointer("/metadata/creationTimestamp"))),
                ]
            },
        ),
        "PersistentVolume" => (
            vec![
                c("Capacity", "string", 0),
                c("Access Modes", "string", 0),
                c("Reclaim Policy", "string", 0),
                c("Status", "string", 0),
                c("Claim", "string", 0),
                c("StorageClass", "string", 0),
                c("Age", "string", 0),
            ],
            |o| {
                let claim = o
                    .pointer("/spec/claimRef")
                    .map(|c| format!("{}/{}", s(c.get("namespace")), s(c.get("name"))))
                    .unwrap_or_default();
                vec![
                    json!(s(o.pointer("/spec/capacity/storage"))),
                    json!(modes(o)),
                    json!(s(o.pointer("/spec/persistentVolumeReclaimPolicy"))),
                    json!(s(o.pointer("/status/phase"))),
                    json!(claim),
                    json!(s(o.pointer("/spec/storageClassName"))),
                    json!(age(o.pointer("/metadata/creationTimestamp"))),
                ]
            },
        ),
        "ResourceQuota" => (
            vec![
                c("Age", "string", 0),
                c("Request", "string", 0),
                c("Limit", "string", 0),
            ],
            |o| {
                let hard = o.pointer("/spec/hard").and_then(Value::as_object);
                let used = o.pointer("/status/used");
                let (mut req, mut lim) = (Vec::new(), Vec::new());
                for (k, v) in hard.into_iter().flatten() {
                    let u = s(used.and_then(|u| u.get(k)));
                    let u = if u.is_empty() { "0".into() } else { u };
                    let entry = format!("{k}: {u}/{}", s(Some(v)));
                    if k.starts_with("limits.") {
                        lim.push(entry)
                    } else {
                        req.push(entry)
                    }
                }
                vec![
                    json!(age(o.pointer("/metadata/creationTimestamp"))),
                    json!(req.join(", ")),
                    json!(lim.join(", ")),
                ]
            },
        ),
        "Ingress" => (
            vec![
                c("Class", "string", 0),
                c("Hosts", "string", 0),
                c("Address", "string", 0),
                c("Ports", "string", 0),
                c("Age", "string", 0),
            ],
            |o| {
                let hosts: Vec<String> = arr(o, "/spec/rules")
                    .iter()
                    .map(|r| s(r.get("host")))
                    .filter(|h| !h.is_empty())
                    .collect();
                let ports = if arr(o, "/spec/tls").is_empty() {
                    "80"
                } else {
                    "80, 443"
                };
                vec![
                    json!(or_none(s(o.pointer("/spec/ingressClassName")))),
                    json!(if hosts.is_empty() {
                        "*".into()
                    } else {
                        hosts.join(",")
                    }),
                    json!(""),
                    json!(ports),
                    json!(age(o.pointer("/metadata/creationTimestamp"))),
                ]
            },
        ),
        "HorizontalPodAutoscaler" => (
            vec![
                c("Reference", "string", 0),
                c("Targets", "string", 0),
                c("MinPods", "string", 0),
                c("MaxPods", "string", 0),
                c("Replicas", "string", 0),
                c("Age", "string", 0),
            ],
            |o| {
                let r = o
                    .pointer("/spec/scaleTargetRef")
                    .map(|r| format!("{}/{}", s(r.get("kind")), s(r.get("name"))))
                    .unwrap_or_default();
                vec![
                    json!(r),
                    json!("<unknown>"),
                    json!(
                        o.pointer("/spec/minReplicas")
                            .and_then(Value::as_i64)
                            .unwrap_or(1)
                    ),
                    json!(i(o, "/spec/maxReplicas")),
                    json!(i(o, "/status/currentReplicas")),
                    json!(age(o.pointer("/metadata/creationTimestamp"))),
                ]
            },
        ),
        "Lease" => (vec![c("Holder", "string", 0), c("Age", "string", 0)], |o| {
            vec![
                json!(s(o.pointer("/spec/holderIdentity"))),
                json!(age(o.pointer("/metadata/creationTimestamp"))),
            ]
        }),
        "EndpointSlice" => (
            vec![
                c("AddressType", "string", 0),
                c("Ports", "string", 0),
                c("Endpoints", "string", 0),
                c("Age", "string", 0),
            ],
            |o| {
                let ports: Vec<String> = arr(o, "/ports")
                    .iter()
                    .map(|p| i(p, "/port").to_string())
                    .collect();
                let eps: Vec<String> = arr(o, "/endpoints")
                    .iter()
                    .flat_map(|e| arr(e, "/addresses").iter().map(|a| s(Some(a))))
                    .collect();
                vec![
                    json!(s(o.get("addressType"))),
                    json!(or_none(ports.join(","))),
                    json!(or_none(eps.join(","))),
                    json!(age(o.pointer("/metadata/creationTimestamp"))),
                ]
            },
        ),
        _ => (vec![c("Created At", "date", 0)], |o| {
            vec![
                o.pointer("/metadata/creationTimestamp")
                    .cloned()
                    .unwrap_or(Value::Null),
            ]
        }),
    }
}

fn modes(o: &Value) -> String {
    arr(o, "/spec/accessModes")
        .iter()
        .map(|m| match m.as_str() {
            Some("ReadWriteOnce") => "RWO",
            Some("ReadOnlyMany") => "ROX",
            Some("ReadWriteMany") => "RWX",
            Some("ReadWriteOncePod") => "RWOP",
            _ => "?",
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A `meta.k8s.io/v1` Table of `items`. `include` is `includeObject`: None / Metadata
/// (default: PartialObjectMetadata) / Object.
pub fn table(r: &ResourceInfo, items: &[Value], rv: Option<i64>, include: Option<&str>) -> Value {
    let (cols, row) = columns(r.kind);
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    if r.kind == "Event" {
        defs.clear();
    }
    defs.extend(cols.iter().map(|c| {
        json!({"name": c.name, "type": c.ty, "format": "", "description": c.name, "priority": c.priority})
    }));
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = Vec::new();
            if r.kind != "Event" {
                cells.push(json!(s(o.pointer("/metadata/name"))));
            }
            cells.extend(row(o));
            let object = match include.unwrap_or("Metadata") {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                }),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    let mut meta = json!({});
    if let Some(rv) = rv {
        meta["resourceVersion"] = json!(rv.to_string());
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry;

    #[test]
    fn pod_and_deployment_columns_match_kubectl() {
        let pods = registry::find("", "v1", "pods").expect("pods");
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.244.0.5",
              "containerStatuses": [{"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1}]}});
        let t = table(pods, &[pod], None, None);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .expect("cols")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(&names[..5], &["Name", "Ready", "Status", "Restarts", "Age"]);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[3], 3);
        assert_eq!(cells[5], "10.244.0.5");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        let d = registry::find("apps", "v1", "deployments").expect("deploy");
        let t = table(d, &[], None, None);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .expect("cols")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            &names[..5],
            &["Name", "Ready", "Up-to-date", "Available", "Age"]
        );
        assert_eq!(human_duration(30), "30s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600 * 5 + 60), "5h1m");
        assert_eq!(human_duration(86400 * 3), "3d");
    }
}
