//! The scheduling queue, as kube-scheduler's: an active heap (higher priority first,
//! then first come), a backoff area for pods that just failed (1 s doubling to 10 s),
//! and an unschedulable set whose pods go back when the cluster changes in a way that
//! could help them — or after a while regardless.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// An unschedulable pod is retried at least this often even if nothing seems to change
/// (time passes: a Lease may have come back, a toleration expired).
pub const UNSCHEDULABLE_FLUSH: Duration = Duration::from_secs(30);

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    priority: i32,
    seq: Reverse<u64>,
    key: String,
}

#[derive(Default)]
pub struct Queue {
    active: BinaryHeap<Entry>,
    /// key → (priority, seq) of pods in `active` (entries popped for a stale seq are skipped).
    queued: HashMap<String, u64>,
    backoff: BTreeSet<(Instant, String)>,
    backoff_until: HashMap<String, Instant>,
    unschedulable: HashMap<String, Instant>,
    attempts: HashMap<String, u32>,
    seq: u64,
}

impl Queue {
    /// Queues a pod for an attempt now (new pods, pods whose spec changed).
    pub fn add(&mut self, key: &str, priority: i32) {
        if self.queued.contains_key(key) {
            return;
        }
        self.unschedulable.remove(key);
        if let Some(t) = self.backoff_until.remove(key) {
            self.backoff.remove(&(t, key.to_string()));
        }
        self.seq += 1;
        self.queued.insert(key.to_string(), self.seq);
        self.active.push(Entry {
            priority,
            seq: Reverse(self.seq),
            key: key.to_string(),
        });
    }

    pub fn pop(&mut self) -> Option<String> {
        while let Some(e) = self.active.pop() {
            if self.queued.get(&e.key) == Some(&e.seq.0) {
                self.queued.remove(&e.key);
                return Some(e.key);
            }
        }
        None
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Forgets a pod (deleted, bound, or no longer ours).
    pub fn remove(&mut self, key: &str) {
        self.queued.remove(key);
        self.unschedulable.remove(key);
        self.attempts.remove(key);
        if let Some(t) = self.backoff_until.remove(key) {
            self.backoff.remove(&(t, key.to_string()));
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.queued.contains_key(key)
            || self.unschedulable.contains_key(key)
            || self.backoff_until.contains_key(key)
    }

    /// A pod no node fits: parked until the cluster changes.
    pub fn unschedulable(&mut self, key: &str) {
        *self.attempts.entry(key.to_string()).or_insert(0) += 1;
        self.unschedulable.insert(key.to_string(), Instant::now());
    }

    /// A pod whose binding failed for another reason: retried after its backoff.
    pub fn retry_later(&mut self, key: &str) {
        *self.attempts.entry(key.to_string()).or_insert(0) += 1;
        self.push_backoff(key);
    }

    fn backoff_of(&self, key: &str) -> Duration {
        let n = self.attempts.get(key).copied().unwrap_or(1).clamp(1, 8);
        (INITIAL_BACKOFF * 2u32.pow(n - 1)).min(MAX_BACKOFF)
    }

    fn push_backoff(&mut self, key: &str) {
        let until = Instant::now() + self.backoff_of(key);
        if let Some(old) = self.backoff_until.insert(key.to_string(), until) {
            self.backoff.remove(&(old, key.to_string()));
        }
        self.backoff.insert((until, key.to_string()));
    }

    /// The cluster changed: every unschedulable pod gets another attempt once its
    /// backoff has passed.
    pub fn move_all(&mut self) {
        let keys: Vec<String> = self.unschedulable.drain().map(|(k, _)| k).collect();
        for k in keys {
            self.push_backoff(&k);
        }
    }

    /// Moves due pods from backoff to active, and long-parked unschedulable pods to backoff.
    /// `priority` looks a pod's priority up (None: the pod is gone).
    pub fn tick(&mut self, priority: impl Fn(&str) -> Option<i32>) {
        let now = Instant::now();
        let stale: Vec<String> = self
            .unschedulable
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= UNSCHEDULABLE_FLUSH)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.unschedulable.remove(&k);
            self.push_backoff(&k);
        }
        while let Some((t, _)) = self.backoff.first() {
            if *t > now {
                break;
            }
            let Some((_, key)) = self.backoff.pop_first() else {
                break;
            };
            self.backoff_until.remove(&key);
            match priority(&key) {
                Some(p) => self.add(&key, p),
                None => self.remove(&key),
            }
        }
    }

    /// The pods parked as unschedulable.
    pub fn unschedulable_keys(&self) -> impl Iterator<Item = &str> {
        self.unschedulable.keys().map(String::as_str)
    }

    /// Counts, for logs and tests: (active, backoff, unschedulable).
    pub fn lens(&self) -> (usize, usize, usize) {
        (
            self.queued.len(),
            self.backoff.len(),
            self.unschedulable.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_priority_first_then_first_come() {
        let mut q = Queue::default();
        q.add("a", 0);
        q.add("b", 10);
        q.add("c", 0);
        q.add("a", 0);
        assert_eq!(q.pop().as_deref(), Some("b"));
        assert_eq!(q.pop().as_deref(), Some("a"));
        assert_eq!(q.pop().as_deref(), Some("c"));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn unschedulable_pods_wait_for_a_change_then_their_backoff() {
        let mut q = Queue::default();
        q.add("a", 0);
        assert_eq!(q.pop().as_deref(), Some("a"));
        q.unschedulable("a");
        q.tick(|_| Some(0));
        assert!(q.pop().is_none(), "parked until the cluster changes");
        q.move_all();
        assert_eq!(q.lens(), (0, 1, 0));
        // A new event for the pod (its spec changed) makes it active at once.
        q.add("a", 0);
        assert_eq!(q.pop().as_deref(), Some("a"));
        assert_eq!(q.lens(), (0, 0, 0));
    }
}
