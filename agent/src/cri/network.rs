//! Pod networking through the CNI invoker: the first conflist in the conf dir (a
//! default hull-bridge one is written if there is none), ADD on RunPodSandbox, DEL on
//! StopPodSandbox (idempotent, from the invoker's result cache).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use hull_cni::invoker::{Invoker, RuntimeConf, find_default};
use hull_cni::types::NetworkConfigList;
use k8s_cri::v1::PodSandboxConfig;
use serde_json::json;

use super::config::Config;
use super::error::{CriError, Result};

pub const IFNAME: &str = "eth0";

/// Writes `DIR/10-hull.conflist` (bridge `hull0`, the node's pod subnet) if the conf
/// dir has no configuration of its own.
pub fn ensure_default(cfg: &Config) -> Result<()> {
    let dir = &cfg.cni_conf_dir;
    if find_default(dir).is_ok() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(CriError::io(format!("create {}", dir.display())))?;
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "hull",
        "plugins": [{
            "type": "hull-bridge", "bridge": "hull0", "isGateway": true, "ipMasq": true,
            "hairpinMode": true, "capabilities": {"portMappings": true},
            "ipam": {"type": "host-local", "ranges": [[{"subnet": cfg.pod_subnet}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": cfg.ipam_dir()}
        }]
    });
    let p = dir.join("10-hull.conflist");
    let data = serde_json::to_vec_pretty(&conf).map_err(|e| CriError::Internal(e.to_string()))?;
    fs::write(&p, data).map_err(CriError::io(format!("write {}", p.display())))
}

/// The node's pod subnet, from the agent (CRI UpdateRuntimeConfig, `spec.podCIDR`): the
/// default conflist hull wrote is rewritten to allocate from it, so each node of a
/// cluster hands out addresses of its own range. A conflist someone else wrote is left
/// alone, as containerd leaves a CNI configuration it did not template. Returns whether
/// the file changed.
pub fn set_pod_subnet(cfg: &Config, cidr: &str) -> Result<bool> {
    let p = cfg.cni_conf_dir.join("10-hull.conflist");
    let Ok(text) = fs::read(&p) else {
        return Ok(false);
    };
    let Ok(mut conf) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return Ok(false);
    };
    let ours = conf["name"] == "hull"
        && conf["plugins"][0]["type"] == "hull-bridge"
        && conf["plugins"][0]["bridge"] == "hull0";
    let subnet = &mut conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"];
    if !ours || subnet.as_str() == Some(cidr) || subnet.is_null() {
        return Ok(false);
    }
    *subnet = json!(cidr);
    let data = serde_json::to_vec_pretty(&conf).map_err(|e| CriError::Internal(e.to_string()))?;
    let tmp = p.with_extension("tmp");
    fs::write(&tmp, data).map_err(CriError::io(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, &p).map_err(CriError::io(format!("rename to {}", p.display())))?;
    Ok(true)
}

pub fn invoker(cfg: &Config) -> Invoker {
    Invoker::new(cfg.cni_bin_dirs.clone(), cfg.cni_cache_dir())
}

pub fn load(cfg: &Config) -> Result<NetworkConfigList> {
    find_default(&cfg.cni_conf_dir)
        .map_err(|e| CriError::Network(format!("{}: {e}", cfg.cni_conf_dir.display())))
}

/// NetworkReady: a conflist loads and its plugins are on the plugin path.
pub fn ready(cfg: &Config) -> std::result::Result<(), String> {
    let list = load(cfg).map_err(|e| e.to_string())?;
    for p in &list.plugins {
        let kind = p.get("type").and_then(|t| t.as_str()).unwrap_or("");
        if !cfg.cni_bin_dirs.iter().any(|d| d.join(kind).is_file()) {
            return Err(format!(
                "CNI plugin {kind:?} of network {:?} not found in {:?}",
                list.name, cfg.cni_bin_dirs
            ));
        }
    }
    Ok(())
}

fn runtime_conf(id: &str, netns: &Path, pod: &PodSandboxConfig) -> RuntimeConf {
    let md = pod.metadata.clone().unwrap_or_default();
    let mut caps = BTreeMap::new();
    let ports: Vec<_> = pod
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let proto = match p.protocol {
                1 => "udp",
                2 => "sctp",
                _ => "tcp",
            };
            let mut m = json!({"hostPort": p.host_port, "containerPort": p.container_port, "protocol": proto});
            if !p.host_ip.is_empty() {
                m["hostIP"] = json!(p.host_ip);
            }
            m
        })
        .collect();
    if !ports.is_empty() {
        caps.insert("portMappings".to_string(), json!(ports));
    }
    RuntimeConf {
        container_id: id.to_string(),
        netns: netns.display().to_string(),
        ifname: IFNAME.into(),
        args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), md.namespace),
            ("K8S_POD_NAME".into(), md.name),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), id.to_string()),
            ("K8S_POD_UID".into(), md.uid),
        ],
        capability_args: caps,
    }
}

/// CNI ADD; returns (network name, pod IPs).
pub fn add(
    cfg: &Config,
    id: &str,
    netns: &Path,
    pod: &PodSandboxConfig,
) -> Result<(String, Vec<String>)> {
    let list = load(cfg)?;
    let rt = runtime_conf(id, netns, pod);
    let res = invoker(cfg)
        .add(&list, &rt)
        .map_err(|e| CriError::Network(format!("CNI ADD on network {:?}: {e}", list.name)))?;
    let ips = res
        .ips
        .iter()
        .map(|ip| ip.address.addr().to_string())
        .collect();
    Ok((list.name.clone(), ips))
}

/// CNI DEL (safe to repeat: plugins treat a missing attachment as done).
pub fn del(cfg: &Config, id: &str, netns: &Path, pod: &PodSandboxConfig) -> Result<()> {
    let list = load(cfg)?;
    let rt = runtime_conf(id, netns, pod);
    invoker(cfg)
        .del(&list, &rt)
        .map_err(|e| CriError::Network(format!("CNI DEL on network {:?}: {e}", list.name)))
}
