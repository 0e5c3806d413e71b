//! Guest snapshots (round-2 reference §13): the list with its `current` pseudo-entry,
//! `POST …/snapshot`, `POST …/snapshot/{name}/rollback` and `DELETE …/snapshot/{name}`.
//!
//! Like the lifecycle actions, a request is first planned ([`plan`]: a synchronous 500,
//! or a task that fails inside, or a task with effects), then laid out in time
//! ([`schedule`]). The guest is locked while the task runs (`snapshot`, `rollback`,
//! `snapshot-delete`), so other operations fail with `VM is locked (snapshot)`; a new
//! snapshot shows `snapstate: prepare` until its task ends, a deleted one `delete`.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::tasks::{Schedule, TaskEffect, TaskOverride};
use super::world::{Guest, GuestType, World};

/// One snapshot of a guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub name: String,
    pub snaptime: u64,
    pub description: String,
    pub parent: Option<String>,
    /// qemu: RAM saved with the snapshot.
    pub vmstate: bool,
    /// `prepare` while being made, `delete` while being removed (or left by a failure).
    pub snapstate: Option<String>,
}

/// A guest's snapshots and which one the current state descends from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestSnapshots {
    pub list: Vec<Snapshot>,
    /// The `parent` of the current state (the `current` pseudo-entry).
    pub current_parent: Option<String>,
}

impl GuestSnapshots {
    pub fn get(&self, name: &str) -> Option<&Snapshot> {
        self.list.iter().find(|s| s.name == name)
    }
}

/// The snapshot requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapAction {
    Create,
    Rollback,
    Delete,
}

impl SnapAction {
    pub fn task_type(self, kind: GuestType) -> &'static str {
        match (self, kind) {
            (SnapAction::Create, GuestType::Qemu) => "qmsnapshot",
            (SnapAction::Create, GuestType::Lxc) => "vzsnapshot",
            (SnapAction::Rollback, GuestType::Qemu) => "qmrollback",
            (SnapAction::Rollback, GuestType::Lxc) => "vzrollback",
            (SnapAction::Delete, GuestType::Qemu) => "qmdelsnapshot",
            (SnapAction::Delete, GuestType::Lxc) => "vzdelsnapshot",
        }
    }

    /// The lock the guest holds while the task runs.
    fn lock(self) -> &'static str {
        match self {
            SnapAction::Create => "snapshot",
            SnapAction::Rollback => "rollback",
            SnapAction::Delete => "snapshot-delete",
        }
    }
}

/// What a snapshot task does to the world, at its start and at its end.
#[derive(Clone, Debug)]
pub enum SnapEffect {
    /// The task starts: lock the guest; a new snapshot appears in `prepare`, a deleted
    /// one turns `delete`; a rollback stops a running guest first.
    Begin {
        vmid: u32,
        action: SnapAction,
        snapshot: Box<Snapshot>,
    },
    /// The task ends well: commit, unlock; a rollback may start the guest.
    End {
        vmid: u32,
        action: SnapAction,
        name: String,
        start: bool,
    },
}

/// A planned snapshot task: its type, and the error it fails with (if it does).
#[derive(Clone, Debug)]
pub struct SnapPlan {
    pub task_type: &'static str,
    pub failure: Option<String>,
    /// The snapshot created (create) or the one acted on.
    pub snapshot: Snapshot,
    /// Start the guest after the rollback.
    pub start: bool,
    /// RAM is saved: the task takes longer.
    pub vmstate: bool,
}

/// Decides a snapshot request: `Err` is a synchronous HTTP 500 with that message.
/// `guest` is the guest with this vmid and type on this node.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    world: &World,
    kind: GuestType,
    action: SnapAction,
    vmid: u32,
    node: &str,
    guest: Option<&Guest>,
    name: &str,
    (description, vmstate, start): (Option<&str>, bool, bool),
    now: u64,
) -> Result<SnapPlan, String> {
    if action == SnapAction::Create {
        let reserved: &[&str] = match kind {
            GuestType::Qemu => &["current", "pending"],
            GuestType::Lxc => &["current", "vzdump"],
        };
        if reserved.contains(&name) {
            return Err(format!(
                "unable to use snapshot name '{name}' (reserved name)"
            ));
        }
    }
    let task_type = action.task_type(kind);
    // Only a running VM has RAM to save: a stopped VM's snapshot gets `vmstate: 0`.
    let vmstate =
        vmstate && kind == GuestType::Qemu && guest.is_some_and(|g| g.power.process_running());
    let existing = world.snapshots.get(&vmid);
    let current_parent = existing.and_then(|s| s.current_parent.clone());
    let mut plan = SnapPlan {
        task_type,
        failure: None,
        snapshot: Snapshot {
            name: name.to_string(),
            snaptime: now,
            description: description.unwrap_or("").to_string(),
            parent: current_parent,
            vmstate,
            snapstate: None,
        },
        start,
        vmstate,
    };
    let Some(guest) = guest else {
        plan.failure = Some(format!(
            "Configuration file 'nodes/{node}/{}/{vmid}.conf' does not exist",
            kind.config_dir()
        ));
        return Ok(plan);
    };
    let found = existing.and_then(|s| s.get(name));
    plan.failure = if guest.template {
        Some(
            match action {
                SnapAction::Create => "you can't take a snapshot if it's a template",
                SnapAction::Rollback => "you can't rollback if vm is a template",
                SnapAction::Delete => "you can't delete a snapshot if vm is a template",
            }
            .to_string(),
        )
    } else if let Some(lock) = &guest.lock {
        Some(format!("{} is locked ({lock})", kind.label()))
    } else {
        match (action, found) {
            (SnapAction::Create, Some(_)) => Some(format!("snapshot name '{name}' already used")),
            (SnapAction::Create, None) => None,
            (_, None) => Some(format!("snapshot '{name}' does not exist")),
            (SnapAction::Rollback, Some(snap)) => snap.snapstate.as_ref().map(|state| {
                format!("unable to rollback to incomplete snapshot (snapstate = {state})")
            }),
            (SnapAction::Delete, Some(_)) => None,
        }
    };
    if action != SnapAction::Create {
        if let Some(snap) = found {
            plan.snapshot = snap.clone();
            // A qemu snapshot with RAM resumes running after the rollback.
            plan.start = start || (kind == GuestType::Qemu && snap.vmstate);
        }
    }
    Ok(plan)
}

/// Lays a planned snapshot task out from `t0`.
pub fn schedule(
    plan: &SnapPlan,
    action: SnapAction,
    guest: Option<&Guest>,
    vmid: u32,
    t0: f64,
    task_duration: f64,
    override_: Option<&TaskOverride>,
) -> Schedule {
    use super::tasks::OverrideOutcome;
    let mut schedule = Schedule::default();
    let factor = match action {
        SnapAction::Create if plan.vmstate => 2.0,
        SnapAction::Delete => 0.5,
        _ => 1.0,
    };
    let end = t0 + task_duration * factor;
    if let Some(o) = override_ {
        match o.outcome {
            OverrideOutcome::Hang => return schedule,
            OverrideOutcome::Fail => {
                let error = o
                    .error
                    .clone()
                    .unwrap_or_else(|| "snapshot feature is not available".into());
                schedule.finish(end, error.replace('\n', " "));
                return schedule;
            }
            OverrideOutcome::Warnings => {}
        }
    }
    if let Some(error) = &plan.failure {
        schedule.finish(t0 + task_duration * 0.25, error.clone());
        return schedule;
    }
    let name = &plan.snapshot.name;
    let running = guest.is_some_and(|g| g.power.process_running());
    let kind = guest.map_or(GuestType::Qemu, |g| g.kind);
    let disk = match kind {
        GuestType::Qemu => format!("snapshotting 'drive-scsi0' (local-lvm:vm-{vmid}-disk-0)"),
        GuestType::Lxc => format!("snapshotting 'rootfs' (local-lvm:vm-{vmid}-disk-0)"),
    };
    let mut lines: Vec<String> = Vec::new();
    match action {
        SnapAction::Create => {
            if plan.vmstate && running {
                lines.push("saving VM state and RAM using storage 'local-lvm'".into());
                lines.push("completed saving the VM state in 2s, saved 1.02 GiB".into());
            }
            lines.push(disk);
            if kind == GuestType::Lxc {
                lines.push(format!(
                    "  Logical volume \"snap_vm-{vmid}-disk-0_{name}\" created."
                ));
            }
        }
        SnapAction::Rollback => {
            lines.push(format!("rollback to snapshot '{name}'"));
            if running {
                lines.push(format!("stopping {}", kind.label()));
            }
            lines.push(format!(
                "  Logical volume \"vm-{vmid}-disk-0\" successfully removed."
            ));
            if plan.start {
                lines.push(format!("starting {}", kind.label()));
            }
        }
        SnapAction::Delete => {
            lines.push(format!(
                "  Logical volume \"snap_vm-{vmid}-disk-0_{name}\" successfully removed."
            ));
        }
    }
    let step = (end - t0) / (lines.len() as f64 + 1.0);
    for (i, line) in lines.into_iter().enumerate() {
        schedule.lines.push((t0 + step * (i as f64 + 0.5), line));
    }
    schedule.effects.push((
        t0,
        TaskEffect::Snapshot(SnapEffect::Begin {
            vmid,
            action,
            snapshot: Box::new(plan.snapshot.clone()),
        }),
    ));
    schedule.effects.push((
        end,
        TaskEffect::Snapshot(SnapEffect::End {
            vmid,
            action,
            name: name.clone(),
            start: plan.start,
        }),
    ));
    schedule.finish(end, "OK".into());
    schedule
}

/// Applies a snapshot task's effect to the world; `pid` is for a guest started.
pub fn apply(world: &mut World, effect: SnapEffect, at: f64, pid: u32) {
    match effect {
        SnapEffect::Begin {
            vmid,
            action,
            snapshot,
        } => {
            let Some(guest) = world.guests.get_mut(&vmid) else {
                return;
            };
            guest.lock = Some(action.lock().into());
            if action == SnapAction::Rollback && guest.power.process_running() {
                // `__snapshot_rollback_vm_stop`: a hard stop.
                guest.stop();
            }
            let snaps = world.snapshots.entry(vmid).or_default();
            match action {
                SnapAction::Create => {
                    let mut snapshot = *snapshot;
                    snapshot.snapstate = Some("prepare".into());
                    snaps.list.push(snapshot);
                }
                SnapAction::Delete => {
                    if let Some(s) = snaps.list.iter_mut().find(|s| s.name == snapshot.name) {
                        s.snapstate = Some("delete".into());
                    }
                }
                SnapAction::Rollback => {}
            }
        }
        SnapEffect::End {
            vmid,
            action,
            name,
            start,
        } => {
            let Some(guest) = world.guests.get_mut(&vmid) else {
                return;
            };
            if guest.lock.as_deref() == Some(action.lock()) {
                guest.lock = None;
            }
            if action == SnapAction::Rollback && start && !guest.power.process_running() {
                guest.start_at(at, pid);
            }
            let snaps = world.snapshots.entry(vmid).or_default();
            match action {
                SnapAction::Create => {
                    if let Some(s) = snaps.list.iter_mut().find(|s| s.name == name) {
                        s.snapstate = None;
                    }
                    snaps.current_parent = Some(name);
                }
                SnapAction::Rollback => snaps.current_parent = Some(name),
                SnapAction::Delete => {
                    let Some(i) = snaps.list.iter().position(|s| s.name == name) else {
                        return;
                    };
                    let gone = snaps.list.remove(i);
                    for child in &mut snaps.list {
                        if child.parent.as_deref() == Some(name.as_str()) {
                            child.parent = gone.parent.clone();
                        }
                    }
                    if snaps.current_parent.as_deref() == Some(name.as_str()) {
                        snaps.current_parent = gone.parent;
                    }
                }
            }
            if snaps.list.is_empty() && snaps.current_parent.is_none() {
                world.snapshots.remove(&vmid);
            }
        }
    }
}

/// A stable stand-in for Perl's hash order: rows come in no particular order, and
/// clients must build the tree from `parent`.
fn hash_order(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `GET …/snapshot`: the snapshots in hash order, then `current`.
pub fn render_list(world: &World, guest: &Guest) -> Vec<Value> {
    let empty = GuestSnapshots::default();
    let snaps = world.snapshots.get(&guest.vmid).unwrap_or(&empty);
    let mut list: Vec<&Snapshot> = snaps.list.iter().collect();
    list.sort_by_key(|s| hash_order(&s.name));
    let mut rows: Vec<Value> = list
        .into_iter()
        .map(|s| {
            let mut row = Map::new();
            row.insert("name".into(), json!(s.name));
            row.insert("snaptime".into(), json!(s.snaptime));
            row.insert("description".into(), json!(s.description));
            if let Some(parent) = &s.parent {
                row.insert("parent".into(), json!(parent));
            }
            if let Some(state) = &s.snapstate {
                row.insert("snapstate".into(), json!(state));
            }
            if guest.kind == GuestType::Qemu {
                row.insert("vmstate".into(), json!(u8::from(s.vmstate)));
            }
            Value::Object(row)
        })
        .collect();
    let mut current = Map::new();
    current.insert("name".into(), json!("current"));
    current.insert("description".into(), json!("You are here!"));
    current.insert(
        "running".into(),
        json!(u8::from(guest.power.process_running())),
    );
    current.insert("digest".into(), json!(digest(guest, snaps)));
    if let Some(parent) = &snaps.current_parent {
        current.insert("parent".into(), json!(parent));
    }
    rows.push(Value::Object(current));
    rows
}

/// A 40-hex-digit stand-in for the config's SHA-1.
fn digest(guest: &Guest, snaps: &GuestSnapshots) -> String {
    let seed = snaps
        .list
        .iter()
        .fold(u64::from(guest.vmid), |h, s| h ^ hash_order(&s.name));
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..20).map(|_| format!("{:02x}", rng.u8(..))).collect()
}

/// The demo world's snapshots: VM 100 has two in a chain (the newer with RAM), CT 101 one.
pub fn seed(now: f64) -> BTreeMap<u32, GuestSnapshots> {
    let now = now as u64;
    let vm = GuestSnapshots {
        list: vec![
            Snapshot {
                name: "before-upgrade".into(),
                snaptime: now.saturating_sub(30 * 86_400),
                description: "Home Assistant before the 2026.10 upgrade".into(),
                parent: None,
                vmstate: false,
                snapstate: None,
            },
            Snapshot {
                name: "ha-2026-11".into(),
                snaptime: now.saturating_sub(5 * 86_400 + 7_200),
                description: String::new(),
                parent: Some("before-upgrade".into()),
                vmstate: true,
                snapstate: None,
            },
        ],
        current_parent: Some("ha-2026-11".into()),
    };
    let ct = GuestSnapshots {
        list: vec![Snapshot {
            name: "clean-install".into(),
            snaptime: now.saturating_sub(60 * 86_400),
            description: "fresh mosquitto".into(),
            parent: None,
            vmstate: false,
            snapstate: None,
        }],
        current_parent: Some("clean-install".into()),
    };
    BTreeMap::from([(100, vm), (101, ct)])
}

/// A generated world's snapshots: one `weekly` snapshot on every seventh guest.
pub fn generated(world: &World, now: f64) -> BTreeMap<u32, GuestSnapshots> {
    world
        .guests
        .values()
        .filter(|g| g.vmid % 7 == 0 && !g.template)
        .map(|g| {
            let snap = Snapshot {
                name: "weekly".into(),
                snaptime: (now as u64).saturating_sub(86_400 + u64::from(g.vmid % 86_400)),
                description: String::new(),
                parent: None,
                vmstate: false,
                snapstate: None,
            };
            (
                g.vmid,
                GuestSnapshots {
                    list: vec![snap],
                    current_parent: Some("weekly".into()),
                },
            )
        })
        .collect()
}

/// The snapshot routes, after permission, proxy and parameter checks.
pub(crate) fn handle(
    state: &mut super::state::State,
    (node, kind): (&str, GuestType),
    action: Option<SnapAction>,
    params: &super::params::Params,
    token: &super::access::Token,
    now: f64,
) -> Result<super::respond::Reply, super::respond::ApiError> {
    use super::access::permission_denied;
    use super::respond::{ApiError, Reply};
    let vmid = params
        .int("vmid")
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| ApiError::param("vmid", "property is missing and it is not optional"))?;
    let guest = state.world.guest_on(vmid, kind, node).cloned();
    let Some(action) = action else {
        let guest = guest.ok_or_else(|| {
            ApiError::server(format!(
                "Configuration file 'nodes/{node}/{}/{vmid}.conf' does not exist",
                kind.config_dir()
            ))
        })?;
        return Ok(Reply::data(Value::Array(render_list(&state.world, &guest))));
    };
    let start = params.flag("start");
    if action == SnapAction::Rollback
        && start
        && kind == GuestType::Qemu
        && !token.has(&format!("/vms/{vmid}"), "VM.PowerMgmt")
    {
        return Err(ApiError::forbidden(permission_denied(
            &format!("/vms/{vmid}"),
            &["VM.PowerMgmt"],
        )));
    }
    let name = params.str("snapname").unwrap_or_default().to_string();
    let plan = plan(
        &state.world,
        kind,
        action,
        vmid,
        node,
        guest.as_ref(),
        &name,
        (params.str("description"), params.flag("vmstate"), start),
        now as u64,
    )
    .map_err(ApiError::server)?;
    let upid = state.start_task(
        (node, plan.task_type, vmid),
        &token.full_id,
        now,
        |override_, duration| {
            schedule(
                &plan,
                action,
                guest.as_ref(),
                vmid,
                now,
                duration,
                override_,
            )
        },
    );
    Ok(Reply::data(Value::String(upid)))
}
