//! Backup health per guest (issue 12): the verdict of a scheduled job read once from its
//! log, whether a guest is in any job, stale backups, and the newest backup's size.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

const ALL: &[&str] = &["pve2mqtt/#"];
const JOB: &str = "backup-5d7a9f1c-1a2b";
const LOG: &str = "GET /nodes/{node}/tasks/{upid}/log";

fn config(sim: &pve2mqtt::sim::SimHandle, port: u16) -> pve2mqtt::config::Config {
    let cfg = TestConfig::new(sim, port, "");
    let toml = cfg.toml.replace(
        "slow_interval = \"2s\"\n",
        "slow_interval = \"2s\"\ntasks_interval = \"1s\"\n",
    );
    pve2mqtt::config::Config::from_toml_str(&toml, &Default::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_backup_that_fails_for_one_guest_of_three_gives_exactly_one_failed_verdict() {
    // Given three guests on node pve; the seed's job leaves CT 101 out
    let broker = Mosquitto::start();
    let sim = start_sim(sim_options()).await;
    sim_send(
        &sim,
        "POST",
        "/_sim/config",
        json!({"stats_interval_ms": 0}),
    )
    .await;
    sim_send(
        &sim,
        "POST",
        "/_sim/guests",
        json!({"vmid": 102, "type": "lxc", "node": "pve", "name": "zigbee", "status": "running"}),
    )
    .await;
    let probe = Probe::connect(broker.port, ALL).await;
    let bridge = Bridge::start(config(&sim, broker.port));
    let ct = probe
        .wait_topic("pve2mqtt/pve/lxc/101", 20 * SECS, |m| {
            m.json()["backup_covered"] == false && m.json()["backup_stale"] == false
        })
        .await
        .json();
    assert_eq!(
        ct["last_backup_status"],
        serde_json::Value::Null,
        "no job seen yet"
    );
    // A guest that was never backed up is stale.
    probe
        .wait_topic("pve2mqtt/pve/lxc/102", 10 * SECS, |m| {
            m.json()["backup_stale"] == true
        })
        .await;

    // When the job covers every guest, and its scheduled run fails for CT 102
    sim_send(
        &sim,
        "POST",
        "/_sim/backup-jobs",
        json!({"id": JOB, "all": true, "storage": "local"}),
    )
    .await;
    sim_send(
        &sim,
        "POST",
        "/_sim/tasks/next",
        json!({"vmid": 102, "action": "backup", "outcome": "fail",
               "error": "unable to create temporary directory '/var/lib/vz/dump/vzdump-lxc-102-2026_12_06-03_00_41.tmp' - No space left on device"}),
    )
    .await;
    let run = sim_send(
        &sim,
        "POST",
        &format!("/_sim/backup-jobs/{JOB}/run"),
        json!({}),
    )
    .await;
    let upid = run["upids"][0]
        .as_str()
        .expect("one task on pve")
        .to_string();

    // Then exactly one guest is failed, with Proxmox's error, and two are ok
    let failed = probe
        .wait_topic("pve2mqtt/pve/lxc/102", 30 * SECS, |m| {
            m.json()["last_backup_status"] == "failed"
        })
        .await
        .json();
    assert!(failed["last_backup_error"]
        .as_str()
        .unwrap()
        .ends_with("No space left on device"));
    assert_eq!(failed["backup_covered"], true);
    assert_eq!(failed["backup_stale"], true, "still no backup");
    for topic in ["pve2mqtt/pve/qemu/100", "pve2mqtt/pve/lxc/101"] {
        let ok = probe
            .wait_topic(topic, 10 * SECS, |m| m.json()["last_backup_status"] == "ok")
            .await
            .json();
        assert_eq!(ok["last_backup_error"], serde_json::Value::Null);
        assert_eq!(ok["backup_stale"], false);
        assert!(ok["last_backup_size"].as_u64().unwrap() > 0);
    }
    let statuses: Vec<String> = [
        "pve2mqtt/pve/qemu/100",
        "pve2mqtt/pve/lxc/101",
        "pve2mqtt/pve/lxc/102",
    ]
    .iter()
    .map(|t| probe.latest(t).unwrap().json()["last_backup_status"].to_string())
    .collect();
    assert_eq!(
        statuses.iter().filter(|s| *s == "\"failed\"").count(),
        1,
        "{statuses:?}"
    );
    probe
        .wait_topic("pve2mqtt/pve/lxc/101", 10 * SECS, |m| {
            m.json()["backup_covered"] == true
        })
        .await;
    // The log was read once, not on every poll.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let reads = sim
        .world()
        .requests(0)
        .into_iter()
        .filter(|r| r.route == LOG && r.path.contains(&upid))
        .count();
    assert_eq!(reads, 1, "the job's log is read once");
    bridge.stop().await.unwrap();
    sim.stop().await;
}
