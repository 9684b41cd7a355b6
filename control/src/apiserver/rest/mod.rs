//! The REST handlers of every served resource: path parsing, authorization, and the
//! verbs (get, list, watch, create, update, patch, delete, deletecollection) plus the
//! subresources status, scale, binding and eviction, all on the [`Store`] trait.
//!
//! Modules: [`object`] bodies and server-owned metadata; [`selector`] label and field
//! selectors; [`write`] create / update / patch; [`delete`] deletion semantics;
//! [`list`] list and pagination; [`watch`] watch streams; [`table`] server-side printing;
//! [`scale`] the scale, binding and eviction subresources; [`admit`] the call into admission.

pub mod admit;
pub mod delete;
pub mod list;
pub mod object;
pub mod proxy;
pub mod scale;
pub mod selector;
pub mod table;
pub mod watch;
pub mod write;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::Value;

use super::ApiState;
use super::auth::{Attributes, Authorizer, UserInfo};
use super::registry::{self, ResourceInfo};
use super::status::ApiError;

/// The largest request body accepted (kube-apiserver's limit is 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// One parsed resource request.
pub struct Req {
    pub r: &'static ResourceInfo,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub user: UserInfo,
}

impl Req {
    pub fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }

    pub fn q_bool(&self, k: &str) -> bool {
        matches!(self.q(k), Some("true" | "1"))
    }

    pub fn dry_run(&self) -> bool {
        self.q("dryRun").is_some_and(|v| !v.is_empty())
    }

    pub fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    pub fn ns(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    pub fn key(&self) -> String {
        self.r.key(self.ns(), self.name())
    }

    /// The field manager of an ordinary write: `?fieldManager`, else the User-Agent's
    /// program name, as kube-apiserver derives it.
    pub fn field_manager(&self) -> String {
        if let Some(m) = self.q("fieldManager").filter(|m| !m.is_empty()) {
            return m.to_string();
        }
        let ua = self.header(header::USER_AGENT);
        let prog = ua.split('/').next().unwrap_or("").trim();
        if prog.is_empty() {
            "unknown".into()
        } else {
            prog.chars().take(128).collect()
        }
    }

    /// Whether the client asked for a server-side Table.
    pub fn wants_table(&self) -> bool {
        self.header(header::ACCEPT)
            .split(',')
            .next()
            .is_some_and(|first| first.contains("as=Table"))
    }
}

/// A JSON response.
pub fn json_response(code: StatusCode, v: &Value) -> Response {
    json_bytes_response(code, serde_json::to_vec(v).unwrap_or_default())
}

/// A response of JSON already encoded.
pub fn json_bytes_response(code: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = (code, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Reads the body up to [`MAX_BODY`]; larger → 413.
pub async fn read_body(body: Body) -> Result<bytes::Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large()),
        Err(e) => Err(ApiError::bad_request(format!("reading request body: {e}"))),
    }
}

/// What a resource path names: the resource, then namespace, name and subresource.
type ParsedPath = (
    &'static ResourceInfo,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Splits `/api/v1/...` or `/apis/g/v/...` into the resource request it names.
fn parse_path(path: &str) -> Result<ParsedPath, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found_path(path)),
    };
    let find = |plural: &str| registry::find(group, version, plural);
    let decode = |s: &str| {
        urlencoding::decode(s)
            .map(|c| c.into_owned())
            .unwrap_or_else(|_| s.to_string())
    };
    match rest {
        ["namespaces", ns, plural, tail @ ..] if find(plural).is_some_and(|r| r.namespaced) => {
            let r = find(plural).ok_or_else(|| not_found_path(path))?;
            match tail {
                [] => Ok((r, Some(decode(ns)), None, None)),
                [name] => Ok((r, Some(decode(ns)), Some(decode(name)), None)),
                [name, sub] => Ok((
                    r,
                    Some(decode(ns)),
                    Some(decode(name)),
                    Some(sub.to_string()),
                )),
                _ => Err(not_found_path(path)),
            }
        }
        [plural, tail @ ..] => {
            let r = find(plural).ok_or_else(|| not_found_path(path))?;
            match tail {
                [] => Ok((r, None, None, None)),
                [name] if !r.namespaced => Ok((r, None, Some(decode(name)), None)),
                [name, sub] if !r.namespaced => {
                    Ok((r, None, Some(decode(name)), Some(sub.to_string())))
                }
                _ => Err(not_found_path(path)),
            }
        }
        [] => Err(not_found_path(path)),
    }
}

fn not_found_path(path: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("the server could not find the requested resource ({path})"),
    )
}

fn verb_of(method: &Method, has_name: bool, watch: bool) -> Option<&'static str> {
    Some(match (method.as_str(), has_name) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    })
}

/// Whether a path names a resource (`/api/v1/pods`, `/apis/apps/v1/...`) rather than a
/// discovery or other non-resource URL; non-resource requests are authorized by path.
pub fn is_resource_path(path: &str) -> bool {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches!(segs.as_slice(), ["api", _, _, ..] | ["apis", _, _, _, ..])
}

/// A list or watch narrowed by `fieldSelector=metadata.name=X` is authorized with that
/// name, as kube-apiserver does (so a rule with resourceNames can allow watching one object).
fn field_selector_name(query: &HashMap<String, String>) -> Option<&str> {
    let fs = query.get("fieldSelector")?;
    let v = fs.split(',').find_map(|t| {
        let t = t.trim();
        t.strip_prefix("metadata.name==")
            .or_else(|| t.strip_prefix("metadata.name="))
    })?;
    (!v.is_empty()).then_some(v)
}

/// The entry point for every `/api/...` and `/apis/...` resource request.
pub async fn handle(State(state): State<Arc<ApiState>>, req: Request) -> Response {
    match dispatch(state, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(state: Arc<ApiState>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let user = parts
        .extensions
        .get::<UserInfo>()
        .cloned()
        .ok_or_else(ApiError::unauthorized)?;
    let (r, namespace, name, sub) = parse_path(parts.uri.path())?;
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| {
            q.split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    let dec = |s: &str| {
                        urlencoding::decode(&s.replace('+', " "))
                            .map(|c| c.into_owned())
                            .unwrap_or_else(|_| s.to_string())
                    };
                    (dec(k), dec(v))
                })
                .collect()
        })
        .unwrap_or_default();
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = verb_of(&parts.method, name.is_some(), watch).ok_or_else(|| {
        ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({} {})",
            parts.method,
            parts.uri.path()
        ))
    })?;
    if let Some(s) = &sub
        && !r.has_subresource(s)
    {
        return Err(not_found_path(parts.uri.path()));
    }
    let attrs = Attributes {
        verb,
        group: r.group,
        resource: r.plural,
        subresource: sub.as_deref(),
        namespace: namespace.as_deref(),
        name: name.as_deref().or_else(|| field_selector_name(&query)),
        path: None,
    };
    if let Err(reason) = state.authorizer.authorize(&user, &attrs) {
        return Err(super::rbac::forbidden(&user, &attrs, &reason));
    }
    let rq = Req {
        r,
        namespace,
        name,
        sub,
        query,
        headers: parts.headers,
        user,
    };
    let sub = rq.sub.clone();
    match (verb, sub.as_deref()) {
        ("watch", _) => watch::watch(&state, rq).await,
        ("list", _) => list::list(&state, &rq).await,
        ("get", Some("scale")) => scale::get_scale(&state, &rq).await,
        ("get", _) => get(&state, &rq).await,
        ("create", Some("binding")) => scale::binding(&state, &rq, read_body(body).await?).await,
        ("create", Some("eviction")) => scale::eviction(&state, &rq, read_body(body).await?).await,
        ("create", Some("token")) => match &state.service_accounts {
            Some(signer) => {
                crate::apiserver::sa_token::token_request(
                    signer,
                    state.store.as_ref(),
                    &rq,
                    read_body(body).await?,
                )
                .await
            }
            None => Err(ApiError::method_not_allowed(
                "service account tokens are not configured",
            )),
        },
        ("create", None) => write::create(&state, &rq, read_body(body).await?).await,
        ("update" | "patch", Some("scale")) => {
            scale::write_scale(&state, &rq, read_body(body).await?).await
        }
        ("update", _) => write::update(&state, &rq, read_body(body).await?).await,
        ("patch", _) => write::patch(&state, &rq, read_body(body).await?).await,
        ("delete", None) => delete::delete(&state, &rq, read_body(body).await?).await,
        ("deletecollection", None) => {
            delete::delete_collection(&state, &rq, read_body(body).await?).await
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "{verb} is not supported on {}",
            rq.sub.as_deref().unwrap_or(rq.r.plural)
        ))),
    }
}

/// Reads one object (404 if absent).
pub async fn load(state: &ApiState, rq: &Req) -> Result<(Value, i64), ApiError> {
    let kv = state
        .store
        .get(&rq.key())
        .await?
        .ok_or_else(|| ApiError::not_found(rq.r.group, rq.r.plural, rq.name()))?;
    Ok((object::read(rq.r, &kv)?, kv.mod_revision))
}

async fn get(state: &ApiState, rq: &Req) -> Result<Response, ApiError> {
    let (obj, _) = load(state, rq).await?;
    if rq.wants_table() && rq.sub.is_none() {
        let t = table::table(
            rq.r,
            std::slice::from_ref(&obj),
            None,
            rq.q("includeObject"),
        );
        return Ok(json_response(StatusCode::OK, &t));
    }
    Ok(json_response(StatusCode::OK, &obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_resources_namespaces_and_subresources() {
        let (r, ns, name, sub) =
            parse_path("/api/v1/namespaces/default/pods/p1/status").expect("ok");
        assert_eq!(
            (r.plural, ns.as_deref(), name.as_deref(), sub.as_deref()),
            ("pods", Some("default"), Some("p1"), Some("status"))
        );
        let (r, ns, name, _) = parse_path("/api/v1/namespaces/kube-system").expect("ok");
        assert_eq!(
            (r.plural, ns, name.as_deref()),
            ("namespaces", None, Some("kube-system"))
        );
        let (r, _, name, sub) = parse_path("/api/v1/namespaces/q1/finalize").expect("ok");
        assert_eq!(
            (r.plural, name.as_deref(), sub.as_deref()),
            ("namespaces", Some("q1"), Some("finalize"))
        );
        let (r, ns, _, _) = parse_path("/apis/apps/v1/deployments").expect("ok");
        assert_eq!((r.plural, ns), ("deployments", None));
        assert!(parse_path("/api/v1/nodes/a/b/c").is_err());
        assert!(parse_path("/apis/apps/v1/namespaces/x/nodes").is_err());
        assert!(parse_path("/apis/nope/v1/things").is_err());
    }
}
