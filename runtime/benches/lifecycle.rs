//! hull-runtime vs runc, side by side on the same busybox bundle (not a test).
//!
//! `cargo bench -p hull-runtime --bench lifecycle` (as root; needs Debian's runc and
//! busybox-static). Measures a full `run` of /bin/true and create / start / delete
//! separately, interleaving the two runtimes run by run so both see the same machine
//! load, and prints medians and the ratio, the peak RSS of a `run` of each (GNU time:
//! a child spawned from this process would inherit this process's RSS high-water mark
//! through exec) and hull-runtime's binary size. HULL_BENCH_RUNS sets N (default 50).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

fn hull_bin() -> PathBuf {
    // The bench binary lives in target/<profile>/deps; hull-runtime in target/<profile>.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    for p in [
        dir.join("hull-runtime"),
        dir.join("../release/hull-runtime"),
    ] {
        if p.exists() {
            return p;
        }
    }
    panic!("build hull-runtime first: cargo build --release -p hull-runtime");
}

fn make_bundle(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/true")).unwrap();
    let st = Command::new("runc")
        .arg("spec")
        .current_dir(dir)
        .status()
        .expect("runc");
    assert!(st.success(), "runc spec");
    let path = dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    c["process"]["terminal"] = false.into();
    c["process"]["args"] = serde_json::json!(["/bin/true"]);
    std::fs::write(&path, serde_json::to_vec(&c).unwrap()).unwrap();
}

/// Peak RSS (KiB) of one `run`, from GNU time's own fork.
fn peak_rss(bin: &Path, root: &Path, id: &str, cwd: &Path) -> u64 {
    let o = Command::new("/usr/bin/time")
        .args(["-f", "maxrss=%M"])
        .arg(bin)
        .arg("--root")
        .arg(root)
        .args(["run", id])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("/usr/bin/time (Debian package time)");
    let err = String::from_utf8_lossy(&o.stderr);
    err.lines()
        .rev()
        .find_map(|l| l.strip_prefix("maxrss="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs one command; returns wall ms.
fn timed(bin: &Path, root: &Path, args: &[&str], cwd: &Path) -> f64 {
    let t = Instant::now();
    let mut child = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // A file, not a pipe: a created container's init holds its stderr until start.
        .stderr(std::fs::File::create(root.with_extension("err")).expect("stderr file"))
        .spawn()
        .expect("spawn");
    let status = child.wait().expect("wait");
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(
        status.success(),
        "{} {args:?} failed: {}",
        bin.display(),
        std::fs::read_to_string(root.with_extension("err")).unwrap_or_default()
    );
    ms
}

/// Polls `state` (outside the timings) until the container reports stopped.
fn wait_stopped(bin: &Path, root: &Path, id: &str) {
    for _ in 0..1000 {
        let o = Command::new(bin)
            .arg("--root")
            .arg(root)
            .args(["state", id])
            .output()
            .expect("state");
        if String::from_utf8_lossy(&o.stdout).contains("\"stopped\"") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("{id} never stopped");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::var("HULL_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let hull = hull_bin();
    let runc = PathBuf::from("/usr/sbin/runc");
    let base = PathBuf::from(format!("/var/tmp/hull-bench-{}", std::process::id()));
    let bundle = base.join("bundle");
    make_bundle(&bundle);
    let (hroot, rroot) = (base.join("hull-state"), base.join("runc-state"));
    let b = bundle.to_str().unwrap();
    let mut res: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("run", vec![], vec![]),
        ("create", vec![], vec![]),
        ("start", vec![], vec![]),
        ("delete", vec![], vec![]),
    ];
    for i in 0..n + 3 {
        let id = format!("bench-{i}");
        for (which, bin, root) in [(0, &hull, &hroot), (1, &runc, &rroot)] {
            let run = timed(bin, root, &["run", &id], &bundle);
            let create = timed(
                bin,
                root,
                &["create", "--bundle", b, &format!("{id}-c")],
                &bundle,
            );
            let start = timed(bin, root, &["start", &format!("{id}-c")], &bundle);
            // Let /bin/true finish so delete measures the cleanup, not a kill.
            wait_stopped(bin, root, &format!("{id}-c"));
            let delete = timed(bin, root, &["delete", &format!("{id}-c")], &bundle);
            if i < 3 {
                continue; // warm-up
            }
            for (k, v) in [run, create, start, delete].into_iter().enumerate() {
                if which == 0 {
                    res[k].1.push(v)
                } else {
                    res[k].2.push(v)
                }
            }
        }
    }
    println!("hull-runtime vs runc, {n} runs each, interleaved (medians)");
    for (name, h, r) in res {
        let (h, r) = (median(h), median(r));
        println!(
            "  {name:<7} hull-runtime {h:7.2} ms   runc {r:7.2} ms   ratio {:.2}",
            h / r
        );
    }
    let mut rss = [0, 0];
    for i in 0..5 {
        let id = format!("rss-{i}");
        rss[0] = rss[0].max(peak_rss(&hull, &hroot, &id, &bundle));
        rss[1] = rss[1].max(peak_rss(&runc, &rroot, &id, &bundle));
    }
    let size = std::fs::metadata(&hull).map(|m| m.len()).unwrap_or(0);
    println!(
        "  peak RSS of run: hull-runtime {:.2} MiB (target <= 5 MiB), runc {:.2} MiB",
        rss[0] as f64 / 1024.0,
        rss[1] as f64 / 1024.0
    );
    println!(
        "  binary size: {:.2} MiB ({})",
        size as f64 / 1048576.0,
        hull.display()
    );
    let _ = std::fs::remove_dir_all(&base);
}
