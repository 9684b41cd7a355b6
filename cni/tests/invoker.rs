//! The invoker (hull's libcni) driving real plugin chains: hull-bridge beside Debian's
//! `portmap` and `loopback` in a containerd-shaped conflist, and Debian's reference
//! `bridge` + `host-local`. Needs root.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use hull_cni::invoker::{Invoker, RuntimeConf, find_default, list_dir, parse_config};
use hull_cni::types::Attachment;
use serde_json::json;

/// A scratch dir with a CNI_PATH entry for hull-bridge and a conf dir; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let d = PathBuf::from(format!("/var/tmp/hull-cni-tests/inv{}", tag()));
        std::fs::create_dir_all(d.join("bin")).expect("mkdir");
        std::fs::create_dir_all(d.join("net.d")).expect("mkdir");
        std::os::unix::fs::symlink(PLUGIN, d.join("bin/hull-bridge")).expect("symlink");
        Self(d)
    }
    fn invoker(&self) -> Invoker {
        Invoker::new(
            vec![self.0.join("bin"), PathBuf::from("/usr/lib/cni")],
            self.0.join("cache"),
        )
    }
    fn conf_dir(&self) -> PathBuf {
        self.0.join("net.d")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rt(id: &str, ns: &Path) -> RuntimeConf {
    RuntimeConf {
        container_id: id.into(),
        netns: ns.display().to_string(),
        ifname: "eth0".into(),
        args: vec![
            ("K8S_POD_NAME".into(), "web".into()),
            ("IgnoreUnknown".into(), "1".into()),
        ],
        ..Default::default()
    }
}

#[test]
fn containerd_shaped_conflist_with_debian_portmap_and_loopback() {
    require_root();
    let s = Scratch::new();
    let net = Net::new(&[&subnet(20)], json!({}));
    let mut bridge = net.conf.clone();
    let o = bridge.as_object_mut().expect("obj");
    o.remove("cniVersion");
    o.remove("name");
    let list = json!({
        "cniVersion": "1.0.0", "name": net.name,
        "plugins": [bridge, {"type": "portmap", "capabilities": {"portMappings": true}}, {"type": "loopback"}],
    });
    std::fs::write(s.conf_dir().join("10-hull.conflist"), list.to_string()).expect("write");
    std::fs::write(
        s.conf_dir().join("99-other.conf"),
        r#"{"cniVersion":"1.0.0","name":"other","type":"bridge"}"#,
    )
    .expect("write");
    let list = find_default(&s.conf_dir()).expect("load conflist");
    assert_eq!(list.name, net.name);
    let inv = s.invoker();
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    let (ra, rb) = (
        rt(&format!("cd{}", tag()), &a.path()),
        rt(&format!("cd{}", tag()), &b.path()),
    );
    struct Del<'a>(
        &'a Invoker,
        &'a hull_cni::types::NetworkConfigList,
        &'a RuntimeConf,
    );
    impl Drop for Del<'_> {
        fn drop(&mut self) {
            let _ = self.0.del(self.1, self.2);
        }
    }
    let res_a = inv.add(&list, &ra).expect("ADD a");
    let _da = Del(&inv, &list, &ra);
    let res_b = inv.add(&list, &rb).expect("ADD b");
    let _db = Del(&inv, &list, &rb);
    assert_eq!(res_a.ips.len(), 1);
    assert_eq!(res_a.interfaces.len(), 3);
    let ip_b = res_b.ips[0].address.addr().to_string();
    assert!(a.ping(&ip_b), "pod a cannot reach pod b through the chain");
    // loopback ran: lo is up.
    let lo = String::from_utf8_lossy(&a.exec(&["ip", "link", "show", "lo"]).stdout).into_owned();
    assert!(lo.contains("UP"), "{lo}");
    // The result is cached as libcni does, and CHECK runs the whole chain.
    assert_eq!(inv.cached_result(&list.name, &ra).expect("cache"), res_a);
    inv.check(&list, &ra).expect("CHECK");
    inv.del(&list, &ra).expect("DEL a");
    assert!(inv.cached_result(&list.name, &ra).is_none());
    inv.del(&list, &ra).expect("second DEL");
    inv.del(&list, &rb).expect("DEL b");
    assert!(net.leases().is_empty());
    assert_eq!(net.ports(), 0);
}

#[test]
fn invoker_runs_debian_reference_bridge_and_host_local() {
    require_root();
    let s = Scratch::new();
    let t = tag();
    let br = format!("rb{t}");
    struct DelBr(String, PathBuf);
    impl Drop for DelBr {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &self.0])
                .status();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let leases = s.0.join("leases");
    let _g = DelBr(br.clone(), leases.clone());
    let list = parse_config(
        json!({"cniVersion": "1.0.0", "name": format!("ref{t}"), "plugins": [
            {"type": "bridge", "bridge": br, "isGateway": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet(21)}]], "dataDir": leases}}]})
        .to_string()
        .as_bytes(),
    )
    .expect("parse");
    let inv = s.invoker();
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    let (ra, rb) = (
        rt(&format!("rf{}", tag()), &a.path()),
        rt(&format!("rf{}", tag()), &b.path()),
    );
    let res_a = inv.add(&list, &ra).expect("reference ADD a");
    let res_b = inv.add(&list, &rb).expect("reference ADD b");
    assert!(b.ping(&res_a.ips[0].address.addr().to_string()));
    assert!(a.ping(&res_b.ips[0].address.addr().to_string()));
    assert!(inv.cached_result(&list.name, &rb).is_some());
    inv.check(&list, &ra).expect("reference CHECK");
    assert!(
        inv.plugin_versions("bridge")
            .expect("VERSION")
            .contains(&"1.0.0".to_string())
    );
    inv.del(&list, &ra).expect("DEL a");
    inv.del(&list, &rb).expect("DEL b");
    let left: Vec<_> = std::fs::read_dir(leases.join(&list.name))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name())
                .filter(|n| n != "lock" && !n.to_string_lossy().starts_with("last"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn invoker_gc_and_status_reach_hull_bridge() {
    require_root();
    let s = Scratch::new();
    let net = Net::new(&[&subnet(22)], json!({}));
    let mut bridge = net.conf.clone();
    bridge.as_object_mut().expect("obj").remove("name");
    let list = parse_config(
        json!({"cniVersion": "1.1.0", "name": net.name, "plugins": [bridge]})
            .to_string()
            .as_bytes(),
    )
    .expect("parse");
    let inv = s.invoker();
    inv.status(&list).expect("STATUS");
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    let (ra, rb) = (
        rt(&format!("gc{}", tag()), &a.path()),
        rt(&format!("gc{}", tag()), &b.path()),
    );
    inv.add(&list, &ra).expect("ADD a");
    inv.add(&list, &rb).expect("ADD b");
    let keep = Attachment {
        container_id: ra.container_id.clone(),
        ifname: "eth0".into(),
    };
    inv.gc(&list, std::slice::from_ref(&keep)).expect("GC");
    assert_eq!(net.leases().len(), 1);
    assert_eq!(inv.cached_attachments(&list.name), vec![keep]);
    inv.del(&list, &ra).expect("DEL");
    assert!(net.leases().is_empty());
}

#[test]
fn config_dir_is_read_in_lexical_order_and_bad_files_are_named() {
    let s = Scratch::new();
    let d = s.conf_dir();
    std::fs::write(
        d.join("20-b.conf"),
        r#"{"cniVersion":"0.4.0","name":"b","type":"bridge"}"#,
    )
    .expect("write");
    std::fs::write(
        d.join("10-a.json"),
        r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"loopback"}]}"#,
    )
    .expect("write");
    std::fs::write(d.join("05-x.txt"), "ignored").expect("write");
    let files = list_dir(&d).expect("list");
    assert_eq!(files.len(), 2);
    assert_eq!(find_default(&d).expect("default").name, "a");
    let single = hull_cni::invoker::load_file(&d.join("20-b.conf")).expect("single conf");
    assert_eq!(single.plugins.len(), 1);
    std::fs::write(
        d.join("01-bad.conflist"),
        r#"{"cniVersion":"1.0.0","name":"bad","plugins":[{}]}"#,
    )
    .expect("write");
    let e = hull_cni::invoker::load_file(&d.join("01-bad.conflist")).expect_err("bad conflist");
    assert!(
        e.msg.contains("plugins[0].type") && e.msg.contains("01-bad.conflist"),
        "{e}"
    );
    let e = parse_config(br#"{"cniVersion":"7.0.0","name":"v","plugins":[{"type":"x"}]}"#)
        .expect_err("version");
    assert_eq!(e.code, 1);
    let l = parse_config(
        br#"{"cniVersion":"1.0.0","cniVersions":["0.4.0","1.1.0","9.0.0"],"name":"v","plugins":[{"type":"x"}]}"#,
    )
    .expect("cniVersions");
    assert_eq!(l.cni_version, "1.1.0");
}

#[test]
fn a_failing_chain_is_unwound() {
    require_root();
    let s = Scratch::new();
    let net = Net::new(&[&subnet(23)], json!({}));
    let mut bridge = net.conf.clone();
    bridge.as_object_mut().expect("obj").remove("name");
    let list = parse_config(
        json!({"cniVersion": "1.0.0", "name": net.name, "plugins": [bridge, {"type": "no-such-plugin"}]})
            .to_string()
            .as_bytes(),
    )
    .expect("parse");
    let inv = s.invoker();
    let ns = Netns::new("u");
    let r = rt(&format!("uw{}", tag()), &ns.path());
    let e = inv.add(&list, &r).expect_err("chain with a missing plugin");
    assert_eq!(e.code, 50, "{e}");
    assert!(e.msg.contains("no-such-plugin"), "{e}");
    assert!(
        net.leases().is_empty(),
        "hull-bridge's lease survived the unwind"
    );
    assert_eq!(net.ports(), 0, "hull-bridge's veth survived the unwind");
    assert!(inv.cached_result(&list.name, &r).is_none());
}

#[test]
fn builtin_bridge_runs_in_process_with_the_binarys_checks() {
    require_root();
    let s = Scratch::new();
    let net = Net::new(&[&subnet(17)], json!({"ipMasq": true}));
    let ns = Netns::new("bi");
    let mut list =
        json!({"cniVersion": "1.1.0", "name": net.conf["name"], "plugins": [net.conf.clone()]});
    list["plugins"][0]
        .as_object_mut()
        .expect("plugin")
        .remove("cniVersion");
    let list = parse_config(list.to_string().as_bytes()).expect("conflist");
    // No hull-bridge on the plugin path at all: only the in-process one can answer.
    let mut inv = Invoker::new(vec![s.0.join("empty")], s.0.join("cache"));
    inv.builtin_bridge = true;
    let id = format!("bi{}", tag());
    let r = inv
        .add(&list, &rt(&id, &ns.path()))
        .expect("ADD in process");
    let ip = r.ips[0].address.addr().to_string();
    assert!(
        ns.exec(&["ip", "-o", "addr"])
            .stdout
            .windows(ip.len())
            .any(|w| w == ip.as_bytes())
    );
    assert!(nft_has(&hash(&id, "eth0")), "no masquerade rules");
    inv.check(&list, &rt(&id, &ns.path()))
        .expect("CHECK in process");
    // The binary's validation of the environment holds in process too.
    let e = inv
        .add(&list, &rt("bad/id", &ns.path()))
        .expect_err("a container id with '/'");
    assert!(
        e.msg.contains("CNI_CONTAINERID") && e.msg.contains("in process"),
        "{e}"
    );
    inv.del(&list, &rt(&id, &ns.path()))
        .expect("DEL in process");
    assert!(!nft_has(&hash(&id, "eth0")));
    assert!(net.leases().is_empty(), "leases left: {:?}", net.leases());
    // Without the flag the same invoker must exec, and finds no plugin.
    inv.builtin_bridge = false;
    assert!(inv.add(&list, &rt(&id, &ns.path())).is_err());
}
