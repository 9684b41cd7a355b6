//! Seccomp: OCI `linux.seccomp` → a BPF program the kernel runs on every syscall.
//!
//! Module map:
//! - `mod.rs`: [`compile`] (before fork) and [`Filter::load`] (in the child).
//! - `profile`: [`runtime_default`], the RuntimeDefault profile Kubernetes asks for.
//! - `notify`: passing the `SCMP_ACT_NOTIFY` listener fd to a seccomp agent.
//! - `cache`: [`compile_cached`] / [`compile_in_root`], compiled programs kept per
//!   profile (libseccomp is slow).
//!
//! Compiling uses libseccomp (Debian's `libseccomp2`, through the `libseccomp` crate),
//! as runc, crun and youki do. The pure-Rust `seccompiler` was the alternative; it
//! builds a filter for one architecture only, so the usual x86_64 + x86 + x32 profile
//! (which must also police 32-bit syscall entry points) cannot be expressed, and it
//! does not resolve names per architecture. libseccomp does both, and is what makes a
//! profile mean the same under hull as under runc.
//!
//! The program is generated in the parent and exported as raw BPF; the child only makes
//! the `seccomp(2)` call. That keeps the child free of libseccomp (which allocates) at
//! the point where it runs, right before `execve`.

mod cache;
pub mod notify;
mod profile;

pub use cache::{CACHE_DIR, compile_cached, compile_in_root};

pub use profile::{runtime_default, runtime_default_for};

use std::io::{Read, Seek};
use std::os::fd::{FromRawFd, OwnedFd};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

/// Errors compiling or loading a seccomp profile; each names the spec field at fault.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("linux.seccomp: libseccomp: {0}")]
    Libseccomp(#[from] libseccomp::error::SeccompError),
    #[error("linux.seccomp: exporting the BPF program: {0}")]
    Export(std::io::Error),
    #[error("seccomp(SECCOMP_SET_MODE_FILTER): {0}")]
    Load(std::io::Error),
    #[error("linux.seccomp.listenerPath {path}: {source}")]
    Agent {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

// seccomp(2) flags (linux/seccomp.h).
const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const FLAG_TSYNC: u32 = 1;
const FLAG_LOG: u32 = 2;
const FLAG_SPEC_ALLOW: u32 = 4;
const FLAG_NEW_LISTENER: u32 = 8;
const FLAG_TSYNC_ESRCH: u32 = 16;
const FLAG_WAIT_KILLABLE_RECV: u32 = 32;

/// A compiled filter: the BPF program and the `seccomp(2)` flags to load it with.
#[derive(Debug, Clone)]
pub struct Filter {
    program: Vec<libc::sock_filter>,
    flags: u32,
    /// Some rule notifies a seccomp agent: load with [`Filter::load_with_listener`].
    listener: bool,
}

impl Filter {
    /// Number of BPF instructions (the kernel caps a program at 4096).
    pub fn len(&self) -> usize {
        self.program.len()
    }

    /// Whether the program is empty (never, for a compiled filter).
    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }

    /// Whether the profile has `SCMP_ACT_NOTIFY` rules, so the listener fd must go to
    /// the agent at `linux.seccomp.listenerPath`.
    pub fn needs_listener(&self) -> bool {
        self.listener
    }

    /// Installs the filter on the calling thread (and, with TSYNC, all its threads).
    ///
    /// Call in the container's init right before `execve`. It makes one syscall and
    /// allocates nothing unless `--explain` is on. The kernel requires either
    /// `no_new_privs` (set it first when the spec asks for it) or CAP_SYS_ADMIN.
    /// A filter that [`needs_listener`](Self::needs_listener) loaded this way makes
    /// notified syscalls fail with ENOSYS; use [`load_with_listener`](Self::load_with_listener).
    pub fn load(&self) -> Result<(), SeccompError> {
        self.install(self.flags).map(|_| ())
    }

    /// Like [`load`](Self::load), and returns the user-notification listener fd when
    /// the filter has `SCMP_ACT_NOTIFY` rules (hand it on with
    /// [`notify::send_fd`] / [`notify::send_to_agent`]).
    pub fn load_with_listener(&self) -> Result<Option<OwnedFd>, SeccompError> {
        if !self.listener {
            return self.load().map(|_| None);
        }
        let mut flags = self.flags | FLAG_NEW_LISTENER;
        // With TSYNC the return value would be a thread id on failure; the kernel
        // insists on TSYNC_ESRCH so the listener fd is unambiguous.
        if flags & FLAG_TSYNC != 0 {
            flags |= FLAG_TSYNC_ESRCH;
        }
        let fd = self.install(flags)?;
        // SAFETY: with NEW_LISTENER, seccomp(2) returns a new fd that we now own.
        Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    fn install(&self, flags: u32) -> Result<libc::c_long, SeccompError> {
        crate::explain!(
            "seccomp(SECCOMP_SET_MODE_FILTER, flags={:#x}, {} BPF instructions)",
            flags,
            self.program.len()
        );
        let prog = libc::sock_fprog {
            len: self.program.len() as libc::c_ushort,
            filter: self.program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at `self.program`, which outlives the call; the kernel
        // copies the program before returning.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                libc::c_ulong::from(flags),
                &prog as *const libc::sock_fprog,
            )
        };
        if rc < 0 {
            return Err(SeccompError::Load(std::io::Error::last_os_error()));
        }
        Ok(rc)
    }
}

fn invalid(field: String, reason: impl Into<String>) -> SeccompError {
    SeccompError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// OCI action (+ errnoRet) → libseccomp action. `field` names the spec field for errors.
fn action(
    act: LinuxSeccompAction,
    errno_ret: Option<u32>,
    field: &str,
) -> Result<ScmpAction, SeccompError> {
    let errno = |e: Option<u32>| -> Result<u16, SeccompError> {
        let e = e.unwrap_or(libc::EPERM as u32);
        u16::try_from(e).map_err(|_| {
            invalid(
                format!("{field} errnoRet"),
                format!("{e} is not an errno (0-65535)"),
            )
        })
    };
    Ok(match act {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(i32::from(errno(errno_ret)?)),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno(errno_ret)?),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
    })
}

fn compare(
    arg: &oci_spec::runtime::LinuxSeccompArg,
    field: &str,
) -> Result<ScmpArgCompare, SeccompError> {
    let index = u32::try_from(arg.index())
        .ok()
        .filter(|i| *i < 6)
        .ok_or_else(|| {
            invalid(
                format!("{field}.index"),
                format!(
                    "{} is out of range (a syscall has arguments 0-5)",
                    arg.index()
                ),
            )
        })?;
    let op = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        // OCI: `value` is the mask, `valueTwo` the value the masked argument must equal.
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            return Ok(ScmpArgCompare::new(
                index,
                ScmpCompareOp::MaskedEqual(arg.value()),
                arg.value_two().unwrap_or(0),
            ));
        }
    };
    Ok(ScmpArgCompare::new(index, op, arg.value()))
}

/// Compiles `spec` to a BPF program (call before fork: this allocates and uses
/// libseccomp). Syscall names this architecture does not know are skipped, as runc
/// does, so one profile serves several kernels and architectures.
pub fn compile(spec: &LinuxSeccomp) -> Result<Filter, SeccompError> {
    let default = action(
        spec.default_action(),
        spec.default_errno_ret(),
        "linux.seccomp.defaultAction",
    )?;
    if spec.default_action() == LinuxSeccompAction::ScmpActNotify {
        return Err(invalid(
            "linux.seccomp.defaultAction".into(),
            "SCMP_ACT_NOTIFY cannot be the default action (the agent itself could not run)",
        ));
    }
    let mut listener = false;
    let mut ctx = ScmpFilterContext::new(default)?;

    for (i, arch) in spec.architectures().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.architectures[{i}]");
        let name = serde_json::to_value(arch)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let a: ScmpArch = name
            .parse()
            .map_err(|_| invalid(field.clone(), format!("unknown architecture {name:?}")))?;
        if !ctx.is_arch_present(a).unwrap_or(false) {
            ctx.add_arch(a)
                .map_err(|e| invalid(field, format!("cannot add {name}: {e}")))?;
        }
    }

    let mut flags = 0;
    for f in spec.flags().iter().flatten() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => FLAG_SPEC_ALLOW,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => FLAG_WAIT_KILLABLE_RECV,
        };
    }

    for (i, rule) in spec.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        if rule.errno_ret().is_some()
            && !matches!(
                rule.action(),
                LinuxSeccompAction::ScmpActErrno | LinuxSeccompAction::ScmpActTrace
            )
        {
            return Err(invalid(
                format!("{field}.errnoRet"),
                "only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE",
            ));
        }
        let act = action(rule.action(), rule.errno_ret(), &format!("{field}.action"))?;
        if act == ScmpAction::Notify {
            if spec.listener_path().is_none() {
                return Err(invalid(
                    format!("{field}.action"),
                    "SCMP_ACT_NOTIFY needs a seccomp agent at linux.seccomp.listenerPath",
                ));
            }
            listener = true;
        }
        let args = rule.args().as_deref().unwrap_or(&[]);
        let cmps = args
            .iter()
            .enumerate()
            .map(|(j, a)| compare(a, &format!("{field}.args[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        // libseccomp refuses a rule whose action is the default one; it would be a
        // no-op anyway (runc skips it the same way).
        if act == default {
            continue;
        }
        // Several conditions on the same argument cannot be ANDed in one rule; runc
        // reads them as alternatives (one rule each), which is what profiles mean.
        let mut indexes: Vec<usize> = args.iter().map(|a| a.index()).collect();
        indexes.sort_unstable();
        let same_index = indexes.windows(2).any(|w| w[0] == w[1]);
        for (j, name) in rule.names().iter().enumerate() {
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                tracing::debug!(
                    "{field}.names[{j}]: {name:?} unknown on this architecture, skipped"
                );
                continue;
            };
            let added = if cmps.is_empty() {
                ctx.add_rule(act, sc)
            } else if same_index {
                cmps.iter()
                    .try_for_each(|c| ctx.add_rule_conditional(act, sc, &[*c]).map(|_| ()))
                    .map(|_| &mut ctx)
            } else {
                ctx.add_rule_conditional(act, sc, &cmps)
            };
            added.map_err(|e| invalid(format!("{field}.names[{j}]"), format!("{name}: {e}")))?;
        }
    }

    Ok(Filter {
        program: export(&ctx)?,
        flags,
        listener,
    })
}

/// Exports the generated program through a memfd (libseccomp 2.5 has no in-memory
/// export; a pipe would block on a program larger than its buffer).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<libc::sock_filter>, SeccompError> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the fd is owned below.
    let fd = unsafe { libc::memfd_create(c"hull-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(SeccompError::Export(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    ctx.export_bpf(&fd)?;
    let mut file = std::fs::File::from(fd);
    file.rewind().map_err(SeccompError::Export)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(SeccompError::Export)?;
    let size = std::mem::size_of::<libc::sock_filter>();
    if bytes.is_empty() || bytes.len() % size != 0 {
        return Err(SeccompError::Export(std::io::Error::other(format!(
            "libseccomp produced {} bytes, not a whole number of BPF instructions",
            bytes.len()
        ))));
    }
    Ok(bytes
        .chunks_exact(size)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}
