//! The command task: validation before any POST, one command at a time per guest, and
//! one runner task per accepted command that follows the Proxmox task to its end.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::parse::{parse, Action, Command, Rejection};
use super::policy::authorize;
use super::ratelimit::RateLimiter;
use super::report::{unix_now, BackupLog, Phase, TaskReport};
use crate::config::{BackupConfig, CommandsConfig};
use crate::ha::topics::Topics;
use crate::model::{ClusterView, GuestState};
use crate::mqtt::Inbound;
use crate::publisher::PublisherMsg;
use crate::pve::{GuestKind, PveClient, PveError, Upid, VzdumpStarted};

/// Asks a cluster's poller for an immediate fast poll.
#[derive(Clone, Debug, Default)]
pub struct Refresh {
    /// A guest's status read from `status/current` right after its task ended: the
    /// cluster-wide list can lag ~10 s behind on a real Proxmox.
    pub status_override: Option<(u32, String)>,
    /// Re-read backup storage content (a backup just finished).
    pub reread_backups: bool,
}

/// What the command side knows of one cluster.
#[derive(Clone)]
pub struct ClusterHandle {
    pub client: PveClient,
    /// The poller's latest view.
    pub view: watch::Receiver<Option<Arc<ClusterView>>>,
    pub refresh: mpsc::Sender<Refresh>,
}

/// Clusters by id, filled in by the pollers once they know their cluster's id.
pub type Registry = Arc<RwLock<HashMap<String, ClusterHandle>>>;

/// Where a bridge request wants its answer.
#[derive(Clone, Debug)]
struct Reply {
    name: String,
    transaction: Option<Value>,
}

/// One guest a runner reports on.
#[derive(Clone, Debug)]
struct Target {
    kind: GuestKind,
    vmid: u32,
    report: TaskReport,
}

pub struct CommandHandler {
    topics: Topics,
    policy: CommandsConfig,
    backup: BackupConfig,
    registry: Registry,
    publisher: mpsc::Sender<PublisherMsg>,
    /// (cluster, vmid) with a command in flight.
    busy: HashSet<(String, u32)>,
    done_tx: mpsc::UnboundedSender<Vec<(String, u32)>>,
    done_rx: mpsc::UnboundedReceiver<Vec<(String, u32)>>,
    runners: TaskTracker,
    limiter: RateLimiter,
    /// When the last "rate limited" warning was logged (one per 10 s at most).
    last_limit_log: Option<std::time::Instant>,
    /// Retained `accepted`/`running` reports of an earlier run, waiting for their cluster.
    pending_resumes: Vec<(String, GuestKind, u32, TaskReport)>,
}

impl CommandHandler {
    pub fn new(
        topics: Topics,
        policy: CommandsConfig,
        backup: BackupConfig,
        registry: Registry,
        publisher: mpsc::Sender<PublisherMsg>,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        CommandHandler {
            topics,
            policy,
            backup,
            registry,
            publisher,
            busy: HashSet::new(),
            done_tx,
            done_rx,
            runners: TaskTracker::new(),
            limiter: RateLimiter::new(std::time::Instant::now()),
            last_limit_log: None,
            pending_resumes: Vec::new(),
        }
    }

    pub async fn run(mut self, mut inbox: mpsc::Receiver<Inbound>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tick.tick(), if !self.pending_resumes.is_empty() => self.try_resumes(&shutdown),
                Some(done) = self.done_rx.recv() => {
                    for key in done {
                        self.busy.remove(&key);
                    }
                }
                msg = inbox.recv() => match msg {
                    Some(msg) => self.handle(msg, &shutdown).await,
                    None => break,
                },
            }
        }
        self.runners.close();
        // In-flight runners see the same shutdown token and stop following.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.runners.wait()).await;
    }

    async fn handle(&mut self, msg: Inbound, shutdown: &CancellationToken) {
        if let Some((cluster, kind, vmid)) = self.topics.parse_command(&msg.topic) {
            // An empty message is how MQTT clears a retained one (the bridge itself does
            // so below); it is never a command.
            if msg.payload.is_empty() {
                return;
            }
            if let Err(reason) = self
                .limiter
                .check(&cluster, vmid, std::time::Instant::now())
            {
                self.rate_limited(&cluster, kind, vmid, &msg.payload, reason)
                    .await;
                return;
            }
            if msg.retain {
                let (id, action) = match parse(&msg.payload, kind) {
                    Ok(c) => (c.id, Some(c.action)),
                    Err((id, _)) => (id, None),
                };
                self.reject(&cluster, kind, vmid, id, "retained command ignored: publish commands without the retain flag (a retained command would replay at every reconnect)".into(), action)
                    .await;
                // Clear it on the broker so it is not delivered again at every reconnect.
                self.send(PublisherMsg::Raw {
                    topic: msg.topic.clone(),
                    payload: String::new(),
                    retain: true,
                })
                .await;
                return;
            }
            let command = match parse(&msg.payload, kind) {
                Ok(c) => c,
                Err((id, rejection)) => {
                    self.reject(&cluster, kind, vmid, id, rejection.0, None)
                        .await;
                    return;
                }
            };
            self.submit(&cluster, kind, vmid, command, None, shutdown)
                .await;
        } else if let Some((cluster, kind, vmid)) = self.topics.parse_task(&msg.topic) {
            // Only the broker's retained copy (at connect) can be an earlier run's task.
            if msg.retain {
                if let Ok(report) = serde_json::from_slice::<TaskReport>(&msg.payload) {
                    if matches!(report.state, Phase::Accepted | Phase::Running) {
                        self.pending_resumes.push((cluster, kind, vmid, report));
                        self.try_resumes(shutdown);
                    }
                }
            }
        } else if let Some(name) = self
            .topics
            .parse_bridge_request(&msg.topic)
            .map(str::to_string)
        {
            self.request(&name, &msg.payload, shutdown).await;
        }
    }

    /// Picks up tasks an earlier run was following, once their cluster is known (the
    /// retained reports arrive at connect, usually before the first poll).
    fn try_resumes(&mut self, shutdown: &CancellationToken) {
        let pending = std::mem::take(&mut self.pending_resumes);
        for (cluster, kind, vmid, mut report) in pending {
            if self.busy.contains(&(cluster.clone(), vmid)) {
                continue; // this run is following it already
            }
            let Some(handle) = self
                .registry
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&cluster)
                .cloned()
            else {
                if report.requested + 24 * 3600 > unix_now() {
                    self.pending_resumes.push((cluster, kind, vmid, report));
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
                let topic = self.topics.task(&cluster, kind, vmid);
                let publisher = self.publisher.clone();
                tokio::spawn(async move {
                    let _ = publisher
                        .send(PublisherMsg::Raw {
                            topic,
                            payload: report.to_json(),
                            retain: true,
                        })
                        .await;
                });
                continue;
            };
            info!(cluster = %cluster, vmid, upid = %upid, "following a task an earlier run started");
            self.busy.insert((cluster.clone(), vmid));
            let job = Job {
                node: upid.node.clone(),
                cluster,
                command: Command::new(action),
                targets: vec![Target { kind, vmid, report }],
                reply: None,
                resume: Some(upid),
            };
            self.spawn(handle, job, shutdown);
        }
    }

    /// A command over the rate limit: rejected like any other, but logged at most once
    /// per 10 s so a flood cannot flood the log too.
    async fn rate_limited(
        &mut self,
        cluster: &str,
        kind: GuestKind,
        vmid: u32,
        payload: &[u8],
        reason: String,
    ) {
        let now = std::time::Instant::now();
        if self
            .last_limit_log
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(10))
        {
            warn!(cluster, vmid, reason = %reason, "commands rate limited");
            self.last_limit_log = Some(now);
        }
        let id = parse(payload, kind)
            .map(|c| c.id)
            .unwrap_or_else(|(id, _)| id);
        let mut report = TaskReport::new(id, "unknown", unix_now());
        report.state = Phase::Rejected;
        report.error = Some(reason);
        report.finished = Some(report.requested);
        self.send(PublisherMsg::Raw {
            topic: self.topics.task(cluster, kind, vmid),
            payload: report.to_json(),
            retain: true,
        })
        .await;
    }

    async fn send(&self, msg: PublisherMsg) {
        let _ = self.publisher.send(msg).await;
    }

    async fn reject(
        &self,
        cluster: &str,
        kind: GuestKind,
        vmid: u32,
        id: Option<String>,
        reason: String,
        action: Option<Action>,
    ) {
        warn!(cluster, vmid, %kind, reason = %reason, "command rejected");
        let mut report = TaskReport::new(
            id,
            action.map(|a| a.as_str()).unwrap_or("unknown"),
            unix_now(),
        );
        report.state = Phase::Rejected;
        report.error = Some(reason);
        report.finished = Some(report.requested);
        self.send(PublisherMsg::Raw {
            topic: self.topics.task(cluster, kind, vmid),
            payload: report.to_json(),
            retain: true,
        })
        .await;
    }

    /// The cluster's handle and the guest as the latest poll saw it.
    fn lookup(
        &self,
        cluster: &str,
        kind: Option<GuestKind>,
        vmid: u32,
    ) -> Result<(ClusterHandle, GuestState), Rejection> {
        let registry = self.registry.read().unwrap_or_else(|e| e.into_inner());
        let handle = registry
            .get(cluster)
            .ok_or_else(|| Rejection(format!("unknown cluster '{cluster}'")))?
            .clone();
        drop(registry);
        let Some(view) = handle.view.borrow().clone() else {
            return Err(Rejection(format!(
                "cluster '{cluster}' not polled yet: Proxmox has not answered since the bridge started"
            )));
        };
        let guest = Some(&view)
            .and_then(|v| v.guests.get(&vmid))
            .filter(|g| kind.is_none_or(|k| g.kind == k))
            .map(|g| GuestState::clone(g))
            .ok_or_else(|| Rejection(format!("unknown guest {vmid} in cluster '{cluster}'")))?;
        Ok((handle, guest))
    }

    fn default_cluster(&self) -> Option<String> {
        let registry = self.registry.read().unwrap_or_else(|e| e.into_inner());
        (registry.len() == 1)
            .then(|| registry.keys().next().cloned())
            .flatten()
    }

    /// Validates and, when everything holds, starts a runner. Returns the rejection text.
    async fn submit(
        &mut self,
        cluster: &str,
        kind: GuestKind,
        vmid: u32,
        command: Command,
        reply: Option<Reply>,
        shutdown: &CancellationToken,
    ) -> Option<String> {
        let checked = self
            .lookup(cluster, Some(kind), vmid)
            .and_then(|(handle, guest)| {
                authorize(&self.policy, &guest)?;
                if self.busy.contains(&(cluster.to_string(), vmid)) {
                    return Err(Rejection(format!(
                        "busy: another command for {vmid} is still running"
                    )));
                }
                Ok((handle, guest))
            });
        let (handle, guest) = match checked {
            Ok(ok) => ok,
            Err(rejection) => {
                self.reject(
                    cluster,
                    kind,
                    vmid,
                    command.id.clone(),
                    rejection.0.clone(),
                    Some(command.action),
                )
                .await;
                return Some(rejection.0);
            }
        };
        self.busy.insert((cluster.to_string(), vmid));
        let report = TaskReport::new(command.id.clone(), command.action.as_str(), unix_now());
        let job = Job {
            cluster: cluster.to_string(),
            node: guest.node.clone(),
            command,
            targets: vec![Target { kind, vmid, report }],
            reply,
            resume: None,
        };
        self.spawn(handle, job, shutdown);
        None
    }

    fn spawn(&self, handle: ClusterHandle, job: Job, shutdown: &CancellationToken) {
        let ctx = RunnerCtx {
            topics: self.topics.clone(),
            publisher: self.publisher.clone(),
            backup: self.backup.clone(),
            handle,
            done: self.done_tx.clone(),
            shutdown: shutdown.clone(),
        };
        self.runners.spawn(ctx.run(job));
    }

    /// `{base}/bridge/request/{name}` → `{base}/bridge/response/{name}`.
    async fn request(&mut self, name: &str, payload: &[u8], shutdown: &CancellationToken) {
        let parsed: Result<Map<String, Value>, String> =
            if payload.iter().all(u8::is_ascii_whitespace) {
                Ok(Map::new())
            } else if payload.len() > super::parse::MAX_PAYLOAD {
                Err("payload too large".into())
            } else {
                match serde_json::from_slice::<Value>(payload) {
                    Ok(Value::Object(o)) => Ok(o),
                    Ok(_) => Err("request must be a JSON object".into()),
                    Err(e) => Err(format!("request is not valid JSON: {e}")),
                }
            };
        let mut object = match parsed {
            Ok(o) => o,
            Err(e) => return self.respond(name, None, Err(e)).await,
        };
        let transaction = object.remove("transaction");
        let reply = Reply {
            name: name.to_string(),
            transaction: transaction.clone(),
        };
        let cluster = match object.remove("cluster") {
            Some(Value::String(c)) => Some(c),
            Some(_) => {
                return self
                    .respond(name, transaction, Err("cluster must be a string".into()))
                    .await
            }
            None => self.default_cluster(),
        };
        match name {
            "refresh" => {
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
                if refreshed.is_empty() {
                    return self
                        .respond(name, transaction, Err("no such cluster".into()))
                        .await;
                }
                refreshed.sort();
                self.respond(name, transaction, Ok(json!({ "refreshed": refreshed })))
                    .await;
            }
            "command" => {
                let Some(cluster) = cluster else {
                    return self
                        .respond(
                            name,
                            transaction,
                            Err("several clusters: name one with \"cluster\"".into()),
                        )
                        .await;
                };
                let Some(vmid) = object
                    .remove("vmid")
                    .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
                else {
                    return self
                        .respond(name, transaction, Err("missing or invalid \"vmid\"".into()))
                        .await;
                };
                let vmid = vmid as u32;
                if let Err(reason) = self
                    .limiter
                    .check(&cluster, vmid, std::time::Instant::now())
                {
                    return self.respond(name, transaction, Err(reason)).await;
                }
                let kind = match self.lookup(&cluster, None, vmid) {
                    Ok((_, guest)) => guest.kind,
                    Err(e) => return self.respond(name, transaction, Err(e.0)).await,
                };
                let body = Value::Object(object).to_string();
                let command = match parse(body.as_bytes(), kind) {
                    Ok(c) => c,
                    Err((id, rejection)) => {
                        self.reject(&cluster, kind, vmid, id, rejection.0.clone(), None)
                            .await;
                        return self.respond(name, transaction, Err(rejection.0)).await;
                    }
                };
                if let Some(reason) = self
                    .submit(&cluster, kind, vmid, command, Some(reply), shutdown)
                    .await
                {
                    self.respond(name, transaction, Err(reason)).await;
                }
            }
            "backup" => {
                let Some(cluster) = cluster else {
                    return self
                        .respond(
                            name,
                            transaction,
                            Err("several clusters: name one with \"cluster\"".into()),
                        )
                        .await;
                };
                match self.backup_request(&cluster, object, reply, shutdown) {
                    Ok(()) => {}
                    Err(reason) => self.respond(name, transaction, Err(reason)).await,
                }
            }
            other => {
                let other = other.to_string();
                self.respond(
                    &other,
                    transaction,
                    Err(format!(
                        "unknown request '{other}' (backup, refresh, command)"
                    )),
                )
                .await;
            }
        }
    }

    /// Backs up several guests: grouped per node into one vzdump each (Proxmox runs one
    /// vzdump per node at a time anyway). All-or-nothing validation.
    fn backup_request(
        &mut self,
        cluster: &str,
        mut object: Map<String, Value>,
        reply: Reply,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let handle = self
            .registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(cluster)
            .cloned()
            .ok_or_else(|| format!("unknown cluster '{cluster}'"))?;
        let view = handle
            .view
            .borrow()
            .clone()
            .ok_or("cluster not polled yet")?;
        let guests: Vec<&GuestState> = match object.remove("vmids") {
            Some(Value::String(s)) if s == "all" => view
                .guests
                .values()
                .map(|g| &**g)
                .filter(|g| !g.template)
                .collect(),
            Some(Value::Array(list)) if !list.is_empty() => {
                let mut out = Vec::new();
                for v in list {
                    let vmid = v.as_u64().ok_or("vmids must be numbers")? as u32;
                    out.push(
                        &**view
                            .guests
                            .get(&vmid)
                            .ok_or(format!("unknown guest {vmid}"))?,
                    );
                }
                out
            }
            _ => return Err("\"vmids\" must be a non-empty list or \"all\"".into()),
        };
        object.insert("action".into(), Value::from("backup"));
        let id = object
            .get("id")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let command = parse(
            Value::Object(object).to_string().as_bytes(),
            GuestKind::Qemu,
        )
        .map_err(|(_, r)| r.0)?;
        for g in &guests {
            authorize(&self.policy, g).map_err(|r| r.0)?;
            if self.busy.contains(&(cluster.to_string(), g.vmid)) {
                return Err(format!(
                    "busy: another command for {} is still running",
                    g.vmid
                ));
            }
        }
        let mut per_node: HashMap<String, Vec<Target>> = HashMap::new();
        for g in guests {
            self.busy.insert((cluster.to_string(), g.vmid));
            per_node.entry(g.node.clone()).or_default().push(Target {
                kind: g.kind,
                vmid: g.vmid,
                report: TaskReport::new(id.clone(), "backup", unix_now()),
            });
        }
        let jobs = per_node.len();
        for (node, targets) in per_node {
            let job = Job {
                cluster: cluster.to_string(),
                node,
                command: command.clone(),
                targets,
                // One response per node job; each carries its node and guests.
                reply: Some(reply.clone()),
                resume: None,
            };
            self.spawn(handle.clone(), job, shutdown);
        }
        info!(cluster, jobs, "backup request accepted");
        Ok(())
    }

    async fn respond(&self, name: &str, transaction: Option<Value>, result: Result<Value, String>) {
        respond(&self.topics, &self.publisher, name, transaction, result).await;
    }
}

async fn respond(
    topics: &Topics,
    publisher: &mpsc::Sender<PublisherMsg>,
    name: &str,
    transaction: Option<Value>,
    result: Result<Value, String>,
) {
    let body = match result {
        Ok(data) => {
            json!({"status": "ok", "data": data, "error": null, "transaction": transaction})
        }
        Err(error) => {
            json!({"status": "error", "data": null, "error": error, "transaction": transaction})
        }
    };
    let _ = publisher
        .send(PublisherMsg::Raw {
            topic: topics.bridge_response(name),
            payload: body.to_string(),
            retain: false,
        })
        .await;
}

/// One accepted command: a lifecycle action on one guest, or one node's vzdump.
struct Job {
    cluster: String,
    node: String,
    command: Command,
    targets: Vec<Target>,
    reply: Option<Reply>,
    /// A task an earlier run started and did not see end: follow it, POST nothing.
    resume: Option<Upid>,
}

struct RunnerCtx {
    topics: Topics,
    publisher: mpsc::Sender<PublisherMsg>,
    backup: BackupConfig,
    handle: ClusterHandle,
    done: mpsc::UnboundedSender<Vec<(String, u32)>>,
    shutdown: CancellationToken,
}

/// The runner's marker for "shutdown while following".
const STOPPED: &str = "the bridge stopped while following the task";

/// How long a task is followed before the bridge gives up on it.
fn deadline(action: Action) -> Duration {
    match action {
        // vzdump may wait up to 3 h for the node's lock, then run for hours.
        Action::Backup => Duration::from_secs(24 * 3600),
        _ => Duration::from_secs(15 * 60),
    }
}

impl RunnerCtx {
    async fn publish(&self, cluster: &str, target: &Target) {
        let _ = self
            .publisher
            .send(PublisherMsg::Raw {
                topic: self.topics.task(cluster, target.kind, target.vmid),
                payload: target.report.to_json(),
                retain: true,
            })
            .await;
    }

    async fn run(self, mut job: Job) {
        let keys: Vec<(String, u32)> = job
            .targets
            .iter()
            .map(|t| (job.cluster.clone(), t.vmid))
            .collect();
        for t in &job.targets {
            self.publish(&job.cluster, t).await;
        }
        info!(cluster = %job.cluster, node = %job.node, action = %job.command.action,
              vmids = ?job.targets.iter().map(|t| t.vmid).collect::<Vec<_>>(), "command accepted");
        let outcome = self.execute(&mut job).await;
        if matches!(&outcome, Err(e) if e == STOPPED) {
            // The task goes on in Proxmox. Its retained report stays `running` with the
            // UPID, and the next run of the bridge picks it up and reports its end.
            for t in &job.targets {
                info!(cluster = %job.cluster, vmid = t.vmid, upid = t.report.upid.as_deref().unwrap_or(""),
                      "bridge stopping: the task's end will be reported after the restart");
                self.publish(&job.cluster, t).await;
            }
            let _ = self.done.send(keys);
            return;
        }
        if let Err(error) = outcome {
            for t in &mut job.targets {
                if !t.report.state.is_final() {
                    t.report.state = Phase::Failed;
                    t.report.error = Some(error.clone());
                    t.report.finished = Some(unix_now());
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
            let data = json!({
                "cluster": job.cluster,
                "node": job.node,
                "results": job.targets.iter().map(|t| json!({"vmid": t.vmid, "type": t.kind, "task": t.report})).collect::<Vec<_>>(),
            });
            let result = if all_ok {
                Ok(data)
            } else {
                let errors: Vec<String> = job
                    .targets
                    .iter()
                    .filter_map(|t| t.report.error.as_ref().map(|e| format!("{}: {e}", t.vmid)))
                    .collect();
                Err(errors.join("; "))
            };
            respond(
                &self.topics,
                &self.publisher,
                &reply.name,
                reply.transaction.clone(),
                result,
            )
            .await;
        }
        let _ = self.done.send(keys);
    }

    /// POST, follow, refresh. Sets each target's final state; `Err` = the whole job failed.
    async fn execute(&self, job: &mut Job) -> Result<(), String> {
        let client = &self.handle.client;
        let action = job.command.action;
        let upid = if let Some(upid) = job.resume.clone() {
            upid
        } else if action == Action::Backup {
            let form = self.vzdump_form(job);
            match client.vzdump(&job.node, &form).await.map_err(|e| user_error(&e))? {
                VzdumpStarted::Task(upid) => upid,
                VzdumpStarted::NothingLocal => {
                    return Err(format!(
                        "Proxmox started no backup: the guest is no longer on node {} (vzdump answered \"OK\")",
                        job.node
                    ))
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
                .await
                .map_err(|e| user_error(&e))?
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
                    .clone()
                    .unwrap_or_else(|| self.backup.storage.clone()),
            ),
            (
                "mode",
                b.mode.clone().unwrap_or_else(|| self.backup.mode.clone()),
            ),
            (
                "compress",
                b.compress
                    .clone()
                    .unwrap_or_else(|| self.backup.compress.clone()),
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
    async fn follow(&self, job: &mut Job, upid: &Upid) -> Result<String, String> {
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
                _ = self.shutdown.cancelled() => return Err(STOPPED.into()),
                _ = tokio::time::sleep(wait) => {}
            }
            if tokio::time::Instant::now() > give_up {
                return Err(format!(
                    "gave up following the task after {:?}",
                    deadline(job.command.action)
                ));
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

/// Proxmox's own words, with the HTTP status where there is one.
fn user_error(err: &PveError) -> String {
    err.to_string()
}
