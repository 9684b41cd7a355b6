//! Authorization against a real `hull server`, driven by kubectl 1.35 with client
//! certificates of each identity: the default roles exist, kubelets (Node authorizer) and
//! kube-proxy may do what they need and no more, RBAC Roles/Bindings (and aggregation)
//! are enforced as soon as they are written, and denials read like kube-apiserver's.

mod api_support;

use std::path::Path;
use std::time::Duration;

use api_support::Server;

fn run(s: &Server, kc: &Path, args: &[&str]) -> (bool, String) {
    let out = s.kubectl_kc(kc, args, None);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn allowed(s: &Server, kc: &Path, args: &[&str]) -> String {
    let (ok, text) = run(s, kc, args);
    assert!(ok, "kubectl {args:?} should be allowed: {text}");
    text
}

fn denied(s: &Server, kc: &Path, args: &[&str]) -> String {
    let (ok, text) = run(s, kc, args);
    assert!(!ok, "kubectl {args:?} should be forbidden: {text}");
    assert!(text.contains("forbidden"), "kubectl {args:?}: {text}");
    text
}

/// RBAC objects reach the authorizer through a watch: wait until a request is allowed.
fn eventually_allowed(s: &Server, kc: &Path, args: &[&str]) -> String {
    for _ in 0..100 {
        let (ok, text) = run(s, kc, args);
        if ok {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    allowed(s, kc, args)
}

fn eventually_denied(s: &Server, kc: &Path, args: &[&str]) -> String {
    for _ in 0..100 {
        let (ok, text) = run(s, kc, args);
        if !ok {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    denied(s, kc, args)
}

const NODE: &str = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"NAME"}}"#;
const LEASE: &str = r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease",
  "metadata":{"name":"NAME","namespace":"kube-node-lease"},"spec":{"holderIdentity":"NAME"}}"#;

#[test]
fn default_roles_nodes_and_kube_proxy() {
    let s = Server::start("rbac-node", None);
    let out = s.ok(&[
        "get",
        "clusterroles",
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:node",
        "system:node-proxier",
        "system:kube-scheduler",
        "system:kube-controller-manager",
        "system:basic-user",
        "system:discovery",
        "system:public-info-viewer",
        "-o",
        "name",
    ]);
    assert_eq!(out.lines().count(), 11, "{out}");
    let b = s.ok(&[
        "get",
        "clusterrolebinding",
        "cluster-admin",
        "-o",
        "jsonpath={.subjects[0].name}",
    ]);
    assert_eq!(b, "system:masters");

    let pid = std::process::id();
    let (n1, n2) = (format!("n1-{pid}"), format!("n2-{pid}"));
    let kubelet = s.user_kubeconfig(&format!("system:node:{n1}"), &["system:nodes"]);
    // Its own Node and Lease: create and update.
    let node1 = NODE.replace("NAME", &n1);
    let out = s.kubectl_kc(&kubelet, &["create", "-f", "-"], Some(&node1));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    allowed(&s, &kubelet, &["label", "node", &n1, "hull.dev/own=yes"]);
    let out = s.kubectl_kc(
        &kubelet,
        &["create", "-f", "-"],
        Some(&LEASE.replace("NAME", &n1)),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    allowed(
        &s,
        &kubelet,
        &["annotate", "lease", "-n", "kube-node-lease", &n1, "a=b"],
    );
    // Another node's objects: readable, not writable.
    s.kubectl_stdin(&["create", "-f", "-"], Some(&NODE.replace("NAME", &n2)));
    s.kubectl_stdin(&["create", "-f", "-"], Some(&LEASE.replace("NAME", &n2)));
    allowed(&s, &kubelet, &["get", "node", &n2]);
    let msg = denied(&s, &kubelet, &["label", "node", &n2, "x=y"]);
    assert!(
        msg.contains(&format!(
            "nodes \"{n2}\" is forbidden: User \"system:node:{n1}\" cannot patch resource \"nodes\" in API group \"\" at the cluster scope"
        )),
        "{msg}"
    );
    denied(
        &s,
        &kubelet,
        &["annotate", "lease", "-n", "kube-node-lease", &n2, "a=b"],
    );
    // Pods, config: read; no writes beyond what a kubelet does.
    allowed(&s, &kubelet, &["get", "pods", "-A"]);
    allowed(&s, &kubelet, &["get", "configmaps", "-n", "kube-system"]);
    allowed(&s, &kubelet, &["get", "secrets", "-n", "default"]);
    allowed(&s, &kubelet, &["get", "services,endpoints", "-A"]);
    let msg = denied(
        &s,
        &kubelet,
        &["create", "configmap", "c1", "-n", "default"],
    );
    assert!(
        msg.contains(&format!(
            "configmaps is forbidden: User \"system:node:{n1}\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"default\""
        )),
        "{msg}"
    );
    denied(&s, &kubelet, &["delete", "secret", "nope", "-n", "default"]);
    denied(&s, &kubelet, &["get", "deployments", "-A"]);
    // The same name without the group is not a node.
    let fake = s.user_kubeconfig(&format!("system:node:{n1}"), &[]);
    denied(&s, &fake, &["get", "pods", "-A"]);

    // kube-proxy: services, endpoints, endpointslices, nodes; events; nothing else.
    let proxy = s.user_kubeconfig("system:kube-proxy", &["system:node-proxier"]);
    allowed(
        &s,
        &proxy,
        &["get", "services,endpoints,endpointslices", "-A"],
    );
    allowed(&s, &proxy, &["get", "nodes"]);
    // hull's proxy is also the cluster DNS: it reads pods and namespaces too.
    allowed(&s, &proxy, &["get", "pods,namespaces", "-A"]);
    denied(&s, &proxy, &["get", "secrets", "-A"]);
    denied(
        &s,
        &proxy,
        &["create", "service", "clusterip", "x", "--tcp=80"],
    );
    // ... and writes its own DNS Service in kube-system, nothing else.
    let dns = format!("dns-{pid}");
    allowed(
        &s,
        &proxy,
        &[
            "create",
            "service",
            "clusterip",
            &dns,
            "--tcp=53",
            "-n",
            "kube-system",
        ],
    );
    denied(
        &s,
        &proxy,
        &["delete", "service", &dns, "-n", "kube-system"],
    );
    denied(&s, &proxy, &["delete", "node", &n2]);

    // A user with no bindings: discovery yes, resources no.
    let nobody = s.user_kubeconfig(&format!("nobody-{pid}"), &[]);
    allowed(&s, &nobody, &["version"]);
    allowed(&s, &nobody, &["api-versions"]);
    let msg = denied(&s, &nobody, &["get", "pods"]);
    assert!(
        msg.contains(&format!(
            "pods is forbidden: User \"nobody-{pid}\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        )),
        "{msg}"
    );
}

#[test]
fn roles_bindings_and_aggregation_are_enforced() {
    let s = Server::start("rbac-roles", None);
    let pid = std::process::id();
    let ns = format!("team-{pid}");
    let user = format!("alice-{pid}");
    s.ok(&["create", "namespace", &ns]);
    let alice = s.user_kubeconfig(&user, &["dev"]);
    denied(&s, &alice, &["get", "pods", "-n", &ns]);

    // A Role + RoleBinding in one namespace.
    s.ok(&[
        "create",
        "role",
        "pod-reader",
        "-n",
        &ns,
        "--verb=get,list,watch",
        "--resource=pods",
    ]);
    s.ok(&[
        "create",
        "rolebinding",
        "alice-reads",
        "-n",
        &ns,
        "--role=pod-reader",
        &format!("--user={user}"),
    ]);
    eventually_allowed(&s, &alice, &["get", "pods", "-n", &ns]);
    denied(&s, &alice, &["get", "pods", "-n", "default"]);
    denied(&s, &alice, &["delete", "pod", "any", "-n", &ns]);
    // Deleting the binding takes the permission away again.
    s.ok(&["delete", "rolebinding", "alice-reads", "-n", &ns]);
    eventually_denied(&s, &alice, &["get", "pods", "-n", &ns]);

    // A group bound to the built-in `edit` ClusterRole in the namespace.
    s.ok(&[
        "create",
        "rolebinding",
        "devs-edit",
        "-n",
        &ns,
        "--clusterrole=edit",
        "--group=dev",
    ]);
    eventually_allowed(&s, &alice, &["create", "configmap", "c1", "-n", &ns]);
    allowed(
        &s,
        &alice,
        &["create", "deployment", "web", "--image=busybox", "-n", &ns],
    );
    denied(
        &s,
        &alice,
        &[
            "create",
            "role",
            "r",
            "--verb=get",
            "--resource=pods",
            "-n",
            &ns,
        ],
    );
    denied(&s, &alice, &["get", "configmaps", "-n", "default"]);

    // ClusterRoleBinding to `view`; aggregation extends `view` with a labelled role.
    s.ok(&[
        "create",
        "clusterrolebinding",
        &format!("alice-view-{pid}"),
        "--clusterrole=view",
        &format!("--user={user}"),
    ]);
    eventually_allowed(&s, &alice, &["get", "deployments", "-A"]);
    denied(&s, &alice, &["get", "storageclasses"]);
    let agg = format!(
        r#"{{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole",
  "metadata":{{"name":"sc-view-{pid}","labels":{{"rbac.authorization.k8s.io/aggregate-to-view":"true"}}}},
  "rules":[{{"apiGroups":["storage.k8s.io"],"resources":["storageclasses"],"verbs":["get","list","watch"]}}]}}"#
    );
    let out = s.kubectl_stdin(&["create", "-f", "-"], Some(&agg));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually_allowed(&s, &alice, &["get", "storageclasses"]);

    // A binding to a missing role grants nothing and says why.
    let bob = format!("bob-{pid}");
    let bobkc = s.user_kubeconfig(&bob, &[]);
    s.ok(&[
        "create",
        "rolebinding",
        "bob-missing",
        "-n",
        &ns,
        "--role=no-such-role",
        &format!("--user={bob}"),
    ]);
    let msg = eventually_denied_with(
        &s,
        &bobkc,
        &["get", "pods", "-n", &ns],
        "RBAC: role.rbac.authorization.k8s.io \"no-such-role\" not found",
    );
    assert!(msg.contains("forbidden"), "{msg}");

    // A service account's identity is matched by ServiceAccount subjects.
    let sa = s.user_kubeconfig(
        &format!("system:serviceaccount:{ns}:builder"),
        &[
            "system:serviceaccounts",
            &format!("system:serviceaccounts:{ns}"),
        ],
    );
    denied(&s, &sa, &["get", "secrets", "-n", &ns]);
    s.ok(&[
        "create",
        "rolebinding",
        "builder-admin",
        "-n",
        &ns,
        "--clusterrole=admin",
        &format!("--serviceaccount={ns}:builder"),
    ]);
    eventually_allowed(&s, &sa, &["get", "secrets", "-n", &ns]);
    allowed(
        &s,
        &sa,
        &[
            "create",
            "role",
            "r",
            "--verb=get",
            "--resource=pods",
            "-n",
            &ns,
        ],
    );
}

fn eventually_denied_with(s: &Server, kc: &Path, args: &[&str], want: &str) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        let (ok, text) = run(s, kc, args);
        assert!(!ok, "kubectl {args:?} should be forbidden: {text}");
        if text.contains(want) {
            return text;
        }
        last = text;
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("kubectl {args:?}: wanted {want:?}, got {last}");
}
