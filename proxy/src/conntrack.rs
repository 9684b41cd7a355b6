//! Conntrack cleanup of stale UDP flows.
//!
//! UDP has no connection teardown: a client that keeps sending to a ClusterIP keeps
//! its conntrack entry (and so its DNAT to an endpoint that is gone) alive forever.
//! When a UDP endpoint leaves a Service, its flows are deleted, as kube-proxy does.
//! This uses Debian's `conntrack` tool (conntrack-tools), not netlink directly.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use crate::model::{Protocol, ServicePortRule};

/// A UDP backend as seen in a rule set: (service IP, service port, endpoint IP, endpoint port).
pub type UdpFlow = (IpAddr, u16, IpAddr, u16);

pub fn udp_flows<'a>(ports: impl IntoIterator<Item = &'a ServicePortRule>) -> BTreeSet<UdpFlow> {
    let mut out = BTreeSet::new();
    for r in ports.into_iter().filter(|r| r.protocol == Protocol::Udp) {
        for e in r.usable(false) {
            for cip in &r.cluster_ips {
                out.insert((*cip, r.port, e.ip, e.port));
            }
        }
    }
    out
}

/// Delete conntrack entries for each flow in `gone` (its service IP DNATed to the
/// endpoint). Returns how many `conntrack -D` calls failed to run; "no entries
/// matched" is not a failure.
pub fn delete_flows(gone: &BTreeSet<UdpFlow>) -> usize {
    let mut failed = 0;
    for (sip, sport, eip, eport) in gone {
        let fam = if sip.is_ipv4() { "ipv4" } else { "ipv6" };
        let st = Command::new("conntrack")
            .args([
                "-D",
                "-f",
                fam,
                "-p",
                "udp",
                "--orig-dst",
                &sip.to_string(),
                "--orig-port-dst",
                &sport.to_string(),
            ])
            .args([
                "--reply-src",
                &eip.to_string(),
                "--reply-port-src",
                &eport.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // conntrack exits 1 when nothing matched; only a spawn error is a failure.
        if st.is_err() {
            failed += 1;
        }
    }
    failed
}
