//! The `hull-bridge` plugin's work: bridge, veth pair, addresses, routes, IPAM and
//! NAT rules for ADD, and their removal for DEL (CHECK, GC, STATUS are in `upkeep`).

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use netlink_packet_route::link::{InfoKind, LinkFlags};
use sha2::{Digest, Sha256};

use crate::config::BridgeConf;
use crate::error::{CniError, Result, code};
use crate::exec::{PluginEnv, exec_plugin, find_plugin};
use crate::explain;
use crate::ipam::HostLocal;
use crate::netlink::{Netlink, link_kind, link_mac, parse_mac};
use crate::netns::NetNs;
use crate::nft;
use crate::types::{CniResult, Interface, Route};

/// One plugin invocation's environment, validated.
#[derive(Debug, Clone)]
pub struct Call {
    pub command: String,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: String,
    pub path: String,
}

impl Call {
    pub(crate) fn env(&self, command: &str) -> PluginEnv {
        PluginEnv {
            command: command.to_string(),
            container_id: self.container_id.clone(),
            netns: self
                .netns
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            ifname: self.ifname.clone(),
            args: self.args.clone(),
            path: self.path.clone(),
        }
    }
}

/// 8 hex digits naming one attachment (container id + ifname) on the host: the veth
/// is `veth<hash>` and its nft chains `hp-<hash>` / `masq-<hash>`, so every piece can
/// be found again from the id alone after a crash, and GC can tell live from leaked.
pub fn attachment_hash(container_id: &str, ifname: &str) -> String {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update([0u8]);
    h.update(ifname.as_bytes());
    let d = h.finalize();
    d[..4].iter().map(|b| format!("{b:02x}")).collect()
}

pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    format!("veth{}", attachment_hash(container_id, ifname))
}

/// Where addresses come from: host-local in process, or any IPAM plugin exec'd.
pub(crate) enum Ipam {
    HostLocal(HostLocal),
    Exec(PathBuf),
}

impl Ipam {
    pub(crate) fn new(conf: &BridgeConf, call: &Call) -> Result<Self> {
        let kind = conf.ipam_type()?;
        let ipam = conf
            .ipam
            .as_ref()
            .ok_or_else(|| CniError::config("ipam: missing"))?;
        if kind == "host-local" {
            Ok(Ipam::HostLocal(HostLocal::from_value(&conf.name, ipam)?))
        } else {
            Ok(Ipam::Exec(find_plugin(kind, &call.path)?))
        }
    }

    fn add(&self, call: &Call, stdin: &[u8]) -> Result<CniResult> {
        match self {
            Ipam::HostLocal(h) => h.allocate(&call.container_id, &call.ifname),
            Ipam::Exec(p) => {
                explain::step(|| format!("ipam: exec {} ADD", p.display()));
                let out = exec_plugin(p, &call.env("ADD"), stdin)?;
                serde_json::from_slice(&out).map_err(|e| {
                    CniError::new(
                        code::DECODE,
                        format!("result of IPAM plugin {}: {e}", p.display()),
                    )
                })
            }
        }
    }

    fn del(&self, call: &Call, stdin: &[u8]) -> Result<()> {
        match self {
            Ipam::HostLocal(h) => h.release(&call.container_id, &call.ifname).map(|_| ()),
            Ipam::Exec(p) => exec_plugin(p, &call.env("DEL"), stdin).map(|_| ()),
        }
    }
}

fn write_sysctl(path: &str, value: &str) {
    match std::fs::read_to_string(path) {
        Ok(cur) if cur.trim() == value => {}
        _ => {
            explain::step(|| format!("sysctl: {path} = {value}"));
            // Best effort: a read-only /proc (some sandboxes) only costs the feature.
            let _ = std::fs::write(path, value);
        }
    }
}

pub(crate) fn nl_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> CniError {
    move |e| CniError::netlink(what, e)
}

/// Finds or creates the bridge, up (and promiscuous if asked). Returns (index, mac).
fn ensure_bridge(nl: &mut Netlink, conf: &BridgeConf) -> Result<(u32, String)> {
    let name = conf.bridge_name();
    let link = match nl
        .link_by_name(name)
        .map_err(nl_err(format!("get link {name}")))?
    {
        Some(l) => l,
        None => {
            explain::step(|| {
                let mtu = conf.mtu.map(|m| format!(" mtu {m}")).unwrap_or_default();
                format!("netlink: RTM_NEWLINK {name} type bridge{mtu}")
            });
            match nl.add_bridge(name, conf.mtu) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                r => r.map_err(nl_err(format!("bridge: create {name}")))?,
            }
            nl.link_by_name(name)
                .map_err(nl_err(format!("get link {name}")))?
                .ok_or_else(|| {
                    CniError::new(
                        code::NETLINK,
                        format!("bridge: {name} vanished after creation"),
                    )
                })?
        }
    };
    if link_kind(&link) != Some(&InfoKind::Bridge) {
        return Err(CniError::config(format!(
            "bridge: {name} exists and is not a bridge"
        )));
    }
    let mut want = LinkFlags::Up;
    let mut mask = LinkFlags::Up;
    if conf.promisc_mode {
        want |= LinkFlags::Promisc;
        mask |= LinkFlags::Promisc;
    }
    if link.header.flags & mask != want {
        explain::step(|| {
            format!(
                "netlink: RTM_SETLINK {name} up{}",
                if conf.promisc_mode { " promisc" } else { "" }
            )
        });
        nl.set_flags(link.header.index, mask, want)
            .map_err(nl_err(format!("bridge: set {name} up")))?;
    }
    Ok((link.header.index, link_mac(&link)))
}

/// The gateway for `ip`'s family from the IPAM result.
fn gateway_for(res: &CniResult, v4: bool) -> Option<IpAddr> {
    res.ips
        .iter()
        .filter(|i| i.address.addr().is_ipv4() == v4)
        .find_map(|i| i.gateway)
}

pub fn add(conf: &BridgeConf, call: &Call, stdin: &[u8]) -> Result<CniResult> {
    let netns = call
        .netns
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_NETNS: required for ADD"))?;
    let ns = NetNs::open(netns)?;
    let ipam = Ipam::new(conf, call)?;
    let ipres = ipam.add(call, stdin)?;
    match add_links(conf, call, &ns, ipres) {
        Ok(r) => Ok(r),
        Err(e) => {
            explain::step(|| format!("ADD failed ({e}); rolling back"));
            let _ = teardown(conf, call, true, false);
            let _ = ipam.del(call, stdin);
            Err(e)
        }
    }
}

fn add_links(conf: &BridgeConf, call: &Call, ns: &NetNs, ipres: CniResult) -> Result<CniResult> {
    if ipres.ips.is_empty() {
        return Err(CniError::config("ipam: returned no IP addresses"));
    }
    let ifname = &call.ifname;
    let mut nl = Netlink::open().map_err(nl_err("netlink socket"))?;
    let br_name = conf.bridge_name();
    let (br_index, br_mac) = ensure_bridge(&mut nl, conf)?;

    let gateway = conf.is_gateway || conf.is_default_gateway;
    if gateway {
        for ip in &ipres.ips {
            let Some(gw) = ip.gateway else { continue };
            let net = IpNet::new(gw, ip.address.prefix_len())
                .map_err(|e| CniError::config(format!("ipam gateway: {e}")))?;
            explain::step(|| format!("netlink: RTM_NEWADDR {net} dev {br_name} (gateway)"));
            nl.add_address(br_index, &net)
                .map_err(nl_err(format!("bridge: add gateway {net} to {br_name}")))?;
            if gw.is_ipv4() {
                // Routing between pods and the world needs forwarding, as the reference plugin does.
                write_sysctl("/proc/sys/net/ipv4/ip_forward", "1");
            }
        }
    }
    if !conf.runtime_config.port_mappings.is_empty() {
        // Lets `curl 127.0.0.1:HOSTPORT` on the node be DNAT'd out through the bridge.
        write_sysctl(
            &format!("/proc/sys/net/ipv4/conf/{br_name}/route_localnet"),
            "1",
        );
    }

    let host = host_veth_name(&call.container_id, ifname);
    if let Some(old) = nl
        .link_by_name(&host)
        .map_err(nl_err(format!("get link {host}")))?
    {
        // Same name = same attachment: a leftover of a crashed or retried ADD.
        explain::step(|| format!("netlink: RTM_DELLINK {host} (stale from an earlier ADD)"));
        nl.del_link(old.header.index)
            .map_err(nl_err(format!("delete stale {host}")))?;
    }
    let mac = conf.container_mac().and_then(parse_mac);
    explain::step(|| {
        format!(
            "netlink: RTM_NEWLINK {host} type veth peer {ifname} netns {} master {br_name}{} up",
            ns.path().display(),
            conf.mtu.map(|m| format!(" mtu {m}")).unwrap_or_default()
        )
    });
    nl.add_veth(&host, br_index, ifname, ns, conf.mtu, mac)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EEXIST) {
                CniError::config(format!(
                    "CNI_IFNAME: {ifname} already exists in {}",
                    ns.path().display()
                ))
            } else {
                CniError::netlink(format!("create veth {host} <-> {ifname}"), e)
            }
        })?;
    let hl = nl
        .link_by_name(&host)
        .map_err(nl_err(format!("get link {host}")))?
        .ok_or_else(|| {
            CniError::new(
                code::NETLINK,
                format!("veth {host} vanished after creation"),
            )
        })?;
    if conf.hairpin_mode {
        explain::step(|| format!("netlink: RTM_NEWLINK {host} brport hairpin on"));
        nl.set_hairpin(hl.header.index, true)
            .map_err(nl_err(format!("hairpin on {host}")))?;
    }

    let mut cn = Netlink::open_in(ns)?;
    let cl = cn
        .link_by_name(ifname)
        .map_err(nl_err(format!("get link {ifname} in netns")))?
        .ok_or_else(|| {
            CniError::new(
                code::NETLINK,
                format!("{ifname} missing in netns after creation"),
            )
        })?;
    explain::step(|| format!("netlink: RTM_SETLINK {ifname} up (in netns)"));
    cn.set_flags(cl.header.index, LinkFlags::Up, LinkFlags::Up)
        .map_err(nl_err(format!("set {ifname} up")))?;
    for ip in &ipres.ips {
        explain::step(|| {
            format!(
                "netlink: RTM_NEWADDR {} dev {ifname} (in netns)",
                ip.address
            )
        });
        cn.add_address(cl.header.index, &ip.address)
            .map_err(nl_err(format!("add {} to {ifname}", ip.address)))?;
    }
    let mut routes = ipres.routes.clone();
    if conf.is_default_gateway {
        for v4 in [true, false] {
            if gateway_for(&ipres, v4).is_some() {
                let dst: IpNet = if v4 { "0.0.0.0/0" } else { "::/0" }
                    .parse()
                    .map_err(|_| CniError::config("route"))?;
                if !routes.iter().any(|r| r.dst == dst) {
                    routes.push(Route {
                        dst,
                        gw: None,
                        mtu: None,
                        priority: None,
                    });
                }
            }
        }
    }
    for r in &mut routes {
        let v4 = r.dst.addr().is_ipv4();
        let gw = r.gw.or_else(|| gateway_for(&ipres, v4));
        explain::step(|| {
            let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
            format!(
                "netlink: RTM_NEWROUTE {}{via} dev {ifname} (in netns)",
                r.dst
            )
        });
        cn.add_route(&r.dst, gw, cl.header.index)
            .map_err(nl_err(format!("route {} via {gw:?} dev {ifname}", r.dst)))?;
        r.gw = gw;
    }

    let ports = &conf.runtime_config.port_mappings;
    if conf.ip_masq || !ports.is_empty() {
        let ips: Vec<IpNet> = ipres.ips.iter().map(|i| i.address).collect();
        let hash = attachment_hash(&call.container_id, ifname);
        nft::add_pod(&nft::PodRules {
            hash: &hash,
            ips: &ips,
            masq: conf.ip_masq,
            no_masq: &conf.non_masquerade()?,
            ports,
        })?;
    }

    // A bridge takes its MAC from its first port, so read it now that it has one.
    let br_mac = match nl.link_by_name(br_name) {
        Ok(Some(l)) => link_mac(&l),
        _ => br_mac,
    };
    let mut res = ipres;
    res.interfaces = vec![
        Interface {
            name: br_name.to_string(),
            mac: br_mac,
            mtu: None,
            sandbox: None,
        },
        Interface {
            name: host,
            mac: link_mac(&hl),
            mtu: None,
            sandbox: None,
        },
        Interface {
            name: ifname.clone(),
            mac: link_mac(&cl),
            mtu: None,
            sandbox: Some(ns.path().display().to_string()),
        },
    ];
    for ip in &mut res.ips {
        ip.interface = Some(2);
        if !gateway {
            ip.gateway = None;
        }
    }
    res.routes = routes;
    if let Some(dns) = &conf.dns {
        res.dns = dns.clone();
    }
    Ok(res.for_version(&conf.cni_version))
}

/// Removes the veth and NAT rules of one attachment; everything missing is success.
fn teardown(conf: &BridgeConf, call: &Call, force_nft: bool, detached: bool) -> Result<()> {
    let host = host_veth_name(&call.container_id, &call.ifname);
    let mut nl = Netlink::open().map_err(nl_err("netlink socket"))?;
    if let Some(l) = nl
        .link_by_name(&host)
        .map_err(nl_err(format!("get link {host}")))?
    {
        explain::step(|| {
            format!("netlink: RTM_DELLINK {host} (its peer in the netns goes with it)")
        });
        if detached {
            nl.del_link_detached(l.header.index, &host)
        } else {
            nl.del_link(l.header.index)
        }
        .map_err(nl_err(format!("delete {host}")))?;
    }
    if force_nft || conf.ip_masq || !conf.runtime_config.port_mappings.is_empty() {
        nft::remove_pod(&attachment_hash(&call.container_id, &call.ifname))?;
    }
    Ok(())
}

pub fn del(conf: &BridgeConf, call: &Call, stdin: &[u8]) -> Result<()> {
    // IPAM first so a lease is never stranded behind a netlink failure.
    if conf.ipam.is_some() {
        let ipam = Ipam::new(conf, call)?;
        ipam.del(call, stdin)?;
    }
    teardown(
        conf,
        call,
        false,
        DETACHED_DELETE.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// Set by the plugin binary (a single-threaded process) to let DEL hand the kernel's
/// slow veth teardown to a child; see [`Netlink::del_link_detached`].
pub static DETACHED_DELETE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);
