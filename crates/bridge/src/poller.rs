//! The poller of one cluster: two lanes, so that a slow node can never delay the
//! cluster-wide state.
//!
//! - Fast lane: one `GET /cluster/resources` per `poll.interval` gives every guest,
//!   node and storage state at once, whatever the cluster size. A refresh request (after
//!   a command, or from a script) runs it at once; refreshes that queued up meanwhile
//!   share that one poll.
//! - Slow lane: every `poll.slow_interval`, the details only per-node endpoints have
//!   (node status, backups in storage content, version, cluster status), one request at
//!   a time and spread over the interval, skipping nodes that are offline (their proxied
//!   requests hang up to 30 s before a 595). Its results are merged into the next views.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

mod agent;
mod backup_log;
mod cluster_health;
mod node_health;
mod slow;
mod snapshots;
mod tasks;

use agent::agent_lane;
pub use agent::AgentCadence;
pub use cluster_health::check_lines as cluster_health_check;
pub use node_health::HealthCadence;
pub use slow::Cadence;
use slow::{slow_lane, SlowLane};

use crate::model::{
    AgentData, ClusterView, GuestState, RateMemory, ReportRules, RowAdded, RowMemo, SlowData,
    TaskFacts, ViewBuilder,
};
use crate::publisher::PublisherMsg;
use crate::pve::{PveClient, PveError, Resource, ResourceKind};

/// Asks a cluster's poller for an immediate fast poll (a command's task ended, or a
/// `bridge/request/refresh`).
#[derive(Clone, Debug, Default)]
pub struct Refresh {
    /// A guest's status read from `status/current` right after its task ended: the
    /// cluster-wide list can lag ~10 s behind on a real Proxmox.
    pub status_override: Option<(u32, String)>,
    /// Re-read backup storage content (a backup just finished).
    pub reread_backups: bool,
    /// Re-read this guest's snapshot list now (a snapshot command just ended).
    pub reread_snapshots: Option<u32>,
}

/// Everything one cluster's poller needs.
pub struct ClusterPoller {
    pub id: String,
    pub client: PveClient,
    pub console_url: String,
    pub interval: Duration,
    pub slow_interval: Duration,
    /// How often the slow lane's detail requests run, and how many a round may add.
    pub cadence: Cadence,
    /// The agent lane's cadence (`poll.agent_interval`, `poll.agent_max_per_round`).
    pub agent: AgentCadence,
    /// The least time between two polls that refreshes may cause
    /// ([`MIN_REFRESH_SPACING`] in the bridge; tests set their own).
    pub refresh_spacing: Duration,
    pub publisher: mpsc::Sender<PublisherMsg>,
    /// Poll now (after a command, or a script's refresh request).
    pub refresh: mpsc::Receiver<Refresh>,
    /// Every view also goes here, for the command handler's validation.
    pub views: watch::Sender<Option<Arc<ClusterView>>>,
    /// Polls and their duration, for `/metrics` and `/healthz`.
    pub stats: Arc<crate::http::PollStats>,
    /// When a state changed enough to be reported again (config `[reporting]`).
    pub reporting: ReportRules,
    /// `GET /cluster/tasks` at most this often (`poll.tasks_interval`; see `poller/tasks.rs`).
    pub tasks_interval: Duration,
    /// The sending side of `refresh`: a guest whose task (of any origin) ended is
    /// refreshed through it, like after a command.
    pub refresh_self: mpsc::Sender<Refresh>,
    /// The agent lane's latest knowledge, merged into every view (starts empty).
    pub agent_data: Arc<AgentData>,
}

/// How long after a command asked for a backup or snapshot reread the slow lane's news
/// is applied at once rather than with the next poll: a backup-only round reads every
/// backup storage (100 ms apart) and the lane may be in the middle of a scheduled request.
const REREAD_NEWS: Duration = Duration::from_secs(120);

/// How long a status read from `status/current` after a task overrides the cluster-wide
/// list, which can lag ~10 s behind on a real Proxmox.
const OVERRIDE_TTL: Duration = Duration::from_secs(20);

/// The least time between two polls that refreshes may cause. In a burst of commands a
/// task ends every few ms, and a poll for each would have Proxmox render the whole
/// cluster list again and again (at 5,000 guests ~15 ms of the simulator's CPU and ~20 ms
/// of ours per answer; pveproxy has 3 workers). Within this time the view is rebuilt from the last
/// answer with the statuses read after the tasks (`status/current`, which is fresher
/// than the cluster list anyway), and the real poll follows when the time is up.
pub const MIN_REFRESH_SPACING: Duration = Duration::from_secs(1);

/// The least time between two views rebuilt for refreshes within the spacing. In a burst
/// of commands a task ends every few ms, and each rebuild is a whole view and a
/// publisher pass (at 10 nodes / 5,000 guests ~20 ms of CPU, and a new view's worth of
/// memory churned while the commands allocate theirs): 200 commands one every 50 ms made
/// ~200 rebuilds in 10 s. A refresh within this time of the last rebuild waits for the
/// next one, with every other refresh that comes meanwhile; a lone command's refresh is
/// rebuilt at once.
pub const REBUILD_GAP: Duration = Duration::from_millis(200);

/// Backoff while Proxmox keeps failing: the interval doubles up to 8x (max 2 min), so a
/// down host is not hammered, and the first success restores the normal pace.
fn backoff_interval(base: Duration, failures: u32) -> Duration {
    (base * 2u32.pow(failures.min(3))).min(Duration::from_secs(120).max(base))
}

impl ClusterPoller {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let (slow_tx, mut slow_rx) = watch::channel(Arc::new(SlowData::at_start()));
        let (resources_tx, resources_rx) = watch::channel(Arc::new(Vec::<Resource>::new()));
        let reread = Arc::new(tokio::sync::Notify::new());
        // Finished vzdump tasks (node, UPID) whose log the slow lane reads once.
        let (backup_logs, backup_logs_rx) = mpsc::channel(256);
        let (snapshots_tx, snapshots_rx) = mpsc::channel::<u32>(64);
        let lane = SlowLane {
            client: self.client.clone(),
            interval: self.slow_interval,
            cadence: self.cadence.clone(),
            resources: resources_rx,
            out: slow_tx,
            reread: reread.clone(),
            backup_logs: backup_logs_rx,
            guests: snapshots::GuestFeed {
                views: self.views.subscribe(),
                reread: snapshots_rx,
            },
        };
        let slow_lane = tokio::spawn(slow_lane(lane, shutdown.clone()));
        // The agent lane: its own task, so slow guest agents never delay the other lanes.
        let (agent_tx, mut agent_rx) = watch::channel(Arc::new(AgentData::default()));
        let agent_lane = (self.agent.max_per_round > 0).then(|| {
            tokio::spawn(agent_lane(
                self.client.clone(),
                self.agent.clone(),
                self.slow_interval,
                self.views.subscribe(),
                agent_tx,
                shutdown.clone(),
            ))
        });
        let mut overrides: HashMap<u32, (String, Instant)> = HashMap::new();
        let mut tasks = tasks::TaskWatch::new(self.tasks_interval, self.client.token_id());

        let clock = PollClock::start();
        let mut rates = RateMemory::default();
        // The last answer's rows: a guest row that did not change is not decoded again.
        let mut memo = RowMemo::default();
        let mut failures: u32 = 0;
        // The last answer applied, undecoded: a view is rebuilt from it when the slow lane
        // brings news or a refresh comes within `refresh_spacing` of the poll. 1.6 MB at
        // 5,000 guests, where the decoded rows would be ~5 MB.
        let mut last_body: Option<Vec<u8>> = None;
        let mut next_poll = tokio::time::Instant::now();
        // When the last request for `/cluster/resources` went out.
        let mut last_poll: Option<tokio::time::Instant> = None;
        // The last answer lost (almost) everything and was not applied (see `sudden_loss`).
        let mut loss_held = false;
        // Until when slow-lane news is applied at once: a command asked for a backup or
        // snapshot reread, and its user waits for that answer (see `slow_rx` below).
        let mut reread_until: Option<tokio::time::Instant> = None;

        // When a view was last rebuilt for refreshes, and when the next such rebuild is
        // due: refreshes within `REBUILD_GAP` of the last one wait for it, together.
        let mut last_rebuild: Option<tokio::time::Instant> = None;
        let mut rebuild_due: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(next_poll) => {}
                // (A poll due at the same time goes first and carries the statuses itself.)
                _ = tokio::time::sleep_until(rebuild_due.unwrap_or(next_poll)), if rebuild_due.is_some() => {
                    rebuild_due = None;
                    if let Some(body) = &last_body {
                        let now = clock.now();
                        if !self.rebuild(body, &mut slow_rx, (&mut rates, &mut memo), &mut overrides, &tasks.facts, now).await { break; }
                        last_rebuild = Some(tokio::time::Instant::now());
                    }
                    continue;
                }
                Some(refresh) = self.refresh.recv() => {
                    // Every refresh queued meanwhile is served by this one poll: in a
                    // burst of commands, one full poll each would keep the CPU busy with
                    // polls that all return the same cluster.
                    let mut coalesced = 0usize;
                    let mut next = Some(refresh);
                    while let Some(refresh) = next {
                        debug!(cluster = %self.id, ?refresh, "refresh requested");
                        if let Some((vmid, status)) = refresh.status_override {
                            overrides.insert(vmid, (status, Instant::now() + OVERRIDE_TTL));
                        }
                        if refresh.reread_backups {
                            reread.notify_one();
                            reread_until = Some(tokio::time::Instant::now() + REREAD_NEWS);
                        }
                        if let Some(vmid) = refresh.reread_snapshots {
                            let _ = snapshots_tx.try_send(vmid);
                            reread_until = Some(tokio::time::Instant::now() + REREAD_NEWS);
                        }
                        coalesced += 1;
                        next = self.refresh.try_recv().ok();
                    }
                    if coalesced > 1 {
                        debug!(cluster = %self.id, coalesced, "refreshes served by one poll");
                    }
                    // Proxmox is failing: the backoff decides when to ask again. A refresh
                    // (a script's request, every task end) must not turn an outage into a
                    // flood of `/cluster/resources`.
                    if failures > 0 {
                        debug!(cluster = %self.id, "refresh during an outage: waiting for the backoff");
                        continue;
                    }
                    // Polled less than `refresh_spacing` ago: publish the statuses read
                    // after the tasks now, from the last answer (or with the next rebuild,
                    // `REBUILD_GAP` after the last), and poll when the spacing is up.
                    // While an answer is held back (`sudden_loss`) there is no answer to
                    // rebuild from: the statuses wait for that poll.
                    let spaced_until = last_poll.map(|at| at + self.refresh_spacing);
                    if let Some(until) = spaced_until {
                        if tokio::time::Instant::now() < until {
                            let gap_end = last_rebuild.map(|at| at + REBUILD_GAP);
                            match (&last_body, gap_end) {
                                (Some(_), Some(end)) if tokio::time::Instant::now() < end => {
                                    rebuild_due.get_or_insert(end);
                                }
                                (Some(body), _) => {
                                    // The gap is over, but its timer may not have fired
                                    // yet (the timer wheel ticks in milliseconds, later
                                    // under load): this view carries what the pending
                                    // rebuild would have, so that one is not built too.
                                    rebuild_due = None;
                                    let now = clock.now();
                                    if !self.rebuild(body, &mut slow_rx, (&mut rates, &mut memo), &mut overrides, &tasks.facts, now).await { break; }
                                    last_rebuild = Some(tokio::time::Instant::now());
                                }
                                (None, _) => {}
                            }
                            next_poll = next_poll.min(until);
                            continue;
                        }
                    }
                }
                Ok(()) = slow_rx.changed() => {
                    // New slow-lane details. A scheduled round's news (disks, pools,
                    // updates, backups read on the lane's own cadence of minutes) goes
                    // with the next poll, at most one `interval` later: rebuilding the
                    // whole view for it at once cost a second view and publisher pass per
                    // round (issue 10). A reread a command asked for is applied at once,
                    // from the last answer, with no extra request. The first round's
                    // news before its end (its health requests, then disks, pools and
                    // backups) is applied at once too: it is in Home Assistant within
                    // seconds of a (re)start, not a poll later, and guests' discovery
                    // waits for the first (`HealthData::pending`).
                    let urgent = !slow_rx.borrow().first_round_done
                        || reread_until.is_some_and(|until| tokio::time::Instant::now() < until);
                    match &last_body {
                        Some(body) if urgent => {
                            let now = clock.now();
                            if !self.rebuild(body, &mut slow_rx, (&mut rates, &mut memo), &mut overrides, &tasks.facts, now).await { break; }
                        }
                        // Seen: the next poll reads the latest value itself.
                        _ => { slow_rx.borrow_and_update(); }
                    }
                    continue;
                }
                Ok(()) = agent_rx.changed() => {
                    // New agent data (the agent lane's round): kept for the next poll,
                    // like a scheduled slow round's news.
                    self.agent_data = agent_rx.borrow_and_update().clone();
                    continue;
                }
            }
            // The task list first (when due and allowed): this poll's view then carries
            // what it says, and a task that just ended is refreshed right after it.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tasks.poll(&self.client, clock.now() as u64) => {}
            }
            // The last answer goes before the next one arrives, so the bridge never holds
            // two (1.6 MB each at 5,000 guests): a failed poll drops it anyway, and an answer
            // held back by `sudden_loss` is confirmed or replaced by the next poll.
            last_body = None;
            // This poll's view carries every status a pending rebuild would have.
            rebuild_due = None;
            last_poll = Some(tokio::time::Instant::now());
            let poll_started = std::time::Instant::now();
            let polled = tokio::select! {
                _ = shutdown.cancelled() => break,
                polled = self.client.cluster_resources_body() => polled,
            };
            let slow = slow_rx.borrow_and_update().clone();
            let previous = self.views.borrow().clone();
            let polled = polled.and_then(|body| {
                let now = clock.now();
                let built = self.view_from(
                    &body,
                    &slow,
                    (&mut rates, &mut memo),
                    &tasks.facts,
                    now,
                    previous.as_deref(),
                )?;
                Ok((body, built))
            });
            let before = previous.as_deref().map(Inventory::of);
            drop(previous);
            self.stats.polled(polled.is_ok(), poll_started.elapsed());
            match polled {
                Ok((body, (mut view, plan_rows))) => {
                    if failures > 0 {
                        info!(cluster = %self.id, "Proxmox answers again");
                    }
                    failures = 0;
                    match sudden_loss(before, Inventory::of(&view)) {
                        Some(loss) if !loss_held => {
                            info!(cluster = %self.id, %loss, "answer holds back: waiting for the next poll to confirm before removing anything");
                            loss_held = true;
                            next_poll = tokio::time::Instant::now() + self.interval;
                            continue;
                        }
                        Some(loss) => {
                            warn!(cluster = %self.id, %loss, "confirmed by a second poll: removing what Proxmox no longer lists");
                        }
                        None => {}
                    }
                    loss_held = false;
                    let _ = resources_tx.send(Arc::new(plan_rows));
                    apply_overrides(&mut view, &mut overrides);
                    last_body = Some(body);
                    if !self.emit(view).await {
                        break;
                    }
                    if !self.after_tasks(&mut tasks, &backup_logs).await {
                        break;
                    }
                    next_poll = tokio::time::Instant::now() + self.interval;
                }
                Err(err) => {
                    // The publisher logs the transition to offline once, with the reason;
                    // repeating it on every poll would flood the log of a long outage.
                    debug!(cluster = %self.id, error = %err, failures, "polling Proxmox failed");
                    // `last_body` went before the request: until Proxmox answers again, no
                    // view may be rebuilt from the old answer (it would mark everything
                    // reachable again).
                    failures = failures.saturating_add(1);
                    let msg = PublisherMsg::Unreachable {
                        cluster: self.id.clone(),
                        reason: err.to_string(),
                    };
                    if self.publisher.send(msg).await.is_err() {
                        break;
                    }
                    next_poll =
                        tokio::time::Instant::now() + backoff_interval(self.interval, failures);
                }
            }
        }
        slow_lane.abort();
        if let Some(lane) = agent_lane {
            lane.abort();
        }
    }

    /// Rebuilds the view from the last answer, without a request, with the latest
    /// slow-lane details and post-task statuses; false once the publisher is gone.
    async fn rebuild(
        &self,
        body: &[u8],
        slow_rx: &mut watch::Receiver<Arc<SlowData>>,
        memory: (&mut RateMemory, &mut RowMemo),
        overrides: &mut HashMap<u32, (String, Instant)>,
        facts: &TaskFacts,
        now: f64,
    ) -> bool {
        let slow = slow_rx.borrow_and_update().clone();
        let previous = self.views.borrow().clone();
        // This body was decoded before, so this cannot fail; if it did, the next poll
        // brings a fresh answer anyway.
        let Ok((mut view, _)) =
            self.view_from(body, &slow, memory, facts, now, previous.as_deref())
        else {
            return true;
        };
        drop(previous);
        apply_overrides(&mut view, overrides);
        self.emit(view).await
    }

    /// Decodes one `/cluster/resources` answer straight into a view, row by row, and
    /// returns it with the node and storage rows, which the slow lane plans from.
    /// Decodes only the guest rows that changed since the last answer (`RowMemo`), and
    /// does not scan an answer identical to the last one for its rows again.
    fn view_from(
        &self,
        body: &[u8],
        slow: &Arc<SlowData>,
        (rates, memo): (&mut RateMemory, &mut RowMemo),
        facts: &TaskFacts,
        now: f64,
        previous: Option<&ClusterView>,
    ) -> Result<(ClusterView, Vec<Resource>), PveError> {
        let mut builder = ViewBuilder::new(&self.id, &self.console_url, slow, rates, now, previous)
            .reporting(self.reporting)
            .tasks(facts)
            .agent(&self.agent_data)
            .memo(memo, slow, &self.agent_data);
        let mut plan_rows = Vec::new();
        // One HA-managed guest row tells the slow lane that HA is configured.
        let mut managed_sent = false;
        // Guest rows reused from the last answer, and read again.
        let mut guest_rows = [0usize; 2];
        builder.add_answer(body, |raw, added| {
            let read = !matches!(added, RowAdded::Reused(_));
            match added {
                RowAdded::Reused(guest) | RowAdded::Scanned(guest) => {
                    guest_rows[usize::from(read)] += 1;
                    if guest.hastate.is_some() && !managed_sent {
                        managed_sent = true;
                        plan_rows.push(raw.decode()?);
                    }
                }
                RowAdded::Decoded(row) => {
                    guest_rows[1] += usize::from(row.is_guest());
                    let managed = row.is_guest() && row.hastate.is_some() && !managed_sent;
                    managed_sent |= managed;
                    if managed || matches!(row.kind, ResourceKind::Node | ResourceKind::Storage) {
                        plan_rows.push(row);
                    }
                }
            }
            Ok(())
        })?;
        let [reused, read] = guest_rows;
        self.stats.guest_rows(reused, read);
        debug!(cluster = %self.id, guest_rows_reused = reused, guest_rows_read = read, "view built");
        Ok((builder.finish(), plan_rows))
    }

    /// After a poll's view went out: hands changed last tasks to the publisher and
    /// refreshes the guests whose task ended (their own `status/current`, read off the
    /// fast lane, as after a command); false once the publisher is gone.
    async fn after_tasks(
        &self,
        tasks: &mut tasks::TaskWatch,
        backup_logs: &mpsc::Sender<(String, String)>,
    ) -> bool {
        let Some(view) = self.views.borrow().clone() else {
            return true;
        };
        tasks.retain_guests(|vmid| view.guests.contains_key(&vmid));
        for (vmid, task) in tasks.take_unsent() {
            let Some(guest) = view.guests.get(&vmid) else {
                continue;
            };
            let msg = PublisherMsg::LastTask {
                cluster: self.id.clone(),
                kind: guest.kind,
                vmid,
                task,
            };
            if self.publisher.send(msg).await.is_err() {
                return false;
            }
        }
        let news = tasks.take_news();
        for (vmid, _) in news.ended.into_iter().take(tasks::MAX_REFRESHES_PER_READ) {
            let Some(guest) = view.guests.get(&vmid) else {
                continue;
            };
            let (client, refresh) = (self.client.clone(), self.refresh_self.clone());
            let (node, kind) = (guest.node.clone(), guest.kind);
            tokio::spawn(async move {
                if let Ok(status) = client.guest_status(&node, kind, vmid).await {
                    let _ = refresh.try_send(Refresh {
                        status_override: tasks::status_word(&status).map(|s| (vmid, s)),
                        ..Refresh::default()
                    });
                }
            });
        }
        for finished in &news.finished_backups {
            if backup_logs.try_send(finished.clone()).is_err() {
                debug!(cluster = %self.id, "backup log queue full: a verdict is skipped");
            }
        }
        if !news.finished_backups.is_empty() {
            // A backup of any origin finished: the slow lane reads the backup storages
            // and the task's log.
            let _ = self.refresh_self.try_send(Refresh {
                reread_backups: true,
                ..Refresh::default()
            });
        }
        true
    }

    /// Hands a view to the publisher and the command handler; false once the publisher is gone.
    async fn emit(&self, view: ClusterView) -> bool {
        let view = Arc::new(view);
        self.stats.viewed();
        let _ = self.views.send(Some(view.clone()));
        self.publisher.send(PublisherMsg::View(view)).await.is_ok()
    }
}

/// Poll times in Unix seconds that never go backwards: the wall clock read once at the
/// start, advanced by the monotonic clock (rates need steady deltas, `started` needs Unix
/// time; a wall-clock step while running moves `started` at most once).
struct PollClock {
    unix_start: f64,
    start: Instant,
}

impl PollClock {
    fn start() -> PollClock {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        PollClock {
            unix_start: unix.as_secs_f64(),
            start: Instant::now(),
        }
    }

    fn now(&self) -> f64 {
        self.unix_start + self.start.elapsed().as_secs_f64()
    }
}

/// How much a view holds, to tell a real change from an answer that lost everything.
#[derive(Clone, Copy, Debug)]
struct Inventory {
    nodes: usize,
    guests: usize,
}

impl Inventory {
    fn of(view: &ClusterView) -> Inventory {
        Inventory {
            nodes: view.nodes.len(),
            guests: view.guests.len(),
        }
    }
}

/// Why an answer looks like a momentary loss rather than the cluster as it is, if it
/// does. Proxmox answers `/cluster/resources` with an empty or thinned list while a
/// token's ACLs are being re-created (the rows are filtered silently by privilege), and
/// applying such an answer deletes every Home Assistant device and the user's
/// customisations. A cluster always has a node; a real loss of most guests at once is
/// rare and can wait one poll. So an answer with no node, or with less than half the
/// guests of the last one, is applied only when the next poll says the same.
fn sudden_loss(before: Option<Inventory>, now: Inventory) -> Option<String> {
    if now.nodes == 0 && before.is_none_or(|b| b.nodes > 0) {
        return Some("the answer lists no node".to_string());
    }
    let before = before?;
    if before.guests > 0 && now.guests * 2 < before.guests {
        return Some(format!(
            "the answer lists {} of {} guests",
            now.guests, before.guests
        ));
    }
    None
}

/// Applies fresh per-guest statuses read after a task, until they expire or the
/// cluster-wide list agrees.
fn apply_overrides(view: &mut ClusterView, overrides: &mut HashMap<u32, (String, Instant)>) {
    let now = Instant::now();
    overrides.retain(|vmid, (status, until)| {
        let Some(guest) = view.guests.get_mut(vmid) else {
            return false;
        };
        if *until < now || *guest.status == **status {
            return false;
        }
        // A new state, never the old one changed in place: it may be shared with the
        // previous view, and the row memory (`RowMemo`) knows states by address.
        let mut changed = GuestState::clone(guest);
        changed.status = status.as_str().into();
        *guest = Arc::new(changed);
        true
    });
    view.cluster.guests_running = view
        .guests
        .values()
        .filter(|g| &*g.status == "running")
        .count();
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod loss_tests {
    use super::{sudden_loss, Inventory};

    fn inv(nodes: usize, guests: usize) -> Inventory {
        Inventory { nodes, guests }
    }

    #[test]
    fn an_answer_without_nodes_or_with_most_guests_gone_is_a_sudden_loss() {
        assert!(sudden_loss(Some(inv(2, 10)), inv(0, 0)).is_some());
        assert!(sudden_loss(None, inv(0, 0)).is_some());
        assert!(sudden_loss(Some(inv(2, 10)), inv(2, 4)).is_some());
    }

    #[test]
    fn ordinary_changes_and_a_confirmed_loss_are_not() {
        assert!(sudden_loss(Some(inv(2, 10)), inv(2, 5)).is_none());
        assert!(sudden_loss(Some(inv(2, 2)), inv(2, 1)).is_none());
        assert!(sudden_loss(None, inv(1, 0)).is_none());
        // once applied, an empty cluster stays quiet
        assert!(sudden_loss(Some(inv(0, 0)), inv(0, 0)).is_none());
        assert!(sudden_loss(Some(inv(1, 0)), inv(1, 0)).is_none());
    }
}
