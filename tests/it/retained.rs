//! Retained input (issue 9: "replays retained requests", "buries real results under
//! `rejected`", items 4, 9 and 13), against a Mosquitto with persistence on, as the Home
//! Assistant add-on runs it: a retained message survives a broker restart there.
//!
//! What must hold: no message that was retained when the bridge (re)subscribed is ever
//! executed; what ran live is cleared from the broker; and a rejection that is not about
//! a real new command for a known, idle guest never replaces the retained `…/task`.

use std::time::Instant;

use serde_json::{json, Value};

use crate::commands::{last_seq, posts, wait_final};
use crate::support::*;

/// A broker with persistence, the seed simulator, a probe, and the config of a bridge
/// that each test starts (and restarts) itself.
async fn world() -> Stage {
    World::builder().persistence(true).prepare().await
}

/// Starts the bridge and waits until it is connected and knows the guests.
async fn start_bridge(w: &Stage) -> Bridge {
    w.probe.clear();
    let bridge = Bridge::start(w.cfg.config());
    wait_live_online(&w.probe).await;
    w.probe
        .wait_for("a poll", 20 * SECS, |m| {
            m.topic == "pve2mqtt/pve/qemu/100" && !m.retain && !m.payload.is_empty()
        })
        .await;
    bridge
}

/// Waits for the bridge's own `online` (published live after its ConnAck and
/// subscriptions), not the broker's retained copy from before.
async fn wait_live_online(probe: &Probe) {
    probe
        .wait_for("the bridge online", 30 * SECS, |m| {
            m.topic == "pve2mqtt/bridge/state" && !m.retain && m.text() == "online"
        })
        .await;
}

/// Everything the bridge received before this call has been handled: one queue takes
/// commands and requests in order, and one publisher sends their results in order.
async fn handled(probe: &Probe, tag: &str) {
    probe
        .publish(
            "pve2mqtt/bridge/request/refresh",
            &json!({ "transaction": tag }).to_string(),
            false,
        )
        .await;
    probe
        .wait_for(&format!("the refresh marker {tag}"), 20 * SECS, |m| {
            m.topic == "pve2mqtt/bridge/response/refresh"
                && serde_json::from_slice::<Value>(&m.payload)
                    .is_ok_and(|v| v["transaction"] == tag)
        })
        .await;
}

/// Publishes and waits until the message is back from the broker (the probe hears its
/// own topics), so it is stored before whatever the test does next.
async fn publish_stored(probe: &Probe, topic: &str, payload: &str, retain: bool) {
    probe.publish(topic, payload, retain).await;
    probe
        .wait_for(&format!("{topic} stored"), 10 * SECS, |m| {
            m.topic == topic && m.payload == payload.as_bytes()
        })
        .await;
}

fn texts(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .map(|m| format!("{} = {}", m.topic, m.text()))
        .collect()
}

/// Issue 9: a retained request that ran live was never cleared, and ran again after a
/// broker restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_ran_live_is_cleared_and_does_not_run_again_after_a_broker_restart() {
    let mut w = world().await;
    let bridge = start_bridge(&w).await;
    // Given a request published with the retain flag while the bridge runs
    w.probe
        .publish(
            "pve2mqtt/bridge/request/command",
            r#"{"vmid":100,"action":"reboot","transaction":"live"}"#,
            true,
        )
        .await;
    // it runs (live, the broker clears the flag on the way to a subscriber)
    let answer = w
        .probe
        .wait_for("the live request's answer", 20 * SECS, |m| {
            m.topic == "pve2mqtt/bridge/response/command" && m.text().contains("\"live\"")
        })
        .await
        .json();
    assert_eq!(answer["status"], "ok", "{answer}");
    // and is gone from the broker
    handled(&w.probe, "after-live").await;
    let left = retained_on(w.broker.port, "pve2mqtt/bridge/request/#").await;
    assert!(left.is_empty(), "still retained: {:?}", texts(&left));

    // When the broker restarts (persistence keeps what was retained)
    let since = last_seq(&w.sim).await;
    w.broker.restart();
    let probe = Probe::connect(w.broker.port, ALL).await;
    wait_live_online(&probe).await;
    handled(&probe, "after-restart").await;

    // Then nothing ran again
    let again = posts(&w.sim, since).await;
    assert!(again.is_empty(), "the request ran again: {again:?}");
    bridge.stop().await.unwrap();
}

/// SPEC §7: a request that is retained when the bridge subscribes is never executed; it
/// gets an error answer (with its transaction, not retained) and is cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_request_is_answered_with_an_error_and_cleared_and_never_runs() {
    let w = world().await;
    for (name, body) in [
        (
            "command",
            json!({"vmid": 100, "action": "reboot", "transaction": "old-command"}),
        ),
        (
            "backup",
            json!({"vmids": "all", "transaction": "old-backup"}),
        ),
    ] {
        w.probe
            .publish(
                &format!("pve2mqtt/bridge/request/{name}"),
                &body.to_string(),
                true,
            )
            .await;
    }
    let since = last_seq(&w.sim).await;
    let bridge = start_bridge(&w).await;
    for (name, transaction) in [("command", "old-command"), ("backup", "old-backup")] {
        let answer = w
            .probe
            .wait_for(&format!("the answer to {transaction}"), 20 * SECS, |m| {
                m.topic == format!("pve2mqtt/bridge/response/{name}")
                    && m.text().contains(transaction)
            })
            .await
            .json();
        assert_eq!(answer["status"], "error", "{answer}");
        assert!(
            answer["error"].as_str().unwrap_or("").contains("retain"),
            "{answer}"
        );
    }
    handled(&w.probe, "marker").await;
    let ran = posts(&w.sim, since).await;
    assert!(ran.is_empty(), "a retained request ran: {ran:?}");
    let left = retained_on(w.broker.port, "pve2mqtt/bridge/#").await;
    let left: Vec<&Msg> = left
        .iter()
        .filter(|m| {
            // the bridge's own states: bridge/state, bridge/info, bridge/proxmox/{c}
            !m.topic.ends_with("/state")
                && !m.topic.ends_with("/info")
                && !m.topic.contains("/bridge/proxmox/")
        })
        .collect();
    assert!(left.is_empty(), "left retained: {left:?}");
    bridge.stop().await.unwrap();
}

/// Issue 9: a command published with the retain flag while the bridge is connected runs
/// (`ok`); its retained copy came back after a bridge restart, was rejected, and that
/// `rejected` overwrote the real `ok` on the retained `…/task`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_with_the_retain_flag_runs_once_and_its_ok_survives_a_bridge_restart() {
    let w = world().await;
    let bridge = start_bridge(&w).await;
    w.probe
        .publish(
            "pve2mqtt/pve/qemu/100/set",
            r#"{"action":"reboot","id":"kept"}"#,
            true,
        )
        .await;
    let result = wait_final(&w.probe, "pve2mqtt/pve/qemu/100/task", "kept").await;
    assert_eq!(result["state"], "ok", "{result}");
    handled(&w.probe, "ran").await;
    bridge.stop().await.unwrap();

    let since = last_seq(&w.sim).await;
    let bridge = start_bridge(&w).await;
    handled(&w.probe, "restarted").await;
    let ran = posts(&w.sim, since).await;
    assert!(ran.is_empty(), "the command ran again: {ran:?}");
    let task = retained_on(w.broker.port, "pve2mqtt/pve/qemu/100/task").await;
    assert_eq!(task.len(), 1, "{:?}", texts(&task));
    let task = task[0].json();
    assert_eq!(
        (&task["id"], &task["state"]),
        (&json!("kept"), &json!("ok")),
        "{task}"
    );
    bridge.stop().await.unwrap();
}

/// A retained command that is still on the broker when the bridge starts is rejected
/// for live subscribers, cleared, and leaves the retained `…/task` (the latest real
/// command) alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_retained_command_is_rejected_without_burying_the_real_result() {
    let w = world().await;
    let bridge = start_bridge(&w).await;
    w.probe
        .publish(
            "pve2mqtt/pve/qemu/100/set",
            r#"{"action":"reboot","id":"real"}"#,
            false,
        )
        .await;
    let result = wait_final(&w.probe, "pve2mqtt/pve/qemu/100/task", "real").await;
    assert_eq!(result["state"], "ok", "{result}");
    bridge.stop().await.unwrap();

    // Someone retains a command while the bridge is away
    publish_stored(
        &w.probe,
        "pve2mqtt/pve/qemu/100/set",
        r#"{"action":"reboot","id":"replay"}"#,
        true,
    )
    .await;
    let since = last_seq(&w.sim).await;
    let bridge = start_bridge(&w).await;
    let rejected = wait_final(&w.probe, "pve2mqtt/pve/qemu/100/task", "replay").await;
    assert_eq!(rejected["state"], "rejected", "{rejected}");
    assert!(
        rejected["error"].as_str().unwrap().contains("retain"),
        "{rejected}"
    );
    handled(&w.probe, "marker").await;
    assert!(posts(&w.sim, since).await.is_empty());
    let task = retained_on(w.broker.port, "pve2mqtt/pve/qemu/100/task").await;
    assert_eq!(task.len(), 1, "{:?}", texts(&task));
    let task = task[0].json();
    assert_eq!(
        (&task["id"], &task["state"]),
        (&json!("real"), &json!("ok")),
        "{task}"
    );
    let set = retained_on(w.broker.port, "pve2mqtt/pve/qemu/100/set").await;
    assert!(set.is_empty(), "{:?}", texts(&set));
    bridge.stop().await.unwrap();
}

/// Item 13: a `busy` or `rate limited` rejection overwrote the retained report of the
/// command still running. Item 4: and a flood got one rate-limited result per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_and_rate_limited_rejections_never_replace_the_running_report() {
    let w = world().await;
    let bridge = start_bridge(&w).await;
    sim_send(
        &w.sim,
        "POST",
        "/_sim/tasks/next",
        json!({"vmid": 100, "action": "reboot", "outcome": "hang"}),
    )
    .await;
    w.probe
        .publish(
            "pve2mqtt/pve/qemu/100/set",
            r#"{"action":"reboot","id":"long"}"#,
            false,
        )
        .await;
    w.probe
        .wait_for("the reboot running", 20 * SECS, |m| {
            m.topic == "pve2mqtt/pve/qemu/100/task"
                && m.text().contains("\"long\"")
                && m.text().contains("\"running\"")
        })
        .await;
    let started = Instant::now();
    // 29 more for the same guest: 9 find it busy (the burst is 10), 20 are over the limit.
    for i in 0..29 {
        w.probe
            .publish(
                "pve2mqtt/pve/qemu/100/set",
                &format!(r#"{{"action":"start","id":"extra-{i}"}}"#),
                false,
            )
            .await;
    }
    handled(&w.probe, "flooded").await;
    let window_count = 1 + started.elapsed().as_secs() / 10;
    let rejections: Vec<Value> = w
        .probe
        .messages()
        .iter()
        .filter(|m| m.topic == "pve2mqtt/pve/qemu/100/task" && m.text().contains("extra-"))
        .map(Msg::json)
        .collect();
    let reason = |v: &Value| v["error"].as_str().unwrap_or("").to_string();
    assert!(
        rejections.iter().any(|v| reason(v).contains("busy")),
        "{rejections:?}"
    );
    let limited = rejections
        .iter()
        .filter(|v| reason(v).contains("rate limited"))
        .count() as u64;
    assert!(
        (1..=window_count).contains(&limited),
        "{limited} rate-limited results in {window_count} window(s)"
    );
    let task = retained_on(w.broker.port, "pve2mqtt/pve/qemu/100/task").await;
    assert_eq!(task.len(), 1, "{:?}", texts(&task));
    let task = task[0].json();
    assert_eq!(
        (&task["id"], &task["state"]),
        (&json!("long"), &json!("running")),
        "{task}"
    );
    bridge.stop().await.unwrap();
}

/// Item 9: with more retained commands at connect than the rate limiter's burst (40),
/// the ones over it were rejected as rate limited and never cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_retained_commands_than_the_rate_limit_are_all_rejected_and_cleared() {
    let w = world().await;
    const N: usize = 60;
    for i in 0..N {
        publish_stored(
            &w.probe,
            &format!("pve2mqtt/pve/qemu/{}/set", 1000 + i),
            &format!(r#"{{"action":"stop","id":"r{i}"}}"#),
            true,
        )
        .await;
    }
    let since = last_seq(&w.sim).await;
    let bridge = start_bridge(&w).await;
    handled(&w.probe, "marker").await;
    let rejected: Vec<Value> = w
        .probe
        .messages()
        .iter()
        .filter(|m| m.topic.ends_with("/task") && m.text().contains("\"r"))
        .map(Msg::json)
        .collect();
    assert_eq!(rejected.len(), N, "{rejected:?}");
    for r in &rejected {
        assert_eq!(r["state"], "rejected", "{r}");
        assert!(r["error"].as_str().unwrap().contains("retain"), "{r}");
    }
    let left = retained_on(w.broker.port, "pve2mqtt/+/+/+/set").await;
    assert!(left.is_empty(), "never cleared: {:?}", texts(&left));
    let tasks = retained_on(w.broker.port, "pve2mqtt/+/+/+/task").await;
    assert!(
        tasks.iter().all(|m| !m.text().contains("\"r")),
        "{:?}",
        texts(&tasks)
    );
    assert!(posts(&w.sim, since).await.is_empty());
    bridge.stop().await.unwrap();
}

/// Item 4: commands to unknown clusters or guests left a retained `rejected` on the
/// broker and in the publisher's memory (sent again after every reconnect), and a flood
/// got one result per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_to_500_unknown_topics_leaves_nothing_retained_and_is_not_republished() {
    let mut w = world().await;
    let bridge = start_bridge(&w).await;
    let started = Instant::now();
    for i in 0..250 {
        let payload = format!(r#"{{"action":"stop","id":"f{i}"}}"#);
        w.probe
            .publish(&format!("pve2mqtt/ghost{i}/qemu/100/set"), &payload, false)
            .await;
        w.probe
            .publish(
                &format!("pve2mqtt/pve/qemu/{}/set", 5000 + i),
                &payload,
                false,
            )
            .await;
    }
    handled(&w.probe, "flooded").await;
    let elapsed = started.elapsed().as_secs_f64();
    let junk = |m: &Msg| {
        m.topic.ends_with("/task") && (m.topic.contains("/ghost") || m.topic.contains("/qemu/5"))
    };
    let results = w.probe.messages().iter().filter(|m| junk(m)).count();
    // The limiter lets 40 through at once and 20 per second after; the rest get one
    // rate-limited result per 10 s window.
    let bound = 40.0 + 20.0 * elapsed + 1.0 + elapsed / 10.0;
    assert!(
        results as f64 <= bound,
        "{results} results in {elapsed:.1} s (at most {bound:.0})"
    );
    let tasks = retained_on(w.broker.port, "pve2mqtt/+/+/+/task").await;
    let left: Vec<&Msg> = tasks.iter().filter(|m| junk(m)).collect();
    assert!(left.is_empty(), "{} left retained: {left:?}", left.len());

    // After a reconnect the bridge republishes its retained reports: none of these.
    w.broker.restart();
    let probe = Probe::connect(w.broker.port, ALL).await;
    wait_live_online(&probe).await;
    probe
        .wait_for("the republish to end", 20 * SECS, |m| {
            m.topic == "pve2mqtt/bridge/info" && !m.retain
        })
        .await;
    handled(&probe, "reconnected").await;
    let again: Vec<Msg> = probe.messages().into_iter().filter(|m| junk(m)).collect();
    assert!(again.is_empty(), "{:?}", texts(&again));
    bridge.stop().await.unwrap();
}
