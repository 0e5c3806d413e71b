//! `pve2mqtt demo`: the simulator, an embedded MQTT broker and the bridge in one
//! process, so a newcomer sees everything work with no other software installed.
//!
//! The embedded broker (rumqttd) is only for the demo; the bridge itself talks to any
//! broker. The demo connects to its own simulator exactly as a user would to Proxmox:
//! over HTTPS, with the certificate pinned by fingerprint, through the same config
//! parser and validation as `pve2mqtt run`.

use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::Context;
use rumqttc::{Event, Incoming, QoS};
use tokio_util::sync::CancellationToken;

use pve2mqtt::config::Config;
use pve_sim::{self as sim, SimOptions};

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Use this broker (mqtt://host:port) instead of the embedded one.
    #[arg(long)]
    pub mqtt: Option<String>,
    /// Poll interval of the bridge in the demo.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

/// Port 1883 when it is free, else any free port.
fn pick_broker_addr() -> anyhow::Result<SocketAddr> {
    if let Ok(listener) = TcpListener::bind("127.0.0.1:1883") {
        drop(listener);
        return Ok("127.0.0.1:1883".parse()?);
    }
    let listener = TcpListener::bind("127.0.0.1:0").context("no free port for the broker")?;
    Ok(listener.local_addr()?)
}

/// Starts rumqttd on `addr` in its own threads (it has no async API and lives until the
/// process ends). Public for the broker matrix of the integration tests.
pub fn start_embedded_broker(addr: SocketAddr) -> anyhow::Result<()> {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: pve2mqtt::mqtt::MAX_PACKET_SIZE,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "demo".to_string(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(err) = broker.start() {
                eprintln!("embedded MQTT broker stopped: {err}");
            }
        })
        .context("starting the embedded broker")?;
    // Wait until it accepts connections.
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("the embedded broker did not start listening on {addr}")
}

pub async fn run(args: DemoArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let simulator = sim::start(SimOptions {
        tls: true,
        ..SimOptions::default()
    })
    .await
    .context("starting the simulator")?;
    let fingerprint = simulator
        .fingerprint()
        .context("the simulator has no certificate")?;
    add_demo_guests(&simulator)?;

    let mqtt_url = match &args.mqtt {
        Some(url) => url.clone(),
        None => {
            let addr = pick_broker_addr()?;
            start_embedded_broker(addr)?;
            format!("mqtt://{addr}")
        }
    };
    let toml = format!(
        r#"
[proxmox]
url = "{url}"
token = "{token}"
fingerprint = "{fingerprint}"

[poll]
interval = "{interval}"
slow_interval = "30s"
updates = true
disks_interval = "30s"

[mqtt]
url = "{mqtt_url}"
client_id = "pve2mqtt-demo"

[commands]
node_power = true
"#,
        url = simulator.base_url(),
        token = sim::DEFAULT_TOKEN,
        interval = humantime::format_duration(args.interval),
    );
    let config = Config::from_toml_str(&toml, &HashMap::new()).context("demo config")?;
    let (host, port) = (config.mqtt.host.clone(), config.mqtt.port);
    let base = config.mqtt.base_topic.clone();

    println!("pve2mqtt demo");
    println!(
        "  Proxmox VE simulator: {} (API token {}…)",
        simulator.base_url(),
        &sim::DEFAULT_TOKEN[..sim::DEFAULT_TOKEN.find('=').unwrap_or(0)]
    );
    println!(
        "  MQTT broker:          {mqtt_url}{}",
        if args.mqtt.is_none() {
            " (embedded)"
        } else {
            ""
        }
    );
    println!();
    println!("Watch everything:       mosquitto_sub -h {host} -p {port} -t '#' -v");
    println!("Home Assistant:         add the MQTT integration with broker {host}, port {port};");
    println!("                        devices appear under Settings → Devices (pve, home-assistant, mqtt, …)");
    println!("Stop with Ctrl-C.");
    println!();

    let stop = CancellationToken::new();
    let watcher = tokio::spawn(watch(config.mqtt.clone(), base, stop.clone()));
    let result = pve2mqtt::app::run(config, shutdown).await;
    stop.cancel();
    let _ = watcher.await;
    simulator.stop().await;
    result
}

/// Subscribes like any client would and prints a running summary every 10 s: what a
/// subscriber actually received, not what the bridge thinks it sent.
async fn watch(cfg: pve2mqtt::config::MqttConfig, base: String, stop: CancellationToken) {
    let Ok(opts) = pve2mqtt::mqtt::base_options(&cfg, "pve2mqtt-demo-watcher") else {
        return;
    };
    let (client, mut eventloop) = pve2mqtt::mqtt::client(opts, 100);
    let _ = client.subscribe(format!("{base}/#"), QoS::AtMostOnce).await;
    let _ = client.subscribe("homeassistant/#", QoS::AtMostOnce).await;
    let mut counts: HashMap<&'static str, u64> = HashMap::new();
    let mut guests: std::collections::BTreeMap<String, String> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let total: u64 = counts.values().sum();
                println!(
                    "[demo] received {total} messages: {} discovery, {} state, {} availability, {} other",
                    counts.get("discovery").unwrap_or(&0),
                    counts.get("state").unwrap_or(&0),
                    counts.get("availability").unwrap_or(&0),
                    counts.get("other").unwrap_or(&0),
                );
                for (topic, line) in &guests {
                    println!("[demo]   {topic}: {line}");
                }
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let kind = if p.topic.starts_with("homeassistant/") {
                        "discovery"
                    } else if p.topic.ends_with("/availability") {
                        "availability"
                    } else if p.topic.contains("/qemu/") || p.topic.contains("/lxc/") || p.topic.contains("/node/") || p.topic.contains("/storage/") || p.topic.ends_with("/cluster") {
                        "state"
                    } else {
                        "other"
                    };
                    *counts.entry(kind).or_default() += 1;
                    if kind == "state" && (p.topic.contains("/qemu/") || p.topic.contains("/lxc/")) && !p.topic.ends_with("/task") {
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) {
                            guests.insert(
                                p.topic.clone(),
                                format!(
                                    "{} {} on {}, cpu {}%, mem {}%",
                                    v["name"].as_str().unwrap_or("?"),
                                    v["status"].as_str().unwrap_or("?"),
                                    v["node"].as_str().unwrap_or("?"),
                                    v["cpu"],
                                    v["mem_percent"],
                                ),
                            );
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}

/// Beside the seed world: a Windows VM whose guest agent is installed but not running
/// (its "Agent responding" shows the problem; issue 12); and what only a cluster has
/// (issue 11): node `pve2` joins, making a cluster named `pve` of two (so the cluster id
/// in topics stays `pve`), and VM 102 is HA-managed and replicated to `pve2` every
/// 15 minutes (the HA manager's and the replication's entities).
fn add_demo_guests(simulator: &sim::SimHandle) -> anyhow::Result<()> {
    let world = simulator.world();
    let guest: sim::NewGuest = serde_json::from_value(serde_json::json!({
        "vmid": 102, "type": "qemu", "node": "pve", "name": "windows", "status": "running",
        "cpus": 4, "maxmem": 8u64 << 30, "maxdisk": 64u64 << 30, "hastate": "started",
    }))?;
    world.add_guest(guest)?;
    world.set_agent(102, None, Some(sim::AgentMode::NotRunning))?;
    world.join_node("pve2", "192.168.1.11", "pve")?;
    let job: sim::NewReplicationJob = serde_json::from_value(serde_json::json!({
        "guest": 102, "target": "pve2", "every_minutes": 15,
    }))?;
    world.add_replication_job(job)?;
    Ok(())
}
