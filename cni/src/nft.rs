//! hull's nftables state for pods: outbound masquerade (`ipMasq`) and hostPort DNAT
//! (`portMappings`), all inside `table inet hull-cni` — hull never touches any other table.
//!
//! Shape (per attachment `H` = [`crate::bridge::attachment_hash`]):
//! ```text
//! table inet hull-cni {
//!   map hostports { inet_proto . inet_service : verdict }  tcp . 8080 : jump hp-H
//!   map masq4 / masq6 { addr : verdict }                   10.244.0.5 : jump masq-H
//!   set podnets4 / podnets6 (interval)                     subnets that hairpin-masquerade
//!   chain prerouting  (nat, dstnat)  fib daddr type local  meta l4proto . th dport vmap @hostports
//!   chain output      (nat, -100)    same, so the node reaches its own hostPorts (127.0.0.1 too)
//!   chain postrouting (nat, srcnat)  DNAT'd from 127/8 or pod→pod hairpin: masquerade;
//!                                    ip saddr vmap @masq4; ip6 saddr vmap @masq6
//!   chain hp-H   { [ip daddr HOSTIP] meta l4proto tcp th dport 8080 dnat ip to POD:80 }
//!   chain masq-H { ip daddr POD_SUBNET return; [ip daddr NON_MASQ_CIDR return;]
//!                  ip daddr 224.0.0.0/4 return; masquerade }
//! }
//! ```
//! Per-pod state is map elements plus two chains, so ADD and DEL are each one
//! atomic `nft -f` batch and never renumber or rewrite anyone else's rules.
//!
//! ADD sends only its pod's part while the base is in place: re-flushing and refilling
//! the base chains cost ~12 of an ADD's ~16 ms in `nft`, all of it under the table lock,
//! so 50 pods started at once queued there for most of their start-up. The pod batch
//! opens with `flush set … base-N`, a marker set the base of this version declares: a
//! missing table, an older base or a newer one makes the batch fail as a whole, and the
//! base is applied with it. ADDs touch only their own chains and elements, so they
//! share the table lock (the kernel serialises their commits); DEL and GC take it
//! alone, because they may delete the whole table. Driven
//! through libnftables or the `nft` binary (text in, JSON out): it is the reference parser, gives
//! transactions for free, and `--explain` can print exactly the batch it applies.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;

use crate::error::{CniError, Result, code};
use crate::explain;
use crate::types::PortMapping;

pub const TABLE: &str = "hull-cni";
const T: &str = "inet hull-cni";
/// The marker set of this version's base (see the module doc); bump it whenever
/// `base()` changes, so a node running the old base gets the new one at the next ADD.
const BASE_MARK: &str = "base-1";

/// Applies `script` as one atomic transaction: through libnftables in this process
/// when it loads (`libnft`), else through the `nft` binary.
pub fn apply(script: &str) -> Result<()> {
    explain::step(|| format!("nft -f - <<EOF\n{script}EOF"));
    match crate::libnft::run(script, 0) {
        Some(Ok(_)) => return Ok(()),
        Some(Err(stderr)) => {
            return Err(CniError::new(code::NFTABLES, "nftables batch refused")
                .with_details(stderr.trim().to_string()));
        }
        None => {}
    }
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::io("exec nft (is the nftables package installed?)", e))?;
    if let Some(mut si) = child.stdin.take() {
        si.write_all(script.as_bytes())
            .map_err(|e| CniError::io("write to nft", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::io("wait for nft", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CniError::new(code::NFTABLES, "nftables batch refused")
            .with_details(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// Our table as nft JSON, or `None` if it does not exist.
pub fn list() -> Result<Option<serde_json::Value>> {
    let parse = |json: &[u8]| {
        serde_json::from_slice(json)
            .map(Some)
            .map_err(|e| CniError::new(code::NFTABLES, format!("parse nft JSON: {e}")))
    };
    match crate::libnft::run(&format!("list table {T}"), crate::libnft::OUTPUT_JSON) {
        Some(Ok(json)) => return parse(json.as_bytes()),
        Some(Err(_)) => return Ok(None),
        None => {}
    }
    let out = Command::new("nft")
        .args(["-j", "list", "table", "inet", TABLE])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| CniError::io("exec nft", e))?;
    if !out.status.success() {
        return Ok(None);
    }
    parse(&out.stdout)
}

/// The table, maps, sets and base chains. Base chains are flushed and refilled in the
/// same transaction so repeating this is idempotent and never duplicates a rule.
fn base() -> String {
    format!(
        "add table {T}
add chain {T} prerouting {{ type nat hook prerouting priority dstnat; }}
add chain {T} output {{ type nat hook output priority -100; }}
add chain {T} postrouting {{ type nat hook postrouting priority srcnat; }}
add map {T} hostports {{ type inet_proto . inet_service : verdict; }}
add map {T} masq4 {{ type ipv4_addr : verdict; }}
add map {T} masq6 {{ type ipv6_addr : verdict; }}
add set {T} podnets4 {{ type ipv4_addr; flags interval; auto-merge; }}
add set {T} podnets6 {{ type ipv6_addr; flags interval; auto-merge; }}
add set {T} {BASE_MARK} {{ type ipv4_addr; }}
flush chain {T} prerouting
add rule {T} prerouting fib daddr type local meta l4proto . th dport vmap @hostports
flush chain {T} output
add rule {T} output fib daddr type local meta l4proto . th dport vmap @hostports
flush chain {T} postrouting
add rule {T} postrouting ct status dnat ip saddr 127.0.0.0/8 masquerade
add rule {T} postrouting ct status dnat ip saddr @podnets4 ip daddr @podnets4 masquerade
add rule {T} postrouting ct status dnat ip6 saddr @podnets6 ip6 daddr @podnets6 masquerade
add rule {T} postrouting ip saddr vmap @masq4
add rule {T} postrouting ip6 saddr vmap @masq6
"
    )
}

fn proto(p: &str) -> Result<&'static str> {
    match p.to_ascii_lowercase().as_str() {
        "tcp" | "" => Ok("tcp"),
        "udp" => Ok("udp"),
        "sctp" => Ok("sctp"),
        other => Err(CniError::config(format!(
            "runtimeConfig.portMappings: protocol {other:?} is not tcp, udp or sctp"
        ))),
    }
}

/// What one attachment needs in the table.
pub struct PodRules<'a> {
    pub hash: &'a str,
    /// The pod's addresses with their subnets.
    pub ips: &'a [IpNet],
    pub masq: bool,
    /// With `masq`: destinations that keep the pod's address (`nonMasqueradeCIDRs`).
    pub no_masq: &'a [IpNet],
    pub ports: &'a [PortMapping],
}

/// The ADD batch for one pod, base included.
pub fn add_script(p: &PodRules) -> Result<String> {
    Ok(base() + &pod_script(p)?)
}

/// The ADD batch for one pod alone: it fails as a whole unless this version's base is
/// in place.
pub fn pod_script(p: &PodRules) -> Result<String> {
    let mut s = format!("flush set {T} {BASE_MARK}\n");
    let h = p.hash;
    if p.masq {
        s += &format!("add chain {T} masq-{h}\nflush chain {T} masq-{h}\n");
        for net in p.ips {
            let (fam, mcast) = if net.addr().is_ipv4() {
                ("ip", "224.0.0.0/4")
            } else {
                ("ip6", "ff00::/8")
            };
            s += &format!("add rule {T} masq-{h} {fam} daddr {} return\n", net.trunc());
            for nm in p
                .no_masq
                .iter()
                .filter(|n| n.addr().is_ipv4() == net.addr().is_ipv4())
            {
                s += &format!("add rule {T} masq-{h} {fam} daddr {nm} return\n");
            }
            s += &format!("add rule {T} masq-{h} {fam} daddr {mcast} return\n");
        }
        s += &format!("add rule {T} masq-{h} masquerade\n");
        for net in p.ips {
            let m = if net.addr().is_ipv4() {
                "masq4"
            } else {
                "masq6"
            };
            s += &format!("add element {T} {m} {{ {} : jump masq-{h} }}\n", net.addr());
        }
    }
    if !p.ports.is_empty() {
        s += &format!("add chain {T} hp-{h}\nflush chain {T} hp-{h}\n");
        for pm in p.ports {
            if pm.host_port == 0 || pm.container_port == 0 {
                return Err(CniError::config(
                    "runtimeConfig.portMappings: hostPort and containerPort must be 1-65535",
                ));
            }
            let pr = proto(&pm.protocol)?;
            let host_ip: Option<IpAddr> = match pm.host_ip.as_str() {
                "" | "0.0.0.0" | "::" => None,
                h => Some(h.parse().map_err(|_| {
                    CniError::config(format!(
                        "runtimeConfig.portMappings: hostIP {h:?} is not an IP address"
                    ))
                })?),
            };
            for net in p.ips {
                let ip = net.addr();
                if host_ip.is_some_and(|hip| hip.is_ipv4() != ip.is_ipv4()) {
                    continue;
                }
                let (fam, nfp, to) = if ip.is_ipv4() {
                    ("ip", "ipv4", format!("{ip}:{}", pm.container_port))
                } else {
                    ("ip6", "ipv6", format!("[{ip}]:{}", pm.container_port))
                };
                let dmatch = host_ip
                    .map(|h| format!("{fam} daddr {h} "))
                    .unwrap_or_default();
                s += &format!(
                    "add rule {T} hp-{h} meta nfproto {nfp} {dmatch}meta l4proto {pr} th dport {} dnat {fam} to {to}\n",
                    pm.host_port
                );
            }
            s += &format!(
                "add element {T} hostports {{ {pr} . {} : jump hp-{h} }}\n",
                pm.host_port
            );
        }
        for net in p.ips {
            let set = if net.addr().is_ipv4() {
                "podnets4"
            } else {
                "podnets6"
            };
            s += &format!("add element {T} {set} {{ {} }}\n", net.trunc());
        }
    }
    Ok(s)
}

fn key_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Object(o) => {
            let parts = o.get("concat")?.as_array()?;
            let p: Option<Vec<String>> = parts.iter().map(key_text).collect();
            Some(p?.join(" . "))
        }
        _ => None,
    }
}

/// The batch that removes every element and chain belonging to attachments whose hash
/// `doomed` accepts, given the listed table. Empty when there is nothing to remove.
pub fn remove_script(table: &serde_json::Value, doomed: &dyn Fn(&str) -> bool) -> String {
    let mut s = String::new();
    let mut chains = Vec::new();
    let Some(items) = table.get("nftables").and_then(|v| v.as_array()) else {
        return s;
    };
    for item in items {
        if let Some(map) = item.get("map") {
            let name = map.get("name").and_then(|v| v.as_str()).unwrap_or_default();
            for el in map
                .get("elem")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
            {
                let Some(pair) = el.as_array() else { continue };
                let (Some(k), Some(target)) = (
                    pair.first().and_then(key_text),
                    pair.get(1)
                        .and_then(|v| v.pointer("/jump/target"))
                        .and_then(|v| v.as_str()),
                ) else {
                    continue;
                };
                if let Some(h) = target
                    .strip_prefix("hp-")
                    .or_else(|| target.strip_prefix("masq-"))
                    && doomed(h)
                {
                    s += &format!("delete element {T} {name} {{ {k} }}\n");
                }
            }
        }
        if let Some(chain) = item.get("chain") {
            let name = chain
                .get("name")
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            if let Some(h) = name
                .strip_prefix("hp-")
                .or_else(|| name.strip_prefix("masq-"))
                && doomed(h)
            {
                chains.push(name.to_string());
            }
        }
    }
    // Chains go last: the kernel refuses to delete a chain a map element still jumps to.
    for c in chains {
        s += &format!("flush chain {T} {c}\ndelete chain {T} {c}\n");
    }
    s
}

/// Serialises every change to our table across processes, so "remove the table when
/// its last pod goes" can never race a concurrent ADD.
pub struct TableLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

/// The table lock alone (DEL, GC: they may delete the table).
pub fn lock() -> Result<TableLock> {
    lock_as(nix::fcntl::FlockArg::LockExclusive)
}

/// The table lock shared with other ADDs, never with a DEL or GC.
pub fn lock_shared() -> Result<TableLock> {
    lock_as(nix::fcntl::FlockArg::LockShared)
}

fn lock_as(how: nix::fcntl::FlockArg) -> Result<TableLock> {
    let path = "/run/hull-cni.nft.lock";
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| CniError::io(format!("open {path}"), e))?;
    nix::fcntl::Flock::lock(f, how)
        .map(TableLock)
        .map_err(|(_, e)| CniError::io(format!("lock {path}"), e.into()))
}

/// Applies the ADD batch for one pod under the shared table lock: the pod's part
/// alone, or with the base if that is missing or of another version.
pub fn add_pod(p: &PodRules) -> Result<()> {
    let pod = pod_script(p)?;
    let _l = lock_shared()?;
    let r = apply(&pod).or_else(|e| {
        explain::step(|| {
            format!(
                "nft: pod batch refused ({}); applying the base with it",
                e.details
            )
        });
        apply(&(base() + &pod))
    });
    r.map_err(|e| {
        // The batch is atomic, so a taken hostPort leaves nothing half-applied.
        if !p.ports.is_empty() && e.details.contains("File exists") {
            CniError::new(
                code::NFTABLES,
                "runtimeConfig.portMappings: a hostPort is already used by another pod",
            )
            .with_details(e.details)
        } else {
            e
        }
    })
}

/// Removes the rules of attachments `doomed` accepts (DEL, GC). When no pod is left
/// the whole table goes, so an idle node carries no hull nftables state at all.
pub fn remove_pods(doomed: &dyn Fn(&str) -> bool) -> Result<()> {
    let _l = lock()?;
    let Some(table) = list()? else { return Ok(()) };
    let left = pod_hashes(&table)
        .into_iter()
        .filter(|h| !doomed(h))
        .count();
    if left == 0 {
        return apply(&format!("delete table {T}\n"));
    }
    let s = remove_script(&table, doomed);
    if s.is_empty() { Ok(()) } else { apply(&s) }
}

/// Removes one attachment's rules (DEL). Nothing to remove is success.
pub fn remove_pod(hash: &str) -> Result<()> {
    remove_pods(&|h| h == hash)
}

/// Per-attachment chain hashes present in the table (CHECK, GC, leak tests).
pub fn pod_hashes(table: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = table
        .get("nftables")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|i| i.pointer("/chain/name").and_then(|v| v.as_str()))
        .filter_map(|n| n.strip_prefix("hp-").or_else(|| n.strip_prefix("masq-")))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}
