//! Registry auth against a real docker-registry: basic auth (htpasswd) over TLS with a
//! CA made by the test, docker config.json credentials, and the bearer token flow with
//! a small token service (RS256 JWTs with an x5c chain the registry verifies).

mod image_support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use hull_runtime::image::auth::Credentials;
use hull_runtime::image::pull::Quiet;
use hull_runtime::image::registry::HostOptions;
use hull_runtime::image::{Error, ImageStore};
use image_support::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn make_tls(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=hull-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    );
}

fn htpasswd(path: &Path, user: &str, pw: &str) {
    let h = bcrypt::hash_with_result(pw, 5)
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    std::fs::write(path, format!("{user}:{h}\n")).unwrap();
}

#[test]
fn basic_auth_over_tls_with_a_private_ca() {
    let s = Scratch::new("auth-basic");
    let tls = s.path("tls");
    std::fs::create_dir_all(&tls).unwrap();
    make_tls(&tls);
    htpasswd(&s.path("htpasswd"), "alice", "s3cret");
    let reg = Registry::start_with(
        &s.path("reg"),
        RegistryConfig {
            tls: Some((tls.join("srv.pem"), tls.join("srv.key"))),
            htpasswd: Some(s.path("htpasswd")),
            token: None,
        },
    );
    mkimage(&s.path("layout"), "busybox", "1");
    reg.push(
        &s.path("layout"),
        "1",
        "t/private:1",
        &["--dest-creds", "alice:s3cret"],
    );
    let r = format!("{}/t/private:1", reg.host);
    let mut store = ImageStore::open(&s.path("data")).unwrap();
    store.registry.docker_configs.clear();
    // Loopback defaults to plain HTTP; this registry speaks TLS.
    store.registry.hosts.insert(
        reg.host.clone(),
        HostOptions {
            plain_http: Some(false),
            ..Default::default()
        },
    );
    // The private CA is not trusted yet: a TLS error naming the registry.
    let e = store.pull(&r, &Quiet).unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("t/private:1"), "{e}");

    store.registry.hosts.get_mut(&reg.host).unwrap().ca = Some(tls.join("ca.pem"));
    let e = store.pull(&r, &Quiet).unwrap_err();
    match &e {
        Error::Registry {
            status, message, ..
        } => {
            assert_eq!(*status, 401);
            assert!(message.contains("no credentials"), "{message}");
        }
        other => panic!("want a 401, got {other}"),
    }

    store.registry.credentials.insert(
        reg.host.clone(),
        Credentials {
            username: "alice".into(),
            password: "wrong".into(),
        },
    );
    let e = store.pull(&r, &Quiet).unwrap_err();
    assert!(matches!(e, Error::Registry { status: 401, .. }), "{e}");

    // Right credentials from a docker config.json.
    store.registry.credentials.clear();
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    std::fs::write(
        s.path("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host),
    )
    .unwrap();
    store.registry.docker_configs = vec![s.path("config.json")];
    let rec = store.pull(&r, &Quiet).unwrap();
    assert_eq!(rec.layers.len(), 2);

    // Skipping verification also works (and is a per-host choice).
    let mut store2 = ImageStore::open(&s.path("data2")).unwrap();
    store2.registry.docker_configs = vec![s.path("config.json")];
    store2.registry.hosts.insert(
        reg.host.clone(),
        HostOptions {
            plain_http: Some(false),
            insecure_skip_verify: true,
            ca: None,
        },
    );
    store2.pull(&r, &Quiet).unwrap();
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// An RS256 JWT the registry accepts: x5c holds the signing cert, which is also the
/// registry's root bundle.
fn make_token(dir: &Path, repo: &str, service: &str, issuer: &str) -> String {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "tok.key",
            "-out",
            "tok.pem",
            "-days",
            "2",
            "-subj",
            "/CN=hull-token-issuer",
        ],
    );
    openssl(
        dir,
        &[
            "x509", "-in", "tok.pem", "-outform", "DER", "-out", "tok.der",
        ],
    );
    let der = std::fs::read(dir.join("tok.der")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&der)]});
    let claims = serde_json::json!({"iss": issuer, "sub": "alice", "aud": service,
        "exp": now + 3600, "nbf": now - 60, "iat": now - 60, "jti": format!("j{}", std::process::id()),
        "access": [{"type": "repository", "name": repo, "actions": ["pull", "push"]}]});
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    std::fs::write(dir.join("input"), &input).unwrap();
    openssl(
        dir,
        &[
            "dgst", "-sha256", "-sign", "tok.key", "-out", "sig", "input",
        ],
    );
    format!(
        "{input}.{}",
        b64url(&std::fs::read(dir.join("sig")).unwrap())
    )
}

/// The token service: answers GET /token with the token when Basic alice:s3cret is
/// presented, 401 otherwise; records the query strings it was asked.
fn token_service(token: String, seen: Arc<Mutex<Vec<String>>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let good = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:s3cret")
    );
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut authorized = false;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("authorization")
                    && v.trim() == good
                {
                    authorized = true;
                }
            }
            let query = line.split(' ').nth(1).unwrap_or("").to_string();
            seen.lock().unwrap().push(query);
            let resp = if authorized {
                let body = serde_json::json!({"token": token, "access_token": token}).to_string();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#;
                format!(
                    "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            };
            let _ = c.write_all(resp.as_bytes());
        }
    });
    port
}

#[test]
fn bearer_token_flow_with_scopes() {
    let s = Scratch::new("auth-token");
    let tokdir = s.path("tok");
    std::fs::create_dir_all(&tokdir).unwrap();
    let token = make_token(&tokdir, "t/tok", "hull-test", "hull-issuer");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let tport = token_service(token, seen.clone());
    let reg = Registry::start_with(
        &s.path("reg"),
        RegistryConfig {
            tls: None,
            htpasswd: None,
            token: Some((
                format!("http://127.0.0.1:{tport}/token"),
                "hull-test".into(),
                "hull-issuer".into(),
                tokdir.join("tok.pem"),
            )),
        },
    );
    mkimage(&s.path("layout"), "busybox", "1");
    reg.push(
        &s.path("layout"),
        "1",
        "t/tok:1",
        &["--dest-creds", "alice:s3cret"],
    );
    let r = format!("{}/t/tok:1", reg.host);

    let mut store = ImageStore::open(&s.path("data")).unwrap();
    store.registry.docker_configs.clear();
    seen.lock().unwrap().clear();
    let e = store.pull(&r, &Quiet).unwrap_err().to_string();
    assert!(
        e.contains("token service") && e.contains("401") && e.contains("bad credentials"),
        "{e}"
    );

    store.registry.credentials.insert(
        reg.host.clone(),
        Credentials {
            username: "alice".into(),
            password: "s3cret".into(),
        },
    );
    let rec = store.pull(&r, &Quiet).unwrap();
    assert_eq!(rec.layers.len(), 2);
    let asked = seen.lock().unwrap().clone();
    assert!(
        asked
            .iter()
            .any(|q| q.contains("scope=repository%3At%2Ftok%3Apull")
                && q.contains("service=hull-test")),
        "{asked:?}"
    );
    // One token served every request of the pull (it is cached per endpoint).
    assert_eq!(asked.len(), 2, "one refused, one granted: {asked:?}");
}
