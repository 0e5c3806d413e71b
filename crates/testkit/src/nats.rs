//! A private NATS cluster with its MQTT gateway on: `nats-server` processes started and
//! killed by PID on free ports, each with a `server_name`, JetStream in a temporary store
//! directory (NATS keeps MQTT sessions and retained messages there), `mqtt { port }` and
//! `cluster { routes }` to every other node.
//!
//! NATS speaks MQTT 3.1.1 only, QoS 0 and 1 (no QoS 2); a node accepts MQTT connections
//! only once the JetStream cluster has a leader, so [`NatsClusterBuilder::spawn`] waits
//! for a real MQTT CONNACK from every node, not just a listening port.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// How long a fresh cluster gets until every node answers MQTT (JetStream elects its
/// meta leader and creates the MQTT streams first), and a restarted node. About 6 s on an
/// idle 2-core machine; once in a CI run next to the whole suite a node took over 30 s,
/// so this matches the tests' own settle time.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// How many of a node's last log lines a readiness failure quotes.
const LOG_TAIL: usize = 30;

/// Options of a cluster to start; see [`NatsCluster::builder`].
#[derive(Debug, Clone)]
pub struct NatsClusterBuilder {
    nodes: usize,
    log: Option<PathBuf>,
    extra: String,
}

impl NatsClusterBuilder {
    /// Number of nodes (default 3, the smallest JetStream cluster that survives losing one).
    pub fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes.max(1);
        self
    }

    /// Appends every node's output to this file (default: one file per node in the
    /// cluster's temporary directory, `n1.log`, …).
    pub fn log_to(mut self, path: &Path) -> Self {
        self.log = Some(path.to_path_buf());
        self
    }

    /// Appended to every node's config (an `authorization` block, say); see
    /// [`NatsCluster::reload`] to change it while the cluster runs.
    pub fn extra_config(mut self, extra: &str) -> Self {
        self.extra = extra.to_string();
        self
    }

    /// Writes each node's config, starts them all and waits until each one answers an
    /// MQTT CONNECT.
    pub fn spawn(self) -> io::Result<NatsCluster> {
        let dir = tempfile::tempdir()?;
        let mut nodes: Vec<NatsNode> = (1..=self.nodes)
            .map(|n| NatsNode {
                name: format!("n{n}"),
                client_port: free_port(),
                cluster_port: free_port(),
                mqtt_port: free_port(),
                http_port: free_port(),
                child: None,
            })
            .collect();
        let routes: Vec<String> = nodes
            .iter()
            .map(|node| format!("\"nats-route://127.0.0.1:{}\"", node.cluster_port))
            .collect();
        for node in &nodes {
            let store = dir.path().join(&node.name);
            std::fs::create_dir_all(&store)?;
        }
        let mut cluster = NatsCluster {
            dir,
            log: self.log,
            nodes: Vec::new(),
            routes,
        };
        for node in &nodes {
            cluster.write_config(node, &self.extra)?;
        }
        for node in &mut nodes {
            spawn_node(cluster.dir.path(), cluster.log.as_deref(), node)?;
        }
        cluster.nodes = nodes;
        for index in 0..cluster.nodes.len() {
            cluster.wait_ready(index)?;
        }
        Ok(cluster)
    }
}

/// One `nats-server` of a [`NatsCluster`].
#[derive(Debug)]
struct NatsNode {
    name: String,
    client_port: u16,
    cluster_port: u16,
    mqtt_port: u16,
    http_port: u16,
    child: Option<Child>,
}

/// A private NATS cluster on 127.0.0.1. Dropping it kills every node.
#[derive(Debug)]
pub struct NatsCluster {
    dir: tempfile::TempDir,
    log: Option<PathBuf>,
    nodes: Vec<NatsNode>,
    /// `cluster.routes` of every node (none for a single node).
    routes: Vec<String>,
}

/// Where `nats-server` is: on the `PATH`, else Debian's `/usr/sbin/nats-server`.
fn nats_binary() -> PathBuf {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("/usr/sbin/nats-server")
}

impl NatsCluster {
    /// Options for a cluster; `.spawn()` starts it.
    pub fn builder() -> NatsClusterBuilder {
        NatsClusterBuilder {
            nodes: 3,
            log: None,
            extra: String::new(),
        }
    }

    /// A 3-node cluster. Panics when it cannot start.
    pub fn start() -> NatsCluster {
        Self::builder().spawn().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Whether the `nats-server` binary is installed.
    pub fn available() -> bool {
        nats_binary().is_file()
    }

    /// The MQTT port of each node, in node order.
    pub fn mqtt_ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|node| node.mqtt_port).collect()
    }

    /// `mqtt://127.0.0.1:<port>` of each node, in node order.
    pub fn mqtt_urls(&self) -> Vec<String> {
        self.mqtt_ports()
            .iter()
            .map(|port| format!("mqtt://127.0.0.1:{port}"))
            .collect()
    }

    /// The PID of node `index`, if it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.nodes[index].child.as_ref().map(Child::id)
    }

    /// Kills node `index` by its PID (SIGKILL): a crashed cluster member.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed node again with its config and JetStream store, and waits until it
    /// answers MQTT. Does nothing when it runs.
    pub fn start_again(&mut self, index: usize) -> io::Result<()> {
        if self.nodes[index].child.is_some() {
            return Ok(());
        }
        spawn_node(self.dir.path(), self.log.as_deref(), &mut self.nodes[index])?;
        self.wait_ready(index)
    }

    /// Kills every node and starts them all again with their stores (a whole-cluster
    /// outage), then waits until each answers MQTT.
    pub fn restart_all(&mut self) -> io::Result<()> {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
        for node in &mut self.nodes {
            spawn_node(self.dir.path(), self.log.as_deref(), node)?;
        }
        for index in 0..self.nodes.len() {
            self.wait_ready(index)?;
        }
        Ok(())
    }

    /// The index of the running node that has an MQTT client with this id connected, read
    /// from each node's monitoring endpoint (`/connz?mqtt_client=<id>`).
    pub fn node_of_mqtt_client(&self, client_id: &str) -> Option<usize> {
        self.nodes.iter().position(|node| {
            node.child.is_some()
                && http_get(node.http_port, &format!("/connz?mqtt_client={client_id}"))
                    .ok()
                    .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
                    .and_then(|json| json["num_connections"].as_u64())
                    .is_some_and(|count| count > 0)
        })
    }

    /// Rewrites every node's config with `extra` in place of the builder's
    /// [`NatsClusterBuilder::extra_config`] and has each running node reload it
    /// (`nats-server --signal reload=<pid>`): permissions change without a restart.
    pub fn reload(&self, extra: &str) -> io::Result<()> {
        for node in &self.nodes {
            self.write_config(node, extra)?;
            let Some(pid) = node.child.as_ref().map(Child::id) else {
                continue;
            };
            let status = Command::new(nats_binary())
                .arg("--signal")
                .arg(format!("reload={pid}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if !status.success() {
                return Err(io::Error::other(format!(
                    "nats-server {} did not take the reload signal ({status})",
                    node.name
                )));
            }
        }
        Ok(())
    }

    /// Writes `<name>.conf` of `node`: its ports, its JetStream store, the routes to the
    /// other nodes and `extra`.
    fn write_config(&self, node: &NatsNode, extra: &str) -> io::Result<()> {
        let dir = self.dir.path();
        let cluster = if self.routes.len() > 1 {
            format!(
                "cluster {{\n  name: testkit\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                node.cluster_port,
                self.routes.join(", ")
            )
        } else {
            String::new()
        };
        let text = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{http}\n\
             jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 64MB\n  max_file_store: 256MB\n}}\n\
             mqtt {{\n  listen: 127.0.0.1:{mqtt}\n}}\n{cluster}{extra}\n",
            name = node.name,
            client = node.client_port,
            http = node.http_port,
            store = dir.join(&node.name).display(),
            mqtt = node.mqtt_port,
        );
        std::fs::write(dir.join(format!("{}.conf", node.name)), text)
    }

    /// The cluster's temporary directory (configs, JetStream stores, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last [`LOG_TAIL`] lines of node `index`'s log (of the shared log with
    /// [`NatsClusterBuilder::log_to`]): the temporary directory is gone once the cluster
    /// is dropped, so a failure has to quote it.
    fn log_tail(&self, index: usize) -> String {
        let path = match &self.log {
            Some(path) => path.clone(),
            None => self
                .dir
                .path()
                .join(format!("{}.log", self.nodes[index].name)),
        };
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
    }

    /// Waits until node `index` acknowledges an MQTT CONNECT.
    fn wait_ready(&mut self, index: usize) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            let node = &mut self.nodes[index];
            if let Some(status) = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                node.child = None;
                let name = node.name.clone();
                return Err(io::Error::other(format!(
                    "nats-server {name} exited ({status}) before answering MQTT; its last \
                     log lines:\n{}",
                    self.log_tail(index)
                )));
            }
            match mqtt_handshake(node.mqtt_port) {
                Ok(()) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                let name = node.name.clone();
                self.kill(index);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "nats-server {name} did not answer MQTT within {} s ({last}); \
                         its last log lines:\n{}",
                        READY_TIMEOUT.as_secs(),
                        self.log_tail(index)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
    }
}

/// Starts one node from its config in `dir`; output to `log` or `dir/<name>.log`.
fn spawn_node(dir: &Path, log: Option<&Path>, node: &mut NatsNode) -> io::Result<()> {
    let binary = nats_binary();
    let log = match log {
        Some(path) => path.to_path_buf(),
        None => dir.join(format!("{}.log", node.name)),
    };
    let file = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log)?;
    let child = Command::new(&binary)
        .arg("-c")
        .arg(dir.join(format!("{}.conf", node.name)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file))
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "start {} (is the nats-server package installed?): {e}",
                    binary.display()
                ),
            )
        })?;
    node.child = Some(child);
    Ok(())
}

/// One MQTT 3.1.1 CONNECT (clean session) and its CONNACK, then DISCONNECT.
fn mqtt_handshake(port: u16) -> io::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let id = format!("testkit-ready-{}", crate::unique_id());
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    stream.write_all(&packet)?;
    let mut ack = [0u8; 4];
    stream.read_exact(&mut ack)?;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(io::Error::other(format!("CONNACK {ack:?}")));
    }
    let _ = stream.write_all(&[0xE0, 0]);
    Ok(())
}

/// A plain HTTP/1.0 GET on 127.0.0.1 (the monitoring endpoint), the body as text.
fn http_get(port: u16, path: &str) -> io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}
