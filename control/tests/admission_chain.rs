//! The whole admission chain on a real SQLite store: namespace lifecycle, defaults,
//! LimitRange defaults and bounds, validation errors as Kubernetes Status objects.

use std::sync::Arc;

use hull_control::admission::{Admission, Operation, Request};
use hull_control::store::{self, Store};
use serde_json::{Value, json};

struct Fixture {
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn fixture(test: &str) -> Fixture {
    let dir = tempfile::Builder::new()
        .prefix(&format!("hull-chain-{test}-{}-", std::process::id()))
        .tempdir()
        .expect("temp dir");
    let store = store::open(&format!("sqlite:{}", dir.path().join("state.db").display()))
        .await
        .expect("open sqlite store");
    let put = |name: &str, obj: Value| {
        let store = store.clone();
        let key = format!("/registry/namespaces/{name}");
        async move {
            store
                .create(&key, serde_json::to_vec(&obj).unwrap())
                .await
                .unwrap()
        }
    };
    put(
        "default",
        json!({"metadata":{"name":"default"},"status":{"phase":"Active"}}),
    )
    .await;
    put(
        "dying",
        json!({"metadata":{"name":"dying","deletionTimestamp":"2026-01-01T00:00:00Z"},"status":{"phase":"Terminating"}}),
    )
    .await;
    Fixture { store, _dir: dir }
}

fn req<'a>(
    op: Operation,
    kind: &'a str,
    resource: &'a str,
    ns: Option<&'a str>,
    name: &'a str,
) -> Request<'a> {
    Request {
        operation: op,
        group: "",
        version: "v1",
        kind,
        resource,
        subresource: None,
        namespace: ns,
        name,
        dry_run: false,
    }
}

fn pod(name: &str, ns: &str, container: Value) -> Value {
    json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":name,"namespace":ns},"spec":{"containers":[container]}})
}

#[tokio::test]
async fn namespace_lifecycle() {
    let f = fixture("ns").await;
    let adm = Admission::default();
    let store = &*f.store;
    let mut p = pod("p", "nowhere", json!({"name":"c","image":"busybox"}));
    let err = adm
        .admit(
            store,
            &req(Operation::Create, "Pod", "pods", Some("nowhere"), "p"),
            &mut p,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 404);
    assert_eq!(err.to_string(), "namespaces \"nowhere\" not found");
    let st = err.status();
    assert_eq!(st["reason"], "NotFound");
    assert_eq!(st["details"], json!({"name":"nowhere","kind":"namespaces"}));

    let mut p = pod("p", "dying", json!({"name":"c","image":"busybox"}));
    let err = adm
        .admit(
            store,
            &req(Operation::Create, "Pod", "pods", Some("dying"), "p"),
            &mut p,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 403);
    assert_eq!(
        err.to_string(),
        "pods \"p\" is forbidden: unable to create new content in namespace dying because it is being terminated"
    );
    assert_eq!(
        err.status()["details"]["causes"][0]["reason"],
        "NamespaceTerminating"
    );

    let mut ns = json!({"metadata":{"name":"default"}});
    let err = adm
        .admit(
            store,
            &req(
                Operation::Delete,
                "Namespace",
                "namespaces",
                None,
                "default",
            ),
            &mut ns,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "namespaces \"default\" is forbidden: this namespace may not be deleted"
    );
    // Updates in a terminating namespace are allowed (finalizers must be removable).
    let old = pod("p", "dying", json!({"name":"c","image":"busybox"}));
    let mut old_defaulted = old.clone();
    hull_control::admission::default("Pod", &mut old_defaulted);
    let mut new = old_defaulted.clone();
    adm.admit(
        store,
        &req(Operation::Update, "Pod", "pods", Some("dying"), "p"),
        &mut new,
        Some(&old_defaulted),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn invalid_pod_is_422_with_kubernetes_status() {
    let f = fixture("invalid").await;
    let adm = Admission::default();
    let mut p = pod("bad2", "default", json!({"name":"c"}));
    let err = adm
        .admit(
            &*f.store,
            &req(Operation::Create, "Pod", "pods", Some("default"), "bad2"),
            &mut p,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 422);
    assert_eq!(
        err.status(),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":"Pod \"bad2\" is invalid: spec.containers[0].image: Required value",
               "reason":"Invalid",
               "details":{"name":"bad2","kind":"Pod",
                          "causes":[{"reason":"FieldValueRequired","message":"Required value","field":"spec.containers[0].image"}]},
               "code":422})
    );
}

#[tokio::test]
async fn limit_range_defaults_and_bounds() {
    let f = fixture("limits").await;
    let adm = Admission::default();
    let store = &*f.store;
    let mut lr = json!({"apiVersion":"v1","kind":"LimitRange","metadata":{"name":"lr","namespace":"default"},
        "spec":{"limits":[{"type":"Container","max":{"cpu":"1"},"defaultRequest":{"memory":"32Mi"}}]}});
    adm.admit(
        store,
        &req(
            Operation::Create,
            "LimitRange",
            "limitranges",
            Some("default"),
            "lr",
        ),
        &mut lr,
        None,
    )
    .await
    .unwrap();
    store
        .create(
            "/registry/limitranges/default/lr",
            serde_json::to_vec(&lr).unwrap(),
        )
        .await
        .unwrap();

    let mut p = pod("p", "default", json!({"name":"c","image":"busybox:1.36"}));
    adm.admit(
        store,
        &req(Operation::Create, "Pod", "pods", Some("default"), "p"),
        &mut p,
        None,
    )
    .await
    .unwrap();
    let res = &p["spec"]["containers"][0]["resources"];
    assert_eq!(res["limits"], json!({"cpu":"1"}), "default limit = max");
    assert_eq!(res["requests"], json!({"cpu":"1","memory":"32Mi"}));
    assert_eq!(
        p["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container c; cpu limit for container c"
    );
    assert_eq!(
        p["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    assert_eq!(p["status"]["qosClass"], "Burstable");

    let mut big = pod(
        "big",
        "default",
        json!({"name":"c","image":"b","resources":{"limits":{"cpu":"2"}}}),
    );
    let err = adm
        .admit(
            store,
            &req(Operation::Create, "Pod", "pods", Some("default"), "big"),
            &mut big,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 403);
    assert_eq!(
        err.to_string(),
        "pods \"big\" is forbidden: maximum cpu usage per Container is 1, but limit is 2"
    );
}

#[tokio::test]
async fn pod_and_claim_limit_ranges() {
    let f = fixture("podlimits").await;
    let adm = Admission::default();
    let store = &*f.store;
    let lr = json!({"apiVersion":"v1","kind":"LimitRange","metadata":{"name":"lr","namespace":"default"},
        "spec":{"limits":[{"type":"Pod","max":{"memory":"100Mi"}},
                          {"type":"PersistentVolumeClaim","min":{"storage":"1Gi"},"max":{"storage":"10Gi"}}]}});
    store
        .create(
            "/registry/limitranges/default/lr",
            serde_json::to_vec(&lr).unwrap(),
        )
        .await
        .unwrap();
    let c =
        |n: &str, mem: &str| json!({"name":n,"image":"b","resources":{"limits":{"memory":mem}}});
    let mut ok = pod("ok", "default", c("a", "50Mi"));
    adm.admit(
        store,
        &req(Operation::Create, "Pod", "pods", Some("default"), "ok"),
        &mut ok,
        None,
    )
    .await
    .unwrap();
    let mut two = pod("two", "default", c("a", "60Mi"));
    two["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(c("b", "60Mi"));
    let err = adm
        .admit(
            store,
            &req(Operation::Create, "Pod", "pods", Some("default"), "two"),
            &mut two,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "pods \"two\" is forbidden: maximum memory usage per Pod is 100Mi, but limit is 120Mi"
    );
    let claim = |size: &str| {
        json!({"apiVersion":"v1","kind":"PersistentVolumeClaim",
        "metadata":{"name":"c","namespace":"default"},
        "spec":{"accessModes":["ReadWriteOnce"],"resources":{"requests":{"storage":size}}}})
    };
    let r = req(
        Operation::Create,
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        Some("default"),
        "c",
    );
    adm.admit(store, &r, &mut claim("5Gi"), None).await.unwrap();
    let err = adm
        .admit(store, &r, &mut claim("500Mi"), None)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "persistentvolumeclaims \"c\" is forbidden: minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi"
    );
    let err = adm
        .admit(store, &r, &mut claim("20Gi"), None)
        .await
        .unwrap_err();
    assert!(
        err.to_string().ends_with(
            "maximum storage usage per PersistentVolumeClaim is 10Gi, but request is 20Gi"
        ),
        "{err}"
    );
}
