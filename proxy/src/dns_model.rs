//! The cluster DNS data: Services, EndpointSlices and Pods → the answers for names
//! under the cluster zone and for reverse (PTR) names, following the Kubernetes DNS
//! specification (kubernetes/dns `docs/specification.md`), as CoreDNS serves it.
//!
//! Pure: lookups return typed answers; `dns_server` turns them into packets.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::{Pod, Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QType {
    A,
    Aaaa,
    Srv,
    Ptr,
    Cname,
    Any,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecData {
    Addr(IpAddr),
    Cname(String),
    Srv { port: u16, target: String },
    Ptr(String),
}

/// One answer record; `name` is fully qualified without the trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub name: String,
    pub data: RecData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Records(Vec<Rec>),
    /// The name exists but has no records of the asked type (NOERROR, empty).
    NoData,
    NxDomain,
    /// Not a cluster name: forward upstream.
    NotOurs,
}

#[derive(Debug, Clone, Default)]
struct SvcDns {
    cluster_ips: Vec<IpAddr>,
    external_name: Option<String>,
    /// (port name, lowercase protocol, port)
    ports: Vec<(String, String, u16)>,
    /// Ready endpoints: (ip, hostname)
    endpoints: Vec<(IpAddr, Option<String>)>,
}

/// (namespace, name) of a Service or a Pod.
pub type ObjKey = (String, String);

/// PTR names, by the object that claims them (an address claimed twice keeps a
/// name until its last claimant goes).
type Ptrs = BTreeMap<IpAddr, BTreeMap<ObjKey, String>>;

/// The answers, kept per object: a changed Service (with its slices) or Pod
/// replaces only its own part, so a change costs the same at 10 000 Services
/// as at ten.
#[derive(Debug, Clone, Default)]
pub struct DnsModel {
    zone: String,
    services: BTreeMap<ObjKey, SvcDns>,
    /// Namespaces with Services, and how many (an existing namespace is an
    /// empty non-terminal name: NODATA rather than NXDOMAIN).
    namespaces: BTreeMap<String, usize>,
    /// PTR names of Service addresses and headless endpoints; they win over…
    svc_ptr: Ptrs,
    /// …the `a-b-c-d.<ns>.pod` names of pod IPs.
    pod_ptr: Ptrs,
    /// The addresses each Service / Pod put in the PTR maps, to take them out.
    svc_ptr_of: HashMap<ObjKey, Vec<IpAddr>>,
    pod_ptr_of: HashMap<ObjKey, Vec<IpAddr>>,
}

fn dashed(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v) => v.to_string().replace('.', "-"),
        IpAddr::V6(v) => v.to_string().replace(':', "-"),
    }
}

fn key_of(m: &ObjectMeta) -> Option<ObjKey> {
    Some((m.namespace.clone()?, m.name.clone()?))
}

fn set_ptrs(
    ptrs: &mut Ptrs,
    of: &mut HashMap<ObjKey, Vec<IpAddr>>,
    key: &ObjKey,
    new: Vec<(IpAddr, String)>,
) {
    for ip in of.remove(key).unwrap_or_default() {
        if let Some(m) = ptrs.get_mut(&ip) {
            m.remove(key);
            if m.is_empty() {
                ptrs.remove(&ip);
            }
        }
    }
    if new.is_empty() {
        return;
    }
    let ips = new.iter().map(|(ip, _)| *ip).collect();
    for (ip, name) in new {
        ptrs.entry(ip).or_default().insert(key.clone(), name);
    }
    of.insert(key.clone(), ips);
}

impl DnsModel {
    pub fn new(zone: &str) -> Self {
        DnsModel {
            zone: zone.trim_end_matches('.').to_ascii_lowercase(),
            ..Default::default()
        }
    }

    pub fn build<'a>(
        zone: &str,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> Self {
        let mut m = DnsModel::new(zone);
        let by_service = crate::model::slices_by_service(slices);
        for svc in services {
            let Some(key) = key_of(&svc.metadata) else {
                continue;
            };
            let mine = by_service
                .get(&(key.0.as_str(), key.1.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            m.set_service(&key, Some(svc), mine);
        }
        for p in pods {
            if let Some(key) = key_of(&p.metadata) {
                m.set_pod(&key, Some(p));
            }
        }
        m
    }

    /// Replace what Service `key` answers (`svc` None: it is gone), given the
    /// EndpointSlices that name it.
    pub fn set_service(&mut self, key: &ObjKey, svc: Option<&Service>, slices: &[&EndpointSlice]) {
        let (ns, name) = key;
        let built = svc.and_then(|s| s.spec.as_ref()).map(|spec| {
            let mut ptrs = Vec::new();
            let d = svc_dns(&self.zone, ns, name, spec, slices, &mut ptrs);
            (d, ptrs)
        });
        let (d, ptrs) = match built {
            Some((d, p)) => (Some(d), p),
            None => (None, Vec::new()),
        };
        set_ptrs(&mut self.svc_ptr, &mut self.svc_ptr_of, key, ptrs);
        let had = match d {
            Some(d) => self.services.insert(key.clone(), d).is_some(),
            None => self.services.remove(key).is_some(),
        };
        let has = self.services.contains_key(key);
        if has && !had {
            *self.namespaces.entry(ns.clone()).or_default() += 1;
        } else if had
            && !has
            && let Some(c) = self.namespaces.get_mut(ns)
        {
            *c -= 1;
            if *c == 0 {
                self.namespaces.remove(ns);
            }
        }
    }

    /// Replace the PTR names of Pod `key` (`pod` None: it is gone).
    pub fn set_pod(&mut self, key: &ObjKey, pod: Option<&Pod>) {
        let zone = &self.zone;
        let ptrs: Vec<(IpAddr, String)> = pod
            .into_iter()
            .flat_map(|p| p.status.iter().flat_map(|s| s.pod_ips.iter().flatten()))
            .filter_map(|i| i.ip.parse::<IpAddr>().ok())
            .map(|ip| (ip, format!("{}.{}.pod.{zone}", dashed(&ip), key.0)))
            .collect();
        set_ptrs(&mut self.pod_ptr, &mut self.pod_ptr_of, key, ptrs);
    }

    fn ptr(&self, ip: &IpAddr) -> Option<&String> {
        self.svc_ptr
            .get(ip)
            .or_else(|| self.pod_ptr.get(ip))
            .and_then(|m| m.values().next())
    }

    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// Answer `qname` (any case, trailing dot optional).
    pub fn lookup(&self, qname: &str, qtype: QType) -> Lookup {
        self.lookup_chasing(qname, qtype, 0)
    }

    /// An ExternalName's CNAME is followed while its target is in the zone (as
    /// CoreDNS does): stub resolvers (glibc, musl, busybox) do not chase a CNAME
    /// themselves, so `wget http://ext/` would fail with the CNAME alone. Chains
    /// end after a few links, so a loop of ExternalNames cannot recurse forever.
    fn lookup_chasing(&self, qname: &str, qtype: QType, depth: usize) -> Lookup {
        const MAX_CHAIN: usize = 8;
        let l = self.lookup_one(qname, qtype);
        let Lookup::Records(mut recs) = l else {
            return l;
        };
        if depth < MAX_CHAIN
            && matches!(qtype, QType::A | QType::Aaaa | QType::Any)
            && let Some(Rec {
                data: RecData::Cname(target),
                ..
            }) = recs.last()
            && let Lookup::Records(more) = self.lookup_chasing(&target.clone(), qtype, depth + 1)
        {
            recs.extend(more);
        }
        Lookup::Records(recs)
    }

    fn lookup_one(&self, qname: &str, qtype: QType) -> Lookup {
        let name = qname.trim_end_matches('.').to_ascii_lowercase();
        if let Some(ip) = parse_reverse(&name) {
            return match self.ptr(&ip) {
                Some(target) if matches!(qtype, QType::Ptr | QType::Any) => {
                    Lookup::Records(vec![Rec {
                        name,
                        data: RecData::Ptr(target.clone()),
                    }])
                }
                Some(_) => Lookup::NoData,
                None => Lookup::NotOurs,
            };
        }
        let rel = if name == self.zone {
            ""
        } else if let Some(r) = name.strip_suffix(&format!(".{}", self.zone)) {
            r
        } else {
            return Lookup::NotOurs;
        };
        let labels: Vec<&str> = if rel.is_empty() {
            vec![]
        } else {
            rel.split('.').collect()
        };
        let addr = |ips: &mut dyn Iterator<Item = IpAddr>| -> Vec<Rec> {
            ips.filter(|ip| match qtype {
                QType::A => ip.is_ipv4(),
                QType::Aaaa => ip.is_ipv6(),
                QType::Any => true,
                _ => false,
            })
            .map(|ip| Rec {
                name: name.clone(),
                data: RecData::Addr(ip),
            })
            .collect()
        };
        let records = |recs: Vec<Rec>| {
            if recs.is_empty() {
                Lookup::NoData
            } else {
                Lookup::Records(recs)
            }
        };
        match labels.as_slice() {
            [] | ["svc"] | ["pod"] => Lookup::NoData,
            [ns, "svc"] | [ns, "pod"] => {
                if self.namespaces.contains_key(*ns) {
                    Lookup::NoData
                } else {
                    Lookup::NxDomain
                }
            }
            [svc, ns, "svc"] => {
                let Some(d) = self.services.get(&(ns.to_string(), svc.to_string())) else {
                    return Lookup::NxDomain;
                };
                if let Some(target) = &d.external_name {
                    return Lookup::Records(vec![Rec {
                        name,
                        data: RecData::Cname(target.clone()),
                    }]);
                }
                if d.cluster_ips.is_empty() {
                    records(addr(&mut d.endpoints.iter().map(|(ip, _)| *ip)))
                } else {
                    records(addr(&mut d.cluster_ips.iter().copied()))
                }
            }
            [host, svc, ns, "svc"] if !host.starts_with('_') => {
                let Some(d) = self.services.get(&(ns.to_string(), svc.to_string())) else {
                    return Lookup::NxDomain;
                };
                let ips: Vec<IpAddr> = d
                    .endpoints
                    .iter()
                    .filter(|(ip, h)| {
                        h.as_deref() == Some(*host) || (h.is_none() && dashed(ip) == *host)
                    })
                    .map(|(ip, _)| *ip)
                    .collect();
                if ips.is_empty() {
                    Lookup::NxDomain
                } else {
                    records(addr(&mut ips.into_iter()))
                }
            }
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                let Some(d) = self.services.get(&(ns.to_string(), svc.to_string())) else {
                    return Lookup::NxDomain;
                };
                let Some((_, _, pnum)) = d
                    .ports
                    .iter()
                    .find(|(pn, pr, _)| pn == &port[1..] && pr == &proto[1..])
                else {
                    return Lookup::NxDomain;
                };
                if !matches!(qtype, QType::Srv | QType::Any) {
                    return Lookup::NoData;
                }
                let base = format!("{svc}.{ns}.svc.{}", self.zone);
                let targets: Vec<String> = if d.cluster_ips.is_empty() {
                    d.endpoints
                        .iter()
                        .map(|(ip, h)| {
                            format!("{}.{base}", h.clone().unwrap_or_else(|| dashed(ip)))
                        })
                        .collect()
                } else {
                    vec![base]
                };
                records(
                    targets
                        .into_iter()
                        .map(|target| Rec {
                            name: name.clone(),
                            data: RecData::Srv {
                                port: *pnum,
                                target,
                            },
                        })
                        .collect(),
                )
            }
            [ip, _ns, "pod"] => match undash(ip) {
                Some(ip) => records(addr(&mut std::iter::once(ip))),
                None => Lookup::NxDomain,
            },
            _ => Lookup::NxDomain,
        }
    }
}

/// One Service's answers from its spec and slices; its PTR names go to `ptrs`.
fn svc_dns(
    zone: &str,
    ns: &str,
    name: &str,
    spec: &ServiceSpec,
    slices: &[&EndpointSlice],
    ptrs: &mut Vec<(IpAddr, String)>,
) -> SvcDns {
    let mut d = SvcDns::default();
    if spec.type_.as_deref() == Some("ExternalName") {
        d.external_name = spec
            .external_name
            .clone()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
    }
    let ips = spec
        .cluster_ips
        .clone()
        .filter(|v| !v.is_empty())
        .or_else(|| spec.cluster_ip.clone().map(|i| vec![i]));
    d.cluster_ips = ips
        .into_iter()
        .flatten()
        .filter_map(|s| s.parse().ok())
        .collect();
    let port_of = |name: &Option<String>, proto: &Option<String>, port: Option<u16>| {
        Some((
            name.clone()?,
            proto
                .clone()
                .unwrap_or_else(|| "TCP".into())
                .to_ascii_lowercase(),
            port?,
        ))
    };
    for p in spec.ports.iter().flatten() {
        d.ports
            .extend(port_of(&p.name, &p.protocol, u16::try_from(p.port).ok()));
    }
    for ip in &d.cluster_ips {
        ptrs.push((*ip, format!("{name}.{ns}.svc.{zone}")));
    }
    let headless = d.cluster_ips.is_empty();
    for s in slices {
        if headless && d.ports.is_empty() {
            // Headless Services take their SRV ports from the slices.
            for p in s.ports.iter().flatten() {
                let port = p.port.and_then(|p| u16::try_from(p).ok());
                d.ports.extend(port_of(&p.name, &p.protocol, port));
            }
        }
        for ep in &s.endpoints {
            if !ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true) {
                continue;
            }
            for a in &ep.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                let host = ep.hostname.clone().map(|h| h.to_ascii_lowercase());
                if headless {
                    let label = host.clone().unwrap_or_else(|| dashed(&ip));
                    ptrs.push((ip, format!("{label}.{name}.{ns}.svc.{zone}")));
                }
                if !d.endpoints.iter().any(|(i, _)| *i == ip) {
                    d.endpoints.push((ip, host));
                }
            }
        }
    }
    d
}

fn undash(s: &str) -> Option<IpAddr> {
    s.replace('-', ".")
        .parse::<Ipv4Addr>()
        .map(IpAddr::V4)
        .ok()
        .or_else(|| s.replace('-', ":").parse::<Ipv6Addr>().map(IpAddr::V6).ok())
}

/// `4.3.2.1.in-addr.arpa` → 1.2.3.4; 32-nibble `ip6.arpa` names → the IPv6 address.
pub fn parse_reverse(name: &str) -> Option<IpAddr> {
    if let Some(r) = name.strip_suffix(".in-addr.arpa") {
        let mut o: Vec<u8> = r
            .split('.')
            .map(|p| p.parse().ok())
            .collect::<Option<_>>()?;
        if o.len() != 4 {
            return None;
        }
        o.reverse();
        return Some(IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3])));
    }
    let r = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<u8> = r
        .split('.')
        .map(|p| {
            if p.len() == 1 {
                u8::from_str_radix(p, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()?;
    if nibbles.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, pair) in nibbles
        .iter()
        .rev()
        .collect::<Vec<_>>()
        .chunks(2)
        .enumerate()
    {
        bytes[i] = (pair[0] << 4) | pair[1];
    }
    Some(IpAddr::V6(Ipv6Addr::from(bytes)))
}
