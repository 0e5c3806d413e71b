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
use std::fmt;

use serde::de::{Error as _, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

// The readers below are serde visitors, not "deserialize a `Value`, then look at it": the
// fast lane reads every field of every row of `/cluster/resources` on every poll (about
// 100,000 fields at 5,000 guests), and a `Value` per field cost more than the parsing.

/// `true`/`false`, `0`/`1` (any non-zero number is true, like Perl), or those as strings.
pub(crate) fn opt_bool<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<bool>, D::Error> {
    deserializer
        .deserialize_any(Lenient(Want::Bool))?
        .into_bool()
}

/// Like [`opt_bool`], for flags whose absence means `false` (`template`, `shared`, …): the
/// schema gives them `default=0` and Proxmox often omits them when unset.
pub(crate) fn bool_or_false<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(opt_bool(deserializer)?.unwrap_or(false))
}

/// A number given as an integer, a float or a numeric string (`"2895.985"`).
pub(crate) fn opt_f64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    deserializer.deserialize_any(Lenient(Want::F64))?.into_f64()
}

/// A non-negative count (bytes, seconds, a Unix time) given as an integer, a float (rounded)
/// or a numeric string.
pub(crate) fn opt_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    deserializer.deserialize_any(Lenient(Want::U64))?.into_u64()
}

/// A VM/CT id: an integer, or a string such as `"103"` (older pve-container lxc lists).
pub(crate) fn opt_vmid<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u32>, D::Error> {
    match opt_u64(deserializer)? {
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
    deserializer
        .deserialize_any(Lenient(Want::Text))?
        .into_text()
}

/// What a field should become; picks how [`Lenient`] reads a JSON value.
#[derive(Clone, Copy)]
enum Want {
    Bool,
    F64,
    U64,
    Text,
}

impl Want {
    fn noun(self) -> &'static str {
        match self {
            Want::Bool => "a boolean",
            Want::F64 => "a number",
            Want::U64 => "a non-negative count",
            Want::Text => "a string",
        }
    }
}

/// What [`Lenient`] read; each `into_*` returns the wanted type or the error message.
enum Read {
    Missing,
    Bool(bool),
    Number(f64),
    Count(u64),
    /// A negative integer (a count refuses it; a number or a text takes it).
    Negative(i64),
    Text(String),
}

impl Read {
    fn into_bool<E: serde::de::Error>(self) -> Result<Option<bool>, E> {
        match self {
            Read::Missing => Ok(None),
            Read::Bool(flag) => Ok(Some(flag)),
            Read::Count(n) => Ok(Some(n != 0)),
            Read::Number(n) => Ok(Some(n != 0.0)),
            Read::Negative(_) => Ok(Some(true)),
            Read::Text(text) => bool_from_text(&text).map_err(E::custom),
        }
    }

    fn into_f64<E: serde::de::Error>(self) -> Result<Option<f64>, E> {
        match self {
            Read::Missing => Ok(None),
            Read::Count(n) => Ok(Some(n as f64)),
            Read::Number(n) => Ok(Some(n)),
            Read::Negative(n) => Ok(Some(n as f64)),
            Read::Text(text) => f64_from_text(&text).map_err(E::custom),
            Read::Bool(_) => Err(E::custom("expected a number, got a boolean")),
        }
    }

    fn into_u64<E: serde::de::Error>(self) -> Result<Option<u64>, E> {
        match self {
            Read::Missing => Ok(None),
            Read::Count(n) => Ok(Some(n)),
            Read::Number(n) => count_from_f64(n).map(Some).map_err(E::custom),
            Read::Negative(n) => Err(E::custom(format!("expected a non-negative count, got {n}"))),
            Read::Text(text) => {
                if let Ok(exact) = text.trim().parse::<u64>() {
                    return Ok(Some(exact));
                }
                match f64_from_text(&text).map_err(E::custom)? {
                    None => Ok(None),
                    Some(float) => count_from_f64(float).map(Some).map_err(E::custom),
                }
            }
            Read::Bool(_) => Err(E::custom("expected a number, got a boolean")),
        }
    }

    fn into_text<E: serde::de::Error>(self) -> Result<Option<String>, E> {
        match self {
            Read::Missing => Ok(None),
            Read::Text(text) => Ok(Some(text)),
            Read::Count(n) => Ok(Some(n.to_string())),
            Read::Negative(n) => Ok(Some(n.to_string())),
            // The text serde_json gives the number, as `Value::to_string` did.
            Read::Number(n) => Ok(Some(
                serde_json::Number::from_f64(n).map_or_else(|| n.to_string(), |n| n.to_string()),
            )),
            Read::Bool(flag) => Ok(Some(flag.to_string())),
        }
    }
}

/// Reads any scalar JSON value without building a `Value`; arrays and objects are errors
/// that say what was expected, in the words the path-tracking decoder puts after the path.
struct Lenient(Want);

impl<'de> Visitor<'de> for Lenient {
    type Value = Read;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0.noun())
    }

    fn visit_bool<E>(self, flag: bool) -> Result<Read, E> {
        Ok(Read::Bool(flag))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Read, E> {
        Ok(Read::Count(n))
    }

    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Read, E> {
        Ok(match u64::try_from(n) {
            Ok(n) => Read::Count(n),
            Err(_) => Read::Negative(n),
        })
    }

    fn visit_f64<E>(self, n: f64) -> Result<Read, E> {
        Ok(Read::Number(n))
    }

    fn visit_str<E>(self, text: &str) -> Result<Read, E> {
        Ok(Read::Text(text.to_owned()))
    }

    fn visit_string<E>(self, text: String) -> Result<Read, E> {
        Ok(Read::Text(text))
    }

    fn visit_unit<E>(self) -> Result<Read, E> {
        Ok(Read::Missing)
    }

    fn visit_none<E>(self) -> Result<Read, E> {
        Ok(Read::Missing)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Read, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Read, A::Error> {
        Err(A::Error::custom(format!(
            "expected {}, got an array",
            self.0.noun()
        )))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Read, A::Error> {
        Err(A::Error::custom(format!(
            "expected {}, got an object",
            self.0.noun()
        )))
    }
}

fn bool_from_text(text: &str) -> Result<Option<bool>, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "1" | "true" | "yes" | "on" => Ok(Some(true)),
        "0" | "false" | "no" | "off" => Ok(Some(false)),
        _ => Err(format!("expected a boolean, got the string {text:?}")),
    }
}

fn f64_from_text(text: &str) -> Result<Option<f64>, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    trimmed
        .parse::<f64>()
        .map(Some)
        .map_err(|_| format!("expected a number, got the string {text:?}"))
}

fn count_from_f64(float: f64) -> Result<u64, String> {
    if float.is_finite() && float >= 0.0 && float <= u64::MAX as f64 {
        // Rounding is the intent: a byte or second count sent as 1.0e9 or "12.0".
        Ok(float.round() as u64)
    } else {
        Err(format!("expected a non-negative count, got {float}"))
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

/// The boolean reading of the permission map, which arrives as a `Value` map.
pub(crate) fn bool_from_value(value: &Value) -> Result<Option<bool>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Bool(flag) => Ok(Some(*flag)),
        Value::Number(number) => Ok(Some(number.as_f64().is_some_and(|n| n != 0.0))),
        Value::String(text) => bool_from_text(text),
        other => Err(format!("expected a boolean, got {}", kind_of(other))),
    }
}

fn f64_from_value(value: &Value) -> Result<Option<f64>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(number) => Ok(number.as_f64()),
        Value::String(text) => f64_from_text(text),
        other => Err(format!("expected a number, got {}", kind_of(other))),
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
    fn a_wrong_json_type_is_an_error_that_says_what_was_expected() {
        let message = |json: &str| probe(json).unwrap_err().to_string();
        assert!(message(r#"{"cpu":[1]}"#).starts_with("expected a number, got an array"));
        assert!(message(r#"{"mem":{"a":1}}"#)
            .starts_with("expected a non-negative count, got an object"));
        assert!(message(r#"{"mem":true}"#).starts_with("expected a number, got a boolean"));
        assert!(message(r#"{"flag":{}}"#).starts_with("expected a boolean, got an object"));
        assert!(message(r#"{"id":[]}"#).starts_with("expected a string, got an array"));
        assert!(message(r#"{"mem":-3}"#).starts_with("expected a non-negative count, got -3"));
    }

    #[test]
    fn numbers_and_flags_in_text_fields_keep_their_json_text() {
        assert_eq!(probe(r#"{"id":1.5}"#).unwrap().id.as_deref(), Some("1.5"));
        assert_eq!(probe(r#"{"id":-2}"#).unwrap().id.as_deref(), Some("-2"));
        assert_eq!(probe(r#"{"id":true}"#).unwrap().id.as_deref(), Some("true"));
        assert_eq!(probe(r#"{"id":null}"#).unwrap().id, None);
        assert_eq!(probe(r#"{"flag":2.5}"#).unwrap().flag, Some(true));
        assert_eq!(probe(r#"{"cpu":-0.5}"#).unwrap().cpu, Some(-0.5));
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
