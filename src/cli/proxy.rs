//! `hull proxy`: the service proxy (nftables) and cluster DNS, standalone against
//! any Kubernetes API server.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use hull_proxy::{daemon, model::NodeInfo, runner::ProxyConfig};

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Kubeconfig to reach the API server (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Print every nftables transaction before applying it.
    #[arg(long)]
    pub explain: bool,

    /// Remove every rule the proxy wrote and exit.
    #[arg(long)]
    pub cleanup: bool,

    /// This node's name (endpoints on it count as local for the `Local` policies).
    #[arg(long, env = "HULL_NODE_NAME")]
    pub node_name: Option<String>,

    /// This node's addresses (LoadBalancer ingress); repeatable.
    #[arg(long = "node-ip")]
    pub node_ips: Vec<IpAddr>,

    /// Pod CIDRs: traffic from outside them to a ClusterIP is masqueraded; repeatable.
    #[arg(long = "cluster-cidr", default_value = "10.244.0.0/16")]
    pub cluster_cidrs: Vec<String>,

    /// Do not answer NodePorts on 127.0.0.1.
    #[arg(long)]
    pub no_localhost_nodeports: bool,

    /// Coalesce changes: at most one sync per this many milliseconds.
    #[arg(long, default_value_t = 500)]
    pub min_sync_ms: u64,

    /// `/healthz` and `/metrics` (empty string: off).
    #[arg(long, default_value = "127.0.0.1:10256")]
    pub healthz_bind_address: String,

    /// Serve cluster DNS on this address (UDP+TCP); repeatable; none: no DNS.
    #[arg(long = "dns-listen")]
    pub dns_listen: Vec<SocketAddr>,

    /// The cluster's DNS zone.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,

    /// Upstream resolvers for names outside the cluster zone.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,

    /// DNS only: do not write nftables rules.
    #[arg(long)]
    pub no_rules: bool,

    /// Publish `kube-system/kube-dns` at this ClusterIP (e.g. 10.96.0.10), with
    /// `--dns-endpoint` as this node's endpoint.
    #[arg(long)]
    pub cluster_dns: Option<IpAddr>,

    /// This node's DNS listener published for `--cluster-dns` (a node address,
    /// e.g. 192.168.1.10:53); also listened on.
    #[arg(long)]
    pub dns_endpoint: Option<SocketAddr>,

    /// A full resync (whole table rewritten) at least every this many seconds;
    /// between them only changes are written.
    #[arg(long, default_value_t = 3600)]
    pub full_sync_period_s: u64,

    /// Leave the rules in place on exit (traffic keeps flowing while the proxy
    /// restarts, as kube-proxy does); default: remove them.
    #[arg(long)]
    pub keep_rules: bool,

    /// Do not set status.loadBalancer of LoadBalancer Services.
    #[arg(long)]
    pub no_lb_status: bool,
}

fn parse_cidr(s: &str) -> anyhow::Result<(IpAddr, u8)> {
    let (ip, len) = s
        .split_once('/')
        .with_context(|| format!("--cluster-cidr {s:?}: want ADDR/LEN"))?;
    let ip: IpAddr = ip
        .parse()
        .with_context(|| format!("--cluster-cidr {s:?}: bad address"))?;
    let len: u8 = len
        .parse()
        .with_context(|| format!("--cluster-cidr {s:?}: bad prefix length"))?;
    anyhow::ensure!(
        len <= if ip.is_ipv4() { 32 } else { 128 },
        "--cluster-cidr {s:?}: prefix length too long"
    );
    Ok((ip, len))
}

pub fn run(_data_dir: &Path, args: ProxyArgs) -> anyhow::Result<ExitCode> {
    if args.cleanup {
        daemon::cleanup(args.explain).context("hull proxy --cleanup")?;
        return Ok(ExitCode::SUCCESS);
    }
    let node_name = match args.node_name {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the hostname")?
            .trim()
            .to_string(),
    };
    let healthz =
        if args.healthz_bind_address.is_empty() {
            None
        } else {
            Some(args.healthz_bind_address.parse().with_context(|| {
                format!("--healthz-bind-address {:?}", args.healthz_bind_address)
            })?)
        };
    let pod_cidrs = args
        .cluster_cidrs
        .iter()
        .map(|c| parse_cidr(c))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cluster_dns = match (args.cluster_dns, args.dns_endpoint) {
        (Some(service_ip), Some(endpoint)) => Some(daemon::ClusterDns {
            service_ip,
            endpoint,
        }),
        (None, None) => None,
        _ => anyhow::bail!("--cluster-dns and --dns-endpoint go together"),
    };
    let opts = daemon::Options {
        proxy: ProxyConfig {
            node: NodeInfo {
                name: node_name,
                addresses: args.node_ips,
                pod_cidrs,
                localhost_nodeports: !args.no_localhost_nodeports,
                zone: None,
            },
            min_sync_interval: Duration::from_millis(args.min_sync_ms),
            full_sync_interval: Duration::from_secs(args.full_sync_period_s),
            explain: args.explain,
            healthz,
            program_rules: !args.no_rules,
            update_lb_status: !args.no_lb_status,
            cluster_domain: args.cluster_domain,
        },
        dns_listen: args.dns_listen,
        resolv_conf: args.resolv_conf,
        cluster_dns,
        cleanup_on_exit: !args.keep_rules,
    };
    daemon::run_blocking(args.kubeconfig, opts).context("hull proxy")?;
    Ok(ExitCode::SUCCESS)
}
