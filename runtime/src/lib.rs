//! hull's OCI runtime and image store.
//!
//! Module map (grows as the runtime is built):
//! - `explain`: the `--explain` narration of kernel steps.
//! - `cgroups`: cgroup v1/v2/hybrid manager (limits, membership, freeze, kill, stats).
//! - `seccomp`: OCI `linux.seccomp` compiled to BPF before fork, loaded just before exec.
//! - `image`: content store, registry pull, layer unpack, overlay snapshots (`hull image`).

pub mod cgroups;
pub mod explain;
pub mod seccomp;
pub mod image;
