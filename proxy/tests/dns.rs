//! Real UDP/TCP queries against the DNS server on loopback, model fed directly,
//! and forwarding to a fake upstream the test starts on loopback.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::{service, slice};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hull_proxy::dns_model::DnsModel;
use hull_proxy::dns_server::{self, DnsState};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

fn model() -> DnsModel {
    let services = vec![
        service(
            "big",
            "many",
            json!({"clusterIP": "None", "ports": [{"name": "p", "port": 80}]}),
        ),
        service(
            "default",
            "web",
            json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [{"name": "http", "port": 80}]}),
        ),
        service(
            "default",
            "kubernetes",
            json!({"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443}]}),
        ),
        service(
            "db",
            "pg",
            json!({"clusterIP": "None", "ports": [{"name": "sql", "port": 5432}]}),
        ),
        service(
            "default",
            "ext",
            json!({"type": "ExternalName", "externalName": "db.example.org"}),
        ),
        service(
            "default",
            "alias",
            json!({"type": "ExternalName", "externalName": "web.default.svc.cluster.local"}),
        ),
        service(
            "default",
            "loop1",
            json!({"type": "ExternalName", "externalName": "loop2.default.svc.cluster.local"}),
        ),
        service(
            "default",
            "loop2",
            json!({"type": "ExternalName", "externalName": "loop1.default.svc.cluster.local"}),
        ),
        service(
            "default",
            "v6only",
            json!({"clusterIP": "fd00::20", "clusterIPs": ["fd00::20"], "ports": [{"port": 80}]}),
        ),
    ];
    let mut pg = slice(
        "db",
        "pg",
        "sql",
        5432,
        &[
            ("10.244.1.5", true, "n"),
            ("10.244.1.6", true, "n"),
            ("10.244.1.7", false, "n"),
        ],
    );
    pg.endpoints[0].hostname = Some("pg-0".into());
    let pod: Pod = serde_json::from_value(json!({"metadata": {"namespace": "default", "name": "client"}, "status": {"podIPs": [{"ip": "10.244.2.9"}]}})).expect("pod");
    let ips: Vec<String> = (1..=60).map(|i| format!("10.244.9.{i}")).collect();
    let eps: Vec<(&str, bool, &str)> = ips.iter().map(|i| (i.as_str(), true, "n")).collect();
    let many = slice("big", "many", "p", 80, &eps);
    DnsModel::build("cluster.local", &services, &[pg, many], &[pod])
}

struct Server {
    addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

/// A fake upstream on loopback answering every A query with 192.0.2.53.
fn fake_upstream() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind upstream");
    let addr = sock.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::response(q.metadata.id, q.metadata.op_code);
            r.queries = q.queries.clone();
            if let Some(name) = q.queries.first().map(|q| q.name().clone()) {
                r.add_answer(hickory_proto::rr::Record::from_rdata(
                    name,
                    60,
                    RData::A(hickory_proto::rr::rdata::A(
                        "192.0.2.53".parse().expect("ip"),
                    )),
                ));
            }
            let _ = sock.send_to(&r.to_vec().expect("encode"), peer);
        }
    });
    addr
}

fn start(upstreams: Vec<SocketAddr>) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let state = DnsState {
        model: Arc::new(RwLock::new(model())),
        upstreams,
    };
    let addr = rt
        .block_on(dns_server::spawn(
            "127.0.0.1:0".parse().expect("addr"),
            state,
        ))
        .expect("spawn dns");
    Server { addr, _rt: rt }
}

fn query_packet(name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
    m.to_vec().expect("encode")
}

fn udp(addr: SocketAddr, packet: &[u8]) -> Message {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.send_to(packet, addr).expect("send");
    let mut buf = [0u8; 4096];
    let (n, _) = s.recv_from(&mut buf).expect("no DNS answer");
    Message::from_vec(&buf[..n]).expect("parse answer")
}

fn q(addr: SocketAddr, name: &str, t: RecordType) -> Message {
    udp(addr, &query_packet(name, t))
}

fn ips(m: &Message) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn cluster_names() {
    let s = start(vec![]);
    let m = q(s.addr, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(ips(&m), vec![ip("10.96.0.20")]);
    // Case-insensitive, and the API's own Service like any other.
    assert_eq!(
        ips(&q(
            s.addr,
            "KUBERNETES.default.svc.cluster.local.",
            RecordType::A
        )),
        vec![ip("10.96.0.1")]
    );
    assert_eq!(
        ips(&q(
            s.addr,
            "v6only.default.svc.cluster.local.",
            RecordType::AAAA
        )),
        vec![ip("fd00::20")]
    );

    // Headless → ready endpoint IPs only.
    assert_eq!(
        ips(&q(s.addr, "pg.db.svc.cluster.local.", RecordType::A)),
        vec![ip("10.244.1.5"), ip("10.244.1.6")]
    );
    // StatefulSet pod name.
    assert_eq!(
        ips(&q(s.addr, "pg-0.pg.db.svc.cluster.local.", RecordType::A)),
        vec![ip("10.244.1.5")]
    );

    // SRV: ClusterIP → the service name; headless → one target per endpoint.
    let m = q(
        s.addr,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    let srv: Vec<(u16, String)> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.port, s.target.to_ascii())),
            _ => None,
        })
        .collect();
    assert_eq!(
        srv,
        vec![(80, "web.default.svc.cluster.local.".to_string())]
    );
    let m = q(
        s.addr,
        "_sql._tcp.pg.db.svc.cluster.local.",
        RecordType::SRV,
    );
    let mut targets: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s.target.to_ascii()),
            _ => None,
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        vec![
            "10-244-1-6.pg.db.svc.cluster.local.",
            "pg-0.pg.db.svc.cluster.local."
        ]
    );

    // ExternalName → CNAME.
    let m = q(s.addr, "ext.default.svc.cluster.local.", RecordType::A);
    assert!(
        matches!(m.answers.first().map(|r| &r.data), Some(RData::CNAME(c)) if c.0.to_ascii() == "db.example.org."),
        "{m:?}"
    );

    // An ExternalName inside the zone is followed in the same answer (stub
    // resolvers do not chase CNAMEs): CNAME, then the target's ClusterIP.
    let m = q(s.addr, "alias.default.svc.cluster.local.", RecordType::A);
    assert!(
        matches!(m.answers.first().map(|r| &r.data), Some(RData::CNAME(c)) if c.0.to_ascii() == "web.default.svc.cluster.local."),
        "{m:?}"
    );
    assert_eq!(ips(&m), vec![ip("10.96.0.20")], "{m:?}");
    // AAAA of the IPv4-only target: the CNAME alone.
    let m = q(s.addr, "alias.default.svc.cluster.local.", RecordType::AAAA);
    assert_eq!((m.answers.len(), ips(&m).len()), (1, 0), "{m:?}");
    // A loop of ExternalNames ends (a bounded chain), and the server still answers.
    let m = q(s.addr, "loop1.default.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(
        (2..=10).contains(&m.answers.len()) && ips(&m).is_empty(),
        "{m:?}"
    );

    // PTR for a ClusterIP, a headless endpoint and a pod.
    let ptr = |name: &str| -> Vec<String> {
        q(s.addr, name, RecordType::PTR)
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(p) => Some(p.0.to_ascii()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        ptr("20.0.96.10.in-addr.arpa."),
        vec!["web.default.svc.cluster.local."]
    );
    assert_eq!(
        ptr("5.1.244.10.in-addr.arpa."),
        vec!["pg-0.pg.db.svc.cluster.local."]
    );
    assert_eq!(
        ptr("9.2.244.10.in-addr.arpa."),
        vec!["10-244-2-9.default.pod.cluster.local."]
    );

    // NXDOMAIN vs NODATA.
    let m = q(s.addr, "nope.default.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        m.answers.is_empty() && !m.authorities.is_empty(),
        "negative answers carry the SOA"
    );
    let m = q(s.addr, "web.default.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    let m = q(s.addr, "default.svc.cluster.local.", RecordType::A);
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NoError,
        "namespace is an empty non-terminal"
    );
    assert_eq!(
        q(s.addr, "nons.svc.cluster.local.", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    assert_eq!(
        q(
            s.addr,
            "_x._tcp.web.default.svc.cluster.local.",
            RecordType::SRV
        )
        .metadata
        .response_code,
        ResponseCode::NXDomain
    );

    // Not ours and no upstream → SERVFAIL, not silence.
    assert_eq!(
        q(s.addr, "example.org.", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::ServFail
    );
}

#[test]
fn formerr_on_garbage_and_server_survives() {
    let s = start(vec![]);
    // A header with one question whose name runs off the end of the packet.
    let mut garbage = vec![
        0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x3f, b'a', b'b',
    ];
    let m = udp(s.addr, &garbage);
    assert_eq!(m.metadata.id, 0xbeef);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // Two questions in one query → FORMERR too.
    let mut two = Message::query();
    two.add_query(Query::query(
        Name::from_ascii("a.cluster.local.").expect("n"),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("b.cluster.local.").expect("n"),
        RecordType::A,
    ));
    assert_eq!(
        udp(s.addr, &two.to_vec().expect("enc"))
            .metadata
            .response_code,
        ResponseCode::FormErr
    );
    // Random bytes of many lengths never crash the server.
    for len in 0..64u8 {
        garbage = (0..len)
            .map(|i| i.wrapping_mul(37).wrapping_add(len))
            .collect();
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let _ = sock.send_to(&garbage, s.addr);
    }
    assert_eq!(
        ips(&q(s.addr, "web.default.svc.cluster.local.", RecordType::A)),
        vec![ip("10.96.0.20")]
    );
}

#[test]
fn tcp_queries() {
    let s = start(vec![]);
    let mut c = TcpStream::connect(s.addr).expect("connect tcp");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    for _ in 0..2 {
        let p = query_packet("pg.db.svc.cluster.local.", RecordType::A);
        c.write_all(&(p.len() as u16).to_be_bytes()).expect("len");
        c.write_all(&p).expect("body");
        let mut len = [0u8; 2];
        c.read_exact(&mut len).expect("read len");
        let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
        c.read_exact(&mut body).expect("read body");
        assert_eq!(
            ips(&Message::from_vec(&body).expect("parse")),
            vec![ip("10.244.1.5"), ip("10.244.1.6")]
        );
    }
}

#[test]
fn forwards_other_names_to_upstream() {
    let up = fake_upstream();
    let s = start(vec![up]);
    let m = q(s.addr, "www.example.org.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(ips(&m), vec![ip("192.0.2.53")]);
    // An ExternalName pointing outside the zone: CNAME plus the target's address
    // from upstream, in one answer.
    let m = q(s.addr, "ext.default.svc.cluster.local.", RecordType::A);
    assert!(
        matches!(m.answers.first().map(|r| &r.data), Some(RData::CNAME(c)) if c.0.to_ascii() == "db.example.org."),
        "{m:?}"
    );
    assert_eq!(ips(&m), vec![ip("192.0.2.53")], "{m:?}");
    // Cluster names are never forwarded.
    assert_eq!(
        q(s.addr, "nope.default.svc.cluster.local.", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
}

#[test]
fn resolv_conf_upstreams() {
    let dir = std::env::temp_dir().join(format!("hullpx-resolv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join("resolv.conf");
    std::fs::write(
        &p,
        "search example\nnameserver 127.0.0.53\nnameserver ::1#5353\noptions ndots:5\n",
    )
    .expect("write");
    let ups = dns_server::upstreams_from_resolv_conf(&p).expect("parse");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        ups,
        vec![
            "127.0.0.53:53".parse::<SocketAddr>().expect("a"),
            "[::1]:5353".parse().expect("b")
        ]
    );
    assert!(dns_server::upstreams_from_resolv_conf(&dir.join("missing")).is_err());
}

#[test]
fn large_answers_truncate_over_udp_and_come_whole_over_tcp() {
    let s = start(vec![]);
    let m = q(s.addr, "many.big.svc.cluster.local.", RecordType::A);
    assert!(
        m.metadata.truncation,
        "60 A records do not fit 512 bytes: TC must be set; got {} answers, edns {:?}",
        m.answers.len(),
        m.edns
    );
    let mut c = TcpStream::connect(s.addr).expect("connect tcp");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let p = query_packet("many.big.svc.cluster.local.", RecordType::A);
    c.write_all(&(p.len() as u16).to_be_bytes()).expect("len");
    c.write_all(&p).expect("body");
    let mut len = [0u8; 2];
    c.read_exact(&mut len).expect("read len");
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    c.read_exact(&mut body).expect("read body");
    let m = Message::from_vec(&body).expect("parse");
    assert!(!m.metadata.truncation);
    assert_eq!(ips(&m).len(), 60);
    // With EDNS the client gets an OPT back and a bigger UDP answer.
    let mut e = Message::query();
    e.add_query(Query::query(
        Name::from_ascii("many.big.svc.cluster.local.").expect("n"),
        RecordType::A,
    ));
    let mut edns = hickory_proto::op::Edns::new();
    edns.set_max_payload(4096);
    e.set_edns(edns);
    let m = udp(s.addr, &e.to_vec().expect("enc"));
    assert!(m.edns.is_some(), "OPT answered");
    assert!(!m.metadata.truncation);
    assert_eq!(ips(&m).len(), 60);
}

/// The daemon's path: the model updated per changed Service (with its slices)
/// and per changed Pod answers every name as a model rebuilt from all objects.
#[test]
fn per_object_updates_answer_as_a_rebuild() {
    use hull_proxy::dns_model::{Lookup, QType};
    use hull_proxy::model::slices_by_service;
    let svc = |ns: &str, name: &str, ip: &str| {
        service(
            ns,
            name,
            json!({"clusterIP": ip, "ports": [{"name": "sql", "port": 5432}]}),
        )
    };
    let pod = |name: &str, ip: &str| -> Pod {
        serde_json::from_value(json!({"metadata": {"namespace": "default", "name": name}, "status": {"podIPs": [{"ip": ip}]}}))
            .expect("pod")
    };
    let mut pg = slice(
        "db",
        "pg",
        "sql",
        5432,
        &[("10.244.1.5", true, "n"), ("10.244.1.6", true, "n")],
    );
    pg.endpoints[0].hostname = Some("pg-0".into());
    let mut services = vec![svc("db", "pg", "None"), svc("default", "web", "10.96.0.20")];
    let mut slices = vec![pg.clone()];
    let mut pods = vec![pod("client", "10.244.2.9")];

    let queries: Vec<(&str, QType)> = vec![
        ("web.default.svc.cluster.local", QType::A),
        ("pg.db.svc.cluster.local", QType::A),
        ("pg-0.pg.db.svc.cluster.local", QType::A),
        ("_sql._tcp.pg.db.svc.cluster.local", QType::Srv),
        ("db.svc.cluster.local", QType::A),
        ("new.fresh.svc.cluster.local", QType::A),
        ("fresh.svc.cluster.local", QType::A),
        ("20.0.96.10.in-addr.arpa", QType::Ptr),
        ("30.0.96.10.in-addr.arpa", QType::Ptr),
        ("5.1.244.10.in-addr.arpa", QType::Ptr),
        ("6.1.244.10.in-addr.arpa", QType::Ptr),
        ("9.2.244.10.in-addr.arpa", QType::Ptr),
        ("10.2.244.10.in-addr.arpa", QType::Ptr),
    ];
    let mut m = DnsModel::new("cluster.local");
    let key = |ns: &str, n: &str| (ns.to_string(), n.to_string());
    // Apply the current objects of the named Services and Pods, then compare.
    let sync = |m: &mut DnsModel,
                services: &[k8s_openapi::api::core::v1::Service],
                slices: &[k8s_openapi::api::discovery::v1::EndpointSlice],
                pods: &[Pod],
                svc_keys: &[(String, String)],
                pod_keys: &[(String, String)],
                step: &str| {
        let by = slices_by_service(slices);
        for k in svc_keys {
            let s = services.iter().find(|s| {
                s.metadata.namespace.as_deref() == Some(&k.0)
                    && s.metadata.name.as_deref() == Some(&k.1)
            });
            let mine = by
                .get(&(k.0.as_str(), k.1.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            m.set_service(k, s, mine);
        }
        for k in pod_keys {
            let p = pods
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(&k.1));
            m.set_pod(k, p);
        }
        let fresh = DnsModel::build("cluster.local", services, slices, pods);
        for (q, t) in &queries {
            assert_eq!(m.lookup(q, *t), fresh.lookup(q, *t), "{step}: {q} {t:?}");
        }
    };
    sync(
        &mut m,
        &services,
        &slices,
        &pods,
        &[key("db", "pg"), key("default", "web")],
        &[key("default", "client")],
        "start",
    );
    assert!(matches!(
        m.lookup("pg-0.pg.db.svc.cluster.local", QType::A),
        Lookup::Records(_)
    ));

    // pg-0 stops being ready; a new namespace gets a Service; web's address moves.
    slices[0].endpoints[0].conditions =
        Some(serde_json::from_value(json!({"ready": false})).expect("cond"));
    services.push(svc("fresh", "new", "10.96.0.30"));
    services[1] = svc("default", "web", "10.96.0.21");
    sync(
        &mut m,
        &services,
        &slices,
        &pods,
        &[key("db", "pg"), key("fresh", "new"), key("default", "web")],
        &[],
        "changes",
    );
    assert_eq!(
        m.lookup("fresh.svc.cluster.local", QType::A),
        Lookup::NoData
    );

    // The pod's address changes, then it goes; the namespace's last Service goes.
    pods[0] = pod("client", "10.244.2.10");
    sync(
        &mut m,
        &services,
        &slices,
        &pods,
        &[],
        &[key("default", "client")],
        "pod ip",
    );
    pods.clear();
    services.retain(|s| s.metadata.namespace.as_deref() != Some("fresh"));
    sync(
        &mut m,
        &services,
        &slices,
        &pods,
        &[key("fresh", "new")],
        &[key("default", "client")],
        "deletes",
    );
    assert_eq!(
        m.lookup("fresh.svc.cluster.local", QType::A),
        Lookup::NxDomain
    );
    assert_eq!(
        m.lookup("10.2.244.10.in-addr.arpa", QType::Ptr),
        Lookup::NotOurs
    );
}
