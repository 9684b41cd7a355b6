//! hull's OCI runtime and image store.
//!
//! Module map (grows as the runtime is built):
//! - `explain`: the `--explain` narration of kernel steps.

pub mod explain;
