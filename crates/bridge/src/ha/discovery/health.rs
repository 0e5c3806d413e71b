//! The cluster-health entities (issue 11): Ceph and the HA manager on the cluster device,
//! a guest's HA service state and replication. Each group is announced only when the
//! cluster has it, removed (`{"p": platform}`) when the slow lane found it absent, and
//! left as it is in Home Assistant while not known yet (right after a start), so a
//! restart does not remove and re-add them.
use serde_json::{Map, Value};

use super::specs::Spec;
use crate::model::{ClusterView, ObjectRef};

/// Which health entity groups an object gets: `None` = not known yet, `Some(false)` =
/// absent (remove), `Some(true)` = present (announce).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HealthEntities {
    pub ceph: Option<bool>,
    pub ha: Option<bool>,
    pub replication: Option<bool>,
}

/// The groups of `object` in `view`.
pub(super) fn health_entities(view: &ClusterView, object: &ObjectRef) -> HealthEntities {
    let known = view.cluster.health_known;
    match object {
        ObjectRef::Cluster => HealthEntities {
            ceph: known.ceph.then_some(view.cluster.ceph.is_some()),
            ha: known.ha.then_some(view.cluster.ha.is_some()),
            replication: None,
        },
        ObjectRef::Guest(_, vmid) => match view.guests.get(vmid) {
            Some(guest) => HealthEntities {
                ceph: None,
                // The cluster list says which guests are HA-managed: known at once.
                ha: Some(guest.hastate.is_some() || guest.lanes.ha_state.is_some()),
                replication: known
                    .replication
                    .then_some(guest.lanes.replication.is_some()),
            },
            None => HealthEntities::default(),
        },
        _ => HealthEntities::default(),
    }
}

/// Ceph's overall health.
const CEPH_HEALTH: &[&str] = &["HEALTH_OK", "HEALTH_WARN", "HEALTH_ERR"];

/// The verbose HA service states (`/cluster/ha/status/current`, reference §8).
pub(super) const HA_SERVICE_STATES: &[&str] = &[
    "started",
    "stopped",
    "starting",
    "stopping",
    "disabled",
    "ignored",
    "queued",
    "deleting",
    "not found",
    "error",
    "clearing error flag",
    "fence",
    "recovery",
    "migrate",
    "relocate",
    "freeze",
    "request_stop",
    "request_start",
];

/// `{{ value_json.{a}.{b} if value_json.{a} and … in [options] else None }}`.
fn nested_enum(parent: &str, field: &str, options: &[&str]) -> String {
    let list = options
        .iter()
        .map(|o| format!("'{o}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{{{{ value_json.{parent}.{field} if value_json.{parent} and value_json.{parent}.{field} in [{list}] else None }}}}"
    )
}

fn with_icon(spec: Spec, icon: &'static str) -> Spec {
    Spec {
        icon: Some(icon),
        ..spec
    }
}

/// An `enum` sensor with its options.
fn enum_sensor(
    key: &'static str,
    name: &'static str,
    template: String,
    options: &'static [&'static str],
) -> Spec {
    Spec {
        device_class: Some("enum"),
        options: Some(options),
        ..Spec::new(key, "sensor", name, template)
    }
}

/// A `problem` binary sensor.
fn problem(key: &'static str, name: &'static str, template: &str) -> Spec {
    Spec {
        device_class: Some("problem"),
        ..Spec::new(key, "binary_sensor", name, template.to_string())
    }
}

/// A group's specs with their attributes templates (`json_attributes_template` on the
/// object's state topic).
pub(super) type Group = Vec<(Spec, Option<&'static str>)>;

fn ceph_group() -> Group {
    let checks = Some("{{ (value_json.ceph.checks if value_json.ceph else {}) | tojson }}");
    vec![
        (
            with_icon(
                enum_sensor(
                    "ceph_health",
                    "Ceph health",
                    nested_enum("ceph", "health", CEPH_HEALTH),
                    CEPH_HEALTH,
                ),
                "mdi:database-heart",
            ),
            checks,
        ),
        (
            problem(
                "ceph_problem",
                "Ceph",
                "{{ ('OFF' if value_json.ceph.health == 'HEALTH_OK' else 'ON') if value_json.ceph else None }}",
            ),
            checks,
        ),
        (
            Spec {
                state_class: Some("measurement"),
                unit: Some("%"),
                precision: Some(1),
                icon: Some("mdi:database"),
                ..Spec::new(
                    "ceph_usage",
                    "sensor",
                    "Ceph usage",
                    "{{ value_json.ceph.used_percent if value_json.ceph else None }}",
                )
            },
            None,
        ),
    ]
}

fn ha_group() -> Group {
    vec![
        (
            problem(
                "ha_problem",
                "HA manager",
                "{{ ('ON' if value_json.ha.quorate == false or value_json.ha.services_in_error else 'OFF') if value_json.ha else None }}",
            ),
            Some("{{ (value_json.ha.services if value_json.ha else {}) | tojson }}"),
        ),
        (
            Spec {
                diagnostic: true,
                icon: Some("mdi:crown"),
                ..Spec::new(
                    "ha_master",
                    "sensor",
                    "HA master",
                    "{{ value_json.ha.master if value_json.ha else None }}",
                )
            },
            None,
        ),
    ]
}

fn guest_ha_group() -> Group {
    let list = HA_SERVICE_STATES
        .iter()
        .map(|o| format!("'{o}'"))
        .collect::<Vec<_>>()
        .join(", ");
    // The HA manager's verbose state, or until it is read the cluster list's `hastate`.
    let template = format!(
        "{{% set s = value_json.ha_state or value_json.hastate %}}{{{{ s if s in [{list}] else None }}}}"
    );
    vec![(
        with_icon(
            enum_sensor("ha_state", "HA state", template, HA_SERVICE_STATES),
            "mdi:shield-sync",
        ),
        None,
    )]
}

fn replication_group() -> Group {
    vec![
        (
            with_icon(
                problem(
                    "replication",
                    "Replication",
                    "{{ ('ON' if value_json.replication.fail_count > 0 else 'OFF') if value_json.replication else None }}",
                ),
                "mdi:content-copy",
            ),
            Some("{{ (value_json.replication if value_json.replication else {}) | tojson }}"),
        ),
        (
            Spec {
                device_class: Some("timestamp"),
                icon: Some("mdi:sync"),
                ..Spec::new(
                    "last_replication",
                    "sensor",
                    "Last replication",
                    "{{ value_json.replication.last_sync | timestamp_custom('%Y-%m-%dT%H:%M:%S+00:00', false) if value_json.replication and value_json.replication.last_sync else None }}",
                )
            },
            None,
        ),
    ]
}

/// The health specs to announce for `object` (with their attributes templates); the
/// groups found absent are put in `components` as removals.
pub(super) fn health_components(
    object: &ObjectRef,
    flags: HealthEntities,
    components: &mut Map<String, Value>,
) -> Group {
    let groups: Vec<(Option<bool>, Group)> = match object {
        ObjectRef::Cluster => vec![(flags.ceph, ceph_group()), (flags.ha, ha_group())],
        ObjectRef::Guest(..) => vec![
            (flags.ha, guest_ha_group()),
            (flags.replication, replication_group()),
        ],
        _ => Vec::new(),
    };
    let mut announce = Vec::new();
    for (flag, group) in groups {
        match flag {
            None => {}
            Some(true) => announce.extend(group),
            Some(false) => {
                for (spec, _) in group {
                    components.insert(
                        spec.key.to_string(),
                        serde_json::json!({ "p": spec.platform }),
                    );
                }
            }
        }
    }
    announce
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::super::{device_config, DiscoveryContext, GuestControls};
    use crate::ha::topics::Topics;
    use crate::model::{ClusterView, HealthKnown, ObjectRef};
    use crate::pve::{CephStatus, GuestKind, Resource};

    fn view(known: HealthKnown, ceph: bool) -> ClusterView {
        let rows: Vec<Resource> = serde_json::from_value(json!([
            {"id": "node/pve", "type": "node", "node": "pve", "status": "online"},
            {"id": "qemu/100", "type": "qemu", "vmid": 100, "node": "pve", "status": "running", "hastate": "started"},
            {"id": "lxc/101", "type": "lxc", "vmid": 101, "node": "pve", "status": "running", "lock": "backup"}
        ]))
        .unwrap();
        let mut view = crate::model::tests::first_view("home", "https://pve:8006", &rows);
        view.cluster.health_known = known;
        if ceph {
            let status: CephStatus = serde_json::from_value(json!({
                "health": {"status": "HEALTH_WARN", "checks": {}},
                "pgmap": {"bytes_used": 1, "bytes_total": 4}
            }))
            .unwrap();
            view.cluster.ceph = Some(crate::model::CephState::from_status(&status));
        }
        let replicated = crate::model::replication_by_guest(&[serde_json::from_value(json!(
            {"id": "100-0", "guest": 100, "target": "pve2", "last_sync": 5, "fail_count": 0}
        ))
        .unwrap()]);
        let vm = Arc::make_mut(view.guests.get_mut(&100).unwrap());
        Arc::make_mut(&mut vm.lanes).replication = replicated.get(&100).cloned();
        view
    }

    fn payload(view: &ClusterView, object: &ObjectRef) -> serde_json::Value {
        let ctx = DiscoveryContext {
            topics: Topics::new("pve2mqtt", "homeassistant"),
            bridge_version: "0.1.0".into(),
            controls: GuestControls::none(),
            cluster_count: 1,
        };
        serde_json::from_str(&device_config(&ctx, view, object).unwrap()).unwrap()
    }

    const ALL_KNOWN: HealthKnown = HealthKnown {
        ceph: true,
        ha: true,
        replication: true,
    };

    #[test]
    fn ceph_entities_sit_on_the_cluster_device_with_the_checks_as_attributes() {
        let p = payload(&view(ALL_KNOWN, true), &ObjectRef::Cluster);
        let problem = &p["cmps"]["ceph_problem"];
        assert_eq!(problem["p"], "binary_sensor");
        assert_eq!(problem["dev_cla"], "problem");
        assert_eq!(problem["uniq_id"], "pve2mqtt_home_cluster_ceph_problem");
        assert_eq!(problem["json_attr_t"], "pve2mqtt/home/cluster");
        assert!(problem.get("ent_cat").is_none(), "a primary sensor");
        let health = &p["cmps"]["ceph_health"];
        assert_eq!(health["dev_cla"], "enum");
        assert_eq!(
            health["ops"],
            json!(["HEALTH_OK", "HEALTH_WARN", "HEALTH_ERR"])
        );
        assert_eq!(p["cmps"]["ceph_usage"]["unit_of_meas"], "%");
        assert_eq!(p["cmps"]["ceph_usage"]["stat_cla"], "measurement");
        // No HA resource: the HA entities are removed.
        assert_eq!(p["cmps"]["ha_problem"], json!({"p": "binary_sensor"}));
        assert_eq!(p["cmps"]["ha_master"], json!({"p": "sensor"}));
    }

    #[test]
    fn health_entities_are_left_alone_until_the_slow_lane_has_asked() {
        let p = payload(&view(HealthKnown::default(), false), &ObjectRef::Cluster);
        for key in [
            "ceph_health",
            "ceph_problem",
            "ceph_usage",
            "ha_problem",
            "ha_master",
        ] {
            assert!(p["cmps"].get(key).is_none(), "{key}");
        }
        let vm = payload(
            &view(HealthKnown::default(), false),
            &ObjectRef::Guest(GuestKind::Qemu, 100),
        );
        assert!(vm["cmps"].get("replication").is_none());
        // The HA state needs no slow-lane answer: `hastate` is in the cluster list.
        assert_eq!(vm["cmps"]["ha_state"]["dev_cla"], "enum");
    }

    #[test]
    fn guests_get_lock_and_ha_managed_and_replication_where_they_have_it() {
        let v = view(ALL_KNOWN, false);
        let vm = payload(&v, &ObjectRef::Guest(GuestKind::Qemu, 100));
        let replication = &vm["cmps"]["replication"];
        assert_eq!(replication["dev_cla"], "problem");
        assert_eq!(replication["uniq_id"], "pve2mqtt_home_100_replication");
        assert_eq!(replication["json_attr_t"], "pve2mqtt/home/qemu/100");
        assert_eq!(vm["cmps"]["last_replication"]["dev_cla"], "timestamp");
        assert_eq!(vm["cmps"]["ha_managed"]["ent_cat"], "diagnostic");
        assert_eq!(vm["cmps"]["lock"]["dev_cla"], "enum");
        let ct = payload(&v, &ObjectRef::Guest(GuestKind::Lxc, 101));
        assert_eq!(ct["cmps"]["replication"], json!({"p": "binary_sensor"}));
        assert_eq!(ct["cmps"]["last_replication"], json!({"p": "sensor"}));
        assert_eq!(ct["cmps"]["ha_state"], json!({"p": "sensor"}));
        assert!(ct["cmps"]["lock"]["val_tpl"]
            .as_str()
            .unwrap()
            .contains("'backup'"));
    }
}
