//! Keeps this node's routes to the other nodes' pod subnets in step with the Node objects
//! (`spec.podCIDR` via the node's InternalIP; see `hull_cni::podroutes`), for `hull up`
//! and `hull agent`. On stop the routes are removed; on start, routes a crashed run left
//! are replaced by what the API says now.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::StreamExt;
use hull_cni::podroutes::{self, PeerRoute};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::watch;

fn peer(node: &Node) -> Option<PeerRoute> {
    let name = node.metadata.name.clone()?;
    let cidr = node.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()?;
    let ip: IpAddr = node
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()?;
    Some(PeerRoute {
        node: name,
        pod_cidr: cidr,
        node_ip: ip,
    })
}

async fn apply(want: Vec<PeerRoute>, last: &mut Option<Vec<PeerRoute>>) {
    if last.as_ref() == Some(&want) {
        return;
    }
    let w = want.clone();
    match tokio::task::spawn_blocking(move || podroutes::sync(&w)).await {
        Ok(Ok(r)) => {
            for net in &r.added {
                tracing::info!(%net, "pod route added");
            }
            for net in &r.removed {
                tracing::info!(%net, "pod route removed");
            }
            for (n, why) in &r.conflicts {
                tracing::warn!(node = %n, "no route to the node's pods: {why}");
            }
            for n in &r.unreachable {
                tracing::warn!(node = %n, "no directly connected route to the node: its pods are unreachable from here");
            }
            *last = Some(want);
        }
        Ok(Err(e)) => tracing::warn!("syncing pod routes: {e}"),
        Err(e) => tracing::warn!("syncing pod routes: {e}"),
    }
}

pub fn spawn(
    client: kube::Client,
    own: String,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<Node> = Api::all(client);
        let mut events = watcher(api, watcher::Config::default()).boxed();
        let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
        let mut init: BTreeMap<String, Node> = BTreeMap::new();
        let mut last = None;
        loop {
            let ev = tokio::select! {
                ev = events.next() => ev,
                _ = stop.wait_for(|s| *s) => break,
            };
            let changed = match ev {
                Some(Ok(watcher::Event::Apply(n))) => {
                    nodes.insert(n.metadata.name.clone().unwrap_or_default(), n);
                    true
                }
                Some(Ok(watcher::Event::Delete(n))) => {
                    nodes.remove(n.metadata.name.as_deref().unwrap_or_default());
                    true
                }
                Some(Ok(watcher::Event::Init)) => {
                    init.clear();
                    false
                }
                Some(Ok(watcher::Event::InitApply(n))) => {
                    init.insert(n.metadata.name.clone().unwrap_or_default(), n);
                    false
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    nodes = std::mem::take(&mut init);
                    true
                }
                Some(Err(e)) => {
                    tracing::debug!("node watch: {e}");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    false
                }
                None => break,
            };
            if changed {
                let want = nodes
                    .values()
                    .filter(|n| n.metadata.name.as_deref() != Some(own.as_str()))
                    .filter_map(peer)
                    .collect();
                apply(want, &mut last).await;
            }
        }
        match tokio::task::spawn_blocking(podroutes::clear).await {
            Ok(Ok(gone)) if !gone.is_empty() => {
                tracing::info!(routes = gone.len(), "pod routes removed")
            }
            Ok(Err(e)) => eprintln!("hull: removing pod routes: {e}"),
            _ => {}
        }
    })
}
