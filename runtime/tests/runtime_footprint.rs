//! The runtime's own footprint: it is exec'd several times per container, so it must
//! start cheaply (a position-dependent executable: no start-up relocation of its data)
//! and stay small (peak RSS of a whole `run` of /bin/true within 5 MiB, the issue's
//! budget, measured with wait4's rusage like the lifecycle benchmark).

mod common;

use std::process::Stdio;

use common::{BIN, Bundle, Rt};

#[test]
fn runtime_is_a_position_dependent_executable() {
    let elf = std::fs::read(BIN).expect("read hull-runtime");
    assert_eq!(&elf[..4], b"\x7fELF");
    let e_type = u16::from_le_bytes([elf[16], elf[17]]);
    // ET_EXEC (2), not ET_DYN (3, a PIE whose data the loader relocates at every start).
    assert_eq!(
        e_type, 2,
        "hull-runtime is linked as a PIE (e_type {e_type})"
    );
}

/// Peak RSS (KiB) of `hull-runtime ARGS`, as GNU time reports it. Not wait4 from this
/// process: a child spawned from the (large, multi-threaded) test harness inherits the
/// harness's RSS high-water mark through exec (Linux folds the old mm's peak into
/// `ru_maxrss` at execve), so the figure would be the harness's, not the runtime's.
/// GNU time forks from a tiny process, so its child starts from almost nothing.
fn peak_rss_kib(rt: &Rt, cwd: &std::path::Path, args: &[&str]) -> u64 {
    let o = std::process::Command::new("/usr/bin/time")
        .args(["-f", "maxrss=%M", BIN, "--root"])
        .arg(&rt.root)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("/usr/bin/time (Debian package time, in tests/setup)");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "hull-runtime {args:?}: {err}");
    err.lines()
        .rev()
        .find_map(|l| l.strip_prefix("maxrss="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no maxrss in {err}"))
}

#[test]
fn peak_rss_of_run_is_within_5_mib() {
    let rt = Rt::new("rss");
    let b = Bundle::new("rss", &["/bin/true"]);
    let mut peak = 0;
    for i in 0..3 {
        let id = rt.id(&format!("rss{i}"));
        peak = peak.max(peak_rss_kib(&rt, &b.dir, &["run", &id]));
        rt.assert_gone(&id);
    }
    assert!(
        peak <= 5 * 1024,
        "peak RSS of hull-runtime run: {peak} KiB > 5 MiB"
    );
}
