//! The rendered rule set loaded with `nft -f` inside a node netns the test owns,
//! exercised with real TCP traffic from a client netns to three pod netns.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::{Netns, service, slice};
use hull_proxy::syncer::{Outcome, Syncer};
use hull_proxy::{apply, model, nft};
use serde_json::json;

struct Lab {
    node: Netns,
    client: Netns,
    pods: Vec<Netns>,
}

const POD_PORT: u16 = 8080;

fn pod_ip(i: usize) -> String {
    format!("10.244.0.{}", i * 4 + 2)
}

fn lab(tag: &str) -> Lab {
    let node = Netns::new(&format!("{tag}n"));
    let client = Netns::new(&format!("{tag}c"));
    node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // A real node has a default route; without one, packets to a Service with no
    // endpoints would fail routing before the REJECT rule sees them.
    node.exec(&[
        "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1",
    ]);
    node.exec(&["ip", "link", "set", "up1", "up"]);
    node.exec(&["ip", "link", "set", "up0", "up"]);
    node.exec(&["ip", "route", "add", "default", "dev", "up0"]);
    node.exec(&[
        "ip", "link", "add", "c0", "type", "veth", "peer", "name", "eth0", "netns", &client.0,
    ]);
    node.exec(&["ip", "addr", "add", "192.168.77.1/24", "dev", "c0"]);
    node.exec(&["ip", "link", "set", "c0", "up"]);
    client.exec(&["ip", "addr", "add", "192.168.77.2/24", "dev", "eth0"]);
    client.exec(&["ip", "link", "set", "eth0", "up"]);
    client.exec(&["ip", "route", "add", "default", "via", "192.168.77.1"]);
    let mut pods = Vec::new();
    for i in 0..3 {
        let pod = Netns::new(&format!("{tag}p{i}"));
        let host = format!("p{i}");
        node.exec(&[
            "ip", "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &pod.0,
        ]);
        node.exec(&[
            "ip",
            "addr",
            "add",
            &format!("10.244.0.{}/30", i * 4 + 1),
            "dev",
            &host,
        ]);
        node.exec(&["ip", "link", "set", &host, "up"]);
        pod.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", pod_ip(i)),
            "dev",
            "eth0",
        ]);
        pod.exec(&["ip", "link", "set", "eth0", "up"]);
        pod.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.244.0.{}", i * 4 + 1),
        ]);
        // A tiny server that answers each connection with the pod's name.
        let listener =
            pod.run(move || TcpListener::bind(("0.0.0.0", POD_PORT)).expect("bind pod server"));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { break };
                let _ = c.write_all(format!("pod{i}").as_bytes());
            }
        });
        pods.push(pod);
    }
    Lab { node, client, pods }
}

fn node_info() -> model::NodeInfo {
    model::NodeInfo {
        name: "node-a".into(),
        addresses: vec!["192.168.77.1".parse().expect("ip")],
        pod_cidrs: vec![("10.244.0.0".parse().expect("ip"), 16)],
        localhost_nodeports: true,
        zone: None,
    }
}

/// Sync as the daemon does: the first time the whole table, then only changes.
fn sync(
    ns: &Netns,
    syncer: &mut Syncer,
    services: Vec<k8s_openapi::api::core::v1::Service>,
    slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice>,
) {
    let rs = model::build(&services, &slices, &node_info());
    assert!(rs.skipped.is_empty(), "{:?}", rs.skipped);
    let first = !syncer.has_applied();
    let mut s = std::mem::replace(syncer, Syncer::new(node_info(), Duration::MAX));
    let (s, outcome) = ns.run(move || {
        apply::enable_route_localnet().expect("route_localnet");
        let r = s.sync(&rs).unwrap_or_else(|e| panic!("{e}"));
        (s, r)
    });
    *syncer = s;
    let want = if first {
        Outcome::Full
    } else {
        Outcome::Partial
    };
    assert_eq!(outcome, want);
}

/// One request; Ok(body) or the connect error kind.
fn get(ns: &Netns, addr: &str) -> Result<String, std::io::ErrorKind> {
    let addr: SocketAddr = addr.parse().expect("addr");
    ns.run(move || {
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.kind())?;
        let mut body = String::new();
        s.read_to_string(&mut body).map_err(|e| e.kind())?;
        Ok(body)
    })
}

fn spread(ns: &Netns, addr: &str, n: usize) -> BTreeMap<String, usize> {
    let mut hits = BTreeMap::new();
    for _ in 0..n {
        let body = get(ns, addr).unwrap_or_else(|e| panic!("{addr}: {e:?}"));
        *hits.entry(body).or_default() += 1;
    }
    hits
}

fn web(extra: serde_json::Value) -> k8s_openapi::api::core::v1::Service {
    let mut spec = json!({"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
        "ports": [{"name": "http", "port": 80, "targetPort": "web", "nodePort": 30080}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    service("default", "web", spec)
}

fn web_slice(ready: [bool; 3]) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    let ips: Vec<String> = (0..3).map(pod_ip).collect();
    slice(
        "default",
        "web",
        "http",
        POD_PORT,
        &[
            (&ips[0], ready[0], "node-a"),
            (&ips[1], ready[1], "node-a"),
            (&ips[2], ready[2], "node-a"),
        ],
    )
}

#[test]
fn clusterip_nodeport_readiness_affinity_reject_and_cleanup() {
    let lab = lab("a");
    let mut sy = Syncer::new(node_info(), Duration::MAX);
    let empty = service(
        "default",
        "empty",
        json!({"clusterIP": "10.96.0.11", "ports": [{"port": 80}]}),
    );
    sync(
        &lab.node,
        &mut sy,
        vec![web(json!({})), empty.clone()],
        vec![web_slice([true; 3])],
    );

    // ClusterIP spreads over all three pods (random; 60 tries make a miss ~1e-10).
    let hits = spread(&lab.client, "10.96.0.10:80", 60);
    assert_eq!(hits.len(), 3, "ClusterIP reached {hits:?}");

    // Hairpin: a pod reaches itself (and the others) through its own Service.
    let hits = spread(&lab.pods[0], "10.96.0.10:80", 60);
    assert_eq!(hits.len(), 3, "hairpin from pod0 reached {hits:?}");

    // NodePort on the node's address, from outside the node…
    let hits = spread(&lab.client, "192.168.77.1:30080", 30);
    assert!(hits.len() >= 2, "NodePort from client reached {hits:?}");
    // …and on 127.0.0.1 from the node itself.
    let hits = spread(&lab.node, "127.0.0.1:30080", 30);
    assert!(hits.len() >= 2, "NodePort on localhost reached {hits:?}");

    // No endpoints → REJECT (connection refused, not a timeout).
    assert_eq!(
        get(&lab.client, "10.96.0.11:80"),
        Err(std::io::ErrorKind::ConnectionRefused)
    );

    // A not-ready endpoint leaves the rotation, and comes back.
    sync(
        &lab.node,
        &mut sy,
        vec![web(json!({})), empty.clone()],
        vec![web_slice([true, true, false])],
    );
    let hits = spread(&lab.client, "10.96.0.10:80", 40);
    assert!(
        !hits.contains_key("pod2") && hits.len() == 2,
        "after pod2 not ready: {hits:?}"
    );
    sync(
        &lab.node,
        &mut sy,
        vec![web(json!({})), empty.clone()],
        vec![web_slice([true; 3])],
    );
    let hits = spread(&lab.client, "10.96.0.10:80", 60);
    assert_eq!(hits.len(), 3, "pod2 back: {hits:?}");

    // Only terminating endpoints left → they are used as a fallback.
    let mut s = web_slice([false; 3]);
    for ep in &mut s.endpoints {
        ep.conditions = Some(k8s_openapi::api::discovery::v1::EndpointConditions {
            ready: Some(false),
            serving: Some(true),
            terminating: Some(true),
        });
    }
    sync(&lab.node, &mut sy, vec![web(json!({}))], vec![s]);
    assert!(
        get(&lab.client, "10.96.0.10:80").is_ok(),
        "terminating fallback"
    );

    // sessionAffinity ClientIP pins the client to one pod.
    sync(
        &lab.node,
        &mut sy,
        vec![web(
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
        )],
        vec![web_slice([true; 3])],
    );
    let hits = spread(&lab.client, "10.96.0.10:80", 20);
    assert_eq!(hits.len(), 1, "affinity: {hits:?}");

    // Delete the Service: its rules are gone and traffic no longer reaches pods.
    sync(&lab.node, &mut sy, vec![], vec![]);
    let table = lab
        .node
        .run(|| apply::list_table(nft::Family::V4).expect("list"))
        .expect("table exists");
    assert!(
        !table.contains("10.96.0.10") && !table.contains("30080"),
        "rules left: {table}"
    );

    // --cleanup removes the tables themselves.
    lab.node.run(|| apply::cleanup().expect("cleanup"));
    assert!(
        lab.node
            .run(|| apply::list_table(nft::Family::V4).expect("list"))
            .is_none()
    );
    assert!(
        lab.node
            .run(|| apply::list_table(nft::Family::V6).expect("list"))
            .is_none()
    );
    drop(lab.pods);
}

#[test]
fn bad_transaction_keeps_previous_rules() {
    let lab = lab("b");
    let mut sy = Syncer::new(node_info(), Duration::MAX);
    sync(
        &lab.node,
        &mut sy,
        vec![web(json!({}))],
        vec![web_slice([true; 3])],
    );
    let before = lab
        .node
        .run(|| apply::list_table(nft::Family::V4).expect("list"));
    let mut text = nft::render(&model::RuleSet::default(), &node_info());
    text.push_str("add rule ip hull-proxy services this is not nft\n");
    let err = lab.node.run(move || apply::nft_apply(&text));
    assert!(
        matches!(err, Err(apply::ApplyError::Refused { .. })),
        "{err:?}"
    );
    assert_eq!(
        lab.node
            .run(|| apply::list_table(nft::Family::V4).expect("list")),
        before
    );
    assert!(get(&lab.client, "10.96.0.10:80").is_ok());
}

/// Every rule shape the renderer emits (dual stack, UDP/SCTP, Local policies,
/// externalIPs, LoadBalancer, affinity, no endpoints) is accepted by the kernel.
#[test]
fn every_shape_loads_in_the_kernel() {
    let ns = Netns::new("shapes");
    let mut node = node_info();
    node.pod_cidrs.push(("fd00:244::".parse().expect("ip"), 64));
    let svcs = vec![
        service(
            "a",
            "dual",
            json!({"type": "LoadBalancer", "clusterIPs": ["10.96.1.1", "fd00:96::1"], "externalIPs": ["198.51.100.7"],
            "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local", "sessionAffinity": "ClientIP",
            "ports": [{"name": "d", "port": 53, "protocol": "UDP", "nodePort": 30053}, {"name": "s", "port": 9, "protocol": "SCTP"}]}),
        ),
        service(
            "a",
            "plain6",
            json!({"clusterIPs": ["10.96.1.3", "fd00:96::3"], "ports": [{"name": "d", "port": 53, "protocol": "UDP"}]}),
        ),
        service(
            "a",
            "none",
            json!({"type": "NodePort", "clusterIP": "10.96.1.2", "ports": [{"port": 80, "nodePort": 30081}]}),
        ),
    ];
    let mut v4 = slice(
        "a",
        "dual",
        "d",
        5353,
        &[
            ("10.244.0.2", true, "node-a"),
            ("10.244.1.2", true, "node-b"),
        ],
    );
    if let Some(p) = v4.ports.as_mut() {
        p[0].protocol = Some("UDP".into());
    }
    let mut v6 = slice("a", "dual", "d", 5353, &[("fd00:244::2", true, "node-a")]);
    v6.metadata.name = Some("dual-v6".into());
    v6.address_type = "IPv6".into();
    if let Some(p) = v6.ports.as_mut() {
        p[0].protocol = Some("UDP".into());
    }
    let mut p4 = v4.clone();
    p4.metadata.labels = Some(
        [(
            "kubernetes.io/service-name".to_string(),
            "plain6".to_string(),
        )]
        .into(),
    );
    let mut p6 = v6.clone();
    p6.metadata.labels = p4.metadata.labels.clone();
    let rs = model::build(&svcs, &[v4, v6, p4, p6], &node);
    let text = nft::render(&rs, &node);
    ns.run(move || apply::nft_apply(&text).unwrap_or_else(|e| panic!("{e}\n{text}")));
    let t6 = ns
        .run(|| apply::list_table(nft::Family::V6).expect("list"))
        .expect("ip6 table");
    assert!(
        t6.contains("fd00:96::1") && t6.contains("fd00:244::2"),
        "{t6}"
    );
    assert!(
        t6.contains("fd00:96::3") && t6.contains("dnat to [fd00:244::2]:5353"),
        "{t6}"
    );
    let t4 = ns
        .run(|| apply::list_table(nft::Family::V4).expect("list"))
        .expect("ip table");
    assert!(
        t4.contains("198.51.100.7") && t4.contains("30081") && t4.contains("30053"),
        "{t4}"
    );
}
