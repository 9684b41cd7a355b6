//! Sync time and first-packet latency: hull's nftables rule set vs an iptables rule
//! set of kube-proxy's iptables-mode shape (Debian `iptables-legacy-restore`), both
//! loaded in throwaway network namespaces in the same run.
//!
//! Two tables: the full sync (the first one, and hull's periodic repair), and one
//! change at that scale (an endpoint gone, a Service added, a Service deleted),
//! timed as the daemon does it (the changed Service's ports + incremental transaction)
//! beside kube-proxy's iptables partial sync (`iptables-restore --noflush` of the
//! changed chains plus the whole KUBE-SERVICES chain, which it always rewrites).
//!
//! A third table: request latency through the ClusterIP vs to the pod IP directly.
//!
//! `cargo bench -p hull-proxy --bench sync` (root). Sizes: HULL_BENCH_SIZES=1000,10000,30000.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Netns, service, slice};
use hull_proxy::ports::Ports;
use hull_proxy::syncer::{Outcome, Syncer};
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

/// kube-proxy's iptables partial sync: changed service chains, deleted ones, and
/// KUBE-SERVICES rewritten whole over the `present` Services.
fn iptables_partial(present: &[usize], changed: &[(usize, usize)], deleted: &[usize]) -> String {
    let mut s = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    for (i, eps) in changed {
        let _ = writeln!(s, ":KUBE-SVC-{i} - [0:0]");
        for k in 0..*eps {
            let _ = writeln!(s, ":KUBE-SEP-{i}-{k} - [0:0]");
        }
    }
    for i in present {
        let _ = writeln!(
            s,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i}",
            cip(*i)
        );
    }
    for (i, eps) in changed {
        for k in 0..*eps {
            let rest = eps - k;
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
    for i in deleted {
        let _ = writeln!(s, "-F KUBE-SVC-{i}\n-X KUBE-SVC-{i}");
        for k in 0..EPS {
            let _ = writeln!(s, "-F KUBE-SEP-{i}-{k}\n-X KUBE-SEP-{i}-{k}");
        }
    }
    s.push_str("COMMIT\n");
    s
}

/// One change as the daemon syncs it: the changed Service's ports rebuilt (its
/// slices found through the daemon's index, here picked out before the clock
/// starts), then the syncer's incremental transaction inside `ns`.
fn hull_change(
    ns: &Netns,
    sy: &mut Syncer,
    ports: &mut Ports,
    svcs: &[k8s_openapi::api::core::v1::Service],
    slices: &[k8s_openapi::api::discovery::v1::EndpointSlice],
    name: &str,
) -> Duration {
    let svc = svcs
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name));
    let mine: Vec<_> = slices
        .iter()
        .filter(|s| model::slice_service(s) == Some(("bench", name)))
        .collect();
    let t = Instant::now();
    let changed: BTreeSet<String> = ports
        .update(("bench".into(), name.into()), svc, &mine)
        .into_iter()
        .collect();
    let modelled = t.elapsed();
    let node = sy.node().clone();
    let mut s = std::mem::replace(sy, Syncer::new(node, Duration::MAX));
    let p = std::mem::take(ports);
    let (s, p, outcome) = ns.run(move || {
        let o = s.sync_ports(&p, Some(&changed)).expect("sync");
        (s, p, o)
    });
    *sy = s;
    *ports = p;
    assert_eq!(outcome, Outcome::Partial);
    if std::env::var_os("HULL_BENCH_DETAIL").is_some() {
        eprintln!(
            "  model {modelled:?}, sync {:?}: {:?}",
            t.elapsed() - modelled,
            sy.last_timings()
        );
    }
    t.elapsed()
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
        // Answers one byte per request (the request-latency rows); a bare connect
        // just sees the connection closed.
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let mut b = [0u8; 1];
                if matches!(c.read(&mut b), Ok(1)) {
                    let _ = c.write_all(&b);
                }
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

/// Median time of one request (connect, send a byte, read the reply) to each of
/// `addrs`, interleaved so that all see the same machine load.
fn request_medians(ns: &Netns, addrs: Vec<String>) -> Vec<Duration> {
    let addrs: Vec<SocketAddr> = addrs.iter().map(|a| a.parse().expect("addr")).collect();
    ns.run(move || {
        let once = |a: &SocketAddr| {
            let t = Instant::now();
            let mut c = TcpStream::connect_timeout(a, Duration::from_secs(5)).expect("connect");
            c.write_all(b"x").expect("send");
            let mut b = [0u8; 1];
            c.read_exact(&mut b).expect("reply");
            t.elapsed()
        };
        let mut v: Vec<Vec<Duration>> = vec![Vec::new(); addrs.len()];
        for _ in 0..400 {
            for (a, v) in addrs.iter().zip(v.iter_mut()) {
                v.push(once(a));
            }
        }
        v.into_iter()
            .map(|mut v| {
                v.sort();
                v[v.len() / 2]
            })
            .collect()
    })
}

/// The kernel's floor for a ClusterIP: one DNAT rule for FLOOR_IP in a table of
/// its own (no maps, no jumps), beside hull's table in the same netns. It picks
/// among the same 10 listeners as the Services do (a listener thread that just
/// served a request answers faster than one woken after a while).
const FLOOR_IP: &str = "10.255.0.1";

fn floor_table() -> String {
    let arms: Vec<String> = (0..EPS).map(|k| format!("{k} : {}", 8000 + k)).collect();
    format!(
        "table ip hull-bench-floor {{\n\tchain out {{\n\t\ttype nat hook output priority -101; policy accept;\n\t\tip daddr {FLOOR_IP} tcp dport 80 dnat to {POD} : numgen random mod {EPS} map {{ {} }}\n\t}}\n}}\n",
        arms.join(", ")
    )
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
        "{:>7} {:>11} {:>11} {:>11} {:>11} | {:>11} {:>11} | {:>14} {:>8} {:>8} | {:>11} {:>11} {:>11} {:>11}",
        "svcs",
        "hull full",
        "model",
        "state",
        "apply",
        "text rndr",
        "nft -f",
        "iptables-rst",
        "ipt/hull",
        "text/hull",
        "1st pkt",
        "last",
        "ipt 1st",
        "ipt last"
    );
    let mut latency = Vec::new();
    let mut changes = Vec::new();
    for n in sizes {
        let (mut svcs, mut slices) = objects(n);
        // The previous path, for comparison: the whole table as nft -f text.
        let t = Instant::now();
        let rs = model::build(&svcs, &slices, &node_info);
        let text = nft::render(&rs, &node_info);
        let text_render = t.elapsed();
        drop(rs);
        let text_ns = Netns::new(&format!("t{n}"));
        let text_apply = text_ns.run(move || {
            let t = Instant::now();
            apply::nft_apply(&text).expect("nft apply");
            t.elapsed()
        });
        drop(text_ns);
        // hull's full sync as the daemon runs it: every Service's ports from the
        // objects, then the syncer (state, skeleton by nft -f, elements over
        // netlink, swap).
        let (node, _pod) = lab(&format!("h{n}"));
        let t = Instant::now();
        let mut ports = Ports::new(node_info.clone());
        ports.rebuild(&svcs, &slices);
        let model_time = t.elapsed();
        let mut sy = Syncer::new(node_info.clone(), Duration::MAX);
        let (sync_time, timings) = node.run(move || {
            let t = Instant::now();
            assert_eq!(
                sy.sync_ports(&ports, None).expect("full sync"),
                Outcome::Full
            );
            (t.elapsed(), sy.last_timings())
        });
        let hull_total = model_time + sync_time;
        let h_first = connect_median(&node, format!("{}:80", cip(0)));
        let h_last = connect_median(&node, format!("{}:80", cip(n - 1)));
        node.run(|| apply::nft_apply(&floor_table()).expect("floor table"));
        let m = request_medians(
            &node,
            vec![
                format!("{}:80", cip(n - 1)),
                format!("{FLOOR_IP}:80"),
                format!("{POD}:8000"),
            ],
        );
        let (req_svc, req_floor, req_pod) = (m[0], m[1], m[2]);
        latency.push(format!(
            "{n:>7} {:>14.1}us {:>14.1}us {:>14.1}us {:>8.3}x {:>8.3}x",
            req_svc.as_secs_f64() * 1e6,
            req_floor.as_secs_f64() * 1e6,
            req_pod.as_secs_f64() * 1e6,
            req_svc.as_secs_f64() / req_pod.as_secs_f64(),
            req_floor.as_secs_f64() / req_pod.as_secs_f64(),
        ));
        drop(node);
        let (inode, _pod2) = lab(&format!("i{n}"));
        let ipt = pipe(&inode, &["iptables-legacy-restore"], iptables_text(n));
        let i_first = connect_median(&inode, format!("{}:80", cip(0)));
        let i_last = connect_median(&inode, format!("{}:80", cip(n - 1)));
        println!(
            "{n:>7} {:>9.1}ms {:>9.1}ms {:>9.1}ms {:>9.1}ms | {:>9.1}ms {:>9.1}ms | {:>12.1}ms {:>7.2}x {:>7.2}x | {:>9.1}us {:>9.1}us {:>9.1}us {:>9.1}us",
            hull_total.as_secs_f64() * 1e3,
            model_time.as_secs_f64() * 1e3,
            (timings.state + timings.render).as_secs_f64() * 1e3,
            timings.apply.as_secs_f64() * 1e3,
            text_render.as_secs_f64() * 1e3,
            text_apply.as_secs_f64() * 1e3,
            ipt.as_secs_f64() * 1e3,
            ipt.as_secs_f64() / hull_total.as_secs_f64(),
            (text_render + text_apply).as_secs_f64() / hull_total.as_secs_f64(),
            h_first.as_secs_f64() * 1e6,
            h_last.as_secs_f64() * 1e6,
            i_first.as_secs_f64() * 1e6,
            i_last.as_secs_f64() * 1e6,
        );

        // One change at a time at this scale, through the daemon's syncer.
        let (node, _pod3) = lab(&format!("c{n}"));
        let mut sy = Syncer::new(node_info.clone(), Duration::MAX);
        let mut ports = Ports::new(node_info.clone());
        ports.rebuild(&svcs, &slices);
        {
            let mut s = std::mem::replace(&mut sy, Syncer::new(node_info.clone(), Duration::MAX));
            let p = std::mem::take(&mut ports);
            (sy, ports) = node.run(move || {
                assert_eq!(s.sync_ports(&p, None).expect("full sync"), Outcome::Full);
                (s, p)
            });
        }
        let mut present: Vec<usize> = (0..n).collect();
        // 1. The last Service loses one of its 10 endpoints.
        let gone = slices
            .iter()
            .position(|s| s.metadata.name.as_deref() == Some(&format!("s{}-{}", n - 1, EPS - 1)))
            .expect("slice");
        slices.remove(gone);
        let h_ep = hull_change(
            &node,
            &mut sy,
            &mut ports,
            &svcs,
            &slices,
            &format!("s{}", n - 1),
        );
        let i_ep = pipe(
            &inode,
            &["iptables-legacy-restore", "--noflush"],
            iptables_partial(&present, &[(n - 1, EPS - 1)], &[]),
        );
        // 2. A Service is added.
        let (mut new_s, mut new_sl) = objects(n + 1);
        svcs.push(new_s.remove(n));
        slices.extend(new_sl.drain(n * EPS..));
        present.push(n);
        let h_add = hull_change(&node, &mut sy, &mut ports, &svcs, &slices, &format!("s{n}"));
        let i_add = pipe(
            &inode,
            &["iptables-legacy-restore", "--noflush"],
            iptables_partial(&present, &[(n, EPS)], &[]),
        );
        // 3. The first Service is deleted.
        svcs.remove(0);
        slices.retain(|s| {
            !s.metadata
                .name
                .as_deref()
                .is_some_and(|m| m.starts_with("s0-"))
        });
        present.remove(0);
        let h_del = hull_change(&node, &mut sy, &mut ports, &svcs, &slices, "s0");
        let i_del = pipe(
            &inode,
            &["iptables-legacy-restore", "--noflush"],
            iptables_partial(&present, &[], &[0]),
        );
        let c_first = connect_median(&node, format!("{}:80", cip(1)));
        let c_last = connect_median(&node, format!("{}:80", cip(n)));
        changes.push(format!(
            "{n:>7} {:>9.1}ms {:>9.1}ms {:>9.1}ms | {:>9.1}ms {:>9.1}ms {:>9.1}ms | {:>6.1}x | {:>9.1}us {:>9.1}us",
            h_ep.as_secs_f64() * 1e3,
            h_add.as_secs_f64() * 1e3,
            h_del.as_secs_f64() * 1e3,
            i_ep.as_secs_f64() * 1e3,
            i_add.as_secs_f64() * 1e3,
            i_del.as_secs_f64() * 1e3,
            (i_ep + i_add + i_del).as_secs_f64() / (h_ep + h_add + h_del).as_secs_f64(),
            c_first.as_secs_f64() * 1e6,
            c_last.as_secs_f64() * 1e6,
        ));
    }
    println!(
        "hull full = model + state + apply (skeleton nft -f, elements over netlink, swap), as the daemon's full sync; text = the whole table as nft -f text (the previous path); ipt/hull, text/hull = their time / hull full; 1st/last pkt = median TCP connect to the first/last Service"
    );
    println!(
        "\nrequest latency (connect + 1-byte request/reply, median of 400, interleaved) through the last ClusterIP, through a lone DNAT rule (the kernel's floor), and to the pod IP directly"
    );
    println!(
        "{:>7} {:>16} {:>16} {:>16} {:>9} {:>9}",
        "svcs", "via ClusterIP", "one DNAT rule", "pod IP direct", "ratio", "floor"
    );
    for l in latency {
        println!("{l}");
    }
    println!(
        "ratio = ClusterIP / pod IP (target: within 1.05x); floor = lone DNAT rule / pod IP (conntrack + NAT, no hull rules)"
    );
    println!(
        "\none change, synced as the daemon does (the changed Service's ports + incremental nft -f) vs kube-proxy's iptables partial sync (iptables-legacy-restore --noflush)"
    );
    println!(
        "{:>7} {:>11} {:>11} {:>11} | {:>11} {:>11} {:>11} | {:>7} | {:>11} {:>11}",
        "svcs",
        "hull -1 ep",
        "hull +svc",
        "hull -svc",
        "ipt -1 ep",
        "ipt +svc",
        "ipt -svc",
        "ratio",
        "1st pkt",
        "last"
    );
    for c in changes {
        println!("{c}");
    }
    println!(
        "ratio = iptables total / hull total over the three changes; 1st/last pkt = median TCP connect after the changes"
    );
}
