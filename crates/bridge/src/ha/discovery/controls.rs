//! The guest controls: the power switch, one button per action, and the last-command
//! sensor, or their removal when the policy gives the guest no control.
use serde_json::{Map, Value};

use super::specs::{enum_template, COMMAND_STATES};
use super::{Component, DiscoveryContext};
use crate::pve::{Action, GuestKind};

/// Buttons that act at once or lose state are disabled by default: a user enables them
/// deliberately in Home Assistant.
pub(super) fn enabled_by_default(action: Action) -> bool {
    matches!(
        action,
        Action::Start | Action::Shutdown | Action::Reboot | Action::Backup
    )
}

/// The power switch, one button per action valid for the guest's type, and the
/// last-command sensor. Without control (policy), each is sent as `{"p": platform}`,
/// which is how device discovery removes a component that may have been announced by
/// an earlier run with another policy.
pub(super) fn control_components(
    ctx: &DiscoveryContext,
    c: &str,
    kind: GuestKind,
    vmid: u32,
    device_id: &str,
    controls: bool,
    components: &mut Map<String, Value>,
) {
    let command_topic = ctx.topics.command(c, kind, vmid);
    let task_topic = ctx.topics.task(c, kind, vmid);
    let mut entries: Vec<(String, Component)> = Vec::new();
    entries.push((
        "power".into(),
        Component {
            p: "switch",
            name: "Power".into(),
            val_tpl: Some("{{ 'ON' if value_json.status == 'running' else 'OFF' }}".into()),
            cmd_t: Some(command_topic.clone()),
            pl_on: Some("start"),
            pl_off: Some("shutdown"),
            stat_on: Some("ON"),
            stat_off: Some("OFF"),
            ic: Some("mdi:power"),
            ..Component::default()
        },
    ));
    for action in Action::ALL
        .into_iter()
        .filter(|a| a.valid_for(kind) && !a.is_snapshot())
    {
        let button = Button {
            name: button_name(action),
            payload: action.as_str(),
            icon: button_icon(action),
            restart: action == Action::Reboot,
            enabled: enabled_by_default(action),
        };
        entries.push((
            action.as_str().to_string(),
            button.component(&command_topic),
        ));
    }
    entries.push(("last_command".into(), last_command(task_topic)));
    insert_controls(entries, device_id, controls, components);
}

/// A command button: a press publishes `payload` on the command topic.
pub(super) struct Button {
    pub name: &'static str,
    pub payload: &'static str,
    pub icon: &'static str,
    /// HA's `restart` device class.
    pub restart: bool,
    pub enabled: bool,
}

impl Button {
    pub(super) fn component(self, command_topic: &str) -> Component {
        Component {
            p: "button",
            name: self.name.into(),
            cmd_t: Some(command_topic.to_owned()),
            pl_prs: Some(self.payload),
            dev_cla: self.restart.then_some("restart"),
            ic: Some(self.icon),
            en: (!self.enabled).then_some(false),
            ..Component::default()
        }
    }
}

/// The last-command sensor: the state of the latest command's task, on `task_topic`.
pub(super) fn last_command(task_topic: String) -> Component {
    Component {
        p: "sensor",
        name: "Last command".into(),
        val_tpl: Some(enum_template("state", COMMAND_STATES).into()),
        dev_cla: Some("enum"),
        ops: Some(COMMAND_STATES),
        stat_t: Some(task_topic.clone()),
        json_attr_t: Some(task_topic),
        ent_cat: Some("diagnostic"),
        ic: Some("mdi:console"),
        ..Component::default()
    }
}

/// The controls as announced (with control), or each as `{"p": platform}` (without).
pub(super) fn insert_controls(
    entries: Vec<(String, Component)>,
    device_id: &str,
    controls: bool,
    components: &mut Map<String, Value>,
) {
    for (key, mut component) in entries {
        let value = if controls {
            component.uniq_id = format!("{device_id}_{key}");
            component.qos = 1;
            component.into_value()
        } else {
            serde_json::json!({ "p": component.p })
        };
        components.insert(key, value);
    }
}

pub(super) fn button_name(action: Action) -> &'static str {
    match action {
        Action::Start => "Start",
        Action::Stop => "Stop",
        Action::Shutdown => "Shutdown",
        Action::Reboot => "Reboot",
        Action::Reset => "Reset",
        Action::Suspend => "Suspend",
        Action::Resume => "Resume",
        Action::Hibernate => "Hibernate",
        Action::Backup => "Backup",
        Action::Snapshot => "Snapshot",
        Action::Rollback => "Rollback",
        Action::DeleteSnapshot => "Delete snapshot",
    }
}

pub(super) fn button_icon(action: Action) -> &'static str {
    match action {
        Action::Start => "mdi:play",
        Action::Stop => "mdi:stop",
        Action::Shutdown => "mdi:power",
        Action::Reboot => "mdi:restart",
        Action::Reset => "mdi:restart-alert",
        Action::Suspend => "mdi:pause",
        Action::Resume => "mdi:play-pause",
        Action::Hibernate => "mdi:sleep",
        Action::Backup => "mdi:backup-restore",
        Action::Snapshot => "mdi:camera",
        Action::Rollback => "mdi:history",
        Action::DeleteSnapshot => "mdi:camera-off",
    }
}
