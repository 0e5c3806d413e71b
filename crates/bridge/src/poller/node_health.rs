//! The slow lane's node-health requests (issue 11): per online node, its disks
//! (`disks/list`), ZFS pools (`disks/zfs`), installed versions for the reboot-required
//! check (`apt/versions`), the certificate (`certificates/info`) and, opt-in, pending
//! updates (`apt/update`). Each has its cadence ([`HealthCadence`]); the slow lane's
//! [`Schedule`](super::slow) caps them at 3 per node and round, so a first round's five
//! spread over two rounds.
//!
//! A failed request keeps what was read before and is tried again at its next due time,
//! never in a loop. Expected refusals are quiet (debug log): a node without zfsutils
//! (500 `zfsutils-linux not installed`: no pools) and a token without `Sys.Modify` for
//! `apt/update`.
use std::time::Duration;

use tracing::debug;

use crate::config::PollConfig;
use crate::model::{certificate_expiry, reboot_required, SlowData};
use crate::pve::{PveClient, PveError, Resource, ResourceKind};

/// How often each node-health request runs (config `[poll]`).
#[derive(Clone, Debug)]
pub struct HealthCadence {
    /// `poll.disks_interval`: disks and ZFS pools.
    pub disks: Duration,
    /// `poll.updates`: read pending updates at all.
    pub updates: bool,
    /// `poll.updates_interval`: `apt/update` and `apt/versions`.
    pub updates_every: Duration,
    /// `poll.certificates_interval`.
    pub certificates: Duration,
}

impl Default for HealthCadence {
    fn default() -> Self {
        HealthCadence::from_config(&PollConfig::default())
    }
}

impl HealthCadence {
    pub fn from_config(poll: &PollConfig) -> Self {
        HealthCadence {
            disks: poll.disks_interval,
            updates: poll.updates,
            updates_every: poll.updates_interval,
            certificates: poll.certificates_interval,
        }
    }
}

/// Which detail of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HealthKind {
    Disks,
    Zfs,
    AptVersions,
    AptUpdates,
    Certificates,
}

/// One node-health request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthRequest {
    pub node: String,
    pub kind: HealthKind,
}

impl HealthRequest {
    pub fn every(&self, cadence: &HealthCadence) -> Duration {
        match self.kind {
            HealthKind::Disks | HealthKind::Zfs => cadence.disks,
            HealthKind::AptVersions | HealthKind::AptUpdates => cadence.updates_every,
            HealthKind::Certificates => cadence.certificates,
        }
    }
}

/// The candidate requests of a round: every kind for every online node (the schedule
/// then picks the due ones, most overdue first, equals in this order). `apt/update` only
/// with `poll.updates`; it comes third, so that a first round reads disks, pools and
/// updates, and the second the versions and the certificate.
pub fn plan(rows: &[Resource], cadence: &HealthCadence) -> Vec<HealthRequest> {
    let mut kinds = vec![
        HealthKind::Disks,
        HealthKind::Zfs,
        HealthKind::AptVersions,
        HealthKind::Certificates,
    ];
    if cadence.updates {
        kinds.insert(2, HealthKind::AptUpdates);
    }
    rows.iter()
        .filter(|r| r.kind == ResourceKind::Node && r.status.as_deref() == Some("online"))
        .filter_map(|r| r.node.as_deref())
        .flat_map(|node| {
            kinds.iter().map(|kind| HealthRequest {
                node: node.to_string(),
                kind: *kind,
            })
        })
        .collect()
}

/// Runs one request and stores its answer in `data.node_health`.
pub async fn run(
    client: &PveClient,
    request: &HealthRequest,
    data: &mut SlowData,
) -> Result<(), PveError> {
    let node = request.node.as_str();
    match request.kind {
        HealthKind::Disks => {
            let disks = client.disks_list(node).await?;
            data.node_health.entry(node.to_string()).or_default().disks = Some(disks);
        }
        HealthKind::Zfs => {
            let pools = match client.zfs_pools(node).await {
                Ok(pools) => pools,
                Err(err) if is_no_zfs(&err) => {
                    debug!(node, "no zfsutils on this node: no ZFS pools");
                    Vec::new()
                }
                Err(err) => return Err(err),
            };
            data.node_health.entry(node.to_string()).or_default().zfs = Some(pools);
        }
        HealthKind::AptVersions => {
            let rows = client.apt_versions(node).await?;
            data.node_health
                .entry(node.to_string())
                .or_default()
                .reboot_required = reboot_required(&rows);
        }
        HealthKind::AptUpdates => match client.apt_updates(node).await {
            Ok(rows) => {
                data.node_health
                    .entry(node.to_string())
                    .or_default()
                    .updates = Some(rows)
            }
            Err(PveError::Forbidden { reason }) => {
                debug!(node, %reason, "no Sys.Modify: pending updates not read");
                if let Some(health) = data.node_health.get_mut(node) {
                    health.updates = None;
                }
            }
            Err(err) => return Err(err),
        },
        HealthKind::Certificates => {
            let rows = client.certificates_info(node).await?;
            data.node_health
                .entry(node.to_string())
                .or_default()
                .certificate_expires = certificate_expiry(&rows);
        }
    }
    Ok(())
}

/// `500 zfsutils-linux not installed`: the node has no ZFS, not a failure.
fn is_no_zfs(err: &PveError) -> bool {
    matches!(err, PveError::Api { status: 500, reason, .. } if reason.contains("zfsutils-linux not installed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_are_planned_only_when_opted_in() {
        let rows: Vec<Resource> = serde_json::from_value(serde_json::json!([
            {"id": "node/a", "type": "node", "node": "a", "status": "online"},
            {"id": "node/b", "type": "node", "node": "b", "status": "offline"}
        ]))
        .unwrap();
        let off = plan(&rows, &HealthCadence::default());
        assert_eq!(off.len(), 4);
        assert!(off.iter().all(|r| r.node == "a"));
        assert!(!off.iter().any(|r| r.kind == HealthKind::AptUpdates));
        let on = plan(
            &rows,
            &HealthCadence {
                updates: true,
                ..HealthCadence::default()
            },
        );
        assert_eq!(on.len(), 5);
        assert!(on.iter().any(|r| r.kind == HealthKind::AptUpdates));
    }

    #[test]
    fn the_default_cadences_are_15_minutes_1_hour_and_6_hours() {
        let cadence = HealthCadence::default();
        let every = |kind| {
            HealthRequest {
                node: "a".into(),
                kind,
            }
            .every(&cadence)
        };
        assert_eq!(every(HealthKind::Disks), Duration::from_secs(900));
        assert_eq!(every(HealthKind::Zfs), Duration::from_secs(900));
        assert_eq!(every(HealthKind::AptUpdates), Duration::from_secs(3600));
        assert_eq!(every(HealthKind::AptVersions), Duration::from_secs(3600));
        assert_eq!(
            every(HealthKind::Certificates),
            Duration::from_secs(6 * 3600)
        );
        assert!(!cadence.updates);
    }

    #[test]
    fn only_the_zfsutils_500_means_no_zfs() {
        let api = |status, reason: &str| PveError::Api {
            status,
            reason: reason.into(),
            errors: None,
        };
        assert!(is_no_zfs(&api(500, "zfsutils-linux not installed")));
        assert!(!is_no_zfs(&api(500, "cluster not ready - no quorum?")));
        assert!(!is_no_zfs(&api(501, "zfsutils-linux not installed")));
    }
}
