//! The chains every service port shares: [`Pick`] chains (one per endpoint count
//! in use: a random draw among N slots) and endpoint [`Slot`]s (slot k: a map from
//! each Service key to its k-th endpoint, and the chain that DNATs through it).
//! A Service is then only map elements; see `nft.rs` for the table around them.

use std::collections::BTreeSet;

use crate::nft::{Family, one_or_set};

/// Endpoint slot `k`: a map from every Service key to the Service's `k`-th
/// endpoint, and a chain that DNATs through it. Services share the slots, so a
/// Service's endpoints are map elements (which the kernel loads far faster than
/// rules), and there are as many slots as the largest Service has endpoints.
///
/// (One map keyed by `key . numgen random mod N` would need a `typeof`
/// declaration, which nft 1.0.6 either cannot read back from the kernel or
/// compiles with a TCP-only dependency; the slots use named types only.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot {
    /// Keyed by `l4proto . dport` (NodePorts, on any local address) rather than
    /// `daddr . l4proto . dport`.
    pub nodeport: bool,
    pub k: usize,
}

impl Slot {
    pub fn map(&self) -> String {
        if self.nodeport {
            format!("nodeport-endpoints-{}", self.k)
        } else {
            format!("endpoints-{}", self.k)
        }
    }

    pub fn chain(&self) -> String {
        if self.nodeport {
            format!("nodeport-slot-{}", self.k)
        } else {
            format!("slot-{}", self.k)
        }
    }

    pub fn map_type(&self, f: Family) -> String {
        let ty = f.addr_type();
        if self.nodeport {
            format!("type inet_proto . inet_service : {ty} . inet_service")
        } else {
            format!("type {ty} . inet_proto . inet_service : {ty} . inet_service")
        }
    }

    pub fn rules(&self, f: Family) -> Vec<String> {
        let a = f.table_family();
        let key = if self.nodeport {
            String::new()
        } else {
            format!("{a} daddr . ")
        };
        vec![format!(
            "dnat {a} to {key}meta l4proto . th dport map @{}",
            self.map()
        )]
    }
}

/// The slots the pick chains `picks` jump to.
pub fn slots<'a>(picks: impl IntoIterator<Item = &'a Pick>) -> BTreeSet<Slot> {
    let mut out = BTreeSet::new();
    for p in picks {
        let nodeport = p.kind == PickKind::NodePort;
        out.extend((0..p.n).map(|k| Slot { nodeport, k }));
    }
    out
}

/// One of the chains shared by every service port that picks among `n`
/// endpoints the same way: a random draw `0..n` sends the packet to that endpoint
/// slot. Thousands of Services need only as many chains as they have distinct
/// endpoint counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pick {
    pub kind: PickKind,
    pub n: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PickKind {
    /// ClusterIP traffic: masqueraded only from outside the pod CIDRs.
    Cluster,
    /// externalIPs / LoadBalancer IPs (policy Cluster): always masqueraded.
    External,
    /// NodePorts (policy Cluster): always masqueraded, keyed without the address.
    NodePort,
}

impl Pick {
    pub fn chain(&self) -> String {
        match self.kind {
            PickKind::Cluster => format!("pick-{}", self.n),
            PickKind::External => format!("pick-external-{}", self.n),
            PickKind::NodePort => format!("pick-nodeport-{}", self.n),
        }
    }

    /// The chain's rules in family `f`.
    pub fn rules(&self, pod_cidrs: &[String], f: Family) -> Vec<String> {
        let a = f.table_family();
        let mut rules = Vec::new();
        match self.kind {
            PickKind::Cluster => {
                if !pod_cidrs.is_empty() {
                    rules.push(format!(
                        "{a} saddr != {} jump mark-for-masquerade",
                        one_or_set(pod_cidrs)
                    ));
                }
            }
            PickKind::External | PickKind::NodePort => {
                rules.push("jump mark-for-masquerade".to_string())
            }
        }
        let nodeport = self.kind == PickKind::NodePort;
        let slot = |k| Slot { nodeport, k }.chain();
        if self.n == 1 {
            rules.push(format!("goto {}", slot(0)));
        } else {
            let arms: Vec<String> = (0..self.n)
                .map(|k| format!("{k} : goto {}", slot(k)))
                .collect();
            rules.push(format!(
                "numgen random mod {} vmap {{ {} }}",
                self.n,
                arms.join(", ")
            ));
        }
        rules
    }
}
