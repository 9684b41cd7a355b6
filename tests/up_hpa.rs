//! The HorizontalPodAutoscaler end to end on `hull up`: a Deployment whose container
//! requests 100m CPU and burns a core is autoscaled by `kubectl autoscale
//! --cpu-percent=50 --min=1 --max=3`; the metrics come the real way (the agent's kubelet
//! `/stats/summary` from the CRI's container stats, turned into metrics.k8s.io by the API
//! server), the Deployment grows to 3 and `kubectl get hpa` shows the utilization; once
//! the burners are told to stop (a file each creates with `kubectl exec`) it shrinks back
//! to 1 (the HPA's scale-down stabilization window is 0). The image comes from a real
//! registry on loopback. Nothing is left behind after Ctrl-C.

#[path = "../runtime/tests/image_support/mod.rs"]
mod image_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use image_support::{Registry, Scratch, free_port, mkimage, mounts_under};

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

/// A running `hull up`, stopped with SIGINT (Ctrl-C) on drop if the test did not.
struct Up {
    child: Option<Child>,
    data: PathBuf,
    log: PathBuf,
}

impl Up {
    fn start(data: &Path, log: &Path, api_port: u16, kubelet_port: u16) -> Up {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_hull"))
            .args(["up", "--data-dir"])
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{api_port}")])
            .args(["--kubelet-port", &kubelet_port.to_string()])
            .args(["--node-name", "up-test-node"])
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn hull up");
        Up {
            child: Some(child),
            data: data.to_path_buf(),
            log: log.to_path_buf(),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let o = Command::new(kubectl_bin())
            .env("KUBECONFIG", self.data.join("admin.kubeconfig"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl");
        let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&o.stderr));
        (o.status.success(), s)
    }

    fn kubectl_stdin(&self, args: &[&str], input: &str) -> (bool, String) {
        use std::io::Write;
        let mut c = Command::new(kubectl_bin())
            .env("KUBECONFIG", self.data.join("admin.kubeconfig"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        c.stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        let o = c.wait_with_output().expect("kubectl output");
        let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&o.stderr));
        (o.status.success(), s)
    }

    /// Polls `f` until it returns Some, for at most `limit` (not a timing assertion:
    /// a bound so a broken cluster fails the test instead of hanging it).
    fn wait_for<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > limit {
                panic!(
                    "{what}: not reached within {limit:?}\nhull up log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = c.kill();
            let _ = c.wait();
            panic!(
                "hull up did not stop within 60 s of SIGINT\n{}",
                self.log_tail()
            );
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
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

/// What a drained node must not have left: mounts under the data dir or hull's runtime
/// dir for it, network namespaces, nftables tables of the proxy.
fn leftovers(data: &Path) -> Vec<String> {
    let mut v = Vec::new();
    v.extend(mounts_under(data).into_iter().map(|m| format!("mount {m}")));
    let rt = hull_runtime::image::bundle::runtime_dir(data);
    v.extend(mounts_under(&rt).into_iter().map(|m| format!("mount {m}")));
    // Network namespaces of sandboxes are bind mounts (caught above) under the runtime dir.
    let o = Command::new("nft").args(["list", "tables"]).output();
    if let Ok(o) = o {
        for t in String::from_utf8_lossy(&o.stdout).lines() {
            if t.contains("hull-proxy") {
                v.push(format!("nft {t}"));
            }
        }
    }
    v
}

fn burner_yaml(image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: burn}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: burn}}}}
  template:
    metadata: {{labels: {{app: burn}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: burn
        image: {image}
        imagePullPolicy: IfNotPresent
        resources: {{requests: {{cpu: 100m}}}}
        command: [sh, -c, 'while [ ! -e /tmp/stop ]; do :; done; exec sleep 3600']
"#
    )
}

fn spec_replicas(up: &Up) -> Option<i64> {
    let (ok, out) = up.kubectl(&["get", "deploy", "burn", "-o", "jsonpath={.spec.replicas}"]);
    ok.then(|| out.trim().parse().ok()).flatten()
}

fn running_pods(up: &Up) -> Vec<String> {
    let (ok, out) = up.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=burn",
        "--field-selector=status.phase=Running",
        "-o",
        "name",
    ]);
    if !ok {
        return Vec::new();
    }
    out.lines()
        .filter(|l| l.starts_with("pod/"))
        .map(str::to_string)
        .collect()
}

#[test]
fn cpu_burners_scale_up_to_max_then_back_down() {
    let s = Scratch::new("up-hpa");
    let data = s.path("data");
    std::fs::create_dir_all(&data).expect("data dir");
    mkimage(&s.path("layout"), "busybox", "hpa");
    let registry = Registry::start(&s.path("registry"));
    registry.push(&s.path("layout"), "hpa", "test/busybox:hpa", &[]);
    let image = format!("{}/test/busybox:hpa", registry.host);

    let api_port = free_port();
    let kubelet_port = free_port();
    let mut up = Up::start(&data, &s.path("up.log"), api_port, kubelet_port);
    up.wait_for("node Ready", Duration::from_secs(120), || {
        let (ok, out) = up.kubectl(&["get", "nodes", "--no-headers"]);
        (ok && out.contains("up-test-node") && out.split_whitespace().nth(1) == Some("Ready"))
            .then_some(())
    });
    let (ok, out) = up.kubectl_stdin(&["apply", "-f", "-"], &burner_yaml(&image));
    assert!(ok, "kubectl apply: {out}");
    up.wait_for("the first burner running", Duration::from_secs(120), || {
        (running_pods(&up).len() == 1).then_some(())
    });

    let (ok, out) = up.kubectl(&[
        "autoscale",
        "deployment",
        "burn",
        "--cpu-percent=50",
        "--min=1",
        "--max=3",
    ]);
    assert!(ok, "kubectl autoscale: {out}");
    let (ok, out) = up.kubectl(&[
        "patch",
        "hpa",
        "burn",
        "--type=merge",
        "-p",
        r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":0}}}}"#,
    ]);
    assert!(ok, "kubectl patch hpa: {out}");

    // A busy loop uses far more than 50% of 100m: the HPA goes to max.
    up.wait_for("scaled up to 3", Duration::from_secs(150), || {
        (spec_replicas(&up) == Some(3)).then_some(())
    });
    let table = up.wait_for(
        "kubectl get hpa shows the metric",
        Duration::from_secs(60),
        || {
            let (ok, out) = up.kubectl(&["get", "hpa", "burn", "--no-headers"]);
            // TARGETS is "cpu: <current>%/50%".
            let current: Option<u64> = out
                .split_once("cpu: ")
                .and_then(|(_, t)| t.split('%').next())
                .and_then(|n| n.trim().parse().ok());
            (ok && out.contains("/50%") && current.is_some_and(|c| c > 50)).then_some(out)
        },
    );
    assert!(table.contains("Deployment/burn"), "{table}");
    let (_, events) = up.kubectl(&[
        "get",
        "events",
        "--field-selector=involvedObject.kind=HorizontalPodAutoscaler",
    ]);
    assert!(
        events.contains("SuccessfulRescale") && events.contains("above target"),
        "{events}"
    );
    up.wait_for("3 burners running", Duration::from_secs(120), || {
        (running_pods(&up).len() == 3).then_some(())
    });

    // Stop the burn in every pod: usage falls to ~0 and the HPA goes back to min.
    up.wait_for("every burner stopped", Duration::from_secs(60), || {
        let pods = running_pods(&up);
        let all = pods
            .iter()
            .all(|p| up.kubectl(&["exec", p, "--", "touch", "/tmp/stop"]).0);
        (all && !pods.is_empty()).then_some(())
    });
    up.wait_for("scaled down to 1", Duration::from_secs(150), || {
        (spec_replicas(&up) == Some(1)).then_some(())
    });
    let (_, events) = up.kubectl(&["get", "events"]);
    assert!(events.contains("All metrics below target"), "{events}");

    up.stop();
    let left = leftovers(&data);
    assert!(left.is_empty(), "left after hull up stopped: {left:?}");
}
