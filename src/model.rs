//! The domain model: what one poll says about one cluster, in plain units, with the
//! derived figures users want (percentages, rates, last backup). Pure: no I/O.
//!
//! [`build_view`] turns the fast lane's `/cluster/resources` rows plus the slow lane's
//! cached details into a [`ClusterView`]. The structs here serialise directly into the
//! retained JSON state payloads of SPEC §3, so what HA and scripts read is exactly what
//! this module computes, and the rounding that keeps idle objects from republishing
//! lives in one place.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::pve::{tag_iter, GuestKind, NodeStatus, Resource, ResourceKind};

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
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectRef::Cluster => f.write_str("cluster"),
            ObjectRef::Node(n) => write!(f, "node {n}"),
            ObjectRef::Guest(k, v) => write!(f, "{k} {v}"),
            ObjectRef::Storage(n, s) => write!(f, "storage {s} on {n}"),
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
        }
    }

    /// Every object in the view, cluster first.
    pub fn objects(&self) -> impl Iterator<Item = ObjectRef> + '_ {
        std::iter::once(ObjectRef::Cluster)
            .chain(self.nodes.keys().map(|n| ObjectRef::Node(n.clone())))
            .chain(
                self.guests
                    .values()
                    .map(|g| ObjectRef::Guest(g.kind, g.vmid)),
            )
            .chain(
                self.storages
                    .keys()
                    .map(|(n, s)| ObjectRef::Storage(n.clone(), s.clone())),
            )
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
}

/// `{base}/{c}/node/{node}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeState {
    pub node: String,
    /// `online`, `offline` or `unknown`, as Proxmox says.
    pub status: String,
    /// Percent of all the node's CPUs.
    pub cpu: Option<f64>,
    pub cpus: Option<u64>,
    pub loadavg: Option<[f64; 3]>,
    pub mem: Option<u64>,
    pub maxmem: Option<u64>,
    pub mem_percent: Option<f64>,
    pub swap_used: Option<u64>,
    pub swap_total: Option<u64>,
    pub rootfs_used: Option<u64>,
    pub rootfs_total: Option<u64>,
    pub rootfs_percent: Option<f64>,
    pub uptime: Option<u64>,
    pub pve_version: Option<String>,
    pub kernel: Option<String>,
    pub cpu_model: Option<String>,
}

/// `{base}/{c}/{qemu|lxc}/{vmid}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GuestState {
    pub vmid: u32,
    #[serde(rename = "type")]
    pub kind: GuestKind,
    pub name: Option<String>,
    pub node: String,
    /// running, stopped, paused, suspended or unknown.
    pub status: String,
    pub template: bool,
    /// Percent of the guest's own CPUs.
    pub cpu: Option<f64>,
    pub cpus: Option<u64>,
    pub mem: Option<u64>,
    pub maxmem: Option<u64>,
    pub mem_percent: Option<f64>,
    pub disk: Option<u64>,
    pub maxdisk: Option<u64>,
    pub netin: Option<u64>,
    pub netout: Option<u64>,
    pub diskread: Option<u64>,
    pub diskwrite: Option<u64>,
    /// Bytes per second over the last two samples that differed; `null` after a counter
    /// reset (guest restart) or before a second sample exists.
    pub netin_rate: Option<f64>,
    pub netout_rate: Option<f64>,
    pub diskread_rate: Option<f64>,
    pub diskwrite_rate: Option<f64>,
    pub uptime: Option<u64>,
    pub tags: Vec<String>,
    pub lock: Option<String>,
    pub hastate: Option<String>,
    pub pool: Option<String>,
    /// Unix time of the newest backup found in storage content.
    pub last_backup: Option<u64>,
}

/// `{base}/{c}/storage/{node}/{storage}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StorageState {
    pub storage: String,
    pub node: String,
    /// `available` or `unknown`, as Proxmox says.
    pub status: String,
    pub active: bool,
    #[serde(rename = "type")]
    pub plugin_type: Option<String>,
    pub content: Vec<String>,
    pub shared: bool,
    pub used: Option<u64>,
    pub total: Option<u64>,
    pub avail: Option<u64>,
    pub used_percent: Option<f64>,
}

/// What the slow lane learned; merged into every view until it is read again.
#[derive(Clone, Debug, Default)]
pub struct SlowData {
    /// Cluster name from `/cluster/status` (None = standalone or not read yet).
    pub cluster_name: Option<String>,
    pub quorate: Option<bool>,
    pub pve_version: Option<String>,
    pub node_status: HashMap<String, NodeStatus>,
    /// vmid -> ctime of the newest backup.
    pub last_backup: HashMap<u32, u64>,
}

/// The previous counter samples of each guest, kept by the poller between polls so
/// rates can be computed from deltas.
#[derive(Clone, Debug, Default)]
pub struct RateMemory {
    samples: HashMap<u32, CounterSample>,
}

#[derive(Clone, Debug, PartialEq)]
struct CounterSample {
    /// The counters netin, netout, diskread, diskwrite.
    counters: [Option<u64>; 4],
    /// Poll time (seconds) when these counters were first seen.
    at: f64,
    /// Rates computed when these counters arrived; kept while the counters stay the same
    /// (Proxmox refreshes them only every ~10 s, so a faster poll sees repeats).
    rates: [Option<f64>; 4],
}

impl RateMemory {
    /// Rates for a guest's new counters at time `now`, updating the memory.
    fn rates(&mut self, vmid: u32, counters: [Option<u64>; 4], now: f64) -> [Option<f64>; 4] {
        let rates = match self.samples.get(&vmid) {
            Some(prev) if prev.counters == counters => return prev.rates,
            Some(prev) if now > prev.at => {
                let dt = now - prev.at;
                let mut rates = [None; 4];
                for i in 0..4 {
                    rates[i] = match (prev.counters[i], counters[i]) {
                        // A counter that went down was reset (guest restarted): no honest rate.
                        (Some(a), Some(b)) if b >= a => Some(round_rate((b - a) as f64 / dt)),
                        _ => None,
                    };
                }
                rates
            }
            _ => [None; 4],
        };
        self.samples.insert(
            vmid,
            CounterSample {
                counters,
                at: now,
                rates,
            },
        );
        rates
    }

    /// Forget guests that no longer exist, so the memory does not grow forever.
    fn retain(&mut self, alive: impl Fn(u32) -> bool) {
        self.samples.retain(|vmid, _| alive(*vmid));
    }
}

/// Percent with one decimal: precise enough for a dashboard, coarse enough that an idle
/// guest does not republish on every poll.
pub fn round_percent(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// Rates keep two significant digits (and whole bytes below 100 B/s): rates jitter on
/// every sample, and a dashboard needs no more.
pub fn round_rate(value: f64) -> f64 {
    if !value.is_finite() || value <= 0.0 {
        return 0.0;
    }
    if value < 100.0 {
        return value.round();
    }
    let magnitude = 10f64.powi(value.log10().floor() as i32 - 1);
    (value / magnitude).round() * magnitude
}

/// `pve-manager/9.1.2/9d436f37a0ac4172` (node status) → `9.1.2`, as users say it.
fn short_pve_version(full: &str) -> String {
    full.strip_prefix("pve-manager/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or(full)
        .to_string()
}

fn percent(part: Option<u64>, whole: Option<u64>) -> Option<f64> {
    match (part, whole) {
        (Some(p), Some(w)) if w > 0 => Some(round_percent(p as f64 * 100.0 / w as f64)),
        _ => None,
    }
}

/// Builds the view of one cluster from one `/cluster/resources` answer.
///
/// `now` is the poll time in seconds (any monotonic origin); `rates` carries counter
/// samples between polls. Guests whose state equals their state in `previous` are shared
/// with it rather than kept twice.
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
        }
    }

    pub fn add(&mut self, row: &Resource) {
        let view = &mut self.view;
        match row.kind {
            ResourceKind::Node => {
                if let Some(node) = node_state(row, self.slow) {
                    view.nodes.insert(node.node.clone(), node);
                }
            }
            ResourceKind::Qemu | ResourceKind::Lxc => {
                if let Some(guest) =
                    guest_state(row, self.slow, self.rates, self.now, self.previous)
                {
                    view.guests.insert(guest.vmid, guest);
                }
            }
            ResourceKind::Storage => {
                if let Some(storage) = storage_state(row) {
                    view.storages
                        .insert((storage.node.clone(), storage.storage.clone()), storage);
                }
            }
            // pools, SDN zones, PVE 9 network rows and anything newer: not published (yet).
            _ => {}
        }
    }

    pub fn finish(self) -> ClusterView {
        let ViewBuilder {
            mut view,
            slow,
            rates,
            ..
        } = self;
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
                .filter(|g| g.status == "running")
                .count(),
            pve_version: slow.pve_version.clone(),
        };
        view
    }
}

fn node_state(row: &Resource, slow: &SlowData) -> Option<NodeState> {
    let name = row.node.clone()?;
    let status = row.status.clone().unwrap_or_else(|| "unknown".to_string());
    let details = slow.node_status.get(&name);
    let mem = row
        .mem
        .or_else(|| details.and_then(|d| d.memory.as_ref().and_then(|m| m.used)));
    let maxmem = row
        .maxmem
        .or_else(|| details.and_then(|d| d.memory.as_ref().and_then(|m| m.total)));
    let rootfs_used = details
        .and_then(|d| d.rootfs.as_ref().and_then(|m| m.used))
        .or(row.disk);
    let rootfs_total = details
        .and_then(|d| d.rootfs.as_ref().and_then(|m| m.total))
        .or(row.maxdisk);
    let online = status == "online";
    Some(NodeState {
        cpu: online
            .then(|| row.cpu.map(|c| round_percent(c * 100.0)))
            .flatten(),
        cpus: row
            .maxcpu
            .map(|c| c as u64)
            .or_else(|| details.and_then(|d| d.cpuinfo.as_ref().and_then(|m| m.cpus))),
        loadavg: details
            .and_then(|d| d.loadavg)
            .map(|l| l.map(|x| (x * 100.0).round() / 100.0)),
        mem_percent: percent(mem, maxmem),
        mem,
        maxmem,
        swap_used: details.and_then(|d| d.swap.as_ref().and_then(|m| m.used)),
        swap_total: details.and_then(|d| d.swap.as_ref().and_then(|m| m.total)),
        rootfs_percent: percent(rootfs_used, rootfs_total),
        rootfs_used,
        rootfs_total,
        uptime: row.uptime,
        pve_version: details
            .and_then(|d| d.pveversion.as_deref())
            .map(short_pve_version),
        kernel: details.and_then(|d| d.kversion.clone()),
        cpu_model: details.and_then(|d| d.cpuinfo.as_ref().and_then(|c| c.model.clone())),
        status,
        node: name,
    })
}

/// A guest's state as one row says it, with every text still borrowed from the row.
/// Most polls find it equal to the guest's previous state, which is then reused as is:
/// an idle poll of 5,000 guests copies no string.
struct GuestDraft<'a> {
    vmid: u32,
    kind: GuestKind,
    name: Option<&'a str>,
    node: &'a str,
    status: &'a str,
    template: bool,
    cpu: Option<f64>,
    cpus: Option<u64>,
    mem: Option<u64>,
    maxmem: Option<u64>,
    mem_percent: Option<f64>,
    disk: Option<u64>,
    maxdisk: Option<u64>,
    counters: [Option<u64>; 4],
    rates: [Option<f64>; 4],
    uptime: Option<u64>,
    /// Proxmox's tag string (`a;b`), split only when the state is built.
    tags: &'a str,
    lock: Option<&'a str>,
    hastate: Option<&'a str>,
    pool: Option<&'a str>,
    last_backup: Option<u64>,
}

impl GuestDraft<'_> {
    /// Does `state` already say exactly this? Destructures every field of [`GuestState`],
    /// so a field added there does not compile until it is compared here.
    fn is_described_by(&self, state: &GuestState) -> bool {
        let GuestState {
            vmid,
            kind,
            name,
            node,
            status,
            template,
            cpu,
            cpus,
            mem,
            maxmem,
            mem_percent,
            disk,
            maxdisk,
            netin,
            netout,
            diskread,
            diskwrite,
            netin_rate,
            netout_rate,
            diskread_rate,
            diskwrite_rate,
            uptime,
            tags,
            lock,
            hastate,
            pool,
            last_backup,
        } = state;
        *vmid == self.vmid
            && *kind == self.kind
            && name.as_deref() == self.name
            && node == self.node
            && status == self.status
            && *template == self.template
            && *cpu == self.cpu
            && *cpus == self.cpus
            && *mem == self.mem
            && *maxmem == self.maxmem
            && *mem_percent == self.mem_percent
            && *disk == self.disk
            && *maxdisk == self.maxdisk
            && [*netin, *netout, *diskread, *diskwrite] == self.counters
            && [*netin_rate, *netout_rate, *diskread_rate, *diskwrite_rate] == self.rates
            && *uptime == self.uptime
            && tags.iter().map(String::as_str).eq(tag_iter(self.tags))
            && lock.as_deref() == self.lock
            && hastate.as_deref() == self.hastate
            && pool.as_deref() == self.pool
            && *last_backup == self.last_backup
    }

    fn to_state(&self) -> GuestState {
        let [netin, netout, diskread, diskwrite] = self.counters;
        let [netin_rate, netout_rate, diskread_rate, diskwrite_rate] = self.rates;
        GuestState {
            vmid: self.vmid,
            kind: self.kind,
            name: self.name.map(str::to_owned),
            node: self.node.to_owned(),
            status: self.status.to_owned(),
            template: self.template,
            cpu: self.cpu,
            cpus: self.cpus,
            mem: self.mem,
            maxmem: self.maxmem,
            mem_percent: self.mem_percent,
            disk: self.disk,
            maxdisk: self.maxdisk,
            netin,
            netout,
            diskread,
            diskwrite,
            netin_rate,
            netout_rate,
            diskread_rate,
            diskwrite_rate,
            uptime: self.uptime,
            tags: tag_iter(self.tags).map(str::to_owned).collect(),
            lock: self.lock.map(str::to_owned),
            hastate: self.hastate.map(str::to_owned),
            pool: self.pool.map(str::to_owned),
            last_backup: self.last_backup,
        }
    }
}

/// The guest's state: the previous one when nothing changed, else a new one.
fn guest_state(
    row: &Resource,
    slow: &SlowData,
    rates: &mut RateMemory,
    now: f64,
    previous: Option<&ClusterView>,
) -> Option<Arc<GuestState>> {
    let draft = guest_draft(row, slow, rates, now)?;
    match previous.and_then(|p| p.guests.get(&draft.vmid)) {
        Some(before) if draft.is_described_by(before) => Some(before.clone()),
        _ => Some(Arc::new(draft.to_state())),
    }
}

fn guest_draft<'a>(
    row: &'a Resource,
    slow: &SlowData,
    rates: &mut RateMemory,
    now: f64,
) -> Option<GuestDraft<'a>> {
    let vmid = row.vmid?;
    let node = row.node.as_deref()?;
    let kind = match row.kind {
        ResourceKind::Qemu => GuestKind::Qemu,
        ResourceKind::Lxc => GuestKind::Lxc,
        _ => return None,
    };
    let status = match row.status.as_deref() {
        // Hibernated (suspended to disk) VMs are `stopped` with lock `suspended`.
        Some("stopped") if row.lock.as_deref() == Some("suspended") => "suspended",
        Some(status) => status,
        None => "unknown",
    };
    let counters = [row.netin, row.netout, row.diskread, row.diskwrite];
    let guest_rates = if status == "running" {
        rates.rates(vmid, counters, now)
    } else {
        // One guest: a map removal, not a pass over every guest (quadratic at scale).
        rates.samples.remove(&vmid);
        if status == "stopped" {
            [Some(0.0); 4]
        } else {
            [None; 4]
        }
    };
    Some(GuestDraft {
        vmid,
        kind,
        name: row.name.as_deref(),
        node,
        status,
        template: row.template,
        cpu: row.cpu.map(|c| round_percent(c * 100.0)),
        cpus: row.maxcpu.map(|c| c as u64),
        mem: row.mem,
        maxmem: row.maxmem,
        mem_percent: percent(row.mem, row.maxmem),
        disk: row.disk,
        maxdisk: row.maxdisk,
        counters,
        rates: guest_rates,
        uptime: row.uptime,
        tags: row.tags_raw.as_deref().unwrap_or(""),
        lock: row.lock.as_deref(),
        hastate: row.hastate.as_deref(),
        pool: row.pool.as_deref(),
        last_backup: slow.last_backup.get(&vmid).copied(),
    })
}

fn storage_state(row: &Resource) -> Option<StorageState> {
    let node = row.node.clone()?;
    let storage = row.storage.clone()?;
    let status = row.status.clone().unwrap_or_else(|| "unknown".to_string());
    let used = row.disk;
    let total = row.maxdisk;
    let avail = match (used, total) {
        (Some(u), Some(t)) => Some(t.saturating_sub(u)),
        _ => None,
    };
    Some(StorageState {
        active: status == "available",
        plugin_type: row.plugintype.clone(),
        content: row
            .content
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        shared: row.shared,
        used_percent: percent(used, total),
        used,
        total,
        avail,
        status,
        node,
        storage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(json: &str) -> Vec<Resource> {
        let envelope: serde_json::Value = serde_json::from_str(json).unwrap();
        serde_json::from_value(envelope["data"].clone()).unwrap()
    }

    const ONE_NODE: &str =
        include_str!("../tests/fixtures/pve/cluster_resources.1node-lxc-qemu-storage-sdn.json");
    const FOUR_NODES: &str =
        include_str!("../tests/fixtures/pve/cluster_resources.4node-qemu-node-storage.json");

    #[test]
    fn a_recorded_cluster_becomes_nodes_guests_and_storages() {
        let rows = resources(ONE_NODE);
        let view = build_view(
            "home",
            "https://pve:8006",
            &rows,
            &SlowData::default(),
            &mut RateMemory::default(),
            0.0,
            None,
        );
        assert_eq!(view.nodes.len(), 1);
        assert_eq!(view.guests.len(), 3);
        assert_eq!(view.storages.len(), 3, "sdn rows are not storages");
        let jellyfin = &view.guests[&100];
        assert_eq!(jellyfin.kind, GuestKind::Lxc);
        assert_eq!(jellyfin.name.as_deref(), Some("Jellyfin"));
        assert_eq!(jellyfin.cpu, Some(5.4), "0.0544 of the CPUs = 5.4 %");
        assert_eq!(jellyfin.mem_percent, Some(41.8), "5389254656 / 12884901888");
        assert_eq!(jellyfin.cpus, Some(8));
        let ubuntu = &view.guests[&101];
        assert_eq!(ubuntu.status, "stopped");
        assert_eq!(
            ubuntu.netin_rate,
            Some(0.0),
            "a stopped guest moves nothing"
        );
        let dsm = &view.storages[&("pve".to_string(), "DSM".to_string())];
        assert!(dsm.shared && dsm.active);
        assert_eq!(dsm.avail, Some(9909187887104 - 1250082226176));
        assert_eq!(dsm.used_percent, Some(12.6));
        assert_eq!(dsm.content.len(), 6);
        assert_eq!(view.cluster.guests_running, 2);
        assert_eq!(view.cluster.nodes_online, 1);
    }

    #[test]
    fn four_node_fixture_counts_and_template_flag() {
        let rows = resources(FOUR_NODES);
        let view = build_view(
            "c",
            "",
            &rows,
            &SlowData::default(),
            &mut RateMemory::default(),
            0.0,
            None,
        );
        assert_eq!(view.nodes.len(), 4);
        assert!(view.guests[&101].template, "template: 1 is a boolean");
        assert!(!view.guests[&100].template);
        assert_eq!(view.guests[&100].node, "node2");
    }

    fn guest_row(netin: u64, status: &str) -> Resource {
        serde_json::from_value(serde_json::json!({
            "id": "qemu/100", "type": "qemu", "vmid": 100, "node": "pve", "status": status,
            "netin": netin, "netout": 0, "diskread": 0, "diskwrite": 0, "cpu": 0.01, "maxcpu": 2,
        }))
        .unwrap()
    }

    #[test]
    fn rates_come_from_counter_deltas_and_survive_resets() {
        let slow = SlowData::default();
        let mut mem = RateMemory::default();
        let rate = |mem: &mut RateMemory, netin, t| {
            build_view("c", "", &[guest_row(netin, "running")], &slow, mem, t, None).guests[&100]
                .netin_rate
        };
        assert_eq!(
            rate(&mut mem, 1_000, 0.0),
            None,
            "no rate from a single sample"
        );
        assert_eq!(rate(&mut mem, 21_000, 10.0), Some(2_000.0));
        // Proxmox refreshes counters every ~10 s: a repeat keeps the last rate.
        assert_eq!(rate(&mut mem, 21_000, 12.0), Some(2_000.0));
        // A restarted guest's counter starts again from 0: no negative or huge rate.
        assert_eq!(rate(&mut mem, 500, 20.0), None);
        assert_eq!(rate(&mut mem, 1_500, 30.0), Some(100.0));
    }

    #[test]
    fn unchanged_guests_are_shared_with_the_previous_view_and_changed_ones_are_not() {
        let slow = SlowData::default();
        let mut mem = RateMemory::default();
        let rows = resources(ONE_NODE);
        let first = build_view("c", "", &rows, &slow, &mut mem, 0.0, None);
        let again = build_view("c", "", &rows, &slow, &mut mem, 10.0, Some(&first));
        for (vmid, guest) in &again.guests {
            assert!(
                Arc::ptr_eq(guest, &first.guests[vmid]),
                "guest {vmid} copied"
            );
            assert!(again.same_state(&first, &ObjectRef::Guest(guest.kind, *vmid)));
        }
        let mut moved = rows.clone();
        let row = moved.iter_mut().find(|r| r.vmid == Some(101)).unwrap();
        row.status = Some("running".into());
        let changed = build_view("c", "", &moved, &slow, &mut mem, 20.0, Some(&again));
        assert_eq!(changed.guests[&101].status, "running");
        assert!(!changed.same_state(&again, &ObjectRef::Guest(GuestKind::Qemu, 101)));
        assert!(Arc::ptr_eq(&changed.guests[&100], &again.guests[&100]));

        // Text and slow-lane inputs count too: new tags, a new backup.
        let row = moved.iter_mut().find(|r| r.vmid == Some(100)).unwrap();
        row.tags_raw = Some("media;new".into());
        let backed_up = SlowData {
            last_backup: HashMap::from([(102, 1_764_679_463)]),
            ..SlowData::default()
        };
        let later = build_view("c", "", &moved, &backed_up, &mut mem, 30.0, Some(&changed));
        assert_eq!(later.guests[&100].tags, vec!["media", "new"]);
        assert_eq!(later.guests[&102].last_backup, Some(1_764_679_463));
        assert!(!Arc::ptr_eq(&later.guests[&102], &changed.guests[&102]));
        assert!(Arc::ptr_eq(&later.guests[&101], &changed.guests[&101]));
    }

    #[test]
    fn node_versions_read_like_users_say_them() {
        assert_eq!(
            short_pve_version("pve-manager/9.1.2/9d436f37a0ac4172"),
            "9.1.2"
        );
        assert_eq!(short_pve_version("9.1.2"), "9.1.2");
    }

    #[test]
    fn rounding_keeps_idle_jitter_from_changing_the_payload() {
        assert_eq!(round_percent(3.04159), 3.0);
        assert_eq!(round_percent(3.1449), 3.1);
        assert_eq!(round_rate(12_345.0), 12_000.0);
        assert_eq!(round_rate(12_449.0), 12_000.0);
        assert_eq!(round_rate(987.0), 990.0);
        assert_eq!(round_rate(42.4), 42.0);
        assert_eq!(round_rate(-1.0), 0.0);
        assert_eq!(round_rate(f64::NAN), 0.0);
    }

    #[test]
    fn objects_on_an_offline_node_are_unavailable() {
        let rows: Vec<Resource> = serde_json::from_value(serde_json::json!([
            {"id": "node/a", "type": "node", "node": "a", "status": "online"},
            {"id": "node/b", "type": "node", "node": "b", "status": "offline"},
            {"id": "qemu/100", "type": "qemu", "vmid": 100, "node": "a", "status": "running"},
            {"id": "qemu/101", "type": "qemu", "vmid": 101, "node": "b", "status": "unknown"},
            {"id": "storage/b/local", "type": "storage", "node": "b", "storage": "local", "status": "unknown"}
        ]))
        .unwrap();
        let view = build_view(
            "c",
            "",
            &rows,
            &SlowData::default(),
            &mut RateMemory::default(),
            0.0,
            None,
        );
        assert!(view.is_available(&ObjectRef::Guest(GuestKind::Qemu, 100)));
        assert!(!view.is_available(&ObjectRef::Guest(GuestKind::Qemu, 101)));
        assert!(!view.is_available(&ObjectRef::Node("b".into())));
        assert!(!view.is_available(&ObjectRef::Storage("b".into(), "local".into())));
        assert!(view.is_available(&ObjectRef::Cluster));
        assert_eq!(view.guests[&101].status, "unknown");
        assert_eq!(
            view.guests[&101].name, None,
            "bare rows of an offline node have no name"
        );
    }

    #[test]
    fn hibernated_vm_is_suspended_and_slow_lane_fills_backups() {
        let rows: Vec<Resource> = serde_json::from_value(serde_json::json!([
            {"id": "qemu/100", "type": "qemu", "vmid": 100, "node": "a", "status": "stopped", "lock": "suspended", "tags": "a;b"}
        ]))
        .unwrap();
        let slow = SlowData {
            last_backup: HashMap::from([(100, 1_764_679_463)]),
            ..SlowData::default()
        };
        let view = build_view("c", "", &rows, &slow, &mut RateMemory::default(), 0.0, None);
        let vm = &view.guests[&100];
        assert_eq!(vm.status, "suspended");
        assert_eq!(vm.last_backup, Some(1_764_679_463));
        assert_eq!(vm.tags, vec!["a".to_string(), "b".to_string()]);
    }
}
