//! Matching: label selectors, node selector terms (node affinity), taints against
//! tolerations — the predicates every filter and score is built from.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

pub type Labels = BTreeMap<String, String>;

/// A `metav1.LabelSelector`: `matchLabels` and `matchExpressions` ANDed. An empty
/// selector matches everything (callers treat an absent one as matching nothing).
pub fn selector_matches(sel: &LabelSelector, labels: &Labels) -> bool {
    sel.match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
        && sel
            .match_expressions
            .iter()
            .flatten()
            .all(|r| requirement_matches(r, labels))
}

fn requirement_matches(r: &LabelSelectorRequirement, labels: &Labels) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let got = labels.get(&r.key);
    match r.operator.as_str() {
        "In" => got.is_some_and(|v| values.contains(v)),
        "NotIn" => got.is_none_or(|v| !values.contains(v)),
        "Exists" => got.is_some(),
        "DoesNotExist" => got.is_none(),
        _ => false,
    }
}

/// Adds `matchLabelKeys` (`key In [pod's value]`) and `mismatchLabelKeys`
/// (`key NotIn [pod's value]`) to a selector, as the API server would have merged them.
pub fn with_label_keys(
    sel: &LabelSelector,
    pod_labels: &Labels,
    match_keys: &[String],
    mismatch_keys: &[String],
) -> LabelSelector {
    let mut out = sel.clone();
    let exprs = out.match_expressions.get_or_insert_with(Vec::new);
    for (keys, op) in [(match_keys, "In"), (mismatch_keys, "NotIn")] {
        for k in keys {
            if let Some(v) = pod_labels.get(k) {
                exprs.push(LabelSelectorRequirement {
                    key: k.clone(),
                    operator: op.into(),
                    values: Some(vec![v.clone()]),
                });
            }
        }
    }
    out
}

/// One node selector term: its expressions (on labels) and fields (only
/// `metadata.name` exists) ANDed; a term with neither matches nothing.
pub fn term_matches(term: &NodeSelectorTerm, node_name: &str, labels: &Labels) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let name_labels: Labels = [("metadata.name".to_string(), node_name.to_string())].into();
    exprs.iter().all(|r| node_requirement_matches(r, labels))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && node_requirement_matches(r, &name_labels))
}

fn node_requirement_matches(r: &NodeSelectorRequirement, labels: &Labels) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let got = labels.get(&r.key);
    let int = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => got.is_some_and(|v| values.contains(v)),
        "NotIn" => got.is_none_or(|v| !values.contains(v)),
        "Exists" => got.is_some(),
        "DoesNotExist" => got.is_none(),
        // Gt/Lt take exactly one integer value; the label must parse too.
        "Gt" | "Lt" => {
            let (Some(v), [bound]) = (got.and_then(|v| int(v)), values) else {
                return false;
            };
            let Some(bound) = int(bound) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// The pod's `nodeSelector` and required node affinity, both of which must hold.
pub fn node_affinity_matches(pod: &Pod, node_name: &str, labels: &Labels) -> bool {
    let Some(spec) = &pod.spec else {
        return true;
    };
    if !spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        None => true,
        Some(sel) => sel
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node_name, labels)),
    }
}

/// kube's `ToleratesTaint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    let exists = t.operator.as_deref() == Some("Exists");
    if key.is_empty() {
        // An empty key matches every taint, but only with operator Exists.
        return exists;
    }
    if key != taint.key {
        return false;
    }
    exists || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
}

/// The first taint with one of `effects` that no toleration of the pod tolerates.
pub fn untolerated<'a>(
    taints: &'a [Taint],
    tolerations: &[Toleration],
    effects: &[&str],
) -> Option<&'a Taint> {
    taints.iter().find(|taint| {
        effects.contains(&taint.effect.as_str()) && !tolerations.iter().any(|t| tolerates(t, taint))
    })
}

/// Whether the pod tolerates a taint that is not on the node (the not-ready and
/// unreachable conditions, before node lifecycle has tainted the node).
pub fn tolerates_key(tolerations: &[Toleration], key: &str, effect: &str) -> bool {
    let taint = Taint {
        key: key.into(),
        effect: effect.into(),
        ..Default::default()
    };
    tolerations.iter().any(|t| tolerates(t, &taint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: serde_json::Value) -> Labels {
        serde_json::from_value(v).expect("labels")
    }

    #[test]
    fn node_selector_operators() {
        let l = labels(json!({"zone": "a", "gen": "5"}));
        let term = |e: serde_json::Value| -> NodeSelectorTerm {
            serde_json::from_value(json!({"matchExpressions": [e]})).expect("term")
        };
        for (expr, want) in [
            (
                json!({"key": "zone", "operator": "In", "values": ["a", "b"]}),
                true,
            ),
            (
                json!({"key": "zone", "operator": "NotIn", "values": ["a"]}),
                false,
            ),
            (
                json!({"key": "disk", "operator": "NotIn", "values": ["ssd"]}),
                true,
            ),
            (json!({"key": "zone", "operator": "Exists"}), true),
            (json!({"key": "zone", "operator": "DoesNotExist"}), false),
            (
                json!({"key": "gen", "operator": "Gt", "values": ["4"]}),
                true,
            ),
            (
                json!({"key": "gen", "operator": "Lt", "values": ["4"]}),
                false,
            ),
            (
                json!({"key": "zone", "operator": "Gt", "values": ["4"]}),
                false,
            ),
        ] {
            assert_eq!(term_matches(&term(expr.clone()), "n1", &l), want, "{expr}");
        }
        let by_name: NodeSelectorTerm = serde_json::from_value(json!({"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": ["n1"]}]}))
        .expect("term");
        assert!(term_matches(&by_name, "n1", &l));
        assert!(!term_matches(&by_name, "n2", &l));
        assert!(!term_matches(&NodeSelectorTerm::default(), "n1", &l));
    }

    #[test]
    fn tolerations_match_as_kubernetes_does() {
        let taint = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let tol = |v: serde_json::Value| -> Toleration { serde_json::from_value(v).expect("tol") };
        assert!(tolerates(&tol(json!({"key": "k", "value": "v"})), &taint));
        assert!(tolerates(
            &tol(json!({"key": "k", "operator": "Exists", "effect": "NoSchedule"})),
            &taint
        ));
        assert!(tolerates(&tol(json!({"operator": "Exists"})), &taint));
        assert!(!tolerates(&tol(json!({"key": "k", "value": "w"})), &taint));
        assert!(!tolerates(
            &tol(json!({"key": "k", "operator": "Exists", "effect": "NoExecute"})),
            &taint
        ));
        assert!(!tolerates(&tol(json!({"value": "v"})), &taint));
    }
}
