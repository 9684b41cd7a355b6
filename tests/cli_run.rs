//! `hull run` of an image pulled from a real docker-registry: the image's layers,
//! whiteouts and Env are what the process sees, the exit status is passed through,
//! and `--rm` leaves no mount, dir or lease behind.

#[path = "../runtime/tests/image_support/mod.rs"]
mod image_support;

use std::path::Path;
use std::process::{Command, Output};

use image_support::*;

fn hull(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hull"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

fn run(data: &Path, args: &[&str]) -> (i32, String, String) {
    let mut full = vec!["run", "--data-dir", data.to_str().unwrap()];
    full.extend_from_slice(args);
    let o = Command::new(env!("CARGO_BIN_EXE_hull"))
        .args(&full)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Mounts, bundle dirs and leases of `data`'s containers (all must be gone after --rm).
fn leftovers(data: &Path) -> Vec<String> {
    let mut v: Vec<String> = tree(&data.join("containers"));
    v.extend(tree(&data.join("leases")));
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let canon = std::fs::canonicalize(data).unwrap();
    let h = {
        let out = Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(canon.as_os_str().as_encoded_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        String::from_utf8_lossy(&out.stdout)[..12].to_string()
    };
    let rt = format!("/run/hull/{h}");
    v.extend(
        info.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&rt))
            .map(str::to_string),
    );
    v.extend(tree(&Path::new(&rt).join("bundles")));
    v
}

#[test]
fn run_pulled_image() {
    let s = Scratch::new("cli-run");
    let reg = Registry::start(&s.path("reg"));
    mkimage(&s.path("layout"), "busybox", "1");
    reg.push(&s.path("layout"), "1", "acc/busybox:1", &[]);
    let data = s.path("data");
    let img = format!("{}/acc/busybox:1", reg.host);

    // Pulled on first use.
    let (code, out, err) = run(&data, &["--rm", &img, "cat", "/etc/hello"]);
    assert_eq!((code, out.as_str()), (0, "hello-from-layer2\n"), "{err}");
    assert!(leftovers(&data).is_empty(), "{:?}", leftovers(&data));

    let (code, _, _) = run(&data, &["--rm", &img, "ls", "/bin/zcat"]);
    assert_ne!(code, 0, "whiteout: /bin/zcat must be gone");
    let (_, out, err) = run(&data, &["--rm", &img, "ls", "/opt/d"]);
    assert_eq!(out, "new\n", "{err}");
    let (_, out, err) = run(
        &data,
        &[
            "--rm",
            "-e",
            "EXTRA=2",
            &img,
            "sh",
            "-c",
            "echo $FIXTURE$EXTRA; id -u; hostname",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"12"), "{err}");
    assert_eq!(lines.get(1), Some(&"0"));
    let (code, _, _) = run(&data, &["--rm", &img, "sh", "-c", "exit 7"]);
    assert_eq!(code, 7);
    // Isolation: own pid namespace, only lo, memory limit applied.
    let (_, out, err) = run(
        &data,
        &[
            "--rm",
            "--memory",
            "64m",
            &img,
            "sh",
            "-c",
            "echo $$; ls /sys/class/net",
        ],
    );
    assert_eq!(out, "1\nlo\n", "{err}");
    // Writes go to the container's own upper dir, never the shared snapshot.
    let (code, _, err) = run(
        &data,
        &[
            "--rm",
            &img,
            "sh",
            "-c",
            "echo changed > /etc/hello && rm /bin/cat",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = run(&data, &["--rm", &img, "cat", "/etc/hello"]);
    assert_eq!(out, "hello-from-layer2\n");
    assert!(leftovers(&data).is_empty(), "{:?}", leftovers(&data));

    // Without --rm the writable layer and the lease stay, and rm of the image refuses.
    let (code, _, err) = run(
        &data,
        &["--name", "keep1", &img, "sh", "-c", "echo kept > /kept"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("keep1") && err.contains("kept"), "{err}");
    assert_eq!(
        std::fs::read_to_string(data.join("containers/keep1/upper/kept")).unwrap(),
        "kept\n"
    );
    let o = hull(&data, &["image", "rm", &img]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // As the message says: remove the dir, gc, then the image can go.
    std::fs::remove_dir_all(data.join("containers/keep1")).unwrap();
    assert!(hull(&data, &["image", "gc"]).status.success());
    assert!(hull(&data, &["image", "rm", &img]).status.success());
    assert!(tree(&data.join("snapshots")).is_empty());
    assert!(leftovers(&data).is_empty(), "{:?}", leftovers(&data));

    // A bad image reference or command is a clear error, nothing left behind.
    let (code, _, err) = run(
        &data,
        &["--rm", &format!("{}/acc/none:1", reg.host), "true"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("acc/none:1"), "{err}");
    let (code, _, err) = run(&data, &["--rm", "--memory", "lots", &img, "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("--memory"), "{err}");
    assert!(leftovers(&data).is_empty(), "{:?}", leftovers(&data));
}
