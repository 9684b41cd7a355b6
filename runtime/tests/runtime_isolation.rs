//! What a container sees: pid 1, its hostname, only `lo`, its own mount table, a
//! read-only root, masked paths, dropped capabilities; and that exit statuses propagate
//! as runc's do. Real namespaces and mounts; every test checks it leaves nothing behind.

mod common;

use common::{Bundle, Rt, host_mounts_under};

#[test]
fn pid1_hostname_and_only_lo() {
    let rt = Rt::new("iso");
    let b = Bundle::new(
        "iso",
        &[
            "/bin/sh",
            "-c",
            "echo \"$(hostname) $$ $(ls /sys/class/net | tr '\\n' ' ')\"",
        ],
    );
    let id = rt.id("iso");
    let (code, out, err) = rt.run_bundle(&b, &id);
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(out, "hulltest 1 lo \n");
    rt.assert_gone(&id);
    assert!(
        host_mounts_under(&b.dir).is_empty(),
        "container mounts leaked to the host"
    );
}

#[test]
fn exit_status_propagates_like_runc() {
    let rt = Rt::new("exit");
    let mut b = Bundle::new("exit", &["/bin/sh", "-c", "exit 7"]);
    let id = rt.id("exit7");
    assert_eq!(rt.run_bundle(&b, &id).0, 7);
    rt.assert_gone(&id);
    // Killed by a signal: 128 + signal number.
    // (Without a pid namespace: pid 1 of a namespace ignores SIGKILL sent from inside.)
    b.edit(|c| {
        c["process"]["args"] = serde_json::json!(["/bin/sh", "-c", "kill -9 $$"]);
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "pid");
    });
    let id = rt.id("sig9");
    assert_eq!(rt.run_bundle(&b, &id).0, 137);
    rt.assert_gone(&id);
}

#[test]
fn mount_table_readonly_root_and_masked_paths() {
    let rt = Rt::new("mnt");
    let script = "cat /proc/self/mountinfo; echo ---; \
        touch /rootfile 2>/dev/null && echo ROOT-WRITABLE; \
        touch /tmp/ok && echo TMP-WRITABLE; \
        echo x > /proc/sys/kernel/hostname 2>/dev/null && echo PROCSYS-WRITABLE; \
        wc -c < /proc/keys; ls /sys/firmware | wc -l; ls -l /dev/null /dev/zero /dev/fd";
    let b = Bundle::new("mnt", &["/bin/sh", "-c", script]);
    let id = rt.id("mnt");
    let (code, out, err) = rt.run_bundle(&b, &id);
    assert_eq!(code, 0, "stderr: {err}");
    let (mounts, rest) = out.split_once("---\n").expect("separator");
    let root_line = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .expect("a / mount");
    assert!(
        root_line.split(' ').nth(5).unwrap().starts_with("ro"),
        "root not read-only: {root_line}"
    );
    for m in [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
        "/tmp",
    ] {
        assert!(
            mounts.lines().any(|l| l.split(' ').nth(4) == Some(m)),
            "{m} not mounted:\n{mounts}"
        );
    }
    // The host's own mounts are not visible (old root unmounted after pivot_root).
    assert!(
        !mounts.lines().any(|l| l
            .split(' ')
            .nth(4)
            .is_some_and(|p| p.starts_with("/var/tmp") || p.starts_with("/run/hull"))),
        "host mount points visible:\n{mounts}"
    );
    assert!(!rest.contains("ROOT-WRITABLE"), "{rest}");
    assert!(rest.contains("TMP-WRITABLE"), "{rest}");
    assert!(!rest.contains("PROCSYS-WRITABLE"), "{rest}");
    let mut lines = rest.lines().filter(|l| !l.contains("WRITABLE"));
    assert_eq!(
        lines.next().map(str::trim),
        Some("0"),
        "/proc/keys not masked: {rest}"
    );
    assert_eq!(
        lines.next().map(str::trim),
        Some("0"),
        "/sys/firmware not masked: {rest}"
    );
    let devs = lines.collect::<Vec<_>>().join("\n");
    assert!(
        devs.contains("1,   3") || devs.contains("1, 3"),
        "/dev/null wrong: {devs}"
    );
    assert!(devs.contains("/dev/fd -> /proc/self/fd"), "{devs}");
    rt.assert_gone(&id);
}

#[test]
fn capabilities_dropped_and_no_new_privs() {
    let rt = Rt::new("caps");
    let b = Bundle::new(
        "caps",
        &[
            "/bin/sh",
            "-c",
            "grep -E '^(CapEff|CapBnd|CapPrm|NoNewPrivs)' /proc/self/status",
        ],
    );
    let id = rt.id("caps");
    let (code, out, err) = rt.run_bundle(&b, &id);
    assert_eq!(code, 0, "stderr: {err}");
    // AUDIT_WRITE (29), KILL (5), NET_BIND_SERVICE (10).
    let want = format!("{:016x}", (1u64 << 29) | (1 << 5) | (1 << 10));
    for set in ["CapEff", "CapBnd", "CapPrm"] {
        let line = out.lines().find(|l| l.starts_with(set)).expect(set);
        assert!(line.ends_with(&want), "{line} (want {want})");
    }
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    rt.assert_gone(&id);
}

#[test]
fn user_and_groups_and_cwd_and_env() {
    let rt = Rt::new("user");
    let mut b = Bundle::new(
        "user",
        &["/bin/sh", "-c", "id -u; id -g; id -G; pwd; echo $FOO"],
    );
    b.edit(|c| {
        c["process"]["user"] =
            serde_json::json!({"uid": 1000, "gid": 1001, "additionalGids": [5, 1002]});
        c["process"]["cwd"] = "/tmp".into();
        c["process"]["env"] = serde_json::json!(["PATH=/bin", "FOO=bar"]);
    });
    let id = rt.id("user");
    let (code, out, err) = rt.run_bundle(&b, &id);
    assert_eq!(code, 0, "stderr: {err}");
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(l[0], "1000");
    assert_eq!(l[1], "1001");
    assert!(
        l[2].split(' ').any(|g| g == "1002") && l[2].split(' ').any(|g| g == "5"),
        "groups {}",
        l[2]
    );
    assert_eq!(l[3], "/tmp");
    assert_eq!(l[4], "bar");
    rt.assert_gone(&id);
}

#[test]
fn oom_score_adj_and_rlimits() {
    let rt = Rt::new("rlim");
    let mut b = Bundle::new(
        "rlim",
        &["/bin/sh", "-c", "ulimit -n; cat /proc/self/oom_score_adj"],
    );
    b.edit(|c| {
        c["process"]["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 321, "soft": 123}]);
        c["process"]["oomScoreAdj"] = 500.into();
    });
    let id = rt.id("rlim");
    let (code, out, err) = rt.run_bundle(&b, &id);
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(out, "123\n500\n");
    // A negative value may be refused by the kernel here: that is a warning, never a failure.
    b.edit(|c| c["process"]["oomScoreAdj"] = (-500).into());
    let id = rt.id("rlim-neg");
    let (code, _, err) = rt.run_bundle(&b, &id);
    assert_eq!(
        code, 0,
        "negative oomScoreAdj must not fail the container: {err}"
    );
    rt.assert_gone(&id);
}

#[test]
fn sysctl_and_hostname_in_own_namespaces() {
    let rt = Rt::new("sysctl");
    let mut b = Bundle::new(
        "sysctl",
        &[
            "/bin/sh",
            "-c",
            "cat /proc/sys/net/ipv4/ip_forward; hostname",
        ],
    );
    b.edit(|c| {
        c["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"});
        c["hostname"] = "other".into();
    });
    let host_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let id = rt.id("sysctl");
    let (code, out, err) = rt.run_bundle(&b, &id);
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(out, "1\nother\n");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_before,
        "host sysctl changed"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_name,
        "host hostname changed"
    );
    rt.assert_gone(&id);
}

#[test]
fn mount_destination_symlink_stays_inside_rootfs() {
    let rt = Rt::new("escape");
    let name = common::unique("escape-target");
    let mut b = Bundle::new(
        "escape",
        &["/bin/sh", "-c", &format!("cat /tmp/{name}/marker")],
    );
    // The image's /evil climbs out with `..`: naively joined it is the host's /tmp. The
    // bind mount onto /evil/NAME must land in the container's /tmp instead.
    std::os::unix::fs::symlink("../../../../../../../../tmp", b.rootfs().join("evil")).unwrap();
    let src = b.dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("marker"), "inside").unwrap();
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": format!("/evil/{name}"), "type": "bind", "source": src, "options": ["rbind", "ro"]}));
    });
    let id = rt.id("escape");
    let (code, out, err) = rt.run_bundle(&b, &id);
    let host = std::path::Path::new("/tmp").join(&name);
    let escaped = host.exists();
    let _ = std::fs::remove_dir(&host);
    assert!(
        !escaped,
        "mount destination escaped the rootfs to {}",
        host.display()
    );
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(out, "inside");
    rt.assert_gone(&id);
}

#[test]
fn no_host_fds_leak_into_the_container() {
    let rt = Rt::new("fds");
    let b = Bundle::new(
        "fds",
        &["/bin/sh", "-c", "ls /proc/self/fd | sort -n | tr '\\n' ' '"],
    );
    let id = rt.id("fds");
    // An extra open fd in the caller must not reach the container.
    let f = std::fs::File::open("/etc/hostname").unwrap();
    let mut cmd = rt.cmd();
    cmd.args(["run", &id]).current_dir(&b.dir);
    let out = common::run_with_timeout(cmd, std::time::Duration::from_secs(60));
    drop(f);
    let s = String::from_utf8_lossy(&out.stdout);
    // 0,1,2 plus the fd `ls` opens on /proc/self/fd.
    assert_eq!(s.trim(), "0 1 2 3", "fds in container: {s}");
    rt.assert_gone(&id);
}

/// A spec seccomp profile loaded before the privilege drop (noNewPrivileges false) that
/// refuses close_range: the init falls back to marking fds close-on-exec one by one, so
/// the container still starts and still sees only its stdio.
#[test]
fn no_fd_leaks_when_seccomp_refuses_close_range() {
    let rt = Rt::new("fdleak");
    let mut b = Bundle::new("fdleak", &["/bin/ls", "/proc/self/fd"]);
    b.edit(|c| {
        c["process"]["noNewPrivileges"] = false.into();
        c["linux"]["seccomp"] = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["close_range"], "action": "SCMP_ACT_ERRNO"}]
        });
    });
    let id = rt.id("fdleak");
    let (code, out, err) = rt.run_bundle(&b, &id);
    assert_eq!(code, 0, "stderr: {err}");
    // 0-2 are stdio, 3 is ls's own handle on /proc/self/fd.
    let fds: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fds, ["0", "1", "2", "3"], "fds in the container: {out}");
    rt.assert_gone(&id);
}

/// A mount whose only options are propagation flags gets them on the new mount itself
/// (not on the directory it covers, which the kernel refuses with EINVAL).
#[test]
fn propagation_options_apply_to_the_new_mount() {
    let rt = Rt::new("prop");
    let mut b = Bundle::new("prop", &["/bin/cat", "/proc/self/mountinfo"]);
    b.edit(|c| {
        let m = c["mounts"].as_array_mut().unwrap();
        m.push(serde_json::json!({"destination": "/tmp/shared", "type": "tmpfs", "source": "tmpfs", "options": ["shared"]}));
        m.push(serde_json::json!({"destination": "/tmp/private", "type": "tmpfs", "source": "tmpfs", "options": ["private"]}));
    });
    let id = rt.id("prop");
    let (code, out, err) = rt.run_bundle(&b, &id);
    assert_eq!(code, 0, "stderr: {err}");
    let line = |dst: &str| {
        out.lines()
            .find(|l| l.split(' ').nth(4) == Some(dst))
            .unwrap_or_else(|| panic!("{dst} not mounted: {out}"))
            .to_string()
    };
    assert!(
        line("/tmp/shared").contains(" shared:"),
        "{}",
        line("/tmp/shared")
    );
    assert!(
        !line("/tmp/private").contains(" shared:"),
        "{}",
        line("/tmp/private")
    );
    rt.assert_gone(&id);
}

/// A device listed in `linux.devices` is allowed by the device cgroup even when the
/// policy starts with "deny all" (runc's behaviour): the init can mknod it.
#[test]
fn spec_devices_are_allowed_by_the_device_cgroup() {
    let rt = Rt::new("devs");
    let mut b = Bundle::new(
        "devs",
        &[
            "/bin/sh",
            "-c",
            "ls -l /dev/hulltun; head -c 0 /dev/hulltun && echo OPENED",
        ],
    );
    b.edit(|c| {
        c["linux"]["devices"] = serde_json::json!([
            {"path": "/dev/hulltun", "type": "c", "major": 10, "minor": 200, "fileMode": 384}
        ]);
    });
    let id = rt.id("devs");
    let (code, out, err) = rt.run_bundle(&b, &id);
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.contains("10, 200"), "{out}");
    assert!(out.contains("OPENED"), "{out} {err}");
    rt.assert_gone(&id);
}
