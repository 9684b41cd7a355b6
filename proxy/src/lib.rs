//! hull's service proxy (nftables) and node-local cluster DNS.
//!
//! Module map:
//! - `model`: Services + EndpointSlices + node facts → desired service ports (pure).
//! - `nft`: a rule set rendered as one atomic `nft -f` transaction.
//! - `apply`: runs `nft`, cleanup, route_localnet.

pub mod apply;
pub mod model;
pub mod nft;
