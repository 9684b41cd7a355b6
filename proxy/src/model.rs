//! The pure model: Services + EndpointSlices + node facts → the desired set of
//! service ports, each with the endpoints it may send traffic to.
//!
//! Nothing here touches the kernel, so every shape of Service can be unit-tested;
//! `nft.rs` turns the result into one nftables transaction.

use std::collections::HashMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label an EndpointSlice carries to name its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Facts about the node the proxy runs on.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    /// Addresses NodePorts answer on (besides 127.0.0.1 when `localhost_nodeports`).
    pub addresses: Vec<IpAddr>,
    /// Traffic from outside these CIDRs to a ClusterIP is masqueraded (kube-proxy's
    /// `--cluster-cidr`), so replies come back through this node.
    pub pod_cidrs: Vec<(IpAddr, u8)>,
    /// NodePorts on 127.0.0.1 as kube-proxy's iptables mode does.
    pub localhost_nodeports: bool,
    /// The node's `topology.kubernetes.io/zone` label (for topology hints).
    pub zone: Option<String>,
}

/// The Node label that names its zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn parse(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }
    pub fn nft(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
    /// The IP protocol number (`meta l4proto`).
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }
}

/// One backend of a service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node (for the `Local` traffic policies).
    pub local: bool,
    /// Topology hints: the zones (`hints.forZones`) and nodes (`hints.forNodes`)
    /// that should use this endpoint; empty when the slice gives none.
    pub for_zones: Vec<String>,
    pub for_nodes: Vec<String>,
}

/// One port of one Service, with everything needed to render its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortRule {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub protocol: Protocol,
    pub cluster_ips: Vec<IpAddr>,
    pub port: u16,
    pub node_port: Option<u16>,
    /// externalIPs and LoadBalancer ingress IPs: treated as external traffic.
    pub external_ips: Vec<IpAddr>,
    pub affinity_timeout: Option<u32>,
    pub external_local: bool,
    pub internal_local: bool,
    /// All endpoints of this port seen in the slices (deduplicated by ip:port).
    pub endpoints: Vec<Endpoint>,
    /// Which topology hints cluster traffic follows on this node (computed from
    /// the endpoints and the node's name and zone).
    pub topology: Topology,
}

/// kube-proxy's topology modes for cluster-wide traffic: when every ready
/// endpoint carries hints and one of them names this node (or its zone), only
/// the endpoints hinted for it are used; otherwise every endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Topology {
    #[default]
    All,
    SameNode(String),
    SameZone(String),
}

impl Topology {
    /// kube-proxy's `topologyModeFromHints`: node hints (trafficDistribution
    /// PreferSameNode) first, then zone hints; hints are ignored unless every
    /// ready endpoint has them and one matches.
    pub fn from_hints(endpoints: &[Endpoint], node: &NodeInfo) -> Topology {
        let ready: Vec<&Endpoint> = endpoints.iter().filter(|e| e.ready).collect();
        if ready.is_empty() {
            return Topology::All;
        }
        if ready.iter().all(|e| !e.for_nodes.is_empty())
            && ready.iter().any(|e| e.for_nodes.contains(&node.name))
        {
            return Topology::SameNode(node.name.clone());
        }
        if let Some(zone) = &node.zone
            && ready.iter().all(|e| !e.for_zones.is_empty())
            && ready.iter().any(|e| e.for_zones.contains(zone))
        {
            return Topology::SameZone(zone.clone());
        }
        Topology::All
    }

    fn admits(&self, e: &Endpoint) -> bool {
        match self {
            Topology::All => true,
            Topology::SameNode(n) => e.for_nodes.contains(n),
            Topology::SameZone(z) => e.for_zones.contains(z),
        }
    }
}

impl ServicePortRule {
    /// A stable, readable identifier used in chain and set names.
    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.namespace,
            self.name,
            self.protocol.nft(),
            if self.port_name.is_empty() {
                "_"
            } else {
                &self.port_name
            }
        )
    }

    /// Endpoints that traffic may go to, applying kube-proxy's fallback:
    /// ready endpoints; if none, serving-and-terminating ones. Cluster-wide
    /// views (`only_local` false) follow the topology hints.
    pub fn usable(&self, only_local: bool) -> Vec<&Endpoint> {
        let pool: Vec<&Endpoint> = self
            .endpoints
            .iter()
            .filter(|e| {
                if only_local {
                    e.local
                } else {
                    self.topology.admits(e)
                }
            })
            .collect();
        let ready: Vec<&Endpoint> = pool.iter().copied().filter(|e| e.ready).collect();
        if !ready.is_empty() {
            return ready;
        }
        pool.into_iter()
            .filter(|e| e.serving && e.terminating)
            .collect()
    }

    pub fn cluster_endpoints(&self) -> Vec<&Endpoint> {
        self.usable(self.internal_local)
    }

    pub fn external_endpoints(&self) -> Vec<&Endpoint> {
        self.usable(self.external_local)
    }

    pub fn has_external(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty()
    }
}

/// Why an object was skipped (logged, never fatal: one bad object must not block
/// the rules of every other Service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub object: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub ports: Vec<ServicePortRule>,
    pub skipped: Vec<Skipped>,
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

/// Build the desired rule set. Output order is sorted so the same input always
/// renders the same text (the syncer skips identical transactions).
pub fn build<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &NodeInfo,
) -> RuleSet {
    let by_service = slices_by_service(slices);
    let mut out = RuleSet::default();
    for svc in services {
        let key = (
            svc.metadata.namespace.as_deref().unwrap_or_default(),
            svc.metadata.name.as_deref().unwrap_or_default(),
        );
        let mine = by_service.get(&key).map(Vec::as_slice).unwrap_or_default();
        build_service(svc, mine, node, &mut out);
    }
    out.ports.sort_by_cached_key(ServicePortRule::id);
    out
}

/// (namespace, Service name) → the slices that name it.
pub fn slices_by_service<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>> {
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        if let Some(key) = slice_service(s) {
            by_service.entry(key).or_default().push(s);
        }
    }
    by_service
}

/// The (namespace, Service name) an EndpointSlice belongs to, from its label.
pub fn slice_service(s: &EndpointSlice) -> Option<(&str, &str)> {
    let ns = s.metadata.namespace.as_deref().unwrap_or_default();
    let svc = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((ns, svc.as_str()))
}

/// One Service's ports (unsorted) and skipped fields, given its slices.
pub fn build_service(svc: &Service, slices: &[&EndpointSlice], node: &NodeInfo, out: &mut RuleSet) {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let object = format!("service {ns}/{name}");
    let Some(spec) = &svc.spec else { return };
    if spec.type_.as_deref() == Some("ExternalName") {
        return;
    }
    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    let raw_ips = spec
        .cluster_ips
        .clone()
        .filter(|v| !v.is_empty())
        .or_else(|| spec.cluster_ip.clone().map(|i| vec![i]))
        .unwrap_or_default();
    for raw in &raw_ips {
        if raw == "None" || raw.is_empty() {
            continue;
        }
        match parse_ip(raw) {
            Some(ip) => cluster_ips.push(ip),
            None => out.skipped.push(Skipped {
                object: object.clone(),
                reason: format!("spec.clusterIPs: {raw:?} is not an IP address"),
            }),
        }
    }
    // Headless Services get no proxy rules (DNS serves them).
    if cluster_ips.is_empty() {
        return;
    }
    let mut external_ips: Vec<IpAddr> = Vec::new();
    for (i, raw) in spec.external_ips.iter().flatten().enumerate() {
        match parse_ip(raw) {
            Some(ip) => external_ips.push(ip),
            None => out.skipped.push(Skipped {
                object: object.clone(),
                reason: format!("spec.externalIPs[{i}]: {raw:?} is not an IP address"),
            }),
        }
    }
    if spec.type_.as_deref() == Some("LoadBalancer") {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref());
        for ing in ingress.into_iter().flatten() {
            if let Some(ip) = ing.ip.as_deref().and_then(parse_ip)
                && !external_ips.contains(&ip)
                && !node.addresses.contains(&ip)
            {
                external_ips.push(ip);
            }
        }
    }
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .map_or(10800, |t| t.clamp(1, 86400) as u32)
    });
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");

    for (pi, sp) in spec.ports.iter().flatten().enumerate() {
        let Some(protocol) = Protocol::parse(sp.protocol.as_deref()) else {
            out.skipped.push(Skipped {
                object: object.clone(),
                reason: format!("spec.ports[{pi}].protocol: unsupported {:?}", sp.protocol),
            });
            continue;
        };
        let Ok(port) = u16::try_from(sp.port) else {
            out.skipped.push(Skipped {
                object: object.clone(),
                reason: format!("spec.ports[{pi}].port: {} out of range", sp.port),
            });
            continue;
        };
        if port == 0 {
            out.skipped.push(Skipped {
                object: object.clone(),
                reason: format!("spec.ports[{pi}].port: 0 is not a port"),
            });
            continue;
        }
        let node_port = sp
            .node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        let port_name = sp.name.clone().unwrap_or_default();
        let mut endpoints: Vec<Endpoint> = Vec::new();
        for slice in slices {
            // The EndpointSlice controller resolves named targetPorts per pod; the
            // slice port with the service port's name carries the number.
            let slice_port = slice.ports.iter().flatten().find(|p| {
                p.name.as_deref().unwrap_or_default() == port_name
                    && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
            });
            let Some(target) = slice_port
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
            else {
                continue;
            };
            for ep in &slice.endpoints {
                let c = ep.conditions.clone().unwrap_or_default();
                // Unknown readiness means ready (the API's documented default).
                let ready = c.ready.unwrap_or(true);
                let serving = c.serving.unwrap_or(ready);
                let terminating = c.terminating.unwrap_or(false);
                let local = ep.node_name.as_deref() == Some(node.name.as_str());
                let hints = ep.hints.as_ref();
                let for_zones: Vec<String> = hints
                    .and_then(|h| h.for_zones.as_ref())
                    .map(|z| z.iter().map(|z| z.name.clone()).collect())
                    .unwrap_or_default();
                let for_nodes: Vec<String> = hints
                    .and_then(|h| h.for_nodes.as_ref())
                    .map(|n| n.iter().map(|n| n.name.clone()).collect())
                    .unwrap_or_default();
                for a in &ep.addresses {
                    let Some(ip) = parse_ip(a) else { continue };
                    if endpoints.iter().any(|e| e.ip == ip && e.port == target) {
                        continue;
                    }
                    endpoints.push(Endpoint {
                        ip,
                        port: target,
                        ready,
                        serving,
                        terminating,
                        local,
                        for_zones: for_zones.clone(),
                        for_nodes: for_nodes.clone(),
                    });
                }
            }
        }
        endpoints.sort();
        let topology = Topology::from_hints(&endpoints, node);
        out.ports.push(ServicePortRule {
            namespace: ns.clone(),
            name: name.clone(),
            port_name,
            protocol,
            cluster_ips: cluster_ips.clone(),
            port,
            node_port: if matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")) {
                node_port
            } else {
                None
            },
            external_ips: external_ips.clone(),
            affinity_timeout,
            external_local,
            internal_local,
            endpoints,
            topology,
        });
    }
}
