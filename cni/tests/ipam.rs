//! host-local IPAM in process, on the reference plugin's on-disk format, checked
//! against Debian's own `host-local` sharing the same directory.

mod common;

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::tag;
use hull_cni::ipam::HostLocal;
use serde_json::{Value, json};

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn setup(ranges: Value) -> (Dir, HostLocal, String) {
    let dir = PathBuf::from(format!("/var/tmp/hull-cni-tests/ipam{}", tag()));
    let name = "ipamnet".to_string();
    let hl = HostLocal::from_value(
        &name,
        &json!({"type": "host-local", "ranges": ranges, "dataDir": dir}),
    )
    .expect("config");
    (Dir(dir), hl, name)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn allocates_round_robin_in_the_reference_format() {
    let (d, hl, name) = setup(json!([[{"subnet": "10.9.0.0/29"}]]));
    let a = hl.allocate("ida", "eth0").expect("a");
    assert_eq!(
        a.ips[0].address.to_string(),
        "10.9.0.2/29",
        "gateway .1 is skipped"
    );
    assert_eq!(a.ips[0].gateway, Some(ip("10.9.0.1")));
    let b = hl.allocate("idb", "eth0").expect("b");
    assert_eq!(b.ips[0].address.addr(), ip("10.9.0.3"));
    let dir = d.0.join(&name);
    assert_eq!(
        std::fs::read_to_string(dir.join("10.9.0.2")).expect("lease"),
        "ida\r\neth0"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("last_reserved_ip.0")).expect("last"),
        "10.9.0.3"
    );
    // Retried ADD: same address back.
    assert_eq!(hl.allocate("ida", "eth0").expect("again").ips, a.ips);
    // A freed address is not handed out again at once.
    assert_eq!(
        hl.release("ida", "eth0").expect("release"),
        vec![ip("10.9.0.2")]
    );
    let c = hl.allocate("idc", "eth0").expect("c");
    assert_eq!(c.ips[0].address.addr(), ip("10.9.0.4"));
    assert!(
        hl.release("nobody", "eth0")
            .expect("release missing")
            .is_empty()
    );
}

#[test]
fn exhaustion_is_code_100_and_names_the_range() {
    let (_d, hl, _) = setup(
        json!([[{"subnet": "10.9.1.0/24", "rangeStart": "10.9.1.20", "rangeEnd": "10.9.1.21"}]]),
    );
    hl.allocate("a", "eth0").expect("a");
    hl.allocate("b", "eth0").expect("b");
    let e = hl.allocate("c", "eth0").expect_err("exhausted");
    assert_eq!(e.code, 100);
    assert!(
        e.msg.contains("ipam.ranges[0]") && e.msg.contains("10.9.1.0/24"),
        "{e}"
    );
}

#[test]
fn dual_stack_gets_one_address_per_range_set_and_rolls_back_on_failure() {
    let (_d, hl, name) = setup(json!([[{"subnet": "10.9.2.0/24"}], [{"subnet": "fd00:9::/120"}]]));
    let r = hl.allocate("ds", "eth0").expect("dual");
    assert_eq!(r.ips.len(), 2);
    assert!(r.ips[1].address.addr().is_ipv6());
    // Second set full → the first set's new lease is rolled back.
    let (_d2, hl2, _) = setup(
        json!([[{"subnet": "10.9.3.0/24"}], [{"subnet": "fd00:9::/126", "rangeStart": "fd00:9::2", "rangeEnd": "fd00:9::2"}]]),
    );
    hl2.allocate("x", "eth0").expect("x");
    assert!(hl2.allocate("y", "eth0").is_err());
    assert_eq!(hl2.leases().len(), 2, "only x's two leases remain");
    let _ = name;
}

#[test]
fn bad_ranges_name_the_field() {
    let bad = |r: Value| {
        HostLocal::from_value("n", &json!({"type": "host-local", "ranges": r}))
            .expect_err("bad")
            .msg
    };
    assert!(
        bad(json!([[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}]]))
            .contains("ipam.ranges[0][0].rangeStart")
    );
    assert!(
        bad(json!([[{"subnet": "10.0.0.0/24", "gateway": "10.1.0.1"}]]))
            .contains("ipam.ranges[0][0].gateway")
    );
    assert!(bad(json!([])).contains("ipam.ranges"));
    assert!(bad(json!([[{"subnet": "10.0.0.0/32"}]])).contains("too small"));
    assert!(
        HostLocal::from_value(
            "../x",
            &json!({"type": "host-local", "subnet": "10.0.0.0/24"})
        )
        .is_err()
    );
}

#[test]
fn shares_its_directory_with_debian_host_local() {
    if !std::path::Path::new("/usr/lib/cni/host-local").exists() {
        panic!("needs Debian containernetworking-plugins (tests/setup installs it)");
    }
    let (d, hl, name) = setup(json!([[{"subnet": "10.9.4.0/24"}]]));
    let conf = json!({"cniVersion": "1.0.0", "name": name, "type": "host-local",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.9.4.0/24"}]], "dataDir": d.0}});
    let reference = |cmd: &str, id: &str| -> Value {
        let mut c = Command::new("/usr/lib/cni/host-local")
            .envs([
                ("CNI_COMMAND", cmd),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", "/proc/self/ns/net"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/usr/lib/cni"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("host-local");
        c.stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes())
            .expect("write");
        let out = c.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "reference {cmd}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let r = reference("ADD", "ref1");
    let ref_ip = r["ips"][0]["address"]
        .as_str()
        .expect("address")
        .to_string();
    let ours = hl.allocate("hull1", "eth0").expect("hull after reference");
    assert_ne!(
        ours.ips[0].address.to_string(),
        ref_ip,
        "hull reused the reference's lease"
    );
    assert_eq!(
        hl.find("ref1", "eth0").len(),
        1,
        "hull reads the reference's lease"
    );
    let r2 = reference("ADD", "ref2");
    assert_ne!(
        r2["ips"][0]["address"].as_str(),
        Some(ours.ips[0].address.to_string().as_str())
    );
    // Each releases the other's.
    assert_eq!(hl.release("ref1", "eth0").expect("release").len(), 1);
    reference("DEL", "hull1");
    assert!(hl.find("hull1", "eth0").is_empty());
    let valid = std::collections::HashSet::new();
    assert_eq!(hl.gc(&valid).expect("gc").len(), 1, "gc frees ref2");
    assert!(hl.leases().is_empty());
}
