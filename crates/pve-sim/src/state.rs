//! The shared simulator state, the time engine that applies task effects, and [`Sim`],
//! the cheap-clone handle that tests and the `/_sim` control API use.
//!
//! Time moves lazily: every access first calls [`State::advance`], which applies, in time
//! order, every task effect whose instant has passed (a guest stopping when its `qmstop`
//! task ends, a backup appearing when vzdump finishes a guest, the next vzdump taking the
//! node's lock). Nothing runs in the background, so an idle simulator costs nothing and
//! the order of effects is deterministic.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use super::access::Token;
use super::clock::StatsClock;
use super::tasks::{
    schedule_lifecycle, schedule_vzdump, Effect, PendingVzdump, Plan, Schedule, Task, TaskEffect,
    TaskOverride, Upid, VzdumpGuest, VzdumpJob,
};
use super::world::{now, GuestType, HaState, PowerState, PveVersion, World};

/// How many recorded requests `/_sim/requests` keeps.
const REQUEST_LOG_CAPACITY: usize = 20_000;

/// Settings that tests may change while the simulator runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RuntimeConfig {
    pub auth_failure_delay: Duration,
    pub proxy_offline_delay: Duration,
    pub task_duration: Duration,
    /// Which instant's figures each endpoint shows (pvestatd's cadence, or frozen).
    pub stats: StatsClock,
}

impl RuntimeConfig {
    /// The instant whose figures `/cluster/resources` and `/nodes` show: the last
    /// pvestatd broadcast.
    pub fn stats_time(&self, now: f64) -> f64 {
        self.stats.stats_time(now)
    }

    /// The instant whose figures the live endpoints show (`now` unless frozen).
    pub fn live_time(&self, now: f64) -> f64 {
        self.stats.live_time(now)
    }

    /// The delay before the HA manager acts on a `hastart`/`hastop` request.
    fn ha_delay(&self) -> f64 {
        self.task_duration.as_secs_f64() * 4.0
    }
}

/// Errors of the control operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("no such node '{0}'")]
    UnknownNode(String),
    #[error("no such guest {0}")]
    UnknownGuest(u32),
    #[error("guest {0} already exists")]
    GuestExists(u32),
    #[error("no such token '{0}'")]
    UnknownToken(String),
    #[error("{0}")]
    Invalid(String),
}

/// A fault injected into the Proxmox API (control API `POST /_sim/faults`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fault {
    /// Applies to API paths (without `/api2/json`) starting with this.
    pub path_prefix: String,
    /// Only this HTTP method (any when absent).
    #[serde(default)]
    pub method: Option<String>,
    pub kind: FaultKind,
    /// For `status`: the HTTP status (default 500).
    #[serde(default)]
    pub status: Option<u16>,
    /// For `status`: the error message (the reason phrase is its first line).
    #[serde(default)]
    pub message: Option<String>,
    /// For `slow` and `late`: how long to hold the request or its answer.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// How many requests it affects; absent = until cleared.
    #[serde(default)]
    pub count: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// Answer with an error status.
    Status,
    /// Delay, then answer normally.
    Slow,
    /// Do the work at once (a POST starts its task), then hold the answer for `delay_ms`:
    /// what a client sees when pveproxy or the network is slow on the way back. The task
    /// exists, and shows in the node's task list, before the client has its UPID.
    Late,
    /// Close the connection without any response.
    Drop,
}

/// A Proxmox API request as the simulator saw it.
#[derive(Clone, Debug, Serialize)]
pub struct RecordedRequest {
    pub seq: u64,
    pub method: String,
    /// The path without `/api2/json`.
    pub path: String,
    /// The route template it matched, e.g. `GET /nodes/{node}/status`.
    pub route: String,
    pub query: BTreeMap<String, Value>,
    /// Decoded body parameters (form or JSON).
    pub form: BTreeMap<String, Value>,
    /// The HTTP status answered; `None` when the connection was dropped.
    pub status: Option<u16>,
    /// `user@realm!tokenid` of a valid token, else `None`.
    pub token_id: Option<String>,
    /// The request's `Accept-Encoding` header, if any (the answer is compressed as it
    /// allows; see [`crate::respond::compress`]).
    pub accept_encoding: Option<String>,
}

/// Tags given as `"a;b"` or `["a", "b"]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Tags {
    Text(String),
    List(Vec<String>),
}

impl Tags {
    fn into_string(self) -> Option<String> {
        let text = match self {
            Tags::Text(text) => text,
            Tags::List(list) => list.join(";"),
        };
        (!text.is_empty()).then_some(text)
    }
}

/// A guest to add (control API `POST /_sim/guests`).
#[derive(Clone, Debug, Deserialize)]
pub struct NewGuest {
    pub vmid: u32,
    #[serde(rename = "type")]
    pub kind: GuestType,
    pub node: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub status: Option<PowerState>,
    #[serde(default)]
    pub tags: Option<Tags>,
    #[serde(default)]
    pub pool: Option<String>,
    /// `started`/`stopped`/…: the guest is HA-managed with this state.
    #[serde(default)]
    pub hastate: Option<String>,
    #[serde(default)]
    pub template: Option<bool>,
    #[serde(default)]
    pub lock: Option<String>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub maxmem: Option<u64>,
    #[serde(default)]
    pub maxdisk: Option<u64>,
}

/// Distinguishes "absent" (outer `None`) from `null` (inner `None`) in a patch.
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Changes to a guest (control API `PATCH /_sim/guests/{vmid}`): absent fields stay,
/// `null` clears optional ones.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct GuestPatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub status: Option<PowerState>,
    /// Moves the guest at once (see also migrate).
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub tags: Option<Option<Tags>>,
    #[serde(default, deserialize_with = "nullable")]
    pub pool: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub lock: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub hastate: Option<Option<String>>,
    #[serde(default)]
    pub template: Option<bool>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub maxmem: Option<u64>,
    #[serde(default)]
    pub maxdisk: Option<u64>,
}

/// Run-time settings (control API `POST /_sim/config`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ConfigPatch {
    #[serde(default)]
    pub auth_failure_delay_ms: Option<u64>,
    #[serde(default)]
    pub proxy_offline_delay_ms: Option<u64>,
    #[serde(default)]
    pub task_duration_ms: Option<u64>,
    /// How often cluster-wide figures refresh (real: 10 s); 0 = live.
    #[serde(default)]
    pub stats_interval_ms: Option<u64>,
    /// `true` freezes every figure as currently shown (nothing moves until `false`).
    #[serde(default)]
    pub frozen: Option<bool>,
}

/// A scheduled effect of a task.
#[derive(Debug)]
struct Event {
    at: f64,
    seq: u64,
    task: usize,
    kind: EventKind,
}

#[derive(Debug)]
enum EventKind {
    Effect(TaskEffect),
    /// A vzdump task ended: its node's backup lock is free.
    VzdumpEnded,
    /// A waiting vzdump gives up (`lockwait`).
    LockTimeout,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    /// Reversed, so that `BinaryHeap` pops the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .total_cmp(&self.at)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// Everything behind the lock.
pub(crate) struct State {
    pub world: World,
    pub version: PveVersion,
    pub config: RuntimeConfig,
    pub tasks: Vec<Task>,
    pub task_by_upid: HashMap<String, usize>,
    events: BinaryHeap<Event>,
    event_seq: u64,
    /// The vzdump task holding each node's backup lock.
    vzdump_holder: HashMap<String, usize>,
    vzdump_waiters: HashMap<String, VecDeque<usize>>,
    overrides: Vec<TaskOverride>,
    /// Tokens by `user@realm!tokenid`.
    pub tokens: HashMap<String, Arc<Token>>,
    /// Scheduled backup jobs (`jobs.cfg`), run through the control API.
    pub backup_jobs: Vec<super::jobs::BackupJob>,
    faults: Vec<Fault>,
    counters: BTreeMap<String, u64>,
    requests: VecDeque<RecordedRequest>,
    next_request_seq: u64,
    next_pid: HashMap<String, u32>,
    /// Node reboots, shutdowns and wake-ups waiting for their moment (`nodepower`).
    pub(crate) node_power: super::nodepower::NodePower,
    /// The guest agents (see `agent`).
    pub agents: super::agent::Agents,
}

impl State {
    pub fn new(world: World, version: PveVersion, config: RuntimeConfig, token: Token) -> Self {
        let mut tokens = HashMap::new();
        tokens.insert(token.full_id.clone(), Arc::new(token));
        let backup_jobs = super::jobs::default_jobs(&world);
        Self {
            backup_jobs,
            world,
            version,
            config,
            tasks: Vec::new(),
            task_by_upid: HashMap::new(),
            events: BinaryHeap::new(),
            event_seq: 0,
            vzdump_holder: HashMap::new(),
            vzdump_waiters: HashMap::new(),
            overrides: Vec::new(),
            tokens,
            faults: Vec::new(),
            counters: BTreeMap::new(),
            requests: VecDeque::new(),
            next_request_seq: 1,
            next_pid: HashMap::new(),
            node_power: Default::default(),
            agents: Default::default(),
        }
    }

    /// Applies every scheduled effect due at or before `now`, in time order.
    pub fn advance(&mut self, now: f64) {
        self.advance_node_power(now);
        while self.events.peek().is_some_and(|event| event.at <= now) {
            let Some(event) = self.events.pop() else {
                break;
            };
            if self.tasks[event.task].killed {
                continue;
            }
            match event.kind {
                EventKind::Effect(effect) => self.apply(effect, event.at, event.task),
                EventKind::VzdumpEnded => self.release_vzdump_lock(event.task, event.at),
                EventKind::LockTimeout => self.give_up_waiting(event.task, event.at),
            }
        }
    }

    fn push_event(&mut self, at: f64, task: usize, kind: EventKind) {
        self.event_seq += 1;
        self.events.push(Event {
            at,
            seq: self.event_seq,
            task,
            kind,
        });
    }

    fn apply(&mut self, effect: TaskEffect, at: f64, task: usize) {
        let pid = self.world.next_pid();
        match effect {
            TaskEffect::Guest { vmid, effect } => {
                let Some(guest) = self.world.guests.get_mut(&vmid) else {
                    return;
                };
                match effect {
                    Effect::None => {}
                    Effect::Start => {
                        guest.start_at(at, pid);
                        guest.checkpointed = false;
                        if guest.lock.as_deref() == Some("suspended") {
                            guest.lock = None;
                        }
                    }
                    Effect::Stop => guest.stop(),
                    Effect::Reboot => {
                        if guest.power.process_running() {
                            guest.start_at(at, pid);
                        }
                    }
                    Effect::Pause => {
                        if guest.power == PowerState::Running {
                            guest.power = PowerState::Paused;
                        }
                    }
                    Effect::Resume => {
                        if guest.power == PowerState::Paused {
                            guest.power = PowerState::Running;
                        }
                    }
                    Effect::Hibernate => {
                        guest.stop();
                        guest.lock = Some("suspended".into());
                    }
                    Effect::Checkpoint => {
                        guest.stop();
                        guest.checkpointed = true;
                    }
                    Effect::Restore => {
                        guest.start_at(at, pid);
                        guest.checkpointed = false;
                    }
                }
            }
            TaskEffect::HaRequest { vmid, start } => {
                let Some(guest) = self.world.guests.get_mut(&vmid) else {
                    return;
                };
                let running = guest.power.process_running();
                if let Some(ha) = guest.ha.as_mut() {
                    ha.request = if start { "started" } else { "stopped" }.into();
                    ha.crm = match (start, running) {
                        (true, true) => "started",
                        (true, false) => "request_start",
                        (false, false) => "stopped",
                        (false, true) => "request_stop",
                    }
                    .into();
                }
            }
            TaskEffect::HaSettle { vmid, start } => {
                let Some(guest) = self.world.guests.get_mut(&vmid) else {
                    return;
                };
                let Some(ha) = guest.ha.as_mut() else {
                    return;
                };
                let wanted = if start { "started" } else { "stopped" };
                if ha.request != wanted {
                    return;
                }
                ha.crm = wanted.into();
                if start && !guest.power.process_running() {
                    guest.start_at(at, pid);
                } else if !start && guest.power.process_running() {
                    guest.stop();
                }
            }
            TaskEffect::BackupBegin { vmid, stop_guest } => {
                if let Some(guest) = self.world.guests.get_mut(&vmid) {
                    guest.lock = Some("backup".into());
                    if stop_guest {
                        guest.stop();
                    }
                }
                self.tasks[task].held_locks.push((vmid, stop_guest));
            }
            TaskEffect::BackupEnd {
                vmid,
                restart,
                volume,
            } => {
                self.unlock_after_backup(vmid, restart, at);
                self.tasks[task]
                    .held_locks
                    .retain(|(held, _)| *held != vmid);
                if let Some(volume) = volume {
                    self.world.volumes.push(*volume);
                }
            }
            TaskEffect::Snapshot(effect) => {
                super::snapshots::apply(&mut self.world, effect, at, pid);
            }
        }
    }

    fn unlock_after_backup(&mut self, vmid: u32, restart: bool, at: f64) {
        let pid = self.world.next_pid();
        if let Some(guest) = self.world.guests.get_mut(&vmid) {
            if guest.lock.as_deref() == Some("backup") {
                guest.lock = None;
            }
            if restart && !guest.power.process_running() {
                guest.start_at(at, pid);
            }
        }
    }

    /// A new UPID for a task on `node`, started at `at` by `user`.
    pub(crate) fn new_upid(
        &mut self,
        node: &str,
        kind: &str,
        id: &str,
        user: &str,
        at: f64,
    ) -> Upid {
        let boot = self.world.node(node).map_or(at - 86_400.0, |n| n.boot_time);
        let seed = self
            .world
            .node(node)
            .map_or(0, |n| n.nodeid)
            .wrapping_mul(7919);
        let pid = self
            .next_pid
            .entry(node.to_string())
            .or_insert(200_000 + seed % 100_000);
        *pid += 1 + (*pid % 7);
        Upid {
            node: node.to_string(),
            pid: *pid,
            // Clock ticks (USER_HZ = 100) since boot.
            pstart: ((at - boot).max(0.0) * 100.0) as u64,
            starttime: at as u64,
            kind: kind.to_string(),
            id: id.to_string(),
            user: user.to_string(),
        }
    }

    pub(crate) fn register_task(&mut self, upid: Upid, created: f64, schedule: Schedule) -> usize {
        let index = self.tasks.len();
        let upid_text = upid.to_string();
        self.task_by_upid.insert(upid_text.clone(), index);
        self.tasks.push(Task {
            upid,
            upid_text,
            created,
            schedule,
            killed: false,
            held_locks: Vec::new(),
            waiting_for_lock: false,
            pending_job: None,
        });
        index
    }

    fn schedule_effects(&mut self, task: usize) {
        let effects = std::mem::take(&mut self.tasks[task].schedule.effects);
        for (at, effect) in effects {
            self.push_event(at, task, EventKind::Effect(effect));
        }
    }

    /// Takes the first control-API override that matches this task.
    fn take_override(&mut self, task_type: &str, vmids: &[u32]) -> Option<TaskOverride> {
        let position = self
            .overrides
            .iter()
            .position(|o| o.matches(task_type, vmids))?;
        Some(self.overrides.remove(position))
    }

    /// Starts a lifecycle task; returns its UPID.
    pub fn start_lifecycle_task(
        &mut self,
        node: &str,
        kind: GuestType,
        vmid: u32,
        plan: &Plan,
        user: &str,
        at: f64,
    ) -> String {
        let override_ = self.take_override(plan.task_type, &[vmid]);
        let schedule = schedule_lifecycle(
            plan,
            vmid,
            kind,
            at,
            self.config.task_duration.as_secs_f64(),
            self.config.ha_delay(),
            override_.as_ref(),
        );
        let upid = self.new_upid(node, plan.task_type, &vmid.to_string(), user, at);
        let index = self.register_task(upid, at, schedule);
        self.schedule_effects(index);
        self.tasks[index].upid_text.clone()
    }

    /// Starts a task laid out by `lay_out` (given the control API's override, if one
    /// matches); returns its UPID.
    pub fn start_task(
        &mut self,
        (node, task_type, vmid): (&str, &str, u32),
        user: &str,
        at: f64,
        lay_out: impl FnOnce(Option<&TaskOverride>, f64) -> Schedule,
    ) -> String {
        let override_ = self.take_override(task_type, &[vmid]);
        let schedule = lay_out(override_.as_ref(), self.config.task_duration.as_secs_f64());
        let upid = self.new_upid(node, task_type, &vmid.to_string(), user, at);
        let index = self.register_task(upid, at, schedule);
        self.schedule_effects(index);
        self.tasks[index].upid_text.clone()
    }

    /// Starts a vzdump task (waiting for the node's backup lock if another one runs);
    /// returns its UPID.
    pub fn start_vzdump_task(
        &mut self,
        job: VzdumpJob,
        vmids: Vec<u32>,
        user: &str,
        lockwait_minutes: u64,
        at: f64,
    ) -> String {
        let node = job.node.clone();
        let override_ = self.take_override("vzdump", &vmids);
        let id = match vmids.as_slice() {
            [single] => single.to_string(),
            _ => String::new(),
        };
        let upid = self.new_upid(&node, "vzdump", &id, user, at);
        let index = self.register_task(upid, at, Schedule::default());
        let pending = PendingVzdump {
            job,
            vmids,
            override_,
        };
        let busy = self
            .vzdump_holder
            .get(&node)
            .is_some_and(|holder| self.tasks[*holder].is_running(at));
        if busy {
            let task = &mut self.tasks[index];
            task.waiting_for_lock = true;
            task.schedule
                .lines
                .push((at, "INFO: trying to get global lock - waiting...".into()));
            task.pending_job = Some(Box::new(pending));
            if lockwait_minutes == 0 {
                self.give_up_waiting(index, at);
            } else {
                self.vzdump_waiters
                    .entry(node)
                    .or_default()
                    .push_back(index);
                let give_up_at = at + lockwait_minutes as f64 * 60.0;
                self.push_event(give_up_at, index, EventKind::LockTimeout);
            }
        } else {
            self.tasks[index].pending_job = Some(Box::new(pending));
            self.run_vzdump(index, at, false);
        }
        self.tasks[index].upid_text.clone()
    }

    /// Lays out a vzdump task that has the node's lock as of `at`.
    fn run_vzdump(&mut self, index: usize, at: f64, waited: bool) {
        let Some(pending) = self.tasks[index].pending_job.take() else {
            return;
        };
        let PendingVzdump {
            mut job,
            vmids,
            override_,
            ..
        } = *pending;
        job.guests = vmids
            .iter()
            .map(|vmid| match self.world.guests.get(vmid) {
                Some(guest) => VzdumpGuest {
                    vmid: *vmid,
                    kind: Some(guest.kind),
                    name: guest.name.clone(),
                    running: guest.power.process_running(),
                    data: match guest.kind {
                        GuestType::Qemu => guest.maxdisk,
                        GuestType::Lxc => guest.disk_used.max(guest.maxdisk / 10),
                    },
                },
                None => VzdumpGuest {
                    vmid: *vmid,
                    kind: None,
                    name: String::new(),
                    running: false,
                    data: 0,
                },
            })
            .collect();
        let per_guest = self.config.task_duration.as_secs_f64() * 2.0;
        let schedule = schedule_vzdump(&job, at, per_guest, override_.as_ref());
        let node = job.node.clone();
        let task = &mut self.tasks[index];
        task.waiting_for_lock = false;
        if waited {
            task.schedule
                .lines
                .push((at, "INFO: got global lock".into()));
        }
        task.schedule.lines.extend(schedule.lines);
        task.schedule.end = schedule.end;
        task.schedule.exitstatus = schedule.exitstatus;
        task.schedule.effects = schedule.effects;
        let end = task.schedule.end;
        self.schedule_effects(index);
        self.vzdump_holder.insert(node, index);
        if let Some(end) = end {
            self.push_event(end, index, EventKind::VzdumpEnded);
        }
    }

    /// The holder of a node's backup lock ended: the next waiter takes it.
    fn release_vzdump_lock(&mut self, task: usize, at: f64) {
        let node = self.tasks[task].upid.node.clone();
        if self.vzdump_holder.get(&node) != Some(&task) {
            return;
        }
        self.vzdump_holder.remove(&node);
        while let Some(next) = self
            .vzdump_waiters
            .get_mut(&node)
            .and_then(VecDeque::pop_front)
        {
            if self.tasks[next].waiting_for_lock && !self.tasks[next].killed {
                self.run_vzdump(next, at, true);
                break;
            }
        }
    }

    fn give_up_waiting(&mut self, task: usize, at: f64) {
        let entry = &mut self.tasks[task];
        if !entry.waiting_for_lock {
            return;
        }
        entry.waiting_for_lock = false;
        entry.pending_job = None;
        let wait = entry
            .schedule
            .lines
            .first()
            .map_or(0.0, |(created, _)| at - created);
        let reason = if wait <= 0.0 {
            "can't acquire lock '/var/run/vzdump.lock' (wait = 0)".to_string()
        } else {
            "can't acquire lock '/var/run/vzdump.lock' - got timeout".to_string()
        };
        entry
            .schedule
            .lines
            .push((at, format!("TASK ERROR: {reason}")));
        entry.schedule.end = Some(at);
        entry.schedule.exitstatus = Some(reason);
        let node = entry.upid.node.clone();
        if let Some(waiters) = self.vzdump_waiters.get_mut(&node) {
            waiters.retain(|waiter| *waiter != task);
        }
    }

    /// Stops a running task as `DELETE /nodes/{node}/tasks/{upid}` does: its log ends
    /// with `TASK ERROR: received interrupt` and the locks it held are released.
    pub fn kill_task(&mut self, index: usize, at: f64) {
        if !self.tasks[index].is_running(at) {
            return;
        }
        let task = &mut self.tasks[index];
        task.killed = true;
        task.schedule.lines.retain(|(when, _)| *when <= at);
        task.schedule
            .lines
            .push((at, "TASK ERROR: received interrupt".into()));
        task.schedule.end = Some(at);
        task.schedule.exitstatus = Some("received interrupt".into());
        task.pending_job = None;
        let was_waiting = std::mem::replace(&mut task.waiting_for_lock, false);
        let held = std::mem::take(&mut task.held_locks);
        let node = task.upid.node.clone();
        for (vmid, restart) in held {
            self.unlock_after_backup(vmid, restart, at);
        }
        if was_waiting {
            if let Some(waiters) = self.vzdump_waiters.get_mut(&node) {
                waiters.retain(|waiter| *waiter != index);
            }
        }
        // Killed tasks' events are skipped, so release the backup lock here.
        self.release_vzdump_lock(index, at);
    }

    /// Counts a request against its route template.
    pub fn count(&mut self, route: &str) {
        *self.counters.entry(route.to_string()).or_insert(0) += 1;
    }

    pub fn record(&mut self, mut request: RecordedRequest) {
        request.seq = self.next_request_seq;
        self.next_request_seq += 1;
        if self.requests.len() >= REQUEST_LOG_CAPACITY {
            self.requests.pop_front();
        }
        self.requests.push_back(request);
    }

    /// The first fault matching this request, used up by one.
    pub fn take_fault(&mut self, method: &str, path: &str) -> Option<Fault> {
        let position = self.faults.iter().position(|fault| {
            path.starts_with(&fault.path_prefix)
                && fault
                    .method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
        })?;
        let fault = &mut self.faults[position];
        let taken = fault.clone();
        if let Some(count) = fault.count.as_mut() {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.faults.remove(position);
            }
        }
        Some(taken)
    }
}

/// Cheap-clone handle to the simulated world; the same operations as the `/_sim` API.
#[derive(Clone)]
pub struct Sim {
    shared: Arc<Mutex<State>>,
    /// Fixed for the simulator's life; kept outside the lock for the hot path.
    version: PveVersion,
}

impl Sim {
    pub(crate) fn new(state: State) -> Self {
        Self {
            version: state.version,
            shared: Arc::new(Mutex::new(state)),
        }
    }

    /// The Proxmox VE version it imitates.
    pub(crate) fn version(&self) -> PveVersion {
        self.version
    }

    /// Locks the state and brings it up to date. Never hold the guard across `.await`.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the world as it was at that moment, which
        // is still a usable world for a simulator: recover it instead of poisoning every
        // later request.
        let mut state = self
            .shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.advance(now());
        state
    }

    /// Marks a node online or offline (offline: its proxied endpoints answer 595).
    pub fn set_node_online(&self, node: &str, online: bool) -> Result<(), SimError> {
        let mut state = self.lock();
        let entry = state
            .world
            .node_mut(node)
            .ok_or_else(|| SimError::UnknownNode(node.to_string()))?;
        entry.online = online;
        Ok(())
    }

    /// Adds a guest (it "appears" in the cluster).
    pub fn add_guest(&self, new: NewGuest) -> Result<(), SimError> {
        let mut state = self.lock();
        if state.world.node(&new.node).is_none() {
            return Err(SimError::UnknownNode(new.node));
        }
        if state.world.guests.contains_key(&new.vmid) {
            return Err(SimError::GuestExists(new.vmid));
        }
        if !(100..=999_999_999).contains(&new.vmid) {
            return Err(SimError::Invalid(format!("invalid vmid {}", new.vmid)));
        }
        let at = now();
        let pid = state.world.next_pid();
        let status = new.status.unwrap_or(PowerState::Running);
        let (cpus, maxmem, maxdisk) = match new.kind {
            GuestType::Qemu => (2, 2 << 30, 32 << 30),
            GuestType::Lxc => (1, 512 << 20, 8 << 30),
        };
        let maxdisk = new.maxdisk.unwrap_or(maxdisk);
        let guest = super::world::Guest {
            vmid: new.vmid,
            kind: new.kind,
            node: new.node,
            name: new.name.unwrap_or_else(|| format!("guest-{}", new.vmid)),
            power: status,
            template: new.template.unwrap_or(false),
            tags: new.tags.and_then(Tags::into_string),
            pool: new.pool,
            lock: new.lock,
            ha: new.hastate.map(|state| HaState {
                request: state.clone(),
                crm: state,
            }),
            cpus: new.cpus.unwrap_or(cpus),
            maxmem: new.maxmem.unwrap_or(maxmem),
            maxdisk,
            disk_used: match new.kind {
                GuestType::Qemu => 0,
                GuestType::Lxc => maxdisk / 4,
            },
            started_at: at,
            pid,
            load: 0.05,
            mem_fraction: 0.4,
            net_rate: 20_000.0,
            disk_rate: 30_000.0,
            checkpointed: false,
        };
        state.world.guests.insert(guest.vmid, guest);
        Ok(())
    }

    /// Removes a guest (it "vanishes"); its backups stay, as on a real storage.
    pub fn remove_guest(&self, vmid: u32) -> Result<(), SimError> {
        let mut state = self.lock();
        state
            .world
            .guests
            .remove(&vmid)
            .map(|_| ())
            .ok_or(SimError::UnknownGuest(vmid))
    }

    /// Changes any field of a guest.
    pub fn patch_guest(&self, vmid: u32, patch: GuestPatch) -> Result<(), SimError> {
        let mut state = self.lock();
        if let Some(node) = &patch.node {
            if state.world.node(node).is_none() {
                return Err(SimError::UnknownNode(node.clone()));
            }
        }
        let at = now();
        let pid = state.world.next_pid();
        let guest = state
            .world
            .guests
            .get_mut(&vmid)
            .ok_or(SimError::UnknownGuest(vmid))?;
        if let Some(name) = patch.name {
            guest.name = name;
        }
        if let Some(node) = patch.node {
            guest.node = node;
        }
        if let Some(status) = patch.status {
            let was_running = guest.power.process_running();
            guest.power = status;
            if status.process_running() && !was_running {
                guest.started_at = at;
                guest.pid = pid;
            }
        }
        if let Some(tags) = patch.tags {
            guest.tags = tags.and_then(Tags::into_string);
        }
        if let Some(pool) = patch.pool {
            guest.pool = pool;
        }
        if let Some(lock) = patch.lock {
            guest.lock = lock;
        }
        if let Some(hastate) = patch.hastate {
            guest.ha = hastate.map(|state| HaState {
                request: state.clone(),
                crm: state,
            });
        }
        if let Some(template) = patch.template {
            guest.template = template;
        }
        if let Some(cpus) = patch.cpus {
            guest.cpus = cpus;
        }
        if let Some(maxmem) = patch.maxmem {
            guest.maxmem = maxmem;
        }
        if let Some(maxdisk) = patch.maxdisk {
            guest.maxdisk = maxdisk;
        }
        Ok(())
    }

    /// Moves a guest to another node at once (a finished live migration: a running guest
    /// keeps running).
    pub fn migrate_guest(&self, vmid: u32, target: &str) -> Result<(), SimError> {
        self.patch_guest(
            vmid,
            GuestPatch {
                node: Some(target.to_string()),
                ..GuestPatch::default()
            },
        )
    }

    /// Registers (or replaces) a token with privileges per ACL path.
    pub fn add_token(
        &self,
        token: &str,
        privileges: BTreeMap<String, Vec<String>>,
    ) -> Result<(), SimError> {
        let (full_id, secret) =
            Token::parse(token).map_err(|error| SimError::Invalid(error.to_string()))?;
        let privileges = privileges
            .into_iter()
            .map(|(path, privs)| {
                let path = if path.len() > 1 {
                    path.trim_end_matches('/').to_string()
                } else {
                    path
                };
                (path, privs.into_iter().collect())
            })
            .collect();
        let mut state = self.lock();
        state.tokens.insert(
            full_id.clone(),
            Arc::new(Token {
                full_id,
                secret,
                privileges: Some(privileges),
            }),
        );
        Ok(())
    }

    /// Revokes a token by `user@realm!tokenid`.
    pub fn revoke_token(&self, id: &str) -> Result<(), SimError> {
        let mut state = self.lock();
        state
            .tokens
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| SimError::UnknownToken(id.to_string()))
    }

    pub fn add_fault(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    pub fn faults(&self) -> Vec<Fault> {
        self.lock().faults.clone()
    }

    /// Requests served per route template (control routes are not counted).
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.lock().counters.clone()
    }

    pub fn reset_counters(&self) {
        self.lock().counters.clear();
    }

    /// Recorded Proxmox requests with `seq > since`.
    pub fn requests(&self, since: u64) -> Vec<RecordedRequest> {
        self.lock()
            .requests
            .iter()
            .filter(|request| request.seq > since)
            .cloned()
            .collect()
    }

    /// Adds a backup job, or replaces the one with its id.
    pub fn put_backup_job(&self, job: super::jobs::BackupJob) {
        let mut state = self.lock();
        state.backup_jobs.retain(|j| j.id != job.id);
        state.backup_jobs.push(job);
    }

    pub fn backup_jobs(&self) -> Vec<super::jobs::BackupJob> {
        self.lock().backup_jobs.clone()
    }

    /// Runs a backup job now, as the scheduler would (user `root@pam`, `job-id`,
    /// `quiet`); returns its UPIDs, one per node with a selected guest.
    pub fn run_backup_job(&self, id: &str) -> Result<Vec<String>, SimError> {
        let now = now();
        let mut state = self.lock();
        state.advance(now);
        super::jobs::run(&mut state, id, now)
            .ok_or_else(|| SimError::Invalid(format!("no backup job '{id}'")))
    }

    /// Makes the next matching task fail, hang or end with warnings.
    pub fn next_task(&self, override_: TaskOverride) {
        self.lock().overrides.push(override_);
    }

    /// Changes run-time settings.
    pub fn set_config(&self, patch: ConfigPatch) {
        let mut state = self.lock();
        let config = &mut state.config;
        if let Some(ms) = patch.auth_failure_delay_ms {
            config.auth_failure_delay = Duration::from_millis(ms);
        }
        if let Some(ms) = patch.proxy_offline_delay_ms {
            config.proxy_offline_delay = Duration::from_millis(ms);
        }
        if let Some(ms) = patch.task_duration_ms {
            config.task_duration = Duration::from_millis(ms);
        }
        if let Some(ms) = patch.stats_interval_ms {
            config.stats.set_interval(Duration::from_millis(ms), now());
        }
        if let Some(frozen) = patch.frozen {
            config.stats.set_frozen(frozen, now());
        }
    }

    pub fn config(&self) -> ConfigPatch {
        let config = self.lock().config;
        ConfigPatch {
            auth_failure_delay_ms: Some(config.auth_failure_delay.as_millis() as u64),
            proxy_offline_delay_ms: Some(config.proxy_offline_delay.as_millis() as u64),
            task_duration_ms: Some(config.task_duration.as_millis() as u64),
            stats_interval_ms: Some(config.stats.interval.as_millis() as u64),
            frozen: Some(config.stats.frozen_at.is_some()),
        }
    }

    /// The guest's power state, if it exists.
    pub fn guest_power(&self, vmid: u32) -> Option<PowerState> {
        self.lock().world.guests.get(&vmid).map(|guest| guest.power)
    }

    /// The guest's node, if it exists.
    pub fn guest_node(&self, vmid: u32) -> Option<String> {
        self.lock()
            .world
            .guests
            .get(&vmid)
            .map(|guest| guest.node.clone())
    }

    /// Every task so far, newest last.
    pub fn tasks(&self) -> Value {
        let state = self.lock();
        let at = now();
        Value::Array(
            state
                .tasks
                .iter()
                .map(|task| {
                    json!({
                        "upid": task.upid_text,
                        "node": task.upid.node,
                        "type": task.upid.kind,
                        "id": task.upid.id,
                        "user": task.upid.user,
                        "running": task.is_running(at),
                        "exitstatus": task.exitstatus(at),
                    })
                })
                .collect(),
        )
    }

    /// The truth, for tests to compare with what the bridge publishes.
    pub fn world_json(&self) -> Value {
        let state = self.lock();
        let at = state.config.live_time(now());
        let world = &state.world;
        let nodes: Vec<Value> = world
            .nodes
            .iter()
            .map(|node| {
                json!({
                    "name": node.name,
                    "online": node.online,
                    "nodeid": node.nodeid,
                    "ip": node.ip,
                    "maxcpu": node.maxcpu,
                    "maxmem": node.maxmem,
                    "uptime": node.uptime(at),
                })
            })
            .collect();
        let guests: Vec<Value> = world
            .guests
            .values()
            .map(|guest| {
                let metrics = guest.metrics(at);
                json!({
                    "vmid": guest.vmid,
                    "type": guest.kind,
                    "node": guest.node,
                    "name": guest.name,
                    "status": guest.power,
                    "template": guest.template,
                    "tags": guest.tag_list(),
                    "pool": guest.pool,
                    "lock": guest.lock,
                    "hastate": guest.ha.as_ref().map(|ha| ha.crm.clone()),
                    "ha_request": guest.ha.as_ref().map(|ha| ha.request.clone()),
                    "cpus": guest.cpus,
                    "maxmem": guest.maxmem,
                    "maxdisk": guest.maxdisk,
                    "uptime": metrics.uptime,
                    "mem": metrics.mem,
                    "cpu": metrics.cpu,
                    "netin": metrics.netin,
                    "netout": metrics.netout,
                    "diskread": metrics.diskread,
                    "diskwrite": metrics.diskwrite,
                })
            })
            .collect();
        let storages: Vec<Value> = world
            .storages
            .iter()
            .map(|storage| {
                json!({
                    "id": storage.id,
                    "type": storage.plugintype,
                    "content": storage.content,
                    "shared": storage.shared,
                    "total": storage.total,
                    "nodes": storage.nodes,
                })
            })
            .collect();
        let backups: Vec<&super::world::Volume> = world
            .volumes
            .iter()
            .filter(|volume| volume.content == "backup")
            .collect();
        json!({
            "cluster": world.cluster_name,
            "quorate": world.quorate(),
            "version": state.version.to_string(),
            "nodes": nodes,
            "guests": guests,
            "storages": storages,
            "backups": backups,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{Action, Params};
    use crate::tasks::{self, Outcome, OverrideOutcome};

    fn state() -> State {
        let version = PveVersion::parse("9.1.5").expect("version");
        State::new(
            World::seed(1_000_000.0, version, "AA"),
            version,
            RuntimeConfig {
                auth_failure_delay: Duration::ZERO,
                proxy_offline_delay: Duration::ZERO,
                task_duration: Duration::from_secs(1),
                stats: StatsClock::live(),
            },
            Token {
                full_id: "root@pam!t".into(),
                secret: "s".into(),
                privileges: None,
            },
        )
    }

    fn job(vmids: &[u32]) -> VzdumpJob {
        VzdumpJob {
            node: "pve".into(),
            cluster: "pve".into(),
            storage: "local".into(),
            storage_shared: false,
            dump_dir: "/var/lib/vz/dump".into(),
            storage_error: None,
            mode: "snapshot".into(),
            compress: Some("zstd".into()),
            notes_template: None,
            protected: false,
            command_line: format!("vzdump {vmids:?}"),
            guests: Vec::new(),
        }
    }

    #[test]
    fn the_guest_changes_state_when_its_task_ends() {
        let mut state = state();
        let t0 = 1_000_100.0;
        let plan = tasks::plan(
            GuestType::Qemu,
            Action::Stop,
            100,
            "pve",
            state.world.guest_on(100, GuestType::Qemu, "pve"),
            &Params::default(),
            true,
        )
        .expect("plan");
        let upid = state.start_lifecycle_task("pve", GuestType::Qemu, 100, &plan, "root@pam!t", t0);
        assert!(upid.starts_with("UPID:pve:"));
        assert!(upid.ends_with(":qmstop:100:root@pam!t:"));
        state.advance(t0 + 0.4);
        assert_eq!(state.world.guests[&100].power, PowerState::Running);
        state.advance(t0 + 0.6);
        assert_eq!(state.world.guests[&100].power, PowerState::Stopped);
        let task = &state.tasks[state.task_by_upid[&upid]];
        assert_eq!(task.exitstatus(t0 + 0.6), Some("OK"));
    }

    #[test]
    fn a_second_vzdump_waits_for_the_first_and_backups_appear() {
        let mut state = state();
        let t0 = 1_000_100.0;
        let backups_before = state.world.volumes.len();
        let first = state.start_vzdump_task(job(&[100]), vec![100], "root@pam!t", 180, t0);
        let second = state.start_vzdump_task(job(&[101]), vec![101], "root@pam!t", 180, t0 + 0.1);
        let second_index = state.task_by_upid[&second];
        state.advance(t0 + 1.0);
        assert_eq!(state.world.guests[&100].lock.as_deref(), Some("backup"));
        assert!(state.tasks[second_index].waiting_for_lock);
        state.advance(t0 + 2.5);
        let first_task = &state.tasks[state.task_by_upid[&first]];
        assert_eq!(first_task.exitstatus(t0 + 2.5), Some("OK"));
        assert_eq!(state.world.guests[&100].lock, None);
        assert!(!state.tasks[second_index].waiting_for_lock);
        assert!(state.tasks[second_index]
            .visible_lines(t0 + 2.5)
            .contains(&"INFO: got global lock"));
        state.advance(t0 + 10.0);
        assert_eq!(state.world.volumes.len(), backups_before + 2);
        assert!(second.contains(":vzdump:101:"));
    }

    #[test]
    fn killing_a_hanging_backup_releases_the_guest() {
        let mut state = state();
        let t0 = 1_000_100.0;
        state.overrides.push(TaskOverride {
            vmid: None,
            action: Some("backup".into()),
            outcome: OverrideOutcome::Hang,
            error: None,
        });
        let upid = state.start_vzdump_task(job(&[100]), vec![100], "root@pam!t", 180, t0);
        state.advance(t0 + 30.0);
        let index = state.task_by_upid[&upid];
        assert!(state.tasks[index].is_running(t0 + 30.0));
        assert_eq!(state.world.guests[&100].lock.as_deref(), Some("backup"));
        state.kill_task(index, t0 + 31.0);
        assert_eq!(state.world.guests[&100].lock, None);
        assert_eq!(
            state.tasks[index].exitstatus(t0 + 31.0),
            Some("received interrupt")
        );
        // The lock is free again: a new job starts at once.
        let next = state.start_vzdump_task(job(&[101]), vec![101], "root@pam!t", 0, t0 + 32.0);
        assert!(!state.tasks[state.task_by_upid[&next]].waiting_for_lock);
    }

    #[test]
    fn ha_start_finishes_quickly_and_the_guest_starts_later() {
        let mut state = state();
        let t0 = 1_000_100.0;
        {
            let vm = state.world.guests.get_mut(&100).expect("vm");
            vm.stop();
            vm.ha = Some(HaState {
                request: "stopped".into(),
                crm: "stopped".into(),
            });
        }
        let plan = tasks::plan(
            GuestType::Qemu,
            Action::Start,
            100,
            "pve",
            state.world.guest_on(100, GuestType::Qemu, "pve"),
            &Params::default(),
            true,
        )
        .expect("plan");
        assert_eq!(plan.outcome, Outcome::HaRequest { start: true });
        let upid = state.start_lifecycle_task("pve", GuestType::Qemu, 100, &plan, "root@pam!t", t0);
        state.advance(t0 + 1.0);
        let task = &state.tasks[state.task_by_upid[&upid]];
        assert_eq!(task.exitstatus(t0 + 1.0), Some("OK"));
        assert_eq!(state.world.guests[&100].power, PowerState::Stopped);
        assert_eq!(
            state.world.guests[&100].ha.as_ref().map(|h| h.crm.as_str()),
            Some("request_start")
        );
        state.advance(t0 + 5.0);
        assert_eq!(state.world.guests[&100].power, PowerState::Running);
    }

    #[test]
    fn faults_are_used_up_by_count() {
        let mut state = state();
        state.faults.push(Fault {
            path_prefix: "/cluster".into(),
            method: None,
            kind: FaultKind::Status,
            status: Some(500),
            message: None,
            delay_ms: None,
            count: Some(2),
        });
        assert!(state.take_fault("GET", "/version").is_none());
        assert!(state.take_fault("GET", "/cluster/resources").is_some());
        assert!(state.take_fault("GET", "/cluster/status").is_some());
        assert!(state.take_fault("GET", "/cluster/status").is_none());
    }
}
