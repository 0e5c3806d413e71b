//! The soak's schedule and its events: commands, faults, restarts, and the end checks.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};

use super::observe::{BridgeRestart, BrokerRestart, Command, Observer, BASE, CLUSTER};
use super::{report, SoakArgs};
use crate::mqtt::{Publisher, Subscriber};
use crate::procs::{self, Mosquitto};
use crate::sim::{Simulator, TOKEN};
use testkit::ChildProcess;

const QEMU_ACTIONS: &[(&str, f64)] = &[
    ("start", 3.0),
    ("stop", 2.0),
    ("shutdown", 2.0),
    ("reboot", 2.0),
    ("suspend", 1.0),
    ("resume", 1.0),
    ("reset", 1.0),
    ("hibernate", 0.5),
    ("backup", 0.5),
];
const LXC_ACTIONS: &[(&str, f64)] = &[
    ("start", 3.0),
    ("stop", 2.0),
    ("shutdown", 2.0),
    ("reboot", 2.0),
    ("suspend", 1.0),
    ("resume", 1.0),
    ("backup", 0.5),
];

pub(super) fn weighted<'a>(rng: &mut fastrand::Rng, weights: &[(&'a str, f64)]) -> &'a str {
    let total: f64 = weights.iter().map(|(_, w)| w).sum();
    let mut pick = rng.f64() * total;
    for (name, weight) in weights {
        if pick < *weight {
            return name;
        }
        pick -= weight;
    }
    weights[weights.len() - 1].0
}

pub(super) fn uniform(rng: &mut fastrand::Rng, low: f64, high: f64) -> f64 {
    low + (high - low) * rng.f64()
}

pub(super) enum Event {
    Command,
    Fault,
    Rss,
    BrokerRestart,
    BridgeRestart,
    Hang,
    NodeOnline(String),
    GuestReAdd(Value),
    CheckInFlight(usize, Vec<String>),
}

/// A min-heap entry: the earliest `at`, then the earliest scheduled.
pub(super) struct Scheduled {
    at: f64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.total_cmp(&self.at).then(other.seq.cmp(&self.seq))
    }
}

/// The bridge process, restarted by PID, its output appended to one log.
pub(super) struct Bridge {
    pub(super) binary: PathBuf,
    pub(super) config: PathBuf,
    pub(super) log: PathBuf,
    pub(super) child: Option<Child>,
}

impl Bridge {
    pub(super) fn start(&mut self) -> anyhow::Result<()> {
        let mut log = File::options().create(true).append(true).open(&self.log)?;
        writeln!(
            log,
            "\n===== soak: bridge started at {:?} =====",
            std::time::SystemTime::now()
        )?;
        let child = Process::new(&self.binary)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM and wait; the exit code, or `None` if it had to be killed.
    pub(super) async fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        procs::terminate(&mut child, Duration::from_secs(20)).await
    }
}

impl Drop for Bridge {
    /// A soak that fails half-way must not leave a bridge running.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill_now();
        }
    }
}

pub struct Soak {
    pub(super) args: SoakArgs,
    pub(super) persistence: bool,
    pub(super) rng: fastrand::Rng,
    pub(super) duration: f64,
    pub(super) workdir: PathBuf,
    pub(super) t0: Instant,
    pub(super) observer: Arc<Mutex<Observer>>,
    pub(super) events_log: File,
    pub(super) failures: Vec<String>,
    pub(super) faults: BTreeMap<String, u32>,
    pub(super) broker_restarts: Vec<BrokerRestart>,
    pub(super) bridge_restarts: Vec<BridgeRestart>,
    /// (t, pid, kB)
    pub(super) rss: Vec<(f64, u32, u64)>,
    pub(super) queue: BinaryHeap<Scheduled>,
    pub(super) sequence: u64,
    pub(super) command_counter: u32,
    pub(super) guests: BTreeMap<u32, Value>,
    pub(super) deleted: BTreeSet<u32>,
    pub(super) offline_node: Option<String>,
    pub(super) hangs_left: u32,
    pub(super) sim: Simulator,
    pub(super) broker: Mosquitto,
    pub(super) bridge: Bridge,
    pub(super) subscriber: Option<Subscriber>,
    pub(super) publisher: Publisher,
    pub(super) bridge_expected_down: bool,
    /// True while the bridge reconnects after a restart: random commands are held back.
    pub(super) holding: bool,
    pub(super) held: u32,
    pub(super) stop_failures_seen: usize,
    pub(super) nodes: Vec<String>,
    /// Seconds since t0: when the schedule started, when it is due to end, when it did.
    pub(super) started_at: f64,
    pub(super) end_at: f64,
    pub(super) end_commands_at: f64,
}

pub(super) fn log(message: &str) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    println!("[{h:02}:{m:02}:{s:02}] {message}");
}

impl Soak {
    /// Starts the simulator, the broker, the subscriber and the bridge, and waits for the
    /// bridge to come online.
    pub async fn start(
        args: SoakArgs,
        persistence: bool,
        workdir: PathBuf,
    ) -> anyhow::Result<Soak> {
        let seed = args.seed.expect("resolved");
        log(&format!(
            "pve2mqtt soak: {} min, seed {seed}, persistence {}, binary {}",
            args.minutes,
            if persistence { "on" } else { "off" },
            args.binary.display()
        ));
        log(&format!(
            "work dir {} (logs: bridge.log, events.log, sim.log, mosquitto.log)",
            workdir.display()
        ));
        let sim_args: Vec<String> = [
            "--nodes",
            &args.nodes.to_string(),
            "--guests",
            &args.guests.to_string(),
            "--task-duration",
            "300ms",
            "--auth-delay",
            "50ms",
            "--offline-delay",
            "500ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let sim = Simulator::start(&args.binary, &sim_args, &workdir.join("sim.log"))?;
        let broker = procs::mosquitto(&workdir, persistence, "")?;
        let config = workdir.join("pve2mqtt.toml");
        std::fs::write(&config, bridge_config(&sim, broker.port))?;
        let world = sim.get("/_sim/world").await?;
        let guests = world["guests"]
            .as_array()
            .context("/_sim/world has no guests")?
            .iter()
            .filter_map(|g| Some((u32::try_from(g["vmid"].as_u64()?).ok()?, g.clone())))
            .collect::<BTreeMap<_, _>>();
        let nodes = world["nodes"]
            .as_array()
            .context("/_sim/world has no nodes")?
            .iter()
            .filter_map(|n| n["name"].as_str().map(str::to_string))
            .collect::<Vec<_>>();
        let t0 = Instant::now();
        let observer = Arc::new(Mutex::new(Observer::default()));
        let (on_message, on_connect) = (observer.clone(), observer.clone());
        let subscriber = Subscriber::spawn(
            broker.port,
            format!("soak-sub-{}", std::process::id()),
            vec![
                format!("{BASE}/{CLUSTER}/+/+/task"),
                format!("{BASE}/bridge/state"),
            ],
            move |d| {
                let t = t0.elapsed().as_secs_f64();
                on_message
                    .lock()
                    .unwrap()
                    .on_message(t, &d.topic, &d.payload, d.retain);
            },
            move || {
                on_connect
                    .lock()
                    .unwrap()
                    .subscriber_connects
                    .push(t0.elapsed().as_secs_f64())
            },
        );
        let publisher = Publisher::new(broker.port, format!("soak-pub-{}", std::process::id()));
        let mut bridge = Bridge {
            binary: args.binary.clone(),
            config,
            log: workdir.join("bridge.log"),
            child: None,
        };
        bridge.start()?;
        log(&format!(
            "simulator {} ({} nodes, {} guests), mosquitto :{} (persistence {}), bridge pid {}",
            sim.base,
            nodes.len(),
            guests.len(),
            broker.port,
            if persistence { "on" } else { "off" },
            bridge.pid().unwrap_or(0)
        ));
        let mut soak = Soak {
            rng: fastrand::Rng::with_seed(seed),
            duration: args.minutes * 60.0,
            hangs_left: args.hangs.expect("resolved"),
            events_log: File::create(workdir.join("events.log"))?,
            args,
            persistence,
            workdir,
            t0,
            observer,
            failures: Vec::new(),
            faults: BTreeMap::new(),
            broker_restarts: Vec::new(),
            bridge_restarts: Vec::new(),
            rss: Vec::new(),
            queue: BinaryHeap::new(),
            sequence: 0,
            command_counter: 0,
            guests,
            deleted: BTreeSet::new(),
            offline_node: None,
            sim,
            broker,
            bridge,
            subscriber: Some(subscriber),
            publisher,
            bridge_expected_down: false,
            holding: false,
            held: 0,
            stop_failures_seen: 0,
            nodes,
            started_at: 0.0,
            end_at: 0.0,
            end_commands_at: 0.0,
        };
        if soak.wait_online(0.0, 30.0).await?.is_none() {
            bail!("the bridge did not come online within 30 s (see bridge.log)");
        }
        // Let the first polls publish every guest before measuring the starting RSS.
        tokio::time::sleep(Duration::from_secs(3)).await;
        soak.sample_rss("start");
        Ok(soak)
    }

    /// The schedule, the end checks and the summary.
    pub async fn run_all(&mut self) -> anyhow::Result<()> {
        self.run().await?;
        let end = self.finish().await?;
        self.report(&end)?;
        Ok(())
    }

    pub(super) fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    pub(super) fn event(&mut self, text: &str) {
        let line = format!("{:8.2}s {text}", self.now());
        let _ = writeln!(self.events_log, "{line}");
        if self.args.verbose {
            log(&line);
        }
    }

    pub(super) fn fail(&mut self, text: String) {
        log(&format!("INVARIANT FAILED: {text}"));
        self.event(&format!("FAILURE {text}"));
        self.failures.push(text);
    }

    pub(super) fn schedule(&mut self, at: f64, event: Event) {
        self.sequence += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.sequence,
            event,
        });
    }

    pub(super) async fn wait_online(
        &mut self,
        since: f64,
        timeout: f64,
    ) -> anyhow::Result<Option<f64>> {
        let deadline = Instant::now() + Duration::from_secs_f64(timeout);
        while Instant::now() < deadline {
            if let Some(seen) = self.observer.lock().unwrap().online_after(since) {
                return Ok(Some(seen));
            }
            self.check_bridge_alive()?;
            self.run_due_commands().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(None)
    }

    // --- the schedule --------------------------------------------------------------------

    /// Everything is scheduled up front from the seed, except commands (Poisson).
    fn plan(&mut self) {
        let start = self.now();
        let end = start + self.duration;
        self.started_at = start;
        self.end_at = end;
        self.schedule(start, Event::Command);
        let first_fault = start + uniform(&mut self.rng, 3.0, 8.0);
        self.schedule(first_fault, Event::Fault);
        self.schedule(start + 60.0, Event::Rss);
        let bridge_at = start + self.duration / 2.0;
        let every = self.args.broker_every;
        let mut broker_times = Vec::new();
        let mut t = start + every * uniform(&mut self.rng, 0.85, 1.15);
        while t < end - 20.0 {
            // Keep broker and bridge restarts apart so their effects stay tellable apart.
            if (t - bridge_at).abs() < 15.0 {
                t = bridge_at + 15.0;
            }
            broker_times.push(t);
            t += every * uniform(&mut self.rng, 0.85, 1.15);
        }
        for &t in &broker_times {
            self.schedule(t, Event::BrokerRestart);
        }
        self.schedule(bridge_at, Event::BridgeRestart);
        // Hung tasks only after the bridge restart: a hang before it would be cut short by
        // the restart and counted as "in flight at the bridge restart" instead.
        let hangs = self.hangs_left;
        for i in 0..hangs {
            let span = end - 15.0 - (bridge_at + 10.0);
            let at = bridge_at + 10.0 + span * f64::from(i + 1) / f64::from(hangs + 1);
            self.schedule(at, Event::Hang);
        }
        let times: Vec<String> = broker_times.iter().map(|t| format!("{t:.0}")).collect();
        log(&format!(
            "plan: {:.0} s, ~{}/s commands ({:.0} % retained), a fault every 4-10 s, broker restarts ({}) at {} s, bridge restart at {bridge_at:.0} s, {hangs} hung task(s)",
            self.duration,
            self.args.rate,
            self.args.retained_share * 100.0,
            if self.persistence { "SIGTERM, db kept" } else { "SIGKILL" },
            times.join(", ")
        ));
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        self.plan();
        while let Some(next) = self.queue.peek() {
            if next.at > self.end_at {
                break;
            }
            let now = self.now();
            if next.at > now {
                let wait = (next.at - now).min(0.05);
                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                self.check_bridge_alive()?;
                continue;
            }
            let item = self.queue.pop().expect("peeked");
            self.handle(item.event).await?;
        }
        // Undo whatever is still pending (a node offline, a guest deleted).
        let mut pending = std::mem::take(&mut self.queue).into_sorted_vec();
        pending.reverse(); // into_sorted_vec is ascending by Ord, i.e. latest first
        for item in pending {
            if matches!(item.event, Event::NodeOnline(_) | Event::GuestReAdd(_)) {
                self.handle(item.event).await?;
            }
        }
        Ok(())
    }

    async fn handle(&mut self, event: Event) -> anyhow::Result<()> {
        match event {
            Event::Command => self.do_command().await,
            Event::Fault => self.do_fault().await?,
            Event::Rss => {
                self.sample_rss(&format!("minute {:.0}", self.now() / 60.0));
                self.schedule(self.now() + 60.0, Event::Rss);
            }
            Event::BrokerRestart => self.do_broker_restart().await?,
            Event::BridgeRestart => self.do_bridge_restart().await?,
            Event::Hang => {
                if self.override_and_command("task hangs", "hang").await? {
                    self.hangs_left -= 1;
                }
            }
            Event::NodeOnline(node) => {
                self.sim_call(
                    Method::POST,
                    &format!("/_sim/nodes/{node}"),
                    Some(json!({"online": true})),
                )
                .await;
                self.offline_node = None;
                self.event(&format!("node online again: {node}"));
            }
            Event::GuestReAdd(world) => self.do_guest_re_add(world).await,
            Event::CheckInFlight(restart, ids) => self.do_check_in_flight(restart, ids).await?,
        }
        Ok(())
    }

    pub(super) fn check_bridge_alive(&mut self) -> anyhow::Result<()> {
        if self.bridge_expected_down {
            return Ok(());
        }
        let Some(child) = self.bridge.child.as_mut() else {
            return Ok(());
        };
        if let Some(code) = procs::exited(child) {
            self.fail(format!(
                "the bridge exited on its own with code {} at {:.1} s",
                report::code(code),
                self.now()
            ));
            self.bridge.start()?; // keep soaking; the failure is recorded
            let pid = self.bridge.pid().unwrap_or(0);
            self.event(&format!("bridge restarted after its own exit, pid {pid}"));
        }
        Ok(())
    }

    pub(super) fn sample_rss(&mut self, label: &str) -> Option<u64> {
        let pid = self.bridge.pid()?;
        let kb = procs::rss_kb(pid)?;
        self.rss.push((self.now(), pid, kb));
        log(&format!(
            "RSS {label}: {:.1} MiB (pid {pid}, t={:.0} s)",
            kb as f64 / 1024.0,
            self.now()
        ));
        Some(kb)
    }

    // --- commands --------------------------------------------------------------------------

    /// Guests with a command of ours still waiting for its final result.
    pub(super) fn pending_vmids(&self) -> BTreeSet<u32> {
        let observer = self.observer.lock().unwrap();
        observer
            .commands
            .values()
            .filter(|c| c.acked && c.finals.is_empty())
            .map(|c| c.vmid)
            .collect()
    }

    pub(super) async fn send_command(
        &mut self,
        vmid: u32,
        action: &str,
        purpose: &str,
        retained: bool,
    ) {
        let kind = self.guests[&vmid]["type"]
            .as_str()
            .unwrap_or("qemu")
            .to_string();
        self.command_counter += 1;
        let id = format!(
            "soak-{}-{:06}",
            self.args.seed.unwrap_or(0),
            self.command_counter
        );
        let command = Command {
            id: id.clone(),
            vmid,
            kind: kind.clone(),
            action: action.to_string(),
            sent_at: self.now(),
            retained,
            acked: false,
            purpose: purpose.to_string(),
            states: Vec::new(),
            finals: Vec::new(),
            upid: None,
        };
        self.observer
            .lock()
            .unwrap()
            .commands
            .insert(id.clone(), command);
        let topic = format!("{BASE}/{CLUSTER}/{kind}/{vmid}/set");
        let payload = json!({"action": action, "id": id}).to_string().into_bytes();
        let acked = self.publisher.publish(&topic, payload, retained).await;
        if let Some(c) = self.observer.lock().unwrap().commands.get_mut(&id) {
            c.acked = acked;
        }
        let retain = if retained { ", retained" } else { "" };
        self.event(&format!(
            "command {id} {action} {kind}/{vmid} ({purpose}{retain}) acked={acked}"
        ));
    }

    async fn do_command(&mut self) {
        let gap = -(1.0 - self.rng.f64()).ln() / self.args.rate;
        self.schedule(self.now() + gap, Event::Command);
        if self.holding {
            self.held += 1;
            return;
        }
        let vmids: Vec<u32> = self.guests.keys().copied().collect();
        let vmid = vmids[self.rng.usize(..vmids.len())];
        let actions = if self.guests[&vmid]["type"] == "qemu" {
            QEMU_ACTIONS
        } else {
            LXC_ACTIONS
        };
        let action = weighted(&mut self.rng, actions);
        let retained = self.rng.f64() < self.args.retained_share;
        self.send_command(vmid, action, "random", retained).await;
    }

    /// While a restart blocks the main loop, commands that fall due still go out.
    pub(super) async fn run_due_commands(&mut self) {
        let mut deferred = Vec::new();
        while self.queue.peek().is_some_and(|next| next.at <= self.now()) {
            let item = self.queue.pop().expect("peeked");
            if matches!(item.event, Event::Command) {
                self.do_command().await;
            } else {
                deferred.push(item); // faults etc. wait for the main loop
            }
        }
        self.queue.extend(deferred);
    }

    pub async fn cleanup(&mut self) {
        if let Some(subscriber) = self.subscriber.take() {
            subscriber.stop();
        }
        self.publisher.close();
        self.bridge.terminate().await;
        self.broker.stop();
        self.sim.stop().await;
    }

    pub(super) fn workdir(&self) -> &Path {
        &self.workdir
    }
}

fn bridge_config(sim: &Simulator, mqtt_port: u16) -> String {
    format!(
        r#"[proxmox]
url = "{}"
token = "{TOKEN}"
fingerprint = "{}"
timeout = "5s"

[poll]
interval = "1s"
slow_interval = "5s"

[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
client_id = "pve2mqtt-soak"
"#,
        sim.base, sim.fingerprint
    )
}
