//! Bootstrap tokens, as kubeadm and kube-apiserver define them: `<id>.<secret>` (6 and 16
//! characters of `[a-z0-9]`), stored as Secret `kube-system/bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token`. A valid, unexpired token with
//! `usage-bootstrap-authentication: "true"` authenticates as `system:bootstrap:<id>` in
//! `system:bootstrappers` (plus its `auth-extra-groups`). A joining node uses one to ask
//! for its client certificate (a CertificateSigningRequest).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::Rng;
use serde_json::{Value, json};

use super::auth::UserInfo;
use crate::store::{Store, StoreError};

pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapTokenError {
    #[error("storing the bootstrap token secret: {0}")]
    Store(#[from] StoreError),
    #[error("auth-extra-groups: {0:?} must start with \"system:bootstrappers:\"")]
    Group(String),
}

/// Splits a token into id and secret if it has the bootstrap token's shape.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| ALPHABET.contains(&b));
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

fn field(data: &Value, key: &str) -> Option<String> {
    let b = data.get(key)?.as_str()?;
    String::from_utf8(STANDARD.decode(b).ok()?).ok()
}

/// Constant-time comparison (the secret half must not leak through timing).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The user a bootstrap token authenticates as; `Ok(None)` if it is not one at all.
pub async fn authenticate(store: &dyn Store, token: &str) -> Result<Option<UserInfo>, String> {
    let Some((id, secret)) = parse(token) else {
        return Ok(None);
    };
    let key = format!("/registry/secrets/kube-system/bootstrap-token-{id}");
    let kv = store
        .get(&key)
        .await
        .map_err(|e| format!("reading bootstrap token: {e}"))?
        .ok_or_else(|| {
            format!("bootstrap token {id}: no secret kube-system/bootstrap-token-{id}")
        })?;
    let s: Value = serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
    if s["type"].as_str() != Some(SECRET_TYPE) {
        return Err(format!(
            "bootstrap token {id}: secret type is not {SECRET_TYPE}"
        ));
    }
    if s["metadata"]["deletionTimestamp"].is_string() {
        return Err(format!("bootstrap token {id} is being deleted"));
    }
    let data = &s["data"];
    if field(data, "token-id").as_deref() != Some(id) {
        return Err(format!("bootstrap token {id}: token-id does not match"));
    }
    if !field(data, "token-secret").is_some_and(|want| same(&want, secret)) {
        return Err(format!("bootstrap token {id}: wrong secret"));
    }
    if field(data, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err(format!("bootstrap token {id} is not for authentication"));
    }
    if let Some(exp) = field(data, "expiration") {
        let t: jiff::Timestamp = exp
            .parse()
            .map_err(|e| format!("bootstrap token {id}: expiration {exp:?}: {e}"))?;
        if t <= jiff::Timestamp::now() {
            return Err(format!("bootstrap token {id} expired at {exp}"));
        }
    }
    let mut groups = vec!["system:bootstrappers".to_string()];
    for g in field(data, "auth-extra-groups")
        .unwrap_or_default()
        .split(',')
    {
        let g = g.trim();
        if g.starts_with("system:bootstrappers:") && !groups.iter().any(|x| x == g) {
            groups.push(g.to_string());
        }
    }
    Ok(Some(UserInfo {
        name: format!("system:bootstrap:{id}"),
        uid: String::new(),
        groups,
    }))
}

/// What a new token is for.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// How long it is valid (`None`: forever — kubeadm's default is 24 h).
    pub ttl: Option<Duration>,
    pub description: String,
    /// Extra groups, each `system:bootstrappers:...`.
    pub extra_groups: Vec<String>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            ttl: Some(Duration::from_secs(24 * 3600)),
            description: "hull join token".into(),
            extra_groups: Vec::new(),
        }
    }
}

fn random(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The Secret object for a new token `id.secret`.
pub fn secret_object(
    id: &str,
    secret: &str,
    opts: &CreateOptions,
) -> Result<Value, BootstrapTokenError> {
    for g in &opts.extra_groups {
        if !g.starts_with("system:bootstrappers:") {
            return Err(BootstrapTokenError::Group(g.clone()));
        }
    }
    let b = |s: &str| STANDARD.encode(s);
    let mut data = json!({
        "token-id": b(id),
        "token-secret": b(secret),
        "usage-bootstrap-authentication": b("true"),
        "usage-bootstrap-signing": b("true"),
        "description": b(&opts.description),
    });
    if let Some(ttl) = opts.ttl {
        let exp = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(ttl.as_secs() as i64))
            .unwrap_or(jiff::Timestamp::MAX);
        data["expiration"] = b(&exp.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()).into();
    }
    if !opts.extra_groups.is_empty() {
        data["auth-extra-groups"] = b(&opts.extra_groups.join(",")).into();
    }
    Ok(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system",
                     "uid": uuid::Uuid::new_v4().to_string(),
                     "creationTimestamp": super::rest::object::now_rfc3339()},
        "type": SECRET_TYPE,
        "data": data,
    }))
}

/// Creates a new bootstrap token in the store and returns it (`abcdef.0123456789abcdef`).
/// For `hull server`/`hull up` to print a join command.
pub async fn create(
    store: &dyn Store,
    opts: &CreateOptions,
) -> Result<String, BootstrapTokenError> {
    loop {
        let (id, secret) = (random(6), random(16));
        let obj = secret_object(&id, &secret, opts)?;
        let key = format!("/registry/secrets/kube-system/bootstrap-token-{id}");
        match store
            .create(&key, serde_json::to_vec(&obj).unwrap_or_default())
            .await
        {
            Ok(_) => return Ok(format!("{id}.{secret}")),
            Err(StoreError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Creates a new bootstrap token through the API (any client allowed to create Secrets in
/// kube-system, e.g. the admin kubeconfig's).
pub async fn create_via_api(client: &kube::Client, opts: &CreateOptions) -> Result<String, String> {
    use kube::api::{Api, PostParams};
    let api: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "kube-system");
    loop {
        let (id, secret) = (random(6), random(16));
        let mut obj = secret_object(&id, &secret, opts).map_err(|e| e.to_string())?;
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("uid");
            m.remove("creationTimestamp");
        }
        let s: k8s_openapi::api::core::v1::Secret =
            serde_json::from_value(obj).map_err(|e| e.to_string())?;
        match api.create(&PostParams::default(), &s).await {
            Ok(_) => return Ok(format!("{id}.{secret}")),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(format!("creating bootstrap token: {e}")),
        }
    }
}

/// `sha256:<hex>` of the CA certificate's public key (SubjectPublicKeyInfo), the pin
/// `hull agent --ca-cert-hash` (and `kubeadm join --discovery-token-ca-cert-hash`) take.
pub fn ca_cert_hash(ca_pem: &str) -> Result<String, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use sha2::Digest;
    let der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| format!("CA certificate: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("CA certificate: {e}"))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    Ok(format!("sha256:{}", hex_lower(&sha2::Sha256::digest(spki))))
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shape() {
        assert_eq!(
            parse("abcdef.0123456789abcdef"),
            Some(("abcdef", "0123456789abcdef"))
        );
        assert!(parse("abcdeF.0123456789abcdef").is_none());
        assert!(parse("abcdef0123456789abcdef").is_none());
        assert!(parse("abc.0123456789abcdef").is_none());
        let t = format!("{}.{}", random(6), random(16));
        assert!(parse(&t).is_some());
        assert!(
            secret_object(
                "abcdef",
                "0123456789abcdef",
                &CreateOptions {
                    extra_groups: vec!["nope".into()],
                    ..Default::default()
                }
            )
            .is_err()
        );
    }
}
