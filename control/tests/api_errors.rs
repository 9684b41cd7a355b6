//! Errors are `Status` objects with the right codes: 400 malformed (with the parser's
//! position), 401 anonymous, 404, 409, 410 (compacted watch / continue), 413, 422; and
//! nothing is stored when a request fails.

mod api_support;

use api_support::Server;
use serde_json::Value;

fn status(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not a Status ({e}): {body}"))
}

#[test]
fn errors_are_status_objects_with_the_right_codes() {
    // Compaction every 100 ms, keeping only the newest revision: the 410 step below needs
    // history to go away while the server runs (it owns the store; nobody else may open it).
    // No controller manager either: it would add objects (kube-root-ca.crt) to the counts.
    let s = Server::start_tuned("errors", None, |o| {
        o.controllers = false;
        o.compactor = hull_control::store::CompactorConfig {
            interval: std::time::Duration::from_millis(100),
            keep_for: std::time::Duration::ZERO,
            keep_revisions: 1,
        };
    });
    let cms = format!("{}/api/v1/namespaces/default/configmaps", s.url());
    let json_ct = "Content-Type: application/json";

    // 401: no client certificate, no token.
    let (code, body) = s.curl(&[&cms], true);
    assert_eq!(code, 401);
    assert_eq!(status(&body)["reason"], "Unauthorized");

    // 400 with position.
    let (code, body) = s.curl(
        &[
            "-X",
            "POST",
            "-H",
            json_ct,
            "--data",
            "{\"metadata\": {\"name\": }",
            &cms,
        ],
        false,
    );
    assert_eq!(code, 400, "{body}");
    let st = status(&body);
    assert_eq!(st["kind"], "Status");
    assert!(
        st["message"]
            .as_str()
            .is_some_and(|m| m.contains("line 1 column")),
        "{body}"
    );

    // 201 then 409 AlreadyExists.
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c1"},"data":{"a":"1"}}"#;
    let (code, body) = s.curl(&["-X", "POST", "-H", json_ct, "--data", cm, &cms], false);
    assert_eq!(code, 201, "{body}");
    let created = status(&body);
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let (code, body) = s.curl(&["-X", "POST", "-H", json_ct, "--data", cm, &cms], false);
    assert_eq!(code, 409);
    assert_eq!(status(&body)["reason"], "AlreadyExists");

    // 409 Conflict on a stale resourceVersion; the stored object is unchanged.
    let upd = |rv: &str, v: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"c1","resourceVersion":"{rv}"}},"data":{{"a":"{v}"}}}}"#
        )
    };
    let (code, body) = s.curl(
        &[
            "-X",
            "PUT",
            "-H",
            json_ct,
            "--data",
            &upd(&rv, "2"),
            &format!("{cms}/c1"),
        ],
        false,
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = s.curl(
        &[
            "-X",
            "PUT",
            "-H",
            json_ct,
            "--data",
            &upd(&rv, "3"),
            &format!("{cms}/c1"),
        ],
        false,
    );
    assert_eq!(code, 409, "{body}");
    assert_eq!(status(&body)["reason"], "Conflict");
    let (_, body) = s.curl(&[&format!("{cms}/c1")], false);
    assert_eq!(status(&body)["data"]["a"], "2");

    // 404.
    let (code, body) = s.curl(&[&format!("{cms}/nope")], false);
    assert_eq!(code, 404);
    assert_eq!(status(&body)["message"], "configmaps \"nope\" not found");
    let (code, _) = s.curl(
        &[&format!("{}/apis/nope.example/v1/things", s.url())],
        false,
    );
    assert_eq!(code, 404);

    // 422 with causes, nothing stored.
    let pods = format!("{}/api/v1/namespaces/default/pods", s.url());
    let bad = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"bad"},"spec":{"containers":[{"name":"c"}]}}"#;
    let (code, body) = s.curl(&["-X", "POST", "-H", json_ct, "--data", bad, &pods], false);
    assert_eq!(code, 422, "{body}");
    let st = status(&body);
    assert_eq!(st["reason"], "Invalid");
    assert!(
        st["details"]["causes"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["field"] == "spec.containers[0].image")),
        "{body}"
    );
    let (code, _) = s.curl(&[&format!("{pods}/bad")], false);
    assert_eq!(code, 404);

    // 400 on unknown fields under Strict, accepted with a warning otherwise.
    let unk = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"u"},"bogus":1}"#;
    let (code, body) = s.curl(
        &[
            "-X",
            "POST",
            "-H",
            json_ct,
            "--data",
            unk,
            &format!("{cms}?fieldValidation=Strict"),
        ],
        false,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("unknown field \\\"bogus\\\""), "{body}");

    // 413 for bodies over 3 MiB.
    let big = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"a":"{}"}}}}"#,
        "x".repeat(3 * 1024 * 1024 + 10)
    );
    let big_file = s.dir.join("big.json");
    std::fs::write(&big_file, big).expect("write");
    let (code, body) = s.curl(
        &[
            "-X",
            "POST",
            "-H",
            json_ct,
            "--data-binary",
            &format!("@{}", big_file.display()),
            &cms,
        ],
        false,
    );
    assert_eq!(code, 413, "{body}");
    assert_eq!(status(&body)["code"], 413);

    // 410: a continue token whose snapshot revision was compacted away.
    for n in ["c2", "c3"] {
        let cm = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{n}"}}}}"#);
        let (code, body) = s.curl(&["-X", "POST", "-H", json_ct, "--data", &cm, &cms], false);
        assert_eq!(code, 201, "{body}");
    }
    let (code, body) = s.curl(&[&format!("{cms}?limit=1")], false);
    assert_eq!(code, 200, "{body}");
    let page = status(&body);
    let token = page["metadata"]["continue"]
        .as_str()
        .expect("a continue token")
        .to_string();
    assert_eq!(page["metadata"]["remainingItemCount"], 2);
    let (code, body) = s.curl(&["-X", "DELETE", &format!("{cms}/c2")], false);
    assert_eq!(code, 200, "{body}");
    // One more write, so the token's revision is no longer the newest; the compactor then
    // removes it (bounded wait: compaction runs in the background).
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c4"}}"#;
    let (code, body) = s.curl(&["-X", "POST", "-H", json_ct, "--data", cm, &cms], false);
    assert_eq!(code, 201, "{body}");
    let mut last = (0, String::new());
    for _ in 0..300 {
        last = s.curl(&[&format!("{cms}?limit=1&continue={token}")], false);
        if last.0 == 410 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (code, body) = last;
    assert_eq!(code, 410, "{body}");
    assert_eq!(status(&body)["reason"], "Expired");
}
