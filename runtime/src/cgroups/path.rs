//! OCI `linux.cgroupsPath` → the cgroup's path inside every hierarchy.
//!
//! Three forms are accepted:
//! - absolute `/a/b`: under each hierarchy's root (`/sys/fs/cgroup/memory/a/b`, ...);
//! - relative `a/b`: also under each hierarchy's root. runc nests relative paths under
//!   its own cgroup instead; hull does not, because a daemon's own cgroup (a systemd
//!   service) may hold processes, and on v2 a cgroup with processes cannot delegate
//!   controllers to children ("no internal processes"), so that nesting fails exactly
//!   where hull is most used;
//! - systemd `slice:prefix:name` (what kubelet and containerd send with the systemd
//!   cgroup driver): mapped to the cgroupfs path systemd itself would use,
//!   `<slice path>/<prefix>-<name>.scope`, where a slice `a-b-c.slice` lives at
//!   `a.slice/a-b.slice/a-b-c.slice`. hull writes the files directly and does not ask
//!   systemd to create a transient unit (there is no systemd D-Bus dependency).
//!
//! `None` gives `/hull/<id>`. `..` components are refused: a path must not climb out of
//! the hierarchy root.

use std::path::PathBuf;

use super::CgroupError;

/// Resolves a cgroupsPath to a path relative to each hierarchy root (no leading `/`).
pub fn resolve(cgroups_path: Option<&str>, id: &str) -> Result<PathBuf, CgroupError> {
    let invalid = |reason: String| CgroupError::InvalidPath {
        path: cgroups_path.unwrap_or(id).to_string(),
        reason,
    };
    let raw = match cgroups_path {
        None | Some("") => {
            if id.is_empty() || id.contains('/') || id == "." || id == ".." {
                return Err(invalid(format!(
                    "container id {id:?} is not a valid cgroup name"
                )));
            }
            format!("hull/{id}")
        }
        Some(p) if !p.starts_with('/') && p.split(':').count() == 3 => {
            systemd_path(p).map_err(invalid)?
        }
        Some(p) => p.to_string(),
    };
    let mut out = PathBuf::new();
    for comp in raw.split('/') {
        match comp {
            "" | "." => {}
            ".." => return Err(invalid("\"..\" is not allowed in a cgroup path".into())),
            c => out.push(c),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(invalid(
            "the cgroup path is the hierarchy root itself".into(),
        ));
    }
    Ok(out)
}

/// `slice:prefix:name` → `expanded/slice/prefix-name.scope`.
fn systemd_path(p: &str) -> Result<String, String> {
    let mut parts = p.splitn(3, ':');
    let (slice, prefix, name) = match (parts.next(), parts.next(), parts.next()) {
        (Some(s), Some(p), Some(n)) => (s, p, n),
        _ => return Err("expected slice:prefix:name".into()),
    };
    if name.is_empty() {
        return Err("systemd form slice:prefix:name has an empty name".into());
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let mut path = expand_slice(slice)?;
    // A name that is itself a slice is used as is, as runc's systemd driver does.
    let unit = if name.ends_with(".slice") {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    if !path.is_empty() {
        path.push('/');
    }
    path.push_str(&unit);
    Ok(path)
}

/// `a-b-c.slice` → `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root slice.
fn expand_slice(slice: &str) -> Result<String, String> {
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(format!(
            "{slice:?} is not a systemd slice (must end in .slice)"
        ));
    };
    if stem == "-" {
        return Ok(String::new());
    }
    if stem.contains('/') || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return Err(format!("{slice:?} is not a valid systemd slice name"));
    }
    let mut out = Vec::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push(format!("{prefix}.slice"));
    }
    Ok(out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(resolve(None, "c1").unwrap(), PathBuf::from("hull/c1"));
        assert_eq!(resolve(Some("/a/b"), "c1").unwrap(), PathBuf::from("a/b"));
        assert_eq!(resolve(Some("a//b/"), "c1").unwrap(), PathBuf::from("a/b"));
        assert_eq!(
            resolve(Some("system.slice:hull:c1"), "c1").unwrap(),
            PathBuf::from("system.slice/hull-c1.scope")
        );
        assert_eq!(
            resolve(
                Some("kubepods-besteffort-pod12.slice:cri-containerd:abc"),
                "x"
            )
            .unwrap(),
            PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope"
            )
        );
        assert_eq!(
            resolve(Some(":hull:c1"), "c1").unwrap(),
            PathBuf::from("system.slice/hull-c1.scope")
        );
    }

    #[test]
    fn escapes_and_garbage_are_refused() {
        let e = resolve(Some("/a/../../etc"), "c1").unwrap_err().to_string();
        assert!(e.contains("/a/../../etc") && e.contains(".."), "{e}");
        assert!(resolve(Some("/"), "c1").is_err());
        assert!(resolve(None, "a/b").is_err());
        assert!(resolve(Some("notaslice:p:n"), "c1").is_err());
        assert!(resolve(Some("a--b.slice:p:n"), "c1").is_err());
    }
}
