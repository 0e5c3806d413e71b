//! Configuration (SPEC §2): TOML file + `PVE2MQTT_<SECTION>__<KEY>` environment + `*_file` secrets.
//!
//! Layers, lowest first: built-in defaults, the TOML file, the environment, merged by the
//! `config` crate's `File` and `Environment` sources into one serde schema that refuses
//! unknown keys (`layers`). Each key is declared once, with its type and default
//! (`section!`); each value type checks itself as serde reads it (`values::Parse`); `build`
//! keeps only the keys that depend on each other. Every error names the key exactly as the
//! admin wrote it (`mqtt.base_topic` in the file, `PVE2MQTT_MQTT__BASE_TOPIC` from the
//! environment) and never quotes a secret. The rules where SPEC is silent (case, lists,
//! booleans, empty strings, exclusive keys across layers, `[[proxmox]]` by name in the
//! environment) are the README's "Configuration".
/// A section as serde reads it: each key with its type, checked by [`values::Parse`] as it is
/// read, and its default. The field list is also the list of known keys (`layers`).
macro_rules! section {
    ($(#[$attr:meta])* $vis:vis struct $name:ident {
        $($(#[$doc:meta])* $fvis:vis $key:ident: $ty:ty = $default:expr,)*
    }) => {
        $(#[$attr])*
        #[derive(Clone, Debug, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        $vis struct $name {
            $($(#[$doc])* #[serde(deserialize_with = "values::parse")] $fvis $key: $ty,)*
        }
        impl Default for $name {
            fn default() -> Self {
                $name { $($key: $default,)* }
            }
        }
        impl $name {
            /// The section's keys, for "did you mean" hints.
            pub(super) const KEYS: &[&str] = &[$(stringify!($key)),*];
        }
    };
}

mod build;
mod layers;
mod values;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::ReportRules;
use crate::types::{BackupMode, CaBundle, Compress, ProxmoxUrl, StorageId};

pub use crate::types::{AllowRule, ApiToken, MqttBroker, Secret};

#[derive(Clone, Debug)]
pub struct Config {
    /// One entry per cluster (`[proxmox]` or `[[proxmox]]`); never empty.
    pub clusters: Vec<ProxmoxConfig>,
    pub poll: PollConfig,
    pub mqtt: MqttConfig,
    pub homeassistant: HaConfig,
    pub commands: CommandsConfig,
    pub backup: BackupConfig,
    pub http: HttpConfig,
    /// `[reporting]`: when a state changed enough to be published again.
    pub reporting: ReportRules,
}

#[derive(Clone, Debug)]
pub struct ProxmoxConfig {
    /// Base URLs (`https://host:8006`), tried in order for failover; never empty.
    pub urls: Vec<ProxmoxUrl>,
    pub token: ApiToken,
    pub tls_verify: bool,
    pub ca_file: Option<CaBundle>,
    /// SHA-256 of the server certificate (DER), from `AB:CD:…` hex.
    pub fingerprint: Option<[u8; 32]>,
    /// Cluster id for topics and unique ids; `None` = ask Proxmox (cluster name, or node name).
    pub name: Option<String>,
    pub timeout: Duration,
}

section! {
    /// `[poll]`: how often each lane and each slow read runs (README "Configuration").
    pub struct PollConfig {
        pub interval: Duration = Duration::from_secs(10),
        /// Zero until `build` gives the default (a given duration is never zero).
        pub slow_interval: Duration = Duration::ZERO,
        pub tasks_interval: Duration = Duration::from_secs(10),
        pub snapshots_interval: Duration = Duration::from_secs(15 * 60),
        pub disks_interval: Duration = Duration::from_secs(15 * 60),
        /// Read pending package updates (`apt/update`, needs `Sys.Modify`): opt-in.
        pub updates: bool = false,
        pub updates_interval: Duration = Duration::from_secs(3600),
        pub certificates_interval: Duration = Duration::from_secs(6 * 3600),
        pub agent_interval: Duration = Duration::from_secs(300),
        /// At most this many guests' agents per slow round; 0 turns agent calls off.
        pub agent_max_per_round: usize = 20,
    }
}

#[derive(Clone, Debug)]
pub struct MqttConfig {
    /// The first broker (the only one without `mqtt.urls`); the URL as written, for messages.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// `mqtts://`
    pub tls: bool,
    /// Every broker, in the order they are tried (`mqtt.urls`, or `mqtt.url` alone); never empty.
    pub brokers: Vec<MqttBroker>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub client_id: String,
    pub base_topic: String,
    pub ca_file: Option<CaBundle>,
}

section! {
    pub struct HaConfig {
        pub discovery: bool = true,
        /// A topic prefix (`values::Topic`), checked in `build`.
        pub discovery_prefix: String = "homeassistant".into(),
    }
}

section! {
    pub struct CommandsConfig {
        pub enabled: bool = true,
        pub read_only: bool = false,
        /// Empty = every guest.
        pub allow: Vec<AllowRule> = Vec::new(),
        /// Node power commands on `{base}/{c}/node/{node}/set` (SPEC §7); off by default.
        pub node_power: bool = false,
        /// Allow the snapshot `rollback` action (destructive: off by default).
        pub rollback: bool = false,
    }
}

section! {
    /// `[http]`: the bridge's own listener for `/healthz` and `/metrics`; `None` = off.
    pub struct HttpConfig {
        pub listen: Option<std::net::SocketAddr> = None,
    }
}

section! {
    /// `[reporting]`: when a state changed enough to be published again (README: Reporting).
    pub struct ReportingConfig {
        pub max_interval: Duration = ReportRules::DEFAULT.max_interval,
        /// `0` or `"0s"`: off.
        pub min_interval: values::OrZero = values::OrZero(ReportRules::DEFAULT.min_interval),
        pub cpu: f64 = ReportRules::DEFAULT.cpu,
        pub mem_percent: f64 = ReportRules::DEFAULT.mem_percent,
        pub rates: f64 = ReportRules::DEFAULT.rates,
        pub rates_floor: f64 = ReportRules::DEFAULT.rates_floor,
        pub storage_percent: f64 = ReportRules::DEFAULT.storage_percent,
        pub loadavg: f64 = ReportRules::DEFAULT.loadavg,
    }
}

impl From<ReportingConfig> for ReportRules {
    fn from(c: ReportingConfig) -> Self {
        ReportRules {
            max_interval: c.max_interval,
            min_interval: c.min_interval.0,
            cpu: c.cpu,
            mem_percent: c.mem_percent,
            rates: c.rates,
            rates_floor: c.rates_floor,
            storage_percent: c.storage_percent,
            loadavg: c.loadavg,
            ..ReportRules::DEFAULT
        }
    }
}

section! {
    /// `[backup]`: the defaults of a backup asked for without options, checked at start-up.
    pub struct BackupConfig {
        pub storage: StorageId = StorageId::parse("local").expect("a valid storage id"),
        pub mode: BackupMode = BackupMode::Snapshot,
        pub compress: Compress = Compress::Zstd,
        /// A guest whose newest backup is older than this is "Backup stale".
        pub stale_after: Duration = Duration::from_secs(48 * 3600),
    }
}

/// Why the configuration was refused. Every message names the key as the admin wrote it
/// (`poll.interval` in the file, `proxmox[1].token` in an array of clusters, or the
/// environment variable) and never contains a secret value.
#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    #[error("cannot read config file `{}`: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML. `detail` carries the parser's position and reason but not
    /// its quote of the offending line, which could hold a secret.
    #[error("invalid TOML{}: {detail}", path.as_ref().map(|p| format!(" in `{}`", p.display())).unwrap_or_default())]
    Syntax {
        path: Option<PathBuf>,
        detail: String,
    },
    /// A table in the file that is not one of the known sections.
    #[error("unknown section `{section}` ({hint})")]
    UnknownSection { section: String, hint: String },
    /// A key in the file that is not known in its section (`mqtt.pasword`).
    #[error("unknown key `{key}`{}", hint_suffix(hint))]
    UnknownKey { key: String, hint: Option<String> },
    /// A `PVE2MQTT_*` environment variable that does not map to a key, or cannot be applied.
    #[error("environment variable `{var}`: {reason}")]
    EnvVar { var: String, reason: String },
    #[error("missing `{key}`: {hint}")]
    Missing { key: String, hint: String },
    #[error("`{first}` and `{second}` are both set; give only one of them")]
    Conflict { first: String, second: String },
    /// A file named by a key (`token_file`, `password_file`, `ca_file`) cannot be used.
    #[error("{key}: cannot read `{}`: {reason}", path.display())]
    UnreadableFile {
        key: String,
        path: PathBuf,
        reason: String,
    },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn hint_suffix(hint: &Option<String>) -> String {
    hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
}

/// Environment variables that start with the config prefix but belong to the CLI, not to a
/// config key; they are skipped instead of being reported as unknown.
pub const NON_CONFIG_ENV_VARS: &[&str] = &["PVE2MQTT_CONFIG", crate::logging::LOG_FORMAT_VAR];

/// Prefix of every configuration variable (`PVE2MQTT_<SECTION>__<KEY>`).
const ENV_PREFIX: &str = "PVE2MQTT_";

impl Config {
    /// File (optional) + the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut env = HashMap::new();
        for (name, value) in std::env::vars_os() {
            // A variable whose name is not UTF-8 cannot spell our prefix.
            let Some(name) = name.to_str().filter(|name| name.starts_with(ENV_PREFIX)) else {
                continue;
            };
            let value = value.into_string().map_err(|_| ConfigError::EnvVar {
                var: name.to_owned(),
                reason: "the value is not valid UTF-8".into(),
            })?;
            env.insert(name.to_owned(), value);
        }
        Self::load_with_env(path, &env)
    }

    /// Same with an explicit environment (tests; no global state).
    pub fn load_with_env(
        path: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            None => String::new(),
            Some(path) => std::fs::read_to_string(path).map_err(|source| {
                let path = path.to_owned();
                ConfigError::ReadFile { path, source }
            })?,
        };
        let (schema, origins) = layers::layer(&text, path, env)?;
        build::build(schema, &origins)
    }

    /// Parse from TOML text + env (unit tests, and the Home Assistant add-on later).
    pub fn from_toml_str(toml: &str, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let (schema, origins) = layers::layer(toml, None, env)?;
        build::build(schema, &origins)
    }
}
