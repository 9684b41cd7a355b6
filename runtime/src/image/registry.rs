//! A thin client for the OCI distribution API (GET manifests and blobs) over `ureq`
//! with rustls: anonymous, basic and bearer-token auth, per-host TLS options, and
//! mirrors tried in order before the registry itself (as containerd's `hosts.toml`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use ureq::tls::{RootCerts, TlsConfig};

use super::auth::{self, Challenge, Credentials, TokenResponse};
use super::manifest::{MAX_DOCUMENT, Platform};
use super::{Error, Reference, Result};

/// TLS and transport choices for one registry host.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostOptions {
    /// Speak plain HTTP (default: only for localhost and 127.0.0.0/8, as Docker does).
    #[serde(default)]
    pub plain_http: Option<bool>,
    /// Skip certificate verification (a private registry with a self-signed cert).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// PEM file of CA certificates to trust for this host instead of the public roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

/// How pulls reach registries; `DATA/registries.toml` and `--registry-mirror` fill it.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Registry host → mirror URLs, tried in order before the host itself.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Mirrors from `--registry-mirror`, tried before those of `registries.toml`.
    pub flag_mirrors: BTreeMap<String, Vec<String>>,
    pub hosts: BTreeMap<String, HostOptions>,
    /// Explicit credentials by registry host (CRI AuthConfig, `--user`); these win.
    pub credentials: BTreeMap<String, Credentials>,
    /// docker-style config.json files searched for credentials.
    pub docker_configs: Vec<PathBuf>,
    pub platform: Option<Platform>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RegistriesToml {
    #[serde(default)]
    mirrors: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    hosts: BTreeMap<String, HostOptions>,
}

impl RegistryOptions {
    /// Defaults plus `registries.toml` if present:
    /// ```toml
    /// [mirrors]
    /// "docker.io" = ["http://127.0.0.1:5000"]
    /// [hosts."reg.internal:5000"]
    /// ca = "/etc/hull/reg-ca.pem"
    /// ```
    pub fn load(registries_toml: &Path) -> Result<Self> {
        let mut opts = RegistryOptions {
            docker_configs: auth::default_docker_configs(),
            ..Default::default()
        };
        match std::fs::read_to_string(registries_toml) {
            Ok(text) => {
                let t: RegistriesToml = toml::from_str(&text)
                    .map_err(|e| Error::Other(format!("{}: {e}", registries_toml.display())))?;
                opts.mirrors = t.mirrors;
                opts.hosts = t.hosts;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    path: registries_toml.to_path_buf(),
                    source,
                });
            }
        }
        Ok(opts)
    }

    /// Adds a `HOST=URL` mirror (the `--registry-mirror` flag); flag mirrors go first.
    pub fn add_mirror_flag(&mut self, spec: &str) -> Result<()> {
        let (host, url) = spec
            .split_once('=')
            .ok_or_else(|| Error::Other(format!("--registry-mirror {spec:?}: want HOST=URL")))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::Other(format!(
                "--registry-mirror {spec:?}: URL must start with http:// or https://"
            )));
        }
        self.flag_mirrors
            .entry(host.to_string())
            .or_default()
            .push(url.to_string());
        Ok(())
    }

    fn credentials_for(&self, host: &str) -> Result<Option<Credentials>> {
        if let Some(c) = self.credentials.get(host) {
            return Ok(Some(c.clone()));
        }
        for p in &self.docker_configs {
            if let Some(c) = auth::from_docker_config(p, host)? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }
}

/// Docker's rule: localhost and loopback registries are plain HTTP.
fn is_loopback_host(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

struct Endpoint {
    /// `scheme://host[:port][/prefix]`; requests go to `{base}/v2/...`.
    base: String,
    /// Host as named, the key for credentials and TLS options.
    host: String,
    agent: ureq::Agent,
    creds: Option<Credentials>,
    authorization: Mutex<Option<String>>,
}

/// Talks to one repository through its mirrors and registry.
pub struct RegistryClient {
    reference: Reference,
    endpoints: Vec<Arc<Endpoint>>,
    /// The endpoint that served the manifest; blobs are asked there first.
    active: usize,
}

fn agent_for(host: &str, opts: &HostOptions) -> Result<ureq::Agent> {
    let mut tls = TlsConfig::builder();
    if opts.insecure_skip_verify {
        tls = tls.disable_verification(true);
    }
    if let Some(ca) = &opts.ca {
        let pem = std::fs::read(ca).map_err(|source| Error::Io {
            path: ca.clone(),
            source,
        })?;
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c.to_owned()),
                Ok(_) => {}
                Err(e) => {
                    return Err(Error::Other(format!(
                        "CA file {} for {host}: {e}",
                        ca.display()
                    )));
                }
            }
        }
        if certs.is_empty() {
            return Err(Error::Other(format!(
                "CA file {} for {host}: no certificates in it",
                ca.display()
            )));
        }
        tls = tls.root_certs(RootCerts::new_with_certs(&certs));
    }
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .tls_config(tls.build())
        .build();
    Ok(config.into())
}

fn base_url(url_or_host: &str, opts: &HostOptions) -> String {
    if url_or_host.starts_with("http://") || url_or_host.starts_with("https://") {
        let u = url_or_host.trim_end_matches('/');
        return u.strip_suffix("/v2").unwrap_or(u).to_string();
    }
    let plain = opts
        .plain_http
        .unwrap_or_else(|| is_loopback_host(url_or_host));
    let host = if url_or_host == "docker.io" {
        "registry-1.docker.io"
    } else {
        url_or_host
    };
    format!("{}://{host}", if plain { "http" } else { "https" })
}

fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.split('/').next().unwrap_or(rest).to_string()
}

impl RegistryClient {
    pub fn new(opts: &RegistryOptions, reference: &Reference) -> Result<Self> {
        let mut endpoints = Vec::new();
        let mut targets: Vec<(String, String)> = opts
            .flag_mirrors
            .get(&reference.registry)
            .into_iter()
            .chain(opts.mirrors.get(&reference.registry))
            .flatten()
            .map(|u| (url_host(u), u.clone()))
            .collect();
        targets.push((reference.registry.clone(), reference.registry.clone()));
        for (host, target) in targets {
            let host_opts = opts.hosts.get(&host).cloned().unwrap_or_default();
            endpoints.push(Arc::new(Endpoint {
                base: base_url(&target, &host_opts),
                agent: agent_for(&host, &host_opts)?,
                creds: opts.credentials_for(&host)?,
                host,
                authorization: Mutex::new(None),
            }));
        }
        Ok(RegistryClient {
            reference: reference.clone(),
            endpoints,
            active: 0,
        })
    }

    /// Fetches a manifest or index by tag or digest: `(body, content type)`.
    pub fn manifest(&mut self, object: &str) -> Result<(Vec<u8>, Option<String>)> {
        let path = format!("{}/manifests/{object}", self.reference.repository);
        let mut last = None;
        for (i, ep) in self.endpoints.iter().enumerate() {
            match self.get(ep, &path, Some(super::manifest::ACCEPT)) {
                Ok(resp) => {
                    let ct = resp
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let body = resp
                        .into_body()
                        .with_config()
                        .limit(MAX_DOCUMENT)
                        .read_to_vec()
                        .map_err(|e| self.unreachable(ep, format!("reading manifest: {e}")))?;
                    self.active = i;
                    return Ok((body, ct));
                }
                Err(e) => {
                    tracing::debug!(endpoint = %ep.base, error = %e, "manifest fetch failed; trying next");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Other("no registry endpoints".into())))
    }

    /// Opens a blob stream (the caller verifies digest and size while reading).
    pub fn blob(&self, digest: &str) -> Result<Box<dyn Read + Send>> {
        let path = format!("{}/blobs/{digest}", self.reference.repository);
        let order = std::iter::once(self.active)
            .chain((0..self.endpoints.len()).filter(|i| *i != self.active));
        let mut last = None;
        for i in order {
            let ep = &self.endpoints[i];
            match self.get(ep, &path, None) {
                Ok(resp) => return Ok(Box::new(resp.into_body().into_reader())),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Other("no registry endpoints".into())))
    }

    fn unreachable(&self, ep: &Endpoint, message: String) -> Error {
        Error::Unreachable {
            reference: self.reference.to_string(),
            registry: ep.base.clone(),
            message,
        }
    }

    /// GET with auth: on a 401, answer the challenge (basic or bearer) and retry once.
    fn get(
        &self,
        ep: &Endpoint,
        path: &str,
        accept: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let url = format!("{}/v2/{path}", ep.base);
        for attempt in 0..2 {
            let mut req = ep.agent.get(&url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            let current = ep.authorization.lock().map(|g| g.clone()).unwrap_or(None);
            if let Some(h) = &current {
                req = req.header("Authorization", h);
            }
            let resp = req
                .call()
                .map_err(|e| self.unreachable(ep, e.to_string()))?;
            let status = resp.status().as_u16();
            if status == 401 && attempt == 0 {
                let challenge = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .and_then(auth::parse_challenge);
                let header = match challenge {
                    Some(Challenge::Basic) => ep.creds.as_ref().map(Credentials::basic_header),
                    Some(Challenge::Bearer {
                        realm,
                        service,
                        scope,
                    }) => {
                        let scope = scope.unwrap_or_else(|| {
                            format!("repository:{}:pull", self.reference.repository)
                        });
                        Some(format!(
                            "Bearer {}",
                            self.token(ep, &realm, service.as_deref(), &scope)?
                        ))
                    }
                    None => None,
                };
                if let Some(h) = header
                    && current.as_ref() != Some(&h)
                {
                    if let Ok(mut g) = ep.authorization.lock() {
                        *g = Some(h);
                    }
                    continue;
                }
            }
            if (200..300).contains(&status) {
                return Ok(resp);
            }
            return Err(self.status_error(ep, resp));
        }
        Err(Error::Registry {
            reference: self.reference.to_string(),
            registry: ep.base.clone(),
            status: 401,
            message: "unauthorized after authenticating".into(),
        })
    }

    fn token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String> {
        let mut req = ep.agent.get(realm).query("scope", scope);
        if let Some(s) = service {
            req = req.query("service", s);
        }
        if let Some(c) = &ep.creds {
            req = req.header("Authorization", c.basic_header());
        }
        let resp = req
            .call()
            .map_err(|e| self.unreachable(ep, format!("token service {realm}: {e}")))?;
        if !resp.status().is_success() {
            let mut e = self.status_error(ep, resp);
            if let Error::Registry { message, .. } = &mut e {
                *message = format!("token service {realm}: {message}");
            }
            return Err(e);
        }
        let body = resp
            .into_body()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| self.unreachable(ep, format!("token service {realm}: {e}")))?;
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|source| Error::Json {
            what: format!("token from {realm}"),
            source,
        })?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Other(format!("token service {realm} returned no token")))
    }

    fn status_error(&self, ep: &Endpoint, resp: ureq::http::Response<ureq::Body>) -> Error {
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .with_config()
            .limit(64 << 10)
            .read_to_vec()
            .unwrap_or_default();
        #[derive(Deserialize)]
        struct Errs {
            errors: Vec<ErrItem>,
        }
        #[derive(Deserialize)]
        struct ErrItem {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
        }
        let message = match serde_json::from_slice::<Errs>(&body) {
            Ok(e) if !e.errors.is_empty() => e
                .errors
                .iter()
                .map(|i| format!("{} {}", i.code, i.message))
                .collect::<Vec<_>>()
                .join("; "),
            _ => {
                let text = String::from_utf8_lossy(&body);
                let text = text.trim();
                if text.is_empty() {
                    ureq::http::StatusCode::from_u16(status)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("error")
                        .to_string()
                } else {
                    text.chars().take(300).collect()
                }
            }
        };
        let message = if status == 401 && ep.creds.is_none() {
            format!("{message} (no credentials for {})", ep.host)
        } else {
            message
        };
        Error::Registry {
            reference: self.reference.to_string(),
            registry: ep.base.clone(),
            status,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http() {
        let d = HostOptions::default();
        assert_eq!(base_url("127.0.0.1:5000", &d), "http://127.0.0.1:5000");
        assert_eq!(base_url("127.3.4.5", &d), "http://127.3.4.5");
        assert_eq!(base_url("localhost:1", &d), "http://localhost:1");
        assert_eq!(base_url("[::1]:5000", &d), "http://[::1]:5000");
        assert_eq!(base_url("docker.io", &d), "https://registry-1.docker.io");
        assert_eq!(base_url("reg.example:5000", &d), "https://reg.example:5000");
        assert_eq!(base_url("http://m:1/v2/", &d), "http://m:1");
    }

    #[test]
    fn mirror_flags_parse_and_reject_garbage() {
        let mut o = RegistryOptions::default();
        o.add_mirror_flag("docker.io=http://127.0.0.1:5000")
            .unwrap();
        assert_eq!(o.flag_mirrors["docker.io"], vec!["http://127.0.0.1:5000"]);
        assert!(o.add_mirror_flag("docker.io").is_err());
        assert!(o.add_mirror_flag("docker.io=ftp://x").is_err());
    }
}
