//! Replication jobs (reference `pve-api-round2.md` §9) as the simulator keeps them, and
//! their `/_sim` inputs; the endpoints and controls are in [`super::health`].
//!
//! A job's state is a function of time: it runs on its schedule (`*/N` minutes) and
//! succeeds, or fails from the moment `/_sim/replication/{id}` gave it an error.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::world::{GuestType, World};

/// One replication job (`replication.cfg`) and what the simulator makes of it.
#[derive(Clone, Debug)]
pub struct ReplicationJob {
    pub guest: u32,
    pub jobnum: u32,
    pub target: String,
    /// Minutes between runs (`*/N`); `None` writes no `schedule` (the default `*/15`).
    pub every_minutes: Option<u32>,
    pub comment: Option<String>,
    pub disabled: bool,
    /// Failing since this time with this error (`/_sim/replication/{id}`).
    pub failing: Option<(f64, String)>,
    /// When the job was created: it has never synced before its first run.
    pub created: f64,
}

impl ReplicationJob {
    pub fn new(guest: u32, target: &str, created: f64) -> Self {
        ReplicationJob {
            guest,
            jobnum: 0,
            target: target.to_string(),
            every_minutes: None,
            comment: None,
            disabled: false,
            failing: None,
            created,
        }
    }

    pub fn id(&self) -> String {
        format!("{}-{}", self.guest, self.jobnum)
    }

    pub(crate) fn period(&self) -> f64 {
        f64::from(self.every_minutes.unwrap_or(15).max(1)) * 60.0
    }

    /// The config row (`/cluster/replication`).
    pub(crate) fn config_row(&self, world: &World) -> Map<String, Value> {
        let mut row = Map::new();
        row.insert("id".into(), json!(self.id()));
        row.insert("type".into(), json!("local"));
        row.insert("guest".into(), json!(self.guest));
        row.insert("jobnum".into(), json!(self.jobnum));
        row.insert("target".into(), json!(self.target));
        if let Some(minutes) = self.every_minutes {
            row.insert("schedule".into(), json!(format!("*/{minutes}")));
        }
        if let Some(comment) = &self.comment {
            row.insert("comment".into(), json!(comment));
        }
        if self.disabled {
            row.insert("disable".into(), json!(1));
        }
        if let Some(guest) = world.guests.get(&self.guest) {
            row.insert("source".into(), json!(guest.node));
        }
        row
    }

    /// The status row (`/nodes/{node}/replication`) at `now`.
    pub(crate) fn status_row(
        &self,
        world: &World,
        kind: GuestType,
        now: f64,
    ) -> Map<String, Value> {
        let mut row = self.config_row(world);
        row.insert("vmtype".into(), json!(kind.as_str()));
        let period = self.period();
        // The last scheduled run at or before `now`, on the schedule's grid.
        let last_run = (now / period).floor() * period;
        let ran = last_run >= self.created && !self.disabled;
        let target_online = world.node_online(&self.target);
        match (&self.failing, ran) {
            (_, false) => {
                row.insert("last_sync".into(), json!(0));
                row.insert("last_try".into(), json!(0));
                row.insert("fail_count".into(), json!(0));
                let next = if self.disabled {
                    0
                } else {
                    (last_run + period) as u64
                };
                row.insert("next_sync".into(), json!(next));
            }
            (Some((since, error)), true) => {
                // Every run from `since` on failed; the one before was the last good one.
                let failures = ((now - since).max(0.0) / period).floor() as u64 + 1;
                let last_try = (since + (failures - 1) as f64 * period) as u64;
                let last_good = since - period;
                let last_sync = if last_good >= self.created {
                    last_good as u64
                } else {
                    0
                };
                let backoff = 60 * if failures <= 3 { 5 * failures } else { 30 };
                row.insert("last_sync".into(), json!(last_sync));
                row.insert("last_try".into(), json!(last_try));
                row.insert("fail_count".into(), json!(failures));
                row.insert("error".into(), json!(error));
                row.insert("duration".into(), json!(1.072));
                row.insert(
                    "next_sync".into(),
                    json!(if target_online { last_try + backoff } else { 0 }),
                );
            }
            (_, true) => {
                row.insert("last_sync".into(), json!(last_run as u64));
                row.insert("last_try".into(), json!(last_run as u64));
                row.insert("fail_count".into(), json!(0));
                row.insert("duration".into(), json!(4.213));
                row.insert("next_sync".into(), json!((last_run + period) as u64));
            }
        }
        row
    }
}

/// The error text of a job whose target's ZFS snapshot failed (reference §9 example).
pub fn snapshot_failure(job: &ReplicationJob, at: u64) -> String {
    format!(
        "command 'zfs snapshot rpool/data/vm-{vmid}-disk-0@__replicate_{id}_{at}__' failed: exit code 1",
        vmid = job.guest,
        id = job.id()
    )
}

/// `POST /_sim/replication`: a new job.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewReplicationJob {
    pub guest: u32,
    pub target: String,
    #[serde(default)]
    pub jobnum: u32,
    /// Minutes between runs (`*/N`).
    pub every_minutes: Option<u32>,
    pub comment: Option<String>,
}

/// `POST /_sim/replication/{id}`: make a job fail (with this error, or the typical
/// snapshot failure) or succeed again.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationPatch {
    pub failing: bool,
    pub error: Option<String>,
}
