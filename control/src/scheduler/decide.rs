//! One scheduling decision, apart from the loop that feeds it: filter a sample of the
//! nodes (kube's `percentageOfNodesToScore`, starting where the previous pod stopped),
//! score the feasible ones, pick the best (ties at random). Pure over the cache, so the
//! benchmark can time it alone.

use std::sync::Arc;

use rand::Rng;

use super::cache::{Cache, NodeInfo, PodInfo};
use super::filter::PodState;
use super::{feasible_to_find, message, score};

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Bind to this node.
    Node(String),
    /// No node fits: the `0/N nodes are available: ...` text.
    Unschedulable(String),
}

/// Decides where `pod` goes. `next_start` is where the sample begins and is moved past
/// the nodes this attempt examined, so every node gets its turn.
pub fn decide(cache: &Cache, pod: Arc<PodInfo>, next_start: &mut usize) -> Decision {
    let st = PodState::new(cache, pod);
    let total = cache.order.len();
    let want = feasible_to_find(total);
    let start = if total == 0 { 0 } else { *next_start % total };
    let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(want.min(total));
    let mut failed = Vec::new();
    let mut processed = 0;
    for i in 0..total {
        let name = &cache.order[(start + i) % total];
        let Some(node) = cache.nodes.get(name) else {
            continue;
        };
        processed += 1;
        match st.filter(cache, node) {
            Ok(()) => {
                feasible.push(node);
                if feasible.len() >= want {
                    break;
                }
            }
            Err(reasons) => failed.push(reasons),
        }
    }
    *next_start = if total == 0 {
        0
    } else {
        (start + processed) % total
    };
    if feasible.is_empty() {
        let never = st
            .pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.preemption_policy.as_deref())
            == Some("Never");
        return Decision::Unschedulable(message::unschedulable(total, &failed, never));
    }
    if feasible.len() == 1 {
        return Decision::Node(feasible[0].name.clone());
    }
    let scorer = score::Scorer::new(cache, &st);
    let raws: Vec<score::Raw> = feasible.iter().map(|n| scorer.raw(n)).collect();
    let totals = score::totals(&raws);
    // The best score wins; ties are broken at random (reservoir sampling) so equal
    // nodes share the load.
    let mut rng = rand::rng();
    let (mut best, mut best_score, mut ties) = (0, f64::MIN, 0u32);
    for (i, s) in totals.iter().enumerate() {
        if *s > best_score + 1e-9 {
            (best, best_score, ties) = (i, *s, 1);
        } else if (*s - best_score).abs() <= 1e-9 {
            ties += 1;
            if rng.random_range(0..ties) == 0 {
                best = i;
            }
        }
    }
    Decision::Node(feasible[best].name.clone())
}
