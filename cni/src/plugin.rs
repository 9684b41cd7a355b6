//! The CNI plugin protocol for `hull-bridge`: read `CNI_*` and stdin, dispatch the
//! command, print the result or the spec error JSON, and pick the exit status.

use std::io::{Read, Write};
use std::path::PathBuf;

use crate::bridge::{self, Call};
use crate::config::BridgeConf;
use crate::error::{CniError, Result, code};
use crate::explain;
use crate::types::{CURRENT_VERSION, SUPPORTED_VERSIONS};
use crate::upkeep;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Validates the environment for `command` (what each command needs differs: DEL may
/// lack a netns, GC and STATUS have no container at all).
pub fn call_from_env(command: &str) -> Result<Call> {
    call_from(command, &|name| env(name))
}

/// The same validation for a caller that runs the plugin in its own process, with the
/// values it would have put in the environment.
pub fn call_from_plugin_env(e: &crate::exec::PluginEnv) -> Result<Call> {
    let value = |name: &str| {
        let v = match name {
            "CNI_CONTAINERID" => &e.container_id,
            "CNI_NETNS" => &e.netns,
            "CNI_IFNAME" => &e.ifname,
            "CNI_ARGS" => &e.args,
            "CNI_PATH" => &e.path,
            _ => return None,
        };
        Some(v.clone()).filter(|v| !v.is_empty())
    };
    call_from(&e.command, &value)
}

fn call_from(command: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Call> {
    let require = |name: &str| {
        env(name).ok_or_else(|| {
            CniError::new(code::INVALID_ENV, format!("{name}: required for {command}"))
        })
    };
    let needs_container = matches!(command, "ADD" | "DEL" | "CHECK");
    let (container_id, ifname) = if needs_container {
        let id = require("CNI_CONTAINERID")?;
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_CONTAINERID: {id:?} may contain only letters, digits, '_', '.' and '-'"
                ),
            ));
        }
        let ifname = require("CNI_IFNAME")?;
        if ifname.len() > 15
            || ifname == "."
            || ifname == ".."
            || ifname.contains(['/', ':'])
            || ifname.contains(char::is_whitespace)
        {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_IFNAME: {ifname:?} is not a valid interface name"),
            ));
        }
        (id, ifname)
    } else {
        (String::new(), String::new())
    };
    let netns = env("CNI_NETNS").map(PathBuf::from);
    Ok(Call {
        command: command.to_string(),
        container_id,
        netns,
        ifname,
        args: env("CNI_ARGS").unwrap_or_default(),
        path: env("CNI_PATH").unwrap_or_default(),
    })
}

fn version_reply(stdin: &[u8]) -> String {
    let v = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|x| x.as_str())
                .map(str::to_string)
        })
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| CURRENT_VERSION.to_string());
    serde_json::json!({"cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS}).to_string()
}

/// Runs one command; returns what to print on stdout on success.
pub fn run(command: &str, stdin: &[u8]) -> Result<Option<String>> {
    run_with(command, stdin, &|| call_from_env(command))
}

/// `run` for a caller holding the environment itself (hull's CRI server runs the
/// plugin in process: the same code as the binary without a process per call).
pub fn run_in_process(e: &crate::exec::PluginEnv, stdin: &[u8]) -> Result<Option<String>> {
    run_with(&e.command, stdin, &|| call_from_plugin_env(e))
}

fn run_with(
    command: &str,
    stdin: &[u8],
    call: &dyn Fn() -> Result<Call>,
) -> Result<Option<String>> {
    if command == "VERSION" {
        return Ok(Some(version_reply(stdin)));
    }
    if !matches!(command, "ADD" | "DEL" | "CHECK" | "GC" | "STATUS") {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_COMMAND: unknown command {command:?} (ADD, DEL, CHECK, GC, STATUS, VERSION)"
            ),
        ));
    }
    let conf = BridgeConf::parse(stdin)?;
    let call = call()?;
    explain::step(|| {
        format!(
            "{command} network {:?} container {:?} ifname {:?}",
            conf.name, call.container_id, call.ifname
        )
    });
    match command {
        "ADD" => bridge::add(&conf, &call, stdin).map(|r| Some(r.to_json())),
        "DEL" => bridge::del(&conf, &call, stdin).map(|_| None),
        "CHECK" => upkeep::check(&conf, &call).map(|_| None),
        "GC" => upkeep::gc(&conf, &call, stdin).map(|_| None),
        _ => upkeep::status(&conf).map(|_| None),
    }
}

/// The whole plugin: what `hull-bridge`'s `main` calls. Returns the exit code.
pub fn main() -> i32 {
    let explain_flag = std::env::args().any(|a| a == "--explain");
    explain::enable(explain_flag || env("HULL_EXPLAIN").is_some_and(|v| v != "0"));
    bridge::DETACHED_DELETE.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut stdin = Vec::new();
    let command = env("CNI_COMMAND");
    let version = |stdin: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(stdin)
            .ok()
            .and_then(|v| {
                v.get("cniVersion")
                    .and_then(|x| x.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| CURRENT_VERSION.to_string())
    };
    let outcome = match command {
        None => Err(CniError::new(
            code::INVALID_ENV,
            "CNI_COMMAND: required (ADD, DEL, CHECK, GC, STATUS, VERSION)",
        )),
        Some(cmd) => {
            let read = if cmd == "VERSION" {
                // VERSION may come with no stdin at all; don't block on a terminal.
                let _ = std::io::stdin().read_to_end(&mut stdin);
                Ok(())
            } else {
                std::io::stdin()
                    .read_to_end(&mut stdin)
                    .map(|_| ())
                    .map_err(|e| CniError::io("read stdin", e))
            };
            read.and_then(|_| run(&cmd, &stdin))
        }
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(s)) => {
            let _ = writeln!(out, "{s}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            explain::step(|| format!("error: {e}"));
            let _ = writeln!(out, "{}", e.to_json(&version(&stdin)));
            1
        }
    }
}
