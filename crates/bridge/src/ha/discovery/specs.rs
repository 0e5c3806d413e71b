//! The entities of each object type: one [`Spec`] per sensor, with its template, unit
//! and Home Assistant classes.
//!
//! How they read in Home Assistant (which shows "device name + entity name"):
//! - States with a known set of values (guest and node status, a command's state) are
//!   `enum` sensors with their `options`; a value outside the list becomes unknown
//!   rather than an error in HA's log.
//! - Sizes are sent to HA in GiB and rates in KiB/s, converted and rounded by the value
//!   template: HA's MQTT sensor has no `suggested_unit_of_measurement`, so the unit of
//!   the entity is what HA shows (`34359738368 B` reads badly). HA can still convert
//!   them (`data_size`/`data_rate` device classes) if a user picks another display unit.
//!   Rounding in the template also means HA records a new state only when the figure
//!   moves by ~10 MiB (0.01 GiB), not on every byte.
//! - The boot time is a `timestamp` ("Started"), not a duration: an uptime changes on
//!   every poll and HA would record every one of them.
//! - Figures that never change (disk size, storage total) have no `state_class`: HA keeps
//!   no long-term statistics of them.
use std::borrow::Cow;

use crate::pve::GuestKind;

mod health;
pub(super) use health::{disk_specs, node_health_specs, zfs_specs, UPDATES_RETIRED};

/// Who an entity's availability depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Availability {
    /// The device's shared list: the bridge and the object itself (mode `all`).
    Object,
    /// The bridge and the cluster's Proxmox API only: for entities that report the
    /// object being offline as a state (a node's connectivity), which the object's own
    /// availability would turn into "unavailable".
    BridgeAndApi,
}

/// Builder shorthand: `(key, platform, name, template)` plus the sensor details.
pub(super) struct Spec {
    pub(super) key: &'static str,
    pub(super) platform: &'static str,
    pub(super) name: &'static str,
    pub(super) template: Cow<'static, str>,
    pub(super) device_class: Option<&'static str>,
    pub(super) state_class: Option<&'static str>,
    pub(super) unit: Option<&'static str>,
    pub(super) precision: Option<u8>,
    pub(super) options: Option<&'static [&'static str]>,
    pub(super) diagnostic: bool,
    pub(super) icon: Option<&'static str>,
    pub(super) enabled: bool,
    pub(super) availability: Availability,
    /// A `json_attributes_template` over the object's state topic.
    pub(super) attributes: Option<&'static str>,
}

/// A guest's `status` (SPEC §3).
pub(super) const GUEST_STATUSES: &[&str] =
    &["running", "stopped", "paused", "suspended", "unknown"];
/// A node's `status` in `/cluster/resources`.
pub(super) const NODE_STATUSES: &[&str] = &["online", "offline", "unknown"];
/// A guest's `last_backup_status` (issue 12).
pub(super) const BACKUP_STATUSES: &[&str] = &["ok", "warnings", "failed"];
/// PBS's `verification.state` of the newest backup.
pub(super) const VERIFICATION_STATES: &[&str] = &["ok", "failed"];
/// A guest's `lock` (qemu-server and pve-container schemas), `none` when unlocked.
pub(super) const GUEST_LOCKS: &[&str] = &[
    "none",
    "backup",
    "clone",
    "copy",
    "create",
    "destroyed",
    "disk",
    "fstrim",
    "migrate",
    "mounted",
    "rollback",
    "snapshot",
    "snapshot-delete",
    "suspended",
    "suspending",
];
/// A command report's `state` (SPEC §4).
pub(super) const COMMAND_STATES: &[&str] = &["accepted", "running", "ok", "failed", "rejected"];

/// Entity keys that earlier versions announced and this one no longer does. Each is
/// sent as `{"p": platform}`, which is how device discovery removes a component
/// (leaving it out of `cmps` would leave it in HA).
pub(super) const GUEST_RETIRED: &[(&str, &str)] = &[("uptime", "sensor")];
pub(super) const NODE_RETIRED: &[(&str, &str)] = &[("uptime", "sensor")];
pub(super) const STORAGE_RETIRED: &[(&str, &str)] = &[("active", "binary_sensor")];

/// `value_json.{field}` when it is one of `options`, else `None` (HA: unknown).
pub(super) fn enum_template(field: &str, options: &[&str]) -> String {
    let list = options
        .iter()
        .map(|o| format!("'{o}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{{{{ value_json.{field} if value_json.{field} in [{list}] else None }}}}")
}

/// Bytes in `value_json.{field}` as GiB, rounded to 0.01 GiB; `None` when absent.
fn gib_template(field: &str) -> String {
    format!(
        "{{{{ (value_json.{field} / 1073741824) | round(2) if value_json.{field} is number else None }}}}"
    )
}

/// Bytes per second in `value_json.{field}` as KiB/s, rounded to 0.1; `None` when absent.
fn kib_rate_template(field: &str) -> String {
    format!(
        "{{{{ (value_json.{field} / 1024) | round(1) if value_json.{field} is number else None }}}}"
    )
}

/// Unix seconds in `value_json.started` as a datetime; `None` while the field is absent
/// or null (a stopped guest).
pub(super) const TPL_STARTED: &str =
    "{{ as_datetime(value_json.started) if value_json.started is number else None }}";

pub(super) const TPL_LAST_BACKUP: &str = "{{ value_json.last_backup | timestamp_custom('%Y-%m-%dT%H:%M:%S+00:00', false) if value_json.last_backup else None }}";

pub(super) const TPL_SNAPSHOTS: &str =
    "{{ value_json.snapshots if value_json.snapshots is number else None }}";

pub(super) const TPL_SNAPSHOT_LATEST: &str = "{{ value_json.snapshot_latest_time | timestamp_custom('%Y-%m-%dT%H:%M:%S+00:00', false) if value_json.snapshot_latest_time else None }}";

impl Spec {
    /// A spec with the defaults: primary, enabled, the object's availability.
    pub(super) fn new(
        key: &'static str,
        platform: &'static str,
        name: &'static str,
        template: impl Into<Cow<'static, str>>,
    ) -> Self {
        Spec {
            key,
            platform,
            name,
            template: template.into(),
            device_class: None,
            state_class: None,
            unit: None,
            precision: None,
            options: None,
            diagnostic: false,
            icon: None,
            enabled: true,
            availability: Availability::Object,
            attributes: None,
        }
    }
    fn sensor(
        key: &'static str,
        name: &'static str,
        template: impl Into<Cow<'static, str>>,
    ) -> Self {
        Spec::new(key, "sensor", name, template)
    }
    fn binary(key: &'static str, name: &'static str, template: &'static str) -> Self {
        Spec::new(key, "binary_sensor", name, template)
    }
    /// An `enum` sensor reading `value_json.{field}`, limited to `options`.
    fn status(
        key: &'static str,
        name: &'static str,
        field: &str,
        options: &'static [&'static str],
    ) -> Self {
        Spec {
            device_class: Some("enum"),
            options: Some(options),
            ..Spec::sensor(key, name, enum_template(field, options))
        }
    }
    /// An `enum` sensor with its own template; `GUEST_LOCKS` in it becomes the list.
    fn status_with(
        key: &'static str,
        name: &'static str,
        template: &str,
        options: &'static [&'static str],
    ) -> Self {
        let list = options
            .iter()
            .map(|o| format!("'{o}'"))
            .collect::<Vec<_>>()
            .join(", ");
        Spec {
            device_class: Some("enum"),
            options: Some(options),
            ..Spec::sensor(
                key,
                name,
                template.replace("GUEST_LOCKS", &format!("[{list}]")),
            )
        }
    }
    fn percent(key: &'static str, name: &'static str, template: &'static str) -> Self {
        Spec {
            state_class: Some("measurement"),
            unit: Some("%"),
            precision: Some(1),
            ..Spec::sensor(key, name, template)
        }
    }
    /// A size in bytes, shown in GiB (see the module docs).
    fn bytes(key: &'static str, name: &'static str, field: &str) -> Self {
        Spec {
            device_class: Some("data_size"),
            state_class: Some("measurement"),
            unit: Some("GiB"),
            precision: Some(1),
            ..Spec::sensor(key, name, gib_template(field))
        }
    }
    /// A rate in bytes per second, shown in KiB/s.
    fn rate(key: &'static str, name: &'static str, field: &str) -> Self {
        Spec {
            device_class: Some("data_rate"),
            state_class: Some("measurement"),
            unit: Some("KiB/s"),
            precision: Some(1),
            ..Spec::sensor(key, name, kib_rate_template(field))
        }
    }
    /// The boot time, from `started` (Unix seconds).
    fn started() -> Self {
        Spec {
            device_class: Some("timestamp"),
            diagnostic: true,
            ..Spec::sensor("started", "Started", TPL_STARTED)
        }
    }
    /// No `state_class`: a size that never changes needs no long-term statistics.
    fn fixed(self) -> Self {
        Spec {
            state_class: None,
            ..self
        }
    }
    fn diagnostic(self) -> Self {
        Spec {
            diagnostic: true,
            ..self
        }
    }
    fn icon(self, icon: &'static str) -> Self {
        Spec {
            icon: Some(icon),
            ..self
        }
    }
    fn disabled(self) -> Self {
        Spec {
            enabled: false,
            ..self
        }
    }
    fn bridge_and_api(self) -> Self {
        Spec {
            availability: Availability::BridgeAndApi,
            ..self
        }
    }
}

pub(super) fn guest_specs(kind: GuestKind, disk_used: bool) -> Vec<Spec> {
    let mut specs = vec![
        Spec::status("status", "Status", "status", GUEST_STATUSES).icon("mdi:server"),
        Spec {
            device_class: Some("running"),
            ..Spec::binary(
                "running",
                "Running",
                "{{ 'ON' if value_json.status == 'running' else 'OFF' }}",
            )
        },
        Spec::percent("cpu", "CPU", "{{ value_json.cpu }}").icon("mdi:cpu-64-bit"),
        Spec::percent("memory", "Memory", "{{ value_json.mem_percent }}").icon("mdi:memory"),
        Spec::bytes("memory_used", "Memory used", "mem"),
        Spec::bytes("disk_size", "Disk size", "maxdisk")
            .fixed()
            .diagnostic(),
        Spec::rate("network_in", "Network in", "netin_rate"),
        Spec::rate("network_out", "Network out", "netout_rate"),
        Spec::rate("disk_read", "Disk read", "diskread_rate").disabled(),
        Spec::rate("disk_write", "Disk write", "diskwrite_rate").disabled(),
        Spec::started(),
        Spec {
            device_class: Some("timestamp"),
            ..Spec::sensor("last_backup", "Last backup", TPL_LAST_BACKUP)
        }
        .icon("mdi:backup-restore"),
        // Backup health (issue 12).
        Spec::status(
            "last_backup_status",
            "Last backup status",
            "last_backup_status",
            BACKUP_STATUSES,
        )
        .icon("mdi:backup-restore"),
        Spec {
            device_class: Some("problem"),
            ..Spec::binary(
                "backup_stale",
                "Backup stale",
                "{{ None if value_json.backup_stale is none else ('ON' if value_json.backup_stale else 'OFF') }}",
            )
        },
        Spec {
            device_class: Some("problem"),
            ..Spec::binary(
                "backup_uncovered",
                "In no backup job",
                "{{ None if value_json.backup_covered is none else ('OFF' if value_json.backup_covered else 'ON') }}",
            )
        },
        Spec::bytes("last_backup_size", "Last backup size", "last_backup_size")
            .fixed()
            .diagnostic(),
        // Only PBS verifies backups: off by default.
        Spec::status(
            "backup_verification",
            "Backup verification",
            "last_backup_verification",
            VERIFICATION_STATES,
        )
        .diagnostic()
        .disabled(),
        // Issue 11: from `hastate` and `lock` of the cluster list, no extra request.
        Spec::binary(
            "ha_managed",
            "HA managed",
            "{{ 'ON' if value_json.hastate else 'OFF' }}",
        )
        .diagnostic()
        .icon("mdi:shield-check"),
        Spec::status_with(
            "lock",
            "Lock",
            "{% set l = value_json.lock or 'none' %}{{ l if l in GUEST_LOCKS else None }}",
            GUEST_LOCKS,
        )
        .icon("mdi:lock"),
        Spec {
            state_class: Some("measurement"),
            ..Spec::sensor("snapshots", "Snapshots", TPL_SNAPSHOTS)
        }
        .icon("mdi:camera-burst"),
        Spec {
            device_class: Some("timestamp"),
            ..Spec::sensor("snapshot_latest", "Newest snapshot", TPL_SNAPSHOT_LATEST)
        }
        .icon("mdi:camera"),
    ];
    // Proxmox only knows a container's disk usage; a VM's `disk` is always 0 without
    // the guest agent, so it is announced only once the agent reported its filesystems
    // (`disk_used`; see `agent_specs` for the rest of the agent's data).
    if kind == GuestKind::Lxc || disk_used {
        specs.push(Spec::bytes("disk_used", "Disk used", "disk"));
    }
    specs.extend(agent_specs(kind));
    specs
}

pub(super) fn node_specs() -> Vec<Spec> {
    vec![
        // Both read "offline" as a state: their availability is the bridge and the
        // Proxmox API, not the node's own (which goes offline with the node).
        Spec::status("status", "Status", "status", NODE_STATUSES)
            .icon("mdi:server")
            .bridge_and_api(),
        Spec {
            device_class: Some("connectivity"),
            ..Spec::binary(
                "connectivity",
                "Connectivity",
                "{{ 'ON' if value_json.status == 'online' else 'OFF' }}",
            )
        }
        .bridge_and_api(),
        Spec::percent("cpu", "CPU", "{{ value_json.cpu }}").icon("mdi:cpu-64-bit"),
        Spec {
            state_class: Some("measurement"),
            precision: Some(2),
            ..Spec::sensor(
                "load_1",
                "Load 1m",
                "{{ value_json.loadavg[0] if value_json.loadavg else None }}",
            )
        },
        Spec {
            state_class: Some("measurement"),
            precision: Some(2),
            ..Spec::sensor(
                "load_5",
                "Load 5m",
                "{{ value_json.loadavg[1] if value_json.loadavg else None }}",
            )
        }
        .disabled(),
        Spec {
            state_class: Some("measurement"),
            precision: Some(2),
            ..Spec::sensor(
                "load_15",
                "Load 15m",
                "{{ value_json.loadavg[2] if value_json.loadavg else None }}",
            )
        }
        .disabled(),
        Spec::percent("memory", "Memory", "{{ value_json.mem_percent }}").icon("mdi:memory"),
        Spec::bytes("memory_used", "Memory used", "mem"),
        Spec::bytes("swap_used", "Swap used", "swap_used"),
        Spec::percent("rootfs", "Root disk", "{{ value_json.rootfs_percent }}")
            .icon("mdi:harddisk"),
        Spec::bytes("rootfs_used", "Root disk used", "rootfs_used").diagnostic(),
        Spec::started(),
        // The device is the node: "pve Version", not "pve Proxmox VE version".
        Spec::sensor("pve_version", "Version", "{{ value_json.pve_version }}")
            .diagnostic()
            .icon("mdi:information-outline"),
        Spec::sensor("kernel", "Kernel", "{{ value_json.kernel }}")
            .diagnostic()
            .icon("mdi:linux"),
        // From `/cluster/tasks`: unknown when the token may not read it.
        Spec {
            state_class: Some("measurement"),
            ..Spec::sensor(
                "failed_tasks",
                "Failed tasks (24 h)",
                "{{ value_json.failed_tasks_24h if value_json.failed_tasks_24h is number else None }}",
            )
        }
        .icon("mdi:alert-circle-outline"),
    ]
}

/// The values of a `…/last_task` payload's `status` (`model::LastTask`).
pub(super) const LAST_TASK_STATES: &[&str] = &["running", "ok", "failed"];

pub(super) fn storage_specs() -> Vec<Spec> {
    vec![
        Spec::bytes("used", "Used", "used"),
        Spec::bytes("total", "Total", "total").fixed(),
        Spec::bytes("available", "Free", "avail"),
        Spec::percent("used_percent", "Usage", "{{ value_json.used_percent }}")
            .icon("mdi:database"),
        // A primary `problem` sensor rather than a diagnostic "Active": an inactive
        // storage (an NFS share gone, a disk missing) is what a user wants to see and
        // alert on, and HA shows it as OK / Problem.
        Spec {
            device_class: Some("problem"),
            ..Spec::binary(
                "problem",
                "Problem",
                "{{ 'OFF' if value_json.active else 'ON' }}",
            )
        },
    ]
}

pub(super) fn cluster_specs() -> Vec<Spec> {
    vec![
        Spec::binary(
            "quorum",
            "Quorum",
            "{{ None if value_json.quorate is none else ('ON' if value_json.quorate else 'OFF') }}",
        )
        .icon("mdi:vote"),
        Spec {
            state_class: Some("measurement"),
            ..Spec::sensor(
                "nodes_online",
                "Nodes online",
                "{{ value_json.nodes_online }}",
            )
        }
        .icon("mdi:server-network"),
        Spec {
            state_class: Some("measurement"),
            ..Spec::sensor(
                "guests_running",
                "Guests running",
                "{{ value_json.guests_running }}",
            )
        }
        .icon("mdi:monitor-multiple"),
        // The device is named "Proxmox {cluster}": "Proxmox home Version".
        Spec::sensor("pve_version", "Version", "{{ value_json.pve_version }}")
            .diagnostic()
            .icon("mdi:information-outline"),
    ]
}

/// `value_json.ip_addresses[0]`: the first address (IPv4 first) as the state, the list as
/// an attribute.
const TPL_IP: &str = "{{ value_json.ip_addresses[0] if value_json.ip_addresses else None }}";
const TPL_IP_ATTRIBUTES: &str = "{{ {'ip_addresses': value_json.ip_addresses} | tojson }}";

/// The guest-agent entities: a VM's agent connectivity and OS; every guest's address
/// (containers from their interfaces).
fn agent_specs(kind: GuestKind) -> Vec<Spec> {
    let mut specs = vec![Spec {
        attributes: Some(TPL_IP_ATTRIBUTES),
        ..Spec::sensor("ip_address", "IP address", TPL_IP).icon("mdi:ip-network")
    }];
    if kind == GuestKind::Qemu {
        specs.push(
            Spec {
                device_class: Some("connectivity"),
                ..Spec::binary(
                    "agent",
                    "Agent responding",
                    "{{ None if value_json.agent is none else ('ON' if value_json.agent else 'OFF') }}",
                )
            }
            .diagnostic(),
        );
        specs.push(
            Spec::sensor("os", "OS", "{{ value_json.os if value_json.os else None }}")
                .diagnostic()
                .icon("mdi:desktop-classic"),
        );
    }
    specs
}
