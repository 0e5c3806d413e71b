//! The node-health entities (issue 11): extra sensors on the node device, and the
//! entities of a physical disk's and a ZFS pool's own devices.
//!
//! - A disk's SMART verdict is a `problem` binary sensor: `PASSED`/`OK` is OK, any other
//!   text (`FAILED!`, a SAS sense text) is a problem, and `UNKNOWN` (SMART could not tell:
//!   USB bridges, some SAS disks, `SMART Disabled`) is HA's unknown, not a false alarm.
//! - A pool is a problem whenever its health is not `ONLINE`; the health itself is an
//!   `enum` sensor.
use super::{enum_template, Spec};

/// `zpool list` health values.
pub(in crate::ha::discovery) const ZFS_HEALTH: &[&str] = &[
    "ONLINE",
    "DEGRADED",
    "FAULTED",
    "OFFLINE",
    "UNAVAIL",
    "REMOVED",
    "SUSPENDED",
];

/// Subscription levels as the node state words them.
const SUBSCRIPTIONS: &[&str] = &["none", "community", "basic", "standard", "premium"];

/// The update entities of a node whose updates are not read (`poll.updates` off, or no
/// `Sys.Modify`): sent as `{"p": …}`, which removes them if an earlier run announced them.
pub(in crate::ha::discovery) const UPDATES_RETIRED: &[(&str, &str)] =
    &[("update", "update"), ("updates_pending", "sensor")];

/// Added to the node's entities. `updates`: also the update entity and the pending count
/// (only once the node's updates were read: `poll.updates` on and `Sys.Modify` granted).
pub(in crate::ha::discovery) fn node_health_specs(updates: bool) -> Vec<Spec> {
    let mut specs = vec![
        Spec::percent("io_delay", "IO delay", "{{ value_json.io_delay }}").icon("mdi:timer-sand"),
        Spec {
            device_class: Some("enum"),
            options: Some(SUBSCRIPTIONS),
            ..Spec::sensor(
                "subscription",
                "Subscription",
                enum_template("subscription", SUBSCRIPTIONS),
            )
        }
        .diagnostic()
        .icon("mdi:license"),
        Spec::binary(
            "reboot_required",
            "Reboot required",
            "{{ None if value_json.reboot_required is none else ('ON' if value_json.reboot_required else 'OFF') }}",
        )
        .icon("mdi:restart-alert"),
        Spec {
            device_class: Some("timestamp"),
            ..Spec::sensor(
                "certificate_expires",
                "Certificate expires",
                "{{ as_datetime(value_json.certificate_expires) if value_json.certificate_expires is number else None }}",
            )
        }
        .diagnostic()
        .icon("mdi:certificate"),
    ];
    if updates {
        specs.push(Spec::new(
            "update",
            "update",
            "Proxmox VE",
            "{{ {'installed_version': value_json.updates.installed, 'latest_version': value_json.updates.latest} | to_json if value_json.updates else '' }}",
        ));
        specs.push(
            Spec {
                state_class: Some("measurement"),
                ..Spec::sensor(
                    "updates_pending",
                    "Pending updates",
                    "{{ value_json.updates.pending if value_json.updates else None }}",
                )
            }
            .icon("mdi:package-up"),
        );
    }
    specs
}

/// A physical disk's device: SMART problem, wearout, size (the model is the device's).
pub(in crate::ha::discovery) fn disk_specs() -> Vec<Spec> {
    vec![
        Spec {
            device_class: Some("problem"),
            ..Spec::binary(
                "smart",
                "SMART",
                "{{ None if value_json.problem is none else ('ON' if value_json.problem else 'OFF') }}",
            )
        },
        Spec::sensor("health", "SMART health", "{{ value_json.health }}")
            .diagnostic()
            .icon("mdi:heart-pulse"),
        Spec::percent(
            "wearout",
            "Life left",
            "{{ value_json.wearout if value_json.wearout is number else None }}",
        )
        .icon("mdi:harddisk"),
        Spec::bytes("size", "Size", "size").fixed().diagnostic(),
    ]
}

/// A ZFS pool's device: health (enum and problem), sizes, fragmentation.
pub(in crate::ha::discovery) fn zfs_specs() -> Vec<Spec> {
    vec![
        Spec::status("health", "Health", "health", ZFS_HEALTH).icon("mdi:database-check"),
        Spec {
            device_class: Some("problem"),
            ..Spec::binary(
                "problem",
                "Problem",
                "{{ 'ON' if value_json.problem else 'OFF' }}",
            )
        },
        Spec::bytes("size", "Size", "size").fixed(),
        Spec::bytes("alloc", "Allocated", "alloc"),
        Spec::bytes("free", "Free", "free"),
        Spec::percent(
            "frag",
            "Fragmentation",
            "{{ value_json.frag if value_json.frag is number else None }}",
        )
        .diagnostic(),
    ]
}
