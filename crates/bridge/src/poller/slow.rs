//! The slow lane of one cluster: every `poll.slow_interval`, the details only per-node
//! endpoints have, one request at a time and spread over the interval (see `poller`).
//!
//! Each request has a cadence ([`SlowRequest::every`]): the base requests (version,
//! cluster status, node status, backup content) run every round; details that change
//! slowly or cost Proxmox more (disks, updates, certificates…) run at most once per their
//! own interval, tracked by a [`Schedule`]. A round adds at most
//! [`Cadence::node_extras`] such requests per node, and at most [`Cadence::guest_extras`]
//! per-guest requests in all: what is not done this round is the first done the next.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::cluster_health::HealthProbes;
use super::node_health::{self, HealthCadence, HealthRequest};
use super::snapshots::{self, GuestFeed, SnapshotRead};
use crate::model::{NewestBackup, SlowData};
use crate::pve::{ClusterStatusKind, PveClient, PveError, Resource, ResourceKind};

/// How often the slow lane's detail requests run, and how many a round may add.
/// Built from the config's `[poll]` section; the defaults are the issue's.
#[derive(Clone, Debug)]
pub struct Cadence {
    /// At most this many per-node detail requests per node and round, on top of the node
    /// status (README "Request budget").
    pub node_extras: usize,
    /// At most this many per-guest detail requests per round, all nodes together.
    pub guest_extras: usize,
    /// How often each guest's snapshot list is read (`poll.snapshots_interval`).
    pub snapshots: Duration,
    /// Node health (issue 11): `poll.disks_interval`, `poll.updates`,
    /// `poll.updates_interval`, `poll.certificates_interval`.
    pub health: HealthCadence,
}

impl Default for Cadence {
    fn default() -> Self {
        Cadence {
            node_extras: 3,
            guest_extras: 50,
            snapshots: Duration::from_secs(15 * 60),
            health: HealthCadence::default(),
        }
    }
}

/// Which request costs what: the caps of [`Cadence`] apply per budget.
// The detail requests (issues 11 and 12) are the first to use `Node` and `Guest`.
#[allow(dead_code)]
#[derive(Debug, PartialEq, Eq)]
enum Budget<'a> {
    /// Every round, uncapped: version, cluster status, node status, backup content.
    Base,
    /// A per-node detail, capped by [`Cadence::node_extras`] per node.
    Node(&'a str),
    /// A per-guest detail, capped by [`Cadence::guest_extras`] per round.
    Guest,
}

/// When each detail request was last attempted (success or not: a request that fails
/// is tried again at its next due time, never in a loop).
#[derive(Debug, Default)]
struct Schedule {
    last: HashMap<SlowRequest, Instant>,
}

impl Schedule {
    /// Is `request` due at `now`, and since when? `None` = not due. Never-run requests
    /// are the most overdue.
    fn overdue(&self, request: &SlowRequest, every: Duration, now: Instant) -> Option<Duration> {
        match self.last.get(request) {
            None => Some(Duration::MAX),
            Some(_) if every.is_zero() => Some(Duration::ZERO),
            Some(at) => {
                let due = *at + every;
                (due <= now).then(|| now - due)
            }
        }
    }

    fn attempted(&mut self, request: &SlowRequest, now: Instant) {
        self.last.insert(request.clone(), now);
    }

    /// Forgets requests that were not planned for a long time (a node or guest that went
    /// away), so the schedule does not grow forever.
    fn forget_older_than(&mut self, age: Duration, now: Instant) {
        self.last
            .retain(|_, at| now.saturating_duration_since(*at) < age);
    }
}

/// What the slow lane of one cluster reads, and where its answers go.
pub(super) struct SlowLane {
    pub client: PveClient,
    /// `poll.slow_interval`
    pub interval: Duration,
    pub cadence: Cadence,
    /// The node and storage rows of the fast lane's latest answer.
    pub resources: watch::Receiver<Arc<Vec<Resource>>>,
    pub out: watch::Sender<Arc<SlowData>>,
    /// Read the backups again now (after a backup task).
    pub reread: Arc<tokio::sync::Notify>,
    /// Finished vzdump tasks (node, UPID) whose log is read once.
    pub backup_logs: mpsc::Receiver<(String, String)>,
    pub guests: GuestFeed,
}

/// The slow lane of one cluster (see the module docs).
pub(super) async fn slow_lane(lane: SlowLane, shutdown: CancellationToken) {
    let SlowLane {
        client,
        interval,
        cadence,
        mut resources,
        out,
        reread,
        mut backup_logs,
        mut guests,
    } = lane;
    // Wait for the fast lane's first answer: it says which nodes and storages exist.
    loop {
        if !resources.borrow_and_update().is_empty() {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = resources.changed() => if changed.is_err() { return },
        }
    }
    let mut data = SlowData::at_start();
    let mut schedule = Schedule::default();
    let mut first_round = true;
    let mut health = HealthProbes::default();
    let mut only_backups = false;
    // A snapshot command just ended: read that guest's snapshots, nothing else.
    let mut only_snapshots: Option<SnapshotRead> = None;
    let mut round_start = Instant::now();
    // Finished vzdump tasks whose log is still to be read: (node, UPID, attempts left).
    let mut logs_due: Vec<(String, String, u8)> = Vec::new();
    loop {
        while let Ok((node, upid)) = backup_logs.try_recv() {
            logs_due.push((node, upid, LOG_ATTEMPTS));
        }
        // Plan from the node and storage rows of the latest answer (the fast lane sends
        // only those: the guest rows are thousands and not needed here).
        let rows = resources.borrow_and_update().clone();
        // The cluster-health requests first: right after a start, guests' discovery waits
        // for what they say of replication (`HealthData::pending`). Not in a backups-only
        // round: the probes' hints would be used up unasked.
        let mut candidates = Vec::new();
        if !only_backups {
            candidates.extend(health.requests(&rows, Instant::now()));
        }
        candidates.extend(plan(&rows));
        candidates.extend(
            node_health::plan(&rows, &cadence.health)
                .into_iter()
                .map(SlowRequest::Health),
        );
        drop(rows);
        candidates.extend(
            snapshots::candidates(guests.views.borrow().as_deref())
                .into_iter()
                .map(SlowRequest::Snapshots),
        );
        let mut requests = select_due(candidates, &cadence, &schedule, Instant::now());
        if data.not_backed_up_denied {
            requests.retain(|r| *r != SlowRequest::NotBackedUp);
        }
        requests.extend(
            logs_due
                .iter()
                .map(|(node, upid, _)| SlowRequest::BackupLog {
                    node: node.clone(),
                    upid: upid.clone(),
                }),
        );
        if only_backups {
            requests.retain(|r| {
                matches!(
                    r,
                    SlowRequest::StorageContent { .. } | SlowRequest::BackupLog { .. }
                )
            });
        }
        if let Some(read) = only_snapshots.take() {
            requests = vec![SlowRequest::Snapshots(read)];
        }
        let reads_backups = requests
            .iter()
            .any(|r| matches!(r, SlowRequest::StorageContent { .. }));
        // Spread the requests over half the interval: never a burst of N at once. The
        // first round after start goes at a quicker pace (still one request at a time), so
        // disks, pools and backups are in Home Assistant within seconds of a (re)start,
        // not after a whole spread-out round.
        let spread = (interval / (2 * requests.len().max(1) as u32)).min(Duration::from_secs(2));
        let spacing = if only_backups {
            Duration::from_millis(100)
        } else if first_round {
            spread.min(FIRST_ROUND_SPACING)
        } else {
            spread
        };
        // The first round sends what it learned before its guest details (a snapshot list
        // per guest, ~50 requests at 5,000 guests, after every other request): disks,
        // pools and backups are not held back by them (issue 10: 8.8 s after a start,
        // not 16.3 s, at 10x5000).
        let mut early_news = std::mem::take(&mut first_round);
        // … and first of all, what its health requests said: the guests' discovery is
        // waiting for it.
        let mut health_news = early_news;
        let mut backups: HashMap<u32, NewestBackup> = HashMap::new();
        let mut backups_complete = true;
        let mut backups_kept = false;
        for (i, request) in requests.iter().enumerate() {
            if health_news && !request.is_cluster_health() {
                health_news = false;
                data.health.pending = false;
                send_news(&out, &data);
            }
            if early_news && matches!(request, SlowRequest::Snapshots(_)) {
                early_news = false;
                keep_backups(
                    &mut data,
                    std::mem::take(&mut backups),
                    backups_complete && reads_backups,
                );
                backups_kept = true;
                send_news(&out, &data);
            }
            if i > 0 {
                let wake = Instant::now() + spacing;
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep_until(wake) => break,
                        // A snapshot command ended: its guest's list is read between two
                        // requests of the round, not after the whole round.
                        Some(vmid) = guests.reread.recv() => {
                            snapshots::reread(&client, &guests, vmid, &mut data, &out).await;
                        }
                    }
                }
            }
            schedule.attempted(request, Instant::now());
            let done = tokio::select! {
                _ = shutdown.cancelled() => return,
                done = run_request(&client, request, &mut data, &mut backups, &mut health) => done,
            };
            if let SlowRequest::BackupLog { upid, .. } = request {
                // Each log is read once; a failed read is tried again a few times.
                let failed = done.is_err();
                logs_due.retain_mut(|(_, due, left)| {
                    if due != upid {
                        return true;
                    }
                    *left = left.saturating_sub(1);
                    failed && *left > 0
                });
            }
            if let Err(err) = done {
                debug!(?request, error = %err, "slow-lane request failed");
                if matches!(request, SlowRequest::StorageContent { .. }) {
                    backups_complete = false;
                }
            }
        }
        if !backups_kept {
            keep_backups(&mut data, backups, backups_complete && reads_backups);
        }
        // (a first round of health requests only)
        data.health.pending = false;
        data.first_round_done = true;
        snapshots::forget_gone(&mut data, guests.views.borrow().as_deref());
        send_news(&out, &data);
        schedule.forget_older_than(FORGET_AFTER.max(interval * 4), Instant::now());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(round_start + interval) => {
                only_backups = false;
                round_start = Instant::now();
            }
            // A backup just finished: read the backup storages now so `last_backup`
            // follows at once; the regular round keeps its schedule.
            _ = reread.notified() => only_backups = true,
            // A snapshot command ended: read that guest's list now.
            Some(vmid) = guests.reread.recv() => {
                only_snapshots = snapshots::for_guest(guests.views.borrow().as_deref(), vmid);
            }
        }
    }
}

/// How often a finished vzdump task's log is tried before it is given up.
const LOG_ATTEMPTS: u8 = 3;

/// The pause between two requests of the first round after start.
const FIRST_ROUND_SPACING: Duration = Duration::from_millis(150);

/// A schedule entry not attempted for this long is dropped (its node or guest is gone;
/// longer than any detail's cadence).
const FORGET_AFTER: Duration = Duration::from_secs(6 * 3600);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum SlowRequest {
    Version,
    ClusterStatus,
    NodeStatus(String),
    StorageContent {
        node: String,
        storage: String,
    },
    /// Guests in no backup job (issue 12); needs `Sys.Audit` on `/`.
    NotBackedUp,
    /// The node's storage list: Proxmox's own `avail` (issue 12).
    NodeStorage(String),
    /// The log of a finished vzdump task, read once for the per-guest verdicts.
    BackupLog {
        node: String,
        upid: String,
    },
    /// Cluster health (`cluster_health`): probed, then skipped while absent.
    CephStatus,
    HaStatus,
    ReplicationConfig,
    ReplicationStatus(String),
    /// One guest's snapshot list (per guest, every `poll.snapshots_interval`).
    Snapshots(SnapshotRead),
    /// A node-health detail (disks, ZFS, APT, certificate): see `node_health`.
    Health(HealthRequest),
}

impl SlowRequest {
    /// The least time between two runs; zero = every round.
    fn every(&self, cadence: &Cadence) -> Duration {
        match self {
            SlowRequest::Snapshots(_) => cadence.snapshots,
            SlowRequest::Version
            | SlowRequest::ClusterStatus
            | SlowRequest::NodeStatus(_)
            | SlowRequest::StorageContent { .. }
            | SlowRequest::NotBackedUp
            | SlowRequest::BackupLog { .. } => Duration::ZERO,
            // Only the reserved space is taken from it, which hardly ever changes.
            SlowRequest::NodeStorage(_) => Duration::from_secs(15 * 60),
            // Every round while present; `cluster_health` plans them only then.
            SlowRequest::CephStatus
            | SlowRequest::HaStatus
            | SlowRequest::ReplicationConfig
            | SlowRequest::ReplicationStatus(_) => Duration::ZERO,
            SlowRequest::Health(request) => request.every(&cadence.health),
        }
    }

    /// One of `cluster_health`'s requests.
    fn is_cluster_health(&self) -> bool {
        matches!(
            self,
            SlowRequest::CephStatus
                | SlowRequest::HaStatus
                | SlowRequest::ReplicationConfig
                | SlowRequest::ReplicationStatus(_)
        )
    }

    fn budget(&self) -> Budget<'_> {
        match self {
            SlowRequest::Snapshots(_) => Budget::Guest,
            SlowRequest::Version
            | SlowRequest::ClusterStatus
            | SlowRequest::NodeStatus(_)
            | SlowRequest::StorageContent { .. }
            | SlowRequest::NotBackedUp
            | SlowRequest::BackupLog { .. } => Budget::Base,
            SlowRequest::NodeStorage(node) => Budget::Node(node),
            SlowRequest::CephStatus | SlowRequest::HaStatus | SlowRequest::ReplicationConfig => {
                Budget::Base
            }
            SlowRequest::ReplicationStatus(node) => Budget::Node(node),
            SlowRequest::Health(request) => Budget::Node(&request.node),
        }
    }
}

/// The requests of this round: every base request, and the due details, the most overdue
/// first, within the caps of `cadence`. The order of the base requests is kept.
fn select_due(
    candidates: Vec<SlowRequest>,
    cadence: &Cadence,
    schedule: &Schedule,
    now: Instant,
) -> Vec<SlowRequest> {
    let mut base = Vec::new();
    let mut details = Vec::new();
    for request in candidates {
        if request.budget() == Budget::Base {
            base.push(request);
        } else if let Some(late) = schedule.overdue(&request, request.every(cadence), now) {
            details.push((late, request));
        }
    }
    // Most overdue first; the sort is stable, so equals keep the plan's order.
    details.sort_by_key(|d| std::cmp::Reverse(d.0));
    let mut per_node: HashMap<String, usize> = HashMap::new();
    let mut guests = 0usize;
    for (_, request) in details {
        let allowed = match request.budget() {
            Budget::Base => true,
            Budget::Node(node) => {
                let used = per_node.entry(node.to_string()).or_default();
                *used += 1;
                *used <= cadence.node_extras
            }
            Budget::Guest => {
                guests += 1;
                guests <= cadence.guest_extras
            }
        };
        if allowed {
            base.push(request);
        }
    }
    base
}

/// Keeps what the round's storage content reads found: every backup when each backup
/// storage was read (`complete`), else merged into the older times (a storage that could
/// not be read keeps its backups' times).
fn keep_backups(data: &mut SlowData, backups: HashMap<u32, NewestBackup>, complete: bool) {
    if complete {
        data.newest_backup = Arc::new(backups);
        data.backups_read = true;
    } else if !backups.is_empty() {
        let kept = Arc::make_mut(&mut data.newest_backup);
        for (vmid, newest) in backups {
            kept.entry(vmid).or_default().merge(newest);
        }
    }
}

/// Sends `data` if it differs from what was sent last. Only news is sent: each send makes
/// the poller rebuild the view of the whole cluster and the publisher compare every
/// object, and most rounds of a quiet cluster learn nothing new.
fn send_news(out: &watch::Sender<Arc<SlowData>>, data: &SlowData) {
    let sent = out.borrow().clone();
    if *sent != *data {
        let _ = out.send(Arc::new(data.clone()));
    }
}

/// Which slow-lane requests one round makes: version, cluster status, each online
/// node's status, and the content of each backup storage (a shared storage once).
fn plan(rows: &[Resource]) -> Vec<SlowRequest> {
    let online: Vec<&str> = rows
        .iter()
        .filter(|r| r.kind == ResourceKind::Node && r.status.as_deref() == Some("online"))
        .filter_map(|r| r.node.as_deref())
        .collect();
    let mut requests = vec![
        SlowRequest::Version,
        SlowRequest::ClusterStatus,
        SlowRequest::NotBackedUp,
    ];
    requests.extend(
        online
            .iter()
            .map(|n| SlowRequest::NodeStatus(n.to_string())),
    );
    requests.extend(
        online
            .iter()
            .map(|n| SlowRequest::NodeStorage(n.to_string())),
    );
    let mut shared_done = std::collections::HashSet::new();
    for row in rows.iter().filter(|r| r.kind == ResourceKind::Storage) {
        let (Some(node), Some(storage)) = (row.node.as_deref(), row.storage.as_deref()) else {
            continue;
        };
        let holds_backups = row
            .content
            .as_deref()
            .is_some_and(|c| c.split(',').any(|x| x == "backup"));
        if !holds_backups || row.status.as_deref() != Some("available") || !online.contains(&node) {
            continue;
        }
        if row.shared && !shared_done.insert(storage.to_string()) {
            continue;
        }
        requests.push(SlowRequest::StorageContent {
            node: node.to_string(),
            storage: storage.to_string(),
        });
    }
    requests
}

async fn run_request(
    client: &PveClient,
    request: &SlowRequest,
    data: &mut SlowData,
    backups: &mut HashMap<u32, NewestBackup>,
    health: &mut HealthProbes,
) -> Result<(), PveError> {
    match request {
        SlowRequest::Version => {
            data.pve_version = client.version().await?.version;
        }
        SlowRequest::ClusterStatus => {
            let rows = client.cluster_status().await?;
            let cluster = rows.iter().find(|r| r.kind == ClusterStatusKind::Cluster);
            data.cluster_name = cluster.and_then(|r| r.name.clone());
            // A standalone host has no cluster row and is always quorate.
            data.quorate = Some(cluster.and_then(|r| r.quorate).unwrap_or(true));
        }
        SlowRequest::NodeStatus(node) => {
            let status = client.node_status(node).await?;
            data.node_status.insert(node.clone(), status);
        }
        SlowRequest::Snapshots(read) => snapshots::read(client, read, data).await?,
        SlowRequest::StorageContent { node, storage } => {
            for item in client
                .storage_content(node, storage, Some("backup"))
                .await?
            {
                if let (Some(vmid), Some(ctime)) = (item.vmid, item.ctime) {
                    backups.entry(vmid).or_default().merge(NewestBackup {
                        ctime,
                        size: item.size,
                        verification: item.verification.and_then(|v| v.state),
                    });
                }
            }
        }
        SlowRequest::NodeStorage(node) => {
            data.storage_reserve.retain(|(n, _), _| n != node);
            for row in client.node_storage(node).await? {
                if let (Some(storage), Some(total), Some(used), Some(avail)) =
                    (row.storage, row.total, row.used, row.avail)
                {
                    let reserve = total.saturating_sub(used).saturating_sub(avail);
                    data.storage_reserve
                        .insert((node.clone(), storage), reserve);
                }
            }
        }
        SlowRequest::NotBackedUp => match client.not_backed_up().await {
            Ok(rows) => {
                data.not_backed_up = Some(rows.iter().filter_map(|r| r.vmid).collect());
            }
            Err(err) => {
                if matches!(err, PveError::Api { status: 403, .. }) {
                    // Not asked again until a restart: the answer would stay the same.
                    data.not_backed_up_denied = true;
                    data.not_backed_up = None;
                }
                return Err(err);
            }
        },
        SlowRequest::BackupLog { upid, .. } => {
            super::backup_log::read_verdicts(client, upid, data).await?;
        }
        SlowRequest::CephStatus
        | SlowRequest::HaStatus
        | SlowRequest::ReplicationConfig
        | SlowRequest::ReplicationStatus(_) => {
            health.run(client, request, &mut data.health).await?;
        }
        SlowRequest::Health(request) => node_health::run(client, request, data).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_never_run_is_due_and_the_most_overdue() {
        let schedule = Schedule::default();
        let now = Instant::now();
        let request = SlowRequest::NodeStatus("pve".into());
        assert_eq!(
            schedule.overdue(&request, Duration::from_secs(900), now),
            Some(Duration::MAX)
        );
    }

    #[test]
    fn a_request_with_a_cadence_waits_for_it_after_an_attempt() {
        let mut schedule = Schedule::default();
        let start = Instant::now();
        let request = SlowRequest::NodeStatus("pve".into());
        let every = Duration::from_secs(900);
        schedule.attempted(&request, start);
        assert_eq!(
            schedule.overdue(&request, every, start + Duration::from_secs(60)),
            None
        );
        assert_eq!(
            schedule.overdue(&request, every, start + Duration::from_secs(960)),
            Some(Duration::from_secs(60))
        );
        // Every round: always due.
        assert_eq!(
            schedule.overdue(&request, Duration::ZERO, start),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn the_schedule_forgets_requests_not_attempted_for_long() {
        let mut schedule = Schedule::default();
        let start = Instant::now();
        schedule.attempted(&SlowRequest::NodeStatus("gone".into()), start);
        schedule.attempted(
            &SlowRequest::NodeStatus("here".into()),
            start + Duration::from_secs(7000),
        );
        schedule.forget_older_than(Duration::from_secs(3600), start + Duration::from_secs(7200));
        assert_eq!(schedule.last.len(), 1);
        assert!(schedule
            .last
            .contains_key(&SlowRequest::NodeStatus("here".into())));
    }

    #[test]
    fn snapshot_reads_are_per_guest_capped_per_round_and_wait_for_their_interval() {
        let read = |vmid| {
            SlowRequest::Snapshots(SnapshotRead {
                node: "pve1".into(),
                kind: crate::pve::GuestKind::Qemu,
                vmid,
            })
        };
        let cadence = Cadence::default();
        let mut candidates = vec![SlowRequest::Version];
        candidates.extend((100..5100).map(read));
        let now = Instant::now();
        let mut schedule = Schedule::default();
        let first = select_due(candidates.clone(), &cadence, &schedule, now);
        assert_eq!(
            first.len(),
            1 + cadence.guest_extras,
            "base + the per-guest cap"
        );
        for r in &first {
            schedule.attempted(r, now);
        }
        // The next round takes the next 50, not the same ones again.
        let later = now + Duration::from_secs(60);
        let second = select_due(candidates.clone(), &cadence, &schedule, later);
        assert_eq!(second.len(), 1 + cadence.guest_extras);
        assert!(second[1..].iter().all(|r| !first.contains(r)));
        // A guest read is due again only after `poll.snapshots_interval`.
        let only = vec![read(100)];
        let mut schedule = Schedule::default();
        schedule.attempted(&read(100), now);
        assert!(select_due(only.clone(), &cadence, &schedule, later).is_empty());
        let due = now + cadence.snapshots + Duration::from_secs(1);
        assert_eq!(select_due(only, &cadence, &schedule, due).len(), 1);
    }

    #[test]
    fn base_requests_are_all_selected_in_plan_order() {
        let candidates = vec![
            SlowRequest::Version,
            SlowRequest::ClusterStatus,
            SlowRequest::NodeStatus("a".into()),
            SlowRequest::NodeStatus("b".into()),
        ];
        let selected = select_due(
            candidates.clone(),
            &Cadence::default(),
            &Schedule::default(),
            Instant::now(),
        );
        assert_eq!(selected, candidates);
    }
}
