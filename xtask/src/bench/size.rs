//! One cluster size: the simulator, a private Mosquitto and the bridge as separate
//! processes, then the measured phases (discovery, idle and changed polls, commands).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::latency::strip_ansi;
use super::report::{topic_class, Window, STATE_CLASSES};
use super::timeline::{Entry, Timeline};
use super::{is_slow_route, log, BASE, DISCOVERY_PREFIX, FAST_ROUTE, TASK_DURATION_MS};
use crate::mqtt::{Msg, Recorder};
use crate::procs::{self, Mosquitto};
use crate::sim::Simulator;

pub struct SizeRun {
    pub guests: u32,
    /// The bridge's `poll.interval`, seconds.
    pub poll_interval: f64,
    pub dir: PathBuf,
    pub(super) binary: PathBuf,
    pub origin: Instant,
    pub result: serde_json::Map<String, Value>,
    pub broker: Mosquitto,
    pub sim: Arc<Simulator>,
    pub probe: Recorder,
    pub timeline: Timeline,
    pub bridge: Option<Child>,
    bridge_started: f64,
    expected_objects: usize,
    eligible: Vec<Value>,
    patch_cursor: usize,
}

/// Seconds since the Unix epoch, for matching the bridge's own log clock.
pub(super) fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl SizeRun {
    pub async fn start(
        binary: &Path,
        (nodes, guests): (u32, u32),
        world: &super::WorldArgs,
        dir: PathBuf,
        nodelay: bool,
    ) -> anyhow::Result<SizeRun> {
        let poll_interval = world.poll_interval;
        let slow_interval = world.slow_interval;
        let origin = Instant::now();
        // `max_queued_messages 0`: the default (1000) would make Mosquitto drop messages to
        // *this benchmark's* subscriber when it lags during a discovery burst; it has no
        // effect on the bridge's own (incoming QoS 1) publishes.
        let mut extra =
            "max_queued_messages 0\nlog_dest stderr\nlog_type error\nlog_type warning\n\
            log_type notice\nlog_type information\nconnection_messages true\n"
                .to_string();
        // The probe's own listener: a Unix socket (see `Recorder`).
        let socket = dir.join("mosquitto.sock");
        extra += &format!("listener 0 {}\n", socket.display());
        if nodelay {
            extra += "set_tcp_nodelay true\n";
        }
        let broker = procs::mosquitto(&dir, false, &extra)?;
        // The world starts frozen (the still phases); `set_frozen(false)` lets it move on
        // pvestatd's 10 s cadence for the moving phase.
        let mut sim_args: Vec<String> = [
            "--nodes",
            &nodes.to_string(),
            "--guests",
            &guests.to_string(),
            "--task-duration",
            &format!("{TASK_DURATION_MS}ms"),
            "--running",
            &world.running.to_string(),
            "--frozen",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(interval) = &world.stats_interval {
            sim_args.extend(["--stats-interval".to_string(), interval.clone()]);
        }
        let sim = Arc::new(Simulator::start(binary, &sim_args, &dir.join("sim.log"))?);
        let world = sim.get("/_sim/world").await?;
        let node_count = world["nodes"].as_array().map_or(0, Vec::len);
        let storage_rows: usize = world["storages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| match s["nodes"].as_array() {
                Some(nodes) if !nodes.is_empty() => nodes.len(),
                _ => node_count,
            })
            .sum();
        let world_guests = world["guests"].as_array().cloned().unwrap_or_default();
        let running = world_guests
            .iter()
            .filter(|g| g["status"] == "running")
            .count();
        // Node health (issue 11): each disk and ZFS pool is a device of its own.
        let mut health_objects = 0usize;
        for node in world["nodes"].as_array().into_iter().flatten() {
            let Some(name) = node["name"].as_str() else {
                continue;
            };
            let health = sim.get(&format!("/_sim/nodes/{name}/health")).await?;
            health_objects += health["disks"].as_array().map_or(0, Vec::len)
                + health["zfs"].as_array().map_or(0, Vec::len);
        }
        let expected_objects = 1 + node_count + world_guests.len() + storage_rows + health_objects;
        let eligible = world_guests
            .iter()
            .filter(|g| !truthy(&g["template"]) && !truthy(&g["hastate"]))
            .cloned()
            .collect();
        let mut result = serde_json::Map::new();
        result.insert("size".into(), json!(format!("{nodes}x{guests}")));
        result.insert("nodes".into(), json!(nodes));
        result.insert("guests".into(), json!(guests));
        result.insert("objects".into(), json!(expected_objects));
        result.insert("running_guests".into(), json!(running));
        result.insert("poll_interval_s".into(), json!(poll_interval));
        result.insert("slow_interval_s".into(), json!(slow_interval));
        let poll_ms = (poll_interval * 1000.0).round() as u64;
        let slow_ms = (slow_interval * 1000.0).round() as u64;
        std::fs::write(
            dir.join("pve2mqtt.toml"),
            format!(
                "[proxmox]\nurl = \"{}\"\ntoken = \"{}\"\nfingerprint = \"{}\"\ntimeout = \"10s\"\n\n\
                 [poll]\ninterval = \"{poll_ms}ms\"\nslow_interval = \"{slow_ms}ms\"\n\n\
                 [mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nclient_id = \"pve2mqtt-bench\"\n",
                sim.base,
                crate::sim::TOKEN,
                sim.fingerprint,
                broker.port
            ),
        )?;
        let filters = [format!("{BASE}/#"), format!("{DISCOVERY_PREFIX}/#")];
        let probe = Recorder::start(&socket, "bench-probe", &filters, origin).await?;
        let timeline = Timeline::spawn(sim.clone(), origin);
        Ok(SizeRun {
            guests,
            poll_interval,
            dir,
            binary: binary.to_path_buf(),
            origin,
            result,
            broker,
            sim,
            probe,
            timeline,
            bridge: None,
            bridge_started: 0.0,
            expected_objects,
            eligible,
            patch_cursor: 0,
        })
    }

    pub async fn teardown(&mut self) {
        self.timeline.stop();
        if let Some(mut bridge) = self.bridge.take() {
            procs::terminate(&mut bridge, Duration::from_secs(10)).await;
        }
        self.sim.stop().await;
        self.broker.stop();
    }

    pub fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    fn bridge_pid(&self) -> u32 {
        self.bridge.as_ref().map_or(0, Child::id)
    }

    pub fn cpu(&self) -> f64 {
        cpu_seconds(self.bridge_pid())
    }

    fn sim_cpu(&self) -> f64 {
        cpu_seconds(self.sim.pid().unwrap_or(0))
    }

    pub fn status_mb(&self, field: &str) -> f64 {
        procs::status_kb(self.bridge_pid(), field).unwrap_or(0) as f64 / 1024.0
    }

    async fn counters(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let counters = self.sim.get("/_sim/counters").await?;
        Ok(counters
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
            .collect())
    }

    // ---- phases -------------------------------------------------------------------------

    pub fn start_bridge(&mut self) -> anyhow::Result<()> {
        // The client's debug line "Proxmox answered ... call=POST ..." (one per request)
        // gives a second, poll-free measure of publish -> POST.
        let filter = std::env::var("BENCH_RUST_LOG")
            .unwrap_or_else(|_| "info,pve2mqtt::pve::client=debug".into());
        let stderr = std::fs::File::create(self.dir.join("bridge.stderr"))?;
        self.bridge_started = self.now();
        let child = Command::new(&self.binary)
            .arg("run")
            .arg("--config")
            .arg(self.dir.join("pve2mqtt.toml"))
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting the bridge")?;
        self.bridge = Some(child);
        Ok(())
    }

    /// Until every object's discovery config arrived and nothing more came for 3 s.
    pub async fn wait_discovery(&mut self) -> anyhow::Result<()> {
        let deadline = self.now() + 240.0;
        let mut seen = BTreeSet::new();
        let (mut index, mut first, mut last) = (0, None, None);
        while self.now() < deadline {
            let fresh = self.probe.since(index);
            index += fresh.len();
            for m in fresh {
                if topic_class(&m.topic) == "discovery" && !m.payload.is_empty() {
                    seen.insert(m.topic);
                    last = Some(m.t);
                    first = first.or(Some(m.t));
                }
            }
            if seen.len() >= self.expected_objects && last.is_some_and(|l| self.now() - l > 3.0) {
                break;
            }
            if let Some(code) = self.bridge.as_mut().and_then(procs::exited) {
                bail!("the bridge exited with {code:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let started = self.bridge_started;
        let r = &mut self.result;
        r.insert("discovery_live_count".into(), json!(seen.len()));
        r.insert(
            "discovery_first_s".into(),
            json!(first.map(|t| t - started)),
        );
        r.insert("discovery_last_s".into(), json!(last.map(|t| t - started)));
        let cpu = self.cpu();
        let rss = self.status_mb("VmRSS");
        let states: BTreeSet<String> = self
            .probe
            .all()
            .into_iter()
            .filter(|m| STATE_CLASSES.contains(&topic_class(&m.topic)))
            .map(|m| m.topic)
            .collect();
        let r = &mut self.result;
        r.insert("startup_cpu_s".into(), json!(cpu));
        r.insert("rss_after_discovery_mb".into(), json!(rss));
        r.insert("state_topics_live".into(), json!(states.len()));
        log(&format!(
            "discovery: {}/{} in {:.2} s",
            seen.len(),
            self.expected_objects,
            last.map_or(0.0, |t| t - started)
        ));
        Ok(())
    }

    /// Until the slow lane's first round is over (no slow-lane request for longer than its
    /// largest spacing, 2 s), then records what its view published: the first polls lack
    /// node details and last-backup times, so this round republishes many objects.
    pub async fn wait_first_slow_round(&mut self) -> anyhow::Result<()> {
        let deadline = self.now() + 60.0;
        let end = loop {
            let rounds = slow_rounds(&self.timeline.snapshot());
            if let Some(first) = rounds.first() {
                if self.now() - first.end > 2.6 {
                    break first.end;
                }
            }
            if self.now() >= deadline {
                bail!("the slow lane's first round did not end");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut classes: BTreeMap<&str, u64> = BTreeMap::new();
        for m in self.probe.between(end - 0.05, end + 2.0) {
            *classes.entry(topic_class(&m.topic)).or_default() += 1;
        }
        let ended = end - self.bridge_started;
        self.result.insert(
            "first_slow_round".into(),
            json!({"ended_s": ended, "messages_by_class": classes}),
        );
        Ok(())
    }

    /// `count` consecutive one-poll windows; with `patch_fraction`, that share of the
    /// guests changes state (PATCH status) at the start of each window.
    pub async fn run_windows(
        &mut self,
        count: usize,
        patch_fraction: f64,
    ) -> anyhow::Result<Vec<Window>> {
        let half = self.poll_interval / 2.0;
        let poll = self
            .timeline
            .wait_poll_after(self.origin, self.now(), self.poll_interval * 3.0)
            .await?;
        self.sleep_until(poll + half).await;
        let (mut start_t, mut start_cpu, mut start_sim, mut start_counters) = (
            self.now(),
            self.cpu(),
            self.sim_cpu(),
            self.counters().await?,
        );
        let mut windows = Vec::new();
        for _ in 0..count {
            let (mut changed, mut split) = (0, false);
            if patch_fraction > 0.0 {
                let patch_start = self.now();
                changed = self.patch_guests(patch_fraction).await?;
                let patch_end = self.now();
                // The patch must fall between two polls (GET seen strictly inside = split).
                split = self
                    .timeline
                    .polls_after(patch_start - 0.05)
                    .iter()
                    .any(|p| patch_start < *p && *p < patch_end);
            }
            let poll = self
                .timeline
                .wait_poll_after(self.origin, start_t, self.poll_interval * 3.0)
                .await?;
            self.sleep_until(poll + half).await;
            let (end_t, end_cpu, end_sim, end_counters) = (
                self.now(),
                self.cpu(),
                self.sim_cpu(),
                self.counters().await?,
            );
            let counters: BTreeMap<String, u64> = end_counters
                .iter()
                .filter_map(|(k, v)| {
                    let delta = v.saturating_sub(start_counters.get(k).copied().unwrap_or(0));
                    (delta > 0).then(|| (k.clone(), delta))
                })
                .collect();
            let mut w = Window {
                start: start_t,
                end: end_t,
                cpu: end_cpu - start_cpu,
                sim_cpu: end_sim - start_sim,
                polls: counters.get(FAST_ROUTE).copied().unwrap_or(0),
                counters,
                changed,
                split,
                ..Default::default()
            };
            for m in self.probe.between(start_t, end_t) {
                *w.messages
                    .entry(topic_class(&m.topic).to_string())
                    .or_default() += 1;
                w.bytes += (m.topic.len() + m.payload.len()) as u64;
            }
            windows.push(w);
            (start_t, start_cpu, start_sim, start_counters) =
                (end_t, end_cpu, end_sim, end_counters);
        }
        Ok(windows)
    }

    /// Freezes the simulator's figures, or lets them move on pvestatd's cadence.
    pub async fn set_frozen(&self, frozen: bool) -> anyhow::Result<()> {
        self.sim
            .call(
                Method::POST,
                "/_sim/config",
                Some(&json!({ "frozen": frozen })),
            )
            .await?;
        Ok(())
    }

    async fn sleep_until(&self, t: f64) {
        let wait = t - self.now();
        if wait > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }

    /// Toggles running/stopped on the next `fraction` of the eligible guests.
    async fn patch_guests(&mut self, fraction: f64) -> anyhow::Result<u64> {
        let want = ((f64::from(self.guests) * fraction).round() as u64).max(1);
        for _ in 0..want {
            let index = self.patch_cursor % self.eligible.len();
            self.patch_cursor += 1;
            let guest = &mut self.eligible[index];
            let new = if guest["status"] == "running" {
                "stopped"
            } else {
                "running"
            };
            let path = format!("/_sim/guests/{}", guest["vmid"]);
            guest["status"] = json!(new);
            self.sim
                .call(Method::PATCH, &path, Some(&json!({"status": new})))
                .await?;
        }
        Ok(want)
    }

    pub fn classify_slow(&self, windows: &mut [Window]) {
        let rounds = slow_rounds(&self.timeline.snapshot());
        for w in windows {
            w.slow_view = rounds
                .iter()
                .any(|r| w.start - 0.05 <= r.end && r.end < w.end);
            w.slow_requests = w
                .counters
                .iter()
                .filter(|(k, _)| is_slow_route(k))
                .map(|(_, v)| v)
                .sum();
        }
    }

    /// Retained copies a fresh subscriber gets: every discovery payload is on the broker
    /// (independent of the live probe).
    pub async fn count_retained(&mut self) -> anyhow::Result<()> {
        let filters = [format!("{DISCOVERY_PREFIX}/#"), format!("{BASE}/#")];
        let fresh = Recorder::start(
            &self.dir.join("mosquitto.sock"),
            "bench-retained",
            &filters,
            self.origin,
        )
        .await?;
        let (mut last_count, mut quiet_since) = (usize::MAX, self.now());
        while self.now() - quiet_since < 1.5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if fresh.len() != last_count {
                (last_count, quiet_since) = (fresh.len(), self.now());
            }
        }
        let retained: Vec<Msg> = fresh
            .all()
            .into_iter()
            .filter(|m| m.retain && !m.payload.is_empty())
            .collect();
        let discovery: Vec<&Msg> = retained
            .iter()
            .filter(|m| topic_class(&m.topic) == "discovery")
            .collect();
        let r = &mut self.result;
        r.insert("discovery_retained".into(), json!(discovery.len()));
        r.insert(
            "state_retained".into(),
            json!(retained
                .iter()
                .filter(|m| STATE_CLASSES.contains(&topic_class(&m.topic)))
                .count()),
        );
        r.insert(
            "discovery_bytes".into(),
            json!(discovery.iter().map(|m| m.payload.len()).sum::<usize>()),
        );
        // Every discovery payload the live probe got over the whole run, resends included:
        // what Home Assistant had to process.
        let sent = self
            .probe
            .all()
            .into_iter()
            .filter(|m| topic_class(&m.topic) == "discovery" && !m.payload.is_empty())
            .count();
        self.result.insert("discovery_messages".into(), json!(sent));
        Ok(())
    }

    /// Connections, warnings and totals from the logs.
    pub fn read_logs(&mut self) {
        let stderr = strip_ansi(&String::from_utf8_lossy(
            &std::fs::read(self.dir.join("bridge.stderr")).unwrap_or_default(),
        ));
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        let mosquitto = String::from_utf8_lossy(
            &self
                .broker
                .log_path()
                .and_then(|p| std::fs::read(p).ok())
                .unwrap_or_default(),
        )
        .into_owned();
        // One connection for the whole run = the broker never dropped the bridge.
        let connections = mosquitto
            .lines()
            .filter(|l| l.contains("New client connected") && l.contains(" as pve2mqtt-bench "))
            .count();
        let (peak, now, cpu) = (self.status_mb("VmHWM"), self.status_mb("VmRSS"), self.cpu());
        let r = &mut self.result;
        r.insert("rss_peak_mb".into(), json!(peak));
        r.insert("rss_now_mb".into(), json!(now));
        r.insert("total_cpu_s".into(), json!(cpu));
        r.insert(
            "lost_mqtt_connection".into(),
            json!(stderr.matches("lost the MQTT connection").count()),
        );
        r.insert("bridge_warnings".into(), json!(warnings.len()));
        r.insert(
            "warning_samples".into(),
            json!(warnings.iter().take(5).collect::<Vec<_>>()),
        );
        r.insert("bridge_connections".into(), json!(connections));
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    procs::cpu_ticks(pid).unwrap_or(0) as f64 / procs::clock_ticks_per_second() as f64
}

/// Python's truthiness for the simulator's optional fields.
pub(super) fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

pub struct SlowRound {
    pub start: f64,
    pub end: f64,
    pub routes: BTreeMap<String, u64>,
    pub times: Vec<f64>,
}

/// Slow-lane rounds from the request timeline: each starts with `GET /version` after the
/// first fast poll (the bridge's own start-up check comes before it).
pub fn slow_rounds(entries: &[Entry]) -> Vec<SlowRound> {
    let Some(first_poll) = entries
        .iter()
        .find(|e| e.route == FAST_ROUTE)
        .map(|e| e.seq)
    else {
        return Vec::new();
    };
    let mut rounds: Vec<SlowRound> = Vec::new();
    for e in entries {
        if e.seq < first_poll || !is_slow_route(&e.route) {
            continue;
        }
        if e.route == "GET /version" {
            rounds.push(SlowRound {
                start: e.seen,
                end: e.seen,
                routes: BTreeMap::new(),
                times: Vec::new(),
            });
        }
        let Some(r) = rounds.last_mut() else { continue };
        r.end = e.seen;
        *r.routes.entry(e.route.clone()).or_default() += 1;
        r.times.push(e.seen);
    }
    rounds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_rounds_start_at_each_version_request_after_the_first_poll() {
        let e = |seq, route: &str, seen| Entry {
            seq,
            route: route.into(),
            method: "GET".into(),
            path: String::new(),
            seen,
        };
        let entries = [
            e(1, "GET /version", 0.0),
            e(2, FAST_ROUTE, 0.1),
            e(3, "GET /version", 1.0),
            e(4, "GET /cluster/status", 1.5),
            e(5, "GET /version", 21.0),
        ];
        let rounds = slow_rounds(&entries);
        assert_eq!(rounds.len(), 2);
        assert_eq!(
            (rounds[0].start, rounds[0].end, rounds[0].times.len()),
            (1.0, 1.5, 2)
        );
    }
}
