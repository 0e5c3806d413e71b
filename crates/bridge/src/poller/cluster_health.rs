//! The slow lane's cluster-health requests (issue 11): Ceph status, the HA manager's
//! status and the replication jobs, each probed once and skipped while the cluster does
//! not have it.
//!
//! | part | request | while present | while absent or not permitted |
//! |---|---|---|---|
//! | Ceph | `GET /cluster/ceph/status` | every round | asked again hourly |
//! | HA | `GET /cluster/ha/status/current` | every round | hourly, or at once when a guest row gains `hastate` |
//! | replication | `GET /cluster/replication` (probe), and when it lists jobs `GET /nodes/{n}/replication` per online node at once | the per-node list every round (a node's detail budget) | the probe hourly |
//!
//! "Absent" is Proxmox's own answer: Ceph's 500 `binary not installed: /usr/bin/ceph-mon`
//! or `pveceph configuration not initialized`, an HA status without service rows, an
//! empty job list (which is also what a token without `VM.Audit` sees), or a 403. Any
//! other failure is transient: the last answer stays and the next round asks again.
use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use super::slow::SlowRequest;
use crate::model::{replication_by_guest, CephState, HaState, HealthData};
use crate::pve::{PveClient, PveError, ReplicationJob, Resource, ResourceKind};

/// How long a part found absent (or not permitted) waits before it is asked for again.
pub(super) const REPROBE: Duration = Duration::from_secs(3600);

/// What the last answer said about one part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Probe {
    /// Not asked yet, or only failed so far.
    #[default]
    Unknown,
    Present,
    /// Not configured, or the token may not read it; asked again after [`REPROBE`].
    Absent {
        since: Instant,
    },
}

impl Probe {
    fn due(self, now: Instant) -> bool {
        match self {
            Probe::Unknown | Probe::Present => true,
            Probe::Absent { since } => now.saturating_duration_since(since) >= REPROBE,
        }
    }
}

/// The probes of one cluster and the per-node replication answers.
#[derive(Debug, Default)]
pub(super) struct HealthProbes {
    ceph: Probe,
    ha: Probe,
    replication: Probe,
    /// The last `/nodes/{n}/replication` answer of each online node.
    replication_by_node: HashMap<String, Vec<ReplicationJob>>,
    /// The online nodes of the last plan.
    online: Vec<String>,
    /// Whether the last plan had a guest row with `hastate`.
    managed_seen: bool,
}

impl HealthProbes {
    /// The cluster-health requests of this round, from the fast lane's plan rows (node
    /// rows, and the first guest row carrying `hastate`).
    pub(super) fn requests(&mut self, rows: &[Resource], now: Instant) -> Vec<SlowRequest> {
        self.online = rows
            .iter()
            .filter(|r| r.kind == ResourceKind::Node && r.status.as_deref() == Some("online"))
            .filter_map(|r| r.node.clone())
            .collect();
        self.replication_by_node
            .retain(|node, _| self.online.contains(node));
        let mut requests = Vec::new();
        if self.ceph.due(now) {
            requests.push(SlowRequest::CephStatus);
        }
        // A guest row gained `hastate`: HA is configured now, whatever the last probe said.
        // Only on the change, so a token that may not read the HA status (or a status
        // that disagrees) is not asked every round.
        let managed = rows.iter().any(|r| r.is_guest() && r.hastate.is_some());
        let newly_managed = managed && !self.managed_seen;
        self.managed_seen = managed;
        if self.ha.due(now) || newly_managed {
            requests.push(SlowRequest::HaStatus);
        }
        match self.replication {
            Probe::Present => requests.extend(
                self.online
                    .iter()
                    .map(|n| SlowRequest::ReplicationStatus(n.clone())),
            ),
            probe if probe.due(now) => requests.push(SlowRequest::ReplicationConfig),
            _ => {}
        }
        requests
    }

    /// Runs one of this module's requests and records the answer in `data`.
    pub(super) async fn run(
        &mut self,
        client: &PveClient,
        request: &SlowRequest,
        data: &mut HealthData,
    ) -> Result<(), PveError> {
        let now = Instant::now();
        match request {
            SlowRequest::CephStatus => {
                let answer = client.ceph_status().await;
                let absent = match &answer {
                    Err(err) if err.is_ceph_absent() => Some(err.to_string()),
                    Err(err @ PveError::Forbidden { .. }) => Some(err.to_string()),
                    _ => None,
                };
                if let Some(why) = absent {
                    self.absent(Part::Ceph, &why, now);
                    data.ceph = None;
                } else {
                    data.ceph = Some(CephState::from_status(&answer?));
                    self.ceph = Probe::Present;
                }
                data.known.ceph = true;
            }
            SlowRequest::HaStatus => {
                let rows = match client.ha_status().await {
                    Err(err @ PveError::Forbidden { .. }) => {
                        self.absent(Part::Ha, &err.to_string(), now);
                        Vec::new()
                    }
                    answer => answer?,
                };
                match HaState::from_rows(&rows) {
                    Some((ha, services)) => {
                        data.ha = Some(ha);
                        data.ha_services = services;
                        self.ha = Probe::Present;
                    }
                    None => {
                        // (After a 403 this only renews the time: the log said why.)
                        self.absent(Part::Ha, "no HA resource is configured", now);
                        data.ha = None;
                        data.ha_services.clear();
                    }
                }
                data.known.ha = true;
            }
            SlowRequest::ReplicationConfig => {
                let jobs = client.replication_jobs().await?;
                if jobs.is_empty() {
                    self.absent(
                        Part::Replication,
                        "no replication job (or none the token may see with VM.Audit)",
                        now,
                    );
                    data.replication.clear();
                    data.known.replication = true;
                } else {
                    // The per-node lists carry the state: read now, one node after the
                    // other, so that this round knows each guest's replication (right
                    // after a start, guests' discovery waits for it); from the next round
                    // on they are the round's own requests.
                    self.replication = Probe::Present;
                    for node in self.online.clone() {
                        let jobs = client.node_replication(&node).await?;
                        self.node_answered(node, jobs, data, now);
                    }
                }
            }
            SlowRequest::ReplicationStatus(node) => {
                let jobs = client.node_replication(node).await?;
                self.node_answered(node.clone(), jobs, data, now);
            }
            _ => {}
        }
        Ok(())
    }

    /// Records one online node's `/nodes/{n}/replication` answer.
    fn node_answered(
        &mut self,
        node: String,
        jobs: Vec<ReplicationJob>,
        data: &mut HealthData,
        now: Instant,
    ) {
        self.replication_by_node.insert(node, jobs);
        let answered = self
            .online
            .iter()
            .all(|n| self.replication_by_node.contains_key(n));
        if answered && self.replication_by_node.values().all(Vec::is_empty) {
            self.absent(Part::Replication, "no replication job left", now);
            self.replication_by_node.clear();
        }
        data.replication = replication_by_guest(self.replication_by_node.values().flatten());
        // Known once every online node answered: before, a guest's jobs may only be
        // missing because its node was not asked yet.
        data.known.replication = answered;
    }

    /// Marks `part` absent; says so in the log when it was not already.
    fn absent(&mut self, part: Part, why: &str, now: Instant) {
        let probe = match part {
            Part::Ceph => &mut self.ceph,
            Part::Ha => &mut self.ha,
            Part::Replication => &mut self.replication,
        };
        if !matches!(probe, Probe::Absent { .. }) {
            info!(part = part.name(), reason = %why,
                "{} not published: {why}; asked again in an hour", part.name());
        }
        *probe = Probe::Absent { since: now };
    }
}

#[derive(Clone, Copy)]
enum Part {
    Ceph,
    Ha,
    Replication,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Ceph => "Ceph health",
            Part::Ha => "HA manager status",
            Part::Replication => "replication",
        }
    }
}

/// `pve2mqtt check`: one line per part, saying whether the token can read it and what
/// the cluster has.
pub async fn check_lines(client: &PveClient) -> Vec<String> {
    let mut lines = Vec::new();
    lines.push(match client.ceph_status().await {
        Ok(status) => format!(
            "Ceph health: yes ({})",
            status.health.status.as_deref().unwrap_or("?")
        ),
        Err(err) if err.is_ceph_absent() => {
            "Ceph health: no Ceph in this cluster (skipped; asked again hourly)".to_string()
        }
        Err(err @ PveError::Forbidden { .. }) => {
            format!("Ceph health: no — {err} (needs Sys.Audit or Datastore.Audit on /; skipped)")
        }
        Err(err) => format!("Ceph health: cannot tell — {err}"),
    });
    lines.push(match client.ha_status().await {
        Ok(rows) => match HaState::from_rows(&rows) {
            Some((ha, _)) => format!("HA manager: yes ({} services)", ha.services.len()),
            None => "HA manager: yes, but no HA resource is configured (skipped)".to_string(),
        },
        Err(err @ PveError::Forbidden { .. }) => {
            format!("HA manager: no — {err} (needs Sys.Audit on /; skipped)")
        }
        Err(err) => format!("HA manager: cannot tell — {err}"),
    });
    lines.push(match client.replication_jobs().await {
        Ok(jobs) if jobs.is_empty() => "replication: no job visible (none configured, or the \
             token lacks VM.Audit on the guests; skipped)"
            .to_string(),
        Ok(jobs) => format!("replication: yes ({} jobs)", jobs.len()),
        Err(err) => format!("replication: cannot tell — {err}"),
    });
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Resource {
        serde_json::from_value(serde_json::json!({
            "type": "node", "node": name, "status": "online", "id": format!("node/{name}")
        }))
        .unwrap()
    }

    #[test]
    fn every_part_is_probed_first() {
        let mut probes = HealthProbes::default();
        let requests = probes.requests(&[node("pve1"), node("pve2")], Instant::now());
        assert_eq!(
            requests,
            vec![
                SlowRequest::CephStatus,
                SlowRequest::HaStatus,
                SlowRequest::ReplicationConfig
            ]
        );
    }

    #[test]
    fn an_absent_part_waits_an_hour_and_present_replication_asks_each_node() {
        let start = Instant::now();
        let mut probes = HealthProbes {
            ceph: Probe::Absent { since: start },
            ha: Probe::Absent { since: start },
            replication: Probe::Present,
            ..HealthProbes::default()
        };
        let rows = [node("pve1"), node("pve2")];
        assert_eq!(
            probes.requests(&rows, start + Duration::from_secs(60)),
            vec![
                SlowRequest::ReplicationStatus("pve1".into()),
                SlowRequest::ReplicationStatus("pve2".into())
            ]
        );
        let later = probes.requests(&rows, start + REPROBE);
        assert!(later.contains(&SlowRequest::CephStatus));
        assert!(later.contains(&SlowRequest::HaStatus));
    }

    #[test]
    fn a_guest_with_hastate_has_ha_probed_at_once() {
        let start = Instant::now();
        let mut probes = HealthProbes {
            ha: Probe::Absent { since: start },
            ..HealthProbes::default()
        };
        let guest: Resource = serde_json::from_value(serde_json::json!({
            "type": "qemu", "node": "pve1", "vmid": 100, "status": "running", "hastate": "started"
        }))
        .unwrap();
        let requests = probes.requests(&[node("pve1"), guest], start);
        assert!(requests.contains(&SlowRequest::HaStatus));
    }
}
