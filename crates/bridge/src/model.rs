//! The domain model: what one poll says about one cluster, in plain units, with the
//! derived figures users want (percentages, rates, last backup). Pure: no I/O.
//!
//! [`build_view`] turns the fast lane's `/cluster/resources` rows plus the slow lane's
//! cached details into a [`ClusterView`]. The structs here serialise directly into the
//! retained JSON state payloads of SPEC §3, so what HA and scripts read is exactly what
//! this module computes, and the rounding that keeps idle objects from republishing
//! lives in one place.
//!
//! Layout: `node`, `guest` and `storage` hold each object's state and how a row becomes
//! it; `rates` the counter deltas and the rounding; `reporting` the reporting rules that
//! decide when a state changed enough to be reported again (a view holds each object's
//! state as last reported).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::pve::{GuestKind, NodeStatus};

mod agent;
mod backup;
mod builder;
mod cluster_health;
mod compact;
mod guest;
mod health;
mod lanes;
mod memo;
mod node;
mod rates;
mod reporting;
mod snapshots;
mod storage;
mod tasks;

pub use agent::{AgentData, AgentInfo};
pub use backup::{parse_vzdump_log, BackupVerdict, NewestBackup};
pub use builder::{build_view, RowAdded, ViewBuilder};
pub use cluster_health::{
    replication_by_guest, CephState, GuestReplication, HaState, HealthData, HealthKnown,
    HA_PROBLEM_STATES,
};
pub use compact::{OptF64, OptU64};
pub use guest::GuestState;
pub use health::{
    certificate_expiry, reboot_required, DiskState, NodeHealthData, UpdatesState, ZfsState,
};
pub use lanes::{GuestBackup, GuestLanes};
pub use memo::RowMemo;
pub use node::NodeState;
pub use rates::{round_percent, round_rate, RateMemory};
pub use reporting::ReportRules;
pub use snapshots::SnapshotInfo;
pub use storage::StorageState;
pub use tasks::{row_failed, LastTask, TaskFacts};

/// One object the bridge publishes about, inside one cluster: what topics, discovery
/// and the publisher's records are keyed by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectRef {
    /// The cluster itself (quorum, counts).
    Cluster,
    Node(String),
    Guest(GuestKind, u32),
    /// (node, storage id): Proxmox reports storages per node.
    Storage(String, String),
    /// (node, device name such as `sda`): a physical disk.
    Disk(String, String),
    /// (node, pool name): a ZFS pool.
    Zfs(String, String),
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectRef::Cluster => f.write_str("cluster"),
            ObjectRef::Node(n) => write!(f, "node {n}"),
            ObjectRef::Guest(k, v) => write!(f, "{k} {v}"),
            ObjectRef::Storage(n, s) => write!(f, "storage {s} on {n}"),
            ObjectRef::Disk(n, d) => write!(f, "disk {d} on {n}"),
            ObjectRef::Zfs(n, p) => write!(f, "zfs pool {p} on {n}"),
        }
    }
}

/// One cluster as of one successful fast poll.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterView {
    /// Cluster id used in topics and unique ids.
    pub id: String,
    pub cluster: ClusterState,
    pub nodes: BTreeMap<String, NodeState>,
    /// Shared with the previous view where the guest did not change (most guests on most
    /// polls): the two views alive at once cost one view of memory, and the publisher
    /// tells unchanged guests by pointer.
    pub guests: BTreeMap<u32, Arc<GuestState>>,
    /// Keyed by (node, storage id).
    pub storages: BTreeMap<(String, String), StorageState>,
    /// Physical disks, keyed by (node, device name).
    pub disks: BTreeMap<(String, String), DiskState>,
    /// ZFS pools, keyed by (node, pool).
    pub zfs: BTreeMap<(String, String), ZfsState>,
    /// (node, `"disks"` or `"zfs"`): lists the slow lane has read, so an absent disk or
    /// pool of that node is really gone.
    pub health_read: std::collections::BTreeSet<(String, &'static str)>,
    /// The Proxmox web UI, for Home Assistant's "visit device" link.
    pub console_url: String,
}

impl ClusterView {
    /// Is the object's node reachable? Drives the object's availability topic.
    pub fn is_available(&self, object: &ObjectRef) -> bool {
        let node_online = |node: &str| self.nodes.get(node).is_some_and(|n| n.status == "online");
        match object {
            ObjectRef::Cluster => true,
            ObjectRef::Node(node) => node_online(node),
            ObjectRef::Guest(_, vmid) => {
                self.guests.get(vmid).is_some_and(|g| node_online(&g.node))
            }
            ObjectRef::Storage(node, storage) => {
                self.storages.contains_key(&(node.clone(), storage.clone())) && node_online(node)
            }
            ObjectRef::Disk(node, disk) => {
                self.disks.contains_key(&(node.clone(), disk.clone())) && node_online(node)
            }
            ObjectRef::Zfs(node, pool) => {
                self.zfs.contains_key(&(node.clone(), pool.clone())) && node_online(node)
            }
        }
    }

    /// Does the view know whether `object` exists? Disks and pools only once the slow
    /// lane has read their node's list (see [`ClusterView::health_read`]).
    pub fn knows(&self, object: &ObjectRef) -> bool {
        match object {
            ObjectRef::Disk(node, _) => self.health_read.contains(&(node.clone(), "disks")),
            ObjectRef::Zfs(node, _) => self.health_read.contains(&(node.clone(), "zfs")),
            _ => true,
        }
    }

    /// Does `object` have the same state in both views? A plain struct comparison, so an
    /// idle poll costs no serialisation. The state holds every input of the object's
    /// discovery payload too (name, node, tags, pool, versions, type).
    pub fn same_state(&self, other: &ClusterView, object: &ObjectRef) -> bool {
        if self.console_url != other.console_url {
            return false;
        }
        match object {
            ObjectRef::Cluster => self.cluster == other.cluster,
            ObjectRef::Node(n) => self.nodes.get(n) == other.nodes.get(n),
            ObjectRef::Guest(_, vmid) => match (self.guests.get(vmid), other.guests.get(vmid)) {
                (Some(mine), Some(theirs)) => Arc::ptr_eq(mine, theirs) || mine == theirs,
                (mine, theirs) => mine.is_none() && theirs.is_none(),
            },
            ObjectRef::Storage(n, s) => {
                let key = (n.clone(), s.clone());
                self.storages.get(&key) == other.storages.get(&key)
            }
            ObjectRef::Disk(n, d) => {
                let key = (n.clone(), d.clone());
                self.disks.get(&key) == other.disks.get(&key)
            }
            ObjectRef::Zfs(n, p) => {
                let key = (n.clone(), p.clone());
                self.zfs.get(&key) == other.zfs.get(&key)
            }
        }
    }

    /// Every object in the view, cluster first.
    pub fn objects(&self) -> impl Iterator<Item = ObjectRef> + '_ {
        self.objects_with_guests(
            self.guests
                .values()
                .map(|g| ObjectRef::Guest(g.kind, g.vmid)),
        )
    }

    /// Every object of the view but its guests, where `guests` come instead (in the
    /// order of [`ClusterView::objects`]).
    pub fn objects_with_guests<'a>(
        &'a self,
        guests: impl Iterator<Item = ObjectRef> + 'a,
    ) -> impl Iterator<Item = ObjectRef> + 'a {
        std::iter::once(ObjectRef::Cluster)
            .chain(self.nodes.keys().map(|n| ObjectRef::Node(n.clone())))
            .chain(guests)
            .chain(
                self.storages
                    .keys()
                    .map(|(n, s)| ObjectRef::Storage(n.clone(), s.clone())),
            )
            .chain(
                self.disks
                    .keys()
                    .map(|(n, d)| ObjectRef::Disk(n.clone(), d.clone())),
            )
            .chain(
                self.zfs
                    .keys()
                    .map(|(n, p)| ObjectRef::Zfs(n.clone(), p.clone())),
            )
    }
}

/// How the guests of a view differ from those of an earlier one, by state (`Arc`), not
/// by content: see [`ClusterView::guest_changes`].
#[derive(Debug, Default, PartialEq)]
pub struct GuestChanges {
    /// Guests that are new or whose state is not the very state of the earlier view,
    /// in vmid order.
    pub changed: Vec<ObjectRef>,
    /// Guests of the earlier view that are not in this one (or are now another kind).
    pub gone: Vec<ObjectRef>,
}

impl ClusterView {
    /// The guests whose state is not the very state (the same `Arc`) of `before`, and
    /// those `before` had and this view has not: one walk over both, in vmid order, with
    /// no lookup. The poller's views share every state a poll did not change (most
    /// guests on most polls), so the publisher looks at the rest only.
    pub fn guest_changes(&self, before: &ClusterView) -> GuestChanges {
        let mut changes = GuestChanges::default();
        let mut old = before.guests.iter().peekable();
        for (vmid, state) in &self.guests {
            while let Some((gone, was)) = old.next_if(|(old, _)| *old < vmid) {
                changes.gone.push(ObjectRef::Guest(was.kind, *gone));
            }
            match old.next_if(|(old, _)| *old == vmid) {
                Some((_, was)) if Arc::ptr_eq(was, state) => {}
                Some((_, was)) => {
                    if was.kind != state.kind {
                        changes.gone.push(ObjectRef::Guest(was.kind, *vmid));
                    }
                    changes.changed.push(ObjectRef::Guest(state.kind, *vmid));
                }
                None => changes.changed.push(ObjectRef::Guest(state.kind, *vmid)),
            }
        }
        changes
            .gone
            .extend(old.map(|(vmid, was)| ObjectRef::Guest(was.kind, *vmid)));
        changes
    }
}

/// `{base}/{c}/cluster`: quorum and counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ClusterState {
    pub id: String,
    /// Proxmox's cluster name; `null` on a standalone host.
    pub name: Option<String>,
    /// `null` until the slow lane has read `/cluster/status`; a standalone host is quorate.
    pub quorate: Option<bool>,
    pub nodes: usize,
    pub nodes_online: usize,
    pub guests: usize,
    pub guests_running: usize,
    pub pve_version: Option<String>,
    /// Ceph health and usage; `null` without Ceph (or without the privilege to read it).
    pub ceph: Option<CephState>,
    /// The HA manager; `null` while no HA resource is configured.
    pub ha: Option<HaState>,
    /// Whether the slow lane has asked for Ceph, HA and replication yet.
    #[serde(skip)]
    pub health_known: HealthKnown,
    /// The slow lane has not run its first health requests yet (`HealthData::pending`):
    /// the publisher holds guests' discovery back meanwhile.
    #[serde(skip)]
    pub health_pending: bool,
}

/// What the slow lane learned; merged into every view until it is read again. Compared
/// at the end of each slow round: a round that learned nothing new is not sent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlowData {
    /// Cluster name from `/cluster/status` (None = standalone or not read yet).
    pub cluster_name: Option<String>,
    pub quorate: Option<bool>,
    pub pve_version: Option<String>,
    pub node_status: HashMap<String, NodeStatus>,
    /// The backup storages were read at least once (until then no guest is "stale").
    pub backups_read: bool,
    /// vmid -> the newest backup in storage content (its time, size, PBS verification).
    /// Shared: the lane replaces the whole map each round it reads every backup storage,
    /// so the copy it sends and the one it keeps are one map (~230 KB at 5,000 guests,
    /// issue 10).
    pub newest_backup: Arc<HashMap<u32, NewestBackup>>,
    /// vmid -> verdict of the newest vzdump task that logged the guest (`model::backup`).
    /// Shared like `newest_backup`: changed (copied) only by a log with news.
    pub backup_verdicts: Arc<HashMap<u32, BackupVerdict>>,
    /// Guests in no backup job (`/cluster/backup-info/not-backed-up`); `None` = not
    /// read (the token lacks `Sys.Audit` on `/`).
    pub not_backed_up: Option<std::collections::HashSet<u32>>,
    /// `not-backed-up` answered 403: not asked again.
    pub not_backed_up_denied: bool,
    /// (node, storage) -> the space Proxmox does not count as available although it is
    /// not used (`total - used - avail` of `/nodes/{node}/storage`: a directory
    /// storage's reserved blocks). `avail` is `total - used - reserve` on every poll.
    pub storage_reserve: HashMap<(String, String), u64>,
    /// Ceph, HA and replication (issue 11).
    pub health: HealthData,
    /// vmid -> its snapshots, for the guests whose list was read.
    /// Shared like `newest_backup`: changed (copied) only when a list read differs.
    pub snapshots: Arc<HashMap<u32, SnapshotInfo>>,
    /// Node name -> disks, pools, updates, certificate (the detail requests of issue 11).
    pub node_health: HashMap<String, NodeHealthData>,
    /// The slow lane's first round after a start has ended: until then its news is
    /// applied at once (the poller rebuilds the view), after that with the next poll.
    pub first_round_done: bool,
}

impl SlowData {
    /// What the poller and the slow lane start from: nothing read, and the first health
    /// requests still to come (`HealthData::pending`).
    pub fn at_start() -> SlowData {
        let mut data = SlowData::default();
        data.health.pending = true;
        data
    }

    /// When the guest's newest backup in storage content was taken (Unix seconds).
    pub fn last_backup(&self, vmid: u32) -> Option<u64> {
        self.newest_backup.get(&vmid).map(|newest| newest.ctime)
    }

    /// Makes `ctime` the time of the newest backup of `vmid` (tests: what a slow round
    /// reads).
    #[cfg(test)]
    pub(crate) fn set_backup(&mut self, vmid: u32, ctime: u64) {
        let newest = NewestBackup {
            ctime,
            ..NewestBackup::default()
        };
        Arc::make_mut(&mut self.newest_backup).insert(vmid, newest);
    }

    /// [`SlowData::default`] with one backup (tests).
    #[cfg(test)]
    pub(crate) fn with_backup(vmid: u32, ctime: u64) -> SlowData {
        let mut slow = SlowData::default();
        slow.set_backup(vmid, ctime);
        slow
    }
}

#[cfg(test)]
pub(crate) mod tests;
