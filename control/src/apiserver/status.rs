//! `metav1.Status` errors: every failed request answers with one, as kube-apiserver does,
//! so clients (kubectl, client-go, kube-rs) print the reason and message they expect.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::store::StoreError;

/// One `StatusCause` (a field path and what is wrong with it).
#[derive(Debug, Clone)]
pub struct Cause {
    pub reason: String,
    pub message: String,
    pub field: String,
}

/// An API error: HTTP code, the `reason` word, a message, and optional details.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    /// Boxed, as is `status`: they are rare, and unboxed they made every
    /// `Result<_, ApiError>` 216 bytes (clippy's `result_large_err`).
    pub details: Option<Box<Value>>,
    pub causes: Vec<Cause>,
    /// A complete Status built elsewhere (admission), sent as is.
    pub status: Option<Box<Value>>,
}

impl ApiError {
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            causes: Vec::new(),
            status: None,
        }
    }

    /// An error whose Status object was already built (by admission).
    pub fn with_status(
        code: StatusCode,
        reason: &'static str,
        message: String,
        status: Value,
    ) -> Self {
        let mut e = Self::new(code, reason, message);
        e.status = Some(Box::new(status));
        e
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }

    /// `pods "x" not found` (resource is `plural` or `plural.group`).
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(group, plural)),
        );
        e.details = Some(Box::new(
            json!({"name": name, "group": group, "kind": plural}),
        ));
        e
    }

    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        let mut e = Self::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(group, plural)),
        );
        e.details = Some(Box::new(
            json!({"name": name, "group": group, "kind": plural}),
        ));
        e
    }

    pub fn conflict(group: &str, plural: &str, name: &str) -> Self {
        let mut e = Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                qualified(group, plural)
            ),
        );
        e.details = Some(Box::new(
            json!({"name": name, "group": group, "kind": plural}),
        ));
        e
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }

    /// 422 with field causes, e.g. `Pod "x" is invalid: spec.containers[0].image: Required value`.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let summary: Vec<String> = causes
            .iter()
            .map(|c| {
                if c.field.is_empty() {
                    c.message.clone()
                } else {
                    format!("{}: {}", c.field, c.message)
                }
            })
            .collect();
        let gk = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let message = if summary.len() == 1 {
            format!("{gk} \"{name}\" is invalid: {}", summary[0])
        } else {
            format!("{gk} \"{name}\" is invalid: [{}]", summary.join(", "))
        };
        let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message);
        e.details = Some(Box::new(
            json!({"name": name, "group": group, "kind": kind}),
        ));
        e.causes = causes;
        e
    }

    pub fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "the request body is larger than the 3 MiB limit",
        )
    }

    /// The `Status` object clients decode.
    pub fn to_status(&self) -> Value {
        if let Some(s) = &self.status {
            return (**s).clone();
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        let mut details = self.details.as_deref().cloned();
        if !self.causes.is_empty() {
            let causes: Vec<Value> = self
                .causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect();
            let d = details.get_or_insert_with(|| json!({}));
            d["causes"] = Value::Array(causes);
        }
        if let Some(d) = details {
            status["details"] = d;
        }
        status
    }
}

/// `pods` or `deployments.apps`: how kube-apiserver names a resource in messages.
pub fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        let mut resp = (self.code, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Compacted { .. } => {
                ApiError::gone(format!("too old resource version: {e}"))
            }
            StoreError::Unavailable(m) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("storage unavailable: {m}"),
            ),
            other => ApiError::internal(other.to_string()),
        }
    }
}
