//! Process-wide scheduler counters, read by the benchmark and logged: how many attempts
//! (scheduled / unschedulable), the time spent deciding (filter + score) and the time a
//! binding call takes — so a slow run says whether the scheduler or the API is the
//! bottleneck. Decisions are timed twice: wall clock, and the thread's own CPU time,
//! which a busy machine does not inflate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default)]
pub struct Metrics {
    pub scheduled: AtomicU64,
    pub unschedulable: AtomicU64,
    pub decide_nanos: AtomicU64,
    pub decide_cpu_nanos: AtomicU64,
    pub binds: AtomicU64,
    pub bind_errors: AtomicU64,
    pub bind_nanos: AtomicU64,
    pub bind_max_nanos: AtomicU64,
}

pub static METRICS: Metrics = Metrics {
    scheduled: AtomicU64::new(0),
    unschedulable: AtomicU64::new(0),
    decide_nanos: AtomicU64::new(0),
    decide_cpu_nanos: AtomicU64::new(0),
    binds: AtomicU64::new(0),
    bind_errors: AtomicU64::new(0),
    bind_nanos: AtomicU64::new(0),
    bind_max_nanos: AtomicU64::new(0),
};

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Metrics {
    pub fn attempt(&self, took: Duration, cpu: Duration, scheduled: bool) {
        let n = if scheduled {
            &self.scheduled
        } else {
            &self.unschedulable
        };
        n.fetch_add(1, Ordering::Relaxed);
        self.decide_nanos.fetch_add(nanos(took), Ordering::Relaxed);
        self.decide_cpu_nanos
            .fetch_add(nanos(cpu), Ordering::Relaxed);
    }

    pub fn bind(&self, took: Duration, ok: bool) {
        self.binds.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.bind_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.bind_nanos.fetch_add(nanos(took), Ordering::Relaxed);
        self.bind_max_nanos
            .fetch_max(nanos(took), Ordering::Relaxed);
    }

    /// One line: attempts, mean decision time, mean and max binding call time.
    pub fn summary(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let attempts = get(&self.scheduled) + get(&self.unschedulable);
        let binds = get(&self.binds).max(1);
        format!(
            "{} scheduled, {} unschedulable attempts; decision mean {:.0} µs ({:.0} µs CPU); binding call mean {:.1} ms, max {:.0} ms ({} errors)",
            get(&self.scheduled),
            get(&self.unschedulable),
            get(&self.decide_nanos) as f64 / attempts.max(1) as f64 / 1e3,
            get(&self.decide_cpu_nanos) as f64 / attempts.max(1) as f64 / 1e3,
            get(&self.bind_nanos) as f64 / binds as f64 / 1e6,
            get(&self.bind_max_nanos) as f64 / 1e6,
            get(&self.bind_errors),
        )
    }
}

/// The calling thread's CPU time since [`start`](Self::start) (zero where the clock is
/// unavailable). A decision never awaits, so it runs on one thread throughout.
pub struct ThreadCpu(Duration);

impl ThreadCpu {
    pub fn start() -> ThreadCpu {
        ThreadCpu(thread_cpu())
    }

    pub fn elapsed(&self) -> Duration {
        thread_cpu().saturating_sub(self.0)
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}
