//! The bridge-specific helpers of the integration tests: the simulator over HTTPS, a
//! bridge config pointing at it, and the bridge in-process or as the real binary. The
//! generic ones (a real Mosquitto on a free port, started and stopped by PID; the MQTT
//! probe that records what a subscriber really receives) are in `crates/testkit` and
//! re-exported here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use pve2mqtt::config::Config;
use pve_sim::{self as sim, SimHandle, SimOptions};
use tokio::sync::oneshot;

pub use testkit::{free_port, terminate, Mosquitto, Msg, NatsCluster, Probe, SECS};

/// What Home Assistant and scripts subscribe to: discovery and the bridge's own tree.
pub const ALL: &[&str] = &["homeassistant/#", "pve2mqtt/#"];

/// Simulator options tuned for tests: TLS on, short delays.
pub fn sim_options() -> SimOptions {
    SimOptions {
        tls: true,
        auth_failure_delay: Duration::from_millis(50),
        proxy_offline_delay: Duration::from_millis(300),
        task_duration: Duration::from_millis(200),
        ..SimOptions::default()
    }
}

/// [`sim_options`] with a generated cluster of `nodes` nodes and `guests` guests.
pub fn sim_generated(nodes: usize, guests: usize) -> SimOptions {
    SimOptions {
        nodes: Some(nodes),
        guests: Some(guests),
        ..sim_options()
    }
}

pub async fn start_sim(opts: SimOptions) -> SimHandle {
    sim::start(opts).await.expect("start the simulator")
}

/// A bridge config pointing at `sim` (CA trusted through `ca_file`) and the broker.
pub struct TestConfig {
    pub toml: String,
    pub dir: tempfile::TempDir,
}

impl TestConfig {
    pub fn new(sim: &SimHandle, mqtt_port: u16, extra: &str) -> TestConfig {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("pve-root-ca.pem");
        std::fs::write(&ca, sim.ca_pem().expect("sim with TLS")).expect("write CA");
        let toml = format!(
            r#"
[proxmox]
url = "{url}"
token = "{token}"
ca_file = "{ca}"
timeout = "5s"

[poll]
interval = "1s"
slow_interval = "2s"

[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
client_id = "pve2mqtt-test"
{extra}
"#,
            url = sim.base_url(),
            token = sim::DEFAULT_TOKEN,
            ca = ca.display(),
        );
        TestConfig { toml, dir }
    }

    /// As [`TestConfig::new`], with several brokers in `mqtt.urls` instead of `mqtt.url`.
    pub fn with_urls(sim: &SimHandle, urls: &[String], extra: &str) -> TestConfig {
        let mut cfg = TestConfig::new(sim, 0, extra);
        let list: Vec<String> = urls.iter().map(|url| format!("\"{url}\"")).collect();
        cfg.toml = cfg.toml.replace(
            "url = \"mqtt://127.0.0.1:0\"",
            &format!("urls = [{}]", list.join(", ")),
        );
        cfg
    }

    pub fn config(&self) -> Config {
        Config::from_toml_str(&self.toml, &HashMap::new()).expect("valid test config")
    }

    pub fn write(&self) -> PathBuf {
        let path = self.dir.path().join("pve2mqtt.toml");
        std::fs::write(&path, &self.toml).expect("write config");
        path
    }
}

/// The bridge running in-process, stopped through its shutdown future like a signal.
pub struct Bridge {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Bridge {
    pub fn start(config: Config) -> Bridge {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(pve2mqtt::app::run(config, async move {
            let _ = stopped.await;
        }));
        Bridge {
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("bridge stopped in time")
            .expect("bridge task did not panic")
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// GET a control endpoint of the simulator (`/_sim/...`) over its real HTTPS.
pub async fn sim_get(sim: &SimHandle, path: &str) -> serde_json::Value {
    sim_http(sim)
        .get(format!("{}{}", sim.base_url(), path))
        .send()
        .await
        .expect("sim control GET")
        .json()
        .await
        .expect("sim control JSON")
}

pub async fn sim_send(
    sim: &SimHandle,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let response = sim_http(sim)
        .request(method, format!("{}{}", sim.base_url(), path))
        .json(&body)
        .send()
        .await
        .expect("sim control request");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert!(
        status.is_success(),
        "sim control {path} failed: {status} {text}"
    );
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

pub fn sim_http(sim: &SimHandle) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().expect("TLS sim").as_bytes()).expect("CA");
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("http client")
}

/// One test's world: a real Mosquitto, the simulator over HTTPS, a probe subscribed
/// before the bridge starts, the bridge's config and the bridge itself, in-process.
/// `World::start()` is the seed world with the default test config;
/// [`World::builder`] changes any part of it.
pub struct World {
    pub broker: Mosquitto,
    pub sim: SimHandle,
    pub probe: Probe,
    pub cfg: TestConfig,
    pub bridge: Bridge,
}

/// Options of a [`World`]: simulator options, config tweaks, broker persistence, probe
/// filters and the first states to wait for.
pub struct WorldBuilder {
    sim: SimOptions,
    extra: String,
    replacements: Vec<(String, String)>,
    persistence: Option<bool>,
    filters: Vec<String>,
    wait: Vec<String>,
}

impl World {
    /// The seed world, the default test config, a probe on [`ALL`].
    pub async fn start() -> World {
        World::builder().start().await
    }

    pub fn builder() -> WorldBuilder {
        WorldBuilder {
            sim: sim_options(),
            extra: String::new(),
            replacements: Vec::new(),
            persistence: None,
            filters: ALL.iter().map(|f| f.to_string()).collect(),
            wait: Vec::new(),
        }
    }

    /// Stops the bridge (it must stop cleanly) and the simulator.
    pub async fn stop(self) {
        self.bridge
            .stop()
            .await
            .expect("the bridge stopped cleanly");
        self.sim.stop().await;
    }
}

impl WorldBuilder {
    /// The simulator's options (default: [`sim_options`]).
    pub fn sim(mut self, options: SimOptions) -> Self {
        self.sim = options;
        self
    }

    /// TOML appended to the test config (after its `[mqtt]` section).
    pub fn config(mut self, extra: &str) -> Self {
        self.extra.push_str(extra);
        self
    }

    /// Replaces `from` by `to` in the test config's TOML, e.g. a poll interval.
    pub fn replace(mut self, from: &str, to: &str) -> Self {
        self.replacements.push((from.to_string(), to.to_string()));
        self
    }

    /// Mosquitto with persistence on or off (default: as `TESTKIT_MOSQUITTO_PERSISTENCE`).
    pub fn persistence(mut self, on: bool) -> Self {
        self.persistence = Some(on);
        self
    }

    /// The probe's subscriptions (default: [`ALL`]).
    pub fn probe(mut self, filters: &[&str]) -> Self {
        self.filters = filters.iter().map(|f| f.to_string()).collect();
        self
    }

    /// After the bridge starts, waits until `topic` carries a non-empty payload.
    pub fn until(mut self, topic: &str) -> Self {
        self.wait.push(topic.to_string());
        self
    }

    /// Starts the broker, the simulator and the probe, not the bridge: for a test that
    /// prepares the simulator or the broker before the bridge starts.
    pub async fn prepare(self) -> Stage {
        let broker = match self.persistence {
            None => Mosquitto::start(),
            Some(on) => Mosquitto::builder()
                .persistence(on)
                .spawn()
                .expect("start mosquitto"),
        };
        let sim = start_sim(self.sim.clone()).await;
        let mut cfg = TestConfig::new(&sim, broker.port, &self.extra);
        for (from, to) in &self.replacements {
            assert!(
                cfg.toml.contains(from.as_str()),
                "no {from:?} in the test config"
            );
            cfg.toml = cfg.toml.replace(from.as_str(), to);
        }
        let filters: Vec<&str> = self.filters.iter().map(String::as_str).collect();
        let probe = Probe::connect(broker.port, &filters).await;
        Stage {
            broker,
            sim,
            probe,
            cfg,
            wait: self.wait,
        }
    }

    /// The whole world: broker, simulator, probe, bridge; then the waits asked for.
    pub async fn start(self) -> World {
        self.prepare().await.start().await
    }
}

/// A world before its bridge starts: the broker, the simulator, the probe and the config.
pub struct Stage {
    pub broker: Mosquitto,
    pub sim: SimHandle,
    pub probe: Probe,
    pub cfg: TestConfig,
    wait: Vec<String>,
}

impl Stage {
    /// Starts the bridge with the config, then waits as asked.
    pub async fn start(self) -> World {
        let bridge = Bridge::start(self.cfg.config());
        for topic in &self.wait {
            self.probe.wait_state(topic).await;
        }
        World {
            broker: self.broker,
            sim: self.sim,
            probe: self.probe,
            cfg: self.cfg,
            bridge,
        }
    }
}

/// The Proxmox requests the simulator recorded after `since` (their `seq`), oldest first.
pub async fn requests_since(sim: &SimHandle, since: u64) -> Vec<serde_json::Value> {
    let all = sim_get(sim, &format!("/_sim/requests?since={since}")).await;
    all.as_array().expect("request list").clone()
}

/// The `seq` of the newest request the simulator recorded (0 before any).
pub async fn last_seq(sim: &SimHandle) -> u64 {
    requests_since(sim, 0)
        .await
        .last()
        .and_then(|r| r["seq"].as_u64())
        .unwrap_or(0)
}

/// The real binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_pve2mqtt");

/// Runs `pve2mqtt check --config path` (the real binary) to its end.
pub async fn run_check(path: impl AsRef<std::ffi::OsStr>) -> std::process::Output {
    tokio::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .output()
        .await
        .expect("run check")
}

/// Runs `pve2mqtt run --config path` as its own process, stdout and stderr captured.
pub fn spawn_bridge(path: &Path, envs: &[(&str, &str)]) -> tokio::process::Child {
    tokio::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(path)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A failing test must not leave a bridge running.
        .kill_on_drop(true)
        .spawn()
        .expect("spawn pve2mqtt")
}

/// The non-empty retained messages a new subscriber to `filter` gets from the broker.
pub async fn retained_on(port: u16, filter: &str) -> Vec<Msg> {
    let late = Probe::connect(port, &[filter]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    late.messages()
        .into_iter()
        .filter(|m| m.retain && !m.payload.is_empty())
        .collect()
}

/// GET `path`: status and body; `None` while nothing listens yet.
pub async fn get(base: &str, path: &str) -> Option<(u16, String)> {
    let response = reqwest::get(format!("{base}{path}")).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.unwrap_or_default()))
}

/// Polls `path` until `done` holds for its answer; panics with the last answer after 30 s.
pub async fn wait_until(
    base: &str,
    path: &str,
    what: &str,
    done: impl Fn(u16, &str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + 30 * SECS;
    let mut last = None;
    while std::time::Instant::now() < deadline {
        if let Some((status, body)) = get(base, path).await {
            if done(status, &body) {
                return body;
            }
            last = Some((status, body));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never showed {what}; last answer: {last:?}");
}

/// The value of the first sample line of `metrics` that starts with `series`.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}
