//! CNI errors: the spec's numeric codes and the error JSON a plugin prints on failure.

use serde::{Deserialize, Serialize};

/// Error codes reserved by the CNI spec (1.1.0 §"Error"); plugin-specific codes start at 100.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// hull: the IP range has no free address left.
    pub const RANGE_EXHAUSTED: u32 = 100;
    /// hull: a netlink request was refused by the kernel.
    pub const NETLINK: u32 = 101;
    /// hull: an nftables batch was refused.
    pub const NFTABLES: u32 = 102;
    /// hull: CHECK found the attachment differs from the recorded result.
    pub const CHECK_FAILED: u32 = 103;
    /// hull: a delegated plugin (exec'd IPAM, invoker chain) failed without spec JSON.
    pub const DELEGATE: u32 = 104;
}

/// A CNI error, as printed on stdout by a failing plugin (and parsed back by the invoker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    #[serde(
        rename = "cniVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            cni_version: String::new(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn io(what: impl std::fmt::Display, err: std::io::Error) -> Self {
        Self::new(code::IO, format!("{what}")).with_details(err.to_string())
    }

    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg)
    }

    pub fn netlink(what: impl std::fmt::Display, err: std::io::Error) -> Self {
        Self::new(code::NETLINK, format!("{what}")).with_details(err.to_string())
    }

    pub fn to_json(&self, version: &str) -> String {
        let mut e = self.clone();
        if e.cni_version.is_empty() {
            e.cni_version = version.to_string();
        }
        serde_json::to_string(&e)
            .unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"error\"}}", e.code))
    }
}

pub type Result<T, E = CniError> = std::result::Result<T, E>;
