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

/// The conflist hull writes when the conf dir holds none of its own.
pub const DEFAULT_CONFLIST: &str = "10-hull.conflist";
/// The `name` of hull's default network (also its IPAM lease dir under `cni/networks`).
pub const DEFAULT_NETWORK: &str = "hull";

/// hull's default network: bridge `cfg.cni_bridge`, one host-local range set per pod
/// CIDR (IPv4 and/or IPv6), a default route per family.
fn default_conflist(cfg: &Config, cidrs: &[String]) -> serde_json::Value {
    let ranges: Vec<_> = cidrs.iter().map(|c| json!([{ "subnet": c }])).collect();
    let mut routes = Vec::new();
    if cidrs.iter().any(|c| !c.contains(':')) {
        routes.push(json!({"dst": "0.0.0.0/0"}));
    }
    if cidrs.iter().any(|c| c.contains(':')) {
        routes.push(json!({"dst": "::/0"}));
    }
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": DEFAULT_NETWORK,
        "plugins": [{
            "type": "hull-bridge", "bridge": cfg.cni_bridge, "isGateway": true, "ipMasq": true,
            "hairpinMode": true, "capabilities": {"portMappings": true},
            "ipam": {"type": "host-local", "ranges": ranges, "routes": routes,
                     "dataDir": cfg.ipam_dir()}
        }]
    });
    set_non_masquerade(cfg, &mut conf);
    conf
}

/// The cluster CIDR(s) as `nonMasqueradeCIDRs` of hull's network; whether `conf` changed.
fn set_non_masquerade(cfg: &Config, conf: &mut serde_json::Value) -> bool {
    let want = match &cfg.cluster_cidr {
        Some(list) => json!(list.split(',').map(str::trim).collect::<Vec<_>>()),
        None => serde_json::Value::Null,
    };
    let plugin = &mut conf["plugins"][0];
    if plugin["nonMasqueradeCIDRs"] == want {
        return false;
    }
    match plugin.as_object_mut() {
        Some(o) if want.is_null() => o.remove("nonMasqueradeCIDRs").is_some(),
        Some(o) => {
            o.insert("nonMasqueradeCIDRs".into(), want);
            true
        }
        None => false,
    }
}

/// Whether `conf` is the default network hull writes (for this server's bridge): only
/// that one is rewritten for a new pod CIDR.
fn is_ours(cfg: &Config, conf: &serde_json::Value) -> bool {
    conf["name"] == DEFAULT_NETWORK
        && conf["plugins"][0]["type"] == "hull-bridge"
        && conf["plugins"][0]["bridge"] == cfg.cni_bridge.as_str()
}

/// Writes `conf` to `path` whole (a temporary file renamed over it), so a pod set up
/// meanwhile reads the old or the new configuration, never half of one.
fn write_atomic(path: &Path, conf: &serde_json::Value) -> Result<()> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let data = serde_json::to_vec_pretty(conf).map_err(|e| CriError::Internal(e.to_string()))?;
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // A dot file with no conflist extension: the CNI loader never reads it.
    let tmp = path.with_file_name(format!(".{DEFAULT_CONFLIST}.{}.{n}", std::process::id()));
    fs::write(&tmp, data).map_err(CriError::io(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        CriError::Io {
            what: format!("rename to {}", path.display()),
            source: e,
        }
    })
}

/// Writes `DIR/10-hull.conflist` (bridge `cfg.cni_bridge`, the node's pod subnet) if the
/// conf dir has no configuration of its own. With `await_pod_cidr` nothing is written
/// until UpdateRuntimeConfig names the node's pod CIDR (see `set_pod_subnet`).
pub fn ensure_default(cfg: &Config) -> Result<()> {
    let dir = &cfg.cni_conf_dir;
    if let Some(list) = &cfg.cluster_cidr {
        parse_pod_cidrs(list, "--cluster-cidr")?;
    }
    // A conflist hull wrote before (a resumed node): keep it in step with --cluster-cidr.
    let p = dir.join(DEFAULT_CONFLIST);
    if let Ok(text) = fs::read(&p)
        && let Ok(mut conf) = serde_json::from_slice::<serde_json::Value>(&text)
        && is_ours(cfg, &conf)
        && set_non_masquerade(cfg, &mut conf)
    {
        write_atomic(&p, &conf)?;
    }
    if find_default(dir).is_ok() || cfg.await_pod_cidr {
        return Ok(());
    }
    let cidrs = parse_pod_cidrs(&cfg.pod_subnet, "--pod-subnet")?;
    fs::create_dir_all(dir).map_err(CriError::io(format!("create {}", dir.display())))?;
    write_atomic(&dir.join(DEFAULT_CONFLIST), &default_conflist(cfg, &cidrs))
}

/// A pod CIDR list as the kubelet sends it (`10.244.1.0/24` or, dual-stack,
/// `10.244.1.0/24,fd00:10:244:1::/64`): each a network address with room for pods.
pub fn parse_pod_cidrs(list: &str, field: &str) -> Result<Vec<String>> {
    let bad = |c: &str, why: &str| CriError::InvalidArgument(format!("{field}: {c:?} {why}"));
    let mut out = Vec::new();
    for c in list.split(',').map(str::trim) {
        let (addr, len) = c
            .split_once('/')
            .ok_or_else(|| bad(c, "is not a CIDR (ADDRESS/PREFIX)"))?;
        let ip: std::net::IpAddr = addr
            .parse()
            .map_err(|_| bad(c, "does not start with an IP address"))?;
        let len: u32 = len
            .parse()
            .map_err(|_| bad(c, "has no numeric prefix length"))?;
        let (bits, max_len, v) = match ip {
            std::net::IpAddr::V4(a) => (32, 30, u32::from(a) as u128),
            std::net::IpAddr::V6(a) => (128, 126, u128::from(a)),
        };
        if len > max_len {
            return Err(bad(
                c,
                &format!("leaves no addresses for pods (prefix at most /{max_len})"),
            ));
        }
        let host_bits = bits - len;
        if host_bits < 128 && v & ((1u128 << host_bits) - 1) != 0 {
            return Err(bad(c, "has host bits set (give the network address)"));
        }
        if out
            .iter()
            .any(|o: &String| o.contains(':') == c.contains(':'))
        {
            return Err(bad(c, "is a second range of one address family"));
        }
        out.push(c.to_string());
    }
    Ok(out)
}

/// The node's pod subnet, from the agent (CRI UpdateRuntimeConfig, `spec.podCIDR`): the
/// default conflist hull wrote is rewritten to allocate from it (or written, if none
/// was yet), so each node of a cluster hands out addresses of its own range, as
/// containerd's CNI config template does. Running pods keep their leases and
/// addresses: host-local releases by container id whatever the range, and hull-bridge
/// keeps the old gateway address on the bridge beside the new one. A conflist someone
/// else wrote is left alone, as containerd leaves a CNI configuration it did not
/// template. Returns whether the file changed.
pub fn set_pod_subnet(cfg: &Config, list: &str) -> Result<bool> {
    let cidrs = parse_pod_cidrs(list, "runtime_config.network_config.pod_cidr")?;
    let p = cfg.cni_conf_dir.join(DEFAULT_CONFLIST);
    let want = default_conflist(cfg, &cidrs);
    match fs::read(&p) {
        Ok(text) => {
            let Ok(mut conf) = serde_json::from_slice::<serde_json::Value>(&text) else {
                return Ok(false);
            };
            if !is_ours(cfg, &conf) {
                return Ok(false);
            }
            let ipam = &mut conf["plugins"][0]["ipam"];
            if ipam["ranges"] == want["plugins"][0]["ipam"]["ranges"] {
                return Ok(false);
            }
            ipam["ranges"] = want["plugins"][0]["ipam"]["ranges"].clone();
            ipam["routes"] = want["plugins"][0]["ipam"]["routes"].clone();
            write_atomic(&p, &conf)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if find_default(&cfg.cni_conf_dir).is_ok() {
                return Ok(false);
            }
            fs::create_dir_all(&cfg.cni_conf_dir).map_err(CriError::io(format!(
                "create {}",
                cfg.cni_conf_dir.display()
            )))?;
            write_atomic(&p, &want)?;
            Ok(true)
        }
        Err(e) => Err(CriError::Io {
            what: format!("read {}", p.display()),
            source: e,
        }),
    }
}

/// hull-bridge runs in this process (no exec per pod); other plugins are exec'd.
pub fn invoker(cfg: &Config) -> Invoker {
    let mut inv = Invoker::new(cfg.cni_bin_dirs.clone(), cfg.cni_cache_dir());
    inv.builtin_bridge = true;
    inv
}

pub fn load(cfg: &Config) -> Result<NetworkConfigList> {
    find_default(&cfg.cni_conf_dir)
        .map_err(|e| CriError::Network(format!("{}: {e}", cfg.cni_conf_dir.display())))
}

/// NetworkReady: a conflist loads and its plugins are on the plugin path.
pub fn ready(cfg: &Config) -> std::result::Result<(), String> {
    if cfg.await_pod_cidr && find_default(&cfg.cni_conf_dir).is_err() {
        return Err(format!(
            "no pod CIDR yet: hull writes its network (bridge {}) into {} when \
             UpdateRuntimeConfig gives the node's pod CIDR",
            cfg.cni_bridge,
            cfg.cni_conf_dir.display()
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::{default_conflist, parse_pod_cidrs, set_non_masquerade};
    use crate::cri::Config;

    #[test]
    fn the_cluster_cidr_is_kept_from_masquerade_and_follows_the_flag() {
        let mut cfg = Config::new(
            std::path::Path::new("/nonexistent/hull-test"),
            std::path::Path::new("/nonexistent/hull-test/cri.sock"),
        );
        let mut conf = default_conflist(&cfg, &["10.244.3.0/24".into()]);
        assert!(conf["plugins"][0].get("nonMasqueradeCIDRs").is_none());
        cfg.cluster_cidr = Some("10.244.0.0/16, fd00:10:244::/56".into());
        assert!(set_non_masquerade(&cfg, &mut conf));
        assert_eq!(
            conf["plugins"][0]["nonMasqueradeCIDRs"],
            serde_json::json!(["10.244.0.0/16", "fd00:10:244::/56"])
        );
        assert!(!set_non_masquerade(&cfg, &mut conf), "already in step");
        cfg.cluster_cidr = None;
        assert!(set_non_masquerade(&cfg, &mut conf));
        assert!(conf["plugins"][0].get("nonMasqueradeCIDRs").is_none());
    }

    #[test]
    fn pod_cidrs_are_network_addresses_with_room() {
        let ok = |s: &str| parse_pod_cidrs(s, "f").unwrap();
        assert_eq!(ok("10.244.1.0/24"), vec!["10.244.1.0/24"]);
        assert_eq!(
            ok("10.244.1.0/24, fd00:10:244:1::/64"),
            vec!["10.244.1.0/24", "fd00:10:244:1::/64"]
        );
        assert_eq!(ok("0.0.0.0/0"), vec!["0.0.0.0/0"]);
        for (bad, why) in [
            ("10.244.1.1/24", "host bits"),
            ("10.244.1.0/31", "no addresses"),
            ("fd00::/127", "no addresses"),
            ("10.244.1.0", "not a CIDR"),
            ("ten/8", "IP address"),
            ("10.0.0.0/x", "prefix"),
            ("10.1.0.0/16,10.2.0.0/16", "second range"),
            ("", "not a CIDR"),
        ] {
            let e = parse_pod_cidrs(bad, "f").unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("f: "), "{bad}: {e}");
        }
    }
}
