//! CRI `ContainerConfig` → edits of the OCI runtime spec that `hull_runtime`'s bundle
//! code wrote from the image: namespaces joined from the pod, the kubelet's mounts,
//! user, resources → cgroups, and the security context (capabilities, seccomp,
//! read-only rootfs, no_new_privs, privileged). Bad values are `InvalidArgument`s
//! naming the CRI field.

use std::path::{Component, Path, PathBuf};

use k8s_cri::v1::{ContainerConfig, LinuxContainerResources};
use serde_json::{Value, json};

use super::error::{CriError, Result};

/// NamespaceMode values of the CRI.
pub const NS_POD: i32 = 0;
pub const NS_NODE: i32 = 2;

/// What a container takes from its pod.
#[derive(Debug, Clone)]
pub struct PodView {
    pub netns: Option<PathBuf>,
    pub pause_pid: i32,
    /// The pod's pid namespace (the pause's, `shareProcessNamespace`), if it has one.
    pub pid_ns: Option<PathBuf>,
    pub host_pid: bool,
    pub host_ipc: bool,
    pub sandbox_dir: PathBuf,
    pub cgroup_parent: String,
}

fn invalid(msg: String) -> CriError {
    CriError::InvalidArgument(msg)
}

fn clean_abs(p: &str, field: &str) -> Result<()> {
    let path = Path::new(p);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(format!(
            "{field}: {p:?} must be an absolute path without \"..\""
        )));
    }
    Ok(())
}

fn cap_name(c: &str) -> String {
    let u = c.to_ascii_uppercase();
    if u.starts_with("CAP_") {
        u
    } else {
        format!("CAP_{u}")
    }
}

/// Every capability the running kernel knows and this process may still grant (for
/// `privileged` and `ALL`): the server's bounding set, as containerd gives privileged
/// containers its own current capabilities. A cap dropped from the host's bounding set
/// (here CAP_SYS_RESOURCE) cannot be raised, and asking for it fails the capset.
fn all_caps() -> Vec<String> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    let bounding = caps::read(None, caps::CapSet::Bounding).ok();
    caps::all()
        .into_iter()
        .filter(|c| c.index() as u32 <= last)
        .filter(|c| bounding.as_ref().is_none_or(|b| b.contains(c)))
        .map(|c| c.to_string())
        .collect()
}

/// CRI resources → OCI `linux.resources` (memory, cpu, cpuset, hugepages, unified).
pub fn resources(r: &LinuxContainerResources, field: &str) -> Result<Value> {
    for (name, v) in [
        ("cpu_period", r.cpu_period),
        ("cpu_quota", r.cpu_quota),
        ("cpu_shares", r.cpu_shares),
        ("memory_limit_in_bytes", r.memory_limit_in_bytes),
        ("memory_swap_limit_in_bytes", r.memory_swap_limit_in_bytes),
    ] {
        if v < 0 && !(name == "cpu_quota" && v == -1) {
            return Err(invalid(format!("{field}.{name}: {v} must not be negative")));
        }
    }
    let mut out = json!({});
    let mut mem = json!({});
    if r.memory_limit_in_bytes > 0 {
        mem["limit"] = json!(r.memory_limit_in_bytes);
    }
    if r.memory_swap_limit_in_bytes > 0 {
        mem["swap"] = json!(r.memory_swap_limit_in_bytes);
    } else if r.memory_limit_in_bytes > 0 {
        // No swap unless asked for (kubelet's default): a limit must mean OOM, not swapping.
        mem["swap"] = json!(r.memory_limit_in_bytes);
    }
    if mem.as_object().is_some_and(|m| !m.is_empty()) {
        out["memory"] = mem;
    }
    let mut cpu = json!({});
    if r.cpu_shares > 0 {
        cpu["shares"] = json!(r.cpu_shares);
    }
    if r.cpu_quota > 0 {
        cpu["quota"] = json!(r.cpu_quota);
    }
    if r.cpu_period > 0 {
        cpu["period"] = json!(r.cpu_period);
    }
    if !r.cpuset_cpus.is_empty() {
        cpu["cpus"] = json!(r.cpuset_cpus);
    }
    if !r.cpuset_mems.is_empty() {
        cpu["mems"] = json!(r.cpuset_mems);
    }
    if cpu.as_object().is_some_and(|m| !m.is_empty()) {
        out["cpu"] = cpu;
    }
    if !r.hugepage_limits.is_empty() {
        out["hugepageLimits"] = json!(
            r.hugepage_limits
                .iter()
                .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
                .collect::<Vec<_>>()
        );
    }
    if !r.unified.is_empty() {
        out["unified"] = json!(r.unified);
    }
    Ok(out)
}

/// A kernel refuses negative oom_score_adj to us on these machines; clamp and log.
pub fn oom_score_adj(v: i64) -> i64 {
    if v < 0 {
        tracing::warn!(oom_score_adj = v, "negative oom_score_adj clamped to 0");
        0
    } else {
        v.min(1000)
    }
}

/// Applies the container config to `spec` (the image-derived OCI spec as JSON).
pub fn apply(
    spec: &mut Value,
    c: &ContainerConfig,
    pod: &PodView,
    id: &str,
    user: Option<(u32, u32, Vec<u32>)>,
) -> Result<()> {
    let linux_cfg = c.linux.clone().unwrap_or_default();
    let sc = linux_cfg.security_context.clone().unwrap_or_default();
    let ns = sc.namespace_options.clone().unwrap_or_default();
    // Process.
    if !c.command.is_empty() {
        let mut args = c.command.clone();
        args.extend(c.args.iter().cloned());
        spec["process"]["args"] = json!(args);
    }
    if spec["process"]["args"]
        .as_array()
        .is_none_or(|a| a.is_empty())
    {
        return Err(invalid(
            "command: the image has no Entrypoint/Cmd and none was given".into(),
        ));
    }
    if !c.working_dir.is_empty() {
        clean_abs(&c.working_dir, "working_dir")?;
        spec["process"]["cwd"] = json!(c.working_dir);
    }
    // Without a user of its own the container keeps the image's (from the bundle's
    // spec), but the supplemental groups still apply.
    let user = user.or_else(|| {
        (!sc.supplemental_groups.is_empty()).then(|| {
            let u = &spec["process"]["user"];
            let id = |k: &str| {
                u[k].as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(0)
            };
            let extra = u["additionalGids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|g| g.as_u64().and_then(|v| u32::try_from(v).ok()))
                        .collect()
                })
                .unwrap_or_default();
            (id("uid"), id("gid"), extra)
        })
    });
    if let Some((uid, gid, extra)) = user {
        let mut groups = extra;
        for (i, g) in sc.supplemental_groups.iter().enumerate() {
            let g = u32::try_from(*g).map_err(|_| {
                invalid(format!(
                    "linux.security_context.supplemental_groups[{i}]: {g} out of range"
                ))
            })?;
            groups.push(g);
        }
        spec["process"]["user"] = json!({"uid": uid, "gid": gid, "additionalGids": groups});
    }
    // A tty container's monitor receives the pty master (console socket) and holds it.
    spec["process"]["terminal"] = json!(c.tty);
    // Namespaces: the pod's net/ipc/uts through the pause process.
    let mut nss = vec![json!({"type": "mount"})];
    if !(pod.host_pid || ns.pid == NS_NODE) {
        match &pod.pid_ns {
            Some(p) if ns.pid == NS_POD => nss.push(json!({"type": "pid", "path": p})),
            _ => nss.push(json!({"type": "pid"})),
        }
    }
    if let Some(n) = &pod.netns {
        nss.push(json!({"type": "network", "path": n}));
        nss.push(json!({"type": "uts", "path": format!("/proc/{}/ns/uts", pod.pause_pid)}));
    }
    if !pod.host_ipc {
        nss.push(json!({"type": "ipc", "path": format!("/proc/{}/ns/ipc", pod.pause_pid)}));
    }
    spec["linux"]["namespaces"] = json!(nss);
    if let Some(o) = spec.as_object_mut() {
        o.remove("hostname");
    }
    // Mounts: the kubelet's binds, then the pod's /etc files unless given.
    let mut mounts: Vec<Value> = spec["mounts"].as_array().cloned().unwrap_or_default();
    let mut targets: Vec<String> = Vec::new();
    for (i, m) in c.mounts.iter().enumerate() {
        clean_abs(&m.container_path, &format!("mounts[{i}].container_path"))?;
        clean_abs(&m.host_path, &format!("mounts[{i}].host_path"))?;
        if !Path::new(&m.host_path).exists() {
            std::fs::create_dir_all(&m.host_path)
                .map_err(|e| invalid(format!("mounts[{i}].host_path: {}: {e}", m.host_path)))?;
        }
        let prop = match m.propagation {
            1 => "rslave",
            2 => "rshared",
            _ => "rprivate",
        };
        let mut opts = vec!["rbind", prop];
        if m.readonly {
            opts.push("ro");
        }
        mounts.retain(|x| x["destination"] != json!(m.container_path));
        mounts.push(json!({"destination": m.container_path, "type": "bind", "source": m.host_path, "options": opts}));
        targets.push(m.container_path.clone());
    }
    for f in ["hostname", "hosts", "resolv.conf"] {
        let dest = format!("/etc/{f}");
        let src = pod.sandbox_dir.join(f);
        if !targets.contains(&dest) && src.exists() {
            let mut opts = vec!["rbind", "rprivate"];
            if sc.readonly_rootfs {
                opts.push("ro");
            }
            mounts
                .push(json!({"destination": dest, "type": "bind", "source": src, "options": opts}));
        }
    }
    spec["mounts"] = json!(mounts);
    // A Bidirectional volume's mounts reach the host only if the container's whole tree
    // stays shared (containerd does the same; the runtime keeps the rootfs's own bind
    // from leaking back). Otherwise the runtime's default, rslave.
    if c.mounts.iter().any(|m| m.propagation == 2) {
        spec["linux"]["rootfsPropagation"] = json!("rshared");
    }
    // Resources → the container's cgroup under the pod's.
    if let Some(r) = &linux_cfg.resources {
        let mut res = resources(r, "linux.resources")?;
        res["devices"] = spec["linux"]["resources"]["devices"].clone();
        spec["linux"]["resources"] = res;
        if r.oom_score_adj != 0 {
            spec["process"]["oomScoreAdj"] = json!(oom_score_adj(r.oom_score_adj));
        }
    }
    spec["linux"]["cgroupsPath"] =
        json!(format!("{}/{id}", pod.cgroup_parent.trim_end_matches('/')));
    // Security context.
    spec["root"]["readonly"] = json!(sc.readonly_rootfs);
    let mut caps: Vec<String> = spec["process"]["capabilities"]["bounding"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if sc.privileged {
        caps = all_caps();
        if let Some(l) = spec["linux"].as_object_mut() {
            l.remove("maskedPaths");
            l.remove("readonlyPaths");
            l.remove("seccomp");
        }
        spec["linux"]["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}]);
    } else if let Some(cp) = &sc.capabilities {
        for a in &cp.add_capabilities {
            if a.eq_ignore_ascii_case("ALL") {
                caps = all_caps();
            } else if !caps.contains(&cap_name(a)) {
                caps.push(cap_name(a));
            }
        }
        for d in &cp.drop_capabilities {
            if d.eq_ignore_ascii_case("ALL") {
                caps.clear();
            } else {
                caps.retain(|x| *x != cap_name(d));
            }
        }
    }
    spec["process"]["capabilities"] =
        json!({"bounding": caps, "effective": caps, "permitted": caps});
    spec["process"]["noNewPrivileges"] = json!(!sc.privileged || sc.no_new_privs);
    if !sc.privileged {
        if !sc.masked_paths.is_empty() {
            spec["linux"]["maskedPaths"] = json!(sc.masked_paths);
        }
        if !sc.readonly_paths.is_empty() {
            spec["linux"]["readonlyPaths"] = json!(sc.readonly_paths);
        }
        match seccomp(&sc, &caps)? {
            Some(p) => spec["linux"]["seccomp"] = p,
            None => {
                if let Some(l) = spec["linux"].as_object_mut() {
                    l.remove("seccomp");
                }
            }
        }
    }
    Ok(())
}

/// The seccomp profile: RuntimeDefault (also when unset), Unconfined, or a Localhost
/// file in OCI `linux.seccomp` form.
#[allow(deprecated)] // seccomp_profile_path: older kubelets still send it
fn seccomp(
    sc: &k8s_cri::v1::LinuxContainerSecurityContext,
    caps: &[String],
) -> Result<Option<Value>> {
    let (kind, local) = match &sc.seccomp {
        Some(p) => (p.profile_type, p.localhost_ref.clone()),
        None => match sc.seccomp_profile_path.as_str() {
            "unconfined" => (1, String::new()),
            p if p.starts_with("localhost/") => (2, p["localhost/".len()..].to_string()),
            _ => (0, String::new()),
        },
    };
    match kind {
        1 => Ok(None),
        2 => {
            let field = "linux.security_context.seccomp.localhost_ref";
            clean_abs(&local, field)?;
            let data =
                std::fs::read(&local).map_err(|e| invalid(format!("{field}: {local}: {e}")))?;
            let v: oci_spec::runtime::LinuxSeccomp = serde_json::from_slice(&data)
                .map_err(|e| invalid(format!("{field}: {local}: {e}")))?;
            Ok(Some(
                serde_json::to_value(v).map_err(|e| CriError::Internal(e.to_string()))?,
            ))
        }
        _ => Ok(Some(
            serde_json::to_value(hull_runtime::seccomp::runtime_default_for(caps))
                .map_err(|e| CriError::Internal(e.to_string()))?,
        )),
    }
}
