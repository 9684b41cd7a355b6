//! hull's OCI runtime and image store.
//!
//! Module map (grows as the runtime is built):
