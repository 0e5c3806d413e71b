//! The cluster-health calls (issue 11): Ceph status, HA manager status and replication
//! jobs, with their response types (reference `pve-api-round2.md` §7–§9).
use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Call, PveClient};
use crate::pve::de;
use crate::pve::error::PveError;

impl PveClient {
    /// `GET /cluster/ceph/status` (`Sys.Audit` or `Datastore.Audit` on `/`). Runs on the
    /// node contacted; without Ceph a 500 (see [`PveError::is_ceph_absent`]).
    pub async fn ceph_status(&self) -> Result<CephStatus, PveError> {
        self.get_data(&Call::get(&["cluster", "ceph", "status"]))
            .await
    }

    /// `GET /cluster/ha/status/current` (`Sys.Audit` on `/`).
    pub async fn ha_status(&self) -> Result<Vec<HaStatusRow>, PveError> {
        self.get_data(&Call::get(&["cluster", "ha", "status", "current"]))
            .await
    }

    /// `GET /cluster/replication`: the job config, filtered by `VM.Audit` per guest.
    pub async fn replication_jobs(&self) -> Result<Vec<ReplicationJob>, PveError> {
        self.get_data(&Call::get(&["cluster", "replication"])).await
    }

    /// `GET /nodes/{node}/replication`: the jobs of the guests on that node now, with
    /// their state, filtered by `VM.Audit` per guest.
    pub async fn node_replication(&self, node: &str) -> Result<Vec<ReplicationJob>, PveError> {
        self.get_data(&Call::get(&["nodes", node, "replication"]))
            .await
    }
}

impl PveError {
    /// The 500 of a cluster without Ceph: `binary not installed: /usr/bin/ceph-mon`, or
    /// `pveceph configuration not initialized[ - missing …]`.
    pub fn is_ceph_absent(&self) -> bool {
        matches!(self, PveError::Api { status: 500, reason, .. }
            if reason.contains("binary not installed") || reason.contains("not initialized"))
    }
}

/// `GET /cluster/ceph/status`: only what the bridge reads of `ceph status`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct CephStatus {
    #[serde(default)]
    pub health: CephHealth,
    #[serde(default)]
    pub pgmap: Option<CephPgMap>,
    #[serde(default)]
    pub osdmap: Option<CephOsdMap>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct CephHealth {
    /// `HEALTH_OK`, `HEALTH_WARN` or `HEALTH_ERR`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub status: Option<String>,
    /// Check code (`OSD_DOWN`, `POOL_NO_REDUNDANCY`, …) → check; `{}` when OK.
    #[serde(default)]
    pub checks: BTreeMap<String, CephCheck>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct CephCheck {
    #[serde(default, deserialize_with = "de::opt_string")]
    pub severity: Option<String>,
    #[serde(default)]
    pub summary: Option<CephSummary>,
    /// Ceph JSON: a real boolean (Octopus and later).
    #[serde(default, deserialize_with = "de::bool_or_false")]
    pub muted: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct CephSummary {
    #[serde(default, deserialize_with = "de::opt_string")]
    pub message: Option<String>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub count: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct CephPgMap {
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub bytes_used: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub bytes_avail: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub bytes_total: Option<u64>,
}

/// Flat since Ceph Pacific; older releases nest the same members in `osdmap.osdmap`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct CephOsdMap {
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub num_osds: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub num_up_osds: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub num_in_osds: Option<u64>,
    #[serde(default)]
    pub osdmap: Option<Box<CephOsdMap>>,
}

impl CephOsdMap {
    /// The members wherever the release put them.
    pub fn flat(&self) -> &CephOsdMap {
        match &self.osdmap {
            Some(inner) if self.num_osds.is_none() => inner,
            _ => self,
        }
    }
}

/// One row of `GET /cluster/ha/status/current` (`quorum`, `master`, `fencing`, `lrm`,
/// `service`; newer releases may add types).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct HaStatusRow {
    #[serde(default, deserialize_with = "de::opt_string")]
    pub id: Option<String>,
    #[serde(rename = "type", default, deserialize_with = "de::opt_string")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub node: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub status: Option<String>,
    /// [quorum]
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub quorate: Option<bool>,
    /// [service] `vm:100`, `ct:101`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub sid: Option<String>,
    /// [service] the verbose state (`started`, `starting`, `error`, `fence`, …).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub state: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub crm_state: Option<String>,
    /// [service] the configured state (`started`, `stopped`, `disabled`, `ignored`).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub request_state: Option<String>,
}

/// A replication job: the config (`/cluster/replication`) plus, from
/// `/nodes/{node}/replication`, its state.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ReplicationJob {
    /// `<vmid>-<jobnum>`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "de::opt_vmid")]
    pub guest: Option<u32>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub target: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub schedule: Option<String>,
    #[serde(default, deserialize_with = "de::bool_or_false")]
    pub disable: bool,
    /// Start of the last successful sync; 0 = never.
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub last_sync: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub last_try: Option<u64>,
    /// 0 = no next run planned.
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub next_sync: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_f64")]
    pub duration: Option<f64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub fail_count: Option<u64>,
    /// Present only while failing.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub error: Option<String>,
}
