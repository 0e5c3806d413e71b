//! Configuration (SPEC §2): TOML file + `PVE2MQTT_<SECTION>__<KEY>` environment + `*_file` secrets.
use std::path::PathBuf;
use std::time::Duration;

/// A secret string (API token secret, MQTT password). Its `Debug` and `Display`
/// never show the value, so it cannot leak through logs or error messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The clear value: call only where it goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}
impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A Proxmox API token `USER@REALM!TOKENID=SECRET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiToken {
    /// `USER@REALM`, e.g. `pve2mqtt@pve`.
    pub user: String,
    /// The token id after `!`, e.g. `bridge`.
    pub token_id: String,
    pub secret: Secret,
}

impl ApiToken {
    /// The value of the `Authorization` header.
    pub fn header_value(&self) -> String {
        format!("PVEAPIToken={}!{}={}", self.user, self.token_id, self.secret.expose())
    }
    /// `USER@REALM!TOKENID`, safe to log.
    pub fn id(&self) -> String {
        format!("{}!{}", self.user, self.token_id)
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// One entry per cluster (`[proxmox]` or `[[proxmox]]`); never empty.
    pub clusters: Vec<ProxmoxConfig>,
    pub poll: PollConfig,
    pub mqtt: MqttConfig,
    pub homeassistant: HaConfig,
    pub commands: CommandsConfig,
    pub backup: BackupConfig,
}

#[derive(Clone, Debug)]
pub struct ProxmoxConfig {
    /// Base URLs (`https://host:8006`), tried in order for failover; never empty.
    pub urls: Vec<String>,
    pub token: ApiToken,
    pub tls_verify: bool,
    pub ca_file: Option<PathBuf>,
    /// SHA-256 of the server certificate (DER), from `AB:CD:…` hex.
    pub fingerprint: Option<[u8; 32]>,
    /// Cluster id for topics and unique ids; `None` = ask Proxmox (cluster name, or node name).
    pub name: Option<String>,
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct PollConfig {
    pub interval: Duration,
    pub slow_interval: Duration,
}

#[derive(Clone, Debug)]
pub struct MqttConfig {
    /// As written, for messages.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// `mqtts://`
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub client_id: String,
    pub base_topic: String,
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct HaConfig {
    pub discovery: bool,
    pub discovery_prefix: String,
}

#[derive(Clone, Debug)]
pub struct CommandsConfig {
    pub enabled: bool,
    pub read_only: bool,
    /// Empty = every guest.
    pub allow: Vec<AllowRule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowRule {
    Vmid(u32),
    Tag(String),
    Pool(String),
}

#[derive(Clone, Debug)]
pub struct BackupConfig {
    pub storage: String,
    pub mode: String,
    pub compress: String,
}
