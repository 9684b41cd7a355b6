//! The controllers the manager runs, each a kube-rs reconciler of desired vs observed
//! state. One module per controller; [`all`] is the list the manager starts.

use crate::manager::Loop;

/// Every controller loop (and the scheduler), by name.
pub fn all() -> Vec<(&'static str, Loop)> {
    vec![]
}
