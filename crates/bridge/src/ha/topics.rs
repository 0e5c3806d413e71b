//! Every MQTT topic the bridge uses is built (and parsed back) here, and nowhere else,
//! so the topic table in the README and the code cannot drift apart.
//!
//! Ids that come from Proxmox (node names, storage ids) are passed through
//! [`topic_segment`] so that a hostile or odd name (`/`, `#`, `+`, control characters)
//! can never change the shape of a topic; Home Assistant discovery ids go through the
//! stricter [`discovery_id`] (`[a-zA-Z0-9_-]`, HA's own rule).

use crate::pve::GuestKind;

/// Re-exported: topics are built per object, and callers used to find it here.
pub use crate::model::ObjectRef;

/// Makes a Proxmox id safe as one MQTT topic level: `/`, `+`, `#`, NUL and control
/// characters become `_`; an empty id becomes `_`. Proxmox's own naming rules already
/// exclude these, so real ids pass unchanged.
pub fn topic_segment(id: &str) -> String {
    if id.is_empty() {
        return "_".to_string();
    }
    id.chars()
        .map(|c| match c {
            '/' | '+' | '#' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect()
}

/// Makes an id safe for Home Assistant discovery object ids and unique ids:
/// everything outside `[a-zA-Z0-9_-]` becomes `_` (HA drops discovery topics with
/// other characters as "illegal discovery topic").
pub fn discovery_id(id: &str) -> String {
    if id.is_empty() {
        return "_".to_string();
    }
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Which task an inbound MQTT message belongs to (see [`Topics::route_inbound`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundRoute {
    /// Home Assistant's birth message and the retained availability topics of earlier
    /// runs: the publisher owns what the broker was told, so it acts on them.
    Publisher,
    /// Commands (`…/set`), the retained `…/task` reports of tasks to pick up again, and
    /// `bridge/request/…`: the command handler's.
    Commands,
    /// Nothing the bridge acts on.
    Ignore,
}

/// The topic builder: `{base}` and the discovery prefix, fixed for the bridge's life.
#[derive(Clone, Debug)]
pub struct Topics {
    base: String,
    discovery_prefix: String,
}

impl Topics {
    pub fn new(base: &str, discovery_prefix: &str) -> Self {
        Topics {
            base: base.to_string(),
            discovery_prefix: discovery_prefix.to_string(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `{base}/bridge/state`: `online`/`offline`, retained, the Last Will.
    pub fn bridge_state(&self) -> String {
        format!("{}/bridge/state", self.base)
    }

    /// `{base}/bridge/info`: retained JSON about the bridge and its clusters.
    pub fn bridge_info(&self) -> String {
        format!("{}/bridge/info", self.base)
    }

    /// `{base}/bridge/proxmox/{c}`: `online` while polls of cluster `c` succeed,
    /// `offline` while they fail; retained. Feeds the bridge device's "Proxmox API"
    /// sensor and the availability of entities that must not depend on their object's.
    pub fn bridge_proxmox(&self, cluster: &str) -> String {
        format!("{}/bridge/proxmox/{}", self.base, topic_segment(cluster))
    }

    /// The Home Assistant device id of the bridge itself: `{base}_bridge`
    /// (`pve2mqtt_bridge` by default). No object's id has this form (theirs all end in
    /// `_cluster`, `_node_…`, `_storage_…` or a vmid), and two bridges with their own
    /// base topics get two devices.
    pub fn bridge_device_id(&self) -> String {
        format!("{}_bridge", discovery_id(&self.base))
    }

    /// The bridge device's discovery topic: `{prefix}/device/{base}_bridge/config`.
    pub fn bridge_discovery(&self) -> String {
        format!(
            "{}/device/{}/config",
            self.discovery_prefix,
            self.bridge_device_id()
        )
    }

    /// `{base}/bridge/request/{name}` for scripts.
    pub fn bridge_request_filter(&self) -> String {
        format!("{}/bridge/request/+", self.base)
    }

    /// `{base}/bridge/request/{name}` exactly as it arrived (to clear it on the broker):
    /// `name` is one level of a topic the broker delivered, so it holds no `/`, `+`, `#`.
    pub fn bridge_request(&self, name: &str) -> String {
        format!("{}/bridge/request/{name}", self.base)
    }

    pub fn bridge_response(&self, name: &str) -> String {
        format!("{}/bridge/response/{}", self.base, topic_segment(name))
    }

    /// The retained JSON state of an object.
    pub fn state(&self, cluster: &str, object: &ObjectRef) -> String {
        let c = topic_segment(cluster);
        match object {
            ObjectRef::Cluster => format!("{}/{c}/cluster", self.base),
            ObjectRef::Node(node) => format!("{}/{c}/node/{}", self.base, topic_segment(node)),
            ObjectRef::Guest(kind, vmid) => format!("{}/{c}/{}/{vmid}", self.base, kind.as_str()),
            ObjectRef::Storage(node, storage) => format!(
                "{}/{c}/storage/{}/{}",
                self.base,
                topic_segment(node),
                topic_segment(storage)
            ),
            ObjectRef::Disk(node, disk) => format!(
                "{}/{c}/disk/{}/{}",
                self.base,
                topic_segment(node),
                topic_segment(disk)
            ),
            ObjectRef::Zfs(node, pool) => format!(
                "{}/{c}/zfs/{}/{}",
                self.base,
                topic_segment(node),
                topic_segment(pool)
            ),
        }
    }

    /// `…/availability` under the object's state topic.
    pub fn availability(&self, cluster: &str, object: &ObjectRef) -> String {
        format!("{}/availability", self.state(cluster, object))
    }

    /// `{base}/{c}/{qemu|lxc}/{vmid}/set`: commands in.
    pub fn command(&self, cluster: &str, kind: GuestKind, vmid: u32) -> String {
        format!("{}/set", self.state(cluster, &ObjectRef::Guest(kind, vmid)))
    }

    /// `{base}/{c}/{qemu|lxc}/{vmid}/task`: the latest command and its task.
    pub fn task(&self, cluster: &str, kind: GuestKind, vmid: u32) -> String {
        format!(
            "{}/task",
            self.state(cluster, &ObjectRef::Guest(kind, vmid))
        )
    }

    /// `{base}/{c}/{qemu|lxc}/{vmid}/last_task`: the guest's latest Proxmox task of any
    /// origin (GUI, schedules, HA manager, the bridge), from `/cluster/tasks`.
    pub fn last_task(&self, cluster: &str, kind: GuestKind, vmid: u32) -> String {
        format!(
            "{}/last_task",
            self.state(cluster, &ObjectRef::Guest(kind, vmid))
        )
    }

    /// `{base}/{c}/node/{node}/set`: node commands in (SPEC §7).
    pub fn node_command(&self, cluster: &str, node: &str) -> String {
        format!(
            "{}/set",
            self.state(cluster, &ObjectRef::Node(node.to_string()))
        )
    }

    /// `{base}/{c}/node/{node}/task`: the node's latest command and its outcome.
    pub fn node_task(&self, cluster: &str, node: &str) -> String {
        format!(
            "{}/task",
            self.state(cluster, &ObjectRef::Node(node.to_string()))
        )
    }

    /// Parses `{base}/{c}/node/{node}/set` into (cluster, node). The command filter
    /// (`{base}/+/+/+/set`) already covers it.
    pub fn parse_node_command(&self, topic: &str) -> Option<(String, String)> {
        self.parse_node_topic(topic, "/set")
    }

    /// `{base}/{c}/node/{node}{suffix}` into (cluster, node).
    fn parse_node_topic(&self, topic: &str, suffix: &str) -> Option<(String, String)> {
        let rest = topic.strip_prefix(&self.base)?.strip_prefix('/')?;
        let rest = rest.strip_suffix(suffix)?;
        match rest.split('/').collect::<Vec<_>>().as_slice() {
            [cluster, "node", node] => Some((cluster.to_string(), node.to_string())),
            _ => None,
        }
    }

    /// Home Assistant's birth/will topic.
    pub fn ha_status(&self) -> String {
        format!("{}/status", self.discovery_prefix)
    }

    /// The stable device id of an object, also the prefix of its entities' unique ids
    /// (`pve2mqtt_{c}_{vmid}`, `pve2mqtt_{c}_node_{node}`, …; SPEC §5).
    pub fn device_id(cluster: &str, object: &ObjectRef) -> String {
        let c = discovery_id(cluster);
        match object {
            ObjectRef::Cluster => format!("pve2mqtt_{c}_cluster"),
            ObjectRef::Node(node) => format!("pve2mqtt_{c}_node_{}", discovery_id(node)),
            ObjectRef::Guest(_, vmid) => format!("pve2mqtt_{c}_{vmid}"),
            ObjectRef::Storage(node, storage) => format!(
                "pve2mqtt_{c}_storage_{}_{}",
                discovery_id(node),
                discovery_id(storage)
            ),
            ObjectRef::Disk(node, disk) => format!(
                "pve2mqtt_{c}_disk_{}_{}",
                discovery_id(node),
                discovery_id(disk)
            ),
            ObjectRef::Zfs(node, pool) => format!(
                "pve2mqtt_{c}_zfs_{}_{}",
                discovery_id(node),
                discovery_id(pool)
            ),
        }
    }

    /// Device-based discovery topic: `{prefix}/device/{device id}/config`.
    pub fn discovery(&self, cluster: &str, object: &ObjectRef) -> String {
        format!(
            "{}/device/{}/config",
            self.discovery_prefix,
            Self::device_id(cluster, object)
        )
    }

    /// Filters for the retained availability topics of earlier runs: at connect time the
    /// broker hands them back, and objects that vanished while the bridge was down are
    /// found and cleaned up from them.
    pub fn retained_inventory_filters(&self) -> Vec<String> {
        vec![
            format!("{}/+/+/+/availability", self.base),
            format!("{}/+/storage/+/+/availability", self.base),
            format!("{}/+/disk/+/+/availability", self.base),
            format!("{}/+/zfs/+/+/availability", self.base),
            format!("{}/+/cluster/availability", self.base),
        ]
    }

    /// Parses an availability topic back into (cluster, object): the inverse of
    /// [`Topics::availability`].
    pub fn parse_availability(&self, topic: &str) -> Option<(String, ObjectRef)> {
        let rest = topic.strip_prefix(&self.base)?.strip_prefix('/')?;
        let rest = rest.strip_suffix("/availability")?;
        let parts: Vec<&str> = rest.split('/').collect();
        let object = match parts.as_slice() {
            [_, "cluster"] => ObjectRef::Cluster,
            [_, "node", node] => ObjectRef::Node(node.to_string()),
            [_, "storage", node, storage] => {
                ObjectRef::Storage(node.to_string(), storage.to_string())
            }
            [_, "disk", node, disk] => ObjectRef::Disk(node.to_string(), disk.to_string()),
            [_, "zfs", node, pool] => ObjectRef::Zfs(node.to_string(), pool.to_string()),
            [_, kind, vmid] => {
                let kind: GuestKind = kind.parse().ok()?;
                ObjectRef::Guest(kind, vmid.parse().ok()?)
            }
            _ => return None,
        };
        Some((parts[0].to_string(), object))
    }

    /// Filter for every guest's task topic: at connect time the broker hands back the
    /// retained ones, and tasks a previous run was still following are picked up again.
    pub fn task_filter(&self) -> String {
        format!("{}/+/+/+/task", self.base)
    }

    /// Parses a task topic into (cluster, kind, vmid).
    pub fn parse_task(&self, topic: &str) -> Option<(String, GuestKind, u32)> {
        let rest = topic.strip_prefix(&self.base)?.strip_prefix('/')?;
        let rest = rest.strip_suffix("/task")?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [cluster, kind, vmid] => {
                Some((cluster.to_string(), kind.parse().ok()?, vmid.parse().ok()?))
            }
            _ => None,
        }
    }

    /// Parses `{base}/{c}/node/{node}/task` into (cluster, node): the task filter covers
    /// it, and an earlier run's node command is picked up from it like a guest's.
    pub fn parse_node_task(&self, topic: &str) -> Option<(String, String)> {
        self.parse_node_topic(topic, "/task")
    }

    /// Parses `{base}/bridge/request/{name}` into the request's name (one topic level,
    /// possibly empty: the `+` of the subscription matches an empty level too).
    pub fn parse_bridge_request<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let name = topic
            .strip_prefix(&self.base)?
            .strip_prefix("/bridge/request/")?;
        (!name.contains('/')).then_some(name)
    }

    /// Sends an inbound message to the task that acts on it, decided by its topic alone.
    /// The MQTT event loop routes with this, so a command never waits behind the
    /// publisher's work (a view of thousands of objects, a discovery burst).
    pub fn route_inbound(&self, topic: &str) -> InboundRoute {
        if topic == self.ha_status() || self.parse_availability(topic).is_some() {
            InboundRoute::Publisher
        } else if self.parse_command(topic).is_some()
            || self.parse_node_command(topic).is_some()
            || self.parse_task(topic).is_some()
            || self.parse_node_task(topic).is_some()
            || self.parse_bridge_request(topic).is_some()
        {
            InboundRoute::Commands
        } else {
            InboundRoute::Ignore
        }
    }

    /// Filter for command topics of every cluster.
    pub fn command_filter(&self) -> String {
        format!("{}/+/+/+/set", self.base)
    }

    /// Parses a command topic into (cluster, kind, vmid); `None` for anything else.
    pub fn parse_command(&self, topic: &str) -> Option<(String, GuestKind, u32)> {
        let rest = topic.strip_prefix(&self.base)?.strip_prefix('/')?;
        let rest = rest.strip_suffix("/set")?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [cluster, kind, vmid] => {
                let kind: GuestKind = kind.parse().ok()?;
                // Canonical digits only: `0100` must not act on guest 100.
                let vmid: u32 = vmid.parse().ok().filter(|v: &u32| v.to_string() == *vmid)?;
                Some((cluster.to_string(), kind, vmid))
            }
            _ => None,
        }
    }
}

/// The cluster id goes into MQTT topics and Home Assistant unique ids, where `/`, `+`, `#`
/// and spaces would break things.
pub fn check_cluster_name(name: &str) -> Result<(), String> {
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    {
        Ok(())
    } else {
        Err(format!(
            "`{name}` may only contain letters, digits, `_` and `-` (it becomes part of MQTT \
             topics and Home Assistant ids)"
        ))
    }
}

/// A topic prefix we publish under: wildcards and NUL are illegal in published topics, and
/// empty levels from a stray `/` would make topics nobody subscribes to.
pub fn check_topic_root(topic: &str) -> Result<(), String> {
    if topic.contains(['+', '#']) {
        return Err(format!(
            "`{topic}` must not contain the MQTT wildcards `+` or `#`"
        ));
    }
    if topic.contains('\0') {
        return Err("must not contain a NUL character".into());
    }
    if topic.starts_with('/') || topic.ends_with('/') {
        return Err(format!("`{topic}` must not start or end with `/`"));
    }
    if topic.contains("//") {
        return Err(format!("`{topic}` must not contain an empty level (`//`)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics::new("pve2mqtt", "homeassistant")
    }

    #[test]
    fn state_topics_follow_the_spec_table() {
        let t = topics();
        assert_eq!(
            t.state("home", &ObjectRef::Node("pve".into())),
            "pve2mqtt/home/node/pve"
        );
        assert_eq!(
            t.state("home", &ObjectRef::Guest(GuestKind::Qemu, 100)),
            "pve2mqtt/home/qemu/100"
        );
        assert_eq!(
            t.availability("home", &ObjectRef::Guest(GuestKind::Lxc, 101)),
            "pve2mqtt/home/lxc/101/availability"
        );
        assert_eq!(
            t.state(
                "home",
                &ObjectRef::Storage("pve".into(), "local-lvm".into())
            ),
            "pve2mqtt/home/storage/pve/local-lvm"
        );
        assert_eq!(
            t.command("home", GuestKind::Qemu, 100),
            "pve2mqtt/home/qemu/100/set"
        );
        assert_eq!(
            t.task("home", GuestKind::Lxc, 101),
            "pve2mqtt/home/lxc/101/task"
        );
    }

    #[test]
    fn the_bridge_device_and_its_proxmox_states_have_their_own_topics() {
        let t = topics();
        assert_eq!(t.bridge_proxmox("home"), "pve2mqtt/bridge/proxmox/home");
        assert_eq!(t.bridge_proxmox("a/#"), "pve2mqtt/bridge/proxmox/a__");
        assert_eq!(t.bridge_device_id(), "pve2mqtt_bridge");
        assert_eq!(
            t.bridge_discovery(),
            "homeassistant/device/pve2mqtt_bridge/config"
        );
        let other = Topics::new("site/2", "homeassistant");
        assert_eq!(other.bridge_device_id(), "site_2_bridge");
        // Nothing the bridge publishes there is taken for input or an object.
        for topic in [t.bridge_proxmox("home"), t.bridge_proxmox("availability")] {
            assert_eq!(t.route_inbound(&topic), InboundRoute::Ignore, "{topic}");
        }
        // No object's device id has the bridge's form, whatever the cluster is called.
        for object in [
            ObjectRef::Cluster,
            ObjectRef::Node("x".into()),
            ObjectRef::Guest(GuestKind::Qemu, 100),
            ObjectRef::Storage("x".into(), "y".into()),
        ] {
            assert_ne!(Topics::device_id("bridge", &object), t.bridge_device_id());
            assert_ne!(Topics::device_id("pve2mqtt", &object), t.bridge_device_id());
        }
    }

    #[test]
    fn hostile_names_cannot_change_the_topic_shape() {
        let t = topics();
        let topic = t.state("c", &ObjectRef::Storage("n/#".into(), "a+b/c".into()));
        assert_eq!(topic, "pve2mqtt/c/storage/n__/a_b_c");
        assert_eq!(topic_segment(""), "_");
        assert_eq!(topic_segment("nas\u{0}\n"), "nas__");
        // dots and unicode are legal in topics and kept
        assert_eq!(topic_segment("nfs.backup-ü"), "nfs.backup-ü");
    }

    #[test]
    fn discovery_ids_only_use_ha_characters() {
        assert_eq!(discovery_id("nfs.backup/ü#"), "nfs_backup___");
        let topic = topics().discovery(
            "my.cluster",
            &ObjectRef::Storage("pve".into(), "nfs.b".into()),
        );
        assert_eq!(
            topic,
            "homeassistant/device/pve2mqtt_my_cluster_storage_pve_nfs_b/config"
        );
    }

    #[test]
    fn availability_topics_parse_back_to_their_object() {
        let t = topics();
        for object in [
            ObjectRef::Cluster,
            ObjectRef::Node("pve1".into()),
            ObjectRef::Guest(GuestKind::Qemu, 100),
            ObjectRef::Guest(GuestKind::Lxc, 101),
            ObjectRef::Storage("pve1".into(), "local".into()),
        ] {
            let topic = t.availability("home", &object);
            assert_eq!(
                t.parse_availability(&topic),
                Some(("home".to_string(), object))
            );
        }
        assert_eq!(
            t.parse_availability("pve2mqtt/home/qemu/abc/availability"),
            None
        );
        assert_eq!(t.parse_availability("other/home/node/x/availability"), None);
    }

    #[test]
    fn command_topics_parse_back() {
        let t = topics();
        assert_eq!(
            t.parse_command("pve2mqtt/home/lxc/101/set"),
            Some(("home".to_string(), GuestKind::Lxc, 101))
        );
        assert_eq!(t.parse_command("pve2mqtt/home/node/pve/set"), None);
        assert_eq!(t.parse_command("pve2mqtt/home/qemu/x/set"), None);
        assert_eq!(t.parse_command("pve2mqtt/home/qemu/100/task"), None);
        assert_eq!(
            t.parse_task("pve2mqtt/home/qemu/100/task"),
            Some(("home".to_string(), GuestKind::Qemu, 100))
        );
        assert_eq!(t.parse_task("pve2mqtt/home/qemu/100/set"), None);
        assert_eq!(
            t.parse_bridge_request("pve2mqtt/bridge/request/backup"),
            Some("backup")
        );
        assert_eq!(t.parse_bridge_request("pve2mqtt/bridge/request/"), Some(""));
        assert_eq!(t.parse_bridge_request("pve2mqtt/bridge/request/a/b"), None);
        assert_eq!(t.parse_bridge_request("pve2mqtt/bridge/response/x"), None);
        assert_eq!(t.parse_bridge_request("other/bridge/request/x"), None);
    }

    #[test]
    fn inbound_messages_go_to_the_task_that_acts_on_them() {
        let t = topics();
        let publisher = [
            "homeassistant/status",
            "pve2mqtt/home/qemu/100/availability",
            "pve2mqtt/home/node/pve1/availability",
            "pve2mqtt/home/storage/pve1/local/availability",
            "pve2mqtt/home/cluster/availability",
        ];
        let commands = [
            "pve2mqtt/home/qemu/100/set",
            "pve2mqtt/home/lxc/101/set",
            "pve2mqtt/home/lxc/101/task",
            "pve2mqtt/bridge/request/refresh",
            "pve2mqtt/bridge/request/",
            // A cluster may be called `bridge`: its guests' commands are still commands.
            "pve2mqtt/bridge/qemu/100/set",
            "pve2mqtt/home/node/pve1/set",
            // An earlier run's node command, picked up after a restart.
            "pve2mqtt/home/node/pve1/task",
        ];
        let ignored = [
            "pve2mqtt/bridge/state",
            "pve2mqtt/bridge/response/refresh",
            "pve2mqtt/home/qemu/100",
            "pve2mqtt/home/qemu/abc/set",
            "homeassistant/device/pve2mqtt_home_100/config",
            "other/home/qemu/100/set",
        ];
        for (route, topics) in [
            (InboundRoute::Publisher, &publisher[..]),
            (InboundRoute::Commands, &commands[..]),
            (InboundRoute::Ignore, &ignored[..]),
        ] {
            for topic in topics {
                assert_eq!(t.route_inbound(topic), route, "{topic}");
            }
        }
        // Every filter the bridge subscribes to leads somewhere, checked on a sample
        // topic for each (`+` replaced by a plausible level).
        let mut filters = t.retained_inventory_filters();
        filters.extend([
            t.ha_status(),
            t.command_filter(),
            t.task_filter(),
            t.bridge_request_filter(),
        ]);
        for filter in filters {
            let sample = filter
                .replacen('+', "home", 1)
                .replacen('+', "qemu", 1)
                .replacen('+', "100", 1)
                .replace('+', "x");
            assert_ne!(t.route_inbound(&sample), InboundRoute::Ignore, "{filter}");
        }
        // The node command topic is one the command filter covers, and it routes.
        let node_set = t.node_command("home", "pve1");
        assert_eq!(node_set, "pve2mqtt/home/node/pve1/set");
        assert!(topic_matches(&t.command_filter(), &node_set));
        assert_eq!(t.route_inbound(&node_set), InboundRoute::Commands);
    }

    /// MQTT filter matching (`+` one level, `#` the rest), for the routing test.
    fn topic_matches(filter: &str, topic: &str) -> bool {
        let mut f = filter.split('/');
        let mut t = topic.split('/');
        loop {
            match (f.next(), t.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    #[test]
    fn node_command_topics_parse_back() {
        let t = topics();
        assert_eq!(
            t.parse_node_command("pve2mqtt/home/node/pve1/set"),
            Some(("home".to_string(), "pve1".to_string()))
        );
        assert_eq!(t.node_task("home", "pve1"), "pve2mqtt/home/node/pve1/task");
        assert_eq!(t.parse_node_command("pve2mqtt/home/qemu/100/set"), None);
        assert_eq!(t.parse_node_command("pve2mqtt/home/node/pve1/task"), None);
        assert_eq!(t.parse_task("pve2mqtt/home/node/pve1/task"), None);
        assert_eq!(
            t.parse_node_task("pve2mqtt/home/node/pve1/task"),
            Some(("home".to_string(), "pve1".to_string()))
        );
        assert_eq!(t.parse_node_task("pve2mqtt/home/node/pve1/set"), None);
        assert_eq!(t.parse_command("pve2mqtt/home/node/pve1/set"), None);
    }
}
