//! TLS bootstrap of a joining node, as kubelet's `--bootstrap-kubeconfig` flow does it:
//! with a bootstrap token, ask the API server for a client certificate through a
//! CertificateSigningRequest (`CN=system:node:<name>, O=system:nodes`, signer
//! `kubernetes.io/kube-apiserver-client-kubelet`), wait until the controller manager
//! approves and signs it, and write the node's kubeconfig with the key and certificate.
//!
//! The cluster CA is given as a file or as a `sha256:<hex>` pin of its public key (as
//! `kubeadm join --discovery-token-ca-cert-hash`). With a pin, the server's TLS chain
//! (hull's API server sends its CA after the serving certificate) is read without
//! sending anything, the CA whose key matches the pin is taken, and only then is the
//! token sent — over a connection verified against that CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{Api, ObjectMeta, PostParams};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("server URL {0:?}: want https://host:port")]
    Url(String),
    #[error("CA: {0}")]
    Ca(String),
    #[error("bootstrap token: {0}")]
    Token(String),
    #[error("API: {0}")]
    Api(String),
    #[error("certificate request {name}: {reason}")]
    Refused { name: String, reason: String },
    #[error(
        "certificate request {0} was not signed within {1:?} (is the controller manager running?)"
    )]
    Timeout(String, Duration),
}

/// Where the cluster CA comes from.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// A PEM file.
    File(PathBuf),
    /// `sha256:<hex>` of the CA certificate's SubjectPublicKeyInfo.
    Pin(String),
}

#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// `https://host:port` of the API server.
    pub server: String,
    /// `<id>.<secret>`.
    pub token: String,
    pub ca: CaSource,
    pub node_name: String,
    /// Where the key, certificate, CA and kubeconfig go (`kubelet.kubeconfig` etc.).
    pub dir: PathBuf,
    /// How long to wait for the certificate.
    pub timeout: Duration,
}

/// What [`join`] wrote.
#[derive(Debug, Clone)]
pub struct Joined {
    pub kubeconfig: PathBuf,
    pub ca_pem: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BootstrapError + '_ {
    move |source| BootstrapError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes atomically with `mode` (keys 0600).
fn write(path: &Path, text: &str, mode: u32) -> Result<(), BootstrapError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// `sha256:<hex>` of a DER certificate's public key.
pub fn spki_pin(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.tbs_certificate.subject_pki.raw);
    Ok(format!(
        "sha256:{}",
        digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

/// Accepts any server certificate and keeps the chain (used only to find the pinned CA;
/// nothing secret is sent on this connection).
#[derive(Debug)]
struct Capture {
    chain: std::sync::Mutex<Vec<Vec<u8>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let mut c = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        c.push(end_entity.to_vec());
        c.extend(intermediates.iter().map(|i| i.to_vec()));
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn host_port(server: &str) -> Result<(String, u16), BootstrapError> {
    let rest = server
        .strip_prefix("https://")
        .ok_or_else(|| BootstrapError::Url(server.into()))?
        .trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.trim_matches(|c| c == '[' || c == ']').to_string(),
            p.parse().map_err(|_| BootstrapError::Url(server.into()))?,
        ),
        _ => (rest.to_string(), 443),
    };
    Ok((host, port))
}

/// Finds the CA whose public key matches `pin` in the server's TLS chain.
pub async fn fetch_pinned_ca(server: &str, pin: &str) -> Result<String, BootstrapError> {
    let (host, port) = host_port(server)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let capture = Arc::new(Capture {
        chain: Default::default(),
        provider: provider.clone(),
    });
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BootstrapError::Ca(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| BootstrapError::Api(format!("connecting to {server}: {e}")))?;
    let name =
        ServerName::try_from(host.clone()).map_err(|_| BootstrapError::Url(server.into()))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| BootstrapError::Api(format!("TLS with {server}: {e}")))?;
    drop(tls);
    let chain = capture
        .chain
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let want = pin.to_ascii_lowercase();
    for der in &chain {
        if spki_pin(der).is_ok_and(|p| p == want) {
            let pem = format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                STANDARD
                    .encode(der)
                    .as_bytes()
                    .chunks(64)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            return Ok(pem);
        }
    }
    Err(BootstrapError::Ca(format!(
        "no certificate in {server}'s TLS chain matches {pin} ({} offered)",
        chain.len()
    )))
}

/// A kubeconfig for one user (`auth` is the YAML of the user entry's fields).
fn kubeconfig(server: &str, ca_pem: &str, user: &str, auth: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: hull\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: {user}\n  user:\n{auth}contexts:\n- name: {user}@hull\n  context:\n    cluster: hull\n    user: {user}\ncurrent-context: {user}@hull\n",
        STANDARD.encode(ca_pem)
    )
}

async fn client_from(text: &str) -> Result<kube::Client, BootstrapError> {
    let kc = kube::config::Kubeconfig::from_yaml(text)
        .map_err(|e| BootstrapError::Api(e.to_string()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| BootstrapError::Api(e.to_string()))?;
    kube::Client::try_from(cfg).map_err(|e| BootstrapError::Api(e.to_string()))
}

/// Creates a CertificateSigningRequest and waits until it is signed (or refused).
async fn request_certificate(
    client: &kube::Client,
    csr_pem: String,
    signer: &str,
    usages: &[&str],
    timeout: Duration,
) -> Result<String, BootstrapError> {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some("node-csr-".into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(csr_pem.into_bytes()),
            signer_name: signer.into(),
            usages: Some(usages.iter().map(|u| u.to_string()).collect()),
            ..Default::default()
        },
        status: None,
    };
    let created = api
        .create(&PostParams::default(), &csr)
        .await
        .map_err(|e| BootstrapError::Api(format!("creating CertificateSigningRequest: {e}")))?;
    let name = created.metadata.name.clone().unwrap_or_default();
    tracing::info!(csr = %name, signer, "waiting for the certificate");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let c = api
            .get(&name)
            .await
            .map_err(|e| BootstrapError::Api(format!("reading {name}: {e}")))?;
        if let Some(st) = &c.status {
            if let Some(cond) = st
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Denied" || c.type_ == "Failed")
            {
                return Err(BootstrapError::Refused {
                    name,
                    reason: format!(
                        "{}: {}",
                        cond.type_,
                        cond.message.clone().unwrap_or_default()
                    ),
                });
            }
            if let Some(cert) = st.certificate.as_ref().filter(|c| !c.0.is_empty()) {
                return Ok(String::from_utf8_lossy(&cert.0).into_owned());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BootstrapError::Timeout(name, timeout));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The kubelet API's serving certificate for a node that has no CA key: a
/// `kubernetes.io/kubelet-serving` CSR for `CN=system:node:<name>` with the node's name
/// and addresses, made with the node's own credentials (`client`). Writes
/// `DIR/kubelet-serving.{crt,key}` and returns their paths; a certificate already there
/// that covers `ips` and is valid for another day is reused.
pub async fn serving_certificate(
    client: &kube::Client,
    node_name: &str,
    ips: &[std::net::IpAddr],
    dir: &Path,
    timeout: Duration,
) -> Result<(PathBuf, PathBuf), BootstrapError> {
    let crt = dir.join("kubelet-serving.crt");
    let key_path = dir.join("kubelet-serving.key");
    if key_path.exists() && covers(&crt, ips) {
        return Ok((crt, key_path));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let key = rcgen::KeyPair::generate().map_err(|e| BootstrapError::Api(format!("key: {e}")))?;
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    dn.push(
        rcgen::DnType::CommonName,
        format!("system:node:{node_name}"),
    );
    params.distinguished_name = dn;
    let mut sans: Vec<rcgen::SanType> = ips
        .iter()
        .map(|ip| rcgen::SanType::IpAddress(*ip))
        .collect();
    if let Ok(n) = node_name.to_string().try_into() {
        sans.push(rcgen::SanType::DnsName(n));
    }
    params.subject_alt_names = sans;
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| BootstrapError::Api(format!("certificate request: {e}")))?;
    let usages = ["digital signature", "key encipherment", "server auth"];
    let cert = request_certificate(
        client,
        csr_pem,
        "kubernetes.io/kubelet-serving",
        &usages,
        timeout,
    )
    .await?;
    write(&key_path, &key.serialize_pem(), 0o600)?;
    write(&crt, &cert, 0o644)?;
    Ok((crt, key_path))
}

/// Whether the certificate at `path` names every address in `ips` and stays valid a day.
fn covers(path: &Path, ips: &[std::net::IpAddr]) -> bool {
    let Ok(pem) = std::fs::read_to_string(path) else {
        return false;
    };
    let Some(Ok(der)) = CertificateDer::pem_slice_iter(pem.as_bytes()).next() else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return false;
    };
    let day_left =
        cert.validity().not_after.timestamp() > jiff::Timestamp::now().as_second() + 24 * 3600;
    let names: Vec<std::net::IpAddr> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    day_left && ips.iter().all(|ip| names.contains(ip))
}

/// Whether `t` has a bootstrap token's shape (`<6 [a-z0-9]>.<16 [a-z0-9]>`).
pub fn is_bootstrap_token(t: &str) -> bool {
    validate_token(t).is_ok()
}

fn validate_token(t: &str) -> Result<(), BootstrapError> {
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    match t.split_once('.') {
        Some((id, secret)) if ok(id, 6) && ok(secret, 16) => Ok(()),
        _ => Err(BootstrapError::Token(
            "want <6 chars [a-z0-9]>.<16 chars [a-z0-9]>".into(),
        )),
    }
}

/// Joins: CA, CSR, wait for the certificate, write `DIR/kubelet.{key,crt}`, `DIR/ca.crt`
/// and `DIR/kubelet.kubeconfig`.
pub async fn join(opts: &JoinOptions) -> Result<Joined, BootstrapError> {
    validate_token(&opts.token)?;
    std::fs::create_dir_all(&opts.dir).map_err(io(&opts.dir))?;
    let ca_pem = match &opts.ca {
        CaSource::File(p) => std::fs::read_to_string(p).map_err(io(p))?,
        CaSource::Pin(pin) => fetch_pinned_ca(&opts.server, pin).await?,
    };
    if CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .next()
        .is_none()
    {
        return Err(BootstrapError::Ca("no PEM certificate".into()));
    }
    let user = format!("system:node:{}", opts.node_name);
    let key = rcgen::KeyPair::generate().map_err(|e| BootstrapError::Api(format!("key: {e}")))?;
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    dn.push(rcgen::DnType::CommonName, user.clone());
    params.distinguished_name = dn;
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| BootstrapError::Api(format!("certificate request: {e}")))?;

    let bootstrap = kubeconfig(
        &opts.server,
        &ca_pem,
        "kubelet-bootstrap",
        &format!("    token: {}\n", opts.token),
    );
    let client = client_from(&bootstrap).await?;
    let usages = ["digital signature", "client auth"];
    let cert = request_certificate(&client, csr_pem, SIGNER, &usages, opts.timeout).await?;
    let key_pem = key.serialize_pem();
    write(&opts.dir.join("kubelet.key"), &key_pem, 0o600)?;
    write(&opts.dir.join("kubelet.crt"), &cert, 0o644)?;
    write(&opts.dir.join("ca.crt"), &ca_pem, 0o644)?;
    let auth = format!(
        "    client-certificate-data: {}\n    client-key-data: {}\n",
        STANDARD.encode(&cert),
        STANDARD.encode(&key_pem)
    );
    let path = opts.dir.join("kubelet.kubeconfig");
    write(
        &path,
        &kubeconfig(&opts.server, &ca_pem, &user, &auth),
        0o600,
    )?;
    Ok(Joined {
        kubeconfig: path,
        ca_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_tokens() {
        assert_eq!(
            host_port("https://10.0.0.1:6443").ok(),
            Some(("10.0.0.1".into(), 6443))
        );
        assert_eq!(
            host_port("https://[::1]:6443/").ok(),
            Some(("::1".into(), 6443))
        );
        assert_eq!(
            host_port("https://api.example").ok(),
            Some(("api.example".into(), 443))
        );
        assert!(host_port("http://x:1").is_err());
        assert!(validate_token("abcdef.0123456789abcdef").is_ok());
        assert!(validate_token("ABCDEF.0123456789abcdef").is_err());
        assert!(validate_token("abcdef").is_err());
    }
}
