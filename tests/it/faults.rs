use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_broker_restarts_the_bridge_republishes_everything_and_takes_commands() {
    let mut broker = Mosquitto::start();
    let sim = start_sim(sim_options()).await;
    let cfg = TestConfig::new(&sim, broker.port, "");
    let bridge = Bridge::start(cfg.config());
    {
        let probe = Probe::connect(broker.port, &["pve2mqtt/#"]).await;
        probe
            .wait_topic("pve2mqtt/pve/qemu/100", 20 * SECS, |m| {
                !m.payload.is_empty()
            })
            .await;
    }
    for round in 0..2 {
        // The broker restarts and forgets every retained message (no persistence).
        broker.restart();
        // A client connecting afterwards still finds everything, retained
        let probe = Probe::connect(broker.port, &["pve2mqtt/#", "homeassistant/#"]).await;
        probe
            .wait_topic("pve2mqtt/bridge/state", 30 * SECS, |m| m.text() == "online")
            .await;
        probe
            .wait_topic(
                "homeassistant/device/pve2mqtt_pve_100/config",
                10 * SECS,
                |m| !m.payload.is_empty(),
            )
            .await;
        probe
            .wait_topic("pve2mqtt/pve/lxc/101", 10 * SECS, |m| !m.payload.is_empty())
            .await;
        probe
            .wait_topic("pve2mqtt/pve/lxc/101/availability", 10 * SECS, |m| {
                m.text() == "online"
            })
            .await;
        // and commands work again (the subscription was renewed)
        let id = format!("after-restart-{round}");
        probe
            .publish(
                "pve2mqtt/pve/qemu/100/set",
                &format!(r#"{{"action":"reboot","id":"{id}"}}"#),
                false,
            )
            .await;
        probe
            .wait_for("the command's result", 20 * SECS, |m| {
                m.topic == "pve2mqtt/pve/qemu/100/task"
                    && m.text().contains(&id)
                    && m.text().contains("\"ok\"")
            })
            .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    bridge.stop().await.unwrap();
}
