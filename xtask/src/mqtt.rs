//! The harnesses' MQTT side, on rumqttc: a QoS 1 publisher that says whether the broker
//! acknowledged each message, a reconnecting subscriber that sees the retain flag of each
//! delivery, and a one-shot read of the retained messages on a filter.
//!
//! Each connection is one rumqttc event loop that is never polled again after an error:
//! rumqttc would otherwise reconnect by itself and re-send a pending publish later, and
//! the soak must know that a publish the broker did not acknowledge was never delivered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};

/// Large enough for any discovery payload or retained guest state.
const MAX_PACKET: usize = 16 * 1024 * 1024;

/// One broker connection: the client and the events of its (spawned) event loop.
pub struct Link {
    pub client: AsyncClient,
    events: mpsc::UnboundedReceiver<(Instant, Result<Event, String>)>,
    task: JoinHandle<()>,
}

impl Link {
    /// Connects with a clean session and waits for the CONNACK.
    pub async fn connect(port: u16, client_id: &str, timeout: Duration) -> anyhow::Result<Link> {
        Link::connect_to(MqttOptions::new(client_id, "127.0.0.1", port), timeout).await
    }

    /// Connects over the broker's Unix socket listener: no TCP, so no Nagle and no
    /// delayed ACK on the harness's side of a latency measurement.
    pub async fn connect_unix(
        path: &std::path::Path,
        client_id: &str,
        timeout: Duration,
    ) -> anyhow::Result<Link> {
        let mut options = MqttOptions::new(client_id, path.to_string_lossy(), 0);
        options.set_transport(rumqttc::Transport::unix());
        Link::connect_to(options, timeout).await
    }

    async fn connect_to(mut options: MqttOptions, timeout: Duration) -> anyhow::Result<Link> {
        options.set_clean_session(true);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        // Small packets go out at once: with Nagle on, a publish would wait behind an
        // unacknowledged PUBACK for the broker's delayed ACK (up to 40 ms), and the bench
        // would measure this client instead of the bridge.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        network.set_tcp_recv_buffer_size(4 * 1024 * 1024);
        eventloop.set_network_options(network);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(drive(eventloop, tx));
        let mut link = Link {
            client,
            events,
            task,
        };
        let deadline = Instant::now() + timeout;
        loop {
            match link.next(deadline).await {
                Some(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                    if ack.code != rumqttc::ConnectReturnCode::Success {
                        bail!("CONNACK refused: {:?}", ack.code);
                    }
                    return Ok(link);
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => bail!("{error}"),
                None => bail!("no CONNACK within {timeout:?}"),
            }
        }
    }

    /// The next event before `deadline`; `None` on timeout.
    pub async fn next(&mut self, deadline: Instant) -> Option<Result<Event, String>> {
        self.next_timed(deadline).await.map(|(_, event)| event)
    }

    /// Like [`Link::next`], with the time the event loop produced the event (for a
    /// packet: right after it was read from the socket).
    pub async fn next_timed(
        &mut self,
        deadline: Instant,
    ) -> Option<(Instant, Result<Event, String>)> {
        match timeout_at(deadline, self.events.recv()).await {
            Ok(Some(event)) => Some(event),
            Ok(None) => Some((Instant::now(), Err("event loop ended".into()))),
            Err(_) => None,
        }
    }

    /// Subscribes (QoS 1) and waits for the SUBACK.
    pub async fn subscribe(&mut self, filters: &[String], timeout: Duration) -> anyhow::Result<()> {
        let subs = filters
            .iter()
            .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
        self.client.subscribe_many(subs).await?;
        let deadline = Instant::now() + timeout;
        loop {
            match self.next(deadline).await {
                Some(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    {
                        bail!("subscription refused");
                    }
                    return Ok(());
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => bail!("{error}"),
                None => bail!("no SUBACK within {timeout:?}"),
            }
        }
    }

    /// Publishes with QoS 1; true only when the broker's PUBACK for this message arrived.
    /// Call it one message at a time per link (the first outgoing PUBLISH is ours).
    pub async fn publish_acked(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await?;
        let deadline = Instant::now() + timeout;
        let mut ours = None;
        loop {
            match self.next(deadline).await {
                Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) if ours.is_none() => {
                    ours = Some(pkid)
                }
                Some(Ok(Event::Incoming(Packet::PubAck(ack)))) if Some(ack.pkid) == ours => {
                    return Ok(())
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => bail!("{error}"),
                None => bail!("no PUBACK within {timeout:?}"),
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn drive(
    mut eventloop: EventLoop,
    tx: mpsc::UnboundedSender<(Instant, Result<Event, String>)>,
) {
    loop {
        match eventloop.poll().await {
            Ok(event) => {
                if tx.send((Instant::now(), Ok(event))).is_err() {
                    return;
                }
            }
            Err(error) => {
                let _ = tx.send((Instant::now(), Err(error.to_string())));
                return; // never reconnect: the owner decides (see the module doc)
            }
        }
    }
}

/// One connection used only to publish with QoS 1; connects lazily and again after any
/// failure. A message counts as sent only when its PUBACK arrived.
pub struct Publisher {
    port: u16,
    client_id: String,
    link: Option<Link>,
}

impl Publisher {
    pub fn new(port: u16, client_id: String) -> Publisher {
        Publisher {
            port,
            client_id,
            link: None,
        }
    }

    /// True only if the broker acknowledged this message.
    pub async fn publish(&mut self, topic: &str, payload: Vec<u8>, retain: bool) -> bool {
        if self.link.is_none() {
            match Link::connect(self.port, &self.client_id, Duration::from_secs(1)).await {
                Ok(link) => self.link = Some(link),
                Err(_) => return false,
            }
        }
        let link = self.link.as_mut().expect("connected above");
        match link
            .publish_acked(topic, payload, retain, Duration::from_secs(3))
            .await
        {
            Ok(()) => true,
            Err(_) => {
                self.link = None;
                false
            }
        }
    }

    pub fn close(&mut self) {
        self.link = None;
    }
}

/// A message as a subscriber saw it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// Subscribes to `filters` and hands every delivery to `on_message`; reconnects every
/// 50 ms while the broker is away, so it is normally back before the bridge (whose backoff
/// is at least 1 s). `on_connect` runs after each SUBACK.
pub struct Subscriber {
    stopping: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Subscriber {
    pub fn spawn<M, C>(
        port: u16,
        client_id: String,
        filters: Vec<String>,
        mut on_message: M,
        mut on_connect: C,
    ) -> Subscriber
    where
        M: FnMut(Delivery) + Send + 'static,
        C: FnMut() + Send + 'static,
    {
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let task = tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut link) = Link::connect(port, &client_id, Duration::from_secs(2)).await
                {
                    if link
                        .subscribe(&filters, Duration::from_secs(5))
                        .await
                        .is_ok()
                    {
                        on_connect();
                        loop {
                            let deadline = Instant::now() + Duration::from_millis(500);
                            match link.next(deadline).await {
                                Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                                    on_message(Delivery {
                                        topic: p.topic,
                                        payload: p.payload.to_vec(),
                                        retain: p.retain,
                                    })
                                }
                                Some(Ok(_)) | None => {}
                                Some(Err(_)) => break,
                            }
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Subscriber { stopping, task }
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A message as the benchmark's probe recorded it.
#[derive(Clone, Debug)]
pub struct Msg {
    /// Seconds since the bench's clock origin, when the event loop read it.
    pub t: f64,
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// A subscriber that records every delivery with its arrival time, and can publish
/// (QoS 0). It talks to the broker over a Unix socket: over TCP, its delayed ACKs would
/// hold the broker's next message back (Mosquitto does not set TCP_NODELAY) and the
/// latency measured would be this client's, not the bridge's.
pub struct Recorder {
    messages: Arc<std::sync::Mutex<Vec<Msg>>>,
    client: AsyncClient,
    origin: Instant,
    task: JoinHandle<()>,
}

impl Recorder {
    pub async fn start(
        socket: &std::path::Path,
        client_id: &str,
        filters: &[String],
        origin: Instant,
    ) -> anyhow::Result<Recorder> {
        let mut link = Link::connect_unix(socket, client_id, Duration::from_secs(10)).await?;
        link.subscribe(filters, Duration::from_secs(10)).await?;
        let messages = Arc::new(std::sync::Mutex::new(Vec::new()));
        let client = link.client.clone();
        let sink = messages.clone();
        let task = tokio::spawn(async move {
            loop {
                let far = Instant::now() + Duration::from_secs(3600);
                match link.next_timed(far).await {
                    Some((at, Ok(Event::Incoming(Packet::Publish(p))))) => {
                        sink.lock().unwrap().push(Msg {
                            t: at.duration_since(origin).as_secs_f64(),
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        })
                    }
                    Some((_, Err(_))) => return,
                    _ => {}
                }
            }
        });
        Ok(Recorder {
            messages,
            client,
            origin,
            task,
        })
    }

    /// Publishes with QoS 0; the time just before it was handed to the event loop.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) -> anyhow::Result<f64> {
        let t = self.origin.elapsed().as_secs_f64();
        self.client
            .publish(topic, QoS::AtMostOnce, false, payload)
            .await?;
        Ok(t)
    }

    pub fn len(&self) -> usize {
        self.messages.lock().unwrap().len()
    }

    pub fn since(&self, index: usize) -> Vec<Msg> {
        self.messages
            .lock()
            .unwrap()
            .get(index..)
            .map(<[Msg]>::to_vec)
            .unwrap_or_default()
    }

    pub fn between(&self, start: f64, end: f64) -> Vec<Msg> {
        let messages = self.messages.lock().unwrap();
        messages
            .iter()
            .filter(|m| start <= m.t && m.t < end)
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Msg> {
        self.since(0)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The retained messages on a filter: subscribe and read until `quiet` passes without a
/// message (retained copies arrive in a burst right after the SUBACK). A live update that
/// arrives meanwhile is newer than the copy and replaces it.
pub async fn read_retained(
    port: u16,
    client_id: &str,
    filter: &str,
    quiet: Duration,
) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut link = Link::connect(port, client_id, Duration::from_secs(2)).await?;
    link.subscribe(&[filter.to_string()], Duration::from_secs(5))
        .await?;
    let mut messages = BTreeMap::new();
    loop {
        match link.next(Instant::now() + quiet).await {
            None => return Ok(messages),
            Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                if p.retain || messages.contains_key(&p.topic) || !p.payload.is_empty() {
                    messages.insert(p.topic, p.payload.to_vec());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(anyhow!("{error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procs;
    use std::sync::Mutex;

    #[tokio::test]
    async fn the_retain_flag_is_seen_at_subscribe_time_and_not_on_live_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let broker = procs::mosquitto(dir.path(), false, "").unwrap();
        let mut publisher = Publisher::new(broker.port, "t-pub".into());
        assert!(publisher.publish("t/retained", b"one".to_vec(), true).await);
        assert!(
            publisher
                .publish("t/command", b"not retained".to_vec(), false)
                .await
        );
        let retained = read_retained(broker.port, "t-read", "t/#", Duration::from_millis(500))
            .await
            .unwrap();
        assert_eq!(retained.keys().collect::<Vec<_>>(), ["t/retained"]);
        assert_eq!(retained["t/retained"], b"one");

        let seen = Arc::new(Mutex::new(Vec::new()));
        let connected = Arc::new(AtomicBool::new(false));
        let (s, c) = (seen.clone(), connected.clone());
        let subscriber = Subscriber::spawn(
            broker.port,
            "t-sub".into(),
            vec!["t/live".into()],
            move |d| s.lock().unwrap().push(d),
            move || c.store(true, Ordering::Relaxed),
        );
        while !connected.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(publisher.publish("t/live", b"online".to_vec(), true).await);
        for _ in 0..250 {
            if !seen.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        subscriber.stop();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            (seen[0].payload.as_slice(), seen[0].retain),
            (&b"online"[..], false)
        );
    }

    #[tokio::test]
    async fn a_persistent_broker_keeps_retained_messages_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut broker = procs::mosquitto(dir.path(), true, "").unwrap();
        let mut publisher = Publisher::new(broker.port, "t-pub".into());
        assert!(publisher.publish("t/kept", b"one".to_vec(), true).await);
        publisher.close();
        broker.stop();
        broker.start_again().unwrap();
        let retained = read_retained(broker.port, "t-read", "t/#", Duration::from_millis(500))
            .await
            .unwrap();
        assert_eq!(retained.get("t/kept").map(Vec::as_slice), Some(&b"one"[..]));
    }

    #[tokio::test]
    async fn a_publish_is_not_acknowledged_while_the_broker_is_down() {
        let dir = tempfile::tempdir().unwrap();
        let mut broker = procs::mosquitto(dir.path(), false, "").unwrap();
        let mut publisher = Publisher::new(broker.port, "t-pub".into());
        assert!(publisher.publish("t/x", b"before".to_vec(), false).await);
        broker.kill();
        assert!(!publisher.publish("t/x", b"during".to_vec(), false).await);
        broker.start_again().unwrap();
        assert!(publisher.publish("t/x", b"after".to_vec(), false).await);
    }
}
