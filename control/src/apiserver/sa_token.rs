//! ServiceAccount tokens: `POST serviceaccounts/NAME/token` (TokenRequest) signs an ES256
//! JWT with the key in `DATA/sa.key` (created on first start), carrying the audiences,
//! expiry and the object it is bound to (a Pod, Secret or Node), as kube-apiserver's
//! bound tokens do. The authenticator accepts such a token while its ServiceAccount — and
//! its bound object — still exist with the same uid. `/.well-known/openid-configuration`
//! and `/openid/v1/jwks` publish the issuer and the public key.

use std::path::Path;

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest;

use super::auth::UserInfo;
use super::rest::{Req, json_response, object};
use super::status::ApiError;
use super::tls::{self, TlsError};
use crate::store::Store;

/// kube-apiserver's default issuer (and API audience) in a `cluster.local` cluster.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The default and the bounds of `expirationSeconds`.
pub const DEFAULT_EXPIRATION: i64 = 3600;
const MIN_EXPIRATION: i64 = 600;
const MAX_EXPIRATION: i64 = 48 * 3600;

/// Signs and verifies ServiceAccount tokens.
pub struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    /// The public point's coordinates, base64url (for the JWKS).
    x: String,
    y: String,
    pub issuer: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ref {
    name: String,
    uid: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct KubeClaims {
    namespace: String,
    serviceaccount: Option<Ref>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<Ref>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<Ref>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<Ref>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Vec<String>,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: String,
    #[serde(rename = "kubernetes.io")]
    kube: KubeClaims,
}

/// Whether a bearer token has a JWT's shape (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.starts_with("ey")
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl Signer {
    /// Loads `DATA/sa.key` (PKCS#8 P-256), creating it atomically (0600) if missing.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, TlsError> {
        let path = data_dir.join("sa.key");
        let pem = match tls::read(&path)? {
            Some(p) => p,
            None => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(
                    |source| TlsError::Generate {
                        what: "service account key",
                        source,
                    },
                )?;
                let pem = key.serialize_pem();
                tls::write(&path, &pem, 0o600)?;
                pem
            }
        };
        let bad = |reason: String| TlsError::Pem {
            path: path.clone(),
            reason,
        };
        let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| bad(e.to_string()))?;
        if !key.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
            return Err(bad("want an ECDSA P-256 key".into()));
        }
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let decoding = DecodingKey::from_ec_pem(key.public_key_pem().as_bytes())
            .map_err(|e| bad(e.to_string()))?;
        let raw = key.public_key_raw();
        if raw.len() != 65 || raw[0] != 4 {
            return Err(bad("unexpected public key encoding".into()));
        }
        // kube-apiserver's key id: base64url(sha256(DER SubjectPublicKeyInfo)).
        let kid = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(
            rcgen::PublicKeyData::subject_public_key_info(&key),
        ));
        Ok(Signer {
            encoding,
            decoding,
            kid,
            x: URL_SAFE_NO_PAD.encode(&raw[1..33]),
            y: URL_SAFE_NO_PAD.encode(&raw[33..65]),
            issuer: ISSUER.to_string(),
        })
    }

    fn sign(&self, claims: &Claims) -> Result<String, ApiError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| ApiError::internal(format!("signing token: {e}")))
    }

    /// `/.well-known/openid-configuration`.
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/openid/v1/jwks", self.issuer),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    /// `/openid/v1/jwks`.
    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "use": "sig", "kty": "EC", "crv": "P-256", "alg": "ES256",
            "kid": self.kid, "x": self.x, "y": self.y,
        }]})
    }

    /// Verifies a token and that what it names still exists; returns its user and the
    /// audiences it was accepted for (`want` empty: the API server's own).
    pub async fn authenticate(
        &self,
        store: &dyn Store,
        token: &str,
        want: &[String],
    ) -> Result<(UserInfo, Vec<String>), String> {
        let want: Vec<String> = if want.is_empty() {
            vec![self.issuer.clone()]
        } else {
            want.to_vec()
        };
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&want);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map_err(|e| format!("service account token: {e}"))?;
        let c = data.claims;
        let ns = &c.kube.namespace;
        let sa = c
            .kube
            .serviceaccount
            .as_ref()
            .ok_or("service account token: no service account claim")?;
        if c.sub != format!("system:serviceaccount:{ns}:{}", sa.name) {
            return Err("service account token: subject does not match its claims".into());
        }
        let exists = |key: String, want_uid: String, what: &'static str| async move {
            let kv = store
                .get(&key)
                .await
                .map_err(|e| format!("checking {what}: {e}"))?
                .ok_or_else(|| format!("{what} {key} no longer exists"))?;
            let v: Value = serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
            let uid = v["metadata"]["uid"].as_str().unwrap_or("");
            if uid != want_uid {
                return Err(format!(
                    "{what} {key} was recreated (uid {uid}, token has {want_uid})"
                ));
            }
            if v["metadata"]["deletionTimestamp"].is_string() && what == "pod" {
                return Err(format!("{what} {key} is being deleted"));
            }
            Ok(())
        };
        exists(
            format!("/registry/serviceaccounts/{ns}/{}", sa.name),
            sa.uid.clone(),
            "service account",
        )
        .await?;
        if let Some(p) = &c.kube.pod {
            exists(
                format!("/registry/pods/{ns}/{}", p.name),
                p.uid.clone(),
                "pod",
            )
            .await?;
        }
        if let Some(s) = &c.kube.secret {
            exists(
                format!("/registry/secrets/{ns}/{}", s.name),
                s.uid.clone(),
                "secret",
            )
            .await?;
        }
        let accepted: Vec<String> = c.aud.iter().filter(|a| want.contains(a)).cloned().collect();
        Ok((
            UserInfo {
                name: c.sub.clone(),
                uid: sa.uid.clone(),
                groups: vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{ns}"),
                ],
            },
            accepted,
        ))
    }
}

fn invalid(name: &str, field: &str, msg: String) -> ApiError {
    ApiError::invalid(
        "authentication.k8s.io",
        "TokenRequest",
        name,
        vec![super::status::Cause {
            reason: "FieldValueInvalid".into(),
            message: msg,
            field: field.into(),
        }],
    )
}

async fn load_uid(
    store: &dyn Store,
    key: &str,
    group: &str,
    plural: &str,
    name: &str,
) -> Result<String, ApiError> {
    let kv = store
        .get(key)
        .await?
        .ok_or_else(|| ApiError::not_found(group, plural, name))?;
    let v = object::from_stored(&kv)?;
    Ok(v["metadata"]["uid"].as_str().unwrap_or("").to_string())
}

/// `POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`.
pub async fn token_request(
    signer: &Signer,
    store: &dyn Store,
    rq: &Req,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let ns = rq.ns().unwrap_or("default").to_string();
    let name = rq.name().to_string();
    let mut tr: Value = if body.is_empty() {
        json!({})
    } else {
        object::decode_body(rq.header(axum::http::header::CONTENT_TYPE), &body)?
    };
    if !tr.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a TokenRequest",
        ));
    }
    tr["apiVersion"] = "authentication.k8s.io/v1".into();
    tr["kind"] = "TokenRequest".into();
    let sa_uid = load_uid(store, &rq.key(), "", "serviceaccounts", &name).await?;
    let spec = tr.get("spec").cloned().unwrap_or_else(|| json!({}));
    let mut audiences: Vec<String> = spec["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if audiences.is_empty() {
        audiences.push(signer.issuer.clone());
    }
    let exp_secs = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_EXPIRATION,
        v => v
            .as_i64()
            .ok_or_else(|| invalid(&name, "spec.expirationSeconds", "must be an integer".into()))?,
    };
    if exp_secs < MIN_EXPIRATION {
        return Err(invalid(
            &name,
            "spec.expirationSeconds",
            "may not specify a duration less than 10 minutes".into(),
        ));
    }
    let exp_secs = exp_secs.min(MAX_EXPIRATION);
    let mut kube = KubeClaims {
        namespace: ns.clone(),
        serviceaccount: Some(Ref {
            name: name.clone(),
            uid: sa_uid,
        }),
        ..Default::default()
    };
    if let Some(b) = spec.get("boundObjectRef").filter(|b| b.is_object()) {
        let kind = b["kind"].as_str().unwrap_or("");
        let bname = b["name"].as_str().unwrap_or("").to_string();
        let (key, plural) = match kind {
            "Pod" => (format!("/registry/pods/{ns}/{bname}"), "pods"),
            "Secret" => (format!("/registry/secrets/{ns}/{bname}"), "secrets"),
            "Node" => (format!("/registry/nodes/{bname}"), "nodes"),
            other => {
                return Err(invalid(
                    &name,
                    "spec.boundObjectRef.kind",
                    format!(
                        "Unsupported value: \"{other}\": supported values: \"Pod\", \"Secret\", \"Node\""
                    ),
                ));
            }
        };
        let uid = load_uid(store, &key, "", plural, &bname).await?;
        if let Some(want) = b["uid"].as_str().filter(|u| !u.is_empty())
            && want != uid
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            ));
        }
        let r = Some(Ref { name: bname, uid });
        match kind {
            "Pod" => kube.pod = r,
            "Secret" => kube.secret = r,
            _ => kube.node = r,
        }
    }
    let iat = now();
    let claims = Claims {
        iss: signer.issuer.clone(),
        sub: format!("system:serviceaccount:{ns}:{name}"),
        aud: audiences.clone(),
        exp: iat + exp_secs,
        iat,
        nbf: iat,
        jti: uuid::Uuid::new_v4().to_string(),
        kube,
    };
    let token = signer.sign(&claims)?;
    let expiry = jiff::Timestamp::from_second(claims.exp)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    tr["metadata"] = json!({"name": name, "namespace": ns, "creationTimestamp": null});
    tr["spec"]["audiences"] = json!(audiences);
    tr["spec"]["expirationSeconds"] = json!(exp_secs);
    if tr["spec"].get("boundObjectRef").is_none() {
        tr["spec"]["boundObjectRef"] = Value::Null;
    }
    tr["status"] = json!({"token": token, "expirationTimestamp": expiry});
    Ok(json_response(StatusCode::CREATED, &tr))
}
