//! Sync time and first-packet latency: hull's nftables rule set vs an iptables rule
//! set of kube-proxy's iptables-mode shape (Debian `iptables-legacy-restore`), both
//! loaded in throwaway network namespaces in the same run.
//!
//! `cargo bench -p hull-proxy --bench sync` (root). Sizes: HULL_BENCH_SIZES=1000,10000,30000.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Netns, service, slice};
use hull_proxy::{apply, model, nft};
use serde_json::json;

const EPS: usize = 10;
const POD: &str = "10.244.0.2";

fn cip(i: usize) -> String {
    format!("10.{}.{}.{}", 96 + i / 65536, (i / 256) % 256, i % 256)
}

fn objects(
    n: usize,
) -> (
    Vec<k8s_openapi::api::core::v1::Service>,
    Vec<k8s_openapi::api::discovery::v1::EndpointSlice>,
) {
    let mut svcs = Vec::with_capacity(n);
    let mut slices = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("s{i}");
        svcs.push(service(
            "bench",
            &name,
            json!({"clusterIP": cip(i), "ports": [{"port": 80}]}),
        ));
        // Every endpoint is the one pod netns on its own port (one slice per port),
        // so whichever endpoint a rule picks, a real listener answers.
        for k in 0..EPS {
            let mut s = slice("bench", &name, "", 8000 + k as u16, &[(POD, true, "n")]);
            s.metadata.name = Some(format!("{name}-{k}"));
            slices.push(s);
        }
    }
    (svcs, slices)
}

fn iptables_text(n: usize) -> String {
    let mut s = String::from(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n",
    );
    for i in 0..n {
        let _ = writeln!(s, ":KUBE-SVC-{i} - [0:0]");
        for k in 0..EPS {
            let _ = writeln!(s, ":KUBE-SEP-{i}-{k} - [0:0]");
        }
    }
    s.push_str("-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n-A POSTROUTING -j KUBE-POSTROUTING\n");
    s.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\n");
    for i in 0..n {
        let _ = writeln!(
            s,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i}",
            cip(i)
        );
        for k in 0..EPS {
            let rest = EPS - k;
            if rest > 1 {
                let _ = writeln!(
                    s,
                    "-A KUBE-SVC-{i} -m statistic --mode random --probability {:.10} -j KUBE-SEP-{i}-{k}",
                    1.0 / rest as f64
                );
            } else {
                let _ = writeln!(s, "-A KUBE-SVC-{i} -j KUBE-SEP-{i}-{k}");
            }
            let _ = writeln!(s, "-A KUBE-SEP-{i}-{k} -s {POD}/32 -j KUBE-MARK-MASQ");
            let _ = writeln!(
                s,
                "-A KUBE-SEP-{i}-{k} -p tcp -m tcp -j DNAT --to-destination {POD}:{}",
                8000 + k
            );
        }
    }
    s.push_str("COMMIT\n");
    s
}

fn pipe(ns: &Netns, args: &'static [&'static str], text: String) -> Duration {
    ns.run(move || {
        let t = Instant::now();
        let mut c = Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn");
        c.stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        assert!(c.wait().expect("wait").success(), "{args:?} failed");
        t.elapsed()
    })
}

/// Node netns with the one pod netns behind a veth, 10 listeners in the pod.
fn lab(tag: &str) -> (Netns, Netns) {
    let node = Netns::new(&format!("bn{tag}"));
    let pod = Netns::new(&format!("bp{tag}"));
    node.exec(&[
        "ip", "link", "add", "p0", "type", "veth", "peer", "name", "eth0", "netns", &pod.0,
    ]);
    node.exec(&["ip", "addr", "add", "10.244.0.1/30", "dev", "p0"]);
    node.exec(&["ip", "link", "set", "p0", "up"]);
    pod.exec(&["ip", "addr", "add", "10.244.0.2/30", "dev", "eth0"]);
    pod.exec(&["ip", "link", "set", "eth0", "up"]);
    pod.exec(&["ip", "route", "add", "default", "via", "10.244.0.1"]);
    node.exec(&["ip", "route", "add", "default", "dev", "p0"]);
    for k in 0..EPS {
        let l = pod.run(move || TcpListener::bind(("0.0.0.0", 8000 + k as u16)).expect("bind"));
        std::thread::spawn(move || {
            for c in l.incoming() {
                drop(c)
            }
        });
    }
    (node, pod)
}

/// Median TCP connect time (first packet through the NAT rules) to `addr`, from the node.
fn connect_median(ns: &Netns, addr: String) -> Duration {
    let addr: SocketAddr = addr.parse().expect("addr");
    ns.run(move || {
        let mut v: Vec<Duration> = (0..200)
            .map(|_| {
                let t = Instant::now();
                let c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
                let d = t.elapsed();
                drop(c);
                d
            })
            .collect();
        v.sort();
        v[v.len() / 2]
    })
}

fn main() {
    let sizes: Vec<usize> = std::env::var("HULL_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000,30000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let node_info = model::NodeInfo {
        name: "n".into(),
        pod_cidrs: vec![("10.244.0.0".parse().expect("ip"), 16)],
        ..Default::default()
    };
    println!(
        "{:>7} {:>12} {:>12} {:>14} {:>8} | {:>13} {:>13} {:>13} {:>13}",
        "svcs",
        "hull render",
        "hull apply",
        "iptables-rst",
        "ratio",
        "hull 1st pkt",
        "hull last",
        "ipt 1st pkt",
        "ipt last"
    );
    for n in sizes {
        let (svcs, slices) = objects(n);
        let t = Instant::now();
        let rs = model::build(&svcs, &slices, &node_info);
        let text = nft::render(&rs, &node_info);
        let render = t.elapsed();
        let (node, _pod) = lab(&format!("h{n}"));
        let hull_apply = node.run(move || {
            let t = Instant::now();
            apply::nft_apply(&text).expect("nft apply");
            t.elapsed()
        });
        let h_first = connect_median(&node, format!("{}:80", cip(0)));
        let h_last = connect_median(&node, format!("{}:80", cip(n - 1)));
        drop(node);
        let (node, _pod2) = lab(&format!("i{n}"));
        let ipt = pipe(&node, &["iptables-legacy-restore"], iptables_text(n));
        let i_first = connect_median(&node, format!("{}:80", cip(0)));
        let i_last = connect_median(&node, format!("{}:80", cip(n - 1)));
        let hull_total = render + hull_apply;
        println!(
            "{n:>7} {:>10.1}ms {:>10.1}ms {:>12.1}ms {:>7.2}x | {:>11.1}us {:>11.1}us {:>11.1}us {:>11.1}us",
            render.as_secs_f64() * 1e3,
            hull_apply.as_secs_f64() * 1e3,
            ipt.as_secs_f64() * 1e3,
            ipt.as_secs_f64() / hull_total.as_secs_f64(),
            h_first.as_secs_f64() * 1e6,
            h_last.as_secs_f64() * 1e6,
            i_first.as_secs_f64() * 1e6,
            i_last.as_secs_f64() * 1e6,
        );
    }
    println!(
        "ratio = iptables-legacy-restore time / hull (render + nft apply); 1st/last pkt = median TCP connect to the first/last Service"
    );
}
