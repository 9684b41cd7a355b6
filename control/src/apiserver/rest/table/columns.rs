//! Columns of the workload kinds, pods, services and nodes, as kubectl's printers show them.

use serde_json::{Value, json};

use super::{Cell, Printer, age, arr, c, human_duration, i, or_none, s};

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
pub(super) fn columns(kind: &str) -> Printer {
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
        _ => super::other_columns::columns(kind),
    }
}
