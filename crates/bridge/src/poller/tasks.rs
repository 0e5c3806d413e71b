//! The task watch of one cluster: `GET /cluster/tasks` on the fast lane, at most once per
//! `poll.tasks_interval` (default 10 s, pvestatd's broadcast cadence: reading more often
//! shows nothing new), and only when the token holds `Sys.Audit` on `/` (without it an
//! API token sees no row at all, its own tasks included; reference round 2 §14). So the
//! fast lane makes at most two requests per poll.
//!
//! From each read it keeps every guest's latest task of any origin (GUI, schedules, HA
//! manager, the bridge: `…/last_task`), counts each node's failed tasks of the last 24 h,
//! and reports the guests whose task ended since the last read, so the poller refreshes
//! them at once (a VM started from the Proxmox GUI shows `running` without waiting).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info};

use crate::model::{row_failed, LastTask, TaskFacts};
use crate::pve::{GuestStatus, PveClient, PveError, TaskListEntry};

/// At most this many guests are refreshed after one read (a burst of task ends, e.g. a
/// node's bulk start: the others show with the cluster-wide list, a poll later).
pub(super) const MAX_REFRESHES_PER_READ: usize = 16;

/// A guest's status word from its `status/current` (as after a command).
pub(super) fn status_word(status: &GuestStatus) -> Option<String> {
    match status.qmpstatus.as_deref() {
        Some("paused") => Some("paused".to_string()),
        Some("suspended") => Some("suspended".to_string()),
        _ => status.status.clone(),
    }
}

/// How long a privilege check holds before it is read again (a token's ACLs can change).
const ACCESS_RECHECK: Duration = Duration::from_secs(3600);
/// The window of the node sensor "failed tasks (24 h)".
const FAILED_WINDOW: u64 = 24 * 3600;

/// What one read found that needs acting on.
#[derive(Debug, Default, PartialEq)]
pub(super) struct TaskNews {
    /// Guests (vmid, node) whose task ended since the last read, started by someone else
    /// than the bridge (the bridge refreshes after its own commands already).
    pub ended: Vec<(u32, String)>,
    /// vzdump tasks that finished since the last read (on the first read: every finished
    /// one listed, so the verdicts survive a restart): (node, UPID).
    pub finished_backups: Vec<(String, String)>,
}

#[derive(Debug)]
enum Access {
    Unknown,
    Checked { allowed: bool, at: Instant },
}

pub(super) struct TaskWatch {
    interval: Duration,
    next_read: Option<Instant>,
    access: Access,
    /// The bridge's own token (`user@realm!tokenid`): its tasks need no extra refresh.
    own_user: String,
    /// UPIDs of finished tasks already seen (of the last read only: a task that left the
    /// list does not come back).
    seen_finished: HashSet<String>,
    first_read: bool,
    /// Failed tasks: UPID -> (node, end), kept 24 h beyond the 25 rows a node lists.
    failed: HashMap<String, (String, u64)>,
    last: HashMap<u32, LastTask>,
    /// Last tasks changed but not yet handed to the publisher.
    unsent: BTreeMap<u32, LastTask>,
    /// News not yet acted on (a poll whose answer failed or was held back keeps it for
    /// the next one, so no backup log is skipped).
    pending: TaskNews,
    pub facts: TaskFacts,
}

impl TaskWatch {
    pub fn new(interval: Duration, own_user: &str) -> TaskWatch {
        TaskWatch {
            interval,
            next_read: None,
            access: Access::Unknown,
            own_user: own_user.to_string(),
            seen_finished: HashSet::new(),
            first_read: true,
            failed: HashMap::new(),
            last: HashMap::new(),
            unsent: BTreeMap::new(),
            pending: TaskNews::default(),
            facts: TaskFacts::default(),
        }
    }

    /// Makes at most one request: the privilege check when it is due, else the task
    /// list when it is due and allowed. `None` when nothing was read.
    async fn step(&mut self, client: &PveClient, unix_now: u64) -> Option<TaskNews> {
        let now = Instant::now();
        if self.next_read.is_some_and(|at| now < at) {
            return None;
        }
        let recheck = match self.access {
            Access::Unknown => true,
            Access::Checked { at, .. } => now.duration_since(at) >= ACCESS_RECHECK,
        };
        if recheck {
            match client.permissions().await {
                Ok(permissions) => {
                    let allowed = permissions.has("/", "Sys.Audit");
                    let was = matches!(self.access, Access::Checked { allowed: a, .. } if a);
                    if !allowed && (was || matches!(self.access, Access::Unknown)) {
                        info!("tasks of other origins are not read: the token lacks Sys.Audit on / (pve2mqtt check tells)");
                        self.facts = TaskFacts::default();
                    }
                    self.access = Access::Checked { allowed, at: now };
                }
                Err(err) => {
                    debug!(error = %err, "could not read the token's privileges");
                    self.next_read = Some(now + self.interval);
                }
            }
            // The check was this poll's second request.
            return None;
        }
        if !matches!(self.access, Access::Checked { allowed: true, .. }) {
            return None;
        }
        self.next_read = Some(now + self.interval);
        match client.cluster_tasks().await {
            Ok(rows) => Some(self.absorb(&rows, unix_now)),
            Err(err) => {
                debug!(error = %err, "reading /cluster/tasks failed");
                if matches!(err, PveError::Api { status: 403, .. }) {
                    self.access = Access::Checked {
                        allowed: false,
                        at: now,
                    };
                }
                None
            }
        }
    }

    /// Takes in one answer of `/cluster/tasks` (pure; unit-tested).
    pub(super) fn absorb(&mut self, rows: &[TaskListEntry], unix_now: u64) -> TaskNews {
        let mut news = TaskNews::default();
        let mut finished_now = HashSet::new();
        for row in rows {
            let Some(upid) = row.upid.as_deref() else {
                continue;
            };
            let node = row
                .node
                .clone()
                .or_else(|| upid.split(':').nth(1).map(str::to_string))
                .unwrap_or_default();
            let guest = LastTask::from_row(row);
            if let Some((vmid, task)) = &guest {
                let newer = self
                    .last
                    .get(vmid)
                    .is_none_or(|old| (task.start, &task.upid) >= (old.start, &old.upid));
                if newer && self.last.get(vmid) != Some(task) {
                    self.last.insert(*vmid, task.clone());
                    self.unsent.insert(*vmid, task.clone());
                }
            }
            if row.is_running() {
                continue;
            }
            finished_now.insert(upid.to_string());
            if row_failed(row) {
                if let Some(end) = row.endtime {
                    self.failed.insert(upid.to_string(), (node.clone(), end));
                }
            }
            if self.seen_finished.contains(upid) {
                continue;
            }
            // Backups that finished before the bridge started count too: last night's
            // job is the verdict a user wants after a restart (a log read each).
            if row.task_type.as_deref() == Some("vzdump") {
                news.finished_backups.push((node.clone(), upid.to_string()));
            }
            if self.first_read {
                continue;
            }
            let user = guest.as_ref().map(|(_, t)| t.user.as_str());
            if let (Some((vmid, _)), false) = (&guest, user == Some(self.own_user.as_str())) {
                news.ended.push((*vmid, node));
            }
        }
        self.first_read = false;
        self.seen_finished = finished_now;
        self.failed
            .retain(|_, (_, end)| unix_now.saturating_sub(*end) < FAILED_WINDOW);
        let mut failed_24h: HashMap<String, u32> = HashMap::new();
        for (node, _) in self.failed.values() {
            *failed_24h.entry(node.clone()).or_default() += 1;
        }
        self.facts = TaskFacts {
            read: true,
            failed_24h,
        };
        news
    }

    /// Reads when due (see [`TaskWatch::step`]) and keeps what it found for
    /// [`TaskWatch::take_news`].
    pub async fn poll(&mut self, client: &PveClient, unix_now: u64) {
        if let Some(news) = self.step(client, unix_now).await {
            self.pending.ended.extend(news.ended);
            self.pending.finished_backups.extend(news.finished_backups);
        }
    }

    /// What the reads found since the last call.
    pub fn take_news(&mut self) -> TaskNews {
        std::mem::take(&mut self.pending)
    }

    /// Last tasks that changed since the last call, for the publisher.
    pub fn take_unsent(&mut self) -> BTreeMap<u32, LastTask> {
        std::mem::take(&mut self.unsent)
    }

    /// Forgets guests that are gone (their topics are cleared with them).
    pub fn retain_guests(&mut self, exists: impl Fn(u32) -> bool) {
        self.last.retain(|vmid, _| exists(*vmid));
        self.unsent.retain(|vmid, _| exists(*vmid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(json: &str) -> Vec<TaskListEntry> {
        serde_json::from_str(json).unwrap()
    }

    const RUNNING: &str = r#"[{"upid":"UPID:pve:00000001:00000002:00000010:qmstart:100:root@pam:","node":"pve","type":"qmstart","id":"100","user":"root@pam","starttime":16,"pid":1},
        {"upid":"UPID:pve:00000003:00000002:00000005:qmstop:101:root@pam:","node":"pve","type":"qmstop","id":"101","user":"root@pam","starttime":5,"endtime":6,"status":"got timeout"}]"#;
    const ENDED: &str = r#"[{"upid":"UPID:pve:00000001:00000002:00000010:qmstart:100:root@pam:","node":"pve","type":"qmstart","id":"100","user":"root@pam","starttime":16,"endtime":18,"status":"OK"},
        {"upid":"UPID:pve:00000004:00000002:00000011:vzdump::root@pam:","node":"pve","type":"vzdump","id":"","user":"root@pam","starttime":17,"endtime":30,"status":"job errors"},
        {"upid":"UPID:pve:00000005:00000002:00000012:qmstop:102:bridge@pve!b:","node":"pve","type":"qmstop","id":"102","user":"bridge@pve","tokenid":"b","starttime":18,"endtime":19,"status":"OK"},
        {"upid":"UPID:pve:00000003:00000002:00000005:qmstop:101:root@pam:","node":"pve","type":"qmstop","id":"101","user":"root@pam","starttime":5,"endtime":6,"status":"got timeout"}]"#;

    #[test]
    fn the_first_read_refreshes_nothing_and_later_ends_refresh_their_guest_once() {
        let mut watch = TaskWatch::new(Duration::from_secs(10), "bridge@pve!b");
        let first = watch.absorb(&rows(RUNNING), 100);
        assert_eq!(first, TaskNews::default());
        let sent = watch.take_unsent();
        assert_eq!(sent[&100].status, "running");
        assert_eq!(sent[&101].status, "failed");
        assert_eq!(watch.facts.failed_for("pve"), Some(1));

        let second = watch.absorb(&rows(ENDED), 100);
        // The bridge's own task (102) needs no refresh: its command already did one.
        assert_eq!(second.ended, vec![(100, "pve".to_string())]);
        assert_eq!(
            second.finished_backups,
            vec![(
                "pve".to_string(),
                "UPID:pve:00000004:00000002:00000011:vzdump::root@pam:".to_string()
            )]
        );
        let sent = watch.take_unsent();
        assert_eq!(sent.keys().copied().collect::<Vec<_>>(), vec![100, 102]);
        assert_eq!(sent[&100].status, "ok");
        assert_eq!(watch.facts.failed_for("pve"), Some(2));
        // Read again: nothing new, nothing to publish.
        assert_eq!(watch.absorb(&rows(ENDED), 100), TaskNews::default());
        assert!(watch.take_unsent().is_empty());
    }

    #[test]
    fn backups_that_finished_before_the_first_read_have_their_log_read_too() {
        let mut watch = TaskWatch::new(Duration::from_secs(10), "x@pve!y");
        let first = watch.absorb(&rows(ENDED), 100);
        assert!(first.ended.is_empty(), "no refresh storm at start");
        assert_eq!(first.finished_backups.len(), 1);
        assert!(watch.absorb(&rows(ENDED), 100).finished_backups.is_empty());
    }

    #[test]
    fn failed_tasks_count_for_24_hours_even_after_they_leave_the_list() {
        let mut watch = TaskWatch::new(Duration::from_secs(10), "x@pve!y");
        watch.absorb(&rows(ENDED), 100);
        watch.absorb(&rows("[]"), 100 + 3600);
        assert_eq!(watch.facts.failed_for("pve"), Some(2));
        watch.absorb(&rows("[]"), 31 + FAILED_WINDOW);
        assert_eq!(watch.facts.failed_for("pve"), Some(0));
        assert_eq!(TaskFacts::default().failed_for("pve"), None);
    }
}
