//! hull's OCI runtime and image store.
//!
//! Module map (grows as the runtime is built):
//! - `explain`: the `--explain` narration of kernel steps.
//! - `container`: the lifecycle API (create/start/run/kill/delete/state/list/pause/
//!   resume/pids/update/stats) the CLI, `hull run` and the CRI server call. All take
//!   `(state_root, id, ...)`; `run` returns the runc-style exit status.
//! - `exec`: running another process in a live container (joins its namespaces+cgroup).
//! - `launch`: the parent half of starting an init (clone, maps, cgroup, hooks, state).
//! - `init`: the child half, from clone to execve (namespaces, rootfs, privileges).
//! - `spec`: config.json loading with JSON-path errors, and semantic validation.
//! - `state`: state.json per container; live status from /proc (pid + start time).
//! - `namespaces`: which namespaces to create or join (setns), uid/gid maps.
//! - `rootfs`: mounts (resolved inside the root), /dev, pivot_root, masked/ro paths.
//! - `security`: rlimits, capabilities (five sets), user/groups, no_new_privs, oom.
//! - `hooks`: OCI hooks with the state on stdin and their timeouts.
//! - `sync`: the parent↔init socketpair protocol and SCM_RIGHTS fd passing.
//! - `error`: the runtime's error type.
//! - `sealed_exe`: re-exec from a sealed memfd copy of the binary (CVE-2019-5736).
//! - `cgroups`: cgroup v1/v2/hybrid manager (limits, membership, freeze, kill, stats).
//! - `seccomp`: OCI `linux.seccomp` compiled to BPF before fork, loaded just before exec.
//! - `image`: content store, registry pull, layer unpack, overlay snapshots (`hull image`).

pub mod cgroups;
pub mod container;
pub mod error;
pub mod exec;
pub mod explain;
pub mod hooks;
pub mod image;
pub(crate) mod init;
pub mod launch;
pub mod namespaces;
pub mod rootfs;
pub mod sealed_exe;
pub mod seccomp;
pub mod security;
pub mod spec;
pub mod state;
pub mod sync;
