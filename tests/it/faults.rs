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
        probe.wait_state("pve2mqtt/pve/qemu/100").await;
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
    let w = World::builder().probe(&["pve2mqtt/#"]).start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    probe
        .wait_topic("pve2mqtt/pve/qemu/100/availability", 20 * SECS, |m| {
            m.text() == "online"
        })
        .await;
    // Proxmox fails the next 3 cluster-wide reads
    sim_send(
        sim,
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
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_several_urls_a_dead_first_endpoint_fails_over_to_the_next_and_says_so() {
    let stage = World::builder().probe(&["pve2mqtt/#"]).prepare().await;
    let (sim, probe, cfg) = (&stage.sim, &stage.probe, &stage.cfg);
    let dead = format!("https://127.0.0.1:{}", free_port());
    let toml = cfg.toml.replace(
        &format!("url = \"{}\"", sim.base_url()),
        &format!("urls = [\"{dead}\", \"{}\"]", sim.base_url()),
    );
    let path = cfg.dir.path().join("failover.toml");
    std::fs::write(&path, toml).unwrap();
    let child = spawn_bridge(&path, &[]);
    probe.wait_state("pve2mqtt/pve/qemu/100").await;
    let out = terminate(child).await;
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("failing over"), "{logs}");
    assert!(logs.contains(&dead), "{logs}");
    assert_eq!(out.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_while_running_takes_objects_offline_and_is_logged_once() {
    let stage = World::builder().probe(&["pve2mqtt/#"]).prepare().await;
    let (sim, probe) = (&stage.sim, &stage.probe);
    let path = stage.cfg.write();
    let child = spawn_bridge(&path, &[]);
    probe
        .wait_topic("pve2mqtt/pve/qemu/100/availability", 20 * SECS, |m| {
            m.text() == "online"
        })
        .await;
    let token_id = pve_sim::DEFAULT_TOKEN.split('=').next().unwrap();
    sim_send(
        sim,
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
    let out = terminate(child).await;
    let logs = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains("HTTP 401")).collect();
    assert_eq!(lines.len(), 1, "the reason is logged once: {lines:#?}");
    assert!(lines[0].contains("Authentication failed"), "{}", lines[0]);
    assert_eq!(out.status.code(), Some(0), "it never exits on its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_running_at_sigterm_is_reported_running_and_finished_after_the_restart() {
    let stage = World::builder().probe(&["pve2mqtt/#"]).prepare().await;
    let (broker, sim, probe) = (&stage.broker, &stage.sim, &stage.probe);
    sim_send(
        sim,
        "POST",
        "/_sim/config",
        serde_json::json!({"task_duration_ms": 4000}),
    )
    .await;
    let path = stage.cfg.write();
    let spawn = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_pve2mqtt"))
            .args(["run", "--config"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = spawn();
    probe.wait_state("pve2mqtt/pve/qemu/100").await;
    probe
        .publish(
            "pve2mqtt/pve/qemu/100/set",
            r#"{"action":"reboot","id":"long"}"#,
            false,
        )
        .await;
    probe
        .wait_topic("pve2mqtt/pve/qemu/100/task", 10 * SECS, |m| {
            m.text().contains("\"running\"")
        })
        .await;

    // SIGTERM while Proxmox is still rebooting the VM
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    probe
        .wait_topic("pve2mqtt/bridge/state", 5 * SECS, |m| m.text() == "offline")
        .await;
    let late = Probe::connect(broker.port, &["pve2mqtt/pve/qemu/100/task"]).await;
    let retained = late
        .wait_topic("pve2mqtt/pve/qemu/100/task", 5 * SECS, |m| m.retain)
        .await;
    assert_eq!(
        retained.json()["state"],
        "running",
        "the in-flight task is reported as still running"
    );
    assert!(retained.json()["upid"].is_string());

    // The next run picks the task up and reports its end, once, without a second POST
    let mut child = spawn();
    let done = probe
        .wait_for("the resumed task's end", 20 * SECS, |m| {
            m.topic == "pve2mqtt/pve/qemu/100/task"
                && m.text().contains("\"long\"")
                && m.text().contains("\"ok\"")
        })
        .await;
    assert_eq!(done.json()["exitstatus"], "OK");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let finals = probe
        .messages()
        .iter()
        .filter(|m| {
            m.topic == "pve2mqtt/pve/qemu/100/task"
                && m.text().contains("\"long\"")
                && m.text().contains("\"ok\"")
        })
        .count();
    assert_eq!(finals, 1);
    let requests = sim_get(sim, "/_sim/requests?since=0").await;
    let reboots = requests
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["method"] == "POST" && r["path"] == "/nodes/pve/qemu/100/status/reboot")
        .count();
    assert_eq!(reboots, 1);
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_migrating_or_deleted_while_its_task_runs_gets_one_result() {
    let stage = World::builder()
        .probe(&["pve2mqtt/#"])
        .sim(sim_generated(2, 6))
        .prepare()
        .await;
    sim_send(
        &stage.sim,
        "POST",
        "/_sim/config",
        serde_json::json!({"task_duration_ms": 1500}),
    )
    .await;
    let w = stage.start().await;
    let (broker, sim, probe) = (&w.broker, &w.sim, &w.probe);
    let resources = crate::state::pve_get(sim, "/cluster/resources").await;
    let running: Vec<(String, u64)> = resources
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["node"] == "pve1"
                && r["status"] == "running"
                && (r["type"] == "qemu" || r["type"] == "lxc")
        })
        .map(|r| {
            (
                r["type"].as_str().unwrap().to_string(),
                r["vmid"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(running.len() >= 2, "{running:?}");
    let (moving, deleted) = (&running[0], &running[1]);
    for (kind, vmid) in [moving, deleted] {
        probe
            .wait_topic(
                &format!("pve2mqtt/simcluster/{kind}/{vmid}"),
                20 * SECS,
                |m| !m.payload.is_empty(),
            )
            .await;
        probe
            .publish(
                &format!("pve2mqtt/simcluster/{kind}/{vmid}/set"),
                &format!(r#"{{"action":"reboot","id":"r{vmid}"}}"#),
                false,
            )
            .await;
    }
    for (kind, vmid) in [moving, deleted] {
        probe
            .wait_topic(
                &format!("pve2mqtt/simcluster/{kind}/{vmid}/task"),
                10 * SECS,
                |m| m.text().contains("\"running\""),
            )
            .await;
    }
    // While both reboots run: one guest migrates, the other is destroyed.
    sim_send(
        sim,
        "POST",
        &format!("/_sim/guests/{}/migrate", moving.1),
        serde_json::json!({"target": "pve2"}),
    )
    .await;
    sim_send(
        sim,
        "DELETE",
        &format!("/_sim/guests/{}", deleted.1),
        serde_json::json!({}),
    )
    .await;

    for (kind, vmid) in [moving, deleted] {
        let topic = format!("pve2mqtt/simcluster/{kind}/{vmid}/task");
        let id = format!("\"r{vmid}\"");
        probe
            .wait_for("a final result", 20 * SECS, |m| {
                m.topic == topic
                    && m.text().contains(&id)
                    && (m.text().contains("\"ok\"") || m.text().contains("\"failed\""))
            })
            .await;
    }
    // The migrated guest is shown on its new node
    probe
        .wait_topic(
            &format!("pve2mqtt/simcluster/{}/{}", moving.0, moving.1),
            10 * SECS,
            |m| m.json()["node"] == "pve2",
        )
        .await;
    // and nothing of the destroyed one is left retained
    tokio::time::sleep(Duration::from_secs(2)).await;
    let late = Probe::connect(broker.port, &["pve2mqtt/#", "homeassistant/#"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let gone = format!("/{}", deleted.1);
    let leftovers: Vec<String> = late
        .messages()
        .iter()
        .filter(|m| m.topic.contains(&gone) || m.topic.contains(&format!("_{}/", deleted.1)))
        .map(|m| m.topic.clone())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    w.stop().await;
}
