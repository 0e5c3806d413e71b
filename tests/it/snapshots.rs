//! Snapshots (issue 12): the `snapshot`, `rollback` and `delete_snapshot` commands reach
//! Proxmox as the right calls and are followed to the end; names are checked before any
//! request; rollback needs `[commands] rollback = true`; the guest state shows the
//! snapshot count and the newest snapshot, right after a command ends.

use std::time::Duration;

use serde_json::{json, Value};

use crate::commands::{last_seq, send_command, task_states, wait_final};
use crate::support::*;

/// Seed world (VM 100 with snapshots `before-upgrade` → `ha-2026-11`, CT 101 with
/// `clean-install`) and a bridge that has read the snapshot lists.
async fn world(extra: &str) -> World {
    let w = World::builder().config(extra).start().await;
    for topic in ["pve2mqtt/pve/qemu/100", "pve2mqtt/pve/lxc/101"] {
        w.probe
            .wait_topic(topic, 20 * SECS, |m| {
                !m.payload.is_empty() && m.json()["snapshots"].is_number()
            })
            .await;
    }
    w
}

/// Every request that changes something (not a GET) since `since`.
async fn writes(sim: &pve_sim::SimHandle, since: u64) -> Vec<Value> {
    let mut all = requests_since(sim, since).await;
    all.retain(|r| r["method"] != "GET");
    all
}

/// Sends one command; returns its final report and the writes it caused.
async fn command(w: &World, kind: &str, vmid: u32, payload: Value) -> (Value, Vec<Value>) {
    let (result, since) = send_command(w, kind, vmid, payload).await;
    (result, writes(&w.sim, since).await)
}

/// Waits for the guest's state to show `count` snapshots, the newest named `latest`.
async fn wait_snapshots(w: &World, topic: &str, count: u64, latest: &str) -> Value {
    let latest = latest.to_string();
    w.probe
        .wait_topic(topic, 10 * SECS, |m| {
            !m.payload.is_empty()
                && m.json()["snapshots"] == count
                && m.json()["snapshot_latest"] == latest.as_str()
        })
        .await
        .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_rollback_and_delete_reach_proxmox_as_the_right_calls_and_each_end_ok() {
    let w = world("[commands]\nrollback = true\n").await;
    let vm = "pve2mqtt/pve/qemu/100";
    // The demo VM's state as read by the slow lane.
    let state = wait_snapshots(&w, vm, 2, "ha-2026-11").await;
    assert!(state["snapshot_latest_time"].is_u64(), "{state}");

    // snapshot → POST …/snapshot with snapname, description and vmstate as 0/1
    let (result, calls) = command(
        &w,
        "qemu",
        100,
        json!({"action": "snapshot", "name": "pre-upgrade", "description": "before 2026.12", "vmstate": true, "id": "s1"}),
    )
    .await;
    assert_eq!(result["state"], "ok", "{result}");
    assert!(result["upid"]
        .as_str()
        .unwrap()
        .contains(":qmsnapshot:100:"));
    assert_eq!(calls.len(), 1, "exactly one call: {calls:?}");
    assert_eq!(calls[0]["method"], "POST");
    assert_eq!(calls[0]["path"], "/nodes/pve/qemu/100/snapshot");
    assert_eq!(
        calls[0]["form"],
        json!({"snapname": "pre-upgrade", "description": "before 2026.12", "vmstate": "1"})
    );
    let states: Vec<String> = task_states(&w.probe, &format!("{vm}/task"), "s1")
        .iter()
        .map(|v| v["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["accepted", "running", "ok"]);
    // The count and the newest snapshot follow right after the task, not 15 min later.
    let state = wait_snapshots(&w, vm, 3, "pre-upgrade").await;
    let taken = state["snapshot_latest_time"].as_u64().unwrap();
    let now = pve2mqtt::command::report::unix_now();
    assert!(taken + 60 > now, "{state}");

    // rollback → POST …/snapshot/{name}/rollback with start=1
    let (result, calls) = command(
        &w,
        "qemu",
        100,
        json!({"action": "rollback", "name": "before-upgrade", "start": true, "id": "s2"}),
    )
    .await;
    assert_eq!(result["state"], "ok", "{result}");
    assert!(result["upid"]
        .as_str()
        .unwrap()
        .contains(":qmrollback:100:"));
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["method"], "POST");
    assert_eq!(
        calls[0]["path"],
        "/nodes/pve/qemu/100/snapshot/before-upgrade/rollback"
    );
    assert_eq!(calls[0]["form"], json!({"start": "1"}));
    w.probe
        .wait_topic(vm, 10 * SECS, |m| {
            !m.payload.is_empty() && m.json()["status"] == "running"
        })
        .await;

    // delete_snapshot → DELETE …/snapshot/{name}, no body
    let (result, calls) = command(
        &w,
        "qemu",
        100,
        json!({"action": "delete_snapshot", "name": "pre-upgrade", "id": "s3"}),
    )
    .await;
    assert_eq!(result["state"], "ok", "{result}");
    assert!(result["upid"]
        .as_str()
        .unwrap()
        .contains(":qmdelsnapshot:100:"));
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["method"], "DELETE");
    assert_eq!(calls[0]["path"], "/nodes/pve/qemu/100/snapshot/pre-upgrade");
    assert_eq!(calls[0]["form"], json!({}));
    wait_snapshots(&w, vm, 2, "ha-2026-11").await;

    // A container's snapshot sends no vmstate (Proxmox's lxc schema has none).
    let (result, calls) = command(
        &w,
        "lxc",
        101,
        json!({"action": "snapshot", "name": "ct-test", "id": "s4"}),
    )
    .await;
    assert_eq!(result["state"], "ok", "{result}");
    assert_eq!(calls[0]["path"], "/nodes/pve/lxc/101/snapshot");
    assert_eq!(calls[0]["form"], json!({"snapname": "ct-test"}));
    wait_snapshots(&w, "pve2mqtt/pve/lxc/101", 2, "ct-test").await;

    // Home Assistant: two sensors, and no button for any snapshot action.
    let device = w
        .probe
        .latest("homeassistant/device/pve2mqtt_pve_100/config")
        .expect("VM device")
        .json();
    let cmps = device["cmps"].as_object().expect("cmps");
    assert_eq!(cmps["snapshots"]["p"], "sensor");
    assert_eq!(cmps["snapshots"]["stat_cla"], "measurement");
    assert_eq!(cmps["snapshot_latest"]["dev_cla"], "timestamp");
    assert_eq!(
        cmps["snapshot_latest"]["uniq_id"],
        "pve2mqtt_pve_100_snapshot_latest"
    );
    for action in ["snapshot", "rollback", "delete_snapshot"] {
        assert!(cmps.get(action).is_none(), "no {action} button");
    }
    w.bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_is_refused_while_commands_rollback_is_off_and_nothing_is_sent() {
    let w = world("").await;
    let (result, calls) = command(
        &w,
        "qemu",
        100,
        json!({"action": "rollback", "name": "before-upgrade", "id": "r1"}),
    )
    .await;
    assert_eq!(result["state"], "rejected", "{result}");
    let error = result["error"].as_str().unwrap();
    assert!(error.contains("[commands] rollback = false"), "{error}");
    assert!(calls.is_empty(), "{calls:?}");
    // Taking and deleting snapshots need no switch.
    let (result, _) = command(
        &w,
        "qemu",
        100,
        json!({"action": "snapshot", "name": "allowed", "id": "r2"}),
    )
    .await;
    assert_eq!(result["state"], "ok", "{result}");
    w.bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_snapshot_names_are_rejected_with_a_reason_and_nothing_is_sent() {
    let w = world("[commands]\nrollback = true\n").await;
    let long = "a".repeat(41);
    let cases = [
        (
            json!({"action": "snapshot", "name": "Bad Name"}),
            "invalid snapshot name 'Bad Name'",
        ),
        (json!({"action": "snapshot", "name": "current"}), "reserved"),
        (json!({"action": "snapshot", "name": "pending"}), "reserved"),
        (
            json!({"action": "rollback", "name": long}),
            "too long (41 characters",
        ),
        (
            json!({"action": "delete_snapshot", "name": 5}),
            "must be a string",
        ),
        (
            json!({"action": "snapshot"}),
            "needs the snapshot's \"name\"",
        ),
        (
            json!({"action": "rollback", "name": "ok-name", "vmstate": true}),
            "unknown option 'vmstate'",
        ),
        (
            json!({"action": "snapshot", "name": "ok-name", "vmstate": "yes"}),
            "true or false",
        ),
    ];
    for (i, (mut payload, reason)) in cases.into_iter().enumerate() {
        payload["id"] = json!(format!("b{i}"));
        let (result, calls) = command(&w, "qemu", 100, payload.clone()).await;
        assert_eq!(result["state"], "rejected", "{payload}: {result}");
        let error = result["error"].as_str().unwrap();
        assert!(error.contains(reason), "{payload}: {error}");
        assert!(calls.is_empty(), "{payload}: {calls:?}");
    }
    // A bare word cannot name a snapshot.
    let since = last_seq(&w.sim).await;
    w.probe
        .publish("pve2mqtt/pve/lxc/101/set", "snapshot", false)
        .await;
    let report = w
        .probe
        .wait_topic("pve2mqtt/pve/lxc/101/task", 10 * SECS, |m| {
            !m.payload.is_empty() && m.json()["state"] == "rejected"
        })
        .await
        .json();
    assert!(
        report["error"].as_str().unwrap().contains("name"),
        "{report}"
    );
    // lxc: `vzdump` is reserved, and there is no vmstate.
    for (i, payload) in [
        json!({"action": "snapshot", "name": "vzdump"}),
        json!({"action": "snapshot", "name": "ok-name", "vmstate": false}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut payload = payload;
        payload["id"] = json!(format!("c{i}"));
        let (result, _) = command(&w, "lxc", 101, payload.clone()).await;
        assert_eq!(result["state"], "rejected", "{payload}: {result}");
    }
    assert!(writes(&w.sim, since).await.is_empty());
    w.bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_snapshot_name_ends_failed_with_the_proxmox_text() {
    let w = world("").await;
    let (result, calls) = command(
        &w,
        "qemu",
        100,
        json!({"action": "snapshot", "name": "before-upgrade", "id": "d1"}),
    )
    .await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(result["state"], "failed", "{result}");
    assert_eq!(
        result["error"], "snapshot name 'before-upgrade' already used",
        "{result}"
    );
    // Deleting a snapshot that does not exist: Proxmox's words too.
    let (result, _) = command(
        &w,
        "lxc",
        101,
        json!({"action": "delete_snapshot", "name": "nope", "id": "d2"}),
    )
    .await;
    assert_eq!(result["state"], "failed", "{result}");
    assert_eq!(result["error"], "snapshot 'nope' does not exist");
    w.bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_snapshot_commands_are_never_executed() {
    let stage = World::builder()
        .config("[commands]\nrollback = true\n")
        .prepare()
        .await;
    for (topic, payload) in [
        (
            "pve2mqtt/pve/qemu/100/set",
            json!({"action": "rollback", "name": "before-upgrade", "id": "old-r"}),
        ),
        (
            "pve2mqtt/pve/lxc/101/set",
            json!({"action": "delete_snapshot", "name": "clean-install", "id": "old-d"}),
        ),
    ] {
        stage.probe.publish(topic, &payload.to_string(), true).await;
    }
    let since = last_seq(&stage.sim).await;
    let w = stage.start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    for (topic, id) in [
        ("pve2mqtt/pve/qemu/100/task", "old-r"),
        ("pve2mqtt/pve/lxc/101/task", "old-d"),
    ] {
        let result = wait_final(probe, topic, id).await;
        assert_eq!(result["state"], "rejected", "{result}");
        assert!(result["error"].as_str().unwrap().contains("retain"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(writes(sim, since).await.is_empty());
    w.stop().await;
}
