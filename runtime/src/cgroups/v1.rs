//! OCI `linux.resources` → cgroup v1 controller files.
//!
//! v1 is where the OCI names come from, so values go in mostly as they are; the work
//! is in ordering (memory vs memory+swap), in files that may be missing (swap
//! accounting, BFQ), and in cpuset's rule that a cgroup has no CPUs until given some.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use super::CgroupError;
use super::fs::{read_opt, write};

/// Makes a newly created cpuset cgroup usable: v1 cpusets start with empty
/// `cpuset.cpus`/`cpuset.mems`, and adding a task to such a cgroup fails with ENOSPC.
/// Copies the parent's values into each level that is still empty, top-down.
pub fn init_cpuset(root: &Path, leaf: &Path) -> Result<(), CgroupError> {
    let Ok(rel) = leaf.strip_prefix(root) else {
        return Ok(());
    };
    let mut parent = root.to_path_buf();
    let mut cur = root.to_path_buf();
    for comp in rel.components() {
        cur.push(comp);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if read_opt(&cur, file)?.is_some_and(|v| v.is_empty())
                && let Some(pv) = read_opt(&parent, file)?
            {
                write(&cur, file, &pv)?;
            }
        }
        parent = cur.clone();
    }
    Ok(())
}

fn limit_str(v: i64) -> String {
    // v1 takes -1 for "no limit" in the byte-count files.
    if v < 0 { "-1".into() } else { v.to_string() }
}

/// Applies `r` to the v1 cgroup directories in `dirs` (controller → directory).
pub fn apply(dirs: &BTreeMap<String, PathBuf>, r: &LinuxResources) -> Result<(), CgroupError> {
    let dir = |c: &str| dirs.get(c).map(PathBuf::as_path);
    let need = |c: &'static str, field: &str| {
        dir(c).ok_or_else(|| CgroupError::Unsupported {
            field: field.to_string(),
            reason: format!("the v1 {c} controller is not mounted on this host"),
        })
    };

    if let Some(mem) = r.memory() {
        let d = need("memory", "linux.resources.memory")?;
        apply_memory(d, mem.limit(), mem.swap())?;
        if let Some(res) = mem.reservation().filter(|v| *v != 0) {
            write(d, "memory.soft_limit_in_bytes", &limit_str(res))?;
        }
        if let Some(tcp) = mem.kernel_tcp().filter(|v| *v != 0) {
            write(d, "memory.kmem.tcp.limit_in_bytes", &limit_str(tcp))?;
        }
        if let Some(sw) = mem.swappiness() {
            if sw > 100 {
                return Err(CgroupError::Invalid {
                    field: "linux.resources.memory.swappiness".into(),
                    reason: format!("{sw} is out of range 0-100"),
                });
            }
            write(d, "memory.swappiness", &sw.to_string())?;
        }
        if mem.disable_oom_killer() == Some(true) {
            write(d, "memory.oom_control", "1")?;
        }
    }

    if let Some(cpu) = r.cpu() {
        if let Some(shares) = cpu.shares().filter(|v| *v != 0) {
            write(
                need("cpu", "linux.resources.cpu.shares")?,
                "cpu.shares",
                &shares.to_string(),
            )?;
        }
        // Period before quota: the kernel validates quota against the current period.
        if let Some(period) = cpu.period().filter(|v| *v != 0) {
            write(
                need("cpu", "linux.resources.cpu.period")?,
                "cpu.cfs_period_us",
                &period.to_string(),
            )?;
        }
        if let Some(quota) = cpu.quota().filter(|v| *v != 0) {
            write(
                need("cpu", "linux.resources.cpu.quota")?,
                "cpu.cfs_quota_us",
                &limit_str(quota),
            )?;
        }
        if let Some(burst) = cpu.burst() {
            write(
                need("cpu", "linux.resources.cpu.burst")?,
                "cpu.cfs_burst_us",
                &burst.to_string(),
            )?;
        }
        if let Some(idle) = cpu.idle() {
            write(
                need("cpu", "linux.resources.cpu.idle")?,
                "cpu.idle",
                &idle.to_string(),
            )?;
        }
        if let Some(p) = cpu.realtime_period().filter(|v| *v != 0) {
            write(
                need("cpu", "linux.resources.cpu.realtimePeriod")?,
                "cpu.rt_period_us",
                &p.to_string(),
            )?;
        }
        if let Some(rt) = cpu.realtime_runtime().filter(|v| *v != 0) {
            write(
                need("cpu", "linux.resources.cpu.realtimeRuntime")?,
                "cpu.rt_runtime_us",
                &rt.to_string(),
            )?;
        }
        if let Some(cpus) = cpu.cpus().as_deref().filter(|s| !s.is_empty()) {
            write(
                need("cpuset", "linux.resources.cpu.cpus")?,
                "cpuset.cpus",
                cpus,
            )?;
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|s| !s.is_empty()) {
            write(
                need("cpuset", "linux.resources.cpu.mems")?,
                "cpuset.mems",
                mems,
            )?;
        }
    }

    if let Some(pids) = r.pids()
        && pids.limit() != 0
    {
        let v = if pids.limit() < 0 {
            "max".to_string()
        } else {
            pids.limit().to_string()
        };
        write(need("pids", "linux.resources.pids.limit")?, "pids.max", &v)?;
    }

    if let Some(bio) = r.block_io() {
        let d = need("blkio", "linux.resources.blockIO")?;
        // Kernels whose only proportional scheduler is BFQ name the file blkio.bfq.weight.
        let weight_file = if d.join("blkio.weight").exists() {
            "blkio.weight"
        } else {
            "blkio.bfq.weight"
        };
        if let Some(w) = bio.weight().filter(|v| *v != 0) {
            write(d, weight_file, &w.to_string())?;
        }
        if let Some(w) = bio.leaf_weight().filter(|v| *v != 0) {
            write(d, "blkio.leaf_weight", &w.to_string())?;
        }
        for wd in bio.weight_device().iter().flatten() {
            if let Some(w) = wd.weight() {
                let file = format!("{weight_file}_device");
                write(d, &file, &format!("{}:{} {w}", wd.major(), wd.minor()))?;
            }
            if let Some(w) = wd.leaf_weight() {
                write(
                    d,
                    "blkio.leaf_weight_device",
                    &format!("{}:{} {w}", wd.major(), wd.minor()),
                )?;
            }
        }
        let throttles = [
            (
                "blkio.throttle.read_bps_device",
                bio.throttle_read_bps_device(),
            ),
            (
                "blkio.throttle.write_bps_device",
                bio.throttle_write_bps_device(),
            ),
            (
                "blkio.throttle.read_iops_device",
                bio.throttle_read_iops_device(),
            ),
            (
                "blkio.throttle.write_iops_device",
                bio.throttle_write_iops_device(),
            ),
        ];
        for (file, devs) in throttles {
            for t in devs.iter().flatten() {
                write(
                    d,
                    file,
                    &format!("{}:{} {}", t.major(), t.minor(), t.rate()),
                )?;
            }
        }
    }

    // Without a v1 hugetlb controller the caller looks for it in the v2 tree (hybrid).
    for h in r.hugepage_limits().iter().flatten() {
        let Some(d) = dir("hugetlb") else {
            break;
        };
        write(
            d,
            &format!("hugetlb.{}.limit_in_bytes", h.page_size()),
            &limit_str(h.limit()),
        )?;
    }

    if let Some(net) = r.network() {
        if let Some(class) = net.class_id() {
            write(
                need("net_cls", "linux.resources.network.classID")?,
                "net_cls.classid",
                &class.to_string(),
            )?;
        }
        for p in net.priorities().iter().flatten() {
            let d = need("net_prio", "linux.resources.network.priorities")?;
            write(
                d,
                "net_prio.ifpriomap",
                &format!("{} {}", p.name(), p.priority()),
            )?;
        }
    }

    if let Some(devices) = r.devices() {
        let d = need("devices", "linux.resources.devices")?;
        super::devices::apply_v1(d, &super::devices::rules(devices)?)?;
    }

    if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(CgroupError::Unsupported {
            field: "linux.resources.unified".into(),
            reason: "unified (cgroup v2) resources need a pure cgroup v2 host".into(),
        });
    }
    Ok(())
}

/// memory.limit_in_bytes and memory.memsw.limit_in_bytes must always satisfy
/// limit ≤ memsw, so the order of the two writes depends on whether limits grow or
/// shrink. Writing the limit first and, if the kernel refuses, memsw first, covers both.
fn apply_memory(d: &Path, limit: Option<i64>, swap: Option<i64>) -> Result<(), CgroupError> {
    let has_memsw = d.join("memory.memsw.limit_in_bytes").exists();
    let swap = match swap {
        Some(s) if s != 0 && !has_memsw => {
            if s == -1 {
                // Unlimited swap is what the kernel does anyway without swap accounting.
                tracing::warn!(
                    "no swap accounting (memory.memsw.limit_in_bytes missing): linux.resources.memory.swap=-1 is a no-op"
                );
                None
            } else {
                return Err(CgroupError::Unsupported {
                    field: "linux.resources.memory.swap".into(),
                    reason: "this kernel has no swap accounting (memory.memsw.limit_in_bytes is missing; boot with swapaccount=1)".into(),
                });
            }
        }
        Some(0) => None,
        s => s,
    };
    if let (Some(s), Some(l)) = (swap, limit)
        && s >= 0
        && l > 0
        && s < l
    {
        return Err(CgroupError::Invalid {
            field: "linux.resources.memory.swap".into(),
            reason: format!("memory+swap {s} is smaller than the memory limit {l}"),
        });
    }
    let limit = limit.filter(|v| *v != 0);
    match (limit, swap) {
        (Some(l), Some(s)) => {
            if write(d, "memory.limit_in_bytes", &limit_str(l)).is_err() {
                write(d, "memory.memsw.limit_in_bytes", &limit_str(s))?;
                write(d, "memory.limit_in_bytes", &limit_str(l))?;
            } else {
                write(d, "memory.memsw.limit_in_bytes", &limit_str(s))?;
            }
        }
        (Some(l), None) => {
            // With swap accounting but no swap limit, a lowered memory limit may sit
            // above the old memsw limit; raise memsw to unlimited first, as runc does
            // when swap is unset and the limit grows.
            if write(d, "memory.limit_in_bytes", &limit_str(l)).is_err() && has_memsw {
                write(d, "memory.memsw.limit_in_bytes", "-1")?;
                write(d, "memory.limit_in_bytes", &limit_str(l))?;
            } else if has_memsw && l < 0 {
                write(d, "memory.memsw.limit_in_bytes", "-1")?;
            }
        }
        (None, Some(s)) => write(d, "memory.memsw.limit_in_bytes", &limit_str(s))?,
        (None, None) => {}
    }
    Ok(())
}
