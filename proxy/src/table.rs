//! One family's whole table as nft text: the maps and sets, the fixed chains, the
//! hook chains, the shared pick/slot chains and every fragment's chains, with the
//! elements inline (one `nft -f`) or left out for netlink (a full sync's skeleton).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::element::{Dest, Key, REJECT_CHAIN, Verdict};
use crate::nft::{Family, Fragment, HAIRPIN, MAPS, MASQ_MARK, map_type};
use crate::pick::{Pick, Slot, slots};

/// One family's table, from its fragments (in id order), the pick chains they
/// use and their endpoints' addresses. Map elements are merged: should two ports
/// claim the same key (two Services on one externalIP:port), the later one wins
/// rather than the kernel refusing the set.
pub struct TableParts<'a, I: Iterator<Item = &'a Fragment> + Clone> {
    pub frags: I,
    pub picks: Vec<Pick>,
    pub hairpin: Vec<IpAddr>,
    pub pod_cidrs: &'a [String],
    pub localhost_nodeports: bool,
}

/// Every element of one family's table, merged over the fragments.
pub struct Elements<'a> {
    pub maps: [BTreeMap<&'a Key, &'a Verdict>; 4],
    pub slots: BTreeMap<Slot, BTreeMap<&'a Key, &'a Dest>>,
    pub hairpin: Vec<IpAddr>,
}

impl<'a> Elements<'a> {
    pub fn merge(
        frags: impl Iterator<Item = &'a Fragment>,
        slots: &std::collections::BTreeSet<Slot>,
        hairpin: Vec<IpAddr>,
    ) -> Elements<'a> {
        let mut maps: [BTreeMap<&Key, &Verdict>; 4] = Default::default();
        let mut slot_maps: BTreeMap<Slot, BTreeMap<&Key, &Dest>> =
            slots.iter().map(|sl| (*sl, BTreeMap::new())).collect();
        for fr in frags {
            for (m, elems) in maps.iter_mut().zip(&fr.maps) {
                m.extend(elems.iter().map(|(k, v)| (k, v)));
            }
            for (sl, k, v) in &fr.endpoints {
                if let Some(m) = slot_maps.get_mut(sl) {
                    m.insert(k, v);
                }
            }
        }
        Elements {
            maps,
            slots: slot_maps,
            hairpin,
        }
    }
}

/// The chains that hook into the kernel: (name, hook declaration, rules). They
/// only jump to the table's other chains, so a full sync can build everything
/// else first and add these last, in the transaction that drops the old table.
pub fn hook_chains() -> Vec<(&'static str, &'static str, Vec<String>)> {
    let new = "ct state new jump";
    vec![
        (
            "nat-prerouting",
            "type nat hook prerouting priority dstnat; policy accept;",
            vec!["jump services".into()],
        ),
        (
            "nat-output",
            "type nat hook output priority -100; policy accept;",
            vec!["jump services".into()],
        ),
        (
            "nat-postrouting",
            "type nat hook postrouting priority srcnat; policy accept;",
            vec!["jump masquerading".into()],
        ),
        (
            "filter-input",
            "type filter hook input priority -110; policy accept;",
            vec![
                format!("{new} endpoints-check"),
                format!("{new} nodeport-endpoints-check"),
            ],
        ),
        (
            "filter-forward",
            "type filter hook forward priority -110; policy accept;",
            vec![format!("{new} endpoints-check")],
        ),
        (
            "filter-output",
            "type filter hook output priority -110; policy accept;",
            vec![format!("{new} endpoints-check")],
        ),
    ]
}

/// The fixed chains that do not hook: (name, rules).
fn fixed_chains(f: Family, localhost_nodeports: bool) -> Vec<(&'static str, Vec<String>)> {
    let a = f.table_family();
    // NodePorts answer on every local address; on 127.0.0.1 only when asked
    // (needs route_localnet), never on ::1 (IPv6 has no route_localnet).
    let np_guard = if f == Family::V4 && localhost_nodeports {
        String::new()
    } else {
        format!("{a} daddr != {} ", f.loopback())
    };
    vec![
        (
            "mark-for-masquerade",
            vec![format!("meta mark set meta mark | {MASQ_MARK:#x}")],
        ),
        (
            "masquerading",
            vec![
                format!("ct status dnat {a} saddr . {a} daddr @{HAIRPIN} jump mark-for-masquerade"),
                format!("meta mark & {MASQ_MARK:#x} == 0 return"),
                format!("meta mark set meta mark ^ {MASQ_MARK:#x}"),
                "masquerade fully-random".into(),
            ],
        ),
        (
            "services",
            vec![
                format!("{a} daddr . meta l4proto . th dport vmap @service-ips"),
                format!(
                    "fib daddr type local {np_guard}meta l4proto . th dport vmap @service-nodeports"
                ),
            ],
        ),
        (
            "endpoints-check",
            vec![format!(
                "{a} daddr . meta l4proto . th dport vmap @no-endpoint-services"
            )],
        ),
        (
            "nodeport-endpoints-check",
            vec![format!(
                "fib daddr type local {np_guard}meta l4proto . th dport vmap @no-endpoint-nodeports"
            )],
        ),
        (REJECT_CHAIN, vec!["reject".into()]),
    ]
}

/// How much of the table [`render_table`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Everything: elements inline, hooks included (one `nft -f`).
    Whole,
    /// Everything but the map/set elements and the hook chains: the elements
    /// are loaded over netlink and the hooks added afterwards (see `fullsync.rs`).
    Skeleton,
}

pub fn render_table<'a, I>(
    s: &mut String,
    parts: TableParts<'a, I>,
    f: Family,
    table: &str,
    part: Part,
) where
    I: Iterator<Item = &'a Fragment> + Clone,
{
    let TableParts {
        frags,
        picks,
        hairpin,
        pod_cidrs,
        localhost_nodeports,
    } = parts;
    let t = f.table_family();
    let ty = f.addr_type();
    let _ = writeln!(
        s,
        "add table {t} {table}\ndelete table {t} {table}\ntable {t} {table} {{"
    );
    let _ = writeln!(
        s,
        "\tcomment \"hull service proxy; rewritten whole on a full sync, in parts in between\""
    );
    let slots = slots(&picks);
    let elems = match part {
        Part::Whole => Some(Elements::merge(frags.clone(), &slots, hairpin)),
        Part::Skeleton => None,
    };
    let mut map = |name: &str, ty: &str, elems: Option<Vec<String>>| {
        let _ = write!(s, "\tmap {name} {{ {ty};");
        if let Some(elems) = elems.filter(|e| !e.is_empty()) {
            s.push_str(" elements = { ");
            s.push_str(&elems.join(",\n\t\t"));
            s.push_str(" }");
        }
        s.push_str(" }\n");
    };
    for (i, name) in MAPS.iter().enumerate() {
        let e = elems.as_ref().map(|e| {
            e.maps[i]
                .iter()
                .map(|(k, v)| format!("{k} : {v}"))
                .collect()
        });
        map(name, &map_type(i, f), e);
    }
    for sl in &slots {
        let e = elems.as_ref().map(|e| {
            e.slots
                .get(sl)
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k} : {v}"))
                .collect()
        });
        map(&sl.map(), &sl.map_type(f), e);
    }
    let _ = write!(s, "\tset {HAIRPIN} {{ type {ty} . {ty};");
    if let Some(e) = elems.as_ref().filter(|e| !e.hairpin.is_empty()) {
        let v: Vec<String> = e.hairpin.iter().map(|ip| format!("{ip} . {ip}")).collect();
        s.push_str(" elements = { ");
        s.push_str(&v.join(",\n\t\t"));
        s.push_str(" }");
    }
    s.push_str(" }\n");
    for (name, decl) in frags.clone().flat_map(|fr| &fr.sets) {
        let _ = writeln!(s, "\tset {name} {{ {decl} }}");
    }
    let mut chain = |name: &str, hook: Option<&str>, rules: &[String]| {
        let _ = writeln!(s, "\tchain {name} {{");
        if let Some(h) = hook {
            let _ = writeln!(s, "\t\t{h}");
        }
        for r in rules {
            let _ = writeln!(s, "\t\t{r}");
        }
        s.push_str("\t}\n");
    };
    for (name, rules) in fixed_chains(f, localhost_nodeports) {
        chain(name, None, &rules);
    }
    if part == Part::Whole {
        for (name, hook, rules) in hook_chains() {
            chain(name, Some(hook), &rules);
        }
    }
    for sl in &slots {
        chain(&sl.chain(), None, &sl.rules(f));
    }
    for p in &picks {
        chain(&p.chain(), None, &p.rules(pod_cidrs, f));
    }
    for (name, rules) in frags.flat_map(|fr| &fr.chains) {
        chain(name, None, rules);
    }
    s.push_str("}\n");
}

/// The hook chains of `table`, as commands: the last step of a full sync.
pub fn render_hooks(s: &mut String, f: Family, table: &str) {
    let t = f.table_family();
    for (name, hook, rules) in hook_chains() {
        let _ = writeln!(s, "add chain {t} {table} {name} {{ {hook} }}");
        for r in rules {
            let _ = writeln!(s, "add rule {t} {table} {name} {r}");
        }
    }
}
