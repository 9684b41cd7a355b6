//! Pod volumes on the host: emptyDir (disk, or tmpfs for medium Memory), hostPath with
//! its type checks, configMap, secret, downwardAPI and projected (service account tokens
//! through TokenRequest) written by the atomic writer, PVCs bound to hostPath/local
//! PVs — and each container's mounts of them (subPath, readOnly) kept inside their root.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1::{Mount, MountPropagation};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, PersistentVolume,
    PersistentVolumeClaim, Pod, Secret, ServiceAccount, Volume,
};
use kube::api::{Api, PostParams};
use serde_json::json;

use super::atomic::{self, Files};
use super::env::{self, Facts};

pub fn pod_dir(data_dir: &Path, uid: &str) -> PathBuf {
    data_dir.join("pods").join(uid)
}

/// A prepared volume: where it is on the host and whether it must be read-only.
#[derive(Clone, Debug)]
pub struct HostVolume {
    pub path: PathBuf,
    pub read_only: bool,
}

/// Service account tokens handed out for this pod, refreshed at 80% of their life.
#[derive(Default)]
pub struct Tokens(HashMap<String, (String, Instant, Duration)>);

fn mounted(p: &Path) -> bool {
    let s = p.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(&s)))
        .unwrap_or(false)
}

fn io_err(what: &str, p: &Path, e: impl std::fmt::Display) -> String {
    format!("{what} {}: {e}", p.display())
}

pub struct Setup<'a> {
    pub client: &'a kube::Client,
    pub data_dir: &'a Path,
    pub facts: Facts<'a>,
}

fn items(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    mode: u32,
    what: &str,
    optional: bool,
) -> Result<Files, String> {
    let mut files = Files::new();
    match items {
        None => {
            for (k, v) in data {
                files.insert(k.clone(), (v.clone(), mode));
            }
        }
        Some(its) => {
            for it in its {
                atomic::clean_rel(&it.path).map_err(|e| format!("{what}: items: {e}"))?;
                match data.get(&it.key) {
                    Some(v) => {
                        files.insert(
                            it.path.clone(),
                            (v.clone(), it.mode.map(|m| m as u32).unwrap_or(mode)),
                        );
                    }
                    None if optional => {}
                    None => return Err(format!("{what}: key {:?} not found", it.key)),
                }
            }
        }
    }
    Ok(files)
}

impl Setup<'_> {
    async fn configmap(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let cm = api
            .get_opt(name)
            .await
            .map_err(|e| format!("configmap {name:?}: {e}"))?;
        Ok(cm.map(|cm| {
            let mut m: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (k, v) in cm.binary_data.unwrap_or_default() {
                m.insert(k, v.0);
            }
            m
        }))
    }

    async fn secret(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let s = api
            .get_opt(name)
            .await
            .map_err(|e| format!("secret {name:?}: {e}"))?;
        Ok(s.map(|s| {
            let mut m: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in s.string_data.unwrap_or_default() {
                m.insert(k, v.into_bytes());
            }
            m
        }))
    }

    fn downward(
        &self,
        pod: &Pod,
        items: &[DownwardAPIVolumeFile],
        mode: u32,
    ) -> Result<Files, String> {
        let mut files = Files::new();
        for it in items {
            atomic::clean_rel(&it.path).map_err(|e| format!("downwardAPI: {e}"))?;
            let v = if let Some(fr) = &it.field_ref {
                env::field_ref(pod, &fr.field_path, &self.facts)?
            } else if let Some(rr) = &it.resource_field_ref {
                let cname = rr.container_name.as_deref().unwrap_or_default();
                let c = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers.iter().find(|c| c.name == cname))
                    .ok_or_else(|| {
                        format!("downwardAPI {}: container {cname:?} not found", it.path)
                    })?;
                env::resource_ref(
                    pod,
                    c,
                    &rr.resource,
                    rr.divisor.as_ref().map(|d| d.0.as_str()),
                    &self.facts,
                )?
            } else {
                String::new()
            };
            files.insert(
                it.path.clone(),
                (v.into_bytes(), it.mode.map(|m| m as u32).unwrap_or(mode)),
            );
        }
        Ok(files)
    }

    async fn token(
        &self,
        pod: &Pod,
        tokens: &mut Tokens,
        audience: Option<&str>,
        expiration: Option<i64>,
    ) -> Result<String, String> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let key = format!(
            "{sa}/{}/{}",
            audience.unwrap_or(""),
            expiration.unwrap_or(3607)
        );
        if let Some((t, at, life)) = tokens.0.get(&key)
            && at.elapsed() < life.mul_f64(0.8)
        {
            return Ok(t.clone());
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let mut spec = json!({"expirationSeconds": expiration.unwrap_or(3607),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                "name": pod.metadata.name, "uid": pod.metadata.uid}});
        if let Some(a) = audience {
            spec["audiences"] = json!([a]);
        }
        let req =
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
        let resp: serde_json::Value = api
            .create_subresource("token", &sa, &PostParams::default(), &req)
            .await
            .map_err(|e| format!("token for serviceaccount {ns}/{sa}: {e}"))?;
        let t = resp["status"]["token"]
            .as_str()
            .ok_or_else(|| {
                format!("token for serviceaccount {ns}/{sa}: no status.token in the answer")
            })?
            .to_string();
        let life = Duration::from_secs(expiration.unwrap_or(3607).max(600) as u64);
        tokens.0.insert(key, (t.clone(), Instant::now(), life));
        Ok(t)
    }

    /// Prepares (or refreshes) every volume of `pod`.
    pub async fn all(
        &self,
        pod: &Pod,
        tokens: &mut Tokens,
    ) -> Result<BTreeMap<String, HostVolume>, String> {
        let mut out = BTreeMap::new();
        for v in pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
        {
            let hv = self
                .one(pod, v, tokens)
                .await
                .map_err(|e| format!("volume {:?}: {e}", v.name))?;
            out.insert(v.name.clone(), hv);
        }
        Ok(out)
    }

    async fn one(&self, pod: &Pod, v: &Volume, tokens: &mut Tokens) -> Result<HostVolume, String> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let base = pod_dir(self.data_dir, uid).join("volumes");
        let dir = |kind: &str| base.join(kind).join(&v.name);
        let rw = |path: PathBuf| HostVolume {
            path,
            read_only: false,
        };
        if let Some(e) = &v.empty_dir {
            let d = dir("kubernetes.io~empty-dir");
            std::fs::create_dir_all(&d).map_err(|e| io_err("create", &d, e))?;
            let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777));
            if e.medium.as_deref() == Some("Memory") && !mounted(&d) {
                let mut opts = "mode=0777".to_string();
                if let Some(sz) = e
                    .size_limit
                    .as_ref()
                    .and_then(|q| super::quantity::units(&q.0))
                {
                    opts.push_str(&format!(",size={sz}"));
                }
                nix::mount::mount(
                    Some("tmpfs"),
                    &d,
                    Some("tmpfs"),
                    nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                    Some(opts.as_str()),
                )
                .map_err(|e| io_err("mount tmpfs on", &d, e))?;
            }
            return Ok(rw(d));
        }
        if let Some(h) = &v.host_path {
            let p = PathBuf::from(&h.path);
            if !p.is_absolute() {
                return Err(format!("hostPath.path {:?} must be absolute", h.path));
            }
            let md = std::fs::metadata(&p);
            let ty = h.type_.as_deref().unwrap_or("");
            let bad =
                |want: &str| format!("hostPath type check failed: {} is not a {want}", h.path);
            match ty {
                "" => {}
                "DirectoryOrCreate" => {
                    if md.is_err() {
                        std::fs::create_dir_all(&p).map_err(|e| io_err("create", &p, e))?;
                        let _ =
                            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
                    } else if !p.is_dir() {
                        return Err(bad("directory"));
                    }
                }
                "Directory" => md
                    .ok()
                    .filter(|m| m.is_dir())
                    .map(|_| ())
                    .ok_or_else(|| bad("directory"))?,
                "FileOrCreate" => {
                    if md.is_err() {
                        if let Some(parent) = p.parent() {
                            std::fs::create_dir_all(parent)
                                .map_err(|e| io_err("create", parent, e))?;
                        }
                        std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&p)
                            .map_err(|e| io_err("create", &p, e))?;
                    } else if !p.is_file() {
                        return Err(bad("file"));
                    }
                }
                "File" => md
                    .ok()
                    .filter(|m| m.is_file())
                    .map(|_| ())
                    .ok_or_else(|| bad("file"))?,
                "Socket" => md
                    .ok()
                    .filter(|m| m.file_type().is_socket())
                    .map(|_| ())
                    .ok_or_else(|| bad("socket"))?,
                "CharDevice" => md
                    .ok()
                    .filter(|m| m.file_type().is_char_device())
                    .map(|_| ())
                    .ok_or_else(|| bad("character device"))?,
                "BlockDevice" => md
                    .ok()
                    .filter(|m| m.file_type().is_block_device())
                    .map(|_| ())
                    .ok_or_else(|| bad("block device"))?,
                t => return Err(format!("hostPath.type {t:?} is not known")),
            }
            return Ok(rw(p));
        }
        let ro = |path: PathBuf| HostVolume {
            path,
            read_only: true,
        };
        if let Some(c) = &v.config_map {
            let mode = c.default_mode.unwrap_or(0o644) as u32;
            let optional = c.optional.unwrap_or(false);
            let d = dir("kubernetes.io~configmap");
            let data = match self.configmap(ns, &c.name).await? {
                Some(d) => d,
                None if optional => BTreeMap::new(),
                None => return Err(format!("configmap \"{}\" not found", c.name)),
            };
            let files = items(&data, c.items.as_ref(), mode, "configMap", optional)?;
            atomic::write(&d, &files).map_err(|e| io_err("write", &d, e))?;
            return Ok(ro(d));
        }
        if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let mode = s.default_mode.unwrap_or(0o644) as u32;
            let optional = s.optional.unwrap_or(false);
            let d = dir("kubernetes.io~secret");
            let data = match self.secret(ns, &name).await? {
                Some(d) => d,
                None if optional => BTreeMap::new(),
                None => return Err(format!("secret \"{name}\" not found")),
            };
            let files = items(&data, s.items.as_ref(), mode, "secret", optional)?;
            atomic::write(&d, &files).map_err(|e| io_err("write", &d, e))?;
            return Ok(ro(d));
        }
        if let Some(da) = &v.downward_api {
            let mode = da.default_mode.unwrap_or(0o644) as u32;
            let d = dir("kubernetes.io~downward-api");
            let files = self.downward(pod, da.items.as_deref().unwrap_or_default(), mode)?;
            atomic::write(&d, &files).map_err(|e| io_err("write", &d, e))?;
            return Ok(ro(d));
        }
        if let Some(pj) = &v.projected {
            let mode = pj.default_mode.unwrap_or(0o644) as u32;
            let d = dir("kubernetes.io~projected");
            let mut files = Files::new();
            for (i, src) in pj.sources.iter().flatten().enumerate() {
                if let Some(c) = &src.config_map {
                    let optional = c.optional.unwrap_or(false);
                    match self.configmap(ns, &c.name).await? {
                        Some(data) => files.extend(items(
                            &data,
                            c.items.as_ref(),
                            mode,
                            "projected configMap",
                            optional,
                        )?),
                        None if optional => {}
                        None => {
                            return Err(format!(
                                "sources[{i}]: configmap \"{}\" not found",
                                c.name
                            ));
                        }
                    }
                }
                if let Some(s) = &src.secret {
                    let optional = s.optional.unwrap_or(false);
                    match self.secret(ns, &s.name).await? {
                        Some(data) => files.extend(items(
                            &data,
                            s.items.as_ref(),
                            mode,
                            "projected secret",
                            optional,
                        )?),
                        None if optional => {}
                        None => {
                            return Err(format!("sources[{i}]: secret \"{}\" not found", s.name));
                        }
                    }
                }
                if let Some(da) = &src.downward_api {
                    files.extend(self.downward(
                        pod,
                        da.items.as_deref().unwrap_or_default(),
                        mode,
                    )?);
                }
                if let Some(t) = &src.service_account_token {
                    atomic::clean_rel(&t.path).map_err(|e| format!("sources[{i}]: {e}"))?;
                    let tok = self
                        .token(pod, tokens, t.audience.as_deref(), t.expiration_seconds)
                        .await?;
                    files.insert(t.path.clone(), (tok.into_bytes(), mode));
                }
            }
            atomic::write(&d, &files).map_err(|e| io_err("write", &d, e))?;
            return Ok(ro(d));
        }
        if let Some(c) = &v.persistent_volume_claim {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
            let pvc = pvcs
                .get_opt(&c.claim_name)
                .await
                .map_err(|e| format!("pvc {:?}: {e}", c.claim_name))?
                .ok_or_else(|| format!("persistentvolumeclaim \"{}\" not found", c.claim_name))?;
            let pv_name = pvc
                .spec
                .and_then(|s| s.volume_name)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    format!("persistentvolumeclaim \"{}\" is not bound", c.claim_name)
                })?;
            let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
            let pv = pvs
                .get(&pv_name)
                .await
                .map_err(|e| format!("persistentvolume {pv_name:?}: {e}"))?;
            let spec = pv.spec.unwrap_or_default();
            let path = spec.host_path.map(|h| h.path).or(spec.local.map(|l| l.path))
                .ok_or_else(|| format!("persistentvolume {pv_name:?}: only hostPath and local volumes can be mounted"))?;
            let p = PathBuf::from(path);
            if !p.is_absolute() {
                return Err(format!(
                    "persistentvolume {pv_name:?}: path must be absolute"
                ));
            }
            std::fs::create_dir_all(&p).map_err(|e| io_err("create", &p, e))?;
            return Ok(HostVolume {
                path: p,
                read_only: c.read_only.unwrap_or(false),
            });
        }
        Err("volume type not supported by hull's agent".into())
    }
}

/// The directory a subPath names, created if missing, refused if it leaves the volume
/// (a `..`, an absolute path, or a symlink resolving outside).
fn sub_path(root: &Path, sub: &str) -> Result<PathBuf, String> {
    if sub.starts_with('/')
        || Path::new(sub)
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!(
            "subPath {sub:?} must be a relative path without '..'"
        ));
    }
    let root_real = std::fs::canonicalize(root).map_err(|e| io_err("resolve", root, e))?;
    let p = root.join(sub);
    if std::fs::symlink_metadata(&p).is_err() {
        // Only create below a parent that itself stays inside the root.
        if let Some(parent) = p.parent() {
            let pr = std::fs::canonicalize(parent).ok();
            if let Some(pr) = pr
                && !pr.starts_with(&root_real)
            {
                return Err(format!("subPath {sub:?} resolves outside the volume"));
            }
        }
        std::fs::create_dir_all(&p).map_err(|e| io_err("create", &p, e))?;
    }
    let real = std::fs::canonicalize(&p).map_err(|e| io_err("resolve", &p, e))?;
    if !real.starts_with(&root_real) {
        return Err(format!("subPath {sub:?} resolves outside the volume"));
    }
    Ok(real)
}

pub fn mounts(
    pod: &Pod,
    c: &Container,
    vols: &BTreeMap<String, HostVolume>,
    env: &BTreeMap<String, String>,
) -> Result<Vec<Mount>, String> {
    let mut out = Vec::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let v = vols.get(&m.name).ok_or_else(|| {
            format!(
                "volumeMounts[{i}]: volume {:?} is not defined in the pod",
                m.name
            )
        })?;
        let sub = match (&m.sub_path, &m.sub_path_expr) {
            (Some(s), _) if !s.is_empty() => Some(s.clone()),
            (_, Some(e)) if !e.is_empty() => Some(env::expand(e, env)),
            _ => None,
        };
        let host = match sub {
            Some(s) => sub_path(&v.path, &s).map_err(|e| format!("volumeMounts[{i}]: {e}"))?,
            None => v.path.clone(),
        };
        let propagation = match m.mount_propagation.as_deref() {
            Some("HostToContainer") => MountPropagation::PropagationHostToContainer,
            Some("Bidirectional") => MountPropagation::PropagationBidirectional,
            _ => MountPropagation::PropagationPrivate,
        };
        out.push(Mount {
            container_path: m.mount_path.clone(),
            host_path: host.to_string_lossy().into_owned(),
            readonly: m.read_only.unwrap_or(false) || v.read_only,
            propagation: propagation as i32,
            ..Default::default()
        });
    }
    let _ = pod;
    Ok(out)
}

/// Unmounts and removes everything the agent made for pod `uid`.
pub fn teardown(data_dir: &Path, uid: &str) -> Result<(), String> {
    let d = pod_dir(data_dir, uid);
    let ed = d.join("volumes").join("kubernetes.io~empty-dir");
    if let Ok(rd) = std::fs::read_dir(&ed) {
        for e in rd.flatten() {
            let p = e.path();
            if mounted(&p) {
                nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH)
                    .map_err(|e| io_err("unmount", &p, e))?;
            }
        }
    }
    match std::fs::remove_dir_all(&d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", &d, e)),
    }
}
