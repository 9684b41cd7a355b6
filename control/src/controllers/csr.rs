//! CertificateSigningRequests, kube-controller-manager's `csrapproving` and `csrsigning`:
//! node client requests (`kubernetes.io/kube-apiserver-client-kubelet`, subject
//! `CN=system:node:<name>, O=system:nodes`, client-auth usages) are approved when the
//! requester may `create certificatesigningrequests/nodeclient` (a bootstrap token's
//! user) or `.../selfnodeclient` (a node renewing its own) — asked through a
//! SubjectAccessReview, as Kubernetes does; approved requests of the kubelet-client and
//! `kubernetes.io/kube-apiserver-client` signers are signed with the cluster CA.
//!
//! Kubelet serving requests (`kubernetes.io/kubelet-serving`) are approved when a node asks
//! for itself: requester `system:node:<name>` in `system:nodes` and the same subject, only
//! DNS and IP names, server auth usages. Kubernetes leaves these to an external approver
//! (kubelet-csr-approver does the same checks); hull approves them so a joined node's
//! kubelet API gets a certificate chained to the cluster CA without the CA key.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::apiserver::csr::KUBELET_CLIENT_SIGNER;
use crate::manager::{Context, LoopFuture};

pub const NAME: &str = "csrapproving";
const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// kube-controller-manager's `--cluster-signing-duration` default: one year.
const DEFAULT_DURATION: u64 = 365 * 24 * 3600;

pub fn start(ctx: Arc<Context>) -> LoopFuture {
    Box::pin(run(ctx))
}

async fn run(ctx: Arc<Context>) {
    let Some(dir) = ctx.options.cluster_signing_dir.clone() else {
        tracing::warn!(
            "no cluster CA directory given to the controller manager: CSR signing is off"
        );
        return;
    };
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let mut events = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(ev) = events.next().await {
        match ev {
            Ok(csr) => {
                if let Err(e) = sync(&ctx, &api, &dir, &csr).await {
                    let name = csr.metadata.name.clone().unwrap_or_default();
                    tracing::warn!(csr = %name, "{e}");
                }
            }
            Err(e) => tracing::debug!("CSR watch: {e}"),
        }
    }
}

fn has_condition(csr: &CertificateSigningRequest, t: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == t))
}

/// What the request asks for: (CN, O list).
fn subject(pem: &str) -> Option<(String, Vec<String>)> {
    let csr = rcgen::CertificateSigningRequestParams::from_pem(pem).ok()?;
    let mut cn = None;
    let mut orgs = Vec::new();
    for (ty, v) in csr.params.distinguished_name.iter() {
        let text = dn_text(v)?;
        match ty {
            rcgen::DnType::CommonName => cn = Some(text),
            rcgen::DnType::OrganizationName => orgs.push(text),
            _ => {}
        }
    }
    Some((cn?, orgs))
}

fn dn_text(v: &rcgen::DnValue) -> Option<String> {
    match v {
        rcgen::DnValue::Utf8String(s) => Some(s.clone()),
        rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_string()),
        rcgen::DnValue::Ia5String(s) => Some(s.as_str().to_string()),
        rcgen::DnValue::TeletexString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn is_node_client(csr: &CertificateSigningRequest, pem: &str) -> bool {
    let Some((cn, orgs)) = subject(pem) else {
        return false;
    };
    let usages = csr.spec.usages.clone().unwrap_or_default();
    let allowed = ["digital signature", "key encipherment", "client auth"];
    cn.starts_with("system:node:")
        && cn.len() > "system:node:".len()
        && orgs == ["system:nodes"]
        && usages.iter().any(|u| u == "client auth")
        && usages.iter().all(|u| allowed.contains(&u.as_str()))
}

/// A node's request for its own serving certificate (see the module doc).
fn is_own_node_serving(csr: &CertificateSigningRequest, pem: &str) -> bool {
    let Some((cn, orgs)) = subject(pem) else {
        return false;
    };
    let Ok(req) = rcgen::CertificateSigningRequestParams::from_pem(pem) else {
        return false;
    };
    let names_ok = req
        .params
        .subject_alt_names
        .iter()
        .all(|n| matches!(n, rcgen::SanType::DnsName(_) | rcgen::SanType::IpAddress(_)));
    let usages = csr.spec.usages.clone().unwrap_or_default();
    let allowed = ["digital signature", "key encipherment", "server auth"];
    let groups = csr.spec.groups.clone().unwrap_or_default();
    cn.starts_with("system:node:")
        && cn.len() > "system:node:".len()
        && csr.spec.username.as_deref() == Some(cn.as_str())
        && groups.iter().any(|g| g == "system:nodes")
        && orgs == ["system:nodes"]
        && names_ok
        && !req.params.subject_alt_names.is_empty()
        && usages.iter().any(|u| u == "server auth")
        && usages.iter().all(|u| allowed.contains(&u.as_str()))
}

async fn requester_may(
    ctx: &Context,
    csr: &CertificateSigningRequest,
    sub: &str,
) -> Result<bool, String> {
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: csr.spec.username.clone(),
            uid: csr.spec.uid.clone(),
            groups: csr.spec.groups.clone(),
            extra: csr.spec.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some("certificates.k8s.io".into()),
                resource: Some("certificatesigningrequests".into()),
                subresource: Some(sub.into()),
                verb: Some("create".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(ctx.client.clone());
    let out = api
        .create(&PostParams::default(), &sar)
        .await
        .map_err(|e| format!("SubjectAccessReview: {e}"))?;
    Ok(out.status.is_some_and(|s| s.allowed))
}

async fn sync(
    ctx: &Context,
    api: &Api<CertificateSigningRequest>,
    dir: &std::path::Path,
    csr: &CertificateSigningRequest,
) -> Result<(), String> {
    let name = csr.metadata.name.clone().unwrap_or_default();
    if has_condition(csr, "Denied") || has_condition(csr, "Failed") {
        return Ok(());
    }
    let pem = String::from_utf8(csr.spec.request.0.clone())
        .map_err(|_| "request is not PEM text".to_string())?;
    let signer = csr.spec.signer_name.as_str();
    if !has_condition(csr, "Approved") && signer == SERVING_SIGNER {
        if !is_own_node_serving(csr, &pem) {
            return Ok(());
        }
        let patch = json!({"status": {"conditions": [{
            "type": "Approved", "status": "True", "reason": "AutoApproved",
            "message": "Auto approving a node's own kubelet serving certificate.",
            "lastUpdateTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        }]}});
        api.patch_approval(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| format!("approving: {e}"))?;
        tracing::info!(csr = %name, "approved kubelet serving certificate request");
        return Ok(());
    }
    if !has_condition(csr, "Approved") {
        if signer != KUBELET_CLIENT_SIGNER || !is_node_client(csr, &pem) {
            return Ok(());
        }
        let cn = subject(&pem).map(|s| s.0).unwrap_or_default();
        let own = csr.spec.username.as_deref() == Some(cn.as_str());
        let ok = if own {
            requester_may(ctx, csr, "selfnodeclient").await?
        } else {
            requester_may(ctx, csr, "nodeclient").await?
        };
        if !ok {
            return Ok(());
        }
        let (reason, message) = if own {
            (
                "AutoApproved",
                "Auto approving self kubelet client certificate after SubjectAccessReview.",
            )
        } else {
            (
                "AutoApproved",
                "Auto approving kubelet client certificate after SubjectAccessReview.",
            )
        };
        let patch = json!({"status": {"conditions": [{
            "type": "Approved", "status": "True", "reason": reason, "message": message,
            "lastUpdateTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        }]}});
        api.patch_approval(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| format!("approving: {e}"))?;
        tracing::info!(csr = %name, "approved node client certificate request");
        // The approval comes back as a watch event; it is signed then.
        return Ok(());
    }
    let signed = csr
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty());
    if signed || ![KUBELET_CLIENT_SIGNER, CLIENT_SIGNER, SERVING_SIGNER].contains(&signer) {
        return Ok(());
    }
    // An approval given by hand (kubectl certificate approve) is checked again here.
    if signer == SERVING_SIGNER && !is_own_node_serving(csr, &pem) {
        let patch = json!({"status": {"conditions": [{
            "type": "Failed", "status": "True", "reason": "SignerValidationFailure",
            "message": "a kubelet serving request must come from the node it names (CN=system:node:<name>, O=system:nodes), with DNS/IP names and server auth usages",
        }]}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| format!("failing: {e}"))?;
        return Ok(());
    }
    if signer == KUBELET_CLIENT_SIGNER && !is_node_client(csr, &pem) {
        let patch = json!({"status": {"conditions": [{
            "type": "Failed", "status": "True", "reason": "SignerValidationFailure",
            "message": "subject must be CN=system:node:<name>, O=system:nodes with client auth usages",
        }]}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| format!("failing: {e}"))?;
        return Ok(());
    }
    let secs = csr
        .spec
        .expiration_seconds
        .map(|s| (s.max(600)) as u64)
        .unwrap_or(DEFAULT_DURATION)
        .min(DEFAULT_DURATION);
    let cert = if signer == SERVING_SIGNER {
        crate::apiserver::tls::sign_serving_csr(dir, &pem, secs)
    } else {
        crate::apiserver::tls::sign_client_csr(dir, &pem, secs)
    }
    .map_err(|e| format!("signing: {e}"))?;
    use base64::Engine;
    let patch =
        json!({"status": {"certificate": base64::engine::general_purpose::STANDARD.encode(cert)}});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| format!("writing the certificate: {e}"))?;
    tracing::info!(csr = %name, signer, "signed certificate request");
    Ok(())
}
