//! `hull server`: the control plane — the API server and, unless `--controllers=false`,
//! the controller manager (scheduler and controllers, leader-elected).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address and port to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0:6443")]
    pub listen: SocketAddr,

    /// Storage: `sqlite:PATH` (default `sqlite:DATA/state.db`) or `etcd://h1:2379,h2:2379`.
    #[arg(long)]
    pub store: Option<String>,

    /// Static bearer tokens, CSV `token,user,uid,"group1,group2"` (kube-apiserver's format).
    #[arg(long)]
    pub token_file: Option<PathBuf>,

    /// The range ClusterIPs are allocated from.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cluster_ip_range: String,

    /// The address advertised to clients (added to the serving certificate).
    #[arg(long)]
    pub advertise_address: Option<IpAddr>,

    /// Run the scheduler and controllers in this process (leader-elected on a Lease).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub controllers: bool,

    /// The pod network; each node gets a /--node-cidr-mask-size of it as spec.podCIDR.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,

    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,

    /// Seconds without a Lease renewal before a node is marked NotReady/Unknown.
    #[arg(long, default_value_t = 40)]
    pub node_monitor_grace_period: u64,

    /// Seconds pods tolerate an unreachable/not-ready node before eviction (default tolerations).
    #[arg(long, default_value_t = 300)]
    pub default_eviction_timeout: u64,
}

pub fn run(data_dir: &Path, args: ServerArgs) -> anyhow::Result<ExitCode> {
    let mut opts = hull_control::apiserver::Options::new(data_dir.to_path_buf(), args.listen);
    opts.store_url = args.store;
    opts.token_file = args.token_file;
    opts.service_cluster_ip_range = args.service_cluster_ip_range;
    opts.advertise_address = args.advertise_address;
    opts.controllers = args.controllers;
    opts.manager.cluster_cidr = args.cluster_cidr;
    opts.manager.node_cidr_mask_size = args.node_cidr_mask_size;
    opts.manager.node_monitor_grace_period =
        std::time::Duration::from_secs(args.node_monitor_grace_period);
    opts.manager.default_eviction_timeout =
        std::time::Duration::from_secs(args.default_eviction_timeout);
    hull_control::apiserver::run_until_signal(opts).context("hull server")?;
    Ok(ExitCode::SUCCESS)
}
