//! Pod stats through a real gRPC client (as root, real kernel): traffic sent from the
//! host's network namespace to the pod's IP over the test's own bridge shows in the
//! pod's `eth0` counters (PodSandboxStats and ListPodSandboxStats, read in the pod's
//! netns), and a hostNetwork pod reports no network stats, as the kubelet expects.

mod streaming_support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use k8s_cri::v1::*;
use streaming_support::PodEnv;

async fn pod_stats(env: &mut PodEnv, id: &str) -> PodSandboxStats {
    env.rt
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
}

fn eth0(s: &PodSandboxStats) -> (i64, u64, u64) {
    let n = s
        .linux
        .as_ref()
        .and_then(|l| l.network.as_ref())
        .unwrap_or_else(|| panic!("no network stats: {s:?}"));
    let d = n
        .default_interface
        .as_ref()
        .unwrap_or_else(|| panic!("no default interface: {n:?}"));
    assert_eq!(d.name, "eth0");
    assert!(
        n.interfaces.iter().any(|i| i.name == "eth0")
            && n.interfaces.iter().all(|i| i.name != "lo"),
        "interfaces: {:?}",
        n.interfaces
    );
    let v = |x: &Option<UInt64Value>| x.as_ref().map(|v| v.value).expect("counter missing");
    (n.timestamp, v(&d.rx_bytes), v(&d.tx_bytes))
}

/// GET `path` from `ip:port` over plain TCP from the host (retrying while the server starts).
fn http_get(ip: &str, port: u16, path: &str) -> Vec<u8> {
    let t = Instant::now();
    loop {
        match std::net::TcpStream::connect((ip, port)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
                    .unwrap();
                let mut body = Vec::new();
                s.read_to_end(&mut body).unwrap();
                return body;
            }
            Err(e) => {
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "connect {ip}:{port}: {e}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_network_stats_count_traffic_and_host_network_has_none() {
    let mut env = PodEnv::new("cri-stats", "default", "stats").await;
    env.run(
        "web",
        "mkdir -p /www && dd if=/dev/zero of=/www/big bs=1024 count=256 2>/dev/null && echo up && exec httpd -f -p 8080 -h /www",
        false,
        0,
    )
    .await;
    env.wait_log("web/0.log", "up").await;
    let ip = env
        .rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: env.sandbox.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap();
    assert!(!ip.is_empty(), "no pod IP");

    let sid = env.sandbox.clone();
    let before = eth0(&pod_stats(&mut env, &sid).await);
    let ipc = ip.clone();
    let body = tokio::task::spawn_blocking(move || http_get(&ipc, 8080, "/big"))
        .await
        .unwrap();
    assert!(
        body.len() > 256 * 1024,
        "short answer from the pod: {} bytes",
        body.len()
    );
    let after = eth0(&pod_stats(&mut env, &sid).await);
    assert!(after.0 > before.0, "timestamps {before:?} → {after:?}");
    assert!(
        after.2 >= before.2 + 256 * 1024,
        "tx of eth0 did not grow by the 256 KiB sent: {before:?} → {after:?}"
    );
    assert!(
        after.1 > before.1,
        "rx of eth0 did not grow: {before:?} → {after:?}"
    );

    // ListPodSandboxStats carries the same counters.
    let list = env
        .rt
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
            filter: Some(PodSandboxStatsFilter {
                id: sid.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(list.len(), 1);
    let listed = eth0(&list[0]);
    assert!(listed.2 >= after.2, "{listed:?} < {after:?}");

    // A hostNetwork pod: no network stats (the node's counters are not the pod's).
    let mut host = env.pod.clone();
    let md = host.metadata.as_mut().unwrap();
    md.name = "stats-hostnet".into();
    md.uid = format!("{}-hostnet", md.uid);
    host.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: 2,
                pid: 1,
                ipc: 0,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let hid = env
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(host),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let hs = pod_stats(&mut env, &hid).await;
    let hostnet_network = hs.linux.as_ref().and_then(|l| l.network.clone());
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: hid,
        })
        .await
        .unwrap();
    assert!(
        hostnet_network.is_none(),
        "hostNetwork pod reported {hostnet_network:?}"
    );

    // A stopped pod reports none either (its netns is gone).
    env.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: sid.clone(),
        })
        .await
        .unwrap();
    let stopped = pod_stats(&mut env, &sid).await;
    assert!(
        stopped
            .linux
            .as_ref()
            .and_then(|l| l.network.as_ref())
            .is_none()
    );
    env.teardown().await;
}
