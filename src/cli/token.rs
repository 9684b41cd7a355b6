//! `hull token create|list|delete`: bootstrap tokens for joining nodes, as `kubeadm token`
//! makes them (Secrets `kube-system/bootstrap-token-<id>`), and the join command that
//! uses one: `hull agent --server URL --token T --discovery-token-ca-cert-hash sha256:…`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use clap::{Args, Subcommand};
use hull_control::apiserver::bootstrap_token::{self, CreateOptions};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams};

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Kubeconfig of a user allowed to manage Secrets in kube-system
    /// (default: DATA/admin.kubeconfig).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,

    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a bootstrap token (printed on stdout).
    Create {
        /// How long the token is valid, e.g. `24h`, `90m`; `0` never expires.
        #[arg(long, default_value = "24h")]
        ttl: String,
        #[arg(long, default_value = "hull join token")]
        description: String,
        /// Print the whole `hull agent ...` command a new node runs to join.
        #[arg(long)]
        print_join_command: bool,
        /// The API server URL other nodes reach (default: the kubeconfig's, or the
        /// `kubernetes` Service's endpoint when that is a loopback address).
        #[arg(long)]
        server: Option<String>,
    },
    /// List bootstrap tokens (id, expiration, description).
    List,
    /// Delete a bootstrap token by id or whole token.
    Delete { token: String },
}

/// `24h`, `90m`, `30s`, `0` (never).
fn parse_ttl(s: &str) -> anyhow::Result<Option<Duration>> {
    if s == "0" {
        return Ok(None);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("--ttl {s:?}: want e.g. 24h, 90m, 30s or 0"))?;
    let secs = match unit {
        "h" => n * 3600,
        "m" => n * 60,
        "s" | "" => n,
        _ => anyhow::bail!("--ttl {s:?}: unit must be h, m or s"),
    };
    Ok(Some(Duration::from_secs(secs)))
}

/// The API server URL and the CA the kubeconfig names.
fn server_and_ca(kc: &kube::config::Kubeconfig, path: &Path) -> anyhow::Result<(String, String)> {
    let ctx_name = kc.current_context.clone().unwrap_or_default();
    let cluster_name = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .with_context(|| format!("{}: no current context", path.display()))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.as_ref())
        .with_context(|| format!("{}: no cluster {cluster_name:?}", path.display()))?;
    let server = cluster
        .server
        .clone()
        .with_context(|| format!("{}: cluster {cluster_name:?} has no server", path.display()))?;
    let ca = if let Some(data) = &cluster.certificate_authority_data {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .with_context(|| format!("{}: certificate-authority-data", path.display()))?;
        String::from_utf8(bytes).context("certificate-authority-data is not PEM")?
    } else if let Some(file) = &cluster.certificate_authority {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
    } else {
        anyhow::bail!(
            "{}: the cluster has no certificate authority",
            path.display()
        );
    };
    Ok((server, ca))
}

/// `kc_server`, unless it is a loopback address (the admin kubeconfig of `hull up`): then
/// the address the API server advertises in the `kubernetes` Endpoints, which is what
/// other nodes reach.
async fn advertised(client: &kube::Client, kc_server: &str) -> String {
    let loopback = kc_server.contains("://127.")
        || kc_server.contains("://[::1]")
        || kc_server.contains("://localhost");
    if !loopback {
        return kc_server.to_string();
    }
    let api: Api<k8s_openapi::api::core::v1::Endpoints> =
        Api::namespaced(client.clone(), "default");
    let ep = api.get("kubernetes").await.ok();
    let subset = ep
        .as_ref()
        .and_then(|e| e.subsets.as_ref())
        .and_then(|s| s.first());
    let ip = subset
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.first())
        .map(|a| a.ip.clone());
    let port = subset
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p.first())
        .map(|p| p.port);
    match (ip, port) {
        (Some(ip), Some(port)) if ip.contains(':') => format!("https://[{ip}]:{port}"),
        (Some(ip), Some(port)) => format!("https://{ip}:{port}"),
        _ => kc_server.to_string(),
    }
}

pub fn run(data_dir: &Path, args: TokenArgs) -> anyhow::Result<ExitCode> {
    let path = args
        .kubeconfig
        .clone()
        .unwrap_or_else(|| data_dir.join("admin.kubeconfig"));
    let kc = kube::config::Kubeconfig::read_from(&path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let cfg = kube::Config::from_custom_kubeconfig(
            kc.clone(),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .with_context(|| format!("kubeconfig {}", path.display()))?;
        let client = kube::Client::try_from(cfg).context("building the API client")?;
        match args.command {
            TokenCommand::Create {
                ttl,
                description,
                print_join_command,
                server,
            } => {
                let opts = CreateOptions {
                    ttl: parse_ttl(&ttl)?,
                    description,
                    extra_groups: Vec::new(),
                };
                let token = bootstrap_token::create_via_api(&client, &opts)
                    .await
                    .map_err(anyhow::Error::msg)?;
                if print_join_command {
                    let (kc_server, ca) = server_and_ca(&kc, &path)?;
                    let server = match server {
                        Some(s) => s,
                        None => advertised(&client, &kc_server).await,
                    };
                    let hash = bootstrap_token::ca_cert_hash(&ca).map_err(anyhow::Error::msg)?;
                    println!(
                        "hull agent --server {server} --token {token} --discovery-token-ca-cert-hash {hash}"
                    );
                } else {
                    println!("{token}");
                }
            }
            TokenCommand::List => {
                let api: Api<Secret> = Api::namespaced(client, "kube-system");
                let list = api
                    .list(&ListParams::default())
                    .await
                    .context("listing bootstrap tokens")?;
                println!("{:<8} {:<22} DESCRIPTION", "ID", "EXPIRES");
                for s in list
                    .items
                    .iter()
                    .filter(|s| s.type_.as_deref() == Some("bootstrap.kubernetes.io/token"))
                {
                    let get = |k: &str| {
                        s.data
                            .as_ref()
                            .and_then(|d| d.get(k))
                            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                            .unwrap_or_default()
                    };
                    let exp = get("expiration");
                    let exp = if exp.is_empty() { "<forever>".into() } else { exp };
                    println!("{:<8} {:<22} {}", get("token-id"), exp, get("description"));
                }
            }
            TokenCommand::Delete { token } => {
                let id = token.split('.').next().unwrap_or_default();
                anyhow::ensure!(
                    id.len() == 6 && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
                    "token {token:?}: want the 6-character id or the whole <id>.<secret>"
                );
                let api: Api<Secret> = Api::namespaced(client, "kube-system");
                api.delete(&format!("bootstrap-token-{id}"), &DeleteParams::default())
                    .await
                    .with_context(|| format!("deleting bootstrap token {id}"))?;
                println!("bootstrap token {id} deleted");
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;
    use std::time::Duration;

    #[test]
    fn ttls() {
        assert_eq!(
            parse_ttl("24h").ok(),
            Some(Some(Duration::from_secs(86400)))
        );
        assert_eq!(parse_ttl("90m").ok(), Some(Some(Duration::from_secs(5400))));
        assert_eq!(parse_ttl("0").ok(), Some(None));
        assert!(parse_ttl("1d").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
