//! Image benchmarks, each against a peer measured in the same run (prints ratios):
//! 1. unpack of the same gzip layers: hull (decompress + verify diff ID + safe unpack)
//!    vs `tar -xzf` (the practical limit);
//! 2. pull+unpack of the same image from a local docker-registry: hull vs containerd's
//!    `ctr image pull` (its own containerd, root/state/socket under /var/tmp, stopped
//!    by PID).
//!
//! Run as root: `cargo bench -p hull-runtime --bench image_unpack`.

#[path = "../tests/image_support/mod.rs"]
mod image_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hull_runtime::image::ImageStore;
use hull_runtime::image::pull::Quiet;
use hull_runtime::image::unpack::{UnpackOptions, apply_layer};
use image_support::*;

const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn layer_blobs(layout: &Path) -> Vec<std::path::PathBuf> {
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let d = idx["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(d)).unwrap())
            .unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            layout
                .join("blobs/sha256")
                .join(l["digest"].as_str().unwrap().trim_start_matches("sha256:"))
        })
        .collect()
}

fn bench_unpack(s: &Scratch, layout: &Path, label: &str) {
    let blobs = layer_blobs(layout);
    let (mut hull, mut tar) = (Vec::new(), Vec::new());
    for i in 0..RUNS + 1 {
        let d = s.path(&format!("u-{label}-{i}"));
        let t0 = Instant::now();
        for (n, b) in blobs.iter().enumerate() {
            let dir = d.join(format!("hull{n}"));
            std::fs::create_dir_all(&dir).unwrap();
            let f = std::io::BufReader::with_capacity(256 << 10, std::fs::File::open(b).unwrap());
            let gz = flate2::bufread::MultiGzDecoder::new(f);
            apply_layer(gz, &dir, &[], "bench", &UnpackOptions::default()).unwrap();
        }
        let th = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        for (n, b) in blobs.iter().enumerate() {
            let dir = d.join(format!("tar{n}"));
            std::fs::create_dir_all(&dir).unwrap();
            let st = Command::new("tar")
                .arg("-xzf")
                .arg(b)
                .arg("-C")
                .arg(&dir)
                .status()
                .unwrap();
            assert!(st.success());
        }
        let tt = t0.elapsed().as_secs_f64();
        std::fs::remove_dir_all(&d).unwrap();
        if i > 0 {
            hull.push(th);
            tar.push(tt);
        }
    }
    let (h, t) = (median(hull), median(tar));
    println!(
        "unpack {label}: hull {:.1} ms, tar -xzf {:.1} ms, ratio {:.2} (target <= 1.2)",
        h * 1e3,
        t * 1e3,
        h / t
    );
}

struct Containerd {
    child: Child,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let cfg = dir.join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n[grpc]\naddress = \"{0}/sock\"\n[plugins.\"io.containerd.grpc.v1.cri\"]\ndisable = true\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .expect("containerd");
        for _ in 0..200 {
            if dir.join("sock").exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Containerd { child }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench_pull(s: &Scratch, reg: &Registry, repo: &str) {
    let r = format!("{}/{repo}", reg.host);
    let (mut hull, mut ctr) = (Vec::new(), Vec::new());
    for i in 0..RUNS + 1 {
        let data = s.path(&format!("p-hull-{i}"));
        let t0 = Instant::now();
        let store = ImageStore::open(&data).unwrap();
        store.pull(&r, &Quiet).unwrap();
        let th = t0.elapsed().as_secs_f64();
        drop(store);
        std::fs::remove_dir_all(&data).unwrap();

        let cdir = s.path("containerd");
        let c = Containerd::start(&cdir);
        let t0 = Instant::now();
        let out = Command::new("ctr")
            .arg("-a")
            .arg(cdir.join("sock"))
            .args([
                "image",
                "pull",
                "--plain-http",
                "--snapshotter",
                "overlayfs",
                &r,
            ])
            .output()
            .unwrap();
        let tc = t0.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "ctr pull: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        drop(c);
        for m in mounts_under(&cdir) {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        let _ = std::fs::remove_dir_all(&cdir);
        if i > 0 {
            hull.push(th);
            ctr.push(tc);
        }
    }
    let (h, c) = (median(hull), median(ctr));
    println!(
        "pull+unpack {repo}: hull {:.1} ms, ctr image pull {:.1} ms, ratio {:.2} (target < 1)",
        h * 1e3,
        c * 1e3,
        h / c
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes; this is a benchmark only
    }
    let s = Scratch::new("bench");
    mkimage(&s.path("busybox"), "busybox", "1");
    mkimage(&s.path("big"), "big", "1");
    bench_unpack(&s, &s.path("busybox"), "busybox (2 layers, ~400 entries)");
    bench_unpack(&s, &s.path("big"), "64 MiB layer");
    let reg = Registry::start(&s.path("reg"));
    reg.push(&s.path("busybox"), "1", "b/busybox:1", &[]);
    reg.push(&s.path("big"), "1", "b/big:1", &[]);
    bench_pull(&s, &reg, "b/busybox:1");
    bench_pull(&s, &reg, "b/big:1");
}
