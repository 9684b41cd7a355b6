//! `--explain` / `HULL_EXPLAIN=1`: narrate each kernel step on stderr, for learners and
//! for debugging a plugin that containerd exec'd with fixed arguments.

use std::sync::atomic::{AtomicBool, Ordering};

static ON: AtomicBool = AtomicBool::new(false);

pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Prints one step when explaining is on; the closure keeps formatting off the fast path.
pub fn step(f: impl FnOnce() -> String) {
    if enabled() {
        eprintln!("hull-bridge: {}", f());
    }
}
