//! Image config → what a container's process gets by default, with Docker's rules:
//! a command given on the command line replaces `Cmd` and keeps `Entrypoint`; env
//! given replaces the image's value of the same key; `User` names resolve through the
//! image's own `/etc/passwd` and `/etc/group`, read without leaving the rootfs.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::manifest::ImageConfig;
use super::{Error, Result};

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessDefaults {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    /// The image's `User` as written (resolve with `resolve_user` once the rootfs exists).
    pub user: Option<String>,
    pub stop_signal: Option<String>,
    pub exposed_ports: Vec<String>,
    pub volumes: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// `cmd` replaces the image's Cmd; `env` (`K=V`) overrides the image's Env.
pub fn process_defaults(
    cfg: &ImageConfig,
    cmd: &[String],
    env: &[String],
) -> Result<ProcessDefaults> {
    let c = cfg.config.clone().unwrap_or_default();
    let mut args = c.entrypoint.clone().unwrap_or_default();
    if cmd.is_empty() {
        args.extend(c.cmd.clone().unwrap_or_default());
    } else {
        args.extend(cmd.iter().cloned());
    }
    if args.is_empty() {
        return Err(Error::Other(
            "no command: the image has no Entrypoint or Cmd and none was given".into(),
        ));
    }
    let mut merged: Vec<String> = c.env.clone().unwrap_or_default();
    for e in env {
        let Some((k, _)) = e.split_once('=') else {
            return Err(Error::Other(format!("environment {e:?}: want KEY=VALUE")));
        };
        if k.is_empty() {
            return Err(Error::Other(format!("environment {e:?}: empty key")));
        }
        merged.retain(|x| x.split_once('=').map_or(x.as_str(), |(xk, _)| xk) != k);
        merged.push(e.clone());
    }
    if !merged.iter().any(|e| e.starts_with("PATH=")) {
        merged.insert(0, DEFAULT_PATH.to_string());
    }
    Ok(ProcessDefaults {
        args,
        env: merged,
        cwd: c
            .working_dir
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into()),
        user: c.user.filter(|u| !u.is_empty()),
        stop_signal: c.stop_signal,
        exposed_ports: c
            .exposed_ports
            .map(|m| m.into_keys().collect())
            .unwrap_or_default(),
        volumes: c
            .volumes
            .map(|m| m.into_keys().collect())
            .unwrap_or_default(),
        labels: c.labels.unwrap_or_default(),
    })
}

/// Reads a small file of the rootfs with `openat2(RESOLVE_IN_ROOT)`: an image's
/// `/etc/passwd` symlinked to `/../../etc/shadow` stays inside the rootfs.
fn read_in_root(rootfs: &Path, path: &str) -> Option<String> {
    let root = super::resolve::open_dir(rootfs).ok()?;
    let c = std::ffi::CString::new(path.trim_start_matches('/')).ok()?;
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid pointers for the call; result checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: fresh fd we own.
    let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let mut s = String::new();
    f.take(4 << 20).read_to_string(&mut s).ok()?;
    Some(s)
}

/// Resolves `user` (`name`, `uid`, `name:group`, `uid:gid`) to (uid, gid, extra gids).
pub fn resolve_user(rootfs: &Path, user: Option<&str>) -> Result<(u32, u32, Vec<u32>)> {
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return Ok((0, 0, Vec::new()));
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read_in_root(rootfs, "/etc/passwd").unwrap_or_default();
    let group = read_in_root(rootfs, "/etc/group").unwrap_or_default();
    let pw: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let (uid, name, mut gid) = if let Ok(n) = u.parse::<u32>() {
        let entry = pw.iter().find(|f| f[2].parse::<u32>().ok() == Some(n));
        (
            n,
            entry.map(|f| f[0].to_string()),
            entry.and_then(|f| f[3].parse().ok()).unwrap_or(0),
        )
    } else {
        let f = pw.iter().find(|f| f[0] == u).ok_or_else(|| {
            Error::Other(format!(
                "user {u:?} (image config User {user:?}) is not in the image's /etc/passwd"
            ))
        })?;
        let uid = f[2]
            .parse()
            .map_err(|_| Error::Other(format!("/etc/passwd: bad uid for {u}")))?;
        (uid, Some(u.to_string()), f[3].parse().unwrap_or(0))
    };
    let groups: Vec<Vec<&str>> = group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect();
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    Error::Other(format!(
                        "group {g:?} (image config User {user:?}) is not in the image's /etc/group"
                    ))
                })?,
        };
    }
    let extra = match &name {
        Some(n) => groups
            .iter()
            .filter(|f| f.len() >= 4 && f[3].split(',').any(|m| m == n))
            .filter_map(|f| f[2].parse().ok())
            .filter(|x| *x != gid)
            .collect(),
        None => Vec::new(),
    };
    Ok((uid, gid, extra))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::ContainerConfig;

    #[test]
    fn docker_rules_for_cmd_and_env() {
        let cfg = ImageConfig {
            config: Some(ContainerConfig {
                entrypoint: Some(vec!["/ep".into()]),
                cmd: Some(vec!["a".into()]),
                env: Some(vec!["A=1".into(), "B=2".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let d = process_defaults(&cfg, &[], &[]).unwrap();
        assert_eq!(d.args, vec!["/ep", "a"]);
        assert!(d.env[0].starts_with("PATH="));
        let d = process_defaults(&cfg, &["b".into()], &["B=3".into()]).unwrap();
        assert_eq!(d.args, vec!["/ep", "b"]);
        assert!(d.env.contains(&"B=3".to_string()) && !d.env.contains(&"B=2".to_string()));
        assert!(process_defaults(&cfg, &[], &["noequals".into()]).is_err());
        assert!(process_defaults(&ImageConfig::default(), &[], &[]).is_err());
    }

    #[test]
    fn users_resolve_through_the_rootfs() {
        let root = std::env::temp_dir().join(format!("hull-user-test-{}", std::process::id()));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(
            root.join("etc/group"),
            "root:x:0:\nweb:x:34:\nextra:x:50:www\n",
        )
        .unwrap();
        assert_eq!(
            resolve_user(&root, Some("www")).unwrap(),
            (33, 34, vec![50])
        );
        assert_eq!(
            resolve_user(&root, Some("33:0")).unwrap(),
            (33, 0, vec![50])
        );
        assert_eq!(
            resolve_user(&root, Some("1000")).unwrap(),
            (1000, 0, vec![])
        );
        assert_eq!(resolve_user(&root, Some("www:web")).unwrap().1, 34);
        assert!(
            resolve_user(&root, Some("nobody"))
                .unwrap_err()
                .to_string()
                .contains("nobody")
        );
        assert_eq!(resolve_user(&root, None).unwrap(), (0, 0, vec![]));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
