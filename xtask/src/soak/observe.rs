//! What the soak observes (every command it sent and every message about it) and how it
//! accounts for them at the end. Pure: no processes, no sockets, so it has unit tests.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

pub const BASE: &str = "pve2mqtt";
/// The simulator's generated cluster name, used as the topic id.
pub const CLUSTER: &str = "simcluster";
pub const FINAL_STATES: [&str; 3] = ["ok", "failed", "rejected"];
/// The bridge follows a lifecycle task for 15 minutes before giving up (the command
/// runner's deadline); a task the simulator hangs therefore has no final result within a soak.
pub const HUNG_TASK_DEADLINE: &str = "15 min";
/// The purpose of a command published while the bridge had no subscription.
pub const PROBE: &str = "no-session probe";

pub fn is_final(state: &str) -> bool {
    FINAL_STATES.contains(&state)
}

/// One message about a command on its guest's `…/task` topic.
#[derive(Clone, Debug, Serialize)]
pub struct Seen {
    /// Seconds since the soak started.
    pub t: f64,
    /// The `state` field (for `states`) or the whole payload text (for `finals`).
    pub value: String,
    /// The retain flag of the delivery: set only on copies the broker held at subscribe time.
    pub retain: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Command {
    pub id: String,
    pub vmid: u32,
    pub kind: String,
    pub action: String,
    pub sent_at: f64,
    /// Published with the retain flag (as users do by mistake; issue 9).
    pub retained: bool,
    pub acked: bool,
    /// `random`, or `fail`/`warnings`/`hang` (sent right after a task override), or [`PROBE`].
    pub purpose: String,
    pub states: Vec<Seen>,
    pub finals: Vec<Seen>,
    pub upid: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BrokerRestart {
    pub killed_at: f64,
    /// `SIGKILL` (a crash, persistence off) or `SIGTERM` (persistence on: the db is saved).
    pub signal: &'static str,
    pub up_at: Option<f64>,
    pub bridge_online_at: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BridgeRestart {
    pub sigterm_at: f64,
    pub exited_at: Option<f64>,
    pub exit_code: Option<i32>,
    pub started_at: Option<f64>,
    pub bridge_online_at: Option<f64>,
    pub rss_before_kb: Option<u64>,
    /// Final results the stopping bridge logged ("the bridge stopped while the task was
    /// running") and how many of them reached MQTT.
    pub stop_results_logged: usize,
    pub stop_results_published: usize,
    /// Commands without a final result at SIGTERM whose retained `…/task` still says
    /// accepted/running some seconds after the new bridge is online, their task long over.
    pub stuck_after_restart: Vec<String>,
}

/// Fed by the subscriber task, read by the soak, under one mutex.
#[derive(Default)]
pub struct Observer {
    pub commands: BTreeMap<String, Command>,
    pub bridge_state: Vec<(f64, String, bool)>,
    pub unknown_ids: Vec<String>,
    pub cleared_task_topics: u64,
    pub non_json: u64,
    pub task_messages: u64,
    pub regressions: Vec<String>,
    pub subscriber_connects: Vec<f64>,
}

impl Observer {
    pub fn on_message(&mut self, t: f64, topic: &str, payload: &[u8], retain: bool) {
        if topic == format!("{BASE}/bridge/state") {
            let value = String::from_utf8_lossy(payload).into_owned();
            self.bridge_state.push((t, value, retain));
            return;
        }
        if !topic.ends_with("/task") {
            return;
        }
        self.task_messages += 1;
        if payload.is_empty() {
            self.cleared_task_topics += 1; // a guest vanished: its retained topics cleared
            return;
        }
        let Ok(report) = serde_json::from_slice::<Value>(payload) else {
            self.non_json += 1;
            return;
        };
        let id = match report.get("id") {
            Some(Value::String(id)) => id.clone(),
            other => other.map(Value::to_string).unwrap_or_else(|| "None".into()),
        };
        let Some(command) = self.commands.get_mut(&id) else {
            self.unknown_ids.push(id);
            return;
        };
        let state = report
            .get("state")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if !is_final(&state) && !retain && command.finals.iter().any(|f| !f.retain) {
            self.regressions
                .push(format!("{}: '{state}' after a final result", command.id));
        }
        if let Some(upid) = report.get("upid").and_then(Value::as_str) {
            command.upid = Some(upid.to_string());
        }
        if is_final(&state) {
            let text = String::from_utf8_lossy(payload).into_owned();
            command.finals.push(Seen {
                t,
                value: text,
                retain,
            });
        }
        command.states.push(Seen {
            t,
            value: state,
            retain,
        });
    }

    /// When `online` was first seen on bridge/state after `since`.
    pub fn online_after(&self, since: f64) -> Option<f64> {
        self.bridge_state
            .iter()
            .find(|(t, value, _)| *t > since && value == "online")
            .map(|(t, _, _)| *t)
    }

    pub fn last_bridge_state(&self) -> Option<String> {
        self.bridge_state.last().map(|(_, value, _)| value.clone())
    }
}

/// Does the bridge's status say what the simulator's power state means (SPEC §3)?
pub fn same_power(sim_guest: &Value, bridge_status: Option<&str>) -> bool {
    let sim_status = sim_guest.get("status").and_then(Value::as_str);
    // A hibernated VM is `stopped` with lock `suspended`; the bridge calls it `suspended`.
    if sim_status == Some("stopped")
        && sim_guest.get("lock").and_then(Value::as_str) == Some("suspended")
    {
        return bridge_status == Some("suspended");
    }
    if sim_status.is_some() && sim_status == bridge_status {
        return true;
    }
    // A paused VM's QEMU process runs: /cluster/resources lists it `running`; the bridge
    // shows `paused` (from status/current) only for a while after its own command.
    sim_status == Some("paused") && matches!(bridge_status, Some("running" | "paused"))
}

/// The end-of-run accounting of every command.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Classified {
    pub sent: usize,
    pub acked: usize,
    pub not_acked: usize,
    pub with_final: usize,
    pub by_state: BTreeMap<String, usize>,
    pub retained_sent: usize,
    pub duplicates: Vec<String>,
    pub conflicting: Vec<String>,
    pub replays_after_restart: usize,
    pub missing_probe: Vec<String>,
    pub missing_broker_crash: Vec<String>,
    pub missing_bridge_restart: Vec<String>,
    pub missing_hung: Vec<String>,
    pub missing_unexplained: Vec<String>,
    pub unacked_answered: usize,
    pub fault_commands: BTreeMap<String, usize>,
    pub probes: usize,
}

/// Sorts every command into answered / duplicate / conflicting / missing-with-a-reason.
/// `hung` holds the UPIDs the simulator still runs.
pub fn classify<'a>(
    commands: impl IntoIterator<Item = &'a Command>,
    broker_restarts: &[BrokerRestart],
    bridge_restarts: &[BridgeRestart],
    hung: &BTreeSet<String>,
) -> Classified {
    // A restart is a span (stop .. up again): a broker stopped by SIGTERM still delivers
    // what it holds for a few milliseconds after the signal.
    let restarts: Vec<(f64, f64)> = broker_restarts
        .iter()
        .map(|r| (r.killed_at, r.up_at.unwrap_or(r.killed_at)))
        .chain(
            bridge_restarts
                .iter()
                .map(|r| (r.sigterm_at, r.started_at.unwrap_or(r.sigterm_at))),
        )
        .collect();
    let mut out = Classified::default();
    for c in commands {
        out.sent += 1;
        if c.retained {
            out.retained_sent += 1;
        }
        if c.purpose == PROBE {
            out.probes += 1;
        }
        if !c.acked {
            out.not_acked += 1;
            if !c.finals.is_empty() {
                out.unacked_answered += 1;
            }
            continue;
        }
        out.acked += 1;
        if let Some(first) = c.finals.first() {
            out.with_final += 1;
            let distinct: BTreeSet<&str> = c.finals.iter().map(|f| f.value.as_str()).collect();
            let state = serde_json::from_str::<Value>(&first.value)
                .ok()
                .and_then(|v| v.get("state").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_default();
            *out.by_state.entry(state.clone()).or_default() += 1;
            if c.purpose != "random" {
                *out.fault_commands
                    .entry(format!("{} -> {state}", c.purpose))
                    .or_default() += 1;
            }
            if distinct.len() > 1 {
                out.conflicting.push(c.id.clone());
            }
            let live: Vec<f64> = c.finals.iter().filter(|f| !f.retain).map(|f| f.t).collect();
            for pair in live.windows(2) {
                if restarts
                    .iter()
                    .any(|(down, up)| pair[0] <= *up && *down <= pair[1])
                {
                    out.replays_after_restart += 1;
                } else {
                    out.duplicates.push(c.id.clone());
                }
            }
            continue;
        }
        if c.purpose != "random" {
            *out.fault_commands
                .entry(format!("{} -> (no final)", c.purpose))
                .or_default() += 1;
        }
        let last = c.states.last().map(|s| s.value.as_str()).unwrap_or("None");
        let entry = format!(
            "{} {} {}/{} sent {:.1}s last={last}",
            c.id, c.action, c.kind, c.vmid, c.sent_at
        );
        let bridge_restart = bridge_restarts
            .iter()
            .any(|r| (0.0..=30.0).contains(&(r.sigterm_at - c.sent_at)));
        let crash = broker_restarts
            .iter()
            .any(|r| (0.0..=0.5).contains(&(r.killed_at - c.sent_at)));
        if c.purpose == PROBE {
            out.missing_probe.push(entry);
        } else if crash && c.states.is_empty() {
            out.missing_broker_crash.push(entry);
        } else if c.upid.as_ref().is_some_and(|u| hung.contains(u)) {
            out.missing_hung.push(entry);
        } else if bridge_restart {
            out.missing_bridge_restart.push(entry);
        } else {
            out.missing_unexplained.push(entry);
        }
    }
    out
}

#[cfg(test)]
mod tests;
