//! host-local IPAM, in process, with the reference plugin's on-disk format.
//!
//! Layout under `dataDir/<network>/` (default `/var/lib/cni/networks`), shared with
//! Debian's `host-local` so either can take over a node: one file per leased IP,
//! named by the IP, holding `"<containerID>\r\n<ifname>"`; `last_reserved_ip.<set>`
//! remembering where the last search stopped (round-robin, so a just-freed IP is
//! not handed out again at once); and `lock`, flock'ed around every change.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use nix::fcntl::{Flock, FlockArg};
use serde::Deserialize;

use crate::error::{CniError, Result, code};
use crate::explain;
use crate::types::{Attachment, CniResult, Dns, IpConfig, Route};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

#[derive(Debug, Clone, Deserialize)]
pub struct RangeConf {
    pub subnet: IpNet,
    #[serde(rename = "rangeStart", default)]
    pub range_start: Option<IpAddr>,
    #[serde(rename = "rangeEnd", default)]
    pub range_end: Option<IpAddr>,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RouteConf {
    pub dst: IpNet,
    #[serde(default)]
    pub gw: Option<IpAddr>,
}

/// The `ipam` section of a network config with `"type": "host-local"`.
#[derive(Debug, Clone, Deserialize)]
pub struct IpamConf {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub ranges: Vec<Vec<RangeConf>>,
    /// Pre-`ranges` single-range form, still written by some tools.
    #[serde(default)]
    pub subnet: Option<IpNet>,
    #[serde(rename = "rangeStart", default)]
    pub range_start: Option<IpAddr>,
    #[serde(rename = "rangeEnd", default)]
    pub range_end: Option<IpAddr>,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub routes: Vec<RouteConf>,
    #[serde(rename = "dataDir", default)]
    pub data_dir: Option<PathBuf>,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((v as u32).into())
    } else {
        IpAddr::V6(v.into())
    }
}

/// One range with its bounds resolved.
#[derive(Debug, Clone)]
pub struct Range {
    pub subnet: IpNet,
    pub start: u128,
    pub end: u128,
    pub gateway: IpAddr,
}

impl Range {
    fn resolve(r: &RangeConf, field: &str) -> Result<Self> {
        let subnet = r.subnet.trunc();
        let v4 = subnet.addr().is_ipv4();
        let net = to_u128(subnet.network());
        let bcast = to_u128(subnet.broadcast());
        if subnet.prefix_len() >= if v4 { 31 } else { 127 } {
            return Err(CniError::config(format!(
                "{field}.subnet: {} is too small for IPAM",
                r.subnet
            )));
        }
        // The network address is never handed out; in IPv4 nor is the broadcast.
        let first = net + 1;
        let last = if v4 { bcast - 1 } else { bcast };
        let check = |ip: Option<IpAddr>, name: &str| -> Result<Option<u128>> {
            match ip {
                None => Ok(None),
                Some(ip) if subnet.contains(&ip) && ip.is_ipv4() == v4 => Ok(Some(to_u128(ip))),
                Some(ip) => Err(CniError::config(format!(
                    "{field}.{name}: {ip} is not in subnet {subnet}"
                ))),
            }
        };
        let start = check(r.range_start, "rangeStart")?
            .unwrap_or(first)
            .max(first);
        let end = check(r.range_end, "rangeEnd")?.unwrap_or(last).min(last);
        if start > end {
            return Err(CniError::config(format!(
                "{field}: rangeStart is after rangeEnd"
            )));
        }
        let gateway = check(r.gateway, "gateway")?
            .map(|g| from_u128(g, v4))
            .unwrap_or(from_u128(first, v4));
        Ok(Self {
            subnet,
            start,
            end,
            gateway,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.subnet.addr().is_ipv4() == ip.is_ipv4()
            && (self.start..=self.end).contains(&to_u128(ip))
    }
}

/// The resolved host-local configuration for one network.
#[derive(Debug, Clone)]
pub struct HostLocal {
    pub dir: PathBuf,
    pub sets: Vec<Vec<Range>>,
    pub routes: Vec<RouteConf>,
}

/// An exclusive flock on the network's `lock` file, released on drop.
struct Lock(#[allow(dead_code)] Flock<File>);

impl HostLocal {
    pub fn from_value(network: &str, ipam: &serde_json::Value) -> Result<Self> {
        let conf: IpamConf = serde_json::from_value(ipam.clone())
            .map_err(|e| CniError::new(code::DECODE, format!("ipam: {e}")))?;
        Self::new(network, &conf)
    }

    pub fn new(network: &str, conf: &IpamConf) -> Result<Self> {
        if network.is_empty() || network.contains('/') || network.starts_with('.') {
            return Err(CniError::config(format!(
                "name: {network:?} is not a valid network name"
            )));
        }
        let mut raw = conf.ranges.clone();
        if let Some(subnet) = conf.subnet {
            raw.insert(
                0,
                vec![RangeConf {
                    subnet,
                    range_start: conf.range_start,
                    range_end: conf.range_end,
                    gateway: conf.gateway,
                }],
            );
        }
        if raw.is_empty() {
            return Err(CniError::config("ipam.ranges: no ranges configured"));
        }
        let mut sets = Vec::new();
        for (i, set) in raw.iter().enumerate() {
            if set.is_empty() {
                return Err(CniError::config(format!(
                    "ipam.ranges[{i}]: empty range set"
                )));
            }
            let mut rs = Vec::new();
            for (j, r) in set.iter().enumerate() {
                rs.push(Range::resolve(r, &format!("ipam.ranges[{i}][{j}]"))?);
            }
            sets.push(rs);
        }
        let base = conf
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        Ok(Self {
            dir: base.join(network),
            sets,
            routes: conf.routes.clone(),
        })
    }

    fn lock(&self) -> Result<Lock> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| CniError::io(format!("ipam dataDir {}", self.dir.display()), e))?;
        let path = self.dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| CniError::io(format!("ipam lock {}", path.display()), e))?;
        let l = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| CniError::io(format!("ipam lock {}", path.display()), e.into()))?;
        Ok(Lock(l))
    }

    /// Every lease in the directory: (ip, containerID, ifname).
    pub fn leases(&self) -> Vec<(IpAddr, String, String)> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(ip) = name.to_str().and_then(|s| s.parse::<IpAddr>().ok()) else {
                continue;
            };
            let Ok(body) = fs::read_to_string(e.path()) else {
                continue;
            };
            let mut lines = body.split("\r\n").map(str::trim);
            let id = lines.next().unwrap_or_default().to_string();
            let ifname = lines.next().unwrap_or_default().to_string();
            out.push((ip, id, ifname));
        }
        out
    }

    fn owned_by(id: &str, ifname: &str, lease_id: &str, lease_if: &str) -> bool {
        // Leases written before ifnames were recorded hold only the id.
        lease_id == id && (lease_if.is_empty() || lease_if == ifname)
    }

    fn lease_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// Allocates one address per range set for (id, ifname). Returns the existing
    /// leases if this attachment already holds some (a retried ADD).
    pub fn allocate(&self, id: &str, ifname: &str) -> Result<CniResult> {
        let _lock = self.lock()?;
        let existing = self.leases();
        let mut got: Vec<(IpAddr, &Range)> = Vec::new();
        let mut created: Vec<PathBuf> = Vec::new();
        let outcome = (|| {
            for (si, set) in self.sets.iter().enumerate() {
                if let Some((ip, r)) = existing.iter().find_map(|(ip, lid, lif)| {
                    if !Self::owned_by(id, ifname, lid, lif) {
                        return None;
                    }
                    set.iter().find(|r| r.contains(*ip)).map(|r| (*ip, r))
                }) {
                    got.push((ip, r));
                    continue;
                }
                let (ip, r) = self.reserve(si, set, id, ifname)?;
                created.push(self.lease_path(ip));
                got.push((ip, r));
            }
            Ok(())
        })();
        if let Err(e) = outcome {
            for p in created {
                let _ = fs::remove_file(p);
            }
            return Err(e);
        }
        let mut res = CniResult::default();
        for (ip, r) in got {
            let address = IpNet::new(ip, r.subnet.prefix_len())
                .map_err(|e| CniError::config(format!("ipam: {e}")))?;
            res.ips.push(IpConfig {
                address,
                gateway: Some(r.gateway),
                interface: None,
                version: None,
            });
        }
        res.routes = self
            .routes
            .iter()
            .map(|r| Route {
                dst: r.dst,
                gw: r.gw,
                mtu: None,
                priority: None,
            })
            .collect();
        res.dns = Dns::default();
        Ok(res)
    }

    fn reserve<'a>(
        &self,
        si: usize,
        set: &'a [Range],
        id: &str,
        ifname: &str,
    ) -> Result<(IpAddr, &'a Range)> {
        let last_path = self.dir.join(format!("last_reserved_ip.{si}"));
        let last = fs::read_to_string(&last_path)
            .ok()
            .and_then(|s| s.trim().parse::<IpAddr>().ok());
        // Candidates in order: every range of the set, starting just after the last
        // reservation and wrapping round, as the reference's RangeIter does.
        let size = |r: &Range| r.end - r.start + 1;
        let total: u128 = set.iter().map(size).sum();
        let index_of = |ip: IpAddr| -> Option<u128> {
            let mut off = 0;
            for r in set {
                if r.contains(ip) {
                    return Some(off + to_u128(ip) - r.start);
                }
                off += size(r);
            }
            None
        };
        let at = |mut p: u128| -> (usize, u128) {
            for (i, r) in set.iter().enumerate() {
                if p < size(r) {
                    return (i, r.start + p);
                }
                p -= size(r);
            }
            (0, set[0].start)
        };
        let p0 = last
            .and_then(index_of)
            .map(|p| (p + 1) % total)
            .unwrap_or(0);
        // A /64 cannot be walked in full; a million probes is far beyond any real node.
        let order = (0..total.min(1 << 20)).map(|k| at((p0 + k) % total));
        for (r_i, v) in order {
            let r = &set[r_i];
            let v4 = r.subnet.addr().is_ipv4();
            let ip = from_u128(v, v4);
            if ip == r.gateway {
                continue;
            }
            let path = self.lease_path(ip);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(format!("{id}\r\n{ifname}").as_bytes())
                        .map_err(|e| CniError::io(format!("ipam lease {}", path.display()), e))?;
                    let _ = fs::write(&last_path, ip.to_string());
                    explain::step(|| {
                        format!("ipam: leased {ip} to {id}/{ifname} ({})", path.display())
                    });
                    return Ok((ip, r));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(CniError::io(format!("ipam lease {}", path.display()), e)),
            }
        }
        let subnets: Vec<String> = set.iter().map(|r| r.subnet.to_string()).collect();
        Err(CniError::new(
            code::RANGE_EXHAUSTED,
            format!(
                "ipam.ranges[{si}]: no IP addresses available in range set {}",
                subnets.join(",")
            ),
        ))
    }

    /// Releases every lease held by (id, ifname). Missing leases are not an error.
    pub fn release(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let _lock = self.lock()?;
        let mut freed = Vec::new();
        for (ip, lid, lif) in self.leases() {
            if Self::owned_by(id, ifname, &lid, &lif) {
                let p = self.lease_path(ip);
                match fs::remove_file(&p) {
                    Ok(()) => {
                        explain::step(|| format!("ipam: released {ip} ({})", p.display()));
                        freed.push(ip);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(CniError::io(format!("ipam lease {}", p.display()), e)),
                }
            }
        }
        Ok(freed)
    }

    /// The addresses (id, ifname) holds now.
    pub fn find(&self, id: &str, ifname: &str) -> Vec<IpAddr> {
        self.leases()
            .into_iter()
            .filter(|(_, lid, lif)| Self::owned_by(id, ifname, lid, lif))
            .map(|(ip, _, _)| ip)
            .collect()
    }

    /// Releases leases whose attachment is not in `valid`; returns what was freed.
    pub fn gc(&self, valid: &HashSet<Attachment>) -> Result<Vec<(IpAddr, String, String)>> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let _lock = self.lock()?;
        let mut freed = Vec::new();
        for (ip, id, ifname) in self.leases() {
            let keep = valid
                .iter()
                .any(|a| Self::owned_by(&a.container_id, &a.ifname, &id, &ifname));
            if !keep {
                let p = self.lease_path(ip);
                if fs::remove_file(&p).is_ok() {
                    explain::step(|| format!("ipam gc: released {ip} held by {id}/{ifname}"));
                    freed.push((ip, id, ifname));
                }
            }
        }
        Ok(freed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
