//! Field errors: what is wrong, where (`spec.containers[0].image`), in Kubernetes' words.
//!
//! The messages are kube-apiserver's (`Required value`, `Invalid value: "x": ...`,
//! `Unsupported value: ...`), so clients and people see what they would see against
//! Kubernetes.

use std::fmt;

use serde::Serialize;
use serde_json::{Value, json};

/// A path into an object, built as validation descends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    pub fn root(name: &str) -> FieldPath {
        FieldPath(name.to_string())
    }

    pub fn child(&self, name: &str) -> FieldPath {
        if self.0.is_empty() {
            FieldPath(name.to_string())
        } else {
            FieldPath(format!("{}.{name}", self.0))
        }
    }

    pub fn index(&self, i: usize) -> FieldPath {
        FieldPath(format!("{}[{i}]", self.0))
    }

    pub fn key(&self, k: &str) -> FieldPath {
        FieldPath(format!("{}[{k}]", self.0))
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One entry of a Status' `details.causes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported`, ...
    pub reason: String,
    /// The message without the field: `Required value`.
    pub message: String,
    pub field: String,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Kubernetes quotes values in messages as Go's `%#v`/`%q` does: strings quoted, numbers
/// bare.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn cause(reason: &str, field: &FieldPath, message: String) -> Cause {
    Cause {
        reason: reason.to_string(),
        message,
        field: field.to_string(),
    }
}

pub fn required(field: &FieldPath, detail: &str) -> Cause {
    let message = if detail.is_empty() {
        "Required value".to_string()
    } else {
        format!("Required value: {detail}")
    };
    cause("FieldValueRequired", field, message)
}

pub fn invalid(field: &FieldPath, value: &Value, detail: &str) -> Cause {
    let message = if detail.is_empty() {
        format!("Invalid value: {}", shown(value))
    } else {
        format!("Invalid value: {}: {detail}", shown(value))
    };
    cause("FieldValueInvalid", field, message)
}

pub fn not_supported(field: &FieldPath, value: &Value, supported: &[&str]) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    cause(
        "FieldValueNotSupported",
        field,
        format!(
            "Unsupported value: {}: supported values: {}",
            shown(value),
            list.join(", ")
        ),
    )
}

pub fn duplicate(field: &FieldPath, value: &Value) -> Cause {
    cause(
        "FieldValueDuplicate",
        field,
        format!("Duplicate value: {}", shown(value)),
    )
}

pub fn forbidden(field: &FieldPath, detail: &str) -> Cause {
    cause("FieldValueForbidden", field, format!("Forbidden: {detail}"))
}

pub fn too_long(field: &FieldPath, max: usize) -> Cause {
    cause(
        "FieldValueTooLong",
        field,
        format!("Too long: may not be more than {max} bytes"),
    )
}

/// The object is invalid: 422 with these causes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct Invalid {
    /// `Pod`, `Deployment`.
    pub kind: String,
    /// The API group (`""` for core, `apps`, ...): Kubernetes names `Deployment.apps`.
    pub group: String,
    pub name: String,
    pub causes: Vec<Cause>,
}

impl Invalid {
    /// `Pod "bad2" is invalid: spec.containers[0].image: Required value`, or with a
    /// bracketed list when there are several causes, as kube-apiserver writes it.
    pub fn message(&self) -> String {
        let qualified = if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        };
        let causes: Vec<String> = self.causes.iter().map(ToString::to_string).collect();
        let body = match causes.len() {
            0 => "<nil>".to_string(),
            1 => causes[0].clone(),
            _ => format!("[{}]", causes.join(", ")),
        };
        format!("{qualified} {:?} is invalid: {body}", self.name)
    }

    /// The whole Status object for the response body.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message(),
            "reason": "Invalid",
            "details": {
                "name": self.name,
                "group": self.group,
                "kind": self.kind,
                "causes": self.causes,
            },
            "code": 422,
        });
        // `group` is omitempty in StatusDetails: absent for the core group.
        if self.group.is_empty()
            && let Some(d) = status["details"].as_object_mut()
        {
            d.shift_remove("group");
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_messages() {
        let f = FieldPath::root("spec")
            .child("containers")
            .index(0)
            .child("image");
        let inv = Invalid {
            kind: "Pod".into(),
            group: String::new(),
            name: "bad2".into(),
            causes: vec![required(&f, "")],
        };
        assert_eq!(
            inv.message(),
            "Pod \"bad2\" is invalid: spec.containers[0].image: Required value"
        );
        let st = inv.status();
        assert_eq!(st["code"], 422);
        assert_eq!(st["details"]["causes"][0]["reason"], "FieldValueRequired");
        assert_eq!(
            st["details"]["causes"][0]["field"],
            "spec.containers[0].image"
        );

        let two = Invalid {
            kind: "Deployment".into(),
            group: "apps".into(),
            name: "d".into(),
            causes: vec![
                not_supported(
                    &FieldPath::root("spec.x"),
                    &json!("Sometimes"),
                    &["Always", "Never"],
                ),
                invalid(&FieldPath::root("metadata.name"), &json!("A"), "bad"),
            ],
        };
        assert_eq!(
            two.message(),
            "Deployment.apps \"d\" is invalid: [spec.x: Unsupported value: \"Sometimes\": supported values: \"Always\", \"Never\", metadata.name: Invalid value: \"A\": bad]"
        );
    }
}
