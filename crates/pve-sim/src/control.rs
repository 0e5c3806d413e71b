//! The control API under `/_sim`: no authentication, JSON in and out. Tests and the demo
//! use it to look at the truth and to change the world while the bridge watches.
//!
//! Every route is a thin wrapper around the same operation on [`Sim`].

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::node_health::{DiskPatch, NodeHealth, PoolPatch};
use super::state::{ConfigPatch, Fault, GuestPatch, NewGuest, Sim, SimError};
use super::tasks::TaskOverride;

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        let status = match self {
            SimError::UnknownNode(_) | SimError::UnknownGuest(_) | SimError::UnknownToken(_) => {
                StatusCode::NOT_FOUND
            }
            SimError::GuestExists(_) => StatusCode::CONFLICT,
            SimError::Invalid(_) => StatusCode::BAD_REQUEST,
        };
        (status, Json(json!({"error": self.to_string()}))).into_response()
    }
}

fn ok() -> Json<Value> {
    Json(json!({"ok": true}))
}

#[derive(Deserialize)]
struct Since {
    #[serde(default)]
    since: u64,
}

#[derive(Deserialize)]
struct NodeChange {
    online: bool,
}

#[derive(Deserialize)]
struct Migration {
    target: String,
}

#[derive(Deserialize)]
struct NewToken {
    token: String,
    #[serde(default)]
    privileges: BTreeMap<String, Vec<String>>,
}

/// The `/_sim` routes.
pub(crate) fn router(sim: Sim) -> Router {
    let router = Router::new()
        .route("/_sim/counters", get(counters))
        .route("/_sim/counters/reset", post(reset_counters))
        .route("/_sim/requests", get(requests))
        .route("/_sim/world", get(world))
        .route("/_sim/tasks", get(tasks))
        .route("/_sim/tasks/next", post(next_task))
        .route("/_sim/nodes/{node}", post(set_node))
        .route("/_sim/guests", post(add_guest))
        .route(
            "/_sim/guests/{vmid}",
            patch(patch_guest).delete(remove_guest),
        )
        .route("/_sim/guests/{vmid}/migrate", post(migrate_guest))
        .route("/_sim/tokens", post(add_token))
        .route("/_sim/tokens/{id}", axum::routing::delete(revoke_token))
        .route(
            "/_sim/faults",
            get(list_faults).post(add_fault).delete(clear_faults),
        )
        .route("/_sim/config", get(config).post(set_config))
        .route("/_sim/backup-jobs", get(backup_jobs).post(put_backup_job))
        .route("/_sim/backup-jobs/{id}/run", post(run_backup_job))
        .route(
            "/_sim/nodes/{node}/health",
            get(node_health).put(put_node_health),
        )
        .route("/_sim/nodes/{node}/disks/{dev}", post(patch_disk))
        .route("/_sim/nodes/{node}/zfs/{pool}", post(patch_pool))
        .route("/_sim/agents", post(super::agent::set_waits))
        .route("/_sim/agents/{vmid}", post(super::agent::set_agent));
    super::health::control(router).with_state(sim)
}

async fn backup_jobs(State(sim): State<Sim>) -> Json<Value> {
    Json(json!(sim.backup_jobs()))
}

async fn put_backup_job(
    State(sim): State<Sim>,
    Json(job): Json<super::jobs::BackupJob>,
) -> Json<Value> {
    sim.put_backup_job(job);
    ok()
}

/// Runs a job now, as pvescheduler would: `{"upids": [...]}`.
async fn run_backup_job(
    State(sim): State<Sim>,
    Path(id): Path<String>,
) -> Result<Json<Value>, SimError> {
    Ok(Json(json!({"upids": sim.run_backup_job(&id)?})))
}

async fn counters(State(sim): State<Sim>) -> Json<BTreeMap<String, u64>> {
    Json(sim.counters())
}

async fn reset_counters(State(sim): State<Sim>) -> Json<Value> {
    sim.reset_counters();
    ok()
}

async fn requests(State(sim): State<Sim>, Query(since): Query<Since>) -> Json<Value> {
    Json(json!(sim.requests(since.since)))
}

async fn world(State(sim): State<Sim>) -> Json<Value> {
    Json(sim.world_json())
}

async fn tasks(State(sim): State<Sim>) -> Json<Value> {
    Json(sim.tasks())
}

async fn next_task(State(sim): State<Sim>, Json(override_): Json<TaskOverride>) -> Json<Value> {
    sim.next_task(override_);
    ok()
}

async fn set_node(
    State(sim): State<Sim>,
    Path(node): Path<String>,
    Json(change): Json<NodeChange>,
) -> Result<Json<Value>, SimError> {
    sim.set_node_online(&node, change.online)?;
    Ok(ok())
}

async fn add_guest(
    State(sim): State<Sim>,
    Json(guest): Json<NewGuest>,
) -> Result<Json<Value>, SimError> {
    sim.add_guest(guest)?;
    Ok(ok())
}

async fn patch_guest(
    State(sim): State<Sim>,
    Path(vmid): Path<u32>,
    Json(patch): Json<GuestPatch>,
) -> Result<Json<Value>, SimError> {
    sim.patch_guest(vmid, patch)?;
    Ok(ok())
}

async fn remove_guest(
    State(sim): State<Sim>,
    Path(vmid): Path<u32>,
) -> Result<Json<Value>, SimError> {
    sim.remove_guest(vmid)?;
    Ok(ok())
}

async fn migrate_guest(
    State(sim): State<Sim>,
    Path(vmid): Path<u32>,
    Json(migration): Json<Migration>,
) -> Result<Json<Value>, SimError> {
    sim.migrate_guest(vmid, &migration.target)?;
    Ok(ok())
}

async fn add_token(
    State(sim): State<Sim>,
    Json(token): Json<NewToken>,
) -> Result<Json<Value>, SimError> {
    sim.add_token(&token.token, token.privileges)?;
    Ok(ok())
}

async fn revoke_token(
    State(sim): State<Sim>,
    Path(id): Path<String>,
) -> Result<Json<Value>, SimError> {
    sim.revoke_token(&id)?;
    Ok(ok())
}

async fn list_faults(State(sim): State<Sim>) -> Json<Vec<Fault>> {
    Json(sim.faults())
}

async fn add_fault(State(sim): State<Sim>, Json(fault): Json<Fault>) -> Json<Value> {
    sim.add_fault(fault);
    ok()
}

async fn clear_faults(State(sim): State<Sim>) -> Json<Value> {
    sim.clear_faults();
    ok()
}

async fn config(State(sim): State<Sim>) -> Json<ConfigPatch> {
    Json(sim.config())
}

async fn set_config(State(sim): State<Sim>, Json(patch): Json<ConfigPatch>) -> Json<ConfigPatch> {
    sim.set_config(patch);
    Json(sim.config())
}

async fn node_health(
    State(sim): State<Sim>,
    Path(node): Path<String>,
) -> Result<Json<NodeHealth>, SimError> {
    Ok(Json(sim.health(&node)?))
}

async fn put_node_health(
    State(sim): State<Sim>,
    Path(node): Path<String>,
    Json(health): Json<NodeHealth>,
) -> Result<Json<Value>, SimError> {
    sim.set_health(&node, health)?;
    Ok(ok())
}

async fn patch_disk(
    State(sim): State<Sim>,
    Path((node, dev)): Path<(String, String)>,
    Json(patch): Json<DiskPatch>,
) -> Result<Json<Value>, SimError> {
    sim.patch_disk(&node, &dev, patch)?;
    Ok(ok())
}

async fn patch_pool(
    State(sim): State<Sim>,
    Path((node, pool)): Path<(String, String)>,
    Json(patch): Json<PoolPatch>,
) -> Result<Json<Value>, SimError> {
    sim.patch_pool(&node, &pool, patch)?;
    Ok(ok())
}
