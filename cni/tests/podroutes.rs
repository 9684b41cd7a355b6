//! Pod routes to other nodes (`hull_cni::podroutes`) in a network namespace of the
//! test's own: hull's routes are added and removed, routes it did not make are left alone.

mod common;

use common::{Netns, require_root};
use hull_cni::podroutes::{self, PROTO, PeerRoute};

fn peer(node: &str, cidr: &str, ip: &str) -> PeerRoute {
    PeerRoute {
        node: node.into(),
        pod_cidr: cidr.parse().expect("cidr"),
        node_ip: ip.parse().expect("ip"),
    }
}

/// `ip -4 route` lines of the namespace's main table.
fn routes(ns: &Netns) -> String {
    let out = ns.exec(&["ip", "-4", "route", "show", "table", "main"]);
    assert!(out.status.success(), "ip route in {}", ns.name);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_route_hull_did_not_make_is_never_replaced_or_removed() {
    require_root();
    let ns = Netns::new("pr");
    for cmd in [
        // A veth pair (carrier up) stands in for the node's network.
        "ip link add uplink type veth peer name uplinkpeer",
        "ip addr add 10.250.0.2/24 dev uplink",
        "ip link set uplinkpeer up",
        "ip link set uplink up",
        // The local node's bridge, holding the subnet a peer will (wrongly) claim too.
        "ip link add podbr type bridge",
        "ip addr add 10.244.0.1/24 dev podbr",
        "ip link set podbr up",
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        let out = ns.exec(&args);
        assert!(out.status.success(), "{cmd}: {:?}", out);
    }
    let before = routes(&ns);
    assert!(
        before.contains("10.244.0.0/24 dev podbr proto kernel"),
        "{before}"
    );

    let want = [
        peer("good", "10.244.1.0/24", "10.250.0.12"),
        // Same subnet as the local bridge (two nodes sharing a pod CIDR, or a bad spec).
        peer("clash", "10.244.0.0/24", "10.250.0.13"),
        // A second node on this very host, at this host's address.
        peer("self", "10.244.2.0/24", "10.250.0.2"),
    ];
    let report = ns.run(|| podroutes::sync(&want)).expect("sync");
    assert_eq!(report.added, vec!["10.244.1.0/24".parse().expect("net")]);
    let skipped: Vec<&str> = report.conflicts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(skipped, ["clash", "self"], "{:?}", report.conflicts);
    assert!(
        report.conflicts[0].1.contains("10.244.0.0/24"),
        "{:?}",
        report.conflicts
    );

    let during = routes(&ns);
    assert!(
        during.contains(&format!(
            "10.244.1.0/24 via 10.250.0.12 dev uplink proto {PROTO}"
        )),
        "{during}"
    );
    assert!(
        during.contains("10.244.0.0/24 dev podbr proto kernel"),
        "{during}"
    );
    assert!(!during.contains("10.244.2.0/24"), "{during}");

    // A second sync with nothing changed changes nothing.
    let again = ns.run(|| podroutes::sync(&want)).expect("sync again");
    assert!(
        again.added.is_empty() && again.removed.is_empty(),
        "{again:?}"
    );

    // The agent's cleanup on exit: only hull's route goes.
    let gone = ns.run(podroutes::clear).expect("clear");
    assert_eq!(gone, vec!["10.244.1.0/24".parse().expect("net")]);
    assert_eq!(routes(&ns), before);
}
