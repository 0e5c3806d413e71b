//! One task per accepted job: POST (or pick up an earlier run's task), follow the
//! Proxmox task to its end, ask the poller for a refresh, and report every step.
//!
//! The runner owns its guests' [`BusyGuard`]s, so the guests take commands again as soon
//! as it ends, however it ends.

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::busy::BusyGuard;
use super::links::{ClusterHandle, Reporter};
use super::parse::{Action, Command};
use super::report::{unix_now, BackupLog, Phase, TaskReport};
use crate::config::BackupConfig;
use crate::poller::Refresh;
use crate::pve::{GuestKind, PveError, Upid, VzdumpStarted};

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
    pub resume: Option<Upid>,
    /// The targets' busy slots, freed when the job is dropped.
    pub busy: Vec<BusyGuard>,
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
}

/// How long a task is followed before the bridge gives up on it.
fn deadline(action: Action) -> Duration {
    match action {
        // vzdump may wait up to 3 h for the node's lock, then run for hours.
        Action::Backup => Duration::from_secs(24 * 3600),
        _ => Duration::from_secs(15 * 60),
    }
}

/// What every runner shares.
pub struct Runner {
    pub reporter: Reporter,
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
            let all_ok = job.targets.iter().all(|t| t.report.state == Phase::Ok);
            let result = if all_ok {
                Ok(json!({
                    "cluster": job.cluster,
                    "node": job.node,
                    "results": job.targets.iter().map(|t| json!({"vmid": t.vmid, "type": t.kind, "task": t.report})).collect::<Vec<_>>(),
                }))
            } else {
                let errors: Vec<String> = job
                    .targets
                    .iter()
                    .filter_map(|t| t.report.error.as_ref().map(|e| format!("{}: {e}", t.vmid)))
                    .collect();
                Err(errors.join("; "))
            };
            self.reporter
                .respond(&reply.name, reply.transaction.clone(), result)
                .await;
        }
    }

    /// POST, follow, refresh. Sets each target's final state; `Err` = the whole job failed.
    async fn execute(&self, job: &mut Job) -> Result<(), RunError> {
        let client = &self.handle.client;
        let action = job.command.action;
        let upid = if let Some(upid) = job.resume.clone() {
            upid
        } else if action == Action::Backup {
            let form = self.vzdump_form(job);
            match client.vzdump(&job.node, &form).await? {
                VzdumpStarted::Task(upid) => upid,
                VzdumpStarted::NothingLocal => {
                    return Err(RunError::NothingStarted {
                        node: job.node.clone(),
                    })
                }
            }
        } else {
            let target = &job.targets[0];
            let endpoint = action.endpoint().unwrap_or("status");
            client
                .guest_action(
                    &job.node,
                    target.kind,
                    target.vmid,
                    endpoint,
                    &job.command.lifecycle_form(),
                )
                .await?
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

        let exitstatus = self.follow(job, &upid).await?;
        let success = crate::pve::exitstatus_is_success(&exitstatus);
        self.refresh_after(job).await;
        let now = unix_now();
        for t in &mut job.targets {
            t.report.exitstatus = Some(exitstatus.clone());
            t.report.finished = Some(now);
            if t.report.error.is_some() {
                t.report.state = Phase::Failed;
            } else if success {
                t.report.state = Phase::Ok;
                if action == Action::Backup {
                    t.report.progress = Some(100);
                }
            } else {
                t.report.state = Phase::Failed;
                t.report.error = Some(exitstatus.clone());
            }
        }
        Ok(())
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
    /// progress. Returns the exitstatus.
    async fn follow(&self, job: &mut Job, upid: &Upid) -> Result<String, RunError> {
        let client = &self.handle.client;
        let started = tokio::time::Instant::now();
        let give_up = started + deadline(job.command.action);
        let mut log = BackupLog::default();
        let mut log_lines_read: u64 = 0;
        let mut failures = 0u32;
        loop {
            // Fast at first (most lifecycle tasks take 1-5 s), then gentler on Proxmox.
            let wait = if started.elapsed() < Duration::from_secs(30) {
                Duration::from_millis(250)
            } else {
                Duration::from_secs(2)
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(RunError::Stopped),
                _ = tokio::time::sleep(wait) => {}
            }
            if tokio::time::Instant::now() > give_up {
                return Err(RunError::GaveUp {
                    after: deadline(job.command.action),
                });
            }
            if job.command.action == Action::Backup {
                if let Ok(chunk) = client.task_log(upid, log_lines_read, 500).await {
                    log_lines_read = chunk.next_start;
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
                            if let Some(e) = &g.error {
                                t.report.error = Some(e.clone());
                            }
                        }
                    }
                    for i in changed {
                        self.publish(&job.cluster, &job.targets[i]).await;
                    }
                }
            }
            match client.task_status(upid).await {
                Ok(status) if status.is_running() => failures = 0,
                Ok(status) => {
                    return Ok(status
                        .exitstatus
                        .clone()
                        .unwrap_or_else(|| "unexpected status".to_string()))
                }
                Err(err) => {
                    failures += 1;
                    if failures == 1 || failures % 20 == 0 {
                        warn!(upid = %upid, error = %err, "cannot read the task status; still trying");
                    }
                }
            }
        }
    }

    /// Right after the task: read the guest's own status (fresh on a real Proxmox, where
    /// the cluster-wide list lags) and have the poller publish at once.
    async fn refresh_after(&self, job: &Job) {
        let mut refresh = Refresh {
            reread_backups: job.command.action == Action::Backup,
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
