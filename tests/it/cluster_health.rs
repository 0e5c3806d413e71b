//! Cluster health (issue 11): Ceph, the HA manager, per-guest HA and lock, replication.
use std::collections::BTreeMap;
use std::time::Duration;

use pve_sim::SimHandle;
use serde_json::{json, Value};

use crate::support::*;

const CLUSTER: &str = "pve2mqtt/pve/cluster";
const CLUSTER_DEVICE: &str = "homeassistant/device/pve2mqtt_pve_cluster/config";

/// A world whose bridge runs its slow lane every second.
fn fast_slow_lane() -> WorldBuilder {
    World::builder().replace("slow_interval = \"2s\"", "slow_interval = \"1s\"")
}

/// A two-node cluster of four guests, not started yet, where VM 100 replicates to pve2
/// every minute.
async fn vm_100_replicating_to_pve2() -> Stage {
    let stage = fast_slow_lane().sim(sim_generated(2, 4)).prepare().await;
    sim_send(
        &stage.sim,
        "POST",
        "/_sim/replication",
        json!({"guest": 100, "target": "pve2", "every_minutes": 1}),
    )
    .await;
    stage
}

async fn counters(sim: &SimHandle) -> BTreeMap<String, u64> {
    serde_json::from_value(sim_get(sim, "/_sim/counters").await).expect("counters")
}

fn count(counters: &BTreeMap<String, u64>, route: &str) -> u64 {
    counters.get(route).copied().unwrap_or(0)
}

/// Waits until the simulator has served `route` at least `n` times.
async fn wait_count(sim: &SimHandle, route: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + 30 * SECS;
    while count(&counters(sim).await, route) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{route} not served {n} times"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ceph_health_warn_reaches_home_assistant_as_a_problem_within_one_slow_round() {
    // Given the seed world, whose single-node Ceph warns about pools without replicas
    let w = World::start().await;
    let (sim, probe) = (&w.sim, &w.probe);

    // Then the cluster state carries it, with the check message
    let state = probe
        .wait_topic(CLUSTER, 20 * SECS, |m| {
            m.json()["ceph"]["health"] == "HEALTH_WARN"
        })
        .await
        .json();
    let ceph = &state["ceph"];
    assert_eq!(
        ceph["checks"]["POOL_NO_REDUNDANCY"]["message"],
        "1 pool(s) have no replicas configured"
    );
    assert_eq!(
        ceph["checks"]["POOL_NO_REDUNDANCY"]["severity"],
        "HEALTH_WARN"
    );
    assert!(ceph["used_percent"].as_f64().unwrap() > 0.0);
    assert!(ceph["total"].as_u64().unwrap() > ceph["used"].as_u64().unwrap());
    assert_eq!(ceph["osds_up"], 2);

    // And Home Assistant gets an enum sensor and a problem sensor with the checks as
    // attributes, on the cluster device
    let device = probe
        .wait_topic(CLUSTER_DEVICE, 20 * SECS, |m| {
            m.json()["cmps"]["ceph_problem"]["dev_cla"] == "problem"
        })
        .await
        .json();
    let problem = &device["cmps"]["ceph_problem"];
    assert_eq!(problem["p"], "binary_sensor");
    assert_eq!(problem["uniq_id"], "pve2mqtt_pve_cluster_ceph_problem");
    assert_eq!(problem["json_attr_t"], CLUSTER);
    assert!(problem["json_attr_tpl"]
        .as_str()
        .unwrap()
        .contains("value_json.ceph.checks"));
    let health = &device["cmps"]["ceph_health"];
    assert_eq!(health["dev_cla"], "enum");
    assert_eq!(
        health["ops"],
        json!(["HEALTH_OK", "HEALTH_WARN", "HEALTH_ERR"])
    );
    assert_eq!(device["cmps"]["ceph_usage"]["unit_of_meas"], "%");

    // When Ceph turns HEALTH_ERR, the next slow round (2 s) reports it
    sim_send(sim, "POST", "/_sim/ceph", json!({"health": "HEALTH_ERR"})).await;
    let state = probe
        .wait_topic(CLUSTER, 6 * SECS, |m| {
            m.json()["ceph"]["health"] == "HEALTH_ERR"
        })
        .await
        .json();
    assert_eq!(
        state["ceph"]["checks"]["OSD_FULL"]["message"],
        "1 full osd(s)"
    );
    // And back to OK: no checks left
    sim_send(sim, "POST", "/_sim/ceph", json!({"health": "HEALTH_OK"})).await;
    let state = probe
        .wait_topic(CLUSTER, 6 * SECS, |m| {
            m.json()["ceph"]["health"] == "HEALTH_OK"
        })
        .await
        .json();
    assert_eq!(state["ceph"]["checks"], json!({}));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_ceph_ha_or_replication_is_probed_once_and_not_asked_every_round() {
    // Given the seed world without Ceph (and, as always, without HA and replication)
    let stage = fast_slow_lane().prepare().await;
    sim_send(
        &stage.sim,
        "POST",
        "/_sim/ceph",
        json!({"installed": false}),
    )
    .await;
    let w = stage.start().await;
    let (sim, probe) = (&w.sim, &w.probe);

    // When the slow lane has run four rounds
    wait_count(sim, "GET /cluster/status", 4).await;

    // Then each part was asked for once, in the first round, and then left alone
    let seen = counters(sim).await;
    assert_eq!(count(&seen, "GET /cluster/ceph/status"), 1, "{seen:?}");
    assert_eq!(
        count(&seen, "GET /cluster/ha/status/current"),
        1,
        "{seen:?}"
    );
    assert_eq!(count(&seen, "GET /cluster/replication"), 1, "{seen:?}");
    assert_eq!(count(&seen, "GET /nodes/{node}/replication"), 0, "{seen:?}");
    // And the state says "none", and the Ceph entities are removed from (never added to)
    // Home Assistant
    let state = probe.latest(CLUSTER).expect("cluster state").json();
    assert_eq!(state["ceph"], Value::Null);
    assert_eq!(state["ha"], Value::Null);
    let device = probe
        .wait_topic(CLUSTER_DEVICE, 10 * SECS, |m| {
            m.json()["cmps"]["ceph_health"] == json!({"p": "sensor"})
        })
        .await
        .json();
    assert_eq!(
        device["cmps"]["ceph_problem"],
        json!({"p": "binary_sensor"})
    );
    assert_eq!(device["cmps"]["ha_problem"], json!({"p": "binary_sensor"}));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hastate_and_lock_reach_the_guests_without_any_extra_request() {
    // Given a container locked by a backup and an HA-managed VM
    let stage = World::builder().prepare().await;
    let sim = &stage.sim;
    sim_send(sim, "PATCH", "/_sim/guests/101", json!({"lock": "backup"})).await;
    sim_send(
        sim,
        "PATCH",
        "/_sim/guests/100",
        json!({"hastate": "started"}),
    )
    .await;
    let w = stage.start().await;
    let (sim, probe) = (&w.sim, &w.probe);

    // Then the guest states carry them
    let ct = probe
        .wait_topic("pve2mqtt/pve/lxc/101", 20 * SECS, |m| {
            m.json()["lock"] == "backup"
        })
        .await
        .json();
    assert_eq!(ct["hastate"], Value::Null);
    let vm = probe
        .wait_topic("pve2mqtt/pve/qemu/100", 20 * SECS, |m| {
            m.json()["ha_state"] == "started"
        })
        .await
        .json();
    assert_eq!(vm["hastate"], "started");
    // And the cluster state the HA manager's view
    let cluster = probe
        .wait_topic(CLUSTER, 20 * SECS, |m| !m.json()["ha"].is_null())
        .await
        .json();
    assert_eq!(cluster["ha"]["quorate"], true);
    assert_eq!(cluster["ha"]["master"], "pve");
    assert_eq!(cluster["ha"]["master_state"], "active");
    assert_eq!(cluster["ha"]["services"]["vm:100"]["state"], "started");
    assert_eq!(cluster["ha"]["services_in_error"], json!([]));

    // And Home Assistant: "HA managed" and "Lock" on every guest, "HA state" on the
    // managed one only, the HA manager on the cluster
    let ct_device = probe
        .wait_topic(
            "homeassistant/device/pve2mqtt_pve_101/config",
            20 * SECS,
            |m| !m.payload.is_empty(),
        )
        .await
        .json();
    let lock = &ct_device["cmps"]["lock"];
    assert_eq!(lock["dev_cla"], "enum");
    assert!(lock["ops"].as_array().unwrap().contains(&json!("backup")));
    assert!(lock["ops"].as_array().unwrap().contains(&json!("none")));
    assert_eq!(ct_device["cmps"]["ha_managed"]["p"], "binary_sensor");
    assert_eq!(ct_device["cmps"]["ha_managed"]["ent_cat"], "diagnostic");
    assert_eq!(ct_device["cmps"]["ha_state"], json!({"p": "sensor"}));
    let vm_device = probe
        .wait_topic(
            "homeassistant/device/pve2mqtt_pve_100/config",
            20 * SECS,
            |m| m.json()["cmps"]["ha_state"]["dev_cla"] == "enum",
        )
        .await
        .json();
    assert!(vm_device["cmps"]["ha_state"]["ops"]
        .as_array()
        .unwrap()
        .contains(&json!("fence")));
    probe
        .wait_topic(CLUSTER_DEVICE, 20 * SECS, |m| {
            m.json()["cmps"]["ha_problem"]["dev_cla"] == "problem"
        })
        .await;

    // And none of it cost a request per guest: apart from the guest details that have
    // their own per-guest budget (snapshot lists, the guest agent), the lanes asked only
    // cluster-wide and per-node endpoints
    let seen = counters(sim).await;
    let budgeted = ["/snapshot", "/agent/", "/interfaces"];
    let per_guest: Vec<&String> = seen
        .keys()
        .filter(|r| r.contains("{vmid}") && !budgeted.iter().any(|b| r.contains(b)))
        .collect();
    assert!(per_guest.is_empty(), "per-guest requests: {per_guest:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_replication_job_turns_the_guests_replication_problem_on() {
    // Given a two-node cluster where VM 100 replicates to pve2
    let stage = vm_100_replicating_to_pve2().await;
    let w = stage.start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    let topic = "pve2mqtt/simcluster/qemu/100";
    let vm = probe
        .wait_topic(topic, 20 * SECS, |m| !m.json()["replication"].is_null())
        .await
        .json();
    let replication = &vm["replication"];
    assert_eq!(replication["fail_count"], 0);
    assert!(replication["last_sync"].as_u64().unwrap() > 0);
    assert_eq!(replication["jobs"][0]["id"], "100-0");
    assert_eq!(replication["jobs"][0]["target"], "pve2");
    assert_eq!(replication["jobs"][0]["schedule"], "*/1");
    // Guests without a job have none
    let other = probe
        .wait_topic("pve2mqtt/simcluster/qemu/101", 20 * SECS, |_| true)
        .await
        .json();
    assert_eq!(other["replication"], Value::Null);
    // Home Assistant gets the problem sensor with the jobs as attributes on that VM only
    let device = probe
        .wait_topic(
            "homeassistant/device/pve2mqtt_simcluster_100/config",
            20 * SECS,
            |m| m.json()["cmps"]["replication"]["dev_cla"] == "problem",
        )
        .await
        .json();
    assert_eq!(device["cmps"]["replication"]["json_attr_t"], topic);
    assert_eq!(device["cmps"]["last_replication"]["dev_cla"], "timestamp");
    // (and is told that other guests have none, once every node answered)
    probe
        .wait_topic(
            "homeassistant/device/pve2mqtt_simcluster_101/config",
            20 * SECS,
            |m| m.json()["cmps"]["replication"] == json!({"p": "binary_sensor"}),
        )
        .await;

    // When the job starts failing
    sim_send(
        sim,
        "POST",
        "/_sim/replication/100-0",
        json!({"failing": true}),
    )
    .await;

    // Then within a slow round the VM reports the failure and Proxmox's error text
    let vm = probe
        .wait_topic(topic, 6 * SECS, |m| {
            m.json()["replication"]["fail_count"].as_u64() > Some(0)
        })
        .await
        .json();
    let error = vm["replication"]["error"].as_str().unwrap();
    assert!(error.contains("zfs snapshot"), "{error}");
    assert_eq!(vm["replication"]["jobs"][0]["error"], error);
    // The per-node status is what the slow lane reads, once per node and round
    let seen = counters(sim).await;
    assert_eq!(count(&seen, "GET /cluster/replication"), 1, "{seen:?}");
    assert!(
        count(&seen, "GET /nodes/{node}/replication") >= 2,
        "{seen:?}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_the_privileges_skips_ceph_and_ha_quietly_and_check_says_so() {
    // Given a token that may read guests, storages and nodes, but nothing on `/`
    let token = "bridge@pve!ro=5ec12e7a-0000-4000-8000-0000000000aa";
    let stage = fast_slow_lane()
        .replace(pve_sim::DEFAULT_TOKEN, token)
        .prepare()
        .await;
    let sim = &stage.sim;
    sim_send(
        sim,
        "PATCH",
        "/_sim/guests/100",
        json!({"hastate": "started"}),
    )
    .await;
    sim_send(
        sim,
        "POST",
        "/_sim/tokens",
        json!({"token": token, "privileges": {
            "/vms": ["VM.Audit"], "/storage": ["Datastore.Audit"], "/nodes": ["Sys.Audit"]
        }}),
    )
    .await;

    // When `check` runs
    let output = run_check(stage.cfg.write()).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Then it says which parts the token cannot read, and why
    assert!(
        stdout.contains(
            "Ceph health: no — HTTP 403: Permission check failed (/, Sys.Audit|Datastore.Audit)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("HA manager: no — HTTP 403: Permission check failed (/, Sys.Audit)"),
        "{stdout}"
    );
    assert!(stdout.contains("replication: no job visible"), "{stdout}");

    // And the bridge with that token asks once, publishes nothing for them, and does not
    // ask again every round (the HA-managed guest does not make it ask again either)
    sim_get(sim, "/_sim/counters").await;
    sim_send(sim, "POST", "/_sim/counters/reset", json!({})).await;
    let w = stage.start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    probe
        .wait_topic("pve2mqtt/pve/qemu/100", 20 * SECS, |m| {
            m.json()["hastate"] == "started"
        })
        .await;
    wait_count(sim, "GET /cluster/resources", 4).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let seen = counters(sim).await;
    assert_eq!(count(&seen, "GET /cluster/ceph/status"), 1, "{seen:?}");
    assert_eq!(
        count(&seen, "GET /cluster/ha/status/current"),
        1,
        "{seen:?}"
    );
    let state = probe.latest(CLUSTER).expect("cluster state").json();
    assert_eq!(state["ceph"], Value::Null);
    assert_eq!(state["ha"], Value::Null);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_replication_is_known_every_guest_is_told_at_once_not_at_its_next_change() {
    // Given a stopped container (its state does not move by itself) and a Proxmox that
    // fails the replication list, so the bridge cannot tell yet whether guests replicate
    let stage = fast_slow_lane().prepare().await;
    sim_send(
        &stage.sim,
        "PATCH",
        "/_sim/guests/101",
        json!({"status": "stopped"}),
    )
    .await;
    let fault = json!({"path_prefix": "/cluster/replication", "kind": "status",
        "status": 500, "message": "temporarily unavailable", "count": 100_000});
    sim_send(&stage.sim, "POST", "/_sim/faults", fault).await;
    let w = stage.start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    let device = "homeassistant/device/pve2mqtt_pve_101/config";
    let first = probe
        .wait_topic(device, 20 * SECS, |m| !m.payload.is_empty())
        .await
        .json();
    assert!(first["cmps"].get("replication").is_none(), "{first}");
    // (the slow lane has settled the container's backups and snapshots meanwhile)
    wait_count(sim, "GET /cluster/replication", 3).await;

    // When Proxmox answers the replication list
    sim_send(sim, "DELETE", "/_sim/faults", json!({})).await;

    // Then the container's discovery says at once that it has no replication, without a
    // change of its own
    probe
        .wait_topic(device, 10 * SECS, |m| {
            m.json()["cmps"]["replication"] == json!({"p": "binary_sensor"})
        })
        .await;
    // And its next change of state carries no discovery message
    probe.clear();
    sim_send(sim, "PATCH", "/_sim/guests/101", json!({"lock": "backup"})).await;
    probe
        .wait_topic("pve2mqtt/pve/lxc/101", 10 * SECS, |m| {
            m.json()["lock"] == "backup"
        })
        .await;
    let again: Vec<Msg> = probe
        .messages()
        .into_iter()
        .filter(|m| m.topic == device)
        .collect();
    assert!(again.is_empty(), "discovery sent again: {:?}", again.len());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_start_each_guest_is_announced_once_with_its_replication_settled() {
    // Given a two-node cluster where VM 100 replicates to pve2 and the other guests do not
    let stage = vm_100_replicating_to_pve2().await;
    let guests: Vec<(u64, String)> = sim_get(&stage.sim, "/_sim/world").await["guests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["vmid"].as_u64().unwrap(),
                g["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(guests.len(), 4);

    // When the bridge starts and its slow lane has gone round three times
    let w = stage.start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    probe
        .wait_topic("pve2mqtt/simcluster/qemu/100", 20 * SECS, |m| {
            !m.json()["replication"].is_null()
        })
        .await;
    wait_count(sim, "GET /nodes/{node}/replication", 6).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Then Home Assistant was told about each guest's replication in every discovery
    // message it got, the first included: VM 100's entities, every other guest's removal
    // (a restart must not leave stale ones). A container's discovery went out once; a
    // VM's may once more when its agent first reports filesystems ("Disk used").
    let messages = probe.messages();
    for (vmid, kind) in guests {
        let topic = format!("homeassistant/device/pve2mqtt_simcluster_{vmid}/config");
        let sent: Vec<Value> = messages
            .iter()
            .filter(|m| m.topic == topic && !m.payload.is_empty())
            .map(|m| m.json())
            .collect();
        assert!(!sent.is_empty(), "{topic}: never announced");
        for (i, payload) in sent.iter().enumerate() {
            let replication = &payload["cmps"]["replication"];
            if vmid == 100 {
                assert_eq!(
                    replication["dev_cla"], "problem",
                    "{topic} #{i}: {replication}"
                );
            } else {
                assert_eq!(replication, &json!({"p": "binary_sensor"}), "{topic} #{i}");
            }
        }
        if kind == "lxc" {
            assert_eq!(sent.len(), 1, "{topic}: {} discovery messages", sent.len());
        }
    }
    w.stop().await;
}
