//! From the layered schema to the typed [`Config`]: every value check, each naming the key
//! as it was given (file path or environment variable) and never quoting a secret.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use config::{Value, ValueKind};

use super::layers::{Clusters, Origins, ProxmoxKeys, ReportingKeys, Schema};
use super::values::*;
use super::*;
use crate::model::ReportRules;
use crate::types::{BackupMode, CaBundle, Compress, ProxmoxUrl, StorageId, TOKEN_SHAPE};

const DEFAULT_PROXMOX_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_SLOW_INTERVAL: Duration = Duration::from_secs(60);
const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_MQTT_URL: &str = "mqtt://127.0.0.1:1883";

/// One value as given, with how to name it (`mqtt.base_topic`, `proxmox[1].token`, or
/// `PVE2MQTT_MQTT__BASE_TOPIC`). Environment values are strings.
pub(super) struct RawValue {
    at: String,
    kind: ValueKind,
}

/// A section (or one cluster) of the schema, to name its keys in messages.
struct Section<'a> {
    /// `mqtt`, `proxmox`, `proxmox[1]`.
    label: String,
    origins: &'a Origins,
}

impl Section<'_> {
    fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.label)
    }

    fn take(&self, key: &str, value: Option<Value>) -> Option<RawValue> {
        value.map(|value| RawValue {
            at: self.origins.at(&self.path(key)),
            kind: value.kind,
        })
    }

    /// Two keys of which at most one may be given (empty text counts as not given). Both in
    /// the same layer are a conflict; otherwise the environment's replaces the file's.
    fn one_of(
        &self,
        (first, a): (&str, Option<Value>),
        (second, b): (&str, Option<Value>),
    ) -> Result<(Option<RawValue>, Option<RawValue>), ConfigError> {
        let given = |raw: Option<RawValue>| raw.filter(|raw| !raw.is_empty_text());
        let (a, b) = (given(self.take(first, a)), given(self.take(second, b)));
        match (a, b) {
            (Some(a), Some(b)) => {
                let a_env = self.origins.is_env(&self.path(first));
                if a_env == self.origins.is_env(&self.path(second)) {
                    return Err(ConfigError::Conflict {
                        first: a.at,
                        second: b.at,
                    });
                }
                Ok(if a_env {
                    (Some(a), None)
                } else {
                    (None, Some(b))
                })
            }
            pair => Ok(pair),
        }
    }

    /// A string that must not be empty, with a default when not given.
    fn nonempty_text_or(
        &self,
        key: &str,
        value: Option<Value>,
        default: &str,
    ) -> Result<(String, String), ConfigError> {
        match self.take(key, value) {
            None => Ok((default.to_owned(), self.path(key))),
            Some(raw) => {
                let text = raw.text("a string")?;
                if text.trim().is_empty() {
                    return Err(raw.invalid("must not be empty"));
                }
                Ok((text.to_owned(), raw.at))
            }
        }
    }

    /// The value as a string, with an empty one meaning "not given".
    fn optional_text(
        &self,
        key: &str,
        value: Option<Value>,
    ) -> Result<Option<(String, RawValue)>, ConfigError> {
        match self.take(key, value) {
            None => Ok(None),
            Some(raw) => {
                let text = raw.text("a string")?.to_owned();
                Ok((!text.is_empty()).then_some((text, raw)))
            }
        }
    }

    fn bool_or(&self, key: &str, value: Option<Value>, default: bool) -> Result<bool, ConfigError> {
        self.take(key, value)
            .map_or(Ok(default), |raw| raw.boolean())
    }

    fn duration_or(
        &self,
        key: &str,
        value: Option<Value>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        self.take(key, value)
            .map_or(Ok(default), |raw| raw.duration())
    }

    fn ca_file(&self, value: Option<Value>) -> Result<Option<CaBundle>, ConfigError> {
        let Some((text, raw)) = self.optional_text("ca_file", value)? else {
            return Ok(None);
        };
        let path = PathBuf::from(text.trim());
        CaBundle::read(raw.at.clone(), &path)
            .map(Some)
            .map_err(|error| ConfigError::UnreadableFile {
                key: raw.at,
                path,
                reason: error.to_string(),
            })
    }
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
        describe(&self.kind)
    }

    fn is_empty_text(&self) -> bool {
        matches!(&self.kind, ValueKind::String(text) if text.trim().is_empty())
    }

    /// A string value; anything else is refused showing what was given.
    fn text(&self, expected: &str) -> Result<&str, ConfigError> {
        match &self.kind {
            ValueKind::String(text) => Ok(text),
            _ => Err(self.invalid(format!("expected {expected}, got {}", self.shown()))),
        }
    }

    /// A string value of a secret key: a type error names the type, never the value.
    fn secret_text(&self) -> Result<&str, ConfigError> {
        match &self.kind {
            ValueKind::String(text) => Ok(text),
            other => Err(self.invalid(format!(
                "expected a string, got {} (value not shown)",
                type_name(other)
            ))),
        }
    }

    fn boolean(&self) -> Result<bool, ConfigError> {
        let text = match &self.kind {
            ValueKind::Boolean(value) => return Ok(*value),
            ValueKind::I64(0) => return Ok(false),
            ValueKind::I64(1) => return Ok(true),
            ValueKind::String(text) => text,
            _ => "",
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
        let ValueKind::String(text) = &self.kind else {
            return Err(self.invalid(format!("{expected}, got {}", self.shown())));
        };
        let duration = humantime::parse_duration(text.trim())
            .map_err(|error| self.invalid(format!("{expected}, got {} ({error})", self.shown())))?;
        if duration.is_zero() {
            return Err(self.invalid(format!("must be greater than 0, got {}", self.shown())));
        }
        Ok(duration)
    }

    /// `"0"` or a duration of zero (`"0s"`), where zero means "off".
    fn is_zero_duration(&self) -> bool {
        matches!(&self.kind, ValueKind::String(text)
            if text.trim() == "0" || humantime::parse_duration(text.trim()).is_ok_and(|d| d.is_zero()))
            || matches!(self.kind, ValueKind::I64(0))
    }

    /// A reportable change: a number (text from the environment), 0 or more.
    fn limit(&self) -> Result<f64, ConfigError> {
        let number = match &self.kind {
            ValueKind::I64(n) => Some(*n as f64),
            ValueKind::U64(n) => Some(*n as f64),
            ValueKind::Float(n) => Some(*n),
            ValueKind::String(text) => text.trim().parse::<f64>().ok(),
            _ => None,
        };
        match number {
            Some(n) if n.is_finite() && n >= 0.0 => Ok(n),
            _ => Err(self.invalid(format!(
                "expected a number, 0 or more (0: every change counts), got {}",
                self.shown()
            ))),
        }
    }

    /// A list: a TOML array, or comma-separated text (env, or a TOML string). Empty items
    /// from stray commas are dropped.
    fn list(&self) -> Result<Vec<(String, ListItem)>, ConfigError> {
        let at = |index: usize| format!("{}[{index}]", self.at);
        match &self.kind {
            ValueKind::String(text) => Ok(text
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .enumerate()
                .map(|(index, item)| (at(index), ListItem::Text(item.to_owned())))
                .collect()),
            ValueKind::Array(items) => items
                .iter()
                .enumerate()
                .map(|(index, item)| match &item.kind {
                    ValueKind::String(text) => Ok((at(index), ListItem::Text(text.trim().into()))),
                    ValueKind::I64(number) => Ok((at(index), ListItem::Integer(*number))),
                    other => Err(ConfigError::Invalid {
                        key: at(index),
                        reason: format!("expected a string, got {}", describe(other)),
                    }),
                })
                .collect(),
            _ => Err(self.invalid(format!(
                "expected a list like [\"a\", \"b\"], got {}",
                self.shown()
            ))),
        }
    }

    /// Reads a `*_file` secret (Docker secrets). Only a trailing newline is removed: editors
    /// and `echo` add one, but other whitespace may be part of a password. Errors name the
    /// key and the path, never the contents.
    fn read_secret_file(&self) -> Result<(PathBuf, String), ConfigError> {
        let path = PathBuf::from(self.text("a file path")?.trim());
        let contents =
            std::fs::read_to_string(&path).map_err(|error| ConfigError::UnreadableFile {
                key: self.at.clone(),
                path: path.clone(),
                reason: error.to_string(),
            })?;
        Ok((path, contents.trim_end_matches(['\n', '\r']).to_owned()))
    }
}

/// A TOML value as shown in messages.
pub(super) fn describe(kind: &ValueKind) -> String {
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

fn type_name(kind: &ValueKind) -> &'static str {
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

pub(super) fn build(schema: Schema, origins: &Origins) -> Result<Config, ConfigError> {
    let section = |label: &str| Section {
        label: label.to_owned(),
        origins,
    };
    let Clusters { array, list } = schema.proxmox;
    if list.is_empty() {
        return Err(ConfigError::Missing {
            key: "proxmox".into(),
            hint: "no Proxmox cluster is configured; add a [proxmox] section with url and \
                   token, or set PVE2MQTT_PROXMOX__URL and PVE2MQTT_PROXMOX__TOKEN"
                .into(),
        });
    }
    let labels: Vec<String> = (0..list.len())
        .map(|index| match array {
            true => format!("proxmox[{index}]"),
            false => "proxmox".into(),
        })
        .collect();
    let clusters = list
        .into_iter()
        .zip(&labels)
        .map(|(keys, label)| build_cluster(&section(label), keys))
        .collect::<Result<Vec<_>, _>>()?;
    check_cluster_names(&clusters, &labels, origins)?;

    let poll = section("poll");
    let interval = poll.duration_or("interval", schema.poll.interval, DEFAULT_POLL_INTERVAL)?;
    if interval < MIN_POLL_INTERVAL {
        return Err(ConfigError::Invalid {
            key: origins.at("poll.interval"),
            reason: format!(
                "must be at least 1s, got {}",
                humantime::format_duration(interval)
            ),
        });
    }
    let slow_interval = match poll.take("slow_interval", schema.poll.slow_interval) {
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

    let ha = section("homeassistant");
    let keys = schema.homeassistant;
    let (discovery_prefix, at) =
        ha.nonempty_text_or("discovery_prefix", keys.discovery_prefix, "homeassistant")?;
    check_topic_root(&discovery_prefix)
        .map_err(|reason| ConfigError::Invalid { key: at, reason })?;
    let homeassistant = HaConfig {
        discovery: ha.bool_or("discovery", keys.discovery, true)?,
        discovery_prefix,
    };

    let commands = section("commands");
    let keys = schema.commands;
    let allow = match commands.take("allow", keys.allow) {
        None => Vec::new(),
        Some(value) => value
            .list()?
            .into_iter()
            .map(|(at, item)| {
                parse_allow_rule(item).map_err(|reason| ConfigError::Invalid { key: at, reason })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let commands = CommandsConfig {
        enabled: commands.bool_or("enabled", keys.enabled, true)?,
        read_only: commands.bool_or("read_only", keys.read_only, false)?,
        allow,
    };

    Ok(Config {
        clusters,
        poll: PollConfig {
            interval,
            slow_interval,
        },
        mqtt: build_mqtt(&section("mqtt"), schema.mqtt)?,
        homeassistant,
        commands,
        backup: build_backup(&section("backup"), schema.backup)?,
        http: HttpConfig {
            listen: build_listen(&section("http"), schema.http.listen)?,
        },
        reporting: build_reporting(&section("reporting"), schema.reporting)?,
    })
}

fn build_reporting(raw: &Section<'_>, keys: ReportingKeys) -> Result<ReportRules, ConfigError> {
    let d = ReportRules::default();
    let limit = |key: &str, value: Option<Value>, default: f64| {
        raw.take(key, value).map_or(Ok(default), |raw| raw.limit())
    };
    Ok(ReportRules {
        max_interval: raw.duration_or("max_interval", keys.max_interval, d.max_interval)?,
        min_interval: match raw.take("min_interval", keys.min_interval) {
            None => d.min_interval,
            Some(value) if value.is_zero_duration() => Duration::ZERO,
            Some(value) => value.duration()?,
        },
        cpu: limit("cpu", keys.cpu, d.cpu)?,
        mem_percent: limit("mem_percent", keys.mem_percent, d.mem_percent)?,
        rates: limit("rates", keys.rates, d.rates)?,
        rates_floor: limit("rates_floor", keys.rates_floor, d.rates_floor)?,
        storage_percent: limit("storage_percent", keys.storage_percent, d.storage_percent)?,
        loadavg: limit("loadavg", keys.loadavg, d.loadavg)?,
    })
}

fn build_cluster(raw: &Section<'_>, keys: ProxmoxKeys) -> Result<ProxmoxConfig, ConfigError> {
    let expected = "a URL string like \"https://pve.example.lan:8006\"";
    let url = |(key, item): (String, ListItem)| {
        match item {
            ListItem::Text(text) => ProxmoxUrl::parse(&text),
            ListItem::Integer(_) => Err(format!("expected {expected}")),
        }
        .map_err(|reason| ConfigError::Invalid { key, reason })
    };
    let urls = match raw.one_of(("url", keys.url), ("urls", keys.urls))? {
        (Some(one), _) => vec![url((
            one.at.clone(),
            ListItem::Text(one.text(expected)?.into()),
        ))?],
        (None, Some(urls)) => {
            let items = urls.list()?;
            if items.is_empty() {
                return Err(urls.invalid("must list at least one URL"));
            }
            items.into_iter().map(url).collect::<Result<_, _>>()?
        }
        (None, None) => {
            return Err(ConfigError::Missing {
                key: raw.path("url"),
                hint: "give the Proxmox API address, e.g. url = \"https://pve.example.lan:8006\" \
                       (or urls = [...] for failover, or PVE2MQTT_PROXMOX__URL)"
                    .into(),
            })
        }
    };

    let token = match raw.one_of(("token", keys.token), ("token_file", keys.token_file))? {
        (Some(token), _) => {
            ApiToken::parse(token.secret_text()?).map_err(|reason| token.invalid(reason))?
        }
        (None, Some(file)) => {
            let (path, contents) = file.read_secret_file()?;
            if contents.trim().is_empty() {
                return Err(ConfigError::UnreadableFile {
                    key: file.at.clone(),
                    path,
                    reason: "the file is empty".into(),
                });
            }
            ApiToken::parse(&contents).map_err(|reason| {
                file.invalid(format!(
                    "the contents of `{}` are not an API token: {reason}",
                    path.display()
                ))
            })?
        }
        (None, None) => {
            return Err(ConfigError::Missing {
                key: raw.path("token"),
                hint: format!(
                    "{TOKEN_SHAPE}; or token_file for a Docker secret, or PVE2MQTT_PROXMOX__TOKEN"
                ),
            })
        }
    };

    let fingerprint = match raw.optional_text("fingerprint", keys.fingerprint)? {
        Some((text, at)) => Some(parse_fingerprint(&text).map_err(|reason| at.invalid(reason))?),
        None => None,
    };
    // Each node of a cluster has its own certificate, so one pin makes every URL but one
    // unreachable, and failover could never succeed (issue 9, item 6).
    if fingerprint.is_some() && urls.len() > 1 {
        return Err(ConfigError::Invalid {
            key: raw.origins.at(&raw.path("fingerprint")),
            reason: format!(
                "pins one certificate, but {} lists {} nodes, each with its own certificate, so \
                 failover could never succeed; for several URLs trust the cluster's CA instead \
                 (ca_file = Proxmox's /etc/pve/pve-root-ca.pem), or give one URL",
                raw.origins.at(&raw.path("urls")),
                urls.len()
            ),
        });
    }
    let name = match raw.optional_text("name", keys.name)? {
        Some((text, at)) => {
            check_cluster_name(&text).map_err(|reason| at.invalid(reason))?;
            Some(text)
        }
        None => None,
    };

    Ok(ProxmoxConfig {
        urls,
        token,
        tls_verify: raw.bool_or("tls_verify", keys.tls_verify, true)?,
        ca_file: raw.ca_file(keys.ca_file)?,
        fingerprint,
        name,
        timeout: raw.duration_or("timeout", keys.timeout, DEFAULT_PROXMOX_TIMEOUT)?,
    })
}

/// With several clusters each needs a name, and names must differ (ignoring case, because
/// the environment addresses clusters case-insensitively).
fn check_cluster_names(
    clusters: &[ProxmoxConfig],
    labels: &[String],
    origins: &Origins,
) -> Result<(), ConfigError> {
    if clusters.len() < 2 {
        return Ok(());
    }
    for (index, cluster) in clusters.iter().enumerate() {
        let Some(name) = &cluster.name else {
            return Err(ConfigError::Missing {
                key: format!("{}.name", labels[index]),
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
            return Err(ConfigError::Invalid {
                key: origins.at(&format!("{}.name", labels[index])),
                reason: format!(
                    "`{name}` is already the name of {}; cluster names must be unique \
                     (compared ignoring case)",
                    labels[earlier]
                ),
            });
        }
    }
    Ok(())
}

fn build_mqtt(raw: &Section<'_>, keys: super::layers::MqttKeys) -> Result<MqttConfig, ConfigError> {
    let expected = "a URL string like \"mqtt://127.0.0.1:1883\"";
    let broker = |at: String, text: &str| {
        let (host, port, tls) = parse_mqtt_url(text.trim())
            .map_err(|reason| ConfigError::Invalid { key: at, reason })?;
        let url = text.trim().to_owned();
        Ok::<_, ConfigError>(MqttBroker {
            url,
            host,
            port,
            tls,
        })
    };
    let brokers = match raw.one_of(("url", keys.url), ("urls", keys.urls))? {
        (Some(one), _) => vec![broker(one.at.clone(), one.text(expected)?)?],
        (None, Some(urls)) => {
            let items = urls.list()?;
            if items.is_empty() {
                return Err(urls.invalid("must list at least one broker URL"));
            }
            let each = items.into_iter().map(|(at, item)| match item {
                ListItem::Text(text) => broker(at, &text),
                ListItem::Integer(_) => Err(ConfigError::Invalid {
                    key: at,
                    reason: format!("expected {expected}"),
                }),
            });
            each.collect::<Result<_, _>>()?
        }
        // The default goes through the parser too: one source of truth for host, port, TLS.
        (None, None) => vec![broker("mqtt.url".into(), DEFAULT_MQTT_URL)?],
    };
    let MqttBroker {
        url,
        host,
        port,
        tls,
    } = brokers[0].clone();
    let username = raw
        .optional_text("username", keys.username)?
        .map(|(text, _)| text);
    let password = match raw.one_of(
        ("password", keys.password),
        ("password_file", keys.password_file),
    )? {
        (Some(password), _) => Some(Secret::new(password.secret_text()?)),
        (None, Some(file)) => {
            let (_, contents) = file.read_secret_file()?;
            // An empty file means no password, like an empty `password`.
            (!contents.is_empty()).then(|| Secret::new(contents))
        }
        (None, None) => None,
    };
    let (client_id, _) = raw.nonempty_text_or("client_id", keys.client_id, "pve2mqtt")?;
    let (base_topic, at) = raw.nonempty_text_or("base_topic", keys.base_topic, "pve2mqtt")?;
    check_topic_root(&base_topic).map_err(|reason| ConfigError::Invalid { key: at, reason })?;
    Ok(MqttConfig {
        url,
        host,
        port,
        tls,
        brokers,
        username,
        password,
        client_id,
        base_topic,
        ca_file: raw.ca_file(keys.ca_file)?,
    })
}

fn build_backup(
    raw: &Section<'_>,
    keys: super::layers::BackupKeys,
) -> Result<BackupConfig, ConfigError> {
    let (storage, at) = raw.nonempty_text_or("storage", keys.storage, "local")?;
    let storage = StorageId::parse(&storage).ok_or_else(|| ConfigError::Invalid {
        key: at,
        reason: format!(
            "`{}` is not a Proxmox storage id ({})",
            storage.trim(),
            StorageId::RULE
        ),
    })?;
    let mode = match raw.take("mode", keys.mode) {
        None => BackupMode::Snapshot,
        Some(value) => value
            .text(BackupMode::CHOICES)
            .ok()
            .and_then(BackupMode::parse)
            .ok_or_else(|| {
                value.invalid(format!(
                    "expected one of {}, got {}",
                    BackupMode::CHOICES,
                    value.shown()
                ))
            })?,
    };
    let compress = match raw.take("compress", keys.compress) {
        None => Compress::Zstd,
        Some(value) => {
            let text = match &value.kind {
                ValueKind::I64(number) => number.to_string(),
                ValueKind::String(text) => text.clone(),
                _ => String::new(),
            };
            Compress::parse(&text).ok_or_else(|| {
                value.invalid(format!(
                    "expected one of {}, got {}",
                    Compress::CHOICES,
                    value.shown()
                ))
            })?
        }
    };
    Ok(BackupConfig {
        storage,
        mode,
        compress,
    })
}

/// `http.listen`: `host:port` (an IP address, `[::1]:9102` for IPv6); empty = off.
fn build_listen(
    raw: &Section<'_>,
    value: Option<Value>,
) -> Result<Option<SocketAddr>, ConfigError> {
    let Some((text, raw)) = raw.optional_text("listen", value)? else {
        return Ok(None);
    };
    text.trim().parse().map(Some).map_err(|_| {
        raw.invalid(format!(
            "expected an address and port like \"127.0.0.1:9102\", got {}",
            raw.shown()
        ))
    })
}
