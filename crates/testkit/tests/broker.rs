//! The kit against a real Mosquitto: what a probe records, and what a restart keeps.

use std::net::TcpStream;
use std::time::Duration;

use testkit::{Mosquitto, Probe, SECS};

/// Publishes a retained message and waits until a fresh subscriber gets it back, so the
/// broker has stored it before the test restarts the broker.
async fn retain(broker: &Mosquitto, topic: &str, payload: &str) {
    let probe = Probe::connect(broker.port, &[topic]).await;
    probe.publish(topic, payload, true).await;
    probe
        .wait_topic(topic, 10 * SECS, |m| m.text() == payload)
        .await;
    let check = Probe::connect(broker.port, &[topic]).await;
    check
        .wait_topic(topic, 10 * SECS, |m| m.retain && m.text() == payload)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_records_topics_payloads_and_retain_flags() {
    let broker = Mosquitto::builder().persistence(false).spawn().unwrap();
    let publisher = Probe::connect(broker.port, &["kit/kept"]).await;
    publisher.publish("kit/kept", "old", true).await;
    // The broker has it once it echoes it back (publish only queues the message).
    publisher.wait_topic("kit/kept", 10 * SECS, |_| true).await;
    // A subscriber that comes later gets the retained copy with the retain flag set,
    let probe = Probe::connect(broker.port, &["kit/#"]).await;
    let kept = probe
        .wait_topic("kit/kept", 10 * SECS, |m| m.text() == "old")
        .await;
    assert!(kept.retain);
    // and live messages without it.
    publisher.publish("kit/live", "{\"n\":1}", false).await;
    let live = probe.wait_topic("kit/live", 10 * SECS, |_| true).await;
    assert!(!live.retain);
    assert_eq!(live.json()["n"], 1);
    assert_eq!(probe.retained_by_topic().len(), 1);
    assert_eq!(probe.latest("kit/kept").unwrap().payload, b"old");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_broker_keeps_retained_messages_across_a_restart() {
    let mut broker = Mosquitto::builder().persistence(true).spawn().unwrap();
    assert!(broker.persistence());
    retain(&broker, "kit/state", "online").await;
    let pid = broker.pid();
    broker.restart();
    assert_ne!(broker.pid(), pid, "a new broker process");
    let probe = Probe::connect(broker.port, &["kit/#"]).await;
    let back = probe.wait_topic("kit/state", 10 * SECS, |_| true).await;
    assert!(back.retain);
    assert_eq!(back.text(), "online");
    assert!(broker.dir().join("mosquitto.db").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_without_persistence_forgets_retained_messages_on_restart() {
    let mut broker = Mosquitto::builder().persistence(false).spawn().unwrap();
    retain(&broker, "kit/state", "online").await;
    broker.restart();
    let probe = Probe::connect(broker.port, &["kit/#"]).await;
    // The marker is published after subscribing: once it arrives, anything retained
    // would have arrived before it.
    probe.publish("kit/marker", "x", false).await;
    probe.wait_topic("kit/marker", 10 * SECS, |_| true).await;
    assert!(
        probe.latest("kit/state").is_none(),
        "{:?}",
        probe.messages()
    );
}

#[test]
fn stop_and_kill_end_the_broker_and_free_its_port() {
    let mut broker = Mosquitto::start();
    assert!(TcpStream::connect(("127.0.0.1", broker.port)).is_ok());
    broker.stop();
    assert!(broker.pid().is_none());
    assert!(TcpStream::connect(("127.0.0.1", broker.port)).is_err());
    broker.restart();
    assert!(TcpStream::connect(("127.0.0.1", broker.port)).is_ok());
    broker.kill();
    std::thread::sleep(Duration::from_millis(50));
    assert!(TcpStream::connect(("127.0.0.1", broker.port)).is_err());
}

#[test]
fn a_broker_that_cannot_start_is_an_error_not_a_hang() {
    // Mosquitto refuses a config it does not know and exits at once.
    let broken = Mosquitto::builder()
        .extra_config("no_such_option true")
        .spawn();
    let err = broken.expect_err("a broker with a broken config");
    assert!(err.to_string().contains("mosquitto exited"), "{err}");
}
