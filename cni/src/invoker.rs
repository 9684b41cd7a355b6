//! The runtime side of CNI (what libcni is to containerd): load a network
//! configuration, run its plugin chain with the right environment, pass `prevResult`
//! along, and cache each attachment's result so DEL and CHECK can be driven later.
//!
//! Plugins are exec'd, so a plugin crash never takes the caller down and any
//! spec-conforming plugin works; hull-bridge alone may run in the caller's process
//! (`Invoker::builtin_bridge`, what hull's CRI server does): it is this crate's code,
//! and the exec was a tenth of a pod's network set-up.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{CniError, Result, code};
use crate::exec::{PluginEnv, exec_plugin, find_plugin};
use crate::types::{
    Attachment, CniResult, NetworkConfigList, SUPPORTED_VERSIONS, check_version, is_legacy,
};

pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";
/// The plugin type `Invoker::builtin_bridge` runs in process.
const BUILTIN: &str = "hull-bridge";

/// Loads a `.conflist`, or a single-plugin `.conf`/`.json` wrapped into a list.
pub fn load_file(path: &Path) -> Result<NetworkConfigList> {
    let bytes = fs::read(path).map_err(|e| CniError::io(format!("read {}", path.display()), e))?;
    parse_config(&bytes).map_err(|mut e| {
        e.msg = format!("{}: {}", path.display(), e.msg);
        e
    })
}

/// Parses a conflist, or a single plugin config (one with `type` and no `plugins`).
pub fn parse_config(bytes: &[u8]) -> Result<NetworkConfigList> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| CniError::new(code::DECODE, format!("not JSON: {e}")))?;
    let list = if v.get("plugins").is_some() {
        serde_json::from_value::<NetworkConfigList>(v)
            .map_err(|e| CniError::new(code::DECODE, format!("conflist: {e}")))?
    } else {
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ver = v
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        NetworkConfigList {
            cni_version: ver,
            cni_versions: Vec::new(),
            name,
            disable_check: false,
            disable_gc: false,
            plugins: vec![v],
        }
    };
    if list.name.is_empty() {
        return Err(CniError::config("name: missing"));
    }
    let mut list = list;
    if !list.cni_versions.is_empty() {
        // 1.1.0 `cniVersions`: run the newest version both sides speak.
        let best = SUPPORTED_VERSIONS
            .iter()
            .rev()
            .find(|v| list.cni_versions.iter().any(|c| c == *v));
        match best {
            Some(v) => list.cni_version = v.to_string(),
            None => {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!("cniVersions: none of {:?} is supported", list.cni_versions),
                ));
            }
        }
    }
    check_version(&list.cni_version)?;
    if list.plugins.is_empty() {
        return Err(CniError::config("plugins: empty"));
    }
    for (i, p) in list.plugins.iter().enumerate() {
        if p.get("type")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(CniError::config(format!("plugins[{i}].type: missing")));
        }
    }
    Ok(list)
}

/// The configurations in `dir`, in lexical file-name order as libcni lists them.
pub fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = fs::read_dir(dir).map_err(|e| CniError::io(format!("read {}", dir.display()), e))?;
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|x| x.to_str()),
                    Some("conflist" | "conf" | "json")
                )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The first valid network configuration in `dir` (what a kubelet-era runtime uses).
pub fn find_default(dir: &Path) -> Result<NetworkConfigList> {
    let mut last_err = None;
    for f in list_dir(dir)? {
        match load_file(&f) {
            Ok(l) => return Ok(l),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        CniError::config(format!("no network configuration in {}", dir.display()))
    }))
}

/// Per-attachment inputs (libcni's RuntimeConf).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RuntimeConf {
    #[serde(rename = "containerId")]
    pub container_id: String,
    #[serde(rename = "netns", default)]
    pub netns: String,
    #[serde(rename = "ifName")]
    pub ifname: String,
    /// `CNI_ARGS` pairs, e.g. `K8S_POD_NAME`.
    #[serde(rename = "cniArgs", default)]
    pub args: Vec<(String, String)>,
    /// Capability values (`portMappings`, `mac`, ...) offered to plugins that declare them.
    #[serde(rename = "capabilityArgs", default)]
    pub capability_args: BTreeMap<String, Value>,
}

/// What is cached per attachment (the shape of libcni's `cniCacheV1`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    kind: String,
    #[serde(rename = "networkName")]
    network: String,
    #[serde(flatten)]
    rt: RuntimeConf,
    config: Value,
    #[serde(default)]
    result: Option<Value>,
}

/// Runs plugin chains.
#[derive(Debug, Clone)]
pub struct Invoker {
    /// Where plugins are looked up (`CNI_PATH`).
    pub plugin_dirs: Vec<PathBuf>,
    /// Results are cached under `<cache_dir>/results`.
    pub cache_dir: PathBuf,
    /// Run `type: hull-bridge` in this process instead of exec'ing the binary.
    pub builtin_bridge: bool,
}

impl Default for Invoker {
    fn default() -> Self {
        Self {
            plugin_dirs: vec![PathBuf::from(DEFAULT_BIN_DIR)],
            cache_dir: PathBuf::from(DEFAULT_CACHE_DIR),
            builtin_bridge: false,
        }
    }
}

impl Invoker {
    pub fn new(plugin_dirs: Vec<PathBuf>, cache_dir: PathBuf) -> Self {
        Self {
            plugin_dirs,
            cache_dir,
            builtin_bridge: false,
        }
    }

    fn cni_path(&self) -> String {
        self.plugin_dirs
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    fn cache_path(&self, network: &str, rt: &RuntimeConf) -> PathBuf {
        self.cache_dir
            .join("results")
            .join(format!("{network}-{}-{}", rt.container_id, rt.ifname))
    }

    /// The result cached by the last successful ADD of this attachment.
    pub fn cached_result(&self, network: &str, rt: &RuntimeConf) -> Option<CniResult> {
        let bytes = fs::read(self.cache_path(network, rt)).ok()?;
        let e: CacheEntry = serde_json::from_slice(&bytes).ok()?;
        serde_json::from_value(e.result?).ok()
    }

    /// Attachments with a cached result for `network` (what GC should keep, for a caller
    /// that has no better source of truth).
    pub fn cached_attachments(&self, network: &str) -> Vec<Attachment> {
        let Ok(rd) = fs::read_dir(self.cache_dir.join("results")) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<CacheEntry>(&b).ok())
            .filter(|e| e.network == network)
            .map(|e| Attachment {
                container_id: e.rt.container_id,
                ifname: e.rt.ifname,
            })
            .collect()
    }

    fn env(&self, command: &str, rt: &RuntimeConf) -> PluginEnv {
        PluginEnv {
            command: command.to_string(),
            container_id: rt.container_id.clone(),
            netns: rt.netns.clone(),
            ifname: rt.ifname.clone(),
            args: rt
                .args
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";"),
            path: self.cni_path(),
        }
    }

    /// libcni's buildOneConfig: the plugin entry plus name, version, prevResult and the
    /// runtimeConfig for the capabilities it declares.
    fn plugin_config(
        list: &NetworkConfigList,
        plugin: &Value,
        rt: &RuntimeConf,
        prev: Option<&Value>,
    ) -> Result<(String, Vec<u8>)> {
        let mut obj: Map<String, Value> = plugin.as_object().cloned().unwrap_or_default();
        let kind = obj
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        obj.insert("name".into(), Value::String(list.name.clone()));
        obj.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
        if let Some(p) = prev {
            obj.insert("prevResult".into(), p.clone());
        }
        let mut rtc = Map::new();
        if let Some(caps) = obj.get("capabilities").and_then(Value::as_object) {
            for (cap, on) in caps {
                if on.as_bool() == Some(true)
                    && let Some(v) = rt.capability_args.get(cap)
                {
                    rtc.insert(cap.clone(), v.clone());
                }
            }
        }
        if !rtc.is_empty() {
            obj.insert("runtimeConfig".into(), Value::Object(rtc));
        }
        let bytes = serde_json::to_vec(&Value::Object(obj))
            .map_err(|e| CniError::new(code::DECODE, e.to_string()))?;
        Ok((kind, bytes))
    }

    fn run(
        &self,
        command: &str,
        list: &NetworkConfigList,
        plugin: &Value,
        rt: &RuntimeConf,
        prev: Option<&Value>,
    ) -> Result<Vec<u8>> {
        let (kind, conf) = Self::plugin_config(list, plugin, rt, prev)?;
        if self.builtin_bridge && kind == BUILTIN {
            return crate::plugin::run_in_process(&self.env(command, rt), &conf)
                .map(|out| out.map(String::into_bytes).unwrap_or_default())
                .map_err(|mut e| {
                    e.msg = format!("{BUILTIN} (in process): {}", e.msg);
                    e
                });
        }
        let path = find_plugin(&kind, &self.cni_path())?;
        exec_plugin(&path, &self.env(command, rt), &conf)
    }

    /// ADD: runs the chain in order, each plugin getting the previous result, and
    /// caches the final result. On failure the chain is unwound with DEL.
    pub fn add(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<CniResult> {
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let out = match self.run("ADD", list, plugin, rt, prev.as_ref()) {
                Ok(o) => o,
                Err(e) => {
                    let _ = self.del(list, rt);
                    return Err(e);
                }
            };
            if !out.iter().all(u8::is_ascii_whitespace) {
                prev = Some(serde_json::from_slice(&out).map_err(|e| {
                    CniError::new(
                        code::DECODE,
                        format!("result of plugin {:?}: {e}", plugin.get("type")),
                    )
                })?);
            }
        }
        let value = prev.unwrap_or_else(|| serde_json::json!({"cniVersion": list.cni_version}));
        let result: CniResult = serde_json::from_value(value.clone())
            .map_err(|e| CniError::new(code::DECODE, format!("final result: {e}")))?;
        self.write_cache(list, rt, &value)?;
        Ok(result)
    }

    fn write_cache(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
        result: &Value,
    ) -> Result<()> {
        let path = self.cache_path(&list.name, rt);
        let entry = CacheEntry {
            kind: "cniCacheV1".into(),
            network: list.name.clone(),
            rt: rt.clone(),
            config: serde_json::to_value(list).unwrap_or(Value::Null),
            result: Some(result.clone()),
        };
        let dir = self.cache_dir.join("results");
        fs::create_dir_all(&dir)
            .map_err(|e| CniError::io(format!("create {}", dir.display()), e))?;
        let tmp = path.with_extension("tmp");
        let bytes =
            serde_json::to_vec(&entry).map_err(|e| CniError::new(code::DECODE, e.to_string()))?;
        fs::write(&tmp, bytes).map_err(|e| CniError::io(format!("write {}", tmp.display()), e))?;
        fs::rename(&tmp, &path).map_err(|e| CniError::io(format!("rename {}", path.display()), e))
    }

    /// DEL: runs the chain in reverse with the cached result as prevResult (0.4.0+),
    /// then drops the cache entry. Every plugin runs even if an earlier one failed; the
    /// first error is returned and the cache kept so DEL can be retried.
    pub fn del(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<()> {
        let cached = fs::read(self.cache_path(&list.name, rt))
            .ok()
            .and_then(|b| serde_json::from_slice::<CacheEntry>(&b).ok())
            .and_then(|e| e.result);
        let prev = if list.cni_version == "0.3.0" || list.cni_version == "0.3.1" {
            None
        } else {
            cached.as_ref()
        };
        let mut first_err = None;
        for plugin in list.plugins.iter().rev() {
            if let Err(e) = self.run("DEL", list, plugin, rt, prev)
                && first_err.is_none()
            {
                first_err = Some(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        match fs::remove_file(self.cache_path(&list.name, rt)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CniError::io("remove cached result", e))
            }
            _ => Ok(()),
        }
    }

    /// CHECK: runs the chain in order against the cached result.
    pub fn check(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<()> {
        if is_legacy(&list.cni_version) && list.cni_version != "0.4.0" {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                "CHECK needs cniVersion 0.4.0 or later",
            ));
        }
        if list.disable_check {
            return Ok(());
        }
        let bytes = fs::read(self.cache_path(&list.name, rt)).map_err(|_| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!("no cached result for {}/{}", rt.container_id, rt.ifname),
            )
        })?;
        let entry: CacheEntry = serde_json::from_slice(&bytes)
            .map_err(|e| CniError::new(code::DECODE, format!("cached result: {e}")))?;
        for plugin in &list.plugins {
            self.run("CHECK", list, plugin, rt, entry.result.as_ref())?;
        }
        Ok(())
    }

    /// GC (1.1.0): tells every plugin which attachments are still valid, and drops
    /// cache entries of attachments that are not.
    pub fn gc(&self, list: &NetworkConfigList, valid: &[Attachment]) -> Result<()> {
        if is_legacy(&list.cni_version) || list.cni_version == "1.0.0" || list.disable_gc {
            return Ok(());
        }
        let valid_json =
            serde_json::to_value(valid).map_err(|e| CniError::new(code::DECODE, e.to_string()))?;
        let rt = RuntimeConf::default();
        for plugin in &list.plugins {
            let mut p = plugin.clone();
            if let Some(o) = p.as_object_mut() {
                o.insert("cni.dev/valid-attachments".into(), valid_json.clone());
            }
            self.run("GC", list, &p, &rt, None)?;
        }
        for a in self.cached_attachments(&list.name) {
            if !valid.contains(&a) {
                let rt = RuntimeConf {
                    container_id: a.container_id,
                    ifname: a.ifname,
                    ..Default::default()
                };
                let _ = fs::remove_file(self.cache_path(&list.name, &rt));
            }
        }
        Ok(())
    }

    /// STATUS (1.1.0): every plugin must report ready.
    pub fn status(&self, list: &NetworkConfigList) -> Result<()> {
        if is_legacy(&list.cni_version) || list.cni_version == "1.0.0" {
            return Ok(());
        }
        let rt = RuntimeConf::default();
        for plugin in &list.plugins {
            self.run("STATUS", list, plugin, &rt, None)?;
        }
        Ok(())
    }

    /// VERSION of one plugin type: the versions it supports.
    pub fn plugin_versions(&self, kind: &str) -> Result<Vec<String>> {
        let path = find_plugin(kind, &self.cni_path())?;
        let env = PluginEnv {
            command: "VERSION".into(),
            path: self.cni_path(),
            ..Default::default()
        };
        let out = exec_plugin(&path, &env, br#"{"cniVersion":"1.0.0"}"#)?;
        let v: Value = serde_json::from_slice(&out)
            .map_err(|e| CniError::new(code::DECODE, format!("VERSION reply: {e}")))?;
        Ok(v.get("supportedVersions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}
