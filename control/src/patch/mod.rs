//! PATCH bodies, and who owns which fields (`metadata.managedFields`).
//!
//! The API server calls:
//! - [`PatchType::from_content_type`] with the request's `Content-Type` (415 on others),
//! - [`apply`]`(kind, &patch_type, live, body)` → the patched object, or a [`PatchError`]
//!   whose [`PatchError::status_code`] / [`PatchError::reason`] / [`PatchError::causes`]
//!   build the Status (400 malformed, 409 apply conflict, 415, 422 unappliable JSON patch).
//!   `kind` is the object's kind (`"Deployment"`): strategic merge and apply need its list
//!   merge keys. For apply to an object that does not exist yet pass `live = &Value::Null`.
//! - [`update_managed_fields`]`(kind, old, &mut new, manager, Operation::Update,
//!   subresource)` after every ordinary write (create: `old = None`; update; json, merge and
//!   strategic patches), so managedFields stay true. Apply maintains them itself.
//!
//! Modules: [`schema`] the list merge keys of the built-in types; [`strategic`] strategic
//! merge patch; [`fieldset`] field paths and FieldsV1; [`managed`] managedFields entries;
//! [`apply`] server-side apply.

pub mod apply;
pub mod fieldset;
pub mod managed;
pub mod schema;
pub mod strategic;

use serde_json::{Value, json};

pub use managed::{Operation, update_managed_fields};

/// The four PATCH content types kube-apiserver accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`.
    StrategicMerge,
    /// `application/apply-patch+yaml` (server-side apply) by `field_manager`.
    Apply { field_manager: String, force: bool },
}

impl PatchType {
    /// From a request's `Content-Type` and its `fieldManager` / `force` query parameters.
    pub fn from_content_type(
        content_type: &str,
        field_manager: Option<&str>,
        force: bool,
    ) -> Result<PatchType, PatchError> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::StrategicMerge),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                match field_manager.filter(|m| !m.is_empty()) {
                    Some(m) => Ok(PatchType::Apply {
                        field_manager: m.to_string(),
                        force,
                    }),
                    None => Err(PatchError::BadRequest(
                        "PATCH requests with apply content type must specify fieldManager".into(),
                    )),
                }
            }
            _ => Err(PatchError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types \
                 include: application/json-patch+json, application/merge-patch+json, \
                 application/apply-patch+yaml, application/strategic-merge-patch+json \
                 (got {content_type:?})"
            ))),
        }
    }
}

/// One field another manager owns that an apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    /// Set when the other manager wrote through a subresource (`scale`, `status`).
    pub subresource: Option<String>,
    pub api_version: String,
    /// As printed by Kubernetes: `.spec.replicas`.
    pub field: String,
    pub path: fieldset::Path,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PatchError {
    /// The body cannot be read or uses a directive wrongly (400).
    #[error("{0}")]
    BadRequest(String),
    /// A JSON patch operation cannot be applied to this object (422).
    #[error("{0}")]
    Unprocessable(String),
    /// Server-side apply conflicts (409) unless `force`.
    #[error("{}", conflict_message(.0))]
    Conflict(Vec<Conflict>),
    #[error("{0}")]
    UnsupportedMediaType(String),
}

impl Conflict {
    /// `"kubectl" with subresource "scale" using apps/v1`, as Kubernetes names a manager.
    fn owner(&self) -> String {
        match &self.subresource {
            Some(sub) => format!(
                "{:?} with subresource {sub:?} using {}",
                self.manager, self.api_version
            ),
            None => format!("{:?} using {}", self.manager, self.api_version),
        }
    }
}

fn conflict_message(conflicts: &[Conflict]) -> String {
    let n = conflicts.len();
    let mut by_manager: Vec<(String, Vec<&str>)> = Vec::new();
    for c in conflicts {
        let owner = c.owner();
        match by_manager.iter_mut().find(|(o, _)| *o == owner) {
            Some((_, fields)) => fields.push(&c.field),
            None => by_manager.push((owner, vec![&c.field])),
        }
    }
    let parts: Vec<String> = by_manager
        .iter()
        .map(|(owner, fields)| {
            if fields.len() == 1 {
                format!("conflict with {owner}: {}", fields[0])
            } else {
                let list: Vec<String> = fields.iter().map(|f| format!("- {f}")).collect();
                format!("conflicts with {owner}:\n{}", list.join("\n"))
            }
        })
        .collect();
    format!(
        "Apply failed with {n} conflict{}: {}",
        if n == 1 { "" } else { "s" },
        parts.join("\n")
    )
}

impl PatchError {
    pub fn status_code(&self) -> u16 {
        match self {
            PatchError::BadRequest(_) => 400,
            PatchError::Unprocessable(_) => 422,
            PatchError::Conflict(_) => 409,
            PatchError::UnsupportedMediaType(_) => 415,
        }
    }

    /// The Status `reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            PatchError::BadRequest(_) => "BadRequest",
            PatchError::Unprocessable(_) => "Invalid",
            PatchError::Conflict(_) => "Conflict",
            PatchError::UnsupportedMediaType(_) => "UnsupportedMediaType",
        }
    }

    /// Status `details.causes` (one per conflicting field), as kube-apiserver sends them.
    pub fn causes(&self) -> Vec<Value> {
        match self {
            PatchError::Conflict(cs) => cs
                .iter()
                .map(|c| {
                    json!({"reason": "FieldManagerConflict",
                           "message": format!("conflict with {}", c.owner()),
                           "field": c.field})
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Applies a PATCH body of `patch_type` to `live` (an object of `kind`).
pub fn apply(
    kind: &str,
    patch_type: &PatchType,
    live: &Value,
    body: &[u8],
) -> Result<Value, PatchError> {
    match patch_type {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| PatchError::BadRequest(format!("invalid JSON patch: {e}")))?;
            let mut out = live.clone();
            json_patch::patch(&mut out, &ops)
                .map_err(|e| PatchError::Unprocessable(format!("the JSON patch failed: {e}")))?;
            Ok(out)
        }
        PatchType::Merge => {
            let p = parse_object(body)?;
            let mut out = live.clone();
            json_patch::merge(&mut out, &p);
            Ok(out)
        }
        PatchType::StrategicMerge => {
            let p = parse_object(body)?;
            strategic::merge(schema::root(kind), live, &p)
        }
        PatchType::Apply {
            field_manager,
            force,
        } => {
            let config = apply::parse_config(body)?;
            let existing = (!live.is_null()).then_some(live);
            apply::server_side_apply(kind, existing, &config, field_manager, *force)
        }
    }
}

fn parse_object(body: &[u8]) -> Result<Value, PatchError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| PatchError::BadRequest(format!("error decoding patch: {e}")))?;
    if !v.is_object() {
        return Err(PatchError::BadRequest(format!(
            "a merge patch must be a JSON object, got {v}"
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type(
                "application/merge-patch+json; charset=utf-8",
                None,
                false
            ),
            Ok(PatchType::Merge)
        );
        let e =
            PatchType::from_content_type("application/apply-patch+yaml", None, false).unwrap_err();
        assert_eq!(e.status_code(), 400);
        let e = PatchType::from_content_type("text/plain", None, false).unwrap_err();
        assert_eq!(e.status_code(), 415);
    }

    #[test]
    fn json_patch_ops_and_failures() {
        let live = json!({"metadata":{"name":"a","labels":{"x":"1"}},"spec":{"replicas":1}});
        let out = apply(
            "Deployment",
            &PatchType::Json,
            &live,
            br#"[{"op":"replace","path":"/spec/replicas","value":4},{"op":"add","path":"/metadata/labels/y","value":"2"},{"op":"remove","path":"/metadata/labels/x"}]"#,
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], 4);
        assert_eq!(out["metadata"]["labels"], json!({"y":"2"}));
        let e = apply(
            "Deployment",
            &PatchType::Json,
            &live,
            br#"[{"op":"test","path":"/spec/replicas","value":9}]"#,
        )
        .unwrap_err();
        assert_eq!(e.status_code(), 422);
        let e = apply("Deployment", &PatchType::Json, &live, b"{not json").unwrap_err();
        assert_eq!(e.status_code(), 400);
    }

    #[test]
    fn merge_patch_replaces_lists_and_deletes_nulls() {
        let live = json!({"spec":{"containers":[{"name":"a","ports":[1]}],"x":1}});
        let out = apply(
            "Pod",
            &PatchType::Merge,
            &live,
            br#"{"spec":{"containers":[{"name":"a","image":"i"}],"x":null}}"#,
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"spec":{"containers":[{"name":"a","image":"i"}]}})
        );
    }

    #[test]
    fn strategic_patch_through_dispatch() {
        let live = json!({"kind":"Deployment","spec":{"template":{"spec":{"containers":[{"name":"web","image":"busybox:1.36","ports":[{"containerPort":80}]}]}}}});
        let out = apply(
            "Deployment",
            &PatchType::StrategicMerge,
            &live,
            br#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"busybox:1.37"}]}}}}"#,
        )
        .unwrap();
        let c = &out["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "busybox:1.37");
        assert_eq!(c["ports"][0]["containerPort"], 80);
    }
}
