//! Mount propagation (as root, a real container): a Bidirectional (rshared) volume
//! carries a mount made inside the container back to the host, and the container's
//! rootfs bind does not leak onto the host doing so.

mod streaming_support;

use k8s_cri::v1::*;
use streaming_support::PodEnv;

/// Mount points in the host's mountinfo whose path contains `id`.
fn host_mounts_of(id: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|m| m.contains(id))
        .collect()
}

/// Mount points in the host's mountinfo at or under `dir`.
fn host_mounts_under(dir: &std::path::Path) -> Vec<String> {
    let d = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|m| m == &d || m.starts_with(&format!("{d}/")))
        .collect()
}

/// Lazily unmounts its path when dropped (also when the test fails).
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn sh(cmd: &str) {
    let st = std::process::Command::new("sh")
        .args(["-c", cmd])
        .status()
        .unwrap();
    assert!(st.success(), "{cmd}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidirectional_volume_reaches_the_host_without_leaking_the_rootfs() {
    let mut env = PodEnv::new("cri-propagation", "default", "bidipod").await;
    // The volume's source: a shared tmpfs of the test's own (Scratch unmounts it).
    let vol = env.scratch.path("bidi");
    std::fs::create_dir_all(&vol).unwrap();
    sh(&format!(
        "mount -t tmpfs hull-bidi {v} && mount --make-shared {v} && mkdir {v}/sub",
        v = vol.display()
    ));

    // The bundles' dir shared with the host's peers, as on a systemd host (this
    // one's / is private): the container rootfs's overlay below it is shared too, so a
    // rootfs bind made in the container's shared tree would show up on the host.
    let cfg = hull_agent::cri::Config::new(&env.scratch.path("data"), &env.sock);
    let run = cfg.oci_root().parent().unwrap().join("bundles");
    sh(&format!(
        "mkdir -p {r} && mount --bind {r} {r} && mount --make-shared {r}",
        r = run.display()
    ));
    let _unshare = Unmount(run.clone());

    let m = env.pod.metadata.clone().unwrap();
    let cfg = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "bidi".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: env.image.clone(),
            ..Default::default()
        }),
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "mount -t tmpfs inner /vol/sub && echo mounted; sleep 3600".into(),
        ],
        log_path: "bidi/0.log".into(),
        mounts: vec![Mount {
            container_path: "/vol".into(),
            host_path: vol.to_string_lossy().into(),
            propagation: MountPropagation::PropagationBidirectional as i32,
            ..Default::default()
        }],
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        }),
        labels: [("io.kubernetes.pod.name", m.name.as_str())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
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
    let log = env.wait_log("bidi/0.log", "stdout F mounted").await;

    // The tmpfs mounted inside the container is a mount on the host too.
    let sub = vol.join("sub").to_string_lossy().to_string();
    let under_vol = host_mounts_under(&vol);
    assert!(
        under_vol.contains(&sub),
        "{sub} not on the host: {under_vol:?} ({log})"
    );
    // The container's rootfs added only its overlay on the host (no bind of it onto
    // itself, no /proc, /dev, ... of the container).
    let mine = host_mounts_of(&id);
    assert_eq!(mine.len(), 1, "host mounts of container {id}: {mine:#?}");
    env.teardown().await;
    // The container's end takes its peer of the inner tmpfs along; should the host's
    // copy stay, Scratch unmounts it.
    let left = host_mounts_of(&id);
    assert!(
        left.is_empty(),
        "host mounts of container {id} left: {left:#?}"
    );
}
