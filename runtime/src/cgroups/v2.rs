//! OCI `linux.resources` → cgroup v2 files (the unified hierarchy).
//!
//! The OCI spec speaks v1 (cpu shares, blkio weight 10–1000, memory+swap), so most
//! values are converted. The conversions are the ones runc and crun use, so a
//! container gets the same limits whichever runtime starts it. [`plan`] is pure (it
//! only decides file → value) so every conversion is unit-tested without a kernel.

use oci_spec::runtime::LinuxResources;

use super::CgroupError;

/// Controllers hull asks parents to delegate (`cgroup.subtree_control`), in the order
/// the kernel documentation lists them.
pub const CONTROLLERS: &[&str] = &["cpuset", "cpu", "io", "memory", "hugetlb", "pids"];

/// One file write: `(file name, value)`.
pub type Write = (String, String);

/// cpu.shares (2–262144, default 1024) → cpu.weight (1–10000, default 100), the linear
/// map runc, crun and the Kubernetes KEP use: 2 → 1, 262144 → 10000.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// blkio.weight (10–1000) → io.weight (1–10000), same linear idea.
pub fn blkio_to_io_weight(weight: u16) -> u64 {
    let w = u64::from(weight).clamp(10, 1000);
    1 + ((w - 10) * 9999) / 990
}

/// OCI memory.swap is memory+swap (v1 semantics); v2's memory.swap.max is swap alone.
/// Returns `None` when nothing should be written.
pub fn swap_max(limit: Option<i64>, swap: Option<i64>) -> Result<Option<String>, CgroupError> {
    let Some(swap) = swap else {
        return Ok(None);
    };
    let invalid = |reason: &str| CgroupError::Invalid {
        field: "linux.resources.memory.swap".into(),
        reason: reason.into(),
    };
    match (swap, limit) {
        (-1, _) => Ok(Some("max".into())),
        (0, _) => Ok(None),
        (s, _) if s < 0 => Err(invalid("must be -1 (unlimited) or a byte count")),
        (_, None | Some(0) | Some(-1)) => Err(invalid(
            "a swap limit needs a memory limit (OCI swap is memory+swap)",
        )),
        (s, Some(l)) if s < l => Err(invalid(&format!(
            "memory+swap {s} is smaller than the memory limit {l}"
        ))),
        (s, Some(l)) => Ok(Some((s - l).to_string())),
    }
}

fn limit_str(v: i64) -> String {
    if v < 0 { "max".into() } else { v.to_string() }
}

/// Decides every file to write for `r`. `has(file)` says whether the cgroup has that
/// file (io.bfq.weight exists only with the BFQ scheduler).
pub fn plan(r: &LinuxResources, has: &dyn Fn(&str) -> bool) -> Result<Vec<Write>, CgroupError> {
    let mut w: Vec<Write> = Vec::new();
    let mut put = |f: &str, v: String| w.push((f.to_string(), v));

    if let Some(cpu) = r.cpu() {
        if let Some(shares) = cpu.shares().filter(|s| *s != 0) {
            put("cpu.weight", shares_to_weight(shares).to_string());
        }
        let quota = cpu.quota().filter(|q| *q != 0);
        let period = cpu.period().filter(|p| *p != 0);
        if quota.is_some() || period.is_some() {
            let q = match quota {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".into(),
            };
            put("cpu.max", format!("{q} {}", period.unwrap_or(100_000)));
        }
        if let Some(burst) = cpu.burst() {
            put("cpu.max.burst", burst.to_string());
        }
        if let Some(idle) = cpu.idle() {
            put("cpu.idle", idle.to_string());
        }
        if cpu.realtime_runtime().is_some_and(|v| v != 0)
            || cpu.realtime_period().is_some_and(|v| v != 0)
        {
            return Err(CgroupError::Invalid {
                field: "linux.resources.cpu.realtimeRuntime".into(),
                reason: "realtime scheduling limits do not exist on cgroup v2".into(),
            });
        }
        if let Some(cpus) = cpu.cpus().as_deref().filter(|s| !s.is_empty()) {
            put("cpuset.cpus", cpus.to_string());
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|s| !s.is_empty()) {
            put("cpuset.mems", mems.to_string());
        }
    }

    if let Some(mem) = r.memory() {
        let swap = swap_max(mem.limit(), mem.swap())?;
        if let Some(l) = mem.limit().filter(|l| *l != 0) {
            put("memory.max", limit_str(l));
        }
        if let Some(s) = swap {
            put("memory.swap.max", s);
        }
        if let Some(res) = mem.reservation().filter(|r| *r != 0) {
            put("memory.low", limit_str(res));
        }
        if mem.swappiness().is_some() {
            tracing::warn!(
                "linux.resources.memory.swappiness is ignored: cgroup v2 has no per-cgroup swappiness"
            );
        }
        if mem.disable_oom_killer() == Some(true) {
            tracing::warn!(
                "linux.resources.memory.disableOOMKiller is ignored: cgroup v2 cannot disable the OOM killer"
            );
        }
    }

    if let Some(pids) = r.pids()
        && pids.limit() != 0
    {
        put("pids.max", limit_str(pids.limit()));
    }

    if let Some(bio) = r.block_io() {
        let bfq = has("io.bfq.weight");
        if let Some(weight) = bio.weight().filter(|w| *w != 0) {
            if bfq {
                // BFQ takes the v1 range (1–1000) as is.
                put("io.bfq.weight", weight.to_string());
            } else {
                put("io.weight", blkio_to_io_weight(weight).to_string());
            }
        }
        for d in bio.weight_device().iter().flatten() {
            if let Some(weight) = d.weight() {
                let (file, v) = if bfq {
                    ("io.bfq.weight", u64::from(weight))
                } else {
                    ("io.weight", blkio_to_io_weight(weight))
                };
                put(file, format!("{}:{} {v}", d.major(), d.minor()));
            }
        }
        let throttles = [
            ("rbps", bio.throttle_read_bps_device()),
            ("wbps", bio.throttle_write_bps_device()),
            ("riops", bio.throttle_read_iops_device()),
            ("wiops", bio.throttle_write_iops_device()),
        ];
        for (key, devs) in throttles {
            for d in devs.iter().flatten() {
                let rate = if d.rate() == 0 {
                    "max".to_string()
                } else {
                    d.rate().to_string()
                };
                put(
                    "io.max",
                    format!("{}:{} {key}={rate}", d.major(), d.minor()),
                );
            }
        }
    }

    // Kubelet sends a limit for every page size of the node on every container, so a
    // host without the hugetlb controller skips them (as runc does); with the
    // controller, an unknown page size is an error.
    let hugetlb_present = ["2MB", "1GB", "64KB", "32MB", "512MB", "16GB", "1MB", "4MB"]
        .iter()
        .any(|size| has(&format!("hugetlb.{size}.max")));
    for (i, h) in r.hugepage_limits().iter().flatten().enumerate() {
        let file = format!("hugetlb.{}.max", h.page_size());
        if has(&file) {
            put(&file, limit_str(h.limit()));
        } else if hugetlb_present {
            return Err(CgroupError::Invalid {
                field: format!("linux.resources.hugepageLimits[{i}].pageSize"),
                reason: format!("{:?} is not a huge page size of this host", h.page_size()),
            });
        } else {
            tracing::warn!("linux.resources.hugepageLimits ignored: no hugetlb controller");
            break;
        }
    }

    if let Some(unified) = r.unified() {
        let mut keys: Vec<_> = unified.iter().collect();
        keys.sort();
        for (k, v) in keys {
            if k.is_empty() || k.contains('/') || k.starts_with('.') || !k.contains('.') {
                return Err(CgroupError::Invalid {
                    field: format!("linux.resources.unified[{k:?}]"),
                    reason: "not a cgroup v2 file name (like \"memory.high\")".into(),
                });
            }
            put(k, v.clone());
        }
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_match_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1), 1);
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(500), 4950);
        assert_eq!(blkio_to_io_weight(1000), 10_000);
        assert_eq!(swap_max(Some(100), Some(300)).unwrap(), Some("200".into()));
        assert_eq!(swap_max(Some(100), Some(-1)).unwrap(), Some("max".into()));
        assert_eq!(swap_max(Some(100), None).unwrap(), None);
        let e = swap_max(Some(300), Some(100)).unwrap_err().to_string();
        assert!(e.contains("linux.resources.memory.swap"), "{e}");
        assert!(swap_max(None, Some(100)).is_err());
    }
}
