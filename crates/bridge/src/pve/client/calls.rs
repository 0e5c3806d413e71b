//! The typed calls: one method per Proxmox endpoint the bridge uses. How a call is sent
//! (retries, failover) is the parent module's concern.
use reqwest::Method;
use serde::Deserialize;

use super::decode::{decode, decode_cluster_resources, decode_data};
use super::{Call, PveClient};
use crate::pve::error::PveError;
use crate::pve::health::{AptPackage, CertificateInfo, DiskInfo, ZfsPool};
use crate::pve::types::{
    ClusterStatusRow, GuestKind, GuestStatus, NodeStatus, Permissions, Resource, StorageItem,
    TaskListEntry, TaskLog, TaskLogLine, TaskStatus, Version, VzdumpStarted,
};

/// One row of `GET /nodes/{node}/storage`: the storage as the node sees it, with the
/// `avail` that `/cluster/resources` lacks.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct NodeStorageRow {
    #[serde(default, deserialize_with = "crate::pve::de::opt_string")]
    pub storage: Option<String>,
    #[serde(default, deserialize_with = "crate::pve::de::opt_u64")]
    pub total: Option<u64>,
    #[serde(default, deserialize_with = "crate::pve::de::opt_u64")]
    pub used: Option<u64>,
    #[serde(default, deserialize_with = "crate::pve::de::opt_u64")]
    pub avail: Option<u64>,
}

/// One row of `/cluster/backup-info/not-backed-up`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct NotBackedUp {
    #[serde(default, deserialize_with = "crate::pve::de::opt_vmid")]
    pub vmid: Option<u32>,
}
use crate::pve::upid::{Upid, UpidParseError};

impl PveClient {
    /// `GET /version`.
    pub async fn version(&self) -> Result<Version, PveError> {
        self.get_data(&Call::get(&["version"])).await
    }

    /// `GET /cluster/resources` without a type filter: nodes, guests, storages, pools, SDN.
    pub async fn cluster_resources(&self) -> Result<Vec<Resource>, PveError> {
        let body = self.cluster_resources_body().await?;
        decode_cluster_resources(&body)
    }

    /// `GET /cluster/resources`, undecoded: the fast lane streams its rows with
    /// [`for_each_cluster_resource`] and keeps the body (not thousands of decoded rows)
    /// to rebuild the view when the slow lane brings news.
    pub async fn cluster_resources_body(&self) -> Result<Vec<u8>, PveError> {
        self.execute(&Call::get(&["cluster", "resources"])).await
    }

    /// `GET /cluster/status` (needs `Sys.Audit` on `/`).
    pub async fn cluster_status(&self) -> Result<Vec<ClusterStatusRow>, PveError> {
        self.get_data(&Call::get(&["cluster", "status"])).await
    }

    /// `GET /nodes/{node}/status` (proxied to that node: 595 when it is down).
    pub async fn node_status(&self, node: &str) -> Result<NodeStatus, PveError> {
        self.get_data(&Call::get(&["nodes", node, "status"])).await
    }

    /// `GET /nodes/{node}/disks/list` (`Sys.Audit` on `/` or the node). Proxmox runs
    /// smartctl per disk for `health` and `wearout`.
    pub async fn disks_list(&self, node: &str) -> Result<Vec<DiskInfo>, PveError> {
        self.get_data(&Call::get(&["nodes", node, "disks", "list"]))
            .await
    }

    /// `GET /nodes/{node}/disks/zfs` (`Sys.Audit` on `/`); 500 `zfsutils-linux not
    /// installed` on a node without ZFS.
    pub async fn zfs_pools(&self, node: &str) -> Result<Vec<ZfsPool>, PveError> {
        self.get_data(&Call::get(&["nodes", node, "disks", "zfs"]))
            .await
    }

    /// `GET /nodes/{node}/apt/update`: pending updates (`Sys.Modify` on the node).
    pub async fn apt_updates(&self, node: &str) -> Result<Vec<AptPackage>, PveError> {
        self.get_data(&Call::get(&["nodes", node, "apt", "update"]))
            .await
    }

    /// `GET /nodes/{node}/apt/versions`: installed packages (`Sys.Audit` on the node).
    pub async fn apt_versions(&self, node: &str) -> Result<Vec<AptPackage>, PveError> {
        self.get_data(&Call::get(&["nodes", node, "apt", "versions"]))
            .await
    }

    /// `GET /nodes/{node}/certificates/info` (any token).
    pub async fn certificates_info(&self, node: &str) -> Result<Vec<CertificateInfo>, PveError> {
        self.get_data(&Call::get(&["nodes", node, "certificates", "info"]))
            .await
    }

    /// `GET /nodes/{node}/storage/{storage}/content`, optionally only one content type
    /// (`backup`).
    pub async fn storage_content(
        &self,
        node: &str,
        storage: &str,
        content: Option<&str>,
    ) -> Result<Vec<StorageItem>, PveError> {
        let query: Vec<(&str, String)> = content
            .map(|c| ("content", c.to_owned()))
            .into_iter()
            .collect();
        self.get_data(&Call {
            query: &query,
            ..Call::get(&["nodes", node, "storage", storage, "content"])
        })
        .await
    }

    /// `GET /nodes/{node}/{qemu|lxc}/{vmid}/status/current`.
    pub async fn guest_status(
        &self,
        node: &str,
        kind: GuestKind,
        vmid: u32,
    ) -> Result<GuestStatus, PveError> {
        self.guest_get((node, kind, vmid), &["status", "current"])
            .await
    }

    /// `GET /access/permissions`: the token's own effective privileges.
    pub async fn permissions(&self) -> Result<Permissions, PveError> {
        self.get_data(&Call::get(&["access", "permissions"])).await
    }

    /// `GET /nodes/{node}/tasks` with Proxmox's filters (`source`, `typefilter`, `vmid`,
    /// `limit`, …) as query parameters.
    pub async fn node_tasks(
        &self,
        node: &str,
        params: &[(&str, String)],
    ) -> Result<Vec<TaskListEntry>, PveError> {
        self.get_data(&Call {
            query: params,
            ..Call::get(&["nodes", node, "tasks"])
        })
        .await
    }

    /// `GET /cluster/tasks`: every node's running and most recent finished tasks (about
    /// 25 per node, up to ~10 s stale). Without `Sys.Audit` on `/` an API token sees none.
    pub async fn cluster_tasks(&self) -> Result<Vec<TaskListEntry>, PveError> {
        self.get_data(&Call::get(&["cluster", "tasks"])).await
    }

    /// `GET /nodes/{node}/storage`: every storage enabled on the node, with `avail`.
    pub async fn node_storage(&self, node: &str) -> Result<Vec<NodeStorageRow>, PveError> {
        self.get_data(&Call::get(&["nodes", node, "storage"])).await
    }

    /// `GET /cluster/backup-info/not-backed-up` (needs `Sys.Audit` on `/`): guests that no
    /// backup job selects.
    pub async fn not_backed_up(&self) -> Result<Vec<NotBackedUp>, PveError> {
        self.get_data(&Call::get(&["cluster", "backup-info", "not-backed-up"]))
            .await
    }

    /// `POST /nodes/{node}/{qemu|lxc}/{vmid}/status/{action}` (form-encoded `params`;
    /// booleans must be `0`/`1`). Returns the task to follow. Never retried.
    pub async fn guest_action(
        &self,
        node: &str,
        kind: GuestKind,
        vmid: u32,
        action: &str,
        params: &[(&str, String)],
    ) -> Result<Upid, PveError> {
        let path = &["status", action];
        self.guest_task(Method::POST, (node, kind, vmid), path, Some(params))
            .await
    }

    /// `POST /nodes/{node}/vzdump`. Proxmox answers a UPID, or the literal `OK` when none of
    /// the listed guests lives on this node. Never retried.
    pub async fn vzdump(
        &self,
        node: &str,
        params: &[(&str, String)],
    ) -> Result<VzdumpStarted, PveError> {
        let (label, text) = self
            .post_for_text(&["nodes", node, "vzdump"], params)
            .await?;
        if text == "OK" {
            return Ok(VzdumpStarted::NothingLocal);
        }
        parse_upid(&label, &text).map(VzdumpStarted::Task)
    }

    /// `GET /nodes/{node}/tasks/{upid}/status`, asked of the node named in the UPID (any
    /// other node answers `no such task`).
    pub async fn task_status(&self, upid: &Upid) -> Result<TaskStatus, PveError> {
        self.get_data(&Call::get(&[
            "nodes",
            &upid.node,
            "tasks",
            upid.as_str(),
            "status",
        ]))
        .await
    }

    /// `GET /nodes/{node}/tasks/{upid}/log?start=&limit=` (`limit` 0 = everything). Lines
    /// are numbered from 1; `total` is the length of the whole log.
    ///
    /// Pages follow the line numbers, not the count received: when nothing lies past
    /// `start`, Proxmox (`dump_logfile`) answers one synthetic line `no content` numbered
    /// one past the end, and a reader that advanced by one would skip the next real line.
    /// So a page that is only that line holds no lines and keeps `start`, and
    /// `next_start` is the number of the last real line. (A task that logs exactly
    /// `no content` as its newest line has it read with the next page.)
    pub async fn task_log(&self, upid: &Upid, start: u64, limit: u64) -> Result<TaskLog, PveError> {
        #[derive(Deserialize)]
        struct LogEnvelope {
            data: Vec<TaskLogLine>,
            #[serde(default, deserialize_with = "crate::pve::de::opt_u64")]
            total: Option<u64>,
        }
        let query = [("start", start.to_string()), ("limit", limit.to_string())];
        let segments = ["nodes", &upid.node, "tasks", upid.as_str(), "log"];
        let call = Call {
            query: &query,
            ..Call::get(&segments)
        };
        let body = self.execute(&call).await?;
        let envelope: LogEnvelope = decode(&call.label(), &body)?;
        let total = envelope.total.unwrap_or(start + envelope.data.len() as u64);
        let mut lines = envelope.data;
        if let [only] = lines.as_slice() {
            if only.text() == "no content" {
                lines.clear();
            }
        }
        // Lines at or before `start` are not new (a synthetic line can be numbered so).
        lines.retain(|line| line.n.is_none_or(|n| n > start));
        let next_start = lines
            .iter()
            .filter_map(|line| line.n)
            .max()
            .unwrap_or(start + lines.len() as u64)
            .max(start);
        Ok(TaskLog {
            lines,
            total,
            next_start,
        })
    }

    /// A form-encoded POST whose answer is `{"data": "<text>"}` (a UPID, or vzdump's `OK`),
    /// with the call's label for messages. Never retried.
    async fn post_for_text(
        &self,
        segments: &[&str],
        params: &[(&str, String)],
    ) -> Result<(String, String), PveError> {
        let call = Call {
            method: Method::POST,
            segments,
            query: &[],
            form: Some(params),
        };
        let body = self.execute(&call).await?;
        let text = decode_data(&call.label(), &body)?;
        Ok((call.label(), text))
    }
}

/// The task id a POST answered, or a decode error naming the endpoint.
fn parse_upid(label: &str, text: &str) -> Result<Upid, PveError> {
    text.parse().map_err(|e: UpidParseError| PveError::Decode {
        endpoint: label.to_owned(),
        message: e.to_string(),
    })
}
