//! Node power (reference `pve-api-round2.md` §10): `POST /nodes/{n}/status`
//! (`command=reboot|shutdown`: `null` at once, the node drops off a moment later, a
//! reboot comes back), the bulk `startall`/`stopall`/`suspendall` (a task with an empty
//! id whose sub-tasks are the ordinary lifecycle tasks; their failures only warn), and
//! `wakeonlan` (runs on the node the request reaches, the first node here).
//!
//! Simplifications: every guest counts as `onboot=1`; sub-tasks run in parallel (no
//! `startup` order groups or `up=` delays); `max-workers` is accepted and ignored.

use std::collections::BTreeMap;

use serde_json::Value;

use super::access::{permission_denied, Token};
use super::params::{self, Action, Kind, Params, RawValue, Spec};
use super::respond::{ApiError, Reply};
use super::state::State;
use super::tasks::{self, Schedule};
use super::world::GuestType;

/// Node power changes waiting for their moment, applied by [`State::advance`].
#[derive(Clone, Debug, Default)]
pub struct NodePower {
    /// (when, node, online afterwards), in no particular order.
    pending: Vec<(f64, String, bool)>,
}

/// The bulk actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bulk {
    Start,
    Stop,
    Suspend,
}

impl Bulk {
    pub fn parse(text: &str) -> Option<Bulk> {
        match text {
            "startall" => Some(Bulk::Start),
            "stopall" => Some(Bulk::Stop),
            "suspendall" => Some(Bulk::Suspend),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Bulk::Start => "startall",
            Bulk::Stop => "stopall",
            Bulk::Suspend => "suspendall",
        }
    }
}

const fn spec(name: &'static str, kind: Kind, optional: bool) -> Spec {
    Spec {
        name,
        kind,
        optional,
    }
}

const NODE: Spec = spec("node", Kind::Node, false);

/// The schema of `POST /nodes/{node}/status`.
pub fn status_specs() -> Vec<Spec> {
    vec![
        NODE,
        spec("command", Kind::Enum(&["reboot", "shutdown"]), false),
    ]
}

/// The schema of the bulk endpoints.
pub fn bulk_specs(bulk: Bulk) -> Vec<Spec> {
    let workers = spec(
        "max-workers",
        Kind::Int {
            min: Some(1),
            max: Some(64),
        },
        true,
    );
    let vms = spec("vms", Kind::VmidList, true);
    match bulk {
        Bulk::Start => vec![NODE, spec("force", Kind::Bool, true), vms, workers],
        Bulk::Stop => vec![
            NODE,
            spec("force-stop", Kind::Bool, true),
            spec(
                "timeout",
                Kind::Int {
                    min: Some(0),
                    max: Some(7200),
                },
                true,
            ),
            vms,
            workers,
        ],
        Bulk::Suspend => vec![NODE, vms, workers],
    }
}

/// The schema of `POST /nodes/{node}/wakeonlan`.
pub fn wakeonlan_specs() -> Vec<Spec> {
    vec![NODE]
}

/// The MAC of a node's `wakeonlan` setting (every simulated node has one).
pub fn mac_of(nodeid: u32) -> String {
    format!(
        "52:54:00:00:{:02x}:{:02x}",
        (nodeid >> 8) & 0xff,
        nodeid & 0xff
    )
}

fn vms_param(params: &Params) -> Option<Vec<u32>> {
    params.str("vms").map(|text| {
        text.split([',', ';', ' '])
            .filter_map(|p| p.trim().parse().ok())
            .collect()
    })
}

impl State {
    /// Applies due node power changes: a node going down stops its guests (the host's
    /// shutdown runs `stopall`); a node coming back has a new boot time.
    pub(crate) fn advance_node_power(&mut self, now: f64) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.node_power.pending)
            .into_iter()
            .partition(|(at, _, _)| *at <= now);
        self.node_power.pending = later;
        for (at, node, online) in due {
            if let Some(entry) = self.world.node_mut(&node) {
                entry.online = online;
                if online {
                    entry.boot_time = at;
                }
            }
            if !online {
                for guest in self.world.guests.values_mut().filter(|g| g.node == node) {
                    if guest.power.process_running() {
                        guest.stop();
                    }
                }
            }
        }
    }

    /// `POST /nodes/{node}/status`: the node goes down after a moment (the real one
    /// sleeps 2 s); a reboot brings it back later. No task: `null`.
    pub(crate) fn node_command(
        &mut self,
        node: &str,
        params: &Params,
        now: f64,
    ) -> Result<Reply, ApiError> {
        let step = self.config.task_duration.as_secs_f64();
        let command = params.str("command").unwrap_or_default();
        self.node_power
            .pending
            .push((now + step, node.to_string(), false));
        if command == "reboot" {
            self.node_power
                .pending
                .push((now + step * 6.0, node.to_string(), true));
        }
        Ok(Reply::data(Value::Null))
    }

    /// `POST /nodes/{node}/wakeonlan`: runs on the node the request reaches (the first
    /// node, `local` in `/cluster/status`); the target comes online a moment later if it
    /// was off. Answers the MAC.
    pub(crate) fn wake_on_lan(&mut self, target: &str, now: f64) -> Result<Reply, ApiError> {
        let local = self.world.nodes.first().map(|n| n.name.clone());
        if local.as_deref() == Some(target) || target == "localhost" {
            return Err(ApiError::server(format!(
                "'{target}' is local node, cannot wake my self!"
            )));
        }
        let Some(node) = self.world.node(target) else {
            return Err(ApiError::server(format!("no such cluster node '{target}'")));
        };
        let mac = mac_of(node.nodeid);
        if !node.online {
            let step = self.config.task_duration.as_secs_f64();
            self.node_power
                .pending
                .push((now + step * 3.0, target.to_string(), true));
        }
        Ok(Reply::data(Value::String(mac)))
    }

    /// `POST /nodes/{node}/{startall|stopall|suspendall}`: privileges checked inside (as
    /// Proxmox does, `user => 'all'`), then one task of type `startall`/… with an empty
    /// id whose sub-tasks are the guests' lifecycle tasks.
    pub(crate) fn bulk_power(
        &mut self,
        node: &str,
        bulk: Bulk,
        params: &Params,
        token: &Token,
        now: f64,
    ) -> Result<Reply, ApiError> {
        let vms = vms_param(params);
        let root_privs: &[&str] = match bulk {
            Bulk::Suspend => &["VM.PowerMgmt", "VM.Config.Disk"],
            _ => &["VM.PowerMgmt"],
        };
        if !root_privs.iter().all(|p| token.has("/", p)) {
            match &vms {
                None => {
                    return Err(ApiError::forbidden(format!(
                        "Permission check failed (/, {})",
                        root_privs.join(" && ")
                    )))
                }
                Some(list) => {
                    if let Some(denied) = list
                        .iter()
                        .find(|v| !token.has(&format!("/vms/{v}"), "VM.PowerMgmt"))
                    {
                        return Err(ApiError::forbidden(permission_denied(
                            &format!("/vms/{denied}"),
                            &["VM.PowerMgmt"],
                        )));
                    }
                }
            }
        }
        let force = params.bool("force").unwrap_or(false);
        let force_stop = params.bool("force-stop").unwrap_or(true);
        let timeout = params.int("timeout").unwrap_or(180);
        let mut guests: Vec<(u32, GuestType, bool)> = self
            .world
            .guests
            .values()
            .filter(|g| g.node == node && !g.template)
            .filter(|g| match &vms {
                Some(list) => list.contains(&g.vmid),
                // HA-managed guests are skipped unless named.
                None => g.ha.is_none(),
            })
            .map(|g| (g.vmid, g.kind, g.power.process_running()))
            .collect();
        guests.sort_by_key(|(vmid, _, _)| *vmid);
        if bulk != Bulk::Start {
            guests.reverse();
        }
        let _ = force; // every simulated guest is `onboot=1`: force changes nothing
        let user = token.full_id.clone();
        let mut lines: Vec<(f64, String)> = Vec::new();
        let mut end = now + 0.05;
        let mut warnings = 0;
        let mut hangs = false;
        if bulk == Bulk::Start {
            lines.push((now, "waiting for quorum ...".into()));
            lines.push((now, "got quorum".into()));
        }
        for (vmid, kind, running) in guests {
            let label = kind.label();
            let (action, raw): (Action, BTreeMap<String, RawValue>) = match bulk {
                Bulk::Start if running => continue,
                Bulk::Start => {
                    lines.push((now, format!("Starting {label} {vmid}")));
                    (Action::Start, BTreeMap::new())
                }
                Bulk::Stop if !running => continue,
                Bulk::Stop => {
                    lines.push((
                        now,
                        format!("Stopping {label} {vmid} (timeout = {timeout} seconds)"),
                    ));
                    let mut raw = BTreeMap::new();
                    raw.insert(
                        "forceStop".into(),
                        RawValue::Text(if force_stop { "1" } else { "0" }.into()),
                    );
                    raw.insert("timeout".into(), RawValue::Text(timeout.to_string()));
                    (Action::Shutdown, raw)
                }
                Bulk::Suspend if kind == GuestType::Lxc => {
                    lines.push((
                        now,
                        format!("WARN: skipping {vmid}, only VMs can be suspended"),
                    ));
                    warnings += 1;
                    continue;
                }
                Bulk::Suspend if !running => {
                    lines.push((now, format!("VM {vmid} not running, skipping suspension")));
                    continue;
                }
                Bulk::Suspend => {
                    lines.push((now, format!("Suspending VM {vmid}")));
                    let mut raw = BTreeMap::new();
                    raw.insert("todisk".into(), RawValue::Text("1".into()));
                    (Action::Suspend, raw)
                }
            };
            let mut raw = raw;
            raw.insert("node".into(), RawValue::Text(node.to_string()));
            raw.insert("vmid".into(), RawValue::Text(vmid.to_string()));
            let checked = params::validate(&params::lifecycle(kind, action, self.version), &raw)
                .map_err(|e| format!("{e:?}"))
                .and_then(|sub| {
                    let guest = self.world.guests.get(&vmid).cloned();
                    tasks::plan(
                        kind,
                        action,
                        vmid,
                        node,
                        guest.as_ref(),
                        &sub,
                        self.world.quorate(),
                    )
                });
            match checked {
                Ok(plan) => {
                    let upid = self.start_lifecycle_task(node, kind, vmid, &plan, &user, now);
                    let index = self.task_by_upid.get(&upid).copied();
                    // A sub-task that never ends holds the bulk task too.
                    hangs |= index.is_some_and(|i| self.tasks[i].schedule.end.is_none());
                    if let Some(sub_end) = self
                        .task_by_upid
                        .get(&upid)
                        .and_then(|i| self.tasks[*i].schedule.end)
                    {
                        end = end.max(sub_end + 0.05);
                        if let Some(exit) = self
                            .task_by_upid
                            .get(&upid)
                            .and_then(|i| self.tasks[*i].schedule.exitstatus.clone())
                            .filter(|e| e != "OK" && !e.starts_with("WARNINGS: "))
                        {
                            if bulk == Bulk::Start {
                                lines.push((
                                    sub_end,
                                    format!("Starting {label} {vmid} failed: {exit}"),
                                ));
                            }
                        }
                    }
                }
                Err(message) => {
                    let verb = match bulk {
                        Bulk::Start => "Starting",
                        Bulk::Stop => "Stopping",
                        Bulk::Suspend => "Suspending",
                    };
                    lines.push((
                        now,
                        format!("WARN: {verb} {label} {vmid} failed: {message}"),
                    ));
                    warnings += 1;
                }
            }
        }
        let mut schedule = Schedule {
            lines,
            ..Schedule::default()
        };
        let exit = if warnings > 0 {
            format!("WARNINGS: {warnings}")
        } else {
            "OK".to_string()
        };
        if !hangs {
            schedule.finish(end, exit);
        }
        let upid = self.new_upid(node, bulk.as_str(), "", &user, now);
        let index = self.register_task(upid, now, schedule);
        Ok(Reply::data(Value::String(
            self.tasks[index].upid_text.clone(),
        )))
    }
}
