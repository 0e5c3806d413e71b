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

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::cluster_health::HealthProbes;
use crate::model::SlowData;
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
}

impl Default for Cadence {
    fn default() -> Self {
        Cadence {
            node_extras: 3,
            guest_extras: 50,
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

/// The slow lane of one cluster (see the module docs).
pub(super) async fn slow_lane(
    client: PveClient,
    interval: Duration,
    cadence: Cadence,
    mut resources: watch::Receiver<Arc<Vec<Resource>>>,
    out: watch::Sender<Arc<SlowData>>,
    reread: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
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
    let mut data = SlowData::default();
    let mut schedule = Schedule::default();
    let mut health = HealthProbes::default();
    let mut only_backups = false;
    let mut round_start = Instant::now();
    loop {
        // Plan from the node and storage rows of the latest answer (the fast lane sends
        // only those: the guest rows are thousands and not needed here).
        let rows = resources.borrow_and_update().clone();
        let mut candidates = plan(&rows);
        // Not in a backups-only round: the probes' hints would be used up unasked.
        if !only_backups {
            candidates.extend(health.requests(&rows, Instant::now()));
        }
        drop(rows);
        let mut requests = select_due(candidates, &cadence, &schedule, Instant::now());
        if only_backups {
            requests.retain(|r| matches!(r, SlowRequest::StorageContent { .. }));
        }
        // Spread the requests over half the interval: never a burst of N at once.
        let spacing = if only_backups {
            Duration::from_millis(100)
        } else {
            (interval / (2 * requests.len().max(1) as u32)).min(Duration::from_secs(2))
        };
        let mut backups: HashMap<u32, u64> = HashMap::new();
        let mut backups_complete = true;
        for (i, request) in requests.iter().enumerate() {
            if i > 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(spacing) => {}
                }
            }
            schedule.attempted(request, Instant::now());
            let done = tokio::select! {
                _ = shutdown.cancelled() => return,
                done = run_request(&client, request, &mut data, &mut backups, &mut health) => done,
            };
            if let Err(err) = done {
                debug!(?request, error = %err, "slow-lane request failed");
                if matches!(request, SlowRequest::StorageContent { .. }) {
                    backups_complete = false;
                }
            }
        }
        // Keep older backup times for storages we could not read this round.
        if backups_complete {
            data.last_backup = backups;
        } else {
            for (vmid, ctime) in backups {
                let entry = data.last_backup.entry(vmid).or_insert(ctime);
                *entry = (*entry).max(ctime);
            }
        }
        let _ = out.send(Arc::new(data.clone()));
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
        }
    }
}

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
    /// Cluster health (`cluster_health`): probed, then skipped while absent.
    CephStatus,
    HaStatus,
    ReplicationConfig,
    ReplicationStatus(String),
}

impl SlowRequest {
    /// The least time between two runs; zero = every round.
    fn every(&self, _cadence: &Cadence) -> Duration {
        match self {
            SlowRequest::Version
            | SlowRequest::ClusterStatus
            | SlowRequest::NodeStatus(_)
            | SlowRequest::StorageContent { .. } => Duration::ZERO,
            // Every round while present; `cluster_health` plans them only then.
            SlowRequest::CephStatus
            | SlowRequest::HaStatus
            | SlowRequest::ReplicationConfig
            | SlowRequest::ReplicationStatus(_) => Duration::ZERO,
        }
    }

    fn budget(&self) -> Budget<'_> {
        match self {
            SlowRequest::Version
            | SlowRequest::ClusterStatus
            | SlowRequest::NodeStatus(_)
            | SlowRequest::StorageContent { .. } => Budget::Base,
            SlowRequest::CephStatus | SlowRequest::HaStatus | SlowRequest::ReplicationConfig => {
                Budget::Base
            }
            SlowRequest::ReplicationStatus(node) => Budget::Node(node),
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

/// Which slow-lane requests one round makes: version, cluster status, each online
/// node's status, and the content of each backup storage (a shared storage once).
fn plan(rows: &[Resource]) -> Vec<SlowRequest> {
    let online: Vec<&str> = rows
        .iter()
        .filter(|r| r.kind == ResourceKind::Node && r.status.as_deref() == Some("online"))
        .filter_map(|r| r.node.as_deref())
        .collect();
    let mut requests = vec![SlowRequest::Version, SlowRequest::ClusterStatus];
    requests.extend(
        online
            .iter()
            .map(|n| SlowRequest::NodeStatus(n.to_string())),
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
    backups: &mut HashMap<u32, u64>,
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
        SlowRequest::StorageContent { node, storage } => {
            for item in client
                .storage_content(node, storage, Some("backup"))
                .await?
            {
                if let (Some(vmid), Some(ctime)) = (item.vmid, item.ctime) {
                    let entry = backups.entry(vmid).or_insert(ctime);
                    *entry = (*entry).max(ctime);
                }
            }
        }
        SlowRequest::CephStatus
        | SlowRequest::HaStatus
        | SlowRequest::ReplicationConfig
        | SlowRequest::ReplicationStatus(_) => {
            health.run(client, request, &mut data.health).await?;
        }
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
