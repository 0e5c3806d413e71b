//! The entities of each object type: one [`Spec`] per sensor, with its template, unit
//! and Home Assistant classes.
use crate::pve::GuestKind;

/// Builder shorthand: `(key, platform, name, template)` plus the sensor details.
pub(super) struct Spec {
    pub(super) key: &'static str,
    pub(super) platform: &'static str,
    pub(super) name: &'static str,
    pub(super) template: &'static str,
    pub(super) device_class: Option<&'static str>,
    pub(super) state_class: Option<&'static str>,
    pub(super) unit: Option<&'static str>,
    pub(super) precision: Option<u8>,
    pub(super) diagnostic: bool,
    pub(super) icon: Option<&'static str>,
    pub(super) enabled: bool,
}

impl Spec {
    fn new(
        key: &'static str,
        platform: &'static str,
        name: &'static str,
        template: &'static str,
    ) -> Self {
        Spec {
            key,
            platform,
            name,
            template,
            device_class: None,
            state_class: None,
            unit: None,
            precision: None,
            diagnostic: false,
            icon: None,
            enabled: true,
        }
    }
    fn sensor(key: &'static str, name: &'static str, template: &'static str) -> Self {
        Spec::new(key, "sensor", name, template)
    }
    fn binary(key: &'static str, name: &'static str, template: &'static str) -> Self {
        Spec::new(key, "binary_sensor", name, template)
    }
    fn percent(key: &'static str, name: &'static str, template: &'static str) -> Self {
        Spec {
            state_class: Some("measurement"),
            unit: Some("%"),
            precision: Some(1),
            ..Spec::sensor(key, name, template)
        }
    }
    fn bytes(key: &'static str, name: &'static str, template: &'static str) -> Self {
        Spec {
            device_class: Some("data_size"),
            state_class: Some("measurement"),
            unit: Some("B"),
            ..Spec::sensor(key, name, template)
        }
    }
    fn rate(key: &'static str, name: &'static str, template: &'static str) -> Self {
        Spec {
            device_class: Some("data_rate"),
            state_class: Some("measurement"),
            unit: Some("B/s"),
            ..Spec::sensor(key, name, template)
        }
    }
    fn uptime(template: &'static str) -> Self {
        Spec {
            device_class: Some("duration"),
            state_class: Some("total_increasing"),
            unit: Some("s"),
            diagnostic: true,
            ..Spec::sensor("uptime", "Uptime", template)
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
}

pub(super) const TPL_LAST_BACKUP: &str = "{{ value_json.last_backup | timestamp_custom('%Y-%m-%dT%H:%M:%S+00:00', false) if value_json.last_backup else None }}";

pub(super) fn guest_specs(kind: GuestKind) -> Vec<Spec> {
    let mut specs = vec![
        Spec::sensor("status", "Status", "{{ value_json.status }}").icon("mdi:server"),
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
        Spec::bytes("memory_used", "Memory used", "{{ value_json.mem }}"),
        Spec::bytes("disk_size", "Disk size", "{{ value_json.maxdisk }}").diagnostic(),
        Spec::rate("network_in", "Network in", "{{ value_json.netin_rate }}"),
        Spec::rate("network_out", "Network out", "{{ value_json.netout_rate }}"),
        Spec::rate("disk_read", "Disk read", "{{ value_json.diskread_rate }}").disabled(),
        Spec::rate(
            "disk_write",
            "Disk write",
            "{{ value_json.diskwrite_rate }}",
        )
        .disabled(),
        Spec::uptime("{{ value_json.uptime }}"),
        Spec {
            device_class: Some("timestamp"),
            ..Spec::sensor("last_backup", "Last backup", TPL_LAST_BACKUP)
        }
        .icon("mdi:backup-restore"),
    ];
    // Proxmox only knows a container's disk usage; a VM's `disk` is always 0 without
    // the guest agent, so announcing it would show a false 0 B.
    if kind == GuestKind::Lxc {
        specs.push(Spec::bytes(
            "disk_used",
            "Disk used",
            "{{ value_json.disk }}",
        ));
    }
    specs
}

pub(super) fn node_specs() -> Vec<Spec> {
    vec![
        Spec::sensor("status", "Status", "{{ value_json.status }}").icon("mdi:server"),
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
        Spec::bytes("memory_used", "Memory used", "{{ value_json.mem }}"),
        Spec::bytes("swap_used", "Swap used", "{{ value_json.swap_used }}"),
        Spec::percent("rootfs", "Root disk", "{{ value_json.rootfs_percent }}")
            .icon("mdi:harddisk"),
        Spec::bytes(
            "rootfs_used",
            "Root disk used",
            "{{ value_json.rootfs_used }}",
        )
        .diagnostic(),
        Spec::uptime("{{ value_json.uptime }}"),
        Spec::sensor(
            "pve_version",
            "Proxmox VE version",
            "{{ value_json.pve_version }}",
        )
        .diagnostic()
        .icon("mdi:information-outline"),
        Spec::sensor("kernel", "Kernel", "{{ value_json.kernel }}")
            .diagnostic()
            .icon("mdi:linux"),
    ]
}

pub(super) fn storage_specs() -> Vec<Spec> {
    vec![
        Spec::bytes("used", "Used", "{{ value_json.used }}"),
        Spec::bytes("total", "Total", "{{ value_json.total }}"),
        Spec::bytes("available", "Available", "{{ value_json.avail }}"),
        Spec::percent(
            "used_percent",
            "Used percent",
            "{{ value_json.used_percent }}",
        )
        .icon("mdi:database"),
        Spec::binary(
            "active",
            "Active",
            "{{ 'ON' if value_json.active else 'OFF' }}",
        )
        .diagnostic(),
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
        Spec::sensor(
            "pve_version",
            "Proxmox VE version",
            "{{ value_json.pve_version }}",
        )
        .diagnostic()
        .icon("mdi:information-outline"),
    ]
}
