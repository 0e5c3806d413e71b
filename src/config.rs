//! Configuration (SPEC §2): TOML file + `PVE2MQTT_<SECTION>__<KEY>` environment + `*_file` secrets.
//!
//! Layers, lowest first: built-in defaults, the TOML file, the environment. The file and the
//! environment are first read into a *raw* tree that remembers where every value came from
//! (`mqtt.base_topic` in the file, or `PVE2MQTT_MQTT__BASE_TOPIC`), and only then validated
//! key by key. That way every error names the key exactly as the admin wrote it, and unknown
//! keys are caught instead of silently ignored.
//!
//! The `config` crate is used only to parse TOML into a typed value tree: its own layering
//! would lose the origin of each value, lowercase or mistype environment strings, and cannot
//! report unknown keys, so the layering and the environment are done here.
//!
//! Rules where SPEC is silent (documented for the README):
//! - Environment section and key names are case-insensitive; the `PVE2MQTT_` prefix is not.
//!   `PVE2MQTT_CONFIG` is left to the CLI (see [`NON_CONFIG_ENV_VARS`]).
//! - List values from the environment are comma-separated; a TOML string is accepted for a
//!   list key the same way.
//! - Booleans accept `true/false`, `yes/no`, `on/off`, `1/0` (any case), from env or file.
//! - Mutually exclusive keys (`url`/`urls`, `token`/`token_file`, `password`/`password_file`)
//!   are an error when one layer sets both; a higher layer setting one replaces the other from
//!   a lower layer (an env `TOKEN_FILE` overrides a file `token`). An empty string counts as unset.
//! - Optional strings (`ca_file`, `fingerprint`, `name`, `username`, `password`, ...) treat an
//!   empty string as not given, as the SPEC example (`ca_file = ""`) implies.
//! - `poll.slow_interval` defaults to the larger of 60s and `poll.interval`.
//! - With several `[[proxmox]]` clusters, `PVE2MQTT_PROXMOX__<NAME>__<KEY>` addresses one by its
//!   name; the plain `PVE2MQTT_PROXMOX__<KEY>` is only accepted when there is one cluster.
//!   Clusters cannot be created from the environment alone beyond the single one.
//! - Relative paths (`ca_file`, `*_file`) are relative to the working directory.
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{FileFormat, Source, ValueKind};

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
        format!(
            "PVEAPIToken={}!{}={}",
            self.user,
            self.token_id,
            self.secret.expose()
        )
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

impl std::fmt::Display for AllowRule {
    /// The form the rule is written in the config (`100`, `tag:NAME`, `pool:NAME`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllowRule::Vmid(vmid) => write!(f, "{vmid}"),
            AllowRule::Tag(tag) => write!(f, "tag:{tag}"),
            AllowRule::Pool(pool) => write!(f, "pool:{pool}"),
        }
    }
}

/// Why the configuration was refused. Every message names the key as the admin wrote it
/// (`poll.interval` in the file, `proxmox[1].token` in an array of clusters, or the
/// environment variable) and never contains a secret value.
#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    /// The config file given with `--config` could not be read.
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
    #[error("unknown section `{section}`{}", hint_suffix(hint))]
    UnknownSection {
        section: String,
        hint: Option<String>,
    },
    /// A key in the file that is not known in its section (`mqtt.pasword`).
    #[error("unknown key `{key}`{}", hint_suffix(hint))]
    UnknownKey { key: String, hint: Option<String> },
    /// A `PVE2MQTT_*` environment variable that does not map to a key, or cannot be applied.
    #[error("environment variable `{var}`: {reason}")]
    EnvVar { var: String, reason: String },
    /// A required key has no value in any layer.
    #[error("missing `{key}`: {hint}")]
    Missing { key: String, hint: String },
    /// Two mutually exclusive keys were given in the same layer.
    #[error("`{first}` and `{second}` are both set; give only one of them")]
    Conflict { first: String, second: String },
    /// A file named by a key (`token_file`, `password_file`, `ca_file`) cannot be used.
    #[error("{key}: cannot read `{}`: {reason}", path.display())]
    UnreadableFile {
        key: String,
        path: PathBuf,
        reason: String,
    },
    /// A value of the wrong type or out of its allowed range.
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn hint_suffix(hint: &Option<String>) -> String {
    hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
}

/// Environment variables that start with the config prefix but belong to the CLI, not to a
/// config key; they are skipped instead of being reported as unknown.
pub const NON_CONFIG_ENV_VARS: &[&str] = &["PVE2MQTT_CONFIG"];

/// Prefix of every configuration variable (`PVE2MQTT_<SECTION>__<KEY>`).
const ENV_PREFIX: &str = "PVE2MQTT_";

/// Every section and its keys. This list is the schema: anything not in it is unknown.
const SECTIONS: &[(&str, &[&str])] = &[
    (
        "proxmox",
        &[
            "url",
            "urls",
            "token",
            "token_file",
            "tls_verify",
            "ca_file",
            "fingerprint",
            "name",
            "timeout",
        ],
    ),
    ("poll", &["interval", "slow_interval"]),
    (
        "mqtt",
        &[
            "url",
            "username",
            "password",
            "password_file",
            "client_id",
            "base_topic",
            "ca_file",
        ],
    ),
    ("homeassistant", &["discovery", "discovery_prefix"]),
    ("commands", &["enabled", "read_only", "allow"]),
    ("backup", &["storage", "mode", "compress"]),
];

/// Pairs of keys of one section of which at most one may be given.
const EXCLUSIVE: &[(&str, &str, &str)] = &[
    ("proxmox", "url", "urls"),
    ("proxmox", "token", "token_file"),
    ("mqtt", "password", "password_file"),
];

const DEFAULT_PROXMOX_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_SLOW_INTERVAL: Duration = Duration::from_secs(60);
const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_MQTT_URL: &str = "mqtt://127.0.0.1:1883";
const TOKEN_SHAPE: &str =
    "expected USER@REALM!TOKENID=SECRET, e.g. pve2mqtt@pve!bridge=xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";

impl Config {
    /// File (optional) + the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut env = HashMap::new();
        for (name, value) in std::env::vars_os() {
            // A variable whose name is not UTF-8 cannot spell our prefix.
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(ENV_PREFIX) {
                continue;
            }
            match value.into_string() {
                Ok(value) => {
                    env.insert(name.to_owned(), value);
                }
                Err(_) => {
                    return Err(ConfigError::EnvVar {
                        var: name.to_owned(),
                        reason: "the value is not valid UTF-8".into(),
                    })
                }
            }
        }
        Self::load_with_env(path, &env)
    }

    /// Same with an explicit environment (tests; no global state).
    pub fn load_with_env(
        path: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        match path {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                        path: path.to_owned(),
                        source,
                    })?;
                Self::from_toml_with_origin(&text, Some(path), env)
            }
            None => Self::from_toml_with_origin("", None, env),
        }
    }

    /// Parse from TOML text + env (unit tests, and the Home Assistant add-on later).
    pub fn from_toml_str(toml: &str, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        Self::from_toml_with_origin(toml, None, env)
    }

    fn from_toml_with_origin(
        toml: &str,
        path: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let file = FileLayer::parse(toml, path)?;
        let env = EnvLayer::parse(env)?;
        let merged = Merged::new(file, env)?;
        merged.build()
    }

    /// A short multi-line summary for `pve2mqtt check`: everything an admin wants to confirm,
    /// and nothing secret (token id but not its secret; whether a password is set, not what).
    pub fn redacted_summary(&self) -> String {
        let mut out = String::new();
        for (index, cluster) in self.clusters.iter().enumerate() {
            let name = cluster
                .name
                .as_deref()
                .map(str::to_owned)
                .unwrap_or_else(|| "from Proxmox".into());
            let _ = writeln!(out, "proxmox cluster {} (id: {name})", index + 1);
            let _ = writeln!(out, "  urls: {}", cluster.urls.join(", "));
            let _ = writeln!(out, "  token: {} (secret hidden)", cluster.token.id());
            let mut tls = Vec::new();
            if let Some(fingerprint) = &cluster.fingerprint {
                tls.push(format!(
                    "pinned certificate SHA-256 {}",
                    colon_hex(fingerprint)
                ));
            }
            if let Some(ca_file) = &cluster.ca_file {
                tls.push(format!("CA file {}", ca_file.display()));
            }
            if !cluster.tls_verify {
                tls.push("certificate verification OFF (tls_verify = false)".into());
            }
            if tls.is_empty() {
                tls.push("verified against the system trust roots".into());
            }
            let _ = writeln!(out, "  tls: {}", tls.join("; "));
            let _ = writeln!(
                out,
                "  timeout: {}",
                humantime::format_duration(cluster.timeout)
            );
        }
        let _ = writeln!(
            out,
            "poll: every {}, slow lane every {}",
            humantime::format_duration(self.poll.interval),
            humantime::format_duration(self.poll.slow_interval)
        );
        let mqtt = &self.mqtt;
        let _ = writeln!(
            out,
            "mqtt: {} (host {}, port {}, {})",
            mqtt.url,
            mqtt.host,
            mqtt.port,
            if mqtt.tls { "TLS" } else { "no TLS" }
        );
        let _ = writeln!(
            out,
            "  user: {}, password: {}, client id: {}",
            mqtt.username.as_deref().unwrap_or("(none)"),
            if mqtt.password.is_some() {
                "set"
            } else {
                "(none)"
            },
            mqtt.client_id
        );
        if let Some(ca_file) = &mqtt.ca_file {
            let _ = writeln!(out, "  CA file: {}", ca_file.display());
        }
        let _ = writeln!(out, "  base topic: {}", mqtt.base_topic);
        let ha = &self.homeassistant;
        let _ = writeln!(
            out,
            "homeassistant: discovery {}, prefix {}",
            if ha.discovery { "on" } else { "off" },
            ha.discovery_prefix
        );
        let commands = &self.commands;
        let policy = if !commands.enabled {
            "disabled".to_owned()
        } else if commands.read_only {
            "read-only (every command is rejected)".to_owned()
        } else if commands.allow.is_empty() {
            "allowed for every guest".to_owned()
        } else {
            let rules: Vec<String> = commands.allow.iter().map(ToString::to_string).collect();
            format!("allowed for {}", rules.join(", "))
        };
        let _ = writeln!(out, "commands: {policy}");
        let backup = &self.backup;
        let _ = write!(
            out,
            "backup defaults: storage {}, mode {}, compress {}",
            backup.storage, backup.mode, backup.compress
        );
        out
    }
}

// ---------------------------------------------------------------------------------------
// Raw layers: values as given, with their origin, before any validation.
// ---------------------------------------------------------------------------------------

/// One value as given, with where it came from so errors can name it.
struct RawValue {
    /// `mqtt.base_topic`, `proxmox[1].token`, or `PVE2MQTT_MQTT__BASE_TOPIC`.
    at: String,
    kind: RawKind,
}

enum RawKind {
    /// Typed by TOML (a `10` stays an integer, so `poll.interval = 10` can be refused).
    Toml(ValueKind),
    /// Environment values are always text; each key parses it according to its type.
    Env(String),
}

/// The keys of one section of one layer, keyed by their schema name.
type LayerKeys = BTreeMap<&'static str, RawValue>;

/// The parsed TOML file, split into sections.
#[derive(Default)]
struct FileLayer {
    /// `[proxmox]` gives one entry labelled `proxmox`; `[[proxmox]]` gives `proxmox[i]`.
    clusters: Vec<(String, LayerKeys)>,
    sections: BTreeMap<&'static str, LayerKeys>,
}

fn section_keys(section: &str) -> Option<(&'static str, &'static [&'static str])> {
    SECTIONS
        .iter()
        .find(|(name, _)| *name == section)
        .map(|(name, keys)| (*name, *keys))
}

fn schema_key(section: &str, key: &str) -> Option<&'static str> {
    section_keys(section)?
        .1
        .iter()
        .find(|known| **known == key)
        .copied()
}

/// Parser output with the quoted source lines removed: the `toml` parser quotes the line it
/// stopped at, and that line may be `token = ...` with the secret in clear.
fn toml_error_without_source(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| {
            !line.is_empty()
                && !line
                    .trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ')
                    .starts_with('|')
        })
        .collect::<Vec<_>>()
        .join(": ")
}

impl FileLayer {
    fn parse(text: &str, path: Option<&Path>) -> Result<FileLayer, ConfigError> {
        // Editors on Windows may save a byte order mark, which TOML does not allow.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let top = config::File::from_str(text, FileFormat::Toml)
            .collect()
            .map_err(|error| ConfigError::Syntax {
                path: path.map(Path::to_owned),
                detail: toml_error_without_source(&error.to_string()),
            })?;
        // The map is a HashMap: sort so the first error reported does not depend on hashing.
        let mut top: Vec<(String, config::Value)> = top.into_iter().collect();
        top.sort_by(|a, b| a.0.cmp(&b.0));

        let mut layer = FileLayer::default();
        for (name, value) in top {
            let Some((section, _)) = section_keys(&name) else {
                return Err(unknown_top_level(name, &value.kind));
            };
            match (section, value.kind) {
                ("proxmox", ValueKind::Table(table)) => {
                    let keys = walk_table(section, "proxmox", table)?;
                    layer.clusters.push(("proxmox".into(), keys));
                }
                ("proxmox", ValueKind::Array(items)) => {
                    for (index, item) in items.into_iter().enumerate() {
                        let label = format!("proxmox[{index}]");
                        let ValueKind::Table(table) = item.kind else {
                            return Err(ConfigError::Invalid {
                                key: label,
                                reason: format!(
                                    "expected a table ([[proxmox]]), got {}",
                                    describe_toml(&item.kind)
                                ),
                            });
                        };
                        let keys = walk_table(section, &label, table)?;
                        layer.clusters.push((label, keys));
                    }
                }
                (_, ValueKind::Table(table)) => {
                    let keys = walk_table(section, section, table)?;
                    layer.sections.insert(section, keys);
                }
                (_, other) => {
                    let shape = if section == "proxmox" {
                        "a table [proxmox] or an array of tables [[proxmox]]".to_owned()
                    } else {
                        format!("a table [{section}]")
                    };
                    return Err(ConfigError::Invalid {
                        key: section.into(),
                        reason: format!("expected {shape}, got {}", describe_toml(&other)),
                    });
                }
            }
        }
        Ok(layer)
    }
}

fn unknown_top_level(name: String, kind: &ValueKind) -> ConfigError {
    let sections: Vec<&str> = SECTIONS.iter().map(|(name, _)| *name).collect();
    if let ValueKind::Table(_) | ValueKind::Array(_) = kind {
        let hint = closest(&name, sections.iter().copied())
            .map(|s| format!("did you mean `{s}`?"))
            .or_else(|| Some(format!("known sections: {}", sections.join(", "))));
        return ConfigError::UnknownSection {
            section: name,
            hint,
        };
    }
    let hint = match SECTIONS
        .iter()
        .find(|(_, keys)| keys.contains(&name.as_str()))
    {
        Some((section, _)) => format!("`{name}` belongs in the [{section}] section"),
        None => format!(
            "keys belong in a section: {}",
            sections
                .iter()
                .map(|s| format!("[{s}]"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    ConfigError::UnknownKey {
        key: name,
        hint: Some(hint),
    }
}

/// Checks the keys of one table against the schema and records where each came from.
fn walk_table(
    section: &'static str,
    label: &str,
    table: config::Map<String, config::Value>,
) -> Result<LayerKeys, ConfigError> {
    let mut entries: Vec<(String, config::Value)> = table.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut keys = LayerKeys::new();
    for (key, value) in entries {
        let Some(known) = schema_key(section, &key) else {
            return Err(ConfigError::UnknownKey {
                key: format!("{label}.{key}"),
                hint: unknown_key_hint(section, &key),
            });
        };
        keys.insert(
            known,
            RawValue {
                at: format!("{label}.{key}"),
                kind: RawKind::Toml(value.kind),
            },
        );
    }
    Ok(keys)
}

/// "did you mean" for a misspelt key, or where a key of another section belongs.
fn unknown_key_hint(section: &str, key: &str) -> Option<String> {
    let (_, keys) = section_keys(section)?;
    if let Some(close) = closest(key, keys.iter().copied()) {
        return Some(format!("did you mean `{close}`?"));
    }
    SECTIONS
        .iter()
        .find(|(_, keys)| keys.contains(&key))
        .map(|(other, _)| format!("`{key}` belongs in the [{other}] section"))
}

/// The candidate within a small edit distance of `word`, for typo hints.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let limit = if word.len() <= 4 { 1 } else { 2 };
    candidates
        .map(|candidate| (edit_distance(&word, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// The `PVE2MQTT_*` variables, mapped to keys.
#[derive(Default)]
struct EnvLayer {
    /// `PVE2MQTT_<SECTION>__<KEY>`, for every section including `proxmox`.
    sections: BTreeMap<&'static str, LayerKeys>,
    /// `PVE2MQTT_PROXMOX__<NAME>__<KEY>`: (name as written, key, value).
    named_clusters: Vec<(String, &'static str, RawValue)>,
}

impl EnvLayer {
    fn parse(env: &HashMap<String, String>) -> Result<EnvLayer, ConfigError> {
        let mut vars: Vec<(&String, &String)> = env
            .iter()
            .filter(|(name, _)| {
                name.starts_with(ENV_PREFIX) && !NON_CONFIG_ENV_VARS.contains(&name.as_str())
            })
            .collect();
        vars.sort();
        let mut layer = EnvLayer::default();
        for (var, value) in vars {
            let raw = RawValue {
                at: var.clone(),
                kind: RawKind::Env(value.clone()),
            };
            let rest = &var[ENV_PREFIX.len()..];
            let parts: Vec<&str> = rest.split("__").collect();
            match parts.as_slice() {
                // A leading `_` is the `PVE2MQTT__SECTION` slip; reported with a guess below.
                [section, key] if !section.is_empty() && !section.starts_with('_') => {
                    let section = env_section(var, section)?;
                    let key = env_key(var, section, key)?;
                    layer.sections.entry(section).or_default().insert(key, raw);
                }
                [section, name, key]
                    if section.eq_ignore_ascii_case("proxmox") && !name.is_empty() =>
                {
                    let key = env_key(var, "proxmox", key)?;
                    layer.named_clusters.push(((*name).to_owned(), key, raw));
                }
                _ => return Err(malformed_env_var(var, rest)),
            }
        }
        Ok(layer)
    }
}

fn env_section(var: &str, section: &str) -> Result<&'static str, ConfigError> {
    let lower = section.to_ascii_lowercase();
    if let Some((known, _)) = section_keys(&lower) {
        return Ok(known);
    }
    let mut reason = format!("there is no config section `{lower}`");
    if let Some(close) = closest(&lower, SECTIONS.iter().map(|(name, _)| *name)) {
        let _ = write!(reason, " (did you mean `{}`?)", close.to_ascii_uppercase());
    }
    Err(ConfigError::EnvVar {
        var: var.into(),
        reason,
    })
}

fn env_key(var: &str, section: &'static str, key: &str) -> Result<&'static str, ConfigError> {
    let lower = key.to_ascii_lowercase();
    if let Some(known) = schema_key(section, &lower) {
        return Ok(known);
    }
    let mut reason = format!("the [{section}] section has no key `{lower}`");
    if let Some(hint) = unknown_key_hint(section, &lower) {
        let _ = write!(reason, " ({hint})");
    }
    Err(ConfigError::EnvVar {
        var: var.into(),
        reason,
    })
}

/// A `PVE2MQTT_` variable without the `<SECTION>__<KEY>` shape; guesses the intended name for
/// the usual slips (single underscore, or a double one right after the prefix).
fn malformed_env_var(var: &str, rest: &str) -> ConfigError {
    let mut reason =
        "expected PVE2MQTT_<SECTION>__<KEY> (two underscores between section and key)".to_owned();
    let trimmed = rest.trim_start_matches('_').to_ascii_lowercase();
    let guess = SECTIONS.iter().find_map(|(section, keys)| {
        let key = trimmed
            .strip_prefix(section)?
            .trim_start_matches('_')
            .to_owned();
        keys.contains(&key.as_str()).then(|| {
            format!(
                "PVE2MQTT_{}__{}",
                section.to_ascii_uppercase(),
                key.to_ascii_uppercase()
            )
        })
    });
    if let Some(guess) = guess {
        let _ = write!(reason, "; did you mean `{guess}`?");
    }
    ConfigError::EnvVar {
        var: var.into(),
        reason,
    }
}

/// The keys of one section (or one cluster) after layering.
struct RawSection {
    /// Schema section name, for the exclusive-key rules.
    section: &'static str,
    /// How the section is named in messages (`mqtt`, `proxmox[1]`).
    label: String,
    values: LayerKeys,
}

impl RawSection {
    fn new(section: &'static str, label: impl Into<String>) -> Self {
        RawSection {
            section,
            label: label.into(),
            values: LayerKeys::new(),
        }
    }

    /// Puts one layer on top. Within the layer, two exclusive keys are a conflict; across
    /// layers, the higher one replaces its lower partner (empty strings count as unset).
    fn apply(&mut self, layer: LayerKeys) -> Result<(), ConfigError> {
        for (section, first, second) in EXCLUSIVE {
            if *section != self.section {
                continue;
            }
            if let (Some(a), Some(b)) = (layer.get(first), layer.get(second)) {
                if !a.is_empty_text() && !b.is_empty_text() {
                    return Err(ConfigError::Conflict {
                        first: a.at.clone(),
                        second: b.at.clone(),
                    });
                }
            }
        }
        for (key, value) in layer {
            if !value.is_empty_text() {
                for partner in exclusive_partners(self.section, key) {
                    self.values.remove(partner);
                }
            }
            self.values.insert(key, value);
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Option<&RawValue> {
        self.values.get(key)
    }

    /// `mqtt.base_topic` for messages about a key that was not given.
    fn key_path(&self, key: &str) -> String {
        format!("{}.{key}", self.label)
    }

    /// The value as a string, with an empty one meaning "not given".
    fn optional_text(&self, key: &str) -> Result<Option<(&str, &RawValue)>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(raw) => {
                let text = raw.text("a string")?;
                Ok((!text.is_empty()).then_some((text, raw)))
            }
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        self.get(key).map_or(Ok(default), RawValue::boolean)
    }

    fn duration_or(&self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        self.get(key).map_or(Ok(default), RawValue::duration)
    }

    /// A string that must not be empty, with a default when not given.
    fn nonempty_text_or(&self, key: &str, default: &str) -> Result<String, ConfigError> {
        match self.get(key) {
            None => Ok(default.to_owned()),
            Some(raw) => {
                let text = raw.text("a string")?;
                if text.trim().is_empty() {
                    return Err(raw.invalid("must not be empty"));
                }
                Ok(text.to_owned())
            }
        }
    }
}

fn exclusive_partners(section: &str, key: &str) -> Vec<&'static str> {
    EXCLUSIVE
        .iter()
        .filter(|(s, _, _)| *s == section)
        .filter_map(|(_, a, b)| {
            if *a == key {
                Some(*b)
            } else if *b == key {
                Some(*a)
            } else {
                None
            }
        })
        .collect()
}

/// One item of a list value.
enum ListItem {
    Text(String),
    Integer(i64),
}

impl RawValue {
    fn invalid(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: self.at.clone(),
            reason: reason.into(),
        }
    }

    /// The value as shown after "got" in messages. Never called for secret keys.
    fn shown(&self) -> String {
        match &self.kind {
            RawKind::Toml(kind) => describe_toml(kind),
            RawKind::Env(text) => format!("{text:?}"),
        }
    }

    fn is_empty_text(&self) -> bool {
        match &self.kind {
            RawKind::Toml(ValueKind::String(text)) | RawKind::Env(text) => text.trim().is_empty(),
            RawKind::Toml(_) => false,
        }
    }

    /// A string value; anything else is refused showing what was given.
    fn text(&self, expected: &str) -> Result<&str, ConfigError> {
        match &self.kind {
            RawKind::Toml(ValueKind::String(text)) | RawKind::Env(text) => Ok(text),
            RawKind::Toml(_) => {
                Err(self.invalid(format!("expected {expected}, got {}", self.shown())))
            }
        }
    }

    /// A string value of a secret key: a type error names the type, never the value.
    fn secret_text(&self) -> Result<&str, ConfigError> {
        match &self.kind {
            RawKind::Toml(ValueKind::String(text)) | RawKind::Env(text) => Ok(text),
            RawKind::Toml(other) => Err(self.invalid(format!(
                "expected a string, got {} (value not shown)",
                toml_type_name(other)
            ))),
        }
    }

    fn boolean(&self) -> Result<bool, ConfigError> {
        let text = match &self.kind {
            RawKind::Toml(ValueKind::Boolean(value)) => return Ok(*value),
            RawKind::Toml(ValueKind::I64(0)) => return Ok(false),
            RawKind::Toml(ValueKind::I64(1)) => return Ok(true),
            RawKind::Toml(ValueKind::String(text)) | RawKind::Env(text) => text,
            RawKind::Toml(_) => "",
        };
        match text.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(self.invalid(format!(
                "expected a boolean (true or false), got {}",
                self.shown()
            ))),
        }
    }

    /// A humantime duration ("10s", "2m", "1h30m"), greater than zero.
    fn duration(&self) -> Result<Duration, ConfigError> {
        let expected = "expected a duration like \"10s\"";
        let (RawKind::Toml(ValueKind::String(text)) | RawKind::Env(text)) = &self.kind else {
            return Err(self.invalid(format!("{expected}, got {}", self.shown())));
        };
        let duration = humantime::parse_duration(text.trim())
            .map_err(|error| self.invalid(format!("{expected}, got {} ({error})", self.shown())))?;
        if duration.is_zero() {
            return Err(self.invalid(format!("must be greater than 0, got {}", self.shown())));
        }
        Ok(duration)
    }

    /// A list: a TOML array, or comma-separated text (env, or a TOML string). Empty items
    /// from stray commas are dropped.
    fn list(&self) -> Result<Vec<(String, ListItem)>, ConfigError> {
        let split = |text: &str| {
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .enumerate()
                .map(|(index, item)| {
                    (
                        format!("{}[{index}]", self.at),
                        ListItem::Text(item.to_owned()),
                    )
                })
                .collect()
        };
        match &self.kind {
            RawKind::Env(text) | RawKind::Toml(ValueKind::String(text)) => Ok(split(text)),
            RawKind::Toml(ValueKind::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(index, item)| {
                    let at = format!("{}[{index}]", self.at);
                    match &item.kind {
                        ValueKind::String(text) => Ok((at, ListItem::Text(text.trim().to_owned()))),
                        ValueKind::I64(number) => Ok((at, ListItem::Integer(*number))),
                        other => Err(ConfigError::Invalid {
                            key: at,
                            reason: format!("expected a string, got {}", describe_toml(other)),
                        }),
                    }
                })
                .collect(),
            RawKind::Toml(_) => Err(self.invalid(format!(
                "expected a list like [\"a\", \"b\"], got {}",
                self.shown()
            ))),
        }
    }
}

fn describe_toml(kind: &ValueKind) -> String {
    match kind {
        ValueKind::Nil => "nothing".into(),
        ValueKind::Boolean(value) => value.to_string(),
        ValueKind::I64(value) => value.to_string(),
        ValueKind::I128(value) => value.to_string(),
        ValueKind::U64(value) => value.to_string(),
        ValueKind::U128(value) => value.to_string(),
        ValueKind::Float(value) => value.to_string(),
        ValueKind::String(value) => format!("{value:?}"),
        ValueKind::Array(_) => "an array".into(),
        ValueKind::Table(_) => "a table".into(),
    }
}

fn toml_type_name(kind: &ValueKind) -> &'static str {
    match kind {
        ValueKind::Nil => "nothing",
        ValueKind::Boolean(_) => "a boolean",
        ValueKind::I64(_) | ValueKind::I128(_) | ValueKind::U64(_) | ValueKind::U128(_) => {
            "an integer"
        }
        ValueKind::Float(_) => "a float",
        ValueKind::String(_) => "a string",
        ValueKind::Array(_) => "an array",
        ValueKind::Table(_) => "a table",
    }
}

// ---------------------------------------------------------------------------------------
// Layering and validation.
// ---------------------------------------------------------------------------------------

/// Defaults < file < environment, still raw.
struct Merged {
    clusters: Vec<RawSection>,
    sections: BTreeMap<&'static str, RawSection>,
}

impl Merged {
    fn new(mut file: FileLayer, mut env: EnvLayer) -> Result<Merged, ConfigError> {
        let mut sections = BTreeMap::new();
        for (section, _) in SECTIONS.iter().filter(|(name, _)| *name != "proxmox") {
            let mut raw = RawSection::new(section, *section);
            if let Some(layer) = file.sections.remove(section) {
                raw.apply(layer)?;
            }
            if let Some(layer) = env.sections.remove(section) {
                raw.apply(layer)?;
            }
            sections.insert(*section, raw);
        }

        let mut clusters = Vec::new();
        for (label, layer) in file.clusters {
            let mut raw = RawSection::new("proxmox", label);
            raw.apply(layer)?;
            clusters.push(raw);
        }
        // Names as written in the file, to route PVE2MQTT_PROXMOX__<NAME>__<KEY>.
        let file_names: Vec<Option<String>> = clusters
            .iter()
            .map(|cluster| match cluster.get("name").map(|raw| &raw.kind) {
                Some(RawKind::Toml(ValueKind::String(name))) => Some(name.clone()),
                _ => None,
            })
            .collect();

        if let Some(layer) = env.sections.remove("proxmox") {
            match clusters.len() {
                0 => {
                    let mut raw = RawSection::new("proxmox", "proxmox");
                    raw.apply(layer)?;
                    clusters.push(raw);
                }
                1 => clusters[0].apply(layer)?,
                count => {
                    if let Some(first) = layer.into_values().next() {
                        let key = first.at.split("__").last().unwrap_or_default().to_owned();
                        return Err(ConfigError::EnvVar {
                            var: first.at,
                            reason: format!(
                                "{count} [[proxmox]] clusters are configured, so name the one \
                                 meant: PVE2MQTT_PROXMOX__<NAME>__{key}"
                            ),
                        });
                    }
                }
            }
        }

        let mut named_layers: BTreeMap<usize, LayerKeys> = BTreeMap::new();
        for (name, key, raw) in env.named_clusters {
            let matches: Vec<usize> = file_names
                .iter()
                .enumerate()
                .filter(|(_, file_name)| {
                    file_name
                        .as_deref()
                        .is_some_and(|file_name| file_name.eq_ignore_ascii_case(&name))
                })
                .map(|(index, _)| index)
                .collect();
            let index = match matches.as_slice() {
                [index] => *index,
                [] => {
                    return Err(ConfigError::EnvVar {
                        var: raw.at,
                        reason: format!(
                            "no [proxmox] cluster in the config file has the name `{name}`"
                        ),
                    })
                }
                _ => {
                    return Err(ConfigError::EnvVar {
                        var: raw.at,
                        reason: format!(
                            "several clusters are named `{name}` (ignoring case); \
                             cluster names must be unique"
                        ),
                    })
                }
            };
            named_layers.entry(index).or_default().insert(key, raw);
        }
        for (index, layer) in named_layers {
            clusters[index].apply(layer)?;
        }

        Ok(Merged { clusters, sections })
    }

    fn section(&self, name: &str) -> &RawSection {
        // Every non-proxmox schema section is inserted by `Merged::new`, even when empty.
        &self.sections[name]
    }

    fn build(self) -> Result<Config, ConfigError> {
        if self.clusters.is_empty() {
            return Err(ConfigError::Missing {
                key: "proxmox".into(),
                hint: "no Proxmox cluster is configured; add a [proxmox] section with url and \
                       token, or set PVE2MQTT_PROXMOX__URL and PVE2MQTT_PROXMOX__TOKEN"
                    .into(),
            });
        }
        let clusters = self
            .clusters
            .iter()
            .map(build_cluster)
            .collect::<Result<Vec<_>, _>>()?;
        check_cluster_names(&self.clusters, &clusters)?;
        Ok(Config {
            clusters,
            poll: build_poll(self.section("poll"))?,
            mqtt: build_mqtt(self.section("mqtt"))?,
            homeassistant: build_homeassistant(self.section("homeassistant"))?,
            commands: build_commands(self.section("commands"))?,
            backup: build_backup(self.section("backup"))?,
        })
    }
}

fn build_cluster(raw: &RawSection) -> Result<ProxmoxConfig, ConfigError> {
    let urls = match (raw.get("url"), raw.get("urls")) {
        (Some(url), _) if !url.is_empty_text() => {
            let text = url.text("a URL string like \"https://pve.example.lan:8006\"")?;
            vec![parse_proxmox_url(text).map_err(|reason| url.invalid(reason))?]
        }
        (_, Some(urls)) if !urls.is_empty_text() => {
            let items = urls.list()?;
            if items.is_empty() {
                return Err(urls.invalid("must list at least one URL"));
            }
            let mut parsed = Vec::with_capacity(items.len());
            for (at, item) in items {
                let ListItem::Text(text) = item else {
                    return Err(ConfigError::Invalid {
                        key: at,
                        reason: "expected a URL string like \"https://pve.example.lan:8006\""
                            .into(),
                    });
                };
                parsed.push(
                    parse_proxmox_url(&text)
                        .map_err(|reason| ConfigError::Invalid { key: at, reason })?,
                );
            }
            parsed
        }
        _ => {
            return Err(ConfigError::Missing {
                key: raw.key_path("url"),
                hint: "give the Proxmox API address, e.g. url = \"https://pve.example.lan:8006\" \
                       (or urls = [...] for failover, or PVE2MQTT_PROXMOX__URL)"
                    .into(),
            })
        }
    };

    let token = match (raw.get("token"), raw.get("token_file")) {
        (Some(token), _) if !token.is_empty_text() => {
            parse_token(token.secret_text()?).map_err(|reason| token.invalid(reason))?
        }
        (_, Some(file)) if !file.is_empty_text() => {
            let (path, contents) = read_secret_file(file)?;
            if contents.trim().is_empty() {
                return Err(ConfigError::UnreadableFile {
                    key: file.at.clone(),
                    path,
                    reason: "the file is empty".into(),
                });
            }
            parse_token(&contents).map_err(|reason| {
                file.invalid(format!(
                    "the contents of `{}` are not an API token: {reason}",
                    path.display()
                ))
            })?
        }
        _ => {
            return Err(ConfigError::Missing {
                key: raw.key_path("token"),
                hint: format!(
                    "{TOKEN_SHAPE}; or token_file for a Docker secret, or PVE2MQTT_PROXMOX__TOKEN"
                ),
            })
        }
    };

    let ca_file = match raw.optional_text("ca_file")? {
        Some((path, at)) => Some(check_ca_file(at, path)?),
        None => None,
    };
    let fingerprint = match raw.optional_text("fingerprint")? {
        Some((text, at)) => Some(parse_fingerprint(text).map_err(|reason| at.invalid(reason))?),
        None => None,
    };
    let name = match raw.optional_text("name")? {
        Some((text, at)) => {
            check_cluster_name(text).map_err(|reason| at.invalid(reason))?;
            Some(text.to_owned())
        }
        None => None,
    };

    Ok(ProxmoxConfig {
        urls,
        token,
        tls_verify: raw.bool_or("tls_verify", true)?,
        ca_file,
        fingerprint,
        name,
        timeout: raw.duration_or("timeout", DEFAULT_PROXMOX_TIMEOUT)?,
    })
}

/// With several clusters each needs a name, and names must differ (ignoring case, because
/// the environment addresses clusters case-insensitively).
fn check_cluster_names(raw: &[RawSection], clusters: &[ProxmoxConfig]) -> Result<(), ConfigError> {
    if clusters.len() < 2 {
        return Ok(());
    }
    for (index, cluster) in clusters.iter().enumerate() {
        let Some(name) = &cluster.name else {
            return Err(ConfigError::Missing {
                key: raw[index].key_path("name"),
                hint: "every [[proxmox]] cluster needs its own name when several are configured"
                    .into(),
            });
        };
        if let Some(earlier) = clusters[..index].iter().position(|other| {
            other
                .name
                .as_deref()
                .is_some_and(|other| other.eq_ignore_ascii_case(name))
        }) {
            let at = raw[index]
                .get("name")
                .map_or_else(|| raw[index].key_path("name"), |value| value.at.clone());
            return Err(ConfigError::Invalid {
                key: at,
                reason: format!(
                    "`{name}` is already the name of {}; cluster names must be unique \
                     (compared ignoring case)",
                    raw[earlier].label
                ),
            });
        }
    }
    Ok(())
}

fn build_poll(raw: &RawSection) -> Result<PollConfig, ConfigError> {
    let interval = raw.duration_or("interval", DEFAULT_POLL_INTERVAL)?;
    if interval < MIN_POLL_INTERVAL {
        // `interval` can only be below the default when it was given.
        let at = raw.get("interval").map_or("poll.interval", |raw| &raw.at);
        return Err(ConfigError::Invalid {
            key: at.into(),
            reason: format!(
                "must be at least 1s, got {}",
                humantime::format_duration(interval)
            ),
        });
    }
    let slow_interval = match raw.get("slow_interval") {
        // Raising `interval` above the default should not force setting this too.
        None => DEFAULT_SLOW_INTERVAL.max(interval),
        Some(value) => {
            let slow = value.duration()?;
            if slow < interval {
                return Err(value.invalid(format!(
                    "must be at least poll.interval ({}), got {}",
                    humantime::format_duration(interval),
                    humantime::format_duration(slow)
                )));
            }
            slow
        }
    };
    Ok(PollConfig {
        interval,
        slow_interval,
    })
}

fn build_mqtt(raw: &RawSection) -> Result<MqttConfig, ConfigError> {
    let (url, host, port, tls) = match raw.get("url") {
        None => {
            // The default is a constant known to parse; going through the parser keeps one
            // source of truth for host, port and TLS.
            let (host, port, tls) =
                parse_mqtt_url(DEFAULT_MQTT_URL).map_err(|reason| ConfigError::Invalid {
                    key: "mqtt.url".into(),
                    reason,
                })?;
            (DEFAULT_MQTT_URL.to_owned(), host, port, tls)
        }
        Some(value) => {
            let text = value
                .text("a URL string like \"mqtt://127.0.0.1:1883\"")?
                .trim();
            let (host, port, tls) = parse_mqtt_url(text).map_err(|reason| value.invalid(reason))?;
            (text.to_owned(), host, port, tls)
        }
    };
    let username = raw
        .optional_text("username")?
        .map(|(text, _)| text.to_owned());
    let password = match (raw.get("password"), raw.get("password_file")) {
        (Some(password), _) if !password.is_empty_text() => {
            Some(Secret::new(password.secret_text()?))
        }
        (_, Some(file)) if !file.is_empty_text() => {
            let (_, contents) = read_secret_file(file)?;
            // An empty file means no password, like an empty `password`.
            (!contents.is_empty()).then(|| Secret::new(contents))
        }
        _ => None,
    };
    let client_id = raw.nonempty_text_or("client_id", "pve2mqtt")?;
    let base_topic = raw.nonempty_text_or("base_topic", "pve2mqtt")?;
    check_topic_root(&base_topic).map_err(|reason| invalid_at(raw, "base_topic", reason))?;
    let ca_file = match raw.optional_text("ca_file")? {
        Some((path, at)) => Some(check_ca_file(at, path)?),
        None => None,
    };
    Ok(MqttConfig {
        url,
        host,
        port,
        tls,
        username,
        password,
        client_id,
        base_topic,
        ca_file,
    })
}

/// An error about `key` of `raw`, named where it was given (it was, if it is invalid).
fn invalid_at(raw: &RawSection, key: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        key: raw
            .get(key)
            .map_or_else(|| raw.key_path(key), |value| value.at.clone()),
        reason,
    }
}

fn build_homeassistant(raw: &RawSection) -> Result<HaConfig, ConfigError> {
    let discovery_prefix = raw.nonempty_text_or("discovery_prefix", "homeassistant")?;
    check_topic_root(&discovery_prefix)
        .map_err(|reason| invalid_at(raw, "discovery_prefix", reason))?;
    Ok(HaConfig {
        discovery: raw.bool_or("discovery", true)?,
        discovery_prefix,
    })
}

fn build_commands(raw: &RawSection) -> Result<CommandsConfig, ConfigError> {
    let allow = match raw.get("allow") {
        None => Vec::new(),
        Some(value) => value
            .list()?
            .into_iter()
            .map(|(at, item)| {
                parse_allow_rule(item).map_err(|reason| ConfigError::Invalid { key: at, reason })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(CommandsConfig {
        enabled: raw.bool_or("enabled", true)?,
        read_only: raw.bool_or("read_only", false)?,
        allow,
    })
}

fn build_backup(raw: &RawSection) -> Result<BackupConfig, ConfigError> {
    let storage = raw.nonempty_text_or("storage", "local")?.trim().to_owned();
    if !storage
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid_at(
            raw,
            "storage",
            format!("`{storage}` is not a Proxmox storage id (letters, digits, `-`, `_`, `.`)"),
        ));
    }
    let mode = match raw.get("mode") {
        None => "snapshot".to_owned(),
        Some(value) => {
            let text = value
                .text("one of snapshot, suspend, stop")?
                .trim()
                .to_ascii_lowercase();
            if !matches!(text.as_str(), "snapshot" | "suspend" | "stop") {
                return Err(value.invalid(format!(
                    "expected one of snapshot, suspend, stop, got {}",
                    value.shown()
                )));
            }
            text
        }
    };
    let compress = match raw.get("compress") {
        None => "zstd".to_owned(),
        Some(value) => {
            let text = match &value.kind {
                RawKind::Toml(ValueKind::I64(number)) => number.to_string(),
                RawKind::Toml(ValueKind::String(text)) | RawKind::Env(text) => {
                    text.trim().to_ascii_lowercase()
                }
                RawKind::Toml(_) => String::new(),
            };
            if !matches!(text.as_str(), "0" | "1" | "gzip" | "lzo" | "zstd") {
                return Err(value.invalid(format!(
                    "expected one of 0, 1, gzip, lzo, zstd, got {}",
                    value.shown()
                )));
            }
            text
        }
    };
    Ok(BackupConfig {
        storage,
        mode,
        compress,
    })
}

// ---------------------------------------------------------------------------------------
// Value parsers. They return a reason without the key; the caller adds the key.
// ---------------------------------------------------------------------------------------

/// `https://host:8006` without a trailing `/`. The bridge appends `/api2/json` itself, so a
/// pasted API path is refused with that explanation rather than doubled.
fn parse_proxmox_url(text: &str) -> Result<String, String> {
    let text = text.trim();
    let example = "e.g. https://pve.example.lan:8006";
    let url = reqwest::Url::parse(text).map_err(|error| {
        if text.contains('@') {
            format!("not a valid URL ({error}); {example}")
        } else {
            format!("`{text}` is not a valid URL ({error}); {example}")
        }
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the URL must start with https:// (or http://), {example}"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "the URL must not contain a user name or password; the API token goes in proxmox.token"
                .into(),
        );
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("the URL has no host, {example}"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "the URL must not have a query or fragment, {example}"
        ));
    }
    let path = url.path();
    if path != "/" && !path.is_empty() {
        return Err(if path.contains("api2") {
            format!(
                "give the base URL without `{path}`: pve2mqtt adds /api2/json itself ({example})"
            )
        } else {
            format!("the URL must not have a path (got `{path}`), {example}")
        });
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// `mqtt://host[:1883]` or `mqtts://host[:8883]` -> (host, port, tls). The host is returned
/// without IPv6 brackets, as socket APIs want it.
fn parse_mqtt_url(text: &str) -> Result<(String, u16, bool), String> {
    let example = "e.g. mqtt://127.0.0.1:1883 or mqtts://broker.lan:8883";
    let url = reqwest::Url::parse(text).map_err(|error| {
        if text.contains('@') {
            format!("not a valid URL ({error}); {example}")
        } else {
            format!("`{text}` is not a valid URL ({error}); {example}")
        }
    })?;
    let (tls, default_port) = match url.scheme() {
        "mqtt" => (false, 1883),
        "mqtts" => (true, 8883),
        other => {
            return Err(format!(
                "the scheme must be mqtt:// or mqtts:// (TLS), got `{other}://`; {example}"
            ))
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "the URL must not contain credentials; use mqtt.username and mqtt.password".into(),
        );
    }
    // `host_str` writes an IPv6 address in brackets, as in the URL.
    let host = match url.host_str() {
        Some(host) if !host.is_empty() => host.trim_start_matches('[').trim_end_matches(']'),
        _ => return Err(format!("the URL has no host; {example}")),
    }
    .to_owned();
    if url.query().is_some() || url.fragment().is_some() || !matches!(url.path(), "" | "/") {
        return Err(format!(
            "the URL must not have a path, query or fragment; {example}"
        ));
    }
    let port = url.port().unwrap_or(default_port);
    if port == 0 {
        return Err("the port must be between 1 and 65535".into());
    }
    Ok((host, port, tls))
}

/// `USER@REALM!TOKENID=SECRET`. Reasons describe the expected shape and never echo the value
/// (any part of it might be the secret, pasted in the wrong place).
fn parse_token(text: &str) -> Result<ApiToken, String> {
    let text = text.trim();
    // `get` rather than slicing: the text may be non-ASCII, and a slice could split a char.
    if text
        .get(.."PVEAPIToken=".len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("PVEAPIToken="))
    {
        return Err(format!(
            "{TOKEN_SHAPE}; drop the `PVEAPIToken=` prefix, that is the HTTP header form \
             (value not shown)"
        ));
    }
    let Some((user, rest)) = text.split_once('!') else {
        return Err(format!(
            "{TOKEN_SHAPE}; the `!TOKENID` part is missing (value not shown; a secret alone is \
             not enough, Proxmox needs the user and token id too)"
        ));
    };
    let Some((token_id, secret)) = rest.split_once('=') else {
        return Err(format!(
            "{TOKEN_SHAPE}; the `=SECRET` part is missing (value not shown)"
        ));
    };
    let user_ok = user.split_once('@').is_some_and(|(name, realm)| {
        !name.is_empty()
            && !realm.is_empty()
            && !name.contains(|c: char| c.is_whitespace() || c == ':' || c == '/')
            && realm
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    });
    if !user_ok {
        return Err(format!(
            "{TOKEN_SHAPE}; the part before `!` must be USER@REALM (value not shown)"
        ));
    }
    if token_id.is_empty()
        || !token_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(format!(
            "{TOKEN_SHAPE}; the token id between `!` and `=` may only hold letters, digits, \
             `.`, `-` and `_` (value not shown)"
        ));
    }
    if secret.is_empty() || secret.contains(char::is_whitespace) {
        return Err(format!(
            "{TOKEN_SHAPE}; the secret after `=` is empty or contains spaces (value not shown)"
        ));
    }
    Ok(ApiToken {
        user: user.to_owned(),
        token_id: token_id.to_owned(),
        secret: Secret::new(secret),
    })
}

/// SHA-256 as 64 hex digits, or 32 colon-separated pairs (`AB:CD:…`), any case.
fn parse_fingerprint(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let expected = "expected the certificate's SHA-256 fingerprint: 32 bytes as hex, \
                    like AB:CD:EF:… (64 hex digits, with or without `:`)";
    let pairs: Vec<&str> = if text.contains(':') {
        text.split(':').collect()
    } else if text.len() % 2 == 0 && text.is_ascii() {
        (0..text.len())
            .step_by(2)
            .map(|i| &text[i..i + 2])
            .collect()
    } else {
        return Err(format!("{expected}, got `{text}`"));
    };
    if pairs.len() != 32 {
        return Err(format!("{expected}; got {} bytes in `{text}`", pairs.len()));
    }
    let mut bytes = [0u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(&pairs) {
        if pair.len() != 2 {
            return Err(format!("{expected}, got `{text}`"));
        }
        *byte = u8::from_str_radix(pair, 16).map_err(|_| format!("{expected}, got `{text}`"))?;
    }
    Ok(bytes)
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The cluster id goes into MQTT topics and Home Assistant unique ids, where `/`, `+`, `#`
/// and spaces would break things.
fn check_cluster_name(name: &str) -> Result<(), String> {
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    {
        Ok(())
    } else {
        Err(format!(
            "`{name}` may only contain letters, digits, `_` and `-` (it becomes part of MQTT \
             topics and Home Assistant ids)"
        ))
    }
}

/// A topic prefix we publish under: wildcards and NUL are illegal in published topics, and
/// empty levels from a stray `/` would make topics nobody subscribes to.
fn check_topic_root(topic: &str) -> Result<(), String> {
    if topic.contains(['+', '#']) {
        return Err(format!(
            "`{topic}` must not contain the MQTT wildcards `+` or `#`"
        ));
    }
    if topic.contains('\0') {
        return Err("must not contain a NUL character".into());
    }
    if topic.starts_with('/') || topic.ends_with('/') {
        return Err(format!("`{topic}` must not start or end with `/`"));
    }
    if topic.contains("//") {
        return Err(format!("`{topic}` must not contain an empty level (`//`)"));
    }
    Ok(())
}

fn parse_allow_rule(item: ListItem) -> Result<AllowRule, String> {
    let shape = "expected a vmid (100 to 999999999), `tag:NAME` or `pool:NAME`";
    let text = match item {
        ListItem::Integer(number) => return vmid_rule(i128::from(number), shape),
        ListItem::Text(text) => text,
    };
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        let number = text.parse::<i128>().unwrap_or(i128::MAX);
        return vmid_rule(number, shape);
    }
    let Some((kind, name)) = text.split_once(':') else {
        return Err(format!("entry `{text}`: {shape}"));
    };
    let name = name.trim();
    let name_ok = !name.is_empty()
        && !name.contains(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | ':'));
    match kind.trim().to_ascii_lowercase().as_str() {
        "tag" if name_ok => Ok(AllowRule::Tag(name.to_owned())),
        "pool" if name_ok => Ok(AllowRule::Pool(name.to_owned())),
        "tag" | "pool" => Err(format!(
            "entry `{text}`: the name after `{kind}:` must be non-empty, without spaces, `,`, `;` or `:`"
        )),
        _ => Err(format!("entry `{text}`: {shape}")),
    }
}

fn vmid_rule(number: i128, shape: &str) -> Result<AllowRule, String> {
    match u32::try_from(number) {
        Ok(vmid) if (100..=999_999_999).contains(&vmid) => Ok(AllowRule::Vmid(vmid)),
        _ => Err(format!("entry `{number}`: {shape}")),
    }
}

/// Reads a `*_file` secret (Docker secrets). Only a trailing newline is removed: editors and
/// `echo` add one, but other whitespace may be part of a password. Errors name the key and
/// the path, never the contents.
fn read_secret_file(raw: &RawValue) -> Result<(PathBuf, String), ConfigError> {
    let path = PathBuf::from(raw.text("a file path")?.trim());
    let contents = std::fs::read_to_string(&path).map_err(|error| ConfigError::UnreadableFile {
        key: raw.at.clone(),
        path: path.clone(),
        reason: error.to_string(),
    })?;
    let contents = contents.trim_end_matches(['\n', '\r']).to_owned();
    Ok((path, contents))
}

/// A CA file must exist, be readable and hold at least one PEM certificate: failing here,
/// at start-up with the key named, beats a TLS handshake error later.
fn check_ca_file(raw: &RawValue, text: &str) -> Result<PathBuf, ConfigError> {
    let path = PathBuf::from(text.trim());
    let unreadable = |reason: String| ConfigError::UnreadableFile {
        key: raw.at.clone(),
        path: path.clone(),
        reason,
    };
    if path.is_dir() {
        return Err(unreadable("it is a directory, expected a PEM file".into()));
    }
    let bytes = std::fs::read(&path).map_err(|error| unreadable(error.to_string()))?;
    let mut reader = bytes.as_slice();
    let mut certificates = 0;
    for certificate in rustls_pemfile::certs(&mut reader) {
        certificate.map_err(|error| unreadable(format!("not valid PEM: {error}")))?;
        certificates += 1;
    }
    if certificates == 0 {
        return Err(unreadable(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        ));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// Distinctive secrets: any test output containing them is a leak.
    const TOKEN_SECRET: &str = "S3CR3T-5f1b9c2e-do-not-leak";
    const PASSWORD: &str = "PW-S3CR3T-hunter2-do-not-leak";

    fn token() -> String {
        format!("pve2mqtt@pve!bridge={TOKEN_SECRET}")
    }

    fn minimal() -> String {
        format!(
            "[proxmox]\nurl = \"https://pve.example.lan:8006\"\ntoken = \"{}\"\n",
            token()
        )
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    fn load(toml: &str, pairs: &[(&str, &str)]) -> Config {
        match Config::from_toml_str(toml, &env(pairs)) {
            Ok(config) => config,
            Err(error) => panic!("config refused: {error}"),
        }
    }

    /// The error message, after checking it leaks neither secret (Display nor Debug).
    fn error(toml: &str, pairs: &[(&str, &str)]) -> String {
        let Err(error) = Config::from_toml_str(toml, &env(pairs)) else {
            panic!("config accepted:\n{toml}\n{pairs:?}");
        };
        let message = error.to_string();
        for shown in [&message, &format!("{error:?}")] {
            assert!(
                !shown.contains(TOKEN_SECRET),
                "token secret leaked: {shown}"
            );
            assert!(!shown.contains(PASSWORD), "password leaked: {shown}");
        }
        message
    }

    /// `minimal()` with extra sections appended.
    fn with(extra: &str) -> String {
        format!("{}\n{extra}", minimal())
    }

    fn temp_file(contents: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("create temp file");
        file.write_all(contents.as_bytes())
            .expect("write temp file");
        file
    }

    /// Enough PEM for the config check (the TLS module does the X.509 parsing).
    const PEM: &str = "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n";

    #[test]
    fn defaults_fill_every_key_but_the_proxmox_address_and_token() {
        let config = load(&minimal(), &[]);
        let [cluster] = config.clusters.as_slice() else {
            panic!("expected one cluster, got {}", config.clusters.len());
        };
        assert_eq!(cluster.urls, ["https://pve.example.lan:8006"]);
        assert_eq!(cluster.token.user, "pve2mqtt@pve");
        assert_eq!(cluster.token.token_id, "bridge");
        assert_eq!(cluster.token.secret.expose(), TOKEN_SECRET);
        assert!(cluster.tls_verify);
        assert_eq!(cluster.ca_file, None);
        assert_eq!(cluster.fingerprint, None);
        assert_eq!(cluster.name, None);
        assert_eq!(cluster.timeout, Duration::from_secs(10));
        assert_eq!(config.poll.interval, Duration::from_secs(10));
        assert_eq!(config.poll.slow_interval, Duration::from_secs(60));
        let mqtt = &config.mqtt;
        assert_eq!(mqtt.url, "mqtt://127.0.0.1:1883");
        assert_eq!(
            (mqtt.host.as_str(), mqtt.port, mqtt.tls),
            ("127.0.0.1", 1883, false)
        );
        assert_eq!(mqtt.username, None);
        assert!(mqtt.password.is_none());
        assert_eq!(mqtt.client_id, "pve2mqtt");
        assert_eq!(mqtt.base_topic, "pve2mqtt");
        assert_eq!(mqtt.ca_file, None);
        assert!(config.homeassistant.discovery);
        assert_eq!(config.homeassistant.discovery_prefix, "homeassistant");
        assert!(config.commands.enabled);
        assert!(!config.commands.read_only);
        assert!(config.commands.allow.is_empty());
        assert_eq!(config.backup.storage, "local");
        assert_eq!(config.backup.mode, "snapshot");
        assert_eq!(config.backup.compress, "zstd");
    }

    #[test]
    fn the_spec_example_file_loads() {
        let ca = temp_file(PEM);
        let fingerprint = ["ab"; 32].join(":");
        // SPEC §2 verbatim, except the CA path (must exist) and the elided fingerprint.
        let spec = format!(
            r#"
[proxmox]
url = "https://pve.example.lan:8006"      # several for failover: urls = ["https://a:8006", "https://b:8006"]
token = "pve2mqtt@pve!bridge=xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"   # USER@REALM!TOKENID=SECRET
tls_verify = true                          # default true
ca_file = "{ca}"  # optional: trust this CA (Proxmox's own pve-root-ca.pem)
fingerprint = "{fingerprint}"                    # optional: pin the server certificate's SHA-256 fingerprint
name = "home"                              # cluster id used in topics and unique ids; default: the
                                           # cluster's name, or the node's name on a standalone host
timeout = "10s"

[poll]
interval = "10s"          # fast lane: cluster-wide state
slow_interval = "60s"     # slow lane: node details, backups, tasks

[mqtt]
url = "mqtt://127.0.0.1:1883"   # mqtts:// for TLS
username = ""
password = ""
client_id = "pve2mqtt"
base_topic = "pve2mqtt"
ca_file = ""                    # for mqtts with a private CA

[homeassistant]
discovery = true
discovery_prefix = "homeassistant"

[commands]
enabled = true
read_only = false               # true: no command reaches Proxmox, every one is rejected
allow = []                      # empty = every guest; else entries like "100", "tag:ha-control", "pool:home"

[backup]                        # defaults for backups asked for without options
storage = "local"
mode = "snapshot"
compress = "zstd"
"#,
            ca = ca.path().display()
        );
        let config = load(&spec, &[]);
        let cluster = &config.clusters[0];
        assert_eq!(cluster.token.id(), "pve2mqtt@pve!bridge");
        assert_eq!(cluster.ca_file.as_deref(), Some(ca.path()));
        assert_eq!(cluster.fingerprint, Some([0xab; 32]));
        assert_eq!(cluster.name.as_deref(), Some("home"));
        assert_eq!(config.mqtt.username, None, "empty username means none");
        assert!(config.mqtt.password.is_none(), "empty password means none");
        assert_eq!(config.mqtt.ca_file, None, "empty ca_file means none");
        assert!(config.commands.allow.is_empty());
    }

    #[test]
    fn the_sample_fixture_files_load() {
        let full = load(include_str!("../tests/fixtures/config/full.toml"), &[]);
        assert_eq!(
            full.clusters[0].urls,
            [
                "https://pve1.example.lan:8006",
                "https://pve2.example.lan:8006"
            ]
        );
        assert_eq!((full.mqtt.port, full.mqtt.tls), (8883, true));
        assert_eq!(full.poll.slow_interval, Duration::from_secs(120));
        assert_eq!(
            full.commands.allow,
            [
                AllowRule::Vmid(100),
                AllowRule::Tag("ha-control".into()),
                AllowRule::Pool("home".into())
            ]
        );
        load(include_str!("../tests/fixtures/config/minimal.toml"), &[]);
        // The lab cluster's token_file does not exist here: give its token by name instead,
        // which also shows the env layer replacing a file `token_file`.
        let clusters = load(
            include_str!("../tests/fixtures/config/clusters.toml"),
            &[("PVE2MQTT_PROXMOX__LAB__TOKEN", &token())],
        );
        assert_eq!(clusters.clusters.len(), 2);
        assert!(!clusters.clusters[1].tls_verify);
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let file = with(
            "[poll]\ninterval = \"30s\"\n[mqtt]\nbase_topic = \"from-file\"\n[homeassistant]\ndiscovery = true\n",
        );
        let config = load(
            &file,
            &[
                ("PVE2MQTT_POLL__INTERVAL", "2s"),
                ("PVE2MQTT_MQTT__BASE_TOPIC", "from-env"),
                ("PVE2MQTT_HOMEASSISTANT__DISCOVERY", "false"),
                ("PVE2MQTT_PROXMOX__TLS_VERIFY", "false"),
                ("PVE2MQTT_PROXMOX__TIMEOUT", "1m"),
                ("PVE2MQTT_COMMANDS__READ_ONLY", "true"),
            ],
        );
        assert_eq!(config.poll.interval, Duration::from_secs(2));
        assert_eq!(config.mqtt.base_topic, "from-env");
        assert!(!config.homeassistant.discovery);
        assert!(!config.clusters[0].tls_verify);
        assert_eq!(config.clusters[0].timeout, Duration::from_secs(60));
        assert!(config.commands.read_only);
    }

    #[test]
    fn env_urls_replace_a_file_url_in_failover_order() {
        let config = load(
            &minimal(),
            &[("PVE2MQTT_PROXMOX__URLS", "https://b:8006, https://a:8006/,")],
        );
        assert_eq!(
            config.clusters[0].urls,
            ["https://b:8006", "https://a:8006"]
        );
    }

    #[test]
    fn env_alone_is_a_complete_config() {
        let token = token();
        let vars = env(&[
            ("PVE2MQTT_PROXMOX__URL", "https://10.0.0.5:8006"),
            ("PVE2MQTT_PROXMOX__TOKEN", &token),
            ("PVE2MQTT_MQTT__URL", "mqtt://broker:1884"),
            ("PVE2MQTT_COMMANDS__ALLOW", "100, tag:x,pool:home"),
            ("PVE2MQTT_CONFIG", "/ignored/because/it/belongs/to/the/cli"),
            ("PATH", "/usr/bin"),
        ]);
        let config = match Config::load_with_env(None, &vars) {
            Ok(config) => config,
            Err(error) => panic!("{error}"),
        };
        assert_eq!(config.clusters[0].urls, ["https://10.0.0.5:8006"]);
        assert_eq!(
            (config.mqtt.host.as_str(), config.mqtt.port),
            ("broker", 1884)
        );
        assert_eq!(
            config.commands.allow,
            [
                AllowRule::Vmid(100),
                AllowRule::Tag("x".into()),
                AllowRule::Pool("home".into())
            ]
        );
    }

    #[test]
    fn env_sections_and_keys_are_case_insensitive() {
        let config = load(
            &minimal(),
            &[
                ("PVE2MQTT_Mqtt__base_Topic", "mixed"),
                ("PVE2MQTT_poll__SLOW_INTERVAL", "5m"),
            ],
        );
        assert_eq!(config.mqtt.base_topic, "mixed");
        assert_eq!(config.poll.slow_interval, Duration::from_secs(300));
    }

    #[test]
    fn booleans_accept_the_usual_spellings_from_env_and_file() {
        for (text, expected) in [
            ("true", true),
            ("False", false),
            ("1", true),
            ("0", false),
            ("yes", true),
            ("off", false),
        ] {
            let config = load(&minimal(), &[("PVE2MQTT_COMMANDS__ENABLED", text)]);
            assert_eq!(config.commands.enabled, expected, "{text}");
        }
        let config = load(&with("[commands]\nenabled = \"false\"\n"), &[]);
        assert!(!config.commands.enabled);
        let message = error(&minimal(), &[("PVE2MQTT_COMMANDS__ENABLED", "maybe")]);
        assert_eq!(
            message,
            "PVE2MQTT_COMMANDS__ENABLED: expected a boolean (true or false), got \"maybe\""
        );
        let message = error(&with("[homeassistant]\ndiscovery = 2\n"), &[]);
        assert_eq!(
            message,
            "homeassistant.discovery: expected a boolean (true or false), got 2"
        );
    }

    #[test]
    fn the_file_can_be_loaded_from_a_path_and_a_missing_one_is_named() {
        let file = temp_file(&minimal());
        let config = match Config::load_with_env(Some(file.path()), &HashMap::new()) {
            Ok(config) => config,
            Err(error) => panic!("{error}"),
        };
        assert_eq!(config.clusters.len(), 1);

        let missing = Path::new("/nonexistent/pve2mqtt.toml");
        let Err(error) = Config::load(Some(missing)) else {
            panic!("a missing file was accepted");
        };
        assert!(matches!(error, ConfigError::ReadFile { .. }));
        assert!(
            error.to_string().contains("/nonexistent/pve2mqtt.toml"),
            "{error}"
        );
    }

    #[test]
    fn token_file_is_read_and_its_trailing_newline_dropped() {
        let secret = temp_file(&format!("{}\n", token()));
        let toml = format!(
            "[proxmox]\nurl = \"https://pve:8006\"\ntoken_file = \"{}\"\n",
            secret.path().display()
        );
        let config = load(&toml, &[]);
        assert_eq!(config.clusters[0].token.secret.expose(), TOKEN_SECRET);
    }

    #[test]
    fn password_file_is_read_keeping_inner_spaces() {
        let secret = temp_file(&format!(" {PASSWORD} \r\n"));
        let path = secret.path().display().to_string();
        let config = load(
            &minimal(),
            &[
                ("PVE2MQTT_MQTT__PASSWORD_FILE", &path),
                ("PVE2MQTT_MQTT__USERNAME", "bridge"),
            ],
        );
        let password = config.mqtt.password.as_ref().map(Secret::expose);
        assert_eq!(password, Some(format!(" {PASSWORD} ").as_str()));
        assert_eq!(config.mqtt.username.as_deref(), Some("bridge"));
    }

    #[test]
    fn an_env_token_file_replaces_the_file_token() {
        let secret = temp_file("other@pve!id=abc\n");
        let path = secret.path().display().to_string();
        let config = load(&minimal(), &[("PVE2MQTT_PROXMOX__TOKEN_FILE", &path)]);
        assert_eq!(config.clusters[0].token.id(), "other@pve!id");
        // An empty variable (e.g. an unset compose variable) does not clear the file token.
        let config = load(&minimal(), &[("PVE2MQTT_PROXMOX__TOKEN_FILE", "")]);
        assert_eq!(config.clusters[0].token.secret.expose(), TOKEN_SECRET);
    }

    #[test]
    fn token_and_token_file_together_are_a_conflict() {
        let message = error(&with_proxmox_key("token_file = \"/run/secrets/x\""), &[]);
        assert_eq!(
            message,
            "`proxmox.token` and `proxmox.token_file` are both set; give only one of them"
        );
        let message = error(
            "",
            &[
                ("PVE2MQTT_PROXMOX__URL", "https://pve:8006"),
                ("PVE2MQTT_PROXMOX__TOKEN", &token()),
                ("PVE2MQTT_PROXMOX__TOKEN_FILE", "/run/secrets/x"),
            ],
        );
        assert!(
            message.contains("PVE2MQTT_PROXMOX__TOKEN` and `PVE2MQTT_PROXMOX__TOKEN_FILE"),
            "{message}"
        );
        let message = error(
            &with(&format!(
                "[mqtt]\npassword = \"{PASSWORD}\"\npassword_file = \"/x\"\n"
            )),
            &[],
        );
        assert!(
            message.contains("`mqtt.password` and `mqtt.password_file`"),
            "{message}"
        );
    }

    /// `minimal()` with one more line in its `[proxmox]` table.
    fn with_proxmox_key(line: &str) -> String {
        format!("{}{line}\n", minimal())
    }

    #[test]
    fn an_unreadable_secret_file_names_the_key_and_the_path() {
        let message = error(
            "[proxmox]\nurl = \"https://pve:8006\"\ntoken_file = \"/nonexistent/token\"\n",
            &[],
        );
        assert!(
            message.starts_with("proxmox.token_file: cannot read `/nonexistent/token`"),
            "{message}"
        );
        let message = error(
            &minimal(),
            &[("PVE2MQTT_MQTT__PASSWORD_FILE", "/nonexistent/pw")],
        );
        assert!(
            message.starts_with("PVE2MQTT_MQTT__PASSWORD_FILE: cannot read `/nonexistent/pw`"),
            "{message}"
        );
        let empty = temp_file("\n");
        let toml = format!(
            "[proxmox]\nurl = \"https://pve:8006\"\ntoken_file = \"{}\"\n",
            empty.path().display()
        );
        assert!(error(&toml, &[]).contains("the file is empty"));
    }

    #[test]
    fn a_token_file_with_a_bad_token_does_not_echo_it() {
        let secret = temp_file(&format!("{TOKEN_SECRET}\n"));
        let toml = format!(
            "[proxmox]\nurl = \"https://pve:8006\"\ntoken_file = \"{}\"\n",
            secret.path().display()
        );
        let message = error(&toml, &[]);
        assert!(
            message.starts_with("proxmox.token_file: the contents of"),
            "{message}"
        );
        assert!(message.contains("USER@REALM!TOKENID=SECRET"), "{message}");
    }

    #[test]
    fn malformed_tokens_are_refused_by_shape_without_echoing() {
        for bad in [
            TOKEN_SECRET.to_owned(),
            format!("pve2mqtt@pve!bridge{TOKEN_SECRET}"),
            format!("pve2mqtt!bridge={TOKEN_SECRET}"),
            format!("@pve!bridge={TOKEN_SECRET}"),
            format!("pve2mqtt@pve!={TOKEN_SECRET}"),
            format!("pve2mqtt@pve!bri dge={TOKEN_SECRET}"),
            "pve2mqtt@pve!bridge=".to_owned(),
            format!("PVEAPIToken=pve2mqtt@pve!bridge={TOKEN_SECRET}"),
            format!("pve2mqtt@pve!bridge={TOKEN_SECRET} {TOKEN_SECRET}"),
            format!("xééééééé@pve!bridge{TOKEN_SECRET}"), // byte 12 is inside a char,
            format!("pve2mqtt@pvé!bridge={TOKEN_SECRET}"),
        ] {
            let toml = format!("[proxmox]\nurl = \"https://pve:8006\"\ntoken = \"{bad}\"\n");
            let message = error(&toml, &[]);
            assert!(
                message.starts_with("proxmox.token: expected USER@REALM!TOKENID=SECRET"),
                "{message}"
            );
            let message = error(
                "",
                &[
                    ("PVE2MQTT_PROXMOX__URL", "https://pve:8006"),
                    ("PVE2MQTT_PROXMOX__TOKEN", &bad),
                ],
            );
            assert!(
                message.starts_with("PVE2MQTT_PROXMOX__TOKEN: expected"),
                "{message}"
            );
        }
        let message = error(
            "[proxmox]\nurl = \"https://pve:8006\"\ntoken = 12345\n",
            &[],
        );
        assert_eq!(
            message,
            "proxmox.token: expected a string, got an integer (value not shown)"
        );
    }

    #[test]
    fn the_token_is_trimmed_and_its_parts_split() {
        let config = load(
            &minimal(),
            &[("PVE2MQTT_PROXMOX__TOKEN", "root@pam!ha.bridge_1=abc-def\n")],
        );
        let token = &config.clusters[0].token;
        assert_eq!(
            (token.user.as_str(), token.token_id.as_str()),
            ("root@pam", "ha.bridge_1")
        );
        assert_eq!(
            token.header_value(),
            "PVEAPIToken=root@pam!ha.bridge_1=abc-def"
        );
    }

    #[test]
    fn missing_url_or_token_names_the_key() {
        let message = error(&format!("[proxmox]\ntoken = \"{}\"\n", token()), &[]);
        assert!(message.starts_with("missing `proxmox.url`"), "{message}");
        let message = error("[proxmox]\nurl = \"https://pve:8006\"\n", &[]);
        assert!(message.starts_with("missing `proxmox.token`"), "{message}");
        let message = error("", &[]);
        assert!(message.starts_with("missing `proxmox`"), "{message}");
        assert!(message.contains("PVE2MQTT_PROXMOX__URL"), "{message}");
    }

    #[test]
    fn url_and_urls_together_are_a_conflict() {
        let toml = format!(
            "[proxmox]\nurl = \"https://a:8006\"\nurls = [\"https://b:8006\"]\ntoken = \"{}\"\n",
            token()
        );
        assert_eq!(
            error(&toml, &[]),
            "`proxmox.url` and `proxmox.urls` are both set; give only one of them"
        );
        let toml = format!("[proxmox]\nurls = []\ntoken = \"{}\"\n", token());
        assert_eq!(
            error(&toml, &[]),
            "proxmox.urls: must list at least one URL"
        );
    }

    #[test]
    fn proxmox_urls_are_normalised_and_checked() {
        for (given, expected) in [
            (
                "https://pve.example.lan:8006/",
                "https://pve.example.lan:8006",
            ),
            ("  https://PVE.lan:8006  ", "https://pve.lan:8006"),
            ("http://10.0.0.1:8006", "http://10.0.0.1:8006"),
            ("https://[fd00::1]:8006", "https://[fd00::1]:8006"),
        ] {
            let config = load(&minimal(), &[("PVE2MQTT_PROXMOX__URL", given)]);
            assert_eq!(config.clusters[0].urls, [expected], "{given}");
        }
        let bad = |url: &str| error(&minimal(), &[("PVE2MQTT_PROXMOX__URL", url)]);
        let message = bad("https://pve:8006/api2/json");
        assert!(
            message.starts_with("PVE2MQTT_PROXMOX__URL: give the base URL without `/api2/json`"),
            "{message}"
        );
        assert!(message.contains("adds /api2/json itself"), "{message}");
        assert!(bad("https://pve:8006/pve").contains("must not have a path (got `/pve`)"));
        assert!(bad("pve:8006").contains("must start with https://"));
        assert!(bad("ftp://pve:8006").contains("must start with https://"));
        assert!(bad("https://pve:8006/?x=1").contains("query or fragment"));
        assert!(bad("not a url").contains("is not a valid URL"));
        let message = bad(&format!("https://root:{PASSWORD}@pve:8006"));
        assert!(
            message.contains("must not contain a user name or password"),
            "{message}"
        );
        let message = error(
            &format!(
                "[proxmox]\nurls = [\"https://a:8006\", 5]\ntoken = \"{}\"\n",
                token()
            ),
            &[],
        );
        assert!(
            message.starts_with("proxmox.urls[1]: expected a URL string"),
            "{message}"
        );
    }

    #[test]
    fn fingerprints_are_read_with_or_without_colons_in_any_case() {
        let expected: [u8; 32] =
            std::array::from_fn(|i| (i as u8).wrapping_mul(7).wrapping_add(0xa0));
        let lower: String = expected.iter().map(|b| format!("{b:02x}")).collect();
        let colons = colon_hex(&expected);
        for text in [
            lower.clone(),
            lower.to_uppercase(),
            colons.clone(),
            colons.to_lowercase(),
        ] {
            let config = load(&minimal(), &[("PVE2MQTT_PROXMOX__FINGERPRINT", &text)]);
            assert_eq!(config.clusters[0].fingerprint, Some(expected), "{text}");
        }
        for bad in [
            lower[..62].to_owned(),
            format!("{lower}00"),
            colons.replacen(':', "", 1),
            lower.replacen('a', "g", 1),
            "AB:CD".to_owned(),
            "é".repeat(32),
        ] {
            let message = error(&minimal(), &[("PVE2MQTT_PROXMOX__FINGERPRINT", &bad)]);
            assert!(
                message.starts_with(
                    "PVE2MQTT_PROXMOX__FINGERPRINT: expected the certificate's SHA-256"
                ),
                "{message}"
            );
        }
    }

    #[test]
    fn ca_file_must_be_a_readable_pem_file() {
        let ca = temp_file(PEM);
        let path = ca.path().display().to_string();
        let config = load(
            &minimal(),
            &[
                ("PVE2MQTT_PROXMOX__CA_FILE", &path),
                ("PVE2MQTT_MQTT__CA_FILE", &path),
            ],
        );
        assert_eq!(config.clusters[0].ca_file.as_deref(), Some(ca.path()));
        assert_eq!(
            config.mqtt.ca_file.as_deref(),
            Some(ca.path()),
            "accepted even with mqtt://"
        );

        let message = error(&with_proxmox_key("ca_file = \"/nonexistent/ca.pem\""), &[]);
        assert!(
            message.starts_with("proxmox.ca_file: cannot read `/nonexistent/ca.pem`"),
            "{message}"
        );
        let directory = tempfile::tempdir().expect("temp dir");
        let message = error(
            &minimal(),
            &[(
                "PVE2MQTT_MQTT__CA_FILE",
                &directory.path().display().to_string(),
            )],
        );
        assert!(
            message.starts_with("PVE2MQTT_MQTT__CA_FILE: cannot read"),
            "{message}"
        );
        assert!(message.contains("is a directory"), "{message}");
        let not_pem = temp_file("just text\n");
        let message = error(
            &minimal(),
            &[(
                "PVE2MQTT_PROXMOX__CA_FILE",
                &not_pem.path().display().to_string(),
            )],
        );
        assert!(message.contains("no PEM certificate"), "{message}");
    }

    #[test]
    fn cluster_names_must_be_topic_safe() {
        for good in ["home", "Home_Lab-2", "x"] {
            let config = load(&minimal(), &[("PVE2MQTT_PROXMOX__NAME", good)]);
            assert_eq!(config.clusters[0].name.as_deref(), Some(good));
        }
        for bad in ["home lab", "a/b", "a+b", "é"] {
            let message = error(&with_proxmox_key(&format!("name = \"{bad}\"")), &[]);
            assert!(
                message.starts_with(&format!(
                    "proxmox.name: `{bad}` may only contain letters, digits"
                )),
                "{message}"
            );
            assert!(message.contains("MQTT topics"), "{message}");
        }
    }

    #[test]
    fn durations_are_humantime_strings_above_zero() {
        let config = load(&with("[poll]\ninterval = \"1h30m\"\n"), &[]);
        assert_eq!(config.poll.interval, Duration::from_secs(5400));
        assert_eq!(
            error(&with("[poll]\ninterval = 10\n"), &[]),
            "poll.interval: expected a duration like \"10s\", got 10"
        );
        let message = error(&minimal(), &[("PVE2MQTT_POLL__INTERVAL", "10")]);
        assert!(message.starts_with("PVE2MQTT_POLL__INTERVAL: expected a duration like \"10s\", got \"10\" (time unit needed"), "{message}");
        assert_eq!(
            error(&with_proxmox_key("timeout = \"0s\""), &[]),
            "proxmox.timeout: must be greater than 0, got \"0s\""
        );
        assert_eq!(
            error(&with("[poll]\ninterval = \"500ms\"\n"), &[]),
            "poll.interval: must be at least 1s, got 500ms"
        );
    }

    #[test]
    fn slow_interval_is_at_least_interval_and_follows_it_by_default() {
        assert_eq!(
            error(
                &with("[poll]\ninterval = \"30s\"\nslow_interval = \"20s\"\n"),
                &[]
            ),
            "poll.slow_interval: must be at least poll.interval (30s), got 20s"
        );
        let config = load(&with("[poll]\ninterval = \"2m\"\n"), &[]);
        assert_eq!(config.poll.slow_interval, Duration::from_secs(120));
        let config = load(
            &with("[poll]\ninterval = \"20s\"\nslow_interval = \"20s\"\n"),
            &[],
        );
        assert_eq!(config.poll.slow_interval, Duration::from_secs(20));
    }

    #[test]
    fn mqtt_urls_give_host_port_and_tls() {
        for (url, host, port, tls) in [
            ("mqtt://broker.lan", "broker.lan", 1883, false),
            ("mqtts://broker.lan", "broker.lan", 8883, true),
            ("mqtts://broker.lan:8884/", "broker.lan", 8884, true),
            ("mqtt://[::1]:1884", "::1", 1884, false),
            ("mqtt://10.1.2.3", "10.1.2.3", 1883, false),
        ] {
            let config = load(&minimal(), &[("PVE2MQTT_MQTT__URL", url)]);
            let mqtt = &config.mqtt;
            assert_eq!(
                (mqtt.host.as_str(), mqtt.port, mqtt.tls),
                (host, port, tls),
                "{url}"
            );
            assert_eq!(mqtt.url, url);
        }
        let bad = |url: &str| error(&with(&format!("[mqtt]\nurl = \"{url}\"\n")), &[]);
        assert!(bad("tcp://broker:1883")
            .starts_with("mqtt.url: the scheme must be mqtt:// or mqtts://"));
        assert!(bad("mqtt://broker:1883/topic").contains("must not have a path"));
        assert!(bad("mqtt://broker:0").contains("between 1 and 65535"));
        assert!(bad("mqtt://:1883").starts_with("mqtt.url:"));
        assert!(bad("broker:1883").contains("scheme must be"));
        assert!(
            bad(&format!("mqtt://user:{PASSWORD}@broker")).contains("must not contain credentials")
        );
        assert_eq!(
            error(&with("[mqtt]\nurl = 1883\n"), &[]),
            "mqtt.url: expected a URL string like \"mqtt://127.0.0.1:1883\", got 1883"
        );
    }

    #[test]
    fn client_id_and_topic_prefixes_are_checked() {
        assert_eq!(
            error(&with("[mqtt]\nclient_id = \"\"\n"), &[]),
            "mqtt.client_id: must not be empty"
        );
        assert_eq!(
            error(&with("[mqtt]\nbase_topic = \"\"\n"), &[]),
            "mqtt.base_topic: must not be empty"
        );
        for (bad, reason) in [
            ("a/+/b", "wildcards"),
            ("a/#", "wildcards"),
            ("/pve", "start or end"),
            ("pve/", "start or end"),
            ("a//b", "empty level"),
            ("a\u{0}b", "NUL"),
        ] {
            let message = error(&minimal(), &[("PVE2MQTT_MQTT__BASE_TOPIC", bad)]);
            assert!(
                message.starts_with("PVE2MQTT_MQTT__BASE_TOPIC: "),
                "{message}"
            );
            assert!(message.contains(reason), "{message}");
            let message = error(
                &minimal(),
                &[("PVE2MQTT_HOMEASSISTANT__DISCOVERY_PREFIX", bad)],
            );
            assert!(
                message.starts_with("PVE2MQTT_HOMEASSISTANT__DISCOVERY_PREFIX: "),
                "{message}"
            );
        }
        let config = load(&minimal(), &[("PVE2MQTT_MQTT__BASE_TOPIC", "home/pve")]);
        assert_eq!(config.mqtt.base_topic, "home/pve");
    }

    #[test]
    fn allow_entries_are_vmids_tags_or_pools() {
        let config = load(
            &with("[commands]\nallow = [100, \"999999999\", \"tag:ha-control\", \"Pool:home\"]\n"),
            &[],
        );
        assert_eq!(
            config.commands.allow,
            [
                AllowRule::Vmid(100),
                AllowRule::Vmid(999_999_999),
                AllowRule::Tag("ha-control".into()),
                AllowRule::Pool("home".into())
            ]
        );
        for (entry, at) in [
            ("\"99\"", "commands.allow[0]"),
            ("\"1000000000\"", "commands.allow[0]"),
            ("\"99999999999999999999999\"", "commands.allow[0]"),
            ("\"vm100\"", "commands.allow[0]"),
            ("\"tag:\"", "commands.allow[0]"),
            ("\"label:x\"", "commands.allow[0]"),
            ("-5", "commands.allow[0]"),
        ] {
            let message = error(&with(&format!("[commands]\nallow = [{entry}]\n")), &[]);
            assert!(message.starts_with(&format!("{at}: entry `")), "{message}");
        }
        let message = error(&minimal(), &[("PVE2MQTT_COMMANDS__ALLOW", "100,bogus")]);
        assert_eq!(
            message,
            "PVE2MQTT_COMMANDS__ALLOW[1]: entry `bogus`: expected a vmid (100 to 999999999), `tag:NAME` or `pool:NAME`"
        );
        let config = load(
            &with("[commands]\nallow = [100]\n"),
            &[("PVE2MQTT_COMMANDS__ALLOW", "")],
        );
        assert!(
            config.commands.allow.is_empty(),
            "an empty env list means every guest"
        );
        assert!(error(&with("[commands]\nallow = true\n"), &[])
            .starts_with("commands.allow: expected a list"));
    }

    #[test]
    fn backup_defaults_are_checked() {
        let config = load(
            &with("[backup]\nstorage = \"pbs-01\"\nmode = \"Stop\"\ncompress = 0\n"),
            &[],
        );
        assert_eq!(
            (
                config.backup.storage.as_str(),
                config.backup.mode.as_str(),
                config.backup.compress.as_str()
            ),
            ("pbs-01", "stop", "0")
        );
        let config = load(
            &minimal(),
            &[
                ("PVE2MQTT_BACKUP__COMPRESS", "1"),
                ("PVE2MQTT_BACKUP__MODE", "suspend"),
            ],
        );
        assert_eq!(
            (config.backup.mode.as_str(), config.backup.compress.as_str()),
            ("suspend", "1")
        );
        assert_eq!(
            error(&with("[backup]\nmode = \"fast\"\n"), &[]),
            "backup.mode: expected one of snapshot, suspend, stop, got \"fast\""
        );
        assert_eq!(
            error(&minimal(), &[("PVE2MQTT_BACKUP__COMPRESS", "xz")]),
            "PVE2MQTT_BACKUP__COMPRESS: expected one of 0, 1, gzip, lzo, zstd, got \"xz\""
        );
        assert_eq!(
            error(&with("[backup]\nstorage = \"\"\n"), &[]),
            "backup.storage: must not be empty"
        );
        assert!(error(&with("[backup]\nstorage = \"my store\"\n"), &[])
            .starts_with("backup.storage: `my store` is not a Proxmox storage id"));
    }

    #[test]
    fn unknown_keys_and_sections_in_the_file_are_named() {
        assert_eq!(
            error(&with(&format!("[mqtt]\npasword = \"{PASSWORD}\"\n")), &[]),
            "unknown key `mqtt.pasword` (did you mean `password`?)"
        );
        assert_eq!(
            error(&with("[mqqt]\nurl = \"mqtt://x\"\n"), &[]),
            "unknown section `mqqt` (did you mean `mqtt`?)"
        );
        assert_eq!(
            error(&with("[mqtt]\ninterval = \"5s\"\n"), &[]),
            "unknown key `mqtt.interval` (`interval` belongs in the [poll] section)"
        );
        let message = error(&format!("interval = \"5s\"\n{}", minimal()), &[]);
        assert_eq!(
            message,
            "unknown key `interval` (`interval` belongs in the [poll] section)"
        );
        let message = error(&with("[[mqtts]]\nurl = \"x\"\n"), &[]);
        assert_eq!(message, "unknown section `mqtts` (did you mean `mqtt`?)");
        let message = error(&with("[mqtt.tls]\nverify = true\n"), &[]);
        assert!(message.starts_with("unknown key `mqtt.tls`"), "{message}");
        let message = error(&format!("poll = 5\n{}", minimal()), &[]);
        assert_eq!(message, "poll: expected a table [poll], got 5");
        let message = error(
            &format!(
                "[[proxmox]]\nurl = \"https://a:8006\"\ntoken = \"{}\"\nurll = \"x\"\n",
                token()
            ),
            &[],
        );
        assert_eq!(
            message,
            "unknown key `proxmox[0].urll` (did you mean `url`?)"
        );
    }

    #[test]
    fn unknown_environment_variables_are_named() {
        let message = error(&minimal(), &[("PVE2MQTT_MQTT__PASWORD", PASSWORD)]);
        assert_eq!(
            message,
            "environment variable `PVE2MQTT_MQTT__PASWORD`: the [mqtt] section has no key `pasword` (did you mean `password`?)"
        );
        let message = error(&minimal(), &[("PVE2MQTT_MQQT__URL", "mqtt://x")]);
        assert!(
            message.contains("no config section `mqqt` (did you mean `MQTT`?)"),
            "{message}"
        );
        let message = error(&minimal(), &[("PVE2MQTT_PROXMOX_TOKEN", &token())]);
        assert!(
            message.starts_with(
                "environment variable `PVE2MQTT_PROXMOX_TOKEN`: expected PVE2MQTT_<SECTION>__<KEY>"
            ),
            "{message}"
        );
        assert!(
            message.contains("did you mean `PVE2MQTT_PROXMOX__TOKEN`?"),
            "{message}"
        );
        let message = error(&minimal(), &[("PVE2MQTT__MQTT__BASE_TOPIC", "x")]);
        assert!(
            message.contains("did you mean `PVE2MQTT_MQTT__BASE_TOPIC`?"),
            "{message}"
        );
        let message = error(&minimal(), &[("PVE2MQTT_POLL__INTERVAL__X", "1s")]);
        assert!(
            message.starts_with("environment variable `PVE2MQTT_POLL__INTERVAL__X`"),
            "{message}"
        );
        // Not ours: other prefixes and lower-case look-alikes are left alone.
        load(
            &minimal(),
            &[
                ("PVE2MQTTX", "1"),
                ("pve2mqtt_mqtt__url", "nonsense"),
                ("HOME", "/root"),
            ],
        );
    }

    #[test]
    fn several_clusters_need_unique_names() {
        let two = format!(
            "[[proxmox]]\nname = \"home\"\nurl = \"https://a:8006\"\ntoken = \"{t}\"\n\
             [[proxmox]]\nname = \"lab\"\nurls = [\"https://b:8006\", \"https://c:8006\"]\ntoken = \"{t}\"\n",
            t = token()
        );
        let config = load(&two, &[]);
        let names: Vec<_> = config.clusters.iter().map(|c| c.name.as_deref()).collect();
        assert_eq!(names, [Some("home"), Some("lab")]);
        assert_eq!(
            config.clusters[1].urls,
            ["https://b:8006", "https://c:8006"]
        );

        let unnamed = two.replacen("name = \"lab\"\n", "", 1);
        assert!(error(&unnamed, &[]).starts_with("missing `proxmox[1].name`"));
        let duplicate = two.replacen("name = \"lab\"", "name = \"HOME\"", 1);
        assert_eq!(
            error(&duplicate, &[]),
            "proxmox[1].name: `HOME` is already the name of proxmox[0]; cluster names must be unique (compared ignoring case)"
        );
        let bad_url = two.replacen("https://c:8006", "https://c:8006/api2/json", 1);
        assert!(error(&bad_url, &[]).starts_with("proxmox[1].urls[1]: give the base URL"));
        // A single [[proxmox]] needs no name.
        let one = format!(
            "[[proxmox]]\nurl = \"https://a:8006\"\ntoken = \"{}\"\n",
            token()
        );
        assert_eq!(load(&one, &[]).clusters.len(), 1);
        assert!(error("proxmox = []\n", &[]).starts_with("missing `proxmox`"));
        assert!(error("proxmox = [1]\n", &[])
            .starts_with("proxmox[0]: expected a table ([[proxmox]]), got 1"));
    }

    #[test]
    fn env_addresses_one_of_several_clusters_by_name() {
        let two = format!(
            "[[proxmox]]\nname = \"home\"\nurl = \"https://a:8006\"\ntoken = \"{t}\"\n\
             [[proxmox]]\nname = \"lab\"\nurl = \"https://b:8006\"\n",
            t = token()
        );
        let config = load(
            &two,
            &[
                ("PVE2MQTT_PROXMOX__LAB__TOKEN", "lab@pve!ro=abc"),
                ("PVE2MQTT_PROXMOX__HOME__TLS_VERIFY", "off"),
            ],
        );
        assert_eq!(config.clusters[1].token.id(), "lab@pve!ro");
        assert!(!config.clusters[0].tls_verify);
        assert!(config.clusters[1].tls_verify);

        let message = error(&two, &[("PVE2MQTT_PROXMOX__TOKEN", "lab@pve!ro=abc")]);
        assert_eq!(
            message,
            "environment variable `PVE2MQTT_PROXMOX__TOKEN`: 2 [[proxmox]] clusters are configured, so name the one meant: PVE2MQTT_PROXMOX__<NAME>__TOKEN"
        );
        let message = error(
            &two,
            &[("PVE2MQTT_PROXMOX__OFFICE__TOKEN", "lab@pve!ro=abc")],
        );
        assert_eq!(
            message,
            "environment variable `PVE2MQTT_PROXMOX__OFFICE__TOKEN`: no [proxmox] cluster in the config file has the name `OFFICE`"
        );
        let message = error(&two, &[("PVE2MQTT_PROXMOX__LAB__TOKN", "x")]);
        assert!(
            message.contains("no key `tokn` (did you mean `token`?)"),
            "{message}"
        );
    }

    #[test]
    fn secrets_never_show_in_debug_or_the_summary() {
        let secret = temp_file(PASSWORD);
        let config = load(
            &minimal(),
            &[
                (
                    "PVE2MQTT_MQTT__PASSWORD_FILE",
                    &secret.path().display().to_string(),
                ),
                ("PVE2MQTT_MQTT__USERNAME", "bridge"),
            ],
        );
        assert_eq!(
            config.mqtt.password.as_ref().map(Secret::expose),
            Some(PASSWORD)
        );
        for shown in [
            format!("{config:?}"),
            format!("{config:#?}"),
            config.redacted_summary(),
        ] {
            assert!(
                !shown.contains(TOKEN_SECRET),
                "token secret leaked:\n{shown}"
            );
            assert!(!shown.contains(PASSWORD), "password leaked:\n{shown}");
        }
        assert!(format!("{config:?}").contains("<redacted>"));
    }

    #[test]
    fn a_syntax_error_reports_the_position_but_not_the_line() {
        let toml = format!(
            "[proxmox]\nurl = \"https://pve:8006\"\ntoken = {}\n",
            token()
        );
        let message = error(&toml, &[]);
        assert!(
            message.starts_with("invalid TOML: TOML parse error at line 3, column"),
            "{message}"
        );
        let toml = format!("[mqtt]\npassword = \"{PASSWORD}\n");
        let message = error(&toml, &[]);
        assert!(message.contains("line 2"), "{message}");
    }

    #[test]
    fn values_of_the_wrong_type_name_their_key() {
        assert_eq!(
            error(&with_proxmox_key("tls_verify = \"maybe\""), &[]),
            "proxmox.tls_verify: expected a boolean (true or false), got \"maybe\""
        );
        assert_eq!(
            error(&with("[mqtt]\nusername = 5\n"), &[]),
            "mqtt.username: expected a string, got 5"
        );
        assert_eq!(
            error(&with("[mqtt]\npassword = [\"x\"]\n"), &[]),
            "mqtt.password: expected a string, got an array (value not shown)"
        );
        assert_eq!(
            error(&with("[backup]\nmode = 1\n"), &[]),
            "backup.mode: expected one of snapshot, suspend, stop, got 1"
        );
    }

    #[test]
    fn the_summary_says_what_an_admin_checks() {
        let ca = temp_file(PEM);
        let config = load(
            &minimal(),
            &[
                (
                    "PVE2MQTT_PROXMOX__CA_FILE",
                    &ca.path().display().to_string(),
                ),
                ("PVE2MQTT_PROXMOX__NAME", "home"),
                ("PVE2MQTT_MQTT__URL", "mqtts://broker.lan"),
                ("PVE2MQTT_MQTT__PASSWORD", PASSWORD),
                ("PVE2MQTT_COMMANDS__ALLOW", "100,tag:ha"),
            ],
        );
        let summary = config.redacted_summary();
        for expected in [
            "https://pve.example.lan:8006",
            "token: pve2mqtt@pve!bridge (secret hidden)",
            "CA file",
            "(id: home)",
            "mqtts://broker.lan (host broker.lan, port 8883, TLS)",
            "password: set",
            "base topic: pve2mqtt",
            "prefix homeassistant",
            "poll: every 10s, slow lane every 1m",
            "commands: allowed for 100, tag:ha",
            "backup defaults: storage local, mode snapshot, compress zstd",
        ] {
            assert!(
                summary.contains(expected),
                "missing {expected:?} in:\n{summary}"
            );
        }
        let config = load(
            &minimal(),
            &[
                ("PVE2MQTT_PROXMOX__TLS_VERIFY", "false"),
                ("PVE2MQTT_COMMANDS__READ_ONLY", "true"),
            ],
        );
        let summary = config.redacted_summary();
        assert!(summary.contains("verification OFF"), "{summary}");
        assert!(summary.contains("read-only"), "{summary}");
    }
}
