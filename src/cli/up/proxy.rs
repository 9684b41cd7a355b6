//! The service proxy and cluster DNS inside `hull up`, with the node's own identity:
//! kube-dns is published at the cluster DNS address with this node's listener behind it.

use std::net::{IpAddr, SocketAddr};

use hull_proxy::daemon;
use tokio::sync::watch;

use super::UpArgs;

pub fn spawn(
    client: kube::Client,
    node: &str,
    node_ip: IpAddr,
    args: &UpArgs,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let mut opts = daemon::Options::for_node(node, node_ip);
    if let Some(c) = parse_cidr(&args.cluster_cidr) {
        opts.proxy.node.pod_cidrs = vec![c];
    }
    opts.proxy.cluster_domain = args.cluster_domain.clone();
    // Several clusters may run side by side (tests): health only where asked for.
    opts.proxy.healthz = None;
    if let Some(d) = opts.cluster_dns.as_mut() {
        d.service_ip = args.cluster_dns;
        d.endpoint = SocketAddr::new(node_ip, 53);
    }
    tokio::spawn(async move {
        if let Err(e) = daemon::run(client, opts, super::wait_stop(stop)).await {
            eprintln!("hull up: service proxy: {e}");
        }
    })
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = s.split_once('/')?;
    Some((ip.parse().ok()?, len.parse().ok()?))
}
