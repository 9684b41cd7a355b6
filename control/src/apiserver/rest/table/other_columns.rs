//! Columns of the configuration, storage, networking and cluster kinds.

use serde_json::{Value, json};

use super::{Printer, age, arr, c, human_duration, i, or_none, s};

/// The columns and row function of `kind`; Name / Created At for kinds kubectl has no
/// printer for.
pub(super) fn columns(kind: &str) -> Printer {
    match kind {
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
                    .or_else(|| o.get("deprecatedLastTimestamp"))
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
                    json!(hpa_targets(o)),
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
        "CertificateSigningRequest" => (
            vec![
                c("Age", "string", 0),
                c("SignerName", "string", 0),
                c("Requestor", "string", 0),
                c("RequestedDuration", "string", 0),
                c("Condition", "string", 0),
            ],
            |o| {
                let duration = o
                    .pointer("/spec/expirationSeconds")
                    .and_then(Value::as_i64)
                    .map_or_else(|| "<none>".to_owned(), human_duration);
                vec![
                    json!(age(o.pointer("/metadata/creationTimestamp"))),
                    json!(s(o.pointer("/spec/signerName"))),
                    json!(s(o.pointer("/spec/username"))),
                    json!(duration),
                    json!(csr_condition(o)),
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

/// kubectl's CONDITION column: the decision (Denied wins over Approved), then Failed and
/// Issued as they apply.
fn csr_condition(o: &Value) -> String {
    let has = |t: &str| arr(o, "/status/conditions").iter().any(|c| c["type"] == t);
    let mut out = if has("Denied") {
        "Denied".to_owned()
    } else if has("Approved") {
        "Approved".to_owned()
    } else {
        "Pending".to_owned()
    };
    if has("Failed") {
        out.push_str(",Failed");
    }
    if o.pointer("/status/certificate")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty())
    {
        out.push_str(",Issued");
    }
    out
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

/// kubectl's TARGETS of an HPA (`formatHPAMetrics`): each metric's current value over its
/// target, by index into `status.currentMetrics`; at most two, then `+ N more...`.
fn hpa_targets(o: &Value) -> String {
    let specs = arr(o, "/spec/metrics");
    if specs.is_empty() {
        return "<none>".into();
    }
    let statuses = arr(o, "/status/currentMetrics");
    let status = |i: usize, field: &str, path: &str| {
        statuses
            .get(i)
            .and_then(|st| st.get(field))
            .and_then(|m| m.pointer(path))
            .filter(|v| !v.is_null())
    };
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "<unknown>".into(),
    };
    let percent = |v: Option<&Value>| match v.and_then(Value::as_i64) {
        Some(n) => format!("{n}%"),
        None => "<unknown>".into(),
    };
    let list: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let kind = m.get("type").and_then(Value::as_str).unwrap_or("");
            let field = match kind {
                "Resource" => "resource",
                "ContainerResource" => "containerResource",
                "Pods" => "pods",
                "Object" => "object",
                "External" => "external",
                _ => return "<unknown type>".into(),
            };
            let src = m.get(field).cloned().unwrap_or(Value::Null);
            let target = |p: &str| src.pointer(p).filter(|v| !v.is_null());
            match kind {
                "Resource" | "ContainerResource" => {
                    let name = text(src.get("name"));
                    let name = if kind == "ContainerResource" {
                        format!("{name} of container \"{}\"", text(src.get("container")))
                    } else {
                        name
                    };
                    if let Some(avg) = target("/target/averageValue") {
                        format!(
                            "{name}: {}/{}",
                            text(status(i, field, "/current/averageValue")),
                            text(Some(avg))
                        )
                    } else {
                        let want = target("/target/averageUtilization")
                            .map_or("<auto>".into(), |v| percent(Some(v)));
                        format!(
                            "{name}: {}/{want}",
                            percent(status(i, field, "/current/averageUtilization"))
                        )
                    }
                }
                "Pods" => format!(
                    "{}/{}",
                    text(status(i, field, "/current/averageValue")),
                    text(target("/target/averageValue"))
                ),
                _ => {
                    if let Some(avg) = target("/target/averageValue") {
                        format!(
                            "{}/{} (avg)",
                            text(status(i, field, "/current/averageValue")),
                            text(Some(avg))
                        )
                    } else {
                        format!(
                            "{}/{}",
                            text(status(i, field, "/current/value")),
                            text(target("/target/value"))
                        )
                    }
                }
            }
        })
        .collect();
    if list.len() > 2 {
        format!("{} + {} more...", list[..2].join(", "), list.len() - 2)
    } else {
        list.join(", ")
    }
}
