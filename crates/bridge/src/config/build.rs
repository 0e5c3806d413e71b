//! From the layered schema to the typed [`Config`]: the keys that depend on each other and
//! the files keys name. Each value was checked alone while it was read (`values`); messages
//! here name keys as [`Origins`] says they were given, and never quote a secret.
use std::path::PathBuf;
use std::time::Duration;

use config::ValueKind;

use super::layers::{Clusters, Origins, Schema};
use super::values::{NonEmpty, Parse, Topic};
use super::*;
use crate::ha::topics::check_cluster_name;
use crate::types::{CaBundle, ProxmoxUrl, TOKEN_SHAPE};

const DEFAULT_SLOW_INTERVAL: Duration = Duration::from_secs(60);
const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_MQTT_URL: &str = "mqtt://127.0.0.1:1883";

section! {
    /// `[proxmox]`, or one `[[proxmox]]`.
    pub(super) struct ProxmoxKeys {
        url: Option<ProxmoxUrl> = None,
        urls: Option<Vec<ProxmoxUrl>> = None,
        token: Option<Secret> = None,
        token_file: Option<PathBuf> = None,
        tls_verify: bool = true,
        ca_file: Option<PathBuf> = None,
        fingerprint: Option<[u8; 32]> = None,
        name: Option<String> = None,
        timeout: Duration = Duration::from_secs(10),
    }
}

section! {
    pub(super) struct MqttKeys {
        url: Option<MqttBroker> = None,
        urls: Option<Vec<MqttBroker>> = None,
        username: Option<String> = None,
        password: Option<Secret> = None,
        password_file: Option<PathBuf> = None,
        client_id: NonEmpty = NonEmpty("pve2mqtt".into()),
        base_topic: Topic = Topic("pve2mqtt".into()),
        ca_file: Option<PathBuf> = None,
    }
}

/// A section (or one cluster), to name its keys in messages.
struct Section<'a> {
    /// `mqtt`, `proxmox`, `proxmox[1]`.
    label: &'a str,
    origins: &'a Origins,
}

impl Section<'_> {
    /// `proxmox[1].token`
    fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.label)
    }

    /// The key as given: its environment variable, or its file path.
    fn at(&self, key: &str) -> String {
        self.origins.at(&self.path(key))
    }

    fn invalid(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: self.at(key),
            reason: reason.into(),
        }
    }

    /// Two keys of which at most one may be given (empty text counts as not given). Both in
    /// the same layer are a conflict; otherwise the environment's replaces the file's.
    fn one_of<A, B>(
        &self,
        (first, a): (&str, Option<A>),
        (second, b): (&str, Option<B>),
    ) -> Result<(Option<A>, Option<B>), ConfigError> {
        if a.is_none() || b.is_none() {
            return Ok((a, b));
        }
        let env = |key| self.origins.is_env(&self.path(key));
        match (env(first), env(second)) {
            (true, false) => Ok((a, None)),
            (false, true) => Ok((None, b)),
            _ => Err(ConfigError::Conflict {
                first: self.at(first),
                second: self.at(second),
            }),
        }
    }

    /// `url` or `urls` (see [`Section::one_of`]); `None` when neither is given.
    fn urls<T>(
        &self,
        url: Option<T>,
        urls: Option<Vec<T>>,
        what: &str,
    ) -> Result<Option<Vec<T>>, ConfigError> {
        match self.one_of(("url", url), ("urls", urls))? {
            (Some(one), _) => Ok(Some(vec![one])),
            (None, Some(urls)) if urls.is_empty() => {
                Err(self.invalid("urls", format!("must list at least one {what}")))
            }
            (None, urls) => Ok(urls),
        }
    }

    fn unreadable(&self, key: &str, path: PathBuf, reason: impl ToString) -> ConfigError {
        let (key, reason) = (self.at(key), reason.to_string());
        ConfigError::UnreadableFile { key, path, reason }
    }

    fn ca_file(&self, path: Option<PathBuf>) -> Result<Option<CaBundle>, ConfigError> {
        let Some(path) = path else { return Ok(None) };
        let read = CaBundle::read(self.at("ca_file"), &path);
        read.map(Some)
            .map_err(|error| self.unreadable("ca_file", path, error))
    }

    /// Reads a `*_file` secret (Docker secrets). Only a trailing newline is removed: editors
    /// and `echo` add one, but other whitespace may be part of a password. Errors name the
    /// key and the path, never the contents.
    fn secret_file(&self, key: &str, path: PathBuf) -> Result<(PathBuf, String), ConfigError> {
        match std::fs::read_to_string(&path) {
            Ok(contents) => Ok((path, contents.trim_end_matches(['\n', '\r']).to_owned())),
            Err(error) => Err(self.unreadable(key, path, error)),
        }
    }
}

pub(super) fn build(schema: Schema, origins: &Origins) -> Result<Config, ConfigError> {
    let Clusters { array, list } = schema.proxmox;
    if list.is_empty() {
        return Err(ConfigError::Missing {
            key: "proxmox".into(),
            hint: "no Proxmox cluster is configured; add a [proxmox] section with url and \
                   token, or set PVE2MQTT_PROXMOX__URL and PVE2MQTT_PROXMOX__TOKEN"
                .into(),
        });
    }
    let section = |label| Section { label, origins };
    let labels: Vec<String> = (0..list.len())
        .map(|index| match array {
            true => format!("proxmox[{index}]"),
            false => "proxmox".into(),
        })
        .collect();
    let sections: Vec<Section> = labels.iter().map(|label| section(label)).collect();
    let clusters = list
        .into_iter()
        .zip(&sections)
        .map(|(keys, raw)| build_cluster(raw, keys))
        .collect::<Result<Vec<_>, _>>()?;
    if clusters.len() > 1 {
        check_cluster_names(&clusters, &sections)?;
    }
    let ha = schema.homeassistant;
    Topic::parse(ValueKind::String(ha.discovery_prefix.clone()))
        .map_err(|reason| section("homeassistant").invalid("discovery_prefix", reason))?;
    Ok(Config {
        clusters,
        poll: check_poll(schema.poll, &section("poll"))?,
        mqtt: build_mqtt(&section("mqtt"), schema.mqtt)?,
        homeassistant: ha,
        commands: schema.commands,
        backup: schema.backup,
        http: schema.http,
        reporting: schema.reporting.into(),
    })
}

fn check_poll(mut poll: PollConfig, raw: &Section<'_>) -> Result<PollConfig, ConfigError> {
    let show = humantime::format_duration;
    if poll.interval < MIN_POLL_INTERVAL {
        let reason = format!("must be at least 1s, got {}", show(poll.interval));
        return Err(raw.invalid("interval", reason));
    }
    if poll.slow_interval.is_zero() {
        // Not given: raising `interval` above the default should not force setting this too.
        poll.slow_interval = DEFAULT_SLOW_INTERVAL.max(poll.interval);
    } else if poll.slow_interval < poll.interval {
        let (interval, slow) = (show(poll.interval), show(poll.slow_interval));
        let reason = format!("must be at least poll.interval ({interval}), got {slow}");
        return Err(raw.invalid("slow_interval", reason));
    }
    Ok(poll)
}

fn build_cluster(raw: &Section<'_>, keys: ProxmoxKeys) -> Result<ProxmoxConfig, ConfigError> {
    let Some(urls) = raw.urls(keys.url, keys.urls, "URL")? else {
        return Err(ConfigError::Missing {
            key: raw.path("url"),
            hint: "give the Proxmox API address, e.g. url = \"https://pve.example.lan:8006\" \
                   (or urls = [...] for failover, or PVE2MQTT_PROXMOX__URL)"
                .into(),
        });
    };
    let token = match raw.one_of(("token", keys.token), ("token_file", keys.token_file))? {
        (Some(token), _) => {
            ApiToken::parse(token.expose()).map_err(|reason| raw.invalid("token", reason))?
        }
        (None, Some(path)) => {
            let (path, contents) = raw.secret_file("token_file", path)?;
            if contents.trim().is_empty() {
                return Err(raw.unreadable("token_file", path, "the file is empty"));
            }
            ApiToken::parse(&contents).map_err(|reason| {
                let path = path.display();
                let reason = format!("the contents of `{path}` are not an API token: {reason}");
                raw.invalid("token_file", reason)
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
    // Each node of a cluster has its own certificate, so one pin makes every URL but one
    // unreachable, and failover could never succeed (issue 9, item 6).
    if keys.fingerprint.is_some() && urls.len() > 1 {
        let reason = format!(
            "pins one certificate, but {} lists {} nodes, each with its own certificate, so \
             failover could never succeed; for several URLs trust the cluster's CA instead \
             (ca_file = Proxmox's /etc/pve/pve-root-ca.pem), or give one URL",
            raw.at("urls"),
            urls.len()
        );
        return Err(raw.invalid("fingerprint", reason));
    }
    if let Some(name) = &keys.name {
        check_cluster_name(name).map_err(|reason| raw.invalid("name", reason))?;
    }
    Ok(ProxmoxConfig {
        urls,
        token,
        tls_verify: keys.tls_verify,
        ca_file: raw.ca_file(keys.ca_file)?,
        fingerprint: keys.fingerprint,
        name: keys.name,
        timeout: keys.timeout,
    })
}

/// With several clusters each needs a name, and names must differ (ignoring case, because
/// the environment addresses clusters case-insensitively).
fn check_cluster_names(
    clusters: &[ProxmoxConfig],
    sections: &[Section<'_>],
) -> Result<(), ConfigError> {
    for (index, (cluster, raw)) in clusters.iter().zip(sections).enumerate() {
        let Some(name) = &cluster.name else {
            let hint = "every [[proxmox]] cluster needs its own name when several are configured";
            let key = raw.path("name");
            return Err(ConfigError::Missing {
                key,
                hint: hint.into(),
            });
        };
        let same = |other: &ProxmoxConfig| {
            (other.name.as_deref()).is_some_and(|other| other.eq_ignore_ascii_case(name))
        };
        if let Some(earlier) = clusters[..index].iter().position(same) {
            let reason = format!(
                "`{name}` is already the name of {}; cluster names must be unique \
                 (compared ignoring case)",
                sections[earlier].label
            );
            return Err(raw.invalid("name", reason));
        }
    }
    Ok(())
}

fn build_mqtt(raw: &Section<'_>, keys: MqttKeys) -> Result<MqttConfig, ConfigError> {
    // The default goes through the parser too: one source of truth for host, port, TLS.
    let default = || vec![MqttBroker::parse(DEFAULT_MQTT_URL).expect("a valid default")];
    let brokers = raw
        .urls(keys.url, keys.urls, "broker URL")?
        .unwrap_or_else(default);
    let password = match raw.one_of(
        ("password", keys.password),
        ("password_file", keys.password_file),
    )? {
        (Some(password), _) => Some(password),
        (None, Some(path)) => {
            let (_, contents) = raw.secret_file("password_file", path)?;
            // An empty file means no password, like an empty `password`.
            (!contents.is_empty()).then(|| Secret::new(contents))
        }
        (None, None) => None,
    };
    let MqttBroker {
        url,
        host,
        port,
        tls,
    } = brokers[0].clone();
    Ok(MqttConfig {
        url,
        host,
        port,
        tls,
        brokers,
        username: keys.username,
        password,
        client_id: keys.client_id.0,
        base_topic: keys.base_topic.0,
        ca_file: raw.ca_file(keys.ca_file)?,
    })
}
