//! The snapshot endpoints of a guest (`…/{qemu|lxc}/{vmid}/snapshot…`). Every POST and
//! DELETE starts a task and is never resent (only GETs are idempotent, see [`Call`]).
use reqwest::Method;
use serde::Deserialize;

use super::decode::decode_data;
use super::{guest_segments, Call, PveClient};
use crate::pve::error::PveError;
use crate::pve::types::GuestKind;
use crate::pve::upid::{Upid, UpidParseError};

/// One row of `GET …/snapshot`: a snapshot, or the `current` pseudo-entry (always last,
/// no `snaptime`). Rows come in no particular order; the tree is built from `parent`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct SnapshotEntry {
    pub name: String,
    /// Unix time it was taken; 0 when unknown; absent on `current`.
    #[serde(default, deserialize_with = "crate::pve::de::opt_u64")]
    pub snaptime: Option<u64>,
    #[serde(default, deserialize_with = "crate::pve::de::opt_string")]
    pub parent: Option<String>,
    /// `prepare` / `delete` while a task works on it (or after one failed).
    #[serde(default, deserialize_with = "crate::pve::de::opt_string")]
    pub snapstate: Option<String>,
}

impl SnapshotEntry {
    /// The pseudo-entry for the guest's present state.
    pub fn is_current(&self) -> bool {
        self.name == "current" && self.snaptime.is_none()
    }
}

impl PveClient {
    /// `GET /nodes/{node}/{qemu|lxc}/{vmid}/snapshot` (needs `VM.Audit`).
    pub async fn snapshots(
        &self,
        node: &str,
        kind: GuestKind,
        vmid: u32,
    ) -> Result<Vec<SnapshotEntry>, PveError> {
        self.guest_get((node, kind, vmid), &["snapshot"]).await
    }

    /// `POST …/snapshot` (`snapname`, `description`, qemu `vmstate`): task
    /// `qmsnapshot`/`vzsnapshot`.
    pub async fn snapshot_create(
        &self,
        node: &str,
        kind: GuestKind,
        vmid: u32,
        form: &[(&str, String)],
    ) -> Result<Upid, PveError> {
        self.guest_task(Method::POST, (node, kind, vmid), &["snapshot"], Some(form))
            .await
    }

    /// `POST …/snapshot/{name}/rollback` (`start`): task `qmrollback`/`vzrollback`.
    pub async fn snapshot_rollback(
        &self,
        node: &str,
        kind: GuestKind,
        vmid: u32,
        name: &str,
        form: &[(&str, String)],
    ) -> Result<Upid, PveError> {
        let path = &["snapshot", name, "rollback"];
        self.guest_task(Method::POST, (node, kind, vmid), path, Some(form))
            .await
    }

    /// `DELETE …/snapshot/{name}`: task `qmdelsnapshot`/`vzdelsnapshot`.
    pub async fn snapshot_delete(
        &self,
        node: &str,
        kind: GuestKind,
        vmid: u32,
        name: &str,
    ) -> Result<Upid, PveError> {
        let path = &["snapshot", name];
        self.guest_task(Method::DELETE, (node, kind, vmid), path, None)
            .await
    }

    /// A task on a guest's endpoint `nodes/{node}/{qemu|lxc}/{vmid}/{path…}`. Never resent.
    pub(super) async fn guest_task(
        &self,
        method: Method,
        (node, kind, vmid): (&str, GuestKind, u32),
        path: &[&str],
        form: Option<&[(&str, String)]>,
    ) -> Result<Upid, PveError> {
        let vmid = vmid.to_string();
        let segments = guest_segments(node, kind, &vmid, path);
        self.start_task(method, &segments, form).await
    }

    /// A request that answers `{"data": "UPID:…"}`. Never resent.
    async fn start_task(
        &self,
        method: Method,
        segments: &[&str],
        form: Option<&[(&str, String)]>,
    ) -> Result<Upid, PveError> {
        let call = Call {
            method,
            segments,
            query: &[],
            form,
        };
        let body = self.execute(&call).await?;
        let text: String = decode_data(&call.label(), &body)?;
        text.parse().map_err(|e: UpidParseError| PveError::Decode {
            endpoint: call.label(),
            message: e.to_string(),
        })
    }
}
