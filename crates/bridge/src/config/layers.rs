//! The schema and its layering: the TOML file, then the environment, merged by the `config`
//! crate's own `File` and `Environment` sources and read into serde structs that refuse
//! unknown keys. What `config` cannot know is added here: which layer gave a value
//! ([`Origins`], so a message names `PVE2MQTT_MQTT__URL`), `PVE2MQTT_PROXMOX__<NAME>__<KEY>`
//! routed to the cluster of that name, and unknown keys named as written, with a "did you
//! mean" from `strsim` ([`known_key`], [`refused`]).
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::path::Path;

use config::{Environment, File, FileFormat, Source, Value, ValueKind};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::build::{MqttKeys, ProxmoxKeys};
use super::values::describe;
use super::*;

/// The whole file: each section with the type that reads it, and the list of sections and
/// their keys for hints.
macro_rules! schema {
    ($($section:ident: $ty:ty,)*) => {
        #[derive(serde::Deserialize, Default)]
        #[serde(default, deny_unknown_fields)]
        pub(super) struct Schema {
            $(pub $section: $ty,)*
        }
        const SECTIONS: &[&str] = &[$(stringify!($section)),*];
        fn section_keys(section: &str) -> Option<&'static [&'static str]> {
            match section {
                $(stringify!($section) => Some(<$ty>::KEYS),)*
                _ => None,
            }
        }
    };
}

schema! {
    proxmox: Clusters,
    poll: PollConfig,
    mqtt: MqttKeys,
    homeassistant: HaConfig,
    commands: CommandsConfig,
    backup: BackupConfig,
    http: HttpConfig,
    reporting: ReportingConfig,
}

/// `[proxmox]` (one cluster) or `[[proxmox]]` (`array`, any number).
#[derive(Default)]
pub(super) struct Clusters {
    pub array: bool,
    pub list: Vec<ProxmoxKeys>,
}

impl<'de> Deserialize<'de> for Clusters {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrMany;
        impl<'de> Visitor<'de> for OneOrMany {
            type Value = Clusters;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table [proxmox] or an array of tables [[proxmox]]")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Clusters, A::Error> {
                let list = vec![ProxmoxKeys::deserialize(
                    de::value::MapAccessDeserializer::new(map),
                )?];
                Ok(Clusters { array: false, list })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Clusters, A::Error> {
                let list = Vec::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(Clusters { array: true, list })
            }
        }
        deserializer.deserialize_any(OneOrMany)
    }
}

impl Clusters {
    const KEYS: &[&str] = ProxmoxKeys::KEYS;
}

/// Which keys the environment gave, by path (`mqtt.url`, `proxmox[1].token`), with the
/// variable's name as written.
#[derive(Default)]
pub(super) struct Origins(HashMap<String, String>);

impl Origins {
    /// How to name the key at `path` in a message: its variable, or the file path.
    pub fn at(&self, path: &str) -> String {
        self.0.get(path).cloned().unwrap_or_else(|| path.to_owned())
    }
    pub fn is_env(&self, path: &str) -> bool {
        self.0.contains_key(path)
    }
}

/// The file and environment, layered and read into the schema.
pub(super) fn layer(
    text: &str,
    path: Option<&Path>,
    env: &HashMap<String, String>,
) -> Result<(Schema, Origins), ConfigError> {
    // Editors on Windows may save a byte order mark, which TOML does not allow.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let file = File::from_str(text, FileFormat::Toml)
        .collect()
        .map_err(|error| ConfigError::Syntax {
            path: path.map(Path::to_owned),
            detail: toml_error_without_source(&error.to_string()),
        })?;
    check_section_shapes(&file)?;
    let (array, names) = file_clusters(&file);

    let ours = |(name, _): &(&String, &String)| {
        name.starts_with(ENV_PREFIX) && !NON_CONFIG_ENV_VARS.contains(&name.as_str())
    };
    let mut vars: Vec<_> = env.iter().filter(ours).collect();
    vars.sort();
    let mut plain = config::Map::new();
    let mut overrides = Vec::new();
    let mut origins = Origins::default();
    for (var, value) in vars {
        let rest = &var[ENV_PREFIX.len()..];
        let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let key = match parts.as_slice() {
            // A leading `_` is the `PVE2MQTT__SECTION` slip; reported with a guess below.
            [section, key] if is_word(section) && is_word(key) && !section.starts_with('_') => {
                known_key(var, section, key)?;
                if section != "proxmox" || !array {
                    plain.insert(var.clone(), value.clone());
                    origins.0.insert(format!("{section}.{key}"), var.clone());
                    continue;
                }
                if names.len() != 1 {
                    let (count, key) = (names.len(), key.to_ascii_uppercase());
                    let reason = format!(
                        "{count} [[proxmox]] clusters are configured, so name the one meant: \
                         PVE2MQTT_PROXMOX__<NAME>__{key}"
                    );
                    return Err(env_var(var, reason));
                }
                format!("proxmox[0].{key}")
            }
            [section, _, key] if section == "proxmox" && is_word(key) => {
                known_key(var, section, key)?;
                let name = rest.split("__").nth(1).unwrap_or_default();
                let index = cluster_named(var, name, &names)?;
                if array {
                    format!("proxmox[{index}].{key}")
                } else {
                    format!("proxmox.{key}")
                }
            }
            _ => return Err(malformed_env_var(var, rest)),
        };
        overrides.push((key.clone(), value.clone()));
        origins.0.insert(key, var.clone());
    }

    let mut builder = config::Config::builder()
        .add_source(File::from_str(text, FileFormat::Toml))
        .add_source(
            Environment::with_prefix("PVE2MQTT")
                .prefix_separator("_")
                .separator("__")
                .source(Some(plain)),
        );
    for (key, value) in overrides {
        // Only known keys get here (`known_key`), so the path is always valid.
        builder = builder.set_override(key, value).expect("a valid key path");
    }
    let merged = builder.build().map_err(|error| ConfigError::Invalid {
        key: "config".into(),
        reason: toml_error_without_source(&error.to_string()),
    })?;
    let schema = serde_path_to_error::deserialize(merged)
        .map_err(|error| refused(&error, &origins, &file))?;
    Ok((schema, origins))
}

/// A section or key name as the schema spells them; anything else cannot be a config path.
fn is_word(word: &str) -> bool {
    !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// An environment variable names a section and key of the schema; refused by name otherwise.
fn known_key(var: &str, section: &str, key: &str) -> Result<(), ConfigError> {
    let (mut reason, hint) = match section_keys(section) {
        None => (
            format!("there is no config section `{section}`"),
            closest(section, SECTIONS).map(|s| format!("did you mean `{}`?", s.to_uppercase())),
        ),
        Some(keys) if !keys.contains(&key) => (
            format!("the [{section}] section has no key `{key}`"),
            unknown_key_hint(section, key),
        ),
        Some(_) => return Ok(()),
    };
    if let Some(hint) = hint {
        let _ = write!(reason, " ({hint})");
    }
    Err(env_var(var, reason))
}

/// Whether the file has `[[proxmox]]`, and the cluster names it gives, in order.
fn file_clusters(file: &config::Map<String, Value>) -> (bool, Vec<Option<String>>) {
    let name = |value: &Value| match &value.kind {
        ValueKind::Table(table) => table.get("name")?.clone().into_string().ok(),
        _ => None,
    };
    match file.get("proxmox").map(|value| &value.kind) {
        Some(ValueKind::Array(items)) => (true, items.iter().map(name).collect()),
        Some(_) => (false, vec![name(&file["proxmox"])]),
        None => (false, Vec::new()),
    }
}

/// The index of the cluster that `PVE2MQTT_PROXMOX__<NAME>__<KEY>` names.
fn cluster_named(var: &str, name: &str, names: &[Option<String>]) -> Result<usize, ConfigError> {
    let named = |(_, n): &(usize, &Option<String>)| {
        n.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(name))
    };
    let mut matches = names
        .iter()
        .enumerate()
        .filter(named)
        .map(|(index, _)| index);
    let reason = match (matches.next(), matches.next()) {
        (Some(index), None) => return Ok(index),
        (None, _) => format!("no [proxmox] cluster in the config file has the name `{name}`"),
        _ => format!(
            "several clusters are named `{name}` (ignoring case); cluster names must be unique"
        ),
    };
    Err(env_var(var, reason))
}

/// A section given as a value (`poll = 5`), named before serde would say "expected struct".
fn check_section_shapes(file: &config::Map<String, Value>) -> Result<(), ConfigError> {
    let not_table = |item: &&Value| !matches!(item.kind, ValueKind::Table(_));
    for (name, value) in file
        .iter()
        .filter(|(name, _)| SECTIONS.contains(&name.as_str()))
    {
        let (key, shape, got) = match &value.kind {
            ValueKind::Table(_) => continue,
            ValueKind::Array(items) if name == "proxmox" => {
                let Some((index, item)) = items.iter().enumerate().find(|(_, i)| not_table(i))
                else {
                    continue;
                };
                let shape = "a table ([[proxmox]])".to_owned();
                (format!("proxmox[{index}]"), shape, &item.kind)
            }
            other if name == "proxmox" => {
                let shape = "a table [proxmox] or an array of tables [[proxmox]]";
                (name.clone(), shape.to_owned(), other)
            }
            other => (name.clone(), format!("a table [{name}]"), other),
        };
        let reason = format!("expected {shape}, got {}", describe(got));
        return Err(ConfigError::Invalid { key, reason });
    }
    Ok(())
}

/// Maps serde's refusal to the key as written: the variable for an environment key, the file
/// path otherwise; an unknown key of the file with a hint (the environment's are refused
/// before, by [`known_key`]).
fn refused(
    error: &serde_path_to_error::Error<config::ConfigError>,
    origins: &Origins,
    file: &config::Map<String, Value>,
) -> ConfigError {
    // `config` adds "for key `…`" around our reason; the path says it better.
    let mut inner = error.inner();
    while let config::ConfigError::At { error, .. } = inner {
        inner = error;
    }
    let message = inner.to_string();
    let Some(name) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    else {
        // A list item's reason starts with its index (`values`): `PVE2MQTT_COMMANDS__ALLOW[1]`.
        let (index, reason) = match message.strip_prefix('[').and_then(|m| m.split_once("]: ")) {
            Some((index, reason)) => (format!("[{index}]"), reason.to_owned()),
            None => (String::new(), message.clone()),
        };
        let key = format!("{}{index}", origins.at(&error.path().to_string()));
        return ConfigError::Invalid { key, reason };
    };
    // The path ends with the unknown key itself: `proxmox[1].urll` is in section `proxmox`.
    let full = error.path().to_string();
    let parent = full.strip_suffix(name).unwrap_or_default();
    let section = parent.split(['.', '[']).next().unwrap_or_default();
    if !section.is_empty() {
        let hint = unknown_key_hint(section, name);
        return ConfigError::UnknownKey { key: full, hint };
    }
    if let Some(ValueKind::Table(_) | ValueKind::Array(_)) = file.get(name).map(|v| &v.kind) {
        let hint = closest(name, SECTIONS)
            .map(|s| format!("did you mean `{s}`?"))
            .unwrap_or_else(|| format!("known sections: {}", SECTIONS.join(", ")));
        let section = full;
        return ConfigError::UnknownSection { section, hint };
    }
    let hint = Some(match home_of(name) {
        Some(section) => format!("`{name}` belongs in the [{section}] section"),
        None => {
            let all: Vec<String> = SECTIONS.iter().map(|s| format!("[{s}]")).collect();
            format!("keys belong in a section: {}", all.join(", "))
        }
    });
    ConfigError::UnknownKey { key: full, hint }
}

/// "did you mean" for a misspelt key, or where a key of another section belongs.
fn unknown_key_hint(section: &str, key: &str) -> Option<String> {
    if let Some(close) = closest(key, section_keys(section)?) {
        return Some(format!("did you mean `{close}`?"));
    }
    home_of(key).map(|other| format!("`{key}` belongs in the [{other}] section"))
}

/// The section that has `key`.
fn home_of(key: &str) -> Option<&'static str> {
    SECTIONS
        .iter()
        .copied()
        .find(|s| section_keys(s).is_some_and(|keys| keys.contains(&key)))
}

/// The candidate within a small edit distance of `word`, for typo hints.
fn closest(word: &str, candidates: &[&'static str]) -> Option<&'static str> {
    let word = word.to_ascii_lowercase();
    let limit = if word.len() <= 4 { 1 } else { 2 };
    candidates
        .iter()
        .map(|candidate| (strsim::levenshtein(&word, candidate), *candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// A `PVE2MQTT_` variable without the `<SECTION>__<KEY>` shape; guesses the intended name for
/// the usual slips (single underscore, or a double one right after the prefix).
fn malformed_env_var(var: &str, rest: &str) -> ConfigError {
    let mut reason =
        "expected PVE2MQTT_<SECTION>__<KEY> (two underscores between section and key)".to_owned();
    let trimmed = rest.trim_start_matches('_').to_ascii_lowercase();
    let guess = SECTIONS.iter().find_map(|section| {
        let key = trimmed.strip_prefix(section)?.trim_start_matches('_');
        let guess = format!("PVE2MQTT_{section}__{key}").to_ascii_uppercase();
        section_keys(section)?.contains(&key).then_some(guess)
    });
    if let Some(guess) = guess {
        let _ = write!(reason, "; did you mean `{guess}`?");
    }
    env_var(var, reason)
}

fn env_var(var: &str, reason: String) -> ConfigError {
    let var = var.to_owned();
    ConfigError::EnvVar { var, reason }
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
