//! The cgroup v2 device controller: an eBPF program of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the container's cgroup.
//!
//! v1 had `devices.allow`/`devices.deny` files; v2 has no files at all. The kernel runs
//! the attached program on every open/mknod of a device node and allows the access
//! when it returns 1. hull compiles the OCI rule list into such a program by hand (a
//! few instructions per rule, like runc's `devicefilter`), which avoids a dependency on
//! an eBPF toolchain for a program this small.
//!
//! Semantics follow v1, which the OCI list is written for (see `devices`): the program
//! checks rules last-to-first and returns at the first match.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::CgroupError;
use super::devices::DeviceRule;

// eBPF encoding (linux/bpf.h, linux/bpf_common.h).
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const ALU32_MOV_X: u8 = 0xbc;
const ALU64_MOV_K: u8 = 0xb7;
const JMP_JNE_K: u8 = 0x55;
const JMP_JNE_X: u8 = 0x5d;
const JMP_EXIT: u8 = 0x95;

// bpf_cgroup_dev_ctx: { u32 access_type (access << 16 | type); u32 major; u32 minor; }
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8, // dst in the low nibble, src in the high one
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// Compiles `rules` to a program. Registers: r2 = type, r3 = requested access,
/// r4 = major, r5 = minor (r1 holds the context, then serves as scratch).
pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    // A wildcard rule resets everything before it, as in v1.
    let start = rules.iter().rposition(DeviceRule::is_wildcard);
    let default_allow = start.is_some_and(|i| rules[i].allow);
    let effective = &rules[start.map_or(0, |i| i + 1)..];

    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for rule in effective.iter().rev() {
        let mut block = Vec::new();
        // Each check jumps past the rest of this block when it does not match; the
        // offsets are filled in once the block's length is known.
        let mut jumps = Vec::new();
        match rule.typ {
            b'b' | b'c' => {
                let t = if rule.typ == b'b' {
                    DEV_BLOCK
                } else {
                    DEV_CHAR
                };
                jumps.push(block.len());
                block.push(insn(JMP_JNE_K, 2, 0, 0, t));
            }
            _ => {}
        }
        let acc = rule.access.chars().fold(0, |a, c| {
            a | match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                _ => ACC_MKNOD,
            }
        });
        if acc != ACC_READ | ACC_WRITE | ACC_MKNOD {
            // The request must be a subset of the rule's access.
            block.push(insn(ALU32_MOV_X, 1, 3, 0, 0));
            block.push(insn(ALU32_AND_K, 1, 0, 0, acc));
            jumps.push(block.len());
            block.push(insn(JMP_JNE_X, 1, 3, 0, 0));
        }
        for (reg, num) in [(4, rule.major), (5, rule.minor)] {
            if let Some(n) = num {
                jumps.push(block.len());
                block.push(insn(JMP_JNE_K, reg, 0, 0, n as i32));
            }
        }
        block.push(insn(ALU64_MOV_K, 0, 0, 0, i32::from(rule.allow)));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for j in jumps {
            block[j].off = (len - j - 1) as i16;
        }
        p.extend(block);
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, i32::from(default_allow)));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

// bpf(2) commands and constants.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// `union bpf_attr`, as raw words: each command reads its own fields at fixed offsets.
#[repr(C, align(8))]
struct Attr([u32; 32]);

impl Attr {
    fn new() -> Self {
        Attr([0; 32])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off / 4] = v;
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off / 4] = v as u32;
        self.0[off / 4 + 1] = (v >> 32) as u32;
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-initialised bpf_attr-sized buffer whose pointer fields
    // point at memory that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads `prog` and attaches it to the cgroup at `dir`, then detaches the programs that
/// were there before (attach first, so the cgroup is never left unfiltered).
pub fn attach(dir: &Path, prog: &[Insn]) -> Result<(), CgroupError> {
    let io = |what: &str, source: std::io::Error| CgroupError::Io {
        path: dir.join(format!("<{what}>")),
        source,
    };
    let cg = std::fs::File::open(dir).map_err(|e| io("open cgroup", e))?;
    let cg_fd = cg.as_raw_fd() as u32;

    let mut old_ids = [0u32; 64];
    let mut a = Attr::new();
    a.u32(0, cg_fd)
        .u32(4, BPF_CGROUP_DEVICE)
        .u64(16, old_ids.as_mut_ptr() as u64)
        .u32(24, old_ids.len() as u32);
    bpf(BPF_PROG_QUERY, &mut a).map_err(|e| io("bpf prog query", e))?;
    let old_count = (a.0[6] as usize).min(old_ids.len());

    let license = c"Apache-2.0";
    crate::explain!(
        "bpf(BPF_PROG_LOAD, CGROUP_DEVICE, {} instructions) for {}",
        prog.len(),
        dir.display()
    );
    let load = |log: &mut [u8]| {
        let mut a = Attr::new();
        a.u32(0, BPF_PROG_TYPE_CGROUP_DEVICE)
            .u32(4, prog.len() as u32)
            .u64(8, prog.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64);
        if !log.is_empty() {
            a.u32(24, 1)
                .u32(28, log.len() as u32)
                .u64(32, log.as_mut_ptr() as u64);
        }
        bpf(BPF_PROG_LOAD, &mut a)
    };
    // Without a log first: a verbose verifier log can outgrow any fixed buffer
    // (ENOSPC) even when the program is fine. Only a failure is retried for the log.
    let fd = load(&mut []).map_err(|e| {
        let mut log = vec![0u8; 1 << 16];
        let _ = load(&mut log);
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        let last = text.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
        io(&format!("bpf prog load: {last}"), e)
    })?;
    // SAFETY: BPF_PROG_LOAD returned a new fd we now own.
    let prog_fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };

    let mut a = Attr::new();
    a.u32(0, cg_fd)
        .u32(4, prog_fd.as_raw_fd() as u32)
        .u32(8, BPF_CGROUP_DEVICE)
        .u32(12, BPF_F_ALLOW_MULTI);
    crate::explain!(
        "bpf(BPF_PROG_ATTACH, CGROUP_DEVICE, ALLOW_MULTI) to {}",
        dir.display()
    );
    bpf(BPF_PROG_ATTACH, &mut a).map_err(|e| io("bpf prog attach", e))?;

    for id in &old_ids[..old_count] {
        let mut a = Attr::new();
        a.u32(0, *id);
        let Ok(fd) = bpf(BPF_PROG_GET_FD_BY_ID, &mut a) else {
            continue; // already gone
        };
        // SAFETY: BPF_PROG_GET_FD_BY_ID returned a new fd we now own.
        let old = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut a = Attr::new();
        a.u32(0, cg_fd)
            .u32(4, old.as_raw_fd() as u32)
            .u32(8, BPF_CGROUP_DEVICE);
        crate::explain!("bpf(BPF_PROG_DETACH, prog id {id}) from {}", dir.display());
        bpf(BPF_PROG_DETACH, &mut a).map_err(|e| io("bpf prog detach", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_all_then_allow_compiles_to_one_block_per_rule() {
        let rules = vec![
            DeviceRule::parse(false, "a *:* rwm").unwrap(),
            DeviceRule::parse(true, "c 1:3 rwm").unwrap(),
            DeviceRule::parse(true, "c 136:* rw").unwrap(),
        ];
        let p = program(&rules);
        // header 6 + (type, major, minor, mov, exit) + (type, 3 access, major, mov, exit)
        // + default (mov, exit)
        assert_eq!(p.len(), 6 + 5 + 7 + 2);
        // The last instruction pair returns the default: deny.
        assert_eq!(p[p.len() - 2], insn(ALU64_MOV_K, 0, 0, 0, 0));
        // The first block is the last rule (pts): a failed type check skips its 6
        // remaining instructions.
        assert_eq!(p[6], insn(JMP_JNE_K, 2, 0, 6, DEV_CHAR));
    }

    #[test]
    fn parse_entries() {
        let r = DeviceRule::parse(true, "b 8:* r").unwrap();
        assert_eq!((r.typ, r.major, r.minor), (b'b', Some(8), None));
        assert!(DeviceRule::parse(true, "c x:1 r").is_none());
    }
}
