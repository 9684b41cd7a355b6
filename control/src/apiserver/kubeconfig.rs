//! Writing kubeconfig files (the admin one in the data dir) in the format kubectl reads.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A kubeconfig with one cluster, one user (client certificate) and one context.
pub fn render(server_url: &str, ca_pem: &str, cert_pem: &str, key_pem: &str, user: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: hull
  cluster:
    server: {server_url}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: {user}@hull
  context:
    cluster: hull
    user: {user}
current-context: {user}@hull
preferences: {{}}
",
        ca = STANDARD.encode(ca_pem),
        cert = STANDARD.encode(cert_pem),
        key = STANDARD.encode(key_pem),
    )
}

/// Writes `contents` to `path` atomically with mode 0600 (it holds a private key).
pub fn write(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("kubeconfig.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The URL clients should use for a listen address: a wildcard means "this machine".
pub fn server_url(listen: std::net::SocketAddr) -> String {
    let ip = listen.ip();
    if ip.is_unspecified() {
        format!("https://127.0.0.1:{}", listen.port())
    } else if ip.is_ipv6() {
        format!("https://[{ip}]:{}", listen.port())
    } else {
        format!("https://{ip}:{}", listen.port())
    }
}
