//! The Proxmox VE HTTP boundary: an API-token client ([`PveClient`]), tolerant response
//! types, the task id grammar ([`Upid`]) and the errors callers branch on ([`PveError`]).
//!
//! Knows nothing of MQTT or Home Assistant. How the real API behaves, and therefore why
//! these types are as lenient as they are, is `reference/pve-api.md`.
//!
//! Layout:
//! - `client`: requests, endpoint failover, connection-reuse retries;
//! - `tls`: certificate trust (web roots + `ca_file`, fingerprint pin, or none);
//! - `types` + `de`: response types and the lenient readers for Proxmox's JSON;
//! - `error`: [`PveError`] and how an HTTP error answer becomes one;
//! - `upid`: [`Upid`];
//! - `action`: [`Action`], the guest actions (lifecycle and backup), and [`NodeAction`].
mod action;
pub mod agent;
mod client;
mod de;
mod error;
mod guest_row;
mod health;
mod tls;
mod types;
mod upid;

pub use action::{Action, NodeAction};
pub use client::SnapshotEntry;
pub use client::{
    decode_cluster_resources, for_each_cluster_resource, for_each_cluster_row, row_hash,
    ClusterNodeRow, PveClient, RawRow,
};
pub use client::{
    CephCheck, CephHealth, CephOsdMap, CephPgMap, CephStatus, HaStatusRow, ReplicationJob,
};
pub use error::PveError;
pub use guest_row::GuestRow;
pub use health::{AptPackage, CertificateInfo, DiskInfo, ZfsPool};
pub use types::{
    exitstatus_is_success, split_tags, tag_iter, ClusterStatusKind, ClusterStatusRow, CpuInfo,
    FilesystemUsage, GuestKind, GuestStatus, MemoryUsage, NodeStatus, Permissions, Resource,
    ResourceKind, StorageItem, TaskListEntry, TaskLog, TaskLogLine, TaskState, TaskStatus,
    UnknownGuestKind, Version, VzdumpStarted,
};
pub use upid::{Upid, UpidParseError};
