//! The CRI server end to end, through a real gRPC client on its unix socket, with
//! images from a real `docker-registry` on 127.0.0.1 (as root, on the real kernel):
//! a pod of two containers sharing localhost, CRI logs, exec, OOMKilled, exit codes,
//! a kill -9 of the server with containers still running, and leak checks after.

#[path = "../../runtime/tests/image_support/mod.rs"]
mod image_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use image_support::{Registry, Scratch, mkimage};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint};

fn hull_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HULL_BIN") {
        return p.into();
    }
    // target/<profile>/deps/<test> → target/<profile>/hull
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("hull"))
        .unwrap();
    assert!(
        p.is_file(),
        "the hull binary is not built at {} (cargo build -p hull, or set HULL_BIN)",
        p.display()
    );
    p
}

/// `hull cri` as a child; SIGKILLed by PID on drop.
struct CriServer {
    child: Option<Child>,
}

impl CriServer {
    fn start(data: &Path, sock: &Path, conf: &Path) -> CriServer {
        let _ = std::fs::remove_file(sock);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.with_extension("log"))
            .unwrap();
        let child = Command::new(hull_bin())
            .args(["cri", "--data-dir"])
            .arg(data)
            .arg("--socket")
            .arg(sock)
            .arg("--cni-conf-dir")
            .arg(conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !sock.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "hull cri did not create {}",
                sock.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        CriServer { child: Some(child) }
    }
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for CriServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn connect(sock: &Path) -> (RuntimeServiceClient<Channel>, ImageServiceClient<Channel>) {
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

fn veths() -> usize {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "type", "veth"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn mounts_containing(s: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(s))
        .map(String::from)
        .collect()
}

fn container_cfg(name: &str, image: &str, script: &str, mem: i64) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: mem,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn wait_state(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    state: i32,
) -> ContainerStatus {
    let t = Instant::now();
    loop {
        let s = rt
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if s.state == state || t.elapsed() > Duration::from_secs(60) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_log(path: &Path, needle: &str) -> String {
    let t = Instant::now();
    loop {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        if s.contains(needle) || t.elapsed() > Duration::from_secs(60) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal remotecommand client over SPDY/3.1 (what crictl's `exec` does):
/// (stdout, error-stream body).
async fn spdy_exec(url: &str) -> (String, String) {
    use hull_agent::cri::spdy::{self, Frame, HeaderCodec};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\nX-Stream-Protocol-Version: channel.k8s.io\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(
        head.starts_with("HTTP/1.1 101") && head.contains("v4.channel.k8s.io"),
        "{head}"
    );
    let mut codec = HeaderCodec::new();
    for (sid, kind) in [(1, "error"), (3, "stdout"), (5, "stderr")] {
        s.write_all(&codec.syn_stream(sid, &[("streamtype", kind)]))
            .await
            .unwrap();
    }
    let (mut out, mut err) = (String::new(), String::new());
    let mut replies = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(60), spdy::read_frame(&mut s))
            .await
            .unwrap()
            .unwrap()
        {
            Some(Frame::Control {
                kind: spdy::SYN_REPLY,
                ..
            }) => replies += 1,
            Some(Frame::Data {
                stream: 3, data, ..
            }) => out.push_str(&String::from_utf8_lossy(&data)),
            Some(Frame::Data {
                stream: 1,
                data,
                flags,
            }) => {
                err.push_str(&String::from_utf8_lossy(&data));
                if flags & spdy::FLAG_FIN != 0 {
                    break;
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(replies, 3, "a SYN_REPLY per stream");
    (out, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_lifecycle_oom_exit_codes_and_server_restart() {
    let pid = std::process::id();
    let scratch = Scratch::new("cri-lifecycle");
    let reg = Registry::start(&scratch.path("registry"));
    mkimage(&scratch.path("img"), "busybox", "1");
    reg.push(&scratch.path("img"), "1", "t/busybox:1", &[]);
    let image = format!("{}/t/busybox:1", reg.host);
    let data = scratch.path("data");
    let conf = scratch.path("net.d");
    std::fs::create_dir_all(&conf).unwrap();
    let bridge = format!("hc{}", pid % 100_000);
    let subnet = format!("10.{}.{}.0/24", 200 + pid % 50, (pid / 50) % 250);
    std::fs::write(
        conf.join("10-test.conflist"),
        serde_json::json!({"cniVersion": "1.0.0", "name": format!("crit{pid}"), "plugins": [{
            "type": "hull-bridge", "bridge": bridge, "isGateway": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": scratch.path("ipam")}}]})
        .to_string(),
    )
    .unwrap();
    let sock = scratch.path("cri.sock");
    let v0 = veths();
    let mut server = CriServer::start(&data, &sock, &conf);
    let (mut rt, mut img) = connect(&sock).await;

    let v = rt
        .version(VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("hull", "v1")
    );
    let st = rt
        .status(StatusRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert!(
        st.conditions.iter().all(|c| c.status),
        "conditions: {:?}",
        st.conditions
    );

    // Bad input: unknown ids and a config without an image.
    let e = rt
        .container_status(ContainerStatusRequest {
            container_id: "feedbeef".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    img.pull_image(PullImageRequest {
        image: Some(ImageSpec {
            image: image.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        img.image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            verbose: false
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .is_some()
    );

    let logs = scratch.path("logs");
    let pod = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "p".into(),
            namespace: "default".into(),
            uid: format!("uid-{pid}"),
            attempt: 0,
        }),
        hostname: "testpod".into(),
        log_directory: logs.display().to_string(),
        ..Default::default()
    };
    let sid = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let ps = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: sid.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(ps.state, 0, "sandbox not READY");
    assert!(
        ps.network.as_ref().is_some_and(|n| !n.ip.is_empty()),
        "no pod IP"
    );

    let mut bad = container_cfg("bad", &image, "true", 0);
    bad.image = None;
    let e = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sid.clone(),
            config: Some(bad),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("image"), "{}", e.message());

    let mut ids = Vec::new();
    for (name, script, mem) in [
        ("server", "echo started; exec httpd -f -p 8080 -h /etc", 0),
        (
            "client",
            "sleep 1; wget -qO- http://127.0.0.1:8080/hello; sleep 3600",
            0,
        ),
        ("hog", "tail /dev/zero", 32 << 20),
        ("three", "echo out; echo err >&2; exit 3", 0),
    ] {
        let id = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sid.clone(),
                config: Some(container_cfg(name, &image, script, mem)),
                sandbox_config: Some(pod.clone()),
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
        rt.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        ids.push(id);
    }
    let client_log = wait_log(&logs.join("client.log"), "hello-from-layer2").await;
    assert!(
        client_log.contains(" stdout F hello-from-layer2"),
        "containers do not share localhost: {client_log}"
    );
    let server_log = wait_log(&logs.join("server.log"), "started").await;
    assert!(
        server_log
            .lines()
            .next()
            .is_some_and(|l| l.ends_with(" stdout F started")
                && l.len() == "2026-01-01T00:00:00.000000000Z stdout F started".len()),
        "{server_log}"
    );

    let x = rt
        .exec_sync(ExecSyncRequest {
            container_id: ids[0].clone(),
            cmd: vec!["hostname".into()],
            timeout: 30,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (String::from_utf8_lossy(&x.stdout).trim(), x.exit_code),
        ("testpod", 0)
    );
    let x = rt
        .exec_sync(ExecSyncRequest {
            container_id: ids[0].clone(),
            cmd: vec!["sh".into(), "-c".into(), "echo e >&2; exit 7".into()],
            timeout: 30,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (String::from_utf8_lossy(&x.stderr).trim(), x.exit_code),
        ("e", 7)
    );

    // Exec through the streaming server, as crictl does (SPDY/3.1, v4.channel.k8s.io).
    for (cmd, want_out, want_err) in [
        (
            "echo hi; hostname",
            "hi\ntestpod\n",
            r#""status":"Success""#,
        ),
        ("exit 4", "", r#""message":"4""#),
    ] {
        let url = rt
            .exec(ExecRequest {
                container_id: ids[0].clone(),
                cmd: vec!["sh".into(), "-c".into(), cmd.into()],
                stdout: true,
                stderr: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .url;
        let (out, err) = spdy_exec(&url).await;
        assert_eq!(out, want_out);
        assert!(err.contains(want_err), "error stream: {err}");
    }

    let hog = wait_state(&mut rt, &ids[2], 2).await;
    assert_eq!(
        (hog.state, hog.reason.as_str(), hog.exit_code),
        (2, "OOMKilled", 137)
    );
    let three = wait_state(&mut rt, &ids[3], 2).await;
    assert_eq!((three.reason.as_str(), three.exit_code), ("Error", 3));
    let l3 = wait_log(&logs.join("three.log"), "err").await;
    assert!(
        l3.contains(" stdout F out") && l3.contains(" stderr F err"),
        "{l3}"
    );

    // kill -9 of the server: containers keep running, a new server sees them.
    server.kill9();
    let mut server = CriServer::start(&data, &sock, &conf);
    let (mut rt, _img) = connect(&sock).await;
    let s = rt
        .container_status(ContainerStatusRequest {
            container_id: ids[0].clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(s.state, 1, "server container not running after restart");
    let x = rt
        .exec_sync(ExecSyncRequest {
            container_id: ids[0].clone(),
            cmd: vec!["hostname".into()],
            timeout: 30,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&x.stdout).trim(), "testpod");
    let three = rt
        .container_status(ContainerStatusRequest {
            container_id: ids[3].clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(three.exit_code, 3);
    let list = rt
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: sid.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.containers.len(), 4);

    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: sid.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: sid.clone(),
    })
    .await
    .unwrap();
    let e = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: sid.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(
        rt.list_containers(ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers
            .is_empty()
    );

    // Leaks: veths, mounts, netns, cgroups, processes.
    server.kill9();
    assert_eq!(veths(), v0, "veth left behind");
    let run = hull_runtime::image::bundle::runtime_dir(&data);
    assert!(
        mounts_containing(&run.display().to_string()).is_empty(),
        "mounts left: {:?}",
        mounts_containing(&run.display().to_string())
    );
    assert!(mounts_containing(&sid).is_empty());
    for id in &ids {
        assert!(
            !Path::new("/sys/fs/cgroup/memory/hull.cri")
                .join(id)
                .exists()
                && !Path::new("/sys/fs/cgroup/unified/hull.cri")
                    .join(id)
                    .exists(),
            "cgroup of {id} left"
        );
        let procs = Command::new("pgrep").args(["-f", id]).output().unwrap();
        assert!(
            procs.stdout.is_empty(),
            "processes of {id} left: {}",
            String::from_utf8_lossy(&procs.stdout)
        );
    }
    let _ = Command::new("ip").args(["link", "del", &bridge]).status();
}
