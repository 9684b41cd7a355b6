//! Device access rules, shared by both cgroup versions.
//!
//! The OCI list is written in v1's terms: rules apply in order and the last matching
//! one wins; a rule with type `a` and no major/minor (every device) resets the list.
//! v1 enforces it with `devices.allow`/`devices.deny` ([`apply_v1`]); v2 with an eBPF
//! program (`devices_v2`). Either way the runtime's default devices are allowed last.

use std::path::Path;

use oci_spec::runtime::LinuxDeviceCgroup;

use super::CgroupError;
use super::fs::write;

/// Device rules a container always gets on top of its spec's (the devices the runtime
/// creates in /dev), as runc does; without them a "deny all" spec breaks /dev/null.
pub const DEFAULT_ALLOWED_DEVICES: &[&str] = &[
    "c 1:3 rwm",    // /dev/null
    "c 1:5 rwm",    // /dev/zero
    "c 1:7 rwm",    // /dev/full
    "c 1:8 rwm",    // /dev/random
    "c 1:9 rwm",    // /dev/urandom
    "c 5:0 rwm",    // /dev/tty
    "c 5:1 rwm",    // /dev/console
    "c 5:2 rwm",    // /dev/ptmx
    "c 136:* rwm",  // /dev/pts/*
    "c 10:200 rwm", // /dev/net/tun
];

/// One rule: `typ` is b'a', b'b' or b'c'; `None` major/minor is the wildcard `*`;
/// `access` is a subset of "rwm".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    pub typ: u8,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: String,
}

impl DeviceRule {
    /// Parses a v1-style entry like `c 1:3 rwm` (the runtime's default device list).
    pub fn parse(allow: bool, entry: &str) -> Option<Self> {
        let mut it = entry.split_whitespace();
        let typ = *it.next()?.as_bytes().first()?;
        let (maj, min) = it.next()?.split_once(':')?;
        let num = |s: &str| {
            if s == "*" {
                Some(None)
            } else {
                s.parse().ok().map(Some)
            }
        };
        Some(DeviceRule {
            allow,
            typ,
            major: num(maj)?,
            minor: num(min)?,
            access: it.next()?.to_string(),
        })
    }

    /// The line v1's devices.allow/deny take: `c 1:3 rwm`, or `a` for every device.
    pub fn v1_entry(&self) -> String {
        if self.typ == b'a' {
            return "a".into();
        }
        let num = |n: Option<i64>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
        format!(
            "{} {}:{} {}",
            self.typ as char,
            num(self.major),
            num(self.minor),
            self.access
        )
    }

    /// `a` with no numbers: every device. In v1 it resets the list.
    pub fn is_wildcard(&self) -> bool {
        self.typ == b'a' && self.major.is_none() && self.minor.is_none()
    }
}

/// The OCI list (validated) followed by the runtime's default devices.
pub fn rules(spec: &[LinuxDeviceCgroup]) -> Result<Vec<DeviceRule>, CgroupError> {
    let mut out = Vec::new();
    for (i, d) in spec.iter().enumerate() {
        let access = d.access().clone().unwrap_or_else(|| "rwm".to_string());
        if access.is_empty() || !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(CgroupError::Invalid {
                field: format!("linux.resources.devices[{i}].access"),
                reason: format!("{access:?} must be made of r, w and m"),
            });
        }
        let typ = match d.typ().map(|t| t.as_str().to_string()).as_deref() {
            None | Some("a") => b'a',
            Some("b") => b'b',
            Some("c" | "u") => b'c',
            Some(other) => {
                return Err(CgroupError::Invalid {
                    field: format!("linux.resources.devices[{i}].type"),
                    reason: format!("{other:?} is not a device cgroup type (a, b or c)"),
                });
            }
        };
        for (name, n) in [("major", d.major()), ("minor", d.minor())] {
            if let Some(n) = n
                && !(0..=i64::from(i32::MAX)).contains(&n)
            {
                return Err(CgroupError::Invalid {
                    field: format!("linux.resources.devices[{i}].{name}"),
                    reason: format!("{n} is not a device number"),
                });
            }
        }
        out.push(DeviceRule {
            allow: d.allow(),
            typ,
            major: d.major(),
            minor: d.minor(),
            access,
        });
    }
    out.extend(
        DEFAULT_ALLOWED_DEVICES
            .iter()
            .filter_map(|e| DeviceRule::parse(true, e)),
    );
    Ok(out)
}

/// `resources` with an allow rule (rwm) for every device `linux.devices` creates, after
/// the spec's own rules, as runc does: a container whose device policy starts with
/// "deny all" can still mknod and use the devices its spec asks for. Fifos (`p`) are not
/// devices to the cgroup. Unchanged when there is no device policy at all.
pub fn allow_spec_devices(
    resources: &oci_spec::runtime::LinuxResources,
    devices: Option<&Vec<oci_spec::runtime::LinuxDevice>>,
) -> oci_spec::runtime::LinuxResources {
    use oci_spec::runtime::LinuxDeviceType;
    let mut out = resources.clone();
    let (Some(rules), Some(devs)) = (resources.devices(), devices) else {
        return out;
    };
    let mut rules = rules.clone();
    for d in devs {
        let typ = match d.typ() {
            LinuxDeviceType::B => LinuxDeviceType::B,
            LinuxDeviceType::C | LinuxDeviceType::U => LinuxDeviceType::C,
            _ => continue,
        };
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(true)
            .set_typ(Some(typ))
            .set_major(Some(d.major()))
            .set_minor(Some(d.minor()))
            .set_access(Some("rwm".into()));
        rules.push(r);
    }
    out.set_devices(Some(rules));
    out
}

/// v1: deny everything unless the list starts with its own wildcard rule (as runc
/// does), then write each rule in order.
pub fn apply_v1(d: &Path, rules: &[DeviceRule]) -> Result<(), CgroupError> {
    if !rules.first().is_some_and(DeviceRule::is_wildcard) {
        write(d, "devices.deny", "a")?;
    }
    for r in rules {
        let file = if r.allow {
            "devices.allow"
        } else {
            "devices.deny"
        };
        write(d, file, &r.v1_entry())?;
    }
    Ok(())
}
