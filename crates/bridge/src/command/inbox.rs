//! Inbound dispatch: `…/set` commands, the broker's retained `…/task` reports of an
//! earlier run, and bridge requests. Everything is validated here, before any POST: the
//! payload ([`super::parse`], [`super::requests`]), the rate limit, the policy, and the
//! guest's busy slot. An accepted job goes to its own [`Runner`] task.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::busy::BusySet;
use super::links::{cluster, response_body, ClusterHandle, Registry, Reporter};
use super::parse::{parse, parse_fields, Action, Command, Rejection, RejectionKind};
use super::policy::{authorize, authorize_action};
use super::ratelimit::RateLimiter;
use super::report::{unix_now, Phase, TaskReport};
use super::requests::{
    transaction_of, BackupRequest, BackupTargets, CommandRequest, Request, Vmid,
};
use super::resume::PendingResume;
use super::runner::{Job, Reply, Runner, Target};
use crate::config::{BackupConfig, CommandsConfig};
use crate::ha::topics::Topics;
use crate::model::{ClusterView, GuestState};
use crate::mqtt::Inbound;
use crate::poller::Refresh;
use crate::publisher::PublisherMsg;
use crate::pve::GuestKind;

/// Why a command request was not started.
enum Refused {
    /// Answered with this error.
    Answer(String),
    /// Over the rate limit: answered only by the first refusal of its window.
    RateLimited(Option<String>),
}

/// The reason a retained command gets.
const RETAINED_COMMAND: &str = "retained command ignored: publish commands without the retain flag (a retained command would replay at every reconnect); the bridge cleared it from the broker";

/// The error a retained request gets.
const RETAINED_REQUEST: &str = "retained request ignored: publish requests without the retain flag (a retained request would replay at every reconnect); the bridge cleared it from the broker";

/// The reason a command dropped on a full command queue gets.
pub const OVERLOADED: &str = "the bridge is overloaded: its command queue is full, so this command was dropped unread; send it again later";

/// The answer to a command or request that the MQTT event loop could not queue for the
/// command handler (the queue was full): a `rejected` notice on the guest's `…/task`
/// (not retained) or an error response with the request's transaction. `None` for
/// anything else (an earlier run's `…/task`, a clear). Built on the event loop, so it
/// only reads what it must: the topic, and the payload's `id` or `transaction`.
pub fn overloaded(topics: &Topics, msg: &Inbound) -> Option<PublisherMsg> {
    if msg.payload.is_empty() {
        return None;
    }
    if let Some((cluster, kind, vmid)) = topics.parse_command(&msg.topic) {
        let (id, action) = match parse(&msg.payload, kind) {
            Ok(c) => (c.id, c.action.as_str()),
            Err((id, _)) => (id, "unknown"),
        };
        let report = TaskReport::rejected(id, action, OVERLOADED);
        return Some(PublisherMsg::TaskNotice {
            cluster,
            kind,
            vmid,
            report,
        });
    }
    if let Some((cluster, node)) = topics.parse_node_command(&msg.topic) {
        return Some(super::node_run::overloaded_node(
            cluster,
            node,
            &msg.payload,
        ));
    }
    let name = topics.parse_bridge_request(&msg.topic)?;
    Some(PublisherMsg::Response {
        name: name.to_string(),
        body: response_body(transaction_of(&msg.payload), Err(OVERLOADED.into())),
    })
}

/// The command task: one at a time through the inbox, runners in parallel.
pub struct CommandHandler {
    topics: Topics,
    pub(super) policy: CommandsConfig,
    backup: BackupConfig,
    pub(super) registry: Registry,
    pub(super) reporter: Reporter,
    /// (cluster, vmid) with a command in flight.
    pub(super) busy: BusySet,
    pub(super) runners: TaskTracker,
    pub(super) limiter: RateLimiter,
    /// When the last "rate limited" warning was logged (one per 10 s at most).
    last_limit_log: Option<Instant>,
    pub(super) pending_resumes: Vec<PendingResume>,
    pub(super) pending_node_resumes: Vec<super::node_resume::PendingNodeResume>,
    /// Nodes with a command in flight (`node_run`).
    pub(super) nodes: super::node_run::NodeSlots,
}

impl CommandHandler {
    pub fn new(
        topics: Topics,
        policy: CommandsConfig,
        backup: BackupConfig,
        registry: Registry,
        publisher: mpsc::Sender<PublisherMsg>,
    ) -> Self {
        CommandHandler {
            topics,
            policy,
            backup,
            registry,
            reporter: Reporter(publisher),
            busy: BusySet::default(),
            runners: TaskTracker::new(),
            limiter: RateLimiter::new(Instant::now()),
            last_limit_log: None,
            pending_resumes: Vec::new(),
            pending_node_resumes: Vec::new(),
            nodes: Default::default(),
        }
    }

    pub async fn run(mut self, mut inbox: mpsc::Receiver<Inbound>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tick.tick(), if !self.pending_resumes.is_empty() || !self.pending_node_resumes.is_empty() => {
                    self.try_resumes(&shutdown);
                    self.try_node_resumes(&shutdown);
                }
                msg = inbox.recv() => match msg {
                    Some(msg) => self.handle(msg, &shutdown).await,
                    None => break,
                },
            }
        }
        self.runners.close();
        // In-flight runners see the same shutdown token and stop following.
        let _ = tokio::time::timeout(super::runner::STOP_GRACE, self.runners.wait()).await;
    }

    /// One inbound message. Commands and requests are never executed when they arrive
    /// retained: the broker hands those over at (re)subscribe time, so they are old,
    /// and running them would replay them at every reconnect (SPEC §4, §7). Every one the
    /// bridge decides on is then cleared from the broker with an empty retained message
    /// on its topic: a live message may have been published with the retain flag (the
    /// broker clears the flag on the way to a subscriber, so the bridge cannot tell),
    /// and its retained copy must not come back. Clearing costs one small publish and
    /// works on every MQTT 3.1.1 broker, with or without persistence.
    pub(super) async fn handle(&mut self, msg: Inbound, shutdown: &CancellationToken) {
        if let Some((cluster, kind, vmid)) = self.topics.parse_command(&msg.topic) {
            // An empty message is how MQTT clears a retained one (the bridge itself does
            // so after every command); it is never a command.
            if msg.payload.is_empty() {
                return;
            }
            let decided = if msg.retain {
                self.retained_command(&cluster, kind, vmid, &msg.payload)
                    .await;
                true
            } else {
                self.set_topic(&cluster, kind, vmid, &msg.payload, shutdown)
                    .await
            };
            if decided {
                self.reporter.clear_command(&cluster, kind, vmid).await;
            }
        } else if let Some((cluster, node)) = self.topics.parse_node_command(&msg.topic) {
            self.node_set(&cluster, &node, &msg.payload, msg.retain, shutdown)
                .await;
        } else if let Some((cluster, kind, vmid)) = self.topics.parse_task(&msg.topic) {
            // Only the broker's retained copy (at connect) can be an earlier run's task.
            if msg.retain {
                if let Ok(report) = serde_json::from_slice::<TaskReport>(&msg.payload) {
                    if matches!(report.state, Phase::Accepted | Phase::Running) {
                        self.pending_resumes.push(PendingResume {
                            cluster,
                            kind,
                            vmid,
                            report,
                        });
                        self.try_resumes(shutdown);
                    }
                }
            }
        } else if let Some((cluster, node)) = self.topics.parse_node_task(&msg.topic) {
            self.node_task_report(cluster, node, &msg.payload, msg.retain, shutdown);
        } else if let Some(name) = self.topics.parse_bridge_request(&msg.topic) {
            // Empty: a clear, as on `…/set` (send `{}` for a request without fields).
            if msg.payload.is_empty() {
                return;
            }
            let name = name.to_string();
            let decided = if msg.retain {
                self.retained_request(&name, &msg.payload).await;
                true
            } else {
                self.request(&name, &msg.payload, shutdown).await
            };
            if decided {
                self.reporter.clear_request(&name).await;
            }
        }
    }

    /// A retained `…/set`: rejected for live subscribers only (the guest's retained
    /// `…/task` keeps its latest real command), never run, and no rate-limit token spent:
    /// a broker may hold any number of them at connect, and each must be cleared.
    async fn retained_command(
        &mut self,
        cluster: &str,
        kind: GuestKind,
        vmid: u32,
        payload: &[u8],
    ) {
        let (id, action) = match parse(payload, kind) {
            Ok(c) => (c.id, Some(c.action)),
            Err((id, _)) => (id, None),
        };
        let rejection = Rejection::new(RejectionKind::Retained, RETAINED_COMMAND);
        self.reject(cluster, kind, vmid, id, &rejection, action)
            .await;
    }

    /// A retained `bridge/request/{name}`: answered with an error (with its transaction,
    /// not retained), never run.
    async fn retained_request(&self, name: &str, payload: &[u8]) {
        warn!(request = name, "retained request ignored");
        self.reporter
            .respond(name, transaction_of(payload), Err(RETAINED_REQUEST.into()))
            .await;
    }

    /// `{base}/{c}/{kind}/{vmid}/set`, live. `false` when the rate limiter refused it:
    /// then it is not cleared either (a flood costs no publish per message; a retained
    /// copy, if any, is rejected and cleared at the next connect).
    async fn set_topic(
        &mut self,
        cluster: &str,
        kind: GuestKind,
        vmid: u32,
        payload: &[u8],
        shutdown: &CancellationToken,
    ) -> bool {
        let id_of = |payload: &[u8]| parse(payload, kind).map_or_else(|(id, _)| id, |c| c.id);
        if let Err(refusal) = self.limiter.check(cluster, vmid, Instant::now()) {
            self.log_rate_limited(cluster, vmid, &refusal.reason);
            if refusal.notify {
                let rejection = Rejection::new(RejectionKind::RateLimited, refusal.reason);
                self.reject(cluster, kind, vmid, id_of(payload), &rejection, None)
                    .await;
            }
            return false;
        }
        let checked = Vmid::new(vmid.into())
            .map_err(Rejection::invalid)
            .and_then(|_| parse(payload, kind).map_err(|(_, r)| r));
        let command = match checked {
            Ok(c) => c,
            Err(rejection) => {
                let id = id_of(payload);
                self.reject(cluster, kind, vmid, id, &rejection, None).await;
                return true;
            }
        };
        let _ = self
            .submit(cluster, kind, vmid, command, None, shutdown)
            .await;
        true
    }

    /// A command over the rate limit is logged at most once per 10 s, so a flood cannot
    /// flood the log too.
    fn log_rate_limited(&mut self, cluster: &str, vmid: u32, reason: &str) {
        let now = Instant::now();
        if self
            .last_limit_log
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(10))
        {
            warn!(cluster, vmid, reason = %reason, "commands rate limited");
            self.last_limit_log = Some(now);
        }
    }

    /// Reports a rejection: on the guest's retained `…/task` when it is about a real new
    /// command for that guest, else to live subscribers only (see [`Self::replaces_report`]).
    async fn reject(
        &self,
        cluster: &str,
        kind: GuestKind,
        vmid: u32,
        id: Option<String>,
        rejection: &Rejection,
        action: Option<Action>,
    ) {
        if rejection.kind != RejectionKind::RateLimited {
            warn!(cluster, vmid, %kind, reason = %rejection, "command rejected");
        }
        let action = action.map(|a| a.as_str()).unwrap_or("unknown");
        let report = TaskReport::rejected(id, action, &rejection.reason);
        if self.replaces_report(cluster, kind, vmid, rejection) {
            self.reporter.task(cluster, kind, vmid, &report).await;
        } else {
            self.reporter.notice(cluster, kind, vmid, &report).await;
        }
    }

    /// Whether a rejection becomes the guest's retained `…/task` report (SPEC §4:
    /// anything that fails gets a `rejected` result). Only the fault of a live command
    /// itself (malformed, refused by the policy) for a known guest with no command
    /// running does. A retained replay, `busy` and `rate limited` are not about a new
    /// command and would bury the report of the real one (a `running` task, an `ok`);
    /// an unknown cluster or guest has no report to replace, and retaining one there
    /// would leave junk on the broker for every topic a client invents.
    fn replaces_report(
        &self,
        cluster: &str,
        kind: GuestKind,
        vmid: u32,
        rejection: &Rejection,
    ) -> bool {
        matches!(
            rejection.kind,
            RejectionKind::Invalid | RejectionKind::Policy
        ) && self.lookup(cluster, Some(kind), vmid).is_ok()
            && !self.busy.is_busy(cluster, vmid)
    }

    /// The cluster's handle and its latest view; `unknown` before its first poll.
    pub(super) fn polled(
        &self,
        cluster_id: &str,
    ) -> Result<(ClusterHandle, std::sync::Arc<ClusterView>), Rejection> {
        let unknown = |reason: String| Rejection::new(RejectionKind::Unknown, reason);
        let handle = cluster(&self.registry, cluster_id)
            .ok_or_else(|| unknown(format!("unknown cluster '{cluster_id}'")))?;
        let Some(view) = handle.view.borrow().clone() else {
            return Err(unknown(format!(
                "cluster '{cluster_id}' not polled yet: Proxmox has not answered since the bridge started"
            )));
        };
        Ok((handle, view))
    }

    /// The cluster's handle and the guest as the latest poll saw it.
    fn lookup(
        &self,
        cluster_id: &str,
        kind: Option<GuestKind>,
        vmid: u32,
    ) -> Result<(ClusterHandle, GuestState), Rejection> {
        let (handle, view) = self.polled(cluster_id)?;
        let unknown = |reason: String| Rejection::new(RejectionKind::Unknown, reason);
        let guest = view
            .guests
            .get(&vmid)
            .filter(|g| kind.is_none_or(|k| g.kind == k))
            .map(|g| GuestState::clone(g))
            .ok_or_else(|| unknown(format!("unknown guest {vmid} in cluster '{cluster_id}'")))?;
        Ok((handle, guest))
    }

    fn default_cluster(&self) -> Option<String> {
        let registry = self.registry.read().unwrap_or_else(|e| e.into_inner());
        (registry.len() == 1)
            .then(|| registry.keys().next().cloned())
            .flatten()
    }

    fn busy_rejection(vmid: u32) -> Rejection {
        Rejection::new(
            RejectionKind::Busy,
            format!("busy: another command for {vmid} is still running"),
        )
    }

    /// Validates and, when everything holds, starts a runner. A rejection is reported
    /// on the guest's `…/task` topic here and returned for a request's response.
    async fn submit(
        &mut self,
        cluster: &str,
        kind: GuestKind,
        vmid: u32,
        command: Command,
        reply: Option<Reply>,
        shutdown: &CancellationToken,
    ) -> Result<(), Rejection> {
        let checked = self
            .lookup(cluster, Some(kind), vmid)
            .and_then(|(handle, guest)| {
                authorize(&self.policy, &guest)?;
                authorize_action(&self.policy, command.action)?;
                let busy = self
                    .busy
                    .claim(cluster, vmid)
                    .ok_or_else(|| Self::busy_rejection(vmid))?;
                Ok((handle, guest, busy))
            });
        let (handle, guest, busy) = match checked {
            Ok(ok) => ok,
            Err(rejection) => {
                let id = command.id.clone();
                self.reject(cluster, kind, vmid, id, &rejection, Some(command.action))
                    .await;
                return Err(rejection);
            }
        };
        let report = TaskReport::new(command.id.clone(), command.action.as_str(), unix_now());
        let job = Job {
            cluster: cluster.to_string(),
            node: guest.node.to_string(),
            command,
            targets: vec![Target { kind, vmid, report }],
            reply,
            resume: None,
            busy: vec![busy],
        };
        self.spawn(handle, job, shutdown);
        Ok(())
    }

    pub(super) fn spawn(&self, handle: ClusterHandle, job: Job, shutdown: &CancellationToken) {
        let runner = Runner {
            reporter: self.reporter.clone(),
            busy: self.busy.clone(),
            backup: self.backup.clone(),
            handle,
            shutdown: shutdown.clone(),
        };
        self.runners.spawn(runner.run(job));
    }

    /// `{base}/bridge/request/{name}` → `{base}/bridge/response/{name}`, live. `false`
    /// when the rate limiter refused it (not cleared, as for `…/set`).
    async fn request(&mut self, name: &str, payload: &[u8], shutdown: &CancellationToken) -> bool {
        let request = match Request::parse(name, payload) {
            Ok(request) => request,
            Err(bad) => {
                self.reporter
                    .respond(name, bad.transaction, Err(bad.reason))
                    .await;
                return true;
            }
        };
        match request {
            Request::Refresh(r) => {
                let cluster = r.cluster.or_else(|| self.default_cluster());
                let registry = self
                    .registry
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let mut refreshed = Vec::new();
                for (id, handle) in registry {
                    if cluster.as_deref().is_none_or(|c| c == id) {
                        let _ = handle.refresh.try_send(Refresh::default());
                        refreshed.push(id);
                    }
                }
                let result = if refreshed.is_empty() {
                    Err("no such cluster".to_string())
                } else {
                    refreshed.sort();
                    Ok(json!({ "refreshed": refreshed }))
                };
                self.reporter.respond(name, r.transaction, result).await;
            }
            Request::Command(r) => {
                let transaction = r.transaction.clone();
                match self.command_request(name, r, shutdown).await {
                    Ok(()) => {}
                    Err(Refused::Answer(reason)) => {
                        self.reporter.respond(name, transaction, Err(reason)).await
                    }
                    Err(Refused::RateLimited(answer)) => {
                        if let Some(reason) = answer {
                            self.reporter.respond(name, transaction, Err(reason)).await;
                        }
                        return false;
                    }
                }
            }
            Request::Backup(r) => {
                let transaction = r.transaction.clone();
                if let Err(reason) = self.backup_request(name, r, shutdown) {
                    self.reporter.respond(name, transaction, Err(reason)).await;
                }
            }
        }
        true
    }

    /// One command for a guest named by vmid alone.
    async fn command_request(
        &mut self,
        name: &str,
        r: CommandRequest,
        shutdown: &CancellationToken,
    ) -> Result<(), Refused> {
        let cluster = r
            .cluster
            .or_else(|| self.default_cluster())
            .ok_or_else(|| Refused::Answer("several clusters: name one with \"cluster\"".into()))?;
        let vmid = r.vmid.get();
        if let Err(refusal) = self.limiter.check(&cluster, vmid, Instant::now()) {
            self.log_rate_limited(&cluster, vmid, &refusal.reason);
            return Err(Refused::RateLimited(
                refusal.notify.then_some(refusal.reason),
            ));
        }
        let (_, guest) = self
            .lookup(&cluster, None, vmid)
            .map_err(|r| Refused::Answer(r.reason))?;
        let kind = guest.kind;
        let command = match parse_fields(&r.command, kind) {
            Ok(c) => c,
            Err((id, rejection)) => {
                self.reject(&cluster, kind, vmid, id, &rejection, None)
                    .await;
                return Err(Refused::Answer(rejection.reason));
            }
        };
        let reply = Reply {
            name: name.to_string(),
            transaction: r.transaction,
        };
        self.submit(&cluster, kind, vmid, command, Some(reply), shutdown)
            .await
            .map_err(|r| Refused::Answer(r.reason))
    }

    /// Backs up several guests: grouped per node into one vzdump each (Proxmox runs one
    /// vzdump per node at a time anyway). All-or-nothing validation.
    fn backup_request(
        &mut self,
        name: &str,
        r: BackupRequest,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let cluster_id = r
            .cluster
            .or_else(|| self.default_cluster())
            .ok_or("several clusters: name one with \"cluster\"")?;
        let handle = cluster(&self.registry, &cluster_id)
            .ok_or_else(|| format!("unknown cluster '{cluster_id}'"))?;
        let view = handle
            .view
            .borrow()
            .clone()
            .ok_or("cluster not polled yet")?;
        let guests: Vec<&GuestState> = match &r.vmids {
            BackupTargets::All => view
                .guests
                .values()
                .map(|g| &**g)
                .filter(|g| !g.template)
                .collect(),
            BackupTargets::List(list) => list
                .iter()
                .map(|vmid| {
                    view.guests
                        .get(&vmid.get())
                        .map(|g| &**g)
                        .ok_or(format!("unknown guest {vmid}"))
                })
                .collect::<Result<_, _>>()?,
        };
        let mut options = r.options;
        options.insert("action".into(), "backup".into());
        let command = parse_fields(&options, GuestKind::Qemu).map_err(|(_, r)| r.reason)?;
        for g in &guests {
            authorize(&self.policy, g).map_err(|r| r.reason)?;
        }
        let vmids: Vec<u32> = guests.iter().map(|g| g.vmid).collect();
        let mut busy = self
            .busy
            .claim_all(&cluster_id, &vmids)
            .map_err(|vmid| Self::busy_rejection(vmid).reason)?;
        let mut per_node: HashMap<String, Job> = HashMap::new();
        for g in guests {
            let job = per_node.entry(g.node.to_string()).or_insert_with(|| Job {
                cluster: cluster_id.clone(),
                node: g.node.to_string(),
                command: command.clone(),
                targets: Vec::new(),
                // One response per node job; each carries its node and guests.
                reply: Some(Reply {
                    name: name.to_string(),
                    transaction: r.transaction.clone(),
                }),
                resume: None,
                busy: Vec::new(),
            });
            job.targets.push(Target {
                kind: g.kind,
                vmid: g.vmid,
                report: TaskReport::new(command.id.clone(), "backup", unix_now()),
            });
            if let Some(i) = busy.iter().position(|b| b.vmid() == g.vmid) {
                job.busy.push(busy.swap_remove(i));
            }
        }
        let jobs = per_node.len();
        for job in per_node.into_values() {
            self.spawn(handle.clone(), job, shutdown);
        }
        info!(cluster = %cluster_id, jobs, "backup request accepted");
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::Config;

    pub(crate) const CONFIG: &str = r#"
[proxmox]
url = "https://127.0.0.1:8006"
token = "root@pam!pve2mqtt=5ec12e7a-0000-4000-8000-000000000001"

[mqtt]
url = "mqtt://127.0.0.1:1883"
"#;

    /// A handler with no cluster registered yet, and what it sends to the publisher.
    pub(crate) fn handler() -> (CommandHandler, mpsc::Receiver<PublisherMsg>) {
        let config = Config::from_toml_str(CONFIG, &Default::default()).expect("test config");
        let (tx, rx) = mpsc::channel(16);
        let handler = CommandHandler::new(
            Topics::new("pve2mqtt", "homeassistant"),
            config.commands,
            config.backup,
            Registry::default(),
            tx,
        );
        (handler, rx)
    }

    fn inbound(topic: &str, payload: &str, retain: bool) -> Inbound {
        Inbound {
            topic: topic.into(),
            payload: payload.into(),
            retain,
        }
    }

    #[tokio::test]
    async fn a_retained_command_is_rejected_and_cleared_never_run() {
        let (mut h, mut rx) = handler();
        let msg = inbound(
            "pve2mqtt/home/qemu/100/set",
            r#"{"action":"stop","id":"r"}"#,
            true,
        );
        h.handle(msg, &CancellationToken::new()).await;
        match rx.try_recv() {
            Ok(PublisherMsg::TaskNotice {
                cluster,
                vmid: 100,
                report,
                ..
            }) => {
                assert_eq!(cluster, "home");
                assert_eq!(report.state, Phase::Rejected);
                assert_eq!(report.id.as_deref(), Some("r"));
                assert!(report.error.unwrap().contains("retained"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            rx.try_recv(),
            Ok(PublisherMsg::ClearCommand {
                vmid: 100,
                kind: GuestKind::Qemu,
                ..
            })
        ));
        assert!(rx.try_recv().is_err(), "nothing else");
    }

    #[tokio::test]
    async fn a_command_for_a_cluster_not_known_yet_is_rejected_with_the_reason() {
        let (mut h, mut rx) = handler();
        let msg = inbound("pve2mqtt/home/lxc/101/set", "start", false);
        h.handle(msg, &CancellationToken::new()).await;
        match rx.try_recv() {
            Ok(PublisherMsg::TaskNotice { report, .. }) => {
                assert_eq!(report.state, Phase::Rejected);
                assert_eq!(report.action, "start");
                assert!(report.error.unwrap().contains("unknown cluster 'home'"));
            }
            other => panic!("{other:?}"),
        }
        assert!(!h.busy.is_busy("home", 101), "a rejection holds no slot");
        assert!(
            matches!(
                rx.try_recv(),
                Ok(PublisherMsg::ClearCommand { vmid: 101, .. })
            ),
            "a live command is cleared from the broker once decided"
        );
        assert!(rx.try_recv().is_err(), "nothing else");
    }

    #[tokio::test]
    async fn a_retained_request_is_answered_with_an_error_and_cleared_never_run() {
        let (mut h, mut rx) = handler();
        let msg = inbound(
            "pve2mqtt/bridge/request/refresh",
            r#"{"transaction":"t-old"}"#,
            true,
        );
        h.handle(msg, &CancellationToken::new()).await;
        match rx.try_recv() {
            Ok(PublisherMsg::Response { name, body }) => {
                assert_eq!(name, "refresh");
                assert_eq!(body["status"], "error");
                assert_eq!(body["transaction"], "t-old");
                assert!(body["error"].as_str().unwrap().contains("retained"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            rx.try_recv(),
            Ok(PublisherMsg::ClearRequest { name }) if name == "refresh"
        ));
        assert!(rx.try_recv().is_err(), "nothing else");
    }

    #[tokio::test]
    async fn empty_messages_are_clears_not_commands_or_requests() {
        let (mut h, mut rx) = handler();
        for topic in [
            "pve2mqtt/home/qemu/100/set",
            "pve2mqtt/bridge/request/refresh",
        ] {
            h.handle(inbound(topic, "", false), &CancellationToken::new())
                .await;
        }
        assert!(rx.try_recv().is_err(), "an empty message gets no answer");
    }

    #[tokio::test]
    async fn retained_commands_spend_no_rate_limit_tokens_and_are_all_cleared() {
        let (mut h, mut rx) = handler();
        for i in 0..100u32 {
            let msg = inbound(
                &format!("pve2mqtt/home/qemu/{}/set", 1000 + i),
                "stop",
                true,
            );
            h.handle(msg, &CancellationToken::new()).await;
            let report = match rx.try_recv() {
                Ok(PublisherMsg::TaskNotice { report, .. }) => report,
                other => panic!("{other:?}"),
            };
            assert!(report.error.unwrap().contains("retained"), "{i}");
            assert!(
                matches!(rx.try_recv(), Ok(PublisherMsg::ClearCommand { .. })),
                "{i}"
            );
        }
        assert!(h.limiter.check("home", 100, Instant::now()).is_ok());
    }

    #[tokio::test]
    async fn a_request_with_a_wrapping_vmid_is_answered_with_an_error_and_touches_no_guest() {
        let (mut h, mut rx) = handler();
        let msg = inbound(
            "pve2mqtt/bridge/request/command",
            r#"{"vmid":4294967396,"action":"stop","transaction":"w"}"#,
            false,
        );
        h.handle(msg, &CancellationToken::new()).await;
        match rx.try_recv() {
            Ok(PublisherMsg::Response { name, body }) => {
                assert_eq!(name, "command");
                assert_eq!(body["status"], "error");
                assert_eq!(body["transaction"], "w");
                assert!(body["error"].as_str().unwrap().contains("vmid must be"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            rx.try_recv(),
            Ok(PublisherMsg::ClearRequest { .. })
        ));
        assert!(rx.try_recv().is_err(), "no task report for any guest");
    }
}
