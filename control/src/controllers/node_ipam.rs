//! Node IPAM: every Node gets `spec.podCIDR`/`spec.podCIDRs`, a `/node_cidr_mask_size`
//! of the cluster CIDR no other node holds (kube-controller-manager's "nodeipam" with the
//! range allocator). The allocation map is rebuilt from the Nodes themselves at start, so
//! a restart (or a new leader) hands out the same ranges; a deleted Node's range is free
//! again.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use super::util::{self, Queue, Recorder, SyncResult};
use crate::manager::{Context, LoopFuture};

pub const NAME: &str = "node-ipam-controller";

/// A CIDR: base address (as an integer) and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub v6: bool,
    pub base: u128,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("CIDR {s:?}: want ADDRESS/PREFIX"))?;
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("CIDR {s:?}: {addr:?} is not an IP address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("CIDR {s:?}: prefix {prefix:?} is not a number"))?;
        let (v6, bits, value) = match ip {
            IpAddr::V4(a) => (false, 32u8, u128::from(u32::from(a))),
            IpAddr::V6(a) => (true, 128u8, u128::from(a)),
        };
        if prefix > bits {
            return Err(format!("CIDR {s:?}: prefix longer than {bits} bits"));
        }
        let host_bits = u32::from(bits - prefix);
        let mask = if host_bits >= 128 {
            0
        } else {
            !((1u128 << host_bits) - 1)
        };
        Ok(Cidr {
            v6,
            base: value & mask,
            prefix,
        })
    }

    fn bits(&self) -> u8 {
        if self.v6 { 128 } else { 32 }
    }

    fn render(&self) -> String {
        let ip = if self.v6 {
            IpAddr::V6(std::net::Ipv6Addr::from(self.base))
        } else {
            IpAddr::V4(std::net::Ipv4Addr::from(self.base as u32))
        };
        format!("{ip}/{}", self.prefix)
    }
}

/// The ranges of one cluster CIDR cut into `/mask` subnets, and which are taken.
pub struct RangeAllocator {
    cluster: Cidr,
    mask: u8,
    count: u64,
    used: HashSet<u64>,
    next: u64,
}

impl RangeAllocator {
    pub fn new(cluster_cidr: &str, mask: u8) -> Result<Self, String> {
        let cluster = Cidr::parse(cluster_cidr)?;
        if mask < cluster.prefix || mask > cluster.bits() {
            return Err(format!(
                "node CIDR mask size /{mask} does not fit cluster CIDR {cluster_cidr}"
            ));
        }
        let shift = u32::from(mask - cluster.prefix);
        if shift > 32 {
            return Err(format!(
                "cluster CIDR {cluster_cidr} holds more than 2^32 /{mask} ranges: use a longer prefix"
            ));
        }
        Ok(RangeAllocator {
            cluster,
            mask,
            count: 1u64 << shift,
            used: HashSet::new(),
            next: 0,
        })
    }

    fn subnet(&self, index: u64) -> String {
        let host_bits = u32::from(self.cluster.bits() - self.mask);
        Cidr {
            v6: self.cluster.v6,
            base: self.cluster.base + (u128::from(index) << host_bits),
            prefix: self.mask,
        }
        .render()
    }

    /// The index of `cidr` if it is one of this allocator's ranges.
    fn index_of(&self, cidr: &str) -> Option<u64> {
        let c = Cidr::parse(cidr).ok()?;
        if c.v6 != self.cluster.v6 || c.prefix != self.mask {
            return None;
        }
        let host_bits = u32::from(self.cluster.bits() - self.mask);
        let offset = c.base.checked_sub(self.cluster.base)?;
        let index = offset >> host_bits;
        (index < u128::from(self.count)).then_some(index as u64)
    }

    /// Marks a range taken (one a Node already holds). False if not one of ours.
    pub fn occupy(&mut self, cidr: &str) -> bool {
        match self.index_of(cidr) {
            Some(i) => {
                self.used.insert(i);
                true
            }
            None => false,
        }
    }

    pub fn release(&mut self, cidr: &str) {
        if let Some(i) = self.index_of(cidr) {
            self.used.remove(&i);
        }
    }

    /// The next free range (round robin, so a just-released range is not handed out again
    /// at once), or None when all are taken.
    pub fn allocate(&mut self) -> Option<String> {
        for k in 0..self.count {
            let i = (self.next + k) % self.count;
            if self.used.insert(i) {
                self.next = (i + 1) % self.count;
                return Some(self.subnet(i));
            }
        }
        None
    }
}

struct State {
    ranges: RangeAllocator,
    /// Node name → the range it holds (to release it when the Node goes).
    held: HashMap<String, String>,
}

pub fn start(ctx: Arc<Context>) -> LoopFuture {
    Box::pin(run(ctx))
}

async fn run(ctx: Arc<Context>) {
    let ranges =
        match RangeAllocator::new(&ctx.options.cluster_cidr, ctx.options.node_cidr_mask_size) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{NAME} is off: {e}");
                return;
            }
        };
    let queue: Arc<Queue<String>> = Queue::new();
    let q = queue.clone();
    let (nodes, informer) =
        util::subscribe(
            &ctx.informers.nodes,
            move |_, new: Option<&Node>| match new {
                Some(n) => q.add(util::key_of(n)),
                None => q.add(String::new()),
            },
        );
    let state = Arc::new(Mutex::new(State {
        ranges,
        held: HashMap::new(),
    }));
    let recorder = Recorder::new(ctx.client.clone(), NAME);
    let workers = async {
        if nodes.wait_until_ready().await.is_err() {
            return;
        }
        // Rebuild the map from what Nodes hold before handing out anything.
        {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            for n in nodes.state() {
                if let Some(c) = pod_cidr(&n)
                    && s.ranges.occupy(&c)
                {
                    s.held
                        .insert(n.metadata.name.clone().unwrap_or_default(), c);
                }
            }
        }
        let sync = {
            let (ctx, nodes, state, recorder) =
                (ctx.clone(), nodes.clone(), state.clone(), recorder.clone());
            move |name: String| {
                let (ctx, nodes, state, recorder) =
                    (ctx.clone(), nodes.clone(), state.clone(), recorder.clone());
                async move { sync(&ctx, &nodes, &state, &recorder, &name).await }
            }
        };
        // One worker: allocations are decided one at a time.
        util::run_workers(queue, 1, NAME, sync).await;
    };
    tokio::join!(informer, workers);
}

fn pod_cidr(n: &Node) -> Option<String> {
    let spec = n.spec.as_ref()?;
    spec.pod_cidr
        .clone()
        .or_else(|| spec.pod_cidrs.as_ref().and_then(|v| v.first().cloned()))
        .filter(|c| !c.is_empty())
}

async fn sync(
    ctx: &Context,
    nodes: &Store<Node>,
    state: &Mutex<State>,
    recorder: &Recorder,
    name: &str,
) -> SyncResult {
    if name.is_empty() {
        // Some Node was deleted: release what departed Nodes held.
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<String> = s
            .held
            .keys()
            .filter(|n| nodes.get(&ObjectRef::new(n)).is_none())
            .cloned()
            .collect();
        for n in gone {
            if let Some(c) = s.held.remove(&n) {
                s.ranges.release(&c);
            }
        }
        return Ok(None);
    }
    let Some(node) = nodes.get(&ObjectRef::new(name)) else {
        return Ok(None);
    };
    if let Some(c) = pod_cidr(&node) {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        if s.held.get(name) != Some(&c) {
            if let Some(old) = s.held.remove(name) {
                s.ranges.release(&old);
            }
            if s.ranges.occupy(&c) {
                s.held.insert(name.to_string(), c);
            }
        }
        return Ok(None);
    }
    if node.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let cidr = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        // A Node recreated under the same name gets its range back.
        match s.held.get(name).cloned() {
            Some(c) => Some(c),
            None => {
                let c = s.ranges.allocate();
                if let Some(c) = &c {
                    s.held.insert(name.to_string(), c.clone());
                }
                c
            }
        }
    };
    let Some(cidr) = cidr else {
        recorder
            .normal(
                &util::reference(node.as_ref()),
                "CIDRNotAvailable",
                &format!("Node {name} status is now: CIDRNotAvailable"),
            )
            .await;
        return Ok(Some(Duration::from_secs(300)));
    };
    let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
    match Api::<Node>::all(ctx.client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(node = name, %cidr, "assigned pod CIDR");
            Ok(None)
        }
        Err(e) => {
            {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(c) = s.held.remove(name) {
                    s.ranges.release(&c);
                }
            }
            if util::is_not_found(&e) {
                return Ok(None);
            }
            recorder
                .warning(
                    &util::reference(node.as_ref()),
                    "CIDRAssignmentFailed",
                    &format!("Node {name} status is now: CIDRAssignmentFailed"),
                )
                .await;
            Err(format!("setting podCIDR {cidr} on node {name}: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_the_cluster_cidr_into_unique_ranges() {
        let mut a = RangeAllocator::new("10.244.0.0/16", 24).expect("valid");
        assert!(a.occupy("10.244.1.0/24"));
        assert!(!a.occupy("10.245.0.0/24"));
        assert_eq!(a.allocate().as_deref(), Some("10.244.0.0/24"));
        assert_eq!(a.allocate().as_deref(), Some("10.244.2.0/24"));
        a.release("10.244.0.0/24");
        assert_eq!(a.allocate().as_deref(), Some("10.244.3.0/24"));
        let mut small = RangeAllocator::new("10.0.0.0/23", 24).expect("valid");
        assert!(small.allocate().is_some());
        assert!(small.allocate().is_some());
        assert_eq!(small.allocate(), None);
        let mut v6 = RangeAllocator::new("fd00:10:244::/56", 64).expect("valid");
        assert_eq!(v6.allocate().as_deref(), Some("fd00:10:244::/64"));
        assert_eq!(v6.allocate().as_deref(), Some("fd00:10:244:1::/64"));
        assert!(RangeAllocator::new("10.244.0.0/16", 8).is_err());
        assert!(RangeAllocator::new("10.244.0.0", 24).is_err());
    }
}
