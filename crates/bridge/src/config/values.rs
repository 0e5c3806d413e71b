//! Value types. Each reads any `config::Value` (typed as TOML typed it; environment values
//! are text) and refuses it with a reason that does not name the key: serde's path to the
//! value becomes the key as written in `layers::refused`. No reason quotes a secret.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use config::{Value, ValueKind};
use serde::{de, Deserialize, Deserializer};

use super::{AllowRule, MqttBroker, Secret};
use crate::types::{parse_fingerprint, BackupMode, Compress, ProxmoxUrl, StorageId};

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
        crate::ha::topics::check_topic_root(&topic).map(|()| Topic(topic))
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
    MqttBroker => |kind| MqttBroker::parse(&text(kind, "a URL string like \"mqtt://127.0.0.1:1883\"")?);
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
        ValueKind::Float(n) => Some(*n),
        other => number::<f64>(other),
    }
    .filter(|n| n.is_finite() && *n >= 0.0)
    .ok_or_else(|| {
        let got = describe(&kind);
        format!("expected a number, 0 or more (0: every change counts), got {got}")
    });
    /// A `commands.allow` entry: a vmid, `tag:NAME` or `pool:NAME`.
    AllowRule => |kind| match kind {
        ValueKind::I64(number) => AllowRule::parse(&number.to_string()),
        other => AllowRule::parse(&text(other, "a string")?),
    };
    /// A count (`poll.agent_max_per_round`): a whole number, 0 or more.
    usize => |kind| number::<usize>(&kind).ok_or_else(|| format!("expected a whole number, 0 or more, got {}", describe(&kind)));
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

/// A whole number as TOML typed it, or as text (the environment), if it fits `T`.
fn number<T: std::str::FromStr>(kind: &ValueKind) -> Option<T> {
    match kind {
        ValueKind::I64(n) => n.to_string().parse().ok(),
        ValueKind::U64(n) => n.to_string().parse().ok(),
        ValueKind::String(text) => text.trim().parse().ok(),
        _ => None,
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
        ValueKind::String(value) => format!("{value:?}"),
        ValueKind::Nil | ValueKind::Array(_) | ValueKind::Table(_) => type_name(kind).into(),
        scalar => scalar.to_string(),
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
