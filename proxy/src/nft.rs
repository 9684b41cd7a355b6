//! Render a [`RuleSet`] as one `nft -f` transaction.
//!
//! The transaction first creates-then-deletes hull's tables (so it works whether or
//! not they exist) and then defines them whole. `nft -f` applies a file atomically:
//! if any line is wrong, nothing changes and the previous rules stay in force.
//!
//! Shape (after kube-proxy's nftables mode): lookups go through verdict maps keyed
//! by `daddr . l4proto . dport` (ClusterIPs, externalIPs) and `l4proto . dport`
//! (NodePorts on local addresses), so the first-packet cost does not grow with the
//! number of Services. Each service port has a chain that picks an endpoint with a
//! cascade of `numgen` rules and DNATs; with session affinity, a `numgen … vmap`
//! to one chain per endpoint (which records the client in a timeout set).

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
    let mut s = String::with_capacity(256 + rs.ports.len() * 600);
    for f in [Family::V4, Family::V6] {
        render_family(&mut s, rs, node, f);
    }
    s
}

fn ep_chain(r: &ServicePortRule, e: &Endpoint) -> String {
    format!(
        "ep-{}/{}/{}",
        r.id(),
        e.ip.to_string().replace(':', "."),
        e.port
    )
}

fn aff_set(r: &ServicePortRule, e: &Endpoint) -> String {
    format!(
        "aff-{}/{}/{}",
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

fn render_family(s: &mut String, rs: &RuleSet, node: &NodeInfo, f: Family) {
    let t = f.table_family();
    let a = t; // the address match keyword is the family name: `ip saddr` / `ip6 saddr`
    let ty = f.addr_type();
    let pod_cidrs: Vec<String> = node
        .pod_cidrs
        .iter()
        .filter(|(ip, _)| f.has(ip))
        .map(|(ip, p)| format!("{ip}/{p}"))
        .collect();

    let mut service_ips: Vec<String> = Vec::new();
    let mut nodeports: Vec<String> = Vec::new();
    let mut noep_ips: Vec<String> = Vec::new();
    let mut noep_nodeports: Vec<String> = Vec::new();
    let mut chains = String::new();
    let mut sets = String::new();

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

        let masq_rule = if pod_cidrs.is_empty() {
            String::new()
        } else {
            format!(
                "\t\t{a} daddr {} {a} saddr != {} jump mark-for-masquerade\n",
                one_or_set(&cips),
                one_or_set(&pod_cidrs)
            )
        };
        let lb_chain = |name: &str, eps: &[Endpoint], chains: &mut String| {
            let _ = writeln!(chains, "\tchain {name} {{");
            chains.push_str(&masq_rule);
            if r.affinity_timeout.is_some() {
                for e in eps {
                    let _ = writeln!(
                        chains,
                        "\t\t{a} saddr @{} goto {}",
                        aff_set(r, e),
                        ep_chain(r, e)
                    );
                }
            }
            if r.affinity_timeout.is_none() {
                // No per-endpoint state is needed, so no per-endpoint chains: a
                // cascade like kube-proxy's iptables `statistic` rules, where rule k
                // matches with probability 1/(N-k), picks uniformly. Plain rules load
                // in linear time; one map lookup per chain does not (the kernel's set
                // binding checks make that quadratic in the number of chains).
                // Hairpin traffic (a pod reaching itself) is masqueraded by matching
                // any endpoint of this port as the source.
                // One plain rule per endpoint, not an anonymous set: each anonymous
                // set costs the kernel a scan of every set in the table.
                for e in eps {
                    let _ = writeln!(chains, "\t\t{a} saddr {} jump mark-for-masquerade", e.ip);
                }
                let n = eps.len();
                for (k, e) in eps.iter().enumerate() {
                    let pick = if k + 1 < n {
                        format!("numgen random mod {} 0 ", n - k)
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        chains,
                        "\t\t{pick}meta l4proto {proto} dnat to {}",
                        dnat_target(e)
                    );
                }
                chains.push_str("\t}\n");
                return;
            }
            let arms: Vec<String> = eps
                .iter()
                .enumerate()
                .map(|(i, e)| format!("{i} : goto {}", ep_chain(r, e)))
                .collect();
            let _ = writeln!(
                chains,
                "\t\tnumgen random mod {} vmap {{ {} }}\n\t}}",
                eps.len(),
                arms.join(", ")
            );
        };
        let svc = format!("svc-{id}");
        let loc = format!("local-{id}");
        if !all.is_empty() {
            lb_chain(&svc, &all, &mut chains);
        }
        if need_local && !local.is_empty() {
            lb_chain(&loc, &local, &mut chains);
        }
        // Endpoint chains (only with session affinity, which needs per-endpoint
        // state): every endpoint reachable from either view.
        let mut eps: Vec<Endpoint> = if r.affinity_timeout.is_some() {
            all.clone()
        } else {
            Vec::new()
        };
        for e in local.iter().filter(|_| r.affinity_timeout.is_some()) {
            if !eps.contains(e) {
                eps.push(e.clone());
            }
        }
        for e in &eps {
            let _ = writeln!(chains, "\tchain {} {{", ep_chain(r, e));
            // Hairpin: a pod reaching itself through its Service must be
            // masqueraded or it would answer itself directly.
            let _ = writeln!(chains, "\t\t{a} saddr {} jump mark-for-masquerade", e.ip);
            if let Some(timeout) = r.affinity_timeout {
                let set = aff_set(r, e);
                let _ = writeln!(
                    sets,
                    "\tset {set} {{ type {ty}; flags dynamic,timeout; timeout {timeout}s; }}"
                );
                let _ = writeln!(chains, "\t\tupdate @{set} {{ {a} saddr }}");
            }
            let _ = writeln!(
                chains,
                "\t\tmeta l4proto {proto} dnat to {}\n\t}}",
                dnat_target(e)
            );
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
                Target::Chain(c) => service_ips.push(format!("{key} : goto {c}")),
                Target::Reject => noep_ips.push(format!("{key} : goto reject-chain")),
                Target::Drop => noep_ips.push(format!("{key} : drop")),
            }
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
            let _ = writeln!(chains, "\tchain {ext} {{");
            if r.external_local {
                // Pods and the node itself may still use every endpoint (kube-proxy
                // does the same); only traffic from outside is kept on this node,
                // unmasqueraded, so the client address is preserved.
                if !pod_cidrs.is_empty() {
                    let _ = writeln!(
                        chains,
                        "\t\t{a} saddr {} goto {svc}",
                        one_or_set(&pod_cidrs)
                    );
                }
                let _ = writeln!(chains, "\t\tfib saddr type local jump mark-for-masquerade");
                let _ = writeln!(chains, "\t\tfib saddr type local goto {svc}");
                let _ = writeln!(chains, "\t\tgoto {loc}\n\t}}");
            } else {
                let _ = writeln!(chains, "\t\tjump mark-for-masquerade\n\t\tgoto {svc}\n\t}}");
            }
            Target::Chain(ext)
        };
        let verdict = |t: &Target| match t {
            Target::Chain(c) => format!("goto {c}"),
            Target::Reject => "goto reject-chain".to_string(),
            Target::Drop => "drop".to_string(),
        };
        let (ips_map, np_map) = match ext_target {
            Target::Chain(_) => (&mut service_ips, &mut nodeports),
            _ => (&mut noep_ips, &mut noep_nodeports),
        };
        for ip in r.external_ips.iter().filter(|ip| f.has(ip)) {
            ips_map.push(format!(
                "{ip} . {proto} . {} : {}",
                r.port,
                verdict(&ext_target)
            ));
        }
        if let Some(np) = r.node_port {
            np_map.push(format!("{proto} . {np} : {}", verdict(&ext_target)));
        }
    }

    let _ = writeln!(
        s,
        "add table {t} {TABLE}\ndelete table {t} {TABLE}\ntable {t} {TABLE} {{"
    );
    let _ = writeln!(
        s,
        "\tcomment \"hull service proxy; rewritten whole on every sync\""
    );
    let map = |s: &mut String, name: &str, key: &str, elems: &[String]| {
        let _ = write!(s, "\tmap {name} {{ type {key} : verdict;");
        if !elems.is_empty() {
            let _ = write!(s, " elements = {{ {} }}", elems.join(",\n\t\t"));
        }
        s.push_str(" }\n");
    };
    map(
        s,
        "service-ips",
        &format!("{ty} . inet_proto . inet_service"),
        &service_ips,
    );
    map(
        s,
        "service-nodeports",
        "inet_proto . inet_service",
        &nodeports,
    );
    map(
        s,
        "no-endpoint-services",
        &format!("{ty} . inet_proto . inet_service"),
        &noep_ips,
    );
    map(
        s,
        "no-endpoint-nodeports",
        "inet_proto . inet_service",
        &noep_nodeports,
    );
    s.push_str(&sets);

    // NodePorts answer on every local address; on 127.0.0.1 only when asked
    // (needs route_localnet), never on ::1 (IPv6 has no route_localnet).
    let np_guard = if f == Family::V4 && node.localhost_nodeports {
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
    s.push_str(&chains);
    s.push_str("}\n");
}
