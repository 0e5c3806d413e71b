//! Cluster health (issue 11): the `ceph` and `ha` fields of the cluster state and the
//! `ha_state` and `replication` fields of a guest, from the slow lane's
//! `/cluster/ceph/status`, `/cluster/ha/status/current` and `/nodes/{n}/replication`.
//!
//! Each part is `null` while the cluster does not have it (no Ceph, no HA resources, no
//! replication job) or the token may not read it; [`HealthKnown`] says whether the slow
//! lane has asked yet, so Home Assistant entities are neither announced nor removed
//! before the answer is in.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

use super::rates::percent;
use crate::pve::{CephStatus, HaStatusRow, ReplicationJob};

/// What the slow lane learned about the cluster's health; part of `SlowData`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HealthData {
    pub ceph: Option<CephState>,
    pub ha: Option<HaState>,
    /// vmid → the verbose HA service state of a managed guest.
    pub ha_services: HashMap<u32, String>,
    /// vmid → the guest's replication jobs.
    pub replication: HashMap<u32, Arc<GuestReplication>>,
    pub known: HealthKnown,
    /// Right after a start, until the slow lane's first round has run its health requests
    /// (see [`SlowData::at_start`](super::SlowData::at_start)): guests' discovery waits
    /// for them, so Home Assistant is told about a guest's replication entities (or their
    /// removal) with its first discovery, not in a second one for every guest.
    pub pending: bool,
}

/// Whether each part has been asked for (with an answer) since the bridge started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HealthKnown {
    pub ceph: bool,
    pub ha: bool,
    pub replication: bool,
}

/// `ceph` in the cluster state.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CephState {
    /// `HEALTH_OK`, `HEALTH_WARN` or `HEALTH_ERR`.
    pub health: String,
    /// Check code → the check, as `ceph health detail` gives them (muted ones included).
    pub checks: BTreeMap<String, CephCheckState>,
    /// Raw bytes used, available and in total over all OSDs.
    pub used: Option<u64>,
    pub avail: Option<u64>,
    pub total: Option<u64>,
    pub used_percent: Option<f64>,
    pub osds: Option<u64>,
    pub osds_up: Option<u64>,
    pub osds_in: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CephCheckState {
    pub severity: Option<String>,
    pub message: Option<String>,
    pub count: Option<u64>,
    pub muted: bool,
}

impl CephState {
    pub fn from_status(status: &CephStatus) -> CephState {
        let pgmap = status.pgmap.clone().unwrap_or_default();
        let osds = status.osdmap.clone().unwrap_or_default();
        let osds = osds.flat();
        CephState {
            health: status
                .health
                .status
                .clone()
                .unwrap_or_else(|| "HEALTH_UNKNOWN".into()),
            checks: status
                .health
                .checks
                .iter()
                .map(|(code, check)| {
                    let summary = check.summary.clone().unwrap_or_default();
                    (
                        code.clone(),
                        CephCheckState {
                            severity: check.severity.clone(),
                            message: summary.message,
                            count: summary.count,
                            muted: check.muted,
                        },
                    )
                })
                .collect(),
            used: pgmap.bytes_used,
            avail: pgmap.bytes_avail,
            total: pgmap.bytes_total,
            used_percent: percent(pgmap.bytes_used, pgmap.bytes_total),
            osds: osds.num_osds,
            osds_up: osds.num_up_osds,
            osds_in: osds.num_in_osds,
        }
    }
}

/// Service states that need someone to look (the HA manager gave up, or is fencing).
pub const HA_PROBLEM_STATES: &[&str] = &["error", "fence", "recovery"];

/// `ha` in the cluster state: the HA manager as `/cluster/ha/status/current` reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HaState {
    /// The HA manager's view of the quorum.
    pub quorate: Option<bool>,
    /// The node whose CRM is master.
    pub master: Option<String>,
    /// `active`, `idle`, `old timestamp - dead?`, … (the state word of its status).
    pub master_state: Option<String>,
    /// sid (`vm:100`, `ct:101`) → the service.
    pub services: BTreeMap<String, HaServiceState>,
    /// The sids in `error`, `fence` or `recovery`.
    pub services_in_error: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HaServiceState {
    pub node: Option<String>,
    /// The verbose state: `started`, `stopped`, `starting`, `error`, `fence`, …
    pub state: Option<String>,
    /// The configured state: `started`, `stopped`, `disabled`, `ignored`.
    pub request_state: Option<String>,
}

impl HaState {
    /// `None` when no service is configured: the cluster does not use HA.
    pub fn from_rows(rows: &[HaStatusRow]) -> Option<(HaState, HashMap<u32, String>)> {
        let kind = |row: &HaStatusRow, k: &str| row.kind.as_deref() == Some(k);
        let mut services = BTreeMap::new();
        let mut by_vmid = HashMap::new();
        for row in rows.iter().filter(|r| kind(r, "service")) {
            let Some(sid) = row.sid.clone() else { continue };
            let state = row.state.clone().or_else(|| row.crm_state.clone());
            if let (Some(vmid), Some(state)) = (vmid_of_sid(&sid), &state) {
                by_vmid.insert(vmid, state.clone());
            }
            services.insert(
                sid,
                HaServiceState {
                    node: row.node.clone(),
                    state,
                    request_state: row.request_state.clone(),
                },
            );
        }
        if services.is_empty() {
            return None;
        }
        let quorum = rows.iter().find(|r| kind(r, "quorum"));
        let master = rows.iter().find(|r| kind(r, "master"));
        let services_in_error = services
            .iter()
            .filter(|(_, s)| {
                s.state
                    .as_deref()
                    .is_some_and(|st| HA_PROBLEM_STATES.contains(&st))
            })
            .map(|(sid, _)| sid.clone())
            .collect();
        let state = HaState {
            quorate: quorum.and_then(|q| q.quorate),
            master: master.and_then(|m| m.node.clone()),
            master_state: master.and_then(|m| m.status.as_deref().and_then(state_word)),
            services,
            services_in_error,
        };
        Some((state, by_vmid))
    }
}

/// `vm:100` / `ct:101` → 100 / 101.
fn vmid_of_sid(sid: &str) -> Option<u32> {
    let (_, id) = sid.split_once(':')?;
    id.parse().ok()
}

/// `pve1 (active, Tue Mar 11 10:01:02 2025)` → `active`; the time changes every poll.
fn state_word(status: &str) -> Option<String> {
    let inner = status.split_once('(')?.1;
    let word = inner.split([',', ')']).next()?.trim();
    (!word.is_empty()).then(|| word.to_string())
}

/// `replication` in a guest's state: its jobs and a summary over them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GuestReplication {
    /// The oldest last successful sync of its jobs; `null` while one never synced.
    pub last_sync: Option<u64>,
    /// The earliest planned run.
    pub next_sync: Option<u64>,
    /// The most consecutive failures of any job (0 = all fine).
    pub fail_count: u64,
    /// The error of the first failing job.
    pub error: Option<String>,
    pub jobs: Vec<ReplicationJobState>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplicationJobState {
    pub id: String,
    pub target: Option<String>,
    pub enabled: bool,
    pub schedule: String,
    pub last_sync: Option<u64>,
    pub last_try: Option<u64>,
    pub next_sync: Option<u64>,
    pub duration: Option<f64>,
    pub fail_count: u64,
    pub error: Option<String>,
}

/// Groups the rows of `/nodes/{n}/replication` answers by guest.
pub fn replication_by_guest<'a>(
    rows: impl IntoIterator<Item = &'a ReplicationJob>,
) -> HashMap<u32, Arc<GuestReplication>> {
    let mut jobs: BTreeMap<u32, Vec<ReplicationJobState>> = BTreeMap::new();
    for row in rows {
        let (Some(id), Some(guest)) = (row.id.clone(), row.guest) else {
            continue;
        };
        let nonzero = |t: Option<u64>| t.filter(|t| *t > 0);
        jobs.entry(guest).or_default().push(ReplicationJobState {
            id,
            target: row.target.clone(),
            enabled: !row.disable,
            schedule: row.schedule.clone().unwrap_or_else(|| "*/15".into()),
            last_sync: nonzero(row.last_sync),
            last_try: nonzero(row.last_try),
            // 1 marks a job about to be removed: not a time.
            next_sync: row.next_sync.filter(|t| *t > 1),
            duration: row.duration.map(|d| (d * 1000.0).round() / 1000.0),
            fail_count: row.fail_count.unwrap_or(0),
            error: row.error.clone().filter(|e| !e.is_empty()),
        });
    }
    jobs.into_iter()
        .map(|(vmid, mut jobs)| {
            jobs.sort_by(|a, b| a.id.cmp(&b.id));
            let enabled = || jobs.iter().filter(|j| j.enabled);
            let last_sync = if enabled().any(|j| j.last_sync.is_none()) {
                None
            } else {
                enabled().filter_map(|j| j.last_sync).min()
            };
            let summary = GuestReplication {
                last_sync,
                next_sync: enabled().filter_map(|j| j.next_sync).min(),
                fail_count: jobs.iter().map(|j| j.fail_count).max().unwrap_or(0),
                error: jobs.iter().find_map(|j| j.error.clone()),
                jobs,
            };
            (vmid, Arc::new(summary))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_word_of_a_master_status_drops_the_time() {
        assert_eq!(
            state_word("pve1 (active, Tue Mar 11 10:01:02 2025)").as_deref(),
            Some("active")
        );
        assert_eq!(
            state_word("pve1 (old timestamp - dead?, Tue Mar 11 10:01:02 2025)").as_deref(),
            Some("old timestamp - dead?")
        );
        assert_eq!(state_word("pve1 (idle)").as_deref(), Some("idle"));
    }

    #[test]
    fn a_cluster_without_ha_services_has_no_ha_state() {
        let rows: Vec<HaStatusRow> = serde_json::from_str(
            r#"[{"id":"quorum","type":"quorum","node":"pve","status":"OK","quorate":1}]"#,
        )
        .unwrap();
        assert!(HaState::from_rows(&rows).is_none());
    }

    #[test]
    fn ha_services_map_to_their_guests_and_errors_are_listed() {
        let rows: Vec<HaStatusRow> = serde_json::from_str(
            r#"[{"id":"quorum","type":"quorum","node":"pve1","status":"OK","quorate":1},
                {"id":"master","type":"master","node":"pve2","status":"pve2 (active, Tue Mar 11 10:01:02 2025)","timestamp":1741687262},
                {"id":"service:vm:100","type":"service","sid":"vm:100","node":"pve1","state":"started","crm_state":"started","request_state":"started","status":"vm:100 (pve1, started)"},
                {"id":"service:ct:101","type":"service","sid":"ct:101","node":"pve2","state":"error","crm_state":"error","request_state":"started","status":"ct:101 (pve2, error)"}]"#,
        )
        .unwrap();
        let (ha, by_vmid) = HaState::from_rows(&rows).unwrap();
        assert_eq!(ha.quorate, Some(true));
        assert_eq!(ha.master.as_deref(), Some("pve2"));
        assert_eq!(ha.master_state.as_deref(), Some("active"));
        assert_eq!(ha.services_in_error, vec!["ct:101".to_string()]);
        assert_eq!(by_vmid[&100], "started");
        assert_eq!(by_vmid[&101], "error");
    }

    #[test]
    fn replication_summarises_the_jobs_of_a_guest() {
        let rows: Vec<ReplicationJob> = serde_json::from_str(
            r#"[{"id":"100-0","type":"local","guest":100,"jobnum":0,"target":"pve2","vmtype":"qemu",
                 "last_sync":1741687200,"last_try":1741688100,"next_sync":1741688400,"duration":4.2134,"fail_count":1,
                 "error":"command 'zfs snapshot' failed: exit code 1"},
                {"id":"100-1","type":"local","guest":"100","jobnum":1,"target":"pve3","schedule":"*/5",
                 "last_sync":1741687500,"last_try":1741687500,"next_sync":1741687800,"fail_count":0},
                {"id":"102-0","type":"local","guest":102,"target":"pve2","last_sync":0,"fail_count":0,"next_sync":0}]"#,
        )
        .unwrap();
        let by_guest = replication_by_guest(&rows);
        let vm = &by_guest[&100];
        assert_eq!(vm.jobs.len(), 2);
        assert_eq!(vm.last_sync, Some(1_741_687_200));
        assert_eq!(vm.next_sync, Some(1_741_687_800));
        assert_eq!(vm.fail_count, 1);
        assert!(vm.error.as_deref().unwrap().contains("zfs snapshot"));
        assert_eq!(vm.jobs[0].schedule, "*/15");
        assert_eq!(vm.jobs[0].duration, Some(4.213));
        let never = &by_guest[&102];
        assert_eq!(never.last_sync, None, "0 = never synced");
        assert_eq!(never.next_sync, None);
        assert_eq!(never.fail_count, 0);
    }

    #[test]
    fn ceph_status_becomes_health_checks_and_usage() {
        let status: CephStatus = serde_json::from_str(
            r#"{"fsid":"x","health":{"status":"HEALTH_WARN","mutes":[],"checks":{"POOL_NO_REDUNDANCY":
                {"severity":"HEALTH_WARN","muted":false,"summary":{"message":"1 pool(s) have no replicas configured","count":1},"detail":[]}}},
                "osdmap":{"num_osds":2,"num_up_osds":2,"num_in_osds":2},
                "pgmap":{"bytes_used":250,"bytes_avail":750,"bytes_total":1000,"num_pgs":33}}"#,
        )
        .unwrap();
        let ceph = CephState::from_status(&status);
        assert_eq!(ceph.health, "HEALTH_WARN");
        assert_eq!(
            ceph.checks["POOL_NO_REDUNDANCY"].message.as_deref(),
            Some("1 pool(s) have no replicas configured")
        );
        assert_eq!(ceph.used_percent, Some(25.0));
        assert_eq!(ceph.osds_up, Some(2));
        // Older Ceph nests the OSD counts.
        let old: CephStatus =
            serde_json::from_str(r#"{"health":{"status":"HEALTH_OK","checks":{}},"osdmap":{"osdmap":{"num_osds":3,"num_up_osds":2,"num_in_osds":3}}}"#)
                .unwrap();
        assert_eq!(CephState::from_status(&old).osds_up, Some(2));
    }
}
