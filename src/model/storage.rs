//! A storage's state on one node, from its `/cluster/resources` row.
use serde::Serialize;

use super::rates::percent;
use crate::pve::Resource;

/// `{base}/{c}/storage/{node}/{storage}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StorageState {
    pub storage: String,
    pub node: String,
    /// `available` or `unknown`, as Proxmox says.
    pub status: String,
    pub active: bool,
    #[serde(rename = "type")]
    pub plugin_type: Option<String>,
    pub content: Vec<String>,
    pub shared: bool,
    pub used: Option<u64>,
    pub total: Option<u64>,
    pub avail: Option<u64>,
    pub used_percent: Option<f64>,
}

pub(super) fn storage_state(row: &Resource) -> Option<StorageState> {
    let node = row.node.clone()?;
    let storage = row.storage.clone()?;
    let status = row.status.clone().unwrap_or_else(|| "unknown".to_string());
    let used = row.disk;
    let total = row.maxdisk;
    let avail = match (used, total) {
        (Some(u), Some(t)) => Some(t.saturating_sub(u)),
        _ => None,
    };
    Some(StorageState {
        active: status == "available",
        plugin_type: row.plugintype.clone(),
        content: row
            .content
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        shared: row.shared,
        used_percent: percent(used, total),
        used,
        total,
        avail,
        status,
        node,
        storage,
    })
}
