//! Who is asking: the request authenticators in kube-apiserver's order (client
//! certificate, then a bearer token: the static token file, a ServiceAccount JWT, a
//! bootstrap token) and impersonation (`Impersonate-User` / `-Group` / `-Uid` headers,
//! allowed by the `impersonate` verb), so `kubectl --as` and `auth can-i --as` work.

use axum::http::HeaderMap;

use super::ApiState;
use super::auth::{Attributes, Authorizer, PeerIdentity, UserInfo};
use super::status::ApiError;

fn with_authenticated(mut user: UserInfo) -> UserInfo {
    if !user.groups.iter().any(|g| g == "system:authenticated") {
        user.groups.push("system:authenticated".into());
    }
    user
}

/// A bearer token's user and the audiences it was accepted for (`Err`: why not).
pub async fn authenticate_token(
    state: &ApiState,
    token: &str,
    audiences: &[String],
) -> Result<(UserInfo, Vec<String>), String> {
    if let Some(u) = state.tokens.lookup(token) {
        return Ok((with_authenticated(u.clone()), audiences.to_vec()));
    }
    if let Some(signer) = &state.service_accounts
        && super::sa_token::looks_like_jwt(token)
    {
        let (user, auds) = signer
            .authenticate(state.store.as_ref(), token, audiences)
            .await?;
        return Ok((with_authenticated(user), auds));
    }
    if let Some(user) = super::bootstrap_token::authenticate(state.store.as_ref(), token).await? {
        return Ok((with_authenticated(user), audiences.to_vec()));
    }
    Err("invalid bearer token".into())
}

/// Authenticates a request: the verified client certificate first, then
/// `Authorization: Bearer`. `None`: 401.
pub async fn authenticate(
    state: &ApiState,
    peer: Option<&PeerIdentity>,
    authorization: Option<&str>,
) -> Option<UserInfo> {
    if let Some(u) = peer.and_then(|p| p.0.clone()) {
        return Some(with_authenticated(u));
    }
    let value = authorization?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    match authenticate_token(state, token.trim(), &[]).await {
        Ok((u, _)) => Some(u),
        Err(e) => {
            tracing::debug!("bearer token rejected: {e}");
            None
        }
    }
}

fn may_impersonate(
    state: &ApiState,
    user: &UserInfo,
    resource: &'static str,
    namespace: Option<&str>,
    name: &str,
) -> Result<(), ApiError> {
    let attrs = Attributes {
        verb: "impersonate",
        group: if resource == "uids" {
            "authentication.k8s.io"
        } else {
            ""
        },
        resource,
        subresource: None,
        namespace,
        name: Some(name),
        path: None,
    };
    state
        .authorizer
        .authorize(user, &attrs)
        .map_err(|reason| super::rbac::forbidden(user, &attrs, &reason))
}

/// Applies `Impersonate-*` headers: checks the real user may impersonate each, and returns
/// who the request then acts as (unchanged without such headers).
pub fn impersonate(
    state: &ApiState,
    user: UserInfo,
    headers: &HeaderMap,
) -> Result<UserInfo, ApiError> {
    let as_user = headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let groups: Vec<String> = headers
        .get_all("impersonate-group")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let uid = headers
        .get("impersonate-uid")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(name) = as_user else {
        if !groups.is_empty() || uid.is_some() {
            return Err(ApiError::bad_request(
                "requested Impersonate-Group or Impersonate-Uid without Impersonate-User",
            ));
        }
        return Ok(user);
    };
    let mut new_groups = Vec::new();
    if let Some(rest) = name.strip_prefix("system:serviceaccount:") {
        let (ns, sa) = rest.split_once(':').unwrap_or(("", rest));
        may_impersonate(state, &user, "serviceaccounts", Some(ns), sa)?;
        new_groups.push("system:serviceaccounts".to_string());
        new_groups.push(format!("system:serviceaccounts:{ns}"));
    } else {
        may_impersonate(state, &user, "users", None, &name)?;
    }
    for g in &groups {
        may_impersonate(state, &user, "groups", None, g)?;
        if !new_groups.contains(g) {
            new_groups.push(g.clone());
        }
    }
    if let Some(u) = &uid {
        may_impersonate(state, &user, "uids", None, u)?;
    }
    tracing::debug!(real = %user.name, acting_as = %name, "impersonation");
    Ok(with_authenticated(UserInfo {
        name,
        uid: uid.unwrap_or_default(),
        groups: new_groups,
    }))
}
