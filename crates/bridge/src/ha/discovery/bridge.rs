//! The bridge's own Home Assistant device, as zigbee2mqtt and govee2mqtt have one: its
//! version, a "Proxmox API" connectivity sensor per cluster, and a Refresh button.
use serde_json::Map;

use super::{origin, Component, DiscoveryContext};
use crate::ha::topics::discovery_id;

/// The bridge device's retained discovery payload, with one connectivity sensor per
/// cluster in `clusters` (the ids the bridge polls).
///
/// - "Proxmox API" reads `{base}/bridge/proxmox/{c}` (`online`/`offline`). Its
///   availability is the bridge alone, so an unreachable Proxmox is a state
///   ("Disconnected"), not "unavailable".
/// - "Refresh" publishes `{}` on `{base}/bridge/request/refresh`: the same request a
///   script sends, so it polls every cluster now and obeys the same rules (a retained
///   copy is never run). HA publishes button presses without the retain flag.
pub fn bridge_config(ctx: &DiscoveryContext, clusters: &[&str]) -> String {
    let topics = &ctx.topics;
    let device_id = topics.bridge_device_id();
    let mut components = Map::new();
    components.insert(
        "refresh".into(),
        Component {
            p: "button",
            uniq_id: format!("{device_id}_refresh"),
            name: "Refresh".into(),
            cmd_t: Some(topics.bridge_request("refresh")),
            pl_prs: Some("{}"),
            ic: Some("mdi:refresh"),
            qos: 1,
            ..Component::default()
        }
        .into_value(),
    );
    for c in clusters {
        let key = format!("proxmox_{}", discovery_id(c));
        let name = if ctx.cluster_count <= 1 {
            "Proxmox API".into()
        } else {
            format!("Proxmox API {c}").into()
        };
        components.insert(
            key.clone(),
            Component {
                p: "binary_sensor",
                uniq_id: format!("{device_id}_{key}"),
                name,
                dev_cla: Some("connectivity"),
                stat_t: Some(topics.bridge_proxmox(c)),
                pl_on: Some("online"),
                pl_off: Some("offline"),
                ic: Some("mdi:api"),
                qos: 1,
                ..Component::default()
            }
            .into_value(),
        );
    }
    let payload = serde_json::json!({
        "dev": {
            "ids": [device_id],
            "name": "pve2mqtt bridge",
            "mf": "pve2mqtt",
            "mdl": "Proxmox VE to MQTT bridge",
            "sw": ctx.bridge_version,
        },
        "o": origin(ctx),
        "avty": [{"t": topics.bridge_state()}],
        "cmps": components,
    });
    payload.to_string()
}
