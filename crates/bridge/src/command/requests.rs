//! The bridge requests on `{base}/bridge/request/{name}` (SPEC §4): one serde struct per
//! request, read straight from the payload bytes.
//!
//! Ids are range-checked here, never cast: a [`Vmid`] is a whole number from 100 to
//! 999999999 (what Proxmox accepts), so `4294967396` (2^32 + 100) is refused instead of
//! becoming VM 100, and `-1`, `100.5` or `"hundred"` are refused with a reason.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::parse::MAX_PAYLOAD;

/// A guest id as Proxmox accepts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vmid(u32);

impl Vmid {
    pub const MIN: u32 = 100;
    pub const MAX: u32 = 999_999_999;

    /// `n` if Proxmox could have a guest with that id.
    pub fn new(n: u64) -> Result<Vmid, String> {
        u32::try_from(n)
            .ok()
            .filter(|n| (Self::MIN..=Self::MAX).contains(n))
            .map(Vmid)
            .ok_or_else(|| out_of_range(&n.to_string()))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Vmid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

fn out_of_range(shown: &str) -> String {
    let shown: String = shown.chars().take(40).collect();
    format!(
        "vmid must be a whole number from {} to {}, got {shown}",
        Vmid::MIN,
        Vmid::MAX
    )
}

/// A number, or a string of decimal digits (`"101"`, as some automations send).
impl<'de> Deserialize<'de> for Vmid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct VmidVisitor;
        impl Visitor<'_> for VmidVisitor {
            type Value = Vmid;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a vmid")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Vmid, E> {
                Vmid::new(n).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Vmid, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom(out_of_range(&n.to_string())))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Vmid, E> {
                Err(E::custom(out_of_range(&n.to_string())))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Vmid, E> {
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(E::custom(out_of_range(&format!("{s:?}"))));
                }
                // All digits: a parse error can only be an overflow.
                s.parse::<u64>()
                    .map_err(|_| E::custom(out_of_range(s)))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Vmid, E> {
                Err(E::custom(out_of_range(&b.to_string())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Vmid, E> {
                Err(E::custom(out_of_range("null")))
            }
        }
        deserializer.deserialize_any(VmidVisitor)
    }
}

/// `{base}/bridge/request/command`: one command for one guest, found by vmid alone.
#[derive(Debug, Deserialize)]
pub struct CommandRequest {
    pub cluster: Option<String>,
    pub transaction: Option<Value>,
    pub vmid: Vmid,
    /// The command itself (`action`, `id`, options), checked by
    /// [`super::parse::parse_fields`] once the guest's kind is known.
    #[serde(flatten)]
    pub command: Map<String, Value>,
}

/// `{base}/bridge/request/backup`: several guests, one vzdump per node.
#[derive(Debug, Deserialize)]
pub struct BackupRequest {
    pub cluster: Option<String>,
    pub transaction: Option<Value>,
    pub vmids: BackupTargets,
    /// Backup options (`storage`, `mode`, …) and `id`, checked like a `backup` command.
    #[serde(flatten)]
    pub options: Map<String, Value>,
}

/// `"all"` (every guest but templates) or a non-empty list of vmids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupTargets {
    All,
    List(Vec<Vmid>),
}

impl<'de> Deserialize<'de> for BackupTargets {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TargetsVisitor;
        const EXPECTED: &str = "\"vmids\" must be a non-empty list or \"all\"";
        impl<'de> Visitor<'de> for TargetsVisitor {
            type Value = BackupTargets;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<BackupTargets, E> {
                if s == "all" {
                    Ok(BackupTargets::All)
                } else {
                    Err(E::custom(EXPECTED))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BackupTargets, A::Error> {
                let mut list = Vec::new();
                while let Some(vmid) = seq.next_element::<Vmid>()? {
                    list.push(vmid);
                }
                if list.is_empty() {
                    return Err(de::Error::custom(EXPECTED));
                }
                Ok(BackupTargets::List(list))
            }
        }
        deserializer.deserialize_any(TargetsVisitor)
    }
}

/// `{base}/bridge/request/refresh`: poll now (one cluster, or all).
#[derive(Debug, Deserialize)]
pub struct RefreshRequest {
    pub cluster: Option<String>,
    pub transaction: Option<Value>,
}

/// A bridge request, by name.
#[derive(Debug)]
pub enum Request {
    Command(CommandRequest),
    Backup(BackupRequest),
    Refresh(RefreshRequest),
}

/// A request that could not be read; the answer still echoes its `transaction` when
/// the payload had one.
#[derive(Debug, PartialEq)]
pub struct BadRequest {
    pub transaction: Option<Value>,
    pub reason: String,
}

impl Request {
    /// Reads the request `name` from its payload; an empty payload is `{}`.
    pub fn parse(name: &str, payload: &[u8]) -> Result<Request, BadRequest> {
        if payload.len() > MAX_PAYLOAD {
            return Err(BadRequest {
                transaction: None,
                reason: format!(
                    "payload too large ({} bytes, at most {MAX_PAYLOAD})",
                    payload.len()
                ),
            });
        }
        let payload: &[u8] = if payload.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            payload
        };
        let parsed = match name {
            "command" => serde_json::from_slice(payload).map(Request::Command),
            "backup" => serde_json::from_slice(payload).map(Request::Backup),
            "refresh" => serde_json::from_slice(payload).map(Request::Refresh),
            other => {
                return Err(BadRequest {
                    transaction: transaction_of(payload),
                    reason: format!("unknown request '{other}' (backup, refresh, command)"),
                })
            }
        };
        parsed.map_err(|e| BadRequest {
            transaction: transaction_of(payload),
            reason: if e.is_syntax() || e.is_eof() {
                format!("request is not valid JSON: {e}")
            } else {
                format!("invalid request: {e}")
            },
        })
    }
}

/// The `transaction` of a payload read on its own: for a request the full parse refused,
/// and for one that is answered without being run (retained, overloaded). `None` for a
/// payload over [`MAX_PAYLOAD`], which is not read at all.
pub fn transaction_of(payload: &[u8]) -> Option<Value> {
    if payload.len() > MAX_PAYLOAD {
        return None;
    }
    #[derive(Deserialize)]
    struct Envelope {
        transaction: Option<Value>,
    }
    serde_json::from_slice::<Envelope>(payload)
        .ok()
        .and_then(|e| e.transaction)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(body: &str) -> Result<CommandRequest, BadRequest> {
        match Request::parse("command", body.as_bytes())? {
            Request::Command(c) => Ok(c),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_vmid_is_a_whole_number_in_proxmoxs_range_never_a_truncated_one() {
        assert_eq!(
            command(r#"{"vmid":101,"action":"stop"}"#)
                .unwrap()
                .vmid
                .get(),
            101
        );
        assert_eq!(
            command(r#"{"vmid":"101","action":"stop"}"#)
                .unwrap()
                .vmid
                .get(),
            101
        );
        for bad in [
            "4294967396",
            "\"4294967396\"",
            "-100",
            "100.5",
            "\"hundred\"",
            "\"\"",
            "99",
            "1000000000",
            "true",
            "null",
            "18446744073709551616",
        ] {
            let err = command(&format!(
                r#"{{"vmid":{bad},"action":"stop","transaction":"t"}}"#
            ))
            .expect_err(bad);
            assert!(err.reason.contains("vmid must be"), "{bad}: {}", err.reason);
            assert_eq!(err.transaction, Some(Value::from("t")), "{bad}");
        }
    }

    #[test]
    fn the_command_fields_are_kept_for_the_command_parser() {
        let c = command(r#"{"vmid":100,"action":"shutdown","timeout":30,"id":"x","cluster":"c","transaction":1}"#)
            .unwrap();
        assert_eq!(c.cluster.as_deref(), Some("c"));
        assert_eq!(c.transaction, Some(Value::from(1)));
        let mut keys: Vec<&str> = c.command.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["action", "id", "timeout"]);
    }

    #[test]
    fn backup_targets_are_all_or_a_non_empty_list_of_vmids() {
        let backup = |body: &str| match Request::parse("backup", body.as_bytes()) {
            Ok(Request::Backup(b)) => Ok(b),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.reason),
        };
        assert_eq!(
            backup(r#"{"vmids":"all"}"#).unwrap().vmids,
            BackupTargets::All
        );
        let b = backup(r#"{"vmids":[100,"101"],"storage":"nfs"}"#).unwrap();
        assert_eq!(b.vmids, BackupTargets::List(vec![Vmid(100), Vmid(101)]));
        assert_eq!(b.options.get("storage"), Some(&Value::from("nfs")));
        for bad in [r#"{"vmids":[]}"#, r#"{"vmids":"some"}"#, r#"{"vmids":5}"#] {
            assert!(backup(bad).unwrap_err().contains("non-empty list"), "{bad}");
        }
        assert!(backup(r#"{"vmids":[100,4294967396]}"#)
            .unwrap_err()
            .contains("vmid must be"));
    }

    #[test]
    fn unreadable_requests_say_why_and_keep_the_transaction() {
        let e = Request::parse("reboot", br#"{"transaction":"t-2"}"#).unwrap_err();
        assert!(e.reason.contains("unknown request 'reboot'"));
        assert_eq!(e.transaction, Some(Value::from("t-2")));
        let e = Request::parse("refresh", b"{not json").unwrap_err();
        assert!(e.reason.contains("not valid JSON"), "{}", e.reason);
        let e = Request::parse("refresh", b"[1]").unwrap_err();
        assert!(e.reason.contains("invalid request"), "{}", e.reason);
        assert!(matches!(
            Request::parse("refresh", b"  "),
            Ok(Request::Refresh(RefreshRequest {
                cluster: None,
                transaction: None
            }))
        ));
        let big = vec![b' '; MAX_PAYLOAD + 1];
        assert!(Request::parse("refresh", &big)
            .unwrap_err()
            .reason
            .contains("too large"));
    }
}
