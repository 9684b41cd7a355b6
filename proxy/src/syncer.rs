//! One sync step: a rule set → the kernel, by the cheapest transaction that is
//! safe.
//!
//! The syncer remembers the [`State`] the kernel last accepted. With it, a sync
//! writes only the difference (one atomic transaction: changed chains replaced,
//! map elements added/deleted). Without it — the first sync, after any failed
//! transaction (the kernel may hold something else than we think), when the node
//! facts changed, or when the full-sync period has passed — it rewrites the
//! tables whole, which repairs any drift (someone deleting a chain by hand).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::apply::{self, ApplyError};
use crate::conntrack::{self, UdpFlow};
use crate::fullsync;
use crate::model::{NodeInfo, RuleSet, ServicePortRule};
use crate::nft::State;
use crate::ports::Ports;

/// What a sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The kernel already holds this rule set.
    Unchanged,
    /// The tables were rewritten whole.
    Full,
    /// Only the difference was written.
    Partial,
}

#[derive(Debug)]
pub struct Syncer {
    node: NodeInfo,
    full_interval: Duration,
    /// Print every transaction to stdout before applying it.
    pub explain: bool,
    applied: Option<State>,
    last_full: Option<Instant>,
    udp_flows: BTreeSet<UdpFlow>,
    timings: Timings,
}

/// Where the last sync spent its time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Rule set → desired table state.
    pub state: Duration,
    /// Desired state → transaction text (full or diff).
    pub render: Duration,
    /// `nft -f` running the transaction.
    pub apply: Duration,
}

impl Syncer {
    pub fn new(node: NodeInfo, full_interval: Duration) -> Syncer {
        Syncer {
            node,
            full_interval,
            explain: false,
            applied: None,
            last_full: None,
            udp_flows: BTreeSet::new(),
            timings: Timings::default(),
        }
    }

    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// Whether the kernel holds a state this syncer wrote (else the next sync is full).
    pub fn has_applied(&self) -> bool {
        self.applied.is_some()
    }

    pub fn last_timings(&self) -> Timings {
        self.timings
    }

    /// Make the next sync a full one.
    pub fn force_full(&mut self) {
        self.applied = None;
    }

    /// Bring the kernel to `rs`. On error the previous rules stay in force and the
    /// next sync is a full one.
    pub fn sync(&mut self, rs: &RuleSet) -> Result<Outcome, ApplyError> {
        let t0 = Instant::now();
        let state = State::build(&rs.ports, &self.node, self.applied.as_ref());
        self.timings.state = t0.elapsed();
        self.commit(state, &rs.ports)
    }

    /// Bring the kernel to `ports`, of which only the ids in `changed` differ
    /// from the last sync (`None`: anything may have changed, compare all).
    pub fn sync_ports(
        &mut self,
        ports: &Ports,
        changed: Option<&BTreeSet<String>>,
    ) -> Result<Outcome, ApplyError> {
        let t0 = Instant::now();
        if let Some(ids) = changed
            && !self.full_due()
            && self
                .applied
                .as_ref()
                .is_some_and(|p| p.for_node(&self.node))
            && let Some(mut state) = self.applied.take()
        {
            // The applied state is changed in place (a failed transaction drops
            // it anyway: the next sync is a full one).
            let before = state.change(ids.iter().map(|id| (id.as_str(), ports.get(id))));
            self.timings.state = t0.elapsed();
            let t1 = Instant::now();
            let text = state.render_diff_since(&before);
            self.timings.render = t1.elapsed();
            let Some(text) = text else {
                self.applied = Some(state);
                return Ok(Outcome::Unchanged);
            };
            return self.write(state, Some(text), Outcome::Partial, ports.iter());
        }
        let state = State::build(ports.iter(), &self.node, self.applied.as_ref());
        self.timings.state = t0.elapsed();
        self.commit(state, ports.iter())
    }

    fn full_due(&self) -> bool {
        self.last_full
            .is_none_or(|t| t.elapsed() >= self.full_interval)
    }

    /// Apply `state`: the difference to the applied state, or the whole tables.
    fn commit<'a>(
        &mut self,
        state: State,
        ports: impl IntoIterator<Item = &'a ServicePortRule>,
    ) -> Result<Outcome, ApplyError> {
        let t0 = Instant::now();
        let due = self.full_due();
        let (text, outcome) = match &self.applied {
            Some(old) if !due && state.same_base(old) => match state.render_diff(old) {
                None => return Ok(Outcome::Unchanged),
                Some(t) => (Some(t), Outcome::Partial),
            },
            // The full text is only for reading: a full sync loads the elements
            // over netlink (see `fullsync.rs`).
            _ => (self.explain.then(|| state.render_full()), Outcome::Full),
        };
        self.timings.render = t0.elapsed();
        self.write(state, text, outcome, ports)
    }

    /// Write `state` to the kernel: `text` is the incremental transaction
    /// (Partial) or, with `--explain`, the full table for reading (Full).
    fn write<'a>(
        &mut self,
        mut state: State,
        text: Option<String>,
        outcome: Outcome,
        ports: impl IntoIterator<Item = &'a ServicePortRule>,
    ) -> Result<Outcome, ApplyError> {
        let t1 = Instant::now();
        if self.explain
            && let Some(text) = &text
        {
            let how = if outcome == Outcome::Full {
                "full sync (what the tables hold after it; written as nft -f of the \
                 chains, netlink batches of the elements, then one swap transaction)"
            } else {
                "incremental nft -f transaction"
            };
            println!(
                "# hull proxy: {how} ({} service ports)\n{text}",
                state.ports.len()
            );
        }
        let applied = match (outcome, &text) {
            (Outcome::Partial, Some(text)) => apply::nft_apply(text),
            _ => fullsync::apply(&mut state, self.applied.as_ref().map(|s| s.table)),
        };
        self.timings.apply = t1.elapsed();
        if let Err(e) = applied {
            self.applied = None;
            return Err(e);
        }
        self.applied = Some(state);
        if outcome == Outcome::Full {
            self.last_full = Some(Instant::now());
        }
        let flows = conntrack::udp_flows(ports);
        let gone = self.udp_flows.difference(&flows).cloned().collect();
        if conntrack::delete_flows(&gone) > 0 {
            tracing::warn!("conntrack tool missing: stale UDP flows not flushed");
        }
        self.udp_flows = flows;
        Ok(outcome)
    }
}
