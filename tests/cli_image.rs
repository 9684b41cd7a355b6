//! `hull image` end to end with the real binary: pull/ls/inspect/rm against a real
//! docker-registry, import of OCI layouts and `docker save` archives, and a pull
//! killed with SIGKILL halfway through a layer, then pulled again.

#[path = "../runtime/tests/image_support/mod.rs"]
mod image_support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use image_support::*;

fn hull(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hull"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "hull failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Checks every stored blob hashes to its name (sha256sum, not hull's own code).
fn blobs_verify(data: &Path) {
    let dir = data.join("content/blobs/sha256");
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.starts_with(".tmp-"), "temp file left: {name}");
        let out = Command::new("sha256sum").arg(&p).output().unwrap();
        let sum = String::from_utf8_lossy(&out.stdout);
        assert!(
            sum.starts_with(&name),
            "blob {name} does not hash to its name"
        );
    }
}

#[test]
fn pull_ls_inspect_rm() {
    let s = Scratch::new("cli-image");
    let reg = Registry::start(&s.path("reg"));
    mkimage(&s.path("layout"), "busybox", "1");
    reg.push(&s.path("layout"), "1", "acc/busybox:1", &[]);
    let data = s.path("data");
    let r = format!("{}/acc/busybox:1", reg.host);
    let out = hull(&data, &["image", "pull", &r]);
    let stdout = ok(&out);
    assert!(
        stdout.contains(&r) && stdout.contains("2 layers"),
        "{stdout}"
    );
    // Not a terminal: one plain line per layer on stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("layer ")).count(),
        2,
        "{stderr}"
    );
    let ls = ok(&hull(&data, &["image", "ls"]));
    assert!(
        ls.contains("acc/busybox") && ls.contains("REFERENCE"),
        "{ls}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&hull(&data, &["image", "inspect", &r]))).unwrap();
    assert_eq!(inspect["config"]["config"]["Env"][1], "FIXTURE=1");
    assert_eq!(inspect["record"]["layers"].as_array().unwrap().len(), 2);
    blobs_verify(&data);

    let e = hull(
        &data,
        &["image", "pull", &format!("{}/acc/missing:1", reg.host)],
    );
    assert!(!e.status.success());
    let msg = String::from_utf8_lossy(&e.stderr);
    assert!(
        msg.contains("acc/missing:1") && msg.contains("404"),
        "{msg}"
    );

    let rm = ok(&hull(&data, &["image", "rm", &r]));
    assert!(rm.contains("removed"), "{rm}");
    assert!(ok(&hull(&data, &["image", "ls", "-q"])).trim().is_empty());
    assert!(tree(&data.join("content/blobs/sha256")).is_empty());
    assert!(tree(&data.join("snapshots")).is_empty());
    let e = hull(&data, &["image", "rm", &r]);
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("not found"));
}

#[test]
fn import_oci_layouts_and_docker_archives() {
    let s = Scratch::new("cli-import");
    mkimage(&s.path("layout"), "busybox", "7");
    let data = s.path("data");
    // A layout dir, with the tag as the only name: named after the dir.
    let out = ok(&hull(
        &data,
        &["image", "import", s.path("layout").to_str().unwrap()],
    ));
    assert!(out.contains("localhost/layout:7"), "{out}");
    // The same layout as a tar, named explicitly.
    let st = Command::new("tar")
        .arg("-cf")
        .arg(s.path("layout.tar"))
        .arg("-C")
        .arg(s.path("layout"))
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let out = ok(&hull(
        &data,
        &[
            "image",
            "import",
            "--name",
            "example.com/x/y",
            s.path("layout.tar").to_str().unwrap(),
        ],
    ));
    assert!(out.contains("example.com/x/y:7"), "{out}");
    // A docker save archive (written by skopeo).
    let st = Command::new("skopeo")
        .args(["copy", "-q"])
        .arg(format!("oci:{}:7", s.path("layout").display()))
        .arg(format!(
            "docker-archive:{}:saved/busybox:2",
            s.path("saved.tar").display()
        ))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let out = ok(&hull(
        &data,
        &["image", "import", s.path("saved.tar").to_str().unwrap()],
    ));
    assert!(out.contains("docker.io/saved/busybox:2"), "{out}");
    let ls = ok(&hull(&data, &["image", "ls", "-q"]));
    assert_eq!(ls.lines().count(), 3, "{ls}");
    // All three share the same snapshots (same diff IDs).
    assert_eq!(
        tree(&data.join("snapshots"))
            .iter()
            .filter(|p| !p.contains('/'))
            .count(),
        2
    );
    blobs_verify(&data);
    // A corrupt layout blob is refused and nothing is recorded.
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path("layout/index.json")).unwrap()).unwrap();
    let mdigest = idx["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(s.path(&format!("layout/blobs/sha256/{mdigest}"))).unwrap(),
    )
    .unwrap();
    let l0 = m["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let p = s.path(&format!("layout/blobs/sha256/{l0}"));
    let mut bytes = std::fs::read(&p).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&p, bytes).unwrap();
    let e = hull(
        &s.path("data2"),
        &["image", "import", s.path("layout").to_str().unwrap()],
    );
    assert!(!e.status.success());
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("digest mismatch"),
        "{}",
        String::from_utf8_lossy(&e.stderr)
    );
    assert!(
        ok(&hull(&s.path("data2"), &["image", "ls", "-q"]))
            .trim()
            .is_empty()
    );
}

/// A TCP proxy that trickles server → client bytes, so a pull is slow enough to kill.
fn slow_proxy(upstream: u16, stop: Arc<AtomicBool>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((client, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            client.set_nonblocking(false).unwrap();
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut s2);
            });
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut client, mut server) = (client, server);
                let mut buf = [0u8; 32 << 10];
                while !stop.load(Ordering::Relaxed) {
                    let n = match server.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
    });
    port
}

#[test]
fn killed_pull_leaves_a_consistent_store() {
    let s = Scratch::new("cli-kill");
    let reg = Registry::start(&s.path("reg"));
    mkimage(&s.path("big"), "big", "1");
    reg.push(&s.path("big"), "1", "t/big:1", &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let proxy = slow_proxy(reg.port, stop.clone());
    let data = s.path("data");
    let r = format!("{}/t/big:1", reg.host);
    let mirror = format!("{}=http://127.0.0.1:{proxy}", reg.host);
    let mut child = Command::new(env!("CARGO_BIN_EXE_hull"))
        .args([
            "image",
            "pull",
            "--registry-mirror",
            &mirror,
            &r,
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the layer is partly downloaded and partly unpacked.
    let blobs = data.join("content/blobs/sha256");
    let mut partial = false;
    for _ in 0..6000 {
        let tmp_bytes: u64 = std::fs::read_dir(&blobs)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        if tmp_bytes > 4 << 20 {
            partial = true;
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(partial, "pull never got partway");
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    // Partial state is only temp files; the image is not listed.
    assert!(tree(&data).iter().any(|p| p.contains(".tmp-")));
    assert!(ok(&hull(&data, &["image", "ls", "-q"])).trim().is_empty());
    // The next run removes the dead pull's temps, and a new pull completes.
    ok(&hull(&data, &["image", "pull", &r]));
    assert!(
        !tree(&data).iter().any(|p| p.contains(".tmp-")),
        "{:?}",
        tree(&data)
    );
    blobs_verify(&data);
    assert!(ok(&hull(&data, &["image", "ls", "-q"])).contains("t/big:1"));
    let snaps: Vec<String> = tree(&data.join("snapshots"))
        .into_iter()
        .filter(|p| !p.contains('/'))
        .collect();
    assert_eq!(snaps.len(), 1);
    let f = data.join("snapshots").join(&snaps[0]).join("fs/data/f255");
    assert_eq!(std::fs::metadata(f).unwrap().len(), 256 << 10);
}
