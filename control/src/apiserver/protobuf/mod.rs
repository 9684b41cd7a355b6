//! Request bodies in Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`),
//! which kubectl 1.35 sends for its typed `create` commands (`create ns`, `create quota`,
//! `create secret`, ...): the `k8s\0` magic, a `runtime.Unknown` envelope naming the
//! apiVersion and kind, and the object's message — decoded here into the same JSON the
//! rest of the server handles.
//!
//! The decoder is generic, driven by `fields.txt`: every message of the served groups
//! with its fields (tag, name, wire kind, label, message type), extracted from the
//! `k8s-pb` crate's prost sources (kube-rs' bindings of the upstream `generated.proto`
//! files). Field names become JSON names through the served OpenAPI schema (`volume_id` →
//! `volumeID`). Responses are always JSON, which protobuf clients accept.

use std::collections::HashMap;
use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use super::openapi;

const MAGIC: &[u8] = b"k8s\x00";

#[derive(Debug)]
struct Field {
    name: String,
    kind: String,
    label: String,
    msg: String,
}

struct Schema {
    messages: HashMap<String, HashMap<u64, Field>>,
    json_names: HashMap<String, String>,
}

fn collect_names(v: &Value, out: &mut HashMap<String, String>) {
    if let Some(props) = v.get("properties").and_then(Value::as_object) {
        for (k, child) in props {
            out.entry(k.to_lowercase()).or_insert_with(|| k.clone());
            collect_names(child, out);
        }
    }
    if let Some(items) = v.get("items") {
        collect_names(items, out);
    }
}

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let mut messages: HashMap<String, HashMap<u64, Field>> = HashMap::new();
    let mut current = String::new();
    for line in include_str!("fields.txt").lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["M", name] => {
                current = name.to_string();
                messages.entry(current.clone()).or_default();
            }
            ["F", tag, name, kind, label, msg] => {
                if let (Ok(tag), Some(m)) = (tag.parse::<u64>(), messages.get_mut(&current)) {
                    m.insert(
                        tag,
                        Field {
                            name: name.to_string(),
                            kind: kind.to_string(),
                            label: label.to_string(),
                            msg: msg.to_string(),
                        },
                    );
                }
            }
            _ => {}
        }
    }
    let mut json_names = HashMap::new();
    for def in openapi::definitions().values() {
        collect_names(def, &mut json_names);
    }
    Schema {
        messages,
        json_names,
    }
});

fn json_name(snake: &str) -> String {
    let key: String = snake
        .chars()
        .filter(|c| *c != '_')
        .collect::<String>()
        .to_lowercase();
    if let Some(n) = SCHEMA.json_names.get(&key) {
        return n.clone();
    }
    let mut out = String::new();
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
#[error("protobuf body: {0}")]
pub struct ProtoError(String);

fn err(m: impl Into<String>) -> ProtoError {
    ProtoError(m.into())
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .b
                .get(self.pos)
                .ok_or_else(|| err("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(err("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| err("truncated field"))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn next(&mut self) -> Result<Option<(u64, Wire<'a>)>, ProtoError> {
        if self.pos >= self.b.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (tag, wt) = (key >> 3, key & 7);
        let w = match wt {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().map_err(|_| err("fixed64"))?,
            )),
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| err("length"))?;
                Wire::Bytes(self.take(n)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().map_err(|_| err("fixed32"))?,
            )),
            other => return Err(err(format!("unsupported wire type {other} (field {tag})"))),
        };
        Ok(Some((tag, w)))
    }
}

fn scalar(kind: &str, w: &Wire<'_>) -> Result<Value, ProtoError> {
    Ok(match (kind, w) {
        ("string", Wire::Bytes(b)) => {
            Value::String(String::from_utf8(b.to_vec()).map_err(|_| err("string is not UTF-8"))?)
        }
        ("bytes", Wire::Bytes(b)) => Value::String(STANDARD.encode(b)),
        ("bool", Wire::Varint(v)) => Value::Bool(*v != 0),
        ("int32", Wire::Varint(v)) => json!(*v as i64 as i32),
        ("int64", Wire::Varint(v)) => json!(*v as i64),
        ("uint32" | "uint64", Wire::Varint(v)) => json!(*v),
        ("double", Wire::Fixed64(v)) => json!(f64::from_bits(*v)),
        ("float", Wire::Fixed32(v)) => json!(f32::from_bits(*v)),
        (k, _) => {
            return Err(err(format!(
                "field of kind {k} has an unexpected wire type"
            )));
        }
    })
}

fn rfc3339(seconds: i64, nanos: i64, micros: bool) -> Value {
    match jiff::Timestamp::new(
        seconds,
        if micros {
            (nanos / 1000 * 1000) as i32
        } else {
            0
        },
    ) {
        Ok(t) if micros => json!(t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()),
        Ok(t) => json!(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
        Err(_) => Value::Null,
    }
}

/// Decodes one message into JSON; `Value::Null` means "leave the field out".
fn message(name: &str, bytes: &[u8], depth: usize) -> Result<Value, ProtoError> {
    if depth > 64 {
        return Err(err("message nesting too deep"));
    }
    let fields = SCHEMA
        .messages
        .get(name)
        .ok_or_else(|| err(format!("unknown message {name}")))?;
    let mut obj = Map::new();
    let mut r = Reader { b: bytes, pos: 0 };
    while let Some((tag, w)) = r.next()? {
        let Some(f) = fields.get(&tag) else { continue };
        let key = json_name(&f.name);
        if f.label == "map" {
            let Wire::Bytes(entry) = w else {
                return Err(err("map entry is not length-delimited"));
            };
            let (mut k, mut v) = (String::new(), Value::Null);
            let mut er = Reader { b: entry, pos: 0 };
            while let Some((t, ew)) = er.next()? {
                match (t, &ew) {
                    (1, Wire::Bytes(b)) => k = String::from_utf8_lossy(b).into_owned(),
                    (2, _) => {
                        let vk = f.kind.trim_start_matches("map:");
                        v = if vk == "message" {
                            match ew {
                                Wire::Bytes(b) => special(&f.msg, b, depth)?,
                                _ => return Err(err("map value is not a message")),
                            }
                        } else {
                            scalar(vk, &ew)?
                        };
                    }
                    _ => {}
                }
            }
            if v.is_null() {
                v = json!("");
            }
            let m = obj.entry(key).or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = m {
                m.insert(k, v);
            }
            continue;
        }
        let value = if f.kind == "message" {
            match w {
                Wire::Bytes(b) => special(&f.msg, b, depth)?,
                _ => return Err(err(format!("field {key} is not length-delimited"))),
            }
        } else if let (Wire::Bytes(b), true) = (
            &w,
            f.label == "repeated" && !matches!(f.kind.as_str(), "string" | "bytes"),
        ) {
            // Packed repeated scalars.
            let mut pr = Reader { b, pos: 0 };
            let mut items = Vec::new();
            while pr.pos < b.len() {
                let v = match f.kind.as_str() {
                    "double" => Wire::Fixed64(u64::from_le_bytes(
                        pr.take(8)?.try_into().map_err(|_| err("packed"))?,
                    )),
                    "float" => Wire::Fixed32(u32::from_le_bytes(
                        pr.take(4)?.try_into().map_err(|_| err("packed"))?,
                    )),
                    _ => Wire::Varint(pr.varint()?),
                };
                items.push(scalar(&f.kind, &v)?);
            }
            let arr = obj.entry(key).or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(a) = arr {
                a.extend(items);
            }
            continue;
        } else {
            scalar(&f.kind, &w)?
        };
        if f.label == "repeated" {
            let arr = obj.entry(key).or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(a) = arr {
                a.push(value);
            }
        } else if !value.is_null() && value != json!("") {
            // Go writes every non-pointer string, empty or not; JSON would omit them.
            obj.insert(key, value);
        }
    }
    Ok(Value::Object(obj))
}

/// The messages whose JSON form is not an object.
fn special(name: &str, b: &[u8], depth: usize) -> Result<Value, ProtoError> {
    let inner = || message(name, b, depth + 1);
    Ok(match name {
        "apimachinery.pkg.api.resource.Quantity" => {
            inner()?.get("string").cloned().unwrap_or(json!("0"))
        }
        "apimachinery.pkg.util.intstr.IntOrString" => {
            let v = inner()?;
            if v.get("type").and_then(Value::as_i64) == Some(1) {
                v.get("strVal").cloned().unwrap_or(json!(""))
            } else {
                match v.get("intVal").and_then(Value::as_i64) {
                    Some(i) if i != 0 => json!(i),
                    // The zero IntOrString is "unset" (e.g. a Service's targetPort).
                    _ => Value::Null,
                }
            }
        }
        "apimachinery.pkg.apis.meta.v1.Time" | "apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let v = inner()?;
            let s = v.get("seconds").and_then(Value::as_i64).unwrap_or(0);
            let n = v.get("nanos").and_then(Value::as_i64).unwrap_or(0);
            if s == 0 && n == 0 {
                Value::Null
            } else {
                rfc3339(s, n, name.ends_with("MicroTime"))
            }
        }
        "apimachinery.pkg.apis.meta.v1.Duration" => {
            let ns = inner()?
                .get("duration")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            json!(format!("{}s", ns as f64 / 1e9))
        }
        "apimachinery.pkg.apis.meta.v1.FieldsV1" | "apimachinery.pkg.runtime.RawExtension" => {
            let v = inner()?;
            let raw = v
                .get("raw")
                .and_then(Value::as_str)
                .and_then(|s| STANDARD.decode(s).ok())
                .unwrap_or_default();
            if raw.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&raw)
                    .map_err(|e| err(format!("embedded JSON in {name}: {e}")))?
            }
        }
        _ => inner()?,
    })
}

/// The proto package of an API group (`apps` → `apps`, `rbac.authorization.k8s.io` → `rbac`).
fn package(api_version: &str) -> (String, String) {
    match api_version.split_once('/') {
        Some((g, v)) => (g.split('.').next().unwrap_or(g).to_string(), v.to_string()),
        None => ("core".to_string(), api_version.to_string()),
    }
}

/// Decodes a protobuf-encoded API object (`k8s\0` + runtime.Unknown) into JSON with
/// `apiVersion` and `kind` set.
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| err("missing the k8s\\0 prefix"))?;
    let unknown = message("apimachinery.pkg.runtime.Unknown", rest, 0)?;
    let api_version = unknown
        .pointer("/typeMeta/apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let kind = unknown
        .pointer("/typeMeta/kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if kind.is_empty() {
        return Err(err("the envelope names no kind"));
    }
    let raw = unknown
        .get("raw")
        .and_then(Value::as_str)
        .and_then(|s| STANDARD.decode(s).ok())
        .unwrap_or_default();
    let (pkg, version) = package(&api_version);
    let name = if kind == "DeleteOptions" {
        "apimachinery.pkg.apis.meta.v1.DeleteOptions".to_string()
    } else {
        format!("api.{pkg}.{version}.{kind}")
    };
    let mut obj = message(&name, &raw, 0)?;
    if let Value::Object(m) = &mut obj {
        m.insert("apiVersion".into(), json!(api_version));
        m.insert("kind".into(), json!(kind));
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field(tag: u64, bytes: &[u8], out: &mut Vec<u8>) {
        varint(tag << 3 | 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    #[test]
    fn decodes_a_namespace_and_a_quota_envelope() {
        // ResourceQuota{metadata{name: "q"}, spec{hard{"pods": Quantity{"1"}}}}.
        let mut meta = Vec::new();
        field(1, b"q", &mut meta);
        let mut qty = Vec::new();
        field(1, b"1", &mut qty);
        let mut entry = Vec::new();
        field(1, b"pods", &mut entry);
        field(2, &qty, &mut entry);
        let mut spec = Vec::new();
        field(1, &entry, &mut spec);
        let mut raw = Vec::new();
        field(1, &meta, &mut raw);
        field(2, &spec, &mut raw);
        let mut tm = Vec::new();
        field(1, b"v1", &mut tm);
        field(2, b"ResourceQuota", &mut tm);
        let mut body = MAGIC.to_vec();
        field(1, &tm, &mut body);
        field(2, &raw, &mut body);
        let v = decode(&body).expect("decodes");
        assert_eq!(v["kind"], "ResourceQuota");
        assert_eq!(v["metadata"]["name"], "q");
        assert_eq!(v["spec"]["hard"]["pods"], "1");
        assert!(decode(b"nope").is_err());
        assert_eq!(json_name("volume_id"), "volumeID");
        assert_eq!(json_name("generate_name"), "generateName");
    }
}
