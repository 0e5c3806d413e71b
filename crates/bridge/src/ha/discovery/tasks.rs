//! The guest's "Last task" sensor: its latest Proxmox task of any origin, read from the
//! retained `…/last_task` topic (not the device's state topic), with the task's fields
//! as attributes.
use serde_json::Value;

use super::specs::{enum_template, LAST_TASK_STATES};
use super::{Component, DiscoveryContext};
use crate::pve::GuestKind;

pub(super) fn last_task_component(
    ctx: &DiscoveryContext,
    c: &str,
    kind: GuestKind,
    vmid: u32,
    device_id: &str,
) -> (String, Value) {
    let topic = ctx.topics.last_task(c, kind, vmid);
    let component = Component {
        p: "sensor",
        uniq_id: format!("{device_id}_last_task"),
        name: "Last task".into(),
        val_tpl: Some(enum_template("status", LAST_TASK_STATES).into()),
        dev_cla: Some("enum"),
        ops: Some(LAST_TASK_STATES),
        stat_t: Some(topic.clone()),
        json_attr_t: Some(topic),
        ent_cat: Some("diagnostic"),
        ic: Some("mdi:format-list-checks"),
        qos: 1,
        ..Component::default()
    };
    ("last_task".to_string(), component.into_value())
}
