//! The broker matrix (issue 15): the core behaviour against each broker people run, and
//! losing the node of a broker cluster the bridge is connected to.
//!
//! Core behaviour: state and discovery retained; a command executed once with one final
//! result; Home Assistant's birth message answered with a republish; reconnecting after
//! the broker went away. Mosquitto (persistence off and on) and a 3-node NATS cluster
//! always run; RabbitMQ's MQTT plugin and the embedded rumqttd where they are present.

use std::time::Duration;

use serde_json::json;

use crate::commands::{last_seq, posts, task_states};
use crate::support::*;

const ALL: &[&str] = &["homeassistant/#", "pve2mqtt/#"];
const STATE: &str = "pve2mqtt/pve/qemu/100";
const DISCOVERY: &str = "homeassistant/device/pve2mqtt_pve_100/config";
const TASK: &str = "pve2mqtt/pve/qemu/100/task";
/// Set to the port of a RabbitMQ MQTT listener (plugin `rabbitmq_mqtt`) to test it.
const RABBITMQ_ENV: &str = "TESTKIT_RABBITMQ_MQTT_PORT";

/// A broker under test: what the bridge is given, where a client connects, and how it
/// goes away and comes back.
enum Target {
    Mosquitto(Mosquitto),
    /// The probe connects to the last node, the bridge is given every node.
    Nats(NatsCluster),
    /// Cannot be stopped from here (in-process rumqttd, a system RabbitMQ).
    Fixed(u16),
}

impl Target {
    fn urls(&self) -> Vec<String> {
        match self {
            Target::Mosquitto(broker) => vec![format!("mqtt://127.0.0.1:{}", broker.port)],
            Target::Nats(cluster) => cluster.mqtt_urls(),
            Target::Fixed(port) => vec![format!("mqtt://127.0.0.1:{port}")],
        }
    }

    fn client_port(&self) -> u16 {
        match self {
            Target::Mosquitto(broker) => broker.port,
            Target::Nats(cluster) => *cluster.mqtt_ports().last().expect("nodes"),
            Target::Fixed(port) => *port,
        }
    }

    /// Takes the broker away and brings it back (the whole cluster for NATS); false when
    /// this broker cannot be restarted from here.
    fn restart(&mut self) -> bool {
        match self {
            Target::Mosquitto(broker) => broker.restart(),
            Target::Nats(cluster) => cluster.restart_all().expect("NATS cluster restarts"),
            Target::Fixed(_) => return false,
        }
        true
    }
}

/// How long a broker may take to serve a new client fully after it came back or lost a
/// node: a NATS cluster elects JetStream leaders first, and answers subscriptions with
/// failures until then (seconds; tens of seconds on a loaded 2-core machine).
const SETTLE: Duration = Duration::from_secs(90);

/// A client subscribed at QoS 0 (see [`Probe::connect_qos`]); it still receives the
/// retained messages.
async fn client(port: u16) -> Probe {
    Probe::connect_qos(port, ALL, rumqttc::QoS::AtMostOnce).await
}

/// Whether `probe` has seen a message that satisfies `pred`, waiting up to `timeout`.
async fn seen(probe: &Probe, timeout: Duration, pred: impl Fn(&Msg) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if probe.messages().iter().any(&pred) {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The final results (`ok`, `failed`, `rejected`) `probe` saw for `id`.
fn finals(probe: &Probe, id: &str) -> Vec<serde_json::Value> {
    task_states(probe, TASK, id)
        .into_iter()
        .filter(|v| matches!(v["state"].as_str(), Some("ok" | "failed" | "rejected")))
        .collect()
}

/// Sends a reboot through a client on `port` (another one if no result comes: a command
/// published while the bridge is not subscribed is not kept for it, by design) until one
/// ends `ok`. Then checks that Proxmox got exactly one POST per command that reported a
/// result, and that no command had two final results.
async fn a_command_runs_once(sim: &pve_sim::SimHandle, port: u16, id: &str) {
    let since = last_seq(sim).await;
    let deadline = tokio::time::Instant::now() + SETTLE;
    // A client whose subscription works: it got the retained bridge state.
    let probe = loop {
        let probe = client(port).await;
        if seen(&probe, 10 * SECS, |m| {
            m.topic == "pve2mqtt/bridge/state" && m.retain
        })
        .await
        {
            break probe;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no client subscription served within {SETTLE:?}"
        );
    };
    let mut ids = Vec::new();
    loop {
        let this = format!("{id}-{}", ids.len());
        let payload = json!({"action": "reboot", "id": this}).to_string();
        probe
            .publish(&format!("{STATE}/set"), &payload, false)
            .await;
        ids.push(this);
        let done = seen(&probe, 20 * SECS, |m| {
            m.topic == TASK
                && ids.iter().any(|id| m.text().contains(&format!("\"{id}\"")))
                && m.text().contains("\"ok\"")
        })
        .await;
        if done {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            // What the client saw instead, so that a failure says where it stopped.
            let seen: Vec<String> = probe
                .messages()
                .iter()
                .filter(|m| m.topic == TASK || m.topic == "pve2mqtt/bridge/state")
                .map(|m| format!("{} {}", m.topic, m.text()))
                .collect();
            panic!("no command reported a result within {SETTLE:?}; sent {ids:?}, saw {seen:#?}");
        }
    }
    // Time for a late or duplicate delivery (QoS 1 is at least once) to show up, if any.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reboots = posts(sim, since)
        .await
        .into_iter()
        .filter(|post| {
            post["path"]
                .as_str()
                .unwrap_or("")
                .ends_with("/status/reboot")
        })
        .count();
    let mut reported = 0;
    for id in &ids {
        let finals = finals(&probe, id);
        assert!(finals.len() <= 1, "{id}: final results {finals:?}");
        reported += finals.len();
    }
    assert!(reported >= 1);
    assert_eq!(
        reboots, reported,
        "POSTs vs commands with a result ({ids:?})"
    );
}

/// A client connecting to `port` receives the state and the discovery config as retained
/// messages, and the bridge state `online` (a new client is tried until the broker serves
/// it, within [`SETTLE`]).
async fn retained_for_a_new_client(port: u16) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let late = client(port).await;
        let mut all = true;
        for topic in [STATE, DISCOVERY] {
            all &= seen(&late, 10 * SECS, |m| {
                m.topic == topic && m.retain && !m.payload.is_empty()
            })
            .await;
        }
        all &= seen(&late, 2 * SECS, |m| {
            m.topic == "pve2mqtt/bridge/state" && m.text() == "online"
        })
        .await;
        if all {
            return;
        }
        let topics: Vec<String> = late.messages().iter().map(|m| m.topic.clone()).collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retained state, discovery and `online` for a new client within {SETTLE:?}; got {topics:?}"
        );
    }
}

async fn core_behaviour(mut target: Target) {
    let sim = start_sim(sim_options()).await;
    let probe = client(target.client_port()).await;
    let cfg = TestConfig::with_urls(&sim, &target.urls(), "");
    // On NATS the real binary, its log and the nodes' shown on a failure: a whole-cluster
    // restart is where the bridge was once seen `online` but deaf (README "Brokers").
    let bridge = match &target {
        Target::Nats(cluster) => {
            let nodes = (1..=3).map(|n| cluster.dir().join(format!("n{n}.log")));
            Running::Binary(Box::new(LoggedBridge::spawn(&cfg, nodes.collect())))
        }
        _ => Running::InProcess(Bridge::start(cfg.config())),
    };
    probe
        .wait_topic("pve2mqtt/bridge/state", 30 * SECS, |m| m.text() == "online")
        .await;
    probe.wait_state(DISCOVERY).await;
    probe.wait_state(STATE).await;

    // State and discovery are retained
    retained_for_a_new_client(target.client_port()).await;

    // A command runs once, with one final result
    a_command_runs_once(&sim, target.client_port(), "matrix-1").await;

    // Home Assistant's birth message brings discovery and states again
    probe.clear();
    probe.publish("homeassistant/status", "online", false).await;
    probe.wait_state(DISCOVERY).await;
    probe.wait_state(STATE).await;

    // The broker goes away and comes back: the bridge reconnects, says it is online,
    // everything is there again and commands run again
    if target.restart() {
        client(target.client_port())
            .await
            .wait_topic("pve2mqtt/bridge/state", SETTLE, |m| m.text() == "online")
            .await;
        retained_for_a_new_client(target.client_port()).await;
        a_command_runs_once(&sim, target.client_port(), "matrix-2").await;
    } else {
        eprintln!("this broker cannot be restarted from the test: reconnect step skipped");
    }
    match bridge {
        Running::InProcess(bridge) => bridge.stop().await.unwrap(),
        Running::Binary(bridge) => drop(bridge.stop().await),
    }
}

/// The bridge of [`core_behaviour`]: in-process, or the real binary with its log.
enum Running {
    InProcess(Bridge),
    Binary(Box<LoggedBridge>),
}

/// The real binary at `RUST_LOG=info`, its log in a file that is printed (with the
/// brokers' logs) when the test fails.
struct LoggedBridge {
    child: tokio::process::Child,
    log: std::path::PathBuf,
    _show: LogOnFailure,
}

impl LoggedBridge {
    fn spawn(cfg: &TestConfig, broker_logs: Vec<std::path::PathBuf>) -> LoggedBridge {
        let log_path = cfg.dir.path().join("bridge.log");
        let mut logs = vec![log_path.clone()];
        logs.extend(broker_logs);
        let log = std::fs::File::create(&log_path).expect("bridge log");
        let child = tokio::process::Command::new(BIN)
            .args(["run", "--config"])
            .arg(cfg.write())
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn pve2mqtt");
        LoggedBridge {
            child,
            log: log_path,
            _show: LogOnFailure(logs),
        }
    }

    /// What the bridge logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the bridge and returns its log.
    async fn stop(mut self) -> String {
        self.child.start_kill().expect("stop the bridge");
        let _ = self.child.wait().await;
        self.log()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_behaviour_holds_on_mosquitto_without_persistence() {
    let broker = Mosquitto::builder()
        .persistence(false)
        .spawn()
        .expect("start mosquitto");
    core_behaviour(Target::Mosquitto(broker)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_behaviour_holds_on_mosquitto_with_persistence() {
    let broker = Mosquitto::builder()
        .persistence(true)
        .spawn()
        .expect("start mosquitto");
    core_behaviour(Target::Mosquitto(broker)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_behaviour_holds_on_a_three_node_nats_cluster() {
    core_behaviour(Target::Nats(NatsCluster::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_behaviour_holds_on_the_embedded_rumqttd_of_the_demo() {
    let port = free_port();
    pve2mqtt_demo::start_embedded_broker(([127, 0, 0, 1], port).into()).expect("start rumqttd");
    core_behaviour(Target::Fixed(port)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_behaviour_holds_on_rabbitmq_where_its_mqtt_plugin_listens() {
    let Some(port) = std::env::var(RABBITMQ_ENV)
        .ok()
        .and_then(|port| port.trim().parse::<u16>().ok())
    else {
        eprintln!(
            "SKIPPED: no RabbitMQ MQTT listener given; set {RABBITMQ_ENV} to the port of one \
             (rabbitmq-plugins enable rabbitmq_mqtt) to test RabbitMQ"
        );
        return;
    };
    core_behaviour(Target::Fixed(port)).await;
}

/// The real binary, so that its log is what an admin reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_several_brokers_a_dead_first_one_is_skipped_and_the_switch_is_logged_once() {
    let broker = Mosquitto::start();
    let sim = start_sim(sim_options()).await;
    let probe = Probe::connect(broker.port, ALL).await;
    let dead = format!("mqtt://127.0.0.1:{}", free_port());
    let live = format!("mqtt://127.0.0.1:{}", broker.port);
    let cfg = TestConfig::with_urls(&sim, &[dead.clone(), live.clone()], "");
    let bridge = spawn_bridge(&cfg.write(), &[]);
    probe
        .wait_topic("pve2mqtt/bridge/state", 30 * SECS, |m| m.text() == "online")
        .await;
    a_command_runs_once(&sim, broker.port, "after-skip").await;
    let output = terminate(bridge).await;
    let log = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let switch = format!("MQTT broker {dead} unreachable (");
    assert_eq!(log.matches(&switch).count(), 1, "{log}");
    assert!(log.contains(&format!("), trying {live}")), "{log}");
}

/// Prints log files when the test fails, so a failover failure shows what the bridge and
/// the brokers did.
struct LogOnFailure(Vec<std::path::PathBuf>);

impl Drop for LogOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for path in &self.0 {
                let log = std::fs::read_to_string(path).unwrap_or_default();
                eprintln!("---- {} ----\n{log}", path.display());
            }
        }
    }
}

/// Issue 15's node loss: kill the NATS node the bridge is connected to. The real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_nats_node_the_bridge_uses_moves_it_to_another_and_commands_still_run_once() {
    let mut nats = NatsCluster::start();
    let ports = nats.mqtt_ports();
    let sim = start_sim(sim_options()).await;
    let client_id = "pve2mqtt-node-loss";
    let mut cfg = TestConfig::with_urls(&sim, &nats.mqtt_urls(), "");
    cfg.toml = cfg.toml.replace(
        "client_id = \"pve2mqtt-test\"",
        &format!("client_id = \"{client_id}\""),
    );
    let nodes = (1..=3).map(|n| nats.dir().join(format!("n{n}.log")));
    let bridge = LoggedBridge::spawn(&cfg, nodes.collect());
    let probe = client(ports[2]).await;
    probe
        .wait_topic(STATE, 30 * SECS, |m| !m.payload.is_empty())
        .await;
    probe
        .wait_topic("pve2mqtt/bridge/state", 10 * SECS, |m| m.text() == "online")
        .await;
    let first = nats
        .node_of_mqtt_client(client_id)
        .expect("the bridge is connected to a node");
    // Tried in order: the first listed node
    assert_eq!(first, 0);

    // When that node dies
    probe.clear();
    nats.kill(first);

    // Then the bridge says `online` again, from another listed node
    probe
        .wait_topic("pve2mqtt/bridge/state", SETTLE, |m| m.text() == "online")
        .await;
    // state and discovery are (still, or again) retained on the surviving nodes
    retained_for_a_new_client(ports[1]).await;
    retained_for_a_new_client(ports[2]).await;
    let now = nats
        .node_of_mqtt_client(client_id)
        .expect("the bridge is connected again");
    assert_ne!(now, first);
    // and a command through a surviving node runs exactly once
    a_command_runs_once(&sim, ports[2], "after-node-loss").await;
    let log = bridge.stop().await;
    // The loss is reported once, naming the node and the next one tried (later rounds
    // may try the dead node again: "Connection refused").
    let switch = format!(
        "MQTT broker mqtt://127.0.0.1:{} unreachable (connection lost: ",
        ports[0]
    );
    assert_eq!(log.matches(&switch).count(), 1, "{log}");
    assert!(
        log.contains(&format!("), trying mqtt://127.0.0.1:{}", ports[1])),
        "{log}"
    );
}

/// A broker that refuses the bridge's subscriptions for a while and then takes them: the
/// bridge keeps asking, spaced out, and commands run once it is subscribed. NATS answers
/// a refusal at once, as a cluster without JetStream leaders does after a whole-cluster
/// restart (where the bridge was once seen `online` and deaf: its 8 immediate retries were
/// used up in milliseconds); a subscribe permission the bridge lacks, granted by a config
/// reload, stands in for the election. Mosquitto cannot take part: it grants every
/// subscription and applies its ACL on delivery. The real binary, for its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_a_nats_broker_refuses_are_sent_again_until_it_takes_them() {
    const PASSWORD: &str = "s3cret-mqtt-Pa55";
    // Every user with explicit permissions: NATS 2.9.10 dies on a reload (nil pointer in
    // `mqttCheckPubRetainedPerms`) when a user who published retained messages has none.
    let users = |subscribe: &str| {
        format!(
            "no_auth_user: probe\nauthorization {{\n  users = [\n    \
             {{ user: probe, password: \"probe-Pa55\", permissions: {{ publish: \">\", subscribe: \">\" }} }}\n    \
             {{ user: bridge, password: \"{PASSWORD}\", permissions: {{ publish: \">\", subscribe: {subscribe} }} }}\n  ]\n}}\n"
        )
    };
    let refused = users("{ deny: [\"pve2mqtt.>\"] }");
    let nats = NatsCluster::builder()
        .nodes(1)
        .extra_config(&refused)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let port = nats.mqtt_ports()[0];
    let sim = start_sim(sim_options()).await;
    let cfg = TestConfig::with_urls(
        &sim,
        &nats.mqtt_urls(),
        &format!("username = \"bridge\"\npassword = \"{PASSWORD}\""),
    );
    let bridge = LoggedBridge::spawn(&cfg, vec![nats.dir().join("n1.log")]);
    let probe = client(port).await;
    probe
        .wait_topic("pve2mqtt/bridge/state", 30 * SECS, |m| m.text() == "online")
        .await;

    // Given a bridge whose subscriptions the broker refused
    let deadline = tokio::time::Instant::now() + 30 * SECS;
    while !bridge.log().contains("the broker refused subscriptions") {
        assert!(tokio::time::Instant::now() < deadline, "no refusal logged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // (well past the few milliseconds immediate retries would take)
    tokio::time::sleep(3 * SECS).await;

    // When the broker takes them again
    nats.reload(&users("\">\"")).expect("reload nats-server");

    // Then a command runs, once
    a_command_runs_once(&sim, port, "after-refusals").await;
    let log = bridge.stop().await;
    // and the log says so, without a line per refusal
    let refusals = "the broker refused subscriptions; subscribing again";
    assert_eq!(log.matches(refusals).count(), 1, "{log}");
    assert!(
        log.contains("the broker accepted the subscriptions it had refused"),
        "{log}"
    );
}
