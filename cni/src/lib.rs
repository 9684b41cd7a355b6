//! hull's CNI plugin (`hull-bridge`) and CNI invoker.
//!
//! Module map:
//! - `error`   — spec error codes and the error JSON (`CniError`)
//! - `types`   — typed CNI documents: conflists, the 1.x result, port mappings
//! - `config`  — the `hull-bridge` network configuration
//! - `explain` — `--explain` / `HULL_EXPLAIN=1` step narration on stderr
//! - `netns`   — opening `CNI_NETNS` and running work inside it on a side thread
//! - `netlink` — a small synchronous rtnetlink client (links, addresses, routes)
//! - `ipam`    — host-local IPAM in process, on the reference plugin's file format
//! - `nft`     — the `inet hull-cni` nftables table: ipMasq and hostPort DNAT
//! - `libnft`  — libnftables loaded in process (dlopen), so a batch needs no exec
//! - `exec`    — finding and exec'ing another plugin on `CNI_PATH`
//! - `bridge`  — what ADD and DEL do for a bridge network (veth, addresses, routes, NAT)
//! - `upkeep`  — CHECK, GC and STATUS for a bridge network
//! - `plugin`  — the plugin protocol: env + stdin in, result or error JSON out
//! - `invoker` — the runtime side: load a conflist, run its chain, cache results
//! - `podroutes` — routes to other nodes' pod subnets via their addresses (host-gw)

pub mod bridge;
pub mod config;
pub mod error;
pub mod exec;
pub mod explain;
pub mod invoker;
pub mod ipam;
pub mod libnft;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod plugin;
pub mod podroutes;
pub mod types;
pub mod upkeep;

pub use error::{CniError, Result};
