use super::*;
use crate::pve::Resource;

fn view() -> ClusterView {
    let rows: Vec<Resource> = serde_json::from_value(serde_json::json!([
        {"id": "node/pve", "type": "node", "node": "pve", "status": "online"},
        {"id": "qemu/100", "type": "qemu", "vmid": 100, "node": "pve", "status": "running", "name": "home-assistant"},
        {"id": "lxc/101", "type": "lxc", "vmid": 101, "node": "pve", "status": "running", "name": "mqtt"},
        {"id": "storage/pve/local", "type": "storage", "node": "pve", "storage": "local", "status": "available", "plugintype": "dir"}
    ]))
    .unwrap();
    crate::model::tests::first_view("home", "https://pve:8006", &rows)
}

fn ctx() -> DiscoveryContext {
    DiscoveryContext {
        topics: Topics::new("pve2mqtt", "homeassistant"),
        bridge_version: "0.1.0".into(),
        controls: GuestControls::new(|_| true),
    }
}

fn payload(object: &ObjectRef) -> Value {
    serde_json::from_str(&device_config(&ctx(), &view(), object).unwrap()).unwrap()
}

/// HA rejects a whole payload whose unit does not fit its device class, and refuses
/// entity_category `config` on sensors (reference/ha-discovery.md §4, §10).
#[test]
fn every_component_follows_home_assistants_unit_rules() {
    let v = view();
    for object in v.objects() {
        let p = payload(&object);
        for (key, c) in p["cmps"].as_object().unwrap() {
            let unit = c["unit_of_meas"].as_str();
            match c["dev_cla"].as_str() {
                Some("data_size") => assert_eq!(unit, Some("B"), "{key}"),
                Some("data_rate") => assert_eq!(unit, Some("B/s"), "{key}"),
                Some("duration") => assert_eq!(unit, Some("s"), "{key}"),
                Some("timestamp") | Some("running") | Some("restart") => {
                    assert_eq!(unit, None, "{key}")
                }
                Some(other) => panic!("unexpected device class {other} on {key}"),
                None => {}
            }
            if unit == Some("%") {
                assert!(
                    c["dev_cla"].is_null(),
                    "percentages have no device class ({key})"
                );
            }
            assert_ne!(c["ent_cat"], "config", "{key}");
            assert!(
                matches!(
                    c["p"].as_str(),
                    Some("sensor" | "binary_sensor" | "button" | "switch")
                ),
                "{key}"
            );
            assert_eq!(c["qos"], 1);
        }
    }
}

#[test]
fn guest_payload_links_to_its_node_and_names_the_entities_stably() {
    let p = payload(&ObjectRef::Guest(GuestKind::Qemu, 100));
    assert_eq!(p["dev"]["ids"][0], "pve2mqtt_home_100");
    assert_eq!(p["dev"]["name"], "home-assistant");
    assert_eq!(p["dev"]["via_device"], "pve2mqtt_home_node_pve");
    assert_eq!(p["dev"]["cu"], "https://pve:8006/#v1:0:=qemu%2F100");
    assert_eq!(p["stat_t"], "pve2mqtt/home/qemu/100");
    assert_eq!(p["avty"][1]["t"], "pve2mqtt/home/qemu/100/availability");
    assert_eq!(p["cmps"]["cpu"]["uniq_id"], "pve2mqtt_home_100_cpu");
    assert_eq!(p["cmps"]["running"]["p"], "binary_sensor");
    assert!(
        p["cmps"].get("disk_used").is_none(),
        "a VM's disk usage is unknown to Proxmox"
    );
    let ct = payload(&ObjectRef::Guest(GuestKind::Lxc, 101));
    assert!(ct["cmps"].get("disk_used").is_some());
}

#[test]
fn device_info_changes_on_rename_and_migration_but_ids_do_not() {
    let mut v = view();
    let object = ObjectRef::Guest(GuestKind::Qemu, 100);
    let before = device_info(&ctx(), &v, &object).unwrap();
    std::sync::Arc::make_mut(v.guests.get_mut(&100).unwrap()).node = "pve2".into();
    let migrated = device_info(&ctx(), &v, &object).unwrap();
    assert_ne!(before, migrated);
    assert_eq!(
        migrated.via_device.as_deref(),
        Some("pve2mqtt_home_node_pve2")
    );
    let p: Value = serde_json::from_str(&device_config(&ctx(), &v, &object).unwrap()).unwrap();
    assert_eq!(p["cmps"]["cpu"]["uniq_id"], "pve2mqtt_home_100_cpu");
}

#[test]
fn control_entities_follow_the_guest_type_and_the_policy() {
    let vm = payload(&ObjectRef::Guest(GuestKind::Qemu, 100));
    let cmps = vm["cmps"].as_object().unwrap();
    for action in [
        "start",
        "stop",
        "shutdown",
        "reboot",
        "reset",
        "suspend",
        "resume",
        "hibernate",
        "backup",
    ] {
        assert_eq!(cmps[action]["p"], "button", "{action}");
        assert_eq!(cmps[action]["pl_prs"], action);
        assert_eq!(cmps[action]["cmd_t"], "pve2mqtt/home/qemu/100/set");
    }
    assert_eq!(cmps["power"]["p"], "switch");
    assert_eq!(cmps["power"]["pl_on"], "start");
    assert_eq!(cmps["power"]["pl_off"], "shutdown");
    assert!(
        cmps["power"].get("opt").is_none(),
        "state comes from the guest, not optimistic"
    );
    assert_eq!(
        cmps["last_command"]["stat_t"],
        "pve2mqtt/home/qemu/100/task"
    );
    let ct = payload(&ObjectRef::Guest(GuestKind::Lxc, 101));
    assert!(ct["cmps"].get("reset").is_none() && ct["cmps"].get("hibernate").is_none());
    assert_eq!(ct["cmps"]["backup"]["p"], "button");

    // read-only: every control component is reduced to its platform (= removed in HA)
    let mut read_only = ctx();
    read_only.controls = GuestControls::none();
    let p: Value = serde_json::from_str(
        &device_config(&read_only, &view(), &ObjectRef::Guest(GuestKind::Qemu, 100)).unwrap(),
    )
    .unwrap();
    assert_eq!(p["cmps"]["start"], serde_json::json!({"p": "button"}));
    assert_eq!(p["cmps"]["power"], serde_json::json!({"p": "switch"}));
    assert_eq!(p["cmps"]["cpu"]["p"], "sensor", "sensors stay");
}

#[test]
fn a_guest_without_name_gets_a_readable_device_name() {
    let mut v = view();
    std::sync::Arc::make_mut(v.guests.get_mut(&101).unwrap()).name = None;
    assert_eq!(
        device_info(&ctx(), &v, &ObjectRef::Guest(GuestKind::Lxc, 101))
            .unwrap()
            .name,
        "CT 101"
    );
}
