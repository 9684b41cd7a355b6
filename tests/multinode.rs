//! Two nodes: `hull up` on the first, `hull agent` joining with a bootstrap token on the
//! second, each node a network namespace of its own (its own state dirs and processes),
//! joined by a bridge in a namespace the test owns — as two VMs on one network.
//!
//! Asserts: `hull token create --print-join-command` gives a command that joins (CA by
//! pin, client certificate through an auto-approved CSR, kubelet serving certificate
//! through a kubelet-serving CSR); a DaemonSet runs one pod on each node; a pod on one
//! node reaches a pod on the other by its IP (routes to each other's pod subnets); the
//! ClusterIP Service is answered by the pods of both nodes from either node; the second
//! node's cluster DNS answers; `kubectl logs`/`exec` reach the joined node's kubelet API.
//! Stopping leaves no pod route, mount or proxy table behind.

#[path = "../runtime/tests/image_support/mod.rs"]
mod image_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use image_support::{Scratch, mkimage, mounts_under};

const IMAGE: &str = "localhost/test/busybox:mn";

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

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs `cmd` in the node's network namespace only (nsenter, not `ip netns exec`, which
/// would also give it a private mount namespace and hide its mounts from the leak check).
fn in_ns(ns: &str, cmd: &str, args: &[&str]) -> (bool, String) {
    let o = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["--", cmd])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("ip netns exec");
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), s)
}

/// The namespaces and the bridge; removed on drop (after the processes in them).
struct Net {
    br: String,
    nodes: Vec<String>,
}

impl Net {
    fn new(tag: &str, subnet: &str, n: usize) -> Net {
        let br = format!("{tag}br");
        ip(&["netns", "add", &br]);
        let mut net = Net {
            br: br.clone(),
            nodes: Vec::new(),
        };
        in_ns(&br, "ip", &["link", "add", "br0", "type", "bridge"]);
        in_ns(&br, "ip", &["link", "set", "br0", "up"]);
        for i in 0..n {
            let ns = format!("{tag}n{i}");
            ip(&["netns", "add", &ns]);
            net.nodes.push(ns.clone());
            let host_end = format!("{tag}v{i}");
            ip(&[
                "link", "add", &host_end, "netns", &br, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            in_ns(
                &br,
                "ip",
                &["link", "set", &host_end, "master", "br0", "up"],
            );
            let addr = format!("{subnet}.{}/24", 11 + i);
            in_ns(&ns, "ip", &["addr", "add", &addr, "dev", "eth0"]);
            in_ns(&ns, "ip", &["link", "set", "eth0", "up"]);
            in_ns(&ns, "ip", &["link", "set", "lo", "up"]);
            // As on a VM: a default route (here it leads nowhere: the bridge namespace
            // has no uplink). Without one, a node cannot even start a connection to a
            // ClusterIP, since routing comes before the proxy's DNAT on output.
            in_ns(&ns, "ip", &["route", "add", "default", "dev", "eth0"]);
        }
        net
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain([&self.br]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A `hull` process inside a node's namespace, stopped with SIGINT on drop.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn start(ns: &str, args: &[&str], log: &Path) -> Proc {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .args(["--", env!("CARGO_BIN_EXE_hull")])
            .args(args)
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn hull");
        Proc {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    /// SIGINT, then waits (SIGKILL after 60 s); true if it stopped by itself.
    fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        // nsenter execs the command: the child's PID is hull's.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Cluster {
    ns: String,
    kubeconfig: PathBuf,
    logs: Vec<(String, PathBuf)>,
}

impl Cluster {
    fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let kc = self.kubeconfig.to_string_lossy().into_owned();
        let mut all = vec!["--kubeconfig", kc.as_str()];
        all.extend_from_slice(args);
        in_ns(&self.ns, &kubectl_bin().to_string_lossy(), &all)
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for (name, p) in &self.logs {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s += &format!(
                "--- {name}\n{}\n",
                lines[lines.len().saturating_sub(25)..].join("\n")
            );
        }
        s
    }

    /// Polls `f` until Some, for at most `limit` (a bound, not a timing assertion).
    fn wait_for<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > limit {
                panic!("{what}: not reached within {limit:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn apply(&self, yaml: &str) {
        let path = std::env::temp_dir().join(format!("hull-mn-{}.yaml", std::process::id()));
        std::fs::write(&path, yaml).expect("write manifest");
        let (ok, out) = self.kubectl(&["apply", "-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        assert!(ok, "kubectl apply: {out}");
    }
}

fn manifests() -> String {
    format!(
        r##"apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: web}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: web
        image: {IMAGE}
        imagePullPolicy: Never
        command: [sh, -c, 'mkdir -p /tmp/w/cgi-bin && hostname > /tmp/w/index.html && printf "#!/bin/sh\necho Content-Type: text/plain\necho\necho \$REMOTE_ADDR\n" > /tmp/w/cgi-bin/ip && chmod +x /tmp/w/cgi-bin/ip && echo serving && exec httpd -f -p 80 -h /tmp/w']
        readinessProbe: {{tcpSocket: {{port: 80}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: 80}}]}}
"##
    )
}

/// `GET /` bodies from `ns`, `n` times over fresh connections (through `nc`, which the
/// test host has in its busybox-static: `busybox nc`).
fn bodies(ns: &str, addr: &str, n: usize) -> BTreeSet<String> {
    let script = format!(
        "for i in $(seq {n}); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 2 {addr} 80 | tail -1; done"
    );
    let (_, out) = in_ns(ns, "sh", &["-c", &script]);
    out.lines()
        .filter(|l| l.starts_with("web-"))
        .map(str::to_string)
        .collect()
}

#[test]
fn second_node_joins_with_a_token_and_traffic_crosses_nodes() {
    let s = Scratch::new("multinode");
    let tag = format!("hmn{}", std::process::id() % 100_000);
    let subnet = "10.250.77";
    let net = Net::new(&tag, subnet, 2);
    let (a, b) = (net.nodes[0].clone(), net.nodes[1].clone());
    let (ip_a, ip_b) = (format!("{subnet}.11"), format!("{subnet}.12"));
    let (data_a, data_b) = (s.path("node-a"), s.path("node-b"));
    mkimage(&s.path("layout"), "busybox", "mn");
    for d in [&data_a, &data_b] {
        std::fs::create_dir_all(d).expect("data dir");
        let st = Command::new(env!("CARGO_BIN_EXE_hull"))
            .args(["image", "import", "--data-dir"])
            .arg(d)
            .args(["--name", "localhost/test/busybox"])
            .arg(s.path("layout"))
            .status()
            .expect("hull image import");
        assert!(st.success(), "image import into {}", d.display());
    }

    let da = data_a.to_string_lossy().into_owned();
    let db = data_b.to_string_lossy().into_owned();
    let mut up = Proc::start(
        &a,
        &[
            "up",
            "--data-dir",
            &da,
            "--node-name",
            "node-a",
            "--node-ip",
            &ip_a,
            "--listen",
            "0.0.0.0:6443",
        ],
        &s.path("up.log"),
    );
    let mut c = Cluster {
        ns: a.clone(),
        kubeconfig: data_a.join("admin.kubeconfig"),
        logs: vec![("hull up (node-a)".into(), s.path("up.log"))],
    };
    c.wait_for("node-a Ready", Duration::from_secs(120), || {
        let (ok, out) = c.kubectl(&["get", "node", "node-a", "--no-headers"]);
        (ok && out.split_whitespace().nth(1) == Some("Ready")).then_some(())
    });

    // The join command, as an operator would copy it to the second machine.
    let (ok, join) = in_ns(
        &a,
        env!("CARGO_BIN_EXE_hull"),
        &["token", "create", "--data-dir", &da, "--print-join-command"],
    );
    assert!(ok, "hull token create: {join}");
    let words: Vec<&str> = join.split_whitespace().collect();
    assert_eq!(&words[..2], ["hull", "agent"], "{join}");
    let flag = |f: &str| {
        words
            .iter()
            .position(|w| *w == f)
            .and_then(|i| words.get(i + 1))
            .map(|w| w.to_string())
            .unwrap_or_else(|| panic!("{f} missing from the join command: {join}"))
    };
    assert_eq!(flag("--server"), format!("https://{ip_a}:6443"), "{join}");
    assert!(flag("--discovery-token-ca-cert-hash").starts_with("sha256:"));
    let mut args: Vec<String> = words[1..].iter().map(|w| w.to_string()).collect();
    args.extend(
        [
            "--data-dir",
            &db,
            "--node-name",
            "node-b",
            "--node-ip",
            &ip_b,
        ]
        .iter()
        .map(|w| w.to_string()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Proc::start(&b, &args, &s.path("agent.log"));
    c.logs
        .push(("hull agent (node-b)".into(), s.path("agent.log")));

    c.wait_for("node-b Ready", Duration::from_secs(120), || {
        let (ok, out) = c.kubectl(&["get", "node", "node-b", "--no-headers"]);
        (ok && out.split_whitespace().nth(1) == Some("Ready")).then_some(())
    });
    // Both certificate requests were approved and issued.
    let (_, csrs) = c.kubectl(&[
        "get",
        "csr",
        "-o",
        "jsonpath={range .items[*]}{.spec.signerName} {.spec.username} {.status.conditions[*].type} {.status.certificate}{\"\\n\"}{end}",
    ]);
    for (signer, requestor) in [
        (
            "kubernetes.io/kube-apiserver-client-kubelet",
            "system:bootstrap:",
        ),
        ("kubernetes.io/kubelet-serving", "system:node:node-b"),
    ] {
        assert!(
            csrs.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() == 4 && f[0] == signer && f[1].starts_with(requestor) && f[2] == "Approved"
            }),
            "{signer} request by {requestor} not approved and issued:\n{csrs}"
        );
    }
    // The joined node's credentials are its own: it may not touch the other node.
    let (denied, out) = in_ns(
        &b,
        &kubectl_bin().to_string_lossy(),
        &[
            "--kubeconfig",
            &data_b.join("pki/kubelet.kubeconfig").to_string_lossy(),
            "label",
            "node",
            "node-a",
            "x=y",
        ],
    );
    assert!(!denied, "node-b relabelled node-a: {out}");

    c.apply(&manifests());
    let pods: Vec<(String, String, String)> =
        c.wait_for("a ready web pod on each node", Duration::from_secs(180), || {
            let (ok, out) = c.kubectl(&[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ]);
            let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
            let ready: Vec<(String, String, String)> = rows
                .iter()
                .filter(|r| r.len() == 4 && r[3] == "True")
                .map(|r| (r[0].to_string(), r[1].to_string(), r[2].to_string()))
                .collect();
            let nodes: BTreeSet<&str> = ready.iter().map(|p| p.1.as_str()).collect();
            (ok && ready.len() == 2 && nodes.len() == 2).then_some(ready)
        });
    let on = |node: &str| {
        pods.iter()
            .find(|p| p.1 == node)
            .cloned()
            .expect("a pod on the node")
    };
    let (pod_a, pod_b) = (on("node-a"), on("node-b"));

    // Pod to pod across nodes, by pod IP, both ways.
    for (from, to) in [(&pod_a, &pod_b), (&pod_b, &pod_a)] {
        let body = c.wait_for(
            &format!("{} reaches {} at {}", from.0, to.0, to.2),
            Duration::from_secs(60),
            || {
                let (ok, out) = c.kubectl(&[
                    "exec",
                    &from.0,
                    "--",
                    "sh",
                    "-c",
                    &format!(
                        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {} 80 | tail -1",
                        to.2
                    ),
                ]);
                (ok && out.trim() == to.0).then_some(out)
            },
        );
        assert_eq!(body.trim(), to.0);
        // Without NAT: the pod on the other node sees the client pod's own address
        // (the CGI prints busybox httpd's REMOTE_ADDR).
        let (ok, seen) = c.kubectl(&[
            "exec",
            &from.0,
            "--",
            "sh",
            "-c",
            &format!(
                "printf 'GET /cgi-bin/ip HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {} 80 | tail -1",
                to.2
            ),
        ]);
        assert!(
            ok && seen
                .trim()
                .trim_matches(|c| c == '[' || c == ']')
                .trim_start_matches("::ffff:")
                == from.2,
            "{} -> {}: the server saw {seen:?}, not the client pod's {}",
            from.0,
            to.0,
            from.2
        );
    }

    // The ClusterIP from each node's own namespace reaches the pods of both nodes.
    let (ok, cip) = c.kubectl(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(ok, "{cip}");
    for ns in [&a, &b] {
        let seen = c.wait_for(
            &format!("ClusterIP {cip} from {ns} spreads over both nodes"),
            Duration::from_secs(60),
            || {
                let seen = bodies(ns, &cip, 20);
                (seen.len() == 2).then_some(seen)
            },
        );
        assert_eq!(
            seen,
            BTreeSet::from([pod_a.0.clone(), pod_b.0.clone()]),
            "from {ns}"
        );
    }

    // The joined node's DNS serves its pods; logs and exec go through its kubelet API.
    let (ok, out) = c.kubectl(&[
        "exec",
        &pod_b.0,
        "--",
        "nslookup",
        "web.default.svc.cluster.local",
    ]);
    assert!(ok && out.contains(cip.trim()), "nslookup on node-b: {out}");
    let (ok, out) = c.kubectl(&["logs", &pod_b.0]);
    assert!(
        ok && out.contains("serving"),
        "kubectl logs from node-b: {out}"
    );

    // Tear down: pods first (the agents stop them), then the agent, then hull up.
    let (ok, out) = c.kubectl(&["delete", "daemonset", "web", "--wait=false"]);
    assert!(ok, "{out}");
    c.wait_for("web pods gone", Duration::from_secs(120), || {
        let (ok, out) = c.kubectl(&["get", "pods", "-l", "app=web", "--no-headers"]);
        (ok && out.trim().is_empty() || out.contains("No resources")).then_some(())
    });
    assert!(
        agent.stop(),
        "hull agent did not stop on SIGINT\n{}",
        agent.tail()
    );
    let (_, routes_b) = in_ns(&b, "ip", &["route", "show", "proto", "104"]);
    assert!(
        routes_b.trim().is_empty(),
        "pod routes left on node-b: {routes_b}"
    );
    let (_, tables_b) = in_ns(&b, "nft", &["list", "tables"]);
    assert!(
        !tables_b.contains("hull-proxy"),
        "proxy tables left on node-b: {tables_b}"
    );
    assert!(up.stop(), "hull up did not stop on SIGINT\n{}", up.tail());
    let (_, routes_a) = in_ns(&a, "ip", &["route", "show", "proto", "104"]);
    assert!(
        routes_a.trim().is_empty(),
        "pod routes left on node-a: {routes_a}"
    );
    let left: Vec<String> = [&data_a, &data_b]
        .iter()
        .flat_map(|d| {
            let mut m = mounts_under(d);
            m.extend(mounts_under(&hull_runtime::image::bundle::runtime_dir(d)));
            m
        })
        .collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    drop(net);
}
