//! The cluster's PKI: a CA generated on first start (`ca.crt`, `ca.key` in the data dir),
//! a serving certificate re-issued on every start (so new node addresses get SANs), and
//! the admin client certificate (CN=admin, O=system:masters) the kubeconfig carries.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating certificate {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("{path}: not a usable PEM certificate or key: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// PEM texts of the cluster's certificates, as written to the data dir.
#[derive(Clone)]
pub struct Pki {
    pub ca_cert_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
}

pub(crate) fn read(path: &Path) -> Result<Option<String>, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes atomically (temp + rename) with the given mode, so a crash never leaves half a key.
pub(crate) fn write(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn gen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> TlsError {
    move |source| TlsError::Generate { what, source }
}

fn validity(params: &mut CertificateParams, years: i32) {
    let now = jiff::Zoned::now();
    let y = now.year() as i32;
    params.not_before = rcgen::date_time_ymd(y - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(y + years, 1, 1);
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "hull-ca");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p, 10);
    p
}

/// The names and addresses the serving certificate covers.
pub fn serving_sans(extra_ips: &[IpAddr], extra_names: &[String]) -> Vec<SanType> {
    let mut sans = Vec::new();
    for name in [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ] {
        if let Ok(n) = name.try_into() {
            sans.push(SanType::DnsName(n));
        }
    }
    for name in extra_names {
        if let Ok(n) = name.clone().try_into() {
            let san = SanType::DnsName(n);
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
    }
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from([10, 96, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    for ip in extra_ips {
        if !ips.contains(ip) {
            ips.push(*ip);
        }
    }
    sans.extend(ips.into_iter().map(SanType::IpAddress));
    sans
}

/// Loads the CA from `dir` or creates it; issues the serving certificate for `sans`; loads
/// or issues the admin client certificate.
pub fn load_or_create(dir: &Path, sans: Vec<SanType>) -> Result<Pki, TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca_crt = dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    let (ca_cert_pem, ca_key_pem) = match (read(&ca_crt)?, read(&ca_key)?) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let key = KeyPair::generate().map_err(gen_err("CA key"))?;
            let cert = ca_params().self_signed(&key).map_err(gen_err("CA"))?;
            let (c, k) = (cert.pem(), key.serialize_pem());
            // Key first: a CA cert without its key would be unusable after a crash.
            write(&ca_key, &k, 0o600)?;
            write(&ca_crt, &c, 0o644)?;
            (c, k)
        }
    };
    let ca_keypair = KeyPair::from_pem(&ca_key_pem).map_err(|e| TlsError::Pem {
        path: ca_key.clone(),
        reason: e.to_string(),
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, ca_keypair).map_err(|e| TlsError::Pem {
        path: ca_crt.clone(),
        reason: e.to_string(),
    })?;

    let mut sp = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kube-apiserver");
    sp.distinguished_name = dn;
    sp.subject_alt_names = sans;
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sp.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    validity(&mut sp, 1);
    let server_key = KeyPair::generate().map_err(gen_err("serving key"))?;
    let server_cert = sp
        .signed_by(&server_key, &issuer)
        .map_err(gen_err("serving"))?;
    let (server_cert_pem, server_key_pem) = (server_cert.pem(), server_key.serialize_pem());
    write(&dir.join("apiserver.key"), &server_key_pem, 0o600)?;
    write(&dir.join("apiserver.crt"), &server_cert_pem, 0o644)?;

    let admin_crt = dir.join("admin.crt");
    let admin_key = dir.join("admin.key");
    let (admin_cert_pem, admin_key_pem) = match (read(&admin_crt)?, read(&admin_key)?) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let (c, k) = issue_client_cert(&issuer, "admin", &["system:masters"])?;
            write(&admin_key, &k, 0o600)?;
            write(&admin_crt, &c, 0o644)?;
            (c, k)
        }
    };
    Ok(Pki {
        ca_cert_pem,
        server_cert_pem,
        server_key_pem,
        admin_cert_pem,
        admin_key_pem,
    })
}

/// Issues a client certificate: CN → user name, each O → a group (as kube-apiserver reads them).
pub fn issue_client_cert(
    issuer: &Issuer<'_, KeyPair>,
    user: &str,
    groups: &[&str],
) -> Result<(String, String), TlsError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, user);
    for g in groups {
        dn.push(DnType::OrganizationName, *g);
    }
    p.distinguished_name = dn;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    validity(&mut p, 1);
    let key = KeyPair::generate().map_err(gen_err("client key"))?;
    let cert = p.signed_by(&key, issuer).map_err(gen_err("client"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Issues a client certificate from the CA stored in `dir` (for tests and node joins).
pub fn issue_client_cert_from_dir(
    dir: &Path,
    user: &str,
    groups: &[&str],
) -> Result<(String, String), TlsError> {
    let ca_crt = dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    let missing = |p: &Path| TlsError::Pem {
        path: p.to_path_buf(),
        reason: "missing".into(),
    };
    let c = read(&ca_crt)?.ok_or_else(|| missing(&ca_crt))?;
    let k = read(&ca_key)?.ok_or_else(|| missing(&ca_key))?;
    let key = KeyPair::from_pem(&k).map_err(|e| TlsError::Pem {
        path: ca_key.clone(),
        reason: e.to_string(),
    })?;
    let issuer = Issuer::from_ca_cert_pem(&c, key).map_err(|e| TlsError::Pem {
        path: ca_crt.clone(),
        reason: e.to_string(),
    })?;
    issue_client_cert(&issuer, user, groups)
}

/// The rustls server config: HTTP/2 and HTTP/1.1, client certificates verified against the
/// CA when offered (optional, so bearer tokens work too).
pub fn server_config(pki: &Pki) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pem_err = |what: &str, e: rustls_pki_types::pem::Error| TlsError::Pem {
        path: PathBuf::from(what),
        reason: e.to_string(),
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca_cert_pem.as_bytes()) {
        roots.add(c.map_err(|e| pem_err("ca.crt", e))?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
    // The CA rides along after the serving certificate: a node joining with only a
    // `sha256:` pin of the CA's key finds the CA here, checks the pin, then verifies.
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.server_cert_pem.as_bytes())
            .chain(CertificateDer::pem_slice_iter(pki.ca_cert_pem.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|e| pem_err("apiserver.crt", e))?;
    let key = PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes())
        .map_err(|e| pem_err("apiserver.key", e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The user a verified client certificate names: CN → user, O → groups.
pub fn identity_from_cert(der: &[u8]) -> Option<(String, Vec<String>)> {
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

/// Signs a PEM certificate request as a client certificate (CN and O from the request,
/// nothing else it asks for) with the CA in `dir`, valid for `seconds`.
pub fn sign_client_csr(dir: &Path, csr_pem: &str, seconds: u64) -> Result<String, TlsError> {
    sign_csr(dir, csr_pem, seconds, ExtendedKeyUsagePurpose::ClientAuth)
}

/// A kubelet serving certificate from a CSR (`kubernetes.io/kubelet-serving`): the
/// subject and the requested DNS/IP names, server auth only.
pub fn sign_serving_csr(dir: &Path, csr_pem: &str, seconds: u64) -> Result<String, TlsError> {
    sign_csr(dir, csr_pem, seconds, ExtendedKeyUsagePurpose::ServerAuth)
}

fn sign_csr(
    dir: &Path,
    csr_pem: &str,
    seconds: u64,
    usage: ExtendedKeyUsagePurpose,
) -> Result<String, TlsError> {
    let ca_crt = dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    let missing = |p: &Path| TlsError::Pem {
        path: p.to_path_buf(),
        reason: "missing".into(),
    };
    let c = read(&ca_crt)?.ok_or_else(|| missing(&ca_crt))?;
    let k = read(&ca_key)?.ok_or_else(|| missing(&ca_key))?;
    let key = KeyPair::from_pem(&k).map_err(|e| TlsError::Pem {
        path: ca_key.clone(),
        reason: e.to_string(),
    })?;
    let issuer = Issuer::from_ca_cert_pem(&c, key).map_err(|e| TlsError::Pem {
        path: ca_crt.clone(),
        reason: e.to_string(),
    })?;
    let mut csr =
        rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| TlsError::Pem {
            path: PathBuf::from("spec.request"),
            reason: e.to_string(),
        })?;
    let requested = csr.params.distinguished_name.clone();
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for (ty, value) in requested.iter() {
        if matches!(ty, DnType::CommonName | DnType::OrganizationName) {
            dn.push(ty.clone(), value.clone());
        }
    }
    p.distinguished_name = dn;
    if usage == ExtendedKeyUsagePurpose::ServerAuth {
        // Only names a node may claim for itself (the approver checked them).
        p.subject_alt_names = csr
            .params
            .subject_alt_names
            .iter()
            .filter(|n| matches!(n, SanType::DnsName(_) | SanType::IpAddress(_)))
            .cloned()
            .collect();
    }
    p.extended_key_usages = vec![usage];
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let now = jiff::Timestamp::now();
    let to_offset = |t: jiff::Timestamp| {
        time::OffsetDateTime::from_unix_timestamp(t.as_second())
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };
    p.not_before = to_offset(now - jiff::SignedDuration::from_secs(300));
    p.not_after = to_offset(now + jiff::SignedDuration::from_secs(seconds as i64));
    csr.params = p;
    let cert = csr
        .signed_by(&issuer)
        .map_err(gen_err("certificate from CSR"))?;
    Ok(cert.pem())
}
