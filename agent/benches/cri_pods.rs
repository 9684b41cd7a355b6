//! Pod start and teardown, `hull cri` vs Debian's containerd (runc, the reference CNI
//! bridge plugin, a pause image built locally), driven through the same gRPC client;
//! and the per-pod memory the runtime adds (hull: monitor + pause; containerd:
//! containerd-shim-runc-v2 + pause). Not a test: `cargo bench -p hull-agent --bench
//! cri_pods` as root, after `cargo build --release -p hull`. Needs containerd,
//! docker-registry, skopeo, busybox-static and gcc (the images come from
//! agent/tools/critest/images.py). Env: PODS (default 10), HULL_BIN.
//!
//! One pod = RunPodSandbox + CreateContainer + StartContainer (image present; the
//! container runs `sleep`); teardown = StopPodSandbox + RemovePodSandbox. Prints
//! median/total times, hull/containerd ratios (target ≤ 0.5) and memory (RSS and PSS
//! per pod; target ≤ 0.2).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint};

const REG: &str = "127.0.0.1:5072";
const IMAGE: &str = "127.0.0.1:5072/hull-bench/busybox:1";

type Rt = RuntimeServiceClient<Channel>;

/// Children killed by PID (SIGTERM, then SIGKILL) when the bench ends, in reverse order.
#[derive(Default)]
struct Procs(Vec<(String, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        while let Some((what, mut c)) = self.0.pop() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = c.try_wait() {
                eprintln!("{what} ignored SIGTERM; SIGKILL");
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn sh(cmd: &mut Command) {
    let st = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(st.success(), "{cmd:?}: {st}");
}

fn spawn(procs: &mut Procs, what: &str, cmd: &mut Command, log: &Path) {
    let f = std::fs::File::create(log).unwrap();
    let c = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    procs.0.push((what.into(), c));
}

fn wait_for(p: &Path) {
    let t = Instant::now();
    while !p.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{} never appeared",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn connect(sock: &Path) -> (Rt, ImageServiceClient<Channel>) {
    let sock = sock.to_path_buf();
    let ch = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let s = sock.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(s).await?))
            }
        }))
        .await
        .unwrap();
    (
        RuntimeServiceClient::new(ch.clone()),
        ImageServiceClient::new(ch),
    )
}

/// Registry with the bench's busybox and the pause image containerd needs.
fn images(w: &Path, procs: &mut Procs) {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/critest");
    let bin = w.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for b in ["webserver", "nonewprivs", "pause"] {
        sh(Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(bin.join(b))
            .arg(tools.join(format!("{b}.c"))));
    }
    let out = Command::new("python3")
        .arg(tools.join("images.py"))
        .arg(w.join("images"))
        .arg(&bin)
        .output()
        .unwrap();
    assert!(out.status.success(), "images.py failed");
    std::fs::write(
        w.join("registry.yml"),
        format!(
            "version: 0.1\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: {REG}}}\nlog: {{level: error}}\n",
            w.join("registry").display()
        ),
    )
    .unwrap();
    spawn(
        procs,
        "docker-registry",
        Command::new("docker-registry")
            .arg("serve")
            .arg(w.join("registry.yml")),
        &w.join("registry.log"),
    );
    let t = Instant::now();
    while std::net::TcpStream::connect(REG).is_err() {
        assert!(t.elapsed() < Duration::from_secs(30), "registry not up");
        std::thread::sleep(Duration::from_millis(50));
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [layout, tag, path] = f[..]
            && path.starts_with("hull-bench/")
        {
            sh(Command::new("skopeo")
                .args(["copy", "-q", "--dest-tls-verify=false"])
                .arg(format!("oci:{layout}:{tag}"))
                .arg(format!("docker://{REG}/{path}"))
                .stdout(Stdio::null()));
        }
    }
}

fn start_hull(w: &Path, procs: &mut Procs) -> PathBuf {
    let d = w.join("hull");
    let conf = d.join("net.d");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("10-bench.conflist"),
        serde_json::json!({"cniVersion": "1.0.0", "name": "hullbench", "plugins": [{
            "type": "hull-bridge", "bridge": "hullbch0", "isGateway": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.73.0/24"}]],
                     "dataDir": d.join("ipam")}}]})
        .to_string(),
    )
    .unwrap();
    let hull = std::env::var_os("HULL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap();
            exe.parent().and_then(|p| p.parent()).unwrap().join("hull")
        });
    let sock = w.join("hull.sock");
    spawn(
        procs,
        "hull cri",
        Command::new(hull)
            .args(["cri", "--data-dir"])
            .arg(&d)
            .arg("--socket")
            .arg(&sock)
            .arg("--cni-conf-dir")
            .arg(&conf),
        &w.join("hull.log"),
    );
    wait_for(&sock);
    sock
}

fn start_containerd(w: &Path, procs: &mut Procs) -> PathBuf {
    let d = w.join("containerd");
    let conf = d.join("net.d");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("10-bench.conflist"),
        serde_json::json!({"cniVersion": "1.0.0", "name": "ctrbench", "plugins": [
            {"type": "bridge", "bridge": "ctrbch0", "isGateway": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.74.0/24"}]],
                      "dataDir": d.join("ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": true}}]})
        .to_string(),
    )
    .unwrap();
    let sock = w.join("containerd.sock");
    let cfg = format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{s}"
[ttrpc]
  address = "{s}.ttrpc"
[debug]
  address = "{s}.debug"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{REG}/hull-bench/pause:1"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{c}"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{REG}"]
    endpoint = ["http://{REG}"]
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#,
        d = d.display(),
        s = sock.display(),
        c = conf.display()
    );
    std::fs::write(d.join("config.toml"), cfg).unwrap();
    spawn(
        procs,
        "containerd",
        Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml")),
        &w.join("containerd.log"),
    );
    wait_for(&sock);
    sock
}

fn pod_config(rt: &str, tag: &str, i: usize, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("bench-{tag}-{i}"),
            namespace: "bench".into(),
            uid: format!("bench-{rt}-{tag}-{i}-{}", std::process::id()),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

/// A unique `sleep` argument per pod, so the container's process can be found.
fn sleep_arg(rt: usize, tag: usize, i: usize) -> String {
    format!("{}", 3_000_000 + rt * 100_000 + tag * 10_000 + i)
}

async fn start_pod(rt: &mut Rt, cfg: PodSandboxConfig, sleep: String) -> String {
    let id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let c = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: id.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "sleep".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: IMAGE.into(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), sleep],
                log_path: "sleep.log".into(),
                linux: Some(LinuxContainerConfig::default()),
                ..Default::default()
            }),
            sandbox_config: Some(cfg),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest { container_id: c })
        .await
        .unwrap();
    id
}

async fn stop_pod(rt: &mut Rt, id: String) {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
}

fn ppid(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
}

/// (RSS, PSS) in KiB.
fn mem(pid: i32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

fn pids_with_cmdline(cmdline: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == cmdline.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The runtime's own processes for one pod (not the container's): hull's monitor (the
/// container's parent) and pause; containerd's shim (the container's parent) and its
/// other child, the pause container.
fn overhead_pids(
    rt: &str,
    hull_data: &Path,
    hull_sock: &Path,
    sandbox: &str,
    sleep: &str,
) -> Vec<i32> {
    let init = pids_with_cmdline(&format!("sleep\0{sleep}\0"));
    let Some(&init) = init.first() else {
        return Vec::new();
    };
    let Some(parent) = ppid(init) else {
        return Vec::new();
    };
    let mut out = vec![parent];
    if rt == "hull" {
        let cfg = hull_agent::cri::Config::new(hull_data, hull_sock);
        if let Ok(r) = hull_agent::cri::sandbox::load(&cfg, sandbox) {
            out.push(r.pause_pid);
        }
    } else {
        out.extend(children(parent).into_iter().filter(|&p| p != init));
    }
    out
}

struct Measured {
    seq_start: Vec<Duration>,
    seq_stop: Vec<Duration>,
    conc_start: Duration,
    conc_stop: Duration,
    rss_kib: f64,
    pss_kib: f64,
    /// The container's parent alone (hull: its monitor; containerd: its shim).
    monitor_rss_kib: f64,
    procs_per_pod: f64,
}

async fn run(
    rt_name: &str,
    ri: usize,
    sock: &Path,
    hull_data: &Path,
    w: &Path,
    n: usize,
) -> Measured {
    let (mut rt, mut img) = connect(sock).await;
    img.pull_image(PullImageRequest {
        image: Some(ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let logs = w.join(format!("logs-{rt_name}"));
    std::fs::create_dir_all(&logs).unwrap();
    // Warm-up: the first pod pays one-time costs (bridge creation, caches).
    let id = start_pod(
        &mut rt,
        pod_config(rt_name, "warm", 0, &logs),
        sleep_arg(ri, 0, 0),
    )
    .await;
    stop_pod(&mut rt, id).await;

    let mut seq_start = Vec::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let id = start_pod(
            &mut rt,
            pod_config(rt_name, "seq", i, &logs),
            sleep_arg(ri, 1, i),
        )
        .await;
        seq_start.push(t.elapsed());
        ids.push(id);
    }
    // Memory with n pods running.
    let (mut rss, mut pss, mut count, mut mon) = (0u64, 0u64, 0usize, 0u64);
    for (i, id) in ids.iter().enumerate() {
        let pids = overhead_pids(rt_name, hull_data, sock, id, &sleep_arg(ri, 1, i));
        for (k, p) in pids.into_iter().enumerate() {
            let (r, s) = mem(p);
            if k == 0 {
                mon += r;
            }
            rss += r;
            pss += s;
            count += 1;
        }
    }
    let mut seq_stop = Vec::new();
    for id in ids {
        let t = Instant::now();
        stop_pod(&mut rt, id).await;
        seq_stop.push(t.elapsed());
    }

    let t = Instant::now();
    let starts = (0..n).map(|i| {
        let mut rt = rt.clone();
        let cfg = pod_config(rt_name, "conc", i, &logs);
        let sleep = sleep_arg(ri, 2, i);
        tokio::spawn(async move { start_pod(&mut rt, cfg, sleep).await })
    });
    let ids: Vec<String> = futures::future::join_all(starts)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let conc_start = t.elapsed();
    let t = Instant::now();
    let stops = ids.into_iter().map(|id| {
        let mut rt = rt.clone();
        tokio::spawn(async move { stop_pod(&mut rt, id).await })
    });
    for r in futures::future::join_all(stops).await {
        r.unwrap();
    }
    let conc_stop = t.elapsed();
    Measured {
        seq_start,
        seq_stop,
        conc_start,
        conc_stop,
        rss_kib: rss as f64 / n as f64,
        pss_kib: pss as f64 / n as f64,
        monitor_rss_kib: mon as f64 / n as f64,
        procs_per_pod: count as f64 / n as f64,
    }
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists; nothing to list.
    }
    let n: usize = std::env::var("PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let w = PathBuf::from(format!("/var/tmp/hull-bench-cri-{}", std::process::id()));
    std::fs::create_dir_all(&w).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut procs = Procs::default();
    images(&w, &mut procs);
    let hull_sock = start_hull(&w, &mut procs);
    let ctr_sock = start_containerd(&w, &mut procs);
    let hull_data = w.join("hull");
    println!("cri_pods: {n} pods, load average before: {}", load());
    let (h, c) = rt.block_on(async {
        let h = run("hull", 1, &hull_sock, &hull_data, &w, n).await;
        let c = run("containerd", 2, &ctr_sock, &hull_data, &w, n).await;
        (h, c)
    });
    let row = |what: &str, a: f64, b: f64, unit: &str| {
        println!(
            "  {what:<34} hull {a:>9.1} {unit}   containerd {b:>9.1} {unit}   ratio {:.2}",
            a / b
        )
    };
    row(
        "pod start, sequential (median)",
        ms(median(&h.seq_start)),
        ms(median(&c.seq_start)),
        "ms",
    );
    row(
        "pod teardown, sequential (median)",
        ms(median(&h.seq_stop)),
        ms(median(&c.seq_stop)),
        "ms",
    );
    row(
        &format!("{n} pods started concurrently"),
        ms(h.conc_start),
        ms(c.conc_start),
        "ms",
    );
    row(
        &format!("{n} pods torn down concurrently"),
        ms(h.conc_stop),
        ms(c.conc_stop),
        "ms",
    );
    row("memory per pod (RSS)", h.rss_kib, c.rss_kib, "KiB");
    row("memory per pod (PSS)", h.pss_kib, c.pss_kib, "KiB");
    row(
        "container monitor alone (RSS)",
        h.monitor_rss_kib,
        c.monitor_rss_kib,
        "KiB",
    );
    println!(
        "  runtime processes per pod: hull {:.1} (monitor + pause), containerd {:.1} (shim + pause)",
        h.procs_per_pod, c.procs_per_pod
    );
    println!("  load average after: {}", load());
    drop(procs);
    for b in ["hullbch0", "ctrbch0"] {
        let _ = Command::new("ip")
            .args(["link", "del", b])
            .stderr(Stdio::null())
            .status();
    }
    let _ = std::fs::remove_dir_all(&w);
}
