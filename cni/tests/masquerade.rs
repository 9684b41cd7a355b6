//! `ipMasq` and `nonMasqueradeCIDRs` on a real kernel: what address another node sees
//! when a pod connects to it.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;

use common::{Attached, Net, Netns, fetch, require_root, run_ip, subnet, tag};
use serde_json::json;

/// A TCP server in `ns` that answers each of `conns` connections with the peer's address.
fn serve_peer_address(ns: &Netns, conns: usize) -> (u16, std::thread::JoinHandle<()>) {
    let path = ns.path();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let file = std::fs::File::open(path).expect("open netns");
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let l = TcpListener::bind("0.0.0.0:0").expect("bind");
        tx.send(l.local_addr().expect("addr").port()).expect("port");
        for s in l.incoming().take(conns) {
            let Ok(mut s) = s else { break };
            let peer = s
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let _ = s.write_all(peer.as_bytes());
        }
    });
    (rx.recv().expect("port"), h)
}

struct DelLink(String);
impl Drop for DelLink {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .status();
    }
}

#[test]
fn non_masquerade_cidrs_keep_the_pod_address_towards_other_nodes() {
    require_root();
    // "Another node": a netns joined to this one by a veth pair, on a network reserved
    // for benchmarking (198.18.0.0/15: never a real LAN this host sits on).
    let octet = 100 + std::process::id() % 150;
    let other_nodes = format!("198.19.{octet}.0/24");
    let node_ip = format!("198.19.{octet}.1");
    let remote = Netns::new("mq");
    let t = tag();
    let (hv, rv) = (format!("hm{t}"), format!("rm{t}"));
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
    let _guard = DelLink(hv.clone());
    run_ip(&["addr", "add", &format!("{node_ip}/24"), "dev", &hv]);
    run_ip(&["link", "set", &hv, "up"]);
    for cmd in [
        format!("ip addr add 198.19.{octet}.2/24 dev {rv}"),
        format!("ip link set {rv} up"),
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        assert!(remote.exec(&args).status.success(), "{cmd}");
    }

    // One network keeps pod addresses towards the other nodes, one masquerades all.
    let keep_net = Net::new(
        &[&subnet(30)],
        json!({"isDefaultGateway": true, "ipMasq": true, "nonMasqueradeCIDRs": [other_nodes]}),
    );
    let masq_net = Net::new(
        &[&subnet(31)],
        json!({"isDefaultGateway": true, "ipMasq": true}),
    );
    // The other node routes this node's pod subnets back to it (host-gw pod routes).
    for s in [subnet(30), subnet(31)] {
        let out = remote.exec(&["ip", "route", "add", &s, "via", &node_ip]);
        assert!(out.status.success(), "route {s}: {out:?}");
    }
    let (a, b) = (Netns::new("mk"), Netns::new("mm"));
    let keep = Attached::add(&keep_net, &a, None);
    let _masq = Attached::add(&masq_net, &b, None);

    let (port, server) = serve_peer_address(&remote, 2);
    let to: SocketAddr = format!("198.19.{octet}.2:{port}").parse().expect("addr");
    assert_eq!(fetch(Some(&a), to).expect("from the kept pod"), keep.ip(0));
    assert_eq!(
        fetch(Some(&b), to).expect("from the masqueraded pod"),
        node_ip
    );
    server.join().expect("server");
}

#[test]
fn a_bad_non_masquerade_cidr_names_the_entry() {
    require_root();
    let net = Net::new(
        &[&subnet(32)],
        json!({"ipMasq": true, "nonMasqueradeCIDRs": ["10.244.0.0/16", "ten/8"]}),
    );
    let ns = Netns::new("mb");
    let out = common::plugin(
        "ADD",
        &format!("bad{}", tag()),
        Some(&ns.path()),
        "eth0",
        &net.conf,
    );
    assert!(!out.ok);
    assert!(
        out.stdout.contains("nonMasqueradeCIDRs[1]") && out.stdout.contains("ten/8"),
        "{}",
        out.stdout
    );
    assert!(net.leases().is_empty(), "a refused ADD took a lease");
}
