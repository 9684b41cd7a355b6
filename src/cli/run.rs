//! `hull run [--rm] [-e K=V] [--memory N] IMAGE [CMD...]`: pull if needed, build a
//! bundle (overlay rootfs + config.json from the image), run it in the foreground with
//! hull's runtime and exit with the container's status, like `ctr run` / `podman run`.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use hull_runtime::container::{self, CreateOptions};
use hull_runtime::image::ImageStore;
use hull_runtime::image::bundle::{self, Bundle, ContainerOptions};

use super::image::{CliProgress, RegistryFlags};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Remove the container (its writable layer and lease) when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Set an environment variable (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Memory limit (bytes, or with k/m/g suffix).
    #[arg(short = 'm', long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Container name (default: generated).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub hostname: Option<String>,
    /// `seccomp=unconfined` turns off the default seccomp profile.
    #[arg(long = "security-opt", value_name = "OPT")]
    pub security_opt: Vec<String>,
    #[command(flatten)]
    pub registry: RegistryFlags,
    pub image: String,
    /// Command and arguments (replace the image's Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub fn parse_size(s: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: i64 = num.parse().with_context(|| {
        format!("--memory {s:?}: want a number of bytes with an optional k/m/g suffix")
    })?;
    if n <= 0 {
        bail!("--memory {s:?}: must be positive");
    }
    n.checked_mul(mult)
        .with_context(|| format!("--memory {s:?}: too large"))
}

/// Held for a container's lifetime: a bundle whose lock can be taken belongs to a
/// `hull run` that is gone.
fn lock_path(data_dir: &Path, id: &str) -> PathBuf {
    bundle::runtime_dir(data_dir)
        .join("locks")
        .join(format!("{id}.lock"))
}

fn try_lock(p: &Path) -> Result<Option<File>> {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)
        .with_context(|| format!("open {}", p.display()))?;
    // SAFETY: valid fd.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    Ok((r == 0).then_some(f))
}

fn state_root(data_dir: &Path) -> PathBuf {
    bundle::runtime_dir(data_dir).join("runtime")
}

fn autoremove_marker(b: &Bundle) -> PathBuf {
    b.state.join("autoremove")
}

/// Tears down bundles of `hull run`s that were killed (their lock is free).
pub fn clean_stale(store: &ImageStore) -> Result<()> {
    let data_dir = store.root();
    for b in Bundle::existing(store)? {
        let lp = lock_path(data_dir, &b.id);
        let Some(_held) = try_lock(&lp)? else {
            continue;
        };
        let _ = container::delete(&state_root(data_dir), &b.id, true);
        let remove_state = autoremove_marker(&b).exists();
        b.teardown(store, remove_state)?;
        let _ = fs::remove_file(&lp);
    }
    Ok(())
}

fn generated_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let h = hull_runtime::image::digest::sha256_of(
        format!("{}-{nanos}", std::process::id()).as_bytes(),
    );
    format!("run-{}", &h[7..19])
}

pub fn run(data_dir: &Path, args: RunArgs) -> Result<ExitCode> {
    // The container's init is cloned from this process: run from a copy of the binary
    // nothing in the container can write (CVE-2019-5736), as hull-runtime does.
    hull_runtime::sealed_exe::ensure().context("re-exec hull from a sealed copy")?;
    let mut store = ImageStore::open(data_dir)?;
    args.registry.apply(&mut store, Some(&args.image))?;
    clean_stale(&store)?;
    let memory = args.memory.as_deref().map(parse_size).transpose()?;
    let unconfined = args
        .security_opt
        .iter()
        .any(|o| o == "seccomp=unconfined" || o == "seccomp:unconfined");
    if let Some(o) = args.security_opt.iter().find(|o| !o.starts_with("seccomp")) {
        bail!("--security-opt {o:?}: only seccomp=unconfined is supported");
    }
    let rec = store.ensure(&args.image, &CliProgress::new(false))?;
    let id = args.name.clone().unwrap_or_else(generated_id);
    let lp = lock_path(data_dir, &id);
    let _lock = try_lock(&lp)?.with_context(|| format!("container {id} is already running"))?;
    let opts = ContainerOptions {
        cmd: args.command.clone(),
        env: args.env.clone(),
        memory,
        hostname: args.hostname.clone(),
        unconfined,
    };
    let b = Bundle::prepare(&store, &id, &rec, &opts)?;
    if args.rm {
        fs::write(autoremove_marker(&b), b"")
            .with_context(|| format!("mark {} for removal", b.state.display()))?;
    }
    let root = state_root(data_dir);
    let result = container::run(&root, &id, &b.dir, &CreateOptions::default());
    let cleanup = b.teardown(&store, args.rm);
    let _ = fs::remove_file(&lp);
    let code = result.with_context(|| format!("container {id} of {}", rec.name))?;
    cleanup.with_context(|| format!("cleaning up container {id}"))?;
    if !args.rm {
        eprintln!(
            "hull: container {id} kept: its writable layer is {} and it holds image {}; \
             remove the dir and run `hull image gc` to free them",
            b.state.display(),
            rec.name
        );
    }
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_like_docker() {
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("10kb").unwrap(), 10 << 10);
        assert!(parse_size("-1").is_err());
        assert!(parse_size("lots").is_err());
    }
}
