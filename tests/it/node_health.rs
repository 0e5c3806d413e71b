//! Node health (issue 11): disks, ZFS pools, updates, reboot required, certificate,
//! IO delay and subscription, from the simulator's seed world (node `pve`: an NVMe and
//! an SSD with wearout, a FAILING HDD `sdb`, pools `rpool` ONLINE and `tank` DEGRADED,
//! three pending updates, a newer kernel installed).
use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// A world with `poll_extra` in its `[poll]` section, e.g. [`FAST_DETAILS`].
fn world(poll_extra: &str) -> WorldBuilder {
    World::builder().replace(
        "slow_interval = \"2s\"",
        &format!("slow_interval = \"2s\"\n{poll_extra}"),
    )
}

/// A config with the detail cadences short enough to run every slow round (2 s).
fn config(sim: &pve_sim::SimHandle, port: u16, poll_extra: &str) -> TestConfig {
    let mut cfg = TestConfig::new(sim, port, "");
    cfg.toml = cfg.toml.replace(
        "slow_interval = \"2s\"",
        &format!("slow_interval = \"2s\"\n{poll_extra}"),
    );
    cfg
}

const FAST_DETAILS: &str = "disks_interval = \"1s\"\ncertificates_interval = \"1s\"";

/// The simulator's recorded requests, oldest first.
async fn requests(sim: &pve_sim::SimHandle) -> Vec<Value> {
    requests_since(sim, 0).await
}

fn route(r: &Value) -> &str {
    r["route"].as_str().unwrap_or("")
}

const HEALTH_ROUTES: &[&str] = &[
    "GET /nodes/{node}/disks/list",
    "GET /nodes/{node}/disks/zfs",
    "GET /nodes/{node}/apt/update",
    "GET /nodes/{node}/apt/versions",
    "GET /nodes/{node}/certificates/info",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_and_a_degraded_pool_reach_home_assistant_as_problems_within_one_slow_round()
{
    // Given the seed world, its disk sda and pool rpool healthy, and a running bridge
    let w = world(FAST_DETAILS).start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    let sda = probe
        .wait_topic("pve2mqtt/pve/disk/pve/sda", 20 * SECS, |m| {
            m.json()["problem"] == false
        })
        .await
        .json();
    assert_eq!(sda["health"], "PASSED");
    assert_eq!(sda["type"], "ssd");
    assert_eq!(sda["wearout"], 88.0);
    assert_eq!(sda["model"], "INTEL_SSDSC2BB480G7");
    assert!(sda["size"].is_u64() && sda["serial"].is_string());
    // The seed's failing HDD and degraded pool are problems from the start.
    let sdb = probe
        .wait_topic("pve2mqtt/pve/disk/pve/sdb", 10 * SECS, |_| true)
        .await
        .json();
    assert_eq!(
        (&sdb["health"], &sdb["problem"]),
        (&json!("FAILED!"), &json!(true))
    );
    assert_eq!(sdb["wearout"], Value::Null, "an HDD's N/A wearout is null");
    let tank = probe
        .wait_topic("pve2mqtt/pve/zfs/pve/tank", 10 * SECS, |_| true)
        .await;
    assert_eq!(tank.json()["health"], "DEGRADED");
    assert_eq!(tank.json()["problem"], true);
    let disk_device = probe
        .wait_topic(
            "homeassistant/device/pve2mqtt_pve_disk_pve_sda/config",
            10 * SECS,
            |m| !m.payload.is_empty(),
        )
        .await
        .json();
    assert_eq!(disk_device["dev"]["via_device"], "pve2mqtt_pve_node_pve");
    assert_eq!(disk_device["cmps"]["smart"]["dev_cla"], "problem");
    probe
        .wait_topic(
            "homeassistant/device/pve2mqtt_pve_zfs_pve_rpool/config",
            10 * SECS,
            |m| m.json()["cmps"]["problem"]["dev_cla"] == "problem",
        )
        .await;
    probe
        .wait_topic("pve2mqtt/pve/zfs/pve/rpool", 10 * SECS, |m| {
            m.json()["health"] == "ONLINE" && m.json()["problem"] == false
        })
        .await;

    // When the disk fails and the pool degrades
    sim_send(
        sim,
        "POST",
        "/_sim/nodes/pve/disks/sda",
        json!({"health": "FAILED!"}),
    )
    .await;
    sim_send(
        sim,
        "POST",
        "/_sim/nodes/pve/zfs/rpool",
        json!({"health": "DEGRADED"}),
    )
    .await;

    // Then both are problems within one slow round (2 s, plus the round in progress)
    let started = std::time::Instant::now();
    probe
        .wait_topic("pve2mqtt/pve/disk/pve/sda", 6 * SECS, |m| {
            m.json()["problem"] == true && m.json()["health"] == "FAILED!"
        })
        .await;
    probe
        .wait_topic("pve2mqtt/pve/zfs/pve/rpool", 6 * SECS, |m| {
            m.json()["problem"] == true
        })
        .await;
    assert!(started.elapsed() < Duration::from_secs(6));
    // And the node carries IO delay, the subscription level and the certificate expiry.
    let node = probe
        .wait_topic("pve2mqtt/pve/node/pve", 10 * SECS, |m| {
            m.json()["certificate_expires"].is_u64() && m.json()["io_delay"].is_number()
        })
        .await
        .json();
    assert_eq!(node["subscription"], "none");
    assert_eq!(node["reboot_required"], true);
    assert_eq!(node["updates"], Value::Null, "updates are opt-in");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disks_and_pools_go_offline_with_their_node_and_come_back() {
    let w = world(FAST_DETAILS).start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    for topic in [
        "pve2mqtt/pve/disk/pve/nvme0n1/availability",
        "pve2mqtt/pve/zfs/pve/tank/availability",
    ] {
        probe
            .wait_topic(topic, 20 * SECS, |m| m.text() == "online")
            .await;
    }

    // When the node goes offline
    sim_send(sim, "POST", "/_sim/nodes/pve", json!({"online": false})).await;

    // Then its disks and pools are unavailable, not gone
    for topic in [
        "pve2mqtt/pve/disk/pve/nvme0n1/availability",
        "pve2mqtt/pve/zfs/pve/tank/availability",
    ] {
        probe
            .wait_topic(topic, 10 * SECS, |m| m.text() == "offline")
            .await;
    }
    assert!(probe
        .latest("homeassistant/device/pve2mqtt_pve_disk_pve_nvme0n1/config")
        .is_some_and(|m| !m.payload.is_empty()));

    // And back online they are available again
    sim_send(sim, "POST", "/_sim/nodes/pve", json!({"online": true})).await;
    probe
        .wait_topic(
            "pve2mqtt/pve/disk/pve/nvme0n1/availability",
            10 * SECS,
            |m| m.text() == "online",
        )
        .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_disk_is_removed_from_home_assistant() {
    let w = world(FAST_DETAILS).start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    let device = "homeassistant/device/pve2mqtt_pve_disk_pve_sdb/config";
    probe.wait_state(device).await;

    // When the failed disk is pulled (and no longer listed)
    let mut health = sim_get(sim, "/_sim/nodes/pve/health").await;
    health["disks"]
        .as_array_mut()
        .unwrap()
        .retain(|d| d["name"] != "sdb");
    sim_send(sim, "PUT", "/_sim/nodes/pve/health", health).await;

    // Then its device and state are cleared
    probe
        .wait_topic(device, 10 * SECS, |m| m.payload.is_empty())
        .await;
    probe
        .wait_topic("pve2mqtt/pve/disk/pve/sdb", 5 * SECS, |m| {
            m.payload.is_empty()
        })
        .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_are_read_only_when_opted_in_and_skipped_quietly_without_sys_modify() {
    // Given a token with Sys.Audit but no Sys.Modify
    let broker = Mosquitto::start();
    let sim = start_sim(sim_options()).await;
    let token = "audit@pve!ro=99999999-8888-7777-6666-555555555555";
    sim_send(
        &sim,
        "POST",
        "/_sim/tokens",
        json!({
            "token": token,
            "privileges": {"/": ["Sys.Audit", "VM.Audit", "Datastore.Audit"]},
        }),
    )
    .await;

    // Without `poll.updates`, apt/update is never asked
    let probe = Probe::connect(broker.port, ALL).await;
    let off = config(&sim, broker.port, FAST_DETAILS);
    let bridge = Bridge::start(off.config());
    probe
        .wait_topic("pve2mqtt/pve/node/pve", 20 * SECS, |m| {
            m.json()["certificate_expires"].is_u64()
        })
        .await;
    bridge.stop().await.unwrap();
    let seen = requests(&sim).await;
    assert!(seen
        .iter()
        .any(|r| route(r) == "GET /nodes/{node}/apt/versions"));
    assert!(!seen
        .iter()
        .any(|r| route(r) == "GET /nodes/{node}/apt/update"));

    // With it but without Sys.Modify: asked once per updates_interval, the 403 changes
    // nothing else (the node keeps being published, the API stays online)
    sim_send(&sim, "POST", "/_sim/counters/reset", json!({})).await;
    let on = config(
        &sim,
        broker.port,
        &format!("{FAST_DETAILS}\nupdates = true\nupdates_interval = \"1h\""),
    );
    let toml = on.toml.replace(pve_sim::DEFAULT_TOKEN, token);
    let bridge =
        Bridge::start(pve2mqtt::config::Config::from_toml_str(&toml, &Default::default()).unwrap());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let counters = sim_get(&sim, "/_sim/counters").await;
    assert_eq!(counters["GET /nodes/{node}/apt/update"], 1, "{counters}");
    let forbidden: Vec<Value> = requests(&sim)
        .await
        .into_iter()
        .filter(|r| route(r) == "GET /nodes/{node}/apt/update")
        .collect();
    assert_eq!(forbidden.last().unwrap()["status"], 403);
    let node = probe.latest("pve2mqtt/pve/node/pve").unwrap().json();
    assert_eq!(node["updates"], Value::Null);
    assert_eq!(node["status"], "online");
    assert_eq!(
        probe.latest("pve2mqtt/bridge/proxmox/pve").unwrap().text(),
        "online"
    );
    let device = probe
        .latest("homeassistant/device/pve2mqtt_pve_node_pve/config")
        .unwrap()
        .json();
    assert_eq!(device["cmps"]["update"], json!({"p": "update"}));
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opted_in_updates_become_an_update_entity_and_a_pending_count() {
    let w = world("updates = true").start().await;
    let probe = &w.probe;
    let node = probe
        .wait_topic("pve2mqtt/pve/node/pve", 20 * SECS, |m| {
            !m.json()["updates"].is_null()
        })
        .await
        .json();
    assert_eq!(
        node["updates"],
        json!({"pending": 3, "installed": "9.1.5", "latest": "9.1.6"})
    );
    let device = probe
        .wait_topic(
            "homeassistant/device/pve2mqtt_pve_node_pve/config",
            10 * SECS,
            |m| m.json()["cmps"]["update"].get("uniq_id").is_some(),
        )
        .await
        .json();
    assert_eq!(device["cmps"]["update"]["p"], "update");
    assert_eq!(device["cmps"]["updates_pending"]["p"], "sensor");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_zfs_has_no_pools_and_is_not_asked_again_every_round() {
    // Given a generated cluster: pve2 has no zfsutils (500), pve1 and pve3 have a pool
    // The default cadences (15 min and more) and updates on: five
    // requests per node that the schedule must spread (at most 3 per node and round).
    let w = world("updates = true")
        .sim(sim_generated(3, 6))
        .start()
        .await;
    let (sim, probe) = (&w.sim, &w.probe);
    probe
        .wait_topic("pve2mqtt/simcluster/zfs/pve1/rpool", 20 * SECS, |_| true)
        .await;
    probe
        .wait_topic("pve2mqtt/simcluster/node/pve3", 20 * SECS, |m| {
            m.json()["certificate_expires"].is_u64()
        })
        .await;
    // Two more rounds.
    tokio::time::sleep(Duration::from_secs(4)).await;
    w.bridge.stop().await.unwrap();

    let seen = requests(sim).await;
    // pve2's 500 was asked once: the next try waits for its cadence.
    let zfs_pve2: Vec<&Value> = seen
        .iter()
        .filter(|r| {
            route(r) == "GET /nodes/{node}/disks/zfs" && r["path"] == "/nodes/pve2/disks/zfs"
        })
        .collect();
    assert_eq!(zfs_pve2.len(), 1);
    assert_eq!(zfs_pve2[0]["status"], 500);
    assert!(probe
        .messages()
        .iter()
        .all(|m| !m.topic.starts_with("pve2mqtt/simcluster/zfs/pve2/")));
    // Every detail once per node (cadences of 15 min and more), and per node and round
    // (between two of its node status requests) at most 3 of them.
    let mut per_node: HashMap<String, Vec<&str>> = HashMap::new();
    for r in &seen {
        let path = r["path"].as_str().unwrap_or("");
        let node = path.split('/').nth(2).unwrap_or("").to_string();
        if route(r) == "GET /nodes/{node}/status" {
            per_node.entry(node).or_default().push("status");
        } else if HEALTH_ROUTES.contains(&route(r)) {
            per_node.entry(node).or_default().push(route(r));
        }
    }
    assert_eq!(per_node.len(), 3);
    for (node, log) in &per_node {
        for detail in HEALTH_ROUTES {
            assert_eq!(
                log.iter().filter(|r| *r == detail).count(),
                1,
                "{node}: {detail} in {log:?}"
            );
        }
        for round in log.split(|r| *r == "status") {
            assert!(round.len() <= 3, "{node}: {round:?} in one round");
        }
    }
    // The fast lane is still one request per poll: no per-node request there.
    let counters = sim_get(sim, "/_sim/counters").await;
    assert!(counters["GET /cluster/resources"].as_u64().unwrap() >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_restart_keeps_disks_and_pools_in_home_assistant() {
    // Given a bridge that announced the seed's disks and pools, then stopped
    let broker = Mosquitto::start();
    let sim = start_sim(sim_options()).await;
    let cfg = config(&sim, broker.port, "");
    let bridge = Bridge::start(cfg.config());
    let first = Probe::connect(broker.port, ALL).await;
    first
        .wait_topic("pve2mqtt/pve/zfs/pve/tank", 20 * SECS, |_| true)
        .await;
    bridge.stop().await.unwrap();

    // When it starts again (its first fast poll knows no disks yet)
    let probe = Probe::connect(broker.port, ALL).await;
    let bridge = Bridge::start(cfg.config());
    probe
        .wait_for("the disks republished by the new run", 20 * SECS, |m| {
            m.topic == "pve2mqtt/pve/zfs/pve/tank" && !m.retain && !m.payload.is_empty()
        })
        .await;

    // Then their discovery and state were never cleared on the way
    let cleared: Vec<String> = probe
        .messages()
        .iter()
        .filter(|m| m.payload.is_empty())
        .filter(|m| {
            m.topic.contains("_disk_")
                || m.topic.contains("_zfs_")
                || m.topic.contains("/disk/")
                || m.topic.contains("/zfs/")
        })
        .map(|m| m.topic.clone())
        .collect();
    assert!(cleared.is_empty(), "cleared on restart: {cleared:?}");
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_whether_the_token_can_read_node_health_and_updates() {
    let broker = Mosquitto::start();
    let sim = start_sim(sim_options()).await;
    let token = "audit@pve!ro=99999999-8888-7777-6666-555555555555";
    sim_send(
        &sim,
        "POST",
        "/_sim/tokens",
        json!({"token": token, "privileges": {"/": ["Sys.Audit", "VM.Audit", "Datastore.Audit"]}}),
    )
    .await;
    async fn run(cfg: &TestConfig, toml: String) -> String {
        let path = cfg.dir.path().join("check.toml");
        std::fs::write(&path, toml).unwrap();
        let output = run_check(&path).await;
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }
    let audit = config(&sim, broker.port, "updates = true");
    let stdout = run(&audit, audit.toml.replace(pve_sim::DEFAULT_TOKEN, token)).await;
    assert!(
        stdout.contains("  node health (disks, ZFS, reboot required): yes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  package updates: no — missing Sys.Modify on /nodes"),
        "{stdout}"
    );
    assert!(stdout.contains("  certificate expiry: yes"), "{stdout}");
    let full = config(&sim, broker.port, "");
    let stdout = run(&full, full.toml.clone()).await;
    assert!(
        stdout.contains("  package updates: yes (poll.updates is off in the config)"),
        "{stdout}"
    );
}
