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
        cluster_count: 1,
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
            if c.as_object().unwrap().len() == 1 {
                // `{"p": platform}`: removes an entity of an earlier version.
                continue;
            }
            let unit = c["unit_of_meas"].as_str();
            match c["dev_cla"].as_str() {
                Some("data_size") => assert_eq!(unit, Some("GiB"), "{key}"),
                Some("data_rate") => assert_eq!(unit, Some("KiB/s"), "{key}"),
                Some("timestamp") | Some("running") | Some("restart") | Some("connectivity")
                | Some("problem") => {
                    assert_eq!(unit, None, "{key}")
                }
                Some("enum") => {
                    assert_eq!(unit, None, "{key}");
                    assert!(c["stat_cla"].is_null(), "{key}");
                    assert!(c["ops"].as_array().is_some_and(|o| !o.is_empty()), "{key}");
                }
                Some(other) => panic!("unexpected device class {other} on {key}"),
                None => {}
            }
            if c.get("ops").is_some() {
                assert_eq!(c["dev_cla"], "enum", "options only with enum ({key})");
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
                    Some("sensor" | "binary_sensor" | "button" | "switch" | "update")
                ),
                "{key}"
            );
            assert_eq!(c["qos"], 1);
        }
    }
}

/// The `enum` sensors list their values, and their template turns anything else into
/// `None` (unknown in HA) instead of a value HA would refuse with an error.
#[test]
fn status_sensors_are_enums_whose_template_maps_other_values_to_none() {
    let guest = payload(&ObjectRef::Guest(GuestKind::Qemu, 100));
    let node = payload(&ObjectRef::Node("pve".into()));
    let cases = [
        (
            &guest["cmps"]["status"],
            "status",
            vec!["running", "stopped", "paused", "suspended", "unknown"],
        ),
        (
            &node["cmps"]["status"],
            "status",
            vec!["online", "offline", "unknown"],
        ),
        (
            &guest["cmps"]["last_command"],
            "state",
            vec!["accepted", "running", "ok", "failed", "rejected"],
        ),
    ];
    for (c, field, options) in cases {
        assert_eq!(c["dev_cla"], "enum");
        assert_eq!(c["ops"], serde_json::json!(options));
        let list = options
            .iter()
            .map(|o| format!("'{o}'"))
            .collect::<Vec<_>>()
            .join(", ");
        assert_eq!(
            c["val_tpl"],
            format!("{{{{ value_json.{field} if value_json.{field} in [{list}] else None }}}}")
        );
    }
}

/// An uptime changes on every poll, and HA records each change: the boot time does not.
#[test]
fn uptime_gives_way_to_a_started_timestamp_and_the_old_entity_is_removed() {
    for object in [
        ObjectRef::Guest(GuestKind::Qemu, 100),
        ObjectRef::Guest(GuestKind::Lxc, 101),
        ObjectRef::Node("pve".into()),
    ] {
        let p = payload(&object);
        let started = &p["cmps"]["started"];
        assert_eq!(started["p"], "sensor");
        assert_eq!(started["name"], "Started");
        assert_eq!(started["dev_cla"], "timestamp");
        assert!(started["stat_cla"].is_null() && started["unit_of_meas"].is_null());
        assert_eq!(
            started["val_tpl"],
            "{{ as_datetime(value_json.started) if value_json.started is number else None }}"
        );
        assert_eq!(
            p["cmps"]["uptime"],
            serde_json::json!({"p": "sensor"}),
            "{object}"
        );
        for (key, c) in p["cmps"].as_object().unwrap() {
            assert_ne!(c["stat_cla"], "total_increasing", "{key}");
        }
    }
}

/// The node's connectivity (and status) say "offline" as a state: their availability is
/// the bridge and the cluster's Proxmox API, not the node's own availability topic.
#[test]
fn a_nodes_connectivity_does_not_depend_on_the_nodes_availability() {
    let p = payload(&ObjectRef::Node("pve".into()));
    let own = serde_json::json!([
        {"t": "pve2mqtt/bridge/state"},
        {"t": "pve2mqtt/bridge/proxmox/home"},
    ]);
    let c = &p["cmps"]["connectivity"];
    assert_eq!(c["p"], "binary_sensor");
    assert_eq!(c["dev_cla"], "connectivity");
    assert_eq!(c["avty"], own);
    assert_eq!(
        c["val_tpl"],
        "{{ 'ON' if value_json.status == 'online' else 'OFF' }}"
    );
    assert_eq!(p["cmps"]["status"]["avty"], own);
    // every other entity keeps the device's list (bridge + node)
    assert!(p["cmps"]["cpu"].get("avty").is_none());
    assert_eq!(p["avty"][1]["t"], "pve2mqtt/home/node/pve/availability");
}

#[test]
fn sizes_read_in_gib_rates_in_kib_per_second_and_fixed_sizes_keep_no_statistics() {
    let guest = payload(&ObjectRef::Guest(GuestKind::Lxc, 101));
    let storage = payload(&ObjectRef::Storage("pve".into(), "local".into()));
    let size = &guest["cmps"]["disk_size"];
    assert_eq!(size["unit_of_meas"], "GiB");
    assert_eq!(
        size["val_tpl"],
        "{{ (value_json.maxdisk / 1073741824) | round(2) if value_json.maxdisk is number else None }}"
    );
    assert!(size["stat_cla"].is_null(), "a disk size never changes");
    assert!(storage["cmps"]["total"]["stat_cla"].is_null());
    assert_eq!(storage["cmps"]["used"]["stat_cla"], "measurement");
    assert_eq!(guest["cmps"]["memory_used"]["stat_cla"], "measurement");
    assert_eq!(guest["cmps"]["memory_used"]["sug_dsp_prc"], 1);
    let rate = &guest["cmps"]["network_in"];
    assert_eq!(rate["unit_of_meas"], "KiB/s");
    assert_eq!(
        rate["val_tpl"],
        "{{ (value_json.netin_rate / 1024) | round(1) if value_json.netin_rate is number else None }}"
    );
}

#[test]
fn an_inactive_storage_is_a_problem_on_the_storage_device() {
    let p = payload(&ObjectRef::Storage("pve".into(), "local".into()));
    let c = &p["cmps"]["problem"];
    assert_eq!(c["p"], "binary_sensor");
    assert_eq!(c["dev_cla"], "problem");
    assert!(c["ent_cat"].is_null(), "a primary entity, not diagnostic");
    assert_eq!(c["val_tpl"], "{{ 'OFF' if value_json.active else 'ON' }}");
    assert_eq!(
        p["cmps"]["active"],
        serde_json::json!({"p": "binary_sensor"})
    );
}

/// HA shows "device name + entity name": no entity repeats what the device name says.
#[test]
fn entity_names_read_well_after_the_device_name_and_origin_links_the_project() {
    let v = view();
    for object in v.objects() {
        let p = payload(&object);
        assert_eq!(p["o"]["name"], "pve2mqtt");
        assert!(
            p["o"]["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("https://")),
            "{}",
            p["o"]
        );
        for (key, c) in p["cmps"].as_object().unwrap() {
            let Some(name) = c["name"].as_str() else {
                continue;
            };
            assert!(!name.contains("Proxmox"), "{object} {key}: {name}");
            assert!(!name.contains("Available"), "{object} {key}: {name}");
        }
    }
    let storage = payload(&ObjectRef::Storage("pve".into(), "local".into()));
    assert_eq!(storage["cmps"]["available"]["name"], "Free");
    assert_eq!(
        payload(&ObjectRef::Cluster)["cmps"]["pve_version"]["name"],
        "Version"
    );
    assert_eq!(
        payload(&ObjectRef::Node("pve".into()))["cmps"]["pve_version"]["name"],
        "Version"
    );
}

#[test]
fn the_bridge_device_has_its_version_a_proxmox_api_sensor_per_cluster_and_a_refresh_button() {
    let p: Value = serde_json::from_str(&bridge_config(&ctx(), &["home"])).unwrap();
    assert_eq!(p["dev"]["ids"][0], "pve2mqtt_bridge");
    assert_eq!(p["dev"]["name"], "pve2mqtt bridge");
    assert_eq!(p["dev"]["sw"], "0.1.0");
    assert_eq!(p["o"]["name"], "pve2mqtt");
    assert_eq!(
        p["avty"],
        serde_json::json!([{"t": "pve2mqtt/bridge/state"}])
    );
    let api = &p["cmps"]["proxmox_home"];
    assert_eq!(api["p"], "binary_sensor");
    assert_eq!(api["name"], "Proxmox API");
    assert_eq!(api["dev_cla"], "connectivity");
    assert_eq!(api["uniq_id"], "pve2mqtt_bridge_proxmox_home");
    assert_eq!(api["stat_t"], "pve2mqtt/bridge/proxmox/home");
    assert_eq!(
        (api["pl_on"].as_str(), api["pl_off"].as_str()),
        (Some("online"), Some("offline"))
    );
    let refresh = &p["cmps"]["refresh"];
    assert_eq!(refresh["p"], "button");
    assert_eq!(refresh["cmd_t"], "pve2mqtt/bridge/request/refresh");
    assert_eq!(
        refresh["pl_prs"], "{}",
        "the request's JSON, not HA's default PRESS"
    );
    assert_eq!(refresh["uniq_id"], "pve2mqtt_bridge_refresh");

    // Several clusters: one sensor each, named by cluster id.
    let mut two = ctx();
    two.cluster_count = 2;
    let p: Value = serde_json::from_str(&bridge_config(&two, &["home", "lab.x"])).unwrap();
    assert_eq!(p["cmps"]["proxmox_home"]["name"], "Proxmox API home");
    assert_eq!(p["cmps"]["proxmox_lab_x"]["name"], "Proxmox API lab.x");
    assert_eq!(
        p["cmps"]["proxmox_lab_x"]["stat_t"],
        "pve2mqtt/bridge/proxmox/lab.x"
    );
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

/// Issue 12: a guest's "Last task" reads its own retained topic, with the task as
/// attributes; a node counts its failed tasks of the last 24 h (unknown when unread).
#[test]
fn a_guest_has_a_last_task_sensor_and_a_node_a_failed_tasks_sensor() {
    let guest = payload(&ObjectRef::Guest(GuestKind::Qemu, 100));
    let last = &guest["cmps"]["last_task"];
    assert_eq!(last["p"], "sensor");
    assert_eq!(last["uniq_id"], "pve2mqtt_home_100_last_task");
    assert_eq!(last["stat_t"], "pve2mqtt/home/qemu/100/last_task");
    assert_eq!(last["json_attr_t"], "pve2mqtt/home/qemu/100/last_task");
    assert_eq!(last["dev_cla"], "enum");
    assert_eq!(last["ent_cat"], "diagnostic");
    assert!(last.get("en").is_none(), "enabled by default");
    let node = payload(&ObjectRef::Node("pve".into()));
    let failed = &node["cmps"]["failed_tasks"];
    assert_eq!(failed["uniq_id"], "pve2mqtt_home_node_pve_failed_tasks");
    assert_eq!(failed["stat_cla"], "measurement");
    assert!(failed["val_tpl"]
        .as_str()
        .unwrap()
        .contains("value_json.failed_tasks_24h is number"));
}

/// Issue 12: backup health per guest, as HA entities.
#[test]
fn a_guest_has_backup_health_entities() {
    let guest = payload(&ObjectRef::Guest(GuestKind::Lxc, 101));
    let c = &guest["cmps"];
    assert_eq!(c["last_backup_status"]["dev_cla"], "enum");
    assert_eq!(
        c["last_backup_status"]["ops"],
        serde_json::json!(["ok", "warnings", "failed"])
    );
    assert_eq!(c["backup_stale"]["p"], "binary_sensor");
    assert_eq!(c["backup_stale"]["dev_cla"], "problem");
    assert_eq!(c["backup_uncovered"]["dev_cla"], "problem");
    assert_eq!(
        c["backup_uncovered"]["uniq_id"],
        "pve2mqtt_home_101_backup_uncovered"
    );
    assert_eq!(c["last_backup_size"]["unit_of_meas"], "GiB");
    assert_eq!(c["last_backup_size"]["ent_cat"], "diagnostic");
    assert_eq!(c["backup_verification"]["en"], false);
}

#[test]
fn snapshots_are_a_count_and_a_timestamp_and_no_snapshot_action_gets_a_button() {
    for (kind, vmid) in [(GuestKind::Qemu, 100), (GuestKind::Lxc, 101)] {
        let p = payload(&ObjectRef::Guest(kind, vmid));
        let cmps = &p["cmps"];
        assert_eq!(cmps["snapshots"]["p"], "sensor");
        assert_eq!(cmps["snapshots"]["stat_cla"], "measurement");
        assert!(cmps["snapshots"].get("dev_cla").is_none());
        assert_eq!(
            cmps["snapshots"]["uniq_id"],
            format!("pve2mqtt_home_{vmid}_snapshots")
        );
        assert_eq!(cmps["snapshot_latest"]["dev_cla"], "timestamp");
        assert!(cmps["snapshot_latest"].get("stat_cla").is_none());
        assert!(cmps["snapshot_latest"]["val_tpl"]
            .as_str()
            .unwrap()
            .contains("snapshot_latest_time"));
        assert!(cmps["snapshot_latest"].get("ent_cat").is_none());
        for action in ["snapshot", "rollback", "delete_snapshot"] {
            assert!(cmps.get(action).is_none(), "no {action} button");
        }
    }
}

#[test]
fn the_guest_agent_entities_and_a_vms_disk_used_once_the_agent_reported_it() {
    let mut view = view();
    let vm = std::sync::Arc::make_mut(view.guests.get_mut(&100).unwrap());
    std::sync::Arc::make_mut(&mut vm.lanes).disk_from_agent = true;
    let object = ObjectRef::Guest(GuestKind::Qemu, 100);
    let info = device_info(&ctx(), &view, &object).unwrap();
    assert!(
        info.disk_used,
        "the discovery inputs change, so it is sent again"
    );
    let p: Value = serde_json::from_str(&device_config(&ctx(), &view, &object).unwrap()).unwrap();
    let cmps = &p["cmps"];
    assert_eq!(cmps["disk_used"]["uniq_id"], "pve2mqtt_home_100_disk_used");
    assert_eq!(cmps["disk_used"]["dev_cla"], "data_size");
    assert_eq!(cmps["agent"]["p"], "binary_sensor");
    assert_eq!(cmps["agent"]["dev_cla"], "connectivity");
    assert_eq!(cmps["agent"]["ent_cat"], "diagnostic");
    assert_eq!(cmps["agent"]["name"], "Agent responding");
    assert_eq!(cmps["os"]["p"], "sensor");
    assert_eq!(cmps["os"]["ent_cat"], "diagnostic");
    assert_eq!(cmps["ip_address"]["json_attr_t"], "pve2mqtt/home/qemu/100");
    assert_eq!(
        cmps["ip_address"]["json_attr_tpl"],
        "{{ {'ip_addresses': value_json.ip_addresses} | tojson }}"
    );
    assert!(
        cmps["ip_address"].get("ent_cat").is_none(),
        "a primary sensor"
    );
    // A container: addresses from its interfaces, no agent, no OS
    let ct = payload(&ObjectRef::Guest(GuestKind::Lxc, 101));
    assert!(ct["cmps"].get("ip_address").is_some());
    assert!(ct["cmps"].get("agent").is_none() && ct["cmps"].get("os").is_none());
}
