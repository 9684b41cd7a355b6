//! Objects on the way in and out: decoding request bodies (JSON or YAML, with the
//! parser's position on error), strict field validation against the served schema, and
//! the metadata the server owns (uid, creationTimestamp, resourceVersion, generation).

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::apiserver::registry::ResourceInfo;
use crate::apiserver::status::ApiError;
use crate::apiserver::{conversion, openapi};
use crate::store::KeyValue;

/// Decodes a request body by its `Content-Type` (JSON unless it says YAML).
pub fn decode_body(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    let ct = content_type.to_ascii_lowercase();
    if ct.contains("yaml") {
        let v: Value = serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML request body: {e}")))?;
        return Ok(v);
    }
    if ct.contains("protobuf") {
        return crate::apiserver::protobuf::decode(body)
            .map_err(|e| ApiError::bad_request(e.to_string()));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding JSON request body: {e}")))
}

/// Checks the body is an object of this resource's kind (filling apiVersion/kind if
/// absent) and that it decodes as the typed object (wire types, enums).
pub fn check_kind(r: &ResourceInfo, obj: &mut Value) -> Result<(), ApiError> {
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(format!(
            "the request body must be a JSON object of kind {}",
            r.kind
        )));
    };
    let api_version = r.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("apiVersion".into(), Value::String(api_version.clone()));
        }
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("kind".into(), Value::String(r.kind.into()));
        }
        Some(k) if k == r.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                r.kind
            )));
        }
    }
    (r.decode)(obj).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            r.kind, r.version, r.kind
        ))
    })
}

fn resolve<'a>(defs: &'a Map<String, Value>, schema: &'a Value) -> &'a Value {
    let mut s = schema;
    for _ in 0..8 {
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            match r.rsplit('/').next().and_then(|n| defs.get(n)) {
                Some(d) => s = d,
                None => return s,
            }
        } else if let Some(first) = s.get("allOf").and_then(|a| a.get(0)) {
            s = first;
        } else {
            return s;
        }
    }
    s
}

fn walk(defs: &Map<String, Value>, schema: &Value, v: &Value, path: &str, out: &mut Vec<String>) {
    let s = resolve(defs, schema);
    match v {
        Value::Object(m) => {
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (k, child) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match props.get(k) {
                        Some(cs) => walk(defs, cs, child, &p, out),
                        None => out.push(p),
                    }
                }
            } else if let Some(ap) = s.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, child) in m {
                    walk(defs, ap, child, &format!("{path}[{k}]"), out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items") {
                for (i, child) in items.iter().enumerate() {
                    walk(defs, is, child, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Fields of `obj` the resource's schema does not declare (`spec.foo`, `spec.containers[0].bar`).
pub fn unknown_fields(r: &ResourceInfo, obj: &Value) -> Vec<String> {
    let defs = openapi::definitions();
    let name = (r.schema_name)();
    let Some(schema) = defs.get(name.as_ref()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk(defs, schema, obj, "", &mut out);
    out
}

/// The RFC 3339 time now, at second precision as Kubernetes stores it.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| jiff::Timestamp::now().to_string())
}

/// `metadata` as a mutable map, created if absent.
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = Value::Object(Map::new());
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?
        .get(field)?
        .as_str()
        .filter(|s| !s.is_empty())
}

/// `generateName` + 5 characters from Kubernetes' alphabet (no vowels, no look-alikes).
pub fn generated_name(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    let max_prefix = 63 - 5;
    let p = if prefix.len() > max_prefix {
        &prefix[..max_prefix]
    } else {
        prefix
    };
    format!("{p}{suffix}")
}

/// The bytes stored for an object: its JSON without `resourceVersion` (the revision is it).
pub fn to_stored(obj: &Value) -> Result<Vec<u8>, ApiError> {
    let mut o = obj.clone();
    if let Some(Value::Object(m)) = o.get_mut("metadata") {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&o).map_err(|e| ApiError::internal(format!("encoding object: {e}")))
}

/// The object a stored value holds, with `resourceVersion` set from its mod revision.
pub fn from_stored(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is not JSON: {e}", kv.key)))?;
    meta_mut(&mut v).insert(
        "resourceVersion".into(),
        Value::String(kv.mod_revision.to_string()),
    );
    Ok(v)
}

/// Appends the stored object's JSON with `metadata.resourceVersion` set — the bytes
/// `serde_json::to_vec(&from_stored(kv)?)` gives — parsing only its top level and its
/// metadata. Why: a LIST of 10k Pods would otherwise decode and re-encode ~35 MB of specs
/// and statuses that it sends on unchanged.
pub fn append_stored(kv: &KeyValue, out: &mut Vec<u8>) -> Result<(), ApiError> {
    let bad = |e: serde_json::Error| {
        ApiError::internal(format!("stored object {} is not JSON: {e}", kv.key))
    };
    let top: TopLevel = serde_json::from_slice(&kv.value).map_err(bad)?;
    let rv = Value::String(kv.mod_revision.to_string());
    out.push(b'{');
    let mut has_meta = false;
    for (i, (k, v)) in top.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, k).map_err(bad)?;
        out.push(b':');
        if k == "metadata" {
            has_meta = true;
            let mut m: Map<String, Value> = serde_json::from_str(v.get()).map_err(bad)?;
            m.insert("resourceVersion".into(), rv.clone());
            serde_json::to_writer(&mut *out, &m).map_err(bad)?;
        } else {
            out.extend_from_slice(v.get().as_bytes());
        }
    }
    if !has_meta {
        if !top.0.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(b"\"metadata\":");
        serde_json::to_writer(&mut *out, &serde_json::json!({"resourceVersion": rv}))
            .map_err(bad)?;
    }
    out.push(b'}');
    Ok(())
}

/// An object's top-level fields in order, their values left as the raw JSON text.
struct TopLevel<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    fields.push(entry);
                }
                Ok(TopLevel(fields))
            }
        }
        d.deserialize_map(Fields)
    }
}

/// The stored object as `r`'s version shows it (converted when the version is stored in
/// another's form, see [`conversion`](crate::apiserver::conversion)).
pub fn read(r: &ResourceInfo, kv: &KeyValue) -> Result<Value, ApiError> {
    Ok(conversion::from_storage(r, from_stored(kv)?))
}

/// The bytes stored for an object of `r`'s version: its storage form.
pub fn to_storage_bytes(r: &ResourceInfo, obj: &Value) -> Result<Vec<u8>, ApiError> {
    if conversion::converted(r) {
        to_stored(&conversion::to_storage(r, obj.clone()))
    } else {
        to_stored(obj)
    }
}

/// Parses a resourceVersion string (empty → None).
pub fn parse_rv(rv: &str) -> Result<Option<i64>, ApiError> {
    if rv.is_empty() {
        return Ok(None);
    }
    rv.parse::<i64>()
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}: not a number")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry;
    use serde_json::json;

    #[test]
    fn stored_objects_are_spliced_as_they_would_be_encoded() {
        let stored = [
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{"a":"b"}},"spec":{"containers":[{"name":"c","image":"i:1","args":["\"q\"","é"]}]},"status":{"phase":"Running","x":1.5}}"#,
            r#"{"kind":"Thing","data":{}}"#,
            r#"{}"#,
        ];
        for value in stored {
            let kv = KeyValue {
                key: "/registry/pods/default/p".into(),
                value: value.as_bytes().to_vec(),
                create_revision: 3,
                mod_revision: 7,
            };
            let mut out = Vec::new();
            append_stored(&kv, &mut out).expect("splice");
            let want = serde_json::to_vec(&from_stored(&kv).expect("parse")).expect("encode");
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&want)
            );
        }
    }

    #[test]
    fn unknown_fields_are_found_with_paths() {
        let r = registry::find("", "v1", "pods").expect("pods");
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "labels": {"x": "y"}},
            "spec": {"containers": [{"name": "c", "image": "i", "bogus": 1}], "nope": true}});
        let mut u = unknown_fields(r, &pod);
        u.sort();
        assert_eq!(u, vec!["spec.containers[0].bogus", "spec.nope"]);
        let e = decode_body("application/json", b"{\"a\": }").unwrap_err();
        assert!(e.message.contains("line 1 column"), "{}", e.message);
        let mut bad = json!({"kind": "Service"});
        assert!(check_kind(r, &mut bad).is_err());
        let mut typed = json!({"metadata": {"name": "a"}, "spec": {"containers": "no"}});
        assert_eq!(check_kind(r, &mut typed).unwrap_err().code.as_u16(), 400);
        assert!(generated_name("web-").starts_with("web-"));
        assert_eq!(generated_name("web-").len(), 9);
    }
}
