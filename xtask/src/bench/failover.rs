//! `cargo xtask failover`: how long the bridge is away when the broker node it uses dies
//! (issue 15; figures in the README, "Brokers").
//!
//! A 3-node NATS cluster with MQTT (crates/testkit), the simulator and the RELEASE bridge as
//! separate processes; the bridge is given every node in `mqtt.urls`. Each round:
//! 1. find the node the bridge is connected to (NATS monitoring, `/connz?mqtt_client=`);
//! 2. a probe on another node subscribes to `bridge/state` and the task topics;
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
use rumqttc::{Event, Packet, QoS};
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
        .spawn()
        .context("starting the bridge")?;
    let rounds = run_rounds(&mut nats, &guests, args.rounds).await;
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
) -> anyhow::Result<Vec<Round>> {
    let ports = nats.mqtt_ports();
    let mut out = Vec::new();
    let mut sent = 0usize;
    for round in 0..rounds {
        let killed = wait_connected(nats).await?;
        let probe_node = (killed + 2) % ports.len();
        let mut probe = Link::connect(
            ports[probe_node],
            &format!("failover-probe-{round}"),
            Duration::from_secs(10),
        )
        .await?;
        let filters = [format!("{BASE}/bridge/state"), format!("{BASE}/+/+/+/task")];
        probe.subscribe(&filters, Duration::from_secs(10)).await?;
        // Let the retained copies arrive before the clock starts.
        let settle = Instant::now() + Duration::from_millis(500);
        while probe.next(settle).await.is_some() {}

        let start = Instant::now();
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
                    Some((_, Err(error))) => anyhow::bail!("the probe lost its broker: {error}"),
                    _ => {}
                },
            }
        }
        let moved_to = nats.node_of_mqtt_client(CLIENT_ID);
        log(&format!(
            "round {}: killed n{}, bridge on {}, online after {}, first result after {}",
            round + 1,
            killed + 1,
            moved_to.map_or("?".into(), |n| format!("n{}", n + 1)),
            show(online_ms),
            show(result_ms)
        ));
        out.push(Round {
            killed,
            moved_to,
            online_ms,
            result_ms,
        });
        nats.start_again(killed)
            .context("restarting the killed node")?;
        // JetStream catches the node up (retained messages, sessions) before the next kill.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    Ok(out)
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

fn show(ms: Option<f64>) -> String {
    ms.map_or("— (none within 60 s)".into(), |ms| format!("{ms:.0} ms"))
}

fn print_report(rounds: &[Round]) {
    println!(
        "| round | node killed | bridge moved to | kill → `online` | kill → first command result |"
    );
    println!("|---|---|---|---|---|");
    for (index, round) in rounds.iter().enumerate() {
        println!(
            "| {} | n{} | {} | {} | {} |",
            index + 1,
            round.killed + 1,
            round.moved_to.map_or("?".into(), |n| format!("n{}", n + 1)),
            show(round.online_ms),
            show(round.result_ms)
        );
    }
    for (what, values) in [
        (
            "kill → `online`",
            rounds
                .iter()
                .filter_map(|r| r.online_ms)
                .collect::<Vec<_>>(),
        ),
        (
            "kill → first command result",
            rounds.iter().filter_map(|r| r.result_ms).collect(),
        ),
    ] {
        let mut sorted = values.clone();
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
