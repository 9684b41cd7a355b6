//! Resource usage of a container's cgroup, shaped like runc's `events --stats` data so
//! tools written for runc read it, plus the two numbers Kubernetes needs that runc
//! leaves to its callers: the memory working set and the OOM-kill count.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::CgroupError;
use super::fs::{read_flat_keyed, read_opt, read_u64_opt};

/// All statistics of one container.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Stats {
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub pids: PidsStats,
    pub blkio: BlkioStats,
    /// Pressure stall information (v2 tree only, also on hybrid hosts): how much time
    /// tasks waited for CPU, memory or I/O. Kubernetes reports it as `PSI` in CRI stats.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pressure: Option<Pressure>,
}

/// PSI of one cgroup (`cpu.pressure`, `memory.pressure`, `io.pressure`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Pressure {
    pub cpu: PressureStats,
    pub memory: PressureStats,
    pub io: PressureStats,
}

/// "some" = at least one task stalled; "full" = all non-idle tasks stalled.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PressureStats {
    pub some: PressureData,
    pub full: PressureData,
}

/// Stall percentages over 10/60/300 s windows and the total stall time in µs.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PressureData {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total: u64,
}

/// Reads PSI from a v2 cgroup directory; `None` when the kernel has PSI off.
pub fn read_pressure(dir: &Path) -> Result<Option<Pressure>, CgroupError> {
    let parse = |file: &str| -> Result<Option<PressureStats>, CgroupError> {
        let Some(text) = read_opt(dir, file)? else {
            return Ok(None);
        };
        let mut st = PressureStats::default();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let slot = match it.next() {
                Some("some") => &mut st.some,
                Some("full") => &mut st.full,
                _ => continue,
            };
            for kv in it {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let bad = || CgroupError::Parse {
                    path: dir.join(file),
                    reason: format!("bad value in {kv:?}"),
                };
                match k {
                    "avg10" => slot.avg10 = v.parse().map_err(|_| bad())?,
                    "avg60" => slot.avg60 = v.parse().map_err(|_| bad())?,
                    "avg300" => slot.avg300 = v.parse().map_err(|_| bad())?,
                    "total" => slot.total = v.parse().map_err(|_| bad())?,
                    _ => {}
                }
            }
        }
        Ok(Some(st))
    };
    let (Some(cpu), memory, io) = (
        parse("cpu.pressure")?,
        parse("memory.pressure")?,
        parse("io.pressure")?,
    ) else {
        return Ok(None);
    };
    Ok(Some(Pressure {
        cpu,
        memory: memory.unwrap_or_default(),
        io: io.unwrap_or_default(),
    }))
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CpuStats {
    pub usage: CpuUsage,
    pub throttling: Throttling,
}

/// CPU time in nanoseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CpuUsage {
    pub total: u64,
    /// per-CPU totals (v1 only; v2 does not account per CPU).
    #[serde(rename = "percpu", skip_serializing_if = "Vec::is_empty")]
    pub per_cpu: Vec<u64>,
    /// time in kernel mode ("system").
    pub kernel: u64,
    pub user: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Throttling {
    pub periods: u64,
    pub throttled_periods: u64,
    /// nanoseconds spent throttled.
    pub throttled_time: u64,
}

/// One usage/limit pair (bytes). `limit` is `u64::MAX` when unlimited.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct MemoryData {
    pub usage: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failcnt: Option<u64>,
    pub limit: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// page cache bytes.
    pub cache: u64,
    /// anonymous memory (v1 `rss`, v2 `anon`).
    pub rss: u64,
    /// usage minus inactive file pages: what kubelet evicts on and `kubectl top` shows.
    pub working_set: u64,
    pub usage: MemoryData,
    /// swap alone on v2; memory+swap on v1 (as the kernel reports it).
    pub swap: MemoryData,
    /// times the cgroup hit its limit and reclaim failed (v2 `oom`; v1 failcnt).
    pub oom: u64,
    /// processes the kernel OOM killer killed in this cgroup.
    pub oom_kill: u64,
    /// memory.stat as the kernel wrote it.
    pub raw: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PidsStats {
    pub current: u64,
    /// 0 when unlimited, as runc reports it.
    pub limit: u64,
}

/// One `major:minor op value` row, runc's blkio entry.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BlkioEntry {
    pub major: u64,
    pub minor: u64,
    pub op: String,
    pub value: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BlkioStats {
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    pub io_serviced_recursive: Vec<BlkioEntry>,
}

fn usec_to_ns(v: u64) -> u64 {
    v.saturating_mul(1000)
}

/// Reads stats from a v2 cgroup directory.
pub fn read_v2(dir: &Path) -> Result<Stats, CgroupError> {
    let mut s = Stats::default();
    let cpu = read_flat_keyed(dir, "cpu.stat")?;
    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    s.cpu.usage.total = usec_to_ns(get(&cpu, "usage_usec"));
    s.cpu.usage.user = usec_to_ns(get(&cpu, "user_usec"));
    s.cpu.usage.kernel = usec_to_ns(get(&cpu, "system_usec"));
    s.cpu.throttling.periods = get(&cpu, "nr_periods");
    s.cpu.throttling.throttled_periods = get(&cpu, "nr_throttled");
    s.cpu.throttling.throttled_time = usec_to_ns(get(&cpu, "throttled_usec"));
    read_v2_memory(dir, &mut s.memory)?;
    s.pids = read_pids(dir)?;
    s.blkio = read_io_stat(dir)?;
    s.pressure = read_pressure(dir)?;
    Ok(s)
}

/// Memory of a v2 cgroup (also used for the unified side of a hybrid host when the
/// memory controller lives there).
pub fn read_v2_memory(dir: &Path, m: &mut MemoryStats) -> Result<(), CgroupError> {
    m.raw = read_flat_keyed(dir, "memory.stat")?;
    let get = |k: &str| m.raw.get(k).copied().unwrap_or(0);
    m.cache = get("file");
    m.rss = get("anon");
    let inactive = get("inactive_file");
    m.usage.usage = read_u64_opt(dir, "memory.current")?.unwrap_or(0);
    m.usage.max = read_u64_opt(dir, "memory.peak")?;
    m.usage.limit = read_u64_opt(dir, "memory.max")?.unwrap_or(u64::MAX);
    m.swap.usage = read_u64_opt(dir, "memory.swap.current")?.unwrap_or(0);
    m.swap.max = read_u64_opt(dir, "memory.swap.peak")?;
    m.swap.limit = read_u64_opt(dir, "memory.swap.max")?.unwrap_or(u64::MAX);
    m.working_set = m.usage.usage.saturating_sub(inactive);
    let events = read_flat_keyed(dir, "memory.events")?;
    m.oom = events.get("oom").copied().unwrap_or(0);
    m.oom_kill = events.get("oom_kill").copied().unwrap_or(0);
    Ok(())
}

/// pids.current / pids.max (same files on v1 and v2).
pub fn read_pids(dir: &Path) -> Result<PidsStats, CgroupError> {
    Ok(PidsStats {
        current: read_u64_opt(dir, "pids.current")?.unwrap_or(0),
        limit: match read_u64_opt(dir, "pids.max")? {
            Some(u64::MAX) | None => 0,
            Some(v) => v,
        },
    })
}

/// v2 io.stat: `8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0`.
fn read_io_stat(dir: &Path) -> Result<BlkioStats, CgroupError> {
    let mut b = BlkioStats::default();
    let Some(text) = read_opt(dir, "io.stat")? else {
        return Ok(b);
    };
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some((major, minor)) = it.next().and_then(parse_dev) else {
            continue;
        };
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(value) = v.parse::<u64>() else {
                continue;
            };
            let (list, op) = match k {
                "rbytes" => (&mut b.io_service_bytes_recursive, "Read"),
                "wbytes" => (&mut b.io_service_bytes_recursive, "Write"),
                "rios" => (&mut b.io_serviced_recursive, "Read"),
                "wios" => (&mut b.io_serviced_recursive, "Write"),
                _ => continue,
            };
            list.push(BlkioEntry {
                major,
                minor,
                op: op.into(),
                value,
            });
        }
    }
    Ok(b)
}

fn parse_dev(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// v1 cpuacct: usage in ns; user/system in USER_HZ ticks.
pub fn read_v1_cpu(cpu: Option<&Path>, cpuacct: Option<&Path>) -> Result<CpuStats, CgroupError> {
    let mut c = CpuStats::default();
    if let Some(d) = cpuacct {
        c.usage.total = read_u64_opt(d, "cpuacct.usage")?.unwrap_or(0);
        if let Some(per) = read_opt(d, "cpuacct.usage_percpu")? {
            c.usage.per_cpu = per
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
        }
        let stat = read_flat_keyed(d, "cpuacct.stat")?;
        // SAFETY: sysconf has no memory-safety preconditions.
        let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
            v if v > 0 => v as u64,
            _ => 100,
        };
        let ticks_to_ns = |t: u64| t.saturating_mul(1_000_000_000 / hz);
        c.usage.user = ticks_to_ns(stat.get("user").copied().unwrap_or(0));
        c.usage.kernel = ticks_to_ns(stat.get("system").copied().unwrap_or(0));
    }
    if let Some(d) = cpu {
        let stat = read_flat_keyed(d, "cpu.stat")?;
        c.throttling.periods = stat.get("nr_periods").copied().unwrap_or(0);
        c.throttling.throttled_periods = stat.get("nr_throttled").copied().unwrap_or(0);
        c.throttling.throttled_time = stat.get("throttled_time").copied().unwrap_or(0);
    }
    Ok(c)
}

/// v1 memory controller.
pub fn read_v1_memory(d: &Path) -> Result<MemoryStats, CgroupError> {
    let mut m = MemoryStats {
        raw: read_flat_keyed(d, "memory.stat")?,
        ..Default::default()
    };
    let get = |k: &str| m.raw.get(k).copied().unwrap_or(0);
    // total_* include sub-cgroups, which is what a container's usage means.
    m.cache = get("total_cache");
    m.rss = get("total_rss");
    let inactive = get("total_inactive_file");
    let unlimited = |v: Option<u64>| match v {
        // v1 reports "no limit" as the largest page-aligned i64.
        Some(v) if v < (i64::MAX as u64) & !4095 => v,
        _ => u64::MAX,
    };
    m.usage = MemoryData {
        usage: read_u64_opt(d, "memory.usage_in_bytes")?.unwrap_or(0),
        max: read_u64_opt(d, "memory.max_usage_in_bytes")?,
        failcnt: read_u64_opt(d, "memory.failcnt")?,
        limit: unlimited(read_u64_opt(d, "memory.limit_in_bytes")?),
    };
    m.swap = MemoryData {
        usage: read_u64_opt(d, "memory.memsw.usage_in_bytes")?.unwrap_or(0),
        max: read_u64_opt(d, "memory.memsw.max_usage_in_bytes")?,
        failcnt: read_u64_opt(d, "memory.memsw.failcnt")?,
        limit: unlimited(read_u64_opt(d, "memory.memsw.limit_in_bytes")?),
    };
    m.working_set = m.usage.usage.saturating_sub(inactive);
    m.oom = m.usage.failcnt.unwrap_or(0);
    m.oom_kill = read_flat_keyed(d, "memory.oom_control")?
        .get("oom_kill")
        .copied()
        .unwrap_or(0);
    Ok(m)
}

/// v1 blkio: `8:0 Read 4096` rows plus a `Total` row.
pub fn read_v1_blkio(d: &Path) -> Result<BlkioStats, CgroupError> {
    let parse = |file: &str| -> Result<Vec<BlkioEntry>, CgroupError> {
        let mut out = Vec::new();
        // The throttle files count I/O even when no proportional scheduler is active.
        for line in read_opt(d, file)?.unwrap_or_default().lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let [dev, op, value] = f[..]
                && let (Some((major, minor)), Ok(value)) = (parse_dev(dev), value.parse())
            {
                out.push(BlkioEntry {
                    major,
                    minor,
                    op: op.into(),
                    value,
                });
            }
        }
        Ok(out)
    };
    Ok(BlkioStats {
        io_service_bytes_recursive: parse("blkio.throttle.io_service_bytes_recursive")?,
        io_serviced_recursive: parse("blkio.throttle.io_serviced_recursive")?,
    })
}
