use std::time::Duration;

use serde_json::{json, Value};

use crate::state::pve_get;
use crate::support::*;

/// The Proxmox requests the simulator recorded since `since`, POSTs only.
pub(crate) async fn posts(sim: &pve_sim::SimHandle, since: u64) -> Vec<Value> {
    let mut all = requests_since(sim, since).await;
    all.retain(|r| r["method"] == "POST");
    all
}

pub(crate) use crate::support::last_seq;

/// Every `…/task` payload received for `id`, in order.
pub(crate) fn task_states(probe: &Probe, topic: &str, id: &str) -> Vec<Value> {
    probe
        .messages()
        .into_iter()
        .filter(|m| m.topic == topic && !m.payload.is_empty())
        .map(|m| m.json())
        .filter(|v| v["id"] == id)
        .collect()
}

pub(crate) async fn wait_final(probe: &Probe, topic: &str, id: &str) -> Value {
    let id = id.to_string();
    probe
        .wait_for(
            &format!("final result of {id} on {topic}"),
            20 * SECS,
            |m| {
                m.topic == topic
                    && serde_json::from_slice::<Value>(&m.payload)
                        .map(|v| {
                            v["id"] == id.as_str()
                                && matches!(v["state"].as_str(), Some("ok" | "failed" | "rejected"))
                        })
                        .unwrap_or(false)
            },
        )
        .await
        .json()
}

/// Seed world + bridge; waits until the bridge knows the guests.
async fn world(extra: &str) -> World {
    World::builder()
        .config(extra)
        .until("pve2mqtt/pve/qemu/100")
        .until("pve2mqtt/pve/lxc/101")
        .start()
        .await
}

/// Sends one command on `pve2mqtt/pve/{kind}/{vmid}/set`; returns its final task report
/// and the `seq` of the simulator's last request before it.
pub(crate) async fn send_command(w: &World, kind: &str, vmid: u32, payload: Value) -> (Value, u64) {
    let id = payload["id"]
        .as_str()
        .expect("test payloads carry an id")
        .to_string();
    let since = last_seq(&w.sim).await;
    w.probe
        .publish(
            &format!("pve2mqtt/pve/{kind}/{vmid}/set"),
            &payload.to_string(),
            false,
        )
        .await;
    let result = wait_final(&w.probe, &format!("pve2mqtt/pve/{kind}/{vmid}/task"), &id).await;
    (result, since)
}

/// Sends one command and returns (final task report, the POSTs it caused).
async fn command(w: &World, kind: &str, vmid: u32, payload: Value) -> (Value, Vec<Value>) {
    let (result, since) = send_command(w, kind, vmid, payload).await;
    (result, posts(&w.sim, since).await)
}

fn assert_sequence(probe: &Probe, topic: &str, id: &str, last: &str) {
    let states: Vec<String> = task_states(probe, topic, id)
        .iter()
        .map(|v| v["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        states.first().map(String::as_str),
        Some("accepted"),
        "{states:?}"
    );
    assert!(states.iter().any(|s| s == "running"), "{states:?}");
    assert_eq!(states.last().map(String::as_str), Some(last), "{states:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_reaches_proxmox_as_the_right_post_and_ends_ok() {
    let w = world("").await;
    // (kind, vmid, payload, expected path, expected form)
    let cases: Vec<(&str, u32, Value, &str, Value)> = vec![
        (
            "qemu",
            100,
            json!({"action": "reboot", "timeout": 40, "id": "q1"}),
            "/nodes/pve/qemu/100/status/reboot",
            json!({"timeout": "40"}),
        ),
        (
            "qemu",
            100,
            json!({"action": "suspend", "id": "q2"}),
            "/nodes/pve/qemu/100/status/suspend",
            json!({}),
        ),
        (
            "qemu",
            100,
            json!({"action": "resume", "id": "q3"}),
            "/nodes/pve/qemu/100/status/resume",
            json!({}),
        ),
        (
            "qemu",
            100,
            json!({"action": "reset", "id": "q4"}),
            "/nodes/pve/qemu/100/status/reset",
            json!({}),
        ),
        (
            "qemu",
            100,
            json!({"action": "shutdown", "timeout": 30, "force_stop": true, "id": "q5"}),
            "/nodes/pve/qemu/100/status/shutdown",
            json!({"timeout": "30", "forceStop": "1"}),
        ),
        (
            "qemu",
            100,
            json!({"action": "start", "id": "q6"}),
            "/nodes/pve/qemu/100/status/start",
            json!({}),
        ),
        (
            "qemu",
            100,
            json!({"action": "stop", "id": "q7"}),
            "/nodes/pve/qemu/100/status/stop",
            json!({}),
        ),
        (
            "qemu",
            100,
            json!({"action": "start", "id": "q8"}),
            "/nodes/pve/qemu/100/status/start",
            json!({}),
        ),
        (
            "qemu",
            100,
            json!({"action": "hibernate", "id": "q9"}),
            "/nodes/pve/qemu/100/status/suspend",
            json!({"todisk": "1"}),
        ),
        (
            "lxc",
            101,
            json!({"action": "reboot", "id": "c1"}),
            "/nodes/pve/lxc/101/status/reboot",
            json!({}),
        ),
        (
            "lxc",
            101,
            json!({"action": "suspend", "id": "c2"}),
            "/nodes/pve/lxc/101/status/suspend",
            json!({}),
        ),
        (
            "lxc",
            101,
            json!({"action": "resume", "id": "c3"}),
            "/nodes/pve/lxc/101/status/resume",
            json!({}),
        ),
        (
            "lxc",
            101,
            json!({"action": "shutdown", "timeout": 20, "id": "c4"}),
            "/nodes/pve/lxc/101/status/shutdown",
            json!({"timeout": "20"}),
        ),
        (
            "lxc",
            101,
            json!({"action": "start", "id": "c5"}),
            "/nodes/pve/lxc/101/status/start",
            json!({}),
        ),
        (
            "lxc",
            101,
            json!({"action": "stop", "id": "c6"}),
            "/nodes/pve/lxc/101/status/stop",
            json!({}),
        ),
    ];
    for (kind, vmid, payload, path, form) in cases {
        let id = payload["id"].as_str().unwrap().to_string();
        let (result, posts) = command(&w, kind, vmid, payload.clone()).await;
        assert_eq!(result["state"], "ok", "{payload}: {result}");
        assert_eq!(result["exitstatus"], "OK", "{payload}");
        assert!(
            result["upid"].as_str().unwrap().starts_with("UPID:pve:"),
            "{result}"
        );
        assert_eq!(posts.len(), 1, "{payload}: exactly one POST, got {posts:?}");
        assert_eq!(posts[0]["path"], path, "{payload}");
        assert_eq!(posts[0]["form"], form, "{payload}");
        assert_sequence(
            &w.probe,
            &format!("pve2mqtt/pve/{kind}/{vmid}/task"),
            &id,
            "ok",
        );
    }
    w.bridge.stop().await.unwrap();
    drop(w.broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_carry_proxmox_text_whether_in_the_task_or_synchronous() {
    let w = world("").await;
    // Starting a running VM: Proxmox gives a UPID, and the task fails.
    let (vm, posts) = command(&w, "qemu", 100, json!({"action": "start", "id": "f1"})).await;
    assert_eq!(vm["state"], "failed", "{vm}");
    assert_eq!(vm["error"], "VM 100 already running");
    assert!(vm["upid"].is_string());
    assert_eq!(posts.len(), 1);
    // Starting a running container: an immediate HTTP 500, no task at all.
    let (ct, posts) = command(&w, "lxc", 101, json!({"action": "start", "id": "f2"})).await;
    assert_eq!(ct["state"], "failed", "{ct}");
    assert!(
        ct["error"]
            .as_str()
            .unwrap()
            .contains("CT 101 already running"),
        "{ct}"
    );
    assert!(ct["upid"].is_null());
    assert_eq!(posts.len(), 1);
    w.bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_is_reported_as_a_permission_failure() {
    let token = "audit@pve!ro=99999999-8888-7777-6666-555555555555";
    let stage = World::builder()
        .replace(pve_sim::DEFAULT_TOKEN, token)
        .prepare()
        .await;
    sim_send(
        &stage.sim,
        "POST",
        "/_sim/tokens",
        json!({
            "token": token,
            "privileges": {"/": ["Sys.Audit", "VM.Audit", "Datastore.Audit"]},
        }),
    )
    .await;
    let w = stage.start().await;
    let probe = &w.probe;
    probe.wait_state("pve2mqtt/pve/qemu/100").await;
    probe
        .publish(
            "pve2mqtt/pve/qemu/100/set",
            r#"{"action":"shutdown","id":"p1"}"#,
            false,
        )
        .await;
    let result = wait_final(probe, "pve2mqtt/pve/qemu/100/task", "p1").await;
    assert_eq!(result["state"], "failed");
    let error = result["error"].as_str().unwrap();
    assert!(
        error.contains("403") && error.contains("Permission check failed (/vms/100, VM.PowerMgmt)"),
        "{error}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_sends_the_vzdump_form_reports_progress_and_updates_last_backup() {
    let w = world("").await;
    let before = w
        .probe
        .wait_topic("pve2mqtt/pve/qemu/100", 20 * SECS, |m| {
            m.json()["last_backup"].is_u64()
        })
        .await
        .json()["last_backup"]
        .as_u64()
        .unwrap();
    sim_send(
        &w.sim,
        "POST",
        "/_sim/config",
        json!({"task_duration_ms": 1500}),
    )
    .await;
    let (result, posts) = command(
        &w,
        "qemu",
        100,
        json!({"action": "backup", "storage": "local", "mode": "stop", "compress": "lzo",
               "notes_template": "{{guestname}} nightly", "protected": true, "remove": false, "id": "b1"}),
    )
    .await;
    assert_eq!(result["state"], "ok", "{result}");
    assert_eq!(result["progress"], 100);
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0]["path"], "/nodes/pve/vzdump");
    assert_eq!(
        posts[0]["form"],
        json!({"vmid": "100", "storage": "local", "mode": "stop", "compress": "lzo",
               "notes-template": "{{guestname}} nightly", "protected": "1", "remove": "0"})
    );
    // Progress was reported in between, rising.
    let progress: Vec<u64> = task_states(&w.probe, "pve2mqtt/pve/qemu/100/task", "b1")
        .iter()
        .filter(|v| v["state"] == "running")
        .filter_map(|v| v["progress"].as_u64())
        .collect();
    assert!(
        progress.iter().any(|p| *p > 0 && *p < 100),
        "progress seen: {progress:?}"
    );
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    // The new backup shows up as last_backup, as in Proxmox's storage content.
    let after = w
        .probe
        .wait_topic("pve2mqtt/pve/qemu/100", 10 * SECS, |m| {
            m.json()["last_backup"].as_u64() > Some(before)
        })
        .await
        .json()["last_backup"]
        .as_u64()
        .unwrap();
    let content = pve_get(&w.sim, "/nodes/pve/storage/local/content?content=backup").await;
    let newest = content
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["vmid"] == 100)
        .filter_map(|i| i["ctime"].as_u64())
        .max();
    assert_eq!(Some(after), newest);
    w.bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_state_is_published_right_after_the_task_without_waiting_for_a_poll() {
    // A poll interval far longer than the test: only the post-task refresh can publish.
    let w = world("").await;
    let toml = w
        .cfg
        .toml
        .replace("interval = \"1s\"", "interval = \"300s\"")
        .replace("slow_interval = \"2s\"", "slow_interval = \"300s\"");
    w.bridge.stop().await.unwrap();
    let bridge =
        Bridge::start(pve2mqtt::config::Config::from_toml_str(&toml, &Default::default()).unwrap());
    w.probe.clear();
    w.probe
        .wait_topic("pve2mqtt/pve/qemu/100", 20 * SECS, |m| {
            m.json()["status"] == "running"
        })
        .await;
    w.probe
        .publish(
            "pve2mqtt/pve/qemu/100/set",
            r#"{"action":"shutdown","id":"s1"}"#,
            false,
        )
        .await;
    let ok = w
        .probe
        .wait_for("shutdown ok", 20 * SECS, |m| {
            m.topic == "pve2mqtt/pve/qemu/100/task"
                && m.text().contains("\"s1\"")
                && m.text().contains("\"ok\"")
        })
        .await;
    let stopped = w
        .probe
        .wait_topic("pve2mqtt/pve/qemu/100", 5 * SECS, |m| {
            m.json()["status"] == "stopped"
        })
        .await;
    let lag = stopped.at.max(ok.at) - ok.at.min(stopped.at);
    assert!(
        lag < Duration::from_secs(5),
        "state followed the task end within {lag:?}"
    );
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_commands_are_rejected_with_a_reason_and_never_reach_proxmox() {
    let w = world("[commands]\nallow = [\"100\", \"tag:ha\"]\n").await;
    // Make the next VM task hang, so a second command finds the guest busy.
    sim_send(
        &w.sim,
        "POST",
        "/_sim/tasks/next",
        json!({"vmid": 100, "action": "reboot", "outcome": "hang"}),
    )
    .await;
    let since = last_seq(&w.sim).await;
    w.probe
        .publish(
            "pve2mqtt/pve/qemu/100/set",
            r#"{"action":"reboot","id":"hang"}"#,
            false,
        )
        .await;
    w.probe
        .wait_for("reboot running", 10 * SECS, |m| {
            m.topic == "pve2mqtt/pve/qemu/100/task" && m.text().contains("\"running\"")
        })
        .await;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "pve2mqtt/pve/qemu/100/set",
            r#"{"action":"stop","id":"r1"}"#.into(),
            "busy",
        ),
        (
            "pve2mqtt/pve/qemu/999/set",
            r#"{"action":"start","id":"r2"}"#.into(),
            "unknown guest",
        ),
        (
            "pve2mqtt/pve/lxc/100/set",
            r#"{"action":"start","id":"r3"}"#.into(),
            "unknown guest",
        ),
        (
            "pve2mqtt/pve/lxc/101/set",
            r#"{"action":"reset","id":"r4"}"#.into(),
            "not available for lxc",
        ),
        (
            "pve2mqtt/pve/lxc/101/set",
            r#"{"action":"start","id":"r5"}"#.into(),
            "not in [commands] allow",
        ),
        (
            "pve2mqtt/pve/qemu/100/set",
            r#"{"action":"fly","id":"r6"}"#.into(),
            "unknown action",
        ),
        (
            "pve2mqtt/pve/qemu/100/set",
            r#"{"action":"shutdown","timeout":"soon","id":"r7"}"#.into(),
            "whole number",
        ),
        (
            "pve2mqtt/pve/qemu/100/set",
            format!(
                r#"{{"action":"start","id":"r8","pad":"{}"}}"#,
                "x".repeat(5000)
            ),
            "too large",
        ),
    ];
    for (topic, payload, reason) in &cases {
        w.probe.publish(topic, payload, false).await;
        let task_topic = topic.replace("/set", "/task");
        let id = if payload.len() > 4096 {
            None
        } else {
            serde_json::from_str::<Value>(payload)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_string))
        };
        w.probe
            .wait_for(&format!("rejection '{reason}'"), 10 * SECS, |m| {
                m.topic == task_topic
                    && serde_json::from_slice::<Value>(&m.payload)
                        .map(|v| {
                            v["state"] == "rejected"
                                && v["error"].as_str().unwrap_or("").contains(reason)
                                && id.as_ref().is_none_or(|id| v["id"] == id.as_str())
                        })
                        .unwrap_or(false)
            })
            .await;
    }
    let posts = posts(&w.sim, since).await;
    assert_eq!(
        posts.len(),
        1,
        "only the hanging reboot was posted: {posts:?}"
    );
    assert!(posts[0]["path"]
        .as_str()
        .unwrap()
        .ends_with("/status/reboot"));
    w.bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_rejects_everything() {
    let w = world("[commands]\nread_only = true\n").await;
    let (result, posts) = command(&w, "qemu", 100, json!({"action": "shutdown", "id": "ro"})).await;
    assert_eq!(result["state"], "rejected");
    assert!(result["error"].as_str().unwrap().contains("read-only"));
    assert!(posts.is_empty());
    w.bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_command_published_before_the_bridge_starts_is_never_executed() {
    let stage = World::builder().prepare().await;
    // Given a retained "stop" waiting on the broker
    stage
        .probe
        .publish(
            "pve2mqtt/pve/qemu/100/set",
            r#"{"action":"stop","id":"old"}"#,
            true,
        )
        .await;
    let since = last_seq(&stage.sim).await;
    // When the bridge starts
    let w = stage.start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    // Then it answers `rejected` and sends nothing to Proxmox
    let result = wait_final(probe, "pve2mqtt/pve/qemu/100/task", "old").await;
    assert_eq!(result["state"], "rejected");
    assert!(result["error"].as_str().unwrap().contains("retain"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(posts(sim, since).await.is_empty());
    let vm = probe
        .wait_topic("pve2mqtt/pve/qemu/100", 10 * SECS, |m| {
            !m.payload.is_empty()
        })
        .await;
    assert_eq!(vm.json()["status"], "running");
    // and the retained command is gone from the broker
    let late = Probe::connect(w.broker.port, &["pve2mqtt/pve/qemu/100/set"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        late.messages().iter().all(|m| m.payload.is_empty()),
        "{:?}",
        late.messages()
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_requests_answer_with_the_transaction_and_group_backups_per_node() {
    let w = World::builder().sim(sim_generated(2, 6)).start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    let resources = pve_get(sim, "/cluster/resources").await;
    let guests: Vec<(u64, String, String)> = resources
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "qemu" || r["type"] == "lxc")
        .map(|r| {
            (
                r["vmid"].as_u64().unwrap(),
                r["node"].as_str().unwrap().to_string(),
                r["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let cluster = "simcluster";
    for (vmid, _, kind) in &guests {
        probe
            .wait_topic(
                &format!("pve2mqtt/{cluster}/{kind}/{vmid}"),
                20 * SECS,
                |m| !m.payload.is_empty(),
            )
            .await;
    }
    // refresh
    probe
        .publish(
            "pve2mqtt/bridge/request/refresh",
            r#"{"transaction":"t-1"}"#,
            false,
        )
        .await;
    let r = probe
        .wait_for("refresh response", 10 * SECS, |m| {
            m.topic == "pve2mqtt/bridge/response/refresh"
        })
        .await
        .json();
    assert_eq!(r["status"], "ok");
    assert_eq!(r["transaction"], "t-1");
    // backup of one guest per node, one vzdump per node
    let on_pve1 = guests.iter().find(|g| g.1 == "pve1").unwrap();
    let on_pve2 = guests.iter().find(|g| g.1 == "pve2").unwrap();
    let since = last_seq(sim).await;
    probe
        .publish(
            "pve2mqtt/bridge/request/backup",
            &json!({"transaction": 7, "vmids": [on_pve1.0, on_pve2.0], "storage": "nfs-backup"})
                .to_string(),
            false,
        )
        .await;
    for _ in 0..2 {
        probe
            .wait_for("backup responses", 30 * SECS, |m| {
                m.topic == "pve2mqtt/bridge/response/backup"
            })
            .await;
    }
    let responses: Vec<Value> = probe
        .messages()
        .iter()
        .filter(|m| m.topic == "pve2mqtt/bridge/response/backup")
        .map(|m| m.json())
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let responses = if responses.len() < 2 {
        probe
            .messages()
            .iter()
            .filter(|m| m.topic == "pve2mqtt/bridge/response/backup")
            .map(|m| m.json())
            .collect()
    } else {
        responses
    };
    assert_eq!(responses.len(), 2, "{responses:?}");
    for r in &responses {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["transaction"], 7);
    }
    let vzdumps: Vec<Value> = posts(sim, since).await;
    assert_eq!(vzdumps.len(), 2, "{vzdumps:?}");
    let mut paths: Vec<String> = vzdumps
        .iter()
        .map(|p| p["path"].as_str().unwrap().to_string())
        .collect();
    paths.sort();
    assert_eq!(paths, vec!["/nodes/pve1/vzdump", "/nodes/pve2/vzdump"]);
    for p in &vzdumps {
        assert_eq!(p["form"]["storage"], "nfs-backup");
    }
    // command through the request API
    probe
        .publish(
            "pve2mqtt/bridge/request/command",
            &json!({"transaction": "c-9", "vmid": on_pve1.0, "action": "reset"}).to_string(),
            false,
        )
        .await;
    let r = probe
        .wait_for("command response", 10 * SECS, |m| {
            m.topic == "pve2mqtt/bridge/response/command"
        })
        .await
        .json();
    assert_eq!(r["transaction"], "c-9");
    if on_pve1.2 == "qemu" {
        assert_eq!(r["status"], "ok", "{r}");
    } else {
        assert_eq!(r["status"], "error", "reset is not a container action: {r}");
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vzdump_answering_ok_for_a_guest_that_moved_is_reported_not_hung() {
    // A long poll interval: the bridge still thinks the guest is on its old node.
    let w = World::builder()
        .sim(sim_generated(2, 4))
        .replace("interval = \"1s\"", "interval = \"300s\"")
        .replace("slow_interval = \"2s\"", "slow_interval = \"300s\"")
        .start()
        .await;
    let (sim, probe) = (&w.sim, &w.probe);
    let resources = pve_get(sim, "/cluster/resources").await;
    let guest = resources
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "qemu" && r["node"] == "pve1")
        .unwrap()
        .clone();
    let vmid = guest["vmid"].as_u64().unwrap();
    let topic = format!("pve2mqtt/simcluster/qemu/{vmid}");
    probe.wait_state(&topic).await;
    sim_send(
        sim,
        "POST",
        &format!("/_sim/guests/{vmid}/migrate"),
        json!({"target": "pve2"}),
    )
    .await;
    probe
        .publish(
            &format!("{topic}/set"),
            r#"{"action":"backup","id":"mv"}"#,
            false,
        )
        .await;
    let result = wait_final(probe, &format!("{topic}/task"), "mv").await;
    assert_eq!(result["state"], "failed", "{result}");
    assert!(result["error"].as_str().unwrap().contains("OK"), "{result}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_commands_is_rate_limited_and_never_floods_proxmox() {
    let w = world("").await;
    let since = last_seq(&w.sim).await;
    let started = std::time::Instant::now();
    // 30 commands for one guest at once: the first is accepted, the others find it busy
    // until the per-guest burst (10) is used up, then they are rate limited.
    for i in 0..30 {
        w.probe
            .publish(
                "pve2mqtt/pve/lxc/101/set",
                &format!(r#"{{"action":"reboot","id":"flood-{i}"}}"#),
                false,
            )
            .await;
    }
    let first = wait_final(&w.probe, "pve2mqtt/pve/lxc/101/task", "flood-0").await;
    assert_eq!(first["state"], "ok", "{first}");
    w.probe
        .wait_for("a rate-limited result", 20 * SECS, |m| {
            m.topic == "pve2mqtt/pve/lxc/101/task" && m.text().contains("rate limited")
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let posts = posts(&w.sim, since).await;
    assert_eq!(posts.len(), 1, "one reboot reached Proxmox: {posts:?}");
    // No command got two final answers; the rate-limited ones share one result per
    // 10 s window instead of one each.
    let mut limited = 0;
    for i in 0..30 {
        let id = format!("flood-{i}");
        let finals: Vec<Value> = task_states(&w.probe, "pve2mqtt/pve/lxc/101/task", &id)
            .into_iter()
            .filter(|v| matches!(v["state"].as_str(), Some("ok" | "failed" | "rejected")))
            .collect();
        assert!(finals.len() <= 1, "{id} got {finals:?}");
        limited += finals
            .iter()
            .filter(|v| v["error"].as_str().unwrap_or("").contains("rate limited"))
            .count() as u64;
    }
    let windows = 1 + started.elapsed().as_secs() / 10;
    assert!(
        (1..=windows).contains(&limited),
        "{limited} rate-limited results in {windows} window(s)"
    );
    // The guest's retained report is still its real command's.
    let late = Probe::connect(w.broker.port, &["pve2mqtt/pve/lxc/101/task"]).await;
    let kept = late
        .wait_for("the retained report", 10 * SECS, |m| m.retain)
        .await
        .json();
    assert_eq!(
        (&kept["id"], &kept["state"]),
        (&json!("flood-0"), &json!("ok"))
    );
    w.bridge.stop().await.unwrap();
}

/// Ids from MQTT are range-checked, never truncated: 4294967396 is 100 + 2^32, and a
/// cast to `u32` would make it VM 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_or_malformed_vmids_are_rejected_and_never_hit_another_guest() {
    let w = world("").await;
    let since = last_seq(&w.sim).await;
    // `…/set` topics whose vmid is out of range or not canonical act on no guest.
    for topic in [
        "pve2mqtt/pve/qemu/4294967396/set",
        "pve2mqtt/pve/qemu/0100/set",
        "pve2mqtt/pve/qemu/-100/set",
    ] {
        w.probe.publish(topic, "stop", false).await;
    }
    // In u32 but outside Proxmox's range: rejected with the reason.
    w.probe
        .publish(
            "pve2mqtt/pve/qemu/99/set",
            r#"{"action":"stop","id":"low"}"#,
            false,
        )
        .await;
    let low = wait_final(&w.probe, "pve2mqtt/pve/qemu/99/task", "low").await;
    assert_eq!(low["state"], "rejected", "{low}");
    assert!(
        low["error"].as_str().unwrap().contains("vmid must be"),
        "{low}"
    );
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "command",
            json!({"vmid": 4294967396u64, "action": "stop"}),
            "vmid",
        ),
        (
            "command",
            json!({"vmid": "4294967396", "action": "stop"}),
            "vmid",
        ),
        ("command", json!({"vmid": -100, "action": "stop"}), "vmid"),
        ("command", json!({"vmid": 100.5, "action": "stop"}), "vmid"),
        (
            "command",
            json!({"vmid": "hundred", "action": "stop"}),
            "vmid",
        ),
        ("command", json!({"vmid": 99, "action": "stop"}), "vmid"),
        (
            "command",
            json!({"vmid": 1000000000, "action": "stop"}),
            "vmid",
        ),
        ("backup", json!({"vmids": [4294967396u64]}), "vmid"),
        ("backup", json!({"vmids": [101, -1]}), "vmid"),
        ("backup", json!({"vmids": ["x"]}), "vmid"),
    ];
    for (i, (name, body, reason)) in cases.iter().enumerate() {
        let transaction = format!("bad-{i}");
        let mut body = body.clone();
        body["transaction"] = json!(transaction);
        w.probe
            .publish(
                &format!("pve2mqtt/bridge/request/{name}"),
                &body.to_string(),
                false,
            )
            .await;
        let r = w
            .probe
            .wait_for(&format!("response to {body}"), 10 * SECS, |m| {
                m.topic == format!("pve2mqtt/bridge/response/{name}")
                    && m.json()["transaction"] == transaction.as_str()
            })
            .await
            .json();
        assert_eq!(r["status"], "error", "{body}: {r}");
        assert!(
            r["error"].as_str().unwrap_or("").contains(reason),
            "{body}: {r}"
        );
    }
    let posts = posts(&w.sim, since).await;
    assert!(posts.is_empty(), "no guest was touched: {posts:?}");
    assert!(
        task_states(&w.probe, "pve2mqtt/pve/qemu/100/task", "").is_empty()
            && !w
                .probe
                .messages()
                .iter()
                .any(|m| m.topic == "pve2mqtt/pve/qemu/100/task"),
        "nothing was reported as VM 100"
    );
    w.bridge.stop().await.unwrap();
}
