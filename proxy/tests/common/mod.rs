//! Shared test scaffolding: network namespaces with Drop cleanup, threads entered
//! into a netns, and k8s object builders.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

use hull_proxy::{fullsync, nft};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

pub fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(st.success(), "{args:?} failed");
}

/// A named network namespace, deleted on drop (its veths go with it).
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("hullpx-{tag}-{}", std::process::id());
        if std::path::Path::new(&format!("/run/netns/{name}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }
    pub fn exec(&self, args: &[&str]) {
        let mut v = vec!["ip", "netns", "exec", &self.0];
        v.extend_from_slice(args);
        sh(&v);
    }
    /// Run `f` on a fresh thread that has entered this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let fd = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on a valid netns fd affects only this thread.
            let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}");
            f()
        })
        .join()
        .expect("netns thread panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

pub fn service(ns: &str, name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
        .expect("service json")
}

/// A slice for `svc` with `(ip, ready, node)` endpoints on one port.
pub fn slice(
    ns: &str,
    svc: &str,
    port_name: &str,
    port: u16,
    eps: &[(&str, bool, &str)],
) -> EndpointSlice {
    let endpoints: Vec<_> = eps
        .iter()
        .map(|(ip, ready, node)| json!({"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": false}, "nodeName": node}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": format!("{svc}-abc"), "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]
    }))
    .expect("slice json")
}

/// `nft -j list table` of both families with handles dropped, rules grouped by
/// chain (in order) and set/map elements sorted: equal iff the tables hold the
/// same rules, whatever order they were created in.
pub fn normalized(ns: &Netns) -> BTreeMap<String, Value> {
    let name = ns.0.clone();
    let mut out = BTreeMap::new();
    for (fam, f) in [("ip", nft::Family::V4), ("ip6", nft::Family::V6)] {
        let table = live(ns, f);
        let o = Command::new("ip")
            .args([
                "netns", "exec", &name, "nft", "-j", "list", "table", fam, table,
            ])
            .output()
            .expect("nft -j");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).expect("nft json");
        let mut rules: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for item in v["nftables"].as_array().expect("nftables array") {
            let Some((kind, body)) = item.as_object().and_then(|o| o.iter().next()) else {
                continue;
            };
            let mut body = body.clone();
            if let Some(o) = body.as_object_mut() {
                // A full sync swaps between hull's two table names.
                o.remove("handle");
                o.remove("table");
            }
            match kind.as_str() {
                "rule" => {
                    let chain = body["chain"].as_str().unwrap_or_default().to_string();
                    rules
                        .entry(format!("{fam} {chain}"))
                        .or_default()
                        .push(body["expr"].clone());
                }
                "chain" | "set" | "map" => {
                    if let Some(elems) = body.get_mut("elem").and_then(Value::as_array_mut) {
                        elems.sort_by_key(|e| e.to_string());
                    }
                    let n = body["name"].as_str().unwrap_or_default().to_string();
                    out.insert(format!("{fam} {kind} {n}"), body);
                }
                _ => {}
            }
        }
        for (chain, exprs) in rules {
            out.insert(format!("rules {chain}"), Value::Array(exprs));
        }
    }
    out
}

/// The hull table packets go through in `ns`.
pub fn live(ns: &Netns, f: nft::Family) -> &'static str {
    ns.run(move || fullsync::live_table(f))
        .expect("nft list chains")
        .expect("a hull table")
}
