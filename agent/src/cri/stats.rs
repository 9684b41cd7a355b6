//! ContainerStats / PodSandboxStats: CPU and memory from each container's cgroup
//! (through `hull_runtime`), the writable layer's usage from its upper dir, and a pod's
//! network counters read in its network namespace.
//!
//! Network counters come from `/proc/<pause>/net/dev`: procfs shows the interfaces of
//! the named process's network namespace, so reading it through the pause process
//! (in the pod's netns for the pod's whole life) needs no `setns` and no thread, as
//! cAdvisor reads `/proc/<pid>/net/dev`.
//! `lo` is left out, as cAdvisor leaves it out: traffic between a pod's own containers
//! is not network usage. hostNetwork pods report none (their counters are the node's;
//! the kubelet takes the node's from elsewhere, as with containerd).

use std::path::Path;

use k8s_cri::v1::{
    ContainerAttributes, ContainerStats, CpuUsage, FilesystemIdentifier, FilesystemUsage,
    LinuxPodSandboxStats, MemoryUsage, NetworkInterfaceUsage, NetworkUsage, PodSandboxAttributes,
    PodSandboxStats, UInt64Value,
};

use super::config::Config;
use super::error::Result;
use super::records::{self, ContainerRecord, SandboxRecord};
use super::{container, network, sandbox};

fn u64v(v: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value: v })
}

/// One interface's counters from a `/proc/net/dev` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IfCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// Parses `/proc/net/dev` (two header lines, then `name: 8 receive, 8 transmit fields`).
pub fn parse_net_dev(text: &str) -> Vec<IfCounters> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            (f.len() >= 16).then(|| IfCounters {
                name: name.trim().to_string(),
                rx_bytes: f[0],
                rx_errors: f[2],
                tx_bytes: f[8],
                tx_errors: f[10],
            })
        })
        .collect()
}

fn usage(c: &IfCounters) -> NetworkInterfaceUsage {
    NetworkInterfaceUsage {
        name: c.name.clone(),
        rx_bytes: u64v(c.rx_bytes),
        rx_errors: u64v(c.rx_errors),
        tx_bytes: u64v(c.tx_bytes),
        tx_errors: u64v(c.tx_errors),
    }
}

/// The pod's network usage: `eth0` (the interface CNI made) as the default interface and
/// every interface but `lo`. None for hostNetwork pods and pods whose pause is gone.
pub fn pod_network(rec: &SandboxRecord) -> Option<NetworkUsage> {
    rec.netns.as_ref()?;
    if rec.stopped || !sandbox::pause_alive(rec) {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{}/net/dev", rec.pause_pid)).ok()?;
    let timestamp = records::now_ns();
    // The pid could have been reused between the check and the read.
    if !sandbox::pause_alive(rec) {
        return None;
    }
    let ifs: Vec<IfCounters> = parse_net_dev(&text)
        .into_iter()
        .filter(|c| c.name != "lo")
        .collect();
    Some(NetworkUsage {
        timestamp,
        default_interface: ifs.iter().find(|c| c.name == network::IFNAME).map(usage),
        interfaces: ifs.iter().map(usage).collect(),
    })
}

pub fn container_stats(cfg: &Config, rec: &ContainerRecord) -> ContainerStats {
    let now = records::now_ns();
    let mut s = ContainerStats {
        attributes: Some(ContainerAttributes {
            id: rec.id.clone(),
            metadata: rec.config.metadata.clone(),
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
        }),
        ..Default::default()
    };
    if let Ok(st) = hull_runtime::container::stats(&cfg.oci_root(), &rec.id) {
        s.cpu = Some(CpuUsage {
            timestamp: now,
            usage_core_nano_seconds: u64v(st.cpu.usage.total),
            usage_nano_cores: None,
        });
        s.memory = Some(MemoryUsage {
            timestamp: now,
            working_set_bytes: u64v(st.memory.working_set),
            usage_bytes: u64v(st.memory.usage.usage),
            rss_bytes: u64v(st.memory.rss),
            ..Default::default()
        });
    }
    let upper = cfg.data_dir.join("containers").join(&rec.id).join("upper");
    let (bytes, inodes) = dir_usage(&upper);
    s.writable_layer = Some(FilesystemUsage {
        timestamp: now,
        fs_id: Some(FilesystemIdentifier {
            mountpoint: upper.display().to_string(),
        }),
        used_bytes: u64v(bytes),
        inodes_used: u64v(inodes),
    });
    s
}

/// Bytes and inodes under `dir` (a container's writable layer).
pub fn dir_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut b, mut n) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            n += 1;
            b += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (b, n)
}

pub fn sandbox_stats(cfg: &Config, id: &str) -> Result<PodSandboxStats> {
    let rec = sandbox::load(cfg, id)?;
    let containers: Vec<ContainerStats> = container::in_sandbox(cfg, &rec.id)
        .iter()
        .filter_map(|c| container::load(cfg, c).ok())
        .map(|r| container_stats(cfg, &r))
        .collect();
    let now = records::now_ns();
    let cpu: u64 = containers
        .iter()
        .filter_map(|c| {
            c.cpu
                .as_ref()?
                .usage_core_nano_seconds
                .as_ref()
                .map(|v| v.value)
        })
        .sum();
    let ws: u64 = containers
        .iter()
        .filter_map(|c| {
            c.memory
                .as_ref()?
                .working_set_bytes
                .as_ref()
                .map(|v| v.value)
        })
        .sum();
    Ok(PodSandboxStats {
        attributes: Some(PodSandboxAttributes {
            id: rec.id.clone(),
            metadata: rec.config.metadata.clone(),
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
        }),
        linux: Some(LinuxPodSandboxStats {
            cpu: Some(CpuUsage {
                timestamp: now,
                usage_core_nano_seconds: u64v(cpu),
                usage_nano_cores: None,
            }),
            memory: Some(MemoryUsage {
                timestamp: now,
                working_set_bytes: u64v(ws),
                ..Default::default()
            }),
            network: pod_network(&rec),
            process: None,
            containers,
        }),
        windows: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_table_parses() {
        let t = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n  \
eth0: 5230942    3800    1    0    0     0          0         0   146823    1751    4    0    0     0       0          0\n";
        let c = parse_net_dev(t);
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[1],
            IfCounters {
                name: "eth0".into(),
                rx_bytes: 5230942,
                rx_errors: 1,
                tx_bytes: 146823,
                tx_errors: 4
            }
        );
    }
}
