//! hull's service proxy (nftables) and node-local cluster DNS.
//!
//! Module map (grows as the proxy is built):
