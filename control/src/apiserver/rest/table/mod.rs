//! Server-side printing (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`): the
//! columns kubectl shows against Kubernetes for the built-in types (wide-only columns have
//! priority 1), and Name / Created At for the rest.

use serde_json::{Value, json};

use crate::apiserver::registry::ResourceInfo;

mod columns;
mod other_columns;
use columns::columns;

type Cell = Value;

/// A kind's columns and the function that fills a row of them.
type Printer = (Vec<Col>, fn(&Value) -> Vec<Cell>);

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

    #[test]
    fn csr_columns_match_kubectl() {
        let r =
            registry::find("certificates.k8s.io", "v1", "certificatesigningrequests").expect("csr");
        let csr = |conditions: Value, cert: &str| {
            json!({"metadata": {"name": "node-csr-1", "creationTimestamp": "2020-01-01T00:00:00Z"},
                "spec": {"signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                  "username": "system:bootstrap:abcdef", "expirationSeconds": 86400},
                "status": {"conditions": conditions, "certificate": cert}})
        };
        let t = table(
            r,
            &[
                csr(json!([]), ""),
                csr(json!([{"type": "Approved", "status": "True"}]), "LS0t"),
                csr(
                    json!([{"type": "Approved"}, {"type": "Denied"}, {"type": "Failed"}]),
                    "",
                ),
            ],
            None,
            None,
        );
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .expect("cols")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Age",
                "SignerName",
                "Requestor",
                "RequestedDuration",
                "Condition"
            ]
        );
        let row = |n: usize| t["rows"][n]["cells"].clone();
        assert_eq!(row(0)[2], "kubernetes.io/kube-apiserver-client-kubelet");
        assert_eq!(row(0)[3], "system:bootstrap:abcdef");
        assert_eq!(row(0)[4], "24h");
        assert_eq!(row(0)[5], "Pending");
        assert_eq!(row(1)[5], "Approved,Issued");
        assert_eq!(row(2)[5], "Denied,Failed");
    }
}
