//! ADD+DEL latency: hull-bridge vs Debian's reference `bridge` + `host-local`, same
//! config shape, same netns, measured side by side in one run (interleaved, so machine
//! noise hits both). Prints medians and the ratio (target: hull <= 0.5 x reference).
//! Needs root. `cargo bench -p hull-cni --bench add_del` (HULL_BENCH_RUNS=N to change N).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const REFERENCE: &str = "/usr/lib/cni/bridge";

fn conf(kind: &str, bridge: &str, net: &str, data: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0", "name": net, "type": kind, "bridge": bridge, "isGateway": true,
        "ipMasq": false,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.249.7.0/24"}]], "dataDir": data},
    })
    .to_string()
}

fn run(plugin: &str, cmd: &str, netns: &str, conf: &str) -> bool {
    let mut c = Command::new(plugin)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", "bench")
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn plugin");
    let _ = c.stdin.take().map(|mut s| s.write_all(conf.as_bytes()));
    c.wait().map(|s| s.success()).unwrap_or(false)
}

fn cycle(plugin: &str, netns: &str, conf: &str) -> Duration {
    let t = Instant::now();
    assert!(run(plugin, "ADD", netns, conf), "{plugin} ADD failed");
    assert!(run(plugin, "DEL", netns, conf), "{plugin} DEL failed");
    t.elapsed()
}

fn median(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn main() {
    if !nix::unistd::geteuid().is_root() || !Path::new(REFERENCE).exists() {
        eprintln!("add_del: needs root and Debian's containernetworking-plugins; skipped");
        return;
    }
    let runs: usize = std::env::var("HULL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let hull = env!("CARGO_BIN_EXE_hull-bridge");
    let pid = std::process::id();
    let ns = format!("hcbench{pid}");
    let data = std::env::temp_dir().join(format!("hull-cni-bench-{pid}"));
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .expect("ip")
            .success()
    );
    let netns = format!("/var/run/netns/{ns}");
    let (hb, rb) = (
        format!("hbb{}", pid % 100000),
        format!("hbr{}", pid % 100000),
    );
    let hc = conf("hull-bridge", &hb, "hbench", &data);
    let rc = conf("bridge", &rb, "rbench", &data);
    // Warm up both (bridges created, page cache hot), then interleave.
    for _ in 0..3 {
        cycle(hull, &netns, &hc);
        cycle(REFERENCE, &netns, &rc);
    }
    let (mut h, mut r) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        h.push(cycle(hull, &netns, &hc));
        r.push(cycle(REFERENCE, &netns, &rc));
    }
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    for b in [&hb, &rb] {
        let _ = Command::new("ip").args(["link", "del", b]).status();
    }
    let _ = std::fs::remove_dir_all(&data);
    let (mh, mr) = (median(&mut h), median(&mut r));
    println!(
        "ADD+DEL median over {runs} runs: hull-bridge {mh:.2} ms, reference bridge+host-local {mr:.2} ms, ratio {:.2} (target <= 0.50)",
        mh / mr
    );
}
