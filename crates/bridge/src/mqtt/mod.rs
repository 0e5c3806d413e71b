//! The MQTT boundary: connection options and the one task that drives rumqttc's event
//! loop. Knows nothing about Proxmox.
//!
//! rumqttc does nothing unless `EventLoop::poll()` is called, reconnects with no delay
//! (a hot loop against a dead broker), and forgets subscriptions on a clean-session
//! reconnect. So exactly one task polls, sleeps with backoff after errors, and
//! re-subscribes on every ConnAck; it never awaits anything but `poll()` and its
//! backoff, and hands inbound messages on with `try_send`, so it can never deadlock
//! against the publisher (which awaits on the client's request channel).
//!
//! The re-subscription (`subscriptions.rs`, which also retries refused ones, spaced out,
//! for as long as the connection lasts) goes to the
//! front of the event loop's own pending queue, not into the request channel: after a reconnect during a discovery burst that channel is full
//! of the publisher's messages, and a subscription queued behind them (or refused by
//! `try_subscribe`) would leave the bridge "online" and deaf.
//!
//! rumqttc 0.25 also flushed the socket after every request: one `writev` and, with
//! `TCP_NODELAY` (see [`client`]), one TCP segment per message, 16 % of the bridge's CPU
//! in a moving world of 5,000 guests. The workspace builds the copy in `vendor/rumqttc`,
//! which writes every request already queued (up to 64, within the QoS 1 flow control)
//! before one flush; `tests/it/field.rs` counts the writes.
//!
//! With several brokers (`mqtt.urls`, see [`Brokers`]), every failed attempt and every
//! lost connection moves on to the next one, logged once per switch as
//! `MQTT broker A unreachable (…), trying B`. The next broker is tried at once, and the
//! usual backoff comes after each whole round of brokers: a dead cluster node costs
//! nothing, and a whole cluster down (or one that drops the bridge right after the
//! ConnAck) is still no hot loop.

mod brokers;
mod subscriptions;

pub use brokers::Brokers;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing, QoS,
    TlsConfiguration, Transport,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{MqttBroker, MqttConfig};
use crate::ha::topics::Topics;

/// Outgoing packets larger than rumqttc's 10 KiB default would tear the connection down;
/// device discovery payloads of a guest are a few KiB, a `bridge/info` of a big cluster
/// more.
pub const MAX_PACKET_SIZE: usize = 1024 * 1024;

/// The largest packet the bridge reads: MQTT's own maximum (a remaining length of
/// 268,435,455 bytes, also Mosquitto's default `message_size_limit`). MQTT 3.1.1 cannot tell
/// the broker a smaller limit, so any lower one only moves the cliff: one retained message
/// above it on a subscribed topic (published by mistake, by anyone) would tear the
/// connection down at every (re)subscribe, a reconnect loop with a full republish each
/// time. Reading it costs its size in memory once per connect; it is dropped at once
/// (see [`MAX_INBOUND_PAYLOAD`]).
pub const MAX_INCOMING_PACKET_SIZE: usize = 256 * 1024 * 1024;

/// The largest inbound payload handed on: commands, requests, availability and task
/// reports are well under 1 KiB. Anything bigger is junk, dropped here with one log line
/// per message, and never executed.
pub const MAX_INBOUND_PAYLOAD: usize = 64 * 1024;

/// A connection must last this long before the reconnect backoff starts again from 1 s:
/// a broker that accepts and then drops at once (or sends a message that kills the
/// link) is otherwise retried every second, with a full republish each time.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(30);

/// Capacity of the client's request channel: the publisher awaits when it is full, which
/// is the natural back-pressure while the broker is slow. Small on purpose: every queued
/// publish holds its payload, and a discovery burst of 5,000 devices would otherwise park
/// tens of MB here (with [`MAX_INFLIGHT`] at 256 and 200 it held 3.7 MB of device
/// configs at the peak).
pub const REQUEST_CHANNEL_CAPACITY: usize = 64;

/// QoS 1 publishes sent and not yet acknowledged: rumqttc keeps each one's payload until
/// its PUBACK. 64 keeps a broker 20 ms away busy at over 3,000 messages per second.
pub const MAX_INFLIGHT: u16 = 64;

/// A message that arrived from the broker, as the rest of the bridge needs it.
#[derive(Clone, Debug)]
pub struct Inbound {
    pub topic: String,
    /// Raw bytes: may be empty or not UTF-8.
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// What the event loop reports to the rest of the bridge.
#[derive(Clone, Debug)]
pub enum LinkEvent {
    /// A (re)connection was acknowledged: everything must be (re)published.
    Connected,
    /// The connection is gone; publishing now would only queue stale messages.
    Disconnected,
    Message(Inbound),
}

/// Creates the client and its event loop with `TCP_NODELAY` on the socket. Without it,
/// Nagle's algorithm holds back a small packet (a command's `accepted` report, a PUBACK)
/// while an earlier one is unacknowledged, and the broker delays that ACK by up to
/// ~40 ms on Linux: every command paid that wait, often more than once. Every MQTT connection the program opens goes
/// through here.
pub fn client(options: MqttOptions, capacity: usize) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options, capacity);
    // Start from the event loop's own options: `NetworkOptions::default()` would also
    // zero the connection timeout (rumqttc's default is 5 s).
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    (client, eventloop)
}

/// The options of every configured broker: Last Will `offline` on `{base}/bridge/state`
/// (retained, QoS 1), clean session (a stale command must never be replayed from a
/// persistent session), TLS for `mqtts://`, credentials.
pub fn brokers(cfg: &MqttConfig, topics: &Topics) -> anyhow::Result<Brokers> {
    Brokers::new(cfg, |broker| {
        let mut opts = broker_options(cfg, broker, &cfg.client_id)?;
        opts.set_last_will(LastWill::new(
            topics.bridge_state(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        Ok(opts)
    })
}

/// Options for the first broker without a Last Will, for short-lived connections
/// (`check`, the demo's watcher) that must not touch the bridge state.
pub fn base_options(cfg: &MqttConfig, client_id: &str) -> anyhow::Result<MqttOptions> {
    let first = cfg.brokers.first().context("no MQTT broker configured")?;
    broker_options(cfg, first, client_id)
}

/// Options without a Last Will for one of the configured brokers.
pub fn broker_options(
    cfg: &MqttConfig,
    broker: &MqttBroker,
    client_id: &str,
) -> anyhow::Result<MqttOptions> {
    let mut opts = MqttOptions::new(client_id, &broker.host, broker.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(true);
    opts.set_max_packet_size(MAX_INCOMING_PACKET_SIZE, MAX_PACKET_SIZE);
    opts.set_request_channel_capacity(REQUEST_CHANNEL_CAPACITY);
    opts.set_inflight(MAX_INFLIGHT);
    if let Some(user) = &cfg.username {
        let password = cfg.password.as_ref().map(|p| p.expose()).unwrap_or("");
        opts.set_credentials(user, password);
    }
    if broker.tls {
        opts.set_transport(Transport::Tls(tls_config(cfg)?));
    }
    Ok(opts)
}

fn tls_config(cfg: &MqttConfig) -> anyhow::Result<TlsConfiguration> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &cfg.ca_file {
        ca.add_to(&mut roots).map_err(anyhow::Error::msg)?;
    } else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

/// Backoff after connection errors (with several brokers: after each round of them): 1 s,
/// doubling to 30 s, reset by a connection that lasted [`STABLE_CONNECTION`].
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(5)).min(Duration::from_secs(30))
}

/// How long to wait before the next attempt, after the `tried`-th failed one since the
/// last stable connection: nothing until a whole round of `brokers` failed, then the
/// backoff (which grows once per round).
fn wait_before_next(tried: usize, brokers: usize, failures: &mut u32) -> Duration {
    if tried % brokers.max(1) != 0 {
        return Duration::ZERO;
    }
    let wait = backoff(*failures);
    *failures = failures.saturating_add(1);
    wait
}

/// Drives the event loop until the client's own Disconnect went out (clean stop) or
/// `hard_stop` fires (the broker is unreachable at shutdown).
///
/// `eventloop` must have been created with `brokers.options()`. `subscriptions` are
/// (re)subscribed on every ConnAck, ahead of anything queued; `send` gets every
/// [`LinkEvent`] and must not block (use `try_send`).
pub async fn run_event_loop(
    mut eventloop: EventLoop,
    mut brokers: Brokers,
    subscriptions: Vec<String>,
    send: impl Fn(LinkEvent),
    hard_stop: CancellationToken,
) {
    let mut subscriptions = subscriptions::Subscriptions::new(subscriptions);
    let mut failures: u32 = 0;
    // Failed attempts (and short-lived connections) since the last stable connection.
    let mut tried: usize = 0;
    let mut connected_at: Option<tokio::time::Instant> = None;
    loop {
        // Refused subscriptions whose next try is due (checked after every event: the
        // keep-alive ping makes one at least every 30 s).
        if connected_at.is_some() {
            subscriptions.due(tokio::time::Instant::now(), &mut eventloop.pending);
        }
        let polled = tokio::select! {
            polled = eventloop.poll() => polled,
            _ = hard_stop.cancelled() => return,
        };
        match polled {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                info!(code = ?ack.code, broker = %brokers.url(), "connected to the MQTT broker");
                connected_at = Some(tokio::time::Instant::now());
                subscriptions.connected(&mut eventloop.pending);
                send(LinkEvent::Connected);
            }
            Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => subscriptions.sent(pkid),
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                subscriptions.acknowledged(&ack, tokio::time::Instant::now());
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                if publish.payload.len() > MAX_INBOUND_PAYLOAD {
                    warn!(
                        topic = %publish.topic,
                        bytes = publish.payload.len(),
                        retained = publish.retain,
                        limit = MAX_INBOUND_PAYLOAD,
                        "inbound message too large: ignored"
                    );
                    continue;
                }
                send(LinkEvent::Message(Inbound {
                    topic: publish.topic,
                    payload: publish.payload.to_vec(),
                    retain: publish.retain,
                }));
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                debug!("MQTT disconnect sent");
                return;
            }
            Ok(_) => {}
            Err(err) => {
                let lost = connected_at.take();
                if let Some(since) = lost {
                    if since.elapsed() >= STABLE_CONNECTION {
                        failures = 0;
                        tried = 0;
                    }
                    send(LinkEvent::Disconnected);
                }
                // With several brokers, each failed attempt moves on to the next one at
                // once, and the back-off comes after a whole round of them: a dead node
                // costs nothing, and the attempts per back-off period stay bounded by the
                // number of brokers (short-lived connections count as failed attempts).
                tried = tried.saturating_add(1);
                let wait = wait_before_next(tried, brokers.len(), &mut failures);
                if brokers.len() > 1 {
                    let from = brokers.url().to_owned();
                    let to = brokers.advance().to_owned();
                    let reason = match lost {
                        Some(_) => format!("connection lost: {}", describe(&err)),
                        None => describe(&err),
                    };
                    warn!(retry_in = ?wait, "MQTT broker {from} unreachable ({reason}), trying {to}");
                    eventloop.mqtt_options = brokers.options().clone();
                } else if lost.is_some() {
                    warn!(error = %describe(&err), retry_in = ?wait, "lost the MQTT connection; reconnecting");
                } else {
                    warn!(error = %describe(&err), retry_in = ?wait, "cannot connect to the MQTT broker");
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = hard_stop.cancelled() => return,
                }
            }
        }
    }
}

fn describe(err: &ConnectionError) -> String {
    match err {
        ConnectionError::ConnectionRefused(code) => {
            format!("broker refused the connection: {code:?}")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_several_brokers_the_backoff_comes_after_each_round_and_grows_per_round() {
        let mut failures = 0;
        let waits: Vec<u64> = (1..=9)
            .map(|tried| wait_before_next(tried, 3, &mut failures).as_secs())
            .collect();
        assert_eq!(waits, [0, 0, 1, 0, 0, 2, 0, 0, 4]);
    }

    #[test]
    fn with_one_broker_every_failure_waits_as_before() {
        let mut failures = 0;
        let waits: Vec<u64> = (1..=7)
            .map(|tried| wait_before_next(tried, 1, &mut failures).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
    }
}
