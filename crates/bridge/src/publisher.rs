//! The one place that publishes. It owns what has been told to the broker (per object:
//! state payload, availability, discovery inputs), so it can publish only what changed,
//! republish everything after a reconnect or Home Assistant's birth message, and clean
//! up objects that vanished — including those that vanished while the bridge was down,
//! found from the retained availability topics the broker hands back at connect.
//!
//! Other tasks send typed [`PublisherMsg`]s (a guest's task report, a request's
//! response), never topic strings: every topic is built here through [`Topics`]. It
//! writes through an [`Outbox`] (rumqttc's client in the bridge), so these decisions are
//! unit-tested against a recording fake, without a broker.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use rumqttc::AsyncClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::command::report::{Phase, TaskReport};
use crate::ha::discovery::{device_config, device_info, DiscoveryContext};
use crate::ha::topics::Topics;
use crate::model::{ClusterView, ObjectRef};
use crate::mqtt::{Inbound, LinkEvent};
use crate::pve::GuestKind;

mod bridge;
mod last_task;
mod outbox;
mod render;

use outbox::Sink;
pub use outbox::{Outbox, PublishStats};
use render::availability;
pub use render::state_json;

/// What other tasks ask the publisher to do.
#[derive(Debug)]
pub enum PublisherMsg {
    /// A successful poll of one cluster.
    View(Arc<ClusterView>),
    /// Proxmox could not be reached: every object of this cluster is `offline`.
    Unreachable { cluster: String, reason: String },
    /// From the MQTT event loop: connection changes, and the inbound messages
    /// [`Topics::route_inbound`] gives to the publisher (commands go to the command
    /// handler directly).
    Link(LinkEvent),
    /// A guest's command report, retained on its `…/task` topic.
    Task {
        cluster: String,
        kind: GuestKind,
        vmid: u32,
        report: TaskReport,
    },
    /// A report for live subscribers only, on the guest's `…/task` topic: neither
    /// retained nor remembered for a republish. Rejections that are not about a real new
    /// command for a known, idle guest (a retained replay, busy, rate limited, an unknown
    /// cluster or guest, an overloaded bridge) go this way, so the retained report stays
    /// the latest real command's and nothing is kept for topics that are no guest.
    TaskNotice {
        cluster: String,
        kind: GuestKind,
        vmid: u32,
        report: TaskReport,
    },
    /// A guest's latest Proxmox task of any origin changed: retained on its
    /// `…/last_task` topic (`model::LastTask`).
    LastTask {
        cluster: String,
        kind: GuestKind,
        vmid: u32,
        task: crate::model::LastTask,
    },
    /// The answer to a bridge request, on `{base}/bridge/response/{name}` (not retained).
    Response {
        name: String,
        body: serde_json::Value,
    },
    /// Clears a retained command on the guest's `…/set` topic, so the broker does not
    /// deliver it again at every reconnect.
    ClearCommand {
        cluster: String,
        kind: GuestKind,
        vmid: u32,
    },
    /// Clears a bridge request on `{base}/bridge/request/{name}` (an empty retained
    /// message), so a copy retained there is not delivered again.
    ClearRequest { name: String },
    /// A node command's report on `{base}/{c}/node/{node}/task`: retained, or (a
    /// rejection that must not bury the latest real report) for live subscribers only.
    NodeTask {
        cluster: String,
        node: String,
        report: TaskReport,
        retain: bool,
    },
    /// Clears a retained node command on `{base}/{c}/node/{node}/set`.
    ClearNodeCommand { cluster: String, node: String },
}

impl PublisherMsg {
    /// Command-side messages, still sent at shutdown (a task still running is reported
    /// as such, so the next run can pick it up).
    fn is_command_side(&self) -> bool {
        matches!(
            self,
            PublisherMsg::Task { .. }
                | PublisherMsg::TaskNotice { .. }
                | PublisherMsg::Response { .. }
                | PublisherMsg::ClearCommand { .. }
                | PublisherMsg::ClearRequest { .. }
                | PublisherMsg::NodeTask { .. }
                | PublisherMsg::ClearNodeCommand { .. }
        )
    }
}

/// What the broker holds for one object. Payloads themselves are not kept: at 5,000
/// guests the discovery payloads alone would be ~20 MB. Hashes tell whether the state or
/// the discovery inputs changed, and a republish renders again from the cluster's last
/// view. (Keeping the discovery inputs themselves, five strings per object, cost ~1.5 MB
/// of the heap at 5,000 guests; bench/RESULTS.md, issue 10.)
#[derive(Debug, Default)]
struct ObjectRecord {
    /// Hash of the state JSON last published; 0 = nothing yet.
    state_hash: u64,
    available: bool,
    /// Hash of the inputs ([`DeviceInfo`](crate::ha::discovery::DeviceInfo)) of the discovery message last sent; `None`
    /// = none sent.
    discovery: Option<u64>,
    /// The view generation that last contained this object (finds vanished objects
    /// without building a set of every object on every poll).
    seen: u64,
}

/// The longest a guest's discovery waits after the cluster's first view for the slow
/// lane's first health requests (`ClusterState::health_pending`): Proxmox may be slow to
/// answer them (10 s each before a timeout), and meanwhile Home Assistant has the guest's
/// state but no entity for it. After that the guest is announced as it is, and again once
/// its replication is known.
const DISCOVERY_HOLD: std::time::Duration = std::time::Duration::from_secs(10);

fn hash_of<T: std::hash::Hash + ?Sized>(value: &T) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    // 0 is reserved for "nothing published yet".
    hasher.finish().max(1)
}

#[derive(Debug, Default)]
struct ClusterRecord {
    reachable: bool,
    polled: bool,
    /// The outage was logged (once per outage, also before the first successful poll).
    outage_logged: bool,
    name: Option<String>,
    pve_version: Option<String>,
    nodes: usize,
    guests: usize,
    objects: BTreeMap<ObjectRef, ObjectRecord>,
    /// The view the records were last updated from (shared with the poller).
    view: Option<Arc<ClusterView>>,
    /// Counts views, for [`ObjectRecord::seen`].
    generation: u64,
    /// A guest's discovery was held back in the last view's pass (`health_pending`): the
    /// next pass walks every object, so that each is announced then.
    discovery_held: bool,
    /// When the cluster's first view came: guests' discovery is held at most
    /// [`DISCOVERY_HOLD`] after it.
    first_view: Option<tokio::time::Instant>,
    /// Objects the last view's pass looked at (tests).
    #[cfg(test)]
    examined: usize,
}

/// A guest's `…/task` topic, by (cluster, kind, vmid).
type TaskKey = (String, GuestKind, u32);

pub struct Publisher<O: Outbox = AsyncClient> {
    sink: Sink<O>,
    topics: Topics,
    discovery: Option<DiscoveryContext>,
    clusters: BTreeMap<String, ClusterRecord>,
    /// Objects seen in retained availability topics but not (yet) in a view.
    leftovers: HashSet<(String, ObjectRef)>,
    /// The retained command reports, to republish after a reconnect.
    task_reports: HashMap<TaskKey, String>,
    /// The retained `…/last_task` payloads (`publisher/last_task.rs`).
    last_tasks: HashMap<TaskKey, String>,
    bridge_info: String,
    /// The bridge's own device (`publisher/bridge.rs`).
    bridge_device: bridge::BridgeDeviceRecord,
}

impl<O: Outbox> Publisher<O> {
    pub fn new(
        outbox: O,
        topics: Topics,
        discovery: Option<DiscoveryContext>,
        stats: Arc<PublishStats>,
    ) -> Self {
        Publisher {
            sink: Sink {
                outbox,
                connected: false,
                stats,
            },
            topics,
            discovery,
            clusters: BTreeMap::new(),
            leftovers: HashSet::new(),
            task_reports: HashMap::new(),
            last_tasks: HashMap::new(),
            bridge_info: String::new(),
            bridge_device: Default::default(),
        }
    }

    /// Runs until `shutdown`, then publishes `offline` on the bridge state (the Last Will
    /// only fires on an unclean disconnect) and disconnects cleanly.
    pub async fn run(
        mut self,
        mut inbox: mpsc::Receiver<PublisherMsg>,
        shutdown: CancellationToken,
    ) {
        loop {
            let msg = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                msg = inbox.recv() => match msg {
                    Some(msg) => msg,
                    None => break,
                },
            };
            // A publish can wait on a full request channel while the broker is slow;
            // shutdown must still get through.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = self.handle(msg) => {}
            }
        }
        // Results the command side sent just before the stop (tasks still running are
        // reported as such, so the next run can pick them up) go out before `offline`.
        while let Ok(msg) = inbox.try_recv() {
            if msg.is_command_side() {
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(2), self.handle(msg)).await;
            }
        }
        if self.sink.connected {
            let topic = self.topics.bridge_state();
            if let Err(err) = self
                .sink
                .outbox
                .try_publish(&topic, b"offline".to_vec(), true)
            {
                warn!(error = %err, "could not queue the offline state");
            }
        }
        if let Err(err) = self.sink.outbox.try_disconnect() {
            debug!(error = %err, "could not queue the MQTT disconnect");
        }
    }

    async fn handle(&mut self, msg: PublisherMsg) {
        if let PublisherMsg::Task { report, .. } | PublisherMsg::TaskNotice { report, .. } = &msg {
            let result = match report.state {
                Phase::Ok => Some("ok"),
                Phase::Failed => Some("failed"),
                Phase::Rejected => Some("rejected"),
                Phase::Accepted | Phase::Running => None,
            };
            if let Some(result) = result {
                self.sink.stats.commands.count(&report.action, result);
            }
        }
        match msg {
            PublisherMsg::View(view) => self.apply_view(&view).await,
            PublisherMsg::Unreachable { cluster, reason } => {
                self.apply_unreachable(&cluster, &reason).await
            }
            PublisherMsg::Link(LinkEvent::Connected) => {
                self.sink.connected = true;
                self.republish_all().await;
            }
            PublisherMsg::Link(LinkEvent::Disconnected) => self.sink.connected = false,
            PublisherMsg::Link(LinkEvent::Message(msg)) => self.inbound(msg).await,
            PublisherMsg::Task {
                cluster,
                kind,
                vmid,
                report,
            } => self.apply_task(cluster, kind, vmid, &report).await,
            PublisherMsg::TaskNotice {
                cluster,
                kind,
                vmid,
                report,
            } => {
                let topic = self.topics.task(&cluster, kind, vmid);
                self.sink.send(&topic, report.to_json(), false).await;
            }
            PublisherMsg::LastTask {
                cluster,
                kind,
                vmid,
                task,
            } => self.apply_last_task(cluster, kind, vmid, &task).await,
            PublisherMsg::Response { name, body } => {
                let topic = self.topics.bridge_response(&name);
                self.sink.send(&topic, body.to_string(), false).await;
            }
            PublisherMsg::ClearCommand {
                cluster,
                kind,
                vmid,
            } => {
                let topic = self.topics.command(&cluster, kind, vmid);
                self.sink.send(&topic, Vec::new(), true).await;
            }
            PublisherMsg::ClearRequest { name } => {
                let topic = self.topics.bridge_request(&name);
                self.sink.send(&topic, Vec::new(), true).await;
            }
            PublisherMsg::NodeTask {
                cluster,
                node,
                report,
                retain,
            } => {
                if report.state.is_final() {
                    let result = if report.state == Phase::Ok {
                        "ok"
                    } else {
                        "failed"
                    };
                    let result = if report.state == Phase::Rejected {
                        "rejected"
                    } else {
                        result
                    };
                    self.sink.stats.commands.count(&report.action, result);
                }
                let topic = self.topics.node_task(&cluster, &node);
                self.sink.send(&topic, report.to_json(), retain).await;
            }
            PublisherMsg::ClearNodeCommand { cluster, node } => {
                let topic = self.topics.node_command(&cluster, &node);
                self.sink.send(&topic, Vec::new(), true).await;
            }
        }
    }

    /// A command report: retained, and remembered for a republish, unless the guest
    /// vanished meanwhile (deleted while its task ran): then it still reaches live
    /// subscribers but is not left retained.
    async fn apply_task(
        &mut self,
        cluster: String,
        kind: GuestKind,
        vmid: u32,
        report: &TaskReport,
    ) {
        let vanished = self
            .clusters
            .get(&cluster)
            .is_some_and(|r| r.polled && !r.objects.contains_key(&ObjectRef::Guest(kind, vmid)));
        let topic = self.topics.task(&cluster, kind, vmid);
        let payload = report.to_json();
        if !vanished {
            self.task_reports
                .insert((cluster, kind, vmid), payload.clone());
        }
        self.sink.send(&topic, payload, !vanished).await;
    }

    async fn inbound(&mut self, msg: Inbound) {
        if msg.topic == self.topics.ha_status() {
            if msg.payload == b"online" {
                info!("Home Assistant came online: republishing discovery and states");
                self.republish_all().await;
            }
            return;
        }
        if let Some((cluster, object)) = self.topics.parse_availability(&msg.topic) {
            // Only the broker's retained copies (sent at subscribe time) tell us about
            // earlier runs; live echoes of our own publishes are not retained.
            if msg.retain && !msg.payload.is_empty() {
                let known = self
                    .clusters
                    .get(&cluster)
                    .is_some_and(|c| c.objects.contains_key(&object));
                if !known {
                    self.leftovers.insert((cluster.clone(), object));
                    self.clean_leftovers(&cluster).await;
                }
            }
        }
    }

    async fn apply_view(&mut self, shared: &Arc<ClusterView>) {
        let view: &ClusterView = shared;
        let c = view.id.clone();
        let mut record = self.clusters.remove(&c).unwrap_or_default();
        let previous = record.view.replace(shared.clone());
        record.generation += 1;
        let generation = record.generation;
        if !record.reachable && record.polled {
            info!(cluster = %c, "Proxmox reachable again");
        }
        let was_reachable = record.reachable;
        record.reachable = true;
        record.polled = true;
        record.outage_logged = false;
        record.name = view.cluster.name.clone();
        record.pve_version = view.cluster.pve_version.clone();
        record.nodes = view.nodes.len();
        record.guests = view.guests.len();

        // What the slow lane has asked for is an input of every guest's discovery payload
        // (`health_entities`) that no guest's own state holds: when it changes, every guest's
        // discovery is checked in this round, at once, not at the guest's next change.
        let asked_changed = previous
            .as_deref()
            .is_some_and(|p| p.cluster.health_known != view.cluster.health_known);
        // Right after a start a guest's discovery waits for the slow lane's first health
        // requests (`health_pending`), so it goes out once, with its replication entities
        // or their removal, not once without and again for every guest when they are known
        // (10,131 discovery messages for 5,078 objects at 10 nodes / 5,000 guests). Its
        // state goes out meanwhile.
        let first_view = *record
            .first_view
            .get_or_insert_with(tokio::time::Instant::now);
        let hold_guests = view.cluster.health_pending
            && self.discovery.is_some()
            && first_view.elapsed() < DISCOVERY_HOLD;
        let was_held = std::mem::take(&mut record.discovery_held);
        let mut held = false;
        // A guest whose state is the very state (`Arc`) of the last view needs nothing
        // (its record says what that view said), unless its availability may have moved
        // (a node's, an outage's) or its discovery is checked again: then every object is.
        let shared_guests_skipped = previous.as_deref().filter(|p| {
            let online = |v: &'_ ClusterView| {
                v.nodes
                    .iter()
                    .map(|(n, s)| (n.clone(), s.status == "online"))
                    .collect::<Vec<_>>()
            };
            was_reachable
                && !asked_changed
                && !was_held
                && p.console_url == view.console_url
                && online(p) == online(view)
        });
        let (objects, gone_guests): (Box<dyn Iterator<Item = ObjectRef> + Send>, _) =
            match shared_guests_skipped {
                Some(p) => {
                    let changes = view.guest_changes(p);
                    (
                        Box::new(view.objects_with_guests(changes.changed.into_iter())),
                        Some(changes.gone),
                    )
                }
                None => (Box::new(view.objects()), None),
            };
        #[cfg(test)]
        {
            record.examined = 0;
        }
        for object in objects {
            #[cfg(test)]
            {
                record.examined += 1;
            }
            let available = view.is_available(&object);
            let entry = record.objects.entry(object.clone()).or_default();
            entry.seen = generation;
            let is_new = entry.state_hash == 0;
            if is_new {
                debug!(cluster = %c, %object, "new object");
            }
            // (A guest held back is announced now, changed or not.)
            let recheck = (asked_changed || (was_held && entry.discovery.is_none()))
                && matches!(object, ObjectRef::Guest(..));
            // The common case on an idle poll: nothing to render, nothing to send.
            let unchanged = !is_new
                && !recheck
                && previous
                    .as_deref()
                    .is_some_and(|p| p.same_state(view, &object));
            if unchanged {
                if entry.available != available {
                    entry.available = available;
                    let topic = self.topics.availability(&c, &object);
                    self.sink.send(&topic, availability(available), true).await;
                }
                continue;
            }
            let Some(state) = state_json(view, &object) else {
                continue;
            };
            if hold_guests && matches!(object, ObjectRef::Guest(..)) {
                held = true;
            } else if let Some(ctx) = &self.discovery {
                let info = device_info(ctx, view, &object).map(|info| hash_of(&info));
                let stale = match (entry.discovery, info) {
                    (Some(old), Some(new)) => old != new,
                    (None, Some(_)) => true,
                    _ => false,
                };
                if stale {
                    if let (Some(info), Some(payload)) = (info, device_config(ctx, view, &object)) {
                        entry.discovery = Some(info);
                        self.sink
                            .stats
                            .discovery
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let topic = self.topics.discovery(&c, &object);
                        self.sink.send(&topic, payload.into_bytes(), true).await;
                    }
                }
            }
            let state_hash = hash_of(&state);
            if entry.state_hash != state_hash {
                entry.state_hash = state_hash;
                self.sink
                    .stats
                    .states
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let topic = self.topics.state(&c, &object);
                self.sink.send(&topic, state.into_bytes(), true).await;
            }
            if is_new || entry.available != available {
                entry.available = available;
                let topic = self.topics.availability(&c, &object);
                self.sink.send(&topic, availability(available), true).await;
            }
        }
        record.discovery_held = held;
        // Skipped guests keep an older `seen`: which guests went, the walk above said.
        let skipped = gone_guests.is_some();
        let mut gone: Vec<ObjectRef> = record
            .objects
            .iter()
            .filter(|(object, entry)| {
                entry.seen != generation && !(skipped && matches!(object, ObjectRef::Guest(..)))
            })
            .map(|(object, _)| object.clone())
            .collect();
        gone.extend(gone_guests.unwrap_or_default());
        for object in gone {
            info!(cluster = %c, %object, "object vanished: removing it");
            record.objects.remove(&object);
            self.remove_object(&c, &object).await;
        }
        self.clusters.insert(c.clone(), record);
        self.clean_leftovers(&c).await;
        self.publish_bridge_info(false).await;
        // The previous view goes first: with this poll's rendering, it is what the trim
        // can give back.
        drop(previous);
        crate::memory::release_free_memory();
    }

    /// An object that is gone for good: tell subscribers it is offline, then clear every
    /// retained topic it had so nothing stale is left on the broker or in HA.
    async fn remove_object(&mut self, cluster: &str, object: &ObjectRef) {
        let availability_topic = self.topics.availability(cluster, object);
        self.sink.send(&availability_topic, "offline", true).await;
        let mut clear = vec![
            self.topics.discovery(cluster, object),
            self.topics.state(cluster, object),
            availability_topic,
        ];
        if let ObjectRef::Guest(kind, vmid) = object {
            self.task_reports
                .remove(&(cluster.to_string(), *kind, *vmid));
            clear.push(self.topics.task(cluster, *kind, *vmid));
            if self
                .last_tasks
                .remove(&(cluster.to_string(), *kind, *vmid))
                .is_some()
            {
                clear.push(self.topics.last_task(cluster, *kind, *vmid));
            }
        }
        for topic in clear {
            self.sink.send(&topic, Vec::new(), true).await;
        }
    }

    /// Clears objects known only from retained topics of an earlier run once a poll of
    /// their cluster shows they no longer exist.
    async fn clean_leftovers(&mut self, cluster: &str) {
        let Some(record) = self.clusters.get(cluster) else {
            return;
        };
        if !record.polled {
            return;
        }
        // Disks and pools are known only once the slow lane read their node: until then
        // their leftovers wait (a restart must not remove them from HA and re-add them).
        let view = record.view.clone();
        let known = |o: &ObjectRef| view.as_deref().is_none_or(|v| v.knows(o));
        let stale: Vec<(String, ObjectRef)> = self
            .leftovers
            .iter()
            .filter(|(c, o)| c == cluster && known(o) && !record.objects.contains_key(o))
            .cloned()
            .collect();
        self.leftovers.retain(|(c, o)| c != cluster || !known(o));
        for (c, object) in stale {
            info!(cluster = %c, %object, "object from an earlier run no longer exists: removing it");
            self.remove_object(&c, &object).await;
        }
    }

    async fn apply_unreachable(&mut self, cluster: &str, reason: &str) {
        let record = self.clusters.entry(cluster.to_string()).or_default();
        record.reachable = false;
        if !record.outage_logged {
            record.outage_logged = true;
            warn!(
                cluster,
                reason, "Proxmox unreachable: marking its objects offline"
            );
        }
        let mut topics = Vec::new();
        for (object, entry) in record.objects.iter_mut() {
            if entry.available {
                entry.available = false;
                topics.push(self.topics.availability(cluster, object));
            }
        }
        for topic in topics {
            self.sink.send(&topic, "offline", true).await;
        }
        self.publish_bridge_info(false).await;
    }

    /// After a (re)connect or HA's birth: the broker or HA may have lost everything.
    async fn republish_all(&mut self) {
        let state_topic = self.topics.bridge_state();
        self.sink.send(&state_topic, "online", true).await;
        // One message at a time: building the whole batch first would hold every
        // payload of a large cluster in memory at once.
        for (c, record) in &self.clusters {
            let Some(view) = &record.view else { continue };
            for (object, entry) in &record.objects {
                if let (Some(ctx), Some(_)) = (&self.discovery, &entry.discovery) {
                    if let Some(payload) = device_config(ctx, view, object) {
                        let topic = self.topics.discovery(c, object);
                        self.sink.send(&topic, payload, true).await;
                    }
                }
                if let Some(state) = state_json(view, object) {
                    let topic = self.topics.state(c, object);
                    self.sink.send(&topic, state, true).await;
                }
                let topic = self.topics.availability(c, object);
                let online = availability(entry.available && record.reachable);
                self.sink.send(&topic, online, true).await;
            }
        }
        for ((cluster, kind, vmid), payload) in &self.task_reports {
            let topic = self.topics.task(cluster, *kind, *vmid);
            self.sink.send(&topic, payload.clone(), true).await;
        }
        for ((cluster, kind, vmid), payload) in &self.last_tasks {
            let topic = self.topics.last_task(cluster, *kind, *vmid);
            self.sink.send(&topic, payload.clone(), true).await;
        }
        self.publish_bridge_info(true).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::command::report::Phase;
    use crate::ha::discovery::GuestControls;
    use crate::model::{build_view, GuestState, RateMemory, SlowData};
    use crate::pve::Resource;

    /// One publish as the broker would see it: (topic, payload, retain).
    type Sent = (String, String, bool);

    /// An outbox that records instead of sending.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Sent>>>);

    impl Recorder {
        /// Everything published since the last call.
        fn take(&self) -> Vec<Sent> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    impl Outbox for Recorder {
        async fn publish(
            &mut self,
            topic: &str,
            payload: Vec<u8>,
            retain: bool,
        ) -> Result<(), String> {
            self.try_publish(topic, payload, retain)
        }

        fn try_publish(
            &mut self,
            topic: &str,
            payload: Vec<u8>,
            retain: bool,
        ) -> Result<(), String> {
            let payload = String::from_utf8_lossy(&payload).into_owned();
            self.0
                .lock()
                .unwrap()
                .push((topic.to_string(), payload, retain));
            Ok(())
        }

        fn try_disconnect(&mut self) -> Result<(), String> {
            Ok(())
        }
    }

    /// A one-node cluster `home` with the given (type, vmid, status) guests.
    fn view(guests: &[(&str, u32, &str)]) -> PublisherMsg {
        let mut rows = vec![serde_json::json!(
            {"id": "node/pve", "type": "node", "node": "pve", "status": "online"}
        )];
        for (kind, vmid, status) in guests {
            rows.push(
                serde_json::json!({"id": format!("{kind}/{vmid}"), "type": kind,
                "vmid": vmid, "node": "pve", "status": status, "name": format!("g{vmid}")}),
            );
        }
        view_of(rows.into())
    }

    /// The view of cluster `home` from these `/cluster/resources` rows.
    fn view_of(rows: serde_json::Value) -> PublisherMsg {
        let rows: Vec<Resource> = serde_json::from_value(rows).unwrap();
        PublisherMsg::View(Arc::new(build_view(
            "home",
            "https://pve:8006",
            &rows,
            &SlowData::default(),
            &mut RateMemory::default(),
            0.0,
            None,
        )))
    }

    fn publisher() -> (Publisher<Recorder>, Recorder) {
        let topics = Topics::new("pve2mqtt", "homeassistant");
        let discovery = DiscoveryContext {
            topics: topics.clone(),
            bridge_version: "test".into(),
            controls: GuestControls::new(|_| true),
            cluster_count: 1,
        };
        let recorder = Recorder::default();
        let publisher = Publisher::new(recorder.clone(), topics, Some(discovery), Arc::default());
        (publisher, recorder)
    }

    fn task(vmid: u32, state: Phase) -> PublisherMsg {
        let mut report = TaskReport::new(Some(format!("t{vmid}")), "start", 1);
        report.state = state;
        PublisherMsg::Task {
            cluster: "home".into(),
            kind: GuestKind::Qemu,
            vmid,
            report,
        }
    }

    fn topics_of(sent: &[Sent]) -> Vec<&str> {
        sent.iter().map(|(t, _, _)| t.as_str()).collect()
    }

    const RUNNING: &[(&str, u32, &str)] = &[("qemu", 100, "running"), ("lxc", 101, "running")];

    #[tokio::test]
    async fn a_poll_that_changed_nothing_publishes_nothing_and_a_change_only_what_changed() {
        let (mut p, out) = publisher();
        p.handle(PublisherMsg::Link(LinkEvent::Connected)).await;
        p.handle(view(RUNNING)).await;
        let first = out.take();
        for topic in [
            "homeassistant/device/pve2mqtt_home_100/config",
            "pve2mqtt/home/qemu/100",
            "pve2mqtt/home/qemu/100/availability",
            "pve2mqtt/home/lxc/101",
            "pve2mqtt/bridge/info",
        ] {
            assert!(topics_of(&first).contains(&topic), "{topic} in {first:?}");
        }
        assert!(first.iter().all(|(_, _, retain)| *retain), "{first:?}");

        p.handle(view(RUNNING)).await;
        assert_eq!(out.take(), vec![], "an idle poll sends nothing");

        p.handle(view(&[("qemu", 100, "stopped"), ("lxc", 101, "running")]))
            .await;
        let changed = out.take();
        let topics = topics_of(&changed);
        assert!(topics.contains(&"pve2mqtt/home/qemu/100"), "{changed:?}");
        assert!(
            !topics
                .iter()
                .any(|t| t.contains("lxc/101") || t.contains("config")),
            "only the guest's state (and the cluster's counts) change: {changed:?}"
        );
    }

    /// `msg`'s view as built before the slow lane's first health requests ran.
    fn pending(msg: PublisherMsg) -> PublisherMsg {
        let PublisherMsg::View(view) = msg else {
            panic!("not a view")
        };
        let mut view = (*view).clone();
        view.cluster.health_pending = true;
        PublisherMsg::View(Arc::new(view))
    }

    const VM_100_DEVICE: &str = "homeassistant/device/pve2mqtt_home_100/config";

    #[tokio::test]
    async fn a_guests_discovery_waits_for_the_first_health_answers_and_its_state_does_not() {
        let (mut p, out) = publisher();
        p.handle(PublisherMsg::Link(LinkEvent::Connected)).await;
        p.handle(pending(view(RUNNING))).await;
        let first = out.take();
        assert!(
            topics_of(&first).contains(&"pve2mqtt/home/qemu/100"),
            "{first:?}"
        );
        assert!(!topics_of(&first).contains(&VM_100_DEVICE), "{first:?}");
        // Still waiting: a poll that changed nothing sends nothing
        p.handle(pending(view(RUNNING))).await;
        assert_eq!(out.take(), vec![]);
        // The answers are in: the unchanged guest is announced now, once
        p.handle(view(RUNNING)).await;
        let announced = out.take();
        assert_eq!(
            topics_of(&announced)
                .iter()
                .filter(|t| **t == VM_100_DEVICE)
                .count(),
            1,
            "{announced:?}"
        );
        p.handle(view(RUNNING)).await;
        assert_eq!(out.take(), vec![]);
    }

    #[tokio::test]
    async fn a_guests_discovery_waits_no_longer_than_the_hold() {
        let (mut p, out) = publisher();
        p.handle(PublisherMsg::Link(LinkEvent::Connected)).await;
        p.handle(pending(view(RUNNING))).await;
        assert!(!topics_of(&out.take()).contains(&VM_100_DEVICE));
        // (the cluster's first view as long ago as the hold lasts)
        let record = p.clusters.get_mut("home").unwrap();
        record.first_view = tokio::time::Instant::now().checked_sub(DISCOVERY_HOLD);
        p.handle(pending(view(RUNNING))).await;
        assert!(topics_of(&out.take()).contains(&VM_100_DEVICE));
    }

    /// A one-node cluster `home` with one VM, 100, of the given name and status.
    fn view_named(name: &str, status: &str) -> PublisherMsg {
        let rows = serde_json::json!([
            {"id": "node/pve", "type": "node", "node": "pve", "status": "online"},
            {"id": "qemu/100", "type": "qemu", "vmid": 100, "node": "pve", "status": status, "name": name}
        ]);
        view_of(rows)
    }

    #[tokio::test]
    async fn a_renamed_guest_gets_its_discovery_again_and_a_new_status_does_not() {
        const CONFIG: &str = "homeassistant/device/pve2mqtt_home_100/config";
        let (mut p, out) = publisher();
        p.handle(PublisherMsg::Link(LinkEvent::Connected)).await;
        p.handle(view_named("web", "running")).await;
        assert!(topics_of(&out.take()).contains(&CONFIG));

        p.handle(view_named("web", "stopped")).await;
        let stopped = out.take();
        assert!(
            topics_of(&stopped).contains(&"pve2mqtt/home/qemu/100"),
            "{stopped:?}"
        );
        assert!(!topics_of(&stopped).contains(&CONFIG), "{stopped:?}");

        p.handle(view_named("db", "stopped")).await;
        let renamed = out.take();
        let configs: Vec<&Sent> = renamed.iter().filter(|(t, _, _)| t == CONFIG).collect();
        assert_eq!(configs.len(), 1, "{renamed:?}");
        assert!(configs[0].1.contains(r#""name":"db""#), "{renamed:?}");

        p.handle(view_named("db", "stopped")).await;
        assert_eq!(out.take(), vec![], "an idle poll sends nothing");
    }

    #[tokio::test]
    async fn nothing_is_sent_while_disconnected_and_everything_after_a_reconnect() {
        let (mut p, out) = publisher();
        p.handle(view(RUNNING)).await;
        p.handle(task(100, Phase::Ok)).await;
        assert_eq!(out.take(), vec![]);

        p.handle(PublisherMsg::Link(LinkEvent::Connected)).await;
        let all = out.take();
        assert_eq!(
            all.first(),
            Some(&(
                "pve2mqtt/bridge/state".to_string(),
                "online".to_string(),
                true
            ))
        );
        for topic in [
            "homeassistant/device/pve2mqtt_home_100/config",
            "pve2mqtt/home/qemu/100",
            "pve2mqtt/home/lxc/101/availability",
            "pve2mqtt/home/qemu/100/task",
            "pve2mqtt/bridge/info",
        ] {
            assert!(topics_of(&all).contains(&topic), "{topic} in {all:?}");
        }

        // A second link drop and reconnect republishes the task report again.
        p.handle(PublisherMsg::Link(LinkEvent::Disconnected)).await;
        p.handle(PublisherMsg::Link(LinkEvent::Connected)).await;
        let again = out.take();
        let report = again
            .iter()
            .find(|(t, _, _)| t == "pve2mqtt/home/qemu/100/task")
            .expect("task report republished");
        assert!(report.2 && report.1.contains("\"ok\""), "{report:?}");
    }

    #[tokio::test]
    async fn a_vanished_guest_goes_offline_then_every_retained_topic_it_had_is_cleared() {
        let (mut p, out) = publisher();
        p.handle(PublisherMsg::Link(LinkEvent::Connected)).await;
        p.handle(view(RUNNING)).await;
        p.handle(PublisherMsg::Task {
            cluster: "home".into(),
            kind: GuestKind::Lxc,
            vmid: 101,
            report: TaskReport::new(None, "start", 1),
        })
        .await;
        out.take();

        p.handle(view(&[("qemu", 100, "running")])).await;
        let sent = out.take();
        let gone: Vec<&Sent> = sent.iter().filter(|(t, _, _)| t.contains("101")).collect();
        let expected: Vec<Sent> = vec![
            (
                "pve2mqtt/home/lxc/101/availability".into(),
                "offline".into(),
                true,
            ),
            (
                "homeassistant/device/pve2mqtt_home_101/config".into(),
                "".into(),
                true,
            ),
            ("pve2mqtt/home/lxc/101".into(), "".into(), true),
            ("pve2mqtt/home/lxc/101/availability".into(), "".into(), true),
            ("pve2mqtt/home/lxc/101/task".into(), "".into(), true),
        ];
        assert_eq!(gone, expected.iter().collect::<Vec<_>>());

        p.handle(PublisherMsg::Link(LinkEvent::Connected)).await;
        assert!(
            !out.take().iter().any(|(t, _, _)| t.contains("101")),
            "nothing of the vanished guest comes back"
        );
    }

    #[tokio::test]
    async fn objects_left_by_an_earlier_run_are_cleared_once_a_poll_shows_them_gone() {
        let (mut p, out) = publisher();
        p.handle(PublisherMsg::Link(LinkEvent::Connected)).await;
        p.handle(PublisherMsg::Link(LinkEvent::Message(Inbound {
            topic: "pve2mqtt/home/qemu/999/availability".into(),
            payload: b"online".to_vec(),
            retain: true,
        })))
        .await;
        assert!(
            !out.take().iter().any(|(t, _, _)| t.contains("999")),
            "not before the cluster was polled"
        );
        p.handle(view(RUNNING)).await;
        let cleared: Vec<Sent> = out
            .take()
            .into_iter()
            .filter(|(t, _, _)| t.contains("999"))
            .collect();
        assert!(
            cleared.contains(&("pve2mqtt/home/qemu/999".into(), "".into(), true))
                && cleared.contains(&("pve2mqtt/home/qemu/999/task".into(), "".into(), true)),
            "{cleared:?}"
        );
    }

    #[tokio::test]
    async fn reports_are_retained_for_known_guests_only_and_responses_never() {
        let (mut p, out) = publisher();
        p.handle(PublisherMsg::Link(LinkEvent::Connected)).await;
        p.handle(view(RUNNING)).await;
        out.take();

        p.handle(task(100, Phase::Running)).await;
        p.handle(task(555, Phase::Rejected)).await;
        // A rejection for an unknown cluster, and a busy one for a known guest: live only.
        for cluster in ["ghost", "home"] {
            let PublisherMsg::Task {
                kind, vmid, report, ..
            } = task(100, Phase::Rejected)
            else {
                unreachable!()
            };
            p.handle(PublisherMsg::TaskNotice {
                cluster: cluster.into(),
                kind,
                vmid,
                report,
            })
            .await;
        }
        p.handle(PublisherMsg::Response {
            name: "command".into(),
            body: serde_json::json!({"status": "ok"}),
        })
        .await;
        p.handle(PublisherMsg::ClearCommand {
            cluster: "home".into(),
            kind: GuestKind::Qemu,
            vmid: 100,
        })
        .await;
        p.handle(PublisherMsg::ClearRequest {
            name: "command".into(),
        })
        .await;
        let sent = out.take();
        let retain: Vec<(&str, bool)> = sent.iter().map(|(t, _, r)| (t.as_str(), *r)).collect();
        assert_eq!(
            retain,
            vec![
                ("pve2mqtt/home/qemu/100/task", true),
                ("pve2mqtt/home/qemu/555/task", false),
                ("pve2mqtt/ghost/qemu/100/task", false),
                ("pve2mqtt/home/qemu/100/task", false),
                ("pve2mqtt/bridge/response/command", false),
                ("pve2mqtt/home/qemu/100/set", true),
                ("pve2mqtt/bridge/request/command", true),
            ]
        );
        assert!(
            sent[5].1.is_empty() && sent[6].1.is_empty(),
            "commands and requests are cleared with an empty message"
        );

        p.handle(PublisherMsg::Link(LinkEvent::Connected)).await;
        let again: Vec<Sent> = out
            .take()
            .into_iter()
            .filter(|(t, _, _)| t.ends_with("/task"))
            .collect();
        assert_eq!(again.len(), 1, "{again:?}");
        assert_eq!(again[0].0, "pve2mqtt/home/qemu/100/task");
        assert!(
            again[0].1.contains("\"running\""),
            "the real report, not a rejection notice, comes back: {again:?}"
        );
    }

    /// The view [`view`] sends, to share its guest states with the next one.
    fn built(guests: &[(&str, u32, &str)]) -> ClusterView {
        match view(guests) {
            PublisherMsg::View(view) => Arc::unwrap_or_clone(view),
            _ => unreachable!(),
        }
    }

    fn examined(p: &Publisher<Recorder>) -> usize {
        p.clusters["home"].examined
    }

    #[tokio::test]
    async fn a_view_that_shares_every_guest_state_with_the_last_examines_no_guest() {
        let (mut p, out) = publisher();
        p.handle(PublisherMsg::Link(LinkEvent::Connected)).await;
        let first = built(&[
            ("qemu", 100, "running"),
            ("lxc", 101, "running"),
            ("qemu", 102, "stopped"),
        ]);
        p.handle(PublisherMsg::View(Arc::new(first.clone()))).await;
        out.take();
        let others = first.objects().count() - first.guests.len();

        // The poller's view of an unchanged answer: the same states, shared.
        p.handle(PublisherMsg::View(Arc::new(first.clone()))).await;
        assert_eq!(out.take(), vec![]);
        assert_eq!(
            examined(&p),
            others,
            "only the cluster and its node are compared"
        );

        // One guest with a new state: only it is examined, and published.
        let mut changed = first.clone();
        let guest = changed.guests.get_mut(&101).unwrap();
        let mut stopped = GuestState::clone(guest);
        stopped.status = "stopped".into();
        *guest = Arc::new(stopped);
        p.handle(PublisherMsg::View(Arc::new(changed))).await;
        assert_eq!(examined(&p), others + 1);
        let sent = out.take();
        assert!(
            topics_of(&sent).contains(&"pve2mqtt/home/lxc/101"),
            "{sent:?}"
        );
        assert!(
            !sent
                .iter()
                .any(|(t, _, _)| t.contains("/100") || t.contains("/102")),
            "{sent:?}"
        );
    }

    #[tokio::test]
    async fn a_shared_guest_state_still_follows_its_node_its_removal_and_an_outage() {
        let (mut p, out) = publisher();
        p.handle(PublisherMsg::Link(LinkEvent::Connected)).await;
        let first = built(RUNNING);
        p.handle(PublisherMsg::View(Arc::new(first.clone()))).await;
        out.take();

        // The node goes offline; the guests' states are the same (shared).
        let mut node_down = first.clone();
        node_down.nodes.get_mut("pve").unwrap().status = "offline".into();
        p.handle(PublisherMsg::View(Arc::new(node_down))).await;
        let sent = out.take();
        for topic in [
            "pve2mqtt/home/qemu/100/availability",
            "pve2mqtt/home/lxc/101/availability",
        ] {
            assert!(
                sent.contains(&(topic.into(), "offline".into(), true)),
                "{topic}: {sent:?}"
            );
        }
        p.handle(PublisherMsg::View(Arc::new(first.clone()))).await;
        let sent = out.take();
        assert!(
            sent.contains(&(
                "pve2mqtt/home/qemu/100/availability".into(),
                "online".into(),
                true
            )),
            "{sent:?}"
        );

        // Proxmox unreachable, then the same view again: online again.
        p.handle(PublisherMsg::Unreachable {
            cluster: "home".into(),
            reason: "down".into(),
        })
        .await;
        out.take();
        p.handle(PublisherMsg::View(Arc::new(first.clone()))).await;
        let sent = out.take();
        assert!(
            sent.contains(&(
                "pve2mqtt/home/lxc/101/availability".into(),
                "online".into(),
                true
            )),
            "{sent:?}"
        );

        // Guest 101 vanishes, the other's state is shared: 101 is cleared, 100 left alone.
        let mut gone = first.clone();
        gone.guests.remove(&101);
        p.handle(PublisherMsg::View(Arc::new(gone))).await;
        let sent = out.take();
        assert!(
            sent.contains(&(
                "pve2mqtt/home/lxc/101/availability".into(),
                "offline".into(),
                true
            )),
            "{sent:?}"
        );
        assert!(
            sent.contains(&("pve2mqtt/home/lxc/101".into(), String::new(), true)),
            "{sent:?}"
        );
        assert!(!sent.iter().any(|(t, _, _)| t.contains("/100")), "{sent:?}");
        assert!(!p.clusters["home"]
            .objects
            .contains_key(&ObjectRef::Guest(GuestKind::Lxc, 101)));
    }
}
