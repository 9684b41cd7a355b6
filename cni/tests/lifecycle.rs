//! hull-bridge's promises about state: DEL is idempotent and leaves nothing, a failed
//! ADD rolls back, concurrent ADDs never share an address, GC frees the leaked, and
//! bad input gets the spec's error JSON. Needs root.

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::json;

#[test]
fn thousand_add_del_cycles_leave_no_veth_lease_route_or_rule() {
    require_root();
    let net = Net::new(&[&subnet(10)], json!({"ipMasq": true}));
    let ns = Netns::new("c");
    // The library entry points, as hull's CRI server would run the plugin logic:
    // the same code as the binary without 2000 process spawns.
    let conf = hull_cni::config::BridgeConf::parse(net.conf.to_string().as_bytes()).expect("conf");
    let stdin = net.conf.to_string();
    // The binary's DEL path: the veth's kernel teardown handed to a forked child.
    hull_cni::bridge::DETACHED_DELETE.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut hashes = HashSet::new();
    for i in 0..1000 {
        let call = hull_cni::bridge::Call {
            command: String::new(),
            container_id: format!("cyc{}-{i}", std::process::id()),
            netns: Some(ns.path()),
            ifname: "eth0".into(),
            args: String::new(),
            path: "/usr/lib/cni".into(),
        };
        hashes.insert(hash(&call.container_id, "eth0"));
        let r = hull_cni::bridge::add(&conf, &call, stdin.as_bytes());
        let del = hull_cni::bridge::del(&conf, &call, stdin.as_bytes());
        r.unwrap_or_else(|e| panic!("ADD #{i}: {e}"));
        del.unwrap_or_else(|e| panic!("DEL #{i}: {e}"));
    }
    assert_eq!(net.ports(), 0, "veths left on the bridge");
    assert!(net.leases().is_empty(), "leases left: {:?}", net.leases());
    let links = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["-o", "link"])
            .output()
            .expect("ip")
            .stdout,
    )
    .into_owned();
    for h in &hashes {
        assert!(!links.contains(&format!("veth{h}")), "veth{h} left");
        assert!(!nft_has(h), "nft rules for {h} left");
    }
    let inside = String::from_utf8_lossy(&ns.exec(&["ip", "-o", "link"]).stdout).into_owned();
    assert!(!inside.contains("eth0"), "eth0 left in the netns: {inside}");
    let routes = String::from_utf8_lossy(&ns.exec(&["ip", "route"]).stdout).into_owned();
    assert!(
        routes.trim().is_empty(),
        "routes left in the netns: {routes}"
    );
}

#[test]
fn fifty_concurrent_adds_get_fifty_distinct_addresses() {
    require_root();
    // ipMasq too: 50 concurrent nft transactions on the shared table.
    let net = Net::new(&[&subnet(11)], json!({"ipMasq": true}));
    let ns = Netns::new("m");
    let ids: Vec<String> = (0..50).map(|i| format!("par{}-{i}", tag())).collect();
    let results: Vec<Out> = std::thread::scope(|s| {
        let hs: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let (conf, path) = (&net.conf, ns.path());
                s.spawn(move || plugin("ADD", id, Some(&path), &format!("eth{i}"), conf))
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let mut ips = HashSet::new();
    for (i, r) in results.iter().enumerate() {
        assert!(r.ok, "ADD {i} failed: {}", r.stdout);
        ips.insert(
            r.json["ips"][0]["address"]
                .as_str()
                .expect("address")
                .to_string(),
        );
    }
    assert_eq!(ips.len(), 50, "addresses collided");
    assert_eq!(net.leases().len(), 50);
    for (i, id) in ids.iter().enumerate() {
        assert!(
            nft_has(&hash(id, &format!("eth{i}"))),
            "pod {i} has no masquerade rules"
        );
    }
    // ADDs share the table lock; however many raced to lay the base, it is there once.
    assert_eq!(
        base_rule_count(),
        1,
        "{}",
        nft_out(&["list", "chain", "inet", "hull-cni", "postrouting"])
    );
    // And 50 concurrent DELs: the table goes away with the last pod, never before.
    let dels: Vec<Out> = std::thread::scope(|s| {
        let hs: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let (conf, path) = (&net.conf, ns.path());
                s.spawn(move || plugin("DEL", id, Some(&path), &format!("eth{i}"), conf))
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    for (i, d) in dels.iter().enumerate() {
        assert!(d.ok, "DEL {i} failed: {}", d.stdout);
        assert!(!nft_has(&hash(&ids[i], &format!("eth{i}"))));
    }
    assert!(net.leases().is_empty());
    assert_eq!(net.ports(), 0);
}

fn nft_out(args: &[&str]) -> String {
    let o = std::process::Command::new("nft")
        .args(args)
        .output()
        .expect("nft");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// How many times the postrouting base chain dispatches to the per-pod masquerade map.
fn base_rule_count() -> usize {
    nft_out(&["list", "chain", "inet", "hull-cni", "postrouting"])
        .matches("ip saddr vmap @masq4")
        .count()
}

#[test]
fn an_add_lays_the_nftables_base_again_when_its_marker_is_gone() {
    require_root();
    let net = Net::new(&[&subnet(19)], json!({"ipMasq": true}));
    let ns = Netns::new("b");
    let first = Attached::add(&net, &ns, None);
    // What a node whose table an older hull-bridge laid looks like: no marker of this
    // version's base. The next ADD must apply the base with its pod, not just the pod.
    let _ = std::process::Command::new("nft")
        .args(["delete", "set", "inet", "hull-cni", "base-1"])
        .status();
    let ns2 = Netns::new("b2");
    let second = Attached::add(&net, &ns2, None);
    let table = nft_out(&["list", "table", "inet", "hull-cni"]);
    assert!(
        table.contains("set base-1"),
        "marker not laid again: {table}"
    );
    assert_eq!(base_rule_count(), 1, "base rules duplicated: {table}");
    assert!(nft_has(&hash(&second.id, "eth0")) && nft_has(&hash(&first.id, "eth0")));
    assert!(second.del().ok && first.del().ok);
}

#[test]
fn del_is_idempotent_and_succeeds_after_the_netns_is_gone() {
    require_root();
    let net = Net::new(&[&subnet(12)], json!({"ipMasq": true}));
    let ns = Netns::new("g");
    let id = format!("gone{}", tag());
    let add = plugin("ADD", &id, Some(&ns.path()), "eth0", &net.conf);
    assert!(add.ok, "{}", add.stdout);
    let path = ns.path();
    drop(ns);
    let del = plugin("DEL", &id, Some(&path), "eth0", &net.conf);
    assert!(del.ok, "DEL with the netns gone failed: {}", del.stdout);
    assert!(net.leases().is_empty(), "lease not released");
    assert!(!link_exists(&format!("veth{}", hash(&id, "eth0"))));
    assert!(!nft_has(&hash(&id, "eth0")));
    // Again, and with no netns at all.
    assert!(plugin("DEL", &id, Some(&path), "eth0", &net.conf).ok);
    assert!(plugin("DEL", &id, None, "eth0", &net.conf).ok);
}

#[test]
fn failed_add_rolls_back_veth_lease_and_rules() {
    require_root();
    let net = Net::new(&[&subnet(13)], json!({"ipMasq": true}));
    let ns = Netns::new("f");
    // eth0 already taken inside the netns: the veth cannot be created there.
    assert!(
        ns.exec(&[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "x0"
        ])
        .status
        .success()
    );
    let id = format!("fail{}", tag());
    let out = plugin("ADD", &id, Some(&ns.path()), "eth0", &net.conf);
    assert!(!out.ok);
    assert!(
        out.json["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("CNI_IFNAME"),
        "{}",
        out.stdout
    );
    assert!(net.leases().is_empty(), "lease kept after failed ADD");
    assert!(
        !link_exists(&format!("veth{}", hash(&id, "eth0"))),
        "veth kept after failed ADD"
    );
    assert!(!nft_has(&hash(&id, "eth0")));
}

#[test]
fn exhausted_range_is_a_clear_error() {
    require_root();
    let s = subnet(14);
    let base = s.trim_end_matches(".0/24");
    let net = Net::new(&[&s], json!({}));
    let mut conf = net.conf.clone();
    conf["ipam"]["ranges"] = json!([[{"subnet": s, "rangeStart": format!("{base}.10"), "rangeEnd": format!("{base}.11")}]]);
    let ns = Netns::new("x");
    let a = Attached::add_if(&net, &ns, "eth0", Some(conf.clone()));
    let b = Attached::add_if(&net, &ns, "eth1", Some(conf.clone()));
    assert_eq!(a.ip(0), format!("{base}.10"));
    assert_eq!(b.ip(0), format!("{base}.11"));
    let st = plugin("STATUS", "", None, "", &conf);
    assert!(!st.ok, "STATUS should report the exhausted range");
    let out = plugin("ADD", "third", Some(&ns.path()), "eth2", &conf);
    assert!(!out.ok);
    assert_eq!(out.json["code"], 100, "{}", out.stdout);
    assert!(
        out.json["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("ipam.ranges[0]"),
        "{}",
        out.stdout
    );
    assert!(!link_exists(&format!("veth{}", hash("third", "eth2"))));
}

#[test]
fn gc_releases_what_valid_attachments_does_not_name() {
    require_root();
    let net = Net::new(&[&subnet(15)], json!({"ipMasq": true}));
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    let keep = Attached::add(&net, &a, None);
    let lose = Attached::add(&net, &b, None);
    let refused = plugin("GC", "", None, "", &net.conf);
    assert!(
        !refused.ok,
        "GC without valid-attachments must not release everything"
    );
    assert_eq!(net.leases().len(), 2);
    let mut conf = net.conf.clone();
    conf["cni.dev/valid-attachments"] = json!([{"containerID": keep.id, "ifname": "eth0"}]);
    let out = plugin("GC", "", None, "", &conf);
    assert!(out.ok, "GC failed: {}", out.stdout);
    assert_eq!(net.leases(), vec![keep.ip(0)]);
    assert!(link_exists(&format!("veth{}", hash(&keep.id, "eth0"))));
    assert!(!link_exists(&format!("veth{}", hash(&lose.id, "eth0"))));
    assert!(nft_has(&hash(&keep.id, "eth0")));
    assert!(!nft_has(&hash(&lose.id, "eth0")));
    assert!(a.ping(keep.result["ips"][0]["gateway"].as_str().expect("gw")));
}

#[test]
fn bad_input_gets_spec_error_json() {
    require_root();
    let net = Net::new(&[&subnet(16)], json!({}));
    let ns = Netns::new("e");
    let env = |cmd: &'static str| {
        vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "bad1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ]
    };
    let path = ns.path().display().to_string();
    let mut with_ns = env("ADD");
    with_ns.push(("CNI_NETNS", &path));

    let r = plugin_raw(&with_ns, b"{not json");
    assert!(!r.ok);
    assert_eq!(r.json["code"], 6, "{}", r.stdout);

    let mut v = net.conf.clone();
    v["cniVersion"] = json!("9.9.9");
    let r = plugin_raw(&with_ns, v.to_string().as_bytes());
    assert_eq!(r.json["code"], 1, "{}", r.stdout);
    assert!(
        r.json["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("cniVersion")
    );

    let r = plugin_raw(&env("ADD"), net.conf.to_string().as_bytes());
    assert_eq!(r.json["code"], 4, "missing CNI_NETNS: {}", r.stdout);
    assert!(
        r.json["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("CNI_NETNS")
    );

    let r = plugin_raw(
        &[("CNI_NETNS", path.as_str())],
        net.conf.to_string().as_bytes(),
    );
    assert_eq!(r.json["code"], 4, "missing CNI_COMMAND: {}", r.stdout);

    let mut no_id = with_ns.clone();
    no_id.retain(|(k, _)| *k != "CNI_CONTAINERID");
    let r = plugin_raw(&no_id, net.conf.to_string().as_bytes());
    assert!(
        r.json["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("CNI_CONTAINERID"),
        "{}",
        r.stdout
    );

    let mut missing = env("ADD");
    missing.push(("CNI_NETNS", "/var/run/netns/hull-does-not-exist"));
    let r = plugin_raw(&missing, net.conf.to_string().as_bytes());
    assert_eq!(r.json["code"], 3, "{}", r.stdout);

    let mut m = net.conf.clone();
    m["mtu"] = json!("big");
    let r = plugin_raw(&with_ns, m.to_string().as_bytes());
    assert_eq!(r.json["code"], 6);
    assert!(
        r.json["msg"].as_str().unwrap_or_default().contains("mtu") || r.stdout.contains("string"),
        "{}",
        r.stdout
    );

    let mut s = net.conf.clone();
    s["ipam"]["ranges"] = json!([[{"subnet": "10.0.0.0/24", "gateway": "10.9.9.9"}]]);
    let r = plugin_raw(&with_ns, s.to_string().as_bytes());
    assert_eq!(r.json["code"], 7);
    assert!(
        r.json["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("ipam.ranges[0][0].gateway"),
        "{}",
        r.stdout
    );

    let r = plugin_raw(&env("VERSION"), br#"{"cniVersion":"1.0.0"}"#);
    assert!(r.ok);
    assert!(
        r.json["supportedVersions"]
            .as_array()
            .expect("versions")
            .contains(&json!("1.1.0"))
    );
    assert!(net.leases().is_empty(), "a failed ADD left a lease");
}
