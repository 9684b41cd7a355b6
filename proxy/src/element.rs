//! Map and set elements, typed: the same value renders as nft text (incremental
//! transactions, `--explain`) and as the kernel's binary form (a full sync loads
//! the elements over netlink, see `netlink.rs`).

use std::fmt;
use std::net::IpAddr;

use crate::model::Protocol;
use crate::pick::Pick;

/// A key of the service maps: `daddr . l4proto . dport` (ClusterIPs, externalIPs)
/// or, without an address, `l4proto . dport` (NodePorts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub addr: Option<IpAddr>,
    pub proto: Protocol,
    pub port: u16,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(a) = self.addr {
            write!(f, "{a} . ")?;
        }
        write!(f, "{} . {}", self.proto.nft(), self.port)
    }
}

/// Where a map element sends the packet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// `goto pick-N` (a shared pick chain).
    Pick(Pick),
    /// `goto <chain>` (a chain of the port's own, or `reject-chain`).
    Chain(String),
    Drop,
}

/// The chain that rejects (filter hooks only: `reject` is not allowed in nat).
pub const REJECT_CHAIN: &str = "reject-chain";

impl Verdict {
    pub fn reject() -> Verdict {
        Verdict::Chain(REJECT_CHAIN.to_string())
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Pick(p) => write!(f, "goto {}", p.chain()),
            Verdict::Chain(c) => write!(f, "goto {c}"),
            Verdict::Drop => f.write_str("drop"),
        }
    }
}

/// An endpoint slot map's value: `addr . port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dest {
    pub addr: IpAddr,
    pub port: u16,
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} . {}", self.addr, self.port)
    }
}

/// nf_tables lays out a concatenation field by field, each padded to 4 bytes
/// (one 32-bit register); addresses and ports in network byte order.
fn put_addr(out: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
}

fn put_port(out: &mut Vec<u8>, p: u16) {
    out.extend_from_slice(&p.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
}

impl Key {
    /// The key's bytes as the kernel stores them.
    pub fn put(&self, out: &mut Vec<u8>) {
        if let Some(a) = self.addr {
            put_addr(out, a);
        }
        out.extend_from_slice(&[self.proto.number(), 0, 0, 0]);
        put_port(out, self.port);
    }
}

impl Dest {
    pub fn put(&self, out: &mut Vec<u8>) {
        put_addr(out, self.addr);
        put_port(out, self.port);
    }
}

/// An element of the hairpin set: `addr . addr`.
pub fn put_pair(out: &mut Vec<u8>, a: IpAddr) {
    put_addr(out, a);
    put_addr(out, a);
}
