//! The snapshot actions (`snapshot`, `rollback`, `delete_snapshot`): their options, the
//! client-side check of Proxmox's name rules, and the request each one sends.
//!
//! A snapshot name is Proxmox's `pve-configid` (pve-common `JSONSchema.pm`:
//! `[a-z][a-z0-9_-]+`, case-insensitive, so at least 2 characters) of at most 40
//! characters; `current` names the guest's present state and cannot be a snapshot, and
//! `pending` (qemu) / `vzdump` (lxc) are reserved too. Checking here means a bad name is
//! `rejected` with a clear reason and nothing reaches Proxmox.

use serde_json::Value;

use super::parse::{Action, Command, Rejection};
use crate::pve::{GuestKind, PveClient, PveError, Upid};

/// The longest snapshot name Proxmox takes (`pve-snapshot-name`).
pub const MAX_NAME: usize = 40;

/// The longest description sent (Proxmox's own limit is far above any real use).
const MAX_DESCRIPTION: usize = 8 * 1024;

/// The options of the snapshot actions, as given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotOptions {
    pub name: Option<String>,
    pub description: Option<String>,
    /// qemu `snapshot`: save the RAM too.
    pub vmstate: Option<bool>,
    /// `rollback`: start the guest afterwards.
    pub start: Option<bool>,
}

/// The options each snapshot action takes (`None` for other actions).
pub fn options(action: Action, kind: GuestKind) -> Option<&'static [&'static str]> {
    match (action, kind) {
        (Action::Snapshot, GuestKind::Qemu) => Some(&["name", "description", "vmstate"]),
        (Action::Snapshot, GuestKind::Lxc) => Some(&["name", "description"]),
        (Action::Rollback, _) => Some(&["name", "start"]),
        (Action::DeleteSnapshot, _) => Some(&["name"]),
        _ => None,
    }
}

/// Names no snapshot can have on a guest of this kind.
fn reserved(kind: GuestKind) -> &'static [&'static str] {
    match kind {
        GuestKind::Qemu => &["current", "pending"],
        GuestKind::Lxc => &["current", "vzdump"],
    }
}

/// Checks a snapshot name against Proxmox's rules; the reason says which one it breaks.
pub fn check_name(value: &Value, kind: GuestKind) -> Result<String, Rejection> {
    let Some(name) = value.as_str() else {
        return Err(Rejection::invalid(
            "'name' must be a string: the snapshot's name",
        ));
    };
    let shown: String = name.chars().take(MAX_NAME + 2).collect();
    let count = name.chars().count();
    if count > MAX_NAME {
        return Err(Rejection::invalid(format!(
            "snapshot name '{shown}…' is too long ({count} characters, at most {MAX_NAME})"
        )));
    }
    let mut chars = name.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && count >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !well_formed {
        return Err(Rejection::invalid(format!(
            "invalid snapshot name '{shown}': Proxmox wants a letter, then letters, digits, '-' or '_' (2 to {MAX_NAME} characters)"
        )));
    }
    if reserved(kind).contains(&name) {
        return Err(Rejection::invalid(format!(
            "snapshot name '{name}' is reserved by Proxmox for {kind} guests"
        )));
    }
    Ok(name.to_string())
}

/// Reads one snapshot option into `options`.
pub fn set(
    options: &mut SnapshotOptions,
    key: &str,
    value: &Value,
    kind: GuestKind,
    boolean: impl Fn(&str, &Value) -> Result<bool, Rejection>,
) -> Result<(), Rejection> {
    match key {
        "name" => options.name = Some(check_name(value, kind)?),
        "description" => match value.as_str() {
            Some(text)
                if text.len() <= MAX_DESCRIPTION
                    && !text.chars().any(|c| c.is_control() && c != '\n') =>
            {
                options.description = Some(text.to_string())
            }
            _ => {
                return Err(Rejection::invalid(format!(
                    "'description' must be text of at most {MAX_DESCRIPTION} bytes"
                )))
            }
        },
        "vmstate" => options.vmstate = Some(boolean(key, value)?),
        "start" => options.start = Some(boolean(key, value)?),
        _ => return Err(Rejection::invalid(format!("unknown option '{key}'"))),
    }
    Ok(())
}

/// A snapshot action needs its `name`; the bare word alone is not enough.
pub fn complete(command: &Command) -> Result<(), Rejection> {
    if command.action.is_snapshot() && command.snapshot.name.is_none() {
        return Err(Rejection::invalid(format!(
            "'{}' needs the snapshot's \"name\": send JSON, e.g. {{\"action\": \"{}\", \"name\": \"before-upgrade\"}}",
            command.action, command.action
        )));
    }
    Ok(())
}

/// Sends the snapshot action's request (never resent) and returns its task.
pub async fn post(
    client: &PveClient,
    node: &str,
    (kind, vmid): (GuestKind, u32),
    command: &Command,
) -> Result<Upid, PveError> {
    let o = &command.snapshot;
    let name = o.name.clone().unwrap_or_default();
    let bit = |b: bool| if b { "1" } else { "0" }.to_string();
    match command.action {
        Action::Snapshot => {
            let mut form = vec![("snapname", name)];
            if let Some(d) = &o.description {
                form.push(("description", d.clone()));
            }
            if let (GuestKind::Qemu, Some(v)) = (kind, o.vmstate) {
                form.push(("vmstate", bit(v)));
            }
            client.snapshot_create(node, kind, vmid, &form).await
        }
        Action::Rollback => {
            let form: Vec<(&str, String)> =
                o.start.map(|s| ("start", bit(s))).into_iter().collect();
            client
                .snapshot_rollback(node, kind, vmid, &name, &form)
                .await
        }
        _ => client.snapshot_delete(node, kind, vmid, &name).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn proxmox_name_rules_are_checked_with_a_reason() {
        use GuestKind::{Lxc, Qemu};
        assert_eq!(
            check_name(&json!("before-upgrade"), Qemu).unwrap(),
            "before-upgrade"
        );
        assert_eq!(check_name(&json!("A_1"), Lxc).unwrap(), "A_1");
        let long = "a".repeat(41);
        let cases = [
            (json!("Bad Name"), Qemu, "invalid snapshot name 'Bad Name'"),
            (json!("1st"), Qemu, "invalid snapshot name"),
            (json!("a"), Qemu, "2 to 40"),
            (json!(""), Qemu, "invalid snapshot name"),
            (json!(long), Qemu, "too long (41 characters"),
            (json!("current"), Qemu, "reserved"),
            (json!("pending"), Qemu, "reserved"),
            (json!("vzdump"), Lxc, "reserved"),
            (json!(5), Qemu, "must be a string"),
        ];
        for (value, kind, reason) in cases {
            let r = check_name(&value, kind).expect_err(&value.to_string());
            assert!(r.reason.contains(reason), "{value}: {}", r.reason);
        }
        assert!(check_name(&json!("vzdump"), Qemu).is_ok());
        assert!(check_name(&json!("pending"), Lxc).is_ok());
        assert!(check_name(&json!("a".repeat(40)), Qemu).is_ok());
    }
}
