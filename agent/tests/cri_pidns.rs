//! A pod-wide pid namespace (`shareProcessNamespace`, NamespaceOption pid = POD) through
//! a real gRPC client (as root, real kernel): the pause process is PID 1 of the pod's
//! pid namespace and reaps its orphans, container B sees container A's processes and
//! kills one of them, a container asking pid = CONTAINER sees only its own, and the
//! pause process sits in the pod's cgroup, removed with the pod.

mod streaming_support;

use std::time::{Duration, Instant};

use k8s_cri::v1::*;
use streaming_support::PodEnv;

const NS_CONTAINER: i32 = 1;

async fn sh(env: &mut PodEnv, id: &str, script: &str) -> (String, i32) {
    let r = env
        .rt
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 60,
        })
        .await
        .unwrap()
        .into_inner();
    (String::from_utf8_lossy(&r.stdout).into_owned(), r.exit_code)
}

/// Polls `script` in container `id` until its output satisfies `ok` (60 s at most).
async fn until(env: &mut PodEnv, id: &str, script: &str, ok: impl Fn(&str) -> bool) -> String {
    let t = Instant::now();
    loop {
        let (out, _) = sh(env, id, script).await;
        if ok(&out) {
            return out;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{script:?} in {id}: still {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates and starts a container asking for pid namespace mode `pid`.
async fn run_pid_mode(env: &mut PodEnv, name: &str, script: &str, pid: i32) -> String {
    let cfg = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: env.image.clone(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}/0.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption {
                    pid,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = env
        .rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: env.sandbox.clone(),
            config: Some(cfg),
            sandbox_config: Some(env.pod.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    env.rt
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_pod_share_its_pid_namespace() {
    // The pod asks nothing of the pid namespace: pid = POD, as crictl sends it and as
    // the kubelet sends it for shareProcessNamespace.
    let mut env = PodEnv::new("cri-pidns", "default", "pidns").await;
    let a = env.run("a", "echo up; exec sleep 4321", false, 0).await;
    let b = env.run("b", "echo up; exec sleep 3600", false, 0).await;
    env.wait_log("a/0.log", "up").await;
    env.wait_log("b/0.log", "up").await;

    // PID 1 of the pod is the pause process; B sees A's process.
    let (one, _) = sh(&mut env, &b, "tr '\\0' ' ' </proc/1/cmdline").await;
    assert!(one.contains("pause"), "PID 1 of the pod: {one:?}");
    let ps = until(&mut env, &b, "ps -o pid,args", |o| o.contains("sleep 4321")).await;
    assert!(ps.contains("sleep 3600"), "{ps}");

    // A container asking for a pid namespace of its own sees only itself.
    let c = run_pid_mode(&mut env, "c", "echo up; exec sleep 3600", NS_CONTAINER).await;
    env.wait_log("c/0.log", "up").await;
    let (own, _) = sh(&mut env, &c, "ps -o args").await;
    assert!(
        !own.contains("sleep 4321"),
        "pid = CONTAINER sees the pod: {own}"
    );
    let (c1, _) = sh(&mut env, &c, "tr '\\0' ' ' </proc/1/cmdline").await;
    assert!(c1.contains("sleep 3600"), "PID 1 of container c: {c1:?}");

    // The pause reaps the pod's orphans: a background sleep left by an exec.
    sh(&mut env, &b, "sleep 1 >/dev/null 2>&1 </dev/null & exit 0").await;
    until(
        &mut env,
        &b,
        "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '",
        |o| !o.contains("sleep 1 "),
    )
    .await;
    until(&mut env, &b, "cat /proc/[0-9]*/stat 2>/dev/null", |o| {
        !o.contains("(sleep) Z")
    })
    .await;

    // B signals A's process: A's container exits by SIGTERM.
    let (pid, _) = sh(
        &mut env,
        &b,
        "for p in /proc/[0-9]*; do tr '\\0' ' ' <$p/cmdline 2>/dev/null | grep -q '^sleep 4321' && basename $p; done",
    )
    .await;
    let pid = pid.trim().to_string();
    assert!(!pid.is_empty(), "A's sleep not found from B");
    let (_, code) = sh(&mut env, &b, &format!("kill {pid}")).await;
    assert_eq!(code, 0);
    let t = Instant::now();
    let st = loop {
        let st = env
            .rt
            .container_status(ContainerStatusRequest {
                container_id: a.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if st.state == 2 {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "A still {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(st.exit_code, 128 + 15, "{st:?}");

    // The pause process is in the pod's cgroup (beside its containers').
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            env.scratch
                .path("data/cri/sandboxes")
                .join(&env.sandbox)
                .join("sandbox.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let pause = rec["pause_pid"].as_i64().unwrap();
    let parent = rec["cgroup_parent"].as_str().unwrap().to_string();
    let want = format!("{}/{}", parent.trim_end_matches('/'), env.sandbox);
    let cg = std::fs::read_to_string(format!("/proc/{pause}/cgroup")).unwrap();
    assert!(
        cg.lines().any(|l| l.ends_with(&format!(":{want}"))),
        "pause {pause} not in {want}: {cg}"
    );
    let dirs: Vec<std::path::PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path().join(want.trim_start_matches('/')))
        .filter(|p| p.is_dir())
        .collect();
    assert!(!dirs.is_empty(), "no cgroup dir {want}");
    env.teardown().await;
    let left: Vec<_> = dirs.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "pause cgroup left: {left:?}");
}
