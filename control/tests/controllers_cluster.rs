//! The cluster controllers against a real `hull server` (its controller manager running
//! in-process), driven through kubectl 1.35: default ServiceAccounts and kube-root-ca.crt,
//! node IPAM.

mod controllers_cluster_support;

use controllers_cluster_support::Cluster;

#[test]
fn new_namespace_gets_default_serviceaccount_and_root_ca() {
    let c = Cluster::start("sa", |_| {});
    let ns = format!("sa-{}", std::process::id());
    c.ok(&["create", "namespace", &ns]);
    c.wait_for(
        "default ServiceAccount",
        &["get", "serviceaccount", "default", "-n", &ns, "-o", "name"],
        |o| o == "serviceaccount/default",
    );
    let ca = std::fs::read_to_string(c.dir.join("ca.crt")).expect("ca.crt");
    let got = c.wait_for(
        "kube-root-ca.crt",
        &["get", "configmap", "kube-root-ca.crt", "-n", &ns, "-o", "jsonpath={.data.ca\\.crt}"],
        |o| !o.is_empty(),
    );
    assert_eq!(got.trim(), ca.trim(), "kube-root-ca.crt holds the cluster CA");
    // The system namespaces have them too.
    for sys in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        c.wait_for(
            "system namespace default SA",
            &["get", "sa", "default", "-n", sys, "-o", "name"],
            |o| o == "serviceaccount/default",
        );
    }
    // Deleted: put back. Edited: restored.
    c.ok(&["delete", "sa", "default", "-n", &ns]);
    c.wait_for(
        "recreated default ServiceAccount",
        &["get", "serviceaccount", "default", "-n", &ns, "-o", "name"],
        |o| o == "serviceaccount/default",
    );
    c.ok(&[
        "patch", "configmap", "kube-root-ca.crt", "-n", &ns, "--type=merge", "-p",
        r#"{"data":{"ca.crt":"tampered"}}"#,
    ]);
    c.wait_for(
        "restored kube-root-ca.crt",
        &["get", "configmap", "kube-root-ca.crt", "-n", &ns, "-o", "jsonpath={.data.ca\\.crt}"],
        |o| o.trim() == ca.trim(),
    );
    c.ok(&["delete", "configmap", "kube-root-ca.crt", "-n", &ns]);
    c.wait_for(
        "recreated kube-root-ca.crt",
        &["get", "configmap", "kube-root-ca.crt", "-n", &ns, "-o", "jsonpath={.data.ca\\.crt}"],
        |o| o.trim() == ca.trim(),
    );
}

#[test]
fn nodes_get_unique_pod_cidrs_stable_across_restarts() {
    let mut c = Cluster::start("ipam", |o| {
        o.cluster_cidr = "10.200.0.0/22".into();
        o.node_cidr_mask_size = 24;
    });
    let names: Vec<String> = (0..3).map(|i| format!("ipam-{}-{i}", std::process::id())).collect();
    for n in &names {
        c.node(n);
    }
    let cidr_of = |c: &Cluster, n: &str| c.get(&["get", "node", n, "-o", "jsonpath={.spec.podCIDR}"]);
    let mut cidrs = Vec::new();
    for n in &names {
        let got = c.wait_for("podCIDR", &["get", "node", n, "-o", "jsonpath={.spec.podCIDR}"], |o| {
            !o.is_empty()
        });
        let list = c.get(&["get", "node", n, "-o", "jsonpath={.spec.podCIDRs[*]}"]);
        assert_eq!(list, got, "podCIDRs lists podCIDR");
        assert!(got.starts_with("10.200.") && got.ends_with("/24"), "{got}");
        cidrs.push(got);
    }
    let mut uniq = cidrs.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 3, "unique ranges: {cidrs:?}");

    // A restart (new leader) rebuilds the map from the Nodes: the 4th node gets the last free
    // /24, not one already held.
    c.restart();
    let c2 = &c;
    for (n, want) in names.iter().zip(&cidrs) {
        assert_eq!(&cidr_of(c2, n), want, "{n} keeps its range");
    }
    let fourth = format!("ipam-{}-3", std::process::id());
    c2.node(&fourth);
    let got = c2.wait_for("4th podCIDR", &["get", "node", &fourth, "-o", "jsonpath={.spec.podCIDR}"], |o| {
        !o.is_empty()
    });
    assert!(!cidrs.contains(&got), "4th node got a held range {got}: {cidrs:?}");
    // The range is full: a 5th node waits, with an Event, until one is released.
    let fifth = format!("ipam-{}-4", std::process::id());
    c2.node(&fifth);
    c2.wait_for(
        "CIDRNotAvailable event",
        &["get", "events", "--field-selector", &format!("involvedObject.name={fifth}"), "-o", "jsonpath={.items[*].reason}"],
        |o| o.contains("CIDRNotAvailable"),
    );
    assert_eq!(cidr_of(c2, &fifth), "");
    c2.ok(&["delete", "node", &names[0]]);
    // The freed range goes to the next node that asks.
    let sixth = format!("ipam-{}-5", std::process::id());
    c2.ok(&["delete", "node", &fifth]);
    c2.node(&sixth);
    let got = c2.wait_for("6th podCIDR", &["get", "node", &sixth, "-o", "jsonpath={.spec.podCIDR}"], |o| {
        !o.is_empty()
    });
    assert_eq!(got, cidrs[0], "the deleted node's range is reused");
}
