//! Apply a rendered transaction with the `nft` binary, as kube-proxy does.
//!
//! `nft -f -` reads the whole transaction and commits it in one netlink batch, so a
//! bad rule set is refused whole and the previous one stays in force.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::nft;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("running {bin}: {source}")]
    Spawn { bin: String, source: std::io::Error },
    #[error("nft refused the transaction (previous rules stay in force): {stderr}")]
    Refused { stderr: String },
    #[error(transparent)]
    Netlink(#[from] crate::netlink::NetlinkError),
    #[error("writing {path}: {source}")]
    Sysctl {
        path: String,
        source: std::io::Error,
    },
}

/// Path of the `nft` binary (overridable for odd installs).
pub fn nft_bin() -> String {
    std::env::var("HULL_NFT").unwrap_or_else(|_| "nft".to_string())
}

/// Run `nft -f -` with `text` on stdin.
pub fn nft_apply(text: &str) -> Result<(), ApplyError> {
    let bin = nft_bin();
    let spawn_err = |source| ApplyError::Spawn {
        bin: bin.clone(),
        source,
    };
    let mut child = Command::new(&bin)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(ApplyError::Refused {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Remove every table the proxy owns.
pub fn cleanup() -> Result<(), ApplyError> {
    nft_apply(&nft::render_cleanup())
}

/// `nft list table ip|ip6 <live hull table>`, or `None` if there is none.
pub fn list_table(family: nft::Family) -> Result<Option<String>, ApplyError> {
    let Some(table) = crate::fullsync::live_table(family)? else {
        return Ok(None);
    };
    let bin = nft_bin();
    let out = Command::new(&bin)
        .args(["list", "table", family.table_family(), table])
        .output()
        .map_err(|source| ApplyError::Spawn { bin, source })?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// NodePorts on 127.0.0.1 need the kernel to route loopback-sourced packets out of
/// non-loopback interfaces after DNAT (kube-proxy's iptables mode sets the same).
pub fn enable_route_localnet() -> Result<(), ApplyError> {
    let path = "/proc/sys/net/ipv4/conf/all/route_localnet";
    std::fs::write(path, "1").map_err(|source| ApplyError::Sysctl {
        path: path.to_string(),
        source,
    })
}
