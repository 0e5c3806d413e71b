//! The fields of a guest's state that the slow and the agent lanes give, not its row.
//! They change seldom while a running guest's counters change every 10 s, so a guest's
//! successive states share them by `Arc` while the lanes say the same: a new state then
//! copies none of their strings.
//!
//! Two groups, so that the state's JSON keeps its key order: [`GuestBackup`] comes
//! before `backup_stale` (which depends on the time and stays in the state) and
//! [`GuestLanes`] after it.
use std::sync::Arc;

use serde::Serialize;

use super::guest::serialize_shared;
use super::{
    AgentInfo, BackupVerdict, GuestReplication, GuestState, NewestBackup, SlowData, SnapshotInfo,
};
use crate::pve::GuestKind;

/// The guest's newest backup and its task's verdict (`last_backup` …
/// `last_backup_error` of the state).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GuestBackup {
    /// Unix time of the newest backup found in storage content.
    pub last_backup: Option<u64>,
    /// Size in bytes of that backup.
    pub last_backup_size: Option<u64>,
    /// PBS verification of that backup: `ok`, `failed`, or `null` (not verified / not PBS).
    pub last_backup_verification: Option<String>,
    /// Verdict of the newest vzdump task (any origin) that backed the guest up, from its
    /// log: `ok`, `warnings` or `failed`; `null` until such a task was seen.
    pub last_backup_status: Option<&'static str>,
    /// Proxmox's error text when `last_backup_status` is `failed`.
    pub last_backup_error: Option<String>,
}

/// The rest of what the slow and agent lanes say of the guest (`backup_covered` … `os`
/// of the state).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GuestLanes {
    /// Selected by some backup job (disabled ones too, as Proxmox counts); `null` when
    /// the token may not ask (`Sys.Audit` on `/`).
    pub backup_covered: Option<bool>,
    /// The verbose HA service state (`started`, `error`, …) from the HA manager's
    /// status; `null` when not HA-managed (`hastate` is the cluster list's short form).
    pub ha_state: Option<String>,
    /// The guest's replication jobs; `null` when it has none.
    #[serde(serialize_with = "serialize_shared")]
    pub replication: Option<Arc<GuestReplication>>,
    /// `snapshots`, `snapshot_latest`, `snapshot_latest_time`.
    #[serde(flatten)]
    pub snapshots: SnapshotInfo,
    /// The guest agent answers (`null`: not asked: none configured, not running, a
    /// container; see `model::agent`).
    pub agent: Option<bool>,
    /// From the guest agent (VMs) or the container's interfaces: no loopback, no
    /// link-local, IPv4 first.
    pub ip_addresses: Vec<String>,
    /// The VM's OS from the guest agent (`Ubuntu 24.04.1 LTS`).
    pub os: Option<String>,
    /// `disk` of a VM comes from the guest agent's filesystems (Proxmox reports 0):
    /// discovery then announces the VM's "Disk used".
    #[serde(skip)]
    pub disk_from_agent: bool,
}

/// What the slow and the agent lanes say of a guest, borrowed from their data.
#[derive(Clone, Copy)]
pub(super) struct LaneDraft<'a> {
    pub(super) last_backup: Option<u64>,
    newest: Option<&'a NewestBackup>,
    verdict: Option<&'a BackupVerdict>,
    covered: Option<bool>,
    ha_state: Option<&'a str>,
    replication: Option<&'a Arc<GuestReplication>>,
    snapshots: Option<&'a SnapshotInfo>,
    agent: Option<bool>,
    ip_addresses: &'a [String],
    os: Option<&'a str>,
    /// A VM's disk use from the agent's filesystems (Proxmox reports 0 for a VM): it
    /// replaces the row's `disk`.
    pub(super) agent_disk: Option<u64>,
}

impl<'a> LaneDraft<'a> {
    pub(super) fn of(
        vmid: u32,
        kind: GuestKind,
        slow: &'a SlowData,
        agent: Option<&'a AgentInfo>,
    ) -> Self {
        LaneDraft {
            last_backup: slow.last_backup(vmid),
            newest: slow.newest_backup.get(&vmid),
            verdict: slow.backup_verdicts.get(&vmid),
            covered: slow
                .not_backed_up
                .as_ref()
                .map(|list| !list.contains(&vmid)),
            ha_state: slow.health.ha_services.get(&vmid).map(String::as_str),
            replication: slow.health.replication.get(&vmid),
            snapshots: slow.snapshots.get(&vmid),
            agent: agent.and_then(|a| a.responding),
            ip_addresses: agent.map_or(&[], |a| a.ip_addresses.as_slice()),
            os: agent.and_then(|a| a.os.as_deref()),
            agent_disk: agent
                .and_then(|a| a.disk_used)
                .filter(|_| kind == GuestKind::Qemu),
        }
    }

    /// Equal to what `reported` says? (all "always" fields but `backup_stale`, which
    /// depends on the time)
    pub(super) fn same_as(&self, reported: &GuestState) -> bool {
        self.same_backup(&reported.backup) && self.same_lanes(&reported.lanes)
    }

    /// Equal to `backup`? Destructures it, so a field added there does not compile
    /// until it is compared here.
    fn same_backup(&self, backup: &GuestBackup) -> bool {
        let GuestBackup {
            last_backup,
            last_backup_size,
            last_backup_verification,
            last_backup_status,
            last_backup_error,
        } = backup;
        *last_backup == self.last_backup
            && *last_backup_size == self.newest.and_then(|n| n.size)
            && last_backup_verification.as_deref()
                == self.newest.and_then(|n| n.verification.as_deref())
            && *last_backup_status == self.verdict.map(|v| v.status)
            && last_backup_error.as_deref() == self.verdict.and_then(|v| v.error.as_deref())
    }

    /// Equal to `lanes`? Destructures it (see [`LaneDraft::same_backup`]).
    fn same_lanes(&self, lanes: &GuestLanes) -> bool {
        let GuestLanes {
            backup_covered,
            ha_state,
            replication,
            snapshots,
            agent,
            ip_addresses,
            os,
            disk_from_agent,
        } = lanes;
        *backup_covered == self.covered
            && ha_state.as_deref() == self.ha_state
            && replication.as_ref() == self.replication
            && self
                .snapshots
                .map_or(*snapshots == SnapshotInfo::default(), |s| s == snapshots)
            && *agent == self.agent
            && ip_addresses.as_slice() == self.ip_addresses
            && os.as_deref() == self.os
            && *disk_from_agent == self.agent_disk.is_some()
    }

    /// `before`'s backup group when the draft says the same (the very `Arc`), else a
    /// new one.
    pub(super) fn backup(&self, before: Option<&GuestState>) -> Arc<GuestBackup> {
        match before {
            Some(before) if self.same_backup(&before.backup) => Arc::clone(&before.backup),
            _ => Arc::new(GuestBackup {
                last_backup: self.last_backup,
                last_backup_size: self.newest.and_then(|n| n.size),
                last_backup_verification: self.newest.and_then(|n| n.verification.clone()),
                last_backup_status: self.verdict.map(|v| v.status),
                last_backup_error: self.verdict.and_then(|v| v.error.clone()),
            }),
        }
    }

    /// `before`'s other lane fields when the draft says the same (the very `Arc`), else
    /// new ones.
    pub(super) fn lanes(&self, before: Option<&GuestState>) -> Arc<GuestLanes> {
        match before {
            Some(before) if self.same_lanes(&before.lanes) => Arc::clone(&before.lanes),
            _ => Arc::new(GuestLanes {
                backup_covered: self.covered,
                ha_state: self.ha_state.map(str::to_owned),
                replication: self.replication.cloned(),
                snapshots: self.snapshots.cloned().unwrap_or_default(),
                agent: self.agent,
                ip_addresses: self.ip_addresses.to_vec(),
                os: self.os.map(str::to_owned),
                disk_from_agent: self.agent_disk.is_some(),
            }),
        }
    }
}
