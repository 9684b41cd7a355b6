//! The process's privileges, applied in the order the kernel requires: rlimits (raising
//! a hard limit needs CAP_SYS_RESOURCE), the bounding set, then uid/gid/groups with
//! PR_SET_KEEPCAPS, then the effective/permitted/inheritable sets and last the ambient
//! set (which must be a subset of permitted ∩ inheritable), then no_new_privs.

use std::collections::HashSet;

use caps::{CapSet, Capability as KCap, CapsHashSet};
use oci_spec::runtime::{LinuxCapabilities, PosixRlimit, PosixRlimitType, Process, User};

use crate::error::{Context, Error, Result};
use crate::explain;

pub fn rlimit_resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType::*;
    match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

pub fn set_rlimits(limits: &[PosixRlimit]) -> Result<()> {
    for (i, r) in limits.iter().enumerate() {
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        explain!(
            "setrlimit({:?}, soft={}, hard={})",
            r.typ(),
            r.soft(),
            r.hard()
        );
        if unsafe { libc::setrlimit(rlimit_resource(r.typ()), &lim) } != 0 {
            return Err(std::io::Error::last_os_error())
                .ctx(|| format!("process.rlimits[{i}] ({:?})", r.typ()));
        }
    }
    Ok(())
}

/// oci-spec capability → the kernel's, skipping ones this kernel does not know.
fn kernel_set(
    set: Option<&HashSet<oci_spec::runtime::Capability>>,
    known: &CapsHashSet,
) -> CapsHashSet {
    set.into_iter()
        .flatten()
        .filter_map(|c| format!("CAP_{c}").parse::<KCap>().ok())
        .filter(|c| known.contains(c))
        .collect()
}

/// The five sets from the spec, as kernel capabilities.
pub struct CapPlan {
    pub bounding: CapsHashSet,
    pub effective: CapsHashSet,
    pub permitted: CapsHashSet,
    pub inheritable: CapsHashSet,
    pub ambient: CapsHashSet,
}

pub fn cap_plan(c: Option<&LinuxCapabilities>) -> CapPlan {
    let known = caps::runtime::thread_all_supported();
    let get = |f: fn(&LinuxCapabilities) -> &Option<HashSet<oci_spec::runtime::Capability>>| {
        kernel_set(c.and_then(|c| f(c).as_ref()), &known)
    };
    CapPlan {
        bounding: get(LinuxCapabilities::bounding),
        effective: get(LinuxCapabilities::effective),
        permitted: get(LinuxCapabilities::permitted),
        inheritable: get(LinuxCapabilities::inheritable),
        ambient: get(LinuxCapabilities::ambient),
    }
}

/// Drops every capability not in the bounding set (irreversible for this process tree).
pub fn drop_bounding(plan: &CapPlan) -> Result<()> {
    explain!("capabilities: bounding = {:?}", sorted(&plan.bounding));
    for c in caps::runtime::thread_all_supported() {
        if !plan.bounding.contains(&c) {
            caps::drop(None, CapSet::Bounding, c)
                .map_err(|e| Error::Other(format!("drop {c} from bounding set: {e}")))?;
        }
    }
    Ok(())
}

pub fn set_caps(plan: &CapPlan) -> Result<()> {
    let set = |which: CapSet, v: &CapsHashSet| {
        explain!("capabilities: {:?} = {:?}", which, sorted(v));
        caps::set(None, which, v)
            .map_err(|e| Error::Other(format!("set {which:?} capabilities: {e}")))
    };
    // Shrink effective and inheritable first: the kernel refuses a permitted set that
    // no longer covers them.
    set(CapSet::Effective, &plan.effective)?;
    set(CapSet::Inheritable, &plan.inheritable)?;
    set(CapSet::Permitted, &plan.permitted)?;
    // Like runc: an ambient capability that is not also permitted and inheritable cannot
    // be raised (runc's default spec lists ambient caps without inheritable ones); skip it.
    for c in &plan.ambient {
        if plan.permitted.contains(c) && plan.inheritable.contains(c) {
            explain!("capabilities: raise ambient {c}");
            caps::raise(None, CapSet::Ambient, *c)
                .map_err(|e| Error::Other(format!("raise ambient {c}: {e}")))?;
        }
    }
    Ok(())
}

fn sorted(s: &CapsHashSet) -> Vec<String> {
    let mut v: Vec<String> = s.iter().map(|c| c.to_string()).collect();
    v.sort();
    v
}

/// setgroups, setresgid, setresuid — keeping the permitted set across the uid change so
/// `set_caps` can then choose what the process keeps.
pub fn set_user(user: &User, userns_no_setgroups: bool) -> Result<()> {
    let gids: Vec<libc::gid_t> = user.additional_gids().clone().unwrap_or_default();
    if !userns_no_setgroups {
        explain!("setgroups({gids:?})");
        if unsafe { libc::setgroups(gids.len(), gids.as_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error())
                .ctx(|| "process.user.additionalGids: setgroups".into());
        }
    }
    explain!(
        "setresgid({0}, {0}, {0}); setresuid({1}, {1}, {1})",
        user.gid(),
        user.uid()
    );
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "prctl(PR_SET_KEEPCAPS)".into());
    }
    if unsafe { libc::setresgid(user.gid(), user.gid(), user.gid()) } != 0 {
        return Err(std::io::Error::last_os_error())
            .ctx(|| format!("process.user.gid: setresgid({})", user.gid()));
    }
    if unsafe { libc::setresuid(user.uid(), user.uid(), user.uid()) } != 0 {
        return Err(std::io::Error::last_os_error())
            .ctx(|| format!("process.user.uid: setresuid({})", user.uid()));
    }
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    Ok(())
}

pub fn set_no_new_privs() -> Result<()> {
    explain!("prctl(PR_SET_NO_NEW_PRIVS, 1)");
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "prctl(PR_SET_NO_NEW_PRIVS)".into());
    }
    Ok(())
}

/// Writes oom_score_adj for `pid`. Some kernels/sandboxes refuse lowering it: clamp to
/// the lowest value accepted and warn instead of failing the container.
pub fn set_oom_score_adj(pid: i32, want: i32) {
    let path = format!("/proc/{pid}/oom_score_adj");
    let want = want.clamp(-1000, 1000);
    explain!("write {path}: {want}");
    if std::fs::write(&path, want.to_string()).is_ok() {
        return;
    }
    // Lowering needs CAP_SYS_RESOURCE and some sandboxes refuse it anyway: try the
    // closest values the kernel may still accept.
    for v in [want.max(0), 0] {
        if std::fs::write(&path, v.to_string()).is_ok() {
            eprintln!(
                "hull-runtime: warning: process.oomScoreAdj {want} refused by the kernel; using {v}"
            );
            return;
        }
    }
    eprintln!(
        "hull-runtime: warning: process.oomScoreAdj {want} refused by the kernel; left unchanged"
    );
}

/// The process's umask (default 0022 as runc).
pub fn set_umask(p: &Process) {
    let mask = p.user().umask().unwrap_or(0o022);
    explain!("umask({mask:04o})");
    unsafe { libc::umask(mask as libc::mode_t) };
}
