//! ClusterIP and NodePort allocation on a real SQLite store: no duplicates under
//! concurrency, requested addresses and ports honoured or refused with a field error,
//! release on delete, repair of allocations left by a crash, dry runs persist nothing.

use std::collections::HashSet;
use std::sync::Arc;

use hull_control::admission::allocator::Allocators;
use hull_control::admission::{Admission, Operation, Request};
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
    let ns = json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"default"},"status":{"phase":"Active"}});
    store
        .create(
            "/registry/namespaces/default",
            serde_json::to_vec(&ns).unwrap(),
        )
        .await
        .unwrap();
    Fixture { store, backend }
}

fn svc(name: &str, spec: Value) -> Value {
    json!({"apiVersion":"v1","kind":"Service","metadata":{"name":name,"namespace":"default"},"spec":spec})
}

async fn create(
    adm: &Admission,
    store: &dyn Store,
    mut obj: Value,
    dry_run: bool,
) -> Result<Value, String> {
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let r = Request {
        operation: Operation::Create,
        group: "",
        version: "v1",
        kind: "Service",
        resource: "services",
        subresource: None,
        namespace: Some("default"),
        name: &name,
        dry_run,
    };
    let admitted = adm
        .admit(store, &r, &mut obj, None)
        .await
        .map_err(|e| e.to_string())?;
    if dry_run {
        return Ok(obj);
    }
    store
        .create(
            &format!("/registry/services/default/{name}"),
            serde_json::to_vec(&obj).unwrap(),
        )
        .await
        .map_err(|e| e.to_string())?;
    admitted.commit(store).await.map_err(|e| e.to_string())?;
    Ok(obj)
}

async fn allocations(store: &dyn Store, what: &str) -> Vec<String> {
    let prefix = format!("/registry/ranges/{what}/");
    store
        .list(&prefix, None, 0, 0)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|kv| kv.key[prefix.len()..].to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_services_get_distinct_ips_and_node_ports() {
    let f = fixture("concurrent").await;
    // A small range so collisions are certain: /27 = 30 usable, static band of 16.
    let adm = Arc::new(Admission::new(
        Allocators::new("10.200.0.0/27", 30000..=30039).unwrap(),
    ));
    const N: usize = 20;
    let mut tasks = Vec::new();
    for i in 0..N {
        let (adm, store) = (adm.clone(), f.store.clone());
        tasks.push(tokio::spawn(async move {
            let s = svc(
                &format!("s{i}"),
                json!({"type":"NodePort","ports":[{"port":80,"name":"a"},{"port":81,"name":"b"}]}),
            );
            create(&adm, &*store, s, false).await
        }));
    }
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for t in tasks {
        let s = t.await.unwrap().expect("every service fits");
        let ip = s["spec"]["clusterIP"].as_str().unwrap().to_string();
        assert_eq!(s["spec"]["clusterIPs"], json!([ip]));
        assert!(ip.starts_with("10.200.0."), "{ip}");
        assert!(ips.insert(ip.clone()), "duplicate ClusterIP {ip}");
        for p in s["spec"]["ports"].as_array().unwrap() {
            let np = p["nodePort"].as_i64().unwrap();
            assert!((30000..=30039).contains(&np));
            assert!(ports.insert(np), "duplicate nodePort {np}");
        }
    }
    assert_eq!(ips.len(), N);
    assert_eq!(ports.len(), 2 * N);
    assert_eq!(allocations(&*f.store, "serviceips").await.len(), N);
    assert_eq!(
        allocations(&*f.store, "servicenodeports").await.len(),
        2 * N
    );
    // The ranges are now nearly full: 40 ports of 40 taken.
    let err = create(
        &adm,
        &*f.store,
        svc("full", json!({"type":"NodePort","ports":[{"port":1}]})),
        false,
    )
    .await
    .unwrap_err();
    assert!(err.contains("range 30000-30039 is full"), "{err}");
    assert_eq!(
        allocations(&*f.store, "serviceips").await.len(),
        N,
        "the IP claimed for the failed service was given back"
    );
}

/// Two API servers on one etcd allocate from the same small range at once: no address
/// or port is handed out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_one_etcd_never_share_an_address() {
    let f = on(Backend::etcd().await).await;
    let second = store::open(&f.backend.url())
        .await
        .expect("second etcd client");
    let range = || Allocators::new("10.201.0.0/27", 31000..=31029).unwrap();
    let (a, b) = (
        Arc::new(Admission::new(range())),
        Arc::new(Admission::new(range())),
    );
    const N: usize = 24;
    let mut tasks = Vec::new();
    for i in 0..N {
        let (adm, store) = if i % 2 == 0 {
            (a.clone(), f.store.clone())
        } else {
            (b.clone(), second.clone())
        };
        tasks.push(tokio::spawn(async move {
            create(
                &adm,
                &*store,
                svc(
                    &format!("s{i}"),
                    json!({"type":"NodePort","ports":[{"port":80}]}),
                ),
                false,
            )
            .await
        }));
    }
    let (mut ips, mut ports) = (HashSet::new(), HashSet::new());
    for t in tasks {
        let s = t.await.unwrap().expect("the range holds them all");
        assert!(
            ips.insert(s["spec"]["clusterIP"].to_string()),
            "duplicate IP in {s}"
        );
        assert!(
            ports.insert(s["spec"]["ports"][0]["nodePort"].as_i64().unwrap()),
            "duplicate port in {s}"
        );
    }
    assert_eq!(allocations(&*second, "serviceips").await.len(), N);
    assert_eq!(allocations(&*f.store, "servicenodeports").await.len(), N);
}

#[tokio::test]
async fn requested_ip_and_port_are_honoured_once() {
    let f = fixture("requested").await;
    let adm = Admission::default();
    let store = &*f.store;
    let a = create(&adm, store, svc("dns", json!({"clusterIP":"10.96.0.10","type":"NodePort","ports":[{"port":53,"nodePort":30053}]})), false)
        .await
        .unwrap();
    assert_eq!(a["spec"]["clusterIP"], "10.96.0.10");
    assert_eq!(a["spec"]["ports"][0]["nodePort"], 30053);
    let err = create(
        &adm,
        store,
        svc(
            "dup",
            json!({"clusterIP":"10.96.0.10","ports":[{"port":1}]}),
        ),
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(
        err,
        "Service \"dup\" is invalid: spec.clusterIPs[0]: Invalid value: [\"10.96.0.10\"]: failed to allocate IP 10.96.0.10: provided IP is already allocated"
    );
    let err = create(
        &adm,
        store,
        svc("out", json!({"clusterIP":"10.0.0.1","ports":[{"port":1}]})),
        false,
    )
    .await
    .unwrap_err();
    assert!(
        err.contains(
            "provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/12"
        ),
        "{err}"
    );
    let err = create(
        &adm,
        store,
        svc(
            "np",
            json!({"type":"NodePort","ports":[{"port":1,"nodePort":30053}]}),
        ),
        false,
    )
    .await
    .unwrap_err();
    assert!(
        err.contains(
            "spec.ports[0].nodePort: Invalid value: 30053: provided port is already allocated"
        ),
        "{err}"
    );
    let err = create(
        &adm,
        store,
        svc(
            "np2",
            json!({"type":"NodePort","ports":[{"port":1,"nodePort":80}]}),
        ),
        false,
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("The range of valid ports is 30000-32767"),
        "{err}"
    );
    // Nothing leaked by the refused services.
    assert_eq!(allocations(store, "serviceips").await, vec!["10.96.0.10"]);
    assert_eq!(allocations(store, "servicenodeports").await, vec!["30053"]);

    // Headless and ExternalName services take no address.
    let h = create(
        &adm,
        store,
        svc("h", json!({"clusterIP":"None","selector":{"a":"b"}})),
        false,
    )
    .await
    .unwrap();
    assert_eq!(h["spec"]["clusterIPs"], json!(["None"]));
    let e = create(
        &adm,
        store,
        svc(
            "e",
            json!({"type":"ExternalName","externalName":"example.test"}),
        ),
        false,
    )
    .await
    .unwrap();
    assert!(e["spec"].get("clusterIP").is_none());
    assert_eq!(allocations(store, "serviceips").await.len(), 1);

    // Delete frees both; the address can be taken again.
    let (_, kv) = store
        .delete("/registry/services/default/dns", None)
        .await
        .unwrap();
    let last: Value = serde_json::from_slice(&kv.value).unwrap();
    adm.deleted(store, "services", "", Some("default"), &last)
        .await
        .unwrap();
    assert!(allocations(store, "serviceips").await.is_empty());
    assert!(allocations(store, "servicenodeports").await.is_empty());
    create(
        &adm,
        store,
        svc(
            "dns2",
            json!({"clusterIP":"10.96.0.10","ports":[{"port":53}]}),
        ),
        false,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn update_keeps_addresses_and_releases_dropped_ports() {
    let f = fixture("update").await;
    let adm = Admission::default();
    let store = &*f.store;
    let old = create(&adm, store, svc("web", json!({"type":"NodePort","ports":[{"port":80,"name":"http"},{"port":443,"name":"https"}]})), false)
        .await
        .unwrap();
    // An apply/replace that repeats neither clusterIP nor nodePorts, and drops a port.
    let mut new = svc(
        "web",
        json!({"type":"NodePort","ports":[{"port":80,"name":"http"}]}),
    );
    let r = Request {
        operation: Operation::Update,
        group: "",
        version: "v1",
        kind: "Service",
        resource: "services",
        subresource: None,
        namespace: Some("default"),
        name: "web",
        dry_run: false,
    };
    let admitted = adm.admit(store, &r, &mut new, Some(&old)).await.unwrap();
    assert_eq!(new["spec"]["clusterIP"], old["spec"]["clusterIP"]);
    assert_eq!(
        new["spec"]["ports"][0]["nodePort"],
        old["spec"]["ports"][0]["nodePort"]
    );
    assert_eq!(
        allocations(store, "servicenodeports").await.len(),
        2,
        "released only once stored"
    );
    admitted.commit(store).await.unwrap();
    assert_eq!(
        allocations(store, "servicenodeports").await,
        vec![old["spec"]["ports"][0]["nodePort"].to_string()]
    );
    // Changing the ClusterIP is refused.
    let mut moved = new.clone();
    moved["spec"]["clusterIP"] = json!("10.96.0.99");
    let err = adm
        .admit(store, &r, &mut moved, Some(&new))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 422);
    assert!(
        err.to_string()
            .contains("spec.clusterIP: Invalid value: \"10.96.0.99\": field is immutable"),
        "{err}"
    );
}

#[tokio::test]
async fn dry_run_allocates_nothing_and_repair_removes_orphans() {
    let f = fixture("repair").await;
    let adm = Admission::default();
    let store = &*f.store;
    let d = create(
        &adm,
        store,
        svc("dry", json!({"type":"NodePort","ports":[{"port":80}]})),
        true,
    )
    .await
    .unwrap();
    assert!(
        d["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| !ip.is_empty())
    );
    assert!(allocations(store, "serviceips").await.is_empty());
    assert!(allocations(store, "servicenodeports").await.is_empty());

    let kept = create(
        &adm,
        store,
        svc("kept", json!({"ports":[{"port":80}]})),
        false,
    )
    .await
    .unwrap();
    // What a crash between allocation and the Service write leaves: an old claim with
    // no Service, and a fresh one (a write in flight) that repair must not touch.
    let old_claim = json!({"namespace":"default","name":"ghost","time":"2020-01-01T00:00:00Z"});
    store
        .create(
            "/registry/ranges/serviceips/10.96.7.7",
            serde_json::to_vec(&old_claim).unwrap(),
        )
        .await
        .unwrap();
    store
        .create(
            "/registry/ranges/servicenodeports/31000",
            serde_json::to_vec(&old_claim).unwrap(),
        )
        .await
        .unwrap();
    let fresh =
        json!({"namespace":"default","name":"inflight","time":hull_control::patch::managed::now()});
    store
        .create(
            "/registry/ranges/serviceips/10.96.8.8",
            serde_json::to_vec(&fresh).unwrap(),
        )
        .await
        .unwrap();
    let removed = adm.allocators.repair(store).await.unwrap();
    assert_eq!(removed, 2);
    let mut ips = allocations(store, "serviceips").await;
    ips.sort();
    let mut want = vec![
        "10.96.8.8".to_string(),
        kept["spec"]["clusterIP"].as_str().unwrap().to_string(),
    ];
    want.sort();
    assert_eq!(ips, want);
    assert!(allocations(store, "servicenodeports").await.is_empty());
    // An orphaned claim on a requested address is taken over rather than refused.
    store
        .create(
            "/registry/ranges/serviceips/10.96.9.9",
            serde_json::to_vec(&old_claim).unwrap(),
        )
        .await
        .unwrap();
    create(
        &adm,
        store,
        svc(
            "takeover",
            json!({"clusterIP":"10.96.9.9","ports":[{"port":80}]}),
        ),
        false,
    )
    .await
    .unwrap();
}
