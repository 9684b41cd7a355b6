//! The runtime's error type: every failure names what was wrong (a JSON path, a file, a
//! container id, a kernel call) so a user can fix it without reading the source.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// config.json did not parse or failed validation; `path` is the JSON path.
    #[error("config.json: {path}: {msg}")]
    Config { path: String, msg: String },
    #[error("invalid container id {id:?}: {why}")]
    InvalidId { id: String, why: &'static str },
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("container {0:?} already exists")]
    Exists(String),
    /// The operation does not fit the container's current status.
    #[error("container {id:?} is {status}: cannot {op}")]
    BadStatus {
        id: String,
        status: String,
        op: String,
    },
    /// A kernel call or file operation failed.
    #[error("{what}: {err}")]
    Sys { what: String, err: io::Error },
    /// The container's init reported a failure while setting the container up.
    #[error("container init: {0}")]
    Init(String),
    #[error("cgroup: {0}")]
    Cgroup(String),
    #[error("hook {path}: {msg}")]
    Hook { path: String, msg: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches "what was being done" to io and nix errors.
pub trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|err| Error::Sys { what: what(), err })
    }
}

impl<T> Context<T> for nix::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Sys {
            what: what(),
            err: io::Error::from_raw_os_error(e as i32),
        })
    }
}

pub(crate) fn config(path: impl Into<String>, msg: impl Into<String>) -> Error {
    Error::Config {
        path: path.into(),
        msg: msg.into(),
    }
}
