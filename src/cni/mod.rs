//! The CNI plugin `datapath-cni`: the JSON a runtime and the plugin
//! exchange (types of our own, serde), the spec's error codes and ours,
//! and the commands (`plugin`).
//!
//! Spec versions 1.0.0 and 1.1.0 are spoken, and 0.4.0 is accepted (its
//! result carries `version` in each IP). Everything a runtime may add to
//! the configuration that this plugin does not use (`capabilities`,
//! `args`, `dns`, keys of other plugins) is tolerated and passed on
//! untouched to the IPAM plugin, which gets the configuration as it came.

pub mod plugin;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The spec versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
/// The newest of them.
pub const LATEST_VERSION: &str = "1.1.0";

/// The pin root used when the configuration names none.
pub const DEFAULT_PIN_ROOT: &str = crate::kernel::pins::DEFAULT_PIN_ROOT;

/// Error codes: the spec's well-known ones (below 100) and this plugin's
/// own (100 and up), listed in the README.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// The plugin is not available: the datapath is not loaded.
    pub const NOT_AVAILABLE: u32 = 50;

    /// A container of that name exists with other arguments, or a link has
    /// its host veth's name.
    pub const EXISTS: u32 = 100;
    /// An address, route or published host port belongs to someone else.
    pub const IN_USE: u32 = 101;
    /// A datapath map is full.
    pub const MAP_FULL: u32 = 102;
    /// Something this build does not do: IPv6 addresses (from the IPAM
    /// plugin, or as hostIP), protocols other than tcp and udp.
    pub const UNSUPPORTED: u32 = 103;
    /// The IPAM plugin's result has no IPv4 address to use.
    pub const IPAM_RESULT: u32 = 104;
    /// The IPAM plugin failed without a CNI error object.
    pub const IPAM_FAILED: u32 = 105;
    /// CHECK found what ADD made missing or changed.
    pub const CHECK_FAILED: u32 = 106;
    /// The kernel or the maps refused a step of the wiring.
    pub const DATAPATH: u32 = 107;
}

/// A CNI error: what the plugin prints on stdout when it fails.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self { cni_version: String::new(), code, msg: msg.into(), details: String::new() }
    }

    pub fn details(mut self, d: impl Into<String>) -> Self {
        self.details = d.into();
        self
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// One entry of `runtimeConfig.portMappings` (capability `portMappings`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: u32,
    #[serde(rename = "containerPort")]
    pub container_port: u32,
    #[serde(default)]
    pub protocol: String,
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    #[serde(rename = "portMappings", default)]
    pub port_mappings: Vec<PortMapping>,
}

/// One attachment of `cni.dev/valid-attachments` (GC).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The network configuration on stdin, as far as this plugin reads it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The datapath's pin root (default /sys/fs/bpf/datapath).
    #[serde(rename = "pinRoot", default)]
    pub pin_root: Option<String>,
    /// MTU of the veth pair (default: the kernel's).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The IPAM plugin's configuration; `type` names it.
    #[serde(default)]
    pub ipam: Option<Value>,
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: RuntimeConfig,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    /// The IPAM plugin's type, if the configuration has one.
    pub fn ipam_type(&self) -> Option<&str> {
        self.ipam.as_ref()?.get("type")?.as_str().filter(|t| !t.is_empty())
    }
}

/// An interface of a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// An address of a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// "4" or "6": spec 0.4.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route of a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// A CNI result (ADD's output; what IPAM plugins return, without
/// interfaces; `prevResult`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Value>,
}

/// VERSION's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_runtimes_send_are_read_and_unknown_keys_tolerated() {
        let podman = r#"{"cniVersion":"1.0.0","name":"games","type":"datapath-cni","pinRoot":"/sys/fs/bpf/x",
            "mtu":1400,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.89.0.0/24"}]]},
            "capabilities":{"portMappings":true},"someOtherPlugin":{"a":1},
            "runtimeConfig":{"portMappings":[{"hostPort":30001,"containerPort":25565,"protocol":"tcp"},
              {"hostPort":30002,"containerPort":19132,"protocol":"udp","hostIP":"203.0.113.10"}]}}"#;
        let c: NetConf = serde_json::from_str(podman).unwrap();
        assert_eq!((c.cni_version.as_str(), c.name.as_str(), c.mtu), ("1.0.0", "games", Some(1400)));
        assert_eq!(c.ipam_type(), Some("host-local"));
        assert_eq!(c.pin_root.as_deref(), Some("/sys/fs/bpf/x"));
        assert_eq!(c.runtime_config.port_mappings.len(), 2);
        assert_eq!(c.runtime_config.port_mappings[1].host_ip, "203.0.113.10");
        let gc: NetConf = serde_json::from_str(
            r#"{"cniVersion":"1.1.0","name":"n","type":"t","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(gc.valid_attachments.unwrap(), vec![Attachment { container_id: "a".into(), ifname: "eth0".into() }]);
    }

    #[test]
    fn results_and_errors_have_the_spec_s_shape() {
        let r = CniResult {
            cni_version: "1.0.0".into(),
            interfaces: vec![Interface { name: "eth0".into(), mac: "02:00:00:00:00:01".into(), sandbox: "/run/netns/x".into() }],
            ips: vec![IpConfig { version: None, address: "10.0.0.2/32".into(), gateway: Some("169.254.1.1".into()), interface: Some(0) }],
            routes: vec![RouteConfig { dst: "0.0.0.0/0".into(), gw: Some("169.254.1.1".into()) }],
            dns: None,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["ips"][0]["interface"], 0);
        assert!(v["ips"][0].get("version").is_none() && v.get("dns").is_none());
        let e = serde_json::to_value(CniError::new(7, "bad").details("why")).unwrap();
        assert_eq!(e, serde_json::json!({"cniVersion": "", "code": 7, "msg": "bad", "details": "why"}));
        let host_local = r#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.89.0.2/24","gateway":"10.89.0.1"}],"dns":{}}"#;
        let h: CniResult = serde_json::from_str(host_local).unwrap();
        assert_eq!(h.ips[0].version.as_deref(), Some("4"));
    }
}
