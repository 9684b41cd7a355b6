//! Per-pod mutation locks: calls that change one sandbox or its containers are
//! serialized (two calls never race on one sandbox's records), while different pods
//! are created, started and removed in parallel — a single server-wide lock made 50
//! pods started at once wait for each other's pause process, CNI ADD and container
//! creation one by one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct PodLocks {
    map: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl PodLocks {
    /// Runs `f` holding the lock of sandbox `key`.
    pub fn with<T>(&self, key: &str, f: impl FnOnce() -> T) -> T {
        let l = {
            let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(key.to_string()).or_default().clone()
        };
        let r = {
            let _g = l.lock().unwrap_or_else(|p| p.into_inner());
            f()
        };
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map and our clone hold it: nobody waits, forget the key.
        if Arc::strong_count(&l) == 2 {
            m.remove(key);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn one_key_is_serialized_and_forgotten_after() {
        let locks = Arc::new(PodLocks::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let ts: Vec<_> = (0..8)
            .map(|_| {
                let (locks, inside, max) = (locks.clone(), inside.clone(), max.clone());
                std::thread::spawn(move || {
                    locks.with("pod-a", || {
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(n, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    })
                })
            })
            .collect();
        for t in ts {
            t.join().unwrap();
        }
        assert_eq!(max.load(Ordering::SeqCst), 1);
        assert!(locks.map.lock().unwrap().is_empty());
    }

    #[test]
    fn different_keys_do_not_wait_for_each_other() {
        let locks = Arc::new(PodLocks::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let l2 = locks.clone();
        locks.with("pod-a", move || {
            // Another pod's call completes while pod-a's lock is held.
            std::thread::spawn(move || l2.with("pod-b", || tx.send(()).unwrap()))
                .join()
                .unwrap();
            rx.recv().unwrap();
        });
    }
}
