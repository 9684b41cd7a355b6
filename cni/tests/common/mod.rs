//! Shared fixtures for hull-cni's root tests: named netns, unique bridges/subnets,
//! running the real `hull-bridge` binary, and guards that clean up even on panic.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_hull-bridge");

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "hull-cni tests need root (real netns, netlink, nftables)"
    );
}

/// A short unique tag: pid + per-process counter (interface names max 15 chars).
pub fn tag() -> String {
    format!(
        "{:x}{}",
        std::process::id() % 0xfffff,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A per-test /24 in 10.200-239.x.0 (clear of the 10.244 pod and 10.96 service CIDRs
/// and of the acceptance check's 10.250) so parallel tests and parallel runs differ.
pub fn subnet(idx: u8) -> String {
    format!("10.{}.{}.0/24", 200 + std::process::id() % 40, idx)
}

pub fn run_ip(args: &[&str]) {
    let st = Command::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

/// A named network namespace under /var/run/netns, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Self {
        let name = format!("hc{prefix}{}", tag());
        run_ip(&["netns", "add", &name]);
        Self { name }
    }
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }
    /// Runs `f` on a thread inside this netns.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(self.path()).expect("open netns");
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("setns");
                f()
            })
            .join()
            .expect("netns thread")
        })
    }
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec")
    }
    pub fn ping(&self, ip: &str) -> bool {
        let v6 = ip.contains(':');
        let mut a = vec!["ping", "-c1", "-W2"];
        if v6 {
            a.push("-6");
        }
        a.push(ip);
        self.exec(&a).status.success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A test network: bridge name, config and lease dir; removes the bridge and leases on drop.
pub struct Net {
    pub name: String,
    pub bridge: String,
    pub data_dir: PathBuf,
    pub conf: Value,
}

impl Net {
    /// A hull-bridge config on a unique bridge with `subnets` (one range set each).
    pub fn new(subnets: &[&str], extra: Value) -> Self {
        let t = tag();
        let name = format!("hcnet{t}");
        let bridge = format!("hb{t}");
        let data_dir = PathBuf::from(format!("/var/tmp/hull-cni-tests/{name}"));
        let ranges: Vec<Value> = subnets.iter().map(|s| json!([{"subnet": s}])).collect();
        let mut conf = json!({
            "cniVersion": "1.1.0", "name": name, "type": "hull-bridge", "bridge": bridge,
            "isGateway": true,
            "ipam": {"type": "host-local", "ranges": ranges, "dataDir": data_dir},
        });
        if let (Some(c), Some(e)) = (conf.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        Self {
            name,
            bridge,
            data_dir,
            conf,
        }
    }
    pub fn lease_dir(&self) -> PathBuf {
        self.data_dir.join(&self.name)
    }
    pub fn leases(&self) -> Vec<String> {
        std::fs::read_dir(self.lease_dir())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
                    .collect()
            })
            .unwrap_or_default()
    }
    /// Host interfaces enslaved to this bridge.
    pub fn ports(&self) -> usize {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

pub struct Out {
    pub ok: bool,
    pub json: Value,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the plugin binary with `env` and `conf` on stdin.
pub fn plugin(cmd: &str, id: &str, netns: Option<&Path>, ifname: &str, conf: &Value) -> Out {
    plugin_raw(
        &[
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", id),
            (
                "CNI_NETNS",
                &netns.map(|p| p.display().to_string()).unwrap_or_default(),
            ),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", "/usr/lib/cni"),
        ],
        conf.to_string().as_bytes(),
    )
}

pub fn plugin_raw(env: &[(&str, &str)], stdin: &[u8]) -> Out {
    let mut c = Command::new(PLUGIN);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hull-bridge");
    // A plugin may reject its environment before reading stdin: a broken pipe is fine.
    let _ = child.stdin.take().expect("stdin").write_all(stdin);
    let out = child.wait_with_output().expect("wait hull-bridge");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Out {
        ok: out.status.success(),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// An attachment DEL'd on drop, so a failing test leaves no veth, lease or rule.
pub struct Attached<'a> {
    pub id: String,
    pub ifname: String,
    pub netns: &'a Netns,
    pub conf: Value,
    pub result: Value,
}

impl<'a> Attached<'a> {
    pub fn add(net: &Net, netns: &'a Netns, conf: Option<Value>) -> Self {
        Self::add_if(net, netns, "eth0", conf)
    }
    pub fn add_if(net: &Net, netns: &'a Netns, ifname: &str, conf: Option<Value>) -> Self {
        let id = format!("ctr{}", tag());
        let conf = conf.unwrap_or_else(|| net.conf.clone());
        let out = plugin("ADD", &id, Some(&netns.path()), ifname, &conf);
        assert!(out.ok, "ADD failed: {} {}", out.stdout, out.stderr);
        Self {
            id,
            ifname: ifname.to_string(),
            netns,
            conf,
            result: out.json,
        }
    }
    pub fn ip(&self, i: usize) -> String {
        let a = self.result["ips"][i]["address"]
            .as_str()
            .expect("ips[i].address");
        a.split('/').next().unwrap_or_default().to_string()
    }
    pub fn del(&self) -> Out {
        plugin(
            "DEL",
            &self.id,
            Some(&self.netns.path()),
            &self.ifname,
            &self.conf,
        )
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        let _ = self.del();
    }
}

/// A TCP server in `ns` answering `reply` to `conns` connections; returns its port.
pub fn serve(
    ns: &Netns,
    addr: &str,
    reply: &'static str,
    conns: usize,
) -> (u16, std::thread::JoinHandle<()>) {
    let path = ns.path();
    let addr = addr.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let file = std::fs::File::open(path).expect("open netns");
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let l = TcpListener::bind(format!("{addr}:0")).expect("bind");
        tx.send(l.local_addr().expect("addr").port())
            .expect("send port");
        l.set_nonblocking(false).ok();
        for s in l.incoming().take(conns) {
            match s {
                Ok(mut s) => {
                    let _ = s.write_all(reply.as_bytes());
                }
                Err(_) => break,
            }
        }
    });
    (rx.recv().expect("port"), h)
}

/// Connects to `addr` from `ns` (or the host when `None`) and reads the reply.
pub fn fetch(ns: Option<&Netns>, addr: SocketAddr) -> std::io::Result<String> {
    let go = move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf)
    };
    match ns {
        Some(n) => n.run(go),
        None => go(),
    }
}

/// The hash hull-bridge names an attachment's veth and nft chains with.
pub fn hash(id: &str, ifname: &str) -> String {
    hull_cni::bridge::attachment_hash(id, ifname)
}

pub fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether table inet hull-cni holds any chain or element for `hash`.
pub fn nft_has(hash: &str) -> bool {
    let out = Command::new("nft")
        .args(["list", "table", "inet", "hull-cni"])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).contains(hash)
}
