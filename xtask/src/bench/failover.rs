//! `cargo xtask failover`: how long the bridge is away when the broker node it uses dies
//! (issue 15; figures in the README, "Brokers").
//!
//! A 3-node NATS cluster with MQTT (crates/testkit), the simulator and the RELEASE bridge as
//! separate processes; the bridge is given every node in `mqtt.urls`. Each round:
//! 1. a probe on a node the bridge does not use subscribes to `bridge/state` and the task
//!    topics, and a command round trip shows the cluster serves the bridge;
//! 2. find the node the bridge is connected to (NATS monitoring, `/connz?mqtt_client=`);
//! 3. kill that node (SIGKILL) and, from that instant, send a command every 250 ms through
//!    the probe's node, each to another guest;
//! 4. measure kill -> `online` on `bridge/state`, and kill -> the first command's `ok`;
//! 5. start the node again and let the cluster settle before the next round.
//!
//! Commands sent while the bridge is away are not queued for it (clean session: a stale
//! command must never run late), so the second figure is what a user pressing a button
//! during the failover waits, at 250 ms resolution.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rumqttc::{Event, Packet, QoS, SubscribeFilter};
use serde_json::{json, Value};
use testkit::NatsCluster;
use tokio::time::Instant;

use super::{log, BASE, CLUSTER};
use crate::mqtt::Link;
use crate::procs;
use crate::sim::Simulator;

const CLIENT_ID: &str = "pve2mqtt-failover";
/// How often the probe sends a command while waiting for the bridge to come back.
const COMMAND_EVERY: Duration = Duration::from_millis(250);
/// Give up on a round after this long.
const ROUND_LIMIT: Duration = Duration::from_secs(60);

#[derive(Args, Clone, Debug)]
pub struct FailoverArgs {
    /// The pve2mqtt binary (`cargo build --release` builds it).
    #[arg(long, default_value = "target/release/pve2mqtt")]
    pub binary: PathBuf,
    /// Node kills to measure.
    #[arg(long, default_value_t = 6)]
    pub rounds: usize,
    /// Keep the logs (bridge, simulator, NATS nodes) in the temporary directory.
    #[arg(long)]
    pub keep_logs: bool,
}

/// One round's figures, milliseconds from the kill.
struct Round {
    killed: usize,
    moved_to: Option<usize>,
    /// The bridge's own log: its first `connected to the MQTT broker` after the kill.
    connected_ms: Option<f64>,
    online_ms: Option<f64>,
    result_ms: Option<f64>,
}

pub async fn main(args: FailoverArgs) -> anyhow::Result<i32> {
    if !args.binary.is_file() {
        log(&format!(
            "{} not found: build it with `cargo build --release`",
            args.binary.display()
        ));
        return Ok(2);
    }
    if !NatsCluster::available() {
        log("nats-server not found (apt-get install nats-server)");
        return Ok(2);
    }
    let binary = args.binary.canonicalize()?;
    let dir = std::env::temp_dir().join(format!("pve2mqtt-failover-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    log(&format!("logs in {}", dir.display()));
    let mut nats = NatsCluster::builder()
        .log_to(&dir.join("nats.log"))
        .spawn()
        .context("starting the NATS cluster")?;
    let sim_args = ["--nodes", "1", "--guests", "30", "--task-duration", "200ms"].map(String::from);
    let sim = Simulator::start(&binary, &sim_args, &dir.join("sim.log"))?;
    let world = sim.get("/_sim/world").await?;
    let guests: Vec<(String, u64)> = world["guests"]
        .as_array()
        .into_iter()
        .flatten()
        // Running, no template, not HA-managed: a reboot ends `ok` at once.
        .filter(|g| g["status"] == "running" && g["hastate"].is_null())
        .filter(|g| g["template"] != json!(true) && g["template"] != json!(1))
        .filter_map(|g| Some((g["type"].as_str()?.to_string(), g["vmid"].as_u64()?)))
        .collect();
    anyhow::ensure!(!guests.is_empty(), "the simulator has no guests");
    let urls: Vec<String> = nats
        .mqtt_urls()
        .iter()
        .map(|url| format!("\"{url}\""))
        .collect();
    let config = dir.join("pve2mqtt.toml");
    std::fs::write(
        &config,
        format!(
            "[proxmox]\nurl = \"{}\"\ntoken = \"{}\"\nfingerprint = \"{}\"\n\n\
             [poll]\ninterval = \"2s\"\nslow_interval = \"20s\"\n\n\
             [mqtt]\nurls = [{}]\nclient_id = \"{CLIENT_ID}\"\n",
            sim.base,
            crate::sim::TOKEN,
            sim.fingerprint,
            urls.join(", ")
        ),
    )?;
    let mut bridge = Command::new(&binary)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("bridge.stderr"))?)
        .env("RUST_LOG", "info")
        .spawn()
        .context("starting the bridge")?;
    let log_path = dir.join("bridge.stderr");
    let rounds = run_rounds(&mut nats, &guests, args.rounds, &log_path).await;
    procs::terminate(&mut bridge, Duration::from_secs(10)).await;
    sim.stop().await;
    drop(nats);
    let rounds = rounds?;
    print_report(&rounds);
    if !args.keep_logs {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(0)
}

async fn run_rounds(
    nats: &mut NatsCluster,
    guests: &[(String, u64)],
    rounds: usize,
    bridge_log: &std::path::Path,
) -> anyhow::Result<Vec<Round>> {
    let ports = nats.mqtt_ports();
    let mut out = Vec::new();
    let mut sent = 0usize;
    for round in 0..rounds {
        let before = wait_connected(nats).await?;
        let probe_node = (before + 2) % ports.len();
        let mut probe = probe(ports[probe_node], &format!("failover-probe-{round}")).await?;
        // The cluster serves the bridge again: a command round trip before the kill.
        let mut healthy = false;
        let until = Instant::now() + Duration::from_secs(120);
        while !healthy && Instant::now() < until {
            let (kind, vmid) = &guests[sent % guests.len()];
            sent += 1;
            let id = format!("baseline-{round}-{sent}");
            let payload = json!({"action": "reboot", "id": id}).to_string();
            let topic = format!("{BASE}/{CLUSTER}/{kind}/{vmid}/set");
            probe
                .client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await?;
            let wait = Instant::now() + Duration::from_secs(10);
            while let Some(event) = probe.next(wait).await {
                if let Ok(Event::Incoming(Packet::Publish(p))) = event {
                    let report: Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                    if report["id"] == json!(id) && report["state"] == "ok" {
                        healthy = true;
                        break;
                    }
                }
            }
        }
        anyhow::ensure!(
            healthy,
            "round {}: no command result before the kill within 120 s",
            round + 1
        );
        let killed = wait_connected(nats).await?;
        let start = Instant::now();
        let killed_at = seconds_of_day(std::time::SystemTime::now());
        nats.kill(killed);
        let ms = |at: Instant| at.duration_since(start).as_secs_f64() * 1000.0;
        let mut ids = Vec::new();
        let (mut online_ms, mut result_ms) = (None, None);
        let mut tick = tokio::time::interval(COMMAND_EVERY);
        let deadline = start + ROUND_LIMIT;
        while (online_ms.is_none() || result_ms.is_none()) && Instant::now() < deadline {
            tokio::select! {
                _ = tick.tick(), if result_ms.is_none() => {
                    let (kind, vmid) = &guests[sent % guests.len()];
                    sent += 1;
                    let id = format!("failover-{round}-{sent}");
                    let payload = json!({"action": "reboot", "id": id}).to_string();
                    let topic = format!("{BASE}/{CLUSTER}/{kind}/{vmid}/set");
                    // try_: a full request channel while the probe's own node is busy
                    // drops this one, the next tick sends another.
                    if probe.client.try_publish(topic, QoS::AtLeastOnce, false, payload).is_ok() {
                        ids.push(id);
                    }
                }
                event = probe.next_timed(deadline) => match event {
                    Some((at, Ok(Event::Incoming(Packet::Publish(p))))) => {
                        if p.topic.ends_with("/bridge/state") && !p.retain && &p.payload[..] == b"online" {
                            online_ms.get_or_insert(ms(at));
                        } else if p.topic.ends_with("/task") {
                            let report: Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                            let ours = report["id"].as_str().is_some_and(|id| ids.iter().any(|i| i == id));
                            if ours && report["state"] == "ok" {
                                result_ms.get_or_insert(ms(at));
                            }
                        }
                    }
                    // A node that has just come back may drop clients while it catches up:
                    // the probe connects again (commands sent meanwhile are simply lost).
                    Some((_, Err(error))) => {
                        log(&format!("probe: {error}; connecting again"));
                        probe = probe_again(&ports, killed, round).await?;
                    }
                    _ => {}
                },
            }
        }
        let moved_to = nats.node_of_mqtt_client(CLIENT_ID);
        let connected_ms = std::fs::read_to_string(bridge_log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains("connected to the MQTT broker"))
            .filter_map(log_seconds_of_day)
            .filter(|at| *at > killed_at)
            // The connection that stayed: the last one before `online` was seen.
            .take_while(|at| online_ms.is_none_or(|ms| (at - killed_at) * 1000.0 <= ms))
            .last()
            .map(|at| (at - killed_at) * 1000.0);
        log(&format!(
            "round {}: killed n{}, bridge on {}, connected after {}, `online` seen after {}, first result after {}",
            round + 1,
            killed + 1,
            moved_to.map_or("?".into(), |n| format!("n{}", n + 1)),
            show(connected_ms),
            show(online_ms),
            show(result_ms)
        ));
        out.push(Round {
            killed,
            moved_to,
            connected_ms,
            online_ms,
            result_ms,
        });
        nats.start_again(killed)
            .context("restarting the killed node")?;
        // JetStream catches the node up (retained messages, sessions) before the next kill.
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    Ok(out)
}

/// A client on `port` subscribed at QoS 0 to `bridge/state` and the task topics (QoS 0:
/// on NATS a QoS 1 subscription is a JetStream consumer, slow to create during an
/// election), with the retained copies already drained.
async fn probe(port: u16, client_id: &str) -> anyhow::Result<Link> {
    let mut link = Link::connect(port, client_id, Duration::from_secs(10)).await?;
    let filters = [
        SubscribeFilter::new(format!("{BASE}/bridge/state"), QoS::AtMostOnce),
        SubscribeFilter::new(format!("{BASE}/+/+/+/task"), QoS::AtMostOnce),
    ];
    link.client.subscribe_many(filters).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match link.next(deadline).await {
            Some(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Some(Ok(_)) => {}
            Some(Err(error)) => anyhow::bail!("probe on {port}: {error}"),
            None => anyhow::bail!("probe on {port}: no SUBACK within 10 s"),
        }
    }
    let settle = Instant::now() + Duration::from_millis(500);
    while link.next(settle).await.is_some() {}
    Ok(link)
}

/// A new probe on any node but the killed one, tried for up to 60 s.
async fn probe_again(ports: &[u16], killed: usize, round: usize) -> anyhow::Result<Link> {
    let deadline = Instant::now() + ROUND_LIMIT;
    for attempt in 0.. {
        let node = (killed + 1 + attempt % (ports.len() - 1)) % ports.len();
        match probe(ports[node], &format!("failover-probe-{round}-{attempt}")).await {
            Ok(link) => return Ok(link),
            Err(error) if Instant::now() < deadline => {
                log(&format!("{error}; trying another node"));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => return Err(error),
        }
    }
    unreachable!("the loop returns")
}

/// The node the bridge is connected to, once it is.
async fn wait_connected(nats: &NatsCluster) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(node) = nats.node_of_mqtt_client(CLIENT_ID) {
            return Ok(node);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the bridge did not connect to any NATS node within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Seconds since midnight UTC (the bridge logs UTC times of day).
fn seconds_of_day(at: std::time::SystemTime) -> f64 {
    let since = at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    since % 86_400.0
}

/// The time of day of a bridge log line (`2026-12-06T16:05:39.916897Z  INFO …`).
fn log_seconds_of_day(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split_once('T')?.1;
    let time = time.strip_suffix('Z').unwrap_or(time);
    let mut parts = time.split(':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

fn show(ms: Option<f64>) -> String {
    ms.map_or("— (none within 60 s)".into(), |ms| format!("{ms:.0} ms"))
}

/// One column of [`Round`], for the summary lines.
type Figure = fn(&Round) -> Option<f64>;

fn print_report(rounds: &[Round]) {
    println!(
        "| round | node killed | bridge moved to | kill → connected (bridge log) | kill → `online` seen | kill → first command result |"
    );
    println!("|---|---|---|---|---|---|");
    for (index, round) in rounds.iter().enumerate() {
        println!(
            "| {} | n{} | {} | {} | {} | {} |",
            index + 1,
            round.killed + 1,
            round.moved_to.map_or("?".into(), |n| format!("n{}", n + 1)),
            show(round.connected_ms),
            show(round.online_ms),
            show(round.result_ms)
        );
    }
    let figures: [(&str, Figure); 3] = [
        ("kill → connected", |r| r.connected_ms),
        ("kill → `online` seen", |r| r.online_ms),
        ("kill → first command result", |r| r.result_ms),
    ];
    for (what, figure) in figures {
        let mut sorted: Vec<f64> = rounds.iter().filter_map(figure).collect();
        sorted.sort_by(f64::total_cmp);
        if let (Some(min), Some(max)) = (sorted.first(), sorted.last()) {
            println!(
                "\n{what}: median {:.0} ms, min {min:.0} ms, max {max:.0} ms ({} of {} rounds)",
                sorted[sorted.len() / 2],
                sorted.len(),
                rounds.len()
            );
        }
    }
}
