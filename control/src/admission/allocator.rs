//! ClusterIP and NodePort allocation, race-free and persisted in the store.
//!
//! Every allocated address and port is one key, created with create-if-absent, so two
//! API servers (or two requests) can never hand out the same one:
//! `/registry/ranges/serviceips/<ip>` and `/registry/ranges/servicenodeports/<port>`,
//! each holding `{"namespace", "name", "time"}` of the owning Service. Keys whose Service
//! is gone (a crash between allocation and the Service write) are removed by
//! [`Allocators::repair`].

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use rand::Rng;
use serde_json::{Value, json};

use super::field::{self, FieldPath, Invalid};
use super::{AdmissionError, stored};
use crate::store::{Store, StoreError};

const IPS: &str = "/registry/ranges/serviceips/";
const PORTS: &str = "/registry/ranges/servicenodeports/";
/// Random probes before falling back to a scan of what is taken.
const PROBES: usize = 32;
/// Allocations younger than this are never repaired away: their Service may be being
/// written right now.
const REPAIR_GRACE_SECONDS: i64 = 60;

/// The service CIDR and NodePort range.
#[derive(Debug, Clone)]
pub struct Allocators {
    base: u32,
    size: u64,
    cidr: String,
    ports: RangeInclusive<u16>,
}

/// What one admitted Service write claimed and will give back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Allocation {
    /// Keys created for this write: deleted again by [`Allocation::undo`].
    pub claimed: Vec<String>,
    /// Keys the old object held that the new one no longer does: deleted by
    /// [`Allocation::commit`] once the write is stored.
    pub released: Vec<String>,
}

impl Allocation {
    /// The write failed: free what was claimed for it.
    pub async fn undo(&self, store: &dyn Store) -> Result<(), StoreError> {
        for key in &self.claimed {
            delete_quietly(store, key).await?;
        }
        Ok(())
    }

    /// The write was stored: free what the old object held and the new one does not.
    pub async fn commit(&self, store: &dyn Store) -> Result<(), StoreError> {
        for key in &self.released {
            delete_quietly(store, key).await?;
        }
        Ok(())
    }
}

async fn delete_quietly(store: &dyn Store, key: &str) -> Result<(), StoreError> {
    match store.delete(key, None).await {
        Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

impl Default for Allocators {
    fn default() -> Self {
        // Both are constants that parse.
        Allocators::new("10.96.0.0/12", 30000..=32767).unwrap_or(Allocators {
            base: u32::from(Ipv4Addr::new(10, 96, 0, 0)),
            size: 1 << 20,
            cidr: "10.96.0.0/12".into(),
            ports: 30000..=32767,
        })
    }
}

fn owner(svc: &Value) -> (String, String) {
    let get = |k: &str| {
        svc.pointer(&format!("/metadata/{k}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (get("namespace"), get("name"))
}

fn invalid(svc: &Value, field: &FieldPath, value: Value, detail: &str) -> AdmissionError {
    let (_, name) = owner(svc);
    AdmissionError::Invalid(Invalid {
        kind: "Service".into(),
        group: String::new(),
        name,
        causes: vec![field::invalid(field, &value, detail)],
    })
}

impl Allocators {
    /// `service_cidr` like `10.96.0.0/12` (IPv4), NodePorts from `node_ports`.
    pub fn new(service_cidr: &str, node_ports: RangeInclusive<u16>) -> Result<Allocators, String> {
        let (ip, len) = service_cidr
            .split_once('/')
            .ok_or_else(|| format!("service CIDR {service_cidr:?}: expected ADDRESS/PREFIX"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|e| format!("service CIDR {service_cidr:?}: {e}"))?;
        let len: u32 = len
            .parse()
            .ok()
            .filter(|l| (8..=30).contains(l))
            .ok_or_else(|| format!("service CIDR {service_cidr:?}: prefix must be 8..=30"))?;
        let mask = u32::MAX << (32 - len);
        if node_ports.is_empty() {
            return Err("NodePort range is empty".into());
        }
        Ok(Allocators {
            base: u32::from(ip) & mask,
            size: 1u64 << (32 - len),
            cidr: service_cidr.to_string(),
            ports: node_ports,
        })
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v > self.base && u64::from(v - self.base) < self.size - 1
    }

    /// Addresses below this offset are only handed out when asked for by name (like
    /// 10.96.0.10 for DNS), as kube-apiserver keeps a static band.
    fn static_band(&self) -> u64 {
        (self.size / 16).clamp(16, 256)
    }

    fn ip_at(&self, offset: u64) -> Ipv4Addr {
        Ipv4Addr::from(self.base.wrapping_add(offset as u32))
    }

    /// Fills in what a Service update leaves out but already has (its ClusterIP and
    /// NodePorts), as kube-apiserver does, so `kubectl apply`/`replace` need not repeat
    /// them. Call before validation.
    pub fn carry_over(new: &mut Value, old: &Value) {
        let ty = |v: &Value| {
            v.pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP")
                .to_string()
        };
        let (new_ty, old_ty) = (ty(new), ty(old));
        if new_ty == "ExternalName" || old_ty == "ExternalName" {
            return;
        }
        let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        let unset = |v: Option<&Value>| v.is_none_or(|v| v.is_null() || v.as_str() == Some(""));
        if unset(spec.get("clusterIP"))
            && let Some(ip) = old.pointer("/spec/clusterIP").filter(|v| !unset(Some(v)))
        {
            spec.insert("clusterIP".into(), ip.clone());
            if let Some(ips) = old.pointer("/spec/clusterIPs") {
                spec.insert("clusterIPs".into(), ips.clone());
            }
        }
        if new_ty != "NodePort" && new_ty != "LoadBalancer" {
            return;
        }
        let old_ports = old
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let Some(Value::Array(ports)) = spec.get_mut("ports") else {
            return;
        };
        let proto = |p: &Value| {
            p.get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .to_string()
        };
        for p in ports.iter_mut() {
            if p.get("nodePort").and_then(Value::as_i64).unwrap_or(0) != 0 {
                continue;
            }
            let same = old_ports
                .iter()
                .find(|o| o.get("port") == p.get("port") && proto(o) == proto(p));
            if let (Some(np), Some(obj)) = (same.and_then(|o| o.get("nodePort")), p.as_object_mut())
                && np.as_i64().unwrap_or(0) != 0
            {
                obj.insert("nodePort".into(), np.clone());
            }
        }
    }

    /// Claims a key for `svc`: Ok(true) if claimed, Ok(false) if another Service holds it.
    /// A key whose owner Service no longer exists is taken over.
    async fn claim(
        &self,
        store: &dyn Store,
        key: &str,
        svc: &Value,
        dry_run: bool,
    ) -> Result<bool, StoreError> {
        let (ns, name) = owner(svc);
        let value = stored::encode(
            &json!({"namespace": ns, "name": name, "time": crate::patch::managed::now()}),
        );
        if dry_run {
            return Ok(store.get(key).await?.is_none());
        }
        match store.create(key, value.clone()).await {
            Ok(_) => Ok(true),
            Err(StoreError::AlreadyExists { .. }) => {
                let Some((holder, rev)) = stored::get(store, key).await? else {
                    return Ok(false);
                };
                let (hns, hname) = (
                    holder["namespace"].as_str().unwrap_or_default().to_string(),
                    holder["name"].as_str().unwrap_or_default().to_string(),
                );
                let alive =
                    stored::get(store, &stored::key("services", Some(&hns), &hname)).await?;
                if alive.is_some() || is_young(&holder) {
                    return Ok(false);
                }
                match store.update(key, value, rev).await {
                    Ok(_) => Ok(true),
                    Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Allocates what `svc` needs (create: `old` None; update: the stored Service) and
    /// writes the results into it (`spec.clusterIP(s)`, `spec.ports[*].nodePort`).
    pub async fn allocate(
        &self,
        store: &dyn Store,
        svc: &mut Value,
        old: Option<&Value>,
        dry_run: bool,
    ) -> Result<Allocation, AdmissionError> {
        let mut done = Allocation::default();
        match self
            .allocate_inner(store, svc, old, dry_run, &mut done)
            .await
        {
            Ok(()) => Ok(done),
            Err(e) => {
                if !dry_run {
                    done.undo(store).await?;
                }
                Err(e)
            }
        }
    }

    async fn allocate_inner(
        &self,
        store: &dyn Store,
        svc: &mut Value,
        old: Option<&Value>,
        dry_run: bool,
        done: &mut Allocation,
    ) -> Result<(), AdmissionError> {
        let ty = svc
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        let old_ip = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
            .filter(|ip| !ip.is_empty() && *ip != "None")
            .map(str::to_string);
        let old_ports: HashSet<i64> = old
            .and_then(|o| o.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
            .filter(|p| *p != 0)
            .collect();

        // ClusterIP.
        let ip_path = FieldPath::root("spec.clusterIPs").index(0);
        let requested = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ip = if ty == "ExternalName" {
            None
        } else if requested == "None" {
            Some("None".to_string())
        } else if !requested.is_empty() && old_ip.as_deref() == Some(requested.as_str()) {
            Some(requested)
        } else if !requested.is_empty() {
            let addr: Ipv4Addr = requested.parse().map_err(|_| {
                invalid(
                    svc,
                    &ip_path,
                    json!(requested),
                    "must be a valid IPv4 address",
                )
            })?;
            if !self.contains(addr) {
                return Err(invalid(
                    svc,
                    &ip_path,
                    json!(requested),
                    &format!(
                        "failed to allocate IP {requested}: provided IP is not in the valid \
                         range. The range of valid IPs is {}",
                        self.cidr
                    ),
                ));
            }
            let key = format!("{IPS}{requested}");
            if !self.claim(store, &key, svc, dry_run).await? {
                return Err(invalid(
                    svc,
                    &ip_path,
                    json!([requested]),
                    &format!("failed to allocate IP {requested}: provided IP is already allocated"),
                ));
            }
            if !dry_run {
                done.claimed.push(key);
            }
            Some(requested)
        } else {
            Some(
                self.dynamic_ip(store, svc, dry_run, done)
                    .await?
                    .to_string(),
            )
        };
        if let Some(old_ip) = &old_ip
            && ip.as_deref() != Some(old_ip.as_str())
        {
            done.released.push(format!("{IPS}{old_ip}"));
        }
        if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
            match &ip {
                Some(ip) => {
                    spec.insert("clusterIP".into(), json!(ip));
                    spec.insert("clusterIPs".into(), json!([ip]));
                }
                None => {
                    spec.shift_remove("clusterIP");
                    spec.shift_remove("clusterIPs");
                }
            }
        }

        // NodePorts.
        let wants_ports = ty == "NodePort"
            || (ty == "LoadBalancer"
                && svc
                    .pointer("/spec/allocateLoadBalancerNodePorts")
                    .and_then(Value::as_bool)
                    != Some(false));
        let mut kept: HashSet<i64> = HashSet::new();
        if wants_ports {
            let n = svc
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            for i in 0..n {
                let np_path = FieldPath::root("spec.ports").index(i).child("nodePort");
                let asked = svc
                    .pointer(&format!("/spec/ports/{i}/nodePort"))
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                let port = if asked != 0 {
                    if !old_ports.contains(&asked) && !kept.contains(&asked) {
                        if !(i64::from(*self.ports.start())..=i64::from(*self.ports.end()))
                            .contains(&asked)
                        {
                            return Err(invalid(
                                svc,
                                &np_path,
                                json!(asked),
                                &format!(
                                    "provided port is not in the valid range. The range of valid ports is {}-{}",
                                    self.ports.start(),
                                    self.ports.end()
                                ),
                            ));
                        }
                        let key = format!("{PORTS}{asked}");
                        if !self.claim(store, &key, svc, dry_run).await? {
                            return Err(invalid(
                                svc,
                                &np_path,
                                json!(asked),
                                "provided port is already allocated",
                            ));
                        }
                        if !dry_run {
                            done.claimed.push(key);
                        }
                    }
                    asked
                } else {
                    i64::from(self.dynamic_port(store, svc, dry_run, done).await?)
                };
                kept.insert(port);
                if let Some(p) = svc
                    .pointer_mut(&format!("/spec/ports/{i}"))
                    .and_then(Value::as_object_mut)
                {
                    p.insert("nodePort".into(), json!(port));
                }
            }
        }
        for p in old_ports.difference(&kept) {
            done.released.push(format!("{PORTS}{p}"));
        }
        Ok(())
    }

    async fn dynamic_ip(
        &self,
        store: &dyn Store,
        svc: &Value,
        dry_run: bool,
        done: &mut Allocation,
    ) -> Result<Ipv4Addr, AdmissionError> {
        let band = self.static_band();
        let (lo, hi) = (band, self.size - 2);
        for _ in 0..PROBES {
            let ip = self.ip_at(rand::rng().random_range(lo..=hi));
            let key = format!("{IPS}{ip}");
            if self.claim(store, &key, svc, dry_run).await? {
                if !dry_run {
                    done.claimed.push(key);
                }
                return Ok(ip);
            }
        }
        // Crowded: scan the whole range (dynamic band first) against what is taken.
        let taken: HashSet<String> = store
            .list(IPS, None, 0, 0)
            .await?
            .items
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        for offset in (band..=hi).chain(1..band) {
            let ip = self.ip_at(offset);
            let key = format!("{IPS}{ip}");
            if !taken.contains(&key) && self.claim(store, &key, svc, dry_run).await? {
                if !dry_run {
                    done.claimed.push(key);
                }
                return Ok(ip);
            }
        }
        Err(StoreError::Internal(format!(
            "failed to allocate a serviceIP: range is full ({})",
            self.cidr
        ))
        .into())
    }

    async fn dynamic_port(
        &self,
        store: &dyn Store,
        svc: &Value,
        dry_run: bool,
        done: &mut Allocation,
    ) -> Result<u16, AdmissionError> {
        let claimed_here: HashSet<String> = done.claimed.iter().cloned().collect();
        for _ in 0..PROBES {
            let port = rand::rng().random_range(self.ports.clone());
            let key = format!("{PORTS}{port}");
            if !claimed_here.contains(&key) && self.claim(store, &key, svc, dry_run).await? {
                if !dry_run {
                    done.claimed.push(key);
                }
                return Ok(port);
            }
        }
        let taken: HashSet<String> = store
            .list(PORTS, None, 0, 0)
            .await?
            .items
            .into_iter()
            .map(|kv| kv.key)
            .chain(claimed_here)
            .collect();
        for port in self.ports.clone() {
            let key = format!("{PORTS}{port}");
            if !taken.contains(&key) && self.claim(store, &key, svc, dry_run).await? {
                if !dry_run {
                    done.claimed.push(key);
                }
                return Ok(port);
            }
        }
        Err(StoreError::Internal(format!(
            "failed to allocate a nodePort: range {}-{} is full",
            self.ports.start(),
            self.ports.end()
        ))
        .into())
    }

    /// Frees a deleted Service's ClusterIP and NodePorts (only keys it still owns).
    pub async fn release(&self, store: &dyn Store, svc: &Value) -> Result<(), StoreError> {
        let (ns, name) = owner(svc);
        let mut keys = Vec::new();
        if let Some(ip) = svc.pointer("/spec/clusterIP").and_then(Value::as_str)
            && !ip.is_empty()
            && ip != "None"
        {
            keys.push(format!("{IPS}{ip}"));
        }
        for p in svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(np) = p
                .get("nodePort")
                .and_then(Value::as_i64)
                .filter(|p| *p != 0)
            {
                keys.push(format!("{PORTS}{np}"));
            }
        }
        for key in keys {
            let Some((holder, rev)) = stored::get(store, &key).await? else {
                continue;
            };
            if holder["namespace"] == json!(ns) && holder["name"] == json!(name) {
                match store.delete(&key, Some(rev)).await {
                    Ok(_) | Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Removes allocations whose Service is gone or no longer holds them (left by a crash
    /// between allocation and the Service write). Returns how many were removed.
    pub async fn repair(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let mut removed = 0;
        for prefix in [IPS, PORTS] {
            for (key, holder, rev) in stored::list(store, prefix).await? {
                if is_young(&holder) {
                    continue;
                }
                let ns = holder["namespace"].as_str().unwrap_or_default();
                let name = holder["name"].as_str().unwrap_or_default();
                let item = &key[prefix.len()..];
                let svc = stored::get(store, &stored::key("services", Some(ns), name)).await?;
                let held = svc.is_some_and(|(s, _)| {
                    if prefix == IPS {
                        s.pointer("/spec/clusterIP").and_then(Value::as_str) == Some(item)
                    } else {
                        s.pointer("/spec/ports")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .any(|p| {
                                p.get("nodePort").map(ToString::to_string).as_deref() == Some(item)
                            })
                    }
                });
                if !held {
                    match store.delete(&key, Some(rev)).await {
                        Ok(_) => removed += 1,
                        Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(removed)
    }
}

fn is_young(holder: &Value) -> bool {
    let Some(t) = holder["time"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    else {
        return false;
    };
    jiff::Timestamp::now().as_second() - t.as_second() < REPAIR_GRACE_SECONDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_bounds() {
        let a = Allocators::new("10.96.0.0/12", 30000..=32767).unwrap();
        assert!(a.contains("10.96.0.1".parse().unwrap()));
        assert!(a.contains("10.111.255.254".parse().unwrap()));
        assert!(!a.contains("10.96.0.0".parse().unwrap()));
        assert!(!a.contains("10.111.255.255".parse().unwrap()));
        assert!(!a.contains("10.112.0.1".parse().unwrap()));
        assert_eq!(a.static_band(), 256);
        assert!(Allocators::new("10.96.0.0", 1..=2).is_err());
        assert!(Allocators::new("10.96.0.0/33", 1..=2).is_err());
    }

    #[test]
    fn carry_over_keeps_allocated_values() {
        let old = json!({"spec":{"type":"NodePort","clusterIP":"10.96.0.5","clusterIPs":["10.96.0.5"],
            "ports":[{"port":80,"nodePort":30080},{"port":53,"protocol":"UDP","nodePort":30053}]}});
        let mut new = json!({"spec":{"type":"NodePort","ports":[{"port":80},{"port":53,"protocol":"UDP"},{"port":9}]}});
        Allocators::carry_over(&mut new, &old);
        assert_eq!(new["spec"]["clusterIP"], "10.96.0.5");
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30080);
        assert_eq!(new["spec"]["ports"][1]["nodePort"], 30053);
        assert!(new["spec"]["ports"][2].get("nodePort").is_none());
    }
}
