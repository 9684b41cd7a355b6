//! ResourceQuota admission on a real SQLite store: usage in `status.used` charged with
//! CAS, so concurrent creates against `pods=1` admit exactly one; the 403 message;
//! release on delete; undo of a charge whose write failed; pods without requests.

use std::sync::Arc;

use hull_control::admission::{Admission, AdmissionError, Operation, Request};
use hull_control::store::{self, Store};
use serde_json::{Value, json};

mod store_support;

use store_support::Backend;

struct Fixture {
    store: Arc<dyn Store>,
    backend: Backend,
}

async fn fixture(_test: &str) -> Fixture {
    on(Backend::sqlite().await).await
}

async fn on(backend: Backend) -> Fixture {
    let store = store::open(&backend.url()).await.expect("open store");
    for ns in ["default", "q1"] {
        let mut obj = json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":ns}});
        hull_control::admission::default("Namespace", &mut obj);
        store
            .create(
                &format!("/registry/namespaces/{ns}"),
                serde_json::to_vec(&obj).unwrap(),
            )
            .await
            .expect("namespace");
    }
    Fixture { store, backend }
}

fn req<'a>(
    op: Operation,
    kind: &'a str,
    resource: &'a str,
    ns: &'a str,
    name: &'a str,
) -> Request<'a> {
    Request {
        operation: op,
        group: "",
        version: "v1",
        kind,
        resource,
        subresource: None,
        namespace: Some(ns),
        name,
        dry_run: false,
    }
}

fn pod(name: &str, ns: &str, requests: Option<Value>) -> Value {
    let mut c = json!({"name":"c","image":"busybox"});
    if let Some(r) = requests {
        c["resources"] = json!({"requests": r});
    }
    json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":name,"namespace":ns,"uid":format!("uid-{name}")},
           "spec":{"containers":[c]}})
}

/// Admits and stores an object as the API server does (undo when the write fails).
async fn create(
    adm: &Admission,
    store: &dyn Store,
    kind: &str,
    resource: &str,
    mut obj: Value,
) -> Result<Value, AdmissionError> {
    let ns = obj["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let r = req(Operation::Create, kind, resource, &ns, &name);
    let admitted = adm.admit(store, &r, &mut obj, None).await?;
    let key = format!("/registry/{resource}/{ns}/{name}");
    match store.create(&key, serde_json::to_vec(&obj).unwrap()).await {
        Ok(_) => {
            admitted.commit(store).await?;
            Ok(obj)
        }
        Err(e) => {
            admitted.undo(store).await?;
            Err(e.into())
        }
    }
}

async fn quota_used(store: &dyn Store, ns: &str, name: &str) -> Value {
    let kv = store
        .get(&format!("/registry/resourcequotas/{ns}/{name}"))
        .await
        .unwrap()
        .expect("quota exists");
    let v: Value = serde_json::from_slice(&kv.value).unwrap();
    v["status"]["used"].clone()
}

fn quota(name: &str, ns: &str, hard: Value) -> Value {
    json!({"apiVersion":"v1","kind":"ResourceQuota","metadata":{"name":name,"namespace":ns},"spec":{"hard":hard}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_against_pods_1_admit_exactly_one() {
    let f = fixture("race").await;
    let adm = Arc::new(Admission::default());
    create(
        &adm,
        &*f.store,
        "ResourceQuota",
        "resourcequotas",
        quota("q", "q1", json!({"pods":"1"})),
    )
    .await
    .expect("quota");
    assert_eq!(quota_used(&*f.store, "q1", "q").await, json!({"pods":"0"}));

    const N: usize = 16;
    let mut tasks = Vec::new();
    for i in 0..N {
        let (adm, store) = (adm.clone(), f.store.clone());
        tasks.push(tokio::spawn(async move {
            create(
                &adm,
                &*store,
                "Pod",
                "pods",
                pod(&format!("p{i}"), "q1", None),
            )
            .await
        }));
    }
    let mut admitted = 0;
    let mut denied = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => admitted += 1,
            Err(e) => denied.push(e),
        }
    }
    assert_eq!(
        admitted, 1,
        "exactly one pod fits pods=1; denied: {denied:?}"
    );
    for e in &denied {
        assert_eq!(e.status_code(), 403, "{e}");
        assert!(
            e.to_string().ends_with(
                "is forbidden: exceeded quota: q, requested: pods=1, used: pods=1, limited: pods=1"
            ),
            "{e}"
        );
    }
    assert_eq!(f.store.count("/registry/pods/q1/").await.unwrap(), 1);
    assert_eq!(quota_used(&*f.store, "q1", "q").await, json!({"pods":"1"}));
}

/// Two API servers (two store clients, two admission chains) on one etcd race for the
/// last pod of a quota: still exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_one_etcd_admit_exactly_one() {
    let f = on(Backend::etcd().await).await;
    let second = store::open(&f.backend.url())
        .await
        .expect("second etcd client");
    let adm = Arc::new(Admission::default());
    create(
        &adm,
        &*f.store,
        "ResourceQuota",
        "resourcequotas",
        quota("q", "q1", json!({"pods":"2"})),
    )
    .await
    .expect("quota");
    create(&adm, &*f.store, "Pod", "pods", pod("first", "q1", None))
        .await
        .expect("first pod");
    const N: usize = 12;
    let mut tasks = Vec::new();
    for i in 0..N {
        let store = if i % 2 == 0 {
            f.store.clone()
        } else {
            second.clone()
        };
        let adm = Arc::new(Admission::default());
        tasks.push(tokio::spawn(async move {
            create(
                &adm,
                &*store,
                "Pod",
                "pods",
                pod(&format!("p{i}"), "q1", None),
            )
            .await
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => admitted += 1,
            Err(e) => assert!(
                e.to_string().contains(
                    "exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"
                ),
                "{e}"
            ),
        }
    }
    assert_eq!(admitted, 1);
    assert_eq!(f.store.count("/registry/pods/q1/").await.unwrap(), 2);
    assert_eq!(quota_used(&*second, "q1", "q").await, json!({"pods":"2"}));
}

#[tokio::test]
async fn delete_releases_and_failed_write_undoes() {
    let f = fixture("release").await;
    let adm = Admission::default();
    let store = &*f.store;
    create(
        &adm,
        store,
        "ResourceQuota",
        "resourcequotas",
        quota("q", "q1", json!({"pods":"1","count/configmaps":"5"})),
    )
    .await
    .unwrap();
    let p = create(&adm, store, "Pod", "pods", pod("a", "q1", None))
        .await
        .unwrap();
    // A create whose store write fails (the name exists) must not keep its charge.
    let dup = create(&adm, store, "Pod", "pods", pod("a", "q1", None))
        .await
        .unwrap_err();
    assert!(dup.to_string().contains("exceeded quota"), "{dup}");
    let (_, last) = store.delete("/registry/pods/q1/a", None).await.unwrap();
    let last: Value = serde_json::from_slice(&last.value).unwrap();
    assert_eq!(last, p);
    adm.deleted(store, "pods", "", Some("q1"), &last)
        .await
        .unwrap();
    assert_eq!(quota_used(store, "q1", "q").await["pods"], "0");

    // Now the slot is free again; and a failed write (AlreadyExists) gives it back.
    create(&adm, store, "Pod", "pods", pod("b", "q1", None))
        .await
        .unwrap();
    store.delete("/registry/pods/q1/b", None).await.unwrap();
    adm.deleted(store, "pods", "", Some("q1"), &pod("b", "q1", None))
        .await
        .unwrap();
    store
        .create("/registry/pods/q1/c", b"{}".to_vec())
        .await
        .unwrap();
    let err = create(&adm, store, "Pod", "pods", pod("c", "q1", None))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 500, "{err}");
    assert_eq!(
        quota_used(store, "q1", "q").await["pods"],
        "0",
        "undo gave the charge back"
    );
    assert_eq!(quota_used(store, "q1", "q").await["count/configmaps"], "0");
}

#[tokio::test]
async fn compute_quota_needs_requests_and_counts_them() {
    let f = fixture("compute").await;
    let adm = Admission::default();
    let store = &*f.store;
    // A pod that exists before the quota is counted when the quota is created.
    create(
        &adm,
        store,
        "Pod",
        "pods",
        pod("early", "q1", Some(json!({"cpu":"300m","memory":"64Mi"}))),
    )
    .await
    .unwrap();
    create(
        &adm,
        store,
        "ResourceQuota",
        "resourcequotas",
        quota(
            "cq",
            "q1",
            json!({"requests.cpu":"1","requests.memory":"1Gi","pods":"10"}),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        quota_used(store, "q1", "cq").await,
        json!({"pods":"1","requests.cpu":"300m","requests.memory":"64Mi"})
    );
    let err = create(&adm, store, "Pod", "pods", pod("none", "q1", None))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 403);
    assert!(
        err.to_string()
            .contains("failed quota: cq: must specify requests.cpu for: c; requests.memory for: c"),
        "{err}"
    );
    create(
        &adm,
        store,
        "Pod",
        "pods",
        pod("ok", "q1", Some(json!({"cpu":"700m","memory":"64Mi"}))),
    )
    .await
    .unwrap();
    let err = create(
        &adm,
        store,
        "Pod",
        "pods",
        pod("big", "q1", Some(json!({"cpu":"1m","memory":"1Mi"}))),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().ends_with("exceeded quota: cq, requested: requests.cpu=1m, used: requests.cpu=1, limited: requests.cpu=1"),
        "{err}"
    );
    // Dry run checks but charges nothing.
    let mut p = pod("dry", "q1", Some(json!({"cpu":"0","memory":"1Mi"})));
    let mut r = req(Operation::Create, "Pod", "pods", "q1", "dry");
    r.dry_run = true;
    adm.admit(store, &r, &mut p, None).await.unwrap();
    assert_eq!(
        quota_used(store, "q1", "cq").await["requests.memory"],
        "128Mi"
    );
}

#[tokio::test]
async fn finished_pods_free_their_quota_on_status_update() {
    let f = fixture("finish").await;
    let adm = Admission::default();
    let store = &*f.store;
    create(
        &adm,
        store,
        "ResourceQuota",
        "resourcequotas",
        quota("q", "q1", json!({"pods":"1"})),
    )
    .await
    .unwrap();
    let old = create(&adm, store, "Pod", "pods", pod("a", "q1", None))
        .await
        .unwrap();
    let mut new = old.clone();
    new["status"]["phase"] = json!("Succeeded");
    let mut r = req(Operation::Update, "Pod", "pods", "q1", "a");
    r.subresource = Some("status");
    let admitted = adm.admit(store, &r, &mut new, Some(&old)).await.unwrap();
    admitted.commit(store).await.unwrap();
    assert_eq!(quota_used(store, "q1", "q").await["pods"], "0");
}

#[tokio::test]
async fn scoped_quota_counts_only_the_pods_it_selects() {
    let f = fixture("scopes").await;
    let adm = Admission::default();
    let store = &*f.store;
    let mut q = quota("be", "q1", json!({"pods":"1"}));
    q["spec"]["scopes"] = json!(["BestEffort"]);
    create(&adm, store, "ResourceQuota", "resourcequotas", q)
        .await
        .unwrap();
    // Pods with requests are not BestEffort: not counted, never refused by this quota.
    for i in 0..3 {
        create(
            &adm,
            store,
            "Pod",
            "pods",
            pod(&format!("burst{i}"), "q1", Some(json!({"cpu":"10m"}))),
        )
        .await
        .unwrap();
    }
    assert_eq!(quota_used(store, "q1", "be").await, json!({"pods":"0"}));
    create(&adm, store, "Pod", "pods", pod("be1", "q1", None))
        .await
        .unwrap();
    let err = create(&adm, store, "Pod", "pods", pod("be2", "q1", None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exceeded quota: be"), "{err}");
    // Deleting a pod the quota never counted leaves its usage alone.
    let (_, kv) = store
        .delete("/registry/pods/q1/burst0", None)
        .await
        .unwrap();
    let burst: Value = serde_json::from_slice(&kv.value).unwrap();
    adm.deleted(store, "pods", "", Some("q1"), &burst)
        .await
        .unwrap();
    assert_eq!(quota_used(store, "q1", "be").await, json!({"pods":"1"}));
}

#[tokio::test]
async fn reconcile_corrects_usage_left_by_a_crash() {
    let f = fixture("reconcile").await;
    let adm = Admission::default();
    let store = &*f.store;
    create(
        &adm,
        store,
        "ResourceQuota",
        "resourcequotas",
        quota("q", "q1", json!({"pods":"2","requests.cpu":"1"})),
    )
    .await
    .unwrap();
    create(
        &adm,
        store,
        "Pod",
        "pods",
        pod("real", "q1", Some(json!({"cpu":"100m"}))),
    )
    .await
    .unwrap();
    // A charge whose pod write never happened (the server died in between).
    let mut ghost = pod("ghost", "q1", Some(json!({"cpu":"500m"})));
    let r = req(Operation::Create, "Pod", "pods", "q1", "ghost");
    adm.admit(store, &r, &mut ghost, None).await.unwrap();
    assert_eq!(
        quota_used(store, "q1", "q").await,
        json!({"pods":"2","requests.cpu":"600m"})
    );
    assert_eq!(
        hull_control::admission::quota::reconcile(store)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        quota_used(store, "q1", "q").await,
        json!({"pods":"1","requests.cpu":"100m"})
    );
    assert_eq!(
        hull_control::admission::quota::reconcile(store)
            .await
            .unwrap(),
        0,
        "nothing left to fix"
    );
}
