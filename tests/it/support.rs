//! Shared helpers for the integration tests: a real Mosquitto on a free port (started
//! and stopped by PID, so tests can restart it), the simulator over HTTPS, an MQTT
//! probe that records what a subscriber really receives, and the bridge itself.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pve2mqtt::config::Config;
use pve2mqtt::sim::{self, SimHandle, SimOptions};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::sync::oneshot;

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

fn mosquitto_binary() -> PathBuf {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("mosquitto");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("/usr/sbin/mosquitto")
}

/// A private Mosquitto broker for one test.
pub struct Mosquitto {
    pub port: u16,
    /// Retained messages survive [`Mosquitto::restart`], as with the Home Assistant add-on.
    pub persistent: bool,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// The switch below. The bridge's binary reads every `PVE2MQTT_*` variable as config and
/// refuses unknown ones, so the tests remove it from the binary's environment.
pub const PERSISTENCE_ENV: &str = "PVE2MQTT_IT_PERSISTENCE";

/// `PVE2MQTT_IT_PERSISTENCE=1` runs every broker of the suite with persistence on
/// (`scripts/test.sh` runs the suite once without, once with it).
pub fn persistence_from_env() -> bool {
    std::env::var(PERSISTENCE_ENV).is_ok_and(|v| v == "1")
}

impl Mosquitto {
    /// A broker with persistence as `PVE2MQTT_IT_PERSISTENCE` says.
    pub fn start() -> Mosquitto {
        Self::start_with(free_port(), "")
    }

    /// A broker with persistence on, whatever the environment says.
    pub fn start_persistent() -> Mosquitto {
        Self::start_full(free_port(), "", true)
    }

    /// `extra` is appended to the config (TLS, passwords).
    pub fn start_with(port: u16, extra: &str) -> Mosquitto {
        Self::start_full(port, extra, persistence_from_env())
    }

    /// With persistence the database lives in the broker's temp dir. Mosquitto 2 writes it
    /// at a clean shutdown (SIGTERM, which [`Mosquitto::stop`] sends) and every
    /// `autosave_interval` seconds, so even a killed broker keeps what is 1 s old.
    fn start_full(port: u16, extra: &str, persistent: bool) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("mosquitto.conf");
        let persistence = if persistent {
            // Started as root, Mosquitto drops to the `mosquitto` user before it saves.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
                .expect("chmod the broker's dir");
            format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.path().display()
            )
        } else {
            "persistence false\n".to_string()
        };
        let text = if extra.contains("listener") {
            format!("{persistence}{extra}\n")
        } else {
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}{extra}\n")
        };
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let mut broker = Mosquitto {
            port,
            persistent,
            dir,
            child: None,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (is the mosquitto package installed?)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker by its PID. Without persistence it is killed (retained messages
    /// are lost); with persistence it gets SIGTERM, so it saves its database first, as a
    /// restarted add-on does.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.persistent {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

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
    pub async fn connect(port: u16, filters: &[&str]) -> Probe {
        let id = format!("probe-{}", fastrand_id());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed_rx) = oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        for filter in filters {
            client
                .subscribe(*filter, QoS::AtLeastOnce)
                .await
                .expect("subscribe");
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

fn fastrand_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

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

fn sim_http(sim: &SimHandle) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().expect("TLS sim").as_bytes()).expect("CA");
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("http client")
}

pub const SECS: Duration = Duration::from_secs(1);

/// The real binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_pve2mqtt");

/// Runs `pve2mqtt run --config path` as its own process, stdout and stderr captured.
pub fn spawn_bridge(path: &Path, envs: &[(&str, &str)]) -> tokio::process::Child {
    tokio::process::Command::new(BIN)
        .env_remove(PERSISTENCE_ENV)
        .args(["run", "--config"])
        .arg(path)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pve2mqtt")
}

/// SIGTERM, then the exit status and everything it printed (at most 15 s).
pub async fn terminate(child: tokio::process::Child) -> std::process::Output {
    let pid = child.id().expect("still running");
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("the bridge exited in time")
        .expect("wait for the bridge")
}
