//! Resource limits that the kernel enforces: a memory limit gets the process OOM-killed
//! (exit 137), a pids limit stops forks, cpu quota lands in the controller files (v1
//! cpu.cfs_quota_us here, cpu.max on v2 hosts), and `update` changes a live container.

mod common;

use common::{Bundle, Rt, is_cgroup_v2_only};

#[test]
fn memory_limit_oom_kills_with_137() {
    let rt = Rt::new("oom");
    let mut b = Bundle::new("oom", &["/bin/sh", "-c", "tail /dev/zero"]);
    b.edit(|c| c["linux"]["resources"]["memory"] = serde_json::json!({"limit": 33554432}));
    let id = rt.id("oom");
    let (code, _, err) = rt.run_bundle(&b, &id);
    assert_eq!(code, 137, "stderr: {err}");
    rt.assert_gone(&id);
}

#[test]
fn pids_limit_stops_forks() {
    let rt = Rt::new("pids");
    let script = "for i in 1 2 3 4 5 6 7 8; do sleep 2 & done; echo survived";
    let mut b = Bundle::new("pids", &["/bin/sh", "-c", script]);
    // Control: without a limit all forks succeed.
    let id = rt.id("pids-free");
    let (code, out, err) = rt.run_bundle(&b, &id);
    assert_eq!((code, out.as_str()), (0, "survived\n"), "stderr: {err}");
    b.edit(|c| c["linux"]["resources"]["pids"] = serde_json::json!({"limit": 4}));
    let id = rt.id("pids");
    let (code, out, err) = rt.run_bundle(&b, &id);
    assert!(
        code != 0 && !out.contains("survived"),
        "forks beyond pids.max=4 succeeded: {code} {out} {err}"
    );
    assert!(err.contains("fork"), "expected a fork failure, got: {err}");
    rt.assert_gone(&id);
}

#[test]
fn cpu_quota_lands_in_cgroup_files_and_update_changes_it() {
    let rt = Rt::new("cpu");
    let mut b = Bundle::new("cpu", &["/bin/sleep", "300"]);
    b.edit(|c| {
        c["linux"]["resources"]["cpu"] =
            serde_json::json!({"quota": 50000, "period": 100000, "shares": 512})
    });
    let id = rt.id("cpu");
    let o = rt.run(&["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |p: String| {
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .trim()
            .to_string()
    };
    if is_cgroup_v2_only() {
        assert_eq!(
            read(format!("/sys/fs/cgroup/hull/{id}/cpu.max")),
            "50000 100000"
        );
    } else {
        assert_eq!(
            read(format!("/sys/fs/cgroup/cpu/hull/{id}/cpu.cfs_quota_us")),
            "50000"
        );
        assert_eq!(
            read(format!("/sys/fs/cgroup/cpu/hull/{id}/cpu.cfs_period_us")),
            "100000"
        );
        assert_eq!(
            read(format!("/sys/fs/cgroup/cpu/hull/{id}/cpu.shares")),
            "512"
        );
    }
    let o = rt.run(&[
        "update",
        "--cpu-quota",
        "20000",
        "--memory",
        "67108864",
        &id,
    ]);
    assert!(
        o.status.success(),
        "update: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    if is_cgroup_v2_only() {
        assert_eq!(
            read(format!("/sys/fs/cgroup/hull/{id}/cpu.max")),
            "20000 100000"
        );
    } else {
        assert_eq!(
            read(format!("/sys/fs/cgroup/cpu/hull/{id}/cpu.cfs_quota_us")),
            "20000"
        );
        assert_eq!(
            read(format!(
                "/sys/fs/cgroup/memory/hull/{id}/memory.limit_in_bytes"
            )),
            "67108864"
        );
    }
    let o = rt.run(&["events", "--stats", &id]);
    assert!(
        o.status.success(),
        "events: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let ev: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ev["type"], "stats");
    assert!(
        ev["data"]["pids"]["current"].as_u64().unwrap_or(0) >= 1,
        "{ev}"
    );
    let o = rt.run(&["delete", "--force", &id]);
    assert!(o.status.success());
    rt.assert_gone(&id);
}

/// On a pure v2 host the init is created in its cgroup by clone3(CLONE_INTO_CGROUP),
/// never moved; on hybrid and v1 hosts it is cloned and moved with cgroup.procs in every
/// hierarchy (the v2 one included). Either way every hierarchy has it in the container's
/// cgroup.
#[test]
fn init_is_cloned_into_its_cgroup_on_v2_and_moved_elsewhere() {
    let rt = Rt::new("clone3");
    let b = Bundle::new("clone3", &["/bin/cat", "/proc/self/cgroup"]);
    let id = rt.id("clone3");
    let o = rt.run_in(&b.dir, &["--explain", "run", &id]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "stderr: {err}");
    let want = format!("/hull/{id}");
    if is_cgroup_v2_only() {
        assert!(
            err.contains(&format!("CLONE_INTO_CGROUP /sys/fs/cgroup{want}")),
            "not cloned into the cgroup: {err}"
        );
        assert!(
            !err.contains(&format!("{want}/cgroup.procs")),
            "the init was moved after all: {err}"
        );
    } else {
        assert!(!err.contains("CLONE_INTO_CGROUP"), "{err}");
        let unified = std::path::Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
        if unified.exists() {
            assert!(
                err.contains(&format!("/sys/fs/cgroup/unified{want}/cgroup.procs")),
                "init not moved into the unified tree: {err}"
            );
        }
    }
    for line in out.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        if !line.contains("name=systemd") {
            assert_eq!(path, want, "{line}");
        }
    }
    rt.assert_gone(&id);
}
