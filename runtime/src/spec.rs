//! Reading and checking a bundle's config.json.
//!
//! Parse errors carry the JSON path of the offending value (`serde_path_to_error` over
//! oci-spec's types); semantic checks that serde cannot express (absolute paths, a
//! rootfs that exists, duplicate namespaces) report the same way, before anything is
//! created on the host.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Context, Error, Result, config};

/// A parsed, validated bundle: the spec plus the absolute paths derived from it.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub spec: Spec,
}

/// Loads `<bundle>/config.json` and validates it.
pub fn load_bundle(bundle: &Path) -> Result<Bundle> {
    let dir = std::path::absolute(bundle).ctx(|| format!("bundle {}", bundle.display()))?;
    let path = dir.join("config.json");
    let bytes = std::fs::read(&path).ctx(|| format!("read {}", path.display()))?;
    let spec = parse(&bytes)?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| config("root", "missing"))?;
    let rootfs = dir.join(root.path());
    if !rootfs.is_dir() {
        return Err(config(
            "root.path",
            format!("rootfs {} is not a directory", rootfs.display()),
        ));
    }
    validate(&spec)?;
    Ok(Bundle { dir, rootfs, spec })
}

/// Parses config.json bytes, naming the JSON path of any error.
pub fn parse(bytes: &[u8]) -> Result<Spec> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "(document)".to_string()
        } else {
            path
        };
        config(path, e.inner().to_string())
    })
}

/// Checks what serde cannot: the process, absolute paths, namespaces, id mappings.
pub fn validate(spec: &Spec) -> Result<()> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| config("process", "missing"))?;
    match process.args() {
        Some(a) if !a.is_empty() => {}
        _ => return Err(config("process.args", "must name the program to run")),
    }
    if !process.cwd().is_absolute() {
        return Err(config(
            "process.cwd",
            format!("{:?} is not an absolute path", process.cwd()),
        ));
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !m.destination().is_absolute() {
            return Err(config(
                format!("mounts[{i}].destination"),
                format!("{:?} is not an absolute path", m.destination()),
            ));
        }
    }
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    let mut seen = HashSet::new();
    let mut has_user = false;
    let mut has_uts = false;
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        if !seen.insert(ns.typ()) {
            return Err(config(
                format!("linux.namespaces[{i}].type"),
                format!("duplicate namespace {}", ns.typ()),
            ));
        }
        if let Some(p) = ns.path() {
            if !p.is_absolute() {
                return Err(config(
                    format!("linux.namespaces[{i}].path"),
                    "must be absolute",
                ));
            }
            if !p.exists() {
                return Err(config(
                    format!("linux.namespaces[{i}].path"),
                    format!("{} does not exist", p.display()),
                ));
            }
        }
        if ns.typ() == LinuxNamespaceType::Time {
            return Err(config(
                format!("linux.namespaces[{i}].type"),
                "time namespaces are not supported",
            ));
        }
        has_user |= ns.typ() == LinuxNamespaceType::User && ns.path().is_none();
        has_uts |= ns.typ() == LinuxNamespaceType::Uts;
    }
    if has_user && linux.uid_mappings().as_ref().is_none_or(|m| m.is_empty()) {
        return Err(config(
            "linux.uidMappings",
            "a new user namespace needs uid mappings",
        ));
    }
    if has_user && linux.gid_mappings().as_ref().is_none_or(|m| m.is_empty()) {
        return Err(config(
            "linux.gidMappings",
            "a new user namespace needs gid mappings",
        ));
    }
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty()) && !has_uts {
        return Err(config(
            "hostname",
            "setting a hostname needs a new uts namespace",
        ));
    }
    for (k, _) in linux.sysctl().iter().flatten() {
        if k.contains("..") || k.contains('/') && k.starts_with('/') {
            return Err(config(format!("linux.sysctl.{k}"), "not a sysctl name"));
        }
    }
    Ok(())
}

/// Container ids become directory and cgroup names: keep them to a safe alphabet.
pub fn validate_id(id: &str) -> Result<()> {
    let bad = |why| {
        Err(Error::InvalidId {
            id: id.to_string(),
            why,
        })
    };
    if id.is_empty() || id.len() > 1024 {
        return bad("must be 1 to 1024 characters");
    }
    if id == "." || id == ".." {
        return bad("must not be . or ..");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c))
    {
        return bad("only letters, digits and _ + - . are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_error_names_json_path() {
        let json = br#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"cwd":"/","args":["/bin/true"],"user":{"uid":0,"gid":0}},
            "linux":{"namespaces":[{"type":"pid"},{"type":"mount"},{"type":"foo"}]}}"#;
        let err = parse(json).unwrap_err().to_string();
        assert!(err.contains("linux.namespaces[2].type"), "{err}");
        assert!(err.contains("foo"), "{err}");
    }

    #[test]
    fn duplicate_namespace_rejected() {
        let json = br#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"cwd":"/","args":["/bin/true"],"user":{"uid":0,"gid":0}},
            "linux":{"namespaces":[{"type":"pid"},{"type":"pid"}]}}"#;
        let spec = parse(json).unwrap();
        let err = validate(&spec).unwrap_err().to_string();
        assert!(
            err.contains("linux.namespaces[1].type: duplicate namespace pid"),
            "{err}"
        );
    }

    #[test]
    fn relative_cwd_rejected() {
        let json = br#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"cwd":"tmp","args":["/bin/true"],"user":{"uid":0,"gid":0}}}"#;
        let err = validate(&parse(json).unwrap()).unwrap_err().to_string();
        assert!(err.contains("process.cwd"), "{err}");
    }

    #[test]
    fn ids() {
        assert!(validate_id("abc-1.2_x").is_ok());
        assert!(validate_id("../x").is_err());
        assert!(validate_id("").is_err());
        assert!(validate_id("a/b").is_err());
    }
}
