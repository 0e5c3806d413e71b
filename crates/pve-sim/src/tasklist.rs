//! `GET /cluster/tasks` as Proxmox builds it (reference round 2 §14).
//!
//! Each node's pvestatd broadcasts, every cycle (~10 s), its "active" list: every running
//! task plus the most recent finished ones, [`MAX_ACTIVE`] entries in all. The cluster
//! call concatenates the lists of all nodes, so it is up to a cycle stale: the simulator
//! shows the tasks as of the last broadcast of its stats clock (live when the clock is).
//! Rows of token tasks carry the user split into `user` and `tokenid`, and the caller
//! sees every row only with `Sys.Audit` on `/`; otherwise only rows whose `user` is the
//! caller, which an API token never is (the split happens first).

use serde_json::{Map, Value};

use super::access::{split_token_user, Token};
use super::tasks::Task;

/// pve-common `MAX_FINISHED`: running tasks plus finished ones, this many per node.
pub const MAX_ACTIVE: usize = 25;

/// The rows of `GET /cluster/tasks` as of the broadcast at `at`, for `token`.
pub fn cluster_tasks<'a>(
    tasks: &[Task],
    nodes: impl Iterator<Item = &'a str>,
    token: &Token,
    at: f64,
) -> Vec<Value> {
    let audit = token.has("/", "Sys.Audit");
    let mut rows = Vec::new();
    for node in nodes {
        let known: Vec<&Task> = tasks
            .iter()
            .filter(|t| t.upid.node == node && t.created <= at)
            .collect();
        let mut running: Vec<&Task> = known.iter().copied().filter(|t| t.is_running(at)).collect();
        running.sort_by(|a, b| b.created.total_cmp(&a.created));
        let mut finished: Vec<&Task> = known
            .iter()
            .copied()
            .filter(|t| !t.is_running(at))
            .collect();
        finished.sort_by(|a, b| {
            let end = |t: &Task| t.ended_at(at).unwrap_or(t.created);
            end(b).total_cmp(&end(a))
        });
        finished.truncate(MAX_ACTIVE.saturating_sub(running.len()));
        for task in running.into_iter().chain(finished) {
            let (user, _) = split_token_user(&task.upid.user);
            if audit || user == token.full_id {
                rows.push(row(task, at));
            }
        }
    }
    rows
}

/// One row: running tasks have `pid` and neither `status` nor `endtime`.
fn row(task: &Task, at: f64) -> Value {
    let mut row = Map::new();
    let put = |row: &mut Map<String, Value>, key: &str, value: Value| {
        row.insert(key.to_string(), value);
    };
    put(&mut row, "upid", task.upid_text.as_str().into());
    put(&mut row, "node", task.upid.node.as_str().into());
    put(&mut row, "starttime", task.upid.starttime.into());
    put(&mut row, "type", task.upid.kind.as_str().into());
    put(&mut row, "id", task.upid.id.as_str().into());
    let (user, tokenid) = split_token_user(&task.upid.user);
    put(&mut row, "user", user.into());
    if let Some(tokenid) = tokenid {
        put(&mut row, "tokenid", tokenid.into());
    }
    match (task.exitstatus(at), task.ended_at(at)) {
        (Some(exit), Some(end)) => {
            put(&mut row, "status", exit.into());
            put(
                &mut row,
                "endtime",
                (end.max(task.upid.starttime as f64) as u64).into(),
            );
            put(&mut row, "saved", "1".into());
        }
        _ => {
            put(&mut row, "pid", task.upid.pid.into());
            put(&mut row, "saved", "0".into());
        }
    }
    Value::Object(row)
}
