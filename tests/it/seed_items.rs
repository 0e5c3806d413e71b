//! The smaller items of issue 12: a VM shutdown's `keep_active` (the seed's `keepActive`)
//! and a storage's `avail` as Proxmox reports it.

use serde_json::json;

use crate::commands::{last_seq, posts, wait_final};
use crate::support::*;

const STATES: &[&str] = &["pve2mqtt/#"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_active_false_reaches_proxmox_and_true_is_refused_before_any_post() {
    let w = World::builder().probe(STATES).start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    probe
        .wait_topic("pve2mqtt/pve/qemu/100", 20 * SECS, |m| {
            m.json()["status"] == "running"
        })
        .await;
    let topic = "pve2mqtt/pve/qemu/100/task";

    // true: Proxmox would refuse it from any API token; the bridge says so and posts nothing
    let since = last_seq(sim).await;
    probe
        .publish(
            "pve2mqtt/pve/qemu/100/set",
            &json!({"action": "shutdown", "keep_active": true, "id": "keep"}).to_string(),
            false,
        )
        .await;
    let refused = wait_final(probe, topic, "keep").await;
    assert_eq!(refused["state"], "rejected");
    assert!(
        refused["error"].as_str().unwrap().contains("root@pam"),
        "{refused}"
    );
    assert!(posts(sim, since).await.is_empty());

    // false: passed through as keepActive=0, and the shutdown ends ok
    probe
        .publish(
            "pve2mqtt/pve/qemu/100/set",
            &json!({"action": "shutdown", "keep_active": false, "id": "off"}).to_string(),
            false,
        )
        .await;
    let done = wait_final(probe, topic, "off").await;
    assert_eq!(done["state"], "ok", "{done}");
    let sent = posts(sim, since).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0]["route"],
        "POST /nodes/{node}/qemu/{vmid}/status/shutdown"
    );
    assert_eq!(sent[0]["form"]["keepActive"], "0", "{}", sent[0]);
    w.stop().await;
}

/// Issue 12, smaller item: a directory storage's `avail` is Proxmox's (df's `bavail`,
/// without the reserved blocks), not `total - used`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dir_storage_shows_the_avail_proxmox_reports() {
    let w = World::builder().probe(STATES).start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    let state = probe
        .wait_topic("pve2mqtt/pve/storage/pve/local", 20 * SECS, |m| {
            let s = m.json();
            let (total, used, avail) = (
                s["total"].as_u64().unwrap_or(0),
                s["used"].as_u64().unwrap_or(0),
                s["avail"].as_u64().unwrap_or(0),
            );
            total > 0 && avail + used < total
        })
        .await
        .json();
    let total = state["total"].as_u64().unwrap();
    let used = state["used"].as_u64().unwrap();
    assert_eq!(state["avail"].as_u64().unwrap(), total - used - total / 20);
    // Thin pools report total - used, and so does the bridge.
    let thin = probe
        .latest("pve2mqtt/pve/storage/pve/local-lvm")
        .unwrap()
        .json();
    assert_eq!(
        thin["avail"].as_u64().unwrap(),
        thin["total"].as_u64().unwrap() - thin["used"].as_u64().unwrap()
    );
    assert!(sim.world().counters()["GET /nodes/{node}/storage"] >= 1);
    w.stop().await;
}
