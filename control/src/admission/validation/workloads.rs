//! apps/v1 workloads, ReplicationControllers, Jobs and CronJobs: selectors that match
//! their template, replica counts, strategies, immutable selectors.

use serde_json::{Map, Value, json};

use super::pod::validate_template;
use super::{immutable, labels, str_at};
use crate::admission::field::{self, Cause, FieldPath};

/// Whether a `LabelSelector` (`matchLabels` + `matchExpressions`) selects `labels`.
pub fn selector_matches(selector: &Value, labels: &Map<String, Value>) -> bool {
    let ml_ok = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let exprs = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    ml_ok
        && exprs.iter().all(|e| {
            let key = str_at(e, "key").unwrap_or_default();
            let values: Vec<&Value> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|v| v.iter().collect())
                .unwrap_or_default();
            let have = labels.get(key);
            match str_at(e, "operator") {
                Some("In") => have.is_some_and(|h| values.contains(&h)),
                Some("NotIn") => have.is_none_or(|h| !values.contains(&h)),
                Some("Exists") => have.is_some(),
                Some("DoesNotExist") => have.is_none(),
                _ => false,
            }
        })
}

fn label_selector(sel: &Value, path: &FieldPath, errs: &mut Vec<Cause>) {
    labels(sel.get("matchLabels"), &path.child("matchLabels"), errs);
    if let Some(Value::Array(exprs)) = sel.get("matchExpressions") {
        for (i, e) in exprs.iter().enumerate() {
            let ep = path.child("matchExpressions").index(i);
            let n = e
                .get("values")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            match str_at(e, "operator") {
                Some("In" | "NotIn") if n == 0 => errs.push(field::required(
                    &ep.child("values"),
                    "must be specified when `operator` is 'In' or 'NotIn'",
                )),
                Some("Exists" | "DoesNotExist") if n > 0 => errs.push(field::forbidden(
                    &ep.child("values"),
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                )),
                Some("In" | "NotIn" | "Exists" | "DoesNotExist") => {}
                other => errs.push(field::not_supported(
                    &ep.child("operator"),
                    &json!(other.unwrap_or_default()),
                    &["In", "NotIn", "Exists", "DoesNotExist"],
                )),
            }
        }
    }
}

fn is_empty_selector(sel: &Value) -> bool {
    let empty = |k: &str| match sel.get(k) {
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => true,
    };
    empty("matchLabels") && empty("matchExpressions")
}

fn non_negative(spec: &Value, key: &str, path: &FieldPath, errs: &mut Vec<Cause>) {
    if let Some(v) = spec.get(key).filter(|v| !v.is_null())
        && v.as_i64().is_none_or(|n| n < 0)
    {
        errs.push(field::invalid(
            &path.child(key),
            v,
            "must be greater than or equal to 0",
        ));
    }
}

/// `25%` or a non-negative integer.
fn int_or_percent(v: Option<&Value>) -> Option<Result<(i64, bool), ()>> {
    let v = v.filter(|v| !v.is_null())?;
    Some(match v {
        Value::Number(n) => n.as_i64().filter(|n| *n >= 0).map(|n| (n, false)).ok_or(()),
        Value::String(s) => s
            .strip_suffix('%')
            .and_then(|p| p.parse::<i64>().ok())
            .filter(|p| (0..=100).contains(p))
            .map(|p| (p, true))
            .ok_or(()),
        _ => Err(()),
    })
}

fn template_restart_policy(
    spec: &Value,
    path: &FieldPath,
    allowed: &[&str],
    errs: &mut Vec<Cause>,
) {
    if let Some(rp) = spec.pointer("/template/spec/restartPolicy")
        && !rp.as_str().is_some_and(|s| allowed.contains(&s))
    {
        errs.push(field::not_supported(
            &path.child("template").child("spec").child("restartPolicy"),
            rp,
            allowed,
        ));
    }
}

/// The selector must be set, non-empty, and select the template's labels.
fn selector_and_template(kind: &str, spec: &Value, path: &FieldPath, errs: &mut Vec<Cause>) {
    let template_labels = spec
        .pointer("/template/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let sel_path = path.child("selector");
    let selector = spec.get("selector").filter(|s| !s.is_null());
    if kind == "ReplicationController" {
        // A plain map, defaulted from the template's labels.
        if let Some(Value::Object(sel)) = selector {
            labels(selector, &sel_path, errs);
            if sel.is_empty() {
                errs.push(field::required(&sel_path, ""));
            } else if !sel.iter().all(|(k, v)| template_labels.get(k) == Some(v)) {
                errs.push(field::invalid(
                    &path.child("template").child("metadata").child("labels"),
                    &Value::Object(template_labels.clone()),
                    "`selector` does not match template `labels`",
                ));
            }
        } else {
            errs.push(field::required(&sel_path, ""));
        }
        return;
    }
    let Some(selector) = selector else {
        errs.push(field::required(&sel_path, ""));
        return;
    };
    label_selector(selector, &sel_path, errs);
    if is_empty_selector(selector) {
        errs.push(field::invalid(
            &sel_path,
            selector,
            &format!(
                "empty selector is invalid for {}",
                kind.to_ascii_lowercase()
            ),
        ));
    } else if !selector_matches(selector, &template_labels) {
        errs.push(field::invalid(
            &path.child("template").child("metadata").child("labels"),
            &Value::Object(template_labels),
            "`selector` does not match template `labels`",
        ));
    }
}

/// A StatefulSet's template as its pods will have it: each `volumeClaimTemplates` entry is
/// a volume of that name (the controller mounts the claim there), so containers may mount
/// it — Kubernetes validates the union of volumes and claims the same way.
fn template_with_claim_volumes(spec: &Value) -> Option<Value> {
    let mut template = spec.get("template")?.clone();
    let claims: Vec<String> = spec
        .get("volumeClaimTemplates")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|c| c.pointer("/metadata/name").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if claims.is_empty() {
        return Some(template);
    }
    let Some(pod) = template.get_mut("spec").and_then(Value::as_object_mut) else {
        return Some(template);
    };
    let volumes = pod
        .entry("volumes")
        .or_insert_with(|| Value::Array(Vec::new()));
    if volumes.is_null() {
        *volumes = Value::Array(Vec::new());
    }
    if let Some(list) = volumes.as_array_mut() {
        for claim in claims {
            if !list
                .iter()
                .any(|v| v.get("name").and_then(Value::as_str) == Some(claim.as_str()))
            {
                list.push(serde_json::json!({
                    "name": claim,
                    "persistentVolumeClaim": {"claimName": claim},
                }));
            }
        }
    }
    Some(template)
}

/// Deployment, ReplicaSet, DaemonSet, StatefulSet, ReplicationController.
pub fn validate_workload(kind: &str, new: &Value, old: Option<&Value>, errs: &mut Vec<Cause>) {
    let path = FieldPath::root("spec");
    let Some(spec) = new.get("spec").filter(|s| s.is_object()) else {
        errs.push(field::required(&path, ""));
        return;
    };
    selector_and_template(kind, spec, &path, errs);
    if kind == "StatefulSet" {
        let template = template_with_claim_volumes(spec);
        validate_template(template.as_ref(), &path.child("template"), None, errs);
    } else {
        validate_template(spec.get("template"), &path.child("template"), None, errs);
    }
    template_restart_policy(spec, &path, &["Always"], errs);
    non_negative(spec, "replicas", &path, errs);
    non_negative(spec, "minReadySeconds", &path, errs);
    non_negative(spec, "revisionHistoryLimit", &path, errs);
    match kind {
        "Deployment" => deployment_strategy(spec, &path, errs),
        "StatefulSet" => {
            if let Some(p) = spec.get("podManagementPolicy")
                && !p
                    .as_str()
                    .is_some_and(|s| ["OrderedReady", "Parallel"].contains(&s))
            {
                errs.push(field::not_supported(
                    &path.child("podManagementPolicy"),
                    p,
                    &["OrderedReady", "Parallel"],
                ));
            }
        }
        _ => {}
    }
    let Some(old_spec) = old.and_then(|o| o.get("spec")) else {
        return;
    };
    if kind != "ReplicationController" {
        immutable(
            spec.get("selector"),
            old_spec.get("selector"),
            &path.child("selector"),
            errs,
        );
    }
    if kind == "StatefulSet" {
        let allowed = [
            "replicas",
            "ordinals",
            "template",
            "updateStrategy",
            "revisionHistoryLimit",
            "persistentVolumeClaimRetentionPolicy",
            "minReadySeconds",
        ];
        let strip = |s: &Value| -> Value {
            let mut m = s.as_object().cloned().unwrap_or_default();
            m.retain(|k, _| !allowed.contains(&k.as_str()));
            Value::Object(m)
        };
        if strip(spec) != strip(old_spec) {
            errs.push(field::forbidden(
                &path,
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', \
                 'template', 'updateStrategy', 'revisionHistoryLimit', \
                 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            ));
        }
    }
}

fn deployment_strategy(spec: &Value, path: &FieldPath, errs: &mut Vec<Cause>) {
    let Some(strategy) = spec.get("strategy").filter(|s| s.is_object()) else {
        return;
    };
    let sp = path.child("strategy");
    let ty = strategy.get("type");
    match ty.and_then(Value::as_str) {
        Some("Recreate") => {
            if strategy.get("rollingUpdate").is_some_and(|r| !r.is_null()) {
                errs.push(field::forbidden(
                    &sp.child("rollingUpdate"),
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
        Some("RollingUpdate") | None => {
            let ru = strategy
                .get("rollingUpdate")
                .cloned()
                .unwrap_or(Value::Null);
            let rp = sp.child("rollingUpdate");
            let mut zero = 0;
            for key in ["maxUnavailable", "maxSurge"] {
                match int_or_percent(ru.get(key)) {
                    Some(Err(())) => errs.push(field::invalid(
                        &rp.child(key),
                        ru.get(key).unwrap_or(&Value::Null),
                        "must be a non-negative integer or a percentage between 0% and 100%",
                    )),
                    Some(Ok((0, _))) => zero += 1,
                    _ => {}
                }
            }
            if zero == 2 {
                errs.push(field::invalid(
                    &rp.child("maxUnavailable"),
                    ru.get("maxUnavailable").unwrap_or(&Value::Null),
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
        }
        Some(_) => errs.push(field::not_supported(
            &sp.child("type"),
            ty.unwrap_or(&Value::Null),
            &["Recreate", "RollingUpdate"],
        )),
    }
}

fn job_spec(spec: &Value, path: &FieldPath, errs: &mut Vec<Cause>, need_selector: bool) {
    for key in ["parallelism", "completions", "backoffLimit"] {
        non_negative(spec, key, path, errs);
    }
    if let Some(v) = spec.get("activeDeadlineSeconds").filter(|v| !v.is_null())
        && v.as_i64().is_none_or(|n| n <= 0)
    {
        errs.push(field::invalid(
            &path.child("activeDeadlineSeconds"),
            v,
            "must be greater than 0",
        ));
    }
    if need_selector && let Some(sel) = spec.get("selector").filter(|s| !s.is_null()) {
        label_selector(sel, &path.child("selector"), errs);
        let tl = spec
            .pointer("/template/metadata/labels")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if !selector_matches(sel, &tl) {
            errs.push(field::invalid(
                &path.child("template").child("metadata").child("labels"),
                &Value::Object(tl),
                "`selector` does not match template `labels`",
            ));
        }
    }
    validate_template(spec.get("template"), &path.child("template"), None, errs);
    template_restart_policy(spec, path, &["OnFailure", "Never"], errs);
    if spec.pointer("/template/spec").is_some()
        && spec.pointer("/template/spec/restartPolicy").is_none()
    {
        errs.push(field::required(
            &path.child("template").child("spec").child("restartPolicy"),
            "",
        ));
    }
}

pub fn validate_job(new: &Value, old: Option<&Value>, errs: &mut Vec<Cause>) {
    let path = FieldPath::root("spec");
    let Some(spec) = new.get("spec").filter(|s| s.is_object()) else {
        errs.push(field::required(&path, ""));
        return;
    };
    job_spec(spec, &path, errs, true);
    if let Some(old_spec) = old.and_then(|o| o.get("spec")) {
        for key in ["selector", "completions", "completionMode"] {
            immutable(spec.get(key), old_spec.get(key), &path.child(key), errs);
        }
        // The template may not change, except scheduling directives of a suspended job
        // (not supported here: the whole template is immutable).
        immutable(
            spec.get("template"),
            old_spec.get("template"),
            &path.child("template"),
            errs,
        );
    }
}

/// A five-field cron schedule (or a `@hourly`-style macro), checked field by field.
fn cron_ok(schedule: &str) -> bool {
    let s = schedule
        .strip_prefix("CRON_TZ=")
        .or_else(|| schedule.strip_prefix("TZ="))
        .and_then(|rest| rest.split_once(' ').map(|(_, s)| s))
        .unwrap_or(schedule)
        .trim();
    if s.starts_with('@') {
        return [
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
        ]
        .contains(&s)
            || s.strip_prefix("@every ")
                .is_some_and(|d| !d.trim().is_empty());
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    let ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
    fields.len() == 5
        && fields.iter().zip(ranges).all(|(f, (lo, hi))| {
            f.split(',').all(|part| {
                let (range, step) = match part.split_once('/') {
                    Some((r, s)) => (r, Some(s)),
                    None => (part, None),
                };
                let step_ok = step.is_none_or(|s| s.parse::<u32>().is_ok_and(|n| n > 0));
                let in_range = |x: &str| {
                    x.parse::<u32>().is_ok_and(|n| (lo..=hi).contains(&n))
                        || (x.len() == 3 && x.chars().all(|c| c.is_ascii_alphabetic()))
                };
                let range_ok = range == "*"
                    || range == "?"
                    || match range.split_once('-') {
                        Some((a, b)) => in_range(a) && in_range(b),
                        None => in_range(range),
                    };
                step_ok && range_ok
            })
        })
}

pub fn validate_cron_job(new: &Value, errs: &mut Vec<Cause>) {
    let path = FieldPath::root("spec");
    let Some(spec) = new.get("spec").filter(|s| s.is_object()) else {
        errs.push(field::required(&path, ""));
        return;
    };
    match str_at(spec, "schedule") {
        Some(s) if !s.is_empty() => {
            if !cron_ok(s) {
                errs.push(field::invalid(
                    &path.child("schedule"),
                    &json!(s),
                    "unparseable cron schedule",
                ));
            }
        }
        _ => errs.push(field::required(&path.child("schedule"), "")),
    }
    if let Some(p) = spec.get("concurrencyPolicy")
        && !p
            .as_str()
            .is_some_and(|s| ["Allow", "Forbid", "Replace"].contains(&s))
    {
        errs.push(field::not_supported(
            &path.child("concurrencyPolicy"),
            p,
            &["Allow", "Forbid", "Replace"],
        ));
    }
    for key in [
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
        "startingDeadlineSeconds",
    ] {
        non_negative(spec, key, &path, errs);
    }
    let jt = path.child("jobTemplate").child("spec");
    match spec.pointer("/jobTemplate/spec") {
        Some(js @ Value::Object(_)) => job_spec(js, &jt, errs, false),
        _ => errs.push(field::required(&jt, "")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::{default, validate};

    fn causes(kind: &str, v: &Value, old: Option<&Value>) -> Vec<String> {
        match validate(kind, v, old) {
            Ok(()) => Vec::new(),
            Err(inv) => inv.causes.iter().map(ToString::to_string).collect(),
        }
    }

    fn deploy(sel: Value, labels: Value) -> Value {
        let mut d = json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},
          "spec":{"replicas":2,"selector":sel,
            "template":{"metadata":{"labels":labels},"spec":{"containers":[{"name":"web","image":"busybox:1.36"}]}}}});
        default("Deployment", &mut d);
        d
    }

    #[test]
    fn deployment_ok_and_selector_mismatch() {
        let ok = deploy(
            json!({"matchLabels":{"app":"web"}}),
            json!({"app":"web","x":"y"}),
        );
        assert!(
            causes("Deployment", &ok, None).is_empty(),
            "{:?}",
            causes("Deployment", &ok, None)
        );
        let bad = deploy(json!({"matchLabels":{"app":"other"}}), json!({"app":"web"}));
        let c = causes("Deployment", &bad, None);
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(
            c[0].ends_with("`selector` does not match template `labels`"),
            "{c:?}"
        );
        let err = validate("Deployment", &bad, None).unwrap_err();
        assert!(
            err.message()
                .starts_with("Deployment.apps \"web\" is invalid: spec.template.metadata.labels")
        );
        let none = deploy(json!({}), json!({"app":"web"}));
        assert!(
            causes("Deployment", &none, None)[0]
                .contains("empty selector is invalid for deployment")
        );
    }

    #[test]
    fn selector_is_immutable_and_restart_policy_always() {
        let old = deploy(
            json!({"matchLabels":{"app":"web"}}),
            json!({"app":"web","v":"2"}),
        );
        let new = deploy(
            json!({"matchLabels":{"app":"web","v":"2"}}),
            json!({"app":"web","v":"2"}),
        );
        let c = causes("Deployment", &new, Some(&old));
        assert_eq!(c.len(), 1);
        assert!(
            c[0].starts_with("spec.selector: Invalid value")
                && c[0].ends_with("field is immutable")
        );
        let mut never = old.clone();
        never["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        assert!(causes("Deployment", &never, None)[0].contains("supported values: \"Always\""));
    }

    #[test]
    fn strategy_checks() {
        let mut d = deploy(json!({"matchLabels":{"app":"web"}}), json!({"app":"web"}));
        d["spec"]["strategy"]["rollingUpdate"] = json!({"maxSurge":0,"maxUnavailable":0});
        assert!(causes("Deployment", &d, None)[0].contains("may not be 0 when `maxSurge` is 0"));
        d["spec"]["strategy"]["rollingUpdate"] = json!({"maxSurge":"120%"});
        assert!(
            causes("Deployment", &d, None)[0].starts_with("spec.strategy.rollingUpdate.maxSurge")
        );
    }

    #[test]
    fn jobs_need_restart_policy_and_cronjobs_a_schedule() {
        let mut j = json!({"apiVersion":"batch/v1","kind":"Job","metadata":{"name":"j","uid":"u"},
            "spec":{"template":{"spec":{"containers":[{"name":"c","image":"b"}]}}}});
        default("Job", &mut j);
        let c = causes("Job", &j, None);
        assert!(
            c[0].starts_with("spec.template.spec.restartPolicy: Unsupported value: \"Always\""),
            "{c:?}"
        );
        j["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        assert!(
            causes("Job", &j, None).is_empty(),
            "{:?}",
            causes("Job", &j, None)
        );

        let mut cj = json!({"apiVersion":"batch/v1","kind":"CronJob","metadata":{"name":"c"},
            "spec":{"schedule":"*/5 * * * *","jobTemplate":{"spec":{"template":{"spec":{"restartPolicy":"OnFailure","containers":[{"name":"c","image":"b"}]}}}}}});
        default("CronJob", &mut cj);
        assert!(
            causes("CronJob", &cj, None).is_empty(),
            "{:?}",
            causes("CronJob", &cj, None)
        );
        cj["spec"]["schedule"] = json!("61 * * * *");
        assert!(causes("CronJob", &cj, None)[0].starts_with("spec.schedule: Invalid value"));
        assert!(cron_ok("@hourly") && cron_ok("0 0 * * mon-fri") && !cron_ok("* * *"));
    }

    #[test]
    fn set_based_selectors() {
        let labels: Map<String, Value> =
            serde_json::from_value(json!({"tier":"front","app":"web"})).unwrap();
        let sel = json!({"matchExpressions":[{"key":"tier","operator":"In","values":["front","back"]},{"key":"app","operator":"Exists"}]});
        assert!(selector_matches(&sel, &labels));
        let sel =
            json!({"matchExpressions":[{"key":"tier","operator":"NotIn","values":["front"]}]});
        assert!(!selector_matches(&sel, &labels));
    }
}
