//! Command payloads (SPEC §4): a bare action word (`start`) or a JSON object
//! `{"action": "shutdown", "timeout": 30, "force_stop": true, "id": "abc"}`.
//!
//! Pure parsing and validation: nothing here talks to Proxmox, so everything a user can
//! get wrong is rejected, with a reason, before any POST.

use serde_json::{Map, Value};

pub use crate::pve::Action;
use crate::pve::GuestKind;
use crate::types::{BackupMode, Compress, StorageId};

/// Payloads larger than this are rejected unread (SPEC §4).
pub const MAX_PAYLOAD: usize = 4 * 1024;

/// The longest `id` echoed back; keeps result payloads small.
const MAX_ID_LEN: usize = 128;

/// Options this action accepts in JSON payloads.
fn allowed_options(action: Action, kind: GuestKind) -> &'static [&'static str] {
    if let Some(options) = super::snapshot::options(action, kind) {
        return options;
    }
    match (action, kind) {
        (Action::Reboot, _) => &["timeout"],
        // `keepActive` exists for VMs only (qemu-server), as the seed lists it.
        (Action::Shutdown, GuestKind::Qemu) => &["timeout", "force_stop", "keep_active"],
        (Action::Shutdown, GuestKind::Lxc) => &["timeout", "force_stop"],
        (Action::Suspend, GuestKind::Qemu) => &["to_disk"],
        (Action::Backup, _) => &[
            "storage",
            "mode",
            "compress",
            "notes_template",
            "remove",
            "protected",
        ],
        _ => &[],
    }
}

/// Backup options as the user gave them; unset ones come from `[backup]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupOptions {
    pub storage: Option<StorageId>,
    pub mode: Option<BackupMode>,
    pub compress: Option<Compress>,
    pub notes_template: Option<String>,
    pub remove: Option<bool>,
    pub protected: Option<bool>,
}

/// A parsed, well-formed command (not yet authorised: see the policy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub action: Action,
    /// The caller's correlation id, echoed in the result.
    pub id: Option<String>,
    pub timeout: Option<u64>,
    pub force_stop: Option<bool>,
    /// VM shutdown: leave the storage volumes active (`keepActive`). Only `false` can
    /// reach Proxmox: it allows `true` to `root@pam` alone, never to an API token.
    pub keep_active: Option<bool>,
    pub to_disk: bool,
    pub backup: BackupOptions,
    /// `snapshot`, `rollback`, `delete_snapshot`: the name and options.
    pub snapshot: super::snapshot::SnapshotOptions,
}

impl Command {
    pub fn new(action: Action) -> Command {
        Command {
            action,
            id: None,
            timeout: None,
            force_stop: None,
            keep_active: None,
            to_disk: action == Action::Hibernate,
            backup: BackupOptions::default(),
            snapshot: Default::default(),
        }
    }

    /// The form parameters of the lifecycle POST, booleans as `0`/`1` (Proxmox rejects
    /// `true` in form bodies).
    pub fn lifecycle_form(&self) -> Vec<(&'static str, String)> {
        let mut form = Vec::new();
        if let Some(t) = self.timeout {
            form.push(("timeout", t.to_string()));
        }
        if let Some(f) = self.force_stop {
            form.push(("forceStop", bit(f)));
        }
        if let Some(k) = self.keep_active {
            form.push(("keepActive", bit(k)));
        }
        if self.to_disk {
            form.push(("todisk", "1".to_string()));
        }
        form
    }
}

/// Proxmox's form value of a boolean.
pub(super) fn bit(b: bool) -> String {
    if b { "1" } else { "0" }.to_string()
}

/// Why a command or request was refused, before anything reached Proxmox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectionKind {
    /// The payload is malformed, or asks for something this guest cannot do.
    Invalid,
    /// The `[commands]` policy refuses it.
    Policy,
    /// No such cluster or guest, or the cluster has not been polled yet.
    Unknown,
    /// Another command for the guest is still running.
    Busy,
    /// Over the rate limit.
    RateLimited,
    /// It arrived retained: a retained command would replay at every reconnect.
    Retained,
}

/// A refusal with its kind (callers branch on it: a busy or rate-limited refusal is not
/// about the payload) and the text that goes to the result topic and the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Rejection {
    pub kind: RejectionKind,
    pub reason: String,
}

impl Rejection {
    pub fn new(kind: RejectionKind, reason: impl Into<String>) -> Rejection {
        Rejection {
            kind,
            reason: reason.into(),
        }
    }

    /// A malformed payload or an impossible request.
    pub fn invalid(reason: impl Into<String>) -> Rejection {
        Rejection::new(RejectionKind::Invalid, reason)
    }
}

pub(super) fn reject<T>(reason: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection::invalid(reason))
}

/// A command payload, guest or node: a bare word, or a JSON object.
pub enum Envelope<'a> {
    Word(&'a str),
    Object(Map<String, Value>),
}

/// Reads a command payload's envelope: at most [`MAX_PAYLOAD`] bytes of UTF-8, not
/// empty, a bare word or a JSON object.
pub fn envelope(payload: &[u8]) -> Result<Envelope<'_>, Rejection> {
    if payload.len() > MAX_PAYLOAD {
        return reject(format!(
            "payload too large ({} bytes, at most {MAX_PAYLOAD})",
            payload.len()
        ));
    }
    let Ok(text) = std::str::from_utf8(payload) else {
        return reject("payload is not UTF-8");
    };
    let text = text.trim();
    if text.is_empty() {
        return reject("empty payload");
    }
    if !text.starts_with('{') && !text.starts_with('[') {
        return Ok(Envelope::Word(text));
    }
    match serde_json::from_str(text) {
        Ok(Value::Object(o)) => Ok(Envelope::Object(o)),
        Ok(_) => reject("JSON payload must be an object"),
        Err(e) => reject(format!("payload is not valid JSON: {e}")),
    }
}

/// The `id` field of a JSON command: a string of at most [`MAX_ID_LEN`] characters or
/// a number, echoed back in the reports.
pub fn id_field(object: &Map<String, Value>) -> Result<Option<String>, Rejection> {
    match object.get("id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= MAX_ID_LEN => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => reject(format!(
            "id must be a string of at most {MAX_ID_LEN} characters"
        )),
    }
}

/// Parses a payload for a guest of `kind`. The `id` is recovered even from payloads
/// that are otherwise rejected, so the caller can correlate the rejection.
pub fn parse(payload: &[u8], kind: GuestKind) -> Result<Command, (Option<String>, Rejection)> {
    match envelope(payload).map_err(|r| (None, r))? {
        Envelope::Word(text) => {
            let action = Action::parse(text).ok_or_else(|| (None, unknown_action(text)))?;
            if !action.valid_for(kind) {
                return Err((None, invalid_for(action, kind)));
            }
            let command = Command::new(action);
            super::snapshot::complete(&command).map_err(|r| (None, r))?;
            Ok(command)
        }
        Envelope::Object(object) => parse_fields(&object, kind),
    }
}

/// Parses a command already read as a JSON object (`action`, `id`, options); the bridge
/// requests hand over their remaining fields here.
pub fn parse_fields(
    object: &Map<String, Value>,
    kind: GuestKind,
) -> Result<Command, (Option<String>, Rejection)> {
    let id = id_field(object).map_err(|r| (None, r))?;
    parse_object(object, kind)
        .map_err(|r| (id.clone(), r))
        .map(|mut c| {
            c.id = id;
            c
        })
}

fn unknown_action(word: &str) -> Rejection {
    let shown: String = word.chars().take(40).collect();
    Rejection::invalid(format!(
        "unknown action '{shown}' (one of: {})",
        Action::ALL
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

fn invalid_for(action: Action, kind: GuestKind) -> Rejection {
    Rejection::invalid(format!(
        "action '{action}' is not available for {kind} guests"
    ))
}

fn parse_object(object: &Map<String, Value>, kind: GuestKind) -> Result<Command, Rejection> {
    let action = match object.get("action") {
        Some(Value::String(word)) => Action::parse(word).ok_or_else(|| unknown_action(word))?,
        Some(_) => return reject("action must be a string"),
        None => return reject("missing \"action\""),
    };
    if !action.valid_for(kind) {
        return Err(invalid_for(action, kind));
    }
    let allowed = allowed_options(action, kind);
    let mut command = Command::new(action);
    for (key, value) in object {
        if key == "action" || key == "id" {
            continue;
        }
        option_allowed(action, key, allowed)?;
        match key.as_str() {
            "timeout" => command.timeout = Some(positive_int(key, value, 86_400)?),
            "force_stop" => command.force_stop = Some(boolean(key, value)?),
            "keep_active" => {
                if boolean(key, value)? {
                    // qemu-server: `raise_param_exc({ keepActive => "Only root may use
                    // this option." }) if $keepActive && $authuser ne 'root@pam'`; a
                    // token's user is `user@realm!tokenid`, so the POST could only fail.
                    return reject(
                        "keep_active: Proxmox allows keepActive only for root@pam itself, never for an API token such as the bridge's (Only root may use this option.)",
                    );
                }
                command.keep_active = Some(false);
            }
            "to_disk" => command.to_disk = boolean(key, value)?,
            "storage" => command.backup.storage = Some(storage_id(value)?),
            "mode" => {
                command.backup.mode =
                    Some(one_of(key, value, BackupMode::parse, BackupMode::CHOICES)?)
            }
            "compress" => {
                command.backup.compress =
                    Some(one_of(key, value, Compress::parse, Compress::CHOICES)?)
            }
            "notes_template" => command.backup.notes_template = Some(notes(value)?),
            "remove" => command.backup.remove = Some(boolean(key, value)?),
            "protected" => command.backup.protected = Some(boolean(key, value)?),
            "name" | "description" | "vmstate" | "start" => {
                super::snapshot::set(&mut command.snapshot, key, value, kind, boolean)?
            }
            _ => return reject(format!("unknown option '{key}'")),
        }
    }
    super::snapshot::complete(&command)?;
    Ok(command)
}

fn positive_int(key: &str, value: &Value, max: u64) -> Result<u64, Rejection> {
    match value.as_u64() {
        Some(n) if (1..=max).contains(&n) => Ok(n),
        _ => reject(format!(
            "'{key}' must be a whole number of seconds from 1 to {max}"
        )),
    }
}

/// Refuses an option the action does not take, naming the ones it does (guest and node
/// commands alike).
pub(super) fn option_allowed(
    action: impl std::fmt::Display,
    key: &str,
    allowed: &[&str],
) -> Result<(), Rejection> {
    if allowed.contains(&key) {
        Ok(())
    } else if allowed.is_empty() {
        reject(format!("'{action}' takes no options, got '{key}'"))
    } else {
        reject(format!(
            "unknown option '{key}' for '{action}' (allowed: {})",
            allowed.join(", ")
        ))
    }
}

/// A JSON boolean, or Proxmox's `0`/`1`.
pub(super) fn boolean(key: &str, value: &Value) -> Result<bool, Rejection> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
        Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
        _ => reject(format!("'{key}' must be true or false")),
    }
}

/// A string (or, for `compress`, a number such as `0`) that `parse` accepts.
fn one_of<T>(
    key: &str,
    value: &Value,
    parse: impl Fn(&str) -> Option<T>,
    choices: &str,
) -> Result<T, Rejection> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    parse(&text).ok_or_else(|| Rejection::invalid(format!("'{key}' must be one of: {choices}")))
}

/// A Proxmox storage id ([`StorageId`]'s rule, shared with `backup.storage`).
fn storage_id(value: &Value) -> Result<StorageId, Rejection> {
    value.as_str().and_then(StorageId::parse).ok_or_else(|| {
        Rejection::invalid(format!(
            "'storage' must be a Proxmox storage id ({})",
            StorageId::RULE
        ))
    })
}

fn notes(value: &Value) -> Result<String, Rejection> {
    match value.as_str() {
        Some(s) if s.len() <= 1024 && !s.chars().any(|c| c.is_control() && c != '\n') => {
            Ok(s.to_string())
        }
        _ => reject("'notes_template' must be text of at most 1024 characters"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GuestKind::{Lxc, Qemu};

    #[test]
    fn bare_words_are_actions() {
        assert_eq!(parse(b"start", Qemu).unwrap(), Command::new(Action::Start));
        assert_eq!(parse(b" shutdown\n", Lxc).unwrap().action, Action::Shutdown);
        let hibernate = parse(b"hibernate", Qemu).unwrap();
        assert!(hibernate.to_disk);
        assert_eq!(
            hibernate.lifecycle_form(),
            vec![("todisk", "1".to_string())]
        );
        assert_eq!(hibernate.action.endpoint(), Some("suspend"));
    }

    #[test]
    fn json_options_become_proxmox_form_fields_with_0_1_booleans() {
        let c = parse(
            br#"{"action":"shutdown","timeout":30,"force_stop":true,"id":"abc"}"#,
            Qemu,
        )
        .unwrap();
        assert_eq!(c.id.as_deref(), Some("abc"));
        assert_eq!(
            c.lifecycle_form(),
            vec![
                ("timeout", "30".to_string()),
                ("forceStop", "1".to_string())
            ]
        );
        let c = parse(br#"{"action":"suspend","to_disk":true}"#, Qemu).unwrap();
        assert_eq!(c.lifecycle_form(), vec![("todisk", "1".to_string())]);
        let c = parse(br#"{"action":"backup","storage":"nfs-backup","mode":"stop","compress":"zstd","remove":false,"protected":1,"notes_template":"{{guestname}}"}"#, Lxc).unwrap();
        assert_eq!(c.backup.storage.as_ref().unwrap().as_str(), "nfs-backup");
        assert_eq!(c.backup.mode, Some(BackupMode::Stop));
        assert_eq!(c.backup.compress, Some(Compress::Zstd));
        assert_eq!(c.backup.remove, Some(false));
        assert_eq!(c.backup.protected, Some(true));
    }

    /// The seed's VM shutdown option: passed as `keepActive=0/1`; `true` is refused
    /// before any POST (Proxmox allows it to root@pam alone, never to a token); a
    /// container's shutdown has no such option.
    #[test]
    fn keep_active_is_a_vm_shutdown_option_that_a_token_can_only_turn_off() {
        let c = parse(br#"{"action":"shutdown","keep_active":false}"#, Qemu).unwrap();
        assert_eq!(c.lifecycle_form(), vec![("keepActive", "0".to_string())]);
        let (_, rejection) =
            parse(br#"{"action":"shutdown","keep_active":true}"#, Qemu).unwrap_err();
        assert!(
            rejection.reason.contains("root@pam"),
            "{}",
            rejection.reason
        );
        assert!(parse(br#"{"action":"shutdown","keep_active":false}"#, Lxc).is_err());
        assert!(parse(br#"{"action":"stop","keep_active":false}"#, Qemu).is_err());
    }

    #[test]
    fn actions_that_a_container_does_not_have_are_rejected() {
        assert!(parse(b"reset", Lxc).is_err());
        assert!(parse(b"hibernate", Lxc).is_err());
        assert!(parse(br#"{"action":"suspend","to_disk":true}"#, Lxc).is_err());
        assert!(parse(b"reset", Qemu).is_ok());
    }

    #[test]
    fn malformed_payloads_are_rejected_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"explode", "unknown action"),
            (b"{not json", "not valid JSON"),
            (b"[1,2]", "must be an object"),
            (br#"{"timeout":3}"#, "missing"),
            (br#"{"action":5}"#, "must be a string"),
            (br#"{"action":"start","timeout":30}"#, "takes no options"),
            (br#"{"action":"shutdown","timeout":-1}"#, "whole number"),
            (br#"{"action":"shutdown","timeout":"30"}"#, "whole number"),
            (
                br#"{"action":"shutdown","force_stop":"yes"}"#,
                "true or false",
            ),
            (br#"{"action":"backup","mode":"fast"}"#, "one of"),
            (br#"{"action":"backup","storage":"../etc"}"#, "storage id"),
            (br#"{"action":"reboot","colour":"red"}"#, "unknown option"),
            (&[0xff, 0xfe], "UTF-8"),
        ];
        for (payload, reason) in cases {
            let (_, rejection) = parse(payload, Qemu).expect_err(&String::from_utf8_lossy(payload));
            assert!(
                rejection.reason.contains(reason),
                "{:?}: {}",
                String::from_utf8_lossy(payload),
                rejection.reason
            );
        }
        let big = vec![b' '; MAX_PAYLOAD + 1];
        assert!(parse(&big, Qemu)
            .unwrap_err()
            .1
            .reason
            .contains("too large"));
    }

    #[test]
    fn the_id_survives_a_rejection() {
        let (id, _) = parse(br#"{"action":"fly","id":"req-7"}"#, Qemu).unwrap_err();
        assert_eq!(id.as_deref(), Some("req-7"));
    }
}
