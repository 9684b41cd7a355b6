//! Pods, pod templates and pod specs.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::{labels, names, push_invalid, str_at};
use crate::admission::field::{self, Cause, FieldPath};
use crate::admission::quantity::Quantity;

const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const DNS_POLICIES: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

/// A Pod; on update only the fields Kubernetes lets change may change.
pub fn validate_pod(new: &Value, old: Option<&Value>, errs: &mut Vec<Cause>) {
    let path = FieldPath::root("spec");
    match new.get("spec") {
        Some(spec @ Value::Object(_)) => pod_spec(spec, &path, errs),
        _ => errs.push(field::required(&path, "")),
    }
    if let (Some(old), Some(spec)) = (old, new.get("spec")) {
        pod_spec_update(spec, old.get("spec").unwrap_or(&Value::Null), errs);
    }
}

/// A pod template (`spec.template` of workloads); `old` is the old template on update.
pub fn validate_template(
    template: Option<&Value>,
    path: &FieldPath,
    _old: Option<&Value>,
    errs: &mut Vec<Cause>,
) {
    let Some(template) = template.filter(|t| t.is_object()) else {
        errs.push(field::required(path, ""));
        return;
    };
    labels(
        template.pointer("/metadata/labels"),
        &path.child("metadata").child("labels"),
        errs,
    );
    match template.get("spec") {
        Some(spec @ Value::Object(_)) => pod_spec(spec, &path.child("spec"), errs),
        _ => errs.push(field::required(&path.child("spec"), "")),
    }
}

fn one_of(v: &Value, key: &str, path: &FieldPath, allowed: &[&str], errs: &mut Vec<Cause>) {
    if let Some(x) = v.get(key).filter(|x| !x.is_null())
        && !x.as_str().is_some_and(|s| allowed.contains(&s))
    {
        errs.push(field::not_supported(&path.child(key), x, allowed));
    }
}

fn non_negative(v: &Value, key: &str, path: &FieldPath, errs: &mut Vec<Cause>) {
    if let Some(x) = v.get(key).filter(|x| !x.is_null())
        && x.as_i64().is_none_or(|n| n < 0)
    {
        errs.push(field::invalid(
            &path.child(key),
            x,
            "must be greater than or equal to 0",
        ));
    }
}

/// A pod spec, as in `ValidatePodSpec`.
pub fn pod_spec(spec: &Value, path: &FieldPath, errs: &mut Vec<Cause>) {
    let volumes = volumes(spec.get("volumes"), &path.child("volumes"), errs);
    let mut container_names = HashSet::new();
    match spec.get("containers").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => containers(
            list,
            &path.child("containers"),
            &volumes,
            &mut container_names,
            errs,
        ),
        _ => errs.push(field::required(&path.child("containers"), "")),
    }
    if let Some(list) = spec.get("initContainers").and_then(Value::as_array) {
        containers(
            list,
            &path.child("initContainers"),
            &volumes,
            &mut container_names,
            errs,
        );
    }
    one_of(spec, "restartPolicy", path, RESTART_POLICIES, errs);
    one_of(spec, "dnsPolicy", path, DNS_POLICIES, errs);
    non_negative(spec, "terminationGracePeriodSeconds", path, errs);
    if let Some(x) = spec.get("activeDeadlineSeconds").filter(|x| !x.is_null())
        && x.as_i64().is_none_or(|n| n <= 0)
    {
        errs.push(field::invalid(
            &path.child("activeDeadlineSeconds"),
            x,
            "must be between 1 and 2147483647, inclusive",
        ));
    }
    for key in ["nodeName", "serviceAccountName", "hostname", "subdomain"] {
        if let Some(s) = str_at(spec, key).filter(|s| !s.is_empty()) {
            let rule = match key {
                "hostname" | "subdomain" => names::dns1123_label,
                _ => names::dns1123_subdomain,
            };
            push_invalid(errs, &path.child(key), s, rule(s));
        }
    }
    if spec.get("dnsPolicy").and_then(Value::as_str) == Some("None")
        && spec.get("dnsConfig").is_none_or(Value::is_null)
    {
        errs.push(field::required(
            &path.child("dnsConfig"),
            "must provide `dnsConfig` when `dnsPolicy` is None",
        ));
    }
    if let Some(Value::Array(tolerations)) = spec.get("tolerations") {
        for (i, t) in tolerations.iter().enumerate() {
            let tp = path.child("tolerations").index(i);
            one_of(t, "operator", &tp, &["Exists", "Equal"], errs);
            one_of(
                t,
                "effect",
                &tp,
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
                errs,
            );
            if t.get("operator").and_then(Value::as_str) == Some("Exists")
                && str_at(t, "value").is_some_and(|v| !v.is_empty())
            {
                errs.push(field::invalid(
                    &tp.child("operator"),
                    &json!("Exists"),
                    "value must be empty when `operator` is 'Exists'",
                ));
            }
        }
    }
}

fn volumes(list: Option<&Value>, path: &FieldPath, errs: &mut Vec<Cause>) -> HashSet<String> {
    let mut seen = HashSet::new();
    let Some(Value::Array(list)) = list else {
        return seen;
    };
    for (i, v) in list.iter().enumerate() {
        let vp = path.index(i);
        match str_at(v, "name").filter(|n| !n.is_empty()) {
            Some(name) => {
                push_invalid(errs, &vp.child("name"), name, names::dns1123_label(name));
                if !seen.insert(name.to_string()) {
                    errs.push(field::duplicate(&vp.child("name"), &json!(name)));
                }
            }
            None => errs.push(field::required(&vp.child("name"), "")),
        }
        let sources = v
            .as_object()
            .map_or(0, |m| m.keys().filter(|k| *k != "name").count());
        if sources == 0 {
            errs.push(field::required(&vp, "must specify a volume type"));
        } else if sources > 1 {
            errs.push(field::forbidden(
                &vp,
                "may not specify more than 1 volume type",
            ));
        }
    }
    seen
}

fn containers(
    list: &[Value],
    path: &FieldPath,
    volumes: &HashSet<String>,
    seen_names: &mut HashSet<String>,
    errs: &mut Vec<Cause>,
) {
    for (i, c) in list.iter().enumerate() {
        let cp = path.index(i);
        match str_at(c, "name").filter(|n| !n.is_empty()) {
            Some(name) => {
                push_invalid(errs, &cp.child("name"), name, names::dns1123_label(name));
                if !seen_names.insert(name.to_string()) {
                    errs.push(field::duplicate(&cp.child("name"), &json!(name)));
                }
            }
            None => errs.push(field::required(&cp.child("name"), "")),
        }
        match str_at(c, "image") {
            Some(image) if !image.trim().is_empty() => {
                if image.trim() != image {
                    errs.push(field::invalid(
                        &cp.child("image"),
                        &json!(image),
                        "must not have leading or trailing whitespace",
                    ));
                }
            }
            _ => errs.push(field::required(&cp.child("image"), "")),
        }
        one_of(c, "imagePullPolicy", &cp, PULL_POLICIES, errs);
        one_of(
            c,
            "terminationMessagePolicy",
            &cp,
            &["File", "FallbackToLogsOnError"],
            errs,
        );
        ports(c.get("ports"), &cp.child("ports"), errs);
        env(c.get("env"), &cp.child("env"), errs);
        mounts(
            c.get("volumeMounts"),
            &cp.child("volumeMounts"),
            volumes,
            errs,
        );
        resources(c.get("resources"), &cp.child("resources"), errs);
    }
}

fn ports(list: Option<&Value>, path: &FieldPath, errs: &mut Vec<Cause>) {
    let Some(Value::Array(list)) = list else {
        return;
    };
    let mut names_seen = HashSet::new();
    for (i, p) in list.iter().enumerate() {
        let pp = path.index(i);
        match p.get("containerPort") {
            Some(n) if n.as_i64().is_some_and(|n| (1..=65535).contains(&n)) => {}
            Some(n) => errs.push(field::invalid(
                &pp.child("containerPort"),
                n,
                "must be between 1 and 65535, inclusive",
            )),
            None => errs.push(field::required(&pp.child("containerPort"), "")),
        }
        if let Some(n) = p.get("hostPort").filter(|n| !n.is_null())
            && !n.as_i64().is_some_and(|n| (0..=65535).contains(&n))
        {
            errs.push(field::invalid(
                &pp.child("hostPort"),
                n,
                "must be between 1 and 65535, inclusive",
            ));
        }
        one_of(p, "protocol", &pp, PROTOCOLS, errs);
        if let Some(name) = str_at(p, "name").filter(|n| !n.is_empty()) {
            push_invalid(errs, &pp.child("name"), name, names::port_name(name));
            if !names_seen.insert(name.to_string()) {
                errs.push(field::duplicate(&pp.child("name"), &json!(name)));
            }
        }
    }
}

fn env(list: Option<&Value>, path: &FieldPath, errs: &mut Vec<Cause>) {
    let Some(Value::Array(list)) = list else {
        return;
    };
    for (i, e) in list.iter().enumerate() {
        let ep = path.index(i);
        match str_at(e, "name").filter(|n| !n.is_empty()) {
            Some(name) if name.contains('=') || !name.chars().all(|c| (' '..='~').contains(&c)) => {
                errs.push(field::invalid(
                    &ep.child("name"),
                    &json!(name),
                    "a valid environment variable name must consist only of printable ASCII \
                     characters other than '='",
                ))
            }
            Some(_) => {}
            None => errs.push(field::required(&ep.child("name"), "")),
        }
        if e.get("value").is_some_and(|v| !v.is_null())
            && e.get("valueFrom").is_some_and(|v| !v.is_null())
        {
            errs.push(field::invalid(
                &ep.child("valueFrom"),
                &Value::String(String::new()),
                "may not be specified when `value` is not empty",
            ));
        }
    }
}

fn mounts(
    list: Option<&Value>,
    path: &FieldPath,
    volumes: &HashSet<String>,
    errs: &mut Vec<Cause>,
) {
    let Some(Value::Array(list)) = list else {
        return;
    };
    let mut paths = HashSet::new();
    for (i, m) in list.iter().enumerate() {
        let mp = path.index(i);
        match str_at(m, "name").filter(|n| !n.is_empty()) {
            Some(name) if !volumes.contains(name) => errs.push(Cause {
                reason: "FieldValueNotFound".into(),
                message: format!("Not found: {name:?}"),
                field: mp.child("name").to_string(),
            }),
            Some(_) => {}
            None => errs.push(field::required(&mp.child("name"), "")),
        }
        match str_at(m, "mountPath").filter(|p| !p.is_empty()) {
            Some(p) => {
                if !paths.insert(p.to_string()) {
                    errs.push(field::invalid(
                        &mp.child("mountPath"),
                        &json!(p),
                        "must be unique",
                    ));
                }
            }
            None => errs.push(field::required(&mp.child("mountPath"), "")),
        }
        if let Some(sub) = str_at(m, "subPath")
            && (sub.starts_with('/') || sub.split('/').any(|c| c == ".."))
        {
            errs.push(field::invalid(
                &mp.child("subPath"),
                &json!(sub),
                "must be a relative path without '..'",
            ));
        }
    }
}

fn resources(res: Option<&Value>, path: &FieldPath, errs: &mut Vec<Cause>) {
    let Some(res) = res.filter(|r| r.is_object()) else {
        return;
    };
    let mut parsed = [Vec::new(), Vec::new()];
    for (slot, key) in ["limits", "requests"].iter().enumerate() {
        let Some(Value::Object(m)) = res.get(*key) else {
            continue;
        };
        for (name, v) in m {
            let fp = path.child(key).key(name);
            match Quantity::from_json(v) {
                Ok(q) if q.is_negative() => {
                    errs.push(field::invalid(&fp, v, "must be greater than or equal to 0"))
                }
                Ok(q) => parsed[slot].push((name.clone(), q)),
                Err(e) => errs.push(field::invalid(&fp, v, &e)),
            }
        }
    }
    let [limits, requests] = parsed;
    for (name, req) in &requests {
        if let Some((_, lim)) = limits.iter().find(|(n, _)| n == name)
            && req > lim
        {
            errs.push(field::invalid(
                &path.child("requests"),
                &json!(req.to_string()),
                &format!("must be less than or equal to {name} limit of {lim}"),
            ));
        }
    }
}

/// Pod updates may change only images, activeDeadlineSeconds, tolerations (additions) and
/// scheduling gates (removals), as kube-apiserver allows.
fn pod_spec_update(new: &Value, old: &Value, errs: &mut Vec<Cause>) {
    let mut masked = old.clone();
    for key in ["containers", "initContainers"] {
        if let (Some(Value::Array(m)), Some(Value::Array(n))) = (masked.get_mut(key), new.get(key))
            && m.len() == n.len()
        {
            for (mc, nc) in m.iter_mut().zip(n) {
                if let (Some(obj), Some(image)) = (mc.as_object_mut(), nc.get("image")) {
                    obj.insert("image".into(), image.clone());
                }
            }
        }
    }
    let Some(obj) = masked.as_object_mut() else {
        return;
    };
    for key in ["activeDeadlineSeconds", "tolerations", "schedulingGates"] {
        match new.get(key) {
            Some(v) => {
                obj.insert(key.into(), v.clone());
            }
            None => {
                obj.shift_remove(key);
            }
        }
    }
    // nodeName is set once, by binding.
    if old.get("nodeName").is_none_or(Value::is_null) {
        match new.get("nodeName") {
            Some(v) => obj.insert("nodeName".into(), v.clone()),
            None => obj.shift_remove("nodeName"),
        };
    }
    if masked != *new {
        errs.push(field::forbidden(
            &FieldPath::root("spec"),
            "pod updates may not change fields other than `spec.containers[*].image`,\
             `spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` \
             (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` \
             (allow it to be set to 1 if it was previously negative)",
        ));
    }
    if let (Some(Value::Array(old_t)), Some(new_t)) =
        (old.get("tolerations"), new.get("tolerations"))
    {
        let new_t = new_t.as_array().cloned().unwrap_or_default();
        if old_t.iter().any(|t| !new_t.contains(t)) {
            errs.push(field::forbidden(
                &FieldPath::root("spec.tolerations"),
                "existing toleration can not be modified except its tolerationSeconds",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::admission::validate;
    use serde_json::{Value, json};

    fn causes(v: &Value, old: Option<&Value>) -> Vec<String> {
        match validate("Pod", v, old) {
            Ok(()) => Vec::new(),
            Err(inv) => inv.causes.iter().map(ToString::to_string).collect(),
        }
    }

    fn pod(spec: Value) -> Value {
        json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"default"},"spec":spec})
    }

    #[test]
    fn image_required_with_kubernetes_message() {
        let p = pod(json!({"containers":[{"name":"c"}]}));
        let err = validate("Pod", &p, None).unwrap_err();
        assert_eq!(
            err.message(),
            "Pod \"p\" is invalid: spec.containers[0].image: Required value"
        );
    }

    #[test]
    fn many_problems_reported_together() {
        let p = pod(
            json!({"restartPolicy":"Sometimes","volumes":[{"name":"v","emptyDir":{}}],
            "containers":[
              {"name":"c","image":"i","ports":[{"containerPort":0},{"containerPort":80,"protocol":"XTP"}],
               "volumeMounts":[{"name":"nope","mountPath":"/m"}],
               "resources":{"requests":{"cpu":"2"},"limits":{"cpu":"1","memory":"lots"}}},
              {"name":"c","image":"i"}]}),
        );
        let c = causes(&p, None);
        let want = [
            "spec.containers[0].ports[0].containerPort: Invalid value: 0: must be between 1 and 65535, inclusive",
            "spec.containers[0].ports[1].protocol: Unsupported value: \"XTP\": supported values: \"TCP\", \"UDP\", \"SCTP\"",
            "spec.containers[0].volumeMounts[0].name: Not found: \"nope\"",
            "spec.containers[0].resources.limits[memory]: Invalid value: \"lots\": quantities must match",
            "spec.containers[0].resources.requests: Invalid value: \"2\": must be less than or equal to cpu limit of 1",
            "spec.containers[1].name: Duplicate value: \"c\"",
            "spec.restartPolicy: Unsupported value: \"Sometimes\"",
        ];
        for w in want {
            assert!(
                c.iter().any(|x| x.starts_with(w)),
                "missing {w:?} in {c:#?}"
            );
        }
        assert_eq!(c.len(), want.len(), "{c:#?}");
    }

    #[test]
    fn no_containers() {
        assert_eq!(
            causes(&pod(json!({"containers":[]})), None),
            vec!["spec.containers: Required value"]
        );
    }

    #[test]
    fn updates_may_change_only_images() {
        let old = pod(json!({"containers":[{"name":"c","image":"a"}],"restartPolicy":"Always"}));
        let ok = pod(json!({"containers":[{"name":"c","image":"b"}],"restartPolicy":"Always"}));
        assert!(causes(&ok, Some(&old)).is_empty());
        let bad = pod(json!({"containers":[{"name":"c","image":"a"}],"restartPolicy":"Never"}));
        let c = causes(&bad, Some(&old));
        assert_eq!(c.len(), 1);
        assert!(c[0].starts_with("spec: Forbidden: pod updates may not change fields"));
        let bound = pod(
            json!({"containers":[{"name":"c","image":"a"}],"restartPolicy":"Always","nodeName":"n1"}),
        );
        assert!(
            causes(&bound, Some(&old)).is_empty(),
            "binding sets nodeName once"
        );
        let moved = pod(
            json!({"containers":[{"name":"c","image":"a"}],"restartPolicy":"Always","nodeName":"n2"}),
        );
        assert_eq!(causes(&moved, Some(&bound)).len(), 1);
    }
}
