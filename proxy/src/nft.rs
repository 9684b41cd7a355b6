//! nftables text for each service port: its [`Fragment`] (its chains, affinity sets
//! and verdict-map elements). `table.rs` renders a whole table around them; `state.rs`
//! puts fragments together into full or incremental transactions.
//!
//! Shape (after kube-proxy's nftables mode): lookups go through verdict maps keyed
//! by `daddr . l4proto . dport` (ClusterIPs, externalIPs) and `l4proto . dport`
//! (NodePorts on local addresses), so the first-packet cost does not grow with the
//! number of Services. A Service port's verdict goes to a [`Pick`] chain shared by
//! every port with the same number of endpoints, whose random draw k goes to the
//! shared [`Slot`] chain k, which DNATs through a lookup of the Service key in the
//! slot's endpoint map: a Service is map elements, not rules. Ports with session affinity or externalTrafficPolicy Local have
//! chains of their own (a `numgen … vmap` to one chain per endpoint, which records
//! the client in a timeout set; or a cascade of `numgen` rules).

use std::fmt::Write as _;
use std::net::IpAddr;

pub use crate::element::{Dest, Key, REJECT_CHAIN, Verdict};
use crate::model::{Endpoint, NodeInfo, RuleSet, ServicePortRule};
pub use crate::pick::{Pick, PickKind, Slot, slots};
pub use crate::state::State;
pub use crate::table::{Elements, Part, TableParts, hook_chains, render_hooks, render_table};

/// hull's table name in both the `ip` and `ip6` families.
pub const TABLE: &str = "hull-proxy";
/// The packet-mark bit that asks the postrouting chain to masquerade.
pub const MASQ_MARK: u32 = 0x4000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn table_family(self) -> &'static str {
        match self {
            Self::V4 => "ip",
            Self::V6 => "ip6",
        }
    }
    pub(crate) fn addr_type(self) -> &'static str {
        match self {
            Self::V4 => "ipv4_addr",
            Self::V6 => "ipv6_addr",
        }
    }
    fn has(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (Self::V4, IpAddr::V4(_)) | (Self::V6, IpAddr::V6(_))
        )
    }
    pub(crate) fn loopback(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.0/8",
            Self::V6 => "::1",
        }
    }
}

/// The text that removes everything the proxy ever wrote (`--cleanup`).
pub fn render_cleanup() -> String {
    let mut s = String::new();
    for f in [Family::V4, Family::V6] {
        let t = f.table_family();
        for table in crate::fullsync::TABLES {
            let _ = writeln!(s, "add table {t} {table}\ndelete table {t} {table}");
        }
    }
    s
}

/// The full transaction for a rule set.
pub fn render(rs: &RuleSet, node: &NodeInfo) -> String {
    State::build(&rs.ports, node, None).render_full()
}

/// The verdict maps every table has, in declaration order: the lookups of the
/// `services` and `*-endpoints-check` chains.
pub const MAPS: [&str; 4] = [
    "service-ips",
    "service-nodeports",
    "no-endpoint-services",
    "no-endpoint-nodeports",
];

pub(crate) fn map_type(i: usize, f: Family) -> String {
    match i {
        0 | 2 => format!(
            "type {} . inet_proto . inet_service : verdict",
            f.addr_type()
        ),
        _ => "type inet_proto . inet_service : verdict".to_string(),
    }
}

/// The set of (address . address) pairs that marks hairpin traffic: after DNAT,
/// a packet whose source is its destination is a pod that reached itself through
/// a Service, and must be masqueraded or it would answer itself directly.
pub const HAIRPIN: &str = "hairpin";

/// One service port's share of one family's table: its chains, its affinity
/// sets, its elements of the shared maps, the pick chains it uses and its
/// endpoint addresses (for the hairpin set). Chains and sets belong to exactly one
/// fragment (their names carry the port's id) and refer only to each other and to
/// the fixed and pick chains, so fragments change independently.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    /// Chains: name → rules.
    pub chains: Vec<(String, Vec<String>)>,
    /// Affinity sets: name → declaration body. A set's name carries everything in
    /// its declaration, so a set is only ever added or deleted, never changed.
    pub sets: Vec<(String, String)>,
    /// Elements of each map in [`MAPS`]: (key, verdict).
    pub maps: [Vec<(Key, Verdict)>; 4],
    /// Elements of the endpoint slot maps: (slot, key, endpoint).
    pub endpoints: Vec<(Slot, Key, Dest)>,
    /// The shared pick chains its verdicts go to.
    pub picks: Vec<Pick>,
    /// Its endpoints' addresses (deduplicated).
    pub hairpin: Vec<IpAddr>,
}

fn ep_chain(r: &ServicePortRule, e: &Endpoint) -> String {
    format!(
        "ep-{}/{}/{}",
        r.id(),
        e.ip.to_string().replace(':', "."),
        e.port
    )
}

/// The timeout is part of the name, so a changed timeout is a new set (sets are
/// only ever added or deleted by an incremental sync).
fn aff_set(r: &ServicePortRule, e: &Endpoint, timeout: u32) -> String {
    format!(
        "aff-{}/{}/{}/{timeout}s",
        r.id(),
        e.ip.to_string().replace(':', "."),
        e.port
    )
}

fn dnat_target(e: &Endpoint) -> String {
    match e.ip {
        IpAddr::V4(ip) => format!("{ip}:{}", e.port),
        IpAddr::V6(ip) => format!("[{ip}]:{}", e.port),
    }
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `x` for one item, `{ x, y }` for more: a one-element anonymous set would still
/// be a set object in the kernel, and those are costly by the thousand.
pub(crate) fn one_or_set<T: ToString>(items: &[T]) -> String {
    if items.len() == 1 {
        items[0].to_string()
    } else {
        format!("{{ {} }}", join(items))
    }
}

/// Where traffic for one view (cluster / external) of a service port goes.
enum Target {
    Chain(String),
    Reject,
    Drop,
}

impl Target {
    fn verdict(&self) -> Verdict {
        match self {
            Target::Chain(c) => Verdict::Chain(c.clone()),
            Target::Reject => Verdict::reject(),
            Target::Drop => Verdict::Drop,
        }
    }
}

/// The pod CIDRs of family `f`, as nft writes them.
pub fn pod_cidrs(node: &NodeInfo, f: Family) -> Vec<String> {
    node.pod_cidrs
        .iter()
        .filter(|(ip, _)| f.has(ip))
        .map(|(ip, p)| format!("{ip}/{p}"))
        .collect()
}

/// Elements `key : endpoint k` of the slot maps `k`.
fn endpoint_elems(out: &mut Vec<(Slot, Key, Dest)>, nodeport: bool, key: Key, eps: &[Endpoint]) {
    for (k, e) in eps.iter().enumerate() {
        let dest = Dest {
            addr: e.ip,
            port: e.port,
        };
        out.push((Slot { nodeport, k }, key, dest));
    }
}

/// The fragment of one service port in family `f` (empty when the port has no
/// ClusterIP of that family).
pub fn fragment(r: &ServicePortRule, pod_cidrs: &[String], f: Family) -> Fragment {
    let mut st = Fragment::default();
    let cips: Vec<IpAddr> = r
        .cluster_ips
        .iter()
        .copied()
        .filter(|ip| f.has(ip))
        .collect();
    if cips.is_empty() {
        return st;
    }
    let fam_eps = |eps: Vec<&Endpoint>| -> Vec<Endpoint> {
        eps.into_iter().filter(|e| f.has(&e.ip)).cloned().collect()
    };
    let all = fam_eps(r.usable(false));
    let local = fam_eps(r.usable(true));
    for e in all.iter().chain(&local) {
        if !st.hairpin.contains(&e.ip) {
            st.hairpin.push(e.ip);
        }
    }
    st.hairpin.sort();
    if r.affinity_timeout.is_some() || r.external_local {
        chained(&mut st, r, &cips, &all, &local, pod_cidrs, f);
    } else {
        shared(&mut st, r, &cips, &all, &local, f);
    }
    st
}

/// The common case (no session affinity, externalTrafficPolicy Cluster): no
/// chain of its own, only map elements pointing at the shared pick chains.
fn shared(
    st: &mut Fragment,
    r: &ServicePortRule,
    cips: &[IpAddr],
    all: &[Endpoint],
    local: &[Endpoint],
    f: Family,
) {
    let proto = r.protocol;
    let key = |addr: Option<IpAddr>| Key {
        addr,
        proto,
        port: r.port,
    };
    let cluster = if r.internal_local { local } else { all };
    let cluster_verdict = match (all.is_empty(), cluster.is_empty()) {
        (true, _) => Err(Target::Reject),
        (false, true) => Err(Target::Drop),
        (false, false) => {
            let p = Pick {
                kind: PickKind::Cluster,
                n: cluster.len(),
            };
            st.picks.push(p);
            Ok(Verdict::Pick(p))
        }
    };
    for ip in cips {
        let key = key(Some(*ip));
        match &cluster_verdict {
            Ok(v) => {
                endpoint_elems(&mut st.endpoints, false, key, cluster);
                st.maps[0].push((key, v.clone()));
            }
            Err(t) => st.maps[2].push((key, t.verdict())),
        }
    }
    if !r.has_external() {
        return;
    }
    let n = all.len();
    for ip in r.external_ips.iter().filter(|ip| f.has(ip)) {
        let key = key(Some(*ip));
        if n == 0 {
            st.maps[2].push((key, Target::Reject.verdict()));
            continue;
        }
        let p = Pick {
            kind: PickKind::External,
            n,
        };
        if !st.picks.contains(&p) {
            st.picks.push(p);
        }
        endpoint_elems(&mut st.endpoints, false, key, all);
        st.maps[0].push((key, Verdict::Pick(p)));
    }
    if let Some(np) = r.node_port {
        let key = Key {
            addr: None,
            proto,
            port: np,
        };
        if n == 0 {
            st.maps[3].push((key, Target::Reject.verdict()));
            return;
        }
        let p = Pick {
            kind: PickKind::NodePort,
            n,
        };
        st.picks.push(p);
        endpoint_elems(&mut st.endpoints, true, key, all);
        st.maps[1].push((key, Verdict::Pick(p)));
    }
}

/// Session affinity (per-endpoint state) or externalTrafficPolicy Local (one key
/// leads to different endpoints depending on the client): chains of the port's
/// own, a `svc-` chain per view and, with affinity, one per endpoint.
fn chained(
    st: &mut Fragment,
    r: &ServicePortRule,
    cips: &[IpAddr],
    all: &[Endpoint],
    local: &[Endpoint],
    pod_cidrs: &[String],
    f: Family,
) {
    let a = f.table_family(); // the address match keyword: `ip saddr` / `ip6 saddr`
    let ty = f.addr_type();
    let [service_ips, nodeports, noep_ips, noep_nodeports] = &mut st.maps;
    let chains = &mut st.chains;
    let sets = &mut st.sets;
    let id = r.id();
    let proto = r.protocol.nft();
    let need_local = r.internal_local || r.external_local;

    let masq_rule = (!pod_cidrs.is_empty()).then(|| {
        format!(
            "{a} daddr {} {a} saddr != {} jump mark-for-masquerade",
            one_or_set(cips),
            one_or_set(pod_cidrs)
        )
    });
    let lb_chain = |eps: &[Endpoint]| -> Vec<String> {
        let mut rules: Vec<String> = masq_rule.iter().cloned().collect();
        if let Some(timeout) = r.affinity_timeout {
            for e in eps {
                rules.push(format!(
                    "{a} saddr @{} goto {}",
                    aff_set(r, e, timeout),
                    ep_chain(r, e)
                ));
            }
            let arms: Vec<String> = eps
                .iter()
                .enumerate()
                .map(|(i, e)| format!("{i} : goto {}", ep_chain(r, e)))
                .collect();
            rules.push(format!(
                "numgen random mod {} vmap {{ {} }}",
                eps.len(),
                arms.join(", ")
            ));
            return rules;
        }
        // Without per-endpoint state no per-endpoint chains: a cascade like
        // kube-proxy's iptables `statistic` rules, where rule k matches with
        // probability 1/(N-k), picks uniformly (only externalTrafficPolicy Local
        // Services come here, so a map per chain is not worth its cost).
        let n = eps.len();
        for (k, e) in eps.iter().enumerate() {
            let pick = if k + 1 < n {
                format!("numgen random mod {} 0 ", n - k)
            } else {
                String::new()
            };
            rules.push(format!(
                "{pick}meta l4proto {proto} dnat to {}",
                dnat_target(e)
            ));
        }
        rules
    };
    let svc = format!("svc-{id}");
    let loc = format!("local-{id}");
    if !all.is_empty() {
        chains.push((svc.clone(), lb_chain(all)));
    }
    if need_local && !local.is_empty() {
        chains.push((loc.clone(), lb_chain(local)));
    }
    // Endpoint chains (only with session affinity, which needs per-endpoint
    // state): every endpoint reachable from either view.
    if let Some(timeout) = r.affinity_timeout {
        for e in all.iter().chain(local.iter()) {
            let name = ep_chain(r, e);
            if chains.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let set = aff_set(r, e, timeout);
            sets.push((
                set.clone(),
                format!("type {ty}; flags dynamic,timeout; timeout {timeout}s;"),
            ));
            chains.push((
                name,
                vec![
                    format!("update @{set} {{ {a} saddr }}"),
                    format!("meta l4proto {proto} dnat to {}", dnat_target(e)),
                ],
            ));
        }
    }

    let cluster_target = match (r.internal_local, all.is_empty(), local.is_empty()) {
        (_, true, _) => Target::Reject,
        (true, false, true) => Target::Drop,
        (true, false, false) => Target::Chain(loc.clone()),
        (false, false, _) => Target::Chain(svc.clone()),
    };
    let key = |addr: Option<IpAddr>, port: u16| Key {
        addr,
        proto: r.protocol,
        port,
    };
    for ip in cips {
        let key = key(Some(*ip), r.port);
        match &cluster_target {
            Target::Chain(_) => service_ips.push((key, cluster_target.verdict())),
            _ => noep_ips.push((key, cluster_target.verdict())),
        };
    }

    if !r.has_external() {
        return;
    }
    let ext_ok = if r.external_local {
        !local.is_empty()
    } else {
        !all.is_empty()
    };
    let ext_target = if all.is_empty() {
        Target::Reject
    } else if !ext_ok {
        Target::Drop
    } else {
        let ext = format!("ext-{id}");
        let mut rules = Vec::new();
        if r.external_local {
            // Pods and the node itself may still use every endpoint (kube-proxy
            // does the same); only traffic from outside is kept on this node,
            // unmasqueraded, so the client address is preserved.
            if !pod_cidrs.is_empty() {
                rules.push(format!("{a} saddr {} goto {svc}", one_or_set(pod_cidrs)));
            }
            rules.push("fib saddr type local jump mark-for-masquerade".into());
            rules.push(format!("fib saddr type local goto {svc}"));
            rules.push(format!("goto {loc}"));
        } else {
            rules.push("jump mark-for-masquerade".into());
            rules.push(format!("goto {svc}"));
        }
        chains.push((ext.clone(), rules));
        Target::Chain(ext)
    };
    let (ips_map, np_map) = match ext_target {
        Target::Chain(_) => (&mut *service_ips, &mut *nodeports),
        _ => (&mut *noep_ips, &mut *noep_nodeports),
    };
    for ip in r.external_ips.iter().filter(|ip| f.has(ip)) {
        ips_map.push((key(Some(*ip), r.port), ext_target.verdict()));
    }
    if let Some(np) = r.node_port {
        np_map.push((key(None, np), ext_target.verdict()));
    }
}
