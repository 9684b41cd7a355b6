//! Console socket (pty master over SCM_RIGHTS), hooks with the state on stdin, user
//! namespaces with uid maps, joining a namespace by path, seccomp, cgroup namespaces.

mod common;

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;

use common::{Bundle, Rt, eventually};

#[test]
fn console_socket_receives_the_terminal() {
    let rt = Rt::new("tty");
    let mut b = Bundle::new("tty", &["/bin/sh", "-c", "tty; echo hello-from-tty"]);
    b.edit(|c| c["process"]["terminal"] = true.into());
    let sock = b.dir.join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let id = rt.id("tty");
    let (b_dir, sock2, root) = (b.dir.clone(), sock.clone(), rt.root.clone());
    let id2 = id.clone();
    let runner = std::thread::spawn(move || {
        let mut c = std::process::Command::new(common::BIN);
        c.arg("--root").arg(&root).args([
            "run",
            "-d",
            "--console-socket",
            sock2.to_str().unwrap(),
            "--bundle",
            b_dir.to_str().unwrap(),
            &id2,
        ]);
        common::run_with_timeout(c, std::time::Duration::from_secs(60))
    });
    let (conn, _) = listener.accept().unwrap();
    let master = hull_runtime::sync::recv_fd(conn.as_fd()).expect("pty master over SCM_RIGHTS");
    let out = runner.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut f = std::fs::File::from(master);
    let mut text = String::new();
    let mut buf = [0u8; 256];
    // Read until the container's output has arrived (EIO once the slave side closes).
    while !text.contains("hello-from-tty") {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    assert!(text.contains("/dev/pts/"), "not a terminal: {text:?}");
    assert!(text.contains("hello-from-tty"), "{text:?}");
    assert!(eventually(10, || rt.state(&id)["status"] == "stopped"));
    let o = rt.run(&["delete", &id]);
    assert!(o.status.success());
    rt.assert_gone(&id);
}

#[test]
fn hooks_run_with_state_on_stdin() {
    let rt = Rt::new("hooks");
    let mut b = Bundle::new("hooks", &["/bin/true"]);
    let log = b.dir.join("hooks.log");
    let hook = |name: &str| serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!("read s; echo \"{name} $s\" >> {}", log.display())], "timeout": 10});
    b.edit(|c| {
        c["hooks"] = serde_json::json!({
            "prestart": [hook("prestart")],
            "createRuntime": [hook("createRuntime")],
            "createContainer": [hook("createContainer")],
            "poststart": [hook("poststart")],
            "poststop": [hook("poststop")]
        });
    });
    let id = rt.id("hooks");
    let (code, _, err) = rt.run_bundle(&b, &id);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&log).unwrap();
    let names: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        names,
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "poststart",
            "poststop"
        ],
        "{text}"
    );
    for l in text.lines() {
        let st: serde_json::Value = serde_json::from_str(l.split_once(' ').unwrap().1).unwrap();
        assert_eq!(st["id"], id.as_str());
        assert!(st["pid"].as_i64().unwrap() > 0, "{l}");
    }
    rt.assert_gone(&id);

    // A failing prestart hook fails the container and leaves nothing.
    b.edit(|c| c["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/false"}]}));
    let id = rt.id("hooks-fail");
    let (code, _, err) = rt.run_bundle(&b, &id);
    assert_ne!(code, 0);
    assert!(err.contains("hooks.prestart[0]"), "{err}");
    rt.assert_gone(&id);
}

#[test]
fn user_namespace_with_uid_maps() {
    let rt = Rt::new("userns");
    let mut b = Bundle::new(
        "userns",
        &[
            "/bin/sh",
            "-c",
            "cat /proc/self/uid_map /proc/self/gid_map; id -u",
        ],
    );
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "user"}));
        c["linux"]["uidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["gidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        // A host-owned rootfs is readable by the mapped root through "other" permissions;
        // sysfs cannot be mounted in a user namespace without its own netns ownership.
        c["root"]["readonly"] = false.into();
    });
    let id = rt.id("userns");
    let (code, out, err) = rt.run_bundle(&b, &id);
    assert_eq!(code, 0, "{err}");
    let nums: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(nums[0], ["0", "100000", "65536"]);
    assert_eq!(nums[1], ["0", "100000", "65536"]);
    assert_eq!(nums[2], ["0"]);
    rt.assert_gone(&id);
}

#[test]
fn join_network_namespace_by_path() {
    let rt = Rt::new("join");
    let sandbox = Bundle::new("join-sb", &["/bin/sleep", "300"]);
    let sb = rt.id("sandbox");
    let o = rt.run(&["run", "-d", "--bundle", sandbox.dir.to_str().unwrap(), &sb]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pid = rt.state(&sb)["pid"].as_i64().unwrap();
    let want = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let mut b = Bundle::new("join", &["/bin/sh", "-c", "readlink /proc/self/ns/net"]);
    b.edit(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "network");
        ns.push(serde_json::json!({"type": "network", "path": format!("/proc/{pid}/ns/net")}));
    });
    let id = rt.id("member");
    let (code, out, err) = rt.run_bundle(&b, &id);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), want.to_str().unwrap());
    rt.assert_gone(&id);
    assert!(rt.run(&["delete", "--force", &sb]).status.success());
    rt.assert_gone(&sb);
}

#[test]
fn seccomp_blocks_a_syscall() {
    let rt = Rt::new("seccomp");
    let mut b = Bundle::new(
        "seccomp",
        &["/bin/sh", "-c", "mkdir /tmp/x && echo MADE; echo done"],
    );
    b.edit(|c| {
        c["linux"]["seccomp"] = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
    });
    let id = rt.id("seccomp");
    let (code, out, err) = rt.run_bundle(&b, &id);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "done\n", "mkdir was not blocked: {out} {err}");
    rt.assert_gone(&id);
}

#[test]
fn cgroup_namespace_shows_own_cgroup_as_root() {
    let rt = Rt::new("cgns");
    let mut b = Bundle::new(
        "cgns",
        &[
            "/bin/sh",
            "-c",
            "grep -E ':(pids|memory):' /proc/self/cgroup; ls /sys/fs/cgroup/pids/ | grep -c pids.max",
        ],
    );
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "cgroup"}))
    });
    let id = rt.id("cgns");
    let (code, out, err) = rt.run_bundle(&b, &id);
    assert_eq!(code, 0, "{err}");
    for l in out.lines().take(2) {
        assert!(
            l.ends_with(":/"),
            "cgroup namespace root is not the container's cgroup: {l}"
        );
    }
    rt.assert_gone(&id);
}
