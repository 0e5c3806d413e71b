//! What the bridge learns from Proxmox's task list (`GET /cluster/tasks`): each guest's
//! latest task of any origin (`…/last_task`) and each node's failed tasks of the last
//! 24 hours. Pure: the poller's task watch (`poller/tasks.rs`) fills it.

use std::collections::HashMap;

use serde::Serialize;

use crate::pve::{exitstatus_is_success, TaskListEntry};

/// `{base}/{c}/{qemu|lxc}/{vmid}/last_task` (SPEC §7).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LastTask {
    pub upid: String,
    /// Proxmox's task type: `qmstart`, `vzdump`, `qmigrate`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// Who started it: `root@pam` (GUI, schedules), or a token `user@realm!tokenid`.
    pub user: String,
    /// `running`, `ok` (exit `OK` or `WARNINGS: n`) or `failed`.
    pub status: &'static str,
    /// Proxmox's exit text (`OK`, `WARNINGS: 1`, the error); `null` while running.
    pub exitstatus: Option<String>,
    /// Unix seconds.
    pub start: u64,
    /// Unix seconds; `null` while running.
    pub end: Option<u64>,
}

impl LastTask {
    /// The row as a guest's last task, if it is a guest's task (its id is a vmid).
    pub fn from_row(row: &TaskListEntry) -> Option<(u32, LastTask)> {
        let vmid: u32 = row.id.as_deref()?.parse().ok()?;
        if !(100..=999_999_999).contains(&vmid) {
            return None;
        }
        let user = match (&row.user, &row.tokenid) {
            (Some(user), Some(token)) => format!("{user}!{token}"),
            (Some(user), None) => user.clone(),
            (None, _) => String::new(),
        };
        let running = row.is_running();
        let status = if running {
            "running"
        } else if row.succeeded() {
            "ok"
        } else {
            "failed"
        };
        Some((
            vmid,
            LastTask {
                upid: row.upid.clone()?,
                kind: row.task_type.clone().unwrap_or_default(),
                user,
                status,
                exitstatus: (!running).then(|| row.status.clone()).flatten(),
                start: row.starttime?,
                end: if running { None } else { row.endtime },
            },
        ))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What the task list says about nodes, merged into each view (see `ViewBuilder::tasks`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskFacts {
    /// False while the task list is not read (no `Sys.Audit` on `/`, or not yet): then
    /// nodes carry `failed_tasks_24h: null`, not a misleading 0.
    pub read: bool,
    /// Node -> tasks that ended with an error in the last 24 hours.
    pub failed_24h: HashMap<String, u32>,
}

impl TaskFacts {
    pub fn failed_for(&self, node: &str) -> Option<u32> {
        self.read
            .then(|| self.failed_24h.get(node).copied().unwrap_or(0))
    }
}

/// Did this finished row fail? (`OK` and `WARNINGS: n` are successes.)
pub fn row_failed(row: &TaskListEntry) -> bool {
    !row.is_running() && !row.status.as_deref().is_some_and(exitstatus_is_success)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(json: &str) -> TaskListEntry {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_token_task_joins_user_and_token_and_a_running_one_has_no_end() {
        let (vmid, task) = LastTask::from_row(&row(
            r#"{"upid":"UPID:pve:0001:0002:6803E819:qmstart:100:root@pam!gui:","node":"pve","type":"qmstart","id":"100","user":"root@pam","tokenid":"gui","starttime":1745086489,"pid":12}"#,
        ))
        .unwrap();
        assert_eq!(vmid, 100);
        assert_eq!(task.user, "root@pam!gui");
        assert_eq!(task.status, "running");
        assert_eq!(task.end, None);
        assert_eq!(task.exitstatus, None);
    }

    #[test]
    fn finished_rows_are_ok_with_warnings_and_failed_with_an_error() {
        let (_, ok) = LastTask::from_row(&row(
            r#"{"upid":"U","type":"vzdump","id":"101","user":"root@pam","starttime":10,"endtime":20,"status":"WARNINGS: 1"}"#,
        ))
        .unwrap();
        assert_eq!((ok.status, ok.end), ("ok", Some(20)));
        let failed = row(
            r#"{"upid":"U","type":"qmstart","id":"100","user":"root@pam","starttime":10,"endtime":20,"status":"VM 100 already running"}"#,
        );
        assert_eq!(LastTask::from_row(&failed).unwrap().1.status, "failed");
        assert!(row_failed(&failed));
        // Not a guest's task: no id, or not a vmid.
        assert!(LastTask::from_row(&row(
            r#"{"upid":"U","type":"aptupdate","id":"","starttime":1}"#
        ))
        .is_none());
        assert!(LastTask::from_row(&row(
            r#"{"upid":"U","type":"srvstart","id":"pveproxy","starttime":1}"#
        ))
        .is_none());
    }
}
