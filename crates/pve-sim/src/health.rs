//! Cluster health (issue 11): Ceph status and replication jobs, as the real endpoints
//! answer them (reference `pve-api-round2.md` §7 and §9), and their `/_sim` controls.
//!
//! - `GET /cluster/ceph/status` (`Sys.Audit` or `Datastore.Audit` on `/`, no proxyto):
//!   the raw `ceph status` JSON with `health` from `ceph health detail`; without Ceph a
//!   synchronous 500 `binary not installed: /usr/bin/ceph-mon`.
//! - `GET /cluster/replication` (user=all, rows filtered by `VM.Audit` on the guest): the
//!   job config.
//! - `GET /nodes/{node}/replication` (user=all, filtered the same way, proxyto=node): the
//!   jobs whose guest lives on that node now, config plus state (`last_sync` 0 = never,
//!   `error` only while failing, no `state` field).
//!
//! The replication jobs themselves are in [`super::replication`].

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::access::Token;
use super::params::{self, Spec};
use super::respond::ApiError;
use super::state::{Sim, SimError};
use super::world::{now, GuestType, World};

pub use super::replication::{
    snapshot_failure, NewReplicationJob, ReplicationJob, ReplicationPatch,
};

const GIB: u64 = 1024 * 1024 * 1024;

/// The health parts of a world: Ceph (if installed) and the replication jobs.
#[derive(Clone, Debug, Default)]
pub struct ClusterHealth {
    pub ceph: Option<Ceph>,
    pub replication: Vec<ReplicationJob>,
}

/// A Ceph cluster's status as `ceph status` reports it.
#[derive(Clone, Debug)]
pub struct Ceph {
    pub fsid: String,
    /// Check code → check.
    pub checks: BTreeMap<String, CephCheck>,
    pub num_osds: u32,
    pub num_up_osds: u32,
    pub num_in_osds: u32,
    pub bytes_total: u64,
    pub bytes_used: u64,
    pub num_pools: u32,
    pub num_pgs: u32,
    pub mons: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, serde::Serialize)]
pub struct CephCheck {
    /// `HEALTH_WARN` or `HEALTH_ERR`.
    pub severity: String,
    pub message: String,
    #[serde(default)]
    pub detail: Vec<String>,
    #[serde(default = "one")]
    pub count: u64,
    #[serde(default)]
    pub muted: bool,
}

fn one() -> u64 {
    1
}

impl Ceph {
    /// A single-node Ceph as homelabs run it: pools of size 1, which Ceph warns about.
    pub fn single_node(node: &str) -> Ceph {
        let mut checks = BTreeMap::new();
        checks.insert("POOL_NO_REDUNDANCY".to_string(), no_redundancy());
        Ceph {
            fsid: "3f1c9a6e-5b2d-4e8f-9a71-0c6d2b8e4f10".into(),
            checks,
            num_osds: 2,
            num_up_osds: 2,
            num_in_osds: 2,
            bytes_total: 2 * 1024 * GIB,
            bytes_used: 742 * GIB,
            num_pools: 2,
            num_pgs: 33,
            mons: vec![node.to_string()],
        }
    }

    /// A healthy three-monitor Ceph over the first nodes of a generated cluster.
    pub fn cluster(nodes: &[String]) -> Ceph {
        let osds = (nodes.len() as u32 * 2).max(3);
        Ceph {
            fsid: "9b2e7c41-6d3a-4f5e-8c19-2a7f0e4d6b35".into(),
            checks: BTreeMap::new(),
            num_osds: osds,
            num_up_osds: osds,
            num_in_osds: osds,
            bytes_total: u64::from(osds) * 4 * 1024 * GIB,
            bytes_used: u64::from(osds) * 1300 * GIB,
            num_pools: 3,
            num_pgs: 129,
            mons: nodes.iter().take(3).cloned().collect(),
        }
    }

    /// `HEALTH_OK`, `HEALTH_WARN` or `HEALTH_ERR`: the worst unmuted check.
    pub fn status(&self) -> &'static str {
        let active = self.checks.values().filter(|c| !c.muted);
        let mut status = "HEALTH_OK";
        for check in active {
            if check.severity == "HEALTH_ERR" {
                return "HEALTH_ERR";
            }
            status = "HEALTH_WARN";
        }
        status
    }

    /// Replaces the checks with a typical set for `health` (`/_sim/ceph {"health": …}`).
    fn set_health(&mut self, health: &str) -> Result<(), String> {
        self.checks.clear();
        match health {
            "HEALTH_OK" => {}
            "HEALTH_WARN" => {
                self.checks
                    .insert("POOL_NO_REDUNDANCY".into(), no_redundancy());
            }
            "HEALTH_ERR" => {
                self.checks.insert(
                    "OSD_FULL".into(),
                    CephCheck {
                        severity: "HEALTH_ERR".into(),
                        message: "1 full osd(s)".into(),
                        detail: vec!["osd.1 is full".into()],
                        count: 1,
                        muted: false,
                    },
                );
            }
            other => return Err(format!("unknown Ceph health '{other}'")),
        }
        Ok(())
    }
}

fn no_redundancy() -> CephCheck {
    CephCheck {
        severity: "HEALTH_WARN".into(),
        message: "1 pool(s) have no replicas configured".into(),
        detail: vec!["pool 'rbd' has no replicas configured".into()],
        count: 1,
        muted: false,
    }
}

/// The health routes, matched beside the others in `api`.
#[derive(Clone, Debug)]
pub enum HealthRoute {
    CephStatus,
    ClusterReplication,
    NodeReplication { node: String },
}

pub fn match_route(method: &str, s: &[&str]) -> Option<(HealthRoute, String)> {
    Some(match (method, s) {
        ("GET", ["cluster", "ceph", "status"]) => (
            HealthRoute::CephStatus,
            "GET /cluster/ceph/status".to_string(),
        ),
        ("GET", ["cluster", "replication"]) => (
            HealthRoute::ClusterReplication,
            "GET /cluster/replication".to_string(),
        ),
        ("GET", ["nodes", node, "replication"]) => (
            HealthRoute::NodeReplication {
                node: node.to_string(),
            },
            "GET /nodes/{node}/replication".to_string(),
        ),
        _ => return None,
    })
}

impl HealthRoute {
    pub fn proxy_node(&self) -> Option<&str> {
        match self {
            HealthRoute::NodeReplication { node } => Some(node),
            _ => None,
        }
    }

    pub fn permission(&self) -> Option<(String, &'static [&'static str])> {
        match self {
            HealthRoute::CephStatus => Some(("/".into(), &["Sys.Audit", "Datastore.Audit"])),
            // user => 'all': the rows are filtered instead.
            HealthRoute::ClusterReplication | HealthRoute::NodeReplication { .. } => None,
        }
    }

    pub fn path_params(&self) -> Vec<(&'static str, &str)> {
        match self {
            HealthRoute::NodeReplication { node } => vec![("node", node)],
            _ => Vec::new(),
        }
    }

    pub fn specs(&self) -> Vec<Spec> {
        match self {
            HealthRoute::CephStatus | HealthRoute::ClusterReplication => params::none(),
            HealthRoute::NodeReplication { .. } => params::node_replication(),
        }
    }

    pub fn answer(
        &self,
        world: &World,
        token: &Token,
        guest: Option<i64>,
        now: f64,
    ) -> Result<Value, ApiError> {
        match self {
            HealthRoute::CephStatus => ceph_status(world, now),
            HealthRoute::ClusterReplication => Ok(Value::Array(
                world
                    .health
                    .replication
                    .iter()
                    .filter(|job| token.has(&format!("/vms/{}", job.guest), "VM.Audit"))
                    .map(|job| Value::Object(job.config_row(world)))
                    .collect(),
            )),
            HealthRoute::NodeReplication { node } => Ok(Value::Array(
                world
                    .health
                    .replication
                    .iter()
                    .filter(|job| guest.is_none_or(|g| i64::from(job.guest) == g))
                    .filter(|job| token.has(&format!("/vms/{}", job.guest), "VM.Audit"))
                    .filter_map(|job| {
                        let guest = world.guests.get(&job.guest)?;
                        (guest.node == *node)
                            .then(|| Value::Object(job.status_row(world, guest.kind, now)))
                    })
                    .collect(),
            )),
        }
    }
}

/// `GET /cluster/ceph/status`.
fn ceph_status(world: &World, now: f64) -> Result<Value, ApiError> {
    let Some(ceph) = &world.health.ceph else {
        return Err(ApiError::server("binary not installed: /usr/bin/ceph-mon"));
    };
    let checks: Map<String, Value> = ceph
        .checks
        .iter()
        .map(|(code, check)| {
            (
                code.clone(),
                json!({
                    "severity": check.severity,
                    "summary": {"message": check.message, "count": check.count},
                    "detail": check.detail.iter().map(|m| json!({"message": m})).collect::<Vec<_>>(),
                    "muted": check.muted,
                }),
            )
        })
        .collect();
    let stamp = now as u64;
    let avail = ceph.bytes_total.saturating_sub(ceph.bytes_used);
    let quorum: Vec<usize> = (0..ceph.mons.len()).collect();
    Ok(json!({
        "fsid": ceph.fsid,
        "health": {"status": ceph.status(), "checks": checks, "mutes": []},
        "election_epoch": 42,
        "quorum": quorum,
        "quorum_names": ceph.mons,
        "quorum_age": 1_204_700,
        "monmap": {
            "epoch": 3,
            "fsid": ceph.fsid,
            "num_mons": ceph.mons.len(),
            "mons": ceph.mons.iter().enumerate().map(|(rank, name)| json!({"rank": rank, "name": name})).collect::<Vec<_>>(),
        },
        "osdmap": {
            "epoch": 311,
            "num_osds": ceph.num_osds,
            "num_up_osds": ceph.num_up_osds,
            "osd_up_since": stamp - 1_204_000,
            "num_in_osds": ceph.num_in_osds,
            "osd_in_since": stamp - 1_204_000,
            "num_remapped_pgs": 0,
        },
        "pgmap": {
            "pgs_by_state": [{"state_name": "active+clean", "count": ceph.num_pgs}],
            "num_pgs": ceph.num_pgs,
            "num_pools": ceph.num_pools,
            "num_objects": ceph.bytes_used / (4 * 1024 * 1024),
            "data_bytes": ceph.bytes_used / 3,
            "bytes_used": ceph.bytes_used,
            "bytes_avail": avail,
            "bytes_total": ceph.bytes_total,
        },
        "fsmap": {"epoch": 1, "by_rank": [], "up:standby": 0},
        "mgrmap": {"available": true, "num_standbys": 0, "modules": ["iostat", "nfs", "restful"], "services": {}},
        "servicemap": {"epoch": 12, "modified": "2026-01-01T00:00:00.000000+0000", "services": {}},
        "progress_events": {},
    }))
}

/// `POST /_sim/ceph`: install or remove Ceph, set its health or its checks.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CephPatch {
    /// false: Ceph is not installed (the endpoint answers 500).
    pub installed: Option<bool>,
    /// `HEALTH_OK`, `HEALTH_WARN` or `HEALTH_ERR`: a typical set of checks.
    pub health: Option<String>,
    /// Exactly these checks.
    pub checks: Option<BTreeMap<String, CephCheck>>,
    pub bytes_used: Option<u64>,
}

impl ClusterHealth {
    pub fn patch_ceph(&mut self, patch: CephPatch, first_node: &str) -> Result<(), String> {
        if patch.installed == Some(false) {
            self.ceph = None;
            return Ok(());
        }
        let ceph = self
            .ceph
            .get_or_insert_with(|| Ceph::single_node(first_node));
        if let Some(health) = &patch.health {
            ceph.set_health(health)?;
        }
        if let Some(checks) = patch.checks {
            if let Some(bad) = checks
                .values()
                .find(|c| !matches!(c.severity.as_str(), "HEALTH_WARN" | "HEALTH_ERR"))
            {
                return Err(format!("unknown check severity '{}'", bad.severity));
            }
            ceph.checks = checks;
        }
        if let Some(used) = patch.bytes_used {
            ceph.bytes_used = used.min(ceph.bytes_total);
        }
        Ok(())
    }

    pub fn add_job(
        &mut self,
        world_nodes: &[String],
        new: NewReplicationJob,
        now: f64,
    ) -> Result<(), String> {
        if !world_nodes.contains(&new.target) {
            return Err(format!("unknown target node '{}'", new.target));
        }
        let mut job = ReplicationJob::new(new.guest, &new.target, now);
        job.jobnum = new.jobnum;
        job.every_minutes = new.every_minutes;
        job.comment = new.comment;
        // A new job made through the control API has synced once already.
        job.created = now - job.period();
        if self.replication.iter().any(|j| j.id() == job.id()) {
            return Err(format!("replication job '{}' already exists", job.id()));
        }
        self.replication.push(job);
        Ok(())
    }

    pub fn patch_job(&mut self, id: &str, patch: ReplicationPatch, now: f64) -> Result<(), String> {
        let job = self
            .replication
            .iter_mut()
            .find(|j| j.id() == id)
            .ok_or_else(|| format!("no such replication job '{id}'"))?;
        job.failing = if patch.failing {
            let error = patch
                .error
                .unwrap_or_else(|| snapshot_failure(job, now as u64));
            // Failing from the last run on: the next status shows it at once.
            let since = (now / job.period()).floor() * job.period();
            Some((since, error))
        } else {
            None
        };
        Ok(())
    }

    pub fn remove_job(&mut self, id: &str) -> Result<(), String> {
        let before = self.replication.len();
        self.replication.retain(|j| j.id() != id);
        if self.replication.len() == before {
            return Err(format!("no such replication job '{id}'"));
        }
        Ok(())
    }

    /// For `/_sim/world`.
    pub fn to_json(&self) -> Value {
        json!({
            "ceph": self.ceph.as_ref().map(|c| json!({
                "health": c.status(),
                "checks": c.checks,
                "bytes_used": c.bytes_used,
                "bytes_total": c.bytes_total,
            })),
            "replication": self.replication.iter().map(|j| json!({
                "id": j.id(),
                "target": j.target,
                "failing": j.failing.as_ref().map(|f| f.1.clone()),
            })).collect::<Vec<_>>(),
        })
    }
}

/// The health of a generated cluster: a healthy Ceph over its nodes, and with two nodes or
/// more a replication job for every 50th VM to the next node, the first one failing. The
/// first stopped HA-managed guest is an HA service in `error` (asked to start, failed).
pub fn generated_health(
    nodes: &[super::world::Node],
    guests: &mut BTreeMap<u32, super::world::Guest>,
    now: f64,
) -> ClusterHealth {
    if let Some(ha) = guests
        .values_mut()
        .filter(|g| g.power == super::world::PowerState::Stopped)
        .find_map(|g| g.ha.as_mut())
    {
        ha.request = "started".into();
        ha.crm = "error".into();
    }
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let mut replication = Vec::new();
    if names.len() > 1 {
        for guest in guests
            .values()
            .filter(|g| g.kind == GuestType::Qemu && !g.template && g.vmid % 50 == 13)
        {
            let at = names.iter().position(|n| *n == guest.node).unwrap_or(0);
            let target = &names[(at + 1) % names.len()];
            let mut job = ReplicationJob::new(guest.vmid, target, now - 86_400.0);
            if replication.is_empty() {
                let since = (now / job.period()).floor() * job.period() - 2.0 * job.period();
                job.failing = Some((since, snapshot_failure(&job, since as u64)));
            }
            replication.push(job);
        }
    }
    ClusterHealth {
        ceph: Some(Ceph::cluster(&names)),
        replication,
    }
}

impl Sim {
    /// `POST /_sim/ceph`.
    pub fn patch_ceph(&self, patch: CephPatch) -> Result<(), SimError> {
        let mut state = self.lock();
        let first = state
            .world
            .nodes
            .first()
            .map(|n| n.name.clone())
            .unwrap_or_default();
        state
            .world
            .health
            .patch_ceph(patch, &first)
            .map_err(SimError::Invalid)
    }

    /// `POST /_sim/replication`.
    pub fn add_replication_job(&self, new: NewReplicationJob) -> Result<(), SimError> {
        let mut state = self.lock();
        if !state.world.guests.contains_key(&new.guest) {
            return Err(SimError::UnknownGuest(new.guest));
        }
        let nodes: Vec<String> = state.world.nodes.iter().map(|n| n.name.clone()).collect();
        state
            .world
            .health
            .add_job(&nodes, new, now())
            .map_err(SimError::Invalid)
    }

    /// `POST /_sim/replication/{id}`.
    pub fn patch_replication_job(&self, id: &str, patch: ReplicationPatch) -> Result<(), SimError> {
        let mut state = self.lock();
        state
            .world
            .health
            .patch_job(id, patch, now())
            .map_err(SimError::Invalid)
    }

    /// `DELETE /_sim/replication/{id}`.
    pub fn remove_replication_job(&self, id: &str) -> Result<(), SimError> {
        self.lock()
            .world
            .health
            .remove_job(id)
            .map_err(SimError::Invalid)
    }

    /// `GET /_sim/health`: Ceph and the replication jobs.
    pub fn health_json(&self) -> Value {
        self.lock().world.health.to_json()
    }
}

/// The `/_sim` routes of this module.
pub(crate) fn control(router: Router<Sim>) -> Router<Sim> {
    router
        .route("/_sim/health", get(health_state))
        .route("/_sim/ceph", post(set_ceph))
        .route("/_sim/replication", post(add_job))
        .route("/_sim/replication/{id}", post(patch_job).delete(remove_job))
}

fn ok() -> Json<Value> {
    Json(json!({"ok": true}))
}

async fn health_state(State(sim): State<Sim>) -> Json<Value> {
    Json(sim.health_json())
}

async fn set_ceph(
    State(sim): State<Sim>,
    Json(patch): Json<CephPatch>,
) -> Result<Json<Value>, SimError> {
    sim.patch_ceph(patch)?;
    Ok(ok())
}

async fn add_job(
    State(sim): State<Sim>,
    Json(new): Json<NewReplicationJob>,
) -> Result<Json<Value>, SimError> {
    sim.add_replication_job(new)?;
    Ok(ok())
}

async fn patch_job(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    Json(patch): Json<ReplicationPatch>,
) -> Result<Json<Value>, SimError> {
    sim.patch_replication_job(&id, patch)?;
    Ok(ok())
}

async fn remove_job(
    State(sim): State<Sim>,
    Path(id): Path<String>,
) -> Result<Json<Value>, SimError> {
    sim.remove_replication_job(&id)?;
    Ok(ok())
}
