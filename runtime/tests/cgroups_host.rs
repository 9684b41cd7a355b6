//! cgroups on this host's real kernel, as root: whatever layout it has (the CI machine
//! is a v1 + v2 hybrid), plus the v2 code path for real inside the host's cgroup2 tree.
//!
//! Each test uses cgroup names carrying the test name and pid, kills what it started
//! and removes its cgroups in a Drop guard, so a failing assertion leaks nothing.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hull_runtime::cgroups::{CgroupManager, FreezerState, Hierarchy};
use oci_spec::runtime::LinuxResources;

/// How long a helper waits for a child before declaring the test broken (a hang guard,
/// not a timing assertion: healthy runs take milliseconds).
const HANG_GUARD: Duration = Duration::from_secs(60);

fn unique(name: &str) -> String {
    format!("hull-test-{name}-{}", std::process::id())
}

/// Owns a test's cgroup and processes; tears both down even when the test panics.
struct Guard {
    cg: CgroupManager,
    children: Vec<Child>,
    extra_dirs: Vec<PathBuf>,
}

impl Guard {
    fn new(cg: CgroupManager) -> Self {
        Guard {
            cg,
            children: Vec::new(),
            extra_dirs: Vec::new(),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.cg.thaw();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.cg.kill_all(libc::SIGKILL);
        let _ = self.cg.delete();
        for d in self.cg.paths().values().chain(self.extra_dirs.iter().rev()) {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// `sh` that waits for a line on stdin before running `script`, so the test can put it
/// in the cgroup before it does anything that counts.
fn spawn_gated(script: &str) -> Child {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("read go; {script}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn /bin/sh")
}

fn release(child: &mut Child) {
    let stdin = child.stdin.as_mut().expect("stdin piped");
    stdin.write_all(b"go\n").expect("write go");
    stdin.flush().expect("flush");
}

/// Lines of a child's stdout, delivered through a channel so reads can be bounded.
fn lines(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A counter the child bumps in a file every 10 ms: progress that can be read at any
/// moment, with nothing buffered in between (unlike a pipe, where lines written before
/// a freeze may still be in flight).
struct Ticker(PathBuf);

impl Ticker {
    fn new(name: &str) -> Self {
        Ticker(std::env::temp_dir().join(format!("{}.ticks", unique(name))))
    }
    fn script(&self) -> String {
        format!(
            "i=0; while :; do i=$((i+1)); echo $i > {}; sleep 0.01; done",
            self.0.display()
        )
    }
    fn value(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap_or_default()
    }
    /// Waits (hang-guarded) until the counter moves past `from`.
    fn wait_change(&self, from: &str) {
        let deadline = std::time::Instant::now() + HANG_GUARD;
        while self.value() == from || self.value().is_empty() {
            assert!(std::time::Instant::now() < deadline, "no progress at all");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    /// Frozen: the counter does not move. Frozen tasks cannot run, so this cannot fail
    /// spuriously on a slow machine.
    fn assert_still(&self) {
        let before = self.value();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(self.value(), before, "a frozen process made progress");
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel::<()>();
    // Hang guard: kill the child if it outlives HANG_GUARD, so wait() returns.
    std::thread::spawn(move || {
        if rx.recv_timeout(HANG_GUARD).is_err() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let status = child.wait().expect("wait");
    let _ = tx.send(());
    status
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}

fn resources(json: &str) -> LinuxResources {
    serde_json::from_str(json).expect("resources json")
}

fn host_is_v1_capable() -> bool {
    Hierarchy::detect()
        .map(|h| h.v1_controllers().is_some_and(|c| c.contains_key("memory")))
        .unwrap_or(false)
}

/// The full lifecycle on the host layout: create, limits, a real process, stats,
/// freeze (it stops making progress), thaw (it resumes), kill --all, delete.
#[test]
fn lifecycle_on_host_hierarchy() {
    let name = unique("life");
    let cg = CgroupManager::new(Some(&format!("/{name}")), "life").unwrap();
    let mut g = Guard::new(cg.clone());
    cg.apply(&resources(
        r#"{"memory":{"limit":268435456},"pids":{"limit":64}}"#,
    ))
    .unwrap();
    for dir in cg.paths().values() {
        assert!(dir.is_dir(), "{} not created", dir.display());
    }

    let ticker = Ticker::new("life");
    let mut child = spawn_gated(&ticker.script());
    let pid = child.id() as i32;
    cg.add_task(pid).unwrap();
    release(&mut child);
    g.children.push(child);
    ticker.wait_change("");

    // Membership in every hierarchy, as the kernel reports it.
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mine = own
        .lines()
        .filter(|l| l.ends_with(&format!("/{name}")))
        .count();
    // One line per hierarchy; co-mounted controllers (cpu,cpuacct) share a line.
    let mut dirs: Vec<_> = cg.paths().into_values().collect();
    dirs.sort();
    dirs.dedup();
    assert_eq!(mine, dirs.len(), "{own}");
    assert!(cg.pids().unwrap().contains(&pid));

    let stats = cg.stats().unwrap();
    assert!(stats.memory.usage.usage > 0, "{stats:?}");
    assert_eq!(stats.memory.usage.limit, 268_435_456);
    assert!(
        stats.pids.current >= 1 && stats.pids.limit == 64,
        "{stats:?}"
    );
    let json = serde_json::to_value(&stats).unwrap();
    assert!(json["memory"]["workingSet"].is_u64(), "{json}");
    // The v2 tree (hybrid or pure v2) reports pressure stall information.
    if cg.hierarchy().unified().is_some() && Path::new("/proc/pressure/cpu").exists() {
        assert!(stats.pressure.is_some(), "{stats:?}");
    }

    cg.freeze().unwrap();
    assert_eq!(cg.state().unwrap(), FreezerState::Frozen);
    ticker.assert_still();
    let frozen_at = ticker.value();
    cg.thaw().unwrap();
    assert_eq!(cg.state().unwrap(), FreezerState::Thawed);
    ticker.wait_change(&frozen_at);

    // delete refuses while processes remain, and removes nothing.
    let err = cg.delete().unwrap_err().to_string();
    assert!(err.contains("still has processes"), "{err}");
    assert!(cg.exists());

    cg.kill_all(libc::SIGKILL).unwrap();
    let status = wait_exit(&mut g.children[0]);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    g.children.clear();

    cg.delete().unwrap();
    assert!(!cg.exists(), "cgroup left behind: {:?}", cg.paths());
    cg.delete().unwrap(); // idempotent
}

/// kill --all with a catchable signal: freeze, signal each process, thaw.
#[test]
fn kill_all_with_sigterm_reaches_every_process() {
    let name = unique("term");
    let cg = CgroupManager::new(Some(&format!("/{name}")), "term").unwrap();
    let mut g = Guard::new(cg.clone());
    cg.apply(&LinuxResources::default()).unwrap();
    // The shell forks a grandchild; both must get the signal.
    let mut child = spawn_gated("sleep 1000 & echo started; wait");
    cg.add_task(child.id() as i32).unwrap();
    let rx = lines(child.stdout.take().unwrap());
    release(&mut child);
    g.children.push(child);
    assert_eq!(rx.recv_timeout(HANG_GUARD).unwrap(), "started");
    assert_eq!(cg.pids().unwrap().len(), 2, "sh and its sleep");

    cg.kill_all(libc::SIGTERM).unwrap();
    let status = wait_exit(&mut g.children[0]);
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    g.children.clear();
    // The orphaned sleep was reparented away from us; it still dies of the signal.
    cg.wait_empty(HANG_GUARD).unwrap();
    assert_eq!(cg.state().unwrap(), FreezerState::Thawed);
    cg.delete().unwrap();
    assert!(!cg.exists());
}

/// A memory limit makes the kernel OOM-kill a process that exceeds it, and the kill is
/// counted where the CRI server reads it.
#[test]
fn memory_limit_oom_kills_and_is_counted() {
    let name = unique("oom");
    let cg = CgroupManager::new(Some(&format!("/{name}")), "oom").unwrap();
    let mut g = Guard::new(cg.clone());
    // swap = limit: no swap, so exceeding the limit means the OOM killer.
    cg.apply(&resources(
        r#"{"memory":{"limit":33554432,"swap":33554432}}"#,
    ))
    .unwrap();
    assert_eq!(cg.oom_kill_count().unwrap(), 0);
    // dd with a 256 MiB block size touches a 256 MiB buffer.
    let mut child = spawn_gated("exec /bin/busybox dd if=/dev/zero of=/dev/null bs=256M count=1");
    cg.add_task(child.id() as i32).unwrap();
    release(&mut child);
    g.children.push(child);
    let status = wait_exit(&mut g.children[0]);
    g.children.clear();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert_eq!(cg.oom_kill_count().unwrap(), 1);
    assert_eq!(cg.stats().unwrap().memory.oom_kill, 1);
    cg.delete().unwrap();
    assert!(!cg.exists());
}

/// pids.max stops forks inside the cgroup.
#[test]
fn pids_limit_stops_forks() {
    let name = unique("pids");
    let cg = CgroupManager::new(Some(&format!("/{name}")), "pids").unwrap();
    let mut g = Guard::new(cg.clone());
    cg.apply(&resources(r#"{"pids":{"limit":1}}"#)).unwrap();
    // dash forks for an external command; with one pid allowed (the shell) it cannot.
    let mut child = spawn_gated("/bin/true; echo rc=$?");
    cg.add_task(child.id() as i32).unwrap();
    let out = child.stdout.take().unwrap();
    release(&mut child);
    g.children.push(child);
    let status = wait_exit(&mut g.children[0]);
    let mut text = String::new();
    std::io::Read::read_to_string(&mut BufReader::new(out), &mut text).unwrap();
    g.children.clear();
    assert!(
        !text.contains("rc=0"),
        "fork succeeded under pids.max=1: {text:?}"
    );
    assert!(!status.success() || text.contains("rc=") && !text.contains("rc=0"));

    // Raising the limit with update lets the same kind of process fork again.
    cg.update(&resources(r#"{"pids":{"limit":16}}"#)).unwrap();
    let mut child = spawn_gated("/bin/true; echo rc=$?");
    cg.add_task(child.id() as i32).unwrap();
    let out = child.stdout.take().unwrap();
    release(&mut child);
    g.children.push(child);
    let status = wait_exit(&mut g.children[0]);
    g.children.clear();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut BufReader::new(out), &mut text).unwrap();
    assert!(
        status.success() && text.contains("rc=0"),
        "{status:?} {text:?}"
    );
    cg.delete().unwrap();
    assert!(!cg.exists());
}

/// CPU, cpuset and memory limits land in the v1 files with the spec's values.
#[test]
fn v1_files_hold_the_spec_values() {
    if !host_is_v1_capable() {
        eprintln!(
            "skipped: no v1 controllers on this host (the v2 files are tested in cgroups_v2_files)"
        );
        return;
    }
    let name = unique("v1files");
    let cg = CgroupManager::new(Some(&format!("/{name}/nested")), "v1files").unwrap();
    let mut g = Guard::new(cg.clone());
    for c in cg.paths().values() {
        if let Some(parent) = c.parent() {
            g.extra_dirs.push(parent.to_path_buf());
        }
    }
    cg.apply(&resources(
        r#"{"cpu":{"shares":512,"quota":50000,"period":100000,"cpus":"0","mems":"0"},
            "memory":{"limit":104857600,"reservation":52428800,"swap":209715200,"swappiness":10},
            "pids":{"limit":-1}}"#,
    ))
    .unwrap();
    let p = cg.paths();
    assert_eq!(read(&p["cpu"], "cpu.shares"), "512");
    assert_eq!(read(&p["cpu"], "cpu.cfs_quota_us"), "50000");
    assert_eq!(read(&p["cpu"], "cpu.cfs_period_us"), "100000");
    assert_eq!(read(&p["cpuset"], "cpuset.cpus"), "0");
    assert_eq!(read(&p["cpuset"], "cpuset.mems"), "0");
    // The intermediate level got its parent's CPUs (else no task could ever join).
    assert!(!read(p["cpuset"].parent().unwrap(), "cpuset.cpus").is_empty());
    assert_eq!(read(&p["memory"], "memory.limit_in_bytes"), "104857600");
    assert_eq!(read(&p["memory"], "memory.soft_limit_in_bytes"), "52428800");
    if p["memory"].join("memory.memsw.limit_in_bytes").exists() {
        assert_eq!(
            read(&p["memory"], "memory.memsw.limit_in_bytes"),
            "209715200"
        );
    }
    assert_eq!(read(&p["memory"], "memory.swappiness"), "10");
    assert_eq!(read(&p["pids"], "pids.max"), "max");

    // Lowering memory below the old memory+swap and raising it above: both orders work.
    cg.update(&resources(
        r#"{"memory":{"limit":1073741824,"swap":2147483648}}"#,
    ))
    .unwrap();
    assert_eq!(read(&p["memory"], "memory.limit_in_bytes"), "1073741824");
    cg.update(&resources(
        r#"{"memory":{"limit":20971520,"swap":20971520}}"#,
    ))
    .unwrap();
    assert_eq!(read(&p["memory"], "memory.limit_in_bytes"), "20971520");

    // Bad values are refused with the field named, and the old values stay.
    let err = cg
        .update(&resources(
            r#"{"memory":{"limit":104857600,"swap":1048576}}"#,
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("linux.resources.memory.swap"), "{err}");
    assert_eq!(read(&p["memory"], "memory.limit_in_bytes"), "20971520");
    let err = cg
        .update(&resources(r#"{"cpu":{"cpus":"999"}}"#))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cpuset.cpus") && err.contains("999"), "{err}");
    let err = cg
        .update(&resources(r#"{"unified":{"memory.high":"1"}}"#))
        .unwrap_err()
        .to_string();
    assert!(err.contains("linux.resources.unified"), "{err}");
    drop(g);
    assert!(!cg.exists());
}

/// The v1 device cgroup: deny everything but the spec's and the runtime's defaults.
#[test]
fn v1_devices_deny_list_is_enforced() {
    if !Hierarchy::detect()
        .map(|h| {
            h.v1_controllers()
                .is_some_and(|c| c.contains_key("devices"))
        })
        .unwrap_or(false)
    {
        eprintln!("skipped: no v1 devices controller (v2 uses eBPF, not built yet)");
        return;
    }
    let name = unique("devices");
    let cg = CgroupManager::new(Some(&format!("/{name}")), "devices").unwrap();
    let mut g = Guard::new(cg.clone());
    cg.apply(&resources(
        r#"{"devices":[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":1,"minor":8,"access":"r"}]}"#,
    ))
    .unwrap();
    let list = read(&cg.paths()["devices"], "devices.list");
    assert!(list.contains("c 1:3 rwm"), "{list}");
    assert!(list.contains("c 1:8 r"), "{list}");
    assert!(!list.contains("a *:* rwm"), "{list}");
    let mut child = spawn_gated(
        "true < /dev/null && echo null-ok; true < /dev/kmsg && echo kmsg-ok; echo done",
    );
    cg.add_task(child.id() as i32).unwrap();
    let out = child.stdout.take().unwrap();
    release(&mut child);
    g.children.push(child);
    wait_exit(&mut g.children[0]);
    g.children.clear();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut BufReader::new(out), &mut text).unwrap();
    assert!(
        text.contains("null-ok") && text.contains("done"),
        "{text:?}"
    );
    assert!(
        !text.contains("kmsg-ok"),
        "/dev/kmsg opened despite deny: {text:?}"
    );

    let err = cg
        .update(&resources(r#"{"devices":[{"allow":true,"access":"rwx"}]}"#))
        .unwrap_err()
        .to_string();
    assert!(err.contains("linux.resources.devices[0].access"), "{err}");
    drop(g);
    assert!(!cg.exists());
}

/// The v2 code path for real: a test-owned subtree of the host's cgroup2 mount serves
/// as the "root", so delegation writes stay inside what the test made.
#[test]
fn v2_process_freeze_kill_delete_for_real() {
    let Some(unified) = Hierarchy::detect()
        .unwrap()
        .unified()
        .map(Path::to_path_buf)
    else {
        eprintln!("skipped: no cgroup2 mount");
        return;
    };
    let root = unified.join(unique("v2root"));
    std::fs::create_dir(&root).unwrap();
    let h = Hierarchy::V2 { root: root.clone() };
    let cg = CgroupManager::with_hierarchy(h, Some("/pod/c1"), "c1").unwrap();
    let mut g = Guard::new(cg.clone());
    g.extra_dirs.push(root.clone());
    g.extra_dirs.push(root.join("pod"));
    cg.apply(&LinuxResources::default()).unwrap();
    let dir = cg.paths()["unified"].clone();
    assert!(dir.join("cgroup.freeze").exists());

    let ticker = Ticker::new("v2");
    let mut child = spawn_gated(&format!("sleep 1000 & {}", ticker.script()));
    let pid = child.id() as i32;
    cg.add_task(pid).unwrap();
    release(&mut child);
    g.children.push(child);
    ticker.wait_change("");
    assert!(read(&dir, "cgroup.procs").contains(&pid.to_string()));
    assert!(cg.pids().unwrap().len() >= 2);

    cg.freeze().unwrap();
    assert_eq!(cg.state().unwrap(), FreezerState::Frozen);
    assert!(read(&dir, "cgroup.events").contains("frozen 1"));
    ticker.assert_still();
    let frozen_at = ticker.value();
    cg.thaw().unwrap();
    assert_eq!(cg.state().unwrap(), FreezerState::Thawed);
    ticker.wait_change(&frozen_at);

    let stats = cg.stats().unwrap();
    assert!(stats.cpu.usage.total > 0, "{stats:?}");

    // cgroup.kill takes the shell and its background sleep at once.
    cg.kill_all(libc::SIGKILL).unwrap();
    assert_eq!(wait_exit(&mut g.children[0]).signal(), Some(libc::SIGKILL));
    g.children.clear();
    cg.wait_empty(HANG_GUARD).unwrap();
    cg.delete().unwrap();
    assert!(!dir.exists());
    drop(g);
    assert!(!root.exists(), "test root left behind");
}

/// A bad cgroupsPath is refused before anything is created.
#[test]
fn bad_path_creates_nothing() {
    let err = CgroupManager::new(Some("/../../etc"), "x")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("linux.cgroupsPath") && err.contains(".."),
        "{err}"
    );
}

/// The v2 device controller for real: an eBPF program on a test-owned cgroup2 subtree
/// denies /dev/kmsg while the runtime's default devices stay usable; an update replaces
/// the program rather than stacking a second one.
#[test]
fn v2_devices_ebpf_is_enforced_and_replaced() {
    let Some(unified) = Hierarchy::detect()
        .unwrap()
        .unified()
        .map(Path::to_path_buf)
    else {
        eprintln!("skipped: no cgroup2 mount");
        return;
    };
    let root = unified.join(unique("v2dev"));
    std::fs::create_dir(&root).unwrap();
    let h = Hierarchy::V2 { root: root.clone() };
    let cg = CgroupManager::with_hierarchy(h, Some("/c1"), "c1").unwrap();
    let mut g = Guard::new(cg.clone());
    g.extra_dirs.push(root.clone());
    let deny_all = r#"{"devices":[{"allow":false,"access":"rwm"}]}"#;
    cg.apply(&resources(deny_all)).unwrap();

    let probe = "true < /dev/null && echo null-ok; true < /dev/kmsg && echo kmsg-ok; echo done";
    let run = |g: &mut Guard| {
        let mut child = spawn_gated(probe);
        cg.add_task(child.id() as i32).unwrap();
        let out = child.stdout.take().unwrap();
        release(&mut child);
        g.children.push(child);
        wait_exit(&mut g.children[0]);
        g.children.clear();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut BufReader::new(out), &mut text).unwrap();
        text
    };
    let text = run(&mut g);
    assert!(
        text.contains("null-ok") && text.contains("done"),
        "{text:?}"
    );
    assert!(
        !text.contains("kmsg-ok"),
        "/dev/kmsg opened under deny-all: {text:?}"
    );

    // Allow /dev/kmsg (c 1:11) for reading: the new program replaces the old one.
    cg.update(&resources(
        r#"{"devices":[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":1,"minor":11,"access":"r"}]}"#,
    ))
    .unwrap();
    let text = run(&mut g);
    // With BPF_F_ALLOW_MULTI every attached program must allow, so kmsg opening also
    // proves the first (deny-all) program was detached.
    assert!(
        text.contains("kmsg-ok") && text.contains("null-ok"),
        "{text:?}"
    );

    // Back to deny-all.
    cg.update(&resources(deny_all)).unwrap();
    let text = run(&mut g);
    assert!(!text.contains("kmsg-ok"), "{text:?}");

    cg.delete().unwrap();
    drop(g);
    assert!(!root.exists());
}

/// After a crash the runtime finds its cgroups again by listing the parent, and can
/// kill what is inside and remove them.
#[test]
fn leaked_cgroups_are_found_and_removed() {
    let parent = format!("/{}", unique("reconcile"));
    let h = Hierarchy::detect().unwrap();
    let a = CgroupManager::with_hierarchy(h.clone(), Some(&format!("{parent}/a")), "a").unwrap();
    let b = CgroupManager::with_hierarchy(h.clone(), Some(&format!("{parent}/b")), "b").unwrap();
    let mut ga = Guard::new(a.clone());
    let gb = Guard::new(b.clone());
    for d in a.paths().values() {
        ga.extra_dirs.push(d.parent().unwrap().to_path_buf());
    }
    a.apply(&LinuxResources::default()).unwrap();
    b.apply(&LinuxResources::default()).unwrap();
    // A process left running in `a`, as after a crashed runtime.
    let mut child = spawn_gated("sleep 1000");
    a.add_task(child.id() as i32).unwrap();
    release(&mut child);
    ga.children.push(child);

    let ids = CgroupManager::ids_under(&h, &parent).unwrap();
    assert_eq!(ids, vec!["a".to_string(), "b".to_string()]);
    for id in ids {
        let cg =
            CgroupManager::with_hierarchy(h.clone(), Some(&format!("{parent}/{id}")), &id).unwrap();
        cg.kill_all(libc::SIGKILL).unwrap();
        cg.delete().unwrap();
    }
    assert_eq!(wait_exit(&mut ga.children[0]).signal(), Some(libc::SIGKILL));
    ga.children.clear();
    assert!(CgroupManager::ids_under(&h, &parent).unwrap().is_empty());
    assert!(!a.exists() && !b.exists());
    drop(gb);
    drop(ga);
    for d in a.paths().values() {
        assert!(!d.parent().unwrap().exists(), "{} left behind", d.display());
    }
}

/// A limit the kernel refuses fails `apply` with the file and value named, and the
/// cgroup that `apply` had just created is gone again.
#[test]
fn failed_apply_leaves_nothing_behind() {
    let name = unique("badapply");
    let cg = CgroupManager::new(Some(&format!("/{name}")), "badapply").unwrap();
    let _g = Guard::new(cg.clone());
    let err = cg
        .apply(&resources(r#"{"cpu":{"cpus":"999"},"pids":{"limit":5}}"#))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cpuset.cpus") && err.contains("999"), "{err}");
    assert!(!cg.exists(), "left behind: {:?}", cg.paths());
}
