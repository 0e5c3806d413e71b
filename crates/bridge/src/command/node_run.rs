//! Node commands in the inbox and their runner: `{base}/{c}/node/{node}/set` →
//! validated ([`super::node`]), rate-limited, authorised (`[commands] node_power`), one at
//! a time per node, then POSTed and followed to the end, reported on the node's retained
//! `{base}/{c}/node/{node}/task` (the guest `…/task` shape).
//!
//! How each action is followed (README: Node commands):
//! - `startall`/`stopall`/`suspendall`: a Proxmox task (UPID with an empty id), followed
//!   like a guest's; `ok` on `OK` or `WARNINGS: n` (a failed sub-task does not fail it).
//! - `reboot`/`shutdown`: Proxmox answers `null` at once, with no task. The report is
//!   `running` (no UPID) from then on, and `ok` once the polls see the node `offline`
//!   (shutdown), or offline and then back `online` (reboot).
//! - `wakeonlan`: sent through the API endpoint in use, which is an online node (the
//!   target is offline, so it cannot be the one answering); the report is `running`
//!   from Proxmox's answer (the MAC it used) until the polls see the node `online`.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::inbox::CommandHandler;
use super::links::{cluster, ClusterHandle, Reporter};
use super::node::{
    authorize_node, check_against_view, check_safety, id_of, parse_node, NodeAction, NodeCommand,
};
use super::parse::{Rejection, RejectionKind};
use super::report::{unix_now, Phase, TaskReport};
use crate::model::ClusterView;
use crate::poller::Refresh;
use crate::publisher::PublisherMsg;
use crate::pve::{PveClient, PveError, Upid};

/// How long a shutdown may take before the node is seen offline (the host stops its
/// guests first: up to 180 s each per order group by default).
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(15 * 60);
/// How long a reboot may take until the node is seen back online.
const REBOOT_DEADLINE: Duration = Duration::from_secs(20 * 60);
/// How long after a Wake-on-LAN packet the node must be seen online.
const WAKE_DEADLINE: Duration = Duration::from_secs(10 * 60);
/// How long a bulk task is followed.
const BULK_DEADLINE: Duration = Duration::from_secs(3 * 3600);
/// How long the task status may go unanswered before the follow ends `failed`.
const STATUS_LOSS_LIMIT: Duration = Duration::from_secs(10 * 60);

/// The reason a retained node command gets.
const RETAINED: &str = "retained command ignored: publish commands without the retain flag (a retained command would replay at every reconnect); the bridge cleared it from the broker";

/// Nodes, as (cluster, node), with a command in flight, and every node this run has
/// held (a retained `running` report for one of those is this run's own).
#[derive(Clone, Debug, Default)]
pub struct NodeSlots(Arc<Mutex<Slots>>);

#[derive(Debug, Default)]
struct Slots {
    busy: HashSet<(String, String)>,
    held: HashSet<(String, String)>,
}

impl NodeSlots {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(cluster: &str, node: &str) -> (String, String) {
        (cluster.to_string(), node.to_string())
    }

    pub fn is_busy(&self, cluster: &str, node: &str) -> bool {
        self.lock().busy.contains(&Self::key(cluster, node))
    }

    /// Whether a command of this run has held the node (running or finished).
    pub fn taken_by_this_run(&self, cluster: &str, node: &str) -> bool {
        self.lock().held.contains(&Self::key(cluster, node))
    }

    /// Takes the node's slot, or `None` while another command holds it.
    pub fn claim(&self, cluster: &str, node: &str) -> Option<NodeGuard> {
        let key = Self::key(cluster, node);
        let mut slots = self.lock();
        if !slots.busy.insert(key.clone()) {
            return None;
        }
        slots.held.insert(key.clone());
        Some(NodeGuard {
            slots: self.clone(),
            key,
        })
    }
}

/// A node's slot, freed when dropped (however the runner ends).
#[derive(Debug)]
pub struct NodeGuard {
    slots: NodeSlots,
    key: (String, String),
}

impl Drop for NodeGuard {
    fn drop(&mut self) {
        self.slots.lock().busy.remove(&self.key);
    }
}

impl Reporter {
    /// The node's `…/task` report; `retain = false` for live subscribers only.
    pub async fn node_task(&self, cluster: &str, node: &str, report: &TaskReport, retain: bool) {
        let _ = self
            .0
            .send(PublisherMsg::NodeTask {
                cluster: cluster.to_string(),
                node: node.to_string(),
                report: report.clone(),
                retain,
            })
            .await;
    }

    /// Clears a retained node command on the broker.
    pub async fn clear_node_command(&self, cluster: &str, node: &str) {
        let _ = self
            .0
            .send(PublisherMsg::ClearNodeCommand {
                cluster: cluster.to_string(),
                node: node.to_string(),
            })
            .await;
    }
}

/// The answer to a node command the event loop could not queue (see
/// `inbox::overloaded`).
pub fn overloaded_node(cluster: String, node: String, payload: &[u8]) -> PublisherMsg {
    let (id, action) = match parse_node(payload) {
        Ok(c) => (c.id, c.action.as_str()),
        Err((id, _)) => (id, "unknown"),
    };
    PublisherMsg::NodeTask {
        cluster,
        node,
        report: TaskReport::rejected(id, action, super::inbox::OVERLOADED),
        retain: false,
    }
}

impl CommandHandler {
    /// `{base}/{c}/node/{node}/set`. Retained: rejected and cleared, never run. Live:
    /// rate-limited, validated, authorised, then run; cleared once decided.
    pub(super) async fn node_set(
        &mut self,
        cluster: &str,
        node: &str,
        payload: &[u8],
        retain: bool,
        shutdown: &CancellationToken,
    ) {
        if payload.is_empty() {
            return;
        }
        if retain {
            let action = parse_node(payload).ok().map(|c| c.action);
            let rejection = Rejection::new(RejectionKind::Retained, RETAINED);
            self.node_reject(cluster, node, id_of(payload), action, &rejection)
                .await;
            self.reporter.clear_node_command(cluster, node).await;
            return;
        }
        // Nodes share the guests' limiter under keys no guest can have (vmid 0).
        let key = format!("{cluster}/node/{node}");
        if let Err(refusal) = self.limiter.check(&key, 0, Instant::now()) {
            if refusal.notify {
                let reason = refusal.reason.replace("per guest", "per node");
                warn!(cluster, node, reason = %reason, "node commands rate limited");
                let rejection = Rejection::new(RejectionKind::RateLimited, reason);
                self.node_reject(cluster, node, id_of(payload), None, &rejection)
                    .await;
            }
            return;
        }
        let command = match parse_node(payload) {
            Ok(c) => c,
            Err((id, rejection)) => {
                self.node_reject(cluster, node, id, None, &rejection).await;
                self.reporter.clear_node_command(cluster, node).await;
                return;
            }
        };
        if let Err(rejection) = self.node_submit(cluster, node, &command, shutdown).await {
            self.node_reject(
                cluster,
                node,
                command.id.clone(),
                Some(command.action),
                &rejection,
            )
            .await;
        }
        self.reporter.clear_node_command(cluster, node).await;
    }

    async fn node_submit(
        &mut self,
        cluster_id: &str,
        node: &str,
        command: &NodeCommand,
        shutdown: &CancellationToken,
    ) -> Result<(), Rejection> {
        let (handle, view) = self.polled(cluster_id)?;
        if !view.nodes.contains_key(node) {
            return Err(Rejection::new(
                RejectionKind::Unknown,
                format!("unknown node '{node}' in cluster '{cluster_id}'"),
            ));
        }
        authorize_node(&self.policy)?;
        // The safety rules need to know which node the bridge runs on, a request: the
        // runner checks them, so that no other command waits for it here
        // ([`NodeRunner::refused`]).
        check_against_view(&view, node, command)?;
        let guard = self.nodes.claim(cluster_id, node).ok_or_else(|| {
            Rejection::new(
                RejectionKind::Busy,
                format!("busy: another command for node {node} is still running"),
            )
        })?;
        let runner = NodeRunner {
            cluster: cluster_id.to_string(),
            node: node.to_string(),
            command: command.clone(),
            report: TaskReport::new(command.id.clone(), command.action.as_str(), unix_now()),
            handle,
            reporter: self.reporter.clone(),
            shutdown: shutdown.clone(),
            _guard: guard,
            resumed: false,
        };
        self.runners.spawn(runner.run());
        Ok(())
    }

    /// A rejection: retained on the node's `…/task` when it is about a live command's own
    /// fault (malformed, policy, safety) for a known idle node, else for live
    /// subscribers only (as for guests).
    async fn node_reject(
        &self,
        cluster_id: &str,
        node: &str,
        id: Option<String>,
        action: Option<NodeAction>,
        rejection: &Rejection,
    ) {
        if rejection.kind != RejectionKind::RateLimited {
            warn!(cluster = cluster_id, node, reason = %rejection, "node command rejected");
        }
        let action = action.map(|a| a.as_str()).unwrap_or("unknown");
        let report = TaskReport::rejected(id, action, &rejection.reason);
        let known = cluster(&self.registry, cluster_id).is_some_and(|h| {
            h.view
                .borrow()
                .as_ref()
                .is_some_and(|v| v.nodes.contains_key(node))
        });
        let retain = matches!(
            rejection.kind,
            RejectionKind::Invalid | RejectionKind::Policy
        ) && known
            && !self.nodes.is_busy(cluster_id, node);
        self.reporter
            .node_task(cluster_id, node, &report, retain)
            .await;
    }
}

/// The node the bridge runs on, as far as it can tell (README: Node commands):
/// - this host's name is a node's name (case-insensitive, short name);
/// - the Proxmox URL is loopback (`localhost`, `127.0.0.1`, `::1`): the node answering
///   (`local` in `/cluster/status`);
/// - the address this host uses to reach the Proxmox URL is a node's `ip` in
///   `/cluster/status`.
///
/// `None` when none of these holds or `/cluster/status` cannot be read.
pub async fn host_node(client: &PveClient, view: &ClusterView) -> Option<String> {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let short = hostname.trim().split('.').next().unwrap_or_default();
    if !short.is_empty() {
        if let Some(node) = view.nodes.keys().find(|n| n.eq_ignore_ascii_case(short)) {
            return Some(node.clone());
        }
    }
    let rows = client.cluster_nodes().await.ok()?;
    let (host, port) = client.current_host()?;
    let addrs: Vec<IpAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map(|a| a.map(|s| s.ip()).collect())
        .unwrap_or_default();
    if host.eq_ignore_ascii_case("localhost") || addrs.iter().any(IpAddr::is_loopback) {
        return rows
            .iter()
            .find(|r| r.local == Some(true))
            .and_then(|r| r.name.clone());
    }
    let own: Vec<IpAddr> = addrs.iter().filter_map(|a| source_address(*a)).collect();
    rows.iter()
        .find(|r| {
            r.ip.as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .is_some_and(|ip| own.contains(&ip))
        })
        .and_then(|r| r.name.clone())
}

/// The local address the kernel picks to reach `to` (a UDP "connect" sends nothing).
fn source_address(to: IpAddr) -> Option<IpAddr> {
    let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect((to, 9)).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// Why a node command did not end `ok`.
#[derive(Debug, thiserror::Error)]
enum NodeRunError {
    #[error("{0}")]
    Proxmox(#[from] PveError),
    /// The bridge is stopping (the next run picks the command up).
    #[error("the bridge stopped before the end was seen")]
    Stopped,
    #[error("the bridge stopped while sending this command, before Proxmox answered: whether it ran is unknown; check node {0}'s task list")]
    Interrupted(String),
    #[error("{0}")]
    Timeout(String),
    #[error("Proxmox no longer knows task {upid}: {reason}")]
    TaskUnknown { upid: String, reason: String },
    #[error("node {node} has not answered the task status for {} min ({reason}); its outcome is unknown", after.as_secs() / 60)]
    NodeLost {
        node: String,
        after: Duration,
        reason: String,
    },
    #[error("{0}")]
    Exit(String),
}

/// What a node watch knows beforehand.
#[derive(Debug, Default)]
struct Watch {
    /// The node's boot time before the reboot, as the polls saw it.
    booted: Option<u64>,
    /// A reboot requested at this time (Unix seconds): any boot after it ends it.
    booted_after: Option<u64>,
    /// How much of the deadline an earlier run used.
    elapsed: Duration,
}

/// One accepted node command, or one an earlier run started (`resumed`).
pub(super) struct NodeRunner {
    pub cluster: String,
    pub node: String,
    pub command: NodeCommand,
    pub report: TaskReport,
    pub handle: ClusterHandle,
    pub reporter: Reporter,
    pub shutdown: CancellationToken,
    pub _guard: NodeGuard,
    /// Picked up after a restart: no POST, only the rest of the follow
    /// ([`super::node_resume`]).
    pub resumed: bool,
}

impl NodeRunner {
    async fn publish(&self) {
        self.reporter
            .node_task(&self.cluster, &self.node, &self.report, true)
            .await;
    }

    pub(super) async fn run(mut self) {
        if !self.resumed {
            if let Some(rejection) = self.refused().await {
                warn!(cluster = %self.cluster, node = %self.node, reason = %rejection, "node command rejected");
                // This command's own fault, for a known node whose slot it holds: it
                // becomes the node's report, as the inbox's rejections do.
                let report = TaskReport::rejected(
                    self.command.id.clone(),
                    self.command.action.as_str(),
                    &rejection.reason,
                );
                self.reporter
                    .node_task(&self.cluster, &self.node, &report, true)
                    .await;
                return;
            }
        }
        if self.resumed {
            info!(cluster = %self.cluster, node = %self.node, action = %self.command.action, upid = self.report.upid.as_deref().unwrap_or(""), "following a node command an earlier run started");
        } else {
            self.publish().await;
            info!(cluster = %self.cluster, node = %self.node, action = %self.command.action, "node command accepted");
        }
        let result = if self.resumed {
            self.pick_up().await
        } else {
            self.execute().await
        };
        if let Err(NodeRunError::Stopped) = result {
            // The retained report stays `running`: the next run follows it to its end.
            info!(cluster = %self.cluster, node = %self.node, upid = self.report.upid.as_deref().unwrap_or(""),
                  "bridge stopping: the node command's end will be reported after the restart");
            return;
        }
        self.report.finished = Some(unix_now());
        match result {
            Ok(()) => {
                self.report.state = Phase::Ok;
                self.report.error = None;
                info!(cluster = %self.cluster, node = %self.node, action = %self.command.action, "node command finished ok");
            }
            Err(err) => {
                self.report.state = Phase::Failed;
                self.report.error = Some(err.to_string());
                warn!(cluster = %self.cluster, node = %self.node, action = %self.command.action, error = %err, "node command failed");
            }
        }
        let _ = self.handle.refresh.try_send(Refresh::default());
        self.publish().await;
    }

    /// The safety rules, with the node the bridge runs on (read from `/cluster/status`
    /// unless the host name tells) and the latest view: reboot and shutdown without
    /// `force` only.
    async fn refused(&self) -> Option<Rejection> {
        if !self.command.action.powers_off() || self.command.forced() {
            return None;
        }
        let view = self.handle.view.borrow().clone()?;
        let host = host_node(&self.handle.client, &view).await;
        let view = self.handle.view.borrow().clone().unwrap_or(view);
        check_safety(&view, &self.node, &self.command, host.as_deref()).err()
    }

    async fn execute(&mut self) -> Result<(), NodeRunError> {
        let client = self.handle.client.clone();
        let action = self.command.action;
        match action {
            NodeAction::Reboot | NodeAction::Shutdown => {
                let booted = self.booted();
                client.node_power(&self.node, action.as_str()).await?;
                self.running(None).await;
                let watch = Watch {
                    booted,
                    ..Watch::default()
                };
                self.watch_node(action, watch).await
            }
            NodeAction::WakeOnLan => {
                let mac = client.wake_on_lan(&self.node).await?;
                info!(node = %self.node, mac = %mac, via = %client.current_url(), "Wake-on-LAN packet sent");
                self.running(None).await;
                self.watch_node(action, Watch::default()).await
            }
            NodeAction::StartAll | NodeAction::StopAll | NodeAction::SuspendAll => {
                let upid = client
                    .node_bulk(&self.node, action.as_str(), &self.command.bulk_form())
                    .await?;
                self.running(Some(&upid)).await;
                self.finish_bulk(&upid).await
            }
        }
    }

    /// The rest of a command an earlier run started: a bulk task is followed by its
    /// UPID; reboot, shutdown and Wake-on-LAN are watched for what remains of their
    /// deadline (a reboot is done once the node is online with a boot time after the
    /// request). `accepted` means that run stopped before Proxmox answered the POST.
    async fn pick_up(&mut self) -> Result<(), NodeRunError> {
        let action = self.command.action;
        if self.report.state != Phase::Running {
            return Err(NodeRunError::Interrupted(self.node.clone()));
        }
        if action.is_bulk() {
            let upid = self
                .report
                .upid
                .as_deref()
                .and_then(|u| u.parse::<Upid>().ok())
                .ok_or_else(|| NodeRunError::Interrupted(self.node.clone()))?;
            return self.finish_bulk(&upid).await;
        }
        let since_request = Duration::from_secs(unix_now().saturating_sub(self.report.requested));
        let watch = Watch {
            booted: None,
            booted_after: Some(self.report.requested),
            elapsed: since_request,
        };
        self.watch_node(action, watch).await
    }

    /// Follows a bulk task to its end: `ok` on `OK` or `WARNINGS: n`.
    async fn finish_bulk(&mut self, upid: &Upid) -> Result<(), NodeRunError> {
        let exit = self.follow(upid).await?;
        self.report.exitstatus = Some(exit.clone());
        if crate::pve::exitstatus_is_success(&exit) {
            Ok(())
        } else {
            Err(NodeRunError::Exit(exit))
        }
    }

    /// The node's boot time as the latest poll saw it.
    fn booted(&self) -> Option<u64> {
        self.handle
            .view
            .borrow()
            .as_ref()
            .and_then(|v| v.nodes.get(&self.node).and_then(|n| n.started))
    }

    async fn running(&mut self, upid: Option<&Upid>) {
        self.report.state = Phase::Running;
        self.report.upid = upid.map(|u| u.to_string());
        self.publish().await;
    }

    /// Follows a bulk task until it ends; its exit status.
    async fn follow(&self, upid: &Upid) -> Result<String, NodeRunError> {
        let started = tokio::time::Instant::now();
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            if !super::runner::pause_between_reads(started, &self.shutdown).await {
                return Err(NodeRunError::Stopped);
            }
            if started.elapsed() > BULK_DEADLINE {
                return Err(NodeRunError::Timeout(format!(
                    "gave up following the task after {} h",
                    BULK_DEADLINE.as_secs() / 3600
                )));
            }
            match self.handle.client.task_status(upid).await {
                Ok(status) if status.is_running() => failing_since = None,
                Ok(status) => {
                    return Ok(status
                        .exitstatus
                        .unwrap_or_else(|| "unexpected status".to_string()))
                }
                Err(err @ PveError::Api { status: 400, .. }) => {
                    return Err(NodeRunError::TaskUnknown {
                        upid: upid.to_string(),
                        reason: err.to_string(),
                    })
                }
                Err(err) => {
                    let now = tokio::time::Instant::now();
                    let since = *failing_since.get_or_insert(now);
                    if now - since >= STATUS_LOSS_LIMIT {
                        return Err(NodeRunError::NodeLost {
                            node: self.node.clone(),
                            after: now - since,
                            reason: err.to_string(),
                        });
                    }
                }
            }
        }
    }

    /// Watches the polls until the node is offline (shutdown), offline then online
    /// (reboot), or online (Wake-on-LAN), looking every second; asks the poller for a poll
    /// every 5 s.
    /// A reboot also counts as done when the node is online with another boot time than
    /// `watch.booted`, or one after `watch.booted_after` (a reboot quicker than the polls).
    async fn watch_node(&self, action: NodeAction, watch: Watch) -> Result<(), NodeRunError> {
        let deadline = match action {
            NodeAction::Shutdown => SHUTDOWN_DEADLINE,
            NodeAction::Reboot => REBOOT_DEADLINE,
            _ => WAKE_DEADLINE,
        };
        let give_up = tokio::time::Instant::now() + deadline.saturating_sub(watch.elapsed);
        let Watch {
            booted,
            booted_after,
            ..
        } = watch;
        let view = &self.handle.view;
        let mut seen_offline = false;
        let mut tick: u32 = 0;
        loop {
            let (online, rebooted) = view
                .borrow()
                .as_ref()
                .and_then(|v| v.nodes.get(&self.node))
                .map_or((None, false), |n| {
                    let rebooted = n.started.is_some()
                        && ((booted.is_some() && n.started != booted)
                            || booted_after.is_some_and(|t| n.started > Some(t)));
                    (Some(n.status == "online"), rebooted)
                });
            match (action, online) {
                (NodeAction::Shutdown, Some(false)) => return Ok(()),
                (NodeAction::Reboot, Some(false)) => seen_offline = true,
                (NodeAction::Reboot, Some(true)) if seen_offline || rebooted => return Ok(()),
                (NodeAction::WakeOnLan, Some(true)) => return Ok(()),
                _ => {}
            }
            if tokio::time::Instant::now() > give_up {
                let minutes = deadline.as_secs() / 60;
                let node = &self.node;
                return Err(NodeRunError::Timeout(match action {
                    NodeAction::Shutdown => format!("Proxmox accepted the shutdown, but node {node} was still online {minutes} min later"),
                    NodeAction::Reboot if seen_offline => format!("node {node} went down but was not back online {minutes} min after the reboot"),
                    NodeAction::Reboot => format!("Proxmox accepted the reboot, but node {node} was not seen offline within {minutes} min"),
                    _ => format!("node {node} was not online {minutes} min after the Wake-on-LAN packet: is Wake-on-LAN enabled in its firmware and the MAC right?"),
                }));
            }
            if tick % 5 == 0 {
                let _ = self.handle.refresh.try_send(Refresh::default());
            }
            tick += 1;
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(NodeRunError::Stopped),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_takes_one_command_at_a_time_and_frees_its_slot_on_drop() {
        let slots = NodeSlots::default();
        let guard = slots.claim("home", "pve1").expect("free");
        assert!(slots.claim("home", "pve1").is_none());
        assert!(slots.claim("home", "pve2").is_some());
        assert!(slots.is_busy("home", "pve1"));
        drop(guard);
        assert!(!slots.is_busy("home", "pve1"));
    }

    #[test]
    fn a_node_command_dropped_on_a_full_queue_gets_a_live_rejection_with_its_id() {
        let msg = overloaded_node(
            "home".into(),
            "pve1".into(),
            br#"{"action":"stopall","id":"q"}"#,
        );
        match msg {
            PublisherMsg::NodeTask {
                node,
                report,
                retain,
                ..
            } => {
                assert_eq!(node, "pve1");
                assert!(!retain);
                assert_eq!(report.state, Phase::Rejected);
                assert_eq!(report.action, "stopall");
                assert_eq!(report.id.as_deref(), Some("q"));
                assert!(report.error.unwrap().contains("overloaded"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_source_address_towards_loopback_is_loopback() {
        let ip = source_address("127.0.0.1".parse().unwrap()).expect("an address");
        assert!(ip.is_loopback());
    }
}
