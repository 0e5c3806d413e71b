//! The bridge's own Home Assistant device (issue 10): the "Proxmox API" connectivity
//! state behind its sensor, the Refresh button, and a node's connectivity that reads
//! "offline" as a state. Driven the way Home Assistant drives them: the button is pressed
//! by publishing what its discovery payload says, on the topic it names.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

const BRIDGE_DEVICE: &str = "homeassistant/device/pve2mqtt_bridge/config";
const PROXMOX_STATE: &str = "pve2mqtt/bridge/proxmox/pve";
const RESOURCES: &str = "GET /cluster/resources";

/// Polls of `/cluster/resources` the simulator served so far.
async fn polls(sim: &pve_sim::SimHandle) -> u64 {
    sim_get(sim, "/_sim/counters").await[RESOURCES]
        .as_u64()
        .unwrap_or(0)
}

/// A world whose timer never polls again within a test: only the first poll and
/// refreshes reach Proxmox.
fn quiet_world() -> WorldBuilder {
    World::builder()
        .replace("interval = \"1s\"", "interval = \"1h\"")
        .replace("slow_interval = \"2s\"", "slow_interval = \"1h\"")
}

/// The Refresh button as Home Assistant has it: (command topic, payload on press).
async fn refresh_button(probe: &Probe) -> (String, String) {
    let device = probe
        .wait_topic(BRIDGE_DEVICE, 20 * SECS, |m| !m.payload.is_empty())
        .await
        .json();
    let button = &device["cmps"]["refresh"];
    assert_eq!(button["p"], "button");
    (
        button["cmd_t"].as_str().expect("cmd_t").to_string(),
        button["pl_prs"].as_str().expect("pl_prs").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pressing_refresh_in_home_assistant_polls_proxmox_at_once() {
    let w = quiet_world().start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    probe.wait_state("pve2mqtt/pve/qemu/100").await;
    let (topic, press) = refresh_button(probe).await;
    let before = polls(sim).await;

    // HA publishes a press without the retain flag.
    probe.publish(&topic, &press, false).await;
    let answer = probe
        .wait_topic("pve2mqtt/bridge/response/refresh", 10 * SECS, |_| true)
        .await
        .json();
    assert_eq!(answer["status"], "ok", "{answer}");
    assert_eq!(answer["data"]["refreshed"], json!(["pve"]));
    let deadline = tokio::time::Instant::now() + 10 * SECS;
    while polls(sim).await == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the press polled nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.stop().await;
}

/// A press left retained on the broker (by a user's `retain: true`, or a broker that
/// replays it) must not poll at every reconnect of the bridge (SPEC §7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_refresh_press_polls_nothing_and_is_cleared() {
    // A first run tells us what the button sends, as HA would learn it.
    let w = quiet_world().start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    let (topic, press) = refresh_button(probe).await;
    w.bridge.stop().await.unwrap();

    probe.publish(&topic, &press, true).await;
    // On the broker before the bridge subscribes (the probe hears its own publish).
    probe
        .wait_for("the retained press on the broker", 10 * SECS, |m| {
            m.topic == topic && m.text() == press
        })
        .await;
    sim_send(sim, "POST", "/_sim/counters/reset", json!({})).await;
    probe.clear();
    let bridge = Bridge::start(w.cfg.config());
    let answer = probe
        .wait_topic("pve2mqtt/bridge/response/refresh", 20 * SECS, |_| true)
        .await
        .json();
    assert_eq!(answer["status"], "error", "{answer}");
    assert!(
        answer["error"].as_str().unwrap_or("").contains("retained"),
        "{answer}"
    );
    probe
        .wait_for("the retained press cleared", 10 * SECS, |m| {
            m.topic == topic && m.payload.is_empty()
        })
        .await;
    probe.wait_state("pve2mqtt/pve/qemu/100").await;
    // Had the press run, its poll would follow the start-up poll within the refresh
    // spacing (1 s); the timer itself polls next in an hour.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(polls(sim).await, 1, "only the start-up poll");
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxmox_api_state_goes_offline_while_polls_fail_and_online_when_they_succeed() {
    let w = World::start().await;
    let (broker, sim, probe) = (&w.broker, &w.sim, &w.probe);
    probe
        .wait_topic(PROXMOX_STATE, 20 * SECS, |m| m.text() == "online")
        .await;
    // The bridge device announces a sensor that reads exactly this topic.
    let device = probe
        .wait_topic(BRIDGE_DEVICE, 10 * SECS, |m| !m.payload.is_empty())
        .await
        .json();
    let api = &device["cmps"]["proxmox_pve"];
    assert_eq!(api["stat_t"], PROXMOX_STATE);
    assert_eq!(api["dev_cla"], "connectivity");
    assert_eq!(api["name"], "Proxmox API");
    assert!(api.get("avty").is_none(), "available with the bridge alone");
    assert_eq!(device["avty"], json!([{"t": "pve2mqtt/bridge/state"}]));

    // Proxmox answers 500 to the next three polls, then drops two connections.
    sim_send(
        sim,
        "POST",
        "/_sim/faults",
        json!({"path_prefix": "/cluster/resources", "kind": "status", "status": 500,
               "message": "cluster not ready - no quorum?", "count": 3}),
    )
    .await;
    probe
        .wait_topic(PROXMOX_STATE, 10 * SECS, |m| m.text() == "offline")
        .await;
    probe
        .wait_topic(PROXMOX_STATE, 30 * SECS, |m| m.text() == "online")
        .await;
    sim_send(
        sim,
        "POST",
        "/_sim/faults",
        json!({"path_prefix": "/cluster/resources", "kind": "drop", "count": 2}),
    )
    .await;
    probe
        .wait_topic(PROXMOX_STATE, 10 * SECS, |m| m.text() == "offline")
        .await;
    probe
        .wait_topic(PROXMOX_STATE, 30 * SECS, |m| m.text() == "online")
        .await;
    // Published on a change only, retained: a late subscriber finds the current value.
    let late = Probe::connect(broker.port, &[PROXMOX_STATE]).await;
    let retained = late.wait_topic(PROXMOX_STATE, 5 * SECS, |m| m.retain).await;
    assert_eq!(retained.text(), "online");
    let mut changes: Vec<String> = probe
        .messages()
        .iter()
        .filter(|m| m.topic == PROXMOX_STATE)
        .map(|m| m.text())
        .collect();
    // (a reconnect republishes the same value; that is not a change)
    changes.dedup();
    assert_eq!(
        changes,
        ["online", "offline", "online", "offline", "online"]
    );
    w.stop().await;
}

/// A node that goes offline: its own availability goes `offline` (its other entities
/// are unavailable), but the topics its connectivity sensor depends on stay `online`,
/// so Home Assistant shows the sensor as "Disconnected", not "unavailable".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_node_is_a_state_of_its_connectivity_sensor_not_unavailable() {
    let w = World::start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    let device = probe
        .wait_topic(
            "homeassistant/device/pve2mqtt_pve_node_pve/config",
            20 * SECS,
            |m| !m.payload.is_empty(),
        )
        .await
        .json();
    let connectivity = device["cmps"]["connectivity"].clone();
    let availability: Vec<String> = connectivity["avty"]
        .as_array()
        .expect("its own availability list")
        .iter()
        .map(|a| a["t"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(availability, ["pve2mqtt/bridge/state", PROXMOX_STATE]);
    let state_topic = device["stat_t"].as_str().unwrap().to_string();
    probe
        .wait_topic(&state_topic, 10 * SECS, |m| m.json()["status"] == "online")
        .await;

    sim_send(sim, "POST", "/_sim/nodes/pve", json!({"online": false})).await;
    probe
        .wait_topic(&state_topic, 20 * SECS, |m| m.json()["status"] == "offline")
        .await;
    probe
        .wait_topic("pve2mqtt/pve/node/pve/availability", 5 * SECS, |m| {
            m.text() == "offline"
        })
        .await;
    for topic in &availability {
        assert_eq!(
            probe.latest(topic).map(|m| m.text()).as_deref(),
            Some("online"),
            "{topic}"
        );
    }
    // The sensor's template, as HA evaluates it on the state: OFF for an offline node.
    assert_eq!(
        connectivity["val_tpl"],
        "{{ 'ON' if value_json.status == 'online' else 'OFF' }}"
    );
    w.stop().await;
}
