//! Lenient deserialisers for the JSON that Proxmox really sends (reference `pve-api.md` §2).
//!
//! Proxmox serialises Perl scalars, so the JSON type of a value depends on how the Perl code
//! last touched it, not on the schema: booleans are mostly `0`/`1`, `loadavg` and
//! `cpuinfo.mhz` are strings, an lxc `vmid` was a string on older releases, and `cpu` is `0`
//! (an integer) or `0.0054…` (a float). Every function here accepts all of those forms, maps
//! `null`, a missing field and (for numbers) an empty string to `None`, and fails only on a
//! value no Proxmox release sends (an object where a number belongs), so a real surprise is
//! reported instead of silently read as zero.
//!
//! Use them as `#[serde(default, deserialize_with = "de::opt_u64")]` on `Option` fields; the
//! `default` makes a missing field `None` (serde does not call `deserialize_with` for it).
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// `true`/`false`, `0`/`1` (any non-zero number is true, like Perl), or those as strings.
pub(crate) fn opt_bool<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<bool>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    bool_from_value(value.as_ref().unwrap_or(&Value::Null)).map_err(D::Error::custom)
}

/// Like [`opt_bool`], for flags whose absence means `false` (`template`, `shared`, …): the
/// schema gives them `default=0` and Proxmox often omits them when unset.
pub(crate) fn bool_or_false<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(opt_bool(deserializer)?.unwrap_or(false))
}

/// A number given as an integer, a float or a numeric string (`"2895.985"`).
pub(crate) fn opt_f64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    f64_from_value(value.as_ref().unwrap_or(&Value::Null)).map_err(D::Error::custom)
}

/// A non-negative count (bytes, seconds, a Unix time) given as an integer, a float (rounded)
/// or a numeric string.
pub(crate) fn opt_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    u64_from_value(value.as_ref().unwrap_or(&Value::Null)).map_err(D::Error::custom)
}

/// A VM/CT id: an integer, or a string such as `"103"` (older pve-container lxc lists).
pub(crate) fn opt_vmid<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u32>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    match u64_from_value(value.as_ref().unwrap_or(&Value::Null)).map_err(D::Error::custom)? {
        None => Ok(None),
        Some(vmid) => u32::try_from(vmid)
            .map(Some)
            .map_err(|_| D::Error::custom(format!("vmid {vmid} is out of range"))),
    }
}

/// A text field that a Perl scalar may have turned into a number (`"id": "100"` in one
/// release, `100` in another) or a boolean; all become their JSON text.
pub(crate) fn opt_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(Value::Number(number)) => Ok(Some(number.to_string())),
        Some(Value::Bool(flag)) => Ok(Some(flag.to_string())),
        Some(other) => Err(D::Error::custom(format!(
            "expected a string, got {}",
            kind_of(&other)
        ))),
    }
}

/// `loadavg`: three numbers for 1, 5 and 15 minutes, sent as strings (`["1.74","1.86","1.50"]`).
pub(crate) fn opt_loadavg<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<[f64; 3]>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) if items.len() == 3 => {
            let mut averages = [0.0; 3];
            for (slot, item) in averages.iter_mut().zip(&items) {
                *slot = f64_from_value(item)
                    .map_err(D::Error::custom)?
                    .ok_or_else(|| D::Error::custom("empty load average"))?;
            }
            Ok(Some(averages))
        }
        Some(other) => Err(D::Error::custom(format!(
            "expected three load averages, got {}",
            kind_of(&other)
        ))),
    }
}

/// The boolean reading shared by [`opt_bool`] and the permission map.
pub(crate) fn bool_from_value(value: &Value) -> Result<Option<bool>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Bool(flag) => Ok(Some(*flag)),
        Value::Number(number) => Ok(Some(number.as_f64().is_some_and(|n| n != 0.0))),
        Value::String(text) => match text.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "1" | "true" | "yes" | "on" => Ok(Some(true)),
            "0" | "false" | "no" | "off" => Ok(Some(false)),
            _ => Err(format!("expected a boolean, got the string {text:?}")),
        },
        other => Err(format!("expected a boolean, got {}", kind_of(other))),
    }
}

fn f64_from_value(value: &Value) -> Result<Option<f64>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(number) => Ok(number.as_f64()),
        Value::String(text) if text.trim().is_empty() => Ok(None),
        Value::String(text) => text
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| format!("expected a number, got the string {text:?}")),
        other => Err(format!("expected a number, got {}", kind_of(other))),
    }
}

fn u64_from_value(value: &Value) -> Result<Option<u64>, String> {
    if let Value::Number(number) = value {
        if let Some(exact) = number.as_u64() {
            return Ok(Some(exact));
        }
    }
    if let Value::String(text) = value {
        if let Ok(exact) = text.trim().parse::<u64>() {
            return Ok(Some(exact));
        }
    }
    match f64_from_value(value)? {
        None => Ok(None),
        Some(float) if float.is_finite() && float >= 0.0 && float <= u64::MAX as f64 => {
            // Rounding is the intent: a byte or second count sent as 1.0e9 or "12.0".
            Ok(Some(float.round() as u64))
        }
        Some(float) => Err(format!("expected a non-negative count, got {float}")),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug, Default)]
    struct Probe {
        #[serde(default, deserialize_with = "opt_bool")]
        flag: Option<bool>,
        #[serde(default, deserialize_with = "bool_or_false")]
        template: bool,
        #[serde(default, deserialize_with = "opt_f64")]
        cpu: Option<f64>,
        #[serde(default, deserialize_with = "opt_u64")]
        mem: Option<u64>,
        #[serde(default, deserialize_with = "opt_vmid")]
        vmid: Option<u32>,
        #[serde(default, deserialize_with = "opt_string")]
        id: Option<String>,
        #[serde(default, deserialize_with = "opt_loadavg")]
        loadavg: Option<[f64; 3]>,
    }

    fn probe(json: &str) -> Result<Probe, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn booleans_arrive_as_integers_json_booleans_or_strings() {
        for (json, expected) in [
            (r#"{"flag":1}"#, Some(true)),
            (r#"{"flag":0}"#, Some(false)),
            (r#"{"flag":true}"#, Some(true)),
            (r#"{"flag":false}"#, Some(false)),
            (r#"{"flag":"1"}"#, Some(true)),
            (r#"{"flag":"0"}"#, Some(false)),
            (r#"{"flag":null}"#, None),
            (r#"{}"#, None),
        ] {
            assert_eq!(probe(json).unwrap().flag, expected, "{json}");
        }
        assert!(probe(r#"{"flag":"maybe"}"#).is_err());
        assert!(probe(r#"{"flag":[1]}"#).is_err());
    }

    #[test]
    fn a_missing_default_zero_flag_reads_false() {
        assert!(!probe("{}").unwrap().template);
        assert!(probe(r#"{"template":1}"#).unwrap().template);
    }

    #[test]
    fn numbers_arrive_as_integers_floats_or_numeric_strings() {
        assert_eq!(probe(r#"{"cpu":0}"#).unwrap().cpu, Some(0.0));
        assert_eq!(
            probe(r#"{"cpu":0.0054917623564653}"#).unwrap().cpu,
            Some(0.0054917623564653)
        );
        assert_eq!(probe(r#"{"cpu":"2895.985"}"#).unwrap().cpu, Some(2895.985));
        assert_eq!(probe(r#"{"cpu":""}"#).unwrap().cpu, None);
        assert_eq!(
            probe(r#"{"mem":12884901888}"#).unwrap().mem,
            Some(12_884_901_888)
        );
        assert_eq!(
            probe(r#"{"mem":"12884901888"}"#).unwrap().mem,
            Some(12_884_901_888)
        );
        assert_eq!(probe(r#"{"mem":1.0e9}"#).unwrap().mem, Some(1_000_000_000));
        assert!(probe(r#"{"mem":-1}"#).is_err());
        assert!(probe(r#"{"cpu":{"x":1}}"#).is_err());
    }

    #[test]
    fn vmid_is_an_integer_or_a_string() {
        assert_eq!(probe(r#"{"vmid":100}"#).unwrap().vmid, Some(100));
        assert_eq!(probe(r#"{"vmid":"103"}"#).unwrap().vmid, Some(103));
        assert!(probe(r#"{"vmid":"abc"}"#).is_err());
        assert!(probe(r#"{"vmid":99999999999}"#).is_err());
    }

    #[test]
    fn a_text_field_keeps_the_text_of_a_number() {
        assert_eq!(probe(r#"{"id":"100"}"#).unwrap().id.as_deref(), Some("100"));
        assert_eq!(probe(r#"{"id":100}"#).unwrap().id.as_deref(), Some("100"));
        assert_eq!(probe(r#"{"id":""}"#).unwrap().id.as_deref(), Some(""));
    }

    #[test]
    fn loadavg_strings_become_three_floats() {
        let parsed = probe(r#"{"loadavg":["1.74","1.86","1.50"]}"#).unwrap();
        assert_eq!(parsed.loadavg, Some([1.74, 1.86, 1.5]));
        let numeric = probe(r#"{"loadavg":[0.5,1,2]}"#).unwrap();
        assert_eq!(numeric.loadavg, Some([0.5, 1.0, 2.0]));
        assert!(probe(r#"{"loadavg":["1.0","2.0"]}"#).is_err());
    }
}
