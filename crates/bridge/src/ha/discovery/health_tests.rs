//! Discovery of the node-health entities: disk and pool devices, node additions.
use super::*;
use crate::model::{build_view, NodeHealthData, RateMemory, SlowData};
use crate::pve::Resource;

fn view(updates: bool) -> ClusterView {
    let rows: Vec<Resource> = serde_json::from_value(serde_json::json!([
        {"id": "node/pve", "type": "node", "node": "pve", "status": "online", "level": "c"}
    ]))
    .unwrap();
    let disks = serde_json::from_value(serde_json::json!([
        {"devpath": "/dev/nvme0n1", "type": "nvme", "size": 1000204886016u64,
         "model": "Samsung SSD 980 PRO 1TB", "serial": "S5GX", "health": "PASSED", "wearout": 97},
        {"devpath": "/dev/sdb", "type": "hdd", "size": 4000787030016u64,
         "model": "ST4000DM004", "serial": "ZFN0", "health": "FAILED!", "wearout": "N/A"},
        {"devpath": "/dev/sdc", "type": "usb", "model": "unknown", "health": "UNKNOWN", "wearout": "N/A"}
    ]))
    .unwrap();
    let pools = serde_json::from_value(serde_json::json!([
        {"name": "tank", "size": 100, "alloc": 40, "free": 60, "frag": 21, "dedup": 1, "health": "DEGRADED"}
    ]))
    .unwrap();
    let updates = updates.then(|| {
        serde_json::from_value(serde_json::json!([
            {"Package": "pve-manager", "OldVersion": "9.1.5", "Version": "9.1.6"}
        ]))
        .unwrap()
    });
    let mut slow = SlowData::default();
    slow.node_health.insert(
        "pve".into(),
        NodeHealthData {
            disks: Some(disks),
            zfs: Some(pools),
            updates,
            reboot_required: Some(true),
            certificate_expires: Some(1_800_000_000),
        },
    );
    build_view(
        "home",
        "https://pve:8006",
        &rows,
        &slow,
        &mut RateMemory::default(),
        0.0,
        None,
    )
}

fn ctx() -> DiscoveryContext {
    DiscoveryContext {
        topics: Topics::new("pve2mqtt", "homeassistant"),
        bridge_version: "0.1.0".into(),
        controls: GuestControls::none(),
        cluster_count: 1,
    }
}

fn payload(view: &ClusterView, object: &ObjectRef) -> Value {
    serde_json::from_str(&device_config(&ctx(), view, object).unwrap()).unwrap()
}

#[test]
fn a_disk_is_a_device_via_its_node_with_a_smart_problem_sensor() {
    let v = view(false);
    let disk = ObjectRef::Disk("pve".into(), "sdb".into());
    let p = payload(&v, &disk);
    assert_eq!(p["dev"]["ids"][0], "pve2mqtt_home_disk_pve_sdb");
    assert_eq!(p["dev"]["name"], "sdb on pve");
    assert_eq!(p["dev"]["mdl"], "ST4000DM004");
    assert_eq!(p["dev"]["via_device"], "pve2mqtt_home_node_pve");
    assert_eq!(p["stat_t"], "pve2mqtt/home/disk/pve/sdb");
    assert_eq!(p["avty"][1]["t"], "pve2mqtt/home/disk/pve/sdb/availability");
    let smart = &p["cmps"]["smart"];
    assert_eq!(smart["p"], "binary_sensor");
    assert_eq!(smart["dev_cla"], "problem");
    assert_eq!(smart["uniq_id"], "pve2mqtt_home_disk_pve_sdb_smart");
    assert!(smart["ent_cat"].is_null(), "a primary sensor");
    let wearout = &p["cmps"]["wearout"];
    assert_eq!(wearout["unit_of_meas"], "%");
    let size = &p["cmps"]["size"];
    assert_eq!(size["dev_cla"], "data_size");
    assert_eq!(size["ent_cat"], "diagnostic");
    // A disk without a model is named for what it is.
    let usb = payload(&v, &ObjectRef::Disk("pve".into(), "sdc".into()));
    assert_eq!(usb["dev"]["mdl"], "Physical disk");
}

#[test]
fn disk_state_says_problem_for_failed_and_null_for_unknown() {
    let v = view(false);
    let state =
        |d: &str| serde_json::to_value(&v.disks[&("pve".to_string(), d.to_string())]).unwrap();
    let failing = state("sdb");
    assert_eq!(failing["health"], "FAILED!");
    assert_eq!(failing["problem"], true);
    assert_eq!(failing["wearout"], Value::Null);
    assert_eq!(failing["type"], "hdd");
    assert_eq!(state("nvme0n1")["problem"], false);
    assert_eq!(state("nvme0n1")["wearout"], 97.0);
    assert_eq!(state("sdc")["problem"], Value::Null);
}

#[test]
fn a_zfs_pool_has_an_enum_health_and_a_problem_sensor_on_its_own_device() {
    let v = view(false);
    let pool = ObjectRef::Zfs("pve".into(), "tank".into());
    let p = payload(&v, &pool);
    assert_eq!(p["dev"]["ids"][0], "pve2mqtt_home_zfs_pve_tank");
    assert_eq!(p["dev"]["mdl"], "ZFS pool");
    assert_eq!(p["dev"]["via_device"], "pve2mqtt_home_node_pve");
    assert_eq!(p["stat_t"], "pve2mqtt/home/zfs/pve/tank");
    let health = &p["cmps"]["health"];
    assert_eq!(health["dev_cla"], "enum");
    assert!(health["ops"]
        .as_array()
        .unwrap()
        .contains(&Value::from("DEGRADED")));
    assert_eq!(p["cmps"]["problem"]["dev_cla"], "problem");
    for key in ["size", "alloc", "free"] {
        assert_eq!(p["cmps"][key]["unit_of_meas"], "GiB", "{key}");
    }
    assert_eq!(p["cmps"]["frag"]["unit_of_meas"], "%");
    let state = serde_json::to_value(&v.zfs[&("pve".to_string(), "tank".to_string())]).unwrap();
    assert_eq!(state["problem"], true);
    assert_eq!(state["health"], "DEGRADED");
    assert_eq!(state["frag"], 21);
}

#[test]
fn the_node_gets_io_delay_subscription_reboot_and_certificate_and_updates_once_read() {
    let without = payload(&view(false), &ObjectRef::Node("pve".into()));
    let cmps = without["cmps"].as_object().unwrap();
    for key in [
        "io_delay",
        "subscription",
        "reboot_required",
        "certificate_expires",
    ] {
        assert!(cmps.contains_key(key), "{key}");
    }
    assert_eq!(
        cmps["update"],
        serde_json::json!({"p": "update"}),
        "no update entity before updates are read (removed if announced before)"
    );
    assert_eq!(cmps["updates_pending"], serde_json::json!({"p": "sensor"}));
    assert_eq!(cmps["certificate_expires"]["dev_cla"], "timestamp");
    assert_eq!(cmps["subscription"]["dev_cla"], "enum");
    assert_eq!(cmps["subscription"]["ent_cat"], "diagnostic");
    let with = payload(&view(true), &ObjectRef::Node("pve".into()));
    let update = &with["cmps"]["update"];
    assert_eq!(update["p"], "update");
    assert_eq!(update["uniq_id"], "pve2mqtt_home_node_pve_update");
    assert!(update["val_tpl"]
        .as_str()
        .unwrap()
        .contains("latest_version"));
    assert_eq!(with["cmps"]["updates_pending"]["p"], "sensor");
    let node = serde_json::to_value(&view(true).nodes["pve"]).unwrap();
    assert_eq!(node["subscription"], "community");
    assert_eq!(node["reboot_required"], true);
    assert_eq!(node["certificate_expires"], 1_800_000_000u64);
    assert_eq!(
        node["updates"],
        serde_json::json!({"pending": 1, "installed": "9.1.5", "latest": "9.1.6"})
    );
}

#[test]
fn disks_and_pools_are_unavailable_while_their_node_is_offline() {
    let mut v = view(false);
    let disk = ObjectRef::Disk("pve".into(), "sdb".into());
    let pool = ObjectRef::Zfs("pve".into(), "tank".into());
    assert!(v.is_available(&disk) && v.is_available(&pool));
    v.nodes.get_mut("pve").unwrap().status = "offline".into();
    assert!(!v.is_available(&disk) && !v.is_available(&pool));
}
