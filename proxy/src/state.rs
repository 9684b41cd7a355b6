//! What hull's tables should hold, per service port, and the transactions that
//! get the kernel there.
//!
//! A [`State`] maps each service port id to its [`Fragment`] per family. Building
//! the next state from the previous one reuses (shares) the fragment of every
//! port whose rule did not change, so a sync at 10 000 Services costs a
//! comparison per port plus the work for what changed; the diff skips shared
//! fragments without looking inside.
//!
//! Two kinds of transaction, each applied atomically by `nft -f`:
//! - [`State::render_full`]: create-then-delete hull's tables and define them whole
//!   (start, after a failure, periodically: repairs drift);
//! - [`State::render_diff`]: only what changed — chains added, replaced (flushed and
//!   refilled) or deleted, sets added or deleted, map elements added or deleted —
//!   so affinity sets of untouched endpoints keep their clients.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use crate::model::{NodeInfo, ServicePortRule};
use crate::nft::{self, Dest, Family, Fragment, HAIRPIN, Key, MAPS, Part, Pick, Slot, Verdict};

/// One service port: its rule and its fragment in each family.
#[derive(Debug, PartialEq, Eq)]
pub struct Port {
    pub rule: ServicePortRule,
    pub v4: Fragment,
    pub v6: Fragment,
}

impl Port {
    fn new(r: &ServicePortRule, cidrs4: &[String], cidrs6: &[String]) -> Port {
        Port {
            v4: nft::fragment(r, cidrs4, Family::V4),
            v6: nft::fragment(r, cidrs6, Family::V6),
            rule: r.clone(),
        }
    }

    fn family(&self, f: Family) -> &Fragment {
        match f {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }
}

/// What fragments share in one family's table, with how many fragments use each:
/// the pick chains and the hairpin set's addresses. Kept by counting, so a sync
/// adjusts it by the changed ports only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shared {
    pub picks: BTreeMap<Pick, u32>,
    pub hairpin: BTreeMap<IpAddr, u32>,
}

impl Shared {
    fn add(&mut self, fr: &Fragment) {
        for p in &fr.picks {
            *self.picks.entry(*p).or_default() += 1;
        }
        for ip in &fr.hairpin {
            *self.hairpin.entry(*ip).or_default() += 1;
        }
    }

    fn remove(&mut self, fr: &Fragment) {
        fn dec<K: Ord + Copy>(m: &mut BTreeMap<K, u32>, k: &K) {
            if let Some(c) = m.get_mut(k) {
                *c -= 1;
                if *c == 0 {
                    m.remove(k);
                }
            }
        }
        for p in &fr.picks {
            dec(&mut self.picks, p);
        }
        for ip in &fr.hairpin {
            dec(&mut self.hairpin, ip);
        }
    }
}

/// The desired content of both tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The table (in both families) this state is written to: a full sync
    /// builds the next one beside the live one and swaps (see `fullsync.rs`).
    pub table: &'static str,
    /// The fixed chains and every fragment depend on these node facts.
    localhost_nodeports: bool,
    pod_cidrs: Vec<(IpAddr, u8)>,
    /// Service port id → its share of the tables.
    pub ports: BTreeMap<String, Arc<Port>>,
    /// What the ports share, per family (v4, v6).
    pub shared: [Shared; 2],
}

/// What [`State::change`] replaced: each changed port's previous fragment
/// (`None`: it did not exist), the pick counts, and whether each address the
/// changes touched was in the hairpin set.
#[derive(Debug, Default)]
pub struct Before {
    ports: BTreeMap<String, Option<Arc<Port>>>,
    picks: [BTreeMap<Pick, u32>; 2],
    hairpin: [BTreeMap<IpAddr, bool>; 2],
}

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

fn fam_index(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

impl State {
    /// The state for `ports`, sharing the fragments of `prev` whose rule is
    /// unchanged (when `prev` was built for the same node facts).
    pub fn build<'a>(
        ports: impl IntoIterator<Item = &'a ServicePortRule>,
        node: &NodeInfo,
        prev: Option<&State>,
    ) -> State {
        let mut st = State {
            table: prev.map_or(nft::TABLE, |p| p.table),
            localhost_nodeports: node.localhost_nodeports,
            pod_cidrs: node.pod_cidrs.clone(),
            ports: BTreeMap::new(),
            shared: Default::default(),
        };
        let prev = prev.filter(|p| p.same_base(&st));
        let cidrs4 = nft::pod_cidrs(node, Family::V4);
        let cidrs6 = nft::pod_cidrs(node, Family::V6);
        for r in ports {
            let id = r.id();
            let reused = prev
                .and_then(|p| p.ports.get(&id))
                .filter(|p| p.rule == *r)
                .cloned();
            let port = reused.unwrap_or_else(|| Arc::new(Port::new(r, &cidrs4, &cidrs6)));
            st.ports.insert(id, port);
        }
        st.count_shared(prev);
        st
    }

    /// `prev` with the ports `changes` names replaced (`None`: removed): the
    /// cost is that of the changes, not of the whole table. Only for the node
    /// facts `prev` was built with (see [`State::same_base`]).
    pub fn update<'a>(
        prev: &State,
        changes: impl IntoIterator<Item = (&'a str, Option<&'a ServicePortRule>)>,
    ) -> State {
        let mut st = prev.clone();
        st.change(changes);
        st
    }

    /// Whether this state was built for `node`'s facts.
    pub fn for_node(&self, node: &NodeInfo) -> bool {
        self.localhost_nodeports == node.localhost_nodeports && self.pod_cidrs == node.pod_cidrs
    }

    /// The shared counts: `prev`'s adjusted by the ports that changed (a port is
    /// unchanged when it shares its fragment with `prev`), or counted afresh.
    fn count_shared(&mut self, prev: Option<&State>) {
        let Some(prev) = prev else {
            for p in self.ports.values() {
                self.shared[0].add(&p.v4);
                self.shared[1].add(&p.v6);
            }
            return;
        };
        self.shared = prev.shared.clone();
        for (id, o) in &prev.ports {
            if !self.ports.get(id).is_some_and(|n| Arc::ptr_eq(o, n)) {
                self.shared[0].remove(&o.v4);
                self.shared[1].remove(&o.v6);
            }
        }
        for (id, n) in &self.ports {
            if !prev.ports.get(id).is_some_and(|o| Arc::ptr_eq(o, n)) {
                self.shared[0].add(&n.v4);
                self.shared[1].add(&n.v6);
            }
        }
    }

    /// Both tables, defined whole.
    pub fn render_full(&self) -> String {
        self.render(Part::Whole)
    }

    /// Both tables, `part` of them (see [`Part`]).
    pub fn render(&self, part: Part) -> String {
        let cap = match part {
            Part::Whole => 1024 + self.ports.len() * 700,
            Part::Skeleton => 4096,
        };
        let mut s = String::with_capacity(cap);
        for f in [Family::V4, Family::V6] {
            let shared = &self.shared[fam_index(f)];
            let cidrs = self.cidrs(f);
            let parts = nft::TableParts {
                frags: self.ports.values().map(|p| p.family(f)),
                picks: shared.picks.keys().copied().collect(),
                hairpin: shared.hairpin.keys().copied().collect(),
                pod_cidrs: &cidrs,
                localhost_nodeports: self.localhost_nodeports,
            };
            nft::render_table(&mut s, parts, f, self.table, part);
        }
        s
    }

    /// One family's merged elements (what a full sync loads over netlink).
    pub fn elements(&self, f: Family) -> nft::Elements<'_> {
        let shared = &self.shared[fam_index(f)];
        nft::Elements::merge(
            self.ports.values().map(|p| p.family(f)),
            &nft::slots(shared.picks.keys()),
            shared.hairpin.keys().copied().collect(),
        )
    }

    fn cidrs(&self, f: Family) -> Vec<String> {
        let node = NodeInfo {
            pod_cidrs: self.pod_cidrs.clone(),
            ..Default::default()
        };
        nft::pod_cidrs(&node, f)
    }

    /// The transaction that turns `old` (what the kernel holds) into `self`, or
    /// `None` when nothing changed. Only valid when [`State::same_base`] holds;
    /// otherwise the fixed chains differ and only [`State::render_full`] will do.
    pub fn render_diff(&self, old: &State) -> Option<String> {
        self.render_diff_of(old, None)
    }

    /// [`State::render_diff`], looking only at the ports `ids` when given (the
    /// only ones that can differ when `self` is [`State::update`] of `old` by them).
    pub fn render_diff_of(&self, old: &State, ids: Option<&BTreeSet<String>>) -> Option<String> {
        let mut changed: Vec<(Option<&Port>, Option<&Port>)> = Vec::new();
        match ids {
            Some(ids) => {
                for id in ids {
                    match (old.ports.get(id), self.ports.get(id)) {
                        (Some(o), Some(n)) if Arc::ptr_eq(o, n) => {}
                        (None, None) => {}
                        (o, n) => changed.push((o.map(|o| &**o), n.map(|n| &**n))),
                    }
                }
            }
            None => {
                for (id, o) in &old.ports {
                    match self.ports.get(id) {
                        Some(n) if Arc::ptr_eq(o, n) => {}
                        n => changed.push((Some(&**o), n.map(|n| &**n))),
                    }
                }
                for (id, n) in &self.ports {
                    if !old.ports.contains_key(id) {
                        changed.push((None, Some(&**n)));
                    }
                }
            }
        }
        let old_picks = [&old.shared[0].picks, &old.shared[1].picks];
        let hairpin = [0, 1].map(|i| {
            let (os, ns) = (&old.shared[i].hairpin, &self.shared[i].hairpin);
            (keys_not_in(ns, os), keys_not_in(os, ns))
        });
        self.render_changes(&changed, old_picks, hairpin)
    }

    /// The transaction for the changed ports `changed` (old, new), given the
    /// pick counts before and the hairpin addresses (added, deleted) per family.
    fn render_changes(
        &self,
        changed: &[(Option<&Port>, Option<&Port>)],
        old_picks: [&BTreeMap<Pick, u32>; 2],
        hairpin: [(Vec<IpAddr>, Vec<IpAddr>); 2],
    ) -> Option<String> {
        let mut s = String::new();
        for (f, (hairpin_add, hairpin_delete)) in [Family::V4, Family::V6].into_iter().zip(hairpin)
        {
            let empty = Fragment::default();
            let mut d = Diff::default();
            for (o, n) in changed {
                let o = o.map_or(&empty, |p| p.family(f));
                let n = n.map_or(&empty, |p| p.family(f));
                if o != n {
                    d.fragment(o, n);
                }
            }
            let (os, ns) = (old_picks[fam_index(f)], &self.shared[fam_index(f)].picks);
            let cidrs = self.cidrs(f);
            let pick_rules: Vec<(String, Vec<String>)> = ns
                .keys()
                .filter(|p| !os.contains_key(p))
                .map(|p| (p.chain(), p.rules(&cidrs, f)))
                .collect();
            let gone_picks: Vec<String> = os
                .keys()
                .filter(|p| !ns.contains_key(p))
                .map(Pick::chain)
                .collect();
            let (old_slots, new_slots) = (nft::slots(os.keys()), nft::slots(ns.keys()));
            let slot_rules: Vec<(String, Vec<String>)> = new_slots
                .difference(&old_slots)
                .map(|sl| (sl.chain(), sl.rules(f)))
                .collect();
            let gone_slots: Vec<String> =
                old_slots.difference(&new_slots).map(Slot::chain).collect();
            d.add_maps = new_slots
                .difference(&old_slots)
                .map(|sl| (sl.map(), sl.map_type(f)))
                .collect();
            d.delete_maps = old_slots.difference(&new_slots).map(Slot::map).collect();
            // Slot chains before the pick chains that jump to them; gone pick
            // chains are deleted before the slot chains they jumped to.
            for (name, rules) in slot_rules.iter().chain(&pick_rules) {
                d.add_chains.push(name);
                d.fill.push((name, rules));
            }
            for name in gone_picks.iter().chain(&gone_slots) {
                d.flush_chains.push(name);
                d.delete_chains.push(name);
            }
            d.hairpin_add = hairpin_add;
            d.hairpin_delete = hairpin_delete;
            d.render(&mut s, f, self.table);
        }
        (!s.is_empty()).then_some(s)
    }

    /// Apply `changes` (port id → its new rule, `None`: removed) in place, at
    /// the cost of the changes: nothing is copied but the few pick counts.
    /// Returns what [`State::render_diff_since`] needs of the state before.
    pub fn change<'a>(
        &mut self,
        changes: impl IntoIterator<Item = (&'a str, Option<&'a ServicePortRule>)>,
    ) -> Before {
        let mut before = Before {
            ports: BTreeMap::new(),
            picks: [self.shared[0].picks.clone(), self.shared[1].picks.clone()],
            hairpin: Default::default(),
        };
        let cidrs4 = self.cidrs(Family::V4);
        let cidrs6 = self.cidrs(Family::V6);
        for (id, rule) in changes {
            let new = match rule {
                None => None,
                Some(r) if self.ports.get(id).is_some_and(|p| p.rule == *r) => continue,
                Some(r) => Some(Arc::new(Port::new(r, &cidrs4, &cidrs6))),
            };
            let old = match &new {
                None => self.ports.remove(id),
                Some(p) => self.ports.insert(id.to_string(), p.clone()),
            };
            before.ports.entry(id.to_string()).or_insert(old.clone());
            for (i, shared) in self.shared.iter_mut().enumerate() {
                let frags = [old.as_ref(), new.as_ref()];
                for fr in frags.into_iter().flatten().map(|p| p.family(FAMILIES[i])) {
                    for ip in &fr.hairpin {
                        before.hairpin[i]
                            .entry(*ip)
                            .or_insert_with(|| shared.hairpin.contains_key(ip));
                    }
                }
                if let Some(n) = &new {
                    shared.add(n.family(FAMILIES[i]));
                }
                if let Some(o) = &old {
                    shared.remove(o.family(FAMILIES[i]));
                }
            }
        }
        before
    }

    /// The transaction from the state before [`State::change`] to this one, or
    /// `None` when nothing changed.
    pub fn render_diff_since(&self, before: &Before) -> Option<String> {
        let changed: Vec<(Option<&Port>, Option<&Port>)> = before
            .ports
            .iter()
            .filter_map(|(id, o)| match (o, self.ports.get(id)) {
                (Some(o), Some(n)) if Arc::ptr_eq(o, n) => None,
                (None, None) => None,
                (o, n) => Some((o.as_deref(), n.map(|n| &**n))),
            })
            .collect();
        let hairpin = [0, 1].map(|i| {
            let now = &self.shared[i].hairpin;
            let (mut add, mut del) = (Vec::new(), Vec::new());
            for (ip, was) in &before.hairpin[i] {
                match (was, now.contains_key(ip)) {
                    (false, true) => add.push(*ip),
                    (true, false) => del.push(*ip),
                    _ => {}
                }
            }
            (add, del)
        });
        self.render_changes(&changed, [&before.picks[0], &before.picks[1]], hairpin)
    }

    /// Whether the fixed part of the tables is the same (else only a full sync
    /// can move from `old` to `self`).
    pub fn same_base(&self, old: &State) -> bool {
        self.localhost_nodeports == old.localhost_nodeports && self.pod_cidrs == old.pod_cidrs
    }
}

fn keys_not_in<K: Ord + Copy>(a: &BTreeMap<K, u32>, b: &BTreeMap<K, u32>) -> Vec<K> {
    a.keys().filter(|k| !b.contains_key(k)).copied().collect()
}

/// The commands of one family's incremental transaction, by stage.
#[derive(Default)]
struct Diff<'a> {
    delete_elems: [Vec<&'a Key>; 4],
    delete_slot_elems: BTreeMap<Slot, Vec<&'a Key>>,
    add_slot_elems: BTreeMap<Slot, Vec<(&'a Key, &'a Dest)>>,
    /// Slot maps that come (with their declaration) or go.
    add_maps: Vec<(String, String)>,
    delete_maps: Vec<String>,
    hairpin_add: Vec<IpAddr>,
    hairpin_delete: Vec<IpAddr>,
    add_chains: Vec<&'a str>,
    flush_chains: Vec<&'a str>,
    add_sets: Vec<(&'a str, &'a str)>,
    fill: Vec<(&'a str, &'a [String])>,
    delete_chains: Vec<&'a str>,
    delete_sets: Vec<&'a str>,
    add_elems: [Vec<(&'a Key, &'a Verdict)>; 4],
}

impl<'a> Diff<'a> {
    fn fragment(&mut self, old: &'a Fragment, new: &'a Fragment) {
        for i in 0..MAPS.len() {
            let (o, n) = (&old.maps[i], &new.maps[i]);
            for (k, v) in o {
                if !n.iter().any(|(nk, nv)| nk == k && nv == v) {
                    self.delete_elems[i].push(k);
                }
            }
            for (k, v) in n {
                if !o.iter().any(|(ok, ov)| ok == k && ov == v) {
                    self.add_elems[i].push((k, v));
                }
            }
        }
        let key = |(sl, k, v): &'a (Slot, Key, Dest)| (*sl, k, v);
        let olds: HashSet<(Slot, &Key, &Dest)> = old.endpoints.iter().map(key).collect();
        let news: HashSet<(Slot, &Key, &Dest)> = new.endpoints.iter().map(key).collect();
        for (sl, k, _) in old.endpoints.iter().map(key).filter(|e| !news.contains(e)) {
            self.delete_slot_elems.entry(sl).or_default().push(k);
        }
        for (sl, k, v) in new.endpoints.iter().map(key).filter(|e| !olds.contains(e)) {
            self.add_slot_elems.entry(sl).or_default().push((k, v));
        }
        for (name, rules) in &new.chains {
            match old.chains.iter().find(|(n, _)| n == name) {
                None => {
                    self.add_chains.push(name.as_str());
                    self.fill.push((name.as_str(), rules.as_slice()));
                }
                Some((_, r)) if r != rules => {
                    self.flush_chains.push(name.as_str());
                    self.fill.push((name.as_str(), rules.as_slice()));
                }
                Some(_) => {}
            }
        }
        for (name, _) in &old.chains {
            if !new.chains.iter().any(|(n, _)| n == name) {
                self.flush_chains.push(name.as_str());
                self.delete_chains.push(name.as_str());
            }
        }
        for (name, decl) in &new.sets {
            if !old.sets.iter().any(|(n, _)| n == name) {
                self.add_sets.push((name.as_str(), decl.as_str()));
            }
        }
        for (name, _) in &old.sets {
            if !new.sets.iter().any(|(n, _)| n == name) {
                self.delete_sets.push(name.as_str());
            }
        }
    }

    /// Order matters inside the transaction: nothing may be deleted while a rule
    /// or an element still refers to it, and nothing may be referred to before it
    /// exists.
    fn render(&self, s: &mut String, f: Family, table: &str) {
        let t = format!("{} {table}", f.table_family());
        let keys = |ks: &[&Key]| -> String {
            let v: Vec<String> = ks.iter().map(ToString::to_string).collect();
            v.join(", ")
        };
        // 1. Map elements that go away or change their verdict or endpoint.
        for (name, ks) in MAPS.iter().zip(&self.delete_elems) {
            if !ks.is_empty() {
                let _ = writeln!(s, "delete element {t} {name} {{ {} }}", keys(ks));
            }
        }
        for (sl, ks) in &self.delete_slot_elems {
            let _ = writeln!(s, "delete element {t} {} {{ {} }}", sl.map(), keys(ks));
        }
        // 2. New chains exist; changed and removed chains are emptied (which drops
        //    their references to other chains and sets).
        for name in &self.add_chains {
            let _ = writeln!(s, "add chain {t} {name}");
        }
        for name in &self.flush_chains {
            let _ = writeln!(s, "flush chain {t} {name}");
        }
        // 3. New sets and slot maps, before the rules that use them.
        for (name, decl) in &self.add_sets {
            let _ = writeln!(s, "add set {t} {name} {{ {decl} }}");
        }
        for (name, ty) in &self.add_maps {
            let _ = writeln!(s, "add map {t} {name} {{ {ty}; }}");
        }
        // 4. The rules of new and changed chains.
        for (name, rules) in &self.fill {
            for rule in *rules {
                let _ = writeln!(s, "add rule {t} {name} {rule}");
            }
        }
        // 5. Chains and sets nothing refers to any more.
        for name in &self.delete_chains {
            let _ = writeln!(s, "delete chain {t} {name}");
        }
        for name in &self.delete_sets {
            let _ = writeln!(s, "delete set {t} {name}");
        }
        for name in &self.delete_maps {
            let _ = writeln!(s, "delete map {t} {name}");
        }
        // 6. New and changed map elements, now that their chains exist; the
        //    hairpin set follows the endpoints.
        let pairs = |ips: &[IpAddr]| -> String {
            let v: Vec<String> = ips.iter().map(|ip| format!("{ip} . {ip}")).collect();
            v.join(", ")
        };
        if !self.hairpin_delete.is_empty() {
            let _ = writeln!(
                s,
                "delete element {t} {HAIRPIN} {{ {} }}",
                pairs(&self.hairpin_delete)
            );
        }
        if !self.hairpin_add.is_empty() {
            let _ = writeln!(
                s,
                "add element {t} {HAIRPIN} {{ {} }}",
                pairs(&self.hairpin_add)
            );
        }
        fn elem_pairs<V: std::fmt::Display>(elems: &[(&Key, &V)]) -> String {
            let v: Vec<String> = elems.iter().map(|(k, v)| format!("{k} : {v}")).collect();
            v.join(", ")
        }
        for (name, elems) in MAPS.iter().zip(&self.add_elems) {
            if !elems.is_empty() {
                let _ = writeln!(s, "add element {t} {name} {{ {} }}", elem_pairs(elems));
            }
        }
        for (sl, elems) in &self.add_slot_elems {
            let _ = writeln!(
                s,
                "add element {t} {} {{ {} }}",
                sl.map(),
                elem_pairs(elems)
            );
        }
    }
}
