//! The controllers the manager runs, each a kube-rs reconciler of desired vs observed
//! state. One module per controller; [`all`] is the list the manager starts.

pub mod node_ipam;
pub mod root_ca;
pub mod serviceaccount;
pub mod util;
pub mod endpoints;
pub mod endpointslice;
pub mod namespace;
pub mod node_lifecycle;
pub mod garbage_collector;
pub mod resourcequota;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
mod deployment_rollout;
mod deployment_status;
pub mod job;
pub mod replicaset;
pub mod statefulset;
pub mod workload_revision;
pub mod workload_util;

use crate::manager::Loop;

/// Every controller loop (and the scheduler), by name.
pub fn all() -> Vec<(&'static str, Loop)> {
    vec![
        ("resourcequota", resourcequota::start),
        ("garbagecollector", garbage_collector::start),
        ("nodelifecycle", node_lifecycle::start),
        ("namespace", namespace::start),
        ("endpointslice", endpointslice::start),
        ("endpoint", endpoints::start),
        ("nodeipam", node_ipam::start),
        ("root-ca-cert-publisher", root_ca::start),
        ("serviceaccount", serviceaccount::start),
        ("scheduler", crate::scheduler::run),
        ("deployment", deployment::deployments),
        ("replicaset", replicaset::replicasets),
        ("replicationcontroller", replicaset::replication_controllers),
        ("daemonset", daemonset::daemonsets),
        ("statefulset", statefulset::statefulsets),
        ("job", job::jobs),
        ("cronjob", cronjob::cronjobs),
    ]
}
