//! An OCI bundle for a container of an image: its rootfs is an overlay of the image's
//! snapshots with the container's own upper/work dirs, and its `config.json` is the
//! runtime defaults with the image config applied (what `hull run` and the CRI use).
//!
//! ```text
//! /run/hull/<hash of DATA>/bundles/<id>/{config.json, rootfs/}   the mount (volatile)
//! DATA/containers/<id>/{upper,work}                               the container's writes
//! ```
//! Bundles whose container is gone (a killed `hull run`) are found by `stale_bundles`
//! and removed with `Bundle::teardown`.

use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde_json::{Value, json};

use super::runconfig::{self, ProcessDefaults};
use super::store::{ImageStore, valid_container_id};
use super::{Error, ImageRecord, IoContext, Result, overlay};

/// Docker's default capability set (what a `docker run` process gets).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Where volatile state of the store at `data_dir` lives: `/run/hull/<hash>`, so
/// several data dirs (test instances) never share mounts or runtime state.
pub fn runtime_dir(data_dir: &Path) -> PathBuf {
    let abs = fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let h = super::digest::sha256_of(abs.as_os_str().as_encoded_bytes());
    PathBuf::from("/run/hull").join(&h[7..19])
}

#[derive(Debug, Clone, Default)]
pub struct ContainerOptions {
    /// Replaces the image's Cmd (Entrypoint is kept).
    pub cmd: Vec<String>,
    /// `KEY=VALUE`, overriding the image's Env.
    pub env: Vec<String>,
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    pub hostname: Option<String>,
    /// Run without the default seccomp profile (`--security-opt seccomp=unconfined`).
    pub unconfined: bool,
}

/// A prepared container bundle; `teardown` undoes everything `prepare` did.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub id: String,
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    /// `DATA/containers/<id>`: upper and work dirs.
    pub state: PathBuf,
}

impl Bundle {
    fn paths(store: &ImageStore, id: &str) -> Bundle {
        let dir = runtime_dir(store.root()).join("bundles").join(id);
        Bundle {
            id: id.to_string(),
            rootfs: dir.join("rootfs"),
            dir,
            state: store.root().join("containers").join(id),
        }
    }

    /// Leases the image, mounts the rootfs and writes `config.json`. On error nothing
    /// is left behind.
    pub fn prepare(
        store: &ImageStore,
        id: &str,
        rec: &ImageRecord,
        opts: &ContainerOptions,
    ) -> Result<Bundle> {
        valid_container_id(id)?;
        let b = Bundle::paths(store, id);
        if b.dir.exists() || b.state.exists() {
            return Err(Error::Other(format!(
                "container {id} already exists ({})",
                b.state.display()
            )));
        }
        let r = b.prepare_inner(store, rec, opts);
        if r.is_err() {
            let _ = b.teardown(store, true);
        }
        r.map(|_| b)
    }

    fn prepare_inner(
        &self,
        store: &ImageStore,
        rec: &ImageRecord,
        opts: &ContainerOptions,
    ) -> Result<()> {
        let lowers = store.lowers(rec)?;
        let upper = self.state.join("upper");
        let work = self.state.join("work");
        for d in [&upper, &work, &self.rootfs] {
            fs::create_dir_all(d).at(d)?;
        }
        // After the state dir exists: GC drops leases of containers without one.
        store.lease(&self.id, rec)?;
        overlay::mount(&lowers, &upper, &work, &self.rootfs)?;
        let cfg = store.config(rec)?;
        let defaults = runconfig::process_defaults(&cfg, &opts.cmd, &opts.env)?;
        let (uid, gid, extra) = runconfig::resolve_user(&self.rootfs, defaults.user.as_deref())?;
        let spec = spec_json(&defaults, (uid, gid, &extra), opts, &self.id)?;
        let p = self.dir.join("config.json");
        let data = serde_json::to_vec_pretty(&spec).map_err(|source| Error::Json {
            what: p.display().to_string(),
            source,
        })?;
        fs::write(&p, data).at(&p)
    }

    /// Unmounts and removes the bundle; with `remove_state` also the container's
    /// upper/work dirs and its lease on the image.
    pub fn teardown(&self, store: &ImageStore, remove_state: bool) -> Result<()> {
        overlay::unmount(&self.rootfs)?;
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir).at(&self.dir)?;
        }
        if remove_state {
            if self.state.exists() {
                fs::remove_dir_all(&self.state).at(&self.state)?;
            }
            store.release(&self.id)?;
        }
        Ok(())
    }

    /// Bundles left by a `hull run` that was killed: the caller checks which of their
    /// containers are gone before tearing them down.
    pub fn existing(store: &ImageStore) -> Result<Vec<Bundle>> {
        let dir = runtime_dir(store.root()).join("bundles");
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(&dir) else {
            return Ok(out);
        };
        for e in rd {
            let e = e.at(&dir)?;
            let id = e.file_name().to_string_lossy().into_owned();
            if valid_container_id(&id).is_ok() {
                out.push(Bundle::paths(store, &id));
            }
        }
        Ok(out)
    }
}

/// The runtime spec: oci-spec's defaults (namespaces pid/net/ipc/uts/mount, masked and
/// read-only paths, /proc /dev /sys mounts) with the image applied, Docker's caps,
/// no_new_privs, a writable root.
pub fn spec_json(
    d: &ProcessDefaults,
    (uid, gid, extra): (u32, u32, &[u32]),
    opts: &ContainerOptions,
    id: &str,
) -> Result<Value> {
    let mut v = serde_json::to_value(Spec::default()).map_err(|source| Error::Json {
        what: "default runtime spec".into(),
        source,
    })?;
    let caps: Vec<&str> = DEFAULT_CAPS.to_vec();
    v["process"] = json!({
        "terminal": false,
        "user": {"uid": uid, "gid": gid, "additionalGids": extra},
        "args": d.args,
        "env": d.env,
        "cwd": d.cwd,
        "capabilities": {
            "bounding": caps, "effective": caps, "permitted": caps,
        },
        "noNewPrivileges": true,
    });
    v["root"] = json!({"path": "rootfs", "readonly": false});
    v["hostname"] = json!(
        opts.hostname
            .clone()
            .unwrap_or_else(|| id.chars().take(63).collect())
    );
    let linux = v
        .get_mut("linux")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| Error::Other("default spec has no linux section".into()))?;
    // Only lo in the network namespace until the CNI is wired in.
    linux.insert(
        "namespaces".into(),
        json!([{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]),
    );
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(m) = opts.memory {
        resources["memory"] = json!({"limit": m});
    }
    linux.insert("resources".into(), resources);
    if !opts.unconfined {
        let profile =
            serde_json::to_value(crate::seccomp::runtime_default()).map_err(|source| {
                Error::Json {
                    what: "default seccomp profile".into(),
                    source,
                }
            })?;
        linux.insert("seccomp".into(), profile);
    }
    Ok(v)
}
