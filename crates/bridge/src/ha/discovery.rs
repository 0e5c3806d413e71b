//! Home Assistant MQTT discovery payloads (device-based discovery, HA >= 2024.12).
//!
//! One retained message per Proxmox object on `{prefix}/device/{device id}/config`
//! carries the device block and all of its entities (`cmps`). Compared with one message
//! per entity this sends ~20x fewer discovery messages (5,000 guests: 5,000 messages,
//! not 100,000), and an object's entities appear and disappear together. The shared
//! `stat_t`, `avty` and `avty_mode` keys are copied by HA into every component.
//!
//! Pure functions: the publisher decides when to send, this module only says what.
//!
//! Layout: this file builds the device payload; `specs` lists each object type's sensors,
//! `controls` a guest's switch and buttons, `bridge` the bridge's own device.

use serde::Serialize;
use serde_json::{Map, Value};

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use super::topics::Topics;
use crate::model::{ClusterView, GuestState, ObjectRef};
use crate::pve::GuestKind;

mod bridge;
mod controls;
mod health;
mod node_controls;
mod specs;
mod tasks;

pub use bridge::bridge_config;
use controls::control_components;
pub use health::HealthEntities;
use health::{health_components, health_entities};
use specs::{
    cluster_specs, disk_specs, guest_specs, node_health_specs, node_specs, storage_specs,
    zfs_specs, Availability, GUEST_RETIRED, NODE_RETIRED, STORAGE_RETIRED, UPDATES_RETIRED,
};
use tasks::last_task_component;

/// Who we are, in every discovery payload (`origin` is required for device discovery).
const ORIGIN_NAME: &str = "pve2mqtt";
/// The project's page, as `origin.url` (HA links it as the integration's support URL).
/// From `repository` in Cargo.toml.
const ORIGIN_URL: &str = env!("CARGO_PKG_REPOSITORY");
const MANUFACTURER: &str = "Proxmox Server Solutions GmbH";

/// The `origin` block of every discovery payload.
fn origin(ctx: &DiscoveryContext) -> Value {
    let mut origin = serde_json::json!({"name": ORIGIN_NAME, "sw": ctx.bridge_version});
    if !ORIGIN_URL.is_empty() {
        origin["url"] = Value::from(ORIGIN_URL);
    }
    origin
}

/// The inputs that shape one object's discovery payload. Cheap to compute on every
/// poll; the payload itself is rendered only when these change (the publisher keeps
/// their hash).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeviceInfo {
    pub name: String,
    pub model: String,
    pub via_device: Option<String>,
    pub sw_version: Option<String>,
    pub configuration_url: Option<String>,
    /// Guests: announce the power switch, buttons and last-command sensor (commands are
    /// possible and the `[commands]` policy admits this guest).
    pub controls: bool,
    /// Which cluster-health entities (Ceph, HA, replication) to announce or remove.
    pub health: HealthEntities,
    /// Nodes: announce the update entity and pending count (the updates were read).
    pub updates: bool,
    /// Guests: announce "Disk used" (always for containers; for a VM once the guest
    /// agent reported its filesystems).
    pub disk_used: bool,
}

/// Which guests get control entities: the command policy's answer per guest (built by
/// `command::policy::guest_controls`), so discovery announces exactly what the command
/// side would accept without knowing the policy's rules.
/// It also carries whether nodes get their power buttons (`[commands] node_power`).
#[derive(Clone)]
pub struct GuestControls(Arc<dyn Fn(&GuestState) -> bool + Send + Sync>, bool);

impl GuestControls {
    pub fn new(answer: impl Fn(&GuestState) -> bool + Send + Sync + 'static) -> Self {
        GuestControls(Arc::new(answer), false)
    }

    /// Nodes get their power buttons and last-command sensor too.
    pub fn with_node_power(mut self, node_power: bool) -> Self {
        self.1 = node_power;
        self
    }

    pub fn node_power(&self) -> bool {
        self.1
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
    /// How many clusters the config names: with one, the bridge's connectivity sensor is
    /// just "Proxmox API"; with several, each carries its cluster id.
    pub cluster_count: usize,
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
    // A part of a node's hardware (a disk, a ZFS pool): a device of its own, via the node.
    let on_node = |node: &String, name: String, model: String| DeviceInfo {
        name,
        model,
        via_device: Some(Topics::device_id(c, &ObjectRef::Node(node.clone()))),
        sw_version: None,
        configuration_url: console(&format!("node%2F{node}")),
        controls: false,
        updates: false,
        health: HealthEntities::default(),
        disk_used: false,
    };
    let info = match object {
        ObjectRef::Cluster => DeviceInfo {
            name: format!("Proxmox {}", view.cluster.name.as_deref().unwrap_or(c)),
            model: "Proxmox VE cluster".to_string(),
            via_device: None,
            sw_version: view.cluster.pve_version.clone(),
            configuration_url: (!view.console_url.is_empty()).then(|| view.console_url.clone()),
            controls: false,
            health: health_entities(view, object),
            updates: false,
            disk_used: false,
        },
        ObjectRef::Node(node) => {
            let state = view.nodes.get(node)?;
            DeviceInfo {
                name: node.clone(),
                model: "Proxmox VE node".to_string(),
                via_device: Some(Topics::device_id(c, &ObjectRef::Cluster)),
                sw_version: state.pve_version.clone(),
                configuration_url: console(&format!("node%2F{node}")),
                controls: ctx.controls.node_power(),
                health: health_entities(view, object),
                updates: state.updates.is_some(),
                disk_used: false,
            }
        }
        ObjectRef::Guest(kind, vmid) => {
            let guest = view.guests.get(vmid)?;
            DeviceInfo {
                name: guest.name.as_deref().map_or_else(
                    || match kind {
                        GuestKind::Qemu => format!("VM {vmid}"),
                        GuestKind::Lxc => format!("CT {vmid}"),
                    },
                    str::to_owned,
                ),
                model: match kind {
                    GuestKind::Qemu => "QEMU virtual machine".to_string(),
                    GuestKind::Lxc => "LXC container".to_string(),
                },
                via_device: Some(Topics::device_id(
                    c,
                    &ObjectRef::Node(guest.node.to_string()),
                )),
                sw_version: None,
                configuration_url: console(&format!("{}%2F{vmid}", kind.as_str())),
                controls: ctx.controls.allows(guest) && !guest.template,
                health: health_entities(view, object),
                updates: false,
                disk_used: *kind == GuestKind::Lxc || guest.lanes.disk_from_agent,
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
                health: health_entities(view, object),
                updates: false,
                disk_used: false,
            }
        }
        ObjectRef::Disk(node, disk) => {
            let state = view.disks.get(&(node.clone(), disk.clone()))?;
            let model = (state.model.clone())
                .filter(|m| !m.is_empty() && m != "unknown")
                .unwrap_or_else(|| "Physical disk".to_string());
            on_node(node, format!("{disk} on {node}"), model)
        }
        ObjectRef::Zfs(node, pool) => {
            view.zfs.get(&(node.clone(), pool.clone()))?;
            on_node(
                node,
                format!("ZFS {pool} on {node}"),
                "ZFS pool".to_string(),
            )
        }
    };
    Some(info)
}

/// One entity (HA "component") inside a device payload, with HA's abbreviated keys; the
/// fields left `None` are left out ([`Component::into_value`]).
#[derive(Serialize, Default)]
struct Component {
    p: &'static str,
    uniq_id: String,
    name: Cow<'static, str>,
    val_tpl: Option<Cow<'static, str>>,
    dev_cla: Option<&'static str>,
    stat_cla: Option<&'static str>,
    unit_of_meas: Option<&'static str>,
    sug_dsp_prc: Option<u8>,
    /// The values of an `enum` sensor.
    ops: Option<&'static [&'static str]>,
    ent_cat: Option<&'static str>,
    ic: Option<&'static str>,
    en: Option<bool>,
    cmd_t: Option<String>,
    pl_prs: Option<&'static str>,
    pl_on: Option<&'static str>,
    pl_off: Option<&'static str>,
    stat_on: Option<&'static str>,
    stat_off: Option<&'static str>,
    /// Overrides the device-level state topic (the last-command sensor reads `…/task`).
    stat_t: Option<String>,
    json_attr_t: Option<String>,
    json_attr_tpl: Option<&'static str>,
    /// Overrides the device-level availability list.
    avty: Option<Value>,
    /// QoS is not a shared device option in HA, so it is set per component.
    qos: u8,
}

impl Component {
    /// The component as HA reads it: only the fields that are set.
    fn into_value(self) -> Value {
        // Serialising our own plain struct cannot fail.
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(fields) = &mut value {
            fields.retain(|_, field| !field.is_null());
        }
        value
    }
}

/// The availability of an entity that must stay available while its object is not (the
/// bridge's and the cluster API's state only).
fn bridge_and_api(topics: &Topics, c: &str) -> Value {
    serde_json::json!([{"t": topics.bridge_state()}, {"t": topics.bridge_proxmox(c)}])
}

/// The retained discovery payload of one object, or `None` if it is not in the view.
pub fn device_config(
    ctx: &DiscoveryContext,
    view: &ClusterView,
    object: &ObjectRef,
) -> Option<String> {
    let info = device_info(ctx, view, object)?;
    let (controls, disk_used) = (info.controls, info.disk_used);
    let updates = info.updates;
    let c = &view.id;
    let device_id = Topics::device_id(c, object);
    let (specs, retired) = match object {
        ObjectRef::Cluster => (cluster_specs(), &[][..]),
        ObjectRef::Node(_) => {
            let mut specs = node_specs();
            specs.extend(node_health_specs(updates));
            (specs, NODE_RETIRED)
        }
        ObjectRef::Guest(kind, _) => (guest_specs(*kind, disk_used), GUEST_RETIRED),
        ObjectRef::Storage(..) => (storage_specs(), STORAGE_RETIRED),
        ObjectRef::Disk(..) => (disk_specs(), &[][..]),
        ObjectRef::Zfs(..) => (zfs_specs(), &[][..]),
    };
    let topics = &ctx.topics;
    let mut components = Map::new();
    for (key, platform) in retired {
        components.insert(key.to_string(), serde_json::json!({ "p": platform }));
    }
    if matches!(object, ObjectRef::Node(_)) && !updates {
        // Updates turned off (or no longer readable): remove entities announced before.
        for (key, platform) in UPDATES_RETIRED {
            components.insert(key.to_string(), serde_json::json!({ "p": platform }));
        }
    }
    let health = health_components(object, info.health, &mut components);
    let with_attributes = specs
        .iter()
        .map(|spec| (spec, None))
        .chain(health.iter().map(|(spec, tpl)| (spec, *tpl)));
    for (spec, attributes) in with_attributes {
        let attributes = attributes.or(spec.attributes);
        let avty = match spec.availability {
            Availability::Object => None,
            Availability::BridgeAndApi => Some(bridge_and_api(topics, c)),
        };
        let component = Component {
            p: spec.platform,
            uniq_id: format!("{device_id}_{}", spec.key),
            name: spec.name.into(),
            val_tpl: Some(spec.template.clone()),
            json_attr_t: attributes.map(|_| topics.state(c, object)),
            json_attr_tpl: attributes,
            dev_cla: spec.device_class,
            stat_cla: spec.state_class,
            unit_of_meas: spec.unit,
            sug_dsp_prc: spec.precision,
            ops: spec.options,
            ent_cat: spec.diagnostic.then_some("diagnostic"),
            ic: spec.icon,
            en: (!spec.enabled).then_some(false),
            avty,
            qos: 1,
            ..Component::default()
        };
        components.insert(spec.key.to_string(), component.into_value());
    }
    if let ObjectRef::Guest(kind, vmid) = object {
        control_components(ctx, c, *kind, *vmid, &device_id, controls, &mut components);
        let (key, component) = last_task_component(ctx, c, *kind, *vmid, &device_id);
        components.insert(key, component);
    }
    if let ObjectRef::Node(node) = object {
        node_controls::node_control_components(ctx, c, node, &device_id, controls, &mut components);
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
    let payload = serde_json::json!({
        "dev": device,
        "o": origin(ctx),
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

#[cfg(test)]
mod health_tests;
#[cfg(test)]
mod tests;
