//! The garbage collector against a real `hull server`, through `kubectl delete
//! --cascade=background|foreground|orphan`: dependents of a gone owner are deleted,
//! foreground deletion waits for blocking dependents, orphaning strips the references.

mod controllers_cluster_support;

use controllers_cluster_support::Cluster;

fn uid(c: &Cluster, ns: &str, what: &str) -> String {
    let u = c.ok(&["get", what, "-n", ns, "-o", "jsonpath={.metadata.uid}"]);
    assert!(!u.is_empty(), "{what} has a uid");
    u
}

/// A ConfigMap owned by the given (name, uid, blockOwnerDeletion) owners, with finalizers.
fn dependent(
    c: &Cluster,
    ns: &str,
    kind: &str,
    name: &str,
    owners: &[(&str, &str, bool)],
    finalizers: &str,
) {
    let refs: Vec<String> = owners
        .iter()
        .map(|(n, u, b)| {
            format!(
                "{{apiVersion: v1, kind: ConfigMap, name: {n}, uid: {u}, blockOwnerDeletion: {b}}}"
            )
        })
        .collect();
    let body = if kind == "Secret" {
        "stringData: {k: v}"
    } else {
        "data: {k: v}"
    };
    c.ok_stdin(&["apply", "-n", ns, "-f", "-"], Some(&format!(
        "apiVersion: v1\nkind: {kind}\nmetadata: {{name: {name}, ownerReferences: [{}], finalizers: [{finalizers}]}}\n{body}\n",
        refs.join(", ")
    )));
}

#[test]
fn background_foreground_and_orphan_deletion() {
    let c = Cluster::start("gc", |_| {});
    let ns = format!("gc-{}", std::process::id());
    c.ok(&["create", "namespace", &ns]);
    for o in ["o1", "o2", "o3", "o4", "o5"] {
        c.ok(&["create", "configmap", o, "-n", &ns, "--from-literal=k=v"]);
    }
    let (u1, u2, u3, u4, u5) = (
        uid(&c, &ns, "cm/o1"),
        uid(&c, &ns, "cm/o2"),
        uid(&c, &ns, "cm/o3"),
        uid(&c, &ns, "cm/o4"),
        uid(&c, &ns, "cm/o5"),
    );
    dependent(&c, &ns, "ConfigMap", "d1", &[("o1", &u1, false)], "");
    dependent(&c, &ns, "Secret", "d2", &[("o1", &u1, true)], "");
    dependent(
        &c,
        &ns,
        "ConfigMap",
        "d3",
        &[("o2", &u2, true)],
        "example.com/hold",
    );
    dependent(&c, &ns, "ConfigMap", "d4", &[("o3", &u3, true)], "");
    dependent(
        &c,
        &ns,
        "ConfigMap",
        "d5",
        &[("o4", &u4, false), ("o5", &u5, false)],
        "",
    );
    // An owner that never existed: the dependent goes at once.
    dependent(
        &c,
        &ns,
        "ConfigMap",
        "d6",
        &[("ghost", "6a1f0c3e-0000-4000-8000-000000000000", false)],
        "",
    );
    c.wait_for(
        "dangling d6 deleted",
        &["get", "cm", "-n", &ns, "-o", "name"],
        |o| !o.contains("configmap/d6"),
    );

    // Background (kubectl's default): the owner goes now, dependents after.
    c.ok(&["delete", "cm", "o1", "-n", &ns]);
    c.wait_for(
        "d1 collected",
        &["get", "cm", "-n", &ns, "-o", "name"],
        |o| !o.contains("configmap/d1"),
    );
    c.wait_for(
        "d2 collected",
        &["get", "secrets", "-n", &ns, "-o", "name"],
        |o| !o.contains("secret/d2"),
    );

    // Foreground: the owner waits, marked, for its blocking dependent.
    c.ok(&[
        "delete",
        "cm",
        "o2",
        "-n",
        &ns,
        "--cascade=foreground",
        "--wait=false",
    ]);
    c.wait_for(
        "d3 being deleted",
        &[
            "get",
            "cm",
            "d3",
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ],
        |o| !o.is_empty(),
    );
    let f = c.get(&[
        "get",
        "cm",
        "o2",
        "-n",
        &ns,
        "-o",
        "jsonpath={.metadata.finalizers}",
    ]);
    assert!(
        f.contains("foregroundDeletion"),
        "o2 waits with foregroundDeletion: {f}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        c.kubectl(&["get", "cm", "o2", "-n", &ns]).status.success(),
        "o2 stays while d3 does"
    );
    c.ok(&[
        "patch",
        "cm",
        "d3",
        "-n",
        &ns,
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    c.wait_for(
        "o2 gone after d3",
        &["get", "cm", "-n", &ns, "-o", "name"],
        |o| !o.contains("configmap/o2") && !o.contains("configmap/d3"),
    );

    // Orphan: the owner goes, the dependent stays without the reference.
    c.ok(&["delete", "cm", "o3", "-n", &ns, "--cascade=orphan"]);
    c.wait_for("o3 gone", &["get", "cm", "-n", &ns, "-o", "name"], |o| {
        !o.contains("configmap/o3")
    });
    assert_eq!(
        c.get(&[
            "get",
            "cm",
            "d4",
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.ownerReferences}"
        ]),
        ""
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        c.kubectl(&["get", "cm", "d4", "-n", &ns]).status.success(),
        "orphaned d4 stays"
    );

    // One of two owners gone: the dependent stays, with the other reference only.
    c.ok(&["delete", "cm", "o4", "-n", &ns]);
    c.wait_for(
        "d5 keeps o5 only",
        &[
            "get",
            "cm",
            "d5",
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.ownerReferences[*].name}",
        ],
        |o| o == "o5",
    );
    c.ok(&["delete", "cm", "o5", "-n", &ns]);
    c.wait_for(
        "d5 collected",
        &["get", "cm", "-n", &ns, "-o", "name"],
        |o| !o.contains("configmap/d5"),
    );

    // EndpointSlices are owned by their Service: deleting it collects them.
    c.ok_stdin(&["apply", "-n", &ns, "-f", "-"], Some(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {selector: {app: s}, ports: [{port: 80}]}\n",
    ));
    c.wait_for(
        "slice of s",
        &[
            "get",
            "endpointslices",
            "-n",
            &ns,
            "-l",
            "kubernetes.io/service-name=s",
            "-o",
            "name",
        ],
        |o| !o.is_empty(),
    );
    c.ok(&["delete", "svc", "s", "-n", &ns, "--cascade=foreground"]);
    c.wait_for(
        "slice of s collected",
        &[
            "get",
            "endpointslices",
            "-n",
            &ns,
            "-l",
            "kubernetes.io/service-name=s",
            "-o",
            "name",
        ],
        |o| o.is_empty(),
    );
}

#[test]
fn resourcequota_status_tracks_usage() {
    let c = Cluster::start("quota", |_| {});
    let ns = format!("rq-{}", std::process::id());
    c.ok(&["create", "namespace", &ns]);
    c.ok(&["create", "configmap", "a", "-n", &ns, "--from-literal=k=v"]);
    c.ok(&[
        "create",
        "quota",
        "q",
        "-n",
        &ns,
        "--hard=configmaps=5,count/deployments.apps=2,pods=3",
    ]);
    // kube-root-ca.crt + a: 2 configmaps.
    c.wait_for(
        "hard mirrored",
        &[
            "get",
            "quota",
            "q",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.hard.configmaps}",
        ],
        |o| o == "5",
    );
    c.wait_for(
        "used counted",
        &[
            "get",
            "quota",
            "q",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.used.configmaps}",
        ],
        |o| o == "2",
    );
    c.ok(&["create", "configmap", "b", "-n", &ns, "--from-literal=k=v"]);
    c.wait_for(
        "used grows",
        &[
            "get",
            "quota",
            "q",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.used.configmaps}",
        ],
        |o| o == "3",
    );
    assert_eq!(
        c.get(&[
            "get",
            "quota",
            "q",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.used.count/deployments\\.apps}"
        ]),
        "0"
    );
    // A spec change is reflected at once.
    c.ok(&[
        "patch",
        "quota",
        "q",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"hard":{"configmaps":"4","secrets":"1"}}}"#,
    ]);
    c.wait_for(
        "new hard",
        &[
            "get",
            "quota",
            "q",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.hard.secrets}/{.status.used.secrets}",
        ],
        |o| o == "1/0",
    );
    let out = c.kubectl(&["create", "configmap", "d", "-n", &ns]);
    let out2 = c.kubectl(&["create", "configmap", "e", "-n", &ns]);
    assert!(
        out.status.success() && !out2.status.success(),
        "the 5th configmap exceeds configmaps=4"
    );
    assert!(String::from_utf8_lossy(&out2.stderr).contains("exceeded quota"));
}
