//! Wiring only: builds the Proxmox clients and the MQTT link, starts the tasks, and runs
//! the ordered shutdown. The only file that knows every task.
//!
//! Tasks: one MQTT event loop (the only caller of `poll()`, routing inbound messages to
//! the publisher or the command handler), one publisher (the only code that publishes),
//! one command handler, one poller per cluster (each with its slow lane). Shutdown is
//! passed in as a future so tests can stop the bridge exactly like a signal does.

use std::collections::HashSet;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::command::inbox::overloaded;
use crate::command::{ClusterHandle, CommandHandler, Registry};
use crate::config::{Config, ProxmoxConfig};
use crate::ha::discovery::DiscoveryContext;
use crate::ha::topics::{InboundRoute, Topics};
use crate::mqtt::{self, LinkEvent};
use crate::poller::{ClusterPoller, MIN_REFRESH_SPACING};
use crate::publisher::{PublishStats, Publisher, PublisherMsg};
use crate::pve::{ClusterStatusKind, PveClient, PveError, ResourceKind};

/// An error the user must fix before the bridge can run (bad config, rejected token):
/// `main` exits with code 2 for it, 1 for anything else.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FatalConfigError(pub String);

/// Handles the caller keeps while the bridge runs (the demo prints from them).
#[derive(Clone, Default)]
pub struct BridgeHandles {
    pub stats: Arc<PublishStats>,
}

/// Runs the bridge until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with(config, shutdown, BridgeHandles::default()).await
}

pub async fn run_with(
    config: Config,
    shutdown: impl Future<Output = ()>,
    handles: BridgeHandles,
) -> anyhow::Result<()> {
    let topics = Topics::new(
        &config.mqtt.base_topic,
        &config.homeassistant.discovery_prefix,
    );
    // The listener first: a taken port fails the start at once.
    let labels: Vec<String> = config
        .clusters
        .iter()
        .map(|c| c.name.clone().unwrap_or_else(|| c.urls[0].to_string()))
        .collect();
    let metrics = Arc::new(crate::http::Metrics::new(
        &labels,
        config.poll.interval,
        handles.stats.clone(),
    ));
    let stop_http = CancellationToken::new();
    let http_task = match config.http.listen {
        Some(addr) => Some(crate::http::serve(addr, metrics.clone(), stop_http.clone()).await?),
        None => None,
    };

    // Proxmox first: a token Proxmox rejects is a configuration error, reported at once
    // with exit code 2, not retried forever.
    let mut clients = Vec::new();
    for cluster in &config.clusters {
        let client =
            PveClient::new(cluster).map_err(|e| FatalConfigError(format!("proxmox: {e}")))?;
        match client.version().await {
            Ok(v) => {
                info!(url = %client.current_url(), version = v.version.as_deref().unwrap_or("?"), "Proxmox reachable")
            }
            Err(err @ PveError::Unauthorized { .. }) => {
                return Err(FatalConfigError(format!(
                    "Proxmox rejected the API token {}: {err}",
                    cluster.token.id()
                ))
                .into())
            }
            Err(err) => {
                warn!(url = %client.current_url(), error = %err, "Proxmox not reachable yet; will keep trying")
            }
        }
        client.count_requests(metrics.requests.clone());
        clients.push((cluster.clone(), client));
    }

    let brokers =
        mqtt::brokers(&config.mqtt, &topics).map_err(|e| FatalConfigError(format!("{e:#}")))?;
    let (mqtt_client, eventloop) =
        mqtt::client(brokers.options().clone(), mqtt::REQUEST_CHANNEL_CAPACITY);
    let (publisher_tx, publisher_rx) = mpsc::channel::<PublisherMsg>(16 * 1024);

    let mut subscriptions = topics.retained_inventory_filters();
    if config.homeassistant.discovery {
        subscriptions.push(topics.ha_status());
    }
    // Commands are always subscribed: when they are off, every one gets a `rejected`
    // answer saying so, instead of silence.
    subscriptions.push(topics.command_filter());
    subscriptions.push(topics.task_filter());
    subscriptions.push(topics.bridge_request_filter());
    let hard_stop = CancellationToken::new();
    let (command_tx, command_rx) = mpsc::channel::<mqtt::Inbound>(COMMAND_QUEUE);
    let link_tx = publisher_tx.clone();
    let (link_state_tx, link_state_rx) = watch::channel(LinkState::default());
    tokio::spawn(link_metrics(link_state_tx.subscribe(), metrics.clone()));
    tokio::spawn(forward_link_state(link_state_rx, publisher_tx.clone()));
    let router = InboundRouter::new(topics.clone(), command_tx, link_tx, link_state_tx);
    // Inbound messages go straight to the task that acts on them: a command must not
    // queue behind the publisher's work on a large view or a discovery burst.
    let event_loop = tokio::spawn(mqtt::run_event_loop(
        eventloop,
        brokers,
        subscriptions,
        move |event| router.route(event),
        hard_stop.clone(),
    ));
    let urls: Vec<&str> = config.mqtt.brokers.iter().map(|b| b.url.as_str()).collect();
    info!(broker = %urls.join(", "), base = %config.mqtt.base_topic, "connecting to MQTT");

    let stop = CancellationToken::new();
    let discovery = config.homeassistant.discovery.then(|| DiscoveryContext {
        topics: topics.clone(),
        bridge_version: env!("CARGO_PKG_VERSION").to_string(),
        controls: crate::command::policy::guest_controls(&config.commands),
        cluster_count: config.clusters.len(),
    });
    let publisher = Publisher::new(
        mqtt_client,
        topics.clone(),
        discovery,
        handles.stats.clone(),
    );
    let publisher_task = tokio::spawn(publisher.run(publisher_rx, stop.clone()));
    let registry: Registry = Default::default();
    let handler = CommandHandler::new(
        topics.clone(),
        config.commands.clone(),
        config.backup.clone(),
        registry.clone(),
        publisher_tx.clone(),
    );
    // Commands stop first, so their runners can still report through the publisher.
    let stop_commands = CancellationToken::new();
    let handler_task = tokio::spawn(handler.run(command_rx, stop_commands.clone()));

    let mut pollers = Vec::new();
    for (index, (cluster_cfg, client)) in clients.into_iter().enumerate() {
        let stats = metrics.cluster(index);
        let (refresh_tx, refresh_rx) = mpsc::channel(16);
        let refresh_self_tx = refresh_tx.clone();
        let (views_tx, views_rx) = tokio::sync::watch::channel(None);
        let poll = config.poll.clone();
        let mut reporting = config.reporting;
        reporting.backup_stale_after = config.backup.stale_after;
        let publisher = publisher_tx.clone();
        let stop = stop.clone();
        let registry = registry.clone();
        pollers.push(tokio::spawn(async move {
            let Some(id) = resolve_cluster_id(&cluster_cfg, &client, &stop).await else {
                return;
            };
            info!(cluster = %id, "polling cluster");
            stats.set_label(&id);
            registry.write().unwrap_or_else(|e| e.into_inner()).insert(
                id.clone(),
                ClusterHandle {
                    client: client.clone(),
                    view: views_rx,
                    refresh: refresh_tx,
                },
            );
            let poller = ClusterPoller {
                id,
                console_url: client.current_url(),
                client,
                interval: poll.interval,
                slow_interval: poll.slow_interval,
                cadence: crate::poller::Cadence {
                    snapshots: poll.snapshots_interval,
                    health: crate::poller::HealthCadence::from_config(&poll),
                    ..crate::poller::Cadence::default()
                },
                agent: crate::poller::AgentCadence {
                    interval: poll.agent_interval,
                    max_per_round: poll.agent_max_per_round,
                },
                agent_data: Default::default(),
                refresh_spacing: MIN_REFRESH_SPACING,
                publisher,
                refresh: refresh_rx,
                tasks_interval: poll.tasks_interval,
                refresh_self: refresh_self_tx,
                views: views_tx,
                stats,
                reporting,
            };
            poller.run(stop).await;
        }));
    }
    drop(publisher_tx);

    shutdown.await;
    info!("shutting down");
    stop_commands.cancel();
    let _ = handler_task.await;
    stop.cancel();
    for poller in pollers {
        let _ = poller.await;
    }
    let _ = publisher_task.await;
    // The publisher queued `offline` and a clean disconnect; give the event loop a
    // moment to send them, then stop it even if the broker is away.
    let hard_stop_guard = hard_stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        hard_stop_guard.cancel();
    });
    event_loop.await.context("MQTT event loop")?;
    stop_http.cancel();
    if let Some(task) = http_task {
        let _ = task.await;
    }
    info!("stopped");
    Ok(())
}

/// Inbound commands, requests and task reports waiting for the command handler.
const COMMAND_QUEUE: usize = 1024;

/// How long one warning and one `overloaded` answer per topic stand for every command
/// dropped on a full command queue.
const OVERLOAD_WINDOW: Duration = Duration::from_secs(10);

/// Topics answered `overloaded` per window at most: a flood of distinct topics while the
/// queue is full is counted in the log, not answered (nor remembered) one by one.
const OVERLOAD_ANSWERS: usize = 256;

/// Where the MQTT event loop's events go, decided without ever waiting: commands and
/// requests to the command handler, the rest to the publisher, the link state into a
/// watch. A command the full command queue cannot take is answered `overloaded` instead
/// of dropped in silence.
struct InboundRouter {
    topics: Topics,
    commands: mpsc::Sender<mqtt::Inbound>,
    publisher: mpsc::Sender<PublisherMsg>,
    link_state: watch::Sender<LinkState>,
    overload: std::sync::Mutex<Overload>,
}

impl InboundRouter {
    fn new(
        topics: Topics,
        commands: mpsc::Sender<mqtt::Inbound>,
        publisher: mpsc::Sender<PublisherMsg>,
        link_state: watch::Sender<LinkState>,
    ) -> Self {
        InboundRouter {
            topics,
            commands,
            publisher,
            link_state,
            overload: Default::default(),
        }
    }

    fn route(&self, event: LinkEvent) {
        let event = match event {
            LinkEvent::Message(msg) => match self.topics.route_inbound(&msg.topic) {
                InboundRoute::Commands => {
                    match self.commands.try_send(msg) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(msg)) => self.dropped(&msg),
                        // The command handler stops first at shutdown.
                        Err(mpsc::error::TrySendError::Closed(msg)) => {
                            debug!(topic = %msg.topic, "inbound message dropped: shutting down")
                        }
                    }
                    return;
                }
                InboundRoute::Publisher => LinkEvent::Message(msg),
                InboundRoute::Ignore => {
                    debug!(topic = %msg.topic, "inbound message on a topic the bridge does not act on");
                    return;
                }
            },
            LinkEvent::Connected => {
                self.link_state.send_modify(|s| {
                    s.sessions += 1;
                    s.connected = true;
                });
                return;
            }
            LinkEvent::Disconnected => {
                self.link_state.send_modify(|s| s.connected = false);
                return;
            }
        };
        if let Err(err) = self.publisher.try_send(PublisherMsg::Link(event)) {
            warn!(error = %err, "MQTT event dropped: the publisher is overloaded");
        }
    }

    /// A message the full command queue could not take.
    fn dropped(&self, msg: &mqtt::Inbound) {
        let (answer, warning) = self
            .overload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .count(&msg.topic, Instant::now());
        if let Some(dropped) = warning {
            warn!(
                dropped,
                "command queue full: inbound commands answered `overloaded` instead of run (one warning per 10 s, counting every drop since the last)"
            );
        }
        if answer {
            if let Some(notice) = overloaded(&self.topics, msg) {
                // The publisher's queue full too: the drop is still counted in the log.
                let _ = self.publisher.try_send(notice);
            }
        }
    }
}

/// Drops on a full command queue, per [`OVERLOAD_WINDOW`].
#[derive(Debug, Default)]
struct Overload {
    window: Option<Instant>,
    /// Drops not yet in a warning.
    dropped: u64,
    /// Hashes of the topics answered in this window.
    answered: HashSet<u64>,
    hasher: RandomState,
}

impl Overload {
    /// Counts one drop on `topic`: whether it gets an answer (the first on its topic in
    /// the window, for at most [`OVERLOAD_ANSWERS`] topics), and the count to log when a
    /// warning is due (the first drop of a window: every drop since the last warning).
    fn count(&mut self, topic: &str, now: Instant) -> (bool, Option<u64>) {
        self.dropped += 1;
        let mut warning = None;
        if self
            .window
            .is_none_or(|t| now.saturating_duration_since(t) >= OVERLOAD_WINDOW)
        {
            self.window = Some(now);
            self.answered.clear();
            warning = Some(std::mem::take(&mut self.dropped));
        }
        let answer = self.answered.len() < OVERLOAD_ANSWERS
            && self.answered.insert(self.hasher.hash_one(topic));
        (answer, warning)
    }
}

/// The MQTT connection as a value rather than queued events: the event loop (which must
/// never block) overwrites it, and [`forward_link_state`] hands each change to the
/// publisher, waiting for room in its queue. A full queue delays a `Connected`, never
/// drops it: a bridge that missed one would stay silent on a live connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LinkState {
    /// ConnAcks so far: a reconnect that happened while the publisher was busy still
    /// shows as a new session, so everything is republished.
    sessions: u64,
    connected: bool,
}

/// Turns changes of the [`LinkState`] into `PublisherMsg::Link` events, in order;
/// changes made while the publisher's queue was full are coalesced.
async fn forward_link_state(mut state: watch::Receiver<LinkState>, to: mpsc::Sender<PublisherMsg>) {
    let mut told = LinkState::default();
    while state.changed().await.is_ok() {
        let now = *state.borrow_and_update();
        let event = if now.connected && now.sessions != told.sessions {
            Some(LinkEvent::Connected)
        } else if !now.connected && told.connected {
            Some(LinkEvent::Disconnected)
        } else {
            None
        };
        told = now;
        if let Some(event) = event {
            if to.send(PublisherMsg::Link(event)).await.is_err() {
                return;
            }
        }
    }
}

/// Mirrors the [`LinkState`] into the metrics (`/healthz`, `/metrics`).
async fn link_metrics(mut state: watch::Receiver<LinkState>, metrics: Arc<crate::http::Metrics>) {
    use std::sync::atomic::Ordering::Relaxed;
    while state.changed().await.is_ok() {
        let now = *state.borrow_and_update();
        metrics.mqtt_connected.store(now.connected, Relaxed);
        metrics.mqtt_sessions.store(now.sessions, Relaxed);
    }
}

/// The cluster id used in topics: the configured `name`, else the cluster's name, else
/// (standalone host) the node's name. Retries until Proxmox answers or shutdown.
async fn resolve_cluster_id(
    cfg: &ProxmoxConfig,
    client: &PveClient,
    stop: &CancellationToken,
) -> Option<String> {
    if let Some(name) = &cfg.name {
        return Some(name.clone());
    }
    let mut wait = Duration::from_secs(1);
    loop {
        match ask_cluster_id(client).await {
            Ok(id) => return Some(crate::ha::topics::discovery_id(&id)),
            Err(err) => {
                warn!(error = %err, "cannot learn the cluster name yet (set proxmox.name to skip this)")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(60));
    }
}

async fn ask_cluster_id(client: &PveClient) -> anyhow::Result<String> {
    match client.cluster_status().await {
        Ok(rows) => {
            if let Some(name) = rows
                .iter()
                .find(|r| r.kind == ClusterStatusKind::Cluster)
                .and_then(|r| r.name.clone())
            {
                return Ok(name);
            }
            if let Some(name) = rows
                .iter()
                .find(|r| r.kind == ClusterStatusKind::Node)
                .and_then(|r| r.name.clone())
            {
                return Ok(name);
            }
        }
        Err(err) => warn!(error = %err, "GET /cluster/status failed; trying /cluster/resources"),
    }
    let rows = client.cluster_resources().await?;
    let nodes: Vec<&str> = rows
        .iter()
        .filter(|r| r.kind == ResourceKind::Node)
        .filter_map(|r| r.node.as_deref())
        .collect();
    match nodes.as_slice() {
        [single] => Ok(single.to_string()),
        [] => anyhow::bail!("the token sees no node (missing Sys.Audit?)"),
        _ => anyhow::bail!("several nodes but no cluster name visible: set proxmox.name"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reconnect that happens while the publisher's queue is full is delivered once
    /// there is room, never dropped.
    #[tokio::test]
    async fn a_reconnect_while_the_publisher_queue_is_full_still_reaches_it() {
        let (to, mut inbox) = mpsc::channel::<PublisherMsg>(1);
        let (state, rx) = watch::channel(LinkState::default());
        tokio::spawn(forward_link_state(rx, to.clone()));
        state.send_modify(|s| {
            s.sessions += 1;
            s.connected = true;
        });
        let first = inbox.recv().await.expect("first connect");
        assert!(matches!(first, PublisherMsg::Link(LinkEvent::Connected)));

        // The queue is full; the link drops and comes back meanwhile
        to.try_send(PublisherMsg::Link(LinkEvent::Disconnected))
            .expect("room for one");
        state.send_modify(|s| s.connected = false);
        state.send_modify(|s| {
            s.sessions += 1;
            s.connected = true;
        });
        tokio::task::yield_now().await;

        // Then the publisher, draining, still learns of the new session
        let mut seen = Vec::new();
        while let Ok(Some(msg)) =
            tokio::time::timeout(Duration::from_millis(200), inbox.recv()).await
        {
            if let PublisherMsg::Link(event) = msg {
                seen.push(format!("{event:?}"));
            }
        }
        assert_eq!(
            seen.last().map(String::as_str),
            Some("Connected"),
            "{seen:?}"
        );
    }

    fn inbound(topic: &str, payload: &str) -> LinkEvent {
        LinkEvent::Message(mqtt::Inbound {
            topic: topic.into(),
            payload: payload.into(),
            retain: false,
        })
    }

    /// Issue 9 item 5: a command dropped on a full queue got no result, and every drop
    /// wrote a warning.
    #[tokio::test]
    async fn a_command_the_full_queue_cannot_take_is_answered_overloaded_once_per_window() {
        let (commands, mut queue) = mpsc::channel(1);
        let (publisher, mut out) = mpsc::channel(64);
        let (link_state, _) = watch::channel(LinkState::default());
        let router = InboundRouter::new(
            Topics::new("pve2mqtt", "homeassistant"),
            commands,
            publisher,
            link_state,
        );
        let stop = |id: &str| format!(r#"{{"action":"stop","id":"{id}"}}"#);
        router.route(inbound("pve2mqtt/home/qemu/100/set", &stop("queued")));
        for id in ["a", "b", "c"] {
            router.route(inbound("pve2mqtt/home/qemu/100/set", &stop(id)));
        }
        router.route(inbound("pve2mqtt/home/lxc/101/set", "start"));
        router.route(inbound(
            "pve2mqtt/bridge/request/command",
            r#"{"vmid":100,"action":"stop","transaction":"t-1"}"#,
        ));
        router.route(inbound(
            "pve2mqtt/home/qemu/100/task",
            r#"{"state":"running"}"#,
        ));

        assert_eq!(
            queue.try_recv().unwrap().topic,
            "pve2mqtt/home/qemu/100/set"
        );
        let mut answers = Vec::new();
        while let Ok(msg) = out.try_recv() {
            answers.push(match msg {
                PublisherMsg::TaskNotice { vmid, report, .. } => {
                    assert!(report.error.unwrap().contains("overloaded"));
                    assert_eq!(report.state, crate::command::report::Phase::Rejected);
                    format!("{vmid}:{}", report.id.unwrap_or_default())
                }
                PublisherMsg::Response { name, body } => {
                    assert_eq!(body["status"], "error");
                    assert!(body["error"].as_str().unwrap().contains("overloaded"));
                    format!("{name}:{}", body["transaction"])
                }
                other => panic!("{other:?}"),
            });
        }
        assert_eq!(answers, ["100:a", "101:", "command:\"t-1\""]);
        let overload = router.overload.lock().unwrap();
        assert_eq!(overload.dropped, 5, "counted for the next warning");
    }

    #[test]
    fn drops_are_warned_about_once_per_window_with_their_count() {
        let t0 = Instant::now();
        let mut overload = Overload::default();
        assert_eq!(overload.count("a", t0), (true, Some(1)));
        assert_eq!(overload.count("a", t0), (false, None));
        for i in 0..(2 * OVERLOAD_ANSWERS) {
            overload.count(&format!("t{i}"), t0 + Duration::from_secs(1));
        }
        assert_eq!(overload.answered.len(), OVERLOAD_ANSWERS, "bounded");
        let later = t0 + OVERLOAD_WINDOW;
        let dropped = 1 + 2 * OVERLOAD_ANSWERS as u64 + 1;
        assert_eq!(overload.count("a", later), (true, Some(dropped)));
    }
}
