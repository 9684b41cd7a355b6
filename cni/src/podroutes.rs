//! Routes to the other nodes' pod subnets ("host-gw", as flannel's backend of that name):
//! for every other node, `<its podCIDR> via <its InternalIP>` on the link that reaches
//! that address directly. Pods on different nodes then talk through the nodes' own
//! network, with no overlay. It needs the nodes on one L2 segment (a VM network, or the
//! bridge of the multi-node tests); a node that is not directly reachable is reported and
//! skipped, never routed through the default gateway.
//!
//! The routes carry their own protocol number ([`PROTO`]), so a restarted agent finds
//! exactly the routes it made — and only those — and replaces, keeps or removes them.
//! A route hull did not make is never replaced: a peer whose pod subnet already has a
//! route of another origin (say the kernel's route of a local bridge holding that subnet),
//! or whose address is one of this host's own, is reported and skipped. Replacing such a
//! route would cut the local subnet off, and the cleanup on exit would then delete it.

use std::io;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::netlink::{Netlink, RouteEntry};

/// `ip route` shows it as `proto 104` (rt_protos has no name for it): hull's pod routes.
pub const PROTO: u8 = 104;

/// Another node's pod subnet and the address it is reached at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRoute {
    pub node: String,
    pub pod_cidr: IpNet,
    pub node_ip: IpAddr,
}

/// What one [`sync`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: Vec<IpNet>,
    pub removed: Vec<IpNet>,
    /// Nodes whose address is not on a directly connected network.
    pub unreachable: Vec<String>,
    /// Nodes skipped because routing to them would override this host's own networking:
    /// (node, why).
    pub conflicts: Vec<(String, String)>,
}

/// The directly connected (no gateway) route holding `ip` with the longest prefix: its link.
fn link_towards(routes: &[RouteEntry], ip: IpAddr) -> Option<u32> {
    routes
        .iter()
        .filter(|(net, gw, _, proto)| gw.is_none() && *proto != PROTO && net.contains(&ip))
        .filter(|(net, ..)| net.prefix_len() > 0)
        .max_by_key(|(net, ..)| net.prefix_len())
        .map(|(_, _, oif, _)| *oif)
}

/// Why a route to `p` must not be installed, if it must not.
fn conflict(routes: &[RouteEntry], local: &[IpAddr], p: &PeerRoute) -> Option<String> {
    if local.contains(&p.node_ip) {
        return Some(format!(
            "its address {} is one of this host's own",
            p.node_ip
        ));
    }
    let net = p.pod_cidr.trunc();
    routes
        .iter()
        .find(|(n, _, _, proto)| *n == net && *proto != PROTO)
        .map(|(_, gw, oif, proto)| {
            let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
            format!(
                "its pod subnet {net} already has a route hull did not make \
                 ({net}{via} on link {oif}, protocol {proto})"
            )
        })
}

/// Makes the routes tagged [`PROTO`] in this network namespace exactly `want`.
pub fn sync(want: &[PeerRoute]) -> io::Result<SyncReport> {
    let mut nl = Netlink::open()?;
    let mut report = SyncReport::default();
    let local: Vec<IpAddr> = nl
        .addresses(None)?
        .into_iter()
        .map(|(_, a)| a.addr())
        .collect();
    for v6 in [false, true] {
        let routes = nl.routes_with_protocol(v6)?;
        let mut wanted = Vec::new();
        for p in want.iter().filter(|p| p.pod_cidr.addr().is_ipv6() == v6) {
            if p.node_ip.is_ipv6() != v6 {
                continue;
            }
            if let Some(why) = conflict(&routes, &local, p) {
                report.conflicts.push((p.node.clone(), why));
                continue;
            }
            match link_towards(&routes, p.node_ip) {
                Some(oif) => wanted.push((p.pod_cidr.trunc(), Some(p.node_ip), oif)),
                None => report.unreachable.push(p.node.clone()),
            }
        }
        for (net, gw, oif, proto) in &routes {
            if *proto == PROTO && !wanted.contains(&(*net, *gw, *oif)) {
                nl.del_route(net, *gw, *oif)?;
                report.removed.push(*net);
            }
        }
        for (net, gw, oif) in wanted {
            let present = routes
                .iter()
                .any(|(n, g, o, proto)| *proto == PROTO && (*n, *g, *o) == (net, gw, oif));
            if !present {
                nl.replace_route(&net, gw, oif, PROTO)?;
                report.added.push(net);
            }
        }
    }
    Ok(report)
}

/// Removes every route tagged [`PROTO`] (the agent's cleanup on exit).
pub fn clear() -> io::Result<Vec<IpNet>> {
    sync(&[]).map(|r| r.removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_hull_did_not_make_and_own_addresses_are_conflicts() {
        let n = |s: &str| s.parse::<IpNet>().expect("net");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let routes = vec![
            (n("10.244.0.0/24"), None, 5, 2),
            (n("10.244.1.0/24"), Some(ip("10.250.0.12")), 7, PROTO),
        ];
        let local = [ip("10.250.0.2"), ip("10.244.0.1")];
        let peer = |cidr: &str, addr: &str| PeerRoute {
            node: "n".into(),
            pod_cidr: n(cidr),
            node_ip: ip(addr),
        };
        let kernel = conflict(&routes, &local, &peer("10.244.0.0/24", "10.250.0.12"));
        assert!(
            kernel
                .as_deref()
                .is_some_and(|w| w.contains("10.244.0.0/24") && w.contains("protocol 2")),
            "{kernel:?}"
        );
        // Host bits in the CIDR do not hide the clash.
        assert!(conflict(&routes, &local, &peer("10.244.0.7/24", "10.250.0.12")).is_some());
        let own = conflict(&routes, &local, &peer("10.244.2.0/24", "10.250.0.2"));
        assert!(
            own.as_deref()
                .is_some_and(|w| w.contains("this host's own"))
        );
        // hull's own route for the prefix, and a more specific prefix, are fine.
        assert_eq!(
            conflict(&routes, &local, &peer("10.244.1.0/24", "10.250.0.12")),
            None
        );
        assert_eq!(
            conflict(&routes, &local, &peer("10.244.0.0/25", "10.250.0.12")),
            None
        );
    }

    #[test]
    fn the_most_specific_connected_route_wins() {
        let n = |s: &str| s.parse::<IpNet>().expect("net");
        let routes = vec![
            (n("0.0.0.0/0"), Some("10.0.0.1".parse().expect("ip")), 2, 4),
            (n("10.0.0.0/8"), None, 3, 2),
            (n("10.250.0.0/24"), None, 7, 2),
            (
                n("10.244.1.0/24"),
                Some("10.250.0.12".parse().expect("ip")),
                7,
                PROTO,
            ),
        ];
        assert_eq!(
            link_towards(&routes, "10.250.0.12".parse().expect("ip")),
            Some(7)
        );
        assert_eq!(
            link_towards(&routes, "10.9.9.9".parse().expect("ip")),
            Some(3)
        );
        // Never through the default route or one of its own routes.
        assert_eq!(
            link_towards(&routes, "192.168.1.1".parse().expect("ip")),
            None
        );
        assert_eq!(
            link_towards(&routes, "10.244.1.5".parse().expect("ip")),
            Some(3)
        );
    }
}
