//! The `hull-bridge` network configuration (what sits in a conflist's plugin entry).

use std::collections::HashSet;

use ipnet::IpNet;
use serde::Deserialize;

use crate::error::{CniError, Result, code};
use crate::types::{Attachment, Dns, PortMapping, check_version};

pub const DEFAULT_BRIDGE: &str = "hull0";

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    #[serde(rename = "portMappings", default)]
    pub port_mappings: Vec<PortMapping>,
    #[serde(default)]
    pub mac: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BridgeConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub bridge: Option<String>,
    #[serde(rename = "isGateway", default)]
    pub is_gateway: bool,
    #[serde(rename = "isDefaultGateway", default)]
    pub is_default_gateway: bool,
    #[serde(rename = "ipMasq", default)]
    pub ip_masq: bool,
    /// With `ipMasq`: destinations besides the pod's own subnet that its traffic reaches
    /// unmasqueraded — the cluster CIDR, so pods on other nodes see the client pod's own
    /// address as Kubernetes' network model requires (ip-masq-agent's option of this name).
    #[serde(rename = "nonMasqueradeCIDRs", default)]
    pub non_masquerade_cidrs: Vec<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(rename = "hairpinMode", default)]
    pub hairpin_mode: bool,
    #[serde(rename = "promiscMode", default)]
    pub promisc_mode: bool,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub ipam: Option<serde_json::Value>,
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: RuntimeConfig,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<serde_json::Value>,
    #[serde(default)]
    pub dns: Option<Dns>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl BridgeConf {
    /// Parses stdin; decode errors are spec code 6 and name the offending field.
    pub fn parse(stdin: &[u8]) -> Result<Self> {
        let raw: serde_json::Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("network config on stdin is not JSON: {e}"),
            )
        })?;
        let version = raw
            .get("cniVersion")
            .and_then(|v| v.as_str())
            .ok_or_else(|| CniError::new(code::DECODE, "cniVersion: missing or not a string"))?;
        check_version(version)?;
        let conf: BridgeConf = serde_json::from_value(raw)
            .map_err(|e| CniError::new(code::DECODE, format!("network config: {e}")))?;
        conf.validate()?;
        Ok(conf)
    }

    fn validate(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(CniError::config("name: must not be empty"));
        }
        let br = self.bridge_name();
        if br.is_empty() || br.len() > 15 || br.contains('/') || br.contains(char::is_whitespace) {
            return Err(CniError::config(format!(
                "bridge: {br:?} is not a valid interface name"
            )));
        }
        if let Some(mtu) = self.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(CniError::config(format!("mtu: {mtu} is outside 68-65535")));
        }
        self.non_masquerade()?;
        if let Some(mac) = self.container_mac()
            && crate::netlink::parse_mac(mac).is_none()
        {
            return Err(CniError::config(format!(
                "mac: {mac:?} is not a MAC address"
            )));
        }
        Ok(())
    }

    /// `nonMasqueradeCIDRs`, parsed.
    pub fn non_masquerade(&self) -> Result<Vec<IpNet>> {
        self.non_masquerade_cidrs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                c.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| {
                    CniError::config(format!(
                        "nonMasqueradeCIDRs[{i}]: {c:?} is not an ADDRESS/LENGTH network"
                    ))
                })
            })
            .collect()
    }

    pub fn bridge_name(&self) -> &str {
        self.bridge.as_deref().unwrap_or(DEFAULT_BRIDGE)
    }

    /// `runtimeConfig.mac` (the `mac` capability) wins over the static `mac`.
    pub fn container_mac(&self) -> Option<&str> {
        self.runtime_config.mac.as_deref().or(self.mac.as_deref())
    }

    pub fn ipam_type(&self) -> Result<&str> {
        self.ipam
            .as_ref()
            .and_then(|v| v.get("type"))
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                CniError::config("ipam.type: missing (hull-bridge needs an IPAM, e.g. host-local)")
            })
    }

    pub fn valid_set(&self) -> HashSet<Attachment> {
        self.valid_attachments
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect()
    }
}
