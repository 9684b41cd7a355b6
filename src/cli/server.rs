//! `hull server`: the control plane's API server alone (no scheduler or controllers yet).

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
}

pub fn run(data_dir: &Path, args: ServerArgs) -> anyhow::Result<ExitCode> {
    let mut opts = hull_control::apiserver::Options::new(data_dir.to_path_buf(), args.listen);
    opts.store_url = args.store;
    opts.token_file = args.token_file;
    opts.service_cluster_ip_range = args.service_cluster_ip_range;
    opts.advertise_address = args.advertise_address;
    hull_control::apiserver::run_until_signal(opts).context("hull server")?;
    Ok(ExitCode::SUCCESS)
}
