//! Restart safety of the node agent (see node_support): SIGKILLed and restarted, it
//! re-adopts running containers without restarting them, finishes a deletion that
//! happened while it was down, and removes the sandbox of a pod force-deleted meanwhile;
//! pod cgroups and log dirs of pods it does not know (a crash's leftovers) are removed,
//! cgroups still holding processes are not.

mod node_support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use node_support::*;
use serde_json::json;

#[test]
fn agent_kill9_readopts_and_cleans_up() {
    let mut c = Cluster::start("restart");
    let img = c.image.clone();
    for n in ["keep", "gone", "later"] {
        c.pod(
            n,
            json!({"terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": img, "command": ["sleep", "3600"],
                "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}}]}),
        );
    }
    let mut before = Vec::new();
    for n in ["keep", "gone", "later"] {
        let p = c.wait_pod(n, "Ready", 90, |p| {
            cond(p, "Ready").as_deref() == Some("True")
        });
        before.push(p);
    }
    let keep_id = cstatus(&before[0], "c").unwrap().container_id.clone();
    let gone_uid = before[1].metadata.uid.clone().unwrap();
    let later_uid = before[2].metadata.uid.clone().unwrap();

    c.kill_agent();
    // While it is down: one pod force-deleted, one deleted gracefully (stuck terminating).
    c.delete("gone", Some(0));
    c.wait_gone("gone", 30);
    c.delete("later", None);
    assert!(
        c.get("later")
            .is_some_and(|p| p.metadata.deletion_timestamp.is_some())
    );

    let restarted = Instant::now();
    c.start_agent();
    // The agent is back once it renews the Lease.
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-node-lease");
    wait_for("a lease renewal by the restarted agent", 60, || {
        let l = c.rt.block_on(leases.get(&c.node)).ok()?;
        let t = l.spec?.renew_time?.0;
        let age = k8s_openapi::jiff::Timestamp::now().duration_since(t);
        (age.as_secs_f64() < restarted.elapsed().as_secs_f64()).then_some(())
    });
    c.wait_gone("later", 60);
    wait_for("the force-deleted pod's sandbox removed", 60, || {
        (c.sandboxes_of(&gone_uid) == 0).then_some(())
    });
    assert_eq!(c.sandboxes_of(&later_uid), 0);
    assert!(!c.agent_data.join(format!("agent/pods/{gone_uid}")).exists());

    // The surviving pod: same container, never restarted, still Ready.
    std::thread::sleep(Duration::from_secs(3));
    let p = c.wait_pod("keep", "Ready", 30, |p| {
        cond(p, "Ready").as_deref() == Some("True")
    });
    let cs = cstatus(&p, "c").unwrap();
    assert_eq!(
        cs.container_id, keep_id,
        "container replaced after the agent restart"
    );
    assert_eq!(cs.restart_count, 0);

    let uid = p.metadata.uid.clone().unwrap();
    c.delete("keep", None);
    c.wait_gone("keep", 60);
    assert_eq!(c.sandboxes_of(&uid), 0);
    assert!(image_support::mounts_under(&c.agent_data).is_empty());
}

/// Cgroup hierarchies mounted on this machine (v1 controllers and the v2 unified one).
fn cgroup_roots() -> Vec<std::path::PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            let mnt = pre.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| std::path::PathBuf::from(mnt))
        })
        .collect()
}

fn cgroup_anywhere(rel: &str) -> bool {
    cgroup_roots().iter().any(|r| r.join(rel).is_dir())
}

/// A pod cgroup made by hand in every hierarchy (what a crashed agent leaves), with an
/// optional process kept in it; killed and removed on drop, whatever the test did.
struct LeakedCgroup {
    rel: String,
    sleeper: Option<std::process::Child>,
}

impl LeakedCgroup {
    fn new(uid: &str, busy: bool) -> LeakedCgroup {
        let rel = format!("hull-kubepods/besteffort/pod{uid}");
        let mut g = LeakedCgroup { rel, sleeper: None };
        for r in cgroup_roots() {
            std::fs::create_dir_all(r.join(&g.rel)).unwrap();
        }
        if busy {
            let child = std::process::Command::new("sleep")
                .arg("600")
                .spawn()
                .unwrap();
            let pid = child.id();
            g.sleeper = Some(child);
            // One hierarchy holding a process makes the whole pod cgroup busy.
            let r = cgroup_roots().into_iter().next().unwrap();
            std::fs::write(r.join(&g.rel).join("cgroup.procs"), pid.to_string()).unwrap();
        }
        g
    }

    fn anywhere(&self) -> bool {
        cgroup_anywhere(&self.rel)
    }
}

impl Drop for LeakedCgroup {
    fn drop(&mut self) {
        if let Some(mut c) = self.sleeper.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for r in cgroup_roots() {
            let _ = std::fs::remove_dir(r.join(&self.rel));
        }
    }
}

#[test]
fn agent_removes_what_pods_it_does_not_know_left_behind() {
    let mut c = Cluster::start("leftovers");
    let img = c.image.clone();
    c.pod(
        "live",
        json!({"terminationGracePeriodSeconds": 1,
        "containers": [{"name": "c", "image": img, "command": ["sleep", "3600"]}]}),
    );
    let live = c.wait_pod("live", "Ready", 90, |p| {
        cond(p, "Ready").as_deref() == Some("True")
    });
    let live_uid = live.metadata.uid.clone().unwrap();

    // A crash left behind: the cgroups of a pod this cluster never had, with no
    // process in them, and its log dir; and a pod cgroup that still holds a process
    // (not the agent's to kill: it is left alone).
    c.kill_agent();
    let pid = std::process::id();
    let ghost = format!("{pid:08x}-dead-4000-8000-leftovers0001");
    let busy = format!("{pid:08x}-busy-4000-8000-leftovers0002");
    let empty_cg = LeakedCgroup::new(&ghost, false);
    let busy_cg = LeakedCgroup::new(&busy, true);
    // A different pod's log dir: its cleanup would take a cgroup of the same UID with
    // it, and the cgroup above must be found by the sweep alone.
    let logged = format!("{pid:08x}-logs-4000-8000-leftovers0003");
    let log_dir = c
        .agent_data
        .join(format!("agent/logs/pods/default_ghost_{logged}"));
    std::fs::create_dir_all(log_dir.join("c")).unwrap();
    std::fs::write(log_dir.join("c/0.log"), "old\n").unwrap();

    c.start_agent();
    wait_for(
        "the orphaned pod cgroup removed from every hierarchy",
        120,
        || (!empty_cg.anywhere()).then_some(()),
    );
    wait_for("the orphaned log dir removed", 60, || {
        (!log_dir.exists()).then_some(())
    });
    assert!(
        busy_cg.anywhere(),
        "a pod cgroup holding a process was removed"
    );
    // The live pod's own cgroups and container are untouched.
    assert!(
        cgroup_anywhere(&format!("hull-kubepods/besteffort/pod{live_uid}")),
        "the live pod's cgroup was removed"
    );
    let p = c.wait_pod("live", "Ready", 30, |p| {
        cond(p, "Ready").as_deref() == Some("True")
    });
    assert_eq!(cstatus(&p, "c").unwrap().restart_count, 0);
    drop(busy_cg);
    c.delete("live", None);
    c.wait_gone("live", 60);
    assert_eq!(c.sandboxes_of(&live_uid), 0);
}
