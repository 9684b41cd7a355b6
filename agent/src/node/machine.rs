//! What this machine offers, read from the kernel: CPUs, memory, disk, PIDs, identity.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::Path;

/// Kubernetes' default `--max-pods`.
pub const MAX_PODS: u32 = 110;
/// Held back from allocatable memory, as kubelet's default hard eviction threshold.
pub const EVICTION_MEMORY_KI: u64 = 100 * 1024;

fn read(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// (MemTotal, MemAvailable) in KiB.
pub fn memory_ki() -> (u64, u64) {
    let s = read("/proc/meminfo");
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// (total, available) bytes of the filesystem holding `dir`.
pub fn disk_bytes(dir: &Path) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => {
            let f = s.fragment_size();
            (s.blocks() * f, s.blocks_available() * f)
        }
        Err(_) => (0, 0),
    }
}

/// (processes now, pid_max).
pub fn pids() -> (u64, u64) {
    let max = read("/proc/sys/kernel/pid_max").parse().unwrap_or(32768);
    let now = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .count() as u64
        })
        .unwrap_or(0);
    (now, max)
}

pub fn hostname() -> String {
    let h = read("/proc/sys/kernel/hostname");
    if h.is_empty() { "localhost".into() } else { h }
}

/// The address the default route leaves from (a UDP connect only consults the routing
/// table; nothing is sent), else loopback.
pub fn default_ip() -> IpAddr {
    UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("10.255.255.254:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

pub struct Identity {
    pub machine_id: String,
    pub system_uuid: String,
    pub boot_id: String,
    pub kernel_version: String,
    pub os_image: String,
    pub arch: &'static str,
}

pub fn identity() -> Identity {
    let machine_id = read("/etc/machine-id");
    let uuid = read("/sys/class/dmi/id/product_uuid");
    let os_image = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into());
    Identity {
        system_uuid: if uuid.is_empty() {
            machine_id.clone()
        } else {
            uuid
        },
        machine_id,
        boot_id: read("/proc/sys/kernel/random/boot_id"),
        kernel_version: read("/proc/sys/kernel/osrelease"),
        os_image,
        arch: go_arch(),
    }
}

/// Rust's arch names → Go's (what `kubernetes.io/arch` holds).
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}
