//! Exactly one final result per command (issue 9): followers across broker restarts with
//! persistence, bridge restarts, partial backups, tasks Proxmox no longer knows, and a
//! SIGTERM in the middle of a POST.

use std::time::Duration;

use serde_json::{json, Value};

use crate::commands::task_states;
use crate::support::*;

const TASK_100: &str = "pve2mqtt/pve/qemu/100/task";
const STATES: &[&str] = &["pve2mqtt/#"];

fn is_final(state: &Value) -> bool {
    matches!(state.as_str(), Some("ok" | "failed" | "rejected"))
}

/// Panics unless `states` has at most one final report and nothing after it.
fn assert_final_is_final(states: &[Value]) {
    let shown: Vec<&str> = states
        .iter()
        .map(|v| v["state"].as_str().unwrap_or("?"))
        .collect();
    let finals = states.iter().filter(|v| is_final(&v["state"])).count();
    assert!(finals <= 1, "more than one final result: {shown:?}");
    if let Some(first) = states.iter().position(|v| is_final(&v["state"])) {
        assert_eq!(
            first,
            states.len() - 1,
            "a report after the final one: {shown:?}"
        );
    }
}

async fn set_task_duration(sim: &pve_sim::SimHandle, ms: u64) {
    sim_send(sim, "POST", "/_sim/config", json!({"task_duration_ms": ms})).await;
}

/// Waits until the simulator shows no running task of `kind`.
async fn wait_tasks_done(sim: &pve_sim::SimHandle, kind: &str) {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let tasks = sim_get(sim, "/_sim/tasks").await;
            let running = tasks
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["type"] == kind && t["running"] == true);
            if !running {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the simulator's tasks ended");
}

/// Issue 9: the broker (persistence on) restarts while a backup runs, and the backup ends
/// during the outage. At reconnect the broker hands back its retained `running` copy; it
/// is this run's own report of a task it has already seen end, never a task to resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_during_a_backup_gives_one_final_result_and_nothing_after_it() {
    let mut broker = Mosquitto::builder()
        .persistence(true)
        .spawn()
        .expect("broker");
    let sim = start_sim(sim_options()).await;
    set_task_duration(&sim, 1500).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let cfg = TestConfig::new(
        &sim,
        broker.port,
        &format!("\n[http]\nlisten = \"{listen}\"\n"),
    );
    let bridge = Bridge::start(cfg.config());
    {
        let probe = Probe::connect(broker.port, &["pve2mqtt/#"]).await;
        probe.wait_state("pve2mqtt/pve/qemu/100").await;
        probe
            .publish(
                "pve2mqtt/pve/qemu/100/set",
                r#"{"action":"backup","id":"b1"}"#,
                false,
            )
            .await;
        probe
            .wait_topic(TASK_100, 10 * SECS, |m| m.text().contains("\"running\""))
            .await;
    }
    // The broker goes away (saving `running`), and the backup ends meanwhile
    broker.stop();
    wait_tasks_done(&sim, "vzdump").await;
    // ... and the bridge has seen it end (its follower reads the status every 250 ms;
    // `/metrics` counts the result as it is stored): a reconnect before that would
    // rightly republish the last report it had, `running`, before the result.
    let result = r#"pve2mqtt_commands_total{action="backup",result="ok"}"#;
    wait_until(
        &format!("http://{listen}"),
        "/metrics",
        result,
        |_, body| sample(body, result) == Some(1.0),
    )
    .await;
    broker.restart();

    let probe = Probe::connect(broker.port, &[TASK_100]).await;
    probe
        .wait_for("the backup's result", 30 * SECS, |m| {
            m.topic == TASK_100 && m.text().contains("\"ok\"")
        })
        .await;
    // A resumed follower would poll at 250 ms and report within a second or two.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let live: Vec<Value> = probe
        .messages()
        .into_iter()
        .filter(|m| m.topic == TASK_100 && !m.retain)
        .map(|m| m.json())
        .collect();
    let states: Vec<&str> = live.iter().map(|v| v["state"].as_str().unwrap()).collect();
    assert!(
        !states.contains(&"running") && !states.contains(&"accepted"),
        "nothing but the result after the reconnect: {states:?}"
    );
    assert!(
        states.iter().filter(|s| **s == "ok").count() <= 1,
        "{states:?}"
    );
    let last = probe.latest(TASK_100).unwrap().json();
    assert_eq!(last["state"], "ok");
    bridge.stop().await.unwrap();
}

/// Issue 9: one guest of a node backup fails (`job errors`); the other's log says
/// `Finished Backup of VM 100`, so it is `ok`, and the response says which is which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_node_backup_reports_each_guest_from_its_log() {
    let w = World::builder().probe(STATES).start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    probe.wait_state("pve2mqtt/pve/lxc/101").await;
    sim_send(
        sim,
        "POST",
        "/_sim/tasks/next",
        json!({"vmid": 101, "action": "backup", "outcome": "fail", "error": "no space left on device"}),
    )
    .await;
    probe
        .publish(
            "pve2mqtt/bridge/request/backup",
            r#"{"vmids":[100,101],"id":"nb","transaction":"t"}"#,
            false,
        )
        .await;
    let response = probe
        .wait_topic("pve2mqtt/bridge/response/backup", 60 * SECS, |_| true)
        .await
        .json();
    let t100 = probe.latest(TASK_100).unwrap().json();
    let t101 = probe.latest("pve2mqtt/pve/lxc/101/task").unwrap().json();
    assert_eq!(t100["state"], "ok", "{t100}");
    assert_eq!(t100["progress"], 100);
    assert!(t100["error"].is_null(), "{t100}");
    assert_eq!(t101["state"], "failed", "{t101}");
    assert_eq!(t101["error"], "no space left on device");
    assert_eq!(t101["exitstatus"], "job errors");

    assert_eq!(response["status"], "error", "{response}");
    assert_eq!(response["transaction"], "t");
    let error = response["error"].as_str().unwrap();
    assert!(error.contains("101: no space left on device"), "{error}");
    assert!(!error.contains("100"), "VM 100 did not fail: {error}");
    let results = response["data"]["results"].as_array().expect("per guest");
    let state_of = |vmid: u64| {
        results
            .iter()
            .find(|r| r["vmid"] == vmid)
            .map(|r| r["task"]["state"].clone())
    };
    assert_eq!(state_of(100), Some(json!("ok")), "{response}");
    assert_eq!(state_of(101), Some(json!("failed")), "{response}");
    for topic in [TASK_100, "pve2mqtt/pve/lxc/101/task"] {
        assert_final_is_final(&task_states(probe, topic, "nb"));
    }
    w.stop().await;
}

/// Issue 9 item 2: a retained `running` report naming a task Proxmox does not know (forged,
/// or long expired from the node's task index) ends `failed` with Proxmox's reason within a
/// minute, and the guest takes commands again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_running_report_with_an_unknown_upid_ends_failed_and_frees_the_guest() {
    let stage = World::builder().probe(STATES).prepare().await;
    let forged = json!({
        "id": "forged", "action": "start", "state": "running",
        "upid": "UPID:pve:000DEAD0:00BEEF00:6803E819:qmstart:100:root@pam!bridge:",
        "exitstatus": null, "error": null, "progress": null,
        "requested": pve2mqtt::command::report::unix_now() - 10, "finished": null,
    });
    stage
        .probe
        .publish(TASK_100, &forged.to_string(), true)
        .await;
    let w = stage.start().await;
    let probe = &w.probe;
    let ended = probe
        .wait_for("the forged task's end", 60 * SECS, |m| {
            m.topic == TASK_100 && m.text().contains("\"failed\"")
        })
        .await
        .json();
    assert_eq!(ended["id"], "forged");
    let error = ended["error"].as_str().unwrap();
    assert!(error.contains("no such task"), "{error}");
    // The guest is free again
    probe
        .publish(
            "pve2mqtt/pve/qemu/100/set",
            r#"{"action":"reboot","id":"after"}"#,
            false,
        )
        .await;
    probe
        .wait_for("the next command's result", 20 * SECS, |m| {
            m.topic == TASK_100 && m.text().contains("\"after\"") && m.text().contains("\"ok\"")
        })
        .await;
    assert_final_is_final(&task_states(probe, TASK_100, "forged"));
    w.stop().await;
}

/// Issue 9 item 3: a bridge restart in the middle of a node backup of many guests resumes
/// one follower for the one UPID, reporting on every guest, not one follower per guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_a_node_backup_resumes_one_follower_for_all_its_guests() {
    let stage = World::builder()
        .probe(STATES)
        .sim(sim_generated(1, 50))
        .prepare()
        .await;
    set_task_duration(&stage.sim, 150).await;
    let w = stage.start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    probe
        .wait_topic("pve2mqtt/bridge/info", 20 * SECS, |m| {
            m.json()["clusters"][0]["reachable"] == true
        })
        .await;
    let world = sim_get(sim, "/_sim/world").await;
    let mut guests: Vec<(u64, String)> = world["guests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["template"] != true)
        .map(|g| {
            (
                g["vmid"].as_u64().unwrap(),
                g["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    guests.sort();
    assert!(guests.len() >= 40, "{}", guests.len());
    for (vmid, kind) in &guests {
        probe
            .wait_topic(
                &format!("pve2mqtt/simcluster/{kind}/{vmid}"),
                20 * SECS,
                |m| !m.payload.is_empty(),
            )
            .await;
    }
    let vmids: Vec<u64> = guests.iter().map(|g| g.0).collect();
    probe
        .publish(
            "pve2mqtt/bridge/request/backup",
            &json!({"vmids": vmids, "id": "all"}).to_string(),
            false,
        )
        .await;
    let (last_vmid, last_kind) = guests.last().unwrap().clone();
    let last_topic = format!("pve2mqtt/simcluster/{last_kind}/{last_vmid}/task");
    let running = probe
        .wait_topic(&last_topic, 20 * SECS, |m| m.text().contains("\"running\""))
        .await
        .json();
    let upid = running["upid"].as_str().unwrap().to_string();
    w.bridge.stop().await.unwrap();

    // The next run picks the backup up
    let since = last_seq(sim).await;
    let bridge = Bridge::start(w.cfg.config());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let status_path = format!("/nodes/pve1/tasks/{upid}/status");
    let polls = requests_since(sim, since)
        .await
        .iter()
        .filter(|r| r["path"] == status_path.as_str())
        .count();
    // One follower polls 4 times a second: ~16 in 4 s. One per guest would be ~800.
    assert!(polls <= 40, "{polls} status requests in 4 s for one task");
    for (vmid, kind) in &guests {
        let topic = format!("pve2mqtt/simcluster/{kind}/{vmid}/task");
        probe
            .wait_for("every guest's result", 120 * SECS, |m| {
                m.topic == topic && m.text().contains("\"ok\"")
            })
            .await;
        assert_final_is_final(&task_states(probe, &topic, "all"));
    }
    bridge.stop().await.unwrap();
}

/// Issue 9 item 8: a SIGTERM while the POST is in flight. The runner finishes its POST
/// (the answer is slow, the task already runs) and reports `running` with the UPID before
/// the bridge stops; the next run follows that task to its end: one result, `ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_slow_post_still_reports_the_task_it_started() {
    let w = World::builder()
        .probe(STATES)
        .replace("timeout = \"5s\"", "timeout = \"10s\"")
        .start()
        .await;
    let (broker, sim, probe) = (&w.broker, &w.sim, &w.probe);
    probe.wait_state("pve2mqtt/pve/qemu/100").await;
    // Proxmox starts the task at once but answers 7 s later (longer than the 5 s a
    // stopping bridge used to wait for its runners)
    sim_send(
        sim,
        "POST",
        "/_sim/faults",
        json!({"path_prefix": "/nodes/pve/qemu/100/status/reboot", "method": "POST", "kind": "late", "delay_ms": 7000, "count": 1}),
    )
    .await;
    probe
        .publish(
            "pve2mqtt/pve/qemu/100/set",
            r#"{"action":"reboot","id":"slow"}"#,
            false,
        )
        .await;
    probe
        .wait_topic(TASK_100, 10 * SECS, |m| m.text().contains("\"accepted\""))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.bridge.stop().await.unwrap();
    let late = Probe::connect(broker.port, &[TASK_100]).await;
    let retained = late
        .wait_topic(TASK_100, 5 * SECS, |m| m.retain)
        .await
        .json();
    assert_eq!(retained["state"], "running", "{retained}");
    assert!(retained["upid"].is_string(), "{retained}");

    let bridge = Bridge::start(w.cfg.config());
    let done = probe
        .wait_for("the task's result", 30 * SECS, |m| {
            m.topic == TASK_100 && m.text().contains("\"slow\"") && is_final(&m.json()["state"])
        })
        .await
        .json();
    assert_eq!(done["state"], "ok", "{done}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_final_is_final(&task_states(probe, TASK_100, "slow"));
    bridge.stop().await.unwrap();
}

/// Issue 9 item 8, the other end: the bridge dies (SIGKILL) while its POST is in flight,
/// leaving `accepted` without a UPID. The next run looks the task up in the node's task
/// list before concluding that the command never reached Proxmox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_report_without_upid_is_looked_up_in_the_nodes_task_list() {
    let stage = World::builder().probe(STATES).prepare().await;
    let (sim, probe) = (&stage.sim, &stage.probe);
    set_task_duration(sim, 2000).await;
    let path = stage.cfg.write();
    let mut child = spawn_bridge(&path, &[]);
    probe.wait_state("pve2mqtt/pve/qemu/100").await;
    sim_send(
        sim,
        "POST",
        "/_sim/faults",
        json!({"path_prefix": "/nodes/pve/qemu/100/status/reboot", "method": "POST", "kind": "late", "delay_ms": 3000, "count": 1}),
    )
    .await;
    probe
        .publish(
            "pve2mqtt/pve/qemu/100/set",
            r#"{"action":"reboot","id":"killed"}"#,
            false,
        )
        .await;
    probe
        .wait_topic(TASK_100, 10 * SECS, |m| m.text().contains("\"accepted\""))
        .await;
    // The POST reached Proxmox: the task runs
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let tasks = sim_get(sim, "/_sim/tasks").await;
            if tasks
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["type"] == "qmreboot")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the reboot task started");
    child.kill().await.unwrap();
    let _ = child.wait().await;

    let mut child = spawn_bridge(&path, &[]);
    let done = probe
        .wait_for("the task's result", 30 * SECS, |m| {
            m.topic == TASK_100 && m.text().contains("\"killed\"") && is_final(&m.json()["state"])
        })
        .await
        .json();
    assert_eq!(done["state"], "ok", "{done}");
    assert!(
        done["upid"].as_str().unwrap().contains(":qmreboot:100:"),
        "{done}"
    );
    // (The killed POST is not in the request log: its connection closed unanswered.)
    let tasks = sim_get(sim, "/_sim/tasks").await;
    let reboots = tasks
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["type"] == "qmreboot" && t["id"] == "100")
        .count();
    assert_eq!(reboots, 1, "the command ran once");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_final_is_final(&task_states(probe, TASK_100, "killed"));
    child.kill().await.unwrap();
}

/// A POST whose answer comes after the client's timeout: the task started all the same,
/// so the result is the task's, not "did not answer".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_answered_after_the_timeout_reports_the_task_it_started() {
    let w = World::builder().probe(STATES).start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    probe.wait_state("pve2mqtt/pve/qemu/100").await;
    // The test config's timeout is 5 s
    sim_send(
        sim,
        "POST",
        "/_sim/faults",
        json!({"path_prefix": "/nodes/pve/qemu/100/status/reboot", "method": "POST", "kind": "late", "delay_ms": 6000, "count": 1}),
    )
    .await;
    probe
        .publish(
            "pve2mqtt/pve/qemu/100/set",
            r#"{"action":"reboot","id":"timeout"}"#,
            false,
        )
        .await;
    let done = probe
        .wait_for("the result", 30 * SECS, |m| {
            m.topic == TASK_100 && m.text().contains("\"timeout\"") && is_final(&m.json()["state"])
        })
        .await
        .json();
    assert_eq!(done["state"], "ok", "{done}");
    assert!(
        done["upid"].as_str().unwrap().contains(":qmreboot:100:"),
        "{done}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_final_is_final(&task_states(probe, TASK_100, "timeout"));
    w.stop().await;
}
