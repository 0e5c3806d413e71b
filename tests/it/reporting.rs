//! Reporting rules (issue 10): what a subscriber receives when figures move by less or
//! more than their reportable change, when only counters move, and every `max_interval`.
//!
//! The simulator's figures move with time; these tests freeze them (a long stats interval)
//! and move them in steps of their own, or change what the simulator derives figures from:
//! `local-lvm`'s used space is its base plus a third of each guest's disk size, so a
//! guest's `maxdisk` moves the storage by an exact amount (800 GiB total, 0.5 % = 4 GiB).
use std::time::Duration;

use pve_sim::SimHandle;
use serde_json::json;

use crate::state::pve_get;
use crate::support::*;

const GIB: u64 = 1 << 30;
const LVM: &str = "pve2mqtt/pve/storage/pve/local-lvm";
const LOCAL: &str = "pve2mqtt/pve/storage/pve/local";
const VM: &str = "pve2mqtt/pve/qemu/100";
const CT: &str = "pve2mqtt/pve/lxc/101";
/// VM 100's disk in the seed world.
const VM_DISK: u64 = 32 * GIB;

fn polls(sim: &SimHandle) -> u64 {
    let counters = sim.world().counters();
    counters.get("GET /cluster/resources").copied().unwrap_or(0)
}

/// Waits until the bridge has asked `/cluster/resources` `n` more times than `since`,
/// then a little longer for what the last answer led to to reach the probe.
async fn wait_polls(sim: &SimHandle, since: u64, n: u64) {
    let deadline = tokio::time::Instant::now() + 20 * SECS;
    while polls(sim) < since + n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bridge stopped polling"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Freezes the figures `/cluster/resources` shows at this instant (until the next call).
async fn freeze(sim: &SimHandle) {
    sim_send(
        sim,
        "POST",
        "/_sim/config",
        json!({"stats_interval_ms": 3_600_000}),
    )
    .await;
}

async fn set_vm_disk(sim: &SimHandle, maxdisk: u64) {
    sim_send(
        sim,
        "PATCH",
        "/_sim/guests/100",
        json!({"maxdisk": maxdisk}),
    )
    .await;
}

/// Gives VM 100 a disk of `maxdisk` and waits until the bridge published it (a disk size
/// always counts, so its state shows that a poll saw the change) and two more polls ran:
/// anything those polls had to publish beside it, the storage's state included, is out.
async fn move_vm_disk_and_let_two_polls_pass(s: &World, maxdisk: u64) {
    set_vm_disk(&s.sim, maxdisk).await;
    s.probe
        .wait_topic(VM, 20 * SECS, |m| m.json()["maxdisk"] == maxdisk)
        .await;
    let seen_at = polls(&s.sim);
    wait_polls(&s.sim, seen_at, 2).await;
}

fn count(probe: &Probe, topic: &str) -> usize {
    probe.messages().iter().filter(|m| m.topic == topic).count()
}

/// The seed world with frozen figures, a bridge polling every second with `reporting`
/// as its `[reporting]` section, and a probe that has seen the first states.
async fn setup(reporting: &str) -> World {
    let stage = World::builder()
        .probe(&["pve2mqtt/#"])
        .config(&format!("[reporting]\n{reporting}\n"))
        .until(LVM)
        .until(LOCAL)
        .until(VM)
        .until(CT)
        .prepare()
        .await;
    freeze(&stage.sim).await;
    let w = stage.start().await;
    // `local` is a directory storage: its `avail` changes once more when the slow lane
    // has read Proxmox's own figure (issue 12), a change that always counts.
    w.probe
        .wait_topic(LOCAL, 20 * SECS, |m| {
            let s = m.json();
            let figure = |k: &str| s[k].as_u64().unwrap_or(0);
            figure("avail") + figure("used") < figure("total")
        })
        .await;
    w
}

fn used(msg: &Msg) -> u64 {
    msg.json()["used"].as_u64().expect("used")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_above_its_reportable_change_is_published_within_one_poll() {
    let s = setup("").await;
    let before = used(&s.probe.latest(LVM).unwrap());
    let polls_before = polls(&s.sim);

    // 15 GiB more disk for VM 100: local-lvm's use grows by 5 GiB, 0.625 % of its total.
    set_vm_disk(&s.sim, VM_DISK + 15 * GIB).await;

    s.probe
        .wait_topic(LVM, 20 * SECS, |m| used(m) == before + 5 * GIB)
        .await;
    // The poll that saw the change published it (one more may have started meanwhile).
    let took = polls(&s.sim) - polls_before;
    assert!(took <= 2, "published after {took} polls");
    s.bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_below_its_reportable_change_is_not_published() {
    let s = setup("").await;
    let lvm_messages = count(&s.probe, LVM);

    // 3 GiB more disk for VM 100: local-lvm grows by 1 GiB, 0.125 % of its total.
    move_vm_disk_and_let_two_polls_pass(&s, VM_DISK + 3 * GIB).await;
    assert_eq!(
        count(&s.probe, LVM),
        lvm_messages,
        "a 0.125 % move was published: {:?}",
        s.probe.latest(LVM).map(|m| m.text())
    );
    s.bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_interval_republishes_what_moved_below_its_reportable_change() {
    let s = setup("max_interval = \"2s\"").await;
    let before = used(&s.probe.latest(LVM).unwrap());
    let local_messages = count(&s.probe, LOCAL);

    set_vm_disk(&s.sim, VM_DISK + 3 * GIB).await;

    // Below the reportable change, so it waits for the storage's refresh, which comes
    // within max_interval.
    s.probe
        .wait_topic(LVM, 20 * SECS, |m| used(m) == before + GIB)
        .await;
    // `local` did not move at all: its retained state is current, and is not sent again
    // although it was due several times meanwhile.
    let since = polls(&s.sim);
    wait_polls(&s.sim, since, 3).await;
    assert_eq!(count(&s.probe, LOCAL), local_messages);
    s.bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_uptime_moving_alone_do_not_publish_and_ride_along_later() {
    // Rates are measured over the bridge's own poll times, so frozen-then-stepped
    // counters give rough rates: a wide rates rule keeps them out of this test.
    let s = setup("rates = 1000").await;

    // First step: the counters move for the first time, so the rates turn from `null`
    // into numbers, which counts.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    freeze(&s.sim).await;
    let first = s
        .probe
        .wait_topic(CT, 20 * SECS, |m| m.json()["netin_rate"].is_number())
        .await
        .json();
    let started = first["started"].as_u64().expect("started");
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let uptime = first["uptime"].as_u64().unwrap();
    assert!(
        started.abs_diff(unix_now - uptime) <= 120,
        "started {started} is not now - uptime"
    );
    let ct_messages = count(&s.probe, CT);

    // Second step: counters and uptime move; cpu and memory of this idle container
    // move far less than their reportable change.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    freeze(&s.sim).await;
    let row = pve_get(&s.sim, "/cluster/resources?type=vm").await;
    let row = row
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["vmid"] == 101)
        .unwrap()
        .clone();
    assert!(
        row["netin"].as_u64() > first["netin"].as_u64(),
        "counters moved"
    );
    assert!(
        row["uptime"].as_u64() > first["uptime"].as_u64(),
        "uptime moved"
    );
    let since = polls(&s.sim);
    wait_polls(&s.sim, since, 3).await;
    assert_eq!(
        count(&s.probe, CT),
        ct_messages,
        "published for counters and uptime alone: {:?}",
        s.probe.latest(CT).map(|m| m.text())
    );

    // A field that always counts: the state goes out, with the latest counters.
    sim_send(
        &s.sim,
        "PATCH",
        "/_sim/guests/101",
        json!({"tags": "reported"}),
    )
    .await;
    let tagged = s
        .probe
        .wait_topic(CT, 20 * SECS, |m| m.json()["tags"] == json!(["reported"]))
        .await
        .json();
    assert_eq!(tagged["netin"], row["netin"]);
    assert_eq!(tagged["uptime"], row["uptime"]);
    assert_eq!(tagged["started"], started, "started does not tick");
    s.bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_change_is_published_within_one_poll_whatever_the_thresholds() {
    let s = setup(
        "cpu = 100\nmem_percent = 100\nrates = 1000000\nstorage_percent = 100\nmax_interval = \"1h\"",
    )
    .await;
    let polls_before = polls(&s.sim);
    sim_send(
        &s.sim,
        "PATCH",
        "/_sim/guests/101",
        json!({"status": "stopped"}),
    )
    .await;
    let msg = s
        .probe
        .wait_topic(CT, 20 * SECS, |m| m.json()["status"] == "stopped")
        .await;
    let took = polls(&s.sim) - polls_before;
    assert!(took <= 2, "published after {took} polls");
    let state = msg.json();
    assert_eq!(
        state["started"],
        serde_json::Value::Null,
        "a stopped guest has no boot time"
    );
    s.bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_min_interval_a_big_move_waits_but_a_status_change_does_not() {
    let s = setup("min_interval = \"1h\"").await;
    let lvm_messages = count(&s.probe, LVM);

    // 5 GiB more on local-lvm, beyond its reportable change, but the storage's state is
    // younger than min_interval.
    move_vm_disk_and_let_two_polls_pass(&s, VM_DISK + 15 * GIB).await;
    assert_eq!(count(&s.probe, LVM), lvm_messages);

    // A field that always counts does not wait.
    let polls_before = polls(&s.sim);
    sim_send(
        &s.sim,
        "PATCH",
        "/_sim/guests/101",
        json!({"status": "stopped"}),
    )
    .await;
    s.probe
        .wait_topic(CT, 20 * SECS, |m| m.json()["status"] == "stopped")
        .await;
    let took = polls(&s.sim) - polls_before;
    assert!(took <= 2, "published after {took} polls");
    s.bridge.stop().await.unwrap();
}
