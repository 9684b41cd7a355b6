//! CHECK, GC and STATUS for `hull-bridge`: verifying an attachment against its recorded
//! result, releasing what no valid attachment owns, and reporting readiness.

use std::collections::HashSet;

use netlink_packet_route::link::InfoKind;

use crate::bridge::{Call, Ipam, attachment_hash, host_veth_name, nl_err};
use crate::config::BridgeConf;
use crate::error::{CniError, Result, code};
use crate::exec::exec_plugin;
use crate::explain;
use crate::ipam::HostLocal;
use crate::netlink::{Netlink, link_kind, link_master, link_name};
use crate::netns::NetNs;
use crate::nft;
use crate::types::{CniResult, is_legacy};

pub fn check(conf: &BridgeConf, call: &Call) -> Result<()> {
    let fail = |m: String| CniError::new(code::CHECK_FAILED, m);
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::config("prevResult: CHECK needs the result of ADD"))?;
    let prev: CniResult = serde_json::from_value(prev.clone())
        .map_err(|e| CniError::new(code::DECODE, format!("prevResult: {e}")))?;
    let netns = call
        .netns
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_NETNS: required for CHECK"))?;
    let ns = NetNs::open(netns)?;
    let mut nl = Netlink::open().map_err(nl_err("netlink socket"))?;
    let br = conf.bridge_name();
    let bl = nl
        .link_by_name(br)
        .map_err(nl_err(format!("get link {br}")))?
        .ok_or_else(|| fail(format!("bridge {br} does not exist")))?;
    let host = host_veth_name(&call.container_id, &call.ifname);
    let hl = nl
        .link_by_name(&host)
        .map_err(nl_err(format!("get link {host}")))?
        .ok_or_else(|| fail(format!("host veth {host} does not exist")))?;
    if link_master(&hl) != Some(bl.header.index) {
        return Err(fail(format!(
            "host veth {host} is not attached to bridge {br}"
        )));
    }
    let mut cn = Netlink::open_in(&ns)?;
    let cl = cn
        .link_by_name(&call.ifname)
        .map_err(nl_err("get container link"))?
        .ok_or_else(|| {
            fail(format!(
                "{} does not exist in {}",
                call.ifname,
                netns.display()
            ))
        })?;
    let have = cn
        .addresses(Some(cl.header.index))
        .map_err(nl_err("list addresses"))?;
    let ifidx = prev
        .interfaces
        .iter()
        .position(|i| i.name == call.ifname && i.sandbox.is_some());
    for ip in &prev.ips {
        if ip.interface.is_some() && ip.interface != ifidx {
            continue;
        }
        if !have.iter().any(|(_, n)| {
            n.addr() == ip.address.addr() && n.prefix_len() == ip.address.prefix_len()
        }) {
            return Err(fail(format!(
                "{} has lost address {}",
                call.ifname, ip.address
            )));
        }
    }
    for r in &prev.routes {
        let routes = cn
            .routes(!r.dst.addr().is_ipv4())
            .map_err(nl_err("list routes"))?;
        if !routes
            .iter()
            .any(|(d, gw, _)| d.trunc() == r.dst.trunc() && (r.gw.is_none() || *gw == r.gw))
        {
            return Err(fail(format!(
                "route to {} is missing in {}",
                r.dst,
                netns.display()
            )));
        }
    }
    if conf.ip_masq || !conf.runtime_config.port_mappings.is_empty() {
        let hash = attachment_hash(&call.container_id, &call.ifname);
        let present = nft::list()?
            .map(|t| nft::pod_hashes(&t).contains(&hash))
            .unwrap_or(false);
        if !present {
            return Err(fail(format!(
                "nftables rules for {host} are missing from table inet {}",
                nft::TABLE
            )));
        }
    }
    if let Ok(Ipam::HostLocal(h)) = Ipam::new(conf, call) {
        let leased = h.find(&call.container_id, &call.ifname);
        for ip in &prev.ips {
            if !leased.contains(&ip.address.addr()) {
                return Err(fail(format!(
                    "no IPAM lease for {} in {}",
                    ip.address,
                    h.dir().display()
                )));
            }
        }
    }
    Ok(())
}

/// GC: release whatever belongs to attachments not in `cni.dev/valid-attachments`.
pub fn gc(conf: &BridgeConf, call: &Call, stdin: &[u8]) -> Result<()> {
    if conf.valid_attachments.is_none() {
        // Without the list every attachment would look leaked: refuse, never wipe.
        return Err(CniError::config(
            "cni.dev/valid-attachments: required for GC",
        ));
    }
    let valid = conf.valid_set();
    let hashes: HashSet<String> = valid
        .iter()
        .map(|a| attachment_hash(&a.container_id, &a.ifname))
        .collect();
    if conf.ipam.is_some() {
        match Ipam::new(conf, call)? {
            Ipam::HostLocal(h) => {
                h.gc(&valid)?;
            }
            Ipam::Exec(p) => {
                exec_plugin(&p, &call.env("GC"), stdin)?;
            }
        }
    }
    let mut nl = Netlink::open().map_err(nl_err("netlink socket"))?;
    let br = conf.bridge_name();
    if let Some(bl) = nl
        .link_by_name(br)
        .map_err(nl_err(format!("get link {br}")))?
    {
        for l in nl.links().map_err(nl_err("list links"))? {
            let Some(name) = link_name(&l) else { continue };
            let Some(h) = name.strip_prefix("veth") else {
                continue;
            };
            if link_master(&l) == Some(bl.header.index)
                && link_kind(&l) == Some(&InfoKind::Veth)
                && !hashes.contains(h)
            {
                explain::step(|| format!("gc: RTM_DELLINK {name} (no valid attachment)"));
                nl.del_link(l.header.index)
                    .map_err(nl_err(format!("gc: delete {name}")))?;
            }
        }
    }
    // The nft table is shared by every network on the node, and valid-attachments only
    // speaks for this one: only rules whose veth is gone everywhere are leaked for sure.
    let live: HashSet<String> = nl
        .links()
        .map_err(nl_err("list links"))?
        .iter()
        .filter_map(|l| {
            link_name(l)
                .and_then(|n| n.strip_prefix("veth"))
                .map(str::to_string)
        })
        .collect();
    nft::remove_pods(&|h| !hashes.contains(h) && !live.contains(h))?;
    Ok(())
}

/// STATUS: ready when IPAM can still hand out an address in every range set.
pub fn status(conf: &BridgeConf) -> Result<()> {
    if is_legacy(&conf.cni_version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "STATUS needs cniVersion 1.1.0",
        ));
    }
    let Some(ipam) = conf.ipam.as_ref() else {
        return Ok(());
    };
    if conf.ipam_type()? != "host-local" {
        return Ok(());
    }
    let h = HostLocal::from_value(&conf.name, ipam)?;
    let leases = h.leases();
    for (i, set) in h.sets.iter().enumerate() {
        let total: u128 = set.iter().map(|r| r.end - r.start + 1).sum();
        let gw = set.iter().filter(|r| r.contains(r.gateway)).count() as u128;
        let used = leases
            .iter()
            .filter(|(ip, _, _)| set.iter().any(|r| r.contains(*ip)))
            .count() as u128;
        if used + gw >= total {
            return Err(CniError::new(
                code::PLUGIN_NOT_AVAILABLE,
                format!("ipam.ranges[{i}]: no free addresses left"),
            ));
        }
    }
    Ok(())
}
