//! The world moves like Proxmox: figures change at each pvestatd broadcast and not in
//! between, counters and uptimes only grow, and a frozen world never changes. Checked on
//! what the API renders at chosen instants (the stats clock is a pure function of time),
//! then once over HTTPS.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::access::Token;
use crate::clock::{StatsClock, JITTER};
use crate::render;
use crate::rows::FlatRow;
use crate::world::{PveVersion, World};

const T0: f64 = 1_800_000_000.0;
const COUNTERS: [&str; 5] = ["uptime", "netin", "netout", "diskread", "diskwrite"];

fn v9() -> PveVersion {
    PveVersion::parse("9.1.5").expect("version")
}

fn root() -> Token {
    Token {
        full_id: "root@pam!t".into(),
        secret: "s".into(),
        privileges: None,
    }
}

fn world() -> World {
    World::generate((3, 60), 90, T0 - 86_400.0, v9(), "AA")
}

/// `/cluster/resources` as the clock shows it at `now`, by row id.
fn resources(world: &World, clock: &StatsClock, now: f64) -> BTreeMap<String, Value> {
    render::cluster_resources(world, v9(), &root(), clock.stats_time(now), None)
        .iter()
        .map(FlatRow::to_value)
        .map(|row| (row["id"].as_str().expect("id").to_string(), row))
        .collect()
}

/// Ten-second broadcasts, the first 3.7 s before T0.
fn pvestatd() -> StatsClock {
    StatsClock::moving(Duration::from_secs(10), T0, 3.7, 99)
}

#[test]
fn moving_figures_change_at_a_broadcast_and_not_within_one() {
    let world = world();
    let clock = pvestatd();
    let epoch = T0 - 3.7;
    // Window 3 runs from its broadcast (at most 0.5 s late) to the next one.
    let start = epoch + 30.0 + 10.0 * JITTER + 0.01;
    let first = resources(&world, &clock, start);
    for step in [0.5, 3.0, 7.0, 9.4] {
        assert_eq!(
            resources(&world, &clock, start + step),
            first,
            "within one window nothing moves ({step} s later)"
        );
    }
    let next = resources(&world, &clock, start + 10.0);
    let moved = |id: &str, field: &str| first[id][field] != next[id][field];
    let running: Vec<&String> = first
        .iter()
        .filter(|(_, row)| row["status"] == "running")
        .map(|(id, _)| id)
        .collect();
    assert!(running.len() > 40, "{} running guests", running.len());
    for id in &running {
        for field in [
            "uptime",
            "netin",
            "netout",
            "diskread",
            "diskwrite",
            "cpu",
            "mem",
        ] {
            assert!(moved(id, field), "{id} {field} moved at the broadcast");
        }
    }
    for node in ["node/pve1", "node/pve2", "node/pve3"] {
        for field in ["uptime", "cpu", "mem", "disk"] {
            assert!(moved(node, field), "{node} {field} moved at the broadcast");
        }
    }
    let storages: Vec<&String> = first
        .keys()
        .filter(|id| id.starts_with("storage/"))
        .collect();
    assert!(!storages.is_empty());
    for id in storages {
        assert!(moved(id, "disk"), "{id} usage drifted");
        assert_eq!(first[id]["maxdisk"], next[id]["maxdisk"]);
    }
    // Stopped guests and sizes stand still.
    for (id, row) in first.iter().filter(|(_, row)| row["status"] == "stopped") {
        assert_eq!(row, &next[id], "{id} is stopped");
    }
}

#[test]
fn counters_and_uptimes_never_go_back_while_the_world_moves() {
    let world = world();
    let clock = pvestatd();
    let mut last = resources(&world, &clock, T0);
    let first = last.clone();
    let mut t = T0;
    while t < T0 + 900.0 {
        t += 0.7;
        let now = resources(&world, &clock, t);
        for (id, row) in now.iter().filter(|(_, row)| row["status"] == "running") {
            for field in COUNTERS {
                let (before, after) = (last[id][field].as_u64(), row[field].as_u64());
                assert!(
                    after >= before,
                    "{id} {field}: {before:?} -> {after:?} at {t}"
                );
            }
        }
        last = now;
    }
    for (id, row) in last.iter().filter(|(_, row)| row["status"] == "running") {
        for field in COUNTERS {
            assert!(
                row[field].as_u64() > first[id][field].as_u64(),
                "{id} {field} grew over 15 minutes"
            );
        }
    }
}

#[test]
fn a_frozen_world_never_changes_on_any_endpoint() {
    let world = world();
    let mut clock = pvestatd();
    clock.set_frozen(true, T0);
    let guest = world.guests.values().find(|g| g.power.process_running());
    let guest = guest.expect("a running guest");
    let node = &world.nodes[0];
    let storage = world.storage("local").expect("local storage");
    let live = |now: f64| {
        let t = clock.live_time(now);
        (
            render::qemu_current(guest, t, v9()),
            render::node_status(node, v9(), t),
            render::node_storage_row(&world, storage, &node.name, v9(), false, t),
        )
    };
    let (first, first_live) = (resources(&world, &clock, T0), live(T0));
    for later in [0.3, 10.0, 61.0, 3_600.0, 86_400.0 * 30.0] {
        assert_eq!(
            resources(&world, &clock, T0 + later),
            first,
            "{later} s later"
        );
        assert_eq!(live(T0 + later), first_live, "{later} s later");
    }
}

#[tokio::test]
async fn the_api_moves_by_default_and_stands_still_when_frozen() {
    use crate::{start, SimOptions};
    // By vmid: the guests come in another order on every call, as from Proxmox.
    let uptimes = |rows: &Value| -> Vec<u64> {
        let mut running: Vec<(u64, u64)> = rows
            .as_array()
            .expect("rows")
            .iter()
            .filter(|row| row["status"] == "running")
            .filter_map(|row| Some((row["vmid"].as_u64()?, row["uptime"].as_u64()?)))
            .collect();
        running.sort_unstable();
        running.into_iter().map(|(_, uptime)| uptime).collect()
    };
    for frozen in [false, true] {
        let sim = start(SimOptions {
            tls: false,
            nodes: Some(1),
            guests: Some(5),
            stats_interval: Duration::from_millis(300),
            frozen,
            ..SimOptions::default()
        })
        .await
        .expect("simulator starts");
        let url = format!("{}/api2/json/cluster/resources", sim.base_url());
        let client = reqwest::Client::new();
        let fetch = || async {
            let body: Value = client
                .get(&url)
                .header(
                    "Authorization",
                    format!("PVEAPIToken={}", crate::DEFAULT_TOKEN),
                )
                .send()
                .await
                .expect("request")
                .json()
                .await
                .expect("json");
            body["data"].clone()
        };
        let before = uptimes(&fetch().await);
        assert!(!before.is_empty());
        // Several broadcasts pass (1.5 s = 5 intervals, jitter at most 15 ms each).
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let after = uptimes(&fetch().await);
        if frozen {
            assert_eq!(after, before, "a frozen world stands still");
        } else {
            assert!(
                after.iter().zip(&before).all(|(a, b)| a > b),
                "uptimes advanced: {before:?} -> {after:?}"
            );
        }
        sim.stop().await;
    }
}
