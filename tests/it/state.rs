use std::collections::HashSet;
use std::time::Duration;

use crate::support::*;

/// The seed world: standalone node `pve` (so the cluster id is `pve`), VM 100, CT 101,
/// storages `local` and `local-lvm`.
const SEED_DEVICES: &[&str] = &[
    "homeassistant/device/pve2mqtt_pve_cluster/config",
    "homeassistant/device/pve2mqtt_pve_node_pve/config",
    "homeassistant/device/pve2mqtt_pve_100/config",
    "homeassistant/device/pve2mqtt_pve_101/config",
    "homeassistant/device/pve2mqtt_pve_storage_pve_local/config",
    "homeassistant/device/pve2mqtt_pve_storage_pve_local-lvm/config",
    // Node health (issue 11), from the slow lane's first round: three disks, two pools.
    "homeassistant/device/pve2mqtt_pve_disk_pve_nvme0n1/config",
    "homeassistant/device/pve2mqtt_pve_disk_pve_sda/config",
    "homeassistant/device/pve2mqtt_pve_disk_pve_sdb/config",
    "homeassistant/device/pve2mqtt_pve_zfs_pve_rpool/config",
    "homeassistant/device/pve2mqtt_pve_zfs_pve_tank/config",
];

/// The bridge's own device (version, Proxmox API sensor, Refresh button).
const BRIDGE_DEVICE: &str = "homeassistant/device/pve2mqtt_bridge/config";

async fn wait_for_seed_discovery(probe: &Probe) {
    for topic in SEED_DEVICES {
        probe.wait_state(topic).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_announces_every_seed_object_retained_with_distinct_unique_ids() {
    // Given a broker, the simulator's seed world and a running bridge
    let w = World::start().await;
    let (broker, probe) = (&w.broker, &w.probe);
    wait_for_seed_discovery(probe).await;
    // VM 100's guest agent reports its filesystems in the agent lane's first round, which
    // adds the VM's "Disk used" (issue 12).
    probe
        .wait_topic(SEED_DEVICES[2], 20 * SECS, |m| {
            !m.payload.is_empty() && m.json()["cmps"].get("disk_used").is_some()
        })
        .await;
    // …and the slow lane's first round the versions of the cluster and node devices.
    for device in &SEED_DEVICES[..2] {
        probe
            .wait_topic(device, 20 * SECS, |m| {
                !m.payload.is_empty() && m.json()["dev"]["sw"].is_string()
            })
            .await;
    }

    // When a client connects afterwards (like Home Assistant after a restart)
    let late = Probe::connect(broker.port, &["homeassistant/#"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Then it gets exactly the seed devices and the bridge's, retained, each valid for HA
    let configs: Vec<Msg> = late
        .messages()
        .into_iter()
        .filter(|m| m.topic.ends_with("/config"))
        .collect();
    let topics: HashSet<&str> = configs.iter().map(|m| m.topic.as_str()).collect();
    let mut expected: HashSet<&str> = SEED_DEVICES.iter().copied().collect();
    expected.insert(BRIDGE_DEVICE);
    assert_eq!(topics, expected);
    let mut unique_ids = HashSet::new();
    for m in &configs {
        assert!(m.retain, "{} is not retained", m.topic);
        let object_id = m.topic.split('/').nth(2).unwrap();
        assert!(
            object_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "illegal discovery object id {object_id}"
        );
        let payload = m.json();
        assert_eq!(payload["dev"]["ids"][0], object_id, "device id = object id");
        assert!(payload["dev"]["name"].is_string());
        assert_eq!(payload["o"]["name"], "pve2mqtt");
        if m.topic != BRIDGE_DEVICE {
            assert_eq!(payload["avty_mode"], "all");
        }
        assert_eq!(payload["avty"][0]["t"], "pve2mqtt/bridge/state");
        let components = payload["cmps"].as_object().expect("cmps");
        assert!(!components.is_empty());
        for (key, component) in components {
            if component.as_object().unwrap().len() == 1 {
                // `{"p": platform}` removes an entity an earlier version announced.
                continue;
            }
            let uid = component["uniq_id"].as_str().expect("uniq_id");
            assert_eq!(uid, format!("{object_id}_{key}"));
            assert!(
                unique_ids.insert(uid.to_string()),
                "duplicate unique_id {uid}"
            );
            assert!(component["p"].is_string());
        }
    }
    // VM and container are linked to their node, the node to the cluster.
    let vm = late
        .latest("homeassistant/device/pve2mqtt_pve_100/config")
        .unwrap()
        .json();
    assert_eq!(vm["dev"]["via_device"], "pve2mqtt_pve_node_pve");
    assert_eq!(vm["dev"]["name"], "home-assistant");
    let node = late
        .latest("homeassistant/device/pve2mqtt_pve_node_pve/config")
        .unwrap()
        .json();
    assert_eq!(node["dev"]["via_device"], "pve2mqtt_pve_cluster");
    // A VM has "disk used" from its guest agent (Proxmox reports 0); a container has it
    // from Proxmox.
    assert!(vm["cmps"].get("disk_used").is_some());
    let ct = late
        .latest("homeassistant/device/pve2mqtt_pve_101/config")
        .unwrap()
        .json();
    assert!(ct["cmps"].get("disk_used").is_some());

    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_states_match_what_proxmox_reports() {
    let w = World::start().await;
    let (broker, sim, probe) = (&w.broker, &w.sim, &w.probe);
    for topic in [
        "pve2mqtt/pve/qemu/100",
        "pve2mqtt/pve/lxc/101",
        "pve2mqtt/pve/node/pve",
    ] {
        probe.wait_state(topic).await;
    }
    // Slow lane fills in node details and backups within a round.
    probe
        .wait_topic("pve2mqtt/pve/node/pve", 20 * SECS, |m| {
            m.json()["pve_version"].is_string()
        })
        .await;
    probe
        .wait_topic("pve2mqtt/pve/qemu/100", 20 * SECS, |m| {
            m.json()["last_backup"].is_u64()
        })
        .await;

    // What Proxmox itself says, asked over its real API.
    let resources = pve_get(sim, "/cluster/resources").await;
    let late = Probe::connect(broker.port, &["pve2mqtt/#"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Everything below must be retained: a client connecting now gets it at once.
    let seen = late.retained_by_topic();

    for row in resources.as_array().unwrap() {
        match row["type"].as_str().unwrap() {
            kind @ ("qemu" | "lxc") => {
                let vmid = row["vmid"].as_u64().unwrap();
                let msg = seen
                    .get(&format!("pve2mqtt/pve/{kind}/{vmid}"))
                    .expect("guest state");
                let state = msg.json();
                assert_eq!(state["vmid"], vmid);
                assert_eq!(state["type"], kind);
                assert_eq!(state["name"], row["name"]);
                assert_eq!(state["node"], row["node"]);
                assert_eq!(state["status"], row["status"]);
                assert_eq!(state["maxmem"], row["maxmem"]);
                assert_eq!(state["maxdisk"], row["maxdisk"]);
                assert!(state["tags"].is_array());
                let mem_percent = state["mem_percent"].as_f64().unwrap();
                assert!((0.0..=100.0).contains(&mem_percent));
                let availability = seen
                    .get(&format!("pve2mqtt/pve/{kind}/{vmid}/availability"))
                    .expect("availability");
                assert_eq!(availability.text(), "online");
            }
            "node" => {
                let node = row["node"].as_str().unwrap();
                let state = seen
                    .get(&format!("pve2mqtt/pve/node/{node}"))
                    .expect("node state")
                    .json();
                assert_eq!(state["status"], row["status"]);
                assert_eq!(state["maxmem"], row["maxmem"]);
                assert_eq!(state["loadavg"].as_array().map(|a| a.len()), Some(3));
                assert!(state["kernel"].is_string());
            }
            "storage" => {
                let (node, storage) = (
                    row["node"].as_str().unwrap(),
                    row["storage"].as_str().unwrap(),
                );
                let state = seen
                    .get(&format!("pve2mqtt/pve/storage/{node}/{storage}"))
                    .expect("storage state")
                    .json();
                assert_eq!(state["total"], row["maxdisk"]);
                assert_eq!(state["type"], row["plugintype"]);
                assert_eq!(state["active"], row["status"] == "available");
            }
            _ => {}
        }
    }
    // The VM's newest backup in storage content is its last_backup.
    let content = pve_get(sim, "/nodes/pve/storage/local/content?content=backup").await;
    let newest = content
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["vmid"] == 100)
        .filter_map(|i| i["ctime"].as_u64())
        .max()
        .expect("the seed world has backups of VM 100");
    let vm = seen.get("pve2mqtt/pve/qemu/100").unwrap().json();
    assert_eq!(vm["last_backup"], newest);
    let info = seen
        .get("pve2mqtt/bridge/info")
        .expect("bridge info")
        .json();
    assert_eq!(info["clusters"][0]["id"], "pve");
    assert_eq!(info["clusters"][0]["guests"], 2);
    assert_eq!(seen.get("pve2mqtt/bridge/state").unwrap().text(), "online");

    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_birth_makes_the_bridge_republish_discovery_and_states() {
    let w = World::start().await;
    let probe = &w.probe;
    wait_for_seed_discovery(probe).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // When Home Assistant (re)starts and sends its birth message
    probe.clear();
    probe.publish("homeassistant/status", "online", false).await;

    // Then every discovery config and state comes again
    for topic in SEED_DEVICES {
        probe
            .wait_topic(topic, 10 * SECS, |m| !m.payload.is_empty())
            .await;
    }
    probe
        .wait_topic("pve2mqtt/pve/qemu/100/availability", 10 * SECS, |m| {
            m.text() == "online"
        })
        .await;
    probe
        .wait_topic("pve2mqtt/bridge/state", 10 * SECS, |m| m.text() == "online")
        .await;

    w.stop().await;
}

/// GET a Proxmox API path on the simulator with the default token.
pub async fn pve_get(sim: &pve_sim::SimHandle, path: &str) -> serde_json::Value {
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().unwrap().as_bytes()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let body: serde_json::Value = http
        .get(format!("{}/api2/json{path}", sim.base_url()))
        .header(
            "Authorization",
            format!("PVEAPIToken={}", pve_sim::DEFAULT_TOKEN),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_guest_appears_and_a_removed_one_is_cleared_everywhere() {
    let w = World::start().await;
    let (broker, sim, probe) = (&w.broker, &w.sim, &w.probe);
    wait_for_seed_discovery(probe).await;

    // When a container is created in Proxmox
    sim_send(
        sim,
        "POST",
        "/_sim/guests",
        serde_json::json!({
            "vmid": 102, "type": "lxc", "node": "pve", "name": "zigbee", "status": "running"
        }),
    )
    .await;
    // Then it gets discovery, state and availability
    let config = probe
        .wait_topic(
            "homeassistant/device/pve2mqtt_pve_102/config",
            10 * SECS,
            |m| !m.payload.is_empty(),
        )
        .await;
    assert_eq!(config.json()["dev"]["name"], "zigbee");
    let state = probe
        .wait_topic("pve2mqtt/pve/lxc/102", 10 * SECS, |m| !m.payload.is_empty())
        .await;
    assert_eq!(state.json()["status"], "running");
    probe
        .wait_topic("pve2mqtt/pve/lxc/102/availability", 10 * SECS, |m| {
            m.text() == "online"
        })
        .await;

    // When the container 101 is destroyed
    sim_send(sim, "DELETE", "/_sim/guests/101", serde_json::json!({})).await;
    // Then its availability goes offline and every retained topic it had is cleared
    probe
        .wait_for("101 offline", 10 * SECS, |m| {
            m.topic == "pve2mqtt/pve/lxc/101/availability" && m.text() == "offline"
        })
        .await;
    probe
        .wait_topic(
            "homeassistant/device/pve2mqtt_pve_101/config",
            10 * SECS,
            |m| m.payload.is_empty(),
        )
        .await;
    probe
        .wait_topic("pve2mqtt/pve/lxc/101", 10 * SECS, |m| m.payload.is_empty())
        .await;
    let late = Probe::connect(broker.port, ALL).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leftovers: Vec<String> = late
        .messages()
        .iter()
        .filter(|m| m.topic.contains("101"))
        .map(|m| m.topic.clone())
        .collect();
    assert!(
        leftovers.is_empty(),
        "retained leftovers of 101: {leftovers:?}"
    );
    assert_eq!(
        late.retained_by_topic()["pve2mqtt/bridge/info"].json()["clusters"][0]["guests"],
        2
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_that_vanished_while_the_bridge_was_down_are_cleaned_up_at_start() {
    let w = World::start().await;
    let (broker, sim, probe) = (&w.broker, &w.sim, &w.probe);
    wait_for_seed_discovery(probe).await;
    w.bridge.stop().await.unwrap();

    // While the bridge is down, container 101 is destroyed
    sim_send(sim, "DELETE", "/_sim/guests/101", serde_json::json!({})).await;
    probe.clear();
    let bridge = Bridge::start(w.cfg.config());

    // The next run finds its retained leftovers and clears them
    probe
        .wait_topic(
            "homeassistant/device/pve2mqtt_pve_101/config",
            15 * SECS,
            |m| m.payload.is_empty(),
        )
        .await;
    probe
        .wait_topic("pve2mqtt/pve/lxc/101/availability", 15 * SECS, |m| {
            m.payload.is_empty()
        })
        .await;
    probe
        .wait_topic("pve2mqtt/pve/lxc/101", 15 * SECS, |m| m.payload.is_empty())
        .await;
    // and keeps what still exists
    let late = Probe::connect(broker.port, ALL).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let retained = late.retained_by_topic();
    assert!(retained.contains_key("homeassistant/device/pve2mqtt_pve_100/config"));
    assert!(
        !retained.keys().any(|t| t.contains("101")),
        "{:?}",
        retained.keys().collect::<Vec<_>>()
    );
    bridge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_node_takes_its_objects_offline_while_the_other_node_keeps_updating() {
    let stage = World::builder().sim(sim_generated(2, 6)).prepare().await;
    let sim = &stage.sim;
    // Live figures, so the healthy node's guests visibly keep updating.
    sim_send(
        sim,
        "POST",
        "/_sim/config",
        serde_json::json!({"stats_interval_ms": 0}),
    )
    .await;
    let w = stage.start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    let resources = pve_get(sim, "/cluster/resources").await;
    let guests: Vec<(String, u64, String)> = resources
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "qemu" || r["type"] == "lxc")
        .map(|r| {
            (
                r["type"].as_str().unwrap().to_string(),
                r["vmid"].as_u64().unwrap(),
                r["node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (kind, vmid, _) in &guests {
        probe
            .wait_topic(
                &format!("pve2mqtt/simcluster/{kind}/{vmid}/availability"),
                20 * SECS,
                |m| m.text() == "online",
            )
            .await;
    }

    // When node pve2 goes down
    sim_send(
        sim,
        "POST",
        "/_sim/nodes/pve2",
        serde_json::json!({"online": false}),
    )
    .await;

    // Then pve2, its guests and its storages are offline
    probe
        .wait_topic(
            "pve2mqtt/simcluster/node/pve2/availability",
            10 * SECS,
            |m| m.text() == "offline",
        )
        .await;
    let offline_at = std::time::Instant::now();
    for (kind, vmid, node) in &guests {
        let topic = format!("pve2mqtt/simcluster/{kind}/{vmid}/availability");
        let expected = if node == "pve2" { "offline" } else { "online" };
        probe
            .wait_topic(&topic, 10 * SECS, |m| m.text() == expected)
            .await;
    }
    probe
        .wait_topic(
            "pve2mqtt/simcluster/storage/pve2/local/availability",
            10 * SECS,
            |m| m.text() == "offline",
        )
        .await;
    let vm_on_pve2 = guests.iter().find(|g| g.2 == "pve2").unwrap();
    probe
        .wait_topic(
            &format!("pve2mqtt/simcluster/{}/{}", vm_on_pve2.0, vm_on_pve2.1),
            10 * SECS,
            |m| m.json()["status"] == "unknown",
        )
        .await;
    // and pve1's running guests keep getting fresh states, on time.
    let running_on_pve1 = resources
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["node"] == "pve1"
                && r["status"] == "running"
                && (r["type"] == "qemu" || r["type"] == "lxc")
        })
        .expect("a running guest on pve1");
    let topic = format!(
        "pve2mqtt/simcluster/{}/{}",
        running_on_pve1["type"].as_str().unwrap(),
        running_on_pve1["vmid"]
    );
    let before = probe.latest(&topic).unwrap().at;
    let fresh = probe
        .wait_for("a fresh state from pve1", 10 * SECS, |m| {
            m.topic == topic && m.at > before.max(offline_at)
        })
        .await;
    assert!(fresh.at.duration_since(offline_at) < Duration::from_secs(5));
    assert_eq!(
        probe
            .latest("pve2mqtt/simcluster/node/pve1/availability")
            .unwrap()
            .text(),
        "online"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_world_publishes_nothing_on_later_polls() {
    let stage = World::builder()
        .replace("slow_interval = \"2s\"", "slow_interval = \"300s\"")
        .prepare()
        .await;
    let sim = &stage.sim;
    // A still world: no figure moves in this test (a real cluster's refresh every 10 s,
    // as the simulator's do by default), and the slow lane runs once.
    sim_send(
        sim,
        "POST",
        "/_sim/config",
        serde_json::json!({"frozen": true}),
    )
    .await;
    let w = stage.start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    wait_for_seed_discovery(probe).await;
    probe
        .wait_topic("pve2mqtt/pve/node/pve", 20 * SECS, |m| {
            m.json()["pve_version"].is_string()
        })
        .await;
    // The second poll gives the first rates; let it pass.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let polls_before = poll_count(sim).await;
    probe.clear();

    tokio::time::sleep(Duration::from_millis(3500)).await;

    let polls = poll_count(sim).await - polls_before;
    assert!(polls >= 3, "the bridge kept polling ({polls} polls)");
    let published: Vec<String> = probe.messages().iter().map(|m| m.topic.clone()).collect();
    assert!(
        published.is_empty(),
        "{polls} idle polls published: {published:?}"
    );
    w.stop().await;
}

async fn poll_count(sim: &pve_sim::SimHandle) -> u64 {
    sim_get(sim, "/_sim/counters").await["GET /cluster/resources"]
        .as_u64()
        .unwrap_or(0)
}

/// pveproxy gzips every answer over 1 KiB for a client that accepts it: at 5,000 guests
/// that is ~58 ms of zlib on Proxmox and ~5 ms of inflating in the bridge per poll, for
/// an answer of 1.6 MB on the LAN. The bridge asks for plain answers on every lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_asks_proxmox_for_plain_answers_on_every_lane() {
    let w = World::start().await;
    // The fast lane, the slow lane's first round (node details, backups) and the agent lane.
    w.probe
        .wait_topic("pve2mqtt/pve/node/pve", 20 * SECS, |m| {
            m.json()["pve_version"].is_string()
        })
        .await;
    w.probe
        .wait_topic("pve2mqtt/pve/qemu/100", 20 * SECS, |m| {
            m.json()["ip_addresses"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        })
        .await;
    let requests = requests_since(&w.sim, 0).await;
    let routes: HashSet<&str> = requests
        .iter()
        .filter_map(|r| r["route"].as_str())
        .collect();
    for route in [
        "GET /cluster/resources",
        "GET /nodes/{node}/status",
        "GET /nodes/{node}/qemu/{vmid}/agent/network-get-interfaces",
    ] {
        assert!(routes.contains(route), "{route} was read: {routes:?}");
    }
    let compressed: Vec<String> = requests
        .iter()
        .filter(|r| !r["accept_encoding"].is_null())
        .map(|r| format!("{} asked for {}", r["route"], r["accept_encoding"]))
        .collect();
    assert!(compressed.is_empty(), "{compressed:#?}");
}
