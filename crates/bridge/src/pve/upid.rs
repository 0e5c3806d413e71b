//! Proxmox task ids (UPIDs), parsed with the grammar of pve-common `PVE/UPID.pm`
//! (reference `pve-api.md` §4.1):
//!
//! ```text
//! UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{type}:{id}:{user}:
//! ```
//!
//! The trailing colon is part of the id. `pstart` grows to 9 hex digits after about 497 days
//! of uptime, `id` is empty for multi-guest jobs (`…:vzdump::root@pam:`), and the user of a
//! token-started task is `user@realm!tokenid`. The original text is kept, because the task
//! endpoints must be called with exactly the string Proxmox handed out.
use std::fmt;
use std::str::FromStr;

/// A parsed UPID. `Display` gives back the exact string it was parsed from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Upid {
    raw: String,
    /// The node that runs the task: task status and log must be asked of this node.
    pub node: String,
    pub pid: u32,
    /// Start time of the worker process, in clock ticks since the node booted.
    pub pstart: u64,
    /// Unix time the task started.
    pub starttime: u64,
    /// `qmstart`, `vzdump`, `hastart`, …
    pub task_type: String,
    /// Usually the vmid; empty for jobs that cover several guests.
    pub id: String,
    /// `user@realm`, or `user@realm!tokenid` for a task started with an API token.
    pub user: String,
}

/// Why a string is not a UPID.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("not a Proxmox task id (UPID) {input:?}: {problem}")]
pub struct UpidParseError {
    input: String,
    problem: &'static str,
}

impl Upid {
    /// The exact UPID text.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The user without the token part (`root@pam` for `root@pam!robin`).
    pub fn user_without_token(&self) -> &str {
        self.user
            .split_once('!')
            .map_or(self.user.as_str(), |(user, _)| user)
    }

    /// The API token id, when the task was started with one (`robin` for `root@pam!robin`).
    pub fn token_id(&self) -> Option<&str> {
        self.user.split_once('!').map(|(_, token)| token)
    }
}

impl FromStr for Upid {
    type Err = UpidParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |problem| UpidParseError {
            input: input.to_owned(),
            problem,
        };
        let body = input
            .strip_prefix("UPID:")
            .ok_or_else(|| fail("it must start with \"UPID:\""))?;
        let body = body
            .strip_suffix(':')
            .ok_or_else(|| fail("it must end with a colon"))?;
        let fields: Vec<&str> = body.split(':').collect();
        let [node, pid, pstart, starttime, task_type, id, user] = fields[..] else {
            return Err(fail("it must have 8 colon-separated fields"));
        };
        if !is_node_name(node) {
            return Err(fail("the node name is not valid"));
        }
        let pid = hex_field(pid, 8..=8).ok_or_else(|| fail("pid must be 8 hex digits"))?;
        let pstart =
            hex_field(pstart, 8..=9).ok_or_else(|| fail("pstart must be 8 or 9 hex digits"))?;
        let starttime =
            hex_field(starttime, 8..=8).ok_or_else(|| fail("starttime must be 8 hex digits"))?;
        if task_type.is_empty() || !is_free_text(task_type) {
            return Err(fail(
                "the task type must be non-empty without blanks or slashes",
            ));
        }
        if !is_free_text(id) {
            return Err(fail("the task id must have no blanks or slashes"));
        }
        if user.is_empty() || !is_free_text(user) {
            return Err(fail("the user must be non-empty without blanks or slashes"));
        }
        Ok(Upid {
            raw: input.to_owned(),
            node: node.to_owned(),
            pid: u32::try_from(pid).map_err(|_| fail("pid out of range"))?,
            pstart,
            starttime,
            task_type: task_type.to_owned(),
            id: id.to_owned(),
            user: user.to_owned(),
        })
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl serde::Serialize for Upid {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.raw)
    }
}

impl<'de> serde::Deserialize<'de> for Upid {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?`
fn is_node_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        }
        _ => false,
    }
}

/// `[^:\s/]*` (the colon is already excluded by the split).
fn is_free_text(text: &str) -> bool {
    !text.chars().any(|c| c.is_whitespace() || c == '/')
}

fn hex_field(text: &str, digits: std::ops::RangeInclusive<usize>) -> Option<u64> {
    if !digits.contains(&text.len()) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_token_upid_decodes_to_its_documented_numbers() {
        let text = "UPID:pvedev01-dc03:00060E10:00821A34:6803E819:qmcreate:666:root@pam!robin:";
        let upid: Upid = text.parse().unwrap();
        assert_eq!(upid.node, "pvedev01-dc03");
        assert_eq!(upid.pid, 396_816);
        assert_eq!(upid.pstart, 8_526_388);
        assert_eq!(upid.starttime, 1_745_086_489);
        assert_eq!(upid.task_type, "qmcreate");
        assert_eq!(upid.id, "666");
        assert_eq!(upid.user, "root@pam!robin");
        assert_eq!(upid.user_without_token(), "root@pam");
        assert_eq!(upid.token_id(), Some("robin"));
        assert_eq!(upid.to_string(), text);
    }

    #[test]
    fn a_multi_guest_vzdump_has_an_empty_id() {
        let text = "UPID:pve1:0020C066:042DF204:69C26EB0:vzdump::root@pam:";
        let upid: Upid = text.parse().unwrap();
        assert_eq!(upid.id, "");
        assert_eq!(upid.task_type, "vzdump");
        assert_eq!(upid.token_id(), None);
        assert_eq!(upid.to_string(), text);
    }

    #[test]
    fn pstart_may_have_nine_hex_digits_after_long_uptimes() {
        let upid: Upid = "UPID:pve:000A1B2C:1A2B3C4D5:6803E819:qmstart:100:root@pam:"
            .parse()
            .unwrap();
        assert_eq!(upid.pstart, 0x1_A2B3_C4D5);
    }

    #[test]
    fn lowercase_hex_is_accepted_and_kept_verbatim() {
        let text = "UPID:pve:000a1b2c:00821a34:6803e819:qmstart:100:root@pam:";
        let upid: Upid = text.parse().unwrap();
        assert_eq!(upid.pid, 0xA1B2C);
        assert_eq!(upid.to_string(), text);
    }

    #[test]
    fn strings_outside_the_grammar_are_rejected() {
        for garbage in [
            "",
            "OK",
            "upid:pve:000A1B2C:00821A34:6803E819:qmstart:100:root@pam:",
            "UPID:pve:000A1B2C:00821A34:6803E819:qmstart:100:root@pam",
            "UPID:pve:A1B2C:00821A34:6803E819:qmstart:100:root@pam:",
            "UPID:pve:000A1B2C:1A2B3C4D5E:6803E819:qmstart:100:root@pam:",
            "UPID:pve:000A1B2G:00821A34:6803E819:qmstart:100:root@pam:",
            "UPID:-pve:000A1B2C:00821A34:6803E819:qmstart:100:root@pam:",
            "UPID:pve:000A1B2C:00821A34:6803E819::100:root@pam:",
            "UPID:pve:000A1B2C:00821A34:6803E819:qmstart:100::",
            "UPID:pve:000A1B2C:00821A34:6803E819:qm start:100:root@pam:",
            "UPID:pve:000A1B2C:00821A34:6803E819:qmstart:1/0:root@pam:",
            "UPID:pve:000A1B2C:00821A34:6803E819:qmstart:100:root@pam:extra:",
        ] {
            assert!(garbage.parse::<Upid>().is_err(), "accepted {garbage:?}");
        }
    }

    #[test]
    fn the_parse_error_quotes_the_input_and_the_problem() {
        let err = "UPID:pve:1:2:3:x:y:z".parse::<Upid>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"not a Proxmox task id (UPID) "UPID:pve:1:2:3:x:y:z": it must end with a colon"#
        );
    }

    #[test]
    fn a_upid_round_trips_through_json_as_a_string() {
        let text = "UPID:pve:000A1B2C:00821A34:6803E819:qmstart:100:root@pam:";
        let upid: Upid = serde_json::from_str(&format!("\"{text}\"")).unwrap();
        assert_eq!(serde_json::to_string(&upid).unwrap(), format!("\"{text}\""));
    }
}
