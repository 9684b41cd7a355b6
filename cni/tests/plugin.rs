//! hull-bridge as containerd runs it: the real binary, real netns, real bridge,
//! netlink and nftables. Needs root. Every test uses its own bridge, subnet and
//! netns, and its guards DEL and delete everything even when an assertion fails.

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::json;

#[test]
fn two_pods_ping_each_other_and_the_gateway() {
    require_root();
    let net = Net::new(&[&subnet(1)], json!({}));
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    let pa = Attached::add(&net, &a, None);
    let pb = Attached::add(&net, &b, None);
    assert_ne!(pa.ip(0), pb.ip(0));
    assert!(a.ping(&pb.ip(0)), "pod A cannot ping pod B");
    assert!(b.ping(&pa.ip(0)), "pod B cannot ping pod A");
    let gw = pa.result["ips"][0]["gateway"]
        .as_str()
        .expect("gateway")
        .to_string();
    assert!(a.ping(&gw), "pod A cannot ping the gateway {gw}");
    // Result shape: bridge, host veth, container interface in the sandbox.
    let ifs = pa.result["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifs.len(), 3);
    assert_eq!(ifs[0]["name"], net.bridge.as_str());
    assert_eq!(ifs[1]["name"], format!("veth{}", hash(&pa.id, "eth0")));
    assert_eq!(ifs[2]["sandbox"], a.path().display().to_string().as_str());
    assert_eq!(pa.result["ips"][0]["interface"], 2);
    assert_eq!(net.ports(), 2);
    assert_eq!(net.leases().len(), 2);
    // Lease files use the reference host-local format.
    let body = std::fs::read_to_string(net.lease_dir().join(pa.ip(0))).expect("lease file");
    assert_eq!(body, format!("{}\r\neth0", pa.id));
    assert!(pa.del().ok && pb.del().ok);
    assert_eq!(net.ports(), 0, "veths left on the bridge");
    assert!(net.leases().is_empty(), "leases left: {:?}", net.leases());
}

#[test]
fn dual_stack_mtu_mac_and_routes() {
    require_root();
    let v6 = format!("fd00:{:x}:{}::/64", std::process::id() % 0xffff, 2);
    let net = Net::new(
        &[&subnet(2), &v6],
        json!({"mtu": 1400, "hairpinMode": true, "promiscMode": true, "isDefaultGateway": true, "mac": "02:42:ac:11:00:09"}),
    );
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    let pa = Attached::add(&net, &a, None);
    // Pod B serves on both families behind a hostPort.
    let (port, server) = serve(&b, "[::]", "v6 hostport ok", 2);
    let hp = 30000 + (std::process::id() % 20000) as u16;
    let mut conf_b = net.conf.clone();
    conf_b.as_object_mut().expect("obj").remove("mac");
    conf_b["runtimeConfig"] = json!({"portMappings": [{"hostPort": hp, "containerPort": port}]});
    let pb = Attached::add(&net, &b, Some(conf_b));
    let gw6: std::net::IpAddr = pb.result["ips"][1]["gateway"]
        .as_str()
        .expect("gw6")
        .parse()
        .expect("ip");
    let gw4: std::net::IpAddr = pb.result["ips"][0]["gateway"]
        .as_str()
        .expect("gw4")
        .parse()
        .expect("ip");
    assert_eq!(
        fetch(None, SocketAddr::new(gw6, hp)).expect("IPv6 hostPort"),
        "v6 hostport ok"
    );
    assert_eq!(
        fetch(None, SocketAddr::new(gw4, hp)).expect("IPv4 hostPort"),
        "v6 hostport ok"
    );
    server.join().expect("server");
    assert_eq!(pa.result["ips"].as_array().map(Vec::len), Some(2));
    assert!(a.ping(&pb.ip(1)), "IPv6 pod-to-pod failed to {}", pb.ip(1));
    let link =
        String::from_utf8_lossy(&a.exec(&["ip", "-d", "link", "show", "eth0"]).stdout).into_owned();
    assert!(link.contains("mtu 1400"), "{link}");
    assert!(link.contains("02:42:ac:11:00:09"), "{link}");
    let routes = String::from_utf8_lossy(&a.exec(&["ip", "route"]).stdout).into_owned();
    assert!(routes.contains("default via"), "no default route: {routes}");
    let r6 = String::from_utf8_lossy(&a.exec(&["ip", "-6", "route"]).stdout).into_owned();
    assert!(r6.contains("default via"), "no v6 default route: {r6}");
    let host_veth = format!("veth{}", hash(&pa.id, "eth0"));
    let brport = std::fs::read_to_string(format!("/sys/class/net/{host_veth}/brport/hairpin_mode"))
        .expect("brport");
    assert_eq!(brport.trim(), "1");
    let br = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["link", "show", &net.bridge])
            .output()
            .expect("ip")
            .stdout,
    )
    .into_owned();
    assert!(br.contains("PROMISC"), "{br}");
}

#[test]
fn check_detects_a_removed_address() {
    require_root();
    let net = Net::new(&[&subnet(3)], json!({}));
    let a = Netns::new("a");
    let pa = Attached::add(&net, &a, None);
    let mut conf = net.conf.clone();
    conf["prevResult"] = pa.result.clone();
    let ok = plugin("CHECK", &pa.id, Some(&a.path()), "eth0", &conf);
    assert!(ok.ok, "CHECK of a healthy pod failed: {}", ok.stdout);
    let addr = pa.result["ips"][0]["address"].as_str().expect("address");
    assert!(
        a.exec(&["ip", "addr", "del", addr, "dev", "eth0"])
            .status
            .success()
    );
    let bad = plugin("CHECK", &pa.id, Some(&a.path()), "eth0", &conf);
    assert!(!bad.ok, "CHECK passed with the address removed");
    assert!(
        bad.json["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("lost address"),
        "{}",
        bad.stdout
    );
    assert!(bad.json["code"].as_u64().is_some());
}

#[test]
fn hostport_reaches_a_pod_from_another_host_the_node_and_a_pod() {
    require_root();
    let net = Net::new(
        &[&subnet(4)],
        json!({"isDefaultGateway": true, "ipMasq": true, "hairpinMode": true,
               "runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 0, "protocol": "tcp"}]}}),
    );
    let pod = Netns::new("p");
    let (port, server) = serve(&pod, "0.0.0.0", "hello from pod", 4);
    let host_port = 20000 + (std::process::id() % 20000) as u16;
    let mut conf = net.conf.clone();
    conf["runtimeConfig"]["portMappings"] =
        json!([{"hostPort": host_port, "containerPort": port, "protocol": "tcp"}]);
    let p = Attached::add(&net, &pod, Some(conf));
    let gw: std::net::IpAddr = p.result["ips"][0]["gateway"]
        .as_str()
        .expect("gw")
        .parse()
        .expect("ip");
    assert!(nft_has(&hash(&p.id, "eth0")), "no nft rules for the pod");

    // Another host: a netns joined to the node by a veth pair, talking to the node's IP.
    let remote = Netns::new("r");
    let t = tag();
    let (hv, rv) = (format!("hr{t}"), format!("rr{t}"));
    // 198.18.0.0/15 is reserved for benchmarking: never a real LAN this host sits on.
    let octet = std::process::id() % 250;
    let node_ip = format!("198.18.{octet}.1");
    let remote_ip = format!("198.18.{octet}.2/24");
    run_ip(&[
        "link",
        "add",
        &hv,
        "type",
        "veth",
        "peer",
        "name",
        &rv,
        "netns",
        &remote.name,
    ]);
    struct DelLink(String);
    impl Drop for DelLink {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &self.0])
                .status();
        }
    }
    let _guard = DelLink(hv.clone());
    run_ip(&["addr", "add", &format!("{node_ip}/24"), "dev", &hv]);
    run_ip(&["link", "set", &hv, "up"]);
    assert!(
        remote
            .exec(&["ip", "addr", "add", &remote_ip, "dev", &rv])
            .status
            .success()
    );
    assert!(
        remote
            .exec(&["ip", "link", "set", &rv, "up"])
            .status
            .success()
    );

    let to_node: SocketAddr = format!("{node_ip}:{host_port}").parse().expect("addr");
    assert_eq!(
        fetch(Some(&remote), to_node).expect("from another host"),
        "hello from pod"
    );
    // From the node itself, via its own address on the bridge and via localhost.
    assert_eq!(
        fetch(None, SocketAddr::new(gw, host_port)).expect("from the node"),
        "hello from pod"
    );
    let lo: SocketAddr = format!("127.0.0.1:{host_port}").parse().expect("addr");
    assert_eq!(fetch(None, lo).expect("from 127.0.0.1"), "hello from pod");
    // Hairpin: the pod reaches itself through the node's hostPort.
    assert_eq!(
        fetch(Some(&pod), to_node).expect("hairpin from the pod"),
        "hello from pod"
    );
    server.join().expect("server");

    let h = hash(&p.id, "eth0");
    assert!(p.del().ok);
    assert!(!nft_has(&h), "nft rules left after DEL");
}

#[test]
fn delegated_ipam_plugin_legacy_version_and_explain() {
    require_root();
    let s = subnet(5);
    let base = s.trim_end_matches(".0/24");
    // ipam pointed at another plugin (Debian's `static`): exec'd from CNI_PATH.
    let net = Net::new(&[&s], json!({"cniVersion": "0.4.0"}));
    let mut conf = net.conf.clone();
    conf["ipam"] = json!({"type": "static", "addresses": [{"address": format!("{base}.77/24"), "gateway": format!("{base}.1")}]});
    let ns = Netns::new("s");
    let id = format!("st{}", tag());
    let out = plugin_raw(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", &id),
            ("CNI_NETNS", &ns.path().display().to_string()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
            ("HULL_EXPLAIN", "1"),
        ],
        conf.to_string().as_bytes(),
    );
    assert!(out.ok, "{} {}", out.stdout, out.stderr);
    struct Del<'a>(&'a str, &'a Netns, &'a serde_json::Value);
    impl Drop for Del<'_> {
        fn drop(&mut self) {
            let _ = plugin("DEL", self.0, Some(&self.1.path()), "eth0", self.2);
        }
    }
    let _del = Del(&id, &ns, &conf);
    assert_eq!(out.json["cniVersion"], "0.4.0");
    assert_eq!(out.json["ips"][0]["address"], format!("{base}.77/24"));
    // 0.x results tag each address with its IP version.
    assert_eq!(out.json["ips"][0]["version"], "4");
    assert!(
        out.stderr.contains("RTM_NEWLINK"),
        "explain printed no netlink steps: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("exec /usr/lib/cni/static"),
        "{}",
        out.stderr
    );
    assert!(ns.ping(&format!("{base}.1")));
    assert!(plugin("DEL", &id, Some(&ns.path()), "eth0", &conf).ok);
    assert_eq!(net.ports(), 0);
}

#[test]
fn a_veth_left_by_a_crashed_add_is_replaced() {
    require_root();
    let net = Net::new(&[&subnet(6)], json!({}));
    let ns = Netns::new("z");
    let first = Attached::add(&net, &ns, None);
    // Simulate a crash after the veth was made: the netns loses its end, the host
    // keeps a same-named veth; the retried ADD must replace it.
    let stale = format!("veth{}", hash(&first.id, "eth0"));
    assert!(plugin("DEL", &first.id, Some(&ns.path()), "eth0", &net.conf).ok);
    run_ip(&[
        "link",
        "add",
        &stale,
        "type",
        "veth",
        "peer",
        "name",
        &format!("x{}", tag()),
    ]);
    let again = plugin("ADD", &first.id, Some(&ns.path()), "eth0", &net.conf);
    assert!(again.ok, "{}", again.stdout);
    assert!(ns.ping(again.json["ips"][0]["gateway"].as_str().expect("gw")));
    assert_eq!(net.ports(), 1);
}

#[test]
fn a_taken_host_port_is_refused_and_rolled_back() {
    require_root();
    let hp = 40000 + (std::process::id() % 20000) as u16;
    let net = Net::new(
        &[&subnet(7)],
        json!({"runtimeConfig": {"portMappings": [{"hostPort": hp, "containerPort": 80, "protocol": "udp"}]}}),
    );
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    let first = Attached::add(&net, &a, None);
    let id = format!("hp{}", tag());
    let out = plugin("ADD", &id, Some(&b.path()), "eth0", &net.conf);
    assert!(!out.ok);
    assert!(
        out.json["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("hostPort"),
        "{}",
        out.stdout
    );
    assert_eq!(
        net.leases(),
        vec![first.ip(0)],
        "the refused pod's lease was kept"
    );
    assert!(!link_exists(&format!("veth{}", hash(&id, "eth0"))));
    assert!(
        nft_has(&hash(&first.id, "eth0")),
        "the first pod lost its rules"
    );
}
