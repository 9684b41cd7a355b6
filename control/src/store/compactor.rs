//! The periodic compactor: keeps the store's history bounded.
//!
//! Every write leaves a revision behind (a row in SQLite's log, a revision in etcd's MVCC).
//! Like kube-apiserver, hull compacts to a revision it saw `keep_for` ago, so watchers a
//! few minutes behind can still resume, and keeps at least `keep_revisions` revisions so a
//! burst of writes does not push a slow watcher into `410 Gone` immediately. Compacting is
//! idempotent, so several servers on one etcd may each run a compactor.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::{Revision, Store};

#[derive(Debug, Clone)]
pub struct CompactorConfig {
    /// How often to sample the revision and compact.
    pub interval: Duration,
    /// History younger than this is kept.
    pub keep_for: Duration,
    /// At least this many of the newest revisions are kept.
    pub keep_revisions: i64,
}

impl Default for CompactorConfig {
    fn default() -> Self {
        CompactorConfig {
            interval: Duration::from_secs(60),
            keep_for: Duration::from_secs(5 * 60),
            keep_revisions: 10_000,
        }
    }
}

/// Revisions seen over time, oldest first.
#[derive(Debug, Default)]
pub struct Samples(VecDeque<(Instant, Revision)>);

impl Samples {
    pub fn record(&mut self, at: Instant, revision: Revision) {
        self.0.push_back((at, revision));
    }

    /// The revision to compact to now, if any: the newest revision seen at least `keep_for`
    /// ago, lowered to keep `keep_revisions` below `current`. Samples no longer needed are
    /// dropped.
    pub fn target(
        &mut self,
        now: Instant,
        current: Revision,
        config: &CompactorConfig,
    ) -> Option<Revision> {
        let old_enough = |at: Instant| now.saturating_duration_since(at) >= config.keep_for;
        // Keep only the newest old-enough sample; the ones before it are superseded.
        while self.0.len() >= 2 && self.0.get(1).is_some_and(|&(at, _)| old_enough(at)) {
            self.0.pop_front();
        }
        let &(at, seen) = self.0.front()?;
        if !old_enough(at) {
            return None;
        }
        let target = seen.min(current - config.keep_revisions);
        (target > 0).then_some(target)
    }
}

/// Runs the compactor until the returned task is aborted.
pub fn spawn_compactor(store: Arc<dyn Store>, config: CompactorConfig) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut samples = Samples::default();
        let mut compacted: Revision = 0;
        let mut ticker = tokio::time::interval(config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let current = match store.current_revision().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "compactor: cannot read the current revision");
                    continue;
                }
            };
            let now = Instant::now();
            samples.record(now, current);
            let Some(target) = samples.target(now, current, &config) else {
                continue;
            };
            if target <= compacted {
                continue;
            }
            match store.compact(target).await {
                Ok(()) => {
                    tracing::debug!(revision = target, "compactor: compacted");
                    compacted = target;
                }
                Err(e) => {
                    tracing::warn!(error = %e, revision = target, "compactor: compaction failed")
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CompactorConfig {
        CompactorConfig {
            interval: Duration::from_secs(1),
            keep_for: Duration::from_secs(300),
            keep_revisions: 100,
        }
    }

    #[test]
    fn nothing_is_compacted_before_keep_for_has_passed() {
        let t0 = Instant::now();
        let mut s = Samples::default();
        s.record(t0, 1000);
        assert_eq!(
            s.target(t0 + Duration::from_secs(299), 5000, &config()),
            None
        );
    }

    #[test]
    fn compacts_to_the_revision_seen_keep_for_ago() {
        let t0 = Instant::now();
        let mut s = Samples::default();
        s.record(t0, 1000);
        s.record(t0 + Duration::from_secs(60), 2000);
        s.record(t0 + Duration::from_secs(400), 3000);
        // At t0+370 the sample from t0+60 is 310 s old: the newest old-enough one.
        assert_eq!(
            s.target(t0 + Duration::from_secs(370), 5000, &config()),
            Some(2000)
        );
        assert_eq!(s.0.len(), 2, "superseded samples are dropped");
    }

    #[test]
    fn keeps_at_least_keep_revisions() {
        let t0 = Instant::now();
        let mut s = Samples::default();
        s.record(t0, 1000);
        assert_eq!(
            s.target(t0 + Duration::from_secs(600), 1050, &config()),
            Some(950)
        );
        assert_eq!(s.target(t0 + Duration::from_secs(600), 50, &config()), None);
    }
}
