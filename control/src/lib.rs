//! hull's control plane.
//!
//! Module map (grows as the control plane is built):
//! - [`store`]: the `Store` trait (revisions, CAS, watch, compaction), SQLite and etcd
//!   backends, the watch cache and the compactor.
//! - [`admission`]: defaults, validation (422 causes), namespace lifecycle, ResourceQuota,
//!   LimitRange, ClusterIP/NodePort allocation — what the write path runs before storing.
//! - [`patch`]: JSON patch, merge patch, strategic merge patch, server-side apply and
//!   managedFields.
//! - [`apiserver`]: the HTTPS API server — TLS/CA, kubeconfig, authentication,
//!   discovery, OpenAPI, REST handlers (CRUD, watch, Table printing, subresources).
//! - [`manager`]: the controller manager — leader election, the shared informers (one
//!   watch per hot resource for every loop) and the loops it runs.
//! - [`controllers`]: one module per controller (and the list the manager starts).
//! - [`scheduler`]: the scheduler loop — cache, queue, filters, scores, bindings.

pub mod admission;
pub mod apiserver;
pub mod controllers;
pub mod manager;
pub mod patch;
pub mod scheduler;
pub mod store;
