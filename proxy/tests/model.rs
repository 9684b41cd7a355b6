//! The pure rule model and its rendering, on many Service shapes.

mod common;

use common::{service, slice};
use hull_proxy::model::{self, NodeInfo, Protocol};
use hull_proxy::nft;
use serde_json::json;

fn node() -> NodeInfo {
    NodeInfo {
        name: "n1".into(),
        addresses: vec!["192.168.1.10".parse().expect("ip")],
        pod_cidrs: vec![
            ("10.244.0.0".parse().expect("ip"), 16),
            ("fd00:244::".parse().expect("ip"), 64),
        ],
        localhost_nodeports: true,
        zone: None,
    }
}

#[test]
fn named_target_port_comes_from_the_slice() {
    let svc = service(
        "ns",
        "a",
        json!({"clusterIP": "10.96.0.5", "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}),
    );
    let sl = slice("ns", "a", "http", 8080, &[("10.244.0.2", true, "n1")]);
    let rs = model::build(&[svc], &[sl], &node());
    assert_eq!(rs.ports.len(), 1);
    assert_eq!(rs.ports[0].endpoints[0].port, 8080);
    assert_eq!(rs.ports[0].protocol, Protocol::Tcp);
    assert!(rs.ports[0].endpoints[0].local);
}

#[test]
fn slices_of_other_ports_names_or_namespaces_do_not_match() {
    let svc = service(
        "ns",
        "a",
        json!({"clusterIP": "10.96.0.5", "ports": [{"name": "http", "port": 80}]}),
    );
    let other_port = slice("ns", "a", "metrics", 9090, &[("10.244.0.2", true, "n1")]);
    let other_ns = slice("other", "a", "http", 80, &[("10.244.0.3", true, "n1")]);
    let rs = model::build(&[svc], &[other_port, other_ns], &node());
    assert!(rs.ports[0].endpoints.is_empty());
    let text = nft::render(&rs, &node());
    assert!(
        text.contains("10.96.0.5 . tcp . 80 : goto reject-chain"),
        "{text}"
    );
}

#[test]
fn headless_and_external_name_get_no_rules() {
    let h = service(
        "ns",
        "h",
        json!({"clusterIP": "None", "ports": [{"port": 80}]}),
    );
    let e = service(
        "ns",
        "e",
        json!({"type": "ExternalName", "externalName": "x.example"}),
    );
    let rs = model::build(&[h, e], &[], &node());
    assert!(rs.ports.is_empty() && rs.skipped.is_empty());
}

#[test]
fn bad_fields_are_skipped_with_their_path() {
    let bad_ip = service(
        "ns",
        "b",
        json!({"clusterIP": "10.96.0.300", "ports": [{"port": 80}]}),
    );
    let bad_proto = service(
        "ns",
        "c",
        json!({"clusterIP": "10.96.0.7", "ports": [{"port": 80, "protocol": "ICMP"}, {"name": "ok", "port": 81}]}),
    );
    let bad_port = service(
        "ns",
        "d",
        json!({"clusterIP": "10.96.0.8", "ports": [{"port": 70000}]}),
    );
    let rs = model::build(&[bad_ip, bad_proto, bad_port], &[], &node());
    let reasons: Vec<String> = rs
        .skipped
        .iter()
        .map(|s| format!("{}: {}", s.object, s.reason))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("service ns/b") && r.contains("spec.clusterIPs")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("service ns/c") && r.contains("spec.ports[0].protocol")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("service ns/d") && r.contains("spec.ports[0].port")),
        "{reasons:?}"
    );
    // The good port of ns/c is still programmed.
    assert_eq!(rs.ports.len(), 1);
    assert_eq!(rs.ports[0].port, 81);
}

#[test]
fn node_port_only_for_node_port_and_load_balancer_types() {
    let cip = service(
        "ns",
        "a",
        json!({"clusterIP": "10.96.0.5", "ports": [{"port": 80, "nodePort": 30001}]}),
    );
    let np = service(
        "ns",
        "b",
        json!({"type": "NodePort", "clusterIP": "10.96.0.6", "ports": [{"port": 80, "nodePort": 30002}]}),
    );
    let mut lb = service(
        "ns",
        "c",
        json!({"type": "LoadBalancer", "clusterIP": "10.96.0.7", "ports": [{"port": 80, "nodePort": 30003}]}),
    );
    lb.status = serde_json::from_value(
        json!({"loadBalancer": {"ingress": [{"ip": "192.168.1.10"}, {"ip": "203.0.113.9"}]}}),
    )
    .expect("status");
    let slices: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|s| slice("ns", s, "", 8080, &[("10.244.0.2", true, "n1")]))
        .collect();
    let rs = model::build(&[cip, np, lb], &slices, &node());
    let by: Vec<(String, Option<u16>)> = rs
        .ports
        .iter()
        .map(|p| (p.name.clone(), p.node_port))
        .collect();
    assert_eq!(
        by,
        vec![
            ("a".into(), None),
            ("b".into(), Some(30002)),
            ("c".into(), Some(30003))
        ]
    );
    // LB ingress other than the node's own address is an external IP.
    assert_eq!(
        rs.ports[2].external_ips,
        vec!["203.0.113.9".parse::<std::net::IpAddr>().expect("ip")]
    );
    let text = nft::render(&rs, &node());
    // Policy Cluster: the shared pick chains of the external kinds (always
    // masqueraded), with the endpoints in the endpoint maps under the same key.
    for want in [
        "tcp . 30002 : goto pick-nodeport-1",
        "map nodeport-endpoints-0 { type inet_proto . inet_service : ipv4_addr . inet_service; elements = { tcp . 30002 : 10.244.0.2 . 8080,\n\t\ttcp . 30003 : 10.244.0.2 . 8080 } }",
        "203.0.113.9 . tcp . 80 : goto pick-external-1",
        "203.0.113.9 . tcp . 80 : 10.244.0.2 . 8080",
        "chain pick-nodeport-1 {\n\t\tjump mark-for-masquerade\n\t\tgoto nodeport-slot-0\n\t}",
        "chain nodeport-slot-0 {\n\t\tdnat ip to meta l4proto . th dport map @nodeport-endpoints-0\n\t}",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    assert!(!text.contains("30001"));
}

#[test]
fn readiness_and_terminating_fallback() {
    let svc = service(
        "ns",
        "a",
        json!({"clusterIP": "10.96.0.5", "ports": [{"port": 80}]}),
    );
    let mut sl = slice(
        "ns",
        "a",
        "",
        80,
        &[
            ("10.244.0.2", true, "n1"),
            ("10.244.0.3", false, "n1"),
            ("10.244.0.4", false, "n2"),
        ],
    );
    sl.endpoints[2].conditions =
        serde_json::from_value(json!({"ready": false, "serving": true, "terminating": true}))
            .expect("c");
    let rs = model::build(
        std::slice::from_ref(&svc),
        std::slice::from_ref(&sl),
        &node(),
    );
    let ips: Vec<String> = rs.ports[0]
        .cluster_endpoints()
        .iter()
        .map(|e| e.ip.to_string())
        .collect();
    assert_eq!(ips, vec!["10.244.0.2"], "ready only while any is ready");
    sl.endpoints[0].conditions =
        serde_json::from_value(json!({"ready": false, "serving": false, "terminating": true}))
            .expect("c");
    let rs = model::build(&[svc], &[sl], &node());
    let ips: Vec<String> = rs.ports[0]
        .cluster_endpoints()
        .iter()
        .map(|e| e.ip.to_string())
        .collect();
    assert_eq!(
        ips,
        vec!["10.244.0.4"],
        "serving+terminating as the fallback"
    );
}

#[test]
fn local_traffic_policies() {
    let svc = service(
        "ns",
        "a",
        json!({"type": "NodePort", "clusterIP": "10.96.0.5", "internalTrafficPolicy": "Local", "externalTrafficPolicy": "Local",
        "ports": [{"port": 80, "nodePort": 30080}]}),
    );
    let sl = slice(
        "ns",
        "a",
        "",
        80,
        &[("10.244.0.2", true, "n1"), ("10.244.1.2", true, "n2")],
    );
    let rs = model::build(
        std::slice::from_ref(&svc),
        std::slice::from_ref(&sl),
        &node(),
    );
    let text = nft::render(&rs, &node());
    assert!(
        text.contains("10.96.0.5 . tcp . 80 : goto local-ns/a/tcp/_"),
        "{text}"
    );
    assert!(text.contains("chain local-ns/a/tcp/_"), "{text}");
    assert!(
        text.contains("fib saddr type local goto svc-ns/a/tcp/_"),
        "{text}"
    );
    // On a node with no local endpoint: internal traffic is dropped, not rejected.
    let other = NodeInfo {
        name: "n3".into(),
        ..node()
    };
    let rs = model::build(&[svc], &[sl], &other);
    let text = nft::render(&rs, &other);
    assert!(text.contains("10.96.0.5 . tcp . 80 : drop"), "{text}");
    assert!(text.contains("tcp . 30080 : drop"), "{text}");
}

#[test]
fn affinity_sets_and_masquerade_rules() {
    let svc = service(
        "ns",
        "a",
        json!({"clusterIP": "10.96.0.5", "sessionAffinity": "ClientIP", "ports": [{"port": 53, "protocol": "UDP"}]}),
    );
    let sl = {
        let mut s = slice("ns", "a", "", 5353, &[("10.244.0.2", true, "n1")]);
        if let Some(p) = s.ports.as_mut().and_then(|p| p.first_mut()) {
            p.protocol = Some("UDP".into());
        }
        s
    };
    let rs = model::build(&[svc], &[sl], &node());
    assert_eq!(
        rs.ports[0].affinity_timeout,
        Some(10800),
        "kube's default timeout"
    );
    let text = nft::render(&rs, &node());
    assert!(text.contains("set aff-ns/a/udp/_/10.244.0.2/5353/10800s { type ipv4_addr; flags dynamic,timeout; timeout 10800s; }"), "{text}");
    assert!(
        text.contains("update @aff-ns/a/udp/_/10.244.0.2/5353/10800s { ip saddr }"),
        "{text}"
    );
    assert!(
        text.contains("ip daddr 10.96.0.5 ip saddr != 10.244.0.0/16 jump mark-for-masquerade"),
        "{text}"
    );
    assert!(
        text.contains("meta l4proto udp dnat to 10.244.0.2:5353"),
        "{text}"
    );
}

#[test]
fn dual_stack_renders_each_family_in_its_table() {
    let svc = service(
        "ns",
        "a",
        json!({"clusterIPs": ["10.96.0.5", "fd00:96::5"], "ports": [{"port": 80}]}),
    );
    let mut v6 = slice("ns", "a-v6", "", 80, &[("fd00:244::2", true, "n1")]);
    v6.address_type = "IPv6".into();
    if let Some(l) = v6.metadata.labels.as_mut() {
        l.insert("kubernetes.io/service-name".into(), "a".into());
    }
    let v4 = slice("ns", "a", "", 80, &[("10.244.0.2", true, "n1")]);
    let rs = model::build(&[svc], &[v4, v6], &node());
    let text = nft::render(&rs, &node());
    let (t4, t6) = text.split_at(text.find("table ip6 hull-proxy {").expect("ip6 table"));
    assert!(
        t4.contains("10.96.0.5 . tcp . 80 : 10.244.0.2 . 80")
            && t4.contains(
                "set hairpin { type ipv4_addr . ipv4_addr; elements = { 10.244.0.2 . 10.244.0.2 } }"
            )
            && !t4.contains("fd00"),
        "{t4}"
    );
    assert!(
        t6.contains("fd00:96::5 . tcp . 80 : fd00:244::2 . 80")
            && t6.contains("dnat ip6 to ip6 daddr . meta l4proto . th dport map @endpoints-0")
            && t6
                .contains("ct status dnat ip6 saddr . ip6 daddr @hairpin jump mark-for-masquerade")
            && !t6.contains("10.244.0.2"),
        "{t6}"
    );
    assert!(t6.contains("ip6 daddr != ::1"), "no NodePorts on ::1");
}

#[test]
fn rendering_is_deterministic() {
    let a = service(
        "ns",
        "a",
        json!({"clusterIP": "10.96.0.5", "ports": [{"port": 80}]}),
    );
    let b = service(
        "ns",
        "b",
        json!({"clusterIP": "10.96.0.6", "ports": [{"port": 80}]}),
    );
    let sa = slice(
        "ns",
        "a",
        "",
        80,
        &[("10.244.0.3", true, "n1"), ("10.244.0.2", true, "n1")],
    );
    let r1 = nft::render(
        &model::build(&[a.clone(), b.clone()], std::slice::from_ref(&sa), &node()),
        &node(),
    );
    let r2 = nft::render(&model::build(&[b, a], &[sa], &node()), &node());
    assert_eq!(r1, r2);
}

#[test]
fn shared_pick_chain_draws_from_the_endpoint_map() {
    let mk = |name: &str, ip: &str| {
        service(
            "ns",
            name,
            json!({"clusterIP": ip, "ports": [{"port": 80}]}),
        )
    };
    let three = [
        ("10.244.0.2", true, "n1"),
        ("10.244.0.3", true, "n1"),
        ("10.244.0.4", true, "n1"),
    ];
    let sa = slice("ns", "a", "", 80, &three);
    let sb = slice("ns", "b", "", 8080, &three);
    let rs = model::build(
        &[mk("a", "10.96.0.5"), mk("b", "10.96.0.6")],
        &[sa, sb],
        &node(),
    );
    let text = nft::render(&rs, &node());
    for want in [
        "10.96.0.5 . tcp . 80 : goto pick-3",
        "10.96.0.6 . tcp . 80 : goto pick-3",
        "map endpoints-0 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; elements = { 10.96.0.5 . tcp . 80 : 10.244.0.2 . 80,\n\t\t10.96.0.6 . tcp . 80 : 10.244.0.2 . 8080 } }",
        "map endpoints-1 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; elements = { 10.96.0.5 . tcp . 80 : 10.244.0.3 . 80,\n\t\t10.96.0.6 . tcp . 80 : 10.244.0.3 . 8080 } }",
        "map endpoints-2 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; elements = { 10.96.0.5 . tcp . 80 : 10.244.0.4 . 80,\n\t\t10.96.0.6 . tcp . 80 : 10.244.0.4 . 8080 } }",
        "\tchain pick-3 {\n\t\tip saddr != 10.244.0.0/16 jump mark-for-masquerade\n\t\tnumgen random mod 3 vmap { 0 : goto slot-0, 1 : goto slot-1, 2 : goto slot-2 }\n\t}",
        "\tchain slot-2 {\n\t\tdnat ip to ip daddr . meta l4proto . th dport map @endpoints-2\n\t}",
        "10.244.0.2 . 10.244.0.2,\n\t\t10.244.0.3 . 10.244.0.3,\n\t\t10.244.0.4 . 10.244.0.4 }",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    assert_eq!(
        text.matches("chain pick-3 {").count(),
        1,
        "one chain for both"
    );
    assert!(
        !text.contains("chain svc-") && !text.contains("chain ep-"),
        "no per-service chains without affinity or Local external traffic"
    );
}

/// The incremental path (per-Service rebuild, state updated by the changed ids)
/// ends where a rebuild from every object ends, step after step: the same ports,
/// the same full rule set text, the same shared pick chains and hairpin set.
#[test]
fn incremental_ports_and_state_match_a_rebuild() {
    use hull_proxy::ports::Ports;
    use hull_proxy::state::State;
    use std::collections::BTreeSet;

    let n = node();
    let svc = |name: &str, ip: &str, extra: serde_json::Value| {
        let mut spec = json!({"clusterIP": ip, "ports": [{"port": 80}]});
        if let (Some(m), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        service("ns", name, spec)
    };
    let eps = |name: &str, ips: &[&str]| {
        let v: Vec<(&str, bool, &str)> = ips.iter().map(|ip| (*ip, true, "n1")).collect();
        slice("ns", name, "", 8080, &v)
    };
    let mut svcs = vec![
        svc("a", "10.96.0.1", json!({})),
        svc("b", "10.96.0.2", json!({"sessionAffinity": "ClientIP"})),
        svc(
            "c",
            "10.96.0.3",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
        ),
    ];
    let mut slices = vec![
        eps("a", &["10.244.0.2", "10.244.0.3"]),
        eps("b", &["10.244.0.3"]),
        eps("c", &["10.244.0.4", "10.244.0.5"]),
    ];
    let mut ports = Ports::new(n.clone());
    ports.rebuild(&svcs, &slices);
    let mut state = State::build(ports.iter(), &n, None);
    let check = |ports: &Ports, state: &State, svcs: &[_], slices: &[_], step: &str| {
        let rs = model::build(svcs, slices, &n);
        let from_ports: Vec<_> = ports.iter().cloned().collect();
        assert_eq!(from_ports, rs.ports, "{step}: ports");
        let fresh = State::build(&rs.ports, &n, None);
        assert_eq!(state.render_full(), fresh.render_full(), "{step}: text");
        assert_eq!(state.shared, fresh.shared, "{step}: shared counts");
    };
    check(&ports, &state, &svcs, &slices, "start");

    let step = |ports: &mut Ports,
                state: &mut State,
                svcs: &[k8s_openapi::api::core::v1::Service],
                slices: &[k8s_openapi::api::discovery::v1::EndpointSlice],
                name: &str| {
        let s = svcs
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name));
        let mine: Vec<_> = slices
            .iter()
            .filter(|s| model::slice_service(s) == Some(("ns", name)))
            .collect();
        let ids: BTreeSet<String> = ports
            .update(("ns".into(), name.into()), s, &mine)
            .into_iter()
            .collect();
        let prev = state.clone();
        *state = State::update(state, ids.iter().map(|id| (id.as_str(), ports.get(id))));
        // Looking at the changed ids only finds what a walk over every port finds.
        assert_eq!(
            state.render_diff_of(&prev, Some(&ids)),
            state.render_diff(&prev),
            "{name}: diff"
        );
        // The daemon's path: the same change made in place, diffed from what it
        // replaced, gives the same state and the same transaction.
        let mut in_place = prev.clone();
        let before = in_place.change(ids.iter().map(|id| (id.as_str(), ports.get(id))));
        assert_eq!(
            in_place.render_diff_since(&before),
            state.render_diff(&prev),
            "{name}: in place"
        );
        assert_eq!(
            in_place.render_full(),
            state.render_full(),
            "{name}: in-place state"
        );
        assert_eq!(in_place.shared, state.shared, "{name}: in-place counts");
        ids
    };
    // An endpoint leaves a (the last user of the 2-endpoint pick chain for a while).
    slices[0] = eps("a", &["10.244.0.2"]);
    let ids = step(&mut ports, &mut state, &svcs, &slices, "a");
    assert_eq!(ids.len(), 1);
    check(&ports, &state, &svcs, &slices, "a shrinks");
    // Nothing changed for b: no ids.
    assert!(step(&mut ports, &mut state, &svcs, &slices, "b").is_empty());
    // c loses all endpoints (reject), then a new Service d appears, then b goes.
    slices[2] = eps("c", &[]);
    step(&mut ports, &mut state, &svcs, &slices, "c");
    check(&ports, &state, &svcs, &slices, "c empty");
    svcs.push(svc("d", "10.96.0.4", json!({})));
    slices.push(eps("d", &["10.244.0.9", "10.244.0.2", "10.244.0.3"]));
    step(&mut ports, &mut state, &svcs, &slices, "d");
    check(&ports, &state, &svcs, &slices, "d added");
    svcs.remove(1);
    slices.remove(1);
    step(&mut ports, &mut state, &svcs, &slices, "b");
    check(&ports, &state, &svcs, &slices, "b deleted");
}

/// Topology hints as kube-proxy honours them: only when every ready endpoint has
/// them and one names this node's zone (or this node); otherwise all endpoints.
#[test]
fn topology_hints_narrow_cluster_traffic_only_when_complete() {
    use k8s_openapi::api::discovery::v1::{EndpointHints, ForNode, ForZone};
    let svc = service(
        "ns",
        "a",
        json!({"type": "NodePort", "clusterIP": "10.96.0.5", "ports": [{"port": 80, "nodePort": 30080}]}),
    );
    let hinted = |zones: &[Option<&str>], nodes: &[Option<&str>]| {
        let mut sl = slice(
            "ns",
            "a",
            "",
            80,
            &[
                ("10.244.0.2", true, "n1"),
                ("10.244.1.2", true, "n2"),
                ("10.244.2.2", true, "n3"),
            ],
        );
        for ((ep, z), n) in sl.endpoints.iter_mut().zip(zones).zip(nodes) {
            ep.hints = Some(EndpointHints {
                for_zones: z.map(|z| vec![ForZone { name: z.into() }]),
                for_nodes: n.map(|n| vec![ForNode { name: n.into() }]),
            });
        }
        sl
    };
    let in_zone = |zone: Option<&str>| NodeInfo {
        zone: zone.map(Into::into),
        ..node()
    };
    let used = |sl: &k8s_openapi::api::discovery::v1::EndpointSlice, n: &NodeInfo| {
        let rs = model::build(std::slice::from_ref(&svc), std::slice::from_ref(sl), n);
        let ips: Vec<String> = rs.ports[0]
            .usable(false)
            .iter()
            .map(|e| e.ip.to_string())
            .collect();
        (ips, nft::render(&rs, n))
    };
    let zones = hinted(&[Some("z1"), Some("z2"), Some("z1")], &[None, None, None]);
    let (ips, text) = used(&zones, &in_zone(Some("z1")));
    assert_eq!(ips, ["10.244.0.2", "10.244.2.2"]);
    assert!(
        text.contains("10.96.0.5 . tcp . 80 : goto pick-2"),
        "{text}"
    );
    assert!(
        text.contains("tcp . 30080 : goto pick-nodeport-2"),
        "{text}"
    );
    // A zone no endpoint is hinted for, or a node without a zone: all endpoints.
    assert_eq!(used(&zones, &in_zone(Some("z9"))).0.len(), 3);
    assert_eq!(used(&zones, &in_zone(None)).0.len(), 3);
    // One ready endpoint without hints: hints are ignored.
    let partial = hinted(&[Some("z1"), None, Some("z1")], &[None, None, None]);
    assert_eq!(used(&partial, &in_zone(Some("z1"))).0.len(), 3);
    // Node hints (trafficDistribution PreferSameNode) come first.
    let nodes = hinted(
        &[Some("z1"), Some("z1"), Some("z1")],
        &[Some("n1"), Some("n2"), Some("n3")],
    );
    assert_eq!(used(&nodes, &in_zone(Some("z1"))).0, ["10.244.0.2"]);
}
