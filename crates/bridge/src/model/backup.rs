//! Backup health per guest: the verdict of the newest vzdump task that backed the guest
//! up, read from that task's log (reference round 2 §16), and what the newest backup in
//! storage says (size, PBS verification). Pure: the slow lane reads the logs.
//!
//! vzdump logs one block per guest, `INFO: Starting Backup of VM 100 (qemu)` …
//! `INFO: Finished Backup of VM 100 (00:00:12)` or `ERROR: Backup of VM 100 failed - …`
//! ("VM" for containers too); `WARN:` lines inside a block are that guest's warnings.

/// What the newest vzdump task said about one guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupVerdict {
    /// `ok`, `warnings` or `failed`.
    pub status: &'static str,
    /// Proxmox's error text when `failed`.
    pub error: Option<String>,
    /// Start of the task (Unix seconds, from its UPID): the newest task's verdict wins.
    pub task_start: u64,
}

/// The newest backup of a guest found in storage content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewestBackup {
    pub ctime: u64,
    pub size: Option<u64>,
    /// PBS only: `ok` or `failed` after a verify job; `None` when never verified.
    pub verification: Option<String>,
}

impl NewestBackup {
    /// Keeps the newer of the two.
    pub fn merge(&mut self, other: NewestBackup) {
        if other.ctime > self.ctime {
            *self = other;
        }
    }
}

/// The verdict per guest in one vzdump task log, in log order.
pub fn parse_vzdump_log<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    task_start: u64,
) -> Vec<(u32, BackupVerdict)> {
    let mut verdicts = Vec::new();
    let mut current: Option<(u32, u32)> = None;
    let vmid_after = |rest: &str| -> Option<u32> {
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse().ok())
    };
    for line in lines {
        if let Some(rest) = line.strip_prefix("INFO: Starting Backup of VM ") {
            current = vmid_after(rest).map(|vmid| (vmid, 0));
        } else if line.starts_with("WARN: ") {
            if let Some((_, warnings)) = current.as_mut() {
                *warnings += 1;
            }
        } else if let Some(rest) = line.strip_prefix("INFO: Finished Backup of VM ") {
            if let Some(vmid) = vmid_after(rest) {
                let warned = current.is_some_and(|(v, w)| v == vmid && w > 0);
                verdicts.push((
                    vmid,
                    BackupVerdict {
                        status: if warned { "warnings" } else { "ok" },
                        error: None,
                        task_start,
                    },
                ));
            }
            current = None;
        } else if let Some(rest) = line.strip_prefix("ERROR: Backup of VM ") {
            if let (Some(vmid), Some((_, error))) =
                (vmid_after(rest), rest.split_once(" failed - "))
            {
                verdicts.push((
                    vmid,
                    BackupVerdict {
                        status: "failed",
                        error: Some(error.to_string()),
                        task_start,
                    },
                ));
            }
            current = None;
        }
    }
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference round 2 §16, verbatim shapes.
    const LOG: &str = "INFO: starting new backup job: vzdump --all 1 --job-id backup-5d7a9f1c-1a2b --quiet 1 --storage pbs
INFO: skip external VMs: 102, 103
INFO: Starting Backup of VM 100 (qemu)
INFO: Backup started at 2025-03-11 01:00:02
INFO:  50% (5.0 GiB of 10.0 GiB) in 5s, read: 1.0 GiB/s, write: 1.0 GiB/s
INFO: Finished Backup of VM 100 (00:00:12)
INFO: Backup finished at 2025-03-11 01:00:14
INFO: Starting Backup of VM 101 (lxc)
ERROR: Backup of VM 101 failed - job failed with err -5 - Input/output error
INFO: Failed at 2025-03-11 01:00:20
INFO: Starting Backup of VM 104 (lxc)
WARN: unable to clean up old backups of VM 104 - simulated warning
INFO: Finished Backup of VM 104 (00:00:03)
INFO: Backup job finished with errors
TASK ERROR: job errors";

    #[test]
    fn each_guest_of_a_job_gets_its_own_verdict() {
        let verdicts = parse_vzdump_log(LOG.lines(), 42);
        let view: Vec<(u32, &str, Option<&str>)> = verdicts
            .iter()
            .map(|(v, b)| (*v, b.status, b.error.as_deref()))
            .collect();
        assert_eq!(
            view,
            vec![
                (100, "ok", None),
                (
                    101,
                    "failed",
                    Some("job failed with err -5 - Input/output error")
                ),
                (104, "warnings", None),
            ]
        );
        assert!(verdicts.iter().all(|(_, b)| b.task_start == 42));
    }

    #[test]
    fn twenty_guests_with_one_failure_give_nineteen_ok_and_one_failed() {
        let mut log = vec!["INFO: starting new backup job: vzdump --all 1".to_string()];
        for vmid in 100..120 {
            log.push(format!("INFO: Starting Backup of VM {vmid} (qemu)"));
            if vmid == 113 {
                log.push(format!("ERROR: Backup of VM {vmid} failed - got timeout"));
            } else {
                log.push(format!("INFO: Finished Backup of VM {vmid} (00:01:00)"));
            }
        }
        let verdicts = parse_vzdump_log(log.iter().map(String::as_str), 1);
        assert_eq!(verdicts.len(), 20);
        assert_eq!(
            verdicts.iter().filter(|(_, b)| b.status == "ok").count(),
            19
        );
        let failed: Vec<u32> = verdicts
            .iter()
            .filter(|(_, b)| b.status == "failed")
            .map(|(v, _)| *v)
            .collect();
        assert_eq!(failed, vec![113]);
    }
}
