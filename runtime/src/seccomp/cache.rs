//! A cache of compiled filters, keyed by the profile's content.
//!
//! libseccomp is slow at multi-architecture profiles: RuntimeDefault for x86_64, x86
//! and x32 takes ~35 ms to compile here (~5 ms for x86_64 alone), which would be most of
//! a container start. Every pod with `RuntimeDefault` uses the same profile, so the
//! program is compiled once per host and read back afterwards.
//!
//! The key is a SHA-256 of the profile's JSON, the libseccomp version and the target
//! architecture, so a changed profile or library never reuses a stale program. The
//! cache directory must be private to root (the runtime's state root): a program
//! planted there would become a container's syscall filter. Entries are written to a
//! temp file and renamed, so concurrent starts never read half a program.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxSeccomp;
use sha2::{Digest, Sha256};

use super::{Filter, SeccompError, compile};

const MAGIC: &[u8; 8] = b"hullbpf1";

fn key(spec: &LinuxSeccomp) -> Result<String, SeccompError> {
    let json = serde_json::to_vec(spec).map_err(|e| SeccompError::Invalid {
        field: "linux.seccomp".into(),
        reason: e.to_string(),
    })?;
    let v = libseccomp::ScmpVersion::current()?;
    let mut h = Sha256::new();
    h.update(MAGIC);
    h.update(format!(
        "{}.{}.{} {}",
        v.major,
        v.minor,
        v.micro,
        std::env::consts::ARCH
    ));
    h.update(&json);
    Ok(hex::encode(h.finalize()))
}

fn encode(f: &Filter) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + f.program.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&u64::from(f.flags).to_le_bytes());
    out.push(u8::from(f.listener));
    for i in &f.program {
        out.extend_from_slice(&i.code.to_le_bytes());
        out.push(i.jt);
        out.push(i.jf);
        out.extend_from_slice(&i.k.to_le_bytes());
    }
    out
}

fn decode(b: &[u8]) -> Option<Filter> {
    let rest = b.strip_prefix(MAGIC)?;
    let (flags, rest) = rest.split_first_chunk::<8>()?;
    let (listener, rest) = rest.split_first()?;
    if rest.is_empty() || rest.len() % 8 != 0 || *listener > 1 {
        return None;
    }
    let program = rest
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_le_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    Some(Filter {
        program,
        flags: u32::try_from(u64::from_le_bytes(*flags)).ok()?,
        listener: *listener == 1,
    })
}

/// [`compile`], through a cache in `dir` (created 0700 if missing). A cache that
/// cannot be read or written only costs the compile; it never fails the container.
pub fn compile_cached(spec: &LinuxSeccomp, dir: &Path) -> Result<Filter, SeccompError> {
    let key = key(spec)?;
    let path = dir.join(format!("{key}.bpf"));
    if let Ok(bytes) = std::fs::read(&path)
        && let Some(f) = decode(&bytes)
    {
        crate::explain!("seccomp: compiled filter from cache {}", path.display());
        return Ok(f);
    }
    let filter = compile(spec)?;
    if let Err(e) = store(dir, &path, &encode(&filter)) {
        tracing::debug!("seccomp cache {}: {e}", path.display());
    }
    Ok(filter)
}

/// The cache's directory under a runtime's state root. `@` is not allowed in a container
/// id, so no container's state directory can be (or shadow) it.
pub const CACHE_DIR: &str = "@seccomp";

/// [`compile_cached`] with the cache in the runtime's state root `root` (private to
/// root, like every container's state there): what `create`, `run` and `exec` use, so
/// each container start (one runtime process each) reads the program instead of
/// compiling it — ~8 ms of CPU per container for RuntimeDefault here.
pub fn compile_in_root(spec: &LinuxSeccomp, root: &Path) -> Result<Filter, SeccompError> {
    compile_cached(spec, &root.join(CACHE_DIR))
}

fn store(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // Refuse a cache directory others can write to: its content becomes a filter.
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(std::io::Error::other(
            "cache directory is group/world writable",
        ));
    }
    let tmp: PathBuf = dir.join(format!(".{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip_and_garbage_is_refused() {
        let f = compile(&crate::seccomp::runtime_default()).unwrap();
        let back = decode(&encode(&f)).unwrap();
        assert_eq!(back.len(), f.len());
        assert_eq!(back.flags, f.flags);
        assert!(
            back.program
                .iter()
                .zip(&f.program)
                .all(|(a, b)| (a.code, a.jt, a.jf, a.k) == (b.code, b.jt, b.jf, b.k))
        );
        let mut bytes = encode(&f);
        bytes.pop();
        assert!(decode(&bytes).is_none());
        assert!(decode(b"not a filter").is_none());
    }

    #[test]
    fn compile_in_root_keeps_the_program_under_the_root() {
        let root = std::env::temp_dir().join(format!("hull-seccomp-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let spec = crate::seccomp::runtime_default();
        let first = compile_in_root(&spec, &root).unwrap();
        let dir = root.join(CACHE_DIR);
        let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(entries.len(), 1, "one program, no temp file left");
        let meta = entries[0].metadata().unwrap();
        assert_eq!(meta.permissions().mode() & 0o077, 0, "private to root");
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // The second start reads it back: the same program.
        let bytes = std::fs::read(entries[0].path()).unwrap();
        assert_eq!(bytes, encode(&first));
        let second = compile_in_root(&spec, &root).unwrap();
        assert_eq!(encode(&second), encode(&first));
        // A corrupt entry is compiled again (and replaced), never loaded.
        std::fs::write(entries[0].path(), b"hullbpf1garbage").unwrap();
        let third = compile_in_root(&spec, &root).unwrap();
        assert_eq!(encode(&third), encode(&first));
        assert_eq!(std::fs::read(entries[0].path()).unwrap(), encode(&first));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
