//! Identities beyond the admin certificate, against a real `hull server`, driven by
//! kubectl 1.35: `auth can-i` (SelfSubjectAccessReview / SelfSubjectRulesReview),
//! `auth whoami`, impersonation (`--as`), ServiceAccount tokens (`kubectl create token`,
//! TokenRequest bound to a pod, TokenReview, the token stops working when its pod goes),
//! the OIDC discovery documents, the `kubernetes` Service, the ServiceAccount admission
//! plugin, and node join: bootstrap token → CertificateSigningRequest → auto-approved and
//! signed → the certificate works as the node.

mod api_support;

use std::process::Command;
use std::time::Duration;

use api_support::Server;
use serde_json::Value;

fn json(s: &Server, args: &[&str]) -> Value {
    let out = s.ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}: {out}"))
}

fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..600 {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// curl with a bearer token; returns (code, body).
fn curl_token(s: &Server, token: &str, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(s.dir.join("ca.crt"))
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("{}{path}", s.url()))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn can_i_whoami_and_impersonation() {
    let s = Server::start("ident-cani", None);
    let pid = std::process::id();
    let user = format!("carol-{pid}");
    assert_eq!(s.ok(&["auth", "can-i", "delete", "nodes"]).trim(), "yes");
    let out = s.kubectl(&["auth", "can-i", "list", "pods", "--as", &user]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
    s.ok(&[
        "create",
        "rolebinding",
        "carol-view",
        "-n",
        "default",
        "--clusterrole=view",
        &format!("--user={user}"),
    ]);
    eventually("carol's binding", || {
        let out = s.kubectl(&[
            "auth", "can-i", "list", "pods", "-n", "default", "--as", &user,
        ]);
        (String::from_utf8_lossy(&out.stdout).trim() == "yes").then_some(())
    });
    let out = s.kubectl(&[
        "auth",
        "can-i",
        "create",
        "deployments.apps",
        "-n",
        "default",
        "--as",
        &user,
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
    // Impersonated requests are authorized as the impersonated user.
    s.ok(&["get", "pods", "-n", "default", "--as", &user]);
    let err = s.fails(&["get", "secrets", "-n", "default", "--as", &user], None);
    assert!(
        err.contains(&format!("User \"{user}\" cannot list resource \"secrets\"")),
        "{err}"
    );
    // --list: the rules review.
    let list = s.ok(&["auth", "can-i", "--list", "-n", "default", "--as", &user]);
    assert!(
        list.contains("pods") && list.contains("[get list watch]"),
        "{list}"
    );
    // whoami.
    let who = s.ok(&[
        "auth",
        "whoami",
        "-o",
        "json",
        "--as",
        &user,
        "--as-group",
        "team",
    ]);
    let v: Value = serde_json::from_str(&who).expect("whoami json");
    assert_eq!(v["status"]["userInfo"]["username"], user.as_str());
    let groups = v["status"]["userInfo"]["groups"].to_string();
    assert!(
        groups.contains("team") && groups.contains("system:authenticated"),
        "{groups}"
    );
    // Someone without the impersonate verb cannot use --as.
    let kc = s.user_kubeconfig(&user, &[]);
    let out = s.kubectl_kc(
        &kc,
        &["get", "pods", "-n", "default", "--as", "admin"],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot impersonate resource \"users\""),
        "{err}"
    );
}

#[test]
fn service_account_tokens_and_the_kubernetes_service() {
    let s = Server::start("ident-sa", None);
    let pid = std::process::id();
    let ns = format!("sa-{pid}");
    s.ok(&["create", "namespace", &ns]);
    s.ok(&["create", "serviceaccount", "robot", "-n", &ns]);

    // The kubernetes Service: first IP of the range, 443 → this server.
    let svc = json(
        &s,
        &[
            "get",
            "service",
            "kubernetes",
            "-n",
            "default",
            "-o",
            "json",
        ],
    );
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    let ep = eventually("kubernetes endpoints", || {
        let out = s.kubectl(&[
            "get",
            "endpoints",
            "kubernetes",
            "-n",
            "default",
            "-o",
            "json",
        ]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).ok())
            .flatten()
    });
    assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "127.0.0.1");
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], s.addr.port());
    let slice = json(
        &s,
        &[
            "get",
            "endpointslice",
            "kubernetes",
            "-n",
            "default",
            "-o",
            "json",
        ],
    );
    assert_eq!(slice["endpoints"][0]["addresses"][0], "127.0.0.1");
    // Deleted, it comes back.
    s.ok(&["delete", "service", "kubernetes", "-n", "default"]);
    eventually("kubernetes service back", || {
        s.kubectl(&["get", "service", "kubernetes", "-n", "default"])
            .status
            .success()
            .then_some(())
    });

    // kubectl create token → a JWT the server accepts as the service account.
    let token = s
        .ok(&["create", "token", "robot", "-n", &ns, "--duration=15m"])
        .trim()
        .to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let (code, body) = curl_token(&s, &token, &format!("/api/v1/namespaces/{ns}/pods"));
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains(&format!("system:serviceaccount:{ns}:robot")),
        "{body}"
    );
    s.ok(&[
        "create",
        "rolebinding",
        "robot-view",
        "-n",
        &ns,
        "--clusterrole=view",
        &format!("--serviceaccount={ns}:robot"),
    ]);
    eventually("robot may list pods", || {
        (curl_token(&s, &token, &format!("/api/v1/namespaces/{ns}/pods")).0 == 200).then_some(())
    });
    // Too short an expiry is refused with the field named.
    let err = s.fails(
        &["create", "token", "robot", "-n", &ns, "--duration=1m"],
        None,
    );
    assert!(err.contains("spec.expirationSeconds"), "{err}");
    // A wrong audience is not accepted by the API server.
    let other = s
        .ok(&["create", "token", "robot", "-n", &ns, "--audience=vault"])
        .trim()
        .to_string();
    assert_eq!(curl_token(&s, &other, "/version").0, 401);

    // TokenReview says who a token is.
    let review = format!(
        r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"{token}"}}}}"#
    );
    let out = s.kubectl_stdin(
        &["create", "--validate=false", "-f", "-", "-o", "json"],
        Some(&review),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("review json");
    assert_eq!(v["status"]["authenticated"], true);
    assert_eq!(
        v["status"]["user"]["username"],
        format!("system:serviceaccount:{ns}:robot")
    );

    // A pod gets the kube-api-access volume; a token bound to it dies with it.
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p1","namespace":"{ns}"}},
  "spec":{{"serviceAccountName":"robot","containers":[{{"name":"c","image":"busybox"}}]}}}}"#
    );
    let out = s.kubectl_stdin(&["create", "-f", "-"], Some(&pod));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = json(&s, &["get", "pod", "p1", "-n", &ns, "-o", "json"]);
    let vol = p["spec"]["volumes"][0].clone();
    assert!(
        vol["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("kube-api-access-")),
        "{vol}"
    );
    assert_eq!(
        vol["projected"]["sources"][0]["serviceAccountToken"]["path"],
        "token"
    );
    assert_eq!(
        p["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    let uid = p["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let bound = s
        .ok(&[
            "create",
            "token",
            "robot",
            "-n",
            &ns,
            "--bound-object-kind=Pod",
            "--bound-object-name=p1",
            &format!("--bound-object-uid={uid}"),
        ])
        .trim()
        .to_string();
    assert_eq!(
        curl_token(&s, &bound, &format!("/api/v1/namespaces/{ns}/pods")).0,
        200
    );
    s.ok(&[
        "delete",
        "pod",
        "p1",
        "-n",
        &ns,
        "--grace-period=0",
        "--force",
    ]);
    assert_eq!(
        curl_token(&s, &bound, &format!("/api/v1/namespaces/{ns}/pods")).0,
        401
    );
    // automountServiceAccountToken: false → no volume.
    let pod2 = pod.replace("\"p1\"", "\"p2\"").replace(
        "\"serviceAccountName\":\"robot\"",
        "\"automountServiceAccountToken\":false",
    );
    let out = s.kubectl_stdin(&["create", "-f", "-"], Some(&pod2));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p2 = json(&s, &["get", "pod", "p2", "-n", &ns, "-o", "json"]);
    assert!(p2["spec"]["volumes"].is_null(), "{}", p2["spec"]);
    // Deleting the service account ends its tokens.
    s.ok(&["delete", "serviceaccount", "robot", "-n", &ns]);
    assert_eq!(curl_token(&s, &token, "/version").0, 401);

    // OIDC discovery.
    let (code, body) = s.curl(
        &[&format!("{}/.well-known/openid-configuration", s.url())],
        false,
    );
    assert_eq!(code, 200, "{body}");
    let conf: Value = serde_json::from_str(&body).expect("openid json");
    assert_eq!(
        conf["issuer"],
        "https://kubernetes.default.svc.cluster.local"
    );
    let (code, body) = s.curl(&[&format!("{}/openid/v1/jwks", s.url())], false);
    assert_eq!(code, 200, "{body}");
    let jwks: Value = serde_json::from_str(&body).expect("jwks json");
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert_eq!(jwks["keys"][0]["crv"], "P-256");
}

#[test]
fn node_joins_with_a_bootstrap_token() {
    let s = Server::start("ident-join", None);
    let pid = std::process::id();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The token as `hull server` makes it (through the API, with the admin identity).
    let admin = rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&s.kubeconfig).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        kube::Client::try_from(cfg).expect("client")
    });
    let token = rt
        .block_on(hull_control::apiserver::bootstrap_token::create_via_api(
            &admin,
            &Default::default(),
        ))
        .expect("token");
    let (id, _) = token.split_once('.').expect("id.secret");
    let secret = json(
        &s,
        &[
            "get",
            "secret",
            &format!("bootstrap-token-{id}"),
            "-n",
            "kube-system",
            "-o",
            "json",
        ],
    );
    assert_eq!(secret["type"], "bootstrap.kubernetes.io/token");

    // The token authenticates as system:bootstrap:<id>, which may create CSRs and no more.
    let (code, body) = curl_token(
        &s,
        &token,
        "/apis/certificates.k8s.io/v1/certificatesigningrequests",
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl_token(&s, &token, "/api/v1/namespaces/kube-system/secrets");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains(&format!("system:bootstrap:{id}")), "{body}");
    assert_eq!(curl_token(&s, "abcdef.0123456789abcdef", "/version").0, 401);

    // A node's certificate request, made with openssl as any kubelet's would be.
    let node = format!("joiner-{pid}");
    let key = s.dir.join("node.key");
    let csr = s.dir.join("node.csr");
    let st = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .arg("-subj")
        .arg(format!("/O=system:nodes/CN=system:node:{node}"))
        .status()
        .expect("openssl");
    assert!(st.success());
    use base64::Engine;
    let req = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&csr).expect("csr"));
    let body = format!(
        r#"{{"apiVersion":"certificates.k8s.io/v1","kind":"CertificateSigningRequest","metadata":{{"name":"node-csr-{pid}"}},
  "spec":{{"request":"{req}","signerName":"kubernetes.io/kube-apiserver-client-kubelet","usages":["digital signature","client auth"],
  "username":"someone-else"}}}}"#
    );
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(s.dir.join("ca.crt"))
        .args([
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
        ])
        .arg(format!(
            "{}/apis/certificates.k8s.io/v1/certificatesigningrequests",
            s.url()
        ))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.trim_end().ends_with("201"), "{text}");
    // The server recorded who asked, not who the body claimed.
    let c = json(
        &s,
        &["get", "csr", &format!("node-csr-{pid}"), "-o", "json"],
    );
    assert_eq!(c["spec"]["username"], format!("system:bootstrap:{id}"));
    // The controller manager approves and signs it.
    let cert = eventually("signed certificate", || {
        let c = json(
            &s,
            &["get", "csr", &format!("node-csr-{pid}"), "-o", "json"],
        );
        c["status"]["certificate"].as_str().map(str::to_string)
    });
    let c = json(
        &s,
        &["get", "csr", &format!("node-csr-{pid}"), "-o", "json"],
    );
    assert_eq!(c["status"]["conditions"][0]["type"], "Approved");
    let pem = base64::engine::general_purpose::STANDARD
        .decode(cert)
        .expect("base64 cert");
    let crt = s.dir.join("node.crt");
    std::fs::write(&crt, pem).expect("write cert");
    // The certificate works: the node may write its own Node.
    let (code, body) = s.curl(
        &[
            "--cert",
            crt.to_str().unwrap_or_default(),
            "--key",
            key.to_str().unwrap_or_default(),
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!(r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{node}"}}}}"#),
            &format!("{}/api/v1/nodes", s.url()),
        ],
        true,
    );
    assert_eq!(code, 201, "{body}");

    // A request for another signer is not auto-approved; an admin approves it with kubectl,
    // and a denied one never gets a certificate.
    let other = body_for(
        &s,
        &format!("client-{pid}"),
        "kubernetes.io/kube-apiserver-client",
        &format!("/CN=dev-{pid}"),
    );
    let out = s.kubectl_stdin(&["create", "-f", "-"], Some(&other));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    let c = json(&s, &["get", "csr", &format!("client-{pid}"), "-o", "json"]);
    assert!(c["status"]["certificate"].is_null(), "{c}");
    s.ok(&["certificate", "approve", &format!("client-{pid}")]);
    eventually("admin-approved certificate", || {
        let c = json(&s, &["get", "csr", &format!("client-{pid}"), "-o", "json"]);
        c["status"]["certificate"].as_str().map(|_| ())
    });
    let denied = body_for(
        &s,
        &format!("denied-{pid}"),
        "kubernetes.io/kube-apiserver-client",
        &format!("/CN=mallory-{pid}"),
    );
    let out = s.kubectl_stdin(&["create", "-f", "-"], Some(&denied));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.ok(&["certificate", "deny", &format!("denied-{pid}")]);
    let c = json(&s, &["get", "csr", &format!("denied-{pid}"), "-o", "json"]);
    assert_eq!(c["status"]["conditions"][0]["type"], "Denied");
    let err = s.fails(&["certificate", "approve", &format!("denied-{pid}")], None);
    assert!(
        err.contains("mutually exclusive") || err.contains("Denied"),
        "{err}"
    );
}

fn body_for(s: &Server, name: &str, signer: &str, subj: &str) -> String {
    let key = s.dir.join(format!("{name}.key"));
    let csr = s.dir.join(format!("{name}.csr"));
    let st = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .arg("-subj")
        .arg(subj)
        .status()
        .expect("openssl");
    assert!(st.success());
    use base64::Engine;
    let req = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&csr).expect("csr"));
    format!(
        r#"{{"apiVersion":"certificates.k8s.io/v1","kind":"CertificateSigningRequest","metadata":{{"name":"{name}"}},
  "spec":{{"request":"{req}","signerName":"{signer}","usages":["digital signature","client auth"]}}}}"#
    )
}
