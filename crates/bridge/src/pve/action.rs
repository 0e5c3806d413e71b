//! The guest actions the bridge can ask Proxmox for, and which guest types have them;
//! the node power actions ([`NodeAction`]).
//!
//! Shared vocabulary: the command side parses and POSTs them, Home Assistant discovery
//! announces one button each. It lives here, at the Proxmox boundary, so neither of those
//! modules depends on the other.

use std::fmt;

use super::GuestKind;

/// A lifecycle action or a backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Start,
    Stop,
    Shutdown,
    Reboot,
    Reset,
    Suspend,
    Resume,
    /// qemu suspend to disk (`todisk=1`).
    Hibernate,
    Backup,
    /// Take a snapshot (`POST …/snapshot`).
    Snapshot,
    /// Roll back to a snapshot (`POST …/snapshot/{name}/rollback`): destructive, needs
    /// `commands.rollback`.
    Rollback,
    /// Delete a snapshot (`DELETE …/snapshot/{name}`).
    DeleteSnapshot,
}

impl Action {
    pub const ALL: [Action; 12] = [
        Action::Start,
        Action::Stop,
        Action::Shutdown,
        Action::Reboot,
        Action::Reset,
        Action::Suspend,
        Action::Resume,
        Action::Hibernate,
        Action::Backup,
        Action::Snapshot,
        Action::Rollback,
        Action::DeleteSnapshot,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Shutdown => "shutdown",
            Action::Reboot => "reboot",
            Action::Reset => "reset",
            Action::Suspend => "suspend",
            Action::Resume => "resume",
            Action::Hibernate => "hibernate",
            Action::Backup => "backup",
            Action::Snapshot => "snapshot",
            Action::Rollback => "rollback",
            Action::DeleteSnapshot => "delete_snapshot",
        }
    }

    /// The action named `word` (`start`, `backup`, …).
    pub fn parse(word: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == word)
    }

    /// Is this action possible for this kind of guest? (LXC has no reset and no
    /// suspend-to-disk.)
    pub fn valid_for(self, kind: GuestKind) -> bool {
        !matches!(
            (self, kind),
            (Action::Reset | Action::Hibernate, GuestKind::Lxc)
        )
    }

    /// A snapshot action: it takes a snapshot `name`, and Home Assistant gets no button
    /// for it (automations and scripts send the name).
    pub fn is_snapshot(self) -> bool {
        matches!(
            self,
            Action::Snapshot | Action::Rollback | Action::DeleteSnapshot
        )
    }

    /// The Proxmox endpoint's last path segment (`…/status/{endpoint}`), `None` for backup.
    pub fn endpoint(self) -> Option<&'static str> {
        match self {
            Action::Hibernate => Some("suspend"),
            Action::Backup | Action::Snapshot | Action::Rollback | Action::DeleteSnapshot => None,
            other => Some(other.as_str()),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node power action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeAction {
    Reboot,
    Shutdown,
    StartAll,
    StopAll,
    SuspendAll,
    WakeOnLan,
}

impl NodeAction {
    pub const ALL: [NodeAction; 6] = [
        NodeAction::Reboot,
        NodeAction::Shutdown,
        NodeAction::StartAll,
        NodeAction::StopAll,
        NodeAction::SuspendAll,
        NodeAction::WakeOnLan,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeAction::Reboot => "reboot",
            NodeAction::Shutdown => "shutdown",
            NodeAction::StartAll => "startall",
            NodeAction::StopAll => "stopall",
            NodeAction::SuspendAll => "suspendall",
            NodeAction::WakeOnLan => "wakeonlan",
        }
    }

    pub fn parse(word: &str) -> Option<NodeAction> {
        NodeAction::ALL.into_iter().find(|a| a.as_str() == word)
    }

    /// Options this action accepts in JSON payloads.
    pub(crate) fn options(self) -> &'static [&'static str] {
        match self {
            NodeAction::Reboot | NodeAction::Shutdown => &["force"],
            NodeAction::StartAll => &["vms", "force"],
            NodeAction::StopAll => &["vms", "force", "timeout"],
            NodeAction::SuspendAll => &["vms"],
            NodeAction::WakeOnLan => &[],
        }
    }

    /// Reboot and shutdown take the node itself down.
    pub fn powers_off(self) -> bool {
        matches!(self, NodeAction::Reboot | NodeAction::Shutdown)
    }

    /// The bulk guest actions, each a Proxmox task.
    pub fn is_bulk(self) -> bool {
        matches!(
            self,
            NodeAction::StartAll | NodeAction::StopAll | NodeAction::SuspendAll
        )
    }
}

impl fmt::Display for NodeAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
