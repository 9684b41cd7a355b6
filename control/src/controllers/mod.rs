//! The controllers the manager runs, each a kube-rs reconciler of desired vs observed
//! state. One module per controller; [`all`] is the list the manager starts.

pub mod cronjob;
pub mod csr;
pub mod daemonset;
pub mod deployment;
mod deployment_rollout;
mod deployment_status;
pub mod endpoints;
pub mod endpointslice;
pub mod garbage_collector;
pub mod hpa;
pub mod hpa_behavior;
pub mod hpa_metrics;
pub mod hpa_replicas;
pub mod hpa_status;
pub mod job;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod replicaset;
pub mod resourcequota;
pub mod root_ca;
pub mod serviceaccount;
pub mod statefulset;
pub mod util;
pub mod workload_revision;
pub mod workload_util;

use crate::manager::Loop;

/// Every controller loop (and the scheduler), by name.
pub fn all() -> Vec<(&'static str, Loop)> {
    vec![
        ("serviceaccount", serviceaccount::start),
        ("root-ca-cert-publisher", root_ca::start),
        ("nodeipam", node_ipam::start),
        ("endpoint", endpoints::start),
        ("endpointslice", endpointslice::start),
        ("namespace", namespace::start),
        ("nodelifecycle", node_lifecycle::start),
        ("garbagecollector", garbage_collector::start),
        ("resourcequota", resourcequota::start),
        ("deployment", deployment::deployments),
        ("replicaset", replicaset::replicasets),
        ("replicationcontroller", replicaset::replication_controllers),
        ("daemonset", daemonset::daemonsets),
        ("statefulset", statefulset::statefulsets),
        ("job", job::jobs),
        ("cronjob", cronjob::cronjobs),
        ("horizontalpodautoscaling", hpa::start),
        ("csrapproving", csr::start),
        ("scheduler", crate::scheduler::run),
    ]
}
