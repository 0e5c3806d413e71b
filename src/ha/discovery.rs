//! Home Assistant MQTT discovery payloads (device-based discovery, HA >= 2024.12).
//!
//! One retained message per Proxmox object on `{prefix}/device/{device id}/config`
//! carries the device block and all of its entities (`cmps`). Compared with one message
//! per entity this sends ~20x fewer discovery messages (5,000 guests: 5,000 messages,
//! not 100,000), and an object's entities appear and disappear together. The shared
//! `stat_t`, `avty` and `avty_mode` keys are copied by HA into every component.
//!
//! Pure functions: the publisher decides when to send, this module only says what.

use serde::Serialize;
use serde_json::{Map, Value};

use std::fmt;
use std::sync::Arc;

use super::topics::Topics;
use crate::model::{ClusterView, GuestState, ObjectRef};
use crate::pve::Action;
use crate::pve::GuestKind;

/// Who we are, in every discovery payload (`origin` is required for device discovery).
const ORIGIN_NAME: &str = "pve2mqtt";
const MANUFACTURER: &str = "Proxmox Server Solutions GmbH";

/// The inputs that shape one object's discovery payload. Cheap to compute on every
/// poll; the payload itself is rendered only when these change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: String,
    pub model: String,
    pub via_device: Option<String>,
    pub sw_version: Option<String>,
    pub configuration_url: Option<String>,
    /// Guests: announce the power switch, buttons and last-command sensor (commands are
    /// possible and the `[commands]` policy admits this guest).
    pub controls: bool,
}

/// Which guests get control entities: the command policy's answer per guest (built by
/// `command::policy::guest_controls`), so discovery announces exactly what the command
/// side would accept without knowing the policy's rules.
#[derive(Clone)]
pub struct GuestControls(Arc<dyn Fn(&GuestState) -> bool + Send + Sync>);

impl GuestControls {
    pub fn new(answer: impl Fn(&GuestState) -> bool + Send + Sync + 'static) -> Self {
        GuestControls(Arc::new(answer))
    }

    /// No guest gets controls.
    pub fn none() -> Self {
        GuestControls::new(|_| false)
    }

    pub fn allows(&self, guest: &GuestState) -> bool {
        (self.0)(guest)
    }
}

impl fmt::Debug for GuestControls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GuestControls(..)")
    }
}

/// What kind of entities to announce, from the config.
#[derive(Clone, Debug)]
pub struct DiscoveryContext {
    pub topics: Topics,
    pub bridge_version: String,
    /// Decides which guests get control entities.
    pub controls: GuestControls,
}

/// The device block inputs of an object, or `None` if the object is not in the view.
pub fn device_info(
    ctx: &DiscoveryContext,
    view: &ClusterView,
    object: &ObjectRef,
) -> Option<DeviceInfo> {
    let c = &view.id;
    let console = |fragment: &str| {
        if view.console_url.is_empty() {
            None
        } else {
            Some(format!("{}/#v1:0:={}", view.console_url, fragment))
        }
    };
    let info = match object {
        ObjectRef::Cluster => DeviceInfo {
            name: format!("Proxmox {}", view.cluster.name.as_deref().unwrap_or(c)),
            model: "Proxmox VE cluster".to_string(),
            via_device: None,
            sw_version: view.cluster.pve_version.clone(),
            configuration_url: (!view.console_url.is_empty()).then(|| view.console_url.clone()),
            controls: false,
        },
        ObjectRef::Node(node) => {
            let state = view.nodes.get(node)?;
            DeviceInfo {
                name: node.clone(),
                model: "Proxmox VE node".to_string(),
                via_device: Some(Topics::device_id(c, &ObjectRef::Cluster)),
                sw_version: state.pve_version.clone(),
                configuration_url: console(&format!("node%2F{node}")),
                controls: false,
            }
        }
        ObjectRef::Guest(kind, vmid) => {
            let guest = view.guests.get(vmid)?;
            DeviceInfo {
                name: guest.name.clone().unwrap_or_else(|| match kind {
                    GuestKind::Qemu => format!("VM {vmid}"),
                    GuestKind::Lxc => format!("CT {vmid}"),
                }),
                model: match kind {
                    GuestKind::Qemu => "QEMU virtual machine".to_string(),
                    GuestKind::Lxc => "LXC container".to_string(),
                },
                via_device: Some(Topics::device_id(c, &ObjectRef::Node(guest.node.clone()))),
                sw_version: None,
                configuration_url: console(&format!("{}%2F{vmid}", kind.as_str())),
                controls: ctx.controls.allows(guest) && !guest.template,
            }
        }
        ObjectRef::Storage(node, storage) => {
            let state = view.storages.get(&(node.clone(), storage.clone()))?;
            DeviceInfo {
                name: format!("{storage} on {node}"),
                model: format!(
                    "Proxmox storage ({})",
                    state.plugin_type.as_deref().unwrap_or("unknown")
                ),
                via_device: Some(Topics::device_id(c, &ObjectRef::Node(node.clone()))),
                sw_version: None,
                configuration_url: console(&format!("storage%2F{node}%2F{storage}")),
                controls: false,
            }
        }
    };
    Some(info)
}

/// One entity (HA "component") inside a device payload, with HA's abbreviated keys.
#[derive(Serialize, Default)]
struct Component {
    p: &'static str,
    uniq_id: String,
    name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    val_tpl: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dev_cla: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stat_cla: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit_of_meas: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sug_dsp_prc: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ent_cat: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ic: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    en: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmd_t: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pl_prs: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pl_on: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pl_off: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stat_on: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stat_off: Option<&'static str>,
    /// Overrides the device-level state topic (the last-command sensor reads `…/task`).
    #[serde(skip_serializing_if = "Option::is_none")]
    stat_t: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    json_attr_t: Option<String>,
    /// QoS is not a shared device option in HA, so it is set per component.
    qos: u8,
}

/// Builder shorthand: `(key, platform, name, template)` plus the sensor details.
struct Spec {
    key: &'static str,
    platform: &'static str,
    name: &'static str,
    template: &'static str,
    device_class: Option<&'static str>,
    state_class: Option<&'static str>,
    unit: Option<&'static str>,
    precision: Option<u8>,
    diagnostic: bool,
    icon: Option<&'static str>,
    enabled: bool,
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

const TPL_LAST_BACKUP: &str = "{{ value_json.last_backup | timestamp_custom('%Y-%m-%dT%H:%M:%S+00:00', false) if value_json.last_backup else None }}";

fn guest_specs(kind: GuestKind) -> Vec<Spec> {
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

fn node_specs() -> Vec<Spec> {
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

fn storage_specs() -> Vec<Spec> {
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

fn cluster_specs() -> Vec<Spec> {
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

/// The retained discovery payload of one object, or `None` if it is not in the view.
pub fn device_config(
    ctx: &DiscoveryContext,
    view: &ClusterView,
    object: &ObjectRef,
) -> Option<String> {
    let info = device_info(ctx, view, object)?;
    let controls = info.controls;
    let c = &view.id;
    let device_id = Topics::device_id(c, object);
    let specs = match object {
        ObjectRef::Cluster => cluster_specs(),
        ObjectRef::Node(_) => node_specs(),
        ObjectRef::Guest(kind, _) => guest_specs(*kind),
        ObjectRef::Storage(..) => storage_specs(),
    };
    let mut components = Map::new();
    for spec in specs {
        let component = Component {
            p: spec.platform,
            uniq_id: format!("{device_id}_{}", spec.key),
            name: spec.name,
            val_tpl: Some(spec.template),
            dev_cla: spec.device_class,
            stat_cla: spec.state_class,
            unit_of_meas: spec.unit,
            sug_dsp_prc: spec.precision,
            ent_cat: spec.diagnostic.then_some("diagnostic"),
            ic: spec.icon,
            en: (!spec.enabled).then_some(false),
            qos: 1,
            ..Component::default()
        };
        // Serialising our own plain struct cannot fail.
        components.insert(
            spec.key.to_string(),
            serde_json::to_value(component).unwrap_or(Value::Null),
        );
    }
    if let ObjectRef::Guest(kind, vmid) = object {
        control_components(ctx, c, *kind, *vmid, &device_id, controls, &mut components);
    }
    let mut device = Map::new();
    device.insert("ids".into(), Value::from(vec![device_id.clone()]));
    device.insert("name".into(), Value::from(info.name));
    device.insert("mf".into(), Value::from(MANUFACTURER));
    device.insert("mdl".into(), Value::from(info.model));
    if let Some(sw) = info.sw_version {
        device.insert("sw".into(), Value::from(sw));
    }
    if let Some(via) = info.via_device {
        device.insert("via_device".into(), Value::from(via));
    }
    if let Some(url) = info.configuration_url {
        device.insert("cu".into(), Value::from(url));
    }
    let topics = &ctx.topics;
    let payload = serde_json::json!({
        "dev": device,
        "o": {"name": ORIGIN_NAME, "sw": ctx.bridge_version},
        "avty": [
            {"t": topics.bridge_state()},
            {"t": topics.availability(c, object)},
        ],
        "avty_mode": "all",
        "stat_t": topics.state(c, object),
        "cmps": components,
    });
    Some(payload.to_string())
}

/// Buttons that act at once or lose state are disabled by default: a user enables them
/// deliberately in Home Assistant.
fn enabled_by_default(action: Action) -> bool {
    matches!(
        action,
        Action::Start | Action::Shutdown | Action::Reboot | Action::Backup
    )
}

/// The power switch, one button per action valid for the guest's type, and the
/// last-command sensor. Without control (policy), each is sent as `{"p": platform}`,
/// which is how device discovery removes a component that may have been announced by
/// an earlier run with another policy.
fn control_components(
    ctx: &DiscoveryContext,
    c: &str,
    kind: GuestKind,
    vmid: u32,
    device_id: &str,
    controls: bool,
    components: &mut Map<String, Value>,
) {
    let command_topic = ctx.topics.command(c, kind, vmid);
    let task_topic = ctx.topics.task(c, kind, vmid);
    let mut entries: Vec<(String, Component)> = Vec::new();
    entries.push((
        "power".into(),
        Component {
            p: "switch",
            name: "Power",
            val_tpl: Some("{{ 'ON' if value_json.status == 'running' else 'OFF' }}"),
            cmd_t: Some(command_topic.clone()),
            pl_on: Some("start"),
            pl_off: Some("shutdown"),
            stat_on: Some("ON"),
            stat_off: Some("OFF"),
            ic: Some("mdi:power"),
            ..Component::default()
        },
    ));
    for action in Action::ALL.into_iter().filter(|a| a.valid_for(kind)) {
        entries.push((
            action.as_str().to_string(),
            Component {
                p: "button",
                name: button_name(action),
                cmd_t: Some(command_topic.clone()),
                pl_prs: Some(action.as_str()),
                dev_cla: (action == Action::Reboot).then_some("restart"),
                ic: Some(button_icon(action)),
                en: (!enabled_by_default(action)).then_some(false),
                ..Component::default()
            },
        ));
    }
    entries.push((
        "last_command".into(),
        Component {
            p: "sensor",
            name: "Last command",
            val_tpl: Some("{{ value_json.state }}"),
            stat_t: Some(task_topic.clone()),
            json_attr_t: Some(task_topic),
            ent_cat: Some("diagnostic"),
            ic: Some("mdi:console"),
            ..Component::default()
        },
    ));
    for (key, mut component) in entries {
        let value = if controls {
            component.uniq_id = format!("{device_id}_{key}");
            component.qos = 1;
            serde_json::to_value(component).unwrap_or(Value::Null)
        } else {
            serde_json::json!({ "p": component.p })
        };
        components.insert(key, value);
    }
}

fn button_name(action: Action) -> &'static str {
    match action {
        Action::Start => "Start",
        Action::Stop => "Stop",
        Action::Shutdown => "Shutdown",
        Action::Reboot => "Reboot",
        Action::Reset => "Reset",
        Action::Suspend => "Suspend",
        Action::Resume => "Resume",
        Action::Hibernate => "Hibernate",
        Action::Backup => "Backup",
    }
}

fn button_icon(action: Action) -> &'static str {
    match action {
        Action::Start => "mdi:play",
        Action::Stop => "mdi:stop",
        Action::Shutdown => "mdi:power",
        Action::Reboot => "mdi:restart",
        Action::Reset => "mdi:restart-alert",
        Action::Suspend => "mdi:pause",
        Action::Resume => "mdi:play-pause",
        Action::Hibernate => "mdi:sleep",
        Action::Backup => "mdi:backup-restore",
    }
}

#[cfg(test)]
mod tests {
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
}
