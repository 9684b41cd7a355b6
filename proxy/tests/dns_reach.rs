//! How pods reach the cluster DNS: the kube-dns Service and this node's slice as
//! the proxy publishes them, turned into rules, loaded in a node netns the test
//! owns; a pod netns queries 10.96.0.10:53 and the node's own listener answers.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::{Netns, service};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use hull_proxy::dns_model::DnsModel;
use hull_proxy::dns_server::{self, DnsState};
use hull_proxy::dns_service::{self, ClusterDns};
use hull_proxy::syncer::{Outcome, Syncer};
use hull_proxy::{model, nft};
use serde_json::json;

const NODE_IP: &str = "192.168.77.1";

fn node(name: &str) -> model::NodeInfo {
    model::NodeInfo {
        name: name.into(),
        addresses: vec![NODE_IP.parse().expect("ip")],
        pod_cidrs: vec![("10.244.0.0".parse().expect("ip"), 16)],
        localhost_nodeports: true,
        zone: None,
    }
}

fn cluster_dns() -> ClusterDns {
    ClusterDns {
        service_ip: "10.96.0.10".parse().expect("ip"),
        endpoint: SocketAddr::new(NODE_IP.parse().expect("ip"), 53),
    }
}

fn objects() -> (
    Vec<k8s_openapi::api::core::v1::Service>,
    Vec<k8s_openapi::api::discovery::v1::EndpointSlice>,
) {
    let cd = cluster_dns();
    let mut kube_dns = dns_service::service(cd.service_ip);
    kube_dns.metadata.namespace = Some(dns_service::NAMESPACE.into());
    let web = service(
        "default",
        "web",
        json!({"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80}]}),
    );
    let slice = dns_service::slice("node-a", Some("uid-1"), cd.endpoint);
    (vec![kube_dns, web], vec![slice])
}

#[test]
fn published_objects_have_the_kubernetes_shape() {
    let cd = cluster_dns();
    let svc = dns_service::service(cd.service_ip);
    let spec = svc.spec.clone().expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
    assert_eq!(spec.internal_traffic_policy.as_deref(), Some("Local"));
    assert!(
        spec.selector.is_none(),
        "the proxy writes the endpoints itself"
    );
    let ports: Vec<(Option<String>, Option<String>, i32)> = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name, p.protocol, p.port))
        .collect();
    assert_eq!(
        ports,
        vec![
            (Some("dns".into()), Some("UDP".into()), 53),
            (Some("dns-tcp".into()), Some("TCP".into()), 53)
        ]
    );
    let sl = dns_service::slice("node-a", Some("uid-1"), cd.endpoint);
    let labels = sl.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(model::SERVICE_NAME_LABEL).map(String::as_str),
        Some("kube-dns")
    );
    assert_eq!(
        labels
            .get("endpointslice.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("hull-proxy"),
        "the EndpointSlice controller must leave it alone"
    );
    let owner = &sl.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Node", "uid-1"));
    assert_eq!(sl.endpoints[0].node_name.as_deref(), Some("node-a"));
    assert_eq!(sl.endpoints[0].addresses, vec![NODE_IP.to_string()]);
    assert!(dns_service::slice_name(&"n".repeat(300)).len() <= 253);
}

#[test]
fn each_node_sends_its_pods_to_its_own_listener() {
    let (svcs, slices) = objects();
    let text = nft::render(
        &model::build(&svcs, &slices, &node("node-a")),
        &node("node-a"),
    );
    for proto in ["udp", "tcp"] {
        assert!(
            text.contains(&format!("10.96.0.10 . {proto} . 53 : goto pick-1")),
            "{text}"
        );
        assert!(
            text.contains(&format!("10.96.0.10 . {proto} . 53 : {NODE_IP} . 53")),
            "{text}"
        );
    }
    // Another node's listener is never used (internalTrafficPolicy Local): a node
    // without its own slice drops the query rather than crossing the network.
    let other = nft::render(
        &model::build(&svcs, &slices, &node("node-b")),
        &node("node-b"),
    );
    assert!(other.contains("10.96.0.10 . udp . 53 : drop"), "{other}");
}

#[test]
fn a_pod_resolves_through_the_cluster_dns_address() {
    let nodens = Netns::new("dnsn");
    let pod = Netns::new("dnsp");
    // The node's address (on lo: the dummy module may not be loadable here).
    nodens.exec(&["ip", "addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]);
    nodens.exec(&[
        "ip", "link", "add", "p0", "type", "veth", "peer", "name", "eth0", "netns", &pod.0,
    ]);
    nodens.exec(&["ip", "addr", "add", "10.244.0.1/30", "dev", "p0"]);
    nodens.exec(&["ip", "link", "set", "p0", "up"]);
    pod.exec(&["ip", "addr", "add", "10.244.0.2/30", "dev", "eth0"]);
    pod.exec(&["ip", "link", "set", "eth0", "up"]);
    pod.exec(&["ip", "route", "add", "default", "via", "10.244.0.1"]);

    // The node's listener: sockets bound inside the node netns, served by tokio.
    let (svcs, slices) = objects();
    let (udp, tcp) = nodens.run(|| {
        let u = std::net::UdpSocket::bind((NODE_IP, 53)).expect("bind udp");
        let t = std::net::TcpListener::bind((NODE_IP, 53)).expect("bind tcp");
        u.set_nonblocking(true).expect("nonblocking");
        t.set_nonblocking(true).expect("nonblocking");
        (u, t)
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let state = DnsState {
        model: Arc::new(RwLock::new(DnsModel::build(
            "cluster.local",
            &svcs,
            &slices,
            [],
        ))),
        upstreams: vec![],
    };
    rt.spawn(async move {
        let u = tokio::net::UdpSocket::from_std(udp).expect("tokio udp");
        dns_server::serve_udp(u, state.clone()).await
    });
    drop(tcp);

    let rs = model::build(&svcs, &slices, &node("node-a"));
    let mut sy = Syncer::new(node("node-a"), Duration::MAX);
    let outcome = nodens.run(move || sy.sync(&rs).expect("sync"));
    assert_eq!(outcome, Outcome::Full);

    let answer = pod.run(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(
            Name::from_ascii("web.default.svc.cluster.local.").expect("name"),
            RecordType::A,
        ));
        s.send_to(&m.to_vec().expect("encode"), "10.96.0.10:53")
            .expect("send");
        let mut buf = [0u8; 4096];
        let (n, from) = s.recv_from(&mut buf).expect("no answer from 10.96.0.10");
        (Message::from_vec(&buf[..n]).expect("parse"), from)
    });
    let (msg, from) = answer;
    assert_eq!(from, "10.96.0.10:53".parse::<SocketAddr>().expect("addr"));
    let ips: Vec<IpAddr> = msg
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    assert_eq!(ips, vec!["10.96.0.20".parse::<IpAddr>().expect("ip")]);
    drop(rt);
}
