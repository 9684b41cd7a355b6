//! Incremental syncs: after any sequence of changes, the table an incremental
//! transaction leaves in the kernel is the one a full rewrite would have written;
//! affinity state of untouched endpoints survives; a failed incremental sync is
//! followed by a full one that repairs drift.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::{Netns, live, normalized, service, slice};
use hull_proxy::ports::Ports;
use hull_proxy::syncer::{Outcome, Syncer};
use hull_proxy::{apply, model, nft};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

fn node_info() -> model::NodeInfo {
    model::NodeInfo {
        name: "node-a".into(),
        addresses: vec!["192.168.77.1".parse().expect("ip")],
        pod_cidrs: vec![
            ("10.244.0.0".parse().expect("ip"), 16),
            ("fd00:244::".parse().expect("ip"), 64),
        ],
        localhost_nodeports: true,
        zone: None,
    }
}

fn apply_full(ns: &Netns, rs: &model::RuleSet) {
    let text = nft::render(rs, &node_info());
    ns.run(move || apply::nft_apply(&text).unwrap_or_else(|e| panic!("{e}")));
}

fn run_sync(
    ns: &Netns,
    sy: &mut Syncer,
    rs: &model::RuleSet,
) -> Result<Outcome, apply::ApplyError> {
    let mut s = std::mem::replace(sy, Syncer::new(node_info(), Duration::MAX));
    let rs = rs.clone();
    let (s, r) = ns.run(move || {
        let r = s.sync(&rs);
        (s, r)
    });
    *sy = s;
    r
}

fn svc(name: &str, ip: &str, extra: Value) -> Service {
    let mut spec =
        json!({"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    service("ns", name, spec)
}

fn eps(name: &str, ips: &[&str]) -> EndpointSlice {
    let v: Vec<(&str, bool, &str)> = ips.iter().map(|ip| (*ip, true, "node-a")).collect();
    slice("ns", name, "http", 8080, &v)
}

/// A sequence of cluster states touching every kind of change: endpoints added,
/// removed and turned not-ready; Services added and deleted; affinity switched on,
/// its timeout changed and switched off; NodePorts, externalIPs, Local policies,
/// dual stack; everything deleted and re-added.
fn steps() -> Vec<(Vec<Service>, Vec<EndpointSlice>)> {
    let a = |extra| svc("a", "10.96.1.1", extra);
    let b = |extra| svc("b", "10.96.1.2", extra);
    let c = svc(
        "c",
        "10.96.1.3",
        json!({"type": "NodePort", "externalTrafficPolicy": "Local",
               "ports": [{"name": "http", "port": 80, "nodePort": 30080}], "externalIPs": ["203.0.113.7"]}),
    );
    let d = svc("d", "10.96.1.4", json!({}));
    let dual = service(
        "ns",
        "dual",
        json!({"clusterIPs": ["10.96.1.5", "fd00:96::5"], "ipFamilies": ["IPv4", "IPv6"],
               "ports": [{"name": "http", "port": 80}]}),
    );
    let mut dual6 = eps("dual", &["fd00:244::2"]);
    dual6.address_type = "IPv6".into();
    dual6.metadata.name = Some("dual-v6".into());
    let aff = |t: u32| json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": t}}});
    vec![
        (
            vec![a(json!({})), b(aff(60)), c.clone(), d.clone()],
            vec![
                eps("a", &["10.244.1.2", "10.244.1.3", "10.244.1.4"]),
                eps("b", &["10.244.2.2", "10.244.2.3"]),
                eps("c", &["10.244.3.2"]),
            ],
        ),
        // a loses an endpoint, d gets one, a dual-stack Service appears.
        (
            vec![a(json!({})), b(aff(60)), c.clone(), d.clone(), dual.clone()],
            vec![
                eps("a", &["10.244.1.2", "10.244.1.3"]),
                eps("b", &["10.244.2.2", "10.244.2.3"]),
                eps("c", &["10.244.3.2"]),
                eps("d", &["10.244.4.2"]),
                eps("dual", &["10.244.5.2"]),
                dual6.clone(),
            ],
        ),
        // b's timeout changes and one of its endpoints goes; c is deleted; a
        // becomes internalTrafficPolicy Local with endpoints on another node only.
        (
            vec![
                a(json!({"internalTrafficPolicy": "Local"})),
                b(aff(120)),
                d.clone(),
                dual.clone(),
            ],
            vec![
                slice(
                    "ns",
                    "a",
                    "http",
                    8080,
                    &[
                        ("10.244.1.2", true, "node-b"),
                        ("10.244.1.3", true, "node-b"),
                    ],
                ),
                eps("b", &["10.244.2.2"]),
                eps("d", &["10.244.4.2"]),
                eps("dual", &["10.244.5.2"]),
                dual6,
            ],
        ),
        // b loses affinity, d loses its endpoints (REJECT), c comes back.
        (
            vec![a(json!({})), b(json!({})), c.clone(), d.clone()],
            vec![
                eps("a", &["10.244.1.2"]),
                eps("b", &["10.244.2.2"]),
                eps("c", &["10.244.3.2"]),
            ],
        ),
        // Everything gone, then back.
        (vec![], vec![]),
        (
            vec![a(json!({})), b(aff(60)), c, d],
            vec![
                eps("a", &["10.244.1.2"]),
                eps("b", &["10.244.2.2", "10.244.2.3"]),
            ],
        ),
    ]
}

#[test]
fn incremental_syncs_leave_what_a_full_sync_writes() {
    let inc = Netns::new("inc");
    let full = Netns::new("full");
    // The daemon's path beside it: Ports updated per Service, the applied state
    // changed in place by the changed port ids.
    let daemon = Netns::new("inc-d");
    let mut sy = Syncer::new(node_info(), Duration::MAX);
    let mut dsy = Some(Syncer::new(node_info(), Duration::MAX));
    let mut ports = Some(Ports::new(node_info()));
    let mut names: BTreeSet<String> = BTreeSet::new();
    for (i, (svcs, slices)) in steps().into_iter().enumerate() {
        let rs = model::build(&svcs, &slices, &node_info());
        assert!(rs.skipped.is_empty(), "step {i}: {:?}", rs.skipped);
        let outcome = run_sync(&inc, &mut sy, &rs).unwrap_or_else(|e| panic!("step {i}: {e}"));
        let want = if i == 0 {
            Outcome::Full
        } else {
            Outcome::Partial
        };
        assert_eq!(outcome, want, "step {i}");

        let mut p = ports.take().expect("ports");
        names.extend(svcs.iter().filter_map(|s| s.metadata.name.clone()));
        let mut changed = BTreeSet::new();
        for name in &names {
            let svc = svcs.iter().find(|s| s.metadata.name.as_ref() == Some(name));
            let mine: Vec<_> = slices
                .iter()
                .filter(|s| model::slice_service(s) == Some(("ns", name.as_str())))
                .collect();
            changed.extend(p.update(("ns".into(), name.clone()), svc, &mine));
        }
        let mut d = dsy.take().expect("syncer");
        let (d, p, outcome) = daemon.run(move || {
            let ids = (i > 0).then_some(&changed);
            let o = d.sync_ports(&p, ids);
            (d, p, o)
        });
        assert_eq!(
            outcome.unwrap_or_else(|e| panic!("step {i}: {e}")),
            want,
            "step {i} (in place)"
        );
        (dsy, ports) = (Some(d), Some(p));

        apply_full(&full, &rs);
        let (a, b) = (normalized(&inc), normalized(&full));
        assert!(
            normalized(&daemon) == b,
            "step {i}: the in-place path differs from a full sync"
        );
        assert!(
            i == 4 || a.keys().any(|k| k.starts_with("rules ip svc-")),
            "step {i}: the listing has no service chains: {a:?}"
        );
        for k in a.keys().chain(b.keys()) {
            assert_eq!(
                a.get(k),
                b.get(k),
                "step {i}: {k} differs (incremental vs full)"
            );
        }
        // The same state again writes nothing.
        assert_eq!(
            run_sync(&inc, &mut sy, &rs).expect("resync"),
            Outcome::Unchanged
        );
    }
}

#[test]
fn affinity_survives_unrelated_changes_and_drift_is_repaired() {
    let ns = Netns::new("drift");
    let mut sy = Syncer::new(node_info(), Duration::MAX);
    let aff = json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}});
    let b = svc("b", "10.96.1.2", aff);
    let b_eps = eps("b", &["10.244.2.2", "10.244.2.3"]);
    let rs1 = model::build(
        std::slice::from_ref(&b),
        std::slice::from_ref(&b_eps),
        &node_info(),
    );
    assert_eq!(run_sync(&ns, &mut sy, &rs1).expect("sync"), Outcome::Full);

    // A client pinned to an endpoint (what the endpoint chain records).
    let set = "aff-ns/b/tcp/http/10.244.2.2/8080/600s";
    ns.exec(&[
        "nft",
        "add",
        "element",
        "ip",
        live(&ns, nft::Family::V4),
        set,
        "{ 192.168.9.9 }",
    ]);
    let has_client = |ns: &Netns| {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                "nft",
                "list",
                "set",
                "ip",
                live(ns, nft::Family::V4),
                set,
            ])
            .output()
            .expect("list set");
        String::from_utf8_lossy(&o.stdout).contains("192.168.9.9")
    };
    assert!(has_client(&ns));

    // Another Service comes and goes: b's sets are not touched.
    let a = svc("a", "10.96.1.1", json!({}));
    let a_eps = eps("a", &["10.244.1.2"]);
    let rs2 = model::build(&[a, b.clone()], &[a_eps, b_eps.clone()], &node_info());
    assert_eq!(
        run_sync(&ns, &mut sy, &rs2).expect("sync"),
        Outcome::Partial
    );
    assert_eq!(
        run_sync(&ns, &mut sy, &rs1).expect("sync"),
        Outcome::Partial
    );
    assert!(
        has_client(&ns),
        "affinity state lost by an unrelated change"
    );

    // Drift: someone deletes b's map element by hand. An incremental sync that
    // has to delete it (b loses its endpoints: its address moves to the REJECT
    // map) fails whole, the previous rules stay, and the next sync rewrites the
    // table, repairing the drift.
    ns.exec(&[
        "nft",
        "delete",
        "element",
        "ip",
        live(&ns, nft::Family::V4),
        "service-ips",
        "{ 10.96.1.2 . tcp . 80 }",
    ]);
    let rs3 = model::build(std::slice::from_ref(&b), [], &node_info());
    let before = normalized(&ns);
    let r = run_sync(&ns, &mut sy, &rs3);
    assert!(matches!(r, Err(apply::ApplyError::Refused { .. })), "{r:?}");
    assert_eq!(normalized(&ns), before, "a failed sync changed the table");
    assert!(!sy.has_applied());
    assert_eq!(run_sync(&ns, &mut sy, &rs3).expect("repair"), Outcome::Full);
    let full = Netns::new("drift-ref");
    apply_full(&full, &rs3);
    assert_eq!(normalized(&ns), normalized(&full));

    // A full-sync period of zero makes every sync a full one.
    let mut always = Syncer::new(node_info(), Duration::ZERO);
    assert_eq!(
        run_sync(&ns, &mut always, &rs1).expect("sync"),
        Outcome::Full
    );
    assert_eq!(
        run_sync(&ns, &mut always, &rs1).expect("sync"),
        Outcome::Full
    );
}
