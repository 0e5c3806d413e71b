//! Where the publisher writes: the [`Outbox`] (rumqttc's client, or a recording fake in the
//! unit tests), the [`Sink`] that holds the link state, and the counters.

use std::future::Future;
use std::sync::Arc;

use rumqttc::{AsyncClient, QoS};
use tracing::warn;

/// Where the publisher's messages go: rumqttc's [`AsyncClient`] in the bridge, a recording
/// fake in the unit tests, so the publisher's decisions are tested without a broker.
pub trait Outbox: Send {
    /// Queues one QoS 1 publish; waits while the client's request queue is full.
    fn publish(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Queues one QoS 1 publish without waiting (the `offline` state at shutdown).
    fn try_publish(&mut self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), String>;
    /// Queues a clean disconnect without waiting.
    fn try_disconnect(&mut self) -> Result<(), String>;
}

impl Outbox for AsyncClient {
    async fn publish(&mut self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), String> {
        AsyncClient::publish(self, topic, QoS::AtLeastOnce, retain, payload)
            .await
            .map_err(|e| e.to_string())
    }

    fn try_publish(&mut self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), String> {
        AsyncClient::try_publish(self, topic, QoS::AtLeastOnce, retain, payload)
            .map_err(|e| e.to_string())
    }

    fn try_disconnect(&mut self) -> Result<(), String> {
        AsyncClient::try_disconnect(self).map_err(|e| e.to_string())
    }
}

/// The outbox with the link state and the counters: a field of its own so it can be
/// used while the publisher's records are borrowed.
pub(super) struct Sink<O> {
    pub(super) outbox: O,
    pub(super) connected: bool,
    pub(super) stats: Arc<PublishStats>,
}

impl<O: Outbox> Sink<O> {
    /// Publishes while connected; while not, drops the message: a reconnect republishes
    /// everything anyway.
    pub(super) async fn send(&mut self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.connected {
            self.stats.dropped.fetch_add(1, Relaxed);
            return;
        }
        let payload = payload.into();
        self.stats.messages.fetch_add(1, Relaxed);
        self.stats
            .bytes
            .fetch_add((topic.len() + payload.len()) as u64, Relaxed);
        if let Err(err) = self.outbox.publish(topic, payload, retain).await {
            self.stats.dropped.fetch_add(1, Relaxed);
            warn!(topic, error = %err, "publish failed");
        }
    }
}

/// Counters of what was published, for the demo's running summary and the benchmark.
#[derive(Debug, Default)]
pub struct PublishStats {
    pub messages: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
    pub discovery: std::sync::atomic::AtomicU64,
    pub states: std::sync::atomic::AtomicU64,
    /// Not published: the link was down, or the client refused the message.
    pub dropped: std::sync::atomic::AtomicU64,
    /// Final command results, for `/metrics`.
    pub commands: crate::http::CommandCounts,
}
