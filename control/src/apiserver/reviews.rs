//! The create-only review APIs: `authorization.k8s.io/v1` SelfSubjectAccessReview
//! (`kubectl auth can-i`), SubjectAccessReview, LocalSubjectAccessReview,
//! SelfSubjectRulesReview (`kubectl auth can-i --list`) and `authentication.k8s.io/v1`
//! SelfSubjectReview (`kubectl auth whoami`) and TokenReview. Nothing is stored: the
//! answer is the request with its `status` filled in.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{Value, json};

use super::ApiState;
use super::auth::{Attributes, Authorizer, UserInfo};
use super::rest::{json_response, read_body};
use super::status::ApiError;

const AUTHZ: &str = "authorization.k8s.io";
const AUTHN: &str = "authentication.k8s.io";

/// The review resources, for discovery: (group, plural, kind, namespaced).
pub const RESOURCES: &[(&str, &str, &str, bool)] = &[
    (
        AUTHZ,
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        false,
    ),
    (
        AUTHZ,
        "selfsubjectrulesreviews",
        "SelfSubjectRulesReview",
        false,
    ),
    (AUTHZ, "subjectaccessreviews", "SubjectAccessReview", false),
    (
        AUTHZ,
        "localsubjectaccessreviews",
        "LocalSubjectAccessReview",
        true,
    ),
    (AUTHN, "selfsubjectreviews", "SelfSubjectReview", false),
    (AUTHN, "tokenreviews", "TokenReview", false),
];

fn user_of(req: &Request) -> Result<UserInfo, ApiError> {
    req.extensions()
        .get::<UserInfo>()
        .cloned()
        .ok_or_else(ApiError::unauthorized)
}

/// Authorizes `create` on the review resource itself.
fn may_create(
    state: &ApiState,
    user: &UserInfo,
    group: &str,
    plural: &str,
    ns: Option<&str>,
) -> Result<(), ApiError> {
    let attrs = Attributes {
        verb: "create",
        group,
        resource: plural,
        subresource: None,
        namespace: ns,
        name: None,
        path: None,
    };
    state
        .authorizer
        .authorize(user, &attrs)
        .map_err(|reason| super::rbac::forbidden(user, &attrs, &reason))
}

/// Decodes the body by its Content-Type (kubectl's typed clients send protobuf).
async fn body_json(req: Request, kind: &str, group: &str) -> Result<Value, ApiError> {
    let ct = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = read_body(req.into_body()).await?;
    let mut v = super::rest::object::decode_body(&ct, &bytes)?;
    if !v.is_object() {
        return Err(ApiError::bad_request(format!(
            "the request body must be a {kind}"
        )));
    }
    match v.get("kind").and_then(Value::as_str) {
        None | Some("") => v["kind"] = kind.into(),
        Some(k) if k == kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({kind})"
            )));
        }
    }
    v["apiVersion"] = format!("{group}/v1").into();
    Ok(v)
}

/// Evaluates `spec.resourceAttributes` / `spec.nonResourceAttributes` for `subject`.
fn access_status(
    state: &ApiState,
    subject: &UserInfo,
    spec: &Value,
    force_ns: Option<&str>,
) -> Result<Value, ApiError> {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let (verb, group, resource, sub, ns, name, path);
    if let Some(ra) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        verb = s(ra, "verb");
        group = s(ra, "group");
        resource = s(ra, "resource");
        sub = s(ra, "subresource");
        ns = force_ns
            .map(str::to_string)
            .unwrap_or_else(|| s(ra, "namespace"));
        name = s(ra, "name");
        path = None;
    } else if let Some(na) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
        verb = s(na, "verb");
        (group, resource, sub, ns, name) = Default::default();
        path = Some(s(na, "path"));
    } else {
        return Err(invalid_spec(
            "spec.resourceAttributes: Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
        ));
    }
    let attrs = Attributes {
        verb: &verb,
        group: &group,
        resource: &resource,
        subresource: (!sub.is_empty()).then_some(sub.as_str()),
        namespace: (!ns.is_empty()).then_some(ns.as_str()),
        name: (!name.is_empty()).then_some(name.as_str()),
        path: path.as_deref(),
    };
    Ok(match state.authorizer.authorize(subject, &attrs) {
        Ok(()) => json!({"allowed": true}),
        Err(reason) => {
            let mut st = json!({"allowed": false});
            if !reason.is_empty() {
                st["reason"] = reason.into();
            }
            st
        }
    })
}

fn invalid_spec(msg: &str) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", msg.to_string())
}

fn created(mut obj: Value, status: Value) -> Response {
    obj["status"] = status;
    if obj.get("metadata").is_none_or(|m| !m.is_object()) {
        obj["metadata"] = json!({});
    }
    json_response(StatusCode::CREATED, &obj)
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`.
pub async fn self_subject_access_review(
    State(state): State<Arc<ApiState>>,
    req: Request,
) -> Response {
    run(async {
        let user = user_of(&req)?;
        may_create(&state, &user, AUTHZ, "selfsubjectaccessreviews", None)?;
        let obj = body_json(req, "SelfSubjectAccessReview", AUTHZ).await?;
        let status = access_status(&state, &user, &obj["spec"], None)?;
        Ok(created(obj, status))
    })
    .await
}

fn subject_from_spec(spec: &Value) -> Result<UserInfo, ApiError> {
    let name = spec
        .get("user")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let groups: Vec<String> = spec
        .get("groups")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|g| g.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if name.is_empty() && groups.is_empty() {
        return Err(invalid_spec(
            "spec.user: Invalid value: \"\": at least one of user or group must be specified",
        ));
    }
    Ok(UserInfo {
        name,
        uid: spec
            .get("uid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        groups,
    })
}

/// `POST /apis/authorization.k8s.io/v1/subjectaccessreviews`.
pub async fn subject_access_review(State(state): State<Arc<ApiState>>, req: Request) -> Response {
    run(async {
        let user = user_of(&req)?;
        may_create(&state, &user, AUTHZ, "subjectaccessreviews", None)?;
        let obj = body_json(req, "SubjectAccessReview", AUTHZ).await?;
        let subject = subject_from_spec(&obj["spec"])?;
        let status = access_status(&state, &subject, &obj["spec"], None)?;
        Ok(created(obj, status))
    })
    .await
}

/// `POST /apis/authorization.k8s.io/v1/namespaces/NS/localsubjectaccessreviews`.
pub async fn local_subject_access_review(
    State(state): State<Arc<ApiState>>,
    Path(ns): Path<String>,
    req: Request,
) -> Response {
    run(async {
        let user = user_of(&req)?;
        may_create(&state, &user, AUTHZ, "localsubjectaccessreviews", Some(&ns))?;
        let mut obj = body_json(req, "LocalSubjectAccessReview", AUTHZ).await?;
        let spec_ns = obj["spec"]["resourceAttributes"]["namespace"].as_str().unwrap_or("");
        if !spec_ns.is_empty() && spec_ns != ns {
            return Err(invalid_spec(&format!(
                "spec.resourceAttributes.namespace: Invalid value: \"{spec_ns}\": must match metadata.namespace"
            )));
        }
        obj["metadata"]["namespace"] = ns.clone().into();
        let subject = subject_from_spec(&obj["spec"])?;
        let status = access_status(&state, &subject, &obj["spec"], Some(&ns))?;
        Ok(created(obj, status))
    })
    .await
}

fn rule_json(r: &PolicyRule) -> Option<(bool, Value)> {
    if let Some(urls) = &r.non_resource_urls {
        return Some((false, json!({"verbs": r.verbs, "nonResourceURLs": urls})));
    }
    let mut v = json!({
        "verbs": r.verbs,
        "apiGroups": r.api_groups.clone().unwrap_or_default(),
        "resources": r.resources.clone().unwrap_or_default(),
    });
    if let Some(names) = r.resource_names.as_ref().filter(|n| !n.is_empty()) {
        v["resourceNames"] = json!(names);
    }
    Some((true, v))
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectrulesreviews`.
pub async fn self_subject_rules_review(
    State(state): State<Arc<ApiState>>,
    req: Request,
) -> Response {
    run(async {
        let user = user_of(&req)?;
        may_create(&state, &user, AUTHZ, "selfsubjectrulesreviews", None)?;
        let obj = body_json(req, "SelfSubjectRulesReview", AUTHZ).await?;
        let ns = obj["spec"]["namespace"].as_str().unwrap_or("").to_string();
        let rules = state
            .authorizer
            .rules(&user, (!ns.is_empty()).then_some(ns.as_str()));
        let (mut resource, mut non_resource) = (Vec::new(), Vec::new());
        for (is_resource, v) in rules.iter().filter_map(rule_json) {
            if is_resource {
                resource.push(v);
            } else {
                non_resource.push(v);
            }
        }
        Ok(created(
            obj,
            json!({"resourceRules": resource, "nonResourceRules": non_resource, "incomplete": false}),
        ))
    })
    .await
}

fn user_json(u: &UserInfo) -> Value {
    let mut v = json!({"username": u.name, "groups": u.groups});
    if !u.uid.is_empty() {
        v["uid"] = u.uid.clone().into();
    }
    v
}

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews` (`kubectl auth whoami`).
pub async fn self_subject_review(State(state): State<Arc<ApiState>>, req: Request) -> Response {
    run(async {
        let user = user_of(&req)?;
        may_create(&state, &user, AUTHN, "selfsubjectreviews", None)?;
        let obj = body_json(req, "SelfSubjectReview", AUTHN).await?;
        Ok(created(obj, json!({"userInfo": user_json(&user)})))
    })
    .await
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`: who a bearer token belongs to.
pub async fn token_review(State(state): State<Arc<ApiState>>, req: Request) -> Response {
    run(async {
        let user = user_of(&req)?;
        may_create(&state, &user, AUTHN, "tokenreviews", None)?;
        let obj = body_json(req, "TokenReview", AUTHN).await?;
        let token = obj["spec"]["token"].as_str().unwrap_or("").to_string();
        if token.is_empty() {
            return Err(invalid_spec("spec.token: Required value"));
        }
        let audiences: Vec<String> = obj["spec"]["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let status = match super::authn::authenticate_token(&state, &token, &audiences).await {
            Ok((u, auds)) => {
                json!({"authenticated": true, "user": user_json(&u), "audiences": auds})
            }
            Err(e) => json!({"authenticated": false, "error": e}),
        };
        Ok(created(obj, status))
    })
    .await
}

async fn run(f: impl std::future::Future<Output = Result<Response, ApiError>>) -> Response {
    match f.await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// The routes, for the router (all POST).
pub fn routes() -> axum::Router<Arc<ApiState>> {
    use axum::routing::post;
    axum::Router::new()
        .route(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            post(self_subject_access_review),
        )
        .route(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            post(subject_access_review),
        )
        .route(
            "/apis/authorization.k8s.io/v1/namespaces/{ns}/localsubjectaccessreviews",
            post(local_subject_access_review),
        )
        .route(
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
            post(self_subject_rules_review),
        )
        .route(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            post(self_subject_review),
        )
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(token_review),
        )
}
