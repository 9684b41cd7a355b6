//! The nftables batches hull-bridge builds (pure: no kernel needed).

use hull_cni::nft::{PodRules, add_script, pod_hashes, remove_script};
use hull_cni::types::PortMapping;
use serde_json::json;

fn pm(host: u16, ctr: u16, proto: &str, ip: &str) -> PortMapping {
    PortMapping {
        host_port: host,
        container_port: ctr,
        protocol: proto.into(),
        host_ip: ip.into(),
    }
}

#[test]
fn add_batch_holds_per_pod_chains_and_elements() {
    let ips = [
        "10.1.0.5/24".parse().expect("net"),
        "fd00::5/64".parse().expect("net"),
    ];
    let ports = [pm(8080, 80, "tcp", ""), pm(5353, 53, "UDP", "192.0.2.1")];
    let no_masq = [
        "10.244.0.0/16".parse().expect("net"),
        "fd10::/56".parse().expect("net"),
    ];
    let s = add_script(&PodRules {
        hash: "abcd1234",
        ips: &ips,
        masq: true,
        no_masq: &no_masq,
        ports: &ports,
    })
    .expect("script");
    // The cluster CIDR of each family keeps the pod's address, after the pod's own subnet.
    let own = s
        .find("masq-abcd1234 ip daddr 10.1.0.0/24 return")
        .expect("own subnet");
    let cluster = s
        .find("masq-abcd1234 ip daddr 10.244.0.0/16 return")
        .expect("cluster CIDR");
    assert!(own < cluster);
    assert!(s.contains("masq-abcd1234 ip6 daddr fd10::/56 return"));
    assert!(!s.contains("ip daddr fd10::/56") && !s.contains("ip6 daddr 10.244.0.0/16"));
    assert!(s.contains("add element inet hull-cni masq4 { 10.1.0.5 : jump masq-abcd1234 }"));
    assert!(s.contains("add element inet hull-cni masq6 { fd00::5 : jump masq-abcd1234 }"));
    assert!(s.contains("add rule inet hull-cni masq-abcd1234 ip daddr 10.1.0.0/24 return"));
    assert!(s.contains("dnat ip to 10.1.0.5:80"));
    assert!(s.contains("dnat ip6 to [fd00::5]:80"));
    assert!(s.contains("ip daddr 192.0.2.1 meta l4proto udp th dport 5353 dnat ip to 10.1.0.5:53"));
    assert!(
        !s.contains("dnat ip6 to [fd00::5]:53"),
        "an IPv4 hostIP must not map to IPv6"
    );
    assert!(s.contains("add element inet hull-cni hostports { udp . 5353 : jump hp-abcd1234 }"));
    // The base chains are flushed before being refilled: repeating the batch is idempotent.
    let flush = s
        .find("flush chain inet hull-cni postrouting")
        .expect("flush");
    assert!(flush < s.find("add rule inet hull-cni postrouting").expect("rule"));
}

#[test]
fn bad_port_mappings_name_the_field() {
    let ips = ["10.1.0.5/24".parse().expect("net")];
    for bad in [
        pm(0, 80, "tcp", ""),
        pm(80, 80, "icmp", ""),
        pm(80, 80, "tcp", "nope"),
    ] {
        let e = add_script(&PodRules {
            hash: "h",
            ips: &ips,
            masq: false,
            no_masq: &[],
            ports: &[bad],
        })
        .expect_err("bad");
        assert!(e.msg.contains("runtimeConfig.portMappings"), "{e}");
        assert_eq!(e.code, 7);
    }
}

#[test]
fn remove_batch_targets_only_the_doomed_pod() {
    // The shape `nft -j list table inet hull-cni` prints (nft 1.0.6).
    let table = json!({"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "hull-cni"}},
        {"map": {"family": "inet", "name": "hostports", "table": "hull-cni", "map": "verdict",
                 "elem": [[{"concat": ["tcp", 8080]}, {"jump": {"target": "hp-aaaa"}}],
                          [{"concat": ["udp", 53]}, {"jump": {"target": "hp-bbbb"}}]]}},
        {"map": {"family": "inet", "name": "masq4", "table": "hull-cni", "map": "verdict",
                 "elem": [["10.1.0.5", {"jump": {"target": "masq-aaaa"}}]]}},
        {"chain": {"family": "inet", "table": "hull-cni", "name": "prerouting"}},
        {"chain": {"family": "inet", "table": "hull-cni", "name": "hp-aaaa"}},
        {"chain": {"family": "inet", "table": "hull-cni", "name": "masq-aaaa"}},
        {"chain": {"family": "inet", "table": "hull-cni", "name": "hp-bbbb"}},
    ]});
    assert_eq!(
        pod_hashes(&table),
        vec!["aaaa".to_string(), "bbbb".to_string()]
    );
    let s = remove_script(&table, &|h| h == "aaaa");
    assert!(s.contains("delete element inet hull-cni hostports { tcp . 8080 }"));
    assert!(s.contains("delete element inet hull-cni masq4 { 10.1.0.5 }"));
    assert!(s.contains("delete chain inet hull-cni hp-aaaa"));
    assert!(!s.contains("bbbb") && !s.contains("prerouting"));
    // Elements before chains: the kernel refuses to delete a chain still jumped to.
    assert!(s.find("delete element").expect("el") < s.find("delete chain").expect("chain"));
    assert!(remove_script(&table, &|_| false).is_empty());
}
