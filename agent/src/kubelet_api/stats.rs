//! `/stats/summary`, `/metrics/resource` and `/metrics`: the node's CPU and memory from
//! /proc, the pods' and containers' from the CRI's ListContainerStats, the pods'
//! network from ListPodSandboxStats. CPU rates
//! (`usageNanoCores`) need two samples: the last sample of every container is kept, and a
//! caller that finds none waits one second for a second sample, as cAdvisor's first
//! housekeeping does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_cri::v1::*;
use serde_json::{Value, json};

use super::{ApiError, Ctx, json as json_response};

/// Last (timestamp ns, cumulative CPU ns) per container id, and "node" for the node.
#[derive(Default)]
pub struct CpuSamples(Mutex<HashMap<String, (i64, u64)>>);

impl CpuSamples {
    /// The rate in nano-cores since the kept sample (then keeps this one).
    fn rate(&self, key: &str, ts: i64, usage: u64) -> Option<u64> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let prev = m.insert(key.to_string(), (ts, usage));
        let (pts, pu) = prev?;
        let dt = ts.checked_sub(pts).filter(|d| *d > 0)?;
        Some(((usage.saturating_sub(pu)) as u128 * 1_000_000_000 / dt as u128) as u64)
    }
    fn has(&self, key: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(key)
    }
    fn retain(&self, keep: &dyn Fn(&str) -> bool) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| k == "node" || keep(k));
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn rfc3339(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(ns as i128)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// The node's cumulative CPU time (ns) from /proc/stat.
fn node_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    let busy: u64 = f
        .iter()
        .enumerate()
        .take(8)
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| *v)
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Some(busy * (1_000_000_000 / hz.max(1)))
}

/// (total, available) bytes from /proc/meminfo.
fn node_memory() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (get("MemTotal:"), get("MemAvailable:"))
}

struct Sample {
    stats: Vec<ContainerStats>,
    containers: HashMap<String, Container>,
    sandboxes: HashMap<String, PodSandbox>,
}

async fn sample(ctx: &Ctx) -> Result<Sample, ApiError> {
    let mut cri = ctx.cri.clone();
    let e = |what: &'static str| {
        move |s: tonic::Status| ApiError::Internal(format!("CRI {what}: {}", s.message()))
    };
    let stats = cri
        .list_container_stats(ListContainerStatsRequest { filter: None })
        .await
        .map_err(e("ListContainerStats"))?
        .into_inner()
        .stats;
    let containers = cri
        .list_containers(ListContainersRequest { filter: None })
        .await
        .map_err(e("ListContainers"))?
        .into_inner()
        .containers
        .into_iter()
        .map(|c| (c.id.clone(), c))
        .collect();
    let sandboxes = cri
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .map_err(e("ListPodSandbox"))?
        .into_inner()
        .items
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    Ok(Sample {
        stats,
        containers,
        sandboxes,
    })
}

fn cpu_of(s: &ContainerStats) -> (i64, u64) {
    let c = s.cpu.as_ref();
    (
        c.map(|c| c.timestamp)
            .filter(|t| *t > 0)
            .unwrap_or_else(now_ns),
        c.and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map(|v| v.value)
            .unwrap_or(0),
    )
}

fn mem_of(s: &ContainerStats) -> u64 {
    s.memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map(|v| v.value)
        .unwrap_or(0)
}

/// One running container's figures, with its pod.
pub struct Figures {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    pub started_ns: i64,
    pub time_ns: i64,
    pub cpu_ns: u64,
    pub nano_cores: u64,
    pub working_set: u64,
}

/// Every running container's figures and the node's (time, cpu ns, nano-cores).
pub async fn collect(ctx: &Ctx) -> Result<(Vec<Figures>, (i64, u64, u64)), ApiError> {
    let mut s = sample(ctx).await?;
    let missing = !ctx.cpu.has("node")
        || s.stats
            .iter()
            .any(|st| st.attributes.as_ref().is_some_and(|a| !ctx.cpu.has(&a.id)));
    if missing {
        for st in &s.stats {
            if let Some(a) = &st.attributes {
                let (t, u) = cpu_of(st);
                ctx.cpu.rate(&a.id, t, u);
            }
        }
        ctx.cpu.rate("node", now_ns(), node_cpu_ns().unwrap_or(0));
        tokio::time::sleep(Duration::from_secs(1)).await;
        s = sample(ctx).await?;
    }
    let node_t = now_ns();
    let node_cpu = node_cpu_ns().unwrap_or(0);
    let node_rate = ctx.cpu.rate("node", node_t, node_cpu).unwrap_or(0);
    let mut out = Vec::new();
    for st in &s.stats {
        let Some(a) = &st.attributes else { continue };
        let Some(c) = s.containers.get(&a.id) else {
            continue;
        };
        if c.state != ContainerState::ContainerRunning as i32 {
            continue;
        }
        let Some(sb) = s.sandboxes.get(&c.pod_sandbox_id) else {
            continue;
        };
        let Some(m) = &sb.metadata else { continue };
        let (t, u) = cpu_of(st);
        let rate = ctx.cpu.rate(&a.id, t, u).unwrap_or(0);
        out.push(Figures {
            namespace: m.namespace.clone(),
            pod: m.name.clone(),
            pod_uid: m.uid.clone(),
            container: c
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default(),
            started_ns: c.created_at,
            time_ns: t,
            cpu_ns: u,
            nano_cores: rate,
            working_set: mem_of(st),
        });
    }
    ctx.cpu.retain(&|k| s.containers.contains_key(k));
    Ok((out, (node_t, node_cpu, node_rate)))
}

/// One interface as the summary API's `InterfaceStats`.
fn interface(i: &NetworkInterfaceUsage) -> Value {
    let v = |x: &Option<UInt64Value>| x.as_ref().map(|x| x.value).unwrap_or(0);
    json!({"name": i.name, "rxBytes": v(&i.rx_bytes), "rxErrors": v(&i.rx_errors),
           "txBytes": v(&i.tx_bytes), "txErrors": v(&i.tx_errors)})
}

/// Each pod's `network` (the default interface inline, then every interface), keyed
/// by (namespace, name), as the kubelet's summary carries it. Pods on the host's
/// network report none, as the CRI gives none for them. A runtime without
/// ListPodSandboxStats only costs the field.
async fn pod_networks(ctx: &Ctx) -> HashMap<(String, String), Value> {
    let mut cri = ctx.cri.clone();
    let Ok(r) = cri
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest { filter: None })
        .await
    else {
        return HashMap::new();
    };
    let mut out = HashMap::new();
    for st in r.into_inner().stats {
        let (Some(a), Some(net)) = (
            st.attributes.as_ref(),
            st.linux.as_ref().and_then(|l| l.network.as_ref()),
        ) else {
            continue;
        };
        let (Some(md), Some(default)) = (&a.metadata, &net.default_interface) else {
            continue;
        };
        let mut v = interface(default);
        v["time"] = json!(rfc3339(net.timestamp));
        v["interfaces"] = net.interfaces.iter().map(interface).collect();
        out.insert((md.namespace.clone(), md.name.clone()), v);
    }
    out
}

pub async fn summary(State(ctx): State<Arc<Ctx>>) -> Result<Response, ApiError> {
    let (figs, (nt, ncpu, nrate)) = collect(&ctx).await?;
    let networks = pod_networks(&ctx).await;
    let (total, avail) = node_memory();
    // (namespace, name) → (uid, start, containers, nano-cores, cpu ns, working set).
    type PodSum = (String, i64, Vec<Value>, u64, u64, u64);
    let mut pods: HashMap<(String, String), PodSum> = HashMap::new();
    for f in &figs {
        let e = pods
            .entry((f.namespace.clone(), f.pod.clone()))
            .or_insert_with(|| (f.pod_uid.clone(), f.started_ns, Vec::new(), 0, 0, 0));
        e.1 = e.1.min(f.started_ns);
        e.2.push(json!({
            "name": f.container,
            "startTime": rfc3339(f.started_ns),
            "cpu": {"time": rfc3339(f.time_ns), "usageNanoCores": f.nano_cores, "usageCoreNanoSeconds": f.cpu_ns},
            "memory": {"time": rfc3339(f.time_ns), "workingSetBytes": f.working_set, "usageBytes": f.working_set},
        }));
        e.3 += f.nano_cores;
        e.4 += f.cpu_ns;
        e.5 += f.working_set;
    }
    let t = rfc3339(nt);
    let pods: Vec<Value> = pods
        .into_iter()
        .map(|((ns, name), (uid, start, containers, rate, cpu, ws))| {
            let mut pod = json!({
                "podRef": {"name": name, "namespace": ns, "uid": uid},
                "startTime": rfc3339(start),
                "containers": containers,
                "cpu": {"time": t, "usageNanoCores": rate, "usageCoreNanoSeconds": cpu},
                "memory": {"time": t, "workingSetBytes": ws, "usageBytes": ws},
            });
            if let Some(net) = networks.get(&(ns, name)) {
                pod["network"] = net.clone();
            }
            pod
        })
        .collect();
    Ok(json_response(&json!({
        "node": {
            "nodeName": ctx.node_name,
            "cpu": {"time": t, "usageNanoCores": nrate, "usageCoreNanoSeconds": ncpu},
            "memory": {"time": t, "availableBytes": avail, "usageBytes": total - avail.min(total),
                       "workingSetBytes": total - avail.min(total)},
        },
        "pods": pods,
    })))
}

fn prometheus(body: String) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The resource metrics endpoint metrics-server scrapes (cumulative CPU, working set).
pub async fn metrics_resource(State(ctx): State<Arc<Ctx>>) -> Result<Response, ApiError> {
    let (figs, (nt, ncpu, _)) = collect(&ctx).await?;
    let (total, avail) = node_memory();
    let ms = |ns: i64| ns / 1_000_000;
    let mut b = String::new();
    b.push_str("# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds\n# TYPE container_cpu_usage_seconds_total counter\n");
    for f in &figs {
        b.push_str(&format!(
            "container_cpu_usage_seconds_total{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {} {}\n",
            esc(&f.container), esc(&f.namespace), esc(&f.pod), f.cpu_ns as f64 / 1e9, ms(f.time_ns)
        ));
    }
    b.push_str("# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes\n# TYPE container_memory_working_set_bytes gauge\n");
    for f in &figs {
        b.push_str(&format!(
            "container_memory_working_set_bytes{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {} {}\n",
            esc(&f.container), esc(&f.namespace), esc(&f.pod), f.working_set, ms(f.time_ns)
        ));
    }
    b.push_str("# HELP container_start_time_seconds [STABLE] Start time of the container since unix epoch in seconds\n# TYPE container_start_time_seconds gauge\n");
    for f in &figs {
        b.push_str(&format!(
            "container_start_time_seconds{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {}\n",
            esc(&f.container),
            esc(&f.namespace),
            esc(&f.pod),
            f.started_ns as f64 / 1e9
        ));
    }
    b.push_str(&format!(
        "# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds\n# TYPE node_cpu_usage_seconds_total counter\nnode_cpu_usage_seconds_total {} {}\n",
        ncpu as f64 / 1e9, ms(nt)
    ));
    b.push_str(&format!(
        "# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes\n# TYPE node_memory_working_set_bytes gauge\nnode_memory_working_set_bytes {} {}\n",
        total - avail.min(total), ms(nt)
    ));
    b.push_str("# HELP scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise\n# TYPE scrape_error gauge\nscrape_error 0\n");
    Ok(prometheus(b))
}

/// The kubelet's own metrics (the few hull keeps).
pub async fn metrics(State(ctx): State<Arc<Ctx>>) -> Result<Response, ApiError> {
    let s = sample(&ctx).await?;
    let pods = s
        .sandboxes
        .values()
        .filter(|p| p.state == PodSandboxState::SandboxReady as i32)
        .count();
    let running = s
        .containers
        .values()
        .filter(|c| c.state == ContainerState::ContainerRunning as i32)
        .count();
    Ok(prometheus(format!(
        "# HELP kubelet_running_pods [ALPHA] Number of pods that have a running pod sandbox\n# TYPE kubelet_running_pods gauge\nkubelet_running_pods {pods}\n# HELP kubelet_running_containers [ALPHA] Number of containers currently running\n# TYPE kubelet_running_containers gauge\nkubelet_running_containers{{container_state=\"running\"}} {running}\n"
    )))
}
