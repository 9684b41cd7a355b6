//! A container's environment as kubelet builds it: service links, envFrom, env (value,
//! fieldRef, resourceFieldRef, configMapKeyRef, secretKeyRef) with `$(VAR)` expansion,
//! then command and args expanded against the result.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::api::Api;

use super::{quantity, resources};

/// Kubernetes' `$(VAR)` expansion: defined names are replaced, `$$` is a literal `$`,
/// anything else is left as written.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                if let Some(v) = vars.get(name) {
                    out.push_str(v);
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

/// What fieldRef/resourceFieldRef read besides the Pod object.
pub struct Facts<'a> {
    pub pod_ips: &'a [String],
    pub host_ip: &'a str,
    pub node_cpu_milli: i128,
    pub node_memory: i128,
}

fn label_key(path: &str, prefix: &str) -> Option<String> {
    let rest = path
        .strip_prefix(prefix)?
        .strip_prefix("['")?
        .strip_suffix("']")?;
    Some(rest.to_string())
}

pub fn field_ref(pod: &Pod, path: &str, f: &Facts) -> Result<String, String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => f.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => f.pod_ips.join(","),
        "status.hostIP" | "status.hostIPs" => f.host_ip.to_string(),
        "metadata.labels" => fmt_map(m.labels.as_ref()),
        "metadata.annotations" => fmt_map(m.annotations.as_ref()),
        p => {
            if let Some(k) = label_key(p, "metadata.labels") {
                m.labels
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(k) = label_key(p, "metadata.annotations") {
                m.annotations
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(format!("fieldRef {p:?} is not supported"));
            }
        }
    })
}

/// `key="value"` lines, sorted, as the downward API writes maps.
pub fn fmt_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.map(|m| {
        m.iter()
            .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
            .collect::<Vec<_>>()
            .join("\n")
    })
    .unwrap_or_default()
}

pub fn resource_ref(
    pod: &Pod,
    c: &Container,
    resource: &str,
    divisor: Option<&str>,
    f: &Facts,
) -> Result<String, String> {
    let (which, res) = resource
        .split_once('.')
        .ok_or_else(|| format!("resourceFieldRef {resource:?} is not supported"))?;
    let _ = pod;
    let cpu = res == "cpu";
    let value = match (which, res) {
        ("limits", "cpu") => resources::limit(c, "cpu").unwrap_or(f.node_cpu_milli),
        ("requests", "cpu") => resources::request(c, "cpu").unwrap_or(0),
        ("limits", "memory") => resources::limit(c, "memory").unwrap_or(f.node_memory),
        ("requests", "memory") => resources::request(c, "memory").unwrap_or(0),
        ("limits", r) | ("requests", r) => {
            let v = if which == "limits" {
                resources::limit(c, r)
            } else {
                resources::request(c, r)
            };
            v.unwrap_or(0)
        }
        _ => return Err(format!("resourceFieldRef {resource:?} is not supported")),
    };
    let div = match divisor {
        Some(d) if !d.is_empty() => {
            let m = if cpu {
                quantity::milli(d)
            } else {
                quantity::units(d)
            }
            .ok_or_else(|| format!("resourceFieldRef divisor {d:?} is not a quantity"))?;
            if m <= 0 {
                return Err(format!("resourceFieldRef divisor {d:?} must be positive"));
            }
            m
        }
        _ => {
            if cpu {
                1000
            } else {
                1
            }
        }
    };
    // kubelet rounds up (a 250m CPU limit reads as 1 core).
    Ok(((value + div - 1).div_euclid(div)).to_string())
}

/// Docker-link style variables of every Service in the namespace (and the
/// `kubernetes` Service of `default`), as kubelet's enableServiceLinks.
pub fn service_env(services: &[Service], ns: &str, links: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for s in services {
        let sns = s.metadata.namespace.as_deref().unwrap_or_default();
        let name = s.metadata.name.as_deref().unwrap_or_default();
        let is_master = sns == "default" && name == "kubernetes";
        if !(is_master || sns == ns && links) {
            continue;
        }
        let Some(spec) = &s.spec else { continue };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        let prefix = name.to_uppercase().replace('-', "_");
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        out.insert(format!("{prefix}_SERVICE_HOST"), ip.to_string());
        out.insert(format!("{prefix}_SERVICE_PORT"), first.port.to_string());
        for p in ports {
            if let Some(pn) = &p.name {
                out.insert(
                    format!(
                        "{prefix}_SERVICE_PORT_{}",
                        pn.to_uppercase().replace('-', "_")
                    ),
                    p.port.to_string(),
                );
            }
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            let base = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
            let lp = proto.to_lowercase();
            out.insert(base.clone(), format!("{lp}://{ip}:{}", p.port));
            out.insert(format!("{base}_PROTO"), lp);
            out.insert(format!("{base}_PORT"), p.port.to_string());
            out.insert(format!("{base}_ADDR"), ip.to_string());
        }
        out.insert(
            format!("{prefix}_PORT"),
            format!(
                "{}://{ip}:{}",
                first.protocol.as_deref().unwrap_or("TCP").to_lowercase(),
                first.port
            ),
        );
    }
    out
}

/// The environment, in Kubernetes' order (service links, envFrom, env), plus the
/// expanded command and args.
pub struct Built {
    pub env: Vec<(String, String)>,
    pub command: Vec<String>,
    pub args: Vec<String>,
}

pub async fn build(
    client: &kube::Client,
    pod: &Pod,
    c: &Container,
    services: &[Service],
    f: &Facts<'_>,
) -> Result<Built, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut order: Vec<String> = Vec::new();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let set =
        |k: String, v: String, order: &mut Vec<String>, vars: &mut BTreeMap<String, String>| {
            if !vars.contains_key(&k) {
                order.push(k.clone());
            }
            vars.insert(k, v);
        };
    for (k, v) in service_env(services, ns, links) {
        set(k, v, &mut order, &mut vars);
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for (i, ef) in c.env_from.iter().flatten().enumerate() {
        let prefix = ef.prefix.clone().unwrap_or_default();
        if let Some(r) = &ef.config_map_ref {
            let optional = r.optional.unwrap_or(false);
            match cms
                .get_opt(&r.name)
                .await
                .map_err(|e| format!("envFrom[{i}] configmap {:?}: {e}", r.name))?
            {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        set(format!("{prefix}{k}"), v, &mut order, &mut vars);
                    }
                }
                None if optional => {}
                None => return Err(format!("configmap \"{}\" not found", r.name)),
            }
        }
        if let Some(r) = &ef.secret_ref {
            let optional = r.optional.unwrap_or(false);
            match secrets
                .get_opt(&r.name)
                .await
                .map_err(|e| format!("envFrom[{i}] secret {:?}: {e}", r.name))?
            {
                Some(s) => {
                    for (k, v) in s.data.unwrap_or_default() {
                        set(
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                            &mut order,
                            &mut vars,
                        );
                    }
                }
                None if optional => {}
                None => return Err(format!("secret \"{}\" not found", r.name)),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            Some(expand(v, &vars))
        } else if let Some(src) = &e.value_from {
            if let Some(fr) = &src.field_ref {
                Some(field_ref(pod, &fr.field_path, f)?)
            } else if let Some(rr) = &src.resource_field_ref {
                let target = match rr.container_name.as_deref() {
                    Some(n) if !n.is_empty() && n != c.name => pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.containers.iter().find(|x| x.name == n))
                        .ok_or_else(|| format!("env {}: container {n:?} not found", e.name))?,
                    _ => c,
                };
                Some(resource_ref(
                    pod,
                    target,
                    &rr.resource,
                    rr.divisor.as_ref().map(|d| d.0.as_str()),
                    f,
                )?)
            } else if let Some(r) = &src.config_map_key_ref {
                let optional = r.optional.unwrap_or(false);
                let cm = cms
                    .get_opt(&r.name)
                    .await
                    .map_err(|err| format!("env {}: configmap {:?}: {err}", e.name, r.name))?;
                match cm.and_then(|cm| cm.data.and_then(|d| d.get(&r.key).cloned())) {
                    Some(v) => Some(v),
                    None if optional => None,
                    None => {
                        return Err(format!(
                            "couldn't find key {} in ConfigMap {ns}/{}",
                            r.key, r.name
                        ));
                    }
                }
            } else if let Some(r) = &src.secret_key_ref {
                let optional = r.optional.unwrap_or(false);
                let s = secrets
                    .get_opt(&r.name)
                    .await
                    .map_err(|err| format!("env {}: secret {:?}: {err}", e.name, r.name))?;
                match s.and_then(|s| {
                    s.data.and_then(|d| {
                        d.get(&r.key)
                            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    })
                }) {
                    Some(v) => Some(v),
                    None if optional => None,
                    None => {
                        return Err(format!(
                            "couldn't find key {} in Secret {ns}/{}",
                            r.key, r.name
                        ));
                    }
                }
            } else {
                None
            }
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            set(e.name.clone(), v, &mut order, &mut vars);
        }
    }
    let command = c
        .command
        .iter()
        .flatten()
        .map(|s| expand(s, &vars))
        .collect();
    let args = c.args.iter().flatten().map(|s| expand(s, &vars)).collect();
    let env = order
        .into_iter()
        .filter_map(|k| vars.get(&k).map(|v| (k.clone(), v.clone())))
        .collect();
    Ok(Built { env, command, args })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion() {
        let vars = BTreeMap::from([("A".to_string(), "x".to_string())]);
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &vars), "x-$(B)-$(A)-$");
        assert_eq!(expand("é$(A)", &vars), "éx");
    }
}
