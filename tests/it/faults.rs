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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxmox_answering_5xx_for_a_while_takes_objects_offline_and_the_bridge_recovers() {
    let broker = Mosquitto::start();
    let sim = start_sim(sim_options()).await;
    let probe = Probe::connect(broker.port, &["pve2mqtt/#"]).await;
    let cfg = TestConfig::new(&sim, broker.port, "");
    let bridge = Bridge::start(cfg.config());
    probe
        .wait_topic("pve2mqtt/pve/qemu/100/availability", 20 * SECS, |m| {
            m.text() == "online"
        })
        .await;
    // Proxmox fails the next 3 cluster-wide reads
    sim_send(
        &sim,
        "POST",
        "/_sim/faults",
        serde_json::json!({"path_prefix": "/cluster/resources", "kind": "status", "status": 500, "message": "cluster not ready - no quorum?", "count": 3}),
    )
    .await;
    probe
        .wait_topic("pve2mqtt/pve/qemu/100/availability", 10 * SECS, |m| {
            m.text() == "offline"
        })
        .await;
    let info = probe
        .wait_topic("pve2mqtt/bridge/info", 5 * SECS, |m| {
            m.json()["clusters"][0]["reachable"] == false
        })
        .await;
    assert_eq!(info.json()["clusters"][0]["id"], "pve");
    // and recovers by itself once Proxmox answers again (with back-off in between)
    probe
        .wait_topic("pve2mqtt/pve/qemu/100/availability", 30 * SECS, |m| {
            m.text() == "online"
        })
        .await;
    probe
        .wait_topic("pve2mqtt/pve/node/pve/availability", 5 * SECS, |m| {
            m.text() == "online"
        })
        .await;
    assert_eq!(
        probe.latest("pve2mqtt/bridge/state").map(|m| m.text()),
        Some("online".into())
    );
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_several_urls_a_dead_first_endpoint_fails_over_to_the_next_and_says_so() {
    let broker = Mosquitto::start();
    let sim = start_sim(sim_options()).await;
    let probe = Probe::connect(broker.port, &["pve2mqtt/#"]).await;
    let cfg = TestConfig::new(&sim, broker.port, "");
    let dead = format!("https://127.0.0.1:{}", free_port());
    let toml = cfg.toml.replace(
        &format!("url = \"{}\"", sim.base_url()),
        &format!("urls = [\"{dead}\", \"{}\"]", sim.base_url()),
    );
    let path = cfg.dir.path().join("failover.toml");
    std::fs::write(&path, toml).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pve2mqtt"))
        .args(["run", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    probe
        .wait_topic("pve2mqtt/pve/qemu/100", 20 * SECS, |m| {
            !m.payload.is_empty()
        })
        .await;
    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("failing over"), "{logs}");
    assert!(logs.contains(&dead), "{logs}");
    assert_eq!(out.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_while_running_takes_objects_offline_and_is_logged_once() {
    let broker = Mosquitto::start();
    let sim = start_sim(sim_options()).await;
    let probe = Probe::connect(broker.port, &["pve2mqtt/#"]).await;
    let cfg = TestConfig::new(&sim, broker.port, "");
    let path = cfg.write();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pve2mqtt"))
        .args(["run", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    probe
        .wait_topic("pve2mqtt/pve/qemu/100/availability", 20 * SECS, |m| {
            m.text() == "online"
        })
        .await;
    let token_id = pve2mqtt::sim::DEFAULT_TOKEN.split('=').next().unwrap();
    sim_send(
        &sim,
        "DELETE",
        &format!("/_sim/tokens/{token_id}"),
        serde_json::json!({}),
    )
    .await;
    probe
        .wait_topic("pve2mqtt/pve/qemu/100/availability", 10 * SECS, |m| {
            m.text() == "offline"
        })
        .await;
    // Several more failing polls (1 s interval, back-off doubling) must not repeat the log.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains("401")).collect();
    assert_eq!(lines.len(), 1, "the reason is logged once: {lines:#?}");
    assert!(lines[0].contains("Authentication failed"), "{}", lines[0]);
    assert_eq!(out.status.code(), Some(0), "it never exits on its own");
}
