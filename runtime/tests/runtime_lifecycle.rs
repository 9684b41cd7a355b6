//! The create → start → exec → pause → resume → kill → delete cycle through the CLI,
//! runc's error cases, and that nothing is left behind.

mod common;

use common::{Bundle, Rt, eventually};

fn ok(o: &std::process::Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &std::process::Output, what: &str) -> String {
    assert!(!o.status.success(), "{what} should have failed");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn create_start_exec_pause_resume_kill_delete() {
    let rt = Rt::new("life");
    let b = Bundle::new("life", &["/bin/sleep", "300"]);
    let id = rt.id("life");
    let d = b.dir.to_str().unwrap();
    ok(&rt.run(&["create", "--bundle", d, &id]), "create");
    let st = rt.state(&id);
    assert_eq!(st["status"], "created");
    let pid = st["pid"].as_i64().unwrap() as i32;
    assert!(pid > 0);
    // Until start, the init has not exec'd the user's program.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    assert!(!exe.ends_with("busybox"), "exec'd before start: {exe}");
    let e = err(&rt.run(&["create", "--bundle", d, &id]), "duplicate create");
    assert!(e.contains("already exists"), "{e}");

    // start does not rewrite state.json (the fifo's absence marks it started): a
    // rename over the old file would queue writeback that `delete` then waits for.
    let state_file = rt.root.join(&id).join("state.json");
    let ino =
        |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = ino(&state_file);
    ok(&rt.run(&["start", &id]), "start");
    assert_eq!(rt.state(&id)["status"], "running");
    assert_eq!(ino(&state_file), before, "start rewrote state.json");
    let e = err(&rt.run(&["start", &id]), "second start");
    assert!(e.contains("running"), "{e}");

    // exec joins every namespace and the cgroup of the init.
    let out = ok(
        &rt.run(&["exec", &id, "/bin/sh", "-c", "hostname; echo $$; readlink /proc/self/ns/net; readlink /proc/self/ns/mnt; readlink /proc/self/ns/pid; grep pids /proc/self/cgroup"]),
        "exec",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "hulltest");
    assert_ne!(lines[1], "1", "exec'd process must not be pid 1");
    for (i, ns) in ["net", "mnt", "pid"].iter().enumerate() {
        let init_ns = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_eq!(
            lines[2 + i],
            init_ns.to_str().unwrap(),
            "exec not in the init's {ns} namespace"
        );
    }
    assert!(
        lines[5].ends_with(&format!("/hull/{id}")),
        "exec not in the container's cgroup: {}",
        lines[5]
    );
    // Exit status of exec propagates.
    let o = rt.run(&["exec", &id, "/bin/sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3));

    let ps = ok(&rt.run(&["ps", "-f", "json", &id]), "ps");
    let pids: Vec<i32> = serde_json::from_str(&ps).unwrap();
    assert!(pids.contains(&pid), "{pids:?}");

    ok(&rt.run(&["pause", &id]), "pause");
    assert_eq!(rt.state(&id)["status"], "paused");
    let frozen = eventually(10, || {
        // v1 freezer or v2 cgroup.freeze: the kernel reports the task frozen.
        std::fs::read_to_string(format!("/sys/fs/cgroup/freezer/hull/{id}/freezer.state"))
            .is_ok_and(|s| s.trim() == "FROZEN")
            || std::fs::read_to_string(format!("/sys/fs/cgroup/hull/{id}/cgroup.events"))
                .is_ok_and(|s| s.contains("frozen 1"))
    });
    assert!(frozen, "cgroup not frozen after pause");
    let e = err(&rt.run(&["exec", &id, "/bin/true"]), "exec into paused");
    assert!(e.contains("paused"), "{e}");
    let e = err(&rt.run(&["delete", &id]), "delete paused without force");
    assert!(e.contains("--force"), "{e}");
    ok(&rt.run(&["resume", &id]), "resume");
    assert_eq!(rt.state(&id)["status"], "running");

    let e = err(&rt.run(&["delete", &id]), "delete running without force");
    assert!(e.contains("running"), "{e}");
    ok(&rt.run(&["kill", &id, "KILL"]), "kill");
    assert!(
        eventually(10, || rt.state(&id)["status"] == "stopped"),
        "not stopped after kill"
    );
    let list = ok(&rt.run(&["list", "-f", "json"]), "list");
    assert!(list.contains(&id), "{list}");
    ok(&rt.run(&["delete", &id]), "delete stopped");
    rt.assert_gone(&id);
    let list = ok(&rt.run(&["list", "-q"]), "list");
    assert!(!list.contains(&id), "{list}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .map(|c| !c.contains("sleep"))
                .unwrap_or(true)
    );
}

#[test]
fn run_detached_then_force_delete_and_kill_all() {
    let rt = Rt::new("det");
    let b = Bundle::new("det", &["/bin/sh", "-c", "sleep 300 & sleep 300 & wait"]);
    let id = rt.id("det");
    let d = b.dir.to_str().unwrap();
    let pidfile = b.dir.join("pid");
    ok(
        &rt.run(&[
            "run",
            "-d",
            "--bundle",
            d,
            "--pid-file",
            pidfile.to_str().unwrap(),
            &id,
        ]),
        "run -d",
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(rt.state(&id)["pid"], pid);
    assert!(eventually(10, || {
        let ps = ok(&rt.run(&["ps", "-f", "json", &id]), "ps");
        serde_json::from_str::<Vec<i32>>(&ps).unwrap().len() == 3
    }));
    ok(&rt.run(&["kill", "--all", &id, "TERM"]), "kill --all");
    assert!(eventually(10, || rt.state(&id)["status"] == "stopped"));
    ok(&rt.run(&["delete", "--force", &id]), "delete --force");
    rt.assert_gone(&id);

    // --force on a running container kills it.
    let id = rt.id("det2");
    ok(&rt.run(&["run", "-d", "--bundle", d, &id]), "run -d");
    ok(
        &rt.run(&["delete", "--force", &id]),
        "delete --force running",
    );
    rt.assert_gone(&id);
}

#[test]
fn delete_created_container_kills_its_init() {
    let rt = Rt::new("delc");
    let b = Bundle::new("delc", &["/bin/true"]);
    let id = rt.id("delc");
    ok(
        &rt.run(&["create", "--bundle", b.dir.to_str().unwrap(), &id]),
        "create",
    );
    let pid = rt.state(&id)["pid"].as_i64().unwrap() as i32;
    ok(&rt.run(&["delete", &id]), "delete created");
    rt.assert_gone(&id);
    assert!(eventually(10, || !std::path::Path::new(&format!(
        "/proc/{pid}"
    ))
    .exists()
        || std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.contains(") Z"))));
}

#[test]
fn bad_input_is_named_and_leaves_nothing() {
    let rt = Rt::new("bad");
    let mut b = Bundle::new("bad", &["/bin/true"]);
    let d = b.dir.to_str().unwrap().to_string();

    b.edit(|c| c["linux"]["namespaces"][2]["type"] = "foo".into());
    let id = rt.id("badns");
    let e = err(&rt.run(&["run", "--bundle", &d, &id]), "unknown namespace");
    assert!(
        e.contains("linux.namespaces[2].type") && e.contains("foo"),
        "{e}"
    );
    rt.assert_gone(&id);

    b.edit(|c| {
        c["linux"]["namespaces"][2]["type"] = "ipc".into();
        c["process"]["rlimits"][0]["hard"] = "lots".into();
    });
    let e = err(&rt.run(&["run", "--bundle", &d, &id]), "bad rlimit");
    assert!(e.contains("process.rlimits[0].hard"), "{e}");
    rt.assert_gone(&id);

    b.edit(|c| {
        c["process"]["rlimits"][0]["hard"] = 1024.into();
        c["root"]["path"] = "nope".into();
    });
    let e = err(&rt.run(&["run", "--bundle", &d, &id]), "missing rootfs");
    assert!(e.contains("root.path"), "{e}");
    rt.assert_gone(&id);

    b.edit(|c| {
        c["root"]["path"] = "rootfs".into();
        c["process"]["args"] = serde_json::json!(["no-such-program"]);
    });
    let e = err(&rt.run(&["run", "--bundle", &d, &id]), "missing program");
    assert!(e.contains("no-such-program"), "{e}");
    rt.assert_gone(&id);

    b.edit(|c| {
        c["process"]["args"] = serde_json::json!(["/bin/true"]);
        c["linux"]["resources"]["memory"] = serde_json::json!({"limit": 1});
    });
    let e = err(
        &rt.run(&["run", "--bundle", &d, &id]),
        "impossible memory limit",
    );
    assert!(e.contains("memory"), "{e}");
    rt.assert_gone(&id);

    for cmd in [
        vec!["start", "nope-x"],
        vec!["state", "nope-x"],
        vec!["kill", "nope-x"],
        vec!["delete", "nope-x"],
        vec!["exec", "nope-x", "/bin/true"],
    ] {
        let e = err(&rt.run(&cmd), &format!("{cmd:?}"));
        assert!(e.contains("does not exist"), "{cmd:?}: {e}");
    }
    let e = err(&rt.run(&["state", "../etc"]), "bad id");
    assert!(e.contains("invalid container id"), "{e}");
    assert!(common::host_mounts_under(&b.dir).is_empty());
}

#[test]
fn spec_writes_a_default_config_that_parses() {
    let rt = Rt::new("spec");
    let dir = std::path::PathBuf::from("/var/tmp/hull-rt-tests").join(common::unique("spec"));
    std::fs::create_dir_all(&dir).unwrap();
    ok(
        &rt.run(&["spec", "--bundle", dir.to_str().unwrap()]),
        "spec",
    );
    let bytes = std::fs::read(dir.join("config.json")).unwrap();
    let spec = hull_runtime::spec::parse(&bytes).expect("default spec parses");
    hull_runtime::spec::validate(&spec).expect("default spec validates");
    let e = err(
        &rt.run(&["spec", "--bundle", dir.to_str().unwrap()]),
        "spec over existing",
    );
    assert!(e.contains("already exists"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    let f = ok(&rt.run(&["features"]), "features");
    let v: serde_json::Value = serde_json::from_str(&f).unwrap();
    assert!(v["linux"]["namespaces"].as_array().unwrap().len() >= 7);
}

/// `create` + `start` of a container with no /proc mounted: the waiting init opens the
/// exec fifo relative to the state dir it holds, not through /proc/self/fd.
#[test]
fn create_and_start_without_proc_in_the_container() {
    let rt = Rt::new("noproc");
    let mut b = Bundle::new("noproc", &["/bin/sh", "-c", "echo started > /out/ok"]);
    let out = b.dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let src = out.to_str().unwrap().to_string();
    b.edit(|c| {
        let m = c["mounts"].as_array_mut().unwrap();
        m.retain(|m| m["destination"] != "/proc");
        m.push(serde_json::json!({"destination": "/out", "type": "bind", "source": src, "options": ["rbind", "rw"]}));
        c["linux"]["maskedPaths"] = serde_json::json!([]);
        c["linux"]["readonlyPaths"] = serde_json::json!([]);
    });
    let id = rt.id("noproc");
    let d = b.dir.to_str().unwrap();
    ok(&rt.run(&["create", "--bundle", d, &id]), "create");
    assert_eq!(rt.state(&id)["status"], "created");
    ok(&rt.run(&["start", &id]), "start");
    assert!(
        common::eventually(30, || out.join("ok").exists()),
        "the container never ran"
    );
    ok(&rt.run(&["delete", "--force", &id]), "delete");
    rt.assert_gone(&id);
}
