//! An MQTT subscriber that records what it receives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::sync::oneshot;

use crate::unique_id;

/// One message as a subscriber saw it.
#[derive(Clone, Debug)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub at: Instant,
}

impl Msg {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "payload on {} is not JSON ({e}): {}",
                self.topic,
                self.text()
            )
        })
    }
}

/// An MQTT client that records everything it receives on its filters.
pub struct Probe {
    pub client: AsyncClient,
    log: Arc<Mutex<Vec<Msg>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    /// Connects to the broker on 127.0.0.1:`port`, subscribes to `filters` (QoS 1) and
    /// returns once every subscription is acknowledged. Panics if that takes over 10 s.
    pub async fn connect(port: u16, filters: &[&str]) -> Probe {
        Self::connect_qos(port, filters, QoS::AtLeastOnce).await
    }

    /// [`Probe::connect`] subscribing at `qos`. QoS 0 matters on NATS, which keeps every
    /// QoS 1 subscription as a JetStream consumer: slow to create while the cluster elects
    /// leaders, and refused until then.
    pub async fn connect_qos(port: u16, filters: &[&str], qos: QoS) -> Probe {
        let id = format!("probe-{}", unique_id());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed_rx) = oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        for filter in filters {
            client.subscribe(*filter, qos).await.expect("subscribe");
        }
        let expected_acks = filters.len();
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            let mut acks = 0;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        acks += 1;
                        if acks == expected_acks {
                            if let Some(tx) = subscribed_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        task_log.lock().unwrap().push(Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            at: Instant::now(),
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
            .await
            .expect("probe subscribed in time")
            .expect("probe task alive");
        Probe { client, log, task }
    }

    pub fn messages(&self) -> Vec<Msg> {
        self.log.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }

    /// The newest message on `topic`.
    pub fn latest(&self, topic: &str) -> Option<Msg> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|m| m.topic == topic)
            .cloned()
    }

    /// The retained copy per topic, as the broker handed it over at subscribe time.
    pub fn retained_by_topic(&self) -> HashMap<String, Msg> {
        let mut map = HashMap::new();
        for m in self.log.lock().unwrap().iter().filter(|m| m.retain) {
            map.entry(m.topic.clone()).or_insert_with(|| m.clone());
        }
        map
    }

    /// Waits until a received message satisfies `pred`; panics with what was received.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Msg) -> bool,
    ) -> Msg {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.log.lock().unwrap().iter().find(|m| pred(m)) {
                return m.clone();
            }
            if Instant::now() > deadline {
                let topics: Vec<String> = self
                    .messages()
                    .iter()
                    .map(|m| {
                        format!(
                            "{} = {}",
                            m.topic,
                            m.text().chars().take(120).collect::<String>()
                        )
                    })
                    .collect();
                panic!(
                    "timed out waiting for {what}; received {} messages:\n{}",
                    topics.len(),
                    topics.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `pred` holds on the newest payload of `topic`.
    pub async fn wait_topic(
        &self,
        topic: &str,
        timeout: Duration,
        pred: impl Fn(&Msg) -> bool,
    ) -> Msg {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.latest(topic) {
                if pred(&m) {
                    return m;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting on {topic}; newest payload: {:?}",
                    self.latest(topic).map(|m| m.text())
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits up to 20 s until `topic` carries a non-empty payload (a first state, a
    /// discovery config); returns it.
    pub async fn wait_state(&self, topic: &str) -> Msg {
        self.wait_topic(topic, Duration::from_secs(20), |m| !m.payload.is_empty())
            .await
    }

    pub async fn publish(&self, topic: &str, payload: &str, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
            .await
            .expect("probe publish");
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}
