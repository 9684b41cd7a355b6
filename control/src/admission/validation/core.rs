//! core/v1 kinds other than pods: Services, ConfigMaps, Secrets, Namespaces,
//! ResourceQuotas, LimitRanges, PersistentVolumeClaims, Nodes.

use std::collections::HashSet;
use std::net::IpAddr;

use serde_json::{Value, json};

use super::{immutable, names, push_invalid, str_at};
use crate::admission::field::{self, Cause, FieldPath};
use crate::admission::quantity::Quantity;

pub fn validate(kind: &str, new: &Value, old: Option<&Value>, errs: &mut Vec<Cause>) {
    match kind {
        "Service" => service(new, old, errs),
        "ConfigMap" => config_data(new, old, errs, false),
        "Secret" => {
            config_data(new, old, errs, true);
            secret(new, old, errs);
        }
        "Namespace" => {
            if let Some(Value::Array(f)) = new.pointer("/spec/finalizers") {
                let fp = FieldPath::root("spec.finalizers");
                for (i, v) in f.iter().enumerate() {
                    let s = v.as_str().unwrap_or_default();
                    push_invalid(errs, &fp.index(i), s, names::qualified_name(s));
                }
            }
        }
        "ResourceQuota" => quota(new, errs),
        "LimitRange" => limit_range(new, errs),
        "PersistentVolumeClaim" => pvc(new, old, errs),
        "Node" => node(new, errs),
        _ => {}
    }
}

const SERVICE_TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];

fn port_number(v: Option<&Value>) -> Option<i64> {
    v.and_then(Value::as_i64)
}

fn service(new: &Value, old: Option<&Value>, errs: &mut Vec<Cause>) {
    let path = FieldPath::root("spec");
    let Some(spec) = new.get("spec").filter(|s| s.is_object()) else {
        errs.push(field::required(&path, ""));
        return;
    };
    let ty = str_at(spec, "type").unwrap_or("ClusterIP");
    if !SERVICE_TYPES.contains(&ty) {
        errs.push(field::not_supported(
            &path.child("type"),
            &json!(ty),
            SERVICE_TYPES,
        ));
    }
    let cluster_ip = str_at(spec, "clusterIP").unwrap_or_default();
    let headless = cluster_ip == "None";
    if ty == "ExternalName" {
        match str_at(spec, "externalName") {
            Some(n) if !n.is_empty() => {
                let n = n.strip_suffix('.').unwrap_or(n);
                push_invalid(
                    errs,
                    &path.child("externalName"),
                    n,
                    names::dns1123_subdomain(n),
                );
            }
            _ => errs.push(field::required(&path.child("externalName"), "")),
        }
    } else if !cluster_ip.is_empty() && !headless && cluster_ip.parse::<IpAddr>().is_err() {
        errs.push(field::invalid(
            &path.child("clusterIP"),
            &json!(cluster_ip),
            "must be empty, 'None', or a valid IP address",
        ));
    }
    if headless && (ty == "NodePort" || ty == "LoadBalancer") {
        errs.push(field::invalid(
            &path.child("clusterIP"),
            &json!("None"),
            &format!("may not be set to 'None' for {ty} services"),
        ));
    }
    if let Some(a) = spec.get("sessionAffinity")
        && !a
            .as_str()
            .is_some_and(|s| ["None", "ClientIP"].contains(&s))
    {
        errs.push(field::not_supported(
            &path.child("sessionAffinity"),
            a,
            &["ClientIP", "None"],
        ));
    }
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if ports.is_empty() && ty != "ExternalName" && !headless {
        errs.push(field::required(&path.child("ports"), ""));
    }
    let mut seen_names = HashSet::new();
    let mut seen_ports = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = path.child("ports").index(i);
        match str_at(p, "name").filter(|n| !n.is_empty()) {
            Some(n) => {
                push_invalid(errs, &pp.child("name"), n, names::dns1123_label(n));
                if !seen_names.insert(n.to_string()) {
                    errs.push(field::duplicate(&pp.child("name"), &json!(n)));
                }
            }
            None if ports.len() > 1 => errs.push(field::required(&pp.child("name"), "")),
            None => {}
        }
        match port_number(p.get("port")) {
            Some(n) if (1..=65535).contains(&n) => {
                let proto = str_at(p, "protocol").unwrap_or("TCP").to_string();
                if !seen_ports.insert((n, proto.clone())) {
                    errs.push(field::duplicate(
                        &pp,
                        &json!({"port": n, "protocol": proto}),
                    ));
                }
            }
            Some(_) | None if p.get("port").is_some() => errs.push(field::invalid(
                &pp.child("port"),
                p.get("port").unwrap_or(&Value::Null),
                "must be between 1 and 65535, inclusive",
            )),
            _ => errs.push(field::required(&pp.child("port"), "")),
        }
        if let Some(proto) = p.get("protocol")
            && !proto
                .as_str()
                .is_some_and(|s| ["TCP", "UDP", "SCTP"].contains(&s))
        {
            errs.push(field::not_supported(
                &pp.child("protocol"),
                proto,
                &["TCP", "UDP", "SCTP"],
            ));
        }
        match p.get("targetPort") {
            Some(Value::Number(n)) if !n.as_i64().is_some_and(|n| (1..=65535).contains(&n)) => errs
                .push(field::invalid(
                    &pp.child("targetPort"),
                    &Value::Number(n.clone()),
                    "must be between 1 and 65535, inclusive",
                )),
            Some(Value::String(s)) if s.parse::<i64>().is_err() => {
                push_invalid(errs, &pp.child("targetPort"), s, names::port_name(s));
            }
            _ => {}
        }
        if let Some(np) = p
            .get("nodePort")
            .filter(|v| !v.is_null() && v.as_i64() != Some(0))
        {
            if ty != "NodePort" && ty != "LoadBalancer" {
                errs.push(field::forbidden(
                    &pp.child("nodePort"),
                    &format!("may not be used when `type` is '{ty}'"),
                ));
            } else if !np.as_i64().is_some_and(|n| (1..=65535).contains(&n)) {
                errs.push(field::invalid(
                    &pp.child("nodePort"),
                    np,
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
    }
    if let Some(Value::Object(sel)) = spec.get("selector") {
        super::labels(
            Some(&Value::Object(sel.clone())),
            &path.child("selector"),
            errs,
        );
    }
    if let Some(old_spec) = old.and_then(|o| o.get("spec")) {
        let old_ty = str_at(old_spec, "type").unwrap_or("ClusterIP");
        let old_ip = str_at(old_spec, "clusterIP").unwrap_or_default();
        // ClusterIP is fixed once allocated, unless the service becomes or stops being
        // ExternalName (which has none).
        if ty != "ExternalName" && old_ty != "ExternalName" && !old_ip.is_empty() {
            immutable(
                spec.get("clusterIP").filter(|v| v.as_str() != Some("")),
                old_spec.get("clusterIP"),
                &path.child("clusterIP"),
                errs,
            );
        }
    }
}

fn config_data(new: &Value, old: Option<&Value>, errs: &mut Vec<Cause>, secret: bool) {
    let mut keys = HashSet::new();
    let mut total = 0usize;
    let fields: &[&str] = if secret {
        &["data", "stringData"]
    } else {
        &["data", "binaryData"]
    };
    for f in fields {
        let Some(Value::Object(m)) = new.get(*f) else {
            continue;
        };
        for (k, v) in m {
            let kp = FieldPath::root(f).key(k);
            push_invalid(errs, &kp, k, names::config_key(k));
            if f != &"stringData" && !keys.insert(k.clone()) {
                errs.push(field::invalid(
                    &kp,
                    &json!(k),
                    "duplicate of key present in data",
                ));
            }
            total += v.as_str().map_or(0, str::len);
        }
    }
    const MAX: usize = 1024 * 1024;
    if total > MAX {
        errs.push(field::too_long(&FieldPath::root(""), MAX));
    }
    if let Some(old) = old
        && old.get("immutable").and_then(Value::as_bool) == Some(true)
    {
        for f in ["data", "binaryData", "immutable"] {
            if new.get(f) != old.get(f) {
                errs.push(field::forbidden(
                    &FieldPath::root(f),
                    "field is immutable when `immutable` is set",
                ));
            }
        }
    }
}

fn secret(new: &Value, old: Option<&Value>, errs: &mut Vec<Cause>) {
    let ty = str_at(new, "type").unwrap_or("Opaque");
    let has = |k: &str| {
        new.pointer(&format!("/data/{}", k.replace('/', "~1")))
            .is_some()
            || new.pointer(&format!("/stringData/{k}")).is_some()
    };
    let required: &[&str] = match ty {
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        "kubernetes.io/basic-auth" => &[],
        _ => &[],
    };
    for k in required {
        if !has(k) {
            errs.push(field::required(&FieldPath::root("data").key(k), ""));
        }
    }
    if ty == "kubernetes.io/service-account-token"
        && new
            .pointer("/metadata/annotations/kubernetes.io~1service-account.name")
            .is_none()
    {
        errs.push(field::required(
            &FieldPath::root("metadata.annotations").key("kubernetes.io/service-account.name"),
            "",
        ));
    }
    if let Some(old) = old {
        immutable(
            new.get("type"),
            old.get("type"),
            &FieldPath::root("type"),
            errs,
        );
    }
}

fn quantities(
    map: Option<&Value>,
    path: &FieldPath,
    errs: &mut Vec<Cause>,
) -> Vec<(String, Quantity)> {
    let Some(Value::Object(m)) = map else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in m {
        match Quantity::from_json(v) {
            Ok(q) if q.is_negative() => errs.push(field::invalid(
                &path.key(k),
                v,
                "must be greater than or equal to 0",
            )),
            Ok(q) => out.push((k.clone(), q)),
            Err(e) => errs.push(field::invalid(&path.key(k), v, &e)),
        }
    }
    out
}

fn quota(new: &Value, errs: &mut Vec<Cause>) {
    let hard = FieldPath::root("spec.hard");
    for (k, _) in quantities(new.pointer("/spec/hard"), &hard, errs) {
        push_invalid(errs, &hard.key(&k), &k, names::qualified_name(&k));
    }
    if let Some(Value::Array(scopes)) = new.pointer("/spec/scopes") {
        let allowed = [
            "Terminating",
            "NotTerminating",
            "BestEffort",
            "NotBestEffort",
            "PriorityClass",
            "CrossNamespacePodAffinity",
        ];
        for (i, s) in scopes.iter().enumerate() {
            if !s.as_str().is_some_and(|x| allowed.contains(&x)) {
                errs.push(field::not_supported(
                    &FieldPath::root("spec.scopes").index(i),
                    s,
                    &allowed,
                ));
            }
        }
    }
}

fn limit_range(new: &Value, errs: &mut Vec<Cause>) {
    let Some(Value::Array(items)) = new.pointer("/spec/limits") else {
        return;
    };
    for (i, item) in items.iter().enumerate() {
        let ip = FieldPath::root("spec.limits").index(i);
        let ty = item.get("type").cloned().unwrap_or(Value::Null);
        let types = ["Pod", "Container", "PersistentVolumeClaim"];
        if !ty.as_str().is_some_and(|t| types.contains(&t)) {
            errs.push(field::not_supported(&ip.child("type"), &ty, &types));
        }
        let get = |k: &str, errs: &mut Vec<Cause>| quantities(item.get(k), &ip.child(k), errs);
        let (min, max, def, req) = (
            get("min", errs),
            get("max", errs),
            get("default", errs),
            get("defaultRequest", errs),
        );
        let find =
            |l: &[(String, Quantity)], r: &str| l.iter().find(|(n, _)| n == r).map(|(_, q)| *q);
        for (res, q) in def.iter().chain(req.iter()) {
            if let Some(mx) = find(&max, res)
                && *q > mx
            {
                errs.push(field::invalid(
                    &ip.child("default").key(res),
                    &json!(q.to_string()),
                    &format!("default value {q} must be less than or equal to max value {mx}"),
                ));
            }
            if let Some(mn) = find(&min, res)
                && *q < mn
            {
                errs.push(field::invalid(
                    &ip.child("default").key(res),
                    &json!(q.to_string()),
                    &format!("min value {mn} is greater than default value {q}"),
                ));
            }
        }
        for (res, r) in &req {
            if let Some(d) = find(&def, res)
                && *r > d
            {
                errs.push(field::invalid(
                    &ip.child("defaultRequest").key(res),
                    &json!(r.to_string()),
                    &format!("default request value {r} must be less than or equal to default limit value {d}"),
                ));
            }
        }
    }
}

fn pvc(new: &Value, old: Option<&Value>, errs: &mut Vec<Cause>) {
    let path = FieldPath::root("spec");
    let Some(spec) = new.get("spec").filter(|s| s.is_object()) else {
        errs.push(field::required(&path, ""));
        return;
    };
    if spec
        .get("accessModes")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        errs.push(field::required(
            &path.child("accessModes"),
            "at least 1 access mode is required",
        ));
    }
    if spec.pointer("/resources/requests/storage").is_none() {
        errs.push(field::required(&path.child("resources").key("storage"), ""));
    }
    quantities(
        spec.pointer("/resources/requests"),
        &path.child("resources").child("requests"),
        errs,
    );
    if let Some(old_spec) = old.and_then(|o| o.get("spec")) {
        let strip = |s: &Value| {
            let mut s = s.clone();
            if let Some(m) = s.as_object_mut() {
                m.shift_remove("resources");
                m.shift_remove("volumeName");
                m.shift_remove("volumeAttributesClassName");
            }
            s
        };
        if strip(spec) != strip(old_spec) {
            errs.push(field::forbidden(
                &path,
                "spec is immutable after creation except resources.requests and \
                 volumeAttributesClassName for bound claims",
            ));
        }
    }
}

fn node(new: &Value, errs: &mut Vec<Cause>) {
    if let Some(Value::Array(taints)) = new.pointer("/spec/taints") {
        for (i, t) in taints.iter().enumerate() {
            let tp = FieldPath::root("spec.taints").index(i);
            match str_at(t, "key") {
                Some(k) if !k.is_empty() => {
                    push_invalid(errs, &tp.child("key"), k, names::qualified_name(k))
                }
                _ => errs.push(field::required(&tp.child("key"), "")),
            }
            let effects = ["NoSchedule", "PreferNoSchedule", "NoExecute"];
            let e = t.get("effect").cloned().unwrap_or(Value::Null);
            if !e.as_str().is_some_and(|x| effects.contains(&x)) {
                errs.push(field::not_supported(&tp.child("effect"), &e, &effects));
            }
        }
    }
    if let Some(cidr) = new.pointer("/spec/podCIDR").and_then(Value::as_str)
        && !cidr.is_empty()
    {
        let ok = cidr.split_once('/').is_some_and(|(ip, len)| {
            ip.parse::<IpAddr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 128)
        });
        if !ok {
            errs.push(field::invalid(
                &FieldPath::root("spec.podCIDR"),
                &json!(cidr),
                "must be a valid CIDR",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::admission::{default, validate};
    use serde_json::{Value, json};

    fn causes(kind: &str, v: &Value, old: Option<&Value>) -> Vec<String> {
        match validate(kind, v, old) {
            Ok(()) => Vec::new(),
            Err(inv) => inv.causes.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn services() {
        let mut s = json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"web"},"spec":{"selector":{"app":"web"},"ports":[{"port":80}]}});
        default("Service", &mut s);
        assert!(causes("Service", &s, None).is_empty());
        let mut bad = json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"1web"},
            "spec":{"type":"Weird","ports":[{"port":0},{"port":80,"nodePort":30001}]}});
        default("Service", &mut bad);
        let c = causes("Service", &bad, None);
        assert!(
            c.iter()
                .any(|x| x.starts_with("metadata.name: Invalid value: \"1web\": a DNS-1035 label")),
            "{c:#?}"
        );
        assert!(
            c.iter()
                .any(|x| x.starts_with("spec.type: Unsupported value: \"Weird\""))
        );
        assert!(c.iter().any(|x| x == "spec.ports[0].name: Required value"));
        assert!(
            c.iter()
                .any(|x| x.starts_with("spec.ports[0].port: Invalid value: 0"))
        );
        assert!(
            c.iter()
                .any(|x| x.starts_with("spec.ports[1].nodePort: Forbidden"))
        );
        let mut old = s.clone();
        old["spec"]["clusterIP"] = json!("10.96.0.10");
        let mut new = old.clone();
        new["spec"]["clusterIP"] = json!("10.96.0.11");
        assert_eq!(
            causes("Service", &new, Some(&old)),
            vec!["spec.clusterIP: Invalid value: \"10.96.0.11\": field is immutable"]
        );
    }

    #[test]
    fn configmaps_and_secrets() {
        let cm = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"bad key":"x","ok.key":"y"}});
        let c = causes("ConfigMap", &cm, None);
        assert_eq!(c.len(), 1);
        assert!(c[0].starts_with("data[bad key]: Invalid value: \"bad key\": a valid config key"));
        let old = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"a":"1"},"immutable":true});
        let mut new = old.clone();
        new["data"]["a"] = json!("2");
        assert!(causes("ConfigMap", &new, Some(&old))[0].starts_with("data: Forbidden"));
        let tls = json!({"apiVersion":"v1","kind":"Secret","metadata":{"name":"s"},"type":"kubernetes.io/tls","data":{"tls.crt":"eA=="}});
        assert_eq!(
            causes("Secret", &tls, None),
            vec!["data[tls.key]: Required value"]
        );
    }

    #[test]
    fn quotas_limit_ranges_pvcs() {
        let q = json!({"apiVersion":"v1","kind":"ResourceQuota","metadata":{"name":"q"},"spec":{"hard":{"pods":"1","cpu":"x"}}});
        let c = causes("ResourceQuota", &q, None);
        assert_eq!(c.len(), 1);
        assert!(c[0].starts_with("spec.hard[cpu]: Invalid value: \"x\""));
        let lr = json!({"apiVersion":"v1","kind":"LimitRange","metadata":{"name":"l"},"spec":{"limits":[{"type":"Container","max":{"cpu":"1"},"default":{"cpu":"2"}}]}});
        assert!(
            causes("LimitRange", &lr, None)[0]
                .contains("must be less than or equal to max value 1")
        );
        let pvc = json!({"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{"name":"p"},"spec":{}});
        assert_eq!(causes("PersistentVolumeClaim", &pvc, None).len(), 2);
    }
}
