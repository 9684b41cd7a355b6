//! The full sync's netlink path (skeleton by `nft -f`, elements over netlink,
//! hooks swapped in): it leaves the table a plain `nft -f` of the whole text
//! leaves; it alternates between hull's two table names with exactly one in
//! the kernel afterwards; a refused element fails it whole, with the live
//! table untouched and nothing left behind.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Netns, live, normalized, service, slice};
use hull_proxy::element::{Key, Verdict};
use hull_proxy::model::Protocol;
use hull_proxy::syncer::{Outcome, Syncer};
use hull_proxy::{apply, fullsync, model, netlink, nft};
use serde_json::json;

fn node_info() -> model::NodeInfo {
    model::NodeInfo {
        name: "node-a".into(),
        addresses: vec!["192.168.78.1".parse().expect("ip")],
        pod_cidrs: vec![
            ("10.244.0.0".parse().expect("ip"), 16),
            ("fd00:244::".parse().expect("ip"), 64),
        ],
        localhost_nodeports: true,
        zone: None,
    }
}

/// Many Services of every shape, enough that each map spans several netlink
/// messages (a message holds ~800 elements).
fn rule_set() -> model::RuleSet {
    let mut svcs = Vec::new();
    let mut slices = Vec::new();
    for i in 0..1500u32 {
        let name = format!("s{i}");
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        let mut spec =
            json!({"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80}]});
        match i % 6 {
            1 => spec["type"] = json!("NodePort"),
            2 => spec["externalIPs"] = json!([format!("192.0.2.{}", i % 250 + 1)]),
            3 => {
                spec["sessionAffinity"] = json!("ClientIP");
                spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 60}});
            }
            4 => {
                spec["type"] = json!("NodePort");
                spec["externalTrafficPolicy"] = json!("Local");
            }
            _ => {}
        }
        if i % 6 == 1 || i % 6 == 4 {
            spec["ports"][0]["nodePort"] = json!(30000 + i);
        }
        svcs.push(service("ns", &name, spec));
        // Every 10th Service has no endpoints (REJECT map); the rest 1..=3.
        if i % 10 != 0 {
            let eps: Vec<String> = (0..(i % 3 + 1))
                .map(|k| format!("10.244.{}.{}", i / 200, (i % 200) + k + 2))
                .collect();
            let v: Vec<(&str, bool, &str)> = eps
                .iter()
                .map(|e| {
                    (
                        e.as_str(),
                        true,
                        if i % 2 == 0 { "node-a" } else { "node-b" },
                    )
                })
                .collect();
            let mut sl = slice("ns", &name, "http", 8080, &v);
            sl.metadata.name = Some(format!("{name}-x"));
            slices.push(sl);
        }
    }
    let v6 = service(
        "ns",
        "v6",
        json!({"clusterIP": "fd00:96::7", "clusterIPs": ["fd00:96::7"], "ipFamilies": ["IPv6"], "ports": [{"name": "http", "port": 80}]}),
    );
    let mut sl6 = slice("ns", "v6", "http", 8080, &[("fd00:244::5", true, "node-a")]);
    sl6.metadata.name = Some("v6-x".into());
    sl6.address_type = "IPv6".into();
    svcs.push(v6);
    slices.push(sl6);
    let rs = model::build(&svcs, &slices, &node_info());
    assert!(rs.skipped.is_empty(), "{:?}", rs.skipped);
    rs
}

fn full_sync(ns: &Netns, sy: &mut Syncer, rs: &model::RuleSet) -> Outcome {
    let mut s = std::mem::replace(sy, Syncer::new(node_info(), Duration::ZERO));
    let rs = rs.clone();
    let (s, r) = ns.run(move || {
        let r = s.sync(&rs);
        (s, r)
    });
    *sy = s;
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn hull_tables(ns: &Netns, f: nft::Family) -> Vec<&'static str> {
    ns.run(move || fullsync::tables(f))
        .expect("nft list chains")
        .0
        .into_iter()
        .collect()
}

#[test]
fn full_sync_over_netlink_matches_the_text_and_swaps_tables() {
    let rs = rule_set();
    let ns = Netns::new("fs");
    let reference = Netns::new("fs-ref");
    let text = nft::render(&rs, &node_info());
    reference.run(move || apply::nft_apply(&text).unwrap_or_else(|e| panic!("{e}")));
    let want = normalized(&reference);

    // Every sync is a full one (period zero): each swaps to the other name.
    let mut sy = Syncer::new(node_info(), Duration::ZERO);
    let mut seen = Vec::new();
    for _ in 0..3 {
        assert_eq!(full_sync(&ns, &mut sy, &rs), Outcome::Full);
        for f in [nft::Family::V4, nft::Family::V6] {
            let t = live(&ns, f);
            assert_eq!(hull_tables(&ns, f), vec![t], "one hull table after a swap");
            if f == nft::Family::V4 {
                seen.push(t);
            }
        }
        assert!(
            normalized(&ns) == want,
            "netlink full sync differs from nft -f"
        );
    }
    assert_eq!(seen, vec!["hull-proxy", "hull-proxy-b", "hull-proxy"]);

    // A new syncer (a restarted proxy) finds the live table itself.
    let mut fresh = Syncer::new(node_info(), Duration::MAX);
    assert_eq!(full_sync(&ns, &mut fresh, &rs), Outcome::Full);
    assert_eq!(live(&ns, nft::Family::V4), "hull-proxy-b");
    assert!(normalized(&ns) == want);

    ns.run(|| apply::cleanup().expect("cleanup"));
    for f in [nft::Family::V4, nft::Family::V6] {
        assert!(hull_tables(&ns, f).is_empty(), "--cleanup left a table");
    }
}

#[test]
fn refused_elements_fail_whole_and_leave_the_live_table() {
    let rs = rule_set();
    let ns = Netns::new("fs-bad");
    let mut sy = Syncer::new(node_info(), Duration::MAX);
    assert_eq!(full_sync(&ns, &mut sy, &rs), Outcome::Full);
    let before = normalized(&ns);
    let live_before = live(&ns, nft::Family::V4);

    // A state whose one element jumps to a chain that does not exist: the
    // skeleton loads, the kernel refuses that element.
    let mut state = nft::State::build(&rs.ports, &node_info(), None);
    let mut port = nft::fragment(&rs.ports[0], &[], nft::Family::V4);
    port.maps[0].push((
        Key {
            addr: Some("10.99.0.1".parse().expect("ip")),
            proto: Protocol::Tcp,
            port: 80,
        },
        Verdict::Chain("no-such-chain".into()),
    ));
    state.ports.insert(
        "zz/bad".into(),
        Arc::new(hull_proxy::state::Port {
            rule: rs.ports[0].clone(),
            v4: port,
            v6: nft::Fragment::default(),
        }),
    );
    let err = ns
        .run(move || fullsync::apply(&mut state, Some(live_before)))
        .expect_err("the kernel must refuse a goto to a missing chain");
    match &err {
        apply::ApplyError::Netlink(netlink::NetlinkError::Refused { set, .. }) => {
            assert_eq!(set, "service-ips", "{err}")
        }
        e => panic!("want a refused element, got {e}"),
    }
    assert!(
        normalized(&ns) == before,
        "a failed full sync changed the live table"
    );
    for f in [nft::Family::V4, nft::Family::V6] {
        assert_eq!(
            hull_tables(&ns, f),
            vec![live_before],
            "the unfinished table was left behind"
        );
    }
}
