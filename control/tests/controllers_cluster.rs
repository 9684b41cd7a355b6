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
        &[
            "get",
            "configmap",
            "kube-root-ca.crt",
            "-n",
            &ns,
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ],
        |o| !o.is_empty(),
    );
    assert_eq!(
        got.trim(),
        ca.trim(),
        "kube-root-ca.crt holds the cluster CA"
    );
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
        "patch",
        "configmap",
        "kube-root-ca.crt",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"data":{"ca.crt":"tampered"}}"#,
    ]);
    c.wait_for(
        "restored kube-root-ca.crt",
        &[
            "get",
            "configmap",
            "kube-root-ca.crt",
            "-n",
            &ns,
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ],
        |o| o.trim() == ca.trim(),
    );
    c.ok(&["delete", "configmap", "kube-root-ca.crt", "-n", &ns]);
    c.wait_for(
        "recreated kube-root-ca.crt",
        &[
            "get",
            "configmap",
            "kube-root-ca.crt",
            "-n",
            &ns,
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ],
        |o| o.trim() == ca.trim(),
    );
}

#[test]
fn nodes_get_unique_pod_cidrs_stable_across_restarts() {
    let mut c = Cluster::start("ipam", |o| {
        o.cluster_cidr = "10.200.0.0/22".into();
        o.node_cidr_mask_size = 24;
    });
    let names: Vec<String> = (0..3)
        .map(|i| format!("ipam-{}-{i}", std::process::id()))
        .collect();
    for n in &names {
        c.node(n);
    }
    let cidr_of =
        |c: &Cluster, n: &str| c.get(&["get", "node", n, "-o", "jsonpath={.spec.podCIDR}"]);
    let mut cidrs = Vec::new();
    for n in &names {
        let got = c.wait_for(
            "podCIDR",
            &["get", "node", n, "-o", "jsonpath={.spec.podCIDR}"],
            |o| !o.is_empty(),
        );
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
    let got = c2.wait_for(
        "4th podCIDR",
        &["get", "node", &fourth, "-o", "jsonpath={.spec.podCIDR}"],
        |o| !o.is_empty(),
    );
    assert!(
        !cidrs.contains(&got),
        "4th node got a held range {got}: {cidrs:?}"
    );
    // The range is full: a 5th node waits, with an Event, until one is released.
    let fifth = format!("ipam-{}-4", std::process::id());
    c2.node(&fifth);
    c2.wait_for(
        "CIDRNotAvailable event",
        &[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={fifth}"),
            "-o",
            "jsonpath={.items[*].reason}",
        ],
        |o| o.contains("CIDRNotAvailable"),
    );
    assert_eq!(cidr_of(c2, &fifth), "");
    c2.ok(&["delete", "node", &names[0]]);
    // The freed range goes to the next node that asks.
    let sixth = format!("ipam-{}-5", std::process::id());
    c2.ok(&["delete", "node", &fifth]);
    c2.node(&sixth);
    let got = c2.wait_for(
        "6th podCIDR",
        &["get", "node", &sixth, "-o", "jsonpath={.spec.podCIDR}"],
        |o| !o.is_empty(),
    );
    assert_eq!(got, cidrs[0], "the deleted node's range is reused");
}

fn pod_yaml(name: &str, labels: &str, ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{{labels}}}}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    ports: [{ports}]\n"
    )
}

fn set_status(c: &Cluster, ns: &str, pod: &str, ip: &str, ready: bool) {
    c.ok(&[
        "patch", "pod", pod, "-n", ns, "--subresource=status", "--type=merge", "-p",
        &format!(
            r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"conditions":[{{"type":"Ready","status":"{}"}}]}}}}"#,
            if ready { "True" } else { "False" }
        ),
    ]);
}

/// Writes a pod's Ready condition and returns how long until its EndpointSlice endpoint
/// shows it (polling every 2 ms).
fn readiness_to_slice(c: &Cluster, ns: &str, pod: &str, ready: bool) -> std::time::Duration {
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, ListParams, Patch, PatchParams};
    let client = c.client();
    c.rt.block_on(async {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let slices: Api<EndpointSlice> = Api::namespaced(client, ns);
        let status = if ready { "True" } else { "False" };
        let patch =
            serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": status}]}});
        let t = std::time::Instant::now();
        pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch pod status");
        loop {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                .await
                .expect("list slices");
            let shown = list.items.iter().flat_map(|s| s.endpoints.iter()).any(|e| {
                e.target_ref.as_ref().and_then(|r| r.name.as_deref()) == Some(pod)
                    && e.conditions.as_ref().and_then(|c| c.ready) == Some(ready)
            });
            if shown {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < std::time::Duration::from_secs(60),
                "slice never showed {pod} ready={ready}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
}

#[test]
fn endpoints_and_slices_follow_pods_readiness_and_named_ports() {
    let c = Cluster::start("eps", |_| {});
    let ns = format!("eps-{}", std::process::id());
    c.ok(&["create", "namespace", &ns]);
    c.ok_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, labels: {tier: front}}\nspec:\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: http}\n  - {name: metrics, port: 9090, targetPort: 9090}\n",
        ),
    );
    c.ok_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&pod_yaml(
            "a",
            "app: web",
            "{name: http, containerPort: 8080}",
        )),
    );
    c.ok_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&pod_yaml(
            "b",
            "app: web",
            "{name: http, containerPort: 8081}",
        )),
    );
    // c has no port named http: it serves only the metrics port.
    c.ok_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&pod_yaml(
            "c",
            "app: web",
            "{name: other, containerPort: 7000}",
        )),
    );
    c.ok_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&pod_yaml(
            "x",
            "app: other",
            "{name: http, containerPort: 8080}",
        )),
    );
    // No IP yet: no endpoints, but the (empty) Endpoints object exists.
    c.wait_for(
        "empty Endpoints",
        &["get", "endpoints", "web", "-n", &ns, "-o", "name"],
        |o| o == "endpoints/web",
    );
    set_status(&c, &ns, "a", "10.244.9.1", true);
    set_status(&c, &ns, "b", "10.244.9.2", false);
    set_status(&c, &ns, "c", "10.244.9.3", true);
    set_status(&c, &ns, "x", "10.244.9.9", true);
    let ready = [
        "get",
        "endpoints",
        "web",
        "-n",
        &ns,
        "-o",
        "jsonpath={range .subsets[*]}{range .addresses[*]}{.ip}{\" \"}{end}{end}",
    ];
    let got = c.wait_for("ready addresses", &ready, |o| {
        let mut v: Vec<&str> = o.split_whitespace().collect();
        v.sort();
        v == ["10.244.9.1", "10.244.9.3"]
    });
    assert!(!got.contains("10.244.9.9"), "pod x is not selected");
    let not_ready = c.get(&[
        "get",
        "endpoints",
        "web",
        "-n",
        &ns,
        "-o",
        "jsonpath={range .subsets[*]}{range .notReadyAddresses[*]}{.ip}{\" \"}{end}{end}",
    ]);
    assert_eq!(not_ready.trim(), "10.244.9.2");
    // Ports resolve per pod: a's http is 8080, b's 8081; c has only metrics.
    let subsets = c.get(&["get", "endpoints", "web", "-n", &ns, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&subsets).expect("json");
    let mut seen = Vec::new();
    for s in v["subsets"].as_array().expect("subsets") {
        let mut ports: Vec<String> = s["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| format!("{}={}", p["name"].as_str().unwrap_or(""), p["port"]))
            .collect();
        ports.sort();
        for a in s["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(s["notReadyAddresses"].as_array().into_iter().flatten())
        {
            assert_eq!(a["targetRef"]["kind"], "Pod");
            seen.push(format!(
                "{}:{}",
                a["targetRef"]["name"].as_str().unwrap_or(""),
                ports.join(",")
            ));
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "a:http=8080,metrics=9090",
            "b:http=8081,metrics=9090",
            "c:metrics=9090"
        ]
    );

    // EndpointSlices: labels, conditions, per-pod ports.
    let sel = "kubernetes.io/service-name=web";
    let slices = |c: &Cluster| -> serde_json::Value {
        serde_json::from_str(&c.get(&["get", "endpointslices", "-n", &ns, "-l", sel, "-o", "json"]))
            .unwrap_or_default()
    };
    let conds = |v: &serde_json::Value| -> Vec<String> {
        let mut out = Vec::new();
        for s in v["items"].as_array().into_iter().flatten() {
            for e in s["endpoints"].as_array().into_iter().flatten() {
                out.push(format!(
                    "{} ready={} serving={} terminating={}",
                    e["targetRef"]["name"].as_str().unwrap_or(""),
                    e["conditions"]["ready"],
                    e["conditions"]["serving"],
                    e["conditions"]["terminating"]
                ));
            }
        }
        out.sort();
        out
    };
    let v = c.eventually("3 endpoints in slices", || {
        let v = slices(&c);
        (conds(&v).len() == 3).then_some(v)
    });
    assert_eq!(
        conds(&v),
        [
            "a ready=true serving=true terminating=false",
            "b ready=false serving=false terminating=false",
            "c ready=true serving=true terminating=false",
        ]
    );
    for s in v["items"].as_array().expect("items") {
        assert_eq!(s["addressType"], "IPv4");
        assert_eq!(
            s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
            "endpointslice-controller.k8s.io"
        );
        assert_eq!(
            s["metadata"]["labels"]["tier"], "front",
            "the Service's labels are copied"
        );
        assert_eq!(s["metadata"]["ownerReferences"][0]["kind"], "Service");
        assert_eq!(s["metadata"]["ownerReferences"][0]["controller"], true);
    }
    assert_eq!(
        v["items"].as_array().map(Vec::len),
        Some(3),
        "one slice per port set"
    );

    // Readiness flips reach both, and time it.
    let t = std::time::Instant::now();
    set_status(&c, &ns, "b", "10.244.9.2", true);
    c.eventually("b ready in its slice", || {
        conds(&slices(&c))
            .contains(&"b ready=true serving=true terminating=false".to_string())
            .then_some(())
    });
    eprintln!(
        "readiness change to EndpointSlice (incl. kubectl round trips): {:?}",
        t.elapsed()
    );
    c.wait_for("b in addresses", &ready, |o| {
        o.split_whitespace().count() == 3
    });
    // Time it without kubectl in the way: patch through kube-rs, poll the slices.
    let latency = readiness_to_slice(&c, &ns, "a", false);
    eprintln!("readiness change (pod status write) to EndpointSlice: {latency:?}");
    c.wait_for("a not ready", &ready, |o| {
        !o.contains("10.244.9.1") && o.split_whitespace().count() == 2
    });

    // A relabelled pod leaves; a deleted pod leaves.
    c.ok(&["label", "pod", "c", "-n", &ns, "app=gone", "--overwrite"]);
    c.ok(&["delete", "pod", "b", "-n", &ns, "--wait=false"]);
    c.wait_for(
        "only a left",
        &[
            "get",
            "endpoints",
            "web",
            "-n",
            &ns,
            "-o",
            "jsonpath={.subsets[*].notReadyAddresses[*].ip}{.subsets[*].addresses[*].ip}",
        ],
        |o| o.trim() == "10.244.9.1",
    );
    c.eventually("one slice with a", || {
        let v = slices(&c);
        (conds(&v) == ["a ready=false serving=false terminating=false"]).then_some(())
    });

    // publishNotReadyAddresses: not-ready pods are addresses too.
    c.ok_stdin(&["apply", "-n", &ns, "-f", "-"], Some(
        "apiVersion: v1\nkind: Service\nmetadata: {name: pub}\nspec:\n  selector: {app: web}\n  publishNotReadyAddresses: true\n  ports: [{port: 80, targetPort: 8080}]\n",
    ));
    c.wait_for(
        "published not-ready a",
        &[
            "get",
            "endpoints",
            "pub",
            "-n",
            &ns,
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}",
        ],
        |o| o == "10.244.9.1",
    );

    // A Service without a selector: its Endpoints are the user's, mirrored into a slice.
    c.ok_stdin(&["apply", "-n", &ns, "-f", "-"], Some(
        "apiVersion: v1\nkind: Service\nmetadata: {name: ext}\nspec:\n  ports: [{port: 5432}]\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {name: ext}\nsubsets:\n- addresses: [{ip: 192.0.2.10}]\n  ports: [{port: 5432}]\n",
    ));
    let mirrored = c.wait_for("mirrored slice", &["get", "endpointslices", "-n", &ns, "-l", "kubernetes.io/service-name=ext", "-o",
        "jsonpath={.items[*].metadata.labels.endpointslice\\.kubernetes\\.io/managed-by} {.items[*].endpoints[*].addresses[*]}"], |o| !o.is_empty());
    assert_eq!(
        mirrored,
        "endpointslicemirroring-controller.k8s.io 192.0.2.10"
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(
        c.get(&[
            "get",
            "endpoints",
            "ext",
            "-n",
            &ns,
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}"
        ]),
        "192.0.2.10",
        "manual Endpoints untouched"
    );
    let notes = c.get(&[
        "get",
        "endpoints",
        "ext",
        "-n",
        &ns,
        "-o",
        "jsonpath={.metadata.annotations}",
    ]);
    assert!(
        !notes.contains("last-change-trigger-time"),
        "not written by the controller: {notes}"
    );

    // The Service goes: its Endpoints and slices go with it.
    c.ok(&["delete", "service", "web", "-n", &ns]);
    c.wait_for(
        "Endpoints gone",
        &["get", "endpoints", "-n", &ns, "-o", "name"],
        |o| !o.contains("endpoints/web"),
    );
    c.wait_for(
        "slices gone",
        &["get", "endpointslices", "-n", &ns, "-l", sel, "-o", "name"],
        |o| o.is_empty(),
    );
}

#[test]
fn namespace_deletion_removes_content_then_the_namespace() {
    let c = Cluster::start("ns", |_| {});
    let ns = format!("gone-{}", std::process::id());
    c.ok(&["create", "namespace", &ns]);
    c.ok(&["create", "configmap", "c1", "-n", &ns, "--from-literal=k=v"]);
    c.ok(&[
        "create",
        "secret",
        "generic",
        "s1",
        "-n",
        &ns,
        "--from-literal=k=v",
    ]);
    c.ok_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&pod_yaml("p", "app: x", "{containerPort: 80}")),
    );
    c.ok_stdin(&["apply", "-n", &ns, "-f", "-"], Some(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, finalizers: [example.com/hold]}\ndata: {k: v}\n",
    ));
    c.ok(&["delete", "namespace", &ns, "--wait=false"]);
    // The held ConfigMap keeps the namespace, and the conditions say why.
    let conds = c.wait_for(
        "NamespaceFinalizersRemaining",
        &[
            "get",
            "namespace",
            &ns,
            "-o",
            "jsonpath={range .status.conditions[*]}{.type}={.status}:{.message}{\"\\n\"}{end}",
        ],
        |o| o.contains("NamespaceFinalizersRemaining=True"),
    );
    assert!(conds.contains("NamespaceContentRemaining=True:Some resources are remaining: configmaps. has 1 resource instances"), "{conds}");
    assert!(conds.contains("NamespaceFinalizersRemaining=True:Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"), "{conds}");
    assert!(
        conds.contains("NamespaceDeletionDiscoveryFailure=False"),
        "{conds}"
    );
    assert_eq!(
        c.get(&["get", "namespace", &ns, "-o", "jsonpath={.status.phase}"]),
        "Terminating"
    );
    for kind in ["pods", "secrets", "serviceaccounts"] {
        c.wait_for(
            "content deleted",
            &["get", kind, "-n", &ns, "-o", "name"],
            |o| o.is_empty(),
        );
    }
    assert_eq!(
        c.get(&["get", "configmaps", "-n", &ns, "-o", "name"]),
        "configmap/held"
    );
    // Nothing new may be created meanwhile.
    assert!(
        !c.kubectl(&["create", "configmap", "late", "-n", &ns])
            .status
            .success()
    );
    c.ok(&[
        "patch",
        "configmap",
        "held",
        "-n",
        &ns,
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    c.ok(&[
        "wait",
        "--for=delete",
        &format!("namespace/{ns}"),
        "--timeout=60s",
    ]);
    assert!(!c.kubectl(&["get", "namespace", &ns]).status.success());
    // A namespace can be made again under the same name, with fresh defaults.
    c.ok(&["create", "namespace", &ns]);
    c.wait_for(
        "default SA again",
        &["get", "sa", "default", "-n", &ns, "-o", "name"],
        |o| o == "serviceaccount/default",
    );
}
