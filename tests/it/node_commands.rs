//! Node commands (issue 11) on `{base}/{c}/node/{node}/set`: the POSTs the simulator
//! sees, the retained report on `…/node/{node}/task`, the `[commands] node_power` switch,
//! retained input, one command at a time per node, the safety rules and junk payloads.

use std::time::Duration;

use serde_json::{json, Value};

use crate::commands::{last_seq, posts, task_states, wait_final};
use crate::support::*;

const ON: &str = "[commands]\nnode_power = true\n";

/// The simulator (`nodes`: a generated cluster `simcluster` of that many nodes, else
/// the seed world: node `pve`, guests 100 and 101) and a bridge with `extra` config;
/// waits for the first poll.
async fn world(nodes: Option<usize>, extra: &str) -> World {
    let (c, node) = cluster_node(nodes);
    World::builder()
        .sim(pve_sim::SimOptions {
            nodes,
            guests: nodes.map(|n| n * 2),
            ..sim_options()
        })
        .config(extra)
        .until(&format!("pve2mqtt/{c}/node/{node}"))
        .start()
        .await
}

fn cluster_node(nodes: Option<usize>) -> (&'static str, &'static str) {
    match nodes {
        Some(_) => ("simcluster", "pve1"),
        None => ("pve", "pve"),
    }
}

/// Waits for a report on `topic` whose error contains `needle`.
async fn wait_error(probe: &Probe, topic: &str, needle: &str) -> Msg {
    probe
        .wait_for(&format!("'{needle}' on {topic}"), 20 * SECS, |m| {
            m.topic == topic
                && serde_json::from_slice::<Value>(&m.payload).is_ok_and(|v| {
                    v["state"] == "rejected"
                        && v["error"].as_str().is_some_and(|e| e.contains(needle))
                })
        })
        .await
}

async fn set_node_online(sim: &pve_sim::SimHandle, node: &str, online: bool) {
    sim_send(
        sim,
        "POST",
        &format!("/_sim/nodes/{node}"),
        json!({ "online": online }),
    )
    .await;
}

async fn wait_node_status(probe: &Probe, c: &str, node: &str, status: &str) {
    probe
        .wait_for(&format!("{node} {status}"), 20 * SECS, |m| {
            m.topic == format!("pve2mqtt/{c}/node/{node}")
                && serde_json::from_slice::<Value>(&m.payload).is_ok_and(|v| v["status"] == status)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopall_reaches_the_simulator_as_the_right_post_and_ends_ok_on_the_node_task_topic() {
    let w = world(None, ON).await;
    let since = last_seq(&w.sim).await;
    let topic = "pve2mqtt/pve/node/pve/task";
    w.probe
        .publish(
            "pve2mqtt/pve/node/pve/set",
            r#"{"action":"stopall","vms":[100],"timeout":30,"id":"n1"}"#,
            false,
        )
        .await;
    let result = wait_final(&w.probe, topic, "n1").await;
    assert_eq!(result["state"], "ok", "{result}");
    assert_eq!(result["action"], "stopall");
    assert_eq!(result["exitstatus"], "OK");
    let upid = result["upid"].as_str().expect("a UPID");
    assert!(
        upid.starts_with("UPID:pve:") && upid.ends_with(":stopall::root@pam!pve2mqtt:"),
        "{upid}"
    );
    let states: Vec<String> = task_states(&w.probe, topic, "n1")
        .iter()
        .map(|v| v["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["accepted", "running", "ok"]);
    let posts = posts(&w.sim, since).await;
    let bulk: Vec<&Value> = posts
        .iter()
        .filter(|p| p["path"] == "/nodes/pve/stopall")
        .collect();
    assert_eq!(bulk.len(), 1, "{posts:?}");
    assert_eq!(bulk[0]["form"], json!({"vms": "100", "timeout": "30"}));
    // Only the guest named was stopped, by its own sub-task.
    w.probe
        .wait_for("100 stopped", 20 * SECS, |m| {
            m.topic == "pve2mqtt/pve/qemu/100" && m.json()["status"] == "stopped"
        })
        .await;
    let tasks = sim_get(&w.sim, "/_sim/tasks").await.to_string();
    assert!(tasks.contains(":qmshutdown:100:"), "{tasks}");
    assert!(!tasks.contains(":vzshutdown:101:"), "{tasks}");
    // The report stays on the broker for whoever looks later.
    let kept = retained_on(w.broker.port, topic).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].json()["state"], "ok");
    w.bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_power_is_refused_when_commands_node_power_is_off() {
    let w = world(None, "").await;
    let since = last_seq(&w.sim).await;
    w.probe
        .publish(
            "pve2mqtt/pve/node/pve/set",
            r#"{"action":"stopall","id":"off"}"#,
            false,
        )
        .await;
    let result = wait_final(&w.probe, "pve2mqtt/pve/node/pve/task", "off").await;
    assert_eq!(result["state"], "rejected");
    assert!(
        result["error"]
            .as_str()
            .unwrap()
            .contains("[commands] node_power = false"),
        "{result}"
    );
    let kept = retained_on(w.broker.port, "pve2mqtt/pve/node/pve/task").await;
    assert_eq!(kept.len(), 1, "the refusal is the node's report");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        posts(&w.sim, since).await.is_empty(),
        "nothing reached Proxmox"
    );
    // No buttons either: discovery removes them.
    let discovery = w
        .probe
        .wait_topic(
            "homeassistant/device/pve2mqtt_pve_node_pve/config",
            20 * SECS,
            |m| !m.payload.is_empty(),
        )
        .await
        .json();
    assert_eq!(discovery["cmps"]["power_stopall"], json!({"p": "button"}));
    w.bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_node_command_is_never_executed_and_is_cleared() {
    let stage = World::builder().config(ON).prepare().await;
    let probe = &stage.probe;
    // Left on the broker before the bridge starts.
    probe
        .publish(
            "pve2mqtt/pve/node/pve/set",
            r#"{"action":"stopall","id":"old"}"#,
            true,
        )
        .await;
    probe
        .wait_for("stored", 10 * SECS, |m| {
            m.topic == "pve2mqtt/pve/node/pve/set"
        })
        .await;
    let since = last_seq(&stage.sim).await;
    let w = stage.start().await;
    let (sim, probe, broker) = (&w.sim, &w.probe, &w.broker);
    let notice = wait_error(probe, "pve2mqtt/pve/node/pve/task", "retained").await;
    assert!(!notice.retain);
    assert_eq!(notice.json()["id"], "old");
    probe
        .wait_for("the set topic cleared", 20 * SECS, |m| {
            m.topic == "pve2mqtt/pve/node/pve/set" && m.payload.is_empty()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = posts(sim, since).await;
    assert!(sent.is_empty(), "{sent:?}");
    assert!(retained_on(broker.port, "pve2mqtt/pve/node/pve/set")
        .await
        .is_empty());
    assert!(
        retained_on(broker.port, "pve2mqtt/pve/node/pve/task")
            .await
            .is_empty(),
        "a replay does not become the node's report"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_command_while_one_runs_is_refused_as_busy() {
    let w = world(None, ON).await;
    // The guest's shutdown hangs, so the stopall does too.
    sim_send(
        &w.sim,
        "POST",
        "/_sim/tasks/next",
        json!({"vmid": 100, "action": "shutdown", "outcome": "hang"}),
    )
    .await;
    let topic = "pve2mqtt/pve/node/pve/task";
    w.probe
        .publish(
            "pve2mqtt/pve/node/pve/set",
            r#"{"action":"stopall","id":"first"}"#,
            false,
        )
        .await;
    w.probe
        .wait_for("first running", 20 * SECS, |m| {
            m.topic == topic && m.json()["id"] == "first" && m.json()["state"] == "running"
        })
        .await;
    let since = last_seq(&w.sim).await;
    w.probe
        .publish(
            "pve2mqtt/pve/node/pve/set",
            r#"{"action":"startall","id":"second"}"#,
            false,
        )
        .await;
    let second = wait_final(&w.probe, topic, "second").await;
    assert_eq!(second["state"], "rejected");
    assert!(
        second["error"].as_str().unwrap().contains("busy"),
        "{second}"
    );
    let sent = posts(&w.sim, since).await;
    assert!(
        sent.iter().all(|p| p["path"] != "/nodes/pve/startall"),
        "{sent:?}"
    );
    // The retained report is still the running one.
    let kept = retained_on(w.broker.port, topic).await;
    assert_eq!(kept[0].json()["id"], "first", "{:?}", kept[0].text());
    w.bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_the_last_quorate_node_is_refused_without_force_and_followed_with_it() {
    let w = world(Some(3), ON).await;
    set_node_online(&w.sim, "pve2", false).await;
    wait_node_status(&w.probe, "simcluster", "pve2", "offline").await;
    let since = last_seq(&w.sim).await;
    let topic = "pve2mqtt/simcluster/node/pve3/task";
    w.probe
        .publish(
            "pve2mqtt/simcluster/node/pve3/set",
            r#"{"action":"shutdown","id":"s1"}"#,
            false,
        )
        .await;
    let refused = wait_final(&w.probe, topic, "s1").await;
    assert_eq!(refused["state"], "rejected");
    let reason = refused["error"].as_str().unwrap();
    assert!(
        reason.contains("lose quorum") && reason.contains("force"),
        "{reason}"
    );
    // The node the bridge talks to (loopback URL: the `local` node) is its own.
    w.probe
        .publish(
            "pve2mqtt/simcluster/node/pve1/set",
            r#"{"action":"reboot","id":"own"}"#,
            false,
        )
        .await;
    let own = wait_final(&w.probe, "pve2mqtt/simcluster/node/pve1/task", "own").await;
    assert!(
        own["error"]
            .as_str()
            .unwrap()
            .contains("the bridge runs on node pve1"),
        "{own}"
    );
    assert!(
        posts(&w.sim, since).await.is_empty(),
        "nothing reached Proxmox"
    );

    // With force it goes through, and the report ends when the node is seen offline.
    let since = last_seq(&w.sim).await;
    w.probe
        .publish(
            "pve2mqtt/simcluster/node/pve3/set",
            r#"{"action":"shutdown","force":true,"id":"s2"}"#,
            false,
        )
        .await;
    let done = wait_final(&w.probe, topic, "s2").await;
    assert_eq!(done["state"], "ok", "{done}");
    assert!(done["upid"].is_null(), "no task for a node shutdown");
    let sent = posts(&w.sim, since).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["path"], "/nodes/pve3/status");
    assert_eq!(sent[0]["form"], json!({"command": "shutdown"}));
    wait_node_status(&w.probe, "simcluster", "pve3", "offline").await;

    // Wake-on-LAN brings it back, sent through an online node.
    let since = last_seq(&w.sim).await;
    w.probe
        .publish(
            "pve2mqtt/simcluster/node/pve3/set",
            r#"{"action":"wakeonlan","id":"w1"}"#,
            false,
        )
        .await;
    let woke = wait_final(&w.probe, topic, "w1").await;
    assert_eq!(woke["state"], "ok", "{woke}");
    let sent = posts(&w.sim, since).await;
    assert_eq!(sent[0]["path"], "/nodes/pve3/wakeonlan", "{sent:?}");
    wait_node_status(&w.probe, "simcluster", "pve3", "online").await;
    w.bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_node_payloads_are_rejected_with_a_reason_and_nothing_is_sent() {
    let w = world(None, ON).await;
    let since = last_seq(&w.sim).await;
    let topic = "pve2mqtt/pve/node/pve/task";
    let huge = format!(r#"{{"action":"stopall","pad":"{}"}}"#, "x".repeat(5000));
    let cases: Vec<(String, &str)> = vec![
        (huge, "too large"),
        ("{not json".into(), "not valid JSON"),
        ("explode".into(), "unknown node action"),
        (
            r#"{"action":"stopall","vms":"100,abc"}"#.into(),
            "'vms' must be a list",
        ),
        (
            r#"{"action":"stopall","vms":[7]}"#.into(),
            "'vms' must be a list",
        ),
        (
            r#"{"action":"stopall","vms":[555]}"#.into(),
            "unknown guest 555",
        ),
        (
            r#"{"action":"shutdown","force":"yes"}"#.into(),
            "true or false",
        ),
        (r#"{"action":"stopall","timeout":-5}"#.into(), "0 to 7200"),
        (r#"{"action":"wakeonlan"}"#.into(), "is online"),
    ];
    for (payload, reason) in &cases {
        w.probe
            .publish("pve2mqtt/pve/node/pve/set", payload, false)
            .await;
        wait_error(&w.probe, topic, reason).await;
    }
    w.probe
        .publish("pve2mqtt/pve/node/nope/set", "stopall", false)
        .await;
    let unknown = wait_error(
        &w.probe,
        "pve2mqtt/pve/node/nope/task",
        "unknown node 'nope'",
    )
    .await;
    assert!(
        !unknown.retain,
        "no report is kept for a node that does not exist"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = posts(&w.sim, since).await;
    assert!(sent.is_empty(), "{sent:?}");
    w.bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reboot_is_followed_until_the_node_is_back() {
    let w = world(Some(3), ON).await;
    let since = last_seq(&w.sim).await;
    let topic = "pve2mqtt/simcluster/node/pve2/task";
    w.probe
        .publish(
            "pve2mqtt/simcluster/node/pve2/set",
            r#"{"action":"reboot","id":"r1"}"#,
            false,
        )
        .await;
    let done = wait_final(&w.probe, topic, "r1").await;
    assert_eq!(done["state"], "ok", "{done}");
    let states: Vec<String> = task_states(&w.probe, topic, "r1")
        .iter()
        .map(|v| v["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["accepted", "running", "ok"]);
    let sent = posts(&w.sim, since).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["path"], "/nodes/pve2/status");
    assert_eq!(sent[0]["form"], json!({"command": "reboot"}));
    wait_node_status(&w.probe, "simcluster", "pve2", "online").await;
    w.bridge.stop().await.unwrap();
}

/// `pve2mqtt check` (the real binary) on the config `extra`, with `token`; its stdout.
async fn check_output(sim: &pve_sim::SimHandle, port: u16, token: &str, extra: &str) -> String {
    let mut cfg = TestConfig::new(sim, port, extra);
    cfg.toml = cfg.toml.replace(pve_sim::DEFAULT_TOKEN, token);
    let path = cfg.write();
    let output = tokio::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .await
        .expect("run check");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_whether_the_token_may_do_node_power() {
    let broker = Mosquitto::start();
    let sim = start_sim(sim_options()).await;
    let full = pve_sim::DEFAULT_TOKEN;
    let out = check_output(&sim, broker.port, full, ON).await;
    assert!(out.contains("  node power: yes\n"), "{out}");
    let out = check_output(&sim, broker.port, full, "").await;
    assert!(
        out.contains("node power: off in the config ([commands] node_power = false)"),
        "{out}"
    );
    let token = "ops@pve!np=0b1c2d3e-0000-4000-8000-00000000000a";
    sim_send(
        &sim,
        "POST",
        "/_sim/tokens",
        json!({
            "token": token,
            "privileges": {"/": ["Sys.Audit", "VM.Audit", "Datastore.Audit", "VM.PowerMgmt"]},
        }),
    )
    .await;
    let out = check_output(&sim, broker.port, token, ON).await;
    assert!(
        out.contains("node power: no — missing Sys.PowerMgmt on /nodes (node reboot/shutdown/wakeonlan), VM.Config.Disk on / (suspendall of every guest)"),
        "{out}"
    );
}

/// A `stopall` the bridge started is still running when the bridge stops: the retained
/// report stays `running` (not `failed`), and the next run follows the same task to its
/// end and reports it once, without sending it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_command_running_across_a_bridge_restart_is_followed_to_its_end() {
    let w = world(None, ON).await;
    // Each guest's shutdown takes 3 s: the stopall outlives the first bridge.
    sim_send(
        &w.sim,
        "POST",
        "/_sim/config",
        json!({"task_duration_ms": 3000}),
    )
    .await;
    let since = last_seq(&w.sim).await;
    let topic = "pve2mqtt/pve/node/pve/task";
    w.probe
        .publish(
            "pve2mqtt/pve/node/pve/set",
            r#"{"action":"stopall","id":"across"}"#,
            false,
        )
        .await;
    let running = w
        .probe
        .wait_for("stopall running", 20 * SECS, |m| {
            m.topic == topic && m.json()["id"] == "across" && m.json()["state"] == "running"
        })
        .await
        .json();
    let upid = running["upid"].as_str().expect("a UPID").to_string();
    w.bridge.stop().await.unwrap();
    let kept = retained_on(w.broker.port, topic).await;
    assert_eq!(kept[0].json()["state"], "running", "{:?}", kept[0].text());

    let bridge = Bridge::start(w.cfg.config());
    let done = wait_final(&w.probe, topic, "across").await;
    assert_eq!(done["state"], "ok", "{done}");
    assert_eq!(done["upid"], upid.as_str());
    assert_eq!(done["exitstatus"], "OK");
    let finals: Vec<Value> = task_states(&w.probe, topic, "across")
        .into_iter()
        .filter(|v| matches!(v["state"].as_str(), Some("ok" | "failed" | "rejected")))
        .collect();
    assert_eq!(finals.len(), 1, "one final result: {finals:?}");
    let bulk: Vec<Value> = posts(&w.sim, since)
        .await
        .into_iter()
        .filter(|p| p["path"] == "/nodes/pve/stopall")
        .collect();
    assert_eq!(bulk.len(), 1, "sent once: {bulk:?}");
    let status = format!("/nodes/pve/tasks/{upid}/status");
    let all = sim_get(&w.sim, &format!("/_sim/requests?since={since}")).await;
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|r| r["path"] == status.as_str()),
        "the new run read the task's status"
    );
    bridge.stop().await.unwrap();
}

/// Which node the bridge runs on is read from `/cluster/status` by the node command's
/// own task: while that read is slow, a guest command is accepted at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_command_is_accepted_while_a_node_commands_safety_read_is_slow() {
    let w = world(Some(3), ON).await;
    let world_json = sim_get(&w.sim, "/_sim/world").await;
    let guest = world_json["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["template"] != true && g["status"] == "running")
        .expect("a running guest")
        .clone();
    let guest_topic = format!(
        "pve2mqtt/simcluster/{}/{}",
        guest["type"].as_str().unwrap(),
        guest["vmid"]
    );
    sim_send(
        &w.sim,
        "POST",
        "/_sim/faults",
        json!({"path_prefix": "/cluster/status", "kind": "slow", "delay_ms": 4000}),
    )
    .await;
    let node_topic = "pve2mqtt/simcluster/node/pve2/task";
    w.probe
        .publish(
            "pve2mqtt/simcluster/node/pve2/set",
            r#"{"action":"shutdown","id":"slow-safety"}"#,
            false,
        )
        .await;
    w.probe
        .publish(
            &format!("{guest_topic}/set"),
            r#"{"action":"reboot","id":"meanwhile"}"#,
            false,
        )
        .await;
    w.probe
        .wait_for("the guest command accepted", 20 * SECS, |m| {
            m.topic == format!("{guest_topic}/task") && m.json()["id"] == "meanwhile"
        })
        .await;
    assert!(
        task_states(&w.probe, node_topic, "slow-safety").is_empty(),
        "the guest command was not held up by the node command's safety read"
    );
    // The node command goes on once the read answers: pve1 is the bridge's node, and
    // two of three stay online.
    w.probe
        .wait_for("the shutdown sent", 30 * SECS, |m| {
            m.topic == node_topic
                && m.json()["id"] == "slow-safety"
                && m.json()["state"] == "running"
        })
        .await;
    sim_send(&w.sim, "DELETE", "/_sim/faults", json!({})).await;
    w.bridge.stop().await.unwrap();
}
