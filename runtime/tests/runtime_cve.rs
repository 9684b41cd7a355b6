//! CVE-2019-5736: a container must not be able to overwrite the runtime binary.
//!
//! The classic attack, done from inside the container with busybox sh: a process in the
//! container is made to execute the runtime (`exec CONTAINER /proc/self/exe ...`: the
//! magic link is the runtime process's own binary), the container's init opens
//! `/proc/<that pid>/exe`, waits for the runtime to exit (so the file is no longer busy)
//! and then writes through `/proc/self/fd/3`. Against a runtime running from its file
//! on disk this truncates and rewrites that file; hull-runtime runs from a sealed memfd,
//! so the write is refused. The test runs a private copy of the binary so a failure
//! cannot damage the build.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Bundle, Rt, eventually, run_with_timeout};

/// Copies the ELF interpreter and the shared libraries `bin` needs into `rootfs` at the
/// same paths, so the runtime binary can execute inside the busybox container.
fn copy_libs(bin: &Path, rootfs: &Path) {
    let out = Command::new("ldd").arg(bin).output().expect("ldd");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        let Some(path) = path else { continue };
        let dst = rootfs.join(path.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&path, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", path.display()));
    }
}

const ATTACK: &str = r#"
i=0
while :; do
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = 1 ] && continue
    case "$(head -c 14 $d/cmdline 2>/dev/null)" in
      /proc/self/exe) readlink $d/exe >/out/exe 2>/dev/null && break 2 ;;
    esac
  done
  i=$((i+1)); [ $i -gt 6000 ] && { echo timeout >/out/result; exit 1; }
  sleep 0.01
done
exec 3<$d/exe
echo opened >/out/status
while [ -e $d ]; do sleep 0.01; done
if echo pwned >/proc/self/fd/3 2>/out/err; then echo written; else echo refused; fi >/out/result
"#;

#[test]
fn container_cannot_overwrite_the_runtime_binary() {
    let rt = Rt::new("cve5736");
    let mut b = Bundle::new("cve5736", &["/bin/sh", "-c", ATTACK]);
    let out = b.dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    // A private copy of the runtime: the one the attack aims at.
    let bin = b.dir.join("hull-runtime");
    std::fs::copy(common::BIN, &bin).expect("copy hull-runtime");
    let before = std::fs::read(&bin).unwrap();
    copy_libs(&bin, &b.rootfs());
    let src = out.to_str().unwrap().to_string();
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!(
            {"destination": "/out", "type": "bind", "source": src, "options": ["rbind", "rw"]}
        ));
    });
    let id = rt.id("cve");
    let cmd = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.arg("--root").arg(&rt.root).args(args).current_dir(&b.dir);
        c
    };
    let mut c = cmd(&["run", "-d", &id]);
    c.stdin(Stdio::null());
    let o = run_with_timeout(c, std::time::Duration::from_secs(60));
    assert!(
        o.status.success(),
        "run -d: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The runtime binary, executed inside the container, blocks reading stdin.
    let mut victim = cmd(&["exec", &id, "/proc/self/exe", "update", "-r", "-", "x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn exec");
    let opened = eventually(60, || out.join("status").exists());
    // Let the runtime exit: now nothing executes the file and it could be written.
    drop(victim.stdin.take());
    let _ = victim.wait();
    assert!(
        opened,
        "the attack never found the runtime in the container: {:?}",
        std::fs::read_to_string(out.join("result"))
    );
    assert!(eventually(60, || out.join("result").exists()));
    let result = std::fs::read_to_string(out.join("result")).unwrap();
    let exe = std::fs::read_to_string(out.join("exe")).unwrap_or_default();
    let after = std::fs::read(&bin).unwrap();
    assert!(
        after == before,
        "the runtime binary on disk was changed from inside the container ({} -> {} bytes)",
        before.len(),
        after.len()
    );
    assert_eq!(
        result.trim(),
        "refused",
        "write through /proc/PID/exe ({})",
        exe.trim()
    );
    assert!(
        !exe.contains(b.dir.to_str().unwrap()),
        "the runtime in the container runs from its file on disk: {exe:?}"
    );
    let o = rt.run(&["delete", "--force", &id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    rt.assert_gone(&id);
    let _ = std::io::stderr().flush();
}
