//! `certificates.k8s.io/v1` CertificateSigningRequest, the parts the API server owns (as
//! kube-apiserver's CSR strategy): on create the requester's identity is recorded in
//! `spec.username/uid/groups` (clients cannot claim another), status is cleared and the
//! PEM request is checked; `.../approval` changes only the Approved/Denied conditions and
//! `.../status` everything else in status (the signer's certificate). Approving needs
//! `approve` on `signers` for the CSR's signerName, as in Kubernetes.

use serde_json::{Value, json};

use super::auth::{Attributes, Authorizer, UserInfo};
use super::rbac::ClusterAuthorizer;
use super::status::{ApiError, Cause};

fn invalid(name: &str, field: &str, reason: &str, message: String) -> ApiError {
    ApiError::invalid(
        "certificates.k8s.io",
        "CertificateSigningRequest",
        name,
        vec![Cause {
            reason: reason.into(),
            message,
            field: field.into(),
        }],
    )
}

/// The signers Kubernetes defines (others are accepted and left to their own signer).
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// Create: record who asked, drop any status, check the request.
pub fn prepare_create(obj: &mut Value, user: &UserInfo) -> Result<(), ApiError> {
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    if !obj["spec"].is_object() {
        return Err(invalid(
            &name,
            "spec",
            "FieldValueRequired",
            "Required value".into(),
        ));
    }
    obj["spec"]["username"] = user.name.clone().into();
    obj["spec"]["groups"] = json!(user.groups);
    if user.uid.is_empty() {
        if let Some(m) = obj["spec"].as_object_mut() {
            m.remove("uid");
        }
    } else {
        obj["spec"]["uid"] = user.uid.clone().into();
    }
    if let Some(m) = obj["spec"].as_object_mut() {
        m.remove("extra");
    }
    if let Some(m) = obj.as_object_mut() {
        m.remove("status");
    }
    if obj["spec"]["signerName"].as_str().is_none_or(str::is_empty) {
        return Err(invalid(
            &name,
            "spec.signerName",
            "FieldValueRequired",
            "Required value".into(),
        ));
    }
    if obj["spec"]["usages"].as_array().is_none_or(Vec::is_empty)
        && obj["spec"]["signerName"] == KUBELET_CLIENT_SIGNER
    {
        return Err(invalid(
            &name,
            "spec.usages",
            "FieldValueRequired",
            "Required value".into(),
        ));
    }
    let pem = decode_request(obj).ok_or_else(|| {
        invalid(
            &name,
            "spec.request",
            "FieldValueInvalid",
            "Invalid value: []byte{...}: PEM block type must be CERTIFICATE REQUEST".into(),
        )
    })?;
    if rcgen::CertificateSigningRequestParams::from_pem(&pem).is_err() {
        return Err(invalid(
            &name,
            "spec.request",
            "FieldValueInvalid",
            "Invalid value: []byte{...}: the certificate request does not parse or its signature does not verify".into(),
        ));
    }
    if let Some(e) = obj["spec"]["expirationSeconds"].as_i64()
        && e < 600
    {
        return Err(invalid(
            &name,
            "spec.expirationSeconds",
            "FieldValueInvalid",
            format!(
                "Invalid value: {e}: may not specify a duration less than 600 seconds (10 minutes)"
            ),
        ));
    }
    Ok(())
}

/// The PEM text of `spec.request` (base64 in JSON).
pub fn decode_request(obj: &Value) -> Option<String> {
    use base64::Engine;
    let b64 = obj["spec"]["request"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    text.contains("-----BEGIN CERTIFICATE REQUEST-----")
        .then_some(text)
}

fn conditions_of(obj: &Value, approval: bool) -> Vec<Value> {
    obj["status"]["conditions"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter(|c| {
                    let t = c["type"].as_str().unwrap_or("");
                    (t == "Approved" || t == "Denied") == approval
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// An update of `sub` (`None`, `status` or `approval`): keep what that path may not change.
pub fn prepare_update(
    authz: &ClusterAuthorizer,
    user: &UserInfo,
    sub: Option<&str>,
    obj: &mut Value,
    old: &Value,
) -> Result<(), ApiError> {
    let name = old["metadata"]["name"].as_str().unwrap_or("").to_string();
    // The spec never changes after create.
    obj["spec"] = old["spec"].clone();
    match sub {
        Some("approval") => {
            let mut conds = conditions_of(old, false);
            let approval = conditions_of(obj, true);
            let types: Vec<&str> = approval.iter().filter_map(|c| c["type"].as_str()).collect();
            if types.contains(&"Approved") && types.contains(&"Denied") {
                return Err(invalid(&name, "status.conditions", "FieldValueInvalid", "Invalid value: \"Approved\": Approved and Denied conditions are mutually exclusive".into()));
            }
            let old_types: Vec<Value> = conditions_of(old, true)
                .iter()
                .map(|c| c["type"].clone())
                .collect();
            if old_types.iter().any(|t| !types.iter().any(|n| t == n)) {
                return Err(invalid(
                    &name,
                    "status.conditions",
                    "FieldValueForbidden",
                    "Forbidden: updates may not remove a condition of type Approved or Denied"
                        .into(),
                ));
            }
            let signer = old["spec"]["signerName"].as_str().unwrap_or("");
            may_approve(authz, user, signer, &name)?;
            conds.extend(approval);
            let mut status = old["status"].clone();
            if !status.is_object() {
                status = json!({});
            }
            status["conditions"] = Value::Array(conds);
            obj["status"] = status;
        }
        Some("status") => {
            // Approval travels through .../approval only.
            let mut conds = conditions_of(old, true);
            conds.extend(conditions_of(obj, false));
            if !obj["status"].is_object() {
                obj["status"] = json!({});
            }
            obj["status"]["conditions"] = Value::Array(conds);
            if obj["status"]["certificate"].is_string()
                && !conditions_of(old, true)
                    .iter()
                    .any(|c| c["type"] == "Approved")
            {
                return Err(invalid(
                    &name,
                    "status.certificate",
                    "FieldValueForbidden",
                    "Forbidden: certificate can only be set once the request is approved".into(),
                ));
            }
            if old["status"]["certificate"].is_string()
                && obj["status"]["certificate"] != old["status"]["certificate"]
            {
                return Err(invalid(
                    &name,
                    "status.certificate",
                    "FieldValueForbidden",
                    "Forbidden: updates may not modify existing certificate content".into(),
                ));
            }
        }
        _ => obj["status"] = old["status"].clone(),
    }
    if obj["status"].is_null()
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    Ok(())
}

/// `approve` on `signers` named by the signerName (or its `domain/*`), as kube-apiserver
/// checks before an approval is stored.
fn may_approve(
    authz: &ClusterAuthorizer,
    user: &UserInfo,
    signer: &str,
    csr: &str,
) -> Result<(), ApiError> {
    let wildcard = signer.split_once('/').map(|(d, _)| format!("{d}/*"));
    let names = std::iter::once(signer.to_string()).chain(wildcard);
    for n in names {
        let attrs = Attributes {
            verb: "approve",
            group: "certificates.k8s.io",
            resource: "signers",
            subresource: None,
            namespace: None,
            name: Some(&n),
            path: None,
        };
        if authz.authorize(user, &attrs).is_ok() {
            return Ok(());
        }
    }
    Err(ApiError::forbidden(format!(
        "certificatesigningrequests.certificates.k8s.io \"{csr}\" is forbidden: user not permitted to approve requests with signerName \"{signer}\""
    )))
}
