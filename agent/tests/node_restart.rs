//! Restart safety of the node agent (see node_support): SIGKILLed and restarted, it
//! re-adopts running containers without restarting them, finishes a deletion that
//! happened while it was down, and removes the sandbox of a pod force-deleted meanwhile.

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
