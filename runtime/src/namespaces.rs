//! Linux namespaces: which to create (clone/unshare flags), which to join (setns on a
//! path, how pods share a sandbox's namespaces), and the uid/gid maps of a new user
//! namespace, which only a process outside it may write.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use oci_spec::runtime::{Linux, LinuxIdMapping, LinuxNamespaceType};

use crate::error::{Context, Result};
use crate::explain;

/// What the spec asks for, split into namespaces to create and namespaces to join.
#[derive(Debug, Clone)]
pub struct Plan {
    /// New namespaces (CLONE_NEW* flags).
    pub new: CloneFlags,
    /// Existing namespaces to enter, user namespace first.
    pub join: Vec<(CloneFlags, PathBuf)>,
}

pub fn flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::empty(),
    }
}

/// /proc/PID/ns/<name> for each namespace kind, in the order they must be entered:
/// the user namespace first (it grants the capabilities to enter the others), the
/// mount namespace last (after it, host paths are gone).
pub const JOIN_ORDER: &[(CloneFlags, &str)] = &[
    (CloneFlags::CLONE_NEWUSER, "user"),
    (CloneFlags::CLONE_NEWIPC, "ipc"),
    (CloneFlags::CLONE_NEWUTS, "uts"),
    (CloneFlags::CLONE_NEWNET, "net"),
    (CloneFlags::CLONE_NEWPID, "pid"),
    (CloneFlags::CLONE_NEWCGROUP, "cgroup"),
    (CloneFlags::CLONE_NEWNS, "mnt"),
];

impl Plan {
    pub fn from_spec(linux: Option<&Linux>) -> Plan {
        let mut plan = Plan {
            new: CloneFlags::empty(),
            join: Vec::new(),
        };
        for ns in linux
            .and_then(|l| l.namespaces().as_ref())
            .into_iter()
            .flatten()
        {
            let f = flag(ns.typ());
            match ns.path() {
                Some(p) => plan.join.push((f, p.clone())),
                None => plan.new |= f,
            }
        }
        let rank = |f: CloneFlags| {
            JOIN_ORDER
                .iter()
                .position(|(o, _)| *o == f)
                .unwrap_or(usize::MAX)
        };
        plan.join.sort_by_key(|(f, _)| rank(*f));
        plan
    }

    pub fn has(&self, f: CloneFlags) -> bool {
        self.new.contains(f) || self.join.iter().any(|(j, _)| *j == f)
    }
}

/// Enters the namespace at `path` (an nsfs file such as /proc/PID/ns/net or a bind mount
/// of one, as CNI and pod sandboxes use).
pub fn join(kind: CloneFlags, path: &std::path::Path) -> Result<()> {
    let f = File::open(path).ctx(|| format!("open namespace {}", path.display()))?;
    explain!("setns({}, {:?})", path.display(), kind);
    nix::sched::setns(&f, kind).ctx(|| format!("setns {}", path.display()))?;
    Ok(())
}

/// Enters the namespace behind an already-open fd.
pub fn join_fd(kind: CloneFlags, f: &File, what: &str) -> Result<()> {
    explain!("setns({what}, {:?})", kind);
    let r = unsafe { libc::setns(f.as_raw_fd(), kind.bits()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| format!("setns {what}"));
    }
    Ok(())
}

fn map_text(maps: &[LinuxIdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// Writes uid_map and gid_map of `pid`'s user namespace (from the parent, outside it).
pub fn write_id_maps(pid: i32, linux: &Linux) -> Result<()> {
    let uid = map_text(linux.uid_mappings().as_deref().unwrap_or_default());
    let gid = map_text(linux.gid_mappings().as_deref().unwrap_or_default());
    explain!(
        "write /proc/{pid}/uid_map: {}",
        uid.trim().replace('\n', "; ")
    );
    std::fs::write(format!("/proc/{pid}/uid_map"), &uid)
        .ctx(|| format!("write uid_map {uid:?}"))?;
    explain!(
        "write /proc/{pid}/gid_map: {}",
        gid.trim().replace('\n', "; ")
    );
    std::fs::write(format!("/proc/{pid}/gid_map"), &gid)
        .ctx(|| format!("write gid_map {gid:?}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_orders_user_first_and_mount_last() {
        let json = r#"{"namespaces":[{"type":"mount","path":"/proc/1/ns/mnt"},{"type":"network","path":"/proc/1/ns/net"},
            {"type":"user","path":"/proc/1/ns/user"},{"type":"pid"}]}"#;
        let linux: Linux = serde_json::from_str(json).unwrap();
        let plan = Plan::from_spec(Some(&linux));
        assert_eq!(plan.new, CloneFlags::CLONE_NEWPID);
        let kinds: Vec<_> = plan.join.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            kinds,
            vec![
                CloneFlags::CLONE_NEWUSER,
                CloneFlags::CLONE_NEWNET,
                CloneFlags::CLONE_NEWNS
            ]
        );
        assert!(plan.has(CloneFlags::CLONE_NEWNET) && !plan.has(CloneFlags::CLONE_NEWUTS));
    }
}
