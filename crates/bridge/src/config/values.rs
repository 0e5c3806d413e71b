//! Value types. Each reads any `config::Value` (typed as TOML typed it; environment values
//! are text) and refuses it with a reason that does not name the key: serde's path to the
//! value becomes the key as written in `layers::refused`. No reason quotes a secret.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use config::{Value, ValueKind};
use serde::{de, Deserialize, Deserializer};

use super::{AllowRule, MqttBroker, Secret};
use crate::types::{BackupMode, Compress, ProxmoxUrl, StorageId};

/// A config value type and its check.
pub(super) trait Parse: Sized {
    fn parse(kind: ValueKind) -> Result<Self, String>;
}

/// `deserialize_with` for every key: reads the value as given, then checks it with [`Parse`].
pub(super) fn parse<'de, D: Deserializer<'de>, T: Parse>(value: D) -> Result<T, D::Error> {
    T::parse(Value::deserialize(value)?.kind).map_err(de::Error::custom)
}

/// A string that must not be empty (`mqtt.client_id`, `backup.storage`).
#[derive(Clone, Debug)]
pub(super) struct NonEmpty(pub String);

/// A topic prefix we publish under (`mqtt.base_topic`, `homeassistant.discovery_prefix`).
#[derive(Clone, Debug)]
pub(super) struct Topic(pub String);

/// A duration where `0` or `"0s"` means off (`reporting.min_interval`).
#[derive(Clone, Copy, Debug)]
pub struct OrZero(pub Duration);

/// `impl Parse for Type` from `Type => |kind| check;`.
macro_rules! parse {
    ($($(#[$doc:meta])* $ty:ty => |$kind:ident| $check:expr;)*) => {
        $($(#[$doc])* impl Parse for $ty {
            fn parse($kind: ValueKind) -> Result<Self, String> {
                $check
            }
        })*
    };
}

parse! {
    String => |kind| text(kind, "a string");
    PathBuf => |kind| Ok(PathBuf::from(text(kind, "a file path")?.trim()));
    NonEmpty => |kind| match text(kind, "a string")? {
        text if text.trim().is_empty() => Err("must not be empty".into()),
        text => Ok(NonEmpty(text)),
    };
    Topic => |kind| {
        let NonEmpty(topic) = NonEmpty::parse(kind)?;
        check_topic_root(&topic).map(|()| Topic(topic))
    };
    /// A secret: a type error names the type, never the value.
    Secret => |kind| match kind {
        ValueKind::String(text) => Ok(Secret::new(text)),
        other => Err(format!("expected a string, got {} (value not shown)", type_name(&other))),
    };
    /// `true/false`, `yes/no`, `on/off`, `1/0` (any case), from env or file.
    bool => |kind| {
        let text = match &kind {
            ValueKind::Boolean(value) => return Ok(*value),
            ValueKind::I64(0) => return Ok(false),
            ValueKind::I64(1) => return Ok(true),
            ValueKind::String(text) => text.trim().to_ascii_lowercase(),
            _ => String::new(),
        };
        match text.as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(format!("expected a boolean (true or false), got {}", describe(&kind))),
        }
    };
    /// A humantime duration ("10s", "2m", "1h30m"), greater than zero.
    Duration => |kind| {
        let (expected, got) = ("expected a duration like \"10s\"", describe(&kind));
        let ValueKind::String(text) = kind else {
            return Err(format!("{expected}, got {got}"));
        };
        match humantime::parse_duration(text.trim()) {
            Err(error) => Err(format!("{expected}, got {got} ({error})")),
            Ok(duration) if duration.is_zero() => Err(format!("must be greater than 0, got {got}")),
            Ok(duration) => Ok(duration),
        }
    };
    ProxmoxUrl => |kind| {
        ProxmoxUrl::parse(&text(kind, "a URL string like \"https://pve.example.lan:8006\"")?)
    };
    MqttBroker => |kind| {
        let url = text(kind, "a URL string like \"mqtt://127.0.0.1:1883\"")?.trim().to_owned();
        let (host, port, tls) = parse_mqtt_url(&url)?;
        Ok(MqttBroker { url, host, port, tls })
    };
    /// SHA-256 of a certificate, see [`parse_fingerprint`].
    [u8; 32] => |kind| parse_fingerprint(&text(kind, "a string")?);
    /// `http.listen`: `host:port` (an IP address, `[::1]:9102` for IPv6).
    SocketAddr => |kind| match &kind {
        ValueKind::String(text) => text.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        let got = describe(&kind);
        format!("expected an address and port like \"127.0.0.1:9102\", got {got}")
    });
    StorageId => |kind| {
        let NonEmpty(text) = NonEmpty::parse(kind)?;
        StorageId::parse(&text).ok_or_else(|| {
            format!("`{}` is not a Proxmox storage id ({})", text.trim(), StorageId::RULE)
        })
    };
    BackupMode => |kind| choice(kind, BackupMode::parse, BackupMode::CHOICES);
    Compress => |kind| choice(kind, Compress::parse, Compress::CHOICES);
    OrZero => |kind| match &kind {
        ValueKind::I64(0) => Ok(OrZero(Duration::ZERO)),
        ValueKind::String(text) if text.trim() == "0"
            || humantime::parse_duration(text.trim()).is_ok_and(|d| d.is_zero()) =>
        {
            Ok(OrZero(Duration::ZERO))
        }
        _ => Duration::parse(kind).map(OrZero),
    };
    /// A reportable change (`[reporting]`): a number, 0 or more (text from the environment).
    f64 => |kind| match &kind {
        ValueKind::I64(n) => Some(*n as f64),
        ValueKind::U64(n) => Some(*n as f64),
        ValueKind::Float(n) => Some(*n),
        ValueKind::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|n| n.is_finite() && *n >= 0.0)
    .ok_or_else(|| {
        let got = describe(&kind);
        format!("expected a number, 0 or more (0: every change counts), got {got}")
    });
    /// A `commands.allow` entry: a vmid, `tag:NAME` or `pool:NAME`.
    AllowRule => |kind| allow_rule(kind);
    /// A count (`poll.agent_max_per_round`): a whole number, 0 or more.
    usize => |kind| match &kind {
        ValueKind::I64(n) => usize::try_from(*n).ok(),
        ValueKind::U64(n) => usize::try_from(*n).ok(),
        ValueKind::String(text) => text.trim().parse::<usize>().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("expected a whole number, 0 or more, got {}", describe(&kind)));
}

/// An optional key: an empty string means "not given", as the SPEC example (`ca_file = ""`)
/// implies.
impl<T: Parse> Parse for Option<T> {
    fn parse(kind: ValueKind) -> Result<Self, String> {
        match &kind {
            ValueKind::String(text) if text.trim().is_empty() => Ok(None),
            _ => T::parse(kind).map(Some),
        }
    }
}

/// A list: a TOML array, or comma-separated text (env, or a TOML string). Empty items from
/// stray commas are dropped. An item's refusal starts with its index (`[1]: …`), which
/// `layers::refused` moves to the key (`PVE2MQTT_COMMANDS__ALLOW[1]`).
impl<T: Parse> Parse for Vec<T> {
    fn parse(kind: ValueKind) -> Result<Self, String> {
        let items: Vec<ValueKind> = match kind {
            ValueKind::String(text) => text
                .split(',')
                .filter(|item| !item.trim().is_empty())
                .map(|item| ValueKind::String(item.into()))
                .collect(),
            ValueKind::Array(items) => items.into_iter().map(|item| item.kind).collect(),
            other => {
                let got = describe(&other);
                return Err(format!("expected a list like [\"a\", \"b\"], got {got}"));
            }
        };
        let item = |(index, kind)| {
            match kind {
                ValueKind::String(text) => T::parse(ValueKind::String(str::trim(&text).into())),
                other => T::parse(other),
            }
            .map_err(|reason| format!("[{index}]: {reason}"))
        };
        items.into_iter().enumerate().map(item).collect()
    }
}

fn text(kind: ValueKind, expected: &str) -> Result<String, String> {
    match kind {
        ValueKind::String(text) => Ok(text),
        other => Err(format!("expected {expected}, got {}", describe(&other))),
    }
}

/// One of a few words (`backup.mode`, `backup.compress`); a TOML integer is read as its text.
fn choice<T>(kind: ValueKind, parse: fn(&str) -> Option<T>, choices: &str) -> Result<T, String> {
    let chosen = match &kind {
        ValueKind::I64(number) => parse(&number.to_string()),
        ValueKind::String(text) => parse(text),
        _ => None,
    };
    chosen.ok_or_else(|| format!("expected one of {choices}, got {}", describe(&kind)))
}

/// A value as shown after "got" in messages. Never called for secret keys.
pub(super) fn describe(kind: &ValueKind) -> String {
    match kind {
        ValueKind::Boolean(value) => value.to_string(),
        ValueKind::I64(value) => value.to_string(),
        ValueKind::I128(value) => value.to_string(),
        ValueKind::U64(value) => value.to_string(),
        ValueKind::U128(value) => value.to_string(),
        ValueKind::Float(value) => value.to_string(),
        ValueKind::String(value) => format!("{value:?}"),
        other => type_name(other).into(),
    }
}

fn type_name(kind: &ValueKind) -> &'static str {
    match kind {
        ValueKind::Nil => "nothing",
        ValueKind::Boolean(_) => "a boolean",
        ValueKind::Float(_) => "a float",
        ValueKind::String(_) => "a string",
        ValueKind::Array(_) => "an array",
        ValueKind::Table(_) => "a table",
        _ => "an integer",
    }
}

/// `mqtt://host[:1883]` or `mqtts://host[:8883]` -> (host, port, tls). The host is returned
/// without IPv6 brackets, as socket APIs want it.
fn parse_mqtt_url(text: &str) -> Result<(String, u16, bool), String> {
    let example = "e.g. mqtt://127.0.0.1:1883 or mqtts://broker.lan:8883";
    let url = crate::types::parse_url(text, example)?;
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

/// The cluster id goes into MQTT topics and Home Assistant unique ids, where `/`, `+`, `#`
/// and spaces would break things.
pub(super) fn check_cluster_name(name: &str) -> Result<(), String> {
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

fn allow_rule(kind: ValueKind) -> Result<AllowRule, String> {
    let shape = "expected a vmid (100 to 999999999), `tag:NAME` or `pool:NAME`";
    let text = match kind {
        ValueKind::I64(number) => return vmid_rule(i128::from(number), shape),
        ValueKind::String(text) => text,
        other => return Err(format!("expected a string, got {}", describe(&other))),
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
