//! Command-line glue for the `hull` binary: one module per subcommand.
//!
//! Every subcommand takes `--data-dir` (a clap `global` argument, so nested
//! subcommands accept it after their own name too), as DESIGN.md requires.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod agent;
pub mod cri;
pub mod image;
pub mod podroutes;
pub mod proxy;
pub mod run;
pub mod server;
pub mod token;
pub mod up;

#[derive(Debug, Parser)]
#[command(
    name = "hull",
    version,
    about = "A Kubernetes-compatible container platform"
)]
pub struct Cli {
    /// Where hull keeps its state (images, snapshots, store, kubeconfig).
    #[arg(
        long,
        global = true,
        default_value = "/var/lib/hull",
        env = "HULL_DATA_DIR"
    )]
    pub data_dir: PathBuf,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `hull=debug`.
    #[arg(long, global = true, env = "HULL_LOG")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print version information.
    Version,
    /// Pull, import, list, remove and inspect images.
    Image(image::ImageArgs),
    /// Run a command in a new container of an image, in the foreground.
    Run(run::RunArgs),
    /// The node agent (kubelet role): registers the node and runs its pods over CRI.
    Agent(agent::AgentArgs),
    /// Serve CRI v1 (RuntimeService, ImageService) on a unix socket.
    Cri(cri::CriArgs),
    /// Serve the Kubernetes API (control plane only) on SQLite or etcd.
    Server(server::ServerArgs),
    /// The service proxy (nftables) and cluster DNS against any API server.
    Proxy(proxy::ProxyArgs),
    /// Bootstrap tokens for joining nodes (`hull token create --print-join-command`).
    Token(token::TokenArgs),
    /// A single-node cluster in one process tree: API server, scheduler and controllers,
    /// CRI server, node agent, service proxy and DNS; writes DATA/admin.kubeconfig.
    Up(up::UpArgs),
}

pub fn init_logging(filter: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter.unwrap_or("warn"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let _data_dir = &cli.data_dir;
    match cli.command {
        Command::Version => {
            println!("hull {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Image(args) => image::run(&cli.data_dir, args),
        Command::Run(args) => run::run(&cli.data_dir, args),
        Command::Agent(args) => agent::run(&cli.data_dir, args),
        Command::Cri(args) => cri::run(&cli.data_dir, args),
        Command::Server(args) => server::run(&cli.data_dir, args),
        Command::Proxy(args) => proxy::run(&cli.data_dir, args),
        Command::Up(args) => up::run(&cli.data_dir, args),
        Command::Token(args) => token::run(&cli.data_dir, args),
    }
}
