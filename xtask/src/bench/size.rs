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

use super::report::{self, topic_class, Window, STATE_CLASSES};
use super::timeline::{Entry, Timeline};
use super::{log, BASE, CLUSTER, DISCOVERY_PREFIX, FAST_ROUTE, POLL_INTERVAL, SLOW_INTERVAL, SLOW_ROUTES, TASK_DURATION_MS};
use crate::mqtt::{Msg, Recorder};
use crate::procs::{self, Mosquitto};
use crate::sim::Simulator;

pub struct SizeRun {
    pub guests: u32,
    pub dir: PathBuf,
    binary: PathBuf,
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
fn wall() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl SizeRun {
    pub async fn start(binary: &Path, nodes: u32, guests: u32, dir: PathBuf, nodelay: bool) -> anyhow::Result<SizeRun> {
        let origin = Instant::now();
        // `max_queued_messages 0`: the default (1000) would make Mosquitto drop messages to
        // *this benchmark's* subscriber when it lags during a discovery burst; it has no
        // effect on the bridge's own (incoming QoS 1) publishes.
        let mut extra = "max_queued_messages 0\nlog_dest stderr\nlog_type error\nlog_type warning\n\
            log_type notice\nlog_type information\nconnection_messages true\n"
            .to_string();
        if nodelay {
            extra += "set_tcp_nodelay true\n";
        }
        let broker = Mosquitto::start_with(&dir, false, &extra).await?;
        let sim_args: Vec<String> = ["--nodes", &nodes.to_string(), "--guests", &guests.to_string(), "--task-duration", &format!("{TASK_DURATION_MS}ms")]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let sim = Arc::new(Simulator::start(binary, &sim_args, &dir.join("sim.log"))?);
        // Freeze the cluster-wide figures at "now": stats_time = floor(now/I)*I stays at I
        // for as long as now < 2*I, i.e. for decades.
        let now_ms = (wall() * 1000.0) as u64;
        sim.call(Method::POST, "/_sim/config", Some(&json!({"stats_interval_ms": now_ms}))).await?;
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
        let expected_objects = 1 + node_count + world_guests.len() + storage_rows;
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
        std::fs::write(
            dir.join("pve2mqtt.toml"),
            format!(
                "[proxmox]\nurl = \"{}\"\ntoken = \"{}\"\nfingerprint = \"{}\"\ntimeout = \"10s\"\n\n\
                 [poll]\ninterval = \"{POLL_INTERVAL:.0}s\"\nslow_interval = \"{SLOW_INTERVAL:.0}s\"\n\n\
                 [mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nclient_id = \"pve2mqtt-bench\"\n",
                sim.base,
                crate::sim::TOKEN,
                sim.fingerprint,
                broker.port
            ),
        )?;
        let filters = [format!("{BASE}/#"), format!("{DISCOVERY_PREFIX}/#")];
        let probe = Recorder::start(broker.port, "bench-probe", &filters, origin).await?;
        let timeline = Timeline::spawn(sim.clone(), origin);
        Ok(SizeRun {
            guests,
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
        self.broker.stop().await;
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
        let filter = std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info,pve2mqtt::pve::client=debug".into());
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
                if m.topic.starts_with(&format!("{DISCOVERY_PREFIX}/device/")) && !m.payload.is_empty() {
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
        r.insert("discovery_first_s".into(), json!(first.map(|t| t - started)));
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
        self.result.insert("first_slow_round".into(), json!({"ended_s": ended, "messages_by_class": classes}));
        Ok(())
    }

    /// `count` consecutive one-poll windows; with `patch_fraction`, that share of the
    /// guests changes state (PATCH status) at the start of each window.
    pub async fn run_windows(&mut self, count: usize, patch_fraction: f64) -> anyhow::Result<Vec<Window>> {
        let half = POLL_INTERVAL / 2.0;
        let poll = self.timeline.wait_poll_after(self.origin, self.now(), POLL_INTERVAL * 3.0).await?;
        self.sleep_until(poll + half).await;
        let (mut start_t, mut start_cpu, mut start_sim, mut start_counters) =
            (self.now(), self.cpu(), self.sim_cpu(), self.counters().await?);
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
            let poll = self.timeline.wait_poll_after(self.origin, start_t, POLL_INTERVAL * 3.0).await?;
            self.sleep_until(poll + half).await;
            let (end_t, end_cpu, end_sim, end_counters) =
                (self.now(), self.cpu(), self.sim_cpu(), self.counters().await?);
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
                *w.messages.entry(topic_class(&m.topic).to_string()).or_default() += 1;
                w.bytes += (m.topic.len() + m.payload.len()) as u64;
            }
            windows.push(w);
            (start_t, start_cpu, start_sim, start_counters) = (end_t, end_cpu, end_sim, end_counters);
        }
        Ok(windows)
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
            let new = if guest["status"] == "running" { "stopped" } else { "running" };
            let path = format!("/_sim/guests/{}", guest["vmid"]);
            guest["status"] = json!(new);
            self.sim.call(Method::PATCH, &path, Some(&json!({"status": new}))).await?;
        }
        Ok(want)
    }

    pub fn classify_slow(&self, windows: &mut [Window]) {
        let rounds = slow_rounds(&self.timeline.snapshot());
        for w in windows {
            w.slow_view = rounds.iter().any(|r| w.start - 0.05 <= r.end && r.end < w.end);
            w.slow_requests = w.counters.iter().filter(|(k, _)| SLOW_ROUTES.contains(&k.as_str())).map(|(_, v)| v).sum();
        }
    }

    /// `count` lifecycle commands (stop a running guest, start a stopped one), each on a
    /// guest with no command in flight, so the per-guest busy rule never serialises them;
    /// guests are reused only when there are fewer than `count`.
    ///
    /// `burst`: a new command every `gap` seconds whatever is still running.
    /// `isolated`: one command at a time, the next `gap` seconds after the previous one
    /// finished (its `ok` and the guest's new state both seen): a lone command's latency.
    pub async fn run_commands(&mut self, mode: &str, count: usize, max_in_flight: usize, gap: f64) -> anyhow::Result<()> {
        self.timeline.set_period(Duration::from_millis(1)); // tight while commands run
        let world = self.sim.get("/_sim/world").await?;
        let guests: Vec<Value> = world["guests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| !truthy(&g["template"]) && !truthy(&g["hastate"]) && matches!(g["status"].as_str(), Some("running" | "stopped")))
            .cloned()
            .collect();
        let mut by_vmid: BTreeMap<u64, Value> = guests.iter().map(|g| (g["vmid"].as_u64().unwrap_or(0), g.clone())).collect();
        let mut idle: std::collections::VecDeque<u64> = guests.iter().map(|g| g["vmid"].as_u64().unwrap_or(0)).collect();
        let mut busy: BTreeMap<u64, usize> = BTreeMap::new();
        let mut pending_post: BTreeMap<u64, usize> = BTreeMap::new();
        let mut records: Vec<Record> = Vec::new();
        let mut msg_index = self.probe.len();
        let mut req_index = self.timeline.len();
        let (mut sent, mut next_send) = (0, self.now());
        let deadline = self.now() + 150.0;
        while (sent < count || !busy.is_empty()) && self.now() < deadline {
            if sent < count && !idle.is_empty() && busy.len() < max_in_flight && self.now() >= next_send {
                let vmid = idle.pop_front().expect("not empty");
                let g = &by_vmid[&vmid];
                let action = if g["status"] == "running" { "stop" } else { "start" };
                let id = format!("{mode}-{sent}");
                let topic = format!("{BASE}/{CLUSTER}/{}/{vmid}/set", g["type"].as_str().unwrap_or("qemu"));
                let payload = json!({"action": action, "id": id}).to_string().into_bytes();
                let wall_pub = wall();
                let t_pub = self.probe.publish(&topic, payload).await?;
                records.push(Record::new(vmid, action, id, wall_pub, t_pub));
                busy.insert(vmid, records.len() - 1);
                pending_post.insert(vmid, records.len() - 1);
                sent += 1;
                next_send = t_pub + gap;
            }
            // POSTs seen by the simulator.
            let fresh: Vec<Entry> = self.timeline.since(req_index);
            req_index += fresh.len();
            for e in fresh {
                if e.method == "POST" && e.path.contains("/status/") {
                    if let Some(vmid) = e.path.split('/').nth(4).and_then(|v| v.parse().ok()) {
                        if let Some(i) = pending_post.remove(&vmid) {
                            records[i].t_post = Some(e.seen);
                        }
                    }
                }
            }
            // Task and state messages.
            let messages: Vec<Msg> = self.probe.since(msg_index);
            msg_index += messages.len();
            for m in messages {
                let class = topic_class(&m.topic);
                if class != "task" && class != "guest" {
                    continue;
                }
                let Some(vmid) = m.topic.split('/').nth(3).and_then(|v| v.parse::<u64>().ok()) else { continue };
                let Some(&i) = busy.get(&vmid) else { continue };
                let Ok(body) = serde_json::from_slice::<Value>(&m.payload) else { continue };
                let rec = &mut records[i];
                if class == "task" && body["id"] == rec.id.as_str() {
                    let state = body["state"].as_str().unwrap_or("").to_string();
                    rec.times.entry(state.clone()).or_insert(m.t);
                    if matches!(state.as_str(), "ok" | "failed" | "rejected") {
                        rec.final_state = Some(state);
                    }
                } else if class == "guest" && body["status"] == rec.expect && m.t > rec.t_pub {
                    rec.t_state.get_or_insert(m.t);
                }
                if let Some(final_state) = rec.final_state.clone() {
                    if rec.t_state.is_some() || final_state != "ok" {
                        busy.remove(&vmid);
                        if final_state == "ok" {
                            if let Some(g) = by_vmid.get_mut(&vmid) {
                                g["status"] = json!(rec.expect);
                            }
                        }
                        idle.push_back(vmid);
                        if max_in_flight == 1 {
                            next_send = self.now() + gap;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        self.timeline.set_period(Duration::from_millis(20));
        self.match_answered_posts(&mut records);
        let summary = summarise_commands(&records);
        let commands = self.result.entry("commands").or_insert_with(|| json!({}));
        commands[mode] = summary;
        Ok(())
    }

    /// `answered_after`: when the bridge logged the POST's answer (its own clock, µs).
    fn match_answered_posts(&self, records: &mut [Record]) {
        let text = std::fs::read(self.dir.join("bridge.stderr")).unwrap_or_default();
        let text = strip_ansi(&String::from_utf8_lossy(&text));
        let mut answered: Vec<(String, f64)> = Vec::new();
        for line in text.lines() {
            if let Some(pair) = parse_answered(line) {
                answered.push(pair);
            }
        }
        for r in records {
            let path = format!("/{}/status/{}", r.vmid, r.action);
            let first = answered
                .iter()
                .filter(|(call, at)| call.ends_with(&path) && *at >= r.wall_pub)
                .map(|(_, at)| *at)
                .fold(f64::INFINITY, f64::min);
            if first.is_finite() {
                r.answered_after = Some(first - r.wall_pub);
            }
        }
    }

    /// Retained copies a fresh subscriber gets: every discovery payload is on the broker
    /// (independent of the live probe).
    pub async fn count_retained(&mut self) -> anyhow::Result<()> {
        let filters = [format!("{DISCOVERY_PREFIX}/#"), format!("{BASE}/#")];
        let fresh = Recorder::start(self.broker.port, "bench-retained", &filters, self.origin).await?;
        let (mut last_count, mut quiet_since) = (usize::MAX, self.now());
        while self.now() - quiet_since < 1.5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if fresh.len() != last_count {
                (last_count, quiet_since) = (fresh.len(), self.now());
            }
        }
        let retained: Vec<Msg> = fresh.all().into_iter().filter(|m| m.retain && !m.payload.is_empty()).collect();
        let discovery: Vec<&Msg> = retained.iter().filter(|m| topic_class(&m.topic) == "discovery").collect();
        let r = &mut self.result;
        r.insert("discovery_retained".into(), json!(discovery.len()));
        r.insert("state_retained".into(), json!(retained.iter().filter(|m| STATE_CLASSES.contains(&topic_class(&m.topic))).count()));
        r.insert("discovery_bytes".into(), json!(discovery.iter().map(|m| m.payload.len()).sum::<usize>()));
        Ok(())
    }

    /// Connections, warnings and totals from the logs.
    pub fn read_logs(&mut self) {
        let stderr = strip_ansi(&String::from_utf8_lossy(&std::fs::read(self.dir.join("bridge.stderr")).unwrap_or_default()));
        let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
        let mosquitto = String::from_utf8_lossy(&std::fs::read(self.broker.log_path()).unwrap_or_default()).into_owned();
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
        r.insert("lost_mqtt_connection".into(), json!(stderr.matches("lost the MQTT connection").count()));
        r.insert("bridge_warnings".into(), json!(warnings.len()));
        r.insert("warning_samples".into(), json!(warnings.iter().take(5).collect::<Vec<_>>()));
        r.insert("bridge_connections".into(), json!(connections));
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    procs::cpu_ticks(pid).unwrap_or(0) as f64 / procs::clock_ticks_per_second() as f64
}

/// Python's truthiness for the simulator's optional fields.
fn truthy(value: &Value) -> bool {
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
    let Some(first_poll) = entries.iter().find(|e| e.route == FAST_ROUTE).map(|e| e.seq) else {
        return Vec::new();
    };
    let mut rounds: Vec<SlowRound> = Vec::new();
    for e in entries {
        if e.seq < first_poll || !SLOW_ROUTES.contains(&e.route.as_str()) {
            continue;
        }
        if e.route == "GET /version" {
            rounds.push(SlowRound { start: e.seen, end: e.seen, routes: BTreeMap::new(), times: Vec::new() });
        }
        let Some(r) = rounds.last_mut() else { continue };
        r.end = e.seen;
        *r.routes.entry(e.route.clone()).or_default() += 1;
        r.times.push(e.seen);
    }
    rounds
}

/// One command of the latency phases.
pub struct Record {
    pub vmid: u64,
    pub action: &'static str,
    pub id: String,
    pub expect: &'static str,
    pub wall_pub: f64,
    pub t_pub: f64,
    pub t_post: Option<f64>,
    pub answered_after: Option<f64>,
    /// First time each task state was seen.
    pub times: BTreeMap<String, f64>,
    pub t_state: Option<f64>,
    pub final_state: Option<String>,
}

impl Record {
    pub fn new(vmid: u64, action: &'static str, id: String, wall_pub: f64, t_pub: f64) -> Record {
        let expect = if action == "stop" { "stopped" } else { "running" };
        Record { vmid, action, id, expect, wall_pub, t_pub, t_post: None, answered_after: None, times: BTreeMap::new(), t_state: None, final_state: None }
    }

    /// When the simulator served the POST, as tightly as measured: the earlier of the two
    /// upper bounds (seen by polling `/_sim/requests`; answered, in the bridge's log).
    pub fn post_time(&self) -> Option<f64> {
        let answered = self.answered_after.map(|a| self.t_pub + a);
        match (self.t_post, answered) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the simulator ends the task: the POST + the task's length (its lifecycle
    /// tasks last `task_duration` times 0.5 for a stop and 1.0 for a start).
    pub fn task_end(&self) -> Option<f64> {
        let factor = if self.action == "stop" { 0.5 } else { 1.0 };
        Some(self.post_time()? + TASK_DURATION_MS as f64 / 1000.0 * factor)
    }
}

pub fn summarise_commands(records: &[Record]) -> Value {
    let ms = |values: Vec<f64>| values.into_iter().map(|v| v * 1000.0).collect::<Vec<_>>();
    let post = ms(records.iter().filter_map(|r| Some(r.t_post? - r.t_pub)).collect());
    let answered = ms(records.iter().filter_map(|r| r.answered_after).collect());
    let best = ms(records.iter().filter_map(|r| Some(r.post_time()? - r.t_pub)).collect());
    let accepted = ms(records.iter().filter_map(|r| Some(r.times.get("accepted")? - r.t_pub)).collect());
    let ok_to_state = ms(records.iter().filter_map(|r| Some(r.t_state? - r.times.get("ok")?)).collect());
    let end_to_state = ms(records.iter().filter_map(|r| Some(r.t_state? - r.task_end()?)).collect());
    let mut finals: BTreeMap<String, u64> = BTreeMap::new();
    for r in records {
        *finals.entry(r.final_state.clone().unwrap_or_else(|| "unfinished".into())).or_default() += 1;
    }
    let rel = |t: Option<f64>, r: &Record| t.map(|t| ((t - r.t_pub) * 1000.0 * 100.0).round() / 100.0);
    json!({
        "sent": records.len(),
        "distinct_guests": records.iter().map(|r| r.vmid).collect::<BTreeSet<_>>().len(),
        "finals": finals,
        "pub_to_post_ms": report::stats(&post),
        "pub_to_accepted_ms": report::stats(&accepted),
        "pub_to_post_answered_ms": report::stats(&answered),
        "pub_to_post_best_ms": report::stats(&best),
        "ok_to_state_ms": report::stats(&ok_to_state),
        "task_end_to_state_ms": report::stats(&end_to_state),
        "records": records.iter().map(|r| json!({
            "vmid": r.vmid, "action": r.action, "id": r.id, "final": r.final_state,
            "t_post": rel(r.t_post, r), "t_state": rel(r.t_state, r),
            "t_accepted": rel(r.times.get("accepted").copied(), r), "t_ok": rel(r.times.get("ok").copied(), r),
            "answered_after": r.answered_after,
        })).collect::<Vec<_>>(),
    })
}

/// Removes the ANSI colour codes tracing writes to a terminal-less stderr sometimes.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `(call path, unix time)` from the client's debug line
/// `2026-12-06T13:45:01.123456Z DEBUG pve2mqtt::pve::client: Proxmox answered … call=POST /nodes/…`.
pub fn parse_answered(line: &str) -> Option<(String, f64)> {
    let (stamp, rest) = line.split_once(char::is_whitespace)?;
    let stamp = stamp.strip_suffix('Z')?;
    let rest = rest.trim_start().strip_prefix("DEBUG pve2mqtt::pve::client: Proxmox answered")?;
    let call = rest.split("call=POST ").nth(1)?.split_whitespace().next()?;
    Some((call.to_string(), parse_utc(stamp)?))
}

/// `YYYY-MM-DDTHH:MM:SS[.frac]` (UTC) as seconds since the Unix epoch.
pub fn parse_utc(stamp: &str) -> Option<f64> {
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min, s) = (t.next()?.parse::<i64>().ok()?, t.next()?.parse::<i64>().ok()?, t.next()?.parse::<f64>().ok()?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_log_clock_is_read_as_utc() {
        assert_eq!(parse_utc("1970-01-01T00:00:00"), Some(0.0));
        assert_eq!(parse_utc("2026-12-06T13:45:01.5"), Some(1_796_563_501.5));
    }

    #[test]
    fn an_answered_post_line_gives_its_path_and_time() {
        let line = "\u{1b}[2m2026-12-06T13:45:01.500000Z\u{1b}[0m DEBUG pve2mqtt::pve::client: Proxmox answered status=200 call=POST /nodes/pve1/qemu/100/status/stop elapsed=3ms";
        let (call, at) = parse_answered(&strip_ansi(line)).unwrap();
        assert_eq!(call, "/nodes/pve1/qemu/100/status/stop");
        assert_eq!(at, 1_796_563_501.5);
        assert_eq!(parse_answered("2026-12-06T13:45:01Z  INFO pve2mqtt: started"), None);
    }

    #[test]
    fn a_post_time_is_the_tighter_of_the_two_bounds() {
        let mut r = Record::new(100, "stop", "b-0".into(), 0.0, 10.0);
        assert_eq!(r.post_time(), None);
        r.t_post = Some(10.004);
        r.answered_after = Some(0.002);
        assert_eq!(r.post_time(), Some(10.002));
        assert!((r.task_end().unwrap() - (10.002 + TASK_DURATION_MS as f64 / 2000.0)).abs() < 1e-9);
    }

    #[test]
    fn slow_rounds_start_at_each_version_request_after_the_first_poll() {
        let e = |seq, route: &str, seen| Entry { seq, route: route.into(), method: "GET".into(), path: String::new(), seen };
        let entries = [
            e(1, "GET /version", 0.0),
            e(2, FAST_ROUTE, 0.1),
            e(3, "GET /version", 1.0),
            e(4, "GET /cluster/status", 1.5),
            e(5, "GET /version", 21.0),
        ];
        let rounds = slow_rounds(&entries);
        assert_eq!(rounds.len(), 2);
        assert_eq!((rounds[0].start, rounds[0].end, rounds[0].times.len()), (1.0, 1.5, 2));
    }
}
