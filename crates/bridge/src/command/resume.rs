//! Picking up tasks an earlier run was following.
//!
//! A runner stopped by shutdown leaves its guest's retained `…/task` report `accepted` or
//! `running` (with the UPID). The broker hands those back at connect; each is followed
//! to its end once its cluster is known (the reports usually arrive before the first
//! poll), so its final result is still reported.
//!
//! A report is final once it is final, so what is resumed is narrow:
//! - never a guest this run has held (the broker hands this run's own `running` back
//!   at every reconnect, even after this run has seen the task end);
//! - one follower per UPID: the guests of a node backup join that task's follower;
//! - `accepted` without a UPID (the earlier run stopped during its POST) is looked up in
//!   the node's task list before it is called "never reached Proxmox".

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::inbox::CommandHandler;
use super::links;
use super::parse::{Action, Command};
use super::report::{unix_now, Phase, TaskReport};
use super::runner::{Job, Resume, Target};
use crate::pve::{GuestKind, Upid};

/// How long after its request a report is still worth resuming.
const RESUME_WINDOW_SECS: u64 = 24 * 3600;

/// Whether an earlier run's report is recent enough to wait for its cluster.
pub(super) fn still_fresh(report: &TaskReport) -> bool {
    // `saturating_add`: a forged `requested` must not overflow.
    report.requested.saturating_add(RESUME_WINDOW_SECS) > unix_now()
}

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
        'next: for p in pending {
            let PendingResume {
                cluster,
                kind,
                vmid,
                mut report,
            } = p;
            if self.busy.is_busy(&cluster, vmid) || self.busy.taken_by_this_run(&cluster, vmid) {
                continue; // this run's own report, or one a command of this run replaced
            }
            let fresh = still_fresh(&report);
            let handle = links::cluster(&self.registry, &cluster);
            let upid = report.upid.as_deref().and_then(|u| u.parse::<Upid>().ok());
            let action = Action::parse(&report.action);
            // Without a UPID the task is found on the guest's node, once a poll saw it:
            // `Some(None)` = polled, and the guest is not in the cluster.
            let polled: Option<Option<String>> = handle.as_ref().and_then(|h| {
                let view = h.view.borrow().clone()?;
                Some(view.guests.get(&vmid).map(|g| g.node.to_string()))
            });
            let ready =
                handle.is_some() && (upid.is_some() || polled.is_some() || action.is_none());
            let Some(handle) = handle.filter(|_| ready) else {
                if fresh {
                    self.pending_resumes.push(PendingResume {
                        cluster,
                        kind,
                        vmid,
                        report,
                    });
                }
                continue;
            };
            let node = match (&upid, action, polled) {
                (_, None, _) => Err(format!(
                    "unknown action '{}' in an earlier run's report",
                    report.action.chars().take(40).collect::<String>()
                )),
                (None, _, Some(None)) => Err(format!(
                    "the bridge stopped while sending this command, and guest {vmid} is no longer in the cluster: whether it ran is unknown"
                )),
                (_, _, polled) => Ok(polled.flatten().unwrap_or_default()),
            };
            let (Some(action), Ok(node)) = (action, node.as_ref()) else {
                report.state = Phase::Failed;
                report.error = node.err();
                report.finished = Some(unix_now());
                let reporter = self.reporter.clone();
                tokio::spawn(async move { reporter.task(&cluster, kind, vmid, &report).await });
                continue;
            };
            let node = node.clone();
            let Some(busy) = self.busy.claim(&cluster, vmid) else {
                continue;
            };
            let target = Target { kind, vmid, report };
            let (node, resume, target, busy) = match upid {
                Some(upid) => {
                    let mut joiner = (target, busy);
                    let follow = loop {
                        if let Some(follow) = self.busy.follow(&cluster, upid.as_str()) {
                            break follow;
                        }
                        // A node backup's other guests: one follower reports on all. Its
                        // follower may end between the two calls: then follow again.
                        match self.busy.join(&cluster, upid.as_str(), joiner) {
                            None => continue 'next,
                            Some(back) => joiner = back,
                        }
                    };
                    let (target, busy) = joiner;
                    info!(cluster = %cluster, vmid, upid = %upid, "following a task an earlier run started");
                    (
                        upid.node.clone(),
                        Resume::Follow { upid, follow },
                        target,
                        busy,
                    )
                }
                None => {
                    info!(cluster = %cluster, vmid, "an earlier run stopped while sending this command: looking for its task");
                    (node, Resume::Lookup, target, busy)
                }
            };
            let job = Job {
                node,
                cluster,
                command: Command::new(action),
                targets: vec![target],
                reply: None,
                resume: Some(resume),
                busy: vec![busy],
            };
            self.spawn(handle, job, shutdown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::inbox::tests::{handler, CONFIG};
    use super::*;
    use crate::config::Config;
    use crate::publisher::PublisherMsg;
    use tokio::sync::mpsc;

    /// Registers cluster `home` as polled, with no guests.
    fn polled_without_guests(
        h: &CommandHandler,
    ) -> tokio::sync::watch::Sender<Option<std::sync::Arc<crate::model::ClusterView>>> {
        let config = Config::from_toml_str(CONFIG, &Default::default()).expect("test config");
        let client = crate::pve::PveClient::new(&config.clusters[0]).expect("client");
        let (view_tx, view) = tokio::sync::watch::channel(Some(Default::default()));
        let (refresh, _) = mpsc::channel(1);
        h.registry.write().unwrap().insert(
            "home".into(),
            links::ClusterHandle {
                client,
                view,
                refresh,
            },
        );
        view_tx
    }

    #[tokio::test]
    async fn accepted_without_upid_for_a_guest_gone_from_the_cluster_fails_saying_it_is_unknown() {
        let (mut h, mut rx) = handler();
        let _view = polled_without_guests(&h);
        let report = TaskReport::new(Some("a".into()), "start", unix_now());
        h.pending_resumes.push(PendingResume {
            cluster: "home".into(),
            kind: GuestKind::Qemu,
            vmid: 100,
            report,
        });
        h.try_resumes(&CancellationToken::new());
        assert!(h.pending_resumes.is_empty());
        match tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await {
            Ok(Some(PublisherMsg::Task {
                vmid: 100, report, ..
            })) => {
                assert_eq!(report.state, Phase::Failed);
                assert_eq!(report.id.as_deref(), Some("a"));
                let error = report.error.unwrap();
                assert!(
                    error.contains("no longer in the cluster") && error.contains("unknown"),
                    "{error}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    fn running(requested: u64) -> PendingResume {
        let mut report = TaskReport::new(Some("r".into()), "start", requested);
        report.state = Phase::Running;
        report.upid =
            Some("UPID:pve:0000A1B2:0001C3D4:6803E819:qmstart:100:root@pam!bridge:".into());
        PendingResume {
            cluster: "home".into(),
            kind: GuestKind::Qemu,
            vmid: 100,
            report,
        }
    }

    #[test]
    fn a_forged_report_requested_at_the_end_of_time_does_not_overflow() {
        let (mut h, mut rx) = handler();
        h.pending_resumes.push(running(u64::MAX));
        h.try_resumes(&CancellationToken::new());
        assert_eq!(h.pending_resumes.len(), 1, "waits for its cluster");
        h.pending_resumes.push(running(0));
        h.try_resumes(&CancellationToken::new());
        assert_eq!(
            h.pending_resumes.len(),
            1,
            "a report past the window is dropped"
        );
        assert!(rx.try_recv().is_err(), "nothing published");
    }

    #[test]
    fn a_guest_this_run_has_held_is_never_resumed() {
        let (mut h, mut rx) = handler();
        drop(h.busy.claim("home", 100));
        h.pending_resumes.push(running(unix_now()));
        h.try_resumes(&CancellationToken::new());
        assert!(
            h.pending_resumes.is_empty(),
            "this run's own report: dropped"
        );
        assert!(rx.try_recv().is_err(), "nothing published");
        assert!(!h.busy.is_busy("home", 100));
    }
}
