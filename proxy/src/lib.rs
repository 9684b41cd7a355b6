//! hull's service proxy (nftables) and node-local cluster DNS.
//!
//! Module map:
//! - `model`: Services + EndpointSlices + node facts → desired service ports (pure).
//! - `ports`: the model kept current per changed Service (which port ids changed).
//! - `element`: map/set elements, typed: as nft text and as the kernel's bytes.
//! - `pick`: the chains service ports share: pick-N (random draw) and endpoint slots.
//! - `nft`: a service port's rules (a fragment), as nft text.
//! - `table`: one family's whole table as nft text (fixed and hook chains, maps, sets).
//! - `state`: per-port fragments → full or incremental `nft -f` transactions.
//! - `fullsync`: a full sync: next table beside the live one, elements over netlink, swap.
//! - `netlink`: nf_tables set elements written over netlink (NFT_MSG_NEWSETELEM batches).
//! - `syncer`: one sync step: full or incremental transaction, conntrack cleanup.
//! - `apply`: runs `nft`, cleanup, route_localnet.
//! - `dns_model`: Services/EndpointSlices/Pods → cluster DNS answers (pure).
//! - `dns_service`: publishes `kube-system/kube-dns` with this node's DNS listener.
//! - `dns_server`: UDP+TCP DNS server on hickory-proto, forwarding non-cluster names.
//! - `conntrack`: flushes stale UDP flows when endpoints go away.
//! - `runner`: kube-rs reflectors → coalescing sync loop, `/healthz` and `/metrics`.
//! - `daemon`: entry points: `run` (embedded, with a client and a shutdown future)
//!   and `run_blocking` (`hull proxy`).

pub mod apply;
pub mod conntrack;
pub mod daemon;
pub mod dns_model;
pub mod dns_server;
pub mod dns_service;
pub mod element;
pub mod fullsync;
pub mod model;
pub mod netlink;
pub mod nft;
pub mod pick;
pub mod ports;
pub mod runner;
pub mod state;
pub mod syncer;
pub mod table;
