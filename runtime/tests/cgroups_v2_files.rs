//! The cgroup v2 resource files, written for real into a temp directory laid out like a
//! cgroup2 mount (the machines hull's users run are pure v2; this one is hybrid).
//!
//! The kernel creates a cgroup's files when the directory is made; here the test makes
//! them empty first, so the manager is held to writing only files the kernel has.

use std::path::{Path, PathBuf};

use hull_runtime::cgroups::{CgroupManager, Hierarchy};
use oci_spec::runtime::LinuxResources;

const V2_FILES: &[&str] = &[
    "cgroup.procs",
    "cgroup.controllers",
    "cgroup.subtree_control",
    "cpu.weight",
    "cpu.max",
    "cpu.max.burst",
    "cpu.idle",
    "cpuset.cpus",
    "cpuset.mems",
    "memory.max",
    "memory.low",
    "memory.swap.max",
    "pids.max",
    "io.weight",
    "io.max",
    "hugetlb.2MB.max",
    "memory.high",
];

struct TempRoot(PathBuf);

impl TempRoot {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("hull-cgv2-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempRoot(p)
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fake_cgroup(dir: &Path, controllers: &str) {
    std::fs::create_dir_all(dir).unwrap();
    for f in V2_FILES {
        std::fs::write(dir.join(f), "").unwrap();
    }
    std::fs::write(dir.join("cgroup.controllers"), controllers).unwrap();
}

fn read(dir: &Path, f: &str) -> String {
    std::fs::read_to_string(dir.join(f)).unwrap()
}

fn manager(root: &Path, path: &str) -> CgroupManager {
    let h = Hierarchy::V2 {
        root: root.to_path_buf(),
    };
    CgroupManager::with_hierarchy(h, Some(path), "c1").unwrap()
}

const ALL: &str = "cpuset cpu io memory hugetlb pids";

#[test]
fn resources_convert_to_v2_files() {
    let t = TempRoot::new("convert");
    fake_cgroup(&t.0, ALL);
    fake_cgroup(&t.0.join("kubepods"), ALL);
    let leaf = t.0.join("kubepods/c1");
    fake_cgroup(&leaf, "");
    let cg = manager(&t.0, "/kubepods/c1");
    assert_eq!(cg.paths()["unified"], leaf);

    let r: LinuxResources = serde_json::from_str(
        r#"{
        "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "burst": 1000, "idle": 0,
                "cpus": "0-1", "mems": "0"},
        "memory": {"limit": 104857600, "reservation": 52428800, "swap": 209715200},
        "pids": {"limit": 32},
        "blockIO": {"weight": 500,
                    "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
        "unified": {"memory.high": "94371840"}
    }"#,
    )
    .unwrap();
    cg.apply(&r).unwrap();

    // Each parent delegates every controller it has, top-down.
    assert_eq!(
        read(&t.0, "cgroup.subtree_control"),
        "+cpuset +cpu +io +memory +hugetlb +pids"
    );
    assert_eq!(
        read(&t.0.join("kubepods"), "cgroup.subtree_control"),
        "+cpuset +cpu +io +memory +hugetlb +pids"
    );
    // shares 1024 → weight 39 (runc/crun's linear map 2..262144 → 1..10000).
    assert_eq!(read(&leaf, "cpu.weight"), "39");
    assert_eq!(read(&leaf, "cpu.max"), "50000 100000");
    assert_eq!(read(&leaf, "cpu.max.burst"), "1000");
    assert_eq!(read(&leaf, "cpu.idle"), "0");
    assert_eq!(read(&leaf, "cpuset.cpus"), "0-1");
    assert_eq!(read(&leaf, "cpuset.mems"), "0");
    assert_eq!(read(&leaf, "memory.max"), "104857600");
    assert_eq!(read(&leaf, "memory.low"), "52428800");
    // OCI swap is memory+swap; v2 swap.max is swap alone.
    assert_eq!(read(&leaf, "memory.swap.max"), "104857600");
    assert_eq!(read(&leaf, "pids.max"), "32");
    // blkio weight 500 (10..1000) → io.weight 4950 (1..10000).
    assert_eq!(read(&leaf, "io.weight"), "4950");
    assert_eq!(read(&leaf, "io.max"), "8:0 rbps=1048576");
    assert_eq!(read(&leaf, "hugetlb.2MB.max"), "4194304");
    assert_eq!(read(&leaf, "memory.high"), "94371840");
}

#[test]
fn unlimited_values_are_max() {
    let t = TempRoot::new("max");
    fake_cgroup(&t.0, ALL);
    let leaf = t.0.join("c1");
    fake_cgroup(&leaf, "");
    let cg = manager(&t.0, "c1");
    let r: LinuxResources = serde_json::from_str(
        r#"{"cpu":{"quota":-1,"period":50000},"memory":{"limit":-1,"swap":-1},"pids":{"limit":-1}}"#,
    )
    .unwrap();
    cg.apply(&r).unwrap();
    assert_eq!(read(&leaf, "cpu.max"), "max 50000");
    assert_eq!(read(&leaf, "memory.max"), "max");
    assert_eq!(read(&leaf, "memory.swap.max"), "max");
    assert_eq!(read(&leaf, "pids.max"), "max");
}

#[test]
fn bfq_takes_the_v1_weight_as_is() {
    let t = TempRoot::new("bfq");
    fake_cgroup(&t.0, ALL);
    let leaf = t.0.join("c1");
    fake_cgroup(&leaf, "");
    std::fs::write(leaf.join("io.bfq.weight"), "").unwrap();
    let cg = manager(&t.0, "c1");
    let r: LinuxResources = serde_json::from_str(r#"{"blockIO":{"weight":300}}"#).unwrap();
    cg.apply(&r).unwrap();
    assert_eq!(read(&leaf, "io.bfq.weight"), "300");
    assert_eq!(read(&leaf, "io.weight"), "");
}

#[test]
fn bad_values_name_the_field_and_write_nothing() {
    let t = TempRoot::new("bad");
    fake_cgroup(&t.0, ALL);
    let leaf = t.0.join("c1");
    fake_cgroup(&leaf, "");
    let cg = manager(&t.0, "c1");
    let cases = [
        (
            r#"{"memory":{"limit":209715200,"swap":104857600}}"#,
            "linux.resources.memory.swap",
        ),
        (
            r#"{"memory":{"swap":104857600}}"#,
            "linux.resources.memory.swap",
        ),
        (
            r#"{"unified":{"../../etc/passwd":"x"}}"#,
            "linux.resources.unified",
        ),
        (
            r#"{"cpu":{"realtimeRuntime":1000}}"#,
            "linux.resources.cpu.realtimeRuntime",
        ),
        (
            r#"{"hugepageLimits":[{"pageSize":"2MB","limit":0},{"pageSize":"3MB","limit":0}]}"#,
            "linux.resources.hugepageLimits[1].pageSize",
        ),
    ];
    for (json, field) in cases {
        let r: LinuxResources = serde_json::from_str(json).unwrap();
        let err = cg.apply(&r).unwrap_err().to_string();
        assert!(err.contains(field), "{json}: {err}");
        for f in ["memory.max", "memory.swap.max", "cpu.max"] {
            assert_eq!(read(&leaf, f), "", "{json} wrote {f}");
        }
    }
    // A file the kernel does not have is an error naming it, not a created file.
    std::fs::remove_file(leaf.join("pids.max")).unwrap();
    let r: LinuxResources = serde_json::from_str(r#"{"pids":{"limit":5}}"#).unwrap();
    let err = cg.apply(&r).unwrap_err().to_string();
    assert!(err.contains("pids.max"), "{err}");
    assert!(!leaf.join("pids.max").exists());
}

#[test]
fn systemd_paths_land_under_their_slices() {
    let t = TempRoot::new("systemd");
    fake_cgroup(&t.0, ALL);
    let cg = manager(&t.0, "kubepods-burstable.slice:cri-hull:abc");
    cg.create().unwrap();
    let leaf =
        t.0.join("kubepods.slice/kubepods-burstable.slice/cri-hull-abc.scope");
    assert!(leaf.is_dir());
    assert_eq!(
        cg.path(),
        PathBuf::from("/kubepods.slice/kubepods-burstable.slice/cri-hull-abc.scope")
    );
}

/// v2 statistics are read from the kernel's formats (cpu.stat in µs, memory.stat,
/// memory.events, io.stat) and converted to runc's shape, with the working set.
#[test]
fn v2_stats_are_parsed_and_converted() {
    let t = TempRoot::new("stats");
    fake_cgroup(&t.0, ALL);
    let leaf = t.0.join("c1");
    fake_cgroup(&leaf, "");
    let files = [
        (
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 10\nnr_throttled 3\nthrottled_usec 42\n",
        ),
        ("memory.current", "10485760\n"),
        ("memory.max", "max\n"),
        ("memory.peak", "20971520\n"),
        (
            "memory.stat",
            "anon 4194304\nfile 6291456\ninactive_file 2097152\nactive_file 4194304\n",
        ),
        ("memory.events", "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\n"),
        ("memory.swap.current", "0\n"),
        ("memory.swap.max", "max\n"),
        ("pids.current", "3\n"),
        ("pids.max", "max\n"),
        (
            "io.stat",
            "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
        ),
        (
            "cpu.pressure",
            "some avg10=1.50 avg60=0.25 avg300=0.00 total=12345\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
        ),
        (
            "memory.pressure",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=99\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=98\n",
        ),
    ];
    for (f, v) in files {
        std::fs::write(leaf.join(f), v).unwrap();
    }
    let cg = manager(&t.0, "c1");
    let s = cg.stats().unwrap();
    assert_eq!(s.cpu.usage.total, 1_500_000);
    assert_eq!(s.cpu.usage.user, 1_000_000);
    assert_eq!(s.cpu.usage.kernel, 500_000);
    assert_eq!(s.cpu.throttling.throttled_periods, 3);
    assert_eq!(s.cpu.throttling.throttled_time, 42_000);
    assert_eq!(s.memory.usage.usage, 10_485_760);
    assert_eq!(s.memory.usage.limit, u64::MAX);
    assert_eq!(s.memory.usage.max, Some(20_971_520));
    assert_eq!(s.memory.working_set, 10_485_760 - 2_097_152);
    assert_eq!(s.memory.rss, 4_194_304);
    assert_eq!(s.memory.cache, 6_291_456);
    assert_eq!((s.memory.oom, s.memory.oom_kill), (2, 1));
    assert_eq!(cg.oom_kill_count().unwrap(), 1);
    assert_eq!((s.pids.current, s.pids.limit), (3, 0));
    assert_eq!(s.blkio.io_service_bytes_recursive.len(), 2);
    assert_eq!(s.blkio.io_service_bytes_recursive[1].op, "Write");
    assert_eq!(s.blkio.io_service_bytes_recursive[1].value, 8192);
    assert_eq!(s.blkio.io_serviced_recursive[0].value, 1);
    // runc's JSON field names, so tools reading `runc events --stats` read hull's.
    let j = serde_json::to_value(&s).unwrap();
    assert_eq!(j["cpu"]["usage"]["kernel"], 500_000);
    assert_eq!(j["cpu"]["throttling"]["throttledPeriods"], 3);
    assert_eq!(j["blkio"]["ioServiceBytesRecursive"][0]["op"], "Read");
    assert_eq!(j["memory"]["workingSet"], 8_388_608);
    assert_eq!(j["memory"]["raw"]["inactive_file"], 2_097_152);
    let psi = s.pressure.as_ref().expect("PSI files present");
    assert_eq!(psi.cpu.some.avg10, 1.5);
    assert_eq!(psi.cpu.some.total, 12345);
    assert_eq!(psi.cpu.full.total, 7);
    assert_eq!(psi.memory.full.total, 98);
    assert_eq!(psi.io.some.total, 0, "io.pressure absent reads as zero");

    // A corrupt counter is an error naming the file, not a silent zero.
    std::fs::write(leaf.join("memory.current"), "lots\n").unwrap();
    let err = cg.stats().unwrap_err().to_string();
    assert!(err.contains("memory.current"), "{err}");
}

/// `--explain` narrates each cgroup directory and file written. The narration goes to
/// the process's stderr, so the test re-runs itself as a child and reads that.
#[test]
fn explain_narrates_every_cgroup_write() {
    if let Ok(root) = std::env::var("HULL_CG_EXPLAIN_ROOT") {
        hull_runtime::explain::set_enabled(true);
        let root = PathBuf::from(root);
        let leaf = root.join("c1");
        fake_cgroup(&leaf, "");
        let cg = manager(&root, "c1");
        let r: LinuxResources =
            serde_json::from_str(r#"{"memory":{"limit":1048576},"pids":{"limit":7}}"#).unwrap();
        cg.apply(&r).unwrap();
        return;
    }
    let t = TempRoot::new("explain");
    fake_cgroup(&t.0, ALL);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "explain_narrates_every_cgroup_write",
            "--nocapture",
        ])
        .env("HULL_CG_EXPLAIN_ROOT", &t.0)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let leaf = t.0.join("c1");
    for want in [
        format!("[explain] cgroup layout v2 (v2 at {})", t.0.display()),
        format!(
            "[explain] cgroup write {}/cgroup.subtree_control = \"+cpuset +cpu +io +memory +hugetlb +pids\"",
            t.0.display()
        ),
        format!(
            "[explain] cgroup write {}/memory.max = \"1048576\"",
            leaf.display()
        ),
        format!("[explain] cgroup write {}/pids.max = \"7\"", leaf.display()),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
}

/// On a hybrid host whose hugetlb controller is not a v1 mount, hugepage limits go to
/// the v2 tree (delegated from its root); limits for a host with no hugetlb anywhere
/// are skipped, since kubelet sends them for every container.
#[test]
fn hybrid_hugetlb_goes_to_the_v2_tree() {
    use std::collections::BTreeMap;
    let t = TempRoot::new("hyb");
    let mem = t.0.join("memory");
    let unified = t.0.join("unified");
    fake_cgroup(&mem, "");
    fake_cgroup(&unified, "hugetlb");
    fake_cgroup(&unified.join("c1"), "");
    std::fs::create_dir_all(mem.join("c1")).unwrap();
    let h = Hierarchy::Hybrid {
        controllers: BTreeMap::from([("memory".to_string(), mem.clone())]),
        unified: unified.clone(),
    };
    let cg = CgroupManager::with_hierarchy(h, Some("c1"), "c1").unwrap();
    let r: LinuxResources =
        serde_json::from_str(r#"{"hugepageLimits":[{"pageSize":"2MB","limit":0}]}"#).unwrap();
    cg.update(&r).unwrap();
    assert_eq!(read(&unified, "cgroup.subtree_control"), "+hugetlb");
    assert_eq!(read(&unified.join("c1"), "hugetlb.2MB.max"), "0");

    // No hugetlb anywhere: skipped, not an error.
    std::fs::write(unified.join("cgroup.controllers"), "").unwrap();
    std::fs::write(unified.join("c1/hugetlb.2MB.max"), "").unwrap();
    cg.update(&r).unwrap();
    assert_eq!(read(&unified.join("c1"), "hugetlb.2MB.max"), "");
}

/// memory.checkBeforeUpdate refuses a limit below current usage and writes nothing.
#[test]
fn check_before_update_refuses_a_limit_below_usage() {
    let t = TempRoot::new("checkupd");
    fake_cgroup(&t.0, ALL);
    let leaf = t.0.join("c1");
    fake_cgroup(&leaf, "");
    std::fs::write(leaf.join("memory.current"), "52428800\n").unwrap();
    let cg = manager(&t.0, "c1");
    let low: LinuxResources =
        serde_json::from_str(r#"{"memory":{"limit":10485760,"checkBeforeUpdate":true}}"#).unwrap();
    let err = cg.update(&low).unwrap_err().to_string();
    assert!(
        err.contains("linux.resources.memory.limit") && err.contains("52428800"),
        "{err}"
    );
    assert_eq!(read(&leaf, "memory.max"), "");
    // Without the flag, or with room to spare, the limit is written.
    let ok: LinuxResources =
        serde_json::from_str(r#"{"memory":{"limit":104857600,"checkBeforeUpdate":true}}"#).unwrap();
    cg.update(&ok).unwrap();
    assert_eq!(read(&leaf, "memory.max"), "104857600");
}
