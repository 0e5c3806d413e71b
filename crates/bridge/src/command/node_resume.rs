//! Picking up node commands an earlier run was following (as [`super::resume`] does for
//! guests). A node runner stopped by shutdown leaves the node's retained `…/task` report
//! `running` (bulk actions with their UPID); the broker hands it back at connect, and
//! once the cluster has been polled it is followed to its end and reported:
//! - `startall`/`stopall`/`suspendall`: the task, by its UPID;
//! - `reboot`/`shutdown`/`wakeonlan`: the polls, for what is left of the deadline (a
//!   reboot ends once the node is online with a boot time after the request);
//! - `accepted` (that run stopped before Proxmox answered the POST): `failed`, saying
//!   whether it ran is unknown.
//!
//! Never a node this run has held (its own report comes back at every reconnect), one
//! runner per node (the one-at-a-time rule holds across the restart).

use tokio_util::sync::CancellationToken;

use super::inbox::CommandHandler;
use super::links;
use super::node::{NodeAction, NodeCommand};
use super::node_run::NodeRunner;
use super::report::{unix_now, Phase, TaskReport};
use super::resume::still_fresh;

/// A retained `accepted`/`running` node report of an earlier run, waiting for its
/// cluster's first poll.
#[derive(Debug)]
pub struct PendingNodeResume {
    pub cluster: String,
    pub node: String,
    pub report: TaskReport,
}

impl CommandHandler {
    /// `{base}/{c}/node/{node}/task`: only the broker's retained copy (at connect) can be
    /// an earlier run's command.
    pub(super) fn node_task_report(
        &mut self,
        cluster: String,
        node: String,
        payload: &[u8],
        retain: bool,
        shutdown: &CancellationToken,
    ) {
        if !retain {
            return;
        }
        let Ok(report) = serde_json::from_slice::<TaskReport>(payload) else {
            return;
        };
        if matches!(report.state, Phase::Accepted | Phase::Running) {
            self.pending_node_resumes.push(PendingNodeResume {
                cluster,
                node,
                report,
            });
            self.try_node_resumes(shutdown);
        }
    }

    /// Picks up what can be picked up now; the rest waits for its cluster.
    pub(super) fn try_node_resumes(&mut self, shutdown: &CancellationToken) {
        for p in std::mem::take(&mut self.pending_node_resumes) {
            let PendingNodeResume {
                cluster,
                node,
                mut report,
            } = p;
            if self.nodes.is_busy(&cluster, &node) || self.nodes.taken_by_this_run(&cluster, &node)
            {
                continue;
            }
            let handle = links::cluster(&self.registry, &cluster).filter(|h| {
                h.view
                    .borrow()
                    .as_ref()
                    .is_some_and(|v| v.nodes.contains_key(&node))
            });
            let Some(handle) = handle else {
                if still_fresh(&report) {
                    self.pending_node_resumes.push(PendingNodeResume {
                        cluster,
                        node,
                        report,
                    });
                }
                continue;
            };
            let Some(guard) = self.nodes.claim(&cluster, &node) else {
                continue;
            };
            let Some(action) = NodeAction::parse(&report.action) else {
                report.state = Phase::Failed;
                report.error = Some(format!(
                    "unknown node action '{}' in an earlier run's report",
                    report.action.chars().take(40).collect::<String>()
                ));
                report.finished = Some(unix_now());
                let reporter = self.reporter.clone();
                tokio::spawn(async move {
                    reporter.node_task(&cluster, &node, &report, true).await;
                    drop(guard);
                });
                continue;
            };
            let mut command = NodeCommand::new(action);
            command.id = report.id.clone();
            let runner = NodeRunner {
                cluster,
                node,
                command,
                report,
                handle,
                reporter: self.reporter.clone(),
                shutdown: shutdown.clone(),
                _guard: guard,
                resumed: true,
            };
            self.runners.spawn(runner.run());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::inbox::tests::handler;
    use super::*;

    fn running_stopall(requested: u64) -> Vec<u8> {
        let mut report = TaskReport::new(Some("r".into()), "stopall", requested);
        report.state = Phase::Running;
        report.upid = Some("UPID:pve:0000A1B2:0001C3D4:6803E819:stopall::root@pam!bridge:".into());
        serde_json::to_vec(&report).unwrap()
    }

    #[test]
    fn a_node_report_waits_for_its_cluster_and_a_stale_one_is_dropped() {
        let (mut h, mut rx) = handler();
        let stop = CancellationToken::new();
        h.node_task_report(
            "home".into(),
            "pve".into(),
            &running_stopall(unix_now()),
            true,
            &stop,
        );
        assert_eq!(h.pending_node_resumes.len(), 1, "waits for its cluster");
        h.node_task_report(
            "home".into(),
            "pve2".into(),
            &running_stopall(0),
            true,
            &stop,
        );
        assert_eq!(h.pending_node_resumes.len(), 1, "past the window: dropped");
        h.node_task_report(
            "home".into(),
            "pve3".into(),
            &running_stopall(unix_now()),
            false,
            &stop,
        );
        assert_eq!(
            h.pending_node_resumes.len(),
            1,
            "a live report is not an earlier run's"
        );
        assert!(rx.try_recv().is_err(), "nothing published");
    }

    #[test]
    fn a_node_this_run_has_held_is_never_resumed() {
        let (mut h, mut rx) = handler();
        drop(h.nodes.claim("home", "pve"));
        h.node_task_report(
            "home".into(),
            "pve".into(),
            &running_stopall(unix_now()),
            true,
            &CancellationToken::new(),
        );
        assert!(
            h.pending_node_resumes.is_empty(),
            "this run's own report: dropped"
        );
        assert!(rx.try_recv().is_err(), "nothing published");
        assert!(!h.nodes.is_busy("home", "pve"));
    }
}
