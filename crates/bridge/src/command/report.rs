//! What `…/task` and `bridge/response/…` carry, and reading backup progress out of a
//! vzdump task log. Pure.

use std::collections::HashMap;

use serde::Serialize;

/// Where a command is in its life (SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Accepted,
    Running,
    Ok,
    Failed,
    Rejected,
}

impl Phase {
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Ok | Phase::Failed | Phase::Rejected)
    }
}

/// The retained JSON on `{base}/{c}/{kind}/{vmid}/task`.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct TaskReport {
    pub id: Option<String>,
    pub action: String,
    pub state: Phase,
    pub upid: Option<String>,
    pub exitstatus: Option<String>,
    pub error: Option<String>,
    /// Backups only: percent done, from the task log.
    pub progress: Option<u8>,
    /// Unix time the command arrived.
    pub requested: u64,
    pub finished: Option<u64>,
}

impl TaskReport {
    pub fn new(id: Option<String>, action: &str, requested: u64) -> TaskReport {
        TaskReport {
            id,
            action: action.to_string(),
            state: Phase::Accepted,
            upid: None,
            exitstatus: None,
            error: None,
            progress: None,
            requested,
            finished: None,
        }
    }

    /// A command refused before any POST: final at once, with the reason.
    pub fn rejected(id: Option<String>, action: &str, reason: &str) -> TaskReport {
        let mut report = TaskReport::new(id, action, unix_now());
        report.state = Phase::Rejected;
        report.error = Some(reason.to_string());
        report.finished = Some(report.requested);
        report
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Per-guest outcome read from a vzdump log so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestBackup {
    pub progress: Option<u8>,
    pub finished: bool,
    pub error: Option<String>,
}

/// Follows a vzdump log line by line: which guest is being backed up, its percentage
/// (`INFO:  42% (3.4 GiB of 8.0 GiB) in 3s, …`), and per-guest success or failure
/// (`INFO: Finished Backup of VM 100 (00:00:05)`, `ERROR: Backup of VM 100 failed - …`).
#[derive(Clone, Debug, Default)]
pub struct BackupLog {
    current: Option<u32>,
    pub guests: HashMap<u32, GuestBackup>,
}

impl BackupLog {
    pub fn feed(&mut self, line: &str) {
        let text = line.trim();
        if let Some(rest) = text.strip_prefix("INFO: Starting Backup of VM ") {
            self.current = leading_vmid(rest);
            if let Some(vmid) = self.current {
                self.guests.entry(vmid).or_default().progress = Some(0);
            }
        } else if let Some(rest) = text.strip_prefix("INFO: Finished Backup of VM ") {
            if let Some(vmid) = leading_vmid(rest) {
                let g = self.guests.entry(vmid).or_default();
                g.finished = true;
                g.progress = Some(100);
            }
        } else if let Some(rest) = text.strip_prefix("ERROR: Backup of VM ") {
            if let Some(vmid) = leading_vmid(rest) {
                let message = rest
                    .split_once(" failed - ")
                    .map(|(_, m)| m.to_string())
                    .unwrap_or_else(|| text.to_string());
                self.guests.entry(vmid).or_default().error = Some(message);
            }
        } else if let Some(rest) = text.strip_prefix("INFO:") {
            let rest = rest.trim_start();
            if let Some((number, _)) = rest.split_once("% (") {
                if let (Ok(p), Some(vmid)) = (number.trim().parse::<u8>(), self.current) {
                    if p <= 100 {
                        self.guests.entry(vmid).or_default().progress = Some(p);
                    }
                }
            }
        }
    }
}

fn leading_vmid(text: &str) -> Option<u32> {
    let digits: String = text.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_report_serialises_as_the_spec_shows() {
        let mut r = TaskReport::new(Some("abc".into()), "shutdown", 1764679463);
        r.state = Phase::Ok;
        r.upid = Some("UPID:pve:0000A1B2:0001C3D4:6803E819:qmshutdown:100:root@pam!bridge:".into());
        r.exitstatus = Some("OK".into());
        r.finished = Some(1764679465);
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["state"], "ok");
        assert_eq!(v["id"], "abc");
        assert!(v["error"].is_null() && v["progress"].is_null());
        assert_eq!(v["finished"], 1764679465);
    }

    #[test]
    fn backup_progress_is_read_per_guest_from_the_log() {
        let mut log = BackupLog::default();
        for line in [
            "INFO: starting new backup job: vzdump 100 101 --storage local --mode snapshot",
            "INFO: Starting Backup of VM 100 (qemu)",
            "INFO:   0% (0.0 B of 8.0 GiB) in 0s, read: 0 B/s, write: 0 B/s",
            "INFO:  42% (3.4 GiB of 8.0 GiB) in 3s, read: 1.1 GiB/s, write: 1.0 GiB/s",
        ] {
            log.feed(line);
        }
        assert_eq!(log.guests[&100].progress, Some(42));
        for line in [
            "INFO: 100% (8.0 GiB of 8.0 GiB) in 7s, read: 1.1 GiB/s, write: 1.0 GiB/s",
            "INFO: Finished Backup of VM 100 (00:00:07)",
            "INFO: Starting Backup of VM 101 (lxc)",
            "ERROR: Backup of VM 101 failed - no space left on device",
            "INFO: Backup job finished with errors",
            "TASK ERROR: job errors",
        ] {
            log.feed(line);
        }
        assert!(log.guests[&100].finished);
        assert_eq!(log.guests[&100].progress, Some(100));
        assert_eq!(
            log.guests[&101].error.as_deref(),
            Some("no space left on device")
        );
        assert!(!log.guests[&101].finished);
    }
}
