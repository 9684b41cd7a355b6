//! hull's control plane.
//!
//! Module map (grows as the control plane is built):
//! - [`store`]: the `Store` trait (revisions, CAS, watch, compaction), SQLite and etcd
//!   backends, the watch cache and the compactor.

pub mod store;
