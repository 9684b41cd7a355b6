//! A Pod → CRI configs: the sandbox (hostname, DNS, port mappings, labels, log dir,
//! security context, cgroup parent) and each container (image, command, env, mounts,
//! resources, security context), labelled the way kubelet labels them so the agent
//! finds its pods again after a restart.

use std::collections::HashMap;
use std::path::PathBuf;

use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::*;
use k8s_openapi::api::core::v1::{Container, Pod, SeccompProfile};

use super::Options;
use super::resources;

pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";

pub fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

pub fn log_dir(opts: &Options, pod: &Pod) -> PathBuf {
    opts.data_dir.join("logs").join("pods").join(format!(
        "{}_{}_{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default(),
        uid(pod)
    ))
}

fn base_labels(pod: &Pod) -> HashMap<String, String> {
    HashMap::from([
        (POD_UID.into(), uid(pod).into()),
        (
            POD_NAME.into(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
        (
            POD_NAMESPACE.into(),
            pod.metadata.namespace.clone().unwrap_or_default(),
        ),
    ])
}

pub fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

fn dns(pod: &Pod, opts: &Options) -> Option<DnsConfig> {
    let spec = pod.spec.as_ref()?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network(pod),
        _ => false,
    };
    let mut d = if cluster {
        let dom = &opts.cluster_domain;
        DnsConfig {
            servers: opts.cluster_dns.iter().map(|ip| ip.to_string()).collect(),
            searches: vec![format!("{ns}.svc.{dom}"), format!("svc.{dom}"), dom.clone()],
            options: vec!["ndots:5".into()],
        }
    } else if policy == "None" {
        DnsConfig::default()
    } else {
        // "Default": the CRI copies the node's resolv.conf when given no config.
        spec.dns_config.as_ref()?;
        host_resolv()
    };
    if let Some(pc) = &spec.dns_config {
        for s in pc.nameservers.iter().flatten() {
            if !d.servers.contains(s) {
                d.servers.push(s.clone());
            }
        }
        for s in pc.searches.iter().flatten() {
            if !d.searches.contains(s) {
                d.searches.push(s.clone());
            }
        }
        for o in pc.options.iter().flatten() {
            let v = match &o.value {
                Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                None => o.name.clone().unwrap_or_default(),
            };
            let key = v.split(':').next().unwrap_or_default().to_string();
            d.options.retain(|x| x.split(':').next() != Some(&key));
            d.options.push(v);
        }
    }
    Some(d)
}

fn host_resolv() -> DnsConfig {
    let mut d = DnsConfig::default();
    for l in std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
    {
        let mut w = l.split_whitespace();
        match w.next() {
            Some("nameserver") => d.servers.extend(w.next().map(String::from)),
            Some("search") => d.searches.extend(w.map(String::from)),
            Some("options") => d.options.extend(w.map(String::from)),
            _ => {}
        }
    }
    d
}

fn seccomp(p: Option<&SeccompProfile>) -> Option<SecurityProfile> {
    let p = p?;
    let (ty, r) = match p.type_.as_str() {
        "Unconfined" => (ProfileType::Unconfined, String::new()),
        "Localhost" => (
            ProfileType::Localhost,
            p.localhost_profile.clone().unwrap_or_default(),
        ),
        _ => (ProfileType::RuntimeDefault, String::new()),
    };
    Some(SecurityProfile {
        profile_type: ty as i32,
        localhost_ref: r,
    })
}

fn ns_options(pod: &Pod) -> NamespaceOption {
    let spec = pod.spec.as_ref();
    let flag = |f: Option<bool>| f.unwrap_or(false);
    NamespaceOption {
        network: if host_network(pod) {
            NamespaceMode::Node
        } else {
            NamespaceMode::Pod
        } as i32,
        pid: if flag(spec.and_then(|s| s.host_pid)) {
            NamespaceMode::Node
        } else if flag(spec.and_then(|s| s.share_process_namespace)) {
            NamespaceMode::Pod
        } else {
            NamespaceMode::Container
        } as i32,
        ipc: if flag(spec.and_then(|s| s.host_ipc)) {
            NamespaceMode::Node
        } else {
            NamespaceMode::Pod
        } as i32,
        ..Default::default()
    }
}

pub fn sandbox(pod: &Pod, opts: &Options, attempt: u32) -> PodSandboxConfig {
    let spec = pod.spec.clone().unwrap_or_default();
    let psc = spec.security_context.clone().unwrap_or_default();
    let mut labels = base_labels(pod);
    for (k, v) in pod.metadata.labels.iter().flatten() {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let hostname = if host_network(pod) {
        String::new()
    } else {
        let mut h = spec
            .hostname
            .clone()
            .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
        h.truncate(63);
        h.trim_end_matches(['-', '.']).to_string()
    };
    let mut port_mappings = Vec::new();
    for c in &spec.containers {
        for p in c.ports.iter().flatten() {
            if let Some(hp) = p.host_port.filter(|h| *h > 0) {
                let proto = match p.protocol.as_deref() {
                    Some("UDP") => Protocol::Udp,
                    Some("SCTP") => Protocol::Sctp,
                    _ => Protocol::Tcp,
                };
                port_mappings.push(PortMapping {
                    protocol: proto as i32,
                    container_port: p.container_port,
                    host_port: hp,
                    host_ip: p.host_ip.clone().unwrap_or_default(),
                });
            }
        }
    }
    let sysctls = psc
        .sysctls
        .iter()
        .flatten()
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect();
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: uid(pod).into(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            attempt,
        }),
        hostname,
        log_directory: log_dir(opts, pod).to_string_lossy().into_owned(),
        dns_config: dns(pod, opts),
        port_mappings,
        labels,
        annotations: pod
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: resources::cgroup_parent(pod),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(ns_options(pod)),
                run_as_user: psc.run_as_user.map(|v| Int64Value { value: v }),
                run_as_group: psc.run_as_group.map(|v| Int64Value { value: v }),
                supplemental_groups: psc.supplemental_groups.clone().unwrap_or_default(),
                seccomp: seccomp(psc.seccomp_profile.as_ref()),
                ..Default::default()
            }),
            sysctls,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub struct ContainerInputs {
    pub env: Vec<(String, String)>,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub mounts: Vec<Mount>,
    pub image: String,
    pub mem_capacity: i128,
}

pub fn container(pod: &Pod, c: &Container, attempt: u32, inp: ContainerInputs) -> ContainerConfig {
    let psc = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    let mut labels = base_labels(pod);
    labels.insert(CONTAINER_NAME.into(), c.name.clone());
    let annotations = HashMap::from([
        (
            "io.kubernetes.container.restartCount".to_string(),
            attempt.to_string(),
        ),
        (
            "io.kubernetes.container.terminationMessagePath".to_string(),
            c.termination_message_path
                .clone()
                .unwrap_or_else(|| "/dev/termination-log".into()),
        ),
        (
            "io.kubernetes.pod.terminationGracePeriod".to_string(),
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30)
                .to_string(),
        ),
    ]);
    let privileged = sc.privileged.unwrap_or(false);
    let caps = sc.capabilities.clone().unwrap_or_default();
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: c.name.clone(),
            attempt,
        }),
        image: Some(ImageSpec {
            image: inp.image,
            ..Default::default()
        }),
        command: inp.command,
        args: inp.args,
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: inp
            .env
            .into_iter()
            .map(|(key, value)| KeyValue { key, value })
            .collect(),
        mounts: inp.mounts,
        labels,
        annotations,
        log_path: format!("{}/{attempt}.log", c.name),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(LinuxContainerConfig {
            resources: Some(resources::linux_resources(pod, c, inp.mem_capacity)),
            security_context: Some(LinuxContainerSecurityContext {
                capabilities: Some(Capability {
                    add_capabilities: caps.add.unwrap_or_default(),
                    drop_capabilities: caps.drop.unwrap_or_default(),
                    ..Default::default()
                }),
                privileged,
                namespace_options: Some(ns_options(pod)),
                run_as_user: sc
                    .run_as_user
                    .or(psc.run_as_user)
                    .map(|v| Int64Value { value: v }),
                run_as_group: sc
                    .run_as_group
                    .or(psc.run_as_group)
                    .map(|v| Int64Value { value: v }),
                readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
                supplemental_groups: psc.supplemental_groups.clone().unwrap_or_default(),
                no_new_privs: !privileged && !sc.allow_privilege_escalation.unwrap_or(true),
                seccomp: seccomp(sc.seccomp_profile.as_ref().or(psc.seccomp_profile.as_ref())),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}
