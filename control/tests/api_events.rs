//! core/v1 and events.k8s.io/v1 Events are one set of objects seen through two versions
//! (one storage, converted both ways), as in Kubernetes: an Event written through either
//! API is read, listed, selected and watched through the other with that version's field
//! names, and invalid Events get a 422 naming the field.

mod api_support;

use api_support::Server;
use serde_json::{Value, json};

const CT: &str = "Content-Type: application/json";

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn post(s: &Server, url: &str, obj: &Value) -> (u16, Value) {
    let (code, body) = s.curl(
        &["-X", "POST", "-H", CT, "--data", &obj.to_string(), url],
        false,
    );
    (code, parse(&body))
}

fn get(s: &Server, url: &str) -> Value {
    let (code, body) = s.curl(&[url], false);
    assert_eq!(code, 200, "GET {url}: {body}");
    parse(&body)
}

fn names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.pointer("/metadata/name").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn core_and_events_v1_share_one_storage() {
    let s = Server::start_tuned("events", None, |o| o.controllers = false);
    let core = format!("{}/api/v1/namespaces/default/events", s.url());
    let v1 = format!(
        "{}/apis/events.k8s.io/v1/namespaces/default/events",
        s.url()
    );

    // A kubelet-style core/v1 Event, read through events.k8s.io/v1.
    let (code, created) = post(
        &s,
        &core,
        &json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "web-0.started", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "name": "web-0",
                "namespace": "default", "uid": "u-web-0"},
            "reason": "Started", "message": "Started container web", "type": "Normal",
            "source": {"component": "kubelet", "host": "node-a"},
            "firstTimestamp": "2026-11-26T03:00:00Z", "lastTimestamp": "2026-11-26T03:00:02Z",
            "count": 2,
        }),
    );
    assert_eq!(code, 201, "{created}");
    let seen = get(&s, &format!("{v1}/web-0.started"));
    assert_eq!(seen["apiVersion"], "events.k8s.io/v1");
    assert_eq!(seen["note"], "Started container web");
    assert_eq!(seen["regarding"]["name"], "web-0");
    assert_eq!(seen["deprecatedSource"]["component"], "kubelet");
    assert_eq!(seen["deprecatedCount"], 2);
    assert_eq!(seen["deprecatedLastTimestamp"], "2026-11-26T03:00:02Z");
    assert!(seen.get("message").is_none() && seen.get("involvedObject").is_none());
    assert_eq!(
        seen["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );

    // An events.k8s.io/v1 Event, read through core/v1.
    let rv_before = get(&s, &core)["metadata"]["resourceVersion"]
        .as_str()
        .expect("list resourceVersion")
        .to_string();
    let (code, created) = post(
        &s,
        &v1,
        &json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "web-1.scheduled", "namespace": "default"},
            "eventTime": "2026-11-26T03:00:05.000000Z",
            "regarding": {"kind": "Pod", "apiVersion": "v1", "name": "web-1",
                "namespace": "default"},
            "reason": "Scheduled", "action": "Binding", "type": "Normal",
            "note": "Successfully assigned default/web-1 to node-a",
            "reportingController": "hull.dev/scheduler", "reportingInstance": "hull-0",
        }),
    );
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["apiVersion"], "events.k8s.io/v1");
    assert_eq!(
        created["note"],
        "Successfully assigned default/web-1 to node-a"
    );
    let seen = get(&s, &format!("{core}/web-1.scheduled"));
    assert_eq!(seen["apiVersion"], "v1");
    assert_eq!(
        seen["message"],
        "Successfully assigned default/web-1 to node-a"
    );
    assert_eq!(seen["involvedObject"]["name"], "web-1");
    assert_eq!(seen["reportingComponent"], "hull.dev/scheduler");
    assert!(seen.get("note").is_none() && seen.get("regarding").is_none());

    // Both lists hold both Events; each version's field names select.
    let both = vec!["web-0.started".to_string(), "web-1.scheduled".to_string()];
    assert_eq!(names(&get(&s, &core)), both);
    assert_eq!(names(&get(&s, &v1)), both);
    assert_eq!(
        names(&get(
            &s,
            &format!("{v1}?fieldSelector=regarding.name%3Dweb-1")
        )),
        ["web-1.scheduled"]
    );
    assert_eq!(
        names(&get(
            &s,
            &format!("{core}?fieldSelector=involvedObject.name%3Dweb-0")
        )),
        ["web-0.started"]
    );
    let table = s.ok(&["get", "events", "-n", "default"]);
    assert!(
        table.contains("Started container web") && table.contains("Successfully assigned"),
        "{table}"
    );

    // A watch through events.k8s.io/v1 sees the Event written through core/v1 after
    // `rv_before` in its own form.
    let (code, body) = s.curl(
        &[&format!(
            "{v1}?watch=true&resourceVersion={rv_before}&timeoutSeconds=1"
        )],
        false,
    );
    assert_eq!(code, 200, "{body}");
    let events: Vec<Value> = body.lines().map(parse).collect();
    let added = events
        .iter()
        .find(|e| e["object"]["metadata"]["name"] == "web-1.scheduled")
        .unwrap_or_else(|| panic!("no event for web-1.scheduled in {body}"));
    assert_eq!(added["type"], "ADDED");
    assert_eq!(added["object"]["apiVersion"], "events.k8s.io/v1");
    assert_eq!(added["object"]["reportingController"], "hull.dev/scheduler");

    // A merge patch through events.k8s.io/v1 on the series, seen through core/v1.
    let (code, body) = s.curl(
        &[
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/merge-patch+json",
            "--data",
            r#"{"series":{"count":2,"lastObservedTime":"2026-11-26T03:00:09.000000Z"}}"#,
            &format!("{v1}/web-1.scheduled"),
        ],
        false,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        get(&s, &format!("{core}/web-1.scheduled"))["series"]["count"],
        2
    );

    // Strict events.k8s.io/v1 validation: 422 with the fields, nothing stored.
    let (code, st) = post(
        &s,
        &v1,
        &json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "bad", "namespace": "default"},
            "regarding": {"kind": "Pod", "name": "web-2", "namespace": "default"},
            "reason": "Oops", "type": "Info", "deprecatedCount": 4,
        }),
    );
    assert_eq!(code, 422, "{st}");
    let fields: Vec<&str> = st["details"]["causes"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["field"].as_str()).collect())
        .unwrap_or_default();
    for f in ["eventTime", "type", "deprecatedCount"] {
        assert!(fields.contains(&f), "{f} not named in {st}");
    }
    // An Event whose namespace disagrees with its object's: 422 on core/v1 too.
    let (code, st) = post(
        &s,
        &core,
        &json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "elsewhere", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "db-0", "namespace": "kube-system"},
            "reason": "Started", "message": "x",
        }),
    );
    assert_eq!(code, 422, "{st}");
    assert_eq!(
        st["details"]["causes"][0]["field"],
        "involvedObject.namespace"
    );
    assert_eq!(names(&get(&s, &v1)), both);

    // Deleting through one version removes it from both.
    let (code, body) = s.curl(&["-X", "DELETE", &format!("{v1}/web-0.started")], false);
    assert_eq!(code, 200, "{body}");
    assert_eq!(names(&get(&s, &core)), ["web-1.scheduled"]);
}

#[test]
fn events_v1_stored_apart_by_an_older_hull_are_moved_on_start() {
    use hull_control::store::Store;
    use hull_control::store::sqlite::SqliteStore;

    let tmp = tempfile::Builder::new()
        .prefix(&format!("hull-api-events-upgrade-{}-", std::process::id()))
        .tempdir()
        .expect("temp dir");
    let old = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "old.1", "namespace": "default", "uid": "u-old-1",
            "creationTimestamp": "2026-11-20T00:00:00Z"},
        "eventTime": "2026-11-20T00:00:00.000000Z",
        "regarding": {"kind": "Node", "name": "node-a"},
        "reason": "Rebooted", "action": "Boot", "type": "Warning", "note": "node rebooted",
        "reportingController": "hull.dev/agent", "reportingInstance": "node-a",
    });
    {
        let store = SqliteStore::open(&tmp.path().join("state.db")).expect("open store");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(store.create(
            "/registry/events.k8s.io/events/default/old.1",
            serde_json::to_vec(&old).expect("json"),
        ))
        .expect("seed a legacy Event");
    }
    let s = Server::start_in(tmp.path(), None, None);
    let core = get(
        &s,
        &format!("{}/api/v1/namespaces/default/events/old.1", s.url()),
    );
    assert_eq!(core["message"], "node rebooted");
    assert_eq!(core["involvedObject"]["name"], "node-a");
    let v1 = get(
        &s,
        &format!(
            "{}/apis/events.k8s.io/v1/namespaces/default/events/old.1",
            s.url()
        ),
    );
    assert_eq!(v1, {
        let mut want = old.clone();
        want["metadata"]["resourceVersion"] = v1["metadata"]["resourceVersion"].clone();
        want
    });
}
