//! One task per accepted job: POST (or pick up an earlier run's task), follow the
//! Proxmox task to its end, ask the poller for a refresh, and report every step.
//!
//! The runner owns its guests' [`BusyGuard`]s, so the guests take commands again as soon
//! as it ends, however it ends. It is the one follower of its task ([`FollowGuard`]):
//! guests of the same task found later (a node backup resumed after a restart) join it.
//!
//! Every follow ends: the task's own end, Proxmox saying it does not know the task
//! (`failed` at once), the node unanswering for [`NODE_LOSS_LIMIT`], or the deadline.

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::busy::{BusyGuard, BusySet, FollowGuard, Joiner};
use super::links::{ClusterHandle, Reporter};
use super::parse::{Action, Command};
use super::report::{unix_now, BackupLog, Phase, TaskReport};
use crate::config::BackupConfig;
use crate::poller::Refresh;
use crate::pve::{GuestKind, PveError, Upid, VzdumpStarted};

/// How long a runner in its POST may still take once the bridge stops: enough for
/// Proxmox's answer (the task may have started), short enough for service managers.
/// Past it the report stays `accepted`, and the next run looks the task up.
pub const POST_GRACE: Duration = Duration::from_secs(10);

/// How long the command side waits for its runners at shutdown: a POST's grace, then
/// the `running` report with its UPID.
pub const STOP_GRACE: Duration = Duration::from_secs(12);

/// How long a node may leave the task status unanswered before the follow ends
/// `failed`. A node reboot (kernel update) takes 1–5 min and pveproxy restarts take
/// seconds, so 10 min is beyond any planned outage, while the guest does not stay
/// `busy` for the 24 h of a backup's deadline. The task may still run; the error says so.
pub const NODE_LOSS_LIMIT: Duration = Duration::from_secs(10 * 60);

/// How far before the command's arrival a task found by lookup may have started
/// (the clocks of the bridge host and the node may differ).
const LOOKUP_SLACK_SECS: u64 = 120;

/// Where a bridge request wants its answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub name: String,
    pub transaction: Option<serde_json::Value>,
}

/// One guest a runner reports on.
#[derive(Clone, Debug)]
pub struct Target {
    pub kind: GuestKind,
    pub vmid: u32,
    pub report: TaskReport,
}

/// One accepted command: a lifecycle action on one guest, or one node's vzdump.
pub struct Job {
    pub cluster: String,
    pub node: String,
    pub command: Command,
    pub targets: Vec<Target>,
    pub reply: Option<Reply>,
    /// A task an earlier run started and did not see end: follow it, POST nothing.
    pub resume: Option<Resume>,
    /// The targets' busy slots, freed when the job is dropped.
    pub busy: Vec<BusyGuard>,
}

/// How a job picks up an earlier run's command instead of POSTing.
#[derive(Debug)]
pub enum Resume {
    /// Its report named the task: follow it (this runner is its one follower).
    Follow { upid: Upid, follow: FollowGuard },
    /// Its report was `accepted` without a UPID (the earlier run stopped during the
    /// POST): find the task in the node's task list, or conclude it never started.
    Lookup,
}

/// Why a job ended without a result from Proxmox's task.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The bridge is stopping. The task goes on in Proxmox; its retained report stays
    /// `running` with the UPID, and the next run picks it up.
    #[error("the bridge stopped while following the task")]
    Stopped,
    /// The POST failed: Proxmox's own words, with the HTTP status where there is one.
    #[error("{0}")]
    Proxmox(#[from] PveError),
    /// vzdump answered "OK" without a task: the guest is no longer on that node.
    #[error(
        "Proxmox started no backup: the guest is no longer on node {node} (vzdump answered \"OK\")"
    )]
    NothingStarted { node: String },
    /// The task outlived its deadline (15 min; 24 h for a backup).
    #[error("gave up following the task after {after:?}")]
    GaveUp { after: Duration },
    /// Proxmox answered that it does not know the task (expired from the node's task
    /// index, or never there): its outcome cannot be read.
    #[error("Proxmox no longer knows task {upid}: {reason}")]
    TaskUnknown { upid: String, reason: String },
    /// The node did not answer for [`NODE_LOSS_LIMIT`].
    #[error("node {node} has not answered for {} min ({reason}); the task may still be running there, its outcome is unknown", after.as_secs() / 60)]
    NodeLost {
        node: String,
        after: Duration,
        reason: String,
    },
    /// An earlier run stopped during its POST and the node's task list has no task for
    /// the command.
    #[error("the bridge stopped before this command reached Proxmox (no {action} task for {vmid} in node {node}'s task list since {since})")]
    NeverStarted {
        action: Action,
        vmid: u32,
        node: String,
        since: u64,
    },
    /// An earlier run stopped during its POST and the node's task list cannot be read.
    #[error("the bridge stopped while sending this command, and node {node}'s task list cannot be read ({reason}): whether it ran is unknown")]
    LookupFailed { node: String, reason: String },
}

/// What a failed task-status read means for the follow: keep trying, or end it.
fn judge(err: &PveError, upid: &Upid, failing_for: Duration) -> Option<RunError> {
    if let PveError::Api { status: 400, .. } = err {
        // `{"upid":"no such task"}`, or a UPID Proxmox cannot parse: final.
        return Some(RunError::TaskUnknown {
            upid: upid.to_string(),
            reason: err.to_string(),
        });
    }
    (failing_for >= NODE_LOSS_LIMIT).then(|| RunError::NodeLost {
        node: upid.node.clone(),
        after: failing_for,
        reason: err.to_string(),
    })
}

/// The Proxmox task types an action can start (HA-managed guests get `ha…` tasks).
fn task_types(action: Action) -> &'static [&'static str] {
    match action {
        Action::Start => &["qmstart", "vzstart", "hastart"],
        Action::Stop => &["qmstop", "vzstop", "hastop"],
        Action::Shutdown => &["qmshutdown", "vzshutdown", "hastop"],
        Action::Reboot => &["qmreboot", "vzreboot"],
        Action::Reset => &["qmreset"],
        Action::Suspend => &["qmpause", "qmsuspend", "vzsuspend"],
        Action::Hibernate => &["qmsuspend"],
        Action::Resume => &["qmresume", "vzresume"],
        Action::Backup => &["vzdump"],
        Action::Snapshot => &["qmsnapshot", "vzsnapshot"],
        Action::Rollback => &["qmrollback", "vzrollback"],
        Action::DeleteSnapshot => &["qmdelsnapshot", "vzdelsnapshot"],
    }
}

/// How long a task is followed before the bridge gives up on it.
fn deadline(action: Action) -> Duration {
    match action {
        // vzdump may wait up to 3 h for the node's lock, then run for hours.
        Action::Backup => Duration::from_secs(24 * 3600),
        // Saving a big VM's RAM, or removing snapshots of many disks, takes a while.
        Action::Snapshot | Action::Rollback | Action::DeleteSnapshot => Duration::from_secs(3600),
        _ => Duration::from_secs(15 * 60),
    }
}

/// What every runner shares.
pub struct Runner {
    pub reporter: Reporter,
    /// The guests' slots and the tasks followed, shared with the inbox.
    pub busy: BusySet,
    pub backup: BackupConfig,
    pub handle: ClusterHandle,
    pub shutdown: CancellationToken,
}

impl Runner {
    async fn publish(&self, cluster: &str, target: &Target) {
        self.reporter
            .task(cluster, target.kind, target.vmid, &target.report)
            .await;
    }

    pub async fn run(self, mut job: Job) {
        for t in &job.targets {
            self.publish(&job.cluster, t).await;
        }
        info!(cluster = %job.cluster, node = %job.node, action = %job.command.action,
              vmids = ?job.targets.iter().map(|t| t.vmid).collect::<Vec<_>>(), "command accepted");
        match self.execute(&mut job).await {
            Ok(()) => {}
            Err(RunError::Stopped) => {
                for t in &job.targets {
                    info!(cluster = %job.cluster, vmid = t.vmid, upid = t.report.upid.as_deref().unwrap_or(""),
                          "bridge stopping: the task's end will be reported after the restart");
                    self.publish(&job.cluster, t).await;
                }
                return;
            }
            Err(error) => {
                let error = error.to_string();
                for t in &mut job.targets {
                    if !t.report.state.is_final() {
                        t.report.state = Phase::Failed;
                        t.report.error = Some(error.clone());
                        t.report.finished = Some(unix_now());
                    }
                }
            }
        }
        for t in &job.targets {
            match t.report.state {
                Phase::Ok => {
                    info!(cluster = %job.cluster, vmid = t.vmid, action = %job.command.action, "command finished ok")
                }
                _ => warn!(cluster = %job.cluster, vmid = t.vmid, action = %job.command.action,
                           error = t.report.error.as_deref().unwrap_or(""), "command failed"),
            }
            self.publish(&job.cluster, t).await;
        }
        if let Some(reply) = &job.reply {
            let errors: Vec<String> = job
                .targets
                .iter()
                .filter(|t| t.report.state != Phase::Ok)
                .map(|t| {
                    format!(
                        "{}: {}",
                        t.vmid,
                        t.report.error.as_deref().unwrap_or("failed")
                    )
                })
                .collect();
            let data = json!({
                "cluster": job.cluster,
                "node": job.node,
                "results": job.targets.iter().map(|t| json!({"vmid": t.vmid, "type": t.kind, "task": t.report})).collect::<Vec<_>>(),
            });
            let error = (!errors.is_empty()).then(|| errors.join("; "));
            self.reporter
                .respond_with(&reply.name, reply.transaction.clone(), data, error)
                .await;
        }
    }

    /// POST, follow, refresh. Sets each target's final state; `Err` = the whole job failed.
    async fn execute(&self, job: &mut Job) -> Result<(), RunError> {
        let action = job.command.action;
        let (upid, follow) = match job.resume.take() {
            Some(Resume::Follow { upid, follow }) => (upid, Some(follow)),
            Some(Resume::Lookup) => {
                let upid = self.look_up(job).await?;
                let follow = self.busy.follow(&job.cluster, upid.as_str());
                if follow.is_none() && self.join_follower(job, &upid) {
                    return Ok(()); // that task's follower reports on these guests
                }
                (upid, follow)
            }
            None => {
                let upid = match self.post(job).await {
                    // No answer in time: Proxmox may still have started the task.
                    Err(RunError::Proxmox(timeout @ PveError::Timeout { .. })) => {
                        match self.look_up(job).await {
                            Ok(upid) => {
                                info!(upid = %upid, "the POST timed out, but Proxmox started the task");
                                upid
                            }
                            Err(RunError::Stopped) => return Err(RunError::Stopped),
                            Err(_) => return Err(RunError::Proxmox(timeout)),
                        }
                    }
                    other => other?,
                };
                let follow = self.busy.follow(&job.cluster, upid.as_str());
                (upid, follow)
            }
        };
        for t in &mut job.targets {
            t.report.state = Phase::Running;
            t.report.upid = Some(upid.to_string());
            if action == Action::Backup {
                t.report.progress = Some(0);
            }
        }
        for t in &job.targets {
            self.publish(&job.cluster, t).await;
        }

        let followed = self.follow(job, &upid, follow.as_ref()).await;
        if let Some(follow) = follow {
            // Guests that joined at the last moment get this task's result too, even a
            // failed follow's (after a stop they keep their `running` for the next run).
            self.take_joiners(job, follow.close());
        }
        let (exitstatus, log) = followed?;
        let success = crate::pve::exitstatus_is_success(&exitstatus);
        self.refresh_after(job).await;
        let now = unix_now();
        for t in &mut job.targets {
            t.report.exitstatus = Some(exitstatus.clone());
            t.report.finished = Some(now);
            t.report.state = Phase::Failed;
            // A node backup ends `job errors` when any guest failed: each guest's own
            // outcome is in the log.
            let guest = log.guests.get(&t.vmid);
            if let Some(error) = guest.and_then(|g| g.error.clone()) {
                t.report.error = Some(error);
            } else if action == Action::Backup && guest.is_some_and(|g| g.finished) {
                t.report.state = Phase::Ok;
                t.report.progress = Some(100);
                t.report.error = None;
            } else if success {
                t.report.state = Phase::Ok;
                t.report.error = None;
                if action == Action::Backup {
                    t.report.progress = Some(100);
                }
            } else {
                t.report.error = Some(exitstatus.clone());
            }
        }
        Ok(())
    }

    /// The lifecycle POST or the vzdump. At shutdown the POST still gets [`POST_GRACE`]:
    /// Proxmox may have started the task, and its UPID must be reported.
    async fn post(&self, job: &Job) -> Result<Upid, RunError> {
        let client = &self.handle.client;
        let request = async {
            if job.command.action == Action::Backup {
                let form = self.vzdump_form(job);
                match client.vzdump(&job.node, &form).await? {
                    VzdumpStarted::Task(upid) => Ok(upid),
                    VzdumpStarted::NothingLocal => Err(RunError::NothingStarted {
                        node: job.node.clone(),
                    }),
                }
            } else if job.command.action.is_snapshot() {
                let target = &job.targets[0];
                let guest = (target.kind, target.vmid);
                Ok(super::snapshot::post(client, &job.node, guest, &job.command).await?)
            } else {
                let target = &job.targets[0];
                let endpoint = job.command.action.endpoint().unwrap_or("status");
                Ok(client
                    .guest_action(
                        &job.node,
                        target.kind,
                        target.vmid,
                        endpoint,
                        &job.command.lifecycle_form(),
                    )
                    .await?)
            }
        };
        let grace_over = async {
            self.shutdown.cancelled().await;
            tokio::time::sleep(POST_GRACE).await;
        };
        tokio::select! {
            result = request => result,
            _ = grace_over => Err(RunError::Stopped),
        }
    }

    /// Finds the task an earlier run's POST started, in the node's task list: the
    /// bridge's own task of the right type for the guest, started closest to the
    /// command's arrival.
    async fn look_up(&self, job: &Job) -> Result<Upid, RunError> {
        let action = job.command.action;
        let target = &job.targets[0];
        let requested = target.report.requested;
        let since = requested.saturating_sub(LOOKUP_SLACK_SECS);
        let mut params = vec![
            ("source", "all".to_string()),
            ("since", since.to_string()),
            ("limit", "500".to_string()),
        ];
        if action == Action::Backup {
            // A vzdump of several guests has an empty id: filter by type, not vmid.
            params.push(("typefilter", "vzdump".to_string()));
        } else {
            params.push(("vmid", target.vmid.to_string()));
        }
        let mut attempt = 0;
        let rows = loop {
            match self.handle.client.node_tasks(&job.node, &params).await {
                Ok(rows) => break rows,
                Err(err) if attempt < 2 => {
                    attempt += 1;
                    warn!(node = %job.node, error = %err, "cannot read the node's task list; trying again");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Err(RunError::Stopped),
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
                Err(err) => {
                    return Err(RunError::LookupFailed {
                        node: job.node.clone(),
                        reason: err.to_string(),
                    })
                }
            }
        };
        let token = self.handle.client.token_id();
        let vmid = target.vmid.to_string();
        rows.iter()
            .filter_map(|row| row.upid.as_deref()?.parse::<Upid>().ok())
            .filter(|upid| {
                upid.user == token
                    && task_types(action).contains(&upid.task_type.as_str())
                    && (upid.id == vmid || (action == Action::Backup && upid.id.is_empty()))
                    && upid.starttime >= since
            })
            .min_by_key(|upid| upid.starttime.abs_diff(requested))
            .ok_or(RunError::NeverStarted {
                action,
                vmid: target.vmid,
                node: job.node.clone(),
                since,
            })
    }

    /// Hands the job's guests to the runner already following `upid`; `false` when it
    /// has just ended (then this job follows the task itself).
    fn join_follower(&self, job: &mut Job, upid: &Upid) -> bool {
        let mut targets = std::mem::take(&mut job.targets).into_iter();
        let mut guards = std::mem::take(&mut job.busy);
        for target in targets.by_ref() {
            let Some(i) = guards.iter().position(|g| g.vmid() == target.vmid) else {
                continue;
            };
            let guard = guards.swap_remove(i);
            if let Some((target, guard)) =
                self.busy.join(&job.cluster, upid.as_str(), (target, guard))
            {
                job.targets.push(target);
                job.busy.push(guard);
                job.targets.extend(targets);
                job.busy.extend(guards);
                return false;
            }
        }
        true
    }

    fn take_joiners(&self, job: &mut Job, joined: Vec<Joiner>) {
        for (target, guard) in joined {
            job.targets.push(target);
            job.busy.push(guard);
        }
    }

    fn vzdump_form(&self, job: &Job) -> Vec<(&'static str, String)> {
        let b = &job.command.backup;
        let vmids: Vec<String> = job.targets.iter().map(|t| t.vmid.to_string()).collect();
        let mut form = vec![
            ("vmid", vmids.join(",")),
            (
                "storage",
                b.storage
                    .as_ref()
                    .unwrap_or(&self.backup.storage)
                    .to_string(),
            ),
            ("mode", b.mode.unwrap_or(self.backup.mode).as_str().into()),
            (
                "compress",
                b.compress.unwrap_or(self.backup.compress).as_str().into(),
            ),
        ];
        if let Some(notes) = &b.notes_template {
            form.push(("notes-template", notes.clone()));
        }
        if let Some(remove) = b.remove {
            form.push(("remove", if remove { "1" } else { "0" }.into()));
        }
        if let Some(protected) = b.protected {
            form.push(("protected", if protected { "1" } else { "0" }.into()));
        }
        form
    }

    /// Polls the task status until it stops; for backups also reads new log lines for
    /// progress and each guest's outcome. Returns the exitstatus and the log read.
    async fn follow(
        &self,
        job: &mut Job,
        upid: &Upid,
        follow: Option<&FollowGuard>,
    ) -> Result<(String, BackupLog), RunError> {
        let started = tokio::time::Instant::now();
        let give_up = started + deadline(job.command.action);
        let mut log = BackupLog::default();
        let mut log_lines_read: u64 = 0;
        let mut failing_since: Option<tokio::time::Instant> = None;
        let mut failures = 0u32;
        loop {
            if !pause_between_reads(started, &self.shutdown).await {
                return Err(RunError::Stopped);
            }
            if tokio::time::Instant::now() > give_up {
                return Err(RunError::GaveUp {
                    after: deadline(job.command.action),
                });
            }
            if let Some(follow) = follow {
                self.take_joiners(job, follow.joined());
            }
            if job.command.action == Action::Backup {
                self.read_log(job, upid, &mut log, &mut log_lines_read)
                    .await;
            }
            match self.handle.client.task_status(upid).await {
                Ok(status) if status.is_running() => {
                    failing_since = None;
                    failures = 0;
                }
                Ok(status) => {
                    if job.command.action == Action::Backup {
                        // The lines logged between the last read and the end (a guest's
                        // outcome is often among the last), a bounded number of pages.
                        for _ in 0..20 {
                            if !self
                                .read_log(job, upid, &mut log, &mut log_lines_read)
                                .await
                            {
                                break;
                            }
                        }
                    }
                    let exitstatus = status
                        .exitstatus
                        .clone()
                        .unwrap_or_else(|| "unexpected status".to_string());
                    return Ok((exitstatus, log));
                }
                Err(err) => {
                    let now = tokio::time::Instant::now();
                    let since = *failing_since.get_or_insert(now);
                    if let Some(end) = judge(&err, upid, now - since) {
                        return Err(end);
                    }
                    failures += 1;
                    if failures == 1 || failures % 20 == 0 {
                        warn!(upid = %upid, error = %err, "cannot read the task status; still trying");
                    }
                }
            }
        }
    }

    /// Reads the log lines past `read`, and publishes the guests whose progress moved.
    /// `false` when there was nothing (more) to read.
    async fn read_log(
        &self,
        job: &mut Job,
        upid: &Upid,
        log: &mut BackupLog,
        read: &mut u64,
    ) -> bool {
        let Ok(chunk) = self.handle.client.task_log(upid, *read, 500).await else {
            return false;
        };
        *read = chunk.next_start;
        for line in &chunk.lines {
            log.feed(line.text());
        }
        let mut changed = Vec::new();
        for (i, t) in job.targets.iter_mut().enumerate() {
            if let Some(g) = log.guests.get(&t.vmid) {
                if g.progress.is_some() && g.progress != t.report.progress {
                    t.report.progress = g.progress;
                    changed.push(i);
                }
            }
        }
        for i in changed {
            self.publish(&job.cluster, &job.targets[i]).await;
        }
        !chunk.lines.is_empty()
    }

    /// Right after the task: read the guest's own status (fresh on a real Proxmox, where
    /// the cluster-wide list lags) and have the poller publish at once.
    async fn refresh_after(&self, job: &Job) {
        let mut refresh = Refresh {
            reread_backups: job.command.action == Action::Backup,
            reread_snapshots: job
                .command
                .action
                .is_snapshot()
                .then(|| job.targets[0].vmid),
            ..Refresh::default()
        };
        if job.command.action != Action::Backup {
            let t = &job.targets[0];
            if let Ok(status) = self
                .handle
                .client
                .guest_status(&job.node, t.kind, t.vmid)
                .await
            {
                let state = match status.qmpstatus.as_deref() {
                    Some("paused") => Some("paused".to_string()),
                    Some("suspended") => Some("suspended".to_string()),
                    _ => status.status.clone(),
                };
                refresh.status_override = state.map(|s| (t.vmid, s));
            }
        }
        let _ = self.handle.refresh.send(refresh).await;
    }
}

/// The wait before a follower's next task-status read: fast at first (most lifecycle
/// tasks take 1-5 s), then gentler on Proxmox. `false` once the bridge is stopping.
pub(super) async fn pause_between_reads(
    started: tokio::time::Instant,
    shutdown: &CancellationToken,
) -> bool {
    let wait = if started.elapsed() < Duration::from_secs(30) {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(2)
    };
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upid() -> Upid {
        "UPID:pve2:0000A1B2:0001C3D4:6803E819:vzdump::root@pam!bridge:"
            .parse()
            .unwrap()
    }

    #[test]
    fn a_task_proxmox_does_not_know_ends_the_follow_at_once() {
        let gone = PveError::Api {
            status: 400,
            reason: "Parameter verification failed.".into(),
            errors: serde_json::from_str(r#"{"upid":"no such task"}"#).ok(),
        };
        let end = judge(&gone, &upid(), Duration::ZERO).expect("final");
        assert!(matches!(end, RunError::TaskUnknown { .. }));
        assert!(end.to_string().contains("no such task"), "{end}");
    }

    #[test]
    fn an_unreachable_node_ends_the_follow_after_the_limit_saying_the_task_may_still_run() {
        let down = PveError::NodeUnreachable {
            status: 595,
            reason: "No route to host".into(),
        };
        assert!(judge(&down, &upid(), NODE_LOSS_LIMIT - Duration::from_secs(1)).is_none());
        let end = judge(&down, &upid(), NODE_LOSS_LIMIT).expect("bounded");
        let text = end.to_string();
        assert!(
            text.contains("node pve2 has not answered for 10 min"),
            "{text}"
        );
        assert!(text.contains("may still be running"), "{text}");
        let busy = PveError::Api {
            status: 500,
            reason: "cluster not ready - no quorum?".into(),
            errors: None,
        };
        assert!(
            judge(&busy, &upid(), Duration::from_secs(60)).is_none(),
            "transient"
        );
    }

    #[test]
    fn every_action_names_the_task_types_it_can_start() {
        for action in Action::ALL {
            assert!(!task_types(action).is_empty(), "{action}");
        }
        assert_eq!(task_types(Action::Backup), ["vzdump"]);
    }
}
