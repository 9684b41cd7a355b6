//! Render a [`RuleSet`] as `nft -f` transactions.
//!
//! [`State::build`] turns a rule set into what hull's tables should hold (chains
//! with their rules, affinity sets, verdict-map elements). From it come two kinds
//! of transaction, each applied atomically by `nft -f` (if any line is wrong,
//! nothing changes and the previous rules stay in force):
//! - [`State::render_full`]: create-then-delete hull's tables (so it works whether
//!   or not they exist) and define them whole; on start, after a failure, and
//!   periodically, so drift is repaired;
//! - [`State::render_diff`]: only what changed since the last applied state
//!   (chains added, replaced or deleted, map elements added or deleted, sets
//!   added or deleted), so a sync costs what changed, not the table's size, and
//!   affinity sets of untouched endpoints keep their clients.
//!
//! Shape (after kube-proxy's nftables mode): lookups go through verdict maps keyed
//! by `daddr . l4proto . dport` (ClusterIPs, externalIPs) and `l4proto . dport`
//! (NodePorts on local addresses), so the first-packet cost does not grow with the
//! number of Services. Each service port has a chain that picks an endpoint with a
//! cascade of `numgen` rules and DNATs; with session affinity, a `numgen … vmap`
//! to one chain per endpoint (which records the client in a timeout set).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::model::{Endpoint, NodeInfo, RuleSet, ServicePortRule};

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
    fn addr_type(self) -> &'static str {
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
    fn loopback(self) -> &'static str {
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
        let _ = writeln!(s, "add table {t} {TABLE}\ndelete table {t} {TABLE}");
    }
    s
}

/// The full transaction for a rule set.
pub fn render(rs: &RuleSet, node: &NodeInfo) -> String {
    State::build(rs, node).render_full()
}

/// The verdict maps every table has, in declaration order.
const MAPS: [&str; 4] = [
    "service-ips",
    "service-nodeports",
    "no-endpoint-services",
    "no-endpoint-nodeports",
];

/// What one family's table holds besides its fixed chains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilyState {
    /// Per-service chains: name → rules.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Affinity sets: name → declaration body. A set's name carries everything in
    /// its declaration, so a set is only ever added or deleted, never changed.
    pub sets: BTreeMap<String, String>,
    /// Elements of each map in [`MAPS`]: key → verdict.
    pub maps: [BTreeMap<String, String>; 4],
}

/// The desired content of both tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The fixed chains depend on the node only (NodePorts on loopback or not).
    localhost_nodeports: bool,
    pod_cidrs: Vec<(IpAddr, u8)>,
    pub v4: FamilyState,
    pub v6: FamilyState,
}

impl State {
    pub fn build(rs: &RuleSet, node: &NodeInfo) -> State {
        State {
            localhost_nodeports: node.localhost_nodeports,
            pod_cidrs: node.pod_cidrs.clone(),
            v4: family_state(rs, node, Family::V4),
            v6: family_state(rs, node, Family::V6),
        }
    }

    fn families(&self) -> [(Family, &FamilyState); 2] {
        [(Family::V4, &self.v4), (Family::V6, &self.v6)]
    }

    /// Both tables, defined whole.
    pub fn render_full(&self) -> String {
        let size: usize = self.families().iter().map(|(_, f)| f.chains.len()).sum();
        let mut s = String::with_capacity(1024 + size * 600);
        for (f, st) in self.families() {
            render_table(&mut s, st, self.localhost_nodeports, f);
        }
        s
    }

    /// The transaction that turns `old` (what the kernel holds) into `self`, or
    /// `None` when nothing changed. Only valid when [`State::same_base`] holds;
    /// otherwise the fixed chains differ and only [`State::render_full`] will do.
    pub fn render_diff(&self, old: &State) -> Option<String> {
        let mut s = String::new();
        for ((f, new), (_, old)) in self.families().into_iter().zip(old.families()) {
            render_family_diff(&mut s, old, new, f);
        }
        (!s.is_empty()).then_some(s)
    }

    /// Whether the fixed part of the tables is the same (else only a full sync
    /// can move from `old` to `self`).
    pub fn same_base(&self, old: &State) -> bool {
        self.localhost_nodeports == old.localhost_nodeports && self.pod_cidrs == old.pod_cidrs
    }

    /// Number of per-service chains in both tables.
    pub fn chain_count(&self) -> usize {
        self.v4.chains.len() + self.v6.chains.len()
    }
}

fn render_family_diff(s: &mut String, old: &FamilyState, new: &FamilyState, f: Family) {
    let t = format!("{} {TABLE}", f.table_family());
    // Order matters inside the transaction: nothing may be deleted while a rule or
    // an element still refers to it, and nothing referred to before it exists.
    // 1. Map elements that go away or change their verdict.
    let mut adds: Vec<(&str, Vec<String>)> = Vec::new();
    for (i, name) in MAPS.iter().enumerate() {
        let (o, n) = (&old.maps[i], &new.maps[i]);
        let gone: Vec<&str> = o
            .iter()
            .filter(|(k, v)| n.get(*k) != Some(*v))
            .map(|(k, _)| k.as_str())
            .collect();
        if !gone.is_empty() {
            let _ = writeln!(s, "delete element {t} {name} {{ {} }}", gone.join(", "));
        }
        let added: Vec<String> = n
            .iter()
            .filter(|(k, v)| o.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k} : {v}"))
            .collect();
        if !added.is_empty() {
            adds.push((name, added));
        }
    }
    // 2. New chains exist, changed and removed chains are emptied (which drops
    //    their references to other chains and sets).
    let mut refill: Vec<&str> = Vec::new();
    for (name, rules) in &new.chains {
        match old.chains.get(name) {
            None => {
                let _ = writeln!(s, "add chain {t} {name}");
                refill.push(name);
            }
            Some(r) if r != rules => {
                let _ = writeln!(s, "flush chain {t} {name}");
                refill.push(name);
            }
            Some(_) => {}
        }
    }
    let removed: Vec<&str> = old
        .chains
        .keys()
        .filter(|k| !new.chains.contains_key(*k))
        .map(String::as_str)
        .collect();
    for name in &removed {
        let _ = writeln!(s, "flush chain {t} {name}");
    }
    // 3. New sets, before the rules that update them.
    for (name, decl) in &new.sets {
        if !old.sets.contains_key(name) {
            let _ = writeln!(s, "add set {t} {name} {{ {decl} }}");
        }
    }
    // 4. The rules of new and changed chains.
    for name in refill {
        for rule in &new.chains[name] {
            let _ = writeln!(s, "add rule {t} {name} {rule}");
        }
    }
    // 5. Chains and sets nothing refers to any more.
    for name in &removed {
        let _ = writeln!(s, "delete chain {t} {name}");
    }
    for name in old.sets.keys().filter(|k| !new.sets.contains_key(*k)) {
        let _ = writeln!(s, "delete set {t} {name}");
    }
    // 6. New and changed map elements, now that their chains exist.
    for (name, added) in adds {
        let _ = writeln!(s, "add element {t} {name} {{ {} }}", added.join(", "));
    }
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
fn one_or_set<T: ToString>(items: &[T]) -> String {
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
    fn verdict(&self) -> String {
        match self {
            Target::Chain(c) => format!("goto {c}"),
            Target::Reject => "goto reject-chain".to_string(),
            Target::Drop => "drop".to_string(),
        }
    }
}

fn family_state(rs: &RuleSet, node: &NodeInfo, f: Family) -> FamilyState {
    let a = f.table_family(); // the address match keyword: `ip saddr` / `ip6 saddr`
    let ty = f.addr_type();
    let pod_cidrs: Vec<String> = node
        .pod_cidrs
        .iter()
        .filter(|(ip, _)| f.has(ip))
        .map(|(ip, p)| format!("{ip}/{p}"))
        .collect();
    let mut st = FamilyState::default();
    let [service_ips, nodeports, noep_ips, noep_nodeports] = &mut st.maps;
    let chains = &mut st.chains;
    let sets = &mut st.sets;

    for r in &rs.ports {
        let cips: Vec<IpAddr> = r
            .cluster_ips
            .iter()
            .copied()
            .filter(|ip| f.has(ip))
            .collect();
        if cips.is_empty() {
            continue;
        }
        let id = r.id();
        let proto = r.protocol.nft();
        let fam_eps = |eps: Vec<&Endpoint>| -> Vec<Endpoint> {
            eps.into_iter().filter(|e| f.has(&e.ip)).cloned().collect()
        };
        let all = fam_eps(r.usable(false));
        let local = fam_eps(r.usable(true));
        let need_local = r.internal_local || r.external_local;

        let masq_rule = (!pod_cidrs.is_empty()).then(|| {
            format!(
                "{a} daddr {} {a} saddr != {} jump mark-for-masquerade",
                one_or_set(&cips),
                one_or_set(&pod_cidrs)
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
            // No per-endpoint state is needed, so no per-endpoint chains: a cascade
            // like kube-proxy's iptables `statistic` rules, where rule k matches
            // with probability 1/(N-k), picks uniformly. Plain rules load in linear
            // time; one map lookup per chain does not (the kernel's set binding
            // checks make that quadratic in the number of chains). Hairpin traffic
            // (a pod reaching itself) is masqueraded by matching any endpoint of
            // this port as the source, one plain rule per endpoint: an anonymous
            // set costs the kernel a scan of every set in the table.
            for e in eps {
                rules.push(format!("{a} saddr {} jump mark-for-masquerade", e.ip));
            }
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
            chains.insert(svc.clone(), lb_chain(&all));
        }
        if need_local && !local.is_empty() {
            chains.insert(loc.clone(), lb_chain(&local));
        }
        // Endpoint chains (only with session affinity, which needs per-endpoint
        // state): every endpoint reachable from either view.
        if let Some(timeout) = r.affinity_timeout {
            for e in all.iter().chain(local.iter()) {
                let name = ep_chain(r, e);
                if chains.contains_key(&name) {
                    continue;
                }
                let set = aff_set(r, e, timeout);
                sets.insert(
                    set.clone(),
                    format!("type {ty}; flags dynamic,timeout; timeout {timeout}s;"),
                );
                chains.insert(
                    name,
                    vec![
                        // Hairpin: a pod reaching itself through its Service must be
                        // masqueraded or it would answer itself directly.
                        format!("{a} saddr {} jump mark-for-masquerade", e.ip),
                        format!("update @{set} {{ {a} saddr }}"),
                        format!("meta l4proto {proto} dnat to {}", dnat_target(e)),
                    ],
                );
            }
        }

        let cluster_target = match (r.internal_local, all.is_empty(), local.is_empty()) {
            (_, true, _) => Target::Reject,
            (true, false, true) => Target::Drop,
            (true, false, false) => Target::Chain(loc.clone()),
            (false, false, _) => Target::Chain(svc.clone()),
        };
        for ip in &cips {
            let key = format!("{ip} . {proto} . {}", r.port);
            match &cluster_target {
                Target::Chain(_) => service_ips.insert(key, cluster_target.verdict()),
                _ => noep_ips.insert(key, cluster_target.verdict()),
            };
        }

        if !r.has_external() {
            continue;
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
                    rules.push(format!("{a} saddr {} goto {svc}", one_or_set(&pod_cidrs)));
                }
                rules.push("fib saddr type local jump mark-for-masquerade".into());
                rules.push(format!("fib saddr type local goto {svc}"));
                rules.push(format!("goto {loc}"));
            } else {
                rules.push("jump mark-for-masquerade".into());
                rules.push(format!("goto {svc}"));
            }
            chains.insert(ext.clone(), rules);
            Target::Chain(ext)
        };
        let (ips_map, np_map) = match ext_target {
            Target::Chain(_) => (&mut *service_ips, &mut *nodeports),
            _ => (&mut *noep_ips, &mut *noep_nodeports),
        };
        for ip in r.external_ips.iter().filter(|ip| f.has(ip)) {
            ips_map.insert(format!("{ip} . {proto} . {}", r.port), ext_target.verdict());
        }
        if let Some(np) = r.node_port {
            np_map.insert(format!("{proto} . {np}"), ext_target.verdict());
        }
    }
    st
}

fn render_table(s: &mut String, st: &FamilyState, localhost_nodeports: bool, f: Family) {
    let t = f.table_family();
    let a = t;
    let ty = f.addr_type();
    let _ = writeln!(
        s,
        "add table {t} {TABLE}\ndelete table {t} {TABLE}\ntable {t} {TABLE} {{"
    );
    let _ = writeln!(
        s,
        "\tcomment \"hull service proxy; rewritten whole on a full sync, in parts in between\""
    );
    let keys = [
        format!("{ty} . inet_proto . inet_service"),
        "inet_proto . inet_service".to_string(),
        format!("{ty} . inet_proto . inet_service"),
        "inet_proto . inet_service".to_string(),
    ];
    for ((name, key), elems) in MAPS.iter().zip(&keys).zip(&st.maps) {
        let _ = write!(s, "\tmap {name} {{ type {key} : verdict;");
        if !elems.is_empty() {
            s.push_str(" elements = { ");
            for (i, (k, v)) in elems.iter().enumerate() {
                if i > 0 {
                    s.push_str(",\n\t\t");
                }
                let _ = write!(s, "{k} : {v}");
            }
            s.push_str(" }");
        }
        s.push_str(" }\n");
    }
    for (name, decl) in &st.sets {
        let _ = writeln!(s, "\tset {name} {{ {decl} }}");
    }

    // NodePorts answer on every local address; on 127.0.0.1 only when asked
    // (needs route_localnet), never on ::1 (IPv6 has no route_localnet).
    let np_guard = if f == Family::V4 && localhost_nodeports {
        String::new()
    } else {
        format!("{a} daddr != {} ", f.loopback())
    };
    let _ = writeln!(
        s,
        "\tchain mark-for-masquerade {{\n\t\tmeta mark set meta mark | {MASQ_MARK:#x}\n\t}}\n\
         \tchain masquerading {{\n\t\tmeta mark & {MASQ_MARK:#x} == 0 return\n\t\tmeta mark set meta mark ^ {MASQ_MARK:#x}\n\t\tmasquerade fully-random\n\t}}\n\
         \tchain services {{\n\t\t{a} daddr . meta l4proto . th dport vmap @service-ips\n\t\tfib daddr type local {np_guard}meta l4proto . th dport vmap @service-nodeports\n\t}}\n\
         \tchain endpoints-check {{\n\t\t{a} daddr . meta l4proto . th dport vmap @no-endpoint-services\n\t}}\n\
         \tchain nodeport-endpoints-check {{\n\t\tfib daddr type local {np_guard}meta l4proto . th dport vmap @no-endpoint-nodeports\n\t}}\n\
         \tchain reject-chain {{\n\t\treject\n\t}}\n\
         \tchain nat-prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump services\n\t}}\n\
         \tchain nat-output {{\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}}\n\
         \tchain nat-postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tjump masquerading\n\t}}\n\
         \tchain filter-input {{\n\t\ttype filter hook input priority -110; policy accept;\n\t\tct state new jump endpoints-check\n\t\tct state new jump nodeport-endpoints-check\n\t}}\n\
         \tchain filter-forward {{\n\t\ttype filter hook forward priority -110; policy accept;\n\t\tct state new jump endpoints-check\n\t}}\n\
         \tchain filter-output {{\n\t\ttype filter hook output priority -110; policy accept;\n\t\tct state new jump endpoints-check\n\t}}"
    );
    for (name, rules) in &st.chains {
        let _ = writeln!(s, "\tchain {name} {{");
        for r in rules {
            let _ = writeln!(s, "\t\t{r}");
        }
        s.push_str("\t}\n");
    }
    s.push_str("}\n");
}
