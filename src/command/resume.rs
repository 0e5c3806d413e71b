//! Picking up tasks an earlier run was following.
//!
//! A runner stopped by shutdown leaves its guest's retained `…/task` report `accepted` or
//! `running` (with the UPID). The broker hands those back at connect; each is followed
//! to its end once its cluster is known (the reports usually arrive before the first
//! poll), so its final result is still reported.

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::inbox::CommandHandler;
use super::links;
use super::parse::{Action, Command};
use super::report::{unix_now, Phase, TaskReport};
use super::runner::{Job, Target};
use crate::pve::{GuestKind, Upid};

/// How long after its request a report is still worth resuming.
const RESUME_WINDOW_SECS: u64 = 24 * 3600;

/// A retained `accepted`/`running` report of an earlier run, waiting for its cluster.
#[derive(Debug)]
pub struct PendingResume {
    pub cluster: String,
    pub kind: GuestKind,
    pub vmid: u32,
    pub report: TaskReport,
}

impl CommandHandler {
    /// Picks up what can be picked up now; the rest waits for its cluster (up to
    /// [`RESUME_WINDOW_SECS`] after the request).
    pub(super) fn try_resumes(&mut self, shutdown: &CancellationToken) {
        let pending = std::mem::take(&mut self.pending_resumes);
        for p in pending {
            let PendingResume {
                cluster,
                kind,
                vmid,
                mut report,
            } = p;
            if self.busy.is_busy(&cluster, vmid) {
                continue; // this run is following it already
            }
            let Some(handle) = links::cluster(&self.registry, &cluster) else {
                // `saturating_add`: a forged `requested` must not overflow.
                if report.requested.saturating_add(RESUME_WINDOW_SECS) > unix_now() {
                    self.pending_resumes.push(PendingResume {
                        cluster,
                        kind,
                        vmid,
                        report,
                    });
                }
                continue;
            };
            let upid = report.upid.as_deref().and_then(|u| u.parse::<Upid>().ok());
            let action = Action::parse(&report.action);
            let (Some(upid), Some(action)) = (upid, action) else {
                // Accepted but never started (no UPID): nothing ran in Proxmox.
                report.state = Phase::Failed;
                report.error =
                    Some("the bridge stopped before this command reached Proxmox".into());
                report.finished = Some(unix_now());
                let reporter = self.reporter.clone();
                tokio::spawn(async move { reporter.task(&cluster, kind, vmid, &report).await });
                continue;
            };
            let Some(busy) = self.busy.claim(&cluster, vmid) else {
                continue;
            };
            info!(cluster = %cluster, vmid, upid = %upid, "following a task an earlier run started");
            let job = Job {
                node: upid.node.clone(),
                cluster,
                command: Command::new(action),
                targets: vec![Target { kind, vmid, report }],
                reply: None,
                resume: Some(upid),
                busy: vec![busy],
            };
            self.spawn(handle, job, shutdown);
        }
    }
}
