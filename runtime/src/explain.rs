//! `--explain`: narrates each kernel step (clone flags, mounts, pivot_root, cgroup
//! writes, capability sets, seccomp load) on stderr as it happens.
//!
//! hull is also for people learning how containers work; this switch lets them watch
//! a container being assembled. It is a process-wide flag because the steps happen in
//! forked children where threading a context through every call would obscure the code.

use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns narration on or off for this process and the children it forks.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether narration is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Writes one narrated step. Uses a single `write(2)` so lines from the runtime and its
/// forked children do not interleave mid-line.
pub fn step(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let line = format!("[explain] {args}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `explain!("mount {} on {}", src, dst)`: narrates a kernel step when `--explain` is on.
#[macro_export]
macro_rules! explain {
    ($($arg:tt)*) => {
        if $crate::explain::enabled() {
            $crate::explain::step(format_args!($($arg)*));
        }
    };
}
