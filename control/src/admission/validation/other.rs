//! The kinds outside core/v1 and apps/batch that hull serves: networking (Ingress,
//! IngressClass), autoscaling (HPA), storage (StorageClass, PersistentVolume), RBAC,
//! discovery (EndpointSlice), coordination (Lease).

use serde_json::{Value, json};

use super::{immutable, str_at};
use crate::admission::field::{self, Cause, FieldPath};
use crate::admission::quantity::Quantity;

pub fn validate(kind: &str, new: &Value, old: Option<&Value>, errs: &mut Vec<Cause>) {
    match kind {
        "Ingress" => ingress(new, errs),
        "IngressClass"
            if new
                .pointer("/spec/controller")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty) =>
        {
            errs.push(field::required(&FieldPath::root("spec.controller"), ""));
        }
        "HorizontalPodAutoscaler" => hpa(new, errs),
        "StorageClass" => {
            if str_at(new, "provisioner").is_none_or(str::is_empty) {
                errs.push(field::required(&FieldPath::root("provisioner"), ""));
            }
            if let Some(old) = old {
                for key in [
                    "provisioner",
                    "parameters",
                    "reclaimPolicy",
                    "volumeBindingMode",
                ] {
                    immutable(new.get(key), old.get(key), &FieldPath::root(key), errs);
                }
            }
        }
        "PersistentVolume" => persistent_volume(new, errs),
        "Role" | "ClusterRole" => rules(new, errs),
        "RoleBinding" | "ClusterRoleBinding" => role_binding(new, old, errs),
        "EndpointSlice" => {
            let allowed = ["IPv4", "IPv6", "FQDN"];
            let t = new.get("addressType").cloned().unwrap_or(Value::Null);
            if t.is_null() {
                errs.push(field::required(&FieldPath::root("addressType"), ""));
            } else if !t.as_str().is_some_and(|s| allowed.contains(&s)) {
                errs.push(field::not_supported(
                    &FieldPath::root("addressType"),
                    &t,
                    &allowed,
                ));
            }
            if let Some(old) = old {
                immutable(
                    new.get("addressType"),
                    old.get("addressType"),
                    &FieldPath::root("addressType"),
                    errs,
                );
            }
        }
        "Lease" => {
            for key in ["leaseDurationSeconds", "leaseTransitions"] {
                if let Some(v) = new
                    .pointer(&format!("/spec/{key}"))
                    .filter(|v| !v.is_null())
                    && v.as_i64().is_none_or(|n| n < 0)
                {
                    errs.push(field::invalid(
                        &FieldPath::root("spec").child(key),
                        v,
                        "must be greater than or equal to 0",
                    ));
                }
            }
        }
        _ => {}
    }
}

fn ingress(new: &Value, errs: &mut Vec<Cause>) {
    let spec = FieldPath::root("spec");
    let rules = new.pointer("/spec/rules").and_then(Value::as_array);
    let has_default = new
        .pointer("/spec/defaultBackend")
        .is_some_and(|v| !v.is_null());
    if !has_default && rules.is_none_or(Vec::is_empty) {
        errs.push(field::invalid(
            &spec,
            &json!(new.get("spec")),
            "either `defaultBackend` or `rules` must be specified",
        ));
    }
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        let rp = spec.child("rules").index(i);
        let paths = rule.pointer("/http/paths").and_then(Value::as_array);
        if rule.get("http").is_some() && paths.is_none_or(Vec::is_empty) {
            errs.push(field::required(&rp.child("http").child("paths"), ""));
        }
        for (j, p) in paths.into_iter().flatten().enumerate() {
            let pp = rp.child("http").child("paths").index(j);
            match str_at(p, "pathType") {
                None => errs.push(field::required(
                    &pp.child("pathType"),
                    "pathType must be specified",
                )),
                Some(t) if !["Exact", "Prefix", "ImplementationSpecific"].contains(&t) => errs
                    .push(field::not_supported(
                        &pp.child("pathType"),
                        &json!(t),
                        &["Exact", "Prefix", "ImplementationSpecific"],
                    )),
                Some(t) => {
                    let path = str_at(p, "path").unwrap_or_default();
                    if t != "ImplementationSpecific" && !path.starts_with('/') {
                        errs.push(field::invalid(
                            &pp.child("path"),
                            &json!(path),
                            "must be an absolute path",
                        ));
                    }
                }
            }
            if p.get("backend").is_none_or(Value::is_null) {
                errs.push(field::required(&pp.child("backend"), ""));
            }
        }
    }
}

fn hpa(new: &Value, errs: &mut Vec<Cause>) {
    let spec = FieldPath::root("spec");
    for key in ["kind", "name"] {
        if new
            .pointer(&format!("/spec/scaleTargetRef/{key}"))
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            errs.push(field::required(
                &spec.child("scaleTargetRef").child(key),
                "",
            ));
        }
    }
    let min = new
        .pointer("/spec/minReplicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    match new.pointer("/spec/maxReplicas").and_then(Value::as_i64) {
        None => errs.push(field::required(&spec.child("maxReplicas"), "")),
        Some(max) if max < 1 => errs.push(field::invalid(
            &spec.child("maxReplicas"),
            &json!(max),
            "must be greater than 0",
        )),
        Some(max) if max < min => errs.push(field::invalid(
            &spec.child("maxReplicas"),
            &json!(max),
            "must be greater than or equal to `minReplicas`",
        )),
        Some(_) => {}
    }
    if min < 1 {
        errs.push(field::invalid(
            &spec.child("minReplicas"),
            &json!(min),
            "must be greater than or equal to 1",
        ));
    }
}

fn persistent_volume(new: &Value, errs: &mut Vec<Cause>) {
    let spec = FieldPath::root("spec");
    match new.pointer("/spec/capacity/storage") {
        None => errs.push(field::required(&spec.child("capacity").key("storage"), "")),
        Some(v) => {
            if let Err(e) = Quantity::from_json(v) {
                errs.push(field::invalid(
                    &spec.child("capacity").key("storage"),
                    v,
                    &e,
                ));
            }
        }
    }
    if new
        .pointer("/spec/accessModes")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        errs.push(field::required(&spec.child("accessModes"), ""));
    }
    const SOURCES: &[&str] = &[
        "hostPath",
        "local",
        "nfs",
        "csi",
        "iscsi",
        "fc",
        "cephfs",
        "rbd",
        "glusterfs",
        "awsElasticBlockStore",
        "gcePersistentDisk",
        "azureDisk",
        "azureFile",
        "vsphereVolume",
        "flexVolume",
        "portworxVolume",
        "scaleIO",
        "storageos",
        "quobyte",
        "cinder",
        "photonPersistentDisk",
        "flocker",
    ];
    let n = new.get("spec").and_then(Value::as_object).map_or(0, |m| {
        m.keys().filter(|k| SOURCES.contains(&k.as_str())).count()
    });
    if n == 0 {
        errs.push(field::required(&spec, "must specify a volume type"));
    } else if n > 1 {
        errs.push(field::forbidden(
            &spec,
            "may not specify more than 1 volume type",
        ));
    }
}

fn rules(new: &Value, errs: &mut Vec<Cause>) {
    let Some(Value::Array(list)) = new.get("rules") else {
        return;
    };
    for (i, r) in list.iter().enumerate() {
        let rp = FieldPath::root("rules").index(i);
        if r.get("verbs")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            errs.push(field::required(
                &rp.child("verbs"),
                "verbs must contain at least one value",
            ));
        }
        let has_urls = r
            .get("nonResourceURLs")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        let has_resources = r
            .get("resources")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        if !has_urls && !has_resources {
            errs.push(field::required(
                &rp.child("resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
}

fn role_binding(new: &Value, old: Option<&Value>, errs: &mut Vec<Cause>) {
    let rr = FieldPath::root("roleRef");
    match new.get("roleRef") {
        Some(r @ Value::Object(_)) => {
            if str_at(r, "name").is_none_or(str::is_empty) {
                errs.push(field::required(&rr.child("name"), ""));
            }
            let kinds = ["Role", "ClusterRole"];
            if !str_at(r, "kind").is_some_and(|k| kinds.contains(&k)) {
                errs.push(field::not_supported(
                    &rr.child("kind"),
                    r.get("kind").unwrap_or(&Value::Null),
                    &kinds,
                ));
            }
        }
        _ => errs.push(field::required(&rr, "")),
    }
    if let Some(Value::Array(subjects)) = new.get("subjects") {
        for (i, s) in subjects.iter().enumerate() {
            let sp = FieldPath::root("subjects").index(i);
            let kinds = ["ServiceAccount", "User", "Group"];
            if !str_at(s, "kind").is_some_and(|k| kinds.contains(&k)) {
                errs.push(field::not_supported(
                    &sp.child("kind"),
                    s.get("kind").unwrap_or(&Value::Null),
                    &kinds,
                ));
            }
            if str_at(s, "name").is_none_or(str::is_empty) {
                errs.push(field::required(&sp.child("name"), ""));
            }
        }
    }
    if let Some(old) = old
        && new.get("roleRef") != old.get("roleRef")
    {
        errs.push(field::invalid(
            &rr,
            new.get("roleRef").unwrap_or(&Value::Null),
            "cannot change roleRef",
        ));
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
    fn ingress_paths() {
        let ing = json!({"apiVersion":"networking.k8s.io/v1","kind":"Ingress","metadata":{"name":"i"},
            "spec":{"rules":[{"http":{"paths":[{"path":"/","pathType":"Prefix","backend":{"service":{"name":"s","port":{"number":80}}}},
                                               {"path":"x","backend":{"service":{"name":"s","port":{"number":80}}}}]}}]}});
        let c = causes("Ingress", &ing, None);
        assert_eq!(
            c,
            vec![
                "spec.rules[0].http.paths[1].pathType: Required value: pathType must be specified"
            ]
        );
    }

    #[test]
    fn hpa_and_rbac() {
        let mut hpa = json!({"apiVersion":"autoscaling/v2","kind":"HorizontalPodAutoscaler","metadata":{"name":"h"},
            "spec":{"scaleTargetRef":{"apiVersion":"apps/v1","kind":"Deployment","name":"web"},"minReplicas":3,"maxReplicas":2}});
        default("HorizontalPodAutoscaler", &mut hpa);
        assert_eq!(
            hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
        let c = causes("HorizontalPodAutoscaler", &hpa, None);
        assert_eq!(c.len(), 1);
        assert!(c[0].ends_with("must be greater than or equal to `minReplicas`"));

        let rb = json!({"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{"name":"b"},
            "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"r"},
            "subjects":[{"kind":"User","name":"alice"}]});
        assert!(causes("RoleBinding", &rb, None).is_empty());
        let mut changed = rb.clone();
        changed["roleRef"]["name"] = json!("other");
        assert!(causes("RoleBinding", &changed, Some(&rb))[0].ends_with("cannot change roleRef"));
        let role = json!({"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role","metadata":{"name":"r"},
            "rules":[{"apiGroups":[""],"resources":["pods"]}]});
        assert_eq!(
            causes("Role", &role, None),
            vec!["rules[0].verbs: Required value: verbs must contain at least one value"]
        );
    }

    #[test]
    fn storage() {
        let pv = json!({"apiVersion":"v1","kind":"PersistentVolume","metadata":{"name":"pv"},
            "spec":{"capacity":{"storage":"1Gi"},"accessModes":["ReadWriteOnce"],"hostPath":{"path":"/x"}}});
        assert!(causes("PersistentVolume", &pv, None).is_empty());
        let sc =
            json!({"apiVersion":"storage.k8s.io/v1","kind":"StorageClass","metadata":{"name":"s"}});
        assert_eq!(
            causes("StorageClass", &sc, None),
            vec!["provisioner: Required value"]
        );
    }
}
