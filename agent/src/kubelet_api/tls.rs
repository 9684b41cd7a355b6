//! The kubelet API's TLS: a serving certificate issued at every start from the cluster CA
//! (so new node addresses get SANs) or, on a joined node without the CA key, the one its
//! serving CSR got; client certificates are verified against the cluster CA.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{KubeletApiError, Options};

fn read(path: &Path) -> Result<String, KubeletApiError> {
    std::fs::read_to_string(path).map_err(|source| KubeletApiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_err(path: &Path, reason: impl ToString) -> KubeletApiError {
    KubeletApiError::Pem {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The rustls server config: the given serving certificate, or one signed by the CA at
/// `ca_key`; client certificates verified against `ca_cert` (optional at the TLS layer so
/// `/healthz` answers without one; every other path requires one).
pub fn server_config(opts: &Options) -> Result<rustls::ServerConfig, KubeletApiError> {
    let ca_cert = opts.ca_cert.as_path();
    let ca_pem = read(ca_cert)?;
    let (chain, key) = match &opts.serving {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(read(cert)?.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem_err(cert, e))?;
            let key_der = PrivateKeyDer::from_pem_slice(read(key)?.as_bytes())
                .map_err(|e| pem_err(key, e))?;
            (chain, key_der)
        }
        None => issue(&opts.ca_cert, &opts.ca_key, &opts.node_name, &opts.node_ips)?,
    };
    build(ca_cert, &ca_pem, chain, key)
}

/// A serving certificate for `node_name` and `ips`, signed by the CA key.
fn issue(
    ca_cert: &Path,
    ca_key: &Path,
    node_name: &str,
    ips: &[IpAddr],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), KubeletApiError> {
    let ca_pem = read(ca_cert)?;
    let key_pem = read(ca_key)?;
    let ca_keypair = KeyPair::from_pem(&key_pem).map_err(|e| pem_err(ca_key, e))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_keypair).map_err(|e| pem_err(ca_cert, e))?;

    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{node_name}@kubelet"));
    p.distinguished_name = dn;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let mut sans = vec![SanType::IpAddress(IpAddr::from([127, 0, 0, 1]))];
    sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    for n in [node_name, "localhost"] {
        if let Ok(n) = n.to_string().try_into() {
            sans.push(SanType::DnsName(n));
        }
    }
    p.subject_alt_names = sans;
    let now = std::time::SystemTime::now();
    p.not_before = (now - std::time::Duration::from_secs(3600)).into();
    p.not_after = (now + std::time::Duration::from_secs(365 * 24 * 3600)).into();
    let key = KeyPair::generate().map_err(|e| pem_err(ca_key, e))?;
    let cert = p.signed_by(&key, &issuer).map_err(|e| pem_err(ca_key, e))?;
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
        .map_err(|e| pem_err(ca_key, e))?;
    Ok((chain, key))
}

fn build(
    ca_cert: &Path,
    ca_pem: &str,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, KubeletApiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| pem_err(ca_cert, e))?)
            .map_err(|e| pem_err(ca_cert, e))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| pem_err(ca_cert, e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| pem_err(ca_cert, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| pem_err(ca_cert, e))?;
    // Upgrades (exec/attach/port-forward) are HTTP/1.1; kube-apiserver talks 1.1 to kubelets.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// (user, groups) of a verified client certificate: CN → user, O → groups.
pub fn identity(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some((user, groups))
}
