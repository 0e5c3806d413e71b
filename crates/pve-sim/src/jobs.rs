//! Backup jobs (`jobs.cfg` entries of type `vzdump`), `GET /cluster/backup`,
//! `GET /cluster/backup-info/not-backed-up`, and running a job as pvescheduler does
//! (reference round 2 §15, §16): one vzdump task per node that has a selected guest,
//! started by `root@pam` with `job-id` and `quiet=1`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::access::Token;
use super::state::State;
use super::tasks::VzdumpJob;
use super::world::World;

/// One scheduled backup job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupJob {
    /// `backup-<8 hex>-<4 hex>`.
    pub id: String,
    #[serde(default = "default_schedule")]
    pub schedule: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Every guest (minus `exclude`).
    #[serde(default)]
    pub all: bool,
    /// `"100,101"` when not `all`.
    #[serde(default)]
    pub vmid: Option<String>,
    #[serde(default)]
    pub exclude: Option<String>,
    /// Only guests on this node.
    #[serde(default)]
    pub node: Option<String>,
    pub storage: String,
    #[serde(default = "default_mode")]
    pub mode: String,
}

fn default_schedule() -> String {
    "03:00".into()
}
fn default_mode() -> String {
    "snapshot".into()
}
fn yes() -> bool {
    true
}

fn vmid_list(text: Option<&str>) -> Vec<u32> {
    text.unwrap_or("")
        .split([',', ';', ' '])
        .filter_map(|v| v.parse().ok())
        .collect()
}

impl BackupJob {
    /// Does the job select this guest (wherever it runs)? Like `get_included_guests`:
    /// disabled jobs and node restrictions still count for coverage.
    pub fn selects(&self, vmid: u32) -> bool {
        if self.all {
            !vmid_list(self.exclude.as_deref()).contains(&vmid)
        } else {
            vmid_list(self.vmid.as_deref()).contains(&vmid)
        }
    }

    /// A row of `GET /cluster/backup`.
    fn row(&self, now: f64) -> Value {
        let mut row = Map::new();
        row.insert("id".into(), self.id.as_str().into());
        row.insert("type".into(), "vzdump".into());
        row.insert("schedule".into(), self.schedule.as_str().into());
        row.insert("enabled".into(), u64::from(self.enabled).into());
        row.insert("storage".into(), self.storage.as_str().into());
        row.insert("mode".into(), self.mode.as_str().into());
        if self.all {
            row.insert("all".into(), 1.into());
        }
        for (key, value) in [
            ("vmid", &self.vmid),
            ("exclude", &self.exclude),
            ("node", &self.node),
        ] {
            if let Some(value) = value {
                row.insert(key.into(), value.as_str().into());
            }
        }
        // The next whole day boundary plus the schedule's hour (a daily "HH:MM").
        let day = (now as u64 / 86_400 + 1) * 86_400;
        let (h, m) = self
            .schedule
            .split_once(':')
            .and_then(|(h, m)| Some((h.parse::<u64>().ok()?, m.parse::<u64>().ok()?)))
            .unwrap_or((3, 0));
        row.insert("next-run".into(), (day + h * 3600 + m * 60).into());
        Value::Object(row)
    }
}

/// The job every simulated world starts with: all guests into the first backup
/// storage, except the seed world's CT 101 (a guest in no job: the demo's problem case
/// for `backup_covered`).
pub fn default_jobs(world: &World) -> Vec<BackupJob> {
    let storage = world
        .storages
        .iter()
        .find(|s| s.supports("backup"))
        .map_or("local".to_string(), |s| s.id.clone());
    let seed = world.cluster_name.is_none() && world.guests.contains_key(&101);
    vec![BackupJob {
        id: "backup-5d7a9f1c-1a2b".into(),
        schedule: "03:00".into(),
        enabled: true,
        all: true,
        vmid: None,
        exclude: seed.then(|| "101".to_string()),
        node: None,
        storage,
        mode: "snapshot".into(),
    }]
}

/// `GET /cluster/backup` (the caller checked `Sys.Audit` on `/`).
pub fn list(state: &State, now: f64) -> Vec<Value> {
    state.backup_jobs.iter().map(|job| job.row(now)).collect()
}

/// `GET /cluster/backup-info/not-backed-up`: guests no job selects, filtered by
/// `VM.Audit`.
pub fn not_backed_up(state: &State, token: &Token) -> Vec<Value> {
    state
        .world
        .guests
        .values()
        .filter(|g| !g.template)
        .filter(|g| !state.backup_jobs.iter().any(|job| job.selects(g.vmid)))
        .filter(|g| token.has(&format!("/vms/{}", g.vmid), "VM.Audit"))
        .map(|g| json!({"vmid": g.vmid, "type": g.kind.as_str(), "name": g.name}))
        .collect()
}

/// Runs job `id` now as pvescheduler does; returns the UPIDs (one per node that has a
/// selected guest), or `None` for an unknown job.
pub fn run(state: &mut State, id: &str, now: f64) -> Option<Vec<String>> {
    let job = state.backup_jobs.iter().find(|j| j.id == id)?.clone();
    let nodes: Vec<String> = state
        .world
        .nodes
        .iter()
        .filter(|n| n.online)
        .filter(|n| job.node.as_deref().is_none_or(|only| only == n.name))
        .map(|n| n.name.clone())
        .collect();
    let mut upids = Vec::new();
    for node in nodes {
        let local: Vec<u32> = state
            .world
            .guests
            .values()
            .filter(|g| g.node == node && !g.template && job.selects(g.vmid))
            .map(|g| g.vmid)
            .collect();
        let Some(storage) = state
            .world
            .storage(&job.storage)
            .filter(|s| s.on_node(&node))
            .cloned()
        else {
            continue;
        };
        if local.is_empty() {
            continue;
        }
        let selection = if job.all {
            let mut s = String::from(" --all 1");
            if let Some(exclude) = &job.exclude {
                s.push_str(&format!(" --exclude {exclude}"));
            }
            s
        } else {
            format!(
                " {}",
                local
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        };
        let vzdump = VzdumpJob {
            node: node.clone(),
            cluster: state
                .world
                .cluster_name
                .clone()
                .unwrap_or_else(|| node.clone()),
            storage: job.storage.clone(),
            storage_shared: storage.shared,
            dump_dir: storage.dump_dir.clone(),
            storage_error: None,
            mode: job.mode.clone(),
            compress: Some("zstd".into()),
            notes_template: Some("{{guestname}}".into()),
            protected: false,
            command_line: format!(
                "vzdump{selection} --compress zstd --job-id {} --mode {} --notes-template '{{{{guestname}}}}' --quiet 1 --storage {}",
                job.id, job.mode, job.storage
            ),
            guests: Vec::new(),
        };
        upids.push(state.start_vzdump_task(vzdump, local, "root@pam", 180, now));
    }
    Some(upids)
}
