//! kubelet's atomic writer: a volume's files live in a timestamped `..<ts>` directory,
//! `..data` is a symlink to it and each top-level name is a symlink through `..data`.
//! An update writes a new directory and renames a fresh `..data` link over the old one,
//! so a reader never sees half an update.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path};

pub type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// A relative path with no `..`, no absolute part, no empty parts.
pub fn clean_rel(p: &str) -> Result<(), String> {
    if p.is_empty() || p.starts_with('/') {
        return Err(format!("path {p:?} must be relative and non-empty"));
    }
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) if !n.to_string_lossy().starts_with("..") => {}
            _ => {
                return Err(format!(
                    "path {p:?} must not contain '..' or start with '..'"
                ));
            }
        }
    }
    Ok(())
}

fn current(dir: &Path) -> Option<String> {
    std::fs::read_link(dir.join("..data"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

fn same(dir: &Path, files: &Files) -> bool {
    let Some(cur) = current(dir) else {
        return false;
    };
    let base = dir.join(&cur);
    let mut n = 0;
    let ok = walk(&base, &base, &mut |rel, p| {
        n += 1;
        let Some((data, mode)) = files.get(rel) else {
            return false;
        };
        let Ok(md) = std::fs::metadata(p) else {
            return false;
        };
        md.permissions().mode() & 0o7777 == *mode && std::fs::read(p).is_ok_and(|d| &d == data)
    });
    ok && n == files.len()
}

fn walk(base: &Path, d: &Path, f: &mut dyn FnMut(&str, &Path) -> bool) -> bool {
    let Ok(rd) = std::fs::read_dir(d) else {
        return false;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { return false };
        if ft.is_dir() {
            if !walk(base, &p, f) {
                return false;
            }
        } else {
            let rel = p
                .strip_prefix(base)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            if !f(&rel, &p) {
                return false;
            }
        }
    }
    true
}

/// Makes `dir` hold exactly `files`; returns whether anything changed.
pub fn write(dir: &Path, files: &Files) -> io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    if same(dir, files) {
        return Ok(false);
    }
    let ts = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let new = dir.join(&ts);
    std::fs::create_dir(&new)?;
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755))?;
    for (rel, (data, mode)) in files {
        clean_rel(rel).map_err(io::Error::other)?;
        let p = new.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, data)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
    }
    let old = current(dir);
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&ts, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    // Top-level names: links through ..data; names gone from the object are removed.
    let tops: std::collections::BTreeSet<String> = files
        .keys()
        .filter_map(|k| k.split('/').next().map(String::from))
        .collect();
    for t in &tops {
        let l = dir.join(t);
        if std::fs::symlink_metadata(&l).is_err() {
            symlink(format!("..data/{t}"), &l)?;
        }
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(o) = old
        && o != ts
    {
        let _ = std::fs::remove_dir_all(dir.join(o));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_and_clean() {
        let d = std::env::temp_dir().join(format!("hull-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let mut f = Files::new();
        f.insert("a".into(), (b"1".to_vec(), 0o644));
        f.insert("sub/b".into(), (b"2".to_vec(), 0o400));
        assert!(write(&d, &f).unwrap());
        assert!(!write(&d, &f).unwrap());
        assert_eq!(std::fs::read(d.join("sub/b")).unwrap(), b"2");
        f.remove("a");
        f.insert("sub/b".into(), (b"3".to_vec(), 0o400));
        assert!(write(&d, &f).unwrap());
        assert!(std::fs::symlink_metadata(d.join("a")).is_err());
        assert_eq!(std::fs::read(d.join("sub/b")).unwrap(), b"3");
        let dots = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name().to_string_lossy().starts_with("..2")
                    || e.file_name().to_string_lossy().starts_with("..1")
            })
            .count();
        assert_eq!(dots, 1);
        assert!(
            clean_rel("../x").is_err() && clean_rel("/x").is_err() && clean_rel("a/../b").is_err()
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
