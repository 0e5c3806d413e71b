//! A node's power buttons (`reboot`, `shutdown`, `startall`, `stopall`, `suspendall`,
//! `wakeonlan`, all disabled by default) and its last-command sensor, announced only when
//! `[commands] node_power` is on; otherwise sent as `{"p": platform}`, which removes them
//! if an earlier run with the switch on announced them.
use serde_json::{Map, Value};

use super::controls::{insert_controls, last_command, Button};
use super::{bridge_and_api, Component, DiscoveryContext};
use crate::pve::NodeAction;

fn name(action: NodeAction) -> &'static str {
    match action {
        NodeAction::Reboot => "Reboot node",
        NodeAction::Shutdown => "Shut down node",
        NodeAction::StartAll => "Start all guests",
        NodeAction::StopAll => "Stop all guests",
        NodeAction::SuspendAll => "Suspend all guests",
        NodeAction::WakeOnLan => "Wake on LAN",
    }
}

fn icon(action: NodeAction) -> &'static str {
    match action {
        NodeAction::Reboot => "mdi:restart",
        NodeAction::Shutdown => "mdi:power",
        NodeAction::StartAll => "mdi:play-box-multiple",
        NodeAction::StopAll => "mdi:stop-circle-outline",
        NodeAction::SuspendAll => "mdi:pause-circle-outline",
        NodeAction::WakeOnLan => "mdi:lan-connect",
    }
}

/// The key of an action's button in the node's components (`power_reboot`, …): apart
/// from the node's sensor keys.
pub(super) fn button_key(action: NodeAction) -> String {
    format!("power_{}", action.as_str())
}

pub(super) fn node_control_components(
    ctx: &DiscoveryContext,
    c: &str,
    node: &str,
    device_id: &str,
    controls: bool,
    components: &mut Map<String, Value>,
) {
    let command_topic = ctx.topics.node_command(c, node);
    let task_topic = ctx.topics.node_task(c, node);
    let mut entries: Vec<(String, Component)> = Vec::new();
    for action in NodeAction::ALL {
        let button = Button {
            name: name(action),
            payload: action.as_str(),
            icon: icon(action),
            restart: action == NodeAction::Reboot,
            enabled: false,
        };
        let component = Component {
            // Wake-on-LAN is for a node that is off: its button must not go unavailable
            // with the node.
            avty: (action == NodeAction::WakeOnLan).then(|| bridge_and_api(&ctx.topics, c)),
            ..button.component(&command_topic)
        };
        entries.push((button_key(action), component));
    }
    let sensor = Component {
        avty: Some(bridge_and_api(&ctx.topics, c)),
        ..last_command(task_topic)
    };
    entries.push(("last_command".into(), sensor));
    insert_controls(entries, device_id, controls, components);
}

#[cfg(test)]
mod tests {
    use super::super::{device_config, GuestControls, Topics};
    use super::*;
    use crate::model::ObjectRef;
    use crate::pve::Resource;

    fn payload(node_power: bool) -> Value {
        let rows: Vec<Resource> = serde_json::from_value(serde_json::json!([
            {"id": "node/pve", "type": "node", "node": "pve", "status": "online"},
        ]))
        .unwrap();
        let view = crate::model::tests::first_view("home", "https://pve:8006", &rows);
        let ctx = DiscoveryContext {
            topics: Topics::new("pve2mqtt", "homeassistant"),
            bridge_version: "0.1.0".into(),
            controls: GuestControls::new(|_| true).with_node_power(node_power),
            cluster_count: 1,
        };
        let text = device_config(&ctx, &view, &ObjectRef::Node("pve".into())).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn node_power_buttons_are_disabled_by_default_and_only_with_the_switch_on() {
        let p = payload(true);
        let cmps = &p["cmps"];
        for action in NodeAction::ALL {
            let b = &cmps[button_key(action)];
            assert_eq!(b["p"], "button", "{action}");
            assert_eq!(b["en"], false, "{action}");
            assert_eq!(b["cmd_t"], "pve2mqtt/home/node/pve/set");
            assert_eq!(b["pl_prs"], action.as_str());
            assert_eq!(
                b["uniq_id"],
                format!("pve2mqtt_home_node_pve_power_{}", action.as_str())
            );
        }
        assert_eq!(cmps["power_reboot"]["dev_cla"], "restart");
        assert!(
            cmps["power_wakeonlan"]["avty"].is_array(),
            "usable while the node is off"
        );
        let last = &cmps["last_command"];
        assert_eq!(last["stat_t"], "pve2mqtt/home/node/pve/task");
        assert_eq!(last["ent_cat"], "diagnostic");
        assert_eq!(last["dev_cla"], "enum");

        let off = payload(false);
        for action in NodeAction::ALL {
            assert_eq!(
                off["cmps"][button_key(action)],
                serde_json::json!({"p": "button"})
            );
        }
        assert_eq!(
            off["cmps"]["last_command"],
            serde_json::json!({"p": "sensor"})
        );
    }
}
