//! Backup health per guest (issue 12): the verdict of a scheduled job read once from its
//! log, whether a guest is in any job, stale backups, and the newest backup's size.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

const STATES: &[&str] = &["pve2mqtt/#"];
const JOB: &str = "backup-5d7a9f1c-1a2b";
const LOG: &str = "GET /nodes/{node}/tasks/{upid}/log";

/// A world whose bridge reads the task list every second.
fn world() -> WorldBuilder {
    World::builder().probe(STATES).replace(
        "slow_interval = \"2s\"\n",
        "slow_interval = \"2s\"\ntasks_interval = \"1s\"\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_backup_that_fails_for_one_guest_of_three_gives_exactly_one_failed_verdict() {
    // Given three guests on node pve; the seed's job leaves CT 101 out
    let stage = world().prepare().await;
    let sim = &stage.sim;
    sim_send(sim, "POST", "/_sim/config", json!({"stats_interval_ms": 0})).await;
    sim_send(
        sim,
        "POST",
        "/_sim/guests",
        json!({"vmid": 102, "type": "lxc", "node": "pve", "name": "zigbee", "status": "running"}),
    )
    .await;
    let w = stage.start().await;
    let (sim, probe) = (&w.sim, &w.probe);
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
        sim,
        "POST",
        "/_sim/backup-jobs",
        json!({"id": JOB, "all": true, "storage": "local"}),
    )
    .await;
    sim_send(
        sim,
        "POST",
        "/_sim/tasks/next",
        json!({"vmid": 102, "action": "backup", "outcome": "fail",
               "error": "unable to create temporary directory '/var/lib/vz/dump/vzdump-lxc-102-2026_12_06-03_00_41.tmp' - No space left on device"}),
    )
    .await;
    let run = sim_send(
        sim,
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
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pbs_backup_brings_its_verification_state_and_size_to_the_guest() {
    // Given a generated cluster whose guests with a vmid ending in 5 are backed up on a
    // Proxmox Backup Server storage, verified: VM/CT 115 failed, 105 ok
    let stage = World::builder()
        .probe(STATES)
        .sim(sim_generated(2, 20))
        .prepare()
        .await;
    let sim = &stage.sim;
    let content: serde_json::Value = sim_http(sim)
        .get(format!(
            "{}/api2/json/nodes/pve1/storage/pbs-backup/content?content=backup",
            sim.base_url()
        ))
        .header(
            "Authorization",
            format!("PVEAPIToken={}", pve_sim::DEFAULT_TOKEN),
        )
        .send()
        .await
        .expect("content GET")
        .json()
        .await
        .expect("content JSON");
    let rows = content["data"]
        .as_array()
        .expect("PBS content rows")
        .clone();
    let row = |vmid: u64| {
        rows.iter()
            .find(|r| r["vmid"] == vmid)
            .unwrap_or_else(|| panic!("a PBS backup of {vmid}: {rows:?}"))
            .clone()
    };
    // The simulator lists them as PBS does: `pbs-vm`/`pbs-ct`, a verification object
    assert!(row(115)["format"].as_str().unwrap().starts_with("pbs-"));
    assert_eq!(row(115)["verification"]["state"], "failed");
    assert_eq!(row(105)["verification"]["state"], "ok");
    assert!(row(105)["verification"]["upid"]
        .as_str()
        .unwrap()
        .starts_with("UPID:"));

    // When the bridge reads the backup storages
    let w = stage.start().await;
    let probe = &w.probe;

    // Then each guest carries its newest backup's verification and size
    let verified = |vmid: u64, state: &'static str| {
        let probe = &probe;
        async move {
            probe
                .wait_for("the guest's verified backup", 20 * SECS, |m| {
                    let topic_ok = m.topic.ends_with(&format!("/qemu/{vmid}"))
                        || m.topic.ends_with(&format!("/lxc/{vmid}"));
                    topic_ok
                        && !m.payload.is_empty()
                        && m.json()["last_backup_verification"] == state
                })
                .await
                .json()
        }
    };
    let failed = verified(115, "failed").await;
    assert_eq!(failed["last_backup_size"], row(115)["size"]);
    verified(105, "ok").await;
    w.stop().await;
}
