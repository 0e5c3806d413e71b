//! Tolerant response types (reference `pve-api.md` §2 is the law here).
//!
//! Rules every struct follows, because real servers break every stricter reading:
//! - unknown fields are ignored (each release adds some: `memhost`, `pressure*`, `host-arch`);
//! - only what the bridge reads is declared: every other field is skipped like an unknown
//!   one, so it costs nothing to decode and cannot make a row fail;
//! - a field is optional or defaulted unless Proxmox always sends it, since rows are built
//!   from whatever data exists (a guest without RRD data is only `{id, vmid, node, type,
//!   status}`, a node row without `Sys.Audit` has no `cpu`/`mem`);
//! - booleans, numbers and `vmid` go through the lenient readers in [`super::de`];
//! - enums are open: a value this version does not know is kept in `Other(String)`, so one
//!   new row type (`network` in PVE 9) cannot make a whole list fail.
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use super::de;
use super::upid::Upid;

/// Declares a string-valued enum that keeps unknown values instead of failing.
macro_rules! open_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A value this version does not know, kept verbatim.
            Other(String),
        }

        impl $name {
            /// The text Proxmox uses for this value.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Other(text) => text,
                }
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                match text {
                    $($text => Self::$variant,)+
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                // A visitor, so a known value (every row of every poll) allocates nothing.
                struct Text;
                impl<'de> serde::de::Visitor<'de> for Text {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("a string")
                    }
                    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<$name, E> {
                        Ok($name::from(text))
                    }
                }
                deserializer.deserialize_str(Text)
            }
        }
    };
}

open_enum! {
    /// The `type` of a `/cluster/resources` row.
    pub enum ResourceKind {
        Node => "node",
        Qemu => "qemu",
        Lxc => "lxc",
        Storage => "storage",
        Pool => "pool",
        /// PVE 8 SDN zone rows; PVE 9 nodes report `network` rows instead.
        Sdn => "sdn",
        /// New in PVE 9: SDN zones and fabrics.
        Network => "network",
    }
}

open_enum! {
    /// The `type` of a `/cluster/status` row.
    pub enum ClusterStatusKind {
        Cluster => "cluster",
        Node => "node",
    }
}

open_enum! {
    /// `status` of a task: `running` while its worker process lives, then `stopped`.
    pub enum TaskState {
        Running => "running",
        Stopped => "stopped",
    }
}

/// The two guest kinds, as they appear in API paths (`/nodes/{node}/qemu/…`, `…/lxc/…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestKind {
    Qemu,
    Lxc,
}

impl GuestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GuestKind::Qemu => "qemu",
            GuestKind::Lxc => "lxc",
        }
    }

    /// The guest kind of a `/cluster/resources` row, if it is a guest.
    pub fn of(kind: &ResourceKind) -> Option<GuestKind> {
        match kind {
            ResourceKind::Qemu => Some(GuestKind::Qemu),
            ResourceKind::Lxc => Some(GuestKind::Lxc),
            _ => None,
        }
    }
}

impl fmt::Display for GuestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A guest kind other than `qemu` or `lxc`.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("unknown guest kind {0:?} (expected \"qemu\" or \"lxc\")")]
pub struct UnknownGuestKind(pub String);

impl std::str::FromStr for GuestKind {
    type Err = UnknownGuestKind;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "qemu" => Ok(GuestKind::Qemu),
            "lxc" => Ok(GuestKind::Lxc),
            other => Err(UnknownGuestKind(other.to_owned())),
        }
    }
}

/// What `POST /nodes/{node}/vzdump` started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VzdumpStarted {
    /// A vzdump task to follow.
    Task(Upid),
    /// Proxmox answered the literal `"OK"`: none of the listed guests lives on this node
    /// (or `stop=1` found nothing local), so no task was started.
    NothingLocal,
}

/// Splits a Proxmox tag string. Proxmox stores `a;b`, but older releases and hand-edited
/// configs also use `,` or spaces, and its own parser accepts all three.
pub fn split_tags(tags: &str) -> Vec<String> {
    tag_iter(tags).map(str::to_owned).collect()
}

/// The tags of a Proxmox tag string, borrowed (see [`split_tags`]).
pub fn tag_iter(tags: &str) -> impl Iterator<Item = &str> {
    tags.split([';', ',', ' '])
        .map(str::trim)
        .filter(|tag| !tag.is_empty())
}

/// One row of `GET /cluster/resources` (no type filter): a node, guest, storage (one row per
/// node it is enabled on), pool, SDN zone or network.
///
/// Only the fields the bridge uses are read (`id`, `level`, `cgroup-mode`, `sdn`, `network-type`,
/// `host-arch`, `memhost`, … are skipped like any unknown field): the fast lane decodes
/// every row of this list on every poll, and each field kept costs on each of them.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Resource {
    #[serde(rename = "type")]
    pub kind: ResourceKind,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub node: Option<String>,
    #[serde(default, deserialize_with = "de::opt_vmid")]
    pub vmid: Option<u32>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub name: Option<String>,
    /// Depends on the kind: guests `running`/`stopped`/`unknown`, nodes `online`/`offline`/
    /// `unknown`, storages `available`/`unknown`, SDN `ok`/….
    #[serde(default, deserialize_with = "de::opt_string")]
    pub status: Option<String>,
    /// CPU use as a fraction of `maxcpu` CPUs (0..1).
    #[serde(default, deserialize_with = "de::opt_f64")]
    pub cpu: Option<f64>,
    #[serde(default, deserialize_with = "de::opt_f64")]
    pub maxcpu: Option<f64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub mem: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub maxmem: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub disk: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub maxdisk: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub netin: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub netout: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub diskread: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub diskwrite: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub uptime: Option<u64>,
    #[serde(default, deserialize_with = "de::bool_or_false")]
    pub template: bool,
    /// Raw tag string as Proxmox stores it (`a;b`); see [`Resource::tags`].
    #[serde(default, rename = "tags", deserialize_with = "de::opt_string")]
    pub tags_raw: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub lock: Option<String>,
    /// HA state of a managed guest (`started`, `stopped`, `error`, …); absent when unmanaged.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub hastate: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub pool: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub storage: Option<String>,
    /// Storage plugin (`dir`, `lvmthin`, `pbs`, `cifs`, …).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub plugintype: Option<String>,
    /// Comma-separated content types of a storage (`images,rootdir,backup`).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub content: Option<String>,
    #[serde(default, deserialize_with = "de::bool_or_false")]
    pub shared: bool,
    /// [node] subscription level letter (`c`, `b`, `s`, `p`); `""` without an active
    /// subscription; absent before the node has RRD data (reference round 2 §6).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub level: Option<String>,
}

impl Resource {
    /// The guest's tags, split; empty when it has none.
    pub fn tags(&self) -> Vec<String> {
        self.tags_raw.as_deref().map(split_tags).unwrap_or_default()
    }

    /// True for `qemu` and `lxc` rows.
    pub fn is_guest(&self) -> bool {
        matches!(self.kind, ResourceKind::Qemu | ResourceKind::Lxc)
    }
}

/// One row of `GET /cluster/status`: the `cluster` row (absent on a standalone host) or a
/// `node` row.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ClusterStatusRow {
    #[serde(rename = "type")]
    pub kind: ClusterStatusKind,
    /// Cluster name, or node name.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub name: Option<String>,
    /// [cluster] whether a majority of nodes is online.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub quorate: Option<bool>,
}

/// `GET /nodes/{node}/status`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct NodeStatus {
    /// 1, 5 and 15 minute load averages (sent as strings).
    #[serde(default, deserialize_with = "de::opt_loadavg")]
    pub loadavg: Option<[f64; 3]>,
    #[serde(default)]
    pub memory: Option<MemoryUsage>,
    #[serde(default)]
    pub swap: Option<MemoryUsage>,
    #[serde(default)]
    pub rootfs: Option<FilesystemUsage>,
    /// `pve-manager/9.1.2/9d436f37a0ac4172`
    #[serde(default, deserialize_with = "de::opt_string")]
    pub pveversion: Option<String>,
    /// `Linux 6.17.4-1-pve #1 SMP PREEMPT_DYNAMIC …`
    #[serde(default, deserialize_with = "de::opt_string")]
    pub kversion: Option<String>,
    #[serde(default)]
    pub cpuinfo: Option<CpuInfo>,
    /// IO wait as a fraction of CPU time (0..1), like `cpu`.
    #[serde(default, deserialize_with = "de::opt_f64")]
    pub wait: Option<f64>,
}

/// `memory` and `swap` of a node, in bytes.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct MemoryUsage {
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub total: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub used: Option<u64>,
}

/// `rootfs` of a node, in bytes.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct FilesystemUsage {
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub total: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub used: Option<u64>,
}

/// `cpuinfo` of a node.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct CpuInfo {
    /// Logical CPUs (threads).
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub cpus: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub model: Option<String>,
}

/// `GET /version`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Version {
    /// Full pve-manager version (`9.1.2`).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub version: Option<String>,
    /// Point release (`9.1`).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub release: Option<String>,
}

/// One row of `GET /nodes/{node}/storage/{storage}/content`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct StorageItem {
    /// Creation time (Unix seconds); for backups, when the backup was taken.
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub ctime: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_vmid")]
    pub vmid: Option<u32>,
    /// Bytes.
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub size: Option<u64>,
    /// PBS backups after a verify job: `{"state": "ok"|"failed", "upid": …}`.
    #[serde(default)]
    pub verification: Option<Verification>,
}

/// `verification` of a PBS backup in storage content.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Verification {
    #[serde(default, deserialize_with = "de::opt_string")]
    pub state: Option<String>,
}

/// `GET /nodes/{node}/{qemu|lxc}/{vmid}/status/current` (also the shape of one row of the
/// per-node qemu/lxc lists, minus `ha`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct GuestStatus {
    /// `running` or `stopped` (the process); see `qmpstatus` for paused/suspended VMs.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub status: Option<String>,
    /// QEMU's own run state: `running`, `paused`, `prelaunch`, `suspended`, … (VMs only).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub qmpstatus: Option<String>,
    #[serde(default, rename = "tags", deserialize_with = "de::opt_string")]
    pub tags_raw: Option<String>,
}

impl GuestStatus {
    /// The guest's tags, split; empty when it has none.
    pub fn tags(&self) -> Vec<String> {
        self.tags_raw.as_deref().map(split_tags).unwrap_or_default()
    }
}

/// Proxmox's success test for an exit status (`PVE::Tools::upid_status_is_error` negated):
/// `OK`, or `WARNINGS: n` (the task finished, with warnings in its log).
pub fn exitstatus_is_success(exitstatus: &str) -> bool {
    exitstatus == "OK"
        || exitstatus
            .strip_prefix("WARNINGS: ")
            .is_some_and(|count| !count.is_empty() && count.bytes().all(|b| b.is_ascii_digit()))
}

/// `GET /nodes/{node}/tasks/{upid}/status`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct TaskStatus {
    #[serde(default)]
    pub status: Option<TaskState>,
    /// Present only once stopped: `OK`, `WARNINGS: n`, or the bare error text
    /// (`VM 100 already running`, `job errors`).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub exitstatus: Option<String>,
}

impl TaskStatus {
    pub fn is_running(&self) -> bool {
        self.status == Some(TaskState::Running)
    }

    /// Stopped with `OK` or `WARNINGS: n`.
    pub fn succeeded(&self) -> bool {
        !self.is_running()
            && self
                .exitstatus
                .as_deref()
                .is_some_and(exitstatus_is_success)
    }

    /// Proxmox's error text when the task stopped and failed.
    pub fn error_text(&self) -> Option<&str> {
        if self.is_running() || self.succeeded() {
            return None;
        }
        self.exitstatus.as_deref()
    }
}

/// One row of `GET /nodes/{node}/tasks`. Unlike [`TaskStatus`], `status` holds the exit text
/// (`OK`, `WARNINGS: n`, the error) for finished tasks and `RUNNING` (or nothing) for active ones.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct TaskListEntry {
    #[serde(default, deserialize_with = "de::opt_string")]
    pub upid: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub status: Option<String>,
    #[serde(default, rename = "type", deserialize_with = "de::opt_string")]
    pub task_type: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub user: Option<String>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub starttime: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub endtime: Option<u64>,
    /// `/cluster/tasks` rows name their node; so does the UPID.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub node: Option<String>,
    /// Token tasks: `user` is `root@pam`, this is the token's name (`user@realm!tokenid`
    /// split, as Proxmox renders task rows).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub tokenid: Option<String>,
}

impl TaskListEntry {
    pub fn is_running(&self) -> bool {
        self.endtime.is_none() && matches!(self.status.as_deref(), None | Some("RUNNING"))
    }

    pub fn succeeded(&self) -> bool {
        !self.is_running() && self.status.as_deref().is_some_and(exitstatus_is_success)
    }
}

/// One task log line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct TaskLogLine {
    /// Line number, from 1.
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub n: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub t: Option<String>,
}

impl TaskLogLine {
    pub fn text(&self) -> &str {
        self.t.as_deref().unwrap_or_default()
    }
}

/// A page of a task log. `total` is the number of lines the log has, sent beside `data`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskLog {
    /// Real log lines only: Proxmox's synthetic `no content` line is not among them.
    pub lines: Vec<TaskLogLine>,
    pub total: u64,
    /// The `start` for the next page, from the line numbers (see `PveClient::task_log`).
    pub next_start: u64,
}

/// `GET /access/permissions` for the token itself: path -> privilege -> *propagate*.
///
/// A privilege listed for a path is granted there; its boolean says whether the grant also
/// holds below that path. Proxmox computes each listed path with inheritance already
/// applied, so [`Permissions::has`] only walks up to the nearest listed ancestor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions(pub BTreeMap<String, BTreeMap<String, bool>>);

impl Permissions {
    /// Whether `privilege` holds on `path`: listed on the path itself, or on an ancestor
    /// (`/vms` or `/` for `/vms/100`) with propagation.
    pub fn has(&self, path: &str, privilege: &str) -> bool {
        let path = normalise_acl_path(path);
        if self
            .0
            .get(&path)
            .is_some_and(|privs| privs.contains_key(privilege))
        {
            return true;
        }
        let propagated = acl_ancestors(&path).any(|ancestor| {
            self.0
                .get(ancestor)
                .and_then(|privs| privs.get(privilege))
                .copied()
                .unwrap_or(false)
        });
        propagated
    }

    /// True when the map is empty: a token with privilege separation and no ACL of its own.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(BTreeMap::is_empty)
    }
}

impl<'de> Deserialize<'de> for Permissions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw =
            BTreeMap::<String, BTreeMap<String, serde_json::Value>>::deserialize(deserializer)?;
        let mut permissions = BTreeMap::new();
        for (path, privileges) in raw {
            let mut parsed = BTreeMap::new();
            for (privilege, propagate) in privileges {
                let propagate = de::bool_from_value(&propagate)
                    .map_err(|e| serde::de::Error::custom(format!("{path} {privilege}: {e}")))?
                    .unwrap_or(false);
                parsed.insert(privilege, propagate);
            }
            permissions.insert(normalise_acl_path(&path), parsed);
        }
        Ok(Permissions(permissions))
    }
}

/// `/vms/100/` and `vms/100` both mean `/vms/100`.
fn normalise_acl_path(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    format!("/{trimmed}")
}

/// `/vms/100` -> `/vms`, `/`.
fn acl_ancestors(path: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(path);
    std::iter::from_fn(move || {
        let current = rest?;
        if current == "/" {
            rest = None;
            return None;
        }
        let parent = match current.rfind('/') {
            Some(0) | None => "/",
            Some(index) => &current[..index],
        };
        rest = Some(parent);
        Some(parent)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;

    /// Decodes the `data` of a fixture envelope.
    fn data<T: DeserializeOwned>(fixture: &str) -> T {
        #[derive(Deserialize)]
        struct Envelope<T> {
            data: T,
        }
        let envelope: Envelope<T> = serde_json::from_str(fixture).expect("fixture decodes");
        envelope.data
    }

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/pve/",
                $name
            ))
        };
    }

    #[test]
    fn four_node_cluster_resources_decode_with_template_tags_and_node_rows() {
        let rows: Vec<Resource> = data(fixture!("cluster_resources.4node-qemu-node-storage.json"));
        let server1 = rows.iter().find(|r| r.vmid == Some(100)).unwrap();
        assert_eq!(server1.kind, ResourceKind::Qemu);
        assert_eq!(server1.vmid, Some(100));
        assert_eq!(server1.node.as_deref(), Some("node2"));
        assert_eq!(server1.maxmem, Some(1_073_741_824));
        assert_eq!(server1.cpu, Some(0.0249060195469461));
        assert!(!server1.template);
        assert!(rows.iter().find(|r| r.vmid == Some(101)).unwrap().template);
        let tagged = rows.iter().find(|r| r.vmid == Some(102)).unwrap();
        assert_eq!(tagged.tags_raw.as_deref(), Some("go-proxmox+cloud-init"));
        assert_eq!(tagged.tags(), vec!["go-proxmox+cloud-init".to_owned()]);
        let node3 = rows
            .iter()
            .find(|r| r.kind == ResourceKind::Node && r.node.as_deref() == Some("node3"))
            .unwrap();
        assert_eq!(node3.kind, ResourceKind::Node);
        assert_eq!(node3.node.as_deref(), Some("node3"));
        assert!(rows.iter().any(|r| r.kind == ResourceKind::Storage));
    }

    #[test]
    fn single_node_cluster_resources_decode_lxc_storage_and_sdn_rows() {
        let rows: Vec<Resource> = data(fixture!(
            "cluster_resources.1node-lxc-qemu-storage-sdn.json"
        ));
        let jellyfin = rows.iter().find(|r| r.vmid == Some(100)).unwrap();
        assert_eq!(jellyfin.kind, ResourceKind::Lxc);
        assert_eq!(jellyfin.name.as_deref(), Some("Jellyfin"));
        assert_eq!(jellyfin.netin, Some(65_412_250_538));
        assert!(jellyfin.is_guest());
        let dsm = rows
            .iter()
            .find(|r| r.storage.as_deref() == Some("DSM"))
            .unwrap();
        assert!(dsm.shared, "shared 1 is true");
        assert_eq!(dsm.plugintype.as_deref(), Some("cifs"));
        let hard = rows
            .iter()
            .find(|r| r.storage.as_deref() == Some("hard"))
            .unwrap();
        assert!(!hard.shared, "shared 0 is false");
        let win = rows.iter().find(|r| r.vmid == Some(102)).unwrap();
        assert_eq!(win.maxdisk, Some(0));
        let sdn = rows.iter().find(|r| r.kind == ResourceKind::Sdn).unwrap();
        assert_eq!(sdn.node.as_deref(), Some("pve"));
        assert!(sdn.cpu.is_none() && sdn.vmid.is_none());
    }

    #[test]
    fn pve9_network_rows_minimal_guest_rows_and_unknown_types_decode() {
        // Built from the schema extract (no recorded PVE 9 `network` row exists, §5).
        let json = r#"{"data":[
            {"id":"network/pve/zone/localnetwork","type":"network","node":"pve","network":"localnetwork",
             "network-type":"zone","status":"ok"},
            {"id":"qemu/105","vmid":105,"node":"pve2","type":"qemu","status":"unknown"},
            {"id":"/pool/prod","type":"pool","pool":"prod"},
            {"id":"openvz/1","type":"openvz","future-field":{"nested":[1,2]}},
            {"id":"node/pve","type":"node","node":"pve","status":"online","host-arch":"x86_64",
             "hastate":"online","memhost":123}
        ]}"#;
        let rows: Vec<Resource> = data(json);
        assert_eq!(rows[0].kind, ResourceKind::Network);
        assert_eq!(rows[0].status.as_deref(), Some("ok"));
        assert_eq!(rows[1].status.as_deref(), Some("unknown"));
        assert!(rows[1].name.is_none() && rows[1].mem.is_none());
        assert_eq!(rows[2].kind, ResourceKind::Pool);
        assert_eq!(rows[3].kind, ResourceKind::Other("openvz".into()));
        assert_eq!(rows[3].kind.as_str(), "openvz");
        assert_eq!(rows[4].kind, ResourceKind::Node);
        assert_eq!(rows[4].status.as_deref(), Some("online"));
    }

    #[test]
    fn tags_split_on_semicolons_commas_and_spaces() {
        assert_eq!(split_tags("prod;db"), vec!["prod", "db"]);
        assert_eq!(split_tags("a,b c;;d "), vec!["a", "b", "c", "d"]);
        assert!(split_tags("").is_empty());
        let untagged: Resource = serde_json::from_str(r#"{"id":"qemu/1","type":"qemu"}"#).unwrap();
        assert!(untagged.tags().is_empty());
    }

    #[test]
    fn nodes_list_rows_decode_as_node_resources() {
        // `/nodes` rows are node rows of cluster/resources plus `ssl_fingerprint`.
        let rows: Vec<Resource> = data(fixture!("nodes.4node.json"));
        assert_eq!(rows.len(), 4);
        assert!(rows.iter().all(|r| r.kind == ResourceKind::Node));
        let node4 = rows
            .iter()
            .find(|r| r.node.as_deref() == Some("node4"))
            .unwrap();
        assert_eq!(node4.maxmem, Some(65_919_561_728));
        assert_eq!(node4.maxcpu, Some(8.0));
    }

    #[test]
    fn cluster_status_integer_booleans_become_bools() {
        let rows: Vec<ClusterStatusRow> = data(fixture!("cluster_status.4node.json"));
        let cluster = &rows[0];
        assert_eq!(cluster.kind, ClusterStatusKind::Cluster);
        assert_eq!(cluster.name.as_deref(), Some("clustername"));
        assert_eq!(cluster.quorate, Some(true));
        let node1 = rows
            .iter()
            .find(|r| r.name.as_deref() == Some("node1"))
            .unwrap();
        assert_eq!(node1.kind, ClusterStatusKind::Node);
    }

    #[test]
    fn node_status_reads_string_loadavg() {
        let status: NodeStatus = data(fixture!("nodes_node_status.pve9.1.2.json"));
        assert_eq!(status.loadavg, Some([1.74, 1.86, 1.50]));
        assert_eq!(
            status.pveversion.as_deref(),
            Some("pve-manager/9.1.2/9d436f37a0ac4172")
        );
        assert!(status
            .kversion
            .as_deref()
            .unwrap()
            .starts_with("Linux 6.17.4-1-pve"));
        let memory = status.memory.unwrap();
        assert_eq!(memory.total, Some(16_540_520_448));
        assert_eq!(memory.used, Some(12_671_574_016));
        assert!(status.swap.unwrap().total.is_some());
        let rootfs = status.rootfs.unwrap();
        assert_eq!(rootfs.total, Some(100_861_726_720));
        let cpuinfo = status.cpuinfo.unwrap();
        assert_eq!(cpuinfo.cpus, Some(4));
        assert_eq!(cpuinfo.model.as_deref(), Some("Intel(R) N100"));
    }

    #[test]
    fn qemu_status_current_pve8_decodes_beside_ha_and_an_integer_agent() {
        let status: GuestStatus = data(fixture!(
            "nodes_node_qemu_vmid_status_current.pve8.0-running.json"
        ));
        assert_eq!(status.status.as_deref(), Some("running"));
        assert_eq!(status.qmpstatus.as_deref(), Some("running"));
        assert!(status.tags().is_empty());
    }

    #[test]
    fn qemu_status_current_with_explicit_null_decodes() {
        let status: GuestStatus = data(fixture!(
            "nodes_node_qemu_vmid_status_current.pve8.x-qemu9.0-running.json"
        ));
        assert_eq!(status.status.as_deref(), Some("running"));
        assert_eq!(status.qmpstatus.as_deref(), Some("running"));
    }

    #[test]
    fn lxc_list_with_string_vmids_decodes_as_guest_status_rows() {
        let rows: Vec<GuestStatus> = data(fixture!("nodes_node_lxc.pve7-era-vmid-as-string.json"));
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[3].status.as_deref(), Some("stopped"));
        // The rows carry `type`, so they also read as resource rows, string vmids and all.
        let rows: Vec<Resource> = data(fixture!("nodes_node_lxc.pve7-era-vmid-as-string.json"));
        let vmids: Vec<u32> = rows.iter().filter_map(|r| r.vmid).collect();
        assert_eq!(vmids, vec![103, 105, 109, 110, 111]);
        assert_eq!(rows[0].name.as_deref(), Some("unifi"));
    }

    #[test]
    fn qemu_list_rows_decode_as_guest_status_rows() {
        let rows: Vec<GuestStatus> = data(fixture!("nodes_node_qemu.pve7-era.json"));
        let running = rows
            .iter()
            .filter(|r| r.status.as_deref() == Some("running"))
            .count();
        assert_eq!((rows.len(), running), (7, 3));
    }

    #[test]
    fn lxc_status_current_shape_with_ha_managed() {
        // No recorded lxc status/current exists (§5): one list row plus `ha`.
        let json = r#"{"data":{"vmid":"101","status":"running","type":"lxc","name":"mqtt",
            "cpus":1,"maxmem":536870912,"mem":40000000,"tags":"infra;mqtt","lock":"backup",
            "ha":{"managed":1,"state":"started","group":"g1"}}}"#;
        let status: GuestStatus = data(json);
        assert_eq!(status.status.as_deref(), Some("running"));
        assert_eq!(status.tags(), vec!["infra", "mqtt"]);
    }

    #[test]
    fn pbs_backup_content_decodes_with_subtype() {
        let items: Vec<StorageItem> = data(fixture!(
            "nodes_node_storage_storage_content.pbs-backups.json"
        ));
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].vmid, Some(931));
        assert_eq!(items[1].ctime, Some(1_702_582_560));
        assert_eq!(items[1].size, Some(273_804_166_059));
        assert_eq!(items[1].verification, None);
        // After a PBS verify job (schema: `verification: {state, upid}`).
        let verified: Vec<StorageItem> = data(
            r#"{"data":[{"volid":"pbs:backup/vm/100/2025-03-11T01:00:02Z","ctime":1741654802,"vmid":100,
            "size":"3021554176","format":"pbs-vm","content":"backup","subtype":"qemu",
            "verification":{"state":"failed","upid":"UPID:pbs:00001234:00005678:00000000:67CF8A00:verificationjob:pbs\\x3av\\x2dabc:root@pam:"}}]}"#,
        );
        assert_eq!(verified[0].size, Some(3_021_554_176));
        assert_eq!(
            verified[0]
                .verification
                .as_ref()
                .and_then(|v| v.state.as_deref()),
            Some("failed")
        );
    }

    #[test]
    fn finished_token_task_status_is_a_success() {
        let status: TaskStatus = data(fixture!(
            "nodes_node_tasks_upid_status.stopped-ok-token.json"
        ));
        assert_eq!(status.status, Some(TaskState::Stopped));
        assert_eq!(status.exitstatus.as_deref(), Some("OK"));
        assert!(!status.is_running());
        assert!(status.succeeded());
        assert_eq!(status.error_text(), None);
    }

    #[test]
    fn task_outcomes_follow_proxmox_status_is_error() {
        let with = |status: &str, exit: Option<&str>| TaskStatus {
            status: Some(TaskState::from(status)),
            exitstatus: exit.map(str::to_owned),
        };
        assert!(with("running", None).is_running());
        assert!(!with("running", None).succeeded());
        assert!(with("stopped", Some("WARNINGS: 3")).succeeded());
        let failed = with("stopped", Some("VM 100 already running"));
        assert!(!failed.succeeded());
        assert_eq!(failed.error_text(), Some("VM 100 already running"));
        assert!(!with("stopped", Some("WARNINGS: ")).succeeded());
        assert!(!with("stopped", Some("WARNINGS: 3x")).succeeded());
        assert!(!with("stopped", Some("ok")).succeeded());
    }

    #[test]
    fn archived_vzdump_task_list_row_decodes() {
        let rows: Vec<TaskListEntry> = data(fixture!("nodes_node_tasks.vzdump-ok.json"));
        let row = &rows[0];
        assert_eq!(row.task_type.as_deref(), Some("vzdump"));
        assert_eq!(row.id.as_deref(), Some(""));
        assert_eq!(row.endtime, Some(1_774_350_433));
        assert!(!row.is_running());
        assert!(row.succeeded());
        let upid: Upid = row.upid.as_deref().unwrap().parse().unwrap();
        assert_eq!(upid.starttime, 1_774_350_000);
        assert_eq!(upid.pid, 2_146_406);
    }

    #[test]
    fn error_fixture_bodies_carry_data_null_and_errors() {
        let bad: serde_json::Value =
            serde_json::from_str(fixture!("error_400_parameter_verification.body.json")).unwrap();
        assert!(bad["data"].is_null());
        assert!(bad["errors"]["vmid"]
            .as_str()
            .unwrap()
            .starts_with("invalid format"));
        let denied: serde_json::Value =
            serde_json::from_str(fixture!("error_403_permission.body.json")).unwrap();
        assert!(denied["data"].is_null());
    }

    #[test]
    fn permissions_apply_propagation_from_ancestors() {
        let json = r#"{"data":{
            "/":{"Sys.Audit":1,"Datastore.Audit":0},
            "/vms":{"VM.Audit":1,"VM.PowerMgmt":1},
            "/vms/100":{"VM.Backup":0},
            "/storage/local/":{"Datastore.AllocateSpace":"1"}
        }}"#;
        let perms: Permissions = data(json);
        assert!(perms.has("/", "Sys.Audit"));
        assert!(perms.has("/nodes/pve", "Sys.Audit"), "propagated from /");
        assert!(perms.has("/", "Datastore.Audit"), "granted on / itself");
        assert!(
            !perms.has("/storage/local", "Datastore.Audit"),
            "not propagated"
        );
        assert!(perms.has("/vms/100", "VM.PowerMgmt"));
        assert!(perms.has("/vms/100", "VM.Backup"));
        assert!(!perms.has("/vms/100/", "Sys.Modify"));
        assert!(
            perms.has("/storage/local", "Datastore.AllocateSpace"),
            "trailing slash normalised"
        );
        assert!(!perms.has("/vms/101", "VM.Backup"));
        assert!(!perms.is_empty());
        assert!(data::<Permissions>(r#"{"data":{}}"#).is_empty());
    }

    #[test]
    fn acl_ancestors_walk_to_the_root() {
        assert_eq!(
            acl_ancestors("/vms/100").collect::<Vec<_>>(),
            vec!["/vms", "/"]
        );
        assert_eq!(acl_ancestors("/").count(), 0);
    }

    #[test]
    fn guest_kinds_parse_print_and_map_from_resource_kinds() {
        assert_eq!("qemu".parse::<GuestKind>().unwrap(), GuestKind::Qemu);
        assert_eq!("lxc".parse::<GuestKind>().unwrap(), GuestKind::Lxc);
        assert!("vm".parse::<GuestKind>().is_err());
        assert_eq!(GuestKind::Lxc.to_string(), "lxc");
        assert_eq!(GuestKind::of(&ResourceKind::Qemu), Some(GuestKind::Qemu));
        assert_eq!(GuestKind::of(&ResourceKind::Storage), None);
    }

    #[test]
    fn open_enums_round_trip_unknown_values() {
        let kind: ClusterStatusKind = serde_json::from_str("\"qdevice\"").unwrap();
        assert_eq!(kind, ClusterStatusKind::Other("qdevice".into()));
        assert_eq!(serde_json::to_string(&kind).unwrap(), "\"qdevice\"");
        assert_eq!(ResourceKind::from("lxc"), ResourceKind::Lxc);
        assert_eq!(TaskState::Running.to_string(), "running");
    }
}
