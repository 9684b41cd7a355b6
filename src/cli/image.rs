//! `hull image pull|import|ls|rm|inspect|gc`: the image store from the command line.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use hull_runtime::image::ImageStore;
use hull_runtime::image::auth::Credentials;
use hull_runtime::image::pull::Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// How to reach registries (every subcommand that pulls takes these).
#[derive(Debug, Clone, Default, Args)]
pub struct RegistryFlags {
    /// Try URL before HOST for images of HOST (repeatable; e.g. docker.io=http://127.0.0.1:5000).
    #[arg(long = "registry-mirror", value_name = "HOST=URL")]
    pub registry_mirror: Vec<String>,
    /// Credentials for the image's registry (else a docker config.json is consulted).
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        env = "HULL_REGISTRY_CREDS",
        hide_env_values = true
    )]
    pub creds: Option<String>,
    /// Trust this CA (PEM) for HOST (repeatable).
    #[arg(long = "registry-ca", value_name = "HOST=PEM")]
    pub registry_ca: Vec<String>,
    /// Skip TLS verification for HOST (repeatable; a private registry with a self-signed cert).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registry: Vec<String>,
    /// Speak plain HTTP to HOST (repeatable; loopback registries already are).
    #[arg(long = "plain-http", value_name = "HOST")]
    pub plain_http: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image from its registry (or a mirror) and unpack it.
    Pull {
        reference: String,
        #[command(flatten)]
        registry: RegistryFlags,
        /// Print only the image ID.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Import an OCI image layout (dir or tar) or a `docker save` archive.
    Import {
        path: PathBuf,
        /// Name for images the archive leaves unnamed (default localhost/<file stem>).
        #[arg(long)]
        name: Option<String>,
    },
    /// List images.
    #[command(alias = "list")]
    Ls {
        /// Print only references.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove images and free what nothing else uses.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        references: Vec<String>,
        /// Remove the name even if a container uses it (its snapshots are kept).
        #[arg(short, long)]
        force: bool,
    },
    /// Show an image's record and config as JSON.
    Inspect { reference: String },
    /// Remove unreferenced blobs and snapshots.
    Gc,
}

impl RegistryFlags {
    pub fn apply(&self, store: &mut ImageStore, reference: Option<&str>) -> Result<()> {
        for m in &self.registry_mirror {
            store.registry.add_mirror_flag(m)?;
        }
        for spec in &self.registry_ca {
            let (host, pem) = spec
                .split_once('=')
                .with_context(|| format!("--registry-ca {spec:?}: want HOST=PEM"))?;
            store.registry.hosts.entry(host.into()).or_default().ca = Some(pem.into());
        }
        for host in &self.insecure_registry {
            store
                .registry
                .hosts
                .entry(host.clone())
                .or_default()
                .insecure_skip_verify = true;
        }
        for host in &self.plain_http {
            store
                .registry
                .hosts
                .entry(host.clone())
                .or_default()
                .plain_http = Some(true);
        }
        if let Some(c) = &self.creds {
            let (u, p) = c.split_once(':').context("--creds: want USER:PASSWORD")?;
            let reference = reference.context("--creds needs an image reference")?;
            let r = hull_runtime::image::Reference::parse(reference)?;
            let creds = Credentials {
                username: u.into(),
                password: p.into(),
            };
            store
                .registry
                .credentials
                .insert(r.registry.clone(), creds.clone());
            // The same credentials for the image's mirrors, as `ctr --user` does.
            for url in store
                .registry
                .flag_mirrors
                .get(&r.registry)
                .cloned()
                .unwrap_or_default()
            {
                let host = url.split_once("://").map_or(&url[..], |(_, h)| h);
                let host = host.split('/').next().unwrap_or(host).to_string();
                store.registry.credentials.insert(host, creds.clone());
            }
        }
        Ok(())
    }
}

/// A bar per layer on a terminal; one line per finished layer otherwise.
pub struct CliProgress {
    bars: Option<(MultiProgress, Mutex<HashMap<String, ProgressBar>>)>,
}

impl CliProgress {
    pub fn new(quiet: bool) -> Self {
        let tty = !quiet && std::io::stderr().is_terminal();
        CliProgress {
            bars: tty.then(|| (MultiProgress::new(), Mutex::new(HashMap::new()))),
        }
    }
}

fn short(d: &str) -> &str {
    d.strip_prefix("sha256:")
        .map_or(d, |h| &h[..12.min(h.len())])
}

impl Progress for CliProgress {
    fn layer_start(&self, digest: &str, size: u64) {
        if let Some((mp, bars)) = &self.bars {
            let pb = mp.add(ProgressBar::new(size));
            if let Ok(style) =
                ProgressStyle::with_template("{prefix} {bar:40} {bytes}/{total_bytes} {msg}")
            {
                pb.set_style(style);
            }
            pb.set_prefix(short(digest).to_string());
            if let Ok(mut b) = bars.lock() {
                b.insert(digest.to_string(), pb);
            }
        }
    }

    fn layer_bytes(&self, digest: &str, done: u64) {
        if let Some((_, bars)) = &self.bars
            && let Ok(b) = bars.lock()
            && let Some(pb) = b.get(digest)
        {
            pb.set_position(done);
        }
    }

    fn layer_done(&self, digest: &str, status: &str) {
        match &self.bars {
            Some((_, bars)) => {
                if let Ok(b) = bars.lock()
                    && let Some(pb) = b.get(digest)
                {
                    pb.finish_with_message(status.to_string());
                }
            }
            None => eprintln!("layer {}: {status}", short(digest)),
        }
    }
}

fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < U.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", U[i])
    }
}

pub fn run(data_dir: &Path, args: ImageArgs) -> Result<ExitCode> {
    let mut store = ImageStore::open(data_dir)?;
    match args.command {
        ImageCommand::Pull {
            reference,
            registry,
            quiet,
        } => {
            registry.apply(&mut store, Some(&reference))?;
            let progress = CliProgress::new(quiet);
            let rec = store.pull(&reference, &progress)?;
            if quiet {
                println!("{}", rec.config_digest);
            } else {
                println!(
                    "{}: pulled {} ({} layers, {})",
                    rec.name,
                    rec.manifest_digest,
                    rec.layers.len(),
                    human(rec.size)
                );
            }
        }
        ImageCommand::Import { path, name } => {
            let recs = hull_runtime::image::import::import(&store, &path, name.as_deref())?;
            if recs.is_empty() {
                bail!("{}: no images in it", path.display());
            }
            for r in recs {
                println!("{}: imported {}", r.name, r.manifest_digest);
            }
        }
        ImageCommand::Ls { quiet } => {
            let mut all = store.list()?;
            all.sort_by(|a, b| a.name.cmp(&b.name));
            if quiet {
                for r in all {
                    println!("{}", r.name);
                }
            } else {
                println!(
                    "{:<60} {:<13} {:>6} {:>10}",
                    "REFERENCE", "IMAGE ID", "LAYERS", "SIZE"
                );
                for r in all {
                    println!(
                        "{:<60} {:<13} {:>6} {:>10}",
                        r.name,
                        r.id(),
                        r.layers.len(),
                        human(r.size)
                    );
                }
            }
        }
        ImageCommand::Rm { references, force } => {
            let mut failed = false;
            for r in references {
                match store.remove(&r, force) {
                    Ok((rec, gc)) => println!(
                        "removed {} (freed {} blobs, {} snapshots, {})",
                        rec.name,
                        gc.blobs_removed,
                        gc.snapshots_removed,
                        human(gc.bytes_freed)
                    ),
                    Err(e) => {
                        eprintln!("hull: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        ImageCommand::Inspect { reference } => {
            let rec = store.get(&reference)?;
            let cfg: serde_json::Value =
                serde_json::from_slice(&store.content().read(&rec.config_digest)?)?;
            let out = serde_json::json!({"record": rec, "config": cfg});
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ImageCommand::Gc => {
            let gc = store.gc()?;
            println!(
                "removed {} blobs, {} snapshots, freed {}",
                gc.blobs_removed,
                gc.snapshots_removed,
                human(gc.bytes_freed)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
