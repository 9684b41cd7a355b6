//! Services and DNS on a real `hull up`, driven by kubectl 1.35 (issue 9's list): a
//! ClusterIP reached by DNS name from a client pod spreads over 3 pods; `kubectl
//! expose`; sessionAffinity pins the client; a pod that stops being Ready leaves the
//! rotation and comes back; a headless Service resolves to the pod IPs; an
//! ExternalName resolves (and `wget` follows it); a selector-less Service with a
//! manual EndpointSlice reaches a listener pod in another namespace; rules go away
//! with the Service, and `hull up`'s proxy removes its tables when it stops.
//!
//! Needs the `hull` binary of the same target dir (`cargo test --release --workspace`
//! builds it; or set HULL_BIN) and kubectl.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "localhost/proxytest/busybox:up";

fn hull_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HULL_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/up_services-… → target/<profile>/hull
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("hull"))
        .expect("target dir");
    assert!(
        p.exists(),
        "{} missing: build the hull binary first (cargo build --release) or set HULL_BIN",
        p.display()
    );
    p
}

fn kubectl_bin() -> PathBuf {
    for p in [
        "/usr/local/bin/kubectl",
        "/var/tmp/hull-acceptance/bin/kubectl",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("kubectl")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A scratch dir removed on drop.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `hull up`, stopped with SIGINT (Ctrl-C) on drop if the test did not.
struct Up {
    child: Option<Child>,
    data: PathBuf,
    log: PathBuf,
}

impl Up {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn kubectl(&self, args: &[&str], input: Option<&str>) -> (bool, String) {
        use std::io::Write;
        let mut c = Command::new(kubectl_bin())
            .env("KUBECONFIG", self.data.join("admin.kubeconfig"))
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        if let (Some(i), Some(mut s)) = (input, c.stdin.take()) {
            s.write_all(i.as_bytes()).expect("kubectl stdin");
        }
        let o = c.wait_with_output().expect("kubectl output");
        let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&o.stderr));
        (o.status.success(), s)
    }

    fn must(&self, args: &[&str], input: Option<&str>) -> String {
        let (ok, out) = self.kubectl(args, input);
        assert!(ok, "kubectl {args:?}: {out}");
        out
    }

    /// Polls `f` until it returns Some, for at most `limit` (a bound so a broken
    /// cluster fails the test instead of hanging it, not a timing assertion).
    fn wait_for<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                start.elapsed() < limit,
                "{what}: not reached within {limit:?}\nhull up log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Body counts of `n` HTTP GETs of `url` from the client pod (busybox wget).
    fn hits(&self, url: &str, n: usize) -> BTreeMap<String, usize> {
        let script = format!("for i in $(seq {n}); do wget -qO- {url}; done");
        let (_, out) = self.kubectl(&["exec", "client", "--", "sh", "-c", &script], None);
        let mut m = BTreeMap::new();
        for l in out
            .lines()
            .filter(|l| l.starts_with("web-") || *l == "manual-ok")
        {
            *m.entry(l.to_string()).or_insert(0) += 1;
        }
        m
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            for _ in 0..300 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.stop();
    }
}

fn nft_ruleset() -> String {
    let o = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn web_yaml() -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: {IMAGE}
        imagePullPolicy: IfNotPresent
        command: [sh, -c, 'mkdir -p /tmp/w && hostname > /tmp/w/index.html && touch /tmp/ready && exec httpd -f -p 80 -h /tmp/w']
        readinessProbe: {{exec: {{command: [test, -f, /tmp/ready]}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web-h}}
spec: {{clusterIP: None, selector: {{app: web}}, ports: [{{port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: alias}}
spec: {{type: ExternalName, externalName: web.default.svc.cluster.local}}
"#
    )
}

#[test]
fn services_and_dns_on_hull_up() {
    let dir = PathBuf::from(format!("/var/tmp/hull-proxy-up-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    let scratch = Scratch(dir.clone());
    let hull = hull_bin();
    let data = dir.join("data");
    let layout = dir.join("layout");
    let mkimage = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/images/mkimage.py");
    let st = Command::new("python3")
        .arg(&mkimage)
        .arg(&layout)
        .args(["busybox", "up"])
        .stdout(Stdio::null())
        .status()
        .expect("mkimage");
    assert!(st.success(), "mkimage.py failed");
    let st = Command::new(&hull)
        .args(["image", "import", "--data-dir"])
        .arg(&data)
        .args(["--name", "localhost/proxytest/busybox"])
        .arg(&layout)
        .stdout(Stdio::null())
        .status()
        .expect("hull image import");
    assert!(st.success(), "image import failed");

    let log = dir.join("up.log");
    let out = std::fs::File::create(&log).expect("log");
    let err = out.try_clone().expect("log");
    let child = Command::new(&hull)
        .args(["up", "--data-dir"])
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--kubelet-port", &free_port().to_string()])
        .args(["--node-name", "proxy-test-node"])
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn hull up");
    let mut up = Up {
        child: Some(child),
        data: data.clone(),
        log,
    };
    let long = Duration::from_secs(180);
    up.wait_for("node Ready", long, || {
        let (ok, out) = up.kubectl(&["get", "nodes", "--no-headers"], None);
        (ok && out.split_whitespace().nth(1) == Some("Ready")).then_some(())
    });
    up.wait_for("apply", Duration::from_secs(60), || {
        up.kubectl(&["apply", "-f", "-"], Some(&web_yaml()))
            .0
            .then_some(())
    });
    up.must(
        &[
            "run",
            "client",
            &format!("--image={IMAGE}"),
            "--image-pull-policy=IfNotPresent",
            "--restart=Never",
            "--command",
            "--",
            "sleep",
            "3600",
        ],
        None,
    );
    up.wait_for("web available, client Ready", long, || {
        let (_, a) = up.kubectl(
            &[
                "get",
                "deploy",
                "web",
                "-o",
                "jsonpath={.status.availableReplicas}",
            ],
            None,
        );
        let (c, _) = up.kubectl(
            &[
                "wait",
                "--for=condition=Ready",
                "pod/client",
                "--timeout=2s",
            ],
            None,
        );
        (a.trim() == "3" && c).then_some(())
    });

    // By DNS name from a pod (resolv.conf search path, then the FQDN): all 3 pods.
    let spread = up.wait_for(
        "web by name reaches 3 pods",
        Duration::from_secs(90),
        || {
            let m = up.hits("http://web/", 30);
            (m.len() == 3).then_some(m)
        },
    );
    assert_eq!(spread.values().sum::<usize>(), 30, "{spread:?}");
    let fqdn = up.hits("http://web.default.svc.cluster.local/", 10);
    assert_eq!(fqdn.values().sum::<usize>(), 10, "{fqdn:?}");

    // Headless: the 3 ready pod IPs.
    let (_, ns) = up.kubectl(
        &[
            "exec",
            "client",
            "--",
            "nslookup",
            "web-h.default.svc.cluster.local",
        ],
        None,
    );
    let pod_ips = up.must(
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].status.podIP}",
        ],
        None,
    );
    for ip in pod_ips.split_whitespace() {
        assert!(ns.contains(ip), "headless answer lacks {ip}: {ns}");
    }

    // ExternalName inside the cluster: nslookup shows the CNAME, and wget follows it.
    let (_, ns) = up.kubectl(
        &[
            "exec",
            "client",
            "--",
            "nslookup",
            "alias.default.svc.cluster.local",
        ],
        None,
    );
    assert!(
        ns.contains("canonical name = web.default.svc.cluster.local"),
        "{ns}"
    );
    let via_alias = up.hits("http://alias/", 5);
    assert_eq!(via_alias.values().sum::<usize>(), 5, "{via_alias:?}");

    // kubectl expose, then sessionAffinity ClientIP pins the client to one pod.
    up.must(
        &[
            "expose",
            "deployment",
            "web",
            "--name",
            "web-x",
            "--port",
            "8081",
            "--target-port",
            "80",
        ],
        None,
    );
    up.wait_for("exposed web-x spreads", Duration::from_secs(60), || {
        (up.hits("http://web-x:8081/", 20).len() >= 2).then_some(())
    });
    up.must(
        &[
            "patch",
            "svc",
            "web-x",
            "-p",
            r#"{"spec":{"sessionAffinity":"ClientIP"}}"#,
        ],
        None,
    );
    let pinned = up.wait_for("affinity pins the client", Duration::from_secs(60), || {
        let m = up.hits("http://web-x:8081/", 20);
        (m.len() == 1 && m.values().sum::<usize>() == 20).then_some(m)
    });
    // Stays pinned on later requests.
    assert_eq!(up.hits("http://web-x:8081/", 20), pinned);

    // A pod that stops being Ready leaves the rotation, and comes back.
    let p = spread.keys().next().expect("a pod").clone();
    up.must(&["exec", &p, "--", "rm", "/tmp/ready"], None);
    up.wait_for("not-Ready pod leaves", Duration::from_secs(60), || {
        let m = up.hits("http://web/", 30);
        (!m.contains_key(&p) && m.len() == 2).then_some(())
    });
    up.must(&["exec", &p, "--", "touch", "/tmp/ready"], None);
    up.wait_for(
        "Ready again, back in rotation",
        Duration::from_secs(60),
        || up.hits("http://web/", 30).contains_key(&p).then_some(()),
    );

    // A selector-less Service with a manual EndpointSlice, to a listener pod in
    // another namespace.
    up.must(&["create", "namespace", "other"], None);
    up.must(
        &[
            "-n",
            "other",
            "run",
            "lst",
            &format!("--image={IMAGE}"),
            "--image-pull-policy=IfNotPresent",
            "--restart=Never",
            "--command",
            "--",
            "sh",
            "-c",
            "mkdir -p /tmp/w && echo manual-ok > /tmp/w/index.html && exec httpd -f -p 9090 -h /tmp/w",
        ],
        None,
    );
    let lst_ip = up.wait_for("listener pod IP", long, || {
        let (c, _) = up.kubectl(
            &[
                "-n",
                "other",
                "wait",
                "--for=condition=Ready",
                "pod/lst",
                "--timeout=2s",
            ],
            None,
        );
        let (_, ip) = up.kubectl(
            &[
                "-n",
                "other",
                "get",
                "pod",
                "lst",
                "-o",
                "jsonpath={.status.podIP}",
            ],
            None,
        );
        (c && !ip.trim().is_empty()).then(|| ip.trim().to_string())
    });
    let manual = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: manual}}
spec: {{ports: [{{name: http, port: 80, targetPort: 9090}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: manual-1, labels: {{kubernetes.io/service-name: manual}}}}
addressType: IPv4
ports: [{{name: http, port: 9090, protocol: TCP}}]
endpoints: [{{addresses: ["{lst_ip}"], conditions: {{ready: true}}}}]
"#
    );
    up.must(&["apply", "-f", "-"], Some(&manual));
    up.wait_for("manual endpoints answer", Duration::from_secs(60), || {
        (up.hits("http://manual/", 3).get("manual-ok") == Some(&3)).then_some(())
    });

    // Deleting the Services removes their rules.
    let cip = up.must(
        &["get", "svc", "web-x", "-o", "jsonpath={.spec.clusterIP}"],
        None,
    );
    let cip = cip.trim().to_string();
    assert!(
        nft_ruleset().contains(&format!("{cip} ")),
        "web-x {cip} not in the ruleset"
    );
    up.must(&["delete", "svc", "web-x", "manual"], None);
    up.wait_for("rules gone after delete", Duration::from_secs(30), || {
        (!nft_ruleset().contains(&format!("{cip} "))).then_some(())
    });

    // Stopping hull up removes the proxy's tables.
    up.stop();
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft");
    let tables = String::from_utf8_lossy(&tables.stdout).into_owned();
    assert!(!tables.contains("hull-proxy"), "left: {tables}");
    drop(up);
    drop(scratch);
}
