//! Proxmox tasks: UPIDs, the lifecycle rules of reference §3.7, and task logs.
//!
//! Everything here is pure. A lifecycle POST is first [`plan`]ned (which checks fail
//! synchronously with HTTP 500, which fail inside the task, which are no-ops), then a
//! [`Schedule`] lays the task out in time: its log lines with timestamps, its end, its exit
//! status and the effects on the world with the instant each one happens. The engine in
//! `state.rs` applies the effects when their time has come.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::params::{Action, Params};
use super::world::{backup_names, format_time, Guest, GuestType, PowerState, Volume};

/// A task id: `UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{type}:{id}:{user}:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upid {
    pub node: String,
    pub pid: u32,
    /// Process start in clock ticks since boot (9 hex digits after ~497 days of uptime).
    pub pstart: u64,
    pub starttime: u64,
    pub kind: String,
    /// The vmid, or empty (a vzdump of several guests).
    pub id: String,
    /// `user@realm`, or `user@realm!tokenid` for token tasks.
    pub user: String,
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UPID:{}:{:08X}:{:08X}:{:08X}:{}:{}:{}:",
            self.node, self.pid, self.pstart, self.starttime, self.kind, self.id, self.user
        )
    }
}

impl Upid {
    /// Decodes a UPID as `PVE::Tools::upid_decode` does; `None` if it does not parse.
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("UPID:")?.strip_suffix(':')?;
        let parts: Vec<&str> = rest.split(':').collect();
        let [node, pid, pstart, starttime, kind, id, user] = parts.as_slice() else {
            return None;
        };
        let hex = |text: &str, lengths: &[usize]| {
            (lengths.contains(&text.len()) && text.chars().all(|c| c.is_ascii_hexdigit()))
                .then(|| u64::from_str_radix(text, 16).ok())
                .flatten()
        };
        let node_ok = !node.is_empty()
            && node.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !node.starts_with('-')
            && !node.ends_with('-');
        let field_ok = |text: &str| !text.contains(|c: char| c.is_whitespace() || c == '/');
        if !node_ok || kind.is_empty() || user.is_empty() || !field_ok(kind) || !field_ok(id) {
            return None;
        }
        if !field_ok(user) {
            return None;
        }
        Some(Self {
            node: node.to_string(),
            pid: u32::try_from(hex(pid, &[8])?).ok()?,
            pstart: hex(pstart, &[8, 9])?,
            starttime: hex(starttime, &[8])?,
            kind: kind.to_string(),
            id: id.to_string(),
            user: user.to_string(),
        })
    }
}

/// What a task does to a guest when it ends successfully.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing changes (stopping a stopped VM, resuming a running one, a reset).
    None,
    Start,
    Stop,
    /// Shut down and start again: uptime and counters restart.
    Reboot,
    Pause,
    Resume,
    /// `suspend --todisk`: the VM stops with lock `suspended`.
    Hibernate,
    /// LXC `suspend`: CRIU checkpoint, the container stops.
    Checkpoint,
    /// LXC `resume` from a checkpoint.
    Restore,
}

/// How a planned task ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(Effect),
    /// The task fails with this message (`TASK ERROR: …`).
    Fail(String),
    /// `hastart`/`hastop`: the task only asks the HA manager; the state changes later.
    HaRequest {
        start: bool,
    },
}

/// A lifecycle task to run: its type (`qmstart`, `vzstop`, `hastart`, …) and outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub task_type: &'static str,
    pub outcome: Outcome,
}

fn task(task_type: &'static str, outcome: Outcome) -> Result<Plan, String> {
    Ok(Plan { task_type, outcome })
}

fn lock_error(guest: &Guest) -> Option<String> {
    guest
        .lock
        .as_ref()
        .map(|lock| format!("{} is locked ({lock})", guest.kind.label()))
}

/// Decides a lifecycle POST per reference §3.7: `Err` is a synchronous HTTP 500 with that
/// message; `Ok` is a task, possibly one that fails or does nothing.
///
/// `guest` is the guest with this vmid *and type on this node*, `None` when its config is
/// not there (unknown vmid, other node, other type).
pub fn plan(
    kind: GuestType,
    action: Action,
    vmid: u32,
    node: &str,
    guest: Option<&Guest>,
    params: &Params,
    quorate: bool,
) -> Result<Plan, String> {
    match kind {
        GuestType::Qemu => plan_qemu(action, vmid, node, guest, params, quorate),
        GuestType::Lxc => plan_lxc(action, vmid, node, guest, quorate),
    }
}

fn plan_qemu(
    action: Action,
    vmid: u32,
    node: &str,
    guest: Option<&Guest>,
    params: &Params,
    quorate: bool,
) -> Result<Plan, String> {
    use Outcome::{Fail, HaRequest, Ok as Done};
    let missing_config =
        format!("unable to find configuration file for VM {vmid} on node '{node}'");
    let not_running = format!("VM {vmid} not running");
    let running = guest.is_some_and(|g| g.power.process_running());
    let paused = guest.is_some_and(|g| g.power == PowerState::Paused);
    let ha = guest.is_some_and(|g| g.ha.is_some());
    let hibernated = guest.is_some_and(|g| !running && g.lock.as_deref() == Some("suspended"));
    match action {
        Action::Start => {
            if !quorate {
                return Err("cluster not ready - no quorum?".into());
            }
            let Some(guest) = guest else {
                return task(
                    "qmstart",
                    Fail(format!(
                        "Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist"
                    )),
                );
            };
            if ha {
                return task("hastart", HaRequest { start: true });
            }
            if guest.template {
                return task(
                    "qmstart",
                    Fail("you can't start a vm if it's a template".into()),
                );
            }
            if !hibernated {
                if let Some(error) = lock_error(guest) {
                    return task("qmstart", Fail(error));
                }
            }
            if running {
                return task("qmstart", Fail(format!("VM {vmid} already running")));
            }
            task("qmstart", Done(Effect::Start))
        }
        Action::Stop | Action::Shutdown => {
            let task_type = if action == Action::Stop {
                "qmstop"
            } else {
                "qmshutdown"
            };
            let force = params.flag("forceStop");
            if action == Action::Shutdown && paused && !force {
                return Err("VM is paused - cannot shutdown".into());
            }
            let Some(guest) = guest else {
                return task(task_type, Fail(missing_config));
            };
            if ha {
                return task("hastop", HaRequest { start: false });
            }
            if let Some(error) = lock_error(guest) {
                return task(task_type, Fail(error));
            }
            if !running {
                return task(task_type, Done(Effect::None));
            }
            task(task_type, Done(Effect::Stop))
        }
        Action::Reboot => {
            let Some(guest) = guest else {
                return Err(missing_config);
            };
            if !running {
                return Err(not_running);
            }
            if paused {
                return Err("VM is paused - cannot shutdown".into());
            }
            match lock_error(guest) {
                Some(error) => task("qmreboot", Fail(error)),
                None => task("qmreboot", Done(Effect::Reboot)),
            }
        }
        Action::Reset => {
            let Some(guest) = guest else {
                return Err(missing_config);
            };
            if !running {
                return Err(not_running);
            }
            match lock_error(guest) {
                Some(error) => task("qmreset", Fail(error)),
                None => task("qmreset", Done(Effect::None)),
            }
        }
        Action::Suspend => {
            let Some(guest) = guest else {
                return Err(missing_config);
            };
            if !running {
                return Err(not_running);
            }
            let to_disk = params.flag("todisk");
            if to_disk && ha {
                return Err("Cannot suspend HA managed VM to disk".into());
            }
            let (task_type, effect) = if to_disk {
                ("qmsuspend", Effect::Hibernate)
            } else {
                ("qmpause", Effect::Pause)
            };
            match lock_error(guest) {
                Some(error) => task(task_type, Fail(error)),
                None => task(task_type, Done(effect)),
            }
        }
        Action::Resume => {
            if guest.is_none() {
                return Err(missing_config);
            }
            if !running && !hibernated {
                return Err(not_running);
            }
            let effect = if hibernated {
                Effect::Start
            } else if paused {
                Effect::Resume
            } else {
                // QMP already reports `running`: RunState.pm returns early, task OK.
                Effect::None
            };
            task("qmresume", Done(effect))
        }
    }
}

fn plan_lxc(
    action: Action,
    vmid: u32,
    node: &str,
    guest: Option<&Guest>,
    quorate: bool,
) -> Result<Plan, String> {
    use Outcome::{Fail, HaRequest, Ok as Done};
    let missing_config =
        format!("Configuration file 'nodes/{node}/lxc/{vmid}.conf' does not exist");
    let running = guest.is_some_and(|g| g.power.process_running());
    let ha = guest.is_some_and(|g| g.ha.is_some());
    let ct_not_running = format!("CT {vmid} not running");
    let with_lock = |task_type: &'static str, guest: &Guest, effect: Effect| match lock_error(guest)
    {
        Some(error) => task(task_type, Fail(error)),
        None => task(task_type, Done(effect)),
    };
    match action {
        Action::Start => {
            if !quorate {
                return Err("cluster not ready - no quorum?".into());
            }
            if running {
                return Err(format!("CT {vmid} already running"));
            }
            let Some(guest) = guest else {
                return task("vzstart", Fail(missing_config));
            };
            if ha {
                return task("hastart", HaRequest { start: true });
            }
            if guest.template {
                return task(
                    "vzstart",
                    Fail("you can't start a CT if it's a template".into()),
                );
            }
            with_lock("vzstart", guest, Effect::Start)
        }
        Action::Stop | Action::Shutdown => {
            let Some(guest) = guest.filter(|_| running) else {
                return Err(ct_not_running);
            };
            if ha {
                return task("hastop", HaRequest { start: false });
            }
            let task_type = if action == Action::Stop {
                "vzstop"
            } else {
                "vzshutdown"
            };
            with_lock(task_type, guest, Effect::Stop)
        }
        Action::Reboot => {
            let Some(guest) = guest.filter(|_| running) else {
                // Sic: pve-container says "VM" here.
                return Err(format!("VM {vmid} not running"));
            };
            with_lock("vzreboot", guest, Effect::Reboot)
        }
        Action::Suspend => {
            let Some(guest) = guest.filter(|_| running) else {
                return Err(ct_not_running);
            };
            with_lock("vzsuspend", guest, Effect::Checkpoint)
        }
        Action::Resume => {
            if running {
                return Err(format!("CT {vmid} already running"));
            }
            let Some(guest) = guest else {
                return task("vzresume", Fail(missing_config));
            };
            if !guest.checkpointed {
                return task(
                    "vzresume",
                    Fail(format!("unable to restore CT {vmid} - no checkpoint found")),
                );
            }
            task("vzresume", Done(Effect::Restore))
        }
        // No such route for containers; the API layer answers 501 before planning.
        Action::Reset => Err(format!("Method 'reset' not implemented for CT {vmid}")),
    }
}

/// How long a task of this type takes, as a multiple of the configured task duration.
pub fn duration_factor(task_type: &str) -> f64 {
    match task_type {
        "qmstop" | "vzstop" | "hastart" | "hastop" => 0.5,
        "qmreset" | "qmpause" | "qmresume" => 0.25,
        "qmreboot" | "vzreboot" => 1.5,
        _ => 1.0,
    }
}

/// Makes the next matching task fail, hang or end with warnings (control API).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskOverride {
    /// Only tasks for this guest (any guest when absent).
    #[serde(default)]
    pub vmid: Option<u32>,
    /// `start`, `stop`, … `backup`/`vzdump`, or a task type such as `qmstart` (any when absent).
    #[serde(default)]
    pub action: Option<String>,
    pub outcome: OverrideOutcome,
    /// The error text for `fail` (a plausible one per task type when absent).
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverrideOutcome {
    Fail,
    Hang,
    Warnings,
}

impl TaskOverride {
    /// Whether this override applies to a task of `task_type` touching `vmids`.
    pub fn matches(&self, task_type: &str, vmids: &[u32]) -> bool {
        let action_ok = self.action.as_deref().is_none_or(|action| {
            action == task_type
                || match action {
                    "backup" | "vzdump" => task_type == "vzdump",
                    "start" => matches!(task_type, "qmstart" | "vzstart" | "hastart"),
                    "stop" => matches!(task_type, "qmstop" | "vzstop" | "hastop"),
                    "shutdown" => matches!(task_type, "qmshutdown" | "vzshutdown" | "hastop"),
                    "reboot" => matches!(task_type, "qmreboot" | "vzreboot"),
                    "reset" => task_type == "qmreset",
                    "suspend" => matches!(task_type, "qmpause" | "qmsuspend" | "vzsuspend"),
                    "resume" => matches!(task_type, "qmresume" | "vzresume"),
                    "snapshot" => matches!(task_type, "qmsnapshot" | "vzsnapshot"),
                    "rollback" => matches!(task_type, "qmrollback" | "vzrollback"),
                    "delete_snapshot" => matches!(task_type, "qmdelsnapshot" | "vzdelsnapshot"),
                    _ => false,
                }
        });
        let vmid_ok = self.vmid.is_none_or(|vmid| vmids.contains(&vmid));
        action_ok && vmid_ok
    }
}

fn default_failure(task_type: &str, vmid: u32) -> String {
    match task_type {
        "qmstart" => "start failed: QEMU exited with code 1".into(),
        "vzstart" => format!("startup for container '{vmid}' failed"),
        "qmshutdown" | "vzshutdown" => "VM quit/powerdown failed - got timeout".into(),
        "qmstop" => {
            format!("can't lock file '/var/lock/qemu-server/lock-{vmid}.conf' - got timeout")
        }
        "vzstop" => format!("can't lock file '/run/lock/lxc/pve-config-{vmid}.lock' - got timeout"),
        other => format!("command '{other}' failed: got timeout"),
    }
}

/// What happens to the world at some instant because of a task.
#[derive(Clone, Debug)]
pub enum TaskEffect {
    /// A lifecycle task ended successfully.
    Guest { vmid: u32, effect: Effect },
    /// `hastart`/`hastop` ended: the HA resource's requested state changes.
    HaRequest { vmid: u32, start: bool },
    /// The HA manager has acted: the guest is now started/stopped.
    HaSettle { vmid: u32, start: bool },
    /// vzdump begins a guest: lock it (and stop it in `stop` mode).
    BackupBegin { vmid: u32, stop_guest: bool },
    /// vzdump finished a guest: unlock, restart it if stopped for the backup, and (when
    /// it succeeded) add the archive to the storage.
    BackupEnd {
        vmid: u32,
        restart: bool,
        volume: Option<Box<Volume>>,
    },
    /// A snapshot, rollback or snapshot deletion begins or ends.
    Snapshot(super::snapshots::SnapEffect),
}

/// A task laid out in time.
#[derive(Clone, Debug, Default)]
pub struct Schedule {
    /// Log lines with the instant each one is written; the last is `TASK …` when it ends.
    pub lines: Vec<(f64, String)>,
    /// When the task ends; `None` for a task that never ends (until stopped).
    pub end: Option<f64>,
    /// The exit status once ended: `OK`, `WARNINGS: n`, or the error text.
    pub exitstatus: Option<String>,
    pub effects: Vec<(f64, TaskEffect)>,
}

impl Schedule {
    pub(crate) fn finish(&mut self, at: f64, exitstatus: String) {
        let last = if exitstatus == "OK" {
            "TASK OK".to_string()
        } else if exitstatus.starts_with("WARNINGS: ") {
            format!("TASK {exitstatus}")
        } else {
            format!("TASK ERROR: {exitstatus}")
        };
        self.lines.push((at, last));
        self.end = Some(at);
        self.exitstatus = Some(exitstatus);
    }
}

/// Lays out a lifecycle task starting at `t0`.
pub fn schedule_lifecycle(
    plan: &Plan,
    vmid: u32,
    kind: GuestType,
    t0: f64,
    task_duration: f64,
    ha_delay: f64,
    override_: Option<&TaskOverride>,
) -> Schedule {
    let mut schedule = Schedule::default();
    let end = t0 + task_duration * duration_factor(plan.task_type);
    if let Outcome::HaRequest { start } = plan.outcome {
        let verb = if start { "start" } else { "stop" };
        schedule.lines.push((
            t0,
            format!("Requesting HA {verb} for {} {vmid}", kind.label()),
        ));
    }
    if let Some(override_) = override_ {
        match override_.outcome {
            OverrideOutcome::Hang => return schedule,
            OverrideOutcome::Fail => {
                let error = override_
                    .error
                    .clone()
                    .unwrap_or_else(|| default_failure(plan.task_type, vmid));
                schedule.finish(end, error.replace('\n', " "));
                return schedule;
            }
            OverrideOutcome::Warnings => {}
        }
    }
    let warned = override_.is_some_and(|o| o.outcome == OverrideOutcome::Warnings);
    match &plan.outcome {
        Outcome::Fail(message) => {
            let fail_at = t0 + task_duration * 0.25;
            schedule.finish(fail_at, message.clone());
            return schedule;
        }
        Outcome::Ok(effect) => {
            schedule.effects.push((
                end,
                TaskEffect::Guest {
                    vmid,
                    effect: *effect,
                },
            ));
        }
        Outcome::HaRequest { start } => {
            schedule.effects.push((
                end,
                TaskEffect::HaRequest {
                    vmid,
                    start: *start,
                },
            ));
            schedule.effects.push((
                end + ha_delay,
                TaskEffect::HaSettle {
                    vmid,
                    start: *start,
                },
            ));
        }
    }
    if warned {
        let text = match plan.task_type {
            "qmshutdown" | "vzshutdown" => {
                "WARN: guest did not respond to ACPI - terminating now with SIGTERM".to_string()
            }
            _ => format!("WARN: {} {vmid}: simulated warning", kind.label()),
        };
        schedule.lines.push(((t0 + end) / 2.0, text));
        schedule.finish(end, "WARNINGS: 1".into());
    } else {
        schedule.finish(end, "OK".into());
    }
    schedule
}

/// One guest of a vzdump job, captured when the job takes the lock.
#[derive(Clone, Debug)]
pub struct VzdumpGuest {
    pub vmid: u32,
    /// `None` when the vmid exists nowhere: the job includes it and fails it visibly.
    pub kind: Option<GuestType>,
    pub name: String,
    pub running: bool,
    /// Bytes to read: the disk size for VMs, used root disk for containers.
    pub data: u64,
}

/// A vzdump job: everything its log and results depend on.
#[derive(Clone, Debug)]
pub struct VzdumpJob {
    pub node: String,
    pub cluster: String,
    pub storage: String,
    /// The storage is shared (its volumes belong to no node).
    pub storage_shared: bool,
    pub dump_dir: String,
    /// Set when the storage can't take backups: the task dies with it.
    pub storage_error: Option<String>,
    pub mode: String,
    pub compress: Option<String>,
    pub notes_template: Option<String>,
    pub protected: bool,
    pub command_line: String,
    pub guests: Vec<VzdumpGuest>,
}

/// Like Proxmox's `render_bytes` with one decimal: `3.4 GiB`.
pub fn render_bytes(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{} B", value as u64)
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// Like vzdump's duration rendering: `3s`, `1m 4s`, `1h 2m 3s`.
fn render_duration(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, (seconds / 60) % 60, seconds % 60);
    if h > 0 {
        format!("{h}h {m}m {s}s")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

fn hms(seconds: u64) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        (seconds / 60) % 60,
        seconds % 60
    )
}

/// Fills `{{cluster}}`, `{{guestname}}`, `{{node}}` and `{{vmid}}` like vzdump; a literal
/// `\n` becomes a line break.
pub fn render_notes(template: &str, cluster: &str, guest: &VzdumpGuest, node: &str) -> String {
    template
        .replace("{{cluster}}", cluster)
        .replace("{{guestname}}", &guest.name)
        .replace("{{node}}", node)
        .replace("{{vmid}}", &guest.vmid.to_string())
        .replace("\\n", "\n")
}

/// A deterministic UUID-looking id for "started backup task '…'" lines.
fn fake_uuid(seed: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        rng.u32(..),
        rng.u16(..),
        rng.u16(..0x1000),
        rng.u16(0x8000..0xC000),
        rng.u64(..0x1_0000_0000_0000)
    )
}

/// Lays out a vzdump job that got the node's backup lock at `t0`; each guest takes
/// `per_guest` seconds of real time. Timestamps and the per-guest duration are real;
/// progress lines are spread over that time, but the figures they print (seconds,
/// throughput) are those of a plausible real backup, not of a one-second one.
pub fn schedule_vzdump(
    job: &VzdumpJob,
    t0: f64,
    per_guest: f64,
    override_: Option<&TaskOverride>,
) -> Schedule {
    let mut schedule = Schedule::default();
    schedule.lines.push((
        t0,
        format!("INFO: starting new backup job: {}", job.command_line),
    ));
    if let Some(error) = &job.storage_error {
        schedule.finish(t0 + per_guest * 0.1, error.clone());
        return schedule;
    }
    let mut job_errors = false;
    let mut warnings = 0;
    let mut cursor = t0 + per_guest * 0.02;
    // The guest the override applies to: the named one, or the first.
    let target = override_.map(|o| {
        o.vmid
            .unwrap_or_else(|| job.guests.first().map_or(0, |g| g.vmid))
    });
    for guest in &job.guests {
        let start = cursor;
        let end = start + per_guest * 0.96;
        cursor = start + per_guest;
        let start_unix = start as u64;
        let mut at = start;
        let step = per_guest / 24.0;
        let line = |schedule: &mut Schedule, at: &mut f64, text: String| {
            schedule.lines.push((*at, text));
            *at += step * 0.1;
        };
        let Some(kind) = guest.kind else {
            line(
                &mut schedule,
                &mut at,
                format!(
                    "ERROR: Backup of VM {} failed - unable to find VM '{}'",
                    guest.vmid, guest.vmid
                ),
            );
            job_errors = true;
            continue;
        };
        let type_name = kind.as_str();
        line(
            &mut schedule,
            &mut at,
            format!("INFO: Starting Backup of VM {} ({type_name})", guest.vmid),
        );
        line(
            &mut schedule,
            &mut at,
            format!(
                "INFO: Backup started at {}",
                format_time(start_unix, '-', ' ', ':')
            ),
        );
        let status = if guest.running { "running" } else { "stopped" };
        line(&mut schedule, &mut at, format!("INFO: status = {status}"));
        let label = match kind {
            GuestType::Qemu => "VM",
            GuestType::Lxc => "CT",
        };
        line(
            &mut schedule,
            &mut at,
            format!("INFO: {label} Name: {}", guest.name),
        );
        let stop_guest = guest.running && job.mode == "stop";
        let effective_mode = if guest.running {
            job.mode.as_str()
        } else {
            "stop"
        };
        match kind {
            GuestType::Qemu => line(
                &mut schedule,
                &mut at,
                format!(
                    "INFO: include disk 'scsi0' 'local-lvm:vm-{}-disk-0' {}G",
                    guest.vmid,
                    guest.data / (1024 * 1024 * 1024)
                ),
            ),
            GuestType::Lxc => line(
                &mut schedule,
                &mut at,
                "INFO: including mount point rootfs ('/') in backup".into(),
            ),
        }
        line(
            &mut schedule,
            &mut at,
            format!("INFO: backup mode: {effective_mode}"),
        );
        line(&mut schedule, &mut at, "INFO: ionice priority: 7".into());
        if stop_guest {
            line(
                &mut schedule,
                &mut at,
                "INFO: stopping virtual guest".into(),
            );
        }
        schedule.effects.push((
            start,
            TaskEffect::BackupBegin {
                vmid: guest.vmid,
                stop_guest,
            },
        ));
        let (volid, file, format) = backup_names(
            &job.storage,
            kind,
            guest.vmid,
            start_unix,
            job.compress.as_deref(),
        );
        line(
            &mut schedule,
            &mut at,
            format!("INFO: creating vzdump archive '{}/{file}'", job.dump_dir),
        );
        let fails_here = target == Some(guest.vmid)
            && override_.is_some_and(|o| o.outcome != OverrideOutcome::Warnings);
        let hangs_here =
            fails_here && override_.is_some_and(|o| o.outcome == OverrideOutcome::Hang);
        if kind == GuestType::Qemu {
            if !guest.running {
                line(
                    &mut schedule,
                    &mut at,
                    "INFO: starting kvm to execute backup task".into(),
                );
            }
            line(
                &mut schedule,
                &mut at,
                format!(
                    "INFO: started backup task '{}'",
                    fake_uuid(u64::from(guest.vmid) ^ start_unix)
                ),
            );
            // Progress: virtual throughput of ~1.1 GiB/s read, spread over the real time.
            let total = guest.data.max(1) as f64;
            let read_rate = 1.1 * 1024.0 * 1024.0 * 1024.0;
            let write_rate = read_rate * 0.92;
            let steps = 10;
            let progress_start = at;
            let progress_span = (end - per_guest * 0.15) - progress_start;
            for step_index in 1..=steps {
                let percent = if step_index == steps {
                    100
                } else {
                    (step_index * 100 / steps) - 3 + (guest.vmid as usize + step_index) % 5
                };
                if hangs_here && percent > 40 {
                    break;
                }
                if fails_here && !hangs_here && percent > 60 {
                    break;
                }
                let transferred = total * percent as f64 / 100.0;
                let virtual_secs = (transferred / read_rate).ceil().max(1.0) as u64;
                let when = progress_start + progress_span * step_index as f64 / steps as f64;
                schedule.lines.push((
                    when,
                    format!(
                        "INFO: {percent:>3}% ({} of {}) in {}, read: {}/s, write: {}/s",
                        render_bytes(transferred),
                        render_bytes(total),
                        render_duration(virtual_secs),
                        render_bytes(read_rate),
                        render_bytes(write_rate)
                    ),
                ));
            }
        }
        if hangs_here {
            // Never ends: no BackupEnd; stopping the task releases the lock.
            return schedule;
        }
        let total_secs = ((guest.data as f64) / (1.1 * 1024.0 * 1024.0 * 1024.0)).ceil() as u64 + 1;
        if fails_here {
            let error = override_
                .and_then(|o| o.error.clone())
                .unwrap_or_else(|| "job failed with err -5 - Input/output error".into());
            schedule.lines.push((
                end,
                format!("ERROR: Backup of VM {} failed - {error}", guest.vmid),
            ));
            schedule.effects.push((
                end,
                TaskEffect::BackupEnd {
                    vmid: guest.vmid,
                    restart: stop_guest,
                    volume: None,
                },
            ));
            job_errors = true;
            continue;
        }
        let size = match kind {
            GuestType::Qemu => guest.data / 4 + u64::from(guest.vmid) * 8192,
            GuestType::Lxc => guest.data / 3 + u64::from(guest.vmid) * 4096,
        };
        let mut at = end - per_guest * 0.12;
        let mut tail = |text: String| {
            schedule.lines.push((at, text));
            at += per_guest * 0.015;
        };
        match kind {
            GuestType::Qemu => {
                let zero = guest.data as f64 * 0.37;
                tail(format!(
                    "INFO: backup is sparse: {:.2} GiB (37%) total zero data",
                    zero / (1024.0 * 1024.0 * 1024.0)
                ));
                tail(format!(
                    "INFO: transferred {:.2} GiB in {total_secs} seconds ({}/s)",
                    guest.data as f64 / (1024.0 * 1024.0 * 1024.0),
                    render_bytes(guest.data as f64 / total_secs as f64)
                ));
                if !guest.running {
                    tail("INFO: stopping kvm after backup task".into());
                }
            }
            GuestType::Lxc => {
                tail(format!(
                    "INFO: Total bytes written: {} ({}, {}/s)",
                    guest.data,
                    render_bytes(guest.data as f64).replace(' ', ""),
                    render_bytes(guest.data as f64 / total_secs as f64).replace(' ', "")
                ));
            }
        }
        if stop_guest {
            tail("INFO: restarting vm".into());
        }
        tail(format!(
            "INFO: archive file size: {:.2}GB",
            size as f64 / 1_000_000_000.0
        ));
        let notes = job
            .notes_template
            .as_deref()
            .map(|template| render_notes(template, &job.cluster, guest, &job.node));
        if notes.is_some() {
            tail("INFO: adding notes to backup".into());
        }
        if job.protected {
            tail("INFO: marking backup as protected".into());
        }
        if override_.is_some_and(|o| o.outcome == OverrideOutcome::Warnings)
            && target == Some(guest.vmid)
        {
            tail(format!(
                "WARN: unable to clean up old backups of VM {} - simulated warning",
                guest.vmid
            ));
            warnings += 1;
        }
        // Wall-clock figures are real, so consecutive guests never overlap in the log.
        let end_unix = end as u64;
        tail(format!(
            "INFO: Finished Backup of VM {} ({})",
            guest.vmid,
            hms(end_unix.saturating_sub(start_unix))
        ));
        tail(format!(
            "INFO: Backup finished at {}",
            format_time(end_unix, '-', ' ', ':')
        ));
        let volume = Volume {
            storage: job.storage.clone(),
            node: (!job.storage_shared).then(|| job.node.clone()),
            volid,
            content: "backup".into(),
            format,
            size,
            ctime: start_unix,
            vmid: Some(guest.vmid),
            subtype: Some(kind),
            notes,
            protected: job.protected,
            verification: None,
        };
        schedule.effects.push((
            end,
            TaskEffect::BackupEnd {
                vmid: guest.vmid,
                restart: stop_guest,
                volume: Some(Box::new(volume)),
            },
        ));
    }
    let end = cursor.max(t0 + per_guest * 0.1);
    if job_errors {
        schedule
            .lines
            .push((end, "INFO: Backup job finished with errors".into()));
        schedule.finish(end, "job errors".into());
    } else {
        schedule
            .lines
            .push((end, "INFO: Backup job finished successfully".into()));
        if warnings > 0 {
            schedule.finish(end, format!("WARNINGS: {warnings}"));
        } else {
            schedule.finish(end, "OK".into());
        }
    }
    schedule
}

/// A task in the node's task list.
#[derive(Clone, Debug)]
pub struct Task {
    pub upid: Upid,
    pub upid_text: String,
    /// Unix seconds (fractional) when the task was created.
    pub created: f64,
    pub schedule: Schedule,
    /// Stopped with `DELETE /nodes/{node}/tasks/{upid}`.
    pub killed: bool,
    /// Guests this (vzdump) task holds locked, and whether each must be restarted.
    pub held_locks: Vec<(u32, bool)>,
    /// vzdump still waits for the node's backup lock.
    pub waiting_for_lock: bool,
    /// vzdump: the job to lay out once the lock is acquired.
    pub pending_job: Option<Box<PendingVzdump>>,
}

/// A vzdump POST waiting for the node's backup lock.
#[derive(Clone, Debug)]
pub struct PendingVzdump {
    pub job: VzdumpJob,
    pub vmids: Vec<u32>,
    pub override_: Option<TaskOverride>,
}

impl Task {
    pub fn is_running(&self, now: f64) -> bool {
        self.schedule.end.is_none_or(|end| end > now)
    }

    /// The end time, if it has passed.
    pub fn ended_at(&self, now: f64) -> Option<f64> {
        self.schedule.end.filter(|end| *end <= now)
    }

    /// The exit status, once the task has ended.
    pub fn exitstatus(&self, now: f64) -> Option<&str> {
        self.ended_at(now).and(self.schedule.exitstatus.as_deref())
    }

    /// The log as written so far.
    pub fn visible_lines(&self, now: f64) -> Vec<&str> {
        self.schedule
            .lines
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, text)| text.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{self, validate, RawValue};
    use crate::world::{PveVersion, World};
    use std::collections::BTreeMap;

    fn world() -> World {
        World::seed(1_000_000.0, PveVersion::parse("9.1.5").unwrap(), "AA")
    }

    fn no_params() -> Params {
        Params::default()
    }

    #[test]
    fn upid_round_trips_with_upper_hex_and_trailing_colon() {
        let upid = Upid {
            node: "pvedev01-dc03".into(),
            pid: 396_816,
            pstart: 8_526_388,
            starttime: 1_745_086_489,
            kind: "qmcreate".into(),
            id: "666".into(),
            user: "root@pam!robin".into(),
        };
        let text = upid.to_string();
        assert_eq!(
            text,
            "UPID:pvedev01-dc03:00060E10:00821A34:6803E819:qmcreate:666:root@pam!robin:"
        );
        assert_eq!(Upid::parse(&text), Some(upid));
        assert!(Upid::parse("UPID:pve:00060E10:00821A34:6803E819:vzdump::root@pam:").is_some());
        assert!(Upid::parse("UPID:pve:0060E10:00821A34:6803E819:qmstart:1:root@pam:").is_none());
        assert!(Upid::parse("garbage").is_none());
    }

    #[test]
    fn starting_a_running_vm_fails_in_the_task_but_a_running_ct_fails_at_once() {
        let world = world();
        let vm = world.guest_on(100, GuestType::Qemu, "pve");
        let plan_vm = plan(
            GuestType::Qemu,
            Action::Start,
            100,
            "pve",
            vm,
            &no_params(),
            true,
        )
        .expect("a task");
        assert_eq!(plan_vm.task_type, "qmstart");
        assert_eq!(
            plan_vm.outcome,
            Outcome::Fail("VM 100 already running".into())
        );
        let ct = world.guest_on(101, GuestType::Lxc, "pve");
        let sync = plan(
            GuestType::Lxc,
            Action::Start,
            101,
            "pve",
            ct,
            &no_params(),
            true,
        );
        assert_eq!(sync, Err("CT 101 already running".into()));
    }

    #[test]
    fn stopping_a_stopped_vm_is_ok_but_a_stopped_ct_is_an_error() {
        let mut world = world();
        for guest in world.guests.values_mut() {
            guest.stop();
        }
        let vm = plan(
            GuestType::Qemu,
            Action::Stop,
            100,
            "pve",
            world.guest_on(100, GuestType::Qemu, "pve"),
            &no_params(),
            true,
        )
        .expect("task");
        assert_eq!(vm.outcome, Outcome::Ok(Effect::None));
        let ct = plan(
            GuestType::Lxc,
            Action::Stop,
            101,
            "pve",
            world.guest_on(101, GuestType::Lxc, "pve"),
            &no_params(),
            true,
        );
        assert_eq!(ct, Err("CT 101 not running".into()));
        let reboot = plan(
            GuestType::Lxc,
            Action::Reboot,
            101,
            "pve",
            world.guest_on(101, GuestType::Lxc, "pve"),
            &no_params(),
            true,
        );
        assert_eq!(reboot, Err("VM 101 not running".into()));
    }

    #[test]
    fn unknown_vmids_follow_the_reference_table() {
        let start = plan(
            GuestType::Qemu,
            Action::Start,
            999,
            "pve",
            None,
            &no_params(),
            true,
        )
        .expect("task");
        assert_eq!(
            start.outcome,
            Outcome::Fail(
                "Configuration file 'nodes/pve/qemu-server/999.conf' does not exist".into()
            )
        );
        let stop = plan(
            GuestType::Qemu,
            Action::Stop,
            999,
            "pve",
            None,
            &no_params(),
            true,
        )
        .expect("task");
        assert_eq!(
            stop.outcome,
            Outcome::Fail("unable to find configuration file for VM 999 on node 'pve'".into())
        );
        assert_eq!(
            plan(
                GuestType::Qemu,
                Action::Reset,
                999,
                "pve",
                None,
                &no_params(),
                true
            ),
            Err("unable to find configuration file for VM 999 on node 'pve'".into())
        );
        assert_eq!(
            plan(
                GuestType::Lxc,
                Action::Shutdown,
                999,
                "pve",
                None,
                &no_params(),
                true
            ),
            Err("CT 999 not running".into())
        );
    }

    #[test]
    fn paused_vm_refuses_shutdown_unless_forced_and_ha_guests_use_ha_tasks() {
        let mut world = world();
        let vm = world.guests.get_mut(&100).expect("vm");
        vm.power = PowerState::Paused;
        let vm = vm.clone();
        assert_eq!(
            plan(
                GuestType::Qemu,
                Action::Shutdown,
                100,
                "pve",
                Some(&vm),
                &no_params(),
                true
            ),
            Err("VM is paused - cannot shutdown".into())
        );
        let forced: BTreeMap<String, RawValue> =
            [("node", "pve"), ("vmid", "100"), ("forceStop", "1")]
                .iter()
                .map(|(k, v)| (k.to_string(), RawValue::Text(v.to_string())))
                .collect();
        let specs = params::lifecycle(
            GuestType::Qemu,
            Action::Shutdown,
            PveVersion::parse("9.1.5").unwrap(),
        );
        let forced = validate(&specs, &forced).expect("valid");
        assert_eq!(
            plan(
                GuestType::Qemu,
                Action::Shutdown,
                100,
                "pve",
                Some(&vm),
                &forced,
                true
            )
            .expect("task")
            .outcome,
            Outcome::Ok(Effect::Stop)
        );
        let mut ha_vm = vm.clone();
        ha_vm.power = PowerState::Stopped;
        ha_vm.ha = Some(crate::world::HaState {
            request: "stopped".into(),
            crm: "stopped".into(),
        });
        let ha = plan(
            GuestType::Qemu,
            Action::Start,
            100,
            "pve",
            Some(&ha_vm),
            &no_params(),
            true,
        )
        .expect("task");
        assert_eq!(ha.task_type, "hastart");
        let schedule = schedule_lifecycle(&ha, 100, GuestType::Qemu, 0.0, 1.0, 4.0, None);
        assert_eq!(schedule.exitstatus.as_deref(), Some("OK"));
        assert!(matches!(
            schedule.effects.last(),
            Some((at, TaskEffect::HaSettle { start: true, .. })) if *at > 4.0
        ));
    }

    #[test]
    fn lifecycle_schedule_ends_with_task_lines() {
        let plan = Plan {
            task_type: "qmstop",
            outcome: Outcome::Ok(Effect::Stop),
        };
        let ok = schedule_lifecycle(&plan, 100, GuestType::Qemu, 10.0, 2.0, 8.0, None);
        assert_eq!(ok.end, Some(11.0));
        assert_eq!(ok.lines.last().map(|l| l.1.as_str()), Some("TASK OK"));
        let failing = TaskOverride {
            vmid: Some(100),
            action: Some("stop".into()),
            outcome: OverrideOutcome::Fail,
            error: Some("boom".into()),
        };
        assert!(failing.matches("qmstop", &[100]));
        assert!(!failing.matches("qmstart", &[100]));
        let failed =
            schedule_lifecycle(&plan, 100, GuestType::Qemu, 10.0, 2.0, 8.0, Some(&failing));
        assert_eq!(failed.exitstatus.as_deref(), Some("boom"));
        assert_eq!(
            failed.lines.last().map(|l| l.1.as_str()),
            Some("TASK ERROR: boom")
        );
        assert!(failed.effects.is_empty());
        let hanging = TaskOverride {
            outcome: OverrideOutcome::Hang,
            ..failing
        };
        let hung = schedule_lifecycle(&plan, 100, GuestType::Qemu, 10.0, 2.0, 8.0, Some(&hanging));
        assert_eq!(hung.end, None);
    }

    fn job(guests: Vec<VzdumpGuest>) -> VzdumpJob {
        VzdumpJob {
            node: "pve".into(),
            cluster: "pve".into(),
            storage: "local".into(),
            storage_shared: false,
            dump_dir: "/var/lib/vz/dump".into(),
            storage_error: None,
            mode: "snapshot".into(),
            compress: Some("zstd".into()),
            notes_template: Some("{{guestname}} on {{node}}".into()),
            protected: true,
            command_line: "vzdump 100 --storage local".into(),
            guests,
        }
    }

    fn vm100() -> VzdumpGuest {
        VzdumpGuest {
            vmid: 100,
            kind: Some(GuestType::Qemu),
            name: "home-assistant".into(),
            running: true,
            data: 32 * 1024 * 1024 * 1024,
        }
    }

    #[test]
    fn vzdump_log_has_progress_and_the_backup_appears_at_the_end() {
        let schedule = schedule_vzdump(&job(vec![vm100()]), 1_795_773_600.0, 5.0, None);
        let texts: Vec<&str> = schedule.lines.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            texts[0],
            "INFO: starting new backup job: vzdump 100 --storage local"
        );
        assert!(texts.contains(&"INFO: Starting Backup of VM 100 (qemu)"));
        assert!(texts
            .iter()
            .any(|t| t.starts_with("INFO: 100% (32.0 GiB of 32.0 GiB) in ")));
        assert!(texts
            .iter()
            .any(|t| t.starts_with("INFO:  ") && t.contains("% (")));
        assert!(texts
            .iter()
            .any(|t| t.starts_with("INFO: Finished Backup of VM 100 (")));
        assert_eq!(
            &texts[texts.len() - 2..],
            &["INFO: Backup job finished successfully", "TASK OK"]
        );
        // Lines are in time order and spread over the task's duration.
        assert!(schedule.lines.windows(2).all(|w| w[0].0 <= w[1].0));
        let (end_at, effect) = schedule.effects.last().expect("effect");
        match effect {
            TaskEffect::BackupEnd {
                volume: Some(volume),
                ..
            } => {
                assert_eq!(
                    volume.volid,
                    "local:backup/vzdump-qemu-100-2026_11_27-10_00_00.vma.zst"
                );
                assert_eq!(volume.notes.as_deref(), Some("home-assistant on pve"));
                assert!(volume.protected);
                assert_eq!(volume.format, "vma.zst");
            }
            other => panic!("unexpected effect {other:?}"),
        }
        assert!(*end_at <= schedule.end.expect("ends"));
    }

    #[test]
    fn vzdump_failure_of_one_guest_gives_job_errors() {
        let failing = TaskOverride {
            vmid: Some(100),
            action: Some("backup".into()),
            outcome: OverrideOutcome::Fail,
            error: None,
        };
        let schedule = schedule_vzdump(&job(vec![vm100()]), 0.0, 5.0, Some(&failing));
        assert_eq!(schedule.exitstatus.as_deref(), Some("job errors"));
        assert!(schedule
            .lines
            .iter()
            .any(|(_, t)| t.starts_with("ERROR: Backup of VM 100 failed - ")));
    }

    #[test]
    fn renders_sizes_like_proxmox() {
        assert_eq!(render_bytes(3.4 * 1024.0 * 1024.0 * 1024.0), "3.4 GiB");
        assert_eq!(render_bytes(512.0), "512 B");
        assert_eq!(render_duration(64), "1m 4s");
        assert_eq!(hms(65), "00:01:05");
    }
}
