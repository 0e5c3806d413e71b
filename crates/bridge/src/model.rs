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

use crate::pve::{
    for_each_cluster_row, row_hash, GuestKind, GuestRow, NodeStatus, PveError, RawRow, Resource,
    ResourceKind,
};

mod agent;
mod backup;
mod cluster_health;
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
pub use cluster_health::{
    replication_by_guest, CephState, GuestReplication, HaState, HealthData, HealthKnown,
    HA_PROBLEM_STATES,
};
use guest::guest_state;
pub use guest::GuestState;
pub use health::{
    certificate_expiry, reboot_required, DiskState, NodeHealthData, UpdatesState, ZfsState,
};
pub use lanes::{GuestBackup, GuestLanes};
pub use memo::RowMemo;
pub use node::NodeState;
use node::{node_needs_report, node_state};
pub use rates::{round_percent, round_rate, RateMemory};
pub use reporting::ReportRules;
pub use snapshots::SnapshotInfo;
pub use storage::StorageState;
use storage::{storage_needs_report, storage_state};
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
    /// vmid -> ctime of the newest backup.
    pub last_backup: HashMap<u32, u64>,
    /// The backup storages were read at least once (until then no guest is "stale").
    pub backups_read: bool,
    /// vmid -> the newest backup in storage content (size, PBS verification).
    pub newest_backup: HashMap<u32, NewestBackup>,
    /// vmid -> verdict of the newest vzdump task that logged the guest (`model::backup`).
    pub backup_verdicts: HashMap<u32, BackupVerdict>,
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
    pub snapshots: HashMap<u32, SnapshotInfo>,
    /// Node name -> disks, pools, updates, certificate (the detail requests of issue 11).
    pub node_health: HashMap<String, NodeHealthData>,
}

/// Builds the view of one cluster from one `/cluster/resources` answer, with the default
/// [`ReportRules`] (see [`ViewBuilder::reporting`]).
///
/// `now` is the poll time in Unix seconds, advancing monotonically (the poller counts it
/// from its start); `rates` carries counter samples between polls. An object whose state
/// needs no report against its state in `previous` keeps that state (guests share it).
pub fn build_view(
    id: &str,
    console_url: &str,
    resources: &[Resource],
    slow: &SlowData,
    rates: &mut RateMemory,
    now: f64,
    previous: Option<&ClusterView>,
) -> ClusterView {
    let mut builder = ViewBuilder::new(id, console_url, slow, rates, now, previous);
    for row in resources {
        builder.add(row);
    }
    builder.finish()
}

/// [`build_view`] one row at a time, so the fast lane never holds every decoded row at
/// once (see [`crate::pve::for_each_cluster_resource`]).
pub struct ViewBuilder<'a> {
    view: ClusterView,
    slow: &'a SlowData,
    rates: &'a mut RateMemory,
    now: f64,
    previous: Option<&'a ClusterView>,
    rules: ReportRules,
    /// What the task list says (`None` = not read: nodes carry `failed_tasks_24h: null`).
    tasks: Option<&'a TaskFacts>,
    /// The agent lane's knowledge, if any (see [`ViewBuilder::agent`]).
    agent: Option<&'a AgentData>,
    /// The last answer's rows (see [`ViewBuilder::memo`]).
    memo: Option<&'a mut RowMemo>,
    /// The answer the memory's rows are of, if it was read whole (see
    /// [`ViewBuilder::add_answer`]).
    answer: Option<memo::Answer>,
    /// Rows added so far.
    rows: usize,
}

/// What [`ViewBuilder::add_raw`] did with a row.
// Returned once per row and consumed at once: boxing the row would cost an allocation
// per row for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum RowAdded {
    /// A guest row as in the last answer: its state, reused, not decoded.
    Reused(Arc<GuestState>),
    /// A guest row read by [`RawRow::scan_guest`](crate::pve::RawRow::scan_guest), not
    /// decoded: its state (the guest's previous one, or a new one).
    Scanned(Arc<GuestState>),
    /// The row, decoded and added.
    Decoded(Resource),
}

impl<'a> ViewBuilder<'a> {
    pub fn new(
        id: &str,
        console_url: &str,
        slow: &'a SlowData,
        rates: &'a mut RateMemory,
        now: f64,
        previous: Option<&'a ClusterView>,
    ) -> Self {
        ViewBuilder {
            view: ClusterView {
                id: id.to_string(),
                console_url: console_url.to_string(),
                ..ClusterView::default()
            },
            slow,
            rates,
            now,
            previous,
            rules: ReportRules::default(),
            tasks: None,
            agent: None,
            memo: None,
            answer: None,
            rows: 0,
        }
    }

    /// Merges what the task list says (failed tasks per node).
    pub fn tasks(mut self, facts: &'a TaskFacts) -> Self {
        self.tasks = Some(facts);
        self
    }

    /// Merges the agent lane's knowledge into the guests.
    pub fn agent(mut self, data: &'a AgentData) -> Self {
        self.agent = Some(data);
        self
    }

    /// Reports by these rules instead of the defaults.
    pub fn reporting(mut self, rules: ReportRules) -> Self {
        self.rules = rules;
        self
    }

    /// Remembers the rows in `memo` and reuses the states of the guest rows that are as
    /// in the last answer (see [`RowMemo`]), through [`ViewBuilder::add_raw`]. `slow`
    /// and `agent` are the data given to [`ViewBuilder::new`] and [`ViewBuilder::agent`];
    /// call this last.
    pub fn memo(
        mut self,
        memo: &'a mut RowMemo,
        slow: &Arc<SlowData>,
        agent: &Arc<AgentData>,
    ) -> Self {
        debug_assert!(std::ptr::eq(&**slow, self.slow));
        debug_assert!(self.agent.is_none_or(|a| std::ptr::eq(&**agent, a)));
        memo.begin(slow, agent, &self.rules);
        self.answer = memo.take_answer();
        self.memo = Some(memo);
        self
    }

    /// Adds every row of a `/cluster/resources` answer as [`ViewBuilder::add_raw`] does,
    /// handing each to `each` with what was done with it (an error from `each` fails the
    /// answer, as one from [`for_each_cluster_row`]); returns how many rows there were.
    ///
    /// With the memory (see [`ViewBuilder::memo`]), an answer byte for byte the one it
    /// remembers (the same length and the same hash of all its bytes: between two of
    /// pvestatd's broadcasts, and always in a still cluster) is not scanned for its rows
    /// again, nor is each row hashed again: its rows are where they were, with the hashes
    /// they had. Each row is then added exactly as on any other answer (so what depends
    /// on the time, the slow lane or the agents is evaluated as always).
    pub fn add_answer(
        &mut self,
        body: &[u8],
        mut each: impl FnMut(RawRow<'_>, RowAdded) -> Result<(), serde_json::Error>,
    ) -> Result<usize, PveError> {
        let remembering = self.memo.is_some();
        let (len, hash) = (body.len(), if remembering { row_hash(body) } else { 0 });
        let known = self
            .answer
            .take()
            .filter(|a| a.len == len && a.hash == hash);
        let text = std::str::from_utf8(body).ok();
        if let (Some(answer), Some(text)) = (known, text) {
            for (index, &(start, end)) in answer.ranges.iter().enumerate() {
                let Some(row) = text.get(start as usize..end as usize) else {
                    return Err(answer_error(body, index));
                };
                let raw = RawRow::new(row);
                let hash = self.memo.as_deref().and_then(|m| m.hash_at(index));
                let added = self
                    .add_raw_hashed(raw, hash.unwrap_or_else(|| raw.hash()))
                    .and_then(|added| each(raw, added));
                if added.is_err() {
                    return Err(answer_error(body, index));
                }
            }
            let rows = answer.ranges.len();
            if let Some(memo) = self.memo.as_deref_mut() {
                memo.set_answer(answer);
                #[cfg(test)]
                {
                    memo.replayed += 1;
                }
            }
            return Ok(rows);
        }
        // Where each row is, as an offset into `body` (a row the decoder copied, which
        // Proxmox's plain shape never makes it do, leaves the answer unremembered).
        let base = body.as_ptr() as usize;
        let mut ranges = Some(Vec::new());
        let rows = for_each_cluster_row(body, |raw| {
            let start = (raw.text().as_ptr() as usize).wrapping_sub(base);
            let end = start.wrapping_add(raw.text().len());
            match ranges.as_mut() {
                Some(ranges) if remembering && start <= end && end <= len => {
                    ranges.push((start as u32, end as u32));
                }
                _ => ranges = None,
            }
            let added = self.add_raw(raw)?;
            each(raw, added)
        })?;
        if let (Some(ranges), Some(memo)) = (ranges, self.memo.as_deref_mut()) {
            memo.set_answer(memo::Answer { len, hash, ranges });
        }
        Ok(rows)
    }

    /// Adds one undecoded row. A guest row with the same bytes at the same place as in
    /// the last answer, whose state the previous view still reports, is not decoded
    /// (see [`RowMemo`]); any other row is decoded and added as by [`ViewBuilder::add`].
    /// A row that cannot be decoded is an error, and the memory is cleared.
    pub fn add_raw(&mut self, raw: RawRow<'_>) -> Result<RowAdded, serde_json::Error> {
        if self.memo.is_none() {
            let row = raw.decode()?;
            self.add(&row);
            return Ok(RowAdded::Decoded(row));
        }
        self.add_raw_hashed(raw, raw.hash())
    }

    /// [`ViewBuilder::add_raw`] with the memory, of a row whose hash is known.
    fn add_raw_hashed(
        &mut self,
        raw: RawRow<'_>,
        hash: u64,
    ) -> Result<RowAdded, serde_json::Error> {
        if let Some((state, remembered)) = self.reusable(self.rows, hash) {
            if let Some(memo) = self.memo.as_deref_mut() {
                memo.set(self.rows, memo::MemoRow::guest(hash, &state, remembered));
            }
            self.view.guests.insert(state.vmid, state.clone());
            self.rows += 1;
            return Ok(RowAdded::Reused(state));
        }
        if let Some(guest) = raw.scan_guest() {
            let (state, remembered) = self.guest(&guest, Some(hash));
            if let Some(memo) = self.memo.as_deref_mut() {
                memo.set(self.rows, remembered);
            }
            self.rows += 1;
            return Ok(RowAdded::Scanned(state));
        }
        match raw.decode() {
            Ok(row) => {
                self.add_row(&row, Some(hash));
                Ok(RowAdded::Decoded(row))
            }
            Err(err) => {
                if let Some(memo) = self.memo.as_deref_mut() {
                    memo.clear();
                }
                Err(err)
            }
        }
    }

    /// The previous view's state of row `index`, if the memory says it stands, and what
    /// to remember of it now.
    fn reusable(&self, index: usize, hash: u64) -> Option<(Arc<GuestState>, guest::Remembered)> {
        let memo = self.memo.as_deref()?;
        let row = memo.get(index, hash)?;
        let state = self.previous?.guests.get(&row.vmid)?;
        if Arc::as_ptr(state) as usize != row.state {
            return None;
        }
        let lanes = (!memo.lanes_same()).then(|| {
            let agent = self.agent.and_then(|a| a.get(&row.vmid));
            lanes::LaneDraft::of(row.vmid, state.kind, self.slow, agent)
        });
        let remembered = guest::still_reported(
            state,
            row.remembered(),
            lanes,
            self.slow,
            (&self.rules, self.now),
        )?;
        Some((state.clone(), remembered))
    }

    pub fn add(&mut self, row: &Resource) {
        self.add_row(row, None);
    }

    /// Adds a decoded row; with its hash, remembers it in the memory.
    fn add_row(&mut self, row: &Resource, hash: Option<u64>) {
        let index = self.rows;
        self.rows += 1;
        let mut remembered = memo::MemoRow::NONE;
        let (rules, now) = (&self.rules, self.now);
        match row.kind {
            ResourceKind::Node => {
                let before = row
                    .node
                    .as_deref()
                    .and_then(|n| self.previous?.nodes.get(n));
                if let Some(mut fresh) = node_state(row, self.slow, now, before) {
                    fresh.failed_tasks_24h = self.tasks.and_then(|t| t.failed_for(&fresh.node));
                    let node = match before {
                        Some(b) if !node_needs_report(&fresh, b, rules, now) => b.clone(),
                        _ => fresh,
                    };
                    self.view.nodes.insert(node.node.clone(), node);
                }
            }
            ResourceKind::Qemu | ResourceKind::Lxc => {
                if let Some(guest) = GuestRow::of(row) {
                    remembered = self.guest(&guest, hash).1;
                }
            }
            ResourceKind::Storage => {
                if let Some(fresh) = storage_state(row, self.slow, now) {
                    let key = (fresh.node.clone(), fresh.storage.clone());
                    let storage = match self.previous.and_then(|p| p.storages.get(&key)) {
                        Some(b) if !storage_needs_report(&fresh, b, rules, now) => b.clone(),
                        _ => fresh,
                    };
                    self.view.storages.insert(key, storage);
                }
            }
            // pools, SDN zones, PVE 9 network rows and anything newer: not published (yet).
            _ => {}
        }
        if let Some(memo) = self.memo.as_deref_mut() {
            memo.set(index, remembered);
        }
    }

    /// Adds a guest's row, scanned or decoded; returns its state and, with the row's
    /// hash, what the memory keeps of it.
    fn guest(&mut self, row: &GuestRow<'_>, hash: Option<u64>) -> (Arc<GuestState>, memo::MemoRow) {
        let agent = self.agent.and_then(|a| a.get(&row.vmid));
        let guest = guest_state(
            row,
            (self.slow, agent),
            self.rates,
            (&self.rules, self.now),
            self.previous,
        );
        let remembered = match hash {
            Some(hash) => {
                let kept = guest::Remembered {
                    uptime: row.uptime,
                    threshold: guest.threshold,
                    threshold_rest: guest.threshold_rest,
                };
                memo::MemoRow::guest(hash, &guest.state, kept)
            }
            None => memo::MemoRow::NONE,
        };
        self.view
            .guests
            .insert(guest.state.vmid, guest.state.clone());
        (guest.state, remembered)
    }

    pub fn finish(self) -> ClusterView {
        let ViewBuilder {
            mut view,
            slow,
            rates,
            previous,
            rules,
            now,
            memo,
            rows,
            ..
        } = self;
        if let Some(memo) = memo {
            memo.finish(rows);
        }
        health::add_health_objects(&mut view, &slow.node_health, previous, &rules, now);
        rates.retain(|vmid| view.guests.contains_key(&vmid));
        view.cluster = ClusterState {
            id: view.id.clone(),
            name: slow.cluster_name.clone(),
            quorate: slow.quorate,
            nodes: view.nodes.len(),
            nodes_online: view.nodes.values().filter(|n| n.status == "online").count(),
            guests: view.guests.len(),
            guests_running: view
                .guests
                .values()
                .filter(|g| &*g.status == "running")
                .count(),
            pve_version: slow.pve_version.clone(),
            ceph: slow.health.ceph.clone(),
            ha: slow.health.ha.clone(),
            health_known: slow.health.known,
        };
        view
    }
}

/// The error of an answer one of whose rows could not be read: the one
/// [`for_each_cluster_row`] gives (endpoint and JSON path).
fn answer_error(body: &[u8], index: usize) -> PveError {
    crate::pve::decode_cluster_resources(body)
        .err()
        .unwrap_or_else(|| PveError::Decode {
            endpoint: "GET /cluster/resources".to_owned(),
            message: format!("row {index} could not be read"),
        })
}

#[cfg(test)]
pub(crate) mod tests;
